//! Sealing: AEAD encryption of chunk payloads under a per-session data key, with the
//! canonical chunk header as associated data, and wrapping of data keys under a
//! key-encryption key.
//!
//! It owns the cipher choice, the nonce construction and the wrapped-key format. It must
//! not store keys, pick epochs or decompress payloads (the daemon does), and it gets all
//! randomness from a `SecureRandom` argument.

use std::ops::Range;

use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::SecureRandom;

use crate::chunk::{ChunkHeader, FormatError, MAX_SEALED_CHUNK};

/// Length of the AEAD tag both ciphers append.
pub const TAG_LEN: usize = 16;

/// Length of a wrapped data key: format byte, nonce, key, tag.
pub const WRAPPED_KEY_LEN: usize = 1 + 12 + 32 + TAG_LEN;

/// The wrapped-key format byte, so the layout can change without guessing.
const WRAP_FORMAT: u8 = 1;

/// Domain separation for the wrapping AAD: a wrapped key is never a valid chunk.
const WRAP_AAD_PREFIX: &[u8] = b"lucid-dek-v1\0";

/// The AEAD of a chunk. The numbers are the on-disk cipher ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// ChaCha20-Poly1305 (RFC 8439): fast in software, for CPUs without AES instructions
    /// (the Raspberry Pi 4's Cortex-A72 as shipped lacks the crypto extension).
    ChaCha20Poly1305 = 1,
    /// AES-256-GCM: faster where the CPU has AES and carry-less multiply.
    Aes256Gcm = 2,
}

impl Cipher {
    /// The cipher id byte in headers and records.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The cipher for an id byte, if known.
    pub fn from_id(id: u8) -> Option<Cipher> {
        match id {
            1 => Some(Cipher::ChaCha20Poly1305),
            2 => Some(Cipher::Aes256Gcm),
            _ => None,
        }
    }

    /// The name used in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "CHACHA20-POLY1305",
            Cipher::Aes256Gcm => "AES-256-GCM",
        }
    }

    /// The cipher for a manifest name, if known.
    pub fn from_name(name: &str) -> Option<Cipher> {
        [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm].into_iter().find(|c| c.name() == name)
    }

    /// AES-256-GCM when this CPU has AES instructions (constant time and fast),
    /// ChaCha20-Poly1305 otherwise (software AES is slow, and table-based AES leaks
    /// timing). Reading CPU features is the one host query this crate makes.
    pub fn preferred_for_this_cpu() -> Cipher {
        if has_aes_instructions() { Cipher::Aes256Gcm } else { Cipher::ChaCha20Poly1305 }
    }

    fn algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        }
    }
}

#[cfg(target_arch = "aarch64")]
fn has_aes_instructions() -> bool {
    // On aarch64 Rust's "aes" feature means FEAT_AES together with FEAT_PMULL, which is
    // exactly what GCM needs.
    std::arch::is_aarch64_feature_detected!("aes")
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn has_aes_instructions() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(not(any(target_arch = "aarch64", target_arch = "x86", target_arch = "x86_64")))]
fn has_aes_instructions() -> bool {
    false
}

