//! The session recorder service (8084): recordings are this appliance's camera sessions,
//! started and stopped here; raw client bytes can also be cut into data chunks; and the
//! compression counters of the chunk path are shown and reset.
//!
//! It owns the recording view of a session (status vocabulary `idle`, `starting`,
//! `recording`, `stopping`, `stopped`, `error`) and the cutting of raw bodies into chunks.
//! It must not report a number it did not measure: a chunk's `quality_score` is the
//! client's own score when one was given and `null` otherwise, and it must not delete a
//! session that is recording.

use std::sync::atomic::Ordering::Relaxed;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::page::Page;
use super::storage::{ClientChunk, ingest, ratio, storage_path, validate_sid};
use super::{ApiError, ApiResult, AppState, LJson, VERSION, blocking};
use crate::engine::{Engine, EngineError, Kind, SessionRow, Status};
use crate::util::{now_rfc3339, short_id};

/// Most chunk entries a stop answer lists; `final_chunks` gives the full count.
const STOP_CHUNKS_MAX: usize = 1000;

const SERVICE: &str = "lucid-session-recorder";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/recordings", get(list))
        .route("/recordings/start", post(start))
        .route("/recordings/{sid}", get(get_recording).delete(delete_recording))
        .route("/recordings/{sid}/stop", post(stop))
        .route("/chunks/{sid}", get(chunk_info))
        .route("/chunks/{sid}/process", post(process))
        .route("/compression/stats", get(compression_stats))
        .route("/compression/reset", post(compression_reset))
}

// ----- views ----------------------------------------------------------------------------

/// The recorder's word for a session's status. A paused session is `idle`: it stays
/// open, but the camera is not recording it.
pub fn recording_status(s: Status) -> &'static str {
    match s {
        Status::Created | Status::Processing | Status::Paused => "idle",
        Status::Starting => "starting",
        Status::Recording => "recording",
        Status::Stopped | Status::Completed | Status::Deleted => "stopped",
        Status::Failed => "error",
    }
}

fn is_recording(r: &SessionRow) -> bool {
    crate::engine::is_live(r.status)
}

fn chunk_statistics(r: &SessionRow) -> Value {
    json!({
        "total_chunks": r.chunk_count,
        "total_size_bytes": r.stored_bytes,
        "plain_size_bytes": r.plain_bytes,
        "compressed_chunks": r.compressed_chunks,
        "average_compression_ratio": ratio(r.plain_bytes, r.stored_bytes),
        "average_chunk_size_bytes": (r.chunk_count > 0).then(|| r.stored_bytes as f64 / r.chunk_count as f64),
        "frame_count": r.frame_count,
        "dropped_frames": r.dropped_frames,
        "media_duration_seconds": r.media_us as f64 / 1e6,
    })
}

fn recording_view(engine: &Engine, r: &SessionRow) -> Value {
    json!({
        "session_id": r.id,
        "owner_address": r.owner_address,
        "status": recording_status(r.status),
        "started_at": r.started_at,
        "stopped_at": r.stopped_at,
        "output_path": storage_path(engine, &r.id, None),
        "chunks_created": r.chunk_count,
        "total_chunk_size": r.stored_bytes,
        "chunk_statistics": chunk_statistics(r),
        "last_error": r.last_error,
    })
}

/// Per-chunk facts for the recorder's answers: size is the sealed size in the store,
/// the ratio is plaintext over sealed bytes.
fn chunk_entry(c: &ClientChunk) -> Value {
    json!({
        "chunk_id": c.id(),
        "size_bytes": c.sealed_len(),
        "original_size": c.plain_len(),
        "compression_ratio": ratio(c.plain_len(), c.sealed_len()),
        "quality_score": c.quality(),
    })
}

