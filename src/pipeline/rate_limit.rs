//! Rate limits (governor's GCRA, one token bucket per key):
//!
//! | limit | key | when |
//! | --- | --- | --- |
//! | `per_ip` | client address (IPv6 by prefix) | every request, before authentication |
//! | `auth_failures` | client address | each failed authentication; over budget: locked out |
//! | `per_caller` (+ `groups`, a caller's own `rate_limit`) | caller and route group | after identification |
//! | `per_account_orders` | Schwab account | place / replace / cancel about to be forwarded |
//! | `upstream` | the whole app | every other request about to be forwarded |
//!
//! Buckets are keyed by what the proxy trusts — the client address as
//! `ip_filter` works it out, and the authenticated caller — so rotating a
//! forwarding header never yields a fresh bucket. A limited request is
//! answered 429 with `Retry-After` and never reaches the upstream.
//!
//! Memory stays bounded: each keyed limiter holds at most `max_keys` keys.
//! Idle keys (whose bucket is full again) are dropped every few seconds;
//! a limiter that reaches the cap with every key still busy is emptied
//! (counted in `portcullis_rate_limit_resets_total`) — under a flood from
//! more addresses than that, forgetting them costs nothing an attacker who
//! rotates addresses did not already have.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{RateConfig, RateLimitsConfig};
use crate::swap::Swap;

type Keyed<K> = RateLimiter<K, DashMapStateStore<K>, DefaultClock>;
type Direct = governor::DefaultDirectRateLimiter;

/// The key of a client address: IPv4 whole, IPv6 by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(u32),
    V6(u128),
}

pub fn ip_key(ip: IpAddr, ipv6_prefix: u8) -> IpKey {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpKey::V4(u32::from(a)),
        IpAddr::V6(a) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            IpKey::V6(u128::from(a) & mask)
        }
    }
}

