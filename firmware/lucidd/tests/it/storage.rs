//! The storage service (8086) over real HTTP: uploads through the real chunk path and
//! back, the SHA-256 check, listings, redaction (and what the evidence verifier then
//! says), whole-session deletion, archive, cleanup, health and metrics.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use lucidd::engine::Kind;
use serde_json::{Value, json};

use crate::harness::{Daemon, test_config};

/// Deterministic incompressible bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Compressible bytes (repeating text).
pub fn text(n: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog. ".iter().copied().cycle().take(n).collect()
}

pub fn sha256_hex(b: &[u8]) -> String {
    lucidd::util::hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

pub fn upload_body(chunk_id: &str, data: &[u8]) -> Value {
    json!({
        "chunk_data": B64.encode(data),
        "chunk_metadata": {
            "chunk_id": chunk_id,
            "chunk_index": 0,
            "hash_sha256": sha256_hex(data),
            "timestamp": "2026-01-01T00:00:00Z",
            "quality_score": 0.75,
            "camera": "front",
        }
    })
}

pub fn upload(d: &Daemon, sid: &str, chunk_id: &str, data: &[u8]) -> Value {
    let r = d.client().post_json(&d.url("storage", &format!("/sessions/{sid}/chunks")), &upload_body(chunk_id, data));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

pub fn list(d: &Daemon, sid: &str, query: &str) -> Value {
    let r = d.client().get(&d.url("storage", &format!("/sessions/{sid}/chunks{query}")));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn get_data(d: &Daemon, sid: &str, cid: &str) -> (u16, Value) {
    let r = d.client().get(&d.url("storage", &format!("/sessions/{sid}/chunks/{cid}")));
    (r.status, r.json())
}

#[test]
fn upload_then_get_returns_the_same_bytes() {
    let d = Daemon::start();
    let data = [text(100_000), noise(50_000, 1)].concat();
    let v = upload(&d, "sess-store1", "c-0", &data);
    assert_eq!(v["chunk_id"], "c-0");
    assert_eq!(v["session_id"], "sess-store1");
    assert!(v["storage_path"].as_str().unwrap().ends_with("/sessions/sess-store1/chunks/0"), "{v}");
    assert_eq!(v["metadata"]["hash_sha256"], sha256_hex(&data));
    assert_eq!(v["metadata"]["camera"], "front", "unknown client fields are kept");
    assert_eq!(v["metadata"]["storage"]["size_bytes"], data.len() as u64);
    assert_eq!(v["metadata"]["storage"]["plain_blake3"], blake3::hash(&data).to_hex().as_str());
    assert!(v["metadata"]["storage"]["sealed_size_bytes"].as_u64().unwrap() < data.len() as u64, "text compresses");

    let (status, g) = get_data(&d, "sess-store1", "c-0");
    assert_eq!(status, 200, "{g}");
    assert_eq!(B64.decode(g["data"].as_str().unwrap()).unwrap(), data);
    assert_eq!(g["metadata"]["quality_score"], 0.75);
    assert_eq!(g["chunk_id"], "c-0");
    // The same chunk by log index.
    let (status, g) = get_data(&d, "sess-store1", "0");
    assert_eq!(status, 200);
    assert_eq!(B64.decode(g["data"].as_str().unwrap()).unwrap(), data);

    // The session was created as a data session and counts the chunk.
    let row = d.engine.get("sess-store1").unwrap();
    assert_eq!(row.kind, Kind::Data);
    assert_eq!(row.chunk_count, 1);
    assert_eq!(row.plain_bytes, data.len() as u64);
}

#[test]
fn a_wrong_sha256_is_refused_and_nothing_is_stored() {
    let d = Daemon::start();
    let mut body = upload_body("c-0", b"some bytes");
    body["chunk_metadata"]["hash_sha256"] = json!(sha256_hex(b"other bytes"));
    let r = d.client().post_json(&d.url("storage", "/sessions/sess-hash/chunks"), &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["detail"].as_str().unwrap().contains("hash_sha256"));
    assert!(d.engine.get("sess-hash").is_err(), "no session for a refused chunk");
    // Upper-case hex of the right digest is fine.
    body["chunk_metadata"]["hash_sha256"] = json!(sha256_hex(b"some bytes").to_uppercase());
    let r = d.client().post_json(&d.url("storage", "/sessions/sess-hash/chunks"), &body);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn bad_input_gets_the_contract_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.max_chunk_bytes = 1024;
    cfg.max_body_bytes = 8192;
    let d = Daemon::start_with(dir, cfg);
    let c = d.client();
    let url = d.url("storage", "/sessions/sess-bad/chunks");

    let r = c.post_raw(&url, b"{not json".to_vec(), "application/json");
    assert_eq!(r.status, 422);
    assert!(r.json()["detail"].is_array());
    let r = c.post_json(&url, &json!({"chunk_data": "aGk=", "chunk_metadata": {"chunk_index": 1}}));
    assert_eq!(r.status, 422, "chunk_id is required: {}", r.text());
    let r = c.post_json(&url, &json!({"chunk_data": "***", "chunk_metadata": {"chunk_id": "x"}}));
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().unwrap().contains("base64"));
    let r = c.post_json(&url, &upload_body("big", &noise(2000, 2)));
    assert_eq!(r.status, 413, "decoded chunk over max_chunk_bytes: {}", r.text());
    let r = c.post_json(&url, &upload_body("huge", &noise(20_000, 2)));
    assert_eq!(r.status, 413, "body over max_body_bytes: {}", r.text());
    let r = d.anon().post_json(&url, &upload_body("x", b"x"));
    assert_eq!(r.status, 401);
    let r = c.post_json(&d.url("storage", "/sessions/bad$id/chunks"), &upload_body("x", b"x"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(d.engine.list().unwrap().is_empty(), "no refused request left a session behind");

    upload(&d, "sess-bad", "c-0", b"ok");
    let r = c.post_json(&url, &upload_body("c-0", b"again"));
    assert_eq!(r.status, 409, "duplicate chunk id: {}", r.text());
    assert_eq!(get_data(&d, "sess-bad", "nope").0, 404);
    assert_eq!(get_data(&d, "sess-none", "c-0").0, 404);
    for q in ["?limit=0", "?limit=1001", "?limit=abc", "?offset=-1"] {
        let r = c.get(&d.url("storage", &format!("/sessions/sess-bad/chunks{q}")));
        assert_eq!(r.status, 422, "{q}: {}", r.text());
    }
    let r = c.delete(&d.url("storage", "/sessions/sess-bad/chunks/nope"));
    assert_eq!(r.status, 404);
    let r = c.post(&d.url("storage", "/sessions/sess-none/archive"));
    assert_eq!(r.status, 404);
}

#[test]
fn a_chunk_larger_than_a_sealed_part_reads_back_whole() {
    let d = Daemon::start();
    let size = 9 << 20;
    let data = noise(size, 3);
    let v = upload(&d, "sess-big", "big-0", &data);
    let parts = v["metadata"]["parts"].as_u64().unwrap();
    assert!(parts >= 2, "9 MiB spans several sealed parts: {parts}");
    assert_eq!(d.engine.get("sess-big").unwrap().chunk_count, parts);
    let (status, g) = get_data(&d, "sess-big", "big-0");
    assert_eq!(status, 200);
    assert_eq!(B64.decode(g["data"].as_str().unwrap()).unwrap(), data);
    // A continuation part is not a chunk of its own.
    assert_eq!(get_data(&d, "sess-big", "1").0, 404);
    // The next chunk starts after the parts.
    let v2 = upload(&d, "sess-big", "small-1", b"tail");
    assert_eq!(v2["metadata"]["storage"]["log_index"], parts);
    let l = list(&d, "sess-big", "");
    // `total` counts the log's records; the listing groups the parts into one chunk.
    assert_eq!(l["pagination"]["total"], parts + 1);
    assert_eq!(l["pagination"]["count"], 2);
    assert_eq!(l["chunks"][0]["size_bytes"], size as u64);
    assert_eq!(l["chunks"][1]["chunk_id"], "small-1");
    assert_eq!(l["chunks"][1]["sequence_number"], parts);
}

#[test]
fn listing_paginates_in_log_order_with_real_leaf_hashes() {
    let d = Daemon::start();
    for i in 0..5 {
        upload(&d, "sess-list", &format!("c-{i}"), &text(1000 + i));
    }
    let all = list(&d, "sess-list", "");
    assert_eq!(all["pagination"]["count"], 5);
    let leaves = d.engine.leaves("sess-list").unwrap();
    for (i, c) in all["chunks"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c["chunk_id"], format!("c-{i}"));
        assert_eq!(c["sequence_number"], i as u64);
        assert_eq!(c["status"], "stored");
        assert_eq!(c["size_bytes"], (1000 + i) as u64);
        assert_eq!(c["merkle_hash"], lucidd::util::hex(&leaves[i]));
        assert_eq!(c["quality_score"], 0.75);
        assert_eq!(c["timestamp"], "2026-01-01T00:00:00Z");
        assert!(c["compression_ratio"].as_f64().unwrap() > 1.0);
    }
    let page = list(&d, "sess-list", "?limit=2&offset=1");
    let ids: Vec<&str> = page["chunks"].as_array().unwrap().iter().map(|c| c["chunk_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c-1", "c-2"]);
    assert_eq!(
        page["pagination"],
        json!({"limit": 2, "offset": 1, "count": 2, "total": 5, "has_next": true, "next_offset": 3})
    );
    let past = list(&d, "sess-list", "?offset=10");
    assert_eq!(past["pagination"]["count"], 0);
    let unknown = list(&d, "sess-unknown", "");
    assert_eq!(unknown["chunks"], json!([]));
}

#[test]
fn deleting_a_chunk_redacts_it_and_the_verifier_names_it() {
    let d = Daemon::start();
    let c = d.client();
    for i in 0..3 {
        upload(&d, "sess-red", &format!("c-{i}"), &text(5000 + i));
    }
    let before = list(&d, "sess-red", "");
    let r = c.delete(&d.url("storage", "/sessions/sess-red/chunks/c-1"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["deleted"], true);
    assert!(v["message"].as_str().unwrap().contains("record"), "{v}");
    assert_eq!(get_data(&d, "sess-red", "c-1").0, 404);
    assert_eq!(get_data(&d, "sess-red", "c-2").0, 200);
    assert_eq!(c.delete(&d.url("storage", "/sessions/sess-red/chunks/c-1")).status, 404, "already redacted");

    let after = list(&d, "sess-red", "");
    assert_eq!(after["pagination"]["total"], 3, "the record stays");
    assert_eq!(after["chunks"][1]["status"], "redacted");
    assert_eq!(after["chunks"][0]["status"], "stored");
    for i in 0..3 {
        assert_eq!(after["chunks"][i]["merkle_hash"], before["chunks"][i]["merkle_hash"], "the log is unchanged");
    }

    // Finalize and export: the log verifies up to the missing chunk, which is named.
    let r = c.post(&d.url("processor", "/api/v1/sessions/sess-red/finalize"));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut tar = Vec::new();
    d.engine.write_evidence("sess-red", &mut tar).unwrap();
    let err = lucid_core::evidence::verify_evidence(&tar[..]).unwrap_err();
    assert_eq!(err.to_string(), "chunk 1 is missing");
}

#[test]
fn deleting_all_chunks_deletes_the_session() {
    let d = Daemon::start();
    for i in 0..3 {
        upload(&d, "sess-del", &format!("c-{i}"), b"abc");
    }
    let r = d.client().delete(&d.url("storage", "/sessions/sess-del/chunks"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["deleted_chunks"], 3);
    assert!(d.engine.get("sess-del").is_err());
    assert_eq!(list(&d, "sess-del", "")["pagination"]["total"], 0);
    let r = d.client().delete(&d.url("storage", "/sessions/sess-del/chunks"));
    assert_eq!(r.json()["deleted_chunks"], 0, "nothing left to delete");
    assert_eq!(d.anon().delete(&d.url("storage", "/sessions/sess-del/chunks")).status, 401);
}

#[test]
fn an_archived_session_takes_no_chunks_until_restored() {
    let d = Daemon::start();
    let c = d.client();
    upload(&d, "sess-arch", "c-0", b"one");
    let r = c.post(&d.url("storage", "/sessions/sess-arch/archive"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["archived"], true);
    assert!(d.engine.get("sess-arch").unwrap().archived);
    let m = c.get(&d.url("storage", "/metrics")).json();
    assert_eq!(m["chunk_store"]["archived_sessions"], 1);
    let r = c.post_json(&d.url("storage", "/sessions/sess-arch/chunks"), &upload_body("c-1", b"two"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(get_data(&d, "sess-arch", "c-0").0, 200, "still readable");
    let r = c.post(&d.url("storage", "/sessions/sess-arch/restore"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["restored"], true);
    upload(&d, "sess-arch", "c-1", b"two");
    assert_eq!(d.engine.get("sess-arch").unwrap().chunk_count, 2);
}

#[test]
fn cleanup_removes_only_old_empty_data_sessions() {
    let d = Daemon::start();
    let old = lucidd::util::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::hours(2));
    let o = old.clone();
    d.engine.create_session(Some("sess-old-empty".into()), "x".into(), Kind::Data, move |r| r.created_at = o).unwrap();
    let o = old.clone();
    d.engine.create_session(Some("sess-old-full".into()), "x".into(), Kind::Data, move |r| r.created_at = o).unwrap();
    upload(&d, "sess-old-full", "c-0", b"evidence");
    d.engine.create_session(Some("sess-new-empty".into()), "x".into(), Kind::Data, |_| {}).unwrap();
    let o = old.clone();
    d.engine
        .create_session(Some("sess-old-camera".into()), "x".into(), Kind::Camera, move |r| r.created_at = o)
        .unwrap();

    assert_eq!(d.client().get(&d.url("storage", "/metrics")).json()["session_storage"]["last_cleanup"], Value::Null);
    let r = d.client().post(&d.url("storage", "/cleanup"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["cleanup_started"], true);
    assert_eq!(v["removed_sessions"], json!(["sess-old-empty"]));
    assert!(d.engine.get("sess-old-empty").is_err());
    for kept in ["sess-old-full", "sess-new-empty", "sess-old-camera"] {
        assert!(d.engine.get(kept).is_ok(), "{kept} must stay");
    }
    assert!(d.client().get(&d.url("storage", "/metrics")).json()["session_storage"]["last_cleanup"].is_string());
    assert_eq!(d.anon().post(&d.url("storage", "/cleanup")).status, 401);
}

#[test]
fn health_and_metrics_report_measured_values() {
    let d = Daemon::start();
    let h = d.client().get(&d.url("storage", "/health"));
    assert_eq!(h.status, 200, "{}", h.text());
    let h = h.json();
    assert_eq!(h["status"], "healthy");
    let cs = &h["services"]["chunk_store"];
    assert_eq!(cs["space_healthy"], true);
    assert_eq!(cs["compression_healthy"], true);
    assert_eq!(cs["compression_algorithm"], "zstd");
    let free = lucidd::http::free_space(d.dir.path());
    let reported = cs["available_space_bytes"].as_u64().unwrap();
    assert!(reported > 0 && reported.abs_diff(free) < 1 << 30, "{reported} vs {free}");

    let m0 = d.client().get(&d.url("storage", "/metrics")).json();
    assert_eq!(m0["session_storage"]["total_chunks"], 0);
    assert_eq!(m0["session_storage"]["compression_ratio"], Value::Null, "no data, no ratio");
    upload(&d, "sess-m1", "a", &text(20_000));
    upload(&d, "sess-m1", "b", &text(20_000));
    upload(&d, "sess-m2", "a", &noise(10_000, 4));
    let m = d.client().get(&d.url("storage", "/metrics")).json();
    let rows = d.engine.list().unwrap();
    let stored: u64 = rows.iter().map(|r| r.stored_bytes).sum();
    assert_eq!(m["session_storage"]["total_sessions"], 2);
    assert_eq!(m["session_storage"]["active_sessions"], 2);
    assert_eq!(m["session_storage"]["total_chunks"], 3);
    assert_eq!(m["chunk_store"]["total_chunks"], 3);
    assert_eq!(m["chunk_store"]["total_size_bytes"], 50_000);
    assert_eq!(m["chunk_store"]["compressed_size_bytes"], stored);
    assert!(stored < 50_000);
    assert!(m["chunk_store"]["compression_ratio"].as_f64().unwrap() > 1.0);
}

#[test]
fn health_is_503_below_the_free_space_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.min_free_bytes = u64::MAX;
    let d = Daemon::start_with(dir, cfg);
    let r = d.client().get(&d.url("storage", "/health"));
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "unhealthy");
    assert_eq!(v["services"]["chunk_store"]["space_healthy"], false);
    assert_eq!(v["services"]["session_storage"]["accessible"], true);
}
