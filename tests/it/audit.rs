//! The audit trail: one record per request, an fsync'ed intent record
//! before any order goes upstream, a chain `audit verify` checks, and
//! orders refused (not reads) when the trail cannot be written.

use crate::common;

use std::path::Path;

use common::{Harness, TRADER, VIEWER, audit_dir, records};
use portcullis::audit::verify::{self, Damage};
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
    let r = verify::verify(&files, &demo_key(&h)).unwrap();
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
    let partial = verify::verify(&[files[1].clone()], &ChainKey::from_bytes(&key)).unwrap();
    assert_eq!(
        (partial.problem.clone(), partial.partial_from),
        (None, Some(5))
    );
    assert!(verify::describe(&partial).contains("starts at seq 5"));
    // Nothing to verify is an error, not "OK".
    assert!(verify::verify(&[], &ChainKey::from_bytes(&key)).is_err());

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
