//! The device log: one append-only RFC 9162 log per device whose leaves are canonical,
//! versioned events (a session created, a session's signed head, a session deleted, a
//! key rotated, firmware committed, the clock synchronised), its C2SP checkpoints (origin
//! `lucid/<device id>`), the device evidence tar (`lucid-device-evidence 1`) and its
//! verifier, which lists every session the device ever created and fails on any gap,
//! reordering or fork.
//!
//! It owns the event encoding and the device-evidence layout. It must not store events
//! or decide when they are written (the daemon's engine does, in the same transaction as
//! the change an event records), and it never carries a session's name, description or
//! any secret: an event holds ids, counts, digests, times and fixed reason text.
//!
//! The encoding is binary, not JSON: every field has a fixed width or a length prefix and
//! one spelling, so a value has exactly one encoding and the leaf hash is reproducible in
//! a few lines of any language without a canonical-JSON library (key order, number
//! spelling and string escapes are what makes canonical JSON hard to get right).

use std::io::{self, Read, Write};

use crate::chunk::{self, MAX_SESSION_ID_LEN};
use crate::evidence::{self, BLOCK, Counted, Pin, VerifyError};
use crate::hex;
use crate::manifest::SessionKind;
use crate::merkle::{self, Hash, MerkleTree};
use crate::note::{Checkpoint, NoteError, Verifier};

/// The first byte of every event: the encoding's version.
pub const EVENT_VERSION: u8 = 1;
/// The largest encoded event (the longest, a deletion with its reason, is under 400).
pub const MAX_EVENT: usize = 512;
/// The longest deletion reason, in bytes of UTF-8.
pub const MAX_REASON: usize = 256;
/// The longest firmware version or build string, in bytes.
pub const MAX_FIRMWARE_FIELD: usize = 128;
/// The longest device log a device-evidence tar may hold: 2^20 events. The verifier keeps
/// the tree (about 64 bytes an event) and a summary per session, so this caps its memory.
pub const MAX_DEVICE_LOG: u64 = 1 << 20;
/// Checkpoints a device-evidence tar may hold (the device signs one per append).
pub const MAX_DEVICE_CHECKPOINTS: u64 = 2 * MAX_DEVICE_LOG;
/// The exact content of `lucid-device-evidence/VERSION`.
pub const DEVICE_EVIDENCE_VERSION: &str = "lucid-device-evidence 1\n";

/// The checkpoint origin of a device's log: `lucid/<device id>`.
pub fn device_origin(device_id: &str) -> String {
    format!("lucid/{device_id}")
}

/// Who deleted a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletedBy {
    /// A client, through the API (`DELETE /api/v1/sessions/{id}` and the like).
    Api,
    /// The device's retention policy.
    Retention,
}

impl DeletedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DeletedBy::Api => "api",
            DeletedBy::Retention => "retention",
        }
    }
}

/// What happened. Every event also carries `at` (see [`Event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A session was created (its row exists from this event on).
    SessionCreated { session_id: String, kind: SessionKind },
    /// A session's manifest was signed at a stop or finalize (or by crash recovery):
    /// `generation` counts the manifests of the session from 1, and the head is the
    /// session log's size and root and the SHA-256 of the manifest bytes as signed.
    SessionHead { session_id: String, generation: u64, tree_size: u64, root: Hash, manifest_digest: Hash },
    /// A session and its chunks were deleted.
    SessionDeleted { session_id: String, by: DeletedBy, reason: String },
    /// The device's signing key was replaced by the Ed25519 key `new_key`.
    KeyRotated { new_key: [u8; 32] },
    /// A firmware update was committed after its self-check.
    FirmwareCommitted { version: String, build: String },
    /// The wall clock was set from a trusted source, stepping it by `offset_us`.
    ClockSynchronised { offset_us: i64 },
}

/// One device-log event: what happened and when (Unix microseconds, by the device's
/// clock at the time, which [`EventKind::ClockSynchronised`] events qualify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at_us: i64,
    pub kind: EventKind,
}

/// Why an event does not decode, or cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is {len} bytes, over the {max} byte limit")]
    TooLong { len: usize, max: usize },
    #[error("event ends early")]
    Truncated,
    #[error("{0} bytes after the end of the event")]
    TrailingBytes(usize),
    #[error("unsupported event version {0}")]
    Version(u8),
    #[error("unknown event type {0}")]
    UnknownType(u8),
    #[error("unknown session kind {0}")]
    UnknownKind(u8),
    #[error("unknown deleter {0}")]
    UnknownDeleter(u8),
    #[error("session id: {0}")]
    SessionId(#[from] chunk::FormatError),
    #[error("{field} is not UTF-8 without control characters, or is longer than {max} bytes")]
    BadText { field: &'static str, max: usize },
}

const T_CREATED: u8 = 1;
const T_HEAD: u8 = 2;
const T_DELETED: u8 = 3;
const T_KEY: u8 = 4;
const T_FIRMWARE: u8 = 5;
const T_CLOCK: u8 = 6;

fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), EventError> {
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(EventError::BadText { field, max });
    }
    Ok(())
}

