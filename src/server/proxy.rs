//! The OpenAI endpoints: read and check the request, pick the route and its candidates, send to
//! the first candidate that answers (falling over to the next on connect errors, timeouts,
//! 429 and 5xx, always before anything has gone to the app), and relay the answer.
//! Paths the sidecar does not interpret are passed through to the default route's provider.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::attempt::Attempt;
use super::body::{Body, ReadError, drain_after, read_request};
use super::error::ApiError;
use super::record::{AdviceInput, Outcome, RequestRecord, operation_name};
use super::reply::{Answer, CacheStore, fail, relay, serve_cached};
use super::traced;
use super::verify::{self, Verification};
use crate::cache::{CacheStatus, Hit, HitKind, Plan};
use crate::callout::Verdict;
use crate::config::ServerSettings;
use crate::limits::ledger::{self, now_ms};
use crate::openai::{Endpoint, RequestHead};
use crate::router::{self, Decision, Signals, Step};
use crate::state::{Runtime, Shared};
use crate::telemetry::trace::{Kind, RequestTrace, Span};
use crate::telemetry::{DecisionLabels, LimitLabels, Metrics};

/// The header an app sends to pick its priority class.
pub(crate) const PRIORITY_HEADER: HeaderName = HeaderName::from_static("x-llm-sidecar-priority");

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

