//! Provider clients: one pooled hyper client per provider over rustls (webpki roots plus an
//! optional extra CA bundle), the provider's credentials, its timeouts and its concurrency
//! limit. This module sends one request and classifies what went wrong; deciding what to try
//! next belongs to the caller. Each provider protocol is an [`adapter::Adapter`]:
//! `openai_compat` and `anthropic`.

pub mod adapter;
pub mod anthropic;
pub(crate) mod embeddings;
pub mod openai_compat;
mod pool;
pub mod redact;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::{ConfigIssue, ProviderConfig, ProviderKind};
use crate::openai::Endpoint;
// Lives with the logs (the exporter needs it too); callers keep naming it here.
use crate::scheduler::{Permit, Scheduler};
pub use crate::telemetry::error_chain;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies sent upstream: a rewritten JSON body (whole, the usual case: not boxed, no
/// allocation) or the app's own streamed body (passthrough).
pub enum ClientBody {
    Whole(Full<Bytes>),
    Streamed(BoxBody<Bytes, BoxError>),
}

impl ClientBody {
    pub(crate) fn whole(b: Bytes) -> Self {
        ClientBody::Whole(Full::new(b))
    }

    pub(crate) fn empty() -> Self {
        ClientBody::Whole(Full::default())
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Whole(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            ClientBody::Streamed(s) => std::pin::Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Whole(b) => b.is_end_stream(),
            ClientBody::Streamed(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ClientBody::Whole(b) => b.size_hint(),
            ClientBody::Streamed(s) => s.size_hint(),
        }
    }
}

/// Idle pooled connections are closed after this; providers' load balancers drop idle
/// connections after 60–350 s, and reusing a half-closed one costs a failed request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus ones we set.
pub(crate) fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// App headers that reach a provider: the body's framing and type, content negotiation, the
/// SDK's identity and retry bookkeeping, trace context, idempotency, and API feature flags.
fn forwardable(name: &HeaderName, keep_length: bool) -> bool {
    let n = name.as_str();
    match n {
        "content-length" => keep_length,
        "content-type" | "content-encoding" | "accept" | "accept-encoding" | "accept-language" | "user-agent"
        | "x-request-id" | "traceparent" | "tracestate" | "baggage" | "idempotency-key" | "openai-beta"
        | "anthropic-version" | "anthropic-beta" => true,
        _ => n.starts_with("x-stainless-"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to provider {provider}: {detail}")]
    Connect { provider: Arc<str>, detail: String },
    #[error("provider {provider} sent no response within {after:?}")]
    FirstByteTimeout { provider: Arc<str>, after: Duration },
    #[error("provider {provider} is at its limit of {limit} concurrent requests: {reason}")]
    Busy {
        provider: Arc<str>,
        limit: usize,
        reason: crate::scheduler::QueueError,
    },
    #[error(
        "the circuit for {model} on provider {provider} is open (it failed repeatedly); next probe in {retry_in:?}"
    )]
    CircuitOpen {
        provider: Arc<str>,
        model: Arc<str>,
        retry_in: Duration,
    },
    #[error("provider {provider} answered HTTP {}{detail}", status.as_u16())]
    Status {
        provider: Arc<str>,
        status: http::StatusCode,
        retry_after: Option<Duration>,
        /// `: ` and the provider's own error message, or empty.
        detail: String,
    },
    #[error("the connection to provider {provider} failed: {detail}")]
    Protocol { provider: Arc<str>, detail: String },
    #[error("provider {provider} cannot take this request: {detail}")]
    Unsupported { provider: Arc<str>, detail: String },
    #[error("provider {provider} failed mid-response: {failure}")]
    Body { provider: Arc<str>, failure: BodyFailure },
    /// A 401/403: the provider refused the sidecar's own credential for it. Not the app's
    /// fault (the app's key never goes upstream), and another provider may well answer.
    #[error("provider {provider} refused the sidecar's credential (HTTP {}){detail}; its key must be fixed in the config", status.as_u16())]
    Auth {
        provider: Arc<str>,
        status: http::StatusCode,
        detail: String,
    },
    /// A success status whose body is not the answer asked for.
    #[error("provider {provider} sent a broken answer with HTTP {}: {detail}", status.as_u16())]
    Malformed {
        provider: Arc<str>,
        status: http::StatusCode,
        detail: String,
    },
}

/// How a response body failed after its headers had arrived.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyFailure {
    #[error("the connection broke ({0})")]
    Reset(String),
    #[error("nothing arrived for {0:?} (timeouts.idle)")]
    IdleTimeout(Duration),
    #[error("the response exceeded timeouts.total")]
    TotalTimeout,
    /// No content event within `timeouts.first_byte` of the request, though the headers came.
    #[error("no event arrived within {0:?} (timeouts.first_byte)")]
    FirstEventTimeout(Duration),
    /// The stream's events stopped being what was asked for.
    #[error("the stream sent {0}")]
    Malformed(&'static str),
    /// The provider reported an error in-band, in its event stream.
    #[error("the stream reported an error: {0}")]
    ErrorEvent(String),
    /// The stream ended before its terminator (`[DONE]`, or Anthropic's `message_stop`).
    #[error("the stream ended without its terminator; the answer is incomplete")]
    Unterminated,
    /// The stream ended before its first content event.
    #[error("the stream ended before any content")]
    Empty,
    /// Not the provider: the sidecar is shutting down and its grace period ended.
    #[error("the sidecar is shutting down and its grace period (server.shutdown_grace) ended; retry the request")]
    Shutdown,
}

impl BodyFailure {
    /// Metric and error-code label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            BodyFailure::Reset(_) => "reset",
            BodyFailure::IdleTimeout(_) => "timeout_idle",
            BodyFailure::TotalTimeout => "timeout_total",
            BodyFailure::FirstEventTimeout(_) => "timeout_first_byte",
            BodyFailure::Malformed(_) => "malformed",
            BodyFailure::ErrorEvent(_) => "stream_error",
            BodyFailure::Unterminated | BodyFailure::Empty => "incomplete",
            BodyFailure::Shutdown => "shutdown",
        }
    }

    /// Worth another try on the same candidate: the provider answered, then broke. A timeout
    /// goes to the next candidate instead (see `server/attempt.rs`).
    pub(crate) fn retryable(&self) -> bool {
        !matches!(
            self,
            BodyFailure::IdleTimeout(_) | BodyFailure::TotalTimeout | BodyFailure::FirstEventTimeout(_)
        )
    }
}

