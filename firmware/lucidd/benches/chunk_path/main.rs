//! Benchmark of the chunk path: recorded fragments pushed through
//! chunk -> compress -> seal -> digest -> log -> store, beside the floor of AEAD + BLAKE3
//! alone on the same buffers; then the store's durable commit alone, for 50 KB, 500 KB
//! and 2 MB chunks, comparing store layouts side by side in one run (see `store_designs`):
//! per-chunk commit latency p50/p99 beside a plain write + fdatasync of the same bytes,
//! bytes written per byte stored, and file-system space per byte stored after recording
//! three times what the store keeps with deletions running. Last, the replay speed that
//! bounds recovery after a power cut. Run with `cargo bench -p lucidd --bench chunk_path`
//! (or `./scripts/bench`).
//!
//! Not a test: it asserts nothing about speed; it prints figures for the README.

mod store_designs;

use std::time::{Duration, Instant};

use lucid_core::chunk::{ChunkHeader, Flags};
use lucid_core::seal::{self, Cipher, DataKey};
use lucid_media::{
    Chunker, ChunkerConfig, EncoderConfig, OpenH264Encoder, TestPattern, TestPatternConfig, VideoEncoder,
};
use lucidd::engine::{ChunkInfo, Engine, Kind};

fn fragments(width: u32, height: u32, fps: u32, seconds: u32, bitrate: u32) -> Vec<lucid_media::MediaChunk> {
    let mut src = TestPattern::new(TestPatternConfig { width, height, fps, paced: false }).unwrap();
    let mut enc =
        OpenH264Encoder::new(EncoderConfig { width, height, fps, bitrate_bps: bitrate, keyframe_interval_frames: fps })
            .unwrap();
    let mut ch = Chunker::new(ChunkerConfig {
        target_duration_us: 1_000_000,
        max_fragment_bytes: lucidd::engine::MAX_PART,
        first_sequence: 1,
        ..Default::default()
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

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    // H.264 at a high bit rate is close to incompressible; so is this.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Buf {
    data: Vec<u8>,
    info: ChunkInfo,
}

fn run(label: &str, bufs: &[Buf]) {
    let total: usize = bufs.iter().map(|b| b.data.len()).sum();
    let mb = total as f64 / 1e6;
    println!(
        "\n== {label}: {} chunks, {:.2} MB, mean {:.0} KB/chunk",
        bufs.len(),
        mb,
        total as f64 / bufs.len() as f64 / 1e3
    );

    // Floor: AEAD + BLAKE3 alone on the same buffers, both ciphers.
    for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
        let key = DataKey::generate(&ring::rand::SystemRandom::new()).unwrap();
        let rounds = 3;
        let t = Instant::now();
        for r in 0..rounds {
            for (i, b) in bufs.iter().enumerate() {
                let header = ChunkHeader {
                    cipher,
                    flags: Flags::MEDIA,
                    epoch: r,
                    index: i as u64,
                    plain_len: b.data.len() as u32,
                    cipher_len: b.data.len() as u32 + 16,
                    session_id: "sess-bench000".into(),
                };
                let sealed = seal::seal_chunk(&key, cipher, &header, &b.data).unwrap();
                std::hint::black_box(blake3::hash(&b.data));
                std::hint::black_box(blake3::hash(&sealed));
            }
        }
        let s = t.elapsed().as_secs_f64();
        println!("floor  {:<18} AEAD + BLAKE3 (x2):            {:>8.1} MB/s", cipher.name(), mb * rounds as f64 / s);
    }

    // The whole path, with the store on this machine's disk (one fsync per chunk).
    let dir = tempfile::tempdir().unwrap();
    let cfg = lucidd::Config { data_dir: dir.path().to_owned(), api_token: Some("bench".into()), ..Default::default() };
    let engine = Engine::open(cfg).unwrap();
    let row = engine.create_session(None, "bench".into(), Kind::Camera, |_| {}).unwrap();
    let mut lat = Vec::with_capacity(bufs.len());
    let t = Instant::now();
    for b in bufs {
        let t1 = Instant::now();
        engine.append(&row.id, &b.data, &b.info, None, None).unwrap();
        lat.push(t1.elapsed());
    }
    let s = t.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "path   {:<18} compress+seal+digest+log+store: {:>8.1} MB/s ({:.0} chunks/s)",
        row.cipher,
        mb / s,
        bufs.len() as f64 / s
    );
    println!(
        "       per-chunk commit latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
}

fn main() {
    // `cargo bench -p lucidd --bench chunk_path -- store` runs the store comparison only.
    if std::env::args().any(|a| a == "store") {
        store_designs::main();
        return;
    }
    let (w, h, fps, secs, bitrate) = (1280, 720, 30, 60, 4_000_000);
    eprintln!("encoding {secs} s of {w}x{h}@{fps} from the synthetic camera (not timed)...");
    let recorded: Vec<Buf> = fragments(w, h, fps, secs, bitrate)
        .into_iter()
        .map(|f| Buf {
            info: ChunkInfo {
                media: true,
                gap_before: false,
                media_start_us: f.media_start_us,
                media_end_us: f.media_end_us,
                wall_us: f.wall_start_us,
                frames: f.frame_count,
                quality: None,
            },
            data: f.fragment,
        })
        .collect();
    run("recorded fMP4 fragments, synthetic camera 720p30, 1 s chunks", &recorded);

    // A busy scene at 16 Mbit/s gives 2 MB per 1 s chunk of near-incompressible H.264.
    let big: Vec<Buf> = (0..40)
        .map(|i| Buf {
            data: pseudo_random(2_000_000, i),
            info: ChunkInfo {
                media: true,
                media_start_us: i * 1_000_000,
                media_end_us: (i + 1) * 1_000_000,
                frames: 30,
                ..Default::default()
            },
        })
        .collect();
    run("2 MB chunks (a 16 Mbit/s camera), incompressible", &big);

    store_designs::main();
}
