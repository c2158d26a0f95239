//! portcullis — an authorization proxy for trading APIs.
//!
//! The binary is a thin shell around this library; tests drive
//! [`run`] directly on port 0 listeners.

pub mod admin;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod halt;
pub mod keys;
pub mod pipeline;
pub mod policy;
pub mod reject;
pub mod reload;
pub mod server;
pub mod sim;
pub mod swap;
pub mod telemetry;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use config::{Config, ConfigError, ConfigIssue};
use pipeline::Proxy;
use pipeline::identity::Identities;
use pipeline::route::RouteTable;
use pipeline::upstream::Upstream;
use server::{Handler, ServeOptions, Shutdown};

/// Why the proxy could not start. Messages name files, keys and secret
/// references, never secret values.
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    /// A secret, certificate, CA or route file could not be loaded.
    Load(String),
    /// A listener could not be bound.
    Bind(String),
    Internal(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Load(m) => write!(f, "cannot load configuration: {m}"),
            StartError::Bind(m) => write!(f, "cannot listen: {m}"),
            StartError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for StartError {}

impl StartError {
    /// Process exit code (sysexits): 64 for configuration problems, 69 when
    /// an address cannot be bound, 70 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Load(_) => 64,
            StartError::Bind(_) => 69,
            StartError::Internal(_) => 70,
        }
    }
}

/// Bound sockets for one proxy instance: one per `listen` entry, then admin.
pub struct Listeners {
    pub proxy: Vec<TcpListener>,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds every configured address.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let mut proxy = Vec::new();
        for l in &config.listen {
            proxy.push(bind_addr(l.address).await?);
        }
        let admin = bind_addr(config.admin.address).await?;
        Ok(Listeners { proxy, admin })
    }
}

pub async fn bind_addr(addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Bind(format!("{addr}: {e}")))
}

/// Everything `run` needs that is read from disk or the environment —
/// loaded before anything listens, so a bad secret or certificate stops the
/// start instead of the first request.
pub struct Prepared {
    pub proxy: Arc<Proxy>,
    pub tls: Vec<Option<TlsAcceptor>>,
    /// The reloadable parts (secrets, certificates, caller keys).
    pub live: Arc<reload::Live>,
}

/// The route table the configuration names: `routes.file`, or the built-in profile.
fn load_routes(config: &Config) -> Result<RouteTable, StartError> {
    let (source_name, parsed) = match &config.routes.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| StartError::Load(format!("routes.file {}: {e}", path.display())))?;
            (path.display().to_string(), RouteTable::from_yaml(&text))
        }
        None => ("(built-in schwab routes)".to_owned(), RouteTable::schwab()),
    };
    parsed.map_err(|issues: Vec<ConfigIssue>| {
        StartError::Config(ConfigError {
            source_name,
            issues,
        })
    })
}

