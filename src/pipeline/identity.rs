//! Identity stage: who is calling. First form: proxy-issued API keys,
//! presented as `Authorization: Bearer <key>` — the slot where Schwab clients
//! put their access token, so an unmodified client works by storing the proxy
//! key in its token file.

use std::sync::Arc;

use crate::config::{CallerConfig, Role};
use crate::keys;
use crate::reject::Reject;

/// An identified caller.
#[derive(Debug)]
pub struct Caller {
    pub id: Arc<str>,
    pub role: Role,
}

/// Key hashes of every configured caller, with their expiry (Unix seconds).
#[derive(Debug, Default)]
pub struct Identities {
    entries: Vec<([u8; 32], Option<i64>, Arc<Caller>)>,
}

/// Longest bearer token we bother hashing; real ones are ~47 bytes.
const MAX_TOKEN_LEN: usize = 512;

impl Identities {
    /// Builds the table from validated configuration (hashes already checked).
    pub fn from_config(callers: &[CallerConfig]) -> Identities {
        let mut entries = Vec::new();
        for c in callers {
            let caller = Arc::new(Caller {
                id: Arc::from(c.id.as_str()),
                role: c.role,
            });
            for h in &c.key_hashes {
                if let Some(hash) = keys::parse_hash(&h.hash) {
                    entries.push((hash, h.expires, caller.clone()));
                }
            }
        }
        Identities { entries }
    }

    /// Finds the caller for the request's `Authorization` header. The
    /// presented key is hashed and compared with every stored hash in
    /// constant time, with no early exit, so timing reveals nothing about
    /// which (or whether a) key matched.
    pub fn identify(&self, headers: &http::HeaderMap) -> Result<Arc<Caller>, Reject> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(Reject::Unauthenticated)?;
        let token = bearer_token(value.as_bytes()).ok_or(Reject::Unauthenticated)?;
        let presented = keys::hash_key(token);
        let mut found: Option<&(_, Option<i64>, Arc<Caller>)> = None;
        for entry in &self.entries {
            if keys::ct_eq(&entry.0, &presented) {
                found = Some(entry);
            }
        }
        let (_, expires, caller) = found.ok_or(Reject::Unauthenticated)?;
        if let Some(at) = expires
            && time::OffsetDateTime::now_utc().unix_timestamp() >= *at
        {
            // Worth an operator's attention: a bot still uses a rotated-out key.
            tracing::warn!(caller = &*caller.id, "a caller presented an expired key");
            return Err(Reject::Unauthenticated);
        }
        Ok(caller.clone())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
    }

    fn hdr(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn identifies_known_key_only() {
        let i = ids();
        assert_eq!(&*i.identify(&hdr("Bearer k-1")).unwrap().id, "bot");
        assert_eq!(&*i.identify(&hdr("bearer k-1")).unwrap().id, "bot");
        assert_eq!(&*i.identify(&hdr("Bearer k-next")).unwrap().id, "bot");
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
                i.identify(&hdr(bad)).unwrap_err(),
                Reject::Unauthenticated,
                "{bad}"
            );
        }
        assert!(i.identify(&http::HeaderMap::new()).is_err());
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert!(i.identify(&hdr(&long)).is_err());
    }
}
