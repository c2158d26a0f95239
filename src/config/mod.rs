//! Typed configuration: parsed once (see [`yaml`]), validated completely
//! before anything listens, then turned into runtime state by the server.
//!
//! Every struct denies unknown keys, so a typo is an error naming the key
//! instead of a silently ignored setting. Relative paths are resolved against
//! the working directory of the process.

pub mod secret;
pub mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use secret::SecretRef;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Proxy listeners. At least one.
    pub listen: Vec<ListenConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub schwab: SchwabConfig,
    #[serde(default)]
    pub routes: RoutesConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub callers: Vec<CallerConfig>,
    /// The broker accounts callers may be assigned (Cedar `Account` entities).
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// Where the Cedar policies come from.
    #[serde(default)]
    pub policies: PoliciesConfig,
    /// Which environment this proxy serves; policies see it as
    /// `context.environment`.
    #[serde(default)]
    pub environment: Environment,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// How many threads serve requests.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Re-reading secrets and certificates when their files change.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Short-lived proxy tokens for callers.
    #[serde(default)]
    pub tokens: TokensConfig,
    /// Request signatures (callers with `signing_keys`).
    #[serde(default)]
    pub signatures: SignaturesConfig,
    /// The audit trail (docs/audit.md).
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// The trading halt (kill switch).
    #[serde(default)]
    pub kill_switch: KillSwitchConfig,
    /// Client addresses: trusted proxies and allow/deny lists.
    #[serde(default)]
    pub ip_filter: IpFilterConfig,
    /// Rate limits (docs/configuration.md#rate_limits).
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// The file this configuration was read from (not a key): a reload
    /// (SIGHUP) reads it again.
    #[serde(skip)]
    pub path: Option<std::path::PathBuf>,
}

/// Watching the configuration, certificate and secret files (SIGHUP always
/// reloads them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How often the files are checked; a change applies once it has held
    /// for one more check.
    #[serde(default = "d2s")]
    pub interval: Dur,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            interval: d2s(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Development,
    Staging,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// Short name used in `callers[].accounts`, logs and policies.
    pub name: String,
    /// Schwab's account hash (`hashValue` from `/accounts/accountNumbers`).
    pub hash: String,
    /// Environment of the account, as policies see it (`resource.environment`).
    /// Required: an unlabelled account must not silently escape a rule
    /// written for production accounts.
    pub environment: Environment,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// Directory holding `schema.cedarschema` and the policy files. Absent:
    /// the shipped schema and role policies compiled into the binary.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Policy files to load, relative to `dir`. Empty: every `*.cedar`
    /// file directly in `dir` (not in subdirectories).
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Re-read the files when they change (polled every 2 s).
    #[serde(default = "yes")]
    pub watch: bool,
    /// A candidate policy directory evaluated beside the active set on live
    /// traffic; disagreements are counted and logged, never enforced.
    #[serde(default)]
    pub shadow_dir: Option<PathBuf>,
    /// Files of the shadow set, relative to `shadow_dir` (empty: every
    /// `*.cedar` directly in it).
    #[serde(default)]
    pub shadow_files: Vec<PathBuf>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub address: SocketAddr,
    /// TLS for this listener. Without it the listener speaks plain HTTP, which
    /// is only accepted on a loopback address (the sidecar case).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// mTLS: PEM CA certificate(s) client certificates must chain to. A
    /// verified certificate whose SAN is in a caller's `client_cert_names`
    /// identifies that caller.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (no certificate, no connection) or
    /// `optional` (clients without one authenticate by bearer credential).
    #[serde(default)]
    pub client_cert: ClientCertMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the plain-HTTP admin listener (metrics, health, readiness).
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
    /// The admin listener is plain HTTP; binding it to a non-loopback address
    /// (for a Prometheus scraper in another pod) must be asked for explicitly.
    #[serde(default)]
    pub allow_remote: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: default_admin_address(),
            allow_remote: false,
        }
    }
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Origin of the broker API: `https://host[:port]`, no path.
    #[serde(default = "default_upstream")]
    pub base_url: String,
    /// Extra CA certificate(s) (PEM) trusted in addition to the public roots;
    /// the simulator's CA in the demo and the tests.
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    /// A fixed Schwab access token injected into every forwarded request,
    /// never refreshed (benchmarks, tests, or something else refreshes it).
    /// Production uses `schwab.token_store` instead; exactly one is set.
    #[serde(default)]
    pub access_token: Option<SecretRef>,
    #[serde(default = "d5s")]
    pub connect_timeout: Dur,
    #[serde(default = "d15s")]
    pub response_header_timeout: Dur,
    #[serde(default = "d30s")]
    pub total_timeout: Dur,
    #[serde(default = "d90s")]
    pub pool_idle_timeout: Dur,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    /// Offer HTTP/2 by ALPN (used when the upstream agrees). Off: a pool of
    /// HTTP/1.1 connections, which on loopback gives more throughput.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// HTTP/2 connections kept to the upstream, used in turn. One connection
    /// funnels every stream through one task and one lock; a few spread the
    /// work over the worker threads.
    #[serde(default = "default_http2_connections")]
    pub http2_connections: usize,
    /// An HTTP/2 PING on each upstream connection this often; `null`: none.
    #[serde(default = "d10s_some")]
    pub keep_alive_interval: Option<Dur>,
    /// A connection whose PING is not answered within this is closed (and
    /// the next request dials a new one).
    #[serde(default = "d5s")]
    pub keep_alive_timeout: Dur,
    /// Lets a development or staging configuration use the live Schwab API
    /// (`api.schwabapi.com`). Off: such a configuration refuses to start.
    #[serde(default)]
    pub allow_live_broker: bool,
}

/// The live Schwab API host; non-production configurations keep away from it.
pub const LIVE_BROKER_HOST: &str = "api.schwabapi.com";

fn default_http2_connections() -> usize {
    2
}

fn default_true() -> bool {
    true
}

fn default_upstream() -> String {
    "https://api.schwabapi.com".to_owned()
}
fn default_pool_max_idle() -> usize {
    128
}

