//! `lucidd verify` as a recipient runs it (issue 10): evidence and an export fetched over
//! HTTP from a real recording, checked by the real binary. A bundle re-signed end to end
//! with a fresh key verifies unpinned (the first line then says so) and fails against the
//! device's key or id; `--media` passes on the export and names the fragment an altered,
//! dropped, duplicated or reordered export gets wrong.

use std::path::{Path, PathBuf};

use lucid_core::{Checkpoint, Manifest, Signer, Verifier};

use crate::gateway::{create, retar, wait_chunks};
use crate::harness::{Client, Daemon};

/// Runs `lucidd verify` with `args`; (exit code, stdout, stderr).
fn verify(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String, String) {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"verify"];
    all.extend_from_slice(args);
    crate::harness::lucidd(&all)
}

/// A stopped camera session of at least `chunks` chunks: (session id, evidence, export).
fn record(d: &Daemon, c: &Client, chunks: u64) -> (String, Vec<u8>, Vec<u8>) {
    let sid = create(d, c, "verify");
    assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/start"))).status, 200);
    wait_chunks(d, c, &sid, chunks);
    assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/stop"))).status, 200);
    let ev = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/evidence")));
    assert_eq!(ev.status, 200, "{}", ev.text());
    let mp4 = c.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/export.mp4")));
    assert_eq!(mp4.status, 200);
    (sid, ev.body, mp4.body)
}

/// What an attacker with the bundle (but not the device key) can make: the same chunks
/// and records under a fresh key, with every checkpoint and the manifest signed again.
fn re_signed(good: &[u8]) -> (Vec<u8>, Signer) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Signer::generate_pkcs8(&rng).unwrap();
    let probe = Signer::from_pkcs8("probe", &pkcs8).unwrap();
    let id = probe.verifier().device_id();
    let signer = Signer::from_pkcs8(&id, &pkcs8).unwrap();
    let bytes = retar(good, |e| {
        let old = String::from_utf8(e.iter().find(|(p, _)| p.ends_with("device.vkey")).unwrap().1.clone()).unwrap();
        let old = Verifier::from_vkey(old.trim_end()).unwrap();
        let mut manifest: Manifest =
            serde_json::from_slice(&e.iter().find(|(p, _)| p.ends_with("manifest.json")).unwrap().1).unwrap();
        let origin = lucid_core::note::session_origin(&id, &manifest.session_id);
        // The device head proves a place in the real device's log, which the forger
        // cannot sign: it is optional, so the forgery leaves it out (and prints no
        // `logged` line).
        e.retain(|(p, _)| !p.ends_with("/device-head.json"));
        let mut last_note = String::new();
        for (path, data) in e.iter_mut() {
            if path.contains("/checkpoints/") {
                let cp = old.verify_checkpoint(std::str::from_utf8(data).unwrap()).unwrap();
                let cp = Checkpoint { origin: origin.clone(), ..cp };
                last_note = lucid_core::sign_checkpoint(&cp, &signer).unwrap();
                *data = last_note.clone().into_bytes();
            }
        }
        manifest.device_id = id.clone();
        manifest.device_vkey = signer.vkey();
        manifest.final_checkpoint = last_note;
        let signed = lucid_core::sign_manifest(&manifest, &signer).unwrap();
        for (path, data) in e.iter_mut() {
            match path.rsplit('/').next().unwrap() {
                "device.vkey" => *data = format!("{}\n", signer.vkey()).into_bytes(),
                "manifest.json" => *data = signed.bytes.clone(),
                "manifest.json.sig" => *data = signed.signature_file().into_bytes(),
                _ => {}
            }
        }
    });
    (bytes, signer)
}

