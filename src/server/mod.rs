//! Accept loop, TLS, connection limits, timeouts and graceful shutdown —
//! shared by the proxy listener, the admin listener and the simulator.
//!
//! Protocol is chosen by ALPN, never by sniffing: `h2` negotiated over TLS
//! gets HTTP/2, everything else HTTP/1.1.

pub mod framing;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::admin::metrics::Metrics;
use crate::config::Limits;
use crate::pipeline::body::ProxyBody;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A request handler: the proxy pipeline, the simulator or the admin routes.
/// Returning `Err` aborts the connection without a response: every request
/// on it, HTTP/2 streams included, loses its connection (the simulator uses
/// this to inject connection resets).
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, SocketAddr) -> BoxFuture<Result<Response<ProxyBody>, AbortConnection>>
        + Send
        + Sync,
>;

/// The SAN names of the verified client certificate (mTLS) of the
/// connection a request came on; in the request's extensions.
#[derive(Debug, Clone)]
pub struct ClientCert(pub Arc<[String]>);

/// Marks requests that arrived without TLS (in the request's extensions;
/// the loopback sidecar and admin listeners). Plaintext is the marked case
/// so that a request over TLS — nearly every one — carries no extension:
/// a request's extension map is allocated on its first insert.
#[derive(Debug, Clone, Copy)]
pub struct Plaintext;

/// Returned by a handler to drop the connection without answering.
#[derive(Debug)]
pub struct AbortConnection;

impl std::fmt::Display for AbortConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection aborted by the handler")
    }
}

impl std::error::Error for AbortConnection {}

/// Shutdown signal: flips to `true` once.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub struct ShutdownTrigger(watch::Sender<bool>);

pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is triggered (or the trigger is dropped).
    pub async fn wait(&mut self) {
        while !*self.0.borrow_and_update() {
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Per-listener serving options.
#[derive(Clone)]
pub struct ServeOptions {
    /// `proxy`, `admin` or `sim`: the `listener` metric label.
    pub kind: &'static str,
    pub limits: Limits,
    pub metrics: Option<Arc<Metrics>>,
    /// Peers exempt from `limits.max_connections_per_ip` (trusted proxies
    /// carry many clients' connections).
    pub per_ip_exempt: Vec<crate::pipeline::ip_filter::Cidr>,
}

/// Open connections per address (IPv6 per /64): the accept loop counts up,
/// each connection's task counts down when it ends.
#[derive(Default)]
struct PerIp(
    std::sync::Mutex<std::collections::HashMap<crate::pipeline::rate_limit::IpKey, usize>>,
);

impl PerIp {
    fn try_add(&self, key: crate::pipeline::rate_limit::IpKey, max: usize) -> bool {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(key).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn remove(&self, key: crate::pipeline::rate_limit::IpKey) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&key);
            }
        }
    }
}

/// Serves connections until shutdown, then stops accepting, asks every
/// connection to finish gracefully and waits for them up to the grace period.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    opts: ServeOptions,
    mut shutdown: Shutdown,
) {
    let max = opts.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let per_ip = Arc::new(PerIp::default());
    let opts = Arc::new(opts);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, listener = opts.kind, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse(&opts, "max_connections");
            drop(tcp);
            continue;
        };
        // One address may not take every slot (slowloris from one host).
        let ip = peer.ip().to_canonical();
        let counted = (!opts.per_ip_exempt.iter().any(|c| c.contains(ip)))
            .then(|| crate::pipeline::rate_limit::ip_key(ip, 64));
        if let Some(key) = counted
            && !per_ip.try_add(key, opts.limits.max_connections_per_ip)
        {
            refuse(&opts, "max_connections_per_ip");
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        let opts = opts.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let per_ip = per_ip.clone();
        tokio::spawn(async move {
            let gauge = opts
                .metrics
                .as_ref()
                .map(|m| m.open_connections.with_label_values(&[opts.kind]));
            if let Some(g) = &gauge {
                g.inc();
            }
            serve_tcp(tcp, peer, tls, handler, &opts, shutdown).await;
            if let Some(g) = &gauge {
                g.dec();
            }
            if let Some(key) = counted {
                per_ip.remove(key);
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = opts.limits.shutdown_grace.0;
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            listener = opts.kind,
            "connections still open after the shutdown grace period"
        );
    }
}

fn refuse(opts: &ServeOptions, reason: &str) {
    if let Some(m) = &opts.metrics {
        m.connections_refused.with_label_values(&[reason]).inc();
    }
}

async fn serve_tcp(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    opts: &ServeOptions,
    shutdown: Shutdown,
) {
    let Some(acceptor) = tls else {
        return serve_io(tcp, false, false, None, peer, handler, opts, shutdown).await;
    };
    let hs = tokio::time::timeout(opts.limits.tls_handshake_timeout.0, acceptor.accept(tcp)).await;
    match hs {
        Ok(Ok(stream)) => {
            let conn = stream.get_ref().1;
            let h2 = conn.alpn_protocol() == Some(b"h2");
            let cert = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ClientCert(tls::client_cert_names(c).into()));
            serve_io(stream, h2, true, cert, peer, handler, opts, shutdown).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            refuse(opts, "tls_handshake");
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            refuse(opts, "tls_handshake_timeout");
        }
    }
}

