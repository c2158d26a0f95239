//! One audit record. The field names of the security guidelines are kept
//! (`timestamp`, `user_id`, `action`, `details` {`order_id`, `symbol`,
//! `quantity`, `side`, `order_type`}, `result`, `client_ip`, `session_id`)
//! and extended. Never a secret or a full account number; bodies are
//! summarised, never copied.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Assigned by the writer: one more than the record before.
    pub seq: u64,
    /// RFC 3339 UTC, milliseconds.
    pub timestamp: String,
    /// `intent` (before forwarding a state-changing request) or `outcome`.
    pub kind: &'static str,
    pub request_id: String,
    /// The caller id, or `-` before identification.
    pub user_id: String,
    /// The route's action (`PlaceOrder`, …), or `-`.
    pub action: String,
    pub details: Details,
    /// `success`, `denied`, `rejected`, `error`, `cancelled`, or `pending`
    /// (intent records).
    pub result: &'static str,
    pub client_ip: String,
    pub session_id: Option<String>,
    pub route: String,
    pub method: String,
    pub http_status: Option<u16>,
    pub upstream_status: Option<u16>,
    pub latency_ms: Option<f64>,
    pub decision: Option<DecisionRecord>,
    /// The rejection code, when the proxy refused the request.
    pub reason: Option<String>,
    /// What Cedar was given beyond the fields above (whether the session
    /// had MFA, the order's facts), so `audit replay` can decide again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<InputRecord>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InputRecord {
    pub mfa: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<crate::pipeline::order::OrderSummary>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Details {
    pub order_id: Option<String>,
    pub symbol: Option<String>,
    pub quantity: Option<i64>,
    pub side: Option<String>,
    pub order_type: Option<String>,
    pub price: Option<String>,
    pub duration: Option<String>,
    /// The account hash, masked: first and last four characters.
    pub account: Option<String>,
    /// Multi-leg and child orders: one entry per leg.
    pub legs: Option<Vec<Leg>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Leg {
    pub symbol: String,
    pub side: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    pub allowed: bool,
    pub policies: Vec<String>,
    pub reason: Option<String>,
}

impl DecisionRecord {
    pub fn of(d: &crate::policy::Decision) -> DecisionRecord {
        DecisionRecord {
            allowed: d.allowed,
            policies: d.policies.to_vec(),
            reason: d.reason.as_deref().map(str::to_owned),
        }
    }
}

impl Record {
    /// A record of `kind` stamped now, every other field empty (`-` or
    /// none); the writer assigns `seq`.
    pub fn blank(kind: &'static str) -> Record {
        Record {
            seq: 0,
            timestamp: timestamp(),
            kind,
            request_id: "-".into(),
            user_id: "-".into(),
            action: "-".into(),
            details: Details::default(),
            result: "success",
            client_ip: "-".into(),
            session_id: None,
            route: "-".into(),
            method: "-".into(),
            http_status: None,
            upstream_status: None,
            latency_ms: None,
            decision: None,
            reason: None,
            input: None,
        }
    }
}

/// `ABCD…WXYZ`: enough to tell accounts apart, not enough to be one.
pub fn mask_account(hash: &str) -> String {
    if hash.len() <= 8 {
        return "****".into();
    }
    format!("{}…{}", &hash[..4], &hash[hash.len() - 4..])
}

/// Now, RFC 3339 UTC with milliseconds.
pub fn timestamp() -> String {
    crate::policy::clock::rfc3339_utc(time::OffsetDateTime::now_utc(), true)
}
