//! `portcullis halt on|off|status`: the kill switch from a terminal. The
//! command is an ordinary client of the admin API, authenticated and
//! authorized like any other call, so it can do nothing a curl could not.
//!
//! * `status` — `GET /admin/status` (ViewStatus).
//! * `on` — `POST /admin/halt` (HaltTrading: any Admin, no MFA).
//! * `off` — `DELETE /admin/halt` (ResumeTrading: the shipped policies want
//!   a Super Admin session with MFA): the command first trades the caller's
//!   key and one-time code for a proxy token at `/v1/oauth/token`.
//!
//! The caller key comes from a secret reference (`--key env:NAME`, default
//! `env:PORTCULLIS_KEY`), never from the command line itself.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret;

use crate::config::{Config, Mode};
use crate::credentials::commands::Failure;

/// Exit codes of `portcullis halt`.
pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_UNAVAILABLE: u8 = 69;

pub enum HaltAction {
    Status,
    On {
        reason: Option<String>,
        cancel_open_orders: Option<bool>,
    },
    Off {
        client_id: String,
        otp: String,
    },
}

pub struct HaltArgs {
    pub action: HaltAction,
    pub config: Option<PathBuf>,
    pub admin: Option<String>,
    pub proxy: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub key: String,
    pub json: bool,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

const TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: HaltArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let usage = |m: String| Failure(EXIT_USAGE, m);
    let config = match &args.config {
        Some(p) => Some(Config::from_file(p, Mode::Normal).map_err(|e| usage(e.to_string()))?),
        None => None,
    };
    let admin = match (&args.admin, &config) {
        (Some(a), _) => a.trim_end_matches('/').to_owned(),
        (None, Some(c)) => format!("http://{}", c.admin.address),
        (None, None) => "http://127.0.0.1:9464".to_owned(),
    };
    let key_ref: crate::config::secret::SecretRef =
        args.key.parse().map_err(|e| usage(format!("--key: {e}")))?;
    let key = crate::config::secret::resolve(&key_ref).map_err(|e| usage(format!("--key: {e}")))?;
    let client = client(args.ca_file.as_deref())?;

    let (method, url, bearer) = match &args.action {
        HaltAction::Status => (Method::GET, format!("{admin}/admin/status"), key),
        HaltAction::On {
            reason,
            cancel_open_orders,
        } => {
            let mut q = Vec::new();
            if let Some(r) = reason {
                q.push(format!("reason={}", crate::sim::query::encode(r)));
            }
            if let Some(c) = cancel_open_orders {
                q.push(format!("cancel_open_orders={c}"));
            }
            let query = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            (Method::POST, format!("{admin}/admin/halt{query}"), key)
        }
        HaltAction::Off { client_id, otp } => {
            let proxy = match (&args.proxy, &config) {
                (Some(p), _) => p.trim_end_matches('/').to_owned(),
                (None, Some(c)) => match c.listen.first() {
                    Some(l) if l.tls.is_some() => format!("https://{}", l.address),
                    Some(l) => format!("http://{}", l.address),
                    None => return Err(usage("the configuration has no listener".into())),
                },
                (None, None) => "https://127.0.0.1:8443".to_owned(),
            };
            let token = mfa_token(&client, &proxy, client_id, &key, otp).await?;
            (Method::DELETE, format!("{admin}/admin/halt"), token)
        }
    };
    let (status, body) = call(&client, method, &url, Some(&bearer), None).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if args.json {
        let _ = writeln!(out, "{v}");
    }
    if !status.is_success() {
        return Err(Failure(EXIT_REFUSED, refusal(status, &v)));
    }
    if !args.json {
        describe(&v, out);
    }
    Ok(())
}

/// Trades the key and a one-time code for a proxy access token (MFA).
async fn mfa_token(
    client: &HttpsClient,
    proxy: &str,
    client_id: &str,
    key: &secrecy::SecretString,
    otp: &str,
) -> Result<secrecy::SecretString, Failure> {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{client_id}:{}", key.expose_secret()));
    let form = format!(
        "grant_type=client_credentials&otp={}",
        crate::sim::query::encode(otp)
    );
    let mut auth = HeaderValue::try_from(format!("Basic {basic}")).map_err(|_| {
        Failure(
            EXIT_USAGE,
            "the client id has bytes not allowed in a header".into(),
        )
    })?;
    auth.set_sensitive(true);
    let (status, body) = call(
        client,
        Method::POST,
        &format!("{proxy}/v1/oauth/token"),
        None,
        Some((auth, form)),
    )
    .await?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let why = v
            .get("error_description")
            .and_then(|d| d.as_str())
            .unwrap_or("refused");
        return Err(Failure(
            EXIT_REFUSED,
            format!("the proxy refused the sign-in ({status}): {why}"),
        ));
    }
    v.get("access_token")
        .and_then(|t| t.as_str())
        .map(|t| secrecy::SecretString::from(t.to_owned()))
        .ok_or_else(|| {
            Failure(
                EXIT_UNAVAILABLE,
                "the token endpoint answered without a token".into(),
            )
        })
}

