//! Clip evidence: a ustar archive that proves a contiguous run of a session's chunks is
//! part of its signed log, without any sealed chunk. It holds the device key, the signed
//! manifest, the manifest's final checkpoint, the records of the clip's chunks and each
//! record's inclusion proof against that checkpoint; with it, `crate::media` checks a clip
//! MP4 (the init segment and those chunks' fragments) against the records' plaintext
//! digests. Layout byte by byte in docs/design.md ("Clip evidence").
//!
//! It owns the clip layout, its streaming writer and its verifier. It must not open files
//! or sockets, and shares the archive walk, the manifest check and the pin with
//! `crate::evidence` (so a clip bundle is refused for the same hostile structures as a
//! session bundle: extension headers, entries out of order or too large, trailing data).

use std::io::{Read, Write};

use crate::chunk::ChunkRecord;
use crate::evidence::{
    EntryVisitor, EvidenceError, Head, Layout, LayoutWriter, MAX_LOG_SIZE, MAX_RECORD, Pin, VerifyError, parse_vkey,
    verify_head, walk_archive,
};
use crate::hex;
use crate::manifest::{self, Manifest, SignedManifest};
use crate::merkle::{self, Hash};
use crate::note::Verifier;

/// The exact content of `lucid-clip/VERSION`.
pub const CLIP_VERSION: &str = "lucid-clip-evidence 1\n";

/// The most hashes an inclusion proof in a log of at most 2^64 leaves has.
const MAX_PROOF_HASHES: u64 = 64;

/// The kinds of entry, in the order they must appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Version,
    Vkey,
    Manifest,
    ManifestSig,
    Checkpoint,
    Records,
    Proofs,
}

impl Section {
    const ALL: [Section; 7] = [
        Section::Version,
        Section::Vkey,
        Section::Manifest,
        Section::ManifestSig,
        Section::Checkpoint,
        Section::Records,
        Section::Proofs,
    ];

    fn max_size(self) -> u64 {
        match self {
            Section::Version => 64,
            Section::Vkey => 4096,
            Section::Manifest => 1 << 20,
            Section::ManifestSig => 256,
            Section::Checkpoint => 64 << 10,
            Section::Records => MAX_RECORD,
            Section::Proofs => MAX_PROOF_HASHES * 32,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Section::Version => "lucid-clip/VERSION",
            Section::Vkey => "lucid-clip/device.vkey",
            Section::Manifest => "lucid-clip/manifest.json",
            Section::ManifestSig => "lucid-clip/manifest.json.sig",
            Section::Checkpoint => "lucid-clip/checkpoint.note",
            Section::Records => "lucid-clip/records/",
            Section::Proofs => "lucid-clip/proofs/",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Section::Records => ".rec",
            Section::Proofs => ".proof",
            _ => "",
        }
    }

    fn numbered(self) -> bool {
        matches!(self, Section::Records | Section::Proofs)
    }
}

/// The path of entry `n` of a section: numbers are 20 zero-padded digits, as in the
/// session bundle.
fn entry_path(section: Section, n: u64) -> String {
    if section.numbered() { format!("{}{n:020}{}", section.path(), section.suffix()) } else { section.path().into() }
}

fn parse_path(path: &str) -> Option<(Section, u64)> {
    for section in Section::ALL {
        if section.numbered() {
            if let Some(d) = path.strip_prefix(section.path()).and_then(|r| r.strip_suffix(section.suffix())) {
                if d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()) {
                    return d.parse().ok().map(|n| (section, n));
                }
                return None;
            }
        } else if path == section.path() {
            return Some((section, 0));
        }
    }
    None
}

/// Writes clip evidence entry by entry, in layout order: the head at creation, then
/// every record, then every proof. Entries are reproducible (mode 0644, uid/gid 0,
/// mtime 0), so the same clip always yields the same bytes.
pub struct ClipEvidenceWriter<W: Write> {
    w: LayoutWriter<W, Section>,
}

impl<W: Write> std::fmt::Debug for ClipEvidenceWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipEvidenceWriter").field("last", &self.w.last).finish_non_exhaustive()
    }
}

impl Layout for Section {
    fn layout_path(self, n: u64) -> String {
        entry_path(self, n)
    }
    fn layout_max(self) -> u64 {
        self.max_size()
    }
}

