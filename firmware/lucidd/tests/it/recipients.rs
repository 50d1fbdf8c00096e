//! Recipient keys (issue #10): a daemon configured with an age recipient made by the real
//! `age-keygen` records a session; the reference `age` opens the evidence's
//! `recipients.age` to the 32-byte data key, and `lucidd decrypt` turns the evidence into
//! the device's export, byte for byte, which ffprobe decodes. A wrong or malformed
//! identity and a tampered bundle fail with their own messages. With
//! `device_can_decrypt = false` the stopped session's wrapped key is gone from the store,
//! the device refuses its video with 409, and a recipient still decrypts it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::gateway::{create, ffprobe_frames, retar, wait_chunks};
use crate::harness::{Client, Daemon, lucidd, test_config};

const RECIPIENTS_ENTRY: &str = "lucid-evidence/recipients.age";

/// A fresh identity from the real `age-keygen` (scripts/setup installs it): (key file,
/// its recipient).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen must be installed (scripts/setup installs Debian's age)");
    assert!(out.status.success(), "age-keygen: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("age-keygen").arg("-y").arg(&key).output().unwrap();
    assert!(out.status.success());
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    (key, recipient)
}

/// A daemon whose sessions are encrypted to `recipient` as well.
fn daemon(recipient: &str, device_can_decrypt: bool) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.evidence.recipients = vec![recipient.to_owned()];
    cfg.evidence.device_can_decrypt = device_can_decrypt;
    Daemon::start_with(dir, cfg)
}

/// Records and stops a camera session of at least `chunks` chunks; (session id, evidence).
fn record(d: &Daemon, c: &Client, chunks: u64) -> (String, Vec<u8>) {
    let sid = create(d, c, "recipients");
    assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/start"))).status, 200);
    wait_chunks(d, c, &sid, chunks);
    assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/stop"))).status, 200);
    let ev = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/evidence")));
    assert_eq!(ev.status, 200, "{}", ev.text());
    (sid, ev.body)
}

