//! The keyframe chunker: groups access units into chunks of whole GOPs and turns each
//! chunk into one fMP4 fragment (moof + mdat) via the muxer it owns — or, for the FWHT test
//! codec, into the frames' raw elementary stream (see `fwht`).
//!
//! Owns cut decisions, the media timeline across chunks, and the fragment size limit. It
//! must never cut inside a GOP (every chunk starts with an IDR, so `init + chunk` decodes
//! alone) and must never emit a fragment larger than `max_fragment_bytes`; when it cannot
//! honour both it reports `ChunkError::GopTooLarge` instead of emitting.

use std::collections::VecDeque;

use crate::encode::AccessUnit;
use crate::fmp4::{DEFAULT_TIMESCALE, Fmp4Error, Fmp4Muxer, fragment_overhead};
use crate::{Codec, fwht, h264};

/// Chunking policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// A chunk is cut at the first keyframe at or after this much media time (µs).
    pub target_duration_us: u64,
    /// Hard upper bound for `MediaChunk::fragment.len()` (moof + mdat).
    pub max_fragment_bytes: usize,
    /// `mfhd` sequence number / `MediaChunk::sequence` of the first chunk (> 0).
    pub first_sequence: u32,
    /// What the access units carry; decides the packaging (fMP4 for H.264, the raw
    /// stream for FWHT). Everything else — cuts, timeline, limits — is codec-blind.
    pub codec: Codec,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        // 4 MiB is ~16x a 1 s chunk at 2 Mbit/s: only a runaway encoder reaches it.
        Self { target_duration_us: 1_000_000, max_fragment_bytes: 4 << 20, first_sequence: 1, codec: Codec::H264 }
    }
}

/// One chunk: one or more whole GOPs as a single fMP4 fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaChunk {
    /// Equals the fragment's `mfhd` sequence number; increments by one per chunk.
    pub sequence: u32,
    /// `moof` + `mdat`. Decodable alone after the init segment.
    pub fragment: Vec<u8>,
    /// Media time of the first frame (µs); equals the previous chunk's `media_end_us`.
    pub media_start_us: u64,
    /// Media time just after the last frame (µs, exclusive).
    pub media_end_us: u64,
    /// Unix time (µs) at which the first frame was captured.
    pub wall_start_us: i64,
    pub frame_count: u32,
    /// `fragment.len()`.
    pub bytes: usize,
    /// Frames are missing before this chunk (camera gap, or a dropped oversize GOP). Media
    /// time stays contiguous; the missing span shows in `wall_start_us`.
    pub gap_before: bool,
}

/// Errors from the chunker. An error never discards chunks already queued.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunker configuration: {0}")]
    InvalidConfig(String),
    #[error("access unit at {pts_us} µs contains no H.264 NAL units")]
    EmptyAccessUnit { pts_us: u64 },
    #[error("access unit at {pts_us} µs is not one FWHT frame: {source}")]
    BadFwhtFrame {
        pts_us: u64,
        #[source]
        source: fwht::FwhtError,
    },
    #[error("first keyframe at {pts_us} µs carries no SPS/PPS; cannot build the init segment")]
    MissingParameterSets { pts_us: u64 },
    #[error("SPS/PPS changed at {pts_us} µs; the init segment no longer applies (start a new chunker)")]
    ParameterSetsChanged { pts_us: u64 },
    #[error("access unit pts {pts_us} µs is not after the previous {prev_us} µs (call gap() if the source restarted)")]
    NonMonotonicPts { prev_us: u64, pts_us: u64 },
    #[error(
        "GOP of {frames} frames needs {bytes} bytes, over the {limit}-byte fragment limit; GOP dropped, waiting for the next keyframe"
    )]
    GopTooLarge { frames: u32, bytes: usize, limit: usize },
    #[error("muxing chunk: {0}")]
    Mux(#[from] Fmp4Error),
}

