//! Simulated order book: validation as Schwab does it (400 with a Trader
//! error body), and a small state machine — market orders fill at once,
//! other orders stay WORKING until replaced or cancelled.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Account, Query, market};

use crate::pipeline::order::{
    ASSET_TYPES, DURATIONS, INSTRUCTIONS, ORDER_TYPES, SESSIONS, STRATEGIES,
};

const NEEDS_PRICE: &[&str] = &[
    "LIMIT",
    "STOP_LIMIT",
    "NET_DEBIT",
    "NET_CREDIT",
    "LIMIT_ON_CLOSE",
    "TRAILING_STOP_LIMIT",
];
const NEEDS_STOP: &[&str] = &["STOP", "STOP_LIMIT"];
const MAX_DEPTH: usize = 8;

struct Order {
    id: i64,
    account: String,
    request: Map<String, Value>,
    status: &'static str,
    entered_ms: u64,
    close_ms: Option<u64>,
    fill_price: Option<f64>,
}

pub struct Book {
    orders: BTreeMap<i64, Order>,
    next_id: i64,
}

fn enum_field<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    allowed: &[&str],
) -> Result<&'a str, String> {
    match o.get(key) {
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(s),
        Some(_) => Err(format!("Invalid value for {key}")),
        None => Err(format!("{key} is required")),
    }
}

/// A price given as a JSON string or number, positive.
fn price(v: &Value) -> Option<f64> {
    let p = match v {
        Value::String(s) => s.parse::<f64>().ok()?,
        Value::Number(n) => n.as_f64()?,
        _ => return None,
    };
    (p.is_finite() && p > 0.0).then_some(p)
}

fn validate(v: &Value, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("Order nesting is too deep".into());
    }
    let o = v.as_object().ok_or("Order must be a JSON object")?;
    let strategy = enum_field(o, "orderStrategyType", STRATEGIES)?;
    let children = o.get("childOrderStrategies");
    if strategy == "OCO" {
        let kids = children
            .and_then(Value::as_array)
            .filter(|k| k.len() >= 2)
            .ok_or("An OCO order needs at least two childOrderStrategies")?;
        return kids.iter().try_for_each(|k| validate(k, depth + 1));
    }
    let order_type = enum_field(o, "orderType", ORDER_TYPES)?;
    enum_field(o, "session", SESSIONS)?;
    enum_field(o, "duration", DURATIONS)?;
    if NEEDS_PRICE.contains(&order_type) && o.get("price").and_then(price).is_none() {
        return Err(format!("A {order_type} order requires a valid price"));
    }
    if NEEDS_STOP.contains(&order_type) && o.get("stopPrice").and_then(price).is_none() {
        return Err(format!("A {order_type} order requires a valid stopPrice"));
    }
    if let Some(p) = o.get("price") {
        price(p).ok_or("Invalid price")?;
    }
    let legs = o
        .get("orderLegCollection")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or("orderLegCollection is required")?;
    for leg in legs {
        let leg = leg.as_object().ok_or("Each order leg must be an object")?;
        enum_field(leg, "instruction", INSTRUCTIONS)?;
        let qty = leg
            .get("quantity")
            .and_then(Value::as_f64)
            .ok_or("Leg quantity is required")?;
        if !(qty > 0.0 && qty.is_finite()) {
            return Err("Leg quantity must be positive".into());
        }
        let inst = leg
            .get("instrument")
            .and_then(Value::as_object)
            .ok_or("Leg instrument is required")?;
        enum_field(inst, "assetType", ASSET_TYPES)?;
        match inst.get("symbol") {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            _ => return Err("Leg instrument symbol is required".into()),
        }
    }
    if let Some(kids) = children {
        let kids = kids
            .as_array()
            .ok_or("childOrderStrategies must be an array")?;
        kids.iter().try_for_each(|k| validate(k, depth + 1))?;
    }
    Ok(())
}

fn parse_order(body: &Bytes) -> Result<Map<String, Value>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "Invalid JSON in order".to_owned())?;
    validate(&v, 0)?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err("Order must be a JSON object".into()),
    }
}

fn first_symbol(o: &Map<String, Value>) -> Option<String> {
    if let Some(s) = o
        .get("orderLegCollection")
        .and_then(|l| l.get(0))
        .and_then(|l| l.pointer("/instrument/symbol"))
        .and_then(Value::as_str)
    {
        return Some(s.to_owned());
    }
    o.get("childOrderStrategies")
        .and_then(Value::as_array)
        .and_then(|k| k.iter().find_map(|c| c.as_object().and_then(first_symbol)))
}

