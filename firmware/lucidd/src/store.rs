//! The store: the session store is one redb database file, the source of truth for
//! sessions, records, checkpoints, manifests and Merkle nodes; the sealed bytes of each
//! chunk live in its session's append-only value log (`vlog/<session>.vlog`, see
//! `store/vlog.rs`) and redb holds where they are.
//!
//! Owns the table layout and the value-log framing (see docs/design.md, "Store" and
//! "Value log"), and the commit protocol that keeps the two consistent. Architecture
//! invariant: this is the only module that touches redb or the value logs; the rest of the
//! daemon sees typed rows and byte strings. It knows nothing of HTTP, sealing or media: it
//! stores what it is given, in transactions the caller chooses.
//!
//! Durability, one flush per chunk: `commit_chunk` appends ONE log entry holding the
//! sealed bytes and every row the chunk changes, `fdatasync`s the log, and only then
//! commits those rows to redb with `Durability::None` (visible at once, not yet flushed).
//! A durable redb commit happens every `BatchPolicy` entries, bytes or seconds, with every
//! other write (sessions, checkpoints, epochs, deletions) and at close; it also records
//! how far into each log redb is durable (`VLOG_END`). After a crash `open` replays each
//! log's intact entries beyond that point and cuts a torn tail, so every chunk whose
//! `commit_chunk` returned is back. Every other write transaction commits with
//! `Durability::Immediate`. redb's copy-on-write commit leaves the previous durable commit
//! intact under a torn write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

/// Small named values: the restart epoch, the schema version.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Session rows (JSON of `engine::SessionRow`), keyed by session id.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Sealed chunks (header ‖ ciphertext) inline, keyed by (session id, chunk index): the
/// layout before value logs. Still read and deleted so older data directories keep
/// working; nothing new is written here.
const CHUNKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chunks");
/// Canonical chunk records (the Merkle leaves' input), keyed like CHUNKS.
const RECORDS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("records");
/// Client metadata of a chunk (JSON) for the Lucid services, keyed like CHUNKS.
const CHUNK_META: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chunk_meta");
/// A client's chunk id -> chunk index, per session.
const CHUNK_IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("chunk_ids");
/// Signed checkpoints (signed-note text), keyed by (session id, tree size).
const CHECKPOINTS: TableDefinition<(&str, u64), &str> = TableDefinition::new("checkpoints");
/// The CMAF init segment of a camera session (plaintext: codec parameters only).
const INIT: TableDefinition<&str, &[u8]> = TableDefinition::new("init_segments");
/// Signed manifests: JSON bytes exactly as signed, and the 64-byte signature.
const MANIFESTS: TableDefinition<&str, (&[u8], &[u8])> = TableDefinition::new("manifests");
/// Complete-subtree hashes of each session's Merkle log, keyed by (session id, level,
/// index): the SHA-256 of leaves `[index·2^level, (index+1)·2^level)` (level 0 = the leaf
/// hash). Written with the chunk that completes them, so a proof reads O(log² n) nodes
/// instead of rehashing every record. Older stores lack it; `Engine::open` backfills.
const MERKLE_NODES: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("merkle_nodes");

/// Where a chunk's sealed bytes are: (offset, length) in its session's value log.
const CHUNK_LOC: TableDefinition<(&str, u64), (u64, u32)> = TableDefinition::new("chunk_loc");
/// Per session, the end of the last value-log entry whose rows this commit holds: a
/// durable redb state holds every entry before it, recovery replays those after it.
const VLOG_END: TableDefinition<&str, u64> = TableDefinition::new("vlog_end");

/// The device log (docs/design.md, "Device log"): event index -> the event's canonical
/// bytes (`lucid_core::devlog::Event::encode`). Indices run 0..n without gaps.
const DEVICE_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("device_log");
/// Signed device checkpoints (signed-note text), keyed by tree size: one per append.
const DEVICE_CHECKPOINTS: TableDefinition<u64, &str> = TableDefinition::new("device_checkpoints");
/// Complete-subtree hashes of the device log, keyed by (level, index), as `MERKLE_NODES`
/// for the session logs: a proof or a new root reads O(log n) of them.
const DEVICE_NODES: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("device_nodes");

mod vlog;
pub use vlog::{FsVlog, VlogBackend};

const SCHEMA_VERSION: &[u8] = b"1";

/// Errors of the store boundary. `Full` is kept apart because callers answer it
/// differently (507, and the recorder stops cleanly) from a corrupt or unreadable file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data partition is full ({0})")]
    Full(String),
    #[error("cannot open the store at {path}: {source}")]
    Open { path: PathBuf, source: redb::DatabaseError },
    #[error("store {op} failed: {msg}")]
    Db { op: &'static str, msg: String },
    #[error("store row {key} is corrupt: {msg}")]
    Corrupt { key: String, msg: String },
    #[error("the store was written by schema {found}, this build reads schema 1")]
    Schema { found: String },
}

fn classify(op: &'static str, msg: String) -> StoreError {
    // redb reports IO errors through Display only; ENOSPC and EDQUOT are the "disk full"
    // conditions the daemon must treat as a clear, non-fatal refusal.
    let lower = msg.to_ascii_lowercase();
    if lower.contains("no space left") || lower.contains("quota exceeded") || lower.contains("os error 28") {
        StoreError::Full(msg)
    } else {
        StoreError::Db { op, msg }
    }
}

/// Maps a redb error to a `StoreError`, and marks the database for reopening: after an
/// IO error redb refuses every further transaction ("Previous I/O error occurred") until
/// the database is closed and opened again.
macro_rules! db {
    ($s:ident, $op:expr, $e:expr) => {
        $e.map_err(|e| $s.fail($op, e.to_string()))
    };
}

/// One sealed part of a chunk commit.
pub struct PartWrite<'a> {
    pub index: u64,
    /// `None`: a record whose sealed bytes are not kept (as after a redaction); the
    /// read benchmark builds its synthetic logs this way.
    pub sealed: Option<&'a [u8]>,
    pub record: &'a [u8],
    pub client_id: Option<&'a str>,
    pub client_meta: Option<&'a [u8]>,
}

/// One Merkle node: (level, index, SHA-256).
pub type Node = (u32, u64, [u8; 32]);

/// A manifest's JSON bytes exactly as signed, and the 64-byte Ed25519 signature.
pub type SignedManifest = (Vec<u8>, Vec<u8>);

/// One committed chunk (all its parts), as `commit_chunk` writes it.
pub struct ChunkWrite<'a> {
    pub session_id: &'a str,
    pub parts: &'a [PartWrite<'a>],
    /// The complete subtrees these parts finish (see `MERKLE_NODES`).
    pub nodes: &'a [Node],
    /// The session row after this chunk, written in the same transaction so counters
    /// never disagree with the chunks that exist.
    pub session_row: &'a [u8],
}

/// One device-log append: the event, the subtree hashes it completes and the checkpoint
/// signed over the log with it, written in the transaction of the change it records.
pub struct DeviceAppend<'a> {
    /// Must be the number of events already stored; the write is refused otherwise.
    pub index: u64,
    pub event: &'a [u8],
    pub nodes: &'a [Node],
    /// The signed checkpoint of size `index + 1`.
    pub note: &'a str,
}

