//! The engine: sessions, their Merkle logs, and the chunk path
//! chunk -> compress -> seal -> digest -> log -> store, shared by the camera recorder and
//! by every Lucid upload route.
//!
//! Owns the session lifecycle, the restart epoch, checkpoint signing and manifests. It is
//! synchronous on purpose: the chunk path is CPU work plus one fsync, so HTTP handlers call
//! it through `spawn_blocking` and the camera thread calls it directly. It must not know
//! HTTP shapes (the `http` module maps rows to the contract) and must not touch redb
//! except through `store`.
//!
//! Invariants:
//! - A chunk is acknowledged only after the transaction holding it has committed.
//! - The AEAD nonce (epoch, index) never repeats under a session key: the epoch is bumped
//!   durably at every start, and again before re-sealing an index whose commit failed.
//! - Indices of a session are 0..chunk_count with no gaps; the log is append-only
//!   (a redaction removes sealed bytes, never a record).

pub mod access;
pub mod camera;
pub mod clip;
pub mod continuous;
pub mod devlog;
pub mod pipeline;
pub mod recordings;
pub mod retention;
pub mod row;
pub mod segments;
pub mod upload;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use lucid_core::chunk::{ChunkHeader, ChunkRecord, Flags, MAX_SEALED_CHUNK};
use lucid_core::merkle::{self, Hash};
use lucid_core::note::{Checkpoint, Signer, Verifier};
use lucid_core::seal::{self, Cipher, DataKey};
use ring::rand::SystemRandom;
use serde_json::{Value, json};

use crate::config::Config;
use crate::keys::DeviceKeys;
use crate::metrics::{Metrics, Stage};
use crate::store::{ChunkWrite, PartWrite, Store, StoreError};
use crate::util::{hex, now_rfc3339};
pub use row::{Kind, LogCounters, PipelineRow, SessionRow, Status};
pub use upload::{Ingested, parts_for};

/// Largest payload one sealed chunk carries: the redb value limit less the header
/// (at most 93 bytes) and the AEAD tag, rounded down for headroom.
pub const MAX_PART: usize = MAX_SEALED_CHUNK - 4096;

/// A client's chunk id: 1 to 128 bytes (it is a key of the store's id table and is echoed
/// in every listing). Pure, so the HTTP bodies' checks and the fuzzer apply the same rule
/// `append` enforces.
pub fn check_chunk_id(cid: &str) -> Result<()> {
    if cid.is_empty() || cid.len() > 128 {
        return Err(EngineError::BadInput("chunk_id must be 1..=128 characters".into()));
    }
    Ok(())
}

/// Errors at the engine boundary; the HTTP layer maps each to one status code.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// `action` is not allowed on `session` in `state` (a refused transition).
    #[error("cannot {action} session {session}: it is {state}")]
    Transition { session: String, state: &'static str, action: &'static str },
    /// `session` already exists (two creates with one id: exactly one wins).
    #[error("session {session} already exists")]
    Exists { session: String },
    #[error("{0}")]
    BadState(String),
    #[error("{0}")]
    BadInput(String),
    /// A time range that meets no chunk (a clip of nothing).
    #[error("{0}")]
    EmptyRange(String),
    #[error("storage full: {0}")]
    Full(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
    /// The device erased its copy of `session`'s data key at stop
    /// (`evidence.device_can_decrypt = false`): only a recipient can decrypt it now.
    #[error(
        "the device cannot decrypt session {session}: its data key was erased when the session was sealed (evidence.device_can_decrypt = false); a recipient must download the evidence and run `lucidd decrypt`"
    )]
    KeyErased { session: String },
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full(m) => EngineError::Full(m),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

fn internal(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(e.to_string())
}

/// One chunk's media facts, as the recorder or a client gives them.
#[derive(Debug, Clone, Default)]
pub struct ChunkInfo {
    pub media: bool,
    pub gap_before: bool,
    pub media_start_us: u64,
    pub media_end_us: u64,
    pub wall_us: i64,
    pub frames: u32,
    /// The client's quality score of an uploaded chunk, counted into the session's
    /// statistics.
    pub quality: Option<f64>,
}

/// What appending produced, for the Lucid responses.
#[derive(Debug, Clone)]
pub struct Appended {
    pub first_index: u64,
    pub parts: u32,
    pub plain_len: u64,
    pub stored_len: u64,
    pub compressed: bool,
    pub plain_blake3: String,
    pub sealed_blake3: String,
    pub took: Duration,
}

/// A decoded record plus its client id, for listings.
#[derive(Debug, Clone)]
pub struct ChunkView {
    pub record: ChunkRecord,
    pub client_id: Option<String>,
    pub present: bool,
}

/// An open log: the session's Merkle tree (every complete subtree cached) and its
/// unwrapped key.
struct Log {
    tree: merkle::MerkleTree,
    /// Set under this log's lock when the session is deleted: an append that was waiting
    /// for the lock must not write the deleted session back.
    deleted: bool,
    key: DataKey,
    cipher: Cipher,
    last_checkpoint: u64,
    last_checkpoint_at: Instant,
    row: SessionRow,
}

/// One part sealed and digested, not yet committed.
struct SealedPart {
    sealed: Vec<u8>,
    record: Vec<u8>,
    leaf: Hash,
    epoch: u32,
    compressed: bool,
    /// The record carries `GAP_BEFORE`.
    gap_before: bool,
    sealed_blake3: String,
}

/// Statuses in which the camera owns the session (no delete, no upload, no restart).
pub fn is_live(s: Status) -> bool {
    matches!(s, Status::Recording | Status::Paused | Status::Starting)
}

/// Meta-table key of the run-time camera settings.
const CAMERA_SETTINGS: &str = "camera_settings";

