//! The streaming tee: relays the provider's body to the app frame by frame, as it arrives, and
//! on the side records time to first byte, usage and completeness. It enforces the idle
//! (between chunks) and total timeouts, holds the provider's concurrency permit until the body
//! ends, and finishes the request's record exactly once — at the end, on an upstream failure,
//! or when the app hangs up (drop).
//!
//! Only bodies that must stream go through here: SSE, and bodies too large to hold. A failure
//! after bytes have gone out cannot become an HTTP error any more. For an SSE stream the app
//! gets an OpenAI-style `error` event and a clean end, so SDKs raise instead of waiting; for
//! other bodies the connection is aborted so the app never takes a truncated body as whole.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::record::{Outcome, RequestRecord};
use super::settle::Settle;
use crate::openai::SseScanner;
use crate::scheduler::Permit;
use crate::upstream::adapter::StreamTranslate;
use crate::upstream::redact::Redactor;
use crate::upstream::{BodyFailure, BoxError, error_chain};

/// Called with the raw SSE bytes of a stream that ended complete and error-free.
pub type OnComplete = Box<dyn FnOnce(&[u8]) + Send>;

/// A stream longer than this is relayed but not cached: bounds the tee's memory.
pub(crate) const MAX_CAPTURE: usize = 1 << 20;

pub enum Mode {
    Sse(SseScanner),
    /// Relayed, not inspected.
    Raw,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Streaming,
    /// The stream failed: send the app an error event, then end.
    Failing,
    /// An error event was sent; end the stream next.
    Ending,
    Done,
}

pin_project_lite::pin_project! {
    #[project = RelayProj]
    pub struct RelayBody {
        #[pin]
        inner: Incoming,
        #[pin]
        timer: Sleep,
        prefix: Option<Bytes>,
        mode: Mode,
        idle: Duration,
        deadline: Instant,
        record: RequestRecord,
        outcome: Outcome,
        state: State,
        failure: Option<BodyFailure>,
        permit: Option<Permit>,
        capture: Option<(Vec<u8>, OnComplete)>,
        translate: Option<Box<dyn StreamTranslate>>,
        settle: Option<Settle>,
        redact: Arc<Redactor>,
        #[pin]
        stop: WaitForCancellationFutureOwned,
    }
}

pub struct RelayParams {
    pub(crate) mode: Mode,
    pub(crate) idle: Duration,
    pub(crate) deadline: Instant,
    /// Bytes already read from `inner` (and scanned) that go out first.
    pub(crate) prefix: Option<Bytes>,
    /// The OpenAI-shaped bytes already read, the start of the cached copy.
    pub(crate) seen: Option<Bytes>,
    pub(crate) outcome: Outcome,
    pub(crate) on_complete: Option<OnComplete>,
    /// Rewrites another provider's event stream into OpenAI's before anything else sees it.
    pub(crate) translate: Option<Box<dyn StreamTranslate>>,
    /// A committed answer stream: judged to its end (terminator, well-formed events), and the
    /// verdict goes to the provider's breaker. `None` for passthrough bodies, relayed as they are.
    pub(crate) settle: Option<Settle>,
    /// Secrets that must never reach the app, whatever the provider echoes.
    pub(crate) redact: Arc<Redactor>,
    /// Cancelled when the shutdown grace period ends.
    pub(crate) stop: CancellationToken,
}

impl RelayBody {
    pub(crate) fn new(inner: Incoming, p: RelayParams, record: RequestRecord, permit: Permit) -> Self {
        let first = (Instant::now() + p.idle).min(p.deadline);
        let capture = p.on_complete.map(|f| {
            let mut buf = Vec::new();
            if let Some(seen) = &p.seen {
                buf.extend_from_slice(seen);
            }
            (buf, f)
        });
        RelayBody {
            inner,
            timer: tokio::time::sleep_until(first),
            prefix: p.prefix.filter(|b| !b.is_empty()),
            mode: p.mode,
            idle: p.idle,
            deadline: p.deadline,
            record,
            outcome: p.outcome,
            state: State::Streaming,
            failure: None,
            permit: Some(permit),
            capture,
            translate: p.translate,
            settle: p.settle,
            redact: p.redact,
            stop: p.stop.cancelled_owned(),
        }
    }
}

impl HttpBody for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(this.redact.bytes(prefix)))));
        }
        loop {
            match *this.state {
                State::Done => return Poll::Ready(None),
                State::Ending => {
                    *this.state = State::Done;
                    return Poll::Ready(None);
                }
                State::Failing => {
                    let failure = this.failure.take().unwrap_or(BodyFailure::Unterminated);
                    return Poll::Ready(Some(this.fail(failure)));
                }
                State::Streaming => {}
            }
            let failure = match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    Ok(data) => match this.pass(data) {
                        Some(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        None => continue,
                    },
                },
                Poll::Ready(None) => match this.end() {
                    Some(last) => return Poll::Ready(last),
                    None => continue,
                },
                Poll::Ready(Some(Err(e))) => BodyFailure::Reset(error_chain(&e)),
                Poll::Pending if this.stop.as_mut().poll(cx).is_ready() => BodyFailure::Shutdown,
                Poll::Pending => {
                    ready!(this.timer.as_mut().poll(cx));
                    if Instant::now() >= *this.deadline {
                        BodyFailure::TotalTimeout
                    } else {
                        BodyFailure::IdleTimeout(*this.idle)
                    }
                }
            };
            return Poll::Ready(Some(this.fail(failure)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        // SSE bodies may be rewritten (the usage chunk dropped) and others carry a prefix:
        // no exact length either way.
        SizeHint::default()
    }
}