impl Event {
    /// The canonical encoding (docs/design.md, "Device log"):
    /// `version u8 = 1 ‖ type u8 ‖ at_us i64 BE ‖ body`, where strings are a length (u8
    /// for ids and firmware fields, u16 BE for a reason) and their bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EventError> {
        let mut out = Vec::with_capacity(128);
        out.push(EVENT_VERSION);
        let (tag, at) = (self.tag(), self.at_us);
        out.push(tag);
        out.extend_from_slice(&at.to_be_bytes());
        let sid = |out: &mut Vec<u8>, s: &str| -> Result<(), EventError> {
            chunk::validate_session_id(s)?;
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
            Ok(())
        };
        match &self.kind {
            EventKind::SessionCreated { session_id, kind } => {
                sid(&mut out, session_id)?;
                out.push(match kind {
                    SessionKind::Camera => 1,
                    SessionKind::Data => 2,
                });
            }
            EventKind::SessionHead { session_id, generation, tree_size, root, manifest_digest } => {
                sid(&mut out, session_id)?;
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(&tree_size.to_be_bytes());
                out.extend_from_slice(root);
                out.extend_from_slice(manifest_digest);
            }
            EventKind::SessionDeleted { session_id, by, reason } => {
                sid(&mut out, session_id)?;
                out.push(match by {
                    DeletedBy::Api => 1,
                    DeletedBy::Retention => 2,
                });
                check_text("reason", reason, MAX_REASON)?;
                out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
            EventKind::KeyRotated { new_key } => out.extend_from_slice(new_key),
            EventKind::FirmwareCommitted { version, build } => {
                for (field, s) in [("version", version), ("build", build)] {
                    check_text(field, s, MAX_FIRMWARE_FIELD)?;
                    out.push(s.len() as u8);
                    out.extend_from_slice(s.as_bytes());
                }
            }
            EventKind::ClockSynchronised { offset_us } => out.extend_from_slice(&offset_us.to_be_bytes()),
        }
        Ok(out)
    }

    fn tag(&self) -> u8 {
        match self.kind {
            EventKind::SessionCreated { .. } => T_CREATED,
            EventKind::SessionHead { .. } => T_HEAD,
            EventKind::SessionDeleted { .. } => T_DELETED,
            EventKind::KeyRotated { .. } => T_KEY,
            EventKind::FirmwareCommitted { .. } => T_FIRMWARE,
            EventKind::ClockSynchronised { .. } => T_CLOCK,
        }
    }

    /// Decodes strictly: the exact layout of `encode`, no trailing bytes, every id and
    /// text checked, so `decode(b)?.encode()? == b` for every accepted `b`.
    pub fn decode(bytes: &[u8]) -> Result<Event, EventError> {
        if bytes.len() > MAX_EVENT {
            return Err(EventError::TooLong { len: bytes.len(), max: MAX_EVENT });
        }
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != EVENT_VERSION {
            return Err(EventError::Version(version));
        }
        let tag = r.u8()?;
        let at_us = i64::from_be_bytes(r.array()?);
        let kind = match tag {
            T_CREATED => {
                let session_id = r.session_id()?;
                let kind = match r.u8()? {
                    1 => SessionKind::Camera,
                    2 => SessionKind::Data,
                    k => return Err(EventError::UnknownKind(k)),
                };
                EventKind::SessionCreated { session_id, kind }
            }
            T_HEAD => EventKind::SessionHead {
                session_id: r.session_id()?,
                generation: u64::from_be_bytes(r.array()?),
                tree_size: u64::from_be_bytes(r.array()?),
                root: r.array()?,
                manifest_digest: r.array()?,
            },
            T_DELETED => {
                let session_id = r.session_id()?;
                let by = match r.u8()? {
                    1 => DeletedBy::Api,
                    2 => DeletedBy::Retention,
                    b => return Err(EventError::UnknownDeleter(b)),
                };
                let len = u16::from_be_bytes(r.array()?) as usize;
                let reason = r.text("reason", len, MAX_REASON)?;
                EventKind::SessionDeleted { session_id, by, reason }
            }
            T_KEY => EventKind::KeyRotated { new_key: r.array()? },
            T_FIRMWARE => {
                let len = r.u8()? as usize;
                let version = r.text("version", len, MAX_FIRMWARE_FIELD)?;
                let len = r.u8()? as usize;
                let build = r.text("build", len, MAX_FIRMWARE_FIELD)?;
                EventKind::FirmwareCommitted { version, build }
            }
            T_CLOCK => EventKind::ClockSynchronised { offset_us: i64::from_be_bytes(r.array()?) },
            t => return Err(EventError::UnknownType(t)),
        };
        if !r.0.is_empty() {
            return Err(EventError::TrailingBytes(r.0.len()));
        }
        Ok(Event { at_us, kind })
    }

    /// The session this event is about, if any.
    pub fn session_id(&self) -> Option<&str> {
        match &self.kind {
            EventKind::SessionCreated { session_id, .. }
            | EventKind::SessionHead { session_id, .. }
            | EventKind::SessionDeleted { session_id, .. } => Some(session_id),
            _ => None,
        }
    }
}

