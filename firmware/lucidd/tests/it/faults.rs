//! Injected storage faults, redb-style, over both files of the store (the redb database
//! and the value logs): a disk that runs out of space, and a disk that "loses power"
//! between two writes and leaves behind only what was synced plus a random subset of
//! unsynced pages (a disk cache that reorders), torn logs included. After each, nothing
//! that was acknowledged is lost, the log still verifies, and no nonce repeats.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lucid_core::chunk::ChunkRecord;
use lucidd::engine::{ChunkInfo, Engine, EngineError, Kind};
use lucidd::store::{BatchPolicy, Store, VlogBackend};
use redb::StorageBackend;
use serde_json::json;

use crate::harness::{Daemon, test_config};

// ----- a disk that fills up ------------------------------------------------------------

/// One small disk under both files: the redb image and the value logs share `limit`.
#[derive(Debug, Clone)]
struct SmallDisk {
    inner: Arc<redb::backends::InMemoryBackend>,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    limit: Arc<AtomicU64>,
}

impl SmallDisk {
    fn new(limit: Arc<AtomicU64>) -> SmallDisk {
        SmallDisk { inner: Arc::new(redb::backends::InMemoryBackend::new()), files: Default::default(), limit }
    }
    /// Bytes in use on the disk: the database plus every log.
    fn used(&self) -> u64 {
        self.inner.len().unwrap() + self.files.lock().unwrap().values().map(|f| f.len() as u64).sum::<u64>()
    }
    fn open(&self, p: &std::path::Path) -> Result<Store, lucidd::store::StoreError> {
        Store::open_with_backends(p, self.clone(), Arc::new(self.clone()))
    }
}

impl VlogBackend for SmallDisk {
    fn list(&self) -> std::io::Result<Vec<String>> {
        Ok(self.files.lock().unwrap().keys().cloned().collect())
    }
    fn len(&self, name: &str) -> std::io::Result<u64> {
        Ok(self.files.lock().unwrap().get(name).map_or(0, |f| f.len() as u64))
    }
    fn read(&self, name: &str, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        mem_read(self.files.lock().unwrap().get(name), offset, out)
    }
    fn write(&self, name: &str, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let grow = {
            let files = self.files.lock().unwrap();
            let cur = files.get(name).map_or(0, |f| f.len() as u64);
            (offset + data.len() as u64).saturating_sub(cur)
        };
        if self.used() + grow > self.limit.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        mem_write(self.files.lock().unwrap().entry(name.to_owned()).or_default(), offset, data);
        Ok(())
    }
    fn sync_data(&self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn set_len(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.files.lock().unwrap().entry(name.to_owned()).or_default().resize(len as usize, 0);
        Ok(())
    }
    fn punch_hole(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        mem_write(self.files.lock().unwrap().entry(name.to_owned()).or_default(), offset, &vec![0; len as usize]);
        Ok(())
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.files.lock().unwrap().remove(name);
        Ok(())
    }
    fn allocated(&self, name: &str) -> std::io::Result<u64> {
        VlogBackend::len(self, name)
    }
}

fn mem_read(f: Option<&Vec<u8>>, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
    let f = f.ok_or_else(|| std::io::Error::from(ErrorKind::NotFound))?;
    let o = offset as usize;
    let src = f.get(o..o + out.len()).ok_or_else(|| std::io::Error::new(ErrorKind::UnexpectedEof, "past end"))?;
    out.copy_from_slice(src);
    Ok(())
}

fn mem_write(f: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let o = offset as usize;
    if o + data.len() > f.len() {
        f.resize(o + data.len(), 0);
    }
    f[o..o + data.len()].copy_from_slice(data);
}

fn enospc() -> std::io::Error {
    std::io::Error::from_raw_os_error(28)
}

impl StorageBackend for SmallDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if len > self.limit.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if offset + data.len() as u64 > self.limit.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.write(offset, data)
    }
}

/// Incompressible-ish bytes, so zstd does not make the disk look bigger than it is.
fn payload(i: u64, len: usize) -> Vec<u8> {
    crate::storage::noise(len, i)
}

