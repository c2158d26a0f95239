//! Log output: human or JSON lines, filter from the configuration or the
//! `PORTCULLIS_LOG` environment variable. Secrets never reach a log line:
//! they are `SecretString`s or sensitive header values, neither of which
//! formats its contents.

mod json;
mod writer;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub use writer::LogGuard;

/// Installs the global subscriber. Lines are formatted on the calling thread
/// and written to stderr in batches by a background thread (see
/// [`writer`]); no line is dropped. Hold the returned guard until exit:
/// dropping it writes what is pending. `None` when a subscriber was already
/// installed (tests, the demo starting twice) or no thread could be started.
pub fn init(format: LogFormat, level: &str) -> Option<LogGuard> {
    init_to(format, level, std::io::stderr())
}

/// [`init`] writing to `out` instead of stderr (tests capture the log).
pub fn init_to<W: std::io::Write + Send + 'static>(
    format: LogFormat,
    level: &str,
    out: W,
) -> Option<LogGuard> {
    let filter = std::env::var("PORTCULLIS_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (writer, guard) = writer::spawn(out).ok()?;
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
