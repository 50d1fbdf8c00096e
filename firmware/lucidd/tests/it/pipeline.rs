//! The pipeline manager (8083) over real HTTP: the state machine driving the real camera,
//! stage metrics that are the engine's counters, chunk pushes through the real chunk
//! path, and the contract's status codes for bad input.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use lucidd::engine::Kind;
use serde_json::{Value, json};

use crate::harness::{Daemon, test_config};
use crate::storage::text;

const STAGE_NAMES: [(&str, &str); 6] = [
    ("recording", "recorder"),
    ("chunk_generation", "chunk_generator"),
    ("compression", "compressor"),
    ("encryption", "encryptor"),
    ("merkle_building", "merkle_builder"),
    ("storage", "storage"),
];

/// Waits until the engine has committed at least `n` chunks of the session.
pub fn wait_chunks(d: &Daemon, sid: &str, n: u64) {
    let t = Instant::now();
    while d.engine.get(sid).unwrap().chunk_count < n {
        assert!(t.elapsed() < Duration::from_secs(90), "no {n} chunks in {sid} after 90 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn create(d: &Daemon, sid: &str) -> Value {
    let r = d.client().post(&d.url("pipeline", &format!("/pipelines?session_id={sid}")));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn status(d: &Daemon, sid: &str) -> Value {
    let r = d.client().get(&d.url("pipeline", &format!("/pipelines/{sid}/status")));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn metrics(d: &Daemon) -> Value {
    d.client().get(&d.url("pipeline", "/metrics")).json()
}

fn push(d: &Daemon, sid: &str, data: &[u8], meta: Value) -> (u16, Value) {
    let r = d.client().post_json(
        &d.url("pipeline", &format!("/pipelines/{sid}/chunks")),
        &json!({"chunk_data": B64.encode(data), "chunk_metadata": meta}),
    );
    (r.status, r.json())
}

fn is_pipeline_id(s: &str) -> bool {
    s.len() == 17 && s.starts_with("pipeline-") && s[9..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn create_then_status_then_refuse_a_duplicate() {
    let d = Daemon::start();
    let v = create(&d, "sess-pipe1");
    assert_eq!(v["session_id"], "sess-pipe1");
    assert_eq!(v["status"], "created");
    let pid = v["pipeline_id"].as_str().unwrap().to_owned();
    assert!(is_pipeline_id(&pid), "{pid}");
    assert_eq!(d.engine.get("sess-pipe1").unwrap().kind, Kind::Camera);

    let r = d.client().post(&d.url("pipeline", "/pipelines?session_id=sess-pipe1"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["detail"].as_str().unwrap().contains("already exists"));

    let s = status(&d, "sess-pipe1");
    assert_eq!(s["pipeline_id"], pid.as_str());
    assert_eq!(s["state"], "created");
    assert_eq!(s["started_at"], Value::Null);
    let stages = s["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 6);
    for (st, (name, kind)) in stages.iter().zip(STAGE_NAMES) {
        assert_eq!(st["name"], name);
        assert_eq!(st["type"], kind);
        assert_eq!(st["status"], "inactive");
        assert_eq!(st["worker_count"], 0);
        assert_eq!(st["metrics"]["total_chunks_processed"], 0);
    }
    assert_eq!(s["config"]["chunk_size_mb"], 10.0);
    assert_eq!(s["config"]["compression_level"], d.engine.cfg.record.zstd_level);

    // A generated session id follows the contract's pattern.
    let r = d.client().post(&d.url("pipeline", "/pipelines"));
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.json()["session_id"].as_str().unwrap().to_owned();
    assert!(sid.starts_with("sess-") && sid.len() == 13, "{sid}");

    let h = d.client().get(&d.url("pipeline", "/health")).json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["service"], "lucid-pipeline-manager");
    assert_eq!(h["active_pipelines"], 2);
    let st = d.client().get(&d.url("pipeline", "/status")).json();
    assert_eq!(st["total_pipelines"], 2);
    assert_eq!(st["active_pipelines"]["sess-pipe1"]["pipeline_id"], pid.as_str());
    assert_eq!(st["active_pipelines"]["sess-pipe1"]["state"], "created");
    let m = metrics(&d);
    assert_eq!(m["pipeline_states"]["created"], 2);
    assert_eq!(m["pipeline_states"]["active"], 0);
}

#[test]
fn a_camera_pipeline_records_stops_and_keeps_its_evidence() {
    let d = Daemon::start();
    let c = d.client();
    let pid = create(&d, "sess-cam")["pipeline_id"].as_str().unwrap().to_owned();
    let before = metrics(&d)["stage_metrics"]["recording_recorder"]["total_chunks_processed"].as_u64().unwrap();
    assert_eq!(before, 0);

    let r = c.post(&d.url("pipeline", "/pipelines/sess-cam/start"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "started");
    let s = status(&d, "sess-cam");
    assert_eq!(s["state"], "active");
    assert!(s["started_at"].is_string());
    assert!(s["stages"].as_array().unwrap().iter().all(|st| st["status"] == "active" && st["worker_count"] == 1));
    assert_eq!(metrics(&d)["total_workers"], 1);
    assert_eq!(c.post(&d.url("pipeline", "/pipelines/sess-cam/start")).status, 400, "already active");

    // The camera feeds this session: client chunks are refused.
    let (status_code, body) = push(&d, "sess-cam", b"intruder", json!({}));
    assert_eq!(status_code, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("camera"));

    wait_chunks(&d, "sess-cam", 2);
    let r = c.post(&d.url("pipeline", "/pipelines/sess-cam/stop"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "stopped");
    let s = status(&d, "sess-cam");
    assert_eq!(s["state"], "stopped");
    assert!(s["stopped_at"].is_string());
    assert!(s["stages"].as_array().unwrap().iter().all(|st| st["status"] == "inactive"));
    let row = d.engine.get("sess-cam").unwrap();
    let chunks = row.chunk_count;
    assert!(chunks >= 2);

    // The stage counters are the engine's: every committed chunk went through them.
    let m = metrics(&d)["stage_metrics"].clone();
    assert!(m["recording_recorder"]["total_chunks_processed"].as_u64().unwrap() > 0);
    assert_eq!(m["storage_storage"]["total_chunks_processed"], chunks);
    assert_eq!(m["encryption_encryptor"]["total_chunks_processed"], chunks);
    assert!(m["storage_storage"]["average_processing_time_ms"].as_f64().unwrap() > 0.0);
    let s = status(&d, "sess-cam");
    assert_eq!(s["stages"][5]["metrics"]["total_chunks_processed"], chunks);

    assert_eq!(c.post(&d.url("pipeline", "/pipelines/sess-cam/stop")).status, 400, "already stopped");

    let r = c.delete(&d.url("pipeline", "/pipelines/sess-cam"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "cleaned_up");
    assert!(v["message"].as_str().unwrap().contains("stay"), "{v}");
    let row = d.engine.get("sess-cam").unwrap();
    assert_eq!(row.chunk_count, chunks, "the recording is kept");
    assert_eq!(row.pipeline.unwrap().state, "destroyed");
    assert_eq!(c.get(&d.url("pipeline", "/pipelines/sess-cam/status")).status, 404);
    assert_eq!(c.delete(&d.url("pipeline", "/pipelines/sess-cam")).status, 404);
    assert_eq!(metrics(&d)["pipeline_states"]["destroyed"], 1);

    // A new pipeline may be created for the session afterwards.
    let again = create(&d, "sess-cam");
    assert_ne!(again["pipeline_id"].as_str().unwrap(), pid);
}

#[test]
fn deleting_an_active_pipeline_stops_the_camera_first() {
    let d = Daemon::start();
    create(&d, "sess-del");
    assert_eq!(d.client().post(&d.url("pipeline", "/pipelines/sess-del/start")).status, 200);
    wait_chunks(&d, "sess-del", 1);
    let r = d.client().delete(&d.url("pipeline", "/pipelines/sess-del"));
    assert_eq!(r.status, 200, "{}", r.text());
    let row = d.engine.get("sess-del").unwrap();
    assert_eq!(row.status.as_str(), "stopped");
    assert!(row.root.is_some(), "the log was sealed on the way out");
    assert!(d.engine.camera_session().is_none());
}

#[test]
fn wrong_states_and_unknown_pipelines() {
    let d = Daemon::start();
    let c = d.client();
    create(&d, "sess-ws");
    let r = c.post(&d.url("pipeline", "/pipelines/sess-ws/stop"));
    assert_eq!(r.status, 400, "stop from created: {}", r.text());
    for (m, path) in [("POST", "start"), ("POST", "stop"), ("GET", "status"), ("DELETE", "")] {
        let url = d.url("pipeline", format!("/pipelines/sess-none/{path}").trim_end_matches('/'));
        let r = match m {
            "POST" => c.post(&url),
            "GET" => c.get(&url),
            _ => c.delete(&url),
        };
        assert_eq!(r.status, 404, "{m} {url}: {}", r.text());
        assert!(r.json()["detail"].is_string());
    }
    // A pipeline over uploaded data cannot start the camera.
    let (code, _) = push(&d, "sess-ws", b"data first", json!({"chunk_id": "d0"}));
    assert_eq!(code, 200);
    assert_eq!(d.engine.get("sess-ws").unwrap().kind, Kind::Data);
    let r = c.post(&d.url("pipeline", "/pipelines/sess-ws/start"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(status(&d, "sess-ws")["state"], "created", "a refusal leaves the state alone");
    // Two cameras do not exist: a second pipeline cannot start while one records.
    create(&d, "sess-a");
    create(&d, "sess-b");
    assert_eq!(c.post(&d.url("pipeline", "/pipelines/sess-a/start")).status, 200);
    let r = c.post(&d.url("pipeline", "/pipelines/sess-b/start"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(status(&d, "sess-b")["state"], "created");
    assert_eq!(c.post(&d.url("pipeline", "/pipelines/sess-a/stop")).status, 200);
}

#[test]
fn pushed_chunks_go_through_the_real_chunk_path() {
    let d = Daemon::start();
    let storage_before = metrics(&d)["stage_metrics"]["storage_storage"]["total_chunks_processed"].as_u64().unwrap();
    let data = text(50_000);
    let (code, v) = push(&d, "sess-push", &data, json!({"chunk_id": "p0", "note": "hello"}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "processed");
    assert_eq!(v["session_id"], "sess-push");
    let (code, v) = push(&d, "sess-push", b"second", json!({}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["chunk_id"], "1", "no client id: the log index names it");

    let row = d.engine.get("sess-push").unwrap();
    assert_eq!(row.kind, Kind::Data);
    assert_eq!(row.chunk_count, 2);
    let reader = d.engine.reader("sess-push").unwrap();
    assert_eq!(reader.client_chunk(0).unwrap(), data);
    assert_eq!(reader.client_chunk(1).unwrap(), b"second");
    assert_eq!(d.engine.chunk_meta("sess-push", 0).unwrap().unwrap()["note"], "hello");
    let m = metrics(&d)["stage_metrics"].clone();
    assert_eq!(m["storage_storage"]["total_chunks_processed"].as_u64().unwrap(), storage_before + 2);
    assert_eq!(m["compression_compressor"]["total_chunks_processed"].as_u64().unwrap(), 2);
    assert_eq!(m.as_object().unwrap().len(), 6);
}

#[test]
fn bad_input_gets_the_contract_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.max_chunk_bytes = 1000;
    cfg.max_body_bytes = 8192;
    let d = Daemon::start_with(dir, cfg);
    let c = d.client();
    let url = d.url("pipeline", "/pipelines/sess-in/chunks");
    let r = c.post_raw(&url, b"[1,2".to_vec(), "application/json");
    assert_eq!(r.status, 422);
    assert!(r.json()["detail"].is_array());
    let r = c.post_json(&url, &json!({"chunk_metadata": {}}));
    assert_eq!(r.status, 422, "chunk_data is required");
    let r = c.post_json(&url, &json!({"chunk_data": "%%%", "chunk_metadata": {}}));
    assert_eq!(r.status, 400);
    let r = c.post_json(&url, &json!({"chunk_data": B64.encode(vec![7u8; 1500]), "chunk_metadata": {}}));
    assert_eq!(r.status, 413);
    let r = c.post_json(&url, &json!({"chunk_data": B64.encode(vec![7u8; 9000]), "chunk_metadata": {}}));
    assert_eq!(r.status, 413);
    let r = c.post_json(&url, &json!({"chunk_data": "aGk=", "chunk_metadata": {"chunk_id": [1]}}));
    assert_eq!(r.status, 422);
    let r = d.anon().post_json(&url, &json!({"chunk_data": "aGk=", "chunk_metadata": {}}));
    assert_eq!(r.status, 401);
    let r = d.anon().post(&d.url("pipeline", "/pipelines?session_id=sess-anon"));
    assert_eq!(r.status, 401);
    let r = c.post(&d.url("pipeline", "/pipelines?session_id=bad%20id"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(d.engine.list().unwrap().is_empty(), "no refused request left a session behind");
}

#[test]
fn config_and_metrics_are_real() {
    let d = Daemon::start();
    let v = d.client().get(&d.url("pipeline", "/config")).json();
    assert_eq!(v["service"]["name"], "lucid-pipeline-manager");
    assert_eq!(v["service"]["version"], lucidd::http::VERSION);
    assert_eq!(v["pipeline"]["chunk_size_mb"], 10.0);
    assert_eq!(v["pipeline"]["compression_level"], d.engine.cfg.record.zstd_level);
    assert_eq!(v["performance"]["enable_encryption"], true);
    assert_eq!(v["stages"]["recording"]["fps"], 15);
    assert!(!v.to_string().contains(crate::harness::TOKEN));
    let m = metrics(&d);
    assert_eq!(m["active_pipelines"], 0);
    assert_eq!(m["total_workers"], 0);
    let keys: Vec<String> = m["stage_metrics"].as_object().unwrap().keys().cloned().collect();
    for (name, kind) in STAGE_NAMES {
        assert!(keys.contains(&format!("{name}_{kind}")), "{keys:?}");
    }
    assert_eq!(m["pipeline_states"].as_object().unwrap().len(), 10);
}
