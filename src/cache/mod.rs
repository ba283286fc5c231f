//! The L1 response cache: exact hits first (a hash, no embedding), then semantic hits inside
//! the request's partition, verified by the guard. It outlives config reloads (it lives in
//! `Shared`, not in a `Runtime` snapshot); its settings are read from the snapshot of each
//! request. Nothing here can fail a request: every problem (embedder missing, slow or full)
//! is a counted miss.
//!
//! - `key` — exact and partition keys, the embedded query.
//! - `guard` — pair features that must agree for a semantic hit.
//! - `store` — entries, TTL, LRU, byte bounds, per-partition usearch indexes.
//! - `replay` — JSON ↔ SSE, so an answer is served in whichever shape is asked for.
//! - `quality` — per-route judged pairs, the measured wrong rate, `max_wrong_rate`.

pub mod align;
pub mod calibrate;
pub mod guard;
pub mod key;
pub mod l2;
pub mod quality;
pub mod replay;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use tokio::time::Instant;

use self::guard::Features;
use self::key::Keys;
use self::quality::{Judged, Policy, Quality};
use self::store::{NewEntry, SEARCH_CANDIDATES, Store};
use crate::config::{CacheConfig, SemanticMode};
use crate::embed::{EmbedError, EmbedObserver, Embedder, EmbedderSettings, Fit, Lane, SubmitError, Unembedded};
use crate::openai::Endpoint;
use crate::openai::RequestHead;
use crate::router::Route;
use crate::telemetry::{JudgmentLabels, Metrics, ReasonLabels, ResultLabels, RouteLabels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// How often expired entries are swept (they are also dropped when met on lookup).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Time for embedding one `semantic` route example on first use (the model is warm; this only
/// bounds a stalled embedder).
const EXAMPLE_EMBED_BUDGET: Duration = Duration::from_secs(2);
/// An insert waits at most this long for its embedding before the entry stays exact-only.
const INSERT_EMBED_BUDGET: Duration = Duration::from_secs(10);

/// What the cache will do for one request.
pub struct Plan {
    pub keys: Keys,
    pub lookup: bool,
    pub store: bool,
    semantic: bool,
    /// The threshold in force for the route (moved by `max_wrong_rate` when set).
    threshold: f32,
    /// Would-be hits from here up are judged when not served (shadow mode, or the band below
    /// the threshold of a route with `max_wrong_rate`); equal to `threshold` otherwise.
    floor: f32,
    mode: SemanticMode,
    policy: Policy,
    /// Candidates in `[threshold - band, threshold)` are served when token alignment says
    /// every content word has a partner (0: off; see `align`).
    band: f32,
    min_alignment: f32,
    /// The pair verifier's score a hit needs (when one is loaded).
    min_score: f32,
    guard: bool,
    tenant: Arc<str>,
    route: Arc<str>,
    /// The query's embedding, kept from the lookup so the insert need not embed again.
    vector: Option<Vec<f32>>,
    /// Where the lookup's vector lands if it comes after the lookup gave up waiting (under
    /// load): the insert takes it from here instead of embedding the same text again.
    late: Option<Arc<std::sync::OnceLock<Vec<f32>>>>,
    /// On a semantic miss: the similarity of the best candidate found (for cost advice).
    pub best_similarity: Option<f32>,
    /// When the semantic lookup ran, for the request's trace.
    pub timing: Option<SemanticTiming>,
    /// Why the lookup (or its semantic half) did not run, for the request's log line.
    pub skipped: Option<Skip>,
    /// Candidates over the threshold that the guard or a learned threshold turned down.
    pub rejected: Vec<&'static str>,
    /// A hit found but not served: judged against the upstream answer the request gets.
    pub shadow: Option<ShadowHit>,
}

/// What the candidate search found worth serving.
enum Choice {
    /// At or above the threshold, guard passed.
    Serve(store::Cached, f32),
    /// Just under the threshold (the alignment band), guard passed.
    Band(store::Cached, f32),
    None,
}

/// A semantic hit that was found and passed the guard but was not served.
pub struct ShadowHit {
    pub entry: u64,
    pub similarity: f32,
    pub cached: Bytes,
}

/// The semantic lookup's steps: submitted to the embedder, embedded (after any queueing and
/// batching), searched.
#[derive(Debug, Clone, Copy)]
pub struct SemanticTiming {
    pub submitted: std::time::Instant,
    pub embedded: std::time::Instant,
    pub searched: std::time::Instant,
    pub candidates: usize,
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
}

impl Skip {
    pub fn label(self) -> &'static str {
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
    pub fn header(self) -> &'static str {
        match self {
            CacheStatus::Bypass => "bypass",
            CacheStatus::Miss => "miss",
            CacheStatus::HitExact => "hit-exact",
            CacheStatus::HitSemantic => "hit-semantic",
        }
    }

    /// As metric labels have it.
    pub fn label(self) -> &'static str {
        match self {
            CacheStatus::Bypass => "bypass",
            CacheStatus::Miss => "miss",
            CacheStatus::HitExact => "hit_exact",
            CacheStatus::HitSemantic => "hit_semantic",
        }
    }

    pub fn is_hit(self) -> bool {
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
    pub kind: HitKind,
    pub response: Bytes,
    pub model: Arc<str>,
    /// The entry that answered (for online verification).
    pub entry: u64,
}