/// A response body read whole, or the start of one too large to hold.
pub enum BodyRead {
    Complete(Bytes),
    /// More than the cap arrived: what was read so far; the rest is still in the `Incoming`.
    TooLarge(Bytes),
}

/// The body's next frame, or `Err` when none came by `due`. A frame that is there already is
/// taken without a timer: a small body usually arrives with its head, and arming a timer per
/// frame (a clock read and a timer-wheel entry) cost ~1 % of a proxied request's CPU (#19).
pub(crate) async fn next_frame<B: http_body::Body + Unpin>(
    body: &mut B,
    due: impl FnOnce() -> Instant,
) -> Result<Option<Result<http_body::Frame<B::Data>, B::Error>>, tokio::time::error::Elapsed> {
    use http_body_util::BodyExt;
    if let Some(ready) = futures_util::FutureExt::now_or_never(body.frame()) {
        return Ok(ready);
    }
    tokio::time::timeout_at(due(), body.frame()).await
}

/// Reads a response body to its end within the idle and total timeouts, keeping at most `cap`
/// bytes. A body that arrives in one frame (the usual case) is returned without a copy.
pub(crate) async fn read_body(
    incoming: &mut Incoming,
    idle: Duration,
    deadline: Instant,
    cap: usize,
) -> Result<BodyRead, BodyFailure> {
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    loop {
        let frame = match next_frame(incoming, || (Instant::now() + idle).min(deadline)).await {
            Err(_) if Instant::now() >= deadline => return Err(BodyFailure::TotalTimeout),
            Err(_) => return Err(BodyFailure::IdleTimeout(idle)),
            Ok(None) => {
                let body = match first {
                    Some(f) if rest.is_empty() => f,
                    Some(f) => {
                        let mut all = bytes::BytesMut::with_capacity(f.len() + rest.len());
                        all.extend_from_slice(&f);
                        all.extend_from_slice(&rest);
                        all.freeze()
                    }
                    None => Bytes::new(),
                };
                return Ok(BodyRead::Complete(body));
            }
            Ok(Some(Err(e))) => return Err(BodyFailure::Reset(error_chain(&e))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        match &first {
            None => first = Some(data),
            Some(_) => rest.extend_from_slice(&data),
        }
        let held = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if held > cap {
            let mut all = bytes::BytesMut::with_capacity(held);
            all.extend_from_slice(first.as_deref().unwrap_or_default());
            all.extend_from_slice(&rest);
            return Ok(BodyRead::TooLarge(all.freeze()));
        }
    }
}

impl UpstreamError {
    /// Metric label for the failure.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::FirstByteTimeout { .. } => "timeout_first_byte",
            UpstreamError::Busy { .. } => "busy",
            UpstreamError::Unsupported { .. } => "unsupported",
            UpstreamError::CircuitOpen { .. } => "circuit_open",
            UpstreamError::Status { status, .. } => match status.as_u16() {
                429 => "status_429",
                500.. => "status_5xx",
                _ => "status_4xx",
            },
            UpstreamError::Protocol { .. } => "reset",
            UpstreamError::Body { failure, .. } => failure.kind(),
            UpstreamError::Auth { .. } => "auth",
            UpstreamError::Malformed { .. } => "malformed",
        }
    }
}

