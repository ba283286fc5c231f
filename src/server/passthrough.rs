//! Paths the sidecar does not interpret (audio, files, batches, a stored response): passed to
//! the default route's first OpenAI-compatible provider, body and query unchanged, with the
//! tenant's limits, the priority queue, tracing and the relay's accounting.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::{Body, RateGuard, drain_after};
use super::error::ApiError;
use super::headers;
use super::proxy::{expects_continue, limit_error, priority_class};
use super::record::RequestRecord;
use super::reply::{Answer, fail, relay};
use super::response::{Received, error_message, internal, receive};
use super::traced;
use crate::config::{ModelConfig, ProviderKind};
use crate::limits::ledger::now_ms;
use crate::router::Route;
use crate::state::{Runtime, Shared};
use crate::upstream::{ClientBody, Provider, UpstreamError};

/// Passes a `/v1/*` request the sidecar does not interpret (audio, files, batches, a stored
/// response) to the default route's first provider, body and query unchanged.
///
/// `path` is the request's path as [`super::normalize_path`] spelled it: that, not the raw
/// request target, is what reaches the provider.
pub(crate) async fn passthrough(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    path: String,
    request_id: HeaderValue,
) -> Response<Body> {
    let rt: Arc<Runtime> = shared.runtime.load_full();
    let mut rec = RequestRecord::new(shared.metrics.clone(), request_id, "passthrough");
    rec.observed(shared.live.clone(), shared.tracer.start(req.headers(), "passthrough"));
    if let Some(t) = rec.trace_mut() {
        traced::passthrough(t, req.method(), &path);
    }
    let (parts, incoming) = req.into_parts();
    // Taken when the body is sent upstream; still here after an early error, to be drained.
    let mut incoming = Some(incoming);
    let result = async {
        let tenant = rt.tenants.identify(&parts.headers)?;
        rec.identified(&tenant);
        admit(&shared, &rt, &mut rec, &tenant, &parts.headers)?;
        let route = rt.router.default_route().ok_or_else(|| {
            ApiError::unknown_url(&parts.method, &path).with_message(format!(
                "Invalid URL ({} {}): this sidecar interprets chat/completions, completions, embeddings, responses and models, and passes other /v1 paths to the default route, but no `default_route` is configured.",
                parts.method,
                path
            ))
        })?;
        rec.routed(&route.name, None);
        let (model, provider) = match stored_response_target(&shared, &rt, &path) {
            Some(t) => t,
            None => openai_target(&rt, route)?,
        };
        let upstream = Upstream {
            shared: &shared,
            rt: &rt,
            model,
            provider,
        };
        upstream
            .send(&mut rec, &parts, &path, route, &mut incoming)
            .await
    }
    .await;
    match result {
        Ok(answer) => relay(rec, answer),
        Err(e) => {
            let resp = fail(rec, e, &rt.redact);
            match incoming {
                Some(body) => drain_after(resp, body, expects_continue(&parts.headers)),
                None => resp,
            }
        }
    }
}

/// The tenant's limits and budget. Passthrough bodies are not read: the estimate comes from
/// their declared length, and limits count them under the pseudo-model `passthrough`.
fn admit(
    shared: &Arc<Shared>,
    rt: &Runtime,
    rec: &mut RequestRecord,
    tenant: &Arc<str>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let estimate =
        declared / crate::router::signals::BYTES_PER_TOKEN as u64 + crate::router::signals::DEFAULT_COMPLETION_ESTIMATE;
    let admission = match shared
        .ledger
        .admit(&rt.config.tenants, tenant, "passthrough", estimate, now_ms())
    {
        Ok(a) => a,
        Err(limited) => return Err(limit_error(shared, rec, tenant, limited)),
    };
    rec.admitted(shared.ledger.clone(), rt.config.clone(), admission);
    Ok(())
}

/// Passthrough paths are OpenAI's: only an OpenAI-compatible provider can take them.
fn openai_target<'a>(rt: &'a Runtime, route: &'a Route) -> Result<(&'a Arc<ModelConfig>, &'a Arc<Provider>), ApiError> {
    route
        .targets
        .iter()
        .filter(|t| t.model.unusable.is_none())
        .find_map(|t| {
            rt.providers
                .get(&t.model.provider)
                .filter(|p| p.kind() == ProviderKind::OpenAi)
                .map(|p| (&t.model, p))
        })
        .ok_or_else(|| internal("the default route has no OpenAI-compatible target"))
}

/// A stored response (`/v1/responses/{id}`, its `cancel` and `input_items`) is read at the
/// provider that made it, when this sidecar relayed it.
fn stored_response_target<'a>(
    shared: &Shared,
    rt: &'a Runtime,
    path: &str,
) -> Option<(&'a Arc<ModelConfig>, &'a Arc<Provider>)> {
    let id = path.strip_prefix("/v1/responses/")?.split('/').next()?;
    let owner = shared.response_owners.owner(id)?;
    let provider = rt.providers.get(&owner).filter(|p| p.kind() == ProviderKind::OpenAi)?;
    let model = rt
        .config
        .models
        .values()
        .find(|m| m.provider == owner && m.unusable.is_none())?;
    Some((model, provider))
}

