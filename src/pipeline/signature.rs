//! Request signing: HTTP Message Signatures (RFC 9421) with `hmac-sha256`
//! and `ed25519`, and the body bound by `Content-Digest` (RFC 9530).
//!
//! A caller configured with signing keys must sign every request. The
//! signature must cover `@method` and `@target-uri` — and `content-digest`
//! whenever there is a body, whose digest is checked against the bytes
//! received (which are the bytes forwarded) — and carry `created` (within
//! the configured window of now), `keyid` (one of the caller's keys) and
//! `nonce` (never seen before for that key within the window). Anything
//! else — unsigned, a bad signature, a stale or future `created`, a replayed
//! nonce, a component this proxy cannot reproduce exactly — is refused.
//!
//! The `Signature-Input` and `Signature` fields are parsed as RFC 8941
//! structured fields, and the signature base is built as RFC 9421 §2.5
//! specifies, byte for byte; the tests check it against the RFC's vectors.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// One of a caller's signing keys.
pub enum VerifyKey {
    Hmac(Box<aws_lc_rs::hmac::Key>),
    Ed25519([u8; 32]),
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerifyKey::Hmac(_) => "VerifyKey::Hmac(..)",
            VerifyKey::Ed25519(_) => "VerifyKey::Ed25519(..)",
        })
    }
}

impl VerifyKey {
    pub fn alg(&self) -> &'static str {
        match self {
            VerifyKey::Hmac(_) => "hmac-sha256",
            VerifyKey::Ed25519(_) => "ed25519",
        }
    }

    /// An HMAC key from its bytes.
    pub fn hmac(secret: &[u8]) -> VerifyKey {
        VerifyKey::Hmac(Box::new(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            secret,
        )))
    }

    /// An Ed25519 public key: base64 of the 32 raw bytes, or a PEM
    /// `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn ed25519(text: &str) -> Result<VerifyKey, &'static str> {
        const SPKI_PREFIX: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let t = text.trim();
        let raw = if let Some(body) = t
            .strip_prefix("-----BEGIN PUBLIC KEY-----")
            .and_then(|r| r.strip_suffix("-----END PUBLIC KEY-----"))
        {
            let b64: String = body.split_whitespace().collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "the PEM public key is not base64")?;
            der.strip_prefix(&SPKI_PREFIX[..])
                .ok_or("the PEM public key is not an Ed25519 key")?
                .to_vec()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| "an Ed25519 public key is base64 of 32 bytes, or PEM")?
        };
        let key: [u8; 32] = raw
            .try_into()
            .map_err(|_| "an Ed25519 public key is 32 bytes")?;
        Ok(VerifyKey::Ed25519(key))
    }

    fn verify(&self, base: &[u8], signature: &[u8]) -> bool {
        match self {
            VerifyKey::Hmac(k) => aws_lc_rs::hmac::verify(k, base, signature).is_ok(),
            VerifyKey::Ed25519(pk) => {
                aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, pk)
                    .verify(base, signature)
                    .is_ok()
            }
        }
    }
}

/// Why a signature was refused (the `reason` of the 401; no input echoed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigError {
    Missing,
    Malformed,
    UnknownKey,
    /// A required component (`@method`, `@target-uri`, `content-digest`)
    /// is not covered.
    Incomplete,
    /// A component or parameter this proxy does not reproduce.
    Unsupported,
    BadDigest,
    Stale,
    NoNonce,
    Replayed,
    BadSignature,
}

impl SigError {
    pub fn code(self) -> &'static str {
        match self {
            SigError::Missing => "signature_missing",
            SigError::Malformed => "signature_malformed",
            SigError::UnknownKey => "signature_key_unknown",
            SigError::Incomplete => "signature_incomplete",
            SigError::Unsupported => "signature_component_unsupported",
            SigError::BadDigest => "content_digest_mismatch",
            SigError::Stale => "signature_expired",
            SigError::NoNonce => "signature_nonce_missing",
            SigError::Replayed => "signature_replayed",
            SigError::BadSignature => "signature_invalid",
        }
    }
}

