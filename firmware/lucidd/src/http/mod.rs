//! The HTTP surface: five Lucid services on five ports, one router each, all over one
//! shared `Engine`.
//!
//! Owns what every service shares: the error type and its one renderer (FastAPI's `detail`
//! next to the original gateway's `error` object, naming the service that answers), the JSON
//! extractor that answers 422 instead of panicking, access control (default deny, in
//! `auth`), CORS, body limits, and binding the listeners (`serve`: timeouts and connection
//! limits). Each service module has the same shape:
//! `router(state) -> Router`, tested through the router and through a real socket. No
//! handler touches the store directly, and none blocks the runtime: engine calls that
//! commit or read chunks go through `blocking`.

pub mod appliance;
pub mod auth;
pub mod device_log;
pub mod gateway;
pub mod network;
pub mod page;
pub mod pipeline;
pub mod processor;
pub mod recorder;
pub mod serve;
pub mod storage;
pub mod tokens;
pub mod update;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::engine::{Engine, EngineError};
use crate::util::now_rfc3339;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub type AppState = Arc<Engine>;

/// One body's fuzz entry: serde, then the handler's pure rules, panicking on a broken
/// promise.
type FuzzBody = fn(&[u8]);

/// The JSON request bodies clients send, by the selector byte that names them in the
/// fuzz target `json_bodies` (and its seed files): gateway create and update, storage
/// upload, pipeline push, processor process and batch, recorder start.
const FUZZ_BODIES: [(u8, FuzzBody); 7] = [
    (b'c', gateway::fuzz_create_session),
    (b'u', gateway::fuzz_update_session),
    (b's', storage::fuzz_upload),
    (b'p', pipeline::fuzz_push),
    (b'x', |b| processor::fuzz_process(b, false)),
    (b'b', |b| processor::fuzz_process(b, true)),
    (b'r', recorder::fuzz_start),
];

/// The fuzz target `json_bodies` (fuzz/): the first byte picks the body (one of the
/// selector letters of `FUZZ_BODIES`, any other byte taken modulo their number), the rest
/// goes through that handler's parse and pure rules, which panic if an accepted body
/// breaks a promise of the contract.
#[doc(hidden)]
pub fn fuzz_json_body(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else { return };
    let f = FUZZ_BODIES
        .iter()
        .find(|(c, _)| *c == sel)
        .map_or(FUZZ_BODIES[usize::from(sel) % FUZZ_BODIES.len()].1, |(_, f)| *f);
    f(body);
}

/// The one error type of the HTTP boundary. Client errors carry a message that is safe
/// to show; server errors never leak internals (they are logged with a request id).
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    /// 401 with a reason worth telling the client (e.g. a token sent in a URL).
    UnauthorizedBecause(String),
    /// A valid credential whose role does not allow the request.
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    PayloadTooLarge(String),
    /// 416: a range that selects nothing.
    RangeNotSatisfiable(String),
    /// Request validation failure, FastAPI's 422 with a list of problems.
    Validation(Vec<Value>),
    InsufficientStorage(String),
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::UnauthorizedBecause(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The human message (for client errors) or a generic one (for server errors).
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::RangeNotSatisfiable(m)
            | ApiError::InsufficientStorage(m)
            | ApiError::Unavailable(m)
            | ApiError::UnauthorizedBecause(m)
            | ApiError::Forbidden(m) => m.clone(),
            ApiError::Unauthorized => "missing or invalid credential: send Authorization: Bearer <token>".into(),
            ApiError::Validation(_) => "request validation failed".into(),
            ApiError::Internal(_) => "Internal server error".into(),
        }
    }

    pub fn bad(m: impl Into<String>) -> ApiError {
        ApiError::BadRequest(m.into())
    }

    pub fn validation(loc: &[&str], msg: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![json!({"loc": loc, "msg": msg.into(), "type": "value_error"})])
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound { what, id } => ApiError::NotFound(format!("{} {id} not found", capitalize(what))),
            EngineError::Conflict(m) => ApiError::Conflict(m),
            e @ EngineError::Exists { .. } => ApiError::Conflict(e.to_string()),
            e @ EngineError::Transition { .. } => ApiError::BadRequest(e.to_string()),
            EngineError::BadState(m) | EngineError::BadInput(m) => ApiError::BadRequest(m),
            EngineError::EmptyRange(m) => ApiError::RangeNotSatisfiable(m),
            EngineError::Full(m) => ApiError::InsufficientStorage(format!("storage full: {m}")),
            EngineError::Unavailable(m) => ApiError::Unavailable(m),
            EngineError::Internal(m) => ApiError::Internal(m),
            e @ EngineError::KeyErased { .. } => ApiError::Conflict(e.to_string()),
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::Internal(format!("worker task: {e}"))
    }
}

