//! Writes the seed corpora of the fuzz targets (`fuzz/seeds/<target>/`) from real outputs
//! of this crate: evidence bundles, an OTA bundle, sealed chunks, records, checkpoints,
//! the device key text and manifests, an export-shaped MP4, all made by the same code the
//! daemon runs.
//!
//! Test-only and ignored: `./scripts/fuzz seeds` runs it. It must not write anywhere but
//! the seed directory, and its output must be the same on every run (fixed keys, fixed
//! data keys; the AEAD nonce is epoch ‖ index), so regenerating changes nothing in git.

use std::path::{Path, PathBuf};

use crate::bundle::{BUNDLE_FORMAT, BundleManifest, BundleWriter, PayloadHasher};
use crate::note::Signer;
use crate::testutil::Fixture;

/// The fuzz targets' key seed: the same bytes as `FUZZ_KEY_SEED` in `fuzz/src/lib.rs`,
/// so the targets verify what this signs.
const FUZZ_KEY_SEED: [u8; 32] = *b"lucid fuzz key, never a real one";

/// PKCS#8 v1 of an Ed25519 seed (RFC 8410's fixed prefix, then the seed).
fn pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(seed);
    der
}

fn seed_dir() -> PathBuf {
    std::env::var_os("LUCID_FUZZ_SEEDS")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds"), PathBuf::from)
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = seed_dir().join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Piece sizes for the bundle reader target's split (8 bytes, each a length - 1).
const SPLIT: [u8; 8] = [0, 15, 3, 200, 63, 1, 127, 30];

#[test]
#[ignore = "writes fuzz/seeds; run by ./scripts/fuzz seeds"]
fn write_fuzz_seeds() {
    let pkcs8 = pkcs8_v1(&FUZZ_KEY_SEED);
    let camera = Fixture::with_key("cam-1", 3, &[1, 3], &[1; 32], &pkcs8);
    let data = Fixture::data_with_key("data-1", 2, &[2], &[2; 32], &pkcs8);

    write("evidence", "camera-3-chunks.tar", &camera.bundle());
    write("evidence", "data-2-chunks.tar", &data.bundle());

    for (i, sealed) in camera.sealed.iter().chain(&data.sealed).enumerate() {
        write("chunk_header", &format!("sealed-{i}"), sealed);
    }
    for (i, r) in camera.records.iter().chain(&data.records).enumerate() {
        write("chunk_record", &format!("record-{i}"), &r.encode());
    }
    for (i, note) in camera.notes.iter().chain(&data.notes).enumerate() {
        write("checkpoint", &format!("note-{i}"), note.as_bytes());
        // The body alone: the target signs it with the fuzz key.
        let body = &note[..note.rfind("\n\n").unwrap() + 1];
        write("checkpoint", &format!("body-{i}"), body.as_bytes());
    }
    write("vkey", "device.vkey", camera.signer.vkey().as_bytes());
    for (name, f) in [("camera", &camera), ("data", &data)] {
        let m = f.signed_manifest();
        write("manifest", &format!("{name}.json"), &m.bytes);
        write("manifest", &format!("{name}.sig"), m.signature_file().as_bytes());
    }

    // An OTA bundle signed by the key the bundle target trusts ("lucid-fuzz"), for the
    // board and build its policy accepts.
    let ota = Signer::from_pkcs8("lucid-fuzz", &pkcs8).unwrap();
    let boot: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    let rootfs: Vec<u8> = (0..500u32).map(|i| (i * 13 + 1) as u8).collect();
    let info = |name: &str, bytes: &[u8]| {
        let mut h = PayloadHasher::default();
        h.update(bytes);
        h.finish(name)
    };
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT.into(),
        board: "fuzz-board".into(),
        version: "1.2.3".into(),
        build: 2,
        created_at: "2025-01-02T03:04:05Z".into(),
        payloads: vec![info("boot", &boot), info("rootfs", &rootfs)],
    };
    let mut w = BundleWriter::new(Vec::new(), manifest.clone(), &ota).unwrap();
    w.write_payload(&boot).unwrap();
    w.write_payload(&rootfs).unwrap();
    let stream = w.finish().unwrap();
    // Mode 0: the stream as is.
    let mut seed = vec![0];
    seed.extend_from_slice(&SPLIT);
    seed.extend_from_slice(&stream);
    write("bundle_reader", "bundle", &seed);
    // Mode 1: the manifest JSON, a NUL, the payloads; the target signs the head.
    let mut seed = vec![1];
    seed.extend_from_slice(&SPLIT);
    seed.extend_from_slice(&serde_json::to_vec_pretty(&manifest).unwrap());
    seed.push(0);
    seed.extend_from_slice(&boot);
    seed.extend_from_slice(&rootfs);
    write("bundle_reader", "manifest-and-payloads", &seed);

    // The media target: an export-shaped file (init boxes, then moof + mdat pairs) and
    // the lengths of its init segment and fragments, from which the target derives the
    // digests it checks against.
    let bx = |kind: &[u8; 4], body: &[u8]| {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    };
    let init = [bx(b"ftyp", b"isomiso6"), bx(b"moov", &[7; 40])].concat();
    let frags: Vec<Vec<u8>> =
        (0..3u8).map(|i| [bx(b"moof", &[i; 24]), bx(b"mdat", &vec![i ^ 0x5a; 60 + i as usize])].concat()).collect();
    let pieces: Vec<&[u8]> = std::iter::once(&init[..]).chain(frags.iter().map(|f| &f[..])).collect();
    let mut seed = vec![pieces.len() as u8];
    for p in &pieces {
        seed.extend_from_slice(&(p.len() as u16).to_le_bytes());
    }
    seed.extend(pieces.concat());
    write("media", "export-3-fragments", &seed);

    // The clip-evidence target: chunks 1..=2 of the camera session, with their proofs
    // against its final checkpoint.
    let leaves: Vec<crate::merkle::Hash> = camera.records.iter().map(crate::ChunkRecord::leaf_hash).collect();
    let n = leaves.len() as u64;
    let final_note = camera.notes.last().unwrap();
    let mut w =
        crate::clip::ClipEvidenceWriter::new(Vec::new(), &camera.signer.vkey(), &camera.signed_manifest(), final_note)
            .unwrap();
    for r in &camera.records[1..=2] {
        w.record(r).unwrap();
    }
    for i in 1..=2 {
        w.proof(i, &crate::merkle::inclusion_proof(&leaves, i, n).unwrap()).unwrap();
    }
    write("clip_evidence", "camera-chunks-1-2.tar", &w.finish().unwrap());

    // The device-evidence target: two sessions created, a head, a deletion, a checkpoint
    // after every event, signed with the fuzz key.
    use crate::devlog::{DeletedBy, DeviceEvidenceWriter, Event, EventKind, device_origin, event_leaf};
    use crate::manifest::SessionKind;
    let key = Signer::from_pkcs8("lucid-fuzz", &pkcs8).unwrap();
    let at = |i: i64| 1_700_000_000_000_000 + i * 1_000_000;
    let events = [
        Event {
            at_us: at(0),
            kind: EventKind::SessionCreated { session_id: "cam-1".into(), kind: SessionKind::Camera },
        },
        Event {
            at_us: at(1),
            kind: EventKind::SessionCreated { session_id: "data-1".into(), kind: SessionKind::Data },
        },
        Event {
            at_us: at(2),
            kind: EventKind::SessionHead {
                session_id: "cam-1".into(),
                generation: 1,
                tree_size: 3,
                root: [0x11; 32],
                manifest_digest: [0x22; 32],
            },
        },
        Event {
            at_us: at(3),
            kind: EventKind::SessionDeleted { session_id: "data-1".into(), by: DeletedBy::Api, reason: "fuzz".into() },
        },
    ];
    let encoded: Vec<Vec<u8>> = events.iter().map(|e| e.encode().unwrap()).collect();
    let dleaves: Vec<crate::merkle::Hash> = encoded.iter().map(|e| event_leaf(e)).collect();
    let origin = device_origin(&key.verifier().device_id());
    let mut w = DeviceEvidenceWriter::new(Vec::new(), &key.vkey()).unwrap();
    for e in &encoded {
        w.event(e).unwrap();
    }
    for size in 1..=dleaves.len() {
        let cp = crate::note::Checkpoint {
            origin: origin.clone(),
            size: size as u64,
            root: crate::merkle::root(&dleaves[..size]),
        };
        w.checkpoint(&crate::note::sign_checkpoint(&cp, &key).unwrap()).unwrap();
    }
    write("device_evidence", "four-events.tar", &w.finish().unwrap());
}