pub struct Engine {
    pub cfg: Config,
    store: Store,
    signer: Signer,
    kek: lucid_core::seal::Kek,
    pub device_id: String,
    /// Credentials and roles: the admin token, viewer tokens, the share-URL key.
    access: access::Access,
    pub metrics: Metrics,
    rng: SystemRandom,
    /// Current restart epoch, and whether an index may have been sealed uncommitted.
    epoch: Mutex<(u32, bool)>,
    logs: Mutex<HashMap<String, Arc<Mutex<Log>>>>,
    /// One transition lock per session: every state change (create, start, pause,
    /// resume, stop, finalize, rename, delete, upload) holds it from its check to its
    /// write, so two changes of one session never interleave. Never waited for by the
    /// camera thread (a stop holds it while joining that thread; a continuous segment cut
    /// only try-locks it, see `continuous`); the thread writes through the open log's lock
    /// instead.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    camera: Mutex<Option<camera::CameraRun>>,
    pub camera_state: camera::CameraState,
    /// Decrypted media segments that viewers asked for recently (see `segments`).
    segments: segments::SegmentCache,
    /// Serializes device-log appends (see `engine/devlog.rs`). Taken after a session's
    /// transition lock and its log's lock, never before them.
    devlog: Mutex<()>,
    /// Whether the wall clock can be trusted (see `clock`); written by `run`'s poller.
    pub clock: crate::clock::Clock,
    /// The Wi-Fi networks to join and the state of the client (see `wifi`); supervised
    /// by `run`, changed by `PUT /api/v1/network`.
    pub wifi: Arc<crate::wifi::Wifi>,
    /// Serializes retention passes (see `engine/retention.rs`). Taken before any session
    /// lock; a pass only try-locks a session's transition lock, and an append calls it
    /// before taking its own log's lock.
    retention: Mutex<()>,
    /// Set while appends are refused because no deletable session is left to make room.
    retention_blocked: Mutex<Option<retention::Blocked>>,
    /// Dropping it ends the background retention thread.
    retention_runner: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Continuous recording's pause flag (see `engine/continuous.rs`).
    continuous: Mutex<continuous::ContinuousState>,
    /// Stops the continuous-recording keeper when dropped (continuous mode only).
    continuous_keeper: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("device_id", &self.device_id).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding an engine lock leaves plain data behind (counters, leaves
    // already committed); carrying on is safer for a recorder than poisoning everything.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates `dir` (and parents) and makes it 0700 whatever the umask: it holds the keys,
/// the store and, through them, every recording.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Makes `path` exist with mode 0600 before anything else opens it, so the store file is
/// never readable by others, not even for a moment after it is created.
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

impl Engine {
    /// Opens the store, loads or creates the device keys, moves the epoch on and closes
    /// any session that was recording when the process last died.
    pub fn open(cfg: Config) -> anyhow::Result<Arc<Engine>> {
        Engine::open_with(cfg, Store::open)
    }

    /// Like `open`, with the store opened by `open_store` (fault-injection tests).
    pub fn open_with(
        cfg: Config,
        open_store: impl FnOnce(&std::path::Path) -> Result<Store, StoreError>,
    ) -> anyhow::Result<Arc<Engine>> {
        // Recipients are used at every session creation and `device_can_decrypt = false`
        // is only safe with some: refuse to start rather than fail per session later.
        cfg.evidence.validate()?;
        private_dir(&cfg.data_dir)?;
        let keys: DeviceKeys = crate::keys::load_or_create(&cfg.data_dir, cfg.api_token.as_deref())?;
        if keys.token_generated {
            // Printed once, on the console only: the operator needs it for mutating calls.
            eprintln!(
                "lucidd: generated API token {} (stored in {}/keys/api-token)",
                keys.api_token,
                cfg.data_dir.display()
            );
        }
        private_file(&cfg.store_path())?;
        let store = open_store(&cfg.store_path())?;
        let epoch = store.next_epoch()?;
        let access = access::Access::new(keys.api_token, &keys.url_key, access::load(&store)?);
        tracing::info!(epoch, device = %keys.device_id, "store open");
        // Public, and what an owner records at set-up to pin evidence later
        // (`lucidd verify --vkey`); the same text as `verifier_key` of GET /api/v1/device.
        tracing::info!(device = %keys.device_id, vkey = %keys.signer.vkey(), "device verifier key");
        let engine = Arc::new(Engine {
            store,
            signer: keys.signer,
            kek: keys.kek,
            device_id: keys.device_id,
            access,
            metrics: Metrics::default(),
            rng: SystemRandom::new(),
            epoch: Mutex::new((epoch, false)),
            logs: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            camera: Mutex::new(None),
            camera_state: camera::CameraState::default(),
            segments: segments::SegmentCache::new(segments::DEFAULT_BUDGET),
            devlog: Mutex::new(()),
            clock: crate::clock::Clock::new(cfg.time.set_clock),
            wifi: Arc::new(crate::wifi::Wifi::new(&cfg.network)),
            retention: Mutex::new(()),
            retention_blocked: Mutex::new(None),
            retention_runner: Mutex::new(None),
            continuous: Mutex::new(continuous::ContinuousState::default()),
            continuous_keeper: Mutex::new(None),
            cfg,
        });
        engine.recover()?;
        *lock(&engine.retention_runner) = retention::spawn(&engine);
        // After recovery sealed the segment a crash left open: a new one starts.
        engine.start_continuous_at_boot();
        *lock(&engine.continuous_keeper) = continuous::spawn_keeper(&engine);
        Ok(engine)
    }

    /// The camera settings in effect: the config file's `[camera]`, replaced by the last
    /// `PUT /api/v1/camera` if there was one.
    pub fn camera_settings(&self) -> Result<crate::config::CameraConfig> {
        Ok(self.store.get_setting(CAMERA_SETTINGS)?.unwrap_or_else(|| self.cfg.camera.clone()))
    }

    /// Validates and stores new camera settings; they apply from the next recording start.
    pub fn set_camera_settings(&self, s: &crate::config::CameraConfig) -> Result<()> {
        s.validate(self.cfg.source).map_err(|e| EngineError::BadInput(e.to_string()))?;
        self.store.put_setting(CAMERA_SETTINGS, s)?;
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn verifier_key(&self) -> String {
        self.signer.vkey()
    }

    /// The device's host name: `[network] hostname`, or `lucid-<4 hex of the device id>`.
    pub fn hostname(&self) -> String {
        // The configured name was validated with the config and the default is built
        // from hex digits, so this only falls back on a device id of no hex at all.
        crate::discovery::hostname(&self.cfg.network.hostname, &self.device_id).unwrap_or_else(|_| "lucid".to_owned())
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signer.public_key()
    }

    pub fn epoch(&self) -> u32 {
        lock(&self.epoch).0
    }

    fn origin(&self, sid: &str) -> String {
        format!("lucid/{}/{}", self.device_id, sid)
    }

    // ----- sessions -------------------------------------------------------------------

    /// The transition lock of one session (see `Engine::locks`). Entries are never
    /// removed: a lock must outlive every holder, and a session id costs a few bytes.
    pub(crate) fn session_lock(&self, sid: &str) -> Arc<Mutex<()>> {
        lock(&self.locks).entry(sid.to_owned()).or_default().clone()
    }

    /// Creates a session row with a fresh wrapped data key. Of two creates with one id
    /// exactly one wins; the other gets `Exists`.
    pub fn create_session(
        &self,
        id: Option<String>,
        name: String,
        kind: Kind,
        fill: impl FnOnce(&mut SessionRow),
    ) -> Result<SessionRow> {
        let id = id.unwrap_or_else(|| crate::util::short_id("sess"));
        lucid_core::chunk::validate_session_id(&id).map_err(|e| EngineError::BadInput(e.to_string()))?;
        let lk = self.session_lock(&id);
        let _g = lock(&lk);
        self.create_row(id, name, kind, fill)
    }

    /// `create_session` for a caller that holds the session's transition lock.
    fn create_row(
        &self,
        id: String,
        name: String,
        kind: Kind,
        fill: impl FnOnce(&mut SessionRow),
    ) -> Result<SessionRow> {
        if self.store.get_session::<SessionRow>(&id)?.is_some() {
            return Err(EngineError::Exists { session: id });
        }
        let cipher = Cipher::preferred_for_this_cpu();
        let key = DataKey::generate(&self.rng).map_err(internal)?;
        let wrapped = seal::wrap_data_key(&self.kek, &key, &id, &self.rng).map_err(internal)?;
        let recipients_age =
            crate::recipients::encrypt_data_key(&self.cfg.evidence, &key).map_err(internal)?.map(|f| B64.encode(f));
        let now = now_rfc3339();
        let mut row = SessionRow {
            id: id.clone(),
            name,
            description: None,
            kind,
            status: if kind == Kind::Data { Status::Processing } else { Status::Created },
            created_at: now.clone(),
            updated_at: now,
            started_at: None,
            stopped_at: None,
            paused_at: None,
            resumed_at: None,
            recording_config: json!({}),
            storage_config: json!({}),
            metadata: json!({}),
            rdp_config: None,
            owner_address: None,
            cipher: cipher.name().to_owned(),
            wrapped_key: B64.encode(&wrapped),
            recipients_age,
            chunk_count: 0,
            plain_bytes: 0,
            stored_bytes: 0,
            compressed_chunks: 0,
            frame_count: 0,
            dropped_frames: 0,
            error_count: 0,
            media_us: 0,
            active_secs: 0.0,
            recovered: false,
            epochs: Vec::new(),
            codec: None,
            width: None,
            height: None,
            fps: None,
            root: None,
            finalized: false,
            archived: false,
            pipeline: None,
            last_error: None,
            counters: LogCounters { version: LogCounters::VERSION, ..LogCounters::default() },
            generation: 0,
            locked: false,
        };
        fill(&mut row);
        // The row and its `SessionCreated` event commit together.
        self.store_new_session(&row)?;
        Ok(row)
    }

    /// The freshest row: the open log's copy when there is one (it has the counters of
    /// chunks committed so far), else the stored one.
    pub fn get(&self, sid: &str) -> Result<SessionRow> {
        if let Some(log) = lock(&self.logs).get(sid).cloned() {
            return Ok(lock(&log).row.clone());
        }
        self.store
            .get_session::<SessionRow>(sid)?
            .ok_or_else(|| EngineError::NotFound { what: "session", id: sid.to_owned() })
    }

    pub fn list(&self) -> Result<Vec<SessionRow>> {
        let mut rows: Vec<SessionRow> = self.store.list_sessions()?;
        let logs = lock(&self.logs);
        for r in rows.iter_mut() {
            if let Some(log) = logs.get(&r.id) {
                *r = lock(log).row.clone();
            }
        }
        rows.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(rows)
    }

    /// Applies `f` to the session row and stores it, atomically with respect to every
    /// other transition of the session (a rename racing a start cannot write back the
    /// status it read before the start).
    pub fn update(&self, sid: &str, f: impl FnOnce(&mut SessionRow) -> Result<()>) -> Result<SessionRow> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        self.update_row(sid, f)
    }

    /// `update` for a caller that holds the transition lock, or for the camera thread
    /// (whose session's log is open for the whole run, so the write goes through the
    /// log's lock). Writes through the open log if any, so the log's copy and the stored
    /// copy never diverge.
    pub(crate) fn update_row(&self, sid: &str, f: impl FnOnce(&mut SessionRow) -> Result<()>) -> Result<SessionRow> {
        let log = lock(&self.logs).get(sid).cloned();
        if let Some(log) = log {
            let mut l = lock(&log);
            let mut row = l.row.clone();
            f(&mut row)?;
            row.updated_at = now_rfc3339();
            self.store.put_session(sid, &row)?;
            l.row = row.clone();
            return Ok(row);
        }
        let mut row = self.get(sid)?;
        f(&mut row)?;
        row.updated_at = now_rfc3339();
        self.store.put_session(sid, &row)?;
        Ok(row)
    }

    /// Locks (`true`) or unlocks a session: a locked session is never deleted by
    /// retention (an explicit delete still deletes it).
    pub fn set_locked(&self, sid: &str, locked: bool) -> Result<SessionRow> {
        let row = self.update(sid, |r| {
            r.locked = locked;
            Ok(())
        })?;
        tracing::info!(session = %sid, locked, "session lock changed");
        if !locked {
            self.retention_unlocked();
        }
        Ok(row)
    }

    /// Deletes a session and all its chunks through the API. A session being recorded is
    /// refused.
    pub fn delete(&self, sid: &str) -> Result<u64> {
        self.delete_because(sid, lucid_core::devlog::DeletedBy::Api, "deleted through the API")
    }

    /// `delete`, saying who deletes and why: both go into the device log's
    /// `SessionDeleted` event, in the transaction that deletes.
    pub fn delete_because(&self, sid: &str, by: lucid_core::devlog::DeletedBy, reason: &str) -> Result<u64> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        self.delete_row(sid, by, reason)
    }

    /// `delete` for a caller holding the transition lock.
    fn delete_row(&self, sid: &str, by: lucid_core::devlog::DeletedBy, reason: &str) -> Result<u64> {
        let row = self.get(sid)?;
        if is_live(row.status) {
            return Err(EngineError::Transition {
                session: sid.to_owned(),
                state: row.status.as_str(),
                action: "delete",
            });
        }
        // Under the log's lock, so an append already holding the log finishes first and
        // one still waiting for it sees `deleted` and writes nothing back.
        let log = lock(&self.logs).remove(sid);
        let _l = log.as_ref().map(|l| {
            let mut g = lock(l);
            g.deleted = true;
            g
        });
        let freed = self.store_delete_session(sid, by, reason)?;
        // After the store: a segment load racing this delete either read nothing or is
        // discarded by the cache's generation check.
        self.segments.evict_session(sid);
        Ok(freed)
    }

    // ----- the log ----------------------------------------------------------------------

    fn open_log(&self, sid: &str) -> Result<Arc<Mutex<Log>>> {
        let mut logs = lock(&self.logs);
        if let Some(l) = logs.get(sid) {
            return Ok(l.clone());
        }
        let row: SessionRow = self
            .store
            .get_session(sid)?
            .ok_or_else(|| EngineError::NotFound { what: "session", id: sid.to_owned() })?;
        let leaves = self.load_leaves(sid)?;
        if leaves.len() as u64 != row.chunk_count {
            return Err(internal(format!(
                "session {sid}: {} records but the row counts {}",
                leaves.len(),
                row.chunk_count
            )));
        }
        let tree = merkle::MerkleTree::from_leaves(&leaves);
        let key = self.unwrap_row_key(&row)?;
        let cipher =
            Cipher::from_name(&row.cipher).ok_or_else(|| internal(format!("unknown cipher {}", row.cipher)))?;
        let last_checkpoint = self.store.last_checkpoint(sid)?.map(|c| c.0).unwrap_or(0);
        let log = Arc::new(Mutex::new(Log {
            tree,
            deleted: false,
            key,
            cipher,
            last_checkpoint,
            last_checkpoint_at: Instant::now(),
            row,
        }));
        logs.insert(sid.to_owned(), log.clone());
        Ok(log)
    }

    fn close_log(&self, sid: &str) {
        lock(&self.logs).remove(sid);
    }

    fn load_leaves(&self, sid: &str) -> Result<Vec<Hash>> {
        let mut leaves = Vec::new();
        for (i, (idx, bytes)) in self.store.records(sid)?.into_iter().enumerate() {
            if idx != i as u64 {
                return Err(internal(format!("session {sid}: record {i} missing")));
            }
            leaves.push(merkle::leaf_hash(&bytes));
        }
        Ok(leaves)
    }

    /// Returns the epoch to seal with, moving it on first if the last seal was not
    /// committed (its index will be sealed again and must get a fresh nonce).
    fn seal_epoch(&self) -> Result<u32> {
        let mut e = lock(&self.epoch);
        if e.1 {
            e.0 = self.store.next_epoch()?;
            e.1 = false;
            tracing::warn!(epoch = e.0, "epoch moved on after an uncommitted seal");
        }
        Ok(e.0)
    }

    fn mark_uncommitted_seal(&self) {
        lock(&self.epoch).1 = true;
    }

    /// The chunk path. Splits `payload` into parts no larger than a sealed chunk may be,
    /// seals each and commits them all in one durable transaction before returning: a
    /// multi-part chunk is all or nothing, so a failure leaves no parts a later chunk
    /// could be mistaken to continue.
    pub fn append(
        &self,
        sid: &str,
        payload: &[u8],
        info: &ChunkInfo,
        client_id: Option<&str>,
        client_meta: Option<&Value>,
    ) -> Result<Appended> {
        let t0 = Instant::now();
        // Before this session's log lock is taken: a retention pass reads every open log.
        self.make_room(sid, self.entry_estimate(sid, payload.len(), client_id, client_meta))?;
        let log = self.open_log(sid)?;
        let mut l = lock(&log);
        if l.deleted {
            return Err(EngineError::NotFound { what: "session", id: sid.to_owned() });
        }
        if l.row.finalized && l.row.kind == Kind::Data {
            return Err(EngineError::Transition { session: sid.to_owned(), state: "finalized", action: "append to" });
        }
        retention::check_session_quota(&l.row, payload.len() as u64)?;
        if let Some(cid) = client_id {
            check_chunk_id(cid)?;
            if self.store.chunk_index(sid, cid)?.is_some() {
                return Err(EngineError::Conflict(format!("chunk {cid} already exists in session {sid}")));
            }
        }
        let parts: Vec<&[u8]> = if payload.is_empty() { vec![payload] } else { payload.chunks(MAX_PART).collect() };
        if info.media && parts.len() > 1 {
            // The chunker keeps fragments under the limit; a larger one is a bug upstream.
            return Err(EngineError::BadInput("media fragment larger than a sealed chunk".into()));
        }
        let meta_bytes = client_meta.map(serde_json::to_vec).transpose().map_err(internal)?;
        let first_index = l.tree.len();
        let mut out = Appended {
            first_index,
            parts: parts.len() as u32,
            plain_len: payload.len() as u64,
            stored_len: 0,
            compressed: false,
            plain_blake3: hex(blake3::hash(payload).as_bytes()),
            sealed_blake3: String::new(),
            took: Duration::ZERO,
        };
        match self.commit_parts(&mut l, sid, &parts, info, client_id, meta_bytes.as_deref()) {
            Ok(sealed) => {
                for p in &sealed {
                    out.stored_len += p.sealed.len() as u64;
                    out.compressed |= p.compressed;
                }
                out.sealed_blake3 = sealed.last().map(|p| p.sealed_blake3.clone()).unwrap_or_default();
            }
            Err(e) => {
                self.metrics.observe_chunk(t0.elapsed(), false);
                l.row.error_count += 1;
                return Err(e);
            }
        }
        out.took = t0.elapsed();
        self.metrics.observe_chunk(out.took, true);
        self.maybe_checkpoint(&mut l, sid, false)?;
        Ok(out)
    }

    /// What appending `payload_len` bytes adds to the session's value log, at most: the
    /// payload (compression only shrinks it), and for each part a sealed header and tag,
    /// a record and the Merkle nodes it completes (`ENTRY_FIXED`), plus the client id, the
    /// metadata and the session row the entry carries. Retention makes room for this much,
    /// not just the payload: the store's accounting counts the whole entry, so a cap met
    /// by the payload alone would be overshot by a few kB at every append.
    fn entry_estimate(&self, sid: &str, payload_len: usize, client_id: Option<&str>, meta: Option<&Value>) -> u64 {
        const ENTRY_FIXED: u64 = 4096;
        let parts = payload_len.div_ceil(MAX_PART).max(1) as u64;
        let row = self.get(sid).ok().and_then(|r| serde_json::to_vec(&r).ok()).map_or(0, |b| b.len());
        let meta = meta.and_then(|m| serde_json::to_vec(m).ok()).map_or(0, |b| b.len());
        payload_len as u64 + parts * (ENTRY_FIXED + meta as u64) + row as u64 + client_id.map_or(0, str::len) as u64
    }

    /// Seals every part and commits them with their Merkle nodes and the new row in one
    /// transaction; the in-memory tree and row change only once that commit returned.
    fn commit_parts(
        &self,
        l: &mut Log,
        sid: &str,
        parts: &[&[u8]],
        info: &ChunkInfo,
        client_id: Option<&str>,
        meta: Option<&[u8]>,
    ) -> Result<Vec<SealedPart>> {
        let first = l.tree.len();
        let mut sealed = Vec::with_capacity(parts.len());
        for (n, part) in parts.iter().enumerate() {
            sealed.push(self.seal_part(l, sid, first + n as u64, part, info, n == 0)?);
        }
        let t = Instant::now();
        let mut row = l.row.clone();
        let mut nodes = Vec::new();
        for (p, part) in sealed.iter().zip(parts) {
            l.tree.push(p.leaf);
            nodes.extend(l.tree.completed_by_last());
            row.plain_bytes += part.len() as u64;
            row.stored_bytes += p.sealed.len() as u64;
            row.compressed_chunks += p.compressed as u64;
            row.frame_count += info.frames as u64;
            row.counters.gaps += p.gap_before as u64;
            row.counters.max_sealed_len = row.counters.max_sealed_len.max(p.sealed.len() as u64);
            if !row.epochs.contains(&p.epoch) {
                row.epochs.push(p.epoch);
            }
        }
        if let Some(q) = info.quality.filter(|q| q.is_finite()) {
            row.counters.quality_sum += q;
            row.counters.quality_count += 1;
        }
        row.chunk_count = l.tree.len();
        row.media_us = row.media_us.max(info.media_end_us);
        row.updated_at = now_rfc3339();
        let writes: Vec<PartWrite<'_>> = sealed
            .iter()
            .enumerate()
            .map(|(n, p)| PartWrite {
                index: first + n as u64,
                sealed: Some(&p.sealed),
                record: &p.record,
                client_id: if n == 0 { client_id } else { None },
                client_meta: meta,
            })
            .collect();
        let committed = serde_json::to_vec(&row).map_err(internal).and_then(|row_bytes| {
            let w = ChunkWrite { session_id: sid, parts: &writes, nodes: &nodes, session_row: &row_bytes };
            self.store.commit_chunk(&w).map_err(EngineError::from)
        });
        if let Err(e) = committed {
            self.metrics.record(Stage::Storage, t.elapsed(), false);
            // These (epoch, index) pairs were used by seals that are not in the log.
            self.mark_uncommitted_seal();
            l.tree.truncate(first);
            return Err(e);
        }
        self.metrics.record(Stage::Storage, t.elapsed(), true);
        l.row = row;
        Ok(sealed)
    }

    /// Compresses (when it pays), seals and digests one part at `index`.
    #[allow(clippy::too_many_arguments)]
    fn seal_part(
        &self,
        l: &Log,
        sid: &str,
        index: u64,
        part: &[u8],
        info: &ChunkInfo,
        first: bool,
    ) -> Result<SealedPart> {
        let m = &self.metrics;
        let (payload, compressed) = self.compress(part)?;

        let t = Instant::now();
        let epoch = self.seal_epoch()?;
        let mut flags = Flags::empty();
        if compressed {
            flags = flags | Flags::ZSTD;
        }
        if info.media {
            flags = flags | Flags::MEDIA;
        }
        if info.gap_before && first {
            flags = flags | Flags::GAP_BEFORE;
        }
        let header = ChunkHeader {
            cipher: l.cipher,
            flags,
            epoch,
            index,
            plain_len: part.len() as u32,
            cipher_len: (payload.len() + 16) as u32,
            session_id: sid.to_owned(),
        };
        let sealed = match seal::seal_chunk(&l.key, l.cipher, &header, &payload) {
            Ok(s) => s,
            Err(e) => {
                m.record(Stage::Encryption, t.elapsed(), false);
                return Err(internal(e));
            }
        };
        m.record(Stage::Encryption, t.elapsed(), true);
        if sealed.len() > MAX_SEALED_CHUNK {
            return Err(internal("sealed chunk over the store's value limit"));
        }

        let t = Instant::now();
        let record = ChunkRecord {
            cipher: l.cipher,
            flags,
            epoch,
            index,
            media_start_us: info.media_start_us,
            media_end_us: info.media_end_us.max(info.media_start_us),
            wall_clock_us: info.wall_us,
            frame_count: info.frames,
            plain_len: part.len() as u32,
            sealed_len: sealed.len() as u32,
            plain_blake3: *blake3::hash(part).as_bytes(),
            sealed_blake3: *blake3::hash(&sealed).as_bytes(),
            session_id: sid.to_owned(),
        };
        let rec_bytes = record.encode();
        let leaf = merkle::leaf_hash(&rec_bytes);
        m.record(Stage::MerkleBuilding, t.elapsed(), true);
        Ok(SealedPart {
            sealed,
            record: rec_bytes,
            leaf,
            epoch,
            compressed,
            gap_before: record.flags.contains(Flags::GAP_BEFORE),
            sealed_blake3: hex(record.sealed_blake3.as_slice()),
        })
    }

    /// zstd, kept only where it saves enough to pay for decompressing later.
    fn compress<'p>(&self, part: &'p [u8]) -> Result<(std::borrow::Cow<'p, [u8]>, bool)> {
        let m = &self.metrics;
        let t = Instant::now();
        let mut payload: std::borrow::Cow<[u8]> = std::borrow::Cow::Borrowed(part);
        let mut compressed = false;
        if part.len() >= 256 {
            match zstd::bulk::compress(part, self.cfg.record.zstd_level) {
                Ok(z) => {
                    let need = part.len() as u64 * (100 - self.cfg.record.compress_min_saving_pct as u64) / 100;
                    m.compressions.fetch_add(1, Relaxed);
                    m.bytes_compressed_in.fetch_add(part.len() as u64, Relaxed);
                    if (z.len() as u64) <= need {
                        m.bytes_compressed_out.fetch_add(z.len() as u64, Relaxed);
                        payload = std::borrow::Cow::Owned(z);
                        compressed = true;
                    } else {
                        m.bytes_compressed_out.fetch_add(part.len() as u64, Relaxed);
                    }
                }
                Err(e) => {
                    m.record(Stage::Compression, t.elapsed(), false);
                    return Err(internal(format!("zstd: {e}")));
                }
            }
        }
        m.compress_ns.fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
        m.record(Stage::Compression, t.elapsed(), true);
        Ok((payload, compressed))
    }

