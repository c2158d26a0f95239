//! Where policy text comes from (a directory, or the shipped set compiled
//! into the binary) and how it becomes a validated [`PolicyBundle`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Effect, PolicyId, PolicySet, Schema, ValidationMode, Validator};

use super::PolicyBundle;

pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The shipped schema and policies, so the binary runs with no files.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        SCHEMA_FILE,
        include_str!("../../policies/schema.cedarschema"),
    ),
    ("roles.cedar", include_str!("../../policies/roles.cedar")),
    (
        "guards/max-order-quantity.cedar",
        include_str!("../../policies/guards/max-order-quantity.cedar"),
    ),
    (
        "guards/symbol-deny-list.cedar",
        include_str!("../../policies/guards/symbol-deny-list.cedar"),
    ),
    (
        "guards/max-notional.cedar",
        include_str!("../../policies/guards/max-notional.cedar"),
    ),
    (
        "guards/no-short-or-options.cedar",
        include_str!("../../policies/guards/no-short-or-options.cedar"),
    ),
    (
        "guards/market-hours.cedar",
        include_str!("../../policies/guards/market-hours.cedar"),
    ),
    (
        "guards/trading-ip-range.cedar",
        include_str!("../../policies/guards/trading-ip-range.cedar"),
    ),
];

/// One problem with a policy set, located where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssue {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PolicyIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

fn issue(file: &str, line: Option<usize>, message: impl Into<String>) -> PolicyIssue {
    PolicyIssue {
        file: file.to_owned(),
        line,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// `dir/schema.cedarschema` plus `files` (relative to `dir`), or every
    /// `*.cedar` directly in `dir` when `files` is empty.
    Dir { dir: PathBuf, files: Vec<PathBuf> },
    /// The shipped set; `files` picks policy files from [`EMBEDDED`].
    Embedded { files: Vec<PathBuf> },
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::Dir { dir, .. } => write!(f, "{}", dir.display()),
            PolicySource::Embedded { .. } => write!(f, "built-in policies"),
        }
    }
}

/// Name and text of each file; the schema first.
pub type Files = Vec<(String, String)>;

impl PolicySource {
    pub fn dir(&self) -> Option<&Path> {
        match self {
            PolicySource::Dir { dir, .. } => Some(dir),
            PolicySource::Embedded { .. } => None,
        }
    }

