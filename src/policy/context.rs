//! Turning one request into a Cedar principal, action, resource and
//! context (the shape is `policies/schema.cedarschema`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use time::OffsetDateTime;

use super::clock;
use super::index::OrderLong;
use crate::pipeline::order::OrderSummary;

/// What a request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource<'a> {
    /// A per-account endpoint: the Schwab account hash from the path.
    Account(&'a str),
    /// Market data and app-wide reads.
    Api,
    /// Administration of the proxy.
    Proxy,
}

/// Everything a decision depends on.
#[derive(Debug, Clone)]
pub struct DecisionInput<'a> {
    pub caller: &'a str,
    pub action: &'a str,
    pub resource: Resource<'a>,
    pub client_ip: IpAddr,
    pub time: OffsetDateTime,
    pub mfa: bool,
    pub environment: &'a str,
    pub session_id: &'a str,
    pub order: Option<&'a OrderSummary>,
}

pub const API_ID: &str = "schwab";
pub const PROXY_ID: &str = "portcullis";

/// Which fields of the context and of `context.order` the policy set can
/// observe. Building the context is most of a decision's cost (~1 µs per
/// order field; the time and address are extension values Cedar re-parses),
/// and a field no policy names cannot change any decision: when every use
/// of `context` and of `context.order` in every policy is an attribute
/// access or a `has` test with a literal name, only the fields so named are
/// built. Any other use (`context.order == …`, `context` passed whole, …)
/// builds every field.
///
/// Kept per policy group of the index too: a request builds only what the
/// groups it evaluates can observe (the union of their fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextFields {
    All,
    /// Bit i set: `CONTEXT_FIELDS[i]` / `ORDER_FIELDS[i]` is named. A name
    /// that is neither (a policy reading a field the context never has) is
    /// not recorded: there is nothing to build for it.
    Only {
        context: u8,
        order: u32,
    },
}

/// The context's own fields, as `build()` builds them.
pub const CONTEXT_FIELDS: [&str; 7] = [
    "client_ip",
    "time",
    "market_clock",
    "mfa",
    "environment",
    "session_id",
    "order",
];

/// The fields of `context.order`, as `order_record()` builds them.
pub const ORDER_FIELDS: [&str; 21] = [
    "strategy",
    "strategies",
    "order_types",
    "sessions",
    "durations",
    "max_order_quantity",
    "legs",
    "leg_count",
    "order_count",
    "max_quantity",
    "total_quantity",
    "symbols",
    "instructions",
    "asset_types",
    "order_type",
    "duration",
    "session",
    "complex_strategy",
    "price",
    "stop_price",
    "notional",
];

/// The bit of `name` in `names` (a compile-time error for a name that is
/// not there, in the `const` uses below).
const fn bit(names: &[&str], name: &str) -> u32 {
    let mut i = 0;
    while i < names.len() {
        let (a, b) = (names[i].as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut j = 0;
            while j < a.len() && a[j] == b[j] {
                j += 1;
            }
            if j == a.len() {
                return 1 << i;
            }
        }
        i += 1;
    }
    panic!("not a context field")
}

fn bit_of(names: &[&str], name: &str) -> u32 {
    names.iter().position(|n| *n == name).map_or(0, |i| 1 << i)
}

impl ContextFields {
    /// No field.
    pub const NONE: ContextFields = ContextFields::Only {
        context: 0,
        order: 0,
    };

    /// The fields either observes.
    pub fn union(self, other: ContextFields) -> ContextFields {
        match (self, other) {
            (
                ContextFields::Only { context, order },
                ContextFields::Only {
                    context: c,
                    order: o,
                },
            ) => ContextFields::Only {
                context: context | c,
                order: order | o,
            },
            _ => ContextFields::All,
        }
    }

    /// Exactly the named fields (names outside the lists are left out).
    #[cfg(test)]
    pub fn only(context: &[&str], order: &[&str]) -> ContextFields {
        ContextFields::Only {
            // Seven names: the bits fit in a u8.
            context: context
                .iter()
                .fold(0, |m, n| m | bit_of(&CONTEXT_FIELDS, n) as u8),
            order: order.iter().fold(0, |m, n| m | bit_of(&ORDER_FIELDS, n)),
        }
    }

    /// Whether a policy can read `context.session_id` (the one context
    /// field the decision cache's key leaves out).
    pub fn reads_session_id(self) -> bool {
        self.wants(const { bit(&CONTEXT_FIELDS, "session_id") })
    }

    fn wants(self, bit: u32) -> bool {
        match self {
            ContextFields::All => true,
            ContextFields::Only { context, .. } => u32::from(context) & bit != 0,
        }
    }

    fn wants_order(self, bit: u32) -> bool {
        match self {
            ContextFields::All => true,
            ContextFields::Only { order, .. } => order & bit != 0,
        }
    }

