//! The audit trail: one record per request, an fsync'ed intent record
//! before any order goes upstream, a chain `audit verify` checks, and
//! orders refused (not reads) when the trail cannot be written.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{Harness, TRADER, VIEWER, audit_dir, records};
use portcullis::audit::verify::{self, Damage};
use portcullis::audit::writer::Options;
use portcullis::audit::{AuditLog, ChainKey, Record};

const LIMIT: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"150.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#;

fn demo_key(h: &Harness) -> ChainKey {
    let text = std::fs::read_to_string(h.dir.path().join("demo").join("audit.key")).unwrap();
    ChainKey::from_secret(&secrecy::SecretString::from(text)).unwrap()
}

#[tokio::test]
async fn every_request_is_recorded_and_orders_have_their_intent_on_disk_first() {
    let h = Harness::start().await;
    let hash = h.account_hash();
    let orders = format!("/trader/v1/accounts/{hash}/orders");
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
    assert_eq!(
        h.send(
            "GET",
            "/marketdata/v1/quotes?symbols=AAPL",
            Some("nope"),
            None
        )
        .await
        .status,
        401
    );
    let placed = h.send("POST", &orders, Some(TRADER), Some(LIMIT)).await;
    assert_eq!(placed.status, 201);
    let big = LIMIT.replace("\"quantity\":10", "\"quantity\":500");
    assert_eq!(
        h.send("POST", &orders, Some(TRADER), Some(&big))
            .await
            .status,
        403
    );

    // The run's start record, 4 outcomes and 1 intent.
    let recs = records(&audit_dir(&h), 6).await;
    assert_eq!(recs.len(), 6, "{recs:#?}");
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    assert_eq!(recs[0]["kind"], "start");
    let by = |kind: &str, action: &str| {
        recs.iter()
            .filter(|r| r["kind"] == kind && r["action"] == action)
            .cloned()
            .collect::<Vec<_>>()
    };
    let quote = &by("outcome", "ViewMarketData");
    assert_eq!(quote.len(), 1);
    assert_eq!(quote[0]["result"], "success");
    assert_eq!(quote[0]["user_id"], "demo-viewer");
    // Refused at identity, before routing: no caller, no action.
    let anon = &by("outcome", "-");
    assert_eq!(anon.len(), 1);
    assert_eq!(anon[0]["result"], "rejected");
    assert_eq!(anon[0]["reason"], "unauthenticated");
    assert_eq!(anon[0]["user_id"], "-");
    assert_eq!(anon[0]["http_status"], 401);

    let intents = by("intent", "PlaceOrder");
    assert_eq!(intents.len(), 1, "only the forwarded order has an intent");
    let outcomes = by("outcome", "PlaceOrder");
    let done = outcomes.iter().find(|r| r["result"] == "success").unwrap();
    assert!(
        intents[0]["seq"].as_u64() < done["seq"].as_u64(),
        "intent after the outcome"
    );
    assert_eq!(intents[0]["request_id"], done["request_id"]);
    assert_eq!(intents[0]["result"], "pending");
    let sim_order_id = placed.headers["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(done["details"]["order_id"], sim_order_id.as_str());
    assert_eq!(done["details"]["symbol"], "AAPL");
    assert_eq!(done["details"]["quantity"], 10);
    assert_eq!(done["details"]["side"], "BUY");
    assert_eq!(done["details"]["price"], "150.0");
    assert_eq!(done["http_status"], 201);
    assert_eq!(done["decision"]["allowed"], true);
    let denied = outcomes.iter().find(|r| r["result"] == "denied").unwrap();
    assert_eq!(denied["decision"]["reason"], "order_quantity_limit");

    // Nothing secret and no full account number in the trail.
    let all: String = portcullis::audit::writer::files(&audit_dir(&h))
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for secret in [VIEWER, TRADER, "sim-at-", hash.as_str()] {
        assert!(!all.contains(secret), "the audit trail contains {secret}");
    }
    // The chain verifies.
    let files = verify::expand(&[audit_dir(&h)]).unwrap();
    let r = verify::verify(&files, &demo_key(&h), None).unwrap();
    assert_eq!(
        (r.records, r.problem.clone()),
        (6, None),
        "{}",
        verify::describe(&r)
    );
    assert_eq!(r.exit_code(), verify::EXIT_OK);
}

#[tokio::test]
async fn orders_are_refused_but_reads_served_when_the_trail_cannot_be_written() {
    // The audit directory's path is taken by a file: nothing can be written.
    let blocked = tempfile::tempdir().unwrap();
    let dir = blocked.path().join("audit");
    std::fs::write(&dir, "not a directory").unwrap();
    let h = Harness::start_with(Default::default(), move |c| {
        c.audit.as_mut().unwrap().dir = dir;
    })
    .await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    let r = h.send("POST", &orders, Some(TRADER), Some(LIMIT)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "audit_unavailable");
    assert!(
        h.journal().is_empty(),
        "an unaudited order reached the broker"
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
    let m = h.admin_get("/metrics").await.text();
    let errors: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_audit_write_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the audit error metric");
    assert!(errors >= 1, "{m}");
}

fn record(i: u64) -> Record {
    Record {
        request_id: format!("req-{i}"),
        user_id: "bot".into(),
        action: "ViewMarketData".into(),
        ..Record::blank("outcome")
    }
}

async fn write_chain(dir: &Path, key: &[u8], n: u64) {
    let log = AuditLog::open(dir, ChainKey::from_bytes(key), Default::default(), None).unwrap();
    for i in 0..n {
        log.durable(record(i)).await.unwrap();
    }
}

fn check(dir: &Path, key: &[u8]) -> verify::Report {
    verify::verify(
        &verify::expand(&[dir.to_owned()]).unwrap(),
        &ChainKey::from_bytes(key),
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn the_chain_continues_across_restarts_and_verify_names_the_damage() {
    let key = [9u8; 32];
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), &key, 3).await;
    write_chain(d.path(), &key, 3).await; // a restart: a new file, same chain
    let files = portcullis::audit::writer::files(d.path()).unwrap();
    assert_eq!(files.len(), 2);
    // Each run: its start record, then 3.
    let ok = check(d.path(), &key);
    assert_eq!(
        (ok.records, ok.first_seq, ok.last_seq),
        (8, Some(1), Some(8))
    );
    assert_eq!(ok.exit_code(), verify::EXIT_OK);
    // The wrong key: the first record fails.
    assert_eq!(
        check(d.path(), &[8u8; 32]).problem.unwrap().damage,
        Damage::Edited
    );

    let first = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<&str> = first.lines().collect();
    let damaged = |text: String| {
        let dd = tempfile::tempdir().unwrap();
        std::fs::write(dd.path().join("audit-000000000001.jsonl"), text).unwrap();
        std::fs::copy(&files[1], dd.path().join(files[1].file_name().unwrap())).unwrap();
        let r = check(dd.path(), &key);
        let code = r.exit_code();
        (r.problem.map(|p| (p.damage, p.line)), code)
    };
    let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    let (l1, l2, l3, l4) = (lines[0], lines[1], lines[2], lines[3]);
    // Edited: a value changed in record 3.
    let edited = join(&[l1, l2, &l3.replace("req-1", "req-X"), l4]);
    assert_eq!(damaged(edited), (Some((Damage::Edited, 3)), 1));
    // Deleted: record 3 removed.
    assert_eq!(
        damaged(join(&[l1, l2, l4])),
        (Some((Damage::Deleted, 3)), 1)
    );
    // Deleted at the end of a file: the next file does not follow on.
    assert_eq!(
        damaged(join(&[l1, l2, l3])),
        (Some((Damage::Deleted, 1)), 1)
    );
    // Inserted: record 3 copied in again.
    assert_eq!(
        damaged(join(&[l1, l2, l3, l3, l4])),
        (Some((Damage::Inserted, 4)), 1)
    );
    // Reordered: records 3 and 4 swapped.
    assert_eq!(
        damaged(join(&[l1, l2, l4, l3])),
        (Some((Damage::Reordered, 3)), 1)
    );
    // A torn line in a file that is not the last: damage, not a crash.
    assert_eq!(
        damaged(format!("{}{}", join(&[l1, l2, l3, l4]), &l4[..20])),
        (Some((Damage::Garbage, 5)), 1)
    );
    // The chain given from its second file only: checked, and said.
    let partial = verify::verify(&[files[1].clone()], &ChainKey::from_bytes(&key), None).unwrap();
    assert_eq!(
        (partial.problem.clone(), partial.partial_from),
        (None, Some(5))
    );
    assert!(verify::describe(&partial).contains("starts at seq 5"));
    // Nothing to verify is an error, not "OK".
    assert!(verify::verify(&[], &ChainKey::from_bytes(&key), None).is_err());

    // Torn: the last file's final line cut short by a crash.
    let second = std::fs::read_to_string(&files[1]).unwrap();
    std::fs::write(&files[1], &second[..second.len() - 30]).unwrap();
    let torn = check(d.path(), &key);
    assert_eq!(torn.problem, None);
    assert_eq!(torn.records, 7);
    assert_eq!(torn.exit_code(), verify::EXIT_TORN);
    // The next run cuts the torn record off, says so in its start record,
    // and continues the chain from the last whole record.
    write_chain(d.path(), &key, 1).await;
    let after = check(d.path(), &key);
    assert_eq!(
        (after.records, after.last_seq, after.problem.clone()),
        (9, Some(9), None)
    );
    assert_eq!(after.exit_code(), verify::EXIT_OK);
    let newest = portcullis::audit::writer::files(d.path())
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        std::fs::read_to_string(newest)
            .unwrap()
            .contains("torn_tail_dropped")
    );
}

/// A writer with these options; `n` records, then closed (its last
/// checkpoint written).
async fn write_with(dir: &Path, key: &[u8], options: Options, n: u64) {
    let log = AuditLog::open(dir, ChainKey::from_bytes(key), options, None).unwrap();
    for i in 0..n {
        log.durable(record(i)).await.unwrap();
    }
    drop(log);
    // The writer thread signs its final checkpoint as it closes.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn files_rotate_by_size_and_the_chain_runs_on_across_them() {
    let key = [5u8; 32];
    let d = tempfile::tempdir().unwrap();
    let options = Options {
        max_file_bytes: 4096,
        ..Options::default()
    };
    write_with(d.path(), &key, options, 60).await;
    let files = portcullis::audit::writer::files(d.path()).unwrap();
    assert!(files.len() >= 4, "{files:?}");
    for f in &files {
        // Full files stop before the limit (a batch that would pass it
        // goes to the next file).
        assert!(std::fs::metadata(f).unwrap().len() <= 4096 + 1024, "{f:?}");
    }
    let r = check(d.path(), &key);
    assert_eq!((r.problem, r.records), (None, 61));
}

#[tokio::test]
async fn retention_deletes_only_verified_files_and_records_each_deletion() {
    let key = [6u8; 32];
    let d = tempfile::tempdir().unwrap();
    let small = || Options {
        max_file_bytes: 2048,
        ..Options::default()
    };
    write_with(d.path(), &key, small(), 40).await;
    let before = portcullis::audit::writer::files(d.path()).unwrap();
    assert!(before.len() >= 4, "{before:?}");
    // Someone edits the third file: it must never be deleted, nor anything after it.
    let tampered = before[2].clone();
    let text = std::fs::read_to_string(&tampered).unwrap();
    std::fs::write(&tampered, text.replacen("req-", "req-X", 1)).unwrap();

    // A new run with a retention every file is past.
    let keep = Options {
        retention: Some(Duration::from_millis(1)),
        ..small()
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_with(d.path(), &key, keep, 3).await;
    let mut after = portcullis::audit::writer::files(d.path()).unwrap();
    for _ in 0..50 {
        if !after.contains(&before[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = portcullis::audit::writer::files(d.path()).unwrap();
    }
    assert!(
        !after.contains(&before[0]),
        "the verified old file was kept"
    );
    assert!(after.contains(&tampered), "an unverified file was deleted");
    assert!(
        after.contains(&before[1]),
        "the file before the tampered one is its link"
    );
    // Each deletion and the refusal are in the trail of the next run.
    write_with(d.path(), &key, small(), 1).await;
    let all: String = portcullis::audit::writer::files(d.path())
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let name0 = before[0].file_name().unwrap().to_str().unwrap();
    assert!(all.contains(&format!("deleted:{name0}")), "{all}");
    // The file before the tampered one is kept too: its link into the
    // tampered file cannot be checked. The record says where the damage is.
    let name1 = before[1].file_name().unwrap().to_str().unwrap();
    let tname = tampered.file_name().unwrap().to_str().unwrap();
    assert!(
        all.contains(&format!("kept_unverified:{name1}:damage_at:{tname}:1")),
        "{all}"
    );
}

#[tokio::test]
async fn checkpoints_catch_a_cut_tail_and_a_chain_rewritten_with_the_key() {
    use portcullis::audit::checkpoint::{self, Signer, Verifier};
    let key = [7u8; 32];
    let d = tempfile::tempdir().unwrap();
    let (seed, public) = checkpoint::generate().unwrap();
    let options = || Options {
        checkpoint: Some((
            Signer::from_secret(&seed).unwrap(),
            Duration::from_millis(1),
        )),
        ..Options::default()
    };
    write_with(d.path(), &key, options(), 20).await;
    let cps_path = d.path().join(checkpoint::FILE_NAME);
    let cps = checkpoint::load(&cps_path).unwrap().checkpoints;
    assert!(!cps.is_empty());
    let last_cp = cps.iter().map(|c| c.seq).max().unwrap();
    assert_eq!(last_cp, 21, "the closing checkpoint signs the final record");
    let files = portcullis::audit::writer::files(d.path()).unwrap();
    let full = verify::verify(&files, &ChainKey::from_bytes(&key), Some(&cps)).unwrap();
    assert_eq!(full.problem, None);
    assert!(full.checkpoints_matched >= 1);
    // An auditor with the public key only: every checkpoint genuine.
    let v = Verifier::from_base64(&public).unwrap();
    let r = verify::verify_checkpoints(&cps_path, &v).unwrap();
    assert_eq!((r.count, r.forged.len(), r.exit_code()), (cps.len(), 0, 0));

    // Cut the last 5 records off: the chain alone is intact, the
    // checkpoint says records are missing.
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut: String = lines[..lines.len() - 5]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&files[0], &cut).unwrap();
    let chain_only = verify::verify(&files, &ChainKey::from_bytes(&key), None).unwrap();
    assert_eq!(chain_only.problem, None);
    let held = verify::verify(&files, &ChainKey::from_bytes(&key), Some(&cps)).unwrap();
    let p = held.problem.clone().unwrap();
    assert_eq!((p.damage, p.expected_seq), (Damage::Truncated, 17));
    assert_eq!(held.exit_code(), verify::EXIT_DAMAGED);

    // Rewrite the whole chain with the key (an insider): every mac is
    // valid again, but not the one a checkpoint signed.
    let rewritten = tempfile::tempdir().unwrap();
    write_with(rewritten.path(), &key, Options::default(), 20).await;
    let rfiles = portcullis::audit::writer::files(rewritten.path()).unwrap();
    let r = verify::verify(&rfiles, &ChainKey::from_bytes(&key), Some(&cps)).unwrap();
    assert_eq!(r.problem.unwrap().damage, Damage::Rewritten);

    // A forged checkpoint line fails the public-key check.
    let mut forged = cps[0].clone();
    forged.seq += 1000;
    let mut text = std::fs::read_to_string(&cps_path).unwrap();
    text.push_str(&serde_json::to_string(&forged).unwrap());
    text.push('\n');
    std::fs::write(&cps_path, text).unwrap();
    let r = verify::verify_checkpoints(&cps_path, &v).unwrap();
    assert_eq!(r.forged, vec![cps.len() + 1]);
    assert_eq!(r.exit_code(), verify::EXIT_DAMAGED);
}

#[tokio::test]
async fn reads_can_be_refused_too_while_the_trail_cannot_be_written() {
    let blocked = tempfile::tempdir().unwrap();
    let dir = blocked.path().join("audit");
    std::fs::write(&dir, "not a directory").unwrap();
    let h = Harness::start_with(Default::default(), move |c| {
        let a = c.audit.as_mut().unwrap();
        a.dir = dir;
        a.reads_when_failing = portcullis::config::ReadsWhenFailing::Refuse;
        // Two calls of the app's budget: refused reads must not spend it.
        c.rate_limits.upstream = Some(serde_yaml::from_str("{ rate: 1/h, burst: 2 }").unwrap());
    })
    .await;
    for _ in 0..3 {
        let r = h
            .send(
                "GET",
                "/marketdata/v1/quotes?symbols=AAPL",
                Some(VIEWER),
                None,
            )
            .await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"], "audit_unavailable");
    }
    assert!(
        h.journal().is_empty(),
        "an unaudited read reached the broker"
    );
    let m = h.admin_get("/metrics").await.text();
    assert_eq!(common::metric(&m, "portcullis_audit_healthy"), 0.0);
}

/// `portcullis audit replay` (the real binary) over the harness's trail.
fn replay(policies: &Path, audit: &Path) -> (i32, serde_json::Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "audit",
            "replay",
            "--config",
            "config/demo.yaml",
            "--json",
            "--policies",
        ])
        .arg(policies)
        .arg(audit)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn replay_reproduces_every_decision_and_names_what_a_candidate_would_change() {
    let h = Harness::start().await;
    let orders = format!("/trader/v1/accounts/{}/orders", h.account_hash());
    let quotes = "/marketdata/v1/quotes?symbols=AAPL";
    let allowed = h.send("POST", &orders, Some(TRADER), Some(LIMIT)).await;
    assert_eq!(allowed.status, 201);
    let gme = h
        .send(
            "POST",
            &orders,
            Some(TRADER),
            Some(&LIMIT.replace("AAPL", "GME")),
        )
        .await;
    assert_eq!(gme.status, 403);
    let big = LIMIT.replace("\"quantity\":10", "\"quantity\":500");
    assert_eq!(
        h.send("POST", &orders, Some(TRADER), Some(&big))
            .await
            .status,
        403
    );
    assert_eq!(h.send("GET", quotes, Some(VIEWER), None).await.status, 200);
    assert_eq!(
        h.send("POST", &orders, Some(VIEWER), Some(LIMIT))
            .await
            .status,
        403
    );
    assert_eq!(
        h.admin_post("/admin/halt", Some(common::ADMIN))
            .await
            .status,
        200
    );
    // The start record, 6 outcomes and the allowed order's intent.
    assert_eq!(common::records(&audit_dir(&h), 8).await.len(), 8);
    let rid = |r: &common::Reply| r.headers["x-request-id"].to_str().unwrap().to_owned();

    // The policies in force: every decision replays exactly as it was made.
    let active = h.dir.path().join("demo").join("policies");
    let (code, same, err) = replay(&active, &audit_dir(&h));
    assert_eq!(code, 0, "{same}{err}");
    assert_eq!(same["changed"], 0, "{same}");
    assert_eq!(same["replayed"], 6, "{same}");
    assert_eq!(same["not_replayable"], 0, "{same}");

    // A candidate without the GME rule and with a limit of 5 shares.
    let candidate = tempfile::tempdir().unwrap();
    for f in [
        "schema.cedarschema",
        "roles.cedar",
        "max-order-quantity.cedar",
    ] {
        let text = std::fs::read_to_string(active.join(f)).unwrap();
        std::fs::write(
            candidate.path().join(f),
            text.replace("max_quantity > 100", "max_quantity > 5"),
        )
        .unwrap();
    }
    let (code, diff, err) = replay(candidate.path(), &audit_dir(&h));
    assert_eq!(code, 1, "{diff}{err}");
    // The viewer's order is still denied, now by the quantity rule first.
    assert_eq!(diff["changed"], 3, "{diff}");
    assert_eq!(
        diff["by_action"]["PlaceOrder"]["allow_to_deny"], 1,
        "{diff}"
    );
    assert_eq!(
        diff["by_action"]["PlaceOrder"]["deny_to_allow"], 0,
        "{diff}"
    );
    assert_eq!(
        diff["by_action"]["PlaceOrder"]["reason_changed"], 2,
        "{diff}"
    );
    let changes = diff["changes"].as_array().unwrap();
    assert_eq!(changes[0]["request_id"], rid(&allowed).as_str());
    assert_eq!(changes[0]["would_be"], "deny (order_quantity_limit)");
    // GME is no longer denied for its symbol, but 10 > 5 now denies it.
    assert_eq!(changes[1]["request_id"], rid(&gme).as_str());
    assert_eq!(changes[1]["was"], "deny (symbol_denied)");

    // A candidate that does not validate: exit 64, nothing replayed.
    std::fs::write(candidate.path().join("broken.cedar"), "permit (").unwrap();
    let (code, _, err) = replay(candidate.path(), &audit_dir(&h));
    assert_eq!(code, 64, "{err}");
}
