//! Pixel layout conversion to planar I420, the layout OpenH264 takes.
//!
//! Owns only byte shuffling between tightly packed layouts (`PixelFormat::frame_len`). It
//! must not scale or change colour: a camera that delivers NV12 or YUYV is recorded with
//! its own samples, chroma of YUYV's 4:2:2 averaged over row pairs to 4:2:0.

use crate::source::{Frame, PixelFormat};

/// Returns `frame` as I420 (unchanged if it already is). `None` when the data length does
/// not match the format (a caller bug or a short capture buffer) or the format is
/// compressed.
pub fn to_i420(frame: &Frame) -> Option<Frame> {
    let f = frame.format;
    let (w, h) = (f.width as usize, f.height as usize);
    let want = f.pixel_format.frame_len(f.width, f.height)?;
    if frame.data.len() != want || !f.height.is_multiple_of(2) || !f.width.is_multiple_of(2) {
        return None;
    }
    let (cw, ch) = (w / 2, h / 2);
    let data = match f.pixel_format {
        PixelFormat::I420 => return Some(frame.clone()),
        PixelFormat::Nv12 => {
            let mut out = Vec::with_capacity(want);
            out.extend_from_slice(&frame.data[..w * h]);
            let uv = &frame.data[w * h..];
            out.extend(uv.iter().step_by(2));
            out.extend(uv.iter().skip(1).step_by(2));
            out
        }
        PixelFormat::Yuyv => {
            let src = &frame.data;
            let mut out = vec![0u8; w * h + 2 * cw * ch];
            let (y, uv) = out.split_at_mut(w * h);
            let (u, v) = uv.split_at_mut(cw * ch);
            for row in 0..h {
                let line = &src[row * w * 2..(row + 1) * w * 2];
                for (i, px) in line.chunks_exact(2).enumerate() {
                    y[row * w + i] = px[0];
                }
            }
            for crow in 0..ch {
                let (a, b) = (&src[2 * crow * w * 2..], &src[(2 * crow + 1) * w * 2..]);
                for cx in 0..cw {
                    let avg = |o: usize| (u16::from(a[cx * 4 + o]) + u16::from(b[cx * 4 + o])).div_ceil(2) as u8;
                    u[crow * cw + cx] = avg(1);
                    v[crow * cw + cx] = avg(3);
                }
            }
            out
        }
        PixelFormat::H264 => return None,
    };
    let mut out = frame.clone();
    out.data = data;
    out.format.pixel_format = PixelFormat::I420;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::VideoFormat;

    fn frame(pf: PixelFormat, data: Vec<u8>) -> Frame {
        Frame {
            seq: 0,
            pts_us: 0,
            wall_us: 0,
            format: VideoFormat { width: 4, height: 2, fps_num: 30, fps_den: 1, pixel_format: pf },
            data,
        }
    }

    #[test]
    fn nv12_and_yuyv_become_the_same_i420() {
        let y: Vec<u8> = (10..18).collect();
        // NV12: Y then U V interleaved (2x1 chroma samples for 4x2).
        let mut nv12 = y.clone();
        nv12.extend([100, 200, 101, 201]);
        let i = to_i420(&frame(PixelFormat::Nv12, nv12)).unwrap();
        assert_eq!(i.data, [y.clone(), vec![100, 101, 200, 201]].concat());
        assert_eq!(i.format.pixel_format, PixelFormat::I420);
        // YUYV: per row Y0 U Y1 V; both rows carry the same chroma here, and different in
        // the second pair so the row average shows.
        let yuyv = vec![10, 100, 11, 200, 12, 101, 13, 201, 14, 100, 15, 200, 16, 103, 17, 203];
        let j = to_i420(&frame(PixelFormat::Yuyv, yuyv)).unwrap();
        assert_eq!(j.data, [y, vec![100, 102, 200, 202]].concat());
    }

    #[test]
    fn refuses_short_data_and_compressed_frames() {
        assert!(to_i420(&frame(PixelFormat::Nv12, vec![0; 11])).is_none());
        assert!(to_i420(&frame(PixelFormat::H264, vec![0; 12])).is_none());
    }
}
