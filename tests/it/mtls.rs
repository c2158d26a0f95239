//! mTLS: a verified client certificate whose SAN names a caller identifies
//! it; certificates from another CA, or none where one is required, never
//! get a connection; a certificate and a bearer credential of different
//! callers are refused.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::{Harness, TRADER, VIEWER, send_on};
use http_body_util::Full;
use portcullis::certs::DevCa;
use portcullis::config::ClientCertMode;
use portcullis::sim::SimOptions;

const QUOTES: &str = "/marketdata/v1/quotes?symbols=AAPL&fields=quote";

struct Pki {
    ca: DevCa,
    dir: tempfile::TempDir,
}

fn pki() -> Pki {
    let ca = DevCa::new("client CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-ca.pem"), &ca.ca_pem).unwrap();
    Pki { ca, dir }
}

async fn start(p: &Pki, mode: ClientCertMode) -> Harness {
    let ca_file = p.dir.path().join("client-ca.pem");
    Harness::start_with(SimOptions::default(), move |c| {
        let tls = c.listen[0].tls.as_mut().unwrap();
        tls.client_ca_file = Some(ca_file);
        tls.client_cert = mode;
        c.callers
            .iter_mut()
            .find(|c| c.id == "demo-trader")
            .unwrap()
            .client_cert_names = vec!["bot-1.trading.example".into()];
    })
    .await
}

fn get(h: &Harness, key: Option<&str>) -> http::Request<Full<Bytes>> {
    let mut b =
        http::Request::builder().uri(format!("https://localhost:{}{QUOTES}", h.proxy.port()));
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn a_client_certificate_identifies_its_caller() {
    let p = pki();
    let h = start(&p, ClientCertMode::Required).await;
    let bot = p.ca.client(&["bot-1.trading.example"]).unwrap();
    let client = common::client_with_cert(&h.ca_pem, &bot.cert_pem, &bot.key_pem);

    // No bearer: the certificate alone identifies demo-trader.
    let r = send_on(&client, get(&h, None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The same caller's key as well: fine.
    assert_eq!(send_on(&client, get(&h, Some(TRADER))).await.status, 200);
    // Another caller's key on this certificate: refused, never forwarded.
    let before = h.journal().len();
    assert_eq!(send_on(&client, get(&h, Some(VIEWER))).await.status, 401);
    assert_eq!(h.journal().len(), before);

    // A certificate of the right CA naming nobody: no identity by itself.
    let stranger = p.ca.client(&["someone.else.example"]).unwrap();
    let client = common::client_with_cert(&h.ca_pem, &stranger.cert_pem, &stranger.key_pem);
    assert_eq!(send_on(&client, get(&h, None)).await.status, 401);
    assert_eq!(send_on(&client, get(&h, Some(VIEWER))).await.status, 200);
    assert_eq!(h.journal().len(), before + 1);
}

#[tokio::test]
async fn without_a_certificate_of_the_client_ca_there_is_no_connection() {
    let p = pki();
    let h = start(&p, ClientCertMode::Required).await;
    // A certificate naming the trader, signed by another CA.
    let forged = DevCa::new("attacker CA")
        .unwrap()
        .client(&["bot-1.trading.example"])
        .unwrap();
    let client = common::client_with_cert(&h.ca_pem, &forged.cert_pem, &forged.key_pem);
    let req = get(&h, Some(TRADER));
    let r = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .unwrap();
    assert!(r.is_err(), "a certificate from another CA got a response");
    // No certificate at all, on a listener that requires one.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        h.h2_client().request(get(&h, Some(TRADER))),
    )
    .await
    .unwrap();
    assert!(r.is_err(), "no certificate got a response");
    assert!(h.journal().is_empty());
}

#[tokio::test]
async fn optional_client_certificates_leave_bearer_callers_working() {
    let p = pki();
    let h = start(&p, ClientCertMode::Optional).await;
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
    assert_eq!(h.send("GET", QUOTES, None, None).await.status, 401);
    let bot = p.ca.client(&["bot-1.trading.example"]).unwrap();
    let client = common::client_with_cert(&h.ca_pem, &bot.cert_pem, &bot.key_pem);
    assert_eq!(send_on(&client, get(&h, None)).await.status, 200);
}

#[tokio::test]
async fn the_token_endpoint_refuses_a_certificate_of_another_caller() {
    let p = pki();
    let h = start(&p, ClientCertMode::Optional).await;
    let bot = p.ca.client(&["bot-1.trading.example"]).unwrap();
    let client = common::client_with_cert(&h.ca_pem, &bot.cert_pem, &bot.key_pem);
    let grant = |id: &str, key: &str| {
        http::Request::builder()
            .method("POST")
            .uri(format!(
                "https://localhost:{}/v1/oauth/token",
                h.proxy.port()
            ))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", common::basic(id, key))
            .body(Full::new(Bytes::from_static(
                b"grant_type=client_credentials",
            )))
            .unwrap()
    };
    // The certificate names demo-trader; the credentials are the viewer's.
    let r = send_on(&client, grant("demo-viewer", VIEWER)).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_client");
    let r = send_on(&client, grant("demo-trader", TRADER)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn a_certificate_naming_two_callers_identifies_nobody() {
    let p = pki();
    let ca_file = p.dir.path().join("client-ca.pem");
    let h = Harness::start_with(SimOptions::default(), move |c| {
        let tls = c.listen[0].tls.as_mut().unwrap();
        tls.client_ca_file = Some(ca_file);
        tls.client_cert = ClientCertMode::Required;
        for (id, name) in [
            ("demo-trader", "bot-1.example"),
            ("demo-admin", "admin-1.example"),
        ] {
            c.callers
                .iter_mut()
                .find(|c| c.id == id)
                .unwrap()
                .client_cert_names = vec![name.into()];
        }
    })
    .await;
    let both = p.ca.client(&["bot-1.example", "admin-1.example"]).unwrap();
    let client = common::client_with_cert(&h.ca_pem, &both.cert_pem, &both.key_pem);
    assert_eq!(send_on(&client, get(&h, None)).await.status, 401);
    assert_eq!(send_on(&client, get(&h, Some(TRADER))).await.status, 401);
    assert!(h.journal().is_empty());
}
