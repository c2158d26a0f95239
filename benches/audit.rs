//! The audit trail's speed, printed (not asserted):
//! - durable records per second with group commit and fsync on, 64
//!   concurrent writers each waiting for its record (the intent path);
//! - the cost on the request path of queuing one outcome record;
//! - `audit verify` records per second.
//!
//! Run: `cargo bench --bench audit` (targets: ≥ 5,000 durable records/s,
//! < 20 µs added to a read, verify ≥ 200,000 records/s). `cargo test
//! --benches` runs it small, once.

use std::time::{Duration, Instant};

use portcullis::audit::{AuditLog, ChainKey, Record, verify};

fn record(i: u64) -> Record {
    Record {
        request_id: format!("{i:032x}"),
        user_id: "demo-trader".into(),
        action: "PlaceOrder".into(),
        details: portcullis::audit::record::Details {
            order_id: Some("1000001".into()),
            symbol: Some("AAPL".into()),
            quantity: Some(10),
            side: Some("BUY".into()),
            order_type: Some("LIMIT".into()),
            price: Some("150.0".into()),
            duration: Some("DAY".into()),
            account: Some("36F5…3724".into()),
            legs: None,
        },
        client_ip: "127.0.0.1".into(),
        route: "order_place".into(),
        method: "POST".into(),
        http_status: Some(201),
        upstream_status: Some(201),
        latency_ms: Some(2.5),
        decision: Some(portcullis::audit::record::DecisionRecord {
            allowed: true,
            policies: vec!["trader-trade-own-accounts".into()],
            reason: None,
        }),
        ..Record::blank("outcome")
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (secs, n_verify) = if full { (5, 400_000) } else { (1, 2_000) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = [5u8; 32];

    // Durable records/s: 64 writers, each awaiting its fsync'ed record.
    let durable = rt.block_on(async {
        let log = std::sync::Arc::new(
            AuditLog::open(
                dir.path(),
                ChainKey::from_bytes(&key),
                Default::default(),
                None,
            )
            .expect("log"),
        );
        let until = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for w in 0..64u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    log.durable(record(w * 1_000_000 + n))
                        .await
                        .expect("durable");
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task");
        }
        total as f64 / secs as f64
    });
    println!("audit/durable_group_commit (64 writers, fsync on): {durable:.0} records/s");

    // Queuing an outcome on the request path (building the record included).
    let queue = rt.block_on(async {
        let d = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(
            d.path(),
            ChainKey::from_bytes(&key),
            Default::default(),
            None,
        )
        .expect("log");
        let n = if full { 50_000 } else { 1_000 };
        let t = Instant::now();
        for i in 0..n {
            log.record(record(i));
        }
        let per = t.elapsed() / n as u32;
        // Let the writer drain before the directory goes.
        log.durable(record(0)).await.expect("drain");
        per
    });
    println!(
        "audit/queue_one_outcome (request path): {:.2} µs",
        queue.as_secs_f64() * 1e6
    );

    // verify: records/s over one large chain.
    let vdir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let log = AuditLog::open(
            vdir.path(),
            ChainKey::from_bytes(&key),
            Default::default(),
            None,
        )
        .expect("log");
        for i in 0..n_verify {
            log.record(record(i));
            // Stay within the writer's bounded queue.
            if i % 50_000 == 49_999 {
                log.durable(record(i)).await.expect("drain");
            }
        }
        log.durable(record(0)).await.expect("drain");
    });
    let files = verify::expand(&[vdir.path().to_owned()]).expect("files");
    let t = Instant::now();
    let report = verify::verify(&files, &ChainKey::from_bytes(&key), None).expect("verify");
    let elapsed = t.elapsed();
    assert!(report.problem.is_none(), "{}", verify::describe(&report));
    println!(
        "audit/verify: {} records in {:.0} ms = {:.0} records/s",
        report.records,
        elapsed.as_secs_f64() * 1e3,
        report.records as f64 / elapsed.as_secs_f64()
    );
}
