//! Who the client is, by address, and whether that address may come in.
//!
//! The client address is the TCP peer. Forwarding headers (`Forwarded`,
//! `X-Forwarded-For`, `X-Real-IP`) are believed only when the peer is a
//! configured trusted proxy, and then the rightmost hop that is not itself
//! a trusted proxy is the client: a client can prepend whatever it likes to
//! those headers, but the hops to the right were written by proxies we
//! trust. With no trusted proxies (the default) the headers are ignored.
//!
//! Allow and deny lists (CIDR, IPv4 and IPv6) apply globally, per route
//! group and per caller. Deny wins; a non-empty allow list admits only what
//! it names. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are matched as
//! the IPv4 address they carry.

use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;

/// An address range: `192.0.2.0/24`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                mask32(u32::from(net), self.prefix) == mask32(u32::from(a), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                mask128(u128::from(net), self.prefix) == mask128(u128::from(a), self.prefix)
            }
            _ => false,
        }
    }
}

fn mask32(v: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        v & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn mask128(v: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        v & (u128::MAX << (128 - u32::from(prefix)))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR range"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0-{max}"))?,
        };
        let cidr = Cidr { addr, prefix };
        // Host bits set (`10.0.0.1/8`) are almost always a typo for a
        // narrower range: refuse rather than guess.
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(mask32(u32::from(a), prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask128(u128::from(a), prefix).into()),
        };
        if network != addr {
            return Err(format!(
                "`{s}` has host bits set; the range is {network}/{prefix}"
            ));
        }
        Ok(cidr)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An allow and a deny list.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRules {
    /// Empty: any address (that no deny list names).
    #[serde(default)]
    pub allow: Vec<Cidr>,
    #[serde(default)]
    pub deny: Vec<Cidr>,
}

impl IpRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn denies(&self, ip: IpAddr) -> bool {
        self.deny.iter().any(|c| c.contains(ip))
    }

    /// Admitted by the allow list (an empty list admits everything).
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }

    pub fn admits(&self, ip: IpAddr) -> bool {
        !self.denies(ip) && self.allows(ip)
    }
}

/// The configured lists, ready for the request path.
#[derive(Debug, Default)]
pub struct IpFilter {
    pub trusted: Vec<Cidr>,
    pub global: IpRules,
    pub groups: std::collections::HashMap<String, IpRules>,
}

impl IpFilter {
    pub fn from_config(c: &crate::config::IpFilterConfig) -> IpFilter {
        IpFilter {
            trusted: c.trusted_proxies.clone(),
            global: IpRules {
                allow: c.allow.clone(),
                deny: c.deny.clone(),
            },
            groups: c
                .groups
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The global lists and the group's (deny wins, each allow list must admit).
    pub fn admits(&self, group: Option<&str>, ip: IpAddr) -> bool {
        let g = group.and_then(|g| self.groups.get(g));
        let denied = self.global.denies(ip) || g.is_some_and(|g| g.denies(ip));
        !denied && self.global.allows(ip) && g.is_none_or(|g| g.allows(ip))
    }
}

/// Whether a caller's own list admits `ip` (an empty list admits any).
pub fn caller_admits(allowed: &[Cidr], ip: IpAddr) -> bool {
    allowed.is_empty() || allowed.iter().any(|c| c.contains(ip))
}

/// Why a forwarded address could not be worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedForwarding;

/// The client's address: the peer, or (behind trusted proxies) the
/// rightmost untrusted hop of the forwarding headers.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[Cidr],
) -> Result<IpAddr, MalformedForwarding> {
    let peer = peer.to_canonical();
    if !trusted.iter().any(|c| c.contains(peer)) {
        return Ok(peer);
    }
    let hops = if headers.contains_key(http::header::FORWARDED) {
        forwarded_hops(headers)?
    } else if headers.contains_key("x-forwarded-for") {
        list_hops(headers, "x-forwarded-for")?
    } else if headers.contains_key("x-real-ip") {
        let hops = list_hops(headers, "x-real-ip")?;
        if hops.len() != 1 {
            return Err(MalformedForwarding);
        }
        hops
    } else {
        return Ok(peer);
    };
    // Right to left: the first hop that is not a trusted proxy. If every
    // hop is trusted, the leftmost is the client.
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = *hop;
        if !trusted.iter().any(|c| c.contains(*hop)) {
            break;
        }
    }
    Ok(client)
}

