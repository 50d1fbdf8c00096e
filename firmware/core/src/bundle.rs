//! The OTA update bundle: a fixed header, a signed JSON manifest (board, version,
//! monotonically increasing build number, payload sizes and SHA-256 digests), then the
//! payloads in manifest order and nothing after. Layout byte by byte in docs/design.md.
//!
//! It owns the format, the host-side [`BundleWriter`] and the device-side
//! [`BundleReader`]: a push parser that takes bytes as they arrive and answers with
//! events, so the device checks the signature, board, build and sizes before it writes
//! a single payload byte, and hashes payloads as they stream through. It must not open
//! files, block devices or sockets, and never buffers a payload: memory is bounded by
//! the manifest cap whatever the bundle's size.

use std::collections::BTreeMap;
use std::io::{self, Write};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::hex;
use crate::note::{Signer, Verifier, validate_name};

/// The first 8 bytes of every bundle.
pub const BUNDLE_MAGIC: [u8; 8] = *b"LUCIDOTA";
/// The header's format version this code writes and accepts.
pub const BUNDLE_VERSION: u16 = 1;
/// The value of [`BundleManifest::format`].
pub const BUNDLE_FORMAT: &str = "lucid-ota-1";
/// Fixed header length: magic, version, reserved, manifest length.
pub const HEADER_LEN: usize = 16;
/// Manifests longer than this are refused before they are buffered.
pub const MAX_MANIFEST_LEN: u32 = 64 << 10;
/// Key names in the signature block are at most this many bytes.
pub const MAX_KEY_NAME_LEN: usize = 128;
/// The payload names a bundle may carry, each at most once, all required.
pub const PAYLOAD_NAMES: [&str; 2] = ["boot", "rootfs"];
/// Longest signature block: name length byte, name, key id, signature.
pub const MAX_SIG_BLOCK_LEN: usize = 1 + MAX_KEY_NAME_LEN + 4 + 64;
/// Longest possible head (header, manifest, signature block): what a device adds to
/// its slot sizes to cap a request body.
pub const MAX_HEAD_LEN: u64 = HEADER_LEN as u64 + MAX_MANIFEST_LEN as u64 + MAX_SIG_BLOCK_LEN as u64;
/// Longest `version` and `created_at` strings.
const MAX_TEXT_LEN: usize = 64;

/// Why a bundle was refused (reader) or could not be made (writer). Every variant names
/// the reason in words a device can return to the uploader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The first 8 bytes are not `LUCIDOTA`.
    #[error("not a Lucid OTA bundle (bad magic)")]
    BadMagic,
    /// A header format version other than 1.
    #[error("unsupported bundle format version {0}")]
    UnsupportedVersion(u16),
    /// A header field that must be zero is not, or the manifest length is zero.
    #[error("malformed bundle header: {reason}")]
    BadHeader { reason: &'static str },
    /// The manifest length is over [`MAX_MANIFEST_LEN`].
    #[error("manifest is {len} bytes, over the {max} byte limit")]
    ManifestTooLarge { len: u32, max: u32 },
    /// The signature block is malformed.
    #[error("malformed signature block: {reason}")]
    BadSignatureBlock { reason: &'static str },
    /// The bundle is signed by a key the device does not trust.
    #[error("bundle is signed by an untrusted key {name}+{key_id}")]
    UntrustedKey { name: String, key_id: String },
    /// The signature does not verify with the trusted key of that name and id.
    #[error("bundle signature by {name} does not verify")]
    BadSignature { name: String },
    /// The (signed) manifest is not valid JSON of the schema, or breaks a rule.
    #[error("invalid bundle manifest: {reason}")]
    BadManifest { reason: String },
    /// The manifest is for another board.
    #[error("bundle is for board {bundle:?}, this device is {device:?}")]
    WrongBoard { bundle: String, device: String },
    /// The build number is not above the running one (a downgrade or a replay).
    #[error("bundle build {bundle} is not newer than the running build {current}")]
    NotNewer { bundle: u64, current: u64 },
    /// A payload name outside [`PAYLOAD_NAMES`], or one the device has no slot for.
    #[error("unknown payload {name:?}")]
    UnknownPayload { name: String },
    /// A payload name listed twice.
    #[error("payload {name:?} is listed twice")]
    DuplicatePayload { name: String },
    /// A required payload is not listed.
    #[error("payload {name:?} is missing")]
    MissingPayload { name: String },
    /// A payload larger than the slot partition it is for.
    #[error("payload {name:?} is {size} bytes, larger than its {max} byte slot")]
    PayloadTooLarge { name: String, size: u64, max: u64 },
    /// The stream ended before the bundle did.
    #[error("bundle is truncated: ended in {at}")]
    Truncated { at: &'static str },
    /// Bytes after the last payload.
    #[error("bundle has trailing bytes after the last payload")]
    TrailingBytes,
    /// A payload's SHA-256 is not the one in the manifest.
    #[error("payload {name:?} digest mismatch: manifest says {expected}, got {actual}")]
    DigestMismatch { name: String, expected: String, actual: String },
    /// The reader already failed; it accepts nothing more.
    #[error("bundle reader already failed")]
    Poisoned,
    /// Writer: payload bytes written out of order, too many or too few.
    #[error("bundle writer: {reason}")]
    WriterMisuse { reason: String },
    /// Writer: the output failed.
    #[error("writing bundle: {0}")]
    Io(String),
}

impl From<io::Error> for BundleError {
    fn from(e: io::Error) -> Self {
        BundleError::Io(e.to_string())
    }
}

/// One payload as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadInfo {
    /// `boot` or `rootfs`.
    pub name: String,
    /// Exact byte length in the bundle.
    pub size: u64,
    /// Lowercase hex SHA-256 of the payload bytes.
    pub sha256: String,
}

/// The signed bundle manifest. Field order is the serialization order; the signature
/// covers the exact bytes, so a manifest is never re-serialized after signing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The board this bundle is built for, e.g. `qemu-aarch64-virt`.
    pub board: String,
    /// Human version text, e.g. `0.3.0`.
    pub version: String,
    /// Monotonically increasing build number; a device installs only a higher one.
    pub build: u64,
    /// RFC 3339 UTC time the bundle was made.
    pub created_at: String,
    /// Payloads in the order their bytes follow the signature block.
    pub payloads: Vec<PayloadInfo>,
}