// ---- RFC 8941 structured fields (the parts RFC 9421 uses) ----------------

#[derive(Debug, Clone, PartialEq)]
pub enum Bare {
    Int(i64),
    Str(String),
    Token(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

pub type Params = Vec<(String, Bare)>;

#[derive(Debug, Clone, PartialEq)]
pub enum Member {
    Item(Bare, Params),
    Inner(Vec<(Bare, Params)>, Params),
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn key(&mut self) -> Option<String> {
        let start = self.i;
        match self.peek()? {
            b'a'..=b'z' | b'*' => self.i += 1,
            _ => return None,
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.i += 1;
        }
        Some(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn bare(&mut self) -> Option<Bare> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                self.eat(b'-');
                let digits = self.i;
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
                let n = self.i - digits;
                if n == 0 || n > 15 || self.peek() == Some(b'.') {
                    return None; // decimals are not used here
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()?
                    .parse()
                    .ok()
                    .map(Bare::Int)
            }
            b'"' => {
                self.i += 1;
                let mut out = String::new();
                loop {
                    let c = self.peek()?;
                    self.i += 1;
                    match c {
                        b'\\' => {
                            let e = self.peek()?;
                            if e != b'"' && e != b'\\' {
                                return None;
                            }
                            out.push(e as char);
                            self.i += 1;
                        }
                        b'"' => return Some(Bare::Str(out)),
                        0x20..=0x7e => out.push(c as char),
                        _ => return None,
                    }
                }
            }
            b':' => {
                self.i += 1;
                let start = self.i;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=')
                {
                    self.i += 1;
                }
                let b64 = &self.s[start..self.i];
                if !self.eat(b':') {
                    return None;
                }
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .ok()
                    .map(Bare::Bytes)
            }
            b'?' => {
                self.i += 1;
                let v = match self.peek()? {
                    b'1' => true,
                    b'0' => false,
                    _ => return None,
                };
                self.i += 1;
                Some(Bare::Bool(v))
            }
            c if c.is_ascii_alphabetic() || c == b'*' => {
                let start = self.i;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c))
                {
                    self.i += 1;
                }
                Some(Bare::Token(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            _ => None,
        }
    }
    fn params(&mut self) -> Option<Params> {
        let mut out = Vec::new();
        while self.eat(b';') {
            self.sp();
            let k = self.key()?;
            let v = if self.eat(b'=') {
                self.bare()?
            } else {
                Bare::Bool(true)
            };
            if out.iter().any(|(x, _): &(String, Bare)| *x == k) {
                return None; // duplicate parameters are ambiguous: refuse
            }
            out.push((k, v));
        }
        Some(out)
    }
    fn member(&mut self) -> Option<Member> {
        if self.eat(b'(') {
            let mut items = Vec::new();
            loop {
                self.sp();
                if self.eat(b')') {
                    break;
                }
                let b = self.bare()?;
                let p = self.params()?;
                items.push((b, p));
                match self.peek()? {
                    b' ' | b')' => {}
                    _ => return None,
                }
            }
            let p = self.params()?;
            Some(Member::Inner(items, p))
        } else {
            let b = self.bare()?;
            let p = self.params()?;
            Some(Member::Item(b, p))
        }
    }
}

/// Parses an RFC 8941 dictionary. Duplicate keys are refused (RFC 8941
/// keeps the last; for signatures that ambiguity is not worth having).
pub fn parse_dictionary(text: &str) -> Option<Vec<(String, Member)>> {
    let mut p = P {
        s: text.as_bytes(),
        i: 0,
    };
    let mut out: Vec<(String, Member)> = Vec::new();
    p.sp();
    if p.peek().is_none() {
        return Some(out);
    }
    loop {
        let k = p.key()?;
        let m = if p.eat(b'=') {
            p.member()?
        } else {
            Member::Item(Bare::Bool(true), p.params()?)
        };
        if out.iter().any(|(x, _)| *x == k) {
            return None;
        }
        out.push((k, m));
        p.ows();
        if p.peek().is_none() {
            return Some(out);
        }
        if !p.eat(b',') {
            return None;
        }
        p.ows();
        p.peek()?;
    }
}

fn serialize_bare(b: &Bare, out: &mut String) {
    match b {
        Bare::Int(n) => out.push_str(&n.to_string()),
        Bare::Str(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        Bare::Token(t) => out.push_str(t),
        Bare::Bytes(b) => {
            out.push(':');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push(':');
        }
        Bare::Bool(true) => out.push_str("?1"),
        Bare::Bool(false) => out.push_str("?0"),
    }
}

fn serialize_params(p: &Params, out: &mut String) {
    for (k, v) in p {
        out.push(';');
        out.push_str(k);
        if *v != Bare::Bool(true) {
            out.push('=');
            serialize_bare(v, out);
        }
    }
}

fn serialize_inner(items: &[(Bare, Params)], params: &Params) -> String {
    let mut out = String::from("(");
    for (i, (b, p)) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        serialize_bare(b, &mut out);
        serialize_params(p, &mut out);
    }
    out.push(')');
    serialize_params(params, &mut out);
    out
}

// ---- the request as the signer saw it -----------------------------------

/// What a signature can cover, taken from the request as received.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// Host (lower-cased, default port dropped).
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

impl SignedRequest<'_> {
    fn component(&self, name: &str) -> Result<String, SigError> {
        let pq = || match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_owned(),
        };
        Ok(match name {
            "@method" => self.method.to_owned(),
            "@target-uri" => format!("{}://{}{}", self.scheme, self.authority, pq()),
            "@authority" => self.authority.to_owned(),
            "@scheme" => self.scheme.to_owned(),
            "@request-target" => pq(),
            "@path" => self.path.to_owned(),
            "@query" => format!("?{}", self.query.unwrap_or("")),
            n if n.starts_with('@') => return Err(SigError::Unsupported),
            n => {
                let values: Vec<&str> = self
                    .headers
                    .get_all(n)
                    .iter()
                    .map(|v| v.to_str().map(str::trim))
                    .collect::<Result<_, _>>()
                    .map_err(|_| SigError::Unsupported)?;
                if values.is_empty() {
                    return Err(SigError::Incomplete);
                }
                values.join(", ")
            }
        })
    }
}

/// The signature base (RFC 9421 §2.5) for `label`'s covered components and
/// parameters.
pub fn signature_base(
    req: &SignedRequest<'_>,
    items: &[(Bare, Params)],
    params: &Params,
) -> Result<String, SigError> {
    let mut base = String::new();
    let mut seen: Vec<&str> = Vec::new();
    for (item, p) in items {
        let Bare::Str(name) = item else {
            return Err(SigError::Malformed);
        };
        if !p.is_empty() {
            // ;sf ;key ;bs ;req ;tr change the value: not supported.
            return Err(SigError::Unsupported);
        }
        if name.is_empty()
            || name.bytes().any(|b| b.is_ascii_uppercase())
            || seen.contains(&name.as_str())
        {
            return Err(SigError::Malformed);
        }
        seen.push(name);
        let value = req.component(name)?;
        base.push('"');
        base.push_str(name);
        base.push_str("\": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&serialize_inner(items, params));
    Ok(base)
}

// ---- verification --------------------------------------------------------

/// Nonces seen, as digests of `(caller, keyid, nonce)`, until their window
/// passes; bounded. Entries expire in insertion order (one lifetime for
/// all), so eviction is a pop from the front.
pub struct ReplayCache {
    inner: Mutex<Replay>,
    cap: usize,
}

#[derive(Default)]
struct Replay {
    seen: HashMap<[u8; 32], Instant>,
    order: std::collections::VecDeque<([u8; 32], Instant)>,
}

/// Longest nonce accepted.
pub const MAX_NONCE_LEN: usize = 128;

impl ReplayCache {
    pub fn new(cap: usize) -> ReplayCache {
        ReplayCache {
            inner: Mutex::new(Replay::default()),
            cap,
        }
    }

    /// Records the nonce; false if it was seen within its lifetime, or the
    /// cache is full of live entries (fail closed).
    fn first_use(&self, caller: &str, keyid: &str, nonce: &str, keep: Duration) -> bool {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [caller, keyid, nonce] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(ctx.finish().as_ref());
        let mut r = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        while let Some((old, until)) = r.order.front().copied() {
            if until > now {
                break;
            }
            r.order.pop_front();
            if r.seen.get(&old).is_some_and(|u| *u <= now) {
                r.seen.remove(&old);
            }
        }
        if r.seen.get(&k).is_some_and(|until| *until > now) {
            return false;
        }
        if r.seen.len() >= self.cap {
            return false;
        }
        r.seen.insert(k, now + keep);
        r.order.push_back((k, now + keep));
        true
    }
}

/// What the proxy demands of a signature beyond the cryptography.
pub struct Policy<'a> {
    pub caller: &'a str,
    pub keys: &'a [(String, VerifyKey)],
    /// How far `created` may be from now.
    pub window: Duration,
    /// Unix seconds; `created` before this (the process start) is refused,
    /// so a signature seen by an earlier run cannot be replayed after a
    /// restart emptied the nonce cache.
    pub not_before: i64,
    /// If not empty, the authorities `@target-uri` may name.
    pub authorities: &'a [String],
}

/// Checks the request's signature. `body`: the bytes received. `now`: Unix
/// seconds. Only the first signature naming one of the caller's keys is
/// looked at. Returns the key id used.
pub fn verify(
    req: &SignedRequest<'_>,
    body: &[u8],
    policy: &Policy<'_>,
    now: i64,
    replay: &ReplayCache,
) -> Result<String, SigError> {
    let h = req.headers;
    let one = |name: &str| -> Result<&str, SigError> {
        let mut it = h.get_all(name).iter();
        let v = it.next().ok_or(SigError::Missing)?;
        if it.next().is_some() {
            return Err(SigError::Malformed);
        }
        v.to_str().map_err(|_| SigError::Malformed)
    };
    let inputs = parse_dictionary(one("signature-input")?).ok_or(SigError::Malformed)?;
    let sigs = parse_dictionary(one("signature")?).ok_or(SigError::Malformed)?;
    for (label, member) in &inputs {
        let Member::Inner(items, params) = member else {
            return Err(SigError::Malformed);
        };
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let Some(Bare::Str(keyid)) = param("keyid") else {
            continue;
        };
        let Some((_, key)) = policy.keys.iter().find(|(id, _)| id == keyid) else {
            continue;
        };
        if !policy.authorities.is_empty() && !policy.authorities.iter().any(|a| a == req.authority)
        {
            return Err(SigError::BadSignature);
        }
        check_one(req, body, key, items, params, label, &sigs, policy, now)?;
        let Some(Bare::Str(nonce)) = param("nonce") else {
            return Err(SigError::NoNonce);
        };
        if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
            return Err(SigError::Malformed);
        }
        // Only a verified signature may use up a nonce.
        let keep = policy.window * 2 + Duration::from_secs(1);
        if !replay.first_use(policy.caller, keyid, nonce, keep) {
            return Err(SigError::Replayed);
        }
        return Ok(keyid.clone());
    }
    Err(SigError::UnknownKey)
}

#[allow(clippy::too_many_arguments)]
fn check_one(
    req: &SignedRequest<'_>,
    body: &[u8],
    key: &VerifyKey,
    items: &[(Bare, Params)],
    params: &Params,
    label: &str,
    sigs: &[(String, Member)],
    policy: &Policy<'_>,
    now: i64,
) -> Result<(), SigError> {
    let covered = |n: &str| items.iter().any(|(b, _)| *b == Bare::Str(n.to_owned()));
    if !covered("@method") || !covered("@target-uri") {
        return Err(SigError::Incomplete);
    }
    if !body.is_empty() && !covered("content-digest") {
        return Err(SigError::Incomplete);
    }
    let mut created = None;
    for (k, v) in params {
        match (k.as_str(), v) {
            ("created", Bare::Int(t)) => created = Some(*t),
            ("expires", Bare::Int(t)) => {
                if now >= *t {
                    return Err(SigError::Stale);
                }
            }
            ("alg", Bare::Str(a)) => {
                if a != key.alg() {
                    return Err(SigError::BadSignature);
                }
            }
            ("keyid" | "nonce" | "tag", Bare::Str(_)) => {}
            _ => return Err(SigError::Malformed),
        }
    }
    let created = created.ok_or(SigError::Incomplete)?;
    let w = i64::try_from(policy.window.as_secs()).unwrap_or(i64::MAX);
    if (now - created).abs() > w || created < policy.not_before {
        return Err(SigError::Stale);
    }
    if covered("content-digest") {
        check_digest(req.headers, body)?;
    }
    let Some((_, Member::Item(Bare::Bytes(sig), _))) = sigs.iter().find(|(l, _)| l == label) else {
        return Err(SigError::Missing);
    };
    let base = signature_base(req, items, params)?;
    if key.verify(base.as_bytes(), sig) {
        Ok(())
    } else {
        Err(SigError::BadSignature)
    }
}

/// RFC 9530: every `sha-256` / `sha-512` digest given must match the body,
/// and at least one of them must be given.
pub fn check_digest(h: &http::HeaderMap, body: &[u8]) -> Result<(), SigError> {
    let mut values = h.get_all("content-digest").iter();
    let v = values.next().ok_or(SigError::BadDigest)?;
    if values.next().is_some() {
        return Err(SigError::BadDigest);
    }
    let dict = v
        .to_str()
        .ok()
        .and_then(parse_dictionary)
        .ok_or(SigError::BadDigest)?;
    let mut checked = 0;
    for (alg, m) in &dict {
        let Member::Item(Bare::Bytes(d), _) = m else {
            return Err(SigError::BadDigest);
        };
        let algo = match alg.as_str() {
            "sha-256" => &aws_lc_rs::digest::SHA256,
            "sha-512" => &aws_lc_rs::digest::SHA512,
            _ => continue,
        };
        if aws_lc_rs::digest::digest(algo, body).as_ref() != d.as_slice() {
            return Err(SigError::BadDigest);
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(SigError::BadDigest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_fields() {
        let d = parse_dictionary(
            r#"sig1=("@method" "@target-uri" "content-digest");created=1618884473;keyid="k\"1";nonce="n", sig2=:AAEC:"#,
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        let Member::Inner(items, params) = &d[0].1 else {
            panic!()
        };
        assert_eq!(items.len(), 3);
        assert_eq!(params[1], ("keyid".to_owned(), Bare::Str("k\"1".into())));
        assert_eq!(
            serialize_inner(items, params),
            r#"("@method" "@target-uri" "content-digest");created=1618884473;keyid="k\"1";nonce="n""#
        );
        assert_eq!(d[1].1, Member::Item(Bare::Bytes(vec![0, 1, 2]), vec![]));
        for bad in [
            "sig1=(\"a\"",
            "sig1=(\"a\");x=1;x=2",
            "sig1=:nope",
            "Sig1=(\"a\")",
            "a=1, a=2",
            "sig1=(\"a\"),",
            "sig1=(\"a\"\"b\")",
        ] {
            assert!(parse_dictionary(bad).is_none(), "{bad}");
        }
    }

    // ---- RFC 9421 Appendix B (B.1.4, B.1.5, B.2, B.2.5, B.2.6) ----

    fn rfc_headers() -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (n, v) in [
            ("host", "example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            (
                "content-digest",
                "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            ),
            ("content-length", "18"),
        ] {
            h.append(n, v.parse().unwrap());
        }
        h
    }

    const RFC_BODY: &[u8] = br#"{"hello": "world"}"#;

    fn rfc_request(h: &http::HeaderMap) -> SignedRequest<'_> {
        SignedRequest {
            method: "POST",
            scheme: "https",
            authority: "example.com",
            path: "/foo",
            query: Some("param=Value&Pet=dog"),
            headers: h,
        }
    }

    fn inner(input: &str) -> (Vec<(Bare, Params)>, Params) {
        let d = parse_dictionary(input).unwrap();
        let Member::Inner(items, params) = d.into_iter().next().unwrap().1 else {
            panic!()
        };
        (items, params)
    }

    fn sig(value: &str) -> Vec<u8> {
        let d = parse_dictionary(value).unwrap();
        let Member::Item(Bare::Bytes(b), _) = d.into_iter().next().unwrap().1 else {
            panic!()
        };
        b
    }

    #[test]
    fn rfc9421_b25_hmac_sha256() {
        let h = rfc_headers();
        let (items, params) = inner(
            r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
        );
        let base = signature_base(&rfc_request(&h), &items, &params).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@authority\": example.com\n\"content-type\": application/json\n\"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
        );
        let secret = base64::engine::general_purpose::STANDARD
            .decode("uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==")
            .unwrap();
        let key = VerifyKey::hmac(&secret);
        let s = sig("sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:");
        assert!(key.verify(base.as_bytes(), &s));
        assert!(!key.verify(base.replace("example.com", "example.org").as_bytes(), &s));
    }

    #[test]
    fn rfc9421_b26_ed25519() {
        let h = rfc_headers();
        let (items, params) = inner(
            r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
        );
        let base = signature_base(&rfc_request(&h), &items, &params).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
        );
        let key = VerifyKey::ed25519(
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let s = sig(
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:",
        );
        assert!(key.verify(base.as_bytes(), &s));
        assert!(!key.verify(base.replace("POST", "PUT").as_bytes(), &s));
        // The same key as raw base64 (the JWK `x`, re-encoded).
        let raw = base64::engine::general_purpose::STANDARD.encode(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode("JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs")
                .unwrap(),
        );
        assert!(
            VerifyKey::ed25519(&raw)
                .unwrap()
                .verify(base.as_bytes(), &s)
        );
    }

    #[test]
    fn rfc9421_b2_content_digest_and_derived_components() {
        let h = rfc_headers();
        assert_eq!(check_digest(&h, RFC_BODY), Ok(()));
        assert_eq!(
            check_digest(&h, b"{\"hello\": \"world\"}\n"),
            Err(SigError::BadDigest)
        );
        let mut h256 = h.clone();
        h256.insert(
            "content-digest",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
                .parse()
                .unwrap(),
        );
        assert_eq!(check_digest(&h256, RFC_BODY), Ok(()));
        let r = rfc_request(&h);
        // RFC 9421 §2.2 examples for this request.
        assert_eq!(
            r.component("@target-uri").unwrap(),
            "https://example.com/foo?param=Value&Pet=dog"
        );
        assert_eq!(
            r.component("@request-target").unwrap(),
            "/foo?param=Value&Pet=dog"
        );
        assert_eq!(r.component("@query").unwrap(), "?param=Value&Pet=dog");
        assert_eq!(r.component("@scheme").unwrap(), "https");
        assert_eq!(r.component("@query-param"), Err(SigError::Unsupported));
    }

    #[test]
    fn the_rfc_vectors_are_still_refused_by_the_proxys_policy() {
        // Valid signatures, but they cover neither @target-uri nor the body,
        // and carry no nonce: not enough for a trading proxy.
        let mut h = rfc_headers();
        h.insert(
            "signature-input",
            r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#.parse().unwrap(),
        );
        h.insert(
            "signature",
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:".parse().unwrap(),
        );
        let key = VerifyKey::ed25519("JrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=").unwrap();
        let keys = vec![("test-key-ed25519".to_owned(), key)];
        let replay = ReplayCache::new(10);
        let policy = Policy {
            caller: "c",
            keys: &keys,
            window: Duration::from_secs(300),
            not_before: 0,
            authorities: &[],
        };
        let r = verify(&rfc_request(&h), RFC_BODY, &policy, 1_618_884_473, &replay);
        assert_eq!(r, Err(SigError::Incomplete));
    }
}
