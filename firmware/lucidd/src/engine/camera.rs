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

use lucid_media::{Chunker, ChunkerConfig, EncoderConfig, FrameSource, MediaChunk, OpenH264Encoder, VideoEncoder};

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

/// Camera health, shown by `/health` and the recorder service.
#[derive(Debug, Default)]
pub struct CameraState {
    pub running: AtomicBool,
    pub frames: AtomicU64,
    pub dropped: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

pub struct CameraRun {
    pub session_id: String,
    control: Arc<Control>,
    thread: Option<JoinHandle<RunOutcome>>,
    started: Instant,
}

#[derive(Debug, Default)]
struct RunOutcome {
    error: Option<String>,
    dropped: u64,
}

fn open_source(engine: &Engine) -> Result<Box<dyn FrameSource>> {
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
            Ok(Box::new(src))
        }
        SourceKind::V4l2 => Err(EngineError::Unavailable(
            "the V4L2 camera path is not in this build yet; run with --source test".into(),
        )),
    }
}

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
        return Err(EngineError::BadState(format!(
            "cannot start session {sid} from status {}",
            row.status.as_str()
        )));
    }
    let source = open_source(engine)?;
    let fmt = source.format();
    let v = &engine.cfg.video;
    let encoder = OpenH264Encoder::new(EncoderConfig {
        width: fmt.width,
        height: fmt.height,
        fps: v.fps,
        bitrate_bps: v.bitrate_bps,
        keyframe_interval_frames: (v.fps * v.keyframe_interval_ms / 1000).max(1),
    })
    .map_err(|e| EngineError::Unavailable(format!("encoder: {e}")))?;
    let chunker = Chunker::new(ChunkerConfig {
        target_duration_us: engine.cfg.record.chunk_target_ms as u64 * 1000,
        max_fragment_bytes: super::MAX_PART,
        // Fragment sequence numbers continue across runs of one session.
        first_sequence: row.chunk_count as u32 + 1,
    })
    .map_err(|e| EngineError::BadInput(format!("chunker: {e}")))?;
    let now = now_rfc3339();
    let row = engine.update(sid, |r| {
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
    let (e2, c2, s2) = (engine.clone(), control.clone(), sid.to_owned());
    let thread = std::thread::Builder::new()
        .name("lucid-camera".into())
        .spawn(move || run(&e2, &s2, &c2, source, Box::new(encoder), chunker, pts_offset))
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

pub(super) fn pause(engine: &Engine, sid: &str) -> Result<SessionRow> {
    let row = engine.get(sid)?;
    if row.status != Status::Recording {
        return Err(EngineError::BadState(format!("cannot pause session {sid} from status {}", row.status.as_str())));
    }
    set_state(engine, sid, RunState::Recording, RunState::Paused)?;
    let now = now_rfc3339();
    engine.update(sid, |r| {
        r.status = Status::Paused;
        r.paused_at = Some(now.clone());
        if let Some(p) = r.pipeline.as_mut() {
            p.state = "paused".into();
        }
        Ok(())
    })
}

pub(super) fn resume(engine: &Engine, sid: &str) -> Result<SessionRow> {
    let row = engine.get(sid)?;
    if row.status != Status::Paused {
        return Err(EngineError::BadState(format!("cannot resume session {sid} from status {}", row.status.as_str())));
    }
    set_state(engine, sid, RunState::Paused, RunState::Recording)?;
    let now = now_rfc3339();
    engine.update(sid, |r| {
        r.status = Status::Recording;
        r.resumed_at = Some(now.clone());
        if let Some(p) = r.pipeline.as_mut() {
            p.state = "active".into();
        }
        Ok(())
    })
}

pub(super) fn stop(engine: &Engine, sid: &str) -> Result<SessionRow> {
    let row = engine.get(sid)?;
    if !matches!(row.status, Status::Recording | Status::Paused | Status::Starting) {
        return Err(EngineError::BadState(format!("cannot stop session {sid} from status {}", row.status.as_str())));
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
            outcome = t.join().unwrap_or_else(|_| RunOutcome { error: Some("camera thread panicked".into()), dropped: 0 });
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
    sid: &'a str,
    init_stored: bool,
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
        if !self.init_stored {
            if let Some(init) = chunker.init_segment() {
                match self.engine.store.get_init(self.sid)? {
                    None => self.engine.store.put_init(self.sid, init)?,
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
                self.engine.update(self.sid, |r| {
                    r.codec = codec;
                    Ok(())
                })?;
                self.init_stored = true;
            }
        }
        let info = ChunkInfo {
            media: true,
            gap_before: chunk.gap_before,
            media_start_us: chunk.media_start_us,
            media_end_us: chunk.media_end_us,
            wall_us: chunk.wall_start_us,
            frames: chunk.frame_count,
        };
        self.engine.append(self.sid, &chunk.fragment, &info, None, None)?;
        Ok(())
    }
}

fn run(
    engine: &Engine,
    sid: &str,
    control: &Control,
    mut source: Box<dyn FrameSource>,
    mut encoder: Box<dyn VideoEncoder>,
    mut chunker: Chunker,
    pts_offset: u64,
) -> RunOutcome {
    let m = &engine.metrics;
    let mut sink = Sink { engine, sid, init_stored: false };
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
    outcome.dropped = source.dropped_frames();
    engine.camera_state.dropped.store(outcome.dropped, Relaxed);
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
