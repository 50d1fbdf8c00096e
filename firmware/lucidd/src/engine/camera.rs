//! The camera recorder: one thread per recording run that pulls frames from the source,
//! encodes them, cuts chunks at keyframes and hands each chunk to the engine's chunk path.
//!
//! Owns the run's control state (recording, paused, stopping) and the camera health.
//! Architecture invariant: capture never waits on the network; the only thing a frame
//! waits on is the chunk commit (one fsync per chunk, about once a second). It must not
//! know which encoder ran: the chunker and the engine see access units and fragments.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use lucid_media::{
    Chunker, ChunkerConfig, Codec, EncoderConfig, Frame, FrameSource, MediaChunk, OpenH264Encoder, SourceError,
    VideoEncoder,
};

use super::{ChunkInfo, Engine, EngineError, Kind, Result, SessionRow, Status, lock};
use crate::config::SourceKind;
use crate::metrics::Stage;
use crate::util::now_rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Recording,
    Paused,
    Stopping,
}

#[derive(Debug)]
struct Control {
    state: Mutex<RunState>,
    changed: Condvar,
}

/// Camera health, shown by `/health`, the recorder service and `GET /api/v1/camera`.
#[derive(Debug, Default)]
pub struct CameraState {
    pub running: AtomicBool,
    pub frames: AtomicU64,
    pub dropped: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// False while a recording waits for an unplugged camera to come back.
    pub connected: AtomicBool,
    /// Times the camera went away during recordings since start.
    pub disconnects: AtomicU64,
    /// What the last run opened: source description and encoder name.
    pub source: Mutex<Option<String>>,
    pub encoder: Mutex<Option<String>>,
}

/// Stands in for a closed, unplugged camera while the recorder waits for it.
struct Unplugged(lucid_media::VideoFormat);

impl FrameSource for Unplugged {
    fn format(&self) -> lucid_media::VideoFormat {
        self.0
    }
    fn next_frame(&mut self) -> std::result::Result<Frame, SourceError> {
        Err(SourceError::Disconnected("the camera is unplugged".into()))
    }
    fn describe(&self) -> String {
        "camera unplugged".into()
    }
}

/// Opens a source again after it went away (same settings, same negotiated format).
type Reopen = Box<dyn FnMut() -> Result<Box<dyn FrameSource>> + Send>;

/// Source, encoder and codec of one recording run.
struct Pipeline {
    source: Box<dyn FrameSource>,
    encoder: Box<dyn VideoEncoder>,
    codec: Codec,
    reopen: Option<Reopen>,
}

pub struct CameraRun {
    pub session_id: String,
    control: Arc<Control>,
    thread: Option<JoinHandle<RunOutcome>>,
    /// When the current session's part of this run began (a continuous cut moves it on).
    pub(super) started: Instant,
}

#[derive(Debug, Default)]
struct RunOutcome {
    error: Option<String>,
    dropped: u64,
}

fn software(engine: &Engine, width: u32, height: u32) -> Result<Box<dyn VideoEncoder>> {
    let v = &engine.cfg.video;
    let enc = OpenH264Encoder::new(EncoderConfig {
        width,
        height,
        fps: v.fps,
        bitrate_bps: v.bitrate_bps,
        keyframe_interval_frames: v.keyframe_interval_frames(),
    })
    .map_err(|e| EngineError::Unavailable(format!("encoder: {e}")))?;
    Ok(Box::new(lucid_media::ToI420(enc)))
}

fn open_pipeline(engine: &Engine) -> Result<Pipeline> {
    let v = &engine.cfg.video;
    match engine.cfg.source {
        SourceKind::Test => {
            let src = lucid_media::TestPattern::new(lucid_media::TestPatternConfig {
                width: v.width,
                height: v.height,
                fps: v.fps,
                paced: true,
            })
            .map_err(|e| EngineError::Unavailable(format!("test source: {e}")))?;
            let encoder = software(engine, v.width, v.height)?;
            Ok(Pipeline { source: Box::new(src), encoder, codec: Codec::H264, reopen: None })
        }
        #[cfg(target_os = "linux")]
        SourceKind::V4l2 => {
            open_v4l2(engine, &engine.camera_settings()?, &lucid_media::v4l2::scan(std::path::Path::new("/dev")))
        }
        #[cfg(not(target_os = "linux"))]
        SourceKind::V4l2 => Err(EngineError::Unavailable("V4L2 exists on Linux only; run with --source test".into())),
    }
}

