//! Fuzzes the keyframe chunker and the fMP4 muxer behind it (`lucid_media::Chunker`):
//! access units from an encoder or a camera's own H.264 go in, CMAF fragments (or raw
//! FWHT streams) come out. lucid-media writes fMP4 and parses none, so the output side
//! is what is checked: every fragment must parse back with mp4-atom (moof + mdat) with
//! the chunk's sequence number, frame count and sample sizes, stay within the size
//! limit, and the media timeline must run on without overlap.
//!
//! Input: byte 0 picks the codec (bit 0: FWHT) and the fragment limit (1024 + 256 × the
//! other bits), byte 1 the target duration; then records of
//! `[op][pts step (ms)][len u16 BE][len bytes]`, where op bit 1 calls `gap()` first,
//! bit 2 `finish()` after, and bit 3 restarts the pts at 0. The keyframe flag comes from
//! the bitstream, as the encoders set it (bit 0 is the V4L2 buffer flag, used only when a
//! FWHT header does not parse).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use lucid_media::{AccessUnit, Chunker, ChunkerConfig, Codec, MediaChunk};
use mp4_atom::{Decode, Mdat, Moof, TrunSamples};

struct Check {
    codec: Codec,
    limit: usize,
    next_sequence: Option<u32>,
    last_end: Option<u64>,
}

impl Check {
    fn chunk(&mut self, c: MediaChunk) {
        assert_eq!(c.bytes, c.fragment.len());
        assert!(c.bytes <= self.limit, "fragment over the limit");
        assert!(c.frame_count > 0);
        assert!(c.media_end_us > c.media_start_us, "empty or reversed chunk");
        if let Some(s) = self.next_sequence {
            assert_eq!(c.sequence, s, "sequence numbers skip");
        }
        self.next_sequence = Some(c.sequence.wrapping_add(1).max(1));
        if let Some(end) = self.last_end {
            assert!(c.media_start_us >= end, "chunks overlap in media time");
        }
        self.last_end = Some(c.media_end_us);
        match self.codec {
            Codec::H264 => {
                let mut cur = Cursor::new(&c.fragment);
                let moof = Moof::decode(&mut cur).expect("fragment starts with a moof");
                let mdat = Mdat::decode(&mut cur).expect("moof is followed by an mdat");
                assert_eq!(cur.position() as usize, c.fragment.len(), "bytes after the mdat");
                assert_eq!(moof.mfhd.sequence_number, c.sequence);
                let trun = &moof.traf[0].trun[0];
                let TrunSamples::Explicit(entries) = &trun.samples else { panic!("the muxer writes explicit samples") };
                assert_eq!(entries.len(), c.frame_count as usize);
                // A chunk decodes alone only if it starts at a sync sample (keyframe).
                let first = entries[0].flags.or(moof.traf[0].tfhd.default_sample_flags);
                assert_eq!(first.map(|f| f & 0x0001_0000), Some(0), "chunk starts with a non-sync sample");
                let sizes: u64 = entries.iter().map(|e| u64::from(e.size.unwrap_or(0))).sum();
                assert_eq!(sizes, mdat.data.len() as u64, "sample sizes do not add up to the mdat");
            }
            Codec::Fwht => {
                let frames = lucid_media::fwht::split_stream(&c.fragment).expect("whole FWHT frames");
                assert_eq!(frames.len(), c.frame_count as usize);
                assert!(frames[0].1.is_intra(), "chunk starts with an inter frame");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let &[cfg, dur, ref tail @ ..] = data else {
        return;
    };
    let mut rest: &[u8] = tail;
    let codec = if cfg & 1 == 1 { Codec::Fwht } else { Codec::H264 };
    let limit = 1024 + 256 * usize::from(cfg >> 1);
    let config = ChunkerConfig {
        target_duration_us: (u64::from(dur) + 1) * 10_000,
        max_fragment_bytes: limit,
        first_sequence: 1,
        codec,
    };
    let mut chunker = Chunker::new(config).expect("valid config");
    let mut check = Check { codec, limit, next_sequence: None, last_end: None };
    let mut pts = 0u64;
    while let &[op, step, hi, lo, ref tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([hi, lo])).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        if op & 2 != 0 {
            chunker.gap().expect("gap only flushes");
        }
        if op & 8 != 0 {
            pts = 0;
        }
        pts += u64::from(step) * 1000;
        // The keyframe flag as every producer sets it, from the bitstream (the chunker's
        // contract; `v4l2::m2m::is_keyframe`): the op bit only stands in for the buffer
        // flag when a FWHT header does not parse.
        let keyframe = match codec {
            Codec::H264 => lucid_media::is_idr(bytes),
            Codec::Fwht => lucid_media::fwht::parse_header(bytes).map_or(op & 1 != 0, |h| h.is_intra()),
        };
        let au = AccessUnit { data: bytes.to_vec(), pts_us: pts, wall_us: pts as i64, keyframe };
        let _ = chunker.push(au);
        if op & 4 != 0 {
            let _ = chunker.finish();
        }
        while let Some(c) = chunker.pop_chunk() {
            check.chunk(c);
        }
        if let (Codec::H264, Some(init)) = (codec, chunker.init_segment()) {
            let mut cur = Cursor::new(init);
            mp4_atom::Ftyp::decode(&mut cur).expect("init starts with ftyp");
            mp4_atom::Moov::decode(&mut cur).expect("init has a moov");
        }
    }
    let _ = chunker.finish();
    while let Some(c) = chunker.pop_chunk() {
        check.chunk(c);
    }
});
