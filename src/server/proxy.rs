//! The OpenAI endpoints: read and check the request, pick the route and its candidates, send to
//! the first candidate that answers (falling over to the next on connect errors, timeouts,
//! 429 and 5xx, always before anything has gone to the app), and relay the answer.
//! Paths the sidecar does not interpret are passed through to the default route's provider.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::Attempt;
use super::body::{Body, RateGuard, ReadError, drain_after, read_request};
use super::commit::Committed;
use super::error::ApiError;
use super::record::{Account, AdviceInput, Outcome, RequestRecord, operation_name};
use super::relay::{Mode, OnComplete, RelayBody, RelayParams};
use super::response::{Received, internal, receive};
use super::traced;
use super::verify::{self, Verification};
use crate::cache::{Cache, CacheStatus, Hit, HitKind, Plan, replay};
use crate::config::ModelConfig;
use crate::config::{Config, ProviderKind, ServerSettings};
use crate::limits::ledger::{self, now_ms};
use crate::openai::usage::{finish_reasons, parse_usage};
use crate::openai::{Endpoint, RequestHead, SseScanner, Usage};
use crate::router::{self, Decision, Route, Signals, Step};
use crate::scheduler::Permit;
use crate::state::{Runtime, Shared};
use crate::telemetry::trace::{Kind, RequestTrace, Span};
use crate::telemetry::{DecisionLabels, LimitLabels, Metrics};
use crate::upstream::adapter::StreamTranslate;
use crate::upstream::redact::Redactor;
use crate::upstream::{BodyRead, ClientBody, Provider, UpstreamError, is_hop_header, read_body};
use tokio_util::sync::CancellationToken;

/// The header an app sends to pick its priority class.
pub const PRIORITY_HEADER: &str = "x-llm-sidecar-priority";

/// What came back from the provider, ready to give to the app.
struct Answer {
    parts: http::response::Parts,
    body: Received,
    permit: Permit,
    route: HeaderValue,
    model: Arc<ModelConfig>,
    strip_usage: bool,
    idle: Duration,
    deadline: Instant,
    /// Where a complete, successful answer is stored, when the cache applies.
    cache: Option<CacheStore>,
    translate: Option<Box<dyn StreamTranslate>>,
    /// A whole answer already checked (its usage read then); passthrough bodies are not.
    checked: Option<Option<Usage>>,
    /// A stream committed at its first content event.
    committed: Option<Committed>,
    redact: Arc<Redactor>,
    stop: CancellationToken,
}

struct CacheStore {
    cache: Arc<Cache>,
    plan: Plan,
    config: Arc<Config>,
}

impl CacheStore {
    fn store(mut self, response: Bytes, model: Arc<str>) {
        self.cache
            .judge_shadow(&mut self.plan, response.clone(), &self.config.cache);
        self.cache.store(self.plan, response, model, &self.config.cache);
    }
}

// Transient: built and matched once per request, on the stack; boxing would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Reply {
    Upstream(Answer),
    Cached {
        hit: Hit,
        stream: bool,
        include_usage: bool,
        route: HeaderValue,
    },
}

pub async fn openai(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    endpoint: Endpoint,
    request_id: HeaderValue,
) -> Response<Body> {
    let rt = shared.runtime.load_full();
    let mut rec = RequestRecord::new(shared.metrics.clone(), request_id, endpoint.label());
    rec.live = Some(shared.live.clone());
    rec.trace = shared.tracer.start(req.headers(), operation_name(endpoint.label()));
    if let Some(t) = rec.trace.as_deref_mut() {
        traced::http(t, req.method(), req.uri().path());
    }
    let (parts, mut incoming) = req.into_parts();
    let stages = Stages {
        shared: &shared,
        rt: &rt,
        endpoint,
        headers: &parts.headers,
    };
    match stages.run(&mut rec, &mut incoming).await {
        Ok(Reply::Upstream(answer)) => relay(rec, answer),
        Ok(Reply::Cached {
            hit,
            stream,
            include_usage,
            route,
        }) => serve_cached(rec, &rt, hit, stream, include_usage, route),
        Err(e) => drain_after(fail(rec, e, &rt.redact), incoming, expects_continue(&parts.headers)),
    }
}

