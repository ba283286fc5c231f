//! The live state of one sidecar: the current [`Runtime`] snapshot behind one `ArcSwap`, the
//! metrics registry and the health flags. A `Runtime` holds the config and everything derived
//! from it (provider clients, router, tenants, the `/v1/models` answer), so one `load()` per
//! request gives a consistent view: there is no second `ArcSwap` to tear against.

pub mod reload;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::cache::Cache;
use crate::config::{Config, ConfigErrors, ConfigIssue};
use crate::limits::Tenants;
use crate::resilience::{HealthRegistry, RetryBudget};
use crate::router::Router;
use crate::telemetry::{Metrics, ProviderLabels};
use crate::upstream::Provider;
use crate::upstream::redact::Redactor;

/// One immutable, fully prepared configuration.
pub struct Runtime {
    pub(crate) config: Arc<Config>,
    /// 1 for the config loaded at start, +1 per applied reload.
    pub(crate) generation: u64,
    pub(crate) loaded_at: SystemTime,
    pub(crate) providers: HashMap<Arc<str>, Arc<Provider>>,
    /// Circuit breakers and latency per model; carried over across reloads.
    pub(crate) health: HealthRegistry,
    pub(crate) router: Router,
    pub(crate) tenants: Tenants,
    /// The `GET /v1/models` body, rendered once per snapshot.
    pub(crate) models_json: Bytes,
    /// This config's secrets, masked in everything relayed or generated for the app.
    pub(crate) redact: Arc<Redactor>,
    /// The callouts before routing and after the answer.
    pub(crate) callouts: crate::callout::Callouts,
}

impl Runtime {
    /// Prepares a snapshot. Fallible work (TLS roots, CA files) happens here, before any swap.
    /// Provider clients whose settings did not change are carried over from `previous`, so a
    /// reload keeps their warm connection pools.
    /// `plugins`: what the program embedding the sidecar registered (none in the binary).
    pub(crate) fn build(
        config: Config,
        previous: Option<&Runtime>,
        generation: u64,
        plugins: &crate::plugin::Plugins,
    ) -> Result<Runtime, ConfigErrors> {
        let mut providers = HashMap::new();
        let mut issues = Vec::new();
        if config.models.is_empty() {
            // An emptied ConfigMap, a comment-only file, an editor's half-written save: each
            // parses, and each would answer every request of every pod with model_not_found.
            // Refused like any invalid config, so the last good one keeps serving.
            issues.push(ConfigIssue::new(
                "models",
                "no model is defined, so this config cannot serve any request (an empty, comment-only or half-written config?): define at least one model and its provider",
            ));
            return Err(ConfigErrors(issues));
        }
        let weights: Vec<u32> = config.scheduling.classes.iter().map(|(_, w)| *w).collect();
        for (name, pc) in &config.providers {
            let reused = previous
                .and_then(|p| p.providers.get(name.as_str()))
                .filter(|old| *old.config == **pc)
                .cloned();
            let provider = match reused {
                Some(p) => p,
                None => match Provider::new(pc.clone(), &weights) {
                    Ok(p) => Arc::new(p),
                    Err(issue) => {
                        issues.push(issue);
                        continue;
                    }
                },
            };
            providers.insert(pc.name.clone(), provider);
        }
        if !issues.is_empty() {
            return Err(ConfigErrors(issues));
        }
        let health = HealthRegistry::carry(config.models.values(), previous.map(|p| &p.health), |m| {
            previous
                .and_then(|p| p.config.models.get(&*m.name))
                .is_some_and(|old| old.upstream_model == m.upstream_model)
        });
        if let Some((i, name)) = Router::missing_plugin(&config, plugins) {
            let registered: Vec<&str> = plugins.strategies.keys().map(String::as_str).collect();
            return Err(ConfigErrors(vec![ConfigIssue::new(
                format!("routes[{i}].plugin"),
                format!(
                    "{name:?} is not a registered strategy: a plugin strategy is registered by a program embedding the sidecar (Options::strategy); registered: {}",
                    if registered.is_empty() {
                        "none".to_owned()
                    } else {
                        registered.join(", ")
                    }
                ),
            )]));
        }
        let router = Router::new(&config, &health, previous.map(|p| &p.router), plugins);
        let tenants = Tenants::new(&config.tenants);
        let models_json = models_json(&router);
        let redact = Arc::new(Redactor::from_config(&config));
        let callouts = crate::callout::Callouts::new(&config.callouts, previous.map(|p| &p.callouts))
            .map_err(|issue| ConfigErrors(vec![issue]))?;
        Ok(Runtime {
            config: Arc::new(config),
            generation,
            loaded_at: SystemTime::now(),
            providers,
            health,
            router,
            tenants,
            models_json,
            redact,
            callouts,
        })
    }
}