fn compression_body(engine: &Engine) -> Value {
    let m = &engine.metrics;
    let compressions = m.compressions.load(Relaxed);
    let decompressions = m.decompressions.load(Relaxed);
    let time_ms = m.compress_ns.load(Relaxed) as f64 / 1e6;
    let bytes_in = m.bytes_compressed_in.load(Relaxed);
    let bytes_out = m.bytes_compressed_out.load(Relaxed);
    json!({
        "total_compressions": compressions,
        "total_decompressions": decompressions,
        // Time spent in zstd, both directions.
        "total_time_ms": time_ms,
        "average_compression_time_ms": if compressions + decompressions > 0 { time_ms / (compressions + decompressions) as f64 } else { 0.0 },
        "total_bytes_compressed": bytes_in,
        "total_bytes_decompressed": m.bytes_decompressed.load(Relaxed),
        // Input over output of every compression attempt (a chunk kept uncompressed
        // counts as 1:1, which is what it cost in the store).
        "average_compression_ratio": ratio(bytes_in, bytes_out),
        "default_level": engine.cfg.record.zstd_level,
    })
}

async fn rows(engine: &AppState) -> ApiResult<Vec<SessionRow>> {
    let e = engine.clone();
    blocking(move || e.list()).await
}

/// The camera session `sid`, or 404 (a data session is not a recording).
fn recording(engine: &Engine, sid: &str) -> Result<SessionRow, EngineError> {
    let row = engine.get(sid)?;
    if row.kind != Kind::Camera {
        return Err(EngineError::NotFound { what: "recording", id: sid.to_owned() });
    }
    Ok(row)
}

// ----- routes -----------------------------------------------------------------------------

async fn health(State(engine): State<AppState>) -> Response {
    let m = &engine.metrics;
    match rows(&engine).await {
        Ok(rows) => Json(json!({
            "status": "healthy",
            "service": SERVICE,
            "version": VERSION,
            "active_recordings": rows.iter().filter(|r| r.kind == Kind::Camera && is_recording(r)).count(),
            "total_sessions_with_chunks": rows.iter().filter(|r| r.chunk_count > 0).count(),
            "compression_stats": {
                "total_compressions": m.compressions.load(Relaxed),
                "total_decompressions": m.decompressions.load(Relaxed),
            },
            "camera": {
                "running": engine.camera_state.running.load(Relaxed),
                "session_id": engine.camera_session(),
                "frames": engine.camera_state.frames.load(Relaxed),
                "dropped_frames": engine.camera_state.dropped.load(Relaxed),
                "last_error": engine.camera_state.last_error.lock().map(|g| g.clone()).unwrap_or(None),
            },
            "timestamp": now_rfc3339(),
        }))
        .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy", "service": SERVICE, "error": "the store does not answer", "timestamp": now_rfc3339()})),
        )
            .into_response(),
    }
}

async fn status(State(engine): State<AppState>) -> ApiResult<Json<Value>> {
    let rows = rows(&engine).await?;
    let cams: Vec<&SessionRow> = rows.iter().filter(|r| r.kind == Kind::Camera).collect();
    let active: Vec<Value> = cams
        .iter()
        .filter(|r| is_recording(r))
        .map(|r| {
            json!({
                "session_id": r.id,
                "owner_address": r.owner_address,
                "status": recording_status(r.status),
                "started_at": r.started_at,
                "chunks_created": r.chunk_count,
                "total_chunk_size": r.stored_bytes,
            })
        })
        .collect();
    let chunks: u64 = cams.iter().map(|r| r.chunk_count).sum();
    let stored: u64 = cams.iter().map(|r| r.stored_bytes).sum();
    let plain: u64 = cams.iter().map(|r| r.plain_bytes).sum();
    Ok(Json(json!({
        "service": SERVICE,
        "status": "running",
        "active_recordings": active,
        "total_recordings": cams.len(),
        "chunk_statistics": {
            "total_chunks": chunks,
            "total_size_bytes": stored,
            "plain_size_bytes": plain,
            "average_compression_ratio": ratio(plain, stored),
            "average_chunk_size_bytes": (chunks > 0).then(|| stored as f64 / chunks as f64),
        },
        "compression_statistics": compression_body(&engine),
        "timestamp": now_rfc3339(),
    })))
}

