//! Retention end to end (issue #11): a daemon with a small `max_store_bytes` records many
//! short camera sessions over real HTTP, well past its cap. Recording never fails for
//! lack of room while deletable sessions exist; the oldest unlocked sessions go, each
//! with a `retention` event in the device log; a locked one survives; the store's
//! accounting stays under the cap and the files on disk stop growing; and what remains
//! verifies offline. With only a locked session left, recording stops and `/health` says
//! why.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::gateway::{create, lucidd_verify};
use crate::harness::{Client, Daemon, test_config};

/// A high bitrate, mostly keyframes and short chunks: the synthetic camera still makes only
/// about 50 kB/s, so the caps are a few hundred kB (a cap of a few MB would take minutes).
fn daemon(cap: u64) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.video.bitrate_bps = 8_000_000;
    // Mostly keyframes: the synthetic picture compresses too well otherwise.
    cfg.video.keyframe_interval_ms = 100;
    cfg.record.chunk_target_ms = 250;
    cfg.retention.max_store_bytes = Some(cap);
    cfg.retention.interval_ms = 200;
    Daemon::start_with(dir, cfg)
}

fn gw(d: &Daemon, path: String) -> String {
    d.url("gateway", &path)
}

/// Bytes of every file under `dir`, by their sizes (what `ls -l` adds up).
fn disk_bytes(dir: &Path) -> u64 {
    let mut sum = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        sum += if m.is_dir() { disk_bytes(&e.path()) } else { m.len() };
    }
    sum
}

/// Records `sid` for `secs` and stops it; returns the stop response.
fn record(d: &Daemon, c: &Client, sid: &str, secs: f64) -> Value {
    let r = c.post(&gw(d, format!("/api/v1/sessions/{sid}/start")));
    assert_eq!(r.status, 200, "start {sid}: {}", r.text());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let r = c.post(&gw(d, format!("/api/v1/sessions/{sid}/stop")));
    assert_eq!(r.status, 200, "stop {sid}: {}", r.text());
    r.json()
}

fn deletions_by_retention(d: &Daemon, c: &Client) -> Vec<Value> {
    let r = c.get(&gw(d, "/api/v1/device/log/entries?start=0&end=1000".into()));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decoded"].clone())
        .filter(|e| e["type"] == "session_deleted" && e["by"] == "retention")
        .collect()
}

fn health(d: &Daemon) -> Value {
    d.anon().get(&gw(d, "/health".into())).json()
}

