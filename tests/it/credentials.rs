//! The proxy's own Schwab session: single-flight refresh at expiry,
//! background refresh ahead of expiry, an expired refresh token (503, not
//! ready, recovered by `token init`), and a tampered store.

use crate::common;

use std::cell::RefCell;
use std::io::{BufRead, Read, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use common::{Harness, VIEWER};
use portcullis::credentials::commands::{self, CallbackSource};
use portcullis::sim::SimOptions;

/// What `token init` prints, shared with the [`User`] reading it.
struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A person at the terminal: reads the authorize address `token init`
/// printed, logs in (the simulator grants a code for the callback), and
/// pastes the redirect — with the `state` of that address.
struct User {
    printed: Rc<RefCell<Vec<u8>>>,
    sim: Arc<portcullis::sim::Sim>,
    callback: String,
    answer: Option<String>,
}

impl User {
    fn answer(&mut self) -> &[u8] {
        if self.answer.is_none() {
            let printed = String::from_utf8(self.printed.borrow().clone()).unwrap();
            let state = printed
                .split("state=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_alphanumeric()).next())
                .expect("an authorize address with a state was printed")
                .to_owned();
            let code = self.sim.grant_code(&self.callback);
            self.answer = Some(format!(
                "{}/?code={code}%40&session=abc&state={state}\n",
                self.callback
            ));
        }
        self.answer.as_deref().unwrap_or("").as_bytes()
    }
}

impl Read for User {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let a = self.answer();
        let n = a.len().min(buf.len());
        buf[..n].copy_from_slice(&a[..n]);
        Ok(n)
    }
}

impl BufRead for User {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        Ok(self.answer())
    }
    fn consume(&mut self, _: usize) {}
}

const QUOTES: &str = "/marketdata/v1/quotes?symbols=AAPL&fields=quote";

/// Refresh calls the simulator received.
fn refreshes(h: &Harness) -> usize {
    h.journal()
        .iter()
        .filter(|e| e.path == "/v1/oauth/token" && e.body.contains("grant_type=refresh_token"))
        .count()
}

fn api_calls(h: &Harness) -> usize {
    h.journal()
        .iter()
        .filter(|e| e.path.starts_with("/marketdata/") || e.path.starts_with("/trader/"))
        .count()
}

