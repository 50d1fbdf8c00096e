//! Continuous recording (`[record] mode = "continuous"`, issue #11): the camera records
//! from boot on, as a chain of ordinary camera sessions ("segments") of
//! `[record] segment_seconds` each, named by their start time in UTC.
//!
//! Owns the record state (recording, paused, stopped), the boot start, pause and resume,
//! and the segment cut. The cut happens on the camera thread, between two chunks: the
//! chunker only cuts at keyframes, so the chunk that crosses the segment length starts
//! with a keyframe and becomes the first chunk of the next segment. Camera, encoder and
//! chunker keep running through the cut, so no frame is lost between segments: the last
//! chunk of one segment ends (media time, exclusive) where the first of the next starts.
//!
//! The camera thread must never wait for a transition lock (a stop holds it while joining
//! the thread), so the cut only *tries* the old segment's lock: when a stop, pause or
//! rename holds it, the chunk stays in the old segment and the cut is tried again at the
//! next chunk. The new segment's lock is free by construction (nobody knows its id yet).
//! Each segment is sealed like a stopped session, with its own manifest, and verifies
//! on its own.
//!
//! A keeper thread (`spawn_keeper`) starts a new segment whenever the camera stopped
//! without a pause: it failed, was missing at boot, or a client stopped a segment. It
//! tries every `[record] restart_secs`, doubling after each failure (at most 30 times
//! that), and reports the failures in the record state and `/health`.
//!
//! Media time continues across the segments of one camera run (it is the fragments' own
//! decode time, which cannot change without remuxing): a segment's first chunk starts
//! where the previous segment's last chunk ended, not at zero.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Engine, EngineError, Kind, Result, SessionRow, Status, lock};
use crate::config::RecordMode;
use crate::util::now_rfc3339;

/// `metadata.record_mode` of a continuous segment: how the listing and the pause route
/// tell segments from sessions a client started.
const CONTINUOUS: &str = "continuous";

/// Run-time state of continuous recording. Pausing is not persisted: a restart (or a
/// crash) records again, which is what a recorder left alone should do.
#[derive(Debug, Default)]
pub struct ContinuousState {
    paused: bool,
    paused_at: Option<String>,
    /// Failed starts since the last segment began (boot or keeper).
    failures: u32,
    /// Why the last start failed; cleared when a segment starts.
    last_error: Option<String>,
    /// Segments the keeper started after the camera had stopped by itself.
    restarts: u64,
}

/// What `GET /api/v1/record` and `/api/v1/device` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordStatus {
    pub mode: RecordMode,
    /// `recording`, `paused` or `stopped`.
    pub state: &'static str,
    /// The session the camera records now, if any (a segment, or a manual session).
    pub session: Option<String>,
    pub segment_seconds: u64,
    pub paused_at: Option<String>,
    /// Continuous mode: failed starts in a row, and why the last one failed.
    pub failures: u32,
    pub last_error: Option<String>,
    /// Continuous mode: segments started again after the camera stopped by itself.
    pub restarts: u64,
}

impl RecordStatus {
    pub fn to_json(&self) -> Value {
        json!({
            "mode": self.mode_name(),
            "state": self.state,
            "session_id": self.session,
            "segment_seconds": self.segment_seconds,
            "paused_at": self.paused_at,
            "failures": self.failures,
            "last_error": self.last_error,
            "restarts": self.restarts,
        })
    }

    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            RecordMode::Manual => "manual",
            RecordMode::Continuous => "continuous",
        }
    }

    /// Continuous mode with the camera neither recording nor paused: recording has
    /// stopped without anyone asking (the keeper is trying again).
    pub fn interrupted(&self) -> bool {
        self.mode == RecordMode::Continuous && self.state == "stopped"
    }
}

/// Starts the keeper thread of continuous recording (module doc); `None` in manual mode.
/// Dropping the returned sender stops it, as does the engine going away.
pub(super) fn spawn_keeper(engine: &Arc<Engine>) -> Option<mpsc::Sender<()>> {
    if engine.cfg.record.mode != RecordMode::Continuous {
        return None;
    }
    let base = Duration::from_secs(engine.cfg.record.restart_secs);
    let mut wait = base;
    super::spawn_runner(engine, "lucid-continuous", base, "a stopped camera stays stopped", move |e| {
        wait = if e.keep_recording() { (wait * 2).min(base * 30) } else { base };
        wait
    })
}

/// Whether `row` is a continuous segment.
pub fn is_segment(row: &SessionRow) -> bool {
    row.metadata.get("record_mode").and_then(Value::as_str) == Some(CONTINUOUS)
}

