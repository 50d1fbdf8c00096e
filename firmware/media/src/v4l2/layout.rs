//! Where the planes of a raw picture lie in a V4L2 buffer, and copies between that layout
//! and the tightly packed one the rest of the pipeline uses.
//!
//! Drivers pad rows (`bytesperline`) and round the buffer height up (vicodec to 16 rows,
//! bcm2835-codec 1080 to 1088), so a picture is not where a packed copy would put it.
//! One description serves the camera (buffer → packed), the encoder (packed → buffer) and
//! the decode check. Pure: it must not know about devices.

use crate::source::PixelFormat;

/// One plane of a picture inside a driver buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plane {
    /// Picture rows in this plane.
    pub rows: usize,
    /// Picture bytes in one row.
    pub row_bytes: usize,
    /// Bytes from one row to the next in the buffer.
    pub stride: usize,
    /// Where the plane starts in the buffer.
    pub offset: usize,
}

/// A picture's planes in a buffer, and the buffer bytes they span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub planes: Vec<Plane>,
    /// Bytes from the buffer start to the end of the last plane's reserved rows (what an
    /// output buffer's `bytesused` says).
    pub len: usize,
}

/// The layout of a `w`x`h` picture in `pf`, in a buffer whose first plane has rows
/// `bytesperline` apart and room for `coded_h` rows. The chroma planes of YU12 have half
/// the stride; NV12's interleaved chroma has the full one. `None` for compressed formats.
pub fn layout(pf: PixelFormat, w: usize, h: usize, bytesperline: usize, coded_h: usize) -> Option<Layout> {
    let coded_h = coded_h.max(h);
    let luma_row = if pf == PixelFormat::Yuyv { w * 2 } else { w };
    let bpl = bytesperline.max(luma_row);
    // (rows, row bytes, stride, rows reserved in the buffer)
    let shape: Vec<(usize, usize, usize, usize)> = match pf {
        PixelFormat::H264 => return None,
        PixelFormat::Yuyv => vec![(h, luma_row, bpl, coded_h)],
        PixelFormat::Nv12 => vec![(h, w, bpl, coded_h), (h / 2, w, bpl, coded_h / 2)],
        PixelFormat::I420 => {
            vec![(h, w, bpl, coded_h), (h / 2, w / 2, bpl / 2, coded_h / 2), (h / 2, w / 2, bpl / 2, coded_h / 2)]
        }
    };
    let mut len = 0;
    let planes = shape
        .into_iter()
        .map(|(rows, row_bytes, stride, reserved)| {
            let p = Plane { rows, row_bytes, stride, offset: len };
            len += reserved * stride;
            p
        })
        .collect();
    Some(Layout { planes, len })
}

/// Copies the picture out of `buf` into a tightly packed vector; `None` if `buf` is short.
pub fn unpack(buf: &[u8], planes: &[Plane]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(planes.iter().map(|p| p.rows * p.row_bytes).sum());
    for p in planes {
        for r in 0..p.rows {
            let at = p.offset + r * p.stride;
            out.extend_from_slice(buf.get(at..at + p.row_bytes)?);
        }
    }
    Some(out)
}

/// Copies a tightly packed picture into `dst`; `None` if either side is short.
pub fn pack_into(dst: &mut [u8], src: &[u8], planes: &[Plane]) -> Option<()> {
    let mut from = 0;
    for p in planes {
        for r in 0..p.rows {
            let at = p.offset + r * p.stride;
            dst.get_mut(at..at + p.row_bytes)?.copy_from_slice(src.get(from..from + p.row_bytes)?);
            from += p.row_bytes;
        }
    }
    (from == src.len()).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yu12_in_an_aligned_padded_buffer() {
        let l = layout(PixelFormat::I420, 320, 180, 384, 192).unwrap();
        let p = &l.planes;
        assert_eq!(p[0], Plane { rows: 180, row_bytes: 320, stride: 384, offset: 0 });
        assert_eq!(p[1], Plane { rows: 90, row_bytes: 160, stride: 192, offset: 384 * 192 });
        assert_eq!(p[2].offset, 384 * 192 + 192 * 96);
        assert_eq!(l.len, 384 * 192 * 3 / 2);
        // Round trip through the padded layout.
        let src: Vec<u8> = (0..320 * 180 * 3 / 2).map(|i| (i % 251) as u8).collect();
        let mut buf = vec![0u8; l.len];
        pack_into(&mut buf, &src, p).unwrap();
        assert_eq!(unpack(&buf, p).unwrap(), src);
        assert!(pack_into(&mut buf, &src[1..], p).is_none(), "a short picture is refused");
    }

    #[test]
    fn tight_layouts_are_contiguous() {
        let l = layout(PixelFormat::Nv12, 4, 2, 0, 0).unwrap();
        assert_eq!(l.planes.iter().map(|p| (p.offset, p.stride)).collect::<Vec<_>>(), vec![(0, 4), (8, 4)]);
        assert_eq!(l.len, 12);
        let y = layout(PixelFormat::Yuyv, 4, 2, 0, 0).unwrap();
        assert_eq!((y.planes.len(), y.planes[0].row_bytes, y.len), (1, 8, 16));
        assert!(layout(PixelFormat::H264, 4, 2, 0, 0).is_none());
    }
}