fn short_tokens(ttl: Duration) -> SimOptions {
    SimOptions {
        access_token_ttl: ttl,
        ..SimOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_requests_at_expiry_cause_exactly_one_refresh() {
    // No background refresh ahead of time: the requests meet the expiry.
    let h = Harness::start_with(short_tokens(Duration::from_secs(4)), |c| {
        c.schwab.refresh_ahead = "0s".parse().unwrap();
        // A hundred at once from one caller: over the demo's rate on purpose.
        common::without_rate_limits(c);
    })
    .await;
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
    assert_eq!(refreshes(&h), 0);
    // Past the token's use-by time (a tenth of its life before expiry).
    tokio::time::sleep(Duration::from_millis(3700)).await;
    let h = Arc::new(h);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let h = h.clone();
        tasks.spawn(async move { h.send("GET", QUOTES, Some(VIEWER), None).await.status });
    }
    let mut statuses = Vec::new();
    while let Some(s) = tasks.join_next().await {
        statuses.push(s.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "failed requests at the refresh boundary: {statuses:?}"
    );
    assert_eq!(
        refreshes(&h),
        1,
        "one refresh call for the whole burst (single-flight)"
    );
    assert_eq!(api_calls(&h), 101);
}

#[tokio::test]
async fn the_access_token_is_refreshed_ahead_of_expiry_in_the_background() {
    // refresh_ahead (5 min) exceeds this token's life: it is refreshed
    // half-way through instead.
    let h = Harness::start_with(short_tokens(Duration::from_secs(3)), |_| {}).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(refreshes(&h), 1, "no background refresh half-way");
    assert_eq!(api_calls(&h), 0);
    // The new token is in use: the old one has expired by now.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
    let m = h.admin_get("/metrics").await.text();
    assert!(
        m.contains("portcullis_upstream_token_refreshes_total{outcome=\"ok\"}"),
        "{m}"
    );
    let refresh_left: i64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("portcullis_upstream_token_expires_in_seconds{token=\"refresh\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("refresh token gauge");
    assert!(
        (600_000..=7 * 86_400).contains(&refresh_left),
        "refresh token gauge should be ~7 days: {refresh_left}"
    );
}

#[tokio::test]
async fn an_expired_refresh_token_is_503_and_not_ready_until_token_init() {
    let h = Harness::start_with(short_tokens(Duration::from_secs(2)), |c| {
        c.schwab.refresh_ahead = "0s".parse().unwrap();
    })
    .await;
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    // Schwab revokes the refresh token (or its 7 days are up).
    h.sim.expire_refresh_tokens();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let r = h.send("GET", QUOTES, Some(VIEWER), None).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_credentials_unavailable");
    assert_eq!(api_calls(&h), 0, "forwarded without a valid token");
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["upstream_credentials"], false);
    // Further requests fail fast: the refused token is not tried again.
    let before = h.journal().len();
    for _ in 0..5 {
        assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 503);
    }
    assert_eq!(
        h.journal().len(),
        before,
        "the refused refresh token was retried"
    );

    // A human logs in again (`portcullis token init`): reads the address
    // printed, "logs in" (the simulator grants a code), and pastes the
    // redirect with the login's `state`.
    let callback = h.config.schwab.callback_url.clone().unwrap();
    let printed = Rc::new(RefCell::new(Vec::new()));
    let mut user = User {
        printed: printed.clone(),
        sim: h.sim.clone(),
        callback: callback.clone(),
        answer: None,
    };
    let mut out = Shared(printed.clone());
    commands::init_with(&h.config, CallbackSource::Paste(&mut user), &mut out)
        .await
        .map_err(|f| f.1)
        .expect("token init");
    let printed = String::from_utf8(printed.borrow().clone()).unwrap();
    assert!(printed.contains("/v1/oauth/authorize?response_type=code&client_id="));
    let pasted = user.answer.unwrap();
    let code = pasted
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert!(!printed.contains(code), "the code was printed");

    // A pasted redirect of another login (wrong state) is refused.
    let forged = format!(
        "{callback}/?code={}&state=not-this-login\n",
        h.sim.grant_code(&callback)
    );
    let refused = commands::init_with(
        &h.config,
        CallbackSource::Paste(&mut forged.as_bytes()),
        &mut Vec::new(),
    )
    .await;
    assert!(matches!(refused, Err(ref f) if f.0 == commands::EXIT_NEEDS_LOGIN));

    // The running proxy adopts the new store on the next request.
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["upstream_credentials"], true);
}