/// Cuts an access-unit stream into `MediaChunk`s at keyframes.
///
/// Feed with `push`, take finished chunks with `pop_chunk`, end with `finish`. When
/// `wants_keyframe()` turns true the caller should call `VideoEncoder::request_keyframe`.
#[derive(Debug)]
pub struct Chunker {
    cfg: ChunkerConfig,
    muxer: Option<Fmp4Muxer>,
    init: Option<Vec<u8>>,
    sps_pps: Option<(Vec<u8>, Vec<u8>)>,
    /// Pending access units (pts already on the chunker's timeline) and their AVCC sizes.
    pending: Vec<AccessUnit>,
    pending_lens: Vec<usize>,
    /// Indices in `pending` where a GOP (keyframe) starts; always contains 0 when non-empty.
    gop_starts: Vec<usize>,
    ready: VecDeque<MediaChunk>,
    next_sequence: u32,
    wants_keyframe: bool,
    /// Drop non-keyframes until a keyframe (start, after a gap, after a dropped GOP).
    awaiting_keyframe: bool,
    /// Rebase the next accepted keyframe onto the end of the last chunk.
    resync: bool,
    gap_pending: bool,
    /// Added to source pts to get chunker media time (changes only at a resync).
    pts_offset: i128,
    last_pts: Option<u64>,
    last_delta_us: Option<u64>,
    last_end_us: Option<u64>,
    dropped: u64,
}

/// Used for the last frame's duration before two frames have been seen.
const FALLBACK_FRAME_US: u64 = 33_333;

impl Chunker {
    pub fn new(cfg: ChunkerConfig) -> Result<Self, ChunkError> {
        if cfg.target_duration_us == 0 {
            return Err(ChunkError::InvalidConfig("target_duration_us must be > 0".into()));
        }
        // A keyframe-only fragment needs the box overhead plus a real picture.
        if cfg.max_fragment_bytes < 1024 {
            return Err(ChunkError::InvalidConfig(format!("max_fragment_bytes {} < 1024", cfg.max_fragment_bytes)));
        }
        if cfg.first_sequence == 0 {
            return Err(ChunkError::InvalidConfig("first_sequence must be > 0 (mfhd)".into()));
        }
        Ok(Self {
            cfg,
            muxer: None,
            init: None,
            sps_pps: None,
            pending: Vec::new(),
            pending_lens: Vec::new(),
            gop_starts: Vec::new(),
            ready: VecDeque::new(),
            next_sequence: cfg.first_sequence,
            wants_keyframe: false,
            awaiting_keyframe: true,
            resync: false,
            gap_pending: false,
            pts_offset: 0,
            last_pts: None,
            last_delta_us: None,
            last_end_us: None,
            dropped: 0,
        })
    }

    /// The init segment (ftyp + moov), available once the first keyframe was pushed.
    pub fn init_segment(&self) -> Option<&[u8]> {
        self.init.as_deref()
    }

    /// RFC 6381 codec string (e.g. `avc1.42c01e`; `fwht` for the test codec), once the
    /// first keyframe was pushed.
    pub fn codec_string(&self) -> Option<String> {
        match self.cfg.codec {
            Codec::H264 => self.muxer.as_ref().map(Fmp4Muxer::codec_string),
            Codec::Fwht => self.init.as_ref().map(|_| "fwht".to_owned()),
        }
    }

    /// Bytes `au` takes in a chunk (AVCC sample or raw FWHT frame); 0 when it is empty.
    fn sample_len(&self, au: &AccessUnit) -> Result<usize, ChunkError> {
        match self.cfg.codec {
            Codec::H264 => Ok(h264::avcc_len(&au.data)),
            Codec::Fwht => {
                let frames = fwht::split_stream(&au.data)
                    .map_err(|source| ChunkError::BadFwhtFrame { pts_us: au.pts_us, source })?;
                if frames.len() > 1 {
                    return Err(ChunkError::BadFwhtFrame {
                        pts_us: au.pts_us,
                        source: fwht::FwhtError::Truncated { offset: frames[1].0, len: 0 },
                    });
                }
                Ok(au.data.len())
            }
        }
    }

    /// Container bytes around `samples` samples.
    fn overhead(&self, samples: usize) -> usize {
        match self.cfg.codec {
            Codec::H264 => fragment_overhead(samples),
            Codec::Fwht => 0,
        }
    }

    /// Container bytes one more sample adds.
    fn per_sample(&self) -> usize {
        self.overhead(1) - self.overhead(0)
    }

