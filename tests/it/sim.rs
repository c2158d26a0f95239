//! The Schwab simulator on its own, over HTTPS: OAuth, bearer checks, the
//! journal endpoint, fault injection and Schwab-shaped errors.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use common::{Reply, send_on, tls_config};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::certs::{DevCa, SIM_NAMES};
use portcullis::config::Limits;
use portcullis::server::{self, ServeOptions, ShutdownTrigger};
use portcullis::sim::{JournalEntry, Sim, SimOptions};

struct SimHarness {
    addr: SocketAddr,
    sim: Arc<Sim>,
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    _stop: ShutdownTrigger,
}

async fn start(opts: SimOptions) -> SimHarness {
    let ca = DevCa::new("test CA").unwrap();
    let leaf = ca.leaf(SIM_NAMES).unwrap();
    let certs = rustls_pki_types::pem::PemObject::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
        .unwrap();
    let key =
        <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_slice(
            leaf.key_pem.as_bytes(),
        )
        .unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(server::tls::server_config(certs, key).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = Sim::new(opts);
    let (stop, shutdown) = server::shutdown_channel();
    let serve_opts = ServeOptions {
        kind: "sim",
        limits: Limits::default(),
        metrics: None,
        per_ip_exempt: Vec::new(),
    };
    tokio::spawn(server::serve(
        listener,
        Some(tls),
        sim.handler(),
        serve_opts,
        shutdown,
    ));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(&ca.ca_pem, false))
        .https_only()
        .enable_http1()
        .build();
    SimHarness {
        addr,
        sim,
        client: Client::builder(TokioExecutor::new()).build(https),
        _stop: stop,
    }
}

impl SimHarness {
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut b = http::Request::builder().method(method).uri(format!(
            "https://localhost:{}{}",
            self.addr.port(),
            path
        ));
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        send_on(
            &self.client,
            b.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
        )
        .await
    }

    /// POST /v1/oauth/token with HTTP Basic `auth` and a form body.
    async fn token(&self, auth: &str, form: &str) -> Reply {
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", auth),
        ];
        self.call("POST", "/v1/oauth/token", &headers, form).await
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(
            "GET",
            path,
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
        .await
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test]
async fn every_api_call_checks_the_bearer_token() {
    let h = start(SimOptions::default()).await;
    let r = h.get("/trader/v1/accounts", "made-up").await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["message"].is_string(),
        "Trader error shape: {}",
        r.text()
    );
    let r = h
        .call("GET", "/marketdata/v1/quotes?symbols=AAPL", &[], "")
        .await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["errors"][0]["detail"].is_string(),
        "Market Data shape: {}",
        r.text()
    );
    let t = h.sim.issue_access_token(Duration::from_millis(300));
    assert_eq!(h.get("/trader/v1/accounts", &t).await.status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        h.get("/trader/v1/accounts", &t).await.status,
        401,
        "expired token accepted"
    );
}

#[tokio::test]
async fn oauth_authorization_code_and_refresh() {
    let opts = SimOptions::default();
    let (key, secret) = (opts.app_key.clone(), opts.app_secret.clone());
    let h = start(opts).await;
    let r = h
        .call(
            "GET",
            &format!(
                "/v1/oauth/authorize?client_id={key}&redirect_uri=https://127.0.0.1:8182&state=xyz"
            ),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 302);
    let loc = r.headers["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with("https://127.0.0.1:8182?code="), "{loc}");
    assert!(loc.contains("state=xyz"));
    let code = loc
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();

    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri=https%3A%2F%2F127.0.0.1%3A8182"
    );
    let wrong = h.token(&basic(&key, "nope"), &form).await;
    assert_eq!(wrong.status, 401);
    let auth = basic(&key, &secret);
    let r = h.token(&auth, &form).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tok = r.json();
    assert_eq!(tok["expires_in"], 1800);
    assert_eq!(tok["token_type"], "Bearer");
    let access = tok["access_token"].as_str().unwrap().to_owned();
    let refresh = tok["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        h.get("/trader/v1/accounts/accountNumbers", &access)
            .await
            .status,
        200
    );
    assert_eq!(
        h.get("/trader/v1/accounts", &refresh).await.status,
        401,
        "a refresh token is not an access token"
    );
    // The code is single use.
    let again = h.token(&auth, &form).await;
    assert_eq!(again.status, 400);

    let form = format!("grant_type=refresh_token&refresh_token={refresh}");
    let r = h.token(&auth, &form).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["refresh_token"],
        refresh.as_str(),
        "refresh token is not extended"
    );
    assert_ne!(r.json()["access_token"], access.as_str());
    let bad = h
        .token(&auth, "grant_type=refresh_token&refresh_token=expired")
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "unsupported_token_type");
}

