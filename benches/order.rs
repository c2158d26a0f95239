//! Order body parsing for policy facts: the strict JSON parse (duplicate
//! keys, depth) plus the walk over the order tree, on the smallest common
//! order and on the deepest one Schwab clients build (first-triggers-OCO).
//! Run: `cargo bench --bench order`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::pipeline::order::parse_order;

const CONTENT_TYPE: &[u8] = b"application/json";

const EQUITY_LIMIT: &[u8] = br#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"425.50","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"MSFT"},"quantity":5}]}"#;

const OTOCO: &[u8] = br#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"190.00","orderStrategyType":"TRIGGER","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}],"childOrderStrategies":[{"orderStrategyType":"OCO","childOrderStrategies":[{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"210.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]},{"session":"NORMAL","duration":"DAY","orderType":"STOP","stopPrice":"180.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}]}]}"#;

fn bench(c: &mut Criterion) {
    for (name, body) in [("equity_limit", EQUITY_LIMIT), ("otoco_trigger", OTOCO)] {
        c.bench_function(&format!("order/parse/{name}"), |b| {
            b.iter(|| {
                black_box(
                    parse_order(black_box(Some(CONTENT_TYPE)), black_box(body)).expect("order"),
                )
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