/// The Schwab app credentials (used by the OAuth token manager). Optional
/// here; when present they are loaded and checked at startup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchwabConfig {
    #[serde(default)]
    pub app_key: Option<SecretRef>,
    #[serde(default)]
    pub app_secret: Option<SecretRef>,
    /// The app's registered callback URL (`token init` sends the browser
    /// there; must match the registration exactly).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// The encrypted store of the OAuth tokens the proxy keeps and refreshes.
    #[serde(default)]
    pub token_store: Option<TokenStoreConfig>,
    /// Refresh the access token this long before it expires.
    #[serde(default = "d5m")]
    pub refresh_ahead: Dur,
    /// Origin of the OAuth endpoints; default `upstream.base_url`.
    #[serde(default)]
    pub oauth_base_url: Option<String>,
}

impl Default for SchwabConfig {
    fn default() -> Self {
        SchwabConfig {
            app_key: None,
            app_secret: None,
            callback_url: None,
            token_store: None,
            refresh_ahead: d5m(),
            oauth_base_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenStoreConfig {
    /// The encrypted file (created by `portcullis token init`).
    pub file: PathBuf,
    /// 32 random bytes, base64 (`portcullis token new-key`).
    pub key: SecretRef,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    /// Built-in route table (`schwab`).
    #[serde(default = "default_profile")]
    pub profile: String,
    /// A route table file that replaces the built-in profile.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig {
            profile: default_profile(),
            file: None,
        }
    }
}

fn default_profile() -> String {
    "schwab".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    #[serde(default = "d10s")]
    pub header_read_timeout: Dur,
    #[serde(default = "d10s")]
    pub body_read_timeout: Dur,
    #[serde(default = "d30s")]
    pub idle_timeout: Dur,
    #[serde(default = "d10s")]
    pub tls_handshake_timeout: Dur,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent connections from one address (IPv6: one /64); trusted
    /// proxies (`ip_filter.trusted_proxies`) are exempt.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    #[serde(default = "default_h2_streams")]
    pub h2_max_concurrent_streams: u32,
    #[serde(default = "d30s")]
    pub shutdown_grace: Dur,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_read_timeout: d10s(),
            body_read_timeout: d10s(),
            idle_timeout: d30s(),
            tls_handshake_timeout: d10s(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            h2_max_concurrent_streams: default_h2_streams(),
            shutdown_grace: d30s(),
        }
    }
}

fn default_max_body() -> usize {
    64 * 1024
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_connections_per_ip() -> usize {
    128
}

fn default_max_connections() -> usize {
    4096
}
fn default_h2_streams() -> u32 {
    100
}

/// One accepted API key hash, optionally expiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHash {
    pub hash: String,
    /// Unix seconds from which the key is refused.
    pub expires: Option<i64>,
}

impl KeyHash {
    pub fn new(hash: impl Into<String>) -> KeyHash {
        KeyHash {
            hash: hash.into(),
            expires: None,
        }
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyHash, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct WithExpiry {
            hash: String,
            expires: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Plain(String),
            WithExpiry(WithExpiry),
        }
        match Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a key hash is `sha256:<64 hex>` or `{ hash: sha256:<64 hex>, expires: 2027-01-31T00:00:00Z }`",
            )
        })? {
            Form::Plain(hash) => Ok(KeyHash::new(hash)),
            Form::WithExpiry(w) => {
                let expires = parse_expiry(&w.expires).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "expires: `{}` is not an RFC 3339 time (2027-01-31T00:00:00Z) or a date (2027-01-31)",
                        w.expires
                    ))
                })?;
                Ok(KeyHash {
                    hash: w.hash,
                    expires: Some(expires),
                })
            }
        }
    }
}

/// An RFC 3339 time, or a date meaning its midnight UTC; Unix seconds.
fn parse_expiry(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let d = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    Some(d.midnight().assume_utc().unix_timestamp())
}

/// Caller ids and account names: they appear in Cedar entity ids, logs and
/// audit records, so keep them plain.
fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

/// The four roles of the security guidelines; each caller is a member of
/// its role's Cedar entity (see policies/roles.cedar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Role {
    Viewer,
    Trader,
    Admin,
    SuperAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "Viewer",
            Role::Trader => "Trader",
            Role::Admin => "Admin",
            Role::SuperAdmin => "SuperAdmin",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// Stable caller id used in logs, metrics-free audit records and policies.
    pub id: String,
    pub role: Role,
    /// `sha256:<64 hex>` hashes of the caller's API keys (`portcullis key
    /// generate`), each optionally `{hash: …, expires: …}` — two keys with an
    /// expiry on the old one make a rotation window.
    pub key_hashes: Vec<KeyHash>,
    /// Names (from `accounts[]`) of the accounts this caller may act on.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// A human's TOTP secret (base32, as an authenticator app holds it), by
    /// secret reference. Set: getting a proxy token needs a valid code, and
    /// such sessions carry `context.mfa == true`.
    #[serde(default)]
    pub totp_secret: Option<SecretRef>,
    /// The API key is accepted only as the client secret at the proxy's
    /// token endpoint; requests must carry a short-lived proxy token.
    #[serde(default)]
    pub require_token: bool,
    /// mTLS: subject alternative names (DNS names or URIs such as SPIFFE
    /// ids) of client certificates that identify this caller.
    #[serde(default)]
    pub client_cert_names: Vec<String>,
    /// Request signing (RFC 9421): with any key here, every request of this
    /// caller must be signed with one of them.
    #[serde(default)]
    pub signing_keys: Vec<SigningKeyConfig>,
    /// Addresses this caller's credentials work from (empty: any that the
    /// global and group lists admit).
    #[serde(default)]
    pub allowed_ips: Vec<crate::pipeline::ip_filter::Cidr>,
    /// This caller's own per-group rate (instead of `rate_limits.per_caller`).
    #[serde(default)]
    pub rate_limit: Option<RateConfig>,
}

/// `ip_filter`: who the client is behind proxies, and which addresses may
/// come in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    /// Peers whose `Forwarded` / `X-Forwarded-For` / `X-Real-IP` are
    /// believed (the rightmost hop that is not one of them is the client).
    /// Empty (the default): the TCP peer is the client, the headers ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<crate::pipeline::ip_filter::Cidr>,
    /// Every request: a non-empty allow list admits only what it names …
    #[serde(default)]
    pub allow: Vec<crate::pipeline::ip_filter::Cidr>,
    /// … and the deny list wins over any allow list.
    #[serde(default)]
    pub deny: Vec<crate::pipeline::ip_filter::Cidr>,
    /// Per route group (`market_data`, `accounts`, `orders`, `admin`, or a
    /// route table's own groups).
    #[serde(default)]
    pub groups: std::collections::BTreeMap<String, crate::pipeline::ip_filter::IpRules>,
}

