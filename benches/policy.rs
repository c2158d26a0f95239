//! Cedar authorization: one decision (building the request, entities and
//! context included) with the shipped policies and with 1,000 generated
//! policies added, percentiles of single decisions, and the load / reload
//! time of the 1,000-policy set. Order-body parsing is in `benches/order.rs`.
//! Run: `cargo bench --bench policy`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use portcullis::config::{Config, Mode};
use portcullis::pipeline::order::{OrderSummary, parse_order};
use portcullis::policy::{
    Active, DecisionInput, Directory, Engine, PolicyBundle, PolicySource, Resource,
};
use time::OffsetDateTime;

const CONTENT_TYPE: &[u8] = b"application/json";

/// The demo's margin account (assigned to the trader).
const MARGIN: &str = "36F5A5536A33431DDFA28A7F4846417F8DA62A13838B011DD90C66F026343724";

const EQUITY_LIMIT: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"150.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#;

const OTOCO: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"190.00","orderStrategyType":"TRIGGER","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}],"childOrderStrategies":[{"orderStrategyType":"OCO","childOrderStrategies":[{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"210.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]},{"session":"NORMAL","duration":"DAY","orderType":"STOP","stopPrice":"180.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}]}]}"#;

const SHIPPED: &[&str] = &[
    "roles.cedar",
    "guards/market-hours.cedar",
    "guards/max-notional.cedar",
    "guards/max-order-quantity.cedar",
    "guards/no-short-or-options.cedar",
    "guards/symbol-deny-list.cedar",
    "guards/trading-ip-range.cedar",
];

/// The demo's set: the roles and two guards (quantity, symbol deny-list).
const DEMO: &[&str] = &[
    "roles.cedar",
    "guards/max-order-quantity.cedar",
    "guards/symbol-deny-list.cedar",
];

const GENERATED_POLICIES: usize = 1000;
const GENERATED_FILES: usize = 4;
const GEN_CALLERS: usize = 200;
const GEN_ACCOUNTS: usize = 50;

fn gen_account_hash(i: usize) -> String {
    format!("{:064X}", 0xA11C_E000_u64 + i as u64)
}

/// The demo's four callers and two accounts, plus generated callers and
/// accounts that the generated policies name.
fn config(dir: &Path) -> Config {
    let token = dir.join("token");
    std::fs::write(&token, "bench-upstream-token").expect("token file");
    let mut yaml = format!(
        "listen:\n  - address: 127.0.0.1:0\nupstream:\n  base_url: https://127.0.0.1:9\n  access_token: file:{}\naccounts:\n",
        token.display()
    );
    yaml.push_str(&format!(
        "  - {{ name: margin, hash: {MARGIN}, environment: production }}\n"
    ));
    yaml.push_str(
        "  - { name: cash, hash: 9A8F03F25D655C57D02B7204C364EC911D8368E1F9757A85E02875EDF307223E, environment: production }\n",
    );
    for i in 0..GEN_ACCOUNTS {
        let env = ["development", "staging", "production"][i % 3];
        yaml.push_str(&format!(
            "  - {{ name: gen-acct-{i}, hash: {}, environment: {env} }}\n",
            gen_account_hash(i)
        ));
    }
    yaml.push_str("callers:\n");
    let mut caller = |id: &str, role: &str, accounts: &str| {
        yaml.push_str(&format!(
            "  - id: {id}\n    role: {role}\n    key_hashes: [\"sha256:{}\"]\n    accounts: [{accounts}]\n",
            portcullis::keys::hash_key_hex(&format!("bench-key-{id}"))
        ));
    };
    caller("demo-viewer", "Viewer", "margin, cash");
    caller("demo-trader", "Trader", "margin");
    caller("demo-admin", "Admin", "margin, cash");
    caller("demo-superadmin", "SuperAdmin", "margin, cash");
    for i in 0..GEN_CALLERS {
        let role = ["Viewer", "Trader", "Trader", "Admin"][i % 4];
        let accounts = format!(
            "gen-acct-{}, gen-acct-{}",
            i % GEN_ACCOUNTS,
            (i * 7 + 3) % GEN_ACCOUNTS
        );
        caller(&format!("gen-caller-{i}"), role, &accounts);
    }
    Config::from_yaml(&yaml, "bench.yaml", Mode::Normal).expect("config")
}

/// One generated policy; a realistic mix of symbol deny rules, per-caller
/// limits, per-caller permits, per-account notional caps and IP pins.
/// `salt` changes one literal so that a rewritten set hashes differently.
fn generated_policy(n: usize, salt: usize) -> String {
    let c = n % GEN_CALLERS;
    let acct = gen_account_hash(n % GEN_ACCOUNTS);
    match n % 10 {
        0..=5 => format!(
            "@id(\"gen-{n}\")\n@reason(\"gen_rule\")\nforbid (principal, action == Action::\"PlaceOrder\", resource)\n\
             when {{ context.order.symbols.contains(\"SYM{n}\") }};\n"
        ),
        6 => format!(
            "@id(\"gen-{n}\")\n@reason(\"gen_caller_quantity\")\n\
             forbid (principal == Caller::\"gen-caller-{c}\", action in [Action::\"PlaceOrder\", Action::\"ReplaceOrder\"], resource)\n\
             when {{ context.order.max_quantity > {} }};\n",
            10 + n % 90 + salt
        ),
        7 => format!(
            "@id(\"gen-{n}\")\n\
             permit (principal == Caller::\"gen-caller-{c}\", action in Action::\"Read\", resource is Account)\n\
             when {{ resource.environment != \"production\" || context.mfa }};\n"
        ),
        8 => format!(
            "@id(\"gen-{n}\")\n\
             permit (principal == Caller::\"gen-caller-{c}\", action in [Action::\"PlaceOrder\", Action::\"PreviewOrder\"], resource == Account::\"{acct}\")\n\
             when {{ context.order.max_quantity <= {} && context.order.asset_types == [\"EQUITY\"] && context.market_clock.weekday <= 5 }};\n",
            50 + n % 50
        ),
        _ if n % 20 == 9 => format!(
            "@id(\"gen-{n}\")\n@reason(\"gen_account_notional\")\n\
             forbid (principal, action in [Action::\"PlaceOrder\", Action::\"ReplaceOrder\"], resource == Account::\"{acct}\")\n\
             when {{ context.order has notional && context.order.notional.greaterThan(decimal(\"{}.00\")) }};\n",
            1000 + n * 10
        ),
        _ => format!(
            "@id(\"gen-{n}\")\n@reason(\"gen_caller_ip\")\n\
             forbid (principal == Caller::\"gen-caller-{c}\", action, resource)\n\
             unless {{ context.client_ip.isInRange(ip(\"10.{}.0.0/16\")) }};\n",
            n % 250
        ),
    }
}

fn write_generated(dir: &Path, salt: usize) {
    let per_file = GENERATED_POLICIES / GENERATED_FILES;
    for f in 0..GENERATED_FILES {
        let mut text = String::new();
        for n in f * per_file..(f + 1) * per_file {
            // Only the last file changes with the salt (rule gen-996 is in group 6).
            let s = if f == GENERATED_FILES - 1 { salt } else { 0 };
            text.push_str(&generated_policy(n, s));
            text.push('\n');
        }
        std::fs::write(dir.join(format!("generated/gen-{f}.cedar")), text)
            .expect("write generated");
    }
}

/// Copies the shipped schema and policies into `dir` and adds the
/// generated ones; returns the source naming every file.
fn large_source(dir: &Path) -> PolicySource {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::create_dir_all(dir.join("guards")).expect("mkdir");
    std::fs::create_dir_all(dir.join("generated")).expect("mkdir");
    std::fs::copy(
        repo.join("schema.cedarschema"),
        dir.join("schema.cedarschema"),
    )
    .expect("copy schema");
    for f in SHIPPED {
        std::fs::copy(repo.join(f), dir.join(f)).expect("copy policy");
    }
    write_generated(dir, 0);
    let mut files: Vec<PathBuf> = SHIPPED.iter().map(PathBuf::from).collect();
    files.extend((0..GENERATED_FILES).map(|f| PathBuf::from(format!("generated/gen-{f}.cedar"))));
    PolicySource::Dir {
        dir: dir.to_path_buf(),
        files,
    }
}

fn shipped_source() -> PolicySource {
    PolicySource::Embedded {
        files: SHIPPED.iter().map(PathBuf::from).collect(),
    }
}

struct Orders {
    limit: OrderSummary,
    limit_500: OrderSummary,
    otoco: OrderSummary,
}

fn orders() -> Orders {
    let parse = |s: &str| parse_order(Some(CONTENT_TYPE), s.as_bytes()).expect("order");
    Orders {
        limit: parse(EQUITY_LIMIT),
        limit_500: parse(&EQUITY_LIMIT.replace(r#""quantity":10"#, r#""quantity":500"#)),
        otoco: parse(OTOCO),
    }
}

/// A Tuesday, 11:00 in New York: inside market hours.
fn when() -> OffsetDateTime {
    time::macros::datetime!(2025-06-10 15:00 UTC)
}

fn input<'a>(
    caller: &'a str,
    action: &'a str,
    resource: Resource<'a>,
    order: Option<&'a OrderSummary>,
) -> DecisionInput<'a> {
    DecisionInput {
        caller,
        action,
        resource,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        time: when(),
        mfa: false,
        environment: "development",
        session_id: "01JXBENCH0000000000000000",
        order,
    }
}

/// The four cases, each with the expected outcome.
fn cases(o: &Orders) -> Vec<(&'static str, DecisionInput<'_>, bool)> {
    vec![
        (
            "a_view_market_data_viewer",
            input("demo-viewer", "ViewMarketData", Resource::Api, None),
            true,
        ),
        (
            "b_place_limit_trader",
            input(
                "demo-trader",
                "PlaceOrder",
                Resource::Account(MARGIN),
                Some(&o.limit),
            ),
            true,
        ),
        (
            "c_place_limit_qty500_denied",
            input(
                "demo-trader",
                "PlaceOrder",
                Resource::Account(MARGIN),
                Some(&o.limit_500),
            ),
            false,
        ),
        (
            "d_place_otoco_trader",
            input(
                "demo-trader",
                "PlaceOrder",
                Resource::Account(MARGIN),
                Some(&o.otoco),
            ),
            true,
        ),
    ]
}

struct Fixture {
    _dir: tempfile::TempDir,
    directory: Directory,
    demo: Active,
    shipped: Active,
    large: Active,
    large_source: PolicySource,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let directory = Directory::from_config(&cfg);
    let shipped = Active::new(
        PolicyBundle::load(&shipped_source()).expect("shipped policies"),
        &directory,
    )
    .expect("shipped active");
    let demo = Active::new(
        PolicyBundle::load(&PolicySource::Embedded {
            files: DEMO.iter().map(PathBuf::from).collect(),
        })
        .expect("demo policies"),
        &directory,
    )
    .expect("demo active");
    let large_dir = dir.path().join("policies");
    let large_source = large_source(&large_dir);
    let bundle = PolicyBundle::load(&large_source).unwrap_or_else(|issues| {
        for i in &issues {
            eprintln!("{i}");
        }
        panic!("generated policies do not validate")
    });
    let large = Active::new(bundle, &directory).expect("large active");
    Fixture {
        _dir: dir,
        directory,
        demo,
        shipped,
        large,
        large_source,
    }
}

fn check(active: &Active, cases: &[(&'static str, DecisionInput<'_>, bool)]) {
    for (name, i, expected) in cases {
        let d = active.decide(i);
        assert_eq!(d.allowed, *expected, "{name}: {d:?}");
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx].as_secs_f64() * 1e6
}

/// 20,000 timed single decisions of case (b), shipped and 1,000-policy sets.
fn percentiles(f: &Fixture, o: &Orders) {
    const N: usize = 20_000;
    let i = input(
        "demo-trader",
        "PlaceOrder",
        Resource::Account(MARGIN),
        Some(&o.limit),
    );
    for (name, active) in [
        ("demo", &f.demo),
        ("shipped", &f.shipped),
        ("1000_generated", &f.large),
    ] {
        for _ in 0..1_000 {
            black_box(active.decide(black_box(&i)));
        }
        let mut times = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            let d = active.decide(black_box(&i));
            times.push(t.elapsed());
            assert!(black_box(d).allowed);
        }
        times.sort_unstable();
        println!(
            "policy/percentiles/b_place_limit_trader/{name} ({} policies, n={N}): p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  max {:.1} µs",
            active.bundle.policy_count(),
            percentile(&times, 0.50),
            percentile(&times, 0.90),
            percentile(&times, 0.99),
            percentile(&times, 1.0),
        );
    }
}

