//! The kill switch: while trading is halted, every state-changing order
//! action (place, replace, cancel — routes marked `mutates`) is refused with
//! 403 `trading_halted` and never forwarded; reads continue.
//!
//! The state survives a restart: it is written (atomically, 0600) to
//! `kill_switch.state_file` on every change and read at start. A state file
//! that exists but cannot be read means halted (fail closed).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// Who halted trading, when and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HaltState {
    pub halted: bool,
    pub by: Option<String>,
    pub at: Option<String>,
    pub reason: Option<String>,
}

pub struct KillSwitch {
    halted: AtomicBool,
    state: Mutex<HaltState>,
    file: Option<PathBuf>,
    /// Cancel every open order when engaged, unless the call says otherwise.
    pub cancel_open_orders: bool,
    /// The account hashes whose open orders are cancelled.
    pub accounts: Vec<String>,
}

impl KillSwitch {
    /// Reads the persisted state (none configured: not halted).
    pub fn load(file: Option<&Path>) -> KillSwitch {
        let state = match file {
            None => HaltState {
                halted: false,
                by: None,
                at: None,
                reason: None,
            },
            Some(f) => match std::fs::read(f) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => HaltState {
                    halted: false,
                    by: None,
                    at: None,
                    reason: None,
                },
                Err(e) => fail_closed(f, &e.to_string()),
                Ok(bytes) => match serde_json::from_slice::<HaltState>(&bytes) {
                    Ok(s) => s,
                    Err(e) => fail_closed(f, &e.to_string()),
                },
            },
        };
        if state.halted {
            tracing::warn!(
                by = state.by.as_deref(),
                reason = state.reason.as_deref(),
                "trading is halted"
            );
        }
        KillSwitch {
            halted: AtomicBool::new(state.halted),
            state: Mutex::new(state),
            file: file.map(Path::to_path_buf),
            cancel_open_orders: false,
            accounts: Vec::new(),
        }
    }

    /// What an engage does to open orders: cancel them by default or not,
    /// and on which accounts.
    pub fn with_cancel(mut self, by_default: bool, accounts: Vec<String>) -> KillSwitch {
        self.cancel_open_orders = by_default;
        self.accounts = accounts;
        self
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    pub fn state(&self) -> HaltState {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Engages (`true`) or releases the switch, persisting it first: a
    /// release that cannot be written is not applied.
    pub fn set(&self, halted: bool, by: &str, reason: Option<String>) -> Result<HaltState, String> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = HaltState {
            halted,
            by: Some(by.to_owned()),
            at: Some(crate::audit::record::timestamp()),
            reason,
        };
        if halted {
            // Containment first: refuse orders even if the file write fails.
            self.halted.store(true, Ordering::Release);
        }
        if let Some(f) = &self.file {
            let bytes = serde_json::to_vec(&next).map_err(|e| e.to_string())?;
            crate::credentials::store::write_atomically(f, &bytes)
                .map_err(|e| format!("{}: {e}", f.display()))?;
        }
        self.halted.store(halted, Ordering::Release);
        *st = next.clone();
        tracing::warn!(
            halted,
            by,
            reason = next.reason.as_deref(),
            "kill switch changed"
        );
        Ok(next)
    }
}

fn fail_closed(f: &Path, why: &str) -> HaltState {
    tracing::error!(file = %f.display(), error = why, "the halt state cannot be read: trading stays halted");
    HaltState {
        halted: true,
        by: Some("portcullis".into()),
        at: None,
        reason: Some("halt state file unreadable".into()),
    }
}

/// Order statuses Schwab can still cancel (used when an order does not say
/// `cancelable` itself).
const OPEN_STATUSES: &[&str] = &[
    "AWAITING_PARENT_ORDER",
    "AWAITING_CONDITION",
    "AWAITING_STOP_CONDITION",
    "AWAITING_MANUAL_REVIEW",
    "ACCEPTED",
    "AWAITING_UR_OUT",
    "PENDING_ACTIVATION",
    "QUEUED",
    "WORKING",
    "NEW",
    "AWAITING_RELEASE_TIME",
    "PENDING_ACKNOWLEDGEMENT",
];

