//! Installing a bundle: the request body streams through `lucid_core::BundleReader`
//! into the inactive slot's two partitions, then everything is synced, read back and
//! hashed again, and only then is the trial boot armed.
//!
//! Owns the order of an install and its memory bound: the async side forwards body
//! chunks over a small bounded channel to one blocking writer thread, so at most a few
//! chunks plus one write buffer are ever in memory, whatever the bundle size. It must
//! not write a byte before the reader has verified the signed head, must not truncate or
//! create the slot devices (they are block devices; tests use fixed-size files), and
//! must not touch the running slot.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use lucid_core::bundle::MAX_HEAD_LEN;
use lucid_core::{BundleError, BundleEvent, BundlePolicy, BundleReader, KeyPolicy};
use ring::digest::{Context, SHA256};

use super::{Installed, Phase, Slot, UpdateError, Updater, load_trusted_keys};

/// Writes to the slot devices are gathered into buffers this large: big sequential
/// writes are what an SD card does best.
const WRITE_BUFFER: usize = 1 << 20;
/// Body chunks in flight between the socket and the writer thread.
const CHANNEL_DEPTH: usize = 4;

/// Why an install was refused or failed. The HTTP layer maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("updates are not configured on this device")]
    NotConfigured,
    #[error("an update is already being installed")]
    Busy,
    #[error("this boot is a trial of slot {slot}; an update cannot be installed until it is committed")]
    OnTrial { slot: Slot },
    #[error("the device cannot install updates: {0}")]
    Setup(#[from] UpdateError),
    #[error("bundle rejected: {0}")]
    Bundle(#[from] BundleError),
    #[error("bundle is larger than the {limit} bytes the slots can hold")]
    TooLarge { limit: u64 },
    #[error("upload interrupted: {0}")]
    Body(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("payload {name} does not read back from {path} as written")]
    ReadBack { name: String, path: PathBuf },
}

impl InstallError {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
        move |source| InstallError::Io { what, path: path.to_owned(), source }
    }

    /// True when a write failed because the device is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, InstallError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// One partition of the target slot.
#[derive(Debug)]
struct Target {
    path: PathBuf,
    file: File,
    capacity: u64,
}

/// Opens a slot partition for writing without truncating or creating it, and finds its
/// size (seeking to the end works for block devices and regular files alike).
fn open_target(path: &Path) -> Result<Target, InstallError> {
    let mut file = OpenOptions::new().write(true).open(path).map_err(InstallError::io("cannot open", path))?;
    let capacity = file.seek(SeekFrom::End(0)).map_err(InstallError::io("cannot size", path))?;
    file.seek(SeekFrom::Start(0)).map_err(InstallError::io("cannot seek", path))?;
    Ok(Target { path: path.to_owned(), file, capacity })
}

/// What the async side needs to start streaming.
struct Prepared {
    policy: BundlePolicy,
    targets: BTreeMap<String, Target>,
    slot: Slot,
    limit: u64,
}

fn prepare(u: &Updater) -> Result<Prepared, InstallError> {
    let bc = u.boot_control().map_err(|_| InstallError::NotConfigured)?;
    let current = u.current()?;
    if bc.is_trial(current.slot).map_err(UpdateError::from)? {
        return Err(InstallError::OnTrial { slot: current.slot });
    }
    let slot = current.slot.other();
    let dev = u.slot_devices(slot)?;
    let keys = load_trusted_keys(&u.cfg.trusted_keys_dir)?;
    let mut targets = BTreeMap::new();
    targets.insert("boot".to_string(), open_target(&dev.boot)?);
    targets.insert("rootfs".to_string(), open_target(&dev.root)?);
    let capacity: BTreeMap<String, u64> = targets.iter().map(|(k, t)| (k.clone(), t.capacity)).collect();
    let limit = capacity.values().sum::<u64>() + MAX_HEAD_LEN;
    let policy = BundlePolicy {
        keys: KeyPolicy::Trusted(keys),
        board: Some(u.cfg.board.clone()),
        current_build: Some(current.build),
        capacity: Some(capacity),
    };
    Ok(Prepared { policy, targets, slot, limit })
}

/// Installs the bundle in `body` into the inactive slot and arms a trial boot of it.
/// `content_length`, when the client sent one, is checked against the slot sizes
/// before a byte is read.
pub async fn install(u: Arc<Updater>, body: Body, content_length: Option<u64>) -> Result<Installed, InstallError> {
    if !u.configured() {
        return Err(InstallError::NotConfigured);
    }
    if !u.try_begin() {
        return Err(InstallError::Busy);
    }
    let result = run(&u, body, content_length).await;
    match &result {
        Ok(i) => {
            tracing::info!(slot = %i.slot, version = %i.version, build = i.build, "update installed and armed");
            u.succeed(i.clone());
        }
        Err(e) => {
            tracing::warn!(error = %e, "update failed");
            u.fail(&e.to_string());
        }
    }
    result
}

async fn run(u: &Arc<Updater>, body: Body, content_length: Option<u64>) -> Result<Installed, InstallError> {
    let uu = u.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&uu))
        .await
        .map_err(|e| InstallError::Body(format!("worker: {e}")))??;
    let limit = prepared.limit;
    if content_length.is_some_and(|n| n > limit) {
        return Err(InstallError::TooLarge { limit });
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let uu = u.clone();
    let worker = tokio::task::spawn_blocking(move || write_slot(&uu, prepared, rx));
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    let mut stream_error = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                stream_error = Some(InstallError::Body(e.to_string()));
                break;
            }
        };
        received += chunk.len() as u64;
        if received > limit {
            stream_error = Some(InstallError::TooLarge { limit });
            break;
        }
        u.progress(|p| p.bytes_received = received);
        if tx.send(chunk).await.is_err() {
            // The writer stopped: it has the reason.
            break;
        }
    }
    // A broken or oversized upload must not be mistaken for a complete one: the writer
    // sees a zero-length chunk (which the body stream never yields) as "abort", and only
    // a clean end of stream as the end.
    if stream_error.is_some() {
        let _ = tx.send(Bytes::new()).await;
    }
    drop(tx);
    let written = worker.await.map_err(|e| InstallError::Body(format!("worker: {e}")))?;
    match (stream_error, written) {
        (Some(e), Ok(_) | Err(InstallError::Body(_))) => Err(e),
        (_, r) => r,
    }
}

