//! lucid-core: every Lucid format that must be reproduced byte for byte by someone who
//! does not trust the device. It owns the chunk header and record encodings, sealing
//! (AEAD) and key wrapping, the RFC 9162 Merkle log, signed checkpoints (C2SP signed
//! notes), the signed session manifest, the evidence bundle with its verifier (with an
//! optional pin on the signing device), clip evidence (a contiguous run of records with
//! their inclusion proofs, `clip`), the check of an exported MP4 against verified
//! evidence (`media`), and the signed OTA update bundle (`bundle`). One more byte format
//! lives here because the daemon and the hil tests must write it identically and it is
//! pure: the SD card's MBR/EBR partition table and the first-boot grow of the data
//! partition (`mbr`).
//!
//! Architecture invariant: this crate does no IO (no files, sockets, clocks or threads)
//! and compiles for every target (`./scripts/test` builds it for `wasm32-unknown-unknown`
//! too, where the web app will run the verifier), so the daemon, the offline verifier and
//! the tests all run the same code. Randomness comes in through `ring::rand::SecureRandom` arguments.
//!
//! The front door re-exports the main types; the modules hold the details.
//!
//! ```
//! use lucid_core::{Checkpoint, Signer, merkle};
//! let rng = ring::rand::SystemRandom::new();
//! let signer = Signer::from_pkcs8("my-device", &Signer::generate_pkcs8(&rng)?)?;
//! let leaves = [merkle::leaf_hash(b"record 0"), merkle::leaf_hash(b"record 1")];
//! let checkpoint = Checkpoint { origin: "lucid/example/s1".into(), size: 2, root: merkle::root(&leaves) };
//! let note = lucid_core::sign_checkpoint(&checkpoint, &signer)?;
//! let verifier = lucid_core::Verifier::from_vkey(&signer.vkey())?;
//! assert_eq!(verifier.verify_checkpoint(&note)?, checkpoint);
//! # Ok::<(), lucid_core::NoteError>(())
//! ```

// Nothing here needs unsafe; forbidding it keeps the audit surface to ring and blake3.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod chunk;
pub mod clip;
pub mod devlog;
pub mod evidence;
pub mod manifest;
pub mod mbr;
pub mod media;
pub mod merkle;
pub mod note;
pub mod seal;

#[cfg(test)]
mod fuzz_seeds;
mod hex;
#[cfg(test)]
mod testutil;

pub use bundle::{
    BundleError, BundleEvent, BundleManifest, BundlePolicy, BundleReader, BundleWriter, KeyPolicy, PayloadHasher,
    PayloadInfo, VerifiedManifest,
};
pub use chunk::{ChunkHeader, ChunkRecord, Flags, FormatError, MAX_SEALED_CHUNK, validate_session_id};
pub use clip::{ClipEvidenceWriter, ClipReport, verify_clip_evidence};
pub use devlog::{
    DeviceEvidenceWriter, DeviceLogError, DeviceLogReport, DeviceLogVerifier, Event, EventKind, verify_device_evidence,
    verify_device_log,
};
pub use evidence::{
    EvidenceError, EvidenceReport, EvidenceWriter, Pin, PinError, VerifyError, verify_evidence, verify_evidence_pinned,
};
pub use manifest::{Manifest, ManifestError, SessionKind, SignedManifest, sign_manifest, verify_manifest};
pub use media::{MediaError, MediaReport, verify_media};
pub use merkle::{Hash, MerkleError, MerkleTree};
pub use note::{Checkpoint, NoteError, Signer, Verifier, device_id_from_public_key, sign_checkpoint};
pub use seal::{Cipher, DataKey, Kek, SealError, open_chunk, seal_chunk, unwrap_data_key, wrap_data_key};
