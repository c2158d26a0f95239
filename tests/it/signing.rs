//! Request signing (RFC 9421): a caller with signing keys must sign every
//! request; unsigned, badly signed, stale or replayed requests are 401 and
//! never reach the broker. The signer here builds the signature base by hand
//! (independently of the proxy's code); the RFC's own vectors are checked in
//! the unit tests of `pipeline::signature`.

use crate::common;

use base64::Engine;
use common::{Harness, TRADER};
use portcullis::config::{SigningAlg, SigningKeyConfig};
use portcullis::sim::SimOptions;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-only";

fn ed_key() -> aws_lc_rs::signature::Ed25519KeyPair {
    aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap()
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hmac.b64");
    std::fs::write(&secret_file, B64.encode(HMAC_SECRET)).unwrap();
    let public = B64.encode(aws_lc_rs::signature::KeyPair::public_key(&ed_key()).as_ref());
    let h = Harness::start_with(SimOptions::default(), move |c| {
        let t = c
            .callers
            .iter_mut()
            .find(|c| c.id == "demo-trader")
            .unwrap();
        t.signing_keys = vec![
            common::hmac_signing_key("trader-hmac", &secret_file),
            SigningKeyConfig {
                keyid: "trader-ed".into(),
                alg: SigningAlg::Ed25519,
                secret: None,
                public_key: Some(public),
            },
        ];
    })
    .await;
    // The secret file must outlive the start only.
    drop(dir);
    h
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

struct Signed {
    headers: Vec<(String, String)>,
}

/// What a client signs: the knobs the tests turn.
struct Spec<'a> {
    ed: bool,
    keyid: &'a str,
    method: &'a str,
    target: String,
    body: &'a str,
    created: i64,
    nonce: &'a str,
    cover_digest: bool,
    /// Scheme and authority of the signed `@target-uri` (default: the
    /// proxy's TLS listener).
    origin: Option<String>,
}

/// A GET of the quotes signed with the HMAC key now, with `nonce`.
fn hmac(nonce: &str) -> Spec<'_> {
    Spec {
        ed: false,
        keyid: "trader-hmac",
        method: "GET",
        target: QUOTES.into(),
        body: "",
        created: now(),
        nonce,
        cover_digest: true,
        origin: None,
    }
}

impl Spec<'_> {
    /// Signs the request the way a client library would.
    fn sign(&self, h: &Harness) -> Signed {
        let origin = self
            .origin
            .clone()
            .unwrap_or_else(|| format!("https://localhost:{}", h.proxy.port()));
        let uri = format!("{origin}{}", self.target);
        let mut headers = vec![("authorization".to_owned(), format!("Bearer {TRADER}"))];
        let mut components = vec!["\"@method\"", "\"@target-uri\""];
        let mut base = format!("\"@method\": {}\n\"@target-uri\": {uri}\n", self.method);
        if !self.body.is_empty() {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.body.as_bytes());
            let digest = format!("sha-256=:{}:", B64.encode(d.as_ref()));
            if self.cover_digest {
                components.push("\"content-digest\"");
                base.push_str(&format!("\"content-digest\": {digest}\n"));
            }
            headers.push(("content-digest".into(), digest));
        }
        let params = format!(
            "({});created={};keyid=\"{}\";nonce=\"{}\"",
            components.join(" "),
            self.created,
            self.keyid,
            self.nonce
        );
        base.push_str(&format!("\"@signature-params\": {params}"));
        let sig = if self.ed {
            ed_key().sign(base.as_bytes()).as_ref().to_vec()
        } else {
            let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, HMAC_SECRET);
            aws_lc_rs::hmac::sign(&k, base.as_bytes()).as_ref().to_vec()
        };
        headers.push(("signature-input".into(), format!("sig1={params}")));
        headers.push(("signature".into(), format!("sig1=:{}:", B64.encode(sig))));
        Signed { headers }
    }
}

async fn send(h: &Harness, method: &str, target: &str, body: &str, s: &Signed) -> common::Reply {
    let headers: Vec<(&str, &str)> = s
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let body = (!body.is_empty()).then_some(body);
    h.send_with(method, target, None, body, &headers).await
}

