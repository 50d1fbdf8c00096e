//! Parsers and input rules (issue #8) over real HTTP: the camera `device` is a canonical
//! `/dev/video<N>` (the config file and the API alike), session ids are never `.` or
//! `..`, list offsets at the edge of their type answer 422 or an empty page (never a
//! panic), and no `password` anywhere inside `rdp_config` is stored or echoed.

use std::io::{Read, Write};
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Daemon, TOKEN, test_config};
use lucidd::config::SourceKind;

/// A raw HTTP/1.1 request, for paths an HTTP client would normalise (`/%2E%2E/`).
fn raw(d: &Daemon, service: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = d.addrs[service];
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[test]
fn camera_device_is_a_canonical_video_node_in_file_and_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.source = SourceKind::V4l2;
    let d = Daemon::start_with(dir, cfg);
    let c = d.client();
    let url = d.url("gateway", "/api/v1/camera");
    for dev in [
        "/dev/../dev/video0",
        "/dev/video0/../sda",
        "/dev/sda",
        "/dev/v4l/by-id/usb-cam-video-index0",
        "/dev/video",
        "/dev/video01",
        "/dev//video0",
        "/proc/self/mem",
    ] {
        for key in ["device", "encoder_device"] {
            let r = c.put_json(&url, &json!({ key: dev }));
            assert_eq!(r.status, 400, "{key}={dev}: {}", r.text());
            assert!(r.text().contains("/dev/videoN"), "{key}={dev}: {}", r.text());
        }
    }
    assert_eq!(c.get(&url).json()["settings"]["device"], "", "nothing was stored");
    let r = c.put_json(&url, &json!({"device": "/dev/video2"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["settings"]["device"], "/dev/video2");

    // The same rule holds for the config file, checked before the daemon starts.
    let dir = tempfile::tempdir().unwrap();
    let check = |device: &str| {
        let f = dir.path().join("lucidd.toml");
        std::fs::write(&f, format!("[camera]\ndevice = \"{device}\"\n")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_lucidd"))
            .arg("config")
            .arg("--config")
            .arg(&f)
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("LUCID_CONFIG")
            .output()
            .unwrap()
    };
    let bad = check("/dev/../dev/sda");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("camera.device"), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(check("/dev/video0").status.success());
}

#[test]
fn session_ids_are_never_dot_or_dot_dot() {
    let d = Daemon::start();
    let c = d.client();
    for sid in [".", "..", "a/b", "", "é"] {
        let r = c.post_json(&d.url("gateway", "/api/v1/sessions"), &json!({"name": "x", "session_id": sid}));
        assert_eq!(r.status, 422, "{sid:?}: {}", r.text());
        assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "session_id"]), "{}", r.text());
    }
    for sid in ["...", ".hidden", "ok-1.2_x"] {
        let r = c.post_json(&d.url("gateway", "/api/v1/sessions"), &json!({"name": "x", "session_id": sid}));
        assert_eq!(r.status, 201, "{sid:?}: {}", r.text());
    }
    // Every service that creates a session from a client's id refuses the two names.
    for sid in ["%2E", "%2E%2E", ".", ".."] {
        let (status, out) = raw(&d, "pipeline", "POST", &format!("/pipelines?session_id={sid}"), "");
        assert_eq!(status, 400, "pipeline {sid}: {out}");
    }
    let chunk = json!({"chunk_data": "AA==", "chunk_metadata": {"chunk_id": "c", "chunk_index": 0,
        "hash_sha256": crate::storage::sha256_hex(&[0]), "timestamp": "2026-01-01T00:00:00Z"}})
    .to_string();
    for path in ["/sessions/%2E/chunks", "/sessions/%2E%2E/chunks", "/sessions/%2e%2e/chunks"] {
        let (status, out) = raw(&d, "storage", "POST", path, &chunk);
        assert_eq!(status, 400, "storage {path}: {out}");
    }
    for sid in [".", ".."] {
        let r = c.post_json(&d.url("recorder", "/recordings/start"), &json!({"session_id": sid, "owner_address": "o"}));
        assert_eq!(r.status, 400, "recorder {sid}: {}", r.text());
        let r = c.post_json(
            &d.url("processor", "/api/v1/chunks/process"),
            &json!({"session_id": sid, "chunk_id": "c", "chunk_data_base64": "AA=="}),
        );
        assert_eq!(r.status, 400, "processor {sid}: {}", r.text());
    }
    let ids: Vec<String> = d.engine.list().unwrap().into_iter().map(|r| r.id).collect();
    assert!(!ids.iter().any(|i| i == "." || i == ".."), "{ids:?}");
}

