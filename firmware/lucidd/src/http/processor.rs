//! The chunk processor service (8085): client chunks through the engine's real chunk path
//! (compress -> seal -> digest -> Merkle log -> durable commit), session finalization and
//! the Merkle root.
//!
//! It owns the processor's worker pool (a semaphore sized to the CPU, so `active_workers`
//! and `queue_size` are measured, and a full queue is refused with 503 rather than
//! buffering chunks in RAM) and its error shape: unlike the other services, processor
//! errors are `{"error": {"code": "LUCID_ERR_<status>", ...}}` with the caller's
//! X-Request-ID. It must not expose a key or a secret (not even in `/api/v1/config`) and
//! must not touch the store except through the engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use super::storage::{Stored, decode_b64_chunk, ensure_data_session, ingest, ratio, validate_sid};
use super::{ApiError, AppState, Failure, LJson, VERSION, free_space};
use crate::engine::{Engine, EngineError};
use crate::util::{hex, now_rfc3339};

const SERVICE: &str = "chunk-processor";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/chunks/process", post(process))
        .route("/api/v1/chunks/process-batch", post(process_batch))
        .route("/api/v1/sessions/{sid}/merkle-root", get(merkle_root))
        .route("/api/v1/sessions/{sid}/finalize", post(finalize))
        .route("/api/v1/config", get(config))
        .layer(Extension(Arc::new(Pool::new())))
}

// ----- errors ---------------------------------------------------------------------------

/// The processor's error: any `ApiError`, rendered in the processor's own shape. The
/// handler does not know the request id, so the response carries the failure as an
/// extension and `shape_errors` (which saw the request) writes the body.
#[derive(Debug)]
pub struct ProcError(pub ApiError);

impl From<ApiError> for ProcError {
    fn from(e: ApiError) -> Self {
        ProcError(e)
    }
}

impl From<EngineError> for ProcError {
    fn from(e: EngineError) -> Self {
        ProcError(e.into())
    }
}

impl IntoResponse for ProcError {
    fn into_response(self) -> Response {
        // The body is written by `shape_errors`, which knows the request id.
        let mut r = self.0.status().into_response();
        r.extensions_mut().insert(self.0.failure());
        r
    }
}

/// The processor error body of the contract.
pub fn error_body(status: StatusCode, message: &str, request_id: &str, details: Option<Value>) -> Value {
    let mut err = json!({
        "code": format!("LUCID_ERR_{}", status.as_u16()),
        "message": message,
        "request_id": request_id,
        "timestamp": now_rfc3339(),
        "service": SERVICE,
        "version": VERSION,
    });
    if let Some(d) = details {
        err["details"] = d;
    }
    json!({ "error": err })
}

/// Writes the body of every processor failure, with the request's X-Request-ID (or
/// "unknown"). Internal errors are logged here, under that id, and answered generically.
pub(super) async fn shape_errors(req: Request, next: Next) -> Response {
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .unwrap_or("unknown")
        .to_owned();
    let mut resp = next.run(req).await;
    if let Some(f) = resp.extensions_mut().remove::<Failure>() {
        if let Some(m) = &f.internal {
            tracing::error!(request_id = %rid, error = %m, service = SERVICE, "internal error");
        }
        let status = resp.status();
        return (status, Json(error_body(status, &f.message, &rid, f.details))).into_response();
    }
    resp
}

/// `LJson` whose rejections (422, 413) come out in the processor's shape.
pub struct PJson<T>(pub T);

impl<S, T> FromRequest<S> for PJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ProcError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        LJson::<T>::from_request(req, state).await.map(|LJson(v)| PJson(v)).map_err(ProcError)
    }
}

type PResult<T> = Result<T, ProcError>;

async fn run_blocking<T, F>(f: F) -> PResult<T>
where
    F: FnOnce() -> Result<T, EngineError> + Send + 'static,
    T: Send + 'static,
{
    Ok(super::blocking(f).await?)
}

// ----- the worker pool ----------------------------------------------------------------------

