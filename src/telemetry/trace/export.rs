//! The exporter task: takes finished traces off the queue, batches them (by size or after
//! `interval`), and sends each batch as one OTLP `ExportTraceServiceRequest` over gRPC or
//! HTTP. Retryable answers (HTTP 429/502/503/504, gRPC UNAVAILABLE and kin, connection errors)
//! are retried with backoff within `timeout`; anything else drops the batch, counted. A
//! collector that is down never slows requests: the queue is bounded and pushing is
//! non-blocking. On shutdown the queue is drained and flushed once.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{RequestTrace, Tracer, otlp};
use crate::config::{OtlpProtocol, TracingConfig};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const MAX_ATTEMPTS: u32 = 4;
/// The longest `Retry-After` honoured; a collector asking for more gets the batch dropped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long shutdown waits for the last flush.
pub(crate) const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("{0}")]
    Retryable(String, Option<Duration>),
    #[error("{0}")]
    Permanent(String),
}

struct Clients {
    http: HttpsClient,
    /// gRPC needs HTTP/2 even over plain TCP (prior knowledge).
    grpc: HttpsClient,
}

impl Clients {
    fn new() -> Option<Clients> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth();
        let build = |h2_only: bool| {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_secs(5)));
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(50))
                .http2_only(h2_only)
                .build(https)
        };
        Some(Clients {
            http: build(false),
            grpc: build(true),
        })
    }
}

/// Runs until `stop` turns true, then flushes what is queued (within [`SHUTDOWN_FLUSH`]).
pub(crate) async fn run(tracer: Arc<Tracer>, mut stop: watch::Receiver<bool>) {
    let Some(mut rx) = tracer.take_receiver() else {
        return;
    };
    let Some(clients) = Clients::new() else {
        tracing::error!("tracing: TLS setup failed; spans will not be exported");
        return;
    };
    let mut exporter = Exporter {
        tracer,
        clients,
        failing: false,
    };
    let mut batch: Vec<RequestTrace> = Vec::new();
    let mut spans = 0usize;
    let mut due: Option<Instant> = None;
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some(t) = got else { break };
                if batch.is_empty() {
                    due = Some(Instant::now() + t.settings.interval);
                }
                spans += t.span_count();
                let full = spans >= t.settings.batch_size;
                batch.push(*t);
                if full {
                    exporter.flush(std::mem::take(&mut batch)).await;
                    spans = 0;
                    due = None;
                }
            }
            _ = sleep_until(due), if due.is_some() => {
                exporter.flush(std::mem::take(&mut batch)).await;
                spans = 0;
                due = None;
            }
            changed = stop.changed() => {
                let stopping = changed.is_err() || *stop.borrow();
                if !stopping {
                    continue;
                }
                while let Ok(t) = rx.try_recv() {
                    batch.push(*t);
                }
                let _ = tokio::time::timeout(SHUTDOWN_FLUSH, exporter.flush(batch)).await;
                return;
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(d) = due {
        tokio::time::sleep_until(d).await;
    }
}

struct Exporter {
    tracer: Arc<Tracer>,
    clients: Clients,
    /// The last export failed: the next success says so once, and failures are not logged
    /// again until then.
    failing: bool,
}

impl Exporter {
    async fn flush(&mut self, batch: Vec<RequestTrace>) {
        // Traces keep the settings they were sampled under; after a reload a batch may hold two.
        let mut rest = batch;
        while !rest.is_empty() {
            let settings = rest[0].settings.clone();
            let (same, other): (Vec<_>, Vec<_>) = rest.into_iter().partition(|t| Arc::ptr_eq(&t.settings, &settings));
            rest = other;
            let spans: usize = same.iter().map(|t| t.span_count()).sum();
            let body = otlp::encode(&settings.resource, &same);
            drop(same);
            let result = self.send(&settings, body).await;
            self.tracer.dequeued(spans);
            let metrics = &self.tracer.metrics;
            match result {
                Ok(rejected) => {
                    metrics.trace_spans("exported", spans.saturating_sub(rejected) as u64);
                    if rejected > 0 {
                        metrics.trace_spans("rejected", rejected as u64);
                    }
                    if std::mem::replace(&mut self.failing, false) {
                        tracing::info!(endpoint = %settings.endpoint, "tracing: exporting again");
                    }
                }
                Err(e) => {
                    metrics.trace_spans("export_failed", spans as u64);
                    if !std::mem::replace(&mut self.failing, true) {
                        tracing::warn!(endpoint = %settings.endpoint, protocol = settings.protocol.label(), error = %e, spans, "tracing: export failed; spans dropped (logged once until exports succeed again)");
                    }
                }
            }
        }
    }

