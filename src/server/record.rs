//! The account of one request: who, which route and model, timings, tokens, cost, outcome.
//! It is finished exactly once — by the handler for answers made locally, by the relay when
//! the upstream body ends, or by `Drop` when the app goes away first — and then writes the
//! request's single log line and its metrics.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::headers;
use crate::cache::CacheStatus;
use crate::config::{Capabilities, Config, ModelConfig};
use crate::limits::ledger::{Admission, Ledger, RateHeaders, now_ms};
use crate::openai::Usage;
use crate::plugin::{RequestEvent, Sinks};
use crate::router::Reason;
use crate::telemetry::advice::{Advisor, Observation};
use crate::telemetry::live::{Live, Recent, RowId};
use crate::telemetry::trace::{Kind, RequestTrace};
use crate::telemetry::jsonlog;
use crate::telemetry::{BudgetLabels, Finished, Metrics, ModelSeries};
use crate::upstream::BodyFailure;

/// Label for requests that never reached a route (bad JSON, unknown model).
const NONE: &str = "none";
static NONE_LABEL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(NONE));

pub struct RequestRecord {
    metrics: Arc<Metrics>,
    request_id: HeaderValue,
    endpoint: &'static str,
    tenant: Option<Arc<str>>,
    route: Option<Arc<str>>,
    model: Option<Arc<ModelConfig>>,
    /// The metric series of the target that answered (see [`ModelSeries`]).
    series: Option<Arc<ModelSeries>>,
    stream: bool,
    attempts: u32,
    start: Instant,
    ttft: Option<Duration>,
    status: u16,
    usage: Option<Usage>,
    /// `x-llm-sidecar-cache` as answered: hit-exact, hit-semantic, miss, bypass.
    cache: CacheStatus,
    /// Why the cache lookup (or its semantic half) did not run: a `llm_sidecar_cache_skips`
    /// reason, in the log line.
    cache_skip: Option<crate::cache::Skip>,
    /// Why the route put the candidates in their order (the routing decision's reason).
    reason: Option<Reason>,
    /// The priority class the request queued in.
    priority: Option<Arc<str>>,
    /// Retries of a candidate (attempts beyond the first per candidate).
    retries: u32,
    /// What to reconcile with the tenant's limits and budget when the request ends.
    account: Option<Account>,
    /// `x-ratelimit-*` values for the response.
    ratelimit: Option<RateHeaders>,
    /// For cost advice: what the request needed, its complexity (when sampled), the best
    /// semantic near-miss, and whether a soft-budget tenant went unrouted.
    advice: Option<AdviceInput>,
    /// The live dashboard's ring of recent requests.
    live: Option<Arc<Live<crate::router::Reason>>>,
    /// The prompt's first words, only when `server.dashboard_prompts` is on.
    prompt: Option<String>,
    /// The request's spans, when tracing is on and the request sampled.
    trace: Option<Box<RequestTrace>>,
    /// The after_answer callout, told when the request ends.
    after: Option<Arc<crate::callout::Callout>>,
    /// The embedding program's request sinks, told when the request ends.
    sinks: Option<Sinks>,
    finished: bool,
}

pub struct AdviceInput {
    pub(crate) advisor: Arc<Advisor>,
    pub(crate) needs: Capabilities,
    pub(crate) light: Option<bool>,
    pub(crate) best_miss: Option<f32>,
    pub(crate) soft_unrouted: bool,
}

/// An admitted request's reservation, settled once at the end.
pub struct Account {
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) config: Arc<Config>,
    pub(crate) admission: Admission,
}

impl RequestRecord {
    pub(crate) fn new(metrics: Arc<Metrics>, request_id: HeaderValue, endpoint: &'static str) -> Self {
        metrics.inflight.inc();
        Self::blank(metrics, request_id, endpoint, false)
    }

    /// The record of a request the sidecar makes on its own (a cache verification): the
    /// attempt path keeps its account of attempts, model and timings, but it is not one of
    /// the app's requests, so it is neither counted in flight nor logged or measured as one.
    pub(crate) fn background(metrics: Arc<Metrics>, request_id: HeaderValue, endpoint: &'static str) -> Self {
        Self::blank(metrics, request_id, endpoint, true)
    }

