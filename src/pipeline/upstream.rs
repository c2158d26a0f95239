//! Upstream stage: the pooled HTTPS client to the broker and the forwarding
//! of one request with connect, response-header and total timeouts.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::{DeadlineBody, ProxyBody};
use crate::config::UpstreamConfig;
use crate::reject::Reject;
use crate::server::tls;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct Upstream {
    /// With HTTP/2, `upstream.http2_connections` pools of one connection
    /// each, used in turn: a single HTTP/2 connection serialises every stream
    /// through one task and one lock (docs/benchmarks.md). With HTTP/1.1, one
    /// pool.
    clients: Vec<HttpsClient>,
    next: std::sync::atomic::AtomicUsize,
    authority: Authority,
    response_header_timeout: Duration,
    total_timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, String> {
        let authority = crate::config::parse_upstream_origin(&cfg.base_url)?;
        let tls = tls::client_config(cfg.extra_ca_file.as_deref()).map_err(|e| e.to_string())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout.0));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let https = if cfg.http2 {
            builder.enable_all_versions().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let n = if cfg.http2 {
            cfg.http2_connections.max(1)
        } else {
            1
        };
        let clients = (0..n)
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(cfg.pool_idle_timeout.0)
                    .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
                    // One TLS record per request rather than one per buffer slice.
                    .http1_writev(false)
                    .build(https.clone())
            })
            .collect();
        Ok(Upstream {
            clients,
            next: std::sync::atomic::AtomicUsize::new(0),
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
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<ProxyBody>, Duration), Reject> {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.total_timeout;
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.clients.len();
        let fut = self.clients[i].request(req);
        let resp = match tokio::time::timeout(self.response_header_timeout, fut).await {
            Err(_) => return Err(Reject::UpstreamTimeout),
            Ok(Err(e)) => {
                tracing::warn!(error = %ErrorChain(&e), "upstream request failed");
                return Err(if is_timeout(&e) {
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
}

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
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
