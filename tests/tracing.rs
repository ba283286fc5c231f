// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! OpenTelemetry traces, checked at an in-process OTLP receiver: an OTLP/HTTP endpoint and a
//! tonic OTLP/gRPC server, both decoding with the official generated protobuf types. Nothing
//! here mocks the exporter: spans travel over TCP as a collector would receive them.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use llm_sidecar::mock::{Fault, MockUpstream};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// What the receiver got: every span with its resource, and the headers of each export.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    resources: Vec<HashMap<String, String>>,
    headers: Vec<http::HeaderMap>,
}

type Sink = Arc<Mutex<Received>>;

fn take(sink: &Sink, req: ExportTraceServiceRequest, headers: http::HeaderMap) {
    let mut r = sink.lock().unwrap();
    r.headers.push(headers);
    for rs in req.resource_spans {
        let res = rs
            .resource
            .map(|r| {
                r.attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                    .collect()
            })
            .unwrap_or_default();
        r.resources.push(res);
        for ss in rs.scope_spans {
            assert_eq!(ss.scope.as_ref().map(|s| s.name.as_str()), Some("llm-sidecar"));
            r.spans.extend(ss.spans);
        }
    }
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::ArrayValue(a)) => a.values.iter().map(|v| text(Some(v))).collect::<Vec<_>>().join(","),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.as_ref()))
}

/// OTLP/HTTP: `POST /v1/traces` with a protobuf body.
async fn http_receiver() -> (SocketAddr, Sink) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink: Sink = Arc::default();
    let s = sink.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                        let headers = req.headers().clone();
                        let mut body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                        if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                            use std::io::Read;
                            let mut plain = Vec::new();
                            flate2::read::GzDecoder::new(&body[..])
                                .read_to_end(&mut plain)
                                .expect("gzip");
                            body = plain;
                        }
                        let decoded = ExportTraceServiceRequest::decode(&body[..]).expect("a valid OTLP protobuf body");
                        take(&s, decoded, headers);
                        let ok = ExportTraceServiceResponse::default().encode_to_vec();
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(ok),
                        )))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (addr, sink)
}

struct Grpc(Sink);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        take(&self.0, request.into_inner(), headers);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// OTLP/gRPC: tonic's server with the generated `TraceService`.
async fn grpc_receiver() -> (SocketAddr, Sink) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink: Sink = Arc::default();
    let svc = TraceServiceServer::new(Grpc(sink.clone())).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, sink)
}

