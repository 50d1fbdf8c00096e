//! The pipeline manager service (8083): a pipeline is the `PipelineRow` of a session, and
//! its state machine (names and transitions from the contract) is `transition`, a pure
//! function. Starting a pipeline starts this appliance's camera on the session; stopping
//! it stops the camera and seals the session's log.
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

use super::storage::{decode_chunk, ingest, validate_sid};
use super::{ApiError, ApiResult, AppState, LJson, LQuery, VERSION, blocking};
use crate::engine::{Engine, EngineError, Kind, PipelineRow, SessionRow, Status};
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

// ----- the state machine --------------------------------------------------------------------

/// Pipeline states; the names are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PState {
    Created,
    Starting,
    Active,
    Pausing,
    Paused,
    Stopping,
    Stopped,
    Error,
    Cleanup,
    Destroyed,
}

impl PState {
    pub const ALL: [PState; 10] = [
        PState::Created,
        PState::Starting,
        PState::Active,
        PState::Pausing,
        PState::Paused,
        PState::Stopping,
        PState::Stopped,
        PState::Error,
        PState::Cleanup,
        PState::Destroyed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PState::Created => "created",
            PState::Starting => "starting",
            PState::Active => "active",
            PState::Pausing => "pausing",
            PState::Paused => "paused",
            PState::Stopping => "stopping",
            PState::Stopped => "stopped",
            PState::Error => "error",
            PState::Cleanup => "cleanup",
            PState::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<PState> {
        PState::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Events of the contract's state table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PEvent {
    Start,
    StartComplete,
    Pause,
    PauseComplete,
    Resume,
    Stop,
    StopComplete,
    Recover,
    Cleanup,
    CleanupComplete,
    Destroy,
    Error,
}

/// The contract's transition table: `None` when `event` is not allowed in `from`.
pub fn transition(from: PState, event: PEvent) -> Option<PState> {
    use PEvent as E;
    use PState::*;
    match (from, event) {
        (Created, E::Start) => Some(Starting),
        (Starting, E::StartComplete) => Some(Active),
        (Active, E::Pause) => Some(Pausing),
        (Pausing, E::PauseComplete) => Some(Paused),
        (Paused, E::Resume) => Some(Active),
        (Active | Starting | Pausing | Paused, E::Stop) => Some(Stopping),
        (Stopping, E::StopComplete) => Some(Stopped),
        (Stopped | Error, E::Recover) => Some(Created),
        (Stopped | Error, E::Cleanup) => Some(Cleanup),
        (Cleanup, E::CleanupComplete) => Some(Destroyed),
        (Created | Stopped | Error, E::Destroy) => Some(Destroyed),
        (Destroyed, E::Error) => None,
        (_, E::Error) => Some(Error),
        _ => None,
    }
}

/// Applies events in order; `None` if any of them is not allowed.
pub fn run(from: PState, events: &[PEvent]) -> Option<PState> {
    events.iter().try_fold(from, |s, e| transition(s, *e))
}

/// The stored state; a name this build does not know is treated as an error state, the
/// one state every recovery path starts from.
fn state_of(p: &PipelineRow) -> PState {
    PState::parse(&p.state).unwrap_or(PState::Error)
}

/// The session's pipeline, unless it has none or it was destroyed (a destroyed
/// pipeline stays on the row only so `/metrics` can count it).
fn live(row: &SessionRow) -> Option<&PipelineRow> {
    row.pipeline.as_ref().filter(|p| state_of(p) != PState::Destroyed)
}

fn live_pipeline(engine: &Engine, sid: &str) -> Result<(SessionRow, PipelineRow), EngineError> {
    let row = engine.get(sid)?;
    let p = live(&row)
        .cloned()
        .ok_or_else(|| EngineError::NotFound { what: "pipeline for session", id: sid.to_owned() })?;
    Ok((row, p))
}

fn set_state(engine: &Engine, sid: &str, to: PState, error: Option<String>) -> Result<SessionRow, EngineError> {
    engine.update(sid, |r| {
        if let Some(p) = r.pipeline.as_mut() {
            p.state = to.as_str().into();
            if error.is_some() {
                p.error_message = error;
            }
        }
        Ok(())
    })
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
    let row = blocking(move || {
        let pipeline = PipelineRow {
            pipeline_id: short_id("pipeline"),
            state: PState::Created.as_str().into(),
            created_at: now_rfc3339(),
            started_at: None,
            stopped_at: None,
            error_message: None,
        };
        let exists = |sid: &str| EngineError::BadState(format!("Pipeline for session {sid} already exists"));
        match e.get(&s) {
            Err(EngineError::NotFound { .. }) => {
                let p = pipeline.clone();
                match e.create_session(Some(s.clone()), s.clone(), Kind::Camera, move |r| r.pipeline = Some(p)) {
                    Err(EngineError::Conflict(_)) => Err(exists(&s)),
                    other => other,
                }
            }
            Ok(_) => e.update(&s, |r| {
                if live(r).is_some() {
                    return Err(exists(&r.id));
                }
                if matches!(r.status, Status::Recording | Status::Paused | Status::Starting) {
                    return Err(EngineError::Conflict(format!(
                        "session {} is recording without a pipeline; stop it first",
                        r.id
                    )));
                }
                r.pipeline = Some(pipeline);
                Ok(())
            }),
            Err(err) => Err(err),
        }
    })
    .await?;
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
    let (row, p) = blocking(move || {
        let (_, p) = live_pipeline(&e, &s)?;
        let from = state_of(&p);
        let path: &[PEvent] = if matches!(from, PState::Stopped | PState::Error) {
            &[PEvent::Recover, PEvent::Start]
        } else {
            &[PEvent::Start]
        };
        if run(from, path).is_none() {
            return Err(EngineError::BadState(format!(
                "cannot start pipeline {} in state {}",
                p.pipeline_id,
                from.as_str()
            )));
        }
        match e.start_recording(&s) {
            // The engine records start_complete (state active) in the same row update
            // that marks the session recording.
            Ok(row) => Ok((row, p)),
            Err(err @ (EngineError::Conflict(_) | EngineError::BadState(_) | EngineError::NotFound { .. })) => Err(err),
            Err(err) => {
                let _ = set_state(&e, &s, PState::Error, Some(err.to_string()));
                Err(err)
            }
        }
    })
    .await?;
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
    let row = blocking(move || {
        let (_, p) = live_pipeline(&e, &s)?;
        let from = state_of(&p);
        if run(from, &[PEvent::Stop, PEvent::StopComplete]).is_none() {
            return Err(EngineError::BadState(format!(
                "cannot stop pipeline {} in state {}",
                p.pipeline_id,
                from.as_str()
            )));
        }
        e.stop_recording(&s)
    })
    .await?;
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
    let (_, p) = blocking(move || live_pipeline(&e, &s)).await?;
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
    let (row, p) = blocking(move || {
        let (_, p) = live_pipeline(&e, &s)?;
        let mut state = state_of(&p);
        if run(state, &[PEvent::Stop, PEvent::StopComplete]).is_some() {
            let row = e.get(&s)?;
            if matches!(row.status, Status::Recording | Status::Paused | Status::Starting) {
                e.stop_recording(&s)?;
            }
            state = PState::Stopped;
        }
        // Nothing is left to release once the camera has stopped, so the cleanup stage
        // completes at once; the path is still checked against the table.
        let end = run(state, &[PEvent::Cleanup, PEvent::CleanupComplete])
            .or_else(|| transition(state, PEvent::Destroy))
            .ok_or_else(|| {
                EngineError::BadState(format!("cannot destroy pipeline {} in state {}", p.pipeline_id, state.as_str()))
            })?;
        let now = now_rfc3339();
        let row = e.update(&s, |r| {
            if let Some(p) = r.pipeline.as_mut() {
                p.state = end.as_str().into();
                p.stopped_at.get_or_insert(now);
            }
            Ok(())
        })?;
        Ok((row, p))
    })
    .await?;
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

/// Pushes one client chunk through the real chunk path into the session's log. A camera
/// session that records is fed by the camera (409); see `storage::ensure_data_session`.
async fn push_chunk(
    State(engine): State<AppState>,
    Path(sid): Path<String>,
    LJson(body): LJson<PushBody>,
) -> ApiResult<Json<Value>> {
    validate_sid(&sid)?;
    let data = decode_chunk(&engine, "chunk_data", &body.chunk_data)?;
    let meta = body.chunk_metadata.unwrap_or_default();
    let chunk_id = match meta.get("chunk_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(ApiError::validation(&["body", "chunk_metadata", "chunk_id"], "chunk_id must be a string"));
        }
    };
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

#[cfg(test)]
mod tests {
    use super::PEvent as E;
    use super::PState::*;
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in PState::ALL {
            assert_eq!(PState::parse(s.as_str()), Some(s));
        }
        assert_eq!(PState::parse("running"), None);
    }

    #[test]
    fn the_contract_table() {
        let allowed = [
            (Created, E::Start, Starting),
            (Starting, E::StartComplete, Active),
            (Active, E::Pause, Pausing),
            (Pausing, E::PauseComplete, Paused),
            (Paused, E::Resume, Active),
            (Active, E::Stop, Stopping),
            (Starting, E::Stop, Stopping),
            (Pausing, E::Stop, Stopping),
            (Paused, E::Stop, Stopping),
            (Stopping, E::StopComplete, Stopped),
            (Stopped, E::Recover, Created),
            (Error, E::Recover, Created),
            (Stopped, E::Cleanup, Cleanup),
            (Error, E::Cleanup, Cleanup),
            (Cleanup, E::CleanupComplete, Destroyed),
            (Created, E::Destroy, Destroyed),
            (Stopped, E::Destroy, Destroyed),
            (Error, E::Destroy, Destroyed),
        ];
        for (from, ev, to) in allowed {
            assert_eq!(transition(from, ev), Some(to), "{from:?} --{ev:?}-->");
        }
        let events = [
            E::Start,
            E::StartComplete,
            E::Pause,
            E::PauseComplete,
            E::Resume,
            E::Stop,
            E::StopComplete,
            E::Recover,
            E::Cleanup,
            E::CleanupComplete,
            E::Destroy,
        ];
        // Everything not in the table (error aside) is refused.
        for from in PState::ALL {
            for ev in events {
                if !allowed.iter().any(|(f, e, _)| *f == from && *e == ev) {
                    assert_eq!(transition(from, ev), None, "{from:?} --{ev:?}--> must be refused");
                }
            }
        }
    }

    #[test]
    fn error_from_any_non_terminal_state() {
        for from in PState::ALL {
            let want = if from == Destroyed { None } else { Some(Error) };
            assert_eq!(transition(from, E::Error), want, "{from:?}");
        }
    }

    #[test]
    fn destroyed_is_terminal() {
        for ev in [E::Start, E::Recover, E::Destroy, E::Cleanup, E::Error] {
            assert_eq!(transition(Destroyed, ev), None);
        }
    }

    #[test]
    fn paths_used_by_the_routes() {
        assert_eq!(run(Created, &[E::Start, E::StartComplete]), Some(Active));
        assert_eq!(run(Stopped, &[E::Recover, E::Start]), Some(Starting));
        assert_eq!(run(Active, &[E::Stop, E::StopComplete, E::Cleanup, E::CleanupComplete]), Some(Destroyed));
        assert_eq!(run(Created, &[E::Stop]), None);
        assert_eq!(run(Active, &[E::Start]), None);
    }
}