/// The top-level boxes of an MP4 as (type, start, end), read with no trust in the file
/// beyond what this test made.
fn boxes(mp4: &[u8]) -> Vec<([u8; 4], usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < mp4.len() {
        let size = u32::from_be_bytes(mp4[at..at + 4].try_into().unwrap()) as usize;
        assert!(size >= 8, "the exporter writes 32-bit box sizes");
        out.push((mp4[at + 4..at + 8].try_into().unwrap(), at, at + size));
        at += size;
    }
    out
}

/// The export's init segment and fragments (moof + mdat), as byte vectors.
fn split(mp4: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let b = boxes(mp4);
    let first = b.iter().position(|x| &x.0 == b"moof").unwrap();
    let frags = b[first..]
        .chunks(2)
        .map(|p| {
            assert_eq!((&p[0].0, &p[1].0), (b"moof", b"mdat"));
            mp4[p[0].1..p[1].2].to_vec()
        })
        .collect();
    (mp4[..b[first].1].to_vec(), frags)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn issue_10_pinned_verification_refuses_a_re_signed_bundle() {
    let d = Daemon::start();
    let c = d.client();
    let (_sid, evidence, _) = record(&d, &c, 3);
    let dir = d.dir.path();

    // The device shows its key; that is what an owner records at set-up.
    let dev = c.get(&d.url("gateway", "/api/v1/device")).json();
    let (id, vkey) = (dev["device_id"].as_str().unwrap(), dev["verifier_key"].as_str().unwrap());
    assert_eq!(Verifier::from_vkey(vkey).unwrap().device_id(), id);
    let vkey_file = write(dir, "device.vkey", format!("{vkey}\n").as_bytes());
    let good = write(dir, "evidence.tar", &evidence);

    // Unpinned: verifies, and the first line says the signer was not checked and what to
    // compare.
    let (code, out, err) = verify(&[&good]);
    assert_eq!(code, 0, "{out}{err}");
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("UNPINNED: ") && first.contains(id) && first.contains(vkey), "{first}");
    // Pinned by key or by id: verifies, and says so.
    for pin in [["--vkey", vkey_file.to_str().unwrap()], ["--device-id", id]] {
        let (code, out, err) = verify(&[&good, &pin[0], &pin[1]]);
        assert_eq!(code, 0, "{pin:?}: {out}{err}");
        assert!(out.starts_with("PINNED: ") && out.lines().next().unwrap().contains(id), "{out}");
        assert!(out.contains("OK: evidence verified"), "{out}");
    }

    // The attack: the same recording, re-signed by a fresh key. Unpinned it still
    // verifies (nothing in the bundle can tell), but the first line names a stranger.
    let (forged, attacker) = re_signed(&evidence);
    let their_id = attacker.verifier().device_id();
    let forged = write(dir, "forged.tar", &forged);
    let (code, out, err) = verify(&[&forged]);
    assert_eq!(code, 0, "the re-signed bundle is well formed: {out}{err}");
    assert!(out.lines().next().unwrap().contains(&their_id), "{out}");
    // Pinned: refused, naming the expected and the found device.
    for pin in [["--vkey", vkey_file.to_str().unwrap()], ["--device-id", id]] {
        let (code, out, err) = verify(&[&forged, &pin[0], &pin[1]]);
        assert_eq!(code, 1, "{pin:?} accepted a bundle signed by another key: {out}{err}");
        assert!(err.contains("not the pinned device") && err.contains(id) && err.contains(&their_id), "{err}");
        assert!(!out.contains("OK"), "{out}");
    }

    // A pin that does not parse is a usage error, not a verdict.
    let junk = write(dir, "junk.vkey", b"not a key\n");
    assert_eq!(verify(&[&good, &"--vkey", &junk]).0, 2);
    assert_eq!(verify(&[&good, &"--device-id", &"lucid-xyz"]).0, 2);
}

