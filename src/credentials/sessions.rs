//! Proxy-issued tokens for callers: short-lived opaque access tokens and
//! rotating refresh tokens, held in memory (only SHA-256 digests of the
//! tokens are kept).
//!
//! A session starts with a `client_credentials` grant (and, for a caller
//! with a TOTP secret, a valid code — the session then carries MFA for
//! `mfa_ttl`). Each `refresh_token` grant spends its refresh token and issues
//! a new pair in the same session (same session id). Presenting a spent
//! refresh token again means two parties hold it — the legitimate client and
//! a thief — so the whole session is revoked: every access and refresh token
//! issued in it stops working at once.
//!
//! Bounds: a session ends `max_age` after it started, however often it is
//! refreshed; MFA lapses `mfa_ttl` after the code was given; a caller holds
//! at most `per_caller` sessions (starting another ends its oldest); a
//! session keeps at most a few live access tokens and remembers a bounded
//! number of spent refresh tokens; `max_sessions` bounds the whole table.
//!
//! Sessions do not survive a restart; clients get a new one with their
//! client credentials.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;

pub const ACCESS_PREFIX: &str = "pc_at_";
pub const REFRESH_PREFIX: &str = "pc_rt_";

/// Live access tokens kept per session (a client uses the newest).
const ACCESS_PER_SESSION: usize = 4;
/// Spent refresh tokens remembered per session, for reuse detection.
const SPENT_PER_SESSION: usize = 64;

/// What a valid access token stands for.
#[derive(Debug, Clone)]
pub struct Grant {
    pub caller: Arc<str>,
    pub session_id: Arc<str>,
    pub mfa: bool,
}

/// Session lifetimes and bounds (`tokens:` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub max_age: Duration,
    pub mfa_ttl: Duration,
    pub max_sessions: usize,
    pub per_caller: usize,
}

