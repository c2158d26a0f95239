//! `portcullis token …`: log in once (`init`), inspect (`status`), rotate
//! the store key (`rekey`) and make a key (`new-key`). Tokens are never
//! printed.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::manager::from_login;
use super::oauth::code_from_callback;
use super::store::{StoreError, StoreKey, TokenStore};
use super::{now_ms, oauth_from_config, store_from_config};
use crate::config::{Config, Mode};

/// Exit codes of the token commands (beyond 0 and 64 for configuration).
pub const EXIT_NEEDS_LOGIN: u8 = 1;
/// The store exists but cannot be read: wrong key, edited, newer version.
pub const EXIT_STORE_UNREADABLE: u8 = 65;
/// The broker refused the login or could not be reached.
pub const EXIT_UNAVAILABLE: u8 = 69;

/// A command failure: message and exit code.
pub struct Failure(pub u8, pub String);

fn config_failure(m: impl Into<String>) -> Failure {
    Failure(64, m.into())
}

fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Missing(_) => Failure(EXIT_NEEDS_LOGIN, e.to_string()),
        StoreError::BadKey(_) => config_failure(e.to_string()),
        _ => Failure(EXIT_STORE_UNREADABLE, e.to_string()),
    }
}

fn load_config(path: &Path) -> Result<Config, Failure> {
    Config::from_file(path, Mode::Normal).map_err(|e| config_failure(e.to_string()))
}

/// How `token init` receives the browser's redirect.
pub enum CallbackSource<'a> {
    /// The user pastes the redirected URL on this reader.
    Paste(&'a mut dyn BufRead),
    /// A one-shot HTTPS listener on the callback URL's address catches it.
    Listen,
}

/// `token init`: the authorization-code flow, then the tokens into the store.
pub async fn init(
    config_path: &Path,
    source: CallbackSource<'_>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    init_with(&load_config(config_path)?, source, out).await
}

/// [`init`] with a configuration already loaded.
pub async fn init_with(
    cfg: &Config,
    source: CallbackSource<'_>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let store = store_from_config(cfg).map_err(config_failure)?;
    let oauth = oauth_from_config(cfg).map_err(config_failure)?;
    let callback = cfg
        .schwab
        .callback_url
        .clone()
        .ok_or_else(|| config_failure("schwab.callback_url is required for `token init`"))?;
    let state = {
        let mut b = [0u8; 12];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| Failure(70, "no randomness".into()))?;
        crate::keys::hex(&b)
    };
    let url = oauth.authorize_url(&callback, &state);
    let w = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };
    w(
        out,
        format!(
            "1. Open this address in a browser, log in to Schwab and approve the app:\n\n   {url}\n"
        ),
    );
    let pasted = match source {
        CallbackSource::Paste(input) => {
            w(
                out,
                format!(
                    "2. The browser is then sent to {callback}?code=… (the page may not load; \
                     that is fine).\n   Paste that whole address here and press Enter \
                     (the code expires in about 30 seconds):"
                ),
            );
            let mut line = String::new();
            input
                .read_line(&mut line)
                .map_err(|e| Failure(EXIT_NEEDS_LOGIN, format!("reading the address: {e}")))?;
            SecretString::from(line)
        }
        CallbackSource::Listen => {
            w(
                out,
                format!("2. Waiting for the browser on {callback} (5 minutes) …"),
            );
            catch_callback(&callback, &state, Duration::from_secs(300)).await?
        }
    };
    let code = code_from_callback(pasted.expose_secret(), &state)
        .map_err(|m| Failure(EXIT_NEEDS_LOGIN, m))?;
    let resp = oauth
        .exchange_code(&code, &callback)
        .await
        .map_err(|e| Failure(EXIT_UNAVAILABLE, format!("logging in: {e}")))?;
    let tokens = from_login(resp).map_err(|e| Failure(EXIT_UNAVAILABLE, e.to_string()))?;
    {
        let _lock = store.lock().map_err(store_failure)?;
        store.save(&tokens).map_err(store_failure)?;
    }
    w(
        out,
        format!(
            "Logged in. Tokens stored, encrypted, in {} (key id {}).\n\
             The refresh token expires {} — run `portcullis token init` again before then.\n\
             A running proxy picks the new tokens up by itself.",
            store.path().display(),
            store.key_id(),
            when(tokens.refresh_expires_at)
        ),
    );
    Ok(())
}

/// `token status`: both expiries, never the tokens. Exit 0 while the
/// refresh token is valid, [`EXIT_NEEDS_LOGIN`] once it has expired.
pub fn status(config_path: &Path, out: &mut dyn Write) -> Result<(), Failure> {
    let cfg = load_config(config_path)?;
    let store = store_from_config(&cfg).map_err(config_failure)?;
    let t = store.load().map_err(store_failure)?;
    let _ = writeln!(
        out,
        "token store: {} (key id {})\naccess token:  expires {}\nrefresh token: issued {}, expires {}",
        store.path().display(),
        store.key_id(),
        when(t.access_expires_at),
        when(t.refresh_issued_at),
        when(t.refresh_expires_at),
    );
    if now_ms() >= t.refresh_expires_at {
        return Err(Failure(
            EXIT_NEEDS_LOGIN,
            "the refresh token has expired: run `portcullis token init`".into(),
        ));
    }
    Ok(())
}