/// Tracks whether a connection is idle: no request in flight and nothing
/// completed for `idle_timeout`.
struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// Notified when the handler returns [`AbortConnection`].
    abort: tokio::sync::Notify,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let now = self.born.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// One request in flight on a connection, for the idle watchdog.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_io<I>(
    io: I,
    h2: bool,
    secure: bool,
    cert: Option<ClientCert>,
    peer: SocketAddr,
    handler: Handler,
    opts: &ServeOptions,
    shutdown: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        born: Instant::now(),
        in_flight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
        abort: tokio::sync::Notify::new(),
    });
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        if let Some(c) = &cert {
            req.extensions_mut().insert(c.clone());
        }
        if !secure {
            req.extensions_mut().insert(Plaintext);
        }
        let fut = handler(req, peer);
        // Counted until the handler finishes or is dropped (client gone).
        let busy = Busy::new(act.clone());
        async move {
            let r = fut.await;
            if r.is_err() {
                // hyper would reset only this stream of an HTTP/2
                // connection; `drive` drops the whole connection.
                busy.0.abort.notify_one();
            }
            drop(busy);
            r
        }
    });
    let l = &opts.limits;
    let conn: Conn = if h2 {
        let io = TokioIo::new(io);
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(l.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(l.max_header_bytes).unwrap_or(u32::MAX))
            // CVE-2023-44487 (rapid reset): cap streams reset before we accept them,
            // and streams we had to reset because the client misbehaved.
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(100))
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(10));
        Box::pin(b.serve_connection(io, svc))
    } else {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            // hyper restarts this clock whenever it waits for a request head,
            // so it also closes idle keep-alive connections.
            .header_read_timeout(l.header_read_timeout.0)
            .max_buf_size(l.max_header_bytes.max(8192))
            .max_header_size(l.max_header_bytes)
            .max_headers(l.max_headers)
            .keep_alive(true)
            .half_close(false)
            // Flatten head and body into one buffer: over TLS, vectored
            // writes would become one TLS record per slice.
            .writev(false);
        // Ambiguous framing (both lengths, a repeated length) is made to
        // fail hyper's own checks before hyper reads it.
        let io = TokioIo::new(framing::FramingGuard::new(io, l.max_header_bytes));
        Box::pin(b.serve_connection(io, svc))
    };
    drive(
        conn,
        activity,
        l.idle_timeout.0,
        l.shutdown_grace.0,
        shutdown,
    )
    .await;
}

type Conn = Pin<
    Box<dyn GracefulConnection<Error = hyper::Error, Output = Result<(), hyper::Error>> + Send>,
>;

/// Drives one connection until it ends. Once it is asked to close — server
/// shutdown, or idle for `idle_timeout` — it gets `grace` to finish what it
/// is sending, then it is dropped (the socket closed) even if a response is
/// still stuck: a client that stops reading cannot hold a connection slot.
async fn drive(
    mut conn: Conn,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    grace: Duration,
    mut shutdown: Shutdown,
) {
    let far_future = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let hard_stop = tokio::time::sleep_until(far_future);
    tokio::pin!(hard_stop);
    let mut closing = false;
    let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let close_now = tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = activity.abort.notified() => {
                tracing::debug!("connection aborted by the handler");
                return;
            }
            _ = &mut hard_stop, if closing => {
                tracing::debug!("connection did not finish within the grace period; closing it");
                return;
            }
            _ = shutdown.wait(), if !closing => true,
            _ = tick.tick(), if !closing => {
                activity.in_flight.load(Ordering::Relaxed) == 0 && activity.idle_for() >= idle_timeout
            }
        };
        if close_now {
            closing = true;
            conn.as_mut().graceful_shutdown();
            hard_stop
                .as_mut()
                .reset(tokio::time::Instant::now() + grace);
        }
    }
}