fn decisions(c: &mut Criterion, f: &Fixture, o: &Orders) {
    let cases = cases(o);
    check(&f.shipped, &cases);
    check(&f.large, &cases);
    let mut g = c.benchmark_group("policy/decide");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    check(&f.demo, &cases);
    for (set, active) in [
        ("demo", &f.demo),
        ("shipped", &f.shipped),
        ("1000_generated", &f.large),
    ] {
        for (name, i, _) in &cases {
            g.bench_function(format!("{set}/{name}"), |b| {
                b.iter(|| black_box(active.decide(black_box(i))))
            });
        }
    }
    g.finish();

    // The part of a decision spent building the Cedar request (principal,
    // action, resource, context with the order record) before evaluation.
    for (name, i, _) in &cases {
        c.bench_function(&format!("policy/build_request/{name}"), |b| {
            b.iter(|| black_box(f.shipped.request(black_box(i))))
        });
    }

    // Through the engine (Arc clone under the read lock), as the proxy does.
    let engine = Engine::load(shipped_source(), f.directory.clone()).expect("engine");
    let (_, b_input, _) = &cases[1];
    c.bench_function("policy/engine_decide/shipped/b_place_limit_trader", |b| {
        b.iter(|| black_box(engine.decide(black_box(b_input))))
    });
}