    /// From the policies' JSON (EST) form.
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a serde_json::Value>) -> ContextFields {
        let mut named = Named::default();
        for p in policies {
            let Some(conditions) = p.get("conditions") else {
                continue;
            };
            if visit(conditions, false, &mut named).is_err() {
                return ContextFields::All;
            }
        }
        ContextFields::Only {
            context: named.context,
            order: named.order,
        }
    }
}

/// The fields named so far, as bits of `CONTEXT_FIELDS` / `ORDER_FIELDS`
/// (a name outside the lists sets none).
#[derive(Default)]
struct Named {
    context: u8,
    order: u32,
}

fn is_context(e: &serde_json::Value) -> bool {
    e.get("Var").and_then(|v| v.as_str()) == Some("context")
}

/// Whether `e` is `context.order`.
pub(super) fn is_context_order(e: &serde_json::Value) -> bool {
    e.get(".").is_some_and(|d| {
        d.get("attr").and_then(|a| a.as_str()) == Some("order")
            && d.get("left")
                .and_then(|l| l.get("Var"))
                .and_then(|v| v.as_str())
                == Some("context")
    })
}

/// F in `context.order.F` (dots or brackets: the same EST).
pub(super) fn order_attr(e: &serde_json::Value) -> Option<&str> {
    let dot = e.get(".")?;
    if !is_context_order(dot.get("left")?) {
        return None;
    }
    dot.get("attr")?.as_str()
}

/// Walks an EST expression; `accessed` is true when `e` is the left side of
/// an attribute access or `has`. Err(()) on a use of `context` or
/// `context.order` as a whole value.
fn visit(e: &serde_json::Value, accessed: bool, named: &mut Named) -> Result<(), ()> {
    match e {
        serde_json::Value::Array(items) => items.iter().try_for_each(|i| visit(i, false, named)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match k.as_str() {
                    // Literals hold no expressions.
                    "Value" => {}
                    // A record literal's keys are names chosen by the
                    // policy author, not node kinds: only its values are
                    // expressions.
                    "Record" => {
                        let fields = v.as_object().ok_or(())?;
                        fields.values().try_for_each(|f| visit(f, false, named))?;
                    }
                    "Var" => {
                        if v.as_str() == Some("context") && !accessed {
                            return Err(());
                        }
                    }
                    "." | "has" => {
                        let left = v.get("left").ok_or(())?;
                        let attr = v.get("attr").and_then(|a| a.as_str()).ok_or(())?;
                        if is_context_order(left) {
                            named.order |= bit_of(&ORDER_FIELDS, attr);
                        } else if is_context(left) {
                            // Seven names: the bits fit in a u8.
                            named.context |= bit_of(&CONTEXT_FIELDS, attr) as u8;
                        }
                        if is_context_order(e) && !accessed {
                            return Err(());
                        }
                        visit(left, true, named)?;
                    }
                    _ => visit(v, false, named)?,
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Entity type names, parsed once per policy set.
pub struct Types {
    caller: EntityTypeName,
    action: EntityTypeName,
    account: EntityTypeName,
    api: EntityTypeName,
    proxy: EntityTypeName,
}

impl Types {
    pub fn new() -> Result<Types, String> {
        let t = |n: &str| EntityTypeName::from_str(n).map_err(|e| e.to_string());
        Ok(Types {
            caller: t("Caller")?,
            action: t("Action")?,
            account: t("Account")?,
            api: t("Api")?,
            proxy: t("Proxy")?,
        })
    }

    /// The principal, action and resource of `input`.
    pub fn uids(&self, input: &DecisionInput<'_>) -> (EntityUid, EntityUid, EntityUid) {
        let uid = |t: &EntityTypeName, id: &str| {
            EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
        };
        let principal = uid(&self.caller, input.caller);
        let action = uid(&self.action, input.action);
        let resource = match input.resource {
            Resource::Account(hash) => uid(&self.account, hash),
            Resource::Api => uid(&self.api, API_ID),
            Resource::Proxy => uid(&self.proxy, PROXY_ID),
        };
        (principal, action, resource)
    }
}

/// Cedar extension values (ip, datetime, decimal) by their argument, per
/// thread. Building one through cedar-policy's `new_ip` / `new_decimal` /
/// `new_datetime` costs ~4–7 µs (the constructor re-parses the function
/// name every time), while cloning a built one is cheap; client addresses,
/// prices and the time to the second repeat a lot. Bounded: cleared when
/// full.
/// An extension value by what determines it (no text is formatted on a
/// cache hit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ext {
    Ip(std::net::IpAddr),
    /// Unix seconds (datetimes are built to the second).
    Datetime(i64),
    /// Ten-thousandths.
    Decimal(i64),
}

const EXT_CACHE_ENTRIES: usize = 4096;

thread_local! {
    static EXT_CACHE: std::cell::RefCell<HashMap<Ext, RestrictedExpression>> =
        std::cell::RefCell::new(HashMap::new());
}

fn ext(key: Ext) -> RestrictedExpression {
    EXT_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(e) = cache.get(&key) {
            return e.clone();
        }
        let e = match key {
            Ext::Ip(ip) => RestrictedExpression::new_ip(ip.to_string()),
            Ext::Datetime(secs) => RestrictedExpression::new_datetime(clock::cedar_datetime(
                time::OffsetDateTime::from_unix_timestamp(secs)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            )),
            Ext::Decimal(units) => RestrictedExpression::new_decimal(
                crate::pipeline::order::Decimal4(units).to_string(),
            ),
        };
        if cache.len() >= EXT_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, e.clone());
        e
    })
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn string_set(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(items.iter().map(|s| string(s)))
}

fn long(n: i64) -> RestrictedExpression {
    RestrictedExpression::new_long(n)
}

fn record(pairs: Vec<(&str, RestrictedExpression)>) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)))
        .map_err(|e| e.to_string())
}

