//! Order bodies as an authorization policy sees them: a strict parse of
//! Schwab order JSON into the facts a Cedar policy judges (symbols,
//! instructions, quantities, prices, an upper bound on notional).
//!
//! The bytes forwarded upstream are the caller's, not a re-serialisation of
//! what was judged here, so anything another JSON parser could read
//! differently (a duplicate key, a byte-order mark, a price with more
//! precision than a Cedar decimal holds) is refused rather than guessed at.
//! An order is a tree (TRIGGER → OCO → children), and every node is walked:
//! a quantity or symbol hidden in a grandchild counts like one at the root.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// JSON nesting (objects + arrays). The deepest real order (TRIGGER → OCO →
/// child → leg → instrument) needs 8.
pub const MAX_DEPTH: usize = 16;
/// Order nodes: the root plus every nested `childOrderStrategies` entry.
pub const MAX_ORDER_NODES: usize = 32;
/// Legs over all order nodes.
pub const MAX_LEGS: usize = 64;

/// Far above any real order, low enough that quantity × price × 100 stays
/// comfortably inside i128 arithmetic.
const MAX_QUANTITY: i64 = 1_000_000_000;
/// Symbols are compared byte for byte by policies; OSI option symbols are 21.
const MAX_SYMBOL_BYTES: usize = 64;
/// Echoed input (keys, enum values) is cut to this many characters.
const ECHO_CHARS: usize = 40;
const OPTION_MULTIPLIER: i128 = 100;

// Enum values from the Trader API's OpenAPI and schwab-py (reference §4.2);
// the simulator validates against the same lists.
pub const INSTRUCTIONS: &[&str] = &[
    "BUY",
    "SELL",
    "BUY_TO_COVER",
    "SELL_SHORT",
    "BUY_TO_OPEN",
    "BUY_TO_CLOSE",
    "SELL_TO_OPEN",
    "SELL_TO_CLOSE",
    "EXCHANGE",
    "SELL_SHORT_EXEMPT",
];
pub const ORDER_TYPES: &[&str] = &[
    "MARKET",
    "LIMIT",
    "STOP",
    "STOP_LIMIT",
    "TRAILING_STOP",
    "CABINET",
    "NON_MARKETABLE",
    "MARKET_ON_CLOSE",
    "EXERCISE",
    "TRAILING_STOP_LIMIT",
    "NET_DEBIT",
    "NET_CREDIT",
    "NET_ZERO",
    "LIMIT_ON_CLOSE",
];
pub const DURATIONS: &[&str] = &[
    "DAY",
    "GOOD_TILL_CANCEL",
    "FILL_OR_KILL",
    "IMMEDIATE_OR_CANCEL",
    "END_OF_WEEK",
    "END_OF_MONTH",
    "NEXT_END_OF_MONTH",
];
pub const SESSIONS: &[&str] = &["NORMAL", "AM", "PM", "SEAMLESS"];
pub const STRATEGIES: &[&str] = &[
    "SINGLE",
    "CANCEL",
    "RECALL",
    "PAIR",
    "FLATTEN",
    "TWO_DAY_SWAP",
    "BLAST_ALL",
    "OCO",
    "TRIGGER",
];
/// The strategies whose effect is the sum of their legs. The others (CANCEL,
/// RECALL, PAIR, FLATTEN, TWO_DAY_SWAP, BLAST_ALL) act on orders or positions
/// the body does not describe, so a policy judging legs cannot see what they
/// do; [`STRATEGIES`] stays the full list because the simulator validates
/// Schwab's enum with it.
const ACCEPTED_STRATEGIES: &[&str] = &["SINGLE", "OCO", "TRIGGER"];
const COMPLEX_STRATEGIES: &[&str] = &[
    "NONE",
    "COVERED",
    "VERTICAL",
    "BACK_RATIO",
    "CALENDAR",
    "DIAGONAL",
    "STRADDLE",
    "STRANGLE",
    "COLLAR_SYNTHETIC",
    "BUTTERFLY",
    "CONDOR",
    "IRON_CONDOR",
    "VERTICAL_ROLL",
    "COLLAR_WITH_STOCK",
    "DOUBLE_DIAGONAL",
    "UNBALANCED_BUTTERFLY",
    "UNBALANCED_CONDOR",
    "UNBALANCED_IRON_CONDOR",
    "UNBALANCED_VERTICAL_ROLL",
    "MUTUAL_FUND_SWAP",
    "CUSTOM",
];
pub const ASSET_TYPES: &[&str] = &[
    "EQUITY",
    "OPTION",
    "INDEX",
    "MUTUAL_FUND",
    "CASH_EQUIVALENT",
    "FIXED_INCOME",
    "CURRENCY",
    "COLLECTIVE_INVESTMENT",
];
const NEEDS_PRICE: &[&str] = &[
    "LIMIT",
    "STOP_LIMIT",
    "LIMIT_ON_CLOSE",
    "NET_DEBIT",
    "NET_CREDIT",
];
const NEEDS_STOP: &[&str] = &["STOP", "STOP_LIMIT"];
/// Order types that execute at `price`; on any other type a price would be
/// judged by a policy but ignored (or reinterpreted) by Schwab.
const USES_PRICE: &[&str] = &[
    "LIMIT",
    "STOP_LIMIT",
    "LIMIT_ON_CLOSE",
    "NET_DEBIT",
    "NET_CREDIT",
    "TRAILING_STOP_LIMIT",
];
/// Order types that read `stopPrice`.
const USES_STOP: &[&str] = &["STOP", "STOP_LIMIT", "TRAILING_STOP", "TRAILING_STOP_LIMIT"];
/// The only types whose stop may move with the market (`stopPriceLink*`,
/// `stopPriceOffset`): the trail is what the caller asked for there.
const TRAILING: &[&str] = &["TRAILING_STOP", "TRAILING_STOP_LIMIT"];
/// Order types whose `price` caps what one unit costs. A trailing limit
/// moves with the market and a net credit is money received, so neither
/// bounds the exposure.
const NOTIONAL_PRICE: &[&str] = &["LIMIT", "STOP_LIMIT", "LIMIT_ON_CLOSE", "NET_DEBIT"];

// Every key Schwab documents at each level (reference §4.1). Anything else
// is refused: Schwab may read a key the proxy does not (a case variant such
// as `Quantity`, a field added later), and what is not judged must not pass.
const ORDER_KEYS: &[&str] = &[
    "session",
    "duration",
    "orderType",
    "orderStrategyType",
    "complexOrderStrategyType",
    "price",
    "stopPrice",
    "quantity",
    "orderLegCollection",
    "childOrderStrategies",
    "cancelTime",
    "releaseTime",
    "specialInstruction",
    "taxLotMethod",
    "destinationLinkName",
    "requestedDestination",
    "stopType",
    "stopPriceLinkBasis",
    "stopPriceLinkType",
    "stopPriceOffset",
    "priceLinkBasis",
    "priceLinkType",
    "activationPrice",
];
const LEG_KEYS: &[&str] = &[
    "instruction",
    "quantity",
    "instrument",
    "positionEffect",
    "quantityType",
    "divCapGains",
    "toSymbol",
];
const INSTRUMENT_KEYS: &[&str] = &["symbol", "assetType"];

// Enums of the optional fields (reference §4.2), checked so a value Schwab
// might read in a way the proxy does not is refused rather than forwarded.
const STOP_TYPES: &[&str] = &["STANDARD", "BID", "ASK", "LAST", "MARK"];
const LINK_BASES: &[&str] = &[
    "MANUAL", "BASE", "TRIGGER", "LAST", "BID", "ASK", "ASK_BID", "MARK", "AVERAGE",
];
const LINK_TYPES: &[&str] = &["VALUE", "PERCENT", "TICK"];
const SPECIAL_INSTRUCTIONS: &[&str] =
    &["ALL_OR_NONE", "DO_NOT_REDUCE", "ALL_OR_NONE_DO_NOT_REDUCE"];
const TAX_LOT_METHODS: &[&str] = &[
    "FIFO",
    "LIFO",
    "HIGH_COST",
    "LOW_COST",
    "AVERAGE_COST",
    "SPECIFIC_LOT",
    "LOSS_HARVESTER",
];
const DESTINATIONS: &[&str] = &[
    "INET", "ECN_ARCA", "CBOE", "AMEX", "PHLX", "ISE", "BOX", "NYSE", "NASDAQ", "BATS", "C2",
    "AUTO",
];
const POSITION_EFFECTS: &[&str] = &["OPENING", "CLOSING", "AUTOMATIC"];
const QUANTITY_TYPES: &[&str] = &["ALL_SHARES", "DOLLARS", "SHARES"];

/// A signed decimal with at most 4 fractional digits, stored as value × 10_000.
///
/// The same representation as Cedar's `decimal`, so every value converts
/// exactly and compares the same way in a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Decimal4(pub i64);

const UNITS_PER_ONE: u64 = 10_000;

/// As its decimal text (`"150.25"`), exact both ways.
impl serde::Serialize for Decimal4 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Decimal4 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Decimal4, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Decimal4::parse(&text)
            .ok_or_else(|| de::Error::custom("not a decimal with at most 4 places"))
    }
}

impl Decimal4 {
    /// `-?DIGITS(.DIGITS{1,4})?`: no exponent, no `+`, no leading or
    /// trailing `.`, no whitespace; `None` outside the i64 range.
    pub fn parse(s: &str) -> Option<Decimal4> {
        let (negative, rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (int, frac) = match rest.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (rest, None),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) {
            return None;
        }
        let mut units: i128 = 0;
        for b in int.bytes() {
            units = units
                .checked_mul(10)?
                .checked_add(i128::from(b.wrapping_sub(b'0')))?;
        }
        units = units.checked_mul(i128::from(UNITS_PER_ONE))?;
        if let Some(frac) = frac {
            if !digits(frac) || frac.len() > 4 {
                return None;
            }
            // Right-pad to four digits: ".5" is 5000 units.
            let f = frac
                .bytes()
                .chain(std::iter::repeat(b'0'))
                .take(4)
                .fold(0i128, |acc, b| acc * 10 + i128::from(b.wrapping_sub(b'0')));
            units = units.checked_add(f)?;
        }
        if negative {
            units = -units;
        }
        i64::try_from(units).ok().map(Decimal4)
    }
}

/// Cedar decimal literal syntax (`decimal("...")` accepts it): at least one
/// fractional digit, trailing zeros dropped.
impl fmt::Display for Decimal4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let abs = self.0.unsigned_abs();
        let sign = if self.0 < 0 { "-" } else { "" };
        let mut frac = abs % UNITS_PER_ONE;
        let mut width = 4;
        while width > 1 && frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        write!(f, "{sign}{}.{frac:0width$}", abs / UNITS_PER_ONE)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderLeg {
    pub symbol: String,
    pub instruction: String,
    pub quantity: i64,
    pub asset_type: String,
}