impl BundleManifest {
    /// Checks every rule the reader enforces on a signed manifest (apart from the
    /// device's own board/build/slot policy).
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |reason: String| Err(BundleError::BadManifest { reason });
        if self.format != BUNDLE_FORMAT {
            return bad(format!("unsupported format {:?}", self.format));
        }
        if validate_name(&self.board).is_err() || self.board.len() > MAX_TEXT_LEN {
            return bad("board must be 1-64 characters without whitespace or '+'".into());
        }
        for (what, v) in [("version", &self.version), ("created_at", &self.created_at)] {
            if v.is_empty() || v.len() > MAX_TEXT_LEN || v.chars().any(|c| c.is_control()) {
                return bad(format!("{what} must be 1-64 characters without control characters"));
            }
        }
        let mut seen = Vec::new();
        let mut total: u64 = 0;
        for p in &self.payloads {
            if !PAYLOAD_NAMES.contains(&p.name.as_str()) {
                return Err(BundleError::UnknownPayload { name: p.name.clone() });
            }
            if seen.contains(&p.name.as_str()) {
                return Err(BundleError::DuplicatePayload { name: p.name.clone() });
            }
            seen.push(p.name.as_str());
            if p.size == 0 {
                return bad(format!("payload {:?} is empty", p.name));
            }
            if hex::decode_32(&p.sha256).is_none() {
                return bad(format!("payload {:?} sha256 is not 64 lowercase hex digits", p.name));
            }
            total = total
                .checked_add(p.size)
                .ok_or_else(|| BundleError::BadManifest { reason: "payload sizes overflow".into() })?;
        }
        for name in PAYLOAD_NAMES {
            if !seen.contains(&name) {
                return Err(BundleError::MissingPayload { name: name.into() });
            }
        }
        Ok(())
    }

    /// Sum of the payload sizes.
    pub fn payload_bytes(&self) -> u64 {
        self.payloads.iter().map(|p| p.size).sum()
    }
}

/// Incremental SHA-256 and length of one payload, for a host that hashes its files
/// before writing the bundle head.
pub struct PayloadHasher {
    ctx: Context,
    size: u64,
}

impl std::fmt::Debug for PayloadHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadHasher").field("size", &self.size).finish_non_exhaustive()
    }
}

impl Default for PayloadHasher {
    fn default() -> Self {
        PayloadHasher { ctx: Context::new(&SHA256), size: 0 }
    }
}

impl PayloadHasher {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
        self.size += data.len() as u64;
    }

    /// The manifest entry for these bytes under `name`.
    pub fn finish(self, name: &str) -> PayloadInfo {
        PayloadInfo { name: name.into(), size: self.size, sha256: hex::encode(self.ctx.finish().as_ref()) }
    }
}

/// The 16-byte header for a manifest of `manifest_len` bytes.
fn header(manifest_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&BUNDLE_MAGIC);
    h[8..10].copy_from_slice(&BUNDLE_VERSION.to_be_bytes());
    h[12..16].copy_from_slice(&manifest_len.to_be_bytes());
    h
}

/// The bundle head: header, manifest JSON and signature block. The signature is
/// Ed25519 over the header and the manifest bytes (everything before the block).
pub fn encode_head(manifest: &BundleManifest, signer: &Signer) -> Result<Vec<u8>, BundleError> {
    manifest.validate()?;
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| BundleError::BadManifest { reason: e.to_string() })?;
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    if len > MAX_MANIFEST_LEN {
        return Err(BundleError::ManifestTooLarge { len, max: MAX_MANIFEST_LEN });
    }
    let name = signer.name().as_bytes();
    if name.len() > MAX_KEY_NAME_LEN {
        return Err(BundleError::BadSignatureBlock { reason: "key name longer than 128 bytes" });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + json.len() + MAX_SIG_BLOCK_LEN);
    out.extend_from_slice(&header(len));
    out.extend_from_slice(&json);
    let sig = signer.sign(&out);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&signer.key_id());
    out.extend_from_slice(&sig);
    Ok(out)
}

