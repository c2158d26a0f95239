//! An HTTP/1 framing guard between the socket and hyper.
//!
//! hyper's parser is strict, but two ambiguous framings it resolves on its
//! own without telling the handler: `Content-Length` together with
//! `Transfer-Encoding` (it takes the chunked framing and drops the length —
//! RFC 9112 §6.3 allows it) and `Content-Length` repeated with the same
//! value (it keeps one). A proxy that sits in front of other HTTP stacks
//! should refuse both outright: they are how requests are smuggled.
//!
//! The guard reads ahead of hyper, holds back each request head until it is
//! complete, and looks at its framing headers. For an ambiguous head it
//! rewrites, in place and at the same length, a value hyper then refuses
//! itself (a `Transfer-Encoding` that is not chunked, a `Content-Length`
//! that is not a number): hyper answers 400 and closes the connection, and
//! the request never reaches the handler. Then it follows the body (by its
//! length, or chunk by chunk) to the next head. Anything it does not
//! understand it hands to hyper untouched and stops watching (hyper
//! refuses what is malformed); HTTP/2 never passes through it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// `n` body bytes to pass.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// `n` chunk bytes to pass, then the CRLF after them.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// Not watching any more: everything passes untouched.
    Off,
}

pub struct FramingGuard<IO> {
    inner: IO,
    state: State,
    /// Bytes of an incomplete head (or chunk-size / trailer line), held back.
    held: Vec<u8>,
    /// Bytes ready for hyper.
    ready: Vec<u8>,
    ready_at: usize,
    max_head: usize,
    /// Heads refused (tests).
    pub refused: usize,
}

impl<IO> FramingGuard<IO> {
    pub fn new(inner: IO, max_head: usize) -> FramingGuard<IO> {
        FramingGuard {
            inner,
            state: State::Head,
            held: Vec::new(),
            ready: Vec::new(),
            ready_at: 0,
            max_head: max_head.max(1024),
            refused: 0,
        }
    }

