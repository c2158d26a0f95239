//! Which policies of an action's slice a request needs evaluated.
//!
//! Cedar evaluates every policy it is given (~1 µs each and more), so a set
//! of a thousand rules costs a millisecond per decision. Most large sets are
//! many rules that each name one caller, one account or one symbol. This
//! index files each policy under the one key that must hold for it to be
//! satisfied, and a request evaluates only the groups its own keys select:
//!
//! - `principal == Caller::"x"` in the scope: only a request by `x`;
//! - `resource == Account::"h"` in the scope: only a request on `h`;
//! - a first condition `when { context.order.symbols.contains("S") && … }`
//!   (or `containsAny(["S", …])` with string literals), on any of the
//!   order's string sets (`symbols`, `instructions`, `asset_types`,
//!   `order_types`, `sessions`, `durations`, `strategies`), or an `||` of
//!   such tests: only a request whose order has one of those values.
//!
//! Skipping is exact, errors included: Cedar evaluates a policy as
//! `scope && first condition && …` from the left, so when a key does not
//! hold, the policy is false and nothing after the key is evaluated (no
//! error could have come from it). A scope `==` cannot error, and
//! `context.order.<set>.contains(…)` cannot either when the request has an
//! order (the proxy always builds those sets of strings; an `||` of such
//! tests is false exactly when each is); without an
//! order the symbol-keyed policies are all evaluated (those whose scope
//! matches then error, and an error is a deny, as without the index).
//!
//! The groups are evaluated one by one and combined as Cedar combines
//! policies: any satisfied `forbid` denies, else any satisfied `permit`
//! allows, else deny; errors from every group are kept.

use std::collections::{HashMap, HashSet};

use cedar_policy::{EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint};

use crate::pipeline::order::OrderSummary;

/// One action's policies, grouped by what must hold for each to apply.
pub struct ActionIndex {
    /// Every policy of the slice (what the index replaces; for tests and
    /// for listing).
    pub all: PolicySet,
    /// Policies with no key: evaluated for every request.
    general: PolicySet,
    by_principal: HashMap<EntityUid, PolicySet>,
    by_resource: HashMap<EntityUid, PolicySet>,
    /// By (order field, value).
    by_order_value: HashMap<(OrderSet, String), PolicySet>,
    /// Every order-keyed policy, for a request without an order.
    order_keyed: PolicySet,
}

/// The key a policy is filed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    None,
    Principal(EntityUid),
    Resource(EntityUid),
    /// Any of these (order field, value) pairs.
    OrderValues(Vec<(OrderSet, String)>),
}

/// The order's sets of strings a key can test: always present in the
/// order record (`policies/schema.cedarschema`, `context.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderSet {
    Symbols,
    Instructions,
    AssetTypes,
    OrderTypes,
    Sessions,
    Durations,
    Strategies,
}

impl OrderSet {
    const ALL: [OrderSet; 7] = [
        OrderSet::Symbols,
        OrderSet::Instructions,
        OrderSet::AssetTypes,
        OrderSet::OrderTypes,
        OrderSet::Sessions,
        OrderSet::Durations,
        OrderSet::Strategies,
    ];

    fn name(self) -> &'static str {
        match self {
            OrderSet::Symbols => "symbols",
            OrderSet::Instructions => "instructions",
            OrderSet::AssetTypes => "asset_types",
            OrderSet::OrderTypes => "order_types",
            OrderSet::Sessions => "sessions",
            OrderSet::Durations => "durations",
            OrderSet::Strategies => "strategies",
        }
    }

    fn of(self, o: &OrderSummary) -> &[String] {
        match self {
            OrderSet::Symbols => &o.symbols,
            OrderSet::Instructions => &o.instructions,
            OrderSet::AssetTypes => &o.asset_types,
            OrderSet::OrderTypes => &o.order_types,
            OrderSet::Sessions => &o.sessions,
            OrderSet::Durations => &o.durations,
            OrderSet::Strategies => &o.strategies,
        }
    }
}

/// The key of `p`, given its JSON form (computed once per policy per load).
pub fn key_of(p: &Policy, json: &serde_json::Value) -> Key {
    if let PrincipalConstraint::Eq(uid) = p.principal_constraint() {
        return Key::Principal(uid);
    }
    if let ResourceConstraint::Eq(uid) = p.resource_constraint() {
        return Key::Resource(uid);
    }
    order_key(json).map_or(Key::None, Key::OrderValues)
}

