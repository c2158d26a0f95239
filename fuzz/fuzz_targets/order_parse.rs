//! The order-body parser on any bytes: never a panic, and what it accepts
//! has the invariants the policies rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::pipeline::order::parse_order;

fuzz_target!(|data: &[u8]| {
    if let Ok(o) = parse_order(Some(b"application/json"), data) {
        assert!(!o.legs.is_empty(), "an accepted order without legs");
        assert!(o.max_quantity >= 0 && o.total_quantity >= o.max_quantity.min(o.total_quantity));
        for leg in &o.legs {
            assert!(leg.quantity > 0, "a leg with quantity {}", leg.quantity);
            assert!(o.symbols.contains(&leg.symbol));
            assert!(leg.quantity <= o.max_quantity);
        }
    }
});
