//! Command line: subcommands, exit codes, signal handling.
//!
//! Exit codes (sysexits): 0 success, 64 invalid configuration or usage,
//! 69 an address could not be bound, 70 internal error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Dur, Mode};
use crate::demo::{self, DemoOptions};
use crate::server::{self, ServeOptions, ShutdownTrigger};
use crate::sim::{Sim, SimOptions};
use crate::{Listeners, StartError, telemetry};

pub const EXIT_USAGE: u8 = 64;

const EXAMPLES: &str = "\
Examples:
  portcullis demo                              # simulator + proxy, no setup
  portcullis run --config /etc/portcullis/portcullis.yaml
  portcullis check-config config/example.yaml  # exit 0 if valid, 64 if not
  portcullis check-config --load config/example.yaml   # also read secrets and certificates
  portcullis key generate                      # a new caller key and its hash
  portcullis token new-key                     # a key for the encrypted token store
  portcullis token init --config portcullis.yaml   # log in to Schwab once, store the tokens
  portcullis token status --config portcullis.yaml # when the tokens expire
  portcullis policy validate policies/         # exit 0 if every policy validates, 1 if not
  portcullis policy test                       # run policies/tests/*.yaml
  PORTCULLIS_KEY=... portcullis halt on --reason \"bot loop\"   # stop all trading now
  portcullis halt status                       # is trading halted, by whom, why
  portcullis sim --listen 127.0.0.1:8444       # the Schwab simulator alone

