//! Cedar authorization through the real HTTP path: the demo stack (proxy in
//! front of the simulator over TLS) with the shipped roles and the demo's
//! two guard rules (at most 100 shares per order, GME denied). Every denial
//! is checked twice: the caller gets 403 with a stable reason, and the
//! simulator's journal shows the request never went upstream.

use crate::common;

use std::time::Duration;

use common::*;
use portcullis::sim::SimOptions;

fn order_path(h: &Harness, account: usize) -> String {
    format!(
        "/trader/v1/accounts/{}/orders",
        h.sim.accounts()[account].hash
    )
}

/// Sends a request on a clean journal; returns the reply and whether the
/// simulator saw it.
async fn send_traced(
    h: &Harness,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> (Reply, bool) {
    h.sim.clear_journal();
    let r = h.send(method, path, Some(key), body).await;
    let reached = h
        .journal()
        .iter()
        .any(|e| e.method == method && e.path.starts_with(path.split('?').next().unwrap_or(path)));
    (r, reached)
}

async fn quote_status(h: &Harness, key: &str) -> u16 {
    send_traced(h, "GET", "/marketdata/v1/quotes?symbols=AAPL", key, None)
        .await
        .0
        .status
}

fn assert_denied(r: &Reply, reached: bool, reason: &str) {
    assert_eq!(r.status, 403, "expected a denial: {}", r.text());
    let j = r.json();
    assert_eq!(j["error"], "forbidden");
    assert_eq!(j["reason"], reason, "{}", r.text());
    assert!(j["request_id"].is_string());
    assert!(
        !r.text().contains("context.") && !r.text().contains("when"),
        "policy text leaked: {}",
        r.text()
    );
    assert!(!reached, "a denied request reached the upstream");
}

#[tokio::test]
async fn role_by_action_matrix() {
    let h = Harness::start().await;
    let margin = h.sim.accounts()[0].hash.clone();
    // An order for the cancel row, placed by the super admin.
    let placed = h
        .send(
            "POST",
            &order_path(&h, 0),
            Some(SUPERADMIN),
            Some(LIMIT_ORDER),
        )
        .await;
    assert_eq!(placed.status, 201, "{}", placed.text());
    let order_url = placed.headers["location"].to_str().unwrap().to_owned();
    let order_id = order_url.rsplit('/').next().unwrap().to_owned();

    // (method, path, body, allowed for [viewer, trader, admin, superadmin])
    let reads = [true, true, true, true];
    let trades = [false, true, true, true];
    let rows: Vec<(&str, String, Option<&str>, [bool; 4])> = vec![
        (
            "GET",
            "/marketdata/v1/quotes?symbols=AAPL".into(),
            None,
            reads,
        ),
        ("GET", "/marketdata/v1/AAPL/quotes".into(), None, reads),
        (
            "GET",
            "/trader/v1/accounts/accountNumbers".into(),
            None,
            reads,
        ),
        ("GET", "/trader/v1/accounts".into(), None, reads),
        ("GET", format!("/trader/v1/accounts/{margin}"), None, reads),
        (
            "GET",
            format!("/trader/v1/accounts/{margin}/orders"),
            None,
            reads,
        ),
        (
            "GET",
            format!("/trader/v1/accounts/{margin}/transactions"),
            None,
            reads,
        ),
        ("GET", "/trader/v1/orders".into(), None, reads),
        ("GET", "/trader/v1/userPreference".into(), None, reads),
        (
            "POST",
            format!("/trader/v1/accounts/{margin}/previewOrder"),
            Some(LIMIT_ORDER),
            trades,
        ),
        (
            "POST",
            format!("/trader/v1/accounts/{margin}/orders"),
            Some(LIMIT_ORDER),
            trades,
        ),
    ];
    let keys = [VIEWER, TRADER, ADMIN, SUPERADMIN];
    for (method, path, body, allowed) in &rows {
        for (key, allow) in keys.iter().zip(allowed) {
            let (r, reached) = send_traced(&h, method, path, key, *body).await;
            if *allow {
                // Allowed means forwarded: the simulator answers (some rows
                // lack query parameters it requires, which is its business).
                assert!(
                    reached && r.status != 403,
                    "{key} {method} {path}: expected it forwarded, got {} {}",
                    r.status,
                    r.text()
                );
            } else {
                assert_denied(&r, reached, "not_permitted");
            }
        }
    }

    // Cancel: the viewer may not; the trader may (its own account).
    let cancel = format!("/trader/v1/accounts/{margin}/orders/{order_id}");
    let (r, reached) = send_traced(&h, "DELETE", &cancel, VIEWER, None).await;
    assert_denied(&r, reached, "not_permitted");
    let (r, reached) = send_traced(&h, "DELETE", &cancel, TRADER, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(reached);

    // Administration: reload policies is Admin and above.
    for (key, allow) in keys.iter().zip([false, false, true, true]) {
        let r = h.admin_post("/policies/reload", Some(key)).await;
        if allow {
            assert_eq!(r.status, 200, "{key}: {}", r.text());
        } else {
            assert_eq!(r.status, 403, "{key}: {}", r.text());
            assert_eq!(r.json()["reason"], "not_permitted");
        }
    }
    let r = h.admin_post("/policies/reload", None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn a_traders_order_on_an_unassigned_account_is_denied() {
    let h = Harness::start().await;
    // The demo trader is assigned the margin account only.
    let (r, reached) = send_traced(&h, "POST", &order_path(&h, 1), TRADER, Some(LIMIT_ORDER)).await;
    assert_denied(&r, reached, "not_permitted");
    // Reading it is denied too; the viewer, assigned both, may read it.
    let acct = format!("/trader/v1/accounts/{}", h.sim.accounts()[1].hash);
    let (r, reached) = send_traced(&h, "GET", &acct, TRADER, None).await;
    assert_denied(&r, reached, "not_permitted");
    let (r, _) = send_traced(&h, "GET", &acct, VIEWER, None).await;
    assert_eq!(r.status, 200);
    // An account hash nobody configured.
    let unknown = "/trader/v1/accounts/0000000000000000000000000000000000000000000000000000000000000000/orders";
    let (r, reached) = send_traced(&h, "POST", unknown, TRADER, Some(LIMIT_ORDER)).await;
    assert_denied(&r, reached, "not_permitted");
}

fn order_with_legs(legs: &[(&str, &str, u64)]) -> String {
    let legs: Vec<String> = legs
        .iter()
        .map(|(instr, sym, q)| {
            format!(
                r#"{{"instruction":"{instr}","instrument":{{"assetType":"EQUITY","symbol":"{sym}"}},"quantity":{q}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"10.00","orderStrategyType":"SINGLE","orderLegCollection":[{}]}}"#,
        legs.join(",")
    )
}

fn single(sym: &str, q: u64) -> String {
    format!(
        r#"{{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"10.00","orderStrategyType":"SINGLE","orderLegCollection":[{{"instruction":"SELL","instrument":{{"assetType":"EQUITY","symbol":"{sym}"}},"quantity":{q}}}]}}"#
    )
}

fn otoco(child_quantity: u64) -> String {
    format!(
        r#"{{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"190.00","orderStrategyType":"TRIGGER","orderLegCollection":[{{"instruction":"BUY","instrument":{{"assetType":"EQUITY","symbol":"AAPL"}},"quantity":10}}],"childOrderStrategies":[{{"orderStrategyType":"OCO","childOrderStrategies":[{},{}]}}]}}"#,
        single("AAPL", 10),
        single("AAPL", child_quantity)
    )
}

#[tokio::test]
async fn guard_rules_hold_however_the_order_is_shaped() {
    let h = Harness::start().await;
    let path = order_path(&h, 0);

    // At the limit: allowed.
    let (r, reached) = send_traced(
        &h,
        "POST",
        &path,
        TRADER,
        Some(&order_with_legs(&[("BUY", "AAPL", 100)])),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(reached);

    // 101 shares, plainly, in a second leg, and in a grandchild order.
    for body in [
        order_with_legs(&[("BUY", "AAPL", 101)]),
        order_with_legs(&[("BUY", "AAPL", 1), ("BUY", "MSFT", 101)]),
        otoco(101),
    ] {
        let (r, reached) = send_traced(&h, "POST", &path, TRADER, Some(&body)).await;
        assert_denied(&r, reached, "order_quantity_limit");
    }
    // The same tree within the limit goes through.
    let (r, _) = send_traced(&h, "POST", &path, TRADER, Some(&otoco(100))).await;
    assert_eq!(r.status, 201, "{}", r.text());

    // Replace is judged like place.
    let placed = h.send("POST", &path, Some(TRADER), Some(LIMIT_ORDER)).await;
    let id = placed.headers["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let (r, reached) = send_traced(
        &h,
        "PUT",
        &format!("{path}/{id}"),
        TRADER,
        Some(&single("AAPL", 500)),
    )
    .await;
    assert_denied(&r, reached, "order_quantity_limit");

    // A duplicate key that would show Cedar one quantity and Schwab another.
    let dup = r#"{"session":"NORMAL","duration":"DAY","orderType":"MARKET","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10,"quantity":101}]}"#;
    let (r, reached) = send_traced(&h, "POST", &path, TRADER, Some(dup)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "duplicate_key");
    assert!(!reached);

    // The symbol deny-list, alone or in any leg; also for the admin.
    for (key, body) in [
        (TRADER, single("GME", 1)),
        (
            TRADER,
            order_with_legs(&[("BUY", "AAPL", 1), ("BUY", "GME", 1)]),
        ),
        (ADMIN, single("GME", 1)),
    ] {
        let (r, reached) = send_traced(&h, "POST", &path, key, Some(&body)).await;
        assert_denied(&r, reached, "symbol_denied");
    }
    // Preview is not an order placement: the guards leave it alone.
    let preview = format!(
        "/trader/v1/accounts/{}/previewOrder",
        h.sim.accounts()[0].hash
    );
    let (r, _) = send_traced(&h, "POST", &preview, TRADER, Some(&single("GME", 1))).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn order_bodies_the_proxy_cannot_judge_are_refused_before_the_policy() {
    let h = Harness::start().await;
    let path = order_path(&h, 0);
    // (extra headers, body, expected error code)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("content-type", "text/plain")],
            LIMIT_ORDER.as_bytes().to_vec(),
            "bad_content_type",
        ),
        (
            vec![],
            [b"\xEF\xBB\xBF".as_slice(), LIMIT_ORDER.as_bytes()].concat(),
            "byte_order_mark",
        ),
        (
            vec![],
            b"{\"session\":\"NORMAL\xff\"}".to_vec(),
            "invalid_utf8",
        ),
        (vec![], br#"{"price":NaN}"#.to_vec(), "malformed_json"),
        (
            vec![],
            format!("{}{}", "[".repeat(40), "]".repeat(40)).into_bytes(),
            "too_deep",
        ),
    ];
    for (headers, body, code) in cases {
        h.sim.clear_journal();
        let uri = format!("https://localhost:{}{}", h.proxy.port(), path);
        let mut b = http::Request::builder()
            .method("POST")
            .uri(uri)
            .header("authorization", format!("Bearer {TRADER}"));
        if headers.is_empty() {
            b = b.header("content-type", "application/json");
        }
        for (n, v) in headers {
            b = b.header(n, v);
        }
        let req = b
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let client = h.h2_client();
        let r = send_on(&client, req).await;
        assert_eq!(r.status, 400, "{code}: {}", r.text());
        assert_eq!(r.json()["error"], code, "{}", r.text());
        assert!(h.journal().is_empty(), "{code}: reached the upstream");
    }
}

/// Writes `text` as a policy file in the live directory and waits until the
/// proxy reports a new policy hash on /readyz.
async fn install_policy(h: &Harness, name: &str, text: &str) {
    let before = h.admin_get("/readyz").await.json()["policy_hash"].clone();
    std::fs::write(h.policy_dir().join(name), text).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = h.admin_get("/readyz").await.json()["policy_hash"].clone();
        if now != before {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "policy change never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_forbid_whose_condition_errors_at_runtime_denies() {
    let h = Harness::start().await;
    let path = order_path(&h, 0);
    // Valid under strict validation, but overflows at evaluation for any
    // quantity above 1: Cedar would skip this forbid and allow the order.
    install_policy(
        &h,
        "overflow.cedar",
        r#"@id("overflowing-guard")
@reason("never_shown")
forbid (principal, action == Action::"PlaceOrder", resource)
when { context.order.max_quantity * 9223372036854775807 > 0 };
"#,
    )
    .await;
    let (r, reached) = send_traced(&h, "POST", &path, TRADER, Some(LIMIT_ORDER)).await;
    assert_denied(&r, reached, "policy_error");
    // Requests the erroring policy does not apply to still pass.
    assert_eq!(quote_status(&h, TRADER).await, 200);
}

#[tokio::test]
async fn a_broken_policy_file_keeps_the_old_set_serving() {
    let h = Harness::start().await;
    let path = order_path(&h, 0);
    let good_hash = h.admin_get("/readyz").await.json()["policy_hash"].clone();

    // A syntax error, then a policy that fails schema validation.
    for (name, text) in [
        (
            "broken.cedar",
            "@id(\"x\") permit (principal, action, resource) when { ",
        ),
        (
            "invalid.cedar",
            "@id(\"y\") permit (principal, action, resource) when { context.no_such_field };",
        ),
    ] {
        std::fs::write(h.policy_dir().join(name), text).unwrap();
        let r = h.admin_post("/policies/reload", Some(ADMIN)).await;
        assert_eq!(r.status, 422, "{}", r.text());
        let issues = r.json()["active"]["issues"].to_string();
        assert!(issues.contains(name), "the issue names the file: {issues}");
        assert!(
            !r.text().contains("no_such_field") && !r.text().contains("permit"),
            "policy text stays in the log: {}",
            r.text()
        );
        assert_eq!(
            h.admin_get("/readyz").await.json()["policy_hash"],
            good_hash
        );
        // Serving continues with the old set: allowed and denied as before.
        let (r, _) = send_traced(&h, "POST", &path, TRADER, Some(LIMIT_ORDER)).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let (r, reached) = send_traced(&h, "POST", &path, TRADER, Some(&single("GME", 1))).await;
        assert_denied(&r, reached, "symbol_denied");
        std::fs::remove_file(h.policy_dir().join(name)).unwrap();
    }
    // A schema that no longer declares an action the route table uses
    // would deny that route for good: refused like a broken file.
    let schema_path = h.policy_dir().join("schema.cedarschema");
    let schema = std::fs::read_to_string(&schema_path).unwrap();
    std::fs::write(
        &schema_path,
        schema.replace("action ViewMarketData, ", "action "),
    )
    .unwrap();
    let r = h.admin_post("/policies/reload", Some(ADMIN)).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(quote_status(&h, VIEWER).await, 200);
    std::fs::write(&schema_path, schema).unwrap();

    // Every admin request failed (the file watcher may have tried too).
    let metrics = h.admin_get("/metrics").await.text();
    let failed: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("portcullis_policy_reload_total{result=\"failed\",set=\"active\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(failed >= 3, "{metrics}");

    // A good change is picked up from the file alone (the watcher) and
    // applies to the next request.
    let tighter = std::fs::read_to_string(h.policy_dir().join("max-order-quantity.cedar"))
        .unwrap()
        .replace("> 100", "> 5");
    install_policy(&h, "max-order-quantity.cedar", &tighter).await;
    let (r, reached) = send_traced(&h, "POST", &path, TRADER, Some(LIMIT_ORDER)).await;
    assert_denied(&r, reached, "order_quantity_limit");
    assert!(
        h.admin_get("/metrics")
            .await
            .text()
            .contains("portcullis_policy_decisions_total{action=\"PlaceOrder\",decision=\"deny\"}")
    );
}

#[tokio::test]
async fn simulator_options_do_not_matter_to_policy() {
    // Guard against a harness that silently skips the proxy: with the
    // simulator refusing everything, a denied request is still a 403 from
    // the proxy, not the simulator's answer.
    let h = Harness::start_with(
        SimOptions {
            fail_every: Some(1),
            ..SimOptions::default()
        },
        |_| {},
    )
    .await;
    let (r, reached) = send_traced(&h, "POST", &order_path(&h, 0), VIEWER, Some(LIMIT_ORDER)).await;
    assert_denied(&r, reached, "not_permitted");
}

#[tokio::test]
async fn a_shadow_policy_set_is_evaluated_and_counted_but_never_enforced() {
    let shadow = tempfile::tempdir().unwrap();
    for f in ["schema.cedarschema", "roles.cedar"] {
        std::fs::copy(format!("policies/{f}"), shadow.path().join(f)).unwrap();
    }
    let strict = std::fs::read_to_string("policies/guards/max-order-quantity.cedar")
        .unwrap()
        .replace("> 100", "> 5");
    std::fs::write(shadow.path().join("max-order-quantity.cedar"), strict).unwrap();
    let shadow_dir = shadow.path().to_owned();
    let h = Harness::start_with(SimOptions::default(), move |c| {
        c.policies.shadow_dir = Some(shadow_dir);
    })
    .await;
    assert!(h.admin_get("/readyz").await.json()["shadow_policy_hash"].is_string());

    // Active: allow. Shadow: deny (10 > 5). Enforced: the active decision.
    let (r, reached) = send_traced(&h, "POST", &order_path(&h, 0), TRADER, Some(LIMIT_ORDER)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(reached);
    // Both agree on a quote: nothing counted for it.
    assert_eq!(quote_status(&h, TRADER).await, 200);
    let metrics = h.admin_get("/metrics").await.text();
    assert!(
        metrics.contains(
            "portcullis_policy_shadow_disagreements_total{action=\"PlaceOrder\",shadow_decision=\"deny\"} 1"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("shadow_disagreements_total{action=\"ViewMarketData\""));
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_policies() {
    // The file watcher is off, so only the signal can apply the change.
    let h = Harness::start_with(SimOptions::default(), |c| c.policies.watch = false).await;
    let before = h.admin_get("/readyz").await.json()["policy_hash"].clone();
    let tighter = std::fs::read_to_string(h.policy_dir().join("max-order-quantity.cedar"))
        .unwrap()
        .replace("> 100", "> 5");
    std::fs::write(h.policy_dir().join("max-order-quantity.cedar"), tighter).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h.admin_get("/readyz").await.json()["policy_hash"],
        before,
        "with watch off, nothing reloads by itself"
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.admin_get("/readyz").await.json()["policy_hash"] == before {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (r, reached) = send_traced(&h, "POST", &order_path(&h, 0), TRADER, Some(LIMIT_ORDER)).await;
    assert_denied(&r, reached, "order_quantity_limit");
}

#[tokio::test]
async fn a_cached_read_decision_does_not_survive_a_reload() {
    let h = Harness::start_with(SimOptions::default(), |c| c.policies.watch = false).await;
    // Warm the decision cache for the viewer's quotes.
    for _ in 0..3 {
        assert_eq!(quote_status(&h, VIEWER).await, 200);
    }
    std::fs::write(
        h.policy_dir().join("no-quotes.cedar"),
        r#"@id("no-quotes") @reason("quotes_closed")
forbid (principal, action == Action::"ViewMarketData", resource);
"#,
    )
    .unwrap();
    let r = h.admin_post("/policies/reload", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Straight after the swap, within the same second as the cached allow.
    let (r, reached) = send_traced(
        &h,
        "GET",
        "/marketdata/v1/quotes?symbols=AAPL",
        VIEWER,
        None,
    )
    .await;
    assert_denied(&r, reached, "quotes_closed");
}
