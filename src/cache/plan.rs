//! What the cache will do for one request, decided before anything is looked up: whether it
//! applies at all (config, endpoint, `Cache-Control`, privacy, temperature), the keys, and the
//! semantic bar of the route (its threshold, the alignment band, a judging route's floor); and
//! what it did (the status the app and the metrics see, a hit, why it was skipped).

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;

use super::key::{self, Keys};
use super::quality::Policy;
use super::{Cache, QUERY_MAX_BYTES};
use crate::config::{CacheConfig, SemanticMode};
use crate::openai::{Endpoint, RequestHead};
use crate::router::Route;
use crate::telemetry::Metrics;

/// What the cache will do for one request.
pub struct Plan {
    pub(crate) keys: Keys,
    pub(crate) lookup: bool,
    pub(crate) store: bool,
    pub(super) semantic: bool,
    /// The threshold in force for the route (moved by `max_wrong_rate` when set).
    pub(super) threshold: f32,
    /// Would-be hits from here up are judged when not served (shadow mode, or the band below
    /// the threshold of a route with `max_wrong_rate`); equal to `threshold` otherwise.
    pub(super) floor: f32,
    pub(super) mode: SemanticMode,
    pub(super) policy: Policy,
    /// Candidates in `[threshold - band, threshold)` are served when token alignment says
    /// every content word has a partner (0: off; see `align`).
    pub(super) band: f32,
    pub(super) min_alignment: f32,
    /// The pair verifier's score a hit needs (when one is loaded).
    pub(super) min_score: f32,
    pub(super) guard: bool,
    pub(super) tenant: Arc<str>,
    pub(super) route: Arc<str>,
    /// The query's embedding, kept from the lookup so the insert need not embed again.
    pub(super) vector: Option<Vec<f32>>,
    /// Where the lookup's vector lands if it comes after the lookup gave up waiting (under
    /// load): the insert takes it from here instead of embedding the same text again.
    pub(super) late: Option<Arc<std::sync::OnceLock<Vec<f32>>>>,
    /// Which embedder made `vector` (see `Cache::embedder`): a vector of an embedder replaced
    /// since (a reload) is not stored.
    pub(super) epoch: u64,
    /// On a semantic miss: the similarity of the best candidate found (for cost advice).
    pub(crate) best_similarity: Option<f32>,
    /// When the semantic lookup ran, for the request's trace.
    pub(crate) timing: Option<SemanticTiming>,
    /// Why the lookup (or its semantic half) did not run, for the request's log line.
    pub(crate) skipped: Option<Skip>,
    /// Candidates over the threshold that the guard or a learned threshold turned down.
    pub(crate) rejected: Vec<&'static str>,
    /// A hit found but not served: judged against the upstream answer the request gets.
    pub(crate) shadow: Option<ShadowHit>,
}

/// A semantic hit that was found and passed the guard but was not served.
pub struct ShadowHit {
    pub(crate) entry: u64,
    pub(crate) similarity: f32,
    pub(crate) cached: Bytes,
}

/// The semantic lookup's steps: submitted to the embedder, embedded (after any queueing and
/// batching), searched.
#[derive(Debug, Clone, Copy)]
pub struct SemanticTiming {
    pub(crate) submitted: std::time::Instant,
    pub(crate) embedded: std::time::Instant,
    pub(crate) searched: std::time::Instant,
    pub(crate) candidates: usize,
}

/// Why the cache (or its semantic half) did not run for a request: the
/// `llm_sidecar_cache_skips` label, the log line's `cache_skip` and the dashboard's tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Off in the config or for the route.
    Disabled,
    /// Embeddings and passthrough paths are not cached.
    Endpoint,
    /// `Cache-Control: no-store` (with `no-cache`: nothing to do at all).
    NoStore,
    /// `Cache-Control: no-cache`: stored, not looked up.
    NoCache,
    /// The request matched a privacy pattern: never stored, looked up or embedded.
    Privacy,
    /// No key can be derived (tools with side effects, `n` > 1…).
    Unkeyable,
    /// Above `max_temperature`: the app asks for a fresh answer each time.
    Temperature,
    /// Too long to embed: exact-only.
    TooLong,
    EmbedTimeout,
    EmbedQueueFull,
    EmbedderUnavailable,
    /// The embedder answered with an error (a remote embedder's 5xx, a broken answer).
    EmbedFailed,
}

