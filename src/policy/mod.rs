//! Cedar authorization: load and validate a policy set, build the entities
//! from the configuration, decide one request, swap in a new set on reload.
//!
//! Fail closed everywhere: a set that does not parse or validate against
//! the schema never goes live (the old one keeps serving), and a decision
//! whose evaluation produced any error is a deny — Cedar itself would skip
//! an erroring `forbid` and might then allow.

pub mod clock;
pub mod context;
pub mod index;
pub mod source;
pub mod testing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema,
};

use crate::config::{Config, Environment, Role};
pub use context::{DecisionInput, Resource};
pub use source::{PolicyIssue, PolicySource};

/// The outcome of one authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids (`@id`) of the policies that determined the decision (shared:
    /// a cached decision is handed out without copying).
    pub policies: Arc<[String]>,
    /// Stable code for a deny (the 403 body's `reason`); `None` when allowed.
    pub reason: Option<Arc<str>>,
}

impl Decision {
    /// The policy ids joined by commas, for a log field (no allocation).
    pub fn policy_list(&self) -> PolicyList<'_> {
        PolicyList(&self.policies)
    }

    fn deny(reason: &str, policies: Vec<String>) -> Decision {
        Decision {
            allowed: false,
            policies: policies.into(),
            reason: Some(Arc::from(reason)),
        }
    }
}

/// See [`Decision::policy_list`].
pub struct PolicyList<'a>(&'a [String]);

impl std::fmt::Display for PolicyList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(id)?;
        }
        Ok(())
    }
}

/// Stack for parsing and validating a policy set (virtual memory; only
/// what is touched is resident).
const PARSE_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Reason codes the engine itself produces (policies add their own with
/// `@reason`).
pub const REASON_NOT_PERMITTED: &str = "not_permitted";
pub const REASON_POLICY_DENIED: &str = "policy_denied";
pub const REASON_POLICY_ERROR: &str = "policy_error";

/// A validated policy set with the schema it was checked against.
pub struct PolicyBundle {
    pub schema: Schema,
    pub set: PolicySet,
    /// `sha256:<hex>` over the schema and every policy file (names and bytes).
    pub hash: String,
    /// `@reason` of each forbid policy that has one.
    reasons: HashMap<PolicyId, Arc<str>>,
    /// Which file each policy came from, for messages.
    pub files: BTreeMap<String, String>,
    pub warnings: Vec<PolicyIssue>,
}

impl PolicyBundle {
    pub fn policy_count(&self) -> usize {
        self.set.policies().count()
    }

    /// Parses and validates every file of `src` (strict mode). All problems
    /// are returned, each with its file and line where Cedar knows it.
    pub fn load(src: &PolicySource) -> Result<PolicyBundle, Vec<PolicyIssue>> {
        let files = src.read()?;
        // Cedar's parser and validator recurse with the nesting of the
        // text; a stack overflow aborts the whole process. `check_shape`
        // refuses deep text first, and the work runs on a thread with a
        // stack far larger than any text that passes could need.
        let worker = std::thread::Builder::new()
            .name("policy-load".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn(move || source::build(files));
        let failed = |m: &str| {
            vec![PolicyIssue {
                file: "policies".into(),
                line: None,
                message: m.into(),
            }]
        };
        match worker {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(failed("the policy loader failed unexpectedly"))),
            Err(e) => Err(failed(&format!("cannot start the policy loader: {e}"))),
        }
    }
}

/// Who the callers are, as Cedar entities: each caller a member of its
/// role, with the accounts assigned to it. Built from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    callers: Vec<(String, Role, Vec<String>)>,
    /// (hash, name, environment)
    accounts: Vec<(String, String, Environment)>,
}

impl Directory {
    /// callers: (id, role, account hashes); accounts: (hash, name, environment).
    pub fn new(
        callers: Vec<(String, Role, Vec<String>)>,
        accounts: Vec<(String, String, Environment)>,
    ) -> Directory {
        Directory { callers, accounts }
    }

    pub fn from_config(config: &Config) -> Directory {
        let hash_of = |name: &String| {
            config
                .accounts
                .iter()
                .find(|a| &a.name == name)
                .map(|a| a.hash.clone())
        };
        Directory {
            callers: config
                .callers
                .iter()
                .map(|c| {
                    let accounts = c.accounts.iter().filter_map(hash_of).collect();
                    (c.id.clone(), c.role, accounts)
                })
                .collect(),
            accounts: config
                .accounts
                .iter()
                .map(|a| (a.hash.clone(), a.name.clone(), a.environment))
                .collect(),
        }
    }

    /// The Cedar entities, checked against the schema.
    pub fn entities(&self, schema: &Schema) -> Result<Entities, String> {
        let ty = |t: &str| EntityTypeName::from_str(t).map_err(|e| e.to_string());
        let (role_t, caller_t, account_t) = (ty("Role")?, ty("Caller")?, ty("Account")?);
        let uid = |t: &EntityTypeName, id: &str| {
            EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
        };
        let mut out = Vec::new();
        // Roles nest so that permissions are inherited upwards.
        let chain = [Role::Viewer, Role::Trader, Role::Admin, Role::SuperAdmin];
        for (i, r) in chain.iter().enumerate() {
            let parents: HashSet<EntityUid> = i
                .checked_sub(1)
                .and_then(|p| chain.get(p))
                .map(|p| uid(&role_t, p.as_str()))
                .into_iter()
                .collect();
            out.push(
                Entity::new(uid(&role_t, r.as_str()), HashMap::new(), parents)
                    .map_err(|e| e.to_string())?,
            );
        }
        for (hash, name, env) in &self.accounts {
            let attrs = HashMap::from([
                (
                    "name".to_owned(),
                    RestrictedExpression::new_string(name.clone()),
                ),
                (
                    "environment".to_owned(),
                    RestrictedExpression::new_string(env.as_str().to_owned()),
                ),
            ]);
            out.push(
                Entity::new(uid(&account_t, hash), attrs, HashSet::new())
                    .map_err(|e| e.to_string())?,
            );
        }
        for (id, role, accounts) in &self.callers {
            let set = RestrictedExpression::new_set(
                accounts
                    .iter()
                    .map(|h| RestrictedExpression::new_entity_uid(uid(&account_t, h))),
            );
            let attrs = HashMap::from([("accounts".to_owned(), set)]);
            let parents = HashSet::from([uid(&role_t, role.as_str())]);
            out.push(Entity::new(uid(&caller_t, id), attrs, parents).map_err(|e| e.to_string())?);
        }
        Entities::from_entities(out, Some(schema)).map_err(|e| e.to_string())
    }
}