    fn blank(metrics: Arc<Metrics>, request_id: HeaderValue, endpoint: &'static str, finished: bool) -> Self {
        RequestRecord {
            metrics,
            request_id,
            endpoint,
            tenant: None,
            route: None,
            model: None,
            series: None,
            stream: false,
            attempts: 0,
            start: Instant::now(),
            ttft: None,
            status: 0,
            usage: None,
            cache: CacheStatus::Bypass,
            cache_skip: None,
            reason: None,
            priority: None,
            retries: 0,
            account: None,
            ratelimit: None,
            advice: None,
            live: None,
            prompt: None,
            trace: None,
            after: None,
            sinks: None,
            finished,
        }
    }

    // The stages, in the order a request meets them; each records what it decided.

    /// The live dashboard's ring and the request's trace (when sampled), from the start.
    pub(crate) fn observed(&mut self, live: Arc<Live<Reason>>, trace: Option<Box<RequestTrace>>) {
        self.live = Some(live);
        self.trace = trace;
    }

    pub(crate) fn identified(&mut self, tenant: &Arc<str>) {
        self.tenant = Some(tenant.clone());
    }

    /// The body was read: whether the app asked for a stream.
    /// The after_answer callout is told about this request when it ends.
    pub(crate) fn tell(&mut self, callout: Arc<crate::callout::Callout>) {
        self.after = Some(callout);
    }

    /// So are these sinks.
    pub(crate) fn tell_sinks(&mut self, sinks: Sinks) {
        self.sinks = Some(sinks);
    }

    pub(crate) fn streams(&mut self, stream: bool) {
        self.stream = stream;
    }

    /// The prompt's first words, for the dashboard (only when `server.dashboard_prompts` is on).
    pub(crate) fn show_prompt(&mut self, text: &str) {
        self.prompt = Some(text.chars().take(120).collect());
    }

    pub(crate) fn queued_as(&mut self, priority: Option<Arc<str>>) {
        self.priority = priority;
    }

    /// Admitted by the tenant's limits: settled against real usage when the request ends.
    pub(crate) fn admitted(&mut self, ledger: Arc<Ledger>, config: Arc<Config>, admission: Admission) {
        self.ratelimit = admission.headers;
        self.account = Some(Account {
            ledger,
            config,
            admission,
        });
    }

    /// Refused by a limit: its `x-ratelimit-*` go back to the app.
    pub(crate) fn limited(&mut self, headers: Option<RateHeaders>) {
        if headers.is_some() {
            self.ratelimit = headers;
        }
    }

    pub(crate) fn routed(&mut self, route: &Arc<str>, reason: Option<Reason>) {
        self.route = Some(route.clone());
        self.reason = reason;
    }

    /// What the cache will do: `Miss` until a lookup says otherwise, `Bypass` when it does not
    /// apply; and why its lookup (or semantic half) will not run.
    pub(crate) fn cache_planned(&mut self, status: CacheStatus, skip: Option<crate::cache::Skip>) {
        self.cache = status;
        self.cache_skip = skip;
    }

    pub(crate) fn cache_skipped(&mut self, skip: Option<crate::cache::Skip>) {
        self.cache_skip = skip;
    }

    pub(crate) fn advise_with(&mut self, input: AdviceInput) {
        self.advice = Some(input);
    }

    pub(crate) fn advice_mut(&mut self) -> Option<&mut AdviceInput> {
        self.advice.as_mut()
    }

    /// One more attempt, on `model`.
    /// `series`: the target's kept metric series (`None` off the routed path).
    pub(crate) fn attempting(&mut self, model: &Arc<ModelConfig>, series: Option<&Arc<ModelSeries>>) {
        self.attempts += 1;
        self.model = Some(model.clone());
        self.series = series.cloned();
    }

    pub(crate) fn retrying(&mut self) {
        self.retries += 1;
    }

    /// The status the app gets.
    pub(crate) fn answered(&mut self, status: u16) {
        self.status = status;
    }

    pub(crate) fn used(&mut self, usage: Option<Usage>) {
        self.usage = usage;
    }

    /// Served from the cache: `model` answered it once.
    pub(crate) fn served_from_cache(&mut self, status: CacheStatus, model: Option<Arc<ModelConfig>>) {
        self.cache = status;
        self.model = model;
        self.status = 200;
    }

    pub(crate) fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    pub(crate) fn tenant(&self) -> Option<&Arc<str>> {
        self.tenant.as_ref()
    }

    pub(crate) fn route(&self) -> Option<&Arc<str>> {
        self.route.as_ref()
    }

