//! The store: every byte the daemon keeps lives in one redb database file.
//!
//! Owns the table layout (see docs/design.md, "Store") and the transactions that keep it
//! consistent. Architecture invariant: this is the only module that touches redb; the rest
//! of the daemon sees typed rows and byte strings. It knows nothing of HTTP, sealing or
//! media: it stores what it is given, in transactions the caller chooses.
//!
//! Durability: every write transaction commits with redb's default `Durability::Immediate`
//! (fsync before `commit` returns), so a chunk acknowledged to anyone survives power loss.
//! redb's copy-on-write commit means a torn write leaves the previous commit intact.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

/// Small named values: the restart epoch, the schema version.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Session rows (JSON of `engine::SessionRow`), keyed by session id.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Sealed chunks (header ‖ ciphertext), keyed by (session id, chunk index).
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

/// One committed chunk, as `commit_chunk` writes it.
pub struct ChunkWrite<'a> {
    pub session_id: &'a str,
    pub index: u64,
    pub sealed: &'a [u8],
    pub record: &'a [u8],
    pub client_id: Option<&'a str>,
    pub client_meta: Option<&'a [u8]>,
    /// The session row after this chunk, written in the same transaction so counters
    /// never disagree with the chunks that exist.
    pub session_row: &'a [u8],
}

type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

pub struct Store {
    /// `None` only between closing a failed database and reopening it.
    db: RwLock<Option<Database>>,
    opener: Opener,
    /// Set by any failed operation; the next operation reopens the database first.
    poisoned: AtomicBool,
    path: PathBuf,
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
    /// Opens (creating if needed) the database and all its tables, and checks the schema.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let p = path.to_owned();
        Store::with_opener(path, Box::new(move || Database::create(&p)))
    }

    /// Opens the store over another redb backend: the fault-injection tests use this to
    /// fill the disk or cut the power between two writes. `path` is only a label (and
    /// where free space is measured).
    pub fn open_with_backend<B: redb::StorageBackend + Clone>(path: &Path, backend: B) -> Result<Store, StoreError> {
        Store::with_opener(path, Box::new(move || redb::Builder::new().create_with_backend(backend.clone())))
    }

    fn with_opener(path: &Path, opener: Opener) -> Result<Store, StoreError> {
        let db = opener().map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        let store =
            Store { db: RwLock::new(Some(db)), opener, poisoned: AtomicBool::new(false), path: path.to_owned() };
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
        }
        db!(store, "commit", txn.commit())?;
        drop(g);
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
        db!(self, "commit", txn.commit())?;
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
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StoreError::Corrupt { key: format!("meta/{key}"), msg: e.to_string() })?;
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        {
            let mut meta = db!(self, "open meta", txn.open_table(META))?;
            db!(self, "write setting", meta.insert(key, &bytes[..]))?;
        }
        db!(self, "commit", txn.commit())?;
        Ok(())
    }

    pub fn put_session<T: Serialize>(&self, id: &str, row: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(row).map_err(|e| StoreError::Corrupt { key: id.into(), msg: e.to_string() })?;
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        {
            let mut t = db!(self, "open sessions", txn.open_table(SESSIONS))?;
            db!(self, "insert session", t.insert(id, bytes.as_slice()))?;
        }
        db!(self, "commit", txn.commit())
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

    /// Writes one chunk (sealed bytes, record, client id and metadata) and the updated
    /// session row in ONE durable transaction: after a crash either all of it exists or
    /// none of it does.
    pub fn commit_chunk(&self, w: &ChunkWrite<'_>) -> Result<(), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        {
            let mut chunks = db!(self, "open chunks", txn.open_table(CHUNKS))?;
            db!(self, "insert chunk", chunks.insert((w.session_id, w.index), w.sealed))?;
            let mut records = db!(self, "open records", txn.open_table(RECORDS))?;
            db!(self, "insert record", records.insert((w.session_id, w.index), w.record))?;
            if let Some(cid) = w.client_id {
                let mut ids = db!(self, "open chunk_ids", txn.open_table(CHUNK_IDS))?;
                db!(self, "insert chunk id", ids.insert((w.session_id, cid), w.index))?;
            }
            if let Some(meta) = w.client_meta {
                let mut m = db!(self, "open chunk_meta", txn.open_table(CHUNK_META))?;
                db!(self, "insert chunk meta", m.insert((w.session_id, w.index), meta))?;
            }
            let mut s = db!(self, "open sessions", txn.open_table(SESSIONS))?;
            db!(self, "update session", s.insert(w.session_id, w.session_row))?;
        }
        db!(self, "commit", txn.commit())
    }

    pub fn get_sealed(&self, sid: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open chunks", txn.open_table(CHUNKS))?;
        Ok(db!(self, "get chunk", t.get((sid, index)))?.map(|v| v.value().to_vec()))
    }

    /// Whether the sealed bytes of a chunk are present (not redacted), without copying them.
    pub fn has_sealed(&self, sid: &str, index: u64) -> Result<bool, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
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
    /// log and its checkpoints still verify and the verifier names the missing chunk.
    pub fn redact_chunk(&self, sid: &str, index: u64) -> Result<bool, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        let existed = {
            let mut chunks = db!(self, "open chunks", txn.open_table(CHUNKS))?;
            let existed = db!(self, "remove chunk", chunks.remove((sid, index)))?.is_some();
            let mut m = db!(self, "open chunk_meta", txn.open_table(CHUNK_META))?;
            db!(self, "remove chunk meta", m.remove((sid, index)))?;
            existed
        };
        db!(self, "commit", txn.commit())?;
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
        db!(self, "commit", txn.commit())
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

    pub fn put_init(&self, sid: &str, init: &[u8]) -> Result<(), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        {
            let mut t = db!(self, "open init", txn.open_table(INIT))?;
            db!(self, "insert init", t.insert(sid, init))?;
        }
        db!(self, "commit", txn.commit())
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
        manifest: &[u8],
        signature: &[u8],
        row: &[u8],
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
        db!(self, "commit", txn.commit())
    }

    pub fn get_manifest(&self, sid: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open manifests", txn.open_table(MANIFESTS))?;
        Ok(db!(self, "get manifest", t.get(sid))?.map(|v| {
            let (a, b) = v.value();
            (a.to_vec(), b.to_vec())
        }))
    }

    /// Deletes a session and everything it owns, in one transaction. Returns the number
    /// of chunks removed.
    pub fn delete_session(&self, sid: &str) -> Result<u64, StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_write", db.begin_write())?;
        let removed = {
            let mut removed = 0u64;
            let mut chunks = db!(self, "open chunks", txn.open_table(CHUNKS))?;
            removed += db!(self, "delete chunks", chunks.extract_from_if((sid, 0)..=(sid, u64::MAX), |_, _| true))?
                .count() as u64;
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
            let mut s = db!(self, "open sessions", txn.open_table(SESSIONS))?;
            db!(self, "delete session", s.remove(sid))?;
            removed
        };
        db!(self, "commit", txn.commit())?;
        Ok(removed)
    }

    /// Number of sealed chunks and their bytes across all sessions (for metrics).
    pub fn totals(&self) -> Result<(u64, u64), StoreError> {
        let g = self.handle()?;
        let db = live(&g)?;
        let txn = db!(self, "begin_read", db.begin_read())?;
        let t = db!(self, "open chunks", txn.open_table(CHUNKS))?;
        let n = db!(self, "len", t.len())?;
        Ok((n, std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)))
    }
}
