//! The audit writer: one thread owns the file and the chain. Records queue
//! on a channel; the thread takes everything queued, writes it, and fsyncs
//! once for the whole batch (group commit) before telling the waiters.
//!
//! Files are `audit-<first seq, 12 digits>.jsonl` in the audit directory
//! (mode 0600, the directory 0700); each process start opens a new file that
//! continues the chain of the newest one. A failed write or fsync fails the
//! batch's waiters (the proxy then refuses state-changing requests) and the
//! next batch goes to a new file, continuing from the last durable record.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use super::{ChainKey, Record, seal_line, split_line};
use crate::admin::metrics::Metrics;

struct Job {
    record: Record,
    done: Option<tokio::sync::oneshot::Sender<Result<u64, String>>>,
}

/// Handle to the audit writer thread.
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    dir: PathBuf,
}

/// Where the chain stands: the last durable record.
#[derive(Clone, Copy)]
struct Head {
    seq: u64,
    mac: [u8; 32],
}

const MAX_BATCH: usize = 4096;

impl AuditLog {
    /// Opens (creating) the audit directory, recovers the chain head from
    /// the newest file, and starts the writer thread.
    pub fn open(
        dir: &Path,
        key: ChainKey,
        stdout: bool,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<AuditLog, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("audit.dir {}: {e}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let head = recover_head(dir)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let dir_owned = dir.to_path_buf();
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || write_loop(&dir_owned, &key, head, rx, stdout, metrics.as_deref()))
            .map_err(|e| format!("audit writer thread: {e}"))?;
        Ok(AuditLog {
            tx,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `record` and waits until it is on disk (fsync'ed). The
    /// sequence number it got, or why it could not be written.
    pub async fn durable(&self, record: Record) -> Result<u64, String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job {
                record,
                done: Some(done),
            })
            .map_err(|_| "the audit writer stopped".to_owned())?;
        wait.await
            .map_err(|_| "the audit writer stopped".to_owned())?
    }

    /// Appends `record` without waiting (it is still group-committed).
    pub fn record(&self, record: Record) {
        if self.tx.send(Job { record, done: None }).is_err() {
            tracing::error!("the audit writer stopped; a record was not written");
        }
    }
}

/// The audit files of `dir`, in chain order.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The newest file's last complete record: where the chain continues.
fn recover_head(dir: &Path) -> Result<Head, String> {
    let mut head = Head {
        seq: 0,
        mac: [0u8; 32],
    };
    for f in files(dir)?.iter().rev() {
        let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        // Ignore a torn last line (a crash mid-write): it never became durable.
        let complete = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => &bytes[..i],
            None => continue,
        };
        let last = complete.rsplit(|b| *b == b'\n').next().unwrap_or(b"");
        let (body, mac) = split_line(last).ok_or_else(|| {
            format!(
                "{}: the last record is not a sealed audit record; run `portcullis audit verify`",
                f.display()
            )
        })?;
        let seq = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("seq").and_then(|s| s.as_u64()))
            .ok_or_else(|| format!("{}: the last record has no seq", f.display()))?;
        head = Head { seq, mac };
        break;
    }
    Ok(head)
}

fn open_file(dir: &Path, first_seq: u64) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let f = opts.open(dir.join(format!("audit-{first_seq:012}.jsonl")))?;
    // The new directory entry must survive a crash too.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(f)
}

fn write_loop(
    dir: &Path,
    key: &ChainKey,
    mut head: Head,
    rx: mpsc::Receiver<Job>,
    stdout: bool,
    metrics: Option<&Metrics>,
) {
    let mut file: Option<std::fs::File> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut next = head;
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut seqs = Vec::with_capacity(batch.len());
        let mut failed: Option<String> = None;
        for job in &mut batch {
            next.seq += 1;
            job.record.seq = next.seq;
            match serde_json::to_vec(&job.record) {
                Ok(body) => {
                    let mac = key.mac(&next.mac, &body);
                    buf.extend_from_slice(&seal_line(&body, &mac));
                    buf.push(b'\n');
                    next.mac = mac;
                    seqs.push(next.seq);
                }
                Err(e) => {
                    failed = Some(format!("encoding a record: {e}"));
                    break;
                }
            }
        }
        let started = Instant::now();
        let result = match failed {
            Some(e) => Err(e),
            None => (|| {
                if file.is_none() {
                    file = Some(open_file(dir, head.seq + 1)?);
                }
                let f = file.as_mut().ok_or(std::io::ErrorKind::Other)?;
                f.write_all(&buf)?;
                f.sync_data()
            })()
            .map_err(|e| e.to_string()),
        };
        if let Some(m) = metrics {
            m.audit_fsync.observe(started.elapsed().as_secs_f64());
        }
        match &result {
            Ok(()) => {
                head = next;
                if let Some(m) = metrics {
                    m.audit_records.inc_by(seqs.len() as u64);
                }
                if stdout {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf).and_then(|()| out.flush());
                }
            }
            Err(e) => {
                // Nothing of this batch counts; the next one starts a new
                // file from the last durable record.
                file = None;
                if let Some(m) = metrics {
                    m.audit_write_errors.inc();
                }
                tracing::error!(error = %e, records = batch.len(), "audit write failed");
            }
        }
        for (i, job) in batch.into_iter().enumerate() {
            if let Some(done) = job.done {
                let r = match &result {
                    Ok(()) => seqs.get(i).copied().ok_or_else(|| "not written".to_owned()),
                    Err(e) => Err(e.clone()),
                };
                let _ = done.send(r);
            }
        }
    }
}
