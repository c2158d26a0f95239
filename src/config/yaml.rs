//! The only module that talks to the YAML parser. serde_yaml is archived
//! upstream; keeping every call here means swapping it is a one-file change.

use serde::de::DeserializeOwned;

use super::ConfigIssue;

/// Parses YAML into `T`, turning parser errors into a [`ConfigIssue`] that
/// names the key path and the line.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, ConfigIssue> {
    serde_yaml::from_str(text).map_err(|e| issue_from(&e))
}

fn issue_from(e: &serde_yaml::Error) -> ConfigIssue {
    let line = e.location().map(|l| l.line());
    let mut text = e.to_string();
    // serde_yaml appends " at line L column C"; the line is reported separately.
    if let Some(pos) = text.find(" at line ") {
        text.truncate(pos);
    }
    // serde_yaml prefixes the dotted path ("limits.max_body_byte: unknown field …"
    // or "listen[0]: …"); when it does, use it as the key.
    let (key, message) = match text.split_once(": ") {
        Some((path, rest))
            if !path.is_empty()
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._[]-".contains(&b)) =>
        {
            (path.to_owned(), rest.to_owned())
        }
        _ => ("(document)".to_owned(), text),
    };
    ConfigIssue { key, message, line }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        b: u32,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        a: Inner,
    }

    #[test]
    fn reports_path_and_line() {
        let e = from_str::<Outer>("a:\n  b: 1\n  c: 2\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("unknown field `c`"), "{e:?}");
        assert_eq!(e.key, "a");
        let e = from_str::<Outer>("a:\n  b: x\n").unwrap_err();
        assert_eq!(e.key, "a.b");
        assert_eq!(e.line, Some(2));
    }
}