    /// True when the chunker needs an IDR soon: the pending group nears the size limit, or
    /// it is waiting for a keyframe to (re)start. Cleared by the next keyframe.
    pub fn wants_keyframe(&self) -> bool {
        self.wants_keyframe
    }

    /// Access units discarded: non-keyframes before the first keyframe (or after a gap)
    /// and the frames of GOPs dropped as too large.
    pub fn dropped_access_units(&self) -> u64 {
        self.dropped
    }

    /// The next finished chunk, oldest first.
    pub fn pop_chunk(&mut self) -> Option<MediaChunk> {
        self.ready.pop_front()
    }

    /// Size the fragment for the pending group would have.
    fn pending_fragment_len(&self) -> usize {
        self.overhead(self.pending.len()) + self.pending_lens.iter().sum::<usize>()
    }

    /// Adds one access unit. May queue a chunk (see `pop_chunk`). On error the access unit
    /// is not added; queued chunks are kept.
    pub fn push(&mut self, au: AccessUnit) -> Result<(), ChunkError> {
        let sample_len = self.sample_len(&au)?;
        if sample_len == 0 {
            return Err(ChunkError::EmptyAccessUnit { pts_us: au.pts_us });
        }
        if self.awaiting_keyframe && !au.keyframe {
            self.dropped += 1;
            self.wants_keyframe = true;
            return Ok(());
        }
        if au.keyframe {
            self.check_parameter_sets(&au)?;
        }
        // Map onto the chunker timeline. After a gap the source may have restarted at 0, so
        // the first keyframe continues from the end of the last chunk.
        let offset = if self.resync && au.keyframe {
            self.last_end_us.map_or(0, |end| i128::from(end) - i128::from(au.pts_us))
        } else {
            self.pts_offset
        };
        let pts = u64::try_from(i128::from(au.pts_us) + offset)
            .map_err(|_| ChunkError::NonMonotonicPts { prev_us: self.last_pts.unwrap_or(0), pts_us: au.pts_us })?;
        // At a resync the previous pts may belong to a dropped GOP; the rebased pts starts at
        // the end of the last emitted chunk, which is after everything emitted.
        if let (false, Some(prev)) = (self.resync, self.last_pts)
            && pts <= prev
        {
            return Err(ChunkError::NonMonotonicPts { prev_us: prev, pts_us: pts });
        }
        // Accepted: commit timeline state.
        if !self.resync
            && let Some(prev) = self.last_pts
        {
            self.last_delta_us = Some(pts - prev);
        }
        self.pts_offset = offset;
        self.resync = false;
        self.awaiting_keyframe = false;
        self.last_pts = Some(pts);
        let au = AccessUnit { pts_us: pts, ..au };
        let limit = self.cfg.max_fragment_bytes;

        if au.keyframe {
            self.wants_keyframe = false;
            if let Some(first_pts) = self.pending.first().map(|a| a.pts_us) {
                let long_enough = pts - first_pts >= self.cfg.target_duration_us;
                let would_overflow = self.pending_fragment_len() + self.per_sample() + sample_len > limit;
                if long_enough || would_overflow || self.size_pressure() {
                    self.emit(self.pending.len(), pts)?;
                }
            }
            self.gop_starts.push(self.pending.len());
        } else if self.pending_fragment_len() + self.per_sample() + sample_len > limit {
            // Cut before the current GOP if earlier whole GOPs are pending: still a
            // keyframe cut, and it frees room for the current GOP.
            if let Some(&g) = self.gop_starts.last()
                && g > 0
            {
                let end = self.pending[g].pts_us;
                self.emit(g, end)?;
            }
        }

        if self.overhead(self.pending.len() + 1) + self.pending_lens.iter().sum::<usize>() + sample_len > limit {
            return Err(self.drop_current_gop(sample_len));
        }
        self.pending.push(au);
        self.pending_lens.push(sample_len);
        if self.size_pressure() {
            self.wants_keyframe = true;
        }
        Ok(())
    }

