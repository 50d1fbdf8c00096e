//! lucidd: the Lucid appliance daemon as a library, so the integration tests and the
//! benchmark drive exactly the code the binary runs.
//!
//! Code map: `config` (settings), `keys` (device secrets on disk), `store` (the only redb
//! user), `engine` (sessions, the chunk path, the camera recorder), `metrics` (counters),
//! `http` (the five services), `update` (signed A/B OTA updates and the trial-boot
//! self-check), `verify` (the offline evidence check), `recipients` (the data key encrypted
//! to age recipients, and `lucidd decrypt`), `gpio` (record LED and button on a Pi),
//! `discovery` (host name and mDNS advertisement), `clock` (NTP, the clock's floor and
//! whether its times can be trusted), `settings` (the owner's settings file on the boot
//! partition), `password` (the admin password), `grow` (the data partition grown to the
//! card at boot), `wifi` (the Wi-Fi client: wpa_supplicant and udhcpc on the wireless
//! interface, supervised). `main.rs` is a thin CLI over these.

pub mod clock;
pub mod config;
pub mod discovery;
pub mod engine;
pub mod gpio;
#[cfg(target_os = "linux")]
pub mod grow;
pub mod http;
#[cfg(target_os = "linux")]
pub mod hwcheck;
pub mod keys;
pub mod metrics;
pub mod password;
pub mod recipients;
pub mod settings;
pub mod store;
pub mod update;
pub mod util;
pub mod verify;
pub mod wifi;

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
    let floor = cfg.time.set_clock.then(|| clock::apply_floor(&cfg.data_dir));
    let engine = tokio::task::spawn_blocking(move || Engine::open(cfg)).await??;
    match floor {
        Some(Ok(Some(step_us))) => {
            tracing::warn!(step_us, "the clock was behind the firmware's date or the last saved time: moved forward");
            engine.clock.record_floor(step_us);
        }
        Some(Err(e)) => tracing::error!(error = %e, "cannot move the clock to its floor"),
        _ => {}
    }
    let timekeeper = tokio::spawn(keep_time(engine.clone()));
    let gpio = gpio::spawn(&engine.cfg.gpio, engine.clone());
    let advertiser = advertise(&engine).await;
    let wifi = tokio::spawn(wifi::supervise(engine.wifi.clone(), engine.cfg.network.clone(), engine.hostname()));
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
    timekeeper.abort();
    // Dropping the supervisor's future stops wpa_supplicant and udhcpc with it.
    wifi.abort();
    let _ = wifi.await;
    if let Err(e) = clock::save_now(&engine.cfg.data_dir) {
        tracing::warn!(error = %e, "cannot save the last known time");
    }
    check.abort();
    gpio.stop();
    if let Some(a) = advertiser {
        let _ = tokio::task::spawn_blocking(move || a.stop()).await;
    }
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

/// Starts the mDNS advertisement when `[network] mdns` is on. A device without a
/// multicast-capable interface still records and serves: the failure is logged and the
/// device is reached by address.
async fn advertise(engine: &Arc<Engine>) -> Option<discovery::Advertiser> {
    if !engine.cfg.network.mdns {
        return None;
    }
    let ad = discovery::Advert {
        hostname: engine.hostname(),
        device_id: engine.device_id.clone(),
        version: http::VERSION.to_owned(),
        port: engine.cfg.ports.gateway,
    };
    match tokio::task::spawn_blocking(move || discovery::Advertiser::start(&ad)).await {
        Ok(Ok(a)) => Some(a),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "mDNS advertisement not started; the device is reachable by address only");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "mDNS advertisement not started");
            None
        }
    }
}

/// Polls NTP (see `clock`): every `retry_secs` until the first answer, then every
/// `poll_secs`; saves the last known time every ten minutes (a small write an SD card
/// can afford; a power cut loses at most that much of the floor). The first answer of a run and
/// every step are device-log events.
async fn keep_time(engine: Arc<Engine>) {
    use std::time::Duration;
    let t = engine.cfg.time.clone();
    let mut save = tokio::time::interval(Duration::from_secs(600));
    let mut next_poll = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = save.tick() => {
                let dir = engine.cfg.data_dir.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || clock::save_now(&dir)).await {
                    tracing::warn!(error = %e, "cannot save the last known time");
                }
            }
            () = tokio::time::sleep_until(next_poll) => {
                let servers = clock::servers(&t.servers, &t.dhcp_servers_file);
                let set = t.set_clock;
                let r = tokio::task::spawn_blocking(move || clock::poll(&servers, set, Duration::from_secs(3)))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                let was_synced = engine.clock.synchronized();
                if engine.clock.record(&r) {
                    let e = engine.clone();
                    let stepped = r.as_ref().map(|a| a.stepped_us).unwrap_or(0);
                    match tokio::task::spawn_blocking(move || e.note_clock_synchronised(stepped)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the clock's synchronisation"),
                        Err(e) => tracing::warn!(error = %e, "cannot record the clock's synchronisation"),
                    }
                }
                match &r {
                    Ok(a) if !was_synced || a.stepped_us != 0 => {
                        tracing::info!(server = %a.server, offset_us = a.offset_us, stepped_us = a.stepped_us, "clock synchronized");
                    }
                    Err(e) if !was_synced => tracing::debug!(error = %e, "no time server answered"),
                    Err(e) => tracing::warn!(error = %e, "no time server answered"),
                    _ => {}
                }
                let wait = if engine.clock.synchronized() { t.poll_secs } else { t.retry_secs };
                next_poll = tokio::time::Instant::now() + Duration::from_secs(wait);
            }
        }
    }
}
