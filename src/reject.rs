//! Every way the proxy refuses a request, mapped to a status and the one JSON
//! error shape in one place:
//!
//! ```json
//! {"error":"<code>","message":"<safe text>","request_id":"<id>"}
//! ```
//!
//! Messages are fixed strings: they never carry input, secrets, internal
//! addresses or library error text.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::pipeline::body::ProxyBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// No or unknown caller credential.
    Unauthenticated,
    /// Malformed request; the code says which rule.
    BadRequest(BadRequest),
    /// No route matches (never forwarded).
    NoRoute,
    /// Denied by policy; the decision's reason code goes in the body.
    Forbidden,
    /// An order body the proxy will not judge (and so never forwards); the
    /// code is the parser's (`duplicate_key`, `bad_content_type`, …).
    BadOrder(&'static str),
    BodyTooLarge,
    BodyTimeout,
    /// The upstream could not be reached or failed mid-response.
    UpstreamUnavailable,
    UpstreamTimeout,
    /// No valid Schwab credential to inject.
    UpstreamCredentials,
    /// Trading is halted (kill switch): order actions refused, reads go on.
    TradingHalted,
    /// The audit trail could not record a state-changing request: refused.
    AuditUnavailable,
    /// A caller that must sign sent no valid signature (the code says why).
    Signature(&'static str),
    /// The proxy's token endpoint refused a grant (the OAuth error code);
    /// answered in the OAuth error shape, recorded like other rejections.
    TokenGrant(&'static str),
    /// The client address is not admitted (global, group or caller lists).
    AddressNotAllowed,
    /// A rate limit (which one, and the seconds until a retry can pass).
    RateLimited(crate::pipeline::rate_limit::Limited),
    /// An `Expect` other than `100-continue`.
    ExpectationFailed,
    /// A bug or an unexpected state; fail closed.
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    Path(&'static str),
    DuplicateHeader,
    InvalidHeader,
    BodyNotAllowed,
    BadBody,
    MethodOverride,
    /// A trusted proxy's forwarding header could not be read.
    Forwarding,
    /// Both `Content-Length` and `Transfer-Encoding`.
    Framing,
    /// No `Host` on HTTP/1.1, or a target naming another host than `Host`.
    Host,
    /// `Connection` naming a header the request depends on (credential,
    /// framing, signature, origin).
    ConnectionHeader,
}

impl Reject {
    pub fn status(self) -> StatusCode {
        match self {
            Reject::Unauthenticated => StatusCode::UNAUTHORIZED,
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::Forbidden => StatusCode::FORBIDDEN,
            Reject::BadOrder(_) => StatusCode::BAD_REQUEST,
            Reject::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reject::UpstreamCredentials => StatusCode::SERVICE_UNAVAILABLE,
            Reject::Signature(_) => StatusCode::UNAUTHORIZED,
            Reject::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reject::TradingHalted => StatusCode::FORBIDDEN,
            Reject::TokenGrant("invalid_client") => StatusCode::UNAUTHORIZED,
            Reject::TokenGrant("temporarily_unavailable") => StatusCode::SERVICE_UNAVAILABLE,
            Reject::TokenGrant(_) => StatusCode::BAD_REQUEST,
            Reject::AddressNotAllowed => StatusCode::FORBIDDEN,
            Reject::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Reject::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            Reject::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code; also the `reason` metric label.
    pub fn code(self) -> &'static str {
        match self {
            Reject::Unauthenticated => "unauthenticated",
            Reject::BadRequest(BadRequest::Path(_)) => "bad_path",
            Reject::BadRequest(BadRequest::DuplicateHeader) => "duplicate_header",
            Reject::BadRequest(BadRequest::InvalidHeader) => "invalid_header",
            Reject::BadRequest(BadRequest::BodyNotAllowed) => "body_not_allowed",
            Reject::BadRequest(BadRequest::BadBody) => "bad_body",
            Reject::BadRequest(BadRequest::MethodOverride) => "method_override",
            Reject::BadRequest(BadRequest::Forwarding) => "bad_forwarding_header",
            Reject::BadRequest(BadRequest::Framing) => "ambiguous_framing",
            Reject::BadRequest(BadRequest::Host) => "host_mismatch",
            Reject::BadRequest(BadRequest::ConnectionHeader) => "connection_header",
            Reject::NoRoute => "no_route",
            Reject::Forbidden => "forbidden",
            Reject::BadOrder(code) => code,
            Reject::BodyTooLarge => "body_too_large",
            Reject::BodyTimeout => "body_timeout",
            Reject::UpstreamUnavailable => "upstream_unavailable",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::UpstreamCredentials => "upstream_credentials_unavailable",
            Reject::TokenGrant(code) | Reject::Signature(code) => code,
            Reject::AuditUnavailable => "audit_unavailable",
            Reject::TradingHalted => "trading_halted",
            Reject::AddressNotAllowed => "address_not_allowed",
            Reject::RateLimited(_) => "rate_limited",
            Reject::ExpectationFailed => "expectation_failed",
            Reject::Internal => "internal_error",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Reject::Unauthenticated => "a valid API key is required (Authorization: Bearer <key>)",
            Reject::BadRequest(BadRequest::Path(why)) => why,
            Reject::BadRequest(BadRequest::DuplicateHeader) => {
                "the Authorization or Host header appears more than once"
            }
            Reject::BadRequest(BadRequest::InvalidHeader) => "a request header is malformed",
            Reject::BadRequest(BadRequest::BodyNotAllowed) => "this endpoint takes no request body",
            Reject::BadRequest(BadRequest::BadBody) => "the request body could not be read",
            Reject::BadRequest(BadRequest::MethodOverride) => {
                "method-override headers are not accepted; use the real method"
            }
            Reject::BadRequest(BadRequest::Forwarding) => {
                "a forwarding header from a trusted proxy could not be read"
            }
            Reject::BadRequest(BadRequest::Framing) => {
                "Content-Length and Transfer-Encoding together are not accepted"
            }
            Reject::BadRequest(BadRequest::Host) => {
                "the request must name one host: Host, and the target if absolute"
            }
            Reject::BadRequest(BadRequest::ConnectionHeader) => {
                "Connection may not name the credential, framing, signature or origin headers"
            }
            Reject::NoRoute => "no such endpoint",
            Reject::Forbidden => "denied by policy",
            Reject::BadOrder(_) => "the order body is not valid",
            Reject::BodyTooLarge => "the request body is too large",
            Reject::BodyTimeout => "the request body was not received in time",
            Reject::UpstreamUnavailable => "the broker API could not be reached",
            Reject::UpstreamTimeout => "the broker API did not answer in time",
            Reject::UpstreamCredentials => "the proxy has no valid broker credentials",
            Reject::TokenGrant(_) => "the token request was refused",
            Reject::AuditUnavailable => "the audit trail cannot record this order right now",
            Reject::TradingHalted => "trading is halted by an administrator; reads continue",
            Reject::Signature(_) => {
                "this caller must sign its requests (RFC 9421: @method, @target-uri, \
                 content-digest; created, keyid, nonce); the signature is missing or not valid"
            }
            Reject::AddressNotAllowed => "requests from this address are not allowed",
            Reject::RateLimited(_) => "too many requests; retry after the seconds in Retry-After",
            Reject::ExpectationFailed => "only Expect: 100-continue is supported",
            Reject::Internal => "internal error",
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        self.into_detailed_response(request_id, None, None)
    }

    /// The response with request-specific detail: a policy denial's reason
    /// code (`reason`), or the order parser's message naming the field.
    /// Both are produced by the proxy, never copied from policy text.
    pub fn into_detailed_response(
        self,
        request_id: &str,
        reason: Option<&str>,
        detail: Option<&str>,
    ) -> Response<ProxyBody> {
        let mut body = serde_json::json!({
            "error": self.code(),
            "message": detail.unwrap_or(self.message()),
            "request_id": request_id,
        });
        if let (Some(r), Some(obj)) = (reason, body.as_object_mut()) {
            obj.insert("reason".into(), serde_json::Value::from(r));
        }
        let mut resp = json_response(self.status(), body, request_id);
        if let Reject::RateLimited(l) = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(l.retry_after));
        }
        resp
    }
}

/// Builds the JSON error response. Used for rejections and for the few
/// errors produced outside the pipeline (admin listener).
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": code,
        "message": message,
        "request_id": request_id,
    });
    json_response(status, body, request_id)
}

