//! Fuzzes verifier key text (`Verifier::from_vkey`): `device.vkey` in every evidence
//! bundle and the trusted OTA keys in `/etc/lucid/ota-keys`. The format allows one
//! spelling per key (canonical base64, lowercase hex id), so a key that parses must
//! print back as the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucid_core::Verifier;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = Verifier::from_vkey(text) {
        assert_eq!(v.vkey(), text, "a parsed vkey does not print back the same");
        assert_eq!(Verifier::from_vkey(&v.vkey()).as_ref(), Ok(&v));
    }
});