#[tokio::test]
async fn a_tampered_store_is_a_clear_error_and_never_a_reset() {
    // Tokens short enough that the proxy refreshes (and would write the
    // store) after the tampering.
    let h = Harness::start_with(short_tokens(Duration::from_secs(2)), |_| {}).await;
    let path = h.config.schwab.token_store.as_ref().unwrap().file.clone();
    let original = std::fs::read_to_string(&path).unwrap();
    let mut env: serde_json::Value = serde_json::from_str(&original).unwrap();
    let ct = env["ciphertext"].as_str().unwrap().to_owned();
    // Change one base64 character of the ciphertext.
    let mut chars: Vec<char> = ct.chars().collect();
    chars[10] = if chars[10] == 'A' { 'B' } else { 'A' };
    env["ciphertext"] = chars.into_iter().collect::<String>().into();
    let tampered = env.to_string();
    std::fs::write(&path, &tampered).unwrap();

    // Past a background refresh and the first token's expiry: the running
    // proxy keeps serving with the tokens it holds and refreshes them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        refreshes(&h) >= 1,
        "no refresh happened after the tampering"
    );
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
    // It did not replace the file it cannot read (no silent reset).
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        tampered,
        "the store was rewritten"
    );
    // A (re)start refuses, naming the file and the problem.
    let err = match portcullis::prepare(&h.config) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a tampered store was accepted"),
    };
    assert!(err.contains("failed authentication"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[tokio::test]
async fn a_reload_is_all_or_nothing_and_a_removed_caller_stops_at_once() {
    let h = Harness::start().await;
    let demo = h.dir.path().join("demo");

    // A certificate that does not match its key: refused, nothing changes
    // (not even the caller keys loaded alongside).
    let mut cfg = h.config.clone();
    let bot = "rotated-bot-key-00000000000000000000";
    cfg.callers
        .iter_mut()
        .find(|c| c.id == "demo-viewer")
        .unwrap()
        .key_hashes
        .push(common::key_hash(bot));
    let stray = portcullis::certs::DevCa::new("stray")
        .unwrap()
        .leaf(&["localhost"])
        .unwrap();
    let wrong_key = demo.join("stray-key.pem");
    std::fs::write(&wrong_key, &stray.key_pem).unwrap();
    let mut broken = cfg.clone();
    broken.listen[0].tls.as_mut().unwrap().key_file = wrong_key;
    let err = h.live.apply(broken).await.unwrap_err();
    assert!(err.contains("listen[0].tls"), "{err}");
    assert_eq!(
        h.send("GET", QUOTES, Some(bot), None).await.status,
        401,
        "partly applied"
    );

    // A store key that cannot open the store: refused.
    let other_key = demo.join("other-store.key");
    std::fs::write(
        &other_key,
        secrecy::ExposeSecret::expose_secret(
            &portcullis::credentials::store::StoreKey::generate().unwrap(),
        ),
    )
    .unwrap();
    let mut rekeyed = cfg.clone();
    rekeyed.schwab.token_store.as_mut().unwrap().key =
        format!("file:{}", other_key.display()).parse().unwrap();
    let err = h.live.apply(rekeyed).await.unwrap_err();
    assert!(err.contains("key id"), "{err}");
    assert_eq!(
        h.send("GET", QUOTES, Some(bot), None).await.status,
        401,
        "partly applied"
    );

    // The good one applies.
    h.live.apply(cfg.clone()).await.expect("reload");
    assert_eq!(h.send("GET", QUOTES, Some(bot), None).await.status, 200);

    // A caller deleted from the configuration: its keys stop working now
    // (the rest of the removal waits for a restart, and says so).
    cfg.callers.retain(|c| c.id != "demo-viewer");
    let applied = h.live.apply(cfg).await.expect("reload");
    assert!(
        applied
            .needs_restart
            .iter()
            .any(|w| w.contains("demo-viewer")),
        "{:?}",
        applied.needs_restart
    );
    assert_eq!(h.send("GET", QUOTES, Some(bot), None).await.status, 401);
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 401);
    assert_eq!(
        h.send("GET", QUOTES, Some(common::TRADER), None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_secret_and_caller_key_rotate_under_load_with_no_failed_request() {
    // Short access tokens, so refreshes (which need the app secret) happen
    // during the test; secret files are watched every 100 ms.
    let h = Harness::start_with(short_tokens(Duration::from_secs(2)), |c| {
        c.reload.interval = "100ms".parse().unwrap();
        // Requests back to back for seconds: over the demo's rate on purpose.
        common::without_rate_limits(c);
    })
    .await;
    let h = Arc::new(h);
    let new_key = "rotated-viewer-key-0123456789abcdef";
    let use_new_key = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (h, use_new_key, stop) = (h.clone(), use_new_key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = if use_new_key.load(std::sync::atomic::Ordering::Relaxed) {
                    new_key
                } else {
                    VIEWER
                };
                statuses.push(h.send("GET", QUOTES, Some(key), None).await.status);
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. The app secret is regenerated at Schwab and its secret file updated.
    let secret_file = h.dir.path().join("demo").join("schwab-app-secret");
    h.sim.set_app_secret("regenerated-app-secret-42");
    std::fs::write(&secret_file, "regenerated-app-secret-42\n").unwrap();
    // Long enough for the watcher and for the access token to need refreshing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expected = common::basic(&h.sim.options().app_key, "regenerated-app-secret-42");
    let last_refresh = h
        .journal()
        .into_iter()
        .rfind(|e| e.path == "/v1/oauth/token")
        .expect("a refresh after the rotation");
    assert_eq!(
        last_refresh.header("authorization"),
        vec![expected.as_str()],
        "the refresh did not use the new app secret"
    );

    // 2. The viewer gets a second key, moves to it, and the old one is retired.
    let mut cfg = h.config.clone();
    let viewer = cfg
        .callers
        .iter_mut()
        .find(|c| c.id == "demo-viewer")
        .unwrap();
    viewer.key_hashes.push(common::key_hash(new_key));
    let applied = h.live.apply(cfg.clone()).await.expect("reload");
    assert!(
        applied.needs_restart.is_empty(),
        "{:?}",
        applied.needs_restart
    );
    use_new_key.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let viewer = cfg
        .callers
        .iter_mut()
        .find(|c| c.id == "demo-viewer")
        .unwrap();
    viewer.key_hashes.remove(0);
    h.live.apply(cfg).await.expect("reload");
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.await.unwrap();
    assert!(
        statuses.len() > 20,
        "the load loop hardly ran: {}",
        statuses.len()
    );
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    // The retired key no longer works; the new one does.
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 401);
    assert_eq!(h.send("GET", QUOTES, Some(new_key), None).await.status, 200);
}

#[tokio::test]
async fn a_new_listener_certificate_is_served_without_a_restart() {
    let h = Harness::start_with(SimOptions::default(), |c| {
        c.reload.interval = "100ms".parse().unwrap();
    })
    .await;
    let other = portcullis::certs::DevCa::new("rotated CA").unwrap();
    let leaf = other.leaf(portcullis::certs::PROXY_NAMES).unwrap();
    // An open connection made with the old certificate keeps working.
    let old_client = h.h2_client();
    let r = old_client
        .request(h.get_request(QUOTES, VIEWER))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let demo = h.dir.path().join("demo");
    std::fs::write(demo.join("proxy-key.pem"), &leaf.key_pem).unwrap();
    std::fs::write(demo.join("proxy-cert.pem"), &leaf.cert_pem).unwrap();
    // A client trusting only the new CA gets through once the watcher saw it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let tcp = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
        let tls = common::tls_config(&other.ca_pem, true);
        let ok = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .is_ok();
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = old_client
        .request(h.get_request(QUOTES, VIEWER))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the open connection was dropped");
}

/// Accepts any server certificate: the browser clicking through the
/// one-shot callback listener's self-signed certificate warning.
#[derive(Debug)]
struct ClickThrough(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for ClickThrough {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `Write` into a shared buffer (the test reads what `token init` prints).
#[derive(Clone, Default)]
struct SharedOut(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for SharedOut {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn token_init_listen_catches_the_browser_redirect() {
    let h = Harness::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = h.config.clone();
    let callback = format!("https://127.0.0.1:{port}");
    cfg.schwab.callback_url = Some(callback.clone());
    let out = SharedOut::default();
    let mut writer = out.clone();
    let before = std::fs::read(&cfg.schwab.token_store.as_ref().unwrap().file).unwrap();

    let browser = async {
        // The person opens the printed address: the simulator's authorize
        // page redirects to the callback with a code and the state.
        let url = loop {
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            if let Some(u) = text
                .split_whitespace()
                .find(|w| w.contains("/v1/oauth/authorize?"))
            {
                break u.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let path = url
            .split_once(&h.sim_addr.to_string())
            .unwrap()
            .1
            .to_owned();
        let r = portcullis_get(&h, &path).await;
        let location = r.headers["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(&callback), "{location}");
        // A stray request (no state) is ignored; then the real redirect.
        let provider = portcullis::server::tls::provider();
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClickThrough(provider)))
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, http_body_util::Full<bytes::Bytes>>(https);
        for target in [format!("{callback}/favicon.ico"), location] {
            let resp = client.get(target.parse().unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200);
        }
    };
    let (result, ()) = tokio::join!(
        commands::init_with(&cfg, CallbackSource::Listen, &mut writer),
        browser
    );
    result.map_err(|f| f.1).expect("token init --listen");
    let after = std::fs::read(&cfg.schwab.token_store.as_ref().unwrap().file).unwrap();
    assert_ne!(before, after, "no new tokens were stored");
    let printed = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(printed.contains("Logged in."), "{printed}");
}

/// A GET on the simulator (the "browser" visiting the authorize page).
async fn portcullis_get(h: &Harness, path: &str) -> common::Reply {
    let tcp = tokio::net::TcpStream::connect(h.sim_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(common::tls_config(&h.ca_pem, true)))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    common::Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: bytes::Bytes::new(),
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificates_when_watching_is_off() {
    let h = Harness::start_with(SimOptions::default(), |c| {
        c.reload.watch = false;
    })
    .await;
    let other = portcullis::certs::DevCa::new("rotated CA").unwrap();
    let leaf = other.leaf(portcullis::certs::PROXY_NAMES).unwrap();
    let demo = h.dir.path().join("demo");
    std::fs::write(demo.join("proxy-key.pem"), &leaf.key_pem).unwrap();
    std::fs::write(demo.join("proxy-cert.pem"), &leaf.cert_pem).unwrap();
    let handshake = || async {
        let tcp = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(common::tls_config(&other.ca_pem, true)))
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .is_ok()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !handshake().await,
        "reloaded without a signal (watch is off)"
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !handshake().await {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
