//! What the provider sent back, made ready for the app: the body read whole or kept as a
//! stream ([`receive`]), and the small response helpers both the request handler
//! (`proxy.rs`) and one attempt (`attempt.rs`) use.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::ApiError;
use crate::upstream::{BodyFailure, BodyRead, ClientBody, read_body};

/// Response bodies up to this size are read whole before the app gets the response: the app
/// cannot use half a JSON document, usage is read from the whole, the response goes out in one
/// write with a `content-length`, and a provider failing mid-body can still be failed over.
/// A larger body (a huge embeddings batch) streams.
pub(crate) const MAX_HELD_BODY: usize = 8 << 20;
/// Error bodies of refused requests are read for their message, up to this size and time.
const ERROR_BODY_MAX: usize = 64 << 10;
const ERROR_BODY_TIME: Duration = Duration::from_secs(2);

/// The message of a provider's error answer (`": …"`, or "" when it has none or is too slow
/// or too large to read), for the error the app or the log gets.
pub(super) async fn error_message(response: http::Response<Incoming>, idle: Duration, deadline: Instant) -> String {
    let (_, mut incoming) = response.into_parts();
    let until = deadline.min(Instant::now() + ERROR_BODY_TIME);
    match read_body(&mut incoming, idle, until, ERROR_BODY_MAX).await {
        Ok(BodyRead::Complete(b)) => crate::upstream::error_detail(&b),
        _ => String::new(),
    }
}

pub(super) enum Received {
    /// The whole body.
    Complete(Bytes),
    /// To relay as it arrives: SSE, or a body larger than [`MAX_HELD_BODY`] (its start in `prefix`).
    Stream {
        incoming: Incoming,
        prefix: Option<Bytes>,
        sse: bool,
    },
}

/// Turns response headers into a response body ready to relay: SSE streams; anything else is read whole
/// (up to [`MAX_HELD_BODY`]).
pub(super) async fn receive(
    response: http::Response<Incoming>,
    idle: Duration,
    deadline: Instant,
) -> Result<(http::response::Parts, Received), BodyFailure> {
    let (parts, mut incoming) = response.into_parts();
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if sse {
        return Ok((
            parts,
            Received::Stream {
                incoming,
                prefix: None,
                sse,
            },
        ));
    }
    match read_body(&mut incoming, idle, deadline, MAX_HELD_BODY).await? {
        BodyRead::Complete(b) => Ok((parts, Received::Complete(b))),
        BodyRead::TooLarge(prefix) => Ok((
            parts,
            Received::Stream {
                incoming,
                prefix: Some(prefix),
                sse,
            },
        )),
    }
}

pub(super) fn full(b: Bytes) -> ClientBody {
    ClientBody::whole(b)
}

pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "internal error");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        None,
        format!("Internal error in llm-sidecar: {e}"),
    )
}