/// How far back open orders are looked for (Schwab's order queries reach
/// 60 days back at most for all accounts; a GTC order can be older only if
/// the account trades rarely, and it then shows in the broker's UI).
const LOOKBACK_DAYS: i64 = 60;

/// What `cancel_open_orders` did for one order (or one account it could
/// not list).
#[derive(Debug, Clone, Serialize)]
pub struct CancelResult {
    /// The account hash, masked.
    pub account: String,
    pub order_id: Option<String>,
    /// The order's status before (as the broker listed it).
    pub status: Option<String>,
    /// `cancelled`, `failed`, `list_failed` or `audit_unavailable`.
    pub result: &'static str,
    /// The broker's HTTP status, when it answered.
    pub http_status: Option<u16>,
}

/// The order ids and statuses of `orders` (a Schwab order list) that can
/// still be cancelled.
pub fn cancelable_orders(orders: &serde_json::Value) -> Vec<(String, String)> {
    let Some(list) = orders.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|o| {
            let id = match o.get("orderId")? {
                serde_json::Value::Number(n) => n.as_u64()?.to_string(),
                serde_json::Value::String(s) if s.bytes().all(|b| b.is_ascii_digit()) => s.clone(),
                _ => return None,
            };
            let status = o.get("status").and_then(|s| s.as_str()).unwrap_or("");
            let open = match o.get("cancelable").and_then(|c| c.as_bool()) {
                Some(c) => c,
                None => OPEN_STATUSES.contains(&status),
            };
            open.then(|| (id, status.to_owned()))
        })
        .collect()
}

impl crate::pipeline::Proxy {
    /// Cancels every open order on every configured account through the
    /// broker, after the halt is engaged (so no new order can race in).
    /// Each cancellation is audited like a caller's: an intent record on
    /// disk first (no record, no cancel), the outcome after.
    pub async fn cancel_open_orders(&self, by: &str, accounts: &[String]) -> Vec<CancelResult> {
        let mut out = Vec::new();
        let now = time::OffsetDateTime::now_utc();
        let from =
            crate::policy::clock::rfc3339_utc(now - time::Duration::days(LOOKBACK_DAYS), true);
        let to = crate::policy::clock::rfc3339_utc(now, true);
        for hash in accounts {
            let masked = crate::audit::record::mask_account(hash);
            let list_path = format!(
                "/trader/v1/accounts/{hash}/orders?fromEnteredTime={from}&toEnteredTime={to}"
            );
            let listed = match self.broker_call(http::Method::GET, &list_path).await {
                Ok((status, body)) if status.is_success() => {
                    serde_json::from_slice::<serde_json::Value>(&body).map_err(|_| Some(status))
                }
                Ok((status, _)) => Err(Some(status)),
                Err(_) => Err(None),
            };
            let orders = match listed {
                Ok(v) => v,
                Err(status) => {
                    tracing::error!(account = %masked, status = status.map(|s| s.as_u16()), "could not list open orders to cancel");
                    out.push(CancelResult {
                        account: masked,
                        order_id: None,
                        status: None,
                        result: "list_failed",
                        http_status: status.map(|s| s.as_u16()),
                    });
                    continue;
                }
            };
            for (id, status) in cancelable_orders(&orders) {
                let r = self.cancel_one(by, hash, &masked, &id).await;
                tracing::warn!(account = %masked, order_id = %id, result = r.0, "kill switch: open order cancel");
                out.push(CancelResult {
                    account: masked.clone(),
                    order_id: Some(id),
                    status: Some(status),
                    result: r.0,
                    http_status: r.1,
                });
            }
        }
        out
    }

