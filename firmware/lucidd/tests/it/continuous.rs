//! Continuous recording (issue #11): `[record] mode = "continuous"` records from boot on
//! in segments of `segment_seconds`, each an ordinary session that verifies on its own,
//! with no frame lost at a cut; pause and resume through the API; a restart records
//! again; `GET /api/v1/recordings` lists the segments and the paused gap; and retention
//! keeps a small store under its cap while continuous recording runs past it.
//!
//! Frame continuity is checked on the signed chunk records, which carry media start and
//! end (µs, end exclusive) and the frame count of each chunk: the chunker ends a chunk one
//! frame interval after its last frame, so "last frame of one segment + one frame
//! interval == first frame of the next" is `last.media_end_us == first.media_start_us`,
//! with `(end - start) / frames` the frame interval.

use std::path::Path;
use std::time::{Duration, Instant};

use lucidd::config::{Config, RecordMode};
use lucidd::engine::continuous::is_segment;
use serde_json::Value;

use crate::harness::{Client, Daemon, lucidd, test_config};

fn continuous_config(dir: &Path, segment_seconds: u64) -> Config {
    let mut cfg = test_config(dir);
    cfg.record.mode = RecordMode::Continuous;
    cfg.record.segment_seconds = segment_seconds;
    cfg
}

fn gw(d: &Daemon, path: &str) -> String {
    d.url("gateway", path)
}

/// The continuous segments, oldest first.
fn segments(d: &Daemon) -> Vec<lucidd::engine::SessionRow> {
    d.engine.list().unwrap().into_iter().filter(is_segment).collect()
}

fn wait(what: &str, secs: u64, f: &mut dyn FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Downloads `sid`'s evidence and runs the real `lucidd verify` on it.
fn verify(d: &Daemon, c: &Client, sid: &str, tmp: &Path) {
    let ev = c.get(&gw(d, &format!("/api/v1/sessions/{sid}/evidence")));
    assert_eq!(ev.status, 200, "{sid}: {}", ev.text());
    let path = tmp.join(format!("{sid}.tar"));
    std::fs::write(&path, &ev.body).unwrap();
    let (code, out, err) = lucidd(&[&"verify", &path]);
    assert_eq!(code, 0, "{sid}: {out}{err}");
}

fn rfc3339(us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn parse(s: &str) -> i64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1000) as i64
}

