//! Retention: which sessions the device deletes by itself, and when.
//!
//! Owns the rules of `[retention]` (`max_age_days`, `keep_free_percent`,
//! `max_store_bytes`) and of each session's own `storage_config.retention_days`, in one
//! pure function, `decide`, that sees sessions, the store's accounting and the free space
//! and returns the sessions to delete in order, each with the rule that fired. The runner
//! around it (`Engine::enforce_retention`, the background thread of `spawn`, and
//! `Engine::make_room`, called by the chunk path before an append that would break a space
//! limit) gathers those inputs and deletes through `Engine::delete_because` with
//! `DeletedBy::Retention`, so every deletion is in the device log with its rule.
//!
//! It must never delete a locked session, the session being recorded or appended to, or
//! a session that is still open (a camera session not stopped, a data session neither
//! finalized nor idle for `idle_close_seconds`); it must not wait for a session another
//! caller is changing (it skips it), and it must not measure file sizes: redb reuses the
//! pages a delete frees but never shrinks its file, so decisions use the store's own
//! accounting (`Store::accounted_bytes`, the live sessions' value logs).

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use lucid_core::devlog::DeletedBy;

use super::{Engine, EngineError, Kind, Result, SessionRow, is_live, lock};
use crate::util::parse_rfc3339;

/// One session as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// What deleting it frees (`Store::session_bytes`).
    pub bytes: u64,
    /// When it ended (stopped, finalized, or last written), Unix seconds: the oldest go
    /// first, and its age counts from here.
    pub ended_unix: i64,
    /// Stopped (camera), or finalized or idle (data): nothing more is expected to come.
    pub closed: bool,
    /// Being recorded or appended to right now.
    pub active: bool,
    pub locked: bool,
    /// The session's own `storage_config.retention_days`, if it has one.
    pub retention_days: Option<u32>,
}

impl Candidate {
    fn deletable(&self) -> bool {
        self.closed && !self.active && !self.locked
    }
}

/// The device-wide limits in force (`keep_free_percent` already turned into bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_age_days: Option<u32>,
    pub max_store_bytes: Option<u64>,
    pub keep_free_bytes: Option<u64>,
}

/// The store's accounting and the partition's free space, and the bytes about to be
/// appended (0 for a background pass).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    pub accounted: u64,
    pub free: u64,
    pub incoming: u64,
}

/// The rule that chose a session; its `Display` is the reason in the device log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The session's own `storage_config.retention_days`.
    SessionRetention { days: u32 },
    /// `[retention] max_age_days`.
    MaxAge { days: u32 },
    /// `[retention] max_store_bytes`: the store (with the append about to happen) held
    /// `store` bytes against the cap.
    MaxStoreBytes { store: u64, cap: u64 },
    /// `[retention] keep_free_percent`: `free` bytes would be left, `want` are required.
    KeepFree { free: u64, want: u64 },
}

/// Bytes for a reason text: "130.2 MB".
fn mb(b: u64) -> String {
    let f = b as f64;
    match b {
        1_000_000_000.. => format!("{:.1} GB", f / 1e9),
        1_000_000.. => format!("{:.1} MB", f / 1e6),
        1_000.. => format!("{:.1} kB", f / 1e3),
        _ => format!("{b} B"),
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::SessionRetention { days } => write!(f, "session retention_days={days}"),
            Rule::MaxAge { days } => write!(f, "max_age_days={days}"),
            Rule::MaxStoreBytes { store, cap } => {
                write!(f, "max_store_bytes: store {} over cap {}", mb(*store), mb(*cap))
            }
            Rule::KeepFree { free, want } => {
                write!(f, "keep_free_percent: {} free, {} required", mb(*free), mb(*want))
            }
        }
    }
}

/// What to do: the sessions to delete, in order, each with its rule; and, when deleting
/// every deletable session would still not satisfy a space limit, why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub delete: Vec<(String, Rule)>,
    pub short: Option<String>,
}