pub struct Cache {
    store: Store,
    embedder: Option<Embedder>,
    metrics: Arc<Metrics>,
    /// Bounds background verifications in flight.
    verify_permits: Arc<tokio::sync::Semaphore>,
    /// Bounds shadow judgments in flight (two embeddings each, no upstream call).
    shadow_permits: Arc<tokio::sync::Semaphore>,
    quality: Quality,
    /// Where shadow judgments run (stopped with the sidecar's other background work).
    background: crate::tasks::Background,
    /// Fleet mode: new entries go to Redis through this (see `l2`).
    l2: std::sync::OnceLock<tokio::sync::mpsc::Sender<l2::Outgoing>>,
}

/// Background verifications in flight at most: they cost upstream calls, and must never pile up.
const MAX_VERIFICATIONS: usize = 4;
/// Shadow judgments in flight at most; beyond, a would-be hit goes unjudged (counted).
const MAX_SHADOW_JUDGMENTS: usize = 32;

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

/// A last turn longer than this is exact-only without asking the tokenizer: natural text needs
/// ~4-6 bytes per token (CJK 3), so 4 KiB is several times the embedder's 128-token window.
/// Below it, the embedder decides by tokenizing (`Fit::Whole`).
const QUERY_MAX_BYTES: usize = 4096;

/// A cached query's text (checked as UTF-8 when the candidate was read) as the owned string
/// an embedder job takes.
fn text_of(query: &Bytes) -> Option<String> {
    std::str::from_utf8(query).ok().map(str::to_owned)
}

/// The text of the first choice of a chat or completions JSON response.
fn answer_text(json: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let c = v.get("choices")?.get(0)?;
    let text = c
        .get("message")
        .and_then(|m| m.get("content"))
        .or_else(|| c.get("text"))?
        .as_str()?;
    Some(text.to_owned())
}

struct Observer(Arc<Metrics>);

impl EmbedObserver for Observer {
    fn batch(&self, size: usize, took: Duration) {
        self.0.embed_batch.observe(size as f64);
        self.0.embed_duration.observe(took.as_secs_f64());
    }
    fn expired(&self) {
        self.0.cache_skip(Skip::EmbedTimeout.label());
    }
    fn failed(&self, error: &EmbedError) {
        tracing::warn!(%error, "embedding failed; counted as cache misses");
    }
}

