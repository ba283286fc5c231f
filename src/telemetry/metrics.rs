//! The sidecar's Prometheus metrics: label sets, histogram buckets (the GenAI conventions'
//! advised boundaries), the registry built once per instance, and the small helpers the
//! request path counts through.

use std::sync::{Arc, OnceLock};
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// `gen_ai.client.operation.duration` advised buckets (seconds): 10 ms to 82 s, doubling.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// `gen_ai.server.time_to_first_token` advised buckets (seconds).
const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// `gen_ai.client.token.usage` advised buckets (tokens): powers of four.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub(crate) endpoint: &'static str,
    pub(crate) route: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub(crate) gen_ai_operation_name: &'static str,
    pub(crate) gen_ai_request_model: Arc<str>,
    pub(crate) gen_ai_provider_name: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub(crate) gen_ai_token_type: &'static str,
    pub(crate) gen_ai_request_model: Arc<str>,
    pub(crate) gen_ai_provider_name: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub(crate) tenant: Arc<str>,
    pub(crate) model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub(crate) provider: Arc<str>,
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub(crate) provider: Arc<str>,
    pub(crate) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CalloutLabels {
    pub(crate) point: &'static str,
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PointLabels {
    pub(crate) point: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JudgmentLabels {
    pub(crate) route: Arc<str>,
    /// `served` (a sampled served hit, re-asked) or `shadow` (a hit not served, compared with
    /// the upstream answer the request got anyway).
    pub(crate) mode: &'static str,
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub(crate) route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub(crate) route: Arc<str>,
    pub(crate) strategy: &'static str,
    pub(crate) model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub(crate) provider: Arc<str>,
    pub(crate) model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub(crate) provider: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub(crate) provider: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub(crate) provider: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub(crate) provider: Arc<str>,
    pub(crate) priority: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueRejectLabels {
    pub(crate) provider: Arc<str>,
    pub(crate) priority: Arc<str>,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabels {
    pub(crate) priority: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub(crate) route: Arc<str>,
    pub(crate) model: Arc<str>,
}

/// Queue waits (seconds): 1 ms to 33 s, doubling.
const QUEUE_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384, 32.768,
];

/// The series a finished request of one route's target updates, taken from their families
/// on first use and kept: finishing a request looked up ~8 series by label set (a lock and a
/// SipHash of the labels each), 2.7 % of the CPU per proxied request under load (#19). A
/// family never drops a child, so a kept series is the one exported. Each is made at the
/// moment the family lookup would have made it, so `/metrics` shows the same series as before.
#[derive(Debug)]
pub(crate) struct ModelSeries {
    route: Arc<str>,
    model: Arc<str>,
    provider: Arc<str>,
    /// Per endpoint label, in [`SERIES_ENDPOINTS`] order.
    ops: [OpSeries; 4],
    /// `input`, `output`, `cached_input`.
    tokens: [OnceLock<Counter>; 3],
    /// `input`, `output` token-usage histograms.
    usage: [OnceLock<Histogram>; 2],
}

const SERIES_ENDPOINTS: [&str; 4] = ["chat", "completions", "embeddings", "responses"];
const TOKEN_TYPES: [&str; 3] = ["input", "output", "cached_input"];

#[derive(Debug, Default)]
struct OpSeries {
    /// `llm_sidecar_requests` with status 200.
    ok: OnceLock<Counter>,
    duration: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
}

impl ModelSeries {
    pub(crate) fn new(route: Arc<str>, model: Arc<str>, provider: Arc<str>) -> Self {
        ModelSeries {
            route,
            model,
            provider,
            ops: Default::default(),
            tokens: Default::default(),
            usage: Default::default(),
        }
    }

    fn op(&self, endpoint: &str) -> Option<&OpSeries> {
        let i = SERIES_ENDPOINTS.iter().position(|e| *e == endpoint)?;
        self.ops.get(i)
    }

    /// Whether these are the series of `model` (the record's model may be another target's).
    fn is_for(&self, model: &Arc<str>, provider: &Arc<str>) -> bool {
        (Arc::ptr_eq(&self.model, model) || self.model == *model)
            && (Arc::ptr_eq(&self.provider, provider) || self.provider == *provider)
    }
}

/// `f` on the series `slot` keeps when there is one (made from `family` the first time), else
/// on the family's series for `labels`.
fn kept<S, M, C>(slot: Option<&OnceLock<M>>, family: &Family<S, M, C>, labels: impl FnOnce() -> S, f: impl FnOnce(&M))
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    match slot {
        Some(slot) => f(slot.get_or_init(|| family.get_or_create_owned(&labels()))),
        None => f(&family.get_or_create(&labels())),
    }
}

/// A finished request's figures, for [`Metrics::finished`].
pub(crate) struct Finished<'a> {
    pub(crate) endpoint: &'static str,
    pub(crate) operation: &'static str,
    pub(crate) route: &'a Arc<str>,
    pub(crate) model: &'a Arc<str>,
    pub(crate) provider: &'a Arc<str>,
    pub(crate) status: u16,
    /// `None` when the cache answered (or no model was tried): no operation metrics.
    pub(crate) operation_seconds: Option<f64>,
    pub(crate) ttft_seconds: Option<f64>,
    /// (input, output, cached input) tokens, when the answer reported its usage.
    pub(crate) tokens: Option<[u64; 3]>,
}

/// Embedding and search latency (seconds): 0.1 ms to 0.4 s, doubling.
const EMBED_BUCKETS: [f64; 13] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048, 0.4096,
];
/// Batch sizes of the embedder.
const BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