/// The rules, without IO. Age rules first (a session's own `retention_days` before the
/// device's `max_age_days`), then the space rules, which take the oldest deletable
/// sessions until the store is under its cap and enough is free with `incoming` added.
/// Only closed, unlocked, inactive sessions are ever chosen; sessions holding no bytes are
/// not deleted for space (it would free nothing).
pub fn decide(sessions: &[Candidate], limits: &Limits, space: Space, now_unix: i64) -> Decision {
    let mut order: Vec<&Candidate> = sessions.iter().filter(|c| c.deletable()).collect();
    order.sort_by(|a, b| a.ended_unix.cmp(&b.ended_unix).then(a.id.cmp(&b.id)));
    let mut out = Decision::default();
    let mut freed = 0u64;
    let mut chosen = vec![false; order.len()];
    for (i, c) in order.iter().enumerate() {
        let age = now_unix.saturating_sub(c.ended_unix);
        let older = |days: u32| age > i64::from(days) * 86_400;
        // The stricter of the two: a session's own days never extend the device's limit.
        let rule = match (c.retention_days, limits.max_age_days) {
            (Some(s), Some(d)) if d < s && older(d) => Rule::MaxAge { days: d },
            (Some(s), _) if older(s) => Rule::SessionRetention { days: s },
            (_, Some(d)) if older(d) => Rule::MaxAge { days: d },
            _ => continue,
        };
        chosen[i] = true;
        freed += c.bytes;
        out.delete.push((c.id.clone(), rule));
    }
    // The first space limit still broken after `freed` bytes are gone, if any.
    let broken = |freed: u64| -> Option<Rule> {
        let store = space.accounted.saturating_sub(freed) + space.incoming;
        if let Some(cap) = limits.max_store_bytes.filter(|cap| store > *cap) {
            return Some(Rule::MaxStoreBytes { store, cap });
        }
        let free = (space.free + freed).saturating_sub(space.incoming);
        limits.keep_free_bytes.filter(|want| free < *want).map(|want| Rule::KeepFree { free, want })
    };
    for (i, c) in order.iter().enumerate() {
        let Some(rule) = broken(freed) else { break };
        if chosen[i] || c.bytes == 0 {
            continue;
        }
        chosen[i] = true;
        freed += c.bytes;
        out.delete.push((c.id.clone(), rule));
    }
    if let Some(rule) = broken(freed) {
        out.short = Some(format!("storage full: only locked or recording sessions remain ({rule})"));
    }
    out
}

/// A session's own size limit, `storage_config.max_size_gb` (the Lucid API's, in decimal
/// gigabytes): an append that would take the session past it is refused with `Full`. A
/// quota, not a retention rule: nothing is deleted for it (a recording stops there with
/// the reason on its row).
pub(crate) fn check_session_quota(row: &SessionRow, incoming: u64) -> Result<()> {
    let Some(gb) = row.storage_config.get("max_size_gb").and_then(serde_json::Value::as_f64).filter(|g| *g > 0.0)
    else {
        return Ok(());
    };
    let cap = (gb * 1e9) as u64;
    if row.stored_bytes + incoming > cap {
        return Err(EngineError::Full(format!(
            "session {} reached its storage_config max_size_gb={gb} ({} stored)",
            row.id,
            mb(row.stored_bytes)
        )));
    }
    Ok(())
}

/// Why recording and appends are refused now, and how many bytes the refused append
/// needed (the state clears once that much would fit; see `Engine::enforce_retention`).
#[derive(Debug, Clone)]
pub(crate) struct Blocked {
    pub reason: String,
    pub need: u64,
}

/// One pass's outcome.
#[derive(Debug, Default)]
pub struct Pass {
    /// The sessions deleted, with the reason logged for each.
    pub deleted: Vec<(String, String)>,
    /// Set when a space limit cannot be met by deleting what may be deleted.
    pub short: Option<String>,
}

