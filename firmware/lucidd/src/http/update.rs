//! OTA update routes on 8087: `POST /api/v1/update` takes a signed bundle as the raw
//! request body and installs it into the inactive slot; `GET /api/v1/update` reports the
//! install state, progress, the running release and the last self-check. Documented in
//! `openapi.json`.
//!
//! Owns the mapping of install errors to statuses (400 bad bundle, 409 busy, 413 too
//! large, 503 not configured, 507 device full) and the reboot after a successful
//! install, which runs after the response is on its way. It must not buffer the body:
//! it lifts the global body limit for this route only and hands the stream to
//! `update::install`, which enforces its own cap (the slot sizes plus the bundle head).

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, header};
use axum::routing::get;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, AppState};
use crate::update::install::{InstallError, install};
use crate::update::{Updater, reboot, reboot_kind};

/// How long the reboot waits after an install, so the response reaches the client.
const REBOOT_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/update", get(status).post(upload)).layer(DefaultBodyLimit::disable())
}

const NOT_CONFIGURED: &str = "updates are not configured on this device";

async fn status(State(engine): State<AppState>) -> ApiResult<axum::Json<Value>> {
    let u = Updater::of(&engine);
    if !u.configured() {
        return Err(ApiError::Unavailable(NOT_CONFIGURED.into()));
    }
    Ok(axum::Json(tokio::task::spawn_blocking(move || u.status()).await?))
}

impl From<InstallError> for ApiError {
    fn from(e: InstallError) -> Self {
        use lucid_core::BundleError;
        match &e {
            InstallError::NotConfigured => ApiError::Unavailable(NOT_CONFIGURED.into()),
            InstallError::Busy | InstallError::OnTrial { .. } => ApiError::Conflict(e.to_string()),
            InstallError::Bundle(BundleError::PayloadTooLarge { .. }) | InstallError::TooLarge { .. } => {
                ApiError::PayloadTooLarge(e.to_string())
            }
            InstallError::Bundle(_) | InstallError::Body(_) => ApiError::BadRequest(e.to_string()),
            InstallError::Setup(_) => ApiError::Unavailable(e.to_string()),
            InstallError::Io { .. } if e.is_no_space() => ApiError::InsufficientStorage(e.to_string()),
            InstallError::Io { .. } | InstallError::ReadBack { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

async fn upload(State(engine): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<axum::Json<Value>> {
    let u = Updater::of(&engine);
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let installed = install(u.clone(), body, length).await?;
    let reboot_now = u.cfg.reboot_after_install;
    if reboot_now {
        let kind = reboot_kind(u.cfg.boot_control);
        let e = engine.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REBOOT_DELAY).await;
            // Close any recording cleanly (final checkpoint and manifest) before the
            // restart, then reboot into the armed slot.
            let err = tokio::task::spawn_blocking(move || {
                e.shutdown();
                reboot(kind)
            })
            .await;
            tracing::error!(?err, "reboot after install failed");
        });
    }
    Ok(axum::Json(json!({
        "state": u.phase(),
        "installed": installed,
        "rebooting": reboot_now,
    })))
}
