//! The HTTP surface: five Lucid services on five ports, one router each, all over one
//! shared `Engine`.
//!
//! Owns what every service shares: the error type and its FastAPI-style bodies, the JSON
//! extractor that answers 422 instead of panicking, bearer-token auth for mutating routes,
//! CORS, body limits, and binding the listeners. Each service module has the same shape:
//! `router(state) -> Router`, tested through the router and through a real socket. No
//! handler touches the store directly, and none blocks the runtime: engine calls that
//! commit or read chunks go through `blocking`.

pub mod appliance;
pub mod gateway;
pub mod pipeline;
pub mod processor;
pub mod recorder;
pub mod storage;
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

/// The one error type of the HTTP boundary. Client errors carry a message that is safe
/// to show; server errors never leak internals (they are logged with a request id).
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    Conflict(String),
    PayloadTooLarge(String),
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
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
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
            | ApiError::InsufficientStorage(m)
            | ApiError::Unavailable(m) => m.clone(),
            ApiError::Unauthorized => "missing or invalid bearer token".into(),
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
            EngineError::BadState(m) | EngineError::BadInput(m) => ApiError::BadRequest(m),
            EngineError::Full(m) => ApiError::InsufficientStorage(format!("storage full: {m}")),
            EngineError::Unavailable(m) => ApiError::Unavailable(m),
            EngineError::Internal(m) => ApiError::Internal(m),
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
pub fn server_error_body(code: u16, request_id: &str) -> Value {
    json!({"error": {
        "code": format!("LUCID_ERR_{code}"),
        "message": "Internal server error",
        "request_id": request_id,
        "timestamp": now_rfc3339(),
    }})
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
        let mut resp = match self {
            ApiError::Internal(m) => {
                let rid = crate::util::short_id("req");
                tracing::error!(request_id = %rid, error = %m, "internal error");
                (status, axum::Json(server_error_body(5000, &rid))).into_response()
            }
            ApiError::Validation(list) => (status, axum::Json(json!({"detail": list}))).into_response(),
            ApiError::Unauthorized => {
                let mut r = (status, axum::Json(json!({"detail": self.message()}))).into_response();
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            other => (status, axum::Json(json!({"detail": other.message()}))).into_response(),
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

/// Compares in constant time so the token cannot be guessed byte by byte from timing.
fn token_matches(given: &[u8], want: &[u8]) -> bool {
    if given.len() != want.len() {
        return false;
    }
    given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

pub fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .is_some_and(|t| token_matches(t.trim().as_bytes(), token.as_bytes()))
}

/// Every mutating request needs the bearer token; reads, health and metrics stay open.
async fn require_token(
    axum::extract::State(engine): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let m = req.method();
    let mutating = !(m == Method::GET || m == Method::HEAD || m == Method::OPTIONS);
    if mutating && !bearer_ok(req.headers(), &engine.api_token) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

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

/// Wraps a service router with what all five share: auth, body limit, CORS, a JSON 404
/// for unknown paths, and reading away what a handler left of a request body.
pub fn finish(router: Router<AppState>, engine: &AppState) -> Router {
    router
        .fallback(|| async { ApiError::NotFound("Not Found".into()) })
        .layer(axum::middleware::from_fn_with_state(engine.clone(), require_token))
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
        let Some(mut body) = self.0.take() else { return };
        if axum::body::HttpBody::is_end_stream(&body) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
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
    vec![
        ("pipeline", p.pipeline, finish(pipeline::router(), engine)),
        ("recorder", p.recorder, finish(recorder::router(), engine)),
        // Outermost, so auth and the 404 fallback also answer in the processor's shape.
        (
            "processor",
            p.processor,
            finish(processor::router(), engine).layer(axum::middleware::from_fn(processor::shape_errors)),
        ),
        ("storage", p.storage, finish(storage::router(), engine)),
        ("gateway", p.gateway, finish(gateway::router().merge(appliance::router()).merge(update::router()), engine)),
    ]
}

/// Binds all five listeners first (so a busy port fails the start, not a request) and
/// serves until `shutdown` resolves. Returns the bound addresses for logging and tests.
pub async fn serve(
    engine: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut bound = Vec::new();
    for (name, port, router) in routers(&engine) {
        let addr = SocketAddr::new(engine.cfg.bind, port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the {name} service: {e}"))?;
        tracing::info!(service = name, addr = %listener.local_addr()?, "listening");
        bound.push((listener, router));
    }
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    for (listener, router) in bound {
        let mut rx = tx.subscribe();
        tasks.push(tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.recv().await;
                })
                .await
        }));
    }
    shutdown.await;
    let _ = tx.send(());
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Free bytes on the filesystem holding `path` (statvfs), for the storage health checks.
pub fn free_space(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return 0 };
    // SAFETY: statvfs only writes into the zeroed struct we pass; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) == 0 { s.f_bavail as u64 * s.f_frsize as u64 } else { 0 }
    }
}
