//! Stage counters and the processing-time histogram: the numbers behind the Lucid
//! `/metrics` and `/status` routes and the Prometheus exposition on 8087.
//!
//! Owns only counters (atomics, no locks on the hot path). It must not decide anything:
//! the engine records what happened, the HTTP layer renders it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The six pipeline stages of the contract, in order (name, type).
pub const STAGES: [(&str, &str); 6] = [
    ("recording", "recorder"),
    ("chunk_generation", "chunk_generator"),
    ("compression", "compressor"),
    ("encryption", "encryptor"),
    ("merkle_building", "merkle_builder"),
    ("storage", "storage"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Recording = 0,
    ChunkGeneration = 1,
    Compression = 2,
    Encryption = 3,
    MerkleBuilding = 4,
    Storage = 5,
}

#[derive(Debug, Default)]
pub struct StageCounters {
    pub processed: AtomicU64,
    pub errors: AtomicU64,
    pub busy_ns: AtomicU64,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StageSnapshot {
    pub total_chunks_processed: u64,
    pub error_count: u64,
    pub average_processing_time_ms: f64,
    pub throughput_chunks_per_second: f64,
}

/// Upper bounds (seconds) of the histogram of one chunk's whole processing time.
pub const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Debug)]
pub struct Metrics {
    pub stages: [StageCounters; 6],
    pub started: Instant,
    hist: [AtomicU64; 11],
    hist_sum_ns: AtomicU64,
    pub chunks_ok: AtomicU64,
    pub chunks_failed: AtomicU64,
    pub bytes_compressed_in: AtomicU64,
    pub bytes_compressed_out: AtomicU64,
    pub compressions: AtomicU64,
    pub decompressions: AtomicU64,
    pub bytes_decompressed: AtomicU64,
    pub compress_ns: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            stages: Default::default(),
            started: Instant::now(),
            hist: Default::default(),
            hist_sum_ns: AtomicU64::new(0),
            chunks_ok: AtomicU64::new(0),
            chunks_failed: AtomicU64::new(0),
            bytes_compressed_in: AtomicU64::new(0),
            bytes_compressed_out: AtomicU64::new(0),
            compressions: AtomicU64::new(0),
            decompressions: AtomicU64::new(0),
            bytes_decompressed: AtomicU64::new(0),
            compress_ns: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn record(&self, stage: Stage, took: Duration, ok: bool) {
        let c = &self.stages[stage as usize];
        if ok {
            c.processed.fetch_add(1, Relaxed);
        } else {
            c.errors.fetch_add(1, Relaxed);
        }
        c.busy_ns.fetch_add(took.as_nanos() as u64, Relaxed);
    }

    pub fn observe_chunk(&self, took: Duration, ok: bool) {
        if ok {
            self.chunks_ok.fetch_add(1, Relaxed);
        } else {
            self.chunks_failed.fetch_add(1, Relaxed);
        }
        let s = took.as_secs_f64();
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        self.hist[i].fetch_add(1, Relaxed);
        self.hist_sum_ns.fetch_add(took.as_nanos() as u64, Relaxed);
    }

    pub fn stage(&self, stage: usize) -> StageSnapshot {
        let c = &self.stages[stage];
        let n = c.processed.load(Relaxed);
        let e = c.errors.load(Relaxed);
        let busy = c.busy_ns.load(Relaxed) as f64 / 1e6;
        let up = self.started.elapsed().as_secs_f64().max(1e-3);
        StageSnapshot {
            total_chunks_processed: n,
            error_count: e,
            average_processing_time_ms: if n + e > 0 { busy / (n + e) as f64 } else { 0.0 },
            throughput_chunks_per_second: n as f64 / up,
        }
    }

    /// Cumulative histogram buckets (le, count), the +Inf count, and the sum in seconds.
    pub fn histogram(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut acc = 0;
        let mut out = Vec::with_capacity(BUCKETS.len());
        for (i, b) in BUCKETS.iter().enumerate() {
            acc += self.hist[i].load(Relaxed);
            out.push((*b, acc));
        }
        acc += self.hist[BUCKETS.len()].load(Relaxed);
        (out, acc, self.hist_sum_ns.load(Relaxed) as f64 / 1e9)
    }
}