impl Runtime {
    /// Points each provider's scheduler at this snapshot's priority classes and their
    /// queue-depth gauges.
    pub(crate) fn attach(&self, metrics: &Metrics) {
        let weights: Vec<u32> = self.config.scheduling.classes.iter().map(|(_, w)| *w).collect();
        for p in self.providers.values() {
            let gauges = self
                .config
                .scheduling
                .classes
                .iter()
                .map(|(class, _)| metrics.queue_depth(p.name(), class))
                .collect();
            p.scheduler.configure(&weights, gauges);
        }
        for h in self.health.iter() {
            metrics.circuit(&h.provider, &h.model, h.state().gauge());
        }
        for p in self.config.providers.values() {
            let labels = ProviderLabels {
                provider: p.name.clone(),
            };
            metrics
                .provider_usable
                .get_or_create(&labels)
                .set(i64::from(p.unusable.is_none()));
            if let Some(why) = &p.unusable {
                tracing::warn!(
                    provider = &*p.name,
                    reason = &**why,
                    "provider unusable: its models answer 503 provider_unavailable, the other providers serve"
                );
            }
        }
    }
}

/// Some route uses the `semantic` strategy, so an embedder is needed even without the
/// semantic cache.
pub(crate) fn semantic_routes(config: &Config) -> bool {
    config
        .routes
        .iter()
        .any(|r| r.strategy == crate::config::Strategy::Semantic)
}

fn models_json(router: &Router) -> Bytes {
    let data: Vec<_> = router
        .model_ids
        .iter()
        .map(|id| serde_json::json!({"id": &**id, "object": "model", "created": 0, "owned_by": "llm-sidecar"}))
        .collect();
    Bytes::from(serde_json::to_vec(&serde_json::json!({"object": "list", "data": data})).unwrap_or_default())
}

/// Liveness and readiness, as the admin port reports them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Everything a request handler needs, shared by all connections.
pub struct Shared {
    pub(crate) runtime: ArcSwap<Runtime>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Health,
    /// The response cache outlives config snapshots; each request reads its settings from
    /// the snapshot it started with.
    pub(crate) cache: Arc<Cache>,
    /// Retries the whole pod may spend, across reloads.
    pub(crate) retry_budget: RetryBudget,
    /// Rate-limit windows, spend and usage per tenant, across reloads.
    pub(crate) ledger: Arc<crate::limits::ledger::Ledger>,
    /// When this sidecar started (for `/admin/usage`).
    pub(crate) started_unix: u64,
    /// What the traffic says could be saved (`/admin/advice`).
    pub(crate) advisor: Arc<crate::telemetry::advice::Advisor>,
    /// Recent requests for the live dashboard.
    pub(crate) live: Arc<crate::telemetry::live::Live<crate::router::Reason>>,
    /// OpenTelemetry: the sampler's settings and the queue to the exporter, across reloads.
    pub(crate) tracer: Arc<crate::telemetry::trace::Tracer>,
    /// Cancelled when the shutdown grace period ends: open streams end with an error event.
    pub(crate) streams_cut: tokio_util::sync::CancellationToken,
    /// Every background task (see `tasks`), stopped together at shutdown.
    pub(crate) background: crate::tasks::Background,
    /// Where the admin port is bound: off loopback, what changes state or shows prompts
    /// needs a token.
    pub(crate) admin_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Which provider made each Responses API response relayed here, so follow-ups
    /// (`previous_response_id`) go where the conversation's state is.
    pub(crate) response_owners: crate::router::affinity::ResponseOwners,
    /// What the program embedding the sidecar registered: strategies (for reloads), the
    /// cache store (in `cache`), sinks.
    pub(crate) plugins: crate::plugin::Plugins,
    /// `plugins.sinks`, shared by every request's record (`None`: there are none).
    pub(crate) sinks: Option<crate::plugin::Sinks>,
}

impl Shared {
    pub(crate) fn new(runtime: Runtime, metrics: Arc<Metrics>, plugins: crate::plugin::Plugins) -> Arc<Self> {
        metrics.config_generation.set(runtime.generation as i64);
        runtime.attach(&metrics);
        let background = crate::tasks::Background::default();
        let cache = Arc::new(Cache::new(
            &runtime.config.cache,
            semantic_routes(&runtime.config),
            metrics.clone(),
            background.clone(),
        ));
        if let Some(store) = &plugins.cache_store {
            cache.attach_store(store.clone());
        }
        let tracer = crate::telemetry::trace::Tracer::new(metrics.clone());
        tracer.configure(runtime.config.tracing.clone());
        Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            health: Health::default(),
            cache,
            retry_budget: RetryBudget::default(),
            ledger: Arc::default(),
            started_unix: crate::limits::ledger::now_ms() / 1000,
            advisor: Arc::default(),
            live: Arc::default(),
            tracer,
            streams_cut: tokio_util::sync::CancellationToken::new(),
            background,
            admin_addr: std::sync::OnceLock::new(),
            response_owners: Default::default(),
            sinks: (!plugins.sinks.is_empty()).then(|| plugins.sinks.iter().cloned().collect()),
            plugins,
        })
    }
}
