//! The API gateway (8087): the Lucid session API — sessions, their chunks, pipeline view
//! and statistics — plus `/health` and the Prometheus `/metrics`.
//!
//! Owns the mapping between `SessionRow` and the contract's SessionResponse/ChunkResponse
//! shapes (in the types the original gateway's models publish, whatever older rows hold),
//! and request validation of CreateSessionRequest. It must not echo a secret (every
//! `password` inside the legacy `rdp_config` is dropped on arrival) and must not compute
//! anything the engine already measures: every number here comes from the engine's rows
//! and counters.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::page::Page;
use super::{ApiError, ApiResult, AppState, LJson, LQuery, VERSION, blocking};
use lucid_core::chunk::ChunkRecord;

use crate::engine::{ChunkView, Engine, Kind, SessionRow, Status};
use crate::metrics::STAGES;
use crate::util::{hex, micros_to_rfc3339, now_rfc3339, parse_rfc3339};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        // Declared before `/{id}` in the source, and matched by specificity anyway: the
        // original service made this unreachable.
        .route("/api/v1/sessions/statistics", get(global_statistics))
        .route("/api/v1/sessions", post(create).get(list))
        .route("/api/v1/sessions/{id}", get(read).put(update).delete(remove))
        .route("/api/v1/sessions/{id}/start", post(start))
        .route("/api/v1/sessions/{id}/stop", post(stop))
        .route("/api/v1/sessions/{id}/pause", post(pause))
        .route("/api/v1/sessions/{id}/resume", post(resume))
        .route("/api/v1/sessions/{id}/lock", post(lock_session))
        .route("/api/v1/sessions/{id}/unlock", post(unlock_session))
        .route("/api/v1/sessions/{id}/chunks", get(chunks))
        .route("/api/v1/sessions/{id}/chunks/{cid}", get(chunk))
        .route("/api/v1/sessions/{id}/chunks/{cid}/download", get(download))
        .route("/api/v1/sessions/{id}/pipeline", get(pipeline))
        .route("/api/v1/sessions/{id}/pipeline/pause", post(pipeline_pause))
        .route("/api/v1/sessions/{id}/pipeline/resume", post(pipeline_resume))
        .route("/api/v1/sessions/{id}/statistics", get(statistics))
}

async fn root() -> Json {
    axum::Json(json!({
        "service": "LUCID Session API Service",
        "version": VERSION,
        "status": "running",
        "timestamp": now_rfc3339(),
    }))
}

type Json = axum::Json<Value>;

/// Overall health: the store answers, has room, and the camera is not in error.
pub fn health_report(e: &Engine) -> (bool, Value) {
    let free = super::free_space(&e.cfg.data_dir);
    let store_ok = e.store().get_session::<SessionRow>("health-probe").is_ok();
    let space_ok = free >= e.cfg.min_free_bytes;
    let cam_err = e.camera_state.last_error.lock().map(|g| g.clone()).unwrap_or(None);
    let recording = e.camera_session();
    let healthy = store_ok && space_ok;
    // Appends refused because only locked or recording sessions are left to delete: the
    // device still answers (200), but records nothing until room is made.
    let blocked = e.retention_blocked();
    let record = e.record_status();
    // Continuous recording that stopped by itself (its keeper is retrying) degrades the
    // device as a blocked store does: it answers, but does not record.
    let interrupted = record.interrupted().then(|| {
        format!(
            "continuous recording is not running: {}",
            record.last_error.as_deref().unwrap_or("the camera stopped; starting a new segment")
        )
    });
    let reason = blocked.clone().or(interrupted.clone());
    let r = &e.cfg.retention;
    let body = json!({
        "status": if !healthy { "unhealthy" } else if reason.is_some() { "degraded" } else { "healthy" },
        "reason": reason,
        "timestamp": now_rfc3339(),
        "version": VERSION,
        "device_id": e.device_id,
        "services": {
            "store": {"status": if store_ok { "healthy" } else { "unhealthy" }, "path": e.store().path().display().to_string()},
            // total_bytes: the data file system's size (statvfs), which grows with the card
            // at first boot (`lucidd grow-data`); 0 when it cannot be measured.
            "storage_space": {"status": if space_ok { "healthy" } else { "unhealthy" }, "available_space_bytes": free, "total_bytes": e.store().disk_space().1, "minimum_bytes": e.cfg.min_free_bytes},
            "camera": {
                // Degraded: the last run failed, or a recording waits for an unplugged camera.
                "status": if (cam_err.is_some() && recording.is_none()) || (recording.is_some() && !e.camera_state.connected.load(std::sync::atomic::Ordering::Relaxed)) { "degraded" } else { "healthy" },
                "source": format!("{:?}", e.cfg.source).to_lowercase(),
                "recording_session": recording,
                "frames_captured": e.camera_state.frames.load(std::sync::atomic::Ordering::Relaxed),
                "connected": e.camera_state.connected.load(std::sync::atomic::Ordering::Relaxed),
                "disconnects": e.camera_state.disconnects.load(std::sync::atomic::Ordering::Relaxed),
                "encoder": e.camera_state.encoder.lock().map(|g| g.clone()).unwrap_or(None),
                "last_error": cam_err,
            },
            "retention": {
                "status": if blocked.is_some() { "degraded" } else { "healthy" },
                "reason": blocked,
                "accounted_bytes": e.store().accounted_bytes(),
                "max_store_bytes": r.max_store_bytes,
                "keep_free_percent": r.keep_free_percent,
                "max_age_days": r.max_age_days,
            },
            // Manual or continuous, recording/paused/stopped, failed starts (GET /api/v1/record).
            "record": {
                "status": if interrupted.is_some() { "degraded" } else { "healthy" },
                "reason": interrupted,
                "mode": record.mode_name(),
                "state": record.state,
                "session_id": record.session,
                "failures": record.failures,
                "last_error": record.last_error,
                "restarts": record.restarts,
            },
            "signer": {"status": "healthy", "epoch": e.epoch()},
            // Informational: recording goes on with an unsynchronized clock, and the
            // device log says when it was synchronized.
            "clock": e.clock.status(),
            "gpio": crate::gpio::status(),
            // Informational: a device records whether or not its Wi-Fi is up. The full
            // report (interfaces, networks) is GET /api/v1/network (admin).
            "network": {
                "wifi": e.wifi.status().state,
                "ssid": e.wifi.status().ssid,
                "signal_dbm": e.wifi.status().signal_dbm,
                "ipv4": e.wifi.status().ipv4,
                "reason": e.wifi.status().reason,
            },
            // The owner's settings file: applied, unchanged, rejected or none. Why one
            // was rejected is in GET /api/v1/settings (admin): the message may quote it.
            "settings": crate::settings::Status::load(&e.cfg.data_dir).map(|s| json!({"state": s.state, "file": s.file, "at": s.at})),
        }
    });
    (healthy, body)
}

