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
//!   (or `containsAny(["S", …])` with string literals): only a request whose
//!   order includes one of those symbols.
//!
//! Skipping is exact, errors included: Cedar evaluates a policy as
//! `scope && first condition && …` from the left, so when a key does not
//! hold, the policy is false and nothing after the key is evaluated (no
//! error could have come from it). A scope `==` cannot error, and
//! `context.order.symbols.contains(…)` cannot either when the request has an
//! order (the proxy always builds `symbols` as a set of strings); without an
//! order the symbol-keyed policies are all evaluated (those whose scope
//! matches then error, and an error is a deny, as without the index).
//!
//! The groups are evaluated one by one and combined as Cedar combines
//! policies: any satisfied `forbid` denies, else any satisfied `permit`
//! allows, else deny; errors from every group are kept.

use std::collections::{HashMap, HashSet};

use cedar_policy::{EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint};

/// One action's policies, grouped by what must hold for each to apply.
pub struct ActionIndex {
    /// Every policy of the slice (what the index replaces; for tests and
    /// for listing).
    pub all: PolicySet,
    /// Policies with no key: evaluated for every request.
    general: PolicySet,
    by_principal: HashMap<EntityUid, PolicySet>,
    by_resource: HashMap<EntityUid, PolicySet>,
    by_symbol: HashMap<String, PolicySet>,
    /// Every symbol-keyed policy, for a request without an order.
    symbol_keyed: PolicySet,
}

/// The key a policy is filed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    None,
    Principal(EntityUid),
    Resource(EntityUid),
    Symbols(Vec<String>),
}

/// The key of `p`, given its JSON form (computed once per policy per load).
pub fn key_of(p: &Policy, json: &serde_json::Value) -> Key {
    if let PrincipalConstraint::Eq(uid) = p.principal_constraint() {
        return Key::Principal(uid);
    }
    if let ResourceConstraint::Eq(uid) = p.resource_constraint() {
        return Key::Resource(uid);
    }
    symbol_key(json).map_or(Key::None, Key::Symbols)
}

/// The literal symbols of a policy whose first condition is `when` and whose
/// leftmost conjunct is `context.order.symbols.contains("S")` or
/// `….containsAny(["S", …])` (every element a string literal).
fn symbol_key(policy: &serde_json::Value) -> Option<Vec<String>> {
    let first = policy.get("conditions")?.as_array()?.first()?;
    if first.get("kind")?.as_str()? != "when" {
        return None;
    }
    let mut expr = first.get("body")?;
    while let Some(and) = expr.get("&&") {
        expr = and.get("left")?;
    }
    let single = |e: &serde_json::Value| e.get("Value")?.as_str().map(str::to_owned);
    let (call, args) = if let Some(c) = expr.get("contains") {
        (c, vec![single(c.get("right")?)?])
    } else if let Some(c) = expr.get("containsAny") {
        let set = c.get("right")?.get("Set")?.as_array()?;
        let args = set.iter().map(single).collect::<Option<Vec<_>>>()?;
        (c, args)
    } else {
        return None;
    };
    if !is_order_symbols(call.get("left")?) || args.is_empty() {
        return None;
    }
    Some(args)
}

/// `context.order.symbols`, written with dots or brackets (the same EST).
fn is_order_symbols(e: &serde_json::Value) -> bool {
    let attr = |e: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        let dot = e.get(".")?;
        (dot.get("attr")?.as_str()? == name).then(|| dot.get("left").cloned())?
    };
    attr(e, "symbols")
        .and_then(|order| attr(&order, "order"))
        .is_some_and(|ctx| ctx.get("Var").and_then(|v| v.as_str()) == Some("context"))
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
            by_symbol: HashMap::new(),
            symbol_keyed: PolicySet::new(),
        };
        let mut ok = true;
        for (p, key) in policies {
            ok &= add(&mut ix.all, p);
            ok &= match key.clone() {
                Key::None => add(&mut ix.general, p),
                Key::Principal(uid) => add(ix.by_principal.entry(uid).or_default(), p),
                Key::Resource(uid) => add(ix.by_resource.entry(uid).or_default(), p),
                Key::Symbols(symbols) => {
                    let mut ok = add(&mut ix.symbol_keyed, p);
                    let distinct: HashSet<String> = symbols.into_iter().collect();
                    for s in distinct {
                        ok &= add(ix.by_symbol.entry(s).or_default(), p);
                    }
                    ok
                }
            };
        }
        ok.then_some(ix)
    }

    /// The groups a request must evaluate: never one whose key the request
    /// can satisfy left out. A policy listing two of the order's symbols is
    /// in two groups and evaluated twice (same result; ids are deduplicated
    /// when the groups are combined).
    pub fn groups<'s>(
        &'s self,
        principal: &EntityUid,
        resource: &EntityUid,
        order_symbols: Option<&[String]>,
    ) -> Vec<&'s PolicySet> {
        let mut out = Vec::with_capacity(4);
        out.push(&self.general);
        out.extend(self.by_principal.get(principal));
        out.extend(self.by_resource.get(resource));
        match order_symbols {
            None => out.push(&self.symbol_keyed),
            Some(symbols) => {
                for (i, s) in symbols.iter().enumerate() {
                    if symbols[..i].contains(s) {
                        continue;
                    }
                    out.extend(self.by_symbol.get(s.as_str()));
                }
            }
        }
        out.retain(|g| !g.is_empty());
        out
    }
}
