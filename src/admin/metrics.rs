//! Prometheus metrics. Each server instance owns its registry (tests run
//! several in one process). Labels are bounded: route names come from the
//! route table, reasons and outcomes from fixed enums — never account numbers,
//! symbols, caller keys or client addresses.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub rejections: IntCounterVec,
    pub in_flight: IntGauge,
    pub open_connections: IntGaugeVec,
    pub connections_refused: IntCounterVec,
    pub decisions: IntCounterVec,
    pub shadow_disagreements: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub policy_info: IntGaugeVec,
    pub upstream_token_expiry: IntGaugeVec,
    pub upstream_token_refreshes: IntCounterVec,
    pub token_grants: IntCounterVec,
    pub audit_records: prometheus::IntCounter,
    pub audit_write_errors: prometheus::IntCounter,
    pub audit_fsync: prometheus::Histogram,
    pub audit_healthy: IntGauge,
    pub orders: IntCounterVec,
    pub order_notional: prometheus::CounterVec,
    pub orders_outside_hours: IntCounterVec,
    pub policy_denials: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub upstream_responses: IntCounterVec,
    pub upstream_connects: IntCounterVec,
    pub trading_halted: IntGauge,
    pub rate_limited: IntCounterVec,
    pub rate_limit_keys: IntGaugeVec,
    pub rate_limit_resets: IntCounterVec,
    /// Every metric name (with the `portcullis_` prefix), registered or not
    /// yet sampled: the dashboards and alert rules may name only these.
    names: Vec<String>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("portcullis".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests handled, by route, action, outcome and status class",
            ),
            &["route", "action", "outcome", "status_class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "End-to-end time to response headers",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Upstream time to response headers",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "rejections_total",
                "Requests refused by the proxy, by reason",
            ),
            &["reason"],
        )?;
        let in_flight = IntGauge::new("requests_in_flight", "Requests being handled")?;
        let open_connections = IntGaugeVec::new(
            Opts::new(
                "open_connections",
                "Open client connections by listener kind",
            ),
            &["listener"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "connections_refused_total",
                "Connections closed before serving, by reason",
            ),
            &["reason"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "policy_decisions_total",
                "Authorization decisions, by action and decision (allow / deny)",
            ),
            &["action", "decision"],
        )?;
        let shadow_disagreements = IntCounterVec::new(
            Opts::new(
                "policy_shadow_disagreements_total",
                "Requests where the shadow (candidate) policy set decided differently, by action and the shadow's decision",
            ),
            &["action", "shadow_decision"],
        )?;
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "policy_reload_total",
                "Policy reload attempts, by policy set (active / shadow) and result (applied / unchanged / failed)",
            ),
            &["set", "result"],
        )?;
        let policy_info = IntGaugeVec::new(
            Opts::new(
                "policy_set_info",
                "The active policy set: 1 for the content hash in force",
            ),
            &["hash"],
        )?;
        let upstream_token_expiry = IntGaugeVec::new(
            Opts::new(
                "upstream_token_expires_in_seconds",
                "Seconds until the broker OAuth token expires (token = access / refresh); negative once expired",
            ),
            &["token"],
        )?;
        let upstream_token_refreshes = IntCounterVec::new(
            Opts::new(
                "upstream_token_refreshes_total",
                "Access-token refresh attempts at the broker, by outcome (ok / rejected / unavailable / skipped)",
            ),
            &["outcome"],
        )?;
        let token_grants = IntCounterVec::new(
            Opts::new(
                "token_grants_total",
                "Proxy token endpoint requests, by grant type and outcome (issued or the OAuth error code)",
            ),
            &["grant", "outcome"],
        )?;
        let audit_records =
            prometheus::IntCounter::new("audit_records_total", "Audit records written (fsync'ed)")?;
        let audit_write_errors = prometheus::IntCounter::new(
            "audit_write_errors_total",
            "Audit batches that could not be written or fsync'ed",
        )?;
        let audit_fsync = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "audit_write_seconds",
                "Time to write and fsync one batch of audit records (group commit)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let audit_healthy = IntGauge::new(
            "audit_healthy",
            "1 while the last audit batch was written and fsync'ed; 0 while the trail cannot be written (orders are refused)",
        )?;
        // Healthy until a write fails (a deployment without an audit trail
        // has nothing failing; production configurations require one).
        audit_healthy.set(1);
        let orders = IntCounterVec::new(
            Opts::new(
                "orders_total",
                "Order requests (place, replace, cancel, preview), by action, side (the legs' instruction, `mixed` when they differ, `none` for a cancel) and outcome (accepted / broker_refused / denied / halted / rejected / failed / cancelled)",
            ),
            &["action", "side", "outcome"],
        )?;
        let order_notional = prometheus::CounterVec::new(
            Opts::new(
                "order_notional_dollars_total",
                "Notional (price x quantity, x100 for options) of orders the broker accepted, by action; orders without a capping price (MARKET, STOP, ...) add nothing",
            ),
            &["action"],
        )?;
        let orders_outside_hours = IntCounterVec::new(
            Opts::new(
                "orders_outside_market_hours_total",
                "Orders (place / replace) the broker accepted outside 09:30-16:00 New York time on a weekday (exchange holidays are not known)",
            ),
            &["action"],
        )?;
        let policy_denials = IntCounterVec::new(
            Opts::new(
                "policy_denials_total",
                "Requests denied by policy, by action and reason (the deciding forbid's @reason, policy_denied without one, not_permitted when no permit applies, policy_error)",
            ),
            &["action", "reason"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Failed authentications, by kind: credential (unknown or missing key, token or client secret), signature (a required request signature missing or bad), token_grant (a refused refresh token or one-time code)",
            ),
            &["kind"],
        )?;
        let upstream_responses = IntCounterVec::new(
            Opts::new(
                "upstream_responses_total",
                "Responses from the broker by status class (429 counted on its own); unreachable or timed out: `unavailable`",
            ),
            &["status"],
        )?;
        let upstream_connects = IntCounterVec::new(
            Opts::new(
                "upstream_connects_total",
                "HTTP/2 connections dialed to the broker, by outcome: h2, http1 (the broker chose HTTP/1.1; the HTTP/1.1 pool serves from then on), failed",
            ),
            &["outcome"],
        )?;
        let trading_halted = IntGauge::new(
            "trading_halted",
            "1 while the kill switch is engaged (orders refused), else 0",
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused with 429, by limit (per_ip, auth_lockout, per_caller, per_account_orders, upstream)",
            ),
            &["limit"],
        )?;
        let rate_limit_keys = IntGaugeVec::new(
            Opts::new(
                "rate_limit_keys",
                "Keys (addresses, callers, accounts) each keyed limiter tracks",
            ),
            &["limit"],
        )?;
        let rate_limit_resets = IntCounterVec::new(
            Opts::new(
                "rate_limit_resets_total",
                "Keyed limiters emptied because they reached rate_limits.max_keys with every key busy",
            ),
            &["limit"],
        )?;
        let mut names = Vec::new();
        let build = IntGaugeVec::new(Opts::new("build_info", "Build information"), &["version"])?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(rejections.clone()),
            Box::new(in_flight.clone()),
            Box::new(open_connections.clone()),
            Box::new(connections_refused.clone()),
            Box::new(decisions.clone()),
            Box::new(shadow_disagreements.clone()),
            Box::new(policy_reloads.clone()),
            Box::new(policy_info.clone()),
            Box::new(upstream_token_expiry.clone()),
            Box::new(upstream_token_refreshes.clone()),
            Box::new(token_grants.clone()),
            Box::new(audit_records.clone()),
            Box::new(audit_write_errors.clone()),
            Box::new(audit_fsync.clone()),
            Box::new(audit_healthy.clone()),
            Box::new(orders.clone()),
            Box::new(order_notional.clone()),
            Box::new(orders_outside_hours.clone()),
            Box::new(policy_denials.clone()),
            Box::new(auth_failures.clone()),
            Box::new(upstream_responses.clone()),
            Box::new(upstream_connects.clone()),
            Box::new(trading_halted.clone()),
            Box::new(rate_limited.clone()),
            Box::new(rate_limit_keys.clone()),
            Box::new(rate_limit_resets.clone()),
            Box::new(build),
        ] {
            names.extend(c.desc().iter().map(|d| format!("portcullis_{}", d.fq_name)));
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            rejections,
            in_flight,
            open_connections,
            connections_refused,
            decisions,
            shadow_disagreements,
            policy_reloads,
            policy_info,
            upstream_token_expiry,
            upstream_token_refreshes,
            token_grants,
            audit_records,
            audit_write_errors,
            audit_fsync,
            audit_healthy,
            orders,
            order_notional,
            orders_outside_hours,
            policy_denials,
            auth_failures,
            upstream_responses,
            upstream_connects,
            trading_halted,
            rate_limited,
            rate_limit_keys,
            rate_limit_resets,
            names,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail on I/O; a metric-family error would
        // be a bug, and an empty scrape is the safe answer to it.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            buf.clear();
        }
        buf
    }
}

