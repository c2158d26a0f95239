//! Simulated Market Data API v1 and account bodies. Prices are deterministic
//! pseudo-random functions of the symbol, so tests can rely on them.

use http::{Method, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::{Account, Query, json_response, md_error};
use crate::pipeline::body::ProxyBody;
use crate::pipeline::route::decode_symbol;

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The symbol's last price: between 10 and 500, fixed per symbol.
pub fn last_price(symbol: &str) -> f64 {
    round2(10.0 + (fnv1a(symbol) % 49_000) as f64 / 100.0)
}

fn asset_type(symbol: &str) -> (&'static str, &'static str) {
    if symbol.starts_with('$') {
        ("INDEX", "INX")
    } else if symbol.starts_with('/') {
        ("FUTURE", "")
    } else if symbol.contains('/') {
        ("FOREX", "")
    } else if symbol.len() > 12 && symbol.contains(' ') {
        ("OPTION", "")
    } else {
        ("EQUITY", "COE")
    }
}

fn cusip(symbol: &str) -> String {
    format!("{:09}", fnv1a(symbol) % 1_000_000_000)
}

pub fn quote_json(symbol: &str, fields: &[String]) -> Value {
    let last = last_price(symbol);
    let h = fnv1a(symbol);
    let close = round2(last * (1.0 - ((h >> 8) % 300) as f64 / 10_000.0 + 0.015));
    let change = round2(last - close);
    let now = super::now_ms();
    let (main, sub) = asset_type(symbol);
    let mut m = Map::new();
    m.insert("assetMainType".into(), json!(main));
    if !sub.is_empty() {
        m.insert("assetSubType".into(), json!(sub));
    }
    m.insert("quoteType".into(), json!("NBBO"));
    m.insert("realtime".into(), json!(true));
    m.insert("ssid".into(), json!(h % 2_000_000_000));
    m.insert("symbol".into(), json!(symbol));
    let want = |f: &str| fields.is_empty() || fields.iter().any(|x| x == f || x == "all");
    if want("quote") {
        m.insert(
            "quote".into(),
            json!({"52WeekHigh": round2(last * 1.25), "52WeekLow": round2(last * 0.7),
                   "askPrice": round2(last + 0.01), "askSize": 1 + h % 9, "bidPrice": round2(last - 0.01),
                   "bidSize": 1 + (h >> 4) % 9, "closePrice": close, "highPrice": round2(last * 1.01),
                   "lastPrice": last, "lowPrice": round2(last * 0.99), "mark": last, "netChange": change,
                   "netPercentChange": round2(change / close * 100.0), "openPrice": close,
                   "quoteTime": now, "securityStatus": "Normal", "totalVolume": 1_000_000 + h % 50_000_000,
                   "tradeTime": now}),
        );
    }
    if want("reference") {
        m.insert(
            "reference".into(),
            json!({"cusip": cusip(symbol), "description": format!("{symbol} SIMULATED"),
                   "exchange": "Q", "exchangeName": "NASDAQ"}),
        );
    }
    if want("fundamental") {
        m.insert(
            "fundamental".into(),
            json!({"peRatio": round2(10.0 + (h % 400) as f64 / 10.0), "eps": round2(last / 25.0),
                   "divYield": round2((h % 300) as f64 / 100.0)}),
        );
    }
    if want("regular") {
        m.insert(
            "regular".into(),
            json!({"regularMarketLastPrice": last, "regularMarketNetChange": change,
                   "regularMarketTradeTime": now}),
        );
    }
    Value::Object(m)
}

pub fn account_json(a: &Account, with_positions: bool) -> Value {
    let mut long_value = 0.0;
    let positions: Vec<Value> = a
        .positions
        .iter()
        .map(|(sym, asset, qty, avg)| {
            let last = last_price(sym);
            let mv = round2(qty * last);
            long_value += mv;
            json!({"shortQuantity": 0.0, "averagePrice": avg, "currentDayProfitLoss": round2((last - avg) * qty / 20.0),
                   "currentDayProfitLossPercentage": 0.22, "longQuantity": qty, "settledLongQuantity": qty,
                   "settledShortQuantity": 0.0,
                   "instrument": {"assetType": asset, "cusip": cusip(sym), "symbol": sym, "netChange": 0.41},
                   "marketValue": mv, "maintenanceRequirement": round2(mv * 0.3), "averageLongPrice": avg,
                   "taxLotAverageLongPrice": avg, "longOpenProfitLoss": round2((last - avg) * qty),
                   "previousSessionLongQuantity": qty, "currentDayCost": 0.0})
        })
        .collect();
    let equity = round2(a.cash + long_value);
    let bp = if a.kind == "MARGIN" {
        a.cash * 4.0
    } else {
        a.cash
    };
    let mut sa = json!({
        "type": a.kind, "accountNumber": a.number, "roundTrips": 0, "isDayTrader": false,
        "isClosingOnlyRestricted": false, "pfcbFlag": false,
        "initialBalances": {"cashBalance": a.cash, "buyingPower": bp, "equity": equity,
                            "liquidationValue": equity, "accountValue": equity},
        "currentBalances": {"cashBalance": a.cash, "availableFunds": a.cash, "buyingPower": bp,
                            "equity": equity, "liquidationValue": equity, "longMarketValue": round2(long_value)},
        "projectedBalances": {"availableFunds": a.cash, "buyingPower": bp, "isInCall": false,
                              "stockBuyingPower": bp}
    });
    if with_positions {
        sa["positions"] = Value::Array(positions);
    }
    json!({"securitiesAccount": sa,
           "aggregatedBalance": {"currentLiquidationValue": equity, "liquidationValue": equity}})
}

const MOVER_INDEXES: &[&str] = &[
    "$DJI",
    "$COMPX",
    "$SPX",
    "NYSE",
    "NASDAQ",
    "OTCBB",
    "INDEX_ALL",
    "EQUITY_ALL",
    "OPTION_ALL",
    "OPTION_PUT",
    "OPTION_CALL",
];
const MARKETS: &[&str] = &["equity", "option", "bond", "future", "forex"];

fn bad(detail: &str) -> Response<ProxyBody> {
    md_error(StatusCode::BAD_REQUEST, "Bad Request", detail)
}

fn required<'a>(q: &'a Query, key: &str) -> Result<&'a str, String> {
    q.get(key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("Missing required parameter {key}"))
}

