//! Many clients at once against one daemon, over real HTTP: random creates, starts,
//! pauses, resumes, stops, renames, deletes, uploads, multi-part uploads, storage
//! DELETEs and processor requests the client abandons, for a bounded time from a printed
//! seed (`LUCID_HAMMER_SEED`, `LUCID_HAMMER_SECS` to replay or lengthen). Then the
//! invariants the engine promises are checked against what the clients saw (the
//! reference model) and against the store itself:
//!
//! - a session is stopped (one final manifest) at most once per start;
//! - between two successful creates of one id there is a successful delete;
//! - the status never disagrees with the camera (a rename racing a start must not write
//!   back the status it read before the start);
//! - every row's counters match the records that exist (a delete racing an upload must
//!   not leave a row whose records are gone), and every multi-part chunk is whole;
//! - the processor's queue gauges return to zero after clients walked away;
//! - every session's evidence verifies.
//!
//! It checks outcomes, not timings, so a slow machine only makes it hammer less.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use lucidd::engine::{MAX_PART, Status};
use serde_json::{Value, json};

use crate::harness::{Client, Daemon, TOKEN};

const THREADS: usize = 6;
const MAX_REQUESTS: usize = 3000;
const CAMERA_IDS: [&str; 3] = ["hcam-0", "hcam-1", "hcam-2"];
const DATA_IDS: [&str; 3] = ["hdat-0", "hdat-1", "hdat-2"];

/// xorshift64*, seeded per thread from the run's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, ids: &[&'a str]) -> &'a str {
        ids[self.below(ids.len())]
    }
}

