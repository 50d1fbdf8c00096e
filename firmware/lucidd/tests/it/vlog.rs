//! The value-log layout on a real file system (issue #9): file-system usage plateaus when
//! a small store records many times its capacity with deletions running; a redaction
//! frees the chunk's blocks; a deleted session's log left behind by a crash is removed at
//! open; and a data directory in the older layout (sealed bytes inline in redb) keeps
//! working beside new chunks.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use lucidd::engine::{ChunkInfo, Engine, Kind};
use redb::{ReadableDatabase, ReadableTable};

use crate::harness::test_config;

/// Incompressible, so what is stored is what was sent.
fn payload(i: u64, len: usize) -> Vec<u8> {
    crate::storage::noise(len, i)
}

/// (file sizes, allocated bytes) of the store: the redb file and every value log.
fn usage(data: &Path) -> (u64, u64) {
    let mut files = vec![data.join("lucid.redb")];
    if let Ok(rd) = std::fs::read_dir(data.join("vlog")) {
        files.extend(rd.flatten().map(|e| e.path()));
    }
    files.iter().filter_map(|f| std::fs::metadata(f).ok()).fold((0, 0), |(s, a), m| (s + m.len(), a + m.blocks() * 512))
}

#[test]
fn file_system_usage_plateaus_when_recording_ten_times_the_store_with_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(test_config(dir.path())).unwrap();
    // A store that keeps 4 sessions of 16 chunks of 100 KB (6.4 MB), recording 40 (64 MB).
    let (keep, sessions, chunks, len) = (4usize, 40u64, 16u64, 100_000usize);
    let mut live = std::collections::VecDeque::new();
    let mut peaks = Vec::new();
    for s in 0..sessions {
        let sid = format!("sess-long{s:04}");
        engine.create_session(Some(sid.clone()), "long".into(), Kind::Data, |_| {}).unwrap();
        for i in 0..chunks {
            engine.append(&sid, &payload(s * 1000 + i, len), &ChunkInfo::default(), None, None).unwrap();
        }
        live.push_back(sid);
        if live.len() > keep {
            engine.delete(&live.pop_front().unwrap()).unwrap();
        }
        peaks.push(usage(dir.path()));
    }
    let stored: u64 = live.iter().map(|sid| engine.get(sid).unwrap().stored_bytes).sum();
    // While recording, the log being written holds up to 16 MiB reserved ahead; a clean
    // close hands it back.
    let (_, open_alloc) = usage(dir.path());
    assert!(open_alloc <= stored + stored / 10 + (16 << 20), "allocated {open_alloc} while open");
    drop(engine);
    let (size, alloc) = usage(dir.path());
    let first_half = peaks[..peaks.len() / 2].iter().map(|p| p.1).max().unwrap();
    let second_half = peaks[peaks.len() / 2..].iter().map(|p| p.1).max().unwrap();
    // No growth once deletions run: the second half never needs more than the first.
    assert!(
        second_half <= first_half + (256 << 10),
        "usage grew: first half peak {first_half}, second half peak {second_half}"
    );
    // Space amplification: the value logs hold the sealed bytes with a small frame; redb
    // holds records, nodes and rows. Both together stay within 10 % of what is stored.
    let (sz, al) = (size as f64 / stored as f64, alloc as f64 / stored as f64);
    assert!(sz <= 1.10 && al <= 1.10, "space amplification: size {sz:.3}, allocated {al:.3}");
    assert_eq!(std::fs::read_dir(dir.path().join("vlog")).unwrap().count(), keep, "a deleted session left its log");
}

#[test]
fn a_redaction_frees_the_chunk_blocks_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let sid = "sess-redact01";
    let log = dir.path().join("vlog").join(format!("{sid}.vlog"));
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        engine.create_session(Some(sid.into()), "r".into(), Kind::Data, |_| {}).unwrap();
        for i in 0..4 {
            engine.append(sid, &payload(i, 256 << 10), &ChunkInfo::default(), None, None).unwrap();
        }
        let before = std::fs::metadata(&log).unwrap().blocks() * 512;
        assert!(engine.redact(sid, 1).unwrap());
        let after = std::fs::metadata(&log).unwrap().blocks() * 512;
        // Hole punching frees whole blocks inside the 256 KB; a file system without it
        // (tmpfs on an old kernel) gets zeros instead, and this would fail there.
        assert!(before - after >= 240 << 10, "redaction freed {} bytes", before - after);
    }
    let engine = Engine::open(cfg).unwrap();
    let reader = engine.reader(sid).unwrap();
    assert!(reader.plaintext(1).is_err(), "a redacted chunk still reads");
    for i in [0, 2, 3] {
        assert_eq!(reader.plaintext(i).unwrap(), payload(i, 256 << 10));
    }
    engine.append(sid, b"after", &ChunkInfo::default(), None, None).unwrap();
    engine.finalize(sid).unwrap();
    let mut tar = Vec::new();
    engine.write_evidence(sid, &mut tar).unwrap();
    // The verifier names the redacted chunk, and only that one.
    let e = lucid_core::verify_evidence(tar.as_slice()).unwrap_err();
    assert_eq!(format!("{e:?}"), "MissingChunk { index: 1 }");
}

