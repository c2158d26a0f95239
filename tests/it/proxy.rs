//! End-to-end: proxy in front of the in-process simulator over real TLS.
//! Every refusal is checked twice — the status, and that the simulator's
//! journal never saw the request.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use portcullis::sim::SimOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn known_key_reads_quotes_and_upstream_sees_only_the_schwab_token() {
    let h = Harness::start().await;
    let r = h
        .send(
            "GET",
            "/marketdata/v1/quotes?symbols=AAPL,%24SPX&fields=quote",
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert!(j["AAPL"]["quote"]["lastPrice"].as_f64().is_some(), "{j}");
    assert!(j["$SPX"].is_object(), "{j}");
    assert!(r.headers.contains_key("x-request-id"));

    let journal = h.journal();
    assert_eq!(journal.len(), 1);
    let e = &journal[0];
    assert_eq!(
        e.path, "/marketdata/v1/quotes?symbols=AAPL,%24SPX&fields=quote",
        "query forwarded raw"
    );
    let auth = e.header("authorization");
    assert_eq!(auth.len(), 1);
    assert!(auth[0].starts_with("Bearer sim-at-"), "{auth:?}");
    for (name, value) in &e.headers {
        assert!(
            !value.contains(VIEWER),
            "caller key leaked upstream in {name}"
        );
    }
    assert_eq!(
        e.header("x-request-id"),
        vec![r.headers["x-request-id"].to_str().unwrap()]
    );
}

#[tokio::test]
async fn missing_or_unknown_key_is_401_and_never_forwarded() {
    let h = Harness::start().await;
    for key in [None, Some("not-a-key"), Some("demo-viewer-key2"), Some("")] {
        let r = h.send("GET", "/trader/v1/accounts", key, None).await;
        assert_eq!(r.status, 401, "{key:?}");
        assert!(r.headers.contains_key("www-authenticate"));
        assert_eq!(r.json()["error"], "unauthenticated");
    }
    let r = h
        .send_with(
            "GET",
            "/trader/v1/accounts",
            None,
            None,
            &[("authorization", "Basic ZGVtbzpkZW1v")],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(
        h.journal().is_empty(),
        "refused requests reached the upstream"
    );
}

#[tokio::test]
async fn unmatched_route_is_404_and_never_forwarded() {
    let h = Harness::start().await;
    for path in [
        "/trader/v1/nothing",
        "/trader/v2/accounts",
        "/v1/oauth/authorize?client_id=x&redirect_uri=https://127.0.0.1",
        "/__sim/journal",
        "/",
        "/trader/v1/userPreference/",
    ] {
        let r = h.send("GET", path, Some(VIEWER), None).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "no_route");
    }
    let r = h
        .send("PATCH", "/trader/v1/accounts", Some(VIEWER), None)
        .await;
    assert_eq!(r.status, 404);
    // The token endpoint is the proxy's own (POST only), never Schwab's.
    let r = h.send("GET", "/v1/oauth/token", Some(VIEWER), None).await;
    assert_eq!(r.status, 405);
    assert!(h.journal().is_empty());
}

