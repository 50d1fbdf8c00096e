//! The storage service (8086): client chunks in and out of the engine's log, listings,
//! redaction, archive and cleanup, and the storage health the other services rely on.
//!
//! It also owns the upload path the four Lucid upload routes share (`ingest`): resolve or
//! create the data session, then hand the bytes to `Engine::append`, the real chunk path
//! (compress -> seal -> digest -> Merkle log -> durable commit). The chunk is
//! acknowledged only after that commit.
//!
//! It must not delete evidence behind the client's back: the log is append-only, so
//! deleting one chunk is a redaction (the sealed bytes go, the record stays and the
//! evidence verifier names the missing chunk), and only the explicit "delete all chunks"
//! route removes a whole session. It never touches redb itself: everything goes through
//! the engine.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{ApiError, ApiResult, AppState, LJson, LQuery, blocking, free_space};
use crate::engine::{Appended, ChunkInfo, ChunkView, Engine, EngineError, Kind, MAX_PART, SessionRow, Status};
use crate::util::{hex, now_rfc3339, parse_rfc3339, short_id};

/// Empty data sessions older than this are removed by `POST /cleanup`.
const EMPTY_SESSION_MAX_AGE_SECS: i64 = 3600;

/// When `POST /cleanup` last ran (per router, so each daemon keeps its own).
#[derive(Clone, Default)]
struct LastCleanup(Arc<Mutex<Option<String>>>);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/sessions/{sid}/chunks", post(upload).get(list).delete(delete_all))
        .route("/sessions/{sid}/chunks/{cid}", get(get_chunk).delete(delete_chunk))
        .route("/sessions/{sid}/archive", post(archive))
        .route("/sessions/{sid}/restore", post(restore))
        .route("/cleanup", post(cleanup))
        .layer(Extension(LastCleanup::default()))
}

// ----- the shared upload path ---------------------------------------------------------------

/// Sealed parts `Engine::append` will cut a payload into (it splits at `MAX_PART`; an
/// empty payload is one empty part). Computed up front because the reader needs it in
/// the chunk's metadata, which is committed together with the first part.
pub(super) fn parts_for(len: usize) -> u64 {
    len.div_ceil(MAX_PART).max(1) as u64
}

/// `plain / stored`, or `None` when nothing was stored (no measurement, no number).
pub(super) fn ratio(plain: u64, stored: u64) -> Option<f64> {
    (stored > 0).then(|| plain as f64 / stored as f64)
}

/// Where a session (and optionally one of its chunks) lives in the appliance's store.
pub(super) fn storage_path(engine: &Engine, sid: &str, index: Option<u64>) -> String {
    let base = format!("{}:/sessions/{sid}", engine.cfg.store_path().display());
    match index {
        Some(i) => format!("{base}/chunks/{i}"),
        None => base,
    }
}

pub(super) fn validate_sid(sid: &str) -> Result<(), EngineError> {
    lucid_core::chunk::validate_session_id(sid).map_err(|e| EngineError::BadInput(format!("invalid session id: {e}")))
}

/// Decodes a base64 chunk (400 when it is not base64) and enforces the decoded size limit
/// (413), checking the encoded length first so an oversized chunk is never decoded.
pub(super) fn decode_chunk(engine: &Engine, field: &str, b64: &str) -> ApiResult<Vec<u8>> {
    let max = engine.cfg.max_chunk_bytes;
    let too_large = || ApiError::PayloadTooLarge(format!("{field} decodes to more than {max} bytes"));
    if b64.len() / 4 * 3 > max + 3 {
        return Err(too_large());
    }
    let data = B64.decode(b64.trim()).map_err(|e| ApiError::bad(format!("{field} is not valid base64: {e}")))?;
    if data.len() > max {
        return Err(too_large());
    }
    Ok(data)
}