pub fn prepare(config: &Config) -> Result<Prepared, StartError> {
    let routes = load_routes(config)?;

    for (key, r) in [
        ("schwab.app_key", &config.schwab.app_key),
        ("schwab.app_secret", &config.schwab.app_secret),
    ] {
        if let Some(r) = r {
            config::secret::resolve(r).map_err(|e| StartError::Load(format!("{key}: {e}")))?;
        }
    }

    let mut tls = Vec::new();
    let mut certs = Vec::new();
    for (i, l) in config.listen.iter().enumerate() {
        let Some(files) = &l.tls else {
            tls.push(None);
            certs.push(None);
            continue;
        };
        let fail = |e: server::tls::TlsError| StartError::Load(format!("listen[{i}].tls: {e}"));
        let cert = server::tls::ReloadableCert::from_files(&files.cert_file, &files.key_file)
            .map_err(fail)?;
        let client_ca = files
            .client_ca_file
            .as_deref()
            .map(|ca| (ca, files.client_cert == config::ClientCertMode::Required));
        tls.push(Some(TlsAcceptor::from(
            cert.server_config(client_ca).map_err(fail)?,
        )));
        certs.push(Some(cert));
    }

    let metrics = Arc::new(
        admin::metrics::Metrics::new()
            .map_err(|e| StartError::Internal(format!("metrics: {e}")))?,
    );
    let upstream = Upstream::new(&config.upstream, Some(metrics.upstream_connects.clone()))
        .map_err(|e| StartError::Load(format!("upstream: {e}")))?;
    let upstream_auth = credentials::upstream_auth_from_config(config, Some(metrics.clone()))
        .map_err(StartError::Load)?;
    let engine = load_policies(policy::source_from_config(config), config, &routes)?;
    metrics.set_policy_hash(&engine.current().bundle.hash);
    let shadow = match policy::shadow_source_from_config(config) {
        Some(src) => Some(Arc::new(load_policies(src, config, &routes)?)),
        None => None,
    };
    let proxy = Arc::new(Proxy {
        routes,
        identities: swap::Swap::new(
            Identities::from_config(&config.callers).map_err(StartError::Load)?,
        ),
        totp_guard: credentials::totp::Guard::new(time::OffsetDateTime::now_utc().unix_timestamp()),
        signature_window: config.signatures.window.0,
        signature_authorities: config.signatures.authorities.clone(),
        started_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
        kill_switch: halt::KillSwitch::load(config.kill_switch.state_file.as_deref()).with_cancel(
            config.kill_switch.cancel_open_orders,
            config.accounts.iter().map(|a| a.hash.clone()).collect(),
        ),
        audit: match &config.audit {
            None => None,
            Some(a) => {
                let secret = config::secret::resolve(&a.key)
                    .map_err(|e| StartError::Load(format!("audit.key: {e}")))?;
                let key = audit::ChainKey::from_secret(&secret)
                    .map_err(|e| StartError::Load(format!("audit.key {}: {e}", a.key)))?;
                let checkpoint = match &a.checkpoint {
                    None => None,
                    Some(c) => {
                        let secret = config::secret::resolve(&c.key)
                            .map_err(|e| StartError::Load(format!("audit.checkpoint.key: {e}")))?;
                        let signer =
                            audit::checkpoint::Signer::from_secret(&secret).map_err(|e| {
                                StartError::Load(format!("audit.checkpoint.key {}: {e}", c.key))
                            })?;
                        Some((signer, c.interval.0))
                    }
                };
                let options = audit::writer::Options {
                    stdout: a.stdout,
                    max_file_bytes: a.max_file_bytes,
                    max_file_age: a.max_file_age.0,
                    retention: a.retention.map(|r| r.0),
                    checkpoint,
                };
                Some(
                    audit::AuditLog::open(&a.dir, key, options, Some(metrics.clone()))
                        .map_err(StartError::Load)?,
                )
            }
        },
        ip_filter: pipeline::ip_filter::IpFilter::from_config(&config.ip_filter),
        rate_limits: pipeline::rate_limit::RateLimits::new(
            &config.rate_limits,
            &config.callers,
            Some(metrics.clone()),
        ),
        refuse_reads_without_audit: config
            .audit
            .as_ref()
            .is_some_and(|a| a.reads_when_failing == config::ReadsWhenFailing::Refuse),
        replay: pipeline::signature::ReplayCache::new(config.signatures.max_nonces),
        sessions: Arc::new(credentials::sessions::Sessions::new(config.tokens.limits())),
        upstream,
        upstream_auth,
        limits: config.limits.clone(),
        metrics,
        policy: Arc::new(engine),
        shadow,
        environment: config.environment,
    });
    let live = Arc::new(reload::Live::new(proxy.clone(), certs, config.clone()));
    Ok(Prepared { proxy, tls, live })
}

/// Loads and validates the policy set and the entities, and checks that
/// every route's action is declared in the schema.
fn load_policies(
    source: policy::PolicySource,
    config: &Config,
    routes: &RouteTable,
) -> Result<policy::Engine, StartError> {
    let as_config_error = |source: &policy::PolicySource, issues: Vec<policy::PolicyIssue>| {
        StartError::Config(ConfigError {
            source_name: format!("policies ({source})"),
            issues: issues
                .into_iter()
                .map(|i| ConfigIssue {
                    key: i.file,
                    message: i.message,
                    line: i.line,
                })
                .collect(),
        })
    };
    let actions = routes.routes.iter().map(|r| r.action.to_string()).collect();
    let engine = policy::Engine::load_requiring(
        source.clone(),
        policy::Directory::from_config(config),
        actions,
    )
    .map_err(|i| as_config_error(&source, i))?;
    Ok(engine)
}

/// Runs the proxy on already-bound listeners until `shutdown` fires, then
/// drains in-flight requests (up to `limits.shutdown_grace`).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    let prepared = prepare(&config)?;
    serve_prepared(config, prepared, listeners, shutdown).await
}

