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
//!
//! Rotation: a new file (continuing the chain) once the current one reaches
//! `max_file_bytes` or `max_file_age`. Retention: after a rotation (and at
//! start) a background thread deletes files whose newest record is older
//! than `retention` — each only once it and the link into the next file
//! verify; a file that does not verify stops the sweep and is kept. Every
//! deletion is itself recorded in the trail. Checkpoints: see `checkpoint`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::checkpoint::Signer;
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
    /// False while writes fail (and from a broken start).
    healthy: Arc<AtomicBool>,
}

/// How the trail is written beyond its directory and key.
pub struct Options {
    /// Also print each line to stdout.
    pub stdout: bool,
    pub max_file_bytes: u64,
    pub max_file_age: Duration,
    /// Delete verified files whose newest record is older than this.
    pub retention: Option<Duration>,
    /// Sign the chain head this often.
    pub checkpoint: Option<(Signer, Duration)>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            stdout: false,
            max_file_bytes: 256 << 20,
            max_file_age: Duration::from_secs(86_400),
            retention: None,
            checkpoint: None,
        }
    }
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
        options: Options,
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
        let healthy = Arc::new(AtomicBool::new(broken.is_none()));
        if let (Some(m), Some(_)) = (&metrics, &broken) {
            m.audit_healthy.set(0);
        }
        let writer = Writer {
            dir: dir.to_path_buf(),
            key,
            head,
            broken,
            options,
            metrics: metrics.clone(),
            healthy: healthy.clone(),
            file: None,
        };
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("audit writer thread: {e}"))?;
        let log = AuditLog {
            tx,
            dir: dir.to_path_buf(),
            metrics,
            healthy,
        };
        log.record(start_record(dropped));
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the last write succeeded (false from a broken start on).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
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

fn open_file(dir: &Path, first_seq: u64) -> std::io::Result<(std::fs::File, PathBuf)> {
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let path = dir.join(format!("audit-{first_seq:012}.jsonl"));
    let f = opts.open(&path)?;
    // The new directory entry must survive a crash too.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok((f, path))
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    key: ChainKey,
    head: Head,
    broken: Option<String>,
    options: Options,
    metrics: Option<Arc<Metrics>>,
    healthy: Arc<AtomicBool>,
    /// The run's current file: handle, durable length, when opened.
    file: Option<OpenFile>,
}

