//! The device log on the device: preparing an append (the event's bytes, the subtree
//! hashes it completes, the checkpoint signed over the log with it), reading events,
//! checkpoints and proofs, the backfill of a store older than the log, and the device
//! evidence tar.
//!
//! Owns the order of device-log appends: one at a time, under `Engine::devlog`, with the
//! index read from the store inside that lock, so two appends never take one index and a
//! failed transaction leaves no hole. It must not write the store itself except for events
//! that record no other change (the backfill): every other append is handed to the store
//! call that makes the change it records, so the change and its event commit together.
//! Events carry ids, counts and digests only, never a session's name or any secret.

use lucid_core::devlog::{self, DeletedBy, Event, EventKind};
use lucid_core::merkle::{self, Hash};
use lucid_core::note::Checkpoint;

use super::{Engine, EngineError, Kind, NodeError, Result, SessionRow, internal, lock};
use crate::store::{DeviceAppend, Node, StoreError};

/// The largest page of `GET /api/v1/device/log/entries`.
pub const MAX_ENTRIES_PAGE: u64 = 1000;

/// An append prepared for index `index`, to be written by one store call.
pub(crate) struct Prepared {
    pub index: u64,
    pub event: Vec<u8>,
    nodes: Vec<Node>,
    note: String,
}

impl Prepared {
    pub(crate) fn append(&self) -> DeviceAppend<'_> {
        DeviceAppend { index: self.index, event: &self.event, nodes: &self.nodes, note: &self.note }
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Meta-table key of the (version, build) last recorded as `FirmwareCommitted`.
const FIRMWARE_EVENT: &str = "devlog_firmware";

pub(crate) fn kind_of(k: Kind) -> lucid_core::SessionKind {
    match k {
        Kind::Camera => lucid_core::SessionKind::Camera,
        Kind::Data => lucid_core::SessionKind::Data,
    }
}

impl Engine {
    /// The device log's checkpoint origin, `lucid/<device id>`.
    pub fn device_origin(&self) -> String {
        devlog::device_origin(&self.device_id)
    }

    /// Appends one event: `make` gets the event's index (a manifest names it) and returns
    /// the event and a value for `write`, which must store the append (`Prepared::append`)
    /// in the transaction of the change the event records. Holds the device-log lock
    /// throughout, so indices are dense and in commit order.
    pub(crate) fn device_append<C, T>(
        &self,
        make: impl FnOnce(u64) -> Result<(EventKind, C)>,
        write: impl FnOnce(&Prepared, C) -> Result<T>,
    ) -> Result<T> {
        let _g = lock(&self.devlog);
        let index = self.store.device_log_len()?;
        let (kind, carry) = make(index)?;
        let prepared = self.prepare(index, Event { at_us: now_us(), kind })?;
        write(&prepared, carry)
    }

    fn prepare(&self, index: u64, event: Event) -> Result<Prepared> {
        let event = event.encode().map_err(internal)?;
        let leaf = devlog::event_leaf(&event);
        let size = index + 1;
        let (nodes, root) =
            self.store.with_device_nodes(|available, stored| -> Result<(Vec<Node>, Hash), StoreError> {
                if available != index {
                    return Err(StoreError::Corrupt {
                        key: "device_log".into(),
                        msg: format!("{available} events, appending {index}"),
                    });
                }
                // The subtrees the new leaf completes: the leaf, then each aligned
                // power-of-two range it ends (the left half is stored, the right half
                // was just computed).
                let mut nodes: Vec<Node> = vec![(0, index, leaf)];
                let mut level = 1u32;
                while level < 64 && size.is_multiple_of(1u64 << level) {
                    let i = (size >> level) - 1;
                    let left = stored(level - 1, 2 * i)?;
                    let right = nodes.last().map(|n| n.2).unwrap_or(leaf);
                    nodes.push((level, i, merkle::node_hash(&left, &right)));
                    level += 1;
                }
                let mut lookup = |l: u32, i: u64| -> Result<Hash, NodeError> {
                    match nodes.iter().find(|n| n.0 == l && n.1 == i) {
                        Some(n) => Ok(n.2),
                        None => stored(l, i).map_err(NodeError::Store),
                    }
                };
                let root = merkle::root_with(size, size, &mut lookup).map_err(|e| match e {
                    NodeError::Store(s) => s,
                    NodeError::Merkle(m) => StoreError::Corrupt { key: "device_nodes".into(), msg: m.to_string() },
                })?;
                Ok((nodes, root))
            })??;
        let cp = Checkpoint { origin: self.device_origin(), size, root };
        let note = lucid_core::note::sign_checkpoint(&cp, &self.signer).map_err(internal)?;
        Ok(Prepared { index, event, nodes, note })
    }

