//! lucidd: the Lucid appliance daemon as a library, so the integration tests and the
//! benchmark drive exactly the code the binary runs.
//!
//! Code map: `config` (settings), `keys` (device secrets on disk), `store` (the only redb
//! user), `engine` (sessions, the chunk path, the camera recorder), `metrics` (counters),
//! `http` (the five services), `verify` (the offline evidence check). `main.rs` is a thin
//! CLI over these.

pub mod config;
pub mod engine;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod store;
pub mod util;
pub mod verify;

use std::sync::Arc;

pub use config::Config;
pub use engine::Engine;

/// Opens the engine and serves the five services until `shutdown` resolves, then stops
/// any recording cleanly (final checkpoint and manifest) before returning.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    cfg.validate()?;
    let engine = tokio::task::spawn_blocking(move || Engine::open(cfg)).await??;
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
    let served = http::serve(engine.clone(), shutdown).await;
    ticker.abort();
    let e: Arc<Engine> = engine.clone();
    tokio::task::spawn_blocking(move || e.shutdown()).await?;
    served
}
