//! The `lucidd` binary: parses the command line, sets up logging, and calls into the
//! library. Errors become exit codes here and nowhere else (0 ok, 1 failure, 2 usage).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lucidd::config::{Config, SourceKind};

#[derive(Parser, Debug)]
#[command(name = "lucidd", version, about = "Lucid recording appliance daemon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the appliance: record from the camera and serve the five Lucid services.
    Run(RunArgs),
    /// Print the device's host name (`[network] hostname`, or `lucid-<4 hex of the device
    /// id>`), creating the device key if this is the first boot: the image's init sets the
    /// kernel's host name with it before DHCP, so DHCP and mDNS announce one name.
    Hostname(RunArgs),
    /// Apply the owner's settings file from the boot partition (`[settings] dir`:
    /// lucid.toml, or Raspberry Pi Imager's custom.toml) if it changed, and make an admin
    /// password if the device has none: the image's init runs it before `hostname`.
    /// A rejected file changes nothing and is reported; the exit status is non-zero only
    /// when the data partition cannot be written.
    Settings(RunArgs),
    /// Verify an evidence bundle offline (no device, no secrets needed).
    Verify {
        /// The evidence tar from GET /api/v1/sessions/{id}/evidence, or clip evidence from
        /// GET /api/v1/sessions/{id}/clip-evidence (told apart by its VERSION entry).
        evidence: PathBuf,
        /// Fail unless the bundle is signed by this verifier key (a file holding the
        /// `verifier_key` of the device's GET /api/v1/device).
        #[arg(long, value_name = "FILE", conflicts_with = "device_id")]
        vkey: Option<PathBuf>,
        /// Fail unless the bundle is signed by this device (lucid- and 16 hex digits).
        #[arg(long, value_name = "ID")]
        device_id: Option<String>,
        /// Also check this export (GET /api/v1/sessions/{id}/export.mp4) against the
        /// evidence: the init segment and every fragment, in order; with clip evidence, the
        /// clip (GET /api/v1/sessions/{id}/clip.mp4 of the same range).
        #[arg(long, value_name = "EXPORT.mp4")]
        media: Option<PathBuf>,
        /// Also prove, with the device's evidence (GET /api/v1/device/evidence) taken after
        /// the session's, that this manifest is the session's latest and that the session
        /// was not deleted.
        #[arg(long, value_name = "DEVICE.tar")]
        device_evidence: Option<PathBuf>,
    },
    /// Verify session evidence exactly as `verify` does, then decrypt it with an age
    /// identity that is one of the device's recipients (`[evidence] recipients`) and write
    /// the plaintext export: the same bytes as the device's export.mp4.
    Decrypt {
        /// The evidence tar from GET /api/v1/sessions/{id}/evidence.
        evidence: PathBuf,
        /// An age identity file (`age-keygen -o KEY.txt`) of one of the recipients.
        #[arg(long, short = 'i', value_name = "KEY.txt")]
        identity: PathBuf,
        /// Where to write the MP4 (replaced only once everything decrypted and matched).
        #[arg(long, short = 'o', value_name = "OUT.mp4")]
        out: PathBuf,
        /// Fail unless the bundle is signed by this verifier key file.
        #[arg(long, value_name = "FILE", conflicts_with = "device_id")]
        vkey: Option<PathBuf>,
        /// Fail unless the bundle is signed by this device (lucid- and 16 hex digits).
        #[arg(long, value_name = "ID")]
        device_id: Option<String>,
        /// Also prove the session's standing with the device's evidence, as `verify` does.
        #[arg(long, value_name = "DEVICE.tar")]
        device_evidence: Option<PathBuf>,
    },
    /// Verify a device's evidence (GET /api/v1/device/evidence) offline and list every
    /// session the device ever created, with its latest head and any deletion. Fails on a
    /// gap, a reordering or a fork of the device log.
    VerifyDevice {
        /// The device-evidence tar.
        evidence: PathBuf,
        /// Fail unless the log is signed by this verifier key file.
        #[arg(long, value_name = "FILE", conflicts_with = "device_id")]
        vkey: Option<PathBuf>,
        /// Fail unless the log is signed by this device (lucid- and 16 hex digits).
        #[arg(long, value_name = "ID")]
        device_id: Option<String>,
    },
    /// Print the effective configuration (secrets omitted) and exit.
    Config(RunArgs),
    /// Make, check and sign OTA update bundles (host side).
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// V4L2 hardware: list cameras and codecs; decode a recording on the device.
    #[cfg(target_os = "linux")]
    #[command(subcommand)]
    Hw(HwCmd),
    /// Grow the data partition to the end of the card, and its mounted ext4 with it. The
    /// image's init runs it at every boot right after mounting /data: it does what is left
    /// of a grow (none, all, or the rest of one a power cut stopped) and prints each step
    /// as a `lucid-grow:` line (docs/image.md, "First boot").
    #[cfg(target_os = "linux")]
    GrowData {
        /// The whole disk holding the partition (the image's init passes board.env's
        /// LUCID_DATA_DISK: /dev/mmcblk0, /dev/vda).
        #[arg(long, value_name = "DEVICE")]
        disk: PathBuf,
        /// The partition's number in the MBR (LUCID_DATA_PART: 7 in every image).
        #[arg(long, value_name = "N")]
        partition: u32,
        /// Where its ext4 is mounted.
        #[arg(long, value_name = "DIR")]
        mount: PathBuf,
    },
}