    /// Signs a checkpoint when N chunks or T seconds have passed since the last one
    /// (or always, with `force`, when there is anything new).
    fn maybe_checkpoint(&self, l: &mut Log, sid: &str, force: bool) -> Result<Option<String>> {
        let size = l.tree.len();
        if size == 0 || size == l.last_checkpoint {
            return Ok(None);
        }
        let r = &self.cfg.record;
        let due = force
            || size - l.last_checkpoint >= r.checkpoint_every_chunks
            || l.last_checkpoint_at.elapsed() >= Duration::from_secs(r.checkpoint_every_secs);
        if !due {
            return Ok(None);
        }
        let note = self.sign_checkpoint(sid, &l.tree);
        self.store.put_checkpoint(sid, size, &note)?;
        l.last_checkpoint = size;
        l.last_checkpoint_at = Instant::now();
        Ok(Some(note))
    }

    fn sign_checkpoint(&self, sid: &str, tree: &merkle::MerkleTree) -> String {
        let root = tree.root(tree.len()).unwrap_or_else(|_| merkle::empty_root());
        let cp = Checkpoint { origin: self.origin(sid), size: tree.len(), root };
        // Signing fails only for an invalid origin, which the session id check at
        // creation rules out; an error here is a bug worth a loud log, not a panic.
        lucid_core::note::sign_checkpoint(&cp, &self.signer).unwrap_or_else(|e| {
            tracing::error!(session = %sid, error = %e, "cannot sign checkpoint");
            String::new()
        })
    }

