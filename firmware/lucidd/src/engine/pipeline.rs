//! The pipeline manager's state machine (8083's view of a session): the contract's
//! states and transition table (`transition`, a pure function), and the engine methods
//! that apply it to a session under the session's transition lock, together with the
//! camera start or stop each transition stands for.
//!
//! It owns the pipeline view only (`SessionRow::pipeline`). It must not let recorded
//! evidence vanish with a pipeline: destroying one leaves its session, chunks and signed
//! log in the store. It knows no HTTP shapes; `http::pipeline` renders.

use std::sync::Arc;

use super::{Engine, EngineError, Kind, PipelineRow, Result, SessionRow, camera, is_live, lock};
use crate::util::{now_rfc3339, short_id};

/// Pipeline states; the names are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PState {
    Created,
    Starting,
    Active,
    Pausing,
    Paused,
    Stopping,
    Stopped,
    Error,
    Cleanup,
    Destroyed,
}

impl PState {
    pub const ALL: [PState; 10] = [
        PState::Created,
        PState::Starting,
        PState::Active,
        PState::Pausing,
        PState::Paused,
        PState::Stopping,
        PState::Stopped,
        PState::Error,
        PState::Cleanup,
        PState::Destroyed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PState::Created => "created",
            PState::Starting => "starting",
            PState::Active => "active",
            PState::Pausing => "pausing",
            PState::Paused => "paused",
            PState::Stopping => "stopping",
            PState::Stopped => "stopped",
            PState::Error => "error",
            PState::Cleanup => "cleanup",
            PState::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<PState> {
        PState::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Events of the contract's state table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PEvent {
    Start,
    StartComplete,
    Pause,
    PauseComplete,
    Resume,
    Stop,
    StopComplete,
    Recover,
    Cleanup,
    CleanupComplete,
    Destroy,
    Error,
}

/// The contract's transition table: `None` when `event` is not allowed in `from`.
pub fn transition(from: PState, event: PEvent) -> Option<PState> {
    use PEvent as E;
    use PState::*;
    match (from, event) {
        (Created, E::Start) => Some(Starting),
        (Starting, E::StartComplete) => Some(Active),
        (Active, E::Pause) => Some(Pausing),
        (Pausing, E::PauseComplete) => Some(Paused),
        (Paused, E::Resume) => Some(Active),
        (Active | Starting | Pausing | Paused, E::Stop) => Some(Stopping),
        (Stopping, E::StopComplete) => Some(Stopped),
        (Stopped | Error, E::Recover) => Some(Created),
        (Stopped | Error, E::Cleanup) => Some(Cleanup),
        (Cleanup, E::CleanupComplete) => Some(Destroyed),
        (Created | Stopped | Error, E::Destroy) => Some(Destroyed),
        (Destroyed, E::Error) => None,
        (_, E::Error) => Some(Error),
        _ => None,
    }
}

/// Applies events in order; `None` if any of them is not allowed.
pub fn run(from: PState, events: &[PEvent]) -> Option<PState> {
    events.iter().try_fold(from, |s, e| transition(s, *e))
}

/// The stored state; a name this build does not know is treated as an error state, the
/// one state every recovery path starts from.
pub fn state_of(p: &PipelineRow) -> PState {
    PState::parse(&p.state).unwrap_or(PState::Error)
}

/// The session's pipeline, unless it has none or it was destroyed (a destroyed
/// pipeline stays on the row only so `/metrics` can count it).
pub fn live(row: &SessionRow) -> Option<&PipelineRow> {
    row.pipeline.as_ref().filter(|p| state_of(p) != PState::Destroyed)
}

impl Engine {
    /// The session's live pipeline (a snapshot), or NotFound.
    pub fn pipeline(&self, sid: &str) -> Result<(SessionRow, PipelineRow)> {
        let row = self.get(sid)?;
        let p = live(&row)
            .cloned()
            .ok_or_else(|| EngineError::NotFound { what: "pipeline for session", id: sid.to_owned() })?;
        Ok((row, p))
    }

    /// Creates the pipeline of a session, creating a camera session if there is none.
    pub fn pipeline_create(&self, sid: &str) -> Result<SessionRow> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        let pipeline = PipelineRow {
            pipeline_id: short_id("pipeline"),
            state: PState::Created.as_str().into(),
            created_at: now_rfc3339(),
            started_at: None,
            stopped_at: None,
            error_message: None,
        };
        let exists = || EngineError::BadState(format!("Pipeline for session {sid} already exists"));
        match self.get(sid) {
            Err(EngineError::NotFound { .. }) => {
                self.create_row(sid.to_owned(), sid.to_owned(), Kind::Camera, move |r| r.pipeline = Some(pipeline))
            }
            Ok(_) => self.update_row(sid, |r| {
                if live(r).is_some() {
                    return Err(exists());
                }
                if is_live(r.status) {
                    return Err(EngineError::Conflict(format!(
                        "session {} is recording without a pipeline; stop it first",
                        r.id
                    )));
                }
                r.pipeline = Some(pipeline);
                Ok(())
            }),
            Err(err) => Err(err),
        }
    }

    /// created -> starting -> active, with the camera recording the session (a stopped
    /// or failed pipeline is recovered to created first, as the table allows). A refusal
    /// (the camera is busy, the session holds uploaded data) leaves the pipeline as it
    /// was; a failure to start puts it in the error state with the reason.
    pub fn pipeline_start(self: &Arc<Self>, sid: &str) -> Result<(SessionRow, PipelineRow)> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        let (_, p) = self.pipeline(sid)?;
        let from = state_of(&p);
        let path: &[PEvent] = if matches!(from, PState::Stopped | PState::Error) {
            &[PEvent::Recover, PEvent::Start]
        } else {
            &[PEvent::Start]
        };
        if run(from, path).is_none() {
            return Err(EngineError::BadState(format!(
                "cannot start pipeline {} in state {}",
                p.pipeline_id,
                from.as_str()
            )));
        }
        match camera::start(self, sid) {
            // The camera start records start_complete (state active) in the same row
            // update that marks the session recording.
            Ok(row) => Ok((row, p)),
            Err(
                err @ (EngineError::Conflict(_)
                | EngineError::BadState(_)
                | EngineError::Transition { .. }
                | EngineError::NotFound { .. }),
            ) => Err(err),
            Err(err) => {
                let msg = err.to_string();
                let _ = self.update_row(sid, |r| {
                    if let Some(p) = r.pipeline.as_mut() {
                        p.state = PState::Error.as_str().into();
                        p.error_message = Some(msg);
                    }
                    Ok(())
                });
                Err(err)
            }
        }
    }

