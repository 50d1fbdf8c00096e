//! Test harness: an engine on a temp data dir with its five routers served on ephemeral
//! loopback ports, and a small blocking HTTP client that carries the bearer token.

use std::net::SocketAddr;
use std::sync::Arc;

use lucidd::config::Config;
use lucidd::engine::Engine;
use serde_json::Value;

pub const TOKEN: &str = "test-token-0123456789";

pub struct Daemon {
    pub engine: Arc<Engine>,
    pub dir: tempfile::TempDir,
    pub addrs: std::collections::HashMap<&'static str, SocketAddr>,
    rt: tokio::runtime::Runtime,
    shutdown: tokio::sync::watch::Sender<bool>,
}

/// Small, fast video so the suite records in real time on a loaded 2-core machine.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        data_dir: dir.to_owned(),
        bind: [127, 0, 0, 1].into(),
        api_token: Some(TOKEN.into()),
        min_free_bytes: 1 << 20,
        ..Config::default()
    };
    c.video.width = 320;
    c.video.height = 240;
    c.video.fps = 15;
    c.video.bitrate_bps = 300_000;
    c.record.checkpoint_every_chunks = 3;
    // Tests run many daemons at once on the host's network: none advertises itself
    // (tests/it/discovery.rs does, inside a network namespace of its own).
    c.network.mdns = false;
    c
}

impl Daemon {
    pub fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config(dir.path());
        Daemon::start_with(dir, cfg)
    }

    pub fn start_with(dir: tempfile::TempDir, cfg: Config) -> Daemon {
        let engine = Engine::open(cfg).expect("engine opens");
        Daemon::serve(dir, engine)
    }

    /// Serves the five routers of an engine the test opened itself (e.g. over a faulty
    /// store backend).
    pub fn serve(dir: tempfile::TempDir, engine: Arc<Engine>) -> Daemon {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut addrs = std::collections::HashMap::new();
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Through the daemon's own accept loop: the tests see its timeouts and caps too.
        let totals = lucidd::http::serve::Totals::new();
        for (name, _, router) in lucidd::http::routers(&engine) {
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
            addrs.insert(name, listener.local_addr().unwrap());
            let fut = lucidd::http::serve::serve_listener(
                listener,
                router,
                engine.cfg.http.clone(),
                totals.clone(),
                rx.clone(),
            );
            rt.spawn(fut);
        }
        Daemon { engine, dir, addrs, rt, shutdown: tx }
    }

    pub fn url(&self, service: &str, path: &str) -> String {
        format!("http://{}{}", self.addrs[service], path)
    }

    pub fn client(&self) -> Client {
        Client { http: reqwest::blocking::Client::new(), token: Some(TOKEN.into()) }
    }

    pub fn anon(&self) -> Client {
        Client { http: reqwest::blocking::Client::new(), token: None }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.engine.shutdown();
        let _ = &self.rt;
    }
}

pub struct Client {
    pub http: reqwest::blocking::Client,
    pub token: Option<String>,
}

pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("status {} body is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    fn send(&self, rb: reqwest::blocking::RequestBuilder) -> Resp {
        let rb = match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let r = rb.timeout(std::time::Duration::from_secs(60)).send().expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().expect("body").to_vec();
        Resp { status, body, headers }
    }
    pub fn get(&self, url: &str) -> Resp {
        self.send(self.http.get(url))
    }
    pub fn delete(&self, url: &str) -> Resp {
        self.send(self.http.delete(url))
    }
    pub fn post_json(&self, url: &str, body: &Value) -> Resp {
        self.send(self.http.post(url).json(body))
    }
    pub fn put_json(&self, url: &str, body: &Value) -> Resp {
        self.send(self.http.put(url).json(body))
    }
    pub fn post_raw(&self, url: &str, body: Vec<u8>, content_type: &str) -> Resp {
        self.send(self.http.post(url).header("content-type", content_type).body(body))
    }
    pub fn post(&self, url: &str) -> Resp {
        self.send(self.http.post(url))
    }
}

/// Where `scripts/setup` installs the Python tools' venv (the same rule as there):
/// `LUCID_PY_VENV`, else `$XDG_CACHE_HOME/lucid/venv`, else `~/.cache/lucid/venv`.
pub fn py_venv() -> std::path::PathBuf {
    use std::path::PathBuf;
    std::env::var_os("LUCID_PY_VENV").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
        cache.join("lucid/venv")
    })
}

/// Runs the lucidd binary with `args`; (exit code, stdout, stderr).
pub fn lucidd(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lucidd"));
    for a in args {
        cmd.arg(a);
    }
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}
