//! `portcullis audit verify`: walks the chain and reports the first damage.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::checkpoint::{Checkpoint, Verifier};
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
    /// The chain ends before a signed checkpoint: records were cut off the end.
    Truncated,
    /// The record a checkpoint signed has a different mac: the chain was
    /// recomputed (by someone holding the chain key) after it was signed.
    Rewritten,
}

impl Damage {
    pub fn as_str(self) -> &'static str {
        match self {
            Damage::Edited => "edited",
            Damage::Deleted => "deleted",
            Damage::Inserted => "inserted",
            Damage::Reordered => "reordered",
            Damage::Garbage => "not a record",
            Damage::Truncated => "truncated (records a checkpoint signed are missing from the end)",
            Damage::Rewritten => "rewritten (differs from what a checkpoint signed)",
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
    /// The newest checkpoint given, and how many checkpoints the chain matched.
    pub last_checkpoint: Option<u64>,
    pub checkpoints_matched: usize,
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

/// One file's lines, read as a stream with one line of lookahead.
struct Lines {
    r: std::io::BufReader<std::fs::File>,
    peeked: Option<Option<(Vec<u8>, bool)>>,
    path: PathBuf,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Lines {
            r: std::io::BufReader::with_capacity(1 << 20, f),
            peeked: None,
            path: path.to_path_buf(),
        })
    }

    /// The next line without its newline, and whether it had one.
    fn read(&mut self) -> Result<Option<(Vec<u8>, bool)>, String> {
        let mut buf = Vec::with_capacity(512);
        let n = self
            .r
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        if n == 0 {
            return Ok(None);
        }
        let terminated = buf.last() == Some(&b'\n');
        if terminated {
            buf.pop();
        }
        Ok(Some((buf, terminated)))
    }

    fn next_line(&mut self) -> Result<Option<(Vec<u8>, bool)>, String> {
        match self.peeked.take() {
            Some(p) => Ok(p),
            None => self.read(),
        }
    }

    fn peek(&mut self) -> Result<Option<&(Vec<u8>, bool)>, String> {
        if self.peeked.is_none() {
            self.peeked = Some(self.read()?);
        }
        Ok(self.peeked.as_ref().and_then(|p| p.as_ref()))
    }
}

fn seq_of_line(line: &[u8]) -> Option<u64> {
    split_line(line).and_then(|(b, _)| seq_of(&b))
}