fn json_response(
    status: StatusCode,
    body: serde_json::Value,
    request_id: &str,
) -> Response<ProxyBody> {
    let bytes = Bytes::from(body.to_string());
    let mut resp = Response::new(crate::pipeline::body::full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"portcullis\""),
        );
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_sensible() {
        let all = [
            Reject::Unauthenticated,
            Reject::BadRequest(BadRequest::Path("x")),
            Reject::BadRequest(BadRequest::DuplicateHeader),
            Reject::BadRequest(BadRequest::InvalidHeader),
            Reject::BadRequest(BadRequest::BodyNotAllowed),
            Reject::BadRequest(BadRequest::BadBody),
            Reject::BadRequest(BadRequest::MethodOverride),
            Reject::NoRoute,
            Reject::Forbidden,
            Reject::BadOrder("duplicate_key"),
            Reject::BodyTooLarge,
            Reject::BodyTimeout,
            Reject::UpstreamUnavailable,
            Reject::UpstreamTimeout,
            Reject::UpstreamCredentials,
            Reject::AddressNotAllowed,
            Reject::RateLimited(crate::pipeline::rate_limit::Limited {
                limit: crate::pipeline::rate_limit::Limit::Ip,
                retry_after: 1,
            }),
            Reject::BadRequest(BadRequest::Forwarding),
            Reject::BadRequest(BadRequest::Framing),
            Reject::BadRequest(BadRequest::Host),
            Reject::BadRequest(BadRequest::ConnectionHeader),
            Reject::ExpectationFailed,
            Reject::Internal,
        ];
        let mut codes: Vec<_> = all.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert_eq!(Reject::UpstreamCredentials.status(), 503);
        let r = Reject::Unauthenticated.into_response("abc");
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
