//! Secret references and the one place where secret values are read.
//!
//! A secret is never written inline in the configuration. Every secret field
//! holds a *reference*:
//!
//! * `env:NAME`  — the value of environment variable `NAME`; when `NAME` is
//!   unset, the conventional `NAME_FILE` variable may name a file holding it
//!   (how Docker and Kubernetes mount secrets under `/run/secrets`). Setting
//!   both is an error: the operator meant one of them and we will not guess.
//! * `file:PATH` — the contents of `PATH`.
//!
//! Values are held as [`secrecy::SecretString`]. Error messages name the
//! reference, never the value. Trailing newlines are trimmed (files written by
//! `echo` or by secret managers usually end in one), other whitespace is kept.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Where a secret comes from. `Debug` and `Display` show the reference only.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for SecretRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(name) = s.strip_prefix("env:") {
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(format!(
                    "`env:{name}` is not a valid environment variable name (letters, digits, `_`)"
                ));
            }
            Ok(SecretRef::Env(name.to_owned()))
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("`file:` needs a path".to_owned());
            }
            Ok(SecretRef::File(PathBuf::from(path)))
        } else {
            // Do not echo the value: it may be a secret pasted by mistake.
            Err("a secret must be a reference, `env:NAME` or `file:PATH`; \
                 secret values are never written inline in the configuration"
                .to_owned())
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Why a secret could not be loaded. Names the reference, never a value.
#[derive(Debug)]
pub struct SecretError {
    pub reference: String,
    pub reason: String,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "secret {}: {}", self.reference, self.reason)
    }
}

impl std::error::Error for SecretError {}

/// Reads a secret from its source. An empty value is an error.
pub fn resolve(r: &SecretRef) -> Result<SecretString, SecretError> {
    let err = |reason: String| SecretError {
        reference: r.to_string(),
        reason,
    };
    let raw = match r {
        SecretRef::Env(name) => {
            let direct = std::env::var_os(name);
            let file_var = format!("{name}_FILE");
            let via_file = std::env::var_os(&file_var);
            match (direct, via_file) {
                (Some(_), Some(_)) => {
                    return Err(err(format!(
                        "both {name} and {file_var} are set; set only one"
                    )));
                }
                (Some(v), None) => v
                    .into_string()
                    .map_err(|_| err(format!("{name} is not valid UTF-8")))?,
                (None, Some(path)) => read_file(Path::new(&path))
                    .map_err(|reason| err(format!("via {file_var}: {reason}")))?,
                (None, None) => {
                    return Err(err(format!("neither {name} nor {file_var} is set")));
                }
            }
        }
        SecretRef::File(path) => read_file(path).map_err(err)?,
    };
    let trimmed = raw.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(err("the secret is empty".to_owned()));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

fn read_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not valid UTF-8", path.display()))
}

/// The only way code outside this module reads a secret's value: as a header
/// value for the upstream `Authorization`. Keeping the exposure here means a
/// grep for `expose_secret` finds every use.
pub fn bearer_header(token: &SecretString) -> Result<http::HeaderValue, SecretError> {
    let mut v =
        http::HeaderValue::try_from(format!("Bearer {}", token.expose_secret())).map_err(|_| {
            SecretError {
                reference: "upstream access token".to_owned(),
                reason: "contains bytes not allowed in an HTTP header".to_owned(),
            }
        })?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            "env:SCHWAB_API_KEY".parse::<SecretRef>(),
            Ok(SecretRef::Env("SCHWAB_API_KEY".into()))
        );
        assert_eq!(
            "file:/run/secrets/x".parse::<SecretRef>(),
            Ok(SecretRef::File("/run/secrets/x".into()))
        );
        assert!("env:".parse::<SecretRef>().is_err());
        assert!("env:1BAD".parse::<SecretRef>().is_err());
        assert!("env:BAD-NAME".parse::<SecretRef>().is_err());
        let inline = "hunter2".parse::<SecretRef>().unwrap_err();
        assert!(!inline.contains("hunter2"), "{inline}");
    }

    #[test]
    fn file_secret_is_trimmed_and_empty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "s3cr3t\n").unwrap();
        let s = resolve(&SecretRef::File(p.clone())).unwrap();
        assert_eq!(s.expose_secret(), "s3cr3t");
        std::fs::write(&p, "\n").unwrap();
        let e = resolve(&SecretRef::File(p)).unwrap_err();
        assert!(e.to_string().contains("empty"));
    }

    #[test]
    fn missing_file_error_names_reference_not_value() {
        let e = resolve(&SecretRef::File("/nonexistent/portcullis-secret".into())).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("file:/nonexistent/portcullis-secret"), "{msg}");
    }

    #[test]
    fn env_and_env_file_conventions() {
        // Names unique to this test so parallel tests do not collide.
        let name = "PORTCULLIS_TEST_SECRET_CONVENTION";
        let r = SecretRef::Env(name.into());
        assert!(resolve(&r).unwrap_err().to_string().contains("neither"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "from-file\n").unwrap();
        // SAFETY: this test owns these variable names; no other thread reads them.
        unsafe { std::env::set_var(format!("{name}_FILE"), &p) };
        assert_eq!(resolve(&r).unwrap().expose_secret(), "from-file");
        unsafe { std::env::set_var(name, "direct") };
        let both = resolve(&r).unwrap_err().to_string();
        assert!(both.contains("both"), "{both}");
        assert!(!both.contains("direct") && !both.contains("from-file"));
        unsafe { std::env::remove_var(format!("{name}_FILE")) };
        assert_eq!(resolve(&r).unwrap().expose_secret(), "direct");
        unsafe { std::env::remove_var(name) };
    }
}