/// A provider ready to take requests.
pub struct Provider {
    pub(crate) config: Arc<ProviderConfig>,
    pool: pool::Pool,
    pub(crate) scheduler: Arc<Scheduler>,
    /// Base URL path without a trailing slash, e.g. `/v1`.
    base_path: String,
    /// The URI of each routed endpoint, made once: building and parsing it per request cost
    /// three allocations on the hot path (#19).
    routed_uris: Vec<(&'static str, Uri)>,
    /// The `host` header for the base URL, made once: left to the client, it is formatted
    /// per request (two allocations). HTTP/2 allows it beside `:authority` when they agree.
    host: Option<HeaderValue>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("base_url", &self.config.base_url)
            .finish()
    }
}

/// A response whose headers have arrived, holding its concurrency permit until the body ends.
pub struct Upstream {
    pub(crate) response: Response<Incoming>,
    pub(crate) permit: Permit,
}

impl Provider {
    /// `weights`: the priority classes' weights (see [`Scheduler`]).
    pub(crate) fn new(config: Arc<ProviderConfig>, weights: &[u32]) -> Result<Self, ConfigIssue> {
        let tls = tls_config(&config)?;
        let pool = pool::Pool::new(pool::connector(tls, config.timeouts.connect), POOL_IDLE_TIMEOUT);
        let base_path = config.base_url.path().trim_end_matches('/').to_owned();
        let mut provider = Self {
            scheduler: Scheduler::new(config.max_connections, weights),
            pool,
            base_path,
            config,
            routed_uris: Vec::new(),
            host: None,
        };
        provider.host = host_header(&provider.config.base_url);
        let adapter = provider.adapter();
        provider.routed_uris = Endpoint::ALL
            .iter()
            .filter_map(|e| adapter.path(e.path()).ok())
            .filter_map(|path| Some((path, provider.uri(path, None).ok()?)))
            .collect();
        Ok(provider)
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.config.name
    }

    pub(crate) fn kind(&self) -> ProviderKind {
        self.config.kind
    }

    /// The wire protocol this provider speaks.
    pub(crate) fn adapter(&self) -> &'static dyn adapter::Adapter {
        match self.config.kind {
            ProviderKind::OpenAi => &openai_compat::OpenAiCompat,
            ProviderKind::Anthropic => &anthropic::Anthropic,
        }
    }

    /// [`Self::uri`] of a routed endpoint's path (the adapter's), without the app's query.
    pub(crate) fn routed_uri(&self, path: &'static str) -> Result<Uri, http::Error> {
        match self.routed_uris.iter().find(|(p, _)| *p == path) {
            Some((_, uri)) => Ok(uri.clone()),
            None => self.uri(path, None),
        }
    }

    /// The upstream URI for an API path relative to the base URL (`/chat/completions`), with the
    /// provider's configured query and the app's own query appended.
    pub(crate) fn uri(&self, suffix: &str, app_query: Option<&str>) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(self.base_path.len() + suffix.len() + self.config.query.len() + 2);
        pq.push_str(&self.base_path);
        pq.push_str(suffix);
        let mut sep = '?';
        for q in [app_query.unwrap_or(""), self.config.query.as_str()] {
            if !q.is_empty() {
                pq.push(sep);
                pq.push_str(q);
                sep = '&';
            }
        }
        let mut parts = self.config.base_url.clone().into_parts();
        parts.path_and_query = Some(pq.parse()?);
        Ok(Uri::from_parts(parts)?)
    }

    /// Copies the app's headers a provider needs, and nothing else: an allowlist, because an
    /// app's credentials come in many spellings (`authorization`, `api-key`, `x-api-key`,
    /// cookies, custom tokens) and none of them is the provider's business — the sidecar
    /// authenticates with its own key. Organisation and project headers belong with that key,
    /// so the app's are not sent either (set them in `providers.*.headers`).
    pub(crate) fn forward_headers(&self, from: &HeaderMap, to: &mut HeaderMap, keep_length: bool) {
        for (name, value) in from {
            if !forwardable(name, keep_length) || self.config.auth.as_ref().is_some_and(|(h, _)| h == name) {
                continue;
            }
            to.append(name.clone(), value.clone());
        }
    }

    /// Sends one request and waits for the response headers (bounded by the first-byte timeout
    /// and the request's overall `deadline`). `permit` is a slot from [`Self::scheduler`].
    pub(crate) async fn send(
        &self,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: ClientBody,
        deadline: Instant,
        permit: Permit,
    ) -> Result<Upstream, UpstreamError> {
        if let Some((name, secret)) = &self.config.auth {
            headers.insert(name.clone(), secret.0.clone());
        }
        for (k, v) in &self.config.headers {
            headers.insert(k.clone(), v.clone());
        }
        self.adapter().default_headers(&mut headers);
        if let Some(host) = &self.host {
            // A `host` the config sets stays.
            headers.entry(http::header::HOST).or_insert_with(|| host.clone());
        }
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let now = Instant::now();
        let limit = (now + self.config.timeouts.first_byte).min(deadline);
        match tokio::time::timeout_at(limit, self.pool.send(req, now)).await {
            Ok(Ok(response)) => Ok(Upstream { response, permit }),
            Ok(Err(e @ pool::SendError::Connect(_))) => Err(UpstreamError::Connect {
                provider: self.name().clone(),
                detail: error_chain(&e),
            }),
            Ok(Err(e)) => Err(UpstreamError::Protocol {
                provider: self.name().clone(),
                detail: error_chain(&e),
            }),
            Err(_) => Err(UpstreamError::FirstByteTimeout {
                provider: self.name().clone(),
                after: limit.saturating_duration_since(now),
            }),
        }
    }
}