/// Bounds concurrent chunk processing to the CPU count; requests beyond that wait in a
/// queue of bounded length (each waiting request pins its decoded chunk in memory).
struct Pool {
    permits: Semaphore,
    max_workers: usize,
    queue_limit: usize,
    active: AtomicUsize,
    waiting: AtomicUsize,
}

impl Pool {
    fn new() -> Pool {
        let max_workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Pool {
            permits: Semaphore::new(max_workers),
            max_workers,
            queue_limit: max_workers * 4,
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on a blocking worker once a permit is free, or refuses (503) when the
    /// queue is full.
    async fn run<T, F>(&self, f: F) -> PResult<T>
    where
        F: FnOnce() -> Result<T, EngineError> + Send + 'static,
        T: Send + 'static,
    {
        // Counted by guards, not by statements after an await: when a client goes away
        // mid-request axum drops this future at its await point, and the counters must
        // still return to zero.
        let waiting = Counted::new(&self.waiting);
        if waiting.before >= self.queue_limit {
            return Err(ApiError::Unavailable("the chunk processor queue is full; retry later".into()).into());
        }
        let permit = self.permits.acquire().await;
        drop(waiting);
        let _permit = permit.map_err(|_| ApiError::Internal("worker pool closed".into()))?;
        let _active = Counted::new(&self.active);
        run_blocking(f).await
    }
}

/// One unit of a gauge for as long as it lives.
struct Counted<'a> {
    gauge: &'a AtomicUsize,
    before: usize,
}

impl<'a> Counted<'a> {
    fn new(gauge: &'a AtomicUsize) -> Self {
        Counted { gauge, before: gauge.fetch_add(1, Relaxed) }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Relaxed);
    }
}

/// The blocking worker running this code, as `<thread name>:<thread id>`.
fn worker_id() -> String {
    let t = std::thread::current();
    format!("{}:{:?}", t.name().unwrap_or("worker"), t.id())
}

