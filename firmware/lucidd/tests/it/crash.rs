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

struct Proc {
    child: Child,
    base: String,
}

pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn spawn(dir: &std::path::Path) -> Proc {
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

fn get(p: &Proc, path: &str) -> Value {
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
