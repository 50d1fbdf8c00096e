//! Fuzzes the Lucid JSON request bodies the services accept from any client
//! (`lucidd::http::fuzz_json_body`): the first byte picks the body (gateway create and
//! update, storage upload, pipeline push, processor process and batch, recorder start;
//! the seed files start with its letter), the rest goes through serde and the handler's
//! own pure rules (`check_*`), which panic if an accepted body breaks a promise of the
//! contract (a password kept inside `rdp_config`, non-string tags, a fractional
//! `max_size_gb` or `bitrate`, more bytes decoded than the limit, a `hash_sha256` that is
//! not the data's, a chunk id the log refuses, a session id that is not canonical, an
//! empty or padded owner).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lucidd::http::fuzz_json_body(data);
});
