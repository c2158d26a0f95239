//! Security monitoring: the metrics the alert rules in
//! deploy/prometheus/alerts.yml read, and an audit record for every
//! authenticated admin call.

use crate::common;

use common::{ADMIN, Harness, LIMIT_ORDER, MARKET_ORDER, TRADER, VIEWER, metric};

#[tokio::test]
async fn orders_denials_auth_failures_and_the_halt_are_counted() {
    let h = Harness::start().await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    // Accepted: a LIMIT buy of 10 at 150.00 (1,500 dollars) and a MARKET
    // buy (no capping price: no notional).
    for body in [LIMIT_ORDER, MARKET_ORDER] {
        let r = h.send("POST", &orders, Some(TRADER), Some(body)).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Denied by the demo's deny-list, and by role (a viewer may not trade).
    let gme = LIMIT_ORDER.replace("AAPL", "GME");
    assert_eq!(
        h.send("POST", &orders, Some(TRADER), Some(&gme))
            .await
            .status,
        403
    );
    assert_eq!(
        h.send("POST", &orders, Some(VIEWER), Some(LIMIT_ORDER))
            .await
            .status,
        403
    );
    let sell = LIMIT_ORDER.replace("\"BUY\"", "\"SELL\"");
    assert_eq!(
        h.send("POST", &orders, Some(TRADER), Some(&sell))
            .await
            .status,
        201
    );
    // Three unknown keys.
    for _ in 0..3 {
        assert_eq!(
            h.send(
                "GET",
                "/marketdata/v1/quotes?symbols=AAPL",
                Some("guess"),
                None
            )
            .await
            .status,
            401
        );
    }
    // Halted: an order attempt is counted as such, the gauge says so.
    assert_eq!(h.admin_post("/admin/halt", Some(ADMIN)).await.status, 200);
    assert_eq!(
        h.send("POST", &orders, Some(TRADER), Some(LIMIT_ORDER))
            .await
            .status,
        403
    );

    let m = h.admin_get("/metrics").await.text();
    let orders_total = |side: &str, outcome: &str| {
        metric(
            &m,
            &format!(
                "portcullis_orders_total{{action=\"PlaceOrder\",outcome=\"{outcome}\",side=\"{side}\"}}"
            ),
        )
    };
    assert_eq!(orders_total("BUY", "accepted"), 2.0, "{m}");
    assert_eq!(orders_total("SELL", "accepted"), 1.0, "{m}");
    assert_eq!(orders_total("BUY", "denied"), 2.0, "{m}");
    assert_eq!(orders_total("BUY", "halted"), 1.0, "{m}");
    // 1,500 (buy) + 1,500 (sell); the MARKET order adds nothing.
    assert_eq!(
        metric(
            &m,
            "portcullis_order_notional_dollars_total{action=\"PlaceOrder\"}"
        ),
        3000.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_policy_denials_total{action=\"PlaceOrder\",reason=\"symbol_denied\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_policy_denials_total{action=\"PlaceOrder\",reason=\"not_permitted\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "portcullis_auth_failures_total{kind=\"credential\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(metric(&m, "portcullis_trading_halted"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "portcullis_upstream_responses_total{status=\"2xx\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(metric(&m, "portcullis_audit_healthy"), 1.0, "{m}");
    // Labels stay bounded: no symbol, account or key in any series.
    for secret in ["AAPL", "GME", "guess", &h.account_hash()] {
        assert!(
            !m.lines().any(|l| !l.starts_with('#') && l.contains(secret)),
            "{secret} in metrics"
        );
    }
}

#[tokio::test]
async fn every_authenticated_admin_call_is_audited() {
    let h = Harness::start().await;
    assert_eq!(
        h.admin_post("/admin/halt?reason=drill", Some(ADMIN))
            .await
            .status,
        200
    );
    assert_eq!(
        h.admin_call("GET", "/admin/status", Some(TRADER))
            .await
            .status,
        403
    );
    assert_eq!(
        h.admin_call("DELETE", "/admin/halt", Some("nope"))
            .await
            .status,
        401
    );
    assert_eq!(h.admin_post("/admin/reload", Some(ADMIN)).await.status, 200);
    // Probes are not audited (a scrape every few seconds would drown the trail).
    h.admin_get("/metrics").await;
    h.admin_get("/healthz").await;

    let recs = common::records(&common::audit_dir(&h), 5).await;
    let admin: Vec<_> = recs
        .iter()
        .filter(|r| r["route"].as_str().is_some_and(|s| s.starts_with("admin:")))
        .collect();
    assert_eq!(admin.len(), 4, "{recs:#?}");
    let halt = admin[0];
    assert_eq!(halt["action"], "HaltTrading");
    assert_eq!(halt["user_id"], "demo-admin");
    assert_eq!(halt["result"], "success");
    assert_eq!(halt["method"], "POST");
    assert_eq!(halt["http_status"], 200);
    assert_eq!(halt["decision"]["allowed"], true);
    assert_eq!(admin[1]["action"], "ViewStatus");
    assert_eq!(admin[1]["user_id"], "demo-trader");
    assert_eq!(admin[1]["result"], "denied");
    assert_eq!(admin[2]["action"], "ResumeTrading");
    assert_eq!(admin[2]["user_id"], "-");
    assert_eq!(admin[2]["result"], "rejected");
    assert_eq!(admin[2]["reason"], "unauthenticated");
    assert_eq!(admin[3]["action"], "ReloadPolicies");
    assert_eq!(admin[3]["result"], "success");
    assert!(
        !recs.iter().any(|r| r["route"] == "admin:/metrics"),
        "a scrape was audited"
    );
}

/// docs/security/controls.md and threat-model.md name the tests that
/// implement each control:
/// every one must exist (a renamed or deleted test would leave the
/// compliance document pointing at nothing).
#[test]
fn every_test_the_controls_document_names_exists() {
    let doc = std::fs::read_to_string("docs/security/controls.md").unwrap()
        + &std::fs::read_to_string("docs/security/threat-model.md").unwrap();
    let mut sources = String::new();
    for dir in ["src", "tests/it"] {
        let mut stack = vec![std::path::PathBuf::from(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    sources.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
    }
    let mut named = 0;
    for cell in doc.split('`').skip(1).step_by(2) {
        // `module::…::test_name`: a test reference.
        let Some((_, name)) = cell.rsplit_once("::") else {
            continue;
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        named += 1;
        assert!(
            sources.contains(&format!("fn {name}(")),
            "docs/security names `{cell}`, which no test defines"
        );
    }
    assert!(named > 30, "only {named} test references found");
}