    pub(crate) fn model(&self) -> Option<&Arc<ModelConfig>> {
        self.model.as_ref()
    }

    pub(crate) fn stream(&self) -> bool {
        self.stream
    }

    /// When the request's head arrived: the clock the body's timeouts run on too.
    pub(crate) fn started(&self) -> Instant {
        self.start
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn cache(&self) -> CacheStatus {
        self.cache
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub(crate) fn trace(&self) -> Option<&RequestTrace> {
        self.trace.as_deref()
    }

    pub(crate) fn trace_mut(&mut self) -> Option<&mut RequestTrace> {
        self.trace.as_deref_mut()
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The request's own response headers: the tenant's `x-ratelimit-*` (they replace the
    /// provider's: the app's limits here are the tenant's, not the shared provider key's) and,
    /// when traced, `x-llm-sidecar-trace-id` to find its trace.
    pub(crate) fn response_headers(&self, h: &mut http::HeaderMap) {
        if let Some(t) = &self.trace
            && let Ok(v) = HeaderValue::try_from(t.trace_id_hex())
        {
            h.insert(headers::TRACE_ID, v);
        }
        let Some(r) = &self.ratelimit else { return };
        for name in [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ] {
            h.remove(name);
        }
        for (name, value) in r.pairs() {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
    }

    pub(crate) fn first_byte(&mut self) {
        if self.ttft.is_none() {
            self.ttft = Some(self.start.elapsed());
        }
    }

    /// Writes the log line and the metrics.
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.metrics.inflight.dec();
        let elapsed = self.start.elapsed();
        let none: Arc<str> = NONE_LABEL.clone();
        let model_name = self.model.as_ref().map_or_else(|| none.clone(), |m| m.name.clone());
        let provider = self.model.as_ref().map_or_else(|| none.clone(), |m| m.provider.clone());
        let served_by_cache = self.cache.is_hit();
        let cost = self.count(elapsed, &model_name, &provider, served_by_cache);
        if !served_by_cache {
            self.advise(cost);
        }
        // One wall-clock read for the ledger and the dashboard.
        let now = if self.account.is_some() || self.live.is_some() { now_ms() } else { 0 };
        self.settle(cost, served_by_cache, now);
        self.dashboard_row(outcome, elapsed, &model_name, cost, now);
        let failed = self.status >= 500 || outcome.failed();
        if let Some(trace) = self.trace.take() {
            self.finish_trace(trace, outcome, failed, cost);
        }
        self.log_line(outcome, failed, elapsed, &model_name, &provider, cost);
        if self.after.is_some() || self.sinks.is_some() {
            self.tell_listeners(outcome, elapsed, cost);
        }
    }

    /// The after_answer callout and the sinks: what happened, never the prompt or the answer.
    fn tell_listeners(&mut self, outcome: Outcome, elapsed: Duration, cost: f64) {
        let event = RequestEvent {
            point: "after_answer",
            request_id: self.request_id.to_str().unwrap_or(""),
            tenant: self.tenant.as_deref(),
            endpoint: self.endpoint,
            route: self.route.as_deref(),
            model: self.model.as_ref().map(|m| &*m.name),
            provider: self.model.as_ref().map(|m| &*m.provider),
            status: self.status,
            outcome: outcome.label(),
            cache: self.cache.header(),
            stream: self.stream,
            attempts: self.attempts,
            input_tokens: self.usage.map(|u| u.prompt_tokens),
            output_tokens: self.usage.map(|u| u.completion_tokens),
            cost_usd: cost,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
        };
        if let Some(callout) = &self.after {
            callout.after(&event, &self.metrics);
        }
        for sink in self.sinks.iter().flat_map(|s| s.iter()) {
            sink.record(&event);
        }
    }

    /// The request's metrics (count, duration, TTFT, tokens, cost); returns its cost in USD
    /// (0 when the cache answered: nothing was spent).
    fn count(&self, elapsed: Duration, model_name: &Arc<str>, provider: &Arc<str>, served_by_cache: bool) -> f64 {
        let none: Arc<str> = NONE_LABEL.clone();
        let route = self.route.as_ref().unwrap_or(&none);
        let model = self.model.as_ref().filter(|_| !served_by_cache);
        let usage = self.usage.filter(|_| model.is_some());
        self.metrics.finished(
            self.series.as_deref(),
            &Finished {
                endpoint: self.endpoint,
                operation: operation_name(self.endpoint),
                route,
                model: model_name,
                provider,
                status: self.status,
                operation_seconds: model.map(|_| elapsed.as_secs_f64()),
                ttft_seconds: self.ttft.map(|t| t.as_secs_f64()),
                tokens: usage.map(|u| [u.prompt_tokens, u.completion_tokens, u.cached_tokens]),
            },
        );
        let (Some(model), Some(u)) = (model, usage) else {
            return 0.0;
        };
        let cost = u.cost(&model.pricing);
        let tenant = self.tenant.clone().unwrap_or(none);
        self.metrics.spend(tenant, model_name.clone(), cost);
        cost
    }

    /// What the cost advisor learns from a request the provider answered.
    fn advise(&mut self, cost: f64) {
        if let (Some(adv), Some(model), Some(route), Some(u)) =
            (self.advice.take(), &self.model, &self.route, self.usage)
            && (200..300).contains(&self.status)
        {
            adv.advisor.record(Observation {
                route,
                endpoint: self.endpoint,
                model,
                needs: adv.needs,
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                cached_tokens: u.cached_tokens,
                cost,
                light: adv.light,
                best_miss: adv.best_miss,
                soft_unrouted: adv.soft_unrouted.then(|| self.tenant.clone()).flatten(),
            });
        }
    }

    /// Settles the tenant's admission (real usage and cost against the estimate) and updates
    /// the budget gauges.
    fn settle(&mut self, cost: f64, served_by_cache: bool, now: u64) {
        let m = &self.metrics;
        if let Some(a) = self.account.take() {
            let served = self.model.as_ref().filter(|_| !served_by_cache).map(|m| &m.name);
            let usage = self.usage.filter(|_| !served_by_cache);
            if let Some(c) = a
                .ledger
                .settle(&a.config.tenants, &a.admission, served, usage, cost, now)
            {
                tracing::warn!(
                    tenant = &*c.tenant,
                    period = c.period,
                    spent_usd = c.spent_usd,
                    budget_usd = c.budget_usd,
                    "tenant passed its soft budget limit; routes matching `budget: soft` now apply"
                );
            }
            if cost > 0.0 && a.config.tenants.budget_of(&a.admission.tenant).is_some() {
                let (today, month) = a.ledger.spent(&a.admission.tenant, now);
                for (period, v) in [("daily", today), ("monthly", month)] {
                    m.budget_spent
                        .get_or_create(&BudgetLabels {
                            tenant: a.admission.tenant.clone(),
                            period,
                        })
                        .set(v);
                }
            }
        }
    }

    /// The request's row in the live dashboard's ring.
    fn dashboard_row(&mut self, outcome: Outcome, elapsed: Duration, model_name: &Arc<str>, cost: f64, now: u64) {
        let none: Arc<str> = NONE_LABEL.clone();
        if let Some(live) = self.live.take() {
            let u = self.usage.unwrap_or_default();
            live.record(Recent {
                at_ms: now,
                request_id: RowId::new(&self.request_id),
                endpoint: self.endpoint,
                tenant: self.tenant.clone().unwrap_or_else(|| none.clone()),
                route: self.route.clone().unwrap_or_else(|| none.clone()),
                model: model_name.clone(),
                status: self.status,
                outcome: outcome.label(),
                cache: self.cache.header(),
                cache_skip: self.cache_skip.map(crate::cache::Skip::label),
                stream: self.stream,
                duration_ms: elapsed.as_secs_f64() * 1e3,
                ttft_ms: self.ttft.map(|t| t.as_secs_f64() * 1e3),
                cost_usd: cost,
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                reason: self.reason,
                prompt: self.prompt.take(),
            });
        }
    }

    /// The request's JSON log line: a warning when we or the provider failed the app.
    fn log_line(&self, outcome: Outcome, failed: bool, elapsed: Duration, model_name: &str, provider: &str, cost: f64) {
        let usage = self.usage.unwrap_or_default();
        let request_id = self.request_id.to_str().unwrap_or("");
        let (level, enabled) = if failed {
            (tracing::Level::WARN, tracing::enabled!(target: "request", tracing::Level::WARN))
        } else {
            (tracing::Level::INFO, tracing::enabled!(target: "request", tracing::Level::INFO))
        };
        if !enabled {
            return;
        }
        // The same fields, in the same order, as the event below.
        let direct = jsonlog::write_direct(level, "request", |f| {
            f.str("request_id", request_id);
            f.str("endpoint", self.endpoint);
            f.str("tenant", self.tenant.as_deref().unwrap_or(NONE));
            f.str("route", self.route.as_deref().unwrap_or(NONE));
            f.str("model", model_name);
            f.str("provider", provider);
            f.u64("status", u64::from(self.status));
            f.str("outcome", outcome.label());
            f.str("cache", self.cache.header());
            if let Some(skip) = self.cache_skip {
                f.str("cache_skip", skip.label());
            }
            f.bool("stream", self.stream);
            f.u64("attempts", u64::from(self.attempts));
            f.u64("retries", u64::from(self.retries));
            if let Some(reason) = self.reason {
                f.display("reason", &reason);
            }
            if let Some(priority) = self.priority.as_deref() {
                f.str("priority", priority);
            }
            f.f64("duration_ms", elapsed.as_secs_f64() * 1e3);
            if let Some(t) = self.ttft {
                f.f64("ttft_ms", t.as_secs_f64() * 1e3);
            }
            f.u64("prompt_tokens", usage.prompt_tokens);
            f.u64("completion_tokens", usage.completion_tokens);
            f.u64("cached_tokens", usage.cached_tokens);
            f.f64("cost_usd", cost);
        });
        if direct {
            return;
        }
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: "request",
                    $level,
                    request_id,
                    endpoint = self.endpoint,
                    tenant = self.tenant.as_deref().unwrap_or(NONE),
                    route = self.route.as_deref().unwrap_or(NONE),
                    model = &*model_name,
                    provider = &*provider,
                    status = self.status,
                    outcome = outcome.label(),
                    cache = self.cache.header(),
                    cache_skip = self.cache_skip.map(crate::cache::Skip::label),
                    stream = self.stream,
                    attempts = self.attempts,
                    retries = self.retries,
                    reason = self.reason.map(tracing::field::display),
                    priority = self.priority.as_deref(),
                    duration_ms = elapsed.as_secs_f64() * 1e3,
                    ttft_ms = self.ttft.map(|t| t.as_secs_f64() * 1e3),
                    prompt_tokens = usage.prompt_tokens,
                    completion_tokens = usage.completion_tokens,
                    cached_tokens = usage.cached_tokens,
                    cost_usd = cost,
                    "request"
                )
            };
        }
        if failed {
            line!(tracing::Level::WARN);
        } else {
            line!(tracing::Level::INFO);
        }
    }
}

impl RequestRecord {
    /// The root span's attributes (GenAI semantic conventions where they exist, `llm_sidecar.*`
    /// otherwise), the stream span, and the hand-off to the exporter.
    fn finish_trace(&self, mut t: Box<RequestTrace>, outcome: Outcome, failed: bool, cost: f64) {
        let outcome = outcome.label();
        let finish_reasons = std::mem::take(&mut t.finish_reasons);
        if let Some(start) = t.stream_start {
            stream_span(&mut t, start, outcome, failed, &finish_reasons);
        }
        let r = &mut t.root;
        r.set("http.response.status_code", self.status);
        r.set("llm_sidecar.outcome", outcome);
        r.set("llm_sidecar.cache.result", self.cache.header());
        r.set("gen_ai.request.stream", self.stream);
        if let Some(v) = &self.tenant {
            r.set("llm_sidecar.tenant", v);
        }
        if let Some(v) = &self.route {
            r.set("llm_sidecar.route", v);
        }
        if let Some(v) = self.reason {
            r.set("llm_sidecar.route.reason", v.to_string());
        }
        if let Some(v) = &self.priority {
            r.set("llm_sidecar.priority", v);
        }
        if let Some(m) = &self.model {
            r.set("gen_ai.response.model", &m.upstream_model);
            r.set("llm_sidecar.model", &m.name);
            r.set("llm_sidecar.provider", &m.provider);
        }
        r.set("llm_sidecar.attempts", self.attempts);
        if self.retries > 0 {
            r.set("llm_sidecar.retries", self.retries);
        }
        if let Some(u) = self.usage {
            usage_attributes(r, u);
        }
        if cost > 0.0 {
            r.set("llm_sidecar.cost_usd", cost);
        }
        if let Some(ttft) = self.ttft {
            r.set("llm_sidecar.time_to_first_byte_s", ttft.as_secs_f64());
        }
        if !finish_reasons.is_empty() {
            r.set("gen_ai.response.finish_reasons", finish_reasons);
        }
        // A 4xx is the app's request failing, not the server (HTTP semantic conventions).
        if failed {
            r.error(outcome, None);
        }
        t.finish();
    }
}

/// The span of a relayed stream, from its first byte to its end.
fn stream_span(
    t: &mut RequestTrace,
    start: std::time::Instant,
    outcome: &'static str,
    failed: bool,
    finish: &[String],
) {
    let mut s = t.open("stream", Kind::Internal);
    s.start = start;
    s.set("llm_sidecar.outcome", outcome);
    if !finish.is_empty() {
        s.set("gen_ai.response.finish_reasons", finish.to_vec());
    }
    if failed {
        s.error(outcome, None);
    }
    t.close(s);
}

/// Token usage, as the GenAI semantic conventions name it.
fn usage_attributes(r: &mut crate::telemetry::trace::Span, u: Usage) {
    r.set("gen_ai.usage.input_tokens", u.prompt_tokens);
    r.set("gen_ai.usage.output_tokens", u.completion_tokens);
    if u.cached_tokens > 0 {
        r.set("gen_ai.usage.cache_read.input_tokens", u.cached_tokens);
    }
}

/// How a request ended: the log line's and the trace's `outcome`, whether it is logged as a
/// failure, what the dashboard counts as a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A complete answer from the provider.
    Ok,
    /// Served from the cache.
    CacheHit,
    /// The provider's own non-200 answer, relayed.
    UpstreamStatus,
    /// Refused before any provider was asked (bad request, unknown model, auth…).
    Rejected,
    /// Every candidate failed before answering.
    UpstreamError,
    RateLimited,
    OverBudget,
    QueueTimeout,
    /// The app's request body came too slowly.
    BodyTimeout,
    /// The app hung up first.
    ClientGone,
    /// The provider's stream carried an error event.
    UpstreamStreamError,
    /// The provider's body broke after its headers (see `BodyFailure`).
    Reset,
    TimeoutIdle,
    TimeoutTotal,
    TimeoutFirstByte,
    Malformed,
    StreamError,
    Incomplete,
    Shutdown,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::CacheHit => "cache_hit",
            Outcome::UpstreamStatus => "upstream_status",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::RateLimited => "rate_limited",
            Outcome::OverBudget => "over_budget",
            Outcome::QueueTimeout => "queue_timeout",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::ClientGone => "client_gone",
            Outcome::UpstreamStreamError => "upstream_stream_error",
            Outcome::Reset => "reset",
            Outcome::TimeoutIdle => "timeout_idle",
            Outcome::TimeoutTotal => "timeout_total",
            Outcome::TimeoutFirstByte => "timeout_first_byte",
            Outcome::Malformed => "malformed",
            Outcome::StreamError => "stream_error",
            Outcome::Incomplete => "incomplete",
            Outcome::Shutdown => "shutdown",
        }
    }

    /// We or the provider failed the app (a warning); a cache hit, a refusal or an app that
    /// hung up is routine.
    fn failed(self) -> bool {
        matches!(
            self,
            Outcome::UpstreamError
                | Outcome::Reset
                | Outcome::TimeoutIdle
                | Outcome::TimeoutTotal
                | Outcome::Incomplete
                | Outcome::UpstreamStreamError
        )
    }
}

impl From<&BodyFailure> for Outcome {
    fn from(f: &BodyFailure) -> Self {
        match f {
            BodyFailure::Reset(_) => Outcome::Reset,
            BodyFailure::IdleTimeout(_) => Outcome::TimeoutIdle,
            BodyFailure::TotalTimeout => Outcome::TimeoutTotal,
            BodyFailure::FirstEventTimeout(_) => Outcome::TimeoutFirstByte,
            BodyFailure::Malformed(_) => Outcome::Malformed,
            BodyFailure::ErrorEvent(_) => Outcome::StreamError,
            BodyFailure::Unterminated | BodyFailure::Empty => Outcome::Incomplete,
            BodyFailure::Shutdown => Outcome::Shutdown,
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if !self.finished {
            // The handler or relay was dropped before an outcome: the app disconnected.
            if self.status == 0 {
                self.status = 499;
            }
            self.finish(Outcome::ClientGone);
        }
    }
}

pub(super) fn operation_name(endpoint: &'static str) -> &'static str {
    match endpoint {
        // GenAI semantic conventions: a Responses API call is a chat operation.
        "chat" | "responses" => "chat",
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        _ => "other",
    }
}
