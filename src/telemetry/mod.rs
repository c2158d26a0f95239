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

/// The id of the request a task is handling, written on every log line the
/// task logs while handling it (JSON: a `request_id` member; human: a
/// `request_id=…` prefix). A task-local rather than a tracing span per
/// request: a span is created, formatted and entered / exited on every poll
/// through the subscriber, ~2–3 µs of CPU per proxied request; this costs a
/// thread-local swap per poll.
#[derive(Debug, Clone, Copy)]
pub struct RequestId {
    len: u8,
    bytes: [u8; RequestId::MAX],
}

impl RequestId {
    const MAX: usize = 32;

    /// At most the first 32 bytes of `id` (request ids are 32 hex digits).
    pub fn new(id: &str) -> RequestId {
        let mut end = id.len().min(RequestId::MAX);
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; RequestId::MAX];
        bytes[..end].copy_from_slice(&id.as_bytes()[..end]);
        RequestId {
            len: end as u8,
            bytes,
        }
    }

    pub fn as_str(&self) -> &str {
        // Cut at a character boundary in `new`.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

tokio::task_local! {
    static REQUEST_ID: RequestId;
}

/// Runs `f` with `id` as the request id of its log lines (also while `f` is
/// dropped unfinished).
pub async fn with_request_id<F: std::future::Future>(id: RequestId, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// The request id of the running task, if it handles a request.
pub fn current_request_id() -> Option<RequestId> {
    REQUEST_ID.try_with(|id| *id).ok()
}

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
        LogFormat::Human => builder
            .event_format(json::HumanLine(
                tracing_subscriber::fmt::format::Format::default().with_target(false),
            ))
            .try_init(),
    };
    installed.is_ok().then_some(guard)
}