type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// When the rows of logged chunks are made durable in redb. Between two durable commits
/// they exist in redb's memory and, durably, in the value logs; so the policy bounds the
/// replay at the next open (time and bytes), never what survives a crash.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub entries: u32,
    pub bytes: u64,
    pub interval: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        // 256 one-second chunks, 128 MiB or a minute: the replay after a power cut reads
        // at most 128 MiB of log (about 3 s from an SD card at 40 MB/s), and a durable
        // redb commit (a few pages and one flush) is spread over hundreds of chunks.
        BatchPolicy { entries: 256, bytes: 128 << 20, interval: Duration::from_secs(60) }
    }
}

#[derive(Debug)]
struct Pending {
    entries: u32,
    bytes: u64,
    since: Instant,
}

/// A session's value log as the writer sees it. `end` is where the next entry goes;
/// `broken` is set when a failed append could not be undone, so no later entry is
/// written behind a stray one until the store is opened again (and recovery decides).
#[derive(Debug, Default)]
struct LogState {
    end: Option<u64>,
    /// Blocks are reserved (`VlogBackend::reserve`) up to here, past `end`.
    reserved: u64,
    broken: bool,
}

/// One session's value log: the writer's state, taken for a whole append, and how far
/// the log holds acknowledged entries, readable without that lock. A reopen after an IO
/// error replays only up to `acked`: the entry being appended past it belongs to the
/// writer, which either applies its rows itself or takes it back out of the log.
#[derive(Debug, Default)]
struct LogSlot {
    state: Mutex<LogState>,
    /// The end of the last entry whose rows were committed to redb (not necessarily
    /// durably). Raised while the committer still holds the database's read guard, so a
    /// reopen (which takes the write side) sees every entry whose `commit_chunk` returned.
    acked: AtomicU64,
}

/// How far ahead of a log's end blocks are reserved. Appending into reserved blocks took
/// about a fifth off an append + `fdatasync` in the benchmark (the file system allocates
/// at `fallocate`, not at each flush). One log holds a reserve at a time (the one being
/// appended to), and a clean close hands it back, so it costs at most this much space.
const RESERVE: u64 = 16 << 20;

pub struct Store {
    /// `None` only between closing a failed database and reopening it.
    db: RwLock<Option<Database>>,
    opener: Opener,
    /// Set by any failed operation; the next operation reopens the database first.
    poisoned: AtomicBool,
    path: PathBuf,
    vlog: Arc<dyn VlogBackend>,
    logs: Mutex<HashMap<String, Arc<LogSlot>>>,
    pending: Mutex<Pending>,
    policy: Mutex<BatchPolicy>,
    /// The session whose log holds the reserve (`RESERVE`), if any.
    reserved_by: Mutex<Option<String>>,
    /// The length of each live session's value log: the store's own accounting of the
    /// bytes sessions hold (see `accounted_bytes`).
    sizes: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn live<'a>(g: &'a RwLockReadGuard<'_, Option<Database>>) -> Result<&'a Database, StoreError> {
    g.as_ref().ok_or_else(|| StoreError::Db { op: "open", msg: "the store is closed after an IO error".into() })
}

impl Store {
    /// Opens (creating if needed) the database and all its tables, checks the schema, and
    /// replays the value logs' entries a crash left beyond redb's durable state. The value
    /// logs live in `vlog/` beside the database file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let p = path.to_owned();
        Store::with_opener(path, Box::new(move || Database::create(&p)), fs_vlog(path)?)
    }

    /// Opens the store over another redb backend (value logs on the file system beside
    /// `path`): the fault-injection tests use this to fill the disk or cut the power
    /// between two writes. `path` is only a label (and where free space is measured).
    pub fn open_with_backend<B: redb::StorageBackend + Clone>(path: &Path, backend: B) -> Result<Store, StoreError> {
        Store::open_with_backends(path, backend, fs_vlog(path)?)
    }

    /// Like `open_with_backend`, with the value logs over `vlog` too.
    pub fn open_with_backends<B: redb::StorageBackend + Clone>(
        path: &Path,
        backend: B,
        vlog: Arc<dyn VlogBackend>,
    ) -> Result<Store, StoreError> {
        Store::with_opener(path, Box::new(move || redb::Builder::new().create_with_backend(backend.clone())), vlog)
    }

    /// Replaces the durable-commit policy (the benchmark measures replay with it).
    pub fn set_batch_policy(&self, p: BatchPolicy) {
        *lock(&self.policy) = p;
    }

    fn with_opener(path: &Path, opener: Opener, vlog: Arc<dyn VlogBackend>) -> Result<Store, StoreError> {
        let db = opener().map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        let store = Store {
            db: RwLock::new(Some(db)),
            opener,
            poisoned: AtomicBool::new(false),
            path: path.to_owned(),
            vlog,
            logs: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending { entries: 0, bytes: 0, since: Instant::now() }),
            policy: Mutex::new(BatchPolicy::default()),
            reserved_by: Mutex::new(None),
            sizes: Mutex::new(HashMap::new()),
        };
        let g = store.handle()?;
        let db = live(&g)?;
        let txn = db!(store, "begin_write", db.begin_write())?;
        {
            let mut meta = db!(store, "open meta", txn.open_table(META))?;
            let existing = db!(store, "read schema", meta.get("schema"))?.map(|v| v.value().to_vec());
            match existing {
                None => {
                    db!(store, "write schema", meta.insert("schema", SCHEMA_VERSION))?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(v) => return Err(StoreError::Schema { found: String::from_utf8_lossy(&v).into_owned() }),
            }
            // Create every table so readers never meet a missing one.
            db!(store, "open", txn.open_table(SESSIONS))?;
            db!(store, "open", txn.open_table(CHUNKS))?;
            db!(store, "open", txn.open_table(RECORDS))?;
            db!(store, "open", txn.open_table(CHUNK_META))?;
            db!(store, "open", txn.open_table(CHUNK_IDS))?;
            db!(store, "open", txn.open_table(CHECKPOINTS))?;
            db!(store, "open", txn.open_table(INIT))?;
            db!(store, "open", txn.open_table(MANIFESTS))?;
            db!(store, "open", txn.open_table(MERKLE_NODES))?;
            db!(store, "open", txn.open_table(CHUNK_LOC))?;
            db!(store, "open", txn.open_table(VLOG_END))?;
            db!(store, "open", txn.open_table(DEVICE_LOG))?;
            db!(store, "open", txn.open_table(DEVICE_CHECKPOINTS))?;
            db!(store, "open", txn.open_table(DEVICE_NODES))?;
        }
        store.commit_durable(txn)?;
        store.replay(db)?;
        drop(g);
        // After the replay, which removed the logs of deleted sessions and cut torn tails.
        let mut sizes = HashMap::new();
        for name in store.vlog.list().map_err(|e| classify("vlog list", e.to_string()))? {
            if let Some(sid) = vlog::session_of(&name) {
                sizes.insert(sid, store.vlog.len(&name).map_err(|e| classify("vlog length", e.to_string()))?);
            }
        }
        *lock(&store.sizes) = sizes;
        Ok(store)
    }