/// Why sealing, opening or key unwrapping failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The header is not a valid header, or the sealed bytes do not parse.
    #[error("chunk format: {0}")]
    Format(#[from] FormatError),
    /// The header names a different cipher than the one asked for.
    #[error("header says {header} but sealing was asked for {requested}")]
    CipherMismatch { header: &'static str, requested: &'static str },
    /// `header.cipher_len` is not the payload length plus the tag.
    #[error("header cipher_len {header} but payload + tag is {actual}")]
    CipherLenMismatch { header: u64, actual: u64 },
    /// The sealed chunk would exceed [`MAX_SEALED_CHUNK`].
    #[error("sealed chunk would be {len} bytes, over the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    /// Authentication failed: wrong key, or the header or ciphertext was changed.
    #[error("authentication failed for chunk {index} of session {session_id}")]
    Authentication { session_id: String, index: u64 },
    /// An unwrapped payload's length disagrees with the header's plaintext length.
    #[error("chunk {index}: opened {actual} bytes, header says {header}")]
    PlainLenMismatch { index: u64, header: u64, actual: u64 },
    /// The wrapped key has the wrong length or format byte.
    #[error("malformed wrapped key: {reason}")]
    MalformedWrappedKey { reason: &'static str },
    /// The wrapped key did not authenticate under this KEK for this session.
    #[error("wrapped key does not open for session {session_id}")]
    Unwrap { session_id: String },
    /// The random number generator failed.
    #[error("random number generator failed")]
    Rng,
    /// The AEAD refused the input (only possible beyond its maximum message length,
    /// which the size limit already excludes).
    #[error("the AEAD refused the input length")]
    AeadRefused,
}

/// A 256-bit per-session data key. Zeroed on drop; `Debug` never prints it.
pub struct DataKey([u8; 32]);

/// A 256-bit key-encryption key that wraps data keys. Zeroed on drop; `Debug` never
/// prints it.
pub struct Kek([u8; 32]);

macro_rules! secret_key {
    ($t:ident) => {
        impl $t {
            /// A fresh random key.
            pub fn generate(rng: &dyn SecureRandom) -> Result<Self, SealError> {
                let mut k = [0u8; 32];
                rng.fill(&mut k).map_err(|_| SealError::Rng)?;
                Ok(Self(k))
            }

            /// A key from its raw bytes.
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw key bytes; handle with care.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl Drop for $t {
            fn drop(&mut self) {
                // Best effort without unsafe: black_box keeps the optimiser from
                // proving the store dead and removing it.
                self.0 = [0u8; 32];
                std::hint::black_box(&self.0);
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "(..)"))
            }
        }
    };
}
secret_key!(DataKey);
secret_key!(Kek);

/// The chunk nonce: epoch (u32 BE) ‖ index (u64 BE). Unique under one data key because
/// the daemon durably increments the epoch before the first seal after every start and
/// the index only grows within an epoch.
pub fn chunk_nonce(epoch: u32, index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&epoch.to_be_bytes());
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

fn aead_key(cipher: Cipher, key: &[u8; 32]) -> LessSafeKey {
    // ring only rejects keys of the wrong length, and both algorithms take 32 bytes.
    let unbound = UnboundKey::new(cipher.algorithm(), key);
    LessSafeKey::new(unbound.unwrap_or_else(|_| unreachable!("32-byte key for a 256-bit AEAD")))
}

