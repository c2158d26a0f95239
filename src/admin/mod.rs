//! The admin listener: `GET /metrics`, `/healthz`, `/readyz`. Plain HTTP,
//! loopback by default. Later issues add reload, status and the kill switch.

pub mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Request, Response, StatusCode, header};

use crate::pipeline::body::{ProxyBody, full};
use crate::reject::error_response;

pub struct Admin {
    pub metrics: Arc<metrics::Metrics>,
    /// True once every listener is up and the upstream credential is loaded.
    pub ready: AtomicBool,
}

impl Admin {
    pub fn handle<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        let path = req.uri().path();
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
                "-",
            );
        }
        match path {
            "/metrics" => {
                let mut r = Response::new(full(self.metrics.render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
            "/readyz" => {
                if self.ready.load(Ordering::Acquire) {
                    json(StatusCode::OK, r#"{"ready":true}"#)
                } else {
                    json(StatusCode::SERVICE_UNAVAILABLE, r#"{"ready":false}"#)
                }
            }
            _ => error_response(StatusCode::NOT_FOUND, "no_route", "no such endpoint", "-"),
        }
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