    fn fail(&self, op: &'static str, msg: String) -> StoreError {
        self.poisoned.store(true, Ordering::SeqCst);
        classify(op, msg)
    }

    /// The open database, reopened first if the last operation failed.
    fn handle(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        if self.poisoned.load(Ordering::SeqCst) {
            let mut w = self.db.write().unwrap_or_else(|p| p.into_inner());
            if self.poisoned.load(Ordering::SeqCst) {
                // Close first: the file lock must be released before it is taken again.
                *w = None;
                let db = (self.opener)().map_err(|source| StoreError::Open { path: self.path.clone(), source })?;
                // The rows of logged chunks that were not yet durable in redb went with
                // the closed database: put them back from the value logs (only the
                // acknowledged entries: an append in flight is its writer's to finish).
                self.replay(&db)?;
                *w = Some(db);
                self.poisoned.store(false, Ordering::SeqCst);
                tracing::warn!(path = %self.path.display(), "store reopened after an IO error");
            }
        }
        Ok(self.db.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Durably moves the restart epoch on and returns the new value. Called once per
    /// start before anything is sealed, and again whenever an index may have been sealed
    /// without being committed: (epoch, index) is the AEAD nonce and must never repeat.
    pub fn next_epoch(&self) -> Result<u32, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        let next = {
            let mut meta = db!(self, "open meta", txn.open_table(META))?;
            let cur = match db!(self, "read epoch", meta.get("epoch"))? {
                Some(v) => {
                    let b: [u8; 4] = v
                        .value()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt { key: "meta/epoch".into(), msg: "not 4 bytes".into() })?;
                    u32::from_be_bytes(b)
                }
                None => 0,
            };
            let next = cur
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt { key: "meta/epoch".into(), msg: "epoch exhausted".into() })?;
            db!(self, "write epoch", meta.insert("epoch", &next.to_be_bytes()[..]))?;
            next
        };
        self.commit_durable(txn)?;
        Ok(next)
    }

    /// A small device setting (JSON) in the meta table; `None` when never set.
    pub fn get_setting<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.fail("open meta", e.to_string())),
        };
        let Some(v) = db!(self, "read setting", meta.get(key))? else { return Ok(None) };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt { key: format!("meta/{key}"), msg: e.to_string() })
    }

    /// Stores a device setting durably (one committed transaction).
    pub fn put_setting<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.write_setting(key, value, None)
    }

    /// Stores a device setting and, in the same transaction, the device-log event that
    /// records it: a crash keeps both or neither.
    pub fn put_setting_with_event<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        dev: &DeviceAppend<'_>,
    ) -> Result<(), StoreError> {
        self.write_setting(key, value, Some(dev))
    }

    fn write_setting<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        dev: Option<&DeviceAppend<'_>>,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StoreError::Corrupt { key: format!("meta/{key}"), msg: e.to_string() })?;
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        {
            let mut meta = db!(self, "open meta", txn.open_table(META))?;
            db!(self, "write setting", meta.insert(key, &bytes[..]))?;
        }
        if let Some(dev) = dev {
            self.write_device(&txn, dev)?;
        }
        self.commit_durable(txn)
    }

    pub fn put_session<T: Serialize>(&self, id: &str, row: &T) -> Result<(), StoreError> {
        self.write_session(id, row, None)
    }

    /// Stores a new session row and, in the same transaction, its device-log event.
    pub fn create_session<T: Serialize>(&self, id: &str, row: &T, dev: &DeviceAppend<'_>) -> Result<(), StoreError> {
        self.write_session(id, row, Some(dev))
    }

    fn write_session<T: Serialize>(&self, id: &str, row: &T, dev: Option<&DeviceAppend<'_>>) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(row).map_err(|e| StoreError::Corrupt { key: id.into(), msg: e.to_string() })?;
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        {
            let mut t = db!(self, "open sessions", txn.open_table(SESSIONS))?;
            db!(self, "insert session", t.insert(id, bytes.as_slice()))?;
        }
        if let Some(dev) = dev {
            self.write_device(&txn, dev)?;
        }
        self.commit_durable(txn)
    }

    /// Appends a device-log event on its own (events that record no other store change).
    pub fn append_device(&self, dev: &DeviceAppend<'_>) -> Result<(), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        self.write_device(&txn, dev)?;
        self.commit_durable(txn)
    }

    fn write_device(&self, txn: &redb::WriteTransaction, dev: &DeviceAppend<'_>) -> Result<(), StoreError> {
        let mut log = db!(self, "open device_log", txn.open_table(DEVICE_LOG))?;
        let len = db!(self, "len device_log", log.len())?;
        if len != dev.index {
            return Err(StoreError::Corrupt {
                key: format!("device_log/{}", dev.index),
                msg: format!("append at {} to a log of {len} events", dev.index),
            });
        }
        db!(self, "insert device event", log.insert(dev.index, dev.event))?;
        let mut cps = db!(self, "open device_checkpoints", txn.open_table(DEVICE_CHECKPOINTS))?;
        db!(self, "insert device checkpoint", cps.insert(dev.index + 1, dev.note))?;
        let mut nodes = db!(self, "open device_nodes", txn.open_table(DEVICE_NODES))?;
        for (level, index, hash) in dev.nodes {
            db!(self, "insert device node", nodes.insert((*level as u8, *index), &hash[..]))?;
        }
        Ok(())
    }

    /// Number of device-log events.
    pub fn device_log_len(&self) -> Result<u64, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open device_log", txn.open_table(DEVICE_LOG))?;
        db!(self, "len device_log", t.len())
    }

    /// Device-log events `[start, end)`, in index order.
    pub fn device_events(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open device_log", txn.open_table(DEVICE_LOG))?;
        let mut out = Vec::new();
        if start < end {
            for item in db!(self, "range device_log", t.range(start..end))? {
                let (k, v) = db!(self, "range device_log", item)?;
                out.push((k.value(), v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// Device checkpoints of sizes `[from, to]`, ascending.
    pub fn device_checkpoints(&self, from: u64, to: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open device_checkpoints", txn.open_table(DEVICE_CHECKPOINTS))?;
        let mut out = Vec::new();
        if from <= to {
            for item in db!(self, "range device_checkpoints", t.range(from..=to))? {
                let (k, v) = db!(self, "range device_checkpoints", item)?;
                out.push((k.value(), v.value().to_owned()));
            }
        }
        Ok(out)
    }

    /// The latest device checkpoint, one lookup.
    pub fn last_device_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open device_checkpoints", txn.open_table(DEVICE_CHECKPOINTS))?;
        match db!(self, "last device checkpoint", t.last())? {
            None => Ok(None),
            Some((k, v)) => Ok(Some((k.value(), v.value().to_owned()))),
        }
    }

    /// `with_merkle_nodes` for the device log; also returns the number of events in the
    /// same snapshot, so a proof never asks for a node the snapshot lacks.
    pub fn with_device_nodes<R>(
        &self,
        f: impl FnOnce(u64, &mut dyn FnMut(u32, u64) -> Result<[u8; 32], StoreError>) -> R,
    ) -> Result<R, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let len = db!(self, "len device_log", db!(self, "open device_log", txn.open_table(DEVICE_LOG))?.len())?;
        let t = db!(self, "open device_nodes", txn.open_table(DEVICE_NODES))?;
        let mut lookup = |level: u32, index: u64| -> Result<[u8; 32], StoreError> {
            let corrupt =
                |msg: &str| StoreError::Corrupt { key: format!("device_nodes/{level}/{index}"), msg: msg.into() };
            let v = db!(self, "get device node", t.get((level as u8, index)))?.ok_or_else(|| corrupt("missing"))?;
            v.value().try_into().map_err(|_| corrupt("not 32 bytes"))
        };
        Ok(f(len, &mut lookup))
    }

    pub fn get_session<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open sessions", txn.open_table(SESSIONS))?;
        match db!(self, "get session", t.get(id))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| StoreError::Corrupt { key: format!("sessions/{id}"), msg: e.to_string() }),
        }
    }

    pub fn list_sessions<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open sessions", txn.open_table(SESSIONS))?;
        let mut out = Vec::new();
        for item in db!(self, "iter sessions", t.iter())? {
            let (k, v) = db!(self, "iter sessions", item)?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Corrupt { key: format!("sessions/{}", k.value()), msg: e.to_string() })?,
            );
        }
        Ok(out)
    }

    /// Writes one chunk — every sealed part with its record, client id and metadata, the
    /// Merkle nodes they complete, and the updated session row — as ONE value-log entry,
    /// flushed once, and one redb transaction: after a crash or a failed part either all
    /// of it exists or none does, so a multi-part upload never leaves committed parts
    /// behind. When this returns `Ok` the chunk survives a power cut.
    pub fn commit_chunk(&self, w: &ChunkWrite<'_>) -> Result<(), StoreError> {
        let (entry, sealed_at) = encode_entry(w);
        let slot = self.log_state(w.session_id);
        let mut st = lock(&slot.state);
        if st.broken {
            return Err(StoreError::Db {
                op: "vlog append",
                msg: format!("the value log of {} needs recovery (restart the daemon)", w.session_id),
            });
        }
        let name = vlog::file_name(w.session_id);
        let start = match st.end {
            Some(e) => e,
            None => self.vlog.len(&name).map_err(|e| classify("vlog length", e.to_string()))?,
        };
        if start + entry.len() as u64 > st.reserved {
            let len = RESERVE.max(entry.len() as u64);
            let previous = lock(&self.reserved_by).replace(w.session_id.to_owned());
            if let Some(other) = previous.filter(|o| o != w.session_id) {
                self.release_reserve(&other);
            }
            match self.vlog.reserve(&name, start, len) {
                Ok(()) => st.reserved = start + len,
                // A full card or a file system without it: append without a reserve.
                Err(e) => tracing::debug!(log = %name, error = %e, "no reserve"),
            }
        }
        // 1. The log entry, flushed: from here on the chunk survives a power cut.
        let appended = self.vlog.write(&name, start, &entry).and_then(|()| self.vlog.sync_data(&name));
        if let Err(e) = appended {
            self.undo_append(&mut st, &name, start);
            return Err(classify("vlog append", e.to_string()));
        }
        let end = start + entry.len() as u64;
        // 2. Its rows in redb, flushed only every `BatchPolicy` (replay covers the rest).
        let locs: Vec<Option<(u64, u32)>> =
            sealed_at.iter().map(|s| s.map(|(at, len)| (start + at as u64, len as u32))).collect();
        let durable = {
            let mut p = lock(&self.pending);
            let pol = *lock(&self.policy);
            p.entries += 1;
            p.bytes += entry.len() as u64;
            p.entries >= pol.entries || p.bytes >= pol.bytes || p.since.elapsed() >= pol.interval
        };
        if let Err(e) = self.apply_chunk(w, &locs, end, durable, &slot.acked) {
            self.undo_append(&mut st, &name, start);
            return Err(e);
        }
        st.end = Some(end);
        lock(&self.sizes).insert(w.session_id.to_owned(), end);
        Ok(())
    }

    /// Takes a failed entry back out of the log, so recovery can never apply it behind the
    /// caller's back (the engine seals that index again, under a new epoch). If even that
    /// fails the log is marked broken: no entry goes after a stray one.
    fn undo_append(&self, st: &mut LogState, name: &str, start: u64) {
        let undone = self.vlog.set_len(name, start).and_then(|()| self.vlog.sync_data(name));
        match undone {
            Ok(()) => st.end = Some(start),
            Err(e) => {
                tracing::error!(log = name, error = %e, "cannot take a failed entry out of the value log");
                st.broken = true;
            }
        }
    }

    fn apply_chunk(
        &self,
        w: &ChunkWrite<'_>,
        locs: &[Option<(u64, u32)>],
        end: u64,
        durable: bool,
        acked: &AtomicU64,
    ) -> Result<(), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let mut txn = db!(self, "begin_write", db.begin_write())?;
        if !durable {
            db!(self, "set durability", txn.set_durability(Durability::None))?;
        }
        db!(self, "apply chunk", apply_rows(&txn, w, locs, end))?;
        if durable {
            self.commit_durable(txn)?;
        } else {
            db!(self, "commit", txn.commit())?;
        }
        // Still under the read guard `g`: no reopen can come between the commit and this.
        acked.store(end, Ordering::SeqCst);
        Ok(())
    }

    /// Commits with `Durability::Immediate`, which also makes every earlier non-durable
    /// commit durable: the batch of logged chunks starts again from zero.
    fn commit_durable(&self, txn: redb::WriteTransaction) -> Result<(), StoreError> {
        db!(self, "commit", txn.commit())?;
        let mut p = lock(&self.pending);
        *p = Pending { entries: 0, bytes: 0, since: Instant::now() };
        Ok(())
    }

    /// Makes every logged chunk's rows durable in redb now and hands back the blocks
    /// reserved past each log's end (clean shutdown, benchmarks).
    pub fn flush(&self) -> Result<(), StoreError> {
        {
            let g = self.handle()?;
            let db = live(&g)?;
            let txn = db!(self, "begin_write", db.begin_write())?;
            self.commit_durable(txn)?;
        }
        if let Some(sid) = lock(&self.reserved_by).take() {
            self.release_reserve(&sid);
        }
        Ok(())
    }

    /// Frees the blocks reserved past a log's end. Skipped (and logged) when that log is
    /// being appended to right now: its own next reserve or close releases it.
    fn release_reserve(&self, sid: &str) {
        let Some(slot) = lock(&self.logs).get(sid).cloned() else { return };
        let Ok(mut st) = slot.state.try_lock() else { return };
        if let Some(end) = st.end
            && st.reserved > end
        {
            let name = vlog::file_name(sid);
            // Truncating to the current size frees the blocks past it (a hole punched past
            // the end would be ignored by ext4).
            match self.vlog.set_len(&name, end) {
                Ok(()) => st.reserved = 0,
                Err(e) => tracing::warn!(log = %name, error = %e, "cannot release the reserve"),
            }
        }
    }

    fn log_state(&self, sid: &str) -> Arc<LogSlot> {
        lock(&self.logs).entry(sid.to_owned()).or_default().clone()
    }

    /// Crash recovery of the value logs, run on every (re)open of the database before
    /// anything else uses it: removes the logs of deleted sessions, applies each log's
    /// intact entries after the durable `VLOG_END`, cuts a torn tail, and commits that
    /// durably. Entries are flushed one at a time, so only the last can be torn.
    ///
    /// A reopen after an IO error runs this while writers may be mid-append: for a log
    /// this process already writes (it has a `LogSlot`) only the acknowledged entries are
    /// applied and nothing is cut. The entry past them is its writer's, which applies its
    /// rows itself or takes it back out; applying it here would let redb durably point past
    /// a log the writer then truncates.
    fn replay(&self, db: &Database) -> Result<(), StoreError> {
        let io = |op: &'static str| move |e: std::io::Error| classify(op, e.to_string());
        let names = self.vlog.list().map_err(io("vlog list"))?;
        if names.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let (mut entries, mut bytes) = (0u64, 0u64);
        // Which logs belong to live sessions, and where redb's durable state ends in each.
        let mut orphans = Vec::new();
        let mut todo = Vec::new();
        {
            let rtxn = db!(self, "begin_read", db.begin_read())?;
            let sessions = db!(self, "open sessions", rtxn.open_table(SESSIONS))?;
            let ends = db!(self, "open vlog_end", rtxn.open_table(VLOG_END))?;
            for name in names {
                let Some(sid) = vlog::session_of(&name) else { continue };
                if db!(self, "get session", sessions.get(sid.as_str()))?.is_none() {
                    // Deleted in redb, the crash came before the unlink.
                    orphans.push(name);
                    continue;
                }
                let off = db!(self, "get vlog end", ends.get(sid.as_str()))?.map(|v| v.value()).unwrap_or(0);
                todo.push((name, sid, off));
            }
        }
        let txn = db!(self, "begin_write", db.begin_write())?;
        for (name, sid, mut off) in todo {
            let durable_end = off;
            let len = self.vlog.len(&name).map_err(io("vlog length"))?;
            if off > len {
                return Err(StoreError::Corrupt {
                    key: format!("vlog/{name}"),
                    msg: format!("redb holds entries up to {off}, the log is {len} bytes"),
                });
            }
            let slot = lock(&self.logs).get(&sid).cloned();
            // How far to replay: to the acknowledged end of a log being written, else to
            // the log's end.
            let limit = slot.as_ref().map_or(len, |s| s.acked.load(Ordering::SeqCst).min(len));
            while off < limit {
                let Some(payload) = vlog::read_entry(&*self.vlog, &name, off, len).map_err(io("vlog read"))? else {
                    if slot.is_none() {
                        break; // a torn tail, cut below
                    }
                    return Err(StoreError::Corrupt {
                        key: format!("vlog/{name}@{off}"),
                        msg: format!(
                            "an acknowledged entry (the log is acknowledged up to {limit}) does not read back"
                        ),
                    });
                };
                let next = off + (vlog::HEADER + payload.len()) as u64;
                let (w, sealed_at) = decode_entry(&payload).ok_or_else(|| StoreError::Corrupt {
                    key: format!("vlog/{name}@{off}"),
                    msg: "bad entry".into(),
                })?;
                let locs: Vec<Option<(u64, u32)>> =
                    sealed_at.iter().map(|s| s.map(|(at, l)| (off + (vlog::HEADER + at) as u64, l as u32))).collect();
                let parts: Vec<PartWrite<'_>> = w.parts.iter().map(|p| p.as_write()).collect();
                let cw = ChunkWrite { session_id: &sid, parts: &parts, nodes: &w.nodes, session_row: w.row };
                db!(self, "replay chunk", apply_rows(&txn, &cw, &locs, next))?;
                entries += 1;
                bytes += next - off;
                off = next;
            }
            if let Some(slot) = slot {
                // A writer's log: its tail is its own, except after an append that could
                // not be taken back, which is cut here (under its lock) so it can go on.
                if let Ok(mut st) = slot.state.try_lock()
                    && st.broken
                {
                    let cut = self.vlog.set_len(&name, off).and_then(|()| self.vlog.sync_data(&name));
                    if cut.is_ok() {
                        tracing::warn!(log = %name, at = off, "cut the entry a failed append left behind");
                        *st = LogState { end: Some(off), reserved: 0, broken: false };
                    }
                }
                continue;
            }
            if off < len {
                tracing::warn!(log = %name, at = off, dropped = len - off, "cutting a torn value-log tail");
                self.vlog.set_len(&name, off).map_err(io("vlog truncate"))?;
                self.vlog.sync_data(&name).map_err(io("vlog sync"))?;
            } else if off > durable_end {
                // This log was being written when the process died: hand back the blocks
                // it had reserved past its end (truncating to the same size frees them).
                self.vlog.set_len(&name, off).map_err(io("vlog truncate"))?;
            }
            let slot = LogSlot {
                state: Mutex::new(LogState { end: Some(off), reserved: 0, broken: false }),
                acked: AtomicU64::new(off),
            };
            lock(&self.logs).insert(sid, Arc::new(slot));
        }
        db!(self, "commit", txn.commit())?;
        for name in orphans {
            tracing::info!(log = %name, "removing the value log of a deleted session");
            self.vlog.remove(&name).map_err(io("vlog remove"))?;
        }
        if entries > 0 {
            tracing::warn!(entries, bytes, took_ms = t.elapsed().as_millis() as u64, "replayed value-log entries");
        }
        Ok(())
    }

    /// Writes Merkle nodes of a session (the backfill of a store older than the table).
    pub fn put_merkle_nodes(&self, sid: &str, nodes: &[Node]) -> Result<(), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        {
            let mut t = db!(self, "open merkle_nodes", txn.open_table(MERKLE_NODES))?;
            for (level, index, hash) in nodes {
                db!(self, "insert node", t.insert((sid, *level as u8, *index), &hash[..]))?;
            }
        }
        self.commit_durable(txn)
    }

    /// Runs `f` with a node lookup over one read transaction: `f` may read as many
    /// subtree hashes as a proof needs and sees one consistent snapshot.
    pub fn with_merkle_nodes<R>(
        &self,
        sid: &str,
        f: impl FnOnce(&mut dyn FnMut(u32, u64) -> Result<[u8; 32], StoreError>) -> R,
    ) -> Result<R, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open merkle_nodes", txn.open_table(MERKLE_NODES))?;
        let mut lookup = |level: u32, index: u64| -> Result<[u8; 32], StoreError> {
            let corrupt =
                |msg: &str| StoreError::Corrupt { key: format!("merkle_nodes/{sid}/{level}/{index}"), msg: msg.into() };
            let v = db!(self, "get node", t.get((sid, level as u8, index)))?.ok_or_else(|| corrupt("missing"))?;
            v.value().try_into().map_err(|_| corrupt("not 32 bytes"))
        };
        Ok(f(&mut lookup))
    }

    /// Whether the session's node table holds the leaf `index` (the backfill check).
    pub fn has_merkle_leaf(&self, sid: &str, index: u64) -> Result<bool, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open merkle_nodes", txn.open_table(MERKLE_NODES))?;
        Ok(db!(self, "get node", t.get((sid, 0u8, index)))?.is_some())
    }

    /// The sealed bytes of a chunk, from its value log (or inline, in an older store).
    pub fn get_sealed(&self, sid: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let loc = {
            let g = self.handle()?;
            let db = live(&g)?;
            let txn = db!(self, "begin_read", db.begin_read())?;
            let locs = db!(self, "open chunk_loc", txn.open_table(CHUNK_LOC))?;
            match db!(self, "get chunk loc", locs.get((sid, index)))? {
                Some(v) => v.value(),
                None => {
                    let t = db!(self, "open chunks", txn.open_table(CHUNKS))?;
                    return Ok(db!(self, "get chunk", t.get((sid, index)))?.map(|v| v.value().to_vec()));
                }
            }
        };
        let out = self
            .vlog
            .read_vec(&vlog::file_name(sid), loc.0, loc.1 as usize)
            .map_err(|e| StoreError::Corrupt { key: format!("vlog/{sid}@{}", loc.0), msg: e.to_string() })?;
        Ok(Some(out))
    }

    /// Whether the sealed bytes of a chunk are present (not redacted), without copying them.
    pub fn has_sealed(&self, sid: &str, index: u64) -> Result<bool, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let locs = db!(self, "open chunk_loc", txn.open_table(CHUNK_LOC))?;
        if db!(self, "get chunk loc", locs.get((sid, index)))?.is_some() {
            return Ok(true);
        }
        let t = db!(self, "open chunks", txn.open_table(CHUNKS))?;
        Ok(db!(self, "get chunk", t.get((sid, index)))?.is_some())
    }

    pub fn get_record(&self, sid: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open records", txn.open_table(RECORDS))?;
        Ok(db!(self, "get record", t.get((sid, index)))?.map(|v| v.value().to_vec()))
    }

    /// All records of a session in index order.
    pub fn records(&self, sid: &str) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open records", txn.open_table(RECORDS))?;
        let mut out = Vec::new();
        for item in db!(self, "range records", t.range((sid, 0)..=(sid, u64::MAX)))? {
            let (k, v) = db!(self, "range records", item)?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    /// At most `limit` records of a session from index `from` on, in index order.
    pub fn records_from(&self, sid: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open records", txn.open_table(RECORDS))?;
        let mut out = Vec::new();
        for item in db!(self, "range records", t.range((sid, from)..=(sid, u64::MAX)))?.take(limit) {
            let (k, v) = db!(self, "range records", item)?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn chunk_meta(&self, sid: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open chunk_meta", txn.open_table(CHUNK_META))?;
        Ok(db!(self, "get chunk meta", t.get((sid, index)))?.map(|v| v.value().to_vec()))
    }

    pub fn chunk_index(&self, sid: &str, client_id: &str) -> Result<Option<u64>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open chunk_ids", txn.open_table(CHUNK_IDS))?;
        Ok(db!(self, "get chunk id", t.get((sid, client_id)))?.map(|v| v.value()))
    }

    /// Client chunk ids of a session, by index.
    pub fn chunk_ids(&self, sid: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open chunk_ids", txn.open_table(CHUNK_IDS))?;
        let mut out = Vec::new();
        for item in db!(self, "range chunk ids", t.range((sid, "")..))? {
            let (k, v) = db!(self, "range chunk ids", item)?;
            let (s, cid) = k.value();
            if s != sid {
                break;
            }
            out.push((cid.to_owned(), v.value()));
        }
        out.sort_by_key(|(_, i)| *i);
        Ok(out)
    }

    /// Removes the sealed bytes of one chunk (a redaction) but keeps its record, so the
    /// log and its checkpoints still verify and the verifier names the missing chunk. In a
    /// value log the bytes are punched out (their blocks freed) once redb durably forgot
    /// where they were; the entry's digest then no longer matches, which is fine because
    /// recovery never reads an entry redb durably holds.
    pub fn redact_chunk(&self, sid: &str, index: u64) -> Result<bool, StoreError> {
        let slot = self.log_state(sid);
        let _st = lock(&slot.state);
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        let (existed, loc) = {
            let mut chunks = db!(self, "open chunks", txn.open_table(CHUNKS))?;
            let inline = db!(self, "remove chunk", chunks.remove((sid, index)))?.is_some();
            let mut locs = db!(self, "open chunk_loc", txn.open_table(CHUNK_LOC))?;
            let loc = db!(self, "remove chunk loc", locs.remove((sid, index)))?.map(|v| v.value());
            let mut m = db!(self, "open chunk_meta", txn.open_table(CHUNK_META))?;
            db!(self, "remove chunk meta", m.remove((sid, index)))?;
            (inline || loc.is_some(), loc)
        };
        self.commit_durable(txn)?;
        if let Some((off, len)) = loc {
            let name = vlog::file_name(sid);
            self.vlog
                .punch_hole(&name, off, len as u64)
                .and_then(|()| self.vlog.sync_data(&name))
                .map_err(|e| classify("vlog punch hole", e.to_string()))?;
        }
        Ok(existed)
    }

    pub fn put_checkpoint(&self, sid: &str, size: u64, note: &str) -> Result<(), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        {
            let mut t = db!(self, "open checkpoints", txn.open_table(CHECKPOINTS))?;
            db!(self, "insert checkpoint", t.insert((sid, size), note))?;
        }
        self.commit_durable(txn)
    }

    /// Signed checkpoints of a session, ascending by tree size.
    pub fn checkpoints(&self, sid: &str) -> Result<Vec<(u64, String)>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open checkpoints", txn.open_table(CHECKPOINTS))?;
        let mut out = Vec::new();
        for item in db!(self, "range checkpoints", t.range((sid, 0)..=(sid, u64::MAX)))? {
            let (k, v) = db!(self, "range checkpoints", item)?;
            out.push((k.value().1, v.value().to_owned()));
        }
        Ok(out)
    }

    /// The latest checkpoint of a session (largest tree size), one lookup.
    pub fn last_checkpoint(&self, sid: &str) -> Result<Option<(u64, String)>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open checkpoints", txn.open_table(CHECKPOINTS))?;
        let last = db!(self, "range checkpoints", t.range((sid, 0)..=(sid, u64::MAX)))?.next_back();
        match last {
            None => Ok(None),
            Some(item) => {
                let (k, v) = db!(self, "range checkpoints", item)?;
                Ok(Some((k.value().1, v.value().to_owned())))
            }
        }
    }

    /// At most `limit` checkpoints after skipping `offset`, ascending by tree size, and
    /// whether more follow.
    pub fn checkpoints_page(
        &self,
        sid: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<(u64, String)>, bool), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open checkpoints", txn.open_table(CHECKPOINTS))?;
        let mut out = Vec::new();
        let mut more = false;
        for item in db!(self, "range checkpoints", t.range((sid, 0)..=(sid, u64::MAX)))?.skip(offset) {
            if out.len() == limit {
                more = true;
                break;
            }
            let (k, v) = db!(self, "range checkpoints", item)?;
            out.push((k.value().1, v.value().to_owned()));
        }
        Ok((out, more))
    }

    pub fn put_init(&self, sid: &str, init: &[u8]) -> Result<(), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        {
            let mut t = db!(self, "open init", txn.open_table(INIT))?;
            db!(self, "insert init", t.insert(sid, init))?;
        }
        self.commit_durable(txn)
    }

    pub fn get_init(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open init", txn.open_table(INIT))?;
        Ok(db!(self, "get init", t.get(sid))?.map(|v| v.value().to_vec()))
    }

    /// Stores the final checkpoint, the signed manifest and the closed session row in one
    /// transaction: a session is either still open or closed with its manifest.
    pub fn close_session(
        &self,
        sid: &str,
        size: u64,
        note: &str,
        (manifest, signature): (&[u8], &[u8]),
        row: &[u8],
        dev: &DeviceAppend<'_>,
    ) -> Result<(), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        {
            let mut c = db!(self, "open checkpoints", txn.open_table(CHECKPOINTS))?;
            db!(self, "insert checkpoint", c.insert((sid, size), note))?;
            let mut m = db!(self, "open manifests", txn.open_table(MANIFESTS))?;
            db!(self, "insert manifest", m.insert(sid, (manifest, signature)))?;
            let mut s = db!(self, "open sessions", txn.open_table(SESSIONS))?;
            db!(self, "update session", s.insert(sid, row))?;
        }
        self.write_device(&txn, dev)?;
        self.commit_durable(txn)
    }

    /// The manifest JSON exactly as signed, and its signature.
    pub fn get_manifest(&self, sid: &str) -> Result<Option<SignedManifest>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open manifests", txn.open_table(MANIFESTS))?;
        Ok(db!(self, "get manifest", t.get(sid))?.map(|v| {
            let (a, b) = v.value();
            (a.to_vec(), b.to_vec())
        }))
    }

    /// Deletes a session and everything it owns, and appends its deletion to the device
    /// log, in one transaction. Returns the number of chunks removed.
    pub fn delete_session(&self, sid: &str, dev: Option<&DeviceAppend<'_>>) -> Result<u64, StoreError> {
        let slot = self.log_state(sid);
        let mut st = lock(&slot.state);
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        let removed = {
            let mut removed = 0u64;
            let mut chunks = db!(self, "open chunks", txn.open_table(CHUNKS))?;
            removed += db!(self, "delete chunks", chunks.extract_from_if((sid, 0)..=(sid, u64::MAX), |_, _| true))?
                .count() as u64;
            let mut locs = db!(self, "open chunk_loc", txn.open_table(CHUNK_LOC))?;
            removed += db!(self, "delete chunk locs", locs.extract_from_if((sid, 0)..=(sid, u64::MAX), |_, _| true))?
                .count() as u64;
            let mut ends = db!(self, "open vlog_end", txn.open_table(VLOG_END))?;
            db!(self, "delete vlog end", ends.remove(sid))?;
            let mut records = db!(self, "open records", txn.open_table(RECORDS))?;
            db!(self, "delete records", records.retain_in((sid, 0)..=(sid, u64::MAX), |_, _| false))?;
            let mut meta = db!(self, "open chunk_meta", txn.open_table(CHUNK_META))?;
            db!(self, "delete chunk meta", meta.retain_in((sid, 0)..=(sid, u64::MAX), |_, _| false))?;
            let mut ids = db!(self, "open chunk_ids", txn.open_table(CHUNK_IDS))?;
            let keys: Vec<String> = {
                let mut v = Vec::new();
                for item in db!(self, "range chunk ids", ids.range((sid, "")..))? {
                    let (k, _) = db!(self, "range chunk ids", item)?;
                    if k.value().0 != sid {
                        break;
                    }
                    v.push(k.value().1.to_owned());
                }
                v
            };
            for k in keys {
                db!(self, "delete chunk id", ids.remove((sid, k.as_str())))?;
            }
            let mut cps = db!(self, "open checkpoints", txn.open_table(CHECKPOINTS))?;
            db!(self, "delete checkpoints", cps.retain_in((sid, 0)..=(sid, u64::MAX), |_, _| false))?;
            let mut init = db!(self, "open init", txn.open_table(INIT))?;
            db!(self, "delete init", init.remove(sid))?;
            let mut man = db!(self, "open manifests", txn.open_table(MANIFESTS))?;
            db!(self, "delete manifest", man.remove(sid))?;
            let mut nodes = db!(self, "open merkle_nodes", txn.open_table(MERKLE_NODES))?;
            db!(self, "delete nodes", nodes.retain_in((sid, 0u8, 0)..=(sid, u8::MAX, u64::MAX), |_, _| false))?;
            let mut s = db!(self, "open sessions", txn.open_table(SESSIONS))?;
            db!(self, "delete session", s.remove(sid))?;
            removed
        };
        if let Some(dev) = dev {
            self.write_device(&txn, dev)?;
        }
        self.commit_durable(txn)?;
        // redb durably forgot the session: its log goes now, freeing the card at once (a
        // crash before the unlink leaves an orphan that the next open removes).
        *st = LogState::default();
        drop(g);
        lock(&self.logs).remove(sid);
        lock(&self.sizes).remove(sid);
        self.vlog.remove(&vlog::file_name(sid)).map_err(|e| classify("vlog remove", e.to_string()))?;
        Ok(removed)
    }

    /// The bytes one session holds in the store: its value log's length, which covers its
    /// sealed bytes and every row its chunks wrote (a redacted chunk's punched-out bytes
    /// still count; an older store's inline chunks do not). Deleting the session frees
    /// exactly this on the card (the log is unlinked).
    pub fn session_bytes(&self, sid: &str) -> u64 {
        lock(&self.sizes).get(sid).copied().unwrap_or(0)
    }

    /// The bytes all live sessions hold (the sum of `session_bytes`): what retention's
    /// `max_store_bytes` caps. Not the files' sizes: redb reuses the pages a delete frees
    /// but never shrinks its file, so its size says nothing about what is left to free.
    pub fn accounted_bytes(&self) -> u64 {
        lock(&self.sizes).values().sum()
    }

    /// (free, total) bytes of the file system holding the store (statvfs); (0, 0) when it
    /// cannot be measured.
    pub fn disk_space(&self) -> (u64, u64) {
        use std::os::unix::ffi::OsStrExt;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return (0, 0) };
        // SAFETY: statvfs only writes into the zeroed struct we pass; the path is
        // NUL-terminated.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut s) == 0 {
                (s.f_bavail as u64 * s.f_frsize as u64, s.f_blocks as u64 * s.f_frsize as u64)
            } else {
                (0, 0)
            }
        }
    }

    /// Number of sealed chunks and their bytes across all sessions (for metrics).
    pub fn totals(&self) -> Result<(u64, u64), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open chunks", txn.open_table(CHUNKS))?;
        let locs = db!(self, "open chunk_loc", txn.open_table(CHUNK_LOC))?;
        let n = db!(self, "len", t.len())? + db!(self, "len", locs.len())?;
        Ok((n, self.file_usage().0))
    }
    /// Bytes of the database file plus every value log: (file sizes, allocated blocks).
    pub fn file_usage(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let (mut size, mut alloc) =
            std::fs::metadata(&self.path).map(|m| (m.len(), m.blocks() * 512)).unwrap_or((0, 0));
        for name in self.vlog.list().unwrap_or_default() {
            size += self.vlog.len(&name).unwrap_or(0);
            alloc += self.vlog.allocated(&name).unwrap_or(0);
        }
        (size, alloc)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // A clean close leaves nothing to replay and no reserved blocks.
        if !self.poisoned.load(Ordering::SeqCst)
            && let Err(e) = self.flush()
        {
            tracing::warn!(error = %e, "final durable commit failed; the next open replays the value logs");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fs_vlog(path: &Path) -> Result<Arc<dyn VlogBackend>, StoreError> {
    let dir = path.parent().unwrap_or(Path::new(".")).join("vlog");
    FsVlog::new(dir.clone())
        .map(|v| Arc::new(v) as Arc<dyn VlogBackend>)
        .map_err(|e| StoreError::Db { op: "open value logs", msg: format!("{}: {e}", dir.display()) })
}

/// Writes a chunk's rows (everything but the sealed bytes, which are in the log at
/// `locs`) and the log position `end` its entry reaches. The one place both the chunk path
/// and recovery write chunk rows, so a replayed chunk is exactly the committed one.
fn apply_rows(
    txn: &redb::WriteTransaction,
    w: &ChunkWrite<'_>,
    locs: &[Option<(u64, u32)>],
    end: u64,
) -> Result<(), redb::Error> {
    let mut loc_t = txn.open_table(CHUNK_LOC)?;
    let mut records = txn.open_table(RECORDS)?;
    let mut ids = txn.open_table(CHUNK_IDS)?;
    let mut m = txn.open_table(CHUNK_META)?;
    for (p, loc) in w.parts.iter().zip(locs) {
        if let Some(loc) = loc {
            loc_t.insert((w.session_id, p.index), *loc)?;
        }
        records.insert((w.session_id, p.index), p.record)?;
        if let Some(cid) = p.client_id {
            ids.insert((w.session_id, cid), p.index)?;
        }
        if let Some(meta) = p.client_meta {
            m.insert((w.session_id, p.index), meta)?;
        }
    }
    let mut nodes = txn.open_table(MERKLE_NODES)?;
    for (level, index, hash) in w.nodes {
        nodes.insert((w.session_id, *level as u8, *index), &hash[..])?;
    }
    let mut s = txn.open_table(SESSIONS)?;
    s.insert(w.session_id, w.session_row)?;
    let mut ends = txn.open_table(VLOG_END)?;
    ends.insert(w.session_id, end)?;
    Ok(())
}

/// Frames a chunk as one value-log entry (docs/design.md, "Value log"). Returns the entry
/// and, per part, where its sealed bytes sit within the entry.
fn encode_entry(w: &ChunkWrite<'_>) -> (Vec<u8>, Vec<SealedAt>) {
    let size = 64
        + w.session_id.len()
        + w.session_row.len()
        + w.nodes.len() * 41
        + w.parts
            .iter()
            .map(|p| {
                32 + p.record.len()
                    + p.client_id.map_or(0, str::len)
                    + p.client_meta.map_or(0, <[u8]>::len)
                    + p.sealed.map_or(0, <[u8]>::len)
            })
            .sum::<usize>();
    // The header's 24 bytes are reserved first and filled in last, so the sealed bytes
    // are copied once.
    let mut c = vlog::codec::Writer(Vec::with_capacity(vlog::HEADER + size));
    c.0.resize(vlog::HEADER, 0);
    c.u8(1);
    c.bytes(w.session_id.as_bytes());
    c.bytes(w.session_row);
    c.u32(w.nodes.len() as u32);
    for (level, index, hash) in w.nodes {
        c.u8(*level as u8);
        c.u64(*index);
        c.0.extend_from_slice(hash);
    }
    c.u32(w.parts.len() as u32);
    let mut sealed_at = Vec::with_capacity(w.parts.len());
    for p in w.parts {
        c.u64(p.index);
        c.bytes(p.record);
        c.opt(p.client_id.map(str::as_bytes));
        c.opt(p.client_meta);
        c.opt(p.sealed);
        sealed_at.push(p.sealed.map(|s| (c.0.len() - s.len(), s.len())));
    }
    let mut entry = c.0;
    vlog::seal_header(&mut entry);
    (entry, sealed_at)
}

/// Where a part's sealed bytes sit in an entry: (offset, length); `None` for a part
/// stored without them.
type SealedAt = Option<(usize, usize)>;

struct DecodedPart<'a> {
    index: u64,
    record: &'a [u8],
    client_id: Option<&'a str>,
    client_meta: Option<&'a [u8]>,
}

impl DecodedPart<'_> {
    fn as_write(&self) -> PartWrite<'_> {
        // Recovery writes rows only; the sealed bytes stay in the log.
        PartWrite {
            index: self.index,
            sealed: None,
            record: self.record,
            client_id: self.client_id,
            client_meta: self.client_meta,
        }
    }
}

