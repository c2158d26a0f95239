//! The binary's command line: exit codes and messages operators rely on.

use std::process::Command;

fn portcullis(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_remove("SCHWAB_ACCESS_TOKEN")
        .env_remove("SCHWAB_ACCESS_TOKEN_FILE")
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn shipped_example_config_passes_check_config() {
    let (code, out, err) = portcullis(&["check-config", "config/example.yaml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"));
}

#[test]
fn check_config_exit_64_names_key_and_line() {
    let d = tempfile::tempdir().unwrap();
    let typo = write(
        &d,
        "typo.yaml",
        "listen:\n  - address: 127.0.0.1:8080\nupstream:\n  access_token: env:X\nlimits:\n  max_body_byts: 1\n",
    );
    let (code, _, err) = portcullis(&["check-config", &typo]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("max_body_byts") && err.contains("line 6"),
        "{err}"
    );

    let plain = write(
        &d,
        "plain.yaml",
        "listen:\n  - address: 0.0.0.0:8080\nupstream:\n  access_token: env:X\n",
    );
    let (code, _, err) = portcullis(&["check-config", &plain]);
    assert_eq!(code, 64, "non-loopback plaintext listener must be refused");
    assert!(err.contains("listen[0].address"), "{err}");

    let (code, _, err) = portcullis(&["check-config", "/nonexistent/portcullis.yaml"]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn check_config_load_reports_missing_secret_by_reference_only() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(
        &d,
        "c.yaml",
        "listen:\n  - address: 127.0.0.1:8080\nupstream:\n  base_url: https://127.0.0.1:9\n  access_token: env:PORTCULLIS_TEST_UNSET_TOKEN\n",
    );
    let (code, _, err) = portcullis(&["check-config", &cfg]);
    assert_eq!(code, 0, "static check does not read secrets: {err}");
    let (code, _, err) = portcullis(&["check-config", "--load", &cfg]);
    assert_eq!(code, 64);
    assert!(err.contains("env:PORTCULLIS_TEST_UNSET_TOKEN"), "{err}");

    let secret = write(&d, "token", "sk-very-secret-value\n");
    let bad_ca = write(
        &d,
        "c2.yaml",
        &format!(
            "listen:\n  - address: 127.0.0.1:8080\nupstream:\n  base_url: https://127.0.0.1:9\n  access_token: file:{secret}\n  extra_ca_file: {secret}\n"
        ),
    );
    let (code, _, err) = portcullis(&["check-config", "--load", &bad_ca]);
    assert_eq!(code, 64, "{err}");
    assert!(
        !err.contains("sk-very-secret-value"),
        "secret value leaked: {err}"
    );
}

#[test]
fn demo_config_is_refused_outside_the_demo() {
    let (code, _, err) = portcullis(&["check-config", "config/demo.yaml"]);
    assert_eq!(code, 64);
    assert!(err.contains("demo key"), "{err}");
}

#[test]
fn key_generate_prints_a_key_and_its_hash() {
    let (code, out, _) = portcullis(&["key", "generate"]);
    assert_eq!(code, 0);
    let key = out.lines().find_map(|l| l.strip_prefix("key:  ")).unwrap();
    let hash = out.lines().find_map(|l| l.strip_prefix("hash: ")).unwrap();
    assert_eq!(
        portcullis::keys::parse_hash(hash),
        Some(portcullis::keys::hash_key(key.as_bytes()))
    );
}

#[test]
fn help_and_version() {
    let (code, out, _) = portcullis(&["--help"]);
    assert_eq!(code, 0);
    for word in ["run", "demo", "sim", "check-config", "key", "Examples"] {
        assert!(out.contains(word), "--help lacks {word}");
    }
    let (code, out, _) = portcullis(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("portcullis "));
    let (code, _, _) = portcullis(&["no-such-command"]);
    assert_eq!(code, 64);
}

#[test]
fn check_config_validates_a_custom_route_table() {
    let d = tempfile::tempdir().unwrap();
    let routes = write(
        &d,
        "routes.yaml",
        "profile: other\nroutes:\n  - { name: q, method: GET, path: \"/v1/{sym:ticker}\", action: ViewMarketData }\n",
    );
    let cfg = write(
        &d,
        "c.yaml",
        &format!(
            "listen:\n  - address: 127.0.0.1:8080\nupstream:\n  base_url: https://127.0.0.1:9\n  access_token: env:X\nroutes:\n  file: {routes}\n"
        ),
    );
    let (code, _, err) = portcullis(&["check-config", &cfg]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("routes[0].path"), "{err}");
    std::fs::write(
        d.path().join("routes.yaml"),
        "profile: other\nroutes:\n  - { name: q, method: GET, path: \"/v1/{sym:symbol}/quotes\", action: ViewMarketData, resource: sym }\n",
    )
    .unwrap();
    let (code, out, err) = portcullis(&["check-config", &cfg]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn policy_validate_passes_the_shipped_policies_and_locates_errors() {
    let (code, out, err) = portcullis(&["policy", "validate", "policies"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"), "{out}");

    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        "policies/schema.cedarschema",
        d.path().join("schema.cedarschema"),
    )
    .unwrap();
    // A type error on line 3 of one file, a syntax error in another.
    write(
        &d,
        "typo.cedar",
        "@id(\"a\")\npermit (principal, action, resource)\nwhen { context.order.max_quantity > \"100\" };\n",
    );
    let sub = d.path().join("guards");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("broken.cedar"),
        "@id(\"b\")\nforbid (principal, action, resource) when {\n",
    )
    .unwrap();
    let (code, _, err) = portcullis(&["policy", "validate", &d.path().display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("typo.cedar:3:"), "{err}");
    assert!(
        err.contains("broken.cedar"),
        "subdirectories are validated: {err}"
    );

    // Missing @id is an error too: ids are what decisions and audits cite.
    std::fs::remove_dir_all(&sub).unwrap();
    write(&d, "typo.cedar", "permit (principal, action, resource);\n");
    let (code, _, err) = portcullis(&["policy", "validate", &d.path().display().to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("@id"), "{err}");
}

#[test]
fn policy_test_runs_the_shipped_suite_and_fails_on_a_wrong_expectation() {
    let (code, out, err) = portcullis(&["policy", "test"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" 0 failed"), "{out}");
    assert!(out.contains("roles.yaml"), "{out}");

    let d = tempfile::tempdir().unwrap();
    let wrong = write(
        &d,
        "wrong.yaml",
        "policies: [roles.cedar, guards/max-order-quantity.cedar]\ncases:\n  - name: a viewer places an order\n    caller: viewer\n    request: { method: POST, path: '/trader/v1/accounts/{main}/orders', body: '{\"session\":\"NORMAL\",\"duration\":\"DAY\",\"orderType\":\"MARKET\",\"orderStrategyType\":\"SINGLE\",\"orderLegCollection\":[{\"instruction\":\"BUY\",\"instrument\":{\"assetType\":\"EQUITY\",\"symbol\":\"AAPL\"},\"quantity\":1}]}' }\n    expect: allow\n",
    );
    let (code, out, _) = portcullis(&["policy", "test", &wrong]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL a viewer places an order: expected allow, got deny (not_permitted)"),
        "{out}"
    );

    // A test file naming a policy file that does not exist is an error, not a pass.
    let missing = write(&d, "missing.yaml", "policies: [nope.cedar]\ncases: []\n");
    let (code, out, _) = portcullis(&["policy", "test", &missing]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ERROR"), "{out}");
}

#[test]
fn policy_files_that_would_crash_the_parser_or_are_empty_are_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        "policies/schema.cedarschema",
        d.path().join("schema.cedarschema"),
    )
    .unwrap();
    // Cedar's parser recurses per bracket; a few hundred levels overflow the
    // stack and abort the process. The proxy refuses the file instead.
    let deep = format!(
        "@id(\"deep\")\npermit (principal, action, resource) when {{ {}context.mfa{} }};\n",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    write(&d, "deep.cedar", &deep);
    let (code, _, err) = portcullis(&["policy", "validate", &d.path().display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nested deeper than 64"), "{err}");

    std::fs::remove_file(d.path().join("deep.cedar")).unwrap();
    write(&d, "empty.cedar", "// nothing here yet\n");
    let (code, _, err) = portcullis(&["policy", "validate", &d.path().display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("contains no policy"), "{err}");
}

/// A configuration using an encrypted token store under `d`, and the store
/// written with `tokens` (refresh expiry `refresh_in_ms` from now).
fn token_store_setup(d: &tempfile::TempDir, refresh_in_ms: i64) -> (String, String) {
    use portcullis::credentials::store::{StoreKey, TokenStore};
    use secrecy::{ExposeSecret, SecretString};
    let key = StoreKey::generate().unwrap();
    let key_file = write(d, "store.key", key.expose_secret());
    write(d, "app-key", "app-key-for-tests");
    write(d, "app-secret", "APP-SECRET-DO-NOT-PRINT");
    let store_file = d.path().join("tokens.json").display().to_string();
    let cfg = write(
        d,
        "c.yaml",
        &format!(
            "listen:\n  - address: 127.0.0.1:8080\nupstream:\n  base_url: https://127.0.0.1:9\n\
             schwab:\n  app_key: file:{0}/app-key\n  app_secret: file:{0}/app-secret\n  \
             callback_url: https://127.0.0.1:8182\n  token_store:\n    file: {store_file}\n    key: file:{key_file}\n",
            d.path().display()
        ),
    );
    let now = portcullis::credentials::now_ms();
    let tokens = portcullis::credentials::Tokens {
        access_token: SecretString::from("ACCESS-TOKEN-DO-NOT-PRINT".to_owned()),
        refresh_token: SecretString::from("REFRESH-TOKEN-DO-NOT-PRINT".to_owned()),
        id_token: None,
        scope: "api".into(),
        access_expires_at: now + 1_800_000,
        refresh_issued_at: now - 3_600_000,
        refresh_expires_at: now + refresh_in_ms,
    };
    let store = TokenStore::new(
        store_file.clone().into(),
        StoreKey::from_secret(&key).unwrap(),
    );
    store.save(&tokens).unwrap();
    (cfg, store_file)
}

fn assert_no_secrets(text: &str) {
    for s in [
        "ACCESS-TOKEN-DO-NOT-PRINT",
        "REFRESH-TOKEN-DO-NOT-PRINT",
        "APP-SECRET-DO-NOT-PRINT",
    ] {
        assert!(!text.contains(s), "secret printed: {text}");
    }
}

#[test]
fn token_status_prints_expiries_never_tokens() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, _) = token_store_setup(&d, 5 * 86_400_000);
    let (code, out, err) = portcullis(&["token", "status", "--config", &cfg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("access token:  expires"), "{out}");
    assert!(out.contains("(in 4d 23h)"), "{out}");
    assert_no_secrets(&(out + &err));

    // An expired refresh token: exit 1 and the way out.
    let d = tempfile::tempdir().unwrap();
    let (cfg, _) = token_store_setup(&d, -1000);
    let (code, out, err) = portcullis(&["token", "status", "--config", &cfg]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("token init"), "{err}");
    assert!(out.contains("expired"), "{out}");
}

#[test]
fn token_rekey_rotates_the_store_key_and_the_old_key_stops_working() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, store_file) = token_store_setup(&d, 5 * 86_400_000);
    let before = std::fs::read_to_string(&store_file).unwrap();
    let (code, new_key, _) = portcullis(&["token", "new-key"]);
    assert_eq!(code, 0);
    let new_key_file = write(&d, "new.key", new_key.trim());
    let (code, out, err) = portcullis(&[
        "token",
        "rekey",
        "--config",
        &cfg,
        "--new-key",
        &format!("file:{new_key_file}"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("re-encrypted"), "{out}");
    assert_ne!(std::fs::read_to_string(&store_file).unwrap(), before);
    assert_no_secrets(&(out + &err));

    // The old configuration (old key) can no longer open it: exit 65, naming
    // both key ids rather than resetting anything.
    let (code, _, err) = portcullis(&["token", "status", "--config", &cfg]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("wrong key"), "{err}");
    // Pointing the configuration at the new key works.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("store.key", "new.key");
    let cfg2 = write(&d, "c2.yaml", &text);
    let (code, out, err) = portcullis(&["token", "status", "--config", &cfg2]);
    assert_eq!(code, 0, "{out}{err}");

    // Tampered: exit 65 with the file named.
    let mut raw = std::fs::read(&store_file).unwrap();
    let n = raw.len();
    raw[n - 20] ^= 0x01;
    std::fs::write(&store_file, raw).unwrap();
    let (code, _, err) = portcullis(&["token", "status", "--config", &cfg2]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("tokens.json") && err.contains("failed authentication"),
        "{err}"
    );
}

#[test]
fn a_credential_is_required_and_only_one_kind() {
    let d = tempfile::tempdir().unwrap();
    let none = write(
        &d,
        "none.yaml",
        "listen:\n  - address: 127.0.0.1:8080\nupstream:\n  base_url: https://127.0.0.1:9\n",
    );
    let (code, _, err) = portcullis(&["check-config", &none]);
    assert_eq!(code, 64);
    assert!(err.contains("schwab.token_store"), "{err}");
    let both = write(
        &d,
        "both.yaml",
        "listen:\n  - address: 127.0.0.1:8080\nupstream:\n  access_token: env:X\nschwab:\n  app_key: env:K\n  \
         app_secret: env:S\n  token_store: { file: /tmp/t.json, key: env:STORE_KEY }\n",
    );
    let (code, _, err) = portcullis(&["check-config", &both]);
    assert_eq!(code, 64);
    assert!(err.contains("not both"), "{err}");
    let no_app = write(
        &d,
        "noapp.yaml",
        "listen:\n  - address: 127.0.0.1:8080\nupstream: {}\nschwab:\n  token_store: { file: /tmp/t.json, key: env:STORE_KEY }\n",
    );
    let (code, _, err) = portcullis(&["check-config", &no_app]);
    assert_eq!(code, 64);
    assert!(
        err.contains("schwab.app_key") && err.contains("schwab.app_secret"),
        "{err}"
    );
}

#[test]
fn audit_verify_exit_codes() {
    let (code, key, _) = portcullis(&["audit", "new-key"]);
    assert_eq!(code, 0);
    let d = tempfile::tempdir().unwrap();
    let key_file = write(&d, "audit.key", key.trim());
    let dir = d.path().join("audit");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let k = portcullis::audit::ChainKey::from_secret(&secrecy::SecretString::from(
            key.trim().to_owned(),
        ))
        .unwrap();
        let log = portcullis::audit::AuditLog::open(&dir, k, Default::default(), None).unwrap();
        for i in 0..3 {
            let mut r = portcullis::audit::Record {
                request_id: format!("r{i}"),
                ..portcullis::audit::Record::blank("outcome")
            };
            r.request_id.push('!');
            log.durable(r).await.unwrap();
        }
    });
    let key_ref = format!("file:{key_file}");
    let dir_s = dir.display().to_string();
    let (code, out, err) = portcullis(&["audit", "verify", "--key", &key_ref, &dir_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK: 4 records"), "{out}");
    let f = portcullis::audit::writer::files(&dir).unwrap().remove(0);
    let original = std::fs::read_to_string(&f).unwrap();
    // A crash mid-line at the end: exit 2.
    std::fs::write(&f, format!("{original}{{\"seq\":5,")).unwrap();
    let (code, out, _) = portcullis(&["audit", "verify", "--key", &key_ref, &dir_s]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("torn final line"), "{out}");
    std::fs::write(&f, original.replace("r1!", "r9!")).unwrap();
    let (code, out, _) = portcullis(&["audit", "verify", "--key", &key_ref, &dir_s]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DAMAGED: edited"), "{out}");
    let (code, _, err) = portcullis(&["audit", "verify", &dir_s]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn audit_checkpoint_keys_and_checks_from_the_command_line() {
    let (code, out, _) = portcullis(&["audit", "checkpoint-key"]);
    assert_eq!(code, 0);
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap()
            .trim()
            .to_owned()
    };
    let seed = field("private (audit.checkpoint.key, keep secret): ");
    let public = field("public (give to verifiers): ");
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("audit");
    let key = [3u8; 32];
    let key_file = write(
        &d,
        "audit.key",
        &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let signer = portcullis::audit::checkpoint::Signer::from_secret(
            &secrecy::SecretString::from(seed.clone()),
        )
        .unwrap();
        let options = portcullis::audit::writer::Options {
            checkpoint: Some((signer, std::time::Duration::from_secs(60))),
            ..Default::default()
        };
        let log = portcullis::audit::AuditLog::open(
            &dir,
            portcullis::audit::ChainKey::from_bytes(&key),
            options,
            None,
        )
        .unwrap();
        for _ in 0..3 {
            log.durable(portcullis::audit::Record::blank("outcome"))
                .await
                .unwrap();
        }
        drop(log);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    });
    let key_ref = format!("file:{key_file}");
    let dir_s = dir.display().to_string();
    let cps = dir.join("checkpoints.jsonl").display().to_string();
    // The checkpoints beside the files are used, and with the public key checked.
    let (code, out, err) = portcullis(&[
        "audit",
        "verify",
        "--key",
        &key_ref,
        "--public-key",
        &public,
        &dir_s,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("checkpoints: "), "{out}");
    let (code, out, err) =
        portcullis(&["audit", "verify-checkpoints", "--public-key", &public, &cps]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the newest at seq 4"), "{out}");
    // Another key's public half: not genuine.
    let (_, other, _) = portcullis(&["audit", "checkpoint-key"]);
    let other_public = other
        .lines()
        .find_map(|l| l.strip_prefix("public (give to verifiers): "))
        .unwrap()
        .trim()
        .to_owned();
    let (code, out, _) = portcullis(&[
        "audit",
        "verify-checkpoints",
        "--public-key",
        &other_public,
        &cps,
    ]);
    assert_eq!(code, 1, "{out}");
    let (code, _, err) = portcullis(&[
        "audit",
        "verify",
        "--key",
        &key_ref,
        "--public-key",
        &other_public,
        &dir_s,
    ]);
    assert_eq!(code, 1, "{err}");
    // The newest record cut off: the chain alone looks fine, the checkpoint does not.
    let f = portcullis::audit::writer::files(&dir).unwrap().remove(0);
    let text = std::fs::read_to_string(&f).unwrap();
    let cut = &text[..text[..text.len() - 1].rfind('\n').unwrap() + 1];
    std::fs::write(&f, cut).unwrap();
    let (code, out, _) = portcullis(&["audit", "verify", "--key", &key_ref, &dir_s]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("truncated"), "{out}");
    let (code, _, err) = portcullis(&[
        "audit",
        "verify-checkpoints",
        "--public-key",
        "bm9wZQ==",
        &cps,
    ]);
    assert_eq!(code, 64, "{err}");
}

/// `runtime.worker_threads: 1`: the real binary serves on one thread (the
/// current-thread scheduler) and proxies like the default runtime does.
#[tokio::test]
async fn run_on_a_single_thread_serves_requests() {
    use crate::common;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    let d = tempfile::tempdir().unwrap();
    let (mut sim, sim_addr) = common::spawn_sim(d.path());
    let sim_dir = d.path().join("sim");
    let key = "single-thread-viewer-key-0123456789ab";
    let config = format!(
        "listen:\n  - address: 127.0.0.1:0\n    tls: {{ cert_file: {s}/sim-cert.pem, key_file: {s}/sim-key.pem }}\n\
         admin: {{ address: 127.0.0.1:0 }}\n\
         upstream:\n  base_url: https://{sim_addr}\n  extra_ca_file: {s}/ca.pem\n  access_token: file:{s}/access-token\n\
         callers:\n  - {{ id: bot, role: Viewer, key_hashes: [\"sha256:{hash}\"] }}\n\
         runtime: {{ worker_threads: 1 }}\n\
         logging: {{ format: json, level: info }}\n",
        s = sim_dir.display(),
        hash = portcullis::keys::hash_key_hex(key),
    );
    let cfg = write(&d, "proxy.yaml", &config);
    let log_path = d.path().join("proxy.log");
    let mut proxy = Command::new(common::BIN)
        .args(["run", "--config", &cfg])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let port = common::wait_for_listening(&log_path);
    let ca = std::fs::read_to_string(sim_dir.join("ca.pem")).unwrap();
    let c = common::https_client(&ca);
    for _ in 0..3 {
        let req = http::Request::builder()
            .uri(format!(
                "https://localhost:{port}/marketdata/v1/quotes?symbols=AAPL"
            ))
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("AAPL"));
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
    let _ = sim.kill();
    let _ = sim.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let runtime: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "runtime")
        .unwrap_or_else(|| panic!("no runtime line: {log}"));
    assert_eq!(runtime["scheduler"], "current_thread");
    assert_eq!(runtime["worker_threads"], 1);
}
