//! Request-parsing hardening: every trick that has broken other proxies is
//! refused — never forwarded, never reinterpreted. Each case asserts the
//! status and that the simulator's journal never saw the request.

use crate::common;

use common::{Harness, LIMIT_ORDER, TRADER, VIEWER, raw_status};

const QUOTES: &str = "/marketdata/v1/quotes?symbols=AAPL";

fn req(lines: &[&str], body: &str) -> Vec<u8> {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n\r\n");
    s.push_str(body);
    s.into_bytes()
}

/// Sends one raw request; the status, the raw answer, and what the broker saw.
async fn attempt(h: &Harness, bytes: &[u8]) -> (u16, String, usize) {
    h.sim.clear_journal();
    let raw = h.raw(bytes).await;
    (
        raw_status(&raw),
        String::from_utf8_lossy(&raw).into_owned(),
        h.journal().len(),
    )
}

#[tokio::test]
async fn malformed_and_ambiguous_requests_are_refused_before_the_broker() {
    let h = Harness::start().await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    let auth_v = format!("Authorization: Bearer {VIEWER}");
    let auth_t = format!("Authorization: Bearer {TRADER}");
    let post = format!("POST {orders} HTTP/1.1");
    let get = format!("GET {QUOTES} HTTP/1.1");
    let n = LIMIT_ORDER.len();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "absolute-form target for a foreign host",
            req(
                &[
                    &format!("GET https://evil.example{QUOTES} HTTP/1.1"),
                    "Host: localhost",
                    &auth_v,
                    "Connection: close",
                ],
                "",
            ),
            400,
            "host_mismatch",
        ),
        (
            "absolute-form target naming another address than Host",
            req(
                &[
                    &format!("GET http://127.0.0.1{QUOTES} HTTP/1.1"),
                    "Host: localhost",
                    &auth_v,
                    "Connection: close",
                ],
                "",
            ),
            400,
            "host_mismatch",
        ),
        (
            "HTTP/1.1 without Host",
            req(&[&get, &auth_v, "Connection: close"], ""),
            400,
            "host_mismatch",
        ),
        (
            "Content-Length headers that disagree",
            req(
                &[
                    &post,
                    "Host: localhost",
                    &auth_t,
                    "Content-Type: application/json",
                    &format!("Content-Length: {n}"),
                    &format!("Content-Length: {}", n - 1),
                    "Connection: close",
                ],
                LIMIT_ORDER,
            ),
            400,
            "",
        ),
        (
            "Content-Length as a list",
            req(
                &[
                    &post,
                    "Host: localhost",
                    &auth_t,
                    "Content-Type: application/json",
                    &format!("Content-Length: {n}, {n}"),
                    "Connection: close",
                ],
                LIMIT_ORDER,
            ),
            400,
            "",
        ),
        (
            "Content-Length with a sign",
            req(
                &[
                    &post,
                    "Host: localhost",
                    &auth_t,
                    "Content-Type: application/json",
                    &format!("Content-Length: +{n}"),
                    "Connection: close",
                ],
                LIMIT_ORDER,
            ),
            400,
            "",
        ),
        (
            "a chunk size that is not hex",
            req(
                &[
                    &post,
                    "Host: localhost",
                    &auth_t,
                    "Content-Type: application/json",
                    "Transfer-Encoding: chunked",
                    "Connection: close",
                ],
                "zz\r\nabc\r\n0\r\n\r\n",
            ),
            400,
            "",
        ),
        (
            "a transfer coding other than chunked last",
            req(
                &[
                    &post,
                    "Host: localhost",
                    &auth_t,
                    "Content-Type: application/json",
                    "Transfer-Encoding: chunked, gzip",
                    "Connection: close",
                ],
                "0\r\n\r\n",
            ),
            400,
            "",
        ),
        (
            "an underscore header name (X_Forwarded_For is X-Forwarded-For to some stacks)",
            req(
                &[
                    &get,
                    "Host: localhost",
                    &auth_v,
                    "X_Forwarded_For: 1.2.3.4",
                    "Connection: close",
                ],
                "",
            ),
            400,
            "invalid_header",
        ),
        (
            "Connection naming Authorization",
            req(
                &[
                    &get,
                    "Host: localhost",
                    &auth_v,
                    "Connection: close, Authorization",
                ],
                "",
            ),
            400,
            "connection_header",
        ),
        (
            "Connection naming a signature header",
            req(
                &[
                    &get,
                    "Host: localhost",
                    &auth_v,
                    "Connection: Content-Digest, close",
                ],
                "",
            ),
            400,
            "connection_header",
        ),
        (
            "an X-HTTP-Method-Override",
            req(
                &[
                    &get,
                    "Host: localhost",
                    &auth_v,
                    "X-HTTP-Method-Override: DELETE",
                    "Connection: close",
                ],
                "",
            ),
            400,
            "method_override",
        ),
        (
            "TRACE",
            req(
                &[
                    &format!("TRACE {QUOTES} HTTP/1.1"),
                    "Host: localhost",
                    &auth_v,
                    "Connection: close",
                ],
                "",
            ),
            404,
            "no_route",
        ),
        (
            "CONNECT",
            req(
                &[
                    "CONNECT api.schwabapi.com:443 HTTP/1.1",
                    "Host: api.schwabapi.com:443",
                    &auth_v,
                    "Connection: close",
                ],
                "",
            ),
            400,
            "",
        ),
        (
            "an obs-fold continuation line",
            req(
                &[
                    &get,
                    "Host: localhost",
                    &auth_v,
                    "X-Thing: a",
                    " folded",
                    "Connection: close",
                ],
                "",
            ),
            400,
            "",
        ),
        (
            "a control byte in a header value",
            req(
                &[
                    &get,
                    "Host: localhost",
                    &auth_v,
                    "X-Thing: a\x01b",
                    "Connection: close",
                ],
                "",
            ),
            400,
            "",
        ),
        (
            "a space before the colon",
            req(
                &[
                    &get,
                    "Host: localhost",
                    &format!("Authorization : Bearer {VIEWER}"),
                    "Connection: close",
                ],
                "",
            ),
            400,
            "",
        ),
        (
            "an Expect other than 100-continue",
            req(
                &[
                    &get,
                    "Host: localhost",
                    &auth_v,
                    "Expect: 200-ok",
                    "Connection: close",
                ],
                "",
            ),
            417,
            "expectation_failed",
        ),
        (
            "a space in the target",
            req(
                &[
                    "GET /marketdata/v1/quotes?symbols=A B HTTP/1.1",
                    "Host: localhost",
                    &auth_v,
                    "Connection: close",
                ],
                "",
            ),
            400,
            "",
        ),
    ];
    for (name, bytes, want, code) in cases {
        let (status, text, seen) = attempt(&h, &bytes).await;
        assert_eq!(status, want, "{name}: {text}");
        assert_eq!(seen, 0, "{name}: reached the broker");
        if !code.is_empty() {
            assert!(
                text.contains(&format!("\"error\":\"{code}\"")),
                "{name}: {text}"
            );
        }
        // Nothing about the software or the host in any answer.
        let lower = text.to_ascii_lowercase();
        assert!(!lower.contains("server:"), "{name}: {text}");
        assert!(
            !lower.contains("hyper") && !lower.contains("rust"),
            "{name}: {text}"
        );
    }
}