#[tokio::test]
async fn path_tricks_are_refused_and_never_forwarded() {
    let h = Harness::start().await;
    let hash = h.account_hash();
    let tricks: Vec<(String, u16)> = vec![
        (format!("/trader/v1/accounts/{hash}/../orders"), 400),
        (format!("/trader/v1/accounts/{hash}/%2e%2e/orders"), 400),
        (format!("/trader/v1/accounts/{hash}/%2E%2E/orders"), 400),
        ("/trader/v1/accounts/%2e".into(), 400),
        ("/trader/v1/./accounts".into(), 400),
        ("/trader/v1//accounts".into(), 400),
        ("/marketdata/v1//ES/quotes".into(), 400),
        ("/trader/v1/accounts/%5c..%5corders".into(), 400),
        ("/trader/v1/accounts\\..\\orders".into(), 400),
        ("/trader/v1/accounts/%252e%252e/orders".into(), 400),
        ("/trader/v1/accounts/%00".into(), 400),
        ("/trader/v1/accounts;jsessionid=1".into(), 400),
        ("/trader/v1/accounts/%3b".into(), 400),
        (format!("/trader/v1/accounts/{hash}%2Forders"), 404),
        ("/trader/v1/accounts/%".into(), 400),
        ("/marketdata/v1/quotes?symbols=A%00B".into(), 400),
        (
            "/marketdata/v1/quotes?symbols=%0d%0aX-Evil:%201".into(),
            400,
        ),
        ("/%74rader/v1/accounts".into(), 404),
        // A symbol that would become a path if the upstream decoded %2F.
        (
            "/marketdata/v1/movers/..%2F..%2F..%2Ftrader%2Fv1%2Faccounts".into(),
            404,
        ),
        (
            "/marketdata/v1/..%2F..%2Ftrader%2Fv1%2Forders/quotes".into(),
            404,
        ),
        // Two routes fit as well as each other: refused, not guessed.
        ("/marketdata/v1/movers/quotes".into(), 400),
    ];
    for (target, want) in &tricks {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {VIEWER}\r\nConnection: close\r\n\r\n"
        );
        let raw = h.raw(req.as_bytes()).await;
        let status = raw_status(&raw);
        // hyper refuses some targets itself (400) before the pipeline sees them.
        assert_eq!(status, *want, "{target}: {}", String::from_utf8_lossy(&raw));
    }
    assert!(
        h.journal().is_empty(),
        "a path trick reached the upstream: {:?}",
        h.journal()
    );
    // And the legitimate encodings real clients send still work.
    for ok in [
        "/marketdata/v1/$SPX/quotes",
        "/marketdata/v1/%24SPX/quotes",
        "/marketdata/v1/%2FES/quotes",
    ] {
        let r = h.send("GET", ok, Some(VIEWER), None).await;
        assert_eq!(r.status, 200, "{ok}: {}", r.text());
    }
    let r = h
        .send("GET", "/trader/v1/accounts/", Some(VIEWER), None)
        .await;
    assert_eq!(r.status, 200, "Schwabdev's trailing slash");
    let seen: Vec<String> = h.journal().iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        seen,
        vec![
            "/marketdata/v1/$SPX/quotes",
            "/marketdata/v1/%24SPX/quotes",
            "/marketdata/v1/%2FES/quotes",
            "/trader/v1/accounts/"
        ],
        "forwarded raw, not normalised"
    );
}

#[tokio::test]
async fn oversized_body_is_413_and_never_forwarded() {
    let h = Harness::start().await;
    let path = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let r = h.send("POST", &path, Some(TRADER), Some(&big)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body_too_large");
    // Chunked, no Content-Length: the limit still holds.
    let chunk = "y".repeat(40 * 1024);
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TRADER}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    assert_eq!(raw_status(&h.raw(req.as_bytes()).await), 413);
    assert!(h.journal().is_empty());
}

#[tokio::test]
async fn body_on_a_get_route_is_refused() {
    let h = Harness::start().await;
    let r = h
        .send("GET", "/trader/v1/accounts", Some(VIEWER), Some("{}"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "body_not_allowed");
    assert!(h.journal().is_empty());
}

#[tokio::test]
async fn duplicate_authorization_or_host_is_400_and_never_forwarded() {
    let h = Harness::start().await;
    for extra in [
        format!("Authorization: Bearer {VIEWER}\r\n"),
        "Authorization: Bearer someone-else\r\n".to_string(),
        "Host: evil.example\r\n".to_string(),
    ] {
        let req = format!(
            "GET /trader/v1/accounts HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {VIEWER}\r\n{extra}Connection: close\r\n\r\n"
        );
        let raw = h.raw(req.as_bytes()).await;
        assert_eq!(raw_status(&raw), 400, "{extra}");
    }
    assert!(h.journal().is_empty());
}

#[tokio::test]
async fn method_override_headers_are_refused_and_never_forwarded() {
    let h = Harness::start().await;
    let path = format!(
        "/trader/v1/accounts/{}/orders/1003456789012",
        h.account_hash()
    );
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let r = h
            .send_with("GET", &path, Some(TRADER), None, &[(name, "DELETE")])
            .await;
        assert_eq!(r.status, 400, "{name}");
        assert_eq!(r.json()["error"], "method_override");
    }
    assert!(h.journal().is_empty());
}

