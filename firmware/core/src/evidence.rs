//! The evidence bundle: a reproducible POSIX ustar archive holding everything needed to
//! check a session offline (device key, signed manifest, init segment, checkpoints,
//! records, sealed chunks) and, when the device has recipients, the session's data key
//! encrypted to them (`recipients.age`); its streaming writer, and the verifier.
//!
//! It owns the bundle layout and the order of the verifier's checks. It must not open
//! files or sockets: the writer takes any `io::Write` and the verifier any `io::Read`,
//! and the verifier needs no key but the device's public one (it checks integrity and
//! order, not content, so it never decrypts). For a holder of the data key (a recipient,
//! `lucidd decrypt`), [`open_recorded_chunk`] and [`check_plaintext`] open a chunk of
//! verified evidence only if it is exactly the chunk its verified record describes.
//!
//! The bundle carries its own `device.vkey`, so on its own it proves only that *some*
//! key signed it. A [`Pin`] names the device the reader expects (its verifier key, or its
//! device id); the verifier refuses any other signer as soon as `device.vkey` is read, and
//! the report says whether a pin was checked.

use std::io::{self, Read, Write};

use crate::chunk::{self, ChunkRecord, FormatError, MAX_SEALED_CHUNK};
use crate::hex;
use crate::manifest::{self, Manifest, ManifestError, SignedManifest};
use crate::merkle::{self, MerkleTree};
use crate::note::{self, Checkpoint, NoteError, Verifier};
use crate::seal::Cipher;

/// The exact content of `lucid-evidence/VERSION`.
pub const EVIDENCE_VERSION: &str = "lucid-evidence 1\n";

/// The largest `recipients.age`: an X25519 stanza is about 130 bytes of header, so this
/// holds the age file of several hundred recipients (the daemon allows 64).
pub const MAX_RECIPIENTS_FILE: u64 = 64 << 10;

/// The first line of every age v1 file (age-encryption.org/v1), which `recipients.age` must
/// start with.
pub const AGE_V1_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// A record is at most its fixed part plus a 64-byte session id.
pub(crate) const MAX_RECORD: u64 = 121 + chunk::MAX_SESSION_ID_LEN as u64;

/// The longest log a bundle may hold: 2^22 chunks, 48 days of one-second chunks. The
/// verifier keeps each record (about 250 bytes with its leaf and tree node) until the
/// chunks arrive, so this caps its memory at about 1 GiB however hostile the archive;
/// a manifest claiming more is refused before any record is read. Checkpoints are capped
/// by it too (ascending sizes, none beyond the manifest's tree size), so the number of
/// entries a bundle can have is at most 5 + 3 × (2^22 + 1).
pub const MAX_LOG_SIZE: u64 = 1 << 22;

/// Tar's block size, and its record size (20 blocks, the blocking factor of GNU and BSD
/// tar): an archive may be zero-padded after its end marker up to the next record.
pub(crate) const BLOCK: u64 = 512;
const RECORD: u64 = 20 * BLOCK;

/// The kinds of entry, in the order they must appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Version,
    Vkey,
    Manifest,
    ManifestSig,
    /// Optional: the data key as an age file to the device's recipients.
    Recipients,
    /// Optional: the session head's inclusion proof in the device log
    /// ([`DeviceHeadFile`]).
    DeviceHead,
    Init,
    Checkpoints,
    Records,
    Chunks,
    /// Past the last entry.
    End,
}

impl Section {
    const ALL: [Section; 11] = [
        Section::Version,
        Section::Vkey,
        Section::Manifest,
        Section::ManifestSig,
        Section::Recipients,
        Section::DeviceHead,
        Section::Init,
        Section::Checkpoints,
        Section::Records,
        Section::Chunks,
        Section::End,
    ];

    fn next(self) -> Section {
        Self::ALL[(self as usize + 1).min(Self::ALL.len() - 1)]
    }

    /// Entries larger than this are refused before they are read.
    fn max_size(self) -> u64 {
        match self {
            Section::Version => 64,
            Section::Vkey => 4096,
            Section::Manifest => 1 << 20,
            Section::ManifestSig => 256,
            Section::Recipients => MAX_RECIPIENTS_FILE,
            Section::DeviceHead => 64 << 10,
            Section::Init | Section::Chunks => MAX_SEALED_CHUNK as u64,
            Section::Checkpoints => 64 << 10,
            Section::Records => MAX_RECORD,
            Section::End => 0,
        }
    }

    /// The path of the single-file sections, or the directory of the numbered ones.
    fn path(self) -> &'static str {
        match self {
            Section::Version => "lucid-evidence/VERSION",
            Section::Vkey => "lucid-evidence/device.vkey",
            Section::Manifest => "lucid-evidence/manifest.json",
            Section::ManifestSig => "lucid-evidence/manifest.json.sig",
            Section::Recipients => "lucid-evidence/recipients.age",
            Section::DeviceHead => "lucid-evidence/device-head.json",
            Section::Init => "lucid-evidence/init.mp4",
            Section::Checkpoints => "lucid-evidence/checkpoints/",
            Section::Records => "lucid-evidence/records/",
            Section::Chunks => "lucid-evidence/chunks/",
            Section::End => "",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Section::Checkpoints => ".note",
            Section::Records => ".rec",
            Section::Chunks => ".sealed",
            _ => "",
        }
    }

    fn numbered(self) -> bool {
        matches!(self, Section::Checkpoints | Section::Records | Section::Chunks)
    }
}

/// The path of entry `n` of a section (n is ignored for single-file sections). Numbers
/// are 20 zero-padded digits so lexical order is numeric order in any tool.
fn entry_path(section: Section, n: u64) -> String {
    if section.numbered() { format!("{}{n:020}{}", section.path(), section.suffix()) } else { section.path().into() }
}

/// The section and number of a path, or `None` if the path is not part of the layout.
fn parse_path(path: &str) -> Option<(Section, u64)> {
    for section in &Section::ALL[..Section::ALL.len() - 1] {
        if section.numbered() {
            let digits = path.strip_prefix(section.path()).and_then(|r| r.strip_suffix(section.suffix()));
            if let Some(d) = digits {
                if d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()) {
                    return d.parse().ok().map(|n| (*section, n));
                }
                return None;
            }
        } else if path == section.path() {
            return Some((*section, 0));
        }
    }
    None
}

/// `device-head.json`: the event that put this manifest into the device log (its
/// `SessionHead`, at the manifest's `device_log_index`), a device checkpoint signed at or
/// after it, and the RFC 9162 inclusion proof of the event in that checkpoint's tree. With
/// it the bundle proves on its own that the device logged this manifest as the head of
/// its session; whether a later head exists needs the device log itself (`lucidd verify
/// --device-evidence`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceHeadFile {
    /// The event's index in the device log.
    pub index: u64,
    /// The encoded event, lowercase hex (`lucid_core::devlog::Event::encode`).
    pub event: String,
    /// A device checkpoint note (origin `lucid/<device id>`) whose size exceeds `index`.
    pub checkpoint: String,
    /// The inclusion proof, leaf to root, lowercase hex.
    pub proof: Vec<String>,
}

/// The longest inclusion proof a device head may carry: a tree of 2^64 events.
const MAX_PROOF: usize = 64;

/// Where the session head sits in the device log, as proven by `device-head.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceHeadStanding {
    /// The `SessionHead` event's index.
    pub index: u64,
    /// The size of the signed device checkpoint it was proven against.
    pub checkpoint_size: u64,
}

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The underlying writer failed.
    #[error("writing evidence bundle: {0}")]
    Io(#[from] io::Error),
    /// Entries were added out of the layout's order, or twice.
    #[error("{path} added out of order")]
    OutOfOrder { path: String },
    /// An entry is larger than the verifier accepts.
    #[error("{path} is {size} bytes, over the {max} byte limit")]
    TooLarge { path: String, size: u64, max: u64 },
    /// An entry's content does not parse far enough to know where it goes.
    #[error("{what}: {reason}")]
    BadEntry { what: &'static str, reason: String },
}

/// Writes a bundle entry by entry, in layout order, straight to `W`: a session of any
/// length needs memory for one chunk at a time. Every entry is a regular file with mode
/// 0644, uid/gid 0 and mtime 0, so the same session always yields the same bytes.
pub struct EvidenceWriter<W: Write> {
    w: LayoutWriter<W, Section>,
}

impl<W: Write> std::fmt::Debug for EvidenceWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidenceWriter").field("last", &self.w.last).finish_non_exhaustive()
    }
}

/// An archive layout (session evidence, clip evidence): its sections in the order they
/// must appear, each with its entry path and its size limit.
pub(crate) trait Layout: Copy + Ord {
    fn layout_path(self, n: u64) -> String;
    fn layout_max(self) -> u64;
}

impl Layout for Section {
    fn layout_path(self, n: u64) -> String {
        entry_path(self, n)
    }
    fn layout_max(self) -> u64 {
        self.max_size()
    }
}

/// The tar writer behind every evidence layout: entries strictly in layout order, each
/// within its section's limit, with reproducible headers. The verifiers refuse anything
/// else, so the writers refuse to produce it.
pub(crate) struct LayoutWriter<W: Write, S> {
    tar: tar::Builder<W>,
    pub(crate) last: Option<(S, u64)>,
}

impl<W: Write, S: Layout> LayoutWriter<W, S> {
    pub(crate) fn new(out: W) -> Self {
        LayoutWriter { tar: tar::Builder::new(out), last: None }
    }