    async fn cancel_one(
        &self,
        by: &str,
        hash: &str,
        masked: &str,
        id: &str,
    ) -> (&'static str, Option<u16>) {
        use crate::audit::Record;
        let request_id = crate::pipeline::new_request_id();
        let started = std::time::Instant::now();
        let record = |kind: &'static str, result: &'static str, status: Option<u16>| Record {
            request_id: request_id.clone(),
            user_id: by.to_owned(),
            action: "CancelOrder".into(),
            details: crate::audit::record::Details {
                order_id: Some(id.to_owned()),
                account: Some(masked.to_owned()),
                ..Default::default()
            },
            result,
            route: "kill_switch:cancel_open_orders".into(),
            method: "DELETE".into(),
            upstream_status: status,
            http_status: status,
            latency_ms: (kind == "outcome").then(|| started.elapsed().as_secs_f64() * 1000.0),
            reason: Some("kill_switch".into()),
            ..Record::blank(kind)
        };
        if let Some(audit) = &self.audit
            && let Err(e) = audit.durable(record("intent", "pending", None)).await
        {
            tracing::error!(error = %e, "no intent record, so the open order is not cancelled");
            return ("audit_unavailable", None);
        }
        let path = format!("/trader/v1/accounts/{hash}/orders/{id}");
        let (result, status) = match self.broker_call(http::Method::DELETE, &path).await {
            Ok((s, _)) if s.is_success() => ("cancelled", Some(s.as_u16())),
            Ok((s, _)) => ("failed", Some(s.as_u16())),
            Err(_) => ("failed", None),
        };
        let outcome = match status {
            Some(_) if result == "cancelled" => "accepted",
            Some(_) => "broker_refused",
            None => "failed",
        };
        self.metrics
            .orders
            .with_label_values(&["CancelOrder", "none", outcome])
            .inc();
        if let Some(upstream) = status {
            self.metrics
                .upstream_responses
                .with_label_values(&[crate::admin::metrics::upstream_class(upstream)])
                .inc();
        }
        if let Some(audit) = &self.audit {
            let r = if result == "cancelled" {
                "success"
            } else {
                "error"
            };
            if let Err(e) = audit.durable(record("outcome", r, status)).await {
                tracing::error!(error = %e, "the outcome record of a kill-switch cancel could not be written");
            }
        }
        (result, status)
    }

    /// A request of the proxy's own to the broker (with its Schwab token):
    /// the status and the body (at most 16 MiB).
    async fn broker_call(
        &self,
        method: http::Method,
        path_and_query: &str,
    ) -> Result<(http::StatusCode, bytes::Bytes), crate::reject::Reject> {
        use http_body_util::BodyExt;
        let authorization = self.upstream_auth.header().await?;
        let mut req = http::Request::new(http_body_util::Full::new(bytes::Bytes::new()));
        *req.method_mut() = method;
        *req.uri_mut() = self.upstream.uri_for(path_and_query)?;
        let h = req.headers_mut();
        h.insert(http::header::AUTHORIZATION, authorization);
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let (resp, _) = self.upstream.send(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(crate::reject::Reject::UpstreamUnavailable);
            };
            if let Some(data) = frame.data_ref() {
                if out.len() + data.len() > 16 << 20 {
                    return Err(crate::reject::Reject::UpstreamUnavailable);
                }
                out.extend_from_slice(data);
            }
        }
        Ok((status, out.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_orders_are_open() {
        let list = serde_json::json!([
            {"orderId": 1001, "status": "WORKING", "cancelable": true},
            {"orderId": 1002, "status": "FILLED", "cancelable": false},
            {"orderId": 1003, "status": "QUEUED"},
            {"orderId": 1004, "status": "CANCELED"},
            {"orderId": "1005", "status": "PENDING_ACTIVATION"},
            {"orderId": "10/06", "status": "WORKING"},
            {"orderId": -7, "status": "WORKING"},
            {"status": "WORKING"},
            // The broker's own flag wins over the status.
            {"orderId": 1009, "status": "WORKING", "cancelable": false}
        ]);
        let ids: Vec<String> = cancelable_orders(&list)
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(ids, ["1001", "1003", "1005"]);
        assert!(cancelable_orders(&serde_json::json!({"error": "x"})).is_empty());
    }
}
