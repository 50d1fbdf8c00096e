//! Fuzzes the session manifest behind its signature (`lucid_core::verify_manifest`): the
//! target signs the fuzzed bytes with the fuzz key, as a hostile device could, so the
//! JSON schema checks are what gets exercised. A manifest that verifies must survive
//! sign → verify unchanged. The signature file parser
//! (`manifest::parse_signature_file`) gets the raw input too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucid_core::{manifest, sign_manifest, verify_manifest};
use lucid_fuzz::{signer, verifier};

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = manifest::parse_signature_file(data) {
        let file = lucid_core::SignedManifest { bytes: Vec::new(), signature: sig }.signature_file();
        assert_eq!(file.as_bytes(), data, "a signature file has one spelling");
    }
    let signer = signer();
    let sig = signer.sign(data);
    if let Ok(m) = verify_manifest(data, &sig, &verifier()) {
        let signed = sign_manifest(&m, &signer).expect("a verified manifest signs");
        let again =
            verify_manifest(&signed.bytes, &signed.signature, &verifier()).expect("a re-signed manifest verifies");
        assert_eq!(again, m, "sign then verify changed the manifest");
    }
});
