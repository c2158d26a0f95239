//! Secrets never leak: a session that exercises every credential path —
//! API keys, proxy tokens (grant, refresh, reuse), TOTP, request signing,
//! Schwab token refreshes, a failed refresh, a rotation, the admin
//! credential endpoints, bad input of every kind — with the log captured at
//! debug level (trace for portcullis), then every secret the test set up or
//! saw is searched for in the log, every response (headers and body) and
//! the metrics.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::{Harness, SUPERADMIN, TRADER, VIEWER};
use portcullis::config::LogFormat;
use portcullis::sim::SimOptions;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const SIGNING_SECRET: &[u8] = b"signing-secret-0123456789abcdef-0123456789";
const QUOTES: &str = "/marketdata/v1/quotes?symbols=AAPL&fields=quote";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_a_response_or_a_metric() {
    let log = Captured::default();
    let guard =
        portcullis::telemetry::init_to(LogFormat::Json, "debug,portcullis=trace", log.clone())
            .expect("subscriber");

    let dir = tempfile::tempdir().unwrap();
    let signing_file = dir.path().join("signing.b64");
    std::fs::write(&signing_file, B64.encode(SIGNING_SECRET)).unwrap();
    let h = Harness::start_with(
        SimOptions {
            access_token_ttl: Duration::from_secs(2),
            ..SimOptions::default()
        },
        move |c| {
            c.reload.interval = "100ms".parse().unwrap();
            let t = c
                .callers
                .iter_mut()
                .find(|c| c.id == "demo-trader")
                .unwrap();
            t.signing_keys = vec![common::hmac_signing_key("trader-key-1", &signing_file)];
        },
    )
    .await;
    let mut seen = String::new();
    let mut keep = |r: &common::Reply| {
        for (n, v) in &r.headers {
            seen.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        seen.push_str(&r.text());
        seen.push('\n');
    };
    let basic = common::basic;

    // API keys: good, wrong, malformed.
    let first = h.send("GET", QUOTES, Some(VIEWER), None).await;
    let first_id = first.headers["x-request-id"].to_str().unwrap().to_owned();
    keep(&first);
    keep(&h.send("GET", QUOTES, Some("not-a-real-key"), None).await);
    keep(
        &h.send("GET", QUOTES, Some(&format!("{VIEWER}x")), None)
            .await,
    );
    // The trader must sign: unsigned and badly signed.
    keep(&h.send("GET", QUOTES, Some(TRADER), None).await);
    keep(
        &h.send_with(
            "GET",
            QUOTES,
            Some(TRADER),
            None,
            &[
                ("signature-input", "sig1=(\"@method\" \"@target-uri\");created=1;keyid=\"trader-key-1\";nonce=\"x\""),
                ("signature", "sig1=:AAAA:"),
            ],
        )
        .await,
    );
    // Proxy tokens: grant, use, refresh, reuse, wrong secret, bad otp.
    let r = h
        .post_form(
            "/v1/oauth/token",
            Some(&basic("demo-viewer", VIEWER)),
            "grant_type=client_credentials",
        )
        .await;
    // (Successful grants deliver tokens to their owner: not kept.)
    let at = r.json()["access_token"].as_str().unwrap().to_owned();
    let rt = r.json()["refresh_token"].as_str().unwrap().to_owned();
    keep(&h.send("GET", QUOTES, Some(&at), None).await);
    let form = format!("grant_type=refresh_token&refresh_token={rt}");
    let r2 = h
        .post_form(
            "/v1/oauth/token",
            Some(&basic("demo-viewer", VIEWER)),
            &form,
        )
        .await;
    assert_eq!(r2.status, 200, "{}", r2.text());
    let at2 = r2.json()["access_token"].as_str().unwrap().to_owned();
    let rt2 = r2.json()["refresh_token"].as_str().unwrap().to_owned();
    keep(
        &h.post_form(
            "/v1/oauth/token",
            Some(&basic("demo-viewer", VIEWER)),
            &form,
        )
        .await,
    );
    keep(
        &h.post_form(
            "/v1/oauth/token",
            Some(&basic("demo-viewer", "wrong-secret-value")),
            "grant_type=client_credentials",
        )
        .await,
    );
    keep(
        &h.post_form(
            "/v1/oauth/token",
            Some(&basic("demo-superadmin", SUPERADMIN)),
            "grant_type=client_credentials&otp=123456",
        )
        .await,
    );
    // MFA session, admin credential endpoints.
    let code = common::demo_otp(1);
    let r = h
        .post_form(
            "/v1/oauth/token",
            Some(&basic("demo-superadmin", SUPERADMIN)),
            &format!("grant_type=client_credentials&otp={code}"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let admin_token = r.json()["access_token"].as_str().unwrap().to_owned();
    keep(&h.admin_get_as("/credentials/status", &admin_token).await);
    keep(
        &h.admin_post("/credentials/reload", Some(&admin_token))
            .await,
    );
    keep(&h.admin_get_as("/credentials/status", SUPERADMIN).await);
    // Schwab refreshes (2 s tokens), then a rotated app secret that the
    // simulator does not know yet (a refused refresh), then the right one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let secret_file = h.dir.path().join("demo").join("schwab-app-secret");
    std::fs::write(&secret_file, "rotated-app-secret-not-yet-known\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.sim.set_app_secret("rotated-app-secret-now-known");
    std::fs::write(&secret_file, "rotated-app-secret-now-known\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    keep(&h.send("GET", QUOTES, Some(VIEWER), None).await);
    // Bad input of other kinds.
    keep(
        &h.send(
            "POST",
            &format!("/trader/v1/accounts/{}/orders", h.account_hash()),
            Some(VIEWER),
            Some("{\"orderType\":"),
        )
        .await,
    );
    keep(
        &h.send("GET", "/trader/v1/accounts/%2e%2e/x", Some(VIEWER), None)
            .await,
    );
    keep(&h.admin_get("/readyz").await);
    let metrics = h.admin_get("/metrics").await.text();

    // Every secret this test set up or saw.
    let store_key =
        std::fs::read_to_string(h.dir.path().join("demo").join("token-store.key")).unwrap();
    let mut secrets: Vec<String> = vec![
        VIEWER.into(),
        TRADER.into(),
        SUPERADMIN.into(),
        common::ADMIN.into(),
        h.sim.options().app_secret.clone(),
        "rotated-app-secret-not-yet-known".into(),
        "rotated-app-secret-now-known".into(),
        store_key.trim().into(),
        portcullis::demo::DEMO_TOTP_SECRET.into(),
        B64.encode(SIGNING_SECRET),
        String::from_utf8_lossy(SIGNING_SECRET).into_owned(),
        at,
        rt,
        at2,
        rt2,
        admin_token,
    ];
    // The Schwab tokens the simulator handed out, as the journal shows them.
    for e in h.journal() {
        for v in e.header("authorization") {
            if let Some(t) = v.strip_prefix("Bearer ") {
                secrets.push(t.to_owned());
            }
            if let Some(b) = v.strip_prefix("Basic ") {
                secrets.push(b.to_owned());
            }
        }
        for part in e.body.split('&') {
            if let Some(t) = part
                .strip_prefix("refresh_token=")
                .or_else(|| part.strip_prefix("code="))
            {
                secrets.push(t.to_owned());
            }
        }
    }
    secrets.retain(|s| s.len() >= 8);
    assert!(
        secrets.iter().any(|s| s.starts_with("sim-at-")),
        "no Schwab token was seen"
    );
    assert!(
        secrets.iter().any(|s| s.starts_with("sim-rt-")),
        "no Schwab refresh was seen"
    );

    drop(h);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(guard); // flushes the log
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("Schwab access token refreshed"),
        "the log was not captured"
    );
    assert!(
        log.contains("Schwab refused") || log.contains("token refresh failed"),
        "no failed refresh was logged"
    );
    // Every request's line carries its request id (the one its response
    // names), and so does every line logged while handling a request.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["message"] == "request").collect();
    assert!(requests.len() > 10, "{} request lines", requests.len());
    for l in &requests {
        let id = l["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id: {l}"));
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{l}"
        );
    }
    let of_first: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["request_id"] == first_id.as_str())
        .collect();
    assert!(
        of_first
            .iter()
            .any(|l| l["message"] == "request" && l["status"] == 200),
        "the first request's line: {of_first:?}"
    );
    let verified: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["message"] == "a spent refresh token was presented again; the session is revoked"
        })
        .collect();
    assert!(!verified.is_empty());
    for l in verified {
        let id = l["request_id"].as_str().unwrap_or("");
        assert!(
            requests.iter().any(|r| r["request_id"] == id),
            "a line logged while handling a request lacks its id: {l}"
        );
    }
    // Lines of background work (token refreshes) belong to no request.
    assert!(
        lines
            .iter()
            .filter(|l| l["message"] == "Schwab access token refreshed")
            .all(|l| l.get("request_id").is_none())
    );
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "the log contains a secret ({}…)",
            &s[..4]
        );
        assert!(
            !seen.contains(s.as_str()),
            "a response contains a secret ({}…)",
            &s[..4]
        );
        assert!(
            !metrics.contains(s.as_str()),
            "the metrics contain a secret ({}…)",
            &s[..4]
        );
    }
}

/// A request the client abandons is logged when its handling is dropped
/// (`cancelled`, status 499) — with its request id like any other line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_s_line_carries_its_id() {
    use tokio::io::AsyncWriteExt;
    let log = Captured::default();
    let guard =
        portcullis::telemetry::init_to(LogFormat::Json, "info", log.clone()).expect("subscriber");
    let h = Harness::start_with(
        SimOptions {
            latency: Duration::from_secs(3),
            ..SimOptions::default()
        },
        |_| {},
    )
    .await;
    let mut s = h.tls_stream().await;
    let request = format!(
        "GET {QUOTES} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {VIEWER}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    h.wait_for_upstream_request().await;
    drop(s);
    let mut line = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "request" && l["cancelled"] == true);
        if line.is_some() {
            break;
        }
    }
    let line = line.expect("no line for the abandoned request");
    assert_eq!(line["status"], 499, "{line}");
    let id = line["request_id"].as_str().unwrap_or("");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{line}"
    );
    drop(h);
    drop(guard);
}
