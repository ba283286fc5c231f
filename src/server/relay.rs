//! The response tee: relays the provider's body to the app frame by frame, as it arrives, and
//! on the side records time to first byte, usage and completeness. It enforces the idle
//! (between chunks) and total timeouts, holds the provider's concurrency permit until the body
//! ends, and finishes the request's record exactly once — at the end, on an upstream failure,
//! or when the app hangs up (drop).
//!
//! A failure after bytes have gone out cannot become an HTTP error any more. For an SSE stream
//! the app gets an OpenAI-style `error` event and a clean end, so SDKs raise instead of waiting;
//! for a JSON body the connection is aborted so the app never takes a truncated body as whole.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::record::RequestRecord;
use crate::openai::usage::parse_usage;
use crate::openai::{SseScanner, error_body};
use crate::upstream::BoxError;

/// JSON responses are kept up to this size to read `usage` at the end; a larger one (a huge
/// embeddings batch) is relayed all the same, only without token accounting.
pub const MAX_JSON_CAPTURE: usize = 8 << 20;

pub enum Mode {
    Sse(SseScanner),
    Json {
        captured: Vec<u8>,
        overflow: bool,
    },
    /// Error bodies and unknown content: relayed, not inspected.
    Raw,
}

impl Mode {
    pub fn json() -> Self {
        Mode::Json {
            captured: Vec::new(),
            overflow: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Streaming,
    /// An error event was sent; end the stream next.
    Ending,
    Done,
}

pin_project_lite::pin_project! {
    pub struct RelayBody {
        #[pin]
        inner: Incoming,
        #[pin]
        timer: Sleep,
        mode: Mode,
        idle: Duration,
        deadline: Instant,
        record: RequestRecord,
        outcome: &'static str,
        state: State,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl RelayBody {
    pub fn new(
        inner: Incoming,
        mode: Mode,
        idle: Duration,
        deadline: Instant,
        record: RequestRecord,
        outcome: &'static str,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let first = (Instant::now() + idle).min(deadline);
        RelayBody {
            inner,
            timer: tokio::time::sleep_until(first),
            mode,
            idle,
            deadline,
            record,
            outcome,
            state: State::Streaming,
            permit: Some(permit),
        }
    }
}

impl HttpBody for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            match *this.state {
                State::Done => return Poll::Ready(None),
                State::Ending => {
                    *this.state = State::Done;
                    return Poll::Ready(None);
                }
                State::Streaming => {}
            }
            let failure = match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(d) => d,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    this.record.first_byte();
                    let next = (Instant::now() + *this.idle).min(*this.deadline);
                    this.timer.as_mut().reset(next);
                    let out = match this.mode {
                        Mode::Sse(scanner) => scanner.push(data),
                        Mode::Json { captured, overflow } => {
                            if !*overflow {
                                if captured.len() + data.len() <= MAX_JSON_CAPTURE {
                                    captured.extend_from_slice(&data);
                                } else {
                                    *overflow = true;
                                    *captured = Vec::new();
                                }
                            }
                            data
                        }
                        Mode::Raw => data,
                    };
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(None) => {
                    *this.state = State::Done;
                    this.permit.take();
                    let tail = match this.mode {
                        Mode::Sse(scanner) => {
                            let tail = scanner.finish();
                            this.record.usage = scanner.usage;
                            tail
                        }
                        Mode::Json { captured, .. } => {
                            this.record.usage = parse_usage(captured).map(|r| r.usage);
                            Bytes::new()
                        }
                        Mode::Raw => Bytes::new(),
                    };
                    let outcome = match this.mode {
                        Mode::Sse(s) if s.saw_error => "upstream_stream_error",
                        // OpenAI-compatible streams end with `[DONE]`; without it the stream was cut.
                        Mode::Sse(s) if !s.done => "incomplete",
                        _ => *this.outcome,
                    };
                    this.record.finish(outcome);
                    if tail.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                Poll::Ready(Some(Err(e))) => Failure::Reset(crate::upstream::error_chain(&e)),
                Poll::Pending => {
                    ready!(this.timer.as_mut().poll(cx));
                    if Instant::now() >= *this.deadline {
                        Failure::TotalTimeout
                    } else {
                        Failure::IdleTimeout(*this.idle)
                    }
                }
            };
            // The upstream failed mid-body.
            this.permit.take();
            let (outcome, message) = failure.describe();
            let provider = this.record.model.as_ref().map(|m| m.provider.clone());
            if let Some(p) = &provider {
                // Counted here because the handler already returned.
                this.record.metrics().upstream_error(p, outcome);
            }
            tracing::warn!(request_id = this.record.request_id.to_str().unwrap_or(""), %message, "upstream failed mid-response");
            if let Mode::Sse(scanner) = this.mode {
                this.record.usage = scanner.usage;
                this.record.finish(outcome);
                *this.state = State::Ending;
                let mut event = b"data: ".to_vec();
                event.extend_from_slice(&error_body(&message, "upstream_error", None, Some(outcome)));
                event.extend_from_slice(b"\n\n");
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
            }
            this.record.finish(outcome);
            *this.state = State::Done;
            return Poll::Ready(Some(Err(message.into())));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.mode {
            // SSE bodies may be rewritten (the usage chunk dropped): no exact length.
            Mode::Sse(_) => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

enum Failure {
    Reset(String),
    IdleTimeout(Duration),
    TotalTimeout,
}

impl Failure {
    fn describe(&self) -> (&'static str, String) {
        match self {
            Failure::Reset(detail) => (
                "reset",
                format!("The provider's connection failed mid-response: {detail}"),
            ),
            Failure::IdleTimeout(d) => (
                "timeout_idle",
                format!("The provider sent nothing for {d:?} mid-response (timeouts.idle)."),
            ),
            Failure::TotalTimeout => (
                "timeout_total",
                "The response exceeded the provider's total timeout (timeouts.total).".into(),
            ),
        }
    }
}
