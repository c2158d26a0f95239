//! Signed checkpoints of the audit chain. Every `audit.checkpoint.interval`
//! (when records were added) the writer signs the chain head — its sequence
//! number and mac — with an ed25519 key and appends the checkpoint to
//! `checkpoints.jsonl` in the audit directory:
//!
//! ```text
//! {"seq":1234,"mac":"<64 hex>","timestamp":"…","key_id":"<16 hex>","sig":"<base64>"}
//! ```
//!
//! The signature covers `portcullis-audit-checkpoint-v1|<seq>|<mac>|<timestamp>`.
//! Cutting records off the end of the trail (or rewriting the chain with the
//! HMAC key) no longer goes unseen: `audit verify` finds a checkpoint past
//! the end of the chain, or one whose mac the chain does not have. Anyone
//! holding only the public key can check that the checkpoints are genuine
//! (`audit verify-checkpoints`). Records written after the last checkpoint
//! are protected by the chain only: the interval bounds what a tail cut can
//! remove unseen.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "checkpoints.jsonl";
const DOMAIN: &str = "portcullis-audit-checkpoint-v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    /// The chain mac of record `seq`, hex.
    pub mac: String,
    pub timestamp: String,
    /// Which key signed (first 8 bytes of SHA-256 of the public key, hex).
    pub key_id: String,
    /// ed25519 signature, base64.
    pub sig: String,
}

fn message(seq: u64, mac: &str, timestamp: &str) -> String {
    format!("{DOMAIN}|{seq}|{mac}|{timestamp}")
}

fn key_id(public: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
    crate::keys::hex(&d.as_ref()[..8])
}

/// The private half: signs checkpoints.
pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.key_id)
    }
}

impl Signer {
    /// From the base64 text of a 32-byte ed25519 seed.
    pub fn from_secret(s: &secrecy::SecretString) -> Result<Signer, String> {
        let seed = zeroize::Zeroizing::new(
            crate::credentials::store::decode_any_base64(
                secrecy::ExposeSecret::expose_secret(s).trim(),
            )
            .ok_or("the checkpoint key is not base64")?,
        );
        if seed.len() != 32 {
            return Err("the checkpoint key must be a 32-byte ed25519 seed (base64)".into());
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| "the checkpoint key is not a usable ed25519 seed".to_owned())?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Signer { pair, key_id })
    }

    /// The public key, base64 (what a verifier needs).
    pub fn public_key(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.pair.public_key().as_ref())
    }

    pub fn sign(&self, seq: u64, mac: &[u8; 32], timestamp: String) -> Checkpoint {
        let mac = crate::keys::hex(mac);
        let sig = self.pair.sign(message(seq, &mac, &timestamp).as_bytes());
        Checkpoint {
            seq,
            mac,
            timestamp,
            key_id: self.key_id.clone(),
            sig: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
        }
    }
}

/// A new signing key: (seed, public key), both base64.
pub fn generate() -> Result<(secrecy::SecretString, String), String> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut seed[..]).map_err(|_| "no randomness".to_owned())?;
    let signer = Signer::from_secret(&secrecy::SecretString::from(
        base64::engine::general_purpose::STANDARD.encode(&seed[..]),
    ))?;
    Ok((
        secrecy::SecretString::from(base64::engine::general_purpose::STANDARD.encode(&seed[..])),
        signer.public_key(),
    ))
}

/// The public half: checks checkpoints.
pub struct Verifier {
    public: Vec<u8>,
    key_id: String,
}

impl Verifier {
    /// From a base64 public key (32 bytes).
    pub fn from_base64(text: &str) -> Result<Verifier, String> {
        let public = crate::credentials::store::decode_any_base64(text.trim())
            .ok_or("the public key is not base64")?;
        if public.len() != 32 {
            return Err("an ed25519 public key is 32 bytes (base64)".into());
        }
        let key_id = key_id(&public);
        Ok(Verifier { public, key_id })
    }

    pub fn check(&self, c: &Checkpoint) -> bool {
        let Some(sig) = crate::credentials::store::decode_any_base64(&c.sig) else {
            return false;
        };
        c.key_id == self.key_id
            && UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(message(c.seq, &c.mac, &c.timestamp).as_bytes(), &sig)
                .is_ok()
    }
}

/// Appends a checkpoint to `dir/checkpoints.jsonl` and fsyncs it.
pub fn append(dir: &Path, c: &Checkpoint) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(c).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let path = dir.join(FILE_NAME);
    let created = !path.exists();
    let mut f = opts.open(&path)?;
    f.write_all(&line)?;
    f.sync_data()?;
    if created {
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(line)
}

/// What a checkpoints file holds.
#[derive(Debug, Default)]
pub struct Loaded {
    pub checkpoints: Vec<Checkpoint>,
    /// Lines that are not checkpoints (1-based), and a torn final line.
    pub bad_lines: Vec<usize>,
    pub torn: bool,
}

/// Reads a checkpoints file, line by line.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = std::io::BufReader::new(f);
    let mut out = Loaded::default();
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        let got = r
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if got == 0 {
            break;
        }
        n += 1;
        if buf.last() != Some(&b'\n') {
            out.torn = true;
            break;
        }
        match serde_json::from_slice::<Checkpoint>(&buf) {
            Ok(c) => out.checkpoints.push(c),
            Err(_) => out.bad_lines.push(n),
        }
    }
    Ok(out)
}

/// The checkpoints file that belongs with `paths` (the first directory's).
pub fn beside(paths: &[PathBuf]) -> Option<PathBuf> {
    paths
        .iter()
        .find(|p| p.is_dir())
        .map(|d| d.join(FILE_NAME))
        .filter(|p| p.exists())
}

/// The mac of a checkpoint as bytes.
pub fn mac_bytes(c: &Checkpoint) -> Option<[u8; 32]> {
    let mut mac = [0u8; 32];
    if c.mac.len() != 64 {
        return None;
    }
    for (i, b) in mac.iter_mut().enumerate() {
        *b = u8::from_str_radix(c.mac.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_checkpoints_verify_and_any_change_does_not() {
        let (seed, public) = generate().unwrap();
        let signer = Signer::from_secret(&seed).unwrap();
        assert_eq!(signer.public_key(), public);
        let v = Verifier::from_base64(&public).unwrap();
        let c = signer.sign(42, &[7u8; 32], "2026-12-05T03:00:00.000Z".into());
        assert!(v.check(&c));
        for tampered in [
            Checkpoint {
                seq: 43,
                ..c.clone()
            },
            Checkpoint {
                mac: "00".repeat(32),
                ..c.clone()
            },
            Checkpoint {
                timestamp: "2026-12-05T03:00:01.000Z".into(),
                ..c.clone()
            },
            Checkpoint {
                sig: "AAAA".into(),
                ..c.clone()
            },
        ] {
            assert!(!v.check(&tampered), "{tampered:?}");
        }
        let (_, other) = generate().unwrap();
        assert!(!Verifier::from_base64(&other).unwrap().check(&c));
        assert_eq!(mac_bytes(&c), Some([7u8; 32]));
        assert!(Signer::from_secret(&secrecy::SecretString::from("c2hvcnQ=".to_owned())).is_err());
    }
}
