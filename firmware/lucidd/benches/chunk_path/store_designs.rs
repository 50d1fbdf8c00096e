//! The store's durable chunk commit, layouts side by side (issue #9): what each costs in
//! latency, device writes and file-system space per byte of sealed chunk.
//!
//! - `floor`: append the sealed bytes to a plain file and `fdatasync` it. No store can
//!   do less and still promise durability.
//! - `floor, preallocated`: the same, into space reserved with `fallocate(KEEP_SIZE)`
//!   (its allocated bytes include the unused reserve).
//! - `redb inline`: the layout before value logs, rebuilt here with redb directly (sealed
//!   bytes as a value in a `chunks` table, rows beside them, one durable commit per chunk).
//! - `vlog + durable redb`: `lucidd::store::Store` with a durable redb commit after every
//!   chunk (two flushes: the log's, then redb's).
//! - `vlog as WAL`: `Store` as the daemon runs it (one flush: the log's; redb durable in
//!   batches, the log replayed after a crash).
//!
//! Every design sees the same chunks in the same order, interleaved chunk by chunk so a
//! noisy neighbour on the machine slows them all alike. Bytes written are read from
//! `/proc/self/io` `write_bytes` around each operation: the kernel counts a page when this
//! process dirties it, so it sees exactly this process's data and metadata page writes,
//! never another process's (the machine's `/sys/block/*/stat` counts every process and is
//! printed only as a cross-check). It does not count the file system's own journal blocks.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{FileExt, MetadataExt};

use super::pseudo_random;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lucidd::store::{BatchPolicy, ChunkWrite, PartWrite, Store};
use redb::{Database, TableDefinition};

const CHUNKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chunks");
const RECORDS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("records");
const NODES: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("merkle_nodes");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// Sessions kept at once; the oldest is deleted when a new one starts.
const KEEP: usize = 4;
/// Sessions recorded per size: three times what the store keeps.
const SESSIONS_PER_RUN: usize = 12;

fn write_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Sectors written to the block device holding `dir`, by every process (cross-check).
fn device_sectors(dir: &Path) -> Option<u64> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    stat.split_whitespace().nth(6)?.parse().ok()
}

/// File sizes and allocated bytes (`st_blocks` × 512) of everything under `dir`.
fn usage(dir: &Path) -> (u64, u64) {
    let mut out = (0, 0);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            let (a, b) = usage(&e.path());
            out = (out.0 + a, out.1 + b);
        } else {
            out = (out.0 + m.len(), out.1 + m.blocks() * 512);
        }
    }
    out
}

/// One chunk as the engine commits it: sealed bytes, a record of the real size, the
/// Merkle nodes it completes and a session row of the real size.
struct Chunk {
    sid: String,
    index: u64,
    sealed: Vec<u8>,
    record: Vec<u8>,
    nodes: Vec<(u32, u64, [u8; 32])>,
    row: Vec<u8>,
}

trait Design {
    fn name(&self) -> &'static str;
    fn create(&mut self, sid: &str);
    fn commit(&mut self, c: &Chunk);
    fn delete(&mut self, sid: &str);
    /// Makes everything durable (end of the run; counted in the bytes written).
    fn finish(&mut self);
}

struct Floor {
    dir: PathBuf,
    files: std::collections::HashMap<String, (File, u64)>,
    /// Reserve this many bytes per file up front (`fallocate` with `KEEP_SIZE`): does it
    /// spare the flush the file system's allocation work?
    prealloc: u64,
}

