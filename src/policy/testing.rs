//! `portcullis policy test`: YAML test cases for a policy set, in the
//! spirit of `opa test`. Each case names a caller and either an HTTP
//! request (mapped to an action and resource by the same route table and
//! order parser the proxy uses) or an action and resource directly, and
//! the decision it expects. The format is documented in docs/policies.md.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use time::OffsetDateTime;

use super::{Active, DecisionInput, Directory, PolicyBundle, PolicySource, Resource};
use crate::config::{AccountConfig, Environment, Role};
use crate::pipeline::order;
use crate::pipeline::route::{BodyKind, RouteTable};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Policy files, relative to the policy directory.
    policies: Vec<PathBuf>,
    /// Who exists. Absent: one caller per role (`viewer`, `trader`,
    /// `admin`, `superadmin`), each assigned the accounts `main` and `other`.
    #[serde(default)]
    entities: Option<TestEntities>,
    /// Context values for every case unless a case overrides them.
    #[serde(default)]
    defaults: ContextSpec,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestEntities {
    #[serde(default)]
    accounts: Vec<AccountConfig>,
    #[serde(default)]
    callers: Vec<TestCaller>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCaller {
    id: String,
    role: Role,
    #[serde(default)]
    accounts: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextSpec {
    client_ip: Option<IpAddr>,
    /// RFC 3339, e.g. 2026-12-02T15:00:00Z
    time: Option<String>,
    mfa: Option<bool>,
    environment: Option<Environment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    caller: String,
    #[serde(default)]
    request: Option<HttpCase>,
    #[serde(default)]
    action: Option<String>,
    /// `api`, `proxy`, or an account name / hash.
    #[serde(default)]
    resource: Option<String>,
    /// Order JSON for an order action given directly.
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    context: ContextSpec,
    expect: Expect,
    /// The deny reason expected (`not_permitted`, a guard's `@reason` …).
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCase {
    method: String,
    path: String,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// The outcome of one test file.
#[derive(Debug, Default)]
pub struct FileReport {
    pub file: String,
    pub passed: usize,
    /// (case name, what went wrong)
    pub failed: Vec<(String, String)>,
    /// A problem with the file itself (unreadable, bad YAML, invalid policies).
    pub error: Option<String>,
}

impl FileReport {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.failed.is_empty()
    }
}

/// The test files of a policy directory: `DIR/tests/*.yaml`, sorted.
pub fn default_test_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let tests = dir.join("tests");
    let rd = std::fs::read_dir(&tests).map_err(|e| format!("{}: {e}", tests.display()))?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    out.sort();
    Ok(out)
}

/// Runs one test file against the policies in `dir`.
pub fn run_file(path: &Path, dir: &Path, routes: &RouteTable) -> FileReport {
    let mut report = FileReport {
        file: path.display().to_string(),
        ..FileReport::default()
    };
    let parsed: Result<TestFile, String> = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| crate::config::yaml::from_str(&t).map_err(|i| i.to_string()));
    let file = match parsed {
        Ok(f) => f,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    let source = PolicySource::Dir {
        dir: dir.to_owned(),
        files: file.policies.clone(),
    };
    let bundle = match PolicyBundle::load(&source) {
        Ok(b) => b,
        Err(issues) => {
            let list: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
            report.error = Some(format!(
                "the policies do not load:\n    {}",
                list.join("\n    ")
            ));
            return report;
        }
    };
    let (directory, accounts) = directory_for(file.entities.as_ref());
    let active = match Active::new(bundle, &directory) {
        Ok(a) => a,
        Err(issues) => {
            report.error = Some(
                issues
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            return report;
        }
    };
    for case in &file.cases {
        match run_case(case, &file.defaults, &active, routes, &accounts) {
            Ok(()) => report.passed += 1,
            Err(why) => report.failed.push((case.name.clone(), why)),
        }
    }
    report
}

/// (id, role, account names)
type CallerSpec = (String, Role, Vec<String>);

/// The entities a file declares (or the default four callers), and account
/// name → hash for resolving `resource:` and `{name}` in paths.
fn directory_for(e: Option<&TestEntities>) -> (Directory, BTreeMap<String, String>) {
    let default_accounts = || {
        vec![
            AccountConfig {
                name: "main".into(),
                hash: "MAINHASH".into(),
                environment: Environment::Production,
            },
            AccountConfig {
                name: "other".into(),
                hash: "OTHERHASH".into(),
                environment: Environment::Production,
            },
        ]
    };
    let (accounts, callers): (Vec<AccountConfig>, Vec<CallerSpec>) = match e {
        Some(e) => (
            e.accounts.clone(),
            e.callers
                .iter()
                .map(|c| (c.id.clone(), c.role, c.accounts.clone()))
                .collect(),
        ),
        None => (
            default_accounts(),
            [
                ("viewer", Role::Viewer),
                ("trader", Role::Trader),
                ("admin", Role::Admin),
                ("superadmin", Role::SuperAdmin),
            ]
            .iter()
            .map(|(id, r)| ((*id).to_owned(), *r, vec!["main".to_owned()]))
            .collect(),
        ),
    };
    let names: BTreeMap<String, String> = accounts
        .iter()
        .map(|a| (a.name.clone(), a.hash.clone()))
        .collect();
    let directory = Directory::new(
        callers
            .into_iter()
            .map(|(id, role, accts)| {
                let hashes = accts
                    .iter()
                    .map(|n| names.get(n).cloned().unwrap_or_else(|| n.clone()))
                    .collect();
                (id, role, hashes)
            })
            .collect(),
        accounts
            .iter()
            .map(|a| (a.hash.clone(), a.name.clone(), a.environment))
            .collect(),
    );
    (directory, names)
}

fn run_case(
    case: &Case,
    defaults: &ContextSpec,
    active: &Active,
    routes: &RouteTable,
    accounts: &BTreeMap<String, String>,
) -> Result<(), String> {
    let ctx = ContextSpec {
        client_ip: case.context.client_ip.or(defaults.client_ip),
        time: case.context.time.clone().or_else(|| defaults.time.clone()),
        mfa: case.context.mfa.or(defaults.mfa),
        environment: case.context.environment.or(defaults.environment),
    };
    let time = match &ctx.time {
        Some(t) => OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("context.time `{t}`: {e}"))?,
        None => OffsetDateTime::now_utc(),
    };
    let resolve = |s: &str| accounts.get(s).cloned().unwrap_or_else(|| s.to_owned());

    let (action, resource_hash, order_body): (String, Option<String>, Option<String>) =
        match (&case.request, &case.action) {
            (Some(req), None) => {
                // `{main}` in a path stands for the account named main.
                let mut path = req.path.clone();
                for (name, hash) in accounts {
                    path = path.replace(&format!("{{{name}}}"), hash);
                }
                let (p, q) = path.split_once('?').unwrap_or((&path, ""));
                if !q.is_empty() {
                    crate::pipeline::route::check_query(q).map_err(|e| {
                        format!("the proxy refuses this query before policy: {e:?}")
                    })?;
                }
                let method = http::Method::from_bytes(req.method.as_bytes())
                    .map_err(|_| format!("bad method `{}`", req.method))?;
                let m = routes
                    .match_request(&method, p)
                    .map_err(|e| format!("the proxy refuses this request before policy: {e:?}"))?;
                let route = routes.get(&m);
                let hash = routes.account(&m).map(str::to_owned);
                let body =
                    (route.body == BodyKind::Json).then(|| req.body.clone().unwrap_or_default());
                (route.action.to_string(), hash, body)
            }
            (None, Some(action)) => {
                let hash = match case.resource.as_deref() {
                    None | Some("api") | Some("proxy") => None,
                    Some(name) => Some(resolve(name)),
                };
                (action.clone(), hash, case.order.clone())
            }
            _ => return Err("give exactly one of `request` or `action`".into()),
        };
    let parsed = match &order_body {
        Some(body) => Some(
            order::parse_order(Some(b"application/json"), body.as_bytes()).map_err(|e| {
                format!(
                    "the proxy refuses this order before policy: {} ({})",
                    e.message(),
                    e.code()
                )
            })?,
        ),
        None => None,
    };
    let resource = match (&resource_hash, case.resource.as_deref()) {
        (Some(h), _) => Resource::Account(h),
        (None, Some("proxy")) => Resource::Proxy,
        _ => Resource::Api,
    };
    let input = DecisionInput {
        caller: &case.caller,
        action: &action,
        resource,
        client_ip: ctx.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        time,
        mfa: ctx.mfa.unwrap_or(false),
        environment: ctx.environment.unwrap_or_default().as_str(),
        session_id: "policy-test",
        order: parsed.as_ref(),
    };
    let d = active.decide(&input);
    let got = if d.allowed {
        Expect::Allow
    } else {
        Expect::Deny
    };
    let describe = || {
        format!(
            "{}{} [{}]",
            if d.allowed { "allow" } else { "deny" },
            d.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            d.policies.join(", ")
        )
    };
    if got != case.expect {
        return Err(format!(
            "expected {}, got {}",
            if case.expect == Expect::Allow {
                "allow"
            } else {
                "deny"
            },
            describe()
        ));
    }
    if let Some(want) = &case.reason
        && d.reason.as_deref() != Some(want.as_str())
    {
        return Err(format!("expected reason {want}, got {}", describe()));
    }
    Ok(())
}
