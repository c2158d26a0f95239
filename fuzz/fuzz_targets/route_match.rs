//! The route matcher and the query checks on any method and request target:
//! never a panic; a match only for a path free of every forbidden form.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::pipeline::route::{self, RouteTable};

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| RouteTable::schwab().expect("the shipped route table loads"))
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "TRACE"];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let method: http::Method = METHODS[usize::from(m) % METHODS.len()]
        .parse()
        .expect("method");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if let Some(q) = query {
        let _ = route::check_query(q);
    }
    if let Ok(found) = table().match_request(&method, path) {
        // Whatever matched is free of the forms the grammar refuses.
        assert!(
            route::check_path(path).is_ok(),
            "matched a refused path: {path:?}"
        );
        for forbidden in [
            "/../", "/./", "//", "\\", "%2e", "%2E", "%00", ";", "%3b", "%3B", "%5c", "%5C", "%25",
        ] {
            assert!(
                !path.contains(forbidden),
                "matched {path:?} containing {forbidden:?}"
            );
        }
        let _ = table().get(&found);
        let _ = table().account(&found);
    }
});
