//! The kill switch: any Admin halts trading at once; while halted, order
//! actions are 403 `trading_halted` and never forwarded, reads continue;
//! releasing needs a Super Admin session with MFA; the state survives a
//! restart and an unreadable state file means halted.

use crate::common;

use common::{ADMIN, Harness, SUPERADMIN, TRADER, VIEWER};
use portcullis::halt::KillSwitch;

const LIMIT: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"150.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#;

#[tokio::test]
async fn halt_stops_orders_not_reads_and_release_needs_mfa() {
    let h = Harness::start().await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    let cancel = format!("{orders}/1000001");
    // A viewer may not halt; an admin may, without MFA.
    assert_eq!(h.admin_post("/admin/halt", Some(VIEWER)).await.status, 403);
    let r = h
        .admin_post("/admin/halt?reason=suspicious+orders", Some(ADMIN))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["trading"]["halted"], true);
    assert_eq!(r.json()["trading"]["by"], "demo-admin");

    for (method, path, body) in [
        ("POST", orders.as_str(), Some(LIMIT)),
        ("DELETE", cancel.as_str(), None),
    ] {
        let r = h.send(method, path, Some(TRADER), body).await;
        assert_eq!(r.status, 403, "{method} {}", r.text());
        assert_eq!(r.json()["error"], "trading_halted");
    }
    assert!(
        h.journal().is_empty(),
        "an order reached the broker while halted"
    );
    assert_eq!(
        h.send(
            "GET",
            "/marketdata/v1/quotes?symbols=AAPL",
            Some(VIEWER),
            None
        )
        .await
        .status,
        200
    );
    let s = h.admin_call("GET", "/admin/status", Some(ADMIN)).await;
    assert_eq!(s.json()["trading"]["reason"], "suspicious orders");

    // Releasing: not with an admin key, nor a super admin key without MFA.
    for key in [ADMIN, SUPERADMIN] {
        let r = h.admin_call("DELETE", "/admin/halt", Some(key)).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["reason"], "mfa_required");
    }
    let code = common::demo_otp(1);
    let grant = h
        .post_form(
            "/v1/oauth/token",
            Some(&common::basic("demo-superadmin", SUPERADMIN)),
            &format!("grant_type=client_credentials&otp={code}"),
        )
        .await;
    let token = grant.json()["access_token"].as_str().unwrap().to_owned();
    let r = h.admin_call("DELETE", "/admin/halt", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["trading"]["halted"], false);
    assert_eq!(
        h.send("POST", &orders, Some(TRADER), Some(LIMIT))
            .await
            .status,
        201
    );
}

#[test]
fn the_halt_survives_a_restart_and_an_unreadable_state_means_halted() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("halt.json");
    let ks = KillSwitch::load(Some(&f));
    assert!(!ks.is_halted(), "no state file: not halted");
    ks.set(true, "ops", Some("incident".into())).unwrap();
    // "Restart".
    let again = KillSwitch::load(Some(&f));
    assert!(again.is_halted());
    assert_eq!(again.state().reason.as_deref(), Some("incident"));
    again.set(false, "ops", None).unwrap();
    assert!(!KillSwitch::load(Some(&f)).is_halted());
    // A damaged state file: fail closed.
    std::fs::write(&f, "{not json").unwrap();
    assert!(KillSwitch::load(Some(&f)).is_halted());
}
