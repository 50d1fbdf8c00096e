//! H.264 bitstream helpers: Annex-B splitting, NAL classification, Annex-B → AVCC sample
//! conversion, and the few SPS fields the container needs (profile/level for the codec
//! string, coded size for the sample entry).
//!
//! Owns only byte-level parsing of encoder output. It must not encode, mux or allocate
//! per NAL on the hot path beyond the one output sample, and it must never panic on
//! malformed input: every parser returns `H264Error` instead.

use std::fmt::Write as _;

/// NAL unit types we act on (ITU-T H.264 Table 7-1).
pub(crate) const NAL_IDR: u8 = 5;
pub(crate) const NAL_SPS: u8 = 7;
pub(crate) const NAL_PPS: u8 = 8;
pub(crate) const NAL_AUD: u8 = 9;

/// Errors from parsing H.264 bytes (part of `Fmp4Error`). Context says which structure was
/// malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum H264Error {
    #[error("access unit contains no NAL units")]
    NoNalUnits,
    #[error("SPS too short: {len} bytes (need at least 4)")]
    SpsTooShort { len: usize },
    #[error("NAL is not an SPS (nal_unit_type {nal_type})")]
    NotSps { nal_type: u8 },
    #[error("SPS truncated while reading {field}")]
    SpsTruncated { field: &'static str },
    #[error("SPS field {field} out of range: {value}")]
    SpsOutOfRange { field: &'static str, value: u64 },
    #[error("NAL unit of {len} bytes does not fit a 4-byte length prefix")]
    NalTooLarge { len: usize },
}

/// `nal_unit_type` of a NAL (header byte included, start code excluded).
pub(crate) fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// Splits an Annex-B stream into NAL units (start codes removed). Accepts 3- and 4-byte
/// start codes; bytes before the first start code are ignored because they cannot be
/// attributed to any NAL. Trailing zero bytes of a NAL (`trailing_zero_8bits`, or the
/// leading zero of the next 4-byte start code) are trimmed.
pub(crate) fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new(); // (payload start, start-code start)
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push((i + 3, i));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (k, &(start, _)) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&(_, sc)| sc);
        while end > start && data[end - 1] == 0 {
            end -= 1;
        }
        if end > start {
            nals.push(&data[start..end]);
        }
    }
    nals
}

/// True when the bytes hold a coded picture (a slice NAL unit, types 1..=5), not only
/// parameter sets, SEI or delimiters.
pub(crate) fn has_picture(annexb: &[u8]) -> bool {
    split_annexb(annexb).iter().any(|n| matches!(nal_type(n), Some(1..=5)))
}

/// True when the access unit holds an IDR slice (a random-access point).
pub fn is_idr(annexb: &[u8]) -> bool {
    split_annexb(annexb).iter().any(|n| nal_type(n) == Some(NAL_IDR))
}

/// First SPS and PPS found in the access unit, if both are present.
pub(crate) fn parameter_sets(annexb: &[u8]) -> Option<(&[u8], &[u8])> {
    let nals = split_annexb(annexb);
    let sps = nals.iter().find(|n| nal_type(n) == Some(NAL_SPS))?;
    let pps = nals.iter().find(|n| nal_type(n) == Some(NAL_PPS))?;
    Some((sps, pps))
}

/// Parameter sets and delimiters live in the avcC sample entry (avc1), not in samples:
/// keeping them out of `mdat` makes every sample a pure picture and avoids conflicting
/// in-band copies.
fn kept_in_sample(nal: &[u8]) -> bool {
    !matches!(nal_type(nal), Some(NAL_SPS | NAL_PPS | NAL_AUD))
}

/// Size the AVCC sample for `annexb` will have, without building it. The chunker uses this
/// to predict fragment sizes exactly.
pub(crate) fn avcc_len(annexb: &[u8]) -> usize {
    split_annexb(annexb).iter().filter(|n| kept_in_sample(n)).map(|n| 4 + n.len()).sum()
}