async fn health(State(e): State<AppState>) -> Response {
    let (ok, body) = tokio::task::spawn_blocking(move || health_report(&e))
        .await
        .unwrap_or_else(|_| (false, json!({"status": "unhealthy", "timestamp": now_rfc3339(), "services": {}})));
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

/// Prometheus text exposition (version 0.0.4) of real counters.
async fn prometheus(State(e): State<AppState>) -> ApiResult<Response> {
    let e2 = e.clone();
    let rows = blocking(move || e2.list()).await?;
    let mut out = String::new();
    out.push_str("# HELP sessions_total Sessions by status.\n# TYPE sessions_total gauge\n");
    for s in Status::ALL {
        let n = rows.iter().filter(|r| r.status == s).count();
        out.push_str(&format!("sessions_total{{status=\"{}\"}} {n}\n", s.as_str()));
    }
    let m = &e.metrics;
    use std::sync::atomic::Ordering::Relaxed;
    out.push_str("# HELP chunks_processed_total Chunks through the seal-and-store path.\n# TYPE chunks_processed_total counter\n");
    out.push_str(&format!("chunks_processed_total{{status=\"success\"}} {}\n", m.chunks_ok.load(Relaxed)));
    out.push_str(&format!("chunks_processed_total{{status=\"failed\"}} {}\n", m.chunks_failed.load(Relaxed)));
    let (_, file_bytes) = e.store().totals().unwrap_or((0, 0));
    out.push_str("# HELP storage_size_bytes Size of the store file.\n# TYPE storage_size_bytes gauge\n");
    out.push_str(&format!("storage_size_bytes {file_bytes}\n"));
    out.push_str(
        "# HELP storage_available_bytes Free space on the data partition.\n# TYPE storage_available_bytes gauge\n",
    );
    out.push_str(&format!("storage_available_bytes {}\n", super::free_space(&e.cfg.data_dir)));
    out.push_str("# HELP processing_duration_seconds Time to compress, seal, log and commit one chunk.\n# TYPE processing_duration_seconds histogram\n");
    let (buckets, count, sum) = m.histogram();
    for (le, n) in buckets {
        out.push_str(&format!("processing_duration_seconds_bucket{{le=\"{le}\"}} {n}\n"));
    }
    out.push_str(&format!("processing_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"));
    out.push_str(&format!("processing_duration_seconds_sum {sum}\nprocessing_duration_seconds_count {count}\n"));
    out.push_str("# HELP lucid_stage_processed_total Items processed by each pipeline stage.\n# TYPE lucid_stage_processed_total counter\n");
    for (i, (name, _)) in STAGES.iter().enumerate() {
        out.push_str(&format!(
            "lucid_stage_processed_total{{stage=\"{name}\"}} {}\n",
            m.stage(i).total_chunks_processed
        ));
    }
    out.push_str(
        "# HELP lucid_stage_errors_total Errors of each pipeline stage.\n# TYPE lucid_stage_errors_total counter\n",
    );
    for (i, (name, _)) in STAGES.iter().enumerate() {
        out.push_str(&format!("lucid_stage_errors_total{{stage=\"{name}\"}} {}\n", m.stage(i).error_count));
    }
    out.push_str("# HELP lucid_camera_frames_total Frames captured.\n# TYPE lucid_camera_frames_total counter\n");
    out.push_str(&format!("lucid_camera_frames_total {}\n", e.camera_state.frames.load(Relaxed)));
    out.push_str(&format!("# HELP lucid_epoch Restart epoch.\n# TYPE lucid_epoch gauge\nlucid_epoch {}\n", e.epoch()));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response())
}