/// The camera node to open: the configured one if it exists, else the first camera found
/// by capability. `None`: no camera attached.
#[cfg(target_os = "linux")]
fn locate_camera(s: &crate::config::CameraConfig, found: &[lucid_media::v4l2::Found]) -> Option<std::path::PathBuf> {
    if s.device.is_empty() {
        lucid_media::v4l2::find_camera(found).map(|f| f.path.clone())
    } else {
        std::path::Path::new(&s.device).exists().then(|| s.device.clone().into())
    }
}

/// Opens camera and encoder per the settings `s`, from the devices of one `scan`.
#[cfg(target_os = "linux")]
fn open_v4l2(engine: &Engine, s: &crate::config::CameraConfig, found: &[lucid_media::v4l2::Found]) -> Result<Pipeline> {
    use crate::config::EncoderChoice;
    use lucid_media::v4l2::{self, CodecParams, FourCc, V4l2Camera, V4l2Encoder, negotiate};
    let v = engine.cfg.video.clone();
    let codec = s.codec.media();
    let unavailable = |m: String| EngineError::Unavailable(m);
    let hw = if s.encoder_device.is_empty() {
        v4l2::find_encoder(found, FourCc::of_codec(codec)).cloned()
    } else {
        found.iter().find(|f| f.path.as_os_str() == s.encoder_device.as_str()).cloned()
    };
    let hw = match (s.encoder, hw) {
        (EncoderChoice::Software, _) => None,
        (_, Some(h)) => Some(h),
        (EncoderChoice::Hardware, None) => {
            return Err(unavailable(format!("no V4L2 encoder of {} found ({})", codec.name(), describe_found(found))));
        }
        (EncoderChoice::Auto, None) if codec == Codec::Fwht => {
            return Err(unavailable(format!(
                "no V4L2 encoder of fwht (is vicodec loaded?) ({})",
                describe_found(found)
            )));
        }
        (EncoderChoice::Auto, None) => None,
    };
    let camera = locate_camera(s, found).ok_or_else(|| {
        unavailable(format!("camera: no V4L2 capture device with a raw or H.264 format ({})", describe_found(found)))
    })?;
    let cam_cfg = v4l2::CameraConfig {
        device: Some(camera),
        width: v.width,
        height: v.height,
        fps: v.fps,
        encoder_inputs: match &hw {
            Some(h) => negotiate::hardware_encoder_inputs(&h.output),
            None => negotiate::software_encoder_inputs(),
        },
        allow_passthrough: codec == Codec::H264 && s.encoder == EncoderChoice::Auto,
        buffers: s.buffers,
    };
    let cam = V4l2Camera::open(&cam_cfg).map_err(|e| unavailable(format!("camera: {e}")))?;
    let choice = cam.choice();
    let encoder: Box<dyn VideoEncoder> = if choice.passthrough {
        Box::new(lucid_media::CameraH264)
    } else if let Some(h) = &hw {
        let p = CodecParams {
            codec,
            width: choice.width,
            height: choice.height,
            input: choice.fourcc,
            fps: v.fps,
            bitrate_bps: v.bitrate_bps,
            keyframe_interval_frames: v.keyframe_interval_frames(),
        };
        Box::new(V4l2Encoder::open(Some(&h.path), p).map_err(|e| unavailable(format!("encoder: {e}")))?)
    } else {
        software(engine, choice.width, choice.height)?
    };
    // After an unplug, the same node (or the first camera found) must come back with the
    // same format, or the session's init segment would no longer apply.
    let want = cam.format();
    let mut reopen_cfg = cam_cfg.clone();
    // The configured node, or found again by capability (a replugged camera may get
    // another number).
    reopen_cfg.device = (!s.device.is_empty()).then(|| s.device.clone().into());
    reopen_cfg.allow_passthrough = choice.passthrough;
    reopen_cfg.encoder_inputs = vec![choice.fourcc];
    let reopen: Reopen = Box::new(move || {
        let c = V4l2Camera::open(&reopen_cfg).map_err(|e| EngineError::Unavailable(format!("camera: {e}")))?;
        let got = c.format();
        if (got.width, got.height, got.pixel_format) != (want.width, want.height, want.pixel_format) {
            return Err(EngineError::Unavailable(format!("the camera came back as {got:?}, not {want:?}")));
        }
        Ok(Box::new(c) as Box<dyn FrameSource>)
    });
    Ok(Pipeline { source: Box::new(cam), encoder, codec, reopen: Some(reopen) })
}

