//! The binary encodings of a chunk: the sealed-chunk header (also the AEAD associated
//! data) and the chunk record (the Merkle leaf input), both big-endian and canonical.
//!
//! It owns byte layouts, their validation and the session-id alphabet. It must not
//! encrypt (that is `seal`), hash trees (that is `merkle`) or touch storage; every
//! decoder returns an error on bad input and never panics.

use crate::merkle::{self, Hash};
use crate::seal::{Cipher, TAG_LEN};

/// The largest sealed chunk (header + ciphertext + tag), 4 MiB − 64 KiB.
///
/// redb allocates large values in power-of-two page orders, so a value even one byte
/// over 4 MiB takes an 8 MiB region. Keeping a sealed chunk 64 KiB under 4 MiB leaves
/// room for the key, the b-tree leaf framing and page headers, so every chunk fits one
/// 4 MiB allocation. The verifier also uses it as the "absurd size" limit.
pub const MAX_SEALED_CHUNK: usize = 4 * 1024 * 1024 - 64 * 1024;

/// The longest session id, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 64;

const HEADER_MAGIC: [u8; 4] = *b"LCH1";
const RECORD_MAGIC: [u8; 4] = *b"LCR1";
const FORMAT_VERSION: u8 = 1;
/// Header bytes before the session id.
const HEADER_FIXED: usize = 29;
/// Record bytes before the session id.
const RECORD_FIXED: usize = 121;

