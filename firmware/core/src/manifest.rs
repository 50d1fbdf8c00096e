//! The signed session manifest: what a session is (device, kind, times, codec, cipher)
//! and where its log ended (size, root, final checkpoint), as JSON signed with the
//! device's Ed25519 key over the exact serialized bytes.
//!
//! It owns the manifest schema and its signature file. It must not read clocks or the
//! store: every value comes from the caller, and times are RFC 3339 strings the daemon
//! formats.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::note::{Signer, Verifier};

/// The value of `Manifest::format` this code writes and accepts.
pub const MANIFEST_FORMAT: &str = "lucid-manifest-1";

/// Why a manifest could not be produced or was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The JSON does not match the schema, or could not be written.
    #[error("manifest JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `format` is not `lucid-manifest-1`.
    #[error("unsupported manifest format {0:?}")]
    UnsupportedFormat(String),
    /// The signature does not verify over the manifest bytes.
    #[error("manifest signature does not verify")]
    BadSignature,
    /// The signature file is not base64 of 64 bytes followed by a newline.
    #[error("malformed manifest signature file: {reason}")]
    MalformedSignatureFile { reason: &'static str },
}

/// What a session recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// Video from the camera: chunks are CMAF fragments and there is an init segment.
    Camera,
    /// Opaque client data.
    Data,
}

/// The session manifest. Field order is the serialization order, and the signature is
/// over the exact bytes, so it is never re-serialized after signing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// `lucid-` + 16 hex digits, derived from the device key.
    pub device_id: String,
    /// The device's verifier key text.
    pub device_vkey: String,
    /// The session id.
    pub session_id: String,
    /// Human-readable session name.
    pub name: String,
    /// Camera or data.
    pub kind: SessionKind,
    /// Final status as the daemon names it (for example "complete").
    pub status: String,
    /// RFC 3339 UTC creation time.
    pub created_at: String,
    /// RFC 3339 UTC time recording started, if it did.
    pub started_at: Option<String>,
    /// RFC 3339 UTC time recording stopped, if it did.
    pub stopped_at: Option<String>,
    /// True when the session was closed by crash recovery rather than a clean stop.
    pub recovered: bool,
    /// Number of chunks.
    pub chunk_count: u64,
    /// Size of the final tree; equals `chunk_count`.
    pub tree_size: u64,
    /// Lowercase hex of the final tree root.
    pub root: String,
    /// The final signed checkpoint note, verbatim.
    pub final_checkpoint: String,
    /// Cipher name, e.g. "CHACHA20-POLY1305".
    pub cipher: String,
    /// RFC 6381 codec string, e.g. "avc1.42c01f" (camera sessions).
    pub codec: Option<String>,
    /// Video width in pixels.
    pub width: Option<u32>,
    /// Video height in pixels.
    pub height: Option<u32>,
    /// Frames per second.
    pub fps: Option<u32>,
    /// Lowercase hex BLAKE3 of the plaintext init segment (camera sessions).
    pub init_segment_blake3: Option<String>,
    /// The sealing epochs that occur in the session, ascending.
    pub epochs: Vec<u32>,
    /// Which manifest of the session this is: 1 for the first stop or finalize, then 2,
    /// 3, … (a camera session can be started again after a stop). Absent in manifests
    /// signed before the device log existed, which still verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The index in the device log (`devlog`) of this manifest's `SessionHead` event,
    /// whose digest covers these bytes. Absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_log_index: Option<u64>,
}

/// A manifest as signed: the exact JSON bytes and the Ed25519 signature over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedManifest {
    /// `serde_json::to_vec_pretty` of the manifest.
    pub bytes: Vec<u8>,
    /// Ed25519 over `bytes`.
    pub signature: [u8; 64],
}

impl SignedManifest {
    /// The signature file text: base64 of the signature and a newline.
    pub fn signature_file(&self) -> String {
        format!("{}\n", B64.encode(self.signature))
    }
}

/// Parses a signature file (base64 of 64 bytes, then exactly one newline).
pub fn parse_signature_file(text: &[u8]) -> Result<[u8; 64], ManifestError> {
    let bad = |reason| ManifestError::MalformedSignatureFile { reason };
    let body = text.strip_suffix(b"\n").ok_or(bad("does not end with a newline"))?;
    let raw = B64.decode(body).map_err(|_| bad("not standard base64"))?;
    raw.as_slice().try_into().map_err(|_| bad("not a 64-byte signature"))
}

