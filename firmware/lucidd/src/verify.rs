//! `lucidd verify EVIDENCE.tar [--vkey FILE | --device-id ID] [--media EXPORT.mp4]` and
//! `lucidd verify-device DEVICE.tar [--vkey FILE | --device-id ID]`: the offline checks
//! anyone can run without the device or any secret. All the logic is
//! `lucid_core::evidence` (the bundle and the pin), `lucid_core::clip` (clip evidence,
//! told apart by its first entry), `lucid_core::media` (the export or the clip) and
//! `lucid_core::devlog` (the device log); this module only reads the files and words the
//! reports, and `main` prints them or the first failure.

use std::path::Path;

use lucid_core::clip::ClipReport;
use lucid_core::devlog::DeviceLogReport;
use lucid_core::evidence::{EvidenceReport, Pin};
use lucid_core::media::MediaReport;

/// The pin from the command line: the text of a verifier key file (`device.vkey`, or the
/// `verifier_key` of `GET /api/v1/device` saved to a file), or a device id. `Err` is a
/// usage error.
pub fn pin(vkey_file: Option<&Path>, device_id: Option<&str>) -> anyhow::Result<Pin> {
    Ok(match (vkey_file, device_id) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--vkey {}: {e}", path.display()))?;
            Pin::vkey(&text).map_err(|e| anyhow::anyhow!("--vkey {}: {e}", path.display()))?
        }
        (None, Some(id)) => Pin::device_id(id).map_err(|e| anyhow::anyhow!("--device-id: {e}"))?,
        (None, None) => Pin::Unpinned,
    })
}

/// Verifies the bundle at `path` against `pin`; `Err` carries the first failure, worded
/// for people.
pub fn verify_file(path: &Path, pin: &Pin) -> anyhow::Result<EvidenceReport> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let report = lucid_core::evidence::verify_evidence_pinned(std::io::BufReader::new(f), pin)
        .map_err(|e| anyhow::anyhow!("{}: verification FAILED: {e}", path.display()))?;
    Ok(report)
}

/// Checks the export at `path` against verified evidence.
pub fn verify_media_file(report: &EvidenceReport, path: &Path) -> anyhow::Result<MediaReport> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    lucid_core::media::verify_media(report, std::io::BufReader::with_capacity(1 << 16, f))
        .map_err(|e| anyhow::anyhow!("{}: media verification FAILED: {e}", path.display()))
}

/// The first line of the output: who signed, and whether that was checked.
pub fn signer_line(r: &EvidenceReport) -> String {
    signer_line_of(&r.pin, &r.device_id, &r.device_vkey)
}

/// [`signer_line`] of any report.
pub fn signer_line_of(pin: &Pin, device_id: &str, device_vkey: &str) -> String {
    match pin {
        Pin::Unpinned => format!(
            "UNPINNED: signer not pinned; compare with the device's /api/v1/device: device {device_id} key {device_vkey}"
        ),
        Pin::Vkey(_) => format!("PINNED: signed by the pinned key {device_vkey} (device {device_id})"),
        Pin::DeviceId(_) => format!("PINNED: signed by the pinned device {device_id} (key {device_vkey})"),
    }
}

/// Checks verified session evidence against the device evidence at `path` (verified first,
/// against the session evidence's own key): the manifest is the session's latest head and
/// no deletion follows it.
pub fn verify_standing(evidence: &EvidenceReport, path: &Path) -> anyhow::Result<lucid_core::devlog::Standing> {
    let pin = Pin::vkey(&evidence.device_vkey).map_err(|e| anyhow::anyhow!("the evidence's key: {e}"))?;
    let log = verify_device_file(path, &pin)?;
    lucid_core::devlog::check_latest(evidence, &log)
        .map_err(|e| anyhow::anyhow!("{}: verification FAILED: {e}", path.display()))
}

/// Verifies the device-evidence tar at `path` against `pin`.
pub fn verify_device_file(path: &Path, pin: &Pin) -> anyhow::Result<DeviceLogReport> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    lucid_core::devlog::verify_device_evidence(std::io::BufReader::new(f), pin)
        .map_err(|e| anyhow::anyhow!("{}: verification FAILED: {e}", path.display()))
}

/// The report of `verify-device`: the signer line, then one line per session ever
/// created (its latest head and its deletion, with who and why), then other events.
pub fn device_report(r: &DeviceLogReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let signer = signer_line_of(&r.pin, &r.device_id, &r.device_vkey);
    let _ = writeln!(out, "{signer}");
    let _ = writeln!(out, "device       {}", r.device_id);
    let _ = writeln!(out, "events       {} (indices contiguous, every one under the last checkpoint)", r.events);
    let _ = writeln!(out, "checkpoints  {} (signatures, roots, consistency; no fork)", r.checkpoints_checked);
    let _ = writeln!(out, "root         {}", r.root_hex);
    let _ = writeln!(out, "sessions     {} ever created", r.sessions.len());
    for s in &r.sessions {
        let head = match &s.head {
            Some(h) => format!(
                "generation {} size {} root {} manifest sha256 {} (event {})",
                h.generation,
                h.tree_size,
                crate::util::hex(&h.root),
                crate::util::hex(&h.manifest_digest),
                h.index
            ),
            None => "no signed head".into(),
        };
        let fate = match &s.deleted {
            Some(d) => {
                format!("DELETED at {} by {}: {} (event {})", rfc3339_us(d.at_us), d.by.as_str(), d.reason, d.index)
            }
            None => "present".into(),
        };
        let _ = writeln!(
            out,
            "session      {} ({:?}) created {} (event {}); {head}; {fate}",
            s.session_id,
            s.kind,
            rfc3339_us(s.created_at_us),
            s.created_index
        );
    }
    for (i, e) in &r.device_events {
        let _ = writeln!(out, "event        {i} at {}: {:?}", rfc3339_us(e.at_us), e.kind);
    }
    out
}

/// Whether the file at `path` is clip evidence (its first tar header names
/// `lucid-clip/VERSION`). Anything unreadable is left to the session verifier to report.
pub fn is_clip_file(path: &Path) -> bool {
    use std::io::Read;
    let mut first = [0u8; 512];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut first)).is_ok()
        && lucid_core::clip::is_clip_evidence(&first)
}

/// Verifies the clip evidence at `path` against `pin`.
pub fn verify_clip_file(path: &Path, pin: &Pin) -> anyhow::Result<ClipReport> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    lucid_core::clip::verify_clip_evidence(std::io::BufReader::new(f), pin)
        .map_err(|e| anyhow::anyhow!("{}: clip verification FAILED: {e}", path.display()))
}

/// Checks the clip at `path` against verified clip evidence.
pub fn verify_clip_media_file(report: &ClipReport, path: &Path) -> anyhow::Result<MediaReport> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    lucid_core::media::verify_clip_media(report, std::io::BufReader::with_capacity(1 << 16, f))
        .map_err(|e| anyhow::anyhow!("{}: media verification FAILED: {e}", path.display()))
}

/// Unix microseconds as RFC 3339 UTC with microseconds (`2026-11-26T03:00:00.250000Z`).
pub fn rfc3339_us(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| format!("{us} us"))
}