/// Routes `/marketdata/v1/<segs…>`.
pub fn route(method: &Method, segs: &[&str], q: &Query) -> Response<ProxyBody> {
    if method != Method::GET {
        return md_error(StatusCode::NOT_FOUND, "Not Found", "No such endpoint");
    }
    let r = match segs {
        ["quotes"] => quotes(q),
        [sym, "quotes"] => match decode_symbol(sym) {
            Some(s) => {
                let mut m = Map::new();
                m.insert(s.clone(), quote_json(&s, &q.list("fields")));
                Ok(json_response(StatusCode::OK, &Value::Object(m)))
            }
            None => Err("Invalid symbol".into()),
        },
        ["chains"] => chains(q),
        ["expirationchain"] => required(q, "symbol").map(|s| {
            let list: Vec<Value> = expirations(4)
                .into_iter()
                .map(|(d, dte)| {
                    json!({"expirationDate": d, "daysToExpiration": dte, "expirationType": "W",
                                       "standard": true, "settlementType": "P", "optionRoots": s})
                })
                .collect();
            json_response(StatusCode::OK, &json!({"expirationList": list}))
        }),
        ["pricehistory"] => price_history(q),
        ["movers", index] => match decode_symbol(index) {
            Some(i) if MOVER_INDEXES.contains(&i.as_str()) => Ok(movers(&i)),
            _ => Err("Invalid index symbol".into()),
        },
        ["markets"] => {
            let list = q.list("markets");
            if list.is_empty() {
                Err("Missing required parameter markets".into())
            } else if let Some(m) = list.iter().find(|m| !MARKETS.contains(&m.as_str())) {
                Err(format!("Invalid market {m}"))
            } else {
                Ok(markets(&list, q.get("date")))
            }
        }
        ["markets", id] if MARKETS.contains(id) => Ok(markets(&[id.to_string()], q.get("date"))),
        ["markets", _] => Err("Invalid market".into()),
        ["instruments"] => instruments(q),
        ["instruments", c] if !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Ok(json_response(
                StatusCode::OK,
                &json!({"cusip": c, "symbol": "AAPL", "description": "APPLE INC", "exchange": "NASDAQ",
                        "assetType": "EQUITY"}),
            ))
        }
        _ => Ok(md_error(
            StatusCode::NOT_FOUND,
            "Not Found",
            "No such endpoint",
        )),
    };
    r.unwrap_or_else(|detail| bad(&detail))
}

