//! `lucidd verify EVIDENCE.tar`: the offline check anyone can run without the device or
//! any secret. All the logic is `lucid_core::evidence`; this module only reads the file
//! and prints the report or the first failure.

use std::path::Path;

/// Verifies the bundle at `path`; `Err` carries the first failure, worded for people.
pub fn verify_file(path: &Path) -> anyhow::Result<lucid_core::evidence::EvidenceReport> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let report = lucid_core::evidence::verify_evidence(std::io::BufReader::new(f))
        .map_err(|e| anyhow::anyhow!("{}: verification FAILED: {e}", path.display()))?;
    Ok(report)
}
