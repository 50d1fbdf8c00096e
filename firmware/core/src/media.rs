//! Checks a session's exported video against its verified evidence. An export
//! (`GET /api/v1/sessions/{id}/export.mp4`) is the init segment followed by every chunk's
//! plaintext, in log order, byte for byte as it was sealed: nothing is rewritten, so the
//! init segment must hash to the manifest's `init_segment_blake3` and fragment i (a
//! `moof` box and the `mdat` box after it) to record i's `plain_blake3`.
//!
//! It owns the split of an MP4 into top-level ISO-BMFF boxes and the comparison of the
//! pieces with the digests, and names the first piece that differs. It must not open
//! files and trusts nothing in the input: every box size is checked against the header it
//! follows and the bytes that are really there, and nothing is buffered but one box
//! header (digests are computed as the bytes stream past), so memory grows with the
//! number of fragments (40 bytes each, at most one past the session's chunks), not with
//! the size of the video. Every byte of the file is covered by a digest: a box that is
//! neither init nor part of a moof + mdat pair is refused, not skipped.

use std::collections::HashMap;
use std::io::{self, Read};

use crate::clip::ClipReport;
use crate::evidence::EvidenceReport;
use crate::hex;
use crate::manifest::Manifest;
use crate::merkle::Hash;

/// What a successful check established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaReport {
    /// Bytes of the init segment (everything before the first `moof`).
    pub init_len: u64,
    /// Fragments checked, one per chunk.
    pub fragments: u64,
    /// Bytes of the whole file.
    pub total_len: u64,
}

