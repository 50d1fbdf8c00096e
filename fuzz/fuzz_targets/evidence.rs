//! Fuzzes the evidence verifier (`lucid_core::verify_evidence`) with whole archives: tar
//! headers, GNU/PAX extension entries, the end-of-archive blocks, and every entry's
//! content behind them. It must return a verdict, never panic, hang or allocate without
//! bound. Seeds are real bundles signed with the fuzz key (`fuzz/seeds/evidence`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = lucid_core::verify_evidence(data) {
        // A bundle that verifies names a session whose log it proved.
        assert_eq!(report.chunk_count, report.manifest.chunk_count);
        assert_eq!(report.session_id, report.manifest.session_id);
    }
});
