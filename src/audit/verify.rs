//! `portcullis audit verify`: walks the chain and reports the first damage.

use std::path::PathBuf;

use super::{ChainKey, split_line};

/// What is wrong at the first bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The record does not match its mac: edited, or written without the
    /// key (a forged insertion in sequence).
    Edited,
    /// Records are missing before this one.
    Deleted,
    /// A record appears twice.
    Inserted,
    /// Records are out of order.
    Reordered,
    /// A line that is not a sealed record.
    Garbage,
}

impl Damage {
    pub fn as_str(self) -> &'static str {
        match self {
            Damage::Edited => "edited",
            Damage::Deleted => "deleted",
            Damage::Inserted => "inserted",
            Damage::Reordered => "reordered",
            Damage::Garbage => "not a record",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub damage: Damage,
    /// The sequence number expected at that point.
    pub expected_seq: u64,
    pub file: PathBuf,
    /// 1-based line in `file`.
    pub line: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The first damage, if any (verification stops there).
    pub problem: Option<Problem>,
    /// A final line cut short (a crash while writing) at the end of the
    /// last file: not damage, but said.
    pub torn: Vec<(PathBuf, usize)>,
    /// The chain did not start at seq 1 (older files retired or not given):
    /// checked from this record on; what came before cannot be judged.
    pub partial_from: Option<u64>,
}

/// Exit codes of `audit verify`.
pub const EXIT_OK: u8 = 0;
pub const EXIT_DAMAGED: u8 = 1;
pub const EXIT_TORN: u8 = 2;

impl Report {
    pub fn exit_code(&self) -> u8 {
        if self.problem.is_some() {
            EXIT_DAMAGED
        } else if !self.torn.is_empty() {
            EXIT_TORN
        } else {
            EXIT_OK
        }
    }
}

/// Files and directories (their `audit-*.jsonl`, in chain order) to check.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            out.extend(super::writer::files(p)?);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn seq_of(body: &[u8]) -> Option<u64> {
    // The body starts with {"seq":N, — read it without a full parse.
    let rest = body.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Checks the chain across `files` (in order). A chain that does not start
/// at seq 1 (older files retired) is taken from its first record on.
pub fn verify(files: &[PathBuf], key: &ChainKey) -> Result<Report, String> {
    if files.is_empty() {
        return Err("no audit files (audit-*.jsonl) to verify".into());
    }
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    let mut prev = [0u8; 32];
    let mut expected: Option<u64> = None;
    // Recent (seq, mac) pairs, to tell a duplicated record from a reordered one.
    let mut recent: std::collections::VecDeque<(u64, [u8; 32])> = Default::default();
    for (fi, file) in files.iter().enumerate() {
        let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let bad = |damage, expected: u64, line| Problem {
            damage,
            expected_seq: expected,
            file: file.clone(),
            line,
        };
        // `split` leaves an empty tail after a final newline; anything else
        // there is a line cut short — only a crash at the very end of the
        // last file leaves one (the writer cuts it off when it restarts).
        if let Some(tail) = lines.pop()
            && !tail.is_empty()
        {
            if fi + 1 < files.len() {
                report.problem = Some(bad(Damage::Garbage, expected.unwrap_or(0), lines.len() + 1));
                return Ok(report);
            }
            report.torn.push((file.clone(), lines.len() + 1));
        }
        // A file named audit-<seq>.jsonl must start at that seq.
        let named: Option<u64> = file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("audit-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse().ok());
        let first_seq = lines
            .first()
            .and_then(|l| split_line(l))
            .and_then(|(b, _)| seq_of(&b));
        if let (Some(n), Some(f)) = (named, first_seq)
            && n != f
        {
            report.problem = Some(bad(Damage::Deleted, n, 1));
            return Ok(report);
        }
        for (i, line) in lines.iter().enumerate() {
            let n = i + 1;
            let exp = expected.unwrap_or(0);
            let Some((body, mac)) = split_line(line) else {
                report.problem = Some(bad(Damage::Garbage, exp, n));
                return Ok(report);
            };
            let Some(seq) = seq_of(&body) else {
                report.problem = Some(bad(Damage::Garbage, exp, n));
                return Ok(report);
            };
            match expected {
                None if seq != 1 => {
                    // Older records retired: start the chain here, on trust.
                    report.partial_from = Some(seq);
                    prev = mac;
                }
                Some(e) if seq != e => {
                    let damage = if seq < e {
                        if recent.iter().any(|(s, m)| *s == seq && *m == mac) {
                            Damage::Inserted
                        } else {
                            Damage::Reordered
                        }
                    } else {
                        // A gap: reordered if the missing record comes next.
                        let next_seq = lines
                            .get(i + 1)
                            .and_then(|l| split_line(l))
                            .and_then(|(b, _)| seq_of(&b));
                        if next_seq.is_some_and(|s| s < seq) {
                            Damage::Reordered
                        } else {
                            Damage::Deleted
                        }
                    };
                    report.problem = Some(bad(damage, e, n));
                    return Ok(report);
                }
                _ => {
                    if key.mac(&prev, &body) != mac {
                        report.problem = Some(bad(Damage::Edited, seq, n));
                        return Ok(report);
                    }
                    prev = mac;
                }
            }
            report.first_seq.get_or_insert(seq);
            report.last_seq = Some(seq);
            report.records += 1;
            expected = Some(seq + 1);
            recent.push_back((seq, mac));
            if recent.len() > 64 {
                recent.pop_front();
            }
        }
    }
    Ok(report)
}

/// The human summary `audit verify` prints.
pub fn describe(r: &Report) -> String {
    let mut out = match (&r.problem, r.first_seq, r.last_seq) {
        (None, Some(a), Some(b)) => format!(
            "OK: {} records (seq {a}–{b}) in {} file(s), chain intact",
            r.records, r.files
        ),
        (None, _, _) => format!("OK: no records in {} file(s)", r.files),
        (Some(p), _, _) => format!(
            "DAMAGED: {} at {}:{} (expected seq {}); {} records before it verified",
            p.damage.as_str(),
            p.file.display(),
            p.line,
            p.expected_seq,
            r.records
        ),
    };
    if let Some(from) = r.partial_from {
        out.push_str(&format!(
            "\nnote: the chain starts at seq {from}, not 1: records before it were not given \
             and cannot be judged (its first record is taken on trust)"
        ));
    }
    for (f, line) in &r.torn {
        out.push_str(&format!(
            "\nnote: {}:{line} is a torn final line (a crash while writing); the records before it are intact",
            f.display()
        ));
    }
    out
}
