//! Proxy API keys: generation, hashing, and the published demo keys.
//!
//! A key is 256 random bits, so a single SHA-256 is the right hash: there is
//! nothing to brute-force that a slow password hash would protect (unlike a
//! human password). The configuration stores only `sha256:<hex>`.

use aws_lc_rs::digest;
use base64::Engine;

/// The demo callers' bearer keys, one per role. They are published in the
/// README, so their hashes are refused by every configuration except the demo.
pub const DEMO_KEYS: [(&str, &str, &str); 4] = [
    ("demo-viewer", "Viewer", "demo-viewer-key"),
    ("demo-trader", "Trader", "demo-trader-key"),
    ("demo-admin", "Admin", "demo-admin-key"),
    ("demo-superadmin", "SuperAdmin", "demo-superadmin-key"),
];

pub const KEY_PREFIX: &str = "pcs_";

/// SHA-256 of a presented key.
pub fn hash_key(key: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub fn hash_key_hex(key: &str) -> String {
    hex(&hash_key(key.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses `sha256:<64 hex digits>` (either case).
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hexpart = s.strip_prefix("sha256:")?;
    if hexpart.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hexpart.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

pub fn demo_key_hashes() -> Vec<[u8; 32]> {
    DEMO_KEYS
        .iter()
        .map(|(_, _, k)| hash_key(k.as_bytes()))
        .collect()
}

/// A new random key and its configuration hash.
pub fn generate() -> Result<(String, String), aws_lc_rs::error::Unspecified> {
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw)?;
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let hash = format!("sha256:{}", hash_key_hex(&key));
    Ok((key, hash))
}

/// Constant-time equality of two digests.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_matches_its_hash() {
        let (k, h) = generate().unwrap();
        assert!(k.starts_with(KEY_PREFIX));
        assert_eq!(k.len(), KEY_PREFIX.len() + 43);
        assert_eq!(parse_hash(&h), Some(hash_key(k.as_bytes())));
        let (k2, _) = generate().unwrap();
        assert_ne!(k, k2);
    }

    #[test]
    fn parse_hash_rejects_garbage() {
        assert!(parse_hash("sha256:zz").is_none());
        assert!(parse_hash(&format!("sha1:{}", "a".repeat(64))).is_none());
        assert!(parse_hash(&format!("sha256:{}", "g".repeat(64))).is_none());
        assert!(parse_hash(&format!("sha256:{}", "A".repeat(64))).is_some());
    }

    #[test]
    fn known_vector() {
        // sha256("abc")
        assert_eq!(
            hash_key_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