impl Design for Floor {
    fn name(&self) -> &'static str {
        if self.prealloc > 0 { "floor, preallocated (KEEP_SIZE)" } else { "floor: write+fdatasync" }
    }
    fn create(&mut self, sid: &str) {
        let f = File::create(self.dir.join(sid)).unwrap();
        if self.prealloc > 0 {
            use std::os::fd::AsRawFd;
            // SAFETY: fallocate reads only its integer arguments; `f` is open.
            let r =
                unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, self.prealloc as libc::off_t) };
            assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
        }
        File::open(&self.dir).unwrap().sync_all().unwrap();
        self.files.insert(sid.into(), (f, 0));
    }
    fn commit(&mut self, c: &Chunk) {
        let (f, end) = self.files.get_mut(&c.sid).unwrap();
        f.write_all_at(&c.sealed, *end).unwrap();
        f.sync_data().unwrap();
        *end += c.sealed.len() as u64;
    }
    fn delete(&mut self, sid: &str) {
        self.files.remove(sid);
        std::fs::remove_file(self.dir.join(sid)).unwrap();
    }
    fn finish(&mut self) {}
}

struct Inline {
    db: Database,
}

impl Design for Inline {
    fn name(&self) -> &'static str {
        "redb inline (before)"
    }
    fn create(&mut self, sid: &str) {
        let txn = self.db.begin_write().unwrap();
        txn.open_table(SESSIONS).unwrap().insert(sid, &b"{}"[..]).unwrap();
        txn.commit().unwrap();
    }
    fn commit(&mut self, c: &Chunk) {
        let txn = self.db.begin_write().unwrap();
        {
            let sid = c.sid.as_str();
            txn.open_table(CHUNKS).unwrap().insert((sid, c.index), c.sealed.as_slice()).unwrap();
            txn.open_table(RECORDS).unwrap().insert((sid, c.index), c.record.as_slice()).unwrap();
            let mut n = txn.open_table(NODES).unwrap();
            for (l, i, h) in &c.nodes {
                n.insert((sid, *l as u8, *i), &h[..]).unwrap();
            }
            txn.open_table(SESSIONS).unwrap().insert(sid, c.row.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    fn delete(&mut self, sid: &str) {
        let txn = self.db.begin_write().unwrap();
        {
            txn.open_table(CHUNKS).unwrap().retain_in((sid, 0)..=(sid, u64::MAX), |_, _| false).unwrap();
            txn.open_table(RECORDS).unwrap().retain_in((sid, 0)..=(sid, u64::MAX), |_, _| false).unwrap();
            txn.open_table(NODES).unwrap().retain_in((sid, 0u8, 0)..=(sid, u8::MAX, u64::MAX), |_, _| false).unwrap();
            txn.open_table(SESSIONS).unwrap().remove(sid).unwrap();
        }
        txn.commit().unwrap();
    }
    fn finish(&mut self) {}
}

struct Vlog {
    name: &'static str,
    store: Store,
}

impl Design for Vlog {
    fn name(&self) -> &'static str {
        self.name
    }
    fn create(&mut self, sid: &str) {
        self.store.put_session(sid, &serde_json::json!({})).unwrap();
    }
    fn commit(&mut self, c: &Chunk) {
        let parts = [PartWrite {
            index: c.index,
            sealed: Some(&c.sealed),
            record: &c.record,
            client_id: None,
            client_meta: None,
        }];
        self.store
            .commit_chunk(&ChunkWrite { session_id: &c.sid, parts: &parts, nodes: &c.nodes, session_row: &c.row })
            .unwrap();
    }
    fn delete(&mut self, sid: &str) {
        self.store.delete_session(sid, None).unwrap();
    }
    fn finish(&mut self) {
        self.store.flush().unwrap();
    }
}

#[derive(Default)]
struct Tally {
    lat: Vec<Duration>,
    written: u64,
}

/// Runs one operation of one design, timing it and counting the bytes it wrote.
fn measure(d: &mut (Box<dyn Design>, PathBuf), t: &mut Tally, f: &mut dyn FnMut(&mut dyn Design)) -> Duration {
    let w0 = write_bytes();
    let t0 = Instant::now();
    f(d.0.as_mut());
    let took = t0.elapsed();
    t.written += write_bytes() - w0;
    took
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn designs(root: &Path) -> Vec<(Box<dyn Design>, PathBuf)> {
    let dir = |n: &str| {
        let d = root.join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let floor = dir("floor");
    let pre = dir("prealloc");
    let inline = dir("inline");
    let two = dir("vlog2");
    let wal = dir("wal");
    let s2 = Store::open(&two.join("lucid.redb")).unwrap();
    s2.set_batch_policy(BatchPolicy { entries: 1, ..Default::default() });
    vec![
        (Box::new(Floor { dir: floor.clone(), files: Default::default(), prealloc: 0 }) as Box<dyn Design>, floor),
        (Box::new(Floor { dir: pre.clone(), files: Default::default(), prealloc: 64 << 20 }), pre),
        (Box::new(Inline { db: Database::create(inline.join("lucid.redb")).unwrap() }), inline),
        (Box::new(Vlog { name: "vlog + durable redb (2 flushes)", store: s2 }), two),
        (
            Box::new(Vlog {
                name: "vlog as WAL (1 flush, chosen)",
                store: Store::open(&wal.join("lucid.redb")).unwrap(),
            }),
            wal,
        ),
    ]
}

fn chunk(sid: &str, index: u64, len: usize) -> Chunk {
    // A record is ~110 bytes and a session row ~700 bytes of JSON in the daemon; the
    // nodes are those a leaf at `index` completes.
    let mut nodes = vec![(0u32, index, [7u8; 32])];
    let (mut level, mut i) = (0u32, index);
    while i & 1 == 1 {
        level += 1;
        i >>= 1;
        nodes.push((level, i, [level as u8; 32]));
    }
    Chunk {
        sid: sid.into(),
        index,
        sealed: pseudo_random(len, index * 7 + len as u64),
        record: pseudo_random(110, index),
        nodes,
        row: vec![b'x'; 700],
    }
}

fn run_size(label: &str, len: usize, per_session: u64) {
    let root = tempfile::tempdir_in(bench_dir()).unwrap();
    let mut ds = designs(root.path());
    let mut tallies: Vec<Tally> = ds.iter().map(|_| Tally::default()).collect();
    let mut live: VecDeque<(String, u64)> = VecDeque::new();
    let mut stored = 0u64;
    for s in 0..SESSIONS_PER_RUN {
        let sid = format!("sess-{s:08}");
        for (d, t) in ds.iter_mut().zip(&mut tallies) {
            measure(d, t, &mut |d| d.create(&sid));
        }
        let mut bytes = 0;
        for i in 0..per_session {
            let c = chunk(&sid, i, len);
            for (d, t) in ds.iter_mut().zip(&mut tallies) {
                let took = measure(d, t, &mut |d| d.commit(&c));
                t.lat.push(took);
            }
            stored += len as u64;
            bytes += len as u64;
        }
        live.push_back((sid, bytes));
        if live.len() > KEEP {
            let (old, _) = live.pop_front().unwrap();
            for (d, t) in ds.iter_mut().zip(&mut tallies) {
                measure(d, t, &mut |d| d.delete(&old));
            }
        }
    }
    for (d, t) in ds.iter_mut().zip(&mut tallies) {
        measure(d, t, &mut |d| d.finish());
    }
    let live_bytes: u64 = live.iter().map(|(_, b)| b).sum();
    let n = SESSIONS_PER_RUN as u64 * per_session;
    println!(
        "\n== store commit, {label} chunks: {n} chunks ({:.0} MB) in {SESSIONS_PER_RUN} sessions of {per_session}, \
         the {KEEP} newest kept ({:.0} MB live)",
        stored as f64 / 1e6,
        live_bytes as f64 / 1e6
    );
    println!(
        "{:<34} {:>7} {:>7} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "design", "p50 ms", "p99 ms", "p50/floor", "p99/floor", "written/B", "file/B", "alloc/B"
    );
    let mut floor = (Duration::ZERO, Duration::ZERO);
    for (k, ((d, dir), t)) in ds.iter().zip(&mut tallies).enumerate() {
        t.lat.sort();
        let (p50, p99) = (pct(&t.lat, 0.5), pct(&t.lat, 0.99));
        if k == 0 {
            floor = (p50, p99);
        }
        let (size, alloc) = usage(dir);
        println!(
            "{:<34} {:>7.2} {:>7.2} {:>9.2} {:>9.2} {:>10.3} {:>9.3} {:>9.3}",
            d.name(),
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / floor.0.as_secs_f64(),
            p99.as_secs_f64() / floor.1.as_secs_f64(),
            t.written as f64 / stored as f64,
            size as f64 / live_bytes as f64,
            alloc as f64 / live_bytes as f64,
        );
    }
    drop(ds);
}

/// How fast `Store::open` replays value-log entries redb had not made durable: this and
/// `BatchPolicy::bytes` bound the time recovery takes after a power cut.
fn replay_speed() {
    let root = tempfile::tempdir_in(bench_dir()).unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    let store = Store::open(&a.join("lucid.redb")).unwrap();
    // Nothing durable in redb after the session row: every entry must be replayed.
    store.set_batch_policy(BatchPolicy { entries: u32::MAX, bytes: u64::MAX, interval: Duration::from_secs(86400) });
    let sid = "sess-replay01";
    store.put_session(sid, &serde_json::json!({})).unwrap();
    let (n, len) = (64u64, 500_000usize);
    for i in 0..n {
        let c = chunk(sid, i, len);
        let parts =
            [PartWrite { index: i, sealed: Some(&c.sealed), record: &c.record, client_id: None, client_meta: None }];
        store
            .commit_chunk(&ChunkWrite { session_id: sid, parts: &parts, nodes: &c.nodes, session_row: &c.row })
            .unwrap();
    }
    // What a power cut now leaves: redb's last durable commit and the flushed log.
    std::fs::create_dir_all(b.join("vlog")).unwrap();
    std::fs::copy(a.join("lucid.redb"), b.join("lucid.redb")).unwrap();
    let name = format!("{sid}.vlog");
    std::fs::copy(a.join("vlog").join(&name), b.join("vlog").join(&name)).unwrap();
    drop(store);
    let t = Instant::now();
    let store = Store::open(&b.join("lucid.redb")).unwrap();
    let s = t.elapsed().as_secs_f64();
    assert!(store.has_sealed(sid, n - 1).unwrap(), "replay lost the last chunk");
    let mb = (n as usize * len) as f64 / 1e6;
    println!(
        "\n== recovery: replayed {n} entries ({mb:.0} MB, page cache warm) in {:.0} ms: {:.0} MB/s, \
         {:.2} ms/entry",
        s * 1e3,
        mb / s,
        s * 1e3 / n as f64
    );
    let bound = BatchPolicy::default().bytes as f64 / 1e6;
    println!(
        "   at most {bound:.0} MB is ever replayed (BatchPolicy): {:.1} s at this speed, {:.1} s if an SD card \
         reads 40 MB/s; independent of the card's size",
        bound / (mb / s),
        bound / 40.0_f64.min(mb / s)
    );
}

pub fn main() {
    let probe = bench_dir();
    let dev0 = device_sectors(&probe);
    let w0 = write_bytes();
    run_size("50 KB", 50_000, 100);
    run_size("500 KB", 500_000, 12);
    run_size("2 MB", 2_000_000, 6);
    let w = write_bytes() - w0;
    if let (Some(a), Some(b)) = (dev0, device_sectors(&probe)) {
        println!(
            "\n(cross-check: this process dirtied {:.0} MB; the device took {:.0} MB from all processes meanwhile)",
            w as f64 / 1e6,
            (b - a) as f64 * 512.0 / 1e6
        );
    }
    replay_speed();
    let _ = std::io::stdout().flush();
}

/// Where the stores go: `BENCH_DIR` (e.g. a mounted SD card), else cargo's target/tmp,
/// on the disk the build is on (not /tmp, which may be a RAM disk).
fn bench_dir() -> PathBuf {
    std::env::var_os("BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_TARGET_TMPDIR").into())
}
