//! Callers' short-lived proxy tokens: the token endpoint, refresh rotation
//! and reuse detection, TOTP MFA, and MFA-gated credential management.

use crate::common;

use common::{ADMIN, Harness, SUPERADMIN, TRADER, VIEWER};

const QUOTES: &str = "/marketdata/v1/quotes?symbols=AAPL&fields=quote";

async fn grant(h: &Harness, id: &str, secret: &str, form: &str) -> common::Reply {
    h.post_form("/v1/oauth/token", Some(&common::basic(id, secret)), form)
        .await
}

#[tokio::test]
async fn a_caller_trades_its_key_for_a_short_lived_token() {
    let h = Harness::start().await;
    let r = grant(&h, "demo-trader", TRADER, "grant_type=client_credentials").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["cache-control"], "no-store");
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let access = body["access_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("pc_at_"));
    assert!(
        h.journal().is_empty(),
        "the token endpoint reached the broker"
    );

    let r = h.send("GET", QUOTES, Some(&access), None).await;
    assert_eq!(r.status, 200);
    let seen = h.journal();
    let auth = seen[0].header("authorization");
    assert_eq!(auth.len(), 1);
    assert!(
        auth[0].starts_with("Bearer sim-at-"),
        "the broker saw {auth:?}"
    );
    assert!(!auth[0].contains(&access));

    // Wrong secret, unknown client, another caller's key, no Basic at all:
    // 401 invalid_client, nothing forwarded.
    for (id, secret) in [
        ("demo-trader", "wrong"),
        ("nobody", TRADER),
        ("demo-trader", VIEWER),
    ] {
        let r = grant(&h, id, secret, "grant_type=client_credentials").await;
        assert_eq!(r.status, 401, "{id}");
        assert_eq!(r.json()["error"], "invalid_client");
        assert!(!r.text().contains(secret));
    }
    let r = h
        .post_form("/v1/oauth/token", None, "grant_type=client_credentials")
        .await;
    assert_eq!(r.status, 401);
    // Malformed requests: the OAuth error shape.
    for (form, error) in [
        ("grant_type=password", "unsupported_grant_type"),
        ("", "invalid_request"),
        (
            "grant_type=client_credentials&grant_type=refresh_token",
            "invalid_request",
        ),
    ] {
        let r = grant(&h, "demo-trader", TRADER, form).await;
        assert_eq!(r.status, 400, "{form}");
        assert_eq!(r.json()["error"], error, "{form}");
    }
    assert_eq!(h.journal().len(), 1, "only the quote was forwarded");
    let m = h.admin_get("/metrics").await.text();
    assert!(
        m.contains(
            "portcullis_token_grants_total{grant=\"client_credentials\",outcome=\"invalid_client\"} 4"
        ),
        "{m}"
    );
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_revokes_the_session() {
    let h = Harness::start().await;
    let first = grant(&h, "demo-viewer", VIEWER, "grant_type=client_credentials")
        .await
        .json();
    let rt1 = first["refresh_token"].as_str().unwrap().to_owned();
    let at1 = first["access_token"].as_str().unwrap().to_owned();
    let second = grant(
        &h,
        "demo-viewer",
        VIEWER,
        &format!("grant_type=refresh_token&refresh_token={rt1}"),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.text());
    let second = second.json();
    let at2 = second["access_token"].as_str().unwrap().to_owned();
    let rt2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2, "the refresh token rotates");
    assert_eq!(h.send("GET", QUOTES, Some(&at2), None).await.status, 200);
    // Someone else's client cannot spend it.
    let r = grant(
        &h,
        "demo-trader",
        TRADER,
        &format!("grant_type=refresh_token&refresh_token={rt2}"),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");

    // The spent refresh token again (a thief, or a replay): the whole
    // session is revoked — both access tokens and the current refresh token.
    let r = grant(
        &h,
        "demo-viewer",
        VIEWER,
        &format!("grant_type=refresh_token&refresh_token={rt1}"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    let before = h.journal().len();
    for at in [&at1, &at2] {
        assert_eq!(h.send("GET", QUOTES, Some(at), None).await.status, 401);
    }
    assert_eq!(
        h.journal().len(),
        before,
        "a revoked token reached the broker"
    );
    let r = grant(
        &h,
        "demo-viewer",
        VIEWER,
        &format!("grant_type=refresh_token&refresh_token={rt2}"),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn credential_management_needs_a_session_with_mfa() {
    let h = Harness::start().await;
    // The Super Admin's API key alone: authenticated, but no second factor.
    let r = h.admin_get_as("/credentials/status", SUPERADMIN).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["reason"], "mfa_required");
    let r = h.admin_post("/credentials/reload", Some(SUPERADMIN)).await;
    assert_eq!(r.status, 403);

    // A token without the code is refused; with a wrong one too.
    let r = grant(
        &h,
        "demo-superadmin",
        SUPERADMIN,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    let r = grant(
        &h,
        "demo-superadmin",
        SUPERADMIN,
        "grant_type=client_credentials&otp=000000",
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");

    // With the code: a session with MFA, which may manage credentials.
    // (The next step's code: none from before the proxy started is taken.)
    let code = common::demo_otp(1);
    let r = grant(
        &h,
        "demo-superadmin",
        SUPERADMIN,
        &format!("grant_type=client_credentials&otp={code}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    let token = first["access_token"].as_str().unwrap().to_owned();
    let status = h.admin_get_as("/credentials/status", &token).await;
    assert_eq!(status.status, 200, "{}", status.text());
    let s = status.json();
    assert_eq!(s["upstream"]["kind"], "token_store");
    assert_eq!(s["upstream"]["ready"], true);
    for secret in [SUPERADMIN, token.as_str(), "sim-at-", "sim-rt-"] {
        assert!(!status.text().contains(secret), "status leaked {secret}");
    }
    // The same code cannot open a second session (replay).
    let r = grant(
        &h,
        "demo-superadmin",
        SUPERADMIN,
        &format!("grant_type=client_credentials&otp={code}"),
    )
    .await;
    assert_eq!(
        r.json()["error"],
        "invalid_grant",
        "a TOTP code was replayed"
    );
    let r = h.admin_post("/credentials/reload", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reloaded"], true);
    // … and after that reload the code is still spent.
    let r = grant(
        &h,
        "demo-superadmin",
        SUPERADMIN,
        &format!("grant_type=client_credentials&otp={code}"),
    )
    .await;
    assert_eq!(
        r.json()["error"],
        "invalid_grant",
        "replayed after a reload"
    );
    // A refreshed session keeps its MFA.
    let refresh = grant(
        &h,
        "demo-superadmin",
        SUPERADMIN,
        &format!(
            "grant_type=refresh_token&refresh_token={}",
            first["refresh_token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(refresh.status, 200, "{}", refresh.text());
    let refreshed = refresh.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        h.admin_get_as("/credentials/status", &refreshed)
            .await
            .status,
        200,
        "the refreshed session lost its MFA"
    );

    // An admin with MFA is still not a super admin; a trader may not ask
    // for a code it does not have.
    let r = h.admin_get_as("/credentials/status", ADMIN).await;
    assert_eq!(r.status, 403);
    let r = grant(
        &h,
        "demo-trader",
        TRADER,
        "grant_type=client_credentials&otp=123456",
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_request");
}

#[tokio::test]
async fn a_caller_that_requires_tokens_cannot_use_its_key_as_a_bearer() {
    let h = Harness::start_with(Default::default(), |c| {
        for caller in &mut c.callers {
            if caller.id == "demo-viewer" {
                caller.require_token = true;
            }
        }
    })
    .await;
    let r = h.send("GET", QUOTES, Some(VIEWER), None).await;
    assert_eq!(r.status, 401);
    assert!(h.journal().is_empty());
    let r = grant(&h, "demo-viewer", VIEWER, "grant_type=client_credentials").await;
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(h.send("GET", QUOTES, Some(&token), None).await.status, 200);
}

#[tokio::test]
async fn guessing_one_time_codes_locks_the_second_factor() {
    let h = Harness::start().await;
    let right = common::demo_otp(1);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..5 {
        let r = grant(
            &h,
            "demo-superadmin",
            SUPERADMIN,
            &format!("grant_type=client_credentials&otp={wrong}"),
        )
        .await;
        assert_eq!(r.json()["error"], "invalid_grant");
    }
    // Locked: even the right code is refused now.
    let r = grant(
        &h,
        "demo-superadmin",
        SUPERADMIN,
        &format!("grant_type=client_credentials&otp={right}"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("locked"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn removing_a_key_ends_the_sessions_opened_with_the_caller_s_keys() {
    let h = Harness::start().await;
    let r = grant(&h, "demo-viewer", VIEWER, "grant_type=client_credentials").await;
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(h.send("GET", QUOTES, Some(&token), None).await.status, 200);
    let mut cfg = h.config.clone();
    let viewer = cfg
        .callers
        .iter_mut()
        .find(|c| c.id == "demo-viewer")
        .unwrap();
    let new_key = "replacement-viewer-key-000000000000";
    viewer.key_hashes = vec![common::key_hash(new_key)];
    h.live.apply(cfg).await.expect("reload");
    let before = h.journal().len();
    assert_eq!(h.send("GET", QUOTES, Some(&token), None).await.status, 401);
    assert_eq!(h.journal().len(), before);
    let r = grant(&h, "demo-viewer", new_key, "grant_type=client_credentials").await;
    assert_eq!(r.status, 200);
}
