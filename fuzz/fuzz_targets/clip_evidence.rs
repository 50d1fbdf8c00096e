//! Fuzzes the clip-evidence verifier (`lucid_core::clip::verify_clip_evidence`) with whole
//! archives: the same hostile tar structures as `evidence`, then records, proofs and the
//! checkpoint behind them. It must return a verdict, never panic, hang or allocate
//! without bound. Seeds are real clip evidence signed with the fuzz key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = lucid_core::clip::verify_clip_evidence(data, &lucid_core::Pin::Unpinned) {
        // A clip that verifies is a non-empty, contiguous run inside the signed log.
        assert!(!r.records.is_empty());
        assert!(r.first() <= r.last() && r.last() < r.tree_size);
        assert_eq!(r.last() - r.first() + 1, r.records.len() as u64);
    }
});
