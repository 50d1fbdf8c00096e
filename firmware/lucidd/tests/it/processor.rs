//! The chunk processor service (8085) over real HTTP: measured chunk metadata checked
//! against the store, batches with partial failures, finalize and the Merkle root checked
//! against the evidence verifier, the processor's own error shape, config and health.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::harness::{Daemon, Resp, TOKEN, test_config};
use crate::storage::{noise, text};

fn body(sid: &str, cid: &str, data: &[u8]) -> Value {
    json!({"session_id": sid, "chunk_id": cid, "chunk_data_base64": B64.encode(data), "metadata": {"source": "it"}})
}

fn process(d: &Daemon, sid: &str, cid: &str, data: &[u8]) -> Value {
    let r = d.client().post_json(&d.url("processor", "/api/v1/chunks/process"), &body(sid, cid, data));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// A POST carrying an X-Request-ID header.
fn post_with_id(url: &str, body: &str, request_id: Option<&str>) -> Resp {
    let mut rb = reqwest::blocking::Client::new()
        .post(url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(id) = request_id {
        rb = rb.header("x-request-id", id);
    }
    let r = rb.send().unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Resp { status, headers, body: r.bytes().unwrap().to_vec() }
}

fn assert_error_shape(r: &Resp, status: u16, request_id: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], format!("LUCID_ERR_{status}"), "{e}");
    assert_eq!(e["request_id"], request_id);
    assert_eq!(e["service"], "chunk-processor");
    assert_eq!(e["version"], lucidd::http::VERSION);
    assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(!e["message"].as_str().unwrap().is_empty());
    e
}

