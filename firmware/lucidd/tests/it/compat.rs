//! Compatibility with the original Lucid gateway's published response models (issue #8):
//! clients generated from them parse an `error` object in every 400/404/409 body (next to
//! FastAPI's `detail`), `sequence_number` in a ChunkResponse, integer `max_size_gb` and
//! `bitrate`, a list of strings in `metadata.tags`, timestamps in
//! `statistics.time_range`, and `pipeline_status` from a closed set. Each shape is
//! checked here over real HTTP.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::harness::{Daemon, Resp};

fn create(d: &Daemon, body: Value) -> Resp {
    d.client().post_json(&d.url("gateway", "/api/v1/sessions"), &body)
}

fn created_id(r: &Resp) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["session_id"].as_str().unwrap().to_owned()
}

/// One upload through the storage service: a data session the gateway lists too.
fn upload(d: &Daemon, sid: &str, cid: &str, data: &[u8]) {
    let body = json!({
        "chunk_data": B64.encode(data),
        "chunk_metadata": {"chunk_id": cid, "chunk_index": 0, "hash_sha256": crate::storage::sha256_hex(data),
                           "timestamp": "2026-01-01T00:00:00Z"},
    });
    let r = d.client().post_json(&d.url("storage", &format!("/sessions/{sid}/chunks")), &body);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Checks a client error body: FastAPI's `detail` and the original ErrorResponse's
/// `error` object, with the code of the status and the answering service.
fn assert_error_body(r: &Resp, status: u16, service: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let b = r.json();
    assert!(b["detail"].is_string() || b["detail"].is_array(), "no detail: {b}");
    let e = &b["error"];
    assert_eq!(e["code"], format!("LUCID_ERR_{status}"), "{b}");
    assert_eq!(e["service"], service, "{b}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
    assert!(e["request_id"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
    let ts = e["timestamp"].as_str().unwrap_or_default();
    assert!(lucidd::util::parse_rfc3339(ts).is_some() && ts.ends_with('Z'), "{b}");
    if b["detail"].is_string() {
        assert_eq!(b["detail"], e["message"], "one message, two places: {b}");
    }
    b
}

#[test]
fn error_bodies_carry_detail_and_the_original_error_object() {
    let d = Daemon::start();
    let c = d.client();
    let gw = "lucid-session-api";

    let r = c.get(&d.url("gateway", "/api/v1/sessions/sess-00000000"));
    assert_error_body(&r, 404, gw);
    let sid = created_id(&create(&d, json!({"name": "errors", "session_id": "sess-compat1"})));
    let r = c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/stop")));
    let b = assert_error_body(&r, 400, gw);
    assert!(b["detail"].as_str().unwrap().contains("created"), "{b}");
    let r = create(&d, json!({"name": "again", "session_id": "sess-compat1"}));
    assert_error_body(&r, 409, gw);
    // 422 keeps FastAPI's problem list in detail.
    let r = create(&d, json!({"name": ""}));
    let b = assert_error_body(&r, 422, gw);
    assert_eq!(b["detail"][0]["loc"], json!(["body", "name"]), "{b}");
    // Auth and the unknown-path fallback are answered outside the handlers, in the same shape.
    let r = d.anon().post_json(&d.url("gateway", "/api/v1/sessions"), &json!({"name": "x"}));
    assert_error_body(&r, 401, gw);
    assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
    assert_error_body(&c.get(&d.url("gateway", "/no/such/route")), 404, gw);

    // The client's request id comes back; one that is not a short printable token does not.
    let r = c
        .http
        .get(d.url("gateway", "/api/v1/sessions/sess-00000000"))
        .header("x-request-id", "trace-42")
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["error"]["request_id"], "trace-42");
    let long = "x".repeat(200);
    let r =
        c.http.get(d.url("gateway", "/api/v1/sessions/sess-00000000")).header("x-request-id", &long).send().unwrap();
    let rid = r.json::<Value>().unwrap()["error"]["request_id"].as_str().unwrap().to_owned();
    assert!(rid.starts_with("req-") && rid != long, "{rid}");

    // The other FastAPI services name themselves.
    assert_eq!(c.post(&d.url("pipeline", "/pipelines?session_id=sess-compat2")).status, 200);
    let r = c.post(&d.url("pipeline", "/pipelines?session_id=sess-compat2"));
    assert_error_body(&r, 400, "lucid-pipeline-manager");
    let r = c.get(&d.url("recorder", "/recordings/sess-00000000"));
    assert_error_body(&r, 404, "lucid-session-recorder");
    let r = c.post_json(&d.url("storage", "/sessions/bad$id/chunks"), &json!({"chunk_data": "", "chunk_metadata": {}}));
    assert!(r.status == 400 || r.status == 422, "{}", r.text());
    assert_error_body(&r, r.status, "lucid-session-storage");
    // The chunk processor keeps its own contract shape: `error` only, with its version.
    let r = c.get(&d.url("processor", "/api/v1/sessions/sess-00000000/merkle-root"));
    assert_eq!(r.status, 404, "{}", r.text());
    let b = r.json();
    assert!(b.get("detail").is_none(), "{b}");
    assert_eq!(b["error"]["service"], "chunk-processor");
    assert_eq!(b["error"]["code"], "LUCID_ERR_404");
}

#[test]
fn chunk_responses_carry_the_sequence_number() {
    let d = Daemon::start();
    let c = d.client();
    for (i, cid) in ["c-a", "c-b", "c-c"].iter().enumerate() {
        upload(&d, "sess-seq", cid, format!("chunk {i}").as_bytes());
    }
    let list = c.get(&d.url("gateway", "/api/v1/sessions/sess-seq/chunks")).json();
    let chunks = list["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 3, "{list}");
    for (i, ch) in chunks.iter().enumerate() {
        assert_eq!(ch["sequence_number"].as_u64(), Some(i as u64), "{ch}");
        assert_eq!(ch["sequence_number"], ch["index"], "{ch}");
    }
    let one = c.get(&d.url("gateway", "/api/v1/sessions/sess-seq/chunks/c-b"));
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["sequence_number"], 1);
    assert_eq!(one.json()["chunk_id"], "c-b");
}

#[test]
fn configs_are_integers_and_bitrate_is_never_null() {
    let d = Daemon::start();
    let c = d.client();
    // No bitrate asked for: the camera's own (the test daemon records at 300 kbit/s).
    let r = create(&d, json!({"name": "defaults"}));
    let sid = created_id(&r);
    let s = r.json();
    assert_eq!(s["recording_config"]["bitrate"], json!(300_000), "{s}");
    assert!(s["storage_config"]["max_size_gb"].is_i64(), "{s}");
    assert_eq!(s["storage_config"]["max_size_gb"], 10);
    let got = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}"))).json();
    assert_eq!(got["recording_config"]["bitrate"], json!(300_000), "{got}");

    let r = create(
        &d,
        json!({"name": "asked", "recording_config": {"bitrate": 2_500_000},
                              "storage_config": {"max_size_gb": 20}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["recording_config"]["bitrate"], 2_500_000);
    assert_eq!(r.json()["storage_config"]["max_size_gb"], 20);
    for bad in [
        json!({"max_size_gb": 2.5}),
        json!({"max_size_gb": 0}),
        json!({"max_size_gb": 1001}),
        json!({"max_size_gb": "10"}),
    ] {
        let r = create(&d, json!({"name": "bad", "storage_config": bad}));
        assert_eq!(r.status, 422, "{bad}: {}", r.text());
    }
    let r = create(&d, json!({"name": "bad", "recording_config": {"bitrate": 1.5}}));
    assert_eq!(r.status, 422, "{}", r.text());

    // A session another service created (no configs stored) is answered in full shape too.
    assert_eq!(c.post(&d.url("pipeline", "/pipelines?session_id=sess-bare")).status, 200);
    let s = c.get(&d.url("gateway", "/api/v1/sessions/sess-bare")).json();
    assert_eq!(s["recording_config"]["bitrate"], json!(300_000), "{s}");
    assert_eq!(s["storage_config"]["max_size_gb"], 10, "{s}");
    let listed = c.get(&d.url("gateway", "/api/v1/sessions?limit=100")).json();
    for s in listed["sessions"].as_array().unwrap() {
        assert!(s["recording_config"]["bitrate"].is_i64(), "{s}");
        assert!(s["storage_config"]["max_size_gb"].is_i64(), "{s}");
    }
}

#[test]
fn metadata_tags_are_a_list_of_strings() {
    let d = Daemon::start();
    let c = d.client();
    for tags in [json!([1, 2]), json!("a,b"), json!({"a": 1}), json!(["ok", null]), json!([["nested"]])] {
        let r = create(&d, json!({"name": "tags", "metadata": {"tags": tags}}));
        assert_eq!(r.status, 422, "{tags}: {}", r.text());
        assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "metadata", "tags"]), "{}", r.text());
    }
    let r = create(&d, json!({"name": "project", "metadata": {"project": 7}}));
    assert_eq!(r.status, 422, "{}", r.text());
    let r =
        create(&d, json!({"name": "tags", "metadata": {"tags": ["a", "b"], "project": "p", "site": {"kept": true}}}));
    let sid = created_id(&r);
    assert_eq!(r.json()["metadata"]["tags"], json!(["a", "b"]));
    assert_eq!(r.json()["metadata"]["site"], json!({"kept": true}), "the client's own keys are kept");
    let r = create(&d, json!({"name": "no tags"}));
    assert_eq!(r.json()["metadata"]["tags"], json!([]));

    let url = d.url("gateway", &format!("/api/v1/sessions/{sid}"));
    let r = c.put_json(&url, &json!({"metadata": {"tags": [{"x": 1}]}}));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(c.get(&url).json()["metadata"]["tags"], json!(["a", "b"]), "a refused update changes nothing");
    let r = c.put_json(&url, &json!({"metadata": {"tags": ["c"]}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["metadata"]["tags"], json!(["c"]));

    // The recorder's sessions are listed by the gateway, so it holds the same rule.
    let r = c.post_json(
        &d.url("recorder", "/recordings/start"),
        &json!({"session_id": "sess-rtags", "owner_address": "o", "metadata": {"tags": [1]}}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(c.get(&d.url("gateway", "/api/v1/sessions/sess-rtags")).status, 404, "nothing was created");
}

#[test]
fn statistics_time_range_is_timestamps_or_absent() {
    let d = Daemon::start();
    let c = d.client();
    let sid = created_id(&create(&d, json!({"name": "never ran"})));
    let s = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/statistics")));
    assert_eq!(s.status, 200, "{}", s.text());
    assert!(s.json().get("time_range").is_none(), "{}", s.text());

    // Started and stopped at once: the range is start to stop, whether or not a chunk landed.
    assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/start"))).status, 200);
    let live = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/statistics"))).json();
    assert!(live["time_range"]["start"].is_string() && live["time_range"]["end"].is_string(), "{live}");
    assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/stop"))).status, 200);
    let done = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/statistics"))).json();
    let (start, end) = (done["time_range"]["start"].as_str().unwrap(), done["time_range"]["end"].as_str().unwrap());
    let (a, b) = (lucidd::util::parse_rfc3339(start).unwrap(), lucidd::util::parse_rfc3339(end).unwrap());
    assert!(a <= b, "{done}");

    // A data session's range comes from its chunks.
    upload(&d, "sess-range", "c-0", b"data");
    let s = c.get(&d.url("gateway", "/api/v1/sessions/sess-range/statistics")).json();
    assert!(s["time_range"]["start"].is_string() && s["time_range"]["end"].is_string(), "{s}");
}

#[test]
fn pipeline_status_is_one_of_the_original_states() {
    let d = Daemon::start();
    let c = d.client();
    let sid = created_id(&create(&d, json!({"name": "pipeline"})));
    let status = |c: &crate::harness::Client| {
        let r = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/pipeline")));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["pipeline_status"].as_str().unwrap().to_owned()
    };
    assert_eq!(status(&c), "paused", "a pipeline that has not started waits");
    assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/start"))).status, 200);
    assert_eq!(status(&c), "active");
    let r = c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/pipeline/pause")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pipeline_status"], "paused");
    assert_eq!(status(&c), "paused");
    let r = c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/pipeline/resume")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pipeline_status"], "active");
    // Wrong states are the documented 400, with the error object.
    let r = c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/pipeline/resume")));
    assert_error_body(&r, 400, "lucid-session-api");
    assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/stop"))).status, 200);
    assert_eq!(status(&c), "completed", "a stopped session's pipeline is completed, not \"stopped\"");
}
