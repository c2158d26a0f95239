//! The log writer: lines are appended to a shared buffer by the threads that
//! log them and written to the output by one background thread, in batches.
//!
//! Why not a channel per line: under load a channel wakes the writer thread
//! for every line, and each wake costs a futex, a context switch and a
//! `write(2)` — measurable CPU per request on a small machine. Here a
//! request thread only takes a lock and copies its line; the writer thread
//! is woken only when the buffer goes from empty to non-empty, writes
//! everything gathered, then waits `BATCH_PAUSE` before looking again, so
//! under load many lines share one write and at rest each line still goes
//! out at once.
//!
//! Nothing is dropped: when `MAX_PENDING` bytes are waiting (the output is
//! stuck or slower than the logging), loggers wait for room. Dropping the
//! [`LogGuard`] writes whatever is pending and stops the thread.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer thread gathers lines after a write before the next.
const BATCH_PAUSE: Duration = Duration::from_millis(20);
/// Bytes pending beyond which loggers wait for the writer (backpressure).
const MAX_PENDING: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// The writer thread is waiting for the buffer to become non-empty.
    idle: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when the writer has work (empty → non-empty, or closing).
    work: Condvar,
    /// Signalled when the writer has taken the pending bytes.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind; keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` handed to tracing-subscriber: cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Keeps the writer thread alive; dropping it writes what is pending.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread for `out`.
pub fn spawn<W: Write + Send + 'static>(out: W) -> std::io::Result<(BatchWriter, LogGuard)> {
    let shared = Arc::new(Shared::default());
    let for_thread = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("portcullis-log".into())
        .spawn(move || write_loop(&for_thread, out))?;
    Ok((
        BatchWriter {
            shared: Arc::clone(&shared),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_loop<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut state = shared.lock();
            while state.pending.is_empty() && !state.closed {
                state.idle = true;
                state = shared
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.idle = false;
            std::mem::swap(&mut batch, &mut state.pending);
            state.closed
        };
        shared.room.notify_all();
        if !batch.is_empty() {
            // Nowhere to report a failing log output; the lines are lost
            // and logging carries on (the audit trail has its own path).
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            if batch.capacity() > MAX_PENDING {
                batch.shrink_to(64 * 1024);
            }
        }
        if closed {
            // Lines logged while closing were taken in this batch or are
            // picked up by one more pass.
            if shared.lock().pending.is_empty() {
                return;
            }
            continue;
        }
        std::thread::sleep(BATCH_PAUSE);
    }
}

impl Write for BatchWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        while state.pending.len() >= MAX_PENDING && !state.closed {
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let wake = state.pending.is_empty() && state.idle;
        state.pending.extend_from_slice(bytes);
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_every_thread_arrives_whole_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (writer, guard) = spawn(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        w.write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> =
                (0..5_000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines are whole and in order");
        }
    }

    #[test]
    fn a_line_at_rest_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let (mut writer, _guard) = spawn(sink.clone()).unwrap();
        // Let the writer thread go idle first.
        std::thread::sleep(BATCH_PAUSE * 3);
        writer.write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"alone\n");
    }

    #[test]
    fn a_stuck_output_makes_loggers_wait_instead_of_growing_without_bound() {
        // An output that blocks until released.
        #[derive(Clone)]
        struct Gate(Arc<(Mutex<bool>, Condvar)>, Sink);
        impl Write for Gate {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                let (open, cv) = &*self.0;
                let mut o = open.lock().unwrap();
                while !*o {
                    o = cv.wait(o).unwrap();
                }
                self.1.write(bytes)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Gate(Arc::default(), Sink::default());
        let (writer, guard) = spawn(gate.clone()).unwrap();
        let line = vec![b'x'; 64 * 1024];
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let producer = {
            let mut w = writer.clone();
            let written = Arc::clone(&written);
            let line = line.clone();
            std::thread::spawn(move || {
                for _ in 0..400 {
                    w.write_all(&line).unwrap();
                    written.fetch_add(line.len(), std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let before = written.load(std::sync::atomic::Ordering::SeqCst);
        // One batch is held by the stuck output, at most MAX_PENDING more wait.
        assert!(
            before <= 2 * MAX_PENDING + line.len(),
            "{before} bytes accepted while the output was stuck"
        );
        assert!(!producer.is_finished(), "the producer should be waiting");
        *gate.0.0.lock().unwrap() = true;
        gate.0.1.notify_all();
        producer.join().unwrap();
        drop(guard);
        assert_eq!(gate.1.0.lock().unwrap().len(), 400 * line.len());
    }
}