/// The passthrough's one attempt: the default route's first OpenAI-compatible target.
struct Upstream<'a> {
    shared: &'a Arc<Shared>,
    rt: &'a Arc<Runtime>,
    model: &'a Arc<ModelConfig>,
    provider: &'a Arc<Provider>,
}

impl Upstream<'_> {
    /// Queues for a slot, sends the app's body as it is (rate-guarded), and reads the answer's
    /// head; a provider refusing the sidecar's key becomes `upstream_auth`.
    async fn send(
        &self,
        rec: &mut RequestRecord,
        parts: &http::request::Parts,
        path: &str,
        route: &Arc<Route>,
        // Taken only when the body is sent: after an earlier error it is still there, to be drained.
        incoming: &mut Option<Incoming>,
    ) -> Result<Answer, ApiError> {
        let class = priority_class(self.rt, &parts.headers, rec.tenant().map_or("", |t| &**t))?;
        let sched = &self.rt.config.scheduling;
        let provider = self.provider;
        let permit = provider
            .scheduler
            .acquire(class, sched.queue_timeout, sched.max_queued)
            .await
            .map_err(|reason| {
                ApiError::from(UpstreamError::Busy {
                    provider: provider.name().clone(),
                    limit: provider.scheduler.limit(),
                    reason,
                })
            })?;
        rec.attempting(self.model, None);
        let suffix = path.strip_prefix("/v1").unwrap_or(path);
        let uri = provider.uri(suffix, parts.uri.query()).map_err(internal)?;
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
        provider.forward_headers(&parts.headers, &mut headers, true);
        headers.insert(headers::REQUEST_ID, rec.request_id().clone());
        self.sent(rec, parts, route, incoming, uri, headers, permit).await
    }

    /// Sends the app's body as it is (rate-guarded) and reads the answer's head.
    #[allow(clippy::too_many_arguments)]
    async fn sent(
        &self,
        rec: &mut RequestRecord,
        parts: &http::request::Parts,
        route: &Arc<Route>,
        incoming: &mut Option<Incoming>,
        uri: http::Uri,
        mut headers: HeaderMap,
        permit: crate::scheduler::Permit,
    ) -> Result<Answer, ApiError> {
        let provider = self.provider;
        let mut span = rec
            .trace()
            .map(|t| traced::passthrough_attempt(t, &parts.method, provider));
        if let (Some(t), Some(span)) = (rec.trace(), span.as_ref()) {
            headers.insert("traceparent", t.traceparent(span));
        }
        let body = incoming
            .take()
            .ok_or_else(|| internal("the request body was already sent"))?;
        let body = ClientBody::Streamed(RateGuard::new(body, &self.rt.config.server).boxed());
        let deadline = Instant::now() + provider.config.timeouts.total;
        let sent = provider
            .send(parts.method.clone(), uri, headers, body, deadline, permit)
            .await;
        if let (Some(t), Some(mut span)) = (rec.trace_mut(), span.take()) {
            match &sent {
                Ok(up) => span.set("http.response.status_code", up.response.status().as_u16()),
                Err(e) => traced::attempt_failed(&mut span, e, &self.rt.redact),
            }
            t.close(span);
        }
        let up = sent.map_err(|e| {
            self.shared.metrics.upstream_error(provider.name(), e.kind());
            ApiError::from(e)
        })?;
        let status = up.response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(self.refused_key(up, deadline).await);
        }
        if !status.is_success() {
            self.shared.metrics.upstream_error(provider.name(), status_kind(status));
        }
        rec.first_byte();
        let idle = provider.config.timeouts.idle;
        let (parts, body) = receive(up.response, idle, deadline).await.map_err(|failure| {
            self.shared.metrics.upstream_error(provider.name(), failure.kind());
            ApiError::from(UpstreamError::Body {
                provider: provider.name().clone(),
                failure,
            })
        })?;
        Ok(self.unchecked(parts, body, up.permit, route, deadline))
    }

    /// An answer relayed as it is: not checked, not cached, not translated.
    fn unchecked(
        &self,
        parts: http::response::Parts,
        body: Received,
        permit: crate::scheduler::Permit,
        route: &Route,
        deadline: Instant,
    ) -> Answer {
        Answer {
            parts,
            body,
            permit,
            route: route.header.clone(),
            model: self.model.clone(),
            strip_usage: false,
            idle: self.provider.config.timeouts.idle,
            deadline,
            cache: None,
            translate: None,
            checked: None,
            committed: None,
            redact: self.rt.redact.clone(),
            stop: self.shared.streams_cut.clone(),
        }
    }

    /// The provider refused the sidecar's key, not the app's: say so, and count it.
    async fn refused_key(&self, up: crate::upstream::Upstream, deadline: Instant) -> ApiError {
        let provider = self.provider;
        let status = up.response.status();
        self.shared.metrics.upstream_error(provider.name(), "auth");
        self.shared
            .metrics
            .upstream_auth_failure(provider.name(), status.as_u16());
        let detail = error_message(up.response, provider.config.timeouts.idle, deadline).await;
        ApiError::from(UpstreamError::Auth {
            provider: provider.name().clone(),
            status,
            detail,
        })
    }
}

fn status_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "status_429",
        500.. => "status_5xx",
        _ => "status_4xx",
    }
}
