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

use super::context::{ContextFields, is_context_order, order_attr};
use crate::pipeline::order::OrderSummary;

/// One action's policies, grouped by what must hold for each to apply.
pub struct ActionIndex {
    /// Every policy of the slice (what the index replaces; for tests and
    /// for listing).
    pub all: PolicySet,
    /// Policies with no key: evaluated for every request.
    general: Group,
    by_principal: HashMap<EntityUid, Group>,
    by_resource: HashMap<EntityUid, Group>,
    /// By (order field, value).
    by_order_value: HashMap<(OrderSet, String), Group>,
    /// Policies keyed by tests that are checked one by one (comparisons of
    /// the order's numbers, presence of its optional fields), each policy
    /// in its own set.
    tested: Vec<(Vec<Test>, Group)>,
    /// Every order-keyed policy, for a request without an order.
    order_keyed: Group,
}

/// Policies evaluated together, and the context fields they can observe:
/// a request builds only the fields of the groups it evaluates.
pub struct Group {
    pub set: PolicySet,
    pub fields: ContextFields,
}

impl Default for Group {
    fn default() -> Group {
        Group {
            set: PolicySet::new(),
            fields: ContextFields::NONE,
        }
    }
}

impl Group {
    fn add(&mut self, p: &Policy, fields: ContextFields) -> bool {
        self.fields = self.fields.union(fields);
        self.set.add(p.clone()).is_ok()
    }
}

/// A policy with its key and the context fields it can observe (from its
/// JSON form; `All` when it has none).
pub type Indexed = (Policy, Key, ContextFields);

/// The key a policy is filed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    None,
    Principal(EntityUid),
    Resource(EntityUid),
    /// Any of these tests of the order holds.
    Order(Vec<Test>),
}

/// One test of the order that Cedar could not get wrong or error on, given
/// an order: checked natively on the parsed order, exactly as the context
/// builder (`context.rs`, `order_record`) presents it — change them
/// together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Test {
    /// `context.order.F.contains(v)` for one of the string sets.
    Value(OrderSet, String),
    /// `context.order.F <op> n` for one of the order's numbers.
    Long(OrderLong, Cmp, i64),
    /// `context.order has F` (or its negation) for an optional field.
    Has(OrderOptional, bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    fn parse(op: &str) -> Option<Cmp> {
        Some(match op {
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            "==" => Cmp::Eq,
            "!=" => Cmp::Ne,
            _ => return None,
        })
    }

    /// `n <op> a` written as `a <flipped> n`.
    fn flip(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            Cmp::Eq => Cmp::Eq,
            Cmp::Ne => Cmp::Ne,
        }
    }

    fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
        }
    }
}

/// The order's numbers (always present in the record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderLong {
    MaxQuantity,
    MaxOrderQuantity,
    TotalQuantity,
    LegCount,
    OrderCount,
}

impl OrderLong {
    fn named(name: &str) -> Option<OrderLong> {
        Some(match name {
            "max_quantity" => OrderLong::MaxQuantity,
            "max_order_quantity" => OrderLong::MaxOrderQuantity,
            "total_quantity" => OrderLong::TotalQuantity,
            "leg_count" => OrderLong::LegCount,
            "order_count" => OrderLong::OrderCount,
            _ => return None,
        })
    }

    /// The value in `context.order` (the context builder writes it with
    /// this too).
    pub fn of(self, o: &OrderSummary) -> i64 {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        match self {
            OrderLong::MaxQuantity => o.max_quantity,
            OrderLong::MaxOrderQuantity => o.max_order_quantity,
            OrderLong::TotalQuantity => o.total_quantity,
            OrderLong::LegCount => count(o.legs.len()),
            OrderLong::OrderCount => count(o.order_count),
        }
    }
}

/// The order's optional fields (present only when the order has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderOptional {
    OrderType,
    Duration,
    Session,
    ComplexStrategy,
    Price,
    StopPrice,
    Notional,
}

impl OrderOptional {
    fn named(name: &str) -> Option<OrderOptional> {
        Some(match name {
            "order_type" => OrderOptional::OrderType,
            "duration" => OrderOptional::Duration,
            "session" => OrderOptional::Session,
            "complex_strategy" => OrderOptional::ComplexStrategy,
            "price" => OrderOptional::Price,
            "stop_price" => OrderOptional::StopPrice,
            "notional" => OrderOptional::Notional,
            _ => return None,
        })
    }

    /// Whether the context builder writes the field for `o`.
    fn present(self, o: &OrderSummary) -> bool {
        match self {
            OrderOptional::OrderType => o.order_type.is_some(),
            OrderOptional::Duration => o.duration.is_some(),
            OrderOptional::Session => o.session.is_some(),
            OrderOptional::ComplexStrategy => o.complex_strategy.is_some(),
            OrderOptional::Price => o.price.is_some(),
            OrderOptional::StopPrice => o.stop_price.is_some(),
            OrderOptional::Notional => o.notional.is_some(),
        }
    }
}

