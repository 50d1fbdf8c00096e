//! Recipient keys (issue #10): a session's data key encrypted to the configured age X25519
//! recipients at creation, and `lucidd decrypt`, which turns verified evidence back into
//! the session's plaintext export with a recipient's identity file.
//!
//! Owns the age file's content (exactly the 32 bytes of the data key; docs/design.md,
//! "Recipients file") and the decryption of evidence. The evidence checks are not here:
//! `lucidd decrypt` runs `verify::verify_file` first and decrypts only what it verified,
//! opening chunks through `lucid_core::evidence` (which checks each one against its
//! verified record). It must never print or log a secret: not the data key, not an
//! identity, not a line of an identity file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use lucid_core::chunk::{Flags, MAX_SEALED_CHUNK};
use lucid_core::evidence::{self, EvidenceReport};
use lucid_core::seal::DataKey;

use crate::config::EvidenceConfig;

/// Why the data key could not be encrypted to the recipients, or the evidence decrypted.
#[derive(Debug, thiserror::Error)]
pub enum RecipientsError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("encrypting the data key to the recipients: {0}")]
    Encrypt(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not an age identity file: {msg}")]
    BadIdentity { path: PathBuf, msg: String },
    #[error(
        "{evidence}: has no recipients.age: this session was created while the device had no recipients configured, so only the device can decrypt it"
    )]
    NoRecipients { evidence: PathBuf },
    #[error(
        "this evidence was not encrypted to identity {identity} (its public key {public}); the session's recipients file names other keys"
    )]
    NotARecipient { identity: PathBuf, public: String },
    #[error("{evidence}: recipients.age does not decrypt: {msg}")]
    BadAgeFile { evidence: PathBuf, msg: String },
    #[error("{evidence}: {msg}")]
    Content { evidence: PathBuf, msg: String },
}

/// The age file of a new session's data key, or `None` when no recipient is configured.
/// Binary age v1, one X25519 stanza per recipient in one header; its plaintext is exactly
/// the 32 key bytes, which is what `age -d -i KEY.txt` prints.
pub fn encrypt_data_key(cfg: &EvidenceConfig, key: &DataKey) -> Result<Option<Vec<u8>>, RecipientsError> {
    if cfg.recipients.is_empty() {
        return Ok(None);
    }
    let recipients = cfg.parsed_recipients()?;
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| RecipientsError::Encrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(64 + 160 * recipients.len());
    let mut w = encryptor.wrap_output(&mut out).map_err(|e| RecipientsError::Encrypt(e.to_string()))?;
    w.write_all(key.as_bytes()).map_err(|e| RecipientsError::Encrypt(e.to_string()))?;
    w.finish().map_err(|e| RecipientsError::Encrypt(e.to_string()))?;
    Ok(Some(out))
}

/// The X25519 identities of an identity file in `age-keygen`'s format: `#` comments,
/// blank lines and `AGE-SECRET-KEY-1…` lines. A bad line is named by its number only.
pub fn read_identities(path: &Path) -> Result<Vec<age::x25519::Identity>, RecipientsError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipientsError::Io { path: path.into(), source })?;
    let bad = |msg: String| RecipientsError::BadIdentity { path: path.into(), msg };
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let id = line
            .parse::<age::x25519::Identity>()
            .map_err(|_| bad(format!("line {} is not an X25519 identity (AGE-SECRET-KEY-1…)", n + 1)))?;
        ids.push(id);
    }
    if ids.is_empty() {
        return Err(bad("it holds no identity (make one with age-keygen -o KEY.txt)".into()));
    }
    Ok(ids)
}

/// Decrypts a session's `recipients.age` with `identities`; the plaintext must be 32 bytes.
pub fn decrypt_data_key(
    age_file: &[u8],
    identities: &[age::x25519::Identity],
    identity_path: &Path,
    evidence: &Path,
) -> Result<DataKey, RecipientsError> {
    let bad = |msg: String| RecipientsError::BadAgeFile { evidence: evidence.into(), msg };
    let decryptor = age::Decryptor::new_buffered(age_file).map_err(|e| bad(e.to_string()))?;
    let mut reader = decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity)).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => RecipientsError::NotARecipient {
            identity: identity_path.into(),
            public: identities.iter().map(|i| i.to_public().to_string()).collect::<Vec<_>>().join(", "),
        },
        other => bad(other.to_string()),
    })?;
    let mut plain = Vec::with_capacity(32);
    reader.by_ref().take(33).read_to_end(&mut plain).map_err(|e| bad(e.to_string()))?;
    let bytes: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("{} bytes of plaintext, not a 32-byte key", plain.len())))?;
    Ok(DataKey::from_bytes(bytes))
}

