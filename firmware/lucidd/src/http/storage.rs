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

use super::page::Page;
use super::{ApiError, ApiResult, AppState, LJson, blocking, free_space};
use crate::engine::{Appended, ChunkView, Engine, EngineError, Kind, SessionRow, Status};
use crate::util::{hex, now_rfc3339, parse_rfc3339};

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
/// `max` (413, the daemon's `max_chunk_bytes`), checking the encoded length first so an
/// oversized chunk is never decoded. Pure, for the body checks and the fuzzer.
pub(super) fn decode_b64_chunk(max: usize, field: &str, b64: &str) -> ApiResult<Vec<u8>> {
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

/// The data session uploads go to; the rules are `Engine::ensure_data_session`'s.
pub(super) fn ensure_data_session(engine: &Engine, sid: &str) -> Result<SessionRow, EngineError> {
    validate_sid(sid)?;
    engine.ensure_data_session(sid)
}

/// One committed upload: what the engine did and the metadata stored with it.
pub(super) struct Stored {
    pub appended: Appended,
    pub meta: Value,
}

/// The upload path shared by the four upload routes: `Engine::ingest` (data-session
/// rules, then the chunk path, under the session's transition lock).
pub(super) fn ingest(
    engine: &Engine,
    sid: &str,
    chunk_id: Option<&str>,
    data: &[u8],
    meta: Map<String, Value>,
) -> Result<Stored, EngineError> {
    validate_sid(sid)?;
    let i = engine.ingest(sid, chunk_id, data, meta)?;
    Ok(Stored { appended: i.appended, meta: i.meta })
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

/// At most `limit` client chunks of a session, the first starting at log index `from` or
/// after it, and the index after the last part listed (where the next page starts). A
/// chunk larger than one sealed part spans several consecutive records (its metadata
/// says how many); a page never starts inside one, so `from` on a continuation part moves
/// on to the next chunk. Camera chunks are one part each. A redacted chunk has lost its
/// metadata, so each of its parts is listed. Range reads of about `limit` records
/// (`Engine::records_from`) and a few point lookups: the cost does not grow with the
/// session.
pub(super) fn client_chunks_page(
    engine: &Engine,
    sid: &str,
    from: u64,
    limit: usize,
) -> Result<(Vec<ClientChunk>, u64), EngineError> {
    let mut pos = from;
    // Parts per chunk are bounded (max_chunk_bytes / MAX_PART), so this loop is short.
    while pos > 0 && is_continuation(engine, sid, pos)? {
        pos += 1;
    }
    let mut buf = std::collections::VecDeque::new();
    let mut out = Vec::new();
    // `buf` is refilled only when empty, so `pos` is always just past the last record
    // taken from it.
    let mut take = |pos: &mut u64, want: usize| -> Result<Option<ChunkView>, EngineError> {
        if buf.is_empty() {
            buf.extend(engine.records_from(sid, *pos, want.max(1))?);
        }
        let v = buf.pop_front();
        if let Some(v) = &v {
            *pos = v.record.index + 1;
        }
        Ok(v)
    };
    while out.len() < limit {
        let Some(first) = take(&mut pos, limit - out.len())? else { break };
        let index = first.record.index;
        let meta = engine.chunk_meta(sid, index)?;
        let parts = meta.as_ref().and_then(|m| m.get("parts")).and_then(Value::as_u64).unwrap_or(1).max(1);
        let client_id = first.client_id.clone();
        let mut group = vec![first];
        while (group.len() as u64) < parts {
            match take(&mut pos, (parts - group.len() as u64) as usize)? {
                Some(v) => group.push(v),
                None => break,
            }
        }
        let leaf = hex(&lucid_core::merkle::leaf_hash(&group[0].record.encode()));
        out.push(ClientChunk { first: index, views: group, meta, client_id, leaf });
    }
    Ok((out, pos))
}

/// Whether the record at `index` continues the upload of the one before it (both parts
/// carry the same `upload_id`, which the engine draws per upload).
fn is_continuation(engine: &Engine, sid: &str, index: u64) -> Result<bool, EngineError> {
    let Some(prev) = index.checked_sub(1) else { return Ok(false) };
    let upload = |i| -> Result<Option<Value>, EngineError> {
        Ok(engine.chunk_meta(sid, i)?.and_then(|m| m.get("upload_id").cloned()))
    };
    Ok(match (upload(prev)?, upload(index)?) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    })
}

/// Resolves a chunk named by client id or index to the first index of a client chunk;
/// an index inside a multi-part chunk (a continuation part) is not a chunk of its own.
pub(super) fn resolve_head(engine: &Engine, sid: &str, cid: &str) -> Result<u64, EngineError> {
    let index = engine.resolve_chunk(sid, cid)?;
    if is_continuation(engine, sid, index)? {
        return Err(EngineError::NotFound { what: "chunk", id: cid.to_owned() });
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

/// What a valid upload body becomes: the decoded bytes, their client id and the metadata
/// to store with them.
struct CheckedUpload {
    data: Vec<u8>,
    chunk_id: String,
    meta: Map<String, Value>,
}

/// The upload rules, pure (no engine, no IO), so the fuzzer runs exactly them: a
/// canonical session id, base64 that decodes to at most `max` bytes, a chunk id the log
/// accepts, and a `hash_sha256`, when given, that is the data's.
fn check_upload(sid: &str, body: UploadBody, max: usize) -> ApiResult<CheckedUpload> {
    validate_sid(sid)?;
    let data = decode_b64_chunk(max, "chunk_data", &body.chunk_data)?;
    let md = body.chunk_metadata;
    if let Some(want) = &md.hash_sha256 {
        let got = hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
        if !want.trim().eq_ignore_ascii_case(&got) {
            return Err(ApiError::bad(format!("hash_sha256 does not match the chunk data (computed {got})")));
        }
    }
    crate::engine::check_chunk_id(&md.chunk_id)?;
    let chunk_id = md.chunk_id.clone();
    let meta = match serde_json::to_value(&md) {
        Ok(Value::Object(m)) => m,
        _ => return Err(ApiError::Internal("chunk metadata did not serialize to an object".into())),
    };
    Ok(CheckedUpload { data, chunk_id, meta })
}

/// The fuzz target `json_bodies` (fuzz/), storage upload: outside bytes through the
/// handler's parse and rules. Panics if an accepted body breaks a promise: more than the
/// limit decoded, a `hash_sha256` that is not the data's, a chunk id the log refuses, or
/// stored metadata that lost the chunk id.
#[doc(hidden)]
pub fn fuzz_upload(bytes: &[u8]) {
    const MAX: usize = 4096;
    let Ok(body) = serde_json::from_slice::<UploadBody>(bytes) else { return };
    let want = body.chunk_metadata.hash_sha256.clone();
    let Ok(u) = check_upload("sess-fuzz", body, MAX) else { return };
    assert!(u.data.len() <= MAX, "{} bytes decoded", u.data.len());
    if let Some(want) = want {
        let got = hex(ring::digest::digest(&ring::digest::SHA256, &u.data).as_ref());
        assert!(want.trim().eq_ignore_ascii_case(&got), "hash {want} accepted for {got}");
    }
    assert!(crate::engine::check_chunk_id(&u.chunk_id).is_ok(), "chunk id {:?}", u.chunk_id);
    assert_eq!(u.meta.get("chunk_id").and_then(Value::as_str), Some(u.chunk_id.as_str()), "{:?}", u.meta);
}

/// Stores one client chunk. A given `hash_sha256` must be the SHA-256 of the decoded
/// data (clients rely on the check); the chunk is acknowledged after its commit.
async fn upload(
    State(engine): State<AppState>,
    Path(sid): Path<String>,
    LJson(body): LJson<UploadBody>,
) -> ApiResult<Json<Value>> {
    let CheckedUpload { data, chunk_id, meta } = check_upload(&sid, body, engine.cfg.max_chunk_bytes)?;
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

/// Chunks of a session in log order, one page. `offset` is a position in the session's
/// log (`sequence_number`), the page starting at the first chunk there or after it; for
/// a log of one-part chunks (every camera session, every upload up to a sealed part) that
/// is the number of chunks before the page. `next_offset` says where the next page
/// starts (past every part of the last chunk listed) and `total` counts the log's
/// records. The client's own `chunk_index` stays in its metadata. An unknown session
/// lists no chunks (the contract names no 404 here). Each page is a range read, whatever
/// the session's length.
async fn list(
    State(engine): State<AppState>,
    Path(sid): Path<String>,
    page: Page<100, 1000>,
) -> ApiResult<Json<Value>> {
    let (limit, offset) = (page.limit, page.offset);
    let e = engine.clone();
    let s = sid.clone();
    let (chunks, next, total) = blocking(move || match e.get(&s) {
        Ok(row) => {
            // An offset past the log reads nothing (and any usize offset fits a u64).
            let (chunks, next) = client_chunks_page(&e, &s, offset as u64, limit)?;
            Ok((chunks, next.max(offset as u64), row.chunk_count))
        }
        Err(EngineError::NotFound { .. }) => Ok((Vec::new(), offset as u64, 0)),
        Err(err) => Err(err),
    })
    .await?;
    let items: Vec<Value> = chunks
        .iter()
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
        "pagination": {"limit": limit, "offset": offset, "count": count, "total": total,
                       "has_next": next < total, "next_offset": (next < total).then_some(next)},
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
        if crate::engine::is_live(row.status) {
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
            if archived && crate::engine::is_live(r.status) {
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
    use crate::engine::{MAX_PART, parts_for};

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