#[test]
fn continuous_segments_lose_no_frame_verify_pause_resume_restart_and_list() {
    let data = tempfile::tempdir().unwrap();
    let cfg = continuous_config(data.path(), 2);
    let t0 = lucidd::util::unix_micros() - 1_000_000;
    let d = Daemon::start_with(tempfile::tempdir().unwrap(), cfg.clone());
    let c = d.client();

    // Recording from boot on, in segments; three sealed ones and the current.
    let st = c.get(&gw(&d, "/api/v1/record")).json();
    assert_eq!(st["mode"], "continuous", "{st}");
    assert_eq!(st["state"], "recording", "{st}");
    assert_eq!(c.get(&gw(&d, "/api/v1/device")).json()["record"]["state"], "recording");
    wait("four segments", 30, &mut || segments(&d).len() >= 4);

    // The camera is busy: a manual start is refused, clearly.
    let sid = crate::gateway::create(&d, &c, "manual while continuous");
    let r = c.post(&gw(&d, &format!("/api/v1/sessions/{sid}/start")));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("the camera is busy recording session"), "{}", r.text());
    assert_eq!(c.delete(&gw(&d, &format!("/api/v1/sessions/{sid}"))).status, 200);

    // Pause: the current segment is sealed and no new one starts.
    assert_eq!(d.anon().post(&gw(&d, "/api/v1/record/pause")).status, 401);
    let r = c.post(&gw(&d, "/api/v1/record/pause"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "paused");
    let before_pause = segments(&d);
    assert!(before_pause.iter().all(|s| s.status.as_str() == "stopped"), "all sealed at pause");
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(segments(&d).len(), before_pause.len(), "no segment starts while paused");
    assert_eq!(d.engine.camera_session(), None);

    // Resume: one new segment.
    let r = c.post(&gw(&d, "/api/v1/record/resume"));
    assert_eq!(r.status, 200, "{}", r.text());
    let resumed = r.json()["session_id"].as_str().unwrap().to_owned();
    assert!(before_pause.iter().all(|s| s.id != resumed));
    wait("the resumed segment's chunks", 20, &mut || d.engine.get(&resumed).unwrap().chunk_count >= 2);

    // Segments are named by their start, UTC, to the second.
    for s in &before_pause {
        assert!(s.name.ends_with('Z') && s.name.len() == 20, "{}", s.name);
        time::OffsetDateTime::parse(&s.name, &time::format_description::well_known::Rfc3339).unwrap();
    }

    // No frame lost at a cut: consecutive segments of the run meet frame to frame.
    let frame_us = 1_000_000 / u64::from(cfg.video.fps);
    for pair in before_pause.windows(2) {
        let a = d.engine.records(&pair[0].id).unwrap();
        let b = d.engine.records(&pair[1].id).unwrap();
        let (last, first) = (&a.last().unwrap().record, &b.first().unwrap().record);
        assert_eq!(last.media_end_us, first.media_start_us, "{} -> {}: media time jumps", pair[0].id, pair[1].id);
        // The records carry chunk times, not frame times. The chunker ends a chunk cut at
        // a keyframe at that keyframe's pts, i.e. one frame interval after the chunk's
        // last frame, so the equality above is "last frame + one interval == first frame
        // of the next segment". The paced test camera puts frames on a grid of slots and
        // skips a slot when the machine is late (a source drop, counted apart, seen on
        // this loaded 2-core machine), so a chunk spans its frames at one interval each,
        // or more where the camera skipped: never less, and on the grid.
        let span = last.media_end_us - last.media_start_us;
        let slots = (span + frame_us / 2) / frame_us;
        assert!(slots >= u64::from(last.frame_count), "{span} µs for {} frames", last.frame_count);
        assert!(span.abs_diff(slots * frame_us) <= slots, "{span} µs is off the {frame_us} µs frame grid");
        assert!(!b[0].record.flags.contains(lucid_core::chunk::Flags::GAP_BEFORE), "a cut is no gap");
        assert!(a.len() >= 2, "a 2 s segment of 1 s chunks has at least two");
    }

    // Every segment verifies on its own with the real CLI.
    let tmp = tempfile::tempdir().unwrap();
    for s in &before_pause {
        verify(&d, &c, &s.id, tmp.path());
    }
    // A later segment's media time does not start at zero: its export still plays
    // every frame and matches its evidence.
    let second = &before_pause[1];
    let mp4 = c.get(&gw(&d, &format!("/api/v1/sessions/{}/export.mp4", second.id)));
    assert_eq!(mp4.status, 200, "{}", mp4.text());
    let mp4_path = tmp.path().join("second.mp4");
    std::fs::write(&mp4_path, &mp4.body).unwrap();
    let (_, _, _, frames) = crate::gateway::ffprobe_frames(&mp4_path);
    assert_eq!(frames, d.engine.get(&second.id).unwrap().frame_count);
    let (code, out, err) = lucidd(&[&"verify", &tmp.path().join(format!("{}.tar", second.id)), &"--media", &mp4_path]);
    assert_eq!(code, 0, "{out}{err}");

    // The listing: every segment, no gap inside the run, one gap for the pause.
    let now = lucidd::util::unix_micros();
    let q = format!("/api/v1/recordings?from={}&to={}", rfc3339(t0), rfc3339(now + 60_000_000));
    let r = c.get(&gw(&d, &q));
    assert_eq!(r.status, 200, "{}", r.text());
    let l = r.json();
    let ids: Vec<&str> = l["recordings"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    for s in &before_pause {
        assert!(ids.contains(&s.id.as_str()), "{} missing from {l}", s.id);
    }
    assert!(ids.contains(&resumed.as_str()), "{l}");
    let rec = |id: &str| l["recordings"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap().clone();
    let last_before = rec(&before_pause.last().unwrap().id);
    assert_eq!(last_before["continuous"], true);
    assert_eq!(last_before["status"], "stopped");
    assert!(last_before["size_bytes"].as_u64().unwrap() > 0);
    let gaps: Vec<(i64, i64)> = l["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (parse(g["start"].as_str().unwrap()), parse(g["end"].as_str().unwrap())))
        .collect();
    let pause_end = parse(rec(&resumed)["start"].as_str().unwrap());
    let pause_start = parse(last_before["end"].as_str().unwrap());
    // Timestamps render to the millisecond.
    let near = |a: i64, b: i64| (a - b).abs() <= 1000;
    assert!(gaps.iter().any(|&(s, e)| near(s, pause_start) && near(e, pause_end)), "no pause gap in {l}");
    let run_start = parse(rec(&before_pause[0].id)["start"].as_str().unwrap());
    assert!(
        gaps.iter().all(|&(s, e)| e <= run_start + 1000 || s >= pause_start - 1000),
        "a gap inside the continuous run: {l}"
    );
    assert!(pause_end - pause_start >= 4_000_000, "{pause_start}..{pause_end}");

    // Bad queries are 400s that say why.
    for bad in [
        "/api/v1/recordings".to_owned(),
        format!("/api/v1/recordings?from={}", rfc3339(t0)),
        "/api/v1/recordings?from=yesterday&to=today".to_owned(),
        format!("/api/v1/recordings?from={}&to={}", rfc3339(now), rfc3339(t0)),
        format!("/api/v1/recordings?from={}&to={}", rfc3339(now - 40 * 86_400_000_000), rfc3339(now)),
    ] {
        let r = c.get(&gw(&d, &bad));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(d.anon().get(&gw(&d, &q)).status, 401);

    // A restart records again, in a new segment; the one stopped at shutdown is sealed.
    let before_restart: Vec<String> = segments(&d).iter().map(|s| s.id.clone()).collect();
    drop(d);
    let d = Daemon::start_with(tempfile::tempdir().unwrap(), cfg);
    let cur = d.engine.camera_session().expect("recording after a restart");
    assert!(!before_restart.contains(&cur));
    assert_eq!(d.engine.get(&resumed).unwrap().status.as_str(), "stopped");
    assert!(!d.engine.get(&resumed).unwrap().recovered, "shut down cleanly, not recovered");
    wait("chunks after the restart", 20, &mut || d.engine.get(&cur).unwrap().chunk_count >= 1);
    assert_eq!(d.client().get(&gw(&d, "/api/v1/record")).json()["state"], "recording");
    verify(&d, &d.client(), &resumed, tmp.path());
    drop(data);
}

#[test]
fn manual_mode_refuses_pause_and_bad_segment_lengths_are_config_errors() {
    let d = Daemon::start();
    let c = d.client();
    assert_eq!(c.get(&gw(&d, "/api/v1/record")).json()["mode"], "manual");
    assert_eq!(c.get(&gw(&d, "/api/v1/record")).json()["state"], "stopped");
    let r = c.post(&gw(&d, "/api/v1/record/pause"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("mode is manual"), "{}", r.text());
    assert_eq!(c.post(&gw(&d, "/api/v1/record/resume")).status, 409);

    let run = |vars: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lucidd"));
        cmd.arg("config");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&[("LUCID_RECORD_MODE", "continuous"), ("LUCID_SEGMENT_SECONDS", "5")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg: Config = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!((cfg.record.mode, cfg.record.segment_seconds), (RecordMode::Continuous, 5));
    let out = run(&[("LUCID_SEGMENT_SECONDS", "1")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("record.segment_seconds") && err.contains("2..=86400"), "{err}");
}

/// A small store, continuous recording at a high bitrate, run past three times the cap.
#[test]
fn continuous_recording_past_the_store_cap_keeps_recording_and_a_locked_segment() {
    const CAP: u64 = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = continuous_config(dir.path(), 2);
    // As tests/it/retention.rs: mostly keyframes, short chunks, about 50 kB/s.
    cfg.video.bitrate_bps = 8_000_000;
    cfg.video.keyframe_interval_ms = 100;
    cfg.record.chunk_target_ms = 250;
    cfg.retention.max_store_bytes = Some(CAP);
    cfg.retention.interval_ms = 200;
    let d = Daemon::start_with(dir, cfg);
    let c = d.client();

    // Lock the first sealed segment.
    wait("a sealed segment", 20, &mut || segments(&d).iter().any(|s| s.status.as_str() == "stopped"));
    let keep = segments(&d)[0].id.clone();
    assert_eq!(c.post(&gw(&d, &format!("/api/v1/sessions/{keep}/lock"))).status, 200);

    let t = Instant::now();
    let mut sizes = std::collections::BTreeMap::<String, u64>::new();
    let mut order: Vec<String> = Vec::new();
    let mut disk = Vec::new();
    loop {
        let recorded: u64 = sizes.values().sum();
        if recorded >= 3 * CAP && order.len() >= 8 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(45), "only {recorded} bytes recorded in 45 s");
        std::thread::sleep(Duration::from_millis(250));
        for s in segments(&d) {
            // Recording never failed for lack of room.
            assert_eq!(s.last_error, None, "{} stopped by an error", s.id);
            if !sizes.contains_key(&s.id) {
                order.push(s.id.clone());
            }
            let e = sizes.entry(s.id.clone()).or_default();
            *e = (*e).max(s.stored_bytes);
        }
        assert!(d.engine.camera_session().is_some(), "continuous recording stopped");
        assert_eq!(d.engine.retention_blocked(), None);
        assert!(d.engine.store().accounted_bytes() <= CAP, "the store holds more than its cap");
        let logs = dir_bytes(&d.dir.path().join("vlog"));
        assert!(logs <= CAP, "value logs of {logs} bytes over the cap");
        disk.push(dir_bytes(d.dir.path()));
    }
    eprintln!("recorded {} bytes in {} segments; on disk {disk:?}", sizes.values().sum::<u64>(), order.len());

    // The locked segment survived; the oldest unlocked ones are gone, oldest first.
    let exists = |sid: &str| c.get(&gw(&d, &format!("/api/v1/sessions/{sid}"))).status == 200;
    assert!(exists(&keep));
    let rest: Vec<&String> = order.iter().filter(|s| **s != keep).collect();
    assert!(!exists(rest[0]), "the oldest unlocked segment was deleted");
    let present: Vec<bool> = rest.iter().map(|s| exists(s)).collect();
    let first = present.iter().position(|p| *p).unwrap();
    assert!(present[first..].iter().all(|p| *p), "{present:?}");

    // The files stop growing (see tests/it/retention.rs for the device log's share).
    let half = disk.len() / 2;
    let (early, late) = (disk[..half].iter().max().unwrap(), disk[half..].iter().max().unwrap());
    assert!(*late <= early + 2 * CAP, "on-disk size keeps growing: {early} then {late}");

    // What remains verifies, the locked segment included; the live one is not sealed yet.
    let live = d.engine.camera_session();
    let tmp = tempfile::tempdir().unwrap();
    for s in segments(&d) {
        if Some(&s.id) != live.as_ref() && s.status.as_str() == "stopped" {
            verify(&d, &c, &s.id, tmp.path());
        }
    }
    let listed: Value = c
        .get(&gw(
            &d,
            &format!(
                "/api/v1/recordings?from={}&to={}",
                rfc3339(lucidd::util::unix_micros() - 3_600_000_000),
                rfc3339(lucidd::util::unix_micros() + 1_000_000)
            ),
        ))
        .json();
    assert!(listed["recordings"].as_array().unwrap().iter().any(|r| r["id"] == keep.as_str() && r["locked"] == true));
}

/// Bytes of every file under `dir`. Retention deletes value logs while this runs: a file
/// gone between the listing and its `stat` counts nothing.
fn dir_bytes(dir: &Path) -> u64 {
    let mut sum = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        sum += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
    }
    sum
}

/// The real binary, SIGKILLed mid-segment: at the next start recovery seals the open
/// segment (as `recovered`, and it verifies) and a new segment starts by itself.
#[test]
fn after_a_crash_the_open_segment_is_recovered_and_a_new_one_starts() {
    use crate::crash::{get, spawn_with};
    let dir = tempfile::tempdir().unwrap();
    let env = [("LUCID_RECORD_MODE", "continuous"), ("LUCID_SEGMENT_SECONDS", "30")];
    let mut a = spawn_with(dir.path(), &env);
    let st = get(&a, "/api/v1/record");
    assert_eq!(st["state"], "recording", "{st}");
    let sid = st["session_id"].as_str().unwrap().to_owned();
    wait("two chunks", 30, &mut || {
        get(&a, &format!("/api/v1/sessions/{sid}"))["statistics"]["chunks_count"].as_u64().unwrap() >= 2
    });
    a.child.kill().unwrap();
    a.child.wait().unwrap();

    let mut b = spawn_with(dir.path(), &env);
    let s = get(&b, &format!("/api/v1/sessions/{sid}"));
    assert_eq!((s["status"].as_str(), s["recovered"].as_bool()), (Some("stopped"), Some(true)), "{s}");
    let st = get(&b, "/api/v1/record");
    assert_eq!(st["state"], "recording", "{st}");
    assert_ne!(st["session_id"].as_str().unwrap(), sid, "a new segment after recovery");
    let c = Client { http: reqwest::blocking::Client::new(), token: Some(crate::harness::TOKEN.into()) };
    let ev = c.get(&format!("{}/api/v1/sessions/{sid}/evidence", b.base));
    assert_eq!(ev.status, 200, "{}", ev.text());
    let path = dir.path().join("recovered.tar");
    std::fs::write(&path, &ev.body).unwrap();
    let (code, out, err) = lucidd(&[&"verify", &path]);
    assert_eq!(code, 0, "{out}{err}");
    b.child.kill().unwrap();
    b.child.wait().unwrap();
}

/// The keeper (engine/continuous.rs): continuous recording that stopped without a pause
/// starts again by itself, and while it cannot, `/health` says so (degraded, with the
/// camera's error) and the keeper keeps trying with a growing wait.
#[test]
fn continuous_recording_starts_again_after_a_stop_and_reports_a_missing_camera() {
    let mut cfg = continuous_config(tempfile::tempdir().unwrap().path(), 60);
    cfg.record.restart_secs = 1;
    let d = Daemon::start_with(tempfile::tempdir().unwrap(), cfg);
    let c = d.client();
    let first = c.get(&gw(&d, "/api/v1/record")).json()["session_id"].as_str().unwrap().to_owned();
    wait("the first segment's chunks", 20, &mut || d.engine.get(&first).unwrap().chunk_count >= 1);

    // A client stops the segment (not a pause): a new one follows within a few seconds.
    let r = c.post(&gw(&d, &format!("/api/v1/sessions/{first}/stop")));
    assert_eq!(r.status, 200, "{}", r.text());
    wait("a new segment after the stop", 15, &mut || d.engine.camera_session().is_some_and(|s| s != first));
    let st = c.get(&gw(&d, "/api/v1/record")).json();
    assert_eq!(
        (st["state"].as_str(), st["restarts"].as_u64(), st["failures"].as_u64()),
        (Some("recording"), Some(1), Some(0)),
        "{st}"
    );
    let h = c.get(&gw(&d, "/health")).json();
    assert_eq!(h["status"], "healthy", "{h}");
    assert_eq!(h["services"]["record"]["state"], "recording", "{h}");

    // A paused recorder is left alone: no segment starts, and paused is no fault.
    assert_eq!(c.post(&gw(&d, "/api/v1/record/pause")).status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.engine.camera_session(), None);
    assert_eq!(c.get(&gw(&d, "/health")).json()["services"]["record"]["status"], "healthy");
    drop(d);

    // A camera that is not there: the daemon serves, degraded, and keeps trying.
    let mut cfg = continuous_config(tempfile::tempdir().unwrap().path(), 60);
    cfg.record.restart_secs = 1;
    cfg.source = lucidd::config::SourceKind::V4l2;
    cfg.camera.device = "/dev/lucid-no-such-camera".into();
    let d = Daemon::start_with(tempfile::tempdir().unwrap(), cfg);
    let c = d.client();
    let h = c.get(&gw(&d, "/health"));
    assert_eq!(h.status, 200, "degraded still answers 200: {}", h.text());
    let h = h.json();
    assert_eq!(h["status"], "degraded", "{h}");
    let rec = &h["services"]["record"];
    assert_eq!((rec["status"].as_str(), rec["state"].as_str()), (Some("degraded"), Some("stopped")), "{h}");
    assert!(rec["last_error"].as_str().is_some_and(|e| e.starts_with("camera: ")), "{h}");
    assert!(h["reason"].as_str().is_some_and(|r| r.starts_with("continuous recording is not running")), "{h}");
    // Tries at boot, then after 1 s and 2 s more: three failures within about 4 s.
    wait("the keeper's retries", 15, &mut || {
        c.get(&gw(&d, "/api/v1/record")).json()["failures"].as_u64().unwrap_or(0) >= 3
    });
    assert!(segments(&d).is_empty(), "a refused start leaves no segment behind");
}