impl Cache {
    /// Builds the cache; loads the embedder when the semantic cache is on. Missing or broken
    /// assets turn the semantic cache off (one log line, a metric), never the sidecar.
    /// `for_routing`: some route uses the `semantic` strategy, so the embedder is loaded even
    /// when the semantic cache is off.
    pub fn new(
        config: &CacheConfig,
        for_routing: bool,
        metrics: Arc<Metrics>,
        background: crate::tasks::Background,
    ) -> Cache {
        let mut embedder = None;
        if (config.enabled && config.semantic.enabled) || for_routing {
            let s = &config.semantic;
            let settings = EmbedderSettings {
                queue: s.queue,
                max_batch: s.max_batch,
                intra_threads: s.threads,
                verifier: s.verifier.as_ref().map(|v| (v.model.clone(), v.tokenizer.clone())),
            };
            match Embedder::start(&s.assets_dir, settings, Arc::new(Observer(metrics.clone()))) {
                Ok(e) => {
                    tracing::info!(
                        assets = %s.assets_dir.display(), quantized = e.quantized, max_batch = e.max_batch,
                        verifier = e.verifier,
                        "semantic cache on: embedding model loaded"
                    );
                    embedder = Some(e);
                }
                Err(error) => tracing::error!(
                    %error,
                    "semantic cache OFF: the embedding model (or the configured verifier) could not be loaded; the exact cache still works"
                ),
            }
        }
        metrics.embedder_available.set(i64::from(embedder.is_some()));
        Cache {
            store: Store::default(),
            embedder,
            metrics,
            verify_permits: Arc::new(tokio::sync::Semaphore::new(MAX_VERIFICATIONS)),
            shadow_permits: Arc::new(tokio::sync::Semaphore::new(MAX_SHADOW_JUDGMENTS)),
            quality: Quality::default(),
            background,
            l2: std::sync::OnceLock::new(),
        }
    }

    pub fn semantic_available(&self) -> bool {
        self.embedder.is_some()
    }

    /// Embeds a text within `budget` on the embedder's threads (for semantic routing).
    /// `None` when there is no embedder, its queue is full, or the budget runs out.
    pub async fn embed(&self, text: &str, budget: Duration) -> Option<Vec<f32>> {
        let embedder = self.embedder.as_ref()?;
        let deadline = Instant::now() + budget;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let then = Box::new(move |v: Result<&[f32], Unembedded>| {
            let _ = tx.send(v.ok().map(<[f32]>::to_vec));
        });
        // Routing by topic: the start of a long text is enough.
        embedder
            .submit(text.to_owned(), Fit::Start, deadline.into_std(), Lane::Request, then)
            .ok()?;
        tokio::time::timeout_at(deadline, rx).await.ok()?.ok()?
    }

    /// Embeds a `semantic` route's examples once (on first use or after a reload; concurrent
    /// first requests may both compute, the first to finish is kept); `false`
    /// when the embedder cannot (the route then falls through).
    pub async fn prepare_examples(&self, route: &Route) -> bool {
        if route.example_vectors.get().is_some() {
            return true;
        }
        let mut vectors = Vec::with_capacity(route.examples.len());
        for (target, text) in &route.examples {
            match self.embed(text, EXAMPLE_EMBED_BUDGET).await {
                Some(v) => vectors.push((*target, v)),
                None => return false,
            }
        }
        let _ = route.example_vectors.set(vectors);
        true
    }

    /// Decides whether and how the cache applies to a request; counts why when it does not.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        &self,
        config: &CacheConfig,
        route: &Route,
        endpoint: Endpoint,
        tenant: &Arc<str>,
        head: &RequestHead<'_>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Plan, Skip> {
        let skip = |reason: Skip| {
            self.metrics.cache_skip(reason.label());
            reason
        };
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

    /// Looks the request up: exact, then semantic (within `config.semantic.timeout`).
    pub async fn lookup(&self, plan: &mut Plan, config: &CacheConfig) -> Option<Hit> {
        let now = Instant::now();
        match self.store.get_exact(&plan.keys.exact, now.into_std()) {
            Ok(Some(c)) => {
                self.metrics.cache_lookup(CacheStatus::HitExact.label());
                return Some(Hit {
                    kind: HitKind::Exact,
                    response: c.response,
                    model: c.model,
                    entry: c.id,
                });
            }
            Ok(None) => {}
            Err(evicted) => self.evicted(&evicted),
        }
        let hit = if plan.semantic {
            self.semantic(plan, config.semantic.timeout).await
        } else {
            None
        };
        let status = if hit.is_some() {
            CacheStatus::HitSemantic
        } else {
            CacheStatus::Miss
        };
        self.metrics.cache_lookup(status.label());
        hit
    }