#[test]
fn full_disk_refuses_cleanly_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let limit = Arc::new(AtomicU64::new(8 << 20));
    let disk = SmallDisk::new(limit.clone());
    let engine = Engine::open_with(cfg, move |p| disk.open(p)).unwrap();
    let row = engine.create_session(Some("sess-full0001".into()), "full".into(), Kind::Data, |_| {}).unwrap();
    let sid = row.id.clone();
    let mut acked = Vec::new();
    let mut full_at = None;
    for i in 0..200u64 {
        let data = payload(i, 256 * 1024);
        match engine.append(&sid, &data, &ChunkInfo::default(), Some(&format!("c{i}")), Some(&json!({"parts": 1}))) {
            Ok(a) => acked.push((a.first_index, data)),
            Err(EngineError::Full(msg)) => {
                assert!(msg.to_lowercase().contains("no space") || msg.contains("28"), "{msg}");
                full_at = Some(i);
                break;
            }
            Err(e) => panic!("expected a full disk, got {e}"),
        }
    }
    let full_at = full_at.expect("the 8 MiB disk never filled");
    assert!(acked.len() >= 5, "only {} chunks fit", acked.len());

    // Nothing acknowledged is lost, the refused chunk left no trace.
    let reader = engine.reader(&sid).unwrap();
    for (idx, data) in &acked {
        assert_eq!(&reader.plaintext(*idx).unwrap(), data, "chunk {idx} changed");
    }
    assert_eq!(engine.get(&sid).unwrap().chunk_count, acked.len() as u64);
    assert!(engine.store().chunk_index(&sid, &format!("c{full_at}")).unwrap().is_none());

    // Space comes back: the same index is sealed again under a new epoch.
    let epoch_before = engine.epoch();
    limit.store(64 << 20, Ordering::SeqCst);
    let data = payload(999, 1000);
    let a = engine.append(&sid, &data, &ChunkInfo::default(), Some("after"), Some(&json!({"parts": 1}))).unwrap();
    assert_eq!(a.first_index, acked.len() as u64);
    assert!(engine.epoch() > epoch_before, "epoch did not move on after an uncommitted seal");
    let rec = ChunkRecord::decode(&engine.store().get_record(&sid, a.first_index).unwrap().unwrap()).unwrap();
    assert_eq!(rec.epoch, engine.epoch());

    // And the whole log still verifies offline.
    engine.finalize(&sid).unwrap();
    let mut tar = Vec::new();
    engine.write_evidence(&sid, &mut tar).unwrap();
    let report = lucid_core::verify_evidence(tar.as_slice()).unwrap();
    assert_eq!(report.chunk_count, acked.len() as u64 + 1);
}

#[test]
fn full_disk_is_a_507_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let limit = Arc::new(AtomicU64::new(4 << 20));
    let disk = SmallDisk::new(limit.clone());
    let engine = Engine::open_with(cfg, move |p| disk.open(p)).unwrap();
    let d = Daemon::serve(dir, engine);
    let c = d.client();
    use base64::Engine as _;
    let mut saw = None;
    for i in 0..100 {
        let b64 = base64::engine::general_purpose::STANDARD.encode(payload(i, 512 * 1024));
        let r = c.post_json(
            &d.url("processor", "/api/v1/chunks/process"),
            &json!({"session_id": "sess-http0001", "chunk_id": format!("c{i}"), "chunk_data_base64": b64}),
        );
        if r.status != 200 {
            saw = Some((r.status, r.text()));
            break;
        }
    }
    let (status, body) = saw.expect("never filled");
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("full"), "{body}");
}

// ----- a power cut between two writes -------------------------------------------------

const PAGE: usize = 4096;

#[derive(Debug, Default, Clone)]
struct Disk {
    /// What survives a power cut for sure: the image as of the last sync.
    durable: Vec<u8>,
    /// What the OS has been told so far.
    volatile: Vec<u8>,
}

impl Disk {
    /// The file a power cut now would leave: the synced image, plus each unsynced page
    /// with probability 1/2 (torn: some of a transaction's pages made it, some did not).
    /// With `keep_len` false the file also falls back to its synced length half the time
    /// (an unsynced append whose size change did not reach the journal).
    fn after_power_cut(&self, x: &mut u64, keep_len: bool) -> Vec<u8> {
        let mut img = self.durable.clone();
        img.resize(self.volatile.len().max(self.durable.len()), 0);
        for (i, page) in self.volatile.chunks(PAGE).enumerate() {
            let at = i * PAGE;
            let old = img.get(at..at + page.len()).map(|s| s.to_vec());
            if old.as_deref() != Some(page) && coin(x) {
                img[at..at + page.len()].copy_from_slice(page);
            }
        }
        if !keep_len {
            img.truncate(self.volatile.len());
            if coin(x) {
                img.truncate(self.durable.len().min(img.len()));
            }
        }
        img
    }
}

