//! Rotating secrets without a restart: on SIGHUP, or when one of the files
//! changes, the configuration file is read again (when the proxy was started
//! from one) and every secret it references is re-read — the Schwab app key
//! and secret, the token store key, a fixed access token, the listeners' TLS
//! certificates and keys, and the callers' key hashes. Everything is loaded
//! and checked first and put in force together; if anything fails, nothing
//! changes and the error is logged. Open connections and requests in flight
//! are not touched: a request uses the credential it started with, a new TLS
//! handshake gets the new certificate.
//!
//! What needs a restart (listen addresses, limits, upstream address, the
//! callers themselves — their ids, roles and accounts are Cedar entities) is
//! left as it is, with a warning naming it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::config::secret::SecretRef;
use crate::config::{Config, Mode};
use crate::credentials::{UpstreamAuth, bearer};
use crate::pipeline::Proxy;
use crate::pipeline::identity::Identities;
use crate::server::tls::ReloadableCert;

/// The running proxy's reloadable parts.
pub struct Live {
    pub proxy: Arc<Proxy>,
    /// One per `listen` entry; `None` for plaintext listeners.
    certs: Vec<Option<Arc<ReloadableCert>>>,
    /// The configuration in force.
    config: Mutex<Config>,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
}

/// What a reload put in force.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub certificates: usize,
    pub callers: usize,
    pub upstream_credentials: bool,
    /// Changes seen that need a restart.
    pub needs_restart: Vec<String>,
}