    async fn semantic(&self, plan: &mut Plan, budget: Duration) -> Option<Hit> {
        let (Some(partition), Some(query)) = (plan.keys.partition, plan.keys.query.clone()) else {
            return None;
        };
        let Some(embedder) = &self.embedder else {
            self.skip(plan, Skip::EmbedderUnavailable);
            return None;
        };
        // An empty partition has nothing to find: skip the embedding (the insert embeds).
        let index = self.store.partition(&partition)?;
        let deadline = Instant::now() + budget;
        let found = self.embed_and_search(plan, embedder, index, &query, deadline).await?;
        let (c, similarity) = match self.choose(plan, found, &partition, &query) {
            Choice::Serve(c, similarity) => (c, similarity),
            Choice::Band(c, similarity) => self.in_band(plan, embedder, c, similarity, &query, deadline).await?,
            Choice::None => return None,
        };
        if embedder.verifier && !self.verified(plan, embedder, &c, query, deadline).await {
            return None;
        }
        self.metrics.cache_similarity.observe(f64::from(similarity));
        Some(Hit {
            kind: HitKind::Semantic { similarity },
            response: c.response,
            model: c.model,
            entry: c.id,
        })
    }

    /// Embeds the query on the request lane and searches the partition; the vector stays in
    /// the plan for the insert. `None` (and why, in the plan) when the embedder cannot answer
    /// in time.
    async fn embed_and_search(
        &self,
        plan: &mut Plan,
        embedder: &Embedder,
        index: Arc<store::PartitionIndex>,
        query: &str,
        deadline: Instant,
    ) -> Option<Vec<(u64, f32)>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let metrics = self.metrics.clone();
        let submitted = std::time::Instant::now();
        let late = Arc::new(std::sync::OnceLock::new());
        plan.late = Some(late.clone());
        let then = Box::new(move |v: Result<&[f32], Unembedded>| {
            if let Ok(v) = v {
                let _ = late.set(v.to_vec());
            }
            let _ = tx.send(v.map(|v| search(&index, v, &metrics)));
        });
        match embedder.submit(query.to_owned(), Fit::Whole, deadline.into_std(), Lane::Request, then) {
            Ok(()) => {}
            Err(SubmitError::QueueFull) => {
                self.skip(plan, Skip::EmbedQueueFull);
                return None;
            }
            Err(SubmitError::Stopped) => {
                self.skip(plan, Skip::EmbedderUnavailable);
                return None;
            }
        }
        let (vector, found, embedded, searched) = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(Unembedded::TooLong))) => {
                // Exact-only, and the store need not try to embed it again.
                self.skip(plan, Skip::TooLong);
                plan.semantic = false;
                return None;
            }
            // Expired in the queue or failed: counted by the embedder's observer.
            Ok(_) => {
                plan.skipped = Some(Skip::EmbedTimeout);
                return None;
            }
            Err(_) => {
                self.skip(plan, Skip::EmbedTimeout);
                return None;
            }
        };
        plan.vector = Some(vector);
        plan.best_similarity = found.first().map(|(_, s)| *s);
        plan.timing = Some(SemanticTiming {
            submitted,
            embedded,
            searched,
            candidates: found.len(),
        });
        Some(found)
    }

    /// The best candidate that passes the learned threshold and the guard: served at or above
    /// the threshold, checked by alignment just under it, judged in shadow below that.
    fn choose(&self, plan: &mut Plan, found: Vec<(u64, f32)>, partition: &key::Key, query: &str) -> Choice {
        let query_features = Features::of(query);
        let now = std::time::Instant::now();
        for (id, similarity) in found {
            if similarity < plan.floor {
                break;
            }
            let Some(c) = self.store.candidate(id, partition, now) else {
                continue;
            };
            if similarity < c.min_similarity {
                self.rejected("learned_threshold");
                plan.rejected.push("learned_threshold");
                continue;
            }
            if plan.guard
                && let Some(f) = &c.features
                && let Err(reason) = guard::check(&query_features, f)
            {
                self.rejected(reason.label());
                plan.rejected.push(reason.label());
                continue;
            }
            if similarity < plan.threshold && plan.band > 0.0 {
                return Choice::Band(c, similarity);
            }
            if plan.mode == SemanticMode::Shadow || similarity < plan.threshold {
                plan.shadow = Some(ShadowHit {
                    entry: c.id,
                    similarity,
                    cached: c.response,
                });
                return Choice::None;
            }
            return Choice::Serve(c, similarity);
        }
        Choice::None
    }

    /// A candidate just under the threshold, guard passed: served only if each question's
    /// content words find close partners in the other, in context.
    async fn in_band(
        &self,
        plan: &mut Plan,
        embedder: &Embedder,
        c: store::Cached,
        similarity: f32,
        query: &str,
        deadline: Instant,
    ) -> Option<(store::Cached, f32)> {
        let cached_query = text_of(c.query.as_ref()?)?;
        let worst = self.alignment(embedder, query.to_owned(), cached_query, deadline).await;
        let min = plan.min_alignment;
        let metric = &self.metrics.cache_alignment;
        self.pair_verdict(plan, worst, min, metric, ["served", "rejected"], "alignment")
            .then_some((c, similarity))
    }

    /// The operator's pair model has the last word on every hit.
    async fn verified(
        &self,
        plan: &mut Plan,
        embedder: &Embedder,
        c: &store::Cached,
        query: String,
        deadline: Instant,
    ) -> bool {
        let Some(cached_query) = c.query.as_ref().and_then(text_of) else {
            return false;
        };
        let score = self.verify_pair(embedder, query, cached_query, deadline).await;
        let min = plan.min_score;
        let metric = &self.metrics.cache_verifier;
        self.pair_verdict(plan, score, min, metric, ["agree", "disagree"], "verifier")
    }

    /// A pair check's verdict: `score` at or above `min` passes. Counted in `metric` as the
    /// pass or fail label (or `unavailable` without a score); a fail is also a guard
    /// rejection named `reason`.
    fn pair_verdict(
        &self,
        plan: &mut Plan,
        score: Option<f32>,
        min: f32,
        metric: &Family<ResultLabels, Counter>,
        [pass, fail]: [&'static str; 2],
        reason: &'static str,
    ) -> bool {
        let result = match score {
            Some(s) if s >= min => pass,
            Some(_) => fail,
            None => "unavailable",
        };
        metric.get_or_create(&ResultLabels { result }).inc();
        if result == fail {
            self.rejected(reason);
            plan.rejected.push(reason);
        }
        result == pass
    }

    /// The pair verifier's score for (query, cached query), within the lookup's deadline.
    async fn verify_pair(&self, embedder: &Embedder, a: String, b: String, deadline: Instant) -> Option<f32> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let then = Box::new(move |score: Result<f32, Unembedded>| {
            let _ = tx.send(score.ok());
        });
        embedder
            .submit_verify(a, b, deadline.into_std(), Lane::Request, then)
            .ok()?;
        tokio::time::timeout_at(deadline, rx).await.ok()?.ok()?
    }

    /// The worst-aligned content word's closest partner across the two questions (see
    /// `align`), embedded on the request lane within the lookup's deadline.
    async fn alignment(&self, embedder: &Embedder, a: String, b: String, deadline: Instant) -> Option<f32> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let then = Box::new(move |w: Result<[crate::embed::WordStates; 2], Unembedded>| {
            let _ = tx.send(w.ok().map(|[wa, wb]| align::score(&wa, &wb).0));
        });
        embedder
            .submit_pair(a, b, deadline.into_std(), Lane::Request, then)
            .ok()?;
        tokio::time::timeout_at(deadline, rx).await.ok()?.ok()?
    }

    /// Stores a complete, successful JSON answer. The vector goes into the partition index
    /// off the event loop.
    pub fn store(&self, plan: Plan, response: Bytes, model: Arc<str>, config: &CacheConfig) {
        if !plan.store {
            return;
        }
        let Plan {
            keys,
            tenant,
            route,
            vector,
            late,
            semantic,
            ..
        } = plan;
        let vector = vector.or_else(|| late.and_then(|l| l.get().cloned()));
        let query = if semantic { keys.query } else { None };
        let partition = if semantic { keys.partition } else { None };
        let outgoing = self.l2.get().map(|tx| {
            (
                tx.clone(),
                l2::Outgoing {
                    exact: keys.exact,
                    partition,
                    tenant: tenant.clone(),
                    route: route.clone(),
                    query: query.clone(),
                    response: response.clone(),
                    model: model.clone(),
                    ttl: config.ttl,
                    vector: None,
                },
            )
        });
        let new = NewEntry {
            exact: keys.exact,
            partition,
            tenant,
            route,
            query: query.clone(),
            response,
            model,
            expires: std::time::Instant::now() + config.ttl,
        };
        let (id, index, evicted) = self.store.insert(new, config.max_entries, config.max_bytes);
        self.metrics.cache_inserts.inc();
        self.evicted(&evicted);
        self.update_gauges();
        // Published once the vector is known, so other sidecars need not embed it again.
        let publish = move |vector: Option<Vec<f32>>| {
            if let Some((tx, mut out)) = outgoing {
                out.vector = vector;
                // A full channel (Redis slow) drops the publication, never blocks the request.
                let _ = tx.try_send(out);
            }
        };
        match (index, query) {
            (Some(index), Some(query)) => self.index_vector(id, index, query, vector, publish),
            _ => publish(None),
        }
    }

    /// Adds a stored entry to its partition's vector index: with the lookup's vector when
    /// there was one, else embedded in the background (lookups have priority); `publish` gets
    /// the vector either way.
    fn index_vector(
        &self,
        id: u64,
        index: Arc<store::PartitionIndex>,
        query: String,
        vector: Option<Vec<f32>>,
        publish: impl FnOnce(Option<Vec<f32>>) + Send + 'static,
    ) {
        match (vector, &self.embedder) {
            (Some(v), _) => {
                tokio::task::spawn_blocking(move || {
                    index.add(id, &v);
                    publish(Some(v));
                });
            }
            (None, Some(embedder)) => {
                let deadline = std::time::Instant::now() + INSERT_EMBED_BUDGET;
                let metrics = self.metrics.clone();
                let then = Box::new(move |v: Result<&[f32], Unembedded>| {
                    match v {
                        Ok(v) => {
                            index.add(id, v);
                        }
                        Err(Unembedded::TooLong) => metrics.cache_skip(Skip::TooLong.label()),
                        Err(_) => {}
                    }
                    publish(v.ok().map(<[f32]>::to_vec));
                });
                // A full queue, like a query too long to embed whole, leaves this entry
                // exact-only: lookups have priority.
                let _ = embedder.submit(query, Fit::Whole, deadline, Lane::Background, then);
            }
            (None, None) => publish(None),
        }
    }

    /// The semantic half did not run for this request: counted, and said in its log line.
    fn skip(&self, plan: &mut Plan, why: Skip) {
        self.metrics.cache_skip(why.label());
        plan.skipped = Some(why);
    }

    /// Routes new entries to Redis (fleet mode); see `l2`.
    pub fn attach_l2(&self, tx: tokio::sync::mpsc::Sender<l2::Outgoing>) {
        let _ = self.l2.set(tx);
    }

    /// Inserts an entry another sidecar answered (fleet mode). Its vector is used as is;
    /// without one, the entry is embedded here like a local insert.
    pub fn insert_remote(&self, e: l2::Incoming, config: &CacheConfig) {
        if !config.enabled {
            return;
        }
        // Local answers are checked before they are stored (`server/attempt.rs`); an entry
        // from Redis may come from an older sidecar that did not check, or from anyone who can
        // write to Redis. A broken answer must never be served, whoever stored it.
        if crate::openai::answer::check(&e.response, crate::openai::answer::Expect::Choices).is_err() {
            self.metrics
                .l2_entries
                .get_or_create(&crate::telemetry::ResultLabels { result: "malformed" })
                .inc();
            return;
        }
        let new = NewEntry {
            exact: e.exact,
            partition: e.partition,
            tenant: e.tenant,
            route: e.route,
            query: e.query.clone(),
            response: e.response,
            model: e.model,
            expires: std::time::Instant::now() + e.ttl.min(config.ttl),
        };
        let (id, index, evicted) = self.store.insert(new, config.max_entries, config.max_bytes);
        self.evicted(&evicted);
        self.update_gauges();
        let (Some(index), Some(query)) = (index, e.query) else {
            return;
        };
        match (e.vector, &self.embedder) {
            (Some(v), _) => {
                index.add(id, &v);
            }
            (None, Some(embedder)) => {
                let deadline = std::time::Instant::now() + INSERT_EMBED_BUDGET;
                let then = Box::new(move |v: Result<&[f32], Unembedded>| {
                    if let Ok(v) = v {
                        index.add(id, v);
                    }
                });
                let _ = embedder.submit(query, Fit::Whole, deadline, Lane::Background, then);
            }
            (None, None) => {}
        }
    }

    /// Whether this semantic hit should be re-asked upstream in the background; the permit
    /// bounds verifications in flight and must live as long as the verification.
    pub fn should_verify(&self, config: &CacheConfig) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let p = config.semantic.verify_sample;
        if p <= 0.0 || self.embedder.is_none() || fastrand::f32() >= p {
            return None;
        }
        self.verify_permits.clone().try_acquire_owned().ok()
    }

    /// Judges a served semantic hit against a fresh upstream answer to the same request.
    /// A disagreement raises the entry's learned threshold so that pair never hits again.
    pub async fn judge(
        &self,
        route: &Route,
        entry: u64,
        similarity: f32,
        cached: &[u8],
        fresh: &[u8],
        config: &CacheConfig,
    ) {
        let Some(agree) = self.agree(entry, similarity, cached, fresh, config).await else {
            self.verification("failed");
            return;
        };
        self.verification(if agree { "agree" } else { "disagree" });
        self.judged(&route.name, similarity, agree, Judged::Served, &policy(route, config));
    }

    /// Judges a hit that was not served (`plan.shadow`) against the answer the request got
    /// upstream, in the background; costs two embeddings and no upstream call.
    pub fn judge_shadow(self: &Arc<Self>, plan: &mut Plan, fresh: Bytes, config: &CacheConfig) {
        let Some(hit) = plan.shadow.take() else {
            return;
        };
        let (route, policy) = (plan.route.clone(), plan.policy);
        let Ok(permit) = self.shadow_permits.clone().try_acquire_owned() else {
            self.judgment(&route, Judged::Shadow, "skipped");
            return;
        };
        let cache = self.clone();
        let config = config.clone();
        self.background.spawn(async move {
            let _permit = permit;
            match cache
                .agree(hit.entry, hit.similarity, &hit.cached, &fresh, &config)
                .await
            {
                Some(agree) => cache.judged(&route, hit.similarity, agree, Judged::Shadow, &policy),
                None => cache.judgment(&route, Judged::Shadow, "failed"),
            }
        });
    }

    /// Whether two answers to what the cache took for the same question agree: they must
    /// embed close together (`verify_agreement`) and state the same numbers. `None` when they
    /// cannot be compared. A disagreement tightens the entry's learned threshold.
    async fn agree(
        &self,
        entry: u64,
        similarity: f32,
        cached: &[u8],
        fresh: &[u8],
        config: &CacheConfig,
    ) -> Option<bool> {
        let (a, b) = (answer_text(cached)?, answer_text(fresh)?);
        let (va, vb) = (self.embed_now(&a, config).await?, self.embed_now(&b, config).await?);
        let agreement = crate::embed::cosine(&va, &vb);
        let same_numbers = guard::numbers_of(&a) == guard::numbers_of(&b);
        let agree = agreement >= config.semantic.verify_agreement && same_numbers;
        if !agree {
            let learned = self.store.tighten(entry, similarity);
            tracing::warn!(
                entry,
                similarity,
                agreement,
                same_numbers,
                learned = learned.unwrap_or(f32::NAN),
                "cache verification: a semantic hit would have served a different answer; its entry's threshold was raised"
            );
        }
        Some(agree)
    }

    fn judged(&self, route: &Arc<str>, similarity: f32, agree: bool, how: Judged, policy: &Policy) {
        self.judgment(route, how, if agree { "agree" } else { "disagree" });
        let before = self.quality.threshold(route, policy);
        let after = self.quality.record(route, similarity, agree, how, policy);
        self.metrics
            .cache_route_threshold
            .get_or_create(&RouteLabels { route: route.clone() })
            .set(f64::from(after));
        if (after - before).abs() > 1e-6 {
            tracing::info!(
                route = &**route,
                before,
                after,
                "cache: the route's semantic threshold moved to meet its max_wrong_rate"
            );
        }
    }

    fn judgment(&self, route: &Arc<str>, how: Judged, result: &'static str) {
        self.metrics
            .cache_judgments
            .get_or_create(&JudgmentLabels {
                route: route.clone(),
                mode: how.label(),
                result,
            })
            .inc();
    }

    /// Per-route semantic settings and measured quality, for `/admin/cache`.
    pub fn report(&self, routes: &[Arc<Route>], config: &CacheConfig) -> serde_json::Value {
        serde_json::json!({
            "enabled": config.enabled,
            "semantic": config.enabled && config.semantic.enabled && self.embedder.is_some(),
            "entries": self.store.len(),
            "bytes": self.store.bytes(),
            "routes": routes.iter().map(|r| {
                let p = policy(r, config);
                serde_json::json!({
                    "route": &*r.name,
                    "enabled": r.cache.enabled != Some(false),
                    "mode": r.cache.mode.unwrap_or(config.semantic.mode).label(),
                    "threshold": p.configured,
                    "threshold_in_force": self.quality.threshold(&r.name, &p),
                    "max_wrong_rate": p.max_wrong_rate,
                    "min_threshold": p.min,
                    "max_threshold": p.max,
                    "judged": self.quality.report(&r.name, &p),
                })
            }).collect::<Vec<_>>(),
        })
    }

    pub fn verification(&self, result: &'static str) {
        self.metrics
            .cache_verifications
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    async fn embed_now(&self, text: &str, config: &CacheConfig) -> Option<Vec<f32>> {
        let embedder = self.embedder.as_ref()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + config.semantic.timeout.max(Duration::from_secs(1));
        let then = Box::new(move |v: Result<&[f32], Unembedded>| {
            let _ = tx.send(v.ok().map(<[f32]>::to_vec));
        });
        // Two answers are compared by their openings: a cut vector is what is wanted here.
        embedder
            .submit(
                text.chars().take(2000).collect(),
                Fit::Start,
                deadline.into_std(),
                Lane::Background,
                then,
            )
            .ok()?;
        tokio::time::timeout_at(deadline, rx).await.ok()?.ok()?
    }

    pub fn sweep(&self) {
        let n = self.store.sweep(std::time::Instant::now());
        if n > 0 {
            self.evictions("expired", n);
            self.update_gauges();
        }
    }

    /// Removes entries of a tenant and/or route (all when both are `None`); returns how many.
    pub fn purge(&self, tenant: Option<&str>, route: Option<&str>) -> usize {
        let n = self.store.purge(tenant, route);
        self.evictions("purge", n);
        self.update_gauges();
        n
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    fn evicted(&self, evicted: &[store::Eviction]) {
        for e in evicted {
            self.evictions(e.label(), 1);
        }
    }

    fn evictions(&self, reason: &'static str, n: usize) {
        self.metrics
            .cache_evictions
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n as u64);
    }

    fn rejected(&self, reason: &'static str) {
        self.metrics
            .cache_guard_rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    fn update_gauges(&self) {
        self.metrics.cache_entries.set(self.store.len() as i64);
        self.metrics.cache_bytes.set(self.store.bytes() as i64);
    }
}

/// `(no_cache, no_store)` from `x-llm-sidecar-cache` and `Cache-Control`.
/// The semantic bar of one route: its policy, the threshold in force, the lowest similarity a
/// candidate may have to be considered (the alignment band or a judging route's floor).
struct Bar {
    policy: Policy,
    threshold: f32,
    floor: f32,
    mode: SemanticMode,
    band: f32,
}

/// Searches a partition on the embedder's thread, right after the query is embedded:
/// (vector, candidates, search start, search end).
fn search(
    index: &store::PartitionIndex,
    v: &[f32],
    metrics: &Metrics,
) -> (Vec<f32>, Vec<(u64, f32)>, std::time::Instant, std::time::Instant) {
    let start = std::time::Instant::now();
    let found = index.search(v, SEARCH_CANDIDATES);
    let end = std::time::Instant::now();
    metrics.search_duration.observe((end - start).as_secs_f64());
    (v.to_vec(), found, start, end)
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
