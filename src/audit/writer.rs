//! The audit writer: one thread owns the file and the chain. Records queue
//! on a channel; the thread takes everything queued, writes it, and fsyncs
//! once for the whole batch (group commit) before telling the waiters.
//!
//! Files are `audit-<first seq, 12 digits>.jsonl` in the audit directory
//! (mode 0600, the directory 0700); each process start opens a new file that
//! continues the chain of the newest one, and writes a `start` record first.
//! A final line cut short by a crash is cut off at start (the `start` record
//! says how many bytes). A failed write or fsync fails the batch's waiters
//! (the proxy then refuses state-changing requests), the file is cut back to
//! its last durable length, and the batch's other records are retried with
//! the next one; if the file cannot be cut back, every later record fails
//! until a restart. The queue is bounded: when it is full, a waiter gets an
//! error and a fire-and-forget record is counted as lost.

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
    tx: mpsc::SyncSender<Job>,
    dir: PathBuf,
    metrics: Option<Arc<Metrics>>,
}

/// Records queued at most (memory bound while the disk is slow).
const QUEUE: usize = 100_000;
/// How long a request waits for its record to be durable.
const DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Fire-and-forget records of failed batches kept for the next try.
const MAX_RETRY: usize = 10_000;

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
        // A directory that cannot be prepared, or a chain that cannot be
        // recovered, does not stop the proxy: the writer starts broken, every
        // record fails (so orders are refused, reads served) and it says why.
        let prepared = std::fs::create_dir_all(dir)
            .map_err(|e| format!("audit.dir {}: {e}", dir.display()))
            .and_then(|()| {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
                }
                recover_head(dir)
            });
        let (head, dropped, broken) = match prepared {
            Ok((head, dropped)) => (head, dropped, None),
            Err(e) => {
                tracing::error!(error = %e, "the audit trail cannot be written: orders will be refused");
                (
                    Head {
                        seq: 0,
                        mac: [0u8; 32],
                    },
                    0,
                    Some(e),
                )
            }
        };
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let dir_owned = dir.to_path_buf();
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || write_loop(&dir_owned, &key, head, broken, rx, stdout, m.as_deref()))
            .map_err(|e| format!("audit writer thread: {e}"))?;
        let log = AuditLog {
            tx,
            dir: dir.to_path_buf(),
            metrics,
        };
        log.record(start_record(dropped));
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `record` and waits until it is on disk (fsync'ed). The
    /// sequence number it got, or why it could not be written.
    pub async fn durable(&self, record: Record) -> Result<u64, String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .try_send(Job {
                record,
                done: Some(done),
            })
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => "the audit queue is full".to_owned(),
                mpsc::TrySendError::Disconnected(_) => "the audit writer stopped".to_owned(),
            })?;
        match tokio::time::timeout(DURABLE_WAIT, wait).await {
            Err(_) => Err("the audit write did not complete in time".to_owned()),
            Ok(Err(_)) => Err("the audit writer stopped".to_owned()),
            Ok(Ok(r)) => r,
        }
    }

    /// Appends `record` without waiting (it is still group-committed).
    pub fn record(&self, record: Record) {
        if self.tx.try_send(Job { record, done: None }).is_err() {
            if let Some(m) = &self.metrics {
                m.audit_write_errors.inc();
            }
            tracing::error!("the audit queue is full or its writer stopped; a record was lost");
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

/// The first record of every run.
fn start_record(dropped: u64) -> Record {
    Record {
        action: "AuditStart".into(),
        reason: (dropped > 0).then(|| format!("torn_tail_dropped:{dropped}_bytes")),
        ..Record::blank("start")
    }
}

/// The newest file's last complete record: where the chain continues. A
/// final line cut short by a crash is cut off (it never became durable);
/// returns how many bytes were. A newest file left empty is removed.
fn recover_head(dir: &Path) -> Result<(Head, u64), String> {
    let mut head = Head {
        seq: 0,
        mac: [0u8; 32],
    };
    let mut dropped = 0u64;
    let all = files(dir)?;
    if let Some(newest) = all.last() {
        let bytes = std::fs::read(newest).map_err(|e| format!("{}: {e}", newest.display()))?;
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if keep < bytes.len() {
            dropped = (bytes.len() - keep) as u64;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(newest)
                .and_then(|f| f.set_len(keep as u64).and_then(|()| f.sync_all()));
            f.map_err(|e| format!("{}: cutting off a torn record: {e}", newest.display()))?;
            tracing::warn!(file = %newest.display(), bytes = dropped, "cut off a torn audit record left by a crash");
        }
        if keep == 0 {
            std::fs::remove_file(newest).map_err(|e| format!("{}: {e}", newest.display()))?;
        }
    }
    for f in files(dir)?.iter().rev() {
        let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
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
    Ok((head, dropped))
}

fn open_file(dir: &Path, first_seq: u64) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true).create_new(true);
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
    mut broken: Option<String>,
    rx: mpsc::Receiver<Job>,
    stdout: bool,
    metrics: Option<&Metrics>,
) {
    let mut file: Option<(std::fs::File, u64)> = None;
    let mut retry: Vec<Job> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut retry);
        if batch.is_empty() {
            match rx.recv() {
                Ok(j) => batch.push(j),
                Err(_) => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut next = head;
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut seqs = Vec::with_capacity(batch.len());
        let mut failed: Option<String> = broken.clone();
        if failed.is_none() {
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
        }
        let started = Instant::now();
        let result = match failed {
            Some(e) => Err(e),
            None => write_batch(&mut file, dir, head.seq + 1, &buf),
        };
        if let Some(m) = metrics {
            m.audit_fsync.observe(started.elapsed().as_secs_f64());
        }
        match &result {
            Ok(()) => {
                head = next;
                if let Some(m) = metrics {
                    m.audit_records.inc_by(seqs.len() as u64);
                    m.audit_healthy.set(1);
                }
            }
            Err(e) => {
                if let Some(m) = metrics {
                    m.audit_write_errors.inc();
                    m.audit_healthy.set(0);
                }
                tracing::error!(error = %e, records = batch.len(), "audit write failed");
                // Cut the file back to its last durable length; if even
                // that fails, nothing more is written until a restart.
                if let Some((f, good)) = &file
                    && broken.is_none()
                    && f.set_len(*good).and_then(|()| f.sync_data()).is_err()
                {
                    broken = Some(format!("{e}; the file could not be cut back"));
                }
            }
        }
        let ok = result.is_ok();
        for (i, job) in batch.into_iter().enumerate() {
            match job.done {
                Some(done) => {
                    let r = match &result {
                        Ok(()) => seqs.get(i).copied().ok_or_else(|| "not written".to_owned()),
                        Err(e) => Err(e.clone()),
                    };
                    let _ = done.send(r);
                }
                // A fire-and-forget record waits for the next try.
                None if !ok && broken.is_none() && retry.len() < MAX_RETRY => retry.push(job),
                None => {}
            }
        }
        if ok && stdout {
            // After the waiters were told: a slow pipe must not hold orders.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&buf).and_then(|()| out.flush());
        }
        if !ok && !retry.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Writes and fsyncs one batch, opening the run's file on first use.
fn write_batch(
    file: &mut Option<(std::fs::File, u64)>,
    dir: &Path,
    first_seq: u64,
    buf: &[u8],
) -> Result<(), String> {
    if file.is_none() {
        let f = open_file(dir, first_seq).map_err(|e| e.to_string())?;
        *file = Some((f, 0));
    }
    let Some((f, good)) = file.as_mut() else {
        return Err("no audit file".into());
    };
    f.write_all(buf)
        .and_then(|()| f.sync_data())
        .map_err(|e| e.to_string())?;
    *good += buf.len() as u64;
    Ok(())
}