/// Why an encoding was rejected, or a record does not describe a sealed chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the layout needs.
    #[error("{what}: truncated, need {need} bytes, have {have}")]
    Truncated { what: &'static str, need: usize, have: usize },
    /// Bytes after a complete record.
    #[error("{what}: {extra} trailing bytes")]
    TrailingBytes { what: &'static str, extra: usize },
    /// The magic is not the one for this structure.
    #[error("{what}: bad magic {found:02x?}")]
    BadMagic { what: &'static str, found: [u8; 4] },
    /// A format version this code does not know.
    #[error("{what}: unsupported version {version}")]
    UnsupportedVersion { what: &'static str, version: u8 },
    /// A cipher id this code does not know.
    #[error("unknown cipher id {0}")]
    UnknownCipher(u8),
    /// Flag bits that are not defined; they must be zero so old verifiers never
    /// silently ignore a meaning they don't understand.
    #[error("undefined flag bits {0:#06x}")]
    UnknownFlags(u16),
    /// The session id is empty, too long, or has a character outside `[A-Za-z0-9._-]`.
    #[error("invalid session id: {reason}")]
    BadSessionId { reason: &'static str },
    /// Two length fields disagree, or a length disagrees with the bytes present.
    #[error("{what}: length {found}, expected {expected}")]
    LengthMismatch { what: &'static str, expected: u64, found: u64 },
    /// A chunk or record larger than [`MAX_SEALED_CHUNK`].
    #[error("sealed length {len} is over the {max} byte limit")]
    TooLarge { len: u64, max: u64 },
    /// The media time range runs backwards.
    #[error("media end {end} µs is before media start {start} µs")]
    MediaRange { start: u64, end: u64 },
    /// Opaque (non-media) data claims frames.
    #[error("opaque data chunk claims {0} frames")]
    FramesWithoutMedia(u32),
    /// A sealed chunk's header field differs from its record.
    #[error("sealed chunk disagrees with its record on {field}")]
    RecordMismatch { field: &'static str },
    /// The sealed chunk's BLAKE3 differs from the record's.
    #[error("sealed chunk BLAKE3 differs from its record")]
    DigestMismatch,
}

/// The chunk flag bits. Undefined bits are rejected on decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u16);

impl Flags {
    /// The payload was zstd-compressed before sealing.
    pub const ZSTD: Flags = Flags(1 << 0);
    /// Media before this chunk is missing (a camera gap), so a player must not expect
    /// continuity with the previous chunk.
    pub const GAP_BEFORE: Flags = Flags(1 << 1);
    /// The payload is a CMAF fragment (moof+mdat) of the session's video; otherwise it
    /// is opaque client data.
    pub const MEDIA: Flags = Flags(1 << 2);
    const KNOWN: u16 = 0b111;

    /// No flags.
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// Flags from their wire bits; undefined bits are an error.
    pub fn from_bits(bits: u16) -> Result<Flags, FormatError> {
        if bits & !Self::KNOWN != 0 {
            return Err(FormatError::UnknownFlags(bits & !Self::KNOWN));
        }
        Ok(Flags(bits))
    }

    /// The wire bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Checks a session id: 1..=64 bytes of `[A-Za-z0-9._-]`. The narrow alphabet keeps
/// ids safe in checkpoint origins, URLs and file names without escaping.
pub fn validate_session_id(sid: &str) -> Result<(), FormatError> {
    if sid.is_empty() {
        return Err(FormatError::BadSessionId { reason: "empty" });
    }
    if sid.len() > MAX_SESSION_ID_LEN {
        return Err(FormatError::BadSessionId { reason: "longer than 64 bytes" });
    }
    if !sid.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(FormatError::BadSessionId { reason: "character outside [A-Za-z0-9._-]" });
    }
    Ok(())
}

/// A bounds-checked big-endian reader: every read is an error, not a panic, past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(FormatError::Truncated {
            what: self.what,
            need: self.pos.saturating_add(n),
            have: self.buf.len(),
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, FormatError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// magic, version, cipher id, flags: the prefix both layouts share.
    fn preamble(&mut self, magic: [u8; 4]) -> Result<(Cipher, Flags), FormatError> {
        let found = self.array::<4>()?;
        if found != magic {
            return Err(FormatError::BadMagic { what: self.what, found });
        }
        let version = self.u8()?;
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { what: self.what, version });
        }
        let id = self.u8()?;
        let cipher = Cipher::from_id(id).ok_or(FormatError::UnknownCipher(id))?;
        let flags = Flags::from_bits(self.u16()?)?;
        Ok((cipher, flags))
    }

    fn session_id(&mut self) -> Result<String, FormatError> {
        let n = self.u8()? as usize;
        let bytes = self.take(n)?;
        // validate_session_id only admits ASCII, so from_utf8 cannot fail after it; check
        // the bytes first to give the precise reason.
        let sid = std::str::from_utf8(bytes)
            .map_err(|_| FormatError::BadSessionId { reason: "character outside [A-Za-z0-9._-]" })?;
        validate_session_id(sid)?;
        Ok(sid.to_owned())
    }
}

/// The canonical header of a sealed chunk, and the AEAD associated data:
/// `"LCH1" ‖ 1 ‖ cipher ‖ flags u16 ‖ epoch u32 ‖ index u64 ‖ plain_len u32 ‖
/// cipher_len u32 ‖ sid_len u8 ‖ sid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkHeader {
    /// The AEAD that sealed the payload.
    pub cipher: Cipher,
    /// ZSTD, GAP_BEFORE, MEDIA.
    pub flags: Flags,
    /// The daemon run that sealed this chunk; part of the nonce.
    pub epoch: u32,
    /// Position of the chunk in the session's log; part of the nonce.
    pub index: u64,
    /// Payload bytes before compression.
    pub plain_len: u32,
    /// Sealed payload bytes (compressed or not) plus the 16-byte tag.
    pub cipher_len: u32,
    /// The session this chunk belongs to.
    pub session_id: String,
}

impl ChunkHeader {
    /// Checks the invariants `decode` enforces, so an encoded header always decodes.
    pub fn validate(&self) -> Result<(), FormatError> {
        validate_session_id(&self.session_id)?;
        if (self.cipher_len as usize) < TAG_LEN {
            return Err(FormatError::LengthMismatch {
                what: "header cipher_len (below the tag length)",
                expected: TAG_LEN as u64,
                found: self.cipher_len.into(),
            });
        }
        // Without compression the ciphertext length is implied by the plaintext length;
        // requiring it keeps one meaning for each header.
        if !self.flags.contains(Flags::ZSTD) && u64::from(self.cipher_len) != u64::from(self.plain_len) + 16 {
            return Err(FormatError::LengthMismatch {
                what: "header cipher_len of an uncompressed chunk",
                expected: u64::from(self.plain_len) + 16,
                found: self.cipher_len.into(),
            });
        }
        Ok(())
    }

    /// The canonical bytes. Assumes [`validate`](Self::validate) passes (sealing checks
    /// it); an invalid session id would not round-trip.
    pub fn encode(&self) -> Vec<u8> {
        let sid = self.session_id.as_bytes();
        let mut out = Vec::with_capacity(HEADER_FIXED + sid.len());
        out.extend_from_slice(&HEADER_MAGIC);
        out.push(FORMAT_VERSION);
        out.push(self.cipher.id());
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.plain_len.to_be_bytes());
        out.extend_from_slice(&self.cipher_len.to_be_bytes());
        out.push(sid.len() as u8);
        out.extend_from_slice(sid);
        out
    }

    /// Parses a header at the start of `bytes` (the ciphertext may follow) and returns
    /// it with its encoded length.
    pub fn decode(bytes: &[u8]) -> Result<(ChunkHeader, usize), FormatError> {
        let mut r = Reader::new(bytes, "chunk header");
        let (cipher, flags) = r.preamble(HEADER_MAGIC)?;
        let header = ChunkHeader {
            cipher,
            flags,
            epoch: r.u32()?,
            index: r.u64()?,
            plain_len: r.u32()?,
            cipher_len: r.u32()?,
            session_id: r.session_id()?,
        };
        header.validate()?;
        Ok((header, r.pos))
    }
}

/// The record of one chunk: the Merkle leaf input, binding the sealed bytes to their
/// place in the session and in media time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// The AEAD of the sealed chunk.
    pub cipher: Cipher,
    /// Same bits as the sealed chunk's header.
    pub flags: Flags,
    /// The sealing epoch.
    pub epoch: u32,
    /// Position in the session's log.
    pub index: u64,
    /// Media start, microseconds since session start.
    pub media_start_us: u64,
    /// Media end, microseconds since session start; `>= media_start_us`.
    pub media_end_us: u64,
    /// Wall clock of the first frame, Unix microseconds. Informational: the device clock
    /// is not trusted, the order of the log is.
    pub wall_clock_us: i64,
    /// Frames in the fragment; 0 for opaque data.
    pub frame_count: u32,
    /// Payload bytes before compression.
    pub plain_len: u32,
    /// Whole sealed chunk bytes (header + ciphertext + tag).
    pub sealed_len: u32,
    /// BLAKE3 of the plaintext payload before compression.
    pub plain_blake3: Hash,
    /// BLAKE3 of the sealed chunk bytes.
    pub sealed_blake3: Hash,
    /// The session this chunk belongs to.
    pub session_id: String,
}