    /// Called about once a second: signs the time-based checkpoints of open logs.
    pub fn tick(&self) {
        let logs: Vec<(String, Arc<Mutex<Log>>)> =
            lock(&self.logs).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (sid, log) in logs {
            let mut l = lock(&log);
            if let Err(e) = self.maybe_checkpoint(&mut l, &sid, false) {
                tracing::warn!(session = %sid, error = %e, "periodic checkpoint failed");
            }
        }
    }

    /// Final checkpoint, signed manifest and the closed row, in one transaction.
    fn seal_session(&self, sid: &str, set: impl FnOnce(&mut SessionRow)) -> Result<SessionRow> {
        let log = self.open_log(sid)?;
        let mut l = lock(&log);
        let mut row = l.row.clone();
        set(&mut row);
        // With `device_can_decrypt = false` the device keeps no copy of the key past a
        // seal: the empty wrapped key commits with the manifest, in one transaction, and
        // from then on only the recipients' age file opens the session.
        if !self.cfg.evidence.device_can_decrypt && row.recipients_age.is_some() {
            row.wrapped_key.clear();
        }
        row.updated_at = now_rfc3339();
        let size = l.tree.len();
        let root = l.tree.root(size).map_err(internal)?;
        let note = self.sign_checkpoint(sid, &l.tree);
        row.root = Some(hex(&root));
        let init = self.store.get_init(sid)?;
        // The manifest names its head's device-log index, and the head names the
        // manifest's digest: both are made under the device-log lock, and the manifest,
        // its checkpoint, the row and the head event commit in one transaction.
        row.generation += 1;
        let generation = row.generation;
        self.device_append(
            |index| {
                let manifest = lucid_core::manifest::Manifest {
                    format: lucid_core::manifest::MANIFEST_FORMAT.to_owned(),
                    device_id: self.device_id.clone(),
                    device_vkey: self.signer.vkey(),
                    session_id: sid.to_owned(),
                    name: row.name.clone(),
                    kind: devlog::kind_of(row.kind),
                    status: row.status.as_str().to_owned(),
                    created_at: row.created_at.clone(),
                    started_at: row.started_at.clone(),
                    stopped_at: row.stopped_at.clone(),
                    recovered: row.recovered,
                    chunk_count: row.chunk_count,
                    tree_size: size,
                    root: hex(&root),
                    final_checkpoint: note.clone(),
                    cipher: row.cipher.clone(),
                    codec: row.codec.clone(),
                    width: row.width,
                    height: row.height,
                    fps: row.fps,
                    init_segment_blake3: init.as_ref().map(|i| hex(blake3::hash(i).as_bytes())),
                    epochs: row.epochs.clone(),
                    generation: Some(generation),
                    device_log_index: Some(index),
                };
                let signed = lucid_core::manifest::sign_manifest(&manifest, &self.signer).map_err(internal)?;
                let head = lucid_core::devlog::EventKind::SessionHead {
                    session_id: sid.to_owned(),
                    generation,
                    tree_size: size,
                    root,
                    manifest_digest: devlog::sha256(&signed.bytes),
                };
                Ok((head, signed))
            },
            |p, signed| {
                let row_bytes = serde_json::to_vec(&row).map_err(internal)?;
                let dev = p.append();
                Ok(self.store.close_session(sid, size, &note, (&signed.bytes, &signed.signature), &row_bytes, &dev)?)
            },
        )?;
        l.row = row.clone();
        l.last_checkpoint = size;
        if row.wrapped_key.is_empty() {
            // No plaintext of the session outlives the key on the device either.
            self.segments.evict_session(sid);
        }
        Ok(row)
    }