/// What is live: the policy set and the entities, swapped together.
pub struct Active {
    pub bundle: PolicyBundle,
    entities: Entities,
    /// Entity type names, parsed once.
    types: context::Types,
    /// Per action, the policies whose action scope can match it, indexed
    /// by caller, account and order symbol (`index.rs`). Cedar evaluates
    /// every policy it is given; a guard on orders has nothing to say about
    /// a quote, and skipping it is most of a decision's cost.
    by_action: HashMap<String, index::ActionIndex>,
    /// The whole set, indexed, for an action without a slice (`None` if it
    /// could not be indexed: the whole set is evaluated).
    whole: Option<index::ActionIndex>,
    /// The fields of the context and of `context.order` the policies can
    /// observe (the others are not built).
    context_fields: context::ContextFields,
    /// Decisions of requests without an order body, for the current second.
    /// `None` when a policy reads `context.session_id` (the one input a
    /// cache key leaves out) or uses the context whole.
    cache: Option<std::sync::Mutex<DecisionCache>>,
    /// Hashes cache keys (outside the cache's lock).
    cache_hasher: std::hash::RandomState,
}

/// Every input of a decision except `session_id` and the order (requests
/// with an order are never cached). `time` enters as the second it falls
/// in, which is all the context carries (see `clock::cedar_datetime`).
/// Borrowed from the request: a lookup allocates nothing.
#[derive(Debug, Clone, Copy, Hash)]
struct CacheKey<'a> {
    caller: &'a str,
    action: &'a str,
    resource: Resource<'a>,
    client_ip: std::net::IpAddr,
    mfa: bool,
    environment: &'a str,
}

/// A [`CacheKey`] kept in the cache.
#[derive(Debug)]
struct StoredKey {
    caller: Box<str>,
    action: Box<str>,
    resource: StoredResource,
    client_ip: std::net::IpAddr,
    mfa: bool,
    environment: Box<str>,
}

#[derive(Debug)]
enum StoredResource {
    Account(Box<str>),
    Api,
    Proxy,
}

impl StoredKey {
    fn of(k: &CacheKey<'_>) -> StoredKey {
        StoredKey {
            caller: k.caller.into(),
            action: k.action.into(),
            resource: match k.resource {
                Resource::Account(h) => StoredResource::Account(h.into()),
                Resource::Api => StoredResource::Api,
                Resource::Proxy => StoredResource::Proxy,
            },
            client_ip: k.client_ip,
            mfa: k.mfa,
            environment: k.environment.into(),
        }
    }

    fn is(&self, k: &CacheKey<'_>) -> bool {
        let resource = match (&self.resource, k.resource) {
            (StoredResource::Account(a), Resource::Account(b)) => **a == *b,
            (StoredResource::Api, Resource::Api) | (StoredResource::Proxy, Resource::Proxy) => true,
            _ => false,
        };
        resource
            && *self.caller == *k.caller
            && *self.action == *k.action
            && self.client_ip == k.client_ip
            && self.mfa == k.mfa
            && *self.environment == *k.environment
    }
}

/// Decisions by the hash of their key (with the key itself to tell
/// colliding keys apart).
#[derive(Default)]
struct DecisionCache {
    second: i64,
    decisions: HashMap<u64, Vec<(StoredKey, Decision)>>,
    len: usize,
}

impl DecisionCache {
    fn get(&self, hash: u64, key: &CacheKey<'_>) -> Option<&Decision> {
        self.decisions
            .get(&hash)?
            .iter()
            .find(|(k, _)| k.is(key))
            .map(|(_, d)| d)
    }
}

/// Bound on cached decisions per second (beyond it, decisions are simply
/// not cached until the second turns).
const DECISION_CACHE_ENTRIES: usize = 4096;

/// The JSON (EST) form of policies by their text, kept from one load to the
/// next: `Policy::to_json` re-parses the text (~60 µs a policy), and a
/// reload usually changes few of them. Holds only the last load's policies.
#[derive(Default)]
pub struct EstCache(std::sync::Mutex<HashMap<String, Arc<serde_json::Value>>>);

impl EstCache {
    /// The JSON form of every policy of `set` (`None` for one that has
    /// none); misses are converted on up to two threads.
    fn forms(&self, set: &PolicySet) -> Vec<Option<Arc<serde_json::Value>>> {
        let texts: Vec<String> = set.policies().map(|p| p.to_string()).collect();
        let old = std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let policies: Vec<&cedar_policy::Policy> = set.policies().collect();
        let misses: Vec<usize> = (0..texts.len())
            .filter(|&i| !old.contains_key(&texts[i]))
            .collect();
        let convert = |idx: &[usize]| -> Vec<(usize, Option<Arc<serde_json::Value>>)> {
            idx.iter()
                .map(|&i| (i, policies[i].to_json().ok().map(Arc::new)))
                .collect()
        };
        let converted: Vec<(usize, Option<Arc<serde_json::Value>>)> = if misses.len() < 64 {
            convert(&misses)
        } else {
            let (a, b) = misses.split_at(misses.len() / 2);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| convert(b));
                let mut out = convert(a);
                // A panicking conversion thread leaves its half as misses
                // (`None`: the whole set is then treated conservatively).
                out.extend(other.join().unwrap_or_default());
                out
            })
        };
        let mut forms: Vec<Option<Arc<serde_json::Value>>> =
            texts.iter().map(|t| old.get(t).cloned()).collect();
        for (i, form) in converted {
            forms[i] = form;
        }
        let mut next = HashMap::with_capacity(texts.len());
        for (text, form) in texts.into_iter().zip(&forms) {
            if let Some(f) = form {
                next.insert(text, Arc::clone(f));
            }
        }
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        forms
    }
}

impl Active {
    pub fn new(bundle: PolicyBundle, directory: &Directory) -> Result<Active, Vec<PolicyIssue>> {
        Active::with_cache(bundle, directory, &EstCache::default())
    }