/// The RFC 9162 leaf hash of an encoded event.
pub fn event_leaf(encoded: &[u8]) -> Hash {
    merkle::leaf_hash(encoded)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], EventError> {
        if self.0.len() < n {
            return Err(EventError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, EventError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], EventError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn session_id(&mut self) -> Result<String, EventError> {
        let len = self.u8()? as usize;
        if len > MAX_SESSION_ID_LEN {
            return Err(chunk::FormatError::BadSessionId { reason: "longer than 64 bytes" }.into());
        }
        let raw = self.take(len)?;
        let s = std::str::from_utf8(raw)
            .map_err(|_| chunk::FormatError::BadSessionId { reason: "character outside [A-Za-z0-9._-]" })?;
        chunk::validate_session_id(s)?;
        Ok(s.to_owned())
    }
    fn text(&mut self, field: &'static str, len: usize, max: usize) -> Result<String, EventError> {
        if len > max {
            return Err(EventError::BadText { field, max });
        }
        let s = std::str::from_utf8(self.take(len)?).map_err(|_| EventError::BadText { field, max })?;
        check_text(field, s, max)?;
        Ok(s.to_owned())
    }
}

// ----- verification -------------------------------------------------------------------

/// The first reason a device log (or its evidence tar) fails verification.
#[derive(Debug, thiserror::Error)]
pub enum DeviceLogError {
    /// The container is not a well-formed tar (shared with the session evidence checks:
    /// extension headers, a missing end marker, data after the end).
    #[error(transparent)]
    Archive(#[from] VerifyError),
    #[error("unknown entry {path:?}")]
    UnknownEntry { path: String },
    #[error("{path} is out of order or a duplicate")]
    OutOfOrder { path: String },
    #[error("{path} is {size} bytes, over the {max} byte limit")]
    EntryTooLarge { path: String, size: u64, max: u64 },
    #[error("missing {path}")]
    MissingEntry { path: String },
    #[error("unsupported device evidence version {found:?}")]
    UnsupportedVersion { found: String },
    #[error("device.vkey: {source}")]
    BadDeviceKey {
        #[source]
        source: NoteError,
    },
    /// device.vkey is not the pinned device's key.
    #[error("signer is not the pinned device: {source}")]
    Pin {
        #[source]
        source: VerifyError,
    },
    /// An event index was skipped: an event was removed or the log reordered.
    #[error("event {index} is missing (next event is {found})")]
    Gap { index: u64, found: u64 },
    #[error("more than {max} events")]
    TooManyEvents { max: u64 },
    #[error("event {index}: {source}")]
    BadEvent {
        index: u64,
        #[source]
        source: EventError,
    },
    /// An event that contradicts the ones before it (a head of a session never created,
    /// a generation that does not follow the last, a session created twice...).
    #[error("event {index}: {reason}")]
    Inconsistent { index: u64, reason: String },
    #[error("checkpoint #{seq}: {source}")]
    BadCheckpoint {
        seq: u64,
        #[source]
        source: NoteError,
    },
    #[error("checkpoint #{seq} has origin {origin:?}, expected {expected:?}")]
    WrongOrigin { seq: u64, origin: String, expected: String },
    /// Checkpoints must come in non-decreasing size.
    #[error("checkpoint #{seq} (size {size}) comes after a checkpoint of size {previous}")]
    CheckpointOrder { seq: u64, size: u64, previous: u64 },
    /// Two signed checkpoints of one size with different roots: the device signed two
    /// different histories.
    #[error("fork: two checkpoints of size {size} with different roots")]
    Fork { size: u64 },
    #[error("checkpoint of size {size} is beyond the {events} events in the bundle")]
    CheckpointBeyondLog { size: u64, events: u64 },
    #[error("the events do not hash to the root of checkpoint {size}")]
    RootMismatch { size: u64 },
    #[error("checkpoint {from} is not consistent with checkpoint {to}")]
    Inconsistent2 { from: u64, to: u64 },
    #[error("no checkpoint")]
    NoCheckpoint,
    /// Events after the last checkpoint are signed by nothing; removing the last events
    /// would otherwise go unnoticed if the newest checkpoint were dropped with them.
    #[error("the last checkpoint covers {size} events, the bundle has {events}")]
    Unsigned { size: u64, events: u64 },
}

/// A session as the device log tells its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHistory {
    pub session_id: String,
    pub kind: SessionKind,
    /// Index of its `SessionCreated` event.
    pub created_index: u64,
    pub created_at_us: i64,
    /// The latest head: (event index, generation, tree size, root, manifest digest).
    pub head: Option<HeadSummary>,
    /// The deletion: (event index, at, by, reason).
    pub deleted: Option<Deletion>,
}

/// A session's latest signed head in the device log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadSummary {
    pub index: u64,
    pub generation: u64,
    pub tree_size: u64,
    pub root: Hash,
    pub manifest_digest: Hash,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub index: u64,
    pub at_us: i64,
    pub by: DeletedBy,
    pub reason: String,
}

/// What a verified device log established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLogReport {
    pub device_id: String,
    pub device_vkey: String,
    /// The pin the signer was checked against ([`Pin::Unpinned`] when none was given).
    pub pin: Pin,
    pub events: u64,
    pub checkpoints_checked: u64,
    /// Lowercase hex of the root of all events (the last checkpoint's).
    pub root_hex: String,
    /// Every session ever created, in order of creation (a reused id appears twice).
    pub sessions: Vec<SessionHistory>,
    /// Events that are not about a session, with their index.
    pub device_events: Vec<(u64, Event)>,
}

/// Checks a device log fed event by event, then checkpoint by checkpoint: the order the
/// device-evidence tar has, so nothing but the tree and the session summaries is kept.
#[derive(Debug)]
pub struct DeviceLogVerifier {
    verifier: Verifier,
    vkey: String,
    pin: Pin,
    origin: String,
    tree: MerkleTree,
    sessions: Vec<SessionHistory>,
    /// Session id → position in `sessions` of its current (latest) life.
    current: std::collections::HashMap<String, usize>,
    device_events: Vec<(u64, Event)>,
    /// (sequence number, size, root) of the last checkpoint.
    last_checkpoint: Option<(u64, u64, Hash)>,
    checkpoints: u64,
}

impl DeviceLogVerifier {
    /// Starts with the device's verifier key text, checked against `pin` at once.
    pub fn new(vkey: &str, pin: &Pin) -> Result<Self, DeviceLogError> {
        let verifier = Verifier::from_vkey(vkey).map_err(|source| DeviceLogError::BadDeviceKey { source })?;
        pin.check(&verifier).map_err(|source| DeviceLogError::Pin { source })?;
        Ok(DeviceLogVerifier {
            origin: device_origin(&verifier.device_id()),
            verifier,
            vkey: vkey.to_owned(),
            pin: pin.clone(),
            tree: MerkleTree::new(),
            sessions: Vec::new(),
            current: Default::default(),
            device_events: Vec::new(),
            last_checkpoint: None,
            checkpoints: 0,
        })
    }

    /// The next event, which must have index `index` = the number of events so far.
    pub fn event(&mut self, index: u64, bytes: &[u8]) -> Result<(), DeviceLogError> {
        let expected = self.tree.len();
        if index != expected {
            return Err(DeviceLogError::Gap { index: expected, found: index });
        }
        if expected >= MAX_DEVICE_LOG {
            return Err(DeviceLogError::TooManyEvents { max: MAX_DEVICE_LOG });
        }
        let event = Event::decode(bytes).map_err(|source| DeviceLogError::BadEvent { index, source })?;
        self.apply(index, event)?;
        self.tree.push(event_leaf(bytes));
        Ok(())
    }

