//! The pipeline manager service (8083): a pipeline is the `PipelineRow` of a session; its
//! state machine (names and transitions from the contract) and its transitions live in
//! `engine::pipeline`, under the session's lock. Starting a pipeline starts this
//! appliance's camera on the session; stopping it stops the camera and seals the log.
//! These routes parse, call the engine, and render.
//!
//! It owns the pipeline view only. It must not invent stage numbers: stage metrics are
//! the engine's real counters (engine-wide, since every session's chunks run through the
//! same stages), and it must not let recorded evidence vanish with a pipeline: destroying
//! a pipeline leaves its session, chunks and signed log in the store.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::storage::{decode_b64_chunk, ingest, validate_sid};
use super::{ApiError, ApiResult, AppState, LJson, LQuery, VERSION, blocking};
pub use crate::engine::pipeline::{PEvent, run, transition};
use crate::engine::pipeline::{PState, live, state_of};
use crate::engine::{Engine, Kind, PipelineRow, SessionRow};
use crate::metrics::STAGES;
use crate::util::{now_rfc3339, short_id};

const SERVICE: &str = "lucid-pipeline-manager";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/config", get(config))
        .route("/metrics", get(metrics))
        .route("/pipelines", post(create))
        .route("/pipelines/{sid}", axum::routing::delete(destroy))
        .route("/pipelines/{sid}/start", post(start))
        .route("/pipelines/{sid}/stop", post(stop))
        .route("/pipelines/{sid}/status", get(pipeline_status))
        .route("/pipelines/{sid}/chunks", post(push_chunk))
}

// ----- views ----------------------------------------------------------------------------

fn pipeline_config(engine: &Engine) -> Value {
    json!({
        // One camera: one recording at a time (uploads to data sessions are not limited).
        "max_concurrent_sessions": 1,
        "chunk_size_mb": engine.cfg.max_chunk_bytes as f64 / (1 << 20) as f64,
        "compression_level": engine.cfg.record.zstd_level,
    })
}

/// Threads running this pipeline's stages: the camera thread runs all six for the
/// session it records; no other thread works for a pipeline.
fn workers(engine: &Engine, sid: &str, p: &PipelineRow) -> usize {
    let running = engine.camera_session().is_some_and(|c| c == sid);
    usize::from(running && matches!(state_of(p), PState::Starting | PState::Active | PState::Pausing))
}

fn stages(engine: &Engine, sid: &str, p: &PipelineRow) -> Vec<Value> {
    let status = match state_of(p) {
        PState::Active => "active",
        PState::Error => "error",
        _ => "inactive",
    };
    let n = workers(engine, sid, p);
    STAGES
        .iter()
        .enumerate()
        .map(|(i, (name, kind))| {
            let s = engine.metrics.stage(i);
            json!({
                "name": name,
                "type": kind,
                "status": status,
                "worker_count": n,
                "metrics": {
                    "total_chunks_processed": s.total_chunks_processed,
                    "average_processing_time_ms": s.average_processing_time_ms,
                    "error_count": s.error_count,
                    "throughput_chunks_per_second": s.throughput_chunks_per_second,
                },
            })
        })
        .collect()
}

async fn rows(engine: &AppState) -> ApiResult<Vec<SessionRow>> {
    let e = engine.clone();
    blocking(move || e.list()).await
}

// ----- routes -----------------------------------------------------------------------------

async fn health(State(engine): State<AppState>) -> Response {
    match rows(&engine).await {
        Ok(rows) => Json(json!({
            "status": "healthy",
            "service": SERVICE,
            "version": VERSION,
            "active_pipelines": rows.iter().filter(|r| live(r).is_some()).count(),
            "timestamp": now_rfc3339(),
        }))
        .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unhealthy",
                "service": SERVICE,
                "version": VERSION,
                "error": "the store does not answer",
                "timestamp": now_rfc3339(),
            })),
        )
            .into_response(),
    }
}

async fn status(State(engine): State<AppState>) -> ApiResult<Json<Value>> {
    let rows = rows(&engine).await?;
    let mut active = Map::new();
    for r in &rows {
        if let Some(p) = live(r) {
            active.insert(
                r.id.clone(),
                json!({
                    "pipeline_id": p.pipeline_id,
                    "state": p.state,
                    "created_at": p.created_at,
                    "started_at": p.started_at,
                    "error_message": p.error_message,
                }),
            );
        }
    }
    Ok(Json(json!({
        "service": SERVICE,
        "status": "running",
        "total_pipelines": active.len(),
        "active_pipelines": active,
        "config": pipeline_config(&engine),
        "timestamp": now_rfc3339(),
    })))
}

#[derive(Debug, Deserialize)]
struct CreateQuery {
    session_id: Option<String>,
}

