//! A flat, allocation-light JSON line format for tracing events:
//!
//! ```json
//! {"timestamp":"2026-12-04T17:59:34.600787Z","level":"INFO","message":"request","request_id":"…","status":200}
//! ```
//!
//! The request id (`super::current_request_id`) and span fields are
//! top-level keys of every line, which is what log pipelines index on. Written straight
//! into the output buffer with JSON escaping; tracing-subscriber's own JSON
//! formatter builds a map per event and cost ~5 µs per request line.

use std::fmt::{self, Write};

use super::Digits;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format.
pub struct JsonLine;

/// The span-field format: `,"name":value` members, spliced into each line.
pub struct JsonMembers;

impl<'w> FormatFields<'w> for JsonMembers {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut v = Members {
            out: &mut writer,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Members already start with a comma: no separator to add.
        self.format_fields(current.as_writer(), fields)
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The line is built in a reused buffer of this thread and handed
        // over in one piece: the writer tracing gives is a `dyn Write`, and
        // a line is some 80 small writes.
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                let r = write_line(ctx, &mut *line, event).and_then(|()| w.write_str(&line));
                if line.capacity() > 64 * 1024 {
                    *line = String::new();
                }
                r
            }
            // An event recorded while this thread formats another.
            Err(_) => write_line(ctx, &mut w, event),
        })
    }
}

thread_local! {
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn write_line<S, N, W>(ctx: &FmtContext<'_, S, N>, w: &mut W, event: &Event<'_>) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    W: Write,
{
    let now = time::OffsetDateTime::now_utc();
    w.write_str("{\"timestamp\":\"")?;
    w.write_str(&timestamp(&now))?;
    w.write_str("\",\"level\":\"")?;
    w.write_str(event.metadata().level().as_str())?;
    w.write_char('"')?;
    if let Some(id) = super::current_request_id() {
        w.write_str(",\"request_id\":\"")?;
        Escape(&mut *w).write_str(id.as_str())?;
        w.write_char('"')?;
    }
    if let Some(scope) = ctx.event_scope() {
        for span in scope.from_root() {
            if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                w.write_str(fields)?;
            }
        }
    }
    let mut v = Members {
        out: &mut *w,
        result: Ok(()),
    };
    event.record(&mut v);
    v.result?;
    w.write_str("}\n")
}

/// tracing-subscriber's human format, with the request id (if any) first.
pub struct HumanLine(pub tracing_subscriber::fmt::format::Format);

impl<S, N> FormatEvent<S, N> for HumanLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if let Some(id) = super::current_request_id() {
            write!(w, "request_id={} ", id.as_str())?;
        }
        self.0.format_event(ctx, w, event)
    }
}

struct Members<'a, W: Write> {
    out: &'a mut W,
    result: fmt::Result,
}

impl<W: Write> Members<'_, W> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.out.write_str(",\"")?;
        Escape(&mut *self.out).write_str(field.name())?;
        self.out.write_str("\":")
    }

    fn raw(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|_| self.out.write_fmt(value));
        }
    }

    fn quoted(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|_| {
                self.out.write_char('"')?;
                Escape(&mut *self.out).write_fmt(value)?;
                self.out.write_char('"')
            });
        }
    }
}