impl ChunkRecord {
    /// The record of `sealed`, taking the header fields and the sealed digest from the
    /// chunk itself so the two cannot disagree. `plain_blake3` is the BLAKE3 of the
    /// payload before compression.
    pub fn from_sealed(
        sealed: &[u8],
        plain_blake3: Hash,
        media_start_us: u64,
        media_end_us: u64,
        wall_clock_us: i64,
        frame_count: u32,
    ) -> Result<ChunkRecord, FormatError> {
        let header = sealed_header(sealed)?;
        let record = ChunkRecord {
            cipher: header.cipher,
            flags: header.flags,
            epoch: header.epoch,
            index: header.index,
            media_start_us,
            media_end_us,
            wall_clock_us,
            frame_count,
            plain_len: header.plain_len,
            sealed_len: sealed.len() as u32,
            plain_blake3,
            sealed_blake3: *blake3::hash(sealed).as_bytes(),
            session_id: header.session_id,
        };
        record.validate()?;
        Ok(record)
    }

    /// Checks the invariants `decode` enforces.
    pub fn validate(&self) -> Result<(), FormatError> {
        validate_session_id(&self.session_id)?;
        if self.media_end_us < self.media_start_us {
            return Err(FormatError::MediaRange { start: self.media_start_us, end: self.media_end_us });
        }
        if !self.flags.contains(Flags::MEDIA) && self.frame_count != 0 {
            return Err(FormatError::FramesWithoutMedia(self.frame_count));
        }
        if self.sealed_len as usize > MAX_SEALED_CHUNK {
            return Err(FormatError::TooLarge { len: self.sealed_len.into(), max: MAX_SEALED_CHUNK as u64 });
        }
        Ok(())
    }