    /// Closes every camera session the last process left open, and checkpoints every
    /// open data session over what was committed.
    fn recover(&self) -> Result<()> {
        let rows: Vec<SessionRow> = self.store.list_sessions()?;
        for row in &rows {
            self.backfill_nodes(&row.id, row.chunk_count)?;
            self.backfill_counters(row)?;
        }
        // Before any recovery seal, so the heads recovery owes follow their sessions'
        // creation in the device log. Rows are read again: the backfill may set
        // `generation`.
        self.backfill_device_log(&rows)?;
        let rows: Vec<SessionRow> = self.store.list_sessions()?;
        for row in rows {
            let open_camera =
                row.kind == Kind::Camera && matches!(row.status, Status::Starting | Status::Recording | Status::Paused);
            if open_camera {
                let now = now_rfc3339();
                self.seal_session(&row.id, |r| {
                    r.status = Status::Stopped;
                    r.recovered = true;
                    r.stopped_at = Some(now.clone());
                    if let Some(p) = r.pipeline.as_mut() {
                        p.state = "stopped".into();
                        p.stopped_at = Some(now);
                    }
                })?;
                self.close_log(&row.id);
                tracing::warn!(session = %row.id, chunks = row.chunk_count, "recovered a session interrupted while recording");
            } else if row.kind == Kind::Data && !row.finalized && row.chunk_count > 0 {
                let log = self.open_log(&row.id)?;
                let mut l = lock(&log);
                self.maybe_checkpoint(&mut l, &row.id, true)?;
                drop(l);
                self.close_log(&row.id);
            }
        }
        Ok(())
    }