    fn apply(&mut self, index: u64, event: Event) -> Result<(), DeviceLogError> {
        let bad = |reason: String| Err(DeviceLogError::Inconsistent { index, reason });
        let live =
            |this: &Self, sid: &str| this.current.get(sid).copied().filter(|&i| this.sessions[i].deleted.is_none());
        match event.kind {
            EventKind::SessionCreated { session_id, kind } => {
                if live(self, &session_id).is_some() {
                    return bad(format!("session {session_id} created again before it was deleted"));
                }
                self.current.insert(session_id.clone(), self.sessions.len());
                self.sessions.push(SessionHistory {
                    session_id,
                    kind,
                    created_index: index,
                    created_at_us: event.at_us,
                    head: None,
                    deleted: None,
                });
            }
            EventKind::SessionHead { session_id, generation, tree_size, root, manifest_digest } => {
                let Some(i) = live(self, &session_id) else {
                    return bad(format!("head of session {session_id}, which does not exist"));
                };
                let s = &mut self.sessions[i];
                let (prev_gen, prev_size) = s.head.as_ref().map_or((0, 0), |h| (h.generation, h.tree_size));
                if generation != prev_gen + 1 {
                    return bad(format!("session {session_id} generation {generation} follows {prev_gen}"));
                }
                if tree_size < prev_size {
                    return bad(format!("session {session_id} log shrank from {prev_size} to {tree_size}"));
                }
                s.head = Some(HeadSummary { index, generation, tree_size, root, manifest_digest });
            }
            EventKind::SessionDeleted { session_id, by, reason } => {
                let Some(i) = live(self, &session_id) else {
                    return bad(format!("deletion of session {session_id}, which does not exist"));
                };
                self.sessions[i].deleted = Some(Deletion { index, at_us: event.at_us, by, reason });
            }
            kind => self.device_events.push((index, Event { at_us: event.at_us, kind })),
        }
        Ok(())
    }

    /// The next checkpoint note. Checkpoints come after every event, in non-decreasing
    /// size; two of one size must agree.
    pub fn checkpoint(&mut self, seq: u64, note_text: &str) -> Result<(), DeviceLogError> {
        let cp = self
            .verifier
            .verify_checkpoint(note_text)
            .map_err(|source| DeviceLogError::BadCheckpoint { seq, source })?;
        self.checkpoint_parsed(seq, cp)
    }

    fn checkpoint_parsed(&mut self, seq: u64, cp: Checkpoint) -> Result<(), DeviceLogError> {
        if cp.origin != self.origin {
            return Err(DeviceLogError::WrongOrigin { seq, origin: cp.origin, expected: self.origin.clone() });
        }
        if let Some((_, size, root)) = self.last_checkpoint {
            if cp.size < size {
                return Err(DeviceLogError::CheckpointOrder { seq, size: cp.size, previous: size });
            }
            if cp.size == size && cp.root != root {
                return Err(DeviceLogError::Fork { size });
            }
        }
        let events = self.tree.len();
        if cp.size > events {
            return Err(DeviceLogError::CheckpointBeyondLog { size: cp.size, events });
        }
        if self.tree.root(cp.size).map_err(|_| DeviceLogError::RootMismatch { size: cp.size })? != cp.root {
            return Err(DeviceLogError::RootMismatch { size: cp.size });
        }
        if let Some((_, from, from_root)) = self.last_checkpoint
            && from > 0
            && from < cp.size
        {
            // Implied by both roots being over these events, and checked the way a
            // client holding only the two checkpoints would.
            let bad = DeviceLogError::Inconsistent2 { from, to: cp.size };
            let proof = self.tree.consistency_proof(from, cp.size).map_err(|_| bad)?;
            merkle::verify_consistency(from, cp.size, &from_root, &cp.root, &proof)
                .map_err(|_| DeviceLogError::Inconsistent2 { from, to: cp.size })?;
        }
        self.last_checkpoint = Some((seq, cp.size, cp.root));
        self.checkpoints += 1;
        Ok(())
    }

    /// Ends verification: the last checkpoint must cover every event.
    pub fn finish(self) -> Result<DeviceLogReport, DeviceLogError> {
        let (_, size, root) = self.last_checkpoint.ok_or(DeviceLogError::NoCheckpoint)?;
        let events = self.tree.len();
        if size != events {
            return Err(DeviceLogError::Unsigned { size, events });
        }
        Ok(DeviceLogReport {
            device_id: self.verifier.device_id(),
            device_vkey: self.vkey,
            pin: self.pin,
            events,
            checkpoints_checked: self.checkpoints,
            root_hex: hex::encode(&root),
            sessions: self.sessions,
            device_events: self.device_events,
        })
    }
}

/// Verifies a device log given as its parts (events in index order from 0, checkpoint
/// notes in the order to check them).
pub fn verify_device_log(
    vkey: &str,
    pin: &Pin,
    events: &[Vec<u8>],
    checkpoints: &[String],
) -> Result<DeviceLogReport, DeviceLogError> {
    let mut v = DeviceLogVerifier::new(vkey, pin)?;
    for (i, e) in events.iter().enumerate() {
        v.event(i as u64, e)?;
    }
    for (i, c) in checkpoints.iter().enumerate() {
        v.checkpoint(i as u64, c)?;
    }
    v.finish()
}

// ----- the device-evidence tar --------------------------------------------------------

const DIR: &str = "lucid-device-evidence/";
const P_VERSION: &str = "lucid-device-evidence/VERSION";
const P_VKEY: &str = "lucid-device-evidence/device.vkey";
const P_EVENTS: &str = "lucid-device-evidence/events/";
const P_CHECKPOINTS: &str = "lucid-device-evidence/checkpoints/";
const MAX_NOTE: u64 = 4096;

/// Writes a device-evidence tar entry by entry: VERSION, device.vkey, every event
/// (`events/<index, 20 digits>.ev`), then checkpoints numbered in the order written
/// (`checkpoints/<n, 20 digits>.note`, ascending size). Numbering checkpoints by their
/// position rather than their size lets a bundle hold two notes of one size, which is
/// how a fork is shown to a verifier. Reproducible headers, as for session evidence.
pub struct DeviceEvidenceWriter<W: Write> {
    tar: tar::Builder<W>,
    events: u64,
    checkpoints: u64,
}