/// The facts of one order request, over the whole order tree. Kept in the
/// audit record (`input.order`) so that `audit replay` can decide the
/// request again under other policies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderSummary {
    /// Root `orderStrategyType`.
    pub strategy: String,
    /// Root `complexOrderStrategyType`.
    pub complex_strategy: Option<String>,
    /// Root `orderType` (absent on an OCO parent).
    pub order_type: Option<String>,
    pub duration: Option<String>,
    pub session: Option<String>,
    /// Root `price`.
    pub price: Option<Decimal4>,
    /// Root `stopPrice`.
    pub stop_price: Option<Decimal4>,
    /// Every leg of every order node, depth-first, root first.
    pub legs: Vec<OrderLeg>,
    /// Order nodes: root plus all nested `childOrderStrategies`.
    pub order_count: usize,
    /// Max over every leg quantity and every node-level `quantity`.
    pub max_quantity: i64,
    /// The size of the biggest order in the tree: per node its `quantity`
    /// (never below its largest leg), else the sum of its legs.
    pub max_order_quantity: i64,
    /// Sum of every leg quantity.
    pub total_quantity: i64,
    /// Distinct, sorted: every leg's symbol and every `toSymbol`.
    pub symbols: Vec<String>,
    pub instructions: Vec<String>,
    pub asset_types: Vec<String>,
    /// Distinct `orderType` values over all nodes, sorted.
    pub order_types: Vec<String>,
    /// Distinct `orderStrategyType` values over all nodes, sorted.
    pub strategies: Vec<String>,
    /// Distinct `session` values over all nodes, sorted: a rule on the
    /// session must hold for child orders too.
    pub sessions: Vec<String>,
    /// Distinct `duration` values over all nodes, sorted.
    pub durations: Vec<String>,
    /// Σ over nodes with legs of price × quantity × (100 if any leg is an
    /// OPTION): an upper bound, since OCO siblings are all counted. Only a
    /// LIMIT, STOP_LIMIT, LIMIT_ON_CLOSE or NET_DEBIT price caps what a
    /// fill costs, so `None` when any node with legs is of another type
    /// (MARKET, STOP, TRAILING_*, NET_CREDIT, ...).
    pub notional: Option<Decimal4>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderError {
    BadContentType,
    InvalidUtf8,
    ByteOrderMark,
    /// `key` and `path` are already clipped and escaped for display.
    DuplicateKey {
        key: String,
        path: String,
    },
    TooDeep {
        path: String,
    },
    /// serde_json's description (it names a position, never input text).
    MalformedJson(String),
    InvalidOrder {
        path: String,
        reason: String,
    },
}

impl OrderError {
    pub fn code(&self) -> &'static str {
        match self {
            OrderError::BadContentType => "bad_content_type",
            OrderError::InvalidUtf8 => "invalid_utf8",
            OrderError::ByteOrderMark => "byte_order_mark",
            OrderError::DuplicateKey { .. } => "duplicate_key",
            OrderError::TooDeep { .. } => "too_deep",
            OrderError::MalformedJson(_) => "malformed_json",
            OrderError::InvalidOrder { .. } => "invalid_order",
        }
    }

    pub fn message(&self) -> String {
        match self {
            OrderError::BadContentType => {
                "Content-Type must be application/json (charset, if given, utf-8)".to_owned()
            }
            OrderError::InvalidUtf8 => "body is not valid UTF-8".to_owned(),
            OrderError::ByteOrderMark => "body starts with a byte-order mark".to_owned(),
            OrderError::DuplicateKey { key, path } => format!("duplicate key \"{key}\" at {path}"),
            OrderError::TooDeep { path } => {
                format!("JSON nested deeper than {MAX_DEPTH} levels at {path}")
            }
            OrderError::MalformedJson(m) => format!("malformed JSON: {m}"),
            OrderError::InvalidOrder { path, reason } => format!("{path}: {reason}"),
        }
    }
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for OrderError {}

/// `content_type` is the raw Content-Type header value if present.
pub fn parse_order(content_type: Option<&[u8]>, body: &[u8]) -> Result<OrderSummary, OrderError> {
    if !content_type.is_some_and(is_json_content_type) {
        return Err(OrderError::BadContentType);
    }
    // Some parsers skip a BOM and some refuse it; either way it is not JSON.
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err(OrderError::ByteOrderMark);
    }
    let text = std::str::from_utf8(body).map_err(|_| OrderError::InvalidUtf8)?;
    if text.is_empty() {
        return Err(OrderError::MalformedJson("empty body".to_owned()));
    }
    let root = parse_json(text)?;
    summarize(&root)
}

/// `application/json`, parameters allowed, a charset only if it is utf-8:
/// a body declared in another charset would be read differently upstream.
fn is_json_content_type(raw: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(raw) else {
        return false;
    };
    let ows: &[char] = &[' ', '\t'];
    let mut parts = s.split(';');
    let Some(media) = parts.next() else {
        return false;
    };
    if !media
        .trim_matches(ows)
        .eq_ignore_ascii_case("application/json")
    {
        return false;
    }
    for param in parts {
        let Some((name, value)) = param.trim_matches(ows).split_once('=') else {
            return false;
        };
        if !is_token(name) {
            return false;
        }
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(inner) if !inner.contains(['"', '\\']) && inner.is_ascii() => inner,
            Some(_) => return false,
            None if is_token(value) => value,
            None => return false,
        };
        if name.eq_ignore_ascii_case("charset") && !value.eq_ignore_ascii_case("utf-8") {
            return false;
        }
    }
    true
}

/// RFC 9110 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// At most [`ECHO_CHARS`] characters, escaped so control characters and
/// quotes cannot forge log lines or error bodies.
fn clip(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(ECHO_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if s.chars().nth(ECHO_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

// ---------------------------------------------------------------------------
// JSON → serde_json::Value, refusing duplicate keys and deep nesting.

enum Seg {
    Key(String),
    Index(usize),
}

fn render(segs: impl Iterator<Item = Seg>) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&clip(&k));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        out.push_str("top level");
    }
    out
}

enum FailKind {
    Duplicate(String),
    TooDeep,
}

/// serde errors carry only text, so the structured reason travels here;
/// each enclosing container adds its segment as the error unwinds, which
/// keeps path bookkeeping off the success path.
struct Failure {
    kind: FailKind,
    /// Innermost segment first.
    rev_path: Vec<Seg>,
}

impl Failure {
    fn into_error(self) -> OrderError {
        let path = render(self.rev_path.into_iter().rev());
        match self.kind {
            FailKind::Duplicate(key) => OrderError::DuplicateKey {
                key: clip(&key),
                path,
            },
            FailKind::TooDeep => OrderError::TooDeep { path },
        }
    }
}

/// Builds one JSON value at `depth` (the number of enclosing containers).
struct Node<'t> {
    failure: &'t mut Option<Failure>,
    depth: usize,
}

impl Node<'_> {
    /// Refuses before reading a single element, so nesting costs nothing
    /// past the limit and serde_json's own (128) limit is never the one hit.
    fn enter<E: de::Error>(&mut self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            *self.failure = Some(Failure {
                kind: FailKind::TooDeep,
                rev_path: Vec::new(),
            });
            return Err(E::custom("too deep"));
        }
        Ok(depth)
    }

    fn locate(&mut self, seg: Seg) {
        if let Some(f) = self.failure.as_mut() {
            f.rev_path.push(seg);
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut items = Vec::new();
        loop {
            let child = Node {
                failure: &mut *self.failure,
                depth,
            };
            match seq.next_element_seed(child) {
                Ok(Some(v)) => items.push(v),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    self.locate(Seg::Index(items.len()));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut obj = Map::new();
        // Keys arrive unescaped, so `"qty"` and `"q\u0074y"` collide here.
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                *self.failure = Some(Failure {
                    kind: FailKind::Duplicate(key),
                    rev_path: Vec::new(),
                });
                return Err(de::Error::custom("duplicate key"));
            }
            let child = Node {
                failure: &mut *self.failure,
                depth,
            };
            match map.next_value_seed(child) {
                Ok(v) => {
                    obj.insert(key, v);
                }
                Err(e) => {
                    self.locate(Seg::Key(key));
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(obj))
    }
}

fn parse_json(text: &str) -> Result<Value, OrderError> {
    let mut failure = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Node {
        failure: &mut failure,
        depth: 0,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match (parsed, failure) {
        (_, Some(f)) => Err(f.into_error()),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(OrderError::MalformedJson(e.to_string())),
    }
}

// ---------------------------------------------------------------------------
// The order tree → facts.

/// Where in the document a check failed, rendered only when it does.
#[derive(Clone, Copy)]
enum At<'a> {
    Root,
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl<'a> At<'a> {
    fn key(&'a self, k: &'a str) -> At<'a> {
        At::Key(self, k)
    }

    fn index(&'a self, i: usize) -> At<'a> {
        At::Index(self, i)
    }

    fn render(&self) -> String {
        let mut rev = Vec::new();
        let mut cur = self;
        loop {
            match cur {
                At::Root => break,
                At::Key(parent, k) => {
                    rev.push(Seg::Key((*k).to_owned()));
                    cur = parent;
                }
                At::Index(parent, i) => {
                    rev.push(Seg::Index(*i));
                    cur = parent;
                }
            }
        }
        render(rev.into_iter().rev())
    }
}

fn invalid(at: At<'_>, reason: impl Into<String>) -> OrderError {
    OrderError::InvalidOrder {
        path: at.render(),
        reason: reason.into(),
    }
}

fn required(at: At<'_>, key: &str) -> OrderError {
    invalid(at.key(key), "is required")
}

type Obj = Map<String, Value>;

fn enum_field<'v>(
    o: &'v Obj,
    key: &str,
    allowed: &[&str],
    at: At<'_>,
) -> Result<Option<&'v str>, OrderError> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(Some(s)),
        Some(Value::String(s)) => Err(invalid(
            at.key(key),
            format!("unknown value \"{}\"", clip(s)),
        )),
        Some(_) => Err(invalid(at.key(key), "must be a string")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sign {
    Positive,
    Any,
}

fn price_field(o: &Obj, key: &str, sign: Sign, at: At<'_>) -> Result<Option<Decimal4>, OrderError> {
    let parsed = match o.get(key) {
        None => return Ok(None),
        Some(Value::String(s)) => Decimal4::parse(s),
        // Shortest round-trip text is what the client most plausibly wrote
        // (3.45, not 3.4500000000000001776); exponent forms are refused.
        Some(Value::Number(n)) => {
            let text = n.to_string();
            if text.contains(['e', 'E']) {
                None
            } else {
                Decimal4::parse(&text)
            }
        }
        Some(_) => return Err(invalid(at.key(key), "must be a string or a number")),
    };
    let d = parsed.ok_or_else(|| {
        invalid(
            at.key(key),
            "must be a plain decimal with at most 4 fractional digits",
        )
    })?;
    if sign == Sign::Positive && d.0 <= 0 {
        return Err(invalid(at.key(key), "must be greater than zero"));
    }
    Ok(Some(d))
}

fn quantity_field(o: &Obj, key: &str, at: At<'_>) -> Result<Option<i64>, OrderError> {
    let n = match o.get(key) {
        None => return Ok(None),
        Some(Value::Number(n)) => n,
        Some(_) => return Err(invalid(at.key(key), "must be a number")),
    };
    let whole = if let Some(u) = n.as_u64() {
        i64::try_from(u).ok()
    } else if n.is_i64() {
        None
    } else {
        // Schwab echoes quantities as floats (`10.0`).
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= MAX_QUANTITY as f64)
            .map(|f| f as i64)
    };
    whole
        .filter(|q| (1..=MAX_QUANTITY).contains(q))
        .map(Some)
        .ok_or_else(|| {
            invalid(
                at.key(key),
                format!("must be a whole number from 1 to {MAX_QUANTITY}"),
            )
        })
}

/// Checks `key` as a symbol, `None` when absent.
///
/// Printable ASCII only, and no leading or trailing space: `" AAPL"` would
/// slip past a policy comparing symbols byte for byte if Schwab trims it.
/// For the same reason no lower case (Schwab's symbols are upper case, so
/// `gme` would dodge a rule naming `GME` if Schwab folds case), and no inner
/// space except in an OSI option symbol, which pads the root with spaces.
fn symbol_value<'v>(
    o: &'v Obj,
    key: &str,
    asset_type: &str,
    at: At<'_>,
) -> Result<Option<&'v str>, OrderError> {
    let s = match o.get(key) {
        None => return Ok(None),
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid(at.key(key), "must be a string")),
    };
    let printable = s.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if s.is_empty()
        || s.len() > MAX_SYMBOL_BYTES
        || !printable
        || s.starts_with(' ')
        || s.ends_with(' ')
    {
        return Err(invalid(
            at.key(key),
            format!(
                "must be 1 to {MAX_SYMBOL_BYTES} printable ASCII characters without leading or trailing spaces"
            ),
        ));
    }
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(invalid(
            at.key(key),
            "must not contain lower-case letters (Schwab symbols are upper case)",
        ));
    }
    if asset_type != "OPTION" && s.contains(' ') {
        return Err(invalid(
            at.key(key),
            format!(
                "must not contain spaces in a {asset_type} symbol (only OPTION symbols have them)"
            ),
        ));
    }
    Ok(Some(s))
}