/// Converts an Annex-B access unit to an AVCC sample: each NAL prefixed by its 4-byte
/// big-endian length, SPS/PPS/AUD dropped (they are carried in avcC).
pub(crate) fn annexb_to_avcc(annexb: &[u8]) -> Result<Vec<u8>, H264Error> {
    let nals = split_annexb(annexb);
    if nals.is_empty() {
        return Err(H264Error::NoNalUnits);
    }
    let mut out = Vec::with_capacity(annexb.len() + 16);
    for nal in nals.into_iter().filter(|n| kept_in_sample(n)) {
        let len = u32::try_from(nal.len()).map_err(|_| H264Error::NalTooLarge { len: nal.len() })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(nal);
    }
    Ok(out)
}

/// RFC 6381 codec string `avc1.PPCCLL` (profile_idc, constraint flags byte, level_idc in
/// hex) from an SPS NAL (header byte included).
pub(crate) fn codec_string(sps: &[u8]) -> Result<String, H264Error> {
    check_sps(sps)?;
    let mut s = String::from("avc1.");
    for b in &sps[1..4] {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    Ok(s)
}

fn check_sps(sps: &[u8]) -> Result<(), H264Error> {
    if sps.len() < 4 {
        return Err(H264Error::SpsTooShort { len: sps.len() });
    }
    match nal_type(sps) {
        Some(NAL_SPS) => Ok(()),
        t => Err(H264Error::NotSps { nal_type: t.unwrap_or(0) }),
    }
}

/// The SPS fields the muxer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpsInfo {
    pub(crate) profile_idc: u8,
    pub(crate) constraint_flags: u8,
    pub(crate) level_idc: u8,
    /// Displayed size after frame cropping.
    pub(crate) width: u32,
    pub(crate) height: u32,
}