// ----- requests ----------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RecordingConfig {
    frame_rate: Option<i64>,
    resolution: Option<String>,
    quality: Option<String>,
    compression: Option<String>,
    bitrate: Option<i64>,
    audio_enabled: Option<bool>,
    cursor_enabled: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct StorageConfig {
    retention_days: Option<i64>,
    /// Whole gigabytes, as the original model had it (its clients parse an integer).
    max_size_gb: Option<i64>,
    encryption_enabled: Option<bool>,
    compression_enabled: Option<bool>,
    backup_enabled: Option<bool>,
    archive_enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct CreateSession {
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    recording_config: Option<RecordingConfig>,
    #[serde(default)]
    storage_config: Option<StorageConfig>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    rdp_config: Option<Value>,
    /// Not in the original model; lets a client pick its id (`sess-<8 hex>` otherwise).
    #[serde(default)]
    session_id: Option<String>,
}

/// The recording settings to store; `encoder_bps` is what the camera records at, reported
/// as the bitrate when the client asks for none (a response never carries a null one).
fn recording_config_value(rc: Option<RecordingConfig>, encoder_bps: u32, problems: &mut Vec<Value>) -> Value {
    let rc = rc.unwrap_or_default();
    let fr = rc.frame_rate.unwrap_or(30);
    if !(1..=120).contains(&fr) {
        problems.push(json!({"loc": ["body", "recording_config", "frame_rate"], "msg": "must be between 1 and 120", "type": "value_error"}));
    }
    if let Some(b) = rc.bitrate
        && !(1_000..=50_000_000).contains(&b)
    {
        problems.push(json!({"loc": ["body", "recording_config", "bitrate"], "msg": "must be between 1000 and 50000000", "type": "value_error"}));
    }
    let res = rc.resolution.unwrap_or_else(|| "1920x1080".into());
    let valid_res = res
        .split_once('x')
        .is_some_and(|(w, h)| w.parse::<u32>().is_ok_and(|w| w > 0) && h.parse::<u32>().is_ok_and(|h| h > 0));
    if !valid_res {
        problems.push(json!({"loc": ["body", "recording_config", "resolution"], "msg": "must look like 1920x1080", "type": "value_error"}));
    }
    json!({
        "frame_rate": fr,
        "resolution": res,
        "quality": rc.quality.unwrap_or_else(|| "high".into()),
        "compression": rc.compression.unwrap_or_else(|| "zstd".into()),
        "bitrate": rc.bitrate.unwrap_or(i64::from(encoder_bps)),
        "audio_enabled": rc.audio_enabled.unwrap_or(false),
        "cursor_enabled": rc.cursor_enabled.unwrap_or(false),
    })
}

fn storage_config_value(sc: Option<StorageConfig>, problems: &mut Vec<Value>) -> Value {
    let sc = sc.unwrap_or_default();
    let rd = sc.retention_days.unwrap_or(30);
    if !(1..=365).contains(&rd) {
        problems.push(json!({"loc": ["body", "storage_config", "retention_days"], "msg": "must be between 1 and 365", "type": "value_error"}));
    }
    let gb = sc.max_size_gb.unwrap_or(10);
    if !(1..=1000).contains(&gb) {
        problems.push(json!({"loc": ["body", "storage_config", "max_size_gb"], "msg": "must be between 1 and 1000", "type": "value_error"}));
    }
    json!({
        "retention_days": rd,
        "max_size_gb": gb,
        // Every chunk is sealed and compressed-where-it-pays whatever the client asks:
        // the appliance reports what it does, not what was requested.
        "encryption_enabled": true,
        "compression_enabled": true,
        "backup_enabled": sc.backup_enabled.unwrap_or(false),
        "archive_enabled": sc.archive_enabled.unwrap_or(false),
        "requested_encryption_enabled": sc.encryption_enabled.unwrap_or(true),
        "requested_compression_enabled": sc.compression_enabled.unwrap_or(true),
    })
}

/// What the session metadata model types: `tags` a list of strings, the named fields
/// strings (or null where the model has no default). Other keys are the client's and
/// are kept as they are. Shared with the recorder, whose sessions this service lists.
pub(super) fn metadata_problems(m: &serde_json::Map<String, Value>, loc: &str) -> Vec<Value> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, msg: &str| {
        problems.push(json!({"loc": ["body", loc, key], "msg": msg, "type": "value_error"}));
    };
    if m.get("tags").is_some_and(|t| !t.as_array().is_some_and(|a| a.iter().all(Value::is_string))) {
        bad("tags", "must be a list of strings");
    }
    for key in ["project", "environment", "description", "owner"] {
        if m.get(key).is_some_and(|v| !v.is_string() && !v.is_null()) {
            bad(key, "must be a string");
        }
    }
    if m.get("priority").is_some_and(|v| !v.is_string()) {
        bad("priority", "must be a string");
    }
    problems
}

fn metadata_value(m: Option<Value>, problems: &mut Vec<Value>) -> Value {
    let mut m = m.unwrap_or_else(|| json!({}));
    match m.as_object_mut() {
        Some(o) => {
            o.entry("tags").or_insert(json!([]));
            o.entry("priority").or_insert(json!("normal"));
            problems.extend(metadata_problems(o, "metadata"));
        }
        None => problems.push(json!({"loc": ["body", "metadata"], "msg": "must be an object", "type": "value_error"})),
    }
    m
}

/// Removes every `password` key, at any depth: an old client may nest credentials
/// (a gateway hop, a list of fallback hosts), and none of them may be stored or echoed.
fn drop_passwords(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|k, _| !k.eq_ignore_ascii_case("password"));
            o.values_mut().for_each(drop_passwords);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_passwords),
        _ => {}
    }
}