/// A token-bucket rate: `rate` (`20/s`, `120/m`, `1000/h`) refilling a
/// bucket of `burst` requests.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub rate: RateSpec,
    pub burst: u32,
}

/// `N/s`, `N/m` or `N/h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSpec {
    pub count: u32,
    pub per: Duration,
}

impl RateSpec {
    /// The time one request's worth of the bucket takes to refill.
    pub fn interval(&self) -> Duration {
        self.per / self.count.max(1)
    }
}

impl std::fmt::Display for RateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for RateSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RateSpec, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("`{s}`: a rate is N/s, N/m or N/h (N ≥ 1)"));
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 || count > 1_000_000 {
            return Err(bad());
        }
        Ok(RateSpec { count, per })
    }
}

fn rate(count: u32, per_secs: u64, burst: u32) -> Option<RateConfig> {
    Some(RateConfig {
        rate: RateSpec {
            count,
            per: Duration::from_secs(per_secs),
        },
        burst,
    })
}

/// `rate_limits`: every limit on by default, each switched off with `null`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Every request, before authentication, by client address (IPv6 by
    /// its `ipv6_prefix`).
    #[serde(default = "default_per_ip")]
    pub per_ip: Option<RateConfig>,
    /// Failed authentications by client address; when the budget is spent
    /// the address is locked out for `lockout`.
    #[serde(default = "default_auth_failures")]
    pub auth_failures: Option<AuthFailuresConfig>,
    /// Per caller and route group (`groups` overrides it per group; a
    /// caller's own `rate_limit` overrides both).
    #[serde(default = "default_per_caller")]
    pub per_caller: Option<RateConfig>,
    #[serde(default = "default_groups")]
    pub groups: std::collections::BTreeMap<String, RateConfig>,
    /// Orders (place, replace, cancel) per Schwab account — Schwab allows
    /// 0–120 a minute per account, set at app registration.
    #[serde(default = "default_per_account_orders")]
    pub per_account_orders: Option<RateConfig>,
    /// Every other call to Schwab, for the whole app — Schwab allows 120
    /// non-order requests a minute per application.
    #[serde(default = "default_upstream_budget")]
    pub upstream: Option<RateConfig>,
    /// Keys tracked per limiter at most (memory bound under a flood from
    /// many addresses).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// IPv6 addresses are limited by this prefix (a host gets a /64).
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFailuresConfig {
    pub rate: RateSpec,
    pub burst: u32,
    #[serde(default = "d5m")]
    pub lockout: Dur,
}

fn default_per_ip() -> Option<RateConfig> {
    rate(100, 1, 200)
}
fn default_auth_failures() -> Option<AuthFailuresConfig> {
    Some(AuthFailuresConfig {
        rate: RateSpec {
            count: 10,
            per: Duration::from_secs(60),
        },
        burst: 10,
        lockout: d5m(),
    })
}
fn default_per_caller() -> Option<RateConfig> {
    rate(20, 1, 40)
}
fn default_groups() -> std::collections::BTreeMap<String, RateConfig> {
    let mut g = std::collections::BTreeMap::new();
    if let Some(r) = rate(2, 1, 10) {
        g.insert("orders".to_owned(), r);
    }
    g
}
fn default_per_account_orders() -> Option<RateConfig> {
    rate(120, 60, 20)
}
fn default_upstream_budget() -> Option<RateConfig> {
    rate(120, 60, 120)
}
fn default_max_keys() -> usize {
    100_000
}
fn default_ipv6_prefix() -> u8 {
    64
}

impl Default for RateLimitsConfig {
    fn default() -> RateLimitsConfig {
        RateLimitsConfig {
            per_ip: default_per_ip(),
            auth_failures: default_auth_failures(),
            per_caller: default_per_caller(),
            groups: default_groups(),
            per_account_orders: default_per_account_orders(),
            upstream: default_upstream_budget(),
            max_keys: default_max_keys(),
            ipv6_prefix: default_ipv6_prefix(),
        }
    }
}

/// A caller's request-signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// The `keyid` the caller puts in `Signature-Input`.
    pub keyid: String,
    pub alg: SigningAlg,
    /// `hmac-sha256`: the shared secret, base64, by secret reference.
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// `ed25519`: the public key, base64 of its 32 bytes or PEM (not a secret).
    #[serde(default)]
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigningAlg {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "ed25519")]
    Ed25519,
}

/// Where the kill switch's state is kept across restarts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillSwitchConfig {
    /// The halt state file (JSON, written atomically). Absent: a halt lasts
    /// until the process ends.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// On engage, cancel every open order on every account in `accounts`
    /// (a call may override with `?cancel_open_orders=true|false`).
    #[serde(default)]
    pub cancel_open_orders: bool,
}

/// The audit trail: chained JSON lines in `dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the `audit-*.jsonl` files (created 0700).
    pub dir: PathBuf,
    /// The chain key: 32+ random bytes, base64, by secret reference.
    pub key: SecretRef,
    /// Also write each record to stdout (a log pipeline ships it).
    #[serde(default)]
    pub stdout: bool,
    /// Start a new file (the chain continues) once the current one is this
    /// big …
    #[serde(default = "default_audit_file_bytes")]
    pub max_file_bytes: u64,
    /// … or this old.
    #[serde(default = "d24h")]
    pub max_file_age: Dur,
    /// Delete files whose newest record is older than this — only after they
    /// pass verification. Absent: keep everything (the default; broker-dealer
    /// records are kept six years under SEC rule 17a-4).
    #[serde(default)]
    pub retention: Option<Dur>,
    /// Signed checkpoints of the chain head (ed25519), so that cutting off
    /// the tail of the trail is detected.
    #[serde(default)]
    pub checkpoint: Option<CheckpointConfig>,
    /// What reads do while the trail cannot be written: `serve` (default:
    /// an outage of the audit disk does not stop market data) or `refuse`.
    /// State-changing requests are always refused.
    #[serde(default)]
    pub reads_when_failing: ReadsWhenFailing,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadsWhenFailing {
    #[default]
    Serve,
    Refuse,
}

/// Signed checkpoints of the audit chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The ed25519 signing key (32-byte seed, base64) by secret reference;
    /// `portcullis audit checkpoint-key` makes one.
    pub key: SecretRef,
    /// How often the chain head is signed (when records were added).
    #[serde(default = "d1m")]
    pub interval: Dur,
}