impl<W: Write> ClipEvidenceWriter<W> {
    /// Writes VERSION, device.vkey, the manifest, its signature and the final checkpoint
    /// (the manifest's `final_checkpoint` note).
    pub fn new(out: W, device_vkey: &str, manifest: &SignedManifest, final_note: &str) -> Result<Self, EvidenceError> {
        let mut w = ClipEvidenceWriter { w: LayoutWriter::new(out) };
        w.append(Section::Version, 0, CLIP_VERSION.as_bytes())?;
        w.append(Section::Vkey, 0, format!("{device_vkey}\n").as_bytes())?;
        w.append(Section::Manifest, 0, &manifest.bytes)?;
        w.append(Section::ManifestSig, 0, manifest.signature_file().as_bytes())?;
        w.append(Section::Checkpoint, 0, final_note.as_bytes())?;
        Ok(w)
    }

    /// Adds a record of the clip; records come in ascending, contiguous index.
    pub fn record(&mut self, record: &ChunkRecord) -> Result<(), EvidenceError> {
        self.append(Section::Records, record.index, &record.encode())
    }

    /// Adds the inclusion proof of chunk `index` (its audit path, leaf to root); proofs
    /// come after all records, in ascending index.
    pub fn proof(&mut self, index: u64, proof: &[Hash]) -> Result<(), EvidenceError> {
        self.append(Section::Proofs, index, &proof.concat())
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(self) -> Result<W, EvidenceError> {
        self.w.finish()
    }

    fn append(&mut self, section: Section, n: u64, data: &[u8]) -> Result<(), EvidenceError> {
        self.w.append(section, n, data)
    }
}

/// What a successful clip verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipReport {
    /// The session.
    pub session_id: String,
    /// The recording device, derived from its key.
    pub device_id: String,
    /// The key that signed the manifest and the checkpoint.
    pub device_vkey: String,
    /// The pin the signer was checked against ([`Pin::Unpinned`] when none was given).
    pub pin: Pin,
    /// The size of the session's final tree, which every record is proven included in.
    pub tree_size: u64,
    /// Lowercase hex of the final root.
    pub root_hex: String,
    /// The verified manifest.
    pub manifest: Manifest,
    /// The clip's records, contiguous: `records[i]` is chunk `first() + i`.
    pub records: Vec<ChunkRecord>,
}

impl ClipReport {
    /// The index of the clip's first chunk.
    pub fn first(&self) -> u64 {
        self.records.first().map_or(0, |r| r.index)
    }

    /// The index of the clip's last chunk.
    pub fn last(&self) -> u64 {
        self.records.last().map_or(0, |r| r.index)
    }

    /// The wall-clock span in Unix microseconds: the first record's wall clock to the last
    /// record's wall clock plus its media duration. As informational as the device clock.
    pub fn wall_span_us(&self) -> (i64, i64) {
        let (Some(a), Some(b)) = (self.records.first(), self.records.last()) else { return (0, 0) };
        (a.wall_clock_us, record_wall_end_us(b))
    }

    /// The media-time span in microseconds since the session's first frame.
    pub fn media_span_us(&self) -> (u64, u64) {
        let (Some(a), Some(b)) = (self.records.first(), self.records.last()) else { return (0, 0) };
        (a.media_start_us, b.media_end_us)
    }
}

/// Whether an archive is clip evidence rather than a session bundle, from its first 512
/// bytes (the first tar header, whose name is the VERSION entry's path). Only a hint for
/// choosing a verifier: the verifier itself checks everything.
pub fn is_clip_evidence(first_block: &[u8]) -> bool {
    first_block.starts_with(Section::Version.path().as_bytes())
}

/// Where a chunk ends on the wall clock: its first frame's wall clock plus its media
/// duration (records carry only the start).
pub fn record_wall_end_us(r: &ChunkRecord) -> i64 {
    r.wall_clock_us.saturating_add(i64::try_from(r.media_end_us.saturating_sub(r.media_start_us)).unwrap_or(i64::MAX))
}

/// Verifies clip evidence read from `r`, streaming, against `pin`. The pin is checked as
/// soon as `device.vkey` is read; the manifest signature, then the checkpoint (signed by
/// the same key, of this session's log, and exactly the manifest's final checkpoint),
/// then each record (of this session, within the log, contiguous), then each proof
/// (record i's leaf at index i in the final tree). Returns the first failure.
pub fn verify_clip_evidence<R: Read>(r: R, pin: &Pin) -> Result<ClipReport, VerifyError> {
    let mut v = ClipVerification { pin: pin.clone(), ..ClipVerification::default() };
    walk_archive(r, &mut v)?;
    v.finish()
}