    /// Data sessions: sign the final checkpoint and manifest; no more chunks after this.
    pub fn finalize(&self, sid: &str) -> Result<SessionRow> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        let row = self.get(sid)?;
        if row.kind == Kind::Camera && is_live(row.status) {
            return Err(EngineError::Transition {
                session: sid.to_owned(),
                state: row.status.as_str(),
                action: "finalize",
            });
        }
        let now = now_rfc3339();
        let row = self.seal_session(sid, |r| {
            r.finalized = true;
            if r.kind == Kind::Data {
                r.status = Status::Completed;
                r.stopped_at.get_or_insert(now);
            }
        })?;
        self.close_log(sid);
        Ok(row)
    }

    // ----- camera -----------------------------------------------------------------------

    pub fn start_recording(self: &Arc<Self>, sid: &str) -> Result<SessionRow> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        camera::start(self, sid)
    }

    pub fn pause_recording(&self, sid: &str) -> Result<SessionRow> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        camera::pause(self, sid)
    }

    pub fn resume_recording(&self, sid: &str) -> Result<SessionRow> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        camera::resume(self, sid)
    }

    pub fn stop_recording(&self, sid: &str) -> Result<SessionRow> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        camera::stop(self, sid)
    }

    /// Stops whatever is recording (shutdown path): the session is closed normally.
    pub fn shutdown(&self) {
        // A continuous cut may move the camera to a new segment between reading its
        // session and stopping it: the stop then finds the old one stopped, and the
        // new one is stopped on the next round.
        for _ in 0..10 {
            let Some(sid) = self.camera_session() else { break };
            match self.stop_recording(&sid) {
                Ok(_) => break,
                Err(EngineError::Transition { .. }) if self.camera_session().as_deref() != Some(&sid) => continue,
                Err(e) => {
                    tracing::error!(session = %sid, error = %e, "stop at shutdown failed");
                    break;
                }
            }
        }
        self.tick();
    }

    // ----- reading ----------------------------------------------------------------------

    /// The session's data key, unwrapped with the KEK; `KeyErased` once the device gave
    /// its copy up (an empty `wrapped_key`, see `seal_session`).
    fn unwrap_row_key(&self, row: &SessionRow) -> Result<DataKey> {
        if row.wrapped_key.is_empty() {
            return Err(EngineError::KeyErased { session: row.id.clone() });
        }
        let wrapped = B64.decode(&row.wrapped_key).map_err(internal)?;
        seal::unwrap_data_key(&self.kek, &wrapped, &row.id).map_err(internal)
    }

    fn row_key(&self, row: &SessionRow) -> Result<(DataKey, Cipher)> {
        let key = self.unwrap_row_key(row)?;
        let cipher = Cipher::from_name(&row.cipher).ok_or_else(|| internal("unknown cipher"))?;
        Ok((key, cipher))
    }

    /// A session's key, for reading many chunks without unwrapping each time.
    pub fn reader(&self, sid: &str) -> Result<ChunkReader<'_>> {
        let row = self.get(sid)?;
        let (key, _) = self.row_key(&row)?;
        Ok(ChunkReader { engine: self, sid: sid.to_owned(), key })
    }

    /// Every chunk view of a session. O(n): for tests and tools; the routes page with
    /// `records_from` and read counters from the row.
    pub fn records(&self, sid: &str) -> Result<Vec<ChunkView>> {
        let ids: HashMap<u64, String> = self.store.chunk_ids(sid)?.into_iter().map(|(c, i)| (i, c)).collect();
        let mut out = Vec::new();
        for (idx, bytes) in self.store.records(sid)? {
            let record = ChunkRecord::decode(&bytes).map_err(internal)?;
            let present = self.store.has_sealed(sid, idx)?;
            out.push(ChunkView { record, client_id: ids.get(&idx).cloned(), present });
        }
        Ok(out)
    }

    /// One chunk's record, client id and presence, named by client id or decimal index:
    /// point lookups only (O(log n) in the store), never a scan of the session.
    pub fn chunk(&self, sid: &str, cid: &str) -> Result<ChunkView> {
        let (index, by_id) = match self.store.chunk_index(sid, cid)? {
            Some(i) => (i, Some(cid.to_owned())),
            None => (self.resolve_chunk(sid, cid)?, None),
        };
        let not_found = || EngineError::NotFound { what: "chunk", id: cid.to_owned() };
        let bytes = self.store.get_record(sid, index)?.ok_or_else(not_found)?;
        let record = ChunkRecord::decode(&bytes).map_err(internal)?;
        let client_id = match by_id {
            Some(c) => Some(c),
            None => self.client_id_of(sid, index)?,
        };
        Ok(ChunkView { record, client_id, present: self.store.has_sealed(sid, index)? })
    }

    /// The client id of the chunk at `index`: the one its metadata names, if that id
    /// really points here (metadata is the client's; the id table is ours). Two lookups.
    fn client_id_of(&self, sid: &str, index: u64) -> Result<Option<String>> {
        let named =
            self.chunk_meta(sid, index)?.and_then(|m| m.get("chunk_id").and_then(Value::as_str).map(str::to_owned));
        Ok(match named {
            Some(c) if self.store.chunk_index(sid, &c)? == Some(index) => Some(c),
            _ => None,
        })
    }

    /// At most `limit` chunk views from index `from` on, with their client ids: a
    /// bounded range read for listings, whatever the session's length.
    pub fn records_from(&self, sid: &str, from: u64, limit: usize) -> Result<Vec<ChunkView>> {
        let mut out = Vec::new();
        for (idx, bytes) in self.store.records_from(sid, from, limit)? {
            let record = ChunkRecord::decode(&bytes).map_err(internal)?;
            let client_id = self.client_id_of(sid, idx)?;
            out.push(ChunkView { record, client_id, present: self.store.has_sealed(sid, idx)? });
        }
        Ok(out)
    }

    /// The chunk views from index `from` on whose record and presence satisfy `keep`, at
    /// most `limit` of them, looking at no more than `scan` records; and the index the
    /// next look should start at. A filtered listing is one bounded range read whatever
    /// the session's length (the filter may match nothing in the window: the caller
    /// pages on from the index returned).
    pub fn records_where(
        &self,
        sid: &str,
        from: u64,
        limit: usize,
        scan: usize,
        keep: impl Fn(&ChunkRecord, bool) -> bool,
    ) -> Result<(Vec<ChunkView>, u64)> {
        let mut out = Vec::new();
        let mut next = from;
        for (idx, bytes) in self.store.records_from(sid, from, scan)? {
            next = idx + 1;
            let record = ChunkRecord::decode(&bytes).map_err(internal)?;
            let present = self.store.has_sealed(sid, idx)?;
            if keep(&record, present) {
                let client_id = self.client_id_of(sid, idx)?;
                out.push(ChunkView { record, client_id, present });
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok((out, next))
    }

    /// Resolves a chunk named by client id or by decimal index.
    pub fn resolve_chunk(&self, sid: &str, cid: &str) -> Result<u64> {
        if let Some(i) = self.store.chunk_index(sid, cid)? {
            return Ok(i);
        }
        let row = self.get(sid)?;
        match cid.parse::<u64>() {
            Ok(i) if i < row.chunk_count => Ok(i),
            _ => Err(EngineError::NotFound { what: "chunk", id: cid.to_owned() }),
        }
    }

    pub fn chunk_meta(&self, sid: &str, index: u64) -> Result<Option<Value>> {
        Ok(self.store.chunk_meta(sid, index)?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Redacts a chunk (removes its sealed bytes); see `Store::redact_chunk`.
    pub fn redact(&self, sid: &str, index: u64) -> Result<bool> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        let redacted = self.store.redact_chunk(sid, index)?;
        self.segments.evict(sid, index);
        Ok(redacted)
    }

    /// A camera session's media segment `index` (its fMP4 fragment), decrypted once and
    /// shared by every viewer asking for it (see `segments`).
    pub fn segment(&self, sid: &str, index: u64) -> Result<bytes::Bytes> {
        if let Some(b) = self.segments.peek(sid, index) {
            return Ok(b);
        }
        let row = self.get(sid)?;
        if row.kind != Kind::Camera {
            return Err(EngineError::BadInput(format!("session {sid} holds uploaded data, not video")));
        }
        self.segments.get_or_load(sid, index, || self.reader(sid)?.plaintext_bytes(index))
    }

    /// The segment if it is decrypted and cached now; never touches the store, so the
    /// HTTP layer can answer the hot segment of a live stream without a blocking thread.
    pub fn cached_segment(&self, sid: &str, index: u64) -> Option<bytes::Bytes> {
        self.segments.peek(sid, index)
    }

    pub fn checkpoints(&self, sid: &str) -> Result<Vec<(u64, String)>> {
        self.get(sid)?;
        Ok(self.store.checkpoints(sid)?)
    }

    /// One page of a session's checkpoints, ascending, and whether more follow.
    pub fn checkpoints_page(&self, sid: &str, offset: usize, limit: usize) -> Result<(Vec<(u64, String)>, bool)> {
        self.get(sid)?;
        Ok(self.store.checkpoints_page(sid, offset, limit)?)
    }

    /// The latest signed checkpoint, one lookup.
    pub fn last_checkpoint(&self, sid: &str) -> Result<Option<(u64, String)>> {
        self.get(sid)?;
        Ok(self.store.last_checkpoint(sid)?)
    }

    pub fn manifest(&self, sid: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.get(sid)?;
        Ok(self.store.get_manifest(sid)?)
    }

    pub fn init_segment(&self, sid: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.store.get_init(sid)?)
    }

    /// Leaves of the committed log (the open log's when recording). O(n): for tests and
    /// tools; the routes use `inclusion`, `consistency` and `chunk`.
    pub fn leaves(&self, sid: &str) -> Result<Vec<Hash>> {
        if let Some(log) = lock(&self.logs).get(sid).cloned() {
            return Ok(lock(&log).tree.leaves().to_vec());
        }
        self.get(sid)?;
        self.load_leaves(sid)
    }

    /// Runs a proof computation over the session's stored complete-subtree hashes
    /// (`available` committed leaves): O(log² n) point reads, no leaf rehashed.
    fn with_nodes<T>(
        &self,
        sid: &str,
        f: impl FnOnce(&mut dyn FnMut(u32, u64) -> Result<Hash, NodeError>) -> Result<T, NodeError>,
    ) -> Result<T> {
        let r = self.store.with_merkle_nodes(sid, |lookup| f(&mut |l, i| lookup(l, i).map_err(NodeError::Store)))?;
        r.map_err(|e| match e {
            NodeError::Store(s) => s.into(),
            NodeError::Merkle(m) => EngineError::BadInput(m.to_string()),
        })
    }

    /// Inclusion proof of chunk `index` in the tree of size `size` (default: the latest
    /// signed checkpoint, so the proof can be checked against a signature).
    pub fn inclusion(&self, sid: &str, index: u64, size: Option<u64>) -> Result<(u64, Hash, Vec<Hash>, Hash)> {
        let available = self.get(sid)?.chunk_count;
        let size = match size {
            Some(s) => s,
            None => self.store.last_checkpoint(sid)?.map(|c| c.0).unwrap_or(available),
        };
        if size == 0 || size > available || index >= size {
            return Err(EngineError::BadInput(format!(
                "need index < tree_size <= {available} (index {index}, tree_size {size})"
            )));
        }
        self.with_nodes(sid, |node| {
            let mut node = |l, i| node(l, i);
            let proof = merkle::inclusion_proof_with(available, index, size, &mut node)?;
            let root = merkle::root_with(available, size, &mut node)?;
            let leaf = node(0, index)?;
            Ok((size, leaf, proof, root))
        })
    }

    pub fn consistency(&self, sid: &str, m: u64, n: u64) -> Result<(Hash, Hash, Vec<Hash>)> {
        let available = self.get(sid)?.chunk_count;
        if m == 0 || m > n || n > available {
            return Err(EngineError::BadInput(format!("need 0 < from <= to <= {available} (from {m}, to {n})")));
        }
        self.with_nodes(sid, |node| {
            let mut node = |l, i| node(l, i);
            let proof = merkle::consistency_proof_with(available, m, n, &mut node)?;
            Ok((merkle::root_with(available, m, &mut node)?, merkle::root_with(available, n, &mut node)?, proof))
        })
    }

    /// Writes the complete-subtree hashes of a session whose store predates them (or
    /// lost them): one pass over its records, once. Returns whether it had to.
    fn backfill_nodes(&self, sid: &str, chunk_count: u64) -> Result<bool> {
        if chunk_count == 0 || self.store.has_merkle_leaf(sid, chunk_count - 1)? {
            return Ok(false);
        }
        let mut tree = merkle::MerkleTree::new();
        let mut nodes = Vec::new();
        for leaf in self.load_leaves(sid)? {
            tree.push(leaf);
            nodes.extend(tree.completed_by_last());
        }
        self.store.put_merkle_nodes(sid, &nodes)?;
        tracing::info!(session = %sid, nodes = nodes.len(), "Merkle subtree hashes backfilled");
        Ok(true)
    }

    /// Counts the records of a session whose row predates `LogCounters` (one pass over
    /// its records and their metadata, once), so statistics never scan. Returns whether
    /// it had to.
    fn backfill_counters(&self, row: &SessionRow) -> Result<bool> {
        if row.counters.version >= LogCounters::VERSION {
            return Ok(false);
        }
        let mut c = LogCounters { version: LogCounters::VERSION, ..LogCounters::default() };
        self.for_each_record(&row.id, 0, row.chunk_count, |idx, rec| {
            c.gaps += rec.flags.contains(Flags::GAP_BEFORE) as u64;
            c.max_sealed_len = c.max_sealed_len.max(u64::from(rec.sealed_len));
            // Every part of an upload carries its metadata; only the first counts (the
            // next part's `upload_id` differs from the previous part's).
            if let Some(m) = self.chunk_meta(&row.id, idx)?
                && let Some(q) = m.get("quality_score").and_then(Value::as_f64)
            {
                let prev = idx.checked_sub(1).map(|p| self.chunk_meta(&row.id, p)).transpose()?.flatten();
                let upload = |m: &Value| m.get("upload_id").cloned();
                if prev.is_none_or(|p| upload(&p).is_none() || upload(&p) != upload(&m)) {
                    c.quality_sum += q;
                    c.quality_count += 1;
                }
            }
            Ok(())
        })?;
        self.update_row(&row.id, |r| {
            r.counters = c;
            Ok(())
        })?;
        tracing::info!(session = %row.id, "log counters backfilled");
        Ok(true)
    }

    /// Calls `f` on every record of `[from, to)` in index order, reading them in bounded
    /// batches (a whole-session pass never holds the whole log in memory).
    fn for_each_record(
        &self,
        sid: &str,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, ChunkRecord) -> Result<()>,
    ) -> Result<()> {
        const BATCH: usize = 1024;
        let mut next = from;
        while next < to {
            let batch = self.store.records_from(sid, next, BATCH)?;
            let Some(&(last, _)) = batch.last() else { break };
            for (idx, bytes) in batch {
                if idx >= to {
                    return Ok(());
                }
                f(idx, ChunkRecord::decode(&bytes).map_err(internal)?)?;
            }
            next = last + 1;
        }
        Ok(())
    }

    /// The first and the last record of a session's log: two point lookups, for the
    /// time range statistics report.
    pub fn edge_records(&self, sid: &str, count: u64) -> Result<Option<(ChunkRecord, ChunkRecord)>> {
        let Some(last) = count.checked_sub(1) else { return Ok(None) };
        let get = |i| -> Result<Option<ChunkRecord>> {
            self.store.get_record(sid, i)?.map(|b| ChunkRecord::decode(&b).map_err(internal)).transpose()
        };
        Ok(match (get(0)?, get(last)?) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        })
    }

    /// Writes the evidence bundle (tar) of a session.
    pub fn write_evidence<W: std::io::Write>(&self, sid: &str, out: W) -> Result<()> {
        let row = self.get(sid)?;
        let (man, sig) = self.store.get_manifest(sid)?.ok_or_else(|| {
            EngineError::BadState(format!("session {sid} has no signed manifest yet (stop or finalize it first)"))
        })?;
        let signature: [u8; 64] = sig.as_slice().try_into().map_err(|_| internal("bad stored signature"))?;
        // Only what the manifest covers: a session restarted after its manifest has later
        // chunks and checkpoints that belong to the next manifest.
        let manifest_size = self.manifest_tree_size(&man)?;
        let signed = lucid_core::SignedManifest { bytes: man, signature };
        let mut w = lucid_core::evidence::EvidenceWriter::new(out, &self.signer.vkey(), &signed).map_err(internal)?;
        if let Some(age_file) = &row.recipients_age {
            w.recipients(&B64.decode(age_file).map_err(internal)?).map_err(internal)?;
        }
        if let Some(file) = self.device_head_file(&signed.bytes)? {
            w.device_head(&file).map_err(internal)?;
        }
        if let Some(init) = self.store.get_init(sid)? {
            w.init_segment(&init).map_err(internal)?;
        }
        for (size, note) in self.store.checkpoints(sid)? {
            if size <= manifest_size {
                w.checkpoint(&note).map_err(internal)?;
            }
        }
        // The whole log is the bundle's content (O(n) by nature), read in batches.
        self.for_each_record(sid, 0, manifest_size, |_, rec| w.record(&rec).map_err(internal))?;
        for idx in 0..manifest_size.min(row.chunk_count) {
            if let Some(sealed) = self.store.get_sealed(sid, idx)? {
                w.chunk(&sealed).map_err(internal)?;
            }
        }
        w.finish().map_err(internal)?;
        Ok(())
    }

    /// The session head's inclusion proof against the newest device checkpoint, for the
    /// manifest `man`; `None` for a manifest from before the device log (no
    /// `device_log_index`).
    fn device_head_file(&self, man: &[u8]) -> Result<Option<lucid_core::evidence::DeviceHeadFile>> {
        let v: Value = serde_json::from_slice(man).map_err(internal)?;
        let Some(index) = v.get("device_log_index").and_then(Value::as_u64) else { return Ok(None) };
        let Some((size, checkpoint)) = self.device_checkpoint()? else { return Ok(None) };
        let event = self
            .device_entries(index, Some(index + 1))?
            .pop()
            .ok_or_else(|| internal(format!("device log event {index} is missing")))?
            .1;
        let (_, _, proof, _) = self.device_inclusion(index, Some(size))?;
        Ok(Some(lucid_core::evidence::DeviceHeadFile {
            index,
            event: crate::util::hex(&event),
            checkpoint,
            proof: proof.iter().map(|h| crate::util::hex(h)).collect(),
        }))
    }

    fn manifest_tree_size(&self, man: &[u8]) -> Result<u64> {
        let v: Value = serde_json::from_slice(man).map_err(internal)?;
        v.get("tree_size").and_then(Value::as_u64).ok_or_else(|| internal("manifest without tree_size"))
    }

    /// A verifier for this device's own signatures (self-checks and tests).
    pub fn verifier(&self) -> Verifier {
        // The vkey was produced by our own signer; parsing it cannot fail.
        Verifier::from_vkey(&self.signer.vkey()).expect("own verifier key parses")
    }

    pub fn camera_session(&self) -> Option<String> {
        lock(&self.camera).as_ref().map(|c| c.session_id.clone())
    }
}

