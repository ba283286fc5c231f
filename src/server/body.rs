//! Bodies at the app's edge. Requests: read whole with memory bounded by the bytes received,
//! a total deadline and a minimum rate, whatever the framing. Responses: a complete buffer, a
//! relayed upstream stream, or an early error that drains what the app is still uploading so
//! the app can read the status instead of a reset. An enum rather than a boxed trait object,
//! so the common path allocates nothing for the body itself.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::relay::RelayBody;
use crate::config::{BODY_RATE_GRACE, ServerSettings};
use crate::upstream::BoxError;

/// A body is read into a buffer that starts this small and doubles: a client that declares a
/// large `content-length` and then sends nothing holds no more than this.
const INITIAL_BODY_BUFFER: usize = 16 << 10;
/// After an early error (413, 401, 404, 405…), at most this much of an unread request body is
/// read and discarded, within [`DRAIN_TIME`], so the connection can be closed (or reused)
/// without a reset that would hide the status from the app. Loopback moves this in
/// milliseconds.
const DRAIN_MAX: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("arrived at {rate} bytes/s after {elapsed:?}, under the minimum of {min} bytes/s (server.body_min_rate)")]
    TooSlow { rate: u64, min: u64, elapsed: Duration },
    #[error("did not arrive within {0:?} (server.body_timeout)")]
    Timeout(Duration),
    #[error("broke off: {0}")]
    Broken(String),
}

/// When the next byte of a body is due: the moment its average rate would fall under the
/// minimum (after the grace period), or the deadline.
fn next_byte_due(started: Instant, deadline: Instant, received: u64, min_rate: u64) -> Instant {
    if min_rate == 0 {
        return deadline;
    }
    let allowed = Duration::from_secs_f64((received + 1) as f64 / min_rate as f64);
    (started + BODY_RATE_GRACE + allowed).min(deadline)
}

