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
/// dropped unfinished). A plain function, not an `async fn`: an `async fn`
/// would hold `f` twice in its state (as its argument and inside the scope),
/// doubling the size of every request's future.
pub fn with_request_id<F: std::future::Future>(
    id: RequestId,
    f: F,
) -> impl std::future::Future<Output = F::Output> {
    REQUEST_ID.scope(id, f)
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

/// An integer's decimal digits (with a sign), without the formatting
/// machinery.
pub(crate) struct Digits {
    buf: [u8; 21],
    start: usize,
}

impl Digits {
    pub(crate) fn new(mut v: u64, negative: bool) -> Digits {
        let mut buf = [0u8; 21];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if negative {
            start -= 1;
            buf[start] = b'-';
        }
        Digits { buf, start }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits and '-' were written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0")
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// An address as text on the stack, for log fields: IPv4 (the common case)
/// is written digit by digit, IPv6 through its `Display`.
pub struct AddrText {
    buf: [u8; 64],
    len: usize,
}

impl AddrText {
    /// `ip` alone.
    pub fn ip(ip: std::net::IpAddr) -> AddrText {
        let mut t = AddrText::empty();
        t.push_ip(ip);
        t
    }

    /// `ip:port`, or `[ip]:port` for IPv6 (as `SocketAddr` displays it).
    pub fn socket(addr: std::net::SocketAddr) -> AddrText {
        let mut t = AddrText::empty();
        match addr {
            std::net::SocketAddr::V4(a) => t.push_ip(std::net::IpAddr::V4(*a.ip())),
            std::net::SocketAddr::V6(a) => {
                t.push(b"[");
                t.push_ip(std::net::IpAddr::V6(*a.ip()));
                t.push(b"]");
            }
        }
        t.push(b":");
        t.push_num(u32::from(addr.port()));
        t
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    fn empty() -> AddrText {
        AddrText {
            buf: [0; 64],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(self.buf.len());
        let n = end - self.len;
        self.buf[self.len..end].copy_from_slice(&bytes[..n]);
        self.len = end;
    }

    fn push_num(&mut self, v: u32) {
        let d = Digits::new(u64::from(v), false);
        self.push(d.as_bytes());
    }

    fn push_ip(&mut self, ip: std::net::IpAddr) {
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b".");
                    }
                    self.push_num(u32::from(o));
                }
            }
            std::net::IpAddr::V6(v6) => {
                use std::fmt::Write;
                // At most 45 bytes ("ffff:…:255.255.255.255"): it fits.
                let _ = write!(self, "{v6}");
            }
        }
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod addr_tests {
    use super::AddrText;
    use std::net::{IpAddr, SocketAddr};

    #[test]
    fn addresses_read_as_their_display() {
        for s in [
            "0.0.0.0:0",
            "127.0.0.1:8443",
            "255.255.255.255:65535",
            "10.20.3.4:50001",
            "[::1]:443",
            "[2001:db8::8a2e:370:7334]:1",
            "[::ffff:192.0.2.1]:80",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        ] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(AddrText::socket(a).as_str(), a.to_string());
            assert_eq!(AddrText::ip(a.ip()).as_str(), a.ip().to_string());
        }
        let ip: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        assert_eq!(AddrText::ip(ip).as_str(), ip.to_string());
    }
}
