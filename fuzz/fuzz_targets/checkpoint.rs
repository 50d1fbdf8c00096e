//! Fuzzes signed-note checkpoint verification (`Verifier::verify_checkpoint`) two ways:
//! the input as a whole note (signature lines and all), and the input as a note body
//! that the target signs with the fuzz key, so the body parser behind the signature is
//! reached as a hostile signer would reach it. A body that verifies must be the
//! canonical body of the checkpoint it yields, and re-signing that checkpoint must give
//! the same note.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucid_core::sign_checkpoint;
use lucid_fuzz::{signer, verifier};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let v = verifier();
    if let Ok(cp) = v.verify_checkpoint(text) {
        assert!(text.starts_with(&cp.body()));
    }
    let signer = signer();
    let sig = signer.sign(text.as_bytes());
    let mut raw = signer.key_id().to_vec();
    raw.extend_from_slice(&sig);
    use base64::Engine as _;
    let note =
        format!("{text}\n\u{2014} {} {}\n", signer.name(), base64::engine::general_purpose::STANDARD.encode(&raw));
    if let Ok(cp) = v.verify_checkpoint(&note) {
        assert_eq!(cp.body(), text, "a verified body is not canonical");
        assert_eq!(sign_checkpoint(&cp, &signer).expect("signs"), note);
    }
});