    /// Pending group above 75% of the limit: ask for an IDR so the cut can come early,
    /// leaving a quarter of the budget for frames encoded before the IDR arrives.
    fn size_pressure(&self) -> bool {
        !self.pending.is_empty() && self.pending_fragment_len() > self.cfg.max_fragment_bytes / 4 * 3
    }

    /// The current GOP cannot fit even alone: drop it (and the frame that broke it), wait
    /// for the next keyframe and mark the discontinuity.
    fn drop_current_gop(&mut self, sample_len: usize) -> ChunkError {
        let frames = self.pending.len() + 1;
        let bytes = self.pending_fragment_len() + self.per_sample() + sample_len;
        tracing::warn!(
            frames,
            bytes,
            limit = self.cfg.max_fragment_bytes,
            "dropping GOP larger than the fragment limit"
        );
        self.dropped += frames as u64;
        self.pending.clear();
        self.pending_lens.clear();
        self.gop_starts.clear();
        self.awaiting_keyframe = true;
        self.resync = true;
        self.gap_pending = true;
        self.wants_keyframe = true;
        ChunkError::GopTooLarge {
            frames: u32::try_from(frames).unwrap_or(u32::MAX),
            bytes,
            limit: self.cfg.max_fragment_bytes,
        }
    }

    fn check_parameter_sets(&mut self, au: &AccessUnit) -> Result<(), ChunkError> {
        if self.cfg.codec == Codec::Fwht {
            // Every FWHT frame header carries its own geometry: no init segment is needed,
            // so the session's init segment is empty and its export is the bare stream.
            self.init.get_or_insert_with(Vec::new);
            return Ok(());
        }
        let found = h264::parameter_sets(&au.data);
        match (&self.sps_pps, found) {
            (None, None) => Err(ChunkError::MissingParameterSets { pts_us: au.pts_us }),
            (None, Some((sps, pps))) => {
                let info = h264::parse_sps(sps).map_err(Fmp4Error::from)?;
                let muxer = Fmp4Muxer::new(sps, pps, info.width, info.height, DEFAULT_TIMESCALE)?;
                self.init = Some(muxer.init_segment()?);
                self.muxer = Some(muxer);
                self.sps_pps = Some((sps.to_vec(), pps.to_vec()));
                Ok(())
            }
            (Some((s, p)), Some((sps, pps))) if (s.as_slice(), p.as_slice()) != (sps, pps) => {
                Err(ChunkError::ParameterSetsChanged { pts_us: au.pts_us })
            }
            // Same parameter sets repeated, or none in-band: the avcC still applies.
            (Some(_), _) => Ok(()),
        }
    }

    /// Turns `pending[..n]` into a queued chunk ending at `end_us`.
    fn emit(&mut self, n: usize, end_us: u64) -> Result<(), ChunkError> {
        let muxer = match (self.cfg.codec, &self.muxer) {
            (Codec::H264, Some(m)) => Some(m),
            (Codec::Fwht, _) => None,
            // Unreachable in practice: pending is only filled after the muxer exists.
            (Codec::H264, None) => return Err(ChunkError::MissingParameterSets { pts_us: end_us }),
        };
        let aus: Vec<AccessUnit> = self.pending.drain(..n).collect();
        self.pending_lens.drain(..n);
        self.gop_starts.retain(|&g| g >= n);
        for g in &mut self.gop_starts {
            *g -= n;
        }
        let first = &aus[0];
        let fragment = match muxer {
            Some(muxer) => muxer.fragment(self.next_sequence, &aus, muxer.ticks(first.pts_us), Some(end_us))?,
            None => aus.iter().flat_map(|a| a.data.iter().copied()).collect(),
        };
        if fragment.len() > self.cfg.max_fragment_bytes {
            // The size prediction is exact, so this means a bug; still never emit oversize.
            return Err(ChunkError::GopTooLarge {
                frames: u32::try_from(aus.len()).unwrap_or(u32::MAX),
                bytes: fragment.len(),
                limit: self.cfg.max_fragment_bytes,
            });
        }
        self.ready.push_back(MediaChunk {
            sequence: self.next_sequence,
            bytes: fragment.len(),
            fragment,
            media_start_us: first.pts_us,
            media_end_us: end_us,
            wall_start_us: first.wall_us,
            frame_count: u32::try_from(aus.len()).unwrap_or(u32::MAX),
            gap_before: std::mem::take(&mut self.gap_pending),
        });
        // 2^32 chunks is 136 years at 1 s; wrap rather than fail (mfhd only needs to increase
        // within a playback session).
        self.next_sequence = self.next_sequence.checked_add(1).unwrap_or(1);
        self.last_end_us = Some(end_us);
        Ok(())
    }

