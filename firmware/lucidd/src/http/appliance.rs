//! The appliance's own routes on 8087, beyond the Lucid contract: device identity, the
//! record state and continuous recording's pause and resume, the recordings listing (the
//! timeline), signed manifests and checkpoints, Merkle proofs, decrypted media (init
//! segment, fragments, HLS playlist, a streamed MP4 export, clips of it) and the evidence
//! bundles (the session's, and a clip's). Documented in
//! `openapi.json`, served at `/api/v1/openapi.json`.
//!
//! Owns the streaming of large responses: export and evidence are produced on a blocking
//! thread into a bounded channel, so a long session is never held in memory whole. Who may
//! read what is not decided here but by `auth` (decrypted media needs a viewer credential
//! or a share URL; sealed evidence, proofs and signatures are public by design).

use std::io::Write;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::page::Page;
use super::{ApiError, ApiResult, AppState, LJson, LQuery, VERSION, blocking};
use crate::engine::clip::{ClipBound, ClipRange};
use crate::engine::{Engine, EngineError, Kind};
use crate::util::{hex, now_rfc3339};

const OPENAPI: &str = include_str!("../../openapi.json");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/device", get(device))
        .route("/api/v1/camera", get(camera).put(put_camera))
        .route("/api/v1/record", get(record))
        .route("/api/v1/record/pause", post(record_pause))
        .route("/api/v1/record/resume", post(record_resume))
        .route("/api/v1/recordings", get(recordings))
        .route("/api/v1/sessions/{id}/manifest", get(manifest))
        .route("/api/v1/sessions/{id}/checkpoint", get(checkpoint))
        .route("/api/v1/sessions/{id}/checkpoints", get(checkpoints))
        .route("/api/v1/sessions/{id}/chunks/{index}/proof", get(proof))
        .route("/api/v1/sessions/{id}/consistency", get(consistency))
        .route("/api/v1/sessions/{id}/media/{file}", get(media))
        .route("/api/v1/sessions/{id}/export.mp4", get(export))
        .route("/api/v1/sessions/{id}/evidence", get(evidence))
        .route("/api/v1/sessions/{id}/clip.mp4", get(clip_mp4))
        .route("/api/v1/sessions/{id}/clip-evidence", get(clip_evidence))
}

/// The query of a share URL (`POST /api/v1/sessions/{id}/share`), checked by
/// `auth::authorize` before a handler runs. The playlist hands it on to the init segment and
/// fragments, so a player that cannot send headers (a `<video>` tag, VLC) plays the session
/// with no token anywhere in a URL.
#[derive(Debug, Deserialize, Default)]
pub struct ShareQuery {
    pub exp: Option<u64>,
    pub sig: Option<String>,
}