#[test]
fn recording_past_the_store_cap_deletes_the_oldest_unlocked_sessions() {
    const CAP: u64 = 256 << 10;
    let d = daemon(CAP);
    let c = d.client();

    // The first session is locked: it must outlive everything recorded after it.
    let keep = create(&d, &c, "keep");
    record(&d, &c, &keep, 0.8);
    let r = c.post(&gw(&d, format!("/api/v1/sessions/{keep}/lock")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["locked"], true);
    assert_eq!(d.anon().post(&gw(&d, format!("/api/v1/sessions/{keep}/lock"))).status, 401);

    let t = Instant::now();
    let mut recorded = 0u64;
    let mut sessions = Vec::new();
    let mut disk = Vec::new();
    while recorded < 3 * CAP || sessions.len() < 8 {
        assert!(t.elapsed() < Duration::from_secs(40), "only {recorded} bytes recorded in 40 s");
        let sid = create(&d, &c, &format!("loop {}", sessions.len()));
        let stopped = record(&d, &c, &sid, 1.0);
        let size = stopped["final_statistics"]["size_bytes"].as_u64().unwrap();
        assert!(size > 0, "{stopped}");
        recorded += size;
        // Recording never failed for lack of room: no error on the row.
        let row = d.engine.get(&sid).unwrap();
        assert_eq!(row.last_error, None, "{sid} stopped by an error");
        assert!(d.engine.store().accounted_bytes() <= CAP, "the store holds more than its cap");
        let logs = disk_bytes(&d.dir.path().join("vlog"));
        assert!(logs <= CAP, "value logs of {logs} bytes over the cap");
        disk.push(disk_bytes(d.dir.path()));
        sessions.push(sid);
    }
    eprintln!("recorded {recorded} bytes in {} sessions; on disk: {disk:?}", sessions.len());
    assert_eq!(d.engine.retention_blocked(), None);

    // The locked session survived, the oldest unlocked ones are gone, the newest is here.
    let row = |sid: &str| c.get(&gw(&d, format!("/api/v1/sessions/{sid}")));
    assert_eq!(row(&keep).status, 200);
    assert_eq!(row(&keep).json()["locked"], true);
    assert_eq!(row(&sessions[0]).status, 404, "the oldest unlocked session was deleted");
    assert_eq!(row(sessions.last().unwrap()).status, 200);
    let present: Vec<bool> = sessions.iter().map(|s| row(s).status == 200).collect();
    // Deleted oldest first: what remains is a suffix of the loop's sessions.
    let first = present.iter().position(|p| *p).unwrap();
    assert!(present[first..].iter().all(|p| *p), "{present:?}");

    // Every deletion is in the device log, by retention, with the rule that fired.
    let events = deletions_by_retention(&d, &c);
    assert_eq!(events.len(), first, "{events:?}");
    for e in &events {
        let reason = e["reason"].as_str().unwrap();
        assert!(reason.starts_with("max_store_bytes: store "), "{reason}");
        assert!(reason.contains(" over cap 262.1 kB"), "{reason}");
    }
    assert_eq!(events[0]["session_id"], sessions[0].as_str());

    // Under the cap by the store's own accounting, and the files stopped growing: redb
    // reuses the pages of deleted sessions and their value logs are gone.
    assert!(d.engine.store().accounted_bytes() <= CAP);
    let h = health(&d);
    assert_eq!(h["status"], "healthy", "{h}");
    assert!(h["services"]["retention"]["accounted_bytes"].as_u64().unwrap() <= CAP, "{h}");
    // The data file system's size beside its free space (what shows a grown card).
    let space = &h["services"]["storage_space"];
    assert!(space["total_bytes"].as_u64().unwrap() >= space["available_space_bytes"].as_u64().unwrap(), "{h}");
    // The value logs stay under the cap (checked above, every session). The redb file
    // still grows a little: it holds the device log, append-only by design (three events
    // and checkpoints per session), and grows in regions of a few hundred kB. So the whole
    // directory's second half may exceed its first by at most that, while the loop
    // recorded more than the cap again in its second half.
    let half = disk.len() / 2;
    let (early, late) = (disk[..half].iter().max().unwrap(), disk[half..].iter().max().unwrap());
    eprintln!("on disk, first half max {early}, second half max {late}");
    assert!(*late <= early + 2 * CAP, "on-disk size keeps growing: first half max {early}, second half max {late}");
    let logs = std::fs::read_dir(d.dir.path().join("vlog")).unwrap().count();
    assert_eq!(logs, sessions.len() - first + 1, "one value log per live session");

    // What remains verifies offline.
    let tmp = tempfile::tempdir().unwrap();
    for sid in std::iter::once(&keep).chain(&sessions[first..]) {
        let ev = c.get(&gw(&d, format!("/api/v1/sessions/{sid}/evidence")));
        assert_eq!(ev.status, 200, "{}", ev.text());
        let path = tmp.path().join(format!("{sid}.tar"));
        std::fs::write(&path, &ev.body).unwrap();
        let (ok, out) = lucidd_verify(&path);
        assert!(ok, "{sid}: {out}");
    }

    // Locked protects from retention, not from an admin.
    assert_eq!(c.delete(&gw(&d, format!("/api/v1/sessions/{keep}"))).status, 200);
}

#[test]
fn with_only_a_locked_session_left_recording_stops_and_health_says_why() {
    const CAP: u64 = 128 << 10;
    let d = daemon(CAP);
    let c = d.client();
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // A locked session holding about half the cap.
    let a = create(&d, &c, "locked");
    let r = c.post(&gw(&d, format!("/api/v1/sessions/{a}/start")));
    assert_eq!(r.status, 200, "{}", r.text());
    wait("half the cap", &|| d.engine.store().accounted_bytes() >= CAP / 2);
    assert_eq!(c.post(&gw(&d, format!("/api/v1/sessions/{a}/stop"))).status, 200);
    assert_eq!(c.post(&gw(&d, format!("/api/v1/sessions/{a}/lock"))).status, 200);

    // The next recording fills the rest: nothing may be deleted, so it stops by itself.
    let b = create(&d, &c, "fills up");
    assert_eq!(c.post(&gw(&d, format!("/api/v1/sessions/{b}/start"))).status, 200);
    wait("the recording to stop", &|| d.engine.camera_session().is_none());
    let row = d.engine.get(&b).unwrap();
    assert_eq!(row.status.as_str(), "stopped");
    let err = row.last_error.unwrap_or_default();
    assert!(err.contains("storage full: only locked or recording sessions remain"), "{err}");
    assert!(d.engine.store().accounted_bytes() <= CAP);

    // Health says so, and keeps saying it: the background pass does not delete the session
    // that just stopped to make room for an append nobody makes.
    std::thread::sleep(Duration::from_millis(600));
    let h = health(&d);
    assert_eq!(h["status"], "degraded", "{h}");
    let reason = h["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("storage full: only locked or recording sessions remain"), "{h}");
    assert_eq!(h["services"]["retention"]["status"], "degraded", "{h}");
    assert!(deletions_by_retention(&d, &c).is_empty());
    assert_eq!(c.get(&gw(&d, format!("/api/v1/sessions/{a}"))).status, 200);
    assert_eq!(c.get(&gw(&d, format!("/api/v1/sessions/{b}"))).status, 200);

    // Unlocking clears the state; the next recording makes room, oldest first.
    assert_eq!(c.post(&gw(&d, format!("/api/v1/sessions/{a}/unlock"))).status, 200);
    assert_eq!(health(&d)["status"], "healthy");
    let n = create(&d, &c, "after unlock");
    record(&d, &c, &n, 3.0);
    assert_eq!(d.engine.get(&n).unwrap().last_error, None);
    let gone = deletions_by_retention(&d, &c);
    assert!(!gone.is_empty());
    assert_eq!(gone[0]["session_id"], a.as_str(), "the oldest unlocked session goes first");
}

#[test]
fn a_sessions_max_size_gb_stops_its_recording_and_deletes_nothing() {
    let d = daemon(64 << 20);
    let c = d.client();
    let sid = create(&d, &c, "small quota");
    // The API takes whole gigabytes; a row may hold less (as older rows' floats did).
    d.engine
        .update(&sid, |r| {
            r.storage_config["max_size_gb"] = serde_json::json!(0.00003);
            Ok(())
        })
        .unwrap();
    assert_eq!(c.post(&gw(&d, format!("/api/v1/sessions/{sid}/start"))).status, 200);
    let t = Instant::now();
    while d.engine.camera_session().is_some() {
        assert!(t.elapsed() < Duration::from_secs(20), "the recording went past its quota");
        std::thread::sleep(Duration::from_millis(100));
    }
    let row = d.engine.get(&sid).unwrap();
    assert!(row.stored_bytes <= 30_000, "{}", row.stored_bytes);
    let err = row.last_error.unwrap_or_default();
    assert!(err.contains("max_size_gb=0.00003"), "{err}");
    assert!(deletions_by_retention(&d, &c).is_empty());
    assert_eq!(health(&d)["status"], "healthy");
}

#[test]
fn retention_settings_come_from_the_environment_and_are_checked() {
    let run = |k: &str, v: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lucidd")).arg("config").env(k, v).output().unwrap()
    };
    let out = run("LUCID_RETENTION_MAX_STORE_BYTES", "134217728");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c: lucidd::Config = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(c.retention.max_store_bytes, Some(128 << 20));
    let out = run("LUCID_RETENTION_MAX_AGE_DAYS", "7");
    let c: lucidd::Config = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(c.retention.max_age_days, Some(7));
    let out = run("LUCID_RETENTION_KEEP_FREE_PERCENT", "95");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retention.keep_free_percent") && err.contains("1..=90"), "{err}");
}

#[test]
fn an_uploaded_data_session_is_kept_while_open_and_deleted_once_idle() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.retention.max_store_bytes = Some(256 << 10);
    cfg.retention.idle_close_seconds = 1;
    let d = Daemon::start_with(dir, cfg);
    let c = d.client();
    let up = |sid: &str, cid: &str, seed: u64| {
        let body = crate::storage::upload_body(cid, &crate::storage::noise(100_000, seed));
        c.post_json(&d.url("storage", &format!("/sessions/{sid}/chunks")), &body)
    };
    assert_eq!(up("data-a", "a0", 1).status, 200);
    assert_eq!(up("data-b", "b0", 2).status, 200);
    // data-a was written to just now: still open, so nothing may make room.
    let r = up("data-b", "b1", 3);
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.text().contains("only locked or recording sessions remain"), "{}", r.text());
    assert_eq!(health(&d)["status"], "degraded");
    // Idle for idle_close_seconds: closed, and the oldest; the session being appended to
    // (as idle) is never chosen.
    std::thread::sleep(Duration::from_millis(1500));
    let r = up("data-b", "b1", 3);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(health(&d)["status"], "healthy");
    let gone = deletions_by_retention(&d, &c);
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["session_id"], "data-a");
    assert!(gone[0]["reason"].as_str().unwrap().starts_with("max_store_bytes: store "), "{gone:?}");
    assert!(d.engine.store().accounted_bytes() <= 256 << 10);
}