fn coin(x: &mut u64) -> bool {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x & 1 == 1
}

/// The machine's disk: the redb file and the value logs, behind one lock so a power cut
/// catches both at the same instant.
#[derive(Debug, Default)]
struct Machine {
    redb: Disk,
    logs: HashMap<String, Disk>,
}

#[derive(Debug, Clone, Default)]
struct PowerCutDisk(Arc<Mutex<Machine>>);

impl StorageBackend for PowerCutDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.lock().unwrap().redb.volatile.len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        mem_read(Some(&self.0.lock().unwrap().redb.volatile), offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.lock().unwrap().redb.volatile.resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut m = self.0.lock().unwrap();
        m.redb.durable = m.redb.volatile.clone();
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        mem_write(&mut self.0.lock().unwrap().redb.volatile, offset, data);
        Ok(())
    }
}

impl VlogBackend for PowerCutDisk {
    fn list(&self) -> std::io::Result<Vec<String>> {
        Ok(self.0.lock().unwrap().logs.keys().cloned().collect())
    }
    fn len(&self, name: &str) -> std::io::Result<u64> {
        Ok(self.0.lock().unwrap().logs.get(name).map_or(0, |d| d.volatile.len() as u64))
    }
    fn read(&self, name: &str, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        mem_read(self.0.lock().unwrap().logs.get(name).map(|d| &d.volatile), offset, out)
    }
    fn write(&self, name: &str, offset: u64, data: &[u8]) -> std::io::Result<()> {
        // A new name is durable at once (the real backend fsyncs the directory).
        mem_write(&mut self.0.lock().unwrap().logs.entry(name.to_owned()).or_default().volatile, offset, data);
        Ok(())
    }
    fn sync_data(&self, name: &str) -> std::io::Result<()> {
        let mut m = self.0.lock().unwrap();
        let d = m.logs.get_mut(name).ok_or_else(|| std::io::Error::from(ErrorKind::NotFound))?;
        d.durable = d.volatile.clone();
        Ok(())
    }
    fn set_len(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().logs.entry(name.to_owned()).or_default().volatile.resize(len as usize, 0);
        Ok(())
    }
    fn punch_hole(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        let mut m = self.0.lock().unwrap();
        let d = m.logs.entry(name.to_owned()).or_default();
        mem_write(&mut d.volatile, offset, &vec![0; len as usize]);
        Ok(())
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().logs.remove(name);
        Ok(())
    }
    fn allocated(&self, name: &str) -> std::io::Result<u64> {
        VlogBackend::len(self, name)
    }
}

impl PowerCutDisk {
    /// What a power cut now leaves of the database and of each value log.
    fn after_power_cut(&self, seed: u64) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
        let m = self.0.lock().unwrap();
        let mut x = seed | 1;
        let redb = m.redb.after_power_cut(&mut x, true);
        let logs = m.logs.iter().map(|(n, d)| (n.clone(), d.after_power_cut(&mut x, false))).collect();
        (redb, logs)
    }
}

/// Puts what a power cut left (`PowerCutDisk::after_power_cut`) where the daemon looks:
/// the redb image at the store's path, each log in `vlog/`. Returns that directory.
fn write_files(cfg: &lucidd::config::Config, image: &[u8], logs: &[(String, Vec<u8>)]) -> std::path::PathBuf {
    std::fs::write(cfg.store_path(), image).unwrap();
    let vdir = cfg.data_dir.join("vlog");
    std::fs::create_dir_all(&vdir).unwrap();
    for (name, bytes) in logs {
        std::fs::write(vdir.join(name), bytes).unwrap();
    }
    vdir
}

