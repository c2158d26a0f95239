//! The admin listener: `GET /metrics`, `/healthz`, `/readyz`, and
//! `POST /policies/reload` (a caller key whose role may `ReloadPolicies`).
//! Plain HTTP, loopback by default. Later issues add status and the kill
//! switch.

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Request, Response, StatusCode, header};

use crate::pipeline::Proxy;
use crate::pipeline::body::{ProxyBody, full};
use crate::policy::Resource;
use crate::reject::{Reject, error_response};

pub struct Admin {
    pub metrics: Arc<metrics::Metrics>,
    /// True once every listener is up and the upstream credential is loaded.
    pub ready: AtomicBool,
    pub proxy: Arc<Proxy>,
    /// The reloadable secrets (credential management).
    pub live: Arc<crate::reload::Live>,
}

impl Admin {
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<ProxyBody> {
        let path = req.uri().path();
        if path == "/policies/reload" {
            return self.reload(&req, peer).await;
        }
        if path == "/credentials/status" || path == "/credentials/reload" {
            return self.credentials(&req, peer).await;
        }
        if path == "/admin/halt" || path == "/admin/status" {
            return self.halt(&req, peer);
        }
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
                let credentials = self.proxy.upstream_auth.ready();
                let ready = self.ready.load(Ordering::Acquire) && credentials;
                let active = self.proxy.policy.current();
                let mut body = serde_json::json!({
                    "ready": ready,
                    "upstream_credentials": credentials,
                    "policy_hash": active.bundle.hash,
                    "policies": active.bundle.policy_count(),
                });
                if let (Some(shadow), Some(obj)) = (&self.proxy.shadow, body.as_object_mut()) {
                    obj.insert(
                        "shadow_policy_hash".into(),
                        serde_json::Value::from(shadow.current().bundle.hash.clone()),
                    );
                }
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(status, body.to_string())
            }
            _ => error_response(StatusCode::NOT_FOUND, "no_route", "no such endpoint", "-"),
        }
    }
}

