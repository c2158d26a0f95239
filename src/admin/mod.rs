//! The admin listener: `GET /metrics`, `/healthz`, `/readyz`, and
//! `POST /policies/reload` (a caller key whose role may `ReloadPolicies`).
//! Plain HTTP, loopback by default. Later issues add status and the kill
//! switch.

pub mod client;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Request, Response, StatusCode, header};

use crate::pipeline::Proxy;
use crate::pipeline::body::{ProxyBody, full};
use crate::policy::Resource;
use crate::reject::{Reject, error_response};

/// The route group of the admin calls (address lists, rate limits).
pub const ADMIN_GROUP: &str = "admin";

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
        let authenticated = matches!(
            path,
            "/policies/reload"
                | "/admin/reload"
                | "/credentials/status"
                | "/credentials/reload"
                | "/admin/halt"
                | "/admin/status"
        );
        if authenticated {
            // Every authenticated admin call is audited like a request.
            let mut call = Call::new(peer);
            // The address lists (global and the `admin` group), a lockout
            // and the per-address rate, as on the proxy listener.
            let response = match self.proxy.screen(peer, req.headers(), Some(ADMIN_GROUP)) {
                Ok(ip) => {
                    call.client_ip = ip;
                    None
                }
                Err(r) => {
                    call.rejected = Some(r);
                    self.metrics.rejections.with_label_values(&[r.code()]).inc();
                    Some(r.into_response(&call.request_id))
                }
            };
            if let Some(refused) = response {
                self.audit_call(&call, &req, refused.status()).await;
                return refused;
            }
            let response = match path {
                "/policies/reload" | "/admin/reload" => self.reload(&req, &mut call).await,
                "/credentials/status" | "/credentials/reload" => {
                    self.credentials(&req, &mut call).await
                }
                _ => self.halt(&req, &mut call).await,
            };
            self.audit_call(&call, &req, response.status()).await;
            return response;
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
                // State read at scrape time, so the gauge cannot go stale.
                self.metrics
                    .trading_halted
                    .set(i64::from(self.proxy.kill_switch.is_halted()));
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
        call: &mut Call,
        action: &'static str,
    ) -> Result<Arc<str>, Box<Response<ProxyBody>>> {
        call.action = action;
        let rid = call.request_id.clone();
        let mut refuse = |r: Reject| {
            call.rejected = Some(r);
            self.metrics.rejections.with_label_values(&[r.code()]).inc();
            self.metrics.count_auth_failure(r);
            Box::new(r.into_response(&rid))
        };
        if let Err(r) = crate::pipeline::check_request_headers(req.headers()).and_then(|()| {
            crate::pipeline::check_request_target(req.version(), req.uri(), req.headers())
        }) {
            return Err(refuse(r));
        }
        let who = match self.proxy.identify(req.headers(), req.extensions()) {
            Ok(w) => w,
            Err(r) => {
                self.proxy.note_auth_failure(call.client_ip, r);
                return Err(refuse(r));
            }
        };
        // A caller that signs, signs here too (admin requests carry no body).
        if let Err(r) = self.proxy.verify_signature(
            &who.caller,
            req.method(),
            req.uri(),
            req.headers(),
            req.extensions(),
            b"",
        ) {
            self.proxy.note_auth_failure(call.client_ip, r);
            return Err(refuse(r));
        }
        if let Err(r) =
            self.proxy
                .admit_caller(&who.caller, &Arc::from(ADMIN_GROUP), call.client_ip)
        {
            return Err(refuse(r));
        }
        call.caller = Some(who.caller.id.clone());
        call.session_id = who.session_id.clone();
        call.mfa = who.mfa;
        let decision =
            self.proxy
                .authorize(&who, action, Resource::Proxy, call.client_ip, &rid, None);
        call.decision = Some(decision.clone());
        tracing::info!(
            caller = &*who.caller.id,
            action,
            mfa = who.mfa,
            allowed = decision.allowed,
            policies = %decision.policy_list(),
            "admin request"
        );
        if !decision.allowed {
            call.rejected = Some(Reject::Forbidden);
            self.metrics
                .rejections
                .with_label_values(&[Reject::Forbidden.code()])
                .inc();
            return Err(Box::new(Reject::Forbidden.into_detailed_response(
                &rid,
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
    async fn credentials<B>(&self, req: &Request<B>, call: &mut Call) -> Response<ProxyBody> {
        let rid = call.request_id.clone();
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
        if let Err(denied) = self.admit(req, call, action) {
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
    async fn halt<B>(&self, req: &Request<B>, call: &mut Call) -> Response<ProxyBody> {
        let rid = call.request_id.clone();
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
        let who = match self.admit(req, call, action) {
            Ok(id) => id,
            Err(denied) => return *denied,
        };
        let mut cancel = false;
        let result = match action {
            "HaltTrading" => {
                let q = crate::sim::Query::parse(req.uri().query().unwrap_or(""));
                cancel = match q.get("cancel_open_orders") {
                    None => self.proxy.kill_switch.cancel_open_orders,
                    Some("true" | "1" | "yes") => true,
                    Some("false" | "0" | "no") => false,
                    Some(_) => {
                        return error_response(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "cancel_open_orders is true or false",
                            &rid,
                        );
                    }
                };
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
                // Engaged first, so no new order races the cancellations.
                if cancel && let Some(obj) = body.as_object_mut() {
                    let accounts = &self.proxy.kill_switch.accounts;
                    let done = self.proxy.cancel_open_orders(&who, accounts).await;
                    obj.insert(
                        "cancel_open_orders".into(),
                        serde_json::json!({
                            "accounts": accounts.len(),
                            "cancelled": done.iter().filter(|r| r.result == "cancelled").count(),
                            "failed": done.iter().filter(|r| r.result != "cancelled").count(),
                            "orders": done,
                        }),
                    );
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
    async fn reload<B>(&self, req: &Request<B>, call: &mut Call) -> Response<ProxyBody> {
        let rid = call.request_id.clone();
        if req.method() != http::Method::POST {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
                &rid,
            );
        }
        if let Err(denied) = self.admit(req, call, "ReloadPolicies") {
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

/// One authenticated admin call, as its audit record will tell it.
pub struct Call {
    request_id: String,
    client_ip: std::net::IpAddr,
    started: std::time::Instant,
    action: &'static str,
    caller: Option<Arc<str>>,
    session_id: Option<Arc<str>>,
    mfa: bool,
    decision: Option<crate::policy::Decision>,
    rejected: Option<Reject>,
}

impl Call {
    fn new(peer: SocketAddr) -> Call {
        Call {
            request_id: crate::pipeline::new_request_id(),
            client_ip: peer.ip().to_canonical(),
            started: std::time::Instant::now(),
            action: "-",
            caller: None,
            session_id: None,
            mfa: false,
            decision: None,
            rejected: None,
        }
    }
}

impl Admin {
    /// The audit record of an admin call. A call that changes something
    /// (halt, resume, reload, rotate) waits until its record is durable;
    /// the change itself is never undone for want of a record (containment
    /// first), but the failure is logged and counted.
    async fn audit_call<B>(&self, call: &Call, req: &Request<B>, status: StatusCode) {
        use crate::audit::record::{DecisionRecord, Record};
        let Some(audit) = &self.proxy.audit else {
            return;
        };
        let result = match (call.rejected, status) {
            (Some(Reject::Forbidden), _) => "denied",
            (Some(_), _) => "rejected",
            (None, s) if s.is_success() => "success",
            (None, _) => "error",
        };
        let record = Record {
            request_id: call.request_id.clone(),
            user_id: call.caller.as_deref().unwrap_or("-").to_owned(),
            action: call.action.to_owned(),
            result,
            client_ip: call.client_ip.to_string(),
            session_id: call.session_id.as_deref().map(str::to_owned),
            route: format!("admin:{}", req.uri().path()),
            method: req.method().as_str().to_owned(),
            http_status: Some(status.as_u16()),
            latency_ms: Some(call.started.elapsed().as_secs_f64() * 1000.0),
            decision: call.decision.as_ref().map(DecisionRecord::of),
            reason: call.rejected.map(|r| r.code().to_owned()),
            input: call
                .decision
                .as_ref()
                .map(|_| crate::audit::record::InputRecord {
                    mfa: call.mfa,
                    order: None,
                }),
            ..Record::blank("outcome")
        };
        if req.method() == http::Method::GET || req.method() == http::Method::HEAD {
            audit.record(record);
        } else if let Err(e) = audit.durable(record).await {
            tracing::error!(error = %e, action = call.action, "the audit record of an admin call could not be written");
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
