//! Properties of the route matcher, on generated paths: it never matches a
//! path that holds a forbidden form, and it agrees with a simple reference
//! matcher written from the grammar in config/routes/schwab.yaml.

use portcullis::pipeline::route::RouteTable;
use proptest::prelude::*;

/// One route as the table file writes it.
#[derive(serde::Deserialize)]
struct Spec {
    name: String,
    method: String,
    path: String,
    #[serde(default)]
    trailing_slash: bool,
}

#[derive(serde::Deserialize)]
struct Table {
    routes: Vec<Spec>,
}

fn specs() -> &'static [Spec] {
    static SPECS: std::sync::OnceLock<Vec<Spec>> = std::sync::OnceLock::new();
    SPECS.get_or_init(|| {
        let text = std::fs::read_to_string("config/routes/schwab.yaml").unwrap();
        let t: Table = serde_yaml::from_str(&text).unwrap();
        t.routes
    })
}

fn table() -> &'static RouteTable {
    static TABLE: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| RouteTable::schwab().unwrap())
}

/// The forms no matched path may hold.
const FORBIDDEN: &[&str] = &[
    "/../", "/./", "//", "\\", ";", "%2e", "%2E", "%5c", "%5C", "%25", "%3b", "%3B", "%00",
];

// --- the reference: the grammar, written plainly -----------------------

fn ref_path_ok(path: &str) -> bool {
    if !path.starts_with('/') || path.len() > 1024 {
        return false;
    }
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = match path.get(i + 1..i + 3) {
                Some(h) => h,
                None => return false,
            };
            let Ok(v) = u8::from_str_radix(hex, 16) else {
                return false;
            };
            if hex.starts_with('+') || hex.starts_with('-') {
                return false;
            }
            if v == b'.' || v == b'\\' || v == b'%' || v == b';' || !(0x20..0x7f).contains(&v) {
                return false;
            }
            i += 3;
            continue;
        }
        if c <= 0x20 || c >= 0x7f || b"\\;\"<>`{|}#?".contains(&c) {
            return false;
        }
        i += 1;
    }
    if path == "/" {
        return true;
    }
    let inner = path[1..].strip_suffix('/').unwrap_or(&path[1..]);
    inner
        .split('/')
        .all(|s| !s.is_empty() && s != "." && s != "..")
}

fn ref_symbol(raw: &str) -> bool {
    let mut decoded = String::new();
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        if c == '%' {
            let code = rest.get(1..3).map(str::to_ascii_uppercase);
            let d = match code.as_deref() {
                Some("24") => '$',
                Some("2F") => '/',
                Some("20") => ' ',
                Some("5E") => '^',
                _ => return false,
            };
            decoded.push(d);
            rest = &rest[3..];
        } else if c.is_ascii_alphanumeric() || "$._-^".contains(c) {
            decoded.push(c);
            rest = &rest[1..];
        } else {
            return false;
        }
    }
    let n = decoded.chars().count();
    if !(1..=64).contains(&n) || decoded.chars().all(|c| c == ' ') {
        return false;
    }
    let body = decoded.strip_prefix('/').unwrap_or(&decoded);
    !body
        .split('/')
        .any(|p| p.is_empty() || p.trim_matches('.').is_empty())
}

fn ref_param(ty: &str, raw: &str) -> bool {
    let n = raw.len();
    match ty {
        "account_hash" => (1..=128).contains(&n) && raw.chars().all(|c| c.is_ascii_alphanumeric()),
        "int64" => {
            (1..=19).contains(&n)
                && raw.chars().all(|c| c.is_ascii_digit())
                && raw.parse::<i64>().is_ok()
        }
        "market" => (1..=16).contains(&n) && raw.chars().all(|c| c.is_ascii_lowercase()),
        "cusip" => (1..=12).contains(&n) && raw.chars().all(|c| c.is_ascii_alphanumeric()),
        "symbol" => ref_symbol(raw),
        other => panic!("unknown parameter type {other}"),
    }
}

