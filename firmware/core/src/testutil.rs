//! Shared test fixtures: a synthetic recorded session (real sealed chunks, records,
//! signed checkpoints and manifest) and helpers to take a bundle apart and rebuild it.
//!
//! Test-only (`#[cfg(test)]`); it must not be used by library code. Keys come from the
//! system RNG, which is fine for tests and is the only randomness they use.

use ring::rand::SystemRandom;

use crate::chunk::{ChunkHeader, ChunkRecord, Flags};
use crate::evidence::{EvidenceWriter, tar_header};
use crate::hex;
use crate::manifest::{MANIFEST_FORMAT, Manifest, SessionKind, SignedManifest, sign_manifest};
use crate::merkle;
use crate::note::{Checkpoint, Signer, session_origin, sign_checkpoint};
use crate::seal::{Cipher, DataKey, TAG_LEN, seal_chunk};

/// A recorded session, ready to bundle.
pub(crate) struct Fixture {
    pub signer: Signer,
    pub pkcs8: Vec<u8>,
    pub key: DataKey,
    pub sid: String,
    pub camera: bool,
    pub init: Vec<u8>,
    pub sealed: Vec<Vec<u8>>,
    pub records: Vec<ChunkRecord>,
    pub notes: Vec<String>,
    /// Chunk payloads given by the test; chunks beyond them get the synthetic payload.
    pub payloads: Vec<Vec<u8>>,
}

fn payload(index: u64) -> Vec<u8> {
    (0..100 + 37 * index).map(|b| (b as u8) ^ (index as u8)).collect()
}

impl Fixture {
    pub fn fresh_pkcs8() -> Vec<u8> {
        Signer::generate_pkcs8(&SystemRandom::new()).unwrap()
    }

    /// A camera session of `n` chunks with checkpoints at `sizes`, fresh keys.
    pub fn new(sid: &str, n: u64, sizes: &[u64]) -> Self {
        let key = DataKey::generate(&SystemRandom::new()).unwrap();
        Self::build(sid, n, sizes, key.as_bytes(), &Self::fresh_pkcs8(), true)
    }

    /// An opaque-data session (no init segment).
    pub fn new_data(sid: &str, n: u64, sizes: &[u64]) -> Self {
        let key = DataKey::generate(&SystemRandom::new()).unwrap();
        Self::build(sid, n, sizes, key.as_bytes(), &Self::fresh_pkcs8(), false)
    }

    /// A camera session under a given data key and device key.
    pub fn with_key(sid: &str, n: u64, sizes: &[u64], key: &[u8; 32], pkcs8: &[u8]) -> Self {
        Self::build(sid, n, sizes, key, pkcs8, true)
    }

    /// An opaque-data session under a given data key and device key.
    pub fn data_with_key(sid: &str, n: u64, sizes: &[u64], key: &[u8; 32], pkcs8: &[u8]) -> Self {
        Self::build(sid, n, sizes, key, pkcs8, false)
    }

    /// A camera session whose init segment and chunk payloads (one chunk each) are given,
    /// with one checkpoint at the end.
    pub fn with_media(sid: &str, init: &[u8], payloads: &[Vec<u8>]) -> Self {
        let key = DataKey::generate(&SystemRandom::new()).unwrap();
        let n = payloads.len() as u64;
        Self::build_with(sid, n, &[n], key.as_bytes(), &Self::fresh_pkcs8(), Some(init), payloads)
    }

    fn build(sid: &str, n: u64, sizes: &[u64], key: &[u8; 32], pkcs8: &[u8], camera: bool) -> Self {
        let init: &[u8] = b"ftyp....moov....init";
        Self::build_with(sid, n, sizes, key, pkcs8, camera.then_some(init), &[])
    }

    fn build_with(
        sid: &str,
        n: u64,
        sizes: &[u64],
        key: &[u8; 32],
        pkcs8: &[u8],
        init: Option<&[u8]>,
        payloads: &[Vec<u8>],
    ) -> Self {
        let camera = init.is_some();
        let signer = Signer::from_pkcs8("lucid-test-device", pkcs8).unwrap();
        let mut f = Fixture {
            signer,
            pkcs8: pkcs8.to_vec(),
            key: DataKey::from_bytes(*key),
            sid: sid.into(),
            camera,
            init: init.unwrap_or_default().to_vec(),
            sealed: Vec::new(),
            records: Vec::new(),
            notes: Vec::new(),
            payloads: payloads.to_vec(),
        };
        for i in 0..n {
            let sealed = f.seal_extra(i);
            let frames = if camera { 30 } else { 0 };
            let record = ChunkRecord::from_sealed(
                &sealed,
                *blake3::hash(&f.payload(i)).as_bytes(),
                i * 1_000_000,
                (i + 1) * 1_000_000,
                1_700_000_000_000_000 + i as i64 * 1_000_000,
                frames,
            )
            .unwrap();
            f.sealed.push(sealed);
            f.records.push(record);
        }
        for &size in sizes {
            let note = sign_checkpoint(&f.checkpoint(size), &f.signer).unwrap();
            f.notes.push(note);
        }
        f
    }

