//! Fuzzes the chunk header decoder (`ChunkHeader::decode`), which reads the first bytes
//! of every sealed chunk that comes back from the store, an upload or an evidence bundle.
//! A header that decodes must encode back to exactly the bytes it came from (one
//! encoding per header), pass `validate`, and decode again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucid_core::ChunkHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, len)) = ChunkHeader::decode(data) {
        assert!(len <= data.len());
        header.validate().expect("a decoded header is valid");
        let bytes = header.encode();
        assert_eq!(bytes, data[..len], "decode then encode changed the bytes");
        let (again, n) = ChunkHeader::decode(&bytes).expect("an encoded header decodes");
        assert_eq!((again, n), (header, len));
    }
});
