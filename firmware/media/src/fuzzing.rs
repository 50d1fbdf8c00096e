//! The crate-private H.264 helpers, reachable from `fuzz/` (the cargo-fuzz workspace).
//!
//! Owns nothing: each function forwards to `h264` unchanged, so the fuzzer exercises the
//! code the chunker runs. It must not be used by the firmware; the helpers stay
//! `pub(crate)` so their signatures are free to change with the chunker.

use crate::h264;
pub use crate::h264::H264Error;

/// `h264::split_annexb`: the NAL units of an Annex-B stream, start codes removed.
pub fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    h264::split_annexb(data)
}

/// `h264::has_picture`, `h264::is_idr`: what the chunker decides from an access unit.
pub fn classify(annexb: &[u8]) -> (bool, bool) {
    (h264::has_picture(annexb), h264::is_idr(annexb))
}

/// `h264::parameter_sets`: the first SPS and PPS of an access unit.
pub fn parameter_sets(annexb: &[u8]) -> Option<(&[u8], &[u8])> {
    h264::parameter_sets(annexb)
}

/// `h264::avcc_len` (the size the chunker predicts) and `h264::annexb_to_avcc` (the
/// sample it then writes).
pub fn avcc(annexb: &[u8]) -> (usize, Result<Vec<u8>, H264Error>) {
    (h264::avcc_len(annexb), h264::annexb_to_avcc(annexb))
}

/// `h264::parse_sps` and `h264::codec_string`: codec string and cropped size.
pub fn sps(sps: &[u8]) -> Result<(String, u32, u32), H264Error> {
    let info = h264::parse_sps(sps)?;
    Ok((h264::codec_string(sps)?, info.width, info.height))
}