/// The name of the route the reference picks, or `None` (no route, or two
/// equally good ones).
fn reference(specs: &[Spec], method: &str, path: &str) -> Option<String> {
    if !ref_path_ok(path) {
        return None;
    }
    let rest = &path[1..];
    let (rest, trailing) = match rest.strip_suffix('/') {
        Some(r) if !r.is_empty() => (r, true),
        _ => (rest, false),
    };
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.len() > 16 {
        return None;
    }
    let mut best: Option<(usize, &str)> = None;
    let mut tied = false;
    for s in specs {
        if s.method != method || (trailing && !s.trailing_slash) {
            continue;
        }
        let tpl: Vec<&str> = s.path[1..].split('/').collect();
        if tpl.len() != segs.len() {
            continue;
        }
        let fits = tpl.iter().zip(&segs).all(|(t, seg)| {
            match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                Some(param) => ref_param(param.split_once(':').map_or("", |(_, ty)| ty), seg),
                None => t == seg,
            }
        });
        if !fits {
            continue;
        }
        let literals = tpl.iter().filter(|t| !t.starts_with('{')).count();
        match best {
            Some((b, _)) if literals == b => tied = true,
            Some((b, _)) if literals < b => {}
            _ => {
                best = Some((literals, &s.name));
                tied = false;
            }
        }
    }
    if tied {
        None
    } else {
        best.map(|(_, n)| n.to_owned())
    }
}

// --- generators ----------------------------------------------------------

/// A segment value: usually one a parameter accepts, sometimes a hostile
/// fragment.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Z0-9]{1,70}",
        "[0-9]{1,20}",
        "[a-z]{1,17}",
        "\\$?[A-Z]{1,5}",
        Just("%24SPX".to_owned()),
        Just("%2FES".to_owned()),
        Just("%2F..%2F..".to_owned()),
        Just("AUD%2FCAD".to_owned()),
        Just("BRK.B".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("%2E".to_owned()),
        Just("a;b".to_owned()),
        Just("%3b".to_owned()),
        Just("%5c..".to_owned()),
        Just("a\\b".to_owned()),
        Just("%252e".to_owned()),
        Just("%00".to_owned()),
        Just("%".to_owned()),
        Just("%zz".to_owned()),
        Just(String::new()),
        "[ -~]{1,8}",
    ]
}

/// A path shaped like a route of the table, its parameters (and sometimes
/// its literals) replaced by generated segments, maybe with a trailing slash.
fn path_like_a_route(templates: Vec<String>) -> impl Strategy<Value = String> {
    (
        prop::sample::select(templates),
        prop::collection::vec(segment(), 8),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(tpl, fills, swap_literal, slash)| {
            let mut parts: Vec<String> = Vec::new();
            for (i, t) in tpl[1..].split('/').enumerate() {
                if t.starts_with('{') || (swap_literal as usize % 9 == i && swap_literal > 200) {
                    parts.push(fills[i % fills.len()].clone());
                } else {
                    parts.push(t.to_owned());
                }
            }
            let mut p = format!("/{}", parts.join("/"));
            if slash {
                p.push('/');
            }
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn the_matcher_agrees_with_the_reference_and_never_matches_a_forbidden_form(
        (method, path) in (
            prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]),
            path_like_a_route(specs().iter().map(|s| s.path.clone()).collect()),
        )
    ) {
        let table = table();
        let m: http::Method = method.parse().unwrap();
        let got = table.match_request(&m, &path).ok().map(|r| table.get(&r).name.to_string());
        let want = reference(specs(), method, &path);
        prop_assert_eq!(&got, &want, "{} {}", method, path);
        if got.is_some() {
            for f in FORBIDDEN {
                prop_assert!(!path.contains(f), "matched {path:?} holding {f:?}");
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics_and_forbidden_forms_never_match(
        path in "/[ -~]{0,80}",
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]),
    ) {
        let table = table();
        let m: http::Method = method.parse().unwrap();
        let got = table.match_request(&m, &path).ok().map(|r| table.get(&r).name.to_string());
        prop_assert_eq!(&got, &reference(specs(), method, &path));
        if got.is_some() {
            for f in FORBIDDEN {
                prop_assert!(!path.contains(f));
            }
        }
    }
}

/// The generator must exercise matches, not only refusals: a property that
/// only ever compares "no route" with "no route" proves little.
#[test]
fn the_generated_paths_match_often_enough_to_mean_something() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = path_like_a_route(specs().iter().map(|s| s.path.clone()).collect());
    let (mut matched, mut refused_by_path, n) = (0, 0, 2000);
    let get = http::Method::GET;
    for _ in 0..n {
        let path = strategy.new_tree(&mut runner).unwrap().current();
        match table().match_request(&get, &path) {
            Ok(_) => matched += 1,
            Err(portcullis::pipeline::route::RouteError::BadPath(_)) => refused_by_path += 1,
            Err(_) => {}
        }
    }
    assert!(
        matched * 10 >= n,
        "only {matched} of {n} generated paths matched"
    );
    assert!(
        refused_by_path * 10 >= n,
        "only {refused_by_path} of {n} were hostile"
    );
}