impl RelayProj<'_> {
    /// One data frame from the provider: timed, translated, captured for the cache, scanned;
    /// what goes to the app (`None` when nothing does yet).
    fn pass(&mut self, data: Bytes) -> Option<Bytes> {
        self.record.first_byte();
        let next = (Instant::now() + *self.idle).min(*self.deadline);
        self.timer.as_mut().reset(next);
        let data = match self.translate.as_mut() {
            Some(t) => t.feed(&data),
            None => data,
        };
        if data.is_empty() {
            return None;
        }
        if let Some((buf, _)) = self.capture.as_mut() {
            if buf.len() + data.len() <= MAX_CAPTURE {
                buf.extend_from_slice(&data);
            } else {
                *self.capture = None;
            }
        }
        let out = match self.mode {
            Mode::Sse(scanner) => {
                let out = scanner.push(data);
                if let Some(what) = scanner.malformed {
                    // What came before the bad event goes out first.
                    *self.failure = Some(BodyFailure::Malformed(what));
                    *self.state = State::Failing;
                }
                out
            }
            Mode::Raw => data,
        };
        (!out.is_empty()).then(|| self.redact.bytes(out))
    }

    /// The provider's body ended: judged (a stream must be whole and well-formed), settled,
    /// stored when complete, and the record finished. The last frame to send (`Some(None)`: the
    /// end), or `None` when the stream failed and its error event comes next.
    fn end(&mut self) -> Option<Option<Result<Frame<Bytes>, BoxError>>> {
        self.permit.take();
        let (tail, outcome, failure) = match self.mode {
            Mode::Sse(scanner) => {
                let tail = scanner.finish();
                self.record.used(scanner.usage);
                if let (Some(t), Some(r)) = (self.record.trace_mut(), scanner.finish_reason.take()) {
                    t.finish_reasons = vec![r];
                }
                let (outcome, failure) = judge_end(scanner, self.settle.is_some(), *self.outcome);
                (tail, outcome, failure)
            }
            Mode::Raw => (Bytes::new(), *self.outcome, None),
        };
        let tail = (!tail.is_empty()).then(|| Ok(Frame::data(self.redact.bytes(tail))));
        if let Some(f) = failure {
            *self.failure = Some(f);
            *self.state = State::Failing;
            return tail.map(Some);
        }
        *self.state = State::Done;
        if let Some(settle) = self.settle.take() {
            match outcome {
                Outcome::Ok => settle.answered(true),
                Outcome::UpstreamStreamError => settle.failed("stream_error"),
                _ => settle.failed("incomplete"),
            }
        }
        if outcome == Outcome::Ok
            && let Some((buf, on_complete)) = self.capture.take()
        {
            on_complete(&buf);
        }
        self.record.finish(outcome);
        Some(tail)
    }

    /// The upstream failed mid-body, or its stream broke the promise of its first event: the
    /// failure is counted, and the app gets an error event (SSE) or an aborted body.
    fn fail(&mut self, failure: BodyFailure) -> Result<Frame<Bytes>, BoxError> {
        self.permit.take();
        let (outcome, kind) = (Outcome::from(&failure), failure.kind());
        let shutdown = matches!(failure, BodyFailure::Shutdown);
        let message = if shutdown {
            format!("The stream was cut: {failure}")
        } else {
            let message = format!("The provider failed mid-response: {failure}");
            self.redact.text(&message).into_owned()
        };
        match self.settle.take() {
            // The sidecar's shutdown is not the provider's failure.
            _ if shutdown => {}
            Some(settle) => settle.failed(kind),
            None => {
                if let Some(m) = self.record.model() {
                    // Counted here because the handler already returned.
                    self.record.metrics().upstream_error(&m.provider, kind);
                }
            }
        }
        tracing::warn!(request_id = self.record.request_id().to_str().unwrap_or(""), %message, "upstream failed mid-response");
        if let Mode::Sse(scanner) = self.mode {
            self.record.used(scanner.usage);
            self.record.finish(outcome);
            *self.state = State::Ending;
            return Ok(Frame::data(scanner.error_event(&message, kind)));
        }
        self.record.finish(outcome);
        *self.state = State::Done;
        Err(message.into())
    }
}

/// How a stream that reached its end went. `strict` for a committed answer stream, whose
/// breaks are the provider's failures; passthrough streams are only labelled.
fn judge_end(scanner: &SseScanner, strict: bool, ok: Outcome) -> (Outcome, Option<BodyFailure>) {
    if strict && let Some(what) = scanner.malformed {
        (Outcome::Malformed, Some(BodyFailure::Malformed(what)))
    } else if scanner.saw_error {
        (Outcome::UpstreamStreamError, None)
    } else if !scanner.done {
        // OpenAI-compatible streams end with `[DONE]`; without it the stream was cut, and the
        // app must not take it as whole.
        (Outcome::Incomplete, strict.then_some(BodyFailure::Unterminated))
    } else {
        (ok, None)
    }
}
