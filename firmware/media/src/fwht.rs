//! The FWHT bitstream of the kernel's `vicodec` test codec: frame header parsing and
//! splitting a stream into frames.
//!
//! FWHT is not a camera codec. It is here because `vicodec` is the one real V4L2 stateful
//! encoder that runs without hardware, so the V4L2 memory-to-memory path is proven on it in
//! the emulated image (docs/hardware.md). A FWHT session is stored as the raw elementary
//! stream (no container): each frame is a 44-byte big-endian header followed by `size`
//! bytes, so frames delimit themselves and `vicodec`'s decoder takes the stream as is.
//! Layout (drivers/media/test-drivers/vicodec/codec-fwht.h, `struct fwht_cframe_hdr`):
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | magic1 | `4f 4f 4f 4f` |
//! | 4 | magic2 | `ff ff ff ff` |
//! | 8 | version | u32 BE (3 in Linux 6.1) |
//! | 12, 16 | width, height | u32 BE |
//! | 20 | flags | u32 BE; bit 10 `V4L2_FWHT_FL_I_FRAME` |
//! | 24..40 | colorspace, xfer_func, ycbcr_enc, quantization | u32 BE |
//! | 40 | size | u32 BE, payload bytes after the header |
//!
//! Pure: no IO. It must not decode pictures (that is the kernel decoder's job).

/// Bytes of `struct fwht_cframe_hdr`.
pub const HEADER_LEN: usize = 44;
const MAGIC1: [u8; 4] = [0x4f; 4];
const MAGIC2: [u8; 4] = [0xff; 4];
/// `V4L2_FWHT_FL_I_FRAME` (include/uapi/linux/v4l2-controls.h): the frame references no
/// other frame.
pub const FL_I_FRAME: u32 = 1 << 10;

/// One parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FwhtHeader {
    pub version: u32,
    pub width: u32,
    pub height: u32,
    pub flags: u32,
    /// Payload bytes after the header.
    pub size: u32,
}

impl FwhtHeader {
    pub fn is_intra(&self) -> bool {
        self.flags & FL_I_FRAME != 0
    }

    /// Header plus payload.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.size as usize
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwhtError {
    #[error("FWHT frame at byte {offset}: {len} bytes left, a header needs 44")]
    Truncated { offset: usize, len: usize },
    #[error("FWHT frame at byte {offset}: bad magic (not a vicodec FWHT frame)")]
    BadMagic { offset: usize },
    #[error("FWHT frame at byte {offset}: payload of {size} bytes runs past the end ({left} left)")]
    ShortPayload { offset: usize, size: u32, left: usize },
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the header at the start of `data` (which must hold at least the header).
pub fn parse_header(data: &[u8]) -> Result<FwhtHeader, FwhtError> {
    if data.len() < HEADER_LEN {
        return Err(FwhtError::Truncated { offset: 0, len: data.len() });
    }
    if data[0..4] != MAGIC1 || data[4..8] != MAGIC2 {
        return Err(FwhtError::BadMagic { offset: 0 });
    }
    Ok(FwhtHeader {
        version: be32(data, 8),
        width: be32(data, 12),
        height: be32(data, 16),
        flags: be32(data, 20),
        size: be32(data, 40),
    })
}

/// Splits a FWHT elementary stream into `(offset, header)` per frame. The stream must be
/// whole frames back to back: anything else is an error naming the byte offset.
pub fn split_stream(data: &[u8]) -> Result<Vec<(usize, FwhtHeader)>, FwhtError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        let h = parse_header(rest).map_err(|e| match e {
            FwhtError::Truncated { len, .. } => FwhtError::Truncated { offset: at, len },
            FwhtError::BadMagic { .. } => FwhtError::BadMagic { offset: at },
            other => other,
        })?;
        if rest.len() < h.frame_len() {
            return Err(FwhtError::ShortPayload { offset: at, size: h.size, left: rest.len() - HEADER_LEN });
        }
        out.push((at, h));
        at += h.frame_len();
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) fn test_frame(width: u32, height: u32, intra: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&MAGIC1);
    v.extend_from_slice(&MAGIC2);
    for x in [3, width, height, if intra { FL_I_FRAME } else { 0 }, 0, 0, 0, 0, payload.len() as u32] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_stream_and_reads_the_intra_flag() {
        let mut s = test_frame(320, 240, true, &[1, 2, 3]);
        s.extend(test_frame(320, 240, false, &[4; 10]));
        let frames = split_stream(&s).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0, 0);
        assert!(frames[0].1.is_intra());
        assert_eq!((frames[0].1.width, frames[0].1.height, frames[0].1.size), (320, 240, 3));
        assert_eq!(frames[1].0, HEADER_LEN + 3);
        assert!(!frames[1].1.is_intra());
    }

    #[test]
    fn names_the_offset_of_a_broken_frame() {
        let mut s = test_frame(16, 16, true, &[0; 4]);
        let good = s.len();
        s.extend(test_frame(16, 16, false, &[0; 8]));
        s.truncate(s.len() - 1);
        assert_eq!(split_stream(&s), Err(FwhtError::ShortPayload { offset: good, size: 8, left: 7 }));
        let mut t = test_frame(16, 16, true, &[]);
        t.extend_from_slice(b"garbage garbage garbage garbage garbage garbage");
        assert_eq!(split_stream(&t), Err(FwhtError::BadMagic { offset: HEADER_LEN }));
        assert_eq!(split_stream(&[0x4f; 10]), Err(FwhtError::Truncated { offset: 0, len: 10 }));
    }
}
