//! The audit trail: one JSON line per request (and, for state-changing
//! order actions, an intent line written and fsync'ed before the request
//! goes upstream), chained so that an edit, a deletion, an insertion or a
//! reordering is detected by `portcullis audit verify`.
//!
//! Each line is the record's fields followed by `"mac"`:
//!
//! ```text
//! {"seq":7,"timestamp":"…","kind":"outcome",…,"mac":"<64 hex>"}
//! ```
//!
//! `mac = HMAC-SHA256(key, previous mac ‖ body)`, where `body` is the line
//! with its `,"mac":"…"` member removed (the bytes exactly as written — no
//! re-serialisation is needed to verify) and the first record's previous
//! mac is 32 zero bytes. Sequence numbers count up by one across files and
//! restarts: a new file continues the chain of the last one.

pub mod checkpoint;
pub mod record;
pub mod replay;
pub mod verify;
pub mod writer;

pub use record::Record;
pub use writer::AuditLog;

use aws_lc_rs::hmac;

/// Length of `,"mac":"` + 64 hex + `"}`.
pub const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;

/// The chain key (from a secret reference: 32+ random bytes, base64).
#[derive(Clone)]
pub struct ChainKey(hmac::Key);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

impl ChainKey {
    pub fn from_bytes(b: &[u8]) -> ChainKey {
        ChainKey(hmac::Key::new(hmac::HMAC_SHA256, b))
    }

    /// From the base64 text of a secret (at least 32 bytes once decoded).
    pub fn from_secret(s: &secrecy::SecretString) -> Result<ChainKey, String> {
        let raw = zeroize::Zeroizing::new(
            crate::credentials::store::decode_any_base64(
                secrecy::ExposeSecret::expose_secret(s).trim(),
            )
            .ok_or("the audit key is not base64")?,
        );
        if raw.len() < 32 {
            return Err("the audit key must be at least 32 bytes (base64)".into());
        }
        Ok(ChainKey::from_bytes(&raw))
    }

    /// The mac of `body` following `prev`.
    pub fn mac(&self, prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(prev);
        ctx.update(body);
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// Splits a line (without its newline) into the body the mac covers and
/// the mac. `None` if the line does not end in a well-formed mac member.
pub fn split_line(line: &[u8]) -> Option<(Vec<u8>, [u8; 32])> {
    if line.len() < MAC_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let cut = line.len() - MAC_SUFFIX_LEN;
    let suffix = &line[cut..];
    if !suffix.starts_with(b",\"mac\":\"") {
        return None;
    }
    let hex = std::str::from_utf8(&suffix[8..72]).ok()?;
    let mut mac = [0u8; 32];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    let mut body = line[..cut].to_vec();
    body.push(b'}');
    Some((body, mac))
}

/// Appends the mac member to a body (`{…}` → `{…,"mac":"…"}`).
pub fn seal_line(body: &[u8], mac: &[u8; 32]) -> Vec<u8> {
    let mut line = Vec::with_capacity(body.len() + MAC_SUFFIX_LEN + 1);
    line.extend_from_slice(&body[..body.len().saturating_sub(1)]);
    line.extend_from_slice(b",\"mac\":\"");
    line.extend_from_slice(crate::keys::hex(mac).as_bytes());
    line.extend_from_slice(b"\"}");
    line
}
