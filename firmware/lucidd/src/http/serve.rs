//! Listeners and connections: no client can hold the daemon by being slow.
//!
//! Owns the accept loop of every port and what each connection may cost:
//! - a header read timeout, which is also the keep-alive idle timeout (hyper starts it
//!   whenever it waits for a request head, the first or the next);
//! - a request-body inactivity timeout (a body that stops arriving ends the request);
//! - a write timeout (a reader that stops reading is dropped, so a stalled download frees
//!   its producer);
//! - a cap on connections per port and in all, and on connections that hold no request in
//!   flight: when either is reached the oldest *idle* connection (half a header, or an idle
//!   keep-alive) is closed to make room, so a flood of slow clients cannot lock out
//!   `/health` or the trial-boot self-check. Busy connections are never evicted.
//!
//! It must not know routes or credentials (`auth` does); it serves whatever router it is
//! given, and the integration tests serve through it too.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

pub use crate::config::HttpConfig;

/// How many connections all five ports hold together, shared by their accept loops.
#[derive(Debug, Default)]
pub struct Totals {
    open: AtomicUsize,
}

impl Totals {
    pub fn new() -> Arc<Totals> {
        Arc::new(Totals::default())
    }
}

/// One connection's state, as the accept loop sees it.
#[derive(Debug)]
struct Conn {
    /// Requests whose response has not been fully sent.
    in_flight: AtomicUsize,
    /// When the connection last became idle (ms since the port's start).
    idle_since: AtomicU64,
    /// Told to close by the accept loop (eviction) or by shutdown.
    close: Notify,
}

/// The live connections of one port.
struct Port {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    started: Instant,
    next_id: AtomicU64,
}

impl Port {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Closes the connection that has been idle longest, if any is idle. It leaves the
    /// books at once (its task ends a moment later), so the caps count exactly and the same
    /// connection is never picked twice.
    fn evict_oldest_idle(conns: &mut HashMap<u64, Arc<Conn>>, totals: &Totals) -> bool {
        let oldest = conns
            .iter()
            .filter(|(_, c)| c.in_flight.load(SeqCst) == 0)
            .min_by_key(|(_, c)| c.idle_since.load(SeqCst))
            .map(|(id, _)| *id);
        let Some(c) = oldest.and_then(|id| conns.remove(&id)) else { return false };
        totals.open.fetch_sub(1, SeqCst);
        c.close.notify_one();
        true
    }

    /// Admits a new connection, making room by evicting idle ones; `None` refuses it.
    fn admit(&self, cfg: &HttpConfig, totals: &Totals) -> Option<(u64, Arc<Conn>)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let idle = conns.values().filter(|c| c.in_flight.load(SeqCst) == 0).count();
        let full = conns.len() >= cfg.max_connections_per_port || totals.open.load(SeqCst) >= cfg.max_connections;
        if full || idle >= cfg.max_idle_per_port {
            let evicted = Port::evict_oldest_idle(&mut conns, totals);
            if full && !evicted {
                // Every connection is busy with a request: refusing is all that is left.
                return None;
            }
        }
        let id = self.next_id.fetch_add(1, SeqCst);
        let c = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
        });
        conns.insert(id, c.clone());
        totals.open.fetch_add(1, SeqCst);
        Some((id, c))
    }

    fn remove(&self, id: u64, totals: &Totals) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.remove(&id).is_some() {
            totals.open.fetch_sub(1, SeqCst);
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then lets in-flight requests
/// finish (at most `drain` long) and returns.
pub async fn serve_listener(
    listener: TcpListener,
    router: Router,
    cfg: HttpConfig,
    totals: Arc<Totals>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let port =
        Arc::new(Port { conns: Mutex::new(HashMap::new()), started: Instant::now(), next_id: AtomicU64::new(0) });
    let cfg = Arc::new(cfg);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
            // Reap finished connection tasks as we go, so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection reset before accept:
                // wait a little instead of spinning; held connections time out meanwhile.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((id, conn)) = port.admit(&cfg, &totals) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, cfg, port, totals, shutdown) =
            (router.clone(), cfg.clone(), port.clone(), totals.clone(), shutdown.clone());
        tasks.spawn(async move {
            serve_connection(stream, router, &cfg, conn, port.clone(), shutdown).await;
            port.remove(id, &totals);
        });
    }
    // Graceful: connections were told (by the watch) to finish their current request.
    let drain = tokio::time::sleep(Duration::from_secs(cfg.shutdown_drain_secs));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = &mut drain => { tasks.abort_all(); break }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    cfg: &HttpConfig,
    conn: Arc<Conn>,
    port: Arc<Port>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let body_idle = Duration::from_secs(cfg.body_idle_secs);
    let svc_conn = conn.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = InFlight::begin(svc_conn.clone(), port.clone());
        let req = req.map(|b| Body::new(IdleBody::new(b, body_idle)));
        let router = router.clone();
        async move {
            let resp = router.oneshot(req).await.unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(resp.map(|b| Body::new(Tracked { inner: b, _guard: guard })))
        }
    });
    let io = TokioIo::new(WriteTimeout::new(stream, Duration::from_secs(cfg.write_timeout_secs)));
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(cfg.header_timeout_secs))
        .max_buf_size(64 * 1024)
        .serve_connection(io, svc);
    tokio::pin!(http);
    tokio::select! {
        r = http.as_mut() => { if let Err(e) = r { tracing::debug!(error = %e, "connection ended") } return }
        // An evicted connection is idle by definition: nothing is lost by dropping it.
        () = conn.close.notified() => return,
        _ = shutdown.wait_for(|s| *s) => http.as_mut().graceful_shutdown(),
    }
    let _ = http.await;
}

/// Counts a request as in flight from its head until its response body is dropped.
struct InFlight {
    conn: Arc<Conn>,
    port: Arc<Port>,
}

impl InFlight {
    fn begin(conn: Arc<Conn>, port: Arc<Port>) -> InFlight {
        conn.in_flight.fetch_add(1, SeqCst);
        InFlight { conn, port }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.idle_since.store(self.port.now_ms(), SeqCst);
        self.conn.in_flight.fetch_sub(1, SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails when the client stops sending for `idle`.
struct IdleBody {
    inner: Incoming,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration) -> IdleBody {
        IdleBody { inner, idle, timer: None }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.timer = None;
                Poll::Ready(r.map(|f| f.map_err(axum::Error::new)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(axum::Error::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("request body: nothing received for {} s", idle.as_secs()),
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A socket whose writes fail when the peer has not taken any bytes for `limit`: the
/// connection then ends, and whatever produced the response sees its receiver gone.
struct WriteTimeout {
    inner: TcpStream,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteTimeout {
    fn new(inner: TcpStream, limit: Duration) -> WriteTimeout {
        WriteTimeout { inner, limit, timer: None }
    }

    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.poll_stalled(cx).map(Err),
            done => {
                self.timer = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.poll_stalled(cx).map(Err),
            done => {
                self.timer = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft limit of open files to the hard limit, so the connection caps (not the
/// kernel's default of 1024) decide when clients are refused, and the camera, the store and
/// an update always find a descriptor. Returns the limit in force.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur as u64;
            }
        }
        r.rlim_cur as u64
    }
}
