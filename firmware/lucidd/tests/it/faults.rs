//! Injected storage faults, redb-style: a backend that runs out of space, and a backend
//! that "loses power" between two writes and leaves behind only what was synced plus a
//! random subset of unsynced pages (a disk cache that reorders). After each, nothing that
//! was acknowledged is lost, the log still verifies, and no nonce repeats.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lucid_core::chunk::ChunkRecord;
use lucidd::engine::{ChunkInfo, Engine, EngineError, Kind};
use lucidd::store::Store;
use redb::StorageBackend;
use serde_json::json;

use crate::harness::{Daemon, test_config};

// ----- a disk that fills up ------------------------------------------------------------

#[derive(Debug, Clone)]
struct SmallDisk {
    inner: Arc<redb::backends::InMemoryBackend>,
    limit: Arc<AtomicU64>,
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

fn payload(i: u64, len: usize) -> Vec<u8> {
    // Incompressible-ish bytes, so zstd does not make the disk look bigger than it is.
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn full_disk_refuses_cleanly_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let limit = Arc::new(AtomicU64::new(8 << 20));
    let l2 = limit.clone();
    let engine = Engine::open_with(cfg, move |p| {
        Store::open_with_backend(p, SmallDisk { inner: Arc::new(redb::backends::InMemoryBackend::new()), limit: l2 })
    })
    .unwrap();
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
    let l2 = limit.clone();
    let engine = Engine::open_with(cfg, move |p| {
        Store::open_with_backend(p, SmallDisk { inner: Arc::new(redb::backends::InMemoryBackend::new()), limit: l2 })
    })
    .unwrap();
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

#[derive(Debug, Default)]
struct Disk {
    /// What survives a power cut for sure: the image as of the last sync.
    durable: Vec<u8>,
    /// What the OS has been told so far.
    volatile: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct PowerCutDisk(Arc<Mutex<Disk>>);

impl StorageBackend for PowerCutDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.lock().unwrap().volatile.len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let d = self.0.lock().unwrap();
        let (o, n) = (offset as usize, out.len());
        if o + n > d.volatile.len() {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "read past end"));
        }
        out.copy_from_slice(&d.volatile[o..o + n]);
        Ok(())
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.lock().unwrap().volatile.resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap();
        d.durable = d.volatile.clone();
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap();
        let o = offset as usize;
        if o + data.len() > d.volatile.len() {
            d.volatile.resize(o + data.len(), 0);
        }
        d.volatile[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
}

impl PowerCutDisk {
    /// The file a power cut now would leave: the synced image, plus each unsynced page
    /// with probability 1/2 (torn: some of a transaction's pages made it, some did not).
    fn after_power_cut(&self, seed: u64) -> Vec<u8> {
        let d = self.0.lock().unwrap();
        let mut img = d.durable.clone();
        img.resize(d.volatile.len().max(d.durable.len()), 0);
        let mut x = seed | 1;
        for (i, page) in d.volatile.chunks(PAGE).enumerate() {
            let at = i * PAGE;
            let old = img.get(at..at + page.len()).map(|s| s.to_vec());
            if old.as_deref() != Some(page) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x & 1 == 1 {
                    img[at..at + page.len()].copy_from_slice(page);
                }
            }
        }
        img
    }
}

#[test]
fn power_cut_mid_commit_keeps_every_acknowledged_chunk() {
    for round in 0..6u64 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config(dir.path());
        let disk = PowerCutDisk::default();
        let d2 = disk.clone();
        let engine = Engine::open_with(cfg.clone(), move |p| Store::open_with_backend(p, d2)).unwrap();
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
        let image = disk.after_power_cut(round * 7919 + 1);
        writer.join().unwrap();
        drop(engine);

        // Boot again on the torn file.
        std::fs::write(cfg.store_path(), &image).unwrap();
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
