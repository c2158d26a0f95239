//! Proxy-issued tokens for callers: short-lived opaque access tokens and
//! rotating refresh tokens, held in memory (only SHA-256 digests of the
//! tokens are kept).
//!
//! A session starts with a `client_credentials` grant (and, for a caller
//! with a TOTP secret, a valid code — the session then carries `mfa`). Each
//! `refresh_token` grant spends its refresh token and issues a new pair in
//! the same session (same session id, same `mfa`). Presenting a spent
//! refresh token again means two parties hold it — the legitimate client and
//! a thief — so the whole session (family) is revoked: every access and
//! refresh token issued in it stops working at once.
//!
//! Sessions do not survive a restart; clients get a new one with their
//! client credentials. Memory is bounded by `max_sessions`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;

pub const ACCESS_PREFIX: &str = "pc_at_";
pub const REFRESH_PREFIX: &str = "pc_rt_";

/// What a valid access token stands for.
#[derive(Debug, Clone)]
pub struct Grant {
    pub caller: Arc<str>,
    pub session_id: Arc<str>,
    pub mfa: bool,
}

struct Access {
    grant: Grant,
    expires: Instant,
}

struct Refresh {
    grant: Grant,
    expires: Instant,
    spent: bool,
}

#[derive(Default)]
struct Inner {
    access: HashMap<[u8; 32], Access>,
    refresh: HashMap<[u8; 32], Refresh>,
    /// Live sessions: id → when its last refresh token expires.
    sessions: HashMap<Arc<str>, Instant>,
    inserts: u64,
}

