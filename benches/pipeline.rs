//! The per-request pipeline without network I/O: identity (hash + constant-
//! time scan of every stored key hash), strict route match, and the upstream
//! request with rewritten headers. Run: `cargo bench --bench pipeline`.

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::config::{Config, Mode};
use portcullis::pipeline::RequestCtx;
use portcullis::pipeline::route::RouteTable;

const KEY: &str = "pcs_benchmark-key-0000000000000000000000000000";

fn proxy(callers: usize, dir: &std::path::Path) -> std::sync::Arc<portcullis::pipeline::Proxy> {
    let token = dir.join("token");
    std::fs::write(&token, "bench-upstream-token").expect("token file");
    let mut yaml = format!(
        "listen:\n  - address: 127.0.0.1:0\nupstream:\n  base_url: https://127.0.0.1:9\n  access_token: file:{}\n\
         rate_limits: {{ per_ip: null, auth_failures: null, per_caller: null, groups: {{}}, per_account_orders: null, upstream: null }}\n\
         callers:\n",
        token.display()
    );
    for i in 0..callers {
        let key = if i == callers - 1 {
            KEY.to_owned()
        } else {
            format!("other-key-{i}")
        };
        yaml.push_str(&format!(
            "  - id: caller-{i}\n    role: Trader\n    key_hashes: [\"sha256:{}\"]\n",
            portcullis::keys::hash_key_hex(&key)
        ));
    }
    let cfg = Config::from_yaml(&yaml, "bench", Mode::Normal).expect("config");
    portcullis::prepare(&cfg).expect("prepare").proxy
}

fn parts(method: &str, uri: &str) -> http::request::Parts {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "127.0.0.1:8443")
        .header("authorization", format!("Bearer {KEY}"))
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, deflate")
        .header("user-agent", "python-httpx/0.28.1")
        .header("content-type", "application/json")
        .body(())
        .expect("request")
        .into_parts()
        .0
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let hash = "36F5A5536A33431DDFA28A7F4846417F8DA62A13838B011DD90C66F026343724";
    let order = Bytes::from_static(br#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"150.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#);

    for callers in [4usize, 1000] {
        let p = proxy(callers, dir.path());
        let auth = || p.upstream_auth.current().expect("static token");
        let quote = parts(
            "GET",
            "/marketdata/v1/quotes?symbols=AAPL,MSFT,%24SPX&fields=quote",
        );
        c.bench_function(&format!("pipeline/quotes_get/{callers}_callers"), |b| {
            b.iter(|| {
                let mut ctx = RequestCtx::new(peer);
                p.admit(&mut ctx, black_box(&quote)).expect("admitted");
                black_box(
                    p.build_upstream_request(&ctx, &quote, Bytes::new(), auth())
                        .expect("request"),
                )
            })
        });
        let place = parts("POST", &format!("/trader/v1/accounts/{hash}/orders"));
        c.bench_function(&format!("pipeline/order_post/{callers}_callers"), |b| {
            b.iter(|| {
                let mut ctx = RequestCtx::new(peer);
                p.admit(&mut ctx, black_box(&place)).expect("admitted");
                black_box(
                    p.build_upstream_request(&ctx, &place, order.clone(), auth())
                        .expect("request"),
                )
            })
        });
    }

    let table = RouteTable::schwab().expect("routes");
    let m = http::Method::GET;
    let path = format!("/trader/v1/accounts/{hash}/orders/1003456789012");
    c.bench_function("route/match_order_get", |b| {
        b.iter(|| black_box(table.match_request(&m, black_box(&path)).expect("match")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
