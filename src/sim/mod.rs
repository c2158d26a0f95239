//! A stand-in for `api.schwabapi.com`, faithful enough that schwab-py and
//! Schwabdev work against it: every Trader v1 and Market Data v1 endpoint,
//! orders with a state machine, OAuth, bearer checks, optional 429s and
//! faults, and a journal of every request received (`/__sim/journal`) that
//! tests use as the oracle for "this never reached the upstream".
//!
//! Schwab has no sandbox; this is the only safe upstream for the demo and
//! the tests.

mod market;
mod orders;
pub mod query;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde_json::{Value, json};

use crate::pipeline::body::{BoxError, ProxyBody, empty, full};
use crate::server::{AbortConnection, Handler};
pub use query::Query;

/// Simulator settings (the `portcullis sim` flags).
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub app_key: String,
    pub app_secret: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// API requests allowed per minute (fixed window) before 429.
    pub rate_limit_per_minute: Option<u32>,
    /// Added to every API response.
    pub latency: Duration,
    /// Every Nth API request is answered 500.
    pub fail_every: Option<u64>,
    /// Every Nth API request has its connection reset without a response.
    pub reset_every: Option<u64>,
    pub journal_capacity: usize,
    /// Advertised in userPreference.streamerInfo.
    pub streamer_url: String,
    /// Connections idle this long are closed gracefully (HTTP/2: GOAWAY);
    /// `None`: the listener's `limits.idle_timeout`.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 streams a connection may have open at once; `None`: the
    /// listener's `limits.h2_max_concurrent_streams`.
    pub h2_max_concurrent_streams: Option<u32>,
    /// Offer only HTTP/1.1 by ALPN, as a broker without HTTP/2 would.
    pub http1_only: bool,
}

impl SimOptions {
    /// The simulator listener's TLS setup: `base`, or without `h2` by ALPN
    /// with `http1_only`.
    pub fn listener_tls(&self, base: Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
        if self.http1_only {
            crate::server::tls::http1_only(&base)
        } else {
            base
        }
    }

    /// The simulator listener's limits: `base` with this simulator's idle
    /// timeout and HTTP/2 stream cap, where set.
    pub fn listener_limits(&self, mut base: crate::config::Limits) -> crate::config::Limits {
        if let Some(t) = self.idle_timeout {
            base.idle_timeout = crate::config::Dur(t);
        }
        if let Some(n) = self.h2_max_concurrent_streams {
            base.h2_max_concurrent_streams = n;
        }
        base
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            app_key: "sim-app-key-0123456789abcdef01234567".into(),
            app_secret: "sim-app-secret-0123456789".into(),
            access_token_ttl: Duration::from_secs(1800),
            refresh_token_ttl: Duration::from_secs(7 * 86400),
            rate_limit_per_minute: None,
            latency: Duration::ZERO,
            fail_every: None,
            reset_every: None,
            journal_capacity: 10_000,
            streamer_url: "wss://127.0.0.1:8444/ws".into(),
            idle_timeout: None,
            h2_max_concurrent_streams: None,
            http1_only: false,
        }
    }
}

/// One request as the simulator received it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct JournalEntry {
    pub method: String,
    /// Raw request target: path and query exactly as received.
    pub path: String,
    /// `[name, value]` pairs, duplicates kept. Names appear in order of first
    /// arrival; repeated values of one name follow their first occurrence.
    pub headers: Vec<(String, String)>,
    /// UTF-8 text, or base64 when `body_base64` is true.
    pub body: String,
    pub body_base64: bool,
}

impl JournalEntry {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A simulated account.
#[derive(Debug, Clone)]
pub struct Account {
    pub number: &'static str,
    pub hash: String,
    pub kind: &'static str,
    pub cash: f64,
    pub positions: Vec<(&'static str, &'static str, f64, f64)>, // symbol, assetType, qty, avg price
}

struct TokenInfo {
    refresh: bool,
    expires: SystemTime,
}

struct State {
    tokens: HashMap<String, TokenInfo>,
    codes: HashMap<String, (String, SystemTime)>,
    orders: orders::Book,
    window: (u64, u32),
}

pub struct Sim {
    opts: SimOptions,
    /// Replaces `opts.app_secret` once the secret is "regenerated".
    app_secret: Mutex<Option<String>>,
    accounts: Vec<Account>,
    state: Mutex<State>,
    journal: Mutex<VecDeque<JournalEntry>>,
    api_calls: AtomicU64,
}

const MAX_BODY: usize = 1024 * 1024;

/// The account hash Schwab would show for an account number: 64 upper-case
/// hex characters (matches schwab-py's `\w+` and Schwabdev's length check).
pub fn account_hash(number: &str) -> String {
    crate::keys::hash_key_hex(&format!("portcullis-sim-account:{number}")).to_uppercase()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 24];
    // The system RNG failing would be a broken machine; a counter keeps the
    // simulator (a test tool) going rather than panicking.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_be_bytes());
    }
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

