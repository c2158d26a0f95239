//! The audit trail: one record per request, an fsync'ed intent record
//! before any order goes upstream, a chain `audit verify` checks, and
//! orders refused (not reads) when the trail cannot be written.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Harness, TRADER, VIEWER};
use portcullis::audit::verify::{self, Damage};
use portcullis::audit::{AuditLog, ChainKey, Record};

const LIMIT: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"150.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#;

fn demo_key(h: &Harness) -> ChainKey {
    let text = std::fs::read_to_string(h.dir.path().join("demo").join("audit.key")).unwrap();
    ChainKey::from_secret(&secrecy::SecretString::from(text)).unwrap()
}

fn audit_dir(h: &Harness) -> PathBuf {
    h.dir.path().join("demo").join("audit")
}

/// The records written so far, waiting until there are at least `n`.
async fn records(dir: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut out = Vec::new();
        for f in portcullis::audit::writer::files(dir).unwrap_or_default() {
            for line in std::fs::read_to_string(&f).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
        if out.len() >= n || std::time::Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

    // 4 outcomes + 1 intent.
    let recs = records(&audit_dir(&h), 5).await;
    assert_eq!(recs.len(), 5, "{recs:#?}");
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=5).collect::<Vec<_>>());
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
    let r = verify::verify(&files, &demo_key(&h)).unwrap();
    assert_eq!(
        (r.records, r.problem.clone()),
        (5, None),
        "{}",
        verify::describe(&r)
    );
}

#[tokio::test]
async fn orders_are_refused_but_reads_served_when_the_trail_cannot_be_written() {
    let h = Harness::start().await;
    // The audit directory replaced by a file: nothing can be written.
    let dir = audit_dir(&h);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
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
    assert!(!m.contains("portcullis_audit_write_errors_total 0"), "{m}");
}

fn record(i: u64) -> Record {
    Record {
        seq: 0,
        timestamp: portcullis::audit::record::timestamp(),
        kind: "outcome",
        request_id: format!("req-{i}"),
        user_id: "bot".into(),
        action: "ViewMarketData".into(),
        details: Default::default(),
        result: "success",
        client_ip: "127.0.0.1".into(),
        session_id: None,
        route: "quotes".into(),
        method: "GET".into(),
        http_status: Some(200),
        upstream_status: Some(200),
        latency_ms: Some(1.0),
        decision: None,
        reason: None,
    }
}

async fn write_chain(dir: &Path, key: &[u8], n: u64) {
    let log = AuditLog::open(dir, ChainKey::from_bytes(key), false, None).unwrap();
    for i in 0..n {
        log.durable(record(i)).await.unwrap();
    }
}

fn check(dir: &Path, key: &[u8]) -> verify::Report {
    verify::verify(
        &verify::expand(&[dir.to_owned()]).unwrap(),
        &ChainKey::from_bytes(key),
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
    let ok = check(d.path(), &key);
    assert_eq!(
        (ok.records, ok.first_seq, ok.last_seq),
        (6, Some(1), Some(6))
    );
    assert_eq!(ok.exit_code(), verify::EXIT_OK);
    // The wrong key: the first record fails.
    assert_eq!(
        check(d.path(), &[8u8; 32]).problem.unwrap().damage,
        Damage::Edited
    );

    let first = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<&str> = first.lines().collect();
    let damaged = |name: &str, text: String| {
        let dd = tempfile::tempdir().unwrap();
        std::fs::write(dd.path().join("audit-000000000001.jsonl"), text).unwrap();
        std::fs::copy(&files[1], dd.path().join(files[1].file_name().unwrap())).unwrap();
        let r = check(dd.path(), &key);
        let code = r.exit_code();
        (r.problem.map(|p| (p.damage, p.line)), code, name.to_owned())
    };
    let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    // Edited: a value changed in record 2.
    let edited = join(&[lines[0], &lines[1].replace("req-1", "req-X"), lines[2]]);
    assert_eq!(
        damaged("edited", edited),
        (Some((Damage::Edited, 2)), 1, "edited".into())
    );
    // Deleted: record 2 removed.
    assert_eq!(
        damaged("deleted", join(&[lines[0], lines[2]])),
        (Some((Damage::Deleted, 2)), 1, "deleted".into())
    );
    // Inserted: record 2 copied in again.
    assert_eq!(
        damaged("inserted", join(&[lines[0], lines[1], lines[1], lines[2]])),
        (Some((Damage::Inserted, 3)), 1, "inserted".into())
    );
    // Reordered: records 2 and 3 swapped.
    assert_eq!(
        damaged("reordered", join(&[lines[0], lines[2], lines[1]])),
        (Some((Damage::Reordered, 2)), 1, "reordered".into())
    );
    // Torn: the last file's final line cut short by a crash.
    let second = std::fs::read_to_string(&files[1]).unwrap();
    std::fs::write(&files[1], &second[..second.len() - 30]).unwrap();
    let torn = check(d.path(), &key);
    assert_eq!(torn.problem, None);
    assert_eq!(torn.records, 5);
    assert_eq!(torn.exit_code(), verify::EXIT_TORN);
    // And the writer continues the chain from the last whole record.
    write_chain(d.path(), &key, 1).await;
    let after = check(d.path(), &key);
    assert_eq!(
        (after.records, after.last_seq, after.problem),
        (6, Some(6), None)
    );
}
