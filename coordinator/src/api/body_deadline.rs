//! The deadline of a request body: a body that has not arrived in full by then fails its next read, and
//! the request is marked so the listener answers 408 whatever the handler made of the failed read.
//!
//! Owns only the timing of body reads (a client that sends headers and then dribbles or withholds the
//! body, "slow loris"). Must never buffer the body itself nor read it on a handler's behalf: a refused
//! request's body is never read at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The body of one request did not arrive before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub(crate) struct BodyTimedOut(Duration);

/// When one request's body must have arrived, and whether it missed that.
#[derive(Debug, Clone)]
pub(crate) struct BodyDeadline {
    at: Instant,
    timeout: Duration,
    expired: Arc<AtomicBool>,
}

impl BodyDeadline {
    /// A deadline `timeout` from now.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
            timeout,
            expired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True once a read of the body failed because the deadline passed.
    pub(crate) fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }
}

/// A request body that fails once its [`BodyDeadline`] passes before its end.
pub(crate) struct DeadlineBody<B> {
    inner: B,
    sleep: Pin<Box<Sleep>>,
    deadline: BodyDeadline,
    done: bool,
}

impl<B> DeadlineBody<B> {
    pub(crate) fn new(inner: B, deadline: BodyDeadline) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline.at)),
            deadline,
            done: false,
        }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    this.deadline.expired.store(true, Ordering::Release);
                    Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.deadline.timeout)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use http_body_util::{BodyExt as _, Full, StreamBody};

    #[tokio::test]
    async fn a_body_that_arrives_in_time_reads_whole() {
        let deadline = BodyDeadline::new(Duration::from_secs(5));
        let body = DeadlineBody::new(Full::new(Bytes::from_static(b"{}")), deadline.clone());
        let bytes = body.collect().await.expect("in time").to_bytes();
        assert_eq!(&bytes[..], b"{}");
        assert!(!deadline.expired());
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_at_its_deadline_and_says_so() {
        let deadline = BodyDeadline::new(Duration::from_millis(200));
        // One byte, then nothing more, ever.
        let frames = futures::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
            Bytes::from_static(b"{"),
        ))])
        .chain(futures::stream::pending());
        let body = DeadlineBody::new(StreamBody::new(frames), deadline.clone());
        let started = Instant::now();
        let err = body.collect().await.expect_err("cut off");
        assert!(err.to_string().contains("did not arrive"), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
        assert!(deadline.expired());
    }
}