#[cfg(target_os = "linux")]
#[derive(Subcommand, Debug)]
enum HwCmd {
    /// List /dev/video* with driver, role and formats, and what the recorder would pick.
    List,
    /// Decode a FWHT export (GET .../export.mp4 of a fwht session) through a V4L2 decoder
    /// and compare each picture with a camera frame (luma PSNR).
    Decode {
        /// The FWHT elementary stream.
        input: PathBuf,
        /// Decoder node (default: the first that takes FWHT).
        #[arg(long)]
        decoder: Option<PathBuf>,
        /// Compare with a frame from this camera ("auto" = the first camera).
        #[arg(long)]
        reference: Option<String>,
        /// Lowest acceptable PSNR (dB) against the reference.
        #[arg(long, default_value_t = 25.0)]
        min_psnr: f64,
    },
}

#[derive(Subcommand, Debug)]
enum BundleCmd {
    /// Generate an Ed25519 signing key: writes NAME.pk8 (0600) and NAME.vkey into OUT.
    Keygen {
        /// Key name (goes into the .vkey and into every bundle it signs).
        #[arg(long)]
        name: String,
        /// Directory for the two files (created if missing; existing keys are never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a signed bundle from a boot partition image and a root file system image.
    Create {
        /// Board the bundle is for (devices of other boards refuse it).
        #[arg(long)]
        board: String,
        /// Version text, e.g. 0.2.0.
        #[arg(long)]
        version: String,
        /// Build number; a device installs only a build above its own.
        #[arg(long)]
        build: u64,
        /// Ed25519 PKCS#8 signing key (from `lucidd bundle keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Key name; defaults to the key file's name without `.pk8`.
        #[arg(long)]
        key_name: Option<String>,
        /// FAT image for the slot's boot partition.
        #[arg(long)]
        boot: PathBuf,
        /// squashfs image for the slot's root partition.
        #[arg(long)]
        rootfs: PathBuf,
        /// Output file (conventionally *.lucidota).
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Print a bundle's manifest and check its digests, and its signature if --key is given.
    Inspect {
        file: PathBuf,
        /// Verifier key (.vkey) the signature must verify with.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

/// `created_at` of a new bundle: SOURCE_DATE_EPOCH when set (reproducible builds), else now.
fn bundle_time() -> anyhow::Result<String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => {
            let secs: i64 =
                s.trim().parse().map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH is not a number: {s:?}"))?;
            Ok(lucidd::util::micros_to_rfc3339(secs * 1_000_000))
        }
        Err(_) => Ok(lucidd::util::now_rfc3339()),
    }
}

fn bundle_cmd(cmd: BundleCmd) -> ExitCode {
    use lucidd::update::host;
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("lucidd bundle: {e}");
        ExitCode::FAILURE
    };
    match cmd {
        BundleCmd::Keygen { name, out } => match host::keygen(&name, &out) {
            Ok((pk8, vkey)) => {
                println!("signing key   {}", pk8.display());
                println!("verifier key  {}", vkey.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        BundleCmd::Create { board, version, build, key, key_name, boot, rootfs, out } => {
            let created_at = match bundle_time() {
                Ok(t) => t,
                Err(e) => return fail(&e),
            };
            let signer = match host::load_signer(&key, key_name.as_deref()) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            let args = host::CreateArgs { board, version, build, created_at, boot, rootfs, out: out.clone() };
            match host::create(&args, &signer) {
                Ok(m) => {
                    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
                    println!("bundle   {} ({size} bytes)", out.display());
                    println!("board    {}  version {}  build {}", m.board, m.version, m.build);
                    for p in &m.payloads {
                        println!("payload  {:<7} {:>12} bytes  sha256 {}", p.name, p.size, p.sha256);
                    }
                    println!("signed   {}", signer.vkey());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        BundleCmd::Inspect { file, key } => {
            let verifier = match key.as_deref().map(host::load_verifier).transpose() {
                Ok(v) => v,
                Err(e) => return fail(&e),
            };
            let checked_sig = verifier.is_some();
            match host::inspect(&file, verifier) {
                Ok(r) => {
                    if let Some(m) = &r.manifest {
                        println!("{}", String::from_utf8_lossy(&m.bytes));
                        println!("signed by  {}+{}", m.signed_by.as_deref().unwrap_or("(not checked)"), m.key_id);
                    }
                    match r.result {
                        Ok(()) if checked_sig => {
                            println!("OK: signature and every payload digest verified");
                            ExitCode::SUCCESS
                        }
                        Ok(()) => {
                            println!("OK: every payload digest verified (signature not checked: pass --key)");
                            ExitCode::SUCCESS
                        }
                        Err(e) => fail(&e),
                    }
                }
                Err(e) => fail(&e),
            }
        }
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "LUCID_CONFIG")]
    config: Option<PathBuf>,
    /// Where the store and the device keys live.
    #[arg(long, env = "LUCID_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Frame source.
    #[arg(long, env = "LUCID_SOURCE", value_enum)]
    source: Option<SourceKind>,
    /// Address the services listen on.
    #[arg(long, env = "LUCID_BIND")]
    bind: Option<std::net::IpAddr>,
    /// Port of the API gateway; the other four follow from the config (defaults 8083-8086).
    #[arg(long, env = "LUCID_GATEWAY_PORT")]
    gateway_port: Option<u16>,
    #[arg(long, env = "LUCID_PIPELINE_PORT")]
    pipeline_port: Option<u16>,
    #[arg(long, env = "LUCID_RECORDER_PORT")]
    recorder_port: Option<u16>,
    #[arg(long, env = "LUCID_PROCESSOR_PORT")]
    processor_port: Option<u16>,
    #[arg(long, env = "LUCID_STORAGE_PORT")]
    storage_port: Option<u16>,
    /// Bearer token for mutating routes (old Lucid clients send JWT_SECRET_KEY).
    #[arg(long, env = "LUCID_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Video size, e.g. 1280x720.
    #[arg(long, env = "LUCID_RESOLUTION")]
    resolution: Option<String>,
    #[arg(long, env = "LUCID_FPS")]
    fps: Option<u32>,
    #[arg(long, env = "LUCID_BITRATE")]
    bitrate: Option<u32>,
    #[arg(long, env = "LUCID_KEYFRAME_INTERVAL_MS")]
    keyframe_interval_ms: Option<u32>,
    #[arg(long, env = "LUCID_CHUNK_TARGET_MS")]
    chunk_target_ms: Option<u32>,
    #[arg(long, env = "LUCID_CHECKPOINT_EVERY_CHUNKS")]
    checkpoint_every_chunks: Option<u64>,
    #[arg(long, env = "LUCID_CHECKPOINT_EVERY_SECS")]
    checkpoint_every_secs: Option<u64>,
    /// `manual` or `continuous` (record from boot on, in segments).
    #[arg(long, env = "LUCID_RECORD_MODE")]
    record_mode: Option<lucidd::config::RecordMode>,
    /// Seconds of one continuous segment (2..=86400).
    #[arg(long, env = "LUCID_SEGMENT_SECONDS")]
    segment_seconds: Option<u64>,
    #[arg(long, env = "LUCID_MIN_FREE_BYTES")]
    min_free_bytes: Option<u64>,
    /// Delete closed, unlocked sessions that ended more than this many days ago.
    #[arg(long, env = "LUCID_RETENTION_MAX_AGE_DAYS")]
    retention_max_age_days: Option<u32>,
    /// Delete the oldest closed, unlocked sessions while less than this share of the data
    /// partition is free.
    #[arg(long, env = "LUCID_RETENTION_KEEP_FREE_PERCENT")]
    retention_keep_free_percent: Option<u8>,
    /// Delete the oldest closed, unlocked sessions while the store holds more than this.
    #[arg(long, env = "LUCID_RETENTION_MAX_STORE_BYTES")]
    retention_max_store_bytes: Option<u64>,
    /// age X25519 recipients of every new session's data key, comma-separated; replaces
    /// `[evidence] recipients` of the config file.
    #[arg(long, env = "LUCID_EVIDENCE_RECIPIENTS", value_delimiter = ',')]
    evidence_recipients: Option<Vec<String>>,
    /// Log to the systemd journal instead of stderr (the image sets this).
    #[arg(long, env = "LUCID_LOG_JOURNALD")]
    journald: bool,
}

fn build_config(a: &RunArgs) -> anyhow::Result<Config> {
    // The image's file, then the owner's kept settings from the data partition, then the
    // environment and flags.
    let mut c = Config::load_layered(a.config.as_deref(), a.data_dir.as_deref())?;
    if let Some(v) = a.source {
        c.source = v;
    }
    if let Some(v) = a.bind {
        c.bind = v;
    }
    let p = &mut c.ports;
    for (slot, v) in [
        (&mut p.gateway, a.gateway_port),
        (&mut p.pipeline, a.pipeline_port),
        (&mut p.recorder, a.recorder_port),
        (&mut p.processor, a.processor_port),
        (&mut p.storage, a.storage_port),
    ] {
        if let Some(v) = v {
            *slot = v;
        }
    }
    // Old Lucid deployments set JWT_SECRET_KEY and their clients send it as the bearer.
    if let Some(t) = a.api_token.clone().or_else(|| std::env::var("JWT_SECRET_KEY").ok()) {
        c.api_token = Some(t);
    }
    if let Ok(o) = std::env::var("CORS_ORIGINS") {
        c.cors_origins = o;
    }
    if let Some(r) = &a.resolution {
        let (w, h) = r
            .split_once(['x', 'X'])
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--resolution must look like 1280x720, not {r:?}"))?;
        c.video.width = w;
        c.video.height = h;
    }
    if let Some(v) = a.fps {
        c.video.fps = v;
    }
    if let Some(v) = a.bitrate {
        c.video.bitrate_bps = v;
    }
    if let Some(v) = a.keyframe_interval_ms {
        c.video.keyframe_interval_ms = v;
    }
    if let Some(v) = a.chunk_target_ms {
        c.record.chunk_target_ms = v;
    }
    if let Some(v) = a.checkpoint_every_chunks {
        c.record.checkpoint_every_chunks = v;
    }
    if let Some(v) = a.checkpoint_every_secs {
        c.record.checkpoint_every_secs = v;
    }
    if let Some(v) = a.record_mode {
        c.record.mode = v;
    }
    if let Some(v) = a.segment_seconds {
        c.record.segment_seconds = v;
    }
    if let Some(v) = a.min_free_bytes {
        c.min_free_bytes = v;
    }
    if let Some(v) = a.retention_max_age_days {
        c.retention.max_age_days = Some(v);
    }
    if let Some(v) = a.retention_keep_free_percent {
        c.retention.keep_free_percent = Some(v);
    }
    if let Some(v) = a.retention_max_store_bytes {
        c.retention.max_store_bytes = Some(v);
    }
    if let Some(v) = &a.evidence_recipients {
        c.evidence.recipients = v.iter().map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).collect();
    }
    c.validate()?;
    Ok(c)
}

/// `lucidd settings`: one line per outcome on the console, which is where an owner with a
/// serial cable or a screen looks; the rest see the status in the web app.
fn settings_cmd(a: &RunArgs) -> anyhow::Result<()> {
    use lucidd::settings::{self, State};
    let cfg = build_config(a)?;
    let status = settings::apply(a.config.as_deref(), &cfg)?;
    match status.state {
        State::Applied => {
            println!("lucid-settings: applied {}: {}", status.file, status.applied.join(", "));
            if !status.ignored.is_empty() {
                println!("lucid-settings: ignored (not used by this device): {}", status.ignored.join(", "));
            }
        }
        State::Rejected => println!(
            "lucid-settings: REJECTED {} (nothing changed): {}",
            status.file,
            status.error.as_deref().unwrap_or("")
        ),
        State::Unchanged => println!("lucid-settings: {} unchanged since {}", status.file, status.at),
        State::None => println!("lucid-settings: no settings file"),
    }
    // The config again: the file may have named the host.
    let cfg = build_config(a)?;
    let (_, device_id) = lucidd::keys::identity(&cfg.data_dir)?;
    let host = lucidd::discovery::hostname(&cfg.network.hostname, &device_id)?;
    if let Some(p) = settings::ensure_admin_password(&cfg, &host)? {
        // Shown once, here, by design (docs/image.md, "First boot").
        println!(
            "lucid-settings: admin password: {p} (also in {} on the boot partition until you change it)",
            lucidd::password::GENERATED_FILE
        );
    }
    Ok(())
}

fn init_logging(journald: bool) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LUCID_LOG").unwrap_or_else(|_| "info".into());
    if journald {
        if let Ok(j) = tracing_journald::layer() {
            tracing_subscriber::registry().with(filter).with(j).init();
            return;
        }
        eprintln!("lucidd: journald is not reachable; logging to stderr");
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Bundle(cmd) => bundle_cmd(cmd),
        #[cfg(target_os = "linux")]
        Cmd::GrowData { disk, partition, mount } => {
            let o = lucidd::grow::Options::new(disk, partition, mount);
            match lucidd::grow::grow_data(&o, &mut |line| println!("lucid-grow: {line}")) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("lucid-grow: failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(target_os = "linux")]
        Cmd::Hw(cmd) => {
            let r = match cmd {
                HwCmd::List => lucidd::hwcheck::list(),
                HwCmd::Decode { input, decoder, reference, min_psnr } => {
                    lucidd::hwcheck::decode(&lucidd::hwcheck::DecodeArgs {
                        input,
                        decoder,
                        reference: reference.map(|r| if r == "auto" { None } else { Some(PathBuf::from(r)) }),
                        min_psnr,
                    })
                }
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lucidd hw: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Verify { evidence, vkey, device_id, media, device_evidence } => {
            let pin = match lucidd::verify::pin(vkey.as_deref(), device_id.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("lucidd verify: {e}");
                    return ExitCode::from(2);
                }
            };
            if lucidd::verify::is_clip_file(&evidence) {
                return verify_clip(&evidence, &pin, media.as_deref());
            }
            let Some(r) = verify_session(&evidence, &pin, device_evidence.as_deref()) else {
                return ExitCode::FAILURE;
            };
            let Some(media) = media else {
                println!("OK: evidence verified");
                return ExitCode::SUCCESS;
            };
            match lucidd::verify::verify_media_file(&r, &media) {
                Ok(mr) => {
                    println!(
                        "media        {}: init segment ({} bytes) and {} fragments ({} bytes) match the signed digests",
                        media.display(),
                        mr.init_len,
                        mr.fragments,
                        mr.total_len
                    );
                    println!("OK: evidence and media verified");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Decrypt { evidence, identity, out, vkey, device_id, device_evidence } => {
            let pin = match lucidd::verify::pin(vkey.as_deref(), device_id.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("lucidd decrypt: {e}");
                    return ExitCode::from(2);
                }
            };
            if lucidd::verify::is_clip_file(&evidence) {
                eprintln!(
                    "lucidd decrypt: {}: clip evidence has no recipients file; decrypt the session's evidence",
                    evidence.display()
                );
                return ExitCode::FAILURE;
            }
            decrypt(&evidence, &pin, device_evidence.as_deref(), &identity, &out)
        }
        Cmd::VerifyDevice { evidence, vkey, device_id } => {
            let pin = match lucidd::verify::pin(vkey.as_deref(), device_id.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("lucidd verify-device: {e}");
                    return ExitCode::from(2);
                }
            };
            match lucidd::verify::verify_device_file(&evidence, &pin) {
                Ok(r) => {
                    print!("{}", lucidd::verify::device_report(&r));
                    println!("OK: device log verified");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Config(a) => match build_config(&a) {
            Ok(c) => {
                print!("{}", toml::to_string_pretty(&c).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lucidd: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Hostname(a) => {
            let name = build_config(&a).and_then(|cfg| {
                cfg.validate()?;
                let (_, device_id) = lucidd::keys::identity(&cfg.data_dir)?;
                Ok(lucidd::discovery::hostname(&cfg.network.hostname, &device_id)?)
            });
            match name {
                Ok(n) => {
                    println!("{n}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("lucidd hostname: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Settings(a) => match settings_cmd(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lucid-settings: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run(a) => {
            init_logging(a.journald);
            let cfg = match build_config(&a) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("lucidd: {e}");
                    return ExitCode::from(2);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("lucidd: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(lucidd::run(cfg, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lucidd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `lucidd verify EVIDENCE.tar` without `--media`, printed: the session evidence checked
/// against `pin` and, with `device_evidence`, its standing in the device log. `None`
/// after printing the failure. `lucidd decrypt` runs exactly this before it decrypts.
fn verify_session(
    evidence: &std::path::Path,
    pin: &lucid_core::evidence::Pin,
    device_evidence: Option<&std::path::Path>,
) -> Option<lucid_core::evidence::EvidenceReport> {
    let r = match lucidd::verify::verify_file(evidence, pin) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return None;
        }
    };
    let m = &r.manifest;
    println!("{}", lucidd::verify::signer_line(&r));
    println!("session      {} ({:?}, {})", r.session_id, m.kind, m.name);
    println!("device       {}", r.device_id);
    println!("recorded     {} .. {}", m.started_at.as_deref().unwrap_or("-"), m.stopped_at.as_deref().unwrap_or("-"));
    println!("chunks       {} (every one sealed, recorded and included)", r.chunk_count);
    println!("checkpoints  {} (signatures, roots and consistency checked)", r.checkpoints_checked);
    println!("root         {}", r.root_hex);
    println!("cipher       {}{}", m.cipher, if m.recovered { ", closed by crash recovery" } else { "" });
    if let Some(age_file) = &r.recipients_age {
        println!(
            "recipients   recipients.age ({} bytes): the data key for the device's recipients (lucidd decrypt)",
            age_file.len()
        );
    }
    if let Some(h) = r.device_head {
        println!(
            "logged       generation {} is the session head at device-log event {}, proven in the signed device checkpoint of size {}",
            m.generation.unwrap_or(0),
            h.index,
            h.checkpoint_size
        );
    }
    if let Some(device) = device_evidence {
        match lucidd::verify::verify_standing(&r, device) {
            Ok(st) => println!(
                "latest       generation {}, the device log's last word on this session (head at event {} of {}; not deleted)",
                st.head.generation, st.head.index, st.device_log_size
            ),
            Err(e) => {
                eprintln!("{e}");
                return None;
            }
        }
    }
    Some(r)
}

/// `lucidd decrypt EVIDENCE.tar --identity KEY.txt -o OUT.mp4`: everything `lucidd verify`
/// checks, then the recipients' copy of the data key opened with the identity, and every
/// chunk opened, checked against its verified record and written in log order.
fn decrypt(
    evidence: &std::path::Path,
    pin: &lucid_core::evidence::Pin,
    device_evidence: Option<&std::path::Path>,
    identity: &std::path::Path,
    out: &std::path::Path,
) -> ExitCode {
    let Some(r) = verify_session(evidence, pin, device_evidence) else {
        return ExitCode::FAILURE;
    };
    match lucidd::recipients::decrypt_file(evidence, &r, identity, out) {
        Ok(d) => {
            println!(
                "decrypted    {}: init segment ({} bytes) and {} chunks ({} bytes), each matching its signed record",
                out.display(),
                d.init_len,
                d.chunks,
                d.total_len
            );
            println!("OK: evidence verified and decrypted");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lucidd decrypt: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `lucidd verify CLIP-EVIDENCE.tar [--media CLIP.mp4]`: the clip's records are proven in
/// the signed session; with `--media`, the clip is those chunks' fragments, unaltered.
fn verify_clip(
    evidence: &std::path::Path,
    pin: &lucid_core::evidence::Pin,
    media: Option<&std::path::Path>,
) -> ExitCode {
    let r = match lucidd::verify::verify_clip_file(evidence, pin) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let m = &r.manifest;
    println!("{}", lucidd::verify::signer_line_of(&r.pin, &r.device_id, &r.device_vkey));
    println!("session      {} ({:?}, {})", r.session_id, m.kind, m.name);
    println!("device       {}", r.device_id);
    println!(
        "clip         chunks {}..={} ({} of the session's {}, contiguous, each included in the final checkpoint)",
        r.first(),
        r.last(),
        r.records.len(),
        r.tree_size
    );
    let (ms, me) = r.media_span_us();
    println!("media time   {:.3} s .. {:.3} s", ms as f64 / 1e6, me as f64 / 1e6);
    let (ws, we) = r.wall_span_us();
    println!(
        "wall clock   {} .. {} (the device clock's)",
        lucidd::verify::rfc3339_us(ws),
        lucidd::verify::rfc3339_us(we)
    );
    println!("root         {}", r.root_hex);
    let Some(media) = media else {
        println!("OK: clip evidence verified");
        return ExitCode::SUCCESS;
    };
    match lucidd::verify::verify_clip_media_file(&r, media) {
        Ok(mr) => {
            println!(
                "media        {}: init segment ({} bytes) and {} fragments ({} bytes) match chunks {}..={}",
                media.display(),
                mr.init_len,
                mr.fragments,
                mr.total_len,
                r.first(),
                r.last()
            );
            println!("OK: clip evidence and media verified");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