/// What one client saw: the operation, the session and the status code.
#[derive(Debug, Clone)]
struct Seen {
    op: &'static str,
    sid: String,
    status: u16,
    body: String,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn upload_body(chunk_id: &str, data: &[u8]) -> Value {
    json!({"chunk_data": B64.encode(data), "chunk_metadata": {"chunk_id": chunk_id}})
}

/// One random request; returns what the client saw, or `None` for a request it
/// abandoned on purpose.
fn one_request(d: &Daemon, c: &Client, rng: &mut Rng, thread: usize, n: usize) -> Option<Seen> {
    let gw = |p: String| d.url("gateway", &p);
    let all: Vec<&str> = CAMERA_IDS.iter().chain(DATA_IDS.iter()).copied().collect();
    let roll = rng.below(100);
    let (op, sid, r) = match roll {
        0..=9 => {
            let sid = rng.pick(&CAMERA_IDS);
            let r = c.post_json(
                &gw("/api/v1/sessions".into()),
                &json!({"name": format!("n{thread}-{n}"), "session_id": sid}),
            );
            ("create", sid, r)
        }
        10..=21 => {
            let sid = rng.pick(&CAMERA_IDS);
            ("start", sid, c.post(&gw(format!("/api/v1/sessions/{sid}/start"))))
        }
        22..=27 => {
            let sid = rng.pick(&CAMERA_IDS);
            ("pause", sid, c.post(&gw(format!("/api/v1/sessions/{sid}/pause"))))
        }
        28..=33 => {
            let sid = rng.pick(&CAMERA_IDS);
            ("resume", sid, c.post(&gw(format!("/api/v1/sessions/{sid}/resume"))))
        }
        34..=45 => {
            let sid = rng.pick(&CAMERA_IDS);
            ("stop", sid, c.post(&gw(format!("/api/v1/sessions/{sid}/stop"))))
        }
        46..=57 => {
            let sid = rng.pick(&all);
            let r =
                c.put_json(&gw(format!("/api/v1/sessions/{sid}")), &json!({"name": format!("renamed-{thread}-{n}")}));
            ("rename", sid, r)
        }
        58..=62 => {
            let sid = rng.pick(&all);
            ("delete", sid, c.delete(&gw(format!("/api/v1/sessions/{sid}"))))
        }
        63..=80 => {
            // Mostly data ids; sometimes a camera id (refused while it records or holds
            // video, converted while it is fresh).
            let sid = if rng.below(5) == 0 { rng.pick(&CAMERA_IDS) } else { rng.pick(&DATA_IDS) };
            let data: Vec<u8> = (0..2000 + rng.below(20_000)).map(|i| (i * 7 + n) as u8).collect();
            let url = d.url("storage", &format!("/sessions/{sid}/chunks"));
            ("upload", sid, c.post_json(&url, &upload_body(&format!("u{thread}-{n}"), &data)))
        }
        81 => {
            // Two sealed parts, committed together or not at all.
            let sid = rng.pick(&DATA_IDS);
            let len = MAX_PART + 1000;
            let seed = rng.next();
            let data: Vec<u8> = (0..len).map(|i| ((i as u64).wrapping_mul(seed | 1) >> 7) as u8).collect();
            let url = d.url("storage", &format!("/sessions/{sid}/chunks"));
            ("multipart", sid, c.post_json(&url, &upload_body(&format!("m{thread}-{n}"), &data)))
        }
        82..=88 => {
            let sid = rng.pick(&DATA_IDS);
            ("storage-delete", sid, c.delete(&d.url("storage", &format!("/sessions/{sid}/chunks"))))
        }
        _ => {
            // A processor request the client gives up on almost at once: the gauges must
            // not keep counting it.
            let sid = rng.pick(&DATA_IDS);
            let data = vec![n as u8; 64 * 1024];
            let body = json!({"session_id": sid, "chunk_id": format!("p{thread}-{n}"), "chunk_data_base64": B64.encode(&data)});
            let _ = reqwest::blocking::Client::new()
                .post(d.url("processor", "/api/v1/chunks/process"))
                .bearer_auth(TOKEN)
                .json(&body)
                .timeout(Duration::from_millis(1 + rng.below(30) as u64))
                .send();
            return None;
        }
    };
    Some(Seen { op, sid: sid.to_owned(), status: r.status, body: r.text() })
}

fn count(seen: &[Seen], sid: &str, op: &str, status: u16) -> usize {
    seen.iter().filter(|s| s.sid == sid && s.op == op && s.status == status).count()
}

/// Two creates with one id at the same instant: exactly one wins, every time.
fn create_races(d: &Daemon, rounds: usize) {
    for round in 0..rounds {
        let sid = format!("hdup-{round}");
        let barrier = Arc::new(Barrier::new(THREADS));
        let codes: Vec<u16> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (b, sid, url) = (barrier.clone(), sid.clone(), d.url("gateway", "/api/v1/sessions"));
                    let c = d.client();
                    s.spawn(move || {
                        b.wait();
                        c.post_json(&url, &json!({"name": format!("dup-{t}"), "session_id": sid})).status
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            codes.iter().filter(|c| **c == 201).count(),
            1,
            "round {round}: creates of {sid} answered {codes:?}"
        );
        assert!(codes.iter().all(|c| *c == 201 || *c == 409), "round {round}: {codes:?}");
    }
}

/// Every sealed part of every client chunk is where its metadata says, and the row's
/// counters are the records that exist.
fn check_log(d: &Daemon, sid: &str) {
    let e = &d.engine;
    let row = e.get(sid).unwrap();
    let views = e.records(sid).unwrap();
    assert_eq!(
        views.len() as u64,
        row.chunk_count,
        "{sid}: the row counts {} chunks, {} records exist",
        row.chunk_count,
        views.len()
    );
    for (i, v) in views.iter().enumerate() {
        assert_eq!(v.record.index, i as u64, "{sid}: record {i} missing");
    }
    let mut i = 0u64;
    while i < row.chunk_count {
        let meta = e.chunk_meta(sid, i).unwrap();
        let parts = meta.as_ref().and_then(|m| m["parts"].as_u64()).unwrap_or(1);
        let upload = meta.as_ref().map(|m| m["upload_id"].clone());
        assert!(
            i + parts <= row.chunk_count,
            "{sid}: chunk at {i} claims {parts} parts, the log ends at {}",
            row.chunk_count
        );
        for k in 1..parts {
            let m = e.chunk_meta(sid, i + k).unwrap();
            assert_eq!(
                m.map(|m| m["upload_id"].clone()),
                upload,
                "{sid}: part {k} of the chunk at {i} is another upload's"
            );
        }
        i += parts;
    }
    if row.chunk_count > 0 {
        // The stored subtree hashes agree with the records.
        let leaves = e.leaves(sid).unwrap();
        let (_, root, _) = e.consistency(sid, 1, row.chunk_count).unwrap();
        assert_eq!(root, lucid_core::merkle::root(&leaves), "{sid}: stored subtrees disagree with the records");
    }
}

#[test]
fn many_clients_never_break_the_session_invariants() {
    let seed = env_u64("LUCID_HAMMER_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let secs = env_u64("LUCID_HAMMER_SECS").unwrap_or(20);
    eprintln!("concurrency: seed {seed} ({secs} s, {THREADS} clients; replay with LUCID_HAMMER_SEED={seed})");
    let d = Daemon::start();
    let t0 = Instant::now();
    create_races(&d, 10);

    let seen: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let sent = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (d, seen, sent) = (&d, &seen, &sent);
            s.spawn(move || {
                let c = d.client();
                let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                let mut n = 0;
                while Instant::now() < deadline
                    && sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < MAX_REQUESTS
                {
                    if let Some(r) = one_request(d, &c, &mut rng, t, n) {
                        assert!(r.status < 500 || r.status == 503, "{} {}: {} {}", r.op, r.sid, r.status, r.body);
                        seen.lock().unwrap().push(r);
                    }
                    n += 1;
                }
            });
        }
    });
    let seen = seen.into_inner().unwrap();
    let by_op: BTreeMap<&str, usize> = seen.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.op).or_default() += 1;
        m
    });
    eprintln!("concurrency: {} answered requests in {:.1?}: {by_op:?}", seen.len(), t0.elapsed());
    let ok = |op: &str| seen.iter().filter(|s| s.op == op && s.status < 300).count();
    assert!(
        ok("start") > 0 && ok("stop") > 0 && ok("upload") > 0 && ok("rename") > 0,
        "the mix never exercised the races"
    );

    // The reference model: counts of what the clients were told.
    for sid in CAMERA_IDS {
        let (starts, stops) = (count(&seen, sid, "start", 200), count(&seen, sid, "stop", 200));
        assert!(stops <= starts, "{sid}: {stops} stops answered 200 for {starts} starts (one run sealed twice)");
    }
    for sid in CAMERA_IDS.iter().chain(DATA_IDS.iter()) {
        let creates = count(&seen, sid, "create", 201);
        let deletes = count(&seen, sid, "delete", 200)
            + seen
                .iter()
                .filter(|s| {
                    s.sid == *sid && s.op == "storage-delete" && s.status == 200 && s.body.contains("session deleted")
                })
                .count();
        assert!(creates <= deletes + 1, "{sid}: created {creates} times with only {deletes} deletes between");
    }

    // The daemon is quiet now: status and camera must agree.
    let recording = d.engine.camera_session();
    let rows = d.engine.list().unwrap();
    for r in &rows {
        let live = matches!(r.status, Status::Recording | Status::Paused | Status::Starting);
        assert_eq!(
            live,
            recording.as_deref() == Some(r.id.as_str()),
            "{}: status {} but the camera records {recording:?}",
            r.id,
            r.status.as_str()
        );
    }
    for r in &rows {
        check_log(&d, &r.id);
    }

    // The processor forgot every abandoned request.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = d.client().get(&d.url("processor", "/metrics")).json();
        let (a, q) = (m["metrics"]["active_workers"].as_u64(), m["metrics"]["queue_size"].as_u64());
        if a == Some(0) && q == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "processor gauges stuck: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Close everything and verify every session's evidence offline.
    if let Some(sid) = recording {
        d.engine.stop_recording(&sid).unwrap();
    }
    let mut verified = BTreeSet::new();
    for r in d.engine.list().unwrap() {
        if r.chunk_count == 0 {
            continue;
        }
        if d.engine.manifest(&r.id).unwrap().is_none() || r.kind == lucidd::engine::Kind::Data {
            d.engine.finalize(&r.id).unwrap();
        }
        let row = d.engine.get(&r.id).unwrap();
        let mut tar = Vec::new();
        d.engine.write_evidence(&r.id, &mut tar).unwrap();
        let report =
            lucid_core::verify_evidence(tar.as_slice()).unwrap_or_else(|e| panic!("{}: evidence fails: {e}", r.id));
        assert_eq!(report.chunk_count, row.chunk_count, "{}", r.id);
        verified.insert(r.id.clone());
    }
    eprintln!("concurrency: evidence of {} sessions verified; {:.1?} in all", verified.len(), t0.elapsed());
}