    /// The plaintext of chunk `index`: the test's, or the synthetic one.
    pub fn payload(&self, index: u64) -> Vec<u8> {
        self.payloads.get(index as usize).cloned().unwrap_or_else(|| payload(index))
    }

    /// Seals the payload of `index` for this session (epoch 1, then 2 from 10).
    pub fn seal_extra(&self, index: u64) -> Vec<u8> {
        let p = self.payload(index);
        let header = ChunkHeader {
            cipher: Cipher::ChaCha20Poly1305,
            flags: if self.camera { Flags::MEDIA } else { Flags::empty() },
            epoch: if index < 10 { 1 } else { 2 },
            index,
            plain_len: p.len() as u32,
            cipher_len: (p.len() + TAG_LEN) as u32,
            session_id: self.sid.clone(),
        };
        seal_chunk(&self.key, header.cipher, &header, &p).unwrap()
    }

    pub fn checkpoint(&self, size: u64) -> Checkpoint {
        let leaves: Vec<_> = self.records.iter().map(ChunkRecord::leaf_hash).collect();
        Checkpoint {
            origin: session_origin(&self.signer.verifier().device_id(), &self.sid),
            size,
            root: merkle::root(&leaves[..size as usize]),
        }
    }

    pub fn manifest(&self) -> Manifest {
        let leaves: Vec<_> = self.records.iter().map(ChunkRecord::leaf_hash).collect();
        Manifest {
            format: MANIFEST_FORMAT.into(),
            device_id: self.signer.verifier().device_id(),
            device_vkey: self.signer.vkey(),
            session_id: self.sid.clone(),
            name: "Test session".into(),
            kind: if self.camera { SessionKind::Camera } else { SessionKind::Data },
            status: "complete".into(),
            created_at: "2025-01-02T03:04:05Z".into(),
            started_at: Some("2025-01-02T03:04:06Z".into()),
            stopped_at: Some("2025-01-02T03:04:26Z".into()),
            recovered: false,
            chunk_count: self.records.len() as u64,
            tree_size: self.records.len() as u64,
            root: hex::encode(&merkle::root(&leaves)),
            final_checkpoint: self.notes.last().cloned().unwrap_or_default(),
            cipher: Cipher::ChaCha20Poly1305.name().into(),
            codec: self.camera.then(|| "avc1.42c01f".into()),
            width: self.camera.then_some(1280),
            height: self.camera.then_some(720),
            fps: self.camera.then_some(30),
            init_segment_blake3: self.camera.then(|| hex::encode(blake3::hash(&self.init).as_bytes())),
            epochs: vec![1, 2],
            generation: None,
            device_log_index: None,
        }
    }

    pub fn signed_manifest(&self) -> SignedManifest {
        sign_manifest(&self.manifest(), &self.signer).unwrap()
    }

    /// The bundle as the daemon would write it.
    pub fn bundle(&self) -> Vec<u8> {
        self.bundle_with(&self.signed_manifest(), None)
    }

    /// The bundle of this session under another manifest, with a device head if given.
    pub fn bundle_with(
        &self,
        manifest: &crate::SignedManifest,
        device_head: Option<&crate::evidence::DeviceHeadFile>,
    ) -> Vec<u8> {
        let mut w = EvidenceWriter::new(Vec::new(), &self.signer.vkey(), manifest).unwrap();
        if let Some(d) = device_head {
            w.device_head(d).unwrap();
        }
        if self.camera {
            w.init_segment(&self.init).unwrap();
        }
        for note in &self.notes {
            w.checkpoint(note).unwrap();
        }
        for r in &self.records {
            w.record(r).unwrap();
        }
        for s in &self.sealed {
            w.chunk(s).unwrap();
        }
        w.finish().unwrap()
    }
}

/// The (path, content) of every entry, in archive order.
pub(crate) fn entries(bundle: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(bundle);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (path, data)
        })
        .collect()
}

/// An archive of exactly these entries, with the writer's reproducible headers but none
/// of its ordering checks, so tests can build bundles the writer would refuse.
pub(crate) fn tar_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        b.append(&tar_header(path, data.len() as u64).unwrap(), &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}