/// `token rekey`: re-encrypts the store under `new_key` (a secret
/// reference); the configuration then points `schwab.token_store.key` at it.
pub fn rekey(config_path: &Path, new_key: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let cfg = load_config(config_path)?;
    let store = store_from_config(&cfg).map_err(config_failure)?;
    store.load().map_err(store_failure)?;
    let reference: crate::config::secret::SecretRef = new_key
        .parse()
        .map_err(|m: String| config_failure(format!("--new-key: {m}")))?;
    let secret = crate::config::secret::resolve(&reference)
        .map_err(|e| config_failure(format!("--new-key: {e}")))?;
    let key =
        StoreKey::from_secret(&secret).map_err(|e| config_failure(format!("--new-key: {e}")))?;
    if key.id() == store.key_id() {
        return Err(config_failure(
            "--new-key is the key the store already uses",
        ));
    }
    let new_store = TokenStore::new(store.path().to_owned(), key);
    {
        let _lock = store.lock().map_err(store_failure)?;
        // Read again under the lock: the proxy may have refreshed meanwhile.
        let tokens = store.load().map_err(store_failure)?;
        new_store.save(&tokens).map_err(store_failure)?;
    }
    let _ = writeln!(
        out,
        "{} re-encrypted: key id {} → {}.\nNow set schwab.token_store.key to {reference} \
         and reload or restart the proxy; the old key no longer opens the file.",
        store.path().display(),
        store.key_id(),
        new_store.key_id()
    );
    Ok(())
}

/// `token new-key`: a fresh random store key, base64.
pub fn new_key(out: &mut dyn Write) -> Result<(), Failure> {
    let k = StoreKey::generate().map_err(|e| Failure(70, e.to_string()))?;
    let _ = writeln!(out, "{}", k.expose_secret());
    Ok(())
}

/// A Unix-ms time as RFC 3339 UTC plus how far away it is.
fn when(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "(invalid time)".into());
    let delta = (ms - now_ms()) / 1000;
    let span = |s: i64| {
        let s = s.abs();
        if s >= 86_400 {
            format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
        } else if s >= 3600 {
            format!("{}h {}m", s / 3600, (s % 3600) / 60)
        } else {
            format!("{}m {}s", s / 60, s % 60)
        }
    };
    if delta >= 0 {
        format!("{t} (in {})", span(delta))
    } else {
        format!("{t} ({} ago — expired)", span(delta))
    }
}

/// Serves one HTTPS request on the callback URL's address (self-signed
/// certificate: the browser warns once) and returns the URL it was sent to.
async fn catch_callback(
    callback: &str,
    state: &str,
    wait: Duration,
) -> Result<SecretString, Failure> {
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;

    let authority = callback
        .strip_prefix("https://")
        .and_then(|r| r.split(['/', '?']).next())
        .unwrap_or("");
    let addr: SocketAddr = authority.parse().map_err(|_| {
        config_failure(format!(
            "--listen needs schwab.callback_url with an IP address and port \
             (e.g. https://127.0.0.1:8182), not {callback}; paste the address instead"
        ))
    })?;
    let host = addr.ip().to_string();
    let leaf = crate::certs::DevCa::new("portcullis token init")
        .and_then(|ca| ca.leaf(&[host.as_str(), "localhost"]))
        .map_err(|e| Failure(70, format!("callback certificate: {e}")))?;
    let tls = crate::server::tls::http1_server_config_from_pem(&leaf.cert_pem, &leaf.key_pem)
        .map_err(|e| Failure(70, format!("callback TLS: {e}")))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure(69, format!("cannot listen on {addr}: {e}")))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    let serve = async {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                continue; // the browser rejecting the self-signed certificate once
            };
            let tx = tx.clone();
            let state = state.to_owned();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    // Only this login's redirect counts (its `state`):
                    // anything else on the port — a favicon, another local
                    // process — is ignored.
                    let target = req.uri().to_string();
                    let q = crate::sim::Query::parse(req.uri().query().unwrap_or(""));
                    let ours = q.get("state") == Some(state.as_str())
                        && (q.get("code").is_some() || q.get("error").is_some());
                    async move {
                        let body = if ours {
                            let _ = tx.try_send(target);
                            "portcullis: login received. You can close this tab."
                        } else {
                            "portcullis: waiting for the Schwab login redirect."
                        };
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from_static(body.as_bytes()),
                        )))
                    }
                });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    };
    tokio::select! {
        got = rx.recv() => got.map(SecretString::from).ok_or_else(|| Failure(70, "callback listener stopped".into())),
        _ = serve => Err(Failure(70, "callback listener stopped".into())),
        _ = tokio::time::sleep(wait) => Err(Failure(EXIT_NEEDS_LOGIN, "no login redirect arrived in time".into())),
    }
}