/// Every value of a comma-separated address header, in order, across its
/// header lines.
fn list_hops(headers: &HeaderMap, name: &str) -> Result<Vec<IpAddr>, MalformedForwarding> {
    let mut out = Vec::new();
    for v in headers.get_all(name) {
        let text = v.to_str().map_err(|_| MalformedForwarding)?;
        for item in text.split(',') {
            out.push(parse_node(item.trim())?);
        }
    }
    if out.is_empty() || out.len() > 64 {
        return Err(MalformedForwarding);
    }
    Ok(out)
}

/// The `for=` of every element of `Forwarded` (RFC 7239), in order.
fn forwarded_hops(headers: &HeaderMap) -> Result<Vec<IpAddr>, MalformedForwarding> {
    let mut out = Vec::new();
    for v in headers.get_all(http::header::FORWARDED) {
        let text = v.to_str().map_err(|_| MalformedForwarding)?;
        for element in text.split(',') {
            let mut found = None;
            for pair in element.split(';') {
                let Some((k, val)) = pair.trim().split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("for") {
                    if found.is_some() {
                        return Err(MalformedForwarding);
                    }
                    found = Some(parse_node(val.trim().trim_matches('"'))?);
                }
            }
            out.push(found.ok_or(MalformedForwarding)?);
        }
    }
    if out.is_empty() || out.len() > 64 {
        return Err(MalformedForwarding);
    }
    Ok(out)
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`,
/// `2001:db8::1`. Obfuscated or `unknown` nodes are not addresses.
fn parse_node(s: &str) -> Result<IpAddr, MalformedForwarding> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(MalformedForwarding)?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return Err(MalformedForwarding);
        }
        return rest[..end]
            .parse::<IpAddr>()
            .map(|ip| ip.to_canonical())
            .map_err(|_| MalformedForwarding);
    }
    match s.rsplit_once(':') {
        Some((host, port)) if is_port(port) => host
            .parse::<std::net::Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| MalformedForwarding),
        _ => Err(MalformedForwarding),
    }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn cidr_ranges() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.255.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "v4-mapped v6 is its v4");
        assert!(!c.contains(ip("2001:db8::1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "2001:db8::/129",
            "example.com",
            "10.0.0.0/",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn deny_wins_and_an_empty_allow_list_admits_all() {
        let r = IpRules {
            allow: cidrs(&["10.0.0.0/8"]),
            deny: cidrs(&["10.6.6.0/24"]),
        };
        assert!(r.admits(ip("10.1.2.3")));
        assert!(!r.admits(ip("10.6.6.6")));
        assert!(!r.admits(ip("192.0.2.1")));
        let open = IpRules::default();
        assert!(open.admits(ip("192.0.2.1")));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let spoof = headers(&[("x-forwarded-for", "1.2.3.4")]);
        // An untrusted peer: the headers are ignored.
        assert_eq!(
            client_ip(ip("203.0.113.5"), &spoof, &trusted),
            Ok(ip("203.0.113.5"))
        );
        // No trusted proxies at all (the default).
        assert_eq!(client_ip(ip("10.0.0.1"), &spoof, &[]), Ok(ip("10.0.0.1")));
        // Behind a trusted proxy: the rightmost untrusted hop. A client that
        // prepends a fake address does not get to choose.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.9")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted),
            Ok(ip("198.51.100.7"))
        );
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted),
            Ok(ip("198.51.100.7"))
        );
        // Every hop trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.9")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), Ok(ip("10.9.9.9")));
        // Forwarded wins over X-Forwarded-For; ports and brackets are understood.
        let h = headers(&[
            (
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https",
            ),
            ("x-forwarded-for", "1.1.1.1"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted),
            Ok(ip("2001:db8::7"))
        );
        let h = headers(&[("forwarded", "for=192.0.2.60:8080;by=10.0.0.1")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted),
            Ok(ip("192.0.2.60"))
        );
        let h = headers(&[("x-real-ip", "192.0.2.61")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted),
            Ok(ip("192.0.2.61"))
        );
        // A trusted proxy that sent nothing: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            Ok(ip("10.0.0.1"))
        );
        // Malformed from a trusted proxy: refused rather than guessed.
        for bad in [
            ("x-forwarded-for", "not-an-ip"),
            ("x-forwarded-for", "1.2.3.4,,"),
            ("forwarded", "for=unknown"),
            ("forwarded", "for=_hidden"),
            ("forwarded", "proto=https"),
            ("x-real-ip", "1.2.3.4, 5.6.7.8"),
        ] {
            let h = headers(&[bad]);
            assert_eq!(
                client_ip(ip("10.0.0.1"), &h, &trusted),
                Err(MalformedForwarding),
                "{bad:?}"
            );
        }
        // IPv4-mapped peers are their IPv4 address.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &spoof, &trusted),
            Ok(ip("1.2.3.4"))
        );
    }
}