impl ShareQuery {
    fn suffix(&self) -> String {
        match (&self.exp, &self.sig) {
            (Some(exp), Some(sig)) => format!("?exp={exp}&sig={sig}"),
            _ => String::new(),
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn device(State(e): State<AppState>) -> axum::Json<Value> {
    // The clock is "unsynchronized" until a time server answered (lucidd's own SNTP, or
    // systemd-timesyncd on a host that runs one): evidence timestamps from an unset Pi
    // clock start wherever the last boot left them, and a reader must be told so.
    let clock = e.clock.status();
    let synced = e.clock.synchronized() || std::path::Path::new("/run/systemd/timesync/synchronized").exists();
    let now = time::OffsetDateTime::now_utc();
    axum::Json(json!({
        "device_id": e.device_id,
        "hostname": e.hostname(),
        "public_key": B64.encode(e.public_key()),
        "public_key_hex": hex(&e.public_key()),
        "verifier_key": e.verifier_key(),
        "firmware_version": VERSION,
        "epoch": e.epoch(),
        "source": format!("{:?}", e.cfg.source).to_lowercase(),
        "clock": {
            "now": now_rfc3339(),
            "synchronized": synced,
            "plausible": now.year() >= 2024,
            "sntp": clock,
            // For showing times to people; every time the device records is UTC.
            "timezone": e.cfg.time.timezone,
        },
        "record": e.record_status().to_json(),
    }))
}

/// The record state: mode (`manual` or `continuous`), `recording`/`paused`/`stopped`, the
/// session the camera records now.
async fn record(State(e): State<AppState>) -> axum::Json<Value> {
    axum::Json(e.record_status().to_json())
}

/// Continuous mode: seals the current segment and starts none until resumed (or the
/// daemon restarts). 409 in manual mode.
async fn record_pause(State(e): State<AppState>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(blocking(move || e.pause_continuous()).await?.to_json()))
}

/// Continuous mode: starts a new segment. 409 in manual mode, or while the camera records
/// a session a client started.
async fn record_resume(State(e): State<AppState>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(blocking(move || e.resume_continuous()).await?.to_json()))
}

/// `from` and `to` of `GET /api/v1/recordings`: RFC 3339 (e.g. `2026-11-26T00:00:00Z`),
/// both required. Taken as text so a bad value is a 400 naming it.
#[derive(Debug, Deserialize)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

fn range_bound(name: &str, v: Option<&str>) -> ApiResult<i64> {
    let v = v.ok_or_else(|| {
        ApiError::bad(format!("query parameter `{name}` is required (RFC 3339, e.g. 2026-11-26T00:00:00Z)"))
    })?;
    let t = crate::util::parse_rfc3339(v).ok_or_else(|| {
        ApiError::bad(format!("`{name}` must be an RFC 3339 time such as 2026-11-26T00:00:00Z, not {v:?}"))
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| ApiError::bad(format!("`{name}` is out of range")))
}

/// The camera sessions overlapping `[from, to)` and the gaps of the range no session
/// covers (up to now): the web app's timeline. At most 31 days per request.
async fn recordings(State(e): State<AppState>, LQuery(q): LQuery<RangeQuery>) -> ApiResult<axum::Json<Value>> {
    let from = range_bound("from", q.from.as_deref())?;
    let to = range_bound("to", q.to.as_deref())?;
    let l = blocking(move || e.recordings(from, to)).await?;
    let t = crate::util::micros_to_rfc3339;
    let secs = |s: &crate::engine::recordings::Span| (s.end_us - s.start_us) as f64 / 1e6;
    let recs: Vec<Value> = l
        .recordings
        .iter()
        .map(|r| {
            json!({
                "id": r.row.id,
                "name": r.row.name,
                "start": t(r.span.start_us),
                "end": t(r.span.end_us),
                "duration_seconds": secs(&r.span),
                "size_bytes": r.row.stored_bytes,
                "locked": r.row.locked,
                "continuous": r.continuous,
                "status": r.row.status.as_str(),
            })
        })
        .collect();
    let gaps: Vec<Value> = l
        .gaps
        .iter()
        .map(|g| json!({"start": t(g.start_us), "end": t(g.end_us), "duration_seconds": secs(g)}))
        .collect();
    Ok(axum::Json(json!({
        "from": t(from),
        "to": t(to),
        "recordings": recs,
        "gaps": gaps,
        "truncated": l.truncated,
    })))
}

/// The camera: settings in effect, live state, and the V4L2 devices this board has.
fn camera_report(e: &Engine) -> Result<Value, EngineError> {
    use std::sync::atomic::Ordering::Relaxed;
    let settings = e.camera_settings()?;
    let st = &e.camera_state;
    let lock = |m: &std::sync::Mutex<Option<String>>| m.lock().map(|g| g.clone()).unwrap_or(None);
    #[cfg(target_os = "linux")]
    let devices: Vec<Value> = lucid_media::v4l2::scan(std::path::Path::new("/dev"))
        .into_iter()
        .map(|f| {
            json!({
                "path": f.path.display().to_string(),
                "driver": f.driver,
                "card": f.card,
                "role": format!("{:?}", f.role).to_lowercase(),
                "capture_formats": f.capture.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "output_formats": f.output.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    #[cfg(not(target_os = "linux"))]
    let devices: Vec<Value> = Vec::new();
    Ok(json!({
        "source": format!("{:?}", e.cfg.source).to_lowercase(),
        "settings": settings,
        "state": {
            "recording": st.running.load(Relaxed),
            "connected": st.connected.load(Relaxed),
            "disconnects": st.disconnects.load(Relaxed),
            "frames": st.frames.load(Relaxed),
            "dropped_frames": st.dropped.load(Relaxed),
            "opened": lock(&st.source),
            "encoder": lock(&st.encoder),
            "last_error": lock(&st.last_error),
        },
        "devices": devices,
    }))
}

async fn camera(State(e): State<AppState>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(blocking(move || camera_report(&e)).await?))
}

/// Replaces the given keys of the camera settings (the rest stay). Applies from the next
/// recording start; a running recording keeps its devices.
async fn put_camera(State(e): State<AppState>, LJson(body): LJson<Value>) -> ApiResult<axum::Json<Value>> {
    let Value::Object(changes) = body else {
        return Err(ApiError::BadRequest("the body must be a JSON object of camera settings".into()));
    };
    blocking(move || {
        let mut merged =
            serde_json::to_value(e.camera_settings()?).map_err(|x| EngineError::Internal(x.to_string()))?;
        if let Value::Object(m) = &mut merged {
            m.extend(changes);
        }
        let s: crate::config::CameraConfig =
            serde_json::from_value(merged).map_err(|x| EngineError::BadInput(format!("camera settings: {x}")))?;
        e.set_camera_settings(&s)?;
        camera_report(&e)
    })
    .await
    .map(axum::Json)
}

async fn manifest(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let sid = id.clone();
    let m = blocking(move || e.manifest(&sid)).await?;
    let (bytes, sig) = m.ok_or_else(|| ApiError::NotFound(format!("session {id} has no signed manifest yet")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            // The signature covers these exact bytes; it travels in a header so the body
            // stays byte-identical to what was signed.
            (header::HeaderName::from_static("x-lucid-signature"), B64.encode(&sig)),
        ],
        bytes,
    )
        .into_response())
}

async fn checkpoint(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let sid = id.clone();
    let last = blocking(move || e.last_checkpoint(&sid)).await?;
    let (_, note) = last.ok_or_else(|| ApiError::NotFound(format!("session {id} has no checkpoint yet")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

/// A session's signed checkpoints, ascending by tree size, one page at a time
/// (`limit` 1..=1000, default 100).
async fn checkpoints(State(e): State<AppState>, Path(id): Path<String>, page: Page) -> ApiResult<axum::Json<Value>> {
    let sid = id.clone();
    let (cps, more) = blocking(move || e.checkpoints_page(&sid, page.offset, page.limit)).await?;
    let count = cps.len();
    let list: Vec<Value> = cps.into_iter().map(|(size, note)| json!({"tree_size": size, "note": note})).collect();
    Ok(axum::Json(json!({"session_id": id, "checkpoints": list, "pagination": page.render(count, more)})))
}

#[derive(Debug, Deserialize)]
struct ProofQuery {
    tree_size: Option<u64>,
}

fn hashes(v: &[lucid_core::merkle::Hash]) -> Vec<String> {
    v.iter().map(|h| B64.encode(h)).collect()
}

async fn proof(
    State(e): State<AppState>,
    Path((id, index)): Path<(String, String)>,
    LQuery(q): LQuery<ProofQuery>,
) -> ApiResult<axum::Json<Value>> {
    let index: u64 = index.parse().map_err(|_| ApiError::validation(&["path", "index"], "must be a chunk index"))?;
    let sid = id.clone();
    let (size, leaf, path, root) = blocking(move || e.inclusion(&sid, index, q.tree_size)).await?;
    Ok(axum::Json(json!({
        "session_id": id,
        "index": index,
        "tree_size": size,
        "leaf_hash": B64.encode(leaf),
        "root_hash": B64.encode(root),
        "inclusion_path": hashes(&path),
        "hash": "SHA-256 (RFC 9162: leaf = H(0x00||record), node = H(0x01||l||r)); hashes are base64",
    })))
}

#[derive(Debug, Deserialize)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

async fn consistency(
    State(e): State<AppState>,
    Path(id): Path<String>,
    LQuery(q): LQuery<ConsistencyQuery>,
) -> ApiResult<axum::Json<Value>> {
    let sid = id.clone();
    let (a, b, path) = blocking(move || e.consistency(&sid, q.from, q.to)).await?;
    Ok(axum::Json(json!({
        "session_id": id,
        "from": q.from, "to": q.to,
        "from_root": B64.encode(a),
        "to_root": B64.encode(b),
        "consistency_path": hashes(&path),
    })))
}

/// A `Write` that feeds a response body through a bounded channel. When the client goes
/// away the receiver is dropped and the next write fails, which stops the producer.
pub(super) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

const STREAM_BUF: usize = 256 * 1024;

impl ChannelWriter {
    /// Sends bytes the caller owns as they are, after what is buffered: a decrypted
    /// fragment goes to the socket without another copy through the buffer.
    fn send(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.flush()?;
        self.push(bytes)
    }

    /// Hands one frame to the response body; fails once the client has gone.
    fn push(&self, bytes: Bytes) -> std::io::Result<()> {
        self.tx
            .blocking_send(Ok(bytes))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= STREAM_BUF {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.push(chunk)
    }
}

/// Streams being produced now, at most `[http] max_streams` (set once by `http::serve`;
/// the default where the routers are served some other way). Each holds a blocking thread
/// while its client reads; the cap keeps stalled downloads from taking the blocking pool
/// that chunk commits, `/health` and the self-check need. A stalled client is dropped by the
/// write timeout, which ends its producer and frees its slot.
pub static STREAMS: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();

fn stream_slot() -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    STREAMS
        .get_or_init(|| {
            std::sync::Arc::new(tokio::sync::Semaphore::new(crate::config::HttpConfig::default().max_streams))
        })
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable("too many downloads at once; retry in a few seconds".into()))
}

/// Runs `produce` on a blocking thread and streams what it writes as the response body.
pub(super) fn stream_body<F>(produce: F) -> ApiResult<Body>
where
    F: FnOnce(&mut ChannelWriter) -> Result<(), EngineError> + Send + 'static,
{
    let slot = stream_slot()?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut w = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(STREAM_BUF) };
        let r = produce(&mut w).and_then(|_| w.flush().map_err(|e| EngineError::Internal(e.to_string())));
        if let Err(e) = r {
            // Headers are gone already; an error item aborts the body so the client sees a
            // truncated transfer rather than a silently short file.
            tracing::warn!(error = %e, "streamed response aborted");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(Body::from_stream(stream))
}

/// The row of a camera session whose video the device can still decrypt: export, clips
/// and playback (init segment and playlist included, so a player is told at once) answer
/// 409 for a session whose key the device erased (`evidence.device_can_decrypt = false`).
fn camera_session(e: &Engine, sid: &str) -> Result<crate::engine::SessionRow, EngineError> {
    let row = e.get(sid)?;
    if row.kind != Kind::Camera {
        return Err(EngineError::BadInput(format!("session {sid} holds uploaded data, not video")));
    }
    if row.wrapped_key.is_empty() {
        return Err(EngineError::KeyErased { session: row.id });
    }
    Ok(row)
}

async fn media(
    State(e): State<AppState>,
    Path((id, file)): Path<(String, String)>,
    LQuery(q): LQuery<ShareQuery>,
) -> ApiResult<Response> {
    if file == "init.mp4" {
        let sid = id.clone();
        let init = blocking(move || {
            camera_session(&e, &sid)?;
            e.init_segment(&sid)
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("session {id} has no video yet")))?;
        return Ok(([(header::CONTENT_TYPE, "video/mp4")], init).into_response());
    }
    if file == "playlist.m3u8" {
        let sid = id.clone();
        let suffix = q.suffix();
        let text = blocking(move || playlist(&e, &sid, &suffix)).await?;
        return Ok((
            [(header::CONTENT_TYPE, "application/vnd.apple.mpegurl"), (header::CACHE_CONTROL, "no-cache")],
            text,
        )
            .into_response());
    }
    let index: u64 = file.strip_suffix(".m4s").and_then(|n| n.parse().ok()).ok_or_else(|| {
        ApiError::NotFound(format!("no media file {file:?}: use init.mp4, playlist.m3u8 or <index>.m4s"))
    })?;
    // The newest segment of a live stream is asked for by every viewer at once: answer
    // it from the engine's decrypted-segment cache without a blocking thread.
    let frag = match e.cached_segment(&id, index) {
        Some(b) => b,
        None => blocking(move || e.segment(&id, index)).await?,
    };
    Ok(([(header::CONTENT_TYPE, "video/iso.segment")], Body::from(frag)).into_response())
}

/// Segments a live playlist lists: the newest ones only, so a poll every target
/// duration costs the same on the first minute and the tenth hour (RFC 8216 asks a
/// live window of at least three target durations; a minute of 2 s fragments is ample).
pub const LIVE_WINDOW: u64 = 30;

/// HLS media playlist over the session's fragments. While recording it is live: a
/// sliding window of the last `LIVE_WINDOW` segments (no playlist type, no ENDLIST),
/// `#EXT-X-MEDIA-SEQUENCE` the first listed index and `#EXT-X-DISCONTINUITY-SEQUENCE`
/// the discontinuities that slid out (the row counts gaps, so neither needs a scan).
/// A finished session's VOD playlist lists every segment: the whole playlist is the
/// content asked for.
fn playlist(e: &Engine, sid: &str, q: &str) -> Result<String, EngineError> {
    let row = camera_session(e, sid)?;
    let live = crate::engine::is_live(row.status);
    let first = if live { row.chunk_count.saturating_sub(LIVE_WINDOW) } else { 0 };
    let views = e.records_from(sid, first, usize::try_from(row.chunk_count - first).unwrap_or(usize::MAX))?;
    let gap = |v: &crate::engine::ChunkView| v.record.flags.contains(lucid_core::chunk::Flags::GAP_BEFORE);
    let durs: Vec<f64> = views.iter().map(|v| (v.record.media_end_us - v.record.media_start_us) as f64 / 1e6).collect();
    let target = durs.iter().cloned().fold(1.0f64, f64::max).ceil() as u64;
    // RFC 8216 6.2.2: the discontinuity sequence counts the tags of segments that left
    // the playlist.
    let disc_seq = row.counters.gaps.saturating_sub(views.iter().filter(|v| gap(v)).count() as u64);
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    s.push_str(&format!("#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{first}\n"));
    if live {
        if disc_seq > 0 {
            s.push_str(&format!("#EXT-X-DISCONTINUITY-SEQUENCE:{disc_seq}\n"));
        }
    } else {
        s.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    }
    s.push_str(&format!("#EXT-X-MAP:URI=\"init.mp4{q}\"\n"));
    for (v, d) in views.iter().zip(&durs) {
        if !v.present {
            // A redacted chunk is a hole in the media; players must not expect continuity.
            s.push_str("#EXT-X-GAP\n");
        }
        if gap(v) {
            s.push_str("#EXT-X-DISCONTINUITY\n");
        }
        s.push_str(&format!("#EXTINF:{d:.3},\n{}.m4s{q}\n", v.record.index));
    }
    if !live {
        s.push_str("#EXT-X-ENDLIST\n");
    }
    Ok(s)
}

async fn export(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let (video, count) = session_video(&e, &id).await?;
    let body = video_body(e, id.clone(), video.init, 0..count)?;
    Ok((
        [
            (header::CONTENT_TYPE, video.mime.to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{id}.{}\"", video.ext)),
        ],
        body,
    )
        .into_response())
}

/// What export and clips stream before any fragment, checked before the headers go out.
struct SessionVideo {
    init: Vec<u8>,
    mime: &'static str,
    ext: &'static str,
}

/// The init segment and media type of a camera session, and its chunk count.
async fn session_video(e: &AppState, id: &str) -> ApiResult<(SessionVideo, u64)> {
    let (sid, e2) = (id.to_owned(), e.clone());
    let (init, count, codec) = blocking(move || {
        let row = camera_session(&e2, &sid)?;
        let init = e2
            .init_segment(&sid)?
            .ok_or_else(|| EngineError::NotFound { what: "video of session", id: sid.clone() })?;
        Ok((init, row.chunk_count, row.codec))
    })
    .await?;
    // A FWHT session (the V4L2 test codec) is its raw elementary stream, not MP4.
    let (mime, ext) = if codec.as_deref() == Some("fwht") { ("video/x-fwht", "fwht") } else { ("video/mp4", "mp4") };
    Ok((SessionVideo { init, mime, ext }, count))
}

/// Streams `init` then the plaintext of the chunks `indices`, each fragment sent as the
/// buffer it was decrypted in. A redacted chunk leaves a gap, as in the playlist.
fn video_body(
    e: AppState,
    sid: String,
    init: Vec<u8>,
    indices: impl Iterator<Item = u64> + Send + 'static,
) -> ApiResult<Body> {
    stream_body(move |w| {
        let reader = e.reader(&sid)?;
        w.write_all(&init).map_err(|x| EngineError::Internal(x.to_string()))?;
        for i in indices {
            match reader.plaintext_bytes(i) {
                Ok(frag) => w.send(frag).map_err(|x| EngineError::Internal(x.to_string()))?,
                Err(EngineError::NotFound { .. }) => continue,
                Err(x) => return Err(x),
            }
        }
        Ok(())
    })
}

async fn evidence(State(e): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let (sid, e2) = (id.clone(), e.clone());
    blocking(move || {
        e2.manifest(&sid)?.ok_or_else(|| {
            EngineError::BadState(format!("session {sid} has no signed manifest yet (stop or finalize it first)"))
        })
    })
    .await?;
    let sid = id.clone();
    let body = stream_body(move |w| e.write_evidence(&sid, w))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{id}-evidence.tar\"")),
        ],
        body,
    )
        .into_response())
}