/// `2025-06-02T14:31:07+0000`, Schwab's order timestamp style.
pub fn schwab_time(ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+0000",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Accepts `2024-03-29T00:00:00.000Z` (Schwabdev) and `2024-03-29T00:00:00Z` (schwab-py).
fn parse_time(s: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok().map(|s| s * 1000)
}

fn parse_date(s: &str) -> Option<u64> {
    parse_time(s).or_else(|| parse_time(&format!("{s}T00:00:00Z")))
}

impl Book {
    pub fn new() -> Book {
        Book {
            orders: BTreeMap::new(),
            next_id: 1_003_456_789_012,
        }
    }

    fn insert(&mut self, account: &Account, request: Map<String, Value>) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let now = super::now_ms();
        let market = request.get("orderType").and_then(Value::as_str) == Some("MARKET");
        let fill = market
            .then(|| first_symbol(&request))
            .flatten()
            .map(|s| market::last_price(&s));
        self.orders.insert(
            id,
            Order {
                id,
                account: account.number.to_owned(),
                request,
                status: if market { "FILLED" } else { "WORKING" },
                entered_ms: now,
                close_ms: market.then_some(now),
                fill_price: fill,
            },
        );
        id
    }

    pub fn place(&mut self, account: &Account, body: &Bytes) -> Result<i64, String> {
        let req = parse_order(body)?;
        Ok(self.insert(account, req))
    }

    pub fn replace(
        &mut self,
        account: &Account,
        id: i64,
        body: &Bytes,
    ) -> Result<i64, (StatusCode, String)> {
        let req = parse_order(body).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
        self.close_working(account, id, "REPLACED", "replaced")?;
        Ok(self.insert(account, req))
    }

    pub fn cancel(&mut self, account: &Account, id: i64) -> Result<(), (StatusCode, String)> {
        self.close_working(account, id, "CANCELED", "canceled")
    }

    /// Moves a WORKING order of `account` to a closed status; anything else
    /// is 404 (not this account's) or 400 (no longer working), as Schwab does.
    fn close_working(
        &mut self,
        account: &Account,
        id: i64,
        to: &'static str,
        verb: &str,
    ) -> Result<(), (StatusCode, String)> {
        let o = self
            .orders
            .get_mut(&id)
            .filter(|o| o.account == account.number)
            .ok_or((StatusCode::NOT_FOUND, "Order not found".to_owned()))?;
        if o.status != "WORKING" {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("Order is {} and cannot be {verb}", o.status),
            ));
        }
        o.status = to;
        o.close_ms = Some(super::now_ms());
        Ok(())
    }

    pub fn get(&self, account: &Account, id: i64) -> Option<Value> {
        self.orders
            .get(&id)
            .filter(|o| o.account == account.number)
            .map(order_json)
    }

    pub fn list(
        &self,
        account: Option<&Account>,
        q: &Query,
        _all: &[Account],
    ) -> Result<Value, String> {
        let from = q
            .get("fromEnteredTime")
            .ok_or("fromEnteredTime is required")?;
        let to = q.get("toEnteredTime").ok_or("toEnteredTime is required")?;
        let from = parse_time(from).ok_or("fromEnteredTime is not a valid date-time")?;
        let to = parse_time(to).ok_or("toEnteredTime is not a valid date-time")?;
        let max = match q.get("maxResults") {
            Some(m) => m
                .parse::<usize>()
                .map_err(|_| "maxResults must be a number")?,
            None => 3000,
        };
        let status = q.get("status");
        let out: Vec<Value> = self
            .orders
            .values()
            .rev()
            .filter(|o| account.is_none_or(|a| a.number == o.account))
            .filter(|o| o.entered_ms >= from && o.entered_ms <= to + 999)
            .filter(|o| status.is_none_or(|s| s == o.status))
            .take(max)
            .map(order_json)
            .collect();
        Ok(Value::Array(out))
    }

    pub fn transactions(&self, account: &Account, q: &Query) -> Result<Value, String> {
        let start = q.get("startDate").ok_or("startDate is required")?;
        let end = q.get("endDate").ok_or("endDate is required")?;
        let start = parse_date(start).ok_or("startDate is not a valid date-time")?;
        let end = parse_date(end).ok_or("endDate is not a valid date-time")?;
        let types = q.list("types");
        if types.is_empty() {
            return Err("types is required".into());
        }
        let symbol = q.get("symbol");
        let out: Vec<Value> = self
            .orders
            .values()
            .filter(|o| o.account == account.number && o.fill_price.is_some())
            .filter(|o| o.entered_ms >= start && o.entered_ms <= end + 86_399_999)
            .filter(|_| types.iter().any(|t| t == "TRADE"))
            .filter(|o| symbol.is_none_or(|s| first_symbol(&o.request).as_deref() == Some(s)))
            .map(transaction_json)
            .collect();
        Ok(Value::Array(out))
    }

    pub fn transaction(&self, account: &Account, id: i64) -> Option<Value> {
        self.orders
            .values()
            .find(|o| {
                o.account == account.number && o.fill_price.is_some() && o.id + 7_000_000_000 == id
            })
            .map(transaction_json)
    }
}

