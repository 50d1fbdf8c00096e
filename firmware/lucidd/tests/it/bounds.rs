//! Issue #8, "No client can wedge the daemon": every list is paged with a capped limit
//! and overflow-safe offsets, pages of a multi-part log never repeat or skip a chunk,
//! statistics and the live playlist come from counters and bounded reads (and agree with
//! a full scan), and a row written before the counters existed is counted once at open.

use lucid_core::chunk::{ChunkRecord, Flags};
use lucid_core::merkle::{self, MerkleTree};
use lucid_core::seal::Cipher;
use lucidd::engine::{Engine, Kind, Status};
use lucidd::store::{ChunkWrite, PartWrite};
use serde_json::Value;

use crate::harness::{Daemon, test_config};
use crate::storage::{list, noise, upload};

fn ids(page: &Value) -> Vec<String> {
    page["chunks"].as_array().unwrap().iter().map(|c| c["chunk_id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn storage_pages_follow_next_offset_across_multi_part_chunks() {
    let d = Daemon::start();
    let sid = "sess-pages";
    upload(&d, sid, "a", b"first");
    let big = upload(&d, sid, "big", &noise(9 << 20, 5));
    let parts = big["metadata"]["parts"].as_u64().unwrap();
    assert!(parts >= 2);
    for c in ["c", "d", "e"] {
        upload(&d, sid, c, c.as_bytes());
    }
    let total = 1 + parts + 3;
    // limit=1, following next_offset: every chunk once, in order.
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let p = list(&d, sid, &format!("?limit=1&offset={offset}"));
        assert_eq!(p["pagination"]["total"], total, "{p}");
        seen.extend(ids(&p));
        match p["pagination"]["next_offset"].as_u64() {
            Some(n) => {
                assert_eq!(p["pagination"]["has_next"], true);
                assert!(n > offset, "pages move forward: {p}");
                offset = n;
            }
            None => break,
        }
    }
    assert_eq!(seen, ["a", "big", "c", "d", "e"]);
    // An offset inside the multi-part chunk starts at the next chunk.
    assert_eq!(ids(&list(&d, sid, "?limit=2&offset=2")), ["c", "d"]);
    // Past the end, at the edge of the type: empty, no next page.
    for off in [total, total + 1, i64::MAX as u64] {
        let p = list(&d, sid, &format!("?offset={off}"));
        assert_eq!(p["pagination"]["count"], 0, "{p}");
        assert_eq!(p["pagination"]["has_next"], false, "{p}");
    }
    // The limit is capped; the cap itself is accepted.
    assert_eq!(d.client().get(&d.url("storage", &format!("/sessions/{sid}/chunks?limit=1001"))).status, 422);
    assert_eq!(list(&d, sid, "?limit=1000")["pagination"]["count"], 5);
}

#[test]
fn gateway_filtered_pages_cover_the_log_once() {
    let d = Daemon::start();
    let sid = "sess-filt";
    for i in 0..12 {
        upload(&d, sid, &format!("c-{i}"), format!("chunk {i}").as_bytes());
    }
    for i in [1, 4, 5, 11] {
        let r = d.client().delete(&d.url("storage", &format!("/sessions/{sid}/chunks/c-{i}")));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let url = d.url("gateway", &format!("/api/v1/sessions/{sid}/chunks"));
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let p = d.client().get(&format!("{url}?status=redacted&limit=2&offset={offset}")).json();
        assert_eq!(p["pagination"]["total"], 12, "{p}");
        assert!(p["chunks"].as_array().unwrap().len() <= 2);
        seen.extend(ids(&p));
        match p["pagination"]["next_offset"].as_u64() {
            Some(n) => offset = n,
            None => break,
        }
    }
    // A redacted chunk lost the metadata that named it: it is listed by its index.
    assert_eq!(seen, ["1", "4", "5", "11"]);
    let p = d.client().get(&format!("{url}?limit=5&offset=10")).json();
    assert_eq!(ids(&p), ["c-10", "11"]);
    assert_eq!(p["pagination"]["has_next"], false, "{p}");
    assert_eq!(d.client().get(&format!("{url}?limit=1001")).status, 422);
}

/// A session's record, synthetic: media flags, a gap every 7th, growing sizes.
fn record(sid: &str, index: u64) -> ChunkRecord {
    let mut flags = Flags::MEDIA;
    if index % 7 == 3 {
        flags = flags | Flags::GAP_BEFORE;
    }
    ChunkRecord {
        cipher: Cipher::ChaCha20Poly1305,
        flags,
        epoch: 1,
        index,
        media_start_us: index * 2_000_000,
        media_end_us: (index + 1) * 2_000_000,
        wall_clock_us: 1_700_000_000_000_000 + index as i64 * 2_000_000,
        frame_count: 60,
        plain_len: 1000 + index as u32,
        sealed_len: 1016 + index as u32,
        plain_blake3: *blake3::hash(&index.to_be_bytes()).as_bytes(),
        sealed_blake3: *blake3::hash(&(!index).to_be_bytes()).as_bytes(),
        session_id: sid.to_owned(),
    }
}

/// A camera session of `n` synthetic records (no sealed bytes) in status `status`, its
/// row written the way a build before `LogCounters` wrote it (no counters) when `old`,
/// else with the counters the chunk path keeps.
fn camera_session(engine: &Engine, sid: &str, n: u64, status: Status, old: bool) {
    let mut row = engine.create_session(Some(sid.into()), sid.into(), Kind::Camera, |_| {}).unwrap();
    let recs: Vec<Vec<u8>> = (0..n).map(|i| record(sid, i).encode()).collect();
    let mut tree = MerkleTree::new();
    let mut nodes = Vec::new();
    for r in &recs {
        tree.push(merkle::leaf_hash(r));
        nodes.extend(tree.completed_by_last());
    }
    let parts: Vec<PartWrite<'_>> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| PartWrite { index: i as u64, sealed: None, record: r, client_id: None, client_meta: None })
        .collect();
    row.chunk_count = n;
    row.stored_bytes = (0..n).map(|i| 1016 + i).sum();
    row.media_us = n * 2_000_000;
    row.status = status;
    row.counters.gaps = (0..n).filter(|i| i % 7 == 3).count() as u64;
    row.counters.max_sealed_len = n.saturating_sub(1) + 1016;
    let mut v = serde_json::to_value(&row).unwrap();
    if old {
        v.as_object_mut().unwrap().remove("counters");
    }
    let row_bytes = serde_json::to_vec(&v).unwrap();
    engine
        .store()
        .commit_chunk(&ChunkWrite { session_id: sid, parts: &parts, nodes: &nodes, session_row: &row_bytes })
        .unwrap();
}

#[test]
fn counters_of_an_older_row_are_backfilled_and_statistics_agree_with_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let sid = "sess-oldcount";
    {
        let engine = Engine::open(test_config(dir.path())).unwrap();
        camera_session(&engine, sid, 50, Status::Stopped, true);
        assert_eq!(engine.get(sid).unwrap().counters.version, 0, "written as an older build did");
    }
    let engine = Engine::open(test_config(dir.path())).unwrap();
    let c = engine.get(sid).unwrap().counters;
    let views = engine.records(sid).unwrap();
    let gaps = views.iter().filter(|v| v.record.flags.contains(Flags::GAP_BEFORE)).count() as u64;
    assert_eq!(c.version, lucidd::engine::LogCounters::VERSION);
    assert_eq!(c.gaps, gaps);
    assert_eq!(c.max_sealed_len, views.iter().map(|v| u64::from(v.record.sealed_len)).max().unwrap());

    let d = Daemon::serve(dir, engine);
    let s = d.client().get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/statistics"))).json();
    assert_eq!(s["recording_stats"]["gaps"], gaps, "{s}");
    assert_eq!(s["storage_stats"]["max_chunk_bytes"], 1016 + 49, "{s}");
    assert_eq!(s["time_range"]["start"], lucidd::util::micros_to_rfc3339(1_700_000_000_000_000), "{s}");
    assert_eq!(s["time_range"]["end"], lucidd::util::micros_to_rfc3339(1_700_000_000_000_000 + 50 * 2_000_000), "{s}");
}

