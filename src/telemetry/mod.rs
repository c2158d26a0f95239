//! Log output: human or JSON lines, filter from the configuration or the
//! `PORTCULLIS_LOG` environment variable. Secrets never reach a log line:
//! they are `SecretString`s or sensitive header values, neither of which
//! formats its contents.

mod json;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Keeps the background log writer alive; dropping it flushes what is queued.
pub type LogGuard = Option<tracing_appender::non_blocking::WorkerGuard>;

/// Installs the global subscriber. Lines are formatted on the calling thread
/// and written by a background thread; when its queue is full, callers wait
/// (no line is dropped). Hold the returned guard until exit.
pub fn init(format: LogFormat, level: &str) -> LogGuard {
    let filter = std::env::var("PORTCULLIS_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("portcullis-log")
        // Buffered: the writer thread flushes after each batch it drains, so
        // under load many lines share one write(2), and at rest each line is
        // written at once.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A second init (tests, the demo starting twice) keeps the first subscriber.
    let installed = match format {
        LogFormat::Json => builder
            .fmt_fields(json::JsonMembers)
            .event_format(json::JsonLine)
            .try_init(),
        LogFormat::Human => builder.try_init(),
    };
    installed.is_ok().then_some(guard)
}
