//! Benchmark of the chunk path: recorded fragments pushed through
//! chunk -> compress -> seal -> digest -> log -> store (one durable redb commit per
//! chunk), beside the floor of AEAD + BLAKE3 alone on the same buffers, plus per-chunk
//! commit latency p50/p99. Run with `cargo bench -p lucidd` (or `./scripts/bench`).
//!
//! Not a test: it asserts nothing about speed; it prints figures for the README.

use std::time::{Duration, Instant};

use lucid_core::chunk::{ChunkHeader, Flags};
use lucid_core::seal::{self, Cipher, DataKey};
use lucid_media::{Chunker, ChunkerConfig, EncoderConfig, OpenH264Encoder, TestPattern, TestPatternConfig, VideoEncoder};
use lucidd::engine::{ChunkInfo, Engine, Kind};

fn fragments(width: u32, height: u32, fps: u32, seconds: u32, bitrate: u32) -> Vec<lucid_media::MediaChunk> {
    let mut src = TestPattern::new(TestPatternConfig { width, height, fps, paced: false }).unwrap();
    let mut enc = OpenH264Encoder::new(EncoderConfig {
        width,
        height,
        fps,
        bitrate_bps: bitrate,
        keyframe_interval_frames: fps,
    })
    .unwrap();
    let mut ch = Chunker::new(ChunkerConfig {
        target_duration_us: 1_000_000,
        max_fragment_bytes: lucidd::engine::MAX_PART,
        first_sequence: 1,
    })
    .unwrap();
    let mut out = Vec::new();
    use lucid_media::FrameSource;
    for _ in 0..fps * seconds {
        let f = src.next_frame().unwrap();
        for au in enc.encode(&f).unwrap() {
            ch.push(au).unwrap();
        }
        while let Some(c) = ch.pop_chunk() {
            out.push(c);
        }
    }
    for au in enc.flush().unwrap() {
        ch.push(au).unwrap();
    }
    ch.finish().unwrap();
    while let Some(c) = ch.pop_chunk() {
        out.push(c);
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let (w, h, fps, secs, bitrate) = (1280, 720, 30, 20, 4_000_000);
    eprintln!("encoding {secs} s of {w}x{h}@{fps} at {bitrate} bit/s (not timed)...");
    let frags = fragments(w, h, fps, secs, bitrate);
    let total: usize = frags.iter().map(|f| f.fragment.len()).sum();
    let mb = total as f64 / 1e6;
    eprintln!("{} fragments, {:.2} MB", frags.len(), mb);

    // Floor: AEAD + BLAKE3 alone, same buffers, both ciphers.
    for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
        let key = DataKey::generate(&ring::rand::SystemRandom::new()).unwrap();
        let t = Instant::now();
        let rounds = 5;
        for r in 0..rounds {
            for (i, f) in frags.iter().enumerate() {
                let header = ChunkHeader {
                    cipher,
                    flags: Flags::MEDIA,
                    epoch: r,
                    index: i as u64,
                    plain_len: f.fragment.len() as u32,
                    cipher_len: f.fragment.len() as u32 + 16,
                    session_id: "sess-bench000".into(),
                };
                let sealed = seal::seal_chunk(&key, cipher, &header, &f.fragment).unwrap();
                std::hint::black_box(blake3::hash(&f.fragment));
                std::hint::black_box(blake3::hash(&sealed));
            }
        }
        let s = t.elapsed().as_secs_f64();
        println!("floor  {:<18} AEAD+BLAKE3: {:>8.1} MB/s", cipher.name(), mb * rounds as f64 / s);
    }

    // The whole path, with the store on this machine's disk.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lucidd::Config::default();
    cfg.data_dir = dir.path().to_owned();
    cfg.api_token = Some("bench".into());
    let engine = Engine::open(cfg).unwrap();
    let row = engine.create_session(None, "bench".into(), Kind::Camera, |_| {}).unwrap();
    println!("cipher chosen for this CPU: {}", row.cipher);
    let mut lat = Vec::with_capacity(frags.len());
    let t = Instant::now();
    for f in &frags {
        let info = ChunkInfo {
            media: true,
            gap_before: false,
            media_start_us: f.media_start_us,
            media_end_us: f.media_end_us,
            wall_us: f.wall_start_us,
            frames: f.frame_count,
        };
        let t1 = Instant::now();
        engine.append(&row.id, &f.fragment, &info, None, None).unwrap();
        lat.push(t1.elapsed());
    }
    let s = t.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "path   chunk->compress->seal->digest->log->store: {:>8.1} MB/s over {} chunks ({:.1} chunks/s)",
        mb / s,
        frags.len(),
        frags.len() as f64 / s
    );
    println!(
        "commit latency per chunk: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "real-time margin: recording needs {:.3} MB/s at {} bit/s",
        bitrate as f64 / 8e6,
        bitrate
    );
}