    /// End of the pending group when no following keyframe tells it: one frame duration
    /// after the last frame.
    fn flush_pending(&mut self) -> Result<(), ChunkError> {
        if let Some(last) = self.pending.last() {
            let end = last.pts_us.saturating_add(self.last_delta_us.unwrap_or(FALLBACK_FRAME_US));
            self.emit(self.pending.len(), end)?;
        }
        Ok(())
    }

    /// Emits whatever is pending (a final, possibly short chunk). The chunker stays usable:
    /// the next chunk starts at the next keyframe, at this chunk's end in media time.
    pub fn finish(&mut self) -> Result<(), ChunkError> {
        self.flush_pending()?;
        // The end just given was an estimate (one frame duration after the last frame),
        // and the group was cut without a keyframe after it. Without this, a P frame
        // pushed next would open a chunk that cannot decode alone, and a frame sooner
        // than the estimate would start a chunk before the last one ended (both found by
        // the `chunker` fuzz target). Unlike `gap`, no discontinuity is marked.
        self.awaiting_keyframe = true;
        self.resync = true;
        Ok(())
    }

    /// The source stopped (e.g. camera unplugged): emit what is pending, then treat the
    /// next keyframe as the start of a new run. Its chunk gets `gap_before = true` and
    /// continues the media timeline from the last chunk's end, even if the source's pts
    /// restarted.
    pub fn gap(&mut self) -> Result<(), ChunkError> {
        self.flush_pending()?;
        self.awaiting_keyframe = true;
        self.resync = true;
        self.gap_pending = true;
        self.wants_keyframe = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{EncoderConfig, OpenH264Encoder, VideoEncoder};
    use crate::source::{FrameSource, TestPattern, TestPatternConfig};

    /// A real IDR (with SPS/PPS) from OpenH264, reused as a template for fake streams.
    fn real_idr() -> AccessUnit {
        let mut src = TestPattern::new(TestPatternConfig { width: 160, height: 120, fps: 15, paced: false }).unwrap();
        let mut enc = OpenH264Encoder::new(EncoderConfig::new(160, 120, 15)).unwrap();
        enc.encode(&src.next_frame().unwrap()).unwrap().remove(0)
    }

    /// A fake P frame with `len` bytes of slice payload.
    fn p_frame(pts_us: u64, len: usize) -> AccessUnit {
        let mut data = vec![0, 0, 0, 1, 0x41];
        data.extend(std::iter::repeat_n(0x5a, len));
        AccessUnit { data, pts_us, wall_us: 1_700_000_000_000_000 + pts_us as i64, keyframe: false }
    }

    fn idr_at(template: &AccessUnit, pts_us: u64) -> AccessUnit {
        AccessUnit { pts_us, wall_us: 1_700_000_000_000_000 + pts_us as i64, ..template.clone() }
    }

    fn drain(c: &mut Chunker) -> Vec<MediaChunk> {
        std::iter::from_fn(|| c.pop_chunk()).collect()
    }

    const F: u64 = 100_000; // 10 fps

    #[test]
    fn cuts_only_at_keyframes_after_target_and_keeps_time_contiguous() {
        let idr = real_idr();
        let mut c = Chunker::new(ChunkerConfig { target_duration_us: 1_000_000, ..Default::default() }).unwrap();
        // Two leading P frames are dropped; then GOPs of 6 frames (0.6 s).
        c.push(p_frame(0, 10)).unwrap();
        c.push(p_frame(F, 10)).unwrap();
        assert_eq!(c.dropped_access_units(), 2);
        assert!(c.init_segment().is_none() && c.wants_keyframe());
        for i in 2..40u64 {
            let au = if (i - 2) % 6 == 0 { idr_at(&idr, i * F) } else { p_frame(i * F, 50) };
            c.push(au).unwrap();
        }
        c.finish().unwrap();
        let chunks = drain(&mut c);
        assert!(c.init_segment().is_some());
        assert!(c.codec_string().unwrap().starts_with("avc1.42"));
        // GOPs start at frames 2, 8, 14, ...: a chunk needs >= 1 s, so two GOPs (1.2 s) each.
        assert_eq!(chunks.iter().map(|c| c.frame_count).collect::<Vec<_>>(), vec![12, 12, 12, 2]);
        assert_eq!(chunks.iter().map(|c| c.frame_count).sum::<u32>(), 38);
        assert_eq!(chunks[0].media_start_us, 2 * F);
        for w in chunks.windows(2) {
            assert_eq!(w[0].media_end_us, w[1].media_start_us);
            assert_eq!(w[1].sequence, w[0].sequence + 1);
        }
        assert_eq!(chunks[0].sequence, 1);
        assert_eq!(chunks.last().unwrap().media_end_us, 40 * F);
        assert!(chunks.iter().all(|c| c.bytes == c.fragment.len() && !c.gap_before));
    }

    #[test]
    fn huge_gop_requests_keyframe_then_fails_without_oversize_chunk() {
        let idr = real_idr();
        let limit = 20_000;
        let mut c = Chunker::new(ChunkerConfig {
            target_duration_us: 1_000_000,
            max_fragment_bytes: limit,
            first_sequence: 1,
            codec: Codec::H264,
        })
        .unwrap();
        c.push(idr_at(&idr, 0)).unwrap();
        assert!(!c.wants_keyframe());
        // A pathological encoder: 2 kB P frames and no keyframe ever.
        let mut wanted_at = None;
        let mut err = None;
        for i in 1..40u64 {
            match c.push(p_frame(i * F, 2000)) {
                Ok(()) => {
                    if c.wants_keyframe() && wanted_at.is_none() {
                        wanted_at = Some(c.pending_fragment_len());
                    }
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let wanted_at = wanted_at.expect("wants_keyframe before the limit");
        assert!(wanted_at > limit * 3 / 4 && wanted_at < limit, "asked at {wanted_at} bytes");
        match err.expect("GopTooLarge") {
            ChunkError::GopTooLarge { bytes, limit: l, frames } => {
                assert!(bytes > limit && l == limit && frames > 1);
            }
            e => panic!("unexpected {e}"),
        }
        // Nothing was emitted (the only GOP was dropped), non-keyframes are now dropped
        // until a keyframe; the next chunk is marked as following a gap.
        assert!(c.pop_chunk().is_none());
        c.push(p_frame(50 * F, 10)).unwrap();
        c.push(idr_at(&idr, 51 * F)).unwrap();
        c.push(p_frame(52 * F, 10)).unwrap();
        c.finish().unwrap();
        let chunks = drain(&mut c);
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].gap_before && chunks[0].frame_count == 2);
        assert!(chunks[0].bytes <= limit);
    }

    #[test]
    fn dropped_gop_after_emitted_chunks_keeps_timeline_contiguous() {
        let idr = real_idr();
        let limit = 20_000;
        let mut c = Chunker::new(ChunkerConfig {
            target_duration_us: 300_000,
            max_fragment_bytes: limit,
            first_sequence: 1,
            codec: Codec::H264,
        })
        .unwrap();
        // Two normal GOPs (0.3 s each), then a runaway GOP, then normal again.
        for i in 0..6u64 {
            let au = if i % 3 == 0 { idr_at(&idr, i * F) } else { p_frame(i * F, 100) };
            c.push(au).unwrap();
        }
        c.push(idr_at(&idr, 6 * F)).unwrap();
        let mut i = 7;
        let err = loop {
            if let Err(e) = c.push(p_frame(i * F, 3000)) {
                break e;
            }
            i += 1;
        };
        assert!(matches!(err, ChunkError::GopTooLarge { .. }), "{err}");
        c.push(p_frame((i + 1) * F, 10)).unwrap(); // dropped: waiting for a keyframe
        c.push(idr_at(&idr, (i + 2) * F)).unwrap();
        c.push(p_frame((i + 3) * F, 10)).unwrap();
        c.finish().unwrap();
        let chunks = drain(&mut c);
        assert_eq!(chunks.iter().map(|c| c.frame_count).collect::<Vec<_>>(), vec![3, 3, 2]);
        assert!(!chunks[1].gap_before && chunks[2].gap_before);
        for w in chunks.windows(2) {
            assert_eq!(w[0].media_end_us, w[1].media_start_us);
        }
        assert!(chunks.iter().all(|ch| ch.bytes <= limit));
    }

    #[test]
    fn size_pressure_cuts_early_at_requested_keyframe_and_between_gops() {
        let idr = real_idr();
        let limit = 20_000;
        let mut c = Chunker::new(ChunkerConfig {
            target_duration_us: 10_000_000,
            max_fragment_bytes: limit,
            first_sequence: 5,
            codec: Codec::H264,
        })
        .unwrap();
        let mut i = 0u64;
        let mut chunks = Vec::new();
        // Cooperative encoder: answers wants_keyframe with an IDR on the next frame.
        while i < 60 {
            let au = if i == 0 || c.wants_keyframe() { idr_at(&idr, i * F) } else { p_frame(i * F, 1500) };
            c.push(au).unwrap();
            chunks.extend(drain(&mut c));
            i += 1;
        }
        c.finish().unwrap();
        chunks.extend(drain(&mut c));
        assert!(chunks.len() >= 3, "cut early despite a 10 s target");
        assert_eq!(chunks[0].sequence, 5);
        assert!(chunks.iter().all(|ch| ch.bytes <= limit));
        assert_eq!(chunks.iter().map(|c| c.frame_count).sum::<u32>(), 60);

        // Many small GOPs, long target: the limit forces a cut between whole GOPs.
        let mut c = Chunker::new(ChunkerConfig {
            target_duration_us: 100_000_000,
            max_fragment_bytes: limit,
            first_sequence: 1,
            codec: Codec::H264,
        })
        .unwrap();
        for i in 0..100u64 {
            let au = if i % 3 == 0 { idr_at(&idr, i * F) } else { p_frame(i * F, 1000) };
            c.push(au).unwrap();
        }
        c.finish().unwrap();
        let chunks = drain(&mut c);
        assert!(chunks.len() > 2);
        assert!(
            chunks.iter().all(
                |ch| ch.bytes <= limit && ch.frame_count % 3 == 0 || ch.sequence == chunks.last().unwrap().sequence
            )
        );
        assert_eq!(chunks.iter().map(|c| c.frame_count).sum::<u32>(), 100);
    }

    #[test]
    fn gap_flushes_and_rebases_restarted_source() {
        let idr = real_idr();
        let mut c = Chunker::new(ChunkerConfig::default()).unwrap();
        c.push(idr_at(&idr, 0)).unwrap();
        c.push(p_frame(F, 10)).unwrap();
        c.gap().unwrap();
        // The source restarted: pts back at 0, and a stale P frame first.
        c.push(p_frame(0, 10)).unwrap();
        c.push(idr_at(&idr, F)).unwrap();
        c.push(p_frame(2 * F, 10)).unwrap();
        c.finish().unwrap();
        let chunks = drain(&mut c);
        assert_eq!(chunks.len(), 2);
        assert!(!chunks[0].gap_before && chunks[1].gap_before);
        assert_eq!(chunks[0].media_end_us, 2 * F);
        assert_eq!(chunks[1].media_start_us, 2 * F);
        assert_eq!(chunks[1].media_end_us, 4 * F);
    }

    #[test]
    fn more_frames_after_finish_neither_overlap_nor_open_a_chunk_with_a_p_frame() {
        // Found by the `chunker` fuzz target: finish() gives the last chunk an estimated
        // end (one frame after its last frame); frames pushed afterwards started a chunk
        // before that end, or with a P frame.
        let idr = real_idr();
        let mut c = Chunker::new(ChunkerConfig::default()).unwrap();
        c.push(idr_at(&idr, 0)).unwrap();
        c.push(p_frame(F, 10)).unwrap();
        c.finish().unwrap();
        // Sooner than the estimated end (2F), and a P frame: dropped until a keyframe.
        c.push(p_frame(F + F / 2, 10)).unwrap();
        assert_eq!(c.dropped_access_units(), 1);
        c.push(idr_at(&idr, F + F / 2 + 1)).unwrap();
        c.finish().unwrap();
        let chunks = drain(&mut c);
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[0].media_start_us, chunks[0].media_end_us), (0, 2 * F));
        assert_eq!(chunks[1].media_start_us, 2 * F, "continues at the last end");
        assert_eq!(chunks[1].frame_count, 1);
        assert!(!chunks[1].gap_before);
    }