/// Refuses the first key (in map order) not in `allowed`.
fn known_keys(o: &Obj, allowed: &[&str], at: At<'_>) -> Result<(), OrderError> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(invalid(at, format!("unknown field `{}`", clip(k)))),
        None => Ok(()),
    }
}

/// Free-form fields Schwab reads as strings: anything else is refused
/// rather than left to Schwab to coerce.
fn string_field(o: &Obj, key: &str, at: At<'_>) -> Result<(), OrderError> {
    match o.get(key) {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(invalid(at.key(key), "must be a string")),
    }
}

/// `"a MARKET order"`; an OCO parent may have no `orderType`.
fn order_kind(order_type: Option<&str>) -> String {
    match order_type {
        Some(t) => format!("a {t} order"),
        None => "an order without an orderType".to_owned(),
    }
}

/// The price fields must mean what a policy reads from them: each present
/// only on order types that use it, and no price that Schwab would move
/// relative to the market.
fn pricing_rules(
    o: &Obj,
    order_type: Option<&str>,
    price: Option<Decimal4>,
    stop_price: Option<Decimal4>,
    at: At<'_>,
) -> Result<(), OrderError> {
    let kind = order_kind(order_type);
    let is = |list: &[&str]| order_type.is_some_and(|t| list.contains(&t));
    if let Some(t) = order_type {
        if NEEDS_PRICE.contains(&t) && price.is_none() {
            return Err(invalid(at.key("price"), format!("is required for {kind}")));
        }
        if NEEDS_STOP.contains(&t) && stop_price.is_none() {
            return Err(invalid(
                at.key("stopPrice"),
                format!("is required for {kind}"),
            ));
        }
    }
    if price.is_some() && !is(USES_PRICE) {
        return Err(invalid(at.key("price"), format!("is not used by {kind}")));
    }
    if stop_price.is_some() && !is(USES_STOP) {
        return Err(invalid(
            at.key("stopPrice"),
            format!("is not used by {kind}"),
        ));
    }

    enum_field(o, "stopPriceLinkBasis", LINK_BASES, at)?;
    enum_field(o, "stopPriceLinkType", LINK_TYPES, at)?;
    if !is(TRAILING) {
        for key in ["stopPriceLinkBasis", "stopPriceLinkType", "stopPriceOffset"] {
            if o.contains_key(key) {
                return Err(invalid(
                    at.key(key),
                    format!(
                        "is only accepted on a TRAILING_STOP or TRAILING_STOP_LIMIT order, not on {kind}"
                    ),
                ));
            }
        }
    }

    // A linked price is an offset from a market quote: the limit Schwab
    // works is not the `price` the policy judged. MANUAL is the plain price.
    let basis = enum_field(o, "priceLinkBasis", LINK_BASES, at)?;
    let link_type = enum_field(o, "priceLinkType", LINK_TYPES, at)?;
    match basis {
        Some("MANUAL") => {}
        Some(b) => {
            return Err(invalid(
                at.key("priceLinkBasis"),
                format!(
                    "{b} makes the price relative to the market, which the proxy cannot judge; only MANUAL is accepted"
                ),
            ));
        }
        None if link_type.is_some() => {
            return Err(invalid(
                at.key("priceLinkType"),
                "is only accepted with priceLinkBasis MANUAL",
            ));
        }
        None => {}
    }
    // Which quote triggers the stop, not the size or the limit.
    enum_field(o, "stopType", STOP_TYPES, at)?;
    Ok(())
}

/// The root node's own fields, reported as-is in the summary.
struct Head {
    strategy: String,
    complex_strategy: Option<String>,
    order_type: Option<String>,
    duration: Option<String>,
    session: Option<String>,
    price: Option<Decimal4>,
    stop_price: Option<Decimal4>,
}

struct Walk {
    legs: Vec<OrderLeg>,
    nodes: usize,
    max_quantity: i64,
    max_order_quantity: i64,
    total_quantity: i64,
    symbols: BTreeSet<String>,
    order_types: BTreeSet<String>,
    strategies: BTreeSet<String>,
    sessions: BTreeSet<String>,
    durations: BTreeSet<String>,
    /// In units of 1e-4; `None` once a node with legs has no price that
    /// caps its cost.
    notional: Option<i128>,
}

fn notional_range(at: At<'_>) -> OrderError {
    invalid(at, "notional out of range")
}

impl Walk {
    /// Recursion is bounded: each level is two JSON containers deep and the
    /// tree was built under [`MAX_DEPTH`].
    fn node(&mut self, v: &Value, at: At<'_>) -> Result<Head, OrderError> {
        let o = v
            .as_object()
            .ok_or_else(|| invalid(at, "an order must be a JSON object"))?;
        self.nodes += 1;
        if self.nodes > MAX_ORDER_NODES {
            return Err(invalid(
                at,
                format!("more than {MAX_ORDER_NODES} orders in one request"),
            ));
        }
        known_keys(o, ORDER_KEYS, at)?;
        let strategy = enum_field(o, "orderStrategyType", STRATEGIES, at)?
            .ok_or_else(|| required(at, "orderStrategyType"))?;
        if !ACCEPTED_STRATEGIES.contains(&strategy) {
            return Err(invalid(
                at.key("orderStrategyType"),
                format!("{strategy} orders are not supported through the proxy"),
            ));
        }
        let oco = strategy == "OCO";
        let complex = enum_field(o, "complexOrderStrategyType", COMPLEX_STRATEGIES, at)?;
        let order_type = enum_field(o, "orderType", ORDER_TYPES, at)?;
        let session = enum_field(o, "session", SESSIONS, at)?;
        let duration = enum_field(o, "duration", DURATIONS, at)?;
        if !oco {
            for (key, value) in [
                ("orderType", order_type),
                ("session", session),
                ("duration", duration),
            ] {
                if value.is_none() {
                    return Err(required(at, key));
                }
            }
        }
        let price = price_field(o, "price", Sign::Positive, at)?;
        let stop_price = price_field(o, "stopPrice", Sign::Positive, at)?;
        price_field(o, "activationPrice", Sign::Positive, at)?;
        price_field(o, "stopPriceOffset", Sign::Any, at)?;
        pricing_rules(o, order_type, price, stop_price, at)?;
        enum_field(o, "specialInstruction", SPECIAL_INSTRUCTIONS, at)?;
        enum_field(o, "taxLotMethod", TAX_LOT_METHODS, at)?;
        enum_field(o, "requestedDestination", DESTINATIONS, at)?;
        for key in ["cancelTime", "destinationLinkName"] {
            string_field(o, key, at)?;
        }
        // A release time makes the order start later than the moment the
        // policy judged it (market hours, for one); not judged, not sent.
        if o.get("releaseTime").is_some() {
            return Err(invalid(
                at.key("releaseTime"),
                "delayed release is not supported through the proxy",
            ));
        }
        let node_quantity = quantity_field(o, "quantity", at)?;
        if let Some(q) = node_quantity {
            self.max_quantity = self.max_quantity.max(q);
            self.max_order_quantity = self.max_order_quantity.max(q);
        }
        self.strategies.insert(strategy.to_owned());
        if let Some(t) = order_type {
            self.order_types.insert(t.to_owned());
        }
        if let Some(s) = session {
            self.sessions.insert(s.to_owned());
        }
        if let Some(d) = duration {
            self.durations.insert(d.to_owned());
        }

        match (o.get("orderLegCollection"), oco) {
            (Some(_), true) => {
                return Err(invalid(
                    at.key("orderLegCollection"),
                    "is not allowed on an OCO order",
                ));
            }
            (None, false) => return Err(required(at, "orderLegCollection")),
            (None, true) => {}
            (Some(legs), false) => {
                // Only a price that caps the cost of a unit bounds notional.
                let cap = price.filter(|_| order_type.is_some_and(|t| NOTIONAL_PRICE.contains(&t)));
                self.legs(legs, at, node_quantity, cap)?;
            }
        }

        let kids_at = at.key("childOrderStrategies");
        match o.get("childOrderStrategies") {
            None if oco => {
                return Err(invalid(kids_at, "an OCO order needs at least two"));
            }
            None => {}
            Some(Value::Array(kids)) => {
                if oco && kids.len() < 2 {
                    return Err(invalid(kids_at, "an OCO order needs at least two"));
                }
                for (i, kid) in kids.iter().enumerate() {
                    self.node(kid, kids_at.index(i))?;
                }
            }
            Some(_) => return Err(invalid(kids_at, "must be an array")),
        }

        Ok(Head {
            strategy: strategy.to_owned(),
            complex_strategy: complex.map(str::to_owned),
            order_type: order_type.map(str::to_owned),
            duration: duration.map(str::to_owned),
            session: session.map(str::to_owned),
            price,
            stop_price,
        })
    }