    /// Sends one request, retrying what may succeed later. Returns the spans the collector
    /// reported as rejected.
    async fn send(&self, s: &TracingConfig, body: Vec<u8>) -> Result<usize, ExportError> {
        let body = if s.gzip { gzip(&body) } else { body };
        let body = match s.protocol {
            OtlpProtocol::HttpProtobuf => Bytes::from(body),
            OtlpProtocol::Grpc => {
                // Length-prefixed message: the compressed flag, then the length in big-endian.
                let mut framed = BytesMut::with_capacity(body.len() + 5);
                framed.put_u8(u8::from(s.gzip));
                framed.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
                framed.extend_from_slice(&body);
                framed.freeze()
            }
        };
        let deadline = Instant::now() + s.timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match tokio::time::timeout_at(deadline, self.once(s, body.clone())).await {
                Ok(r) => r,
                Err(_) => Err(ExportError::Permanent(format!("no answer within {:?}", s.timeout))),
            };
            match result {
                Err(ExportError::Retryable(why, after)) if attempt < MAX_ATTEMPTS => {
                    if after.is_some_and(|a| a > MAX_RETRY_AFTER) {
                        return Err(ExportError::Permanent(why));
                    }
                    let backoff = Duration::from_millis(100 << attempt);
                    let wait = after.unwrap_or(backoff.mul_f64(0.5 + fastrand::f64() * 0.5));
                    if Instant::now() + wait >= deadline {
                        return Err(ExportError::Permanent(why));
                    }
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    async fn once(&self, s: &TracingConfig, body: Bytes) -> Result<usize, ExportError> {
        let (client, uri, content_type) = match s.protocol {
            OtlpProtocol::HttpProtobuf => (&self.clients.http, s.endpoint.clone(), "application/x-protobuf"),
            OtlpProtocol::Grpc => {
                let mut parts = s.endpoint.clone().into_parts();
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static(GRPC_PATH));
                let uri = Uri::from_parts(parts).map_err(|e| ExportError::Permanent(e.to_string()))?;
                (&self.clients.grpc, uri, "application/grpc")
            }
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("llm-sidecar/", env!("CARGO_PKG_VERSION"))),
        );
        if s.protocol == OtlpProtocol::Grpc {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
            if s.gzip {
                h.insert("grpc-encoding", HeaderValue::from_static("gzip"));
            }
        } else if s.gzip {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (k, v) in &s.headers {
            h.insert(k.clone(), v.clone());
        }
        let resp = client.request(req).await.map_err(|e| {
            ExportError::Retryable(
                format!("cannot reach the collector: {}", crate::telemetry::error_chain(&e)),
                None,
            )
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let head_grpc = grpc_status(resp.headers());
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ExportError::Retryable(format!("the collector's answer broke off: {e}"), None))?;
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        match s.protocol {
            OtlpProtocol::HttpProtobuf => {
                if status.is_success() {
                    return Ok(partial(&body));
                }
                let why = format!("the collector answered HTTP {}", status.as_u16());
                if matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) {
                    Err(ExportError::Retryable(why, retry_after))
                } else {
                    Err(ExportError::Permanent(why))
                }
            }
            OtlpProtocol::Grpc => {
                if !status.is_success() {
                    return Err(ExportError::Retryable(
                        format!("the collector answered HTTP {} to gRPC", status.as_u16()),
                        None,
                    ));
                }
                let code = head_grpc.or_else(|| trailers.as_ref().and_then(grpc_status));
                match code {
                    Some((0, _)) => Ok(partial(body.get(5..).unwrap_or_default())),
                    // CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE,
                    // UNAVAILABLE, DATA_LOSS: OTLP says retry.
                    Some((c @ (1 | 4 | 8 | 10 | 11 | 14 | 15), msg)) => {
                        Err(ExportError::Retryable(format!("gRPC status {c}: {msg}"), None))
                    }
                    Some((c, msg)) => Err(ExportError::Permanent(format!("gRPC status {c}: {msg}"))),
                    None => Err(ExportError::Permanent(
                        "the collector's gRPC answer had no grpc-status".into(),
                    )),
                }
            }
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(body);
    e.finish().unwrap_or_default()
}

fn partial(body: &[u8]) -> usize {
    let (rejected, message) = otlp::partial_success(body);
    if rejected > 0 || !message.is_empty() {
        tracing::debug!(rejected, %message, "tracing: the collector accepted part of a batch");
    }
    usize::try_from(rejected).unwrap_or(0)
}

fn grpc_status(h: &http::HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let msg = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Some((code, msg))
}
