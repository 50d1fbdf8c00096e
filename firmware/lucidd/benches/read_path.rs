//! Benchmark of the read path over real HTTP on loopback, beside its floors measured in
//! the same run:
//!
//! - **export**: one client downloading `export.mp4` of a 100 MB camera session (500 KB
//!   incompressible fragments), against the single-core AEAD open throughput of the same
//!   sealed chunks (the floor: every byte must be opened once);
//! - **live segment**: 16 connections fetching one 51 KB HLS segment (what every viewer
//!   of a live stream does within the same second), served by the gateway and, from a
//!   file holding the same bytes, by nginx; both driven by `wrk`.
//!
//! Run with `./scripts/bench` (or `cargo bench -p lucidd --bench read_path`). Not a test:
//! it asserts nothing about speed; it fails only if a request fails. `wrk` and `nginx`
//! come from `scripts/setup`; without them that part is skipped and says so.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use lucid_core::chunk::{ChunkHeader, Flags};
use lucid_core::seal::{self, Cipher, DataKey};
use lucidd::engine::{ChunkInfo, Engine, Kind};

const TOKEN: &str = "bench-token";

/// Incompressible bytes (xorshift), so zstd is skipped as on real H.264.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn info(i: u64) -> ChunkInfo {
    ChunkInfo {
        media: true,
        gap_before: false,
        media_start_us: i * 1_000_000,
        media_end_us: (i + 1) * 1_000_000,
        wall_us: 1_700_000_000_000_000 + i as i64 * 1_000_000,
        frames: 30,
        quality: None,
    }
}

/// A camera session of `n` fragments of `size` bytes behind a small init segment.
fn camera_session(engine: &Engine, name: &str, n: u64, size: usize) -> String {
    let row = engine.create_session(None, name.into(), Kind::Camera, |_| {}).unwrap();
    engine.store().put_init(&row.id, &noise(700, 9)).unwrap();
    for i in 0..n {
        engine.append(&row.id, &noise(size, i + 1), &info(i), None, None).unwrap();
    }
    row.id
}

/// GET `path` with the token, reading the whole body; returns its length. HTTP/1.0, so
/// the body is delimited by the close and carries no chunked framing to count.
fn get(addr: std::net::SocketAddr, path: &str) -> usize {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut head) = (0usize, Vec::new());
    let mut body_start = None;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if body_start.is_none() {
            head.extend_from_slice(&buf[..n]);
            if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(
                    head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"),
                    "{}",
                    String::from_utf8_lossy(&head[..p])
                );
                body_start = Some(p + 4);
                total = head.len() - (p + 4);
            }
        } else {
            total += n;
        }
    }
    total
}

fn aead_open_floor(cipher: Cipher, size: usize, count: usize) -> f64 {
    let key = DataKey::generate(&ring::rand::SystemRandom::new()).unwrap();
    let sealed: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let data = noise(size, i as u64 + 7);
            let header = ChunkHeader {
                cipher,
                flags: Flags::MEDIA,
                epoch: 1,
                index: i as u64,
                plain_len: size as u32,
                cipher_len: size as u32 + 16,
                session_id: "sess-bench000".into(),
            };
            seal::seal_chunk(&key, cipher, &header, &data).unwrap()
        })
        .collect();
    let t = Instant::now();
    for s in &sealed {
        std::hint::black_box(seal::open_chunk(&key, s).unwrap());
    }
    (size * count) as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `wrk` for `secs` seconds with 16 connections; requests per second.
fn wrk(url: &str, secs: u32, auth: bool) -> Option<f64> {
    let mut c = Command::new("wrk");
    c.args(["-t2", "-c16", &format!("-d{secs}s")]);
    if auth {
        c.args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
    }
    let out = c.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        panic!("wrk saw errors:\n{text}");
    }
    text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())
}

/// nginx serving `dir` on a free loopback port, stopped on drop.
struct Nginx(std::process::Child, u16);