impl<W: Write> std::fmt::Debug for DeviceEvidenceWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceEvidenceWriter").field("events", &self.events).finish_non_exhaustive()
    }
}

impl<W: Write> DeviceEvidenceWriter<W> {
    pub fn new(out: W, device_vkey: &str) -> io::Result<Self> {
        let mut w = DeviceEvidenceWriter { tar: tar::Builder::new(out), events: 0, checkpoints: 0 };
        w.append(P_VERSION.into(), DEVICE_EVIDENCE_VERSION.as_bytes())?;
        w.append(P_VKEY.into(), format!("{device_vkey}\n").as_bytes())?;
        Ok(w)
    }

    /// The next event (index = events written so far). Must come before any checkpoint.
    pub fn event(&mut self, encoded: &[u8]) -> io::Result<()> {
        if self.checkpoints > 0 {
            return Err(io::Error::other("device evidence: event after a checkpoint"));
        }
        self.append(format!("{P_EVENTS}{:020}.ev", self.events), encoded)?;
        self.events += 1;
        Ok(())
    }

    pub fn checkpoint(&mut self, note_text: &str) -> io::Result<()> {
        self.append(format!("{P_CHECKPOINTS}{:020}.note", self.checkpoints), note_text.as_bytes())?;
        self.checkpoints += 1;
        Ok(())
    }

    pub fn finish(self) -> io::Result<W> {
        self.tar.into_inner()
    }

    fn append(&mut self, path: String, data: &[u8]) -> io::Result<()> {
        self.tar.append(&evidence::tar_header(&path, data.len() as u64)?, data)
    }
}

fn numbered(path: &str, dir: &str, suffix: &str) -> Option<u64> {
    let d = path.strip_prefix(dir)?.strip_suffix(suffix)?;
    (d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit())).then(|| d.parse().ok()).flatten()
}

/// Verifies a device-evidence tar read from `r`, streaming, against an optional pin.
pub fn verify_device_evidence<R: Read>(r: R, pin: &Pin) -> Result<DeviceLogReport, DeviceLogError> {
    let mut input = Counted { inner: r, read: 0 };
    let archive = |source| DeviceLogError::Archive(VerifyError::Archive { source });
    let mut stage = 0u8; // 0 VERSION, 1 vkey, 2 events, 3 checkpoints
    let mut v: Option<DeviceLogVerifier> = None;
    let mut next_cp = 0u64;
    let mut end = 0;
    {
        let mut tar = tar::Archive::new(&mut input);
        for entry in tar.entries().map_err(archive)?.raw(true) {
            let mut entry = entry.map_err(archive)?;
            if let Some(kind) = evidence::extension_kind(entry.header().entry_type()) {
                let offset = entry.raw_header_position();
                return Err(VerifyError::ExtensionHeader { kind, offset }.into());
            }
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if !path.starts_with(DIR) || entry.header().entry_type() != tar::EntryType::Regular {
                return Err(DeviceLogError::UnknownEntry { path });
            }
            let max = if path == P_VERSION {
                64
            } else if path == P_VKEY {
                4096
            } else if path.starts_with(P_EVENTS) {
                MAX_EVENT as u64
            } else {
                MAX_NOTE
            };
            let size = entry.size();
            if size > max {
                return Err(DeviceLogError::EntryTooLarge { path, size, max });
            }
            end = entry.raw_file_position() + size.div_ceil(BLOCK) * BLOCK;
            let mut data = Vec::with_capacity(size as usize);
            (&mut entry).take(max + 1).read_to_end(&mut data).map_err(archive)?;
            let out_of_order = || DeviceLogError::OutOfOrder { path: path.clone() };
            if path == P_VERSION {
                if stage != 0 {
                    return Err(out_of_order());
                }
                if data != DEVICE_EVIDENCE_VERSION.as_bytes() {
                    return Err(DeviceLogError::UnsupportedVersion { found: String::from_utf8_lossy(&data).into() });
                }
                stage = 1;
            } else if path == P_VKEY {
                if stage != 1 {
                    return Err(out_of_order());
                }
                let text = std::str::from_utf8(&data).ok().and_then(|t| t.strip_suffix('\n')).ok_or({
                    DeviceLogError::BadDeviceKey {
                        source: NoteError::BadVkey { reason: "not text ending in a newline" },
                    }
                })?;
                v = Some(DeviceLogVerifier::new(text, pin)?);
                stage = 2;
            } else if let Some(index) = numbered(&path, P_EVENTS, ".ev") {
                let vv = v.as_mut().filter(|_| stage == 2).ok_or_else(out_of_order)?;
                vv.event(index, &data)?;
            } else if let Some(seq) = numbered(&path, P_CHECKPOINTS, ".note") {
                let vv = v.as_mut().filter(|_| stage >= 2).ok_or_else(out_of_order)?;
                stage = 3;
                if seq != next_cp {
                    return Err(out_of_order());
                }
                if seq >= MAX_DEVICE_CHECKPOINTS {
                    return Err(DeviceLogError::EntryTooLarge { path, size: seq, max: MAX_DEVICE_CHECKPOINTS });
                }
                next_cp += 1;
                let text = String::from_utf8(data).map_err(|_| DeviceLogError::BadCheckpoint {
                    seq,
                    source: NoteError::Malformed { reason: "not UTF-8" },
                })?;
                vv.checkpoint(seq, &text)?;
            } else {
                return Err(DeviceLogError::UnknownEntry { path });
            }
        }
    }
    evidence::check_end_of_archive(&mut input, end)?;
    let missing = |p: &str| DeviceLogError::MissingEntry { path: p.into() };
    match stage {
        0 => Err(missing(P_VERSION)),
        1 => Err(missing(P_VKEY)),
        _ => v.ok_or_else(|| missing(P_VKEY))?.finish(),
    }
}

