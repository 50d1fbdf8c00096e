//! The network routes on 8087: `GET /api/v1/network` (admin: the interfaces, their
//! addresses and the Wi-Fi client's state) and `PUT /api/v1/network` (admin: the Wi-Fi
//! networks to join, kept in the device's settings and applied at once).
//!
//! Parses, validates and renders only: the networks are validated and hashed by
//! `settings` (the same rules as the owner's settings file), kept by its one writer, and
//! joined by `wifi`. A passphrase or PSK never appears in a response (only `psk_set`), and
//! a rejected body changes nothing.

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, AppState, LJson, blocking};
use crate::engine::{Engine, EngineError};
use crate::settings::WifiIn;

/// A body of 16 networks with long SSIDs and passphrases fits many times over.
const MAX_BODY_BYTES: usize = 16 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/network", get(read).put(write)).layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// The report `GET /api/v1/network` gives (and `PUT` answers with).
pub fn report(e: &Engine) -> Value {
    let status = e.wifi.status();
    let networks: Vec<Value> = e
        .wifi
        .networks()
        .iter()
        .map(|w| json!({"ssid": w.ssid, "country": w.country, "hidden": w.hidden, "psk_set": !w.psk_hash.is_empty()}))
        .collect();
    let mut wifi = serde_json::to_value(&status).expect("status serialises");
    wifi["networks"] = Value::Array(networks);
    json!({
        "hostname": e.hostname(),
        "interfaces": crate::wifi::interfaces().into_iter().filter(|i| i.kind != "loopback").collect::<Vec<_>>(),
        "wifi": wifi,
    })
}

async fn read(State(e): State<AppState>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(blocking(move || Ok(report(&e))).await?))
}

// Not `Debug`: the body may hold passphrases.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutNetwork {
    wifi: Vec<WifiIn>,
}

async fn write(State(e): State<AppState>, LJson(body): LJson<PutNetwork>) -> ApiResult<axum::Json<Value>> {
    let out = blocking(move || {
        set_wifi(&e, body.wifi)?;
        Ok(report(&e))
    })
    .await?;
    Ok(axum::Json(out))
}

/// Validates and hashes `input`, keeps it as `[network] wifi` in the kept settings, then
/// hands it to the supervisor. Nothing is written unless all of it is valid.
fn set_wifi(e: &Engine, input: Vec<WifiIn>) -> Result<(), EngineError> {
    let _one = e.wifi.put_lock.lock().unwrap_or_else(|p| p.into_inner());
    let nets = crate::settings::wifi_networks("PUT /api/v1/network", input)
        .map_err(|err| EngineError::BadInput(err.to_string()))?;
    let mut cfg = e.cfg.clone();
    cfg.network.wifi = nets.clone();
    cfg.validate().map_err(|err| EngineError::BadInput(err.to_string()))?;
    let dir = &e.cfg.data_dir;
    let mut kept = crate::config::Config::kept_settings(dir).map_err(|err| EngineError::Internal(err.to_string()))?;
    let network = kept
        .entry("network")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| EngineError::Internal("kept settings: [network] is not a table".into()))?;
    network.insert("wifi".into(), toml::Value::try_from(&nets).expect("networks serialise"));
    crate::settings::keep(dir, &kept, "PUT /api/v1/network").map_err(|err| EngineError::Internal(err.to_string()))?;
    let ssids: Vec<&str> = nets.iter().map(|n| n.ssid.as_str()).collect();
    tracing::info!(?ssids, "wifi networks changed");
    e.wifi.set_networks(nets);
    Ok(())
}
