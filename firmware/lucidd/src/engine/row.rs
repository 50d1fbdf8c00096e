//! The persisted session row and its status vocabulary.
//!
//! Owns the JSON shape of a session as the store keeps it (one value per session in the
//! `sessions` table). It must never hold a secret in clear: the data key is stored only
//! wrapped under the device KEK, and a legacy RDP password is dropped on arrival.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// SessionStatus of the gateway contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Starting,
    Recording,
    Paused,
    Stopped,
    Processing,
    Completed,
    Failed,
    Deleted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Starting => "starting",
            Status::Recording => "recording",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "created" => Status::Created,
            "starting" => Status::Starting,
            "recording" => Status::Recording,
            "paused" => Status::Paused,
            "stopped" => Status::Stopped,
            "processing" => Status::Processing,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "deleted" => Status::Deleted,
            _ => return None,
        })
    }

    pub const ALL: [Status; 9] = [
        Status::Created,
        Status::Starting,
        Status::Recording,
        Status::Paused,
        Status::Stopped,
        Status::Processing,
        Status::Completed,
        Status::Failed,
        Status::Deleted,
    ];
}

/// What feeds a session: this appliance's camera, or chunks uploaded by Lucid clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Camera,
    Data,
}

/// The pipeline-manager view (8083) of a session: its own state machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineRow {
    pub pipeline_id: String,
    pub state: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub stopped_at: Option<String>,
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub kind: Kind,
    pub status: Status,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub stopped_at: Option<String>,
    pub paused_at: Option<String>,
    pub resumed_at: Option<String>,
    pub recording_config: Value,
    pub storage_config: Value,
    pub metadata: Value,
    /// Legacy RDP settings, password removed.
    pub rdp_config: Option<Value>,
    pub owner_address: Option<String>,
    /// Cipher name as lucid-core spells it.
    pub cipher: String,
    /// The data key wrapped under the device KEK (base64); empty once the device erased its
    /// copy at a seal (`evidence.device_can_decrypt = false`).
    pub wrapped_key: String,
    /// The data key encrypted to the configured recipients: an age v1 file (base64),
    /// the evidence's `recipients.age`. Absent in rows from before recipients, and for
    /// sessions created without any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_age: Option<String>,
    pub chunk_count: u64,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    pub compressed_chunks: u64,
    pub frame_count: u64,
    pub dropped_frames: u64,
    pub error_count: u64,
    /// Media time recorded, microseconds.
    pub media_us: u64,
    /// Seconds spent recording (pauses excluded), closed runs only.
    pub active_secs: f64,
    pub recovered: bool,
    pub epochs: Vec<u32>,
    pub codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
    /// Merkle root (hex) of the last signed manifest or finalization.
    pub root: Option<String>,
    pub finalized: bool,
    pub archived: bool,
    pub pipeline: Option<PipelineRow>,
    pub last_error: Option<String>,
    /// Counters over the log's records, kept as chunks commit so that statistics never
    /// scan the log (issue #8: no per-request read grows with the session).
    #[serde(default)]
    pub counters: LogCounters,
    /// Manifests signed for this session so far (the last one's `generation`).
    #[serde(default)]
    pub generation: u64,
    /// Protected from retention (`POST /api/v1/sessions/{id}/lock`); an explicit delete
    /// still deletes it. Rows written before the flag existed are unlocked.
    #[serde(default)]
    pub locked: bool,
}

/// What the statistics routes report about a session's records, counted at commit in
/// the same transaction as the records (so they never disagree with the log). A row
/// written before they existed has `version` 0 and is counted once at open.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogCounters {
    /// 0: never counted (an older row); `LogCounters::VERSION` once kept.
    pub version: u32,
    /// Records flagged `GAP_BEFORE` (a camera gap before them).
    pub gaps: u64,
    /// The largest sealed record, bytes.
    pub max_sealed_len: u64,
    /// Client quality scores of uploaded chunks, as uploaded (a later redaction does not
    /// take a score back): their sum and how many chunks gave one.
    pub quality_sum: f64,
    pub quality_count: u64,
}

impl LogCounters {
    pub const VERSION: u32 = 1;

    /// The mean client quality score, if any chunk gave one.
    pub fn quality(&self) -> Option<f64> {
        (self.quality_count > 0).then(|| self.quality_sum / self.quality_count as f64)
    }
}