    /// The canonical bytes. Assumes [`validate`](Self::validate) passes.
    pub fn encode(&self) -> Vec<u8> {
        let sid = self.session_id.as_bytes();
        let mut out = Vec::with_capacity(RECORD_FIXED + sid.len());
        out.extend_from_slice(&RECORD_MAGIC);
        out.push(FORMAT_VERSION);
        out.push(self.cipher.id());
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.media_start_us.to_be_bytes());
        out.extend_from_slice(&self.media_end_us.to_be_bytes());
        out.extend_from_slice(&self.wall_clock_us.to_be_bytes());
        out.extend_from_slice(&self.frame_count.to_be_bytes());
        out.extend_from_slice(&self.plain_len.to_be_bytes());
        out.extend_from_slice(&self.sealed_len.to_be_bytes());
        out.extend_from_slice(&self.plain_blake3);
        out.extend_from_slice(&self.sealed_blake3);
        out.push(sid.len() as u8);
        out.extend_from_slice(sid);
        out
    }

    /// Parses exactly one record; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<ChunkRecord, FormatError> {
        let mut r = Reader::new(bytes, "chunk record");
        let (cipher, flags) = r.preamble(RECORD_MAGIC)?;
        let record = ChunkRecord {
            cipher,
            flags,
            epoch: r.u32()?,
            index: r.u64()?,
            media_start_us: r.u64()?,
            media_end_us: r.u64()?,
            wall_clock_us: r.i64()?,
            frame_count: r.u32()?,
            plain_len: r.u32()?,
            sealed_len: r.u32()?,
            plain_blake3: r.array()?,
            sealed_blake3: r.array()?,
            session_id: r.session_id()?,
        };
        if r.pos != bytes.len() {
            return Err(FormatError::TrailingBytes { what: "chunk record", extra: bytes.len() - r.pos });
        }
        record.validate()?;
        Ok(record)
    }

    /// The Merkle leaf hash of this record: `leaf_hash(encode())`.
    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(&self.encode())
    }

    /// Checks that `sealed` is the chunk this record describes: its header fields, its
    /// length and its BLAKE3 digest. Header fields are compared first so a relabelled
    /// chunk is reported by the field that differs.
    pub fn matches_sealed(&self, sealed: &[u8]) -> Result<(), FormatError> {
        let h = sealed_header(sealed)?;
        let checks: [(&'static str, bool); 6] = [
            ("session id", h.session_id == self.session_id),
            ("index", h.index == self.index),
            ("epoch", h.epoch == self.epoch),
            ("cipher", h.cipher == self.cipher),
            ("flags", h.flags == self.flags),
            ("plaintext length", h.plain_len == self.plain_len),
        ];
        if let Some((field, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(FormatError::RecordMismatch { field });
        }
        if sealed.len() as u64 != u64::from(self.sealed_len) {
            return Err(FormatError::LengthMismatch {
                what: "sealed chunk",
                expected: self.sealed_len.into(),
                found: sealed.len() as u64,
            });
        }
        if *blake3::hash(sealed).as_bytes() != self.sealed_blake3 {
            return Err(FormatError::DigestMismatch);
        }
        Ok(())
    }
}

/// Decodes a whole sealed chunk's header and checks the body length against it.
pub(crate) fn sealed_header(sealed: &[u8]) -> Result<ChunkHeader, FormatError> {
    if sealed.len() > MAX_SEALED_CHUNK {
        return Err(FormatError::TooLarge { len: sealed.len() as u64, max: MAX_SEALED_CHUNK as u64 });
    }
    let (header, hlen) = ChunkHeader::decode(sealed)?;
    let body = (sealed.len() - hlen) as u64;
    if body != u64::from(header.cipher_len) {
        return Err(FormatError::LengthMismatch {
            what: "sealed chunk body",
            expected: header.cipher_len.into(),
            found: body,
        });
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> ChunkHeader {
        ChunkHeader {
            cipher: Cipher::Aes256Gcm,
            flags: Flags::MEDIA | Flags::GAP_BEFORE,
            epoch: 0x0102_0304,
            index: 0x0506_0708_090a_0b0c,
            plain_len: 100,
            cipher_len: 116,
            session_id: "s-1.a_B".into(),
        }
    }

    fn record() -> ChunkRecord {
        ChunkRecord {
            cipher: Cipher::ChaCha20Poly1305,
            flags: Flags::MEDIA,
            epoch: 9,
            index: 42,
            media_start_us: 1_000_000,
            media_end_us: 3_000_000,
            wall_clock_us: -5,
            frame_count: 60,
            plain_len: 1234,
            sealed_len: 2000,
            plain_blake3: [0xaa; 32],
            sealed_blake3: [0xbb; 32],
            session_id: "sess".into(),
        }
    }

    #[test]
    fn header_layout_is_exact() {
        let bytes = header().encode();
        let mut want = b"LCH1".to_vec();
        want.extend_from_slice(&[1, 2, 0, 6, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        want.extend_from_slice(&[0, 0, 0, 100, 0, 0, 0, 116, 7]);
        want.extend_from_slice(b"s-1.a_B");
        assert_eq!(bytes, want);
        assert_eq!(bytes.len(), 29 + 7);
        let mut with_body = bytes.clone();
        with_body.extend_from_slice(&[0; 116]);
        assert_eq!(ChunkHeader::decode(&with_body).unwrap(), (header(), 36));
    }

    #[test]
    fn header_rejects_bad_input() {
        let good = header().encode();
        for cut in 0..good.len() {
            assert!(matches!(ChunkHeader::decode(&good[..cut]), Err(FormatError::Truncated { .. })));
        }
        let patch = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            ChunkHeader::decode(&b)
        };
        assert!(matches!(patch(0, b'X'), Err(FormatError::BadMagic { .. })));
        assert!(matches!(patch(4, 2), Err(FormatError::UnsupportedVersion { version: 2, .. })));
        assert!(matches!(patch(5, 0), Err(FormatError::UnknownCipher(0))));
        assert!(matches!(patch(5, 3), Err(FormatError::UnknownCipher(3))));
        assert!(matches!(patch(6, 0x80), Err(FormatError::UnknownFlags(0x8000))));
        assert!(matches!(patch(7, 0x0e), Err(FormatError::UnknownFlags(0x08))));
        assert!(matches!(patch(28, 0), Err(FormatError::BadSessionId { .. })));
        assert!(matches!(patch(28, 65), Err(FormatError::Truncated { .. })));
        assert!(matches!(patch(29, b'/'), Err(FormatError::BadSessionId { .. })));
        assert!(matches!(patch(29, 0xff), Err(FormatError::BadSessionId { .. })));
        // Uncompressed: cipher_len must be plain_len + 16.
        assert!(matches!(patch(27, 117), Err(FormatError::LengthMismatch { .. })));
    }

    #[test]
    fn session_ids() {
        assert!(validate_session_id("a").is_ok());
        assert!(validate_session_id(&"x".repeat(64)).is_ok());
        assert!(validate_session_id(&"x".repeat(65)).is_err());
        for bad in ["", "a b", "a/b", "é", "a+b", "a\n"] {
            assert!(validate_session_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn record_layout_is_exact() {
        let r = record();
        let b = r.encode();
        assert_eq!(b.len(), 121 + 4);
        assert_eq!(&b[0..4], b"LCR1");
        assert_eq!(b[4], 1);
        assert_eq!(b[5], 1);
        assert_eq!(&b[6..8], &[0, 4]);
        assert_eq!(&b[8..12], &9u32.to_be_bytes());
        assert_eq!(&b[12..20], &42u64.to_be_bytes());
        assert_eq!(&b[20..28], &1_000_000u64.to_be_bytes());
        assert_eq!(&b[28..36], &3_000_000u64.to_be_bytes());
        assert_eq!(&b[36..44], &(-5i64).to_be_bytes());
        assert_eq!(&b[44..48], &60u32.to_be_bytes());
        assert_eq!(&b[48..52], &1234u32.to_be_bytes());
        assert_eq!(&b[52..56], &2000u32.to_be_bytes());
        assert_eq!(&b[56..88], &[0xaa; 32]);
        assert_eq!(&b[88..120], &[0xbb; 32]);
        assert_eq!(b[120], 4);
        assert_eq!(&b[121..], b"sess");
        assert_eq!(ChunkRecord::decode(&b).unwrap(), r);
        assert_eq!(r.leaf_hash(), merkle::leaf_hash(&b));
    }

    #[test]
    fn record_rejects_bad_input() {
        let good = record().encode();
        for cut in 0..good.len() {
            assert!(ChunkRecord::decode(&good[..cut]).is_err());
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(ChunkRecord::decode(&long), Err(FormatError::TrailingBytes { extra: 1, .. })));
        let patch = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            ChunkRecord::decode(&b)
        };
        assert!(matches!(patch(3, b'2'), Err(FormatError::BadMagic { .. })));
        assert!(matches!(patch(4, 0), Err(FormatError::UnsupportedVersion { .. })));
        assert!(matches!(patch(7, 8), Err(FormatError::UnknownFlags(8))));
        assert!(matches!(patch(7, 0), Err(FormatError::FramesWithoutMedia(60))));
        assert!(matches!(patch(121, b' '), Err(FormatError::BadSessionId { .. })));
        let mut backwards = record();
        backwards.media_end_us = 0;
        assert!(matches!(ChunkRecord::decode(&backwards.encode()), Err(FormatError::MediaRange { .. })));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ChunkHeader::decode(&bytes);
            let _ = ChunkRecord::decode(&bytes);
            let _ = sealed_header(&bytes);
        }

        #[test]
        fn record_round_trips(
            epoch: u32, index: u64, start: u64, len in 0u64..1 << 40, wall: i64, frames: u32,
            plain: u32, sealed in 0u32..MAX_SEALED_CHUNK as u32, sid in "[A-Za-z0-9._-]{1,64}"
        ) {
            let r = ChunkRecord {
                cipher: Cipher::Aes256Gcm, flags: Flags::MEDIA | Flags::ZSTD, epoch, index,
                media_start_us: start, media_end_us: start.saturating_add(len), wall_clock_us: wall,
                frame_count: frames, plain_len: plain, sealed_len: sealed,
                plain_blake3: [1; 32], sealed_blake3: [2; 32], session_id: sid,
            };
            prop_assert_eq!(ChunkRecord::decode(&r.encode()).unwrap(), r);
        }
    }
}