    /// [`Active::new`], reusing the JSON forms of policies unchanged since
    /// the last load through `cache`.
    pub fn with_cache(
        bundle: PolicyBundle,
        directory: &Directory,
        cache: &EstCache,
    ) -> Result<Active, Vec<PolicyIssue>> {
        let entities = directory.entities(&bundle.schema).map_err(|e| {
            vec![PolicyIssue {
                file: "configuration (callers / accounts)".into(),
                line: None,
                message: format!("entities do not match the schema: {e}"),
            }]
        })?;
        let types = context::Types::new().map_err(|e| {
            vec![PolicyIssue {
                file: "schema".into(),
                line: None,
                message: e,
            }]
        })?;
        let json = cache.forms(&bundle.set);
        let context_fields = if json.iter().all(Option::is_some) {
            context::ContextFields::of(json.iter().flatten().map(|j| &**j))
        } else {
            context::ContextFields::All
        };
        let keyed: Vec<index::Indexed> = bundle
            .set
            .policies()
            .zip(&json)
            .map(|(p, j)| match j {
                Some(j) => (
                    p.clone(),
                    index::key_of(p, j),
                    context::ContextFields::of([&**j]),
                ),
                None => (p.clone(), index::Key::None, context::ContextFields::All),
            })
            .collect();
        let by_action = slice_by_action(&bundle, &keyed);
        let whole = index::ActionIndex::new(&keyed);
        // The cache key leaves out `session_id`: cache only when no policy
        // can read it. Decided from the policies' parsed form (escapes such
        // as `\x73ession_id` are decoded there), so a whole use of the
        // context (`All`) also turns the cache off.
        let cache = (!context_fields.reads_session_id())
            .then(|| std::sync::Mutex::new(DecisionCache::default()));
        Ok(Active {
            bundle,
            entities,
            types,
            by_action,
            whole,
            context_fields,
            cache,
            cache_hasher: std::hash::RandomState::new(),
        })
    }

    /// The policies to evaluate for `action`: its slice, or the whole set
    /// for an action the slicing does not know (never fewer policies than
    /// could apply).
    #[cfg(test)]
    fn policies_for(&self, action: &str) -> &PolicySet {
        match self.index_for(action) {
            Some(ix) => &ix.all,
            None => &self.bundle.set,
        }
    }

    fn index_for(&self, action: &str) -> Option<&index::ActionIndex> {
        self.by_action.get(action).or(self.whole.as_ref())
    }

    /// Decides one request. Requests without an order body repeat a lot
    /// (a bot polling quotes): their decisions are reused within the same
    /// second, for the same caller, action, resource, address and MFA
    /// state — everything the decision depends on. A reload builds a new
    /// `Active`, so a cached decision never outlives its policy set.
    pub fn decide(&self, input: &DecisionInput<'_>) -> Decision {
        let (Some(cache), None) = (&self.cache, input.order) else {
            return self.evaluate(input);
        };
        let second = input.time.unix_timestamp();
        let key = CacheKey {
            caller: input.caller,
            action: input.action,
            resource: input.resource,
            client_ip: input.client_ip.to_canonical(),
            mfa: input.mfa,
            environment: input.environment,
        };
        let hash = std::hash::BuildHasher::hash_one(&self.cache_hasher, key);
        {
            let guard = cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if guard.second == second
                && let Some(d) = guard.get(hash, &key)
            {
                return d.clone();
            }
        }
        let decision = self.evaluate(input);
        let mut guard = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.second != second {
            guard.second = second;
            guard.decisions.clear();
            guard.len = 0;
        }
        if guard.len < DECISION_CACHE_ENTRIES && guard.get(hash, &key).is_none() {
            guard.len += 1;
            guard
                .decisions
                .entry(hash)
                .or_default()
                .push((StoredKey::of(&key), decision.clone()));
        }
        decision
    }

    /// Evaluates one request with Cedar. Never panics; every failure is a
    /// deny. Only the groups of policies the index selects are evaluated,
    /// and the context carries only the fields those groups can observe.
    fn evaluate(&self, input: &DecisionInput<'_>) -> Decision {
        let (principal, action, resource) = self.types.uids(input);
        let (groups, fields): (Vec<&PolicySet>, context::ContextFields) =
            match self.index_for(input.action) {
                Some(ix) => {
                    let groups = ix.groups(&principal, &resource, input.order);
                    let fields = groups
                        .iter()
                        .fold(context::ContextFields::NONE, |f, g| f.union(g.fields));
                    (groups.iter().map(|g| &g.set).collect(), fields)
                }
                None => (vec![&self.bundle.set], self.context_fields),
            };
        let request = context::build(input, fields).and_then(|context| {
            Request::new(principal, action, resource, context, None).map_err(|e| e.to_string())
        });
        match request {
            Ok(request) => self.combine(&request, &groups),
            Err(e) => {
                tracing::warn!(action = input.action, error = %e, "authorization request could not be built; denied");
                Decision::deny(REASON_POLICY_ERROR, Vec::new())
            }
        }
    }

    /// Evaluates `request` against the whole slice in one go, without the
    /// index and with every order field (the reference the index and the
    /// trimmed order record are tested against).
    #[cfg(test)]
    fn evaluate_unindexed(&self, input: &DecisionInput<'_>) -> Decision {
        match self.request_with(input, context::ContextFields::All) {
            Ok(request) => self.combine(&request, &[self.policies_for(input.action)]),
            Err(_) => Decision::deny(REASON_POLICY_ERROR, Vec::new()),
        }
    }

