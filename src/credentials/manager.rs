//! Keeps the proxy's Schwab session alive: holds the current access token,
//! refreshes it ahead of expiry in the background, and refreshes on demand
//! — single-flight — when a request finds it expired.
//!
//! Single-flight: every refresh runs under one async lock and re-checks the
//! token after taking it, so however many requests arrive at the boundary,
//! one refresh call goes to the broker and the others use its result. A
//! failed refresh starts a backoff (1 s doubling to 60 s) during which
//! requests fail fast with `upstream_credentials_unavailable` instead of
//! queueing more calls.
//!
//! The store file is the hand-off with `portcullis token init`: before each
//! refresh the manager adopts the file if it changed on disk (a new login
//! while the proxy runs), and it never overwrites a file it has not read.
//! One proxy instance per store: replicas sharing a store would race their
//! refreshes (docs/credentials.md).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::HeaderValue;
use secrecy::SecretString;

use super::oauth::{OAuthClient, OAuthError, TokenResponse};
use super::store::{StoreError, TokenStore};
use super::{REFRESH_TOKEN_LIFETIME_MS, Tokens, bearer, now_ms};
use crate::admin::metrics::Metrics;
use crate::reject::Reject;
use crate::server::Shutdown;
use crate::swap::Swap;

/// Warn this long before the refresh token dies (a human must log in).
const REFRESH_WARNING_MS: i64 = 48 * 3600 * 1000;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The store file's content hash when last read or written by us.
type Stamp = Option<[u8; 32]>;

struct State {
    tokens: Option<Tokens>,
    /// `Bearer <access token>` and the time (ms) it stops being used.
    header: Option<(HeaderValue, i64)>,
    /// When (ms) the background task refreshes: `refresh_ahead` before
    /// expiry, or half-way through a token's life if that is shorter.
    due_at: i64,
    stamp: Stamp,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    /// The broker refused the refresh token: no further calls until the
    /// store changes (a new `token init`).
    refresh_rejected: bool,
    last_warning: Option<i64>,
}

pub struct TokenManager {
    /// Both replaceable at run time (a new store key, a rotated app secret).
    store: Swap<TokenStore>,
    oauth: Swap<OAuthClient>,
    state: Mutex<State>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Wakes the background task early (new credentials).
    wake: tokio::sync::Notify,
    refresh_ahead: Duration,
    metrics: Option<Arc<Metrics>>,
}

/// Outcome of a refresh attempt, for logs and the metric label.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    Refreshed,
    /// Another refresh (or a new store file) already made the token fresh.
    AlreadyFresh,
    Failed(String),
}

