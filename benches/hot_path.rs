// A benchmark is a measurement script: a failed assumption should stop it loudly; it spawns freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! Micro-benchmarks of the per-request work the sidecar adds: reading the request head,
//! rewriting it, scanning SSE frames, the route decision, tenant identification and the
//! request id. `cargo bench --bench hot_path`.

use std::hint::black_box;

#[path = "support/otlp_prost.rs"]
mod otlp_prost;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use llm_sidecar::config::Config;
use llm_sidecar::limits::Tenants;
use llm_sidecar::openai::{RequestHead, SseScanner};
use llm_sidecar::router::Router;

fn chat_body(history: usize) -> Vec<u8> {
    let mut messages =
        vec![serde_json::json!({"role": "system", "content": "You are a helpful assistant for a retail bank."})];
    for i in 0..history {
        messages.push(serde_json::json!({"role": "user", "content": format!("Question {i}: how do I reset my online banking password?")}));
        messages.push(serde_json::json!({"role": "assistant", "content": "Open the app, choose Settings, then Security, then Reset password."}));
    }
    messages.push(serde_json::json!({"role": "user", "content": "And what if I lost my phone?"}));
    serde_json::to_vec(&serde_json::json!({"model": "auto", "messages": messages, "temperature": 0.2, "stream": true}))
        .unwrap()
}

fn config() -> Config {
    let text = r#"
providers: { p: { base_url: "http://127.0.0.1:9/v1" } }
models:
  gpt-4o-mini: { provider: p, upstream_model: gpt-4o-mini-2024-07-18 }
  gpt-4o: { provider: p }
routes:
  - { name: chat, models: [auto, chat], targets: [{ model: gpt-4o-mini }, { model: gpt-4o }] }
tenants:
  list:
    team-a: { api_key_sha256: [5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8] }
"#;
    Config::load(text, &|_: &str| None).unwrap()
}

fn request_head(c: &mut Criterion) {
    for (name, history) in [("1KiB", 2), ("10KiB", 40)] {
        let body = chat_body(history);
        c.bench_function(&format!("request_head/parse_{name}"), |b| {
            b.iter(|| RequestHead::parse(black_box(&body)).unwrap().stream)
        });
        let head = RequestHead::parse(&body).unwrap();
        c.bench_function(&format!("request_head/rewrite_{name}"), |b| {
            b.iter(|| head.rewrite(black_box("gpt-4o-mini-2024-07-18"), true).len())
        });
    }
}

fn sse(c: &mut Criterion) {
    let chunk = Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" hello\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    );
    c.bench_function("sse/aligned_chunk", |b| {
        let mut s = SseScanner::new(true);
        b.iter(|| s.push(black_box(chunk.clone())).len())
    });
    let (a, z) = (chunk.slice(..50), chunk.slice(50..));
    c.bench_function("sse/chunk_split_in_two", |b| {
        let mut s = SseScanner::new(true);
        b.iter(|| s.push(black_box(a.clone())).len() + s.push(black_box(z.clone())).len())
    });
    let usage = Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":40,\"prompt_tokens_details\":{\"cached_tokens\":64}}}\n\n",
    );
    c.bench_function("sse/usage_chunk_parsed_and_stripped", |b| {
        let mut s = SseScanner::new(true);
        b.iter(|| s.push(black_box(usage.clone())).len())
    });
}