#[test]
fn list_offsets_at_the_edge_of_their_type_never_panic() {
    let d = Daemon::start();
    let c = d.client();
    assert_eq!(c.post(&d.url("pipeline", "/pipelines?session_id=sess-edge")).status, 200);
    let lists = [
        d.url("gateway", "/api/v1/sessions"),
        d.url("gateway", "/api/v1/sessions/sess-edge/chunks"),
        d.url("storage", "/sessions/sess-edge/chunks"),
    ];
    for url in &lists {
        // The largest offset there is: an empty last page, no overflow.
        let r = c.get(&format!("{url}?offset=9223372036854775807&limit=100"));
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let b = r.json();
        let page = b.get("sessions").or(b.get("chunks")).and_then(Value::as_array).unwrap();
        assert!(page.is_empty(), "{b}");
        if let Some(next) = b["pagination"].get("has_next") {
            assert_eq!(next, false, "{b}");
        }
        // Past the type, and limits far outside their range: 422, not a wrapped number.
        for q in [
            "offset=18446744073709551615",
            "offset=-1",
            "offset=1e3",
            "limit=18446744073709551615",
            "limit=9223372036854775807",
            "limit=-9223372036854775808",
            "limit=0",
        ] {
            let r = c.get(&format!("{url}?{q}"));
            assert_eq!(r.status, 422, "{url}?{q}: {}", r.text());
            assert!(r.json()["detail"].is_array(), "{url}?{q}: {}", r.text());
        }
    }
}

#[test]
fn nested_rdp_passwords_are_dropped_on_arrival() {
    let d = Daemon::start();
    let c = d.client();
    let url = d.url("gateway", "/api/v1/sessions");
    let r = c.post_json(
        &url,
        &json!({"name": "rdp", "rdp_config": {
            "host": "10.0.0.5", "port": 3389, "username": "u", "password": "secret-1",
            "gateway": {"host": "gw", "username": "g", "password": "secret-2"},
            "fallbacks": [{"host": "b", "Password": "secret-3"}, [{"password": "secret-4", "note": "kept"}]],
            "credentials": {"nested": {"deeper": {"password": "secret-5", "domain": "d"}}},
        }}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let sid = r.json()["session_id"].as_str().unwrap().to_owned();
    let rdp = r.json()["rdp_config"].clone();
    assert_eq!(rdp["gateway"], json!({"host": "gw", "username": "g"}), "{rdp}");
    assert_eq!(rdp["fallbacks"], json!([{"host": "b"}, [{"note": "kept"}]]), "{rdp}");
    assert_eq!(rdp["credentials"]["nested"]["deeper"], json!({"domain": "d"}), "{rdp}");
    let stored = serde_json::to_string(&d.engine.get(&sid).unwrap()).unwrap();
    let answers = [r.text(), c.get(&format!("{url}/{sid}")).text(), c.get(&url).text(), stored];
    for text in &answers {
        for n in 1..=5 {
            assert!(!text.contains(&format!("secret-{n}")), "secret-{n} in {text}");
        }
        assert!(!text.to_ascii_lowercase().contains("password"), "{text}");
    }
    // rdp_config is an object (the original RDPConfig) or absent.
    let r = c.post_json(&url, &json!({"name": "rdp", "rdp_config": "user:secret@host"}));
    assert_eq!(r.status, 422, "{}", r.text());
}
