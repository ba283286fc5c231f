//! A deterministic OpenAI-compatible upstream (and an Anthropic Messages endpoint at
//! `/v1/messages`) that runs in-process: the demo's provider, the
//! load benchmark's "fast upstream", and the integration tests' provider that misbehaves on
//! demand (status errors, slow first byte, connection reset, stream cut or stall mid-way).
//! Answers are derived from the request, so tests can assert exactly what comes back.
// A test double: its connection tasks live as long as the mock; no shutdown to honour.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
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

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
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
    pub fn set_prose(&self, words: usize) {
        self.control.prose_words.store(words, Ordering::Relaxed);
    }

    /// Pause between stream chunks (default none).
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
        (Method::GET, "/v1/models") => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}),
            ));
        }
        (Method::POST, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {
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
    if answer.stream {
        Ok(answer.stream_response(control.chunk_delay(), cut))
    } else if let Some((_, stall)) = cut {
        // A JSON body that breaks (or stalls) half-way.
        let body = Bytes::from(serde_json::to_vec(&answer.json()).unwrap_or_default());
        let half = body.slice(..body.len() / 2);
        Ok(streamed(
            vec![half],
            Duration::ZERO,
            Some((1, stall)),
            "application/json",
        ))
    } else {
        Ok(json_response(StatusCode::OK, &answer.json()))
    }
}

struct Completion {
    chat: bool,
    model: String,
    words: Vec<String>,
    prompt_tokens: u64,
    stream: bool,
    include_usage: bool,
}

impl Completion {
    fn chat(req: &Value, canned: &[(String, String)], prose_words: usize) -> Self {
        let messages = req["messages"].as_array().cloned().unwrap_or_default();
        let mut prompt_tokens = 0;
        let mut last_user = String::new();
        for m in &messages {
            let text = content_text(&m["content"]);
            prompt_tokens += 1 + text.split_whitespace().count() as u64;
            if m["role"] == "user" {
                last_user = text;
            }
        }
        let lower = last_user.to_lowercase();
        let answer = canned
            .iter()
            .find(|(key, _)| lower.contains(key.as_str()))
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| match prose_words {
                0 => format!("Mock answer to: {last_user}"),
                n => prose(&last_user, n),
            });
        Self::new(true, req, answer, prompt_tokens)
    }

    fn text(req: &Value) -> Self {
        let prompt = match &req["prompt"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let tokens = prompt.split_whitespace().count() as u64;
        Self::new(false, req, format!("Mock completion of: {prompt}"), tokens)
    }

    fn new(chat: bool, req: &Value, answer: String, prompt_tokens: u64) -> Self {
        Completion {
            chat,
            model: req["model"].as_str().unwrap_or("mock-model").to_owned(),
            words: answer.split_whitespace().map(str::to_owned).collect(),
            prompt_tokens,
            stream: req["stream"].as_bool().unwrap_or(false),
            include_usage: req["stream_options"]["include_usage"].as_bool().unwrap_or(false),
        }
    }

    fn usage(&self) -> Value {
        let c = self.words.len() as u64;
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": c, "total_tokens": self.prompt_tokens + c})
    }

    fn json(&self) -> Value {
        let text = self.words.join(" ");
        if self.chat {
            json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000u64, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": null}],
                "usage": self.usage(),
            })
        } else {
            json!({
                "id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000u64, "model": self.model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": null}],
                "usage": self.usage(),
            })
        }
    }

    fn chunk(&self, delta: Option<&str>, role: bool, finish: bool) -> Value {
        let choice = if self.chat {
            let mut d = serde_json::Map::new();
            if role {
                d.insert("role".into(), "assistant".into());
            }
            if let Some(t) = delta {
                d.insert("content".into(), t.into());
            }
            json!({"index": 0, "delta": d, "finish_reason": if finish { Some("stop") } else { None }, "logprobs": null})
        } else {
            json!({"index": 0, "text": delta.unwrap_or(""), "finish_reason": if finish { Some("stop") } else { None }, "logprobs": null})
        };
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut v = json!({"id": "chatcmpl-mock", "object": object, "created": 1_700_000_000u64, "model": self.model, "choices": [choice]});
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn events(&self) -> Vec<Bytes> {
        let mut chunks = Vec::with_capacity(self.words.len() + 4);
        if self.chat {
            chunks.push(self.chunk(Some(""), true, false));
        }
        for (i, w) in self.words.iter().enumerate() {
            let piece = if i == 0 { w.clone() } else { format!(" {w}") };
            chunks.push(self.chunk(Some(&piece), false, false));
        }
        chunks.push(self.chunk(None, false, true));
        if self.include_usage {
            let object = if self.chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            };
            chunks.push(json!({"id": "chatcmpl-mock", "object": object, "created": 1_700_000_000u64, "model": self.model, "choices": [], "usage": self.usage()}));
        }
        let mut out: Vec<Bytes> = chunks.iter().map(|c| Bytes::from(format!("data: {c}\n\n"))).collect();
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    fn stream_response(&self, delay: Duration, cut: Option<(usize, bool)>) -> Response<MockBody> {
        streamed(self.events(), delay, cut, "text/event-stream")
    }
}