    /// active/starting/pausing/paused -> stopping -> stopped: the camera stops and the
    /// session's log is sealed (final checkpoint and signed manifest).
    pub fn pipeline_stop(&self, sid: &str) -> Result<SessionRow> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        let (_, p) = self.pipeline(sid)?;
        let from = state_of(&p);
        if run(from, &[PEvent::Stop, PEvent::StopComplete]).is_none() {
            return Err(EngineError::BadState(format!(
                "cannot stop pipeline {} in state {}",
                p.pipeline_id,
                from.as_str()
            )));
        }
        camera::stop(self, sid)
    }

    /// Tears the pipeline down: a running one is stopped first (its log sealed), then
    /// stopped/error -> cleanup -> destroyed, or created -> destroyed. The session and
    /// its chunks stay.
    pub fn pipeline_destroy(&self, sid: &str) -> Result<(SessionRow, PipelineRow)> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        let (row, p) = self.pipeline(sid)?;
        let mut state = state_of(&p);
        if run(state, &[PEvent::Stop, PEvent::StopComplete]).is_some() {
            if is_live(row.status) {
                camera::stop(self, sid)?;
            }
            state = PState::Stopped;
        }
        // Nothing is left to release once the camera has stopped, so the cleanup stage
        // completes at once; the path is still checked against the table.
        let end = run(state, &[PEvent::Cleanup, PEvent::CleanupComplete])
            .or_else(|| transition(state, PEvent::Destroy))
            .ok_or_else(|| {
                EngineError::BadState(format!("cannot destroy pipeline {} in state {}", p.pipeline_id, state.as_str()))
            })?;
        let now = now_rfc3339();
        let row = self.update_row(sid, |r| {
            if let Some(p) = r.pipeline.as_mut() {
                p.state = end.as_str().into();
                p.stopped_at.get_or_insert(now);
            }
            Ok(())
        })?;
        Ok((row, p))
    }
}

#[cfg(test)]
mod tests {
    use super::PEvent as E;
    use super::PState::*;
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in PState::ALL {
            assert_eq!(PState::parse(s.as_str()), Some(s));
        }
        assert_eq!(PState::parse("running"), None);
    }

    #[test]
    fn the_contract_table() {
        let allowed = [
            (Created, E::Start, Starting),
            (Starting, E::StartComplete, Active),
            (Active, E::Pause, Pausing),
            (Pausing, E::PauseComplete, Paused),
            (Paused, E::Resume, Active),
            (Active, E::Stop, Stopping),
            (Starting, E::Stop, Stopping),
            (Pausing, E::Stop, Stopping),
            (Paused, E::Stop, Stopping),
            (Stopping, E::StopComplete, Stopped),
            (Stopped, E::Recover, Created),
            (Error, E::Recover, Created),
            (Stopped, E::Cleanup, Cleanup),
            (Error, E::Cleanup, Cleanup),
            (Cleanup, E::CleanupComplete, Destroyed),
            (Created, E::Destroy, Destroyed),
            (Stopped, E::Destroy, Destroyed),
            (Error, E::Destroy, Destroyed),
        ];
        for (from, ev, to) in allowed {
            assert_eq!(transition(from, ev), Some(to), "{from:?} --{ev:?}-->");
        }
        let events = [
            E::Start,
            E::StartComplete,
            E::Pause,
            E::PauseComplete,
            E::Resume,
            E::Stop,
            E::StopComplete,
            E::Recover,
            E::Cleanup,
            E::CleanupComplete,
            E::Destroy,
        ];
        // Everything not in the table (error aside) is refused.
        for from in PState::ALL {
            for ev in events {
                if !allowed.iter().any(|(f, e, _)| *f == from && *e == ev) {
                    assert_eq!(transition(from, ev), None, "{from:?} --{ev:?}--> must be refused");
                }
            }
        }
    }

    #[test]
    fn error_from_any_non_terminal_state() {
        for from in PState::ALL {
            let want = if from == Destroyed { None } else { Some(Error) };
            assert_eq!(transition(from, E::Error), want, "{from:?}");
        }
    }

    #[test]
    fn destroyed_is_terminal() {
        for ev in [E::Start, E::Recover, E::Destroy, E::Cleanup, E::Error] {
            assert_eq!(transition(Destroyed, ev), None);
        }
    }

    #[test]
    fn paths_used_by_the_routes() {
        assert_eq!(run(Created, &[E::Start, E::StartComplete]), Some(Active));
        assert_eq!(run(Stopped, &[E::Recover, E::Start]), Some(Starting));
        assert_eq!(run(Active, &[E::Stop, E::StopComplete, E::Cleanup, E::CleanupComplete]), Some(Destroyed));
        assert_eq!(run(Created, &[E::Stop]), None);
        assert_eq!(run(Active, &[E::Start]), None);
    }
}