#[test]
fn issue_10_verify_media_checks_every_fragment_of_an_export() {
    let d = Daemon::start();
    let c = d.client();
    let (_sid, evidence, mp4) = record(&d, &c, 4);
    let dir = d.dir.path();
    let ev = write(dir, "evidence.tar", &evidence);
    let (init, frags) = split(&mp4);
    let chunks = lucid_core::verify_evidence(&evidence[..]).unwrap().chunk_count;
    assert_eq!(frags.len() as u64, chunks, "one fragment per chunk");
    assert!(chunks >= 4);

    let run = |name: &str, bytes: &[u8]| {
        let p = write(dir, name, bytes);
        verify(&[&ev, &"--media", &p])
    };
    let (code, out, err) = run("export.mp4", &mp4);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("and {chunks} fragments")) && out.contains("OK: evidence and media verified"),
        "{out}"
    );

    let rebuilt = |f: &[Vec<u8>]| [init.clone(), f.concat()].concat();
    let fails = |name: &str, bytes: Vec<u8>, expect: &str| {
        let (code, out, err) = run(name, &bytes);
        assert_eq!(code, 1, "{name} passed: {out}{err}");
        assert!(err.contains(expect), "{name}: expected {expect:?} in {err}");
        assert!(!out.contains("OK"), "{out}");
    };
    // A byte of picture data in fragment 2.
    let mut f = frags.clone();
    let n = f[2].len();
    f[2][n - 5] ^= 0x01;
    fails("flipped.mp4", rebuilt(&f), "fragment 2 at byte");
    // Dropped, duplicated, swapped.
    let mut f = frags.clone();
    f.remove(1);
    fails("dropped.mp4", rebuilt(&f), "chunk 1's fragment is missing");
    let mut f = frags.clone();
    f.insert(2, frags[1].clone());
    fails("duplicated.mp4", rebuilt(&f), "second copy of chunk 1");
    let mut f = frags.clone();
    f.swap(1, 2);
    fails("swapped.mp4", rebuilt(&f), "is chunk 2, expected chunk 1: out of order");
    // The last fragment cut off, or one too many at the end.
    fails("short.mp4", rebuilt(&frags[..frags.len() - 1]), &format!("chunk {}'s fragment is missing", chunks - 1));
    let mut f = frags.clone();
    f.push(frags[0].clone());
    fails("long.mp4", rebuilt(&f), "second copy of chunk 0");
    // Another init segment: one byte of the moov changed.
    let mut bad_init = init.clone();
    let at = bad_init.len() - 10;
    bad_init[at] ^= 0x01;
    fails("init.mp4", [bad_init, frags.concat()].concat(), "init segment");
}