/// Eight routes in front of the one each strategy is measured on, so matching is part of it.
fn routing_config() -> Config {
    let mut text = String::from(
        r#"
providers: { p: { base_url: "http://127.0.0.1:9/v1" } }
models:
  mini: { provider: p, pricing: { input: 0.15, output: 0.6 }, context_window: 128000 }
  big: { provider: p, pricing: { input: 2.5, output: 10 }, context_window: 128000 }
  other: { provider: p, pricing: { input: 1, output: 4 }, capabilities: [json] }
routes:
"#,
    );
    for i in 0..6 {
        text.push_str(&format!(
            "  - {{ name: r{i}, models: [\"m{i}\", \"fam{i}-*\"], match: {{ tenants: [t{i}] }}, targets: [{{ model: mini }}] }}\n"
        ));
    }
    text.push_str(
        "  - { name: kw, models: [auto], match: { keywords: [translate, summarise] }, targets: [{ model: mini }] }\n",
    );
    text.push_str(
        "  - { name: rx, models: [auto], match: { regex: \"(?i)\\\\bsql\\\\b\" }, targets: [{ model: big }] }\n",
    );
    for (name, extra) in [
        (
            "ordered",
            "targets: [{ model: mini }, { model: big }, { model: other }]",
        ),
        (
            "weighted",
            "strategy: weighted, sticky: tenant, targets: [{ model: mini, weight: 90 }, { model: big, weight: 10 }]",
        ),
        (
            "canary",
            "strategy: canary, canary: { model: other, percent: 5 }, targets: [{ model: mini }, { model: big }]",
        ),
        (
            "cheapest",
            "strategy: cheapest, targets: [{ model: big }, { model: other }, { model: mini }]",
        ),
        (
            "fastest",
            "strategy: fastest, latency_budget: 2s, targets: [{ model: big }, { model: other }, { model: mini }]",
        ),
        (
            "complexity",
            "strategy: complexity, targets: [{ model: mini, tier: light }, { model: big, tier: strong }]",
        ),
    ] {
        text.push_str(&format!("  - {{ name: {name}, models: [{name}], {extra} }}\n"));
    }
    Config::load(&text, &|_: &str| None).unwrap()
}

fn decisions(c: &mut Criterion) {
    use llm_sidecar::resilience::HealthRegistry;
    use llm_sidecar::router::{Request, Signals, Step};
    let routing = routing_config();
    let health = HealthRegistry::carry(routing.models.values(), None, |_| true);
    for (i, h) in health.iter().enumerate() {
        h.observe_latency(std::time::Duration::from_millis(100 + 50 * i as u64));
    }
    let router = Router::new(&routing, &health, None, &Default::default());
    let headers = HeaderMap::new();
    let body = chat_body(2);
    let head = RequestHead::parse(&body).unwrap();
    c.bench_function("router/signals_read_1KiB", |b| {
        b.iter(|| Signals::read(black_box(&head), body.len(), true).prompt_tokens)
    });
    let signals = Signals::read(&head, body.len(), router.needs_text());
    for strategy in ["ordered", "weighted", "canary", "cheapest", "fastest", "complexity"] {
        let req = Request {
            model: strategy,
            tenant: "team-a",
            headers: &headers,
            signals: &signals,
            budget_soft: false,
        };
        c.bench_function(&format!("router/decide_{strategy}"), |b| {
            b.iter(|| match router.decide(black_box(&req), 0).unwrap() {
                Step::Decided(d) => d.candidates.len(),
                Step::NeedsEmbedding(_) => 0,
            })
        });
    }
    let config = config();
    let tenants = Tenants::new(&config.tenants);
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer password"));
    c.bench_function("tenants/identify_by_key_hash", |b| {
        b.iter(|| tenants.identify(black_box(&headers)).unwrap().len())
    });
    let empty = HeaderMap::new();
    c.bench_function("server/request_id_generate", |b| {
        b.iter(|| llm_sidecar::server::request_id(black_box(&empty)).len())
    });
}

fn limits(c: &mut Criterion) {
    use llm_sidecar::limits::ledger::{Ledger, now_ms};
    use std::sync::Arc;
    let text = r#"
tenants:
  header: x-tenant
  list:
    team-a:
      limits: { requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, models: { gpt-4o: { requests_per_minute: 1000000000 } } }
      budget: { daily_usd: 1000000000, monthly_usd: 1000000000 }
"#;
    let config = Config::load(text, &|_: &str| None).unwrap();
    let ledger = Ledger::default();
    let tenant: Arc<str> = "team-a".into();
    let model: Arc<str> = "gpt-4o".into();
    let usage = llm_sidecar::openai::Usage {
        prompt_tokens: 120,
        completion_tokens: 40,
        cached_tokens: 0,
    };
    let now = now_ms();
    c.bench_function("limits/admit_tenant_and_model_with_budget", |b| {
        b.iter(|| {
            ledger
                .admit(&config.tenants, black_box(&tenant), "gpt-4o", 300, now)
                .map(|a| a.estimate)
                .unwrap_or(0)
        })
    });
    c.bench_function("limits/admit_then_settle", |b| {
        b.iter(|| {
            if let Ok(a) = ledger.admit(&config.tenants, black_box(&tenant), "gpt-4o", 300, now) {
                ledger.settle(&config.tenants, &a, Some(&model), Some(usage), 0.0001, now);
            }
        })
    });
}