impl TokenManager {
    /// Loads the store. A missing, undecryptable or tampered store is an
    /// error; expired tokens are not (the proxy starts, not ready, and
    /// recovers when `token init` writes a new store).
    pub fn new(
        store: TokenStore,
        oauth: OAuthClient,
        refresh_ahead: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<TokenManager, StoreError> {
        let stamp = store.stamp();
        let tokens = store.load()?;
        let m = TokenManager {
            store: Swap::new(store),
            oauth: Swap::new(oauth),
            state: Mutex::new(State {
                tokens: None,
                header: None,
                due_at: 0,
                stamp,
                failures: 0,
                retry_at: None,
                refresh_rejected: false,
                last_warning: None,
            }),
            refresh_lock: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            refresh_ahead,
            metrics,
        };
        m.install(tokens, stamp);
        m.update_gauges();
        Ok(m)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn store(&self) -> Arc<TokenStore> {
        self.store.load()
    }

    /// Puts a re-read store key and app credentials in force. The store is
    /// read again (under the new key) before the next refresh, and a
    /// refresh refused under the old credentials is tried again.
    pub async fn replace_credentials(&self, store: TokenStore, oauth: OAuthClient) {
        let _flight = self.refresh_lock.lock().await;
        self.store.store(store);
        self.oauth.store(oauth);
        let mut st = self.lock();
        st.stamp = None;
        st.refresh_rejected = false;
        st.failures = 0;
        st.retry_at = None;
        drop(st);
        self.wake.notify_one();
    }

    /// The header to inject: the current token if it is still good, else a
    /// single-flight refresh.
    pub async fn authorization(&self) -> Result<HeaderValue, Reject> {
        if let Some(h) = self.usable() {
            return Ok(h);
        }
        self.refresh_if(|m| m.usable().is_none()).await;
        self.usable().ok_or(Reject::UpstreamCredentials)
    }

    /// A usable credential is held right now.
    pub fn ready(&self) -> bool {
        self.usable().is_some()
    }

    /// The header if the access token is usable now, without refreshing.
    pub fn current(&self) -> Option<HeaderValue> {
        self.usable()
    }

    /// The current header, unless it is past its use-by time.
    fn usable(&self) -> Option<HeaderValue> {
        let st = self.lock();
        match &st.header {
            Some((h, until)) if now_ms() < *until => Some(h.clone()),
            _ => None,
        }
    }

    /// Whether the background task should refresh now.
    fn due(&self) -> bool {
        now_ms() >= self.lock().due_at
    }

    /// Takes the refresh lock; refreshes if `needed` still holds once it is
    /// held (the single-flight re-check) and no backoff is running.
    async fn refresh_if(&self, needed: impl Fn(&TokenManager) -> bool) -> Refresh {
        let _flight = self.refresh_lock.lock().await;
        if !needed(self) {
            return Refresh::AlreadyFresh;
        }
        // A new login written by `token init` while we run.
        if self.adopt_store_if_changed() && !needed(self) {
            return Refresh::AlreadyFresh;
        }
        if let Some(at) = self.lock().retry_at
            && tokio::time::Instant::now() < at
        {
            return Refresh::Failed("backing off after a failed refresh".into());
        }
        let outcome = self.refresh_locked().await;
        self.update_gauges();
        outcome
    }

    /// One refresh call; the caller holds the refresh lock.
    async fn refresh_locked(&self) -> Refresh {
        let (refresh_token, issued, expires) = {
            let st = self.lock();
            let Some(t) = &st.tokens else {
                return Refresh::Failed("no tokens".into());
            };
            if st.refresh_rejected {
                return Refresh::Failed(
                    "the refresh token was refused; run `portcullis token init`".into(),
                );
            }
            (
                SecretString::from(
                    secrecy::ExposeSecret::expose_secret(&t.refresh_token).to_owned(),
                ),
                t.refresh_issued_at,
                t.refresh_expires_at,
            )
        };
        if now_ms() >= expires {
            self.fail(false);
            self.lock().refresh_rejected = true;
            tracing::error!(
                "the Schwab refresh token has expired (7 days after the last login); \
                 run `portcullis token init` to log in again"
            );
            return self.count("skipped", Refresh::Failed("refresh token expired".into()));
        }
        match self.oauth.load().refresh(&refresh_token).await {
            Ok(resp) => {
                let tokens = merge(resp, refresh_token, issued, expires);
                self.store_refreshed(tokens);
                tracing::info!("Schwab access token refreshed");
                self.count("ok", Refresh::Refreshed)
            }
            Err(e) => {
                let retryable = e.retryable();
                self.fail(!retryable);
                if retryable {
                    tracing::warn!(error = %e, "Schwab token refresh failed; retrying with backoff");
                    self.count("unavailable", Refresh::Failed(e.to_string()))
                } else {
                    tracing::error!(
                        error = %e,
                        "Schwab refused the refresh token; run `portcullis token init` to log in again"
                    );
                    self.count("rejected", Refresh::Failed(e.to_string()))
                }
            }
        }
    }

    fn count(&self, outcome: &str, r: Refresh) -> Refresh {
        if let Some(m) = &self.metrics {
            m.upstream_token_refreshes
                .with_label_values(&[outcome])
                .inc();
        }
        r
    }

    fn fail(&self, rejected: bool) {
        let mut st = self.lock();
        st.failures = st.failures.saturating_add(1);
        st.retry_at = Some(tokio::time::Instant::now() + backoff(st.failures));
        if rejected {
            st.refresh_rejected = true;
        }
    }

    /// Puts refreshed tokens in force and writes them to the store — unless
    /// the file changed since we last read or wrote it (a `token init` or
    /// `token rekey` meanwhile): then it is left alone, and our stamp keeps
    /// pointing at what we knew, so the newer file is adopted before the next
    /// refresh. The check and the write happen under the store lock.
    fn store_refreshed(&self, tokens: Tokens) {
        let store = self.store.load();
        let known = self.lock().stamp;
        let written = (|| {
            let _lock = store.lock()?;
            if store.stamp() != known {
                return Ok(known);
            }
            store.save(&tokens)?;
            Ok::<_, StoreError>(store.stamp())
        })();
        let stamp = match written {
            Ok(s) => s,
            Err(e) => {
                // The new token still serves; the next refresh retries the
                // write. Losing it only costs a refresh after a restart.
                tracing::error!(error = %e, "could not write the token store");
                known
            }
        };
        self.install(tokens, stamp);
    }

    fn install(&self, tokens: Tokens, stamp: Stamp) {
        let header = bearer(&tokens.access_token).map(|h| (h, use_by(&tokens)));
        let now = now_ms();
        let ahead = i64::try_from(self.refresh_ahead.as_millis()).unwrap_or(i64::MAX);
        let half_life = (tokens.access_expires_at - now).max(0) / 2;
        let mut st = self.lock();
        st.due_at = tokens.access_expires_at - ahead.min(half_life);
        st.header = header;
        st.tokens = Some(tokens);
        st.stamp = stamp;
        st.failures = 0;
        st.retry_at = None;
        st.refresh_rejected = false;
    }

    /// Re-reads the store if the file changed since we last saw it. True if
    /// new tokens were adopted.
    fn adopt_store_if_changed(&self) -> bool {
        let store = self.store.load();
        let now = store.stamp();
        if now == self.lock().stamp {
            return false;
        }
        match store.load() {
            Ok(tokens) => {
                tracing::info!("token store changed on disk; using its tokens");
                self.install(tokens, now);
                true
            }
            Err(e) => {
                // Re-keyed, half-written by hand, or edited: keep what we
                // have, and (the stamp unchanged) never write over it.
                tracing::warn!(error = %e, "token store changed on disk but cannot be read; keeping the tokens in memory");
                false
            }
        }
    }

    /// Sets the expiry gauges and warns (hourly) from 48 h before the
    /// refresh token dies.
    pub fn update_gauges(&self) {
        let now = now_ms();
        let (access, refresh) = match &self.lock().tokens {
            Some(t) => (t.access_expires_at, t.refresh_expires_at),
            None => return,
        };
        if let Some(m) = &self.metrics {
            m.upstream_token_expiry
                .with_label_values(&["access"])
                .set((access - now) / 1000);
            m.upstream_token_expiry
                .with_label_values(&["refresh"])
                .set((refresh - now) / 1000);
        }
        let left = refresh - now;
        if left < REFRESH_WARNING_MS {
            let mut st = self.lock();
            if st.last_warning.is_none_or(|w| now - w >= 3600 * 1000) {
                st.last_warning = Some(now);
                drop(st);
                tracing::warn!(
                    hours_left = left.max(0) / 3_600_000,
                    "the Schwab refresh token expires soon; run `portcullis token init` before then"
                );
            }
        }
    }

    /// The background refresher: wakes when a refresh is due (or every 30 s
    /// to update gauges and pick up a new store), until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let wait = self.next_wake();
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
            if self.due() {
                let r = self.refresh_if(|m| m.due()).await;
                tracing::debug!(outcome = ?r, "background token refresh");
            } else {
                let _flight = self.refresh_lock.lock().await;
                self.adopt_store_if_changed();
            }
            self.update_gauges();
        }
    }