impl Sim {
    pub fn new(opts: SimOptions) -> Arc<Sim> {
        let accounts = vec![
            Account {
                number: "12345678",
                hash: account_hash("12345678"),
                kind: "MARGIN",
                cash: 25_000.0,
                positions: vec![
                    ("AAPL", "EQUITY", 100.0, 172.35),
                    ("MSFT", "EQUITY", 50.0, 380.10),
                ],
            },
            Account {
                number: "87654321",
                hash: account_hash("87654321"),
                kind: "CASH",
                cash: 5_000.0,
                positions: vec![("SPY", "EQUITY", 10.0, 501.20)],
            },
        ];
        Arc::new(Sim {
            opts,
            app_secret: Mutex::new(None),
            accounts,
            state: Mutex::new(State {
                tokens: HashMap::new(),
                codes: HashMap::new(),
                orders: orders::Book::new(),
                window: (0, 0),
            }),
            journal: Mutex::new(VecDeque::new()),
            api_calls: AtomicU64::new(0),
        })
    }

    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn journal_lock(&self) -> MutexGuard<'_, VecDeque<JournalEntry>> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mints an access token directly (the demo and tests use this in place
    /// of the browser login until the proxy's token manager exists).
    pub fn issue_access_token(&self, ttl: Duration) -> String {
        let t = random_token("sim-at-");
        self.state().tokens.insert(
            t.clone(),
            TokenInfo {
                refresh: false,
                expires: SystemTime::now() + ttl,
            },
        );
        t
    }

    /// An authorization code for `redirect_uri`, as the authorize page
    /// grants after a login (valid 60 s, once). The demo logs in with it.
    pub fn grant_code(&self, redirect_uri: &str) -> String {
        let code = random_token("C0.");
        self.state().codes.insert(
            code.clone(),
            (
                redirect_uri.to_owned(),
                SystemTime::now() + Duration::from_secs(60),
            ),
        );
        code
    }

    /// Regenerates the app secret, as in the developer portal: from now on
    /// only `secret` authenticates at the token endpoint.
    pub fn set_app_secret(&self, secret: &str) {
        *self.app_secret.lock().unwrap_or_else(|p| p.into_inner()) = Some(secret.to_owned());
    }

    /// Makes every refresh token the simulator issued invalid (as Schwab
    /// does after 7 days or on revocation).
    pub fn expire_refresh_tokens(&self) {
        self.state().tokens.retain(|_, t| !t.refresh);
    }

    pub fn journal(&self) -> Vec<JournalEntry> {
        self.journal_lock().iter().cloned().collect()
    }

    pub fn clear_journal(&self) {
        self.journal_lock().clear();
    }

    /// The request handler, for [`crate::server::serve`].
    pub fn handler(self: &Arc<Self>) -> Handler {
        let sim = self.clone();
        Arc::new(move |req, peer| {
            let sim = sim.clone();
            Box::pin(async move { sim.handle(req, peer).await })
        })
    }