/// Checks the chain across `files` (in order), reading each as a stream.
/// A chain that does not start at seq 1 (older files retired) is taken from
/// its first record on. With `checkpoints`, also checks that the chain
/// reaches every checkpoint and has the mac each one signed.
pub fn verify(
    files: &[PathBuf],
    key: &ChainKey,
    checkpoints: Option<&[Checkpoint]>,
) -> Result<Report, String> {
    if files.is_empty() {
        return Err("no audit files (audit-*.jsonl) to verify".into());
    }
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    // The mac each checkpoint signed, by seq (the newest signing wins).
    let mut signed: std::collections::HashMap<u64, [u8; 32]> = Default::default();
    let mut last_checkpoint: Option<u64> = None;
    for c in checkpoints.unwrap_or(&[]) {
        if let Some(mac) = super::checkpoint::mac_bytes(c) {
            signed.insert(c.seq, mac);
            last_checkpoint = last_checkpoint.max(Some(c.seq));
        }
    }
    report.last_checkpoint = last_checkpoint;
    let mut prev = [0u8; 32];
    let mut expected: Option<u64> = None;
    // Recent (seq, mac) pairs, to tell a duplicated record from a reordered one.
    let mut recent: std::collections::VecDeque<(u64, [u8; 32])> = Default::default();
    for (fi, file) in files.iter().enumerate() {
        let last_file = fi + 1 == files.len();
        let mut lines = Lines::open(file)?;
        let bad = |damage, expected: u64, line| Problem {
            damage,
            expected_seq: expected,
            file: file.clone(),
            line,
        };
        // A file named audit-<seq>.jsonl must start at that seq.
        let named: Option<u64> = file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("audit-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse().ok());
        let first_seq = lines.peek()?.and_then(|(l, _)| seq_of_line(l));
        if let (Some(n), Some(f)) = (named, first_seq)
            && n != f
        {
            report.problem = Some(bad(Damage::Deleted, n, 1));
            return Ok(report);
        }
        let mut n = 0usize;
        while let Some((line, terminated)) = lines.next_line()? {
            n += 1;
            let exp = expected.unwrap_or(0);
            // A line without its newline: only a crash at the very end of
            // the last file leaves one (the writer cuts it off at restart).
            if !terminated {
                if !last_file {
                    report.problem = Some(bad(Damage::Garbage, exp, n));
                    return Ok(report);
                }
                report.torn.push((file.clone(), n));
                break;
            }
            let Some((body, mac)) = split_line(&line) else {
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
                        let next_seq = lines.peek()?.and_then(|(l, _)| seq_of_line(l));
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
            // A checkpoint signed a different record here: the chain was
            // rewritten (by someone holding the chain key).
            if let Some(want) = signed.get(&seq) {
                if *want != mac {
                    report.problem = Some(bad(Damage::Rewritten, seq, n));
                    return Ok(report);
                }
                report.checkpoints_matched += 1;
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
        if last_file
            && let (Some(cp), Some(last)) = (last_checkpoint, report.last_seq)
            && cp > last
        {
            // Records a checkpoint vouched for are gone from the end.
            report.problem = Some(bad(Damage::Truncated, last + 1, n + 1));
            return Ok(report);
        }
    }
    Ok(report)
}

/// What `audit verify-checkpoints` found.
#[derive(Debug, Default)]
pub struct CheckpointReport {
    pub count: usize,
    pub last_seq: Option<u64>,
    /// 1-based lines whose signature does not verify (or that are not checkpoints).
    pub forged: Vec<usize>,
    /// 1-based lines whose seq goes backwards.
    pub out_of_order: Vec<usize>,
    pub torn: bool,
}

impl CheckpointReport {
    pub fn exit_code(&self) -> u8 {
        if !self.forged.is_empty() || !self.out_of_order.is_empty() {
            EXIT_DAMAGED
        } else if self.torn {
            EXIT_TORN
        } else {
            EXIT_OK
        }
    }
}

/// Checks every checkpoint's signature with the public key alone, and that
/// the sequence numbers never go back.
pub fn verify_checkpoints(path: &Path, verifier: &Verifier) -> Result<CheckpointReport, String> {
    let loaded = super::checkpoint::load(path)?;
    let mut r = CheckpointReport {
        torn: loaded.torn,
        forged: loaded.bad_lines.clone(),
        ..CheckpointReport::default()
    };
    // Line numbers of the good lines, skipping the bad ones.
    let mut line = 0usize;
    for c in &loaded.checkpoints {
        line += 1;
        while loaded.bad_lines.contains(&line) {
            line += 1;
        }
        if !verifier.check(c) {
            r.forged.push(line);
            continue;
        }
        if r.last_seq.is_some_and(|l| c.seq < l) {
            r.out_of_order.push(line);
        }
        r.count += 1;
        r.last_seq = r.last_seq.max(Some(c.seq));
    }
    r.forged.sort_unstable();
    Ok(r)
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
    match r.last_checkpoint {
        Some(cp) if r.problem.is_none() => out.push_str(&format!(
            "\ncheckpoints: {} matched, the newest at seq {cp}{}",
            r.checkpoints_matched,
            match r.last_seq {
                Some(l) if l > cp => format!(
                    "; {} newer record(s) are protected by the chain only",
                    l - cp
                ),
                _ => String::new(),
            }
        )),
        None => out.push_str(
            "\nnote: no checkpoints checked: records cut off the end would not be noticed",
        ),
        _ => {}
    }
    for (f, line) in &r.torn {
        out.push_str(&format!(
            "\nnote: {}:{line} is a torn final line (a crash while writing); the records before it are intact",
            f.display()
        ));
    }
    out
}