fn default_audit_file_bytes() -> u64 {
    256 << 20
}

/// Request-signature checks for callers with signing keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignaturesConfig {
    /// How far `created` may be from the proxy's clock, either way.
    #[serde(default = "d5m")]
    pub window: Dur,
    /// Nonces remembered at once (memory bound); when full of live ones,
    /// signed requests are refused rather than a nonce forgotten.
    #[serde(default = "default_max_nonces")]
    pub max_nonces: usize,
    /// The host names (`host[:port]`, lower case, default port omitted)
    /// clients address the proxy by. If set, a signature's `@target-uri`
    /// must name one of them, so a request signed for another proxy or
    /// environment sharing the key is refused.
    #[serde(default)]
    pub authorities: Vec<String>,
}

impl Default for SignaturesConfig {
    fn default() -> Self {
        SignaturesConfig {
            window: d5m(),
            max_nonces: default_max_nonces(),
            authorities: Vec::new(),
        }
    }
}

fn default_max_nonces() -> usize {
    200_000
}

/// Proxy-issued tokens (`POST /v1/oauth/token` on the proxy listener).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    #[serde(default = "d15m")]
    pub access_ttl: Dur,
    /// A refresh token's life; each refresh issues a new one.
    #[serde(default = "d12h")]
    pub refresh_ttl: Dur,
    /// A session ends this long after it started, however often refreshed.
    #[serde(default = "d24h")]
    pub session_max_age: Dur,
    /// A session's MFA lapses this long after the code was given (the
    /// session goes on without it).
    #[serde(default = "d1h")]
    pub mfa_ttl: Dur,
    /// Sessions held at once (memory bound); further grants get 503.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Sessions one caller may hold; starting another ends its oldest.
    #[serde(default = "default_sessions_per_caller")]
    pub sessions_per_caller: usize,
}

impl TokensConfig {
    pub fn limits(&self) -> crate::credentials::sessions::Limits {
        crate::credentials::sessions::Limits {
            access_ttl: self.access_ttl.0,
            refresh_ttl: self.refresh_ttl.0,
            max_age: self.session_max_age.0,
            mfa_ttl: self.mfa_ttl.0,
            max_sessions: self.max_sessions,
            per_caller: self.sessions_per_caller,
        }
    }
}

fn default_sessions_per_caller() -> usize {
    20
}
fn d24h() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}
fn d1h() -> Dur {
    Dur(Duration::from_secs(3600))
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            access_ttl: d15m(),
            refresh_ttl: d12h(),
            session_max_age: d24h(),
            mfa_ttl: d1h(),
            max_sessions: default_max_sessions(),
            sessions_per_caller: default_sessions_per_caller(),
        }
    }
}

fn default_max_sessions() -> usize {
    10_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// The threads that serve requests (docs/configuration.md, `runtime`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// 0: one per CPU core, sharing the work (tokio's multi-thread
    /// scheduler). 1: one thread serves everything (tokio's current-thread
    /// scheduler), the least CPU per request. N: N threads sharing the work.
    #[serde(default)]
    pub worker_threads: usize,
}

/// The most `runtime.worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 256;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `portcullis=debug,hyper=warn`). The
    /// `PORTCULLIS_LOG` environment variable overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Human,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".to_owned()
}

/// A duration written as `500ms`, `10s`, `5m`, `2h` or `7d`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{s}` needs a unit: ms, s, m, h or d"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration like 10s"))?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h, d)")),
        }
        .ok_or_else(|| format!("`{s}` is too large"))?;
        Ok(Dur(Duration::from_millis(ms)))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn d15m() -> Dur {
    Dur(Duration::from_secs(900))
}
fn d12h() -> Dur {
    Dur(Duration::from_secs(12 * 3600))
}
fn d2s() -> Dur {
    Dur(Duration::from_secs(2))
}
fn d1m() -> Dur {
    Dur(Duration::from_secs(60))
}

fn d5m() -> Dur {
    Dur(Duration::from_secs(300))
}
fn d5s() -> Dur {
    Dur(Duration::from_secs(5))
}
fn d10s_some() -> Option<Dur> {
    Some(d10s())
}
fn d10s() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d15s() -> Dur {
    Dur(Duration::from_secs(15))
}
fn d30s() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d90s() -> Dur {
    Dur(Duration::from_secs(90))
}

/// One problem found in a configuration: the dotted key it concerns, a
/// human message, and the line when the YAML parser knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
    pub line: Option<usize>,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// A configuration that could not be accepted; every issue found is listed.