const QUOTES: &str = "/marketdata/v1/quotes?symbols=AAPL&fields=quote";

/// The scheme is part of what is signed: over the plaintext admin listener
/// a request signed for `http://` passes the signature check (and is then
/// judged by Cedar: a Trader may not view the proxy's status, 403), while
/// the same request signed for `https://` is refused as badly signed.
#[tokio::test]
async fn the_signed_scheme_must_be_the_connection_s() {
    let h = start().await;
    let authority = format!("127.0.0.1:{}", h.admin.port());
    for (scheme, nonce, status) in [("http", "s-1", 403), ("https", "s-2", 401)] {
        let s = Spec {
            target: "/admin/status".into(),
            origin: Some(format!("{scheme}://{authority}")),
            ..hmac(nonce)
        }
        .sign(&h);
        let mut request = format!("GET /admin/status HTTP/1.1\r\nHost: {authority}\r\n");
        for (n, v) in &s.headers {
            request.push_str(&format!("{n}: {v}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        let reply = common::parse_raw(&common::raw_plain(h.admin, &request).await);
        assert_eq!(reply.status, status, "{scheme}: {}", reply.text());
    }
    // Over TLS it is the other way round (the other tests sign https://).
    let s = Spec {
        origin: Some(format!("http://localhost:{}", h.proxy.port())),
        ..hmac("s-3")
    }
    .sign(&h);
    let r = send(&h, "GET", QUOTES, "", &s).await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn signed_requests_pass_and_everything_else_is_refused_before_the_broker() {
    let h = start().await;
    // Good: HMAC and Ed25519.
    let s = hmac("n-1").sign(&h);
    let r = send(&h, "GET", QUOTES, "", &s).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = Spec {
        ed: true,
        keyid: "trader-ed",
        ..hmac("n-2")
    }
    .sign(&h);
    assert_eq!(send(&h, "GET", QUOTES, "", &s).await.status, 200);
    let forwarded = h.journal().len();
    assert_eq!(forwarded, 2);

    let refused = |r: &common::Reply, code: &str| {
        assert_eq!(r.status, 401, "{code}: {}", r.text());
        assert_eq!(r.json()["error"], code);
    };
    // Unsigned (the key alone is not enough for this caller).
    refused(
        &h.send("GET", QUOTES, Some(TRADER), None).await,
        "signature_missing",
    );
    // Replayed: the same signed request again.
    let s = hmac("n-3").sign(&h);
    assert_eq!(send(&h, "GET", QUOTES, "", &s).await.status, 200);
    refused(&send(&h, "GET", QUOTES, "", &s).await, "signature_replayed");
    // Signed for another target.
    let other = "/marketdata/v1/quotes?symbols=GME&fields=quote";
    let s = hmac("n-4").sign(&h);
    refused(&send(&h, "GET", other, "", &s).await, "signature_invalid");
    // Stale and future `created`.
    for created in [now() - 301, now() + 301] {
        let s = Spec {
            created,
            ..hmac("n-5")
        }
        .sign(&h);
        refused(&send(&h, "GET", QUOTES, "", &s).await, "signature_expired");
    }
    // A key id the caller does not have; a wrong key under a valid id.
    let s = Spec {
        keyid: "nobody",
        ..hmac("n-6")
    }
    .sign(&h);
    refused(
        &send(&h, "GET", QUOTES, "", &s).await,
        "signature_key_unknown",
    );
    let s = Spec {
        ed: true,
        ..hmac("n-7")
    }
    .sign(&h);
    refused(&send(&h, "GET", QUOTES, "", &s).await, "signature_invalid");
    assert_eq!(
        h.journal().len(),
        forwarded + 1,
        "a refused request reached the broker"
    );
}

#[tokio::test]
async fn the_body_is_bound_by_content_digest() {
    let h = start().await;
    let hash = h.account_hash();
    let target = format!("/trader/v1/accounts/{hash}/orders");
    let order = r#"{"session":"NORMAL","duration":"DAY","orderType":"MARKET","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","quantity":10,"instrument":{"symbol":"AAPL","assetType":"EQUITY"}}]}"#;
    let s = Spec {
        method: "POST",
        target: target.to_string(),
        body: order,
        ..hmac("b-1")
    }
    .sign(&h);
    let r = send(&h, "POST", &target, order, &s).await;
    assert_eq!(r.status, 201, "{}", r.text());

    // The body changed after signing (quantity 10 → 99): the digest no
    // longer matches.
    let s = Spec {
        method: "POST",
        target: target.to_string(),
        body: order,
        ..hmac("b-2")
    }
    .sign(&h);
    let tampered = order.replace("\"quantity\":10", "\"quantity\":99");
    let r = send(&h, "POST", &target, &tampered, &s).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "content_digest_mismatch");
    // A body whose digest the signature does not cover.
    let s = Spec {
        method: "POST",
        target: target.to_string(),
        body: order,
        cover_digest: false,
        ..hmac("b-3")
    }
    .sign(&h);
    let r = send(&h, "POST", &target, order, &s).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "signature_incomplete");
    assert_eq!(h.journal().len(), 1);
}

#[tokio::test]
async fn a_failed_signature_does_not_use_up_its_nonce_and_only_the_first_label_counts() {
    let h = start().await;
    // Signed for another target: refused, and the nonce is still free.
    let s = Spec {
        target: "/marketdata/v1/markets?markets=equity".into(),
        ..hmac("z-1")
    }
    .sign(&h);
    assert_eq!(send(&h, "GET", QUOTES, "", &s).await.status, 401);
    let s = hmac("z-1").sign(&h);
    assert_eq!(send(&h, "GET", QUOTES, "", &s).await.status, 200);

    // Two signatures: a bad one first and a good one second. Only the first
    // naming the caller's key is checked (no multiplied verification work).
    let good = hmac("z-2").sign(&h);
    let bad = Spec {
        target: "/elsewhere".into(),
        ..hmac("z-3")
    }
    .sign(&h);
    let field = |s: &Signed, n: &str| {
        s.headers
            .iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .replacen("sig1=", "", 1)
    };
    // Both signatures in one request, `first` listed first in Signature-Input.
    let two = |first: (&str, &Signed), second: (&str, &Signed)| Signed {
        headers: vec![
            ("authorization".into(), format!("Bearer {TRADER}")),
            (
                "signature-input".into(),
                format!(
                    "{}={}, {}={}",
                    first.0,
                    field(first.1, "signature-input"),
                    second.0,
                    field(second.1, "signature-input")
                ),
            ),
            (
                "signature".into(),
                format!(
                    "a={}, b={}",
                    field(&bad, "signature"),
                    field(&good, "signature")
                ),
            ),
        ],
    };
    let both = two(("a", &bad), ("b", &good));
    assert_eq!(send(&h, "GET", QUOTES, "", &both).await.status, 401);
    let swapped = two(("b", &good), ("a", &bad));
    assert_eq!(send(&h, "GET", QUOTES, "", &swapped).await.status, 200);
}

#[tokio::test]
async fn the_signed_authority_is_the_one_the_request_names() {
    let h = start().await;
    // Signed for localhost:port, sent with another Host: @target-uri differs.
    let s = hmac("h-1").sign(&h);
    let mut headers: Vec<(&str, &str)> = s
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    headers.push(("host", "proxy.other-environment.example"));
    let r = h.send_with("GET", QUOTES, None, None, &headers).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(h.journal().is_empty());
}

#[tokio::test]
async fn configured_authorities_refuse_a_request_signed_for_another_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hmac.b64");
    std::fs::write(&secret_file, B64.encode(HMAC_SECRET)).unwrap();
    let h = Harness::start_with(SimOptions::default(), move |c| {
        c.signatures.authorities = vec!["trading-proxy.example".into()];
        let t = c
            .callers
            .iter_mut()
            .find(|c| c.id == "demo-trader")
            .unwrap();
        t.signing_keys = vec![common::hmac_signing_key("trader-hmac", &secret_file)];
    })
    .await;
    // A valid signature, but for localhost:<port>, not the configured name.
    let s = hmac("c-1").sign(&h);
    assert_eq!(send(&h, "GET", QUOTES, "", &s).await.status, 401);
    assert!(h.journal().is_empty());
}