    fn next_wake(&self) -> Duration {
        let st = self.lock();
        let due_in = u64::try_from(st.due_at - now_ms()).unwrap_or(0);
        let mut wait = Duration::from_secs(30);
        if !st.refresh_rejected {
            // Nothing but a new store helps once the refresh token is refused.
            wait = wait.min(Duration::from_millis(due_in));
        }
        if let Some(at) = st.retry_at {
            wait = wait.max(at.saturating_duration_since(tokio::time::Instant::now()));
        }
        // However short the broker makes a token's life, at most one
        // background refresh a second.
        wait.max(Duration::from_secs(1))
    }

    /// Expiry times for `token status` and `/readyz`.
    pub fn expiries(&self) -> Option<(i64, i64)> {
        self.lock()
            .tokens
            .as_ref()
            .map(|t| (t.access_expires_at, t.refresh_expires_at))
    }
}

/// The wait after the `failures`-th failure in a row: 1 s doubling to 60 s,
/// with ±20% jitter so restarted replicas do not retry in step.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.clamp(1, 7).saturating_sub(1)).min(MAX_BACKOFF);
    let mut r = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut r);
    // 0.8 ..= 1.2
    base.mul_f64(0.8 + f64::from(r[0]) / 255.0 * 0.4)
}

/// The time (ms) after which an access token is no longer sent: a margin
/// before its expiry of a tenth of its life, at most 30 s, so a request does
/// not reach the broker with a token that expires on the way.
fn use_by(t: &Tokens) -> i64 {
    let life = (t.access_expires_at - now_ms()).max(0);
    t.access_expires_at - (life / 10).min(30_000)
}