#[cfg(target_os = "linux")]
fn describe_found(found: &[lucid_media::v4l2::Found]) -> String {
    if found.is_empty() {
        return "no /dev/video* nodes".into();
    }
    found
        .iter()
        .map(|f| format!("{} {} {:?} out {:?} cap {:?}", f.path.display(), f.driver, f.role, f.output, f.capture))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the start-up self-check learns from the media pipeline.
#[derive(Debug)]
pub enum Probe {
    /// Source and encoder produced a keyframe, exactly as a recording would.
    Encoded(String),
    /// Nothing to test: no camera is attached (not a fault of this firmware).
    NoCamera(String),
}

/// Opens the recording pipeline (configured source and the encoder a recording would
/// choose), encodes until a keyframe comes out, and closes it again. While the camera
/// records (continuous mode records from boot on) it cannot be opened twice: the
/// recording's committed chunks are the proof instead.
pub fn probe(engine: &Engine) -> std::result::Result<Probe, String> {
    if let Some(sid) = engine.camera_session() {
        // The first chunk of a run is committed about one chunk duration after the start.
        for _ in 0..50 {
            let chunks = engine.get(&sid).map(|r| r.chunk_count).unwrap_or(0);
            if chunks > 0 {
                return Ok(Probe::Encoded(format!("the camera is recording session {sid}: {chunks} chunks committed")));
            }
            if engine.camera_session().as_deref() != Some(&sid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        return Err(format!("the camera is recording session {sid} but committed no chunk"));
    }
    let pipeline = match engine.cfg.source {
        #[cfg(target_os = "linux")]
        SourceKind::V4l2 => {
            let s = engine.camera_settings().map_err(|e| e.to_string())?;
            let found = lucid_media::v4l2::scan(std::path::Path::new("/dev"));
            if locate_camera(&s, &found).is_none() {
                return Ok(Probe::NoCamera(format!("no camera attached ({})", describe_found(&found))));
            }
            open_v4l2(engine, &s, &found)
        }
        _ => open_pipeline(engine),
    };
    let Pipeline { mut source, mut encoder, codec, .. } = pipeline.map_err(|e| e.to_string())?;
    let fmt = source.format();
    for _ in 0..30 {
        let frame = source.next_frame().map_err(|e| format!("source: {e}"))?;
        let units = encoder.encode(&frame).map_err(|e| format!("encoder: {e}"))?;
        if let Some(au) = units.iter().find(|au| au.keyframe && !au.data.is_empty()) {
            return Ok(Probe::Encoded(format!(
                "{}: {}x{} frame encoded by {} to a {} byte {} keyframe",
                source.describe(),
                fmt.width,
                fmt.height,
                encoder.name(),
                au.data.len(),
                codec.name()
            )));
        }
    }
    Err(format!("{} produced no keyframe in 30 frames", encoder.name()))
}

/// Starts the camera on `sid`. The caller holds the session's transition lock.
pub(super) fn start(engine: &Arc<Engine>, sid: &str) -> Result<SessionRow> {
    let mut cam = lock(&engine.camera);
    if let Some(run) = cam.as_ref() {
        if run.session_id == sid {
            return Err(EngineError::BadState(format!("session {sid} is already recording")));
        }
        return Err(EngineError::Conflict(format!("the camera is busy recording session {}", run.session_id)));
    }
    let row = engine.get(sid)?;
    if row.kind != Kind::Camera {
        return Err(EngineError::BadState(format!("session {sid} holds uploaded data, not camera video")));
    }
    if !matches!(row.status, Status::Created | Status::Stopped) {
        return Err(EngineError::Transition { session: sid.to_owned(), state: row.status.as_str(), action: "start" });
    }
    // The log stays open for the whole run, so every row write of the camera thread goes
    // through the log's lock (the thread never takes the transition lock).
    engine.open_log(sid)?;
    let pipeline = open_pipeline(engine)?;
    let fmt = pipeline.source.format();
    let v = &engine.cfg.video;
    *lock(&engine.camera_state.source) = Some(pipeline.source.describe());
    *lock(&engine.camera_state.encoder) = Some(pipeline.encoder.name().to_owned());
    engine.camera_state.connected.store(true, Relaxed);
    // A camera that opens again clears the last run's error (health, the record LED).
    *lock(&engine.camera_state.last_error) = None;
    tracing::info!(session = %sid, source = %pipeline.source.describe(), encoder = pipeline.encoder.name(), codec = pipeline.codec.name(), "recording");
    let chunker = Chunker::new(ChunkerConfig {
        target_duration_us: engine.cfg.record.chunk_target_ms as u64 * 1000,
        max_fragment_bytes: super::MAX_PART,
        // Fragment sequence numbers continue across runs of one session.
        first_sequence: row.chunk_count as u32 + 1,
        codec: pipeline.codec,
    })
    .map_err(|e| EngineError::BadInput(format!("chunker: {e}")))?;
    let now = now_rfc3339();
    let row = engine.update_row(sid, |r| {
        r.status = Status::Recording;
        r.started_at = Some(now.clone());
        r.stopped_at = None;
        r.width = Some(fmt.width);
        r.height = Some(fmt.height);
        r.fps = Some(v.fps);
        if let Some(p) = r.pipeline.as_mut() {
            p.state = "active".into();
            p.started_at.get_or_insert(now.clone());
        }
        Ok(())
    })?;
    // Media time continues across runs of one session, so its fragments concatenate.
    let pts_offset = if row.chunk_count > 0 { row.media_us + 1_000_000 / v.fps as u64 } else { 0 };
    let control = Arc::new(Control { state: Mutex::new(RunState::Recording), changed: Condvar::new() });
    let segment_us = super::continuous::is_segment(&row).then(|| engine.cfg.record.segment_seconds * 1_000_000);
    let (e2, c2, s2) = (engine.clone(), control.clone(), sid.to_owned());
    let thread = std::thread::Builder::new()
        .name("lucid-camera".into())
        .spawn(move || run(&e2, &s2, &c2, pipeline, chunker, pts_offset, segment_us))
        .map_err(|e| EngineError::Internal(format!("spawn camera thread: {e}")))?;
    engine.camera_state.running.store(true, Relaxed);
    *cam = Some(CameraRun { session_id: sid.to_owned(), control, thread: Some(thread), started: Instant::now() });
    Ok(row)
}

fn set_state(engine: &Engine, sid: &str, want_from: RunState, to: RunState) -> Result<()> {
    let cam = lock(&engine.camera);
    let run = cam
        .as_ref()
        .filter(|r| r.session_id == sid)
        .ok_or_else(|| EngineError::BadState(format!("session {sid} is not recording")))?;
    let mut st = lock(&run.control.state);
    if *st != want_from {
        return Err(EngineError::BadState(format!("session {sid} is not {:?}", want_from).to_lowercase()));
    }
    *st = to;
    run.control.changed.notify_all();
    Ok(())
}

/// Pauses the run; the caller holds the session's transition lock.
pub(super) fn pause(engine: &Engine, sid: &str) -> Result<SessionRow> {
    let row = engine.get(sid)?;
    if row.status != Status::Recording {
        return Err(EngineError::Transition { session: sid.to_owned(), state: row.status.as_str(), action: "pause" });
    }
    set_state(engine, sid, RunState::Recording, RunState::Paused)?;
    let now = now_rfc3339();
    engine.update_row(sid, |r| {
        r.status = Status::Paused;
        r.paused_at = Some(now.clone());
        if let Some(p) = r.pipeline.as_mut() {
            p.state = "paused".into();
        }
        Ok(())
    })
}

/// Resumes the run; the caller holds the session's transition lock.
pub(super) fn resume(engine: &Engine, sid: &str) -> Result<SessionRow> {
    let row = engine.get(sid)?;
    if row.status != Status::Paused {
        return Err(EngineError::Transition { session: sid.to_owned(), state: row.status.as_str(), action: "resume" });
    }
    set_state(engine, sid, RunState::Paused, RunState::Recording)?;
    let now = now_rfc3339();
    engine.update_row(sid, |r| {
        r.status = Status::Recording;
        r.resumed_at = Some(now.clone());
        if let Some(p) = r.pipeline.as_mut() {
            p.state = "active".into();
        }
        Ok(())
    })
}

/// Stops the run and seals the session (final checkpoint, one signed manifest). The
/// caller holds the session's transition lock, so of two concurrent stops the second
/// finds the session stopped and is refused instead of signing a second manifest.
pub(super) fn stop(engine: &Engine, sid: &str) -> Result<SessionRow> {
    let row = engine.get(sid)?;
    if !super::is_live(row.status) {
        return Err(EngineError::Transition { session: sid.to_owned(), state: row.status.as_str(), action: "stop" });
    }
    let run = {
        let mut cam = lock(&engine.camera);
        match cam.as_ref() {
            Some(r) if r.session_id == sid => cam.take(),
            _ => None,
        }
    };
    let mut outcome = RunOutcome::default();
    let mut active = 0.0;
    if let Some(mut run) = run {
        *lock(&run.control.state) = RunState::Stopping;
        run.control.changed.notify_all();
        if let Some(t) = run.thread.take() {
            outcome =
                t.join().unwrap_or_else(|_| RunOutcome { error: Some("camera thread panicked".into()), dropped: 0 });
        }
        active = run.started.elapsed().as_secs_f64();
    }
    engine.camera_state.running.store(false, Relaxed);
    let now = now_rfc3339();
    let row = engine.seal_session(sid, |r| {
        r.status = Status::Stopped;
        r.stopped_at = Some(now.clone());
        r.active_secs += active;
        r.dropped_frames += outcome.dropped;
        if let Some(e) = &outcome.error {
            r.last_error = Some(e.clone());
            r.error_count += 1;
        }
        if let Some(p) = r.pipeline.as_mut() {
            p.state = "stopped".into();
            p.stopped_at = Some(now.clone());
        }
    })?;
    engine.close_log(sid);
    Ok(row)
}

/// Everything the run loop needs to turn one chunk into a committed log entry.
struct Sink<'a> {
    engine: &'a Engine,
    /// The session chunks go to: the run's, or the continuous segment it was cut to.
    sid: String,
    init_stored: bool,
    /// Continuous recording: the segment length and the media time its segment began.
    segment: Option<Segment>,
}

struct Segment {
    len_us: u64,
    start_media_us: Option<u64>,
}

impl Sink<'_> {
    /// Commits every chunk the chunker has ready; returns how many.
    fn drain(&mut self, chunker: &mut Chunker) -> Result<usize> {
        let mut n = 0;
        while let Some(c) = chunker.pop_chunk() {
            self.commit(chunker, c)?;
            n += 1;
        }
        Ok(n)
    }

    fn commit(&mut self, chunker: &Chunker, chunk: MediaChunk) -> Result<()> {
        self.maybe_cut(&chunk);
        let sid = self.sid.as_str();
        if !self.init_stored
            && let Some(init) = chunker.init_segment()
        {
            match self.engine.store.get_init(sid)? {
                None => self.engine.store.put_init(sid, init)?,
                // A later run must produce the same codec setup, or the session's
                // fragments would no longer play after its one init segment.
                Some(old) if old != init => {
                    return Err(EngineError::BadState(
                        "the camera's codec setup changed since this session's first run".into(),
                    ));
                }
                Some(_) => {}
            }
            let codec = chunker.codec_string();
            self.engine.update_row(sid, |r| {
                r.codec = codec;
                Ok(())
            })?;
            self.init_stored = true;
        }
        let info = ChunkInfo {
            media: true,
            gap_before: chunk.gap_before,
            media_start_us: chunk.media_start_us,
            media_end_us: chunk.media_end_us,
            wall_us: chunk.wall_start_us,
            frames: chunk.frame_count,
            quality: None,
        };
        self.engine.append(sid, &chunk.fragment, &info, None, None)?;
        Ok(())
    }

    /// Continuous recording: once a segment holds `len_us` of media, `chunk` (which
    /// starts with a keyframe, as every chunk does) opens the next segment. A failed or
    /// postponed cut leaves the chunk in the current segment; recording goes on.
    fn maybe_cut(&mut self, chunk: &MediaChunk) {
        let Some(seg) = self.segment.as_mut() else { return };
        let start = *seg.start_media_us.get_or_insert(chunk.media_start_us);
        if chunk.media_start_us.saturating_sub(start) < seg.len_us {
            return;
        }
        match self.engine.cut_segment(&self.sid, chunk.wall_start_us) {
            Ok(Some(new)) => {
                self.sid = new;
                // The new segment gets the run's init segment and codec with its first chunk.
                self.init_stored = false;
                seg.start_media_us = Some(chunk.media_start_us);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(session = %self.sid, error = %e, "continuous segment cut failed; the segment goes on")
            }
        }
    }
}

/// Polls for the camera every second until it is back (`Some`) or the run is stopped.
fn wait_for_camera(control: &Control, reopen: &mut Reopen, sid: &str) -> Option<Box<dyn FrameSource>> {
    let mut last_try = Instant::now() - std::time::Duration::from_secs(10);
    loop {
        {
            let st = lock(&control.state);
            if *st == RunState::Stopping {
                return None;
            }
            let _ = control.changed.wait_timeout(st, std::time::Duration::from_millis(200));
        }
        if last_try.elapsed() < std::time::Duration::from_secs(1) {
            continue;
        }
        last_try = Instant::now();
        match reopen() {
            Ok(s) => {
                tracing::info!(session = %sid, source = %s.describe(), "camera back; recording resumes");
                return Some(s);
            }
            Err(e) => tracing::debug!(session = %sid, error = %e, "camera not back yet"),
        }
    }
}

fn run(
    engine: &Engine,
    sid: &str,
    control: &Control,
    pipeline: Pipeline,
    mut chunker: Chunker,
    pts_offset: u64,
    segment_us: Option<u64>,
) -> RunOutcome {
    let Pipeline { mut source, mut encoder, mut reopen, .. } = pipeline;
    let mut dropped_before = 0;
    let m = &engine.metrics;
    let segment = segment_us.map(|len_us| Segment { len_us, start_media_us: None });
    let mut sink = Sink { engine, sid: sid.to_owned(), init_stored: false, segment };
    let mut was_paused = false;
    let mut outcome = RunOutcome::default();
    let result: Result<()> = (|| {
        loop {
            let state = *lock(&control.state);
            if state == RunState::Stopping {
                break;
            }
            let t = Instant::now();
            let mut frame = match source.next_frame() {
                Ok(f) => f,
                Err(SourceError::Disconnected(why)) if reopen.is_some() => {
                    // Keep what we have, mark the gap, wait for the camera to return.
                    m.record(Stage::Recording, t.elapsed(), false);
                    tracing::warn!(session = %sid, reason = %why, "camera disconnected; recording the gap and waiting for it");
                    engine.camera_state.connected.store(false, Relaxed);
                    engine.camera_state.disconnects.fetch_add(1, Relaxed);
                    *lock(&engine.camera_state.last_error) = Some(format!("camera disconnected: {why}"));
                    for au in encoder.flush().map_err(|e| EngineError::Internal(e.to_string()))? {
                        chunker.push(au).map_err(|e| EngineError::Internal(e.to_string()))?;
                    }
                    chunker.gap().map_err(|e| EngineError::Internal(e.to_string()))?;
                    sink.drain(&mut chunker)?;
                    dropped_before += source.dropped_frames();
                    // Close the dead device now: its driver (or a USB hub) can only
                    // re-create the node once every file handle on it is gone.
                    source = Box::new(Unplugged(source.format()));
                    let Some(new) = reopen.as_mut().and_then(|r| wait_for_camera(control, r, sid)) else {
                        break;
                    };
                    source = new;
                    engine.camera_state.connected.store(true, Relaxed);
                    *lock(&engine.camera_state.last_error) = None;
                    encoder.request_keyframe();
                    continue;
                }
                Err(e) => {
                    m.record(Stage::Recording, t.elapsed(), false);
                    return Err(EngineError::Unavailable(format!("camera: {e}")));
                }
            };
            engine.camera_state.frames.fetch_add(1, Relaxed);
            if state == RunState::Paused {
                if !was_paused {
                    // Close the open GOP group so everything before the pause is committed.
                    for au in encoder.flush().map_err(|e| EngineError::Internal(e.to_string()))? {
                        chunker.push(au).map_err(|e| EngineError::Internal(e.to_string()))?;
                    }
                    chunker.finish().map_err(|e| EngineError::Internal(e.to_string()))?;
                    sink.drain(&mut chunker)?;
                    was_paused = true;
                }
                continue;
            }
            if was_paused {
                encoder.request_keyframe();
                chunker.gap().map_err(|e| EngineError::Internal(e.to_string()))?;
                sink.drain(&mut chunker)?;
                was_paused = false;
            }
            frame.pts_us += pts_offset;
            let aus = match encoder.encode(&frame) {
                Ok(a) => a,
                Err(e) => {
                    m.record(Stage::Recording, t.elapsed(), false);
                    return Err(EngineError::Internal(format!("encoder: {e}")));
                }
            };
            m.record(Stage::Recording, t.elapsed(), true);
            for au in aus {
                let t = Instant::now();
                let pushed = chunker.push(au);
                if let Err(e) = pushed {
                    m.record(Stage::ChunkGeneration, t.elapsed(), false);
                    return Err(EngineError::Internal(format!("chunker: {e}")));
                }
                let took = t.elapsed();
                let n = sink.drain(&mut chunker)?;
                for _ in 0..n {
                    m.record(Stage::ChunkGeneration, took, true);
                }
            }
            if chunker.wants_keyframe() {
                encoder.request_keyframe();
            }
        }
        // Drain: the encoder's delayed frames, then the last (possibly short) GOP group.
        for au in encoder.flush().map_err(|e| EngineError::Internal(e.to_string()))? {
            chunker.push(au).map_err(|e| EngineError::Internal(e.to_string()))?;
        }
        chunker.finish().map_err(|e| EngineError::Internal(e.to_string()))?;
        let n = sink.drain(&mut chunker)?;
        for _ in 0..n {
            m.record(Stage::ChunkGeneration, std::time::Duration::ZERO, true);
        }
        Ok(())
    })();
    outcome.dropped = dropped_before + source.dropped_frames();
    engine.camera_state.dropped.store(outcome.dropped, Relaxed);
    // The session recorded last: a continuous cut may have moved the run on.
    let sid = sink.sid.as_str();
    if let Err(e) = result {
        tracing::error!(session = %sid, error = %e, "recording stopped by an error");
        *lock(&engine.camera_state.last_error) = Some(e.to_string());
        outcome.error = Some(e.to_string());
        // Close the session here unless a stop is already under way (it then owns the
        // close): everything committed so far stays, and the row shows the error.
        let taken = {
            let mut cam = lock(&engine.camera);
            if cam.as_ref().is_some_and(|r| r.session_id == sid) { cam.take() } else { None }
        };
        if let Some(run) = taken {
            // Dropping our own JoinHandle detaches this thread; it ends right after.
            let active = run.started.elapsed().as_secs_f64();
            drop(run);
            engine.camera_state.running.store(false, Relaxed);
            let now = now_rfc3339();
            let err = e.to_string();
            let closed = engine.seal_session(sid, |r| {
                r.status = Status::Stopped;
                r.stopped_at = Some(now.clone());
                r.active_secs += active;
                r.dropped_frames += outcome.dropped;
                r.last_error = Some(err.clone());
                r.error_count += 1;
                if let Some(p) = r.pipeline.as_mut() {
                    p.state = "error".into();
                    p.error_message = Some(err.clone());
                    p.stopped_at = Some(now.clone());
                }
            });
            if let Err(e2) = closed {
                tracing::error!(session = %sid, error = %e2, "could not close the failed session");
            }
            engine.close_log(sid);
        }
    }
    outcome
}
