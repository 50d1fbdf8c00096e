//! Credential routes on 8087: named viewer tokens (admin) and short-lived share URLs for
//! players (viewer or admin).
//!
//! Parses and renders only: tokens are created, hashed, stored and revoked by
//! `engine::access`, and who may call these routes is decided by `auth` like everywhere
//! else. A token's secret appears in exactly one response, the one that creates it.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde::Deserialize;
use serde_json::json;

use super::{ApiResult, AppState, LJson, blocking};
use crate::engine::access::{Role, SHARE_TTL_DEFAULT_SECS};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", post(create).get(list))
        .route("/api/v1/tokens/{id}", delete(revoke))
        .route("/api/v1/sessions/{id}/share", post(share))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    #[serde(default = "viewer")]
    role: Role,
}

fn viewer() -> Role {
    Role::Viewer
}

async fn create(State(e): State<AppState>, LJson(body): LJson<CreateToken>) -> ApiResult<Response> {
    let t = blocking(move || e.create_token(&body.name, body.role)).await?;
    Ok((StatusCode::CREATED, axum::Json(t)).into_response())
}

async fn list(State(e): State<AppState>) -> axum::Json<serde_json::Value> {
    let rows: Vec<_> = e.list_tokens().iter().map(|r| r.public()).collect();
    axum::Json(json!({"tokens": rows}))
}

async fn revoke(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    blocking(move || e.revoke_token(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShareBody {
    ttl_seconds: Option<u64>,
}

/// `POST /api/v1/sessions/{id}/share`: URLs a player can open without any header. The body
/// is optional (`{}` or none at all).
async fn share(State(e): State<AppState>, Path(id): Path<String>, body: axum::body::Bytes) -> ApiResult<Response> {
    let body: ShareBody = if body.iter().all(u8::is_ascii_whitespace) {
        ShareBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|err| super::ApiError::validation(&["body"], err.to_string()))?
    };
    let ttl = body.ttl_seconds.unwrap_or(SHARE_TTL_DEFAULT_SECS);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let sid = id.clone();
    let (exp, sig) = blocking(move || e.share(&sid, ttl, now)).await?;
    let q = format!("exp={exp}&sig={sig}");
    let expires_at =
        time::OffsetDateTime::from_unix_timestamp(exp as i64).map(crate::util::rfc3339).unwrap_or_default();
    Ok(axum::Json(json!({
        "playlist_url": format!("/api/v1/sessions/{id}/media/playlist.m3u8?{q}"),
        "export_url": format!("/api/v1/sessions/{id}/export.mp4?{q}"),
        "expires_at": expires_at,
    }))
    .into_response())
}