    /// A `SessionCreated` event for a new row, written with it.
    pub(crate) fn store_new_session(&self, row: &SessionRow) -> Result<()> {
        self.device_append(
            |_| Ok((EventKind::SessionCreated { session_id: row.id.clone(), kind: kind_of(row.kind) }, ())),
            |p, ()| Ok(self.store.create_session(&row.id, row, &p.append())?),
        )
    }

    /// Deletes a session's store rows with its `SessionDeleted` event.
    pub(crate) fn store_delete_session(&self, sid: &str, by: DeletedBy, reason: &str) -> Result<u64> {
        self.device_append(
            |_| {
                let kind = EventKind::SessionDeleted { session_id: sid.to_owned(), by, reason: reason.to_owned() };
                Ok((kind, ()))
            },
            |p, ()| Ok(self.store.delete_session(sid, Some(&p.append()))?),
        )
    }

    /// Records the firmware this device runs as committed (a `FirmwareCommitted` event),
    /// once per version and build: called at every start on a committed slot and right
    /// after a trial's commit, so an event lost to a crash between the commit and its
    /// append is written at the next start. Returns whether an event was appended.
    pub fn note_committed_firmware(&self, version: &str, build: u64) -> Result<bool> {
        let seen = (version.to_owned(), build);
        if self.store.get_setting::<(String, u64)>(FIRMWARE_EVENT)?.as_ref() == Some(&seen) {
            return Ok(false);
        }
        let kind = EventKind::FirmwareCommitted { version: version.to_owned(), build: build.to_string() };
        self.device_append(
            |_| Ok((kind, ())),
            |p, ()| Ok(self.store.put_setting_with_event(FIRMWARE_EVENT, &seen, &p.append())?),
        )?;
        tracing::info!(version, build, "device log: firmware committed");
        Ok(true)
    }

    /// Records that the clock was checked against a time server: the first answer of a
    /// run, and every step (`stepped_us`, 0 when none was applied). Evidence sealed after
    /// this event carries times the device had reason to trust.
    pub fn note_clock_synchronised(&self, stepped_us: i64) -> Result<()> {
        let kind = EventKind::ClockSynchronised { offset_us: stepped_us };
        self.device_append(|_| Ok((kind, ())), |p, ()| Ok(self.store.append_device(&p.append())?))
    }

    /// A store older than the device log: records every existing session as created (in
    /// creation order) and the head of each signed manifest, once, so the log lists every
    /// session the device holds. The sessions' true creation and earlier deletions before
    /// the upgrade are not known and are not invented.
    pub(crate) fn backfill_device_log(&self, rows: &[SessionRow]) -> Result<()> {
        if rows.is_empty() || self.store.device_log_len()? > 0 {
            return Ok(());
        }
        let mut rows: Vec<&SessionRow> = rows.iter().collect();
        rows.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        for row in rows {
            let created = EventKind::SessionCreated { session_id: row.id.clone(), kind: kind_of(row.kind) };
            self.device_append(|_| Ok((created, ())), |p, ()| Ok(self.store.append_device(&p.append())?))?;
            if let Some((man, _)) = self.store.get_manifest(&row.id)? {
                let v: serde_json::Value = serde_json::from_slice(&man).map_err(internal)?;
                let tree_size = v.get("tree_size").and_then(serde_json::Value::as_u64).unwrap_or(0);
                let root = v
                    .get("root")
                    .and_then(serde_json::Value::as_str)
                    .and_then(decode_hex32)
                    .ok_or_else(|| internal("stored manifest without a root"))?;
                let head = EventKind::SessionHead {
                    session_id: row.id.clone(),
                    generation: row.generation.max(1),
                    tree_size,
                    root,
                    manifest_digest: sha256(&man),
                };
                self.device_append(|_| Ok((head, ())), |p, ()| Ok(self.store.append_device(&p.append())?))?;
                if row.generation == 0 {
                    self.update_row(&row.id, |r| {
                        r.generation = 1;
                        Ok(())
                    })?;
                }
            }
        }
        tracing::info!(events = self.store.device_log_len()?, "device log backfilled from the existing sessions");
        Ok(())
    }