    fn legs(
        &mut self,
        v: &Value,
        node_at: At<'_>,
        node_quantity: Option<i64>,
        node_price: Option<Decimal4>,
    ) -> Result<(), OrderError> {
        let at = node_at.key("orderLegCollection");
        let legs = match v {
            Value::Array(a) if !a.is_empty() => a,
            _ => return Err(invalid(at, "must be a non-empty array")),
        };
        let mut leg_sum: i64 = 0;
        let mut leg_max: i64 = 0;
        let mut option = false;
        for (i, leg) in legs.iter().enumerate() {
            let leg_at = at.index(i);
            if self.legs.len() >= MAX_LEGS {
                return Err(invalid(
                    leg_at,
                    format!("more than {MAX_LEGS} legs in one request"),
                ));
            }
            let o = leg
                .as_object()
                .ok_or_else(|| invalid(leg_at, "a leg must be a JSON object"))?;
            known_keys(o, LEG_KEYS, leg_at)?;
            let instruction = enum_field(o, "instruction", INSTRUCTIONS, leg_at)?
                .ok_or_else(|| required(leg_at, "instruction"))?;
            let quantity = quantity_field(o, "quantity", leg_at)?
                .ok_or_else(|| required(leg_at, "quantity"))?;
            // ALL_SHARES and DOLLARS replace `quantity` with a size the
            // policy never sees (a whole position, an amount of money).
            match enum_field(o, "quantityType", QUANTITY_TYPES, leg_at)? {
                None | Some("SHARES") => {}
                Some(t) => {
                    return Err(invalid(
                        leg_at.key("quantityType"),
                        format!(
                            "{t} makes the quantity something the proxy cannot judge; only SHARES is accepted"
                        ),
                    ));
                }
            }
            enum_field(o, "positionEffect", POSITION_EFFECTS, leg_at)?;
            string_field(o, "divCapGains", leg_at)?;
            let inst_at = leg_at.key("instrument");
            let inst = match o.get("instrument") {
                Some(Value::Object(m)) => m,
                Some(_) => return Err(invalid(inst_at, "must be an object")),
                None => return Err(required(leg_at, "instrument")),
            };
            known_keys(inst, INSTRUMENT_KEYS, inst_at)?;
            let asset_type = enum_field(inst, "assetType", ASSET_TYPES, inst_at)?
                .ok_or_else(|| required(inst_at, "assetType"))?;
            let symbol = symbol_value(inst, "symbol", asset_type, inst_at)?
                .ok_or_else(|| required(inst_at, "symbol"))?;
            // What an EXCHANGE turns the position into: a symbol list rule
            // must see it, so it joins `symbols` (it is not a leg of its own).
            if let Some(to) = symbol_value(o, "toSymbol", asset_type, leg_at)? {
                self.symbols.insert(to.to_owned());
            }

            let overflow = || invalid(leg_at.key("quantity"), "quantities overflow");
            leg_sum = leg_sum.checked_add(quantity).ok_or_else(overflow)?;
            self.total_quantity = self
                .total_quantity
                .checked_add(quantity)
                .ok_or_else(overflow)?;
            self.max_quantity = self.max_quantity.max(quantity);
            leg_max = leg_max.max(quantity);
            option |= asset_type == "OPTION";
            self.symbols.insert(symbol.to_owned());
            self.legs.push(OrderLeg {
                symbol: symbol.to_owned(),
                instruction: instruction.to_owned(),
                quantity,
                asset_type: asset_type.to_owned(),
            });
        }

        // A node-level quantity (multi-leg orders: the number of spreads)
        // counts, but never below its largest leg, so a small top-level
        // quantity cannot hide large legs.
        let effective = node_quantity.map_or(leg_sum, |q| q.max(leg_max));
        self.max_order_quantity = self.max_order_quantity.max(effective);

        let Some(price) = node_price else {
            self.notional = None;
            return Ok(());
        };
        let multiplier = if option { OPTION_MULTIPLIER } else { 1 };
        let node_notional = i128::from(price.0)
            .checked_mul(i128::from(effective))
            .and_then(|n| n.checked_mul(multiplier))
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| notional_range(node_at))?;
        if let Some(sum) = self.notional {
            let sum = sum
                .checked_add(node_notional)
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(|| notional_range(node_at))?;
            self.notional = Some(sum);
        }
        Ok(())
    }
}

fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn summarize(root: &Value) -> Result<OrderSummary, OrderError> {
    if !root.is_object() {
        return Err(invalid(At::Root, "the body must be a JSON object"));
    }
    let mut w = Walk {
        legs: Vec::new(),
        nodes: 0,
        max_quantity: 0,
        max_order_quantity: 0,
        total_quantity: 0,
        symbols: BTreeSet::new(),
        order_types: BTreeSet::new(),
        strategies: BTreeSet::new(),
        sessions: BTreeSet::new(),
        durations: BTreeSet::new(),
        notional: Some(0),
    };
    let head = w.node(root, At::Root)?;
    let notional = match w.notional {
        Some(n) => Some(Decimal4(
            i64::try_from(n).map_err(|_| notional_range(At::Root))?,
        )),
        None => None,
    };
    Ok(OrderSummary {
        strategy: head.strategy,
        complex_strategy: head.complex_strategy,
        order_type: head.order_type,
        duration: head.duration,
        session: head.session,
        price: head.price,
        stop_price: head.stop_price,
        order_count: w.nodes,
        max_quantity: w.max_quantity,
        max_order_quantity: w.max_order_quantity,
        total_quantity: w.total_quantity,
        symbols: w.symbols.into_iter().collect(),
        instructions: distinct(w.legs.iter().map(|l| l.instruction.as_str())),
        asset_types: distinct(w.legs.iter().map(|l| l.asset_type.as_str())),
        order_types: w.order_types.into_iter().collect(),
        strategies: w.strategies.into_iter().collect(),
        sessions: w.sessions.into_iter().collect(),
        durations: w.durations.into_iter().collect(),
        legs: w.legs,
        notional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&[u8]> = Some(b"application/json");

    const MARKET_BUY: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"MARKET","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#;
    const LIMIT_SELL: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"425.50","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"MSFT"},"quantity":5}]}"#;
    const STOP_SELL: &str = r#"{"session":"NORMAL","duration":"GOOD_TILL_CANCEL","orderType":"STOP","stopPrice":"180.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#;
    const OPTION_BUY: &str = r#"{"orderType":"LIMIT","session":"NORMAL","price":3.45,"duration":"DAY","orderStrategyType":"SINGLE","complexOrderStrategyType":"NONE","orderLegCollection":[{"instruction":"BUY_TO_OPEN","quantity":1,"instrument":{"symbol":"AAPL  250620C00200000","assetType":"OPTION"}}]}"#;
    const VERTICAL: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"NET_DEBIT","complexOrderStrategyType":"VERTICAL","quantity":1,"price":"4.10","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY_TO_OPEN","instrument":{"assetType":"OPTION","symbol":"AAPL  250620C00200000"},"quantity":1},{"instruction":"SELL_TO_OPEN","instrument":{"assetType":"OPTION","symbol":"AAPL  250620C00210000"},"quantity":1}]}"#;
    const OCO: &str = r#"{"orderStrategyType":"OCO","childOrderStrategies":[{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"210.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]},{"session":"NORMAL","duration":"DAY","orderType":"STOP","stopPrice":"180.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}]}"#;
    const OTOCO: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"190.00","orderStrategyType":"TRIGGER","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}],"childOrderStrategies":[{"orderStrategyType":"OCO","childOrderStrategies":[{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"210.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]},{"session":"NORMAL","duration":"DAY","orderType":"STOP","stopPrice":"180.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}]}]}"#;

    fn parse(body: &str) -> Result<OrderSummary, OrderError> {
        parse_order(JSON, body.as_bytes())
    }

    fn ok(body: &str) -> OrderSummary {
        match parse(body) {
            Ok(s) => s,
            Err(e) => panic!("{body}: {}", e.message()),
        }
    }

    fn code(body: &str) -> &'static str {
        match parse(body) {
            Ok(s) => panic!("accepted {body}: {s:?}"),
            Err(e) => e.code(),
        }
    }

    fn d(s: &str) -> Decimal4 {
        Decimal4::parse(s).unwrap()
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Schwabdev (Python `json.dumps` defaults): a space after `:` and `,`.
    fn spaced(compact: &str) -> String {
        let mut out = String::new();
        let (mut in_str, mut escaped) = (false, false);
        for c in compact.chars() {
            out.push(c);
            if in_str {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_str = false,
                    _ => {}
                }
            } else if c == '"' {
                in_str = true;
            } else if c == ':' || c == ',' {
                out.push(' ');
            }
        }
        out
    }

    /// Replaces the first occurrence, asserting there is one.
    /// MARKET_BUY with a second leg buying `qty` TSLA.
    fn with_tsla_leg(qty: u32) -> String {
        edit(
            MARKET_BUY,
            r#""quantity":10}"#,
            &format!(
                r#""quantity":10}},{{"instruction":"BUY","instrument":{{"assetType":"EQUITY","symbol":"TSLA"}},"quantity":{qty}}}"#
            ),
        )
    }

    fn edit(body: &str, from: &str, to: &str) -> String {
        assert!(body.contains(from), "{from} not in {body}");
        body.replacen(from, to, 1)
    }

    fn check_examples(f: impl Fn(&str) -> String) {
        let s = ok(&f(MARKET_BUY));
        assert_eq!(s.strategy, "SINGLE");
        assert_eq!(s.order_type.as_deref(), Some("MARKET"));
        assert_eq!(s.session.as_deref(), Some("NORMAL"));
        assert_eq!(s.duration.as_deref(), Some("DAY"));
        assert_eq!(s.price, None);
        assert_eq!(
            s.legs,
            vec![OrderLeg {
                symbol: "AAPL".into(),
                instruction: "BUY".into(),
                quantity: 10,
                asset_type: "EQUITY".into(),
            }]
        );
        assert_eq!(
            (s.order_count, s.max_quantity, s.total_quantity),
            (1, 10, 10)
        );
        assert_eq!(s.max_order_quantity, 10);
        assert_eq!(
            (s.sessions, s.durations),
            (strs(&["NORMAL"]), strs(&["DAY"]))
        );
        assert_eq!(s.notional, None);

        let s = ok(&f(LIMIT_SELL));
        assert_eq!(s.price, Some(Decimal4(4_255_000)));
        assert_eq!(s.symbols, strs(&["MSFT"]));
        assert_eq!(s.instructions, strs(&["SELL"]));
        assert_eq!(s.notional, Some(d("2127.5")));

        let s = ok(&f(STOP_SELL));
        assert_eq!(s.duration.as_deref(), Some("GOOD_TILL_CANCEL"));
        assert_eq!((s.price, s.stop_price), (None, Some(d("180"))));
        // A stop fills at the market, whatever the trigger.
        assert_eq!(s.notional, None);

        let s = ok(&f(OPTION_BUY));
        assert_eq!(s.complex_strategy.as_deref(), Some("NONE"));
        assert_eq!(s.price, Some(d("3.45")));
        assert_eq!(s.symbols, strs(&["AAPL  250620C00200000"]));
        assert_eq!(s.asset_types, strs(&["OPTION"]));
        assert_eq!(s.notional, Some(d("345")));

        let s = ok(&f(VERTICAL));
        assert_eq!(s.complex_strategy.as_deref(), Some("VERTICAL"));
        assert_eq!(s.legs.len(), 2);
        assert_eq!((s.max_quantity, s.total_quantity), (1, 2));
        assert_eq!(s.max_order_quantity, 1);
        assert_eq!(
            s.symbols,
            strs(&["AAPL  250620C00200000", "AAPL  250620C00210000"])
        );
        assert_eq!(s.instructions, strs(&["BUY_TO_OPEN", "SELL_TO_OPEN"]));
        assert_eq!(s.order_types, strs(&["NET_DEBIT"]));
        assert_eq!(s.notional, Some(d("410")));

        let s = ok(&f(OCO));
        assert_eq!(s.strategy, "OCO");
        assert_eq!((s.order_type, s.session, s.duration), (None, None, None));
        assert_eq!((s.order_count, s.legs.len()), (3, 2));
        assert_eq!(s.strategies, strs(&["OCO", "SINGLE"]));
        assert_eq!(s.order_types, strs(&["LIMIT", "STOP"]));
        assert_eq!(
            (s.sessions, s.durations),
            (strs(&["NORMAL"]), strs(&["DAY"]))
        );
        assert_eq!(s.max_order_quantity, 10);
        // The STOP side has no price that caps its cost.
        assert_eq!(s.notional, None);

        let s = ok(&f(OTOCO));
        assert_eq!(s.strategy, "TRIGGER");
        assert_eq!(s.price, Some(d("190")));
        assert_eq!((s.order_count, s.legs.len()), (4, 3));
        assert_eq!((s.max_quantity, s.total_quantity), (10, 30));
        assert_eq!(s.symbols, strs(&["AAPL"]));
        assert_eq!(s.instructions, strs(&["BUY", "SELL"]));
        assert_eq!(s.strategies, strs(&["OCO", "SINGLE", "TRIGGER"]));
        assert_eq!(s.order_types, strs(&["LIMIT", "STOP"]));
        // Depth-first, root first.
        let instr: Vec<_> = s.legs.iter().map(|l| l.instruction.as_str()).collect();
        assert_eq!(instr, ["BUY", "SELL", "SELL"]);
        assert_eq!(s.max_order_quantity, 10);
        assert_eq!(s.notional, None);
    }

    #[test]
    fn reference_examples_compact() {
        check_examples(str::to_owned);
    }

    #[test]
    fn reference_examples_spaced() {
        assert!(spaced(OTOCO).contains(r#""price": "190.00", "#));
        check_examples(spaced);
    }

    #[test]
    fn duplicate_key_at_root() {
        let body = edit(
            MARKET_BUY,
            r#""session":"NORMAL""#,
            r#""session":"NORMAL","session":"AM""#,
        );
        let e = parse(&body).unwrap_err();
        assert_eq!(e.code(), "duplicate_key");
        assert_eq!(e.message(), "duplicate key \"session\" at top level");
    }

    #[test]
    fn duplicate_key_in_leg_names_path() {
        let body = edit(
            OCO,
            r#""quantity":10}]}]}"#,
            r#""quantity":10},{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":1,"quantity":101}]}]}"#,
        );
        let e = parse(&body).unwrap_err();
        assert_eq!(e.code(), "duplicate_key");
        assert_eq!(
            e.message(),
            "duplicate key \"quantity\" at childOrderStrategies[1].orderLegCollection[1]"
        );
    }

    #[test]
    fn duplicate_key_in_nested_child_and_instrument() {
        let body = edit(
            OTOCO,
            r#""price":"210.00""#,
            r#""price":"210.00","price":"1.00""#,
        );
        assert_eq!(code(&body), "duplicate_key");
        let body = edit(
            OTOCO,
            r#""symbol":"AAPL"}"#,
            r#""symbol":"AAPL","symbol":"TSLA"}"#,
        );
        let e = parse(&body).unwrap_err();
        assert_eq!(
            e.message(),
            "duplicate key \"symbol\" at orderLegCollection[0].instrument"
        );
    }

    #[test]
    fn duplicate_key_inside_unknown_field() {
        let body = edit(MARKET_BUY, "{", r#"{"x":{"y":[1,{"z":1,"z":2}]},"#);
        let e = parse(&body).unwrap_err();
        assert_eq!(e.code(), "duplicate_key");
        assert_eq!(e.message(), "duplicate key \"z\" at x.y[1]");
    }

    #[test]
    fn duplicate_key_spelled_with_escape() {
        let body = edit(
            MARKET_BUY,
            r#""quantity":10"#,
            r#""quantity":1,"quan\u0074ity":101"#,
        );
        assert_eq!(code(&body), "duplicate_key");
    }

    #[test]
    fn duplicate_quantity_dodge_refused() {
        let body = edit(
            MARKET_BUY,
            r#""quantity":10"#,
            r#""quantity":1,"quantity":101"#,
        );
        assert_eq!(code(&body), "duplicate_key");
    }

    #[test]
    fn echoed_key_is_clipped_and_escaped() {
        let long = "k".repeat(200);
        let body = format!(r#"{{"{long}":1,"{long}":2}}"#);
        let msg = parse(&body).unwrap_err().message();
        assert!(msg.len() < 80 && msg.contains("kkk..."), "{msg}");
        let msg = parse(r#"{"a\nb\"":1,"a\nb\"":2}"#).unwrap_err().message();
        assert_eq!(msg, r#"duplicate key "a\nb\"" at top level"#);
        let body = edit(MARKET_BUY, r#""MARKET""#, r#""MARKET\u0000x""#);
        let msg = parse(&body).unwrap_err().message();
        assert!(msg.contains("\\u{0}"), "{msg}");
    }

    #[test]
    fn quantity_hidden_in_second_leg() {
        let body = with_tsla_leg(101);
        let s = ok(&body);
        assert_eq!((s.max_quantity, s.total_quantity), (101, 111));
        assert_eq!(s.symbols, strs(&["AAPL", "TSLA"]));
    }

    #[test]
    fn quantity_hidden_in_grandchild() {
        let body = edit(
            OTOCO,
            r#""STOP","stopPrice":"180.00""#,
            r#""STOP","stopPrice":"180.00","quantity":101"#,
        );
        let s = ok(&body);
        assert_eq!((s.max_quantity, s.max_order_quantity), (101, 101));
        assert_eq!(s.notional, None);
        // The node-level quantity drives that node's notional.
        let body = edit(
            OCO,
            r#""STOP","stopPrice":"180.00""#,
            r#""LIMIT","price":"180.00","quantity":101"#,
        );
        assert_eq!(ok(&body).notional, Some(d("20280")));
        let body = edit(OTOCO, r#""quantity":10}]}]}]}"#, r#""quantity":101}]}]}]}"#);
        let s = ok(&body);
        assert_eq!(s.max_quantity, 101);
        assert_eq!(s.legs.last().map(|l| l.quantity), Some(101));
    }

    #[test]
    fn encoding_errors() {
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(MARKET_BUY.as_bytes());
        assert_eq!(
            parse_order(JSON, &bom).unwrap_err().code(),
            "byte_order_mark"
        );
        let bad = MARKET_BUY.replace("AAPL", "AA\u{e9}L");
        let mut bytes = bad.into_bytes();
        let at = bytes.iter().position(|&b| b == 0xC3).unwrap();
        bytes[at] = 0xFF;
        assert_eq!(
            parse_order(JSON, &bytes).unwrap_err().code(),
            "invalid_utf8"
        );
        assert_eq!(parse_order(JSON, b"").unwrap_err().code(), "malformed_json");
        assert_eq!(code("   "), "malformed_json");
        // A lone surrogate escape is not a Unicode string.
        assert_eq!(
            code(&edit(MARKET_BUY, "AAPL", r"AA\ud800")),
            "malformed_json"
        );
    }

    #[test]
    fn json_errors() {
        for (from, to) in [
            (r#""price":"425.50""#, r#""price":NaN"#),
            (r#""price":"425.50""#, r#""price":Infinity"#),
            (r#""price":"425.50""#, r#""price":-Infinity"#),
            (r#""price":"425.50""#, r#""price":1e999"#),
            (r#""quantity":5}]}"#, r#""quantity":5}]}x"#),
            (r#""quantity":5}]}"#, r#""quantity":5}]}{}"#),
            (r#""quantity":5}]}"#, r#""quantity":5}],}"#),
            (r#""quantity":5}]}"#, r#""quantity":5}]"#),
            (r#""price":"425.50""#, r#"'price':"425.50""#),
        ] {
            assert_eq!(code(&edit(LIMIT_SELL, from, to)), "malformed_json", "{to}");
        }
        assert_eq!(code("[]"), "invalid_order");
        assert_eq!(code("\"x\""), "invalid_order");
        assert_eq!(code("null"), "invalid_order");
    }

    fn nested(levels: usize) -> String {
        let inner = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        edit(MARKET_BUY, "{", &format!(r#"{{"x":{inner},"#))
    }

    #[test]
    fn depth_limit() {
        // The root object is level 1. At the limit the depth check passes
        // and the key allowlist is what refuses `x`.
        assert_eq!(
            parse(&nested(MAX_DEPTH - 1)).unwrap_err().message(),
            "top level: unknown field `x`"
        );
        let e = parse(&nested(MAX_DEPTH)).unwrap_err();
        assert_eq!(e.code(), "too_deep");
        assert!(
            e.message()
                .starts_with("JSON nested deeper than 16 levels at x[0][0]")
        );
        // Far past serde_json's own limit: still ours, no stack growth.
        assert_eq!(code(&nested(100_000)), "too_deep");
    }

    fn trigger_with_children(n: usize) -> String {
        let kid = r#"{"session":"NORMAL","duration":"DAY","orderType":"MARKET","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":1}]}"#;
        let kids = vec![kid; n].join(",");
        edit(
            MARKET_BUY,
            r#""SINGLE""#,
            &format!(r#""TRIGGER","childOrderStrategies":[{kids}]"#),
        )
    }

    #[test]
    fn order_node_limit() {
        assert_eq!(
            ok(&trigger_with_children(MAX_ORDER_NODES - 1)).order_count,
            32
        );
        let e = parse(&trigger_with_children(MAX_ORDER_NODES)).unwrap_err();
        assert_eq!(e.code(), "invalid_order");
        assert!(
            e.message().starts_with("childOrderStrategies[31]:"),
            "{}",
            e.message()
        );
    }

    fn with_legs(n: usize) -> String {
        let leg = r#"{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":1}"#;
        let legs = vec![leg; n].join(",");
        edit(
            MARKET_BUY,
            r#"[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]"#,
            &format!("[{legs}]"),
        )
    }

    #[test]
    fn leg_limit() {
        let s = ok(&with_legs(MAX_LEGS));
        assert_eq!((s.legs.len(), s.total_quantity), (64, 64));
        assert_eq!(code(&with_legs(MAX_LEGS + 1)), "invalid_order");
        // Counted over the whole tree, not per node.
        let s = ok(&trigger_with_children(31));
        assert_eq!(s.legs.len(), 32);
    }

    #[test]
    fn content_types() {
        let body = MARKET_BUY.as_bytes();
        for ct in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json; charset=UTF-8",
            "application/json;charset=\"utf-8\"",
            "application/json ; charset=utf-8 ",
            "application/json; foo=bar",
        ] {
            assert!(parse_order(Some(ct.as_bytes()), body).is_ok(), "{ct}");
        }
        for ct in [
            "text/plain",
            "application/jsonx",
            "application/json; charset=latin1",
            "application/json; charset=utf-8; charset=latin1",
            "application/json; charset=utf8",
            "application/json;",
            "application/json; charset",
            "application/json; charset=\"utf-8",
            "application/x-www-form-urlencoded",
            "application/json, text/plain",
            "",
        ] {
            let e = parse_order(Some(ct.as_bytes()), body).unwrap_err();
            assert_eq!(e.code(), "bad_content_type", "{ct}");
        }
        assert_eq!(
            parse_order(None, body).unwrap_err().code(),
            "bad_content_type"
        );
        let latin1: &[u8] = b"application/json; x=\xE9";
        assert_eq!(
            parse_order(Some(latin1), body).unwrap_err().code(),
            "bad_content_type"
        );
    }

    fn limit_price(p: &str) -> Result<OrderSummary, OrderError> {
        parse(&edit(LIMIT_SELL, r#""425.50""#, p))
    }

    #[test]
    fn prices() {
        let s = limit_price(r#""425.50""#).unwrap();
        let n = limit_price("425.5").unwrap();
        assert_eq!(s.price, Some(Decimal4(4_255_000)));
        assert_eq!(s.price, n.price);
        assert_eq!(limit_price("425.50").unwrap().price, s.price);
        assert_eq!(limit_price("425").unwrap().price, Some(d("425.0")));
        assert_eq!(limit_price(r#""0.0001""#).unwrap().price, Some(Decimal4(1)));
        assert_eq!(limit_price("0.0001").unwrap().price, Some(Decimal4(1)));
        for p in [
            r#""0.00001""#,
            "0.00001",
            r#""-1""#,
            "-1",
            "0",
            r#""0.0""#,
            r#""1e3""#,
            "1e-5",
            "1e20",
            r#"" 1""#,
            r#""+1""#,
            r#"".5""#,
            r#""1.""#,
            r#""""#,
            "null",
            "true",
            "[1]",
            r#""99999999999999999999""#,
        ] {
            let e = limit_price(p).unwrap_err();
            assert_eq!(e.code(), "invalid_order", "{p}");
            assert!(e.message().starts_with("price:"), "{}", e.message());
        }
    }

    #[test]
    fn other_price_fields() {
        let trailing = edit(STOP_SELL, r#""STOP""#, r#""TRAILING_STOP""#);
        let body = edit(
            &trailing,
            r#""180.00""#,
            r#""180.00","stopPriceOffset":-0.5,"activationPrice":"200""#,
        );
        assert_eq!(ok(&body).stop_price, Some(d("180")));
        let body = edit(
            &trailing,
            r#""180.00""#,
            r#""180.00","stopPriceOffset":"0.00001""#,
        );
        assert_eq!(code(&body), "invalid_order");
        let body = edit(
            STOP_SELL,
            r#""180.00""#,
            r#""180.00","activationPrice":"-3""#,
        );
        assert_eq!(code(&body), "invalid_order");
        let body = edit(STOP_SELL, r#""180.00""#, r#""-180.00""#);
        assert_eq!(code(&body), "invalid_order");
    }

    #[test]
    fn required_prices() {
        let no_price = LIMIT_SELL.replace(r#""price":"425.50","#, "");
        assert_eq!(
            parse(&no_price).unwrap_err().message(),
            "price: is required for a LIMIT order"
        );
        let no_stop = STOP_SELL.replace(r#""stopPrice":"180.00","#, "");
        assert_eq!(code(&no_stop), "invalid_order");
        let stop_limit = edit(STOP_SELL, r#""STOP""#, r#""STOP_LIMIT""#);
        assert_eq!(code(&stop_limit), "invalid_order");
        let stop_limit = edit(&stop_limit, r#""180.00""#, r#""180.00","price":"179.50""#);
        let s = ok(&stop_limit);
        // The limit price, not the trigger, bounds what a fill costs.
        assert_eq!(s.notional, Some(d("1795")));
        let no_price = VERTICAL.replace(r#""price":"4.10","#, "");
        assert_eq!(code(&no_price), "invalid_order");
    }

    #[test]
    fn quantities() {
        for (q, want) in [
            ("10.0", 10),
            ("1", 1),
            ("1000000000", 1_000_000_000),
            ("1e2", 100),
        ] {
            let body = edit(
                MARKET_BUY,
                r#""quantity":10"#,
                &format!(r#""quantity":{q}"#),
            );
            assert_eq!(ok(&body).max_quantity, want, "{q}");
        }
        for q in [
            "\"10\"",
            "0",
            "-1",
            "1.5",
            "0.0",
            "1000000001",
            "1e10",
            "null",
            "18446744073709551615",
            "99999999999999999999",
        ] {
            let body = edit(
                MARKET_BUY,
                r#""quantity":10"#,
                &format!(r#""quantity":{q}"#),
            );
            assert_eq!(code(&body), "invalid_order", "{q}");
        }
        let missing = MARKET_BUY.replace(r#","quantity":10"#, "");
        assert_eq!(
            parse(&missing).unwrap_err().message(),
            "orderLegCollection[0].quantity: is required"
        );
        let node = edit(VERTICAL, r#""quantity":1,"#, r#""quantity":-1,"#);
        assert_eq!(code(&node), "invalid_order");
    }

    #[test]
    fn structure_rules() {
        let one_child = OCO.replace(
            r#",{"session":"NORMAL","duration":"DAY","orderType":"STOP","stopPrice":"180.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#,
            "",
        );
        assert_ne!(one_child, OCO);
        assert_eq!(code(&one_child), "invalid_order");
        assert_eq!(code(r#"{"orderStrategyType":"OCO"}"#), "invalid_order");
        let oco_legs = edit(
            OCO,
            r#""OCO","#,
            r#""OCO","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"TSLA"},"quantity":1}],"#,
        );
        assert_eq!(code(&oco_legs), "invalid_order");
        for (from, to) in [
            (r#""orderStrategyType":"SINGLE","#, ""),
            (r#""SINGLE""#, r#""single""#),
            (r#""SINGLE""#, "1"),
            (r#""session":"NORMAL","#, ""),
            (r#""NORMAL""#, r#""NIGHT""#),
            (r#""DAY""#, r#""FOREVER""#),
            (r#""MARKET""#, r#""MARKET ""#),
            (r#""BUY""#, r#""BUY_ALL""#),
            (r#""EQUITY""#, r#""FUTURE""#),
            (
                r#""SINGLE""#,
                r#""SINGLE","complexOrderStrategyType":"WHEEL""#,
            ),
            (r#""SINGLE""#, r#""SINGLE","childOrderStrategies":{}"#),
            (r#""SINGLE""#, r#""SINGLE","childOrderStrategies":[1]"#),
            (r#"[{"instruction""#, r#"[[]],"x":[{"instruction""#),
            (r#"[{"instruction""#, r#"[1,{"instruction""#),
            (r#"{"assetType":"EQUITY","symbol":"AAPL"}"#, r#"["AAPL"]"#),
            (r#""symbol":"AAPL""#, r#""symbol":"""#),
            (r#""symbol":"AAPL""#, r#""symbol":" AAPL""#),
            (r#""symbol":"AAPL""#, r#""symbol":"AAPL ""#),
            (r#""symbol":"AAPL""#, r#""symbol":"AA\tPL""#),
            (r#""symbol":"AAPL""#, r#""symbol":"AAP\u00c9""#),
            (r#""symbol":"AAPL""#, r#""symbol":5"#),
            (r#","symbol":"AAPL""#, ""),
        ] {
            assert_eq!(code(&edit(MARKET_BUY, from, to)), "invalid_order", "{to}");
        }
        let empty_legs = MARKET_BUY.replace(
            r#"[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]"#,
            "[]",
        );
        assert_eq!(code(&empty_legs), "invalid_order");
        let long = "A".repeat(MAX_SYMBOL_BYTES + 1);
        assert_eq!(code(&edit(MARKET_BUY, "AAPL", &long)), "invalid_order");
        ok(&edit(MARKET_BUY, "AAPL", &long[1..]));
        // Unknown fields are refused, whatever their type.
        let e = parse(&edit(
            MARKET_BUY,
            "{",
            r#"{"taxLotMethod":"FIFO","extra":[null,true,{"a":1.5}],"#,
        ))
        .unwrap_err();
        assert_eq!(e.message(), "top level: unknown field `extra`");
    }

    #[test]
    fn notional_out_of_range() {
        let big = edit(LIMIT_SELL, r#""425.50""#, r#""900000000000000""#);
        let e = parse(&big).unwrap_err();
        assert_eq!(e.message(), "top level: notional out of range");
        // Each node fits but the sum does not.
        let half = "500000000000000";
        let body = OCO
            .replace(r#""210.00""#, &format!("\"{half}\""))
            .replace(
                r#""STOP","stopPrice":"180.00""#,
                &format!(r#""LIMIT","price":"{half}""#),
            )
            .replace(r#""quantity":10"#, r#""quantity":1"#);
        assert_eq!(
            parse(&body).unwrap_err().message(),
            "childOrderStrategies[1]: notional out of range"
        );
        // No price anywhere in a node → no notional, but no range error either.
        let mixed = edit(
            OCO,
            r#""orderType":"LIMIT","price":"210.00""#,
            r#""orderType":"MARKET""#,
        );
        assert_eq!(ok(&mixed).notional, None);
    }

    #[test]
    fn decimal_parse() {
        assert_eq!(Decimal4::parse("425.50"), Some(Decimal4(4_255_000)));
        assert_eq!(Decimal4::parse("10"), Some(Decimal4(100_000)));
        assert_eq!(Decimal4::parse("0.0001"), Some(Decimal4(1)));
        assert_eq!(Decimal4::parse("-1.5"), Some(Decimal4(-15_000)));
        assert_eq!(Decimal4::parse("-0.5"), Some(Decimal4(-5_000)));
        assert_eq!(
            Decimal4::parse("922337203685477.5807"),
            Some(Decimal4(i64::MAX))
        );
        assert_eq!(
            Decimal4::parse("-922337203685477.5808"),
            Some(Decimal4(i64::MIN))
        );
        for s in [
            "",
            "-",
            ".5",
            "1.",
            "1.00001",
            "+1",
            "1e3",
            "1E3",
            " 1",
            "1 ",
            "1,5",
            "0x10",
            "922337203685477.5808",
            "--1",
            "1.-5",
            "1..5",
            "NaN",
            "inf",
            "١",
            "99999999999999999999999999999999999999999999",
        ] {
            assert_eq!(Decimal4::parse(s), None, "{s}");
        }
    }

    #[test]
    fn decimal_display_round_trips() {
        assert_eq!(Decimal4(4_255_000).to_string(), "425.5");
        assert_eq!(Decimal4(0).to_string(), "0.0");
        assert_eq!(Decimal4(100_000).to_string(), "10.0");
        assert_eq!(Decimal4(1).to_string(), "0.0001");
        assert_eq!(Decimal4(-15_000).to_string(), "-1.5");
        assert_eq!(Decimal4(-5_000).to_string(), "-0.5");
        assert_eq!(Decimal4(1_230).to_string(), "0.123");
        assert_eq!(Decimal4(i64::MIN).to_string(), "-922337203685477.5808");
        for v in [
            0,
            1,
            -1,
            9_999,
            10_000,
            4_255_000,
            123_456_789,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(Decimal4::parse(&Decimal4(v).to_string()), Some(Decimal4(v)));
        }
    }

    fn message(body: &str) -> String {
        match parse(body) {
            Ok(s) => panic!("accepted {body}: {s:?}"),
            Err(e) => {
                assert_eq!(e.code(), "invalid_order", "{}", e.message());
                e.message()
            }
        }
    }

    #[test]
    fn unknown_order_key_refused() {
        let body = edit(MARKET_BUY, "{", r#"{"Quantity":1000,"#);
        assert_eq!(message(&body), "top level: unknown field `Quantity`");
        let body = edit(
            MARKET_BUY,
            r#""quantity":10"#,
            r#""quantity":10,"Quantity":1000"#,
        );
        assert_eq!(
            message(&body),
            "orderLegCollection[0]: unknown field `Quantity`"
        );
        // Another spelling that only differs by a control character, echoed
        // escaped.
        let body = edit(
            MARKET_BUY,
            r#""quantity":10"#,
            r#""quantity":10,"quantity\u0000":1000"#,
        );
        assert_eq!(
            message(&body),
            "orderLegCollection[0]: unknown field `quantity\\u{0}`"
        );
        // Also deep in the tree, with the path of the node.
        let body = edit(OTOCO, r#""STOP","#, r#""STOP","orderQuantity":5,"#);
        assert_eq!(
            message(&body),
            "childOrderStrategies[0].childOrderStrategies[1]: unknown field `orderQuantity`"
        );
    }

    #[test]
    fn unknown_instrument_key_refused() {
        for extra in [
            r#""cusip":"037833100""#,
            r#""Symbol":"GME""#,
            r#""type":"EQUITY""#,
        ] {
            let body = edit(
                MARKET_BUY,
                r#""symbol":"AAPL""#,
                &format!(r#""symbol":"AAPL",{extra}"#),
            );
            assert!(
                message(&body).starts_with("orderLegCollection[0].instrument: unknown field `"),
                "{extra}"
            );
        }
    }

    #[test]
    fn release_time_refused() {
        let body = edit(LIMIT_SELL, "{", r#"{"releaseTime":"2025-06-19","#);
        let e = parse_order(JSON, body.as_bytes()).unwrap_err();
        assert_eq!(e.code(), "invalid_order");
        assert!(e.message().contains("releaseTime"), "{}", e.message());
    }

    #[test]
    fn documented_optional_fields_accepted() {
        let body = edit(
            LIMIT_SELL,
            "{",
            r#"{"cancelTime":"2025-06-20","specialInstruction":"ALL_OR_NONE","taxLotMethod":"FIFO","destinationLinkName":"AutoRoute","requestedDestination":"AUTO","stopType":"STANDARD","priceLinkBasis":"MANUAL","priceLinkType":"VALUE","activationPrice":"400","#,
        );
        let body = edit(
            &body,
            r#""quantity":5"#,
            r#""quantity":5,"positionEffect":"CLOSING","quantityType":"SHARES","divCapGains":"REINVEST""#,
        );
        assert_eq!(ok(&body).notional, Some(d("2127.5")));
        for (from, to) in [
            (r#""ALL_OR_NONE""#, r#""ALL_OR_SOME""#),
            (r#""FIFO""#, r#""fifo""#),
            (r#""AUTO""#, r#""DARK""#),
            (r#""CLOSING""#, r#""CLOSE""#),
            (r#""2025-06-20""#, "20250620"),
            (r#""REINVEST""#, "true"),
        ] {
            assert_eq!(code(&edit(&body, from, to)), "invalid_order", "{to}");
        }
    }

    #[test]
    fn quantity_type_other_than_shares_refused() {
        for t in ["ALL_SHARES", "DOLLARS"] {
            let body = edit(
                MARKET_BUY,
                r#""quantity":10"#,
                &format!(r#""quantity":10,"quantityType":"{t}""#),
            );
            assert_eq!(
                message(&body),
                format!(
                    "orderLegCollection[0].quantityType: {t} makes the quantity something the proxy cannot judge; only SHARES is accepted"
                )
            );
        }
        let shares = edit(
            MARKET_BUY,
            r#""quantity":10"#,
            r#""quantity":10,"quantityType":"SHARES""#,
        );
        assert_eq!(ok(&shares).total_quantity, 10);
        assert_eq!(
            code(&edit(&shares, r#""SHARES""#, r#""shares""#)),
            "invalid_order"
        );
    }

    #[test]
    fn price_link_other_than_manual_refused() {
        let body = edit(
            LIMIT_SELL,
            r#""425.50","#,
            r#""425.50","priceLinkBasis":"ASK","priceLinkType":"PERCENT","#,
        );
        assert!(
            message(&body)
                .starts_with("priceLinkBasis: ASK makes the price relative to the market"),
            "{}",
            message(&body)
        );
        let body = edit(
            LIMIT_SELL,
            r#""425.50","#,
            r#""425.50","priceLinkType":"TICK","#,
        );
        assert_eq!(
            message(&body),
            "priceLinkType: is only accepted with priceLinkBasis MANUAL"
        );
        let body = edit(
            LIMIT_SELL,
            r#""425.50","#,
            r#""425.50","priceLinkBasis":"MANUAL","#,
        );
        assert_eq!(ok(&body).price, Some(d("425.5")));
        let body = edit(
            LIMIT_SELL,
            r#""425.50","#,
            r#""425.50","priceLinkBasis":"MANUAL","priceLinkType":"PERCENT","#,
        );
        assert_eq!(ok(&body).price, Some(d("425.5")));
        let body = edit(
            LIMIT_SELL,
            r#""425.50","#,
            r#""425.50","priceLinkBasis":"SOMEWHERE","#,
        );
        assert_eq!(code(&body), "invalid_order");
    }

    #[test]
    fn stop_link_only_on_trailing_orders() {
        let body = edit(
            STOP_SELL,
            r#""180.00""#,
            r#""180.00","stopPriceOffset":"1.5""#,
        );
        assert_eq!(
            message(&body),
            "stopPriceOffset: is only accepted on a TRAILING_STOP or TRAILING_STOP_LIMIT order, not on a STOP order"
        );
        for extra in [
            r#""stopPriceLinkBasis":"LAST""#,
            r#""stopPriceLinkType":"PERCENT""#,
        ] {
            let body = edit(LIMIT_SELL, r#""425.50","#, &format!(r#""425.50",{extra},"#));
            assert_eq!(code(&body), "invalid_order", "{extra}");
        }
        let trailing = edit(
            STOP_SELL,
            r#""STOP","stopPrice":"180.00""#,
            r#""TRAILING_STOP","stopPriceLinkBasis":"MARK","stopPriceLinkType":"PERCENT","stopPriceOffset":5"#,
        );
        let s = ok(&trailing);
        assert_eq!(
            (s.order_type.as_deref(), s.notional),
            (Some("TRAILING_STOP"), None)
        );
        let trailing_limit = edit(
            &trailing,
            r#""TRAILING_STOP""#,
            r#""TRAILING_STOP_LIMIT","price":"170""#,
        );
        assert_eq!(ok(&trailing_limit).price, Some(d("170")));
        assert_eq!(
            code(&edit(&trailing, r#""MARK""#, r#""MOON""#)),
            "invalid_order"
        );
    }

    #[test]
    fn stop_type_values() {
        for t in STOP_TYPES {
            let body = edit(
                STOP_SELL,
                r#""180.00""#,
                &format!(r#""180.00","stopType":"{t}""#),
            );
            ok(&body);
        }
        let body = edit(STOP_SELL, r#""180.00""#, r#""180.00","stopType":"CLOSE""#);
        assert_eq!(code(&body), "invalid_order");
    }

    #[test]
    fn price_only_where_used() {
        let body = edit(MARKET_BUY, r#""MARKET""#, r#""MARKET","price":"1.00""#);
        assert_eq!(message(&body), "price: is not used by a MARKET order");
        for t in [
            "STOP",
            "TRAILING_STOP",
            "MARKET_ON_CLOSE",
            "EXERCISE",
            "CABINET",
            "NON_MARKETABLE",
            "NET_ZERO",
        ] {
            let body = edit(
                MARKET_BUY,
                r#""MARKET""#,
                &format!(r#""{t}","price":"1.00","stopPrice":"1.00""#),
            );
            assert!(message(&body).starts_with("price: is not used by"), "{t}");
        }
        let body = edit(LIMIT_SELL, r#""425.50""#, r#""425.50","stopPrice":"400""#);
        assert_eq!(message(&body), "stopPrice: is not used by a LIMIT order");
        let body = edit(OCO, r#""OCO","#, r#""OCO","price":"1.00","#);
        assert_eq!(
            message(&body),
            "price: is not used by an order without an orderType"
        );
        // In a grandchild, the path says where.
        let body = edit(OTOCO, r#""STOP","#, r#""STOP","price":"179.00","#);
        assert_eq!(
            message(&body),
            "childOrderStrategies[0].childOrderStrategies[1].price: is not used by a STOP order"
        );
        for t in USES_PRICE {
            let stop = if NEEDS_STOP.contains(t) {
                r#","stopPrice":"400""#
            } else {
                ""
            };
            let body = edit(LIMIT_SELL, r#""LIMIT""#, &format!(r#""{t}"{stop}"#));
            assert_eq!(ok(&body).price, Some(d("425.5")), "{t}");
        }
    }

    #[test]
    fn unsupported_strategies_refused() {
        for strategy in [
            "CANCEL",
            "RECALL",
            "PAIR",
            "FLATTEN",
            "TWO_DAY_SWAP",
            "BLAST_ALL",
        ] {
            assert!(STRATEGIES.contains(&strategy));
            let body = edit(MARKET_BUY, r#""SINGLE""#, &format!("\"{strategy}\""));
            assert_eq!(
                message(&body),
                format!("orderStrategyType: {strategy} orders are not supported through the proxy")
            );
        }
        let body = edit(OTOCO, r#""OCO""#, r#""FLATTEN""#);
        assert_eq!(
            message(&body),
            "childOrderStrategies[0].orderStrategyType: FLATTEN orders are not supported through the proxy"
        );
    }

    #[test]
    fn lower_case_symbol_refused() {
        for sym in ["gme", "Gme", "GMe", "brk.b"] {
            let body = edit(MARKET_BUY, "AAPL", sym);
            assert_eq!(
                message(&body),
                "orderLegCollection[0].instrument.symbol: must not contain lower-case letters (Schwab symbols are upper case)",
                "{sym}"
            );
        }
        ok(&edit(MARKET_BUY, "AAPL", "BRK.B"));
        ok(&edit(MARKET_BUY, "AAPL", "$SPX"));
        let option = edit(OPTION_BUY, "AAPL  250620C", "aapl  250620c");
        assert_eq!(code(&option), "invalid_order");
    }

    #[test]
    fn inner_spaces_only_in_option_symbols() {
        let body = edit(MARKET_BUY, "AAPL", "G ME");
        assert_eq!(
            message(&body),
            "orderLegCollection[0].instrument.symbol: must not contain spaces in a EQUITY symbol (only OPTION symbols have them)"
        );
        let s = ok(OPTION_BUY);
        assert_eq!(s.symbols, strs(&["AAPL  250620C00200000"]));
        // The same OSI symbol claimed as an equity is refused.
        let as_equity = edit(OPTION_BUY, r#""OPTION""#, r#""EQUITY""#);
        assert_eq!(code(&as_equity), "invalid_order");
        // Leading and trailing spaces stay refused, options included.
        for sym in [" AAPL  250620C00200000", "AAPL  250620C00200000 "] {
            assert_eq!(
                code(&edit(OPTION_BUY, "AAPL  250620C00200000", sym)),
                "invalid_order"
            );
        }
    }

    const EXCHANGE: &str = r#"{"session":"NORMAL","duration":"DAY","orderType":"MARKET","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"EXCHANGE","instrument":{"assetType":"MUTUAL_FUND","symbol":"VFIAX"},"quantity":10,"toSymbol":"GME"}]}"#;

    #[test]
    fn to_symbol_appears_in_symbols() {
        let s = ok(EXCHANGE);
        assert_eq!(s.symbols, strs(&["GME", "VFIAX"]));
        // It is where the position goes, not a leg of its own.
        assert_eq!(s.legs.len(), 1);
        assert_eq!(s.legs[0].symbol, "VFIAX");
        assert_eq!(s.total_quantity, 10);
        for bad in [r#""gme""#, r#""G ME""#, r#"" GME""#, r#""""#, "5"] {
            let body = edit(EXCHANGE, r#""GME""#, bad);
            assert!(
                message(&body).starts_with("orderLegCollection[0].toSymbol: "),
                "{bad}"
            );
        }
    }

    #[test]
    fn notional_only_from_a_capping_price() {
        assert_eq!(ok(MARKET_BUY).notional, None);
        assert_eq!(ok(STOP_SELL).notional, None);
        let credit = edit(VERTICAL, r#""NET_DEBIT""#, r#""NET_CREDIT""#);
        assert_eq!(ok(&credit).notional, None);
        let trailing_limit = edit(LIMIT_SELL, r#""LIMIT""#, r#""TRAILING_STOP_LIMIT""#);
        assert_eq!(ok(&trailing_limit).notional, None);
        assert_eq!(ok(LIMIT_SELL).notional, Some(d("2127.5")));
        let on_close = edit(LIMIT_SELL, r#""LIMIT""#, r#""LIMIT_ON_CLOSE""#);
        assert_eq!(ok(&on_close).notional, Some(d("2127.5")));
        let stop_limit = edit(
            LIMIT_SELL,
            r#""LIMIT""#,
            r#""STOP_LIMIT","stopPrice":"430""#,
        );
        // The limit price, never the trigger.
        assert_eq!(ok(&stop_limit).notional, Some(d("2127.5")));
        assert_eq!(ok(VERTICAL).notional, Some(d("410")));
    }

    #[test]
    fn sessions_and_durations_over_the_tree() {
        let kid = r#"{"session":"SEAMLESS","duration":"GOOD_TILL_CANCEL","orderType":"LIMIT","price":"210.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#;
        let body = edit(
            LIMIT_SELL,
            r#""SINGLE""#,
            &format!(r#""TRIGGER","childOrderStrategies":[{kid}]"#),
        );
        let s = ok(&body);
        // The root's own fields stay the root's.
        assert_eq!(
            (s.session.as_deref(), s.duration.as_deref()),
            (Some("NORMAL"), Some("DAY"))
        );
        assert_eq!(s.sessions, strs(&["NORMAL", "SEAMLESS"]));
        assert_eq!(s.durations, strs(&["DAY", "GOOD_TILL_CANCEL"]));
        // An OCO parent has none of its own.
        let s = ok(OCO);
        assert_eq!(
            (s.sessions, s.durations),
            (strs(&["NORMAL"]), strs(&["DAY"]))
        );
    }

    #[test]
    fn max_order_quantity_is_the_biggest_order() {
        let body = edit(VERTICAL, r#""quantity":1,"#, r#""quantity":100000,"#);
        let s = ok(&body);
        assert_eq!(
            (s.max_order_quantity, s.max_quantity, s.total_quantity),
            (100_000, 100_000, 2)
        );
        // 4.10 × 100,000 spreads × 100.
        assert_eq!(s.notional, Some(d("41000000")));
        // Without a node quantity: the sum of that order's legs.
        let body = with_tsla_leg(7);
        let s = ok(&body);
        assert_eq!((s.max_order_quantity, s.max_quantity), (17, 10));
        // A node quantity below its largest leg does not hide it.
        let body = edit(VERTICAL, r#""quantity":1}]"#, r#""quantity":50}]"#);
        assert_eq!(ok(&body).max_order_quantity, 50);
        // The biggest node wins, wherever it is.
        let body = edit(OTOCO, r#""quantity":10}]}]}]}"#, r#""quantity":250}]}]}]}"#);
        assert_eq!(ok(&body).max_order_quantity, 250);
    }

    /// Deterministic mutations of valid orders: never a panic, and whatever
    /// is accepted still respects the limits.
    #[test]
    fn mutations_never_panic() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let bases = [OTOCO.as_bytes(), VERTICAL.as_bytes(), OPTION_BUY.as_bytes()];
        let interesting = b"{}[]\",:.-+0123456789eE\\ \x00\xEF\xBB\xBF\xFFnt";
        let mut accepted = 0;
        for round in 0..2_000 {
            let base = bases[round % bases.len()];
            let mut body = base.to_vec();
            for _ in 0..1 + next() % 4 {
                let len = body.len().max(1);
                let at = (next() as usize) % len;
                let byte = if next() % 2 == 0 {
                    interesting[(next() as usize) % interesting.len()]
                } else {
                    next() as u8
                };
                match next() % 5 {
                    0 if at < body.len() => body[at] = byte,
                    1 => body.insert(at.min(body.len()), byte),
                    2 if at < body.len() => {
                        body.remove(at);
                    }
                    3 => {
                        let end = (at + (next() as usize) % 64).min(body.len());
                        let copy = body[at.min(end)..end].to_vec();
                        let to = (next() as usize) % (body.len() + 1);
                        body.splice(to..to, copy);
                    }
                    _ => body.truncate(at),
                }
            }
            if let Ok(s) = parse_order(JSON, &body) {
                accepted += 1;
                assert!(s.legs.len() <= MAX_LEGS && s.order_count <= MAX_ORDER_NODES);
                assert!(
                    s.legs
                        .iter()
                        .all(|l| l.quantity >= 1 && l.quantity <= s.max_quantity)
                );
                assert_eq!(
                    s.total_quantity,
                    s.legs.iter().map(|l| l.quantity).sum::<i64>()
                );
                assert!(s.legs.iter().all(|l| l.quantity <= s.max_order_quantity));
                assert!(s.legs.iter().all(|l| s.symbols.contains(&l.symbol)));
            }
        }
        // Some mutations keep the order valid (inside a symbol, a digit).
        assert!(accepted > 0);
    }
}