#[test]
fn issue_10_a_clip_verifies_as_a_contiguous_part_of_the_signed_session() {
    let d = Daemon::start();
    let c = d.client();
    let (sid, evidence, mp4) = record(&d, &c, 6);
    let dir = d.dir.path();
    let records = lucid_core::verify_evidence(&evidence[..]).unwrap().records;
    let (init, frags) = split(&mp4);
    let url = |route: &str, q: &str| d.url("gateway", &format!("/api/v1/sessions/{sid}/{route}?{q}"));

    // A middle range in media time, both ends inside a chunk: rounded out to chunks 2..=3.
    let mid = |r: &lucid_core::ChunkRecord| (r.media_start_us + r.media_end_us) as f64 / 2e6;
    let media_q = format!("start={}&end={}", mid(&records[2]), mid(&records[3]));
    let clip = c.get(&url("clip.mp4", &media_q));
    assert_eq!(clip.status, 200, "{}", clip.text());
    assert_eq!(clip.headers["x-lucid-clip-first"], "2");
    assert_eq!(clip.headers["x-lucid-clip-last"], "3");
    assert!(clip.body == [init.clone(), frags[2].clone(), frags[3].clone()].concat(), "not export.mp4's bytes");
    // The same chunks named by wall-clock time.
    let wall_mid = |r: &lucid_core::ChunkRecord| {
        lucidd::verify::rfc3339_us(r.wall_clock_us + (r.media_end_us - r.media_start_us) as i64 / 2)
    };
    let wall_q = format!("start={}&end={}", wall_mid(&records[2]), wall_mid(&records[3]));
    let by_wall = c.get(&url("clip.mp4", &wall_q));
    assert_eq!(by_wall.status, 200, "{}", by_wall.text());
    assert!(by_wall.body == clip.body, "wall-time clip differs from the media-time clip");
    // A player decodes it: the frames of the two chunks.
    let clip_path = write(dir, "clip.mp4", &clip.body);
    let (codec, _, _, n) = crate::gateway::ffprobe_frames(&clip_path);
    assert_eq!(codec, "h264");
    assert_eq!(n, u64::from(records[2].frame_count + records[3].frame_count));

    // Clip evidence is public (digests only) and holds no sealed bytes.
    let ev = d.anon().get(&url("clip-evidence", &wall_q));
    assert_eq!(ev.status, 200, "{}", ev.text());
    let names: Vec<String> = {
        let mut ar = tar::Archive::new(&ev.body[..]);
        ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
    };
    assert_eq!(names[0], "lucid-clip/VERSION");
    assert!(names.iter().all(|n| !n.contains("sealed") && !n.contains("init")), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.ends_with(".rec")).count(), 2);
    assert_eq!(d.anon().get(&url("clip.mp4", &media_q)).status, 401, "a clip is decrypted video");
    let ev_path = write(dir, "clip-evidence.tar", &ev.body);

    // The real CLI, pinned to the device: OK, with the chunk range and the wall-clock span.
    let id = c.get(&d.url("gateway", "/api/v1/device")).json()["device_id"].as_str().unwrap().to_owned();
    let (code, out, err) = verify(&[&ev_path, &"--device-id", &id, &"--media", &clip_path]);
    assert_eq!(code, 0, "{out}{err}");
    let span = format!(
        "{} .. {}",
        lucidd::verify::rfc3339_us(records[2].wall_clock_us),
        lucidd::verify::rfc3339_us(lucid_core::clip::record_wall_end_us(&records[3]))
    );
    assert!(out.starts_with("PINNED: "), "{out}");
    assert!(out.contains("chunks 2..=3") && out.contains(&span), "expected {span:?} in {out}");
    assert!(out.contains("OK: clip evidence and media verified"), "{out}");

    // A flipped byte of picture data in the clip's second fragment: named.
    let mut bad = clip.body.clone();
    let at = bad.len() - 7;
    bad[at] ^= 0x01;
    let bad_path = write(dir, "flipped-clip.mp4", &bad);
    let (code, out, err) = verify(&[&ev_path, &"--media", &bad_path]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("fragment 1 at byte") && err.contains("chunk 3"), "{err}");
    assert!(!out.contains("OK"), "{out}");
    // Another range's clip against this evidence.
    let other = c.get(&url("clip.mp4", &format!("start={}&end={}", mid(&records[1]), mid(&records[2]))));
    assert_eq!(other.status, 200);
    assert_eq!(other.headers["x-lucid-clip-first"], "1");
    let other_path = write(dir, "other-clip.mp4", &other.body);
    let (code, out, err) = verify(&[&ev_path, &"--media", &other_path]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("media verification FAILED") && err.contains("fragment 0"), "{err}");

    // Bounded, with clear errors: end before start, a range that meets no chunk, no range.
    let r = c.get(&url("clip.mp4", "start=3&end=1"));
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().unwrap().contains("end is before start"), "{}", r.text());
    let r = c.get(&url("clip-evidence", "start=100000&end=100001"));
    assert_eq!(r.status, 416, "{}", r.text());
    assert!(r.json()["detail"].as_str().unwrap().contains("meets none"), "{}", r.text());
    let r = c.get(&url("clip.mp4", "end=1"));
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().unwrap().contains("start is required"), "{}", r.text());
    let r = c.get(&url("clip.mp4", "start=yesterday&end=1"));
    assert_eq!(r.status, 400, "{}", r.text());
}