/// A node lookup failed in the store, or the proof request was out of range.
#[derive(Debug)]
enum NodeError {
    Store(StoreError),
    Merkle(merkle::MerkleError),
}

impl From<merkle::MerkleError> for NodeError {
    fn from(e: merkle::MerkleError) -> Self {
        NodeError::Merkle(e)
    }
}

/// Starts an engine background thread named `name`: it waits `first`, then calls `pass`,
/// which returns how long to wait before the next call. It holds the engine weakly, so it
/// never keeps a dropped engine (and its store) alive, and it ends when the returned
/// sender is dropped (the engine keeps it). `None`, logged with `without`, when the thread
/// cannot start.
pub(crate) fn spawn_runner(
    engine: &Arc<Engine>,
    name: &str,
    first: std::time::Duration,
    without: &'static str,
    mut pass: impl FnMut(&Arc<Engine>) -> std::time::Duration + Send + 'static,
) -> Option<std::sync::mpsc::Sender<()>> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let weak = Arc::downgrade(engine);
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
        let mut wait = first;
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(wait) {
            let Some(e) = weak.upgrade() else { break };
            wait = pass(&e);
        }
    });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!(error = %e, thread = name, "cannot start a background thread; {without}");
            None
        }
    }
}

/// Decrypts chunks of one session.
pub struct ChunkReader<'a> {
    engine: &'a Engine,
    sid: String,
    key: DataKey,
}

