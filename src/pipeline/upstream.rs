//! Upstream stage: the HTTPS client to the broker and the forwarding of one
//! request with connect, response-header and total timeouts.
//!
//! With `upstream.http2` (the default) requests go over `http2_connections`
//! HTTP/2 connections ("lanes"), used in turn. Each lane holds hyper's
//! `SendRequest` for its connection, dials a new one when the old one has
//! closed (one dial at a time per lane), and gives its connection up after
//! `pool_idle_timeout` without requests. A broker that does not choose `h2`
//! in the TLS handshake is served by the HTTP/1.1 pool from then on. With
//! `http2: false`, the HTTP/1.1 pool serves everything.
//!
//! Nothing is sent twice: a request is resent (once) only when hyper hands
//! it back unsent, because its connection closed before taking it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntCounterVec;
use rustls::pki_types::ServerName;

use super::body::{DeadlineBody, ProxyBody};
use crate::config::UpstreamConfig;
use crate::reject::Reject;
use crate::server::tls;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;
type UpstreamRequest = Request<Full<Bytes>>;
type Sender = http2::SendRequest<Full<Bytes>>;
/// A response, or why not, with the request when it was never sent.
type SendResult = Result<Response<Incoming>, hyper::client::conn::TrySendError<UpstreamRequest>>;

pub struct Upstream {
    /// The HTTP/2 lanes; none with `http2: false`.
    lanes: Vec<Arc<Lane>>,
    /// HTTP/1.1 connections: with `http2: false`, or once the broker has
    /// declined HTTP/2.
    pooled: HttpsClient,
    /// Set when the broker chose HTTP/1.1 over `h2` in a TLS handshake.
    no_h2: AtomicBool,
    dialer: Dialer,
    next: AtomicUsize,
    authority: Authority,
    response_header_timeout: Duration,
    total_timeout: Duration,
}

impl Upstream {
    /// `connects` counts the lanes' dials by outcome (`h2`, `http1`,
    /// `failed`).
    pub fn new(cfg: &UpstreamConfig, connects: Option<IntCounterVec>) -> Result<Upstream, String> {
        let authority = crate::config::parse_upstream_origin(&cfg.base_url)?;
        let tls_cfg =
            tls::client_config(cfg.extra_ca_file.as_deref()).map_err(|e| e.to_string())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout.0));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_cfg.clone())
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let pooled = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout.0)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            // One TLS record per request rather than one per buffer slice.
            .http1_writev(false)
            .build(https);
        let lanes = if cfg.http2 {
            (0..cfg.http2_connections.max(1))
                .map(|_| Arc::new(Lane::default()))
                .collect()
        } else {
            Vec::new()
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
        let mut h2_tls = tls_cfg;
        h2_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let dialer = Dialer {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(h2_tls)),
            connect_timeout: cfg.connect_timeout.0,
            idle_timeout: cfg.pool_idle_timeout.0,
            keep_alive: cfg
                .keep_alive_interval
                .map(|i| (i.0, cfg.keep_alive_timeout.0)),
            connects,
        };
        Ok(Upstream {
            lanes,
            pooled,
            no_h2: AtomicBool::new(false),
            dialer,
            next: AtomicUsize::new(0),
            authority,
            response_header_timeout: cfg.response_header_timeout.0,
            total_timeout: cfg.total_timeout.0,
        })
    }

    /// The absolute upstream URI for a raw inbound path and query.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, Reject> {
        let pq: PathAndQuery = path_and_query.parse().map_err(|_| Reject::Internal)?;
        Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| Reject::Internal)
    }

    /// Sends a request; returns the response with a body bounded by the
    /// total timeout, and the time to response headers.
    pub async fn send(
        &self,
        req: UpstreamRequest,
    ) -> Result<(Response<ProxyBody>, Duration), Reject> {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.total_timeout;
        let resp =
            match tokio::time::timeout(self.response_header_timeout, self.exchange(req, start))
                .await
            {
                Err(_) => return Err(Reject::UpstreamTimeout),
                Ok(Err(e)) => {
                    let e = e.as_error();
                    tracing::warn!(error = %ErrorChain(e), "upstream request failed");
                    return Err(if is_timeout(e) {
                        Reject::UpstreamTimeout
                    } else {
                        Reject::UpstreamUnavailable
                    });
                }
                Ok(Ok(r)) => r,
            };
        let latency = start.elapsed();
        let (parts, body) = resp.into_parts();
        let body = DeadlineBody::new(body, deadline).boxed();
        Ok((Response::from_parts(parts, body), latency))
    }

    /// `now`: when the request left the pipeline (its lane's last use).
    async fn exchange(
        &self,
        req: UpstreamRequest,
        now: Instant,
    ) -> Result<Response<Incoming>, Failure> {
        if self.lanes.is_empty() || self.no_h2.load(Ordering::Relaxed) {
            return self.pooled.request(req).await.map_err(Failure::Pooled);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let lane = &self.lanes[i];
        let mut req = req;
        // Dials made for this request, and whether it was resent.
        let mut dials = 0;
        let mut resent = false;
        loop {
            let sent = match lane.send(req, now) {
                Ok(sent) => sent,
                Err(unsent) => {
                    if dials == 2 {
                        return Err(Failure::Closed);
                    }
                    dials += 1;
                    // Rare: boxed, so every request's future stays small.
                    match Box::pin(self.dialer.dial(lane)).await? {
                        Dialed::H2 => {
                            req = unsent;
                            continue;
                        }
                        Dialed::NoH2 => {
                            if !self.no_h2.swap(true, Ordering::Relaxed) {
                                tracing::warn!(
                                    "the upstream did not choose HTTP/2 in the TLS handshake; \
                                     using HTTP/1.1 connections from now on"
                                );
                            }
                            return self.pooled.request(unsent).await.map_err(Failure::Pooled);
                        }
                    }
                }
            };
            match sent.await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    // The connection closed before taking the request: it
                    // was never sent, so it may go once more.
                    Some(unsent) if !resent => {
                        resent = true;
                        req = unsent;
                    }
                    _ => return Err(Failure::H2(e.into_error())),
                },
            }
        }
    }
}