/// One OpenAI request's stages, in order: identify the tenant → read the body → admit (limits,
/// budget, priority) → route → plan the cache → look it up → attempt the candidates → reply.
/// What every stage reads: the sidecar, this request's config snapshot, the endpoint and the
/// app's headers.
struct Stages<'a> {
    shared: &'a Arc<Shared>,
    rt: &'a Arc<Runtime>,
    endpoint: Endpoint,
    headers: &'a HeaderMap,
}

/// What admission decided.
struct Admitted<'b> {
    /// Index into `scheduling.classes`.
    class: usize,
    /// The tenant is past its soft budget (`budget: soft` routes apply).
    budget_soft: bool,
    /// Sampled for the cost advisor's complexity score.
    sampled: bool,
    signals: Signals<'b>,
}

impl Stages<'_> {
    async fn run(&self, rec: &mut RequestRecord, incoming: &mut Incoming) -> Result<Reply, ApiError> {
        let tenant = self.rt.tenants.identify(self.headers)?;
        rec.tenant = Some(tenant.clone());
        let body = read_request_body(incoming, self.headers, &self.rt.config.server, &self.shared.metrics).await?;
        let head = RequestHead::parse(&body)?;
        rec.stream = head.stream && self.endpoint.streams();
        if let Some(t) = rec.trace.as_deref_mut() {
            traced::request(t, operation_name(self.endpoint.label()), &head);
        }
        let admitted = self.admit(rec, &tenant, &head, body.len())?;
        let decision = self.route(rec, &tenant, &head, &admitted).await?;
        let mut plan = self.cache_plan(rec, &decision, &tenant, &head, &body);
        self.advice_input(rec, &admitted, &decision);
        if let Some(p) = plan.as_mut().filter(|p| p.lookup) {
            if let Some(hit) = self.lookup(rec, p).await {
                return Ok(self.cached(rec, hit, &tenant, &decision, &head, &body));
            }
            if let Some(a) = rec.advice.as_mut() {
                a.best_miss = p.best_similarity;
            }
        }
        self.attempt(rec, &decision, &head, &body, admitted.class, plan).await
    }

    /// Priority class, the request's signals, and the tenant's limits and budget.
    fn admit<'b>(
        &self,
        rec: &mut RequestRecord,
        tenant: &Arc<str>,
        head: &RequestHead<'b>,
        body_len: usize,
    ) -> Result<Admitted<'b>, ApiError> {
        let rt = self.rt;
        let class = priority_class(rt, self.headers, tenant)?;
        rec.priority = rt.config.scheduling.classes.get(class).map(|(n, _)| n.clone());
        // The last user turn is read once, when the router, the dashboard or a sampled
        // complexity score (cost advice) needs it.
        let sampled = self.shared.advisor.sample();
        let want_text = rt.router.needs_text() || rt.config.server.dashboard_prompts || sampled;
        let signals = Signals::read(head, body_len, want_text);
        if rt.config.server.dashboard_prompts {
            rec.prompt = Some(signals.text.as_deref().unwrap_or("").chars().take(120).collect());
        }
        let estimate = signals.prompt_tokens + signals.completion_estimate();
        let admission = match self
            .shared
            .ledger
            .admit(&rt.config.tenants, tenant, &head.model, estimate, now_ms())
        {
            Ok(a) => a,
            Err(limited) => return Err(limit_error(self.shared, rec, tenant, limited)),
        };
        rec.ratelimit = admission.headers;
        let budget_soft = admission.soft;
        rec.account = Some(Account {
            ledger: self.shared.ledger.clone(),
            config: rt.config.clone(),
            admission,
        });
        Ok(Admitted {
            class,
            budget_soft,
            sampled,
            signals,
        })
    }

    /// The route and its ordered candidates.
    async fn route(
        &self,
        rec: &mut RequestRecord,
        tenant: &str,
        head: &RequestHead<'_>,
        admitted: &Admitted<'_>,
    ) -> Result<Decision, ApiError> {
        let span = rec.trace.as_deref().map(|t| t.open("route", Kind::Internal));
        let decided = decide(
            self.shared,
            self.rt,
            head,
            &admitted.signals,
            tenant,
            self.headers,
            admitted.budget_soft,
            rec.trace.as_deref_mut().zip(span.as_ref()),
        )
        .await;
        if let (Some(t), Some(span)) = (rec.trace.as_deref_mut(), span) {
            traced::route(t, span, &decided);
        }
        let decision = decided?;
        rec.route = Some(decision.route.name.clone());
        rec.reason = Some(decision.reason);
        if let Some(first) = decision.candidates.first() {
            self.shared
                .metrics
                .route_decisions
                .get_or_create(&DecisionLabels {
                    route: decision.route.name.clone(),
                    strategy: decision.route.strategy.label(),
                    model: first.model.name.clone(),
                })
                .inc();
        }
        Ok(decision)
    }

    /// Whether and how the cache applies; `None` (and why, in the record) when it does not.
    fn cache_plan(
        &self,
        rec: &mut RequestRecord,
        decision: &Decision,
        tenant: &Arc<str>,
        head: &RequestHead<'_>,
        body: &Bytes,
    ) -> Option<Plan> {
        let planned = self.shared.cache.plan(
            &self.rt.config.cache,
            &decision.route,
            self.endpoint.label(),
            tenant,
            head,
            self.headers,
            body,
        );
        let plan = match planned {
            Ok(p) => {
                rec.cache_skip = p.skipped;
                Some(p)
            }
            Err(reason) => {
                rec.cache_skip = Some(reason);
                None
            }
        };
        rec.cache = match &plan {
            Some(p) if p.lookup => CacheStatus::Miss,
            _ => CacheStatus::Bypass,
        };
        plan
    }

    /// What the cost advisor will learn from this request when it ends.
    fn advice_input(&self, rec: &mut RequestRecord, admitted: &Admitted<'_>, decision: &Decision) {
        let light = admitted
            .sampled
            .then(|| crate::router::complexity::score(admitted.signals.text.as_deref().unwrap_or("")).total < 0.5);
        rec.advice = Some(AdviceInput {
            advisor: self.shared.advisor.clone(),
            needs: admitted.signals.needs,
            light,
            best_miss: None,
            soft_unrouted: admitted.budget_soft && !decision.route.for_soft_budget(),
        });
    }

    async fn lookup(&self, rec: &mut RequestRecord, plan: &mut Plan) -> Option<Hit> {
        let span = rec.trace.as_deref().map(|t| t.open("cache lookup", Kind::Internal));
        let hit = self.shared.cache.lookup(plan, &self.rt.config.cache).await;
        rec.cache_skip = plan.skipped;
        if let (Some(t), Some(span)) = (rec.trace.as_deref_mut(), span) {
            traced::cache(t, span, plan, hit.as_ref());
        }
        hit
    }

    /// A cache hit's reply; a sampled semantic hit is also re-asked upstream in the background.
    fn cached(
        &self,
        rec: &RequestRecord,
        hit: Hit,
        tenant: &Arc<str>,
        decision: &Decision,
        head: &RequestHead<'_>,
        body: &Bytes,
    ) -> Reply {
        if let HitKind::Semantic { similarity } = hit.kind
            && let Some(permit) = self.shared.cache.should_verify(&self.rt.config.cache)
        {
            let v = Verification {
                tenant: tenant.clone(),
                route: decision.route.clone(),
                body: body.clone(),
                entry: hit.entry,
                similarity,
                served: hit.response.clone(),
            };
            verify::spawn(self.shared.clone(), self.rt.clone(), v, permit);
        }
        Reply::Cached {
            hit,
            stream: rec.stream,
            include_usage: head.include_usage,
            route: route_header(&decision.route.name),
        }
    }

    /// The candidates in order (retries, failover) until one answers.
    async fn attempt(
        &self,
        rec: &mut RequestRecord,
        decision: &Decision,
        head: &RequestHead<'_>,
        body: &Bytes,
        class: usize,
        plan: Option<Plan>,
    ) -> Result<Reply, ApiError> {
        let attempt = Attempt {
            shared: self.shared,
            rt: self.rt,
            endpoint: self.endpoint,
            head,
            body,
            app_headers: self.headers,
            class,
            purpose: None,
        };
        let s = attempt.run(rec, decision).await?;
        let cache = plan.map(|plan| CacheStore {
            cache: self.shared.cache.clone(),
            plan,
            config: self.rt.config.clone(),
        });
        Ok(Reply::Upstream(Answer {
            parts: s.parts,
            body: s.body,
            permit: s.permit,
            route: route_header(&decision.route.name),
            model: s.target.model,
            strip_usage: s.strip_usage,
            idle: s.idle,
            deadline: s.deadline,
            cache,
            translate: s.translate,
            checked: s.committed.is_none().then_some(s.usage),
            committed: s.committed,
            redact: self.rt.redact.clone(),
            stop: self.shared.streams_cut.clone(),
        }))
    }
}