fn quotes(q: &Query) -> Result<Response<ProxyBody>, String> {
    let symbols = q.list("symbols");
    if symbols.is_empty() {
        return Err("Missing required parameter symbols".into());
    }
    if symbols.len() > 500 {
        return Err("Too many symbols".into());
    }
    let fields = q.list("fields");
    let mut m = Map::new();
    for s in symbols {
        let v = quote_json(&s, &fields);
        m.insert(s, v);
    }
    Ok(json_response(StatusCode::OK, &Value::Object(m)))
}

/// The next `n` Friday expirations: (yyyy-mm-dd, days to expiration).
fn expirations(n: usize) -> Vec<(String, i64)> {
    let today = time::OffsetDateTime::now_utc().date();
    let to_friday = (5 + 7 - today.weekday().number_days_from_sunday() as i64) % 7;
    (0..n as i64)
        .map(|i| {
            let dte = to_friday + 7 * i;
            let d = today + time::Duration::days(dte);
            (
                format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day()),
                dte,
            )
        })
        .collect()
}

fn osi(root: &str, date: &str, cp: char, strike: f64) -> String {
    let ymd: String = date
        .chars()
        .filter(|c| c.is_ascii_digit())
        .skip(2)
        .collect();
    format!("{root:<6}{ymd}{cp}{:08}", (strike * 1000.0).round() as u64)
}

fn chains(q: &Query) -> Result<Response<ProxyBody>, String> {
    let symbol = required(q, "symbol")?;
    let contract = q.get("contractType").unwrap_or("ALL").to_ascii_uppercase();
    let count: usize = q
        .get("strikeCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(6)
        .clamp(1, 50);
    let under = last_price(symbol);
    let step = if under > 100.0 { 5.0 } else { 1.0 };
    let atm = (under / step).round() * step;
    let strikes: Vec<f64> = (0..count)
        .map(|i| atm + (i as f64 - (count / 2) as f64) * step)
        .filter(|s| *s > 0.0)
        .collect();
    let side = |cp: char| {
        let mut exp_map = Map::new();
        for (date, dte) in expirations(2) {
            let mut by_strike = Map::new();
            for &k in &strikes {
                let intrinsic = if cp == 'C' {
                    (under - k).max(0.0)
                } else {
                    (k - under).max(0.0)
                };
                let mark = round2(intrinsic + under * 0.01 * ((dte as f64 + 1.0) / 7.0).sqrt());
                by_strike.insert(
                    format!("{k:.1}"),
                    json!([{"putCall": if cp == 'C' { "CALL" } else { "PUT" }, "symbol": osi(symbol, &date, cp, k),
                            "bid": round2(mark - 0.05), "ask": round2(mark + 0.05), "last": mark, "mark": mark,
                            "delta": if cp == 'C' { 0.5 } else { -0.5 }, "strikePrice": k,
                            "expirationDate": format!("{date}T20:00:00.000+00:00"), "daysToExpiration": dte}]),
                );
            }
            exp_map.insert(format!("{date}:{dte}"), Value::Object(by_strike));
        }
        Value::Object(exp_map)
    };
    let calls = if contract == "PUT" {
        json!({})
    } else {
        side('C')
    };
    let puts = if contract == "CALL" {
        json!({})
    } else {
        side('P')
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"symbol": symbol, "status": "SUCCESS", "strategy": q.get("strategy").unwrap_or("SINGLE"),
                "interval": 0.0, "isDelayed": false, "isIndex": symbol.starts_with('$'), "interestRate": 4.738,
                "underlyingPrice": under, "volatility": 29.0, "daysToExpiration": 0.0,
                "numberOfContracts": strikes.len() * 4, "callExpDateMap": calls, "putExpDateMap": puts}),
    ))
}