/// One HTTP/2 connection slot.
#[derive(Default)]
struct Lane {
    live: std::sync::Mutex<Option<Live>>,
    /// Held while dialing, so a lane opens one connection at a time.
    dialing: tokio::sync::Mutex<()>,
}

struct Live {
    id: u64,
    sender: Sender,
    last_used: Instant,
}

impl Live {
    /// The connection still takes requests.
    fn open(&self) -> bool {
        !self.sender.is_closed()
    }
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Live>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands the request to the live connection, or gives it back when
    /// there is none (never dialed, closed, or given up when idle).
    #[allow(clippy::result_large_err)]
    fn send(
        &self,
        req: UpstreamRequest,
        now: Instant,
    ) -> Result<impl std::future::Future<Output = SendResult> + use<>, UpstreamRequest> {
        let mut live = self.lock();
        match live.as_mut() {
            Some(l) if l.open() => {
                l.last_used = now;
                Ok(l.sender.try_send_request(req))
            }
            _ => {
                *live = None;
                Err(req)
            }
        }
    }

    fn is_live(&self) -> bool {
        self.lock().as_ref().is_some_and(Live::open)
    }

    /// Gives up connection `id` if it is still this lane's and has carried
    /// no request for `idle`. Dropping its `SendRequest` lets hyper close
    /// it once its last stream is done.
    fn retire(&self, id: u64, idle: Option<Duration>) {
        let mut live = self.lock();
        if live
            .as_ref()
            .is_some_and(|l| l.id == id && idle.is_none_or(|d| l.last_used.elapsed() >= d))
        {
            *live = None;
        }
    }
}

enum Dialed {
    H2,
    /// The broker chose HTTP/1.1.
    NoH2,
}

struct Dialer {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    /// Offers `h2` and `http/1.1` by ALPN; verification as for every
    /// upstream connection ([`tls::client_config`]).
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// PING interval and timeout: a connection that stops answering (a
    /// broker gone without closing it, a NAT that forgot it) is closed
    /// instead of holding every request of its lane until it times out.
    keep_alive: Option<(Duration, Duration)>,
    connects: Option<IntCounterVec>,
}

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

impl Dialer {
    /// Opens a connection for `lane` unless another request did meanwhile.
    async fn dial(&self, lane: &Arc<Lane>) -> Result<Dialed, Failure> {
        let _one_at_a_time = lane.dialing.lock().await;
        if lane.is_live() {
            return Ok(Dialed::H2);
        }
        let result = self.connect().await;
        if let Some(c) = &self.connects {
            let outcome = match &result {
                Ok(Some(_)) => "h2",
                Ok(None) => "http1",
                Err(_) => "failed",
            };
            c.with_label_values(&[outcome]).inc();
        }
        let Some((sender, conn)) = result? else {
            return Ok(Dialed::NoH2);
        };
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        *lane.lock() = Some(Live {
            id,
            sender,
            last_used: Instant::now(),
        });
        tokio::spawn(drive(conn, lane.clone(), id, self.idle_timeout));
        Ok(Dialed::H2)
    }

    /// TCP, TLS, then the HTTP/2 handshake; `None` when the broker chose
    /// HTTP/1.1.
    async fn connect(&self) -> Result<Option<(Sender, Connection)>, Failure> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            Failure::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(Failure::Connect)?;
        tcp.set_nodelay(true).map_err(Failure::Connect)?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(Failure::Tls)?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Ok(None);
        }
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        if let Some((interval, timeout)) = self.keep_alive {
            b.keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        let (sender, conn) = b.handshake(TokioIo::new(tls)).await.map_err(Failure::H2)?;
        Ok(Some((sender, conn)))
    }
}

type Connection = http2::Connection<
    TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Full<Bytes>,
    TokioExecutor,
>;

/// Runs one HTTP/2 connection until it ends, giving it up (see
/// [`Lane::retire`]) after `idle` without requests.
async fn drive(conn: Connection, lane: Arc<Lane>, id: u64, idle: Duration) {
    let mut conn = std::pin::pin!(conn);
    let period = (idle / 4).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %ErrorChain(&e), "upstream HTTP/2 connection ended");
                }
                break;
            }
            _ = tick.tick() => lane.retire(id, Some(idle)),
        }
    }
    lane.retire(id, None);
}

/// Why an upstream exchange failed (logged, never shown to callers).
enum Failure {
    Pooled(hyper_util::client::legacy::Error),
    H2(hyper::Error),
    Connect(std::io::Error),
    Tls(std::io::Error),
    /// A fresh connection closed before it could take the request.
    Closed,
}

#[derive(Debug)]
struct ClosedConnection;

impl std::fmt::Display for ClosedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upstream connection closed before taking the request")
    }
}

impl std::error::Error for ClosedConnection {}

impl Failure {
    fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            Failure::Pooled(e) => e,
            Failure::H2(e) => e,
            Failure::Connect(e) | Failure::Tls(e) => e,
            Failure::Closed => &ClosedConnection,
        }
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        src = s.source();
    }
    false
}

/// Formats an error with its sources for logs (never for clients).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}