impl Test {
    fn holds(&self, o: &OrderSummary) -> bool {
        match self {
            Test::Value(field, v) => field.of(o).contains(v),
            Test::Long(field, op, n) => op.holds(field.of(o), *n),
            Test::Has(field, present) => field.present(o) == *present,
        }
    }
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
    order_key(json).map_or(Key::None, Key::Order)
}

/// The (order field, value) pairs of a policy whose first condition is
/// `when` and whose leftmost conjunct is a test of one of the order's string
/// sets — `context.order.F.contains("v")` or `….containsAny(["v", …])`, every
/// element a string literal — or an `||` of such tests.
fn order_key(policy: &serde_json::Value) -> Option<Vec<Test>> {
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

/// Adds the tests of `e` (a test or an `||` of tests); `None` if any part
/// is not such a test.
fn collect_tests(e: &serde_json::Value, out: &mut Vec<Test>) -> Option<()> {
    if let Some(or) = e.get("||") {
        collect_tests(or.get("left")?, out)?;
        return collect_tests(or.get("right")?, out);
    }
    if let Some(test) = long_test(e).or_else(|| has_test(e)) {
        out.push(test);
        return Some(());
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
    out.extend(values.into_iter().map(|v| Test::Value(field, v)));
    Some(())
}

/// `context.order.F <op> n` or `n <op> context.order.F` (F a number of the
/// order, n an integer literal).
fn long_test(e: &serde_json::Value) -> Option<Test> {
    let (op, args) = e.as_object()?.iter().next()?;
    let cmp = Cmp::parse(op)?;
    let (left, right) = (args.get("left")?, args.get("right")?);
    let literal = |e: &serde_json::Value| e.get("Value")?.as_i64();
    let field = |e: &serde_json::Value| OrderLong::named(order_attr(e)?);
    if let (Some(f), Some(n)) = (field(left), literal(right)) {
        return Some(Test::Long(f, cmp, n));
    }
    let (n, f) = (literal(left)?, field(right)?);
    Some(Test::Long(f, cmp.flip(), n))
}

/// `context.order has F` or `!(context.order has F)` (F optional).
fn has_test(e: &serde_json::Value) -> Option<Test> {
    let (has, present) = match e.get("!") {
        Some(not) => (not.get("arg")?.get("has")?, false),
        None => (e.get("has")?, true),
    };
    if !is_context_order(has.get("left")?) {
        return None;
    }
    let field = OrderOptional::named(has.get("attr")?.as_str()?)?;
    Some(Test::Has(field, present))
}

/// `context.order.F` for one of the order's string sets, written with dots
/// or brackets (the same EST).
fn order_set(e: &serde_json::Value) -> Option<OrderSet> {
    let field = order_attr(e)?;
    OrderSet::ALL.into_iter().find(|s| s.name() == field)
}

impl ActionIndex {
    /// Indexes `policies` with their keys (from [`key_of`]); `None` if a
    /// policy could not be filed (the caller then evaluates the whole slice).
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a Indexed>) -> Option<ActionIndex> {
        let mut ix = ActionIndex {
            all: PolicySet::new(),
            general: Group::default(),
            by_principal: HashMap::new(),
            by_resource: HashMap::new(),
            by_order_value: HashMap::new(),
            tested: Vec::new(),
            order_keyed: Group::default(),
        };
        let mut ok = true;
        for (p, key, fields) in policies {
            let fields = *fields;
            ok &= ix.all.add(p.clone()).is_ok();
            ok &= match key.clone() {
                Key::None => ix.general.add(p, fields),
                Key::Principal(uid) => ix.by_principal.entry(uid).or_default().add(p, fields),
                Key::Resource(uid) => ix.by_resource.entry(uid).or_default().add(p, fields),
                Key::Order(tests) => {
                    let mut ok = ix.order_keyed.add(p, fields);
                    let values: Option<HashSet<(OrderSet, String)>> = tests
                        .iter()
                        .map(|t| match t {
                            Test::Value(f, v) => Some((*f, v.clone())),
                            _ => None,
                        })
                        .collect();
                    match values {
                        // Only set membership: looked up by value.
                        Some(distinct) => {
                            for pair in distinct {
                                ok &= ix.by_order_value.entry(pair).or_default().add(p, fields);
                            }
                        }
                        // Otherwise checked test by test.
                        None => {
                            let mut own = Group::default();
                            ok &= own.add(p, fields);
                            ix.tested.push((tests, own));
                        }
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
    ) -> Vec<&'s Group> {
        let mut out = Vec::with_capacity(4);
        out.push(&self.general);
        out.extend(self.by_principal.get(principal));
        out.extend(self.by_resource.get(resource));
        match order {
            None => out.push(&self.order_keyed),
            Some(o) => {
                for (tests, set) in &self.tested {
                    if tests.iter().any(|t| t.holds(o)) {
                        out.push(set);
                    }
                }
                let mut key = (OrderSet::Symbols, String::new());
                let fields = if self.by_order_value.is_empty() {
                    &[][..]
                } else {
                    &OrderSet::ALL[..]
                };
                for &field in fields {
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
        out.retain(|g| !g.set.is_empty());
        out
    }
}
