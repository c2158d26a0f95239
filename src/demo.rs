//! `portcullis demo`: the simulator and the proxy in one process, with a
//! fresh development CA, so a newcomer sees a request travel end to end with
//! no setup.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::certs::{DevCa, PROXY_NAMES, SIM_NAMES};
use crate::config::{Config, Mode};
use crate::server::{self, ServeOptions, Shutdown};
use crate::sim::{Sim, SimOptions};
use crate::{Listeners, StartError};

pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

/// The demo Super Admin's TOTP secret (base32), published in the README so
/// the MFA flow can be tried by hand.
pub const DEMO_TOTP_SECRET: &str = "JBSWY3DPEHPK3PXP";

/// Where the demo listens. Defaults: proxy 127.0.0.1:8443, simulator
/// 127.0.0.1:8444, admin 127.0.0.1:9464. Tests use port 0.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dir: PathBuf,
    pub proxy: SocketAddr,
    pub sim: SocketAddr,
    pub admin: SocketAddr,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            dir: PathBuf::from(".portcullis-demo"),
            proxy: SocketAddr::from(([127, 0, 0, 1], 8443)),
            sim: SocketAddr::from(([127, 0, 0, 1], 8444)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// Writes a file readable by the owner only (keys, tokens).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Generates a CA and a certificate for `names` under `dir`:
/// `ca.pem`, `<prefix>-cert.pem`, `<prefix>-key.pem`. Returns the server config.
pub fn write_pki(
    dir: &Path,
    ca: &DevCa,
    prefix: &str,
    names: &[&str],
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let load = |e: String| StartError::Load(e);
    let leaf = ca
        .leaf(names)
        .map_err(|e| load(format!("certificate generation: {e}")))?;
    let cert = dir.join(format!("{prefix}-cert.pem"));
    let key = dir.join(format!("{prefix}-key.pem"));
    std::fs::write(&cert, format!("{}{}", leaf.cert_pem, ca.ca_pem))
        .map_err(|e| load(format!("{}: {e}", cert.display())))?;
    write_private(&key, leaf.key_pem.as_bytes())
        .map_err(|e| load(format!("{}: {e}", key.display())))?;
    server::tls::server_config_from_files(&cert, &key).map_err(|e| load(e.to_string()))
}

pub fn prepare_dir(dir: &Path) -> Result<DevCa, StartError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StartError::Load(format!("{}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let ca = DevCa::new("portcullis demo CA")
        .map_err(|e| StartError::Load(format!("CA generation: {e}")))?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.ca_pem)
        .map_err(|e| StartError::Load(format!("{}: {e}", ca_path.display())))?;
    Ok(ca)
}

/// Policy files the demo enables (the rest go to `examples/`).
const DEMO_ENABLED: &[&str] = &[
    "schema.cedarschema",
    "roles.cedar",
    "guards/max-order-quantity.cedar",
    "guards/symbol-deny-list.cedar",
];

/// Writes the shipped policies for the demo, fresh on every start: the
/// enabled ones at the top of `dir`, the other example guards under
/// `dir/examples/`.
pub fn write_policies(dir: &Path) -> Result<(), StartError> {
    let examples = dir.join("examples");
    let fail = |p: &Path, e: std::io::Error| StartError::Load(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(&examples).map_err(|e| fail(&examples, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| fail(dir, e))?.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|x| x == "cedar") {
            std::fs::remove_file(&p).map_err(|e| fail(&p, e))?;
        }
    }
    for (name, text) in crate::policy::source::EMBEDDED {
        let file = Path::new(name)
            .file_name()
            .map(Path::new)
            .unwrap_or(Path::new(name));
        let target = if DEMO_ENABLED.contains(name) {
            dir.join(file)
        } else {
            examples.join(file)
        };
        std::fs::write(&target, text).map_err(|e| fail(&target, e))?;
    }
    Ok(())
}

/// A running demo (for tests): addresses and the simulator.
pub struct DemoHandle {
    pub proxy: SocketAddr,
    pub sim_addr: SocketAddr,
    pub admin: SocketAddr,
    pub sim: Arc<Sim>,
    pub config: Config,
    /// The proxy's reloadable parts (tests rotate secrets through it).
    pub live: Arc<crate::reload::Live>,
}

/// Builds the demo's configuration with the chosen directory and addresses.
pub fn demo_config(opts: &DemoOptions, sim_addr: SocketAddr) -> Result<Config, StartError> {
    let dir = opts.dir.display().to_string();
    let text = DEMO_CONFIG.replace(
        ".portcullis-demo/",
        &format!("{}/", dir.trim_end_matches('/')),
    );
    let mut cfg = Config::from_yaml(&text, "demo.yaml", Mode::Demo).map_err(StartError::Config)?;
    if let Some(l) = cfg.listen.first_mut() {
        l.address = opts.proxy;
    }
    cfg.admin.address = opts.admin;
    cfg.upstream.base_url = format!("https://{sim_addr}");
    Ok(cfg)
}

/// Starts the simulator and the proxy; returns once both listen. The proxy
/// and simulator run until `shutdown` fires; the returned future of `run`
/// completes when they have drained.
pub async fn start(
    opts: &DemoOptions,
    shutdown: Shutdown,
) -> Result<(DemoHandle, tokio::task::JoinHandle<Result<(), StartError>>), StartError> {
    start_with(opts, SimOptions::default(), |_| {}, shutdown).await
}

/// [`start`] with simulator options and a last change to the proxy
/// configuration (tests tighten timeouts and limits this way).
pub async fn start_with(
    opts: &DemoOptions,
    sim_options: SimOptions,
    customize: impl FnOnce(&mut Config),
    shutdown: Shutdown,
) -> Result<(DemoHandle, tokio::task::JoinHandle<Result<(), StartError>>), StartError> {
    let ca = prepare_dir(&opts.dir)?;
    let sim_tls = sim_options.listener_tls(write_pki(&opts.dir, &ca, "sim", SIM_NAMES)?);
    write_pki(&opts.dir, &ca, "proxy", PROXY_NAMES)?;

    let sim_listener = crate::bind_addr(opts.sim).await?;
    let sim_addr = sim_listener
        .local_addr()
        .map_err(|e| StartError::Bind(e.to_string()))?;
    let sim = Sim::new(SimOptions {
        streamer_url: format!("wss://{sim_addr}/ws"),
        ..sim_options
    });
    // The simulator app's credentials and a fresh store key, as files the
    // configuration references.
    let so = sim.options();
    let store_key = crate::credentials::store::StoreKey::generate()
        .map_err(|e| StartError::Internal(e.to_string()))?;
    // The audit key is kept across demo runs, so the chain continues.
    let audit_key = match std::fs::read_to_string(opts.dir.join("audit.key")) {
        Ok(k) if !k.trim().is_empty() => secrecy::SecretString::from(k.trim().to_owned()),
        _ => crate::credentials::store::StoreKey::generate()
            .map_err(|e| StartError::Internal(e.to_string()))?,
    };
    // So is the checkpoint key; its public half is written beside it for
    // `portcullis audit verify-checkpoints`.
    let checkpoint_key = match std::fs::read_to_string(opts.dir.join("audit-checkpoint.key")) {
        Ok(k) if !k.trim().is_empty() => secrecy::SecretString::from(k.trim().to_owned()),
        _ => {
            crate::audit::checkpoint::generate()
                .map_err(StartError::Internal)?
                .0
        }
    };
    let checkpoint_public = crate::audit::checkpoint::Signer::from_secret(&checkpoint_key)
        .map_err(|e| StartError::Load(format!("audit-checkpoint.key: {e}")))?
        .public_key();
    for (name, value) in [
        (
            "audit-checkpoint.key",
            secrecy::ExposeSecret::expose_secret(&checkpoint_key),
        ),
        ("audit-checkpoint.pub", checkpoint_public.as_str()),
        ("schwab-app-key", so.app_key.as_str()),
        ("schwab-app-secret", so.app_secret.as_str()),
        (
            "token-store.key",
            secrecy::ExposeSecret::expose_secret(&store_key),
        ),
        ("superadmin-totp", DEMO_TOTP_SECRET),
        (
            "audit.key",
            secrecy::ExposeSecret::expose_secret(&audit_key),
        ),
    ] {
        let path = opts.dir.join(name);
        write_private(&path, value.as_bytes())
            .map_err(|e| StartError::Load(format!("{}: {e}", path.display())))?;
    }
    write_policies(&opts.dir.join("policies"))?;
    let mut cfg = demo_config(opts, sim_addr)?;
    // The login talks to the simulator whatever a test does to the upstream.
    let login_cfg = cfg.clone();
    customize(&mut cfg);
    let sim_opts = ServeOptions {
        kind: "sim",
        limits: sim.options().listener_limits(cfg.limits.clone()),
        metrics: None,
        per_ip_exempt: Vec::new(),
    };
    tokio::spawn(server::serve(
        sim_listener,
        Some(TlsAcceptor::from(sim_tls)),
        sim.handler(),
        sim_opts,
        shutdown.clone(),
    ));

    login(&login_cfg, &sim).await?;
    // The journal shows what reached the "broker" through the proxy; the
    // demo's own login is not part of that.
    sim.clear_journal();

    let listeners = Listeners::bind(&cfg).await?;
    let proxy = listeners
        .proxy
        .first()
        .and_then(|l| l.local_addr().ok())
        .ok_or_else(|| StartError::Internal("no proxy listener".into()))?;
    let admin = listeners
        .admin
        .local_addr()
        .map_err(|e| StartError::Bind(e.to_string()))?;
    // Fail now, not in the background task, if anything cannot be loaded.
    let prepared = crate::prepare(&cfg)?;
    let live = prepared.live.clone();
    let task = tokio::spawn(crate::serve_prepared(
        cfg.clone(),
        prepared,
        listeners,
        shutdown,
    ));
    Ok((
        DemoHandle {
            proxy,
            sim_addr,
            admin,
            sim,
            config: cfg,
            live,
        },
        task,
    ))
}

/// The demo's stand-in for `portcullis token init`: the simulator grants a
/// code as if a human had approved the app in a browser, and the code is
/// exchanged at the simulator's token endpoint over HTTPS, as in production.
async fn login(cfg: &Config, sim: &Sim) -> Result<(), StartError> {
    let callback = cfg
        .schwab
        .callback_url
        .clone()
        .ok_or_else(|| StartError::Internal("demo config has no callback_url".into()))?;
    let oauth = crate::credentials::oauth_from_config(cfg).map_err(StartError::Load)?;
    let store = crate::credentials::store_from_config(cfg).map_err(StartError::Load)?;
    let code = secrecy::SecretString::from(sim.grant_code(&callback));
    let resp = oauth
        .exchange_code(&code, &callback)
        .await
        .map_err(|e| StartError::Internal(format!("demo login at the simulator: {e}")))?;
    let tokens = crate::credentials::manager::from_login(resp)
        .map_err(|e| StartError::Internal(format!("demo login: {e}")))?;
    store
        .save(&tokens)
        .map_err(|e| StartError::Load(e.to_string()))
}

/// The banner printed by `portcullis demo`.
pub fn banner(h: &DemoHandle, dir: &Path) -> String {
    let ca = dir.join("ca.pem");
    let ca = ca.display();
    let hash = h
        .sim
        .accounts()
        .first()
        .map(|a| a.hash.clone())
        .unwrap_or_default();
    let p = h.proxy;
    format!(
        r#"
portcullis demo is running.

  proxy      https://{p}   (trust {ca})
  simulator  https://{sim}   (stand-in for api.schwabapi.com)
  admin      http://{admin}/metrics  /healthz  /readyz
  policies   {policies}   (edit and save: applied within seconds)

  demo keys (Authorization: Bearer <key>):
    demo-viewer-key       Viewer
    demo-trader-key       Trader
    demo-admin-key        Admin
    demo-superadmin-key   Super Admin

Try it:

  # quotes
  curl --cacert {ca} -H 'Authorization: Bearer demo-viewer-key' \
    'https://{p}/marketdata/v1/quotes?symbols=AAPL,MSFT'

  # accounts (hash values are what order calls take)
  curl --cacert {ca} -H 'Authorization: Bearer demo-viewer-key' \
    https://{p}/trader/v1/accounts/accountNumbers

  # place an order (201, the new order id is in the Location header)
  curl -i --cacert {ca} -H 'Authorization: Bearer demo-trader-key' \
    -H 'Content-Type: application/json' \
    -d '{{"session":"NORMAL","duration":"DAY","orderType":"LIMIT","price":"150.00","orderStrategyType":"SINGLE","orderLegCollection":[{{"instruction":"BUY","instrument":{{"assetType":"EQUITY","symbol":"AAPL"}},"quantity":10}}]}}' \
    https://{p}/trader/v1/accounts/{hash}/orders

  # denied by policy: more than 100 shares (or GME, or the cash account)
  #   same command with "quantity":500  →  403 {{"error":"forbidden","reason":"order_quantity_limit",…}}

Press Ctrl-C to stop.
"#,
        policies = dir.join("policies").display(),
        sim = h.sim_addr,
        admin = h.admin,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_holds_exactly_the_published_demo_keys() {
        let opts = DemoOptions::default();
        let cfg = demo_config(&opts, opts.sim).unwrap();
        // TOTP secrets are files the demo writes at start; not needed here.
        let mut callers = cfg.callers.clone();
        callers.iter_mut().for_each(|c| c.totp_secret = None);
        let ids = crate::pipeline::identity::Identities::from_config(&callers).unwrap();
        let sessions = crate::credentials::sessions::Sessions::new(
            crate::config::TokensConfig::default().limits(),
        );
        for (id, role, key) in crate::keys::DEMO_KEYS {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {key}").parse().unwrap(),
            );
            let caller = ids.identify(&h, &sessions, None).unwrap().caller;
            assert_eq!(&*caller.id, id);
            assert_eq!(caller.role.as_str(), role);
        }
        assert_eq!(ids.len(), 4);
        assert!(Config::from_yaml(DEMO_CONFIG, "demo.yaml", Mode::Normal).is_err());
    }
}
