//! The route table and its strict matcher.
//!
//! Matching works on the raw request target, never on a normalised copy:
//! what is matched is exactly what is forwarded. The grammar refuses what a
//! path-confusion attack needs — dot segments (also encoded), empty segments,
//! backslashes, `;` parameters, control bytes, double encoding — instead of
//! decoding it. The one exception is a parameter declared `symbol`, which may
//! carry `%24` (`$`), `%2F` (`/`), `%20` and `%5E`, because real clients send
//! them; it is decoded for policy and forwarded raw.

use std::sync::Arc;

use serde::Deserialize;

use crate::config::ConfigIssue;

/// The Schwab profile, shipped in the binary.
pub const SCHWAB_ROUTES_YAML: &str = include_str!("../../config/routes/schwab.yaml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Method {
    GET,
    POST,
    PUT,
    DELETE,
}

impl Method {
    fn matches(self, m: &http::Method) -> bool {
        matches!(
            (self, m.as_str()),
            (Method::GET, "GET")
                | (Method::POST, "POST")
                | (Method::PUT, "PUT")
                | (Method::DELETE, "DELETE")
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BodyKind {
    #[default]
    None,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    AccountHash,
    Int64,
    Symbol,
    Market,
    Cusip,
}

impl ParamType {
    fn parse(s: &str) -> Option<ParamType> {
        Some(match s {
            "account_hash" => ParamType::AccountHash,
            "int64" => ParamType::Int64,
            "symbol" => ParamType::Symbol,
            "market" => ParamType::Market,
            "cusip" => ParamType::Cusip,
            _ => return None,
        })
    }

    /// Whether a raw segment is acceptable, without allocating.
    fn check(self, raw: &str) -> bool {
        let b = raw.as_bytes();
        match self {
            ParamType::AccountHash => {
                (1..=128).contains(&b.len()) && b.iter().all(u8::is_ascii_alphanumeric)
            }
            ParamType::Int64 => {
                (1..=19).contains(&b.len())
                    && b.iter().all(u8::is_ascii_digit)
                    && raw.parse::<i64>().is_ok()
            }
            ParamType::Market => {
                (1..=16).contains(&b.len()) && b.iter().all(u8::is_ascii_lowercase)
            }
            ParamType::Cusip => {
                (1..=12).contains(&b.len()) && b.iter().all(u8::is_ascii_alphanumeric)
            }
            ParamType::Symbol => {
                // Decoding allocates; only symbols that carry an encoded
                // slash can be path-like, so most symbols skip it.
                if raw.contains('%') || raw.contains('.') {
                    decode_symbol(raw).is_some()
                } else {
                    walk_symbol(raw, |_| ())
                }
            }
        }
    }

    /// Checks a raw segment and returns its decoded value.
    fn accept(self, raw: &str) -> Option<String> {
        match self {
            ParamType::Symbol => decode_symbol(raw),
            _ => self.check(raw).then(|| raw.to_owned()),
        }
    }
}

/// Decodes a symbol path segment; `None` if it holds anything but the
/// characters a ticker can have, or if the decoded symbol could act as a
/// path once an upstream decodes `%2F` (`..%2F..%2Ftrader`).
pub fn decode_symbol(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    (walk_symbol(raw, |c| out.push(c)) && !path_like(&out)).then_some(out)
}

/// True for a decoded symbol that contains a dot segment or an empty
/// segment when split at `/`. Real symbols with a slash are `/ES`,
/// `/ESZ25` and `AUD/CAD`: one leading slash or one inner slash between
/// non-dot parts.
fn path_like(decoded: &str) -> bool {
    let body = decoded.strip_prefix('/').unwrap_or(decoded);
    body.split('/')
        .any(|part| part.is_empty() || part.trim_matches('.').is_empty())
}

/// Walks a raw symbol segment, handing each decoded character to `push`;
/// false if the segment is not a valid symbol (1-64 characters, not blank).
fn walk_symbol(raw: &str, mut push: impl FnMut(char)) -> bool {
    let b = raw.as_bytes();
    let (mut i, mut len, mut blank) = (0, 0usize, true);
    while i < b.len() {
        let c = b[i];
        let decoded = if c == b'%' {
            let Some(hex) = b.get(i + 1..i + 3) else {
                return false;
            };
            i += 3;
            match hex {
                [b'2', b'4'] => '$',
                [b'2', b'F' | b'f'] => '/',
                [b'2', b'0'] => ' ',
                [b'5', b'E' | b'e'] => '^',
                _ => return false,
            }
        } else if c.is_ascii_alphanumeric() || b"$._-^".contains(&c) {
            i += 1;
            c as char
        } else {
            return false;
        };
        blank &= decoded == ' ';
        len += 1;
        push(decoded);
    }
    (1..=64).contains(&len) && !blank
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Param { name: Arc<str>, ty: ParamType },
}

/// One route as written in the table file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    name: String,
    method: Method,
    path: String,
    action: String,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    mutates: bool,
    #[serde(default)]
    body: BodyKind,
    #[serde(default)]
    trailing_slash: bool,
    /// The route group rate limits and address lists apply to; default
    /// `orders` for routes that mutate or carry an order body,
    /// `market_data` under `/marketdata/`, else `accounts`.
    #[serde(default)]
    group: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableSpec {
    profile: String,
    routes: Vec<RouteSpec>,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub method: Method,
    pub action: Arc<str>,
    /// Index into the match's params of the resource parameter.
    pub resource: Option<usize>,
    /// The resource parameter is an account hash: Cedar's resource is that
    /// `Account`; otherwise it is the API as a whole.
    pub resource_is_account: bool,
    pub mutates: bool,
    pub body: BodyKind,
    /// Rate limits and address lists per group (`orders`, `market_data`,
    /// `accounts`, or the table's own).
    pub group: Arc<str>,
    trailing_slash: bool,
    segments: Vec<Segment>,
    literal_count: usize,
}

#[derive(Debug)]
pub struct RouteTable {
    pub profile: String,
    pub routes: Vec<Route>,
}

/// Longest path, in segments, the matcher considers.
const MAX_SEGMENTS: usize = 16;

/// A request matched to a route.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub index: usize,
    /// (name, decoded value) per parameter, in path order.
    pub params: Vec<(Arc<str>, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// The target is malformed or holds a path-confusion trick (400).
    BadPath(&'static str),
    /// Well-formed, but no route (404).
    NoRoute,
}

impl RouteTable {
    pub fn schwab() -> Result<RouteTable, Vec<ConfigIssue>> {
        RouteTable::from_yaml(SCHWAB_ROUTES_YAML)
    }

    pub fn from_yaml(text: &str) -> Result<RouteTable, Vec<ConfigIssue>> {
        let spec: TableSpec = crate::config::yaml::from_str(text).map_err(|i| vec![i])?;
        let mut issues = Vec::new();
        let mut routes: Vec<Route> = Vec::new();
        for (i, r) in spec.routes.into_iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            let mut issue = |k: &str, m: String| {
                issues.push(ConfigIssue {
                    key: key(k),
                    message: m,
                    line: None,
                })
            };
            if routes.iter().any(|o| *o.name == *r.name) {
                issue("name", format!("route name `{}` is used twice", r.name));
            }
            if r.action.is_empty() || !r.action.bytes().all(|b| b.is_ascii_alphanumeric()) {
                issue("action", "must be a non-empty alphanumeric name".into());
            }
            let Some(rest) = r.path.strip_prefix('/') else {
                issue("path", "must start with `/`".into());
                continue;
            };
            let mut segments = Vec::new();
            let mut ok = true;
            for seg in rest.split('/') {
                if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    let (name, ty) = inner.split_once(':').unwrap_or((inner, ""));
                    match ParamType::parse(ty) {
                        Some(ty) if !name.is_empty() => segments.push(Segment::Param {
                            name: Arc::from(name),
                            ty,
                        }),
                        _ => {
                            issue(
                                "path",
                                format!(
                                    "`{seg}`: parameters are written {{name:type}} with a known type"
                                ),
                            );
                            ok = false;
                        }
                    }
                } else if seg.is_empty()
                    || seg == "."
                    || seg == ".."
                    || !seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
                {
                    issue("path", format!("literal segment `{seg}` is not allowed"));
                    ok = false;
                } else {
                    segments.push(Segment::Literal(seg.to_owned()));
                }
            }
            let resource = match &r.resource {
                None => None,
                Some(res) => {
                    let idx = segments
                        .iter()
                        .filter_map(|s| match s {
                            Segment::Param { name, .. } => Some(name),
                            Segment::Literal(_) => None,
                        })
                        .position(|n| **n == **res);
                    if idx.is_none() {
                        issue(
                            "resource",
                            format!("`{res}` is not a parameter of the path"),
                        );
                    }
                    idx
                }
            };
            let resource_is_account = resource
                .and_then(|i| {
                    segments
                        .iter()
                        .filter_map(|s| match s {
                            Segment::Param { ty, .. } => Some(ty),
                            Segment::Literal(_) => None,
                        })
                        .nth(i)
                })
                .is_some_and(|ty| *ty == ParamType::AccountHash);
            if r.body == BodyKind::Json && !matches!(r.method, Method::POST | Method::PUT) {
                issue("body", "only POST and PUT routes carry a body".into());
            }
            if !ok {
                continue;
            }
            let literal_count = segments
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count();
            let group = match &r.group {
                Some(g) => {
                    if g.is_empty()
                        || g.len() > 32
                        || !g.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    {
                        issue(
                            "group",
                            format!("`{g}`: lower-case letters and `_`, at most 32"),
                        );
                    }
                    g.clone()
                }
                None if r.mutates || r.body == BodyKind::Json => "orders".to_owned(),
                None if r.path.starts_with("/marketdata/") => "market_data".to_owned(),
                None => "accounts".to_owned(),
            };
            routes.push(Route {
                name: Arc::from(r.name.as_str()),
                group: Arc::from(group.as_str()),
                method: r.method,
                action: Arc::from(r.action.as_str()),
                resource,
                resource_is_account,
                mutates: r.mutates,
                body: r.body,
                trailing_slash: r.trailing_slash,
                segments,
                literal_count,
            });
        }
        if routes.is_empty() && issues.is_empty() {
            issues.push(ConfigIssue {
                key: "routes".into(),
                message: "the route table is empty".into(),
                line: None,
            });
        }
        if issues.is_empty() {
            Ok(RouteTable {
                profile: spec.profile,
                routes,
            })
        } else {
            Err(issues)
        }
    }

    /// Matches a request's method and raw path (without the query).
    pub fn match_request(
        &self,
        method: &http::Method,
        path: &str,
    ) -> Result<RouteMatch, RouteError> {
        check_path(path)?;
        // `check_path` guarantees the leading '/'.
        let rest = &path[1..];
        let (rest, trailing) = match rest.strip_suffix('/') {
            Some(r) if !r.is_empty() => (r, true),
            _ => (rest, false),
        };
        // Split once; candidate routes are checked without allocating, and
        // parameters are decoded only for the winner.
        let mut segs: [&str; MAX_SEGMENTS] = [""; MAX_SEGMENTS];
        let mut n = 0;
        for part in rest.split('/') {
            if n == MAX_SEGMENTS {
                return Err(RouteError::NoRoute);
            }
            segs[n] = part;
            n += 1;
        }
        let segs = &segs[..n];
        let mut best: Option<(usize, &Route)> = None;
        let mut tied = false;
        for (index, route) in self.routes.iter().enumerate() {
            if route.segments.len() != segs.len()
                || !route.method.matches(method)
                || (trailing && !route.trailing_slash)
                || !route.matches(segs)
            {
                continue;
            }
            match best {
                Some((_, b)) if route.literal_count == b.literal_count => tied = true,
                Some((_, b)) if route.literal_count < b.literal_count => {}
                _ => {
                    best = Some((index, route));
                    tied = false;
                }
            }
        }
        let (index, route) = best.ok_or(RouteError::NoRoute)?;
        if tied {
            // Two routes fit equally well (`/marketdata/v1/movers/quotes`):
            // which one the upstream serves is a guess, so refuse.
            return Err(RouteError::BadPath("ambiguous path"));
        }
        let params = route.params(segs).ok_or(RouteError::NoRoute)?;
        Ok(RouteMatch { index, params })
    }

    pub fn get(&self, m: &RouteMatch) -> &Route {
        &self.routes[m.index]
    }

    /// The account hash a match acts on, when its resource is an account.
    pub fn account<'m>(&self, m: &'m RouteMatch) -> Option<&'m str> {
        let route = self.get(m);
        route
            .resource
            .filter(|_| route.resource_is_account)
            .and_then(|i| m.params.get(i))
            .map(|(_, v)| v.as_str())
    }
}