    /// Evaluates each group and combines them as Cedar combines policies:
    /// any error denies (Cedar would skip an erroring `forbid`), else any
    /// satisfied `forbid` denies, else any satisfied `permit` allows, else
    /// deny.
    fn combine(&self, request: &Request, groups: &[&PolicySet]) -> Decision {
        let authorizer = Authorizer::new();
        let mut erroring: Vec<String> = Vec::new();
        let mut forbids: Vec<&PolicyId> = Vec::new();
        let mut permits: Vec<&PolicyId> = Vec::new();
        let responses: Vec<cedar_policy::Response> = groups
            .iter()
            .map(|set| authorizer.is_authorized(request, set, &self.entities))
            .collect();
        for response in &responses {
            let diagnostics = response.diagnostics();
            for e in diagnostics.errors() {
                tracing::warn!(error = %e, "policy evaluation error; request denied");
                let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
                erroring.push(id_str(e.policy_id()).to_owned());
            }
            // A deny's reasons are the satisfied forbids, an allow's the
            // satisfied permits.
            match response.decision() {
                cedar_policy::Decision::Allow => permits.extend(diagnostics.reason()),
                cedar_policy::Decision::Deny => forbids.extend(diagnostics.reason()),
            }
        }
        if !erroring.is_empty() {
            erroring.sort();
            erroring.dedup();
            return Decision::deny(REASON_POLICY_ERROR, erroring);
        }
        let sorted_ids = |v: Vec<&PolicyId>| {
            let mut ids: Vec<String> = v.iter().map(|p| id_str(p).to_owned()).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        if !forbids.is_empty() {
            forbids.sort_by(|a, b| id_str(a).cmp(id_str(b)));
            let reason = forbids
                .iter()
                .find_map(|p| self.bundle.reasons.get(*p))
                .map(|r| &**r)
                .unwrap_or(REASON_POLICY_DENIED);
            return Decision::deny(reason, sorted_ids(forbids));
        }
        if permits.is_empty() {
            return Decision::deny(REASON_NOT_PERMITTED, Vec::new());
        }
        Decision {
            allowed: true,
            policies: sorted_ids(permits).into(),
            reason: None,
        }
    }

    /// The Cedar request for `input` (public for the benches).
    pub fn request(&self, input: &DecisionInput<'_>) -> Result<Request, String> {
        self.request_with(input, self.context_fields)
    }

    fn request_with(
        &self,
        input: &DecisionInput<'_>,
        fields: context::ContextFields,
    ) -> Result<Request, String> {
        let (principal, action, resource) = self.types.uids(input);
        let context = context::build(input, fields)?;
        // No per-request schema check: the context is built by this module
        // in the schema's shape, and a mismatch could only make a policy
        // error out or not match — a deny either way (see `decide`).
        Request::new(principal, action, resource, context, None).map_err(|e| e.to_string())
    }

    /// Whether the schema declares `action` (route actions are checked at load).
    pub fn knows_action(&self, action: &str) -> bool {
        self.bundle
            .schema
            .actions()
            .any(|a| a.type_name().to_string() == "Action" && a.id().unescaped() == action)
    }
}

/// Splits the set by action. A policy goes into an action's slice unless
/// its action scope certainly excludes that action: `action == X` with X
/// another action, or `action in [..]` naming neither the action nor any
/// group it belongs to (groups from the schema, transitively). If the
/// schema's action hierarchy cannot be read, there are no slices and every
/// decision sees the whole set.
fn slice_by_action(
    bundle: &PolicyBundle,
    keyed: &[index::Indexed],
) -> HashMap<String, index::ActionIndex> {
    let mut out = HashMap::new();
    let Ok(actions) = bundle.schema.action_entities() else {
        return out;
    };
    // Requests name the unqualified `Action::"…"`: only those are sliced
    // (by name), so an action of another namespace can never stand in for
    // one of them.
    for action in bundle
        .schema
        .actions()
        .filter(|a| a.type_name().to_string() == "Action")
    {
        let mut related: HashSet<&EntityUid> = HashSet::from([action]);
        if let Some(ancestors) = actions.ancestors(action) {
            related.extend(ancestors);
        }
        let slice = keyed
            .iter()
            .filter(|(p, _, _)| match p.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => &a == action,
                ActionConstraint::In(list) => list.iter().any(|a| related.contains(a)),
            });
        if let Some(ix) = index::ActionIndex::new(slice) {
            out.insert(action.id().unescaped().to_owned(), ix);
        }
    }
    out
}

/// A policy id's text (its `@id`), without `Display`'s debug escaping.
fn id_str(p: &PolicyId) -> &str {
    AsRef::<str>::as_ref(p)
}

/// The live policy set, its source and the entities' source; reloadable.
pub struct Engine {
    active: RwLock<Arc<Active>>,
    pub source: PolicySource,
    directory: Directory,
    /// Actions the route table uses; a set whose schema lacks one is refused.
    required_actions: Vec<String>,
    /// Serializes reloads from reading the files to the swap, so a slow
    /// reload of older files can never replace a newer set.
    reloading: std::sync::Mutex<()>,
    /// Policies' JSON forms from the last load (a reload converts only the
    /// changed ones).
    est: EstCache,
}

impl Engine {
    pub fn load(source: PolicySource, directory: Directory) -> Result<Engine, Vec<PolicyIssue>> {
        Engine::load_requiring(source, directory, Vec::new())
    }

