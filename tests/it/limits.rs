//! Address lists, trusted proxies and rate limits: every refusal is
//! checked to never reach the broker (the simulator's journal).

use crate::common;

use common::{ADMIN, Harness, LIMIT_ORDER, TRADER, VIEWER, metric};
use portcullis::config::{Config, RateConfig};

const QUOTES: &str = "/marketdata/v1/quotes?symbols=AAPL";

fn cidrs(list: &[&str]) -> Vec<portcullis::pipeline::ip_filter::Cidr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn rate(text: &str, burst: u32) -> Option<RateConfig> {
    let yaml = format!("{{ rate: \"{text}\", burst: {burst} }}");
    Some(serde_yaml::from_str(&yaml).unwrap())
}

/// The demo stack with every limit off but what `f` sets.
async fn start(f: impl FnOnce(&mut Config)) -> Harness {
    Harness::start_with(Default::default(), move |c| {
        common::without_rate_limits(c);
        f(c);
    })
    .await
}

#[tokio::test]
async fn address_lists_refuse_before_the_broker_and_deny_wins() {
    // Global deny: the loopback client is refused everywhere, even with an allow list naming it.
    let h = start(|c| {
        c.ip_filter.allow = cidrs(&["127.0.0.0/8"]);
        c.ip_filter.deny = cidrs(&["127.0.0.1/32"]);
    })
    .await;
    let r = h.send("GET", QUOTES, Some(VIEWER), None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "address_not_allowed");
    assert_eq!(h.admin_post("/admin/halt", Some(ADMIN)).await.status, 403);
    assert!(h.journal().is_empty());

    // A global allow list that does not name the client.
    let h = start(|c| c.ip_filter.allow = cidrs(&["10.0.0.0/8", "2001:db8::/32"])).await;
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 403);
    assert!(h.journal().is_empty());

    // Per group: orders only from the office range; market data from anywhere.
    let h = start(|c| {
        c.ip_filter.groups.insert(
            "orders".into(),
            serde_yaml::from_str("{ allow: [10.20.0.0/16] }").unwrap(),
        );
        c.ip_filter.groups.insert(
            "admin".into(),
            serde_yaml::from_str("{ deny: [127.0.0.0/8] }").unwrap(),
        );
    })
    .await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
    let r = h
        .send("POST", &orders, Some(TRADER), Some(LIMIT_ORDER))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "address_not_allowed");
    let r = h.admin_post("/admin/halt", Some(ADMIN)).await;
    assert_eq!(r.status, 403);
    assert!(
        !h.dir.path().join("demo").join("halt.json").exists(),
        "a refused admin call changed something"
    );
    assert!(
        h.journal().iter().all(|e| e.method == "GET"),
        "an order from outside the range reached the broker"
    );
    // The refused admin call is audited with its reason.
    let recs = common::records(&common::audit_dir(&h), 4).await;
    assert!(recs.iter().any(|r| r["action"] == "-"
        && r["route"] == "admin:/admin/halt"
        && r["reason"] == "address_not_allowed"));

    // Per caller: the trader's key works only from its bot's address.
    let h = start(|c| {
        let t = c
            .callers
            .iter_mut()
            .find(|c| c.id == "demo-trader")
            .unwrap();
        t.allowed_ips = cidrs(&["198.51.100.7/32"]);
    })
    .await;
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
    let r = h.send("GET", QUOTES, Some(TRADER), None).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        h.journal().len(),
        1,
        "only the viewer's request went upstream"
    );
}

