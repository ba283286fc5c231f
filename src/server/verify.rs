//! Online verification of semantic hits (after vCache): a sampled share of the semantic hits
//! served is asked again upstream in the background, and the cache compares the fresh answer
//! with the one it served. A disagreement raises that entry's learned threshold, so the same
//! pairing never serves a wrong answer twice, and `llm_sidecar_cache_verifications_total`
//! gives a live estimate of the false-hit rate. The app's request is never delayed: it already
//! has its answer.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::OwnedSemaphorePermit;

use super::attempt::Attempt;
use super::record::RequestRecord;
use super::response::Received;
use crate::openai::{Endpoint, RequestHead};
use crate::router::Route;
use crate::state::{Runtime, Shared};

pub struct Verification {
    pub(crate) tenant: Arc<str>,
    pub(crate) route: Arc<Route>,
    pub(crate) body: Bytes,
    pub(crate) entry: u64,
    pub(crate) similarity: f32,
    pub(crate) served: Bytes,
}

/// Starts a verification; it holds `permit` until done.
pub(crate) fn spawn(shared: Arc<Shared>, rt: Arc<Runtime>, v: Verification, permit: OwnedSemaphorePermit) {
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

/// The same request, as a whole answer (not a stream), to the route's first target, through
/// the path the app's requests take: its breaker (an open circuit is not asked), its queue at
/// the lowest priority, its protocol adapter (an Anthropic answer comes back in OpenAI's
/// shape, comparable with the one served) and the answer check. One try only: the app
/// already has its answer, and a fallback model's answer would not say whether the cached
/// one was right for this route.
async fn ask(shared: &Shared, rt: &Runtime, v: &Verification) -> Option<Bytes> {
    let target = v.route.targets.iter().find(|t| t.model.unusable.is_none())?;
    let mut body: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&v.body).ok()?;
    body.insert("stream".into(), serde_json::Value::Bool(false));
    body.remove("stream_options");
    let endpoint = if body.contains_key("messages") {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    };
    let body = Bytes::from(serde_json::to_vec(&body).ok()?);
    let head = RequestHead::parse(&body).ok()?;
    let no_headers = HeaderMap::new();
    let attempt = Attempt {
        added_headers: None,
        shared,
        rt,
        endpoint,
        head: &head,
        body: &body,
        app_headers: &no_headers,
        // Background work takes the lowest priority class.
        class: rt.config.scheduling.classes.len().saturating_sub(1),
        purpose: Some("cache-verification"),
    };
    let request_id = super::request_id(&no_headers);
    let mut rec = RequestRecord::background(shared.metrics.clone(), request_id, endpoint.label());
    let answer = attempt.single(&mut rec, &v.route, target).await?;
    if answer.parts.status != http::StatusCode::OK {
        return None;
    }
    let Received::Complete(fresh) = answer.body else {
        // Too large to hold: nothing to compare with.
        return None;
    };
    // Verification is real spend: account it to the tenant.
    if let Some(u) = answer.usage {
        let cost = u.cost(&target.model.pricing);
        shared.metrics.spend(v.tenant.clone(), target.model.name.clone(), cost);
    }
    Some(fresh)
}