pub(crate) async fn openai(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    endpoint: Endpoint,
    request_id: HeaderValue,
) -> Response<Body> {
    let rt = shared.runtime.load_full();
    let mut rec = RequestRecord::new(shared.metrics.clone(), request_id, endpoint.label());
    rec.observed(
        shared.live.clone(),
        shared.tracer.start(req.headers(), operation_name(endpoint.label())),
    );
    if let Some(t) = rec.trace_mut() {
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
        rec.identified(&tenant);
        if let Some(after) = &self.rt.callouts.after_answer {
            rec.tell(after.clone());
        }
        if let Some(sinks) = &self.shared.sinks {
            rec.tell_sinks(sinks.clone());
        }
        let read = read_request_body(incoming, self.headers, &self.rt.config.server, &self.shared.metrics, rec.started()).await?;
        let head = RequestHead::parse(&read)?;
        // Parsed again only when the before_route callout chose another model.
        let (rewritten, added) = self.before_route(rec, &tenant, &head, &read).await?;
        let (body, head) = match &rewritten {
            Some(b) => (b, RequestHead::parse(b)?),
            None => (&read, head),
        };
        rec.streams(head.stream && self.endpoint.streams());
        if let Some(t) = rec.trace_mut() {
            traced::request(t, operation_name(self.endpoint.label()), &head);
        }
        let admitted = self.admit(rec, &tenant, &head, body.len())?;
        let decision = self.route(rec, &tenant, &head, &admitted).await?;
        let mut plan = self.cache_plan(rec, &decision, &tenant, &head, body);
        self.advice_input(rec, &admitted, &decision);
        if let Some(p) = plan.as_mut().filter(|p| p.lookup) {
            if let Some(hit) = self.lookup(rec, p).await {
                return Ok(self.cached(rec, hit, &tenant, &decision, &head, body));
            }
            if let Some(a) = rec.advice_mut() {
                a.best_miss = p.best_similarity;
            }
        }
        self.attempt(rec, &decision, &head, body, admitted.class, plan, added.as_ref())
            .await
    }

    /// The before_route callout, when one is configured: the body rewritten to the model it
    /// chose (if another), and the headers it adds upstream; or its refusal.
    async fn before_route(
        &self,
        rec: &mut RequestRecord,
        tenant: &Arc<str>,
        head: &RequestHead<'_>,
        body: &Bytes,
    ) -> Result<(Option<Bytes>, Option<HeaderMap>), ApiError> {
        let Some(callout) = &self.rt.callouts.before_route else {
            return Ok((None, None));
        };
        let ask = crate::callout::BeforeRoute {
            request_id: rec.request_id().to_str().unwrap_or(""),
            tenant,
            endpoint: self.endpoint.label(),
            model: &head.model,
            stream: head.stream,
            body,
        };
        match callout.before(ask, &self.shared.metrics).await {
            Verdict::Continue { model, headers } => {
                let body = model
                    .filter(|m| *m != head.model)
                    .map(|m| Bytes::from(head.rewrite(&m, false)));
                Ok((body, (!headers.is_empty()).then_some(headers)))
            }
            Verdict::Refuse { status, message } => Err(ApiError::new(
                status,
                "invalid_request_error",
                Some("refused_by_policy"),
                message,
            )),
            Verdict::Unavailable(e) => Err(ApiError {
                outcome: Outcome::UpstreamError,
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("callout_unavailable"),
                    format!(
                        "The policy service this sidecar must ask before routing (callouts.before_route) failed: {e}. Retry later."
                    ),
                )
            }),
        }
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
        rec.queued_as(rt.config.scheduling.classes.get(class).map(|(n, _)| n.clone()));
        // The last user turn is read once, when the router, the dashboard or a sampled
        // complexity score (cost advice) needs it.
        let sampled = self.shared.advisor.sample();
        let want_text = rt.router.needs_text() || rt.config.server.dashboard_prompts || sampled;
        let signals = Signals::read(head, body_len, want_text);
        if rt.config.server.dashboard_prompts {
            rec.show_prompt(signals.text.as_deref().unwrap_or(""));
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
        let budget_soft = admission.soft;
        rec.admitted(self.shared.ledger.clone(), rt.config.clone(), admission);
        Ok(Admitted {
            class,
            budget_soft,
            sampled,
            signals,
        })
    }

    /// A Responses request that continues a stored response goes to the provider that made
    /// it (when this sidecar relayed it): no other provider can see that conversation.
    fn pin(&self, decision: &mut Decision, head: &RequestHead<'_>) {
        if self.endpoint != Endpoint::Responses {
            return;
        }
        let previous = head
            .raw("previous_response_id")
            .and_then(crate::openai::request::Str::of);
        if let Some(owner) = previous.and_then(|id| self.shared.response_owners.owner(&id)) {
            decision.pin_to(&owner);
        }
    }

    /// The route and its ordered candidates.
    async fn route(
        &self,
        rec: &mut RequestRecord,
        tenant: &str,
        head: &RequestHead<'_>,
        admitted: &Admitted<'_>,
    ) -> Result<Decision, ApiError> {
        let span = rec.trace().map(|t| t.open("route", Kind::Internal));
        let mut decided = decide(
            self.shared,
            self.rt,
            head,
            &admitted.signals,
            tenant,
            self.headers,
            admitted.budget_soft,
            rec.trace_mut().zip(span.as_ref()),
        )
        .await;
        if let Ok(d) = decided.as_mut() {
            self.pin(d, head);
        }
        if let (Some(t), Some(span)) = (rec.trace_mut(), span) {
            traced::route(t, span, &decided);
        }
        let decision = decided?;
        rec.routed(&decision.route.name, Some(decision.reason));
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
            self.endpoint,
            tenant,
            head,
            self.headers,
            body,
        );
        match planned {
            Ok(p) => {
                let status = if p.lookup {
                    CacheStatus::Miss
                } else {
                    CacheStatus::Bypass
                };
                rec.cache_planned(status, p.skipped);
                Some(p)
            }
            Err(reason) => {
                rec.cache_planned(CacheStatus::Bypass, Some(reason));
                None
            }
        }
    }

    /// What the cost advisor will learn from this request when it ends.
    fn advice_input(&self, rec: &mut RequestRecord, admitted: &Admitted<'_>, decision: &Decision) {
        let light = admitted
            .sampled
            .then(|| crate::router::complexity::score(admitted.signals.text.as_deref().unwrap_or("")).total < 0.5);
        rec.advise_with(AdviceInput {
            advisor: self.shared.advisor.clone(),
            needs: admitted.signals.needs,
            light,
            best_miss: None,
            soft_unrouted: admitted.budget_soft && !decision.route.for_soft_budget(),
        });
    }

    async fn lookup(&self, rec: &mut RequestRecord, plan: &mut Plan) -> Option<Hit> {
        let span = rec.trace().map(|t| t.open("cache lookup", Kind::Internal));
        let hit = self.shared.cache.lookup(plan, &self.rt.config.cache).await;
        rec.cache_skipped(plan.skipped);
        if let (Some(t), Some(span)) = (rec.trace_mut(), span) {
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
            stream: rec.stream(),
            include_usage: head.include_usage,
            route: decision.route.header.clone(),
        }
    }

    /// The candidates in order (retries, failover) until one answers.
    // The request's parts as each stage produced them; a struct of them would only be unpacked.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        rec: &mut RequestRecord,
        decision: &Decision,
        head: &RequestHead<'_>,
        body: &Bytes,
        class: usize,
        plan: Option<Plan>,
        added: Option<&HeaderMap>,
    ) -> Result<Reply, ApiError> {
        let attempt = Attempt {
            shared: self.shared,
            rt: self.rt,
            endpoint: self.endpoint,
            head,
            body,
            app_headers: self.headers,
            added_headers: added,
            class,
            purpose: None,
        };
        let s = attempt.run(rec, decision).await?;
        let cache = plan.map(|plan| {
            Box::new(CacheStore {
                cache: self.shared.cache.clone(),
                plan,
                config: self.rt.config.clone(),
            })
        });
        Ok(Reply::Upstream(Answer {
            parts: s.parts,
            body: s.body,
            permit: s.permit,
            route: decision.route.header.clone(),
            model: s.target.model,
            strip_usage: s.strip_usage,
            idle: s.idle,
            deadline: s.deadline,
            cache,
            translate: s.translate,
            checked: s.committed.is_none().then_some(s.usage),
            committed: s.committed.map(Box::new),
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
pub(super) fn limit_error(
    shared: &Shared,
    rec: &mut RequestRecord,
    tenant: &Arc<str>,
    limited: ledger::Limited,
) -> ApiError {
    shared
        .metrics
        .limit_rejections
        .get_or_create(&LimitLabels {
            tenant: tenant.clone(),
            reason: limited.reason(),
        })
        .inc();
    let (e, headers) = ApiError::limited(tenant, limited);
    rec.limited(headers);
    e
}

/// The priority class: `x-llm-sidecar-priority`, else the tenant's, else the default.
pub(super) fn priority_class(rt: &Runtime, headers: &HeaderMap, tenant: &str) -> Result<usize, ApiError> {
    let s = &rt.config.scheduling;
    if let Some(v) = headers.get(&PRIORITY_HEADER) {
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

async fn read_request_body(
    body: &mut Incoming,
    headers: &HeaderMap,
    server: &ServerSettings,
    metrics: &Metrics,
    started: tokio::time::Instant,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match read_request(body, declared, server, started).await {
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