impl ChunkReader<'_> {
    /// The plaintext of chunk `index`: opened, checked against its record, decompressed.
    pub fn plaintext(&self, index: u64) -> Result<Vec<u8>> {
        self.plaintext_bytes(index).map(Vec::from)
    }

    /// [`Self::plaintext`] as shared bytes: an uncompressed chunk is decrypted in the buffer
    /// its sealed bytes were read into and handed out as a slice of it, no copy (export and
    /// the segment cache send these to sockets).
    pub fn plaintext_bytes(&self, index: u64) -> Result<Bytes> {
        let e = self.engine;
        let mut sealed = e
            .store
            .get_sealed(&self.sid, index)?
            .ok_or_else(|| EngineError::NotFound { what: "chunk", id: index.to_string() })?;
        let (header, payload) = seal::open_chunk_in_place(&self.key, &mut sealed).map_err(internal)?;
        if header.session_id != self.sid || header.index != index {
            return Err(internal(format!("chunk {index} of {} is not where it belongs", self.sid)));
        }
        let plain = if header.flags.contains(Flags::ZSTD) {
            let t = Instant::now();
            let p = zstd::bulk::decompress(&sealed[payload], header.plain_len as usize).map_err(internal)?;
            e.metrics.decompressions.fetch_add(1, Relaxed);
            e.metrics.bytes_decompressed.fetch_add(p.len() as u64, Relaxed);
            e.metrics.compress_ns.fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
            Bytes::from(p)
        } else {
            Bytes::from(sealed).slice(payload)
        };
        if plain.len() != header.plain_len as usize {
            return Err(internal(format!("chunk {index}: length mismatch")));
        }
        Ok(plain)
    }

    /// The bytes a client uploaded under one chunk id: its parts, reassembled.
    pub fn client_chunk(&self, first: u64) -> Result<Vec<u8>> {
        let parts =
            self.engine.chunk_meta(&self.sid, first)?.and_then(|m| m.get("parts").and_then(Value::as_u64)).unwrap_or(1);
        let mut out = Vec::new();
        for i in first..first + parts {
            out.extend(self.plaintext(i)?);
        }
        Ok(out)
    }
}