Documentation: README.md and docs/ in the source tree.";

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "An authorization proxy for the Charles Schwab Trader and Market Data APIs",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy with a configuration file.
    Run {
        /// Path to the YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the demo: the Schwab simulator and the proxy, with generated
    /// certificates under .portcullis-demo/ and published demo keys.
    Demo(DemoArgs),
    /// Run the Schwab API simulator alone.
    Sim(SimArgs),
    /// Validate a configuration file without starting anything.
    CheckConfig {
        /// Path to the YAML configuration.
        file: PathBuf,
        /// Also read every secret, certificate, CA and route file it references.
        #[arg(long)]
        load: bool,
    },
    /// Manage caller API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// The Schwab OAuth tokens the proxy keeps (encrypted store).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The kill switch, through the admin API: `status`, `on` (stop every
    /// order action at once), `off` (release; needs a session with MFA).
    /// Exit 0 done, 1 refused (the message says why), 64 usage, 69 the
    /// proxy could not be reached.
    Halt(HaltCli),
    /// Check Cedar policies against the schema.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Parse DIR/schema.cedarschema and every *.cedar file under DIR
    /// (subdirectories included) as one set, and validate it in strict mode.
    /// Prints each problem as FILE:LINE: MESSAGE. Exit 0 valid, 1 invalid.
    Validate {
        /// Policy directory.
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// Run YAML policy test cases (default: DIR/tests/*.yaml). Each case is
    /// a caller plus an HTTP request or an action, and the decision it
    /// expects. Exit 0 when every case passes, 1 otherwise.
    Test {
        /// Test files; none: every *.yaml in DIR/tests.
        files: Vec<PathBuf>,
        /// Policy directory the files' `policies:` are relative to.
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
        /// Print every case, not only failures.
        #[arg(long, short)]
        verbose: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the chain of audit files (or directories of them): reports OK
    /// with counts, or the first bad record and the kind of damage (edited,
    /// deleted, inserted, reordered). Exit 0 intact, 1 damaged, 2 intact but
    /// a final line was cut short by a crash, 64 usage or key problems.
    Verify {
        /// The chain key as a secret reference (env:NAME or file:PATH) …
        #[arg(long, conflicts_with = "config")]
        key: Option<String>,
        /// … or the configuration whose audit.key to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The signed checkpoints to hold the chain to (default: the
        /// checkpoints.jsonl of the first directory given, if any).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// The checkpoint public key (base64, or file:PATH): the
        /// checkpoints' signatures are checked too.
        #[arg(long)]
        public_key: Option<String>,
        /// Audit files or directories, oldest first.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Check a checkpoints file with the public key alone (no chain key
    /// needed: for an auditor): every signature genuine, sequence numbers
    /// never going back. Exit 0 good, 1 forged or out of order, 2 a torn
    /// final line, 64 usage.
    VerifyCheckpoints {
        /// The checkpoint public key (base64, or file:PATH).
        #[arg(long)]
        public_key: String,
        /// checkpoints.jsonl
        file: PathBuf,
    },
    /// Decide the recorded requests again under a candidate policy set and
    /// report which decisions would change (counts by action, and the
    /// requests). Exit 0 none would change, 1 some would, 64 usage or an
    /// invalid policy set.
    Replay {
        /// The proxy's configuration: callers, roles, accounts, environment
        /// and which policy files (`policies.files`) make the set.
        #[arg(long, short)]
        config: PathBuf,
        /// The candidate policy directory (schema.cedarschema and the files).
        #[arg(long)]
        policies: PathBuf,
        /// How many changed requests to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The whole report as JSON.
        #[arg(long)]
        json: bool,
        /// Audit files or directories, oldest first.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print a new random audit chain key (base64, 32 bytes) for audit.key.
    NewKey,
    /// Print a new ed25519 checkpoint signing key (for
    /// audit.checkpoint.key) and its public key (for verifiers).
    CheckpointKey,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Log in to Schwab once (OAuth authorization code) and store the tokens,
    /// encrypted, in schwab.token_store. Prints the address to open; then
    /// paste the address the browser was sent to, or use --listen. Exit 0
    /// stored, 1 login not completed, 64 configuration, 69 Schwab refused or
    /// unreachable.
    Init {
        #[arg(long, short)]
        config: PathBuf,
        /// Catch the browser's redirect on schwab.callback_url's address with
        /// a one-shot HTTPS listener (self-signed; the browser warns once)
        /// instead of reading the pasted address from stdin.
        #[arg(long)]
        listen: bool,
    },
    /// Print when the access and refresh tokens expire (never the tokens).
    /// Exit 0 while the refresh token is valid, 1 when a login is needed,
    /// 65 when the store cannot be read (wrong key, edited file).
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Re-encrypt the store under a new key (key rotation), given as a
    /// secret reference: --new-key env:NAME or --new-key file:PATH.
    Rekey {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        new_key: String,
    },
    /// Print a new random store key (base64, 32 bytes) for schwab.token_store.key.
    NewKey,
}

#[derive(Args, Debug)]
pub struct HaltCli {
    #[command(subcommand)]
    command: HaltCommand,
    /// The proxy's configuration: the admin and proxy addresses come from it.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The admin listener's URL (default: from --config, else http://127.0.0.1:9464).
    #[arg(long, global = true)]
    admin: Option<String>,
    /// The proxy's URL, for the MFA sign-in of `off` (default: from --config,
    /// else https://127.0.0.1:8443).
    #[arg(long, global = true)]
    proxy: Option<String>,
    /// A CA certificate (PEM) to trust for the proxy's TLS certificate.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Your caller key, as a secret reference: env:NAME or file:PATH.
    #[arg(long, global = true, default_value = "env:PORTCULLIS_KEY")]
    key: String,
    /// Print the proxy's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum HaltCommand {
    /// Whether trading is halted, by whom, when and why.
    Status,
    /// Halt trading now: every place, replace and cancel is refused (any Admin).
    On {
        /// Why (kept in the halt state and the audit trail).
        #[arg(long)]
        reason: Option<String>,
        /// Also cancel every open order on every configured account.
        #[arg(long, conflicts_with = "keep_open_orders")]
        cancel_open_orders: bool,
        /// Do not cancel open orders, whatever kill_switch.cancel_open_orders says.
        #[arg(long)]
        keep_open_orders: bool,
    },
    /// Release the halt (the shipped policies: a Super Admin with MFA).
    Off {
        /// Your caller id (the token endpoint's client_id).
        #[arg(long)]
        client_id: String,
        /// The current one-time code from your authenticator.
        #[arg(long)]
        otp: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Print a new random caller key and the hash to put in the configuration.
    Generate,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory for the generated CA, certificates and token.
    #[arg(long, default_value = ".portcullis-demo")]
    dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8443")]
    proxy_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8444")]
    sim_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin_addr: SocketAddr,
}

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Address to listen on (HTTPS).
    #[arg(long, default_value = "127.0.0.1:8444")]
    listen: SocketAddr,
    /// Directory for the generated CA (ca.pem), certificate and a fresh access token.
    #[arg(long, default_value = ".portcullis-sim")]
    dir: PathBuf,
    /// OAuth app key accepted at /v1/oauth/token (HTTP Basic).
    #[arg(long, default_value = "sim-app-key-0123456789abcdef01234567")]
    app_key: String,
    /// OAuth app secret.
    #[arg(long, default_value = "sim-app-secret-0123456789")]
    app_secret: String,
    /// Access token lifetime.
    #[arg(long, default_value = "30m")]
    access_token_ttl: Dur,
    /// Refresh token lifetime.
    #[arg(long, default_value = "7d")]
    refresh_token_ttl: Dur,
    /// API requests allowed per minute before 429 (off when absent).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Latency added to every API response, e.g. 50ms.
    #[arg(long, default_value = "0ms")]
    latency: Dur,
    /// Answer every Nth API request with 500.
    #[arg(long)]
    fail_every: Option<u64>,
    /// Reset the connection of every Nth API request.
    #[arg(long)]
    reset_every: Option<u64>,
    /// Runtime threads, as `runtime.worker_threads` for the proxy: 0 is one
    /// worker per core, 1 serves everything from one thread.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    worker_threads: u16,
    /// Offer only HTTP/1.1 by ALPN, as a broker without HTTP/2 would.
    #[arg(long)]
    http1_only: bool,
}

/// Entry point for `main`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Key {
            command: KeyCommand::Generate,
        } => key_generate(),
        Command::Token { command } => token_command(command),
        Command::Audit { command } => audit_command(command),
        Command::Halt(h) => halt_command(h),
        Command::CheckConfig { file, load } => match crate::check_config(&file, load) {
            Ok(cfg) => {
                println!(
                    "{}: OK ({} listener(s), {} caller(s){})",
                    file.display(),
                    cfg.listen.len(),
                    cfg.callers.len(),
                    if load {
                        ", secrets and files loaded"
                    } else {
                        ""
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Policy {
            command: PolicyCommand::Validate { dir },
        } => policy_validate(&dir),
        Command::Policy {
            command:
                PolicyCommand::Test {
                    files,
                    dir,
                    verbose,
                },
        } => policy_test(&dir, files, verbose),
        Command::Run { config } => {
            let cfg = match Config::from_file(&config, Mode::Normal) {
                Ok(c) => c,
                Err(e) => return fail(&StartError::Config(e)),
            };
            let _log = telemetry::init(cfg.logging.format, &cfg.logging.level);
            runtime_with(cfg.runtime.worker_threads, async move {
                let rt = tokio::runtime::Handle::current();
                tracing::info!(
                    worker_threads = rt.metrics().num_workers(),
                    scheduler = match rt.runtime_flavor() {
                        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
                        _ => "multi_thread",
                    },
                    "runtime"
                );
                let listeners = Listeners::bind(&cfg).await?;
                let (trigger, shutdown) = server::shutdown_channel();
                tokio::spawn(on_signals(trigger));
                crate::run(cfg, listeners, shutdown).await
            })
        }
        Command::Demo(args) => {
            let _log = telemetry::init(crate::config::LogFormat::Human, "info");
            let opts = DemoOptions {
                dir: args.dir,
                proxy: args.proxy_addr,
                sim: args.sim_addr,
                admin: args.admin_addr,
            };
            runtime(async move {
                let (trigger, shutdown) = server::shutdown_channel();
                let (handle, task) = demo::start(&opts, shutdown).await?;
                {
                    // Best effort: a reader that went away must not stop the demo.
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    let banner = demo::banner(&handle, &opts.dir);
                    let _ = writeln!(out, "{banner}").and_then(|()| out.flush());
                }
                tokio::spawn(on_signals(trigger));
                task.await
                    .map_err(|e| StartError::Internal(e.to_string()))?
            })
        }
        Command::Sim(args) => {
            let _log = telemetry::init(crate::config::LogFormat::Human, "info");
            runtime_with(usize::from(args.worker_threads), run_sim(args))
        }
    }
}

fn audit_command(command: AuditCommand) -> ExitCode {
    use crate::audit::verify;
    match command {
        AuditCommand::NewKey => match crate::credentials::store::StoreKey::generate() {
            Ok(k) => {
                println!("{}", secrecy::ExposeSecret::expose_secret(&k));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&StartError::Internal(e.to_string())),
        },
        AuditCommand::Replay {
            config,
            policies,
            limit,
            json,
            paths,
        } => audit_replay(&config, policies, limit, json, &paths),
        AuditCommand::CheckpointKey => match crate::audit::checkpoint::generate() {
            Ok((seed, public)) => {
                println!(
                    "private (audit.checkpoint.key, keep secret): {}",
                    secrecy::ExposeSecret::expose_secret(&seed)
                );
                println!("public (give to verifiers): {public}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&StartError::Internal(e)),
        },
        AuditCommand::VerifyCheckpoints { public_key, file } => {
            let verifier = match public_key_arg(&public_key) {
                Ok(v) => v,
                Err(m) => {
                    eprintln!("portcullis: {m}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            match verify::verify_checkpoints(&file, &verifier) {
                Ok(r) => {
                    if r.forged.is_empty() && r.out_of_order.is_empty() {
                        println!(
                            "OK: {} checkpoint(s) signed by this key, the newest at seq {}",
                            r.count,
                            r.last_seq.map_or("-".to_owned(), |s| s.to_string())
                        );
                    } else {
                        println!(
                            "DAMAGED: {} line(s) not signed by this key {:?}, {} out of order {:?}",
                            r.forged.len(),
                            r.forged,
                            r.out_of_order.len(),
                            r.out_of_order
                        );
                    }
                    if r.torn {
                        println!("note: the final line is torn (a crash while writing)");
                    }
                    ExitCode::from(r.exit_code())
                }
                Err(m) => {
                    eprintln!("portcullis: {m}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
        AuditCommand::Verify {
            key,
            config,
            checkpoints,
            public_key,
            paths,
        } => {
            let reference = match (key, config) {
                (Some(k), None) => k.parse::<crate::config::secret::SecretRef>(),
                (None, Some(c)) => match Config::from_file(&c, Mode::Normal) {
                    Ok(cfg) => match cfg.audit {
                        Some(a) => Ok(a.key),
                        None => Err(format!("{}: no audit section", c.display())),
                    },
                    Err(e) => Err(e.to_string()),
                },
                _ => Err("give --key REF or --config FILE".into()),
            };
            let key = reference.and_then(|r| {
                let s = crate::config::secret::resolve(&r).map_err(|e| e.to_string())?;
                crate::audit::ChainKey::from_secret(&s)
            });
            let key = match key {
                Ok(k) => k,
                Err(m) => {
                    eprintln!("portcullis: {m}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            // The checkpoints: all of them with a public key (each must be
            // genuine), else taken as found.
            let cp_file = checkpoints.or_else(|| crate::audit::checkpoint::beside(&paths));
            let cps = match (&cp_file, &public_key) {
                (None, Some(_)) => Err(
                    "--public-key: no checkpoints file found (give --checkpoints FILE)".to_owned(),
                ),
                (None, None) => Ok(None),
                (Some(f), pk) => crate::audit::checkpoint::load(f).and_then(|l| {
                    if let Some(pk) = pk {
                        let v = public_key_arg(pk)?;
                        if let Some(bad) = l.checkpoints.iter().position(|c| !v.check(c)) {
                            return Err(format!(
                                "{}: checkpoint {} is not signed by this public key",
                                f.display(),
                                bad + 1
                            ));
                        }
                    }
                    Ok(Some(l.checkpoints))
                }),
            };
            let cps = match cps {
                Ok(c) => c,
                Err(m) => {
                    // A forged checkpoint is damage, not a usage error.
                    eprintln!("portcullis: {m}");
                    return ExitCode::from(if m.contains("not signed") {
                        verify::EXIT_DAMAGED
                    } else {
                        EXIT_USAGE
                    });
                }
            };
            let report = verify::expand(&paths)
                .and_then(|files| verify::verify(&files, &key, cps.as_deref()));
            match report {
                Ok(r) => {
                    println!("{}", verify::describe(&r));
                    ExitCode::from(r.exit_code())
                }
                Err(m) => {
                    eprintln!("portcullis: {m}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
    }
}

fn audit_replay(
    config: &std::path::Path,
    policies: PathBuf,
    limit: usize,
    json: bool,
    paths: &[PathBuf],
) -> ExitCode {
    use crate::audit::replay;
    let usage = |m: String| {
        eprintln!("portcullis: {m}");
        ExitCode::from(EXIT_USAGE)
    };
    // Replay serves nothing, so the demo's published keys may be in the
    // configuration (config/demo.yaml works as it is).
    let cfg = match Config::from_file(config, Mode::Demo) {
        Ok(c) => c,
        Err(e) => return usage(e.to_string()),
    };
    let source = crate::policy::PolicySource::Dir {
        dir: policies.clone(),
        files: cfg.policies.files.clone(),
    };
    let engine =
        match crate::policy::Engine::load(source, crate::policy::Directory::from_config(&cfg)) {
            Ok(e) => e,
            Err(issues) => {
                for i in &issues {
                    eprintln!("{}:{}: {}", i.file, i.line.unwrap_or(0), i.message);
                }
                return usage(format!(
                    "{}: the candidate policy set is not valid",
                    policies.display()
                ));
            }
        };
    let report = crate::audit::verify::expand(paths).and_then(|files| {
        if files.is_empty() {
            return Err("no audit files (audit-*.jsonl) to replay".into());
        }
        replay::replay(&cfg, &engine, &files)
    });
    match report {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print!(
                    "{}",
                    replay::describe(&r, &policies.display().to_string(), limit)
                );
            }
            ExitCode::from(r.exit_code())
        }
        Err(m) => usage(m),
    }
}

/// A checkpoint public key given as base64 or `file:PATH`.
fn public_key_arg(arg: &str) -> Result<crate::audit::checkpoint::Verifier, String> {
    let text = match arg.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
        None => arg.to_owned(),
    };
    crate::audit::checkpoint::Verifier::from_base64(&text).map_err(|e| format!("--public-key: {e}"))
}

fn token_command(command: TokenCommand) -> ExitCode {
    use crate::credentials::commands::{self as tc, CallbackSource};
    let mut out = std::io::stdout();
    let result = match command {
        TokenCommand::Init { config, listen } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&StartError::Internal(format!("tokio runtime: {e}"))),
            };
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            let source = if listen {
                CallbackSource::Listen
            } else {
                CallbackSource::Paste(&mut input)
            };
            rt.block_on(tc::init(&config, source, &mut out))
        }
        TokenCommand::Status { config } => tc::status(&config, &mut out),
        TokenCommand::Rekey { config, new_key } => tc::rekey(&config, &new_key, &mut out),
        TokenCommand::NewKey => tc::new_key(&mut out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(tc::Failure(code, message)) => {
            eprintln!("portcullis: {message}");
            ExitCode::from(code)
        }
    }
}

fn halt_command(h: HaltCli) -> ExitCode {
    use crate::admin::client::{self, HaltAction, HaltArgs};
    let action = match h.command {
        HaltCommand::Status => HaltAction::Status,
        HaltCommand::On {
            reason,
            cancel_open_orders,
            keep_open_orders,
        } => HaltAction::On {
            reason,
            cancel_open_orders: match (cancel_open_orders, keep_open_orders) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        },
        HaltCommand::Off { client_id, otp } => HaltAction::Off { client_id, otp },
    };
    let args = HaltArgs {
        action,
        config: h.config,
        admin: h.admin,
        proxy: h.proxy,
        ca_file: h.ca_file,
        key: h.key,
        json: h.json,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&StartError::Internal(format!("tokio runtime: {e}"))),
    };
    let mut out = std::io::stdout();
    match rt.block_on(client::run(args, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(crate::credentials::commands::Failure(code, message)) => {
            eprintln!("portcullis: {message}");
            ExitCode::from(code)
        }
    }
}

fn fail(e: &StartError) -> ExitCode {
    eprintln!("portcullis: {e}");
    ExitCode::from(e.exit_code())
}

fn runtime<F>(fut: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), StartError>>,
{
    runtime_with(0, fut)
}

/// The tokio runtime for `worker_threads` (`runtime.worker_threads`): 1 is
/// the current-thread scheduler, where one thread does everything; 0 is the
/// multi-thread scheduler with one worker per core; N is N workers.
pub fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    b.enable_all().build()
}

fn runtime_with<F>(worker_threads: usize, fut: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), StartError>>,
{
    let rt = match build_runtime(worker_threads) {
        Ok(rt) => rt,
        Err(e) => return fail(&StartError::Internal(format!("tokio runtime: {e}"))),
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Exit code of `policy validate` (and later `policy test`) when the
/// policies are wrong.
pub const EXIT_POLICY_INVALID: u8 = 1;

fn policy_validate(dir: &std::path::Path) -> ExitCode {
    let files = match crate::policy::source::cedar_files_recursive(dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            return ExitCode::from(EXIT_POLICY_INVALID);
        }
    };
    let source = crate::policy::PolicySource::Dir {
        dir: dir.to_owned(),
        files: files.clone(),
    };
    match crate::policy::PolicyBundle::load(&source) {
        Ok(bundle) => {
            for w in &bundle.warnings {
                eprintln!("warning: {}", with_dir(dir, w));
            }
            println!(
                "{}: OK (schema + {} policies in {} files, {})",
                dir.display(),
                bundle.policy_count(),
                files.len(),
                bundle.hash
            );
            ExitCode::SUCCESS
        }
        Err(issues) => {
            for i in &issues {
                eprintln!("{}", with_dir(dir, i));
            }
            eprintln!(
                "{}: {} problem(s); nothing is valid until all are fixed",
                dir.display(),
                issues.len()
            );
            ExitCode::from(EXIT_POLICY_INVALID)
        }
    }
}

fn policy_test(dir: &std::path::Path, files: Vec<PathBuf>, verbose: bool) -> ExitCode {
    use crate::policy::testing;
    let files = if files.is_empty() {
        match testing::default_test_files(dir) {
            Ok(f) if !f.is_empty() => f,
            Ok(_) => {
                eprintln!("{}/tests: no *.yaml test files", dir.display());
                return ExitCode::from(EXIT_POLICY_INVALID);
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_POLICY_INVALID);
            }
        }
    } else {
        files
    };
    let routes = match crate::pipeline::route::RouteTable::schwab() {
        Ok(r) => r,
        Err(_) => return fail(&StartError::Internal("built-in route table".into())),
    };
    let (mut passed, mut failed, mut broken) = (0, 0, 0);
    for f in &files {
        let r = testing::run_file(f, dir, &routes);
        passed += r.passed;
        failed += r.failed.len();
        if let Some(e) = &r.error {
            broken += 1;
            println!("ERROR {}: {e}", r.file);
            continue;
        }
        let status = if r.ok() { "PASS" } else { "FAIL" };
        println!(
            "{status}  {} ({} passed, {} failed)",
            r.file,
            r.passed,
            r.failed.len()
        );
        for (name, why) in &r.failed {
            println!("  FAIL {name}: {why}");
        }
        if verbose && r.failed.is_empty() {
            println!("  all {} cases passed", r.passed);
        }
    }
    println!("{passed} passed, {failed} failed, {broken} file(s) with errors");
    if failed == 0 && broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_POLICY_INVALID)
    }
}

/// An issue with its file shown as a path under `dir` (clickable in editors).
fn with_dir(dir: &std::path::Path, i: &crate::policy::PolicyIssue) -> String {
    let mut i = i.clone();
    let p = dir.join(&i.file);
    if p.exists() {
        i.file = p.display().to_string();
    }
    i.to_string()
}

fn key_generate() -> ExitCode {
    match crate::keys::generate() {
        Ok((key, hash)) => {
            println!("key:  {key}");
            println!("hash: {hash}");
            eprintln!(
                "Give the key to the caller (it goes where a Schwab client keeps its access token); \
                 put only the hash in the configuration under callers[].key_hashes."
            );
            ExitCode::SUCCESS
        }
        Err(_) => fail(&StartError::Internal(
            "the system random generator failed".into(),
        )),
    }
}

/// First SIGTERM/Ctrl-C: graceful shutdown (drain in-flight requests).
/// Second: exit at once.
async fn on_signals(trigger: ShutdownTrigger) {
    wait_signal().await;
    tracing::info!("shutting down: draining in-flight requests (signal again to exit now)");
    trigger.trigger();
    wait_signal().await;
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run_sim(args: SimArgs) -> Result<(), StartError> {
    let ca = demo::prepare_dir(&args.dir)?;
    let tls = demo::write_pki(&args.dir, &ca, "sim", crate::certs::SIM_NAMES)?;
    let listener = crate::bind_addr(args.listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(e.to_string()))?;
    let sim = Sim::new(SimOptions {
        app_key: args.app_key.clone(),
        app_secret: args.app_secret,
        access_token_ttl: args.access_token_ttl.0,
        refresh_token_ttl: args.refresh_token_ttl.0,
        rate_limit_per_minute: args.rate_limit,
        latency: args.latency.0,
        fail_every: args.fail_every,
        reset_every: args.reset_every,
        http1_only: args.http1_only,
        streamer_url: format!("wss://{addr}/ws"),
        ..SimOptions::default()
    });
    let token = sim.issue_access_token(args.access_token_ttl.0.max(Duration::from_secs(1)));
    let token_path = args.dir.join("access-token");
    demo::write_private(&token_path, token.as_bytes())
        .map_err(|e| StartError::Load(format!("{}: {e}", token_path.display())))?;
    // A reader that went away (`portcullis sim | head -1`) must not stop
    // the simulator: the banner is best effort.
    let banner = format!(
        "Schwab simulator on https://{addr}\n  CA certificate: {}\n  app key: {}\n  \
         an access token (valid {}s) is in {}\n  journal: GET/DELETE https://{addr}/__sim/journal\n",
        args.dir.join("ca.pem").display(),
        args.app_key,
        args.access_token_ttl.0.as_secs(),
        token_path.display()
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    }
    let (trigger, shutdown) = server::shutdown_channel();
    tokio::spawn(on_signals(trigger));
    let opts = ServeOptions {
        kind: "sim",
        limits: sim
            .options()
            .listener_limits(crate::config::Limits::default()),
        metrics: None,
        per_ip_exempt: Vec::new(),
    };
    server::serve(
        listener,
        Some(tokio_rustls::TlsAcceptor::from(
            sim.options().listener_tls(tls),
        )),
        sim.handler(),
        opts,
        shutdown,
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn worker_threads_choose_the_scheduler() {
        let one = super::build_runtime(1).unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(one.metrics().num_workers(), 1);
        let three = super::build_runtime(3).unwrap();
        assert_eq!(three.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(three.metrics().num_workers(), 3);
        let per_core = super::build_runtime(0).unwrap();
        assert_eq!(
            per_core.handle().runtime_flavor(),
            RuntimeFlavor::MultiThread
        );
        // Timers and I/O work on the single thread.
        one.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let (a, b) = tokio::join!(l.accept(), tokio::net::TcpStream::connect(addr));
            assert!(a.is_ok() && b.is_ok());
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        });
    }
}