/// The server-error body of the contract; the request id ties it to the log line.
pub fn server_error_body(code: u16, service: &str, request_id: &str) -> Value {
    json!({"error": {
        "code": format!("LUCID_ERR_{code}"),
        "message": "Internal server error",
        "service": service,
        "request_id": request_id,
        "timestamp": now_rfc3339(),
    }})
}

/// Which service answers a request and the request's id, for error bodies. Set by
/// `label_errors` around a whole service (so auth, the 404 fallback and extractor
/// rejections carry it too) and read by `ApiError::into_response`, which stays the one
/// place error bodies are written.
#[derive(Debug, Clone)]
struct ErrorContext {
    service: &'static str,
    request_id: String,
}

tokio::task_local! {
    static ERROR_CONTEXT: ErrorContext;
}

/// The client's `X-Request-ID` when it is a short printable token, else a fresh id: it
/// is echoed in the body, so it must not carry arbitrary bytes.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| crate::util::short_id("req"), str::to_owned)
}

/// Middleware naming the service in every error body it answers (`error.service`).
pub async fn label_errors(service: &'static str, req: Request, next: Next) -> Response {
    let ctx = ErrorContext { service, request_id: request_id(req.headers()) };
    ERROR_CONTEXT.scope(ctx, next.run(req)).await
}

fn error_context() -> ErrorContext {
    // Outside a service (a router under test on its own) the daemon answers for itself.
    ERROR_CONTEXT
        .try_with(Clone::clone)
        .unwrap_or_else(|_| ErrorContext { service: "lucidd", request_id: crate::util::short_id("req") })
}

/// The body of every client error: FastAPI's `detail` (a message, or the 422 problem
/// list) for the clients of the FastAPI services, next to the `error` object of the
/// original gateway's ErrorResponse for clients that read that.
pub fn client_error_body(status: StatusCode, message: &str, detail: Value, service: &str, request_id: &str) -> Value {
    json!({
        "detail": detail,
        "error": {
            "code": format!("LUCID_ERR_{}", status.as_u16()),
            "message": message,
            "service": service,
            "request_id": request_id,
            "timestamp": now_rfc3339(),
            "version": VERSION,
        },
    })
}

/// What went wrong, attached to every error response as an extension, so a service
/// with its own error shape (the chunk processor) can re-render errors raised outside
/// its handlers: auth, the 404 fallback, extractor rejections.
#[derive(Debug, Clone)]
pub struct Failure {
    pub message: String,
    /// The 422 problem list.
    pub details: Option<Value>,
    /// An internal error's text, for the log only (never sent).
    pub internal: Option<String>,
}

