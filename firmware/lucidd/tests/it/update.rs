//! OTA updates end to end over loopback HTTP: slots are fixed-size temp files filled
//! with a canary pattern, boot control is a temp `lucid.env`, the running slot comes from
//! a fake kernel command line. Checks that good bundles land byte for byte and arm the
//! trial boot, that every bad bundle is refused (before any write where the format
//! allows it) and arms nothing, the trial-boot self-check and commit (also through
//! `lucidd::run`), and the `lucidd bundle` CLI.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lucid_core::{BundleManifest, BundleWriter, PayloadHasher, Signer};
use lucidd::config::{BootControlKind, Config, SlotDevices, Slots};
use lucidd::update::host;
use serde_json::{Value, json};

use crate::harness::{Daemon, TOKEN, test_config};

const BOARD: &str = "qemu-aarch64-virt";
const BOOT_SIZE: usize = 64 << 10;
const ROOT_SIZE: usize = 256 << 10;
const KEY: &str = "lucid-ota-test";
const ENV_A: &str = "lucid_active=a\nlucid_try=\n";

/// A device on disk: slot files, boot control, cmdline, release, trusted keys.
struct Rig {
    dev: PathBuf,
    signer: Signer,
}

fn canary(len: usize, seed: u8) -> Vec<u8> {
    b"CANARY-".iter().cycle().take(len).map(|b| b ^ seed).collect()
}

impl Rig {
    /// Lays out a device under `root/dev` running `slot` with `env` in lucid.env.
    fn new(root: &Path, slot: &str, env: &str) -> Rig {
        let dev = root.join("dev");
        for d in ["slots", "ctl", "keys", "other-keys"] {
            std::fs::create_dir_all(dev.join(d)).unwrap();
        }
        for (name, size, seed) in
            [("a-boot", BOOT_SIZE, 1), ("a-root", ROOT_SIZE, 2), ("b-boot", BOOT_SIZE, 3), ("b-root", ROOT_SIZE, 4)]
        {
            std::fs::write(dev.join("slots").join(name), canary(size, seed)).unwrap();
        }
        std::fs::write(dev.join("ctl/lucid.env"), env).unwrap();
        std::fs::write(dev.join("cmdline"), format!("console=ttyAMA0 root=/dev/vda5 lucid.slot={slot} rootwait\n"))
            .unwrap();
        std::fs::write(dev.join("release"), format!("board={BOARD}\nversion=0.1.0\nbuild=5\n")).unwrap();
        let (pk8, _) = host::keygen(KEY, &dev.join("keys")).unwrap();
        let signer = host::load_signer(&pk8, None).unwrap();
        Rig { dev, signer }
    }

    fn config(&self, data_dir: &Path) -> Config {
        let mut c = test_config(data_dir);
        let s = |n: &str| self.dev.join("slots").join(n);
        c.update.boot_control = BootControlKind::UbootEnv;
        c.update.board = BOARD.into();
        c.update.release_file = self.dev.join("release");
        c.update.trusted_keys_dir = self.dev.join("keys");
        c.update.bootctl_dir = self.dev.join("ctl");
        c.update.cmdline_path = self.dev.join("cmdline");
        c.update.slots = Some(Slots {
            a: SlotDevices { boot: s("a-boot"), root: s("a-root") },
            b: SlotDevices { boot: s("b-boot"), root: s("b-root") },
        });
        c.update.reboot_after_install = false;
        c.update.self_check_timeout_secs = 20;
        c
    }

    fn slot(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dev.join("slots").join(name)).unwrap()
    }

    fn env(&self) -> String {
        std::fs::read_to_string(self.dev.join("ctl/lucid.env")).unwrap()
    }

    /// Slot B still holds exactly its canary: nothing was written.
    fn assert_b_untouched(&self) {
        assert!(self.slot("b-boot") == canary(BOOT_SIZE, 3), "slot B boot was written");
        assert!(self.slot("b-root") == canary(ROOT_SIZE, 4), "slot B root was written");
    }

    fn assert_a_untouched(&self) {
        assert!(self.slot("a-boot") == canary(BOOT_SIZE, 1), "slot A boot was written");
        assert!(self.slot("a-root") == canary(ROOT_SIZE, 2), "slot A root was written");
    }
}

fn payloads() -> (Vec<u8>, Vec<u8>) {
    let boot: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let root: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    (boot, root)
}