/// A segment's name: its start, UTC, to the second (`2026-11-26T10:00:00Z`).
pub fn segment_name(wall_us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(wall_us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn fill_segment(r: &mut SessionRow, segment_seconds: u64) {
    r.metadata = json!({ "record_mode": CONTINUOUS, "segment_seconds": segment_seconds });
}

impl Engine {
    /// The record state: mode, recording/paused/stopped, the current session.
    pub fn record_status(&self) -> RecordStatus {
        let st = lock(&self.continuous);
        let session = self.camera_session();
        let state = if session.is_some() {
            "recording"
        } else if st.paused {
            "paused"
        } else {
            "stopped"
        };
        RecordStatus {
            mode: self.cfg.record.mode,
            state,
            session,
            segment_seconds: self.cfg.record.segment_seconds,
            paused_at: st.paused_at.clone(),
            failures: st.failures,
            last_error: st.last_error.clone(),
            restarts: st.restarts,
        }
    }

    fn require_continuous(&self, action: &str) -> Result<()> {
        if self.cfg.record.mode != RecordMode::Continuous {
            return Err(EngineError::Conflict(format!(
                "cannot {action}: [record] mode is manual (pause or stop a session through /api/v1/sessions/{{id}})"
            )));
        }
        Ok(())
    }

    /// Starts continuous recording at boot (after recovery closed what the last process
    /// left open). A camera that cannot open is logged and leaves the state `stopped`;
    /// the daemon still serves.
    pub(super) fn start_continuous_at_boot(self: &Arc<Self>) {
        if self.cfg.record.mode != RecordMode::Continuous {
            return;
        }
        match self.start_segment() {
            Ok(row) => tracing::info!(session = %row.id, name = %row.name, "continuous recording started"),
            Err(e) => {
                tracing::error!(error = %e, "continuous recording could not start; the keeper tries again");
                self.note_start_failure(&e);
            }
        }
    }

    /// Records a failed segment start: the camera's error (what /health and the blinking
    /// LED show) and the record state's failure count, which it returns.
    fn note_start_failure(&self, e: &EngineError) -> u32 {
        *lock(&self.camera_state.last_error) = Some(e.to_string());
        let mut st = lock(&self.continuous);
        st.failures = st.failures.saturating_add(1);
        st.last_error = Some(e.to_string());
        st.failures
    }

    /// One keeper pass: when continuous recording is neither running nor paused, starts a
    /// segment. Returns whether a start was tried and failed (the keeper then waits
    /// longer).
    fn keep_recording(self: &Arc<Self>) -> bool {
        if self.cfg.record.mode != RecordMode::Continuous || lock(&self.continuous).paused {
            return false;
        }
        if self.camera_session().is_some() {
            return false;
        }
        match self.start_segment() {
            Ok(row) => {
                let mut st = lock(&self.continuous);
                // A resume or pause may have raced the start: a pause that came first
                // has no segment to stop, so this one is stopped below.
                let paused = st.paused;
                st.failures = 0;
                st.last_error = None;
                st.restarts += 1;
                drop(st);
                tracing::info!(session = %row.id, name = %row.name, "continuous recording started again");
                if paused && let Err(e) = self.stop_current_segment() {
                    tracing::warn!(error = %e, "could not stop a segment started while pausing");
                }
                false
            }
            // A resume (or a client's session) got the camera first: nothing failed.
            Err(_) if self.camera_session().is_some() => false,
            Err(e) => {
                let failures = self.note_start_failure(&e);
                tracing::warn!(error = %e, failures, "continuous recording could not start again");
                true
            }
        }
    }

    /// Creates a segment named by the time now and starts the camera on it.
    fn start_segment(self: &Arc<Self>) -> Result<SessionRow> {
        let n = self.cfg.record.segment_seconds;
        let name = segment_name(crate::util::unix_micros());
        let row = self.create_session(None, name, Kind::Camera, |r| fill_segment(r, n))?;
        match self.start_recording(&row.id) {
            Ok(row) => Ok(row),
            Err(e) => {
                // Nothing was recorded into it: remove it, as a refused manual start does.
                if let Err(e2) = self.delete(&row.id) {
                    tracing::warn!(session = %row.id, error = %e2, "could not remove the segment of a refused start");
                }
                Err(e)
            }
        }
    }

    /// Pauses continuous recording: the current segment is stopped and sealed, and no
    /// segment starts until `resume_continuous` (or a restart). A manual session the
    /// camera records is not touched. Pausing twice is not an error.
    pub fn pause_continuous(&self) -> Result<RecordStatus> {
        self.require_continuous("pause continuous recording")?;
        {
            let mut st = lock(&self.continuous);
            if !st.paused {
                st.paused = true;
                st.paused_at = Some(now_rfc3339());
            }
        }
        self.stop_current_segment()?;
        tracing::info!("continuous recording paused");
        Ok(self.record_status())
    }

    /// Resumes continuous recording with a new segment. 409 while the camera records a
    /// manual session; resuming while recording is not an error.
    pub fn resume_continuous(self: &Arc<Self>) -> Result<RecordStatus> {
        self.require_continuous("resume continuous recording")?;
        if let Some(sid) = self.camera_session() {
            let row = self.get(&sid)?;
            if is_segment(&row) {
                lock(&self.continuous).paused = false;
                return Ok(self.record_status());
            }
            return Err(EngineError::Conflict(format!(
                "the camera is recording session {sid}, started by a client: stop it first"
            )));
        }
        self.start_segment()?;
        let mut st = lock(&self.continuous);
        st.paused = false;
        st.paused_at = None;
        st.failures = 0;
        st.last_error = None;
        drop(st);
        tracing::info!("continuous recording resumed");
        Ok(self.record_status())
    }

    /// Stops whatever segment the camera records. A cut may replace the segment between
    /// reading the camera's session and taking its lock (the stop then finds it already
    /// stopped): the stop is retried on the new one.
    fn stop_current_segment(&self) -> Result<()> {
        for _ in 0..10 {
            let Some(sid) = self.camera_session() else { return Ok(()) };
            if !is_segment(&self.get(&sid)?) {
                return Ok(());
            }
            match self.stop_recording(&sid) {
                Ok(_) => return Ok(()),
                Err(EngineError::Transition { .. }) if self.camera_session().as_deref() != Some(&sid) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Unavailable("the segment kept changing while being stopped; retry".into()))
    }

    /// The cut, on the camera thread, before the chunk that starts at `wall_us` is
    /// committed: creates the next segment, points the camera run at it and seals `old`.
    /// `Ok(None)` when `old` is busy (its transition lock is held) or no longer recording:
    /// the chunk then stays in `old`, and the next chunk tries again.
    pub(super) fn cut_segment(&self, old: &str, wall_us: i64) -> Result<Option<String>> {
        let lk = self.session_lock(old);
        let _g = match lk.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
        };
        let row = self.get(old)?;
        if row.status != Status::Recording || !is_segment(&row) {
            return Ok(None);
        }
        let id = crate::util::short_id("sess");
        let nlk = self.session_lock(&id);
        // A fresh id: no one else can hold its lock, so this never waits.
        let _ng = lock(&nlk);
        let started = crate::util::micros_to_rfc3339(wall_us);
        let n = self.cfg.record.segment_seconds;
        let new = self.create_row(id.clone(), segment_name(wall_us), Kind::Camera, |r| {
            fill_segment(r, n);
            r.status = Status::Recording;
            r.started_at = Some(started);
            r.width = row.width;
            r.height = row.height;
            r.fps = row.fps;
        })?;
        self.open_log(&new.id)?;
        // From here on a stop or pause names the new segment; the old one's active time
        // ends now.
        let active = {
            let mut cam = lock(&self.camera);
            match cam.as_mut() {
                Some(run) if run.session_id == old => {
                    run.session_id = new.id.clone();
                    let active = run.started.elapsed().as_secs_f64();
                    run.started = Instant::now();
                    active
                }
                // The run ended under us (an error on this very thread cannot, a stop
                // would hold `old`'s lock): keep the chunk where it was.
                _ => return Ok(None),
            }
        };
        let now = now_rfc3339();
        let sealed = self.seal_session(old, |r| {
            r.status = Status::Stopped;
            r.stopped_at = Some(now);
            r.active_secs += active;
        });
        self.close_log(old);
        if let Err(e) = sealed {
            // The camera has moved on; recovery seals this segment at the next start.
            tracing::error!(session = %old, error = %e, "could not seal a continuous segment");
        }
        tracing::info!(from = %old, to = %new.id, name = %new.name, "continuous segment cut");
        Ok(Some(new.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_is_named_by_its_start_to_the_second() {
        // 2026-11-26T10:00:00.750Z
        assert_eq!(segment_name(1_795_687_200_750_000), "2026-11-26T10:00:00Z");
        assert_eq!(segment_name(0), "1970-01-01T00:00:00Z");
    }
}