/// Reads bits MSB-first from an RBSP (emulation prevention already removed).
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self, field: &'static str) -> Result<u64, H264Error> {
        let byte = self.data.get(self.pos / 8).ok_or(H264Error::SpsTruncated { field })?;
        let b = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(u64::from(b))
    }

    fn bits(&mut self, n: u32, field: &'static str) -> Result<u64, H264Error> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit(field)?;
        }
        Ok(v)
    }

    /// Unsigned Exp-Golomb. More than 32 leading zeros cannot occur in a valid SPS, so it
    /// is treated as corruption rather than overflowing.
    fn ue(&mut self, field: &'static str) -> Result<u64, H264Error> {
        let mut zeros = 0;
        while self.bit(field)? == 0 {
            zeros += 1;
            if zeros > 32 {
                return Err(H264Error::SpsOutOfRange { field, value: zeros });
            }
        }
        Ok((1u64 << zeros) - 1 + self.bits(zeros as u32, field)?)
    }

    fn se(&mut self, field: &'static str) -> Result<i64, H264Error> {
        let k = self.ue(field)? as i64;
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// Removes emulation-prevention bytes (`00 00 03` → `00 00`) so Exp-Golomb fields can be read.
fn rbsp(nal_payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal_payload.len());
    let mut zeros = 0;
    for &b in nal_payload {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), H264Error> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se("delta_scale")?;
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Parses the SPS far enough to get profile, level and the cropped picture size
/// (ITU-T H.264 §7.3.2.1.1).
pub(crate) fn parse_sps(sps: &[u8]) -> Result<SpsInfo, H264Error> {
    check_sps(sps)?;
    let data = rbsp(&sps[1..]);
    let mut r = BitReader { data: &data, pos: 0 };
    let profile_idc = r.bits(8, "profile_idc")? as u8;
    let constraint_flags = r.bits(8, "constraint_flags")? as u8;
    let level_idc = r.bits(8, "level_idc")? as u8;
    r.ue("seq_parameter_set_id")?;
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format_idc = r.ue("chroma_format_idc")?;
        if chroma_format_idc > 3 {
            return Err(H264Error::SpsOutOfRange { field: "chroma_format_idc", value: chroma_format_idc });
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit("separate_colour_plane_flag")? == 1;
        }
        r.ue("bit_depth_luma_minus8")?;
        r.ue("bit_depth_chroma_minus8")?;
        r.bit("qpprime_y_zero_transform_bypass_flag")?;
        if r.bit("seq_scaling_matrix_present_flag")? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit("seq_scaling_list_present_flag")? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue("log2_max_frame_num_minus4")?;
    let poc_type = r.ue("pic_order_cnt_type")?;
    match poc_type {
        0 => {
            r.ue("log2_max_pic_order_cnt_lsb_minus4")?;
        }
        1 => {
            r.bit("delta_pic_order_always_zero_flag")?;
            r.se("offset_for_non_ref_pic")?;
            r.se("offset_for_top_to_bottom_field")?;
            let n = r.ue("num_ref_frames_in_pic_order_cnt_cycle")?;
            if n > 255 {
                return Err(H264Error::SpsOutOfRange { field: "num_ref_frames_in_pic_order_cnt_cycle", value: n });
            }
            for _ in 0..n {
                r.se("offset_for_ref_frame")?;
            }
        }
        2 => {}
        v => {
            return Err(H264Error::SpsOutOfRange { field: "pic_order_cnt_type", value: v });
        }
    }
    r.ue("max_num_ref_frames")?;
    r.bit("gaps_in_frame_num_value_allowed_flag")?;
    let width_mbs = r.ue("pic_width_in_mbs_minus1")? + 1;
    let height_map_units = r.ue("pic_height_in_map_units_minus1")? + 1;
    let frame_mbs_only = r.bit("frame_mbs_only_flag")?;
    if frame_mbs_only == 0 {
        r.bit("mb_adaptive_frame_field_flag")?;
    }
    r.bit("direct_8x8_inference_flag")?;
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.bit("frame_cropping_flag")? == 1 {
        cl = r.ue("frame_crop_left_offset")?;
        cr = r.ue("frame_crop_right_offset")?;
        ct = r.ue("frame_crop_top_offset")?;
        cb = r.ue("frame_crop_bottom_offset")?;
    }
    // Crop units depend on chroma subsampling (Table 6-1 and equations 7-19..7-22).
    let chroma_array_type = if separate_colour_plane { 0 } else { chroma_format_idc };
    let (sub_w, sub_h) = match chroma_format_idc {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let (crop_x, crop_y) =
        if chroma_array_type == 0 { (1, 2 - frame_mbs_only) } else { (sub_w, sub_h * (2 - frame_mbs_only)) };
    let coded_w = width_mbs * 16;
    let coded_h = height_map_units * 16 * (2 - frame_mbs_only);
    let crop_w = (cl + cr).saturating_mul(crop_x);
    let crop_h = (ct + cb).saturating_mul(crop_y);
    if crop_w >= coded_w || crop_h >= coded_h {
        return Err(H264Error::SpsOutOfRange { field: "frame_crop", value: crop_w.max(crop_h) });
    }
    let width =
        u32::try_from(coded_w - crop_w).map_err(|_| H264Error::SpsOutOfRange { field: "width", value: coded_w })?;
    let height =
        u32::try_from(coded_h - crop_h).map_err(|_| H264Error::SpsOutOfRange { field: "height", value: coded_h })?;
    Ok(SpsInfo { profile_idc, constraint_flags, level_idc, width, height })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{EncoderConfig, OpenH264Encoder, VideoEncoder};
    use crate::source::{FrameSource, TestPattern, TestPatternConfig};

    /// Real encoder output: `n` access units of the test pattern.
    fn encoded(width: u32, height: u32, n: usize) -> Vec<crate::encode::AccessUnit> {
        let mut src = TestPattern::new(TestPatternConfig { width, height, fps: 15, paced: false }).unwrap();
        let mut enc = OpenH264Encoder::new(EncoderConfig::new(width, height, 15)).unwrap();
        let mut aus = Vec::new();
        for _ in 0..n {
            let f = src.next_frame().unwrap();
            aus.extend(enc.encode(&f).unwrap());
        }
        aus
    }

    #[test]
    fn split_handles_3_and_4_byte_start_codes_and_garbage_prefix() {
        let data = [0xff, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5, 0];
        let nals = split_annexb(&data);
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]);
        assert!(split_annexb(&[]).is_empty());
        assert!(split_annexb(&[0, 0, 1]).is_empty());
        assert!(is_idr(&data));
        assert_eq!(parameter_sets(&data), Some((&[0x67, 1, 2][..], &[0x68, 3][..])));
    }

    #[test]
    fn avcc_drops_parameter_sets_and_prefixes_lengths() {
        let data = [0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 1, 0x65, 4, 5];
        let avcc = annexb_to_avcc(&data).unwrap();
        assert_eq!(avcc, vec![0, 0, 0, 3, 0x65, 4, 5]);
        assert_eq!(avcc_len(&data), avcc.len());
        assert_eq!(annexb_to_avcc(&[1, 2, 3]), Err(H264Error::NoNalUnits));
    }

    #[test]
    fn sps_rejects_garbage_without_panicking() {
        assert!(parse_sps(&[]).is_err());
        assert!(parse_sps(&[0x67, 66]).is_err());
        assert!(parse_sps(&[0x68, 66, 0, 30, 0xff]).is_err());
        // Valid header, then all zero bits: Exp-Golomb never terminates within the data.
        assert!(parse_sps(&[0x67, 66, 0xc0, 30, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(codec_string(&[0x65, 1, 2, 3]).is_err());
    }

    #[test]
    fn real_encoder_output_has_sps_pps_idr_and_parses() {
        for (w, h) in [(320, 240), (200, 120)] {
            let aus = encoded(w, h, 3);
            assert_eq!(aus.len(), 3);
            let first = &aus[0];
            assert!(first.keyframe);
            assert!(is_idr(&first.data));
            let types: Vec<u8> = split_annexb(&first.data).iter().filter_map(|n| nal_type(n)).collect();
            let sps_pos = types.iter().position(|&t| t == NAL_SPS).expect("SPS in IDR access unit");
            let pps_pos = types.iter().position(|&t| t == NAL_PPS).expect("PPS in IDR access unit");
            let idr_pos = types.iter().position(|&t| t == NAL_IDR).expect("IDR slice");
            assert!(sps_pos < idr_pos && pps_pos < idr_pos, "parameter sets precede the IDR: {types:?}");
            let (sps, _pps) = parameter_sets(&first.data).unwrap();
            let info = parse_sps(sps).unwrap();
            assert_eq!((info.width, info.height), (w, h), "cropped size from SPS");
            // OpenH264 emits Constrained Baseline: profile 66 with constraint_set1 set.
            assert_eq!(info.profile_idc, 66);
            assert_ne!(info.constraint_flags & 0x40, 0);
            let cs = codec_string(sps).unwrap();
            assert_eq!(cs, format!("avc1.{:02x}{:02x}{:02x}", info.profile_idc, info.constraint_flags, info.level_idc));
            // P frames: not IDR, no parameter sets, conversion keeps all slice bytes.
            for au in &aus[1..] {
                assert!(!au.keyframe);
                assert!(!is_idr(&au.data));
                let avcc = annexb_to_avcc(&au.data).unwrap();
                assert_eq!(avcc.len(), avcc_len(&au.data));
                let n = u32::from_be_bytes([avcc[0], avcc[1], avcc[2], avcc[3]]) as usize;
                assert!(n + 4 <= avcc.len());
            }
            // The IDR sample loses exactly SPS+PPS (and their start codes).
            let avcc = annexb_to_avcc(&first.data).unwrap();
            assert!(avcc.len() < first.data.len());
            assert_eq!(nal_type(&avcc[4..]), Some(NAL_IDR));
        }
    }
}
