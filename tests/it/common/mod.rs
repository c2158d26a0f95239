//! Test harness: the demo stack (simulator + proxy over real TLS) on port 0
//! in a temporary directory, and clients that speak to it — a normal HTTP
//! client and a raw TLS socket for requests no well-behaved client would send.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis::config::Config;
use portcullis::demo::{self, DemoOptions};
use portcullis::server::{self, ShutdownTrigger};
use portcullis::sim::{JournalEntry, Sim, SimOptions};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub const VIEWER: &str = "demo-viewer-key";
pub const TRADER: &str = "demo-trader-key";
pub const ADMIN: &str = "demo-admin-key";
pub const SUPERADMIN: &str = "demo-superadmin-key";

/// `Basic base64(id:secret)`, as a client authenticates at a token endpoint.
pub fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// The demo Super Admin's TOTP code `steps_ahead` 30-second steps from now
/// (each step is accepted once; none from before the proxy started).
pub fn demo_otp(steps_ahead: i64) -> String {
    let t = portcullis::credentials::totp::Totp::from_base32(&secrecy::SecretString::from(
        portcullis::demo::DEMO_TOTP_SECRET.to_owned(),
    ))
    .expect("demo TOTP secret");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    t.code_at_step(now / 30 + steps_ahead, 6)
}

/// The configuration entry for an API key.
pub fn key_hash(key: &str) -> portcullis::config::KeyHash {
    portcullis::config::KeyHash::new(format!("sha256:{}", portcullis::keys::hash_key_hex(key)))
}

/// An `hmac-sha256` signing key whose base64 secret is in `secret_file`.
pub fn hmac_signing_key(
    keyid: &str,
    secret_file: &std::path::Path,
) -> portcullis::config::SigningKeyConfig {
    portcullis::config::SigningKeyConfig {
        keyid: keyid.into(),
        alg: portcullis::config::SigningAlg::HmacSha256,
        secret: Some(
            format!("file:{}", secret_file.display())
                .parse()
                .expect("secret reference"),
        ),
        public_key: None,
    }
}

pub struct Harness {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub sim_addr: SocketAddr,
    pub sim: Arc<Sim>,
    pub ca_pem: String,
    /// The proxy's configuration as the demo built it.
    pub config: Config,
    pub live: Arc<portcullis::reload::Live>,
    pub dir: tempfile::TempDir,
    trigger: Option<ShutdownTrigger>,
    pub task: Option<tokio::task::JoinHandle<Result<(), portcullis::StartError>>>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(SimOptions::default(), |_| {}).await
    }

    pub async fn start_with(sim: SimOptions, customize: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let opts = DemoOptions {
            dir: dir.path().join("demo"),
            proxy: any,
            sim: any,
            admin: any,
        };
        let (trigger, shutdown) = server::shutdown_channel();
        let (h, task) = demo::start_with(&opts, sim, customize, shutdown)
            .await
            .expect("demo stack starts");
        let ca_pem = std::fs::read_to_string(opts.dir.join("ca.pem")).expect("ca.pem");
        let client = client(&ca_pem, false);
        Harness {
            proxy: h.proxy,
            admin: h.admin,
            sim_addr: h.sim_addr,
            sim: h.sim,
            ca_pem,
            config: h.config,
            live: h.live,
            dir,
            trigger: Some(trigger),
            task: Some(task),
            client,
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("demo").join("ca.pem")
    }

    pub fn shutdown(&mut self) {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
    }

    pub fn account_hash(&self) -> String {
        self.sim.accounts()[0].hash.clone()
    }

    pub fn journal(&self) -> Vec<JournalEntry> {
        self.sim.journal()
    }

    /// Sends a request through the proxy with the HTTP client.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        self.send_with(method, path, key, body, &[]).await
    }

    pub async fn send_with(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let uri = format!("https://localhost:{}{}", self.proxy.port(), path);
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .expect("request");
        send_on(&self.client, req).await
    }

    /// POSTs a form (`application/x-www-form-urlencoded`) through the proxy
    /// with the given `Authorization` value.
    pub async fn post_form(&self, path: &str, authorization: Option<&str>, form: &str) -> Reply {
        let mut b = http::Request::builder()
            .method("POST")
            .uri(format!("https://localhost:{}{}", self.proxy.port(), path))
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(a) = authorization {
            b = b.header("authorization", a);
        }
        let req = b
            .body(Full::new(Bytes::from(form.to_owned())))
            .expect("request");
        send_on(&self.client, req).await
    }

    /// GET on the admin listener (plain HTTP).
    pub async fn admin_get(&self, path: &str) -> Reply {
        let resp = raw_plain(
            self.admin,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
        .await;
        parse_raw(&resp)
    }

    /// GET on the admin listener with a bearer credential.
    pub async fn admin_get_as(&self, path: &str, key: &str) -> Reply {
        let resp = raw_plain(
            self.admin,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        parse_raw(&resp)
    }

    /// POST on the admin listener with a caller key.
    pub async fn admin_post(&self, path: &str, key: Option<&str>) -> Reply {
        self.admin_call("POST", path, key).await
    }

    /// Any method on the admin listener with a caller key.
    pub async fn admin_call(&self, method: &str, path: &str, key: Option<&str>) -> Reply {
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let resp = raw_plain(
            self.admin,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        parse_raw(&resp)
    }

    /// The demo's live policy directory (the proxy watches it).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("demo").join("policies")
    }

    /// Writes raw bytes over TLS to the proxy and reads until the server closes
    /// (or 5 s pass). Returns what came back.
    pub async fn raw(&self, request: &[u8]) -> Vec<u8> {
        let mut s = self.tls_stream().await;
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        out
    }

    pub async fn tls_stream(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.proxy).await.expect("connect");
        self.tls_over(tcp).await
    }

    /// A TCP connection to the proxy from another loopback address
    /// (127.0.0.2 …): another client host, as the proxy sees it.
    pub async fn tcp_from(&self, local: &str) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local.parse().expect("address"), 0))
            .expect("bind");
        socket.connect(self.proxy).await.expect("connect")
    }

    pub async fn tls_over(&self, tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
        let connector = TlsConnector::from(Arc::new(tls_config(&self.ca_pem, true)));
        connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake")
    }

    /// Waits until the simulator has recorded a request (it records before
    /// its configured latency), so a test can act while one is in flight.
    pub async fn wait_for_upstream_request(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.journal().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "request never reached the simulator"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A GET to the proxy carrying `key`, for a client of one's own.
    pub fn get_request(&self, path: &str, key: &str) -> http::Request<Full<Bytes>> {
        http::Request::builder()
            .uri(format!("https://localhost:{}{}", self.proxy.port(), path))
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::new()))
            .expect("request")
    }

    /// An HTTP/2-only client.
    pub fn h2_client(&self) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
        client(&self.ca_pem, true)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub async fn send_on(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Reply {
    let resp = client.request(req).await.expect("response");
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers: parts.headers,
        body,
    }
}