#[tokio::test]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    // No trusted proxies: the headers change nothing — neither the lists
    // nor what the audit trail records.
    let h = start(|c| c.ip_filter.deny = cidrs(&["198.51.100.0/24"])).await;
    let spoof = [
        ("x-forwarded-for", "198.51.100.7"),
        ("x-real-ip", "198.51.100.7"),
    ];
    let r = h.send_with("GET", QUOTES, Some(VIEWER), None, &spoof).await;
    assert_eq!(r.status, 200);
    let recs = common::records(&common::audit_dir(&h), 2).await;
    assert_eq!(recs.last().unwrap()["client_ip"], "127.0.0.1");

    // Behind a trusted proxy (the loopback peer here): the rightmost
    // untrusted hop is the client, what the lists, Cedar and the trail see.
    let h = start(|c| {
        c.ip_filter.trusted_proxies = cidrs(&["127.0.0.0/8"]);
        c.ip_filter.deny = cidrs(&["203.0.113.66/32"]);
    })
    .await;
    let hops = [("x-forwarded-for", "203.0.113.66, 198.51.100.7")];
    let r = h.send_with("GET", QUOTES, Some(VIEWER), None, &hops).await;
    assert_eq!(r.status, 200, "a prepended address is not the client");
    let recs = common::records(&common::audit_dir(&h), 2).await;
    assert_eq!(recs.last().unwrap()["client_ip"], "198.51.100.7");
    let denied = [("forwarded", "for=203.0.113.66")];
    let r = h
        .send_with("GET", QUOTES, Some(VIEWER), None, &denied)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "address_not_allowed");
    let garbage = [("x-forwarded-for", "198.51.100.7, not-an-address")];
    let r = h
        .send_with("GET", QUOTES, Some(VIEWER), None, &garbage)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_forwarding_header");
    assert_eq!(h.journal().len(), 1);
    // The forwarding headers never reach the broker.
    assert!(
        h.journal()[0]
            .headers
            .iter()
            .all(|(n, _)| !n.eq_ignore_ascii_case("x-forwarded-for"))
    );
}

#[tokio::test]
async fn over_a_limit_is_429_with_retry_after_and_never_forwarded() {
    let h = start(|c| c.rate_limits.per_caller = rate("1/h", 3)).await;
    for _ in 0..3 {
        assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
    }
    let r = h.send("GET", QUOTES, Some(VIEWER), None).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.json()["reason"], "per_caller");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1000..=3600).contains(&retry), "{retry}");
    assert_eq!(
        h.journal().len(),
        3,
        "the limited request reached the broker"
    );
    // Another caller, and the same caller's other groups, have their own buckets.
    assert_eq!(h.send("GET", QUOTES, Some(TRADER), None).await.status, 200);
    let accounts = "/trader/v1/accounts";
    assert_eq!(
        h.send("GET", accounts, Some(VIEWER), None).await.status,
        200
    );
    let m = h.admin_get("/metrics").await.text();
    assert_eq!(
        metric(&m, "portcullis_rate_limited_total{limit=\"per_caller\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "portcullis_rejections_total{reason=\"rate_limited\"}"),
        1.0
    );
}

/// A viewer's quote with `X-Forwarded-For: xff`.
async fn quote_via(h: &Harness, xff: &str) -> common::Reply {
    h.send_with(
        "GET",
        QUOTES,
        Some(VIEWER),
        None,
        &[("x-forwarded-for", xff)],
    )
    .await
}