/// Waits until the receiver holds a span matching `pred`.
async fn wait_for(sink: &Sink, what: &str, pred: impl Fn(&Span) -> bool) -> Span {
    for _ in 0..200 {
        if let Some(s) = sink.lock().unwrap().spans.iter().find(|s| pred(s)) {
            return s.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no span {what} arrived; got {:?}", names(sink));
}

fn names(sink: &Sink) -> Vec<String> {
    sink.lock().unwrap().spans.iter().map(|s| s.name.clone()).collect()
}

fn spans_of(sink: &Sink, trace_id: &[u8]) -> Vec<Span> {
    sink.lock()
        .unwrap()
        .spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect()
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "one {name:?} span expected in {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

async fn harness(mock: MockUpstream, tracing: &str, extra: &str) -> Harness {
    let text = config(&mock.base_url(), &format!("{tracing}\n{extra}"));
    Harness::with_text(mock, text).await
}

#[tokio::test]
async fn http_export_continues_the_apps_trace_with_a_span_per_stage() {
    let (addr, sink) = http_receiver().await;
    let mock = MockUpstream::start().await.unwrap();
    let tracing = format!(
        "tracing:\n  endpoint: http://{addr}\n  interval: 20ms\n  service_name: checkout-llm\n  headers: {{x-api-key: collector-secret}}\n  resource_attributes: {{deployment.environment: test}}"
    );
    let h = harness(mock, &tracing, &cache_section("")).await;

    let traceparent = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let body = serde_json::json!({"model": "auto", "max_tokens": 50, "temperature": 0.2,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let resp = h
        .chat_with(body.clone(), &[("traceparent", &traceparent), ("x-tenant", "shop")])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-llm-sidecar-trace-id"], APP_TRACE);
    resp.bytes().await.unwrap();

    let trace_id = hex::decode(APP_TRACE).unwrap();
    let root = wait_for(&sink, "root", |s| s.trace_id == trace_id && s.kind == 2).await;
    // The root closes last; give its siblings the same batch or the next.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spans = spans_of(&sink, &trace_id);

    assert_eq!(root.name, "chat auto");
    assert_eq!(
        hex::encode(&root.parent_span_id),
        APP_SPAN,
        "the app's span is the parent"
    );
    assert_eq!(root.flags & 0x300, 0x300, "the parent is marked remote");
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "auto"),
        ("gen_ai.request.max_tokens", "50"),
        ("gen_ai.request.temperature", "0.2"),
        ("gen_ai.response.model", "mock-upstream-name"),
        ("gen_ai.response.finish_reasons", "stop"),
        ("llm_sidecar.cache.result", "miss"),
        ("llm_sidecar.route", "auto"),
        ("llm_sidecar.model", "chat-model"),
        ("llm_sidecar.outcome", "ok"),
        ("http.response.status_code", "200"),
        ("http.request.method", "POST"),
        ("url.path", "/v1/chat/completions"),
    ] {
        assert_eq!(attr(&root, k).as_deref(), Some(v), "root {k}");
    }
    assert!(attr(&root, "llm_sidecar.tenant").is_some());
    let input: u64 = attr(&root, "gen_ai.usage.input_tokens").unwrap().parse().unwrap();
    let output: u64 = attr(&root, "gen_ai.usage.output_tokens").unwrap().parse().unwrap();
    assert!(input > 0 && output > 0);
    assert!(attr(&root, "llm_sidecar.cost_usd").is_some());
    assert!(root.end_time_unix_nano > root.start_time_unix_nano);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        now - root.start_time_unix_nano < 60_000_000_000,
        "times are wall-clock nanoseconds"
    );

    for name in ["route", "cache lookup", "queue wait"] {
        let s = one(&spans, name);
        assert_eq!(s.parent_span_id, root.span_id, "{name} is a child of the request");
        assert_eq!(s.kind, 1);
        assert!(s.start_time_unix_nano >= root.start_time_unix_nano && s.end_time_unix_nano <= root.end_time_unix_nano);
    }
    let route = one(&spans, "route");
    assert_eq!(
        attr(route, "llm_sidecar.route.candidates").as_deref(),
        Some("chat-model")
    );
    assert!(attr(route, "llm_sidecar.route.reason").is_some());
    assert_eq!(
        attr(one(&spans, "cache lookup"), "llm_sidecar.cache.result").as_deref(),
        Some("miss")
    );

    let attempt = one(&spans, "chat mock-upstream-name");
    assert_eq!(attempt.kind, 3, "an upstream attempt is a client span");
    assert_eq!(attempt.parent_span_id, root.span_id);
    for (k, v) in [
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "mock-upstream-name"),
        ("server.address", "127.0.0.1"),
        ("http.response.status_code", "200"),
        ("llm_sidecar.attempt", "1"),
    ] {
        assert_eq!(attr(attempt, k).as_deref(), Some(v), "attempt {k}");
    }
    // The provider saw the trace continue from the attempt span.
    let upstream = h.mock.last_request().unwrap();
    let sent = upstream.headers["traceparent"].to_str().unwrap();
    assert_eq!(sent, format!("00-{APP_TRACE}-{}-01", hex::encode(&attempt.span_id)));

    {
        let r = sink.lock().unwrap();
        let res = &r.resources[0];
        assert_eq!(res["service.name"], "checkout-llm");
        assert_eq!(res["deployment.environment"], "test");
        assert!(res.contains_key("service.version"));
        assert_eq!(r.headers[0]["x-api-key"], "collector-secret");
    }

    // The same question again: answered by the cache, no upstream attempt in its trace.
    let resp = h.chat_with(body.clone(), &[]).await;
    assert_eq!(resp.headers()["x-llm-sidecar-cache"], "hit-exact");
    let second = resp.headers()["x-llm-sidecar-trace-id"].to_str().unwrap().to_owned();
    assert_ne!(second, APP_TRACE, "no traceparent: a new trace");
    resp.bytes().await.unwrap();
    let second = hex::decode(second).unwrap();
    let root = wait_for(&sink, "cache-hit root", |s| s.trace_id == second && s.kind == 2).await;
    assert!(root.parent_span_id.is_empty());
    assert_eq!(attr(&root, "llm_sidecar.cache.result").as_deref(), Some("hit-exact"));
    assert_eq!(attr(&root, "gen_ai.response.finish_reasons").as_deref(), Some("stop"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(spans_of(&sink, &second).iter().all(|s| s.kind != 3));

    // A paraphrase: the semantic lookup's embedding and search appear under the cache span.
    let para = serde_json::json!({"model": "auto", "max_tokens": 50, "temperature": 0.2,
        "messages": [{"role": "user", "content": "what's the capital of france"}]});
    let resp = h.chat_with(para, &[]).await;
    let third = hex::decode(resp.headers()["x-llm-sidecar-trace-id"].to_str().unwrap()).unwrap();
    resp.bytes().await.unwrap();
    wait_for(&sink, "third root", |s| s.trace_id == third && s.kind == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spans = spans_of(&sink, &third);
    let lookup = one(&spans, "cache lookup");
    let embedding = one(&spans, "embedding");
    assert_eq!(embedding.parent_span_id, lookup.span_id);
    assert_eq!(one(&spans, "vector search").parent_span_id, lookup.span_id);
    assert!(embedding.end_time_unix_nano > embedding.start_time_unix_nano);

    let m = h.metrics().await;
    assert!(
        metric(&m, "llm_sidecar_trace_spans_total{result=\"exported\"}") >= 10.0,
        "{m}"
    );

    // The effective settings are on the admin port, without the header's value.
    let c = h.admin_get("/admin/config").await;
    assert_eq!(c["tracing"]["protocol"], "http/protobuf");
    assert_eq!(c["tracing"]["headers"][0], "x-api-key");
    assert_eq!(c["tracing"]["resource"]["service.name"], "checkout-llm");
    assert!(!c.to_string().contains("collector-secret"));
}

#[tokio::test]
async fn grpc_export_of_a_stream_after_a_retry() {
    let (addr, sink) = grpc_receiver().await;
    let mock = MockUpstream::start().await.unwrap();
    mock.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    let tracing = format!(
        "tracing:\n  endpoint: http://{addr}\n  protocol: grpc\n  compression: gzip\n  interval: 20ms\n  headers: {{authorization: Bearer t0ken}}"
    );
    let h = harness(
        mock,
        &tracing,
        "resilience: {retries: {base_delay: 1ms, max_delay: 2ms}}",
    )
    .await;
    let resp = h.chat(stream_body("Tell me a story")).await;
    assert_eq!(resp.status(), 200);
    let trace_id = hex::decode(resp.headers()["x-llm-sidecar-trace-id"].to_str().unwrap()).unwrap();
    let (_, text) = stream_chunks(&sse_events(resp).await);
    assert!(!text.is_empty());

    let root = wait_for(&sink, "root", |s| s.trace_id == trace_id && s.kind == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spans = spans_of(&sink, &trace_id);
    let attempts: Vec<_> = spans.iter().filter(|s| s.kind == 3).collect();
    assert_eq!(attempts.len(), 2, "{spans:?}");
    let (failed, ok) = if attr(attempts[0], "llm_sidecar.attempt").as_deref() == Some("1") {
        (attempts[0], attempts[1])
    } else {
        (attempts[1], attempts[0])
    };
    assert_eq!(attr(failed, "error.type").as_deref(), Some("status_5xx"));
    assert_eq!(attr(failed, "http.response.status_code").as_deref(), Some("503"));
    assert_eq!(failed.status.as_ref().map(|s| s.code), Some(2), "an error status");
    assert_eq!(attr(ok, "http.response.status_code").as_deref(), Some("200"));
    assert!(
        root.events.iter().any(|e| e.name == "retry"),
        "the retry is an event on the request"
    );
    assert_eq!(attr(&root, "llm_sidecar.retries").as_deref(), Some("1"));
    assert_eq!(attr(&root, "gen_ai.request.stream").as_deref(), Some("true"));
    assert_eq!(attr(&root, "gen_ai.response.finish_reasons").as_deref(), Some("stop"));
    assert!(attr(&root, "gen_ai.usage.output_tokens").is_some());
    assert_ne!(root.status.as_ref().map(|s| s.code), Some(2));
    let stream = one(&spans, "stream");
    assert_eq!(stream.parent_span_id, root.span_id);
    assert!(stream.start_time_unix_nano >= ok.end_time_unix_nano);
    assert_eq!(attr(stream, "llm_sidecar.outcome").as_deref(), Some("ok"));
    assert_eq!(sink.lock().unwrap().headers[0]["authorization"], "Bearer t0ken");
}

#[tokio::test]
async fn unsampled_requests_pass_the_apps_context_through_untouched() {
    let (addr, sink) = http_receiver().await;
    let mock = MockUpstream::start().await.unwrap();
    let tracing =
        format!("tracing:\n  endpoint: http://{addr}\n  interval: 20ms\n  sample_ratio: 0\n  compression: gzip");
    let h = harness(mock, &tracing, "").await;

    // The app decided not to sample: nothing recorded, its header goes upstream as sent.
    let unsampled = format!("00-{APP_TRACE}-{APP_SPAN}-00");
    let resp = h
        .chat_with(
            chat_body("hello"),
            &[("traceparent", &unsampled), ("tracestate", "vendor=1")],
        )
        .await;
    assert!(resp.headers().get("x-llm-sidecar-trace-id").is_none());
    resp.bytes().await.unwrap();
    let up = h.mock.last_request().unwrap();
    assert_eq!(up.headers["traceparent"], unsampled.as_str());
    assert_eq!(up.headers["tracestate"], "vendor=1");

    // No parent and a ratio of 0: nothing recorded, nothing invented.
    h.chat(chat_body("hello again")).await.bytes().await.unwrap();
    assert!(h.mock.last_request().unwrap().headers.get("traceparent").is_none());

    // The app sampled: parent-based sampling follows it despite the ratio.
    let sampled = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let resp = h
        .chat_with(
            chat_body("third"),
            &[("traceparent", &sampled), ("tracestate", "vendor=1")],
        )
        .await;
    assert_eq!(resp.headers()["x-llm-sidecar-trace-id"], APP_TRACE);
    resp.bytes().await.unwrap();
    let root = wait_for(&sink, "sampled root", |s| s.kind == 2).await;
    assert_eq!(root.trace_state, "vendor=1");
    assert_eq!(sink.lock().unwrap().headers[0]["content-encoding"], "gzip");
    let up = h.mock.last_request().unwrap();
    assert_eq!(up.headers["tracestate"], "vendor=1");
    assert_ne!(
        up.headers["traceparent"],
        sampled.as_str(),
        "the parent upstream is our attempt span"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = sink.lock().unwrap();
    assert!(
        r.spans.iter().all(|s| hex::encode(&s.trace_id) == APP_TRACE),
        "only the sampled request was exported"
    );
}

#[tokio::test]
async fn tracing_off_forwards_traceparent_and_adds_nothing() {
    let h = Harness::start().await;
    let tp = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let resp = h.chat_with(chat_body("hi"), &[("traceparent", &tp)]).await;
    assert!(resp.headers().get("x-llm-sidecar-trace-id").is_none());
    resp.bytes().await.unwrap();
    assert_eq!(h.mock.last_request().unwrap().headers["traceparent"], tp.as_str());
    assert!(!h.metrics().await.contains("llm_sidecar_trace_spans_total{"));
}

#[tokio::test]
async fn a_dead_collector_costs_requests_nothing_and_shutdown_flushes() {
    // Nothing listens on a port we bound and dropped.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mock = MockUpstream::start().await.unwrap();
    let tracing = format!("tracing:\n  endpoint: http://{dead}\n  interval: 20ms\n  timeout: 500ms");
    let h = harness(mock, &tracing, "").await;
    for i in 0..5 {
        let resp = h.chat(chat_body(&format!("q{i}"))).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert!(
        h.wait_for_metric("llm_sidecar_trace_spans_total{result=\"export_failed\"}")
            .await
            > 0.0
    );

    // A long interval: spans are still queued when the pod stops, and shutdown sends them.
    let (addr, sink) = grpc_receiver().await;
    let mock = MockUpstream::start().await.unwrap();
    let tracing = format!("tracing:\n  endpoint: http://{addr}\n  protocol: grpc\n  interval: 1h");
    let mut h = harness(mock, &tracing, "").await;
    h.chat(chat_body("last words")).await.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sink.lock().unwrap().spans.is_empty());
    h.sidecar.take().unwrap().shutdown().await;
    let names = names(&sink);
    assert!(
        names.contains(&"chat auto".to_owned()) && names.contains(&"queue wait".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_reload_turns_tracing_on_and_moves_it_to_another_collector() {
    let (first_addr, first) = http_receiver().await;
    let (second_addr, second) = grpc_receiver().await;
    let mock = MockUpstream::start().await.unwrap();
    let base = config(&mock.base_url(), "");
    let h = Harness::with_mounted(mock, base.clone()).await;
    let dir = h.dir.as_ref().unwrap().path().to_owned();
    let ask = |q: &'static str| {
        let h = &h;
        async move {
            let resp = h.chat(chat_body(q)).await;
            let id = resp
                .headers()
                .get("x-llm-sidecar-trace-id")
                .map(|v| v.to_str().unwrap().to_owned());
            resp.bytes().await.unwrap();
            id
        }
    };
    // Rewrites the mounted config with a `tracing:` section and applies it.
    let reload_to = |tracing: &str| {
        let (h, dir, text) = (&h, &dir, format!("{base}\n{tracing}\n"));
        async move {
            kubelet_write(dir, "config.yaml", &text);
            // The folder watch may apply the new file first; `Unchanged` then says the text in
            // service is the file's.
            assert!(matches!(
                h.sidecar().reload(false).await,
                Some(
                    llm_sidecar::state::reload::ReloadOutcome::Applied { .. }
                        | llm_sidecar::state::reload::ReloadOutcome::Unchanged
                )
            ));
        }
    };
    assert_eq!(ask("before").await, None);

    reload_to(&format!("tracing: {{endpoint: 'http://{first_addr}', interval: 20ms}}")).await;
    let id = hex::decode(ask("first").await.expect("traced after the reload")).unwrap();
    wait_for(&first, "first collector", |s| s.trace_id == id).await;

    reload_to(&format!(
        "tracing: {{endpoint: 'http://{second_addr}', protocol: grpc, interval: 20ms}}"
    ))
    .await;
    let id = hex::decode(ask("second").await.unwrap()).unwrap();
    wait_for(&second, "second collector", |s| s.trace_id == id).await;
    assert!(first.lock().unwrap().spans.iter().all(|s| s.trace_id != id));
}
