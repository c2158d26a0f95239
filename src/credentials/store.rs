//! The encrypted token store: the proxy's Schwab OAuth tokens, in one file.
//!
//! The file is a small JSON envelope around AES-256-GCM ciphertext:
//!
//! ```json
//! {"format":"portcullis-token-store","version":1,"key_id":"3f1c…","nonce":"…","ciphertext":"…"}
//! ```
//!
//! * The key is 32 random bytes, given base64-encoded through a secret
//!   reference (`portcullis token new-key` makes one). `key_id` is the first
//!   8 bytes of SHA-256 over a fixed label and the key, in hex: it tells which
//!   key a file needs without revealing anything about the key.
//! * A fresh random 96-bit nonce is drawn for every write.
//! * The associated data binds the format name, the version and the key id,
//!   so an envelope edited to claim another version or key fails to decrypt.
//! * Writes are atomic: a temporary file in the same directory (mode 0600),
//!   written, fsync'ed, renamed over the old file, and the directory fsync'ed.
//!
//! A wrong key, an edited or truncated file, or a file from a newer version
//! is a clear error naming the file — never a panic, never a silent reset.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Tokens;

const FORMAT: &str = "portcullis-token-store";
const VERSION: u32 = 1;

/// A token store key: 32 bytes, held zeroized-on-drop.
pub struct StoreKey {
    key: LessSafeKey,
    id: String,
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey(id {})", self.id)
    }
}

impl StoreKey {
    /// Parses a key from its base64 text (standard or URL-safe alphabet,
    /// padding optional). The error never contains the text.
    pub fn from_secret(secret: &SecretString) -> Result<StoreKey, StoreError> {
        let text = secret.expose_secret().trim();
        let bytes =
            Zeroizing::new(decode_any_base64(text).ok_or(StoreError::BadKey("it is not base64"))?);
        StoreKey::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<StoreKey, StoreError> {
        if bytes.len() != 32 {
            return Err(StoreError::BadKey("it must decode to exactly 32 bytes"));
        }
        let id = key_id(bytes);
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| StoreError::BadKey("it was refused by the cipher"))?;
        Ok(StoreKey {
            key: LessSafeKey::new(key),
            id,
        })
    }

    /// A new random key, base64 (standard alphabet, padded): what
    /// `portcullis token new-key` prints.
    pub fn generate() -> Result<SecretString, StoreError> {
        let mut b = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut b[..]).map_err(|_| StoreError::Random)?;
        Ok(SecretString::from(
            base64::engine::general_purpose::STANDARD.encode(&b[..]),
        ))
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Base64 in any common alphabet (standard or URL-safe, padded or not).
pub fn decode_any_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(text).ok())
}

fn key_id(key: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"portcullis token store key id\0");
    ctx.update(key);
    crate::keys::hex(&ctx.finish().as_ref()[..8])
}

fn aad(key_id: &str) -> Vec<u8> {
    format!("{FORMAT}/v{VERSION}/{key_id}").into_bytes()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: String,
    version: u32,
    key_id: String,
    nonce: String,
    ciphertext: String,
}

/// Why the store could not be read or written. Names the file and the key
/// id, never a key or a token.
#[derive(Debug)]
pub enum StoreError {
    BadKey(&'static str),
    Missing(PathBuf),
    Io(PathBuf, std::io::Error),
    NotAStore(PathBuf, String),
    NewerVersion(PathBuf, u32),
    WrongKey {
        path: PathBuf,
        file_key: String,
        configured_key: String,
    },
    /// The authentication tag did not verify: edited, truncated or corrupt.
    Tampered(PathBuf),
    Random,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::BadKey(why) => write!(f, "the token store key is not usable: {why}"),
            StoreError::Missing(p) => write!(
                f,
                "no token store at {} (run `portcullis token init` to create it)",
                p.display()
            ),
            StoreError::Io(p, e) => write!(f, "token store {}: {e}", p.display()),
            StoreError::NotAStore(p, why) => {
                write!(f, "{} is not a portcullis token store: {why}", p.display())
            }
            StoreError::NewerVersion(p, v) => write!(
                f,
                "token store {} has format version {v}; this portcullis reads version {VERSION}",
                p.display()
            ),
            StoreError::WrongKey {
                path,
                file_key,
                configured_key,
            } => write!(
                f,
                "token store {} is encrypted under key id {file_key}, but the configured key \
                 has id {configured_key} (wrong key, or the store was rekeyed)",
                path.display()
            ),
            StoreError::Tampered(p) => write!(
                f,
                "token store {} failed authentication: the file was modified, truncated or \
                 is corrupt (restore it from a backup or run `portcullis token init`)",
                p.display()
            ),
            StoreError::Random => write!(f, "the system random number generator failed"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The store file and its key.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    key: StoreKey,
}

impl TokenStore {
    pub fn new(path: PathBuf, key: StoreKey) -> TokenStore {
        TokenStore { path, key }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key_id(&self) -> &str {
        self.key.id()
    }

    /// Reads and decrypts the store.
    pub fn load(&self) -> Result<Tokens, StoreError> {
        let raw = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(self.path.clone()));
            }
            Err(e) => return Err(StoreError::Io(self.path.clone(), e)),
        };
        self.open(&raw)
    }

