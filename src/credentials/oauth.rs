//! The broker's OAuth endpoints as the proxy uses them: the authorize URL a
//! human opens once, and the token endpoint (authorization-code exchange and
//! refresh) called with HTTP Basic `app_key:app_secret`.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::server::tls;
use crate::sim::query::encode;

/// A token endpoint answer we keep.
pub struct TokenResponse {
    pub access_token: SecretString,
    /// Schwab sends the (unchanged) refresh token back on refresh; absent
    /// means "keep the one you have".
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub expires_in: Duration,
    pub scope: String,
}

/// Why a token call failed. Carries the OAuth error code the endpoint sent
/// (never its description, which may echo input) or a transport summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    /// The endpoint refused the grant (4xx): the refresh token or the code
    /// is no longer valid, or the app credentials are wrong.
    Rejected { status: u16, error: String },
    /// Could not reach it, it failed (5xx) or timed out: worth retrying.
    Unavailable(String),
    /// A 200 we cannot use.
    BadResponse(&'static str),
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OAuthError::Rejected { status, error } => {
                write!(f, "the token endpoint refused the grant ({status} {error})")
            }
            OAuthError::Unavailable(why) => write!(f, "the token endpoint is unavailable: {why}"),
            OAuthError::BadResponse(why) => {
                write!(f, "the token endpoint's answer is unusable: {why}")
            }
        }
    }
}

impl std::error::Error for OAuthError {}

impl OAuthError {
    /// Whether retrying the same grant later can help.
    pub fn retryable(&self) -> bool {
        matches!(self, OAuthError::Unavailable(_))
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct OAuthClient {
    origin: String,
    app_key: SecretString,
    basic: HeaderValue,
    client: HttpsClient,
    timeout: Duration,
}

impl OAuthClient {
    /// `origin`: `https://host[:port]` serving `/v1/oauth/*`.
    pub fn new(
        origin: &str,
        extra_ca: Option<&std::path::Path>,
        app_key: SecretString,
        app_secret: &SecretString,
        timeout: Duration,
    ) -> Result<OAuthClient, String> {
        crate::config::parse_upstream_origin(origin)?;
        let https = tls::http1_connector(extra_ca, timeout, false).map_err(|e| e.to_string())?;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        let creds = format!("{}:{}", app_key.expose_secret(), app_secret.expose_secret());
        let mut basic = HeaderValue::try_from(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds.as_bytes())
        ))
        .map_err(|_| "the app key or secret has bytes not allowed in a header".to_owned())?;
        basic.set_sensitive(true);
        Ok(OAuthClient {
            origin: origin.trim_end_matches('/').to_owned(),
            app_key,
            basic,
            client,
            timeout,
        })
    }

    /// The URL a human opens to authorize the app (the app key is the
    /// public `client_id`, not a secret).
    pub fn authorize_url(&self, callback_url: &str, state: &str) -> String {
        format!(
            "{}/v1/oauth/authorize?response_type=code&client_id={}&redirect_uri={}&state={}",
            self.origin,
            encode(self.app_key.expose_secret()),
            encode(callback_url),
            encode(state)
        )
    }

    pub async fn exchange_code(
        &self,
        code: &SecretString,
        redirect_uri: &str,
    ) -> Result<TokenResponse, OAuthError> {
        let form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}",
            encode(code.expose_secret()),
            encode(redirect_uri)
        );
        self.call(SecretString::from(form)).await
    }

    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenResponse, OAuthError> {
        let form = format!(
            "grant_type=refresh_token&refresh_token={}",
            encode(refresh_token.expose_secret())
        );
        self.call(SecretString::from(form)).await
    }

    async fn call(&self, form: SecretString) -> Result<TokenResponse, OAuthError> {
        let uri: Uri = format!("{}/v1/oauth/token", self.origin)
            .parse()
            .map_err(|_| OAuthError::Unavailable("bad token endpoint URL".into()))?;
        let mut req = Request::new(Full::new(Bytes::copy_from_slice(
            form.expose_secret().as_bytes(),
        )));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(header::AUTHORIZATION, self.basic.clone());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| OAuthError::Unavailable(transport_summary(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|_| OAuthError::Unavailable("the answer could not be read".into()))?
                .to_bytes();
            Ok::<_, OAuthError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| OAuthError::Unavailable("timed out".into()))??;
        if status != StatusCode::OK {
            // A refusal is a 4xx with an OAuth error body. Anything else — a
            // 5xx, an edge's HTML "Access Denied", a 404 from a wrong URL, a
            // 408 — is a failure to retry, not a verdict on the token.
            return Err(match error_code(&body) {
                Some(error)
                    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS =>
                {
                    OAuthError::Rejected {
                        status: status.as_u16(),
                        error,
                    }
                }
                _ => OAuthError::Unavailable(format!("HTTP {}", status.as_u16())),
            });
        }
        parse_token_response(&body)
    }
}