#[tokio::test]
async fn rotating_forwarded_for_never_yields_a_fresh_bucket() {
    let h = start(|c| c.rate_limits.per_ip = rate("1/h", 2)).await;
    let mut statuses = Vec::new();
    for xff in ["192.0.2.1", "192.0.2.2", "192.0.2.99"] {
        statuses.push(quote_via(&h, xff).await.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(
        quote_via(&h, "192.0.2.100").await.json()["reason"],
        "per_ip"
    );
    // Behind a trusted proxy a client may prepend anything: the bucket is
    // the hop the proxy saw.
    let h = start(|c| {
        c.ip_filter.trusted_proxies = cidrs(&["127.0.0.0/8"]);
        c.rate_limits.per_ip = rate("1/h", 2);
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        statuses.push(
            quote_via(&h, &format!("10.66.0.{i}, 198.51.100.7"))
                .await
                .status,
        );
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(h.journal().len(), 2);
}

#[tokio::test]
async fn failed_authentications_lock_the_address_out() {
    let h = start(|c| {
        c.rate_limits.auth_failures =
            Some(serde_yaml::from_str("{ rate: 1/h, burst: 3, lockout: 1m }").unwrap());
    })
    .await;
    for _ in 0..4 {
        assert_eq!(
            h.send("GET", QUOTES, Some("guessed-key"), None)
                .await
                .status,
            401
        );
    }
    // Locked out: even a valid key from that address waits.
    let r = h.send("GET", QUOTES, Some(VIEWER), None).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["reason"], "auth_lockout");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "{retry}");
    // Wrong client secrets at the token endpoint count too, and are refused while locked.
    let basic = common::basic("demo-viewer", VIEWER);
    let r = h
        .post_form(
            "/v1/oauth/token",
            Some(&basic),
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(r.status, 429);
    assert!(h.journal().is_empty());
}

#[tokio::test]
async fn orders_per_account_and_the_apps_budget_hold_schwabs_limits() {
    let h = start(|c| {
        c.rate_limits.per_account_orders = rate("1/h", 2);
        c.rate_limits.upstream = rate("1/h", 2);
    })
    .await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    for _ in 0..2 {
        let r = h
            .send("POST", &orders, Some(TRADER), Some(LIMIT_ORDER))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = h
        .send("POST", &orders, Some(TRADER), Some(LIMIT_ORDER))
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["reason"], "per_account_orders");
    // A denied order never spends the account's budget: it is decided first.
    let big = LIMIT_ORDER.replace("\"quantity\":10", "\"quantity\":500");
    assert_eq!(
        h.send("POST", &orders, Some(TRADER), Some(&big))
            .await
            .status,
        403
    );
    // Non-order calls draw on the app's budget.
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
    let r = h.send("GET", QUOTES, Some(VIEWER), None).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["reason"], "upstream");
    let posts = h.journal().iter().filter(|e| e.method == "POST").count();
    assert_eq!(
        posts, 2,
        "an order over the account's limit reached the broker"
    );
    assert_eq!(h.journal().len(), 4);
}

#[tokio::test]
async fn the_demo_limits_show_by_hand_yet_let_a_polite_bot_through() {
    // The demo configuration as shipped: 20 requests/s with a burst of 40 per caller.
    let h = Harness::start().await;
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..80 {
        match h.send("GET", QUOTES, Some(VIEWER), None).await.status {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert!(ok >= 40, "{ok} passed");
    assert!(limited >= 1, "a burst of 80 was never limited");
    // A polite bot (5 a second) is never limited.
    let h = Harness::start().await;
    for _ in 0..10 {
        assert_eq!(h.send("GET", QUOTES, Some(TRADER), None).await.status, 200);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start(|c| c.limits.max_connections_per_ip = 3).await;
    // A slowloris from 127.0.0.1: three connections that never send a request.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(h.tcp_from("127.0.0.1").await);
    }
    // Its fourth is closed at once, before TLS.
    let mut fourth = h.tcp_from("127.0.0.1").await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), fourth.read(&mut buf))
        .await
        .expect("closed promptly, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Another address is served meanwhile.
    let mut other = h.tls_over(h.tcp_from("127.0.0.2").await).await;
    other
        .write_all(
            format!(
                "GET {QUOTES} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {VIEWER}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = other.read_to_end(&mut out).await;
    assert_eq!(common::raw_status(&out), 200);
    let m = h.admin_get("/metrics").await.text();
    assert_eq!(
        metric(
            &m,
            "portcullis_connections_refused_total{listener=\"proxy\",reason=\"max_connections_per_ip\"}"
        ) + metric(
            &m,
            "portcullis_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ),
        1.0,
        "{m}"
    );
    drop(held);
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client that opens streams and
/// resets them at once is cut off, the broker never sees the flood, and
/// other clients go on being served.
#[tokio::test]
async fn http2_rapid_reset_is_cut_off() {
    let h = start(|_| {}).await;
    let mut cfg = common::tls_config(&h.ca_pem, false);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut opened = 0;
    for _ in 0..2000 {
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("https://localhost:{}{QUOTES}", h.proxy.port()))
            .header("authorization", format!("Bearer {VIEWER}"))
            .body(())
            .unwrap();
        match client.ready().await {
            Ok(c) => client = c,
            Err(_) => break,
        }
        match client.send_request(req, false) {
            Ok((_, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => break,
        }
    }
    // The client queues its streams faster than they go out; the server
    // answers the resets with GOAWAY (ENHANCE_YOUR_CALM) and ends the
    // connection.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), driver)
        .await
        .expect("the connection was not closed")
        .unwrap();
    let err = ended.expect_err(&format!(
        "{opened} reset streams and the connection lives on"
    ));
    assert!(
        err.is_go_away() && err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{err:?}"
    );
    let upstream = h.journal().len();
    assert!(
        upstream < 200,
        "{upstream} reset requests reached the broker"
    );
    // Everyone else is still served.
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
}

/// HTTP/2 CONTINUATION flood: a header block that never ends (HEADERS
/// without END_HEADERS, then CONTINUATION frame after frame) is cut off
/// instead of being buffered; nothing reaches the broker.
#[tokio::test]
async fn http2_continuation_flood_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start(|_| {}).await;
    let mut cfg = common::tls_config(&h.ca_pem, false);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len() as u32;
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    /// An HPACK literal header field, new name, not indexed (RFC 7541 6.2.2).
    fn literal(name: &str, value: &str) -> Vec<u8> {
        fn len(n: usize, out: &mut Vec<u8>) {
            // 7-bit prefix integer, no Huffman.
            if n < 127 {
                out.push(n as u8);
            } else {
                out.push(127);
                let mut rest = n - 127;
                while rest >= 128 {
                    out.push((rest % 128 + 128) as u8);
                    rest /= 128;
                }
                out.push(rest as u8);
            }
        }
        let mut out = vec![0x00];
        len(name.len(), &mut out);
        out.extend_from_slice(name.as_bytes());
        len(value.len(), &mut out);
        out.extend_from_slice(value.as_bytes());
        out
    }
    let head = |with_auth: bool| {
        let mut b = vec![0x82, 0x87]; // :method GET, :scheme https (static table)
        b.extend(literal(":path", QUOTES));
        b.extend(literal(":authority", "localhost"));
        if with_auth {
            b.extend(literal("authorization", &format!("Bearer {VIEWER}")));
        }
        b
    };
    // First a well-formed request on stream 1, so that the frames this test
    // writes by hand are known to be right: its response HEADERS come back.
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    start.extend(frame(0x1, 0x1 | 0x4, 1, &head(true))); // HEADERS, END_STREAM | END_HEADERS
    tls.write_all(&start).await.unwrap();
    let mut got = Vec::new();
    let answered = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = tls.read(&mut buf).await.unwrap_or(0);
            assert!(n > 0, "closed before answering the well-formed request");
            got.extend_from_slice(&buf[..n]);
            // Walk the frames: a HEADERS frame (type 1) on stream 1?
            let mut i = 0;
            while i + 9 <= got.len() {
                let len = (usize::from(got[i]) << 16)
                    | (usize::from(got[i + 1]) << 8)
                    | usize::from(got[i + 2]);
                let stream = u32::from_be_bytes([got[i + 5], got[i + 6], got[i + 7], got[i + 8]])
                    & 0x7fff_ffff;
                if got[i + 3] == 0x1 && stream == 1 {
                    return;
                }
                i += 9 + len;
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "no response to the well-formed request");
    assert_eq!(h.journal().len(), 1);
    // Now the flood on stream 3: HEADERS without END_HEADERS, then CONTINUATION.
    tls.write_all(&frame(0x1, 0x1, 3, &head(true)))
        .await
        .unwrap();
    let junk = literal("x-padding", &"a".repeat(1000));
    let mut sent = 0usize;
    let mut cut_off = false;
    for _ in 0..4000 {
        // 4000 x ~1 KiB: far past any header list limit.
        if tls.write_all(&frame(0x9, 0, 3, &junk)).await.is_err() {
            cut_off = true;
            break;
        }
        sent += junk.len();
    }
    if !cut_off {
        let _ = tls.flush().await;
        let mut buf = vec![0u8; 65536];
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the connection is still open after {sent} bytes of headers"
        );
    }
    // Only the well-formed request of stream 1 reached the broker.
    assert_eq!(
        h.journal().len(),
        1,
        "the flooded request reached the broker"
    );
    assert_eq!(h.send("GET", QUOTES, Some(VIEWER), None).await.status, 200);
}
