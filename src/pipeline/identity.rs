//! Identity stage: who is calling. Callers present, as `Authorization:
//! Bearer <…>` — the slot where Schwab clients put their access token, so an
//! unmodified client works by storing it in its token file — either a
//! proxy-issued API key, or a short-lived proxy access token from the
//! proxy's token endpoint (`pc_at_…`, see `credentials::sessions`).

use std::sync::Arc;

use crate::config::{CallerConfig, Role};
use crate::credentials::sessions::{ACCESS_PREFIX, Sessions};
use crate::credentials::totp::Totp;
use crate::keys;
use crate::reject::Reject;
use crate::server::ClientCert;

/// A configured caller.
#[derive(Debug)]
pub struct Caller {
    pub id: Arc<str>,
    pub role: Role,
    /// Second factor for the token endpoint (humans).
    pub totp: Option<Totp>,
    /// The API key works only as a client secret at the token endpoint.
    pub require_token: bool,
    /// Request-signing keys by key id; non-empty: every request signed.
    pub signing_keys: Vec<(String, crate::pipeline::signature::VerifyKey)>,
    /// Addresses this caller's credentials work from (empty: any).
    pub allowed_ips: Vec<crate::pipeline::ip_filter::Cidr>,
}

/// Who a request is from, and how they proved it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub caller: Arc<Caller>,
    /// The proxy session (token endpoint) the request belongs to, if any.
    pub session_id: Option<Arc<str>>,
    /// The session was established with a second factor.
    pub mfa: bool,
}

/// Key hashes of every configured caller, with their expiry (Unix seconds).
#[derive(Debug, Default)]
pub struct Identities {
    entries: Vec<([u8; 32], Option<i64>, Arc<Caller>)>,
    callers: Vec<Arc<Caller>>,
    /// mTLS: certificate SAN name → caller.
    by_cert: std::collections::HashMap<String, Arc<Caller>>,
}

/// Longest bearer token we bother hashing; real ones are ~47 bytes.
const MAX_TOKEN_LEN: usize = 512;

impl Identities {
    /// Builds the table from validated configuration (hashes already
    /// checked), reading each caller's TOTP secret. The error names the
    /// caller and the secret reference, never a value.
    pub fn from_config(callers: &[CallerConfig]) -> Result<Identities, String> {
        let mut entries = Vec::new();
        let mut all = Vec::new();
        let mut by_cert = std::collections::HashMap::new();
        for c in callers {
            let totp = match &c.totp_secret {
                None => None,
                Some(r) => {
                    let secret = crate::config::secret::resolve(r)
                        .map_err(|e| format!("callers `{}`: totp_secret: {e}", c.id))?;
                    Some(
                        Totp::from_base32(&secret)
                            .map_err(|e| format!("callers `{}`: totp_secret {r}: {e}", c.id))?,
                    )
                }
            };
            let mut signing_keys = Vec::new();
            for k in &c.signing_keys {
                signing_keys.push((k.keyid.clone(), signing_key(&c.id, k)?));
            }
            let caller = Arc::new(Caller {
                id: Arc::from(c.id.as_str()),
                role: c.role,
                totp,
                require_token: c.require_token,
                signing_keys,
                allowed_ips: c.allowed_ips.clone(),
            });
            for h in &c.key_hashes {
                if let Some(hash) = keys::parse_hash(&h.hash) {
                    entries.push((hash, h.expires, caller.clone()));
                }
            }
            for n in &c.client_cert_names {
                by_cert.insert(n.clone(), caller.clone());
            }
            all.push(caller);
        }
        Ok(Identities {
            entries,
            callers: all,
            by_cert,
        })
    }

    /// Finds the caller whose API key is `token`. Every stored hash is
    /// compared in constant time, with no early exit, so timing reveals
    /// nothing about which (or whether a) key matched.
    fn by_key(&self, token: &[u8], only: Option<&str>) -> Option<Arc<Caller>> {
        let presented = keys::hash_key(token);
        let mut found: Option<&(_, Option<i64>, Arc<Caller>)> = None;
        for entry in &self.entries {
            if keys::ct_eq(&entry.0, &presented) && only.is_none_or(|id| *entry.2.id == *id) {
                found = Some(entry);
            }
        }
        let (_, expires, caller) = found?;
        if let Some(at) = expires
            && time::OffsetDateTime::now_utc().unix_timestamp() >= *at
        {
            // Worth an operator's attention: a bot still uses a rotated-out key.
            tracing::warn!(caller = &*caller.id, "a caller presented an expired key");
            return None;
        }
        Some(caller.clone())
    }

