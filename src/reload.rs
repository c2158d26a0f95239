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
    /// together. On error nothing changes.
    pub async fn apply(&self, next: Config) -> Result<Applied, String> {
        let _one = self.reloading.lock().await;
        let running = self.running();
        let mut applied = Applied {
            needs_restart: restart_only_changes(&running, &next),
            ..Applied::default()
        };

        // 1. Load everything.
        let identities = Identities::from_config(&callers_with_new_keys(&running, &next));
        applied.callers = running.callers.len();
        let mut pairs = Vec::new();
        for (i, cert) in self.certs.iter().enumerate() {
            let (Some(cert), Some(files)) = (cert, next.listen.get(i).and_then(|l| l.tls.as_ref()))
            else {
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
            match (&self.proxy.upstream_auth, &next.upstream.access_token) {
                (UpstreamAuth::Static(_), Some(r)) => {
                    let token = crate::config::secret::resolve(r)
                        .map_err(|e| format!("upstream.access_token: {e}"))?;
                    NewAuth::Static(bearer(&token).ok_or(
                        "upstream.access_token: contains bytes not allowed in an HTTP header",
                    )?)
                }
                (UpstreamAuth::Managed(_), None) => NewAuth::Managed(
                    crate::credentials::store_from_config(&next)?,
                    Box::new(crate::credentials::oauth_from_config(&next)?),
                ),
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
        let mut kept = next;
        // Callers other than their keys stay as they run.
        kept.callers = callers_with_new_keys(&running, &kept);
        *self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = kept;
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
        let refs = [
            cfg.upstream.access_token.as_ref(),
            cfg.schwab.app_key.as_ref(),
            cfg.schwab.app_secret.as_ref(),
            cfg.schwab.token_store.as_ref().map(|t| &t.key),
        ];
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

/// The running callers, each with the key hashes `next` gives it (callers
/// absent from `next` keep theirs: removing a caller needs a restart).
fn callers_with_new_keys(running: &Config, next: &Config) -> Vec<crate::config::CallerConfig> {
    running
        .callers
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(n) = next.callers.iter().find(|n| n.id == c.id) {
                c.key_hashes = n.key_hashes.clone();
            }
            c
        })
        .collect()
}

/// Changes between two configurations that a reload does not apply.
fn restart_only_changes(running: &Config, next: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let ids = |c: &Config| {
        c.callers
            .iter()
            .map(|c| (c.id.clone(), c.role, c.accounts.clone()))
            .collect::<Vec<_>>()
    };
    if ids(running) != ids(next) {
        out.push("callers (ids, roles or accounts)".into());
    }
    let addrs = |c: &Config| c.listen.iter().map(|l| l.address).collect::<Vec<_>>();
    if addrs(running) != addrs(next) || running.admin.address != next.admin.address {
        out.push("listen or admin addresses".into());
    }
    if running.upstream.base_url != next.upstream.base_url {
        out.push("upstream.base_url".into());
    }
    if format!("{:?}", running.limits) != format!("{:?}", next.limits) {
        out.push("limits".into());
    }
    if running.environment != next.environment {
        out.push("environment".into());
    }
    out
}