/// `host[:port]` of a base URL, the port only when it is not the scheme's default: what the
/// client would have sent.
fn host_header(base: &Uri) -> Option<HeaderValue> {
    let host = base.host()?;
    let default_port = match base.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match base.port_u16().filter(|p| *p != default_port) {
        Some(port) => HeaderValue::try_from(format!("{host}:{port}")).ok(),
        None => HeaderValue::from_str(host).ok(),
    }
}

/// Why [`Provider::post_json`] got no answer.
#[derive(Debug)]
pub(crate) enum PostError {
    /// No slot, no headers or no whole body before the deadline (or the idle timeout).
    Timeout,
    /// A connection error, a broken body, an answer over the cap, or a non-2xx status.
    Failed(String),
}

impl Provider {
    /// POSTs a JSON body and reads the whole 2xx answer (at most `cap` bytes) by `deadline`,
    /// through one of the provider's slots: the sidecar's own calls (a remote embedder's
    /// batches, callouts), not an app's request.
    pub(crate) async fn post_json(
        &self,
        uri: Uri,
        body: Vec<u8>,
        deadline: Instant,
        cap: usize,
    ) -> Result<Bytes, PostError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        // The caller bounds how many wait here; the slots bound what is held open.
        let permit = self
            .scheduler
            .acquire(0, wait, usize::MAX)
            .await
            .map_err(|_| PostError::Timeout)?;
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let Upstream { response, permit } = self
            .send(
                Method::POST,
                uri,
                headers,
                ClientBody::whole(body.into()),
                deadline,
                permit,
            )
            .await
            .map_err(|e| match e {
                UpstreamError::FirstByteTimeout { .. } => PostError::Timeout,
                other => PostError::Failed(other.to_string()),
            })?;
        let status = response.status();
        let mut incoming = response.into_body();
        let read = read_body(&mut incoming, self.config.timeouts.idle, deadline, cap).await;
        drop(permit);
        let body = match read {
            Ok(BodyRead::Complete(b)) => b,
            Ok(BodyRead::TooLarge(_)) => return Err(PostError::Failed(format!("an answer over {cap} bytes"))),
            Err(f) if !f.retryable() => return Err(PostError::Timeout),
            Err(f) => return Err(PostError::Failed(f.to_string())),
        };
        if !status.is_success() {
            return Err(PostError::Failed(format!(
                "HTTP {}{}",
                status.as_u16(),
                error_detail(&body)
            )));
        }
        Ok(body)
    }
}

/// `: message` from an error body in OpenAI's or Anthropic's shape (at most 300 characters),
/// or an empty string.
pub(crate) fn error_detail(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    match v["error"]["message"].as_str().or_else(|| v["message"].as_str()) {
        Some(m) => format!(": {}", m.chars().take(300).collect::<String>()),
        None => String::new(),
    }
}

fn tls_config(config: &ProviderConfig) -> Result<rustls::ClientConfig, ConfigIssue> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let path = format!("providers.{}.ca_file", config.name);
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(ca) = &config.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| ConfigIssue::new(&path, format!("cannot read {}: {e}", ca.display())))?;
        let mut added = 0;
        for cert in certs {
            let cert =
                cert.map_err(|e| ConfigIssue::new(&path, format!("{} is not a PEM bundle: {e}", ca.display())))?;
            roots.add(cert).map_err(|e| {
                ConfigIssue::new(&path, format!("a certificate in {} is not usable: {e}", ca.display()))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(ConfigIssue::new(
                &path,
                format!("{} holds no PEM certificates", ca.display()),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigIssue::new(format!("providers.{}", config.name), format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}
