//! HTTP: the app-facing OpenAI API and the admin port. This is the only module that knows URL
//! paths. Connections are served by hyper (HTTP/1.1, keep-alive) and tracked so that shutdown
//! can stop accepting, let in-flight requests and streams finish, and cut what remains when
//! the grace period ends.

pub mod admin;
mod attempt;
pub mod body;
mod commit;
pub mod error;
mod headers;
pub mod passthrough;
pub mod proxy;
pub mod record;
pub mod relay;
mod reply;
pub mod response;
mod settle;
mod traced;
pub mod verify;

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::body::Body;
use self::error::ApiError;
use crate::openai::Endpoint;
use crate::state::Shared;

/// A client has this long to send its request headers; slow-loris connections are closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Back-off after a failed `accept` (EMFILE): retrying at once would spin the CPU.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Routes one app request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let request_id = request_id(req.headers());
    let path = match normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(why) => {
            let e = ApiError::invalid(
                Some("invalid_path"),
                format!("Invalid URL path: {why}. Send the endpoint's own path, e.g. /v1/chat/completions."),
            );
            return early(e.into_response(&request_id), req);
        }
    };
    let endpoint = match &*path {
        "/v1/chat/completions" => Some(Endpoint::Chat),
        "/v1/completions" => Some(Endpoint::Completions),
        "/v1/embeddings" => Some(Endpoint::Embeddings),
        "/v1/responses" => Some(Endpoint::Responses),
        _ => None,
    };
    match (req.method(), endpoint) {
        (&Method::POST, Some(endpoint)) => proxy::openai(shared, req, endpoint, request_id).await,
        (_, Some(_)) => {
            let e = ApiError::new(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                Some("method_not_allowed"),
                format!("{} {path} is not supported: use POST.", req.method()),
            );
            early(e.into_response(&request_id), req)
        }
        (&Method::GET, None) if path == "/v1/models" => {
            let rt = shared.runtime.load();
            json(rt.models_json.clone(), &request_id)
        }
        (&Method::GET, None) if path.starts_with("/v1/models/") => {
            let rt = shared.runtime.load();
            let id = &path["/v1/models/".len()..];
            match rt.router.knows(id) {
                Ok(()) => {
                    let body =
                        serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "llm-sidecar"});
                    json(serde_json::to_vec(&body).unwrap_or_default().into(), &request_id)
                }
                Err(e) => ApiError::from(e).into_response(&request_id),
            }
        }
        (_, None) if path.starts_with("/v1/") => {
            let path = path.into_owned();
            passthrough::passthrough(shared, req, path, request_id).await
        }
        _ => {
            let resp = ApiError::unknown_url(req.method(), &path).into_response(&request_id);
            early(resp, req)
        }
    }
}

/// An answer given without reading the request's body: what the app is still uploading is
/// drained, so it reads this status instead of a reset.
fn early(resp: Response<Body>, req: Request<Incoming>) -> Response<Body> {
    let continues = proxy::expects_continue(req.headers());
    body::drain_after(resp, req.into_body(), continues)
}

/// One spelling per endpoint: empty segments (`//`, a trailing `/`) are dropped, so
/// `/v1//chat/completions/` is the chat endpoint with its routing, cache and limits, not a
/// passthrough. Dot segments and encoded dots, slashes and backslashes are refused rather than
/// resolved: no OpenAI path has them, and a provider (or a proxy before it) might resolve them
/// differently — `/v1/../admin` must never reach anything with the provider's key attached.
pub(crate) fn normalize_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let b = path.as_bytes();
    if memchr::memchr2(b'%', b'\\', b).is_some() {
        let lower = path.to_ascii_lowercase();
        if ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e)) || path.contains('\\') {
            return Err("encoded dots, slashes and backslashes are not allowed");
        }
    }
    let mut clean = true;
    for seg in path.split('/').skip(1) {
        match seg {
            "." | ".." => return Err("dot segments (/./, /../) are not allowed"),
            "" => clean = false,
            _ => {}
        }
    }
    if clean || path == "/" {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

fn json(body: bytes::Bytes, request_id: &HeaderValue) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(headers::REQUEST_ID, request_id.clone());
    resp
}

/// The app's `x-request-id` when it is a sane token, else a fresh random one (32 hex digits,
/// made on the stack: one allocation, the header value's, however often it is cloned).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&headers::REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let mut hex = [0u8; 32];
    match hex::encode_to_slice(fastrand::u128(..).to_le_bytes(), &mut hex) {
        // Owned by a shared block from the start: the id is cloned into the upstream request
        // and the response, and a copied slice would allocate again at its first clone.
        Ok(()) => HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex))
            .unwrap_or_else(|_| HeaderValue::from_static("0")),
        Err(_) => HeaderValue::from_static("0"),
    }
}

/// Idle keep-alive connections are closed when no new request starts within
/// [`HEADER_READ_TIMEOUT`]; clients are told a shorter time, so none sends a request on a
/// connection at the moment it closes.
const KEEP_ALIVE_ADVERTISED: HeaderValue = HeaderValue::from_static("timeout=25");
/// After the grace period, how long open streams get to send their closing error event before
/// their connections are cut.
const STREAM_CUT_TIME: Duration = Duration::from_millis(250);

/// Accepts connections until `shutdown` carries a grace period, then drains them for up to
/// that long. The grace is read at shutdown time, so a reloaded value applies. When the grace
/// ends, `cut` is cancelled: open streams end with an error event the app can read, and
/// [`STREAM_CUT_TIME`] later whatever is left is closed.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    mut shutdown: watch::Receiver<Option<Duration>>,
    cut: CancellationToken,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let grace = loop {
        // Reap finished connection tasks so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = advertised(handler.clone());
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
                conns.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            grace = stop_requested(&mut shutdown) => break grace,
        }
    };
    drop(listener);
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    if tokio::time::timeout(grace, &mut drained).await.is_err() {
        tracing::warn!(
            remaining = conns.len(),
            "shutdown grace period ended; ending open streams with an error event and closing the connections still open"
        );
        cut.cancel();
        let _ = tokio::time::timeout(STREAM_CUT_TIME, &mut drained).await;
    }
    conns.shutdown().await;
}

/// The handler as a hyper service whose every response advertises the keep-alive timeout.
fn advertised<F, Fut>(
    handler: F,
) -> impl hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    service_fn(move |req| {
        // A combinator, not an `async move` block: a block that captures the handler's future
        // and awaits it holds it twice (the capture and the await slot), 10.7 KB instead of
        // 5.4 KB, copied into hyper's slot for every request (#19).
        futures_util::FutureExt::map(handler(req), |mut resp| {
            resp.headers_mut()
                .insert(header::HeaderName::from_static("keep-alive"), KEEP_ALIVE_ADVERTISED);
            Ok::<_, Infallible>(resp)
        })
    })
}

/// Resolves with the grace period once shutdown is requested (or the sender is gone).
async fn stop_requested(rx: &mut watch::Receiver<Option<Duration>>) -> Duration {
    loop {
        if let Some(grace) = *rx.borrow_and_update() {
            return grace;
        }
        if rx.changed().await.is_err() {
            return Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_apps_when_sane_else_fresh_hex() {
        let fresh = |h: &HeaderMap| request_id(h).to_str().map(str::to_owned).unwrap_or_default();
        let (a, b) = (fresh(&HeaderMap::new()), fresh(&HeaderMap::new()));
        for id in [&a, &b] {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{id}"
            );
        }
        assert_ne!(a, b);
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("app-42"));
        assert_eq!(fresh(&h), "app-42");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_eq!(fresh(&h).len(), 32);
    }
}