    /// Decrypts store bytes.
    pub fn open(&self, raw: &[u8]) -> Result<Tokens, StoreError> {
        let not_store = |why: &str| StoreError::NotAStore(self.path.clone(), why.to_owned());
        // Parse the version first, so a newer envelope shape is reported as
        // a newer version rather than as garbage.
        let probe: serde_json::Value =
            serde_json::from_slice(raw).map_err(|_| not_store("not JSON"))?;
        if probe.get("format").and_then(|v| v.as_str()) != Some(FORMAT) {
            return Err(not_store("no `format: portcullis-token-store`"));
        }
        match probe.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(StoreError::NewerVersion(
                    self.path.clone(),
                    u32::try_from(v).unwrap_or(u32::MAX),
                ));
            }
            None => return Err(not_store("no version")),
        }
        let env: Envelope =
            serde_json::from_value(probe).map_err(|e| not_store(&format!("envelope: {e}")))?;
        if env.key_id != self.key.id {
            return Err(StoreError::WrongKey {
                path: self.path.clone(),
                file_key: env.key_id,
                configured_key: self.key.id.clone(),
            });
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce: [u8; NONCE_LEN] = b64
            .decode(&env.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| StoreError::Tampered(self.path.clone()))?;
        let mut buf = Zeroizing::new(
            b64.decode(&env.ciphertext)
                .map_err(|_| StoreError::Tampered(self.path.clone()))?,
        );
        let plain = self
            .key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&env.key_id)),
                &mut buf,
            )
            .map_err(|_| StoreError::Tampered(self.path.clone()))?;
        serde_json::from_slice::<Tokens>(plain).map_err(|e| {
            // Authenticated, so written by portcullis: a bug or a future field.
            not_store(&format!(
                "decrypted contents unreadable: {}",
                json_error_kind(&e)
            ))
        })
    }

    /// Encrypts `tokens` under this store's key (a fresh nonce each time).
    pub fn seal(&self, tokens: &Tokens) -> Result<Vec<u8>, StoreError> {
        let mut buf = Zeroizing::new(
            serde_json::to_vec(tokens).map_err(|_| StoreError::BadKey("tokens did not encode"))?,
        );
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| StoreError::Random)?;
        self.key
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&self.key.id)),
                &mut *buf,
            )
            .map_err(|_| StoreError::Random)?;
        let sealed = buf;
        let b64 = base64::engine::general_purpose::STANDARD;
        let env = Envelope {
            format: FORMAT.to_owned(),
            version: VERSION,
            key_id: self.key.id.clone(),
            nonce: b64.encode(nonce),
            ciphertext: b64.encode(&*sealed),
        };
        let mut out = serde_json::to_vec(&env).map_err(|_| StoreError::Random)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Encrypts and writes `tokens` atomically (mode 0600).
    pub fn save(&self, tokens: &Tokens) -> Result<(), StoreError> {
        let bytes = self.seal(tokens)?;
        write_atomically(&self.path, &bytes).map_err(|e| StoreError::Io(self.path.clone(), e))
    }

    /// An exclusive advisory lock on `<store>.lock`, held by every writer
    /// (`token init`, `token rekey`, the proxy after a refresh) across its
    /// check-and-write, so two writers never interleave. Released on drop.
    pub fn lock(&self) -> Result<std::fs::File, StoreError> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let f = opts
            .open(&path)
            .map_err(|e| StoreError::Io(path.clone(), e))?;
        f.lock().map_err(|e| StoreError::Io(path, e))?;
        Ok(f)
    }

    /// What the file holds now, for noticing changes: SHA-256 of its bytes
    /// (`None` when absent). Length and mtime can miss a same-size rewrite
    /// within one clock tick; the content cannot.
    pub fn stamp(&self) -> Option<[u8; 32]> {
        std::fs::read(&self.path)
            .ok()
            .map(|b| crate::keys::hash_key(&b))
    }
}