    #[test]
    fn rejects_bad_input() {
        let idr = real_idr();
        let mut c = Chunker::new(ChunkerConfig::default()).unwrap();
        let no_sps = AccessUnit { data: vec![0, 0, 1, 0x65, 1, 2], pts_us: 0, wall_us: 0, keyframe: true };
        assert!(matches!(c.push(no_sps), Err(ChunkError::MissingParameterSets { .. })));
        assert!(matches!(c.push(AccessUnit { data: vec![], ..idr.clone() }), Err(ChunkError::EmptyAccessUnit { .. })));
        c.push(idr_at(&idr, 5 * F)).unwrap();
        assert!(matches!(c.push(p_frame(5 * F, 1)), Err(ChunkError::NonMonotonicPts { .. })));
        let mut changed = idr_at(&idr, 6 * F);
        // Flip a byte inside the PPS (the NAL after the SPS).
        let nals = h264::split_annexb(&idr.data);
        let pps_pos = idr.data.windows(nals[1].len()).position(|w| w == nals[1]).unwrap();
        changed.data[pps_pos + 1] ^= 0x01;
        assert!(matches!(c.push(changed), Err(ChunkError::ParameterSetsChanged { .. })));
        assert!(Chunker::new(ChunkerConfig { target_duration_us: 0, ..Default::default() }).is_err());
        assert!(Chunker::new(ChunkerConfig { max_fragment_bytes: 10, ..Default::default() }).is_err());
        assert!(Chunker::new(ChunkerConfig { first_sequence: 0, ..Default::default() }).is_err());
    }

