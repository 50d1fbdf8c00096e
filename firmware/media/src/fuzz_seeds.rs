//! Writes the seed corpora of the media fuzz targets (`fuzz/seeds/{h264,chunker,fwht}/`)
//! from real outputs: OpenH264 access units of the synthetic test pattern, the same
//! units framed as the chunker target reads them, and FWHT frames as vicodec lays them
//! out.
//!
//! Test-only and ignored: `./scripts/fuzz seeds` runs it. It must not write anywhere but
//! the seed directory; the pictures are tiny (64×48) so the committed seeds stay small.
//! Unlike lucid-core's seeds, the H.264 ones differ from run to run (the test pattern's
//! picture depends on the wall clock), so regenerating them shows a diff in git.

use std::path::{Path, PathBuf};

use crate::encode::{EncoderConfig, OpenH264Encoder, VideoEncoder};
use crate::fwht;
use crate::source::{FrameSource, TestPattern, TestPatternConfig};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = std::env::var_os("LUCID_FUZZ_SEEDS")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds"), PathBuf::from)
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// One record of the chunker target's input: `[op][pts step ms][len u16 BE][bytes]`.
fn record(out: &mut Vec<u8>, op: u8, step_ms: u8, bytes: &[u8]) {
    out.extend_from_slice(&[op, step_ms]);
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[test]
#[ignore = "writes fuzz/seeds; run by ./scripts/fuzz seeds"]
fn write_fuzz_seeds() {
    let cfg = TestPatternConfig { width: 64, height: 48, fps: 10, paced: false };
    let mut src = TestPattern::new(cfg).unwrap();
    let mut enc = OpenH264Encoder::new(EncoderConfig::new(64, 48, 10)).unwrap();
    let mut aus = Vec::new();
    for i in 0..8 {
        if i == 5 {
            enc.request_keyframe();
        }
        aus.extend(enc.encode(&src.next_frame().unwrap()).unwrap());
    }
    assert!(aus[0].keyframe && aus[5].keyframe, "IDR at 0 and 5");
    write("h264", "idr", &aus[0].data);
    write("h264", "p", &aus[1].data);

    // Config byte 0 (H.264, 1024-byte limit + 256 × 8), 0.3 s target; a gap before the
    // second IDR and a finish at the end.
    let mut h264 = vec![16, 29];
    for (i, au) in aus.iter().enumerate() {
        let op = u8::from(au.keyframe) | if i == 5 { 2 } else { 0 } | if i == 7 { 4 } else { 0 };
        record(&mut h264, op, 100, &au.data);
    }
    write("chunker", "h264-8-frames", &h264);

    let frames: Vec<Vec<u8>> = (0..4u8).map(|i| fwht::test_frame(64, 48, i % 2 == 0, &[i; 40])).collect();
    let mut stream = vec![1, 9];
    for (i, f) in frames.iter().enumerate() {
        record(&mut stream, u8::from(i % 2 == 0), 40, f);
    }
    write("chunker", "fwht-4-frames", &stream);
    write("fwht", "stream", &frames.concat());
}