impl Metrics {
    /// The name of every metric this proxy exports.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Counts `r` in `auth_failures_total` if it is a failed authentication.
    pub fn count_auth_failure(&self, r: crate::reject::Reject) {
        use crate::reject::Reject;
        let kind = match r {
            Reject::Unauthenticated | Reject::TokenGrant("invalid_client") => "credential",
            Reject::Signature(_) => "signature",
            Reject::TokenGrant("invalid_grant") => "token_grant",
            _ => return,
        };
        self.auth_failures.with_label_values(&[kind]).inc();
    }

    /// Marks `hash` as the active policy set (and only it).
    pub fn set_policy_hash(&self, hash: &str) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[hash]).set(1);
    }
}

/// The `side` label of an order: its legs' instruction when they agree,
/// `mixed` when they differ, `none` without legs (a cancel); an instruction
/// outside Schwab's list is `other`, so the label stays bounded.
pub fn order_side(instructions: &[String]) -> &'static str {
    match instructions {
        [] => "none",
        [one] => crate::pipeline::order::INSTRUCTIONS
            .iter()
            .find(|k| **k == one)
            .copied()
            .unwrap_or("other"),
        _ => "mixed",
    }
}

/// The `status` label of `upstream_responses_total`.
pub fn upstream_class(status: u16) -> &'static str {
    if status == 429 {
        "429"
    } else {
        status_class(status)
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the alert rules and the dashboard query exists: a
    /// renamed metric must not leave a silent alert or an empty panel.
    #[test]
    fn alerts_and_dashboard_name_only_exported_metrics() {
        let m = Metrics::new().unwrap();
        let known = m.names();
        for (file, text) in [
            (
                "deploy/prometheus/alerts.yml",
                include_str!("../../deploy/prometheus/alerts.yml"),
            ),
            (
                "deploy/grafana/portcullis.json",
                include_str!("../../deploy/grafana/portcullis.json"),
            ),
        ] {
            let mut seen = 0;
            for (i, _) in text.match_indices("portcullis_") {
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // Only metric names: `portcullis_…{` or `…[` or ` ` etc.,
                // never a file or a rule name.
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                if name.len() == "portcullis_".len() {
                    continue;
                }
                seen += 1;
                assert!(
                    known.iter().any(|k| k == base),
                    "{file} names {name}, which this proxy does not export"
                );
            }
            assert!(seen > 10, "{file}: only {seen} metric names found");
        }
    }

    /// Every alert's runbook link points at a section of the runbook.
    #[test]
    fn every_alert_links_to_a_runbook_section() {
        let alerts = include_str!("../../deploy/prometheus/alerts.yml");
        let runbook = include_str!("../../docs/incident-response.md");
        // GitHub's anchor for a heading: lowercase, spaces to hyphens,
        // punctuation dropped.
        let anchors: Vec<String> = runbook
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .map(|h| {
                h.trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter_map(|c| match c {
                        ' ' => Some('-'),
                        c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let alert_count = alerts.matches("- alert: ").count();
        let links: Vec<&str> = alerts
            .lines()
            .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
            .collect();
        assert_eq!(links.len(), alert_count, "an alert has no runbook_url");
        for link in links {
            let anchor = link
                .strip_prefix("docs/incident-response.md#")
                .unwrap_or_else(|| panic!("{link}: not a runbook section"));
            assert!(
                anchors.iter().any(|a| a == anchor),
                "{link}: no such heading in docs/incident-response.md"
            );
        }
    }
}