#[tokio::test]
async fn what_must_keep_working_does() {
    let h = Harness::start().await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    let auth_v = format!("Authorization: Bearer {VIEWER}");
    let auth_t = format!("Authorization: Bearer {TRADER}");
    // Absolute form naming the Host itself (RFC 9112 says a server accepts it).
    let (s, t, _) = attempt(
        &h,
        &req(
            &[
                &format!("GET https://localhost{QUOTES} HTTP/1.1"),
                "Host: localhost",
                &auth_v,
                "Connection: close",
            ],
            "",
        ),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    // Expect: 100-continue on an order: answered, and not passed on.
    let (s, t, seen) = attempt(
        &h,
        &req(
            &[
                &format!("POST {orders} HTTP/1.1"),
                "Host: localhost",
                &auth_t,
                "Content-Type: application/json",
                &format!("Content-Length: {}", LIMIT_ORDER.len()),
                "Expect: 100-continue",
                "Connection: close",
            ],
            LIMIT_ORDER,
        ),
    )
    .await;
    assert!(t.contains("201 Created"), "{t}");
    assert_eq!((s == 100 || s == 201, seen), (true, 1));
    assert!(
        h.journal()[0]
            .headers
            .iter()
            .all(|(n, _)| !n.eq_ignore_ascii_case("expect")),
        "Expect was forwarded"
    );
    // HTTP/1.0 with a Host; pipelined requests are answered in order.
    let (s, _, _) = attempt(
        &h,
        &req(
            &[
                &format!("GET {QUOTES} HTTP/1.0"),
                "Host: localhost",
                &auth_v,
            ],
            "",
        ),
    )
    .await;
    assert_eq!(s, 200);
    let mut two = req(
        &[
            &format!("GET {QUOTES} HTTP/1.1"),
            "Host: localhost",
            &auth_v,
        ],
        "",
    );
    two.extend(req(
        &[
            "GET /trader/v1/accounts HTTP/1.1",
            "Host: localhost",
            &auth_v,
            "Connection: close",
        ],
        "",
    ));
    let (_, t, seen) = attempt(&h, &two).await;
    assert_eq!(t.matches("HTTP/1.1 200 OK").count(), 2, "{t}");
    assert_eq!(seen, 2);
    let j = h.journal();
    assert!(j[0].path.starts_with("/marketdata") && j[1].path == "/trader/v1/accounts");
}

/// Both framings at once (the classic CL.TE smuggle: a second request
/// hidden after the part Content-Length covers), and a length repeated:
/// refused with 400 before anything is read as a request, in whichever
/// order the headers come.
#[tokio::test]
async fn ambiguous_framing_is_refused_and_smuggles_nothing() {
    let h = Harness::start().await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    let auth = format!("Authorization: Bearer {TRADER}");
    let hidden = format!("DELETE {orders}/1 HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n\r\n");
    let chunked = format!(
        "{:x}\r\n{LIMIT_ORDER}\r\n0\r\n\r\n{hidden}",
        LIMIT_ORDER.len()
    );
    let post = format!("POST {orders} HTTP/1.1");
    let n = format!("Content-Length: {}", LIMIT_ORDER.len());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Content-Length then Transfer-Encoding",
            req(
                &[
                    &post,
                    "Host: localhost",
                    &auth,
                    "Content-Type: application/json",
                    "Content-Length: 4",
                    "Transfer-Encoding: chunked",
                ],
                &chunked,
            ),
        ),
        (
            "Transfer-Encoding then Content-Length",
            req(
                &[
                    &post,
                    "Host: localhost",
                    &auth,
                    "Content-Type: application/json",
                    "Transfer-Encoding: chunked",
                    "Content-Length: 4",
                ],
                &chunked,
            ),
        ),
        (
            "the same Content-Length twice",
            req(
                &[
                    &post,
                    "Host: localhost",
                    &auth,
                    "Content-Type: application/json",
                    &n,
                    &n,
                ],
                &format!("{LIMIT_ORDER}{hidden}"),
            ),
        ),
    ];
    for (name, bytes) in cases {
        let (status, text, seen) = attempt(&h, &bytes).await;
        assert_eq!(status, 400, "{name}: {text}");
        assert_eq!(seen, 0, "{name}: reached the broker");
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{name}: a second answer: {text}"
        );
    }
    // The same order, framed one way, still goes through.
    let (status, text, seen) = attempt(
        &h,
        &req(
            &[
                &post,
                "Host: localhost",
                &auth,
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
                "Connection: close",
            ],
            &format!("{:x}\r\n{LIMIT_ORDER}\r\n0\r\n\r\n", LIMIT_ORDER.len()),
        ),
    )
    .await;
    assert_eq!((status, seen), (201, 1), "{text}");
    assert_eq!(h.journal()[0].body, LIMIT_ORDER);
}

#[tokio::test]
async fn http2_authority_and_host_must_agree() {
    let h = Harness::start().await;
    let client = h.h2_client();
    let mut good = h.get_request(QUOTES, VIEWER);
    *good.version_mut() = http::Version::HTTP_2;
    assert_eq!(common::send_on(&client, good).await.status, 200);
    let mut bad = h.get_request(QUOTES, VIEWER);
    *bad.version_mut() = http::Version::HTTP_2;
    bad.headers_mut()
        .insert("host", "evil.example".parse().unwrap());
    let r = common::send_on(&client, bad).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "host_mismatch");
    assert_eq!(h.journal().len(), 1);
}
