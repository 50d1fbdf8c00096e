//! End-to-end recording test: synthetic camera → OpenH264 → chunker, checked with ffprobe.
//!
//! Owns only verification through the public API. It must not skip when ffprobe is
//! missing: the fMP4 output is only proven by an independent demuxer/decoder.

use std::path::Path;

use mp4_atom::Decode;
use std::process::Command;

use lucid_media::{
    Chunker, ChunkerConfig, EncoderConfig, FrameSource, MediaChunk, OpenH264Encoder, TestPattern, TestPatternConfig,
    VideoEncoder,
};

/// Records `frames` frames of the unpaced test pattern; returns the init segment and chunks.
fn record_synthetic(frames: u64, width: u32, height: u32, fps: u32, cfg: ChunkerConfig) -> (Vec<u8>, Vec<MediaChunk>) {
    let mut src = TestPattern::new(TestPatternConfig { width, height, fps, paced: false }).unwrap();
    let mut enc = OpenH264Encoder::new(EncoderConfig::new(width, height, fps)).unwrap();
    let mut chunker = Chunker::new(cfg).unwrap();
    let mut chunks = Vec::new();
    for _ in 0..frames {
        let frame = src.next_frame().unwrap();
        for au in enc.encode(&frame).unwrap() {
            chunker.push(au).unwrap();
        }
        if chunker.wants_keyframe() {
            enc.request_keyframe();
        }
        chunks.extend(std::iter::from_fn(|| chunker.pop_chunk()));
    }
    for au in enc.flush().unwrap() {
        chunker.push(au).unwrap();
    }
    chunker.finish().unwrap();
    chunks.extend(std::iter::from_fn(|| chunker.pop_chunk()));
    (chunker.init_segment().expect("init segment after first IDR").to_vec(), chunks)
}

#[derive(Debug, PartialEq)]
struct Probe {
    codec: String,
    width: u64,
    height: u64,
    frames: u64,
}

/// Runs ffprobe (decoding every frame) and pulls the fields out of its JSON.
fn ffprobe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames,codec_name,width,height", "-of", "json"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("ffprobe is required for this test and could not be run (install ffmpeg): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffprobe failed on {}: {stderr}", path.display());
    assert!(stderr.trim().is_empty(), "ffprobe reported errors on {}: {stderr}", path.display());
    let field = |name: &str| -> String {
        let key = format!("\"{name}\":");
        let at = stdout.find(&key).unwrap_or_else(|| panic!("no {name} in ffprobe output: {stdout}")) + key.len();
        stdout[at..].trim_start().split([',', '\n', '}']).next().unwrap().trim().trim_matches('"').to_owned()
    };
    Probe {
        codec: field("codec_name"),
        width: field("width").parse().unwrap(),
        height: field("height").parse().unwrap(),
        frames: field("nb_read_frames").parse().unwrap(),
    }
}

/// Per-packet keyframe flags as ffprobe's demuxer sees them (from the trun sample flags).
fn packet_keyflags(path: &Path) -> Vec<bool> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "packet=flags", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("ffprobe is required for this test and could not be run (install ffmpeg): {e}"));
    assert!(out.status.success(), "ffprobe -show_packets failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).map(|l| l.starts_with('K')).collect()
}

fn write(dir: &Path, name: &str, parts: &[&[u8]]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, parts.concat()).unwrap();
    path
}

#[test]
fn three_seconds_chunk_and_decode_with_ffprobe() {
    const FRAMES: u64 = 45; // 3 s at 15 fps, IDR every 15 frames (EncoderConfig default)
    let (init, chunks) = record_synthetic(FRAMES, 320, 240, 15, ChunkerConfig::default());

    assert!(chunks.len() >= 3, "1 s target over 3 s: got {} chunks", chunks.len());
    assert_eq!(chunks.iter().map(|c| u64::from(c.frame_count)).sum::<u64>(), FRAMES);
    assert_eq!(chunks[0].media_start_us, 0);
    for w in chunks.windows(2) {
        assert_eq!(w[0].media_end_us, w[1].media_start_us, "contiguous media time");
        assert_eq!(w[0].sequence + 1, w[1].sequence);
    }
    assert_eq!(chunks.last().unwrap().media_end_us, FRAMES * 1_000_000 / 15);
    for c in &chunks {
        assert_eq!(c.bytes, c.fragment.len());
        assert!(!c.gap_before);
        assert!(c.media_end_us - c.media_start_us >= 1_000_000 || c.sequence == chunks.last().unwrap().sequence);
        assert_eq!(&c.fragment[4..8], b"moof");
        // trun: first sample sync (depends_on=2), all others non-sync.
        let moof = mp4_atom::Moof::decode(&mut std::io::Cursor::new(&c.fragment)).unwrap();
        let flags: Vec<u32> = moof.traf[0].trun[0].samples.iter().map(|e| e.flags.unwrap_or(0)).collect();
        assert_eq!(flags.len() as u32, c.frame_count);
        assert_eq!(flags[0], 0x0200_0000, "chunk {} starts with a sync sample", c.sequence);
        assert!(flags[1..].iter().all(|f| *f == 0x0101_0000), "chunk {}: {flags:x?}", c.sequence);
    }

    let dir = tempfile::tempdir().unwrap();
    let mut whole: Vec<&[u8]> = vec![&init];
    whole.extend(chunks.iter().map(|c| c.fragment.as_slice()));
    let probe = ffprobe(&write(dir.path(), "all.mp4", &whole));
    assert_eq!(probe, Probe { codec: "h264".into(), width: 320, height: 240, frames: FRAMES });
    // IDRs where scheduled (frames 0, 15, 30). ffprobe derives these flags from the H.264
    // parser, so the trun sample flags are checked separately below.
    let keys = packet_keyflags(&dir.path().join("all.mp4"));
    assert_eq!(keys.len() as u64, FRAMES);
    let key_idx: Vec<usize> = keys.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i).collect();
    assert_eq!(key_idx, vec![0, 15, 30]);

    // CMAF property: every chunk starts with an IDR, so init + that chunk alone decodes.
    for c in &chunks {
        let p = ffprobe(&write(dir.path(), &format!("c{}.mp4", c.sequence), &[&init, &c.fragment]));
        assert_eq!(
            p,
            Probe { codec: "h264".into(), width: 320, height: 240, frames: u64::from(c.frame_count) },
            "chunk {}",
            c.sequence
        );
    }
}

#[test]
fn small_size_limit_still_decodes() {
    // A tight limit forces keyframe requests and early cuts; output must stay valid.
    let cfg = ChunkerConfig {
        target_duration_us: 5_000_000,
        max_fragment_bytes: 12_000,
        first_sequence: 1,
        ..Default::default()
    };
    let (init, chunks) = record_synthetic(30, 160, 120, 15, cfg);
    assert!(chunks.iter().all(|c| c.bytes <= 12_000));
    assert_eq!(chunks.iter().map(|c| c.frame_count).sum::<u32>(), 30);
    assert!(chunks.len() >= 2, "limit forced early cuts: {}", chunks.len());
    let dir = tempfile::tempdir().unwrap();
    let mut whole: Vec<&[u8]> = vec![&init];
    whole.extend(chunks.iter().map(|c| c.fragment.as_slice()));
    let probe = ffprobe(&write(dir.path(), "small.mp4", &whole));
    assert_eq!(probe, Probe { codec: "h264".into(), width: 160, height: 120, frames: 30 });
}