/// Keeps the legacy RDP settings an old client sends, minus any password.
fn rdp_value(v: Option<Value>, problems: &mut Vec<Value>) -> Option<Value> {
    let mut v = v.filter(|v| !v.is_null())?;
    if !v.is_object() {
        problems.push(json!({"loc": ["body", "rdp_config"], "msg": "must be an object", "type": "value_error"}));
    }
    drop_passwords(&mut v);
    Some(v)
}

/// A stored recording config in the contract's shape: older rows (and sessions another
/// service created) may lack keys or hold a null bitrate; clients expect every key and an
/// integer bitrate.
fn recording_config_out(stored: &Value, encoder_bps: u32) -> Value {
    let mut out = recording_config_value(None, encoder_bps, &mut Vec::new());
    if let (Some(o), Some(s)) = (out.as_object_mut(), stored.as_object()) {
        for (k, v) in s {
            if !v.is_null() {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// A stored storage config in the contract's shape: `max_size_gb` in whole gigabytes
/// (older rows stored a float; rounded up so the limit is never below the one asked for).
fn storage_config_out(stored: &Value) -> Value {
    let mut out = storage_config_value(None, &mut Vec::new());
    if let (Some(o), Some(s)) = (out.as_object_mut(), stored.as_object()) {
        for (k, v) in s {
            if !v.is_null() {
                o.insert(k.clone(), v.clone());
            }
        }
        if let Some(gb) = o.get("max_size_gb").and_then(Value::as_f64) {
            o.insert("max_size_gb".into(), json!(gb.ceil().clamp(1.0, 1000.0) as i64));
        }
    }
    out
}

pub fn session_response(e: &Engine, r: &SessionRow) -> Value {
    let dur = r.media_us as f64 / 1e6;
    json!({
        "session_id": r.id,
        "name": r.name,
        "description": r.description,
        "status": r.status.as_str(),
        "kind": match r.kind { Kind::Camera => "camera", Kind::Data => "data" },
        "created_at": r.created_at,
        "started_at": r.started_at,
        "stopped_at": r.stopped_at,
        "recording_config": recording_config_out(&r.recording_config, e.cfg.video.bitrate_bps),
        "storage_config": storage_config_out(&r.storage_config),
        "metadata": r.metadata,
        "rdp_config": r.rdp_config,
        "recovered": r.recovered,
        "locked": r.locked,
        "statistics": {
            "duration_seconds": dur,
            "chunks_count": r.chunk_count,
            "size_bytes": r.stored_bytes,
            "frame_count": r.frame_count,
            "dropped_frames": r.dropped_frames,
            "error_count": r.error_count,
            "average_fps": if dur > 0.0 { r.frame_count as f64 / dur } else { 0.0 },
            "compression_ratio": if r.stored_bytes > 0 { r.plain_bytes as f64 / r.stored_bytes as f64 } else { 1.0 },
        }
    })
}

/// What a valid create-session body becomes: every field checked and shaped, nothing stored.
struct NewSession {
    name: String,
    description: Option<String>,
    session_id: Option<String>,
    recording_config: Value,
    storage_config: Value,
    metadata: Value,
    rdp_config: Option<Value>,
}

/// The create-session rules, pure (no engine, no IO), so the fuzzer runs exactly them: the
/// FastAPI-style problem list, or the shaped fields.
fn check_create(req: CreateSession, encoder_bps: u32) -> Result<NewSession, Vec<Value>> {
    let mut problems = Vec::new();
    let name = req.name.unwrap_or_default();
    let n = name.chars().count();
    if !(1..=255).contains(&n) {
        problems.push(json!({"loc": ["body", "name"], "msg": "must be 1 to 255 characters", "type": "value_error"}));
    }
    if let Some(Err(err)) = req.session_id.as_deref().map(lucid_core::chunk::validate_session_id) {
        problems.push(json!({"loc": ["body", "session_id"], "msg": err.to_string(), "type": "value_error"}));
    }
    let recording_config = recording_config_value(req.recording_config, encoder_bps, &mut problems);
    let storage_config = storage_config_value(req.storage_config, &mut problems);
    let metadata = metadata_value(req.metadata, &mut problems);
    let rdp_config = rdp_value(req.rdp_config, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(NewSession {
        name,
        description: req.description,
        session_id: req.session_id,
        recording_config,
        storage_config,
        metadata,
        rdp_config,
    })
}

/// The fuzz target `json_bodies` (fuzz/): a create-session body from outside bytes through
/// the same parse and rules as the handler. Panics if an accepted body breaks a promise of
/// the contract: a password kept anywhere in `rdp_config`, tags that are not strings, a
/// `max_size_gb` or `bitrate` that is not an integer, a name outside 1..=255 characters.
#[doc(hidden)]
pub fn fuzz_create_session(bytes: &[u8]) {
    fn has_password(v: &Value) -> bool {
        match v {
            Value::Object(o) => o.iter().any(|(k, v)| k.eq_ignore_ascii_case("password") || has_password(v)),
            Value::Array(a) => a.iter().any(has_password),
            _ => false,
        }
    }
    let Ok(req) = serde_json::from_slice::<CreateSession>(bytes) else { return };
    let Ok(s) = check_create(req, 2_000_000) else { return };
    assert!((1..=255).contains(&s.name.chars().count()));
    assert!(s.rdp_config.as_ref().is_none_or(|v| !has_password(v)), "a password survived: {:?}", s.rdp_config);
    let tags = &s.metadata["tags"];
    assert!(tags.as_array().is_some_and(|t| t.iter().all(Value::is_string)), "tags {tags}");
    assert!(s.storage_config["max_size_gb"].is_u64(), "{}", s.storage_config);
    assert!(s.recording_config["bitrate"].is_u64(), "{}", s.recording_config);
    if let Some(id) = &s.session_id {
        assert!(id != "." && id != "..");
    }
}

async fn create(State(e): State<AppState>, LJson(req): LJson<CreateSession>) -> ApiResult<Response> {
    let NewSession { name, description, session_id, recording_config, storage_config, metadata, rdp_config } =
        check_create(req, e.cfg.video.bitrate_bps).map_err(ApiError::Validation)?;
    let (rc, sc, md, rdp) = (recording_config, storage_config, metadata, rdp_config);
    let (desc, sid, e2) = (description, session_id, e.clone());
    let row = blocking(move || {
        e2.create_session(sid, name, Kind::Camera, |r| {
            r.description = desc;
            r.recording_config = rc;
            r.storage_config = sc;
            r.metadata = md;
            r.rdp_config = rdp;
        })
    })
    .await?;
    Ok((StatusCode::CREATED, axum::Json(session_response(&e, &row))).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    project: Option<String>,
    environment: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(State(e): State<AppState>, LQuery(q): LQuery<ListQuery>) -> ApiResult<Json> {
    let limit = q.limit.unwrap_or(50);
    let offset = q.offset.unwrap_or(0);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::validation(&["query", "limit"], "must be between 1 and 100"));
    }
    if offset < 0 {
        return Err(ApiError::validation(&["query", "offset"], "must be 0 or more"));
    }
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| ApiError::validation(&["query", "status"], "unknown status"))?),
    };
    let e2 = e.clone();
    let rows = blocking(move || e2.list()).await?;
    let matches = |r: &SessionRow| {
        status.is_none_or(|s| r.status == s)
            && q.project.as_deref().is_none_or(|p| r.metadata.get("project").and_then(Value::as_str) == Some(p))
            && q.environment.as_deref().is_none_or(|p| r.metadata.get("environment").and_then(Value::as_str) == Some(p))
    };
    let all: Vec<&SessionRow> = rows.iter().filter(|r| matches(r)).collect();
    let total = all.len() as i64;
    let page: Vec<Value> =
        all.iter().skip(offset as usize).take(limit as usize).map(|r| session_response(&e, r)).collect();
    Ok(axum::Json(json!({
        "sessions": page,
        // Saturating: any offset up to i64::MAX is a valid (empty) page, not an overflow.
        "pagination": {"total": total, "limit": limit, "offset": offset,
                       "has_next": offset.saturating_add(limit) < total, "has_previous": offset > 0},
    })))
}

async fn read(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let e2 = e.clone();
    let row = blocking(move || e2.get(&id)).await?;
    Ok(axum::Json(session_response(&e, &row)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateSession {
    name: Option<String>,
    description: Option<String>,
    metadata: Option<Value>,
    storage_config: Option<StorageConfig>,
    recording_config: Option<RecordingConfig>,
}

/// What a valid update body becomes: each field given, checked and shaped.
struct SessionUpdate {
    name: Option<String>,
    description: Option<String>,
    metadata: Option<Value>,
    storage_config: Option<Value>,
    recording_config: Option<Value>,
}

/// The update rules, pure (no engine, no IO), so the fuzzer runs exactly them: those of
/// create for each field given (whether the session may still change its recording
/// config is the engine's question, asked under its lock).
fn check_update(req: UpdateSession, encoder_bps: u32) -> Result<SessionUpdate, Vec<Value>> {
    let mut problems = Vec::new();
    if let Some(n) = &req.name
        && !(1..=255).contains(&n.chars().count())
    {
        problems.push(json!({"loc": ["body", "name"], "msg": "must be 1 to 255 characters", "type": "value_error"}));
    }
    let metadata = req.metadata.map(|m| metadata_value(Some(m), &mut problems));
    let storage_config = req.storage_config.map(|s| storage_config_value(Some(s), &mut problems));
    let recording_config = req.recording_config.map(|r| recording_config_value(Some(r), encoder_bps, &mut problems));
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(SessionUpdate { name: req.name, description: req.description, metadata, storage_config, recording_config })
}

/// The fuzz target `json_bodies` (fuzz/), gateway update: outside bytes through the
/// handler's parse and rules. Panics if an accepted body breaks a promise of the
/// contract: a name outside 1..=255 characters, tags that are not strings, a
/// `max_size_gb` or `bitrate` that is not an integer.
#[doc(hidden)]
pub fn fuzz_update_session(bytes: &[u8]) {
    let Ok(req) = serde_json::from_slice::<UpdateSession>(bytes) else { return };
    let Ok(u) = check_update(req, 2_000_000) else { return };
    if let Some(n) = &u.name {
        assert!((1..=255).contains(&n.chars().count()));
    }
    if let Some(m) = &u.metadata {
        assert!(m["tags"].as_array().is_some_and(|t| t.iter().all(Value::is_string)), "metadata {m}");
    }
    if let Some(sc) = &u.storage_config {
        assert!(sc["max_size_gb"].is_u64(), "{sc}");
    }
    if let Some(rc) = &u.recording_config {
        assert!(rc["bitrate"].is_u64(), "{rc}");
    }
}

async fn update(
    State(e): State<AppState>,
    Path(id): Path<String>,
    LJson(req): LJson<UpdateSession>,
) -> ApiResult<Json> {
    let SessionUpdate { name, description: desc, metadata: md, storage_config: sc, recording_config: rc } =
        check_update(req, e.cfg.video.bitrate_bps).map_err(ApiError::Validation)?;
    let e2 = e.clone();
    let row = blocking(move || {
        e2.update(&id, |r| {
            if let Some(rc) = rc {
                if r.status != Status::Created {
                    return Err(crate::engine::EngineError::BadState(
                        "recording_config can change only before the first start".into(),
                    ));
                }
                r.recording_config = rc;
            }
            if let Some(n) = name {
                r.name = n;
            }
            if desc.is_some() {
                r.description = desc;
            }
            if let Some(m) = md {
                r.metadata = m;
            }
            if let Some(s) = sc {
                r.storage_config = s;
            }
            Ok(())
        })
    })
    .await?;
    Ok(axum::Json(session_response(&e, &row)))
}

async fn remove(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let sid = id.clone();
    let n = blocking(move || e.delete(&sid)).await?;
    Ok(axum::Json(json!({"session_id": id, "status": "deleted", "deleted_at": now_rfc3339(), "deleted_chunks": n})))
}

async fn start(State(e): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> ApiResult<Json> {
    let sid = id.clone();
    let row = blocking(move || e.start_recording(&sid)).await?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost:8087");
    Ok(axum::Json(json!({
        "session_id": id,
        "status": row.status.as_str(),
        "started_at": row.started_at,
        "recording_url": format!("http://{host}/api/v1/sessions/{id}/media/playlist.m3u8"),
    })))
}

async fn stop(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let (sid, e2) = (id.clone(), e.clone());
    let row = blocking(move || e2.stop_recording(&sid)).await?;
    let s = session_response(&e, &row);
    Ok(axum::Json(json!({
        "session_id": id,
        "status": row.status.as_str(),
        "stopped_at": row.stopped_at,
        "final_statistics": s["statistics"],
        "merkle_root": row.root,
    })))
}

/// Protects a session from retention (admin): the engine keeps it whatever the limits.
async fn lock_session(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let e2 = e.clone();
    let row = blocking(move || e2.set_locked(&id, true)).await?;
    Ok(axum::Json(session_response(&e, &row)))
}

/// Makes a locked session subject to retention again (admin).
async fn unlock_session(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let e2 = e.clone();
    let row = blocking(move || e2.set_locked(&id, false)).await?;
    Ok(axum::Json(session_response(&e, &row)))
}

async fn pause(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let sid = id.clone();
    let row = blocking(move || e.pause_recording(&sid)).await?;
    Ok(axum::Json(json!({"session_id": id, "status": row.status.as_str(), "paused_at": row.paused_at})))
}

async fn resume(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let sid = id.clone();
    let row = blocking(move || e.resume_recording(&sid)).await?;
    Ok(axum::Json(json!({"session_id": id, "status": row.status.as_str(), "resumed_at": row.resumed_at})))
}

pub fn chunk_response(sid: &str, c: &ChunkView) -> Value {
    let r = &c.record;
    json!({
        "chunk_id": c.client_id.clone().unwrap_or_else(|| r.index.to_string()),
        "session_id": sid,
        // The original ChunkResponse's name for the chunk's place in the session.
        "sequence_number": r.index,
        "index": r.index,
        "status": if c.present { "stored" } else { "redacted" },
        "timestamp": micros_to_rfc3339(r.wall_clock_us),
        "media_start_seconds": r.media_start_us as f64 / 1e6,
        "duration_seconds": (r.media_end_us - r.media_start_us) as f64 / 1e6,
        "frame_count": r.frame_count,
        "size_bytes": r.plain_len,
        "stored_bytes": r.sealed_len,
        "compressed": r.flags.contains(lucid_core::chunk::Flags::ZSTD),
        "media": r.flags.contains(lucid_core::chunk::Flags::MEDIA),
        "gap_before": r.flags.contains(lucid_core::chunk::Flags::GAP_BEFORE),
        "compression_ratio": if r.sealed_len > 0 { r.plain_len as f64 / r.sealed_len as f64 } else { 1.0 },
        "epoch": r.epoch,
        "plaintext_blake3": hex(&r.plain_blake3),
        "sealed_blake3": hex(&r.sealed_blake3),
        "merkle_leaf": hex(&lucid_core::merkle::leaf_hash(&r.encode())),
    })
}

#[derive(Debug, Deserialize)]
struct ChunkQuery {
    status: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
}

/// Records a filtered page looks at, at most: a filter that matches rarely costs one
/// bounded range read per request, and the client follows `next_offset` for more.
const FILTER_SCAN_MAX: usize = 4096;

/// A page of a session's chunks. `offset` is a position in the log (each record is a
/// chunk here) and `total` the log's length, so a page is one range read of `limit`
/// records whatever the session's length. With filters, the page holds the matching
/// chunks among at most `FILTER_SCAN_MAX` records from `offset` on, and `next_offset`
/// is where the scan stopped (it may be a page of none with `has_next`).
async fn chunks(
    State(e): State<AppState>,
    Path(id): Path<String>,
    page: Page<100, 1000>,
    LQuery(q): LQuery<ChunkQuery>,
) -> ApiResult<Json> {
    let (limit, offset) = (page.limit, page.offset);
    let parse_t = |s: &Option<String>, loc: &str| -> ApiResult<Option<i64>> {
        match s {
            None => Ok(None),
            Some(s) => parse_rfc3339(s)
                .map(|t| Some((t.unix_timestamp_nanos() / 1000) as i64))
                .ok_or_else(|| ApiError::validation(&["query", loc], "must be an ISO 8601 timestamp")),
        }
    };
    let (from, to) = (parse_t(&q.start_time, "start_time")?, parse_t(&q.end_time, "end_time")?);
    if let Some(s) = &q.status
        && s != "stored"
        && s != "redacted"
    {
        return Err(ApiError::validation(&["query", "status"], "must be stored or redacted"));
    }
    let sid = id.clone();
    let unfiltered = q.status.is_none() && from.is_none() && to.is_none();
    let (views, next, total) = blocking(move || {
        let row = e.get(&sid)?;
        let start = offset as u64;
        if unfiltered {
            let views = e.records_from(&sid, start, limit)?;
            let next = start.saturating_add(views.len() as u64);
            return Ok((views, next, row.chunk_count));
        }
        let stored = q.status.as_deref().map(|s| s == "stored");
        let (views, next) = e.records_where(&sid, start, limit, FILTER_SCAN_MAX, |r, present| {
            stored.is_none_or(|s| s == present)
                && from.is_none_or(|f| r.wall_clock_us >= f)
                && to.is_none_or(|t| r.wall_clock_us <= t)
        })?;
        Ok((views, next, row.chunk_count))
    })
    .await?;
    let page: Vec<Value> = views.iter().map(|c| chunk_response(&id, c)).collect();
    let has_next = next < total;
    Ok(axum::Json(json!({
        "chunks": page,
        "pagination": {"total": total, "limit": limit, "offset": offset,
                       "has_next": has_next, "has_previous": offset > 0,
                       "next_offset": has_next.then_some(next)},
    })))
}

async fn chunk(State(e): State<AppState>, Path((id, cid)): Path<(String, String)>) -> ApiResult<Json> {
    let sid = id.clone();
    let view = blocking(move || e.chunk(&sid, &cid)).await?;
    Ok(axum::Json(chunk_response(&id, &view)))
}

/// The chunk's plaintext (a CMAF fragment for camera sessions). Decrypted content: like
/// every read, it needs a credential (`auth`), so the LAN cannot watch the camera.
async fn download(State(e): State<AppState>, Path((id, cid)): Path<(String, String)>) -> ApiResult<Response> {
    let sid = id.clone();
    let (bytes, idx, media) = blocking(move || {
        let idx = e.resolve_chunk(&sid, &cid)?;
        let row = e.get(&sid)?;
        let r = e.reader(&sid)?;
        let b = if row.kind == Kind::Data { r.client_chunk(idx)? } else { r.plaintext(idx)? };
        Ok((b, idx, row.kind == Kind::Camera))
    })
    .await?;
    let (ext, ctype) = if media { ("m4s", "video/iso.segment") } else { ("bin", "application/octet-stream") };
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{id}-{idx:06}.{ext}\"")),
        ],
        bytes,
    )
        .into_response())
}

/// CPU time and resident memory of this process, from /proc (Linux).
fn process_usage(e: &Engine) -> (u64, f64) {
    let page = 4096u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map(|p| p * page)
        .unwrap_or(0);
    // utime + stime in clock ticks (USER_HZ = 100 on Linux) over the process uptime.
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .map(|ticks| ticks / 100.0 / e.metrics.started.elapsed().as_secs_f64().max(1e-3) * 100.0)
        .unwrap_or(0.0);
    (rss, cpu)
}

pub fn stages_value(e: &Engine, active: bool, error: bool) -> Vec<Value> {
    STAGES
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| {
            let s = e.metrics.stage(i);
            json!({
                "name": name, "type": ty,
                "status": if error { "error" } else if active { "active" } else { "inactive" },
                "worker_count": 1,
                "metrics": s,
            })
        })
        .collect()
}

