//! The host side of OTA bundles, behind `lucidd bundle keygen|create|inspect`: signing
//! keys as files, making a bundle from a boot image and a root image, and checking one.
//!
//! Owns the key files (`NAME.pk8` 0600, `NAME.vkey` 0644) and the streaming of payload
//! files into a bundle (hashed in a first pass, copied in a second, so a root image of
//! any size never sits in memory). It must not overwrite an existing key: a lost
//! production key means devices can never be updated again.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lucid_core::bundle::BUNDLE_FORMAT;
use lucid_core::{
    BundleError, BundleEvent, BundleManifest, BundlePolicy, BundleReader, BundleWriter, KeyPolicy, NoteError,
    PayloadHasher, Signer, Verifier,
};

/// Why a host-side bundle command failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: NoteError },
    #[error("{0}")]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    Usage(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HostError + '_ {
    move |source| HostError::Io { path: path.to_owned(), source }
}

const COPY_BUFFER: usize = 1 << 20;

/// Writes `dir/NAME.pk8` (Ed25519 PKCS#8, mode 0600) and `dir/NAME.vkey` (the C2SP
/// verifier key and a newline). Refuses to overwrite either.
pub fn keygen(name: &str, dir: &Path) -> Result<(PathBuf, PathBuf), HostError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Signer::generate_pkcs8(&rng).map_err(|source| HostError::Key { path: dir.into(), source })?;
    let signer = Signer::from_pkcs8(name, &pkcs8).map_err(|source| HostError::Key { path: dir.into(), source })?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (pk8, vkey) = (dir.join(format!("{name}.pk8")), dir.join(format!("{name}.vkey")));
    for p in [&pk8, &vkey] {
        if p.exists() {
            return Err(HostError::Usage(format!("{} exists; refusing to overwrite a key", p.display())));
        }
    }
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&pk8).map_err(io(&pk8))?;
    f.write_all(&pkcs8).and_then(|()| f.sync_all()).map_err(io(&pk8))?;
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&vkey).map_err(io(&vkey))?;
    f.write_all(format!("{}\n", signer.vkey()).as_bytes()).and_then(|()| f.sync_all()).map_err(io(&vkey))?;
    Ok((pk8, vkey))
}

/// Loads a signing key; its name is `name` or else the file's stem.
pub fn load_signer(path: &Path, name: Option<&str>) -> Result<Signer, HostError> {
    let pkcs8 = std::fs::read(path).map_err(io(path))?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Signer::from_pkcs8(name.unwrap_or(&stem), &pkcs8).map_err(|source| HostError::Key { path: path.into(), source })
}

/// Loads a verifier key file.
pub fn load_verifier(path: &Path) -> Result<Verifier, HostError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    Verifier::from_vkey(text.trim()).map_err(|source| HostError::Key { path: path.into(), source })
}

/// What `create` is given.
#[derive(Debug, Clone)]
pub struct CreateArgs {
    pub board: String,
    pub version: String,
    pub build: u64,
    pub created_at: String,
    pub boot: PathBuf,
    pub rootfs: PathBuf,
    pub out: PathBuf,
}

fn hash_file(name: &str, path: &Path) -> Result<lucid_core::PayloadInfo, HostError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = PayloadHasher::default();
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(h.finish(name));
        }
        h.update(&buf[..n]);
    }
}

/// Makes a bundle; returns its manifest. The output is written beside `out` and renamed
/// into place only when complete.
pub fn create(args: &CreateArgs, signer: &Signer) -> Result<BundleManifest, HostError> {
    let files = [("boot", &args.boot), ("rootfs", &args.rootfs)];
    let mut payloads = Vec::new();
    for (name, path) in files {
        payloads.push(hash_file(name, path)?);
    }
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT.into(),
        board: args.board.clone(),
        version: args.version.clone(),
        build: args.build,
        created_at: args.created_at.clone(),
        payloads,
    };
    let tmp = args.out.with_extension("partial");
    let out = File::create(&tmp).map_err(io(&tmp))?;
    let mut w = BundleWriter::new(BufWriter::with_capacity(COPY_BUFFER, out), manifest.clone(), signer)?;
    let mut buf = vec![0u8; COPY_BUFFER];
    for (_, path) in files {
        let mut f = File::open(path).map_err(io(path))?;
        loop {
            let n = f.read(&mut buf).map_err(io(path))?;
            if n == 0 {
                break;
            }
            // A file that changed between the two passes fails its digest here.
            w.write_payload(&buf[..n])?;
        }
    }
    let out = w.finish()?.into_inner().map_err(|e| HostError::Io { path: tmp.clone(), source: e.into_error() })?;
    out.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &args.out).map_err(io(&args.out))?;
    Ok(manifest)
}

/// What `inspect` found.
#[derive(Debug)]
pub struct Inspection {
    /// The manifest, if the head could be read.
    pub manifest: Option<lucid_core::VerifiedManifest>,
    /// The verdict: signature (when a key was given) and every digest.
    pub result: Result<(), BundleError>,
}

/// Reads a whole bundle and checks it: the signature against `key` if given, and the
/// payload sizes and digests.
pub fn inspect(path: &Path, key: Option<Verifier>) -> Result<Inspection, HostError> {
    let keys = match key {
        Some(k) => KeyPolicy::Trusted(vec![k]),
        None => KeyPolicy::SkipSignatureCheck,
    };
    let mut reader = BundleReader::new(BundlePolicy { keys, board: None, current_build: None, capacity: None });
    let mut f = File::open(path).map_err(io(path))?;
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut manifest = None;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            let result = reader.finish();
            return Ok(Inspection { manifest, result });
        }
        match reader.feed(&buf[..n]) {
            Ok(events) => {
                for e in events {
                    if let BundleEvent::Manifest(m) = e {
                        manifest = Some(*m);
                    }
                }
            }
            Err(e) => return Ok(Inspection { manifest, result: Err(e) }),
        }
    }
}