    /// The latest device checkpoint (size, note).
    pub fn device_checkpoint(&self) -> Result<Option<(u64, String)>> {
        Ok(self.store.last_device_checkpoint()?)
    }

    /// Events `[start, end)` (end capped at the log's size and at `MAX_ENTRIES_PAGE`).
    pub fn device_entries(&self, start: u64, end: Option<u64>) -> Result<Vec<(u64, Vec<u8>)>> {
        let len = self.store.device_log_len()?;
        let end = end.unwrap_or(len).min(len).min(start.saturating_add(MAX_ENTRIES_PAGE));
        if start > len {
            return Err(EngineError::BadInput(format!("start {start} is beyond the {len} events")));
        }
        Ok(self.store.device_events(start, end)?)
    }

    /// Runs a proof over the stored device-log subtree hashes.
    fn with_device_nodes<T>(
        &self,
        f: impl FnOnce(u64, &mut dyn FnMut(u32, u64) -> Result<Hash, NodeError>) -> Result<T, NodeError>,
    ) -> Result<T> {
        let r =
            self.store.with_device_nodes(|len, lookup| f(len, &mut |l, i| lookup(l, i).map_err(NodeError::Store)))?;
        r.map_err(|e| match e {
            NodeError::Store(s) => s.into(),
            NodeError::Merkle(m) => EngineError::BadInput(m.to_string()),
        })
    }

    /// Inclusion proof of event `index` in the device log of size `size` (default: the
    /// whole log, whose checkpoint is always stored): (size, leaf, path, root).
    pub fn device_inclusion(&self, index: u64, size: Option<u64>) -> Result<(u64, Hash, Vec<Hash>, Hash)> {
        self.with_device_nodes(|available, node| {
            let size = size.unwrap_or(available);
            if size == 0 || size > available || index >= size {
                return Err(NodeError::Merkle(merkle::MerkleError::IndexOutOfRange { index, size }));
            }
            let mut node = |l, i| node(l, i);
            let proof = merkle::inclusion_proof_with(available, index, size, &mut node)?;
            let root = merkle::root_with(available, size, &mut node)?;
            Ok((size, node(0, index)?, proof, root))
        })
    }

    /// Consistency proof of the device log from size `m` to size `n`.
    pub fn device_consistency(&self, m: u64, n: u64) -> Result<(Hash, Hash, Vec<Hash>)> {
        self.with_device_nodes(|available, node| {
            if m == 0 || m > n || n > available {
                return Err(NodeError::Merkle(merkle::MerkleError::SizeOutOfRange { size: n, available }));
            }
            let mut node = |l, i| node(l, i);
            let proof = merkle::consistency_proof_with(available, m, n, &mut node)?;
            Ok((merkle::root_with(available, m, &mut node)?, merkle::root_with(available, n, &mut node)?, proof))
        })
    }

    /// Writes the device-evidence tar: every event, then every checkpoint up to the log's
    /// size at the start (read in bounded batches; appends meanwhile are left out).
    pub fn write_device_evidence<W: std::io::Write>(&self, out: W) -> Result<()> {
        const BATCH: u64 = 1024;
        let (size, _) = self.store.last_device_checkpoint()?.unwrap_or((0, String::new()));
        let mut w = devlog::DeviceEvidenceWriter::new(out, &self.signer.vkey()).map_err(internal)?;
        let mut next = 0;
        while next < size {
            let batch = self.store.device_events(next, (next + BATCH).min(size))?;
            if batch.is_empty() {
                return Err(internal("device log shorter than its checkpoint"));
            }
            for (_, e) in &batch {
                w.event(e).map_err(internal)?;
            }
            next += batch.len() as u64;
        }
        let mut from = 1;
        while from <= size {
            let to = (from + BATCH - 1).min(size);
            for (_, note) in self.store.device_checkpoints(from, to)? {
                w.checkpoint(&note).map_err(internal)?;
            }
            from = to + 1;
        }
        w.finish().map_err(internal)?;
        Ok(())
    }
}

pub(crate) fn sha256(b: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, b).as_ref());
    h
}

fn decode_hex32(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