/// The original PipelineResponse's four states. A session that has not started yet has a
/// pipeline that waits: `paused`, with every stage inactive.
fn pipeline_status(s: Status) -> &'static str {
    match s {
        Status::Starting | Status::Recording | Status::Processing => "active",
        Status::Created | Status::Paused => "paused",
        Status::Stopped | Status::Completed | Status::Deleted => "completed",
        Status::Failed => "failed",
    }
}

async fn pipeline(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let e2 = e.clone();
    let row = blocking(move || e2.get(&id)).await?;
    let active = row.status == Status::Recording;
    let status = pipeline_status(row.status);
    let (rss, cpu) = process_usage(&e);
    let dur = row.media_us as f64 / 1e6;
    let total_ms: f64 = (0..STAGES.len())
        .map(|i| {
            let s = e.metrics.stage(i);
            s.average_processing_time_ms * (s.total_chunks_processed + s.error_count) as f64
        })
        .sum();
    Ok(axum::Json(json!({
        "session_id": row.id,
        "pipeline_status": status,
        "stages": stages_value(&e, active, row.status == Status::Failed),
        "overall_metrics": {
            "total_processing_time_ms": total_ms,
            "throughput_fps": if dur > 0.0 { row.frame_count as f64 / dur } else { 0.0 },
            "error_rate": if row.chunk_count + row.error_count > 0 { row.error_count as f64 / (row.chunk_count + row.error_count) as f64 } else { 0.0 },
            "memory_usage_bytes": rss,
            "cpu_usage_percent": cpu,
        }
    })))
}