/// Writes a bundle to any `io::Write`: the signed head at once, then payload bytes as
/// the caller streams them, checked against the manifest's sizes and digests, so a host
/// never needs a payload in memory whole.
pub struct BundleWriter<W: Write> {
    out: W,
    manifest: BundleManifest,
    index: usize,
    written: u64,
    hasher: Context,
}

impl<W: Write> std::fmt::Debug for BundleWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleWriter")
            .field("index", &self.index)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<W: Write> BundleWriter<W> {
    /// Signs the manifest and writes the head.
    pub fn new(mut out: W, manifest: BundleManifest, signer: &Signer) -> Result<Self, BundleError> {
        out.write_all(&encode_head(&manifest, signer)?)?;
        Ok(BundleWriter { out, manifest, index: 0, written: 0, hasher: Context::new(&SHA256) })
    }

    /// Appends payload bytes; payloads follow each other in manifest order, and a
    /// payload's digest is checked when its last byte is written.
    pub fn write_payload(&mut self, mut data: &[u8]) -> Result<(), BundleError> {
        while !data.is_empty() {
            let Some(p) = self.manifest.payloads.get(self.index) else {
                return Err(BundleError::WriterMisuse { reason: "more payload bytes than the manifest lists".into() });
            };
            let take = (p.size - self.written).min(data.len() as u64) as usize;
            self.out.write_all(&data[..take])?;
            self.hasher.update(&data[..take]);
            self.written += take as u64;
            data = &data[take..];
            if self.written == p.size {
                let actual = hex::encode(std::mem::replace(&mut self.hasher, Context::new(&SHA256)).finish().as_ref());
                if actual != p.sha256 {
                    return Err(BundleError::DigestMismatch {
                        name: p.name.clone(),
                        expected: p.sha256.clone(),
                        actual,
                    });
                }
                self.index += 1;
                self.written = 0;
            }
        }
        Ok(())
    }

    /// Checks every payload was written and returns the output.
    pub fn finish(mut self) -> Result<W, BundleError> {
        if self.index != self.manifest.payloads.len() {
            return Err(BundleError::WriterMisuse { reason: "payloads are incomplete".into() });
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Which signatures a reader accepts.
#[derive(Debug, Clone)]
pub enum KeyPolicy {
    /// Only these keys (a device's trusted OTA keys).
    Trusted(Vec<Verifier>),
    /// Do not check the signature at all: for `lucidd bundle inspect` without a key.
    /// A device must never use this.
    SkipSignatureCheck,
}

/// What a device accepts: its keys, board, running build and slot sizes.
#[derive(Debug, Clone)]
pub struct BundlePolicy {
    /// Which signatures are accepted.
    pub keys: KeyPolicy,
    /// The device's board; `None` accepts any (inspection only).
    pub board: Option<String>,
    /// The running build; the bundle's must be strictly greater. `None`: no check.
    pub current_build: Option<u64>,
    /// Capacity in bytes of the partition each payload name is written to; a name not
    /// listed here is refused. `None`: no check (inspection only).
    pub capacity: Option<BTreeMap<String, u64>>,
}

/// A manifest whose signature, board, build and sizes have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest {
    /// The manifest.
    pub manifest: BundleManifest,
    /// The exact manifest bytes as signed.
    pub bytes: Vec<u8>,
    /// The signing key's name, and `None` if the signature was not checked.
    pub signed_by: Option<String>,
    /// The signing key's C2SP key id in hex.
    pub key_id: String,
    /// Length of the head (header, manifest, signature block): with the payload sizes,
    /// the whole bundle's length.
    pub head_len: u64,
}

/// What the reader found in the bytes just fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleEvent<'a> {
    /// The head is complete and passed every check: payload bytes may now be written.
    Manifest(Box<VerifiedManifest>),
    /// The next bytes belong to payload `index`.
    PayloadStart { index: usize },
    /// Bytes of payload `index`, in order (slices of the input just fed).
    Data { index: usize, bytes: &'a [u8] },
    /// Payload `index` is complete and its digest matched.
    PayloadEnd { index: usize, sha256: [u8; 32] },
    /// The last payload is complete; any further byte is an error.
    End,
}

#[derive(Debug)]
enum Stage {
    Header,
    Manifest { len: usize },
    SigLen { manifest_len: usize },
    Sig { manifest_len: usize, block_len: usize },
    Payload { index: usize, left: u64 },
    Done,
    Failed,
}

/// The device-side push parser. Feed it bytes as they arrive; it buffers only the
/// head (at most [`MAX_HEAD_LEN`] bytes), verifies it, then passes payload bytes
/// through as [`BundleEvent::Data`] slices while hashing them. Once it returns an error
/// it is poisoned and refuses everything after.
pub struct BundleReader {
    policy: BundlePolicy,
    stage: Stage,
    head: Vec<u8>,
    manifest: Option<BundleManifest>,
    hasher: Context,
    consumed: u64,
}

impl std::fmt::Debug for BundleReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleReader")
            .field("stage", &self.stage)
            .field("consumed", &self.consumed)
            .finish_non_exhaustive()
    }
}

