//! Fuzzes the H.264 bitstream helpers (`lucid_media::fuzzing`, which forwards to the
//! crate's `h264` module): Annex-B splitting, NAL classification, the Annex-B → AVCC
//! sample conversion and the SPS parser. These read a camera's own H.264 as is
//! (`CameraH264`), so they see outside bytes. Checks, beyond "no panic": NAL units never
//! hold a start code; the AVCC size the chunker predicts is the size it writes; the AVCC
//! sample reads back as exactly the NAL units it kept; a parsed SPS gives a well-formed
//! RFC 6381 codec string and a non-empty picture.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucid_media::fuzzing::{self, H264Error};

fuzz_target!(|data: &[u8]| {
    let nals = fuzzing::split_annexb(data);
    for nal in &nals {
        assert!(!nal.is_empty());
        assert!(!nal.windows(3).any(|w| w == [0, 0, 1]), "a NAL holds a start code");
        assert_ne!(nal.last(), Some(&0), "trailing zero kept");
    }
    // What the chunker asks of every access unit (panics only).
    let _ = fuzzing::classify(data);

    let kept: Vec<&[u8]> = nals.iter().copied().filter(|n| !matches!(n[0] & 0x1f, 7..=9)).collect();
    let (predicted, sample) = fuzzing::avcc(data);
    match sample {
        Ok(sample) => {
            assert_eq!(sample.len(), predicted, "avcc_len mispredicts the sample size");
            let mut rest = &sample[..];
            let mut back = Vec::new();
            while !rest.is_empty() {
                let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                back.push(&rest[4..4 + len]);
                rest = &rest[4 + len..];
            }
            assert_eq!(back, kept, "the AVCC sample does not read back as its NAL units");
        }
        Err(H264Error::NoNalUnits) => assert!(nals.is_empty()),
        Err(e) => panic!("unexpected error {e}"),
    }

    if let Some((sps, pps)) = fuzzing::parameter_sets(data) {
        assert_eq!((sps[0] & 0x1f, pps[0] & 0x1f), (7, 8));
    }
    // Every NAL as an SPS candidate, and the whole input as one (the parser must refuse
    // garbage by error, not by panic or overflow).
    for nal in nals.iter().copied().chain([data]) {
        if let Ok((codec, w, h)) = fuzzing::sps(nal) {
            assert!(codec.len() == 11 && codec.starts_with("avc1."), "{codec}");
            assert!(w > 0 && h > 0);
        }
    }
});