#[test]
fn power_cut_mid_commit_keeps_every_acknowledged_chunk() {
    for round in 0..8u64 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config(dir.path());
        let disk = PowerCutDisk::default();
        let d2 = disk.clone();
        let engine = Engine::open_with(cfg.clone(), move |p| {
            let s = Store::open_with_backends(p, d2.clone(), Arc::new(d2))?;
            // Odd rounds make redb durable every few chunks, so recovery replays from the
            // middle of the log; even rounds replay it all.
            if round % 2 == 1 {
                s.set_batch_policy(BatchPolicy { entries: 3, ..Default::default() });
            }
            Ok(s)
        })
        .unwrap();
        let sid = format!("sess-cut{round:05}");
        engine.create_session(Some(sid.clone()), "cut".into(), Kind::Data, |_| {}).unwrap();
        let acked = Arc::new(AtomicU64::new(0));
        let (e2, a2, s2) = (engine.clone(), acked.clone(), sid.clone());
        let writer = std::thread::spawn(move || {
            for i in 0..40u64 {
                let data = payload(i, 30_000 + (i as usize % 7) * 10_000);
                e2.append(&s2, &data, &ChunkInfo::default(), Some(&format!("c{i}")), Some(&json!({"parts": 1})))
                    .unwrap();
                a2.store(i + 1, Ordering::SeqCst);
            }
        });
        // Cut the power at a different moment each round.
        std::thread::sleep(std::time::Duration::from_millis(15 + round * 23));
        let acked_at_cut = acked.load(Ordering::SeqCst);
        let (image, logs) = disk.after_power_cut(round * 7919 + 1);
        writer.join().unwrap();
        drop(engine);

        // Boot again on the torn files.
        write_files(&cfg, &image, &logs);
        let engine = Engine::open(cfg).expect("store opens after a power cut");
        let row = engine.get(&sid).unwrap();
        assert!(
            row.chunk_count >= acked_at_cut,
            "round {round}: {} chunks survived, {acked_at_cut} were acknowledged",
            row.chunk_count
        );
        let reader = engine.reader(&sid).unwrap();
        for i in 0..row.chunk_count {
            let len = 30_000 + (i as usize % 7) * 10_000;
            assert_eq!(reader.plaintext(i).unwrap(), payload(i, len), "round {round}: chunk {i}");
        }
        // Recording goes on after the cut, under a new epoch, and the log verifies.
        let a = engine.append(&sid, b"after the cut", &ChunkInfo::default(), Some("after"), None).unwrap();
        assert_eq!(a.first_index, row.chunk_count);
        engine.finalize(&sid).unwrap();
        let mut tar = Vec::new();
        engine.write_evidence(&sid, &mut tar).unwrap();
        lucid_core::verify_evidence(tar.as_slice()).unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}

/// The power cut lands inside a log entry: a later entry's header and part of its payload
/// reached the disk, its flush did not. Recovery cuts exactly that tail, keeps every
/// chunk before it (replaying those redb had not made durable), and appends go on after.
#[test]
fn a_torn_value_log_tail_is_cut_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let disk = PowerCutDisk::default();
    let d2 = disk.clone();
    let engine =
        Engine::open_with(cfg.clone(), move |p| Store::open_with_backends(p, d2.clone(), Arc::new(d2))).unwrap();
    let sid = "sess-torn0001";
    engine.create_session(Some(sid.into()), "torn".into(), Kind::Data, |_| {}).unwrap();
    for i in 0..5u64 {
        engine.append(sid, &payload(i, 20_000), &ChunkInfo::default(), Some(&format!("c{i}")), None).unwrap();
    }
    let name = format!("{sid}.vlog");
    let good = VlogBackend::len(&disk, &name).unwrap();
    // Half of a sixth entry, never flushed, and the cut keeps all unsynced pages and the
    // new length: the worst tail recovery can meet.
    let mut head = vec![0u8; 24 + 9_000];
    VlogBackend::read(&disk, &name, 0, &mut head[..24]).unwrap();
    head[24..].fill(0xA5);
    VlogBackend::write(&disk, &name, good, &head).unwrap();
    let (image, logs) = {
        let mut m = disk.0.lock().unwrap();
        let log = m.logs.get_mut(&name).unwrap();
        log.durable = log.volatile.clone();
        drop(m);
        disk.after_power_cut(3)
    };
    drop(engine);
    let vdir = write_files(&cfg, &image, &logs);
    assert_eq!(std::fs::metadata(vdir.join(&name)).unwrap().len(), good + head.len() as u64);

    let engine = Engine::open(cfg.clone()).unwrap();
    assert_eq!(std::fs::metadata(vdir.join(&name)).unwrap().len(), good, "the torn tail was not cut");
    assert_eq!(engine.get(sid).unwrap().chunk_count, 5);
    let reader = engine.reader(sid).unwrap();
    for i in 0..5u64 {
        assert_eq!(reader.plaintext(i).unwrap(), payload(i, 20_000));
    }
    let a = engine.append(sid, b"after", &ChunkInfo::default(), Some("after"), None).unwrap();
    assert_eq!(a.first_index, 5);
    drop(reader);
    drop(engine);
    // Once more through a clean close and open: nothing to replay, nothing lost.
    let engine = Engine::open(cfg).unwrap();
    assert_eq!(engine.reader(sid).unwrap().plaintext(5).unwrap(), b"after");
    engine.finalize(sid).unwrap();
    let mut tar = Vec::new();
    engine.write_evidence(sid, &mut tar).unwrap();
    assert_eq!(lucid_core::verify_evidence(tar.as_slice()).unwrap().chunk_count, 6);
}

