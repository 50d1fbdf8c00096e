//! Fuzzes the export checker (`lucid_core::media::check_export`), the code that walks a
//! recipient's MP4 box by box against the session's digests. Input: one byte `n` (how
//! many fragment digests, 0..=15), then `n` little-endian u16 lengths, then the file.
//! The digests are the BLAKE3 of the file's own leading pieces of those lengths (the
//! first piece is the init segment), so the fuzzer reaches the fragment comparison with
//! both matching and mismatching pieces. It must return a verdict, never panic, hang or
//! allocate with the sizes the boxes claim.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = (n & 15) as usize;
    if rest.len() < 2 * n {
        return;
    }
    let (lens, media) = rest.split_at(2 * n);
    let mut digests = Vec::with_capacity(n);
    let mut at = 0usize;
    for l in lens.chunks(2) {
        let len = u16::from_le_bytes([l[0], l[1]]) as usize;
        let end = (at + len).min(media.len());
        digests.push(*blake3::hash(&media[at..end]).as_bytes());
        at = end;
    }
    let Some((init, fragments)) = digests.split_first() else {
        let _ = lucid_core::media::check_export(&[0; 32], &[], media);
        return;
    };
    if let Ok(report) = lucid_core::media::check_export(init, fragments, media) {
        // A file that passes has exactly one fragment per digest and no byte left over.
        assert_eq!(report.fragments, fragments.len() as u64);
        assert_eq!(report.total_len, media.len() as u64);
    }
});