/// Seals `payload` (already compressed if `header.flags` says ZSTD) and returns
/// `header ‖ ciphertext ‖ tag`, with the encoded header as associated data.
pub fn seal_chunk(key: &DataKey, cipher: Cipher, header: &ChunkHeader, payload: &[u8]) -> Result<Vec<u8>, SealError> {
    header.validate()?;
    if header.cipher != cipher {
        return Err(SealError::CipherMismatch { header: header.cipher.name(), requested: cipher.name() });
    }
    let actual = payload.len() as u64 + TAG_LEN as u64;
    if u64::from(header.cipher_len) != actual {
        return Err(SealError::CipherLenMismatch { header: header.cipher_len.into(), actual });
    }
    let encoded = header.encode();
    let len = encoded.len() + payload.len() + TAG_LEN;
    if len > MAX_SEALED_CHUNK {
        return Err(SealError::TooLarge { len, max: MAX_SEALED_CHUNK });
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&encoded);
    out.extend_from_slice(payload);
    let nonce = Nonce::assume_unique_for_key(chunk_nonce(header.epoch, header.index));
    let tag = aead_key(cipher, &key.0)
        .seal_in_place_separate_tag(nonce, Aad::from(&encoded[..]), &mut out[encoded.len()..])
        .map_err(|_| SealError::AeadRefused)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens a sealed chunk. Returns the header and the payload, still zstd-compressed if
/// the ZSTD flag is set (decompression is the daemon's job).
pub fn open_chunk(key: &DataKey, sealed: &[u8]) -> Result<(ChunkHeader, Vec<u8>), SealError> {
    let mut buf = sealed.to_vec();
    let (header, payload) = open_chunk_in_place(key, &mut buf)?;
    buf.truncate(payload.end);
    buf.drain(..payload.start);
    Ok((header, buf))
}

/// [`open_chunk`] without a copy: decrypts the ciphertext where it lies in `sealed` and
/// returns the header and where the payload now is (`sealed[payload]`). The daemon's read
/// path hands that range of the buffer it read to the socket as it is.
pub fn open_chunk_in_place(key: &DataKey, sealed: &mut [u8]) -> Result<(ChunkHeader, Range<usize>), SealError> {
    let (header, hlen) = ChunkHeader::decode(sealed)?;
    let body_len = sealed.len() - hlen;
    if body_len != header.cipher_len as usize {
        return Err(FormatError::LengthMismatch {
            what: "sealed chunk body",
            expected: header.cipher_len.into(),
            found: body_len as u64,
        }
        .into());
    }
    let (aad, body) = sealed.split_at_mut(hlen);
    let nonce = Nonce::assume_unique_for_key(chunk_nonce(header.epoch, header.index));
    let plain_len = aead_key(header.cipher, &key.0)
        .open_in_place(nonce, Aad::from(&aad[..]), body)
        .map_err(|_| SealError::Authentication { session_id: header.session_id.clone(), index: header.index })?
        .len();
    if !header.flags.contains(crate::chunk::Flags::ZSTD) && plain_len != header.plain_len as usize {
        return Err(SealError::PlainLenMismatch {
            index: header.index,
            header: header.plain_len.into(),
            actual: plain_len as u64,
        });
    }
    Ok((header, hlen..hlen + plain_len))
}

fn wrap_aad(session_id: &str) -> Vec<u8> {
    [WRAP_AAD_PREFIX, session_id.as_bytes()].concat()
}

/// Wraps `dek` for `session_id`: `0x01 ‖ nonce(12, random) ‖ ChaCha20-Poly1305(kek)`
/// with AAD `"lucid-dek-v1\0" ‖ session id`, 61 bytes. The nonce is random because a
/// KEK wraps few keys (one per session), far below the 2^32 random-nonce limit of
/// NIST SP 800-38D.
pub fn wrap_data_key(kek: &Kek, dek: &DataKey, session_id: &str, rng: &dyn SecureRandom) -> Result<Vec<u8>, SealError> {
    crate::chunk::validate_session_id(session_id)?;
    let mut nonce = [0u8; 12];
    rng.fill(&mut nonce).map_err(|_| SealError::Rng)?;
    let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
    out.push(WRAP_FORMAT);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&dek.0);
    let tag = aead_key(Cipher::ChaCha20Poly1305, &kek.0)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_aad(session_id)),
            &mut out[13..],
        )
        .map_err(|_| SealError::AeadRefused)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Unwraps a key made by [`wrap_data_key`] for the same session.
