//! The device log's routes on 8087 (docs/design.md, "Device log"): its latest signed
//! checkpoint, a bounded page of events, inclusion and consistency proofs, and the device
//! evidence tar, streamed.
//!
//! Owns the wire shapes of these routes only; the log itself is the engine's. All are
//! public (`auth::PUBLIC`): the events hold session ids, kinds, counts, digests, times and
//! fixed deletion reasons, never a session's name or any secret, and a session id is
//! already public through the session checkpoint routes (it is the checkpoints' origin).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};

use super::appliance::stream_body;
use super::{ApiError, ApiResult, AppState, LQuery, blocking};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/device/log/checkpoint", get(checkpoint))
        .route("/api/v1/device/log/entries", get(entries))
        .route("/api/v1/device/log/proof", get(proof))
        .route("/api/v1/device/log/consistency", get(consistency))
        .route("/api/v1/device/evidence", get(evidence))
}

async fn checkpoint(State(e): State<AppState>) -> ApiResult<Response> {
    let last = blocking(move || e.device_checkpoint()).await?;
    let (_, note) = last.ok_or_else(|| ApiError::NotFound("the device log is empty".into()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

#[derive(Debug, Deserialize)]
struct EntriesQuery {
    #[serde(default)]
    start: u64,
    end: Option<u64>,
}

/// Events `[start, end)`, at most 1000 of them: each as its canonical bytes (base64),
/// decoded alongside for reading.
async fn entries(State(e): State<AppState>, LQuery(q): LQuery<EntriesQuery>) -> ApiResult<axum::Json<Value>> {
    if q.end.is_some_and(|end| end < q.start) {
        return Err(ApiError::validation(&["query", "end"], "must not be less than start"));
    }
    let list = blocking(move || e.device_entries(q.start, q.end)).await?;
    let items: Vec<Value> = list
        .into_iter()
        .map(|(index, bytes)| {
            let decoded = lucid_core::devlog::Event::decode(&bytes).map(|ev| describe(&ev)).unwrap_or(Value::Null);
            json!({"index": index, "event": B64.encode(&bytes), "decoded": decoded})
        })
        .collect();
    let next = items.last().and_then(|v| v["index"].as_u64()).map(|i| i + 1);
    Ok(axum::Json(json!({"start": q.start, "entries": items, "next": next})))
}

/// A readable form of an event (the canonical bytes are what is hashed).
fn describe(ev: &lucid_core::devlog::Event) -> Value {
    use lucid_core::devlog::EventKind as K;
    let h = |b: &[u8; 32]| crate::util::hex(b);
    let mut v = match &ev.kind {
        K::SessionCreated { session_id, kind } => {
            json!({"type": "session_created", "session_id": session_id, "kind": kind})
        }
        K::SessionHead { session_id, generation, tree_size, root, manifest_digest } => json!({
            "type": "session_head", "session_id": session_id, "generation": generation,
            "tree_size": tree_size, "root": h(root), "manifest_sha256": h(manifest_digest),
        }),
        K::SessionDeleted { session_id, by, reason } => {
            json!({"type": "session_deleted", "session_id": session_id, "by": by.as_str(), "reason": reason})
        }
        K::KeyRotated { new_key } => json!({"type": "key_rotated", "new_key": h(new_key)}),
        K::FirmwareCommitted { version, build } => {
            json!({"type": "firmware_committed", "version": version, "build": build})
        }
        K::ClockSynchronised { offset_us } => json!({"type": "clock_synchronised", "offset_us": offset_us}),
    };
    v["at_us"] = json!(ev.at_us);
    v
}

#[derive(Debug, Deserialize)]
struct ProofQuery {
    index: u64,
    tree_size: Option<u64>,
}

async fn proof(State(e): State<AppState>, LQuery(q): LQuery<ProofQuery>) -> ApiResult<axum::Json<Value>> {
    let (size, leaf, path, root) = blocking(move || e.device_inclusion(q.index, q.tree_size)).await?;
    Ok(axum::Json(json!({
        "index": q.index,
        "tree_size": size,
        "leaf_hash": B64.encode(leaf),
        "root_hash": B64.encode(root),
        "inclusion_path": path.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

async fn consistency(State(e): State<AppState>, LQuery(q): LQuery<ConsistencyQuery>) -> ApiResult<axum::Json<Value>> {
    let (a, b, path) = blocking(move || e.device_consistency(q.from, q.to)).await?;
    Ok(axum::Json(json!({
        "from": q.from, "to": q.to,
        "from_root": B64.encode(a),
        "to_root": B64.encode(b),
        "consistency_path": path.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
    })))
}

async fn evidence(State(e): State<AppState>) -> ApiResult<Response> {
    let body = stream_body(move |w| e.write_device_evidence(w))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"device-evidence.tar\"".to_owned()),
        ],
        body,
    )
        .into_response())
}
