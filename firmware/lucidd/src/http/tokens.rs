//! Credential routes on 8087: named viewer tokens (admin), short-lived share URLs for
//! players (viewer or admin), the admin password (`PUT /api/v1/admin/password`) and the
//! report of the owner's settings file (`GET /api/v1/settings`, admin).
//!
//! Parses and renders only: tokens are created, hashed, stored and revoked by
//! `engine::access`, and who may call these routes is decided by `auth` like everywhere
//! else. A token's secret appears in exactly one response, the one that creates it.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde_json::json;

use super::{ApiResult, AppState, LJson, blocking};
use crate::engine::access::{Role, SHARE_TTL_DEFAULT_SECS};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", post(create).get(list))
        .route("/api/v1/tokens/{id}", delete(revoke))
        .route("/api/v1/sessions/{id}/share", post(share))
        .route("/api/v1/admin/password", put(change_password))
        .route("/api/v1/settings", get(settings))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    current_password: Option<String>,
    new_password: String,
}

// Not `Debug`: the body holds two passwords.
async fn change_password(State(e): State<AppState>, LJson(body): LJson<ChangePassword>) -> ApiResult<Response> {
    let removed =
        blocking(move || e.change_admin_password(body.current_password.as_deref(), &body.new_password)).await?;
    Ok(axum::Json(json!({"changed": true, "generated_password_file_removed": removed})).into_response())
}

/// `GET /api/v1/settings` (admin): what the last settings file did, its error in full
/// (which may quote a line of the file, so only the admin sees it), and the kept
/// settings that are not secrets.
async fn settings(State(e): State<AppState>) -> ApiResult<axum::Json<serde_json::Value>> {
    let out = blocking(move || {
        let c = &e.cfg;
        Ok(json!({
            "file": crate::settings::Status::load(&c.data_dir),
            "dir": c.settings.dir.display().to_string(),
            "admin_password_set": e.has_admin_password(),
            "hostname": e.hostname(),
            "timezone": c.time.timezone,
            "time_servers": c.time.servers,
            "wifi": c.network.wifi.iter().map(|w| json!({"ssid": w.ssid, "country": w.country, "hidden": w.hidden, "psk_set": !w.psk_hash.is_empty()})).collect::<Vec<_>>(),
        }))
    })
    .await?;
    Ok(axum::Json(out))
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
