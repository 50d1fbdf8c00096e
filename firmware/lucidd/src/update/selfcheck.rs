//! The start-up self-check of a trial boot: after an update the new slot runs once on
//! trial, and only this check makes it the committed slot. Steps: the store opened and
//! answers a read, each of the five services answers `GET /health` with 200 over
//! loopback, and the media pipeline starts: the recording path itself (configured source,
//! the encoder a recording would pick) yields a keyframe. With a V4L2 source and no
//! camera attached that step passes as skipped: the old slot would see no camera either.
//!
//! Owns the steps and the commit decision. It must not reboot (the caller does, after a
//! clean engine shutdown) and must not commit anything but the running slot, and only
//! when every step passed: a slot that cannot prove itself must leave the committed slot
//! as it was, so the next boot returns there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CheckStep, SelfCheckReport, UpdateError, Updater};
use crate::config::Config;
use crate::engine::Engine;
use crate::engine::camera::Probe;
use crate::util::now_rfc3339;

/// The loopback addresses of the five services as `cfg` binds them.
pub fn service_addrs(cfg: &Config) -> Vec<(String, SocketAddr)> {
    let ip = match cfg.bind {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    let p = &cfg.ports;
    [
        ("pipeline", p.pipeline),
        ("recorder", p.recorder),
        ("processor", p.processor),
        ("storage", p.storage),
        ("gateway", p.gateway),
    ]
    .into_iter()
    .map(|(n, port)| (n.to_string(), SocketAddr::new(ip, port)))
    .collect()
}

/// Records the running, committed firmware in the device log. A failure is logged, not
/// fatal: the next start retries, and the slot is committed either way.
async fn note_firmware(engine: &Arc<Engine>, current: &super::Release) {
    let (e, version, build) = (engine.clone(), current.version.clone(), current.build);
    match tokio::task::spawn_blocking(move || e.note_committed_firmware(&version, build)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the committed firmware in the device log"),
        Err(e) => tracing::warn!(error = %e, "cannot record the committed firmware in the device log"),
    }
}

/// Runs the self-check if this boot is a trial, commits the running slot when it
/// passes, and records the report. `Ok(None)`: updates are not configured or this is
/// not a trial boot (nothing to check).
pub async fn at_startup(
    engine: &Arc<Engine>,
    services: Vec<(String, SocketAddr)>,
) -> Result<Option<SelfCheckReport>, UpdateError> {
    let u = Updater::of(engine);
    if !u.configured() {
        return Ok(None);
    }
    let (current, bc) = (u.current()?, u.boot_control()?);
    if !bc.is_trial(current.slot)? {
        tracing::info!(slot = %current.slot, build = current.build, "running the committed slot");
        note_firmware(engine, &current).await;
        return Ok(None);
    }
    tracing::info!(slot = %current.slot, build = current.build, "trial boot: running the self-check");
    let timeout = Duration::from_secs(u.cfg.self_check_timeout_secs);
    let mut steps = vec![store_step(engine).await];
    for (name, addr) in services {
        steps.push(health_step(&name, addr, timeout).await);
    }
    steps.push(media_step(engine).await);
    let mut ok = steps.iter().all(|s| s.ok);
    let mut committed = false;
    if ok {
        let slot = current.slot;
        match tokio::task::spawn_blocking(move || bc.commit(slot)).await {
            Ok(Ok(())) => {
                committed = true;
                steps.push(CheckStep {
                    name: "commit".into(),
                    ok: true,
                    detail: format!("slot {slot} is now the committed slot"),
                });
            }
            Ok(Err(e)) => {
                ok = false;
                steps.push(CheckStep { name: "commit".into(), ok: false, detail: e.to_string() });
            }
            Err(e) => {
                ok = false;
                steps.push(CheckStep { name: "commit".into(), ok: false, detail: format!("worker: {e}") });
            }
        }
    }
    for s in steps.iter().filter(|s| !s.ok) {
        tracing::error!(step = %s.name, detail = %s.detail, "self-check step failed");
    }
    if committed {
        tracing::info!(slot = %current.slot, build = current.build, "self-check passed; slot committed");
        note_firmware(engine, &current).await;
    } else {
        tracing::error!(slot = %current.slot, "self-check failed; the slot stays uncommitted and the next boot returns to the committed one");
    }
    let report = SelfCheckReport {
        at: now_rfc3339(),
        slot: current.slot.to_string(),
        build: current.build,
        ok,
        committed,
        steps,
    };
    u.record_self_check(report.clone());
    Ok(Some(report))
}

/// The names and details of the failed steps, for logs and exit messages.
pub fn failures(report: &SelfCheckReport) -> String {
    report.steps.iter().filter(|s| !s.ok).map(|s| format!("{}: {}", s.name, s.detail)).collect::<Vec<_>>().join("; ")
}

async fn store_step(engine: &Arc<Engine>) -> CheckStep {
    let e = engine.clone();
    let (ok, detail) = match tokio::task::spawn_blocking(move || e.list()).await {
        Ok(Ok(rows)) => (true, format!("store open, {} sessions", rows.len())),
        Ok(Err(e)) => (false, format!("store read failed: {e}")),
        Err(e) => (false, format!("worker: {e}")),
    };
    CheckStep { name: "store".into(), ok, detail }
}

/// Polls `GET /health` until it answers 200 or `timeout` passes: the listeners may still
/// be binding when the check starts.
async fn health_step(name: &str, addr: SocketAddr, timeout: Duration) -> CheckStep {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(5), health_status(addr)).await {
            Ok(Ok(200)) => {
                return CheckStep { name: format!("health:{name}"), ok: true, detail: format!("{addr} answered 200") };
            }
            Ok(Ok(code)) => format!("{addr} answered {code}"),
            Ok(Err(e)) => format!("{addr}: {e}"),
            Err(_) => format!("{addr}: no answer within 5 s"),
        };
        if Instant::now() >= deadline {
            return CheckStep { name: format!("health:{name}"), ok: false, detail: last };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The status code of one `GET /health`, over a bare HTTP/1.1 connection (the daemon
/// has no HTTP client, and this needs only the status line).
async fn health_status(addr: SocketAddr) -> std::io::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 1024 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}

async fn media_step(engine: &Arc<Engine>) -> CheckStep {
    let e = engine.clone();
    let (ok, detail) = match tokio::task::spawn_blocking(move || crate::engine::camera::probe(&e)).await {
        Ok(Ok(Probe::Encoded(d))) => (true, d),
        // The old slot would not see a camera either: not a reason to roll back.
        Ok(Ok(Probe::NoCamera(d))) => {
            tracing::warn!(detail = %d, "self-check: media step skipped");
            (true, format!("skipped: {d}"))
        }
        Ok(Err(d)) => (false, d),
        Err(e) => (false, format!("worker: {e}")),
    };
    CheckStep { name: "media".into(), ok, detail }
}