pub struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) duration: HistogramFamily<OperationLabels>,
    pub(crate) ttft: HistogramFamily<OperationLabels>,
    pub(crate) token_usage: HistogramFamily<TokenLabels>,
    pub(crate) tokens: Family<TokenLabels, Counter>,
    pub(crate) cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    pub(crate) upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// 401/403 from a provider: the sidecar's key for it is wrong or revoked.
    pub(crate) upstream_auth_failures: Family<AuthLabels, Counter>,
    /// Request bodies cut because they arrived too slowly or not at all.
    pub(crate) slow_bodies: Counter,
    pub(crate) config_reloads: Family<OutcomeLabels, Counter>,
    pub(crate) trace_spans: Family<ResultLabels, Counter>,
    pub(crate) config_generation: Gauge,
    pub(crate) inflight: Gauge,
    pub(crate) cache_lookups: Family<ResultLabels, Counter>,
    pub(crate) cache_skips: Family<ReasonLabels, Counter>,
    pub(crate) cache_guard_rejections: Family<ReasonLabels, Counter>,
    pub(crate) cache_evictions: Family<ReasonLabels, Counter>,
    pub(crate) cache_inserts: Counter,
    pub(crate) cache_verifications: Family<ResultLabels, Counter>,
    pub(crate) cache_judgments: Family<JudgmentLabels, Counter>,
    pub(crate) cache_alignment: Family<ResultLabels, Counter>,
    pub(crate) cache_verifier: Family<ResultLabels, Counter>,
    pub(crate) cache_route_threshold: Family<RouteLabels, Gauge<f64, AtomicU64>>,
    pub(crate) cache_entries: Gauge,
    pub(crate) cache_bytes: Gauge,
    pub(crate) cache_similarity: Histogram,
    pub(crate) embed_duration: Histogram,
    pub(crate) embed_batch: Histogram,
    pub(crate) search_duration: Histogram,
    pub(crate) embedder_available: Gauge,
    /// Vectors dropped because a reload changed the embedder's vector space.
    pub(crate) cache_vectors_dropped: Counter,
    /// Lookups in a host's cache store (`Options::cache_store`) by result.
    pub(crate) cache_store_lookups: Family<ResultLabels, Counter>,
    /// Callouts made (or skipped) by point and result.
    pub(crate) callouts: Family<CalloutLabels, Counter>,
    pub(crate) callout_duration: HistogramFamily<PointLabels>,
    pub(crate) route_decisions: Family<DecisionLabels, Counter>,
    pub(crate) circuit_state: Family<ModelLabels, Gauge>,
    pub(crate) provider_usable: Family<ProviderLabels, Gauge>,
    pub(crate) circuit_transitions: Family<TransitionLabels, Counter>,
    pub(crate) retries: Family<RetryLabels, Counter>,
    pub(crate) retry_budget_exhausted: Counter,
    pub(crate) queue_depth: Family<QueueLabels, Gauge>,
    pub(crate) queue_wait: HistogramFamily<PriorityLabels>,
    pub(crate) queue_rejections: Family<QueueRejectLabels, Counter>,
    pub(crate) canary_reverted: Family<CanaryLabels, Gauge>,
    pub(crate) health_checks: Family<UpstreamErrorLabels, Counter>,
    pub(crate) admissions: Family<ResultLabels, Counter>,
    pub(crate) limit_rejections: Family<LimitLabels, Counter>,
    pub(crate) budget_spent: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    pub(crate) redis_up: Gauge,
    pub(crate) redis_errors: Family<ReasonLabels, Counter>,
    pub(crate) l2_entries: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub(crate) tenant: Arc<str>,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub(crate) tenant: Arc<str>,
    pub(crate) period: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A finished request's count, durations and tokens, through `series` when it holds
    /// them (see [`ModelSeries`]).
    pub(crate) fn finished(&self, series: Option<&ModelSeries>, f: &Finished<'_>) {
        let series = series.filter(|s| s.is_for(f.model, f.provider));
        let op = series.and_then(|s| s.op(f.endpoint));
        let route_kept = series.is_some_and(|s| Arc::ptr_eq(&s.route, f.route) || s.route == *f.route);
        let ok = op.filter(|_| f.status == 200 && route_kept).map(|o| &o.ok);
        kept(
            ok,
            &self.requests,
            || RequestLabels {
                endpoint: f.endpoint,
                route: f.route.clone(),
                model: f.model.clone(),
                status: f.status,
            },
            |c| {
                c.inc();
            },
        );
        let Some(secs) = f.operation_seconds else { return };
        let labels = || OperationLabels {
            gen_ai_operation_name: f.operation,
            gen_ai_request_model: f.model.clone(),
            gen_ai_provider_name: f.provider.clone(),
        };
        kept(op.map(|o| &o.duration), &self.duration, labels, |h| h.observe(secs));
        if let Some(t) = f.ttft_seconds {
            kept(op.map(|o| &o.ttft), &self.ttft, labels, |h| h.observe(t));
        }
        let Some(tokens) = f.tokens else { return };
        for (i, (kind, n)) in TOKEN_TYPES.iter().zip(tokens).enumerate() {
            let labels = || TokenLabels {
                gen_ai_token_type: kind,
                gen_ai_request_model: f.model.clone(),
                gen_ai_provider_name: f.provider.clone(),
            };
            // The cached-input count has no histogram: most answers report none.
            if i < 2 {
                kept(series.and_then(|s| s.usage.get(i)), &self.token_usage, labels, |h| h.observe(n as f64));
            }
            if n > 0 {
                kept(series.and_then(|s| s.tokens.get(i)), &self.tokens, labels, |c| {
                    c.inc_by(n);
                });
            }
        }
    }

    /// Counts `usd` spent by `tenant` on `model` (nothing for a free answer).
    pub(crate) fn spend(&self, tenant: Arc<str>, model: Arc<str>, usd: f64) {
        if usd > 0.0 {
            self.cost.get_or_create(&CostLabels { tenant, model }).inc_by(usd);
        }
    }

    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(super::process::ProcessCollector));
        let requests = Family::default();
        registry.register(
            "llm_sidecar_requests",
            "Requests answered, by endpoint, route, model and HTTP status",
            requests.clone(),
        );
        let duration: HistogramFamily<OperationLabels> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register_with_unit(
            "gen_ai_client_operation_duration",
            "Duration of GenAI operations through the sidecar, stream included",
            Unit::Seconds,
            duration.clone(),
        );
        let ttft: HistogramFamily<OperationLabels> = Family::new_with_constructor(|| Histogram::new(TTFT_BUCKETS));
        registry.register_with_unit(
            "gen_ai_server_time_to_first_token",
            "Time from the request to the first response byte from the provider",
            Unit::Seconds,
            ttft.clone(),
        );
        let token_usage: HistogramFamily<TokenLabels> = Family::new_with_constructor(|| Histogram::new(TOKEN_BUCKETS));
        registry.register(
            "gen_ai_client_token_usage",
            "Tokens per request by type (input, output)",
            token_usage.clone(),
        );
        let tokens = Family::default();
        registry.register(
            "llm_sidecar_tokens",
            "Tokens used, by type (input, output, cached_input)",
            tokens.clone(),
        );
        let cost = Family::default();
        registry.register(
            "llm_sidecar_cost_usd",
            "Cost in USD from the catalogue prices and the reported usage",
            cost.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "llm_sidecar_upstream_errors",
            "Failed upstream attempts by provider and kind (connect, timeout_first_byte, timeout_idle, timeout_total, reset, status_4xx, status_5xx, auth, malformed, stream_error, incomplete)",
            upstream_errors.clone(),
        );
        let upstream_auth_failures = Family::default();
        registry.register(
            "llm_sidecar_upstream_auth_failures",
            "Provider answers of 401/403 to the sidecar's own credential: the key in the config is wrong, expired or revoked",
            upstream_auth_failures.clone(),
        );
        let slow_bodies = Counter::default();
        registry.register(
            "llm_sidecar_request_body_timeouts",
            "Request bodies refused with 408 because they arrived slower than server.body_min_rate or past server.body_timeout",
            slow_bodies.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "llm_sidecar_config_reloads",
            "Config reloads by outcome (applied, rejected, unchanged)",
            config_reloads.clone(),
        );
        let trace_spans = Family::default();
        registry.register(
            "llm_sidecar_trace_spans",
            "OpenTelemetry spans by fate: exported, rejected (by the collector), export_failed, dropped_queue_full, dropped_shutdown",
            trace_spans.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "llm_sidecar_config_generation",
            "Generation of the config snapshot in service (1 at start)",
            config_generation.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "llm_sidecar_inflight_requests",
            "Requests being served right now",
            inflight.clone(),
        );
        let cache_lookups = Family::default();
        registry.register(
            "llm_sidecar_cache_lookups",
            "Cache outcomes per request (hit_exact, hit_semantic, miss, bypass)",
            cache_lookups.clone(),
        );
        let cache_skips = Family::default();
        registry.register(
            "llm_sidecar_cache_skips",
            "Why the cache (or its semantic part) was not used: disabled, endpoint, no_cache, no_store, privacy, temperature, embed_timeout, embed_queue_full, embed_failed (the embedder answered an error), embedder_unavailable, too_long (a last turn longer than the embedder's window: exact-only), not_semantic",
            cache_skips.clone(),
        );
        let cache_guard_rejections = Family::default();
        registry.register(
            "llm_sidecar_cache_guard_rejections",
            "Semantic candidates above the threshold rejected by the verification guard, by reason",
            cache_guard_rejections.clone(),
        );
        let cache_evictions = Family::default();
        registry.register(
            "llm_sidecar_cache_evictions",
            "Entries removed, by reason (lru, expired, purge)",
            cache_evictions.clone(),
        );
        let cache_verifications = Family::default();
        registry.register(
            "llm_sidecar_cache_verifications",
            "Semantic hits re-asked upstream in the background (cache.semantic.verify_sample), by result: agree, disagree, failed",
            cache_verifications.clone(),
        );
        let cache_judgments = Family::default();
        registry.register(
            "llm_sidecar_cache_judgments",
            "Semantic hits judged against a fresh upstream answer, per route: mode served (sampled, re-asked) or shadow (not served; compared with the answer the request got), result agree or disagree",
            cache_judgments.clone(),
        );
        let cache_alignment = Family::default();
        registry.register(
            "llm_sidecar_cache_alignment",
            "Candidates in the token-alignment band below the threshold (cache.semantic.alignment_band), by result: served, rejected (a content word without a close partner), unavailable (not embedded in time)",
            cache_alignment.clone(),
        );
        let cache_verifier = Family::default();
        registry.register(
            "llm_sidecar_cache_verifier",
            "Semantic hits put to the pair verifier (cache.semantic.verifier), by result: agree (served), disagree (a miss), unavailable (not scored in time: a miss)",
            cache_verifier.clone(),
        );
        let cache_route_threshold = Family::<RouteLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "llm_sidecar_cache_route_threshold",
            "The semantic threshold in force per route (moved by max_wrong_rate when set)",
            cache_route_threshold.clone(),
        );
        let cache_inserts = Counter::default();
        registry.register(
            "llm_sidecar_cache_inserts",
            "Answers stored in the cache",
            cache_inserts.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "llm_sidecar_cache_entries",
            "Entries in the cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register_with_unit(
            "llm_sidecar_cache",
            "Bytes counted against cache.max_bytes (answers and queries as held, plus per-entry overhead)",
            Unit::Bytes,
            cache_bytes.clone(),
        );
        let cache_similarity = Histogram::new([0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 1.0]);
        registry.register(
            "llm_sidecar_cache_semantic_similarity",
            "Cosine similarity of served semantic hits",
            cache_similarity.clone(),
        );
        let embed_duration = Histogram::new(EMBED_BUCKETS);
        registry.register_with_unit(
            "llm_sidecar_embed_duration",
            "Time to embed one batch",
            Unit::Seconds,
            embed_duration.clone(),
        );
        let embed_batch = Histogram::new(BATCH_BUCKETS);
        registry.register(
            "llm_sidecar_embed_batch_size",
            "Texts per embedder batch",
            embed_batch.clone(),
        );
        let search_duration = Histogram::new(EMBED_BUCKETS);
        registry.register_with_unit(
            "llm_sidecar_cache_search_duration",
            "Time of one semantic index search",
            Unit::Seconds,
            search_duration.clone(),
        );
        let embedder_available = Gauge::default();
        registry.register(
            "llm_sidecar_embedder_available",
            "1 when the embedder (the local model or a remote embedder) is started (semantic cache possible)",
            embedder_available.clone(),
        );
        let cache_store_lookups = Family::default();
        registry.register(
            "llm_sidecar_cache_store_lookups",
            "Lookups in the cache store a program embedding the sidecar registered, after an exact miss: hit, miss, timeout, malformed (refused: not a complete answer)",
            cache_store_lookups.clone(),
        );
        let callouts = Family::default();
        registry.register(
            "llm_sidecar_callouts",
            "Callouts by point (before_route, after_answer) and result: continue, rewrite, refuse, error, timeout, circuit_open, dropped (after_answer, too many in flight)",
            callouts.clone(),
        );
        let callout_duration: HistogramFamily<PointLabels> =
            Family::new_with_constructor(|| Histogram::new(EMBED_BUCKETS));
        registry.register_with_unit(
            "llm_sidecar_callout_duration",
            "Time of one callout, connect to the last byte of its answer",
            Unit::Seconds,
            callout_duration.clone(),
        );
        let cache_vectors_dropped = Counter::default();
        registry.register(
            "llm_sidecar_cache_vectors_dropped",
            "Semantic index vectors dropped because a reload changed the embedder (another model, width or service); their entries stay for exact hits",
            cache_vectors_dropped.clone(),
        );
        let route_decisions = Family::default();
        registry.register(
            "llm_sidecar_route_decisions",
            "Routing decisions by route, strategy and first-choice model",
            route_decisions.clone(),
        );
        let circuit_state = Family::default();
        registry.register(
            "llm_sidecar_circuit_state",
            "Circuit breaker state per provider and model: 0 closed, 1 open, 2 half-open",
            circuit_state.clone(),
        );
        let provider_usable = Family::default();
        registry.register(
            "llm_sidecar_provider_usable",
            "1 when the sidecar can use the provider, 0 when it cannot (its API key is missing: its models answer 503 provider_unavailable)",
            provider_usable.clone(),
        );
        let circuit_transitions = Family::default();
        registry.register(
            "llm_sidecar_circuit_transitions",
            "Circuit breaker state changes, by the state entered",
            circuit_transitions.clone(),
        );
        let retries = Family::default();
        registry.register(
            "llm_sidecar_retries",
            "Retries of the same candidate, by provider, model and reason",
            retries.clone(),
        );
        let retry_budget_exhausted = Counter::default();
        registry.register(
            "llm_sidecar_retry_budget_exhausted",
            "Retries not made because the retry budget was spent (the request failed over instead)",
            retry_budget_exhausted.clone(),
        );
        let queue_depth = Family::default();
        registry.register(
            "llm_sidecar_queue_depth",
            "Requests waiting for a provider slot, by provider and priority class",
            queue_depth.clone(),
        );
        let queue_wait: HistogramFamily<PriorityLabels> =
            Family::new_with_constructor(|| Histogram::new(QUEUE_BUCKETS));
        registry.register_with_unit(
            "llm_sidecar_queue_wait",
            "Time spent waiting for a provider slot, by priority class",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let queue_rejections = Family::default();
        registry.register(
            "llm_sidecar_queue_rejections",
            "Requests refused by a provider queue, by reason (full, timeout)",
            queue_rejections.clone(),
        );
        let canary_reverted = Family::default();
        registry.register(
            "llm_sidecar_canary_reverted",
            "1 when a route's canary was automatically reverted",
            canary_reverted.clone(),
        );
        let health_checks = Family::default();
        registry.register(
            "llm_sidecar_health_checks",
            "Active provider health checks by provider and result (ok, failed)",
            health_checks.clone(),
        );
        let admissions = Family::default();
        registry.register(
            "llm_sidecar_admissions",
            "Admission reviews answered by the injection webhook, by result",
            admissions.clone(),
        );
        let limit_rejections = Family::default();
        registry.register(
            "llm_sidecar_limit_rejections",
            "Requests refused by tenant limits, by reason (requests_per_minute, tokens_per_minute, model_requests_per_minute, model_tokens_per_minute, budget_daily, budget_monthly)",
            limit_rejections.clone(),
        );
        let budget_spent = Family::<BudgetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "llm_sidecar_budget_spent_usd",
            "USD spent by a tenant in the current UTC day or month (fleet-wide in fleet mode)",
            budget_spent.clone(),
        );
        // Registered by `fleet_mode` only: a sidecar without Redis must not export a 0 that
        // reads as "Redis is down" (and fire the alert on it).
        let redis_up = Gauge::default();
        let redis_errors = Family::default();
        registry.register(
            "llm_sidecar_redis_errors",
            "Failed Redis operations by reason (sync, publish, consume, warm, connect)",
            redis_errors.clone(),
        );
        let l2_entries = Family::default();
        registry.register(
            "llm_sidecar_cache_l2_entries",
            "Cache entries exchanged through Redis, by result (published, received, warmed, dropped, malformed: refused because the answer is not a well-formed one)",
            l2_entries.clone(),
        );
        Self {
            limit_rejections,
            budget_spent,
            redis_up,
            redis_errors,
            l2_entries,
            admissions,
            route_decisions,
            circuit_state,
            provider_usable,
            circuit_transitions,
            retries,
            retry_budget_exhausted,
            queue_depth,
            queue_wait,
            queue_rejections,
            canary_reverted,
            health_checks,
            cache_verifications,
            cache_judgments,
            cache_alignment,
            cache_verifier,
            cache_route_threshold,
            cache_lookups,
            cache_skips,
            cache_guard_rejections,
            cache_evictions,
            cache_inserts,
            cache_entries,
            cache_bytes,
            cache_similarity,
            embed_duration,
            embed_batch,
            search_duration,
            embedder_available,
            cache_vectors_dropped,
            callouts,
            callout_duration,
            cache_store_lookups,
            registry,
            requests,
            duration,
            ttft,
            token_usage,
            tokens,
            cost,
            upstream_errors,
            upstream_auth_failures,
            slow_bodies,
            config_reloads,
            trace_spans,
            config_generation,
            inflight,
        }
    }

    /// The Prometheus text exposition (OpenMetrics).
    /// Exports the fleet-mode metrics (`llm_sidecar_redis_up`); called once, at start, when
    /// the config has a `redis` section (which, like the listeners, applies at restart).
    pub(crate) fn fleet_mode(&mut self) {
        self.registry.register(
            "llm_sidecar_redis_up",
            "1 while Redis answers (fleet mode); 0 while the sidecar runs on local state",
            self.redis_up.clone(),
        );
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn upstream_error(&self, provider: &Arc<str>, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                provider: provider.clone(),
                kind,
            })
            .inc();
    }

    pub(crate) fn upstream_auth_failure(&self, provider: &Arc<str>, status: u16) {
        self.upstream_auth_failures
            .get_or_create(&AuthLabels {
                provider: provider.clone(),
                status,
            })
            .inc();
    }

    pub(crate) fn cache_lookup(&self, result: &'static str) {
        self.cache_lookups.get_or_create(&ResultLabels { result }).inc();
    }

    pub(crate) fn cache_skip(&self, reason: &'static str) {
        self.cache_skips.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn queue_depth(&self, provider: &Arc<str>, priority: &Arc<str>) -> Gauge {
        self.queue_depth
            .get_or_create(&QueueLabels {
                provider: provider.clone(),
                priority: priority.clone(),
            })
            .clone()
    }

    /// Sets the circuit gauge (0 closed, 1 open, 2 half-open).
    pub(crate) fn circuit(&self, provider: &Arc<str>, model: &Arc<str>, gauge: i64) {
        self.circuit_state
            .get_or_create(&ModelLabels {
                provider: provider.clone(),
                model: model.clone(),
            })
            .set(gauge);
    }

    pub(crate) fn circuit_transition(&self, provider: &Arc<str>, model: &Arc<str>, gauge: i64, state: &'static str) {
        self.circuit(provider, model, gauge);
        self.circuit_transitions
            .get_or_create(&TransitionLabels {
                provider: provider.clone(),
                model: model.clone(),
                state,
            })
            .inc();
    }

    pub(crate) fn retry(&self, provider: &Arc<str>, model: &Arc<str>, reason: &'static str) {
        self.retries
            .get_or_create(&RetryLabels {
                provider: provider.clone(),
                model: model.clone(),
                reason,
            })
            .inc();
    }

    pub(crate) fn trace_spans(&self, result: &'static str, n: u64) {
        self.trace_spans.get_or_create(&ResultLabels { result }).inc_by(n);
    }

    pub(crate) fn reload(&self, outcome: &'static str) {
        self.config_reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request and GenAI series of `m`, in their exported form, sorted (a family's
    /// children come out in its hash map's order).
    fn request_series(m: &Metrics) -> Vec<String> {
        let mut lines: Vec<String> = m
            .encode()
            .lines()
            .filter(|l| l.starts_with("llm_sidecar_requests") || l.starts_with("gen_ai_"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn kept_series_export_exactly_what_label_lookups_do() {
        let (route, other_route): (Arc<str>, Arc<str>) = ("r".into(), "other".into());
        let (model, provider): (Arc<str>, Arc<str>) = ("m".into(), "p".into());
        let (other_model, other_provider): (Arc<str>, Arc<str>) = ("m2".into(), "p2".into());
        let series = ModelSeries::new(route.clone(), model.clone(), provider.clone());
        let requests = [
            // Answered, with a stream's TTFT and no cached tokens.
            (&route, &model, &provider, "chat", 200, Some(0.2), Some(0.05), Some([10, 3, 0])),
            // Another endpoint and status, no TTFT, cached tokens this time.
            (&route, &model, &provider, "responses", 502, Some(0.4), None, Some([7, 0, 4])),
            // From the cache: counted, no operation metrics.
            (&route, &model, &provider, "chat", 200, None, None, None),
            // Another route's or model's request handed these series: not used for it.
            (&other_route, &model, &provider, "chat", 200, Some(0.1), None, Some([1, 1, 0])),
            (&route, &other_model, &other_provider, "embeddings", 200, Some(0.1), None, Some([5, 0, 0])),
            // An endpoint without a slot.
            (&route, &model, &provider, "other", 200, Some(0.3), None, None),
        ];
        let (kept, looked_up) = (Metrics::new(), Metrics::new());
        for _ in 0..2 {
            for (route, model, provider, endpoint, status, secs, ttft, tokens) in requests {
                let f = Finished {
                    endpoint,
                    operation: "chat",
                    route,
                    model,
                    provider,
                    status,
                    operation_seconds: secs,
                    ttft_seconds: ttft,
                    tokens,
                };
                kept.finished(Some(&series), &f);
                looked_up.finished(None, &f);
            }
        }
        let (a, b) = (request_series(&kept), request_series(&looked_up));
        assert!(a.iter().any(|l| l.contains("route=\"other\"")), "{a:#?}");
        assert!(
            !a.iter()
                .any(|l| l.contains("cached_input") && l.starts_with("gen_ai_client_token_usage")),
            "no histogram of cached tokens: {a:#?}"
        );
        assert!(a == b, "kept:\n{}\nlooked up:\n{}", a.join("\n"), b.join("\n"));
    }
}