impl BundleReader {
    /// A reader that enforces `policy`.
    pub fn new(policy: BundlePolicy) -> BundleReader {
        BundleReader {
            policy,
            stage: Stage::Header,
            head: Vec::with_capacity(HEADER_LEN),
            manifest: None,
            hasher: Context::new(&SHA256),
            consumed: 0,
        }
    }

    /// Bytes accepted so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The verified manifest, once the head has passed.
    pub fn manifest(&self) -> Option<&BundleManifest> {
        self.manifest.as_ref()
    }

    /// True once the last payload is complete.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Takes the next bytes of the stream and returns what they completed.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Result<Vec<BundleEvent<'a>>, BundleError> {
        if matches!(self.stage, Stage::Failed) {
            return Err(BundleError::Poisoned);
        }
        let mut events = Vec::new();
        match self.feed_inner(input, &mut events) {
            Ok(()) => Ok(events),
            Err(e) => {
                self.stage = Stage::Failed;
                Err(e)
            }
        }
    }

    /// Declares the end of the stream: an error unless the last payload completed.
    pub fn finish(&self) -> Result<(), BundleError> {
        let at = match self.stage {
            Stage::Done => return Ok(()),
            Stage::Failed => return Err(BundleError::Poisoned),
            Stage::Header => "the header",
            Stage::Manifest { .. } => "the manifest",
            Stage::SigLen { .. } | Stage::Sig { .. } => "the signature block",
            Stage::Payload { .. } => "a payload",
        };
        Err(BundleError::Truncated { at })
    }

    /// Moves bytes from `input` into the head buffer until it holds `want` bytes.
    /// Returns whether it does.
    fn fill_head(&mut self, input: &mut &[u8], want: usize) -> bool {
        let need = want.saturating_sub(self.head.len());
        let take = need.min(input.len());
        self.head.extend_from_slice(&input[..take]);
        self.consumed += take as u64;
        *input = &input[take..];
        self.head.len() == want
    }

    fn feed_inner<'a>(&mut self, mut input: &'a [u8], events: &mut Vec<BundleEvent<'a>>) -> Result<(), BundleError> {
        loop {
            match self.stage {
                Stage::Header => {
                    // Check the magic as soon as its bytes arrive, so a wrong file is
                    // refused at once rather than after 16 bytes.
                    let before = self.head.len();
                    if !self.fill_head(&mut input, HEADER_LEN) {
                        let n = self.head.len().min(8);
                        if self.head[before.min(n)..n] != BUNDLE_MAGIC[before.min(n)..n] {
                            return Err(BundleError::BadMagic);
                        }
                        return Ok(());
                    }
                    let h = &self.head;
                    if h[..8] != BUNDLE_MAGIC {
                        return Err(BundleError::BadMagic);
                    }
                    let version = u16::from_be_bytes([h[8], h[9]]);
                    if version != BUNDLE_VERSION {
                        return Err(BundleError::UnsupportedVersion(version));
                    }
                    if h[10..12] != [0, 0] {
                        return Err(BundleError::BadHeader { reason: "reserved bytes are not zero" });
                    }
                    let len = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
                    if len == 0 {
                        return Err(BundleError::BadHeader { reason: "manifest length is zero" });
                    }
                    if len > MAX_MANIFEST_LEN {
                        return Err(BundleError::ManifestTooLarge { len, max: MAX_MANIFEST_LEN });
                    }
                    self.stage = Stage::Manifest { len: len as usize };
                }
                Stage::Manifest { len } => {
                    if !self.fill_head(&mut input, HEADER_LEN + len) {
                        return Ok(());
                    }
                    self.stage = Stage::SigLen { manifest_len: len };
                }
                Stage::SigLen { manifest_len } => {
                    if !self.fill_head(&mut input, HEADER_LEN + manifest_len + 1) {
                        return Ok(());
                    }
                    let name_len = self.head[HEADER_LEN + manifest_len] as usize;
                    if name_len == 0 || name_len > MAX_KEY_NAME_LEN {
                        return Err(BundleError::BadSignatureBlock { reason: "key name length is not 1..=128" });
                    }
                    self.stage = Stage::Sig { manifest_len, block_len: 1 + name_len + 4 + 64 };
                }
                Stage::Sig { manifest_len, block_len } => {
                    if !self.fill_head(&mut input, HEADER_LEN + manifest_len + block_len) {
                        return Ok(());
                    }
                    let verified = self.check_head(manifest_len)?;
                    self.head = Vec::new();
                    self.manifest = Some(verified.manifest.clone());
                    events.push(BundleEvent::Manifest(Box::new(verified)));
                    self.start_payload(0, events);
                }
                Stage::Payload { index, left } => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let take = left.min(input.len() as u64) as usize;
                    let (bytes, rest) = input.split_at(take);
                    self.hasher.update(bytes);
                    self.consumed += take as u64;
                    input = rest;
                    events.push(BundleEvent::Data { index, bytes });
                    let left = left - take as u64;
                    self.stage = Stage::Payload { index, left };
                    if left == 0 {
                        let digest = std::mem::replace(&mut self.hasher, Context::new(&SHA256)).finish();
                        let mut actual = [0u8; 32];
                        actual.copy_from_slice(digest.as_ref());
                        let p = &self.manifest.as_ref().expect("manifest is set before payloads").payloads[index];
                        if hex::decode_32(&p.sha256) != Some(actual) {
                            return Err(BundleError::DigestMismatch {
                                name: p.name.clone(),
                                expected: p.sha256.clone(),
                                actual: hex::encode(&actual),
                            });
                        }
                        events.push(BundleEvent::PayloadEnd { index, sha256: actual });
                        self.start_payload(index + 1, events);
                    }
                }
                Stage::Done => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    return Err(BundleError::TrailingBytes);
                }
                Stage::Failed => return Err(BundleError::Poisoned),
            }
        }
    }

    fn start_payload(&mut self, index: usize, events: &mut Vec<BundleEvent<'_>>) {
        let m = self.manifest.as_ref().expect("manifest is set before payloads");
        match m.payloads.get(index) {
            Some(p) => {
                self.stage = Stage::Payload { index, left: p.size };
                events.push(BundleEvent::PayloadStart { index });
            }
            None => {
                self.stage = Stage::Done;
                events.push(BundleEvent::End);
            }
        }
    }

    /// The checks on a complete head, in order: signature over the exact bytes (so
    /// nothing unauthenticated is parsed), then the schema, board, build and sizes.
    fn check_head(&self, manifest_len: usize) -> Result<VerifiedManifest, BundleError> {
        let signed = &self.head[..HEADER_LEN + manifest_len];
        let block = &self.head[HEADER_LEN + manifest_len..];
        let name_len = block[0] as usize;
        let name = std::str::from_utf8(&block[1..1 + name_len])
            .map_err(|_| BundleError::BadSignatureBlock { reason: "key name is not UTF-8" })?;
        let key_id: [u8; 4] = block[1 + name_len..5 + name_len].try_into().expect("4 bytes");
        let sig = &block[5 + name_len..];
        let key_id_hex = hex::encode(&key_id);
        let signed_by = match &self.policy.keys {
            KeyPolicy::Trusted(keys) => {
                let key = keys
                    .iter()
                    .find(|k| k.name() == name && k.key_id() == key_id)
                    .ok_or_else(|| BundleError::UntrustedKey { name: name.to_owned(), key_id: key_id_hex.clone() })?;
                key.verify(signed, sig).map_err(|_| BundleError::BadSignature { name: name.to_owned() })?;
                Some(name.to_owned())
            }
            KeyPolicy::SkipSignatureCheck => None,
        };
        let bytes = self.head[HEADER_LEN..HEADER_LEN + manifest_len].to_vec();
        let manifest: BundleManifest =
            serde_json::from_slice(&bytes).map_err(|e| BundleError::BadManifest { reason: e.to_string() })?;
        manifest.validate()?;
        if let Some(board) = &self.policy.board
            && &manifest.board != board
        {
            return Err(BundleError::WrongBoard { bundle: manifest.board, device: board.clone() });
        }
        if let Some(current) = self.policy.current_build
            && manifest.build <= current
        {
            return Err(BundleError::NotNewer { bundle: manifest.build, current });
        }
        if let Some(capacity) = &self.policy.capacity {
            for p in &manifest.payloads {
                let max = *capacity.get(&p.name).ok_or_else(|| BundleError::UnknownPayload { name: p.name.clone() })?;
                if p.size > max {
                    return Err(BundleError::PayloadTooLarge { name: p.name.clone(), size: p.size, max });
                }
            }
        }
        Ok(VerifiedManifest { manifest, bytes, signed_by, key_id: key_id_hex, head_len: self.head.len() as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;

    fn signer(name: &str) -> Signer {
        Signer::from_pkcs8(name, &Signer::generate_pkcs8(&SystemRandom::new()).unwrap()).unwrap()
    }

    fn payloads() -> (Vec<u8>, Vec<u8>) {
        let boot: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let rootfs: Vec<u8> = (0..5000u32).map(|i| (i * 13 + 1) as u8).collect();
        (boot, rootfs)
    }

    fn manifest_for(board: &str, build: u64, boot: &[u8], rootfs: &[u8]) -> BundleManifest {
        let info = |name: &str, data: &[u8]| {
            let mut h = PayloadHasher::default();
            h.update(data);
            h.finish(name)
        };
        BundleManifest {
            format: BUNDLE_FORMAT.into(),
            board: board.into(),
            version: "1.2.3".into(),
            build,
            created_at: "2025-01-02T03:04:05Z".into(),
            payloads: vec![info("boot", boot), info("rootfs", rootfs)],
        }
    }

    fn bundle_with(s: &Signer, m: BundleManifest, boot: &[u8], rootfs: &[u8]) -> Vec<u8> {
        let mut w = BundleWriter::new(Vec::new(), m, s).unwrap();
        w.write_payload(boot).unwrap();
        w.write_payload(rootfs).unwrap();
        w.finish().unwrap()
    }

    fn bundle(s: &Signer) -> Vec<u8> {
        let (boot, rootfs) = payloads();
        bundle_with(s, manifest_for("qemu-aarch64-virt", 7, &boot, &rootfs), &boot, &rootfs)
    }

    fn policy(s: &Signer) -> BundlePolicy {
        BundlePolicy {
            keys: KeyPolicy::Trusted(vec![s.verifier()]),
            board: Some("qemu-aarch64-virt".into()),
            current_build: Some(5),
            capacity: Some([("boot".to_string(), 4096u64), ("rootfs".to_string(), 8192u64)].into()),
        }
    }

    /// What a whole read produced: payload bytes by index, the manifest, and the result.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        manifest: Option<BundleManifest>,
        data: Vec<Vec<u8>>,
        ended: Vec<usize>,
        result: Result<(), BundleError>,
    }

    fn read_chunked(policy: BundlePolicy, bytes: &[u8], cuts: &[usize]) -> Outcome {
        let mut r = BundleReader::new(policy);
        let mut out = Outcome { manifest: None, data: Vec::new(), ended: Vec::new(), result: Ok(()) };
        let mut pieces = Vec::new();
        let mut last = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts {
            pieces.push(&bytes[last..c]);
            last = c;
        }
        pieces.push(&bytes[last..]);
        for piece in pieces {
            match r.feed(piece) {
                Ok(events) => {
                    for e in events {
                        match e {
                            BundleEvent::Manifest(m) => {
                                assert!(out.data.is_empty(), "manifest before any data");
                                out.manifest = Some(m.manifest);
                            }
                            BundleEvent::PayloadStart { index } => {
                                assert_eq!(index, out.data.len());
                                out.data.push(Vec::new());
                            }
                            BundleEvent::Data { index, bytes } => out.data[index].extend_from_slice(bytes),
                            BundleEvent::PayloadEnd { index, .. } => out.ended.push(index),
                            BundleEvent::End => {}
                        }
                    }
                }
                Err(e) => {
                    out.result = Err(e);
                    return out;
                }
            }
        }
        out.result = r.finish();
        out
    }

    fn read(policy: BundlePolicy, bytes: &[u8]) -> Outcome {
        read_chunked(policy, bytes, &[])
    }

    #[test]
    fn round_trip() {
        let s = signer("lucid-ota-dev");
        let b = bundle(&s);
        let o = read(policy(&s), &b);
        assert_eq!(o.result, Ok(()));
        let (boot, rootfs) = payloads();
        assert_eq!(o.data, vec![boot, rootfs]);
        assert_eq!(o.ended, vec![0, 1]);
        assert_eq!(o.manifest.unwrap().build, 7);
        // Exact head layout.
        assert_eq!(&b[..8], b"LUCIDOTA");
        assert_eq!(&b[8..12], &[0, 1, 0, 0]);
        let mlen = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
        let m: BundleManifest = serde_json::from_slice(&b[16..16 + mlen]).unwrap();
        assert_eq!(m.board, "qemu-aarch64-virt");
        let block = &b[16 + mlen..];
        assert_eq!(block[0] as usize, "lucid-ota-dev".len());
        assert_eq!(&block[1..14], b"lucid-ota-dev");
        assert_eq!(block[14..18], s.key_id());
        s.verifier().verify(&b[..16 + mlen], &block[18..82]).unwrap();
        assert_eq!(b.len(), 16 + mlen + 82 + 3000 + 5000);
    }

    #[test]
    fn manifest_event_comes_before_any_payload_byte_in_one_feed() {
        let s = signer("k");
        let b = bundle(&s);
        let mut r = BundleReader::new(policy(&s));
        let ev = r.feed(&b).unwrap();
        assert!(matches!(ev[0], BundleEvent::Manifest(_)));
        assert!(matches!(ev[1], BundleEvent::PayloadStart { index: 0 }));
        assert!(matches!(ev.last(), Some(BundleEvent::End)));
        assert!(r.is_done());
        assert_eq!(r.consumed(), b.len() as u64);
    }

    fn head_len(b: &[u8]) -> usize {
        16 + u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize
            + 1
            + b[16 + u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize] as usize
            + 68
    }

    /// A rejection at the head: no Data event was ever produced.
    fn rejected_before_data(o: &Outcome) -> bool {
        o.result.is_err() && o.data.iter().all(Vec::is_empty) && o.manifest.is_none()
    }

    #[test]
    fn bad_magic_version_and_header() {
        let s = signer("k");
        let b = bundle(&s);
        let mut x = b.clone();
        x[0] = b'X';
        assert_eq!(read(policy(&s), &x).result, Err(BundleError::BadMagic));
        // The magic is refused from its first wrong byte.
        assert_eq!(BundleReader::new(policy(&s)).feed(b"LUX").unwrap_err(), BundleError::BadMagic);
        let mut x = b.clone();
        x[9] = 2;
        assert_eq!(read(policy(&s), &x).result, Err(BundleError::UnsupportedVersion(2)));
        let mut x = b.clone();
        x[11] = 1;
        assert!(matches!(read(policy(&s), &x).result, Err(BundleError::BadHeader { .. })));
        let mut x = b[..16].to_vec();
        x[12..16].copy_from_slice(&0u32.to_be_bytes());
        assert!(matches!(read(policy(&s), &x).result, Err(BundleError::BadHeader { .. })));
    }

    #[test]
    fn oversized_manifest_is_refused_from_the_header() {
        let s = signer("k");
        let mut x = bundle(&s)[..16].to_vec();
        x[12..16].copy_from_slice(&(MAX_MANIFEST_LEN + 1).to_be_bytes());
        let mut r = BundleReader::new(policy(&s));
        assert_eq!(
            r.feed(&x).unwrap_err(),
            BundleError::ManifestTooLarge { len: MAX_MANIFEST_LEN + 1, max: MAX_MANIFEST_LEN }
        );
        assert_eq!(r.feed(b"more").unwrap_err(), BundleError::Poisoned);
    }

    #[test]
    fn signature_and_keys() {
        let s = signer("lucid-ota-dev");
        let b = bundle(&s);
        // Untrusted: a different key with the same name.
        let other = signer("lucid-ota-dev");
        let o = read(policy(&other), &b);
        assert!(matches!(o.result, Err(BundleError::UntrustedKey { .. })), "{:?}", o.result);
        assert!(rejected_before_data(&o));
        // A flipped manifest byte (still valid JSON) breaks the signature.
        let mut x = b.clone();
        let pos = x.windows(5).position(|w| w == b"1.2.3").unwrap();
        x[pos] = b'9';
        let o = read(policy(&s), &x);
        assert_eq!(o.result, Err(BundleError::BadSignature { name: "lucid-ota-dev".into() }));
        assert!(rejected_before_data(&o));
        // A flipped signature byte.
        let mut x = b.clone();
        x[head_len(&b) - 1] ^= 1;
        assert!(matches!(read(policy(&s), &x).result, Err(BundleError::BadSignature { .. })));
        // A zero-length key name.
        let mut x = b.clone();
        let mlen = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
        x[16 + mlen] = 0;
        assert!(matches!(read(policy(&s), &x).result, Err(BundleError::BadSignatureBlock { .. })));
        // Inspection without a key reads the same bundle.
        let mut p = policy(&other);
        p.keys = KeyPolicy::SkipSignatureCheck;
        assert_eq!(read(p, &b).result, Ok(()));
    }

    #[test]
    fn board_build_and_size_policy() {
        let s = signer("k");
        let (boot, rootfs) = payloads();
        let b = bundle_with(&s, manifest_for("raspberrypi4", 7, &boot, &rootfs), &boot, &rootfs);
        let o = read(policy(&s), &b);
        assert_eq!(
            o.result,
            Err(BundleError::WrongBoard { bundle: "raspberrypi4".into(), device: "qemu-aarch64-virt".into() })
        );
        assert!(rejected_before_data(&o));
        for build in [4, 5] {
            let b = bundle_with(&s, manifest_for("qemu-aarch64-virt", build, &boot, &rootfs), &boot, &rootfs);
            let o = read(policy(&s), &b);
            assert_eq!(o.result, Err(BundleError::NotNewer { bundle: build, current: 5 }));
            assert!(rejected_before_data(&o));
        }
        let big = vec![1u8; 4097];
        let b = bundle_with(&s, manifest_for("qemu-aarch64-virt", 9, &big, &rootfs), &big, &rootfs);
        let o = read(policy(&s), &b);
        assert_eq!(o.result, Err(BundleError::PayloadTooLarge { name: "boot".into(), size: 4097, max: 4096 }));
        assert!(rejected_before_data(&o));
        // A device without a slot for a payload name refuses it.
        let mut p = policy(&s);
        p.capacity.as_mut().unwrap().remove("rootfs");
        assert_eq!(read(p, &bundle(&s)).result, Err(BundleError::UnknownPayload { name: "rootfs".into() }));
    }

    /// Signs a manifest the writer would refuse, by building the head by hand.
    fn raw_head(s: &Signer, json: &[u8]) -> Vec<u8> {
        let mut out = header(json.len() as u32).to_vec();
        out.extend_from_slice(json);
        let sig = s.sign(&out);
        out.push(s.name().len() as u8);
        out.extend_from_slice(s.name().as_bytes());
        out.extend_from_slice(&s.key_id());
        out.extend_from_slice(&sig);
        out
    }

    #[test]
    fn payload_names_are_checked_even_when_signed() {
        let s = signer("k");
        let (boot, rootfs) = payloads();
        let good = manifest_for("qemu-aarch64-virt", 7, &boot, &rootfs);
        let mut unknown = good.clone();
        unknown.payloads[1].name = "kernel".into();
        let mut dup = good.clone();
        dup.payloads[1].name = "boot".into();
        let mut missing = good.clone();
        missing.payloads.pop();
        let mut format = good.clone();
        format.format = "lucid-ota-2".into();
        let mut badhex = good.clone();
        badhex.payloads[0].sha256 = badhex.payloads[0].sha256.to_uppercase();
        let mut p = policy(&s);
        p.capacity = None;
        for (m, want) in [
            (unknown, Some(BundleError::UnknownPayload { name: "kernel".into() })),
            (dup, Some(BundleError::DuplicatePayload { name: "boot".into() })),
            (missing, Some(BundleError::MissingPayload { name: "rootfs".into() })),
            (format, None),
            (badhex, None),
        ] {
            assert!(encode_head(&m, &s).is_err());
            let o = read(p.clone(), &raw_head(&s, &serde_json::to_vec(&m).unwrap()));
            match want {
                Some(w) => assert_eq!(o.result, Err(w)),
                None => assert!(matches!(o.result, Err(BundleError::BadManifest { .. })), "{:?}", o.result),
            }
            assert!(rejected_before_data(&o));
        }
        // Unknown JSON fields are refused too.
        let mut v = serde_json::to_value(&good).unwrap();
        v["extra"] = 1.into();
        let o = read(p, &raw_head(&s, &serde_json::to_vec(&v).unwrap()));
        assert!(matches!(o.result, Err(BundleError::BadManifest { .. })));
    }

    #[test]
    fn truncation_trailing_bytes_and_digests() {
        let s = signer("k");
        let b = bundle(&s);
        for cut in [0, 5, 16, 40, head_len(&b) - 1, head_len(&b), head_len(&b) + 10, b.len() - 1] {
            let o = read(policy(&s), &b[..cut]);
            assert!(matches!(o.result, Err(BundleError::Truncated { .. })), "cut {cut}: {:?}", o.result);
        }
        let mut x = b.clone();
        x.push(0);
        assert_eq!(read(policy(&s), &x).result, Err(BundleError::TrailingBytes));
        // A flipped byte in each payload is named at that payload's end.
        let hl = head_len(&b);
        for (pos, name) in [(hl + 10, "boot"), (hl + 3000 + 4999, "rootfs")] {
            let mut x = b.clone();
            x[pos] ^= 0x40;
            let o = read(policy(&s), &x);
            assert!(
                matches!(&o.result, Err(BundleError::DigestMismatch { name: n, .. }) if n == name),
                "{:?}",
                o.result
            );
        }
    }

    #[test]
    fn writer_refuses_misuse() {
        let s = signer("k");
        let (boot, rootfs) = payloads();
        let m = manifest_for("qemu-aarch64-virt", 7, &boot, &rootfs);
        let mut w = BundleWriter::new(Vec::new(), m.clone(), &s).unwrap();
        w.write_payload(&boot).unwrap();
        assert!(matches!(w.finish(), Err(BundleError::WriterMisuse { .. })));
        let mut w = BundleWriter::new(Vec::new(), m.clone(), &s).unwrap();
        w.write_payload(&boot).unwrap();
        w.write_payload(&rootfs).unwrap();
        assert!(matches!(w.write_payload(b"x"), Err(BundleError::WriterMisuse { .. })));
        let mut w = BundleWriter::new(Vec::new(), m, &s).unwrap();
        assert!(matches!(w.write_payload(&rootfs[..3000]), Err(BundleError::DigestMismatch { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any chunking of the input gives the same events and the same verdict, for
        /// good bundles and for bundles with one flipped byte anywhere.
        #[test]
        fn chunking_does_not_change_the_outcome(
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            flip in proptest::option::of((any::<usize>(), 1u8..=255)),
            truncate in proptest::option::of(any::<usize>()),
        ) {
            thread_local!(static FIXTURE: (Signer, Vec<u8>) = {
                let s = signer("k");
                let b = bundle(&s);
                (s, b)
            });
            FIXTURE.with(|(s, b)| {
                let mut b = b.clone();
                if let Some((pos, x)) = flip {
                    let i = pos % b.len();
                    b[i] ^= x;
                }
                if let Some(t) = truncate {
                    b.truncate(t % (b.len() + 1));
                }
                let whole = read(policy(s), &b);
                let chunked = read_chunked(policy(s), &b, &cuts);
                // Bytes already passed before an error depend on where the chunks fall,
                // but never on whether the verdict is the same.
                prop_assert_eq!(&whole.result, &chunked.result);
                if whole.result.is_ok() {
                    prop_assert_eq!(&whole, &chunked);
                }
                let per_byte = read_chunked(policy(s), &b, &(0..b.len()).collect::<Vec<_>>());
                prop_assert_eq!(&whole.result, &per_byte.result);
                Ok(())
            })?;
        }
    }
}