fn transport_summary(e: &hyper_util::client::legacy::Error) -> String {
    // The chain names hosts and OS errors, never request contents.
    crate::pipeline::upstream::ErrorChain(e).to_string()
}

/// The `error` member of an OAuth error body (RFC 6749 §5.2), if it is one.
fn error_code(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct E {
        error: Option<String>,
    }
    serde_json::from_slice::<E>(body)
        .ok()
        .and_then(|e| e.error)
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

fn parse_token_response(body: &[u8]) -> Result<TokenResponse, OAuthError> {
    #[derive(Deserialize)]
    struct Raw {
        access_token: Option<String>,
        refresh_token: Option<String>,
        id_token: Option<String>,
        expires_in: Option<u64>,
        scope: Option<String>,
    }
    let raw: Raw =
        serde_json::from_slice(body).map_err(|_| OAuthError::BadResponse("not a JSON object"))?;
    let access = raw
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(OAuthError::BadResponse("no access_token"))?;
    if HeaderValue::try_from(format!("Bearer {access}")).is_err() {
        return Err(OAuthError::BadResponse(
            "the access token has bytes not allowed in a header",
        ));
    }
    Ok(TokenResponse {
        access_token: SecretString::from(access),
        refresh_token: raw
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from),
        id_token: raw.id_token.map(SecretString::from),
        // Schwab's documented lifetime when the field is missing.
        expires_in: Duration::from_secs(raw.expires_in.unwrap_or(1800).clamp(1, 86_400)),
        scope: raw.scope.unwrap_or_else(|| "api".into()),
    })
}

/// The `code` from the URL the browser was redirected to, after checking
/// that its `state` is the one this login sent (so a code minted for
/// someone else's login cannot be slipped in). Accepts the full URL or just
/// its query string.
pub fn code_from_callback(pasted: &str, expected_state: &str) -> Result<SecretString, String> {
    let pasted = pasted.trim();
    let query = match pasted.split_once('?') {
        Some((_, q)) => q,
        None => pasted,
    };
    let query = query.split('#').next().unwrap_or("");
    let q = crate::sim::Query::parse(query);
    if q.get("state") != Some(expected_state) {
        return Err(
            "the callback URL's `state` does not match this login (or is missing); \
                    start again with the address printed above"
                .into(),
        );
    }
    if let Some(err) = q.get("error") {
        return Err(format!("the authorization was refused: {err}"));
    }
    match q.get("code") {
        Some(c) if !c.is_empty() => Ok(SecretString::from(c.to_owned())),
        _ => Err(
            "no `code` in the callback URL; paste the whole address the browser \
                  was sent to after logging in"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_parsing() {
        let c = code_from_callback(
            "https://127.0.0.1:8182/?code=C0.abc%40&session=x&state=s1",
            "s1",
        )
        .unwrap();
        assert_eq!(c.expose_secret(), "C0.abc@");
        assert!(code_from_callback("https://127.0.0.1/?code=x&state=other", "s1").is_err());
        assert!(
            code_from_callback("https://127.0.0.1/?code=x", "s1").is_err(),
            "no state"
        );
        assert!(code_from_callback("https://127.0.0.1/?state=s1", "s1").is_err());
        assert!(
            code_from_callback("https://127.0.0.1/?error=access_denied&state=s1", "s1").is_err()
        );
        assert_eq!(
            code_from_callback("code=abc&state=s1", "s1")
                .unwrap()
                .expose_secret(),
            "abc"
        );
    }

    #[test]
    fn token_responses() {
        let r = parse_token_response(
            br#"{"expires_in":1800,"token_type":"Bearer","scope":"api","refresh_token":"r","access_token":"a","id_token":"i"}"#,
        )
        .unwrap();
        assert_eq!(r.access_token.expose_secret(), "a");
        assert_eq!(r.expires_in, Duration::from_secs(1800));
        assert!(parse_token_response(br#"{"refresh_token":"r"}"#).is_err());
        assert!(parse_token_response(b"<html>Access Denied</html>").is_err());
        assert!(parse_token_response(br#"{"access_token":"a\nb"}"#).is_err());
        assert_eq!(
            error_code(br#"{"error":"unsupported_token_type","error_description":"x"}"#).as_deref(),
            Some("unsupported_token_type")
        );
        assert_eq!(error_code(br#"{"error":"<script>"}"#), None);
        assert_eq!(error_code(b"<html>Access Denied</html>"), None);
    }
}