fn client(ca_file: Option<&std::path::Path>) -> Result<HttpsClient, Failure> {
    let https = crate::server::tls::http1_connector(ca_file, TIMEOUT, true)
        .map_err(|e| Failure(EXIT_USAGE, format!("--ca-file: {e}")))?;
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// One request: `bearer` as `Authorization: Bearer`, or a form body with
/// its own Authorization header.
async fn call(
    client: &HttpsClient,
    method: Method,
    url: &str,
    bearer: Option<&secrecy::SecretString>,
    form: Option<(HeaderValue, String)>,
) -> Result<(http::StatusCode, Bytes), Failure> {
    let usage = |m: String| Failure(EXIT_USAGE, m);
    let uri: http::Uri = url
        .parse()
        .map_err(|_| usage(format!("not a URL: {url}")))?;
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    if let Some(token) = bearer {
        let mut v = HeaderValue::try_from(format!("Bearer {}", token.expose_secret()))
            .map_err(|_| usage("the key has bytes not allowed in a header".into()))?;
        v.set_sensitive(true);
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    if let Some((auth, body)) = form {
        req.headers_mut().insert(header::AUTHORIZATION, auth);
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        *req.body_mut() = Full::new(Bytes::from(body));
    }
    let unreachable = |e: String| Failure(EXIT_UNAVAILABLE, format!("{url}: {e}"));
    let resp = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .map_err(|_| unreachable("no answer in time".into()))?
        .map_err(|e| unreachable(crate::pipeline::upstream::ErrorChain(&e).to_string()))?;
    let status = resp.status();
    let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| unreachable("the answer did not complete in time".into()))?
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

fn refusal(status: http::StatusCode, v: &serde_json::Value) -> String {
    let field = |k: &str| v.get(k).and_then(|x| x.as_str());
    let mut m = format!("refused ({status})");
    if let Some(code) = field("error") {
        m.push_str(&format!(": {code}"));
    }
    if let Some(reason) = field("reason") {
        m.push_str(&format!(" ({reason})"));
    }
    if let Some(msg) = field("message") {
        m.push_str(&format!(" — {msg}"));
    }
    if field("reason") == Some("mfa_required") {
        m.push_str(
            "\nreleasing needs a session with MFA: portcullis halt off --client-id ID --otp CODE",
        );
    }
    m
}

fn describe(v: &serde_json::Value, out: &mut dyn Write) {
    let t = &v["trading"];
    let s = |k: &str| t.get(k).and_then(|x| x.as_str()).unwrap_or("-");
    if t["halted"].as_bool() == Some(true) {
        let _ = writeln!(
            out,
            "trading: HALTED (by {} at {}, reason: {})",
            s("by"),
            s("at"),
            s("reason")
        );
    } else {
        let _ = writeln!(
            out,
            "trading: allowed (last change by {} at {})",
            s("by"),
            s("at")
        );
    }
    if let Some(c) = v.get("cancel_open_orders") {
        let _ = writeln!(
            out,
            "open orders: {} cancelled, {} failed, on {} account(s)",
            c["cancelled"], c["failed"], c["accounts"]
        );
        for o in c["orders"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {} order {}: {}",
                o["account"].as_str().unwrap_or("-"),
                o["order_id"].as_str().unwrap_or("-"),
                o["result"].as_str().unwrap_or("-")
            );
        }
    }
    if let Some(h) = v.get("policy_hash").and_then(|h| h.as_str()) {
        let _ = writeln!(out, "policy set: {h}");
    }
    if let Some(u) = v.get("upstream_credentials").and_then(|u| u.as_bool()) {
        let _ = writeln!(
            out,
            "Schwab credentials: {}",
            if u { "ready" } else { "NOT READY" }
        );
    }
}
