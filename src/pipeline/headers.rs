//! Header hygiene in both directions.
//!
//! Upstream: drop hop-by-hop headers and every header the `Connection`
//! header names, the caller's credential, `Proxy-*`, forwarding headers (no
//! proxy is trusted yet) and anything the proxy sets itself; then set the
//! Schwab credential and the request id.
//! Downstream: drop hop-by-hop headers and `Server` (no versions leak);
//! everything else, `Location` included, passes through unchanged.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers a request depends on for who sent it, how it is framed and
/// signed, and where it came from: `Connection` may not name them.
pub const PROTECTED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "content-type",
    "content-encoding",
    "content-digest",
    "signature",
    "signature-input",
    "x-request-id",
    "forwarded",
    "x-real-ip",
    "cookie",
];

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Headers the proxy sets, that describe the client hop, or that some
/// servers honour to rewrite the path or the client address; never copied
/// upstream. (`x-forwarded-*` and `proxy-*` are dropped by prefix.)
const NOT_FORWARDED: [&str; 19] = [
    "host",
    "authorization",
    "content-length",
    "expect",
    "forwarded",
    "x-forwarded",
    "x-real-ip",
    "x-request-id",
    "via",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
];

/// Headers that ask a server to treat the request as another method. A
/// request carrying one is refused: the method matched is the method sent.
pub const METHOD_OVERRIDE: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

fn connection_named(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// Headers to send upstream.
pub fn upstream_request_headers(
    incoming: &HeaderMap,
    authorization: HeaderValue,
    request_id: HeaderValue,
) -> HeaderMap {
    let named = connection_named(incoming);
    let mut out = HeaderMap::with_capacity(incoming.len() + 2);
    for (name, value) in incoming {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || NOT_FORWARDED.contains(&n)
            || n.starts_with("proxy-")
            || n.starts_with("x-forwarded-")
            || named.contains(name)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.insert(header::AUTHORIZATION, authorization);
    out.insert(
        HeaderName::from_static("x-request-id"),
        never_indexed(request_id),
    );
    out
}

/// Marks a value that differs on every request so that HTTP/2 sends it as a
/// literal never added to the HPACK dynamic table (RFC 7541 §6.2.3): indexed,
/// each request id would be inserted on both ends of the connection, evict an
/// entry that was worth keeping, and first be compared against every request
/// id already in the table. (h2 has one flag for this: "sensitive", which also
/// hides the value from `Debug`.)
fn never_indexed(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// Cleans an upstream response's headers in place.
pub fn clean_response_headers(h: &mut HeaderMap) {
    // Most responses carry none of these: one pass over the names decides.
    // (`Connection` is hop-by-hop, so the names it lists are looked at only
    // when it is present.)
    if !h
        .keys()
        .any(|n| n == header::SERVER || HOP_BY_HOP.contains(&n.as_str()))
    {
        return;
    }
    for n in connection_named(h) {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::SERVER);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_and_injects() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer caller-key".parse().unwrap());
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("proxy-authorization", "x".parse().unwrap());
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.insert("x-forwarded-host", "evil".parse().unwrap());
        h.insert("x-original-url", "/trader/v1/accounts".parse().unwrap());
        h.insert("true-client-ip", "1.2.3.4".parse().unwrap());
        h.insert("forwarded", "for=1.2.3.4".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("host", "proxy.local".parse().unwrap());
        h.insert("x-request-id", "spoofed".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        h.append("x-multi", "a".parse().unwrap());
        h.append("x-multi", "b".parse().unwrap());
        let out =
            upstream_request_headers(&h, "Bearer real".parse().unwrap(), "rid".parse().unwrap());
        assert_eq!(out.get("authorization").unwrap(), "Bearer real");
        assert_eq!(out.get_all("authorization").iter().count(), 1);
        assert_eq!(out.get("x-request-id").unwrap(), "rid");
        assert!(out.get("x-request-id").unwrap().is_sensitive());
        assert_eq!(out.get("accept").unwrap(), "application/json");
        assert_eq!(out.get_all("x-multi").iter().count(), 2);
        for gone in [
            "connection",
            "x-secret-hop",
            "proxy-authorization",
            "x-forwarded-for",
            "x-forwarded-host",
            "forwarded",
            "te",
            "host",
        ] {
            assert!(!out.contains_key(gone), "{gone} was forwarded");
        }
    }

    #[test]
    fn response_hygiene_keeps_location() {
        let mut h = HeaderMap::new();
        h.insert("server", "nginx/1.2.3".parse().unwrap());
        h.insert(
            "location",
            "https://api.schwabapi.com/trader/v1/accounts/A/orders/1"
                .parse()
                .unwrap(),
        );
        h.insert("connection", "close".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        clean_response_headers(&mut h);
        assert!(!h.contains_key("server"));
        assert!(!h.contains_key("connection"));
        assert!(!h.contains_key("transfer-encoding"));
        assert_eq!(
            h.get("location").unwrap(),
            "https://api.schwabapi.com/trader/v1/accounts/A/orders/1"
        );
    }
}
