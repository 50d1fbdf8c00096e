//! Fuzzes the OTA bundle push parser (`lucid_core::BundleReader`). The first byte picks
//! the mode: the rest is either a whole bundle stream (seeds are real bundles signed with
//! the fuzz key), or a manifest that the target signs with the fuzz key itself so the
//! checks behind the signature are reached. The stream is fed once whole and once in
//! pieces of fuzzer-chosen sizes: the documented property is that any split gives the
//! same verdict and the same payload bytes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use lucid_core::{BundleEvent, BundlePolicy, BundleReader, KeyPolicy};
use lucid_fuzz::{pieces, signer, verifier};

/// What a run produced: the verdict and every payload byte with its payload index.
#[derive(Debug, PartialEq)]
struct Outcome {
    verdict: Result<(), lucid_core::BundleError>,
    payloads: Vec<(usize, Vec<u8>)>,
    manifest: Option<Vec<u8>>,
}

fn policy() -> BundlePolicy {
    BundlePolicy {
        keys: KeyPolicy::Trusted(vec![verifier()]),
        board: Some("fuzz-board".into()),
        current_build: Some(1),
        capacity: Some(BTreeMap::from([("boot".into(), 1 << 20), ("rootfs".into(), 1 << 20)])),
    }
}

fn run(parts: &[&[u8]]) -> Outcome {
    let mut reader = BundleReader::new(policy());
    let mut out = Outcome { verdict: Ok(()), payloads: Vec::new(), manifest: None };
    for part in parts {
        match reader.feed(part) {
            Ok(events) => {
                for e in events {
                    match e {
                        BundleEvent::Manifest(m) => out.manifest = Some(m.bytes),
                        BundleEvent::Data { index, bytes } => match out.payloads.last_mut() {
                            Some((i, b)) if *i == index => b.extend_from_slice(bytes),
                            _ => out.payloads.push((index, bytes.to_vec())),
                        },
                        _ => {}
                    }
                }
            }
            Err(e) => {
                // Errors are reported the first time; afterwards the reader is poisoned.
                assert_eq!(reader.feed(b"x"), Err(lucid_core::BundleError::Poisoned));
                out.verdict = Err(e);
                return out;
            }
        }
    }
    out.verdict = reader.finish();
    assert_eq!(out.verdict.is_ok(), reader.is_done());
    out
}

/// A head around `manifest`, signed by the fuzz key as `lucidd bundle create` would.
fn signed_stream(manifest: &[u8], payloads: &[u8]) -> Vec<u8> {
    let signer = signer();
    let mut v = b"LUCIDOTA\x00\x01\x00\x00".to_vec();
    v.extend_from_slice(&(manifest.len() as u32).to_be_bytes());
    v.extend_from_slice(manifest);
    let sig = signer.sign(&v);
    v.push(signer.name().len() as u8);
    v.extend_from_slice(signer.name().as_bytes());
    v.extend_from_slice(&signer.key_id());
    v.extend_from_slice(&sig);
    v.extend_from_slice(payloads);
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The piece sizes come from the first 8 bytes after the mode byte (an input too
    // short for them is fed whole).
    let (sizes, rest) = rest.split_at(rest.len().min(8));
    let stream = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        // Manifest, a NUL, then payload bytes (JSON has no NUL).
        let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let (manifest, payloads) = rest.split_at(cut);
        if manifest.is_empty() || manifest.len() > lucid_core::bundle::MAX_MANIFEST_LEN as usize {
            return;
        }
        signed_stream(manifest, payloads.get(1..).unwrap_or_default())
    };
    let whole = run(&[&stream]);
    let split = run(&pieces(&stream, sizes));
    assert_eq!(whole.verdict, split.verdict, "the verdict depends on how the stream was split");
    // Payload bytes handed out before a failure depend on the split (a device discards
    // them: nothing is armed); a good bundle must give the same bytes however it came.
    if whole.verdict.is_ok() {
        assert_eq!(whole, split, "the payloads depend on how the stream was split");
    }
});
