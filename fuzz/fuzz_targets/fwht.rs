//! Fuzzes the FWHT (vicodec) frame header parser and stream splitter
//! (`lucid_media::fwht`), which read what a V4L2 encoder hands back. A stream that
//! splits must be whole frames back to back, each header parsing to the one found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucid_media::fwht::{HEADER_LEN, parse_header, split_stream};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_header(data) {
        assert!(data.len() >= HEADER_LEN);
        let _ = (h.is_intra(), h.frame_len());
    }
    if let Ok(frames) = split_stream(data) {
        let mut at = 0;
        for (offset, h) in frames {
            assert_eq!(offset, at, "frames are not back to back");
            assert_eq!(parse_header(&data[offset..]), Ok(h));
            at += h.frame_len();
        }
        assert_eq!(at, data.len(), "the frames do not cover the stream");
    }
});