/// The data session uploads go to: the existing one, or a new `Kind::Data` session.
///
/// A camera session takes no uploads while it records (409: it is fed by the camera) nor
/// once it holds video (its log is media-only). A camera session that never recorded and
/// holds nothing (created by the pipeline or gateway service, then fed by a client) is
/// turned into a data session by its first upload; starting the camera on it afterwards
/// is refused by the engine. Archived sessions are read-only until restored.
pub(super) fn ensure_data_session(engine: &Engine, sid: &str) -> Result<SessionRow, EngineError> {
    validate_sid(sid)?;
    let row = match engine.get(sid) {
        Ok(r) => r,
        Err(EngineError::NotFound { .. }) => {
            match engine.create_session(Some(sid.to_owned()), sid.to_owned(), Kind::Data, |_| {}) {
                Ok(r) => r,
                // Created by a concurrent upload between our get and create.
                Err(EngineError::Conflict(_)) => engine.get(sid)?,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    if row.archived {
        return Err(EngineError::Conflict(format!("session {sid} is archived; restore it before adding chunks")));
    }
    match row.kind {
        Kind::Data => {
            if row.finalized {
                return Err(EngineError::BadState(format!("session {sid} is finalized; it takes no more chunks")));
            }
            Ok(row)
        }
        Kind::Camera => {
            if matches!(row.status, Status::Recording | Status::Paused | Status::Starting) {
                return Err(EngineError::Conflict(format!(
                    "session {sid} is fed by the camera while it records; upload to another session"
                )));
            }
            let fresh = row.chunk_count == 0 && row.status == Status::Created && !row.finalized;
            if !fresh {
                return Err(EngineError::Conflict(format!(
                    "session {sid} holds camera video; its log takes no uploaded data"
                )));
            }
            engine.update(sid, |r| {
                // Re-checked under the row's lock: a recording may have started meanwhile.
                if r.chunk_count != 0 || r.status != Status::Created || r.kind != Kind::Camera {
                    return Err(EngineError::Conflict(format!("session {sid} changed while converting it")));
                }
                r.kind = Kind::Data;
                r.status = Status::Processing;
                Ok(())
            })
        }
    }
}

/// One committed upload: what the engine did and the metadata stored with it.
pub(super) struct Stored {
    pub appended: Appended,
    pub meta: Value,
}

/// The upload path: data session, then the real chunk path. `meta` is the client's
/// metadata; the keys `parts`, `size_bytes`, `upload_id` and `stored_at` are the
/// appliance's (`parts` is how the reader reassembles a chunk split into sealed parts,
/// `upload_id` tells a chunk's continuation parts from the next chunk).
pub(super) fn ingest(
    engine: &Engine,
    sid: &str,
    chunk_id: Option<&str>,
    data: &[u8],
    mut meta: Map<String, Value>,
) -> Result<Stored, EngineError> {
    ensure_data_session(engine, sid)?;
    let parts = parts_for(data.len());
    meta.insert("parts".into(), json!(parts));
    meta.insert("size_bytes".into(), json!(data.len()));
    meta.insert("upload_id".into(), json!(short_id("upload")));
    meta.insert("stored_at".into(), json!(now_rfc3339()));
    let meta = Value::Object(meta);
    let appended = engine.append(sid, data, &ChunkInfo::default(), chunk_id, Some(&meta))?;
    if u64::from(appended.parts) != parts {
        // Both sides split at MAX_PART; a difference means the reader would reassemble
        // the wrong parts, which must be loud.
        tracing::error!(session = %sid, parts, appended = appended.parts, "part count disagrees with the engine");
        return Err(EngineError::Internal("part count disagrees with the engine".into()));
    }
    Ok(Stored { appended, meta })
}

/// One client chunk of a session's log: its first index and its sealed parts.
pub(super) struct ClientChunk {
    pub first: u64,
    pub views: Vec<ChunkView>,
    pub meta: Option<Value>,
    pub client_id: Option<String>,
    /// Merkle leaf hash of the first part's record.
    pub leaf: String,
}

impl ClientChunk {
    pub fn id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| self.first.to_string())
    }
    pub fn plain_len(&self) -> u64 {
        self.views.iter().map(|v| u64::from(v.record.plain_len)).sum()
    }
    pub fn sealed_len(&self) -> u64 {
        self.views.iter().map(|v| u64::from(v.record.sealed_len)).sum()
    }
    pub fn present(&self) -> bool {
        self.views.iter().all(|v| v.present)
    }
    pub fn frames(&self) -> u64 {
        self.views.iter().map(|v| u64::from(v.record.frame_count)).sum()
    }
    pub fn duration_secs(&self) -> f64 {
        let start = self.views.first().map(|v| v.record.media_start_us).unwrap_or(0);
        let end = self.views.last().map(|v| v.record.media_end_us).unwrap_or(0);
        end.saturating_sub(start) as f64 / 1e6
    }
    /// The client's own quality score, if it gave one; the appliance measures none.
    pub fn quality(&self) -> Option<f64> {
        self.meta.as_ref().and_then(|m| m.get("quality_score")).and_then(Value::as_f64)
    }
}

/// The log of a session grouped into client chunks (a chunk larger than one sealed part
/// spans several consecutive records; its metadata says how many). Camera chunks are one
/// part each. A redacted chunk has lost its metadata, so each of its parts is listed.
pub(super) fn client_chunks(engine: &Engine, sid: &str) -> Result<Vec<ClientChunk>, EngineError> {
    let views = engine.records(sid)?;
    let leaves = engine.leaves(sid)?;
    let mut out = Vec::new();
    let mut it = views.into_iter().peekable();
    while let Some(first) = it.next() {
        let index = first.record.index;
        let meta = engine.chunk_meta(sid, index)?;
        let parts = meta.as_ref().and_then(|m| m.get("parts")).and_then(Value::as_u64).unwrap_or(1).max(1);
        let client_id = first.client_id.clone();
        let mut group = vec![first];
        for _ in 1..parts {
            match it.next() {
                Some(v) => group.push(v),
                None => break,
            }
        }
        let leaf = leaves.get(index as usize).map(|h| hex(h)).unwrap_or_default();
        out.push(ClientChunk { first: index, views: group, meta, client_id, leaf });
    }
    Ok(out)
}

/// Resolves a chunk named by client id or index to the first index of a client chunk;
/// an index inside a multi-part chunk (a continuation part) is not a chunk of its own.
pub(super) fn resolve_head(engine: &Engine, sid: &str, cid: &str) -> Result<u64, EngineError> {
    let index = engine.resolve_chunk(sid, cid)?;
    if index > 0 {
        let upload = |i| -> Result<Option<Value>, EngineError> {
            Ok(engine.chunk_meta(sid, i)?.and_then(|m| m.get("upload_id").cloned()))
        };
        if let (Some(a), Some(b)) = (upload(index - 1)?, upload(index)?)
            && a == b
        {
            return Err(EngineError::NotFound { what: "chunk", id: cid.to_owned() });
        }
    }
    Ok(index)
}

// ----- routes -----------------------------------------------------------------------------

#[derive(Debug, Deserialize, Serialize)]
struct ChunkMetadataIn {
    chunk_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunk_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compressed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compression_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quality_score: Option<f64>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct UploadBody {
    chunk_data: String,
    chunk_metadata: ChunkMetadataIn,
}

/// Stores one client chunk. A given `hash_sha256` must be the SHA-256 of the decoded
/// data (clients rely on the check); the chunk is acknowledged after its commit.
async fn upload(
    State(engine): State<AppState>,
    Path(sid): Path<String>,
    LJson(body): LJson<UploadBody>,
) -> ApiResult<Json<Value>> {
    validate_sid(&sid)?;
    let data = decode_chunk(&engine, "chunk_data", &body.chunk_data)?;
    let md = body.chunk_metadata;
    if let Some(want) = &md.hash_sha256 {
        let got = hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
        if !want.trim().eq_ignore_ascii_case(&got) {
            return Err(ApiError::bad(format!("hash_sha256 does not match the chunk data (computed {got})")));
        }
    }
    let chunk_id = md.chunk_id.clone();
    let meta = match serde_json::to_value(&md) {
        Ok(Value::Object(m)) => m,
        _ => return Err(ApiError::Internal("chunk metadata did not serialize to an object".into())),
    };
    let (e, s, c) = (engine.clone(), sid.clone(), chunk_id.clone());
    let stored = blocking(move || ingest(&e, &s, Some(&c), &data, meta)).await?;
    let a = &stored.appended;
    let mut metadata = stored.meta.clone();
    metadata["storage"] = json!({
        "log_index": a.first_index,
        "parts": a.parts,
        "size_bytes": a.plain_len,
        "sealed_size_bytes": a.stored_len,
        "compressed": a.compressed,
        "compression_ratio": ratio(a.plain_len, a.stored_len),
        "plain_blake3": a.plain_blake3,
    });
    Ok(Json(json!({
        "chunk_id": chunk_id,
        "session_id": sid,
        "storage_path": storage_path(&engine, &sid, Some(a.first_index)),
        "metadata": metadata,
        "timestamp": now_rfc3339(),
    })))
}

/// The decrypted bytes of one chunk (named by client id or log index), base64.
async fn get_chunk(State(engine): State<AppState>, Path((sid, cid)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    let (s, c) = (sid.clone(), cid.clone());
    let (index, data, meta) = blocking(move || {
        let index = resolve_head(&e, &s, &c)?;
        let data = e.reader(&s)?.client_chunk(index)?;
        Ok((index, data, e.chunk_meta(&s, index)?))
    })
    .await?;
    let chunk_id = meta.as_ref().and_then(|m| m.get("chunk_id")).and_then(Value::as_str).map(str::to_owned);
    Ok(Json(json!({
        "chunk_id": chunk_id.unwrap_or(cid),
        "session_id": sid,
        "log_index": index,
        "data": B64.encode(&data),
        "metadata": meta,
        "timestamp": now_rfc3339(),
    })))
}

#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default = "default_limit")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

fn default_limit() -> i64 {
    100
}

/// Chunks of a session in log order. `sequence_number` is the chunk's index in the
/// session's Merkle log (the client's own `chunk_index` stays in its metadata). An
/// unknown session lists no chunks (the contract names no 404 here).
async fn list(
    State(engine): State<AppState>,
    Path(sid): Path<String>,
    LQuery(page): LQuery<Page>,
) -> ApiResult<Json<Value>> {
    if !(1..=1000).contains(&page.limit) {
        return Err(ApiError::validation(&["query", "limit"], "limit must be between 1 and 1000"));
    }
    if page.offset < 0 {
        return Err(ApiError::validation(&["query", "offset"], "offset must be at least 0"));
    }
    let (limit, offset) = (page.limit as usize, page.offset as usize);
    let e = engine.clone();
    let s = sid.clone();
    let chunks = blocking(move || match e.get(&s) {
        Ok(_) => client_chunks(&e, &s),
        Err(EngineError::NotFound { .. }) => Ok(Vec::new()),
        Err(err) => Err(err),
    })
    .await?;
    let total = chunks.len();
    let items: Vec<Value> = chunks
        .iter()
        .skip(offset)
        .take(limit)
        .map(|c| {
            let meta_ts = c.meta.as_ref().and_then(|m| m.get("timestamp").or_else(|| m.get("stored_at")));
            let wall = c.views.first().map(|v| v.record.wall_clock_us).unwrap_or(0);
            let timestamp = match meta_ts {
                Some(t) => t.clone(),
                None if wall > 0 => json!(crate::util::micros_to_rfc3339(wall)),
                None => Value::Null,
            };
            json!({
                "chunk_id": c.id(),
                "session_id": sid,
                "sequence_number": c.first,
                "timestamp": timestamp,
                "status": if c.present() { "stored" } else { "redacted" },
                "size_bytes": c.plain_len(),
                "sealed_size_bytes": c.sealed_len(),
                "duration_seconds": c.duration_secs(),
                "frame_count": c.frames(),
                "merkle_hash": c.leaf,
                "storage_path": storage_path(&engine, &sid, Some(c.first)),
                "compression_ratio": ratio(c.plain_len(), c.sealed_len()),
                "quality_score": c.quality(),
            })
        })
        .collect();
    let count = items.len();
    Ok(Json(json!({
        "session_id": sid,
        "chunks": items,
        "pagination": {"limit": limit, "offset": offset, "count": count, "total": total},
        "timestamp": now_rfc3339(),
    })))
}

/// Deleting one chunk is a redaction: the log is append-only, so the sealed bytes are
/// removed but the chunk's record stays in the Merkle log. Checkpoints and the manifest
/// still verify, and the evidence verifier reports exactly which chunk is missing.
async fn delete_chunk(
    State(engine): State<AppState>,
    Path((sid, cid)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    let (s, c) = (sid.clone(), cid.clone());
    let (index, parts) = blocking(move || {
        let index = resolve_head(&e, &s, &c)?;
        let parts = e.chunk_meta(&s, index)?.and_then(|m| m.get("parts").and_then(Value::as_u64)).unwrap_or(1).max(1);
        // Later parts first: the first part's metadata (which says how many parts there
        // are) goes last, so an interrupted redaction can be finished by repeating it.
        let mut removed = false;
        for i in (index..index + parts).rev() {
            removed |= e.redact(&s, i)?;
        }
        if !removed {
            return Err(EngineError::NotFound { what: "chunk", id: c.clone() });
        }
        Ok((index, parts))
    })
    .await?;
    Ok(Json(json!({
        "chunk_id": cid,
        "session_id": sid,
        "deleted": true,
        "log_index": index,
        "redacted_parts": parts,
        "message": "chunk redacted: its sealed bytes are gone, its record stays in the session's Merkle log, so the log still verifies and the evidence verifier names this chunk as missing",
        "timestamp": now_rfc3339(),
    })))
}

/// Deletes the whole session: chunks, records, checkpoints and signed manifest. Refused
/// while the session records. An unknown session has nothing to delete (idempotent).
async fn delete_all(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    validate_sid(&sid)?;
    let e = engine.clone();
    let s = sid.clone();
    let deleted = blocking(move || {
        let row = match e.get(&s) {
            Ok(r) => r,
            Err(EngineError::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err),
        };
        if matches!(row.status, Status::Recording | Status::Paused | Status::Starting) {
            return Err(EngineError::Conflict(format!("session {s} is {}; stop it first", row.status.as_str())));
        }
        e.delete(&s).map(Some)
    })
    .await?;
    Ok(Json(json!({
        "session_id": sid,
        "deleted_chunks": deleted.unwrap_or(0),
        "message": match deleted {
            Some(_) => "session deleted with all its chunks, records, checkpoints and manifest",
            None => "no such session; nothing deleted",
        },
        "timestamp": now_rfc3339(),
    })))
}

async fn set_archived(engine: AppState, sid: String, archived: bool) -> ApiResult<()> {
    blocking(move || {
        engine.update(&sid, |r| {
            if archived && matches!(r.status, Status::Recording | Status::Paused | Status::Starting) {
                return Err(EngineError::Conflict(format!("session {} is recording; stop it before archiving", r.id)));
            }
            r.archived = archived;
            Ok(())
        })
    })
    .await?;
    Ok(())
}

/// Marks a session archived: it stays readable and verifiable but takes no more chunks.
async fn archive(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    set_archived(engine, sid.clone(), true).await?;
    Ok(Json(json!({"session_id": sid, "archived": true, "timestamp": now_rfc3339()})))
}

async fn restore(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    set_archived(engine, sid.clone(), false).await?;
    Ok(Json(json!({"session_id": sid, "restored": true, "timestamp": now_rfc3339()})))
}

/// Whether `POST /cleanup` may remove a session: an empty data session (no chunk ever
/// committed, so no evidence), not finalized, not archived, with no live pipeline, and
/// older than an hour (an upload may be about to arrive for a younger one).
fn disposable(row: &SessionRow, now: time::OffsetDateTime) -> bool {
    let old = parse_rfc3339(&row.created_at).is_some_and(|t| (now - t).whole_seconds() > EMPTY_SESSION_MAX_AGE_SECS);
    let pipeline_live = row.pipeline.as_ref().is_some_and(|p| p.state != "destroyed");
    row.kind == Kind::Data && row.chunk_count == 0 && !row.finalized && !row.archived && !pipeline_live && old
}

/// Removes empty, abandoned data sessions. The work is small, so it is done before the
/// answer; the contract's `cleanup_started` is kept and the result is reported with it.
async fn cleanup(State(engine): State<AppState>, Extension(last): Extension<LastCleanup>) -> ApiResult<Json<Value>> {
    let removed = blocking(move || {
        let now = time::OffsetDateTime::now_utc();
        let mut removed = Vec::new();
        for row in engine.list()? {
            if disposable(&row, now) {
                match engine.delete(&row.id) {
                    Ok(_) => removed.push(row.id),
                    Err(EngineError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    })
    .await?;
    let now = now_rfc3339();
    *last.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(now.clone());
    Ok(Json(json!({
        "cleanup_started": true,
        "removed_sessions": removed,
        "timestamp": now,
    })))
}

/// zstd round trip of a small sample: the compression stage works right now.
fn compression_works() -> bool {
    let sample: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    zstd::bulk::compress(&sample, 3).and_then(|z| zstd::bulk::decompress(&z, sample.len())).is_ok_and(|d| d == sample)
}

/// Healthy when the store answers, the data partition has `min_free_bytes` free and
/// compression round-trips; 503 otherwise.
async fn health(State(engine): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let e = engine.clone();
    let accessible = blocking(move || e.list().map(|_| ())).await.is_ok();
    let free = free_space(&engine.cfg.data_dir);
    let space_ok = free >= engine.cfg.min_free_bytes;
    let compression_ok = compression_works();
    let healthy = accessible && space_ok && compression_ok;
    let word = |ok: bool| if ok { "healthy" } else { "unhealthy" };
    let now = now_rfc3339();
    let body = json!({
        "status": word(healthy),
        "timestamp": now,
        "services": {
            "session_storage": {
                "status": word(accessible && space_ok),
                "storage": format!("redb:{}", engine.cfg.store_path().display()),
                "accessible": accessible,
                "available_space_bytes": free,
                "min_free_bytes": engine.cfg.min_free_bytes,
                "timestamp": now,
            },
            "chunk_store": {
                "status": word(healthy),
                "accessible": accessible,
                "space_healthy": space_ok,
                "compression_healthy": compression_ok,
                "available_space_bytes": free,
                "compression_algorithm": "zstd",
                "timestamp": now,
            },
        },
    });
    let status = if healthy { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Totals over every session row, and the sealed chunks actually present in the store.
async fn metrics(State(engine): State<AppState>, Extension(last): Extension<LastCleanup>) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    let (rows, (present_chunks, file_bytes)) =
        blocking(move || Ok((e.list()?, e.store().totals().map_err(EngineError::from)?))).await?;
    let free = free_space(&engine.cfg.data_dir);
    let total_chunks: u64 = rows.iter().map(|r| r.chunk_count).sum();
    let plain: u64 = rows.iter().map(|r| r.plain_bytes).sum();
    let stored: u64 = rows.iter().map(|r| r.stored_bytes).sum();
    let errors: u64 = rows.iter().map(|r| r.error_count).sum();
    let active = rows
        .iter()
        .filter(|r| {
            !r.archived
                && matches!(r.status, Status::Starting | Status::Recording | Status::Paused | Status::Processing)
        })
        .count();
    let archived = rows.iter().filter(|r| r.archived).count();
    let last_cleanup = last.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Json(json!({
        "session_storage": {
            "total_sessions": rows.len(),
            "active_sessions": active,
            "total_chunks": total_chunks,
            "total_size_bytes": stored,
            "available_space_bytes": free,
            "compression_ratio": ratio(plain, stored),
            "error_count": errors,
            "last_cleanup": last_cleanup,
            "store_file_bytes": file_bytes,
        },
        "chunk_store": {
            "total_sessions": rows.len(),
            "total_chunks": present_chunks,
            "total_size_bytes": plain,
            "compressed_size_bytes": stored,
            "compression_ratio": ratio(plain, stored),
            "active_sessions": active,
            "archived_sessions": archived,
        },
        "timestamp": now_rfc3339(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_match_the_engine_split() {
        assert_eq!(parts_for(0), 1);
        assert_eq!(parts_for(1), 1);
        assert_eq!(parts_for(MAX_PART), 1);
        assert_eq!(parts_for(MAX_PART + 1), 2);
        assert_eq!(parts_for(10 << 20), (10usize << 20).div_ceil(MAX_PART) as u64);
    }

    #[test]
    fn ratio_is_undefined_without_stored_bytes() {
        assert_eq!(ratio(10, 0), None);
        assert_eq!(ratio(10, 5), Some(2.0));
    }
}