/// The blocking side: parse, write, sync, read back, arm.
fn write_slot(u: &Updater, p: Prepared, mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> Result<Installed, InstallError> {
    let Prepared { policy, targets, slot, .. } = p;
    let mut reader = BundleReader::new(policy);
    let mut writers: BTreeMap<String, (PathBuf, BufWriter<File>)> =
        targets.into_iter().map(|(name, t)| (name, (t.path, BufWriter::with_capacity(WRITE_BUFFER, t.file)))).collect();
    let mut names: Vec<String> = Vec::new();
    let mut manifest = None;
    while let Some(chunk) = rx.blocking_recv() {
        if chunk.is_empty() {
            return Err(InstallError::Body("the upload stream broke".into()));
        }
        for event in reader.feed(&chunk)? {
            match event {
                BundleEvent::Manifest(m) => {
                    // The head is verified. Clear any earlier armed trial before the
                    // first write: a power cut from here on must boot the running slot.
                    u.boot_control()?.disarm().map_err(UpdateError::from)?;
                    let total = m.head_len + m.manifest.payload_bytes();
                    tracing::info!(version = %m.manifest.version, build = m.manifest.build, slot = %slot, "installing update");
                    u.progress(|pr| pr.bytes_total = Some(total));
                    names = m.manifest.payloads.iter().map(|p| p.name.clone()).collect();
                    manifest = Some(*m);
                }
                BundleEvent::PayloadStart { index } => {
                    let name = names[index].clone();
                    u.progress(|pr| {
                        pr.payload = Some(name);
                        pr.payload_bytes_written = 0;
                    });
                }
                BundleEvent::Data { index, bytes } => {
                    let (path, w) = writers.get_mut(&names[index]).expect("the reader only passes names with a target");
                    w.write_all(bytes).map_err(InstallError::io("cannot write", path))?;
                    u.progress(|pr| pr.payload_bytes_written += bytes.len() as u64);
                }
                BundleEvent::PayloadEnd { .. } | BundleEvent::End => {}
            }
        }
    }
    reader.finish()?;
    let m = manifest.expect("a finished reader has produced its manifest");
    u.set_phase(Phase::Verifying);
    let mut files = BTreeMap::new();
    for (name, (path, w)) in writers {
        let f = w.into_inner().map_err(|e| InstallError::Io {
            what: "cannot write",
            path: path.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(InstallError::io("cannot sync", &path))?;
        files.insert(name, path);
    }
    for p in &m.manifest.payloads {
        let path = &files[&p.name];
        u.progress(|pr| pr.payload = Some(p.name.clone()));
        if read_back_sha256(path, p.size)? != p.sha256 {
            return Err(InstallError::ReadBack { name: p.name.clone(), path: path.clone() });
        }
    }
    u.boot_control()?.arm(slot).map_err(UpdateError::from)?;
    Ok(Installed {
        slot,
        version: m.manifest.version,
        build: m.manifest.build,
        signed_by: m.signed_by.unwrap_or_default(),
    })
}

/// SHA-256 (lowercase hex) of the first `size` bytes of `path`, read from the medium:
/// the page cache is dropped first so a write the card lost is not hidden by RAM.
fn read_back_sha256(path: &Path, size: u64) -> Result<String, InstallError> {
    let mut f = File::open(path).map_err(InstallError::io("cannot reopen", path))?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain advisory call on a file descriptor we own.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 << 10];
    let mut left = size;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want]).map_err(InstallError::io("cannot read back", path))?;
        if n == 0 {
            return Err(InstallError::ReadBack { name: path.display().to_string(), path: path.to_owned() });
        }
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}