// ----- processing -------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ProcessBody {
    session_id: String,
    chunk_id: String,
    chunk_data_base64: String,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct BatchChunk {
    chunk_id: String,
    chunk_data_base64: String,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct BatchBody {
    session_id: String,
    chunks: Vec<BatchChunk>,
}

/// The client's metadata as the stored chunk metadata (an object; anything else is kept
/// under `client_metadata`).
fn client_meta(chunk_id: &str, metadata: Option<Value>) -> Map<String, Value> {
    let mut m = match metadata {
        Some(Value::Object(m)) => m,
        Some(Value::Null) | None => Map::new(),
        Some(other) => {
            let mut m = Map::new();
            m.insert("client_metadata".into(), other);
            m
        }
    };
    m.insert("chunk_id".into(), json!(chunk_id));
    m
}

/// The rules one chunk of a process or batch body must keep, pure (no engine, no IO), so
/// the fuzzer runs exactly them: base64 that decodes to at most `max` bytes and a chunk id
/// the log accepts. Gives the bytes and the metadata to store.
fn check_chunk(
    chunk_id: &str,
    b64: &str,
    metadata: Option<Value>,
    max: usize,
) -> super::ApiResult<(Vec<u8>, Map<String, Value>)> {
    let data = decode_b64_chunk(max, "chunk_data_base64", b64)?;
    crate::engine::check_chunk_id(chunk_id)?;
    Ok((data, client_meta(chunk_id, metadata)))
}

/// The process body's rules: a canonical session id, then the chunk's.
fn check_process(body: &ProcessBody, max: usize) -> super::ApiResult<(Vec<u8>, Map<String, Value>)> {
    validate_sid(&body.session_id)?;
    check_chunk(&body.chunk_id, &body.chunk_data_base64, body.metadata.clone(), max)
}

/// The batch body's own rules (each chunk is then checked, and may fail, on its own): at
/// least one chunk and a canonical session id.
fn check_batch(body: &BatchBody) -> super::ApiResult<()> {
    if body.chunks.is_empty() {
        return Err(ApiError::validation(&["body", "chunks"], "chunks must hold at least 1 item"));
    }
    validate_sid(&body.session_id)?;
    Ok(())
}

/// The fuzz target `json_bodies` (fuzz/), processor process and batch bodies (`batch`
/// picks which): outside bytes through the handlers' parse and rules. Panics if an
/// accepted chunk decodes to more than the limit, names a chunk id the log refuses, or
/// its stored metadata is not keyed by that id; or if an accepted batch is empty.
#[doc(hidden)]
pub fn fuzz_process(bytes: &[u8], batch: bool) {
    const MAX: usize = 4096;
    let accepted = |cid: &str, (data, meta): (Vec<u8>, Map<String, Value>)| {
        assert!(data.len() <= MAX, "{} bytes decoded", data.len());
        assert!(crate::engine::check_chunk_id(cid).is_ok(), "chunk id {cid:?}");
        assert_eq!(meta.get("chunk_id").and_then(Value::as_str), Some(cid), "{meta:?}");
    };
    if !batch {
        let Ok(body) = serde_json::from_slice::<ProcessBody>(bytes) else { return };
        if let Ok(c) = check_process(&body, MAX) {
            accepted(&body.chunk_id, c);
        }
        return;
    }
    let Ok(body) = serde_json::from_slice::<BatchBody>(bytes) else { return };
    if check_batch(&body).is_err() {
        return;
    }
    assert!(!body.chunks.is_empty());
    for c in body.chunks {
        if let Ok(ok) = check_chunk(&c.chunk_id, &c.chunk_data_base64, c.metadata, MAX) {
            accepted(&c.chunk_id, ok);
        }
    }
}

/// What one processed chunk reports. `hash` is the BLAKE3 of the plaintext (not SHA-256);
/// `encrypted_hash` is the BLAKE3 of the sealed chunk, and for a chunk the engine split
/// into several sealed parts, of the parts' sealed bytes concatenated in log order.
struct Processed {
    stored: Stored,
    encrypted_hash: String,
    worker_id: String,
}

/// The chunk path for one chunk, on a blocking worker.
fn process_one(
    engine: &Engine,
    sid: &str,
    chunk_id: &str,
    data: &[u8],
    meta: Map<String, Value>,
) -> Result<Processed, EngineError> {
    let worker_id = worker_id();
    let stored = ingest(engine, sid, Some(chunk_id), data, meta)?;
    let a = &stored.appended;
    let encrypted_hash = if a.parts <= 1 {
        a.sealed_blake3.clone()
    } else {
        let mut h = blake3::Hasher::new();
        for i in a.first_index..a.first_index + u64::from(a.parts) {
            let sealed = engine
                .store()
                .get_sealed(sid, i)?
                .ok_or_else(|| EngineError::Internal(format!("part {i} vanished right after its commit")))?;
            h.update(&sealed);
        }
        hex(h.finalize().as_bytes())
    };
    Ok(Processed { stored, encrypted_hash, worker_id })
}

fn chunk_metadata(p: &Processed, sid: &str, chunk_id: &str, took_ms: f64) -> Value {
    let a = &p.stored.appended;
    json!({
        "chunk_id": chunk_id,
        "session_id": sid,
        "original_size": a.plain_len,
        "encrypted_size": a.stored_len,
        "compression_ratio": ratio(a.plain_len, a.stored_len),
        "compressed": a.compressed,
        "hash": a.plain_blake3,
        "hash_algorithm": "blake3",
        "encrypted_hash": p.encrypted_hash,
        "log_index": a.first_index,
        "parts": a.parts,
        "timestamp": now_rfc3339(),
        "processing_time_ms": took_ms,
        "engine_time_ms": a.took.as_secs_f64() * 1e3,
        "worker_id": p.worker_id,
    })
}

async fn process(
    State(engine): State<AppState>,
    Extension(pool): Extension<Arc<Pool>>,
    PJson(body): PJson<ProcessBody>,
) -> PResult<Json<Value>> {
    let t0 = Instant::now();
    let (data, meta) = check_process(&body, engine.cfg.max_chunk_bytes)?;
    let (e, s, c) = (engine.clone(), body.session_id.clone(), body.chunk_id.clone());
    let p = pool.run(move || process_one(&e, &s, &c, &data, meta)).await?;
    let took_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(Json(json!({
        "success": true,
        "chunk_id": body.chunk_id,
        "session_id": body.session_id,
        "metadata": chunk_metadata(&p, &body.session_id, &body.chunk_id, took_ms),
        "processing_time_ms": took_ms,
        "timestamp": now_rfc3339(),
    })))
}

/// Each chunk is processed (and committed) on its own; a failure is reported in its
/// result and does not undo the chunks before it. The session itself must be usable,
/// else the whole batch is refused.
async fn process_batch(
    State(engine): State<AppState>,
    Extension(pool): Extension<Arc<Pool>>,
    PJson(body): PJson<BatchBody>,
) -> PResult<Json<Value>> {
    check_batch(&body)?;
    let (e, s) = (engine.clone(), body.session_id.clone());
    run_blocking(move || ensure_data_session(&e, &s)).await?;
    let total = body.chunks.len();
    let mut results = Vec::with_capacity(total);
    let mut ok = 0usize;
    for chunk in body.chunks {
        let t0 = Instant::now();
        let chunk_id = chunk.chunk_id.clone();
        let outcome: PResult<Processed> = async {
            let (data, meta) =
                check_chunk(&chunk.chunk_id, &chunk.chunk_data_base64, chunk.metadata, engine.cfg.max_chunk_bytes)?;
            let (e, s, c) = (engine.clone(), body.session_id.clone(), chunk.chunk_id.clone());
            pool.run(move || process_one(&e, &s, &c, &data, meta)).await
        }
        .await;
        let took_ms = t0.elapsed().as_secs_f64() * 1e3;
        results.push(match outcome {
            Ok(p) => {
                ok += 1;
                json!({
                    "success": true,
                    "chunk_id": chunk_id,
                    "metadata": chunk_metadata(&p, &body.session_id, &chunk_id, took_ms),
                    "error_message": null,
                    "processing_time_ms": took_ms,
                })
            }
            Err(ProcError(err)) => {
                if let ApiError::Internal(m) = &err {
                    tracing::error!(session = %body.session_id, chunk = %chunk_id, error = %m, "batch chunk failed");
                }
                json!({
                    "success": false,
                    "chunk_id": chunk_id,
                    "metadata": null,
                    "error_message": err.message(),
                    "error_code": format!("LUCID_ERR_{}", err.status().as_u16()),
                    "processing_time_ms": took_ms,
                })
            }
        });
    }
    Ok(Json(json!({
        "success": ok == total,
        "session_id": body.session_id,
        "total_chunks": total,
        "successful_chunks": ok,
        "failed_chunks": total - ok,
        "results": results,
        "timestamp": now_rfc3339(),
    })))
}

// ----- sessions -----------------------------------------------------------------------------

/// The root of the session's signed manifest: set by finalize (and, for camera sessions,
/// by stop). 404 until then, and while a camera session records again (the stored root
/// no longer covers the log).
async fn merkle_root(State(engine): State<AppState>, Path(sid): Path<String>) -> PResult<Json<Value>> {
    let e = engine.clone();
    let s = sid.clone();
    let row = run_blocking(move || e.get(&s)).await?;
    let recording = crate::engine::is_live(row.status);
    match row.root {
        Some(root) if !recording => Ok(Json(json!({
            "session_id": sid,
            "merkle_root": root,
            "tree_size": row.chunk_count,
            "finalized": row.finalized,
            "timestamp": now_rfc3339(),
        }))),
        _ => Err(ApiError::NotFound(format!("session {sid} has no Merkle root yet; finalize it first")).into()),
    }
}

/// Signs the final checkpoint and manifest; the session takes no more chunks. Finalizing
/// again answers the same root without signing anything new.
async fn finalize(State(engine): State<AppState>, Path(sid): Path<String>) -> PResult<Json<Value>> {
    let e = engine.clone();
    let s = sid.clone();
    let row = run_blocking(move || {
        let row = e.get(&s)?;
        if row.finalized && row.root.is_some() { Ok(row) } else { e.finalize(&s) }
    })
    .await?;
    Ok(Json(json!({
        "session_id": sid,
        "merkle_root": row.root,
        "tree_size": row.chunk_count,
        "finalized": true,
        "timestamp": now_rfc3339(),
    })))
}

// ----- service routes -----------------------------------------------------------------------

/// Counters of the engine's chunk path (every chunk it committed or failed, uploads and
/// camera alike: this service is that path) and the pool's live gauges.
fn metrics_body(engine: &Engine, pool: &Pool) -> Value {
    let m = &engine.metrics;
    let ok = m.chunks_ok.load(Relaxed);
    let failed = m.chunks_failed.load(Relaxed);
    let (_, _, sum_secs) = m.histogram();
    let total_ms = sum_secs * 1e3;
    json!({
        "chunks_processed": ok,
        "chunks_failed": failed,
        "total_processing_time_ms": total_ms,
        "average_processing_time_ms": if ok + failed > 0 { total_ms / (ok + failed) as f64 } else { 0.0 },
        "active_workers": pool.active.load(Relaxed),
        "queue_size": pool.waiting.load(Relaxed),
    })
}

async fn metrics(State(engine): State<AppState>, Extension(pool): Extension<Arc<Pool>>) -> Json<Value> {
    Json(json!({
        "service": SERVICE,
        "timestamp": now_rfc3339(),
        "metrics": metrics_body(&engine, &pool),
    }))
}

/// 503 when chunks could not be stored: the store does not answer, or the data
/// partition has less than `min_free_bytes` free.
async fn health(State(engine): State<AppState>, Extension(pool): Extension<Arc<Pool>>) -> Response {
    let e = engine.clone();
    let store = super::blocking(move || e.list().map(|_| ())).await;
    let free = free_space(&engine.cfg.data_dir);
    let problem = match store {
        Err(_) => Some("the store does not answer".to_owned()),
        Ok(()) if free < engine.cfg.min_free_bytes => Some(format!(
            "the data partition has {free} bytes free, less than the {} required to accept chunks",
            engine.cfg.min_free_bytes
        )),
        Ok(()) => None,
    };
    if let Some(error) = problem {
        let body = json!({"status": "unhealthy", "service": SERVICE, "timestamp": now_rfc3339(), "error": error});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({
        "status": "healthy",
        "service": SERVICE,
        "version": VERSION,
        "is_running": true,
        "metrics": metrics_body(&engine, &pool),
        "config": {
            "max_workers": pool.max_workers,
            "queue_size": pool.queue_limit,
            "max_chunk_size": engine.cfg.max_chunk_bytes,
        },
        "available_space_bytes": free,
        "timestamp": now_rfc3339(),
    }))
    .into_response()
}

/// Settings that shape processing. Keys, tokens and wrapped keys are never listed.
async fn config(State(engine): State<AppState>, Extension(pool): Extension<Arc<Pool>>) -> Json<Value> {
    let c = &engine.cfg;
    Json(json!({
        "service": SERVICE,
        "configuration": {
            "version": VERSION,
            "max_chunk_size": c.max_chunk_bytes,
            "max_request_body": c.max_body_bytes,
            "max_sealed_part": crate::engine::MAX_PART,
            "max_workers": pool.max_workers,
            "queue_size": pool.queue_limit,
            "compression": {
                "algorithm": "zstd",
                "level": c.record.zstd_level,
                "kept_when_saving_at_least_pct": c.record.compress_min_saving_pct,
            },
            "encryption": {
                "cipher_for_new_sessions": lucid_core::seal::Cipher::preferred_for_this_cpu().name(),
                "keys": "one data key per session, stored only wrapped under the device key",
                "associated_data": "session id and chunk index are bound into every seal",
            },
            "hashing": {"chunk": "blake3", "merkle": "RFC 9162 over SHA-256"},
            "checkpoints": {
                "every_chunks": c.record.checkpoint_every_chunks,
                "every_secs": c.record.checkpoint_every_secs,
            },
            "storage": {"backend": "redb", "min_free_bytes": c.min_free_bytes},
        },
        "timestamp": now_rfc3339(),
    }))
}