fn quota(r: &RateConfig) -> Quota {
    let burst = NonZeroU32::new(r.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    // `interval` is at least a microsecond for any rate the config accepts.
    Quota::with_period(r.rate.interval().max(Duration::from_micros(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// A keyed limiter with a cap on its keys.
pub struct Bounded<K: Hash + Eq + Clone> {
    limiter: Swap<Keyed<K>>,
    quota: Quota,
    max_keys: usize,
    pub name: &'static str,
}

impl<K: Hash + Eq + Clone> Bounded<K> {
    pub fn new(name: &'static str, rate: &RateConfig, max_keys: usize) -> Bounded<K> {
        let quota = quota(rate);
        Bounded {
            limiter: Swap::new(RateLimiter::dashmap(quota)),
            quota,
            max_keys: max_keys.max(1),
            name,
        }
    }

    /// Takes one request from `key`'s bucket; how long to wait if empty.
    /// Returns whether the limiter was emptied to stay under its cap.
    pub fn check(&self, key: &K) -> (Result<(), Duration>, bool) {
        let mut limiter = self.limiter.load();
        let mut reset = false;
        if limiter.len() >= self.max_keys {
            limiter.retain_recent();
            if limiter.len() >= self.max_keys {
                self.limiter.store(RateLimiter::dashmap(self.quota));
                limiter = self.limiter.load();
                reset = true;
            }
        }
        let r = limiter
            .check_key(key)
            .map_err(|n| n.wait_time_from(DefaultClock::default().now()));
        (r, reset)
    }

    /// Drops idle keys (their bucket is full again) and frees the memory.
    pub fn housekeep(&self) {
        let limiter = self.limiter.load();
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.limiter.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which limit refused a request (the metric label and the 429's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Ip,
    AuthLockout,
    Caller,
    AccountOrders,
    Upstream,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Ip => "per_ip",
            Limit::AuthLockout => "auth_lockout",
            Limit::Caller => "per_caller",
            Limit::AccountOrders => "per_account_orders",
            Limit::Upstream => "upstream",
        }
    }
}

/// A refusal: which limit, and whole seconds until a retry can pass (≥ 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub limit: Limit,
    pub retry_after: u32,
}

fn limited(limit: Limit, wait: Duration) -> Limited {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Limited {
        limit,
        retry_after: u32::try_from(secs).unwrap_or(u32::MAX).max(1),
    }
}

/// Every limit of one proxy.
pub struct RateLimits {
    per_ip: Option<Bounded<IpKey>>,
    auth_failures: Option<Bounded<IpKey>>,
    lockout: Duration,
    /// Addresses locked out, and until when.
    locked: dashmap::DashMap<IpKey, Instant>,
    /// Per caller: the default, one per configured group, and one per caller
    /// with its own rate (keyed by group).
    per_caller: Option<Bounded<(Arc<str>, Arc<str>)>>,
    groups: Vec<(Arc<str>, Bounded<Arc<str>>)>,
    callers: Vec<(Arc<str>, Bounded<Arc<str>>)>,
    per_account_orders: Option<Bounded<Arc<str>>>,
    upstream: Option<Direct>,
    ipv6_prefix: u8,
    max_keys: usize,
    metrics: Option<Arc<crate::admin::metrics::Metrics>>,
}

impl RateLimits {
    pub fn new(
        cfg: &RateLimitsConfig,
        callers: &[crate::config::CallerConfig],
        metrics: Option<Arc<crate::admin::metrics::Metrics>>,
    ) -> RateLimits {
        let max = cfg.max_keys;
        RateLimits {
            per_ip: cfg.per_ip.as_ref().map(|r| Bounded::new("per_ip", r, max)),
            auth_failures: cfg.auth_failures.as_ref().map(|a| {
                Bounded::new(
                    "auth_failures",
                    &RateConfig {
                        rate: a.rate,
                        burst: a.burst,
                    },
                    max,
                )
            }),
            lockout: cfg.auth_failures.map_or(Duration::ZERO, |a| a.lockout.0),
            locked: dashmap::DashMap::new(),
            per_caller: cfg
                .per_caller
                .as_ref()
                .map(|r| Bounded::new("per_caller", r, max)),
            groups: cfg
                .groups
                .iter()
                .map(|(g, r)| (Arc::from(g.as_str()), Bounded::new("per_caller", r, max)))
                .collect(),
            callers: callers
                .iter()
                .filter_map(|c| {
                    c.rate_limit
                        .as_ref()
                        .map(|r| (Arc::from(c.id.as_str()), Bounded::new("per_caller", r, max)))
                })
                .collect(),
            per_account_orders: cfg
                .per_account_orders
                .as_ref()
                .map(|r| Bounded::new("per_account_orders", r, max)),
            upstream: cfg.upstream.as_ref().map(|r| RateLimiter::direct(quota(r))),
            ipv6_prefix: cfg.ipv6_prefix,
            max_keys: max,
            metrics,
        }
    }

    fn count<K: Hash + Eq + Clone>(
        &self,
        b: &Bounded<K>,
        key: &K,
        limit: Limit,
    ) -> Result<(), Limited> {
        let (r, reset) = b.check(key);
        if reset {
            tracing::warn!(
                limit = b.name,
                max_keys = self.max_keys,
                "rate limiter reached its key cap with every key busy; emptied it"
            );
            if let Some(m) = &self.metrics {
                m.rate_limit_resets.with_label_values(&[b.name]).inc();
            }
        }
        r.map_err(|w| self.refused(limited(limit, w)))
    }

    fn refused(&self, l: Limited) -> Limited {
        if let Some(m) = &self.metrics {
            m.rate_limited.with_label_values(&[l.limit.as_str()]).inc();
        }
        l
    }

    /// Before authentication: a locked-out address, then the per-address bucket.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Limited> {
        let key = ip_key(ip, self.ipv6_prefix);
        if let Some(until) = self.locked.get(&key).map(|u| *u) {
            let now = Instant::now();
            if until > now {
                return Err(self.refused(limited(Limit::AuthLockout, until - now)));
            }
            self.locked.remove(&key);
        }
        match &self.per_ip {
            Some(b) => self.count(b, &key, Limit::Ip),
            None => Ok(()),
        }
    }

    /// A failed authentication from `ip`: over the budget, the address is
    /// locked out.
    pub fn auth_failed(&self, ip: IpAddr) {
        let Some(b) = &self.auth_failures else {
            return;
        };
        let key = ip_key(ip, self.ipv6_prefix);
        if b.check(&key).0.is_err() {
            if self.locked.len() >= self.max_keys {
                let now = Instant::now();
                self.locked.retain(|_, until| *until > now);
                if self.locked.len() >= self.max_keys {
                    // Full of live lockouts: keep the newest.
                    self.locked.clear();
                }
            }
            self.locked.insert(key, Instant::now() + self.lockout);
            tracing::warn!(client_ip = %ip, lockout_secs = self.lockout.as_secs(), "too many failed authentications: address locked out");
        }
    }

    /// After identification: the caller's bucket for the route's group.
    pub fn check_caller(&self, caller: &Arc<str>, group: &Arc<str>) -> Result<(), Limited> {
        if let Some((_, b)) = self.callers.iter().find(|(c, _)| c == caller) {
            return self.count(b, group, Limit::Caller);
        }
        if let Some((_, b)) = self.groups.iter().find(|(g, _)| g == group) {
            return self.count(b, caller, Limit::Caller);
        }
        match &self.per_caller {
            Some(b) => self.count(b, &(caller.clone(), group.clone()), Limit::Caller),
            None => Ok(()),
        }
    }

    /// Just before forwarding: an order against its account's bucket, any
    /// other call against the app-wide budget.
    pub fn check_upstream(&self, order_account: Option<&str>) -> Result<(), Limited> {
        match order_account {
            Some(account) => match &self.per_account_orders {
                Some(b) => self.count(b, &Arc::from(account), Limit::AccountOrders),
                None => Ok(()),
            },
            None => match &self.upstream {
                Some(d) => d.check().map_err(|n| {
                    self.refused(limited(
                        Limit::Upstream,
                        n.wait_time_from(DefaultClock::default().now()),
                    ))
                }),
                None => Ok(()),
            },
        }
    }

    /// Drops idle keys everywhere and publishes the key counts.
    pub fn housekeep(&self) {
        let now = Instant::now();
        self.locked.retain(|_, until| *until > now);
        self.locked.shrink_to_fit();
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        let mut add =
            |name: &'static str, n: usize| match counts.iter_mut().find(|(k, _)| *k == name) {
                Some((_, c)) => *c += n,
                None => counts.push((name, n)),
            };
        if let Some(b) = &self.per_ip {
            b.housekeep();
            add("per_ip", b.len());
        }
        if let Some(b) = &self.auth_failures {
            b.housekeep();
            add("auth_failures", b.len());
        }
        if let Some(b) = &self.per_caller {
            b.housekeep();
            add("per_caller", b.len());
        }
        for (_, b) in self.groups.iter().chain(self.callers.iter()) {
            b.housekeep();
            add("per_caller", b.len());
        }
        if let Some(b) = &self.per_account_orders {
            b.housekeep();
            add("per_account_orders", b.len());
        }
        add("auth_lockout", self.locked.len());
        if let Some(m) = &self.metrics {
            for (name, n) in counts {
                m.rate_limit_keys
                    .with_label_values(&[name])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    /// Keys held by the per-address limiter (tests, benches).
    pub fn ip_keys(&self) -> usize {
        self.per_ip.as_ref().map_or(0, Bounded::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateSpec;

    fn rate(count: u32, per_secs: u64, burst: u32) -> RateConfig {
        RateConfig {
            rate: RateSpec {
                count,
                per: Duration::from_secs(per_secs),
            },
            burst,
        }
    }

    fn limits(f: impl FnOnce(&mut RateLimitsConfig)) -> RateLimits {
        let mut cfg = RateLimitsConfig::default();
        f(&mut cfg);
        RateLimits::new(&cfg, &[], None)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_retry() {
        let l = limits(|c| c.per_ip = Some(rate(1, 3600, 3)));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check_ip(ip).is_ok());
        }
        let refused = l.check_ip(ip).unwrap_err();
        assert_eq!(refused.limit, Limit::Ip);
        assert!((3000..=3600).contains(&refused.retry_after), "{refused:?}");
        // Another address has its own bucket.
        assert!(l.check_ip("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_prefix() {
        let l = limits(|c| c.per_ip = Some(rate(1, 3600, 1)));
        assert!(l.check_ip("2001:db8:1:2::1".parse().unwrap()).is_ok());
        // Same /64, another interface id: the same bucket.
        assert!(l.check_ip("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(l.check_ip("2001:db8:1:3::1".parse().unwrap()).is_ok());
        // An IPv4-mapped address is its IPv4 address.
        assert!(l.check_ip("198.51.100.1".parse().unwrap()).is_ok());
        assert!(l.check_ip("::ffff:198.51.100.1".parse().unwrap()).is_err());
    }

    #[test]
    fn failed_authentications_lock_the_address_out() {
        let l = limits(|c| {
            c.per_ip = None;
            if let Some(a) = c.auth_failures.as_mut() {
                a.rate = RateSpec {
                    count: 1,
                    per: Duration::from_secs(3600),
                };
                a.burst = 3;
            }
        });
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        for _ in 0..3 {
            l.auth_failed(ip);
            assert!(l.check_ip(ip).is_ok(), "within the failure budget");
        }
        l.auth_failed(ip);
        let r = l.check_ip(ip).unwrap_err();
        assert_eq!(r.limit, Limit::AuthLockout);
        assert!((290..=300).contains(&r.retry_after), "{r:?}");
        assert!(l.check_ip("203.0.113.10".parse().unwrap()).is_ok());
    }

    #[test]
    fn callers_groups_and_accounts_have_their_own_buckets() {
        let l = limits(|c| {
            c.per_caller = Some(rate(1, 3600, 2));
            c.groups.clear();
            c.groups.insert("orders".into(), rate(1, 3600, 1));
            c.per_account_orders = Some(rate(1, 3600, 1));
            c.upstream = Some(rate(1, 3600, 2));
        });
        let (bot, other): (Arc<str>, Arc<str>) = ("bot".into(), "other".into());
        let (md, orders): (Arc<str>, Arc<str>) = ("market_data".into(), "orders".into());
        assert!(l.check_caller(&bot, &md).is_ok());
        assert!(l.check_caller(&bot, &md).is_ok());
        assert_eq!(l.check_caller(&bot, &md).unwrap_err().limit, Limit::Caller);
        assert!(l.check_caller(&other, &md).is_ok());
        assert!(
            l.check_caller(&bot, &orders).is_ok(),
            "another group's bucket"
        );
        assert!(
            l.check_caller(&bot, &orders).is_err(),
            "the orders group's own rate"
        );
        assert!(l.check_upstream(Some("ACCT1")).is_ok());
        assert_eq!(
            l.check_upstream(Some("ACCT1")).unwrap_err().limit,
            Limit::AccountOrders
        );
        assert!(l.check_upstream(Some("ACCT2")).is_ok());
        assert!(l.check_upstream(None).is_ok());
        assert!(l.check_upstream(None).is_ok());
        assert_eq!(l.check_upstream(None).unwrap_err().limit, Limit::Upstream);
    }

    #[test]
    fn a_flood_from_a_million_addresses_stays_under_the_key_cap() {
        let l = limits(|c| {
            c.per_ip = Some(rate(1, 3600, 5));
            c.max_keys = 10_000;
        });
        for i in 0..1_000_000u128 {
            // A new /64 every time: the worst case for the per-prefix key.
            let ip = std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | (i << 64));
            let _ = l.check_ip(IpAddr::V6(ip));
            assert!(l.ip_keys() <= 10_000);
        }
        l.housekeep();
        assert!(l.ip_keys() <= 10_000);
    }
}