#[derive(Default)]
struct ClipVerification {
    pin: Pin,
    last: Option<(Section, u64)>,
    vkey: Option<(String, Verifier)>,
    manifest_bytes: Option<Vec<u8>>,
    head: Option<Head>,
    checkpoint: bool,
    records: Vec<ChunkRecord>,
    /// Proofs checked so far (they come in record order).
    proofs: u64,
}

fn missing(section: Section) -> VerifyError {
    VerifyError::MissingEntry { path: section.path().into() }
}

fn malformed(path: &str, reason: impl ToString) -> VerifyError {
    VerifyError::MalformedEntry { path: path.into(), reason: reason.to_string() }
}

impl EntryVisitor for ClipVerification {
    fn open(&mut self, path: &str, regular: bool) -> Result<u64, VerifyError> {
        let (section, n) = parse_path(path).ok_or_else(|| VerifyError::UnknownEntry { path: path.into() })?;
        if !regular {
            return Err(VerifyError::NotRegularFile { path: path.into() });
        }
        // Order is strict, so an entry at or before the last one is a duplicate if it is
        // the same, out of order otherwise.
        if self.last == Some((section, n)) {
            return Err(VerifyError::DuplicateEntry { path: path.into() });
        }
        if self.last.is_some_and(|last| (section, n) < last) {
            return Err(VerifyError::OutOfOrder { path: path.into() });
        }
        // Every single-file section before this one must have come.
        let prior = match section {
            Section::Version => None,
            Section::Vkey => Some(Section::Version),
            Section::Manifest => Some(Section::Vkey),
            Section::ManifestSig => Some(Section::Manifest),
            Section::Checkpoint => Some(Section::ManifestSig),
            Section::Records | Section::Proofs => Some(Section::Checkpoint),
        };
        if let Some(p) = prior
            && self.last.is_none_or(|(s, _)| s < p)
        {
            return Err(missing(p));
        }
        if section == Section::Proofs && self.records.is_empty() {
            return Err(VerifyError::EmptyClip);
        }
        self.last = Some((section, n));
        Ok(section.max_size())
    }

    fn data(&mut self, path: &str, data: Vec<u8>) -> Result<(), VerifyError> {
        let (section, n) = self.last.unwrap_or_else(|| unreachable!("data follows open"));
        match section {
            Section::Version => {
                if data != CLIP_VERSION.as_bytes() {
                    return Err(VerifyError::UnsupportedVersion { found: String::from_utf8_lossy(&data).into() });
                }
            }
            Section::Vkey => self.vkey = Some(parse_vkey(&data, path, &self.pin)?),
            Section::Manifest => self.manifest_bytes = Some(data),
            Section::ManifestSig => {
                let sig = manifest::parse_signature_file(&data).map_err(|e| malformed(path, e))?;
                let (text, verifier) = self.vkey.clone().ok_or_else(|| missing(Section::Vkey))?;
                let bytes = self.manifest_bytes.take().ok_or_else(|| missing(Section::Manifest))?;
                self.head = Some(verify_head(&text, verifier, &bytes, &sig, Section::Manifest.path())?);
            }
            Section::Checkpoint => self.checkpoint(path, data)?,
            Section::Records => self.record(n, &data)?,
            Section::Proofs => self.proof(n, path, &data)?,
        }
        Ok(())
    }
}

impl ClipVerification {
    fn head(&self) -> &Head {
        // open() refuses the checkpoint and everything after it before the signature.
        self.head.as_ref().unwrap_or_else(|| unreachable!("head verified before use"))
    }

    fn checkpoint(&mut self, path: &str, data: Vec<u8>) -> Result<(), VerifyError> {
        let text = String::from_utf8(data).map_err(|_| malformed(path, "not UTF-8"))?;
        let head = self.head();
        let size = crate::note::unverified_size(&text).unwrap_or(0);
        let cp = head
            .verifier
            .verify_checkpoint(&text)
            .map_err(|source| VerifyError::BadCheckpointSignature { size, source })?;
        if cp.origin != head.origin {
            return Err(VerifyError::WrongOrigin { size: cp.size, origin: cp.origin, expected: head.origin.clone() });
        }
        // The manifest signs its final checkpoint's text; its size and root are the
        // manifest's too (checked as well, so a manifest whose fields disagree fails).
        if text != head.manifest.final_checkpoint || cp.size != head.manifest.tree_size || cp.root != head.root {
            return Err(VerifyError::FinalCheckpointMismatch);
        }
        self.checkpoint = true;
        Ok(())
    }