impl ApiError {
    pub fn failure(&self) -> Failure {
        Failure {
            message: self.message(),
            details: match self {
                ApiError::Validation(list) => Some(Value::Array(list.clone())),
                _ => None,
            },
            internal: match self {
                ApiError::Internal(m) => Some(m.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let failure = self.failure();
        let ErrorContext { service, request_id: rid } = error_context();
        let mut resp = match self {
            ApiError::Internal(m) => {
                tracing::error!(request_id = %rid, service, error = %m, "internal error");
                (status, axum::Json(server_error_body(5000, service, &rid))).into_response()
            }
            ApiError::Validation(list) => {
                let body = client_error_body(status, &failure.message, Value::Array(list), service, &rid);
                (status, axum::Json(body)).into_response()
            }
            other => {
                let body = client_error_body(status, &failure.message, json!(failure.message), service, &rid);
                let mut r = (status, axum::Json(body)).into_response();
                if matches!(other, ApiError::Unauthorized | ApiError::UnauthorizedBecause(_)) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                r
            }
        };
        resp.extensions_mut().insert(failure);
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking engine work (chunk commits, reads) off the async runtime.
pub async fn blocking<T, F>(f: F) -> ApiResult<T>
where
    F: FnOnce() -> Result<T, EngineError> + Send + 'static,
    T: Send + 'static,
{
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// `Json<T>` whose rejections are the contract's: 422 with FastAPI-style details for bad
/// JSON or wrong shapes, 413 for an oversized body, never a panic.
#[derive(Debug)]
pub struct LJson<T>(pub T);

impl<S, T> FromRequest<S> for LJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(LJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

pub fn json_rejection(rej: JsonRejection) -> ApiError {
    match rej {
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("request body too large".into())
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::Validation(vec![json!({
            "loc": ["body"], "msg": "expected Content-Type: application/json", "type": "content_type"
        })]),
        JsonRejection::JsonSyntaxError(e) => ApiError::Validation(vec![json!({
            "loc": ["body"], "msg": format!("invalid JSON: {}", e.body_text()), "type": "json_invalid"
        })]),
        JsonRejection::JsonDataError(e) => ApiError::Validation(vec![json!({
            "loc": ["body"], "msg": e.body_text(), "type": "value_error"
        })]),
        other => {
            if other.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body too large".into())
            } else {
                ApiError::Validation(vec![json!({"loc": ["body"], "msg": other.body_text(), "type": "value_error"})])
            }
        }
    }
}

/// Query strings that do not parse are 422s too.
#[derive(Debug)]
pub struct LQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for LQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(LQuery(v)),
            Err(e) => {
                Err(ApiError::Validation(vec![json!({"loc": ["query"], "msg": e.body_text(), "type": "value_error"})]))
            }
        }
    }
}

/// Cross-origin access: none unless `CORS_ORIGINS` names origins, so a web page a LAN user
/// happens to open cannot call the device with whatever the browser holds. `*` is honoured
/// when configured, and never together with credentials (tower-http refuses that pairing,
/// and we never ask for it).
fn cors(origins: &str) -> CorsLayer {
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    if origins.trim() == "*" {
        base.allow_origin(AllowOrigin::any())
    } else {
        let list: Vec<HeaderValue> =
            origins.split(',').map(str::trim).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
        base.allow_origin(list)
    }
}

/// Wraps a service router with what all five share: access control on every route (a
/// route layer, so it sees the matched template), body limit, CORS, a JSON 404 for unknown
/// paths, and reading away what a handler left of a request body.
pub fn finish(router: Router<AppState>, engine: &AppState) -> Router {
    router
        .route_layer(axum::middleware::from_fn_with_state(engine.clone(), auth::authorize))
        .fallback(|| async { ApiError::NotFound("Not Found".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(engine.cfg.max_body_bytes))
        .layer(cors(&engine.cfg.cors_origins))
        .layer(axum::middleware::from_fn(drain_unread_body))
        .with_state(engine.clone())
}

/// Most a refused request body is read away after its answer, and how long to wait for
/// more of it: bounded, so a client cannot keep a connection busy forever.
const DRAIN_MAX_BYTES: u64 = 64 << 20;
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// A request body that, dropped before its end (a 401, 413 or 422 answered early), is read
/// to the end in the background. Closing a socket with unread data makes the kernel reset
/// the connection, and a client still sending (curl, browsers: they do not wait for
/// `100 Continue`) then gets "connection reset" instead of the answer.
struct DrainOnDrop(Option<axum::body::Body>);

impl axum::body::HttpBody for DrainOnDrop {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.0.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(axum::body::HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.as_ref().map(axum::body::HttpBody::size_hint).unwrap_or_default()
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.0.take() else {
            return;
        };
        if axum::body::HttpBody::is_end_stream(&body) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut read = 0u64;
            while read < DRAIN_MAX_BYTES {
                let next =
                    std::future::poll_fn(|cx| axum::body::HttpBody::poll_frame(std::pin::Pin::new(&mut body), cx));
                match tokio::time::timeout(DRAIN_IDLE, next).await {
                    Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
                    _ => break,
                }
            }
        });
    }
}

async fn drain_unread_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    next.run(Request::from_parts(parts, axum::body::Body::new(DrainOnDrop(Some(body))))).await
}

/// Every service router, with its configured port.
pub fn routers(engine: &AppState) -> Vec<(&'static str, u16, Router)> {
    let p = &engine.cfg.ports;
    // Outermost, so auth and the 404 fallback also name their service.
    let label = |service: &'static str, r: Router| {
        r.layer(axum::middleware::from_fn(move |req, next| label_errors(service, req, next)))
    };
    vec![
        ("pipeline", p.pipeline, label("lucid-pipeline-manager", finish(pipeline::router(), engine))),
        ("recorder", p.recorder, label("lucid-session-recorder", finish(recorder::router(), engine))),
        // Outermost, so auth and the 404 fallback also answer in the processor's shape.
        (
            "processor",
            p.processor,
            finish(processor::router(), engine).layer(axum::middleware::from_fn(processor::shape_errors)),
        ),
        ("storage", p.storage, label("lucid-session-storage", finish(storage::router(), engine))),
        (
            "gateway",
            p.gateway,
            label(
                "lucid-session-api",
                finish(
                    gateway::router()
                        .merge(appliance::router())
                        .merge(device_log::router())
                        .merge(update::router())
                        .merge(tokens::router())
                        .merge(network::router()),
                    engine,
                ),
            ),
        ),
    ]
}

/// Binds all five listeners first (so a busy port fails the start, not a request) and
/// serves them through `serve::serve_listener` (timeouts, connection caps) until
/// `shutdown` resolves.
pub async fn serve(
    engine: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let nofile = serve::raise_nofile_limit();
    let mut limits = engine.cfg.http.clone();
    // Keep headroom under the open-files limit for the store, the camera, the encoder and
    // an update's slot device: connections are refused before the daemon runs dry.
    if nofile > 0 && (limits.max_connections as u64) + 128 > nofile {
        limits.max_connections = nofile.saturating_sub(128).max(16) as usize;
        tracing::warn!(nofile, max_connections = limits.max_connections, "open-files limit lowers the connection cap");
    }
    let _ = appliance::STREAMS.set(Arc::new(tokio::sync::Semaphore::new(limits.max_streams)));
    let mut bound = Vec::new();
    for (name, port, router) in routers(&engine) {
        let addr = SocketAddr::new(engine.cfg.bind, port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the {name} service: {e}"))?;
        tracing::info!(service = name, addr = %listener.local_addr()?, "listening");
        bound.push((listener, router));
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let totals = serve::Totals::new();
    let mut tasks = Vec::new();
    for (listener, router) in bound {
        tasks.push(tokio::spawn(serve::serve_listener(listener, router, limits.clone(), totals.clone(), rx.clone())));
    }
    shutdown.await;
    let _ = tx.send(true);
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Free bytes on the filesystem holding `path` (statvfs), for the storage health checks.
pub fn free_space(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs only writes into the zeroed struct we pass; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) == 0 { s.f_bavail as u64 * s.f_frsize as u64 } else { 0 }
    }
}