fn quantity(o: &Map<String, Value>) -> f64 {
    o.get("orderLegCollection")
        .and_then(Value::as_array)
        .and_then(|l| l.first())
        .and_then(|l| l.get("quantity"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn order_json(o: &Order) -> Value {
    let mut m = o.request.clone();
    let qty = quantity(&o.request);
    let filled = if o.status == "FILLED" { qty } else { 0.0 };
    for k in ["price", "stopPrice"] {
        if let Some(p) = m.get(k).and_then(price) {
            m.insert(k.into(), json!(p));
        }
    }
    if let Some(Value::Array(legs)) = m.get_mut("orderLegCollection") {
        for (i, leg) in legs.iter_mut().enumerate() {
            if let Some(l) = leg.as_object_mut() {
                let q = l.get("quantity").and_then(Value::as_f64).unwrap_or(0.0);
                l.insert("quantity".into(), json!(q));
                l.insert("legId".into(), json!(i + 1));
                let asset = l
                    .get("instrument")
                    .and_then(|i| i.get("assetType"))
                    .cloned()
                    .unwrap_or(json!("EQUITY"));
                l.insert("orderLegType".into(), asset);
                l.entry("positionEffect").or_insert(json!("OPENING"));
            }
        }
    }
    m.insert("quantity".into(), json!(qty));
    m.insert("filledQuantity".into(), json!(filled));
    m.insert("remainingQuantity".into(), json!(qty - filled));
    m.entry("complexOrderStrategyType").or_insert(json!("NONE"));
    m.entry("requestedDestination").or_insert(json!("AUTO"));
    m.insert("destinationLinkName".into(), json!("AutoRoute"));
    m.insert("orderId".into(), json!(o.id));
    m.insert("cancelable".into(), json!(o.status == "WORKING"));
    m.insert("editable".into(), json!(o.status == "WORKING"));
    m.insert("status".into(), json!(o.status));
    m.insert("enteredTime".into(), json!(schwab_time(o.entered_ms)));
    m.insert(
        "accountNumber".into(),
        json!(o.account.parse::<i64>().unwrap_or(0)),
    );
    if let Some(c) = o.close_ms {
        m.insert("closeTime".into(), json!(schwab_time(c)));
    }
    if let (Some(p), Some(c)) = (o.fill_price, o.close_ms) {
        m.insert(
            "orderActivityCollection".into(),
            json!([{"activityType": "EXECUTION", "activityId": o.id + 5_000_000_000, "executionType": "FILL",
                    "quantity": qty, "orderRemainingQuantity": 0.0,
                    "executionLegs": [{"legId": 1, "quantity": qty, "mismarkedQuantity": 0.0, "price": p,
                                       "time": schwab_time(c), "instrumentId": 1_973_757_747}]}]),
        );
    }
    Value::Object(m)
}

fn transaction_json(o: &Order) -> Value {
    let qty = quantity(&o.request);
    let p = o.fill_price.unwrap_or(0.0);
    let sym = first_symbol(&o.request).unwrap_or_default();
    let sell = o
        .request
        .get("orderLegCollection")
        .and_then(|l| l.pointer("/0/instruction"))
        .and_then(Value::as_str)
        .is_some_and(|i| i.starts_with("SELL"));
    let net = if sell { qty * p } else { -qty * p };
    json!({
        "activityId": o.id + 5_000_000_000,
        "time": schwab_time(o.close_ms.unwrap_or(o.entered_ms)),
        "accountNumber": o.account,
        "type": "TRADE",
        "status": "VALID",
        "subAccount": "MARGIN",
        "tradeDate": schwab_time(o.entered_ms),
        "positionId": o.id + 6_000_000_000,
        "orderId": o.id,
        "transactionId": o.id + 7_000_000_000,
        "netAmount": (net * 100.0).round() / 100.0,
        "transferItems": [
            {"instrument": {"assetType": "CURRENCY", "symbol": "CURRENCY_USD", "description": "USD currency"},
             "amount": 0.0, "cost": 0.0, "feeType": "COMMISSION"},
            {"instrument": {"assetType": "EQUITY", "symbol": sym, "instrumentId": 1_973_757_747, "type": "COMMON_STOCK"},
             "amount": if sell { -qty } else { qty }, "cost": (net * 100.0).round() / 100.0, "price": p,
             "positionEffect": if sell { "CLOSING" } else { "OPENING" }}
        ]
    })
}

/// previewOrder: a 200 body in every case; a would-be-rejected order comes
/// back with `status: REJECTED` and `rejects`, as Schwab does.
pub fn preview(account: &Account, body: &Bytes) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "Invalid JSON in order".to_owned())?;
    let problem = validate(&v, 0).err();
    let o = v.as_object().cloned().unwrap_or_default();
    let sym = first_symbol(&o).unwrap_or_default();
    let last = market::last_price(&sym);
    let qty = quantity(&o);
    let px = o.get("price").and_then(price).unwrap_or(last);
    let rejects: Vec<Value> = problem
        .iter()
        .map(|m| json!({"activityMessage": m, "originalSeverity": "REJECT"}))
        .collect();
    Ok(json!({
        "orderId": 0,
        "orderStrategy": {
            "accountNumber": account.number, "advancedOrderType": "NONE",
            "orderStrategyType": o.get("orderStrategyType").cloned().unwrap_or(json!("SINGLE")),
            "session": o.get("session").cloned().unwrap_or(json!("NORMAL")),
            "duration": o.get("duration").cloned().unwrap_or(json!("DAY")),
            "orderType": o.get("orderType").cloned().unwrap_or(json!("MARKET")),
            "price": px, "quantity": qty,
            "status": if problem.is_some() { "REJECTED" } else { "ACCEPTED" },
            "orderBalance": {"orderValue": (px * qty * 100.0).round() / 100.0, "projectedAvailableFund": account.cash,
                             "projectedBuyingPower": account.cash * 2.0, "projectedCommission": 0.0},
            "orderLegs": [{"legId": 1, "assetType": "EQUITY", "finalSymbol": sym,
                           "bidPrice": last - 0.01, "askPrice": last + 0.01, "lastPrice": last, "markPrice": last,
                           "instrument": {"assetType": "EQUITY", "symbol": sym}}]
        },
        "orderValidationResult": {"accepts": [], "alerts": [], "rejects": rejects, "reviews": [], "warns": []},
        "commissionAndFee": {"commission": {"commissionLegs": [{"commissionValues": [{"value": 0.0, "type": "COMMISSION"}]}]},
                             "fee": {"feeLegs": [{"feeValues": [{"value": 0.0, "type": "SEC_FEE"}]}]}}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_reference_examples() {
        let ok = [
            r#"{"session":"NORMAL","duration":"DAY","orderType":"MARKET","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}"#,
            r#"{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"425.50","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"MSFT"},"quantity":5}]}"#,
            r#"{"orderType":"LIMIT","session":"NORMAL","price":3.45,"duration":"DAY","orderStrategyType":"SINGLE","complexOrderStrategyType":"NONE","orderLegCollection":[{"instruction":"BUY_TO_OPEN","quantity":1,"instrument":{"symbol":"AAPL  250620C00200000","assetType":"OPTION"}}]}"#,
            r#"{"orderStrategyType":"OCO","childOrderStrategies":[{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"210.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]},{"session":"NORMAL","duration":"DAY","orderType":"STOP","stopPrice":"180.00","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"SELL","instrument":{"assetType":"EQUITY","symbol":"AAPL"},"quantity":10}]}]}"#,
        ];
        for o in ok {
            validate(&serde_json::from_str(o).unwrap(), 0).unwrap();
        }
        let bad = [
            r#"{"orderType":"LIMIT","session":"NORMAL","duration":"DAY","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"BUY","quantity":1,"instrument":{"symbol":"A","assetType":"EQUITY"}}]}"#,
            r#"{"orderType":"MARKET","session":"NORMAL","duration":"DAY","orderStrategyType":"SINGLE","orderLegCollection":[]}"#,
            r#"{"orderType":"MARKET","session":"NORMAL","duration":"DAY","orderStrategyType":"SINGLE","orderLegCollection":[{"instruction":"YOLO","quantity":1,"instrument":{"symbol":"A","assetType":"EQUITY"}}]}"#,
            r#"{"orderStrategyType":"OCO","childOrderStrategies":[]}"#,
            r#"[]"#,
        ];
        for o in bad {
            assert!(
                validate(&serde_json::from_str(o).unwrap(), 0).is_err(),
                "{o}"
            );
        }
    }

    #[test]
    fn both_time_formats() {
        assert!(parse_time("2024-03-29T00:00:00.000Z").is_some());
        assert!(parse_time("2024-03-29T00:00:00Z").is_some());
        assert!(parse_time("2024-03-29").is_none());
        assert_eq!(schwab_time(0), "1970-01-01T00:00:00+0000");
    }
}