/// What `lucidd decrypt` wrote.
#[derive(Debug)]
pub struct DecryptReport {
    pub init_len: usize,
    pub chunks: u64,
    pub total_len: u64,
}

/// Writes the plaintext export of verified evidence to `out`: the init segment, then each
/// chunk opened with the recipients' data key, decompressed, and checked against its
/// verified record, in log order. The same bytes as the device's `export.mp4`. Writes a
/// sibling temporary file and renames it into place, so a failure leaves no partial `out`.
pub fn decrypt_file(
    evidence_path: &Path,
    report: &EvidenceReport,
    identity_path: &Path,
    out: &Path,
) -> Result<DecryptReport, RecipientsError> {
    let age_file = report
        .recipients_age
        .as_deref()
        .ok_or_else(|| RecipientsError::NoRecipients { evidence: evidence_path.into() })?;
    let identities = read_identities(identity_path)?;
    let key = decrypt_data_key(age_file, &identities, identity_path, evidence_path)?;
    let tmp = out.with_file_name(format!(
        ".{}.partial",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "decrypt".into())
    ));
    let result = write_plaintext(evidence_path, report, &key, &tmp).and_then(|r| {
        std::fs::rename(&tmp, out).map(|()| r).map_err(|source| RecipientsError::Io { path: out.into(), source })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The second pass over the bundle: only `init.mp4` and the sealed chunks are read, each
/// checked again against the report (the file may have changed since it was verified).
fn write_plaintext(
    evidence_path: &Path,
    report: &EvidenceReport,
    key: &DataKey,
    out: &Path,
) -> Result<DecryptReport, RecipientsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RecipientsError::Io { path, source }
    };
    let content = |msg: String| RecipientsError::Content { evidence: evidence_path.into(), msg };
    let f = File::open(evidence_path).map_err(io(evidence_path))?;
    let mut w = BufWriter::with_capacity(1 << 16, File::create(out).map_err(io(out))?);
    let init_digest = report.manifest.init_segment_blake3.as_deref();
    let mut init_len = 0;
    let mut init_done = init_digest.is_none();
    let mut next = 0u64;
    let mut total = 0u64;
    let mut archive = tar::Archive::new(BufReader::new(f));
    for entry in archive.entries().map_err(io(evidence_path))?.raw(true) {
        let mut entry = entry.map_err(io(evidence_path))?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let is_init = path == "lucid-evidence/init.mp4";
        let is_chunk = path.starts_with("lucid-evidence/chunks/");
        if !is_init && !is_chunk {
            continue;
        }
        if entry.size() > MAX_SEALED_CHUNK as u64 {
            return Err(content(format!("{path} is larger than any chunk")));
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data).map_err(io(evidence_path))?;
        if is_init {
            if init_digest != Some(crate::util::hex(blake3::hash(&data).as_bytes()).as_str()) || init_done {
                return Err(content("init.mp4 is not the verified init segment".into()));
            }
            w.write_all(&data).map_err(io(out))?;
            init_len = data.len();
            total += data.len() as u64;
            init_done = true;
            continue;
        }
        if !init_done {
            return Err(content("a chunk comes before the init segment".into()));
        }
        // Chunks come in log order; `open_recorded_chunk` checks this one is record `next`'s
        // (index, session and digest), so a chunk out of place is refused there.
        let index = next;
        let record =
            report.records.get(next as usize).ok_or_else(|| content(format!("{path}: more chunks than verified")))?;
        let (header, payload) =
            evidence::open_recorded_chunk(key, record, &mut data).map_err(|e| content(e.to_string()))?;
        let plain = if header.flags.contains(Flags::ZSTD) {
            zstd::bulk::decompress(&data[payload], header.plain_len as usize)
                .map_err(|e| content(format!("chunk {index}: zstd: {e}")))?
        } else {
            data[payload].to_vec()
        };
        evidence::check_plaintext(record, &plain).map_err(|e| content(e.to_string()))?;
        w.write_all(&plain).map_err(io(out))?;
        total += plain.len() as u64;
        next += 1;
    }
    if !init_done || next != report.chunk_count {
        return Err(content(format!("the bundle holds {next} of the {} verified chunks", report.chunk_count)));
    }
    let f = w.into_inner().map_err(|e| RecipientsError::Io { path: out.into(), source: e.into_error() })?;
    f.sync_all().map_err(io(out))?;
    Ok(DecryptReport { init_len, chunks: next, total_len: total })
}