async fn pipeline_pause(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let sid = id.clone();
    let row = blocking(move || e.pause_recording(&sid)).await?;
    Ok(axum::Json(json!({"session_id": id, "pipeline_status": "paused", "paused_at": row.paused_at})))
}

async fn pipeline_resume(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let sid = id.clone();
    let row = blocking(move || e.resume_recording(&sid)).await?;
    Ok(axum::Json(json!({"session_id": id, "pipeline_status": "active", "resumed_at": row.resumed_at})))
}

async fn statistics(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Json> {
    let sid = id.clone();
    // Counters kept in the row and the first and last record: the same few lookups for
    // a session of any length.
    let (row, edges) = blocking(move || {
        let row = e.get(&sid)?;
        let edges = e.edge_records(&sid, row.chunk_count)?;
        Ok((row, edges))
    })
    .await?;
    let dur = row.media_us as f64 / 1e6;
    let gaps = row.counters.gaps;
    let mut body = json!({
        "session_id": id,
        "recording_stats": {
            "duration_seconds": dur,
            "frame_count": row.frame_count,
            "dropped_frames": row.dropped_frames,
            "average_fps": if dur > 0.0 { row.frame_count as f64 / dur } else { 0.0 },
            "chunks": row.chunk_count,
            "gaps": gaps,
            "recovered": row.recovered,
        },
        "storage_stats": {
            "plaintext_bytes": row.plain_bytes,
            "stored_bytes": row.stored_bytes,
            "compressed_chunks": row.compressed_chunks,
            "compression_ratio": if row.stored_bytes > 0 { row.plain_bytes as f64 / row.stored_bytes as f64 } else { 1.0 },
            "average_chunk_bytes": if row.chunk_count == 0 { 0.0 } else { row.stored_bytes as f64 / row.chunk_count as f64 },
            "max_chunk_bytes": row.counters.max_sealed_len,
            "cipher": row.cipher,
        },
        "quality_stats": {
            "codec": row.codec,
            "width": row.width,
            "height": row.height,
            "configured_fps": row.fps,
            "average_bitrate_bps": if dur > 0.0 { row.plain_bytes as f64 * 8.0 / dur } else { 0.0 },
        },
        "performance_stats": {
            "error_count": row.error_count,
            "active_seconds": row.active_secs,
            "merkle_root": row.root,
        },
    });
    if let Some(range) = time_range(&row, edges.as_ref()) {
        body["time_range"] = range;
    }
    Ok(axum::Json(body))
}

/// From the first chunk's capture to the last one's end, or from start to stop (or now,
/// while live) when no chunk is stored. None for a session that never ran: the original
/// model's start and end are timestamps, so the range is left out rather than nulled.
fn time_range(row: &SessionRow, edges: Option<&(ChunkRecord, ChunkRecord)>) -> Option<Value> {
    let start = edges.map(|(first, _)| micros_to_rfc3339(first.wall_clock_us)).or(row.started_at.clone())?;
    let end = edges
        .map(|(_, last)| micros_to_rfc3339(last.wall_clock_us + (last.media_end_us - last.media_start_us) as i64))
        .or(row.stopped_at.clone())
        .unwrap_or_else(|| if crate::engine::is_live(row.status) { now_rfc3339() } else { start.clone() });
    Some(json!({"start": start, "end": end}))
}

async fn global_statistics(State(e): State<AppState>) -> ApiResult<Json> {
    let e2 = e.clone();
    let rows = blocking(move || e2.list()).await?;
    let mut by_status = serde_json::Map::new();
    for s in Status::ALL {
        by_status.insert(s.as_str().into(), json!(rows.iter().filter(|r| r.status == s).count()));
    }
    let sum = |f: fn(&SessionRow) -> u64| rows.iter().map(f).sum::<u64>();
    Ok(axum::Json(json!({
        "total_sessions": rows.len(),
        "sessions_by_status": by_status,
        "total_chunks": sum(|r| r.chunk_count),
        "total_frames": sum(|r| r.frame_count),
        "total_plaintext_bytes": sum(|r| r.plain_bytes),
        "total_stored_bytes": sum(|r| r.stored_bytes),
        "recorded_seconds": sum(|r| r.media_us) as f64 / 1e6,
        "recording_session": e.camera_session(),
        "available_space_bytes": super::free_space(&e.cfg.data_dir),
        "uptime_seconds": e.metrics.started.elapsed().as_secs_f64(),
        "timestamp": now_rfc3339(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_to_an_original_pipeline_state() {
        for s in Status::ALL {
            assert!(["active", "paused", "completed", "failed"].contains(&pipeline_status(s)), "{s:?}");
        }
        assert_eq!(pipeline_status(Status::Stopped), "completed");
        assert_eq!(pipeline_status(Status::Failed), "failed");
        assert_eq!(pipeline_status(Status::Recording), "active");
    }

    #[test]
    fn passwords_are_dropped_at_any_depth() {
        let mut problems = Vec::new();
        let v = rdp_value(
            Some(json!({"host": "h", "password": "p1", "gateway": {"user": "g", "PASSWORD": "p2"},
                        "hops": [{"host": "h2", "password": "p3"}, [{"password": "p4", "port": 1}]]})),
            &mut problems,
        )
        .unwrap();
        assert!(problems.is_empty());
        assert_eq!(v, json!({"host": "h", "gateway": {"user": "g"}, "hops": [{"host": "h2"}, [{"port": 1}]]}));
        assert_eq!(rdp_value(Some(Value::Null), &mut problems), None);
        rdp_value(Some(json!("host:3389")), &mut problems);
        assert_eq!(problems.len(), 1);
    }
}