    /// [`Engine::load`], also refusing (now and on every reload) a schema
    /// that does not declare each of `required_actions`.
    pub fn load_requiring(
        source: PolicySource,
        directory: Directory,
        required_actions: Vec<String>,
    ) -> Result<Engine, Vec<PolicyIssue>> {
        let bundle = PolicyBundle::load(&source)?;
        let est = EstCache::default();
        let active = Active::with_cache(bundle, &directory, &est)?;
        let issues = check_route_actions(&active, required_actions.iter().map(|a| a.as_str()));
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Engine {
            active: RwLock::new(Arc::new(active)),
            source,
            directory,
            required_actions,
            reloading: std::sync::Mutex::new(()),
            est,
        })
    }

    /// The set in force now. Cheap (an `Arc` clone under a read lock held
    /// for no longer than that); a reload never blocks a decision in flight.
    pub fn current(&self) -> Arc<Active> {
        match self.active.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn decide(&self, input: &DecisionInput<'_>) -> Decision {
        self.current().decide(input)
    }

    /// Re-reads the policy files and swaps in the new set if every file
    /// parses and validates; otherwise the current set stays. Returns the
    /// new set's hash (unchanged hash: nothing swapped).
    pub fn reload(&self) -> Result<Reloaded, Vec<PolicyIssue>> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bundle = PolicyBundle::load(&self.source)?;
        let old_hash = self.current().bundle.hash.clone();
        if bundle.hash == old_hash {
            return Ok(Reloaded {
                hash: old_hash,
                changed: false,
            });
        }
        let active = Arc::new(Active::with_cache(bundle, &self.directory, &self.est)?);
        let issues = check_route_actions(&active, self.required_actions.iter().map(|a| a.as_str()));
        if !issues.is_empty() {
            return Err(issues);
        }
        let hash = active.bundle.hash.clone();
        match self.active.write() {
            Ok(mut g) => *g = active,
            Err(poisoned) => *poisoned.into_inner() = active,
        }
        Ok(Reloaded {
            hash,
            changed: true,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub hash: String,
    pub changed: bool,
}

pub const SET_ACTIVE: &str = "active";
pub const SET_SHADOW: &str = "shadow";

/// Reloads `engine` and reports the outcome in metrics and the log:
/// applied (new hash), unchanged, or failed (every issue with its file and
/// line; the previous set stays in force).
pub fn reload_and_report(
    engine: &Engine,
    metrics: &crate::admin::metrics::Metrics,
    trigger: &str,
    set: &'static str,
) -> Result<Reloaded, Vec<PolicyIssue>> {
    let started = std::time::Instant::now();
    let result = engine.reload();
    match &result {
        Ok(r) if r.changed => {
            metrics
                .policy_reloads
                .with_label_values(&[set, "applied"])
                .inc();
            if set == SET_ACTIVE {
                metrics.set_policy_hash(&r.hash);
            }
            tracing::info!(
                trigger,
                set,
                hash = %r.hash,
                policies = engine.current().bundle.policy_count(),
                took_ms = started.elapsed().as_millis() as u64,
                "policies reloaded"
            );
        }
        Ok(_) => {
            metrics
                .policy_reloads
                .with_label_values(&[set, "unchanged"])
                .inc();
            tracing::info!(trigger, set, "policies unchanged");
        }
        Err(issues) => {
            metrics
                .policy_reloads
                .with_label_values(&[set, "failed"])
                .inc();
            for i in issues {
                tracing::error!(
                    trigger,
                    set,
                    file = %i.file,
                    line = i.line,
                    error = %i.message,
                    "policy reload failed; the previous set stays in force"
                );
            }
        }
    }
    result
}

/// The shadow (candidate) set of `policies.shadow_dir`, if configured.
pub fn shadow_source_from_config(config: &Config) -> Option<PolicySource> {
    config
        .policies
        .shadow_dir
        .as_ref()
        .map(|dir| PolicySource::Dir {
            dir: dir.clone(),
            files: config.policies.shadow_files.clone(),
        })
}

/// Resolves `policies:` from the configuration: a directory, or the set
/// compiled into the binary.
pub fn source_from_config(config: &Config) -> PolicySource {
    match &config.policies.dir {
        Some(dir) => PolicySource::Dir {
            dir: dir.clone(),
            files: config.policies.files.clone(),
        },
        None => PolicySource::Embedded {
            files: if config.policies.files.is_empty() {
                vec![PathBuf::from("roles.cedar")]
            } else {
                config.policies.files.clone()
            },
        },
    }
}

/// Runs the engine's checks that need the route table: every action a
/// route names must be declared in the schema.
pub fn check_route_actions<'a>(
    active: &Active,
    actions: impl IntoIterator<Item = &'a str>,
) -> Vec<PolicyIssue> {
    let mut out = Vec::new();
    for a in actions {
        if !active.knows_action(a) && !out.iter().any(|i: &PolicyIssue| i.message.contains(a)) {
            out.push(PolicyIssue {
                file: "schema.cedarschema".into(),
                line: None,
                message: format!(
                    "the route table's action `{a}` is not declared in the schema; \
                     every request to it would be denied"
                ),
            });
        }
    }
    out
}

/// Effect of a policy, for listings.
pub fn effect_name(e: Effect) -> &'static str {
    match e {
        Effect::Permit => "permit",
        Effect::Forbid => "forbid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::order;
    use std::path::PathBuf;

    fn shipped() -> Active {
        let files = source::EMBEDDED
            .iter()
            .map(|(n, _)| PathBuf::from(n))
            .filter(|n| n.extension().is_some_and(|x| x == "cedar"))
            .collect();
        let bundle = PolicyBundle::load(&PolicySource::Embedded { files }).expect("shipped set");
        Active::new(bundle, &Directory::default()).expect("entities")
    }

    fn ids(set: &PolicySet) -> Vec<String> {
        let mut v: Vec<String> = set.policies().map(|p| p.id().to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn slices_keep_every_policy_whose_scope_can_match() {
        let a = shipped();
        let quotes = ids(a.policies_for("ViewMarketData"));
        assert_eq!(quotes, ["viewer-read-api", "viewer-read-own-accounts"]);
        let place = ids(a.policies_for("PlaceOrder"));
        for expected in [
            "trader-trade-own-accounts",
            "guard-max-order-quantity",
            "guard-symbol-deny-list",
            "guard-market-hours",
            "guard-trading-ip-range",
            "guard-no-options",
        ] {
            assert!(
                place.contains(&expected.to_owned()),
                "{expected} missing from {place:?}"
            );
        }
        assert!(!place.contains(&"viewer-read-api".to_owned()));
        // Cancel is in the Trade group: the IP-range guard (action in
        // Trade) applies, the quantity guard (Place / Replace) does not.
        let cancel = ids(a.policies_for("CancelOrder"));
        assert!(cancel.contains(&"guard-trading-ip-range".to_owned()));
        assert!(!cancel.contains(&"guard-max-order-quantity".to_owned()));
        let rotate = ids(a.policies_for("RotateCredentials"));
        assert_eq!(
            rotate,
            ["mfa-for-credentials-and-resume", "superadmin-credentials"]
        );
        // Every action of the schema has a slice; an unknown one gets the
        // whole set.
        assert_eq!(a.by_action.len(), a.bundle.schema.actions().count());
        assert_eq!(
            a.policies_for("NoSuchAction").policies().count(),
            a.bundle.policy_count()
        );
    }

    fn active_with(policies: &str) -> Active {
        let files = vec![
            (
                "schema.cedarschema".to_owned(),
                source::EMBEDDED[0].1.to_owned(),
            ),
            ("p.cedar".to_owned(), policies.to_owned()),
        ];
        Active::new(source::build(files).expect("valid"), &Directory::default()).expect("entities")
    }

    /// Slices are keyed by action name and requests name the unqualified
    /// `Action::"…"`; only those actions are sliced. An action of the same
    /// name in another namespace cannot take a slice's place: Cedar refuses
    /// such a schema (it would shadow the proxy's action), so the set is
    /// refused at load; one of another name is simply not sliced.
    #[test]
    fn namespaced_actions_never_take_the_place_of_the_proxy_s() {
        let with = |extra: &str, policies: &str| {
            let schema = format!("{}\n{extra}\n", source::EMBEDDED[0].1);
            source::build(vec![
                ("schema.cedarschema".to_owned(), schema),
                ("p.cedar".to_owned(), policies.to_owned()),
            ])
        };
        let shadowing = with(
            r#"namespace Other { action "PlaceOrder"; }"#,
            r#"@id("p") permit (principal, action, resource);"#,
        );
        assert!(shadowing.is_err());
        let bundle = with(
            r#"namespace Other { action "Foo"; }"#,
            r#"@id("p") permit (principal, action, resource);
               @id("f") @reason("no_orders") forbid (principal, action == Action::"PlaceOrder", resource);"#,
        )
        .expect("valid");
        let a = Active::new(bundle, &Directory::default()).expect("entities");
        assert!(!a.by_action.contains_key("Foo"));
        let mut place = quote_at(time::OffsetDateTime::now_utc());
        place.action = "PlaceOrder";
        place.resource = Resource::Account("H1");
        let d = a.decide(&place);
        assert_eq!(d.reason.as_deref(), Some("no_orders"), "{d:?}");
        assert_eq!(a.evaluate_unindexed(&place), d);
        let quote = quote_at(time::OffsetDateTime::now_utc());
        assert!(a.decide(&quote).allowed);
    }

    fn quote_at(t: time::OffsetDateTime) -> DecisionInput<'static> {
        DecisionInput {
            caller: "bot",
            action: "ViewMarketData",
            resource: Resource::Api,
            client_ip: std::net::IpAddr::from([10, 0, 0, 1]),
            time: t,
            mfa: false,
            environment: "production",
            session_id: "s",
            order: None,
        }
    }

    #[test]
    fn cached_decisions_follow_the_clock_second_by_second() {
        let a = active_with(
            r#"@id("p") permit (principal, action, resource);
               @id("f") @reason("late") forbid (principal, action, resource)
               when { context.market_clock.minute >= 600 };"#,
        );
        assert!(a.cache.is_some());
        // 09:59:59 and 10:00:00 New York (EST) on a Friday.
        let before = time::macros::datetime!(2026-12-04 14:59:59 UTC);
        let after = time::macros::datetime!(2026-12-04 15:00:00 UTC);
        for _ in 0..2 {
            assert!(a.decide(&quote_at(before)).allowed);
        }
        let d = a.decide(&quote_at(after));
        assert!(
            !d.allowed,
            "a decision cached at 09:59:59 must not answer for 10:00:00"
        );
        assert_eq!(d.reason.as_deref(), Some("late"));
        // Another caller, address or MFA state is another entry.
        let mut other = quote_at(after);
        other.mfa = true;
        assert_eq!(a.decide(&other), a.evaluate(&other));
    }

    /// Within one second, a request differing from a cached one in any
    /// single input of the key gets its own decision — each input here
    /// flips the outcome, so a lookup that ignored one would answer wrong.
    #[test]
    fn every_input_of_the_cache_key_tells_decisions_apart() {
        let a = active_with(
            r#"@id("p") permit (principal, action, resource);
               @id("f-caller") forbid (principal == Caller::"eve", action, resource);
               @id("f-action") forbid (principal, action == Action::"ViewAccounts", resource);
               @id("f-resource") forbid (principal, action, resource == Account::"H2");
               @id("f-ip") forbid (principal, action, resource) when { context.client_ip == ip("10.0.0.2") };
               @id("f-mfa") forbid (principal, action, resource) when { context.mfa };
               @id("f-env") forbid (principal, action, resource) when { context.environment == "staging" };"#,
        );
        assert!(a.cache.is_some());
        let now = time::macros::datetime!(2026-12-04 15:00:00 UTC);
        let mut base = quote_at(now);
        base.action = "ViewAccount";
        base.resource = Resource::Account("H1");
        let variants: Vec<(&str, DecisionInput<'static>)> = vec![
            (
                "caller",
                DecisionInput {
                    caller: "eve",
                    ..base.clone()
                },
            ),
            (
                "action",
                DecisionInput {
                    action: "ViewAccounts",
                    ..base.clone()
                },
            ),
            (
                "resource",
                DecisionInput {
                    resource: Resource::Account("H2"),
                    ..base.clone()
                },
            ),
            (
                "resource kind",
                DecisionInput {
                    resource: Resource::Api,
                    ..base.clone()
                },
            ),
            (
                "address",
                DecisionInput {
                    client_ip: std::net::IpAddr::from([10, 0, 0, 2]),
                    ..base.clone()
                },
            ),
            (
                "mfa",
                DecisionInput {
                    mfa: true,
                    ..base.clone()
                },
            ),
            (
                "environment",
                DecisionInput {
                    environment: "staging",
                    ..base.clone()
                },
            ),
        ];
        // Cached first in each order: the base, then each variant.
        assert!(a.decide(&base).allowed);
        for (what, v) in &variants {
            assert_eq!(a.decide(v), a.evaluate(v), "{what}");
            assert!(a.decide(&base).allowed, "{what}");
        }
        let b = active_with(
            &a.bundle
                .set
                .policies()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        );
        for (what, v) in &variants {
            let d = b.decide(v);
            if *what != "resource kind" {
                assert!(!d.allowed, "{what}");
            }
            assert_eq!(d, b.evaluate(v), "{what}");
            assert_eq!(b.decide(&base), b.evaluate(&base), "{what}");
        }
    }

    /// Keys whose hashes collide are told apart by every field.
    #[test]
    fn colliding_cache_keys_are_told_apart() {
        let base = CacheKey {
            caller: "bot",
            action: "ViewAccount",
            resource: Resource::Account("H1"),
            client_ip: std::net::IpAddr::from([10, 0, 0, 1]),
            mfa: false,
            environment: "production",
        };
        let keys = [
            base,
            CacheKey {
                caller: "eve",
                ..base
            },
            CacheKey {
                action: "ViewAccounts",
                ..base
            },
            CacheKey {
                resource: Resource::Account("H2"),
                ..base
            },
            CacheKey {
                resource: Resource::Api,
                ..base
            },
            CacheKey {
                resource: Resource::Proxy,
                ..base
            },
            CacheKey {
                client_ip: std::net::IpAddr::from([10, 0, 0, 2]),
                ..base
            },
            CacheKey { mfa: true, ..base },
            CacheKey {
                environment: "staging",
                ..base
            },
        ];
        let mut cache = DecisionCache::default();
        for (i, k) in keys.iter().enumerate() {
            let d = Decision::deny("x", vec![i.to_string()]);
            cache
                .decisions
                .entry(7)
                .or_default()
                .push((StoredKey::of(k), d));
        }
        for (i, k) in keys.iter().enumerate() {
            let found = cache.get(7, k).map(|d| d.policies[0].clone());
            assert_eq!(found, Some(i.to_string()), "{k:?}");
        }
        assert!(cache.get(8, &base).is_none());
    }

    #[test]
    fn a_policy_that_reads_session_id_turns_the_cache_off() {
        let a = active_with(
            r#"@id("p") permit (principal, action, resource) when { context.session_id != "x" };"#,
        );
        assert!(a.cache.is_none());
        // Also when spelled with an escape.
        for spelled in [
            r#"context["sess\u{69}on_id"]"#,
            r#"context["\x73ession_id"]"#,
        ] {
            let escaped = active_with(&format!(
                r#"@id("p") permit (principal, action, resource);
                   @id("f") forbid (principal, action, resource) when {{ {spelled} like "bad*" }};"#
            ));
            assert!(escaped.cache.is_none(), "{spelled}");
            // Two sessions in the same second get their own decisions.
            let now = time::OffsetDateTime::now_utc();
            let mut ok = quote_at(now);
            ok.session_id = "ok";
            let mut bad = quote_at(now);
            bad.session_id = "bad-1";
            assert!(escaped.decide(&ok).allowed);
            assert!(!escaped.decide(&bad).allowed, "{spelled}");
        }
        // A mention of "session" outside any use of the field leaves the
        // cache on.
        let harmless = active_with(
            r#"@id("session-rule") @reason("session_closed") forbid (principal, action == Action::"PlaceOrder", resource)
               when { context.order.sessions.contains("AM") };"#,
        );
        assert!(harmless.cache.is_some());
        assert!(a.decide(&quote_at(time::OffsetDateTime::now_utc())).allowed);
    }

    #[test]
    fn unconstrained_action_scopes_are_in_every_slice() {
        let files = vec![
            (
                "schema.cedarschema".to_owned(),
                source::EMBEDDED[0].1.to_owned(),
            ),
            (
                "any.cedar".to_owned(),
                "@id(\"deny-all\") forbid (principal, action, resource);".to_owned(),
            ),
        ];
        let bundle = source::build(files).expect("valid");
        let a = Active::new(bundle, &Directory::default()).expect("entities");
        for action in a.bundle.schema.actions() {
            let name = action.id().unescaped();
            assert_eq!(ids(a.policies_for(name)), ["deny-all"], "{name}");
        }
    }

    /// The index must never change a decision: every combination of caller,
    /// action, resource, order symbols, price and MFA gets the same allow or
    /// deny, determining policies and reason as one evaluation of the whole
    /// slice — including the errors of policies whose key matched.
    #[test]
    fn the_index_decides_exactly_as_the_whole_slice() {
        let a = active_with(
            r#"@id("p-all") permit (principal, action, resource) when { context.environment == "production" };
               @id("p-bot") permit (principal == Caller::"bot", action, resource) when { context.mfa };
               @id("p-alice-h2") permit (principal == Caller::"alice", action, resource == Account::"H2");
               @id("f-eve") @reason("eve") forbid (principal == Caller::"eve", action == Action::"PlaceOrder", resource);
               @id("f-h1") @reason("h1_qty") forbid (principal, action == Action::"PlaceOrder", resource == Account::"H1")
                 when { context.order.max_quantity > 5 };
               @id("f-gme") @reason("gme") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context.order.symbols.contains("GME") };
               @id("f-amc-bb") @reason("amc_priced") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context.order.symbols.containsAny(["AMC", "BB", "AMC"]) && context.order has price && context.order.price.greaterThan(decimal("1.0")) };
               @id("f-bb-overflow") @reason("bb_overflow") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context.order.symbols.contains("BB") && context.order.max_quantity * 4611686018427387904 > 0 };
               @id("f-xyz-late") @reason("xyz") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context.mfa && context.order.symbols.contains("XYZ") };
               @id("f-unless-safe") @reason("unsafe") forbid (principal, action == Action::"PlaceOrder", resource)
                 unless { context.order.symbols.contains("SAFE") || context.order.symbols.contains("GME") || context.order.symbols.contains("AMC") || context.order.symbols.contains("XYZ") || context.order.symbols.contains("BB") || context.order.symbols.contains("AAPL") };
               @id("f-z-unless-first") @reason("aapl_staging") forbid (principal, action == Action::"PlaceOrder", resource)
                 unless { context.order.symbols.contains("SAFE") }
                 when { context.environment == "staging" && context.order.symbols.contains("AAPL") };
               @id("f-brackets") @reason("brackets") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context["order"]["symbols"].contains("ZZZ") };
               @id("f-short-or-am") @reason("short_or_am") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context.order.instructions.containsAny(["SELL_SHORT"]) || context.order.sessions.contains("AM") };
               @id("f-zz-pm-or-mfa") @reason("pm_or_mfa") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context.order.sessions.contains("PM") || context.mfa };
               @id("f-qty-cmp") @reason("qty_cmp") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context.order.max_quantity > 5 && context.order.symbols.contains("MSFT") };
               @id("f-lit-left") @reason("lit_left") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { 20 <= context.order.total_quantity || context.order has stop_price };
               @id("f-not-priced") @reason("not_priced") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { !(context.order has price) && context.order.symbols.contains("AMC") };
               @id("f-a-legs") @reason("two_legs") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context.order.leg_count == 2 && context.order.symbols.contains("BB") };
               @id("f-orders-ne") @reason("orders_ne") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { 1 != context.order.order_count || context.order.max_quantity < -5 };
               @id("f-notional") @reason("notional") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context.order has notional && context.order.notional.greaterThan(decimal("15.00")) };
               @id("f-h2-whole") @reason("h2_whole") forbid (principal, action == Action::"PlaceOrder", resource == Account::"H2")
                 when { context.order == context.order && context.order.max_quantity > 5 && context.environment == "staging" };
               @id("f-ip-clock") @reason("ip_clock") forbid (principal, action == Action::"PlaceOrder", resource)
                 when { context.client_ip.isInRange(ip("10.0.0.2/32")) && context.market_clock.minute >= 570 };"#,
        );
        // The symbol-keyed policies are filed by symbol, the scoped ones by
        // caller or account, the rest are general.
        let place = &a.by_action["PlaceOrder"];
        let uid = |t: &str, id: &str| {
            EntityUid::from_type_name_and_id(
                EntityTypeName::from_str(t).expect("type"),
                EntityId::new(id),
            )
        };
        // Legs as "SYMBOL" (a buy) or "SYMBOL:INSTRUCTION".
        let order = |legs: &[&str], session: &str, price: Option<&str>, qty: u32| {
            let legs: Vec<String> = legs
                .iter()
                .map(|leg| {
                    let (s, instruction) = leg.split_once(':').unwrap_or((leg, "BUY"));
                    format!(
                        r#"{{"instruction":"{instruction}","quantity":{qty},"instrument":{{"symbol":"{s}","assetType":"EQUITY"}}}}"#
                    )
                })
                .collect();
            let (kind, price) = match price {
                Some(p) => ("LIMIT", format!(r#","price":"{p}""#)),
                None => ("MARKET", String::new()),
            };
            let body = format!(
                r#"{{"orderType":"{kind}","session":"{session}","duration":"DAY","orderStrategyType":"SINGLE"{price},"orderLegCollection":[{}]}}"#,
                legs.join(",")
            );
            order::parse_order(Some(b"application/json"), body.as_bytes()).expect("order")
        };
        let names = |groups: Vec<&index::Group>| {
            let mut v: Vec<String> = groups.iter().flat_map(|g| ids(&g.set)).collect();
            v.sort();
            v
        };
        let general = [
            "f-ip-clock",
            "f-unless-safe",
            "f-xyz-late",
            "f-z-unless-first",
            "f-zz-pm-or-mfa",
            "p-all",
        ];
        let aapl = order(&["AAPL"], "NORMAL", None, 1);
        let mut expected = vec!["f-not-priced"];
        expected.extend(general);
        expected.sort();
        assert_eq!(
            names(place.groups(&uid("Caller", "x"), &uid("Account", "H9"), Some(&aapl))),
            expected
        );
        let gme = order(
            &["GME", "ZZZ:SELL_SHORT", "GME"],
            "NORMAL",
            Some("1.00"),
            10,
        );
        let mut expected = vec![
            "f-brackets",
            "f-eve",
            "f-gme",
            "f-h1",
            "f-lit-left",
            "f-notional",
            "f-qty-cmp",
            "f-short-or-am",
        ];
        expected.extend(general);
        expected.sort();
        assert_eq!(
            names(place.groups(&uid("Caller", "eve"), &uid("Account", "H1"), Some(&gme))),
            expected
        );
        // Without an order every order-keyed policy is evaluated.
        assert_eq!(
            names(place.groups(&uid("Caller", "x"), &uid("Account", "H9"), None)).len(),
            17
        );

        let mut orders = vec![None];
        for legs in [
            &["AAPL"][..],
            &["AAPL:SELL_SHORT"],
            &["GME", "MSFT:SELL_SHORT"],
            &["GME"],
            &["AMC"],
            &["AMC", "BB"],
            &["XYZ"],
            &["SAFE"],
            &["ZZZ", "SAFE"],
            &["BB"],
            &["MSFT"],
            &["GME", "AMC"],
        ] {
            for session in ["NORMAL", "AM", "PM"] {
                for price in [None, Some("0.50"), Some("2.00")] {
                    for qty in [1, 10] {
                        orders.push(Some(order(legs, session, price, qty)));
                    }
                }
            }
        }
        let mut compared = 0;
        let mut denied = 0;
        let mut reasons = HashSet::new();
        for caller in ["bot", "alice", "eve", "x"] {
            for (action, resource) in [
                ("ViewMarketData", Resource::Api),
                ("PlaceOrder", Resource::Account("H1")),
                ("PlaceOrder", Resource::Account("H2")),
                ("ViewAccounts", Resource::Account("H1")),
            ] {
                for (o, client_ip) in orders.iter().flat_map(|o| {
                    [[10, 0, 0, 1], [10, 0, 0, 2]].map(|ip| (o, std::net::IpAddr::from(ip)))
                }) {
                    for mfa in [false, true] {
                        for environment in ["production", "staging"] {
                            let input = DecisionInput {
                                caller,
                                action,
                                resource,
                                client_ip,
                                // 10:00 in New York, a Friday.
                                time: time::macros::datetime!(2026-12-04 15:00:00 UTC),
                                mfa,
                                environment,
                                session_id: "s",
                                order: o.as_ref(),
                            };
                            let indexed = a.evaluate(&input);
                            let whole = a.evaluate_unindexed(&input);
                            assert_eq!(indexed, whole, "{input:?}");
                            compared += 1;
                            denied += usize::from(!indexed.allowed);
                            reasons.extend(indexed.reason.map(|r| r.to_string()));
                        }
                    }
                }
            }
        }
        // Both outcomes, and every reason, were exercised.
        assert!(denied > 0 && denied < compared, "{denied}/{compared}");
        for reason in [
            "eve",
            "h1_qty",
            "gme",
            "amc_priced",
            "xyz",
            "unsafe",
            "brackets",
            "aapl_staging",
            "short_or_am",
            "pm_or_mfa",
            "qty_cmp",
            "not_priced",
            "two_legs",
            "notional",
            "h2_whole",
            "ip_clock",
            REASON_POLICY_ERROR,
            REASON_NOT_PERMITTED,
        ] {
            assert!(
                reasons.contains(reason),
                "{reason} never decided: {reasons:?}"
            );
        }
    }

    fn context_fields(policies: &str) -> context::ContextFields {
        active_with(policies).context_fields
    }

    #[test]
    fn only_the_context_fields_policies_name_are_built() {
        use context::ContextFields;
        let only = ContextFields::only;
        assert_eq!(
            context_fields(
                r#"@id("a") forbid (principal, action == Action::"PlaceOrder", resource)
                   when { context.order.max_quantity > 100 };
                   @id("b") forbid (principal, action == Action::"PlaceOrder", resource)
                   when { context.order has price && context["order"].price.greaterThan(decimal("5.0")) };
                   @id("c") permit (principal, action, resource) when { context.mfa };"#
            ),
            only(&["order", "mfa"], &["max_quantity", "price"])
        );
        // No policy reads the context: nothing is built.
        assert_eq!(
            context_fields(r#"@id("c") permit (principal, action, resource);"#),
            only(&[], &[])
        );
        assert_eq!(
            context_fields(
                r#"@id("t") forbid (principal, action, resource)
                   unless { context has client_ip && context.client_ip.isInRange(ip("10.0.0.0/8")) };"#
            ),
            only(&["client_ip"], &[])
        );
        // The order, or the whole context, used as a value: every field.
        for whole in [
            r#"when { context.order == context.order }"#,
            r#"when { context == context }"#,
            r#"when { (if context.mfa then context.order else context.order).max_quantity > 1 }"#,
            r#"when { [context.order].contains(context.order) }"#,
            // Record keys that look like EST node kinds.
            r#"when { {Value: context.order}.Value has price }"#,
            r#"when { {Var: context}.Var.order has price }"#,
            r#"when { {"has": context.order, x: 1}.x == 1 }"#,
        ] {
            let text = format!(
                "@id(\"w\") forbid (principal, action == Action::\"PlaceOrder\", resource) {whole};"
            );
            assert_eq!(context_fields(&text), ContextFields::All, "{whole}");
        }
    }

    /// The JSON forms come from the cache only for unchanged text: after an
    /// edit every form equals a fresh conversion (both the single-thread
    /// path and the two-thread one for many misses).
    #[test]
    fn est_cache_never_serves_a_stale_form() {
        let set_of = |n: usize, symbol: &str| {
            let text: String = (0..n)
                .map(|i| {
                    format!(
                        "@id(\"p{i}\") forbid (principal, action, resource) when {{ context.order.symbols.contains(\"{symbol}{}\") }};\n",
                        i % 7
                    )
                })
                .collect();
            PolicySet::from_str(&text).expect("policies")
        };
        let cache = EstCache::default();
        for (n, symbol) in [
            (3, "A"),
            (3, "B"),
            (200, "A"),
            (200, "A"),
            (200, "C"),
            (5, "C"),
        ] {
            let set = set_of(n, symbol);
            let forms = cache.forms(&set);
            assert_eq!(forms.len(), n);
            for (p, form) in set.policies().zip(&forms) {
                let fresh = p.to_json().expect("json");
                assert_eq!(form.as_deref(), Some(&fresh), "{n} {symbol} {}", p.id());
            }
            // Only the current set's forms are kept.
            assert_eq!(cache.0.lock().expect("lock").len(), n);
        }
    }
}