/// [`run`] for a caller that already ran [`prepare`].
pub async fn serve_prepared(
    config: Config,
    prepared: Prepared,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    if listeners.proxy.len() != prepared.tls.len() {
        return Err(StartError::Internal(
            "one bound listener is needed per `listen` entry".into(),
        ));
    }
    let proxy = prepared.proxy;
    let admin = Arc::new(admin::Admin {
        metrics: proxy.metrics.clone(),
        ready: AtomicBool::new(false),
        proxy: proxy.clone(),
        live: prepared.live.clone(),
    });
    spawn_reloaders(&config, &prepared.live, &shutdown);
    if let credentials::UpstreamAuth::Managed(m) = &proxy.upstream_auth {
        tokio::spawn(m.clone().run(shutdown.clone()));
    }
    {
        // Idle rate-limit keys are dropped every few seconds (memory bound).
        let p = proxy.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let p = p.clone();
                        let _ = tokio::task::spawn_blocking(move || p.rate_limits.housekeep()).await;
                    }
                    _ = stop.wait() => return,
                }
            }
        });
    }

    let mut tasks = Vec::new();
    for (listener, tls) in listeners.proxy.into_iter().zip(prepared.tls) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(address = %addr, tls = tls.is_some(), "proxy listening");
        }
        let p = proxy.clone();
        let handler: Handler = Arc::new(move |req, peer| {
            let p = p.clone();
            Box::pin(async move { Ok(p.handle(req, peer).await) })
        });
        let opts = ServeOptions {
            kind: "proxy",
            limits: config.limits.clone(),
            metrics: Some(proxy.metrics.clone()),
            per_ip_exempt: config.ip_filter.trusted_proxies.clone(),
        };
        tasks.push(tokio::spawn(server::serve(
            listener,
            tls,
            handler,
            opts,
            shutdown.clone(),
        )));
    }

    if let Ok(addr) = listeners.admin.local_addr() {
        tracing::info!(address = %addr, "admin listening");
    }
    let a = admin.clone();
    let admin_handler: Handler = Arc::new(move |req, peer| {
        let a = a.clone();
        Box::pin(async move { Ok(a.handle(req, peer).await) })
    });
    let admin_opts = ServeOptions {
        kind: "admin",
        limits: config.limits.clone(),
        metrics: Some(proxy.metrics.clone()),
        per_ip_exempt: config.ip_filter.trusted_proxies.clone(),
    };
    tasks.push(tokio::spawn(server::serve(
        listeners.admin,
        None,
        admin_handler,
        admin_opts,
        shutdown.clone(),
    )));

    admin.ready.store(true, Ordering::Release);
    for t in tasks {
        if let Err(e) = t.await {
            tracing::error!(error = %e, "listener task failed");
        }
    }
    admin.ready.store(false, Ordering::Release);
    tracing::info!("proxy stopped");
    Ok(())
}

/// Policy reload triggers besides the admin endpoint: SIGHUP, and (with
/// `policies.watch`) a change to the files, polled every 2 seconds. Both
/// stop at shutdown. Reloads run on the blocking pool, so parsing a large
/// set never stalls request handling.
fn spawn_reloaders(config: &Config, live: &Arc<reload::Live>, shutdown: &Shutdown) {
    let proxy = &live.proxy;
    let reload = |proxy: Arc<Proxy>, trigger: &'static str| async move {
        let _ = tokio::task::spawn_blocking(move || proxy.reload_policies(trigger)).await;
    };
    if config.reload.watch {
        let live = live.clone();
        let mut stop = shutdown.clone();
        let every = config.reload.interval.0;
        tokio::spawn(async move {
            // Like the policy watcher: a change is applied once the files
            // have stayed the same for a whole poll (no half-written file).
            let mut seen = live.fingerprint();
            let mut settling = None;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.wait() => return,
                    _ = tick.tick() => {}
                }
                let now = live.fingerprint();
                if now == seen {
                    settling = None;
                    continue;
                }
                if settling.as_ref() != Some(&now) {
                    settling = Some(now);
                    continue;
                }
                settling = None;
                let _ = live.reload("file_change").await;
                // What was read, not what is there now: a change made while
                // the reload ran is seen at the next tick.
                seen = now;
            }
        });
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let live = live.clone();
        let mut stop = shutdown.clone();
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = stop.wait() => return,
                            got = hup.recv() => {
                                if got.is_none() { return; }
                                reload(live.proxy.clone(), "sighup").await;
                                let _ = live.reload("sighup").await;
                            }
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP handler not installed; reload with the admin endpoint")
            }
        }
    }
    let watched = proxy.policy.source.dir().is_some() || proxy.shadow.is_some();
    if config.policies.watch && watched {
        let proxy = proxy.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            // The files are compared with the loaded sets' hashes (same
            // scheme), not with the previous poll: a change made while a set
            // was loading is still seen. A broken state is tried once, not
            // every tick.
            let mut failed: Option<String> = None;
            // A change is applied once the files have stayed the same for a
            // whole poll, so a file caught half-written by `cp` or an editor
            // is not loaded (a truncated guard would be a valid, weaker set).
            let mut settling: Option<String> = None;
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.wait() => return,
                    _ = tick.tick() => {}
                }
                let p = proxy.clone();
                let changed = tokio::task::spawn_blocking(move || p.policy_files_changed())
                    .await
                    .ok()
                    .flatten();
                let Some(state) = changed else {
                    failed = None;
                    settling = None;
                    continue;
                };
                if failed.as_ref() == Some(&state) {
                    continue;
                }
                if settling.as_ref() != Some(&state) {
                    settling = Some(state);
                    continue;
                }
                settling = None;
                let p = proxy.clone();
                let ok = tokio::task::spawn_blocking(move || {
                    p.reload_policies("file_change").ok() && p.policy_files_changed().is_none()
                })
                .await
                .unwrap_or(false);
                failed = if ok { None } else { Some(state) };
            }
        });
    }
}

/// Checks a configuration the way `run` would, without listening. With
/// `load`, also reads every secret, certificate, CA and route file.
pub fn check_config(path: &std::path::Path, load: bool) -> Result<Config, StartError> {
    let cfg = Config::from_file(path, config::Mode::Normal).map_err(StartError::Config)?;
    if load {
        prepare(&cfg)?;
    } else {
        // The route table is cheap to check and a typo there is common.
        load_routes(&cfg)?;
    }
    Ok(cfg)
}
