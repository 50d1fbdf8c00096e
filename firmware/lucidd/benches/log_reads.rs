//! Benchmark of the read side on long logs: single-chunk record reads, inclusion proofs
//! and consistency proofs on a session of 1,000, 10,000 and 100,000 chunk records, p50
//! and p99 each. The records are synthetic and carry no media (records and Merkle nodes
//! only, written through the store in large transactions so setup takes seconds); the
//! reads go through the same `Engine` calls the HTTP routes make.
//!
//! The list and statistics rows time the engine calls behind the chunk lists (a page
//! of 100 from a random offset; a filtered page that matches nothing, so it scans its
//! whole 4,096-record window), the statistics route (row and first and last record) and
//! a live playlist's window.
//!
//! Run with `cargo bench -p lucidd --bench log_reads`. Not a test: it asserts nothing
//! about speed. The "before" rows time what a proof or a chunk list cost before subtree
//! hashes and paging (load every record), for contrast, on a few samples.

use std::time::{Duration, Instant};

use lucid_core::chunk::{ChunkRecord, Flags};
use lucid_core::merkle::{self, MerkleTree};
use lucid_core::seal::Cipher;
use lucidd::engine::{Engine, Kind};
use lucidd::store::{ChunkWrite, PartWrite};

const SIZES: [u64; 3] = [1_000, 10_000, 100_000];
const SAMPLES: usize = 2_000;
const BATCH: u64 = 20_000;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// xorshift64*: a fixed, printed seed makes runs comparable.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn record(sid: &str, index: u64) -> ChunkRecord {
    ChunkRecord {
        cipher: Cipher::ChaCha20Poly1305,
        flags: Flags::MEDIA,
        epoch: 1,
        index,
        media_start_us: index * 1_000_000,
        media_end_us: (index + 1) * 1_000_000,
        wall_clock_us: 1_700_000_000_000_000 + index as i64 * 1_000_000,
        frame_count: 30,
        plain_len: 200_000,
        sealed_len: 200_016,
        plain_blake3: *blake3::hash(&index.to_be_bytes()).as_bytes(),
        sealed_blake3: *blake3::hash(&(!index).to_be_bytes()).as_bytes(),
        session_id: sid.to_owned(),
    }
}

/// A data session holding `n` synthetic records, their leaves and every complete
/// subtree hash, committed `BATCH` records per transaction.
fn build(engine: &Engine, n: u64) -> String {
    let mut row = engine.create_session(None, format!("bench-{n}"), Kind::Data, |_| {}).unwrap();
    let sid = row.id.clone();
    let mut tree = MerkleTree::new();
    let mut from = 0;
    while from < n {
        let to = (from + BATCH).min(n);
        let recs: Vec<Vec<u8>> = (from..to).map(|i| record(&sid, i).encode()).collect();
        let mut nodes = Vec::new();
        for r in &recs {
            tree.push(merkle::leaf_hash(r));
            nodes.extend(tree.completed_by_last());
        }
        let parts: Vec<PartWrite<'_>> = recs
            .iter()
            .enumerate()
            .map(|(k, r)| PartWrite {
                index: from + k as u64,
                sealed: None,
                record: r,
                client_id: None,
                client_meta: None,
            })
            .collect();
        row.chunk_count = to;
        let row_bytes = serde_json::to_vec(&row).unwrap();
        engine
            .store()
            .commit_chunk(&ChunkWrite { session_id: &sid, parts: &parts, nodes: &nodes, session_row: &row_bytes })
            .unwrap();
        from = to;
    }
    sid
}

fn measure(samples: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..samples)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    (pct(&t, 0.5), pct(&t, 0.99))
}

fn main() {
    let seed = 0x5EED_1095_u64;
    let dir = tempfile::tempdir().unwrap();
    let cfg = lucidd::config::Config {
        data_dir: dir.path().to_owned(),
        api_token: Some("bench-token-0123456789".into()),
        ..Default::default()
    };
    let engine = Engine::open(cfg).unwrap();
    println!("log_reads: seed {seed:#x}, {SAMPLES} samples per cell (rebuild: 5)");
    println!("{:>8}  {:<28} {:>11} {:>11}", "records", "operation", "p50", "p99");
    for n in SIZES {
        let t = Instant::now();
        let sid = build(&engine, n);
        eprintln!("  built {n} records in {:.2?}", t.elapsed());
        let mut rng = Rng(seed);
        let row = |op: &str, (p50, p99): (Duration, Duration)| {
            println!("{n:>8}  {op:<28} {:>11.2?} {:>11.2?}", p50, p99);
        };
        row(
            "chunk record by index",
            measure(SAMPLES, || {
                let i = rng.below(n);
                engine.chunk(&sid, &i.to_string()).unwrap();
            }),
        );
        let mut rng = Rng(seed ^ 1);
        row(
            "inclusion proof",
            measure(SAMPLES, || {
                let i = rng.below(n);
                engine.inclusion(&sid, i, Some(n)).unwrap();
            }),
        );
        let mut rng = Rng(seed ^ 2);
        row(
            "consistency proof",
            measure(SAMPLES, || {
                let m = rng.below(n) + 1;
                engine.consistency(&sid, m, n).unwrap();
            }),
        );
        // The list and statistics routes' engine calls (issue #8): each is a bounded
        // range read or a few lookups, whatever n.
        let mut rng = Rng(seed ^ 4);
        row(
            "chunk list page (100)",
            measure(SAMPLES / 10, || {
                let from = rng.below(n);
                engine.records_from(&sid, from, 100).unwrap();
            }),
        );
        let mut rng = Rng(seed ^ 5);
        row(
            "filtered list, no match",
            measure(SAMPLES / 100, || {
                // Every synthetic record is "redacted" (no sealed bytes): a filter for
                // stored chunks matches none and scans the whole window, the worst case.
                let from = rng.below(n);
                engine.records_where(&sid, from, 100, 4096, |_, present| present).unwrap();
            }),
        );
        row(
            "statistics (row + edges)",
            measure(SAMPLES, || {
                let r = engine.get(&sid).unwrap();
                engine.edge_records(&sid, r.chunk_count).unwrap();
            }),
        );
        row(
            "live playlist window (30)",
            measure(SAMPLES / 10, || {
                engine.records_from(&sid, n - lucidd::http::appliance::LIVE_WINDOW, 30).unwrap();
            }),
        );
        row(
            "chunk list (full scan, before)",
            measure(5, || {
                engine.records(&sid).unwrap();
            }),
        );
        let mut rng = Rng(seed ^ 3);
        row(
            "inclusion (rebuild, before)",
            measure(5, || {
                let i = rng.below(n);
                let leaves = engine.leaves(&sid).unwrap();
                merkle::inclusion_proof(&leaves, i, n).unwrap();
                merkle::root(&leaves);
            }),
        );
    }
}