impl Route {
    fn matches(&self, segs: &[&str]) -> bool {
        self.segments.iter().zip(segs).all(|(seg, part)| match seg {
            Segment::Literal(l) => l == part,
            Segment::Param { ty, .. } => ty.check(part),
        })
    }

    fn params(&self, segs: &[&str]) -> Option<Vec<(Arc<str>, String)>> {
        self.segments
            .iter()
            .zip(segs)
            .filter_map(|(seg, part)| match seg {
                Segment::Literal(_) => None,
                Segment::Param { name, ty } => Some(ty.accept(part).map(|v| (name.clone(), v))),
            })
            .collect()
    }
}

/// Whole-target checks that hold for every route: refuse, never decode, the
/// ingredients of path confusion.
pub fn check_path(path: &str) -> Result<(), RouteError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(RouteError::BadPath("path must start with /"));
    }
    if b.len() > 1024 {
        return Err(RouteError::BadPath("path too long"));
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (Some(h), Some(l)) = (b.get(i + 1), b.get(i + 2)) else {
                    return Err(RouteError::BadPath("truncated percent-encoding"));
                };
                let (Some(h), Some(l)) = ((*h as char).to_digit(16), (*l as char).to_digit(16))
                else {
                    return Err(RouteError::BadPath("invalid percent-encoding"));
                };
                match (h * 16 + l) as u8 {
                    b'.' => return Err(RouteError::BadPath("encoded dot")),
                    b'\\' => return Err(RouteError::BadPath("encoded backslash")),
                    b'%' => return Err(RouteError::BadPath("double encoding")),
                    b';' => return Err(RouteError::BadPath("encoded path parameter")),
                    0..=0x1f | 0x7f..=0xff => {
                        return Err(RouteError::BadPath("encoded control or non-ASCII byte"));
                    }
                    _ => {}
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(RouteError::BadPath("backslash")),
            b';' => return Err(RouteError::BadPath("path parameter")),
            0..=0x20 | 0x7f..=0xff => {
                return Err(RouteError::BadPath("control, space or non-ASCII byte"));
            }
            b'"' | b'<' | b'>' | b'`' | b'{' | b'|' | b'}' | b'#' | b'?' => {
                return Err(RouteError::BadPath("character not allowed in a path"));
            }
            _ => {}
        }
        i += 1;
    }
    // Segment rules: no dot segments, no empty segments (a single trailing
    // slash is left to the route's `trailing_slash`).
    let inner = path[1..].strip_suffix('/').unwrap_or(&path[1..]);
    if path != "/" {
        for seg in inner.split('/') {
            match seg {
                "" => return Err(RouteError::BadPath("empty path segment")),
                "." | ".." => return Err(RouteError::BadPath("dot segment")),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Query checks: well-formed escapes, no encoded control bytes. The query
/// is forwarded raw.
pub fn check_query(query: &str) -> Result<(), RouteError> {
    let b = query.as_bytes();
    if b.len() > 8192 {
        return Err(RouteError::BadPath("query too long"));
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .ok_or(RouteError::BadPath("truncated percent-encoding"))?;
                let (Some(h), Some(l)) =
                    ((hex[0] as char).to_digit(16), (hex[1] as char).to_digit(16))
                else {
                    return Err(RouteError::BadPath("invalid percent-encoding in query"));
                };
                if matches!((h * 16 + l) as u8, 0..=0x1f | 0x7f) {
                    return Err(RouteError::BadPath("encoded control byte in query"));
                }
                i += 3;
                continue;
            }
            0..=0x20 | 0x7f..=0xff | b'#' | b'\\' => {
                return Err(RouteError::BadPath("character not allowed in a query"));
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method as M;

    fn t() -> RouteTable {
        RouteTable::schwab().unwrap()
    }

    fn name(table: &RouteTable, m: &M, p: &str) -> Result<String, RouteError> {
        table
            .match_request(m, p)
            .map(|r| table.get(&r).name.to_string())
    }

    const H: &str = "A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5F60718293A4B5C6D7E8F90";

    #[test]
    fn schwab_table_loads_and_matches_every_endpoint() {
        let t = t();
        assert_eq!(t.routes.len(), 23);
        let cases = [
            (
                M::GET,
                "/trader/v1/accounts/accountNumbers".to_string(),
                "account_numbers",
            ),
            (M::GET, "/trader/v1/accounts".into(), "accounts"),
            (M::GET, "/trader/v1/accounts/".into(), "accounts"),
            (M::GET, format!("/trader/v1/accounts/{H}"), "account"),
            (
                M::GET,
                format!("/trader/v1/accounts/{H}/orders"),
                "orders_list",
            ),
            (
                M::POST,
                format!("/trader/v1/accounts/{H}/orders"),
                "order_place",
            ),
            (
                M::GET,
                format!("/trader/v1/accounts/{H}/orders/1003456789012"),
                "order_get",
            ),
            (
                M::PUT,
                format!("/trader/v1/accounts/{H}/orders/1003456789012"),
                "order_replace",
            ),
            (
                M::DELETE,
                format!("/trader/v1/accounts/{H}/orders/1003456789012"),
                "order_cancel",
            ),
            (
                M::POST,
                format!("/trader/v1/accounts/{H}/previewOrder"),
                "order_preview",
            ),
            (M::GET, "/trader/v1/orders".into(), "orders_all"),
            (
                M::GET,
                format!("/trader/v1/accounts/{H}/transactions"),
                "transactions",
            ),
            (
                M::GET,
                format!("/trader/v1/accounts/{H}/transactions/98765"),
                "transaction",
            ),
            (
                M::GET,
                "/trader/v1/userPreference".into(),
                "user_preference",
            ),
            (M::GET, "/marketdata/v1/quotes".into(), "quotes"),
            (M::GET, "/marketdata/v1/AAPL/quotes".into(), "quote"),
            (M::GET, "/marketdata/v1/$SPX/quotes".into(), "quote"),
            (M::GET, "/marketdata/v1/%24SPX/quotes".into(), "quote"),
            (M::GET, "/marketdata/v1/%2FES/quotes".into(), "quote"),
            (M::GET, "/marketdata/v1/AUD%2FCAD/quotes".into(), "quote"),
            (M::GET, "/marketdata/v1/chains".into(), "chains"),
            (
                M::GET,
                "/marketdata/v1/expirationchain".into(),
                "expiration_chain",
            ),
            (
                M::GET,
                "/marketdata/v1/pricehistory".into(),
                "price_history",
            ),
            (M::GET, "/marketdata/v1/movers/$DJI".into(), "movers"),
            (M::GET, "/marketdata/v1/movers/INDEX_ALL".into(), "movers"),
            (M::GET, "/marketdata/v1/markets".into(), "markets"),
            (M::GET, "/marketdata/v1/markets/equity".into(), "market"),
            (M::GET, "/marketdata/v1/instruments".into(), "instruments"),
            (
                M::GET,
                "/marketdata/v1/instruments/037833100".into(),
                "instrument",
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(name(&t, &m, &p).as_deref(), Ok(want), "{m} {p}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let t = t();
        for p in [
            "/marketdata/v1/movers/quotes",
            "/marketdata/v1/markets/quotes",
            "/marketdata/v1/instruments/quotes",
        ] {
            assert_eq!(
                t.match_request(&M::GET, p).map(|_| ()),
                Err(RouteError::BadPath("ambiguous path")),
                "{p}"
            );
        }
    }

    #[test]
    fn literal_beats_parameter() {
        let t = t();
        assert_eq!(
            name(&t, &M::GET, "/trader/v1/accounts/accountNumbers").unwrap(),
            "account_numbers"
        );
    }

    #[test]
    fn symbols_are_decoded_for_policy() {
        let t = t();
        let m = t
            .match_request(&M::GET, "/marketdata/v1/%24SPX/quotes")
            .unwrap();
        assert_eq!(m.params[0].1, "$SPX");
        let m = t
            .match_request(&M::GET, "/marketdata/v1/AUD%2FCAD/quotes")
            .unwrap();
        assert_eq!(m.params[0].1, "AUD/CAD");
        let m = t
            .match_request(&M::GET, &format!("/trader/v1/accounts/{H}"))
            .unwrap();
        assert_eq!(t.get(&m).resource, Some(0));
        assert_eq!(m.params[0].1, H);
    }

    #[test]
    fn unknown_routes_and_methods() {
        let t = t();
        for (m, p) in [
            (M::GET, "/"),
            (M::GET, "/trader/v1"),
            (M::GET, "/trader/v2/accounts"),
            (M::POST, "/trader/v1/accounts"),
            (M::PATCH, "/trader/v1/accounts"),
            (M::GET, "/trader/v1/accounts/accountNumbers/extra"),
            (M::GET, "/trader/v1/userPreference/"),
            (M::GET, "/trader/v1/accounts/ABC/orders/notanumber"),
            (
                M::GET,
                "/trader/v1/accounts/ABC/orders/99999999999999999999",
            ),
            (M::GET, "/trader/v1/accounts/AB-C"),
            (M::GET, "/trader/v1/accounts/AB%2FC"),
            (M::GET, "/marketdata/v1/AA%3FPL/quotes"),
            (M::GET, "/marketdata/v1/AA+PL/quotes"),
            (M::GET, "/Trader/v1/accounts"),
            (M::GET, "/%74rader/v1/accounts"),
        ] {
            assert_eq!(name(&t, &m, p), Err(RouteError::NoRoute), "{m} {p}");
        }
    }

    #[test]
    fn path_tricks_are_bad_requests() {
        let t = t();
        for p in [
            "/trader/v1/accounts/../orders",
            "/trader/v1/./accounts",
            "/trader/v1/accounts/%2e%2e/orders",
            "/trader/v1/accounts/%2E%2E/orders",
            "/trader/v1/accounts/%2e",
            "/marketdata/v1/%2E/quotes",
            "/trader/v1//accounts",
            "/marketdata/v1//ES/quotes",
            "/trader/v1/accounts\\..\\orders",
            "/trader/v1/accounts/%5c..",
            "/trader/v1/accounts/%252e%252e/orders",
            "/trader/v1/accounts/%00",
            "/trader/v1/accounts;x=1",
            "/trader/v1/accounts/%3bx",
            "/trader/v1/accounts/%",
            "/trader/v1/accounts/%zz",
            "/trader/v1/accounts/\u{7f}",
            "trader/v1/accounts",
            "//",
        ] {
            assert!(
                matches!(t.match_request(&M::GET, p), Err(RouteError::BadPath(_))),
                "{p} was not refused as a bad path"
            );
        }
    }

    #[test]
    fn symbols_that_decode_to_paths_are_refused() {
        let t = t();
        for p in [
            "/marketdata/v1/movers/..%2F..%2F..%2Ftrader%2Fv1%2Faccounts",
            "/marketdata/v1/..%2Ftrader/quotes",
            "/marketdata/v1/AAPL%2F..%2F/quotes",
            "/marketdata/v1/%2F%2FES/quotes",
            "/marketdata/v1/ES%2F/quotes",
            "/marketdata/v1/%2F/quotes",
            "/marketdata/v1/A%2F.%2FB/quotes",
            "/marketdata/v1/...%2FX/quotes",
        ] {
            assert!(t.match_request(&M::GET, p).is_err(), "{p} matched");
        }
        for ok in [
            "/marketdata/v1/BRK.B/quotes",
            "/marketdata/v1/%2FESZ25/quotes",
            "/marketdata/v1/AUD%2FCAD/quotes",
        ] {
            assert!(t.match_request(&M::GET, ok).is_ok(), "{ok} refused");
        }
    }

    #[test]
    fn query_checks() {
        assert!(
            check_query("symbols=%24SPX%2C%2FESZ25%2CAAPL++250620C00200000&indicative=False")
                .is_ok()
        );
        assert!(check_query("symbols=$SPX,/ES&indicative=false").is_ok());
        assert!(check_query("markets=equity&markets=option").is_ok());
        assert!(check_query("a=%00").is_err());
        assert!(check_query("a=%0d%0aX-Injected:1").is_err());
        assert!(check_query("a=%g0").is_err());
        assert!(check_query("a=%2").is_err());
    }

    #[test]
    fn table_validation() {
        let bad =
            "profile: x\nroutes:\n  - { name: a, method: GET, path: \"/a/{b}\", action: A }\n";
        let e = RouteTable::from_yaml(bad).unwrap_err();
        assert!(e[0].key.contains("path"), "{e:?}");
        let bad =
            "profile: x\nroutes:\n  - { name: a, method: GET, path: /a, action: A, resource: z }\n";
        assert!(RouteTable::from_yaml(bad).is_err());
        let bad =
            "profile: x\nroutes:\n  - { name: a, method: GET, path: /a, action: A, bogus: 1 }\n";
        assert!(RouteTable::from_yaml(bad).is_err());
        let dup = "profile: x\nroutes:\n  - { name: a, method: GET, path: /a, action: A }\n  - { name: a, method: GET, path: /b, action: A }\n";
        assert!(RouteTable::from_yaml(dup).is_err());
    }
}