impl Skip {
    /// Counts it in `llm_sidecar_cache_skips` and hands it on (to the plan or the log line).
    pub(crate) fn count(self, metrics: &Metrics) -> Self {
        metrics.cache_skip(self.label());
        self
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Skip::Disabled => "disabled",
            Skip::Endpoint => "endpoint",
            Skip::NoStore => "no_store",
            Skip::NoCache => "no_cache",
            Skip::Privacy => "privacy",
            Skip::Unkeyable => "unkeyable",
            Skip::Temperature => "temperature",
            Skip::TooLong => "too_long",
            Skip::EmbedTimeout => "embed_timeout",
            Skip::EmbedQueueFull => "embed_queue_full",
            Skip::EmbedderUnavailable => "embedder_unavailable",
            Skip::EmbedFailed => "embed_failed",
        }
    }
}

/// What the cache did for one request: the `x-llm-sidecar-cache` header, the log line's
/// `cache` field, the trace attribute and the lookup metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// The cache did not apply (off, endpoint, privacy, temperature, `no-cache`…).
    Bypass,
    Miss,
    HitExact,
    HitSemantic,
}

impl CacheStatus {
    /// As the app sees it (`x-llm-sidecar-cache`) and as logs and traces show it.
    pub(crate) fn header(self) -> &'static str {
        match self {
            CacheStatus::Bypass => "bypass",
            CacheStatus::Miss => "miss",
            CacheStatus::HitExact => "hit-exact",
            CacheStatus::HitSemantic => "hit-semantic",
        }
    }

    /// As metric labels have it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            CacheStatus::Bypass => "bypass",
            CacheStatus::Miss => "miss",
            CacheStatus::HitExact => "hit_exact",
            CacheStatus::HitSemantic => "hit_semantic",
        }
    }

    pub(crate) fn is_hit(self) -> bool {
        matches!(self, CacheStatus::HitExact | CacheStatus::HitSemantic)
    }
}