    async fn handle<B>(
        &self,
        req: Request<B>,
        _peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, AbortConnection>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                return Ok(trader_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request body too large",
                ));
            }
        };
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let path = parts.uri.path().to_owned();

        if path == "/__sim/journal" {
            return Ok(self.journal_endpoint(&parts.method));
        }
        self.record(&parts, &target, &body);

        if path.starts_with("/v1/oauth/") {
            return Ok(self.oauth(&parts, &path, &body));
        }

        let api = if path.starts_with("/marketdata/") {
            Api::MarketData
        } else if path.starts_with("/trader/") {
            Api::Trader
        } else {
            return Ok(trader_error(StatusCode::NOT_FOUND, "Not Found"));
        };

        if !self.opts.latency.is_zero() {
            tokio::time::sleep(self.opts.latency).await;
        }
        if !self.bearer_ok(&parts.headers) {
            return Ok(api.error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Missing or invalid access token",
            ));
        }
        let n = self.api_calls.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .opts
            .reset_every
            .is_some_and(|k| k > 0 && n.is_multiple_of(k))
        {
            return Err(AbortConnection);
        }
        if self
            .opts
            .fail_every
            .is_some_and(|k| k > 0 && n.is_multiple_of(k))
        {
            return Ok(api.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                "Simulated failure",
            ));
        }
        if let Some(limit) = self.opts.rate_limit_per_minute {
            let minute = now_ms() / 60_000;
            let mut st = self.state();
            if st.window.0 != minute {
                st.window = (minute, 0);
            }
            st.window.1 += 1;
            if st.window.1 > limit {
                let retry = 60 - (now_ms() / 1000) % 60;
                drop(st);
                let mut r = api.error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too Many Requests",
                    "Rate limit exceeded",
                );
                if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return Ok(r);
            }
        }

        let query = Query::parse(parts.uri.query().unwrap_or(""));
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut resp = match api {
            Api::MarketData => market::route(&parts.method, &segs[2.min(segs.len())..], &query),
            Api::Trader => self.trader(&parts.method, &segs, &query, &body),
        };
        resp.headers_mut().insert(
            "schwab-client-correlid",
            HeaderValue::from_str(&uuid_like()).unwrap_or(HeaderValue::from_static("0")),
        );
        Ok(resp)
    }

    fn record(&self, parts: &http::request::Parts, target: &str, body: &Bytes) {
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let (body, body_base64) = match std::str::from_utf8(body) {
            Ok(s) => (s.to_owned(), false),
            Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
        };
        let entry = JournalEntry {
            method: parts.method.as_str().to_owned(),
            path: target.to_owned(),
            headers,
            body,
            body_base64,
        };
        let mut j = self.journal_lock();
        if j.len() >= self.opts.journal_capacity.max(1) {
            j.pop_front();
        }
        j.push_back(entry);
    }

    fn journal_endpoint(&self, method: &Method) -> Response<ProxyBody> {
        match *method {
            Method::GET => json_response(StatusCode::OK, &json!(self.journal())),
            Method::DELETE => {
                self.clear_journal();
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            _ => trader_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        }
    }

    fn bearer_ok(&self, h: &http::HeaderMap) -> bool {
        let Some(token) = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let st = self.state();
        st.tokens
            .get(token)
            .is_some_and(|t| !t.refresh && t.expires > SystemTime::now())
    }

    fn account_by_hash(&self, hash: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.hash == hash)
    }

    fn trader(
        &self,
        method: &Method,
        segs: &[&str],
        q: &Query,
        body: &Bytes,
    ) -> Response<ProxyBody> {
        let t = Api::Trader;
        // segs[0] = "trader", segs[1] = "v1"
        let rest: Vec<&str> = segs.get(2..).unwrap_or(&[]).to_vec();
        let rest: Vec<&str> = match rest.as_slice() {
            ["accounts", ""] => vec!["accounts"],
            _ => rest,
        };
        match (method, rest.as_slice()) {
            (&Method::GET, ["accounts", "accountNumbers"]) => json_response(
                StatusCode::OK,
                &Value::Array(
                    self.accounts
                        .iter()
                        .map(|a| json!({"accountNumber": a.number, "hashValue": a.hash}))
                        .collect(),
                ),
            ),
            (&Method::GET, ["accounts"]) => {
                let with_pos = q.get("fields").is_some_and(|f| f.contains("positions"));
                let all: Vec<Value> = self
                    .accounts
                    .iter()
                    .map(|a| market::account_json(a, with_pos))
                    .collect();
                json_response(StatusCode::OK, &Value::Array(all))
            }
            (&Method::GET, ["userPreference"]) => {
                json_response(StatusCode::OK, &self.user_preference())
            }
            (&Method::GET, ["orders"]) => {
                let st = self.state();
                match st.orders.list(None, q, &self.accounts) {
                    Ok(v) => json_response(StatusCode::OK, &v),
                    Err(m) => trader_error(StatusCode::BAD_REQUEST, &m),
                }
            }
            (_, ["accounts", hash, tail @ ..]) => {
                let Some(acct) = self.account_by_hash(hash) else {
                    return trader_error(
                        StatusCode::FORBIDDEN,
                        "Account not found or not linked to this token",
                    );
                };
                self.account_call(method, acct, tail, q, body)
            }
            _ => t.error(StatusCode::NOT_FOUND, "Not Found", "No such endpoint"),
        }
    }

    fn account_call(
        &self,
        method: &Method,
        acct: &Account,
        tail: &[&str],
        q: &Query,
        body: &Bytes,
    ) -> Response<ProxyBody> {
        let mut st = self.state();
        match (method, tail) {
            (&Method::GET, []) => {
                let with_pos = q.get("fields").is_some_and(|f| f.contains("positions"));
                json_response(StatusCode::OK, &market::account_json(acct, with_pos))
            }
            (&Method::GET, ["orders"]) => match st.orders.list(Some(acct), q, &self.accounts) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(m) => trader_error(StatusCode::BAD_REQUEST, &m),
            },
            (&Method::POST, ["orders"]) => match st.orders.place(acct, body) {
                Ok(id) => created(&acct.hash, id),
                Err(m) => trader_error(StatusCode::BAD_REQUEST, &m),
            },
            (&Method::POST, ["previewOrder"]) => match orders::preview(acct, body) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(m) => trader_error(StatusCode::BAD_REQUEST, &m),
            },
            (_, ["orders", id]) => {
                let Ok(id) = id.parse::<i64>() else {
                    return trader_error(StatusCode::BAD_REQUEST, "Invalid order id");
                };
                match *method {
                    Method::GET => match st.orders.get(acct, id) {
                        Some(v) => json_response(StatusCode::OK, &v),
                        None => trader_error(StatusCode::NOT_FOUND, "Order not found"),
                    },
                    Method::DELETE => match st.orders.cancel(acct, id) {
                        Ok(()) => Response::new(empty()),
                        Err((s, m)) => trader_error(s, &m),
                    },
                    Method::PUT => match st.orders.replace(acct, id, body) {
                        Ok(new_id) => created(&acct.hash, new_id),
                        Err((s, m)) => trader_error(s, &m),
                    },
                    _ => trader_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
                }
            }
            (&Method::GET, ["transactions"]) => match st.orders.transactions(acct, q) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(m) => trader_error(StatusCode::BAD_REQUEST, &m),
            },
            (&Method::GET, ["transactions", id]) => {
                match id
                    .parse::<i64>()
                    .ok()
                    .and_then(|id| st.orders.transaction(acct, id))
                {
                    Some(v) => json_response(StatusCode::OK, &v),
                    None => trader_error(StatusCode::NOT_FOUND, "Transaction not found"),
                }
            }
            _ => trader_error(StatusCode::NOT_FOUND, "Not Found"),
        }
    }

    fn user_preference(&self) -> Value {
        let accounts: Vec<Value> = self
            .accounts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({"accountNumber": a.number, "primaryAccount": i == 0, "type": "BROKERAGE",
                       "nickName": if i == 0 { "Individual" } else { "Cash" },
                       "displayAcctId": format!("...{}", &a.number[a.number.len() - 3..]),
                       "autoPositionEffect": false, "accountColor": "Green"})
            })
            .collect();
        json!({
            "accounts": accounts,
            "streamerInfo": [{
                "streamerSocketUrl": self.opts.streamer_url,
                "schwabClientCustomerId": account_hash("customer"),
                "schwabClientCorrelId": uuid_like(),
                "schwabClientChannel": "N9",
                "schwabClientFunctionId": "APIAPP"
            }],
            "offers": [{"level2Permissions": true, "mktDataPermission": "NP"}]
        })
    }

    fn oauth(&self, parts: &http::request::Parts, path: &str, body: &Bytes) -> Response<ProxyBody> {
        let q = Query::parse(parts.uri.query().unwrap_or(""));
        match (&parts.method, path) {
            (&Method::GET, "/v1/oauth/authorize") => {
                if q.get("client_id") != Some(self.opts.app_key.as_str()) {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_client",
                        "Unknown client_id",
                    );
                }
                let Some(redirect) = q.get("redirect_uri").filter(|r| r.starts_with("https://"))
                else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "redirect_uri must be https",
                    );
                };
                let code = self.grant_code(redirect);
                let mut loc = format!("{redirect}?code={}%40&session={}", code, uuid_like());
                if let Some(s) = q.get("state") {
                    loc.push_str("&state=");
                    loc.push_str(&query::encode(s));
                }
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::FOUND;
                if let Ok(v) = HeaderValue::from_str(&loc) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            (&Method::POST, "/v1/oauth/token") => self.token_endpoint(&parts.headers, body),
            _ => oauth_error(StatusCode::NOT_FOUND, "not_found", "No such endpoint"),
        }
    }

    fn token_endpoint(&self, h: &http::HeaderMap, body: &Bytes) -> Response<ProxyBody> {
        let secret = self
            .app_secret
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| self.opts.app_secret.clone());
        let expected = format!("{}:{}", self.opts.app_key, secret);
        let presented = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        let ok = presented.is_some_and(|p| {
            aws_lc_rs::constant_time::verify_slices_are_equal(&p, expected.as_bytes()).is_ok()
        });
        if !ok {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed",
            );
        }
        let form = Query::parse(std::str::from_utf8(body).unwrap_or(""));
        let mut st = self.state();
        let now = SystemTime::now();
        let refresh = match form.get("grant_type") {
            Some("authorization_code") => {
                let code = form.get("code").unwrap_or("");
                let code = code.strip_suffix('@').unwrap_or(code);
                match st.codes.remove(code) {
                    Some((redirect, exp))
                        if exp > now && form.get("redirect_uri") == Some(redirect.as_str()) =>
                    {
                        let rt = random_token("sim-rt-");
                        st.tokens.insert(
                            rt.clone(),
                            TokenInfo {
                                refresh: true,
                                expires: now + self.opts.refresh_token_ttl,
                            },
                        );
                        rt
                    }
                    _ => {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "Authorization code is invalid or expired",
                        );
                    }
                }
            }
            Some("refresh_token") => {
                let rt = form.get("refresh_token").unwrap_or("").to_owned();
                let valid = st
                    .tokens
                    .get(&rt)
                    .is_some_and(|t| t.refresh && t.expires > now);
                if !valid {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "unsupported_token_type",
                        "400 Bad Request: \"{\"error_description\":\"Exception while authenticating refresh token [...]\",\"error\":\"refresh_token_authentication_error\"}\"",
                    );
                }
                rt
            }
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "Unsupported grant type",
                );
            }
        };
        let at = random_token("sim-at-");
        st.tokens.insert(
            at.clone(),
            TokenInfo {
                refresh: false,
                expires: now + self.opts.access_token_ttl,
            },
        );
        json_response(
            StatusCode::OK,
            &json!({
                "expires_in": self.opts.access_token_ttl.as_secs(),
                "token_type": "Bearer",
                "scope": "api",
                "refresh_token": refresh,
                "access_token": at,
                "id_token": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzaW0ifQ."
            }),
        )
    }
}