fn make_bundle(signer: &Signer, board: &str, build: u64, boot: &[u8], root: &[u8]) -> Vec<u8> {
    let info = |name: &str, data: &[u8]| {
        let mut h = PayloadHasher::default();
        h.update(data);
        h.finish(name)
    };
    let m = BundleManifest {
        format: "lucid-ota-1".into(),
        board: board.into(),
        version: format!("0.{build}.0"),
        build,
        created_at: "2025-06-01T00:00:00Z".into(),
        payloads: vec![info("boot", boot), info("rootfs", root)],
    };
    let mut w = BundleWriter::new(Vec::new(), m, signer).unwrap();
    w.write_payload(boot).unwrap();
    w.write_payload(root).unwrap();
    w.finish().unwrap()
}

fn good_bundle(rig: &Rig) -> Vec<u8> {
    let (boot, root) = payloads();
    make_bundle(&rig.signer, BOARD, 6, &boot, &root)
}

fn start(slot: &str, env: &str) -> (Daemon, Rig) {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path(), slot, env);
    let cfg = rig.config(dir.path());
    (Daemon::start_with(dir, cfg), rig)
}

fn post_bundle(d: &Daemon, bundle: Vec<u8>) -> crate::harness::Resp {
    d.client().post_raw(&d.url("gateway", "/api/v1/update"), bundle, "application/octet-stream")
}

fn detail(r: &crate::harness::Resp) -> String {
    r.json()["detail"].as_str().unwrap_or_default().to_owned()
}

