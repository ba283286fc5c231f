//! The L1 response cache: exact hits first (a hash, no embedding), then semantic hits inside
//! the request's partition, verified by the guard. It outlives config reloads (it lives in
//! `Shared`, not in a `Runtime` snapshot); its settings are read from the snapshot of each
//! request. Nothing here can fail a request: every problem (embedder missing, slow or full)
//! is a counted miss.
//!
//! - `plan` — whether and how the cache applies to a request, and what it did (status, skips).
//! - `semantic` — embed, search, choose: the semantic half of a lookup.
//! - `judge` — background verification and shadow judgments of semantic hits.
//! - `key` — exact and partition keys, the embedded query.
//! - `guard` — pair features that must agree for a semantic hit.
//! - `store` — entries, TTL, LRU, byte bounds, per-partition usearch indexes.
//! - `replay` — JSON ↔ SSE, so an answer is served in whichever shape is asked for.
//! - `quality` — per-route judged pairs, the measured wrong rate, `max_wrong_rate`.

pub mod align;
pub mod calibrate;
pub mod guard;
mod judge;
pub mod key;
pub mod l2;
mod plan;
pub mod quality;
pub mod replay;
mod semantic;
pub mod store;

pub use plan::{CacheStatus, Hit, HitKind, Plan, Skip, policy};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio::time::Instant;

use self::quality::Quality;
use self::store::{NewEntry, Store};
use crate::config::CacheConfig;
use crate::embed::remote::RemoteSettings;
use crate::embed::{EmbedError, EmbedObserver, Embedder, EmbedderSettings, Fit, Lane, Unembedded};
use crate::plugin::{CacheKey, CacheStore, StoredAnswer};
use crate::router::Route;
use crate::telemetry::{Metrics, ReasonLabels};