    /// Runs newly read bytes through the state machine.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Off => {
                    self.ready.extend_from_slice(bytes);
                    return;
                }
                State::Body(n) => {
                    let left;
                    (left, bytes) = self.pass(n, bytes);
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::ChunkData(n) => {
                    let left;
                    (left, bytes) = self.pass(n, bytes);
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::Head | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    // Line-oriented states: hold bytes up to a line end (or,
                    // for a head, up to the blank line).
                    let limit = if self.state == State::Head {
                        self.max_head
                    } else {
                        4096
                    };
                    let end = match self.state {
                        State::Head => head_end(&self.held, bytes),
                        _ => line_end(bytes),
                    };
                    match end {
                        None => {
                            self.held.extend_from_slice(bytes);
                            if self.held.len() > limit
                                || (self.state == State::Head && is_h2_preface(&self.held))
                            {
                                self.give_up();
                            }
                            return;
                        }
                        Some(cut) => {
                            self.held.extend_from_slice(&bytes[..cut]);
                            bytes = &bytes[cut..];
                            let mut unit = std::mem::take(&mut self.held);
                            self.step(&mut unit);
                            self.ready.extend_from_slice(&unit);
                        }
                    }
                }
            }
        }
    }

    /// Passes up to `n` counted bytes (a body, a chunk's data) to hyper;
    /// returns how many are still to come and the bytes after them.
    fn pass<'b>(&mut self, n: u64, bytes: &'b [u8]) -> (u64, &'b [u8]) {
        let take = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
        self.ready.extend_from_slice(&bytes[..take]);
        (n - take as u64, &bytes[take..])
    }

    /// Everything held goes to hyper as it is; nothing more is watched.
    fn give_up(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.ready.extend_from_slice(&held);
        self.state = State::Off;
    }

    /// One complete head or line: decide the next state (and rewrite an
    /// ambiguous head).
    fn step(&mut self, unit: &mut [u8]) {
        self.state = match self.state {
            State::Head => self.head(unit),
            State::ChunkSize => {
                let line = trim_line(unit);
                let size = line.split(|b| *b == b';').next().unwrap_or(b"");
                let size = std::str::from_utf8(size).ok().map(str::trim);
                match size.and_then(|s| u64::from_str_radix(s, 16).ok()) {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Off,
                }
            }
            State::ChunkEnd => {
                if trim_line(unit).is_empty() {
                    State::ChunkSize
                } else {
                    State::Off
                }
            }
            State::Trailers => {
                if trim_line(unit).is_empty() {
                    State::Head
                } else {
                    State::Trailers
                }
            }
            other => other,
        };
    }

    fn head(&mut self, head: &mut [u8]) -> State {
        // Leading empty lines before a request line are allowed; a blank
        // "head" is just those.
        if head.iter().all(|b| *b == b'\r' || *b == b'\n') {
            return State::Head;
        }
        if head.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        let mut te: Option<(usize, usize)> = None;
        let mut te_chunked = false;
        let mut lengths: Vec<(usize, usize)> = Vec::new();
        let mut upgrade = false;
        let mut pos = 0;
        let mut first = true;
        while pos < head.len() {
            let end = head[pos..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(head.len(), |i| pos + i);
            let line = &head[pos..end];
            let line_end = if line.last() == Some(&b'\r') {
                end - 1
            } else {
                end
            };
            if first {
                first = false;
                if head[pos..line_end].starts_with(b"CONNECT ") {
                    upgrade = true;
                }
            } else if let Some(colon) = head[pos..line_end].iter().position(|b| *b == b':') {
                let name = &head[pos..pos + colon];
                let mut vstart = pos + colon + 1;
                while vstart < line_end && (head[vstart] == b' ' || head[vstart] == b'\t') {
                    vstart += 1;
                }
                let mut vend = line_end;
                while vend > vstart && (head[vend - 1] == b' ' || head[vend - 1] == b'\t') {
                    vend -= 1;
                }
                if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    let value = &head[vstart..vend];
                    te_chunked = value
                        .rsplit(|b| *b == b',')
                        .next()
                        .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
                    te = Some((vstart, vend));
                } else if name.eq_ignore_ascii_case(b"content-length") {
                    lengths.push((vstart, vend));
                } else if name.eq_ignore_ascii_case(b"upgrade") {
                    upgrade = true;
                }
            }
            pos = end + 1;
        }
        let poison = |range: (usize, usize), head: &mut [u8]| {
            for b in &mut head[range.0..range.1] {
                *b = b'x';
            }
        };
        match (te, lengths.as_slice()) {
            // Both framings: a Transfer-Encoding hyper refuses (not chunked).
            (Some(t), [_, ..]) if t.1 > t.0 => {
                poison(t, head);
                self.refused += 1;
                State::Off
            }
            // The same length twice: a second value hyper refuses.
            (None, [_, second, ..]) if second.1 > second.0 => {
                poison(*second, head);
                self.refused += 1;
                State::Off
            }
            _ if upgrade => State::Off,
            (Some(_), []) if te_chunked => State::ChunkSize,
            (Some(_), _) => State::Off,
            (None, [one]) => {
                let digits = &head[one.0..one.1];
                match std::str::from_utf8(digits)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(0) => State::Head,
                    Some(n) if digits.iter().all(u8::is_ascii_digit) => State::Body(n),
                    _ => State::Off,
                }
            }
            (None, _) => State::Head,
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

fn trim_line(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

fn is_h2_preface(held: &[u8]) -> bool {
    held.starts_with(b"PRI * HTTP/2.0")
}

/// Where, in `bytes`, the head that `held` started ends (just past the
/// blank line: `\r\n\r\n` or `\n\n`, as hyper accepts both). Looks at
/// the last three held bytes followed by the new ones, without copying
/// them together.
fn head_end(held: &[u8], bytes: &[u8]) -> Option<usize> {
    let keep = held.len().min(3);
    let tail = &held[held.len() - keep..];
    // Byte `i` of the held tail followed by the new bytes.
    let at = |i: usize| if i < keep { tail[i] } else { bytes[i - keep] };
    let blank = |b: u8| b == b'\r' || b == b'\n';
    // A head that is only blank lines so far ends at its first newline.
    let only_blank = held.iter().all(|b| blank(*b));
    // Only newlines can end a head: jump from one to the next.
    let mut from = 0;
    while let Some(off) = bytes[from..].iter().position(|b| *b == b'\n') {
        let i = keep + from + off;
        from += off + 1;
        let blank_line =
            (i >= 1 && at(i - 1) == b'\n') || (i >= 2 && at(i - 1) == b'\r' && at(i - 2) == b'\n');
        let all_blank_so_far = only_blank && (keep..i).all(|j| blank(at(j)));
        if blank_line || all_blank_so_far {
            return Some(i + 1 - keep);
        }
    }
    None
}

/// Where, in `bytes`, the line being held ends (past its `\n`).
fn line_end(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n').map(|i| i + 1)
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = (this.ready.len() - this.ready_at).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Off && this.held.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if buf.remaining() == 0 {
                // Nowhere to put bytes: reading now would look like the end.
                return Poll::Ready(Ok(()));
            }
            // The caller's buffer is the scratch space: read into it, let the
            // guard take the new bytes, then hand back what it released (no
            // buffer of our own to allocate or zero on every read).
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if buf.filled().len() == before {
                        // End of stream: hand over whatever was held.
                        if this.held.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        this.give_up();
                        continue;
                    }
                    this.feed(&buf.filled()[before..]);
                    buf.set_filled(before);
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; what hyper would read.
    fn through(input: &[u8], step: usize) -> (Vec<u8>, usize) {
        let mut g = FramingGuard::new((), 16384);
        for piece in input.chunks(step.max(1)) {
            g.feed(piece);
        }
        g.give_up();
        (g.ready.clone(), g.refused)
    }

    const PLAIN: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn ordinary_traffic_passes_unchanged_however_it_is_split() {
        let mut all = Vec::new();
        all.extend_from_slice(PLAIN);
        all.extend_from_slice(b"POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        all.extend_from_slice(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer-A: 1\r\n\r\n",
        );
        all.extend_from_slice(b"GET /lf HTTP/1.1\nHost: x\n\n");
        // Blank lines before a request line.
        all.extend_from_slice(b"\r\n\n");
        all.extend_from_slice(PLAIN);
        all.extend_from_slice(b"POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok");
        for step in [1, 2, 3, 7, 64, 4096] {
            let (out, refused) = through(&all, step);
            assert_eq!(out, all, "step {step}");
            assert_eq!(refused, 0, "step {step}");
        }
    }

    #[test]
    fn both_framings_and_repeated_lengths_are_poisoned_for_hyper() {
        for (input, poisoned) in [
            (
                &b"POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
                &b"Transfer-Encoding: xxxxxxx"[..],
            ),
            (
                b"POST /o HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
                b"Transfer-Encoding: xxxxxxx",
            ),
            (
                b"POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
                b"content-length: x\r\n",
            ),
        ] {
            for step in [1, 5, 4096] {
                let (out, refused) = through(input, step);
                assert_eq!(refused, 1, "{}", String::from_utf8_lossy(input));
                assert_eq!(out.len(), input.len(), "same length");
                assert!(
                    out.windows(poisoned.len()).any(|w| w == poisoned),
                    "{}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }

    /// Reads everything through the guard's `poll_read` with a caller
    /// buffer of `cap` bytes, which already holds `prefix` bytes (hyper's
    /// buffer is often partly filled).
    async fn read_through(input: &[u8], cap: usize, prefix: usize) -> (Vec<u8>, usize) {
        let mut g = FramingGuard::new(input, 16384);
        let mut out = Vec::new();
        let mut storage = vec![0xAAu8; prefix + cap];
        loop {
            let mut rb = ReadBuf::new(&mut storage);
            rb.advance(prefix);
            std::future::poll_fn(|cx| Pin::new(&mut g).poll_read(cx, &mut rb))
                .await
                .unwrap();
            assert_eq!(&rb.filled()[..prefix], &vec![0xAAu8; prefix][..]);
            let new = &rb.filled()[prefix..];
            if new.is_empty() {
                return (out, g.refused);
            }
            out.extend_from_slice(new);
        }
    }

    #[tokio::test]
    async fn reads_through_the_callers_buffer_of_any_size() {
        let mut all = PLAIN.to_vec();
        all.extend_from_slice(b"POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        let smuggle =
            b"POST /o HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // A head cut off by the end of the stream is handed over as it is.
        let cut = b"GET /cut HTTP/1.1\r\nHost: x";
        for (cap, prefix) in [(1, 0), (3, 5), (64, 0), (8192, 100)] {
            assert_eq!(read_through(&all, cap, prefix).await, (all.clone(), 0));
            let (out, refused) = read_through(smuggle, cap, prefix).await;
            assert_eq!((out.len(), refused), (smuggle.len(), 1), "cap {cap}");
            assert!(out.windows(7).any(|w| w == b"xxxxxxx"), "cap {cap}");
            assert_eq!(read_through(cut, cap, prefix).await, (cut.to_vec(), 0));
        }
    }

    #[test]
    fn a_smuggled_second_head_inside_a_body_is_not_read_as_a_head() {
        // The body (5 bytes by its length) looks like a head: it is body.
        let input = b"POST /o HTTP/1.1\r\nContent-Length: 50\r\n\r\nGET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        let (_, refused) = through(input, 3);
        assert_eq!(refused, 0);
    }

    #[test]
    fn http2_and_oversized_heads_pass_untouched() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let (out, _) = through(preface, 4);
        assert_eq!(out, preface);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        let (out, refused) = through(&big, 1000);
        assert_eq!((out, refused), (big, 0));
    }
}
