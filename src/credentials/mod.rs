//! Broker credentials the proxy keeps for itself: the Schwab OAuth tokens
//! (encrypted at rest in [`store`], kept fresh by [`manager`], obtained and
//! refreshed through [`oauth`]) and the `Authorization` header injected
//! upstream.
//!
//! Secret values are exposed only here and in `config::secret`: a grep for
//! `expose_secret` finds every place a token or key leaves its wrapper.

pub mod commands;
pub mod manager;
pub mod oauth;
pub mod sessions;
pub mod store;
pub mod totp;

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::reject::Reject;
pub use manager::TokenManager;

/// The Schwab OAuth tokens and what the proxy knows of their lifetimes.
/// Times are Unix milliseconds. `Debug` shows the expiries only.
pub struct Tokens {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub id_token: Option<SecretString>,
    pub scope: String,
    pub access_expires_at: i64,
    /// When the human login that minted the refresh token happened; Schwab
    /// does not extend a refresh token when it is used.
    pub refresh_issued_at: i64,
    pub refresh_expires_at: i64,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_issued_at", &self.refresh_issued_at)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .finish_non_exhaustive()
    }
}

impl Clone for Tokens {
    fn clone(&self) -> Tokens {
        let dup = |s: &SecretString| SecretString::from(s.expose_secret().to_owned());
        Tokens {
            access_token: dup(&self.access_token),
            refresh_token: dup(&self.refresh_token),
            id_token: self.id_token.as_ref().map(dup),
            scope: self.scope.clone(),
            access_expires_at: self.access_expires_at,
            refresh_issued_at: self.refresh_issued_at,
            refresh_expires_at: self.refresh_expires_at,
        }
    }
}

/// The plaintext inside the encrypted store.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensRepr<S> {
    access_token: S,
    refresh_token: S,
    #[serde(default)]
    id_token: Option<S>,
    scope: String,
    access_expires_at: i64,
    refresh_issued_at: i64,
    refresh_expires_at: i64,
}

impl Serialize for Tokens {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        TokensRepr {
            access_token: self.access_token.expose_secret(),
            refresh_token: self.refresh_token.expose_secret(),
            id_token: self.id_token.as_ref().map(|t| t.expose_secret()),
            scope: self.scope.clone(),
            access_expires_at: self.access_expires_at,
            refresh_issued_at: self.refresh_issued_at,
            refresh_expires_at: self.refresh_expires_at,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Tokens {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tokens, D::Error> {
        let r = TokensRepr::<String>::deserialize(d)?;
        Ok(Tokens {
            access_token: SecretString::from(r.access_token),
            refresh_token: SecretString::from(r.refresh_token),
            id_token: r.id_token.map(SecretString::from),
            scope: r.scope,
            access_expires_at: r.access_expires_at,
            refresh_issued_at: r.refresh_issued_at,
            refresh_expires_at: r.refresh_expires_at,
        })
    }
}

/// How long a Schwab refresh token lives from the login that minted it.
pub const REFRESH_TOKEN_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `Bearer <token>`, marked sensitive (never logged by hyper or h2).
pub fn bearer(token: &SecretString) -> Option<HeaderValue> {
    let mut v = HeaderValue::try_from(format!("Bearer {}", token.expose_secret())).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Where the upstream `Authorization` header comes from.
pub enum UpstreamAuth {
    /// A fixed access token from a secret reference (`upstream.access_token`):
    /// benchmarks, tests and setups where something else refreshes it.
    /// Replaced when its secret file is re-read.
    Static(crate::swap::Swap<HeaderValue>),
    /// The OAuth token manager (`schwab.token_store`).
    Managed(Arc<TokenManager>),
}

impl UpstreamAuth {
    /// The header to inject, refreshing first (single-flight) if the access
    /// token has expired. No valid token: `upstream_credentials_unavailable`.
    pub async fn header(&self) -> Result<HeaderValue, Reject> {
        match self {
            UpstreamAuth::Static(h) => Ok(HeaderValue::clone(&h.load())),
            UpstreamAuth::Managed(m) => match m.current() {
                Some(h) => Ok(h),
                // Boxed: the refresh (an HTTPS exchange) is rare, and inline
                // its future would grow every request's future.
                None => Box::pin(m.authorization()).await,
            },
        }
    }

    /// The header if one is usable right now, without waiting.
    pub fn current(&self) -> Option<HeaderValue> {
        match self {
            UpstreamAuth::Static(h) => Some(HeaderValue::clone(&h.load())),
            UpstreamAuth::Managed(m) => m.current(),
        }
    }

    /// Whether a usable credential is held right now (`/readyz`).
    pub fn ready(&self) -> bool {
        match self {
            UpstreamAuth::Static(_) => true,
            UpstreamAuth::Managed(m) => m.ready(),
        }
    }
}

/// The token store the configuration names (`schwab.token_store`).
pub fn store_from_config(config: &crate::config::Config) -> Result<store::TokenStore, String> {
    let ts = config
        .schwab
        .token_store
        .as_ref()
        .ok_or("schwab.token_store is not configured")?;
    let key = crate::config::secret::resolve(&ts.key)
        .map_err(|e| format!("schwab.token_store.key: {e}"))?;
    let key =
        store::StoreKey::from_secret(&key).map_err(|e| format!("schwab.token_store.key: {e}"))?;
    Ok(store::TokenStore::new(ts.file.clone(), key))
}

/// The OAuth client for the configured app (`schwab.app_key`, `app_secret`,
/// `oauth_base_url` or `upstream.base_url`).
pub fn oauth_from_config(config: &crate::config::Config) -> Result<oauth::OAuthClient, String> {
    let s = &config.schwab;
    let get = |key: &str, r: &Option<crate::config::secret::SecretRef>| {
        let r = r.as_ref().ok_or(format!("{key} is not configured"))?;
        crate::config::secret::resolve(r).map_err(|e| format!("{key}: {e}"))
    };
    let app_key = get("schwab.app_key", &s.app_key)?;
    let app_secret = get("schwab.app_secret", &s.app_secret)?;
    let origin = s
        .oauth_base_url
        .as_deref()
        .unwrap_or(&config.upstream.base_url);
    oauth::OAuthClient::new(
        origin,
        config.upstream.extra_ca_file.as_deref(),
        app_key,
        &app_secret,
        config.upstream.total_timeout.0,
    )
    .map_err(|e| format!("schwab OAuth client: {e}"))
}

/// The upstream credential the configuration asks for.
pub fn upstream_auth_from_config(
    config: &crate::config::Config,
    metrics: Option<Arc<crate::admin::metrics::Metrics>>,
) -> Result<UpstreamAuth, String> {
    if let Some(r) = &config.upstream.access_token {
        let token =
            crate::config::secret::resolve(r).map_err(|e| format!("upstream.access_token: {e}"))?;
        let header = bearer(&token).ok_or(
            "upstream.access_token: contains bytes not allowed in an HTTP header".to_owned(),
        )?;
        return Ok(UpstreamAuth::Static(crate::swap::Swap::new(header)));
    }
    let store = store_from_config(config)?;
    let oauth = oauth_from_config(config)?;
    let m = TokenManager::new(store, oauth, config.schwab.refresh_ahead.0, metrics)
        .map_err(|e| e.to_string())?;
    Ok(UpstreamAuth::Managed(Arc::new(m)))
}