#[derive(Debug, Deserialize)]
struct StartBody {
    #[serde(default)]
    session_id: Option<String>,
    owner_address: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// What a valid start body becomes: the session named (a new id is drawn when none is),
/// the trimmed owner and the metadata to merge.
struct CheckedStart {
    session_id: Option<String>,
    owner: String,
    metadata: Map<String, Value>,
}

/// The start rules, pure (no engine, no IO, no random id), so the fuzzer runs exactly
/// them: an owner of 1..=256 bytes once trimmed, metadata typed as the gateway's
/// SessionResponse types it (these sessions are listed there), a canonical session id.
fn check_start(body: StartBody) -> ApiResult<CheckedStart> {
    let owner = body.owner_address.trim().to_owned();
    if owner.is_empty() || owner.len() > 256 {
        return Err(ApiError::validation(&["body", "owner_address"], "owner_address must be 1..=256 characters"));
    }
    if let Some(m) = &body.metadata {
        let problems = super::gateway::metadata_problems(m, "metadata");
        if !problems.is_empty() {
            return Err(ApiError::Validation(problems));
        }
    }
    if let Some(sid) = &body.session_id {
        validate_sid(sid)?;
    }
    Ok(CheckedStart { session_id: body.session_id, owner, metadata: body.metadata.unwrap_or_default() })
}

/// The fuzz target `json_bodies` (fuzz/), recorder start: outside bytes through the
/// handler's parse and rules. Panics if an accepted body has an empty, padded or
/// oversized owner, a session id that is not canonical, or tags that are not strings.
#[doc(hidden)]
pub fn fuzz_start(bytes: &[u8]) {
    let Ok(body) = serde_json::from_slice::<StartBody>(bytes) else { return };
    let Ok(s) = check_start(body) else { return };
    assert!((1..=256).contains(&s.owner.len()) && s.owner.trim() == s.owner, "owner {:?}", s.owner);
    if let Some(sid) = &s.session_id {
        assert!(lucid_core::chunk::validate_session_id(sid).is_ok(), "session id {sid:?}");
    }
    if let Some(tags) = s.metadata.get("tags") {
        assert!(tags.as_array().is_some_and(|t| t.iter().all(Value::is_string)), "tags {tags}");
    }
}

/// Starts the camera on a session (created as a camera session if new). 409 when the
/// session is already recording, when the camera is busy with another session, or when
/// the session belongs to another owner.
async fn start(State(engine): State<AppState>, LJson(body): LJson<StartBody>) -> ApiResult<Json<Value>> {
    let CheckedStart { session_id, owner, metadata } = check_start(body)?;
    let sid = session_id.unwrap_or_else(|| short_id("sess"));
    let e = engine.clone();
    let s = sid.clone();
    let row = blocking(move || {
        let mut created = false;
        match e.get(&s) {
            Err(EngineError::NotFound { .. }) => {
                let (o, m) = (owner.clone(), metadata.clone());
                match e.create_session(Some(s.clone()), s.clone(), Kind::Camera, move |r| {
                    r.owner_address = Some(o);
                    r.metadata = Value::Object(m);
                }) {
                    Ok(_) => created = true,
                    Err(EngineError::Exists { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(err),
            Ok(_) => {}
        }
        let started = start_camera(&e, &s, &owner, metadata);
        if started.is_err() && created {
            // Nothing was recorded into the session this request created: remove it so
            // a refused start leaves nothing behind.
            if let Err(err) = e.delete(&s) {
                tracing::warn!(session = %s, error = %err, "could not remove the session of a refused start");
            }
        }
        started
    })
    .await?;
    Ok(Json(json!({
        "session_id": sid,
        "status": "starting",
        "started_at": row.started_at,
        "output_path": storage_path(&engine, &sid, None),
    })))
}

/// Checks the session may be recorded by `owner`, records owner and metadata, starts the
/// camera.
fn start_camera(
    e: &std::sync::Arc<Engine>,
    s: &str,
    owner: &str,
    metadata: Map<String, Value>,
) -> Result<SessionRow, EngineError> {
    e.update(s, |r| {
        if r.kind != Kind::Camera {
            return Err(EngineError::BadState(format!("session {s} holds uploaded data, not camera video")));
        }
        if is_recording(r) {
            return Err(EngineError::Conflict(format!("session {s} is already recording")));
        }
        match &r.owner_address {
            Some(o) if o != owner => {
                return Err(EngineError::Conflict(format!("session {s} belongs to another owner")));
            }
            _ => r.owner_address = Some(owner.to_owned()),
        }
        if !metadata.is_empty() {
            let mut m = r.metadata.as_object().cloned().unwrap_or_default();
            m.extend(metadata);
            r.metadata = Value::Object(m);
        }
        Ok(())
    })?;
    e.start_recording(s)
}

/// Stops the camera; the session's log is sealed (final checkpoint, signed manifest).
async fn stop(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    let s = sid.clone();
    let (row, chunks) = blocking(move || {
        recording(&e, &s)?;
        let row = e.stop_recording(&s)?;
        // A camera chunk is one record: the first STOP_CHUNKS_MAX of them, read as a
        // range, so the answer does not grow with the recording.
        let views = e.records_from(&s, 0, STOP_CHUNKS_MAX)?;
        let chunks: Vec<ClientChunk> = views
            .into_iter()
            .map(|v| ClientChunk {
                first: v.record.index,
                views: vec![v],
                meta: None,
                client_id: None,
                leaf: String::new(),
            })
            .collect();
        Ok((row, chunks))
    })
    .await?;
    Ok(Json(json!({
        "session_id": sid,
        "status": "stopped",
        "stopped_at": row.stopped_at,
        "output_path": storage_path(&engine, &sid, None),
        "final_chunks": row.chunk_count,
        "merkle_root": row.root,
        "chunk_metadata": chunks.iter().map(chunk_entry).collect::<Vec<_>>(),
        "chunk_metadata_truncated": row.chunk_count > chunks.len() as u64,
    })))
}

async fn get_recording(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    let row = blocking(move || recording(&e, &sid)).await?;
    Ok(Json(recording_view(&engine, &row)))
}

/// Recordings, oldest first, one page at a time (`limit` 1..=1000, default 100).
async fn list(State(engine): State<AppState>, page: Page) -> ApiResult<Json<Value>> {
    let rows = rows(&engine).await?;
    let cams: Vec<&SessionRow> = rows.iter().filter(|r| r.kind == Kind::Camera).collect();
    let recs: Vec<Value> = cams.iter().skip(page.offset).take(page.limit).map(|r| recording_view(&engine, r)).collect();
    let more = page.offset + recs.len() < cams.len();
    Ok(Json(json!({
        "total_recordings": cams.len(),
        "recordings": recs,
        "pagination": page.render(recs.len(), more),
    })))
}

/// Deletes a recording and everything it holds. Refused (409) while it records.
async fn delete_recording(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    let s = sid.clone();
    let deleted = blocking(move || {
        let row = recording(&e, &s)?;
        if is_recording(&row) {
            return Err(EngineError::Conflict(format!("session {s} is recording; stop it first")));
        }
        e.delete(&s)
    })
    .await?;
    Ok(Json(json!({
        "session_id": sid,
        "status": "cleaned_up",
        "deleted_chunks": deleted,
        "message": format!("recording {sid} deleted with its {deleted} chunks, records, checkpoints and manifest"),
    })))
}

/// Chunk facts of any session. The appliance never holds a partial chunk of an upload in
/// memory (every request is committed before it is answered), so `current_chunk_size`
/// is 0 except while the camera records, when the open chunk lives inside the camera
/// thread and is not observable here (null).
async fn chunk_info(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    // Only uploaded chunks carry a client's quality score; the row counts them as they
    // commit, so this is one lookup however long the session is.
    let row = blocking(move || e.get(&sid)).await?;
    let quality = row.counters.quality();
    let cfg = &engine.cfg;
    Ok(Json(json!({
        "session_id": row.id,
        "total_chunks": row.chunk_count,
        "total_size_bytes": row.stored_bytes,
        "average_compression_ratio": ratio(row.plain_bytes, row.stored_bytes),
        "average_quality_score": quality,
        "current_chunk_size": if is_recording(&row) { Value::Null } else { json!(0) },
        "chunk_size_limit_mb": cfg.max_chunk_bytes as f64 / (1 << 20) as f64,
        "compression_enabled": true,
        "compression_level": cfg.record.zstd_level,
    })))
}

/// Re-labels an engine error with how far a multi-chunk request got.
fn after(done: usize, e: EngineError) -> EngineError {
    if done == 0 {
        return e;
    }
    let ctx = |m: String| format!("{m} (after {done} chunks of this request were committed)");
    match e {
        EngineError::Conflict(m) => EngineError::Conflict(ctx(m)),
        EngineError::BadState(m) => EngineError::BadState(ctx(m)),
        EngineError::BadInput(m) => EngineError::BadInput(ctx(m)),
        EngineError::Full(m) => EngineError::Full(ctx(m)),
        EngineError::Unavailable(m) => EngineError::Unavailable(ctx(m)),
        other => other,
    }
}

/// Cuts a raw body into data chunks of at most `max_chunk_bytes` and commits each through
/// the chunk path, in order. Chunks committed before a failure stay committed.
async fn process(
    State(engine): State<AppState>,
    Path(sid): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("request body too large".into())
        } else {
            ApiError::bad(r.body_text())
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::bad("empty body: nothing to process"));
    }
    validate_sid(&sid)?;
    let e = engine.clone();
    let s = sid.clone();
    let size = engine.cfg.max_chunk_bytes;
    let committed = blocking(move || {
        let mut out = Vec::new();
        let mut offset = 0usize;
        for piece in body.chunks(size) {
            let mut meta = Map::new();
            meta.insert("source".into(), json!("recorder"));
            meta.insert("offset".into(), json!(offset));
            let stored = ingest(&e, &s, None, piece, meta).map_err(|err| after(out.len(), err))?;
            out.push(stored.appended);
            offset += piece.len();
        }
        Ok(out)
    })
    .await?;
    let processed: u64 = committed.iter().map(|a| a.plain_len).sum();
    let meta: Vec<Value> = committed
        .iter()
        .map(|a| {
            json!({
                "chunk_id": a.first_index.to_string(),
                "size_bytes": a.stored_len,
                "original_size": a.plain_len,
                "compression_ratio": ratio(a.plain_len, a.stored_len),
                "quality_score": null,
            })
        })
        .collect();
    Ok(Json(json!({
        "session_id": sid,
        "processed_bytes": processed,
        "completed_chunks": committed.len(),
        "chunk_metadata": meta,
    })))
}

async fn compression_stats(State(engine): State<AppState>) -> Json<Value> {
    Json(compression_body(&engine))
}

/// Zeroes the compression counters (compressions, decompressions, bytes, time). The
/// stage counters and the chunk histogram are untouched.
async fn compression_reset(State(engine): State<AppState>) -> Json<Value> {
    let m = &engine.metrics;
    for c in [
        &m.compressions,
        &m.decompressions,
        &m.bytes_compressed_in,
        &m.bytes_compressed_out,
        &m.bytes_decompressed,
        &m.compress_ns,
    ] {
        c.store(0, Relaxed);
    }
    Json(json!({"message": "compression statistics reset", "timestamp": now_rfc3339()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words_are_the_contract_vocabulary() {
        let allowed = ["idle", "starting", "recording", "stopping", "stopped", "error"];
        for s in Status::ALL {
            assert!(allowed.contains(&recording_status(s)), "{s:?}");
        }
        assert_eq!(recording_status(Status::Recording), "recording");
        assert_eq!(recording_status(Status::Stopped), "stopped");
    }
}
