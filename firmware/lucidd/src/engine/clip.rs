//! Clips of a signed camera session: a time range (media seconds or RFC 3339 wall time)
//! resolved to a contiguous run of chunks, rounded out to chunk boundaries, and the clip
//! evidence (`lucid_core::clip`) of that run. design.md, "Clips", has the rounding rule.
//!
//! It owns the range rules (parsing, rounding, bounds, the size cap) so the HTTP handlers
//! only parse the query, call and render. Ranges resolve against the chunks the session's
//! signed manifest covers, so `clip.mp4` and `clip-evidence` of one query always name the
//! same chunks, whatever was recorded after the manifest. It must not decrypt more than
//! the clip's chunks, and reads records by point lookups (a binary search), never a scan
//! of the session.

use lucid_core::chunk::ChunkRecord;
use lucid_core::clip::{ClipEvidenceWriter, record_wall_end_us};
use lucid_core::manifest::Manifest;

use super::{Engine, EngineError, Kind, Result, internal};

/// The most chunks one clip may span: an hour of one-second chunks (a few hundred MB of
/// video). Longer ranges are refused; the whole session is `export.mp4` and `evidence`.
pub const MAX_CLIP_CHUNKS: u64 = 3600;

/// One end of a clip range, as a client gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipBound {
    /// Media time, microseconds since the session's first frame (`start=12.5`).
    Media(u64),
    /// Wall-clock time, Unix microseconds (`start=2026-11-26T03:00:00Z`).
    Wall(i64),
}

impl ClipBound {
    /// Seconds of media time (a non-negative decimal number) or an RFC 3339 timestamp.
    pub fn parse(name: &str, text: &str) -> Result<ClipBound> {
        let bad = |why: &str| EngineError::BadInput(format!("{name}={text:?}: {why}"));
        if text.contains('T') || text.contains(':') {
            let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| bad(&format!("not an RFC 3339 time ({e})")))?;
            return i64::try_from(t.unix_timestamp_nanos() / 1000)
                .map(ClipBound::Wall)
                .map_err(|_| bad("out of range"));
        }
        let s: f64 = text.parse().map_err(|_| bad("neither seconds of media time nor an RFC 3339 time"))?;
        if !s.is_finite() || !(0.0..1e12).contains(&s) {
            return Err(bad("media time must be a number of seconds from 0"));
        }
        Ok(ClipBound::Media((s * 1e6).round() as u64))
    }

    /// Where a chunk starts and ends on this bound's clock.
    fn span(&self, r: &ChunkRecord) -> (i128, i128) {
        match self {
            ClipBound::Media(_) => (i128::from(r.media_start_us), i128::from(r.media_end_us)),
            ClipBound::Wall(_) => (i128::from(r.wall_clock_us), i128::from(record_wall_end_us(r))),
        }
    }

    fn value(&self) -> i128 {
        match *self {
            ClipBound::Media(us) => i128::from(us),
            ClipBound::Wall(us) => i128::from(us),
        }
    }
}

/// A resolved clip: chunks `first..=last` of a log whose signed tree has `tree_size`
/// leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipRange {
    pub first: u64,
    pub last: u64,
    pub tree_size: u64,
}

impl ClipRange {
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        self.first > self.last
    }
}

impl Engine {
    /// The chunks of a stopped camera session that a range covers, rounded out: every
    /// chunk whose span `[start, end)` meets `[start, end)` of the range (a range with
    /// start = end names the chunk containing that instant). Refuses end before start
    /// (400), a range that meets no chunk (`EngineError::EmptyRange`, 416) and one over
    /// [`MAX_CLIP_CHUNKS`].
    pub fn clip_range(&self, sid: &str, start: ClipBound, end: ClipBound) -> Result<ClipRange> {
        let row = self.get(sid)?;
        if row.kind != Kind::Camera {
            return Err(EngineError::BadInput(format!("session {sid} holds uploaded data, not video")));
        }
        let (man, _) = self.signed_manifest(sid)?;
        let tree_size = man.tree_size.min(row.chunk_count);
        if std::mem::discriminant(&start) == std::mem::discriminant(&end) && end.value() < start.value() {
            return Err(EngineError::BadInput("end is before start".into()));
        }
        // Chunks are in time order (media time by construction; wall time as long as the
        // device clock did not step back during the recording), so both ends are found
        // by binary search over point lookups.
        let first = self.count_where(sid, tree_size, |r| start.span(r).1 <= start.value())?;
        let end_at = if start == end { end.value() + 1 } else { end.value() };
        let past = self.count_where(sid, tree_size, |r| end.span(r).0 < end_at)?;
        if first >= past {
            return Err(EngineError::EmptyRange(format!(
                "the range meets none of the session's {tree_size} signed chunks"
            )));
        }
        let range = ClipRange { first, last: past - 1, tree_size };
        if range.len() > MAX_CLIP_CHUNKS {
            return Err(EngineError::BadInput(format!(
                "the range spans {} chunks, over the limit of {MAX_CLIP_CHUNKS}: ask for a shorter one, or use \
                 export.mp4 and evidence for the whole session",
                range.len()
            )));
        }
        Ok(range)
    }

    /// How many of the first `n` records satisfy `pred`, which must hold for a prefix of
    /// them: O(log n) record lookups.
    fn count_where(&self, sid: &str, n: u64, pred: impl Fn(&ChunkRecord) -> bool) -> Result<u64> {
        let (mut lo, mut hi) = (0u64, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let bytes = self
                .store
                .get_record(sid, mid)?
                .ok_or_else(|| internal(format!("record {mid} of {sid} is missing")))?;
            if pred(&ChunkRecord::decode(&bytes).map_err(internal)?) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The stored manifest, parsed, and its bytes and signature.
    fn signed_manifest(&self, sid: &str) -> Result<(Manifest, lucid_core::SignedManifest)> {
        let (bytes, sig) = self.store.get_manifest(sid)?.ok_or_else(|| {
            EngineError::BadState(format!("session {sid} has no signed manifest yet (stop or finalize it first)"))
        })?;
        let signature: [u8; 64] = sig.as_slice().try_into().map_err(|_| internal("bad stored signature"))?;
        let man: Manifest = serde_json::from_slice(&bytes).map_err(internal)?;
        Ok((man, lucid_core::SignedManifest { bytes, signature }))
    }

    /// Writes the clip evidence (tar) of `range`: the head, the clip's records, then each
    /// record's inclusion proof against the manifest's final checkpoint. No sealed bytes.
    pub fn write_clip_evidence<W: std::io::Write>(&self, sid: &str, range: ClipRange, out: W) -> Result<()> {
        let (man, signed) = self.signed_manifest(sid)?;
        let mut w =
            ClipEvidenceWriter::new(out, &self.signer.vkey(), &signed, &man.final_checkpoint).map_err(internal)?;
        self.for_each_record(sid, range.first, range.last + 1, |_, rec| w.record(&rec).map_err(internal))?;
        for i in range.first..=range.last {
            let (_, _, proof, _) = self.inclusion(sid, i, Some(range.tree_size))?;
            w.proof(i, &proof).map_err(internal)?;
        }
        w.finish().map_err(internal)?;
        Ok(())
    }
}