/// `?start=&end=` of the clip routes: media seconds or RFC 3339 wall time each. A share
/// URL's `exp` and `sig` may come along (checked by `auth`).
#[derive(Debug, Deserialize)]
struct ClipQuery {
    start: Option<String>,
    end: Option<String>,
    #[allow(dead_code)]
    exp: Option<u64>,
    #[allow(dead_code)]
    sig: Option<String>,
}

/// The clip a query names, resolved by the engine (rounded out to chunk boundaries).
async fn clip_range(e: &AppState, id: &str, q: ClipQuery) -> ApiResult<ClipRange> {
    let need = |v: Option<String>, name: &str| {
        v.ok_or_else(|| ApiError::bad(format!("{name} is required: seconds of media time (12.5) or RFC 3339")))
    };
    let (start, end) = (need(q.start, "start")?, need(q.end, "end")?);
    let (e, sid) = (e.clone(), id.to_owned());
    blocking(move || e.clip_range(&sid, ClipBound::parse("start", &start)?, ClipBound::parse("end", &end)?)).await
}

/// The headers naming a clip's chunks, so a client knows what the rounding chose.
fn clip_headers(r: ClipRange) -> [(&'static str, String); 2] {
    [("x-lucid-clip-first", r.first.to_string()), ("x-lucid-clip-last", r.last.to_string())]
}

async fn clip_mp4(
    State(e): State<AppState>,
    Path(id): Path<String>,
    LQuery(q): LQuery<ClipQuery>,
) -> ApiResult<Response> {
    let range = clip_range(&e, &id, q).await?;
    let (video, _) = session_video(&e, &id).await?;
    let body = video_body(e, id.clone(), video.init, range.first..=range.last)?;
    let name = format!("attachment; filename=\"{id}-{}-{}.{}\"", range.first, range.last, video.ext);
    Ok((
        [(header::CONTENT_TYPE, video.mime.to_owned()), (header::CONTENT_DISPOSITION, name)],
        clip_headers(range),
        body,
    )
        .into_response())
}

async fn clip_evidence(
    State(e): State<AppState>,
    Path(id): Path<String>,
    LQuery(q): LQuery<ClipQuery>,
) -> ApiResult<Response> {
    let range = clip_range(&e, &id, q).await?;
    let sid = id.clone();
    let body = stream_body(move |w| e.write_clip_evidence(&sid, range, w))?;
    let name = format!("attachment; filename=\"{id}-{}-{}-clip-evidence.tar\"", range.first, range.last);
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar".to_owned()), (header::CONTENT_DISPOSITION, name)],
        clip_headers(range),
        body,
    )
        .into_response())
}