#[test]
fn process_reports_what_the_chunk_path_did() {
    let d = Daemon::start();
    let data = [text(200_000), noise(1000, 9)].concat();
    let v = process(&d, "sess-proc", "chunk-a", &data);
    assert_eq!(v["success"], true);
    assert_eq!(v["chunk_id"], "chunk-a");
    assert_eq!(v["session_id"], "sess-proc");
    let m = &v["metadata"];
    assert_eq!(m["original_size"], data.len() as u64);
    assert_eq!(m["hash"], blake3::hash(&data).to_hex().as_str(), "hash is BLAKE3 of the plaintext");
    let sealed = d.engine.store().get_sealed("sess-proc", 0).unwrap().unwrap();
    assert_eq!(m["encrypted_size"], sealed.len() as u64);
    assert_eq!(m["encrypted_hash"], blake3::hash(&sealed).to_hex().as_str());
    let ratio = m["compression_ratio"].as_f64().unwrap();
    assert!((ratio - data.len() as f64 / sealed.len() as f64).abs() < 1e-9);
    assert!(ratio > 5.0, "text compresses: {ratio}");
    assert!(m["processing_time_ms"].as_f64().unwrap() > 0.0);
    assert!(!m["worker_id"].as_str().unwrap().is_empty());
    // The stored chunk decrypts to the same bytes, through the storage service too.
    let r = d.client().get(&d.url("storage", "/sessions/sess-proc/chunks/chunk-a"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(B64.decode(r.json()["data"].as_str().unwrap()).unwrap(), data);
    assert_eq!(r.json()["metadata"]["source"], "it");
}

#[test]
fn a_split_chunk_hashes_all_its_sealed_parts() {
    let d = Daemon::start();
    let data = noise(9 << 20, 5);
    let v = process(&d, "sess-split", "big", &data);
    let parts = v["metadata"]["parts"].as_u64().unwrap();
    assert!(parts >= 2);
    let mut h = blake3::Hasher::new();
    let mut sealed_total = 0;
    for i in 0..parts {
        let s = d.engine.store().get_sealed("sess-split", i).unwrap().unwrap();
        sealed_total += s.len() as u64;
        h.update(&s);
    }
    assert_eq!(v["metadata"]["encrypted_hash"], h.finalize().to_hex().as_str());
    assert_eq!(v["metadata"]["encrypted_size"], sealed_total);
    assert_eq!(d.engine.reader("sess-split").unwrap().client_chunk(0).unwrap(), data);
}

#[test]
fn metrics_count_processed_chunks() {
    let d = Daemon::start();
    let m0 = d.client().get(&d.url("processor", "/metrics")).json();
    assert_eq!(m0["service"], "chunk-processor");
    assert_eq!(m0["metrics"]["chunks_processed"], 0);
    process(&d, "sess-met", "a", &text(10_000));
    process(&d, "sess-met", "b", &text(10_000));
    let m = d.client().get(&d.url("processor", "/metrics")).json()["metrics"].clone();
    assert_eq!(m["chunks_processed"], 2);
    assert_eq!(m["chunks_failed"], 0);
    assert!(m["total_processing_time_ms"].as_f64().unwrap() > 0.0);
    let avg = m["average_processing_time_ms"].as_f64().unwrap();
    assert!((avg - m["total_processing_time_ms"].as_f64().unwrap() / 2.0).abs() < 1e-9);
    assert_eq!(m["active_workers"], 0, "nothing is processing now");
    assert_eq!(m["queue_size"], 0);
}

#[test]
fn errors_use_the_processor_shape_with_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.max_chunk_bytes = 1000;
    cfg.max_body_bytes = 8192;
    let d = Daemon::start_with(dir, cfg);
    let url = d.url("processor", "/api/v1/chunks/process");

    let bad_b64 = json!({"session_id": "sess-e", "chunk_id": "x", "chunk_data_base64": "!!!"}).to_string();
    let e = assert_error_shape(&post_with_id(&url, &bad_b64, Some("req-42")), 400, "req-42");
    assert!(e["message"].as_str().unwrap().contains("base64"));
    assert_error_shape(&post_with_id(&url, &bad_b64, None), 400, "unknown");

    let e = assert_error_shape(&post_with_id(&url, "{oops", Some("req-43")), 422, "req-43");
    assert!(e["details"].is_array());
    let missing = json!({"session_id": "sess-e", "chunk_id": "x"}).to_string();
    assert_error_shape(&post_with_id(&url, &missing, None), 422, "unknown");

    let big = body("sess-e", "big", &noise(1500, 1)).to_string();
    assert_error_shape(&post_with_id(&url, &big, None), 413, "unknown");
    let huge = body("sess-e", "huge", &noise(20_000, 1)).to_string();
    assert_error_shape(&post_with_id(&url, &huge, None), 413, "unknown");

    let bad_sid = body("no spaces allowed", "x", b"x").to_string();
    assert_error_shape(&post_with_id(&url, &bad_sid, None), 400, "unknown");

    let r = d.client().get(&d.url("processor", "/api/v1/sessions/sess-nope/merkle-root"));
    assert_error_shape(&r, 404, "unknown");
    let r = d.client().post(&d.url("processor", "/api/v1/sessions/sess-nope/finalize"));
    assert_error_shape(&r, 404, "unknown");

    process(&d, "sess-e", "dup", b"once");
    let r = post_with_id(&url, &body("sess-e", "dup", b"twice").to_string(), Some("req-44"));
    assert_error_shape(&r, 409, "req-44");

    let r = d.anon().post_json(&url, &body("sess-e", "anon", b"x"));
    assert_eq!(r.status, 401);
    assert!(d.engine.get("sess-e").unwrap().chunk_count == 1, "only the good chunk is stored");
}

#[test]
fn a_batch_reports_each_chunk_and_keeps_the_good_ones() {
    let d = Daemon::start();
    let url = d.url("processor", "/api/v1/chunks/process-batch");
    let r = d.client().post_json(
        &url,
        &json!({"session_id": "sess-batch", "chunks": [
            {"chunk_id": "a", "chunk_data_base64": B64.encode(b"alpha")},
            {"chunk_id": "b", "chunk_data_base64": "not base64!"},
            {"chunk_id": "a", "chunk_data_base64": B64.encode(b"alpha again")},
            {"chunk_id": "c", "chunk_data_base64": B64.encode(text(5000)), "metadata": {"k": 1}},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["success"], false);
    assert_eq!(v["total_chunks"], 4);
    assert_eq!(v["successful_chunks"], 2);
    assert_eq!(v["failed_chunks"], 2);
    let res = v["results"].as_array().unwrap();
    assert_eq!(res[0]["success"], true);
    assert_eq!(res[0]["metadata"]["hash"], blake3::hash(b"alpha").to_hex().as_str());
    assert_eq!(res[1]["success"], false);
    assert!(res[1]["error_message"].as_str().unwrap().contains("base64"));
    assert_eq!(res[2]["success"], false);
    assert!(res[2]["error_message"].as_str().unwrap().contains("already exists"));
    assert_eq!(res[3]["success"], true);
    assert_eq!(res[3]["metadata"]["original_size"], 5000);
    assert_eq!(d.engine.get("sess-batch").unwrap().chunk_count, 2);
    let reader = d.engine.reader("sess-batch").unwrap();
    assert_eq!(reader.client_chunk(1).unwrap(), text(5000));

    let r = d.client().post_json(&url, &json!({"session_id": "sess-batch", "chunks": []}));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "LUCID_ERR_422");
}

#[test]
fn finalize_signs_the_root_and_closes_the_session() {
    let d = Daemon::start();
    let c = d.client();
    for i in 0..3 {
        process(&d, "sess-fin", &format!("c{i}"), &text(3000 + i));
    }
    let root_url = d.url("processor", "/api/v1/sessions/sess-fin/merkle-root");
    assert_eq!(c.get(&root_url).status, 404, "no root before finalize");

    let r = c.post(&d.url("processor", "/api/v1/sessions/sess-fin/finalize"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["finalized"], true);
    let root = v["merkle_root"].as_str().unwrap().to_owned();
    assert_eq!(root.len(), 64);
    assert!(root.bytes().all(|b| b.is_ascii_hexdigit()));
    let leaves = d.engine.leaves("sess-fin").unwrap();
    assert_eq!(root, lucidd::util::hex(&lucid_core::merkle::root(&leaves)));

    let r = c.get(&root_url);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["merkle_root"], root.as_str());
    let again = c.post(&d.url("processor", "/api/v1/sessions/sess-fin/finalize")).json();
    assert_eq!(again["merkle_root"], root.as_str(), "stable");

    // The evidence bundle verifies offline to the same root.
    let mut tar = Vec::new();
    d.engine.write_evidence("sess-fin", &mut tar).unwrap();
    let report = lucid_core::evidence::verify_evidence(&tar[..]).unwrap();
    assert_eq!(report.root_hex, root);
    assert_eq!(report.chunk_count, 3);

    // No more chunks after finalize, on any upload route.
    let r = c.post_json(&d.url("processor", "/api/v1/chunks/process"), &body("sess-fin", "late", b"late"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "LUCID_ERR_400");
    let r = c.post_json(
        &d.url("storage", "/sessions/sess-fin/chunks"),
        &json!({"chunk_data": B64.encode(b"late"), "chunk_metadata": {"chunk_id": "late"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(d.anon().post(&d.url("processor", "/api/v1/sessions/sess-fin/finalize")).status, 401);
}

#[test]
fn config_never_shows_a_secret() {
    let d = Daemon::start();
    let r = d.client().get(&d.url("processor", "/api/v1/config"));
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(!text.contains(TOKEN), "the API token leaked");
    let row_key = {
        d.engine.create_session(Some("sess-key".into()), "k".into(), lucidd::engine::Kind::Data, |_| {}).unwrap();
        d.engine.get("sess-key").unwrap().wrapped_key
    };
    assert!(!d.client().get(&d.url("processor", "/api/v1/config")).text().contains(&row_key));
    let v = r.json();
    assert_eq!(v["service"], "chunk-processor");
    assert_eq!(v["configuration"]["max_chunk_size"], 10 << 20);
    assert_eq!(v["configuration"]["compression"]["level"], d.engine.cfg.record.zstd_level);
}

#[test]
fn health_is_healthy_then_503_below_the_free_space_minimum() {
    let d = Daemon::start();
    let r = d.client().get(&d.url("processor", "/health"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["is_running"], true);
    assert_eq!(v["config"]["max_chunk_size"], 10 << 20);
    assert!(v["config"]["max_workers"].as_u64().unwrap() >= 1);
    assert_eq!(v["metrics"]["chunks_processed"], 0);

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.min_free_bytes = u64::MAX;
    let d = Daemon::start_with(dir, cfg);
    let r = d.client().get(&d.url("processor", "/health"));
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "unhealthy");
    assert_eq!(v["service"], "chunk-processor");
    assert!(v["error"].as_str().unwrap().contains("free"));
}

#[test]
fn auth_failures_and_unknown_paths_also_use_the_processor_shape() {
    let d = Daemon::start();
    let r = d.anon().post_json(
        &d.url("processor", "/api/v1/chunks/process"),
        &json!({"session_id": "sess-aaaaaaaa", "chunk_id": "c0", "chunk_data_base64": "AAAA"}),
    );
    assert_eq!(r.status, 401);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "LUCID_ERR_401", "{}", r.text());
    assert_eq!(e["service"], "chunk-processor");
    let r = d.client().get(&d.url("processor", "/no/such/route"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "LUCID_ERR_404", "{}", r.text());
}
