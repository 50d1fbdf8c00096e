//! The camera settings API (`GET`/`PUT /api/v1/camera`) over real HTTP, their durability
//! in the redb store across a restart, and the V4L2 source on a machine without cameras:
//! a clear 503 that loses nothing. The V4L2 devices themselves are tested against vivid and
//! vicodec in the emulated image (`./scripts/hil camera`) and against a fake driver in
//! lucid-media's unit tests.

use serde_json::json;

use crate::harness::{Daemon, test_config};
use lucidd::config::SourceKind;

#[test]
fn camera_settings_are_validated_stored_and_survive_a_restart() {
    // The store lives in `keep`, which outlives both daemons (each owns a scratch dir).
    let keep = tempfile::tempdir().unwrap();
    let path = keep.path().to_owned();
    let mut cfg = test_config(&path);
    cfg.source = SourceKind::V4l2;
    let d = Daemon::start_with(tempfile::tempdir().unwrap(), cfg.clone());
    let c = d.client();
    let url = d.url("gateway", "/api/v1/camera");
    let v = c.get(&url).json();
    assert_eq!(v["source"], "v4l2");
    assert_eq!(
        v["settings"],
        json!({"device": "", "encoder": "auto", "codec": "h264", "encoder_device": "", "buffers": 6})
    );
    assert!(v["devices"].is_array());
    assert_eq!(v["state"]["recording"], false);

    // Refused, each with a message, and nothing changes.
    assert_eq!(d.anon().put_json(&url, &json!({"encoder": "software"})).status, 401);
    for (body, needle) in [
        (json!({"encoder": "gpu"}), "unknown variant"),
        (json!({"colour": "blue"}), "unknown field"),
        (json!({"buffers": 1}), "camera.buffers"),
        (json!({"device": "video0"}), "/dev/"),
        (json!({"codec": "fwht", "encoder": "software"}), "no software encoder"),
        (json!([1, 2]), "JSON object"),
    ] {
        let r = c.put_json(&url, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(needle), "{body}: {}", r.text());
    }
    assert_eq!(c.get(&url).json()["settings"]["encoder"], "auto");

    // A partial update keeps the other keys.
    let r = c.put_json(&url, &json!({"encoder": "hardware", "codec": "fwht", "encoder_device": "/dev/video11"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["settings"],
        json!({"device": "", "encoder": "hardware", "codec": "fwht", "encoder_device": "/dev/video11", "buffers": 6})
    );
    drop(c);
    drop(d);

    // Reopened on the same store: the settings are the stored ones, not the file's.
    let d = Daemon::start_with(tempfile::tempdir().unwrap(), cfg);
    let v = d.client().get(&d.url("gateway", "/api/v1/camera")).json();
    assert_eq!(v["settings"]["codec"], "fwht");
    assert_eq!(v["settings"]["encoder_device"], "/dev/video11");
}

#[test]
fn fwht_is_refused_for_the_synthetic_camera() {
    let d = Daemon::start();
    let r = d.client().put_json(&d.url("gateway", "/api/v1/camera"), &json!({"codec": "fwht", "encoder": "hardware"}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("V4L2"), "{}", r.text());
}

#[test]
fn a_v4l2_session_without_a_camera_fails_clearly_and_stays_startable() {
    if std::path::Path::new("/dev/video0").exists() {
        eprintln!("skipped: this machine has a camera");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.source = SourceKind::V4l2;
    let d = Daemon::start_with(dir, cfg);
    let c = d.client();
    let r = c.post_json(&d.url("gateway", "/api/v1/sessions"), &json!({"name": "no camera"}));
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    let sid = r.json()["session_id"].as_str().unwrap().to_owned();
    let r = c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/start")));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("no V4L2 capture device"), "{}", r.text());
    // Nothing was lost or left half-started: the session is still there and startable.
    let g = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}"))).json();
    assert_eq!(g["status"], "created", "{g}");
    // Forcing the hardware encoder names what is missing.
    c.put_json(&d.url("gateway", "/api/v1/camera"), &json!({"encoder": "hardware"}));
    let r = c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/start")));
    assert_eq!(r.status, 503);
    assert!(r.text().contains("no V4L2 encoder of h264"), "{}", r.text());
}

#[test]
fn the_config_file_is_held_to_the_same_camera_rules_as_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.camera.codec = lucidd::config::CodecChoice::Fwht;
    cfg.camera.encoder = lucidd::config::EncoderChoice::Hardware;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("fwht needs the V4L2 camera path"), "{e}");
    cfg.source = SourceKind::V4l2;
    cfg.validate().unwrap();
    cfg.camera.buffers = 1;
    assert!(cfg.validate().unwrap_err().to_string().contains("camera.buffers"));
}