/// The context of `input` with the fields in `fields`.
pub fn build(input: &DecisionInput<'_>, fields: ContextFields) -> Result<Context, String> {
    let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(7);
    // Each field by its name's bit, checked at compile time against
    // CONTEXT_FIELDS (a name missing there would not build).
    macro_rules! field {
        ($name:literal, $value:expr) => {
            if fields.wants(const { bit(&CONTEXT_FIELDS, $name) }) {
                pairs.push(($name.to_owned(), $value));
            }
        };
    }
    // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d; policies
    // are written with IPv4 ranges.
    field!("client_ip", ext(Ext::Ip(input.client_ip.to_canonical())));
    field!("time", ext(Ext::Datetime(input.time.unix_timestamp())));
    field!("market_clock", {
        let (weekday, minute) = clock::market_clock(input.time);
        record(vec![("weekday", long(weekday)), ("minute", long(minute))])?
    });
    field!("mfa", RestrictedExpression::new_bool(input.mfa));
    field!("environment", string(input.environment));
    field!("session_id", string(input.session_id));
    if let Some(o) = input.order {
        field!("order", order_record(o, fields)?);
    }
    Context::from_pairs(pairs).map_err(|e| e.to_string())
}

/// The `context.order` record. The policy index (`index.rs`) checks some
/// tests natively on the same `OrderSummary` — `OrderSet::of`,
/// `OrderLong::of`, `OrderOptional::present` — and must see exactly what
/// this writes: change them together.
fn order_record(o: &OrderSummary, fields: ContextFields) -> Result<RestrictedExpression, String> {
    let legs = || -> Result<RestrictedExpression, String> {
        let mut legs = Vec::with_capacity(o.legs.len());
        for l in &o.legs {
            legs.push(record(vec![
                ("symbol", string(&l.symbol)),
                ("instruction", string(&l.instruction)),
                ("quantity", long(l.quantity)),
                ("asset_type", string(&l.asset_type)),
            ])?);
        }
        Ok(RestrictedExpression::new_set(legs))
    };
    let mut pairs: Vec<(&str, RestrictedExpression)> = Vec::with_capacity(21);
    // Each field is built only if the policy set can observe it.
    macro_rules! field {
        ($name:literal, $value:expr) => {
            if fields.wants_order(const { bit(&ORDER_FIELDS, $name) }) {
                pairs.push(($name, $value));
            }
        };
    }
    field!("strategy", string(&o.strategy));
    field!("strategies", string_set(&o.strategies));
    field!("order_types", string_set(&o.order_types));
    field!("sessions", string_set(&o.sessions));
    field!("durations", string_set(&o.durations));
    // The numbers through the index's accessor, so its native comparisons
    // see exactly these values.
    let number = |f: OrderLong| long(f.of(o));
    field!("max_order_quantity", number(OrderLong::MaxOrderQuantity));
    field!("legs", legs()?);
    field!("leg_count", number(OrderLong::LegCount));
    field!("order_count", number(OrderLong::OrderCount));
    field!("max_quantity", number(OrderLong::MaxQuantity));
    field!("total_quantity", number(OrderLong::TotalQuantity));
    field!("symbols", string_set(&o.symbols));
    field!("instructions", string_set(&o.instructions));
    field!("asset_types", string_set(&o.asset_types));
    macro_rules! optional {
        ($name:literal, $value:expr, $build:expr) => {
            if let Some(v) = $value
                && fields.wants_order(const { bit(&ORDER_FIELDS, $name) })
            {
                pairs.push(($name, $build(v)));
            }
        };
    }
    let decimal = |p: crate::pipeline::order::Decimal4| ext(Ext::Decimal(p.0));
    optional!("order_type", o.order_type.as_deref(), string);
    optional!("duration", o.duration.as_deref(), string);
    optional!("session", o.session.as_deref(), string);
    optional!("complex_strategy", o.complex_strategy.as_deref(), string);
    optional!("price", o.price, decimal);
    optional!("stop_price", o.stop_price, decimal);
    optional!("notional", o.notional, decimal);
    record(pairs)
}