    /// Reads the schema and the policy files.
    pub fn read(&self) -> Result<Files, Vec<PolicyIssue>> {
        match self {
            PolicySource::Embedded { files } => {
                let get = |name: &str| {
                    EMBEDDED
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                        .ok_or_else(|| {
                            vec![issue(
                                name,
                                None,
                                format!(
                                    "not a built-in policy file (built in: {}); set policies.dir to use your own",
                                    EMBEDDED
                                        .iter()
                                        .map(|(n, _)| *n)
                                        .filter(|n| *n != SCHEMA_FILE)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            )]
                        })
                };
                let mut out = vec![get(SCHEMA_FILE)?];
                for f in files {
                    out.push(get(&f.to_string_lossy())?);
                }
                Ok(out)
            }
            PolicySource::Dir { dir, files } => {
                let read = |rel: &Path| {
                    let path = dir.join(rel);
                    let shown = path.display().to_string();
                    // Size first: a huge file is refused without reading it.
                    let meta =
                        std::fs::metadata(&path).map_err(|e| issue(&shown, None, e.to_string()))?;
                    if !meta.is_file() {
                        return Err(issue(&shown, None, "not a regular file"));
                    }
                    if meta.len() > MAX_FILE_BYTES as u64 {
                        return Err(issue(
                            &shown,
                            None,
                            format!("larger than {MAX_FILE_BYTES} bytes"),
                        ));
                    }
                    std::fs::read_to_string(&path)
                        .map(|t| (rel.to_string_lossy().into_owned(), t))
                        .map_err(|e| issue(&shown, None, e.to_string()))
                };
                let mut out = Vec::new();
                let mut issues = Vec::new();
                match read(Path::new(SCHEMA_FILE)) {
                    Ok(f) => out.push(f),
                    Err(i) => issues.push(i),
                }
                let names: Vec<PathBuf> = if files.is_empty() {
                    match list_cedar_files(dir) {
                        Ok(n) => n,
                        Err(e) => {
                            issues.push(issue(&dir.display().to_string(), None, e));
                            Vec::new()
                        }
                    }
                } else {
                    files.clone()
                };
                if names.is_empty() && issues.is_empty() {
                    issues.push(issue(
                        &dir.display().to_string(),
                        None,
                        "no policy files (*.cedar); with no policy every request is denied",
                    ));
                }
                for n in &names {
                    match read(n) {
                        Ok(f) => out.push(f),
                        Err(i) => issues.push(i),
                    }
                }
                if issues.is_empty() {
                    Ok(out)
                } else {
                    Err(issues)
                }
            }
        }
    }

    /// The content hash of the files as they are now, computed exactly as
    /// a bundle's `hash`: the change watcher compares the two, so an edit
    /// made at any moment after (or during) a load is seen. `None` when the
    /// source cannot change.
    pub fn fingerprint(&self) -> Option<String> {
        let PolicySource::Dir { .. } = self else {
            return None;
        };
        Some(match self.read() {
            Ok(files) => content_hash(&files),
            // Unreadable files: a state of its own, so that it is tried once.
            Err(issues) => {
                let described: Files = issues
                    .iter()
                    .map(|i| (i.to_string(), String::new()))
                    .collect();
                content_hash(&described)
            }
        })
    }
}

/// Every `*.cedar` file under `dir`, subdirectories included, relative to
/// `dir`, sorted (for `policy validate`).
pub fn cedar_files_recursive(dir: &Path) -> Result<Vec<PathBuf>, String> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), String> {
        if depth > 8 {
            return Ok(());
        }
        let rd = std::fs::read_dir(root.join(rel))
            .map_err(|e| format!("cannot read {}: {e}", root.join(rel).display()))?;
        for entry in rd.flatten() {
            let name = rel.join(entry.file_name());
            // metadata() follows symbolic links (the depth bound stops loops).
            match std::fs::metadata(root.join(&name)) {
                Ok(m) if m.is_dir() => walk(root, &name, out, depth + 1)?,
                _ if is_cedar_name(&name) => out.push(name),
                _ => {}
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out, 0)?;
    out.sort();
    Ok(out)
}

/// `*.cedar` (any case), for directory listings.
fn is_cedar_name(name: &Path) -> bool {
    name.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("cedar"))
}

/// The `*.cedar` files directly in `dir`. Symbolic links are followed (the
/// usual way to enable a guard, and how Kubernetes mounts a ConfigMap); a
/// `*.cedar` entry that is not a readable regular file is reported by the
/// reader rather than silently skipped.
fn list_cedar_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read the directory: {e}"))?;
    let mut names: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| PathBuf::from(e.file_name()))
        .filter(|n| is_cedar_name(n))
        .collect();
    names.sort();
    Ok(names)
}

/// Largest policy or schema file accepted.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Deepest bracket nesting accepted. Cedar's parser recurses per level and
/// overflows the stack on a few hundred (aborting the process), so deeper
/// text is refused before it reaches the parser.
pub const MAX_NESTING: usize = 64;

