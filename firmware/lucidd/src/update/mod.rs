//! Signed A/B OTA updates on the device: install a bundle into the inactive slot, arm a
//! one-shot trial boot of it, and on the next start check the new system before
//! committing it. Bundle format in `lucid_core::bundle`; boot-control files and the whole
//! protocol in docs/design.md ("OTA bundle", "Boot control").
//!
//! Owns the update state machine (idle -> receiving -> verifying -> installed | failed),
//! what the device knows about itself (running slot, board, release), the trusted keys,
//! and rebooting. Submodules: `bootctl` (the boot loader's files), `host` (the
//! `lucidd bundle` commands: keys, create, inspect), `install` (streaming
//! a bundle into the slot devices), `selfcheck` (the trial-boot check and commit). It
//! must never write the running slot, never arm a slot whose every payload has not been
//! written, synced and read back, and never install while the running slot is itself
//! still on trial (the other slot is then the only good one).

pub mod bootctl;
pub mod host;
pub mod install;
pub mod selfcheck;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use lucid_core::Verifier;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{BootControlKind, SlotDevices, UpdateConfig};
use crate::engine::Engine;
pub use bootctl::{BootControl, BootCtlError, Slot};

/// Why the update machinery could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("updates are not configured on this device")]
    NotConfigured,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error(transparent)]
    BootCtl(#[from] BootCtlError),
}

/// The running system, from the release file and the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub slot: Slot,
    pub board: String,
    pub version: String,
    pub build: u64,
}

/// Parses the release file: `key=value` lines with `board`, `version` and `build`;
/// other keys and `#` comments are ignored.
pub fn parse_release(text: &str) -> Result<(String, String, u64), String> {
    let mut kv = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            kv.insert(k.trim(), v.trim().trim_matches('"'));
        }
    }
    let get = |k: &str| kv.get(k).map(|v| v.to_string()).ok_or_else(|| format!("no {k}= line"));
    let build = get("build")?.parse::<u64>().map_err(|_| "build= is not a whole number".to_string())?;
    Ok((get("board")?, get("version")?, build))
}

/// Loads every `*.vkey` in `dir` (one C2SP verifier key per file).
pub fn load_trusted_keys(dir: &Path) -> Result<Vec<Verifier>, UpdateError> {
    let read = |source| UpdateError::Read { path: dir.into(), source };
    let mut keys = Vec::new();
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(read)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "vkey")) {
        let text = std::fs::read_to_string(&path).map_err(|source| UpdateError::Read { path: path.clone(), source })?;
        let key = Verifier::from_vkey(text.trim())
            .map_err(|e| UpdateError::Malformed { path: path.clone(), reason: e.to_string() })?;
        keys.push(key);
    }
    Ok(keys)
}

/// Where an install stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Idle,
    Receiving,
    Verifying,
    Installed,
    Failed,
}

/// Progress of the current or last install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub bytes_received: u64,
    /// Whole bundle size once the manifest is known (head + payloads).
    pub bytes_total: Option<u64>,
    pub payload: Option<String>,
    pub payload_bytes_written: u64,
}

/// What was installed, for the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    pub slot: Slot,
    pub version: String,
    pub build: u64,
    pub signed_by: String,
}

/// One named step of a self-check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CheckStep {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The result of the start-up self-check, persisted in the data dir so it is still
/// reported after later restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SelfCheckReport {
    pub at: String,
    pub slot: String,
    pub build: u64,
    pub ok: bool,
    pub committed: bool,
    pub steps: Vec<CheckStep>,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Installs begun since start: lets a client tell the install it started from an
    /// earlier one that ended the same way.
    attempts: u64,
    reason: Option<String>,
    progress: Progress,
    installed: Option<Installed>,
    last_self_check: Option<SelfCheckReport>,
}

/// The update service of one engine: configuration, what is running, and the state.
#[derive(Debug)]
pub struct Updater {
    pub cfg: UpdateConfig,
    data_dir: PathBuf,
    state: Mutex<State>,
}