struct DecodedEntry<'a> {
    row: &'a [u8],
    nodes: Vec<Node>,
    parts: Vec<DecodedPart<'a>>,
}

/// Parses an entry's payload; per part, where its sealed bytes are relative to the
/// payload start. `None` for a payload this build cannot read.
fn decode_entry(payload: &[u8]) -> Option<(DecodedEntry<'_>, Vec<SealedAt>)> {
    let mut r = vlog::codec::Reader { buf: payload, pos: 0 };
    if r.u8()? != 1 {
        return None;
    }
    let _sid = r.bytes()?;
    let row = r.bytes()?;
    let n = r.u32()?;
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push((r.u8()? as u32, r.u64()?, r.array32()?));
    }
    let n = r.u32()?;
    let mut parts = Vec::new();
    let mut sealed_at = Vec::new();
    for _ in 0..n {
        let index = r.u64()?;
        let record = r.bytes()?;
        let client_id = match r.opt()? {
            Some((_, b)) => Some(std::str::from_utf8(b).ok()?),
            None => None,
        };
        let client_meta = r.opt()?.map(|(_, b)| b);
        sealed_at.push(r.opt()?.map(|(at, b)| (at, b.len())));
        parts.push(DecodedPart { index, record, client_id, client_meta });
    }
    Some((DecodedEntry { row, nodes, parts }, sealed_at))
}
