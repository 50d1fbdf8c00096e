//! Fuzzes the chunk record decoder (`ChunkRecord::decode`): the Merkle leaf input, read
//! from evidence bundles and the store. The format promises exactly one encoding per
//! record, so a record that decodes must encode back to the same bytes, and its leaf hash
//! must be the hash of those bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucid_core::{ChunkRecord, merkle};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = ChunkRecord::decode(data) {
        record.validate().expect("a decoded record is valid");
        assert_eq!(record.encode(), data, "decode then encode changed the bytes");
        assert_eq!(record.leaf_hash(), merkle::leaf_hash(data));
        // Matching a chunk against the record is the verifier's next step; it must
        // refuse garbage without panicking.
        let _ = record.matches_sealed(data);
    }
});