/// The file in the data dir holding the last self-check report.
const SELF_CHECK_FILE: &str = "update-self-check.json";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One updater per engine: the HTTP routes and the start-up self-check of the same
/// engine share it. Kept here, keyed by the engine, because the engine itself knows
/// nothing of updates.
static REGISTRY: Mutex<Vec<(Weak<Engine>, Arc<Updater>)>> = Mutex::new(Vec::new());

impl Updater {
    /// The updater of `engine`, created on first use.
    pub fn of(engine: &Arc<Engine>) -> Arc<Updater> {
        let mut reg = lock(&REGISTRY);
        reg.retain(|(e, _)| e.strong_count() > 0);
        if let Some((_, u)) = reg.iter().find(|(e, _)| std::ptr::eq(e.as_ptr(), Arc::as_ptr(engine))) {
            return u.clone();
        }
        let u = Arc::new(Updater::new(engine.cfg.update.clone(), &engine.cfg.data_dir));
        reg.push((Arc::downgrade(engine), u.clone()));
        u
    }

    pub fn new(cfg: UpdateConfig, data_dir: &Path) -> Updater {
        let last_self_check =
            std::fs::read(data_dir.join(SELF_CHECK_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok());
        Updater {
            cfg,
            data_dir: data_dir.to_owned(),
            state: Mutex::new(State {
                phase: Phase::Idle,
                attempts: 0,
                reason: None,
                progress: Progress::default(),
                installed: None,
                last_self_check,
            }),
        }
    }

    pub fn configured(&self) -> bool {
        self.cfg.boot_control != BootControlKind::None
    }

    pub fn boot_control(&self) -> Result<BootControl, UpdateError> {
        if !self.configured() {
            return Err(UpdateError::NotConfigured);
        }
        Ok(BootControl::new(self.cfg.boot_control, &self.cfg.bootctl_dir))
    }

    /// The running slot and release.
    pub fn current(&self) -> Result<Release, UpdateError> {
        let slot = bootctl::running_slot(&self.cfg.cmdline_path)?;
        let path = &self.cfg.release_file;
        let text = std::fs::read_to_string(path).map_err(|source| UpdateError::Read { path: path.clone(), source })?;
        let (board, version, build) =
            parse_release(&text).map_err(|reason| UpdateError::Malformed { path: path.clone(), reason })?;
        Ok(Release { slot, board, version, build })
    }

    pub fn slot_devices(&self, slot: Slot) -> Result<&SlotDevices, UpdateError> {
        let slots = self.cfg.slots.as_ref().ok_or(UpdateError::NotConfigured)?;
        Ok(match slot {
            Slot::A => &slots.a,
            Slot::B => &slots.b,
        })
    }

    /// Moves to `Receiving` unless an install is already running: the single-writer
    /// gate for the inactive slot. Returns false when busy.
    pub(crate) fn try_begin(&self) -> bool {
        let mut s = lock(&self.state);
        if matches!(s.phase, Phase::Receiving | Phase::Verifying) {
            return false;
        }
        s.phase = Phase::Receiving;
        s.attempts += 1;
        s.reason = None;
        s.progress = Progress::default();
        s.installed = None;
        true
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        lock(&self.state).phase = phase;
    }

    pub(crate) fn progress(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut lock(&self.state).progress);
    }

    pub(crate) fn fail(&self, reason: &str) {
        let mut s = lock(&self.state);
        s.phase = Phase::Failed;
        s.reason = Some(reason.to_owned());
    }

    pub(crate) fn succeed(&self, installed: Installed) {
        let mut s = lock(&self.state);
        s.phase = Phase::Installed;
        s.installed = Some(installed);
    }