    pub(crate) fn append(&mut self, section: S, n: u64, data: &[u8]) -> Result<(), EvidenceError> {
        let path = section.layout_path(n);
        if self.last.is_some_and(|last| (section, n) <= last) {
            return Err(EvidenceError::OutOfOrder { path });
        }
        let (size, max) = (data.len() as u64, section.layout_max());
        if size > max {
            return Err(EvidenceError::TooLarge { path, size, max });
        }
        self.tar.append(&tar_header(&path, size)?, data)?;
        self.last = Some((section, n));
        Ok(())
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub(crate) fn finish(self) -> Result<W, EvidenceError> {
        Ok(self.tar.into_inner()?)
    }
}

impl<W: Write> EvidenceWriter<W> {
    /// Starts a bundle and writes VERSION, device.vkey, manifest.json and its signature.
    pub fn new(out: W, device_vkey: &str, manifest: &SignedManifest) -> Result<Self, EvidenceError> {
        let mut w = EvidenceWriter { w: LayoutWriter::new(out) };
        w.append(Section::Version, 0, EVIDENCE_VERSION.as_bytes())?;
        w.append(Section::Vkey, 0, format!("{device_vkey}\n").as_bytes())?;
        w.append(Section::Manifest, 0, &manifest.bytes)?;
        w.append(Section::ManifestSig, 0, manifest.signature_file().as_bytes())?;
        Ok(w)
    }

    /// Adds the session's data key encrypted to the device's recipients: an age v1 file
    /// (binary, all recipients in one header) whose plaintext is the 32 key bytes. Only
    /// for sessions created while recipients were configured; before the init segment.
    pub fn recipients(&mut self, age_file: &[u8]) -> Result<(), EvidenceError> {
        self.append(Section::Recipients, 0, age_file)
    }

    /// Adds the session head's inclusion proof in the device log, after the recipients
    /// (if any) and before the init segment.
    pub fn device_head(&mut self, file: &DeviceHeadFile) -> Result<(), EvidenceError> {
        let json = serde_json::to_vec_pretty(file)
            .map_err(|e| EvidenceError::BadEntry { what: "device head", reason: e.to_string() })?;
        self.append(Section::DeviceHead, 0, &json)
    }

    /// Adds the plaintext init segment (camera sessions only).
    pub fn init_segment(&mut self, init: &[u8]) -> Result<(), EvidenceError> {
        self.append(Section::Init, 0, init)
    }

    /// Adds a signed checkpoint note; checkpoints must come in ascending size.
    pub fn checkpoint(&mut self, note: &str) -> Result<(), EvidenceError> {
        let size = note::unverified_size(note)
            .map_err(|e| EvidenceError::BadEntry { what: "checkpoint note", reason: e.to_string() })?;
        self.append(Section::Checkpoints, size, note.as_bytes())
    }

    /// Adds a chunk record; records must come in ascending index.
    pub fn record(&mut self, record: &ChunkRecord) -> Result<(), EvidenceError> {
        self.append(Section::Records, record.index, &record.encode())
    }

