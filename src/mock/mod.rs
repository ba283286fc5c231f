//! A deterministic OpenAI-compatible upstream (chat, completions, embeddings, the Responses
//! API, and an Anthropic Messages endpoint at `/v1/messages`) that runs in-process: the demo's provider, the
//! load benchmark's "fast upstream", and the integration tests' provider that misbehaves on
//! demand (status errors, slow first byte, connection reset, stream cut or stall mid-way).
//! Answers are derived from the request, so tests can assert exactly what comes back.
// A test double: its connection tasks live as long as the mock; no shutdown to honour.
#![allow(clippy::disallowed_methods)]

mod answers;
mod responses;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use answers::*;
use responses::{ResponsesAnswer, unknown_previous};

/// How many requests the mock remembers for tests to inspect (the oldest are dropped).
const RECORDED_MAX: usize = 1000;

/// One misbehaviour, applied to the next request that arrives.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and an OpenAI-shaped error body; `retry_after` seconds if set.
    Status { status: u16, retry_after: Option<u64> },
    /// Wait this long before sending the response headers.
    DelayFirstByte(Duration),
    /// Close the connection without any response.
    Reset,
    /// Stream this many chunks, then break the connection.
    CutAfterChunks(usize),
    /// Stream this many chunks, then go silent with the connection open.
    StallAfterChunks(usize),
    /// Answer exactly this: a status, a content type, body pieces (sent as separate frames),
    /// then `end`. Whatever a broken provider or a proxy in front of it can send.
    Raw {
        status: u16,
        content_type: &'static str,
        chunks: Vec<Bytes>,
        end: RawEnd,
    },
    /// Answer this status with an error message that quotes the credential received
    /// (`Authorization`, `x-api-key` or `api-key`), as careless providers do.
    EchoCredential { status: u16 },
}

/// How a [`Fault::Raw`] body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEnd {
    /// A clean end of the body.
    Complete,
    /// The connection breaks.
    Reset,
    /// Silence, with the connection open.
    Stall,
}

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
pub struct MockControl {
    faults: Mutex<VecDeque<Fault>>,
    recorded: Mutex<VecDeque<Recorded>>,
    chunk_delay: Mutex<Duration>,
    /// (lower-case substring of the last user turn, answer): fixed answers per question.
    answers: Mutex<Vec<(String, String)>>,
    /// When non-zero, chat answers are this many words of prose instead of an echo.
    prose_words: AtomicUsize,
    /// Applied to every request when no queued fault is left.
    standing: Mutex<Option<Fault>>,
    /// Ids of the responses this mock made (`previous_response_id` must name one).
    issued: Mutex<HashSet<String>>,
    /// What `POST /callout` answers: the mock as a callout service (`callouts`).
    callout_answer: Mutex<Option<Value>>,
}

impl MockControl {
    fn next_fault(&self) -> Option<Fault> {
        if let Some(f) = self.faults.lock().ok()?.pop_front() {
            return Some(f);
        }
        self.standing.lock().ok()?.clone()
    }

    fn canned(&self) -> Vec<(String, String)> {
        self.answers.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn chunk_delay(&self) -> Duration {
        self.chunk_delay.lock().map(|d| *d).unwrap_or_default()
    }

    /// A fresh response id, unique across mocks in one process (as ids are across providers).
    fn issue_response_id(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = format!("resp_mock_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        if let Ok(mut issued) = self.issued.lock() {
            issued.insert(id.clone());
        }
        id
    }

    fn issued(&self, id: &str) -> bool {
        self.issued.lock().is_ok_and(|i| i.contains(id))
    }
}

pub struct MockUpstream {
    addr: SocketAddr,
    control: Arc<MockControl>,
    task: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub(crate) async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(addr, None).await
    }