#[derive(Debug)]
pub struct ConfigError {
    pub source_name: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.source_name)?;
        for i in &self.issues {
            write!(f, "\n  - {i}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// How the configuration is being used: the demo may use the demo keys,
/// nothing else may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Demo,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn from_file(path: &std::path::Path, mode: Mode) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            issues: vec![ConfigIssue {
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
                line: None,
            }],
        })?;
        let mut cfg = Config::from_yaml(&text, &name, mode)?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates configuration text.
    pub fn from_yaml(text: &str, source_name: &str, mode: Mode) -> Result<Config, ConfigError> {
        let cfg: Config = yaml::from_str(text).map_err(|issue| ConfigError {
            source_name: source_name.to_owned(),
            issues: vec![issue],
        })?;
        let issues = cfg.validate(mode);
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError {
                source_name: source_name.to_owned(),
                issues,
            })
        }
    }

    /// Static validation: everything that can be checked without reading
    /// secrets or certificate files. Returns every issue, not just the first.
    /// What `environment` demands: non-production keeps away from the live
    /// broker unless told otherwise; production takes no shortcuts.
    fn environment_rules(&self, issue: &mut impl FnMut(String, String)) {
        let live = |url: &str| {
            parse_upstream_origin(url)
                .is_ok_and(|a| a.host().eq_ignore_ascii_case(LIVE_BROKER_HOST))
        };
        if self.environment != Environment::Production && !self.upstream.allow_live_broker {
            let oauth = self.schwab.oauth_base_url.as_deref();
            for (key, url) in [
                ("upstream.base_url", Some(self.upstream.base_url.as_str())),
                ("schwab.oauth_base_url", oauth),
            ] {
                if url.is_some_and(live) {
                    issue(
                        key.into(),
                        format!(
                            "environment `{}` must not use the live Schwab API ({LIVE_BROKER_HOST}); \
                             point it at a simulator, or set upstream.allow_live_broker: true \
                             deliberately",
                            self.environment.as_str()
                        ),
                    );
                }
            }
        }
        if self.environment == Environment::Production {
            for (i, l) in self.listen.iter().enumerate() {
                if l.tls.is_none() {
                    issue(
                        format!("listen[{i}].tls"),
                        "environment `production` requires TLS on every listener".into(),
                    );
                }
            }
            if self.upstream.access_token.is_some() {
                issue(
                    "upstream.access_token".into(),
                    "environment `production` uses schwab.token_store (an encrypted, refreshed \
                     session), not a fixed access token"
                        .into(),
                );
            }
            if self.audit.is_none() {
                issue(
                    "audit".into(),
                    "environment `production` keeps an audit trail: set audit.dir and audit.key"
                        .into(),
                );
            }
            if self.kill_switch.state_file.is_none() {
                issue(
                    "kill_switch.state_file".into(),
                    "environment `production` keeps a halt across restarts: set \
                     kill_switch.state_file"
                        .into(),
                );
            }
            if self.upstream.extra_ca_file.is_some() {
                issue(
                    "upstream.extra_ca_file".into(),
                    "environment `production` trusts the public roots only (extra_ca_file is \
                     for the simulator)"
                        .into(),
                );
            }
        }
    }

    pub fn validate(&self, mode: Mode) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut issue = |key: String, message: String| {
            out.push(ConfigIssue {
                key,
                message,
                line: None,
            })
        };

        if self.listen.is_empty() {
            issue("listen".into(), "at least one listener is required".into());
        }
        if let Some(a) = &self.audit {
            if a.max_file_bytes < 64 * 1024 {
                issue(
                    "audit.max_file_bytes".into(),
                    "at least 65536 (64 KiB)".into(),
                );
            }
            if a.max_file_age.0 < Duration::from_secs(60) {
                issue("audit.max_file_age".into(), "at least 1m".into());
            }
            if a.retention
                .is_some_and(|r| r.0 < Duration::from_secs(86_400))
            {
                issue(
                    "audit.retention".into(),
                    "at least 1d (records kept for regulators are kept for years: 17a-4 asks six)"
                        .into(),
                );
            }
            if let Some(c) = &a.checkpoint
                && !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&c.interval.0)
            {
                issue(
                    "audit.checkpoint.interval".into(),
                    "between 1s and 1d: records after the last checkpoint can be cut off unseen"
                        .into(),
                );
            }
        }
        for (i, l) in self.listen.iter().enumerate() {
            if l.tls.is_none() && !l.address.ip().is_loopback() {
                issue(
                    format!("listen[{i}].address"),
                    format!(
                        "{} is not a loopback address; a plaintext listener is only allowed on \
                         127.0.0.1/::1 (add `tls:` with cert_file and key_file)",
                        l.address
                    ),
                );
            }
        }
        for (i, a) in self.listen.iter().enumerate() {
            if self.listen[..i].iter().any(|b| b.address == a.address) {
                issue(
                    format!("listen[{i}].address"),
                    format!("{} is listed twice", a.address),
                );
            }
            if a.address == self.admin.address && a.address.port() != 0 {
                issue(
                    "admin.address".into(),
                    format!("{} is also a proxy listener", a.address),
                );
            }
        }
        if !self.admin.allow_remote && !self.admin.address.ip().is_loopback() {
            issue(
                "admin.address".into(),
                format!(
                    "{} is not loopback; the admin listener is plain HTTP, set \
                     admin.allow_remote: true to expose it deliberately",
                    self.admin.address
                ),
            );
        }

        if let Err(m) = parse_upstream_origin(&self.upstream.base_url) {
            issue("upstream.base_url".into(), m);
        }
        let u = &self.upstream;
        if u.connect_timeout.0.is_zero() || u.response_header_timeout.0.is_zero() {
            issue(
                "upstream".into(),
                "connect_timeout and response_header_timeout must be above zero".into(),
            );
        }
        if self.runtime.worker_threads > MAX_WORKER_THREADS {
            issue(
                "runtime.worker_threads".into(),
                format!("must be between 0 (one per CPU core) and {MAX_WORKER_THREADS}"),
            );
        }
        if u.keep_alive_interval.is_some_and(|d| d.0.is_zero()) || u.keep_alive_timeout.0.is_zero()
        {
            issue(
                "upstream".into(),
                "keep_alive_interval and keep_alive_timeout must be above zero \
                 (keep_alive_interval: null turns the PINGs off)"
                    .into(),
            );
        }
        if !(1..=16).contains(&u.http2_connections) {
            issue(
                "upstream.http2_connections".into(),
                "must be between 1 and 16".into(),
            );
        }
        match (&u.access_token, &self.schwab.token_store) {
            (Some(_), Some(_)) => issue(
                "upstream.access_token".into(),
                "set either upstream.access_token (a fixed token) or schwab.token_store \
                 (tokens kept and refreshed by the proxy), not both"
                    .into(),
            ),
            (None, None) => issue(
                "schwab.token_store".into(),
                "the proxy needs a Schwab credential: schwab.token_store (see \
                 docs/credentials.md) or upstream.access_token"
                    .into(),
            ),
            _ => {}
        }
        if self.schwab.token_store.is_some() {
            for (key, r) in [
                ("schwab.app_key", &self.schwab.app_key),
                ("schwab.app_secret", &self.schwab.app_secret),
            ] {
                if r.is_none() {
                    issue(key.into(), "required with schwab.token_store".into());
                }
            }
        }
        self.environment_rules(&mut issue);
        let t = &self.tokens;
        if t.access_ttl.0 < Duration::from_secs(30) || t.access_ttl.0 > Duration::from_secs(3600) {
            issue(
                "tokens.access_ttl".into(),
                "must be between 30s and 1h (short-lived by design)".into(),
            );
        }
        if t.refresh_ttl.0 < t.access_ttl.0 || t.refresh_ttl.0 > Duration::from_secs(30 * 86400) {
            issue(
                "tokens.refresh_ttl".into(),
                "must be at least tokens.access_ttl and at most 30d".into(),
            );
        }
        if t.session_max_age.0 < t.refresh_ttl.0
            || t.session_max_age.0 > Duration::from_secs(30 * 86400)
        {
            issue(
                "tokens.session_max_age".into(),
                "must be at least tokens.refresh_ttl and at most 30d".into(),
            );
        }
        if t.mfa_ttl.0 < Duration::from_secs(60) || t.mfa_ttl.0 > t.session_max_age.0 {
            issue(
                "tokens.mfa_ttl".into(),
                "must be between 1m and tokens.session_max_age".into(),
            );
        }
        if !(1..=10_000).contains(&t.sessions_per_caller) {
            issue(
                "tokens.sessions_per_caller".into(),
                "must be between 1 and 10000".into(),
            );
        }
        if !(1..=1_000_000).contains(&t.max_sessions) {
            issue(
                "tokens.max_sessions".into(),
                "must be between 1 and 1000000".into(),
            );
        }
        if self.reload.interval.0 < Duration::from_millis(100)
            || self.reload.interval.0 > Duration::from_secs(3600)
        {
            issue(
                "reload.interval".into(),
                "must be between 100ms and 1h".into(),
            );
        }
        if let Some(url) = &self.schwab.oauth_base_url
            && let Err(m) = parse_upstream_origin(url)
        {
            issue("schwab.oauth_base_url".into(), m);
        }
        if let Some(url) = &self.schwab.callback_url
            && !url.starts_with("https://")
        {
            issue(
                "schwab.callback_url".into(),
                "must be an https:// URL (as registered with the Schwab app)".into(),
            );
        }
        if u.total_timeout < u.response_header_timeout {
            issue(
                "upstream.total_timeout".into(),
                "must be at least upstream.response_header_timeout".into(),
            );
        }

        if self.routes.profile != "schwab" && self.routes.file.is_none() {
            issue(
                "routes.profile".into(),
                format!(
                    "unknown profile `{}` (built-in: schwab); or give routes.file",
                    self.routes.profile
                ),
            );
        }

        let l = &self.limits;
        if !(1..=16 * 1024 * 1024).contains(&l.max_body_bytes) {
            issue(
                "limits.max_body_bytes".into(),
                "must be between 1 and 16777216".into(),
            );
        }
        if !(1024..=64 * 1024).contains(&l.max_header_bytes) {
            issue(
                "limits.max_header_bytes".into(),
                "must be between 1024 and 65536".into(),
            );
        }
        if !(8..=200).contains(&l.max_headers) {
            issue(
                "limits.max_headers".into(),
                "must be between 8 and 200".into(),
            );
        }
        let max10 = Duration::from_secs(10);
        for (key, d, max) in [
            ("limits.header_read_timeout", l.header_read_timeout, max10),
            (
                "limits.body_read_timeout",
                l.body_read_timeout,
                Duration::from_secs(60),
            ),
            (
                "limits.idle_timeout",
                l.idle_timeout,
                Duration::from_secs(30),
            ),
            (
                "limits.tls_handshake_timeout",
                l.tls_handshake_timeout,
                max10,
            ),
        ] {
            if d.0.is_zero() || d.0 > max {
                issue(
                    key.into(),
                    format!("must be above zero and at most {}s", max.as_secs()),
                );
            }
        }
        if !(1..=1_000_000).contains(&l.max_connections) {
            issue(
                "limits.max_connections".into(),
                "must be between 1 and 1000000".into(),
            );
        }
        if !(1..=1_000_000).contains(&l.max_connections_per_ip) {
            issue(
                "limits.max_connections_per_ip".into(),
                "must be between 1 and 1000000".into(),
            );
        }
        if l.h2_max_concurrent_streams == 0 || l.h2_max_concurrent_streams > 1000 {
            issue(
                "limits.h2_max_concurrent_streams".into(),
                "must be between 1 and 1000".into(),
            );
        }

        let mut cert_names: Vec<&str> = Vec::new();
        for (i, c) in self.callers.iter().enumerate() {
            for (j, n) in c.client_cert_names.iter().enumerate() {
                if n.is_empty() || n.len() > 253 || n.chars().any(|ch| ch.is_whitespace()) {
                    issue(
                        format!("callers[{i}].client_cert_names[{j}]"),
                        "must be a DNS name or URI from a certificate's subject alternative names"
                            .into(),
                    );
                }
                if cert_names.contains(&n.as_str()) {
                    issue(
                        format!("callers[{i}].client_cert_names[{j}]"),
                        format!("`{n}` names more than one caller"),
                    );
                }
                cert_names.push(n);
            }
        }
        for (i, c) in self.callers.iter().enumerate() {
            for (j, k) in c.signing_keys.iter().enumerate() {
                let key = format!("callers[{i}].signing_keys[{j}]");
                if k.keyid.is_empty() || k.keyid.len() > 128 || k.keyid.contains(['"', '\\']) {
                    issue(
                        format!("{key}.keyid"),
                        "must be 1-128 characters, no quotes".into(),
                    );
                }
                if c.signing_keys[..j].iter().any(|o| o.keyid == k.keyid) {
                    issue(format!("{key}.keyid"), "listed twice".into());
                }
                match (k.alg, &k.secret, &k.public_key) {
                    (SigningAlg::HmacSha256, Some(_), None) => {}
                    (SigningAlg::Ed25519, None, Some(pk)) => {
                        if let Err(m) = crate::pipeline::signature::VerifyKey::ed25519(pk) {
                            issue(format!("{key}.public_key"), m.into());
                        }
                    }
                    (SigningAlg::HmacSha256, _, _) => issue(
                        key,
                        "hmac-sha256 takes `secret` (a secret reference), not `public_key`".into(),
                    ),
                    (SigningAlg::Ed25519, _, _) => {
                        issue(key, "ed25519 takes `public_key`, not `secret`".into())
                    }
                }
            }
        }
        if !(10..=3600).contains(&self.signatures.window.0.as_secs()) {
            issue(
                "signatures.window".into(),
                "must be between 10s and 1h".into(),
            );
        }
        if !(1000..=10_000_000).contains(&self.signatures.max_nonces) {
            issue(
                "signatures.max_nonces".into(),
                "must be between 1000 and 10000000".into(),
            );
        }
        let demo_hashes = crate::keys::demo_key_hashes();
        let mut seen_hashes: Vec<[u8; 32]> = Vec::new();
        for (i, c) in self.callers.iter().enumerate() {
            if !valid_name(&c.id) {
                issue(
                    format!("callers[{i}].id"),
                    "must be 1-64 characters of letters, digits, `.`, `_`, `-`, `@`".into(),
                );
            }
            if self.callers[..i].iter().any(|o| o.id == c.id) {
                issue(
                    format!("callers[{i}].id"),
                    format!("caller `{}` is defined twice", c.id),
                );
            }
            if c.key_hashes.is_empty() {
                issue(
                    format!("callers[{i}].key_hashes"),
                    "at least one key hash is required".into(),
                );
            }
            for (j, h) in c.key_hashes.iter().enumerate() {
                let key = format!("callers[{i}].key_hashes[{j}]");
                match crate::keys::parse_hash(&h.hash) {
                    None => issue(
                        key,
                        "must be `sha256:` followed by 64 hex digits (from `portcullis key generate`)"
                            .into(),
                    ),
                    Some(parsed) => {
                        if mode != Mode::Demo && demo_hashes.contains(&parsed) {
                            issue(
                                key.clone(),
                                "is the hash of a published demo key; demo keys are refused \
                                 outside `portcullis demo`"
                                    .into(),
                            );
                        }
                        if seen_hashes.contains(&parsed) {
                            issue(key, "the same key hash is listed more than once".into());
                        }
                        seen_hashes.push(parsed);
                    }
                }
            }
        }

        for (i, a) in self.accounts.iter().enumerate() {
            if !valid_name(&a.name) {
                issue(
                    format!("accounts[{i}].name"),
                    "must be 1-64 characters of letters, digits, `.`, `_`, `-`, `@`".into(),
                );
            }
            if self.accounts[..i].iter().any(|o| o.name == a.name) {
                issue(
                    format!("accounts[{i}].name"),
                    format!("account `{}` is defined twice", a.name),
                );
            }
            if !(1..=128).contains(&a.hash.len())
                || !a.hash.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                issue(
                    format!("accounts[{i}].hash"),
                    "must be the account's hashValue (letters and digits) from \
                     /trader/v1/accounts/accountNumbers, not the account number"
                        .into(),
                );
            }
            if self.accounts[..i].iter().any(|o| o.hash == a.hash) {
                issue(
                    format!("accounts[{i}].hash"),
                    "the same account hash is listed twice".into(),
                );
            }
        }
        for (i, c) in self.callers.iter().enumerate() {
            for (j, name) in c.accounts.iter().enumerate() {
                if !self.accounts.iter().any(|a| &a.name == name) {
                    issue(
                        format!("callers[{i}].accounts[{j}]"),
                        format!("no account named `{name}` in `accounts`"),
                    );
                }
            }
        }
        for (key, files) in [
            ("policies.files", &self.policies.files),
            ("policies.shadow_files", &self.policies.shadow_files),
        ] {
            for (i, f) in files.iter().enumerate() {
                let escapes = f.is_absolute()
                    || f.components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)));
                if escapes {
                    issue(
                        format!("{key}[{i}]"),
                        "must be a relative path inside the policy directory, without `..`".into(),
                    );
                }
            }
        }
        if self.policies.shadow_dir.is_none() && !self.policies.shadow_files.is_empty() {
            issue(
                "policies.shadow_files".into(),
                "needs policies.shadow_dir (the files are relative to it)".into(),
            );
        }

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.logging.level) {
            issue("logging.level".into(), format!("not a valid filter: {e}"));
        }
        out
    }
}