/// Creates the pipeline of a session, creating a camera session if there is none.
async fn create(State(engine): State<AppState>, LQuery(q): LQuery<CreateQuery>) -> ApiResult<Json<Value>> {
    let sid = q.session_id.unwrap_or_else(|| short_id("sess"));
    validate_sid(&sid)?;
    let e = engine.clone();
    let s = sid.clone();
    let row = blocking(move || e.pipeline_create(&s)).await?;
    let p = row.pipeline.as_ref().ok_or_else(|| ApiError::Internal("pipeline not stored".into()))?;
    Ok(Json(json!({
        "session_id": sid,
        "pipeline_id": p.pipeline_id,
        "status": "created",
        "message": format!("pipeline {} created for {} session {sid}", p.pipeline_id, match row.kind {
            Kind::Camera => "camera",
            Kind::Data => "data",
        }),
    })))
}

/// created -> starting -> active, with the camera recording the session (a stopped or
/// failed pipeline is recovered to created first, as the table allows). A refusal (the
/// camera is busy, the session holds uploaded data) leaves the pipeline as it was; a
/// failure to start puts it in the error state with the reason.
async fn start(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    let s = sid.clone();
    let (row, p) = blocking(move || e.pipeline_start(&s)).await?;
    Ok(Json(json!({
        "session_id": sid,
        "status": "started",
        "pipeline_id": p.pipeline_id,
        "state": row.pipeline.as_ref().map(|p| p.state.clone()),
        "message": format!("pipeline {} started: the camera is recording session {sid}", p.pipeline_id),
    })))
}

/// active/starting/pausing/paused -> stopping -> stopped: the camera stops and the
/// session's log is sealed (final checkpoint and signed manifest).
async fn stop(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    let s = sid.clone();
    let row = blocking(move || e.pipeline_stop(&s)).await?;
    Ok(Json(json!({
        "session_id": sid,
        "status": "stopped",
        "message": format!(
            "recording stopped: {} chunks, Merkle root {} signed in the session manifest",
            row.chunk_count,
            row.root.as_deref().unwrap_or("-")
        ),
    })))
}

async fn pipeline_status(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    let s = sid.clone();
    let (_, p) = blocking(move || e.pipeline(&s)).await?;
    Ok(Json(json!({
        "session_id": sid,
        "pipeline_id": p.pipeline_id,
        "state": p.state,
        "created_at": p.created_at,
        "started_at": p.started_at,
        "stopped_at": p.stopped_at,
        "error_message": p.error_message,
        "stages": stages(&engine, &sid, &p),
        "config": pipeline_config(&engine),
    })))
}

/// Tears the pipeline down: a running one is stopped first (its log sealed), then
/// stopped/error -> cleanup -> destroyed, or created -> destroyed. The session and its
/// chunks stay: recorded evidence does not vanish with a pipeline.
async fn destroy(State(engine): State<AppState>, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let e = engine.clone();
    let s = sid.clone();
    let (row, p) = blocking(move || e.pipeline_destroy(&s)).await?;
    Ok(Json(json!({
        "session_id": sid,
        "status": "cleaned_up",
        "message": format!(
            "pipeline {} destroyed; session {sid} and its {} chunks stay in the store (delete them through the storage or gateway service)",
            p.pipeline_id, row.chunk_count
        ),
    })))
}

#[derive(Debug, Deserialize)]
struct PushBody {
    chunk_data: String,
    #[serde(default)]
    chunk_metadata: Option<Map<String, Value>>,
}

/// What a valid push body becomes: the decoded bytes, the client's chunk id if it named
/// one, and the metadata to store.
type CheckedPush = (Vec<u8>, Option<String>, Map<String, Value>);

/// The push rules, pure (no engine, no IO), so the fuzzer runs exactly them: a canonical
/// session id, base64 that decodes to at most `max` bytes, and a `chunk_id` (a string or
/// a number, as old clients send it) the log accepts.
fn check_push(sid: &str, body: PushBody, max: usize) -> ApiResult<CheckedPush> {
    validate_sid(sid)?;
    let data = decode_b64_chunk(max, "chunk_data", &body.chunk_data)?;
    let meta = body.chunk_metadata.unwrap_or_default();
    let chunk_id = match meta.get("chunk_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(ApiError::validation(&["body", "chunk_metadata", "chunk_id"], "chunk_id must be a string"));
        }
    };
    if let Some(c) = &chunk_id {
        crate::engine::check_chunk_id(c)?;
    }
    Ok((data, chunk_id, meta))
}

