//! Committing a stream: a stream goes to the app only once it has shown its first content
//! event (a well-formed answer chunk). Until then nothing went to the app, so a stream that
//! ends, breaks, stalls or reports an error before that is failed over like a 5xx.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Duration;
use tokio::time::Instant;

use super::relay::MAX_CAPTURE;
use super::settle::Settle;
use crate::openai::SseScanner;
use crate::upstream::adapter::StreamTranslate;
use crate::upstream::{BodyFailure, error_chain};

/// A stream that has shown its first content event. Until then nothing went to the app, so a
/// stream that failed earlier was failed over like any other failure.
pub(super) struct Committed {
    /// The scanner that read the events so far; the relay goes on with it.
    pub(crate) scanner: SseScanner,
    /// What goes to the app first (the scanner's output so far).
    pub(crate) prefix: Bytes,
    /// The OpenAI-shaped bytes read so far, for the cached copy.
    pub(crate) seen: Bytes,
    /// The breaker's verdict on this attempt, given when the stream ends.
    pub(crate) settle: Settle,
}

/// Reads a stream up to its first content event: an event that is a well-formed answer chunk.
/// Returns what to send the app first and the OpenAI-shaped bytes read. A stream that ends,
/// breaks, stalls, reports an error or sends something else before that has sent the app
/// nothing, so it fails like a 5xx would.
pub(super) async fn first_event(
    incoming: &mut Incoming,
    translate: &mut Option<Box<dyn StreamTranslate>>,
    scanner: &mut SseScanner,
    (idle, first_event_by, first_byte, deadline): (Duration, Instant, Duration, Instant),
) -> Result<(Bytes, Bytes), BodyFailure> {
    let mut out = BytesMut::new();
    let mut seen = BytesMut::new();
    loop {
        let wake = (Instant::now() + idle).min(first_event_by).min(deadline);
        let frame = match tokio::time::timeout_at(wake, incoming.frame()).await {
            Err(_) => {
                let now = Instant::now();
                return Err(if now >= deadline {
                    BodyFailure::TotalTimeout
                } else if now >= first_event_by {
                    BodyFailure::FirstEventTimeout(first_byte)
                } else {
                    BodyFailure::IdleTimeout(idle)
                });
            }
            Ok(None) => return Err(ended_early(scanner)),
            Ok(Some(Err(e))) => return Err(BodyFailure::Reset(error_chain(&e))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        let data = match translate.as_mut() {
            Some(t) => t.feed(&data),
            None => data,
        };
        if data.is_empty() {
            continue;
        }
        seen.extend_from_slice(&data);
        out.extend_from_slice(&scanner.push(data));
        if let Some(what) = scanner.malformed {
            return Err(BodyFailure::Malformed(what));
        }
        if scanner.content_events > 0 {
            return Ok((out.freeze(), seen.freeze()));
        }
        if scanner.saw_error {
            return Err(BodyFailure::ErrorEvent(
                scanner.error_message.clone().unwrap_or_default(),
            ));
        }
        if seen.len() > MAX_CAPTURE {
            return Err(BodyFailure::Malformed("over 1 MiB before its first content event"));
        }
    }
}

/// Why a stream that ended before its first content event failed.
fn ended_early(scanner: &mut SseScanner) -> BodyFailure {
    let tail = scanner.finish();
    if scanner.malformed.is_some() {
        BodyFailure::Malformed("an event that is not a JSON object")
    } else if scanner.content_events > 0 && !tail.is_empty() {
        // One last unterminated content event and no `[DONE]`.
        BodyFailure::Unterminated
    } else {
        BodyFailure::Empty
    }
}
