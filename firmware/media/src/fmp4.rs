//! Fragmented MP4 (CMAF-style) muxing of one H.264 video track with `mp4-atom`: the init
//! segment (ftyp + moov) and one moof + mdat fragment per chunk.
//!
//! Owns box layout, timescale conversion and sample flags. It must not decide where to cut
//! (the chunker does) and must not write boxes by hand: every box goes through mp4-atom so
//! sizes and versions stay consistent.

use mp4_atom::{
    Avc1, Avcc, Dinf, Dref, Encode, Ftyp, Hdlr, Mdat, Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mvex, Mvhd, Stbl, Stco, Stsd,
    Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, Url, Visual, Vmhd,
};

use crate::encode::AccessUnit;
use crate::h264;

/// Media timescale of the track (ticks per second). 90 kHz is the MPEG/RTP video clock:
/// common frame rates (15, 24, 25, 30, 50, 60 fps) are whole tick counts, and
/// µs → ticks is an exact `* 9 / 100` up to one tick of rounding that never accumulates
/// (each timestamp is converted absolutely, durations are differences of converted values).
pub const DEFAULT_TIMESCALE: u32 = 90_000;

/// The only track in our files.
const TRACK_ID: u32 = 1;

/// Sample flags (ISO/IEC 14496-12 §8.8.3.1): sample_depends_on = 2 (does not depend on
/// others), is_non_sync = 0 — an IDR.
pub(crate) const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;
/// sample_depends_on = 1 (depends on others), is_non_sync = 1 — a P frame.
pub(crate) const NON_SYNC_SAMPLE_FLAGS: u32 = 0x0101_0000;

/// Exact size of a moof + mdat for `samples` samples, excluding the sample payloads:
/// moof 8 + mfhd 16 + traf 8 + tfhd 16 + tfdt(v1) 20 + trun 20 + 12/sample, mdat header 8.
/// The chunker relies on this to stay under its size limit before building anything.
pub(crate) const fn fragment_overhead(samples: usize) -> usize {
    96 + 12 * samples
}