/// The (order field, value) pairs of a policy whose first condition is
/// `when` and whose leftmost conjunct is a test of one of the order's string
/// sets — `context.order.F.contains("v")` or `….containsAny(["v", …])`, every
/// element a string literal — or an `||` of such tests.
fn order_key(policy: &serde_json::Value) -> Option<Vec<(OrderSet, String)>> {
    let first = policy.get("conditions")?.as_array()?.first()?;
    if first.get("kind")?.as_str()? != "when" {
        return None;
    }
    let mut expr = first.get("body")?;
    while let Some(and) = expr.get("&&") {
        expr = and.get("left")?;
    }
    let mut out = Vec::new();
    collect_tests(expr, &mut out)?;
    (!out.is_empty()).then_some(out)
}

/// Adds the pairs of `e` (a test or an `||` of tests); `None` if any part
/// is not such a test.
fn collect_tests(e: &serde_json::Value, out: &mut Vec<(OrderSet, String)>) -> Option<()> {
    if let Some(or) = e.get("||") {
        collect_tests(or.get("left")?, out)?;
        return collect_tests(or.get("right")?, out);
    }
    let single = |e: &serde_json::Value| e.get("Value")?.as_str().map(str::to_owned);
    let (call, values) = if let Some(c) = e.get("contains") {
        (c, vec![single(c.get("right")?)?])
    } else if let Some(c) = e.get("containsAny") {
        let set = c.get("right")?.get("Set")?.as_array()?;
        (c, set.iter().map(single).collect::<Option<Vec<_>>>()?)
    } else {
        return None;
    };
    let field = order_set(call.get("left")?)?;
    if values.is_empty() {
        // `containsAny([])` is false for every order: keyed under nothing,
        // the policy is never evaluated with an order — exact, yet keep it
        // general for clarity.
        return None;
    }
    out.extend(values.into_iter().map(|v| (field, v)));
    Some(())
}

/// `context.order.F` for one of the order's string sets, written with dots
/// or brackets (the same EST).
fn order_set(e: &serde_json::Value) -> Option<OrderSet> {
    let attr = |e: &serde_json::Value| -> Option<(String, serde_json::Value)> {
        let dot = e.get(".")?;
        Some((
            dot.get("attr")?.as_str()?.to_owned(),
            dot.get("left")?.clone(),
        ))
    };
    let (field, order) = attr(e)?;
    let (name, ctx) = attr(&order)?;
    if name != "order" || ctx.get("Var").and_then(|v| v.as_str()) != Some("context") {
        return None;
    }
    OrderSet::ALL.into_iter().find(|s| s.name() == field)
}

fn add(set: &mut PolicySet, p: &Policy) -> bool {
    set.add(p.clone()).is_ok()
}

impl ActionIndex {
    /// Indexes `policies` with their keys (from [`key_of`]); `None` if a
    /// policy could not be filed (the caller then evaluates the whole slice).
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a (Policy, Key)>) -> Option<ActionIndex> {
        let mut ix = ActionIndex {
            all: PolicySet::new(),
            general: PolicySet::new(),
            by_principal: HashMap::new(),
            by_resource: HashMap::new(),
            by_order_value: HashMap::new(),
            order_keyed: PolicySet::new(),
        };
        let mut ok = true;
        for (p, key) in policies {
            ok &= add(&mut ix.all, p);
            ok &= match key.clone() {
                Key::None => add(&mut ix.general, p),
                Key::Principal(uid) => add(ix.by_principal.entry(uid).or_default(), p),
                Key::Resource(uid) => add(ix.by_resource.entry(uid).or_default(), p),
                Key::OrderValues(pairs) => {
                    let mut ok = add(&mut ix.order_keyed, p);
                    let distinct: HashSet<(OrderSet, String)> = pairs.into_iter().collect();
                    for pair in distinct {
                        ok &= add(ix.by_order_value.entry(pair).or_default(), p);
                    }
                    ok
                }
            };
        }
        ok.then_some(ix)
    }

    /// The groups a request must evaluate: never one whose key the request
    /// can satisfy left out. A policy keyed by two values the order has is
    /// in two groups and evaluated twice (same result; ids are deduplicated
    /// when the groups are combined).
    pub fn groups<'s>(
        &'s self,
        principal: &EntityUid,
        resource: &EntityUid,
        order: Option<&OrderSummary>,
    ) -> Vec<&'s PolicySet> {
        let mut out = Vec::with_capacity(4);
        out.push(&self.general);
        out.extend(self.by_principal.get(principal));
        out.extend(self.by_resource.get(resource));
        match order {
            None => out.push(&self.order_keyed),
            Some(_) if self.by_order_value.is_empty() => {}
            Some(o) => {
                let mut key = (OrderSet::Symbols, String::new());
                for field in OrderSet::ALL {
                    let values = field.of(o);
                    for (i, v) in values.iter().enumerate() {
                        if values[..i].contains(v) {
                            continue;
                        }
                        key.0 = field;
                        v.clone_into(&mut key.1);
                        out.extend(self.by_order_value.get(&key));
                    }
                }
            }
        }
        out.retain(|g| !g.is_empty());
        out
    }
}