fn reload(c: &mut Criterion, f: &Fixture) {
    let dir = f.large_source.dir().expect("dir").to_path_buf();
    let mut g = c.benchmark_group("policy/reload");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    g.bench_function("bundle_load/shipped", |b| {
        b.iter(|| black_box(PolicyBundle::load(&shipped_source()).expect("load")))
    });
    g.bench_function("bundle_load/1000_generated", |b| {
        b.iter(|| black_box(PolicyBundle::load(&f.large_source).expect("load")))
    });
    let engine = Engine::load(f.large_source.clone(), f.directory.clone()).expect("engine");
    let mut salt = 0usize;
    g.bench_function("engine_reload_changed/1000_generated", |b| {
        b.iter_batched(
            || {
                salt = (salt + 1) % 2;
                write_generated(&dir, salt);
            },
            |()| {
                let r = engine.reload().expect("reload");
                assert!(r.changed);
                black_box(r)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    // The reloaded set still allows a normal order.
    let o = orders();
    check(&engine.current(), &cases(&o));
}

fn main() {
    let f = fixture();
    let o = orders();
    // `cargo bench` passes --bench; `cargo test --benches` does not (quick run).
    if std::env::args().any(|a| a == "--bench") {
        percentiles(&f, &o);
    }
    let mut c = Criterion::default().configure_from_args();
    decisions(&mut c, &f, &o);
    reload(&mut c, &f);
    c.final_summary();
}
