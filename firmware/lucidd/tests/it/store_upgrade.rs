//! A data directory written before the `merkle_nodes` table existed keeps working: the
//! engine rebuilds each session's subtree hashes from its records at open, and proofs,
//! single-chunk reads and evidence then agree with the records.

use lucid_core::merkle;
use lucidd::engine::{ChunkInfo, Engine, Kind};
use lucidd::store::{ChunkWrite, PartWrite};

use crate::harness::test_config;

#[test]
fn a_store_without_subtree_hashes_is_backfilled_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let sid = "sess-old00001";
    let leaves = {
        let engine = Engine::open(test_config(dir.path())).unwrap();
        engine.create_session(Some(sid.into()), "old".into(), Kind::Data, |_| {}).unwrap();
        for i in 0..13u32 {
            engine.append(sid, &i.to_be_bytes(), &ChunkInfo::default(), None, None).unwrap();
        }
        // Rewrite the session the way an older build stored it: same records, no nodes.
        let row = engine.get(sid).unwrap();
        let records: Vec<(u64, Vec<u8>)> =
            (0..13).map(|i| (i, engine.store().get_record(sid, i).unwrap().unwrap())).collect();
        let sealed: Vec<Vec<u8>> = (0..13).map(|i| engine.store().get_sealed(sid, i).unwrap().unwrap()).collect();
        let leaves = engine.leaves(sid).unwrap();
        drop(engine);
        let engine = Engine::open(test_config(dir.path())).unwrap();
        engine.delete(sid).unwrap();
        engine.create_session(Some(sid.into()), "old".into(), Kind::Data, |_| {}).unwrap();
        let parts: Vec<PartWrite<'_>> = records
            .iter()
            .zip(&sealed)
            .map(|((i, r), s)| PartWrite { index: *i, sealed: Some(s), record: r, client_id: None, client_meta: None })
            .collect();
        let row_bytes = serde_json::to_vec(&row).unwrap();
        engine
            .store()
            .commit_chunk(&ChunkWrite { session_id: sid, parts: &parts, nodes: &[], session_row: &row_bytes })
            .unwrap();
        assert!(engine.inclusion(sid, 3, Some(13)).is_err(), "without nodes a proof cannot be read");
        leaves
    };
    let engine = Engine::open(test_config(dir.path())).unwrap();
    let (size, leaf, proof, root) = engine.inclusion(sid, 3, Some(13)).unwrap();
    assert_eq!((size, leaf), (13, leaves[3]));
    assert_eq!(root, merkle::root(&leaves));
    merkle::verify_inclusion(&leaf, 3, 13, &proof, &root).unwrap();
    let (r5, r13, cproof) = engine.consistency(sid, 5, 13).unwrap();
    merkle::verify_consistency(5, 13, &r5, &r13, &cproof).unwrap();
    assert_eq!(engine.chunk(sid, "7").unwrap().record.index, 7);
    // Appending continues the backfilled tree.
    engine.append(sid, b"after", &ChunkInfo::default(), None, None).unwrap();
    engine.finalize(sid).unwrap();
    let mut tar = Vec::new();
    engine.write_evidence(sid, &mut tar).unwrap();
    assert_eq!(lucid_core::verify_evidence(tar.as_slice()).unwrap().chunk_count, 14);
    let (_, root14, _) = engine.consistency(sid, 13, 14).unwrap();
    assert_eq!(root14, merkle::root(&engine.leaves(sid).unwrap()));
}