/// Sends `chunks` with `delay` between them. With `cut = Some((n, stall))`, after `n` chunks
/// the connection breaks (or, with `stall`, goes silent while staying open).
fn streamed(
    chunks: Vec<Bytes>,
    delay: Duration,
    cut: Option<(usize, bool)>,
    content_type: &'static str,
) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let n = cut.map_or(usize::MAX, |(n, _)| n);
        for (i, chunk) in chunks.into_iter().take(n).enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        match cut {
            None => {}
            Some((_, true)) => tx.closed().await,
            Some((_, false)) => {
                // Let hyper flush what was sent, so the break really is mid-body.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock cut",
                    )))
                    .await;
            }
        }
    });
    let mut resp = Response::new(MockBody::Stream(rx));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// What the mock's Anthropic Messages endpoint answers: the echo text, plus a call of the
/// first tool when the request offers tools.
struct AnthropicAnswer {
    model: String,
    text: String,
    tool: Option<String>,
    input_tokens: u64,
}

/// `words` words of sentence-shaped text drawn from common English, seeded by `question`.
fn prose(question: &str, words: usize) -> String {
    // Common English words, one per line (a data file, not code).
    static VOCABULARY: std::sync::LazyLock<Vec<&'static str>> =
        std::sync::LazyLock::new(|| include_str!("vocabulary.txt").split_whitespace().collect());
    let mut seed = question.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut text = String::with_capacity(words * 7);
    let mut sentence = 0;
    for i in 0..words {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let word = VOCABULARY[(seed % VOCABULARY.len() as u64) as usize];
        if sentence == 0 {
            if i > 0 {
                text.push(' ');
            }
            let mut c = word.chars();
            if let Some(f) = c.next() {
                text.extend(f.to_uppercase());
                text.push_str(c.as_str());
            }
        } else {
            text.push(' ');
            text.push_str(word);
        }
        sentence += 1;
        if sentence >= 8 + (seed >> 40) as usize % 10 || i + 1 == words {
            text.push('.');
            sentence = 0;
        }
    }
    text
}

fn anthropic_answer(req: &Value, canned: &[(String, String)]) -> AnthropicAnswer {
    let mut last_user = String::new();
    let mut input_tokens = 0;
    for m in req["messages"].as_array().into_iter().flatten() {
        let text = content_text(&m["content"]);
        input_tokens += 1 + text.split_whitespace().count() as u64;
        if m["role"] == "user" && !text.is_empty() {
            last_user = text;
        }
    }
    let lower = last_user.to_lowercase();
    let text = canned
        .iter()
        .find(|(key, _)| lower.contains(key.as_str()))
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| format!("Mock answer to: {last_user}"));
    AnthropicAnswer {
        model: req["model"].as_str().unwrap_or("claude-mock").to_owned(),
        text,
        tool: req["tools"][0]["name"].as_str().map(str::to_owned),
        input_tokens,
    }
}

impl AnthropicAnswer {
    fn output_tokens(&self) -> u64 {
        self.text.split_whitespace().count() as u64 + u64::from(self.tool.is_some())
    }

    fn json(&self) -> Value {
        let mut content = vec![json!({"type": "text", "text": self.text})];
        if let Some(t) = &self.tool {
            content.push(json!({"type": "tool_use", "id": "toolu_mock", "name": t, "input": {"q": "mock"}}));
        }
        json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": self.model, "content": content,
            "stop_reason": if self.tool.is_some() { "tool_use" } else { "end_turn" }, "stop_sequence": null,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens()},
        })
    }

    fn events(&self) -> Vec<Bytes> {
        let mut ev = vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "content": [], "model": self.model, "stop_reason": null, "usage": {"input_tokens": self.input_tokens, "output_tokens": 1}}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
        ];
        for (i, w) in self.text.split_whitespace().enumerate() {
            let piece = if i == 0 { w.to_owned() } else { format!(" {w}") };
            ev.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
        ev.push(("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
        if let Some(t) = &self.tool {
            ev.push(("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_mock", "name": t, "input": {}}})));
            for part in ["{\"q\": ", "\"mock\"}"] {
                ev.push(("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": part}})));
            }
            ev.push(("content_block_stop", json!({"type": "content_block_stop", "index": 1})));
        }
        let stop = if self.tool.is_some() { "tool_use" } else { "end_turn" };
        ev.push(("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": self.output_tokens()}})));
        ev.push(("message_stop", json!({"type": "message_stop"})));
        ev.into_iter()
            .map(|(name, data)| Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
            .collect()
    }
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Deterministic unit vectors derived from the input text (FNV-1a seeded), so equal inputs get
/// equal embeddings.
fn embeddings(req: &Value) -> Value {
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
            .collect(),
        other => vec![other.to_string()],
    };
    let dims = req["dimensions"].as_u64().unwrap_or(8).clamp(1, 4096) as usize;
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += text.split_whitespace().count() as u64;
            let mut h: u64 = 0xcbf29ce484222325;
            for b in text.bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100000001b3);
            }
            let mut v: Vec<f64> = (0..dims)
                .map(|_| {
                    h ^= h << 13;
                    h ^= h >> 7;
                    h ^= h << 17;
                    (h % 2000) as f64 / 1000.0 - 1.0
                })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
            v.iter_mut().for_each(|x| *x /= norm);
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    json!({"object": "list", "data": data, "model": req["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
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