/// Tokens from a refresh answer: a new access token; the refresh token
/// keeps its original login time and expiry (refreshing does not extend it).
pub fn merge(resp: TokenResponse, old_refresh: SecretString, issued: i64, expires: i64) -> Tokens {
    let now = now_ms();
    Tokens {
        access_token: resp.access_token,
        refresh_token: resp.refresh_token.unwrap_or(old_refresh),
        id_token: resp.id_token,
        scope: resp.scope,
        access_expires_at: now + i64::try_from(resp.expires_in.as_millis()).unwrap_or(1_800_000),
        refresh_issued_at: issued,
        refresh_expires_at: expires,
    }
}

/// Tokens from an authorization-code exchange: a fresh login.
pub fn from_login(resp: TokenResponse) -> Result<Tokens, OAuthError> {
    let now = now_ms();
    let refresh = resp
        .refresh_token
        .ok_or(OAuthError::BadResponse("no refresh_token"))?;
    Ok(Tokens {
        access_token: resp.access_token,
        refresh_token: refresh,
        id_token: resp.id_token,
        scope: resp.scope,
        access_expires_at: now + i64::try_from(resp.expires_in.as_millis()).unwrap_or(1_800_000),
        refresh_issued_at: now,
        refresh_expires_at: now + REFRESH_TOKEN_LIFETIME_MS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::store::StoreKey;
    use secrecy::ExposeSecret;

    fn tokens(tag: &str) -> Tokens {
        let now = now_ms();
        Tokens {
            access_token: SecretString::from(format!("access-{tag}")),
            refresh_token: SecretString::from(format!("refresh-{tag}")),
            id_token: None,
            scope: "api".into(),
            access_expires_at: now + 1_800_000,
            refresh_issued_at: now,
            refresh_expires_at: now + REFRESH_TOKEN_LIFETIME_MS,
        }
    }

    fn manager(path: &std::path::Path, key: &[u8; 32]) -> TokenManager {
        let store = TokenStore::new(path.to_owned(), StoreKey::from_bytes(key).unwrap());
        let oauth = OAuthClient::new(
            "https://127.0.0.1:9",
            None,
            SecretString::from("k".to_owned()),
            &SecretString::from("s".to_owned()),
            Duration::from_secs(1),
        )
        .unwrap();
        TokenManager::new(store, oauth, Duration::from_secs(300), None).unwrap()
    }

    fn on_disk(path: &std::path::Path, key: &[u8; 32]) -> String {
        let store = TokenStore::new(path.to_owned(), StoreKey::from_bytes(key).unwrap());
        store
            .load()
            .unwrap()
            .access_token
            .expose_secret()
            .to_owned()
    }

    fn in_use(m: &TokenManager) -> String {
        let h = m.current().unwrap();
        h.to_str().unwrap().trim_start_matches("Bearer ").to_owned()
    }

    #[test]
    fn a_login_written_during_a_refresh_is_adopted_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("tokens.json");
        let key = [1u8; 32];
        let other = TokenStore::new(path.clone(), StoreKey::from_bytes(&key).unwrap());
        other.save(&tokens("A")).unwrap();
        let m = manager(&path, &key);
        assert_eq!(in_use(&m), "access-A");

        // `token init` writes B while a refresh (yielding C) is in flight.
        other.save(&tokens("B")).unwrap();
        m.store_refreshed(tokens("C"));
        assert_eq!(
            on_disk(&path, &key),
            "access-B",
            "the new login was overwritten"
        );
        // Before the next refresh the new file is adopted …
        assert!(m.adopt_store_if_changed());
        assert_eq!(in_use(&m), "access-B");
        // … and refreshes are written again from then on.
        m.store_refreshed(tokens("D"));
        assert_eq!(on_disk(&path, &key), "access-D");
    }

    #[test]
    fn a_rekeyed_store_is_never_written_under_the_old_key() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("tokens.json");
        let (old, new) = ([1u8; 32], [2u8; 32]);
        TokenStore::new(path.clone(), StoreKey::from_bytes(&old).unwrap())
            .save(&tokens("A"))
            .unwrap();
        let m = manager(&path, &old);
        // `token rekey` re-encrypts under the new key.
        let rekeyed = TokenStore::new(path.clone(), StoreKey::from_bytes(&new).unwrap());
        rekeyed.save(&tokens("A")).unwrap();
        for tag in ["C", "D"] {
            m.store_refreshed(tokens(tag));
            assert!(!m.adopt_store_if_changed(), "opened under the old key?");
            assert_eq!(
                on_disk(&path, &new),
                "access-A",
                "rewritten under the old key"
            );
        }
        assert_eq!(in_use(&m), "access-D", "keeps serving from memory");
    }

    #[test]
    fn backoff_grows_to_a_minute_with_jitter() {
        assert!(
            backoff(1) >= Duration::from_millis(800) && backoff(1) <= Duration::from_millis(1200)
        );
        assert!(
            backoff(3) >= Duration::from_millis(3200) && backoff(3) <= Duration::from_millis(4800)
        );
        for n in [7, 8, 50, u32::MAX] {
            let b = backoff(n);
            assert!(
                b >= Duration::from_secs(48) && b <= Duration::from_secs(72),
                "{n}: {b:?}"
            );
        }
    }

    #[test]
    fn a_refresh_token_near_its_end_is_warned_about_hourly() {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("tokens.json");
        let key = [3u8; 32];
        let mut t = tokens("A");
        t.refresh_expires_at = now_ms() + 47 * 3_600_000;
        TokenStore::new(path.clone(), StoreKey::from_bytes(&key).unwrap())
            .save(&t)
            .unwrap();
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let m = manager(&path, &key);
            m.update_gauges();
            m.update_gauges();
        });
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            log.matches("refresh token expires soon").count(),
            1,
            "{log}"
        );
        // 47 h less the few milliseconds the test took (47 when the
        // clock has not moved a whole millisecond).
        assert!(
            log.contains("hours_left=46") || log.contains("hours_left=47"),
            "{log}"
        );

        // Far from its end: no warning.
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .finish();
        TokenStore::new(path.clone(), StoreKey::from_bytes(&key).unwrap())
            .save(&tokens("B"))
            .unwrap();
        tracing::subscriber::with_default(sub, || manager(&path, &key).update_gauges());
        assert!(buf.0.lock().unwrap().is_empty());
    }
}