/// A multi-part upload is all or nothing: when the disk fills during it, no part is
/// committed (so no later chunk can be read as its continuation), and the retry of the
/// same upload succeeds once there is room.
#[test]
fn a_multi_part_upload_that_fails_leaves_no_parts_and_its_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let limit = Arc::new(AtomicU64::new(u64::MAX));
    let disk = SmallDisk::new(limit.clone());
    let d2 = disk.clone();
    let engine = Engine::open_with(cfg, move |p| d2.open(p)).unwrap();
    let sid = "sess-multi001";
    engine.ingest(sid, Some("before"), &payload(1, 1000), Default::default()).unwrap();
    // Room for about one sealed part, not three.
    let used = disk.used();
    limit.store(used + (lucidd::engine::MAX_PART as u64) * 3 / 2, Ordering::SeqCst);
    let big = payload(2, 2 * lucidd::engine::MAX_PART + 1000);
    match engine.ingest(sid, Some("big"), &big, Default::default()) {
        Err(EngineError::Full(_)) => {}
        other => panic!("expected a full disk, got {other:?}"),
    }
    assert_eq!(engine.get(sid).unwrap().chunk_count, 1, "a failed multi-part upload left parts behind");
    assert_eq!(engine.store().get_record(sid, 1).unwrap(), None);
    assert!(engine.store().chunk_index(sid, "big").unwrap().is_none());

    limit.store(u64::MAX, Ordering::SeqCst);
    let a = engine.ingest(sid, Some("big"), &big, Default::default()).unwrap().appended;
    assert_eq!((a.first_index, a.parts), (1, 3));
    let after = engine.ingest(sid, Some("after"), b"next", Default::default()).unwrap().appended;
    assert_eq!(after.first_index, 4);
    let reader = engine.reader(sid).unwrap();
    assert_eq!(reader.client_chunk(1).unwrap(), big);
    assert_eq!(reader.client_chunk(4).unwrap(), b"next");
    engine.finalize(sid).unwrap();
    let mut tar = Vec::new();
    engine.write_evidence(sid, &mut tar).unwrap();
    assert_eq!(lucid_core::verify_evidence(tar.as_slice()).unwrap().chunk_count, 5);
}

// ----- an IO error while another chunk is being appended -------------------------------

/// A disk whose redb writes fail while `fail` is set, and whose value-log flush can be
/// held (`hold`), so a test can put a reopen of the store between a chunk's append and its
/// rows: the interleaving two threads meet when one of them hits an IO error.
#[derive(Debug, Clone)]
struct Flaky {
    disk: SmallDisk,
    fail: Arc<std::sync::atomic::AtomicBool>,
    /// 0 free, 1 the next flush waits, 2 a flush is waiting, 3 released.
    gate: Arc<(Mutex<u8>, std::sync::Condvar)>,
}

impl Flaky {
    fn new() -> Flaky {
        Flaky {
            disk: SmallDisk::new(Arc::new(AtomicU64::new(u64::MAX))),
            fail: Default::default(),
            gate: Default::default(),
        }
    }
    fn open(&self, p: &std::path::Path) -> Result<Store, lucidd::store::StoreError> {
        let s = Store::open_with_backends(p, self.clone(), Arc::new(self.clone()))?;
        // Every chunk commit durable, so a failing disk fails it for sure.
        s.set_batch_policy(BatchPolicy { entries: 1, bytes: u64::MAX, interval: std::time::Duration::MAX });
        Ok(s)
    }
    fn failing(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }
    fn check(&self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) { Err(std::io::Error::from_raw_os_error(5)) } else { Ok(()) }
    }
    fn set_gate(&self, to: u8) {
        let (m, cv) = &*self.gate;
        *m.lock().unwrap() = to;
        cv.notify_all();
    }
    fn wait_gate(&self, state: u8) {
        let (m, cv) = &*self.gate;
        let _g = cv.wait_while(m.lock().unwrap(), |s| *s != state).unwrap();
    }
}