    /// The caller a client certificate names, if any. A certificate whose
    /// names point at two different callers identifies nobody: refused.
    fn cert_caller(&self, cert: &ClientCert) -> Result<Option<&Arc<Caller>>, Reject> {
        let mut found: Option<&Arc<Caller>> = None;
        for n in cert.0.iter() {
            if let Some(c) = self.by_cert.get(n) {
                if found.is_some_and(|f| f.id != c.id) {
                    tracing::warn!("a client certificate names more than one caller; refused");
                    return Err(Reject::Unauthenticated);
                }
                found = Some(c);
            }
        }
        Ok(found)
    }

    /// The caller a client certificate names (ambiguous: none).
    pub fn caller_for_cert(&self, cert: &ClientCert) -> Option<Arc<Caller>> {
        self.cert_caller(cert).ok().flatten().cloned()
    }

    /// Whether any key or certificate name still identifies `id`.
    fn has_credentials(&self, id: &str) -> bool {
        self.entries.iter().any(|e| &*e.2.id == id) || self.by_cert.values().any(|c| &*c.id == id)
    }

    /// The caller with this id, if configured.
    pub fn caller(&self, id: &str) -> Option<Arc<Caller>> {
        self.callers.iter().find(|c| &*c.id == id).cloned()
    }

    /// Client authentication at the token endpoint: `client_id` is the
    /// caller id, `client_secret` one of its API keys.
    pub fn authenticate_client(&self, client_id: &str, secret: &[u8]) -> Option<Arc<Caller>> {
        if secret.is_empty() || secret.len() > MAX_TOKEN_LEN {
            return None;
        }
        self.by_key(secret, Some(client_id))
    }