fn price_history(q: &Query) -> Result<Response<ProxyBody>, String> {
    let symbol = required(q, "symbol")?;
    let freq_type = q.get("frequencyType").unwrap_or("daily");
    let step_ms: u64 = match freq_type {
        "minute" => {
            60_000
                * q.get("frequency")
                    .and_then(|f| f.parse().ok())
                    .unwrap_or(1u64)
                    .max(1)
        }
        "daily" => 86_400_000,
        "weekly" => 7 * 86_400_000,
        "monthly" => 30 * 86_400_000,
        _ => return Err("Invalid frequencyType".into()),
    };
    let end: u64 = q
        .get("endDate")
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(super::now_ms);
    let start: u64 = q
        .get("startDate")
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| end.saturating_sub(step_ms * 30));
    if start > end {
        return Err("startDate is after endDate".into());
    }
    let n = ((end - start) / step_ms).clamp(1, 2000);
    let mut price = last_price(symbol);
    let mut seed = fnv1a(symbol);
    let mut candles = Vec::new();
    for i in 0..n {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let drift = ((seed >> 33) % 200) as f64 / 10_000.0 - 0.01;
        let open = price;
        let close = round2(open * (1.0 + drift));
        candles.push(json!({"open": open, "high": round2(open.max(close) * 1.004), "low": round2(open.min(close) * 0.996),
                            "close": close, "volume": 100_000 + (seed >> 40) % 1_000_000,
                            "datetime": start + i * step_ms}));
        price = close;
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"candles": candles, "symbol": symbol, "empty": false,
                "previousClose": last_price(symbol), "previousCloseDate": start.saturating_sub(86_400_000)}),
    ))
}

fn movers(index: &str) -> Response<ProxyBody> {
    let list: Vec<Value> = ["AAPL", "NVDA", "TSLA"]
        .iter()
        .map(|s| {
            let h = fnv1a(&format!("{index}{s}"));
            json!({"symbol": s, "description": format!("{s} SIMULATED"), "change": round2((h % 500) as f64 / 100.0),
                   "direction": if h.is_multiple_of(2) { "up" } else { "down" }, "last": last_price(s),
                   "totalVolume": 1_000_000 + h % 9_000_000})
        })
        .collect();
    json_response(StatusCode::OK, &json!({"screeners": list}))
}

fn markets(list: &[String], date: Option<&str>) -> Response<ProxyBody> {
    let today = time::OffsetDateTime::now_utc().date();
    let d = date.map(str::to_owned).unwrap_or_else(|| {
        format!(
            "{:04}-{:02}-{:02}",
            today.year(),
            today.month() as u8,
            today.day()
        )
    });
    let mut out = Map::new();
    for m in list {
        let (product, name) = match m.as_str() {
            "equity" => ("EQ", "equity"),
            "option" => ("EQO", "equity option"),
            "bond" => ("BON", "bond"),
            "future" => ("FUT", "future"),
            _ => ("FOREX", "forex"),
        };
        out.insert(
            m.clone(),
            json!({product: {"date": d, "isOpen": true, "marketType": m.to_uppercase(), "product": product,
                             "productName": name,
                             "sessionHours": {
                                 "preMarket": [{"start": format!("{d}T07:00:00-05:00"), "end": format!("{d}T09:30:00-05:00")}],
                                 "regularMarket": [{"start": format!("{d}T09:30:00-05:00"), "end": format!("{d}T16:00:00-05:00")}],
                                 "postMarket": [{"start": format!("{d}T16:00:00-05:00"), "end": format!("{d}T20:00:00-05:00")}]}}}),
        );
    }
    json_response(StatusCode::OK, &Value::Object(out))
}

fn instruments(q: &Query) -> Result<Response<ProxyBody>, String> {
    let symbol = required(q, "symbol")?;
    let projection = required(q, "projection")?;
    const PROJECTIONS: &[&str] = &[
        "symbol-search",
        "symbol-regex",
        "desc-search",
        "desc-regex",
        "search",
        "fundamental",
    ];
    if !PROJECTIONS.contains(&projection) {
        return Err("Invalid projection".into());
    }
    let mut inst = json!({"assetType": "EQUITY", "cusip": cusip(symbol), "description": format!("{symbol} SIMULATED"),
                          "exchange": "NASDAQ", "symbol": symbol});
    if projection == "fundamental" {
        inst["fundamental"] =
            json!({"symbol": symbol, "peRatio": 25.0, "high52": round2(last_price(symbol) * 1.25)});
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"instruments": [inst]}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_deterministic_and_sane() {
        assert_eq!(last_price("AAPL"), last_price("AAPL"));
        for s in ["AAPL", "$SPX", "/ES", "AUD/CAD", "X"] {
            let p = last_price(s);
            assert!((10.0..=500.0).contains(&p), "{s} {p}");
        }
        assert_eq!(
            osi("AAPL", "2025-06-20", 'C', 200.0),
            "AAPL  250620C00200000"
        );
    }
}