/// A serde_json error's category, as a word (its message may quote input).
fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "unexpected fields",
        serde_json::error::Category::Eof => "truncated",
    }
}

/// Temp file in the same directory (0600), write, fsync, rename, fsync dir.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "token-store".into());
    let mut suffix = [0u8; 6];
    let _ = aws_lc_rs::rand::fill(&mut suffix);
    let tmp = dir.join(format!(".{name}.tmp-{}", crate::keys::hex(&suffix)));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            access_token: SecretString::from("at-SECRET-access".to_owned()),
            refresh_token: SecretString::from("rt-SECRET-refresh".to_owned()),
            id_token: None,
            scope: "api".into(),
            access_expires_at: 1_900_000_000,
            refresh_issued_at: 1_899_000_000,
            refresh_expires_at: 1_899_604_800,
        }
    }

    fn store(dir: &Path, key: &[u8; 32]) -> TokenStore {
        TokenStore::new(dir.join("tokens.json"), StoreKey::from_bytes(key).unwrap())
    }

    #[test]
    fn round_trip_with_fresh_nonces_and_private_mode() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), &[7; 32]);
        s.save(&tokens()).unwrap();
        let first = std::fs::read(s.path()).unwrap();
        let text = String::from_utf8(first.clone()).unwrap();
        assert!(!text.contains("SECRET"), "plaintext in the store: {text}");
        let back = s.load().unwrap();
        assert_eq!(back.access_token.expose_secret(), "at-SECRET-access");
        assert_eq!(back.refresh_expires_at, 1_899_604_800);
        s.save(&tokens()).unwrap();
        assert_ne!(first, std::fs::read(s.path()).unwrap(), "nonce reused");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn wrong_key_and_tampering_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), &[7; 32]);
        s.save(&tokens()).unwrap();
        let other = store(d.path(), &[8; 32]);
        let e = other.load().unwrap_err();
        assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
        assert!(e.to_string().contains(s.key_id()), "{e}");

        let raw = std::fs::read_to_string(s.path()).unwrap();
        let mut env: serde_json::Value = serde_json::from_str(&raw).unwrap();
        // Flip one ciphertext byte.
        let ct = env["ciphertext"].as_str().unwrap().to_owned();
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(ct)
            .unwrap();
        bytes[3] ^= 1;
        env["ciphertext"] = base64::engine::general_purpose::STANDARD
            .encode(&bytes)
            .into();
        std::fs::write(s.path(), env.to_string()).unwrap();
        assert!(matches!(s.load().unwrap_err(), StoreError::Tampered(_)));

        // Claiming another key id (to dodge the check) breaks the AAD too.
        let mut env: serde_json::Value = serde_json::from_str(&raw).unwrap();
        env["key_id"] = other.key_id().into();
        std::fs::write(s.path(), env.to_string()).unwrap();
        let forged = TokenStore::new(s.path().to_owned(), StoreKey::from_bytes(&[8; 32]).unwrap());
        assert!(matches!(
            forged.load().unwrap_err(),
            StoreError::Tampered(_)
        ));

        // Truncated, not JSON, newer version, missing.
        std::fs::write(s.path(), &raw[..raw.len() / 2]).unwrap();
        assert!(matches!(s.load().unwrap_err(), StoreError::NotAStore(..)));
        let mut env: serde_json::Value = serde_json::from_str(&raw).unwrap();
        env["version"] = 2.into();
        std::fs::write(s.path(), env.to_string()).unwrap();
        assert!(matches!(
            s.load().unwrap_err(),
            StoreError::NewerVersion(_, 2)
        ));
        std::fs::remove_file(s.path()).unwrap();
        assert!(matches!(s.load().unwrap_err(), StoreError::Missing(_)));
    }

    #[test]
    fn keys_parse_from_base64_and_errors_do_not_echo() {
        let k = StoreKey::generate().unwrap();
        assert!(StoreKey::from_secret(&k).is_ok());
        for bad in ["not base64 at all!", "c2hvcnQ="] {
            let e = StoreKey::from_secret(&SecretString::from(bad.to_owned())).unwrap_err();
            assert!(!e.to_string().contains(bad), "{e}");
        }
        let debug = format!("{:?}", StoreKey::from_secret(&k).unwrap());
        assert!(!debug.contains(k.expose_secret()), "{debug}");
    }
}