/// Why a session's evidence is not the standing word of the device log on that session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StandingError {
    /// The device log was signed by another key than the session's evidence.
    #[error("the device log is signed by {device_log}, the session evidence by {evidence}")]
    OtherDevice { evidence: String, device_log: String },
    /// No `SessionCreated` event for the session.
    #[error("session {session_id} was never created in this device log")]
    NeverCreated { session_id: String },
    /// The session was deleted after its evidence was made.
    #[error("session {session_id} was DELETED (device-log event {index}) by {by}: {reason}")]
    Deleted { session_id: String, index: u64, by: &'static str, reason: String },
    /// The device log has no signed head of the session.
    #[error("the device log holds no signed head of session {session_id}")]
    NoHead { session_id: String },
    /// The evidence predates the `generation` field: it cannot be placed in the log.
    #[error("the manifest has no generation (made before the device log): it cannot be placed")]
    NoGeneration,
    /// A later manifest of the session exists: this one is not final.
    #[error(
        "the manifest is generation {manifest} of session {session_id}, the device log's latest head is generation {latest} (event {index}): a later manifest exists"
    )]
    NotLatest { session_id: String, manifest: u64, latest: u64, index: u64 },
    /// The latest head names another manifest, size or root than the evidence.
    #[error("the device log's head of generation {generation} (event {index}) names another {what} than the evidence")]
    HeadMismatch { generation: u64, index: u64, what: &'static str },
}

/// The session's latest signed head, which the evidence was proven to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub head: HeadSummary,
    /// The device log's size that was checked (its last checkpoint).
    pub device_log_size: u64,
}