    fn record(&mut self, index: u64, data: &[u8]) -> Result<(), VerifyError> {
        let record = ChunkRecord::decode(data).map_err(|source| VerifyError::MalformedRecord { index, source })?;
        if record.index != index {
            return Err(VerifyError::MisplacedRecord { path_index: index, record_index: record.index });
        }
        let manifest = &self.head().manifest;
        if record.session_id != manifest.session_id {
            return Err(VerifyError::ForeignRecord { index, session_id: record.session_id });
        }
        if index >= manifest.tree_size {
            return Err(VerifyError::ExtraRecord { index, chunk_count: manifest.tree_size });
        }
        if let Some(prev) = self.records.last()
            && prev.index + 1 != index
        {
            return Err(VerifyError::NotContiguous { previous: prev.index, found: index });
        }
        // Bounded by the log (indices are below the tree size, itself capped).
        debug_assert!((self.records.len() as u64) < MAX_LOG_SIZE);
        self.records.push(record);
        Ok(())
    }

    fn proof(&mut self, index: u64, path: &str, data: &[u8]) -> Result<(), VerifyError> {
        let first = self.records[0].index;
        let expected = first + self.proofs;
        if index < first || index >= first + self.records.len() as u64 {
            return Err(VerifyError::ProofWithoutRecord { index });
        }
        if index != expected {
            return Err(VerifyError::MissingProof { index: expected });
        }
        if !data.len().is_multiple_of(32) {
            return Err(malformed(path, format!("{} bytes is not a whole number of 32-byte hashes", data.len())));
        }
        let proof: Vec<Hash> = data.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect();
        let leaf = self.records[self.proofs as usize].leaf_hash();
        let head = self.head();
        merkle::verify_inclusion(&leaf, index, head.manifest.tree_size, &proof, &head.root)
            .map_err(|_| VerifyError::InclusionFailed { index })?;
        self.proofs += 1;
        Ok(())
    }