impl From<HitKind> for CacheStatus {
    fn from(kind: HitKind) -> Self {
        match kind {
            HitKind::Exact => CacheStatus::HitExact,
            HitKind::Semantic { .. } => CacheStatus::HitSemantic,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HitKind {
    Exact,
    Semantic { similarity: f32 },
}

pub struct Hit {
    pub(crate) kind: HitKind,
    pub(crate) response: Bytes,
    pub(crate) model: Arc<str>,
    /// The entry that answered (for online verification).
    pub(crate) entry: u64,
}
/// A route's threshold settings: its own where set, else `cache.semantic`'s.
pub fn policy(route: &Route, config: &CacheConfig) -> Policy {
    let s = &config.semantic;
    let c = &route.cache;
    Policy {
        configured: c.threshold.unwrap_or(s.threshold),
        max_wrong_rate: c.max_wrong_rate.or(s.max_wrong_rate),
        min: c.min_threshold.unwrap_or(s.min_threshold),
        max: c.max_threshold.unwrap_or(s.max_threshold),
    }
}

impl Cache {
    /// Decides whether and how the cache applies to a request; counts why when it does not.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plan(
        &self,
        config: &CacheConfig,
        route: &Route,
        endpoint: Endpoint,
        tenant: &Arc<str>,
        head: &RequestHead<'_>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Plan, Skip> {
        let skip = |reason: Skip| reason.count(&self.metrics);
        let (no_cache, no_store) = applies(config, route, endpoint, headers, body).map_err(skip)?;
        let version = &config.version;
        let keys = key::derive(&[tenant, &route.name, endpoint.label(), version], head).ok_or(Skip::Unkeyable);
        let keys = keys.map_err(skip)?;
        if keys.temperature > config.max_temperature {
            // A high temperature asks for a fresh answer each time.
            return Err(skip(Skip::Temperature));
        }
        let mut skipped = None;
        if no_cache {
            skipped = Some(skip(Skip::NoCache));
        }
        if no_store {
            skip(Skip::NoStore);
        }
        let mut semantic = config.semantic.enabled && keys.partition.is_some();
        if semantic && keys.query.as_ref().is_some_and(|q| q.len() > QUERY_MAX_BYTES) {
            // Far past the embedder's window: not worth tokenizing, storing or guarding.
            skipped = Some(skip(Skip::TooLong));
            semantic = false;
        }
        let bar = self.bar(config, route);
        Ok(Plan {
            keys,
            lookup: !no_cache,
            store: !no_store,
            semantic,
            threshold: bar.threshold,
            floor: bar.floor,
            mode: bar.mode,
            policy: bar.policy,
            band: bar.band,
            min_alignment: config.semantic.min_alignment,
            min_score: config.semantic.verifier.as_ref().map_or(0.0, |v| v.min_score),
            guard: config.semantic.guard,
            tenant: tenant.clone(),
            route: route.name.clone(),
            vector: None,
            late: None,
            epoch: 0,
            skipped,
            best_similarity: None,
            timing: None,
            rejected: Vec::new(),
            shadow: None,
        })
    }

    /// How similar a stored question must be to be served (or judged) on this route.
    fn bar(&self, config: &CacheConfig, route: &Route) -> Bar {
        let policy = policy(route, config);
        let threshold = self.quality.threshold(&route.name, &policy);
        let mode = route.cache.mode.unwrap_or(config.semantic.mode);
        // The band was measured with the guard on, and a route that judges what it serves
        // below its threshold (shadow, a bound) keeps to what it measures.
        let judging = mode == SemanticMode::Shadow || policy.max_wrong_rate.is_some();
        let band = if judging || !config.semantic.guard {
            0.0
        } else {
            config.semantic.alignment_band
        };
        let floor = if judging {
            policy.floor().min(threshold)
        } else {
            threshold - band
        };
        Bar {
            policy,
            threshold,
            floor,
            mode,
            band,
        }
    }
}

/// The semantic bar of one route: its policy, the threshold in force, the lowest similarity a
/// candidate may have to be considered (the alignment band or a judging route's floor).
struct Bar {
    policy: Policy,
    threshold: f32,
    floor: f32,
    mode: SemanticMode,
    band: f32,
}

/// Whether the cache applies to this request at all; (`no-cache`, `no-store`) if it does.
fn applies(
    config: &CacheConfig,
    route: &Route,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(bool, bool), Skip> {
    if !config.enabled || route.cache.enabled == Some(false) {
        return Err(Skip::Disabled);
    }
    if !matches!(endpoint, Endpoint::Chat | Endpoint::Completions) {
        return Err(Skip::Endpoint);
    }
    let (no_cache, no_store) = directives(headers);
    if no_cache && no_store {
        return Err(Skip::NoStore);
    }
    // Private data is never stored, looked up or embedded.
    if !config.privacy.is_empty() && std::str::from_utf8(body).is_ok_and(|t| config.privacy.is_match(t)) {
        return Err(Skip::Privacy);
    }
    Ok((no_cache, no_store))
}

/// `(no_cache, no_store)` from `x-llm-sidecar-cache` and `Cache-Control`.
fn directives(headers: &HeaderMap) -> (bool, bool) {
    let mut no_cache = false;
    let mut no_store = false;
    for name in ["x-llm-sidecar-cache", "cache-control"] {
        for v in headers.get_all(name) {
            let v = v.to_str().unwrap_or("").to_ascii_lowercase();
            for d in v.split(',').map(str::trim) {
                match d {
                    "no-cache" => no_cache = true,
                    "no-store" => no_store = true,
                    _ => {}
                }
            }
        }
    }
    (no_cache, no_store)
}