fn entry(tar_bytes: &[u8], path: &str) -> Option<Vec<u8>> {
    let mut found = None;
    retar(tar_bytes, |e| found = e.iter().find(|(p, _)| p == path).map(|(_, b)| b.clone()));
    found
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `lucidd decrypt EVIDENCE -i KEY -o OUT`.
fn decrypt(evidence: &Path, key: &Path, out: &Path) -> (i32, String, String) {
    lucidd(&[&"decrypt", &evidence, &"--identity", &key, &"-o", &out])
}

/// The streams of a media file as ffprobe sees them: (codec type, codec name) each.
fn ffprobe_streams(path: &Path) -> Vec<(String, String)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe must be installed (scripts/setup installs ffmpeg)");
    assert!(out.status.success(), "ffprobe: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["codec_type"].as_str().unwrap().to_owned(), s["codec_name"].as_str().unwrap().to_owned()))
        .collect()
}

/// The decrypted file decodes as one H.264 video stream of the recorded size.
fn assert_decodes(path: &Path) {
    assert_eq!(ffprobe_streams(path), [("video".to_owned(), "h264".to_owned())]);
    let (codec, w, h, frames) = ffprobe_frames(path);
    assert_eq!((codec.as_str(), w, h), ("h264", 320, 240));
    assert!(frames > 0);
}

#[test]
fn issue_10_a_recipient_decrypts_evidence_to_the_devices_export() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(tmp.path(), "key.txt");
    let d = daemon(&recipient, true);
    let c = d.client();
    let (sid, ev) = record(&d, &c, 3);
    let export = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/export.mp4")));
    assert_eq!(export.status, 200);

    // The reference tool opens the recipients file to exactly the 32-byte data key.
    let age_file = entry(&ev, RECIPIENTS_ENTRY).expect("evidence has recipients.age");
    assert!(age_file.starts_with(b"age-encryption.org/v1\n"));
    let age_path = write(tmp.path(), "recipients.age", &age_file);
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(&age_path)
        .output()
        .expect("age must be installed (scripts/setup installs Debian's age)");
    assert!(out.status.success(), "age -d: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), 32);

    // `lucidd verify` accepts the bundle and mentions the recipients file.
    let ev_path = write(tmp.path(), "evidence.tar", &ev);
    let (code, stdout, stderr) = lucidd(&[&"verify", &ev_path]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("recipients.age"), "{stdout}");

    // `lucidd decrypt` verifies, then writes the device's export byte for byte.
    let mp4 = tmp.path().join("out.mp4");
    let (code, stdout, stderr) = decrypt(&ev_path, &key, &mp4);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("OK: evidence verified and decrypted"), "{stdout}");
    assert!(stdout.contains("chunks       "), "the verify report comes first: {stdout}");
    let plain = std::fs::read(&mp4).unwrap();
    assert_eq!(plain, export.body, "decrypt output differs from export.mp4");
    assert_decodes(&mp4);
    // And the offline media check agrees.
    let (code, stdout, stderr) = lucidd(&[&"verify", &ev_path, &"--media", &mp4]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // Another identity is told it is not a recipient, without any secret in the message.
    let (other, _) = keygen(tmp.path(), "other.txt");
    let wrong_out = tmp.path().join("wrong.mp4");
    let (code, _, stderr) = decrypt(&ev_path, &other, &wrong_out);
    assert_eq!(code, 1);
    assert!(stderr.contains("this evidence was not encrypted to identity"), "{stderr}");
    assert!(!stderr.contains("AGE-SECRET-KEY"), "{stderr}");
    assert!(!wrong_out.exists());

    // A file that is no identity file is refused by line number, not by content.
    let bad = write(tmp.path(), "bad.txt", b"# a comment\nnot-a-key-at-all\n");
    let (code, _, stderr) = decrypt(&ev_path, &bad, &wrong_out);
    assert_eq!(code, 1);
    assert!(stderr.contains("not an age identity file") && stderr.contains("line 2"), "{stderr}");
    assert!(!stderr.contains("not-a-key-at-all"), "{stderr}");

    // A tampered chunk fails verification, so nothing is decrypted.
    let tampered = retar(&ev, |e| {
        let (_, b) = e.iter_mut().find(|(p, _)| p.ends_with("00000000000000000001.sealed")).unwrap();
        let n = b.len();
        b[n - 20] ^= 1;
    });
    let t_path = write(tmp.path(), "tampered.tar", &tampered);
    let (code, _, stderr) = decrypt(&t_path, &key, &wrong_out);
    assert_eq!(code, 1);
    assert!(stderr.contains("verification FAILED"), "{stderr}");
    assert!(!wrong_out.exists());

    // A recipients file swapped for another key (age-encrypted to the same recipient)
    // verifies (it is not signed) but opens no chunk.
    let fake =
        Command::new("age").arg("-r").arg(&recipient).arg(write(tmp.path(), "fake-key", &[7u8; 32])).output().unwrap();
    assert!(fake.status.success());
    let swapped = retar(&ev, |e| {
        e.iter_mut().find(|(p, _)| p == RECIPIENTS_ENTRY).unwrap().1 = fake.stdout.clone();
    });
    let s_path = write(tmp.path(), "swapped.tar", &swapped);
    let (code, _, stderr) = decrypt(&s_path, &key, &wrong_out);
    assert_eq!(code, 1);
    assert!(stderr.contains("does not open with this data key"), "{stderr}");
    assert!(!wrong_out.exists());

    // Evidence without a recipients file says so.
    let stripped = retar(&ev, |e| e.retain(|(p, _)| p != RECIPIENTS_ENTRY));
    let n_path = write(tmp.path(), "none.tar", &stripped);
    let (code, _, stderr) = decrypt(&n_path, &key, &wrong_out);
    assert_eq!(code, 1);
    assert!(stderr.contains("has no recipients.age"), "{stderr}");
}

#[test]
fn issue_10_device_cannot_decrypt_a_stopped_session_but_a_recipient_can() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(tmp.path(), "key.txt");
    let d = daemon(&recipient, false);
    let c = d.client();
    let (sid, ev) = record(&d, &c, 2);

    // The stored row keeps the recipients' copy only.
    let row = d.engine.get(&sid).unwrap();
    assert!(row.wrapped_key.is_empty(), "the KEK-wrapped key is still stored");
    assert!(row.recipients_age.is_some());

    // Export, clips and playback answer a clear 409, not a 500.
    for path in ["export.mp4", "media/playlist.m3u8", "media/init.mp4", "media/0.m4s", "clip.mp4?start=0&end=1"] {
        let r = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/{path}")));
        assert_eq!(r.status, 409, "{path}: {}", r.text());
        let text = r.text();
        assert!(text.contains("cannot decrypt") && text.contains("lucidd decrypt"), "{path}: {text}");
    }
    // Recording into it again is refused the same way.
    let r = c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/start")));
    assert!(r.status == 409 || r.status == 400, "{}", r.text());
    assert!(d.engine.get(&sid).unwrap().wrapped_key.is_empty());

    // The evidence still downloads, and a recipient decrypts it.
    let ev_path = write(tmp.path(), "evidence.tar", &ev);
    let mp4 = tmp.path().join("out.mp4");
    let (code, stdout, stderr) = decrypt(&ev_path, &key, &mp4);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_decodes(&mp4);
}

