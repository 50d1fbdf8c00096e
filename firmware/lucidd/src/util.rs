//! Small shared helpers: UTC timestamps, hex, ids. No state, no IO beyond the clock.

use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now as ISO 8601 / RFC 3339 in UTC with a `Z` (the appliance decision in the contract).
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    // Millisecond precision keeps strings short and sortable.
    let t = t.replace_nanosecond(t.millisecond() as u32 * 1_000_000).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

pub fn unix_micros() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

pub fn micros_to_rfc3339(us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).map(rfc3339).unwrap_or_default()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `<prefix>-<8 hex>` from the system CSPRNG (session and pipeline ids of the contract).
pub fn short_id(prefix: &str) -> String {
    let mut b = [0u8; 4];
    // SystemRandom only fails when the kernel has no entropy source at all; a clock-based
    // fallback keeps ids unique enough for naming, and they are not secrets.
    if SystemRandom::new().fill(&mut b).is_err() {
        b = (unix_micros() as u32).to_be_bytes();
    }
    format!("{prefix}-{}", hex(&b))
}