#[test]
fn the_log_of_a_deleted_session_left_by_a_crash_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let log = dir.path().join("vlog").join("sess-gone0001.vlog");
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        engine.create_session(Some("sess-gone0001".into()), "g".into(), Kind::Data, |_| {}).unwrap();
        engine.append("sess-gone0001", &payload(1, 5000), &ChunkInfo::default(), None, None).unwrap();
        let kept = std::fs::read(&log).unwrap();
        engine.delete("sess-gone0001").unwrap();
        assert!(!log.exists());
        // The crash came between redb's delete and the unlink.
        std::fs::write(&log, kept).unwrap();
    }
    let engine = Engine::open(cfg).unwrap();
    assert!(!log.exists(), "the orphan log is still there");
    assert!(engine.get("sess-gone0001").is_err());
}

const CHUNKS: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("chunks");
const CHUNK_LOC: redb::TableDefinition<(&str, u64), (u64, u32)> = redb::TableDefinition::new("chunk_loc");
const VLOG_END: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("vlog_end");

/// Rewrites a data directory into the layout before value logs: every sealed chunk back
/// inline in redb's `chunks` table, no locations, no logs.
fn downgrade_to_inline(data: &Path) {
    let db = redb::Database::create(data.join("lucid.redb")).unwrap();
    let locs: Vec<((String, u64), (u64, u32))> = {
        let r = db.begin_read().unwrap();
        let t = r.open_table(CHUNK_LOC).unwrap();
        t.iter().unwrap().map(|i| i.unwrap()).map(|(k, v)| ((k.value().0.to_owned(), k.value().1), v.value())).collect()
    };
    let w = db.begin_write().unwrap();
    {
        let mut chunks = w.open_table(CHUNKS).unwrap();
        for ((sid, idx), (off, len)) in &locs {
            let bytes = std::fs::read(data.join("vlog").join(format!("{sid}.vlog"))).unwrap();
            chunks.insert((sid.as_str(), *idx), &bytes[*off as usize..*off as usize + *len as usize]).unwrap();
        }
    }
    w.delete_table(CHUNK_LOC).unwrap();
    w.delete_table(VLOG_END).unwrap();
    w.commit().unwrap();
    std::fs::remove_dir_all(data.join("vlog")).unwrap();
}

#[test]
fn a_data_directory_with_inline_chunks_keeps_working_beside_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let sid = "sess-inline01";
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        engine.create_session(Some(sid.into()), "old".into(), Kind::Data, |_| {}).unwrap();
        for i in 0..6 {
            engine.append(sid, &payload(i, 30_000), &ChunkInfo::default(), Some(&format!("c{i}")), None).unwrap();
        }
        engine.create_session(Some("sess-inline02".into()), "old".into(), Kind::Data, |_| {}).unwrap();
        engine.append("sess-inline02", b"old", &ChunkInfo::default(), None, None).unwrap();
    }
    downgrade_to_inline(dir.path());

    let engine = Engine::open(cfg.clone()).unwrap();
    let reader = engine.reader(sid).unwrap();
    for i in 0..6 {
        assert_eq!(reader.plaintext(i).unwrap(), payload(i, 30_000), "inline chunk {i}");
    }
    // New chunks go to the value log; old and new read alike, redaction and deletion
    // reach both.
    for i in 6..9 {
        engine.append(sid, &payload(i, 30_000), &ChunkInfo::default(), None, None).unwrap();
    }
    assert!(dir.path().join("vlog").join(format!("{sid}.vlog")).exists());
    assert!(engine.redact(sid, 2).unwrap());
    assert!(engine.redact(sid, 7).unwrap());
    drop(reader);
    drop(engine);
    let engine = Engine::open(cfg).unwrap();
    let reader = engine.reader(sid).unwrap();
    for i in [0, 1, 3, 4, 5, 6, 8] {
        assert_eq!(reader.plaintext(i).unwrap(), payload(i, 30_000), "chunk {i}");
    }
    assert!(reader.plaintext(2).is_err() && reader.plaintext(7).is_err());
    engine.finalize(sid).unwrap();
    let mut tar = Vec::new();
    engine.write_evidence(sid, &mut tar).unwrap();
    let e = lucid_core::verify_evidence(tar.as_slice()).unwrap_err();
    assert_eq!(format!("{e:?}"), "MissingChunk { index: 2 }");
    assert_eq!(engine.delete("sess-inline02").unwrap(), 1);
    assert_eq!(engine.store().totals().unwrap().0, 7, "inline and logged chunks are both counted");
}