    /// Adds a sealed chunk, filed under the index in its header; chunks must come in
    /// ascending index, after all records.
    pub fn chunk(&mut self, sealed: &[u8]) -> Result<(), EvidenceError> {
        let header = chunk::sealed_header(sealed)
            .map_err(|e| EvidenceError::BadEntry { what: "sealed chunk", reason: e.to_string() })?;
        self.append(Section::Chunks, header.index, sealed)
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(self) -> Result<W, EvidenceError> {
        self.w.finish()
    }

    fn append(&mut self, section: Section, n: u64, data: &[u8]) -> Result<(), EvidenceError> {
        self.w.append(section, n, data)
    }
}

/// A reproducible ustar header: fixed owner, mode and time.
pub(crate) fn tar_header(path: &str, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// The first reason a bundle fails verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The input is not a readable tar archive.
    #[error("unreadable tar archive: {source}")]
    Archive {
        #[source]
        source: io::Error,
    },
    /// A GNU long name or long link entry (`L`, `K`) or a PAX header (`x`, `g`). A Lucid
    /// bundle is plain ustar (its paths fit the header), and these entries are what the
    /// tar crate would read whole into memory, so they are refused on their header.
    #[error("{kind} entry at byte {offset}: a Lucid bundle has no tar extension headers")]
    ExtensionHeader { kind: &'static str, offset: u64 },
    /// The archive has no end-of-archive marker (two zero blocks) after its last entry.
    #[error("the archive ends at byte {offset} without its end-of-archive marker")]
    MissingEndOfArchive { offset: u64 },
    /// Bytes after the end-of-archive marker other than zero padding to the next 10 KiB
    /// tar record: data hidden where tar tools do not look.
    #[error("data after the end of the archive, at byte {offset}")]
    DataAfterEnd { offset: u64 },
    /// `device-head.json` does not prove that the device logged this manifest.
    #[error("device-head.json: {reason}")]
    BadDeviceHead { reason: String },
    /// The manifest's log is longer than a bundle may be ([`MAX_LOG_SIZE`]).
    #[error("manifest declares {chunk_count} chunks, over the {max} chunk limit")]
    LogTooLarge { chunk_count: u64, max: u64 },
    /// An entry whose path is not part of the layout.
    #[error("unknown entry {path:?}")]
    UnknownEntry { path: String },
    /// An entry that is not a regular file (directory, link, device...).
    #[error("{path} is not a regular file")]
    NotRegularFile { path: String },
    /// The same path twice.
    #[error("duplicate entry {path}")]
    DuplicateEntry { path: String },
    /// An entry before one it must follow (layout order, ascending numbers).
    #[error("{path} is out of order")]
    OutOfOrder { path: String },
    /// An entry larger than its kind can be.
    #[error("{path} is {size} bytes, over the {max} byte limit")]
    EntryTooLarge { path: String, size: u64, max: u64 },
    /// A required entry is absent.
    #[error("missing {path}")]
    MissingEntry { path: String },
    /// VERSION is not `lucid-evidence 1`.
    #[error("unsupported bundle version {found:?}")]
    UnsupportedVersion { found: String },
    /// An entry's content does not parse.
    #[error("{path}: {reason}")]
    MalformedEntry { path: String, reason: String },
    /// device.vkey is not a valid verifier key.
    #[error("device.vkey: {source}")]
    BadDeviceKey {
        #[source]
        source: NoteError,
    },
    /// The manifest signature does not verify with device.vkey.
    #[error("manifest signature does not verify with the bundle's device key")]
    BadManifestSignature,
    /// manifest.device_vkey is not device.vkey.
    #[error("manifest names device key {manifest:?}, bundle has {bundle:?}")]
    DeviceKeyMismatch { manifest: String, bundle: String },
    /// manifest.device_id is not derived from the device key.
    #[error("manifest device id {manifest} is not the key's id {key}")]
    DeviceIdMismatch { manifest: String, key: String },
    /// device.vkey is not the pinned device's key.
    #[error("signer is not the pinned device: expected {expected}, bundle is signed by device {device_id} key {vkey}")]
    PinMismatch { expected: String, device_id: String, vkey: String },
    /// Manifest fields contradict each other.
    #[error("manifest is inconsistent: {reason}")]
    ManifestInconsistent { reason: &'static str },
    /// init.mp4 is present without a digest in the manifest, or its BLAKE3 differs.
    #[error("init.mp4 does not match the manifest's init_segment_blake3")]
    InitSegmentMismatch,
    /// A checkpoint note does not verify with the device key.
    #[error("checkpoint {size}: {source}")]
    BadCheckpointSignature {
        size: u64,
        #[source]
        source: NoteError,
    },
    /// A checkpoint filed under one size says another.
    #[error("checkpoint filed as size {path_size} says size {note_size}")]
    CheckpointSizeMismatch { path_size: u64, note_size: u64 },
    /// A checkpoint of another log.
    #[error("checkpoint {size} has origin {origin:?}, expected {expected:?}")]
    WrongOrigin { size: u64, origin: String, expected: String },
    /// A record does not decode.
    #[error("record {index}: {source}")]
    MalformedRecord {
        index: u64,
        #[source]
        source: FormatError,
    },
    /// A record filed under one index says another.
    #[error("record filed as {path_index} says index {record_index}")]
    MisplacedRecord { path_index: u64, record_index: u64 },
    /// A record of another session.
    #[error("record {index} belongs to session {session_id:?}")]
    ForeignRecord { index: u64, session_id: String },
    /// A record beyond the manifest's chunk count.
    #[error("record {index} is beyond the manifest's {chunk_count} chunks")]
    ExtraRecord { index: u64, chunk_count: u64 },
    /// A gap in the record indices.
    #[error("record {index} is missing")]
    MissingRecord { index: u64 },
    /// Fewer records than the manifest's chunk count: the log was truncated.
    #[error("log truncated: manifest says {expected} chunks, bundle has {found} records")]
    Truncated { expected: u64, found: u64 },
    /// A checkpoint larger than the manifest's log, refused as it arrives.
    #[error("checkpoint {size} is beyond the manifest's tree size {tree_size}")]
    CheckpointBeyondLog { size: u64, tree_size: u64 },
    /// The records' tree root at this size is not the checkpoint's.
    #[error("records do not hash to the root of checkpoint {size}")]
    RootMismatch { size: u64 },
    /// Two successive checkpoints are not consistent.
    #[error("checkpoint {from} is not consistent with checkpoint {to}")]
    Inconsistent { from: u64, to: u64 },
    /// The last checkpoint is not the manifest's final checkpoint.
    #[error("the last checkpoint is not the manifest's final_checkpoint")]
    FinalCheckpointMismatch,
    /// manifest.root is not the root of the records.
    #[error("manifest root does not match the records")]
    ManifestRootMismatch,
    /// A sealed chunk whose header does not decode.
    #[error("chunk {index}: {source}")]
    MalformedChunk {
        index: u64,
        #[source]
        source: FormatError,
    },
    /// A chunk sealed for another session.
    #[error("chunk {index} was sealed for session {session_id:?}")]
    ForeignChunk { index: u64, session_id: String },
    /// A chunk filed under one index whose header says another.
    #[error("chunk filed as {path_index} is sealed as index {header_index}")]
    MisplacedChunk { path_index: u64, header_index: u64 },
    /// A chunk with no record.
    #[error("chunk {index} has no record")]
    ChunkWithoutRecord { index: u64 },
    /// A chunk's BLAKE3 is not its record's: the sealed bytes were changed.
    #[error("chunk {index}: sealed bytes do not match the record's BLAKE3")]
    ChunkDigestMismatch { index: u64 },
    /// A chunk's header or length disagrees with its record.
    #[error("chunk {index}: {source}")]
    ChunkRecordMismatch {
        index: u64,
        #[source]
        source: FormatError,
    },
    /// A recorded chunk is absent.
    #[error("chunk {index} is missing")]
    MissingChunk { index: u64 },
    /// A chunk's inclusion proof against the final checkpoint fails.
    #[error("chunk {index} is not included in the final checkpoint")]
    InclusionFailed { index: u64 },
    /// Clip evidence: a record that does not follow the one before it.
    #[error("record {found} follows record {previous}: a clip's chunks must be contiguous")]
    NotContiguous { previous: u64, found: u64 },
    /// Clip evidence: a record without its inclusion proof.
    #[error("record {index} has no inclusion proof")]
    MissingProof { index: u64 },
    /// Clip evidence: a proof of a chunk whose record is not in the clip.
    #[error("proof {index} has no record in the clip")]
    ProofWithoutRecord { index: u64 },
    /// Clip evidence without a single record.
    #[error("the clip has no records")]
    EmptyClip,
}

/// The signer a reader expects. Without a pin the verifier proves only that the key in
/// the bundle signed it, and anyone can make a key: the reader must then compare the
/// reported device id and key with the device's own (`GET /api/v1/device`, or its console
/// at start-up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Pin {
    /// Any signer; [`EvidenceReport::pin`] says so and callers must tell the reader.
    #[default]
    Unpinned,
    /// Exactly this verifier key: the same key name and Ed25519 public key.
    Vkey(Verifier),
    /// A key whose device id (`lucid-` + 16 hex digits, the first 64 bits of the key's
    /// SHA-256) is this one. Shorter to read aloud than a key, and as good unless someone
    /// spends about 2^64 work on a key with the same prefix; prefer [`Pin::Vkey`].
    DeviceId(String),
}

/// Why a pin could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The verifier key text does not parse.
    #[error("pinned verifier key: {0}")]
    BadVkey(#[source] NoteError),
    /// Not `lucid-` followed by 16 hex digits.
    #[error("pinned device id {0:?} is not lucid- followed by 16 hex digits")]
    BadDeviceId(String),
}

impl Pin {
    /// A pin on verifier key text (`device.vkey`, or `verifier_key` of
    /// `GET /api/v1/device`); surrounding whitespace is ignored.
    pub fn vkey(text: &str) -> Result<Pin, PinError> {
        Verifier::from_vkey(text.trim()).map(Pin::Vkey).map_err(PinError::BadVkey)
    }

    /// A pin on a device id; hex digits in either case.
    pub fn device_id(id: &str) -> Result<Pin, PinError> {
        let id = id.trim().to_ascii_lowercase();
        let ok = id.strip_prefix("lucid-").is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(PinError::BadDeviceId(id));
        }
        Ok(Pin::DeviceId(id))
    }

    /// Whether a pin is set.
    pub fn is_pinned(&self) -> bool {
        !matches!(self, Pin::Unpinned)
    }

    /// Checks the bundle's key against the pin.
    pub fn check(&self, signer: &Verifier) -> Result<(), VerifyError> {
        let (matches, expected) = match self {
            Pin::Unpinned => return Ok(()),
            Pin::Vkey(v) => (v == signer, format!("device {} key {}", v.device_id(), v.vkey())),
            Pin::DeviceId(id) => (*id == signer.device_id(), format!("device {id}")),
        };
        if matches {
            return Ok(());
        }
        Err(VerifyError::PinMismatch { expected, device_id: signer.device_id(), vkey: signer.vkey() })
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceReport {
    /// The session.
    pub session_id: String,
    /// The recording device, derived from its key.
    pub device_id: String,
    /// The key that signed the manifest and every checkpoint (`device.vkey`).
    pub device_vkey: String,
    /// The pin the signer was checked against; [`Pin::Unpinned`] when none was given, in
    /// which case the report proves only that `device_vkey` signed the bundle.
    pub pin: Pin,
    /// Chunks present, recorded, and proven included.
    pub chunk_count: u64,
    /// Checkpoints whose signature, root and consistency were checked.
    pub checkpoints_checked: usize,
    /// Lowercase hex of the final root.
    pub root_hex: String,
    /// The verified manifest.
    pub manifest: Manifest,
    /// SHA-256 of the manifest's bytes as signed (the device log's session head names it).
    pub manifest_sha256: [u8; 32],
    /// Every chunk's record, in log order (index i at position i): each one proven
    /// included in the final checkpoint. [`crate::media`] checks an export against their
    /// plaintext digests.
    pub records: Vec<ChunkRecord>,
    /// `recipients.age` as found, if the bundle has one: the data key encrypted to the
    /// device's recipients. Not signed: only its first line is checked here. A substitute
    /// cannot pass for the real one, because a wrong key opens no chunk (every chunk is
    /// AEAD-sealed and its plaintext digest is in its signed record).
    pub recipients_age: Option<Vec<u8>>,
    /// The head's place in the device log, when the bundle carries `device-head.json`
    /// (bundles made before it do not).
    pub device_head: Option<DeviceHeadStanding>,
}

/// Verifies a bundle read from `r`, streaming: chunks are checked as they arrive and
/// dropped, so memory grows with the number of records, not the size of the media, and
/// the number of records is capped ([`MAX_LOG_SIZE`]). Returns the first failure; see
/// the design document for the order of checks and the limits. Unpinned: any key that
/// signed the bundle is accepted, see [`verify_evidence_pinned`].
pub fn verify_evidence<R: Read>(r: R) -> Result<EvidenceReport, VerifyError> {
    verify_evidence_pinned(r, &Pin::Unpinned)
}

/// [`verify_evidence`], refusing any signer but the pinned one. The pin is checked as soon
/// as `device.vkey` is read (the second entry), before anything it signed.
pub fn verify_evidence_pinned<R: Read>(r: R, pin: &Pin) -> Result<EvidenceReport, VerifyError> {
    let mut v = Verification { pin: pin.clone(), ..Verification::default() };
    walk_archive(r, &mut v)?;
    v.advance(Section::End)?;
    v.report()
}

/// What a bundle's verifier does with each entry [`walk_archive`] hands it. Shared by the
/// session bundle and the clip bundle (`crate::clip`), so both refuse the same hostile
/// archives the same way.
pub(crate) trait EntryVisitor {
    /// Places an entry by its path before any of its data is read: refuses paths outside
    /// the layout, non-regular files (`regular` is false), duplicates and entries out of
    /// order, and returns the largest size this entry may have.
    fn open(&mut self, path: &str, regular: bool) -> Result<u64, VerifyError>;
    /// Takes the data of the entry just opened (at most the size `open` allowed).
    fn data(&mut self, path: &str, data: Vec<u8>) -> Result<(), VerifyError>;
}

/// Reads a bundle's entries in order and hands each to `v`, streaming: no entry larger
/// than `v` allows is read, no tar extension header is obeyed, and the archive must end
/// with its end-of-archive marker and nothing but zero padding after it.
pub(crate) fn walk_archive<R: Read>(r: R, v: &mut impl EntryVisitor) -> Result<(), VerifyError> {
    let mut input = Counted { inner: r, read: 0 };
    let archive_err = |source| VerifyError::Archive { source };
    // Where the last entry's data (padded to a block) ends: the end marker starts there.
    let mut end = 0;
    {
        let mut archive = tar::Archive::new(&mut input);
        // Raw entries: the tar crate then hands GNU long names and PAX headers over as
        // entries instead of reading their (unbounded) data into memory to apply them.
        for entry in archive.entries().map_err(archive_err)?.raw(true) {
            let mut entry = entry.map_err(archive_err)?;
            if let Some(kind) = extension_kind(entry.header().entry_type()) {
                let offset = entry.raw_header_position();
                return Err(VerifyError::ExtensionHeader { kind, offset });
            }
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let max = v.open(&path, entry.header().entry_type() == tar::EntryType::Regular)?;
            let size = entry.size();
            if size > max {
                return Err(VerifyError::EntryTooLarge { path, size, max });
            }
            end = entry.raw_file_position() + size.div_ceil(BLOCK) * BLOCK;
            let mut data = Vec::with_capacity(size as usize);
            (&mut entry).take(max + 1).read_to_end(&mut data).map_err(archive_err)?;
            v.data(&path, data)?;
        }
    }
    check_end_of_archive(&mut input, end)
}

impl EntryVisitor for Verification {
    fn open(&mut self, path: &str, regular: bool) -> Result<u64, VerifyError> {
        let (section, n) = parse_path(path).ok_or_else(|| VerifyError::UnknownEntry { path: path.into() })?;
        if !regular {
            return Err(VerifyError::NotRegularFile { path: path.into() });
        }
        if self.seen(section, n) {
            return Err(VerifyError::DuplicateEntry { path: path.into() });
        }
        if self.last.is_some_and(|last| (section, n) <= last) {
            return Err(VerifyError::OutOfOrder { path: path.into() });
        }
        self.last = Some((section, n));
        Ok(section.max_size())
    }

    fn data(&mut self, path: &str, data: Vec<u8>) -> Result<(), VerifyError> {
        let (section, n) = self.last.unwrap_or_else(|| unreachable!("data follows open"));
        self.advance(section)?;
        self.entry(section, n, path, data)
    }
}

/// The name of a tar extension entry type, or `None` for an ordinary entry.
pub(crate) fn extension_kind(kind: tar::EntryType) -> Option<&'static str> {
    match kind {
        tar::EntryType::GNULongName => Some("GNU long name"),
        tar::EntryType::GNULongLink => Some("GNU long link"),
        tar::EntryType::XHeader => Some("PAX header"),
        tar::EntryType::XGlobalHeader => Some("PAX global header"),
        _ => None,
    }
}

/// A reader that counts what it hands out, so the verifier knows where the tar crate
/// stopped.
pub(crate) struct Counted<R> {
    pub(crate) inner: R,
    pub(crate) read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// After the last entry (whose padded data ends at `end`): the end-of-archive marker, two
/// zero blocks, then nothing but zero padding up to the next 10 KiB tar record. The tar
/// crate stops at the first zero block (or at a clean end of input), so this reads the
/// rest itself, in fixed-size pieces.
pub(crate) fn check_end_of_archive<R: Read>(input: &mut Counted<R>, end: u64) -> Result<(), VerifyError> {
    let archive_err = |source| VerifyError::Archive { source };
    let missing = VerifyError::MissingEndOfArchive { offset: end };
    // Either nothing was read past the entries (input ended) or the first zero block.
    if input.read != end + BLOCK {
        return Err(missing);
    }
    let mut block = [0u8; BLOCK as usize];
    let mut got = 0;
    while got < block.len() {
        match input.read(&mut block[got..]).map_err(archive_err)? {
            0 => return Err(missing),
            n => got += n,
        }
    }
    if let Some(i) = block.iter().position(|&b| b != 0) {
        return Err(VerifyError::DataAfterEnd { offset: end + BLOCK + i as u64 });
    }
    // Zero padding may run to the end of the record the marker ends in.
    let limit = input.read.div_ceil(RECORD) * RECORD;
    let mut buf = [0u8; 8192];
    loop {
        let at = input.read;
        let n = input.read(&mut buf).map_err(archive_err)?;
        if n == 0 {
            return Ok(());
        }
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return Err(VerifyError::DataAfterEnd { offset: at + i as u64 });
        }
        if input.read > limit {
            return Err(VerifyError::DataAfterEnd { offset: limit });
        }
    }
}

/// Checks a signed manifest against the bundle's key (`vkey_text`, parsed as `verifier`)
/// and its fields against each other; `manifest_path` names the entry in errors. Shared
/// by the session and the clip bundle.
pub(crate) fn verify_head(
    vkey_text: &str,
    verifier: Verifier,
    bytes: &[u8],
    sig: &[u8; 64],
    manifest_path: &str,
) -> Result<Head, VerifyError> {
    let malformed = |reason: String| VerifyError::MalformedEntry { path: manifest_path.into(), reason };
    let manifest = manifest::verify_manifest(bytes, sig, &verifier).map_err(|e| match e {
        ManifestError::BadSignature => VerifyError::BadManifestSignature,
        other => malformed(other.to_string()),
    })?;
    if manifest.device_vkey != vkey_text {
        return Err(VerifyError::DeviceKeyMismatch { manifest: manifest.device_vkey, bundle: vkey_text.into() });
    }
    let key_id = verifier.device_id();
    if manifest.device_id != key_id {
        return Err(VerifyError::DeviceIdMismatch { manifest: manifest.device_id, key: key_id });
    }
    chunk::validate_session_id(&manifest.session_id).map_err(|e| malformed(e.to_string()))?;
    if manifest.chunk_count > MAX_LOG_SIZE {
        return Err(VerifyError::LogTooLarge { chunk_count: manifest.chunk_count, max: MAX_LOG_SIZE });
    }
    let inconsistent = |reason| Err(VerifyError::ManifestInconsistent { reason });
    if manifest.tree_size != manifest.chunk_count {
        return inconsistent("tree_size is not chunk_count");
    }
    if Cipher::from_name(&manifest.cipher).is_none() {
        return inconsistent("unknown cipher name");
    }
    let Some(root) = hex::decode_32(&manifest.root) else {
        return inconsistent("root is not 64 lowercase hex digits");
    };
    let init_blake3 = match &manifest.init_segment_blake3 {
        None => None,
        Some(h) => match hex::decode_32(h) {
            Some(d) => Some(d),
            None => return inconsistent("init_segment_blake3 is not 64 lowercase hex digits"),
        },
    };
    let origin = note::session_origin(&manifest.device_id, &manifest.session_id);
    let manifest_sha256 = ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().try_into().expect("32 bytes");
    Ok(Head { verifier, manifest, origin, init_blake3, root, manifest_sha256 })
}

/// Parses `device.vkey` (text ending in one newline) and checks it against the pin.
pub(crate) fn parse_vkey(data: &[u8], path: &str, pin: &Pin) -> Result<(String, Verifier), VerifyError> {
    let text = std::str::from_utf8(data).ok().and_then(|t| t.strip_suffix('\n')).ok_or_else(|| {
        VerifyError::MalformedEntry { path: path.into(), reason: "not UTF-8 text ending in a newline".into() }
    })?;
    let verifier = Verifier::from_vkey(text).map_err(|source| VerifyError::BadDeviceKey { source })?;
    pin.check(&verifier)?;
    Ok((text.to_owned(), verifier))
}

/// Verified manifest context.
pub(crate) struct Head {
    pub(crate) verifier: Verifier,
    pub(crate) manifest: Manifest,
    pub(crate) origin: String,
    pub(crate) init_blake3: Option<[u8; 32]>,
    pub(crate) root: [u8; 32],
    /// SHA-256 of the manifest's bytes as signed: what the device log's session head
    /// names ([`crate::devlog::check_latest`]).
    pub(crate) manifest_sha256: [u8; 32],
}

/// Verification state between entries.
#[derive(Default)]
struct Verification {
    pin: Pin,
    last: Option<(Section, u64)>,
    /// The section whose exit checks have not run yet.
    stage: Option<Section>,
    version: bool,
    vkey: Option<(String, Verifier)>,
    manifest_bytes: Option<Vec<u8>>,
    signature: Option<[u8; 64]>,
    head: Option<Head>,
    recipients: Option<Vec<u8>>,
    device_head: Option<DeviceHeadStanding>,
    init_seen: bool,
    checkpoints: Vec<Checkpoint>,
    /// The text of the last checkpoint only (it must be the manifest's final one): the
    /// others are not needed once parsed, and a note may be 64 KiB.
    last_note: Option<String>,
    records: Vec<ChunkRecord>,
    tree: Option<MerkleTree>,
    chunk_seen: Vec<bool>,
}

fn malformed(section: Section, reason: impl ToString) -> VerifyError {
    VerifyError::MalformedEntry { path: section.path().into(), reason: reason.to_string() }
}

fn missing(section: Section) -> VerifyError {
    VerifyError::MissingEntry { path: section.path().into() }
}

impl Verification {
    /// Whether an entry of this section and number was accepted before. Read from the
    /// state kept anyway (sections' flags, the ascending checkpoints and records, the
    /// chunks' bitmap) rather than a set of paths, so memory does not grow with entries
    /// that are not kept; every earlier entry was accepted, or verification had stopped.
    fn seen(&self, section: Section, n: u64) -> bool {
        match section {
            Section::Version => self.version,
            Section::Vkey => self.vkey.is_some(),
            Section::Manifest => self.manifest_bytes.is_some(),
            Section::ManifestSig => self.signature.is_some(),
            Section::Recipients => self.recipients.is_some(),
            Section::DeviceHead => self.device_head.is_some(),
            Section::Init => self.init_seen,
            Section::Checkpoints => self.checkpoints.binary_search_by_key(&n, |c| c.size).is_ok(),
            Section::Records => self.records.binary_search_by_key(&n, |r| r.index).is_ok(),
            Section::Chunks => self.chunk_seen.get(n as usize) == Some(&true),
            Section::End => false,
        }
    }

    fn head(&self) -> &Head {
        // advance() verifies the head before any later section is processed.
        self.head.as_ref().unwrap_or_else(|| unreachable!("head verified before use"))
    }

    /// Runs the exit checks of every section before `to`, in order. Each check needs
    /// only what came before it, so the first failure reported is the earliest one.
    fn advance(&mut self, to: Section) -> Result<(), VerifyError> {
        let mut stage = self.stage.unwrap_or(Section::Version);
        while stage < to {
            match stage {
                Section::Version if !self.version => return Err(missing(stage)),
                Section::Vkey if self.vkey.is_none() => return Err(missing(stage)),
                Section::Manifest if self.manifest_bytes.is_none() => return Err(missing(stage)),
                Section::ManifestSig => self.verify_head()?,
                Section::Init if self.head().init_blake3.is_some() && !self.init_seen => {
                    return Err(missing(stage));
                }
                Section::Checkpoints if self.checkpoints.is_empty() => return Err(missing(stage)),
                Section::Records => self.verify_log()?,
                Section::Chunks => self.verify_chunks_complete()?,
                _ => {}
            }
            stage = stage.next();
            self.stage = Some(stage);
        }
        Ok(())
    }

    fn entry(&mut self, section: Section, n: u64, path: &str, data: Vec<u8>) -> Result<(), VerifyError> {
        match section {
            Section::Version => {
                if data != EVIDENCE_VERSION.as_bytes() {
                    return Err(VerifyError::UnsupportedVersion { found: String::from_utf8_lossy(&data).into() });
                }
                self.version = true;
            }
            Section::Vkey => self.vkey = Some(parse_vkey(&data, section.path(), &self.pin)?),
            Section::Manifest => self.manifest_bytes = Some(data),
            Section::ManifestSig => {
                self.signature = Some(manifest::parse_signature_file(&data).map_err(|e| malformed(section, e))?);
            }
            Section::Recipients => {
                if !data.starts_with(AGE_V1_MAGIC) {
                    return Err(malformed(section, "not an age v1 file (age-encryption.org/v1)"));
                }
                self.recipients = Some(data);
            }
            Section::DeviceHead => self.device_head = Some(check_device_head(self.head(), &data)?),
            Section::Init => {
                if self.head().init_blake3 != Some(*blake3::hash(&data).as_bytes()) {
                    return Err(VerifyError::InitSegmentMismatch);
                }
                self.init_seen = true;
            }
            Section::Checkpoints => self.checkpoint(n, path, data)?,
            Section::Records => self.record(n, &data)?,
            Section::Chunks => self.chunk(n, &data)?,
            Section::End => {}
        }
        Ok(())
    }

    fn verify_head(&mut self) -> Result<(), VerifyError> {
        let (vkey_text, verifier) = self.vkey.clone().ok_or_else(|| missing(Section::Vkey))?;
        let bytes = self.manifest_bytes.as_deref().ok_or_else(|| missing(Section::Manifest))?;
        let sig = self.signature.ok_or_else(|| missing(Section::ManifestSig))?;
        self.head = Some(verify_head(&vkey_text, verifier, bytes, &sig, Section::Manifest.path())?);
        Ok(())
    }

    fn checkpoint(&mut self, path_size: u64, path: &str, data: Vec<u8>) -> Result<(), VerifyError> {
        let text = String::from_utf8(data)
            .map_err(|_| VerifyError::MalformedEntry { path: path.into(), reason: "not UTF-8".into() })?;
        let head = self.head();
        let cp = head
            .verifier
            .verify_checkpoint(&text)
            .map_err(|source| VerifyError::BadCheckpointSignature { size: path_size, source })?;
        if cp.size != path_size {
            return Err(VerifyError::CheckpointSizeMismatch { path_size, note_size: cp.size });
        }
        if cp.origin != head.origin {
            return Err(VerifyError::WrongOrigin { size: cp.size, origin: cp.origin, expected: head.origin.clone() });
        }
        // Refused now rather than once the records are in, so the checkpoints kept stay
        // within the capped log: sizes ascend and none exceeds the tree size.
        if cp.size > head.manifest.tree_size {
            return Err(VerifyError::CheckpointBeyondLog { size: cp.size, tree_size: head.manifest.tree_size });
        }
        self.checkpoints.push(cp);
        self.last_note = Some(text);
        Ok(())
    }

    fn record(&mut self, index: u64, data: &[u8]) -> Result<(), VerifyError> {
        let record = ChunkRecord::decode(data).map_err(|source| VerifyError::MalformedRecord { index, source })?;
        if record.index != index {
            return Err(VerifyError::MisplacedRecord { path_index: index, record_index: record.index });
        }
        let manifest = &self.head().manifest;
        if record.session_id != manifest.session_id {
            return Err(VerifyError::ForeignRecord { index, session_id: record.session_id });
        }
        if index >= manifest.chunk_count {
            return Err(VerifyError::ExtraRecord { index, chunk_count: manifest.chunk_count });
        }
        self.records.push(record);
        Ok(())
    }

    /// After the last record: the log is complete, and every checkpoint is a head of it.
    fn verify_log(&mut self) -> Result<(), VerifyError> {
        // Records arrive in strictly ascending order, so the first position whose index
        // differs is the first gap.
        if let Some(pos) = self.records.iter().enumerate().position(|(i, r)| r.index != i as u64) {
            return Err(VerifyError::MissingRecord { index: pos as u64 });
        }
        let head = self.head();
        let found = self.records.len() as u64;
        if found < head.manifest.chunk_count {
            return Err(VerifyError::Truncated { expected: head.manifest.chunk_count, found });
        }
        let tree = MerkleTree::from_leaves(&self.records.iter().map(ChunkRecord::leaf_hash).collect::<Vec<_>>());
        // Every checkpoint size is at most the tree size (checked on arrival), which the
        // records now reach.
        for cp in &self.checkpoints {
            if tree.root(cp.size).ok() != Some(cp.root) {
                return Err(VerifyError::RootMismatch { size: cp.size });
            }
        }
        for pair in self.checkpoints.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let ok = tree
                .consistency_proof(a.size, b.size)
                .is_ok_and(|proof| merkle::verify_consistency(a.size, b.size, &a.root, &b.root, &proof).is_ok());
            if !ok {
                return Err(VerifyError::Inconsistent { from: a.size, to: b.size });
            }
        }
        let last_cp = self.checkpoints.last().ok_or_else(|| missing(Section::Checkpoints))?;
        if self.last_note.as_deref() != Some(head.manifest.final_checkpoint.as_str())
            || last_cp.size != head.manifest.tree_size
        {
            return Err(VerifyError::FinalCheckpointMismatch);
        }
        if tree.root(found).ok() != Some(head.root) {
            return Err(VerifyError::ManifestRootMismatch);
        }
        self.chunk_seen = vec![false; self.records.len()];
        self.tree = Some(tree);
        Ok(())
    }

    fn chunk(&mut self, index: u64, sealed: &[u8]) -> Result<(), VerifyError> {
        let header = chunk::sealed_header(sealed).map_err(|source| VerifyError::MalformedChunk { index, source })?;
        if header.session_id != self.head().manifest.session_id {
            return Err(VerifyError::ForeignChunk { index, session_id: header.session_id });
        }
        if header.index != index {
            return Err(VerifyError::MisplacedChunk { path_index: index, header_index: header.index });
        }
        let record = self.records.get(index as usize).ok_or(VerifyError::ChunkWithoutRecord { index })?;
        record.matches_sealed(sealed).map_err(|source| match source {
            FormatError::DigestMismatch => VerifyError::ChunkDigestMismatch { index },
            source => VerifyError::ChunkRecordMismatch { index, source },
        })?;
        self.chunk_seen[index as usize] = true;
        Ok(())
    }

    /// After the last chunk: every record has its chunk, and every chunk is provably in
    /// the final checkpoint.
    fn verify_chunks_complete(&mut self) -> Result<(), VerifyError> {
        if let Some(index) = self.chunk_seen.iter().position(|seen| !seen) {
            return Err(VerifyError::MissingChunk { index: index as u64 });
        }
        let tree = self.tree.as_ref().unwrap_or_else(|| unreachable!("log verified before chunks"));
        let final_cp = self.checkpoints.last().ok_or_else(|| missing(Section::Checkpoints))?;
        for (i, leaf) in tree.leaves().iter().enumerate() {
            let i = i as u64;
            let ok = tree
                .inclusion_proof(i, final_cp.size)
                .is_ok_and(|proof| merkle::verify_inclusion(leaf, i, final_cp.size, &proof, &final_cp.root).is_ok());
            if !ok {
                return Err(VerifyError::InclusionFailed { index: i });
            }
        }
        Ok(())
    }

    fn report(self) -> Result<EvidenceReport, VerifyError> {
        let head = self.head.unwrap_or_else(|| unreachable!("head verified at the end"));
        Ok(EvidenceReport {
            session_id: head.manifest.session_id.clone(),
            device_id: head.manifest.device_id.clone(),
            device_vkey: head.manifest.device_vkey.clone(),
            pin: self.pin,
            chunk_count: self.records.len() as u64,
            checkpoints_checked: self.checkpoints.len(),
            root_hex: hex::encode(&head.root),
            manifest_sha256: head.manifest_sha256,
            manifest: head.manifest,
            records: self.records,
            recipients_age: self.recipients,
            device_head: self.device_head,
        })
    }
}

/// Checks `device-head.json` against the verified manifest: a device checkpoint signed by
/// the manifest's key for this device's log, the event at the manifest's
/// `device_log_index` being this manifest's `SessionHead` (session, generation, tree size,
/// root, SHA-256 of the signed manifest), and its inclusion in that checkpoint.
fn check_device_head(head: &Head, data: &[u8]) -> Result<DeviceHeadStanding, VerifyError> {
    use crate::devlog::{self, EventKind};
    let bad = |reason: String| VerifyError::BadDeviceHead { reason };
    let file: DeviceHeadFile = serde_json::from_slice(data).map_err(|e| bad(format!("not the expected JSON: {e}")))?;
    let m = &head.manifest;
    let (Some(generation), Some(logged_at)) = (m.generation, m.device_log_index) else {
        return Err(bad("the manifest has no generation or device_log_index to place it".into()));
    };
    if file.index != logged_at {
        return Err(bad(format!("event {} is not the manifest's device_log_index {logged_at}", file.index)));
    }
    let cp = head.verifier.verify_checkpoint(&file.checkpoint).map_err(|e| bad(format!("device checkpoint: {e}")))?;
    let origin = devlog::device_origin(&m.device_id);
    if cp.origin != origin {
        return Err(bad(format!("checkpoint origin {:?} is not {origin:?}", cp.origin)));
    }
    let event = hex::decode(&file.event, devlog::MAX_EVENT).ok_or_else(|| bad("event is not lowercase hex".into()))?;
    let decoded = devlog::Event::decode(&event).map_err(|e| bad(format!("event: {e}")))?;
    let EventKind::SessionHead { session_id, generation: g, tree_size, root, manifest_digest } = decoded.kind else {
        return Err(bad(format!("event {} is not a session head", file.index)));
    };
    let differs = if session_id != m.session_id {
        Some("session")
    } else if g != generation {
        Some("generation")
    } else if tree_size != m.tree_size {
        Some("tree size")
    } else if root != head.root {
        Some("root")
    } else if manifest_digest != head.manifest_sha256 {
        Some("manifest (SHA-256)")
    } else {
        None
    };
    if let Some(what) = differs {
        return Err(bad(format!("the head event names another {what} than this manifest")));
    }
    if file.proof.len() > MAX_PROOF {
        return Err(bad(format!("a proof of {} hashes", file.proof.len())));
    }
    let proof = file
        .proof
        .iter()
        .map(|h| hex::decode_32(h).ok_or_else(|| bad("a proof hash is not 64 lowercase hex digits".into())))
        .collect::<Result<Vec<_>, _>>()?;
    merkle::verify_inclusion(&devlog::event_leaf(&event), file.index, cp.size, &proof, &cp.root).map_err(|e| {
        bad(format!("event {} is not included in the device checkpoint of size {}: {e}", file.index, cp.size))
    })?;
    Ok(DeviceHeadStanding { index: file.index, checkpoint_size: cp.size })
}

/// Why a chunk of verified evidence did not open (`lucidd decrypt`).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The sealed bytes are not the ones the verified record describes (the bundle changed
    /// after it was verified, or the chunk is not the record's).
    #[error("chunk {index} is not the chunk its verified record describes: {source}")]
    NotRecorded { index: u64, source: FormatError },
    /// The AEAD refused the chunk: the key is not this session's.
    #[error("chunk {index} does not open with this data key (it is not this session's key)")]
    WrongKey { index: u64 },
    /// The opened (and, by the caller, decompressed) plaintext is not the recorded one.
    #[error("chunk {index}: plaintext does not match its record's plain_blake3")]
    PlaintextMismatch { index: u64 },
}

/// Opens a sealed chunk from verified evidence in place, after checking it is exactly the
/// chunk `record` describes (so a bundle swapped after verification is caught here).
/// Returns the header (its `ZSTD` flag says whether the payload is compressed; the caller
/// decompresses, this crate does not) and the payload's range in `sealed`.
pub fn open_recorded_chunk(
    key: &crate::seal::DataKey,
    record: &ChunkRecord,
    sealed: &mut [u8],
) -> Result<(chunk::ChunkHeader, std::ops::Range<usize>), OpenError> {
    let index = record.index;
    record.matches_sealed(sealed).map_err(|source| OpenError::NotRecorded { index, source })?;
    crate::seal::open_chunk_in_place(key, sealed).map_err(|_| OpenError::WrongKey { index })
}

/// Checks a chunk's final plaintext (decompressed if it was compressed) against its
/// verified record, so the output of a decryption is exactly what the device recorded.
pub fn check_plaintext(record: &ChunkRecord, plain: &[u8]) -> Result<(), OpenError> {
    if plain.len() != record.plain_len as usize || *blake3::hash(plain).as_bytes() != record.plain_blake3 {
        return Err(OpenError::PlaintextMismatch { index: record.index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::Signer;
    use crate::testutil::{Fixture, entries, tar_of};

    fn fixture() -> Fixture {
        Fixture::new("sess-1", 20, &[5, 12, 20])
    }

    fn verify_entries(e: &[(String, Vec<u8>)]) -> Result<EvidenceReport, VerifyError> {
        verify_evidence(&tar_of(e)[..])
    }

    fn find(e: &[(String, Vec<u8>)], path: &str) -> usize {
        e.iter().position(|(p, _)| p == path).unwrap_or_else(|| panic!("no {path}"))
    }

    /// `recipients.age` (issue #10): optional, after the signature and before the init
    /// segment, handed out by the report; anything but an age v1 file is refused, and
    /// only the recorded chunk opens, with the session's key, to the recorded plaintext.
    #[test]
    fn recipients_file_is_optional_placed_and_reported() {
        let f = fixture();
        assert_eq!(verify_entries(&entries(&f.bundle())).unwrap().recipients_age, None);
        let age_file = [AGE_V1_MAGIC, b"-> X25519 stanza\n--- mac\n"].concat();
        let mut e = entries(&f.bundle());
        let at = find(&e, Section::Init.path());
        e.insert(at, (Section::Recipients.path().to_owned(), age_file.clone()));
        let report = verify_entries(&e).unwrap();
        assert_eq!(report.recipients_age.as_deref(), Some(&age_file[..]));

        // The writer puts it there, and refuses it after the init segment.
        let mut w = EvidenceWriter::new(Vec::new(), &f.signer.vkey(), &f.signed_manifest()).unwrap();
        w.recipients(&age_file).unwrap();
        w.init_segment(&f.init).unwrap();
        assert!(matches!(w.recipients(&age_file), Err(EvidenceError::OutOfOrder { .. })));

        let mut bad = e.clone();
        bad[at].1 = b"not age".to_vec();
        assert!(
            matches!(verify_entries(&bad), Err(VerifyError::MalformedEntry { path, .. }) if path.ends_with("recipients.age"))
        );
        let mut late = e.clone();
        let moved = late.remove(at);
        late.insert(at + 1, moved);
        assert!(matches!(verify_entries(&late), Err(VerifyError::OutOfOrder { .. })));

        let mut sealed = f.sealed[3].clone();
        let (_, range) = open_recorded_chunk(&f.key, &report.records[3], &mut sealed).unwrap();
        check_plaintext(&report.records[3], &sealed[range]).unwrap();
        let mut sealed = f.sealed[3].clone();
        assert!(matches!(
            open_recorded_chunk(&f.key, &report.records[4], &mut sealed),
            Err(OpenError::NotRecorded { index: 4, .. })
        ));
        let other = crate::seal::DataKey::from_bytes([9; 32]);
        assert!(matches!(
            open_recorded_chunk(&other, &report.records[3], &mut sealed),
            Err(OpenError::WrongKey { index: 3 })
        ));
        assert!(matches!(
            check_plaintext(&report.records[3], b"other"),
            Err(OpenError::PlaintextMismatch { index: 3 })
        ));
    }

    /// `device-head.json` (issue #10): a bundle proves by itself that the device logged
    /// its manifest as the session's head, in a device checkpoint signed at or after it.
    /// Every part that could be swapped is refused: another event, index, generation or
    /// manifest, a proof that does not lead to the checkpoint, a checkpoint of another key
    /// or another log.
    #[test]
    fn device_head_proves_the_manifest_was_logged() {
        use crate::devlog::{self, Event, EventKind};
        let f = fixture();
        let mut man = f.manifest();
        (man.generation, man.device_log_index) = (Some(2), Some(3));
        let signed = manifest::sign_manifest(&man, &f.signer).unwrap();
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &signed.bytes).as_ref().try_into().unwrap();
        let root = hex::decode_32(&man.root).unwrap();
        let created = EventKind::SessionCreated { session_id: "sess-1".into(), kind: man.kind };
        let head = |generation, tree_size| EventKind::SessionHead {
            session_id: "sess-1".into(),
            generation,
            tree_size,
            root,
            manifest_digest: digest,
        };
        // Events 0..6: created, an older head, another session, this head (3), more.
        let kinds = [
            created.clone(),
            head(1, 12),
            EventKind::SessionCreated { session_id: "sess-2".into(), kind: man.kind },
            head(2, 20),
            EventKind::SessionCreated { session_id: "sess-3".into(), kind: man.kind },
            EventKind::SessionCreated { session_id: "sess-4".into(), kind: man.kind },
        ];
        let events: Vec<Vec<u8>> =
            kinds.iter().map(|k| Event { at_us: 1, kind: k.clone() }.encode().unwrap()).collect();
        let leaves: Vec<_> = events.iter().map(|e| devlog::event_leaf(e)).collect();
        let tree = MerkleTree::from_leaves(&leaves);
        let origin = devlog::device_origin(&man.device_id);
        let checkpoint = |signer: &Signer, origin: &str, size: u64| {
            note::sign_checkpoint(&Checkpoint { origin: origin.into(), size, root: tree.root(size).unwrap() }, signer)
                .unwrap()
        };
        let file = |index: u64, size: u64| DeviceHeadFile {
            index,
            event: hex::encode(&events[index as usize]),
            checkpoint: checkpoint(&f.signer, &origin, size),
            proof: tree.inclusion_proof(index, size).unwrap().iter().map(|h| hex::encode(h)).collect(),
        };
        let bundle = |d: &DeviceHeadFile| f.bundle_with(&signed, Some(d));
        for size in [4, 6] {
            let r = verify_evidence(&bundle(&file(3, size))[..]).unwrap();
            assert_eq!(r.device_head, Some(DeviceHeadStanding { index: 3, checkpoint_size: size }));
        }
        let refused = |d: DeviceHeadFile, why: &str| {
            let err = verify_evidence(&bundle(&d)[..]).unwrap_err();
            assert!(matches!(&err, VerifyError::BadDeviceHead { reason } if reason.contains(why)), "{why}: {err}");
        };
        // The older generation's head, at its own index and with a good proof.
        refused(file(1, 6), "device_log_index");
        refused(DeviceHeadFile { index: 3, ..file(1, 6) }, "generation");
        refused(DeviceHeadFile { index: 3, ..file(2, 6) }, "not a session head");
        let mut d = file(3, 6);
        d.proof[1] = hex::encode(&[7; 32]);
        refused(d, "not included");
        refused(DeviceHeadFile { checkpoint: checkpoint(&f.signer, &origin, 3), ..file(3, 6) }, "not included");
        let stranger = Signer::from_pkcs8("lucid-other", &Fixture::fresh_pkcs8()).unwrap();
        refused(DeviceHeadFile { checkpoint: checkpoint(&stranger, &origin, 6), ..file(3, 6) }, "device checkpoint");
        refused(DeviceHeadFile { checkpoint: checkpoint(&f.signer, "lucid/elsewhere", 6), ..file(3, 6) }, "origin");
        refused(DeviceHeadFile { event: "zz".into(), ..file(3, 6) }, "hex");
        let mut d = file(3, 6);
        d.proof = vec![hex::encode(&[0; 32]); 65];
        refused(d, "65 hashes");
        // A manifest from before the device log cannot be placed.
        let old = f.bundle_with(&f.signed_manifest(), Some(&file(3, 6)));
        let err = verify_evidence(&old[..]).unwrap_err();
        assert!(matches!(&err, VerifyError::BadDeviceHead { reason } if reason.contains("no generation")), "{err}");
        // Placed after the init segment: out of order.
        let mut e = entries(&bundle(&file(3, 6)));
        let at = find(&e, Section::DeviceHead.path());
        let moved = e.remove(at);
        e.insert(at + 1, moved);
        assert!(matches!(verify_entries(&e), Err(VerifyError::OutOfOrder { .. })));
    }

    #[test]
    fn good_bundle_verifies_and_is_reproducible() {
        let f = fixture();
        let bundle = f.bundle();
        assert_eq!(bundle, f.bundle(), "same session, same bytes");
        assert_eq!(&bundle[257..263], b"ustar\0");
        let report = verify_evidence(&bundle[..]).unwrap();
        assert_eq!(report.session_id, "sess-1");
        assert_eq!(report.device_id, f.signer.verifier().device_id());
        assert_eq!(report.chunk_count, 20);
        assert_eq!(report.checkpoints_checked, 3);
        assert_eq!(report.root_hex, f.manifest().root);
        // The layout, in order.
        let paths: Vec<String> = entries(&bundle).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths[..6],
            [
                "lucid-evidence/VERSION",
                "lucid-evidence/device.vkey",
                "lucid-evidence/manifest.json",
                "lucid-evidence/manifest.json.sig",
                "lucid-evidence/init.mp4",
                "lucid-evidence/checkpoints/00000000000000000005.note",
            ]
        );
        assert_eq!(paths[8], "lucid-evidence/records/00000000000000000000.rec");
        assert_eq!(paths[28], "lucid-evidence/chunks/00000000000000000000.sealed");
        assert_eq!(paths.len(), 48);
        // A round trip through the test's own tar writer changes nothing.
        assert_eq!(tar_of(&entries(&bundle)), bundle);
    }

    #[test]
    fn a_bundle_re_signed_with_another_key_fails_a_pin() {
        let f = fixture();
        let bundle = f.bundle();
        let (vkey, id) = (f.signer.vkey(), f.signer.verifier().device_id());
        let report = verify_evidence(&bundle[..]).unwrap();
        assert_eq!((report.pin.clone(), report.device_vkey.as_str()), (Pin::Unpinned, vkey.as_str()));
        assert!(!report.pin.is_pinned());
        for pin in [Pin::vkey(&format!("{vkey}\n")).unwrap(), Pin::device_id(&id.to_uppercase()).unwrap()] {
            let r = verify_evidence_pinned(&bundle[..], &pin).unwrap();
            assert_eq!(r.pin, pin);
            assert!(r.pin.is_pinned());
        }

        // The attack: the same session (same chunks, same data key) signed end to end by
        // a fresh key. Unpinned it verifies; that is what a pin is for.
        let attacker = Fixture::with_key("sess-1", 20, &[5, 12, 20], f.key.as_bytes(), &Fixture::fresh_pkcs8());
        let forged = attacker.bundle();
        assert_eq!(verify_evidence(&forged[..]).unwrap().records, report.records);
        let their_id = attacker.signer.verifier().device_id();
        for pin in [Pin::vkey(&vkey).unwrap(), Pin::device_id(&id).unwrap()] {
            let err = verify_evidence_pinned(&forged[..], &pin).unwrap_err();
            assert!(matches!(&err, VerifyError::PinMismatch { device_id, .. } if *device_id == their_id), "{err}");
            let text = err.to_string();
            assert!(text.contains(&id) && text.contains(&their_id) && text.contains(&attacker.signer.vkey()), "{text}");
        }

        // The same key under another name is another verifier key (the name is in every
        // signature line), but the same device id.
        let renamed = Signer::from_pkcs8("another-name", &f.pkcs8).unwrap();
        let err = verify_evidence_pinned(&bundle[..], &Pin::vkey(&renamed.vkey()).unwrap()).unwrap_err();
        assert!(matches!(err, VerifyError::PinMismatch { .. }), "{err}");
        verify_evidence_pinned(&bundle[..], &Pin::device_id(&renamed.verifier().device_id()).unwrap()).unwrap();

        // Pins that do not parse.
        assert!(matches!(Pin::vkey("lucid-x+00000000+AAAA"), Err(PinError::BadVkey(_))));
        for bad in ["lucid-0123", "device-0123456789abcdef", "lucid-0123456789abcdeg", ""] {
            assert!(matches!(Pin::device_id(bad), Err(PinError::BadDeviceId(_))), "{bad}");
        }
    }

    #[test]
    fn data_session_without_init_verifies() {
        let f = Fixture::new_data("data-1", 3, &[3]);
        verify_evidence(&f.bundle()[..]).unwrap();
    }

    #[test]
    fn flipped_bit_in_a_sealed_chunk() {
        let mut e = entries(&fixture().bundle());
        let i = find(&e, &entry_path(Section::Chunks, 7));
        let last = e[i].1.len() - 20;
        e[i].1[last] ^= 0x04;
        assert!(matches!(verify_entries(&e), Err(VerifyError::ChunkDigestMismatch { index: 7 })));
    }

    #[test]
    fn flipped_bit_in_a_record() {
        let mut e = entries(&fixture().bundle());
        let i = find(&e, &entry_path(Section::Records, 15));
        e[i].1[60] ^= 0x01; // inside the plaintext BLAKE3: still decodes
        assert!(matches!(verify_entries(&e), Err(VerifyError::RootMismatch { size: 20 })));
        let i = find(&e, &entry_path(Section::Records, 3));
        e[i].1[60] ^= 0x01;
        assert!(matches!(verify_entries(&e), Err(VerifyError::RootMismatch { size: 5 })));
    }

    #[test]
    fn flipped_bit_in_a_checkpoint() {
        let mut e = entries(&fixture().bundle());
        let i = find(&e, &entry_path(Section::Checkpoints, 12));
        // The first '=' ends the root's base64 (the origin and size have none).
        let root_line = e[i].1.iter().position(|&b| b == b'=').unwrap() - 5;
        e[i].1[root_line] ^= 0x01;
        let err = verify_entries(&e).unwrap_err();
        assert!(matches!(err, VerifyError::BadCheckpointSignature { size: 12, .. }), "{err}");
    }

    #[test]
    fn flipped_bit_in_the_manifest() {
        let mut e = entries(&fixture().bundle());
        let i = find(&e, Section::Manifest.path());
        let mid = e[i].1.len() / 2;
        e[i].1[mid] ^= 0x01;
        assert!(matches!(verify_entries(&e), Err(VerifyError::BadManifestSignature)));
    }

    #[test]
    fn removed_chunk() {
        let mut e = entries(&fixture().bundle());
        e.remove(find(&e, &entry_path(Section::Chunks, 9)));
        let err = verify_entries(&e).unwrap_err();
        assert!(matches!(err, VerifyError::MissingChunk { index: 9 }));
        assert_eq!(err.to_string(), "chunk 9 is missing");
    }

    #[test]
    fn truncated_log() {
        let mut e = entries(&fixture().bundle());
        e.remove(find(&e, &entry_path(Section::Records, 19)));
        e.remove(find(&e, &entry_path(Section::Chunks, 19)));
        let err = verify_entries(&e).unwrap_err();
        assert!(matches!(err, VerifyError::Truncated { expected: 20, found: 19 }), "{err}");
        // A record taken from the middle is a gap, named by index.
        let mut e = entries(&fixture().bundle());
        e.remove(find(&e, &entry_path(Section::Records, 4)));
        assert!(matches!(verify_entries(&e), Err(VerifyError::MissingRecord { index: 4 })));
    }

    #[test]
    fn swapped_chunks() {
        let base = entries(&fixture().bundle());
        let (a, b) = (find(&base, &entry_path(Section::Chunks, 3)), find(&base, &entry_path(Section::Chunks, 4)));
        // Reordered in the archive.
        let mut e = base.clone();
        e.swap(a, b);
        let err = verify_entries(&e).unwrap_err();
        assert!(matches!(&err, VerifyError::OutOfOrder { path } if path.ends_with("00000000000000000003.sealed")));
        // Contents exchanged under the right names.
        let mut e = base.clone();
        let tmp = e[a].1.clone();
        e[a].1 = e[b].1.clone();
        e[b].1 = tmp;
        assert!(matches!(verify_entries(&e), Err(VerifyError::MisplacedChunk { path_index: 3, header_index: 4 })));
    }

    #[test]
    fn duplicated_entry() {
        let mut e = entries(&fixture().bundle());
        let i = find(&e, &entry_path(Section::Records, 2));
        e.insert(i + 1, e[i].clone());
        assert!(matches!(verify_entries(&e), Err(VerifyError::DuplicateEntry { path }) if path.ends_with("02.rec")));
        // Far from the original (as lucidd's integration test does): still a duplicate,
        // for every kind of entry.
        let base = entries(&fixture().bundle());
        for path in [
            Section::Version.path().to_owned(),
            Section::Init.path().to_owned(),
            entry_path(Section::Checkpoints, 5),
            entry_path(Section::Records, 3),
            entry_path(Section::Chunks, 0),
        ] {
            let mut e = base.clone();
            e.push(base[find(&base, &path)].clone());
            assert!(matches!(verify_entries(&e), Err(VerifyError::DuplicateEntry { path: p }) if p == path), "{path}");
        }
    }

    #[test]
    fn foreign_chunk() {
        let f = fixture();
        let other = Fixture::with_key("other-session", 20, &[20], f.key.as_bytes(), &f.pkcs8);
        let mut e = entries(&f.bundle());
        let i = find(&e, &entry_path(Section::Chunks, 6));
        e[i].1 = other.sealed[6].clone();
        assert!(matches!(
            verify_entries(&e),
            Err(VerifyError::ForeignChunk { index: 6, session_id }) if session_id == "other-session"
        ));
        // An extra chunk past the log has no record.
        let mut e = entries(&f.bundle());
        e.push((entry_path(Section::Chunks, 20), f.seal_extra(20)));
        assert!(matches!(verify_entries(&e), Err(VerifyError::ChunkWithoutRecord { index: 20 })));
    }

    #[test]
    fn checkpoint_signed_by_another_key() {
        let f = fixture();
        let intruder = Fixture::with_key("sess-1", 1, &[1], f.key.as_bytes(), &Fixture::fresh_pkcs8());
        let cp = f.checkpoint(12);
        let forged = note::sign_checkpoint(&cp, &intruder.signer).unwrap();
        let mut e = entries(&f.bundle());
        let i = find(&e, &entry_path(Section::Checkpoints, 12));
        e[i].1 = forged.into_bytes();
        assert!(matches!(
            verify_entries(&e),
            Err(VerifyError::BadCheckpointSignature { size: 12, source: NoteError::NoSignature { .. } })
        ));
    }

    #[test]
    fn structural_failures() {
        let base = entries(&fixture().bundle());
        let mut e = base.clone();
        e.push(("lucid-evidence/notes.txt".into(), b"hi".to_vec()));
        assert!(matches!(verify_entries(&e), Err(VerifyError::UnknownEntry { .. })));

        let mut e = base.clone();
        e.remove(find(&e, Section::Init.path()));
        assert!(matches!(verify_entries(&e), Err(VerifyError::MissingEntry { path }) if path.ends_with("init.mp4")));

        let mut e = base.clone();
        e.remove(find(&e, Section::ManifestSig.path()));
        assert!(matches!(verify_entries(&e), Err(VerifyError::MissingEntry { path }) if path.ends_with(".sig")));

        let mut e = base.clone();
        let i = find(&e, Section::Version.path());
        e[i].1 = b"lucid-evidence 2\n".to_vec();
        assert!(matches!(verify_entries(&e), Err(VerifyError::UnsupportedVersion { .. })));

        let mut e = base.clone();
        let i = find(&e, Section::Init.path());
        e[i].1[0] ^= 1;
        assert!(matches!(verify_entries(&e), Err(VerifyError::InitSegmentMismatch)));

        // Another device's key in device.vkey: the manifest no longer verifies.
        let mut e = base.clone();
        let i = find(&e, Section::Vkey.path());
        let other = Fixture::with_key("sess-1", 1, &[1], &[9; 32], &Fixture::fresh_pkcs8());
        e[i].1 = format!("{}\n", other.signer.vkey()).into_bytes();
        assert!(matches!(verify_entries(&e), Err(VerifyError::BadManifestSignature)));

        // The last checkpoint dropped: the log is longer than its final signed head.
        let mut e = base.clone();
        e.remove(find(&e, &entry_path(Section::Checkpoints, 20)));
        assert!(matches!(verify_entries(&e), Err(VerifyError::FinalCheckpointMismatch)));

        assert!(matches!(verify_evidence(&b"not a tar"[..]), Err(VerifyError::Archive { .. })));
        assert!(matches!(verify_evidence(&[0u8; 1024][..]), Err(VerifyError::MissingEntry { .. })));
    }

    #[test]
    fn oversized_and_non_regular_entries() {
        let base = entries(&fixture().bundle());
        let mut e = base.clone();
        let i = find(&e, &entry_path(Section::Chunks, 0));
        e[i].1 = vec![0; MAX_SEALED_CHUNK + 1];
        assert!(matches!(verify_entries(&e), Err(VerifyError::EntryTooLarge { .. })));

        let mut bytes = tar_of(&base);
        // Turn the first entry (VERSION) into a directory; fix its checksum.
        let mut h = tar::Header::from_byte_slice(&bytes[..512]).clone();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_cksum();
        bytes[..512].copy_from_slice(h.as_bytes());
        assert!(matches!(verify_evidence(&bytes[..]), Err(VerifyError::NotRegularFile { .. })));
    }

    /// A reader that counts the bytes the verifier pulls from it.
    struct Meter<R> {
        inner: R,
        read: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl<R: Read> Read for Meter<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }

    #[test]
    fn tar_extension_entries_are_refused_before_their_data_is_read() {
        // A hostile archive whose first entry is a 64 MiB GNU long name (or long link, or
        // PAX header): the tar crate reads such an entry whole into memory to apply it.
        let size = 64u64 << 20;
        for (kind, name) in [
            (tar::EntryType::GNULongName, "GNU long name"),
            (tar::EntryType::GNULongLink, "GNU long link"),
            (tar::EntryType::XHeader, "PAX header"),
            (tar::EntryType::XGlobalHeader, "PAX global header"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_path("././@LongLink").unwrap();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(0o644);
            h.set_cksum();
            let read = std::rc::Rc::new(std::cell::Cell::new(0));
            let input =
                Meter { inner: io::Read::chain(&h.as_bytes()[..], io::repeat(b'a').take(size)), read: read.clone() };
            let err = verify_evidence(input).unwrap_err();
            assert!(matches!(err, VerifyError::ExtensionHeader { kind, offset: 0 } if kind == name), "{name}: {err}");
            assert!(read.get() <= 64 << 10, "{name}: read {} bytes", read.get());
        }
    }

    #[test]
    fn data_after_the_end_of_archive_is_refused() {
        let bundle = fixture().bundle();
        let marker = bundle.len() as u64 - 1024;
        // Zero padding to the end of the 10 KiB tar record is what tar tools write.
        let mut padded = bundle.clone();
        padded.resize(bundle.len().div_ceil(10240) * 10240, 0);
        verify_evidence(&padded[..]).unwrap();

        // A byte hidden after the two zero blocks.
        let mut hidden = bundle.clone();
        hidden.extend_from_slice(b"\0\0hidden");
        let err = verify_evidence(&hidden[..]).unwrap_err();
        assert!(matches!(err, VerifyError::DataAfterEnd { offset } if offset == marker + 1026), "{err}");
        // A whole second archive appended: tar tools stop at the first marker.
        let mut appended = bundle.clone();
        appended.extend_from_slice(&tar_of(&[("lucid-evidence/VERSION".into(), b"x".to_vec())]));
        assert!(matches!(
            verify_evidence(&appended[..]),
            Err(VerifyError::DataAfterEnd { offset }) if offset == marker + 1024
        ));
        // Data in the second "zero" block.
        let mut second = bundle.clone();
        let at = bundle.len() - 100;
        second[at] = 1;
        assert!(matches!(
            verify_evidence(&second[..]),
            Err(VerifyError::DataAfterEnd { offset }) if offset == at as u64
        ));
        // Zeros past the record: the file goes on where no tar tool looks.
        let mut long = padded.clone();
        long.extend_from_slice(&[0; 512]);
        assert!(matches!(verify_evidence(&long[..]), Err(VerifyError::DataAfterEnd { .. })));
        // No marker, or half of one.
        for cut in [1024, 512] {
            let short = &bundle[..bundle.len() - cut];
            assert!(matches!(
                verify_evidence(short),
                Err(VerifyError::MissingEndOfArchive { offset }) if offset == marker
            ));
        }
    }

    #[test]
    fn a_log_over_the_limit_is_refused_at_the_manifest() {
        let f = fixture();
        let mut m = f.manifest();
        m.chunk_count = MAX_LOG_SIZE + 1;
        m.tree_size = MAX_LOG_SIZE + 1;
        let signed = manifest::sign_manifest(&m, &f.signer).unwrap();
        let mut e = entries(&f.bundle());
        let i = find(&e, Section::Manifest.path());
        e[i].1 = signed.bytes.clone();
        e[i + 1].1 = signed.signature_file().into_bytes();
        assert!(matches!(
            verify_entries(&e),
            Err(VerifyError::LogTooLarge { chunk_count, max: MAX_LOG_SIZE }) if chunk_count == MAX_LOG_SIZE + 1
        ));
    }

    #[test]
    fn a_checkpoint_beyond_the_manifest_is_refused_on_arrival() {
        // Checkpoints are kept until the records arrive, so one beyond the tree size is
        // refused at once: otherwise a hostile bundle could make the verifier hold any
        // number of them (here the records never come).
        let f = fixture();
        let mut cp = f.checkpoint(20);
        cp.size = 21;
        let note = note::sign_checkpoint(&cp, &f.signer).unwrap();
        let mut e = entries(&f.bundle());
        e.retain(|(p, _)| !p.contains("/records/") && !p.contains("/chunks/"));
        e.push((entry_path(Section::Checkpoints, 21), note.into_bytes()));
        assert!(matches!(verify_entries(&e), Err(VerifyError::CheckpointBeyondLog { size: 21, tree_size: 20 })));
    }

    #[test]
    fn writer_refuses_out_of_order_entries() {
        let f = fixture();
        let mut w = EvidenceWriter::new(Vec::new(), &f.signer.vkey(), &f.signed_manifest()).unwrap();
        w.record(&f.records[1]).unwrap();
        assert!(matches!(w.record(&f.records[0]), Err(EvidenceError::OutOfOrder { .. })));
        assert!(matches!(w.record(&f.records[1]), Err(EvidenceError::OutOfOrder { .. })));
        assert!(matches!(w.checkpoint(&f.notes[0]), Err(EvidenceError::OutOfOrder { .. })));
        assert!(matches!(w.init_segment(b"x"), Err(EvidenceError::OutOfOrder { .. })));
        w.chunk(&f.sealed[0]).unwrap();
        assert!(matches!(w.chunk(b"junk"), Err(EvidenceError::BadEntry { .. })));
    }

    #[test]
    fn paths_parse_strictly() {
        assert_eq!(parse_path("lucid-evidence/chunks/00000000000000000012.sealed"), Some((Section::Chunks, 12)));
        for bad in [
            "lucid-evidence/chunks/12.sealed",
            "lucid-evidence/chunks/0000000000000000001x.sealed",
            "lucid-evidence/chunks/99999999999999999999.sealed",
            "./lucid-evidence/VERSION",
            "lucid-evidence/VERSION/",
            "lucid-evidence/records/00000000000000000012.sealed",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
        assert_eq!(entry_path(Section::Records, 7), "lucid-evidence/records/00000000000000000007.rec");
    }
}
