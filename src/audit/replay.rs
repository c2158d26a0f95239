//! `portcullis audit replay --config FILE --policies DIR PATH...`: decides
//! the requests recorded in the audit trail again under a candidate policy
//! set and reports which decisions would change, so a policy change is
//! checked against real history before it ships.
//!
//! Each outcome record that carries a decision is rebuilt into the Cedar
//! request the proxy made: the caller (`user_id`) and its role and accounts
//! from the configuration, the action, the resource (the account, matched
//! from its masked form against `accounts`; the proxy for admin calls; the
//! API otherwise), `client_ip`, the record's `timestamp` as the request
//! time, the session, and from `input` whether the session had MFA and the
//! order's facts. Records written before `input` existed, or naming an
//! account the configuration does not have, are counted as not replayable.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::policy::{DecisionInput, Engine, Resource};

/// The fields of a record replay reads.
#[derive(Deserialize)]
struct Recorded {
    kind: String,
    request_id: String,
    timestamp: String,
    user_id: String,
    action: String,
    #[serde(default)]
    route: String,
    client_ip: String,
    session_id: Option<String>,
    #[serde(default)]
    details: RecordedDetails,
    decision: Option<RecordedDecision>,
    input: Option<super::record::InputRecord>,
}

#[derive(Deserialize, Default)]
struct RecordedDetails {
    account: Option<String>,
}

#[derive(Deserialize)]
struct RecordedDecision {
    allowed: bool,
    reason: Option<String>,
}

/// One decision that would change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub request_id: String,
    pub timestamp: String,
    pub user_id: String,
    pub action: String,
    pub was: String,
    pub would_be: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ActionCounts {
    pub replayed: u64,
    pub allow_to_deny: u64,
    pub deny_to_allow: u64,
    /// Still denied, for another reason.
    pub reason_changed: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    pub files: usize,
    pub policy_hash: String,
    pub replayed: u64,
    pub changed: u64,
    pub not_replayable: u64,
    pub by_action: BTreeMap<String, ActionCounts>,
    /// Every change, oldest first.
    pub changes: Vec<Change>,
}

impl ReplayReport {
    /// 0: no decision would change; 1: some would.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.changed > 0)
    }
}

fn said(allowed: bool, reason: Option<&str>) -> String {
    match (allowed, reason) {
        (true, _) => "allow".into(),
        (false, Some(r)) => format!("deny ({r})"),
        (false, None) => "deny".into(),
    }
}

/// The configured account hash a masked account (`ABCD…WXYZ`) stands for,
/// if exactly one matches.
fn unmask<'a>(config: &'a Config, masked: &str) -> Option<&'a str> {
    let mut hits = config
        .accounts
        .iter()
        .filter(|a| super::record::mask_account(&a.hash) == masked);
    let first = hits.next()?;
    hits.next().is_none().then_some(first.hash.as_str())
}

/// Replays every decided outcome record in `files` under `engine`.
pub fn replay(config: &Config, engine: &Engine, files: &[PathBuf]) -> Result<ReplayReport, String> {
    let mut report = ReplayReport {
        files: files.len(),
        policy_hash: engine.current().bundle.hash.clone(),
        ..ReplayReport::default()
    };
    let environment = config.environment.as_str();
    for file in files {
        let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let reader = std::io::BufReader::with_capacity(1 << 20, f);
        for line in reader.split(b'\n') {
            let line = line.map_err(|e| format!("{}: {e}", file.display()))?;
            let Ok(r) = serde_json::from_slice::<Recorded>(&line) else {
                continue; // a torn final line, or not a record
            };
            let Some(was) = &r.decision else {
                continue; // refused before any decision
            };
            if r.kind != "outcome" {
                continue;
            }
            let resource = if r.route.starts_with("admin:") {
                Some(Resource::Proxy)
            } else {
                match &r.details.account {
                    None => Some(Resource::Api),
                    Some(m) => unmask(config, m).map(Resource::Account),
                }
            };
            let time = time::OffsetDateTime::parse(
                &r.timestamp,
                &time::format_description::well_known::Rfc3339,
            );
            let (Some(input), Some(resource), Ok(time), Ok(ip)) =
                (&r.input, resource, time, r.client_ip.parse())
            else {
                report.not_replayable += 1;
                continue;
            };
            let decision = engine.decide(&DecisionInput {
                caller: &r.user_id,
                action: &r.action,
                resource,
                client_ip: ip,
                time,
                mfa: input.mfa,
                environment,
                session_id: r.session_id.as_deref().unwrap_or(&r.request_id),
                order: input.order.as_ref(),
            });
            report.replayed += 1;
            let counts = report.by_action.entry(r.action.clone()).or_default();
            counts.replayed += 1;
            let same_reason = decision.reason.as_deref() == was.reason.as_deref();
            let kind = match (was.allowed, decision.allowed) {
                (true, false) => Some(&mut counts.allow_to_deny),
                (false, true) => Some(&mut counts.deny_to_allow),
                (false, false) if !same_reason => Some(&mut counts.reason_changed),
                _ => None,
            };
            if let Some(k) = kind {
                *k += 1;
                report.changed += 1;
                report.changes.push(Change {
                    request_id: r.request_id.clone(),
                    timestamp: r.timestamp.clone(),
                    user_id: r.user_id.clone(),
                    action: r.action.clone(),
                    was: said(was.allowed, was.reason.as_deref()),
                    would_be: said(decision.allowed, decision.reason.as_deref()),
                });
            }
        }
    }
    Ok(report)
}

/// The human report; at most `limit` changes listed.
pub fn describe(r: &ReplayReport, candidate: &str, limit: usize) -> String {
    let mut out = format!(
        "replayed {} decision(s) from {} file(s) under {candidate} (policy set {}): {} would change\n",
        r.replayed,
        r.files,
        &r.policy_hash[..r.policy_hash.len().min(16)],
        r.changed
    );
    for (action, c) in &r.by_action {
        out.push_str(&format!(
            "  {action:<24} {:>8} replayed  {:>6} allow→deny  {:>6} deny→allow  {:>6} other deny reason\n",
            c.replayed, c.allow_to_deny, c.deny_to_allow, c.reason_changed
        ));
    }
    if !r.changes.is_empty() {
        out.push_str(&format!(
            "changes ({} of {}):\n",
            r.changes.len().min(limit),
            r.changes.len()
        ));
        for c in r.changes.iter().take(limit) {
            out.push_str(&format!(
                "  {} {} {} {}: {} → {}\n",
                c.timestamp, c.request_id, c.user_id, c.action, c.was, c.would_be
            ));
        }
    }
    if r.not_replayable > 0 {
        out.push_str(&format!(
            "note: {} decided record(s) could not be replayed (written before records kept \
             Cedar's inputs, or naming an account the configuration does not have)\n",
            r.not_replayable
        ));
    }
    out
}
