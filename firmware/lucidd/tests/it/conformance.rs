//! The gateway matches its own OpenAPI document: schemathesis (pinned by `scripts/setup`
//! in its venv) generates requests from `/api/v1/openapi.json` of the real `lucidd`
//! binary and checks every answer — no server error, only documented status codes, bodies
//! matching their schemas, documented content types. Any failure fails this test with
//! schemathesis' report; a missing schemathesis fails it too (never a skip), because a
//! suite that silently stops checking the document is worse than a red one.
//!
//! The document's example session id (`sess-0123abcd`) is a real session here, recording
//! with chunks when schemathesis starts: its examples phase then reads real chunks,
//! proofs, media and statistics through every route, and stops and deletes it on the way,
//! so the answers checked are those of a used appliance, not only 404s.
//!
//! The daemon runs with a fake A/B device (slot files, a boot-control file, a trusted key
//! with no private half) so the OTA routes answer as on a real appliance: `GET` reports,
//! a generated `POST` body is a bundle without a valid signature and is refused with a
//! 400 before any write. Without it they would answer 503 "not configured", which the
//! server-error check rightly counts as a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::crash::free_ports;
use crate::harness::{Client, TOKEN};

/// Enough cases per operation to reach every documented error of every route, small
/// enough for about a minute on a loaded 2-core machine. The seed keeps the run
/// reproducible; `LUCID_ST_SEED` picks another one to explore.
const MAX_EXAMPLES: &str = "30";
const DEFAULT_SEED: &str = "20260101";
const ST_TIMEOUT: Duration = Duration::from_secs(600);
/// The `example` of every `{id}` in `openapi.json`.
const EXAMPLE_SESSION: &str = "sess-0123abcd";

fn st_path() -> PathBuf {
    crate::harness::py_venv().join("bin/st")
}

/// Lays out the fake device under `dev` and returns the config file naming it.
fn device_config(dev: &Path) -> PathBuf {
    for d in ["slots", "ctl", "keys"] {
        std::fs::create_dir_all(dev.join(d)).unwrap();
    }
    for slot in ["a-boot", "a-root", "b-boot", "b-root"] {
        std::fs::write(dev.join("slots").join(slot), vec![0u8; 64 << 10]).unwrap();
    }
    std::fs::write(dev.join("ctl/lucid.env"), "lucid_active=a\nlucid_try=\n").unwrap();
    std::fs::write(dev.join("cmdline"), "console=ttyAMA0 lucid.slot=a rootwait\n").unwrap();
    std::fs::write(dev.join("release"), "board=qemu-aarch64-virt\nversion=0.1.0\nbuild=5\n").unwrap();
    let keygen = Command::new(env!("CARGO_BIN_EXE_lucidd"))
        .args(["bundle", "keygen", "--name", "conformance", "--out"])
        .arg(dev.join("keys"))
        .output()
        .unwrap();
    assert!(keygen.status.success(), "keygen: {}", String::from_utf8_lossy(&keygen.stderr));
    // Nothing here can sign a bundle: only the verifier key stays.
    std::fs::remove_file(dev.join("keys/conformance.pk8")).unwrap();
    let p = |rel: &str| dev.join(rel).display().to_string();
    let toml = format!(
        "[update]\nboot_control = \"uboot-env\"\nboard = \"qemu-aarch64-virt\"\nrelease_file = \"{}\"\n\
         trusted_keys_dir = \"{}\"\nbootctl_dir = \"{}\"\ncmdline_path = \"{}\"\nreboot_after_install = false\n\
         [update.slots.a]\nboot = \"{}\"\nroot = \"{}\"\n[update.slots.b]\nboot = \"{}\"\nroot = \"{}\"\n",
        p("release"),
        p("keys"),
        p("ctl"),
        p("cmdline"),
        p("slots/a-boot"),
        p("slots/a-root"),
        p("slots/b-boot"),
        p("slots/b-root"),
    );
    let file = dev.join("lucidd.toml");
    std::fs::write(&file, toml).unwrap();
    file
}

struct Lucidd(Child);

impl Drop for Lucidd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path) -> (Lucidd, String) {
    let config = device_config(&dir.join("dev"));
    let p = free_ports(5);
    let log = std::fs::File::create(dir.join("lucidd.log")).unwrap();
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
        ])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
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
        .env_remove("LUCID_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let daemon = Lucidd(child);
    let base = format!("http://127.0.0.1:{}", p[4]);
    let http = reqwest::blocking::Client::new();
    let t = Instant::now();
    while !http.get(format!("{base}/health")).send().is_ok_and(|r| r.status().is_success()) {
        assert!(t.elapsed() < Duration::from_secs(30), "lucidd did not become healthy: {}", log_tail(dir));
        std::thread::sleep(Duration::from_millis(100));
    }
    let update = http.get(format!("{base}/api/v1/update")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(update.status(), 200, "the fake device is not an update target: {}", update.text().unwrap_or_default());
    (daemon, base)
}

/// The session the document's examples name, recording, with a few chunks committed.
fn seed_example_session(base: &str) {
    let c = Client { http: reqwest::blocking::Client::new(), token: Some(TOKEN.into()) };
    let body = json!({"name": "conformance", "session_id": EXAMPLE_SESSION,
                      "metadata": {"project": "it", "tags": ["conformance"]}});
    let r = c.post_json(&format!("{base}/api/v1/sessions"), &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c.post(&format!("{base}/api/v1/sessions/{EXAMPLE_SESSION}/start"));
    assert_eq!(r.status, 200, "{}", r.text());
    let t = Instant::now();
    loop {
        let s = c.get(&format!("{base}/api/v1/sessions/{EXAMPLE_SESSION}")).json();
        if s["statistics"]["chunks_count"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no chunks after 60 s: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("lucidd.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn the_gateway_conforms_to_its_openapi_document() {
    let st = st_path();
    assert!(
        st.is_file(),
        "schemathesis is missing at {} (LUCID_PY_VENV or ~/.cache/lucid/venv): run scripts/setup",
        st.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, base) = spawn(dir.path());
    seed_example_session(&base);
    let seed = std::env::var("LUCID_ST_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let work = dir.path().join("st");
    std::fs::create_dir_all(&work).unwrap();
    let mut child = Command::new(&st)
        .arg("run")
        .arg(format!("{base}/api/v1/openapi.json"))
        .args(["--url", &base])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
        ])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed])
        .args(["--generation-database", "none", "--no-color"])
        // Its own working directory: schemathesis leaves caches where it runs.
        .current_dir(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", st.display()));
    // Read both pipes while it runs, so a long report cannot block it.
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > ST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    let Some(status) = status else {
        panic!("schemathesis ran longer than {ST_TIMEOUT:?}:\n{report}");
    };
    // Shown with --nocapture (and by a failing run): what was tried, phase by phase.
    eprintln!("{report}\nschemathesis (seed {seed}) took {:.0?}", t.elapsed());
    assert!(
        status.success(),
        "schemathesis found failures (seed {seed}; replay with LUCID_ST_SEED={seed}):\n{report}\n--- lucidd log (tail) ---\n{}",
        log_tail(dir.path())
    );
    // A run that tested nothing must not pass: every operation of the document was tried.
    assert!(report.contains("passed") && !report.contains(" 0 generated"), "{report}");
}