#[test]
fn a_live_playlist_is_a_sliding_window_and_a_finished_one_lists_all() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(test_config(dir.path())).unwrap();
    camera_session(&engine, "sess-live0001", 100, Status::Recording, false);
    camera_session(&engine, "sess-done0001", 100, Status::Stopped, false);
    let d = Daemon::serve(dir, engine);
    let get =
        |sid: &str| d.client().get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/media/playlist.m3u8"))).text();

    let live = get("sess-live0001");
    let window = lucidd::http::appliance::LIVE_WINDOW;
    let first = 100 - window;
    assert!(live.contains(&format!("#EXT-X-MEDIA-SEQUENCE:{first}\n")), "{live}");
    assert_eq!(live.matches("#EXTINF:").count() as u64, window, "{live}");
    assert!(live.contains(&format!("\n{first}.m4s")) && !live.contains(&format!("\n{}.m4s", first - 1)), "{live}");
    assert!(!live.contains("#EXT-X-ENDLIST") && !live.contains("PLAYLIST-TYPE"), "{live}");
    // Gaps before the window (indices 3, 10, ... below `first`) slid out.
    let slid = (0..first).filter(|i| i % 7 == 3).count();
    assert!(live.contains(&format!("#EXT-X-DISCONTINUITY-SEQUENCE:{slid}\n")), "{live}");

    let vod = get("sess-done0001");
    assert!(vod.contains("#EXT-X-MEDIA-SEQUENCE:0\n") && vod.contains("#EXT-X-ENDLIST"), "{vod}");
    assert_eq!(vod.matches("#EXTINF:").count(), 100, "{vod}");
    assert_eq!(vod.matches("#EXT-X-DISCONTINUITY\n").count(), (0..100).filter(|i| i % 7 == 3).count(), "{vod}");
}

#[test]
fn uploaded_quality_scores_are_counted_at_commit() {
    let d = Daemon::start();
    for i in 0..4 {
        upload(&d, "sess-q", &format!("q-{i}"), b"x");
    }
    let row = d.engine.get("sess-q").unwrap();
    assert_eq!(row.counters.quality_count, 4);
    assert_eq!(row.counters.quality(), Some(0.75));
}