    #[test]
    fn fwht_chunks_are_the_raw_frames_cut_at_intra_frames() {
        use crate::fwht::{split_stream, test_frame};
        let mut c =
            Chunker::new(ChunkerConfig { target_duration_us: 300_000, codec: Codec::Fwht, ..Default::default() })
                .unwrap();
        let au = |i: u64, intra: bool| AccessUnit {
            data: test_frame(32, 16, intra, &[i as u8; 7]),
            pts_us: i * F,
            wall_us: 0,
            keyframe: intra,
        };
        // A P frame before any I frame is dropped, like an H.264 P frame.
        c.push(au(0, false)).unwrap();
        for i in 1..=8 {
            c.push(au(i, i % 3 == 1)).unwrap();
        }
        c.finish().unwrap();
        assert_eq!(c.init_segment(), Some(&[][..]), "FWHT needs no init segment");
        assert_eq!(c.codec_string().as_deref(), Some("fwht"));
        let chunks: Vec<_> = std::iter::from_fn(|| c.pop_chunk()).collect();
        assert_eq!(chunks.iter().map(|k| k.frame_count).collect::<Vec<_>>(), vec![3, 3, 2]);
        let mut all = Vec::new();
        for k in &chunks {
            let frames = split_stream(&k.fragment).unwrap();
            assert!(frames[0].1.is_intra(), "every chunk starts with an I frame");
            assert_eq!(frames.len() as u32, k.frame_count);
            all.extend_from_slice(&k.fragment);
        }
        assert_eq!(chunks[1].media_start_us, chunks[0].media_end_us);
        // The export (init + chunks) is one valid stream of all 8 frames.
        assert_eq!(split_stream(&all).unwrap().len(), 8);
        // Garbage is refused and nothing queued is lost.
        let bad = AccessUnit { data: vec![1, 2, 3], pts_us: 100 * F, wall_us: 0, keyframe: true };
        assert!(matches!(c.push(bad), Err(ChunkError::BadFwhtFrame { .. })));
    }
}
