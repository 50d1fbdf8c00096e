//! Shared pieces of the fuzz targets: the fixed signing key the seed corpora are made
//! with, and a way to cut one input into pieces.
//!
//! It owns nothing the firmware uses. It must not weaken a check: a target that signs
//! fuzzed bytes with this key does what a hostile party with its own key can do, which
//! is the point (the evidence verifier and the bundle reader must hold up to that).

use lucid_core::{Signer, Verifier};

/// The Ed25519 seed of the key every seed corpus is signed with. The same bytes are in
/// `firmware/core/src/fuzz_seeds.rs`, which writes the seeds; change both together.
pub const FUZZ_KEY_SEED: [u8; 32] = *b"lucid fuzz key, never a real one";

/// The key's name in checkpoints, vkeys and OTA signature blocks.
pub const FUZZ_KEY_NAME: &str = "lucid-fuzz";

/// A PKCS#8 v1 document for an Ed25519 seed (RFC 8410: the fixed DER prefix, then the
/// seed), which `Signer::from_pkcs8` accepts.
pub fn pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(seed);
    der
}

/// The fixed signer.
pub fn signer() -> Signer {
    Signer::from_pkcs8(FUZZ_KEY_NAME, &pkcs8_v1(&FUZZ_KEY_SEED)).expect("fixed key is valid")
}

/// Its verifier.
pub fn verifier() -> Verifier {
    signer().verifier()
}

/// Splits `data` into pieces whose lengths come from `sizes` (each byte a length of
/// 1..=256, cycled), so a target can feed a push parser the way a network would.
pub fn pieces<'a>(data: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut k = 0;
    while !rest.is_empty() {
        let n = sizes.get(k % sizes.len().max(1)).map_or(rest.len(), |&s| s as usize + 1);
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
        k += 1;
    }
    out
}