#[test]
fn issue_10_a_bad_recipient_fails_config_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, good) = keygen(tmp.path(), "key.txt");
    let cfg = write(
        tmp.path(),
        "lucid.toml",
        format!("[evidence]\nrecipients = [\"{good}\", \"age1notarecipient\"]\n").as_bytes(),
    );
    let (code, _, stderr) = lucidd(&[&"config", &"--config", &cfg]);
    assert_eq!(code, 2);
    assert!(stderr.contains("evidence.recipients[1]") && stderr.contains("age1notarecipient"), "{stderr}");

    // The environment override is checked the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_lucidd"))
        .arg("config")
        .env("LUCID_EVIDENCE_RECIPIENTS", format!("{good},nonsense"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("evidence.recipients[1]"));
    let out = Command::new(env!("CARGO_BIN_EXE_lucidd"))
        .arg("config")
        .env("LUCID_EVIDENCE_RECIPIENTS", &good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&good));

    // Without recipients the device may not give up its own copy, and the engine refuses
    // to start on such a config too.
    let cfg = write(tmp.path(), "lonely.toml", b"[evidence]\ndevice_can_decrypt = false\n");
    let (code, _, stderr) = lucidd(&[&"config", &"--config", &cfg]);
    assert_eq!(code, 2);
    assert!(stderr.contains("evidence.device_can_decrypt"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.evidence.device_can_decrypt = false;
    let Err(e) = lucidd::engine::Engine::open(c) else { panic!("the engine started without recipients") };
    let e = e.to_string();
    assert!(e.contains("evidence.device_can_decrypt"), "{e}");
}

/// A data session (uploaded chunks, zstd-compressed where it pays) finalized on a device
/// that keeps no key: its chunks are refused with 409, and `lucidd decrypt` writes the
/// uploaded bytes, decompressed, in order.
#[test]
fn issue_10_a_finalized_data_session_decrypts_for_a_recipient_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(tmp.path(), "key.txt");
    let d = daemon(&recipient, false);
    let c = d.client();
    let parts = [crate::storage::text(40_000), crate::storage::noise(20_000, 3)];
    for (i, p) in parts.iter().enumerate() {
        crate::storage::upload(&d, "sess-rcpt", &format!("c-{i}"), p);
    }
    assert_eq!(c.get(&d.url("storage", "/sessions/sess-rcpt/chunks/c-0")).status, 200);
    let r = c.post(&d.url("processor", "/api/v1/sessions/sess-rcpt/finalize"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(d.engine.get("sess-rcpt").unwrap().wrapped_key.is_empty());
    let r = c.get(&d.url("storage", "/sessions/sess-rcpt/chunks/c-0"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("cannot decrypt"), "{}", r.text());

    let ev = c.get(&d.url("gateway", "/api/v1/sessions/sess-rcpt/evidence"));
    assert_eq!(ev.status, 200, "{}", ev.text());
    let ev_path = write(tmp.path(), "evidence.tar", &ev.body);
    let out = tmp.path().join("data.bin");
    let (code, stdout, stderr) = decrypt(&ev_path, &key, &out);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), parts.concat());
}
