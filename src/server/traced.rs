//! What each stage of the request path writes into the request's trace: the root span's
//! request attributes, the cache lookup (with the embedding and vector search the embedder's
//! threads timed), the routing decision, the queue wait and each upstream attempt. Attribute
//! names follow the OpenTelemetry GenAI semantic conventions where they exist and use an
//! `llm_sidecar.` prefix otherwise. Kept apart from the handlers so the request path reads as
//! the request path; every function here runs only for sampled requests.

use http::Uri;

use super::error::ApiError;
use crate::cache::{CacheStatus, Hit, HitKind, Plan};
use crate::config::{ModelConfig, ProviderKind};
use crate::openai::RequestHead;
use crate::router::Decision;
use crate::telemetry::trace::{Event, Kind, RequestTrace, Span};
use crate::upstream::{Provider, UpstreamError};

/// The root span's name (`{operation} {model}`) and what the app asked for.
pub(super) fn request(t: &mut RequestTrace, operation: &'static str, head: &RequestHead) {
    let r = &mut t.root;
    r.name = format!("{operation} {}", head.model).into();
    r.set("gen_ai.operation.name", operation);
    r.set("gen_ai.request.model", head.model.to_string());
    for (field, key) in [
        ("max_tokens", "gen_ai.request.max_tokens"),
        ("max_completion_tokens", "gen_ai.request.max_tokens"),
        ("temperature", "gen_ai.request.temperature"),
        ("top_p", "gen_ai.request.top_p"),
    ] {
        if let Some(v) = head.raw(field).and_then(|v| v.get().parse::<f64>().ok()) {
            if key == "gen_ai.request.max_tokens" {
                r.set(key, v as i64);
            } else {
                r.set(key, v);
            }
        }
    }
}

pub(super) fn http(t: &mut RequestTrace, method: &http::Method, path: &str) {
    t.root.set("http.request.method", method.as_str().to_owned());
    t.root.set("url.path", path.to_owned());
}

/// The cache lookup span and, for a semantic lookup, its embedding and search children.
pub(super) fn cache(t: &mut RequestTrace, mut span: Span, plan: &Plan, hit: Option<&Hit>) {
    if let Some(HitKind::Semantic { similarity }) = hit.map(|h| h.kind) {
        span.set("llm_sidecar.cache.similarity", similarity);
    }
    let result = hit.map_or(CacheStatus::Miss, |h| CacheStatus::from(h.kind));
    span.set("llm_sidecar.cache.result", result.header());
    if let Some(best) = plan.best_similarity.filter(|_| hit.is_none()) {
        span.set("llm_sidecar.cache.best_similarity", best);
    }
    if !plan.rejected.is_empty() {
        span.set(
            "llm_sidecar.cache.guard_rejections",
            plan.rejected.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>(),
        );
    }
    if let Some(timing) = plan.timing {
        let mut embed = t.open_under(span.id, "embedding", Kind::Internal);
        embed.start = timing.submitted;
        embed.end = timing.embedded;
        embed.set("gen_ai.operation.name", "embeddings");
        embed.set("gen_ai.request.model", "all-MiniLM-L6-v2");
        t.keep(embed);
        let mut search = t.open_under(span.id, "vector search", Kind::Internal);
        search.start = timing.embedded;
        search.end = timing.searched;
        search.set("llm_sidecar.cache.candidates", timing.candidates as u64);
        t.keep(search);
    }
    t.close(span);
}

/// The routing decision: the route, its strategy, why, and the candidates in order.
pub(super) fn route(t: &mut RequestTrace, mut span: Span, decided: &Result<Decision, ApiError>) {
    match decided {
        Ok(d) => {
            span.set("llm_sidecar.route", &d.route.name);
            span.set("llm_sidecar.route.strategy", d.route.strategy.label());
            span.set("llm_sidecar.route.reason", d.reason.to_string());
            span.set(
                "llm_sidecar.route.candidates",
                d.candidates
                    .iter()
                    .map(|c| c.model.name.to_string())
                    .collect::<Vec<_>>(),
            );
            if d.filtered > 0 {
                span.set("llm_sidecar.route.filtered", d.filtered as u64);
            }
            if d.forced {
                span.set("llm_sidecar.route.forced", true);
            }
            if let Some(p) = &d.pinned {
                span.set("llm_sidecar.route.pinned_provider", p.to_string());
            }
        }
        Err(e) => span.error(e.outcome.label(), Some(e.message.clone())),
    }
    t.close(span);
}

/// The embedding a `semantic` route needed, under the routing span.
pub(super) fn route_embedding(t: &mut RequestTrace, parent: &Span, start: std::time::Instant, ok: bool) {
    let mut s = t.open_under(parent.id, "embedding", Kind::Internal);
    s.start = start;
    s.set("gen_ai.operation.name", "embeddings");
    if !ok {
        s.error("embedding_unavailable", None);
    }
    t.close(s);
}

/// A client span for one upstream attempt, named `{operation} {upstream model}`.
pub(super) fn attempt(
    t: &RequestTrace,
    operation: &'static str,
    provider: &Provider,
    model: &ModelConfig,
    n: u32,
) -> Span {
    let mut s = t.open(format!("{operation} {}", model.upstream_model), Kind::Client);
    s.set("gen_ai.operation.name", operation);
    s.set(
        "gen_ai.provider.name",
        match provider.kind() {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
        },
    );
    s.set("gen_ai.request.model", &model.upstream_model);
    server(&mut s, &provider.config.base_url);
    s.set("llm_sidecar.provider", provider.name());
    s.set("llm_sidecar.model", &model.name);
    s.set("llm_sidecar.attempt", n);
    s
}

/// A passthrough request's root span: named by its method and the API it addresses
/// (`POST /v1/files`, not the full path: file and batch ids would make names unique).
pub(super) fn passthrough(t: &mut RequestTrace, method: &http::Method, path: &str) {
    let api = path
        .strip_prefix("/v1/")
        .and_then(|p| p.split('/').next())
        .unwrap_or("");
    t.root.name = format!("{method} /v1/{api}").into();
    http(t, method, path);
}

/// The client span of a passthrough request.
pub(super) fn passthrough_attempt(t: &RequestTrace, method: &http::Method, provider: &Provider) -> Span {
    let mut s = t.open(method.as_str().to_owned(), Kind::Client);
    server(&mut s, &provider.config.base_url);
    s.set("llm_sidecar.provider", provider.name());
    s
}

fn server(s: &mut Span, base: &Uri) {
    if let Some(host) = base.host() {
        s.set("server.address", host.to_owned());
    }
    let port = base
        .port_u16()
        .unwrap_or(if base.scheme_str() == Some("https") { 443 } else { 80 });
    s.set("server.port", port);
}

/// Marks an attempt span failed with the upstream error's kind.
/// A failed attempt on its span. The message quotes the provider, so it is masked: traces
/// leave the pod too.
pub(super) fn attempt_failed(s: &mut Span, e: &UpstreamError, redact: &crate::upstream::redact::Redactor) {
    if let UpstreamError::Status { status, .. } = e {
        s.set("http.response.status_code", status.as_u16());
    }
    s.error(e.kind(), Some(redact.text(&e.to_string()).into_owned()));
}

/// An instant on the root span (a retry's backoff, a skipped open circuit).
pub(super) fn event(t: &mut RequestTrace, name: &'static str, attrs: Vec<crate::telemetry::trace::Attr>) {
    t.root.events.push(Event {
        name,
        at: std::time::Instant::now(),
        attrs,
    });
}