const RECORDS: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("records");

/// Rewrites every entry header of a log in the first framing ("LVE1", 16 bytes of the
/// payload's BLAKE3) and returns the entries' offsets.
fn reframe_as_lve1(log: &Path) -> Vec<usize> {
    let mut bytes = std::fs::read(log).unwrap();
    let (mut at, mut starts) = (0usize, Vec::new());
    while at < bytes.len() {
        assert_eq!(&bytes[at..at + 4], b"LVE2", "entry at {at}");
        let n = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let digest = blake3::hash(&bytes[at + 24..at + 24 + n]);
        bytes[at..at + 4].copy_from_slice(b"LVE1");
        bytes[at + 8..at + 24].copy_from_slice(&digest.as_bytes()[..16]);
        starts.push(at);
        at += 24 + n;
    }
    std::fs::write(log, &bytes).unwrap();
    starts
}

/// Logs written before the CRC-32 framing ("LVE1" entries) still replay after a crash:
/// their BLAKE3 check bytes are checked, a torn "LVE1" tail is cut, and new entries
/// ("LVE2") follow them in the same file.
#[test]
fn a_log_in_the_first_framing_replays_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let sid = "sess-lve1old1";
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        engine.create_session(Some(sid.into()), "old".into(), Kind::Data, |_| {}).unwrap();
        for i in 0..5 {
            engine.append(sid, &payload(i, 20_000), &ChunkInfo::default(), None, None).unwrap();
        }
    }
    let log = dir.path().join("vlog").join(format!("{sid}.vlog"));
    let starts = reframe_as_lve1(&log);
    assert_eq!(starts.len(), 5);
    // The last entry torn: one byte of its payload changed.
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[starts[4] + 100] ^= 1;
    std::fs::write(&log, &bytes).unwrap();
    // As if the crash came before redb made any of it durable: replay rebuilds every row.
    {
        let db = redb::Database::create(dir.path().join("lucid.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut records = w.open_table(RECORDS).unwrap();
            let mut locs = w.open_table(CHUNK_LOC).unwrap();
            for i in 0..5u64 {
                records.remove((sid, i)).unwrap();
                locs.remove((sid, i)).unwrap();
            }
            w.open_table(VLOG_END).unwrap().insert(sid, 0).unwrap();
        }
        w.commit().unwrap();
    }

    let engine = Engine::open(cfg.clone()).unwrap();
    assert_eq!(std::fs::metadata(&log).unwrap().len(), starts[4] as u64, "the torn LVE1 entry was not cut");
    assert_eq!(engine.get(sid).unwrap().chunk_count, 4);
    let a = engine.append(sid, &payload(9, 20_000), &ChunkInfo::default(), None, None).unwrap();
    assert_eq!(a.first_index, 4);
    let reader = engine.reader(sid).unwrap();
    for i in 0..4 {
        assert_eq!(reader.plaintext(i).unwrap(), payload(i, 20_000), "replayed LVE1 chunk {i}");
    }
    assert_eq!(reader.plaintext(4).unwrap(), payload(9, 20_000));
    drop(reader);
    let new = std::fs::read(&log).unwrap();
    assert_eq!(&new[starts[4]..starts[4] + 4], b"LVE2", "new entries use the CRC-32 framing");
    engine.finalize(sid).unwrap();
    let mut tar = Vec::new();
    engine.write_evidence(sid, &mut tar).unwrap();
    assert_eq!(lucid_core::verify_evidence(tar.as_slice()).unwrap().chunk_count, 5);
}
