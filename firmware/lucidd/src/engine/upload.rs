//! The upload rules the Lucid upload routes share: which session an uploaded chunk goes
//! to (creating or converting a data session), and the chunk's appliance metadata.
//!
//! Owns the data-session rules only; the chunk path itself is `Engine::append`. Every
//! rule is checked and applied under the session's transition lock, together with the
//! append, so a delete, a start or a finalize cannot slip between the check and the
//! commit. It must not know HTTP shapes: routes parse, call `ingest`, render.

use serde_json::{Map, Value, json};

use super::{Appended, ChunkInfo, Engine, EngineError, Kind, MAX_PART, Result, SessionRow, Status, is_live, lock};
use crate::util::{now_rfc3339, short_id};

/// Sealed parts `Engine::append` will cut a payload into (it splits at `MAX_PART`; an
/// empty payload is one empty part). Computed up front because the reader needs it in
/// the chunk's metadata, which is committed together with the parts.
pub fn parts_for(len: usize) -> u64 {
    len.div_ceil(MAX_PART).max(1) as u64
}

/// One committed upload: what the engine did and the metadata stored with it.
#[derive(Debug)]
pub struct Ingested {
    pub appended: Appended,
    pub meta: Value,
}

impl Engine {
    /// The data session uploads go to: the existing one, or a new `Kind::Data` session.
    ///
    /// A camera session takes no uploads while it records (409: it is fed by the camera)
    /// nor once it holds video (its log is media-only). A camera session that never
    /// recorded and holds nothing is turned into a data session by its first upload;
    /// starting the camera on it afterwards is refused. Archived sessions are read-only.
    pub fn ensure_data_session(&self, sid: &str) -> Result<SessionRow> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        self.data_session(sid)
    }

    /// `ensure_data_session` for a caller holding the transition lock.
    fn data_session(&self, sid: &str) -> Result<SessionRow> {
        let row = match self.get(sid) {
            Ok(r) => r,
            Err(EngineError::NotFound { .. }) => self.create_row(sid.to_owned(), sid.to_owned(), Kind::Data, |_| {})?,
            Err(e) => return Err(e),
        };
        if row.archived {
            return Err(EngineError::Conflict(format!("session {sid} is archived; restore it before adding chunks")));
        }
        match row.kind {
            Kind::Data => {
                if row.finalized {
                    return Err(EngineError::Transition {
                        session: sid.to_owned(),
                        state: "finalized",
                        action: "upload to",
                    });
                }
                Ok(row)
            }
            Kind::Camera => {
                if is_live(row.status) {
                    return Err(EngineError::Conflict(format!(
                        "session {sid} is fed by the camera while it records; upload to another session"
                    )));
                }
                if row.chunk_count != 0 || row.status != Status::Created || row.finalized {
                    return Err(EngineError::Conflict(format!(
                        "session {sid} holds camera video; its log takes no uploaded data"
                    )));
                }
                self.update_row(sid, |r| {
                    r.kind = Kind::Data;
                    r.status = Status::Processing;
                    Ok(())
                })
            }
        }
    }

    /// The upload path: data session, then the real chunk path, under the session's
    /// transition lock. `meta` is the client's metadata; the keys `parts`, `size_bytes`,
    /// `upload_id` and `stored_at` are the appliance's (`parts` is how the reader
    /// reassembles a chunk split into sealed parts, `upload_id` tells a chunk's
    /// continuation parts from the next chunk). All parts commit in one transaction.
    pub fn ingest(
        &self,
        sid: &str,
        chunk_id: Option<&str>,
        data: &[u8],
        mut meta: Map<String, Value>,
    ) -> Result<Ingested> {
        let lk = self.session_lock(sid);
        let _g = lock(&lk);
        self.data_session(sid)?;
        let parts = parts_for(data.len());
        meta.insert("parts".into(), json!(parts));
        meta.insert("size_bytes".into(), json!(data.len()));
        meta.insert("upload_id".into(), json!(short_id("upload")));
        meta.insert("stored_at".into(), json!(now_rfc3339()));
        let quality = meta.get("quality_score").and_then(Value::as_f64);
        let meta = Value::Object(meta);
        let info = ChunkInfo { quality, ..ChunkInfo::default() };
        let appended = self.append(sid, data, &info, chunk_id, Some(&meta))?;
        if u64::from(appended.parts) != parts {
            // Both sides split at MAX_PART; a difference means the reader would reassemble
            // the wrong parts, which must be loud.
            tracing::error!(session = %sid, parts, appended = appended.parts, "part count disagrees with the engine");
            return Err(EngineError::Internal("part count disagrees with the engine".into()));
        }
        Ok(Ingested { appended, meta })
    }
}