struct OpenFile {
    f: std::fs::File,
    path: PathBuf,
    good: u64,
    opened: Instant,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut retry: Vec<Job> = Vec::new();
        // Checkpoints: the seq last signed, and when.
        let mut signed_seq = 0u64;
        let interval = self.options.checkpoint.as_ref().map(|(_, i)| *i);
        let mut last_signed: Option<Instant> = None;
        // Retention sweeps report back here (the deletions are recorded).
        let (swept_tx, swept_rx) = mpsc::channel::<Record>();
        let sweeping = Arc::new(AtomicBool::new(false));
        let mut sweeper: Option<std::thread::JoinHandle<()>> = None;
        let mut sweep_due = self.options.retention.is_some();
        let tick = interval.unwrap_or(Duration::from_secs(60));
        loop {
            let mut batch = std::mem::take(&mut retry);
            while let Ok(r) = swept_rx.try_recv() {
                batch.push(Job {
                    record: r,
                    done: None,
                });
            }
            if batch.is_empty() {
                match rx.recv_timeout(tick) {
                    Ok(j) => batch.push(j),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if self.head.seq > signed_seq {
                            self.checkpoint(&mut signed_seq, &mut last_signed);
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        // A sweep still running: its deletions get their
                        // records before the writer stops.
                        if let Some(h) = sweeper.take() {
                            let _ = h.join();
                        }
                        let mut last: Vec<Job> = swept_rx
                            .try_iter()
                            .map(|record| Job { record, done: None })
                            .collect();
                        if !last.is_empty() {
                            self.write(&mut last, &mut Vec::new());
                        }
                        if self.head.seq > signed_seq {
                            self.checkpoint(&mut signed_seq, &mut last_signed);
                        }
                        return;
                    }
                }
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let (ok, rotated) = self.write(&mut batch, &mut retry);
            if ok {
                let due = match (interval, last_signed) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(i), Some(t)) => t.elapsed() >= i,
                };
                if due {
                    self.checkpoint(&mut signed_seq, &mut last_signed);
                }
                if (rotated || sweep_due)
                    && let Some(keep) = self.options.retention
                    && !sweeping.swap(true, Ordering::AcqRel)
                {
                    sweep_due = false;
                    let current = self.file.as_ref().map(|f| f.path.clone());
                    let (dir, key, tx, flag) = (
                        self.dir.clone(),
                        self.key.clone(),
                        swept_tx.clone(),
                        sweeping.clone(),
                    );
                    let spawned = std::thread::Builder::new()
                        .name("portcullis-audit-retention".into())
                        .spawn(move || {
                            sweep(&dir, &key, keep, current.as_deref(), &tx);
                            flag.store(false, Ordering::Release);
                        });
                    match spawned {
                        Ok(h) => sweeper = Some(h),
                        Err(e) => {
                            sweeping.store(false, Ordering::Release);
                            tracing::error!(error = %e, "audit retention thread could not start");
                        }
                    }
                }
            }
            if !ok && !retry.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Writes one batch (group commit) and tells its waiters. Returns
    /// whether it was written and whether a new file was started for it.
    fn write(&mut self, batch: &mut Vec<Job>, retry: &mut Vec<Job>) -> (bool, bool) {
        let metrics_arc = self.metrics.clone();
        let metrics = metrics_arc.as_deref();
        let mut next = self.head;
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut seqs = Vec::with_capacity(batch.len());
        let mut failed: Option<String> = self.broken.clone();
        if failed.is_none() {
            for job in batch.iter_mut() {
                next.seq += 1;
                job.record.seq = next.seq;
                match serde_json::to_vec(&job.record) {
                    Ok(body) => {
                        let mac = self.key.mac(&next.mac, &body);
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
        // Rotation: the batch goes to a new file when the current one is full or old.
        let mut rotated = false;
        if let Some(f) = &self.file
            && f.good > 0
            && (f.good + buf.len() as u64 > self.options.max_file_bytes
                || f.opened.elapsed() >= self.options.max_file_age)
        {
            self.file = None;
            rotated = true;
        }
        let started = Instant::now();
        let result = match failed {
            Some(e) => Err(e),
            None => self.write_batch(self.head.seq + 1, &buf),
        };
        if let Some(m) = metrics {
            m.audit_fsync.observe(started.elapsed().as_secs_f64());
        }
        match &result {
            Ok(()) => {
                self.head = next;
                self.healthy.store(true, Ordering::Release);
                if let Some(m) = metrics {
                    m.audit_records.inc_by(seqs.len() as u64);
                    m.audit_healthy.set(1);
                }
            }
            Err(e) => {
                self.healthy.store(false, Ordering::Release);
                if let Some(m) = metrics {
                    m.audit_write_errors.inc();
                    m.audit_healthy.set(0);
                }
                tracing::error!(error = %e, records = batch.len(), "audit write failed");
                // Cut the file back to its last durable length; if even
                // that fails, nothing more is written until a restart.
                if let Some(f) = &self.file
                    && self.broken.is_none()
                    && f.f.set_len(f.good).and_then(|()| f.f.sync_data()).is_err()
                {
                    self.broken = Some(format!("{e}; the file could not be cut back"));
                }
            }
        }
        let ok = result.is_ok();
        for (i, job) in std::mem::take(batch).into_iter().enumerate() {
            match job.done {
                Some(done) => {
                    let r = match &result {
                        Ok(()) => seqs.get(i).copied().ok_or_else(|| "not written".to_owned()),
                        Err(e) => Err(e.clone()),
                    };
                    let _ = done.send(r);
                }
                // A fire-and-forget record waits for the next try.
                None if !ok && self.broken.is_none() && retry.len() < MAX_RETRY => retry.push(job),
                None => {}
            }
        }
        if ok && self.options.stdout {
            // After the waiters were told: a slow pipe must not hold orders.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&buf).and_then(|()| out.flush());
        }
        (ok, rotated && ok)
    }

    /// Writes and fsyncs one batch, opening a file on first use.
    fn write_batch(&mut self, first_seq: u64, buf: &[u8]) -> Result<(), String> {
        if self.file.is_none() {
            let (f, path) = open_file(&self.dir, first_seq).map_err(|e| e.to_string())?;
            self.file = Some(OpenFile {
                f,
                path,
                good: 0,
                opened: Instant::now(),
            });
        }
        let Some(f) = self.file.as_mut() else {
            return Err("no audit file".into());
        };
        f.f.write_all(buf)
            .and_then(|()| f.f.sync_data())
            .map_err(|e| e.to_string())?;
        f.good += buf.len() as u64;
        Ok(())
    }

    /// Signs the chain head into checkpoints.jsonl (if configured).
    fn checkpoint(&self, signed_seq: &mut u64, last: &mut Option<Instant>) {
        let Some((signer, _)) = &self.options.checkpoint else {
            return;
        };
        if self.broken.is_some() || self.head.seq == 0 {
            return;
        }
        *last = Some(Instant::now());
        let c = signer.sign(self.head.seq, &self.head.mac, super::record::timestamp());
        match super::checkpoint::append(&self.dir, &c) {
            Ok(line) => {
                *signed_seq = self.head.seq;
                if self.options.stdout {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&line).and_then(|()| out.flush());
                }
            }
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.audit_write_errors.inc();
                }
                tracing::error!(error = %e, "an audit checkpoint could not be written");
            }
        }
    }
}

/// Deletes files whose newest record is older than `keep`, oldest first,
/// each only after it and its link into the next file verify. Stops at the
/// first file that is too young or does not verify. Reports each deletion
/// (and a refusal) as a record for the trail.
fn sweep(
    dir: &Path,
    key: &ChainKey,
    keep: Duration,
    current: Option<&Path>,
    report: &mpsc::Sender<Record>,
) {
    let all = match files(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "audit retention: cannot list the directory");
            return;
        }
    };
    let cutoff = time::OffsetDateTime::now_utc() - keep;
    for pair in all.windows(2) {
        let (old, next) = (&pair[0], &pair[1]);
        if Some(old.as_path()) == current {
            break;
        }
        let newest = match newest_timestamp(old) {
            Some(t) => t,
            None => {
                tracing::warn!(file = %old.display(), "audit retention: no readable timestamp; kept");
                break;
            }
        };
        if newest >= cutoff {
            break;
        }
        let checked = super::verify::verify(&[old.clone(), next.clone()], key, None);
        let name = old
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match checked {
            Ok(r) if r.problem.is_none() => {
                if let Err(e) = std::fs::remove_file(old).and_then(|()| {
                    #[cfg(unix)]
                    std::fs::File::open(dir)?.sync_all()?;
                    Ok(())
                }) {
                    tracing::error!(file = %old.display(), error = %e, "audit retention: could not delete");
                    break;
                }
                tracing::info!(file = %old.display(), "audit retention: deleted a verified file past retention");
                let _ = report.send(Record {
                    action: "AuditRetention".into(),
                    reason: Some(format!(
                        "deleted:{name}:seq_{}-{}",
                        r.first_seq.unwrap_or(0),
                        r.last_seq.unwrap_or(0)
                    )),
                    ..Record::blank("retention")
                });
            }
            other => {
                // Where the damage is (this file, or the next one it must
                // link into): kept, and so is everything after it.
                let (why, at) = match other {
                    Ok(r) => {
                        let at = r.problem.as_ref().map(|p| {
                            let f = p.file.file_name().map(|n| n.to_string_lossy().into_owned());
                            format!("{}:{}", f.unwrap_or_default(), p.line)
                        });
                        (super::verify::describe(&r), at.unwrap_or_default())
                    }
                    Err(e) => (e, "unreadable".into()),
                };
                tracing::error!(file = %old.display(), problem = %why, "audit retention: a file past retention does not verify; kept");
                let _ = report.send(Record {
                    action: "AuditRetention".into(),
                    result: "error",
                    reason: Some(format!("kept_unverified:{name}:damage_at:{at}")),
                    ..Record::blank("retention")
                });
                break;
            }
        }
    }
}

/// The `timestamp` of a file's last complete record.
fn newest_timestamp(path: &Path) -> Option<time::OffsetDateTime> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    // The last line is within the final 64 KiB (records are a few hundred bytes).
    let from = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let complete = &tail[..tail.iter().rposition(|b| *b == b'\n')?];
    let last = complete.rsplit(|b| *b == b'\n').next()?;
    let v: serde_json::Value = serde_json::from_slice(last).ok()?;
    time::OffsetDateTime::parse(
        v.get("timestamp")?.as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
}