/// Runs the router, embedding the last user turn when a `semantic` route asks for it.
#[allow(clippy::too_many_arguments)]
async fn decide(
    shared: &Shared,
    rt: &Runtime,
    head: &RequestHead<'_>,
    signals: &Signals<'_>,
    tenant: &str,
    headers: &HeaderMap,
    budget_soft: bool,
    mut trace: Option<(&mut RequestTrace, &Span)>,
) -> Result<Decision, ApiError> {
    let req = router::Request {
        model: &head.model,
        tenant,
        headers,
        signals,
        budget_soft,
    };
    let mut step = rt.router.decide(&req, 0)?;
    loop {
        match step {
            Step::Decided(d) => return Ok(d),
            Step::NeedsEmbedding(route) => {
                let started = std::time::Instant::now();
                let query = match signals.text.as_deref() {
                    Some(text) if shared.cache.prepare_examples(&route).await => {
                        shared.cache.embed(text, rt.config.cache.semantic.timeout).await
                    }
                    _ => None,
                };
                if let Some((t, span)) = trace.as_mut() {
                    traced::route_embedding(t, span, started, query.is_some());
                }
                step = rt.router.decide_semantic(&route, &req, query.as_deref())?;
            }
        }
    }
}

/// A refusal by the tenant's limits: 429 in OpenAI's shape, with `retry-after` and the
/// `x-ratelimit-*` headers.
fn limit_error(shared: &Shared, rec: &mut RequestRecord, tenant: &Arc<str>, limited: ledger::Limited) -> ApiError {
    shared
        .metrics
        .limit_rejections
        .get_or_create(&LimitLabels {
            tenant: tenant.clone(),
            reason: limited.reason(),
        })
        .inc();
    match limited {
        ledger::Limited::Rate {
            reason,
            limit,
            reset,
            headers,
        } => {
            rec.ratelimit = Some(headers);
            let what = reason.unit();
            let scope = if reason.per_model() { "for this model " } else { "" };
            ApiError {
                retry_after: Some(reset.as_secs().max(1)),
                outcome: Outcome::RateLimited,
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    Some("rate_limit_exceeded"),
                    format!(
                        "Rate limit reached for tenant {tenant} {scope}on {what} per minute: limit {limit}. Retry in {:.0} s.",
                        reset.as_secs_f64().ceil()
                    ),
                )
            }
        }
        ledger::Limited::Budget {
            reason,
            limit_usd,
            spent_usd,
            reset,
        } => {
            let period = reason.period();
            ApiError {
                retry_after: Some(reset.as_secs().max(1)),
                outcome: Outcome::OverBudget,
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "insufficient_quota",
                    Some("insufficient_quota"),
                    format!(
                        "Tenant {tenant} has used its {period} budget (${spent_usd:.2} of ${limit_usd:.2}); it renews in {} h {} min. Ask the platform team to raise tenants.list.{tenant}.budget.",
                        reset.as_secs() / 3600,
                        reset.as_secs() % 3600 / 60
                    ),
                )
            }
        }
    }
}

