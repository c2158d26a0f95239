//! `kill -9` under load loses no order: every order the simulator received
//! has its intent record on disk. The proxy runs as its own process (the
//! real binary), orders stream in from 16 connections, and the process is
//! killed mid-stream.

use crate::common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use common::BIN;
const ORDER: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"150.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":1}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_intent_record() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).display().to_string();

    // The simulator, in its own process.
    let (mut sim, sim_addr) = common::spawn_sim(d.path());

    // The proxy: one trader, the audit trail on.
    let key = "kill9-trader-key-0123456789abcdef0123";
    std::fs::write(
        p("audit.key"),
        b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    )
    .unwrap();
    let account = portcullis::sim::account_hash("12345678");
    let config = format!(
        "listen:\n  - address: 127.0.0.1:0\n    tls: {{ cert_file: {sim}/sim-cert.pem, key_file: {sim}/sim-key.pem }}\n\
         admin: {{ address: 127.0.0.1:0 }}\n\
         upstream:\n  base_url: https://{sim_addr}\n  extra_ca_file: {sim}/ca.pem\n  access_token: file:{sim}/access-token\n\
         accounts:\n  - {{ name: main, hash: {account}, environment: development }}\n\
         callers:\n  - {{ id: bot, role: Trader, key_hashes: [\"sha256:{hash}\"], accounts: [main] }}\n\
         audit:\n  dir: {audit}\n  key: file:{audit_key}\n\
         rate_limits: {{ per_ip: null, per_caller: null, groups: {{}}, per_account_orders: null, upstream: null }}\n\
         logging: {{ format: json, level: info }}\n",
        sim = p("sim"),
        hash = portcullis::keys::hash_key_hex(key),
        audit = p("audit"),
        audit_key = p("audit.key"),
    );
    std::fs::write(p("proxy.yaml"), config).unwrap();
    let log = std::fs::File::create(p("proxy.log")).unwrap();
    let mut proxy = Command::new(BIN)
        .args(["run", "--config", &p("proxy.yaml")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let port = common::wait_for_listening(&d.path().join("proxy.log"));

    // Orders from 16 connections until the proxy dies.
    let ca = std::fs::read_to_string(p("sim/ca.pem")).unwrap();
    let c = Arc::new(common::https_client(&ca));
    let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut loops = Vec::new();
    for _ in 0..16 {
        let (c, ok, port, account) = (c.clone(), ok.clone(), port.clone(), account.clone());
        loops.push(tokio::spawn(async move {
            loop {
                let req = http::Request::builder()
                    .method("POST")
                    .uri(format!(
                        "https://localhost:{port}/trader/v1/accounts/{account}/orders"
                    ))
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(ORDER.as_bytes())))
                    .unwrap();
                match tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
                    Ok(Ok(r)) if r.status() == 201 => {
                        ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // (An upstream hiccup under a loaded machine is not what
                    // this test is about; a refusal by the proxy would show
                    // as missing load below.)
                    Ok(Ok(r)) => assert!(
                        r.status().is_server_error(),
                        "order refused: {}",
                        r.status()
                    ),
                    _ => return, // the proxy is gone
                }
            }
        }));
    }
    // Let the load build, then kill -9 mid-stream.
    let start = Instant::now();
    while ok.load(std::sync::atomic::Ordering::Relaxed) < 200
        && start.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.kill().unwrap(); // SIGKILL
    proxy.wait().unwrap();
    for l in loops {
        let _ = l.await;
    }
    let placed = ok.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        placed >= 100,
        "too little load before the kill: {placed}\nproxy: {}\nsim: {}",
        std::fs::read_to_string(p("proxy.log")).unwrap_or_default(),
        std::fs::read_to_string(p("sim.log")).unwrap_or_default()
    );

    // What the simulator received …
    let req = http::Request::builder()
        .uri(format!(
            "https://localhost:{}/__sim/journal",
            sim_addr.rsplit(':').next().unwrap()
        ))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let journal = c
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let journal: Vec<portcullis::sim::JournalEntry> = serde_json::from_slice(&journal).unwrap();
    let received: Vec<String> = journal
        .iter()
        .filter(|e| e.method == "POST" && e.path.ends_with("/orders"))
        .map(|e| e.header("x-request-id")[0].to_owned())
        .collect();
    assert!(received.len() as u64 >= placed);

    // … each has its intent record on disk, and the chain is intact.
    let files = portcullis::audit::verify::expand(&[d.path().join("audit")]).unwrap();
    let mut intents = std::collections::HashSet::new();
    for f in &files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && v["kind"] == "intent"
            {
                intents.insert(v["request_id"].as_str().unwrap().to_owned());
            }
        }
    }
    let missing: Vec<&String> = received
        .iter()
        .filter(|id| !intents.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} orders the broker received have no intent record",
        missing.len(),
        received.len()
    );
    let key = portcullis::audit::ChainKey::from_secret(&secrecy::SecretString::from(
        std::fs::read_to_string(p("audit.key")).unwrap(),
    ))
    .unwrap();
    let report = portcullis::audit::verify::verify(&files, &key, None).unwrap();
    assert!(
        report.problem.is_none(),
        "{}",
        portcullis::audit::verify::describe(&report)
    );
    eprintln!(
        "{} orders received by the broker, all with intent records; {} records verified",
        received.len(),
        report.records
    );
    let _ = sim.kill();
    let _ = sim.wait();
}