/// Errors from the muxer.
#[derive(Debug, thiserror::Error)]
pub enum Fmp4Error {
    #[error("invalid SPS: {0}")]
    BadSps(#[from] h264::H264Error),
    #[error("empty PPS")]
    EmptyPps,
    #[error("picture size {width}x{height} does not fit the sample entry (max 65535)")]
    BadSize { width: u32, height: u32 },
    #[error("timescale must be > 0")]
    BadTimescale,
    #[error("fragment {sequence}: no access units")]
    EmptyFragment { sequence: u32 },
    #[error("fragment {sequence}: sample {index} has pts {pts_us} µs not after the previous {prev_us} µs")]
    NonMonotonic { sequence: u32, index: usize, prev_us: u64, pts_us: u64 },
    #[error("fragment {sequence}: sample {index}: {source}")]
    BadSample {
        sequence: u32,
        index: usize,
        #[source]
        source: h264::H264Error,
    },
    #[error("fragment {sequence}: {what} does not fit its 32-bit field")]
    Overflow { sequence: u32, what: &'static str },
    #[error("encoding {what}: {source}")]
    Atom {
        what: &'static str,
        #[source]
        source: mp4_atom::Error,
    },
}

/// Builds the init segment and fragments of a single-track H.264 fMP4 stream.
#[derive(Debug, Clone)]
pub struct Fmp4Muxer {
    sps: Vec<u8>,
    pps: Vec<u8>,
    width: u16,
    height: u16,
    timescale: u32,
    nominal_frame_us: u64,
}

impl Fmp4Muxer {
    /// `sps`/`pps` are NAL units without start codes (header byte included); `timescale`
    /// is ticks per second for all media times (use `DEFAULT_TIMESCALE`).
    pub fn new(sps: &[u8], pps: &[u8], width: u32, height: u32, timescale: u32) -> Result<Self, Fmp4Error> {
        h264::parse_sps(sps)?;
        if pps.is_empty() {
            return Err(Fmp4Error::EmptyPps);
        }
        let (Ok(w), Ok(h)) = (u16::try_from(width), u16::try_from(height)) else {
            return Err(Fmp4Error::BadSize { width, height });
        };
        if w == 0 || h == 0 {
            return Err(Fmp4Error::BadSize { width, height });
        }
        if timescale == 0 {
            return Err(Fmp4Error::BadTimescale);
        }
        Ok(Self { sps: sps.to_vec(), pps: pps.to_vec(), width: w, height: h, timescale, nominal_frame_us: 33_333 })
    }

    /// Duration given to the last sample of a fragment when neither `end_pts_us` nor a
    /// previous sample tells it (a one-frame fragment). Defaults to 1/30 s.
    pub fn with_nominal_frame_duration_us(mut self, us: u64) -> Self {
        self.nominal_frame_us = us.max(1);
        self
    }

    pub fn timescale(&self) -> u32 {
        self.timescale
    }

    /// Media time in µs → track ticks (rounded down).
    pub fn ticks(&self, us: u64) -> u64 {
        (u128::from(us) * u128::from(self.timescale) / 1_000_000) as u64
    }

    /// RFC 6381 codec string for MSE / HLS, e.g. `avc1.42c01e`.
    pub fn codec_string(&self) -> String {
        // The SPS was validated in `new`, so this cannot fail; fall back to a generic
        // Constrained Baseline string rather than panic if it somehow did.
        h264::codec_string(&self.sps).unwrap_or_else(|_| "avc1.42c01e".to_owned())
    }

    /// `ftyp` + `moov`: one video track with an avc1/avcC sample entry, empty sample
    /// tables, and `mvex/trex` announcing that samples come in fragments.
    pub fn init_segment(&self) -> Result<Vec<u8>, Fmp4Error> {
        let ftyp = Ftyp {
            major_brand: b"iso6".into(),
            minor_version: 0,
            compatible_brands: vec![b"iso6".into(), b"cmfc".into(), b"mp41".into(), b"avc1".into()],
        };
        let avcc = Avcc::new(&self.sps, &self.pps).map_err(|source| Fmp4Error::Atom { what: "avcC", source })?;
        let avc1 = Avc1 {
            visual: Visual { data_reference_index: 1, width: self.width, height: self.height, ..Default::default() },
            avcc,
            ..Default::default()
        };
        let moov = Moov {
            mvhd: Mvhd {
                timescale: self.timescale,
                rate: 1.into(),
                volume: 1.into(),
                next_track_id: TRACK_ID + 1,
                ..Default::default()
            },
            mvex: Some(Mvex {
                trex: vec![Trex { track_id: TRACK_ID, default_sample_description_index: 1, ..Default::default() }],
                ..Default::default()
            }),
            trak: vec![Trak {
                tkhd: Tkhd {
                    track_id: TRACK_ID,
                    enabled: true,
                    in_movie: true,
                    width: self.width.into(),
                    height: self.height.into(),
                    ..Default::default()
                },
                mdia: Mdia {
                    mdhd: Mdhd { timescale: self.timescale, language: "und".into(), ..Default::default() },
                    hdlr: Hdlr { handler: b"vide".into(), name: "Lucid video".into() },
                    minf: Minf {
                        vmhd: Some(Vmhd::default()),
                        dinf: Dinf { dref: Dref { entries: vec![Url { location: String::new() }.into()] } },
                        stbl: Stbl {
                            stsd: Stsd { codecs: vec![avc1.into()] },
                            stco: Some(Stco::default()),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                },
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = Vec::with_capacity(1024);
        ftyp.encode(&mut out).map_err(|source| Fmp4Error::Atom { what: "ftyp", source })?;
        moov.encode(&mut out).map_err(|source| Fmp4Error::Atom { what: "moov", source })?;
        Ok(out)
    }

    /// One `moof` + `mdat` holding `aus` (decode order = presentation order: no B-frames).
    ///
    /// `base_media_decode_time` is the tfdt value in track ticks (normally
    /// `ticks(aus[0].pts_us)`). Each sample lasts until the next sample's pts; the last one
    /// until `end_pts_us` if given (the next fragment's first pts, which keeps fragments
    /// gapless), else the previous sample's duration, else the nominal frame duration.
    pub fn fragment(
        &self,
        sequence_number: u32,
        aus: &[AccessUnit],
        base_media_decode_time: u64,
        end_pts_us: Option<u64>,
    ) -> Result<Vec<u8>, Fmp4Error> {
        let seq = sequence_number;
        if aus.is_empty() {
            return Err(Fmp4Error::EmptyFragment { sequence: seq });
        }
        let mut entries = Vec::with_capacity(aus.len());
        let mut payload = Vec::with_capacity(aus.iter().map(|a| a.data.len()).sum());
        for (i, au) in aus.iter().enumerate() {
            let next_pts = match aus.get(i + 1) {
                Some(n) => n.pts_us,
                None => match end_pts_us {
                    Some(e) => e,
                    // Earlier iterations checked aus[i-1] < aus[i], so the delta is positive.
                    None if i > 0 => au.pts_us.saturating_add(au.pts_us - aus[i - 1].pts_us),
                    None => au.pts_us.saturating_add(self.nominal_frame_us),
                },
            };
            if next_pts <= au.pts_us {
                return Err(Fmp4Error::NonMonotonic {
                    sequence: seq,
                    index: i + 1,
                    prev_us: au.pts_us,
                    pts_us: next_pts,
                });
            }
            let duration = u32::try_from(self.ticks(next_pts) - self.ticks(au.pts_us))
                .map_err(|_| Fmp4Error::Overflow { sequence: seq, what: "sample duration" })?;
            let sample = h264::annexb_to_avcc(&au.data).map_err(|source| Fmp4Error::BadSample {
                sequence: seq,
                index: i,
                source,
            })?;
            let size =
                u32::try_from(sample.len()).map_err(|_| Fmp4Error::Overflow { sequence: seq, what: "sample size" })?;
            payload.extend_from_slice(&sample);
            entries.push(TrunEntry {
                duration: Some(duration),
                size: Some(size),
                flags: Some(if au.keyframe { SYNC_SAMPLE_FLAGS } else { NON_SYNC_SAMPLE_FLAGS }),
                cts: None,
            });
        }
        let mut moof = Moof {
            mfhd: Mfhd { sequence_number: seq },
            traf: vec![Traf {
                // default-base-is-moof: data_offset counts from the start of this moof, so
                // a fragment is self-contained wherever it is stored or served.
                tfhd: Tfhd { track_id: TRACK_ID, default_base_is_moof: true, ..Default::default() },
                tfdt: Some(Tfdt { base_media_decode_time }),
                trun: vec![Trun { data_offset: Some(0), samples: entries.into() }],
                ..Default::default()
            }],
        };
        // The data offset depends on the moof's own size: encode once to measure, then
        // again with the real offset (the size does not change, the field is fixed-width).
        let mut probe = Vec::new();
        moof.encode(&mut probe).map_err(|source| Fmp4Error::Atom { what: "moof", source })?;
        let data_offset =
            i32::try_from(probe.len() + 8).map_err(|_| Fmp4Error::Overflow { sequence: seq, what: "data_offset" })?;
        moof.traf[0].trun[0].data_offset = Some(data_offset);
        let mut out = Vec::with_capacity(probe.len() + 8 + payload.len());
        moof.encode(&mut out).map_err(|source| Fmp4Error::Atom { what: "moof", source })?;
        Mdat { data: payload }.encode(&mut out).map_err(|source| Fmp4Error::Atom { what: "mdat", source })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp4_atom::{Decode, TrunSamples};

    /// Real parameter sets from one OpenH264 160x120 IDR.
    fn sps_pps() -> (Vec<u8>, Vec<u8>) {
        let mut src = crate::source::TestPattern::new(crate::source::TestPatternConfig {
            width: 160,
            height: 120,
            fps: 15,
            paced: false,
        })
        .unwrap();
        let mut enc = crate::encode::OpenH264Encoder::new(crate::encode::EncoderConfig::new(160, 120, 15)).unwrap();
        use crate::encode::VideoEncoder;
        use crate::source::FrameSource;
        let au = enc.encode(&src.next_frame().unwrap()).unwrap().remove(0);
        let (s, p) = h264::parameter_sets(&au.data).unwrap();
        (s.to_vec(), p.to_vec())
    }

    fn au(pts_us: u64, keyframe: bool, len: usize) -> AccessUnit {
        let mut data = vec![0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }];
        data.extend(std::iter::repeat_n(0xaa, len));
        AccessUnit { data, pts_us, wall_us: 0, keyframe }
    }

    #[test]
    fn fragment_layout_offsets_durations_and_flags() {
        let (sps, pps) = sps_pps();
        let m = Fmp4Muxer::new(&sps, &pps, 160, 120, DEFAULT_TIMESCALE).unwrap();
        assert!(m.codec_string().starts_with("avc1.42"));
        let init = m.init_segment().unwrap();
        let mut cur = std::io::Cursor::new(&init);
        let ftyp = Ftyp::decode(&mut cur).unwrap();
        assert_eq!(ftyp.major_brand, b"iso6".into());
        let moov = Moov::decode(&mut cur).unwrap();
        assert_eq!(moov.trak[0].mdia.mdhd.timescale, 90_000);
        assert!(moov.mvex.is_some());

        let aus = [au(1_000_000, true, 100), au(1_066_666, false, 10), au(1_133_333, false, 20)];
        let base = m.ticks(aus[0].pts_us);
        let frag = m.fragment(7, &aus, base, Some(1_200_000)).unwrap();
        let expected_len = fragment_overhead(3) + (4 + 101) + (4 + 11) + (4 + 21);
        assert_eq!(frag.len(), expected_len, "overhead formula is exact");

        let mut cur = std::io::Cursor::new(&frag);
        let moof = Moof::decode(&mut cur).unwrap();
        let moof_len = cur.position() as usize;
        let mdat = Mdat::decode(&mut cur).unwrap();
        assert_eq!(moof.mfhd.sequence_number, 7);
        let traf = &moof.traf[0];
        assert_eq!(traf.tfdt.as_ref().unwrap().base_media_decode_time, 90_000);
        let trun = &traf.trun[0];
        assert_eq!(trun.data_offset, Some(moof_len as i32 + 8));
        assert_eq!(&frag[moof_len + 8..moof_len + 12], &[0, 0, 0, 101]);
        let TrunSamples::Explicit(entries) = &trun.samples else { panic!("explicit samples") };
        let d: Vec<u32> = entries.iter().map(|e| e.duration.unwrap()).collect();
        // 1_000_000→90000, 1_066_666→95999, 1_133_333→101999, 1_200_000→108000
        assert_eq!(d, vec![5999, 6000, 6001]);
        assert_eq!(d.iter().sum::<u32>() as u64, m.ticks(1_200_000) - base, "no drift");
        assert_eq!(entries[0].flags, Some(SYNC_SAMPLE_FLAGS));
        assert_eq!(entries[1].flags, Some(NON_SYNC_SAMPLE_FLAGS));
        assert_eq!(mdat.data.len(), 105 + 15 + 25);
    }

    #[test]
    fn fragment_rejects_bad_input() {
        let (sps, pps) = sps_pps();
        let m = Fmp4Muxer::new(&sps, &pps, 160, 120, DEFAULT_TIMESCALE).unwrap();
        assert!(matches!(m.fragment(1, &[], 0, None), Err(Fmp4Error::EmptyFragment { .. })));
        let backwards = [au(100, true, 1), au(50, false, 1)];
        assert!(matches!(m.fragment(1, &backwards, 0, None), Err(Fmp4Error::NonMonotonic { .. })));
        let garbage = [AccessUnit { data: vec![1, 2, 3], pts_us: 0, wall_us: 0, keyframe: true }];
        assert!(matches!(m.fragment(1, &garbage, 0, None), Err(Fmp4Error::BadSample { .. })));
        // One sample, no end: nominal duration.
        let one = m.clone().with_nominal_frame_duration_us(50_000).fragment(1, &[au(0, true, 5)], 0, None).unwrap();
        let moof = Moof::decode(&mut std::io::Cursor::new(&one)).unwrap();
        assert_eq!(moof.traf[0].trun[0].samples.get(0).unwrap().duration, Some(4500));
        assert!(Fmp4Muxer::new(&[0x68, 1, 2, 3], &pps, 160, 120, 90_000).is_err());
        assert!(Fmp4Muxer::new(&sps, &[], 160, 120, 90_000).is_err());
        assert!(Fmp4Muxer::new(&sps, &pps, 70_000, 120, 90_000).is_err());
        assert!(Fmp4Muxer::new(&sps, &pps, 160, 120, 0).is_err());
    }
}