#[tokio::test]
async fn journal_records_raw_requests_and_can_be_cleared() {
    let h = start(SimOptions::default()).await;
    let t = h.sim.issue_access_token(Duration::from_secs(60));
    let auth = format!("Bearer {t}");
    h.call(
        "GET",
        "/marketdata/v1/%24SPX/quotes?fields=quote",
        &[("authorization", &auth), ("x-dup", "1"), ("x-dup", "2")],
        "",
    )
    .await;
    let r = h.call("GET", "/__sim/journal", &[], "").await;
    assert_eq!(r.status, 200);
    let entries: Vec<JournalEntry> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        entries.len(),
        1,
        "the journal endpoint does not record itself"
    );
    assert_eq!(entries[0].method, "GET");
    assert_eq!(entries[0].path, "/marketdata/v1/%24SPX/quotes?fields=quote");
    assert_eq!(entries[0].header("x-dup"), vec!["1", "2"]);
    let raw: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        raw[0]["headers"][0].is_array(),
        "headers are [name, value] pairs: {raw}"
    );
    assert_eq!(
        h.call("DELETE", "/__sim/journal", &[], "").await.status,
        204
    );
    assert!(h.sim.journal().is_empty());
}

#[tokio::test]
async fn orders_are_validated_like_schwab() {
    let h = start(SimOptions::default()).await;
    let t = h.sim.issue_access_token(Duration::from_secs(60));
    let hash = h.sim.accounts()[0].hash.clone();
    let auth = format!("Bearer {t}");
    let hdrs = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let no_price = r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":1}]}"#;
    let r = h
        .call(
            "POST",
            &format!("/trader/v1/accounts/{hash}/orders"),
            &hdrs,
            no_price,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["errors"].is_array());
    let r = h
        .call(
            "POST",
            &format!("/trader/v1/accounts/{hash}/previewOrder"),
            &hdrs,
            no_price,
        )
        .await;
    assert_eq!(r.status, 200, "preview answers 200 with rejects");
    assert_eq!(r.json()["orderStrategy"]["status"], "REJECTED");
    let r = h.get("/trader/v1/accounts/NOTANACCOUNT/orders?fromEnteredTime=2024-01-01T00:00:00Z&toEnteredTime=2030-01-01T00:00:00.000Z", &t).await;
    assert_eq!(r.status, 403);
    let r = h
        .get(&format!("/trader/v1/accounts/{hash}/orders"), &t)
        .await;
    assert_eq!(r.status, 400, "time window is required");
    let r = h
        .get(
            &format!("/trader/v1/accounts/{hash}/orders?fromEnteredTime=2024-01-01T00:00:00Z&toEnteredTime=2099-01-01T00:00:00.000Z"),
            &t,
        )
        .await;
    assert_eq!(r.status, 200, "both time formats: {}", r.text());
}

#[tokio::test]
async fn fault_injection_and_rate_limit() {
    let h = start(SimOptions {
        fail_every: Some(2),
        ..SimOptions::default()
    })
    .await;
    let t = h.sim.issue_access_token(Duration::from_secs(60));
    assert_eq!(h.get("/trader/v1/accounts", &t).await.status, 200);
    assert_eq!(h.get("/trader/v1/accounts", &t).await.status, 500);

    let h = start(SimOptions {
        reset_every: Some(1),
        ..SimOptions::default()
    })
    .await;
    let t = h.sim.issue_access_token(Duration::from_secs(60));
    let req = http::Request::builder()
        .uri(format!(
            "https://localhost:{}/trader/v1/accounts",
            h.addr.port()
        ))
        .header("authorization", format!("Bearer {t}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(
        h.client.request(req).await.is_err(),
        "connection was not reset"
    );
    assert_eq!(h.sim.journal().len(), 1, "recorded before the reset");
}