impl StorageBackend for Flaky {
    fn len(&self) -> Result<u64, std::io::Error> {
        StorageBackend::len(&self.disk)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        StorageBackend::read(&self.disk, offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        StorageBackend::set_len(&self.disk, len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        StorageBackend::sync_data(&self.disk)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        StorageBackend::write(&self.disk, offset, data)
    }
}

impl VlogBackend for Flaky {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.disk.list()
    }
    fn len(&self, name: &str) -> std::io::Result<u64> {
        VlogBackend::len(&self.disk, name)
    }
    fn read(&self, name: &str, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        VlogBackend::read(&self.disk, name, offset, out)
    }
    fn write(&self, name: &str, offset: u64, data: &[u8]) -> std::io::Result<()> {
        VlogBackend::write(&self.disk, name, offset, data)
    }
    fn sync_data(&self, name: &str) -> std::io::Result<()> {
        let (m, cv) = &*self.gate;
        let mut g = m.lock().unwrap();
        if *g == 1 {
            *g = 2;
            cv.notify_all();
            g = cv.wait_while(g, |s| *s != 3).unwrap();
            *g = 0;
        }
        drop(g);
        VlogBackend::sync_data(&self.disk, name)
    }
    fn set_len(&self, name: &str, len: u64) -> std::io::Result<()> {
        VlogBackend::set_len(&self.disk, name, len)
    }
    fn punch_hole(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        self.disk.punch_hole(name, offset, len)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.disk.remove(name)
    }
    fn allocated(&self, name: &str) -> std::io::Result<u64> {
        self.disk.allocated(name)
    }
}

/// Commits chunk `index` of `sid` straight through the store (opaque record bytes: the
/// store does not parse them).
fn commit_raw(store: &Store, sid: &str, index: u64) -> Result<(), lucidd::store::StoreError> {
    use lucidd::store::{ChunkWrite, PartWrite};
    let sealed = payload(index, 4000);
    let record = format!("record {index}").into_bytes();
    let parts = [PartWrite { index, sealed: Some(&sealed), record: &record, client_id: None, client_meta: None }];
    let row = serde_json::to_vec(&json!({ "id": sid, "chunks": index + 1 })).unwrap();
    store.commit_chunk(&ChunkWrite { session_id: sid, parts: &parts, nodes: &[], session_row: &row })
}

/// An IO error on one thread reopens the store while another thread has appended a
/// chunk's log entry but not yet committed its rows. The reopen must leave that entry to
/// its writer: when the writer then fails and takes the entry back, redb must not be left
/// pointing past the end of the log (the next open refused the store as corrupt), and when
/// the writer succeeds the chunk is there exactly once.
#[test]
fn a_reopen_during_an_append_leaves_the_entry_to_its_writer() {
    for writer_fails in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lucid.redb");
        let disk = Flaky::new();
        let sid = "sess-race0001";
        let store = Arc::new(disk.open(&path).unwrap());
        store.put_session(sid, &json!({ "id": sid })).unwrap();
        commit_raw(&store, sid, 0).unwrap();

        // The writer appends chunk 1 and is held before the log's flush returns.
        disk.set_gate(1);
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || commit_raw(&store, sid, 1))
        };
        disk.wait_gate(2);
        // Meanwhile another request hits an IO error, and the next one reopens the store.
        disk.failing(true);
        assert!(store.put_checkpoint(sid, 1, "checkpoint").is_err());
        disk.failing(false);
        assert!(store.get_session::<serde_json::Value>(sid).unwrap().is_some());
        // The writer goes on, on a disk that fails again or not.
        disk.failing(writer_fails);
        disk.set_gate(3);
        let result = writer.join().unwrap();
        disk.failing(false);
        assert_eq!(result.is_err(), writer_fails, "{result:?}");

        let has = |s: &Store, i: u64| s.get_record(sid, i).unwrap().is_some();
        assert!(has(&store, 0));
        assert_eq!(has(&store, 1), !writer_fails, "chunk 1 after the writer's {result:?}");
        drop(store);
        // What the next start finds agrees, and the log goes on.
        let store = disk.open(&path).expect("the store reopens after the race");
        assert!(has(&store, 0));
        assert_eq!(has(&store, 1), !writer_fails);
        if writer_fails {
            commit_raw(&store, sid, 1).unwrap();
        }
        commit_raw(&store, sid, 2).unwrap();
        assert_eq!(store.get_sealed(sid, 1).unwrap().unwrap(), payload(1, 4000));
        assert_eq!(store.get_sealed(sid, 2).unwrap().unwrap(), payload(2, 4000));
    }
}