/// Serializes and signs a manifest.
pub fn sign_manifest(manifest: &Manifest, signer: &Signer) -> Result<SignedManifest, ManifestError> {
    if manifest.format != MANIFEST_FORMAT {
        return Err(ManifestError::UnsupportedFormat(manifest.format.clone()));
    }
    let bytes = serde_json::to_vec_pretty(manifest)?;
    let signature = signer.sign(&bytes);
    Ok(SignedManifest { bytes, signature })
}

/// Verifies the signature over the exact bytes first (so nothing unauthenticated is
/// parsed), then parses and checks the format.
pub fn verify_manifest(bytes: &[u8], signature: &[u8; 64], verifier: &Verifier) -> Result<Manifest, ManifestError> {
    verifier.verify(bytes, signature).map_err(|_| ManifestError::BadSignature)?;
    let manifest: Manifest = serde_json::from_slice(bytes)?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(ManifestError::UnsupportedFormat(manifest.format));
    }
    Ok(manifest)
}

#[cfg(test)]
pub(crate) fn sample(signer: &Signer) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT.into(),
        device_id: signer.verifier().device_id(),
        device_vkey: signer.vkey(),
        session_id: "sess-1".into(),
        name: "Front door".into(),
        kind: SessionKind::Camera,
        status: "complete".into(),
        created_at: "2025-01-02T03:04:05Z".into(),
        started_at: Some("2025-01-02T03:04:06Z".into()),
        stopped_at: None,
        recovered: false,
        chunk_count: 0,
        tree_size: 0,
        root: crate::hex::encode(&crate::merkle::empty_root()),
        final_checkpoint: String::new(),
        cipher: "CHACHA20-POLY1305".into(),
        codec: Some("avc1.42c01f".into()),
        width: Some(1280),
        height: Some(720),
        fps: Some(30),
        init_segment_blake3: None,
        epochs: vec![1, 2],
        generation: Some(1),
        device_log_index: Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn signer() -> Signer {
        Signer::from_pkcs8("dev", &Signer::generate_pkcs8(&SystemRandom::new()).unwrap()).unwrap()
    }

    #[test]
    fn sign_and_verify() {
        let s = signer();
        let m = sample(&s);
        let signed = sign_manifest(&m, &s).unwrap();
        assert_eq!(signed.bytes, serde_json::to_vec_pretty(&m).unwrap());
        assert!(std::str::from_utf8(&signed.bytes).unwrap().contains("\"kind\": \"camera\""));
        let sig = parse_signature_file(signed.signature_file().as_bytes()).unwrap();
        assert_eq!(verify_manifest(&signed.bytes, &sig, &s.verifier()).unwrap(), m);

        let mut tampered = signed.bytes.clone();
        let pos = tampered.len() / 2;
        tampered[pos] ^= 0x01;
        assert!(matches!(verify_manifest(&tampered, &sig, &s.verifier()), Err(ManifestError::BadSignature)));
        assert!(matches!(verify_manifest(&signed.bytes, &sig, &signer().verifier()), Err(ManifestError::BadSignature)));
    }

    #[test]
    fn format_and_signature_file_are_checked() {
        let s = signer();
        let mut m = sample(&s);
        m.format = "lucid-manifest-2".into();
        assert!(matches!(sign_manifest(&m, &s), Err(ManifestError::UnsupportedFormat(_))));
        // Signed but of another format, or unknown fields: rejected after the signature.
        let bytes = serde_json::to_vec_pretty(&m).unwrap();
        assert!(matches!(
            verify_manifest(&bytes, &s.sign(&bytes), &s.verifier()),
            Err(ManifestError::UnsupportedFormat(_))
        ));
        // A manifest from before `generation` and `device_log_index` still verifies.
        let mut old = sample(&s);
        (old.generation, old.device_log_index) = (None, None);
        let bytes = serde_json::to_vec_pretty(&old).unwrap();
        assert!(!std::str::from_utf8(&bytes).unwrap().contains("generation"));
        assert_eq!(verify_manifest(&bytes, &s.sign(&bytes), &s.verifier()).unwrap(), old);
        let extra = br#"{"format":"lucid-manifest-1","surprise":1}"#;
        assert!(matches!(verify_manifest(extra, &s.sign(extra), &s.verifier()), Err(ManifestError::Json(_))));
        let good = sign_manifest(&sample(&s), &s).unwrap().signature_file();
        for bad in [good.trim_end().to_owned(), format!("{good}\n"), "AAAA\n".to_owned(), "!!\n".to_owned()] {
            assert!(parse_signature_file(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