    /// Starts an HTTPS mock with the given certificate chain and key (PEM).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> std::io::Result<Self> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(std::io::Error::other)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(std::io::Error::other)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        Self::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), Some(acceptor)).await
    }

    async fn start_with(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(MockControl::default());
        let c = control.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let c = c.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(c.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Ok(MockUpstream { addr, control, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL of this mock, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn push_fault(&self, fault: Fault) {
        if let Ok(mut f) = self.control.faults.lock() {
            f.push_back(fault);
        }
    }

    /// A fault for every request from now on (after the queued ones); `None` heals the mock.
    pub fn set_standing_fault(&self, fault: Option<Fault>) {
        if let Ok(mut f) = self.control.standing.lock() {
            *f = fault;
        }
    }

    /// Answers `answer` to chat requests whose last user turn contains `key` (case-insensitive)
    /// instead of echoing the question.
    pub fn set_answer(&self, key: &str, answer: &str) {
        if let Ok(mut a) = self.control.answers.lock() {
            a.push((key.to_lowercase(), answer.to_owned()));
        }
    }

    /// Answers chat requests (without a canned answer) with `words` words of deterministic
    /// prose chosen from the question, instead of echoing it: the shape of real answers, for
    /// measuring what a cache holds. 0 restores the echo.
    pub(crate) fn set_prose(&self, words: usize) {
        self.control.prose_words.store(words, Ordering::Relaxed);
    }

    /// Pause between stream chunks (default none).
    /// What `POST /callout` answers from now on (`{}`, "continue", until set): the mock as
    /// the service behind `callouts.*.url` (`<addr>/callout`); faults apply as to any path.
    pub fn set_callout_answer(&self, answer: Value) {
        if let Ok(mut a) = self.control.callout_answer.lock() {
            *a = Some(answer);
        }
    }

    pub fn set_chunk_delay(&self, d: Duration) {
        if let Ok(mut c) = self.control.chunk_delay.lock() {
            *c = d;
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.control
            .recorded
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn last_request(&self) -> Option<Recorded> {
        self.control.recorded.lock().ok()?.back().cloned()
    }
}

type MockResult = Result<Response<MockBody>, std::io::Error>;

async fn handle(control: Arc<MockControl>, req: Request<Incoming>) -> MockResult {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if let Ok(mut r) = control.recorded.lock() {
        if r.len() >= RECORDED_MAX {
            r.pop_front();
        }
        r.push_back(Recorded {
            method: parts.method.clone(),
            path_and_query,
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    let mut cut = None;
    match control.next_fault() {
        Some(Fault::Status { status, retry_after }) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let msg = format!("mock upstream failure {status}");
            let mut resp = json_response(
                code,
                &json!({"error": {"message": msg, "type": "server_error", "param": null, "code": null}}),
            );
            if let Some(s) = retry_after {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            return Ok(resp);
        }
        Some(Fault::DelayFirstByte(d)) => tokio::time::sleep(d).await,
        Some(Fault::Reset) => return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock reset")),
        Some(Fault::CutAfterChunks(n)) => cut = Some((n, false)),
        Some(Fault::StallAfterChunks(n)) => cut = Some((n, true)),
        Some(Fault::Raw {
            status,
            content_type,
            chunks,
            end,
        }) => {
            let n = chunks.len();
            let cut = match end {
                RawEnd::Complete => None,
                RawEnd::Reset => Some((n, false)),
                RawEnd::Stall => Some((n, true)),
            };
            let mut resp = streamed(chunks, Duration::ZERO, cut, content_type);
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return Ok(resp);
        }
        Some(Fault::EchoCredential { status }) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
            let key = ["authorization", "x-api-key", "api-key"]
                .iter()
                .find_map(|h| parts.headers.get(*h))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let msg = format!("Incorrect API key provided: {key}. You can find your API key in your account.");
            return Ok(json_response(
                code,
                &json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            ));
        }
        None => {}
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = parts.uri.path();
    let answer = match (parts.method, path) {
        (Method::POST, "/v1/chat/completions") if req.is_object() => {
            Completion::chat(&req, &control.canned(), control.prose_words.load(Ordering::Relaxed))
        }
        (Method::POST, "/v1/completions") if req.is_object() => Completion::text(&req),
        (Method::POST, "/v1/messages") if req.is_object() => {
            let a = anthropic_answer(&req, &control.canned());
            return Ok(if req["stream"].as_bool().unwrap_or(false) {
                streamed(a.events(), control.chunk_delay(), cut, "text/event-stream")
            } else {
                json_response(StatusCode::OK, &a.json())
            });
        }
        (Method::POST, "/v1/embeddings") if req.is_object() => {
            return Ok(json_response(StatusCode::OK, &embeddings(&req)));
        }
        (Method::POST, "/callout") => {
            let answer = control.callout_answer.lock().ok().and_then(|a| a.clone());
            return Ok(json_response(StatusCode::OK, &answer.unwrap_or_else(|| json!({}))));
        }
        (Method::POST, "/v1/responses") if req.is_object() => {
            if let Some(previous) = req["previous_response_id"].as_str()
                && !control.issued(previous)
            {
                return Ok(json_response(StatusCode::BAD_REQUEST, &unknown_previous(previous)));
            }
            let id = control.issue_response_id();
            let a = ResponsesAnswer::new(&req, id, &control.canned(), control.prose_words.load(Ordering::Relaxed));
            let delay = control.chunk_delay();
            return Ok(deliver(a.stream(), || a.events(), || a.json(true), delay, cut));
        }
        (Method::GET, "/v1/models") => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}),
            ));
        }
        (Method::POST, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" | "/v1/responses") => {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": {"message": "mock: body is not a JSON object", "type": "invalid_request_error", "param": null, "code": null}}),
            ));
        }
        (method, _) => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"object": "mock.echo", "method": method.as_str(), "path": path, "query": parts.uri.query(), "body_bytes": body.len()}),
            ));
        }
    };
    let delay = control.chunk_delay();
    Ok(deliver(answer.stream, || answer.events(), || answer.json(), delay, cut))
}

/// An answer as a stream of `events` or as the JSON `whole`; with `cut`, the stream breaks
/// (or stalls) after that many events, and a JSON body half-way.
fn deliver(
    stream: bool,
    events: impl FnOnce() -> Vec<Bytes>,
    whole: impl FnOnce() -> Value,
    delay: Duration,
    cut: Option<(usize, bool)>,
) -> Response<MockBody> {
    if stream {
        streamed(events(), delay, cut, "text/event-stream")
    } else if let Some((_, stall)) = cut {
        let body = Bytes::from(serde_json::to_vec(&whole()).unwrap_or_default());
        let half = body.slice(..body.len() / 2);
        streamed(vec![half], Duration::ZERO, Some((1, stall)), "application/json")
    } else {
        json_response(StatusCode::OK, &whole())
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::Full(Some(Bytes::from(
        serde_json::to_vec(v).unwrap_or_default(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub enum MockBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl http_body::Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_is_deterministic_sentence_shaped_and_does_not_echo() {
        let q = "How do I reset my password?";
        let a = prose(q, 120);
        assert_eq!(a, prose(q, 120));
        assert_ne!(a, prose("How do I block my card?", 120));
        assert_eq!(a.split_whitespace().count(), 120);
        assert!(a.ends_with('.') && a.starts_with(char::is_uppercase), "{a}");
        assert!(!a.contains(q));
    }
}