/// How often expired entries are swept (they are also dropped when met on lookup).
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Time for embedding one `semantic` route example on first use (the model is warm; this only
/// bounds a stalled embedder).
const EXAMPLE_EMBED_BUDGET: Duration = Duration::from_secs(2);
/// An insert waits at most this long for its embedding before the entry stays exact-only.
const INSERT_EMBED_BUDGET: Duration = Duration::from_secs(10);

pub struct Cache {
    store: Store,
    /// The embedder, replaced when a reload changes it (see [`Cache::reconfigure`]); a lookup
    /// holds the one it started with.
    embedder: ArcSwapOption<Embedder>,
    /// What the live embedder was built from, and the identity of the vectors in the store.
    embedding: std::sync::Mutex<Embedding>,
    /// Numbers the embedders: a vector is only stored by the cache while the embedder that
    /// made it is the live one.
    epochs: AtomicU64,
    /// Where a remote embedder's requests run.
    runtime: Option<tokio::runtime::Handle>,
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
    /// A store the embedding program registered: asked after an exact miss, told every insert.
    external: std::sync::OnceLock<Arc<dyn CacheStore>>,
}

/// Which embedder a config asks for.
#[derive(Debug, Clone, PartialEq)]
enum EmbedderSpec {
    Off,
    Local {
        assets_dir: std::path::PathBuf,
        queue: usize,
        max_batch: Option<usize>,
        threads: usize,
        verifier: Option<crate::config::VerifierConfig>,
    },
    Remote {
        config: crate::config::RemoteEmbedderConfig,
        queue: usize,
    },
}

impl EmbedderSpec {
    /// `for_routing`: some route uses the `semantic` strategy, so an embedder is wanted even
    /// when the semantic cache is off.
    fn of(config: &CacheConfig, for_routing: bool) -> Self {
        let s = &config.semantic;
        if !((config.enabled && s.enabled) || for_routing) {
            return EmbedderSpec::Off;
        }
        match &s.embedder {
            Some(remote) => EmbedderSpec::Remote {
                config: remote.clone(),
                queue: s.queue,
            },
            None => EmbedderSpec::Local {
                assets_dir: s.assets_dir.clone(),
                queue: s.queue,
                max_batch: s.max_batch,
                threads: s.threads,
                verifier: s.verifier.clone(),
            },
        }
    }
}

struct Embedding {
    spec: EmbedderSpec,
    /// The identity of the embedder whose vectors the store's indexes hold.
    stored: Option<Arc<str>>,
}

/// Background verifications in flight at most: they cost upstream calls, and must never pile up.
const MAX_VERIFICATIONS: usize = 4;
/// Shadow judgments in flight at most; beyond, a would-be hit goes unjudged (counted).
const MAX_SHADOW_JUDGMENTS: usize = 32;

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

/// How often an embedder failure is logged at most: a remote embedder that is down fails
/// every batch, and the metric (`embed_failed`) counts them all.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

struct Observer {
    metrics: Arc<Metrics>,
    /// When a failure was last logged, and how many were not logged since.
    logged: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Observer {
    fn new(metrics: Arc<Metrics>) -> Self {
        Observer {
            metrics,
            logged: std::sync::Mutex::new((None, 0)),
        }
    }
}

impl EmbedObserver for Observer {
    fn batch(&self, size: usize, took: Duration) {
        self.metrics.embed_batch.observe(size as f64);
        self.metrics.embed_duration.observe(took.as_secs_f64());
    }
    fn expired(&self) {
        Skip::EmbedTimeout.count(&self.metrics);
    }
    fn failed(&self, error: &EmbedError) {
        let Ok(mut logged) = self.logged.lock() else { return };
        let now = std::time::Instant::now();
        if logged.0.is_some_and(|at| now.duration_since(at) < FAILURE_LOG_EVERY) {
            logged.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut logged.1);
        logged.0 = Some(now);
        drop(logged);
        tracing::warn!(%error, suppressed, "embedding failed; counted as cache misses (embed_failed)");
    }
}

impl Cache {
    /// Builds the cache; starts the embedder when the semantic cache is on. Missing or broken
    /// assets turn the semantic cache off (one log line, a metric), never the sidecar.
    /// `for_routing`: some route uses the `semantic` strategy, so the embedder is started
    /// even when the semantic cache is off.
    pub(crate) fn new(
        config: &CacheConfig,
        for_routing: bool,
        metrics: Arc<Metrics>,
        background: crate::tasks::Background,
    ) -> Cache {
        let cache = Cache {
            store: Store::default(),
            embedder: ArcSwapOption::empty(),
            embedding: std::sync::Mutex::new(Embedding {
                spec: EmbedderSpec::Off,
                stored: None,
            }),
            epochs: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::try_current().ok(),
            metrics,
            verify_permits: Arc::new(tokio::sync::Semaphore::new(MAX_VERIFICATIONS)),
            shadow_permits: Arc::new(tokio::sync::Semaphore::new(MAX_SHADOW_JUDGMENTS)),
            quality: Quality::default(),
            background,
            l2: std::sync::OnceLock::new(),
            external: std::sync::OnceLock::new(),
        };
        cache.reconfigure(config, for_routing);
        cache
    }

    /// Starts the embedder a config asks for, if it is not the live one (blocking: a local
    /// model loads from disk). A new embedder that cannot start leaves the live one serving;
    /// one that makes vectors of another space (another model, width or service) first
    /// empties the index: the vectors go, the entries stay for exact hits.
    pub(crate) fn reconfigure(&self, config: &CacheConfig, for_routing: bool) {
        let spec = EmbedderSpec::of(config, for_routing);
        let mut embedding = self.embedding.lock().unwrap_or_else(|p| p.into_inner());
        if embedding.spec == spec {
            return;
        }
        let started = match self.start_embedder(&spec) {
            Ok(e) => e,
            Err(error) if self.embedder.load().is_some() => {
                tracing::error!(%error, "the new embedder could not be started; the current one keeps serving");
                return;
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    "semantic cache OFF: the embedder could not be started; the exact cache still works"
                );
                None
            }
        };
        embedding.spec = spec;
        let Some(mut e) = started else {
            self.embedder.store(None);
            self.metrics.embedder_available.set(0);
            return;
        };
        let identity = e.identity.clone();
        // Another vector space: a new generation, and the old one's vectors are dropped.
        // The same one (a local model's threads changed): its vectors stay comparable.
        if embedding.stored.as_ref() == Some(&identity) {
            e.epoch = self.epochs.load(Ordering::Relaxed);
        } else {
            e.epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
            let n = self.store.clear_vectors(e.epoch);
            if embedding.stored.is_some() {
                self.metrics.cache_vectors_dropped.inc_by(n as u64);
                tracing::info!(
                    vectors = n,
                    embedder = &*identity,
                    "semantic index emptied: the new embedder's vectors cannot be compared with the old one's (the entries stay for exact hits)"
                );
            }
        }
        if let Some(d) = e.dimensions {
            self.store.set_dimensions(d);
        }
        self.embedder.store(Some(Arc::new(e)));
        self.metrics.embedder_available.set(1);
        embedding.stored = Some(identity);
    }

    /// The embedder `spec` asks for (`None` for `Off`).
    fn start_embedder(&self, spec: &EmbedderSpec) -> Result<Option<Embedder>, String> {
        let observer = Arc::new(Observer::new(self.metrics.clone()));
        match spec {
            EmbedderSpec::Off => Ok(None),
            EmbedderSpec::Local {
                assets_dir,
                queue,
                max_batch,
                threads,
                verifier,
            } => {
                let settings = EmbedderSettings {
                    queue: *queue,
                    max_batch: *max_batch,
                    intra_threads: *threads,
                    verifier: verifier.as_ref().map(|v| (v.model.clone(), v.tokenizer.clone())),
                };
                let e = Embedder::start(assets_dir, settings, observer).map_err(|e| e.to_string())?;
                tracing::info!(
                    assets = %assets_dir.display(), quantized = e.quantized, max_batch = e.max_batch,
                    verifier = e.verifier,
                    "semantic cache on: embedding model loaded"
                );
                Ok(Some(e))
            }
            EmbedderSpec::Remote { config, queue } => {
                if let Some(why) = &config.provider.unusable {
                    return Err(format!(
                        "provider {} of cache.semantic.embedder: {why}",
                        config.provider.name
                    ));
                }
                let runtime = self
                    .runtime
                    .clone()
                    .ok_or("a remote embedder needs the Tokio runtime the cache was made on")?;
                let client = crate::upstream::embeddings::Embeddings::new(config).map_err(|i| i.to_string())?;
                let settings = RemoteSettings {
                    queue: *queue,
                    max_batch: config.max_batch,
                    concurrency: config.concurrency,
                    max_chars: config.max_chars,
                    dimensions: config.dimensions,
                    identity: config.identity().into(),
                };
                let e =
                    Embedder::start_remote(Arc::new(client), settings, observer, runtime).map_err(|e| e.to_string())?;
                tracing::info!(
                    provider = &*config.provider.name, model = %config.model, max_batch = e.max_batch,
                    "semantic cache on: remote embedder"
                );
                Ok(Some(e))
            }
        }
    }

    pub(crate) fn semantic_available(&self) -> bool {
        self.embedder.load().is_some()
    }

    /// Embeds a text within `budget` on the embedder's threads (for semantic routing).
    /// `None` when there is no embedder, its queue is full, or the budget runs out.
    pub(crate) async fn embed(&self, text: &str, budget: Duration) -> Option<Vec<f32>> {
        let embedder = self.embedder.load_full()?;
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
    pub(crate) async fn prepare_examples(&self, route: &Route) -> bool {
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

    /// Looks the request up: exact, then semantic (within `config.semantic.timeout`).
    pub(crate) async fn lookup(&self, plan: &mut Plan, config: &CacheConfig) -> Option<Hit> {
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
        if let Some(hit) = self.external_lookup(plan, config, config.semantic.timeout).await {
            self.metrics.cache_lookup(CacheStatus::HitExact.label());
            return Some(hit);
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

    /// Stores a complete, successful JSON answer. The vector goes into the partition index
    /// off the event loop.
    pub(crate) fn store(&self, plan: Plan, response: Bytes, model: Arc<str>, config: &CacheConfig) {
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
            epoch,
            ..
        } = plan;
        let embedder = self.embedder.load_full();
        // A vector of an embedder replaced since the lookup (a reload) is not comparable with
        // the live one's: the entry is embedded again instead.
        let vector = vector
            .or_else(|| late.and_then(|l| l.get().cloned()))
            .filter(|_| embedder.as_ref().is_some_and(|e| e.epoch == epoch));
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
                    embedder: None,
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
        if let Some(store) = self.external.get() {
            let answer = StoredAnswer {
                answer: new.response.clone(),
                model: new.model.to_string(),
            };
            store.put(&CacheKey(new.exact), answer, config.ttl);
        }
        let (id, index, evicted) = self.store.insert(new, config.max_entries, config.max_bytes);
        self.metrics.cache_inserts.inc();
        self.evicted(&evicted);
        self.update_gauges();
        // Published once the vector is known, so other sidecars need not embed it again.
        let identity = embedder.as_ref().map(|e| e.identity.clone());
        let publish = move |vector: Option<Vec<f32>>| {
            if let Some((tx, mut out)) = outgoing {
                out.embedder = vector.as_ref().and(identity);
                out.vector = vector;
                // A full channel (Redis slow) drops the publication, never blocks the request.
                let _ = tx.try_send(out);
            }
        };
        match (index, query) {
            (Some(index), Some(query)) => self.index_vector(id, index, query, vector, embedder, publish),
            _ => publish(None),
        }
    }

    /// Adds a stored entry (this pod's, or one another pod published) to its partition's
    /// vector index: with the vector it came with when there was one, else embedded in the
    /// background (lookups have priority); `publish` gets the vector either way.
    fn index_vector(
        &self,
        id: u64,
        index: Arc<store::PartitionIndex>,
        query: String,
        vector: Option<Vec<f32>>,
        embedder: Option<Arc<Embedder>>,
        publish: impl FnOnce(Option<Vec<f32>>) + Send + 'static,
    ) {
        if let Some(v) = &vector {
            self.store.set_dimensions(v.len());
        }
        match (vector, embedder) {
            (Some(v), Some(embedder)) => {
                let epoch = embedder.epoch;
                tokio::task::spawn_blocking(move || {
                    index.add_from(epoch, id, &v);
                    publish(Some(v));
                });
            }
            (None, Some(embedder)) => {
                let deadline = std::time::Instant::now() + INSERT_EMBED_BUDGET;
                let metrics = self.metrics.clone();
                let epoch = embedder.epoch;
                let then = Box::new(move |v: Result<&[f32], Unembedded>| {
                    match v {
                        Ok(v) => {
                            index.add_from(epoch, id, v);
                        }
                        Err(Unembedded::Failed) => {
                            Skip::EmbedFailed.count(&metrics);
                        }
                        Err(Unembedded::TooLong) => {
                            Skip::TooLong.count(&metrics);
                        }
                        Err(_) => {}
                    }
                    publish(v.ok().map(<[f32]>::to_vec));
                });
                // A full queue, like a query too long to embed whole, leaves this entry
                // exact-only: lookups have priority.
                let _ = embedder.submit(query, Fit::Whole, deadline, Lane::Background, then);
            }
            (_, None) => publish(None),
        }
    }

    /// The semantic half did not run for this request: counted, and said in its log line.
    fn skip(&self, plan: &mut Plan, why: Skip) {
        plan.skipped = Some(why.count(&self.metrics));
    }

    /// Puts the embedding program's store behind this cache.
    pub(crate) fn attach_store(&self, store: Arc<dyn CacheStore>) {
        let _ = self.external.set(store);
    }

    /// The external store's answer for an exact miss, within `budget`; a hit is copied into
    /// this cache (exact-only) so the next one is served from memory.
    async fn external_lookup(&self, plan: &Plan, config: &CacheConfig, budget: Duration) -> Option<Hit> {
        let store = self.external.get()?;
        let key = CacheKey(plan.keys.exact);
        let count = |result: &'static str| {
            self.metrics
                .cache_store_lookups
                .get_or_create(&crate::telemetry::ResultLabels { result })
                .inc();
        };
        let found = match tokio::time::timeout(budget, store.get(&key)).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                count("miss");
                return None;
            }
            Err(_) => {
                count("timeout");
                return None;
            }
        };
        // Whoever wrote it, a broken answer is never served.
        if crate::openai::answer::check(&found.answer, crate::openai::answer::Expect::Choices).is_err() {
            count("malformed");
            return None;
        }
        count("hit");
        let model: Arc<str> = found.model.into();
        let new = NewEntry {
            exact: plan.keys.exact,
            partition: None,
            tenant: plan.tenant.clone(),
            route: plan.route.clone(),
            query: None,
            response: found.answer.clone(),
            model: model.clone(),
            expires: std::time::Instant::now() + config.ttl,
        };
        let (id, _, evicted) = self.store.insert(new, config.max_entries, config.max_bytes);
        self.evicted(&evicted);
        self.update_gauges();
        Some(Hit {
            kind: HitKind::Exact,
            response: found.answer,
            model,
            entry: id,
        })
    }

    /// Routes new entries to Redis (fleet mode); see `l2`.
    pub(crate) fn attach_l2(&self, tx: tokio::sync::mpsc::Sender<l2::Outgoing>) {
        let _ = self.l2.set(tx);
    }

    /// Inserts an entry another sidecar answered (fleet mode). Its vector is used as is when
    /// it comes from the same embedder; otherwise the entry is embedded here like a local
    /// insert.
    pub(crate) fn insert_remote(&self, e: l2::Incoming, config: &CacheConfig) {
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
        let embedder = self.embedder.load_full();
        // A vector from another embedder (a pod on another config, mid-rollout) lives in
        // another space: embedded here instead. Entries from before identities were sent
        // came from the local model.
        let sender = e.embedder.as_deref().unwrap_or(crate::embed::LOCAL_IDENTITY);
        let vector = e
            .vector
            .filter(|_| embedder.as_ref().is_some_and(|m| *m.identity == *sender));
        // Already published by the pod that answered: nothing to publish here.
        self.index_vector(id, index, query, vector, embedder, |_| {});
    }

    pub(crate) fn sweep(&self) {
        let n = self.store.sweep(std::time::Instant::now());
        if n > 0 {
            self.evictions("expired", n);
            self.update_gauges();
        }
    }

    /// Removes entries of a tenant and/or route (all when both are `None`); returns how many.
    pub(crate) fn purge(&self, tenant: Option<&str>, route: Option<&str>) -> usize {
        let n = self.store.purge(tenant, route);
        self.evictions("purge", n);
        self.update_gauges();
        n
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