/// Checks that `base_url` is an `https://host[:port]` origin and returns it
/// split into (authority, host).
pub fn parse_upstream_origin(base_url: &str) -> Result<http::uri::Authority, String> {
    let uri: http::Uri = base_url
        .parse()
        .map_err(|_| format!("`{base_url}` is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "`{base_url}` must use https (certificate verification is always on)"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{base_url}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not allowed".into());
    }
    match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("/") | Some("") => {}
        Some(_) => {
            return Err(format!(
                "`{base_url}` must be an origin only, without a path"
            ));
        }
    }
    if base_url.ends_with('/') {
        return Err(format!("`{base_url}` must not end with `/`"));
    }
    Ok(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "listen:\n  - address: 127.0.0.1:8080\nupstream:\n  access_token: env:X\n  allow_live_broker: true\n";

    #[test]
    fn minimal_config_is_valid() {
        let c = Config::from_yaml(MIN, "t", Mode::Normal).unwrap();
        assert_eq!(c.limits.max_body_bytes, 65536);
        assert_eq!(c.upstream.base_url, "https://api.schwabapi.com");
        assert_eq!(c.admin.address.port(), 9464);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = format!("{MIN}limits:\n  max_body_byte: 10\n");
        let e = Config::from_yaml(&text, "t", Mode::Normal).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("max_body_byte"), "{msg}");
        assert!(msg.contains("line 7"), "{msg}");
    }

    #[test]
    fn plaintext_non_loopback_is_refused() {
        let text = MIN.replace("127.0.0.1:8080", "0.0.0.0:8080");
        let e = Config::from_yaml(&text, "t", Mode::Normal).unwrap_err();
        assert!(e.to_string().contains("listen[0].address"), "{e}");
    }

    #[test]
    fn inline_secret_is_refused_without_echo() {
        let text = MIN.replace("env:X", "sk_live_abcdef");
        let e = Config::from_yaml(&text, "t", Mode::Normal).unwrap_err();
        let msg = e.to_string();
        // serde_yaml names the enclosing key; the line points at access_token.
        assert!(msg.contains("line 4: upstream"), "{msg}");
        assert!(!msg.contains("sk_live_abcdef"), "{msg}");
    }

    #[test]
    fn demo_key_hash_refused_outside_demo() {
        let h = crate::keys::hash_key_hex("demo-trader-key");
        let text = format!(
            "{MIN}callers:\n  - id: t\n    role: Trader\n    key_hashes: [\"sha256:{h}\"]\n"
        );
        assert!(Config::from_yaml(&text, "t", Mode::Demo).is_ok());
        let e = Config::from_yaml(&text, "t", Mode::Normal).unwrap_err();
        assert!(e.to_string().contains("demo key"), "{e}");
    }

    #[test]
    fn environments_hold_the_configuration_to_their_rules() {
        let live = "listen:\n  - address: 127.0.0.1:8080\nupstream:\n  access_token: env:X\n";
        for env in ["development", "staging"] {
            let e = Config::from_yaml(&format!("{live}environment: {env}\n"), "t", Mode::Normal)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("upstream.base_url") && e.contains("live Schwab API"),
                "{e}"
            );
            let ok = format!("{live}  allow_live_broker: true\nenvironment: {env}\n");
            assert!(Config::from_yaml(&ok, "t", Mode::Normal).is_ok());
        }
        let sim = "upstream:\n  base_url: https://127.0.0.1:8444\n";
        let oauth_live = format!(
            "listen:\n  - address: 127.0.0.1:8080\n{sim}  access_token: env:X\nschwab:\n  oauth_base_url: https://api.schwabapi.com\n"
        );
        let e = Config::from_yaml(&oauth_live, "t", Mode::Normal)
            .unwrap_err()
            .to_string();
        assert!(e.contains("schwab.oauth_base_url"), "{e}");

        let prod = format!(
            "listen:\n  - address: 127.0.0.1:8080\n{sim}  access_token: env:X\n  extra_ca_file: /ca.pem\nenvironment: production\n"
        );
        let e = Config::from_yaml(&prod, "t", Mode::Normal)
            .unwrap_err()
            .to_string();
        for key in [
            "listen[0].tls",
            "upstream.access_token",
            "upstream.extra_ca_file",
            "audit",
            "kill_switch.state_file",
        ] {
            assert!(e.contains(key), "{key}: {e}");
        }
        // Production may use the live API without ceremony.
        let good = "listen:\n  - address: 0.0.0.0:8443\n    tls: { cert_file: /c.pem, key_file: /k.pem }\n\
                    upstream: {}\nschwab:\n  app_key: env:K\n  app_secret: env:S\n  \
                    token_store: { file: /t.json, key: env:SK }\nenvironment: production\n\
                    audit: { dir: /a, key: env:AK }\nkill_switch: { state_file: /h.json }\n";
        assert!(Config::from_yaml(good, "t", Mode::Normal).is_ok());
    }

    #[test]
    fn key_hashes_may_expire() {
        let h = crate::keys::hash_key_hex("some-key");
        let h2 = crate::keys::hash_key_hex("other-key");
        let text = format!(
            "{MIN}callers:\n  - id: t\n    role: Trader\n    key_hashes:\n      - \"sha256:{h}\"\n      - {{ hash: \"sha256:{h2}\", expires: 2027-01-31 }}\n"
        );
        let c = Config::from_yaml(&text, "t", Mode::Normal).unwrap();
        assert_eq!(c.callers[0].key_hashes[0].expires, None);
        assert_eq!(c.callers[0].key_hashes[1].expires, Some(1_801_353_600));
        let text = text.replace("2027-01-31", "2027-01-31T12:00:00+01:00");
        let c = Config::from_yaml(&text, "t", Mode::Normal).unwrap();
        assert_eq!(c.callers[0].key_hashes[1].expires, Some(1_801_393_200));
        let bad = text.replace("2027-01-31T12:00:00+01:00", "next tuesday");
        let e = Config::from_yaml(&bad, "t", Mode::Normal)
            .unwrap_err()
            .to_string();
        assert!(e.contains("key hash") || e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn runtime_worker_threads_default_and_bounds() {
        let c = Config::from_yaml(MIN, "t", Mode::Normal).unwrap();
        assert_eq!(c.runtime.worker_threads, 0);
        let c = Config::from_yaml(
            &format!("{MIN}runtime: {{ worker_threads: 1 }}\n"),
            "t",
            Mode::Normal,
        )
        .unwrap();
        assert_eq!(c.runtime.worker_threads, 1);
        for bad in ["257", "-1", "many"] {
            let text = format!("{MIN}runtime: {{ worker_threads: {bad} }}\n");
            let e = Config::from_yaml(&text, "t", Mode::Normal).unwrap_err();
            assert!(
                e.to_string().contains("runtime.worker_threads"),
                "{bad}: {e}"
            );
        }
        let e = Config::from_yaml(
            &format!("{MIN}runtime: {{ workers: 2 }}\n"),
            "t",
            Mode::Normal,
        )
        .unwrap_err();
        assert!(e.to_string().contains("workers"), "{e}");
    }

    #[test]
    fn http2_connections_bounded() {
        let c = Config::from_yaml(MIN, "t", Mode::Normal).unwrap();
        assert_eq!(c.upstream.http2_connections, 2);
        for bad in ["0", "17"] {
            let text = format!("{MIN}  http2_connections: {bad}\n");
            let e = Config::from_yaml(&text, "t", Mode::Normal).unwrap_err();
            assert!(e.to_string().contains("upstream.http2_connections"), "{e}");
        }
        let text = format!("{MIN}  http2_connections: 4\n");
        let c = Config::from_yaml(&text, "t", Mode::Normal).unwrap();
        assert_eq!(c.upstream.http2_connections, 4);
    }

    #[test]
    fn upstream_keep_alive_defaults_and_bounds() {
        let c = Config::from_yaml(MIN, "t", Mode::Normal).unwrap();
        assert_eq!(
            c.upstream.keep_alive_interval,
            Some(Dur(Duration::from_secs(10)))
        );
        assert_eq!(c.upstream.keep_alive_timeout, Dur(Duration::from_secs(5)));
        for bad in ["keep_alive_interval: 0s", "keep_alive_timeout: 0s"] {
            let text = format!("{MIN}  {bad}\n");
            let e = Config::from_yaml(&text, "t", Mode::Normal).unwrap_err();
            assert!(e.to_string().contains("keep_alive"), "{e}");
        }
        let text = format!("{MIN}  keep_alive_interval: null\n");
        let c = Config::from_yaml(&text, "t", Mode::Normal).unwrap();
        assert_eq!(c.upstream.keep_alive_interval, None);
    }

    #[test]
    fn durations() {
        assert_eq!(
            "500ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert!("10".parse::<Dur>().is_err());
        assert!("10x".parse::<Dur>().is_err());
        assert!("99999999999999999d".parse::<Dur>().is_err());
    }

    #[test]
    fn upstream_origin_rules() {
        assert!(parse_upstream_origin("https://api.schwabapi.com").is_ok());
        assert!(parse_upstream_origin("https://127.0.0.1:8444").is_ok());
        assert!(parse_upstream_origin("http://api.schwabapi.com").is_err());
        assert!(parse_upstream_origin("https://api.schwabapi.com/trader").is_err());
        assert!(parse_upstream_origin("https://api.schwabapi.com/").is_err());
        assert!(parse_upstream_origin("https://u:p@api.schwabapi.com").is_err());
    }
}
