//! Power-loss behaviour of the real binary: SIGKILL `lucidd` mid-recording, start it
//! again on the same data dir (the value logs' tails replayed into redb), and check that
//! the interrupted session was closed as recovered, every committed chunk still decrypts
//! and verifies, recording goes on, and no (epoch, index) nonce was used twice under the
//! session key.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::gateway::{ffprobe_frames, lucidd_verify};
use crate::harness::{Client, TOKEN};

pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) base: String,
}

pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn spawn(dir: &std::path::Path) -> Proc {
    spawn_with(dir, &[])
}

/// `spawn` with extra environment variables (e.g. `LUCID_RECORD_MODE`).
pub(crate) fn spawn_with(dir: &std::path::Path, env: &[(&str, &str)]) -> Proc {
    let p = free_ports(5);
    let child = Command::new(env!("CARGO_BIN_EXE_lucidd"))
        .args([
            "run",
            "--source",
            "test",
            "--bind",
            "127.0.0.1",
            "--resolution",
            "320x240",
            "--fps",
            "15",
            "--bitrate",
            "300000",
            "--min-free-bytes",
            "1048576",
            "--checkpoint-every-chunks",
            "100",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--pipeline-port",
            &p[0].to_string(),
            "--recorder-port",
            &p[1].to_string(),
            "--processor-port",
            &p[2].to_string(),
            "--storage-port",
            &p[3].to_string(),
            "--gateway-port",
            &p[4].to_string(),
        ])
        .env("LUCID_API_TOKEN", TOKEN)
        .env_remove("JWT_SECRET_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{}", p[4]);
    let c = client();
    let t = Instant::now();
    loop {
        if let Ok(r) = c.http.get(format!("{base}/health")).send()
            && r.status().is_success()
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "lucidd did not become healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    Proc { child, base }
}

fn client() -> Client {
    Client { http: reqwest::blocking::Client::new(), token: Some(TOKEN.into()) }
}

pub(crate) fn get(p: &Proc, path: &str) -> Value {
    let r = client().get(&format!("{}{path}", p.base));
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

fn records(p: &Proc, sid: &str) -> Vec<Value> {
    get(p, &format!("/api/v1/sessions/{sid}/chunks?limit=1000"))["chunks"].as_array().unwrap().clone()
}

#[test]
fn sigkill_mid_recording_recovers_and_never_reuses_a_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let mut a = spawn(dir.path());
    let r = c.post_json(&format!("{}/api/v1/sessions", a.base), &json!({"name": "crash"}));
    assert_eq!(r.status, 201);
    let sid = r.json()["session_id"].as_str().unwrap().to_owned();
    assert_eq!(c.post(&format!("{}/api/v1/sessions/{sid}/start", a.base)).status, 200);
    let t = Instant::now();
    while get(&a, &format!("/api/v1/sessions/{sid}"))["statistics"]["chunks_count"].as_u64().unwrap() < 3 {
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
    let epoch_before = get(&a, "/api/v1/device")["epoch"].as_u64().unwrap();
    // Power cut: no shutdown path runs.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // The sealed chunks are in the session's value log, and redb makes their rows durable
    // only in batches (design.md, "Store"): the recovery below replays the log's tail.
    let log = dir.path().join("vlog").join(format!("{sid}.vlog"));
    assert!(std::fs::metadata(&log).map(|m| m.len() > 0).unwrap_or(false), "no value log at {}", log.display());

    let mut b = spawn(dir.path());
    let s = get(&b, &format!("/api/v1/sessions/{sid}"));
    assert_eq!(s["status"], "stopped", "{s}");
    assert_eq!(s["recovered"], true);
    let committed = s["statistics"]["chunks_count"].as_u64().unwrap();
    assert!(committed >= 3);
    assert!(get(&b, "/api/v1/device")["epoch"].as_u64().unwrap() > epoch_before);

    // Every committed chunk decrypts: the export decodes to the recorded frame count.
    let mp4 = c.get(&format!("{}/api/v1/sessions/{sid}/export.mp4", b.base));
    assert_eq!(mp4.status, 200);
    let path = dir.path().join("recovered.mp4");
    std::fs::write(&path, &mp4.body).unwrap();
    let (_, _, _, frames) = ffprobe_frames(&path);
    assert_eq!(frames, s["statistics"]["frame_count"].as_u64().unwrap());
    // And the recovered log verifies, signed at recovery over every committed chunk.
    let ev = c.get(&format!("{}/api/v1/sessions/{sid}/evidence", b.base));
    assert_eq!(ev.status, 200);
    let evp = dir.path().join("recovered.tar");
    std::fs::write(&evp, &ev.body).unwrap();
    let (ok, out) = lucidd_verify(&evp);
    assert!(ok, "{out}");

    // The same session records on (start from stopped) under the new epoch.
    assert_eq!(c.post(&format!("{}/api/v1/sessions/{sid}/start", b.base)).status, 200);
    let t = Instant::now();
    while get(&b, &format!("/api/v1/sessions/{sid}"))["statistics"]["chunks_count"].as_u64().unwrap() < committed + 2 {
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.post(&format!("{}/api/v1/sessions/{sid}/stop", b.base)).status, 200);
    let recs = records(&b, &sid);
    let mut seen = HashSet::new();
    for r in &recs {
        let nonce = (r["epoch"].as_u64().unwrap(), r["index"].as_u64().unwrap());
        assert!(seen.insert(nonce), "nonce {nonce:?} used twice");
    }
    let old_epochs: HashSet<u64> = recs[..committed as usize].iter().map(|r| r["epoch"].as_u64().unwrap()).collect();
    for r in &recs[committed as usize..] {
        assert!(old_epochs.iter().all(|e| r["epoch"].as_u64().unwrap() > *e), "new chunk sealed under an old epoch");
    }
    let ev = c.get(&format!("{}/api/v1/sessions/{sid}/evidence", b.base));
    std::fs::write(&evp, &ev.body).unwrap();
    let (ok, out) = lucidd_verify(&evp);
    assert!(ok, "{out}");

    // A brand-new session records after the crash too.
    let r = c.post_json(&format!("{}/api/v1/sessions", b.base), &json!({"name": "after"}));
    let sid2 = r.json()["session_id"].as_str().unwrap().to_owned();
    assert_eq!(c.post(&format!("{}/api/v1/sessions/{sid2}/start", b.base)).status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(c.post(&format!("{}/api/v1/sessions/{sid2}/stop", b.base)).status, 200);
    assert!(get(&b, &format!("/api/v1/sessions/{sid2}"))["statistics"]["chunks_count"].as_u64().unwrap() >= 1);

    // SIGTERM is a clean stop.
    unsafe { libc::kill(b.child.id() as i32, libc::SIGTERM) };
    let st = b.child.wait().unwrap();
    assert!(st.success(), "lucidd exited with {st} on SIGTERM");
}

/// The device log across a SIGKILL (issue 10): every session whose create was
/// acknowledged before the kill is in the log afterwards, the recovery appends the head it
/// owes for the interrupted recording, and the checkpoint after is consistent with the one
/// before (no fork); the device evidence then verifies with the real `verify-device`.
#[test]
fn sigkill_loses_no_device_log_event_and_forks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let mut a = spawn(dir.path());
    let r = c.post_json(&format!("{}/api/v1/sessions", a.base), &json!({"name": "rec"}));
    assert_eq!(r.status, 201);
    let rec = r.json()["session_id"].as_str().unwrap().to_owned();
    assert_eq!(c.post(&format!("{}/api/v1/sessions/{rec}/start", a.base)).status, 200);
    // Creates keep arriving until the kill; those answered 201 were acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creator = {
        let (base, stop) = (a.base.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = client();
            let mut acked = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(r) = c
                    .http
                    .post(format!("{base}/api/v1/sessions"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"name": "n"}))
                    .send()
                else {
                    break;
                };
                if r.status().as_u16() == 201 {
                    acked.push(r.json::<Value>().unwrap()["session_id"].as_str().unwrap().to_owned());
                }
            }
            acked
        })
    };
    let t = Instant::now();
    while get(&a, &format!("/api/v1/sessions/{rec}"))["statistics"]["chunks_count"].as_u64().unwrap() < 2 {
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = client().get(&format!("{}/api/v1/device/log/checkpoint", a.base)).text();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = creator.join().unwrap();

    let mut b = spawn(dir.path());
    let after = client().get(&format!("{}/api/v1/device/log/checkpoint", b.base)).text();
    let vkey = get(&b, "/api/v1/device")["verifier_key"].as_str().unwrap().to_owned();
    let v = lucid_core::Verifier::from_vkey(&vkey).unwrap();
    let (cb, ca) = (v.verify_checkpoint(&before).unwrap(), v.verify_checkpoint(&after).unwrap());
    assert!(cb.size < ca.size, "the recovery head follows: {} then {}", cb.size, ca.size);
    let cons = get(&b, &format!("/api/v1/device/log/consistency?from={}&to={}", cb.size, ca.size));
    let h = |v: &Value| -> [u8; 32] {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
    };
    let path: Vec<[u8; 32]> = cons["consistency_path"].as_array().unwrap().iter().map(h).collect();
    lucid_core::merkle::verify_consistency(cb.size, ca.size, &cb.root, &ca.root, &path).expect("no fork");

    let ev = client().get(&format!("{}/api/v1/device/evidence", b.base));
    assert_eq!(ev.status, 200);
    let (code, out, err) = crate::devlog::verify_device(&ev.body, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let line = out.lines().find(|l| l.starts_with("session ") && l.contains(&rec)).unwrap();
    assert!(line.contains("generation 1"), "the recovery appended the head it owed: {line}");
    for sid in &acked {
        assert!(out.contains(&format!("session      {sid} ")), "acknowledged create of {sid} lost:\n{out}");
    }
    b.child.kill().unwrap();
    b.child.wait().unwrap();
}