#[test]
fn the_stores_accounting_is_the_value_logs_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let vlog = dir.path().join("vlog");
    let log = |sid: &str| std::fs::metadata(vlog.join(format!("{sid}.vlog"))).map(|m| m.len());
    let after = {
        // The daemon's own `dir` is a throwaway: the data dir outlives it.
        let d = Daemon::start_with(tempfile::tempdir().unwrap(), cfg.clone());
        crate::storage::upload(&d, "acct-a", "a0", &crate::storage::noise(50_000, 1));
        crate::storage::upload(&d, "acct-b", "b0", &crate::storage::noise(70_000, 2));
        let s = d.engine.store();
        assert_eq!(s.session_bytes("acct-a"), log("acct-a").unwrap());
        assert!(s.session_bytes("acct-b") > 70_000);
        assert_eq!(s.accounted_bytes(), log("acct-a").unwrap() + log("acct-b").unwrap());
        // Deleting frees exactly what the session counted: its log is unlinked.
        d.engine.delete("acct-a").unwrap();
        assert!(log("acct-a").is_err(), "the value log of a deleted session is gone");
        assert_eq!(d.engine.store().accounted_bytes(), log("acct-b").unwrap());
        d.engine.store().accounted_bytes()
    };
    // Measured again at open.
    let d = Daemon::start_with(dir, cfg);
    assert_eq!(d.engine.store().accounted_bytes(), after);
    assert_eq!(d.engine.store().session_bytes("acct-a"), 0);
}