    /// Identifies the request: by its `Authorization: Bearer` credential (a
    /// proxy access token, looked up in `sessions`, or an API key), and/or by
    /// the connection's verified client certificate. When both are present
    /// they must name the same caller.
    pub fn identify(
        &self,
        headers: &http::HeaderMap,
        sessions: &Sessions,
        cert: Option<&ClientCert>,
    ) -> Result<Identity, Reject> {
        let by_cert = match cert {
            Some(c) => self.cert_caller(c)?,
            None => None,
        };
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return match by_cert {
                Some(caller) => Ok(Identity {
                    caller: caller.clone(),
                    session_id: None,
                    mfa: false,
                }),
                None => Err(Reject::Unauthenticated),
            };
        };
        let who = self.by_bearer(value.as_bytes(), sessions)?;
        if by_cert.is_some_and(|c| c.id != who.caller.id) {
            tracing::warn!(
                certificate = &*by_cert.map(|c| c.id.clone()).unwrap_or_default(),
                bearer = &*who.caller.id,
                "client certificate and bearer credential name different callers"
            );
            return Err(Reject::Unauthenticated);
        }
        Ok(who)
    }

    fn by_bearer(&self, value: &[u8], sessions: &Sessions) -> Result<Identity, Reject> {
        let token = bearer_token(value).ok_or(Reject::Unauthenticated)?;
        if token.starts_with(ACCESS_PREFIX.as_bytes()) {
            let text = std::str::from_utf8(token).map_err(|_| Reject::Unauthenticated)?;
            let grant = sessions.verify(text).ok_or(Reject::Unauthenticated)?;
            // A caller removed from the configuration (no keys, no
            // certificate names left) loses its sessions.
            let caller = self
                .caller(&grant.caller)
                .filter(|c| self.has_credentials(&c.id))
                .ok_or(Reject::Unauthenticated)?;
            return Ok(Identity {
                caller,
                session_id: Some(grant.session_id),
                mfa: grant.mfa,
            });
        }
        let caller = self.by_key(token, None).ok_or(Reject::Unauthenticated)?;
        if caller.require_token {
            return Err(Reject::Unauthenticated);
        }
        Ok(Identity {
            caller,
            session_id: None,
            mfa: false,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Loads one signing key: an HMAC secret (base64, by secret reference) or
/// an Ed25519 public key.
fn signing_key(
    caller: &str,
    k: &crate::config::SigningKeyConfig,
) -> Result<crate::pipeline::signature::VerifyKey, String> {
    use crate::pipeline::signature::VerifyKey;
    let at = || format!("callers `{caller}`: signing key `{}`", k.keyid);
    match (k.alg, &k.secret, &k.public_key) {
        (crate::config::SigningAlg::HmacSha256, Some(r), _) => {
            let secret = crate::config::secret::resolve(r).map_err(|e| format!("{}: {e}", at()))?;
            let bytes = zeroize::Zeroizing::new(
                crate::credentials::store::decode_any_base64(
                    secrecy::ExposeSecret::expose_secret(&secret).trim(),
                )
                .ok_or_else(|| format!("{}: the secret {r} is not base64", at()))?,
            );
            if bytes.len() < 32 {
                return Err(format!("{}: the secret {r} is shorter than 32 bytes", at()));
            }
            Ok(VerifyKey::hmac(&bytes))
        }
        (crate::config::SigningAlg::Ed25519, _, Some(pk)) => {
            VerifyKey::ed25519(pk).map_err(|e| format!("{}: {e}", at()))
        }
        _ => Err(format!("{}: no key material", at())),
    }
}

/// Extracts the token of `Bearer <token>` (scheme case-insensitive, RFC 6750
/// token68 characters only).
fn bearer_token(v: &[u8]) -> Option<&[u8]> {
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let t = &v[7..];
    let valid = !t.is_empty()
        && t.len() <= MAX_TOKEN_LEN
        && t.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b));
    valid.then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Identities {
        Identities::from_config(&[CallerConfig {
            totp_secret: None,
            require_token: false,
            client_cert_names: vec!["bot.example".into()],
            signing_keys: Vec::new(),
            allowed_ips: Vec::new(),
            rate_limit: None,
            id: "bot".into(),
            role: Role::Trader,
            key_hashes: vec![
                crate::config::KeyHash::new(format!("sha256:{}", keys::hash_key_hex("k-1"))),
                crate::config::KeyHash {
                    hash: format!("sha256:{}", keys::hash_key_hex("k-old")),
                    expires: Some(time::OffsetDateTime::now_utc().unix_timestamp() - 1),
                },
                crate::config::KeyHash {
                    hash: format!("sha256:{}", keys::hash_key_hex("k-next")),
                    expires: Some(time::OffsetDateTime::now_utc().unix_timestamp() + 3600),
                },
            ],
            accounts: Vec::new(),
        }])
        .unwrap()
    }

    fn who(i: &Identities, h: &http::HeaderMap) -> Result<Arc<str>, Reject> {
        let s = Sessions::new(crate::config::TokensConfig::default().limits());
        i.identify(h, &s, None).map(|id| id.caller.id.clone())
    }

    fn hdr(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn identifies_known_key_only() {
        let i = ids();
        assert_eq!(&*who(&i, &hdr("Bearer k-1")).unwrap(), "bot");
        assert_eq!(&*who(&i, &hdr("bearer k-1")).unwrap(), "bot");
        assert_eq!(&*who(&i, &hdr("Bearer k-next")).unwrap(), "bot");
        assert!(i.authenticate_client("bot", b"k-1").is_some());
        assert!(i.authenticate_client("other", b"k-1").is_none());
        assert!(i.authenticate_client("bot", b"k-old").is_none());
        for bad in [
            "Bearer k-old",
            "Bearer k-2",
            "Bearer ",
            "Basic k-1",
            "k-1",
            "Bearer k-1 ",
            "Bearer  k-1",
        ] {
            assert_eq!(
                who(&i, &hdr(bad)).unwrap_err(),
                Reject::Unauthenticated,
                "{bad}"
            );
        }
        assert!(who(&i, &http::HeaderMap::new()).is_err());
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert!(who(&i, &hdr(&long)).is_err());
        assert!(who(&i, &hdr("Bearer pc_at_unknown")).is_err());
    }
}