/// Client TLS config trusting the demo CA; `alpn_h1` offers http/1.1 by ALPN
/// (raw sockets), otherwise ALPN is left to hyper-rustls.
pub fn tls_config(ca_pem: &str, alpn_h1: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("add ca");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(portcullis::server::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn_h1 {
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    cfg
}

/// An HTTP/1.1 client that presents a client certificate (mTLS).
pub fn client_with_cert(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("add ca");
    }
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert pem");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let cfg = rustls::ClientConfig::builder_with_provider(portcullis::server::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client cert");
    with_config(cfg, false)
}

fn client(
    ca_pem: &str,
    h2: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    with_config(tls_config(ca_pem, false), h2)
}

fn with_config(
    cfg: rustls::ClientConfig,
    h2: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only();
    let https = if h2 {
        b.enable_http2().build()
    } else {
        b.enable_http1().build()
    };
    let mut cb = Client::builder(TokioExecutor::new());
    if h2 {
        cb.http2_only(true);
    }
    cb.build(https)
}

pub async fn raw_plain(addr: SocketAddr, request: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

/// Parses a raw HTTP/1.1 response (status, headers, body as sent).
pub fn parse_raw(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = http::HeaderMap::new();
    for l in lines {
        if let Some((n, v)) = l.split_once(':')
            && let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(n, v);
        }
    }
    Reply {
        status,
        headers,
        body: Bytes::from(body.to_owned()),
    }
}

/// Status code of a raw response, 0 when the server closed without one.
pub fn raw_status(raw: &[u8]) -> u16 {
    parse_raw(raw).status
}

pub const MARKET_ORDER: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"MARKET","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#;
pub const LIMIT_ORDER: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"150.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#;

/// The demo's audit directory.
pub fn audit_dir(h: &Harness) -> PathBuf {
    h.dir.path().join("demo").join("audit")
}

/// The audit records written so far, waiting until there are at least `n`.
pub async fn records(dir: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut out = Vec::new();
        for f in portcullis::audit::writer::files(dir).unwrap_or_default() {
            for line in std::fs::read_to_string(&f).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
        if out.len() >= n || std::time::Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one sample in a Prometheus text exposition (`name{labels}`
/// exactly as rendered; labels sorted by name), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Switches every rate limit off (tests that put load on the proxy for
/// something else).
pub fn without_rate_limits(c: &mut Config) {
    let r = &mut c.rate_limits;
    r.per_ip = None;
    r.auth_failures = None;
    r.per_caller = None;
    r.groups.clear();
    r.per_account_orders = None;
    r.upstream = None;
}

/// The `portcullis` binary, for tests that run it as its own process.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Reads lines from `r` until `f` finds what it wants (or 20 s pass).
pub fn wait_for_line<R: std::io::Read>(r: R, f: impl Fn(&str) -> Option<String>) -> String {
    use std::io::BufRead;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for line in std::io::BufReader::new(r).lines() {
        let line = line.expect("line");
        if let Some(v) = f(&line) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting");
    }
    panic!("the process ended before printing what was expected");
}

/// `portcullis sim` in its own process with its files under `dir/sim`
/// (stderr to `dir/sim.log`); returns the child and its `host:port`. Its
/// stdout is closed once the address is read: it must keep running.
pub fn spawn_sim(dir: &Path) -> (std::process::Child, String) {
    use std::process::{Command, Stdio};
    let mut sim = Command::new(BIN)
        .args(["sim", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.join("sim"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("sim.log")).unwrap())
        .spawn()
        .unwrap();
    let addr = wait_for_line(sim.stdout.take().unwrap(), |l| {
        l.strip_prefix("Schwab simulator on https://")
            .map(str::to_owned)
    });
    (sim, addr)
}

/// Waits (20 s at most) until the JSON log at `log` says the proxy listens;
/// returns its port.
pub fn wait_for_listening(log: &Path) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "proxy listening")
                .then(|| v["address"].as_str()?.rsplit(':').next().map(str::to_owned))
                .flatten()
        });
        if let Some(port) = found {
            return port;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP/1.1 client over TLS trusting `ca` (PEM).
pub fn https_client(ca: &str) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca, false))
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}