fn status(d: &Daemon) -> Value {
    let r = d.client().get(&d.url("gateway", "/api/v1/update"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn good_bundle_is_written_to_slot_b_and_armed() {
    let (d, rig) = start("a", ENV_A);
    let before = status(&d);
    assert_eq!(before["state"], "idle");
    assert_eq!(before["current"]["slot"], "a");
    assert_eq!(before["current"]["build"], 5);
    assert_eq!(before["trial_boot"], false);
    let r = post_bundle(&d, good_bundle(&rig));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["installed"]["slot"], "b");
    assert_eq!(r.json()["installed"]["build"], 6);
    assert_eq!(r.json()["rebooting"], false);
    let (boot, root) = payloads();
    let (b_boot, b_root) = (rig.slot("b-boot"), rig.slot("b-root"));
    // The payloads, byte for byte, at the start of each partition; the rest untouched
    // (the file keeps its size: no truncation).
    assert_eq!(b_boot.len(), BOOT_SIZE);
    assert!(b_boot[..boot.len()] == boot[..]);
    assert!(b_boot[boot.len()..] == canary(BOOT_SIZE, 3)[boot.len()..]);
    assert_eq!(b_root.len(), ROOT_SIZE);
    assert!(b_root[..root.len()] == root[..]);
    rig.assert_a_untouched();
    assert_eq!(rig.env(), "lucid_active=a\nlucid_try=b\n");
    let after = status(&d);
    assert_eq!(after["state"], "installed");
    assert_eq!(after["installed"]["version"], "0.6.0");
    assert_eq!(after["installed"]["signed_by"], KEY);
    assert_eq!(after["progress"]["bytes_received"], after["progress"]["bytes_total"]);
    assert_eq!(after["progress"]["payload"], "rootfs");
}

#[test]
fn tampered_payload_is_rejected_and_nothing_is_armed() {
    let (d, rig) = start("a", ENV_A);
    let mut b = good_bundle(&rig);
    let last = b.len() - 1;
    b[last] ^= 0x01;
    let r = post_bundle(&d, b);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(detail(&r).contains("digest mismatch"), "{}", detail(&r));
    assert_eq!(rig.env(), ENV_A);
    let s = status(&d);
    assert_eq!(s["state"], "failed");
    assert!(s["reason"].as_str().unwrap().contains("rootfs"));
    rig.assert_a_untouched();
}

#[test]
fn untrusted_key_and_bad_signature_are_refused_before_any_write() {
    let (d, rig) = start("a", ENV_A);
    let (pk8, _) = host::keygen(KEY, &rig.dev.join("other-keys")).unwrap();
    let stranger = host::load_signer(&pk8, None).unwrap();
    let (boot, root) = payloads();
    let r = post_bundle(&d, make_bundle(&stranger, BOARD, 6, &boot, &root));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(detail(&r).contains("untrusted key"), "{}", detail(&r));
    // A signature byte flipped: the head is 16 + manifest + 1 + name + 4 + 64 bytes.
    let mut b = good_bundle(&rig);
    let mlen = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
    b[16 + mlen + 1 + KEY.len() + 4 + 10] ^= 0x80;
    let r = post_bundle(&d, b);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(detail(&r).contains("does not verify"), "{}", detail(&r));
    // Not a bundle at all.
    let r = post_bundle(&d, b"PK\x03\x04 a zip file".to_vec());
    assert_eq!(r.status, 400);
    assert!(detail(&r).contains("bad magic"), "{}", detail(&r));
    rig.assert_b_untouched();
    rig.assert_a_untouched();
    assert_eq!(rig.env(), ENV_A);
}

#[test]
fn wrong_board_and_downgrades_are_refused_before_any_write() {
    let (d, rig) = start("a", ENV_A);
    let (boot, root) = payloads();
    let r = post_bundle(&d, make_bundle(&rig.signer, "raspberrypi4", 6, &boot, &root));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(detail(&r).contains("raspberrypi4"), "{}", detail(&r));
    for build in [5, 4] {
        let r = post_bundle(&d, make_bundle(&rig.signer, BOARD, build, &boot, &root));
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(detail(&r).contains("not newer than the running build 5"), "{}", detail(&r));
    }
    rig.assert_b_untouched();
    assert_eq!(rig.env(), ENV_A);
}

#[test]
fn truncated_bundle_is_refused_and_not_armed() {
    let (d, rig) = start("a", "lucid_active=a\nlucid_try=b\n");
    let b = good_bundle(&rig);
    // Cut inside the rootfs payload; an earlier trial that was still armed is cleared
    // before the first write, so the half-written slot can never boot.
    let r = post_bundle(&d, b[..b.len() - 1000].to_vec());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(detail(&r).contains("truncated"), "{}", detail(&r));
    assert_eq!(rig.env(), ENV_A);
    // Cut inside the head: refused, nothing written, nothing touched.
    let (d2, rig2) = start("a", ENV_A);
    let r = post_bundle(&d2, b[..100].to_vec());
    assert_eq!(r.status, 400);
    assert!(detail(&r).contains("truncated"), "{}", detail(&r));
    rig2.assert_b_untouched();
    assert_eq!(rig2.env(), ENV_A);
    // Trailing bytes after the last payload.
    let mut long = good_bundle(&rig2);
    long.extend_from_slice(b"extra");
    let r = post_bundle(&d2, long);
    assert_eq!(r.status, 400);
    assert!(detail(&r).contains("trailing"), "{}", detail(&r));
    assert_eq!(rig2.env(), ENV_A);
    drop(d);
}

#[test]
fn oversized_payload_and_body_are_413_before_any_write() {
    let (d, rig) = start("a", ENV_A);
    let (_, root) = payloads();
    let big_boot = vec![7u8; BOOT_SIZE + 1];
    let r = post_bundle(&d, make_bundle(&rig.signer, BOARD, 6, &big_boot, &root));
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(detail(&r).contains("larger than its"), "{}", detail(&r));
    // A body longer than both slots and the largest head, refused from Content-Length.
    let r = post_bundle(&d, vec![0u8; BOOT_SIZE + ROOT_SIZE + (70 << 10)]);
    assert_eq!(r.status, 413, "{}", r.text());
    rig.assert_b_untouched();
    assert_eq!(rig.env(), ENV_A);
}

#[test]
fn upload_needs_the_token_and_a_configured_device() {
    let (d, rig) = start("a", ENV_A);
    let r = d.anon().post_raw(&d.url("gateway", "/api/v1/update"), good_bundle(&rig), "application/octet-stream");
    assert_eq!(r.status, 401);
    rig.assert_b_untouched();
    // A dev host (boot_control = "none", the default) answers 503 to both routes.
    let plain = Daemon::start();
    let r = post_bundle(&plain, good_bundle(&rig));
    assert_eq!(r.status, 503);
    assert_eq!(detail(&r), "updates are not configured on this device");
    assert_eq!(plain.client().get(&plain.url("gateway", "/api/v1/update")).status, 503);
}

/// A request body that sends the head, then waits for a signal before the rest.
struct Gated {
    data: Vec<u8>,
    pos: usize,
    gate_at: usize,
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.gate_at
            && let Some(g) = self.gate.take()
        {
            let _ = g.recv();
        }
        let end = if self.pos < self.gate_at { self.gate_at } else { self.data.len() };
        let n = buf.len().min(end - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn a_second_upload_during_an_install_is_409() {
    let (d, rig) = start("a", ENV_A);
    let bundle = good_bundle(&rig);
    let (tx, rx) = std::sync::mpsc::channel();
    let url = d.url("gateway", "/api/v1/update");
    let first = {
        let body = Gated { gate_at: 20_000, data: bundle.clone(), pos: 0, gate: Some(rx) };
        std::thread::spawn(move || {
            let r = reqwest::blocking::Client::new()
                .post(url)
                .bearer_auth(TOKEN)
                .body(reqwest::blocking::Body::new(body))
                .timeout(Duration::from_secs(60))
                .send()
                .unwrap();
            (r.status().as_u16(), r.text().unwrap())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&d)["progress"]["bytes_received"].as_u64().unwrap_or(0) < 20_000 {
        assert!(Instant::now() < deadline, "first upload never started: {}", status(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&d)["state"], "receiving");
    let r = post_bundle(&d, bundle);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(detail(&r).contains("already being installed"));
    tx.send(()).unwrap();
    let (code, text) = first.join().unwrap();
    assert_eq!(code, 200, "{text}");
    assert_eq!(rig.env(), "lucid_active=a\nlucid_try=b\n");
}

fn services(d: &Daemon) -> Vec<(String, std::net::SocketAddr)> {
    ["pipeline", "recorder", "processor", "storage", "gateway"].iter().map(|n| (n.to_string(), d.addrs[n])).collect()
}

fn self_check(d: &Daemon, services: Vec<(String, std::net::SocketAddr)>) -> Option<lucidd::update::SelfCheckReport> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(lucidd::update::selfcheck::at_startup(&d.engine, services)).unwrap()
}

#[test]
fn trial_boot_self_check_commits_when_healthy() {
    // U-Boot booted lucid_try=b once and cleared it: b runs, a is still committed.
    let (d, rig) = start("b", ENV_A);
    assert_eq!(status(&d)["trial_boot"], true);
    // No install while on trial: slot A is the only known-good system.
    let r = post_bundle(&d, good_bundle(&rig));
    assert_eq!(r.status, 409, "{}", r.text());
    rig.assert_a_untouched();
    let report = self_check(&d, services(&d)).expect("a trial boot is checked");
    assert!(report.ok && report.committed, "{report:?}");
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "store",
            "health:pipeline",
            "health:recorder",
            "health:processor",
            "health:storage",
            "health:gateway",
            "media",
            "commit"
        ]
    );
    assert_eq!(rig.env(), "lucid_active=b\nlucid_try=\n");
    let s = status(&d);
    assert_eq!(s["trial_boot"], false);
    assert_eq!(s["last_self_check"]["ok"], true);
    assert_eq!(s["last_self_check"]["slot"], "b");
    // The device log says which firmware was committed, once: a committed slot is not
    // checked again, and a later start on it appends nothing more.
    assert_eq!(firmware_events(&d), [json!({"type": "firmware_committed", "version": "0.1.0", "build": "5"})]);
    assert!(self_check(&d, services(&d)).is_none());
    assert_eq!(firmware_events(&d).len(), 1);
}

/// The device log's `FirmwareCommitted` events, decoded, without their times.
fn firmware_events(d: &Daemon) -> Vec<Value> {
    let entries = d.client().get(&d.url("gateway", "/api/v1/device/log/entries?start=0")).json();
    let mut out = Vec::new();
    for e in entries["entries"].as_array().unwrap() {
        let mut ev = e["decoded"].clone();
        if ev["type"] == "firmware_committed" {
            ev.as_object_mut().unwrap().remove("at_us");
            out.push(ev);
        }
    }
    out
}

#[test]
fn trial_boot_self_check_runs_the_recording_pipeline_and_skips_a_missing_camera() {
    // Synthetic camera: the media step encodes through the recording path.
    let (d, _rig) = start("b", ENV_A);
    let report = self_check(&d, services(&d)).unwrap();
    let media = report.steps.iter().find(|s| s.name == "media").unwrap();
    assert!(media.ok && media.detail.contains("openh264") && media.detail.contains("h264 keyframe"), "{media:?}");
    drop(d);
    // V4L2 without a camera (this machine has none): the step passes as skipped, because
    // the committed slot would see no camera either; nothing is rolled back for it.
    if std::path::Path::new("/dev/video0").exists() {
        eprintln!("skipped the no-camera half: this machine has a camera");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path(), "b", ENV_A);
    let mut cfg = rig.config(dir.path());
    cfg.source = lucidd::config::SourceKind::V4l2;
    let d = Daemon::start_with(dir, cfg);
    let report = self_check(&d, services(&d)).unwrap();
    let media = report.steps.iter().find(|s| s.name == "media").unwrap();
    assert!(media.ok && media.detail.starts_with("skipped: no camera attached"), "{media:?}");
    assert!(report.ok && report.committed, "{report:?}");
    assert_eq!(rig.env(), "lucid_active=b\nlucid_try=\n");
}

#[test]
fn trial_boot_self_check_failure_does_not_commit() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path(), "b", ENV_A);
    let mut cfg = rig.config(dir.path());
    cfg.update.self_check_timeout_secs = 1;
    let d = Daemon::start_with(dir, cfg);
    // One service that never answers (a port nobody listens on).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut svcs = services(&d);
    svcs[2].1 = dead;
    let report = self_check(&d, svcs).unwrap();
    assert!(!report.ok && !report.committed, "{report:?}");
    let failed: Vec<&str> = report.steps.iter().filter(|s| !s.ok).map(|s| s.name.as_str()).collect();
    assert_eq!(failed, ["health:processor"]);
    assert_eq!(rig.env(), ENV_A);
    assert_eq!(status(&d)["last_self_check"]["committed"], false);
    assert_eq!(status(&d)["trial_boot"], true);
}

fn free_ports() -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..5).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn run_config(dir: &Path, rig: &Rig) -> Config {
    let mut cfg = rig.config(dir);
    let p = free_ports();
    (cfg.ports.pipeline, cfg.ports.recorder, cfg.ports.processor, cfg.ports.storage, cfg.ports.gateway) =
        (p[0], p[1], p[2], p[3], p[4]);
    cfg
}

#[test]
fn run_commits_a_healthy_trial_boot_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path(), "b", ENV_A);
    let cfg = run_config(dir.path(), &rig);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = rt.spawn(lucidd::run(cfg, async move {
        let _ = rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while rig.env() != "lucid_active=b\nlucid_try=\n" {
        assert!(Instant::now() < deadline, "never committed: {}", rig.env());
        std::thread::sleep(Duration::from_millis(100));
    }
    tx.send(()).unwrap();
    rt.block_on(run).unwrap().expect("run returns cleanly after a committed trial boot");
}

#[test]
fn run_exits_with_an_error_when_the_trial_self_check_fails() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path(), "b", ENV_A);
    let mut cfg = run_config(dir.path(), &rig);
    // Storage reports unhealthy (503) when free space is below this: never satisfied.
    cfg.min_free_bytes = u64::MAX;
    cfg.update.self_check_timeout_secs = 1;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let result = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), lucidd::run(cfg, std::future::pending()))
            .await
            .expect("run stops by itself")
    });
    let err = result.expect_err("a failed self-check is an error").to_string();
    assert!(err.contains("self-check failed") && err.contains("health:storage"), "{err}");
    assert_eq!(rig.env(), ENV_A);
}

