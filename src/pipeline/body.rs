//! Body stage: read the request body whole, under a size and time limit, so
//! that what a later stage evaluates is byte for byte what goes upstream.
//! Also the response body types.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};

use crate::reject::{BadRequest, Reject};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the proxy, the simulator and the admin
/// listener send.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// Reads the whole request body. A declared `Content-Length` over the limit
/// is refused before a byte is read.
pub async fn read<B>(
    body: B,
    headers: &http::HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Reject>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if let Some(v) = headers.get(http::header::CONTENT_LENGTH) {
        let declared: u64 = v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(Reject::BadRequest(BadRequest::InvalidHeader))?;
        if declared > limit as u64 {
            return Err(Reject::BodyTooLarge);
        }
    }
    if body.is_end_stream() {
        // Most requests (GET, DELETE) have no body: no timer, no buffer.
        return Ok(Bytes::new());
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Reject::BodyTimeout),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(Reject::BodyTooLarge)
            } else {
                Err(Reject::BadRequest(BadRequest::BadBody))
            }
        }
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// A response body that fails once a deadline passes: the upstream's total
/// timeout covers streaming the body, not just the headers.
pub struct DeadlineBody<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, deadline: tokio::time::Instant) -> Self {
        DeadlineBody {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

#[derive(Debug)]
pub struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream response exceeded the total timeout")
    }
}

impl std::error::Error for DeadlineExceeded {}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(DeadlineExceeded))));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits() {
        let h = http::HeaderMap::new();
        let t = Duration::from_secs(1);
        let ok = read(Full::new(Bytes::from_static(b"abc")), &h, 3, t).await;
        assert_eq!(ok.unwrap(), "abc");
        let big = read(Full::new(Bytes::from_static(b"abcd")), &h, 3, t).await;
        assert_eq!(big, Err(Reject::BodyTooLarge));
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, "999999".parse().unwrap());
        let declared = read(Full::new(Bytes::new()), &h, 3, t).await;
        assert_eq!(declared, Err(Reject::BodyTooLarge));
        let empty = read(
            http_body_util::Empty::<Bytes>::new(),
            &http::HeaderMap::new(),
            3,
            t,
        )
        .await;
        assert_eq!(empty.unwrap(), "");
    }
}