/// A token pair as the token endpoint returns it.
pub struct Issued {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: Duration,
    pub session_id: Arc<str>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("session_id", &self.session_id)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RefreshError {
    /// Unknown, expired, or belonging to another caller.
    Invalid,
    /// Spent before: the session was revoked.
    Reused,
    Full,
}

pub struct Sessions {
    inner: Mutex<Inner>,
    access_ttl: Duration,
    refresh_ttl: Duration,
    max_sessions: usize,
}

fn digest(token: &str) -> [u8; 32] {
    crate::keys::hash_key(token.as_bytes())
}

fn random_token(prefix: &str) -> Option<String> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).ok()?;
    Some(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

impl Sessions {
    pub fn new(access_ttl: Duration, refresh_ttl: Duration, max_sessions: usize) -> Sessions {
        Sessions {
            inner: Mutex::new(Inner::default()),
            access_ttl,
            refresh_ttl,
            max_sessions,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session for `caller`. `None` when at capacity (or the RNG
    /// failed).
    pub fn start(&self, caller: &str, mfa: bool) -> Option<Issued> {
        let session_id: Arc<str> = Arc::from(random_token("")?.get(..22)?);
        let grant = Grant {
            caller: Arc::from(caller),
            session_id,
            mfa,
        };
        let mut inner = self.lock();
        inner.purge_if_due();
        if inner.sessions.len() >= self.max_sessions {
            inner.purge(Instant::now());
            if inner.sessions.len() >= self.max_sessions {
                return None;
            }
        }
        self.issue(&mut inner, grant)
    }

    fn issue(&self, inner: &mut Inner, grant: Grant) -> Option<Issued> {
        let access = random_token(ACCESS_PREFIX)?;
        let refresh = random_token(REFRESH_PREFIX)?;
        let now = Instant::now();
        let session_id = grant.session_id.clone();
        inner
            .sessions
            .insert(session_id.clone(), now + self.refresh_ttl);
        inner.access.insert(
            digest(&access),
            Access {
                grant: grant.clone(),
                expires: now + self.access_ttl,
            },
        );
        inner.refresh.insert(
            digest(&refresh),
            Refresh {
                grant,
                expires: now + self.refresh_ttl,
                spent: false,
            },
        );
        inner.inserts += 1;
        Some(Issued {
            access_token: access,
            refresh_token: refresh,
            expires_in: self.access_ttl,
            session_id,
        })
    }

    /// The grant behind a live access token.
    pub fn verify(&self, access_token: &str) -> Option<Grant> {
        let d = digest(access_token);
        let inner = self.lock();
        let a = inner.access.get(&d)?;
        (Instant::now() < a.expires && inner.sessions.contains_key(&a.grant.session_id))
            .then(|| a.grant.clone())
    }

    /// Spends `refresh_token` (issued to `caller`) for a new pair in the
    /// same session. A spent token presented again revokes the session.
    pub fn refresh(&self, caller: &str, refresh_token: &str) -> Result<Issued, RefreshError> {
        let d = digest(refresh_token);
        let mut guard = self.lock();
        let inner = &mut *guard;
        let now = Instant::now();
        let Some(r) = inner.refresh.get_mut(&d) else {
            return Err(RefreshError::Invalid);
        };
        if &*r.grant.caller != caller {
            return Err(RefreshError::Invalid);
        }
        if r.spent {
            let session = r.grant.session_id.clone();
            inner.revoke(&session);
            tracing::warn!(
                caller,
                session_id = &*session,
                "a spent refresh token was presented again; the session is revoked"
            );
            return Err(RefreshError::Reused);
        }
        if now >= r.expires || !inner.sessions.contains_key(&r.grant.session_id) {
            return Err(RefreshError::Invalid);
        }
        r.spent = true;
        let grant = r.grant.clone();
        self.issue(inner, grant).ok_or(RefreshError::Full)
    }

    /// Revokes every session of `caller` (its key was removed, say).
    pub fn revoke_caller(&self, caller: &str) {
        let mut inner = self.lock();
        let ids: Vec<Arc<str>> = inner
            .access
            .values()
            .map(|a| &a.grant)
            .chain(inner.refresh.values().map(|r| &r.grant))
            .filter(|g| &*g.caller == caller)
            .map(|g| g.session_id.clone())
            .collect();
        for id in ids {
            inner.revoke(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn revoke(&mut self, session: &Arc<str>) {
        self.sessions.remove(session);
        self.access.retain(|_, a| &a.grant.session_id != session);
        // Spent refresh tokens are kept until they expire, so a late reuse
        // is still recognised; the rest go.
        self.refresh
            .retain(|_, r| &r.grant.session_id != session || r.spent);
    }

    fn purge_if_due(&mut self) {
        if self.inserts.is_multiple_of(256) {
            self.purge(Instant::now());
        }
    }

    fn purge(&mut self, now: Instant) {
        self.access.retain(|_, a| a.expires > now);
        self.refresh.retain(|_, r| r.expires > now);
        self.sessions.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(Duration::from_secs(60), Duration::from_secs(600), 3)
    }

    #[test]
    fn refresh_rotates_and_reuse_revokes_the_family() {
        let s = sessions();
        let first = s.start("bot", true).unwrap();
        let g = s.verify(&first.access_token).unwrap();
        assert_eq!((&*g.caller, g.mfa), ("bot", true));
        assert!(first.access_token.starts_with(ACCESS_PREFIX));

        let second = s.refresh("bot", &first.refresh_token).unwrap();
        assert_eq!(second.session_id, first.session_id, "same session");
        assert!(
            s.verify(&second.access_token).unwrap().mfa,
            "mfa carried over"
        );
        assert!(
            s.verify(&first.access_token).is_some(),
            "old access lives out its ttl"
        );
        // Another caller cannot spend it.
        assert_eq!(
            s.refresh("other", &second.refresh_token).unwrap_err(),
            RefreshError::Invalid
        );

        // The first refresh token again: reuse → the whole session dies.
        assert_eq!(
            s.refresh("bot", &first.refresh_token).unwrap_err(),
            RefreshError::Reused
        );
        assert!(s.verify(&first.access_token).is_none());
        assert!(s.verify(&second.access_token).is_none());
        assert_eq!(
            s.refresh("bot", &second.refresh_token).unwrap_err(),
            RefreshError::Invalid
        );
        assert_eq!(
            s.refresh("bot", &first.refresh_token).unwrap_err(),
            RefreshError::Reused,
            "still recognised after the revocation"
        );
    }

    #[test]
    fn sessions_are_bounded_and_expire() {
        let s = sessions();
        for _ in 0..3 {
            assert!(s.start("bot", false).is_some());
        }
        assert!(s.start("bot", false).is_none(), "over max_sessions");
        let short = Sessions::new(Duration::from_millis(1), Duration::from_millis(1), 3);
        let t = short.start("bot", false).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.verify(&t.access_token).is_none());
        assert_eq!(
            short.refresh("bot", &t.refresh_token).unwrap_err(),
            RefreshError::Invalid
        );
        assert!(
            short.start("bot", false).is_some(),
            "expired sessions make room"
        );
        assert!(s.verify("pc_at_made-up").is_none());
        s.revoke_caller("bot");
        assert!(s.is_empty());
    }

    #[test]
    fn debug_shows_no_token() {
        let s = sessions();
        let t = s.start("bot", false).unwrap();
        let d = format!("{t:?}");
        assert!(
            !d.contains(&t.access_token) && !d.contains(&t.refresh_token),
            "{d}"
        );
    }
}