/// Checks that verified session evidence is the device log's last word on that session:
/// the log (verified against the same key) holds the session's creation, its latest head
/// is the evidence's manifest (generation, SHA-256 of the signed bytes, tree size, root),
/// and no deletion follows. This closes two attacks a single session bundle cannot: an
/// older manifest passed off as final after the session was recorded again, and a session
/// deleted without a trace.
pub fn check_latest(evidence: &evidence::EvidenceReport, log: &DeviceLogReport) -> Result<Standing, StandingError> {
    if evidence.device_vkey != log.device_vkey {
        return Err(StandingError::OtherDevice {
            evidence: evidence.device_vkey.clone(),
            device_log: log.device_vkey.clone(),
        });
    }
    let sid = &evidence.session_id;
    // A reused id appears once per creation; the evidence is of the latest one.
    let session = log
        .sessions
        .iter()
        .rev()
        .find(|s| &s.session_id == sid)
        .ok_or_else(|| StandingError::NeverCreated { session_id: sid.clone() })?;
    if let Some(d) = &session.deleted {
        return Err(StandingError::Deleted {
            session_id: sid.clone(),
            index: d.index,
            by: d.by.as_str(),
            reason: d.reason.clone(),
        });
    }
    let head = session.head.clone().ok_or_else(|| StandingError::NoHead { session_id: sid.clone() })?;
    let generation = evidence.manifest.generation.ok_or(StandingError::NoGeneration)?;
    if generation != head.generation {
        return Err(StandingError::NotLatest {
            session_id: sid.clone(),
            manifest: generation,
            latest: head.generation,
            index: head.index,
        });
    }
    let mismatch = |what| Err(StandingError::HeadMismatch { generation, index: head.index, what });
    if head.manifest_digest != evidence.manifest_sha256 {
        return mismatch("manifest");
    }
    if head.tree_size != evidence.manifest.tree_size {
        return mismatch("tree size");
    }
    if hex::encode(&head.root) != evidence.root_hex {
        return mismatch("root");
    }
    Ok(Standing { head, device_log_size: log.events })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::{Signer, sign_checkpoint};

    /// A fixed key (the PKCS#8 v1 encoding of the RFC 8032 test 1 seed), so notes and
    /// device ids are the same on every run.
    fn fixed_signer() -> Signer {
        let seed = hexd("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let mut pkcs8 = hexd("302e020100300506032b657004220420");
        pkcs8.extend_from_slice(&seed);
        Signer::from_pkcs8("lucid-kat", &pkcs8).unwrap()
    }

    fn hexd(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn events() -> Vec<Event> {
        vec![
            Event {
                at_us: 1_700_000_000_000_000,
                kind: EventKind::SessionCreated { session_id: "s1".into(), kind: SessionKind::Camera },
            },
            Event {
                at_us: 1_700_000_001_000_000,
                kind: EventKind::SessionCreated { session_id: "s2".into(), kind: SessionKind::Data },
            },
            Event {
                at_us: 1_700_000_002_000_000,
                kind: EventKind::SessionHead {
                    session_id: "s1".into(),
                    generation: 1,
                    tree_size: 3,
                    root: [0x11; 32],
                    manifest_digest: [0x22; 32],
                },
            },
            Event {
                at_us: 1_700_000_003_000_000,
                kind: EventKind::SessionDeleted {
                    session_id: "s2".into(),
                    by: DeletedBy::Api,
                    reason: "deleted by an admin".into(),
                },
            },
            Event {
                at_us: 1_700_000_004_000_000,
                kind: EventKind::SessionHead {
                    session_id: "s1".into(),
                    generation: 2,
                    tree_size: 5,
                    root: [0x33; 32],
                    manifest_digest: [0x44; 32],
                },
            },
            Event { at_us: 5, kind: EventKind::FirmwareCommitted { version: "0.1.0".into(), build: "abc".into() } },
            Event { at_us: 6, kind: EventKind::ClockSynchronised { offset_us: -1_500 } },
            Event { at_us: 7, kind: EventKind::KeyRotated { new_key: [0x77; 32] } },
        ]
    }

    fn encoded() -> Vec<Vec<u8>> {
        events().iter().map(|e| e.encode().unwrap()).collect()
    }

    /// Notes over every prefix 1..=n of `enc`.
    fn notes(s: &Signer, enc: &[Vec<u8>]) -> Vec<String> {
        let leaves: Vec<Hash> = enc.iter().map(|e| event_leaf(e)).collect();
        let origin = device_origin(&s.verifier().device_id());
        (1..=leaves.len())
            .map(|n| {
                let cp = Checkpoint { origin: origin.clone(), size: n as u64, root: merkle::root(&leaves[..n]) };
                sign_checkpoint(&cp, s).unwrap()
            })
            .collect()
    }

    #[test]
    fn known_answers() {
        let e = Event {
            at_us: 1_700_000_000_000_000,
            kind: EventKind::SessionCreated { session_id: "s1".into(), kind: SessionKind::Camera },
        };
        let b = e.encode().unwrap();
        assert_eq!(hex::encode(&b), "010100060a24181e4000027331".to_owned() + "01");
        let d = Event {
            at_us: 2,
            kind: EventKind::SessionDeleted { session_id: "a".into(), by: DeletedBy::Retention, reason: "old".into() },
        };
        assert_eq!(hex::encode(&d.encode().unwrap()), "010300000000000000020161020003".to_owned() + "6f6c64");
        let h = Event {
            at_us: -1,
            kind: EventKind::SessionHead {
                session_id: "x".into(),
                generation: 2,
                tree_size: 7,
                root: [0xaa; 32],
                manifest_digest: [0xbb; 32],
            },
        };
        let hb = h.encode().unwrap();
        assert_eq!(
            hex::encode(&hb),
            format!(
                "0102ffffffffffffffff0178{}{}{}{}",
                "0000000000000002",
                "0000000000000007",
                "aa".repeat(32),
                "bb".repeat(32)
            )
        );
        // The leaf hashes, fixed: a change of encoding must change these on purpose.
        assert_eq!(hex::encode(&event_leaf(&b)), "0c956e0cfd38cf8530dccdffca89d4f90575053971cdfe405bfc6b7d4dfaa587");
        assert_eq!(hex::encode(&event_leaf(&hb)), "edce5a508b2680c532faca1cdcdfcbb8553b15267c330a8f04b8ed9ada638f6d");
        let enc = encoded();
        let leaves: Vec<Hash> = enc.iter().map(|e| event_leaf(e)).collect();
        assert_eq!(
            hex::encode(&merkle::root(&leaves)),
            "9699ff58bbcc5860fc0a52079e4aa36f4ff5c71a67cec73d54a0eff10b8a6072"
        );
        let s = fixed_signer();
        assert_eq!(device_origin(&s.verifier().device_id()), "lucid/lucid-21fe31dfa154a261");
        // Ed25519 is deterministic, so the signed note is fixed too.
        assert_eq!(
            notes(&s, &enc)[7],
            "lucid/lucid-21fe31dfa154a261\n8\nlpn/WLvMWGD8ClIHnkqjb0/1xxpnzsc9VKDv8QuKYHI=\n\n\u{2014} lucid-kat S1LSA3ewY5EIzmlWuInFar+M3II8fDO6liG6IezSCmURF2BMc57TYuEcXhnVUolSLsUyULJ0wS8HZqVqzXH4bNASgQI=\n"
        );
    }

    #[test]
    fn round_trip_and_strictness() {
        for (e, b) in events().iter().zip(encoded()) {
            assert_eq!(&Event::decode(&b).unwrap(), e);
            // Every strict prefix is truncated; any trailing byte is refused.
            for n in 0..b.len() {
                assert!(Event::decode(&b[..n]).is_err(), "{e:?} prefix {n}");
            }
            let mut t = b.clone();
            t.push(0);
            assert_eq!(Event::decode(&t), Err(EventError::TrailingBytes(1)));
        }
        let b = encoded()[0].clone();
        let mut v = b.clone();
        v[0] = 2;
        assert_eq!(Event::decode(&v), Err(EventError::Version(2)));
        v = b.clone();
        v[1] = 9;
        assert_eq!(Event::decode(&v), Err(EventError::UnknownType(9)));
        v = b.clone();
        *v.last_mut().unwrap() = 3;
        assert_eq!(Event::decode(&v), Err(EventError::UnknownKind(3)));
        v = b.clone();
        v[11] = b'/';
        assert!(matches!(Event::decode(&v), Err(EventError::SessionId(_))));
        assert!(matches!(Event::decode(&vec![1u8; MAX_EVENT + 1]), Err(EventError::TooLong { .. })));
        let long = Event {
            at_us: 0,
            kind: EventKind::SessionDeleted { session_id: "a".into(), by: DeletedBy::Api, reason: "x".repeat(257) },
        };
        assert!(long.encode().is_err());
        let ctl = Event {
            at_us: 0,
            kind: EventKind::SessionDeleted { session_id: "a".into(), by: DeletedBy::Api, reason: "a\nb".into() },
        };
        assert!(ctl.encode().is_err());
        let bad_sid =
            Event { at_us: 0, kind: EventKind::SessionCreated { session_id: "a b".into(), kind: SessionKind::Data } };
        assert!(bad_sid.encode().is_err());
    }

    #[test]
    fn verifies_and_reports() {
        let s = fixed_signer();
        let enc = encoded();
        let cps = notes(&s, &enc);
        let r = verify_device_log(&s.vkey(), &Pin::Unpinned, &enc, &cps).unwrap();
        assert_eq!(r.events, 8);
        assert_eq!(r.checkpoints_checked, 8);
        assert_eq!(r.sessions.len(), 2);
        assert_eq!(r.sessions[0].head.as_ref().unwrap().generation, 2);
        assert_eq!(r.sessions[0].deleted, None);
        let del = r.sessions[1].deleted.as_ref().unwrap();
        assert_eq!((del.by, del.reason.as_str(), del.index), (DeletedBy::Api, "deleted by an admin", 3));
        assert_eq!(r.device_events.len(), 3);
        // Only the last checkpoint is enough.
        verify_device_log(&s.vkey(), &Pin::Unpinned, &enc, &cps[7..]).unwrap();
        // A pin on another key refuses.
        let other = Signer::from_pkcs8("x", &crate::testutil::Fixture::fresh_pkcs8()).unwrap();
        let pin = Pin::vkey(&other.vkey()).unwrap();
        assert!(matches!(verify_device_log(&s.vkey(), &pin, &enc, &cps), Err(DeviceLogError::Pin { .. })));
        verify_device_log(&s.vkey(), &Pin::vkey(&s.vkey()).unwrap(), &enc, &cps).unwrap();
    }

    #[test]
    fn tampering_is_caught() {
        let s = fixed_signer();
        let enc = encoded();
        let cps = notes(&s, &enc);
        let vk = s.vkey();
        let run = |e: &[Vec<u8>], c: &[String]| verify_device_log(&vk, &Pin::Unpinned, e, c);
        // An event removed from the middle: the tree no longer matches.
        let mut e = enc.clone();
        e.remove(3);
        assert!(matches!(run(&e, &cps[..7]), Err(DeviceLogError::RootMismatch { .. })));
        // The last event removed (with the last checkpoint kept).
        assert!(matches!(run(&enc[..7], &cps), Err(DeviceLogError::CheckpointBeyondLog { .. })));
        // ...or with it dropped too: a consistent prefix, which only a later checkpoint
        // held elsewhere (a session's evidence, a witness) can show to be old.
        run(&enc[..7], &cps[..7]).unwrap();
        // Two events swapped.
        let mut e = enc.clone();
        e.swap(0, 1);
        assert!(matches!(run(&e, &cps), Err(DeviceLogError::RootMismatch { size: 1 })));
        // An event index skipped.
        let mut v = DeviceLogVerifier::new(&vk, &Pin::Unpinned).unwrap();
        v.event(0, &enc[0]).unwrap();
        assert!(matches!(v.event(2, &enc[2]), Err(DeviceLogError::Gap { index: 1, found: 2 })));
        // A fork: another history of size 2 signed by the same key.
        let mut forked = enc.clone();
        forked[1] =
            Event { at_us: 1, kind: EventKind::SessionCreated { session_id: "s9".into(), kind: SessionKind::Data } }
                .encode()
                .unwrap();
        let fork_note = notes(&s, &forked)[1].clone();
        let mut c = cps.clone();
        c.insert(2, fork_note);
        assert!(matches!(run(&enc, &c), Err(DeviceLogError::Fork { size: 2 })));
        // Checkpoints out of order, unsigned tail, none at all, a foreign key.
        let mut c = cps.clone();
        c.swap(2, 3);
        assert!(matches!(run(&enc, &c), Err(DeviceLogError::CheckpointOrder { .. })));
        assert!(matches!(run(&enc, &cps[..5]), Err(DeviceLogError::Unsigned { size: 5, events: 8 })));
        assert!(matches!(run(&enc, &[]), Err(DeviceLogError::NoCheckpoint)));
        let other = Signer::from_pkcs8("lucid-kat", &crate::testutil::Fixture::fresh_pkcs8()).unwrap();
        assert!(matches!(run(&enc, &notes(&other, &enc)), Err(DeviceLogError::BadCheckpoint { .. })));
        // A head of a session never created; a generation skipped; a double create.
        let head = |sid: &str, generation| {
            Event {
                at_us: 0,
                kind: EventKind::SessionHead {
                    session_id: sid.into(),
                    generation,
                    tree_size: 9,
                    root: [0; 32],
                    manifest_digest: [0; 32],
                },
            }
            .encode()
            .unwrap()
        };
        for extra in [head("nope", 1), head("s1", 4), enc[0].clone(), head("s2", 1)] {
            let mut e = enc.clone();
            e.push(extra);
            let c = notes(&s, &e);
            assert!(matches!(run(&e, &c), Err(DeviceLogError::Inconsistent { index: 8, .. })));
        }
        // A deleted id may be created again: a new life.
        let mut e = enc.clone();
        e.push(enc[1].clone());
        let r = run(&e, &notes(&s, &e)).unwrap();
        assert_eq!(r.sessions.len(), 3);
    }

    fn tar_of(s: &Signer, enc: &[Vec<u8>], cps: &[String]) -> Vec<u8> {
        let mut w = DeviceEvidenceWriter::new(Vec::new(), &s.vkey()).unwrap();
        for e in enc {
            w.event(e).unwrap();
        }
        for c in cps {
            w.checkpoint(c).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn evidence_tar() {
        let s = fixed_signer();
        let enc = encoded();
        let cps = notes(&s, &enc);
        let t = tar_of(&s, &enc, &cps);
        let r = verify_device_evidence(&t[..], &Pin::Unpinned).unwrap();
        assert_eq!((r.events, r.sessions.len()), (8, 2));
        // Same input, same bytes.
        assert_eq!(t, tar_of(&s, &enc, &cps));
        // An event removed from the archive: a gap.
        let mut e = enc.clone();
        e.remove(2);
        let mut w = DeviceEvidenceWriter::new(Vec::new(), &s.vkey()).unwrap();
        for (i, ev) in enc.iter().enumerate() {
            if i != 2 {
                w.append(format!("{P_EVENTS}{i:020}.ev"), ev).unwrap();
            }
        }
        let gap = w.finish().unwrap();
        assert!(matches!(verify_device_evidence(&gap[..], &Pin::Unpinned), Err(DeviceLogError::Gap { index: 2, .. })));
        // A byte flipped in an event.
        let pos = t.windows(2).position(|w| w == b"s2").unwrap();
        let mut bad = t.clone();
        bad[pos + 1] = b'3';
        assert!(verify_device_evidence(&bad[..], &Pin::Unpinned).is_err());
        // Truncated archive, wrong version, pinned to another device.
        assert!(verify_device_evidence(&t[..t.len() / 2], &Pin::Unpinned).is_err());
        let other = Signer::from_pkcs8("x", &crate::testutil::Fixture::fresh_pkcs8()).unwrap();
        assert!(matches!(
            verify_device_evidence(&t[..], &Pin::device_id(&other.verifier().device_id()).unwrap()),
            Err(DeviceLogError::Pin { .. })
        ));
        let empty = DeviceEvidenceWriter::new(Vec::new(), &s.vkey()).unwrap().finish().unwrap();
        assert!(matches!(verify_device_evidence(&empty[..], &Pin::Unpinned), Err(DeviceLogError::NoCheckpoint)));
    }
}