pub fn unwrap_data_key(kek: &Kek, wrapped: &[u8], session_id: &str) -> Result<DataKey, SealError> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return Err(SealError::MalformedWrappedKey { reason: "length is not 61 bytes" });
    }
    if wrapped[0] != WRAP_FORMAT {
        return Err(SealError::MalformedWrappedKey { reason: "unknown format byte" });
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&wrapped[1..13]);
    let mut body = wrapped[13..].to_vec();
    let unwrap_err = || SealError::Unwrap { session_id: session_id.to_owned() };
    let opened = aead_key(Cipher::ChaCha20Poly1305, &kek.0)
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(wrap_aad(session_id)), &mut body)
        .map_err(|_| unwrap_err())?;
    let mut key = [0u8; 32];
    key.copy_from_slice(opened);
    // Don't leave a copy of the key in the heap buffer.
    body.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&body);
    Ok(DataKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Flags;
    use ring::rand::SystemRandom;

    fn header(cipher: Cipher, sid: &str, index: u64, payload: &[u8]) -> ChunkHeader {
        ChunkHeader {
            cipher,
            flags: Flags::MEDIA,
            epoch: 3,
            index,
            plain_len: payload.len() as u32,
            cipher_len: (payload.len() + TAG_LEN) as u32,
            session_id: sid.to_owned(),
        }
    }

    #[test]
    fn cipher_ids_and_names() {
        for c in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
            assert_eq!(Cipher::from_id(c.id()), Some(c));
            assert_eq!(Cipher::from_name(c.name()), Some(c));
        }
        assert_eq!(Cipher::from_id(0), None);
        assert_eq!(Cipher::from_id(3), None);
        assert_eq!(Cipher::ChaCha20Poly1305.name(), "CHACHA20-POLY1305");
        assert_eq!(Cipher::Aes256Gcm.name(), "AES-256-GCM");
        // Whatever this CPU says, it must be one of the two.
        let _ = Cipher::preferred_for_this_cpu();
    }

    #[test]
    fn nonce_layout() {
        assert_eq!(chunk_nonce(0x01020304, 0x05060708090a0b0c), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn round_trip_and_tamper_both_ciphers() {
        let rng = SystemRandom::new();
        let key = DataKey::generate(&rng).unwrap();
        let other = DataKey::generate(&rng).unwrap();
        let payload = b"moof and mdat, more or less".to_vec();
        for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
            let h = header(cipher, "sess-1", 7, &payload);
            let sealed = seal_chunk(&key, cipher, &h, &payload).unwrap();
            let (h2, p2) = open_chunk(&key, &sealed).unwrap();
            assert_eq!(h2, h);
            assert_eq!(p2, payload);

            // Every byte of header and ciphertext is covered.
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x01;
                assert!(open_chunk(&key, &bad).is_err(), "{cipher:?}: flipped byte {i} still opened");
            }
            assert!(matches!(open_chunk(&other, &sealed), Err(SealError::Authentication { .. })));

            // The same ciphertext relabelled for another session or index fails: the
            // header is the AAD, and the index is also in the nonce.
            let ct = &sealed[h.encode().len()..];
            for moved in [header(cipher, "sess-2", 7, &payload), header(cipher, "sess-1", 8, &payload)] {
                let forged = [moved.encode(), ct.to_vec()].concat();
                assert!(matches!(open_chunk(&key, &forged), Err(SealError::Authentication { .. })));
            }
            // Wrong cipher asked for, or a wrong cipher_len, is refused before sealing.
            let wrong = if cipher == Cipher::Aes256Gcm { Cipher::ChaCha20Poly1305 } else { Cipher::Aes256Gcm };
            assert!(matches!(seal_chunk(&key, wrong, &h, &payload), Err(SealError::CipherMismatch { .. })));
            assert!(matches!(seal_chunk(&key, cipher, &h, &payload[1..]), Err(SealError::CipherLenMismatch { .. })));
            // Truncations are format errors, not panics.
            for cut in 0..sealed.len() {
                assert!(open_chunk(&key, &sealed[..cut]).is_err());
            }
        }
    }

    #[test]
    fn zstd_payload_length_is_not_checked_against_plain_len() {
        let rng = SystemRandom::new();
        let key = DataKey::generate(&rng).unwrap();
        let compressed = b"pretend-zstd".to_vec();
        let mut h = header(Cipher::ChaCha20Poly1305, "s", 0, &compressed);
        h.flags = Flags::ZSTD;
        h.plain_len = 1000;
        let sealed = seal_chunk(&key, h.cipher, &h, &compressed).unwrap();
        assert_eq!(open_chunk(&key, &sealed).unwrap().1, compressed);
    }

    #[test]
    fn too_large_is_refused() {
        let key = DataKey::from_bytes([7; 32]);
        let payload = vec![0u8; MAX_SEALED_CHUNK];
        let h = header(Cipher::ChaCha20Poly1305, "s", 0, &payload);
        assert!(matches!(seal_chunk(&key, h.cipher, &h, &payload), Err(SealError::TooLarge { .. })));
    }

    #[test]
    fn wrap_round_trip_and_failures() {
        let rng = SystemRandom::new();
        let kek = Kek::generate(&rng).unwrap();
        let dek = DataKey::generate(&rng).unwrap();
        let wrapped = wrap_data_key(&kek, &dek, "sess-1", &rng).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
        assert_eq!(wrapped.len(), 61);
        assert_eq!(wrapped[0], 1);
        assert_eq!(unwrap_data_key(&kek, &wrapped, "sess-1").unwrap().as_bytes(), dek.as_bytes());
        assert!(matches!(unwrap_data_key(&kek, &wrapped, "sess-2"), Err(SealError::Unwrap { .. })));
        let other = Kek::generate(&rng).unwrap();
        assert!(matches!(unwrap_data_key(&other, &wrapped, "sess-1"), Err(SealError::Unwrap { .. })));
        for i in 0..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x80;
            assert!(unwrap_data_key(&kek, &bad, "sess-1").is_err(), "flipped byte {i}");
        }
        assert!(unwrap_data_key(&kek, &wrapped[..60], "sess-1").is_err());
        assert_eq!(format!("{dek:?}"), "DataKey(..)");
    }
}