impl Admin {
    /// Identifies the caller (API key or proxy token) and asks Cedar whether
    /// it may do `action` on the proxy: the caller's id if so, else the
    /// refusal to send.
    fn admit<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        action: &str,
        rid: &str,
    ) -> Result<Arc<str>, Box<Response<ProxyBody>>> {
        let refuse = |r: Reject| Box::new(r.into_response(rid));
        crate::pipeline::check_request_headers(req.headers()).map_err(refuse)?;
        let who = self
            .proxy
            .identify(req.headers(), req.extensions())
            .map_err(refuse)?;
        // A caller that signs, signs here too (admin requests carry no body).
        if let Err(r) = self.proxy.verify_signature(
            &who.caller,
            req.method(),
            req.uri(),
            req.headers(),
            req.extensions(),
            b"",
        ) {
            return Err(refuse(r));
        }
        let decision = self
            .proxy
            .authorize(&who, action, Resource::Proxy, peer, rid, None);
        tracing::info!(
            caller = &*who.caller.id,
            action,
            mfa = who.mfa,
            allowed = decision.allowed,
            policies = %decision.policies.join(","),
            "admin request"
        );
        if !decision.allowed {
            return Err(Box::new(Reject::Forbidden.into_detailed_response(
                rid,
                decision.reason.as_deref(),
                None,
            )));
        }
        Ok(who.caller.id.clone())
    }

    /// `GET /credentials/status` (`ViewCredentialStatus`): expiries and key
    /// ids, never a secret. `POST /credentials/reload` (`RotateCredentials`):
    /// re-reads the configuration's secrets now, as SIGHUP does. Both are
    /// credential management: Super Admin, with MFA.
    async fn credentials<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<ProxyBody> {
        let rid = crate::pipeline::new_request_id();
        let (want, action) = if req.uri().path() == "/credentials/status" {
            (http::Method::GET, "ViewCredentialStatus")
        } else {
            (http::Method::POST, "RotateCredentials")
        };
        if req.method() != want {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                if want == http::Method::GET {
                    "use GET"
                } else {
                    "use POST"
                },
                &rid,
            );
        }
        if let Err(denied) = self.admit(req, peer, action, &rid) {
            return *denied;
        }
        if action == "RotateCredentials" {
            return match self.live.reload("admin").await {
                Ok(a) => json(
                    StatusCode::OK,
                    serde_json::json!({
                        "reloaded": true,
                        "certificates": a.certificates,
                        "callers": a.callers,
                        "needs_restart": a.needs_restart,
                    })
                    .to_string(),
                ),
                // The message names files and references, never values.
                Err(e) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"reloaded": false, "error": e, "request_id": rid})
                        .to_string(),
                ),
            };
        }
        let rfc3339 = |ms: i64| {
            time::OffsetDateTime::from_unix_timestamp(ms / 1000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
        };
        let upstream = match &self.proxy.upstream_auth {
            crate::credentials::UpstreamAuth::Static(_) => {
                serde_json::json!({"kind": "fixed_access_token", "ready": true})
            }
            crate::credentials::UpstreamAuth::Managed(m) => {
                let (access, refresh) = m.expiries().unwrap_or((0, 0));
                serde_json::json!({
                    "kind": "token_store",
                    "ready": m.ready(),
                    "store": m.store().path().display().to_string(),
                    "store_key_id": m.store().key_id(),
                    "access_token_expires_at": rfc3339(access),
                    "refresh_token_expires_at": rfc3339(refresh),
                })
            }
        };
        json(
            StatusCode::OK,
            serde_json::json!({
                "upstream": upstream,
                "caller_keys": self.proxy.identities.load().len(),
                "proxy_sessions": self.proxy.sessions.len(),
            })
            .to_string(),
        )
    }

    /// The kill switch: `GET /admin/status` (`ViewStatus`), `POST
    /// /admin/halt[?reason=…]` (`HaltTrading`: any Admin, no MFA — stopping
    /// must be quick), `DELETE /admin/halt` (`ResumeTrading`: the shipped
    /// policies want MFA).
    fn halt<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<ProxyBody> {
        let rid = crate::pipeline::new_request_id();
        let action = match (req.uri().path(), req.method()) {
            ("/admin/status", &http::Method::GET) => "ViewStatus",
            ("/admin/halt", &http::Method::POST) => "HaltTrading",
            ("/admin/halt", &http::Method::DELETE) => "ResumeTrading",
            _ => {
                return error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "GET /admin/status, POST or DELETE /admin/halt",
                    &rid,
                );
            }
        };
        let who = match self.admit(req, peer, action, &rid) {
            Ok(id) => id,
            Err(denied) => return *denied,
        };
        let result = match action {
            "HaltTrading" => {
                let q = crate::sim::Query::parse(req.uri().query().unwrap_or(""));
                let reason = q.get("reason").map(|r| r.chars().take(200).collect());
                self.proxy.kill_switch.set(true, &who, reason)
            }
            "ResumeTrading" => self.proxy.kill_switch.set(false, &who, None),
            _ => Ok(self.proxy.kill_switch.state()),
        };
        match result {
            Ok(state) => {
                let mut body = serde_json::json!({ "trading": state });
                if action == "ViewStatus"
                    && let Some(obj) = body.as_object_mut()
                {
                    let active = self.proxy.policy.current();
                    obj.insert("policy_hash".into(), active.bundle.hash.clone().into());
                    obj.insert(
                        "upstream_credentials".into(),
                        self.proxy.upstream_auth.ready().into(),
                    );
                    obj.insert("version".into(), env!("CARGO_PKG_VERSION").into());
                }
                json(StatusCode::OK, body.to_string())
            }
            Err(e) => {
                tracing::error!(error = %e, action, "the halt state could not be saved");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "halt_state_unsaved",
                    "the halt state could not be saved; trading stays halted",
                    &rid,
                )
            }
        }
    }

    /// `POST /policies/reload`: the caller is identified by its key and the
    /// reload is itself a Cedar decision (`ReloadPolicies` on the proxy).
    async fn reload<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<ProxyBody> {
        let rid = crate::pipeline::new_request_id();
        if req.method() != http::Method::POST {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
                &rid,
            );
        }
        if let Err(denied) = self.admit(req, peer, "ReloadPolicies", &rid) {
            return *denied;
        }
        let p = self.proxy.clone();
        let result = tokio::task::spawn_blocking(move || p.reload_policies("admin")).await;
        let Ok(outcome) = result else {
            return Reject::Internal.into_response(&rid);
        };
        // Where the problems are, not what they say: the messages quote
        // policy text, which stays in the proxy's log.
        let located = |issues: &[crate::policy::PolicyIssue]| {
            issues
                .iter()
                .map(|i| match i.line {
                    Some(l) => format!("{}:{l}", short_name(&i.file)),
                    None => short_name(&i.file),
                })
                .collect::<Vec<_>>()
        };
        let set_json =
            |r: &Result<crate::policy::Reloaded, Vec<crate::policy::PolicyIssue>>| match r {
                Ok(r) => serde_json::json!({"reloaded": r.changed, "policy_hash": r.hash}),
                Err(issues) => {
                    serde_json::json!({"error": "policy_invalid", "issues": located(issues)})
                }
            };
        let mut body = serde_json::json!({
            "active": set_json(&outcome.active),
            "request_id": rid,
        });
        if let (Some(shadow), Some(obj)) = (&outcome.shadow, body.as_object_mut()) {
            obj.insert("shadow".into(), set_json(shadow));
        }
        if outcome.ok() {
            json(StatusCode::OK, body.to_string())
        } else {
            if let Some(obj) = body.as_object_mut() {
                obj.insert("error".into(), "policy_invalid".into());
                obj.insert(
                    "message".into(),
                    "not applied; the previous set stays in force (details in the proxy log)"
                        .into(),
                );
            }
            json(StatusCode::UNPROCESSABLE_ENTITY, body.to_string())
        }
    }
}

/// The file name of a policy issue's location, without directories (no
/// host paths in responses).
fn short_name(file: &str) -> String {
    std::path::Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".into())
}

fn json(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