/// The fuzz target `json_bodies` (fuzz/), pipeline push: outside bytes through the
/// handler's parse and rules. Panics if an accepted body decodes to more than the limit
/// or names a chunk id the log refuses.
#[doc(hidden)]
pub fn fuzz_push(bytes: &[u8]) {
    const MAX: usize = 4096;
    let Ok(body) = serde_json::from_slice::<PushBody>(bytes) else { return };
    let Ok((data, chunk_id, _meta)) = check_push("sess-fuzz", body, MAX) else { return };
    assert!(data.len() <= MAX, "{} bytes decoded", data.len());
    if let Some(c) = chunk_id {
        assert!(crate::engine::check_chunk_id(&c).is_ok(), "chunk id {c:?}");
    }
}

/// Pushes one client chunk through the real chunk path into the session's log. A camera
/// session that records is fed by the camera (409); see `storage::ensure_data_session`.
async fn push_chunk(
    State(engine): State<AppState>,
    Path(sid): Path<String>,
    LJson(body): LJson<PushBody>,
) -> ApiResult<Json<Value>> {
    let (data, chunk_id, meta) = check_push(&sid, body, engine.cfg.max_chunk_bytes)?;
    let (e, s, c) = (engine.clone(), sid.clone(), chunk_id.clone());
    let stored = blocking(move || ingest(&e, &s, c.as_deref(), &data, meta)).await?;
    let a = &stored.appended;
    Ok(Json(json!({
        "session_id": sid,
        "status": "processed",
        "chunk_id": chunk_id.unwrap_or_else(|| a.first_index.to_string()),
        "log_index": a.first_index,
        "message": format!(
            "chunk committed at log index {} ({} bytes, {} sealed{})",
            a.first_index,
            a.plain_len,
            a.stored_len,
            if a.compressed { ", zstd" } else { "" }
        ),
    })))
}

async fn config(State(engine): State<AppState>) -> Json<Value> {
    let c = &engine.cfg;
    let mut p = pipeline_config(&engine);
    // The chunk path has no timeout: a chunk is done when its commit is durable.
    p["timeout_seconds"] = Value::Null;
    Json(json!({
        "service": {
            "name": SERVICE,
            "version": VERSION,
            "debug": cfg!(debug_assertions),
            "log_level": std::env::var("LUCID_LOG").unwrap_or_else(|_| "info".into()),
        },
        "pipeline": p,
        "performance": {
            "enable_compression": true,
            "enable_encryption": true,
            "enable_deduplication": false,
            // Sessions are processed in parallel; the chunks of one session in log order.
            "parallel_processing": true,
        },
        "stages": {
            "recording": {"type": "recorder", "source": c.source, "width": c.video.width, "height": c.video.height, "fps": c.video.fps, "bitrate_bps": c.video.bitrate_bps},
            "chunk_generation": {"type": "chunk_generator", "chunk_target_ms": c.record.chunk_target_ms, "keyframe_interval_ms": c.video.keyframe_interval_ms, "max_part_bytes": crate::engine::MAX_PART},
            "compression": {"type": "compressor", "algorithm": "zstd", "level": c.record.zstd_level, "kept_when_saving_at_least_pct": c.record.compress_min_saving_pct},
            "encryption": {"type": "encryptor", "cipher_for_new_sessions": lucid_core::seal::Cipher::preferred_for_this_cpu().name()},
            "merkle_building": {"type": "merkle_builder", "hashing": "RFC 9162 over SHA-256", "checkpoint_every_chunks": c.record.checkpoint_every_chunks, "checkpoint_every_secs": c.record.checkpoint_every_secs},
            "storage": {"type": "storage", "backend": "redb", "durability": "fsync per chunk commit"},
        },
        "storage": {
            "data_dir": c.data_dir,
            "min_free_bytes": c.min_free_bytes,
            "max_chunk_bytes": c.max_chunk_bytes,
        },
    }))
}

async fn metrics(State(engine): State<AppState>) -> ApiResult<Json<Value>> {
    let rows = rows(&engine).await?;
    let mut states: BTreeMap<&str, u64> = PState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let mut active = 0;
    let mut total_workers = 0;
    for r in &rows {
        if let Some(p) = &r.pipeline {
            *states.entry(state_of(p).as_str()).or_default() += 1;
            if live(r).is_some() {
                active += 1;
                total_workers += workers(&engine, &r.id, p);
            }
        }
    }
    let mut stage_metrics = Map::new();
    for (i, (name, kind)) in STAGES.iter().enumerate() {
        let s = engine.metrics.stage(i);
        stage_metrics.insert(
            format!("{name}_{kind}"),
            json!({
                "total_chunks_processed": s.total_chunks_processed,
                "total_errors": s.error_count,
                "average_processing_time_ms": s.average_processing_time_ms,
                "throughput_chunks_per_second": s.throughput_chunks_per_second,
            }),
        );
    }
    Ok(Json(json!({
        "active_pipelines": active,
        "total_workers": total_workers,
        "pipeline_states": states,
        "stage_metrics": stage_metrics,
    })))
}