impl<W: Write> Visit for Members<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|_| {
                self.out.write_char('"')?;
                Escape(&mut *self.out).write_str(value)?;
                self.out.write_char('"')
            });
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self
                .key(field)
                .and_then(|_| self.out.write_str(Digits::new(value, false).as_str()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            let d = Digits::new(value.unsigned_abs(), value < 0);
            self.result = self.key(field).and_then(|_| self.out.write_str(d.as_str()));
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, format_args!("{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, format_args!("{value}"));
        } else {
            self.quoted(field, format_args!("{value}"));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.quoted(field, format_args!("{value:?}"));
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (RFC 3339, UTC, microseconds), written into
/// a fixed buffer. Years outside 0–9999 (not a clock this runs under) are
/// clamped.
fn timestamp(t: &time::OffsetDateTime) -> TimestampText {
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, t.year().clamp(0, 9999) as u32);
    put(5, 2, u8::from(t.month()) as u32);
    put(8, 2, t.day() as u32);
    put(11, 2, t.hour() as u32);
    put(14, 2, t.minute() as u32);
    put(17, 2, t.second() as u32);
    put(20, 6, t.microsecond());
    TimestampText(b)
}

struct TimestampText([u8; 27]);

impl std::ops::Deref for TimestampText {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Bytes that may need escaping: ASCII control characters, `"`, `\\`, DEL,
/// and 0xE2 (the lead byte of U+2028 and U+2029).
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t[0xe2] = true;
    t
};

/// Escapes what passes through it for a JSON string.
struct Escape<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escape<'_, W> {
    /// Byte by byte: every character that needs escaping is ASCII except
    /// U+2028 and U+2029 (bytes E2 80 A8 / E2 80 A9), so runs of anything
    /// else are copied whole without decoding UTF-8.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            // The common case: a run of bytes that need nothing.
            if !SPECIAL[bytes[i] as usize] {
                i += 1;
                continue;
            }
            let (esc, len) = match bytes[i] {
                b'"' => (Some("\\\""), 1),
                b'\\' => (Some("\\\\"), 1),
                b'\n' => (Some("\\n"), 1),
                b'\r' => (Some("\\r"), 1),
                b'\t' => (Some("\\t"), 1),
                0..=0x1f | 0x7f => (None, 1),
                0xe2 if bytes.get(i + 1) == Some(&0x80)
                    && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
                {
                    (None, 3)
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            // `i` is at an ASCII byte or at the lead byte of U+2028/9: a
            // character boundary.
            self.0.write_str(&s[start..i])?;
            match esc {
                Some(e) => self.0.write_str(e)?,
                None => {
                    let c = s[i..].chars().next().map_or(0, |c| c as u32);
                    write!(self.0, "\\u{c:04x}")?;
                }
            }
            i += len;
            start = i;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_valid_flat_json_with_escaping() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .fmt_fields(JsonMembers)
            .event_format(JsonLine)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "abc123");
            let _e = span.enter();
            tracing::info!(
                status = 200u16,
                peer = %"127.0.0.1:1",
                caller = "we\"ird\\\n\u{1}name",
                ok = true,
                neg = -5i64,
                ratio = 0.5f64,
                nan = f64::NAN,
                missing = None::<u16>,
                "request"
            );
            tracing::warn!("plain message with \"quotes\"");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2);
        let l = &lines[0];
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["message"], "request");
        assert_eq!(l["request_id"], "abc123");
        assert_eq!(l["status"], 200);
        assert_eq!(l["peer"], "127.0.0.1:1");
        assert_eq!(l["caller"], "we\"ird\\\n\u{1}name");
        assert_eq!(l["ok"], true);
        assert_eq!(l["neg"], -5);
        assert_eq!(l["ratio"], 0.5);
        assert_eq!(l["nan"], "NaN");
        assert!(l.get("missing").is_none(), "None fields are left out");
        assert!(l["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["message"], "plain message with \"quotes\"");
        assert_eq!(lines[1]["level"], "WARN");
    }

    #[test]
    fn digits_and_timestamps_match_the_formatter() {
        for v in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(Digits::new(v, false).as_str(), v.to_string());
        }
        for v in [0i64, -1, -10, 42, i64::MIN, i64::MAX] {
            assert_eq!(Digits::new(v.unsigned_abs(), v < 0).as_str(), v.to_string());
        }
        for (unix, nanos) in [
            (0i64, 0u32),
            (1_796_400_000, 600_787_123),
            (253_402_300_799, 999_999_999),
        ] {
            let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap()
                + time::Duration::nanoseconds(nanos as i64);
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            );
            assert_eq!(&*timestamp(&t), expected);
        }
    }

    #[test]
    fn escaping_round_trips_and_leaves_no_raw_control_or_line_separator() {
        for input in [
            "",
            "plain ascii",
            "quote \" backslash \\ nl \n cr \r tab \t",
            "\u{0}\u{1}\u{1f}\u{7f} end",
            "multibyte é ü 漢字 🦀 and \u{2028} \u{2029} separators",
            "\u{2027}\u{202a} neighbours of the separators (left as they are)",
            "\u{2028}",
            "trailing backslash \\",
        ] {
            let mut out = String::from("\"");
            Escape(&mut out).write_str(input).unwrap();
            out.push('"');
            let back: String = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            assert_eq!(back, input);
            assert!(
                !out.chars().any(|c| (c as u32) < 0x20
                    || c == '\u{7f}'
                    || c == '\u{2028}'
                    || c == '\u{2029}'),
                "{out}"
            );
        }
        let mut out = String::new();
        Escape(&mut out).write_str("a\u{2028}b\u{1}").unwrap();
        assert_eq!(out, "a\\u2028b\\u0001");
    }

    #[test]
    fn the_request_id_of_the_task_is_on_its_lines_in_both_formats() {
        for human in [false, true] {
            let buf = Buf::default();
            let out = buf.clone();
            let builder = tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .with_ansi(false);
            let subscriber: Box<dyn Subscriber + Send + Sync> = if human {
                Box::new(
                    builder
                        .event_format(HumanLine(
                            tracing_subscriber::fmt::format::Format::default().with_target(false),
                        ))
                        .finish(),
                )
            } else {
                Box::new(
                    builder
                        .fmt_fields(JsonMembers)
                        .event_format(JsonLine)
                        .finish(),
                )
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            tracing::subscriber::with_default(subscriber, || {
                let id = super::super::RequestId::new("0123456789abcdef0123456789abcdef-too-long");
                assert_eq!(id.as_str(), "0123456789abcdef0123456789abcdef");
                rt.block_on(super::super::with_request_id(id, async {
                    tracing::info!("inside");
                    tokio::task::yield_now().await;
                    tracing::info!("after a yield");
                }));
                tracing::info!("outside");
            });
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 3, "{text}");
            for l in &lines[..2] {
                if human {
                    assert!(
                        l.starts_with("request_id=0123456789abcdef0123456789abcdef "),
                        "{l}"
                    );
                } else {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    assert_eq!(v["request_id"], "0123456789abcdef0123456789abcdef");
                }
            }
            assert!(!lines[2].contains("request_id"), "{}", lines[2]);
            assert!(lines[2].contains("outside"));
        }
    }
}