struct Session {
    caller: Arc<str>,
    started: Instant,
    ends: Instant,
    mfa_until: Option<Instant>,
    /// Digests of its live access tokens, oldest first.
    access: VecDeque<[u8; 32]>,
    /// Digest of its current (unspent) refresh token.
    refresh: Option<[u8; 32]>,
    /// Digests of its spent refresh tokens, oldest first.
    spent: VecDeque<[u8; 32]>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<Arc<str>, Session>,
    /// token digest → (session id, expiry).
    access: HashMap<[u8; 32], (Arc<str>, Instant)>,
    refresh: HashMap<[u8; 32], (Arc<str>, Instant)>,
    /// Spent refresh tokens of live or revoked sessions → (session, caller,
    /// forget-after).
    spent: HashMap<[u8; 32], (Arc<str>, Arc<str>, Instant)>,
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
    limits: Limits,
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
    pub fn new(limits: Limits) -> Sessions {
        Sessions {
            inner: Mutex::new(Inner::default()),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session for `caller` (with MFA if a code was verified).
    /// `None` when the table is full of live sessions (or the RNG failed).
    pub fn start(&self, caller: &str, mfa: bool) -> Option<Issued> {
        let session_id: Arc<str> = Arc::from(random_token("")?.get(..22)?);
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge_if_due(now);
        // The caller's oldest sessions make room for this one.
        let mut mine: Vec<(Instant, Arc<str>)> = inner
            .sessions
            .iter()
            .filter(|(_, s)| &*s.caller == caller)
            .map(|(id, s)| (s.started, id.clone()))
            .collect();
        if mine.len() >= self.limits.per_caller {
            mine.sort();
            let excess = mine.len() + 1 - self.limits.per_caller;
            for (_, id) in mine.into_iter().take(excess) {
                inner.revoke(&id);
            }
        }
        if inner.sessions.len() >= self.limits.max_sessions {
            inner.purge(now);
            if inner.sessions.len() >= self.limits.max_sessions {
                return None;
            }
        }
        inner.sessions.insert(
            session_id.clone(),
            Session {
                caller: Arc::from(caller),
                started: now,
                ends: now + self.limits.max_age,
                mfa_until: mfa.then(|| now + self.limits.mfa_ttl),
                access: VecDeque::new(),
                refresh: None,
                spent: VecDeque::new(),
            },
        );
        self.issue(&mut inner, &session_id, now)
    }

    /// A new access and refresh token in `session_id`.
    fn issue(&self, inner: &mut Inner, session_id: &Arc<str>, now: Instant) -> Option<Issued> {
        let access = random_token(ACCESS_PREFIX)?;
        let refresh = random_token(REFRESH_PREFIX)?;
        let (a, r) = (digest(&access), digest(&refresh));
        let s = inner.sessions.get_mut(session_id)?;
        let access_until = (now + self.limits.access_ttl).min(s.ends);
        let refresh_until = (now + self.limits.refresh_ttl).min(s.ends);
        s.access.push_back(a);
        let dropped = (s.access.len() > ACCESS_PER_SESSION)
            .then(|| s.access.pop_front())
            .flatten();
        s.refresh = Some(r);
        if let Some(old) = dropped {
            inner.access.remove(&old);
        }
        inner.access.insert(a, (session_id.clone(), access_until));
        inner.refresh.insert(r, (session_id.clone(), refresh_until));
        inner.inserts += 1;
        Some(Issued {
            access_token: access,
            refresh_token: refresh,
            expires_in: access_until.saturating_duration_since(now),
            session_id: session_id.clone(),
        })
    }

    /// The grant behind a live access token.
    pub fn verify(&self, access_token: &str) -> Option<Grant> {
        let d = digest(access_token);
        let inner = self.lock();
        let now = Instant::now();
        let (id, until) = inner.access.get(&d)?;
        let s = inner.sessions.get(id)?;
        (now < *until && now < s.ends).then(|| Grant {
            caller: s.caller.clone(),
            session_id: id.clone(),
            mfa: s.mfa_until.is_some_and(|m| now < m),
        })
    }

    /// Spends `refresh_token` (issued to `caller`) for a new pair in the
    /// same session. A spent token presented again revokes the session.
    pub fn refresh(&self, caller: &str, refresh_token: &str) -> Result<Issued, RefreshError> {
        let d = digest(refresh_token);
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some((session, owner, _)) = inner.spent.get(&d) {
            if &**owner != caller {
                return Err(RefreshError::Invalid);
            }
            let session = session.clone();
            inner.revoke(&session);
            tracing::warn!(
                caller,
                session_id = &*session,
                "a spent refresh token was presented again; the session is revoked"
            );
            return Err(RefreshError::Reused);
        }
        let Some((session_id, until)) = inner.refresh.get(&d).cloned() else {
            return Err(RefreshError::Invalid);
        };
        let Some(s) = inner.sessions.get_mut(&session_id) else {
            return Err(RefreshError::Invalid);
        };
        if &*s.caller != caller || now >= until || now >= s.ends {
            return Err(RefreshError::Invalid);
        }
        // Spend it: remembered (bounded) for reuse detection.
        inner.refresh.remove(&d);
        s.refresh = None;
        s.spent.push_back(d);
        let forgotten = (s.spent.len() > SPENT_PER_SESSION)
            .then(|| s.spent.pop_front())
            .flatten();
        let owner = s.caller.clone();
        let ends = s.ends;
        if let Some(f) = forgotten {
            inner.spent.remove(&f);
        }
        inner.spent.insert(d, (session_id.clone(), owner, ends));
        self.issue(inner, &session_id, now)
            .ok_or(RefreshError::Full)
    }

    /// Ends every session of `caller` (a key removed, a TOTP secret changed).
    pub fn revoke_caller(&self, caller: &str) {
        let mut inner = self.lock();
        let ids: Vec<Arc<str>> = inner
            .sessions
            .iter()
            .filter(|(_, s)| &*s.caller == caller)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            inner.revoke(&id);
        }
    }

    /// Ends one session.
    pub fn revoke(&self, session_id: &str) {
        let mut inner = self.lock();
        let id: Option<Arc<str>> = inner.sessions.keys().find(|k| &***k == session_id).cloned();
        if let Some(id) = id {
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
    fn revoke(&mut self, id: &Arc<str>) {
        let Some(s) = self.sessions.remove(id) else {
            return;
        };
        for a in &s.access {
            self.access.remove(a);
        }
        if let Some(r) = &s.refresh {
            self.refresh.remove(r);
        }
        // Spent refresh tokens stay (until the session would have ended), so
        // a late reuse is still recognised.
    }

    fn purge_if_due(&mut self, now: Instant) {
        if self.inserts.is_multiple_of(256) {
            self.purge(now);
        }
    }

    fn purge(&mut self, now: Instant) {
        let ended: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.ends <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            self.revoke(&id);
        }
        self.access.retain(|_, (_, until)| *until > now);
        self.refresh.retain(|_, (_, until)| *until > now);
        self.spent.retain(|_, (_, _, until)| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            access_ttl: Duration::from_secs(60),
            refresh_ttl: Duration::from_secs(600),
            max_age: Duration::from_secs(3600),
            mfa_ttl: Duration::from_secs(600),
            max_sessions: 3,
            per_caller: 2,
        }
    }

    #[test]
    fn refresh_rotates_and_reuse_revokes_the_family() {
        let s = Sessions::new(limits());
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
        // Another caller cannot spend it, nor trigger a revocation with it.
        assert_eq!(
            s.refresh("other", &second.refresh_token).unwrap_err(),
            RefreshError::Invalid
        );
        assert_eq!(
            s.refresh("other", &first.refresh_token).unwrap_err(),
            RefreshError::Invalid
        );
        assert!(s.verify(&second.access_token).is_some());

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
        let s = Sessions::new(limits());
        // Per caller: the third session of "bot" ends its first.
        let a = s.start("bot", false).unwrap();
        let b = s.start("bot", false).unwrap();
        let c = s.start("bot", false).unwrap();
        assert!(
            s.verify(&a.access_token).is_none(),
            "oldest session not ended"
        );
        assert!(s.verify(&b.access_token).is_some() && s.verify(&c.access_token).is_some());
        // The table: 3 sessions at most.
        assert!(s.start("other", false).is_some());
        assert!(s.start("third", false).is_none(), "over max_sessions");

        let short = Sessions::new(Limits {
            access_ttl: Duration::from_millis(1),
            refresh_ttl: Duration::from_millis(1),
            ..limits()
        });
        let t = short.start("bot", false).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.verify(&t.access_token).is_none());
        assert_eq!(
            short.refresh("bot", &t.refresh_token).unwrap_err(),
            RefreshError::Invalid
        );
        assert!(s.verify("pc_at_made-up").is_none());
        s.revoke_caller("bot");
        assert!(s.verify(&c.access_token).is_none());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn sessions_end_at_max_age_and_mfa_lapses() {
        let s = Sessions::new(Limits {
            max_age: Duration::from_millis(300),
            mfa_ttl: Duration::from_millis(100),
            ..limits()
        });
        let t = s.start("human", true).unwrap();
        assert!(
            t.expires_in <= Duration::from_millis(300),
            "capped by the session end"
        );
        assert!(s.verify(&t.access_token).unwrap().mfa);
        std::thread::sleep(Duration::from_millis(150));
        let t2 = s.refresh("human", &t.refresh_token).unwrap();
        assert!(
            !s.verify(&t2.access_token).unwrap().mfa,
            "MFA did not lapse"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            s.verify(&t2.access_token).is_none(),
            "the session outlived max_age"
        );
        assert_eq!(
            s.refresh("human", &t2.refresh_token).unwrap_err(),
            RefreshError::Invalid
        );
    }

    #[test]
    fn a_refresh_loop_stays_bounded() {
        let s = Sessions::new(limits());
        let mut t = s.start("bot", false).unwrap();
        for _ in 0..500 {
            t = s.refresh("bot", &t.refresh_token).unwrap();
        }
        let inner = s.lock();
        assert!(inner.access.len() <= ACCESS_PER_SESSION);
        assert!(inner.spent.len() <= SPENT_PER_SESSION);
        assert_eq!(inner.refresh.len(), 1);
    }

    #[test]
    fn debug_shows_no_token() {
        let s = Sessions::new(limits());
        let t = s.start("bot", false).unwrap();
        let d = format!("{t:?}");
        assert!(
            !d.contains(&t.access_token) && !d.contains(&t.refresh_token),
            "{d}"
        );
    }
}