fn lucidd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lucidd")).args(args).env_remove("SOURCE_DATE_EPOCH").output().unwrap()
}

#[test]
fn cli_keygen_create_inspect_round_trip() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let keys = p("keys");
    let out = lucidd(&["bundle", "keygen", "--name", "lucid-ota-dev", "--out", &keys]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pk8 = dir.path().join("keys/lucid-ota-dev.pk8");
    assert_eq!(std::fs::metadata(&pk8).unwrap().permissions().mode() & 0o777, 0o600);
    let vkey = std::fs::read_to_string(dir.path().join("keys/lucid-ota-dev.vkey")).unwrap();
    assert!(vkey.starts_with("lucid-ota-dev+") && vkey.ends_with('\n'));
    // Keys are never overwritten.
    assert!(!lucidd(&["bundle", "keygen", "--name", "lucid-ota-dev", "--out", &keys]).status.success());
    let (boot, root) = payloads();
    std::fs::write(p("boot.vfat"), &boot).unwrap();
    std::fs::write(p("rootfs.squashfs"), &root).unwrap();
    let out = lucidd(&[
        "bundle",
        "create",
        "--board",
        BOARD,
        "--version",
        "0.2.0",
        "--build",
        "9",
        "--key",
        &p("keys/lucid-ota-dev.pk8"),
        "--boot",
        &p("boot.vfat"),
        "--rootfs",
        &p("rootfs.squashfs"),
        "-o",
        &p("out.lucidota"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("build 9"));
    let vk = p("keys/lucid-ota-dev.vkey");
    let out = lucidd(&["bundle", "inspect", &p("out.lucidota"), "--key", &vk]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("OK: signature and every payload digest verified"), "{stdout}");
    assert!(stdout.contains("\"board\": \"qemu-aarch64-virt\""), "{stdout}");
    let out = lucidd(&["bundle", "inspect", &p("out.lucidota")]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("signature not checked"));
    // Another key: refused.
    lucidd(&["bundle", "keygen", "--name", "lucid-ota-dev", "--out", &p("other")]);
    let out = lucidd(&["bundle", "inspect", &p("out.lucidota"), "--key", &p("other/lucid-ota-dev.vkey")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("untrusted key"));
    // A flipped payload byte: refused, naming the payload.
    let mut b = std::fs::read(p("out.lucidota")).unwrap();
    let n = b.len();
    b[n - 100] ^= 1;
    std::fs::write(p("bad.lucidota"), &b).unwrap();
    let out = lucidd(&["bundle", "inspect", &p("bad.lucidota"), "--key", &vk]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("payload \"rootfs\" digest mismatch"));
    // The CLI's bundle installs on a device that trusts the key.
    let (d, rig) = start("a", ENV_A);
    std::fs::copy(&vk, rig.dev.join("keys/dev.vkey")).unwrap();
    let r = post_bundle(&d, std::fs::read(p("out.lucidota")).unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(rig.slot("b-root")[..root.len()] == root[..]);
}

/// Sends the first `send` bytes of an install request on a raw socket, then hangs up
/// without reading the answer.
fn post_and_hang_up(d: &Daemon, bundle: &[u8], send: usize) {
    use std::io::Write;
    let addr = d.addrs["gateway"];
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /api/v1/update HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        bundle.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&bundle[..send]).unwrap();
    s.flush().unwrap();
    drop(s);
}

/// Polls until install number `attempt` has begun and is no longer receiving or
/// verifying. (The attempt number keeps a poll that lands before the daemon has read the
/// request from taking the previous install's end for this one's.)
fn settled(d: &Daemon, attempt: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(d);
        let state = s["state"].as_str().unwrap_or_default().to_owned();
        if s["attempt"].as_u64() >= Some(attempt) && !matches!(state.as_str(), "receiving" | "verifying") {
            return s;
        }
        assert!(Instant::now() < deadline, "install stuck busy after the client left: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client that goes away mid-upload or once the bundle is sent (while the slot is
/// verified) must not leave the updater busy: the install ends failed, or armed, and
/// the next install is accepted.
#[test]
fn an_install_whose_client_hangs_up_still_ends() {
    let (d, rig) = start("a", ENV_A);
    let bundle = good_bundle(&rig);
    assert_eq!(status(&d)["attempt"], 0);
    post_and_hang_up(&d, &bundle, bundle.len() / 2);
    let s = settled(&d, 1);
    assert_eq!(s["state"], "failed", "{s}");
    assert!(!rig.env().contains("lucid_try=b"), "a half-sent bundle was armed: {}", rig.env());

    post_and_hang_up(&d, &bundle, bundle.len());
    let s = settled(&d, 2);
    assert!(matches!(s["state"].as_str(), Some("installed" | "failed")), "{s}");
    if s["state"] != "failed" {
        assert_eq!(rig.env(), "lucid_active=a\nlucid_try=b\n");
    }
    let r = post_bundle(&d, bundle);
    assert_eq!(r.status, 200, "the updater stayed busy: {}", r.text());
    assert_eq!(rig.env(), "lucid_active=a\nlucid_try=b\n");
}
