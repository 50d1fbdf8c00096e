//! Slow and stalled clients against the real binary (its own process, so its stream cap and
//! open-files limit are its own): 1,500 connections that send half a request head, and
//! downloads whose readers stop reading. `/health` must answer within 1 s throughout, the
//! held connections must be closed by the timeouts, and the daemon must serve normally
//! afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use crate::harness::{Client, TOKEN};

const HEADER_TIMEOUT_S: u64 = 2;
const WRITE_TIMEOUT_S: u64 = 3;
const MAX_STREAMS: usize = 4;

struct Proc {
    child: Child,
    /// The gateway's port, then the storage and processor services'.
    port: u16,
    storage: u16,
    processor: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path) -> Proc {
    let ls: Vec<std::net::TcpListener> = (0..5).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let p: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(ls);
    let cfg = dir.join("lucidd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nheader_timeout_secs = {HEADER_TIMEOUT_S}\nwrite_timeout_secs = {WRITE_TIMEOUT_S}\n\
             max_streams = {MAX_STREAMS}\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lucidd"))
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .args(["--source", "test", "--bind", "127.0.0.1", "--min-free-bytes", "1048576"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--pipeline-port", &p[0].to_string(), "--recorder-port", &p[1].to_string()])
        .args(["--processor-port", &p[2].to_string(), "--storage-port", &p[3].to_string()])
        .args(["--gateway-port", &p[4].to_string()])
        .env("LUCID_API_TOKEN", TOKEN)
        .env_remove("JWT_SECRET_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc { child, port: p[4], storage: p[3], processor: p[2] };
    let t = Instant::now();
    while health_ms(proc.port).is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "lucidd did not become healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    proc
}

/// One `/health` on a new connection: its latency, or None if it failed.
fn health_ms(port: u16) -> Option<u128> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    out.starts_with(b"HTTP/1.1 200").then(|| t.elapsed().as_millis())
}

/// Whether the server has closed `s` (EOF or reset), without blocking.
fn closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // a 408 or similar before the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// A storage-service upload body (the Lucid contract's shape).
fn upload(chunk_id: &str, index: u64, data: &[u8]) -> serde_json::Value {
    json!({
        "chunk_data": base64::engine::general_purpose::STANDARD.encode(data),
        "chunk_metadata": {
            "chunk_id": chunk_id,
            "chunk_index": index,
            "timestamp": "2026-01-01T00:00:00Z",
            "hash_sha256": lucidd::util::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref()),
        },
    })
}

fn raise_own_nofile() {
    // SAFETY: plain rlimit syscalls on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

#[test]
fn half_headers_cannot_hold_the_daemon_and_are_closed_by_the_timeout() {
    raise_own_nofile();
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(dir.path());
    let t = Instant::now();
    let mut held: Vec<TcpStream> = (0..1500)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", p.port)).ok()?;
            s.write_all(b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Slow: ").ok()?;
            Some(s)
        })
        .collect();
    let opened = t.elapsed();
    assert!(held.len() >= 1400, "only {} connections could be opened", held.len());
    let mut worst = 0;
    for _ in 0..5 {
        let ms = health_ms(p.port).expect("/health failed while half-headers were held");
        worst = worst.max(ms);
    }
    println!("{} half-header connections opened in {opened:?}; worst /health {worst} ms", held.len());
    assert!(worst < 1000, "/health took {worst} ms under the flood");
    std::thread::sleep(Duration::from_secs(HEADER_TIMEOUT_S + 2));
    let open = held.iter_mut().map(closed).filter(|c| !c).count();
    assert_eq!(open, 0, "{open} half-header connections still open after the header timeout");
    // And an idle keep-alive connection is closed by the same timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_secs(HEADER_TIMEOUT_S + 2));
    assert!(closed(&mut idle), "an idle keep-alive connection outlived the timeout");
}

#[test]
fn stalled_downloads_are_capped_dropped_and_never_starve_health_or_commits() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(dir.path());
    let base = format!("http://127.0.0.1:{}", p.port);
    let c = Client { http: reqwest::blocking::Client::new(), token: Some(TOKEN.into()) };
    // A data session of 3 x 8 MiB incompressible chunks: its evidence (24 MiB) is larger
    // than the loopback socket buffers, so a reader that stops reading stalls the server.
    let sid = "sess-stalled";
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..3 {
        let data: Vec<u8> = (0..8 << 20)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let r = c.post_json(
            &format!("http://127.0.0.1:{}/sessions/{sid}/chunks", p.storage),
            &upload(&format!("c{i}"), i, &data),
        );
        assert!(r.status < 300, "upload {i}: {} {}", r.status, r.text());
    }
    let r = c.post(&format!("http://127.0.0.1:{}/api/v1/sessions/{sid}/finalize", p.processor));
    assert!(r.status < 300, "finalize: {} {}", r.status, r.text());
    let full = c.get(&format!("{base}/api/v1/sessions/{sid}/evidence"));
    assert_eq!(full.status, 200);
    let full_len = full.body.len();
    assert!(full_len > 24 << 20);

    // Twelve readers that ask and then never read.
    let req = format!("GET /api/v1/sessions/{sid}/evidence HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut stalled: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        let ms = health_ms(p.port).expect("/health failed beside stalled downloads");
        assert!(ms < 1000, "/health took {ms} ms beside stalled downloads");
    }
    // The blocking pool still commits chunks.
    let t = Instant::now();
    let r = c.post_json(&format!("http://127.0.0.1:{}/sessions/sess-beside/chunks", p.storage), &upload("x", 0, b"hi"));
    assert!(
        r.status < 300 && t.elapsed() < Duration::from_secs(2),
        "commit beside stalls: {} {:?}",
        r.status,
        t.elapsed()
    );

    // After the write timeout every stalled reader finds its download cut short: the
    // daemon dropped it. The ones over the cap were refused at once with 503.
    std::thread::sleep(Duration::from_secs(WRITE_TIMEOUT_S + 2));
    let (mut cut, mut refused) = (0, 0);
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        if got.starts_with(b"HTTP/1.1 503") {
            refused += 1;
        } else {
            assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got[..got.len().min(200)]));
            assert!(got.len() < full_len, "a stalled reader still got the whole {full_len} bytes");
            cut += 1;
        }
    }
    println!("stalled downloads: {cut} cut by the write timeout, {refused} refused over the cap of {MAX_STREAMS}");
    assert_eq!(cut, MAX_STREAMS);
    assert_eq!(refused, 12 - MAX_STREAMS);
    // Their slots are free again.
    let again = c.get(&format!("{base}/api/v1/sessions/{sid}/evidence"));
    assert_eq!((again.status, again.body.len()), (200, full_len));
}