/// The priority class: `x-llm-sidecar-priority`, else the tenant's, else the default.
fn priority_class(rt: &Runtime, headers: &HeaderMap, tenant: &str) -> Result<usize, ApiError> {
    let s = &rt.config.scheduling;
    if let Some(v) = headers.get(PRIORITY_HEADER) {
        let name = String::from_utf8_lossy(v.as_bytes());
        return s.class(&name).ok_or_else(|| {
            ApiError::invalid(
                None,
                format!(
                    "x-llm-sidecar-priority: unknown priority class {:?}; use one of {}",
                    name.chars().take(64).collect::<String>(),
                    s.classes.iter().map(|(n, _)| &**n).collect::<Vec<_>>().join(", ")
                ),
            )
        });
    }
    Ok(rt
        .config
        .tenants
        .priorities
        .get(tenant)
        .copied()
        .unwrap_or(s.default_class))
}

/// Answers from the cache, as JSON or as a replayed SSE stream.
fn serve_cached(
    mut rec: RequestRecord,
    rt: &Runtime,
    hit: Hit,
    stream: bool,
    include_usage: bool,
    route: HeaderValue,
) -> Response<Body> {
    let body = if stream {
        replay::to_sse(&hit.response, include_usage)
    } else {
        Some(hit.response.clone())
    };
    let Some(body) = body else {
        return fail(rec, internal("a cached answer could not be replayed"), &rt.redact);
    };
    let mut resp = Response::new(Body::full(body));
    let h = resp.headers_mut();
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("x-request-id", rec.request_id.clone());
    h.insert("x-llm-sidecar-route", route);
    if let Ok(v) = HeaderValue::from_str(&hit.model) {
        h.insert("x-llm-sidecar-model", v);
    }
    h.insert("x-llm-sidecar-attempts", HeaderValue::from(0));
    rec.cache = CacheStatus::from(hit.kind);
    if let HitKind::Semantic { similarity } = hit.kind
        && let Ok(v) = HeaderValue::from_str(&format!("{similarity:.4}"))
    {
        h.insert("x-llm-sidecar-cache-similarity", v);
    }
    h.insert("x-llm-sidecar-cache", HeaderValue::from_static(rec.cache.header()));
    if let Some(t) = rec.trace.as_deref_mut() {
        t.finish_reasons = finish_reasons(&hit.response);
    }
    // Served locally: the provider charged nothing for this answer.
    h.insert("x-llm-sidecar-cost-usd", HeaderValue::from_static("0"));
    rec.response_headers(h);
    rec.model = rt.config.models.get(&*hit.model).cloned();
    rec.status = 200;
    rec.finish(Outcome::CacheHit);
    resp
}