#[derive(Clone, Copy)]
enum Api {
    Trader,
    MarketData,
}

impl Api {
    fn error(self, status: StatusCode, title: &str, detail: &str) -> Response<ProxyBody> {
        match self {
            Api::Trader => trader_error(status, detail),
            Api::MarketData => md_error(status, title, detail),
        }
    }
}

pub(crate) fn uuid_like() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let h = crate::keys::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Trader API error shape: `{"message", "errors": [..]}`.
pub(crate) fn trader_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json_response(status, &json!({"message": message, "errors": [message]}))
}

/// Market Data error shape: `{"errors": [{id, status, title, detail}]}`.
pub(crate) fn md_error(status: StatusCode, title: &str, detail: &str) -> Response<ProxyBody> {
    json_response(
        status,
        &json!({"errors": [{"id": uuid_like(), "status": status.as_u16().to_string(), "title": title, "detail": detail}]}),
    )
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<ProxyBody> {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// 201 with an empty body and the absolute Location on the real Schwab host:
/// schwab-py's `extract_order_id` only accepts `https://api.schwabapi.com/…`.
fn created(hash: &str, id: i64) -> Response<ProxyBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::CREATED;
    let loc = format!("https://api.schwabapi.com/trader/v1/accounts/{hash}/orders/{id}");
    if let Ok(v) = HeaderValue::from_str(&loc) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