impl Nginx {
    fn start(dir: &std::path::Path) -> Option<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes auto; pid {d}/nginx.pid; error_log stderr error;\n\
                 {user}events {{ worker_connections 1024; }}\n\
                 http {{ access_log off; sendfile on; keepalive_requests 100000;\n\
                   client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
                   uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
                   server {{ listen 127.0.0.1:{port}; root {d}/www; }} }}\n",
                d = dir.display(),
                // Workers of a root master drop to `nobody`, who cannot read a 0700 tempdir.
                user = if is_root() { "user root;\n" } else { "" },
            ),
        )
        .ok()?;
        let child = Command::new("nginx").arg("-c").arg(&conf).arg("-p").arg(dir).spawn().ok()?;
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Nginx(child, port));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers, which would otherwise
        // outlive it holding this process's stdout open.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    // Without a libc binding here: the owner of /proc/self is this process's uid.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lucidd::Config { data_dir: dir.path().join("data"), api_token: Some(TOKEN.into()), ..Default::default() };
    let engine: Arc<Engine> = Engine::open(cfg).unwrap();

    println!("setup: writing a 100 MB camera session (200 x 500 KB) and a live one (51 KB segments)");
    let big = camera_session(&engine, "export-100MB", 200, 500_000);
    let live = camera_session(&engine, "live", 4, 51_000);
    let cipher = Cipher::from_name(&engine.get(&big).unwrap().cipher).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let router = lucidd::http::routers(&engine).into_iter().find(|(n, _, _)| *n == "gateway").unwrap().2;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(lucidd::http::serve::serve_listener(
        listener,
        router,
        engine.cfg.http.clone(),
        lucidd::http::serve::Totals::new(),
        rx,
    ));

    // ---- export, one client, beside the AEAD open floor ------------------------------
    // Interleaved, floor then export, five times: both see the same neighbours (the floor
    // needs one core, export three threads: reader, socket writer, client), and the
    // medians are compared.
    let (mut floors, mut rates) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        floors.push(aead_open_floor(cipher, 500_000, 200));
        let t = Instant::now();
        let n = get(addr, &format!("/api/v1/sessions/{big}/export.mp4"));
        assert_eq!(n, 700 + 200 * 500_000);
        rates.push(n as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    let (floor, rate) = (median(&mut floors), median(&mut rates));
    println!("\n== export.mp4, 100 MB, one client on loopback ({}), 5 rounds interleaved", cipher.name());
    println!("floor  AEAD open, one core, same chunk size (median): {floor:>8.1} MB/s");
    println!(
        "lucidd export.mp4 (median):                         {rate:>8.1} MB/s  ({:.0} % of the floor)",
        100.0 * rate / floor
    );

    // ---- one live segment, 16 connections: lucidd beside nginx on the same bytes -----
    let seg = format!("/api/v1/sessions/{live}/media/3.m4s");
    let bytes = get(addr, &seg);
    println!("\n== one live HLS segment ({bytes} bytes), wrk -t2 -c16 -d5s on loopback");
    let www = dir.path().join("nginx");
    std::fs::create_dir_all(www.join("www")).unwrap();
    std::fs::create_dir_all(www.join("tmp")).unwrap();
    std::fs::write(www.join("www/3.m4s"), engine.segment(&live, 3).unwrap()).unwrap();
    match (wrk(&format!("http://{addr}{seg}"), 5, true), Nginx::start(&www)) {
        (Some(ours), Some(ng)) => {
            let theirs = wrk(&format!("http://127.0.0.1:{}/3.m4s", ng.1), 5, false).unwrap_or(f64::NAN);
            println!("nginx  same bytes from a file:  {theirs:>10.0} req/s");
            println!("lucidd gateway, bearer token:   {ours:>10.0} req/s  ({:.2}x nginx)", ours / theirs);
        }
        (ours, _) => println!(
            "skipped: {} (./scripts/setup installs wrk and nginx-light); lucidd alone: {ours:?} req/s",
            if ours.is_none() { "wrk is missing" } else { "nginx did not start" }
        ),
    }
}