/// Refuses text the Cedar parser should not see: too large, nested deeper
/// than [`MAX_NESTING`] (brackets counted outside strings and `//`
/// comments), or with more than [`MAX_NESTING`] `if` expressions. A first
/// line of defence; parsing also runs on a thread with a large stack (see
/// `PolicyBundle::load`).
fn check_shape(text: &str) -> Result<(), (Option<usize>, String)> {
    if text.len() > MAX_FILE_BYTES {
        return Err((None, format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let bytes = text.as_bytes();
    let (mut depth, mut i, mut line, mut ifs) = (0usize, 0usize, 1usize, 0usize);
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\n' => line += 1,
            b'"' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    match c {
                        b'\\' => i += 1,
                        b'"' => break,
                        b'\n' => line += 1,
                        _ => {}
                    }
                    i += 1;
                }
            }
            // Cedar ends a `//` comment at `\n` or `\r`; so must this scan,
            // or brackets after a lone `\r` would escape the count.
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while bytes.get(i).is_some_and(|c| *c != b'\n' && *c != b'\r') {
                    i += 1;
                }
                continue;
            }
            // `if … then … else` nests without brackets; each level is a
            // level of recursion in Cedar too.
            b'i' if bytes.get(i + 1) == Some(&b'f')
                && (i == 0 || !is_ident_byte(bytes[i - 1]))
                && !bytes.get(i + 2).copied().is_some_and(is_ident_byte) =>
            {
                ifs += 1;
                if ifs > MAX_NESTING {
                    return Err((
                        Some(line),
                        format!("more than {MAX_NESTING} `if` expressions in one file"),
                    ));
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err((
                        Some(line),
                        format!("brackets nested deeper than {MAX_NESTING}"),
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The first label's line of a Cedar diagnostic.
fn diag_line(d: &dyn miette::Diagnostic, text: &str) -> Option<usize> {
    d.labels()
        .and_then(|mut l| l.next())
        .map(|l| line_of(text, l.offset()))
}

/// Every message of a diagnostic and its help, on one line.
fn diag_message(d: &dyn miette::Diagnostic, top: &dyn std::error::Error) -> String {
    let mut m = top.to_string();
    if let Some(h) = d.help() {
        m.push_str(&format!(" (help: {h})"));
    }
    m
}

fn valid_reason(r: &str) -> bool {
    (1..=64).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_id(r: &str) -> bool {
    (1..=128).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// `sha256:<hex>` over every file's name and bytes: a set's identity, and
/// what the change watcher compares against.
fn content_hash(files: &Files) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (name, text) in files {
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(text.as_bytes());
        ctx.update(&[0]);
    }
    format!("sha256:{}", crate::keys::hex(ctx.finish().as_ref()))
}

/// Parses, re-ids (`@id`), collects `@reason`s and validates `files`.
pub fn build(files: Files) -> Result<PolicyBundle, Vec<PolicyIssue>> {
    let mut issues = Vec::new();
    let hash = content_hash(&files);
    let mut files = files.into_iter();
    let Some((schema_name, schema_text)) = files.next() else {
        return Err(vec![issue(SCHEMA_FILE, None, "missing")]);
    };

    let schema = match check_shape(&schema_text) {
        Err(why) => {
            issues.push(issue(&schema_name, why.0, why.1));
            None
        }
        Ok(()) => match Schema::from_cedarschema_str(&schema_text) {
            Ok((s, _warnings)) => Some(s),
            Err(e) => {
                issues.push(issue(
                    &schema_name,
                    diag_line(&e, &schema_text),
                    diag_message(&e, &e),
                ));
                None
            }
        },
    };

    let mut set = PolicySet::new();
    let mut reasons: HashMap<PolicyId, Arc<str>> = HashMap::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    let mut texts: HashMap<String, String> = HashMap::new();
    for (name, text) in files {
        if let Err((line, why)) = check_shape(&text) {
            issues.push(issue(&name, line, why));
            continue;
        }
        let parsed = match PolicySet::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                for err in e.iter() {
                    issues.push(issue(&name, diag_line(err, &text), diag_message(err, err)));
                }
                continue;
            }
        };
        if parsed.policies().next().is_none() && parsed.templates().next().is_none() {
            // An empty file is most often one caught half-written (or a
            // guard truncated by mistake): refusing it keeps the old set.
            issues.push(issue(
                &name,
                None,
                "contains no policy (delete the file to remove its policies)",
            ));
            continue;
        }
        if parsed.templates().next().is_some() {
            issues.push(issue(
                &name,
                None,
                "policy templates (?principal / ?resource slots) are not supported; write the entity out",
            ));
        }
        for p in parsed.policies() {
            // Cedar keeps no per-policy position we can reach; the @id
            // annotation's own line is the best pointer (none without one).
            let line = p
                .annotation("id")
                .and_then(|id| text.find(&format!("@id(\"{id}\")")))
                .map(|off| line_of(&text, off));
            let Some(id) = p.annotation("id") else {
                issues.push(issue(
                    &name,
                    line,
                    "every policy needs an @id(\"...\") annotation (its id in decisions and audit records)",
                ));
                continue;
            };
            if !valid_id(id) {
                issues.push(issue(
                    &name,
                    line,
                    format!("@id(\"{id}\"): use letters, digits, `-`, `_`, `.`, `:` (at most 128)"),
                ));
                continue;
            }
            if let Some(first) = origin.get(id) {
                issues.push(issue(
                    &name,
                    line,
                    format!("@id(\"{id}\") is already used in {first}"),
                ));
                continue;
            }
            let pid = PolicyId::new(id);
            match p.annotation("reason") {
                Some(r) if !valid_reason(r) => issues.push(issue(
                    &name,
                    line,
                    format!("@reason(\"{r}\"): use lower-case letters, digits and `_` (at most 64); it is shown to callers"),
                )),
                Some(r) if p.effect() == Effect::Forbid => {
                    reasons.insert(pid.clone(), Arc::from(r));
                }
                _ => {}
            }
            if let Err(e) = set.add(p.new_id(pid)) {
                issues.push(issue(&name, line, e.to_string()));
                continue;
            }
            origin.insert(id.to_owned(), name.clone());
        }
        texts.insert(name, text);
    }

    let Some(schema) = schema else {
        return Err(issues);
    };
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    for e in result.validation_errors() {
        let file = origin
            .get(&e.policy_id().to_string())
            .cloned()
            .unwrap_or_else(|| "?".into());
        let line = texts.get(&file).and_then(|t| diag_line(e, t));
        issues.push(issue(&file, line, diag_message(e, e)));
    }
    let warnings = result
        .validation_warnings()
        .map(|w| {
            let file = origin
                .get(&w.policy_id().to_string())
                .cloned()
                .unwrap_or_else(|| "?".into());
            let line = texts.get(&file).and_then(|t| diag_line(w, t));
            issue(&file, line, diag_message(w, w))
        })
        .collect();
    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(PolicyBundle {
        schema,
        set,
        hash,
        reasons,
        files: origin,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_symlinked_policy_file_is_loaded_like_a_regular_one() {
        let d = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(d.path().join(name), text).unwrap();
        write(SCHEMA_FILE, EMBEDDED[0].1);
        std::fs::create_dir(d.path().join("guards")).unwrap();
        write(
            "guards/g.cedar",
            "@id(\"g\") forbid (principal, action, resource);",
        );
        write(
            "roles.cedar",
            "@id(\"r\") permit (principal, action, resource);",
        );
        std::os::unix::fs::symlink("guards/g.cedar", d.path().join("g.cedar")).unwrap();
        let src = PolicySource::Dir {
            dir: d.path().to_owned(),
            files: Vec::new(),
        };
        let bundle = PolicyBundle::load(&src).unwrap();
        assert_eq!(bundle.policy_count(), 2, "the linked guard is in the set");
        // A dangling link is an error, not a silently smaller set.
        std::os::unix::fs::symlink("guards/missing.cedar", d.path().join("m.cedar")).unwrap();
        let issues = PolicyBundle::load(&src).err().unwrap();
        assert!(
            issues.iter().any(|i| i.file.ends_with("m.cedar")),
            "{issues:?}"
        );
    }

    #[test]
    fn comments_end_at_a_carriage_return_as_in_cedar() {
        let hidden = format!("// c\r{}", "(".repeat(MAX_NESTING + 1));
        assert!(check_shape(&hidden).is_err());
        let ifs = format!(
            "{}true{}",
            "if true then ".repeat(MAX_NESTING + 1),
            " else false".repeat(MAX_NESTING + 1)
        );
        assert!(check_shape(&ifs).is_err());
        // Identifiers containing `if` are not `if`s.
        assert!(check_shape(&"iff diff if_x xif ".repeat(100)).is_ok());
    }

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        let ok = format!("// {}\n\"{}\"", "(".repeat(100), "[".repeat(100));
        assert!(check_shape(&ok).is_ok());
        let deep = format!("\n{}", "(".repeat(MAX_NESTING + 1));
        assert_eq!(check_shape(&deep).unwrap_err().0, Some(2));
    }
}