/// Why an export does not match the evidence. Fragments are numbered from 0 in file
/// order, so in a good export fragment i is chunk i; offsets are bytes from the start of
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A data session, or a camera session that never produced video.
    #[error("the session has no video: its manifest has no init_segment_blake3")]
    NoVideo,
    /// The FWHT test codec exports its raw elementary stream, which has no boxes.
    #[error("the session's codec {codec} exports a raw elementary stream, not MP4")]
    NotMp4 { codec: String },
    /// The reader failed.
    #[error("reading the media: {source}")]
    Read {
        #[source]
        source: io::Error,
    },
    /// A box header that cannot be right.
    #[error("box at byte {offset}: {reason}")]
    BadBox { offset: u64, reason: &'static str },
    /// A box whose size runs past the end of the file.
    #[error("{kind} box at byte {offset} says {size} bytes, the file ends {missing} bytes early")]
    Truncated { offset: u64, kind: String, size: u64, missing: u64 },
    /// A box where the layout has no place for it.
    #[error("{kind} box at byte {offset} where {expected} must be")]
    UnexpectedBox { offset: u64, kind: String, expected: &'static str },
    /// A `moof` as the last box, without its `mdat`.
    #[error("fragment {fragment} at byte {offset} has no mdat: the file ends after its moof")]
    MissingMdat { fragment: u64, offset: u64 },
    /// The bytes before the first `moof` are not the signed init segment.
    #[error("init segment (bytes 0..{len}) does not match the manifest's init_segment_blake3")]
    InitMismatch { len: u64 },
    /// Fragment i is no chunk's plaintext: its bytes were changed. `chunk` is the chunk
    /// it should be (i in an export, the clip's first chunk + i in a clip).
    #[error("fragment {fragment} at byte {offset} does not match chunk {chunk}'s plaintext BLAKE3: altered")]
    FragmentAltered { fragment: u64, offset: u64, chunk: u64 },
    /// Fragment i is an earlier chunk's, again.
    #[error("fragment {fragment} at byte {offset} is a second copy of chunk {chunk}")]
    FragmentDuplicated { fragment: u64, offset: u64, chunk: u64 },
    /// Fragment i is a later chunk's and the expected chunk's comes after it.
    #[error("fragment {fragment} at byte {offset} is chunk {chunk}, expected chunk {expected}: out of order")]
    FragmentReordered { fragment: u64, offset: u64, chunk: u64, expected: u64 },
    /// Chunk i's fragment is nowhere after the fragments that matched.
    #[error("chunk {chunk}'s fragment is missing (expected at byte {offset})")]
    FragmentMissing { chunk: u64, offset: u64 },
    /// More fragments than the session (or the clip) has chunks.
    #[error("fragment {fragment} at byte {offset} is beyond the {chunk_count} chunks it is checked against")]
    ExtraFragment { fragment: u64, offset: u64, chunk_count: u64 },
}

/// Checks the export read from `media` against verified evidence: the init segment
/// against the manifest's digest, then every fragment, in order, against the records'.
/// Call it only with a report from [`crate::evidence::verify_evidence_pinned`] (or the
/// unpinned [`crate::evidence::verify_evidence`]): the digests are only as good as the
/// verification that produced them.
pub fn verify_media<R: Read>(evidence: &EvidenceReport, media: R) -> Result<MediaReport, MediaError> {
    let init = video_init(&evidence.manifest)?;
    let fragments: Vec<Hash> = evidence.records.iter().map(|r| r.plain_blake3).collect();
    check_export(&init, &fragments, media)
}

/// Checks a clip (`GET /api/v1/sessions/{id}/clip.mp4`) against verified clip evidence:
/// the init segment against the manifest's digest, then fragment i against the record of
/// chunk `first + i`, where `first` is the clip's first chunk. Errors name both the
/// fragment (in file order) and the chunk it should be. Call it only with a report from
/// [`crate::clip::verify_clip_evidence`].
pub fn verify_clip_media<R: Read>(clip: &ClipReport, media: R) -> Result<MediaReport, MediaError> {
    let init = video_init(&clip.manifest)?;
    let fragments: Vec<Hash> = clip.records.iter().map(|r| r.plain_blake3).collect();
    check_fragments(&init, clip.first(), &fragments, media)
}

/// The init segment digest of a session with MP4 video.
fn video_init(m: &Manifest) -> Result<Hash, MediaError> {
    if m.codec.as_deref() == Some("fwht") {
        return Err(MediaError::NotMp4 { codec: "fwht".into() });
    }
    m.init_segment_blake3.as_deref().and_then(hex::decode_32).ok_or(MediaError::NoVideo)
}

/// [`verify_media`] on bare digests: `init` is the BLAKE3 of the init segment,
/// `fragments[i]` that of fragment i.
pub fn check_export<R: Read>(init: &Hash, fragments: &[Hash], media: R) -> Result<MediaReport, MediaError> {
    check_fragments(init, 0, fragments, media)
}

/// [`check_export`] of a run of chunks starting at chunk `first`: `fragments[i]` is the
/// digest of chunk `first + i`, and errors name chunks by their index in the session.
pub fn check_fragments<R: Read>(
    init: &Hash,
    first: u64,
    fragments: &[Hash],
    media: R,
) -> Result<MediaReport, MediaError> {
    let mut input = Boxes { inner: media, offset: 0 };

    // The init segment: every top-level box before the first moof.
    let mut hasher = blake3::Hasher::new();
    let mut next = None;
    while let Some(b) = input.header()? {
        if &b.kind == b"moof" {
            next = Some(b);
            break;
        }
        input.body(&b, &mut hasher)?;
    }
    let init_len = next.as_ref().map_or(input.offset, |b| b.offset);
    if hasher.finalize().as_bytes() != init {
        return Err(MediaError::InitMismatch { len: init_len });
    }

    // The fragments: moof, mdat, moof, mdat, ... to the end. One more than the session's
    // chunks is enough to know the file has too many.
    let mut found: Vec<(Hash, u64)> = Vec::new();
    while let Some(moof) = next.take().map_or_else(|| input.header(), |b| Ok(Some(b)))? {
        if &moof.kind != b"moof" {
            return Err(MediaError::UnexpectedBox { offset: moof.offset, kind: moof.name(), expected: "a moof" });
        }
        let mut hasher = blake3::Hasher::new();
        input.body(&moof, &mut hasher)?;
        let fragment = found.len() as u64;
        let mdat = input.header()?.ok_or(MediaError::MissingMdat { fragment, offset: moof.offset })?;
        if &mdat.kind != b"mdat" {
            return Err(MediaError::UnexpectedBox {
                offset: mdat.offset,
                kind: mdat.name(),
                expected: "the mdat of the moof before it",
            });
        }
        input.body(&mdat, &mut hasher)?;
        found.push((*hasher.finalize().as_bytes(), moof.offset));
        if found.len() > fragments.len() {
            break;
        }
    }
    compare(first, fragments, &found, input.offset)?;
    Ok(MediaReport { init_len, fragments: found.len() as u64, total_len: input.offset })
}

/// Names the first position where the file's fragments (digest, offset) and the
/// expected digests part. `end` is the offset where the file's fragments stop; `first`
/// is the session index of `expected[0]`, added to every chunk named.
fn compare(first: u64, expected: &[Hash], found: &[(Hash, u64)], end: u64) -> Result<(), MediaError> {
    let Some(i) = (0..expected.len().max(found.len())).find(|&i| expected.get(i) != found.get(i).map(|f| &f.0)) else {
        return Ok(());
    };
    // The first chunk with each digest: enough to name what a misplaced fragment is.
    let mut chunk_of: HashMap<&Hash, usize> = HashMap::new();
    for (j, h) in expected.iter().enumerate() {
        chunk_of.entry(h).or_insert(j);
    }
    let fragment = i as u64;
    let Some(&(digest, offset)) = found.get(i) else {
        return Err(MediaError::FragmentMissing { chunk: first + fragment, offset: end });
    };
    match chunk_of.get(&digest).copied() {
        // Everything before i matched, so an earlier chunk here is a second copy.
        Some(j) if j < i => Err(MediaError::FragmentDuplicated { fragment, offset, chunk: first + j as u64 }),
        None if i < expected.len() => Err(MediaError::FragmentAltered { fragment, offset, chunk: first + fragment }),
        None => Err(MediaError::ExtraFragment { fragment, offset, chunk_count: expected.len() as u64 }),
        // A later chunk (j > i, so chunk i exists): reordered if chunk i comes later.
        Some(j) => {
            if found[i + 1..].iter().any(|f| f.0 == expected[i]) {
                Err(MediaError::FragmentReordered {
                    fragment,
                    offset,
                    chunk: first + j as u64,
                    expected: first + fragment,
                })
            } else {
                Err(MediaError::FragmentMissing { chunk: first + fragment, offset })
            }
        }
    }
}

/// A top-level box header.
struct BoxHeader {
    offset: u64,
    kind: [u8; 4],
    /// The header bytes as read (8, or 16 with a 64-bit size), hashed with the body.
    raw: [u8; 16],
    header_len: usize,
    size: u64,
}

impl BoxHeader {
    /// The four-character type, printable.
    fn name(&self) -> String {
        format!("{:?}", String::from_utf8_lossy(&self.kind))
    }
}

/// Reads top-level boxes in sequence and counts the bytes it has consumed.
struct Boxes<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Boxes<R> {
    /// Fills `buf`, returning how many bytes were read before the end of input.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, MediaError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(MediaError::Read { source }),
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    /// The next box header, or `None` at a clean end of input.
    fn header(&mut self) -> Result<Option<BoxHeader>, MediaError> {
        let offset = self.offset;
        let mut raw = [0u8; 16];
        match self.fill(&mut raw[..8])? {
            0 => return Ok(None),
            8 => {}
            _ => return Err(MediaError::BadBox { offset, reason: "the file ends inside a box header" }),
        }
        let size32 = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let kind = [raw[4], raw[5], raw[6], raw[7]];
        let (size, header_len) = match size32 {
            // ISO/IEC 14496-12 allows it for the last box; no export writes it, and a box
            // "to the end of the file" would let anything be appended unnoticed by size.
            0 => return Err(MediaError::BadBox { offset, reason: "size 0 (to the end of the file) is not accepted" }),
            1 => {
                if self.fill(&mut raw[8..16])? != 8 {
                    return Err(MediaError::BadBox { offset, reason: "the file ends inside a 64-bit box size" });
                }
                let mut large = [0u8; 8];
                large.copy_from_slice(&raw[8..16]);
                (u64::from_be_bytes(large), 16)
            }
            n => (u64::from(n), 8),
        };
        if size < header_len as u64 {
            return Err(MediaError::BadBox { offset, reason: "size smaller than the box header" });
        }
        Ok(Some(BoxHeader { offset, kind, raw, header_len, size }))
    }

    /// Feeds the box's header and body to `hasher`.
    fn body(&mut self, b: &BoxHeader, hasher: &mut blake3::Hasher) -> Result<(), MediaError> {
        hasher.update(&b.raw[..b.header_len]);
        let mut left = b.size - b.header_len as u64;
        let mut buf = [0u8; 16 << 10];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let got = self.fill(&mut buf[..want])?;
            hasher.update(&buf[..got]);
            left -= got as u64;
            if got < want {
                return Err(MediaError::Truncated { offset: b.offset, kind: b.name(), size: b.size, missing: left });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::verify_evidence;
    use crate::testutil::Fixture;

    /// A box: 32-bit size, type, body.
    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    fn init() -> Vec<u8> {
        [bx(b"ftyp", b"iso6avc1"), bx(b"moov", &[7; 40])].concat()
    }

    /// moof + mdat of chunk i; the moof carries i as its sequence number, as the muxer's do.
    fn fragment(i: u32) -> Vec<u8> {
        let mfhd = bx(b"mfhd", &[&[0u8; 4][..], &i.to_be_bytes()].concat());
        let mdat: Vec<u8> = (0..200 + 13 * i).map(|b| (b * 7 + i) as u8).collect();
        [bx(b"moof", &mfhd), bx(b"mdat", &mdat)].concat()
    }

    fn fragments(n: u32) -> Vec<Vec<u8>> {
        (0..n).map(fragment).collect()
    }

    fn export(init: &[u8], frags: &[Vec<u8>]) -> Vec<u8> {
        [init.to_vec(), frags.concat()].concat()
    }

    struct Session {
        init: Hash,
        digests: Vec<Hash>,
        frags: Vec<Vec<u8>>,
    }

    fn session(n: u32) -> Session {
        let frags = fragments(n);
        let digests = frags.iter().map(|f| *blake3::hash(f).as_bytes()).collect();
        Session { init: *blake3::hash(&init()).as_bytes(), digests, frags }
    }

    impl Session {
        fn check(&self, frags: &[Vec<u8>]) -> Result<MediaReport, MediaError> {
            check_export(&self.init, &self.digests, &export(&init(), frags)[..])
        }

        fn offset_of(&self, i: usize) -> u64 {
            (init().len() + self.frags[..i].iter().map(Vec::len).sum::<usize>()) as u64
        }
    }

    #[test]
    fn an_untouched_export_passes() {
        let s = session(6);
        let bytes = export(&init(), &s.frags);
        let r = check_export(&s.init, &s.digests, &bytes[..]).unwrap();
        assert_eq!(r, MediaReport { init_len: init().len() as u64, fragments: 6, total_len: bytes.len() as u64 });
        // A session without chunks exports its init segment alone.
        let empty = session(0);
        assert_eq!(empty.check(&[]).unwrap().fragments, 0);
    }

    #[test]
    fn through_verified_evidence() {
        let frags = fragments(5);
        let f = Fixture::with_media("cam-1", &init(), &frags);
        let report = verify_evidence(&f.bundle()[..]).unwrap();
        let mp4 = export(&init(), &frags);
        assert_eq!(verify_media(&report, &mp4[..]).unwrap().fragments, 5);
        let mut flipped = mp4.clone();
        let at = mp4.len() - 3;
        flipped[at] ^= 0x10;
        assert!(matches!(verify_media(&report, &flipped[..]), Err(MediaError::FragmentAltered { fragment: 4, .. })));

        let mut fwht = report.clone();
        fwht.manifest.codec = Some("fwht".into());
        assert!(matches!(verify_media(&fwht, &mp4[..]), Err(MediaError::NotMp4 { .. })));
        let data = verify_evidence(&Fixture::new_data("data-1", 2, &[2]).bundle()[..]).unwrap();
        assert!(matches!(verify_media(&data, &mp4[..]), Err(MediaError::NoVideo)));
    }

    #[test]
    fn a_flipped_byte_names_its_fragment() {
        let s = session(6);
        // A fragment is a 24-byte moof (its mfhd's sequence number at 20..24), then the
        // mdat's 8-byte header and body.
        for (i, at) in [(0, 40), (2, 23), (3, 33), (3, 150), (5, 100)] {
            let mut frags = s.frags.clone();
            frags[i][at] ^= 0x01;
            let err = s.check(&frags).unwrap_err();
            assert!(
                matches!(err, MediaError::FragmentAltered { fragment, offset, .. } if fragment == i as u64 && offset == s.offset_of(i)),
                "flip at fragment {i} byte {at}: {err}"
            );
            assert!(err.to_string().starts_with(&format!("fragment {i} at byte ")), "{err}");
        }
        // A flip in a box type breaks the walk instead, and is named by its offset.
        let mut frags = s.frags.clone();
        frags[0][30] ^= 0x01;
        let err = s.check(&frags).unwrap_err();
        assert!(matches!(err, MediaError::UnexpectedBox { offset, .. } if offset == s.offset_of(0) + 24), "{err}");
    }

    #[test]
    fn missing_fragments() {
        let s = session(6);
        let mut frags = s.frags.clone();
        frags.remove(2);
        let err = s.check(&frags).unwrap_err();
        assert!(matches!(err, MediaError::FragmentMissing { chunk: 2, offset } if offset == s.offset_of(2)), "{err}");
        assert_eq!(err.to_string(), format!("chunk 2's fragment is missing (expected at byte {})", s.offset_of(2)));
        // The last one: the file ends early.
        let end = export(&init(), &s.frags[..5]).len() as u64;
        let err = s.check(&s.frags[..5]).unwrap_err();
        assert!(matches!(err, MediaError::FragmentMissing { chunk: 5, offset } if offset == end), "{err}");
        // All of them.
        assert!(matches!(s.check(&[]), Err(MediaError::FragmentMissing { chunk: 0, .. })));
    }

    #[test]
    fn duplicated_fragments() {
        let s = session(6);
        let mut frags = s.frags.clone();
        frags.insert(2, s.frags[1].clone());
        let err = s.check(&frags).unwrap_err();
        assert!(matches!(err, MediaError::FragmentDuplicated { fragment: 2, chunk: 1, .. }), "{err}");
        // Appended after the last: one fragment too many, and it says which.
        let mut frags = s.frags.clone();
        frags.push(s.frags[5].clone());
        let err = s.check(&frags).unwrap_err();
        assert!(matches!(err, MediaError::FragmentDuplicated { fragment: 6, chunk: 5, .. }), "{err}");
    }

    #[test]
    fn reordered_fragments() {
        let s = session(6);
        let mut frags = s.frags.clone();
        frags.swap(1, 4);
        let err = s.check(&frags).unwrap_err();
        assert!(
            matches!(err, MediaError::FragmentReordered { fragment: 1, chunk: 4, offset, .. } if offset == s.offset_of(1)),
            "{err}"
        );
        let mut frags = s.frags.clone();
        frags.swap(4, 5);
        assert!(matches!(s.check(&frags), Err(MediaError::FragmentReordered { fragment: 4, chunk: 5, .. })));
    }

    #[test]
    fn extra_fragment() {
        let s = session(3);
        let mut frags = s.frags.clone();
        frags.push(fragment(3));
        let err = s.check(&frags).unwrap_err();
        assert!(matches!(err, MediaError::ExtraFragment { fragment: 3, chunk_count: 3, .. }), "{err}");
        // Not just past the end: another session's fragment in the middle is "altered".
        let mut frags = s.frags.clone();
        frags[1] = fragment(40);
        assert!(matches!(s.check(&frags), Err(MediaError::FragmentAltered { fragment: 1, .. })));
    }

    #[test]
    fn a_wrong_init_segment() {
        let s = session(3);
        let mut bad = init();
        bad[20] ^= 0x01;
        let bytes = export(&bad, &s.frags);
        let err = check_export(&s.init, &s.digests, &bytes[..]).unwrap_err();
        assert!(matches!(err, MediaError::InitMismatch { len } if len == init().len() as u64), "{err}");
        // No init at all, or one box short.
        let bytes = export(&[], &s.frags);
        assert!(matches!(check_export(&s.init, &s.digests, &bytes[..]), Err(MediaError::InitMismatch { len: 0 })));
        let bytes = export(&bx(b"ftyp", b"iso6avc1"), &s.frags);
        assert!(matches!(check_export(&s.init, &s.digests, &bytes[..]), Err(MediaError::InitMismatch { .. })));
    }

    #[test]
    fn box_structure_is_bounds_checked() {
        let s = session(3);
        let good = export(&init(), &s.frags);
        let check = |bytes: &[u8]| check_export(&s.init, &s.digests, bytes);

        // Cut inside the last mdat, inside a header, after a moof.
        let err = check(&good[..good.len() - 10]).unwrap_err();
        assert!(matches!(&err, MediaError::Truncated { missing: 10, kind, .. } if kind == "\"mdat\""), "{err}");
        let moof_len = s.frags[2].len() - (200 + 13 * 2 + 8);
        let last = s.offset_of(2) as usize;
        assert!(matches!(check(&good[..last + 4]), Err(MediaError::BadBox { .. })));
        assert!(matches!(check(&good[..last + moof_len]), Err(MediaError::MissingMdat { fragment: 2, .. })));

        // A box between fragments, or two moofs in a row.
        let mut frags = s.frags.clone();
        frags.insert(1, bx(b"free", b"x"));
        assert!(matches!(s.check(&frags), Err(MediaError::UnexpectedBox { expected: "a moof", .. })));
        let mut frags = s.frags.clone();
        frags[1].truncate(moof_len);
        assert!(
            matches!(s.check(&frags), Err(MediaError::UnexpectedBox { expected, .. }) if expected.contains("mdat"))
        );

        // Sizes that cannot be: 0 (to the end), below the header, a 64-bit size below 16.
        for size in [0u32, 7] {
            let mut bytes = good.clone();
            bytes[last..last + 4].copy_from_slice(&size.to_be_bytes());
            assert!(matches!(check(&bytes), Err(MediaError::BadBox { offset, .. }) if offset == last as u64));
        }
        let mut bytes = good[..last].to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 1, b'm', b'o', b'o', b'f', 0, 0, 0, 0, 0, 0, 0, 15]);
        assert!(matches!(check(&bytes), Err(MediaError::BadBox { .. })));

        // A hostile size: 2^64 - 1 bytes of mdat, then the file ends. Streamed, so this
        // allocates nothing and fails at the end of the input.
        let mut bytes = good[..last + moof_len].to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 1, b'm', b'd', b'a', b't']);
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        bytes.extend_from_slice(&[0; 100]);
        assert!(matches!(check(&bytes), Err(MediaError::Truncated { .. })));

        // Trailing bytes that are not a whole box header.
        let mut bytes = good.clone();
        bytes.extend_from_slice(b"tail");
        assert!(matches!(check(&bytes), Err(MediaError::BadBox { .. })));
    }

    #[test]
    fn a_64_bit_box_size_is_read() {
        // The same mdat written with a 64-bit size is different bytes, so it fails the
        // digest, but it is walked correctly: the fragment after it still lines up.
        let s = session(3);
        let mut frags = s.frags.clone();
        let mdat_at = frags[1].len() - (200 + 13 + 8);
        let body = frags[1][mdat_at + 8..].to_vec();
        let mut wide = frags[1][..mdat_at].to_vec();
        wide.extend_from_slice(&[0, 0, 0, 1, b'm', b'd', b'a', b't']);
        wide.extend_from_slice(&((body.len() + 16) as u64).to_be_bytes());
        wide.extend_from_slice(&body);
        frags[1] = wide;
        assert!(matches!(s.check(&frags), Err(MediaError::FragmentAltered { fragment: 1, .. })));
        let digests = [s.digests[0], *blake3::hash(&frags[1]).as_bytes(), s.digests[2]];
        check_export(&s.init, &digests, &export(&init(), &frags)[..]).unwrap();
    }
}