fn unix(s: &str) -> Option<i64> {
    parse_rfc3339(s).map(|t| t.unix_timestamp())
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Engine {
    /// The device limits now (`keep_free_percent` of the partition's size in bytes).
    fn retention_limits(&self) -> (Limits, u64) {
        let r = &self.cfg.retention;
        let (free, total) = if r.keep_free_percent.is_some() { self.store.disk_space() } else { (0, 0) };
        let limits = Limits {
            max_age_days: r.max_age_days,
            max_store_bytes: r.max_store_bytes,
            keep_free_bytes: r.keep_free_percent.map(|p| total / 100 * u64::from(p)),
        };
        (limits, free)
    }

    /// The rules' view of one session row. `appending` is the session an append is
    /// making room for.
    fn candidate(&self, r: &SessionRow, recording: Option<&str>, appending: Option<&str>, now: i64) -> Candidate {
        let updated = unix(&r.updated_at).unwrap_or(now);
        let ended = r.stopped_at.as_deref().and_then(unix).unwrap_or(updated);
        let closed = match r.kind {
            Kind::Camera => !is_live(r.status) && r.status != super::Status::Created,
            Kind::Data => r.finalized || now.saturating_sub(updated) >= self.cfg.retention.idle_close_seconds as i64,
        };
        let retention_days = r
            .storage_config
            .get("retention_days")
            .and_then(serde_json::Value::as_u64)
            .and_then(|d| u32::try_from(d).ok())
            .filter(|d| *d > 0);
        Candidate {
            id: r.id.clone(),
            bytes: self.store.session_bytes(&r.id),
            ended_unix: ended,
            closed,
            active: is_live(r.status) || Some(r.id.as_str()) == recording || Some(r.id.as_str()) == appending,
            locked: r.locked,
            retention_days,
        }
    }

    /// One pass of the rules: decides over a snapshot of every session and deletes what
    /// was chosen. Passes run one at a time. A session whose transition lock is held by
    /// someone else is skipped (never waited for), and each is checked again under its
    /// lock (it may have been locked or restarted since the snapshot).
    fn retention_pass(&self, incoming: u64, appending: Option<&str>) -> Result<Pass> {
        let _one = lock(&self.retention);
        let now = now_unix();
        let recording = self.camera_session();
        let rows = self.list()?;
        let cands: Vec<Candidate> =
            rows.iter().map(|r| self.candidate(r, recording.as_deref(), appending, now)).collect();
        let (limits, free) = self.retention_limits();
        let space = Space { accounted: self.store.accounted_bytes(), free, incoming };
        let decision = decide(&cands, &limits, space, now);
        let mut pass = Pass { deleted: Vec::new(), short: decision.short };
        for (sid, rule) in decision.delete {
            let reason = rule.to_string();
            if self.delete_for_retention(&sid, &reason)? {
                tracing::info!(session = %sid, reason = %reason, "retention deleted a session");
                pass.deleted.push((sid, reason));
            }
        }
        Ok(pass)
    }

    /// Deletes `sid` for retention unless someone else is changing it, it was locked, or
    /// it went live since the pass looked. Returns whether it was deleted.
    fn delete_for_retention(&self, sid: &str, reason: &str) -> Result<bool> {
        let lk = self.session_lock(sid);
        let _g = match lk.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
        };
        let row = match self.get(sid) {
            Ok(r) => r,
            Err(EngineError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        if row.locked || is_live(row.status) || self.camera_session().as_deref() == Some(sid) {
            return Ok(false);
        }
        self.delete_row(sid, DeletedBy::Retention, reason)?;
        Ok(true)
    }

    /// The background pass: applies every rule to what is stored now. While appends are
    /// refused for lack of room, the refusal (and the degraded health) holds until an
    /// append of the refused size would fit without deleting anything (an admin deleted
    /// sessions, or space was freed), a session is unlocked, or an append succeeds again.
    /// It does not delete for the refused append: nothing is being appended, and the
    /// session whose recording was stopped would be the first to go.
    pub fn enforce_retention(&self) -> Result<Pass> {
        let pass = self.retention_pass(0, None)?;
        let need = lock(&self.retention_blocked).as_ref().map(|b| b.need);
        if let Some(need) = need
            && !self.over_space(need)
        {
            self.clear_blocked("room again");
        }
        Ok(pass)
    }

    fn clear_blocked(&self, why: &str) {
        if lock(&self.retention_blocked).take().is_some() {
            tracing::info!(why, "retention: appends are accepted again");
        }
    }

    /// Whether appending `incoming` bytes now would break a space limit.
    fn over_space(&self, incoming: u64) -> bool {
        let (limits, free) = self.retention_limits();
        let store = self.store.accounted_bytes() + incoming;
        limits.max_store_bytes.is_some_and(|cap| store > cap)
            || limits.keep_free_bytes.is_some_and(|want| free.saturating_sub(incoming) < want)
    }

    /// Called by the chunk path before `incoming` bytes are appended to `sid`: when the
    /// append would break a space limit, runs a pass first, so recording never fails for
    /// lack of room while deletable sessions exist. If the room cannot be made the append
    /// is refused with `Full` and the reason, which `/health` shows until room is back.
    pub(crate) fn make_room(&self, sid: &str, incoming: u64) -> Result<()> {
        let r = &self.cfg.retention;
        if r.max_store_bytes.is_none() && r.keep_free_percent.is_none() {
            return Ok(());
        }
        if !self.over_space(incoming) {
            self.clear_blocked("an append fits");
            return Ok(());
        }
        let pass = self.retention_pass(incoming, Some(sid))?;
        if !self.over_space(incoming) {
            self.clear_blocked("retention made room");
            return Ok(());
        }
        let reason = pass
            .short
            .unwrap_or_else(|| "storage full: the sessions that could be deleted are busy; try again".to_owned());
        tracing::warn!(session = %sid, incoming, reason = %reason, "append refused");
        *lock(&self.retention_blocked) = Some(Blocked { reason: reason.clone(), need: incoming });
        Err(EngineError::Full(reason))
    }

    /// An unlocked session may be what retention needs to make room: the next append
    /// will tell, so the refusal is not reported any longer.
    pub(crate) fn retention_unlocked(&self) {
        self.clear_blocked("a session was unlocked");
    }

    /// Why appends are refused for lack of room, if they are (for `/health` and the LED).
    pub fn retention_blocked(&self) -> Option<String> {
        lock(&self.retention_blocked).as_ref().map(|b| b.reason.clone())
    }
}

/// Starts the background runner (`super::spawn_runner`): `Engine::enforce_retention`
/// every `[retention] interval_ms`.
pub(crate) fn spawn(engine: &Arc<Engine>) -> Option<mpsc::Sender<()>> {
    let every = Duration::from_millis(engine.cfg.retention.interval_ms);
    super::spawn_runner(engine, "lucid-retention", every, "only appends will make room", move |e| {
        if let Err(err) = e.enforce_retention() {
            tracing::warn!(error = %err, "retention pass failed");
        }
        every
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_000 * DAY;

    fn closed(id: &str, bytes: u64, days_ago: i64) -> Candidate {
        Candidate {
            id: id.into(),
            bytes,
            ended_unix: NOW - days_ago * DAY,
            closed: true,
            active: false,
            locked: false,
            retention_days: None,
        }
    }

    fn ids(d: &Decision) -> Vec<&str> {
        d.delete.iter().map(|(s, _)| s.as_str()).collect()
    }

    #[test]
    fn nothing_without_limits() {
        let s = [closed("a", 10, 400), closed("b", 10, 1)];
        let d = decide(&s, &Limits::default(), Space { accounted: 20, free: 0, incoming: 5 }, NOW);
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn max_age_takes_every_older_session_oldest_first() {
        let s = [closed("new", 10, 1), closed("old", 10, 30), closed("older", 10, 40), closed("edge", 10, 7)];
        let limits = Limits { max_age_days: Some(7), ..Limits::default() };
        let d = decide(&s, &limits, Space::default(), NOW);
        assert_eq!(ids(&d), ["older", "old"]);
        assert!(d.delete.iter().all(|(_, r)| *r == Rule::MaxAge { days: 7 }));
        assert_eq!(d.delete[0].1.to_string(), "max_age_days=7");
        assert_eq!(d.short, None);
    }

    #[test]
    fn a_sessions_own_retention_days_apply_and_the_stricter_limit_wins() {
        let mut a = closed("a", 10, 2);
        a.retention_days = Some(1);
        let mut b = closed("b", 10, 20);
        b.retention_days = Some(30);
        let mut c = closed("c", 10, 25);
        c.retention_days = Some(40);
        let d = closed("d", 10, 3);
        let limits = Limits { max_age_days: Some(10), ..Limits::default() };
        let got = decide(&[a.clone(), b.clone(), c, d], &limits, Space::default(), NOW);
        // Oldest first; a session's longer retention_days does not extend the device's.
        assert_eq!(
            got.delete,
            vec![
                ("c".into(), Rule::MaxAge { days: 10 }),
                ("b".into(), Rule::MaxAge { days: 10 }),
                ("a".into(), Rule::SessionRetention { days: 1 }),
            ]
        );
        assert_eq!(got.delete[2].1.to_string(), "session retention_days=1");
        // Without a device limit only the sessions' own days apply.
        let got = decide(&[a, b], &Limits::default(), Space::default(), NOW);
        assert_eq!(got.delete, vec![("a".into(), Rule::SessionRetention { days: 1 })]);
    }

    #[test]
    fn store_cap_deletes_oldest_until_the_append_fits() {
        let s = [closed("c", 40, 1), closed("a", 40, 3), closed("b", 40, 2)];
        let limits = Limits { max_store_bytes: Some(100), ..Limits::default() };
        let d = decide(&s, &limits, Space { accounted: 120, free: 1 << 30, incoming: 10 }, NOW);
        assert_eq!(ids(&d), ["a"]);
        assert_eq!(d.delete[0].1, Rule::MaxStoreBytes { store: 130, cap: 100 });
        assert_eq!(d.short, None);
        // A larger append needs two.
        let d = decide(&s, &limits, Space { accounted: 120, free: 1 << 30, incoming: 30 }, NOW);
        assert_eq!(ids(&d), ["a", "b"]);
        assert_eq!(d.delete[1].1, Rule::MaxStoreBytes { store: 110, cap: 100 });
    }

    #[test]
    fn under_the_cap_nothing_is_deleted() {
        let s = [closed("a", 40, 3)];
        let limits = Limits { max_store_bytes: Some(100), ..Limits::default() };
        let d = decide(&s, &limits, Space { accounted: 90, free: 0, incoming: 10 }, NOW);
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn keep_free_counts_freed_bytes_and_the_append() {
        let s = [closed("a", 50, 3), closed("b", 50, 2), closed("c", 50, 1)];
        let limits = Limits { keep_free_bytes: Some(100), ..Limits::default() };
        let d = decide(&s, &limits, Space { accounted: 150, free: 20, incoming: 10 }, NOW);
        // 20 - 10 = 10 free; +50 = 60; +50 = 110 >= 100.
        assert_eq!(ids(&d), ["a", "b"]);
        assert_eq!(d.delete[0].1, Rule::KeepFree { free: 10, want: 100 });
        assert_eq!(d.delete[1].1, Rule::KeepFree { free: 60, want: 100 });
    }

    #[test]
    fn locked_active_and_open_sessions_are_never_chosen() {
        let mut locked = closed("locked", 100, 50);
        locked.locked = true;
        let mut active = closed("active", 100, 60);
        active.active = true;
        let mut open = closed("open", 100, 70);
        open.closed = false;
        let s = [locked, active, open, closed("ok", 10, 1)];
        let limits = Limits { max_age_days: Some(1), max_store_bytes: Some(50), keep_free_bytes: Some(1 << 40) };
        let d = decide(&s, &limits, Space { accounted: 310, free: 0, incoming: 10 }, NOW);
        assert_eq!(ids(&d), ["ok"]);
        let short = d.short.expect("still over the cap");
        assert!(short.starts_with("storage full: only locked or recording sessions remain"), "{short}");
        assert!(short.contains("max_store_bytes"), "{short}");
    }

    #[test]
    fn empty_sessions_are_not_deleted_for_space_and_age_rules_come_first() {
        let s = [closed("empty", 0, 9), closed("aged", 30, 8), closed("big", 60, 2), closed("young", 60, 1)];
        let limits = Limits { max_age_days: Some(7), max_store_bytes: Some(100), keep_free_bytes: None };
        let d = decide(&s, &limits, Space { accounted: 150, free: 0, incoming: 0 }, NOW);
        // Age takes both old ones (freeing 30): 120 > 100, so the oldest with bytes goes.
        assert_eq!(
            d.delete,
            vec![
                ("empty".into(), Rule::MaxAge { days: 7 }),
                ("aged".into(), Rule::MaxAge { days: 7 }),
                ("big".into(), Rule::MaxStoreBytes { store: 120, cap: 100 }),
            ]
        );
        assert_eq!(d.delete[2].1.to_string(), "max_store_bytes: store 120 B over cap 100 B");
    }
}
