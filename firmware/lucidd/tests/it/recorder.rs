//! The session recorder (8084) over real HTTP: camera recordings started and stopped with
//! chunk metadata read from the log, raw bodies cut into data chunks, the compression
//! counters and their reset, and the contract's status codes for bad input.

use serde_json::{Value, json};

use crate::harness::{Daemon, test_config};
use crate::pipeline::wait_chunks;
use crate::storage::{noise, text};

fn start(d: &Daemon, sid: &str) -> Value {
    let r = d.client().post_json(
        &d.url("recorder", "/recordings/start"),
        &json!({"session_id": sid, "owner_address": "0xowner", "metadata": {"site": "lab"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn a_recording_starts_stops_and_reports_its_chunks() {
    let d = Daemon::start();
    let c = d.client();
    let v = start(&d, "sess-rec");
    assert_eq!(v["status"], "starting");
    assert!(v["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(v["output_path"].as_str().unwrap().contains("sess-rec"));
    let row = d.engine.get("sess-rec").unwrap();
    assert_eq!(row.owner_address.as_deref(), Some("0xowner"));
    assert_eq!(row.metadata["site"], "lab");

    // Already recording; and the one camera is busy for any other session.
    let again = c.post_json(
        &d.url("recorder", "/recordings/start"),
        &json!({"session_id": "sess-rec", "owner_address": "0xowner"}),
    );
    assert_eq!(again.status, 409, "{}", again.text());
    let other = c.post_json(
        &d.url("recorder", "/recordings/start"),
        &json!({"session_id": "sess-other", "owner_address": "0xowner"}),
    );
    assert_eq!(other.status, 409, "{}", other.text());
    assert_eq!(c.delete(&d.url("recorder", "/recordings/sess-rec")).status, 409, "no delete while recording");

    let g = c.get(&d.url("recorder", "/recordings/sess-rec")).json();
    assert_eq!(g["status"], "recording");
    assert_eq!(g["owner_address"], "0xowner");
    let h = c.get(&d.url("recorder", "/health")).json();
    assert_eq!(h["service"], "lucid-session-recorder");
    assert_eq!(h["active_recordings"], 1);
    let st = c.get(&d.url("recorder", "/status")).json();
    assert_eq!(st["active_recordings"][0]["session_id"], "sess-rec");

    wait_chunks(&d, "sess-rec", 2);
    let r = c.post(&d.url("recorder", "/recordings/sess-rec/stop"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "stopped");
    assert!(v["stopped_at"].is_string());
    let n = v["final_chunks"].as_u64().unwrap();
    assert!(n >= 2);
    let meta = v["chunk_metadata"].as_array().unwrap();
    assert_eq!(meta.len() as u64, n);
    let records = d.engine.records("sess-rec").unwrap();
    for (m, rec) in meta.iter().zip(&records) {
        assert_eq!(m["chunk_id"], rec.record.index.to_string());
        assert_eq!(m["size_bytes"], u64::from(rec.record.sealed_len));
        let want = f64::from(rec.record.plain_len) / f64::from(rec.record.sealed_len);
        assert!((m["compression_ratio"].as_f64().unwrap() - want).abs() < 1e-9);
        assert_eq!(m["quality_score"], Value::Null, "the appliance measures no quality score");
    }
    assert_eq!(c.post(&d.url("recorder", "/recordings/sess-rec/stop")).status, 400, "not recording");

    let g = c.get(&d.url("recorder", "/recordings/sess-rec")).json();
    assert_eq!(g["status"], "stopped");
    assert_eq!(g["chunks_created"], n);
    let row = d.engine.get("sess-rec").unwrap();
    assert_eq!(g["total_chunk_size"], row.stored_bytes);
    let ch = c.get(&d.url("recorder", "/chunks/sess-rec")).json();
    assert_eq!(ch["total_chunks"], n);
    assert_eq!(ch["current_chunk_size"], 0);
    assert_eq!(ch["average_quality_score"], Value::Null);
    let l = c.get(&d.url("recorder", "/recordings")).json();
    assert_eq!(l["total_recordings"], 1);
    assert_eq!(l["recordings"][0]["session_id"], "sess-rec");

    let r = c.delete(&d.url("recorder", "/recordings/sess-rec"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "cleaned_up");
    assert_eq!(r.json()["deleted_chunks"], n);
    assert_eq!(c.get(&d.url("recorder", "/recordings/sess-rec")).status, 404);
}

#[test]
fn a_raw_body_is_cut_into_committed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.max_chunk_bytes = 64 << 10;
    cfg.max_body_bytes = 512 << 10;
    let d = Daemon::start_with(dir, cfg);
    let c = d.client();
    let body = [text(100 << 10), noise(50 << 10, 7)].concat();
    let r = c.post_raw(&d.url("recorder", "/chunks/sess-raw/process"), body.clone(), "application/octet-stream");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["processed_bytes"], body.len() as u64);
    assert_eq!(v["completed_chunks"], 3);
    let meta = v["chunk_metadata"].as_array().unwrap();
    assert_eq!(meta.len(), 3);
    assert!(meta[0]["compression_ratio"].as_f64().unwrap() > 2.0, "text compresses");
    assert!(meta[2]["compression_ratio"].as_f64().unwrap() < 1.0, "noise does not (sealing adds a header)");

    let reader = d.engine.reader("sess-raw").unwrap();
    let back: Vec<u8> = (0..3).flat_map(|i| reader.client_chunk(i).unwrap()).collect();
    assert_eq!(back, body);
    let ch = c.get(&d.url("recorder", "/chunks/sess-raw")).json();
    assert_eq!(ch["total_chunks"], 3);
    assert_eq!(ch["chunk_size_limit_mb"], 0.0625);
    assert_eq!(ch["compression_enabled"], true);
    // A data session is not a recording.
    assert_eq!(c.get(&d.url("recorder", "/recordings/sess-raw")).status, 404);

    let r = c.post_raw(&d.url("recorder", "/chunks/sess-raw/process"), Vec::new(), "application/octet-stream");
    assert_eq!(r.status, 400);
    let r = c.post_raw(&d.url("recorder", "/chunks/sess-raw/process"), vec![0; 600 << 10], "application/octet-stream");
    assert_eq!(r.status, 413, "{}", r.text());
    let r = d.anon().post_raw(&d.url("recorder", "/chunks/sess-raw/process"), vec![1; 10], "application/octet-stream");
    assert_eq!(r.status, 401);
    let r = c.post_raw(&d.url("recorder", "/chunks/bad$id/process"), vec![1; 10], "application/octet-stream");
    assert_eq!(r.status, 400);
    assert_eq!(d.engine.get("sess-raw").unwrap().chunk_count, 3, "refused requests committed nothing");
}

#[test]
fn compression_stats_count_and_reset() {
    let d = Daemon::start();
    let c = d.client();
    let s0 = c.get(&d.url("recorder", "/compression/stats")).json();
    assert_eq!(s0["total_compressions"], 0);
    assert_eq!(s0["average_compression_ratio"], Value::Null);
    let body = text(200_000);
    assert_eq!(
        c.post_raw(&d.url("recorder", "/chunks/sess-z/process"), body.clone(), "application/octet-stream").status,
        200
    );
    let s = c.get(&d.url("recorder", "/compression/stats")).json();
    assert_eq!(s["total_compressions"], 1);
    assert_eq!(s["total_bytes_compressed"], body.len() as u64);
    assert!(s["average_compression_ratio"].as_f64().unwrap() > 10.0);
    assert!(s["total_time_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(s["default_level"], d.engine.cfg.record.zstd_level);
    // Reading the chunk back decompresses it.
    assert_eq!(d.engine.reader("sess-z").unwrap().client_chunk(0).unwrap(), body);
    let s = c.get(&d.url("recorder", "/compression/stats")).json();
    assert_eq!(s["total_decompressions"], 1);
    assert_eq!(s["total_bytes_decompressed"], body.len() as u64);
    let h = c.get(&d.url("recorder", "/health")).json();
    assert_eq!(h["compression_stats"]["total_compressions"], 1);
    assert_eq!(h["total_sessions_with_chunks"], 1);

    assert_eq!(d.anon().post(&d.url("recorder", "/compression/reset")).status, 401);
    let r = c.post(&d.url("recorder", "/compression/reset"));
    assert_eq!(r.status, 200);
    assert!(r.json()["message"].is_string());
    let s = c.get(&d.url("recorder", "/compression/stats")).json();
    assert_eq!(s["total_compressions"], 0);
    assert_eq!(s["total_decompressions"], 0);
    assert_eq!(s["total_bytes_compressed"], 0);
    assert_eq!(s["total_time_ms"], 0.0);
}

#[test]
fn bad_input_and_unknown_recordings() {
    let d = Daemon::start();
    let c = d.client();
    let url = d.url("recorder", "/recordings/start");
    let r = c.post_raw(&url, b"{".to_vec(), "application/json");
    assert_eq!(r.status, 422);
    assert!(r.json()["detail"].is_array());
    let r = c.post_json(&url, &json!({"session_id": "sess-x"}));
    assert_eq!(r.status, 422, "owner_address is required");
    let r = c.post_json(&url, &json!({"session_id": "sess-x", "owner_address": "  "}));
    assert_eq!(r.status, 422);
    let r = c.post_json(&url, &json!({"session_id": "not/valid", "owner_address": "o"}));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = d.anon().post_json(&url, &json!({"session_id": "sess-x", "owner_address": "o"}));
    assert_eq!(r.status, 401);
    assert!(d.engine.list().unwrap().is_empty());

    for (m, path) in [
        ("POST", "/recordings/sess-none/stop"),
        ("GET", "/recordings/sess-none"),
        ("DELETE", "/recordings/sess-none"),
        ("GET", "/chunks/sess-none"),
    ] {
        let u = d.url("recorder", path);
        let r = match m {
            "POST" => c.post(&u),
            "GET" => c.get(&u),
            _ => c.delete(&u),
        };
        assert_eq!(r.status, 404, "{m} {path}: {}", r.text());
    }
    // A session holding uploaded data cannot be recorded into.
    assert_eq!(
        c.post_raw(&d.url("recorder", "/chunks/sess-data/process"), vec![1; 10], "application/octet-stream").status,
        200
    );
    let r = c.post_json(&url, &json!({"session_id": "sess-data", "owner_address": "o"}));
    assert_eq!(r.status, 400, "{}", r.text());
    let l = c.get(&d.url("recorder", "/recordings")).json();
    assert_eq!(l["total_recordings"], 0);
}