/// Passes a `/v1/*` request the sidecar does not interpret (Responses API, audio, files,
/// batches) to the default route's first provider, body and query unchanged.
///
/// `path` is the request's path as [`super::normalize_path`] spelled it: that, not the raw
/// request target, is what reaches the provider.
pub async fn passthrough(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    path: String,
    request_id: HeaderValue,
) -> Response<Body> {
    let rt: Arc<Runtime> = shared.runtime.load_full();
    let mut rec = RequestRecord::new(shared.metrics.clone(), request_id, "passthrough");
    rec.live = Some(shared.live.clone());
    rec.trace = shared.tracer.start(req.headers(), "passthrough");
    if let Some(t) = rec.trace.as_deref_mut() {
        traced::passthrough(t, req.method(), &path);
    }
    let (parts, incoming) = req.into_parts();
    // Taken when the body is sent upstream; still here after an early error, to be drained.
    let mut incoming = Some(incoming);
    let result = async {
        let tenant = rt.tenants.identify(&parts.headers)?;
        rec.tenant = Some(tenant.clone());
        // Passthrough bodies are not read: the estimate comes from their declared length, and
        // limits count them under the pseudo-model `passthrough`.
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let estimate = declared / crate::router::signals::BYTES_PER_TOKEN as u64
            + crate::router::signals::DEFAULT_COMPLETION_ESTIMATE;
        let admission = match shared.ledger.admit(&rt.config.tenants, &tenant, "passthrough", estimate, now_ms()) {
            Ok(a) => a,
            Err(limited) => return Err(limit_error(&shared, &mut rec, &tenant, limited)),
        };
        rec.ratelimit = admission.headers;
        rec.account = Some(Account {
            ledger: shared.ledger.clone(),
            config: rt.config.clone(),
            admission,
        });
        let route = rt.router.default_route().ok_or_else(|| {
            ApiError::unknown_url(&parts.method, &path).with_message(format!(
                "Invalid URL ({} {}): this sidecar interprets chat/completions, completions, embeddings and models, and passes other /v1 paths to the default route, but no `default_route` is configured.",
                parts.method,
                path
            ))
        })?;
        rec.route = Some(route.name.clone());
        // Passthrough paths are OpenAI's: only an OpenAI-compatible provider can take them.
        let (model, provider): (&Arc<ModelConfig>, &Arc<Provider>) = route
            .targets
            .iter()
            .find_map(|t| {
                rt.providers
                    .get(&t.model.provider)
                    .filter(|p| p.kind() == ProviderKind::OpenAi)
                    .map(|p| (&t.model, p))
            })
            .ok_or_else(|| internal("the default route has no OpenAI-compatible target"))?;
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
        let class = priority_class(self.rt, &parts.headers, rec.tenant.as_deref().unwrap_or(""))?;
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
        rec.model = Some(self.model.clone());
        rec.attempts = 1;
        let suffix = path.strip_prefix("/v1").unwrap_or(path);
        let uri = provider.uri(suffix, parts.uri.query()).map_err(internal)?;
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
        provider.forward_headers(&parts.headers, &mut headers, true);
        headers.insert("x-request-id", rec.request_id.clone());
        let mut span = rec
            .trace
            .as_deref()
            .map(|t| traced::passthrough_attempt(t, &parts.method, provider));
        if let (Some(t), Some(span)) = (rec.trace.as_deref(), span.as_ref()) {
            headers.insert("traceparent", t.traceparent(span));
        }
        let body = incoming
            .take()
            .ok_or_else(|| internal("the request body was already sent"))?;
        let body: ClientBody = RateGuard::new(body, &self.rt.config.server).boxed();
        let deadline = Instant::now() + provider.config.timeouts.total;
        let sent = provider
            .send(parts.method.clone(), uri, headers, body, deadline, permit)
            .await;
        if let (Some(t), Some(mut span)) = (rec.trace.as_deref_mut(), span.take()) {
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
            // The provider refused the sidecar's key, not the app's: say so, and count it.
            self.shared.metrics.upstream_error(provider.name(), "auth");
            self.shared
                .metrics
                .upstream_auth_failure(provider.name(), status.as_u16());
            let (_, mut incoming) = up.response.into_parts();
            let until = deadline.min(Instant::now() + Duration::from_secs(2));
            let detail = match read_body(&mut incoming, provider.config.timeouts.idle, until, 64 << 10).await {
                Ok(BodyRead::Complete(b)) => crate::upstream::error_detail(&b),
                _ => String::new(),
            };
            return Err(ApiError::from(UpstreamError::Auth {
                provider: provider.name().clone(),
                status,
                detail,
            }));
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
        Ok(Answer {
            parts,
            body,
            permit: up.permit,
            route: route_header(&route.name),
            model: self.model.clone(),
            strip_usage: false,
            idle,
            deadline,
            cache: None,
            translate: None,
            checked: None,
            committed: None,
            redact: self.rt.redact.clone(),
            stop: self.shared.streams_cut.clone(),
        })
    }
}

fn relay(mut rec: RequestRecord, answer: Answer) -> Response<Body> {
    let Answer {
        parts,
        body,
        permit,
        route,
        model,
        strip_usage,
        idle,
        deadline,
        cache,
        translate,
        checked,
        committed,
        redact,
        stop,
    } = answer;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = parts.status;
    let h = resp.headers_mut();
    for (name, value) in &parts.headers {
        // The length is recomputed for what the app actually receives.
        if is_hop_header(name) || *name == header::CONTENT_LENGTH {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    h.insert("x-request-id", rec.request_id.clone());
    h.insert("x-llm-sidecar-route", route);
    if let Ok(v) = HeaderValue::from_str(&model.name) {
        h.insert("x-llm-sidecar-model", v);
    }
    h.insert("x-llm-sidecar-attempts", HeaderValue::from(rec.attempts));
    h.insert("x-llm-sidecar-cache", HeaderValue::from_static(rec.cache.header()));
    rec.response_headers(h);
    rec.status = parts.status.as_u16();
    let success = parts.status.is_success();
    let outcome = if success { Outcome::Ok } else { Outcome::UpstreamStatus };
    match body {
        Received::Complete(bytes) => {
            drop(permit);
            let bytes = redact.bytes(bytes);
            if success {
                rec.usage = match checked {
                    Some(usage) => usage,
                    None => parse_usage(&bytes).map(|r| r.usage),
                };
                if let Some(t) = rec.trace.as_deref_mut() {
                    t.finish_reasons = finish_reasons(&bytes);
                }
                if let Some(u) = rec.usage {
                    let cost = u.cost(&model.pricing);
                    if let Ok(v) = HeaderValue::from_str(&format!("{cost:.8}")) {
                        resp.headers_mut().insert("x-llm-sidecar-cost-usd", v);
                    }
                }
                // Only an answer that passed the check is ever stored.
                if let Some(c) = cache.filter(|_| parts.status == StatusCode::OK && checked.is_some()) {
                    c.store(bytes.clone(), model.name.clone());
                }
            }
            rec.finish(outcome);
            *resp.body_mut() = Body::full(bytes);
        }
        Received::Stream { incoming, prefix, sse } => {
            let (mode, prefix, seen, settle) = match committed {
                Some(c) => (Mode::Sse(c.scanner), Some(c.prefix), Some(c.seen), Some(c.settle)),
                None if sse && success => {
                    // Passthrough streams (the Responses API and others) are relayed as they are.
                    let mut scanner = SseScanner::lenient(strip_usage);
                    if rec.trace.is_some() {
                        scanner.track_finish_reason();
                    }
                    (Mode::Sse(scanner), prefix, None, None)
                }
                None => (Mode::Raw, prefix, None, None),
            };
            if let Some(t) = rec.trace.as_deref_mut() {
                t.stream_start = Some(std::time::Instant::now());
            }
            // A stream is stored only if it was committed (its first event checked) and ends
            // complete and error-free (the relay decides).
            let on_complete: Option<OnComplete> = cache
                .filter(|_| settle.is_some() && parts.status == StatusCode::OK)
                .map(|c| {
                    let model = model.name.clone();
                    Box::new(move |sse: &[u8]| {
                        if let Some(json) = replay::assemble(sse) {
                            c.store(json, model);
                        }
                    }) as OnComplete
                });
            let params = RelayParams {
                mode,
                idle,
                deadline,
                prefix,
                seen,
                outcome,
                on_complete,
                translate,
                settle,
                redact,
                stop,
            };
            *resp.body_mut() = Body::Relay(Box::pin(RelayBody::new(incoming, params, rec, permit)));
        }
    }
    resp
}

fn fail(mut rec: RequestRecord, mut e: ApiError, redact: &Redactor) -> Response<Body> {
    // Messages quote providers, and providers echo credentials.
    if let Cow::Owned(m) = redact.text(&e.message) {
        e.message = m;
    }
    rec.status = e.status.as_u16();
    let mut resp = {
        rec.finish(e.outcome);
        let id = rec.request_id.clone();
        e.into_response(&id)
    };
    if let Some(route) = &rec.route {
        resp.headers_mut().insert("x-llm-sidecar-route", route_header(route));
    }
    if rec.attempts > 0 {
        resp.headers_mut()
            .insert("x-llm-sidecar-attempts", HeaderValue::from(rec.attempts));
    }
    rec.response_headers(resp.headers_mut());
    resp
}

async fn read_request_body(
    body: &mut Incoming,
    headers: &HeaderMap,
    server: &ServerSettings,
    metrics: &Metrics,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match read_request(body, declared, server).await {
        Ok(b) => Ok(b),
        Err(ReadError::TooLarge(limit)) => Err(ApiError::too_large(limit)),
        Err(e @ (ReadError::TooSlow { .. } | ReadError::Timeout(_))) => {
            metrics.slow_bodies.inc();
            Err(ApiError {
                outcome: Outcome::BodyTimeout,
                ..ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    Some("request_timeout"),
                    format!("The request body {e}."),
                )
            })
        }
        Err(e) => Err(ApiError::invalid(
            None,
            format!("Could not read the request body: it {e}."),
        )),
    }
}

/// The client waits for `100 Continue` before it sends its body.
pub(super) fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn route_header(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid-name"))
}

fn status_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "status_429",
        500.. => "status_5xx",
        _ => "status_4xx",
    }
}