/// Reads a whole request body. Each frame is copied into one growing buffer and dropped: a
/// frame is a slice of the connection's read buffer, and keeping trickled one-byte frames
/// would pin a whole read buffer per byte. The one exception, a body that arrives in a single
/// frame (the usual case), is kept as it is, without a copy. The body's time and rate count
/// from `started`, when the request's head arrived.
pub(crate) async fn read_request(
    body: &mut Incoming,
    declared: Option<u64>,
    s: &ServerSettings,
    started: Instant,
) -> Result<Bytes, ReadError> {
    let limit = s.max_body_bytes;
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge(limit));
    }
    let deadline = started + s.body_timeout;
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut received: u64 = 0;
    loop {
        let due = || next_byte_due(started, deadline, received, s.body_min_rate);
        let frame = match crate::upstream::next_frame(body, due).await {
            Err(_) if Instant::now() >= deadline => return Err(ReadError::Timeout(s.body_timeout)),
            Err(_) => {
                let elapsed = started.elapsed();
                return Err(ReadError::TooSlow {
                    rate: (received as f64 / elapsed.as_secs_f64().max(1e-3)) as u64,
                    min: s.body_min_rate,
                    elapsed,
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ReadError::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        received += data.len() as u64;
        if received > limit as u64 {
            return Err(ReadError::TooLarge(limit));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            held => {
                if buf.is_empty() {
                    let hint = declared.map_or(0, |d| d as usize).min(INITIAL_BODY_BUFFER);
                    buf.reserve(hint.max(held.as_ref().map_or(0, Bytes::len) + data.len()));
                }
                if let Some(h) = held {
                    buf.extend_from_slice(&h);
                }
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(match first {
        Some(only) => only,
        None => buf.freeze(),
    })
}

pin_project_lite::pin_project! {
    /// A request body streamed on to a provider (passthrough uploads), held to the same total
    /// deadline and minimum rate as a body read whole: a trickled upload must not hold a
    /// provider slot for as long as the sender likes.
    pub struct RateGuard {
        #[pin]
        inner: Incoming,
        #[pin]
        due: Sleep,
        started: Instant,
        deadline: Instant,
        received: u64,
        min_rate: u64,
    }
}

impl RateGuard {
    pub(crate) fn new(inner: Incoming, s: &ServerSettings) -> Self {
        let started = Instant::now();
        let deadline = started + s.body_timeout;
        let mut g = RateGuard {
            inner,
            due: tokio::time::sleep_until(deadline),
            started,
            deadline,
            received: 0,
            min_rate: s.body_min_rate,
        };
        g.due = tokio::time::sleep_until(next_byte_due(started, deadline, 0, g.min_rate));
        g
    }
}

impl HttpBody for RateGuard {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.received += frame.data_ref().map_or(0, Bytes::len) as u64;
                let next = next_byte_due(*this.started, *this.deadline, *this.received, *this.min_rate);
                this.due.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                std::task::ready!(this.due.as_mut().poll(cx));
                let e = if Instant::now() >= *this.deadline {
                    ReadError::Timeout(this.deadline.saturating_duration_since(*this.started))
                } else {
                    let elapsed = this.started.elapsed();
                    ReadError::TooSlow {
                        rate: (*this.received as f64 / elapsed.as_secs_f64().max(1e-3)) as u64,
                        min: *this.min_rate,
                        elapsed,
                    }
                };
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An early answer to a request whose body is still (partly) unread: sent at once, then what
/// the app keeps uploading is read and discarded (bounded), so the app reads the status rather
/// than a connection reset, and keep-alive survives. A client that waits for `100 Continue`
/// has sent nothing and needs no drain.
pub(crate) fn drain_after(mut resp: Response<Body>, request_body: Incoming, expects_continue: bool) -> Response<Body> {
    if request_body.is_end_stream() {
        return resp;
    }
    if expects_continue {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let reply = match std::mem::replace(resp.body_mut(), Body::empty()) {
        Body::Full(b) => b,
        other => {
            *resp.body_mut() = other;
            return resp;
        }
    };
    *resp.body_mut() = Body::Drain(Box::pin(Drain {
        reply,
        incoming: request_body,
        left: DRAIN_MAX,
        until: tokio::time::sleep(DRAIN_TIME),
        done: false,
    }));
    resp
}

pin_project_lite::pin_project! {
    pub struct Drain {
        reply: Option<Bytes>,
        #[pin]
        incoming: Incoming,
        left: usize,
        #[pin]
        until: Sleep,
        done: bool,
    }
}

impl HttpBody for Drain {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(reply) = this.reply.take().filter(|b| !b.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(reply))));
        }
        while !*this.done {
            match this.incoming.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let n = frame.data_ref().map_or(0, Bytes::len);
                    *this.left = this.left.saturating_sub(n);
                    if *this.left == 0 {
                        *this.done = true;
                    }
                }
                Poll::Ready(_) => *this.done = true,
                Poll::Pending => {
                    if this.until.as_mut().poll(cx).is_ready() {
                        *this.done = true;
                    } else {
                        return Poll::Pending;
                    }
                }
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.reply.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown on purpose: with a `content-length`, hyper would end the response at its last
        // byte and stop polling, closing the connection on the unread upload.
        SizeHint::default()
    }
}

pub enum Body {
    Full(Option<Bytes>),
    Relay(Pin<Box<RelayBody>>),
    /// Chunks produced by a task (the admin port's event stream).
    Channel(tokio::sync::mpsc::Receiver<Bytes>),
    /// An early error answer that drains the rest of the request body.
    Drain(Pin<Box<Drain>>),
}

impl Body {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        Body::Full(Some(b.into()))
    }

    pub(crate) fn empty() -> Self {
        Body::Full(None)
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            Body::Relay(r) => r.as_mut().poll_frame(cx),
            Body::Channel(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
            Body::Drain(d) => d.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Body::Relay(r) => r.is_end_stream(),
            Body::Channel(_) => false,
            Body::Drain(d) => d.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Relay(r) => r.size_hint(),
            Body::Channel(_) => SizeHint::default(),
            Body::Drain(d) => d.size_hint(),
        }
    }
}