impl Live {
    pub fn new(proxy: Arc<Proxy>, certs: Vec<Option<Arc<ReloadableCert>>>, config: Config) -> Live {
        Live {
            proxy,
            certs,
            config: Mutex::new(config),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    fn running(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the configuration file again (or, for a configuration built in
    /// memory like the demo's, keeps it) and applies it.
    pub async fn reload(&self, trigger: &str) -> Result<Applied, String> {
        let running = self.running();
        let next = match &running.path {
            Some(p) => Config::from_file(p, Mode::Normal).map_err(|e| e.to_string()),
            None => Ok(running),
        };
        let result = match next {
            Ok(cfg) => self.apply(cfg).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(a) => {
                tracing::info!(
                    trigger,
                    certificates = a.certificates,
                    callers = a.callers,
                    upstream_credentials = a.upstream_credentials,
                    "secrets reloaded"
                );
                for what in &a.needs_restart {
                    tracing::warn!(trigger, change = %what, "configuration change needs a restart to apply");
                }
            }
            Err(e) => {
                tracing::error!(trigger, error = %e, "secrets reload failed; nothing changed");
            }
        }
        result
    }

    /// Loads every reloadable piece of `next`, then puts them in force
    /// together. On error nothing changes. Settings that need a restart keep
    /// their running values (and are reported).
    pub async fn apply(&self, next: Config) -> Result<Applied, String> {
        let _one = self.reloading.lock().await;
        let running = self.running();
        let effective = reloadable_view(&running, &next);
        let mut applied = Applied {
            needs_restart: restart_only_changes(&running, &next),
            ..Applied::default()
        };

        // 1. Load and check everything.
        let identities = Identities::from_config(&effective.callers)?;
        applied.callers = effective.callers.len();
        let mut pairs = Vec::new();
        for (i, (cert, l)) in self.certs.iter().zip(&effective.listen).enumerate() {
            let (Some(cert), Some(files)) = (cert, &l.tls) else {
                continue;
            };
            let pair = ReloadableCert::load(&files.cert_file, &files.key_file)
                .map_err(|e| format!("listen[{i}].tls: {e}"))?;
            pairs.push((cert.clone(), pair));
        }
        enum NewAuth {
            Static(http::HeaderValue),
            Managed(
                crate::credentials::store::TokenStore,
                Box<crate::credentials::oauth::OAuthClient>,
            ),
        }
        let auth =
            match (&self.proxy.upstream_auth, &effective.upstream.access_token) {
                (UpstreamAuth::Static(_), Some(r)) => {
                    let token = crate::config::secret::resolve(r)
                        .map_err(|e| format!("upstream.access_token: {e}"))?;
                    NewAuth::Static(bearer(&token).ok_or(
                        "upstream.access_token: contains bytes not allowed in an HTTP header",
                    )?)
                }
                (UpstreamAuth::Managed(_), None) => {
                    let store = crate::credentials::store_from_config(&effective)?;
                    // The store must open under the (possibly new) key.
                    store.load().map_err(|e| e.to_string())?;
                    NewAuth::Managed(
                        store,
                        Box::new(crate::credentials::oauth_from_config(&effective)?),
                    )
                }
                _ => {
                    return Err(
                        "switching between upstream.access_token and schwab.token_store \
                            needs a restart"
                            .into(),
                    );
                }
            };

        // 2. Put in force.
        self.proxy.identities.store(identities);
        for c in &running.callers {
            // A key taken away (or the caller removed) ends the sessions
            // opened with the caller's keys: they may have come from it.
            let now = effective.callers.iter().find(|n| n.id == c.id);
            let lost_a_key = now.is_none_or(|n| {
                c.key_hashes
                    .iter()
                    .any(|h| !n.key_hashes.iter().any(|k| k.hash == h.hash))
                    || n.totp_secret != c.totp_secret
                    || c.client_cert_names
                        .iter()
                        .any(|x| !n.client_cert_names.contains(x))
            });
            if lost_a_key {
                self.proxy.sessions.revoke_caller(&c.id);
            }
        }
        for (cert, pair) in pairs {
            cert.put(pair);
            applied.certificates += 1;
        }
        match (&self.proxy.upstream_auth, auth) {
            (UpstreamAuth::Static(slot), NewAuth::Static(h)) => slot.store(h),
            (UpstreamAuth::Managed(m), NewAuth::Managed(store, oauth)) => {
                m.replace_credentials(store, *oauth).await;
            }
            _ => {}
        }
        applied.upstream_credentials = true;
        *self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = effective;
        Ok(applied)
    }

    /// Length and modification time of every file a reload reads: the
    /// configuration, certificates and keys, and secret files. A change
    /// triggers a reload when watching is on.
    pub fn fingerprint(&self) -> Vec<(PathBuf, Option<(u64, SystemTime)>)> {
        let cfg = self.running();
        let mut files: Vec<PathBuf> = Vec::new();
        files.extend(cfg.path.clone());
        for l in &cfg.listen {
            if let Some(t) = &l.tls {
                files.push(t.cert_file.clone());
                files.push(t.key_file.clone());
            }
        }
        let mut refs = vec![
            cfg.upstream.access_token.as_ref(),
            cfg.schwab.app_key.as_ref(),
            cfg.schwab.app_secret.as_ref(),
            cfg.schwab.token_store.as_ref().map(|t| &t.key),
        ];
        for c in &cfg.callers {
            refs.push(c.totp_secret.as_ref());
            refs.extend(c.signing_keys.iter().map(|k| k.secret.as_ref()));
        }
        for r in refs.into_iter().flatten() {
            match r {
                SecretRef::File(p) => files.push(p.clone()),
                SecretRef::Env(name) => {
                    if let Some(p) = std::env::var_os(format!("{name}_FILE")) {
                        files.push(PathBuf::from(p));
                    }
                }
            }
        }
        files
            .into_iter()
            .map(|p| {
                let stamp = std::fs::metadata(&p)
                    .ok()
                    .and_then(|m| Some((m.len(), m.modified().ok()?)));
                (p, stamp)
            })
            .collect()
    }
}

/// The running configuration with what a reload may change taken from
/// `next`: the callers' keys (a caller missing from `next` keeps none — its
/// keys stop working at once), TOTP secrets and `require_token`; the secret
/// references for the broker; the certificate files of listeners that exist
/// in both (matched by address, TLS in both).
fn reloadable_view(running: &Config, next: &Config) -> Config {
    let mut e = running.clone();
    for c in &mut e.callers {
        match next.callers.iter().find(|n| n.id == c.id) {
            Some(n) => {
                c.key_hashes = n.key_hashes.clone();
                c.totp_secret = n.totp_secret.clone();
                c.require_token = n.require_token;
                c.client_cert_names = n.client_cert_names.clone();
                c.signing_keys = n.signing_keys.clone();
            }
            None => {
                c.key_hashes.clear();
                c.client_cert_names.clear();
            } // (A removed caller keeps its signing keys: they authenticate
              // nothing without a key or certificate.)
        }
    }
    e.upstream.access_token = next.upstream.access_token.clone();
    e.schwab.app_key = next.schwab.app_key.clone();
    e.schwab.app_secret = next.schwab.app_secret.clone();
    e.schwab.token_store = next.schwab.token_store.clone();
    e.schwab.callback_url = next.schwab.callback_url.clone();
    for l in &mut e.listen {
        if let Some(n) = next.listen.iter().find(|n| n.address == l.address)
            && let (Some(running), Some(next)) = (&mut l.tls, &n.tls)
        {
            // The certificate and key; the client CA needs a restart.
            running.cert_file = next.cert_file.clone();
            running.key_file = next.key_file.clone();
        }
    }
    e
}

/// Changes between two configurations that a reload does not apply.
fn restart_only_changes(running: &Config, next: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let same_after_reload = reloadable_view(running, next);
    let d = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let callers = |c: &Config| {
        c.callers
            .iter()
            .map(|c| (c.id.clone(), c.role, c.accounts.clone()))
            .collect::<Vec<_>>()
    };
    let removed: Vec<&str> = running
        .callers
        .iter()
        .filter(|c| !next.callers.iter().any(|n| n.id == c.id))
        .map(|c| c.id.as_str())
        .collect();
    if !removed.is_empty() {
        out.push(format!(
            "callers removed ({}): their keys and sessions stopped working now; the rest at restart",
            removed.join(", ")
        ));
    }
    if callers(running) != callers(next) && removed.is_empty() {
        out.push("callers added, or roles or accounts changed".into());
    }
    let listeners = |c: &Config| {
        c.listen
            .iter()
            .map(|l| {
                let mtls = l
                    .tls
                    .as_ref()
                    .map(|t| (t.client_ca_file.clone(), t.client_cert));
                (l.address, l.tls.is_some(), mtls)
            })
            .collect::<Vec<_>>()
    };
    if listeners(running) != listeners(next) || d(&running.admin) != d(&next.admin) {
        out.push("listeners (addresses, TLS on or off, client CA) or the admin listener".into());
    }
    let mut next_upstream = next.upstream.clone();
    next_upstream.access_token = same_after_reload.upstream.access_token.clone();
    let mut run_upstream = running.upstream.clone();
    run_upstream.access_token = same_after_reload.upstream.access_token.clone();
    if d(&run_upstream) != d(&next_upstream) {
        out.push("upstream (address, CA, timeouts, pools)".into());
    }
    if running.schwab.oauth_base_url != next.schwab.oauth_base_url
        || running.schwab.refresh_ahead.0 != next.schwab.refresh_ahead.0
    {
        out.push("schwab.oauth_base_url or schwab.refresh_ahead".into());
    }
    for (name, a, b) in [
        ("limits", d(&running.limits), d(&next.limits)),
        ("routes", d(&running.routes), d(&next.routes)),
        ("accounts", d(&running.accounts), d(&next.accounts)),
        ("policies", d(&running.policies), d(&next.policies)),
        ("environment", d(&running.environment), d(&next.environment)),
        ("tokens", d(&running.tokens), d(&next.tokens)),
        ("signatures", d(&running.signatures), d(&next.signatures)),
        ("logging", d(&running.logging), d(&next.logging)),
        ("reload", d(&running.reload), d(&next.reload)),
    ] {
        if a != b {
            out.push(name.into());
        }
    }
    out
}
