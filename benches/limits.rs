//! Rate-limit and address-filter overhead per request, with 100,000 keys
//! already tracked (the target: ≤ 1 µs each), and the memory a
//! keyed limiter holds at its cap. Run: `cargo bench --bench limits`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::config::{RateLimitsConfig, RateSpec};
use portcullis::pipeline::ip_filter::{self, IpFilter};
use portcullis::pipeline::rate_limit::RateLimits;

const KEYS: u32 = 100_000;

fn limits() -> RateLimits {
    let mut cfg = RateLimitsConfig::default();
    // Generous rates: the bench measures the bookkeeping, not refusals.
    for r in [&mut cfg.per_ip, &mut cfg.per_caller] {
        if let Some(r) = r.as_mut() {
            r.rate = RateSpec {
                count: 1_000_000,
                per: std::time::Duration::from_secs(1),
            };
            r.burst = 1_000_000;
        }
    }
    cfg.groups.clear();
    cfg.max_keys = 200_000;
    RateLimits::new(&cfg, &[], None)
}

fn addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let before = rss_kib();
    let l = limits();
    let callers: Vec<Arc<str>> = (0..KEYS)
        .map(|i| Arc::from(format!("caller-{i}")))
        .collect();
    let group: Arc<str> = Arc::from("market_data");
    for i in 0..KEYS {
        let _ = l.check_ip(addr(i));
        let _ = l.check_caller(&callers[i as usize], &group);
    }
    println!(
        "limits: {} address keys + {KEYS} caller keys tracked, RSS +{} KiB",
        l.ip_keys(),
        rss_kib().saturating_sub(before)
    );
    let mut i = 0u32;
    c.bench_function("limits/per_ip (100k keys tracked)", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(l.check_ip(black_box(addr(i)))).ok();
        })
    });
    c.bench_function("limits/per_caller (100k keys tracked)", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(l.check_caller(black_box(&callers[i as usize]), &group)).ok();
        })
    });
    let filter = IpFilter::from_config(
        &serde_yaml::from_str(
            "{ trusted_proxies: [10.0.0.0/8], allow: [10.0.0.0/8, 192.168.0.0/16, 2001:db8::/32], \
             deny: [10.66.0.0/16, 10.67.0.0/16], groups: { orders: { allow: [10.1.0.0/16] } } }",
        )
        .expect("filter"),
    );
    let peer = addr(5);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        "198.51.100.7, 10.1.2.3".parse().expect("header"),
    );
    c.bench_function(
        "limits/ip_filter (client address + global and group lists)",
        |b| {
            b.iter(|| {
                let ip = ip_filter::client_ip(black_box(peer), &headers, &filter.trusted);
                black_box(ip.map(|ip| filter.admits(Some("orders"), ip))).ok();
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
