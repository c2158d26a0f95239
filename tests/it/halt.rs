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

#[tokio::test]
async fn engaging_can_cancel_every_open_order_through_the_broker() {
    let h = Harness::start().await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    // Two LIMIT orders stay WORKING; a MARKET order fills at once.
    let mut working = Vec::new();
    for body in [LIMIT, LIMIT, common::MARKET_ORDER] {
        let r = h.send("POST", &orders, Some(TRADER), Some(body)).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let location = r.headers["location"].to_str().unwrap();
        let id = location.rsplit('/').next().unwrap().to_owned();
        if body == LIMIT {
            working.push(id);
        }
    }
    h.sim.clear_journal();

    let r = h
        .admin_post("/admin/halt?cancel_open_orders=true", Some(ADMIN))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = &r.json()["cancel_open_orders"];
    assert_eq!(report["cancelled"], 2, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    let mut cancelled: Vec<String> = report["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_owned())
        .collect();
    cancelled.sort();
    working.sort();
    assert_eq!(cancelled, working);
    // The broker saw exactly those two cancels (besides the order lists).
    let deletes: Vec<String> = h
        .journal()
        .into_iter()
        .filter(|e| e.method == "DELETE")
        .map(|e| e.path.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    for id in &working {
        assert!(deletes.contains(id));
        let o = h
            .send("GET", &format!("{orders}/{id}"), Some(VIEWER), None)
            .await;
        assert_eq!(o.json()["status"], "CANCELED");
    }
    // Each cancel is audited: intent before, outcome after, as the admin.
    let recs = common::records(&common::audit_dir(&h), 4).await;
    let kill: Vec<_> = recs
        .iter()
        .filter(|r| r["route"] == "kill_switch:cancel_open_orders")
        .collect();
    assert_eq!(kill.len(), 4, "{kill:#?}");
    assert!(kill.iter().all(|r| r["user_id"] == "demo-admin"));
    assert_eq!(kill.iter().filter(|r| r["kind"] == "intent").count(), 2);
    assert_eq!(kill.iter().filter(|r| r["result"] == "success").count(), 2);

    // Engaging again without asking (the demo's default is not to cancel)
    // touches nothing at the broker.
    h.sim.clear_journal();
    let r = h.admin_post("/admin/halt", Some(ADMIN)).await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("cancel_open_orders").is_none());
    assert!(h.journal().is_empty());
    assert_eq!(
        h.admin_post("/admin/halt?cancel_open_orders=maybe", Some(ADMIN))
            .await
            .status,
        400
    );
}

/// `portcullis halt …` (the real binary) against a running proxy.
async fn halt_cli(h: &Harness, key: &str, args: &[&str]) -> (i32, String, String) {
    let ca = h.dir.path().join("cli-ca.pem");
    std::fs::write(&ca, &h.ca_pem).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("halt")
        .args(args)
        .args(["--admin", &format!("http://{}", h.admin)])
        .args(["--proxy", &format!("https://{}", h.proxy)])
        .arg("--ca-file")
        .arg(&ca)
        .env("PORTCULLIS_KEY", key);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_halt_command_engages_reports_and_releases_with_mfa() {
    let h = Harness::start().await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());

    let (code, out, err) = halt_cli(&h, ADMIN, &["on", "--reason", "bot loop & more"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("HALTED (by demo-admin"), "{out}");
    assert!(out.contains("reason: bot loop & more"), "{out}");
    assert_eq!(
        h.send("POST", &orders, Some(TRADER), Some(LIMIT))
            .await
            .status,
        403
    );

    let (code, out, _) = halt_cli(&h, VIEWER, &["status"]).await;
    assert_eq!(code, 1, "a viewer may not view the proxy status: {out}");
    let (code, out, err) = halt_cli(&h, ADMIN, &["status", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["trading"]["halted"], true);

    // Releasing: an admin key is refused and told what is needed; a wrong
    // one-time code fails at sign-in; the super admin with a code releases.
    let (code, _, err) = halt_cli(
        &h,
        ADMIN,
        &["off", "--client-id", "demo-admin", "--otp", "000000"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = halt_cli(
        &h,
        SUPERADMIN,
        &["off", "--client-id", "demo-superadmin", "--otp", "000000"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused the sign-in"), "{err}");
    assert!(!err.contains(SUPERADMIN), "the key leaked: {err}");
    let otp = common::demo_otp(1);
    let (code, out, err) = halt_cli(
        &h,
        SUPERADMIN,
        &["off", "--client-id", "demo-superadmin", "--otp", &otp],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("trading: allowed"), "{out}");
    assert_eq!(
        h.send("POST", &orders, Some(TRADER), Some(LIMIT))
            .await
            .status,
        201
    );

    // Unreachable admin listener: 69; a key reference that resolves to
    // nothing: 64.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args([
        "halt",
        "status",
        "--admin",
        "http://127.0.0.1:9",
        "--key",
        "env:PORTCULLIS_TEST_KEY",
    ])
    .env("PORTCULLIS_TEST_KEY", ADMIN);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["halt", "status", "--key", "env:PORTCULLIS_NO_SUCH_VARIABLE"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