    /// Records (and persists) a self-check report.
    pub fn record_self_check(&self, report: SelfCheckReport) {
        let path = self.data_dir.join(SELF_CHECK_FILE);
        match serde_json::to_vec_pretty(&report) {
            Ok(bytes) => {
                if let Err(e) = bootctl::write_atomic(&path, &bytes) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot persist the self-check report");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize the self-check report"),
        }
        lock(&self.state).last_self_check = Some(report);
    }

    pub fn last_self_check(&self) -> Option<SelfCheckReport> {
        lock(&self.state).last_self_check.clone()
    }

    pub fn phase(&self) -> Phase {
        lock(&self.state).phase.clone()
    }

    /// The `GET /api/v1/update` body.
    pub fn status(&self) -> Value {
        let current = self.current();
        let trial = match (&current, self.boot_control()) {
            (Ok(r), Ok(bc)) => bc.is_trial(r.slot).map_err(|e| e.to_string()),
            (Err(e), _) => Err(e.to_string()),
            (_, Err(e)) => Err(e.to_string()),
        };
        let s = lock(&self.state);
        let mut v = json!({
            "state": s.phase,
            "attempt": s.attempts,
            "progress": s.progress,
            "current": current.as_ref().ok(),
            "trial_boot": trial.as_ref().ok(),
            "boot_control": self.cfg.boot_control,
            "board": self.cfg.board,
            "installed": s.installed,
            "last_self_check": s.last_self_check,
        });
        if let Some(r) = &s.reason {
            v["reason"] = json!(r);
        }
        let problem = match (&current, &trial) {
            (Err(e), _) => Some(e.to_string()),
            (_, Err(e)) => Some(e.clone()),
            _ => None,
        };
        if let Some(p) = problem {
            v["problem"] = json!(p);
        }
        v
    }
}

/// How to restart into the next slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootKind {
    /// A plain restart (U-Boot reads lucid.env).
    Normal,
    /// `reboot(RESTART2, "0 tryboot")`: the Pi firmware boots `[tryboot]` once.
    Tryboot,
}

/// Syncs the file systems and restarts the machine. Returns only on failure.
pub fn reboot(kind: RebootKind) -> std::io::Error {
    tracing::warn!(?kind, "rebooting");
    // SAFETY: sync and reboot take no pointers except the NUL-terminated argument string,
    // which outlives the call.
    unsafe {
        libc::sync();
        let rc = match kind {
            RebootKind::Normal => libc::reboot(libc::RB_AUTOBOOT),
            RebootKind::Tryboot => {
                let arg = c"0 tryboot";
                libc::syscall(
                    libc::SYS_reboot,
                    libc::LINUX_REBOOT_MAGIC1,
                    libc::LINUX_REBOOT_MAGIC2,
                    libc::LINUX_REBOOT_CMD_RESTART2,
                    arg.as_ptr(),
                ) as libc::c_int
            }
        };
        if rc == 0 {
            // The kernel is restarting; nothing after this runs.
            loop {
                std::thread::park();
            }
        }
    }
    std::io::Error::last_os_error()
}

/// After a failed self-check: a plain restart, which returns to the committed slot
/// under both boot controls (U-Boot already cleared the one-shot `lucid_try`; the Pi
/// firmware uses `[tryboot]` only on a tryboot restart). Returns only on failure.
pub fn reboot_after_failed_check() -> std::io::Error {
    reboot(RebootKind::Normal)
}

/// The reboot that boots an armed trial under this boot control.
pub fn reboot_kind(kind: BootControlKind) -> RebootKind {
    match kind {
        BootControlKind::RpiTryboot => RebootKind::Tryboot,
        _ => RebootKind::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_file() {
        let (b, v, n) =
            parse_release("# lucid\nboard=qemu-aarch64-virt\nversion=\"0.2.0\"\nbuild=17\nextra=1\n").unwrap();
        assert_eq!((b.as_str(), v.as_str(), n), ("qemu-aarch64-virt", "0.2.0", 17));
        assert!(parse_release("board=x\nversion=1\n").is_err());
        assert!(parse_release("board=x\nversion=1\nbuild=-1\n").is_err());
    }
}