/// The device log across a power cut (issue 10): sessions are created and deleted while
/// the power goes; after the boot every acknowledged create and deletion is in the device
/// log, the checkpoint read before the cut is a prefix of the one after (no fork), and the
/// device evidence verifies.
#[test]
fn power_cut_loses_no_device_log_event_and_forks_nothing() {
    for round in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config(dir.path());
        let disk = PowerCutDisk::default();
        let d2 = disk.clone();
        let engine =
            Engine::open_with(cfg.clone(), move |p| Store::open_with_backends(p, d2.clone(), Arc::new(d2))).unwrap();
        let verifier = lucid_core::Verifier::from_vkey(&engine.verifier_key()).unwrap();
        // (session, deleted) of every acknowledged call, in order.
        let acked = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
        let (e2, a2) = (engine.clone(), acked.clone());
        let writer = std::thread::spawn(move || {
            for i in 0..60u64 {
                let sid = format!("sess-dl{round:02}{i:04}");
                e2.create_session(Some(sid.clone()), "n".into(), Kind::Data, |_| {}).unwrap();
                a2.lock().unwrap().push((sid.clone(), false));
                if i % 3 == 2 {
                    e2.delete(&sid).unwrap();
                    a2.lock().unwrap().push((sid, true));
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(10 + round * 17));
        // What was acknowledged, and the checkpoint, before the cut.
        let acked_at_cut = acked.lock().unwrap().clone();
        let before = engine.device_checkpoint().unwrap();
        let (image, logs) = disk.after_power_cut(round * 104_729 + 3);
        eprintln!(
            "round {round}: cut after {} acknowledged calls, checkpoint {:?}",
            acked_at_cut.len(),
            before.as_ref().map(|b| b.0)
        );
        writer.join().unwrap();
        drop(engine);

        write_files(&cfg, &image, &logs);
        let engine = Engine::open(cfg).expect("store opens after a power cut");
        let (size, note) = engine.device_checkpoint().unwrap().expect("a device checkpoint");
        let after = verifier.verify_checkpoint(&note).unwrap();
        assert_eq!(after.size, size);
        if let Some((m, note)) = before {
            let b = verifier.verify_checkpoint(&note).unwrap();
            assert!(m <= size, "round {round}: the log shrank from {m} to {size}");
            if m < size {
                let (rm, rn, path) = engine.device_consistency(m, size).unwrap();
                assert_eq!((rm, rn), (b.root, after.root), "round {round}: roots differ from the checkpoints");
                lucid_core::merkle::verify_consistency(m, size, &b.root, &after.root, &path).expect("no fork");
            } else {
                assert_eq!(b.root, after.root, "round {round}: a fork at size {m}");
            }
        }
        let mut tar = Vec::new();
        engine.write_device_evidence(&mut tar).unwrap();
        let report = lucid_core::devlog::verify_device_evidence(tar.as_slice(), &lucid_core::Pin::Unpinned)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for (sid, deleted) in &acked_at_cut {
            let s = report.sessions.iter().find(|s| &s.session_id == sid);
            let s = s.unwrap_or_else(|| panic!("round {round}: the acknowledged create of {sid} was lost"));
            if *deleted {
                assert!(s.deleted.is_some(), "round {round}: the acknowledged deletion of {sid} was lost");
            }
        }
        // And the log goes on.
        engine.create_session(Some("sess-dlafter".into()), "n".into(), Kind::Data, |_| {}).unwrap();
        assert_eq!(engine.device_checkpoint().unwrap().unwrap().0, size + 1);
    }
}
