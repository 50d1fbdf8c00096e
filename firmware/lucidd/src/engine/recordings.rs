//! The recordings listing (`GET /api/v1/recordings?from=&to=`, issue #11): the camera
//! sessions that overlap a wall-clock range and the gaps between them, the basis of the
//! web app's timeline.
//!
//! Owns the pure overlap-and-gap computation (`timeline`) and the span of a session in
//! wall time, read from its first and last record (two point lookups a session). It must
//! not know HTTP shapes: the handler parses the range and renders `Recording`s.

use super::{Engine, EngineError, Kind, Result, SessionRow, Status};

/// Widest range one request may ask for: a month of a day-by-day timeline.
pub const MAX_RANGE_US: i64 = 31 * 86_400 * 1_000_000;

/// Most sessions one answer lists; past it the answer says `truncated` and the client
/// asks for a narrower range.
pub const MAX_RECORDINGS: usize = 5000;

/// Shorter holes between sessions are not gaps: capture timestamps jitter against media
/// time by some milliseconds (more on a loaded device), and consecutive continuous
/// segments meet exactly in media time. A pause or an outage is seconds at least.
pub const MIN_GAP_US: i64 = 2_000_000;

/// A half-open interval of wall time, Unix microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start_us: i64,
    pub end_us: i64,
}

/// The indices of the `spans` that overlap `[from, to)`, by start, and the gaps of at
/// least `min_gap_us` inside `[from, to)` that no span covers. Pure.
pub fn timeline(spans: &[Span], from: i64, to: i64, min_gap_us: i64) -> (Vec<usize>, Vec<Span>) {
    let mut hits: Vec<usize> = (0..spans.len()).filter(|&i| spans[i].start_us < to && spans[i].end_us > from).collect();
    hits.sort_by_key(|&i| (spans[i].start_us, spans[i].end_us));
    let mut gaps = Vec::new();
    let mut covered = from;
    for &i in &hits {
        let s = spans[i];
        if s.start_us - covered >= min_gap_us {
            gaps.push(Span { start_us: covered, end_us: s.start_us });
        }
        covered = covered.max(s.end_us);
    }
    if to - covered >= min_gap_us {
        gaps.push(Span { start_us: covered, end_us: to });
    }
    (hits, gaps)
}

/// One session of the listing.
#[derive(Debug, Clone)]
pub struct Recording {
    pub row: SessionRow,
    pub span: Span,
    /// A continuous segment (else a session a client or the button started).
    pub continuous: bool,
}

/// The answer to one range.
#[derive(Debug, Clone)]
pub struct Listing {
    pub recordings: Vec<Recording>,
    pub gaps: Vec<Span>,
    pub truncated: bool,
}

impl Engine {
    /// The wall-time span of a camera session: from its first frame to the end of its
    /// last chunk. `None` before its first chunk.
    fn wall_span(&self, row: &SessionRow) -> Result<Option<Span>> {
        Ok(self.edge_records(&row.id, row.chunk_count)?.map(|(a, b)| Span {
            start_us: a.wall_clock_us,
            end_us: b.wall_clock_us.saturating_add(i64::try_from(b.media_end_us - b.media_start_us).unwrap_or(0)),
        }))
    }

    /// The camera sessions overlapping `[from, to)` (Unix µs) and the gaps between them.
    /// Gaps are reported up to `to` or now, whichever is earlier: the future is not a gap.
    pub fn recordings(&self, from: i64, to: i64) -> Result<Listing> {
        if to <= from {
            return Err(EngineError::BadInput("`to` must be after `from`".into()));
        }
        if to - from > MAX_RANGE_US {
            return Err(EngineError::BadInput("the range may span at most 31 days".into()));
        }
        // One pass over the sessions (retention bounds how many there are), two point
        // lookups for each camera session with chunks.
        let mut rows = Vec::new();
        let mut spans = Vec::new();
        for row in self.list()? {
            if row.kind != Kind::Camera || row.chunk_count == 0 || row.status == Status::Created {
                continue;
            }
            if let Some(span) = self.wall_span(&row)? {
                rows.push(row);
                spans.push(span);
            }
        }
        let (hits, _) = timeline(&spans, from, to, MIN_GAP_US);
        let until = to.min(crate::util::unix_micros());
        let gaps = if until > from { timeline(&spans, from, until, MIN_GAP_US).1 } else { Vec::new() };
        let truncated = hits.len() > MAX_RECORDINGS;
        let recordings = hits
            .into_iter()
            .take(MAX_RECORDINGS)
            .map(|i| {
                let row = rows[i].clone();
                Recording { continuous: super::continuous::is_segment(&row), row, span: spans[i] }
            })
            .collect();
        Ok(Listing { recordings, gaps, truncated })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(a: i64, b: i64) -> Span {
        Span { start_us: a, end_us: b }
    }

    #[test]
    fn nothing_recorded_is_one_gap() {
        assert_eq!(timeline(&[], 0, 100, 1), (vec![], vec![s(0, 100)]));
    }

    #[test]
    fn overlap_is_half_open_and_sorted_by_start() {
        let spans = [s(50, 60), s(0, 10), s(100, 110), s(-10, 0), s(95, 100)];
        let (hits, _) = timeline(&spans, 0, 100, 1);
        // [-10, 0) ends at `from` and [100, 110) starts at `to`: neither overlaps.
        assert_eq!(hits, vec![1, 0, 4]);
    }

    #[test]
    fn gaps_lie_between_sessions_and_at_both_ends() {
        let spans = [s(10, 20), s(30, 40)];
        let (hits, gaps) = timeline(&spans, 0, 50, 1);
        assert_eq!(hits, vec![0, 1]);
        assert_eq!(gaps, vec![s(0, 10), s(20, 30), s(40, 50)]);
    }

    #[test]
    fn sessions_reaching_past_the_range_leave_no_gap_there() {
        let spans = [s(-5, 10), s(40, 70)];
        let (_, gaps) = timeline(&spans, 0, 50, 1);
        assert_eq!(gaps, vec![s(10, 40)]);
    }

    #[test]
    fn overlapping_and_nested_sessions_cover_their_union() {
        let spans = [s(0, 30), s(5, 10), s(25, 40), s(45, 50)];
        let (_, gaps) = timeline(&spans, 0, 50, 1);
        assert_eq!(gaps, vec![s(40, 45)]);
    }

    #[test]
    fn holes_shorter_than_the_minimum_are_not_gaps() {
        // Consecutive segments meet within jitter; the pause of 20 is a gap.
        let spans = [s(0, 10), s(11, 20), s(40, 50)];
        let (_, gaps) = timeline(&spans, 0, 52, 5);
        assert_eq!(gaps, vec![s(20, 40)]);
    }
}
