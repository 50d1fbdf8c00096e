//! The device log (issue 10, "A device-wide log") over a real engine and the real
//! routers: two sessions created, one recorded and stopped twice (generation 2), the other
//! deleted through the API; the device evidence fetched without a credential and checked
//! by the real `lucidd verify-device`, which lists both sessions with the deletion and
//! fails on an event removed, events swapped and a forked checkpoint. The routes' proofs
//! verify against the signed checkpoint.

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use lucid_core::merkle;
use lucid_core::note::{Checkpoint, Signer};

use crate::gateway::{create, retar, wait_chunks};
use crate::harness::Daemon;

/// Runs `lucidd verify-device` on `bytes` with `args`; (exit code, stdout, stderr).
pub fn verify_device(bytes: &[u8], args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.tar");
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lucidd")).arg("verify-device").arg(&path).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn b64_32(v: &serde_json::Value) -> [u8; 32] {
    B64.decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

#[test]
fn device_log_lists_every_session_and_catches_tampering() {
    let d = Daemon::start();
    let c = d.client();
    let anon = d.anon();
    let rec = create(&d, &c, "kept");
    let gone = create(&d, &c, "Secret name that must not leak");
    for round in 1..=2u64 {
        assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{rec}/start"))).status, 200);
        wait_chunks(&d, &c, &rec, 2 * round);
        assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{rec}/stop"))).status, 200);
    }
    let man = anon.get(&d.url("gateway", &format!("/api/v1/sessions/{rec}/manifest"))).json();
    assert_eq!(man["generation"], 2, "{man}");
    let head_index = man["device_log_index"].as_u64().unwrap();
    assert_eq!(c.delete(&d.url("gateway", &format!("/api/v1/sessions/{gone}"))).status, 200);

    // The routes, without a credential.
    let note = anon.get(&d.url("gateway", "/api/v1/device/log/checkpoint"));
    assert_eq!(note.status, 200, "{}", note.text());
    let cp = d.engine.verifier().verify_checkpoint(&note.text()).unwrap();
    assert_eq!(cp.origin, format!("lucid/{}", d.engine.device_id));
    assert_eq!(cp.size, 5, "created, created, head 1, head 2, deleted");
    let entries = anon.get(&d.url("gateway", "/api/v1/device/log/entries?start=0&end=100")).json();
    let list = entries["entries"].as_array().unwrap();
    assert_eq!(list.len(), 5);
    assert!(!entries.to_string().contains("Secret name"), "no session names in the device log");
    assert_eq!(list[head_index as usize]["decoded"]["type"], "session_head");
    assert_eq!(list[4]["decoded"]["by"], "api");
    let proof = anon.get(&d.url("gateway", &format!("/api/v1/device/log/proof?index={head_index}"))).json();
    let path: Vec<[u8; 32]> = proof["inclusion_path"].as_array().unwrap().iter().map(b64_32).collect();
    let event = B64.decode(list[head_index as usize]["event"].as_str().unwrap()).unwrap();
    merkle::verify_inclusion(&merkle::leaf_hash(&event), head_index, 5, &path, &cp.root).unwrap();
    let cons = anon.get(&d.url("gateway", "/api/v1/device/log/consistency?from=2&to=5")).json();
    let cpath: Vec<[u8; 32]> = cons["consistency_path"].as_array().unwrap().iter().map(b64_32).collect();
    merkle::verify_consistency(2, 5, &b64_32(&cons["from_root"]), &cp.root, &cpath).unwrap();
    assert_eq!(anon.get(&d.url("gateway", "/api/v1/device/log/proof?index=5")).status, 400);
    assert_eq!(anon.get(&d.url("gateway", "/api/v1/device/log/consistency?from=3&to=9")).status, 400);

    // The evidence, verified by the real binary, pinned to the device.
    let ev = anon.get(&d.url("gateway", "/api/v1/device/evidence"));
    assert_eq!(ev.status, 200, "{}", ev.text());
    let (code, out, err) = verify_device(&ev.body, &["--device-id", &d.engine.device_id]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("PINNED"), "{out}");
    let line = |sid: &str| out.lines().find(|l| l.starts_with("session ") && l.contains(sid)).unwrap().to_owned();
    assert!(line(&rec).contains("generation 2") && line(&rec).ends_with("present"), "{out}");
    assert!(line(&gone).contains("DELETED") && line(&gone).contains("by api: deleted through the API"), "{out}");
    let (code, _, err) = verify_device(&ev.body, &["--device-id", "lucid-0000000000000000"]);
    assert_eq!(code, 1, "{err}");

    // An event removed: a gap.
    let removed = retar(&ev.body, |e| e.retain(|(p, _)| !p.ends_with("events/00000000000000000001.ev")));
    let (code, _, err) = verify_device(&removed, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("event 1 is missing"), "{err}");
    // Two events swapped (contents; the file names stay in order).
    let swapped = retar(&ev.body, |e| {
        let i = e.iter().position(|(p, _)| p.ends_with("events/00000000000000000000.ev")).unwrap();
        let (a, b) = (e[i].1.clone(), e[i + 1].1.clone());
        (e[i].1, e[i + 1].1) = (b, a);
    });
    let (code, _, err) = verify_device(&swapped, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("do not hash to the root"), "{err}");
    // A fork: a second checkpoint of size 2, signed by the device's own key (as a device
    // whose store was rolled back would), over another history.
    let pkcs8 = std::fs::read(d.dir.path().join("keys/device.pk8")).unwrap();
    let signer = Signer::from_pkcs8(&d.engine.device_id, &pkcs8).unwrap();
    let forked = Checkpoint { origin: cp.origin.clone(), size: 2, root: [7; 32] };
    let fork_note = lucid_core::sign_checkpoint(&forked, &signer).unwrap();
    let forked_tar = retar(&ev.body, |e| {
        let first = e.iter().position(|(p, _)| p.contains("/checkpoints/")).unwrap();
        e.insert(first + 2, (String::new(), fork_note.into_bytes()));
        for (n, (p, _)) in e[first..].iter_mut().enumerate() {
            *p = format!("lucid-device-evidence/checkpoints/{n:020}.note");
        }
    });
    let (code, _, err) = verify_device(&forked_tar, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("fork: two checkpoints of size 2"), "{err}");
}

/// Runs `lucidd verify EVIDENCE --device-evidence DEVICE`; (exit code, stdout, stderr).
fn verify_standing(evidence: &[u8], device: &[u8]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (e, dv) = (dir.path().join("evidence.tar"), dir.path().join("device.tar"));
    std::fs::write(&e, evidence).unwrap();
    std::fs::write(&dv, device).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lucidd"))
        .arg("verify")
        .arg(&e)
        .arg("--device-evidence")
        .arg(&dv)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Two attacks one session bundle cannot stop (issue 10), stopped with the device's
/// evidence: an older manifest passed off as final after the session was recorded again,
/// and a session deleted without a trace. Each earlier bundle still verifies on its own —
/// it is genuine — which is exactly why a later device log must be checked too.
#[test]
fn an_older_manifest_or_a_deleted_session_fails_against_the_device_log() {
    let d = Daemon::start();
    let c = d.client();
    let anon = d.anon();
    let sid = create(&d, &c, "recorded twice");
    let evidence = || anon.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/evidence"))).body;
    let device = || anon.get(&d.url("gateway", "/api/v1/device/evidence")).body;
    let mut bundles = Vec::new();
    for round in 1..=2u64 {
        assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/start"))).status, 200);
        wait_chunks(&d, &c, &sid, 2 * round);
        assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/stop"))).status, 200);
        bundles.push((evidence(), device()));
    }
    let (first, first_device) = &bundles[0];
    let (second, second_device) = &bundles[1];
    // The first manifest, checked with the device log of its own time: the latest then.
    let (code, out, err) = verify_standing(first, first_device);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("latest       generation 1"), "{out}");
    // Alone it still verifies (it is genuine) ...
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("first.tar"), first).unwrap();
    let (ok, out) = crate::gateway::lucidd_verify(&tmp.path().join("first.tar"));
    assert!(ok, "{out}");
    // ... and proves on its own that the device logged it as the session's head then
    // (device-head.json: the head event's inclusion in a device checkpoint).
    assert!(out.contains("logged       generation 1 is the session head at device-log event"), "{out}");
    std::fs::write(tmp.path().join("second.tar"), second).unwrap();
    let (ok, out) = crate::gateway::lucidd_verify(&tmp.path().join("second.tar"));
    assert!(ok && out.contains("logged       generation 2 is the session head"), "{out}");
    // ... but against a later device log it is not the final word.
    let (code, _, err) = verify_standing(first, second_device);
    assert_eq!(code, 1);
    assert!(err.contains("generation 1") && err.contains("latest head is generation 2"), "{err}");
    let (code, out, err) = verify_standing(second, second_device);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("latest       generation 2"), "{out}");

    // Deleted: the last manifest was final, and the session is gone.
    assert_eq!(c.delete(&d.url("gateway", &format!("/api/v1/sessions/{sid}"))).status, 200);
    let (code, _, err) = verify_standing(second, &device());
    assert_eq!(code, 1);
    assert!(err.contains("DELETED") && err.contains("by api"), "{err}");

    // A device log signed by another key proves nothing about this device's session.
    let other = Daemon::start();
    let (code, _, err) =
        verify_standing(second, &other.anon().get(&other.url("gateway", "/api/v1/device/evidence")).body);
    assert_eq!(code, 1);
    assert!(err.contains("signer is not the pinned device"), "{err}");
}
