//! lucidd: the Lucid appliance daemon as a library, so the integration tests and the
//! benchmark drive exactly the code the binary runs.
//!
//! Code map: `config` (settings), `keys` (device secrets on disk), `store` (the only redb
//! user), `engine` (sessions, the chunk path, the camera recorder), `metrics` (counters),
//! `http` (the five services), `update` (signed A/B OTA updates and the trial-boot
//! self-check), `verify` (the offline evidence check), `recipients` (the data key encrypted
//! to age recipients, and `lucidd decrypt`), `gpio` (record LED and button on a
//! Pi). `main.rs` is a thin CLI over these.

pub mod config;
pub mod engine;
pub mod gpio;
pub mod http;
#[cfg(target_os = "linux")]
pub mod hwcheck;
pub mod keys;
pub mod metrics;
pub mod recipients;
pub mod store;
pub mod update;
pub mod util;
pub mod verify;

use std::sync::Arc;

pub use config::Config;
pub use engine::Engine;

/// Opens the engine and serves the five services until `shutdown` resolves, then stops
/// any recording cleanly (final checkpoint and manifest) before returning.
///
/// On a trial boot after an update, the self-check runs beside the services once they
/// are up. If it passes, the running slot is committed. If it fails, the services stop,
/// the engine shuts down cleanly, and then the device reboots back to the committed slot
/// (when `update.reboot_after_install` is set) or `run` returns the failure, so the
/// process exits non-zero.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    cfg.validate()?;
    let engine = tokio::task::spawn_blocking(move || Engine::open(cfg)).await??;
    let gpio = gpio::spawn(&engine.cfg.gpio, engine.clone());
    let ticker = {
        let e = engine.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                iv.tick().await;
                let e = e.clone();
                let _ = tokio::task::spawn_blocking(move || e.tick()).await;
            }
        })
    };
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    let check = {
        let e = engine.clone();
        tokio::spawn(async move {
            let services = update::selfcheck::service_addrs(&e.cfg);
            match update::selfcheck::at_startup(&e, services).await {
                Ok(Some(report)) if !report.ok => {
                    let _ = failed_tx.send(update::selfcheck::failures(&report));
                }
                Ok(_) => {}
                // A device whose boot control or release cannot be read keeps running:
                // the boot loader's own fallback still holds, and the operator needs the
                // services to find out what is wrong.
                Err(err) => tracing::error!(error = %err, "update self-check could not run"),
            }
        })
    };
    let failure = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = {
        let failure = failure.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                Ok(why) = failed_rx => {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            }
        }
    };
    let served = http::serve(engine.clone(), stop).await;
    ticker.abort();
    check.abort();
    gpio.stop();
    let e: Arc<Engine> = engine.clone();
    tokio::task::spawn_blocking(move || e.shutdown()).await?;
    let failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(why) = failure {
        if engine.cfg.update.reboot_after_install {
            let err = tokio::task::spawn_blocking(update::reboot_after_failed_check).await?;
            anyhow::bail!("update self-check failed ({why}) and the reboot failed: {err}");
        }
        anyhow::bail!("update self-check failed: {why}");
    }
    served
}
