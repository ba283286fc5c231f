//! Online verification of semantic hits (after vCache): a sampled share of the semantic hits
//! served is asked again upstream in the background, and the cache compares the fresh answer
//! with the one it served. A disagreement raises that entry's learned threshold, so the same
//! pairing never serves a wrong answer twice, and `llm_sidecar_cache_verifications_total`
//! gives a live estimate of the false-hit rate. The app's request is never delayed: it already
//! has its answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::response::MAX_HELD_BODY;
use crate::openai::usage::parse_usage;
use crate::router::Route;
use crate::state::{Runtime, Shared};
use crate::telemetry::CostLabels;
use crate::upstream::{BodyRead, read_body};

pub struct Verification {
    pub tenant: Arc<str>,
    pub route: Arc<Route>,
    pub body: Bytes,
    pub entry: u64,
    pub similarity: f32,
    pub served: Bytes,
}

/// Starts a verification; it holds `permit` until done.
pub fn spawn(shared: Arc<Shared>, rt: Arc<Runtime>, v: Verification, permit: OwnedSemaphorePermit) {
    let background = shared.background.clone();
    background.spawn(async move {
        let _permit = permit;
        match ask(&shared, &rt, &v).await {
            Some(fresh) => {
                shared
                    .cache
                    .judge(&v.route, v.entry, v.similarity, &v.served, &fresh, &rt.config.cache)
                    .await
            }
            None => shared.cache.verification("failed"),
        }
    });
}

/// The same request, non-streaming, to the route's first target.
async fn ask(shared: &Shared, rt: &Runtime, v: &Verification) -> Option<Bytes> {
    let model = &v.route.targets.first()?.model;
    let provider = rt.providers.get(&model.provider)?;
    // Anthropic answers would need translating before comparing; verification keeps to
    // OpenAI-compatible providers.
    if provider.kind() != crate::config::ProviderKind::OpenAi {
        return None;
    }
    let mut body: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&v.body).ok()?;
    body.insert(
        "model".into(),
        serde_json::Value::String(model.upstream_model.to_string()),
    );
    body.insert("stream".into(), serde_json::Value::Bool(false));
    body.remove("stream_options");
    let bytes = Bytes::from(serde_json::to_vec(&body).ok()?);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-llm-sidecar-purpose", HeaderValue::from_static("cache-verification"));
    let path = if body.contains_key("messages") {
        "/chat/completions"
    } else {
        "/completions"
    };
    let uri = provider.uri(path, None).ok()?;
    let deadline = Instant::now() + provider.config.timeouts.total;
    let body = Full::new(bytes).map_err(|never| match never {}).boxed();
    // Background work takes the lowest priority class and never waits long.
    let sched = &rt.config.scheduling;
    let lowest = sched.classes.len().saturating_sub(1);
    let permit = provider
        .scheduler
        .acquire(
            lowest,
            sched.queue_timeout.min(Duration::from_secs(5)),
            sched.max_queued,
        )
        .await
        .ok()?;
    let up = provider
        .send(Method::POST, uri, headers, body, deadline, permit)
        .await
        .ok()?;
    if up.response.status() != StatusCode::OK {
        return None;
    }
    let (_, mut incoming) = up.response.into_parts();
    let BodyRead::Complete(fresh) = read_body(&mut incoming, provider.config.timeouts.idle, deadline, MAX_HELD_BODY)
        .await
        .ok()?
    else {
        return None;
    };
    // Verification is real spend: account it to the tenant.
    if let Some(u) = parse_usage(&fresh).map(|r| r.usage) {
        let cost = model
            .pricing
            .cost(u.prompt_tokens, u.cached_tokens, u.completion_tokens);
        if cost > 0.0 {
            shared
                .metrics
                .cost
                .get_or_create(&CostLabels {
                    tenant: v.tenant.clone(),
                    model: model.name.clone(),
                })
                .inc_by(cost);
        }
    }
    Some(fresh)
}