#[tokio::test]
async fn oversized_head_is_431_and_never_forwarded() {
    let h = Harness::start().await;
    let big = "a".repeat(17 * 1024);
    let req = format!(
        "GET /trader/v1/accounts HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {VIEWER}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_status(&h.raw(req.as_bytes()).await), 431);
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!(
        "GET /trader/v1/accounts HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {VIEWER}\r\n{many}Connection: close\r\n\r\n"
    );
    assert_eq!(raw_status(&h.raw(req.as_bytes()).await), 431);
    assert!(h.journal().is_empty());
}

#[tokio::test]
async fn hop_by_hop_and_forwarding_headers_are_stripped() {
    let h = Harness::start().await;
    let r = h
        .send_with(
            "GET",
            "/trader/v1/accounts/accountNumbers",
            Some(VIEWER),
            None,
            &[
                ("connection", "x-internal-hop"),
                ("x-internal-hop", "secret"),
                ("x-forwarded-for", "10.0.0.1"),
                ("forwarded", "for=10.0.0.1"),
                ("proxy-authorization", "Basic abc"),
                ("x-original-url", "/trader/v1/orders"),
                ("true-client-ip", "10.0.0.2"),
                ("x-request-id", "spoofed-id"),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let e = &h.journal()[0];
    for gone in [
        "x-internal-hop",
        "x-forwarded-for",
        "forwarded",
        "proxy-authorization",
    ] {
        assert!(e.header(gone).is_empty(), "{gone} reached the upstream");
    }
    assert_ne!(e.header("x-request-id"), vec!["spoofed-id"]);
    assert_eq!(e.header("accept"), vec!["application/json"]);
    assert!(!r.headers.contains_key("server"));
}

#[tokio::test]
async fn orders_round_trip_with_location_unchanged() {
    let h = Harness::start().await;
    let hash = h.account_hash();
    let path = format!("/trader/v1/accounts/{hash}/orders");
    let r = h.send("POST", &path, Some(TRADER), Some(LIMIT_ORDER)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.body.is_empty());
    let loc = r.headers["location"].to_str().unwrap().to_owned();
    let prefix = format!("https://api.schwabapi.com/trader/v1/accounts/{hash}/orders/");
    assert!(loc.starts_with(&prefix), "Location rewritten: {loc}");
    let id = loc.rsplit('/').next().unwrap().to_owned();
    // The body upstream is byte for byte the body sent.
    assert_eq!(h.journal()[0].body, LIMIT_ORDER);

    let r = h
        .send("GET", &format!("{path}/{id}"), Some(TRADER), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "WORKING");
    let r = h
        .send(
            "PUT",
            &format!("{path}/{id}"),
            Some(TRADER),
            Some(MARKET_ORDER),
        )
        .await;
    assert_eq!(r.status, 201);
    let new_id = r.headers["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(new_id, id);
    let r = h
        .send("GET", &format!("{path}/{id}"), Some(TRADER), None)
        .await;
    assert_eq!(r.json()["status"], "REPLACED");
    let r = h
        .send("GET", &format!("{path}/{new_id}"), Some(TRADER), None)
        .await;
    assert_eq!(r.json()["status"], "FILLED");
    let r = h
        .send("DELETE", &format!("{path}/{new_id}"), Some(TRADER), None)
        .await;
    assert_eq!(
        r.status,
        400,
        "a filled order cannot be cancelled: {}",
        r.text()
    );
    assert!(
        r.json()["message"].is_string(),
        "Schwab's error body passes through"
    );
}

#[tokio::test]
async fn http2_works_through_alpn() {
    let h = Harness::start().await;
    let c = h.h2_client();
    let req = h.get_request("/trader/v1/accounts?fields=positions", VIEWER);
    let r = send_on(&c, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().map(|a| a.len()), Some(2));
}

#[tokio::test]
async fn slow_header_sender_is_cut_off_while_others_are_served() {
    let h = Harness::start_with(SimOptions::default(), |c| {
        c.limits.header_read_timeout = "1s".parse().unwrap();
    })
    .await;
    let mut slow = h.tls_stream().await;
    slow.write_all(b"GET /trader/v1/accounts HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // While the slow client dribbles, a normal client is served.
    let r = h
        .send(
            "GET",
            "/trader/v1/accounts/accountNumbers",
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let mut buf = Vec::new();
    let mut cut = false;
    for _ in 0..20 {
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            cut = true;
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), slow.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => {
                cut = true; // the server answered (408) and is closing
                break;
            }
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(cut, "slow sender was not cut off after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(4),
        "cut off too late: {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "cut off before the timeout: {elapsed:?}"
    );
    assert_eq!(
        h.journal().len(),
        1,
        "only the normal request reached the upstream"
    );
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    // A closed port: connection refused.
    let h = Harness::start_with(SimOptions::default(), |c| {
        c.upstream.base_url = "https://127.0.0.1:1".into();
    })
    .await;
    let r = h
        .send("GET", "/trader/v1/accounts", Some(VIEWER), None)
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert!(
        !r.text().contains("127.0.0.1"),
        "internal address leaked: {}",
        r.text()
    );

    let h = Harness::start_with(
        SimOptions {
            latency: Duration::from_millis(1500),
            ..SimOptions::default()
        },
        |c| {
            c.upstream.response_header_timeout = "300ms".parse().unwrap();
        },
    )
    .await;
    let r = h
        .send("GET", "/trader/v1/accounts", Some(VIEWER), None)
        .await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
}

/// The broker drops its connection (a deploy, an idle timeout): the request
/// on it is answered 502 and is not sent again on its own (an order must
/// never reach the broker twice), and the next request gets a new
/// connection. Run on both upstream protocols.
#[tokio::test]
async fn a_dropped_upstream_connection_is_replaced_and_nothing_is_resent() {
    for http2 in [true, false] {
        let h = Harness::start_with(
            SimOptions {
                reset_every: Some(3),
                ..SimOptions::default()
            },
            |c| c.upstream.http2 = http2,
        )
        .await;
        assert_eq!(
            quotes_with_pauses(&h, 9, Duration::ZERO).await,
            [200, 200, 502, 200, 200, 502, 200, 200, 502],
            "http2: {http2}"
        );
        assert_eq!(
            quotes_journaled(&h),
            9,
            "each request reached the broker once (http2: {http2})"
        );
    }
}

/// Quotes sent one after another with `pause` between them; their statuses.
async fn quotes_with_pauses(h: &Harness, n: usize, pause: Duration) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        let r = h
            .send(
                "GET",
                "/marketdata/v1/quotes?symbols=AAPL",
                Some(VIEWER),
                None,
            )
            .await;
        statuses.push(r.status);
    }
    statuses
}

fn quotes_journaled(h: &Harness) -> usize {
    h.journal()
        .iter()
        .filter(|e| e.path.starts_with("/marketdata/v1/quotes"))
        .count()
}

async fn upstream_connects(h: &Harness, outcome: &str) -> f64 {
    let m = h.admin_get("/metrics").await.text();
    metric(
        &m,
        &format!("portcullis_upstream_connects_total{{outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test]
async fn a_broker_closing_idle_connections_gracefully_costs_no_request() {
    // The simulator sends GOAWAY on every connection idle for 150 ms; the
    // requests come 500 ms apart, so each finds its connection closed.
    for http2 in [true, false] {
        let h = Harness::start_with(
            SimOptions {
                idle_timeout: Some(Duration::from_millis(150)),
                ..SimOptions::default()
            },
            |c| c.upstream.http2 = http2,
        )
        .await;
        let statuses = quotes_with_pauses(&h, 5, Duration::from_millis(500)).await;
        assert_eq!(statuses, [200; 5], "http2: {http2}");
        assert_eq!(
            quotes_journaled(&h),
            5,
            "each reached the broker once (http2: {http2})"
        );
        let expected = if http2 { 5.0 } else { 0.0 };
        assert_eq!(
            upstream_connects(&h, "h2").await,
            expected,
            "a new connection per request (http2: {http2})"
        );
    }
}

#[tokio::test]
async fn a_request_the_dying_connection_never_took_is_sent_on_a_new_one() {
    // One upstream connection; the simulator opens one stream at a time,
    // answers after 500 ms, and resets the connection of its 2nd request.
    let h = Harness::start_with(
        SimOptions {
            h2_max_concurrent_streams: Some(1),
            latency: Duration::from_millis(500),
            reset_every: Some(2),
            ..SimOptions::default()
        },
        |c| c.upstream.http2_connections = 1,
    )
    .await;
    assert_eq!(quotes_with_pauses(&h, 1, Duration::ZERO).await, [200]);
    // Three at once: one takes the only stream and is reset with its
    // connection (502); one waits inside the HTTP/2 connection for a
    // stream and fails with it (502: it may not be sent twice, and
    // nothing proves it was not); the third is still queued for the
    // connection, comes back unsent and goes on a new connection (200).
    let q = "/marketdata/v1/quotes?symbols=AAPL";
    let (a, b, c) = tokio::join!(
        h.send("GET", q, Some(VIEWER), None),
        h.send("GET", q, Some(VIEWER), None),
        h.send("GET", q, Some(VIEWER), None),
    );
    let mut statuses = [a.status, b.status, c.status];
    statuses.sort();
    assert_eq!(statuses, [200, 502, 502]);
    // The first, the reset one and the resent one: none arrived twice.
    assert_eq!(quotes_journaled(&h), 3);
    assert_eq!(upstream_connects(&h, "h2").await, 2.0);
}

/// A TCP relay whose connections can be frozen: bytes stop flowing both
/// ways while the sockets stay open, as when a broker or a NAT on the way
/// vanishes without closing anything. Connections accepted after a freeze
/// flow normally. The target is set once it is known.
struct Relay {
    addr: std::net::SocketAddr,
    target: std::sync::Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    frozen: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
}

impl Relay {
    async fn start() -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex, OnceLock};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target: Arc<OnceLock<std::net::SocketAddr>> = Arc::default();
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let (t, f) = (target.clone(), frozen.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Some(to) = t.get().copied() else { continue };
                let Ok(outbound) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                f.lock().unwrap().push(flag.clone());
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                for (mut r, mut w) in [(ir, ow), (or, iw)] {
                    let flag = flag.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if flag.load(Ordering::SeqCst) {
                                // Swallow everything; keep both sockets open.
                                continue;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Relay {
            addr,
            target,
            frozen,
        }
    }

    fn freeze(&self) {
        for f in self.frozen.lock().unwrap().iter() {
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn an_upstream_connection_that_stops_answering_is_replaced() {
    let relay = Relay::start().await;
    let relay_addr = relay.addr;
    let h = Harness::start_with(SimOptions::default(), move |c| {
        c.upstream.base_url = format!("https://{relay_addr}");
        c.upstream.http2_connections = 1;
        c.upstream.response_header_timeout.0 = Duration::from_millis(1500);
        c.upstream.total_timeout.0 = Duration::from_millis(1500);
        c.upstream.keep_alive_interval = Some(portcullis::config::Dur(Duration::from_millis(200)));
        c.upstream.keep_alive_timeout.0 = Duration::from_millis(300);
    })
    .await;
    relay.target.set(h.sim_addr).unwrap();
    assert_eq!(quotes_with_pauses(&h, 1, Duration::ZERO).await, [200]);
    relay.freeze();
    // Into the silent connection: the unanswered PINGs get it closed after
    // ~0.5 s, which fails the request (502) before its 1.5 s timeout (504).
    assert_eq!(quotes_with_pauses(&h, 1, Duration::ZERO).await, [502]);
    // The next request dials a new connection, which answers.
    assert_eq!(quotes_with_pauses(&h, 1, Duration::ZERO).await, [200]);
    assert_eq!(upstream_connects(&h, "h2").await, 2.0);
}

#[tokio::test]
async fn idle_upstream_connections_are_given_up_after_the_pool_idle_timeout() {
    let h = Harness::start_with(SimOptions::default(), |c| {
        c.upstream.http2_connections = 1;
        c.upstream.pool_idle_timeout.0 = Duration::from_millis(300);
    })
    .await;
    // Back to back: one connection carries both.
    assert_eq!(quotes_with_pauses(&h, 2, Duration::ZERO).await, [200, 200]);
    assert_eq!(upstream_connects(&h, "h2").await, 1.0);
    // Idle for longer than the timeout: the next request dials again.
    assert_eq!(
        quotes_with_pauses(&h, 1, Duration::ZERO).await,
        [200],
        "still served"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(quotes_with_pauses(&h, 1, Duration::ZERO).await, [200]);
    assert_eq!(upstream_connects(&h, "h2").await, 2.0);
    assert_eq!(quotes_journaled(&h), 4);
}

#[tokio::test]
async fn a_broker_without_http2_is_served_over_http1() {
    let h = Harness::start_with(
        SimOptions {
            http1_only: true,
            ..SimOptions::default()
        },
        |c| c.upstream.http2 = true,
    )
    .await;
    let statuses = quotes_with_pauses(&h, 4, Duration::ZERO).await;
    assert_eq!(statuses, [200; 4]);
    assert_eq!(quotes_journaled(&h), 4, "each reached the broker once");
    // One dial found HTTP/1.1; the HTTP/1.1 pool served from then on.
    assert_eq!(upstream_connects(&h, "http1").await, 1.0);
    assert_eq!(upstream_connects(&h, "h2").await, 0.0);
}

#[tokio::test]
async fn upstream_errors_and_429_pass_through() {
    let h = Harness::start_with(
        SimOptions {
            rate_limit_per_minute: Some(1),
            ..SimOptions::default()
        },
        |_| {},
    )
    .await;
    assert_eq!(
        h.send("GET", "/trader/v1/accounts", Some(VIEWER), None)
            .await
            .status,
        200
    );
    let r = h
        .send("GET", "/trader/v1/accounts", Some(VIEWER), None)
        .await;
    if r.status == 200 {
        // The minute rolled over between the two calls; one more settles it.
        let r = h
            .send("GET", "/trader/v1/accounts", Some(VIEWER), None)
            .await;
        assert_eq!(r.status, 429);
    } else {
        assert_eq!(r.status, 429);
        assert!(r.headers.contains_key("retry-after"));
        assert!(
            r.json()["errors"].is_array(),
            "Schwab's body passes through: {}",
            r.text()
        );
    }
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let mut h = Harness::start_with(
        SimOptions {
            latency: Duration::from_millis(700),
            ..SimOptions::default()
        },
        |_| {},
    )
    .await;
    let proxy = h.proxy;
    let mut s = h.tls_stream().await;
    let in_flight = tokio::spawn(async move {
        s.write_all(format!("GET /trader/v1/accounts HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {VIEWER}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        out
    });
    // Shut down only once the request is in flight (the simulator records it
    // before its 700 ms of latency), however slow the machine is.
    h.wait_for_upstream_request().await;
    h.shutdown();
    let raw = in_flight.await.unwrap();
    assert_eq!(
        raw_status(&raw),
        200,
        "in-flight request was dropped: {}",
        String::from_utf8_lossy(&raw)
    );
    let task = h.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("proxy stopped after draining")
        .unwrap()
        .unwrap();
    // New connections are refused once it has stopped.
    assert!(tokio::net::TcpStream::connect(proxy).await.is_err());
}

#[tokio::test]
async fn admin_metrics_health_and_readiness() {
    let h = Harness::start().await;
    h.send("GET", "/trader/v1/accounts", Some(VIEWER), None)
        .await;
    h.send("GET", "/trader/v1/accounts", Some("wrong"), None)
        .await;
    let m = h.admin_get("/metrics").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(
        text.contains(r#"portcullis_requests_total{action="ViewAccounts",outcome="forwarded",route="accounts",status_class="2xx"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_rejections_total{reason="unauthenticated"} 1"#),
        "{text}"
    );
    assert!(text.contains("portcullis_upstream_duration_seconds_bucket"));
    assert!(
        !text.contains(VIEWER) && !text.contains("127.0.0.1"),
        "unbounded or secret label"
    );
    assert_eq!(h.admin_get("/healthz").await.status, 200);
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    assert_eq!(h.admin_get("/nope").await.status, 404);
}

#[tokio::test]
async fn errors_leak_nothing() {
    let h = Harness::start().await;
    let r = h
        .send("GET", "/trader/v1/accounts", Some("sk_secret_guess"), None)
        .await;
    assert_eq!(r.status, 401);
    let body = r.text();
    assert!(!body.contains("sk_secret_guess"));
    let j = r.json();
    let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["error", "message", "request_id"]);
    assert_eq!(j["request_id"], r.headers["x-request-id"].to_str().unwrap());
}

#[tokio::test]
async fn slow_body_is_408_and_never_forwarded() {
    let h = Harness::start_with(SimOptions::default(), |c| {
        c.limits.body_read_timeout = "1s".parse().unwrap();
    })
    .await;
    let path = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TRADER}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\nConnection: close\r\n\r\n{{\"session\":"
    );
    let started = Instant::now();
    let raw = h.raw(req.as_bytes()).await;
    assert_eq!(raw_status(&raw), 408, "{}", String::from_utf8_lossy(&raw));
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(h.journal().is_empty());
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let h = Harness::start_with(SimOptions::default(), |c| {
        c.limits.max_connections = 2;
    })
    .await;
    let _a = h.tls_stream().await;
    let _b = h.tls_stream().await;
    // The third is accepted by the kernel and closed by the proxy before TLS.
    let tcp = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_config(&h.ca_pem, true)));
    let third = tokio::time::timeout(
        Duration::from_secs(5),
        connector.connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        ),
    )
    .await
    .expect("closed promptly, not left hanging");
    assert!(third.is_err(), "a third connection was served");
    let m = h.admin_get("/metrics").await.text();
    assert!(
        m.contains(r#"portcullis_connections_refused_total{reason="max_connections"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_certificate_is_verified() {
    // Trust a different CA than the one that signed the simulator's certificate.
    let other = portcullis::certs::DevCa::new("someone else").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, &other.ca_pem).unwrap();
    let h = Harness::start_with(SimOptions::default(), move |c| {
        c.upstream.extra_ca_file = Some(other_ca);
    })
    .await;
    let r = h
        .send("GET", "/trader/v1/accounts", Some(VIEWER), None)
        .await;
    assert_eq!(
        r.status, 502,
        "an untrusted upstream certificate was accepted"
    );
    assert!(
        h.journal().is_empty(),
        "the request reached an unverified upstream"
    );
}

#[tokio::test]
async fn a_request_abandoned_by_the_client_is_still_recorded() {
    let h = Harness::start_with(
        SimOptions {
            latency: Duration::from_millis(1500),
            ..SimOptions::default()
        },
        |_| {},
    )
    .await;
    // HTTP/2: dropping the response future resets the stream, and hyper
    // drops the proxy's handler mid-request.
    let c = h.h2_client();
    let req = h.get_request("/trader/v1/accounts", VIEWER);
    let pending = tokio::spawn(async move { c.request(req).await.map(|r| r.status()) });
    h.wait_for_upstream_request().await;
    pending.abort();
    let mut text = String::new();
    for _ in 0..100 {
        text = h.admin_get("/metrics").await.text();
        if text.contains(r#"outcome="cancelled""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        text.contains(r#"portcullis_requests_total{action="ViewAccounts",outcome="cancelled",route="accounts",status_class="4xx"} 1"#),
        "{text}"
    );
    assert!(text.contains("portcullis_requests_in_flight 0"), "{text}");
}

#[tokio::test]
async fn a_client_that_stops_reading_cannot_hold_its_connection() {
    let h = Harness::start_with(SimOptions::default(), |c| {
        c.limits.idle_timeout = "1s".parse().unwrap();
        c.limits.shutdown_grace = "1s".parse().unwrap();
    })
    .await;
    // An HTTP/2 client with a 1 KiB stream window that does not read the body
    // sends no WINDOW_UPDATE: the proxy's response stalls mid-body.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(&h.ca_pem, false))
        .https_only()
        .enable_http2()
        .build();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(1024)
        .build::<_, http_body_util::Full<bytes::Bytes>>(https);
    let path = "/marketdata/v1/pricehistory?symbol=AAPL&frequencyType=minute&frequency=1&startDate=0&endDate=120000000";
    let req = h.get_request(path, VIEWER);
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Idle (1 s) + grace (1 s): the proxy gives up on the stalled response.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .expect("the body read resolved");
    assert!(
        body.is_err(),
        "the stalled response was kept alive and completed"
    );
}
