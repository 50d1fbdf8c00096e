//! Fuzzes the Lucid JSON request bodies the gateway accepts from any client: a
//! create-session body through serde and the handler's own rules
//! (`lucidd::http::gateway::fuzz_create_session`), which panics if an accepted body breaks
//! a promise of the contract (a password kept inside `rdp_config`, non-string tags, a
//! fractional `max_size_gb` or `bitrate`, a bad name or id).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lucidd::http::gateway::fuzz_create_session(data);
});