/// Tracing: what a request pays when tracing is off (the claim: nothing measurable), when the
/// app's context says not to sample, and the full cost of a sampled request's trace.
fn traces(c: &mut Criterion) {
    use std::sync::Arc;

    use llm_sidecar::telemetry::Metrics;
    use llm_sidecar::telemetry::trace::{Kind, Tracer, otlp};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let off = Tracer::new(Arc::new(Metrics::new()));
    c.bench_function("tracing/start_when_off", |b| {
        b.iter(|| off.start(black_box(&headers), "chat").is_some())
    });

    let on = |yaml: &str| {
        let config = Config::load(yaml, &|_: &str| None).unwrap();
        let t = Tracer::new(Arc::new(Metrics::new()));
        t.configure(config.tracing.clone());
        (t, config)
    };
    let (unsampled, _) = on("tracing: {endpoint: 'http://127.0.0.1:9', sample_ratio: 0}");
    let mut app = headers.clone();
    app.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
    );
    c.bench_function("tracing/start_not_sampled", |b| {
        b.iter(|| unsampled.start(black_box(&app), "chat").is_some())
    });

    let (sampled, config) = on("tracing: {endpoint: 'http://127.0.0.1:9'}");
    let resource = &config.tracing.as_ref().unwrap().resource;
    let model: Arc<str> = "gpt-4o-mini".into();
    c.bench_function("tracing/sampled_request_6_spans_built_and_encoded", |b| {
        b.iter(|| {
            let mut t = sampled.start(black_box(&headers), "chat").unwrap();
            for name in ["route", "cache lookup", "queue wait"] {
                let mut s = t.open(name, Kind::Internal);
                s.set("llm_sidecar.route", &model);
                t.close(s);
            }
            let mut s = t.open(format!("chat {model}"), Kind::Client);
            for k in [
                "gen_ai.request.model",
                "gen_ai.provider.name",
                "server.address",
                "llm_sidecar.model",
            ] {
                s.set(k, &model);
            }
            s.set("http.response.status_code", 200u16);
            let _tp = t.traceparent(&s);
            t.close(s);
            let s = t.open("stream", Kind::Internal);
            t.close(s);
            for k in [
                "gen_ai.request.model",
                "gen_ai.response.model",
                "llm_sidecar.route",
                "llm_sidecar.tenant",
            ] {
                t.root.set(k, &model);
            }
            t.root.set("gen_ai.usage.input_tokens", 120u64);
            t.root.set("gen_ai.usage.output_tokens", 40u64);
            otlp::encode(resource, std::slice::from_ref(&*t)).len()
        })
    });
    let batch: Vec<_> = (0..64)
        .map(|_| {
            let mut t = sampled.start(&headers, "chat").unwrap();
            for name in ["route", "cache lookup", "queue wait", "chat gpt-4o-mini", "stream"] {
                let mut s = t.open(name, Kind::Internal);
                s.set("llm_sidecar.route", &model);
                s.set("gen_ai.request.model", &model);
                t.close(s);
            }
            t.root.set("gen_ai.usage.input_tokens", 120u64);
            *t
        })
        .collect();
    // Same bytes both ways, or the comparison means nothing.
    assert_eq!(otlp::encode(resource, &batch), otlp_prost::encode(resource, &batch));
    c.bench_function("tracing/encode_64_traces_hand", |b| {
        b.iter(|| otlp::encode(resource, black_box(&batch)).len())
    });
    c.bench_function("tracing/encode_64_traces_prost", |b| {
        b.iter(|| otlp_prost::encode(resource, black_box(&batch)).len())
    });
}

criterion_group!(benches, request_head, sse, decisions, limits, traces);
criterion_main!(benches);
