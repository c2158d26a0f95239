//! portcullis — an authorization proxy for trading APIs.
//!
//! The binary is a thin shell around this library; tests drive
//! [`run`] directly on port 0 listeners.

pub mod admin;
pub mod certs;
pub mod cli;
pub mod config;
pub mod demo;
pub mod keys;
pub mod pipeline;
pub mod reject;
pub mod server;
pub mod sim;
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

    let token = config::secret::resolve(&config.upstream.access_token)
        .map_err(|e| StartError::Load(format!("upstream.access_token: {e}")))?;
    let upstream_authorization = config::secret::bearer_header(&token)
        .map_err(|e| StartError::Load(format!("upstream.access_token: {e}")))?;
    for (key, r) in [
        ("schwab.app_key", &config.schwab.app_key),
        ("schwab.app_secret", &config.schwab.app_secret),
    ] {
        if let Some(r) = r {
            config::secret::resolve(r).map_err(|e| StartError::Load(format!("{key}: {e}")))?;
        }
    }

    let mut tls = Vec::new();
    for (i, l) in config.listen.iter().enumerate() {
        tls.push(match &l.tls {
            None => None,
            Some(files) => {
                let cfg = server::tls::server_config_from_files(&files.cert_file, &files.key_file)
                    .map_err(|e| StartError::Load(format!("listen[{i}].tls: {e}")))?;
                Some(TlsAcceptor::from(cfg))
            }
        });
    }

    let upstream =
        Upstream::new(&config.upstream).map_err(|e| StartError::Load(format!("upstream: {e}")))?;
    let metrics = Arc::new(
        admin::metrics::Metrics::new()
            .map_err(|e| StartError::Internal(format!("metrics: {e}")))?,
    );
    let proxy = Arc::new(Proxy {
        routes,
        identities: Identities::from_config(&config.callers),
        upstream,
        upstream_authorization,
        limits: config.limits.clone(),
        metrics,
    });
    Ok(Prepared { proxy, tls })
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
    });

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
    let admin_handler: Handler = Arc::new(move |req, _peer| {
        let a = a.clone();
        Box::pin(async move { Ok(a.handle(&req)) })
    });
    let admin_opts = ServeOptions {
        kind: "admin",
        limits: config.limits.clone(),
        metrics: Some(proxy.metrics.clone()),
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
