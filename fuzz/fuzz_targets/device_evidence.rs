//! Fuzzes the device-log verifier (`lucid_core::devlog::verify_device_evidence`) with whole
//! archives: tar structure, event encodings (`Event::decode`), signed checkpoints, forks
//! and histories. It must return a verdict, never panic, hang or allocate without bound.
//! Seeds are a real device evidence tar signed with the fuzz key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = lucid_core::devlog::verify_device_evidence(data, &lucid_core::Pin::Unpinned) {
        // Every session listed was created by an event of the verified log.
        for s in &r.sessions {
            assert!(s.created_index < r.events);
            if let Some(d) = &s.deleted {
                assert!(d.index > s.created_index && d.index < r.events);
            }
        }
    }
});
