//! HTTP: the app-facing OpenAI API and the admin port. This is the only module that knows URL
//! paths. Connections are served by hyper (HTTP/1.1, keep-alive) and tracked so that shutdown
//! can stop accepting, let in-flight requests and streams finish, and cut what remains when
//! the grace period ends.

pub mod admin;
mod attempt;
pub mod body;
pub mod error;
pub mod proxy;
pub mod record;
pub mod relay;
mod traced;
pub mod verify;

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

use self::body::Body;
use self::error::ApiError;
use self::proxy::Endpoint;
use crate::state::Shared;

/// A client has this long to send its request headers; slow-loris connections are closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Back-off after a failed `accept` (EMFILE): retrying at once would spin the CPU.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Routes one app request.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let request_id = request_id(req.headers());
    let path = req.uri().path();
    let endpoint = match path {
        "/v1/chat/completions" => Some(Endpoint::Chat),
        "/v1/completions" => Some(Endpoint::Completions),
        "/v1/embeddings" => Some(Endpoint::Embeddings),
        _ => None,
    };
    match (req.method(), endpoint) {
        (&Method::POST, Some(endpoint)) => proxy::openai(shared, req, endpoint, request_id).await,
        (_, Some(_)) => ApiError::new(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("{} {path} is not supported: use POST.", req.method()),
        )
        .into_response(&request_id),
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
        (_, None) if path.starts_with("/v1/") => proxy::passthrough(shared, req, request_id).await,
        _ => ApiError::unknown_url(req.method(), path).into_response(&request_id),
    }
}

fn json(body: bytes::Bytes, request_id: &HeaderValue) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("x-request-id", request_id.clone());
    resp
}

/// The app's `x-request-id` when it is a sane token, else a fresh random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Accepts connections until `shutdown` carries a grace period, then drains them for up to
/// that long. The grace is read at shutdown time, so a reloaded value applies.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F, mut shutdown: watch::Receiver<Option<Duration>>)
where
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
                let handler = handler.clone();
                let svc = service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
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
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            remaining = conns.len(),
            "shutdown grace period ended; closing the connections still open"
        );
    }
    conns.shutdown().await;
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