    fn finish(self) -> Result<ClipReport, VerifyError> {
        if self.head.is_none() || !self.checkpoint {
            let section = match self.last {
                None => Section::Version,
                Some((s, _)) => Section::ALL[(s as usize + 1).min(Section::ALL.len() - 1)],
            };
            return Err(missing(section));
        }
        if self.records.is_empty() {
            return Err(VerifyError::EmptyClip);
        }
        if self.proofs < self.records.len() as u64 {
            return Err(VerifyError::MissingProof { index: self.records[0].index + self.proofs });
        }
        let head = self.head.unwrap_or_else(|| unreachable!("checked above"));
        Ok(ClipReport {
            session_id: head.manifest.session_id.clone(),
            device_id: head.manifest.device_id.clone(),
            device_vkey: head.manifest.device_vkey.clone(),
            pin: self.pin,
            tree_size: head.manifest.tree_size,
            root_hex: hex::encode(&head.root),
            manifest: head.manifest,
            records: self.records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkRecord;
    use crate::media::{MediaError, verify_clip_media};
    use crate::note::{self, NoteError};
    use crate::testutil::{Fixture, entries, tar_of};

    fn fixture() -> Fixture {
        Fixture::new("sess-1", 20, &[5, 12, 20])
    }

    /// Clip evidence of chunks `first..=last` as the daemon writes it.
    fn clip(f: &Fixture, first: u64, last: u64) -> Vec<u8> {
        let leaves: Vec<Hash> = f.records.iter().map(ChunkRecord::leaf_hash).collect();
        let n = leaves.len() as u64;
        let note = f.notes.last().unwrap();
        let mut w = ClipEvidenceWriter::new(Vec::new(), &f.signer.vkey(), &f.signed_manifest(), note).unwrap();
        for r in &f.records[first as usize..=last as usize] {
            w.record(r).unwrap();
        }
        for i in first..=last {
            w.proof(i, &merkle::inclusion_proof(&leaves, i, n).unwrap()).unwrap();
        }
        w.finish().unwrap()
    }

    fn verify(e: &[(String, Vec<u8>)]) -> Result<ClipReport, VerifyError> {
        verify_clip_evidence(&tar_of(e)[..], &Pin::Unpinned)
    }

    fn find(e: &[(String, Vec<u8>)], path: &str) -> usize {
        e.iter().position(|(p, _)| p == path).unwrap_or_else(|| panic!("no {path}"))
    }

    #[test]
    fn a_good_clip_verifies_and_is_reproducible() {
        let f = fixture();
        let bytes = clip(&f, 6, 9);
        assert_eq!(bytes, clip(&f, 6, 9), "same clip, same bytes");
        assert!(is_clip_evidence(&bytes[..512]));
        assert!(!is_clip_evidence(&f.bundle()[..512]));
        let r = verify_clip_evidence(&bytes[..], &Pin::Unpinned).unwrap();
        assert_eq!((r.first(), r.last(), r.tree_size), (6, 9, 20));
        assert_eq!(r.records, f.records[6..10]);
        assert_eq!(r.root_hex, f.manifest().root);
        assert_eq!(r.media_span_us(), (6_000_000, 10_000_000));
        assert_eq!(r.wall_span_us(), (1_700_000_006_000_000, 1_700_000_010_000_000));
        // The layout, in order; no sealed chunk and no init segment.
        let paths: Vec<String> = entries(&bytes).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths[..6],
            [
                "lucid-clip/VERSION",
                "lucid-clip/device.vkey",
                "lucid-clip/manifest.json",
                "lucid-clip/manifest.json.sig",
                "lucid-clip/checkpoint.note",
                "lucid-clip/records/00000000000000000006.rec",
            ]
        );
        assert_eq!(paths[9], "lucid-clip/proofs/00000000000000000006.proof");
        assert_eq!(paths.len(), 13);
        // One chunk, the first, the last, the whole log.
        for (a, b) in [(0, 0), (19, 19), (0, 19)] {
            let r = verify_clip_evidence(&clip(&f, a, b)[..], &Pin::Unpinned).unwrap();
            assert_eq!((r.first(), r.last()), (a, b));
        }
    }

    #[test]
    fn a_tampered_record_is_not_included() {
        let f = fixture();
        let mut e = entries(&clip(&f, 6, 9));
        let i = find(&e, &entry_path(Section::Records, 7));
        e[i].1[60] ^= 0x01; // inside the plaintext BLAKE3: still decodes
        let err = verify(&e).unwrap_err();
        assert!(matches!(err, VerifyError::InclusionFailed { index: 7 }), "{err}");
        // A record of another session, re-filed: refused as foreign before any proof.
        let other = Fixture::new("sess-2", 20, &[20]);
        let mut e = entries(&clip(&f, 6, 9));
        e[i].1 = other.records[7].encode();
        assert!(matches!(verify(&e), Err(VerifyError::ForeignRecord { index: 7, .. })));
    }

    #[test]
    fn a_wrong_proof_fails() {
        let f = fixture();
        let base = entries(&clip(&f, 6, 9));
        // Chunk 8's proof filed as 7's.
        let mut e = base.clone();
        let (a, b) = (find(&e, &entry_path(Section::Proofs, 7)), find(&e, &entry_path(Section::Proofs, 8)));
        e[a].1 = base[b].1.clone();
        assert!(matches!(verify(&e), Err(VerifyError::InclusionFailed { index: 7 })));
        // One bit of a hash, one hash short, a ragged length.
        let mut e = base.clone();
        e[a].1[3] ^= 0x80;
        assert!(matches!(verify(&e), Err(VerifyError::InclusionFailed { index: 7 })));
        let mut e = base.clone();
        let len = e[a].1.len();
        e[a].1.truncate(len - 32);
        assert!(matches!(verify(&e), Err(VerifyError::InclusionFailed { index: 7 })));
        let mut e = base.clone();
        e[a].1.pop();
        assert!(matches!(verify(&e), Err(VerifyError::MalformedEntry { .. })));
        // A proof missing, or all of them.
        let mut e = base.clone();
        e.remove(a);
        assert!(matches!(verify(&e), Err(VerifyError::MissingProof { index: 7 })));
        let mut e = base.clone();
        e.retain(|(p, _)| !p.contains("/proofs/"));
        assert!(matches!(verify(&e), Err(VerifyError::MissingProof { index: 6 })));
        // A proof of a chunk outside the clip.
        let mut e = base.clone();
        let leaves: Vec<Hash> = f.records.iter().map(ChunkRecord::leaf_hash).collect();
        e.push((entry_path(Section::Proofs, 10), merkle::inclusion_proof(&leaves, 10, 20).unwrap().concat()));
        assert!(matches!(verify(&e), Err(VerifyError::ProofWithoutRecord { index: 10 })));
    }

    #[test]
    fn records_must_be_contiguous() {
        let f = fixture();
        let mut e = entries(&clip(&f, 6, 9));
        e.remove(find(&e, &entry_path(Section::Records, 7)));
        e.remove(find(&e, &entry_path(Section::Proofs, 7)));
        let err = verify(&e).unwrap_err();
        assert!(matches!(err, VerifyError::NotContiguous { previous: 6, found: 8 }), "{err}");
        assert!(err.to_string().contains("contiguous"), "{err}");
        // Out of order, duplicated, none at all.
        let mut e = entries(&clip(&f, 6, 9));
        let (a, b) = (find(&e, &entry_path(Section::Records, 7)), find(&e, &entry_path(Section::Records, 8)));
        e.swap(a, b);
        assert!(matches!(verify(&e), Err(VerifyError::NotContiguous { previous: 6, found: 8 })));
        let mut e = entries(&clip(&f, 6, 9));
        e.insert(a + 1, e[a].clone());
        assert!(matches!(verify(&e), Err(VerifyError::DuplicateEntry { .. })));
        let mut e = entries(&clip(&f, 6, 9));
        e.retain(|(p, _)| !p.contains("/records/") && !p.contains("/proofs/"));
        assert!(matches!(verify(&e), Err(VerifyError::EmptyClip)));
    }

    #[test]
    fn the_checkpoint_must_be_the_manifests_final_one() {
        let f = fixture();
        let base = entries(&clip(&f, 6, 9));
        let i = find(&base, Section::Checkpoint.path());
        // An earlier, genuinely signed checkpoint of the same log.
        let mut e = base.clone();
        e[i].1 = f.notes[1].clone().into_bytes();
        assert!(matches!(verify(&e), Err(VerifyError::FinalCheckpointMismatch)));
        // The final tree head signed by another key.
        let intruder = Fixture::with_key("sess-1", 1, &[1], f.key.as_bytes(), &Fixture::fresh_pkcs8());
        let mut e = base.clone();
        e[i].1 = note::sign_checkpoint(&f.checkpoint(20), &intruder.signer).unwrap().into_bytes();
        assert!(matches!(
            verify(&e),
            Err(VerifyError::BadCheckpointSignature { size: 20, source: NoteError::NoSignature { .. } })
        ));
        // Missing.
        let mut e = base.clone();
        e.remove(i);
        assert!(matches!(verify(&e), Err(VerifyError::MissingEntry { path }) if path.ends_with("checkpoint.note")));
    }

    #[test]
    fn a_clip_re_signed_by_another_key_fails_a_pin() {
        let f = fixture();
        let (vkey, id) = (f.signer.vkey(), f.signer.verifier().device_id());
        // The same chunks and records under a fresh key, signed end to end.
        let attacker = Fixture::with_key("sess-1", 20, &[5, 12, 20], f.key.as_bytes(), &Fixture::fresh_pkcs8());
        let forged = clip(&attacker, 6, 9);
        let r = verify_clip_evidence(&forged[..], &Pin::Unpinned).unwrap();
        assert!(!r.pin.is_pinned());
        assert_eq!(r.records, f.records[6..10]);
        for pin in [Pin::vkey(&vkey).unwrap(), Pin::device_id(&id).unwrap()] {
            let err = verify_clip_evidence(&forged[..], &pin).unwrap_err();
            assert!(matches!(&err, VerifyError::PinMismatch { .. }), "{err}");
            let good = verify_clip_evidence(&clip(&f, 6, 9)[..], &pin).unwrap();
            assert_eq!(good.pin, pin);
        }
        // Another key in device.vkey alone: the manifest no longer verifies.
        let mut e = entries(&clip(&f, 6, 9));
        let i = find(&e, Section::Vkey.path());
        e[i].1 = format!("{}\n", attacker.signer.vkey()).into_bytes();
        assert!(matches!(verify(&e), Err(VerifyError::BadManifestSignature)));
    }

    #[test]
    fn structure_is_checked_like_a_session_bundle() {
        let f = fixture();
        let base = entries(&clip(&f, 6, 9));
        // A session bundle is not clip evidence, and clip evidence carries no chunk.
        assert!(matches!(
            verify_clip_evidence(&f.bundle()[..], &Pin::Unpinned),
            Err(VerifyError::UnknownEntry { path }) if path == "lucid-evidence/VERSION"
        ));
        let mut e = base.clone();
        e.push(("lucid-clip/chunks/00000000000000000006.sealed".into(), f.sealed[6].clone()));
        assert!(matches!(verify(&e), Err(VerifyError::UnknownEntry { .. })));
        let mut e = base.clone();
        e[0].1 = b"lucid-clip-evidence 2\n".to_vec();
        assert!(matches!(verify(&e), Err(VerifyError::UnsupportedVersion { .. })));
        let mut e = base.clone();
        e.remove(0);
        assert!(matches!(verify(&e), Err(VerifyError::MissingEntry { path }) if path.ends_with("VERSION")));
        let mut e = base.clone();
        let i = find(&e, &entry_path(Section::Proofs, 6));
        e[i].1 = vec![0; 64 * 32 + 32];
        assert!(matches!(verify(&e), Err(VerifyError::EntryTooLarge { .. })));
        // Shared with the session verifier: trailing data and extension headers.
        let mut bytes = clip(&f, 6, 9);
        bytes.extend_from_slice(b"\0\0hidden");
        assert!(matches!(verify_clip_evidence(&bytes[..], &Pin::Unpinned), Err(VerifyError::DataAfterEnd { .. })));
        let mut h = tar::Header::new_gnu();
        h.set_path("././@LongLink").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(1 << 30);
        h.set_cksum();
        assert!(matches!(
            verify_clip_evidence(h.as_bytes().as_slice(), &Pin::Unpinned),
            Err(VerifyError::ExtensionHeader { offset: 0, .. })
        ));
        // The writer keeps the order too.
        let mut w = ClipEvidenceWriter::new(Vec::new(), &f.signer.vkey(), &f.signed_manifest(), &f.notes[2]).unwrap();
        w.record(&f.records[3]).unwrap();
        w.proof(3, &[]).unwrap();
        assert!(matches!(w.record(&f.records[4]), Err(EvidenceError::OutOfOrder { .. })));
    }

    /// A box: 32-bit size, type, body.
    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn a_clip_mp4_is_checked_against_the_clips_records() {
        let init = [bx(b"ftyp", b"iso6avc1"), bx(b"moov", &[7; 40])].concat();
        let frags: Vec<Vec<u8>> = (0..8u8)
            .map(|i| [bx(b"moof", &[i; 16]), bx(b"mdat", &vec![i ^ 0x5a; 100 + i as usize])].concat())
            .collect();
        let f = Fixture::with_media("cam-1", &init, &frags);
        let r = verify_clip_evidence(&clip(&f, 3, 5)[..], &Pin::Unpinned).unwrap();
        let mp4 = |fs: &[Vec<u8>]| [init.clone(), fs.concat()].concat();
        assert_eq!(verify_clip_media(&r, &mp4(&frags[3..6])[..]).unwrap().fragments, 3);
        // A flipped byte names the fragment and the chunk it should be.
        let mut bad = frags[3..6].to_vec();
        bad[1][40] ^= 1;
        let err = verify_clip_media(&r, &mp4(&bad)[..]).unwrap_err();
        assert!(matches!(err, MediaError::FragmentAltered { fragment: 1, chunk: 4, .. }), "{err}");
        assert!(err.to_string().starts_with("fragment 1 at byte ") && err.to_string().contains("chunk 4"), "{err}");
        // Another range of the same session, longer, shorter, or the whole export.
        assert!(matches!(
            verify_clip_media(&r, &mp4(&frags[2..5])[..]),
            Err(MediaError::FragmentReordered { fragment: 0, chunk: 2, expected: 3, .. })
                | Err(MediaError::FragmentAltered { .. })
        ));
        assert!(matches!(
            verify_clip_media(&r, &mp4(&frags[3..5])[..]),
            Err(MediaError::FragmentMissing { chunk: 5, .. })
        ));
        assert!(verify_clip_media(&r, &mp4(&frags[3..7])[..]).is_err());
        assert!(verify_clip_media(&r, &mp4(&frags)[..]).is_err());
    }
}
