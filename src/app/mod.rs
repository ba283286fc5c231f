//! Assembling and running one sidecar: load the config (refusing to start on a bad one, before
//! any port is bound), bind the app and admin listeners, serve, watch the config, and shut down
//! in order: readiness false → optional drain delay → stop accepting → drain in-flight requests
//! and streams within the grace period → stop the admin port last, so probes and metrics
//! answer throughout the drain.

pub mod commands;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::config::source::FileSource;
use crate::server;
use crate::state::reload::Reloader;
use crate::state::{Runtime, Shared};
use crate::telemetry::Metrics;

/// Where a sidecar's config comes from.
pub enum ConfigInput {
    /// A file, watched and reloaded on change and on SIGHUP.
    File(PathBuf),
    /// Fixed text (the demo's embedded config); never reloaded.
    Text(String),
    /// A ConfigMap key, read and watched through the Kubernetes API.
    Kube(Box<KubeSource>),
}

/// How to start a [`Sidecar`]: its config and, optionally, addresses that override the
/// config's `listen` / `admin_listen` and where `${VAR}` references are looked up.
// What `Options`, `StartError` and `Sidecar::reload` speak of, and the binary's JSON log
// writer (for a host without a `tracing` subscriber of its own): the modules they live in are
// crate-private.
pub use crate::config::kube::{KubeSource, KubeSourceError};
pub use crate::config::source::SourceError;
pub use crate::config::{ConfigErrors, ConfigIssue, LoggingSettings, VarLookup};
pub use crate::state::reload::ReloadOutcome;
pub use crate::telemetry::{LogGuard, init_logging};

pub struct Options {
    pub config: ConfigInput,
    pub vars: Arc<dyn VarLookup + Send + Sync>,
    /// Overrides `listen` (tests use port 0).
    pub listen: Option<SocketAddr>,
    /// Overrides `admin_listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Extensions the host registered ([`Options::strategy`], [`Options::cache_store`],
    /// [`Options::sink`]).
    pub plugins: crate::plugin::Plugins,
}

impl Options {
    pub fn new(config: ConfigInput) -> Self {
        Options {
            config,
            vars: Arc::new(crate::config::Env),
            listen: None,
            admin_listen: None,
            plugins: crate::plugin::Plugins::default(),
        }
    }

    /// A config given as YAML text (never reloaded: there is nothing to watch).
    pub fn from_yaml(text: impl Into<String>) -> Self {
        Self::new(ConfigInput::Text(text.into()))
    }

    /// A config built as a value (`serde_json::json!`, or any `Serialize` type converted with
    /// `serde_json::to_value`): the same schema, keys and validation as the YAML (JSON is
    /// YAML), never reloaded. `${VAR}` references in strings are resolved as in a file.
    pub fn from_value(config: &serde_json::Value) -> Self {
        Self::from_yaml(config.to_string())
    }

    /// A config file, watched and reloaded on change (and by [`Sidecar::reload`]).
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self::new(ConfigInput::File(path.into()))
    }

    /// Serve the OpenAI API here instead of the config's `listen` (port 0: any free port,
    /// then [`Sidecar::app_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Serve metrics, probes and `/admin` here instead of the config's `admin_listen`.
    pub fn admin_listen(mut self, addr: SocketAddr) -> Self {
        self.admin_listen = Some(addr);
        self
    }

    /// Look `${VAR}`, `key_env` and `password_env` names up here instead of the process
    /// environment (a secret store, a test's fixed values).
    pub fn vars(mut self, vars: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.vars = Arc::new(vars);
        self
    }

    /// Registers a routing strategy that routes name with `strategy: plugin` and
    /// `plugin: <name>` (a config naming one that is not registered is refused).
    pub fn strategy(mut self, name: impl Into<String>, strategy: impl crate::plugin::RoutingStrategy) -> Self {
        self.plugins.strategies.insert(name.into(), Arc::new(strategy));
        self
    }

    /// Puts a shared cache store behind the sidecar's own cache (when `cache:` is on): asked
    /// after an exact miss, told every answer stored.
    pub fn cache_store(mut self, store: impl crate::plugin::CacheStore) -> Self {
        self.plugins.cache_store = Some(Arc::new(store));
        self
    }

    /// Adds a sink told about every finished request (several may be added).
    pub fn sink(mut self, sink: impl crate::plugin::RequestSink) -> Self {
        self.plugins.sinks.push(Arc::new(sink));
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Kube(#[from] crate::config::kube::KubeSourceError),
}

/// Exit statuses (sysexits.h), so an operator or a restart policy can tell what went wrong.
pub mod exit {
    /// EX_USAGE: the operator must fix the invocation or the config.
    pub const CONFIG: u8 = 64;
    /// EX_UNAVAILABLE: a service it needs (the Kubernetes API for the ConfigMap) is not there.
    pub(crate) const UNAVAILABLE: u8 = 69;
    /// EX_OSERR: the system refused something (a port to bind, threads, a file to write).
    pub const OS: u8 = 71;
    /// Anything else that failed (a calibration run, a broken assets folder).
    pub(crate) const FAILED: u8 = 1;
}

impl StartError {
    /// [`exit::CONFIG`] for a config the operator must fix, [`exit::OS`] otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_)
            | StartError::Source(SourceError::Read { .. })
            | StartError::Kube(crate::config::kube::KubeSourceError::NoKey { .. }) => exit::CONFIG,
            _ => exit::OS,
        }
    }
}

/// One running sidecar inside this process: the OpenAI API, the admin port, its config
/// watch and background tasks, on the current Tokio runtime. [`Sidecar::shutdown`] stops it
/// gracefully (as SIGTERM does for the binary); dropping it without that aborts nothing but
/// leaves its tasks running until the runtime ends.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use llm_sidecar::app::{Options, Sidecar};
/// use llm_sidecar::mock::MockUpstream;
///
/// // An OpenAI-compatible upstream for the example; any provider's base URL works.
/// let upstream = MockUpstream::start().await.unwrap();
/// let config = format!(
///     "providers: {{ p: {{ base_url: \"{}\", auth: {{ key_env: UPSTREAM_KEY }} }} }}\n\
///      models: {{ gpt-4o-mini: {{ provider: p }} }}\n",
///     upstream.base_url()
/// );
/// let sidecar = Sidecar::start(
///     Options::from_yaml(config)
///         .listen("127.0.0.1:0".parse().unwrap())
///         .admin_listen("127.0.0.1:0".parse().unwrap())
///         .vars(|name| (name == "UPSTREAM_KEY").then(|| "sk-example".to_owned())),
/// )
/// .await
/// .unwrap();
///
/// // Point an OpenAI SDK (or any HTTP client) at it.
/// let base_url = format!("http://{}/v1", sidecar.app_addr());
/// let answer = reqwest::Client::new()
///     .post(format!("{base_url}/chat/completions"))
///     .json(&serde_json::json!({
///         "model": "gpt-4o-mini",
///         "messages": [{ "role": "user", "content": "Say hello" }]
///     }))
///     .send()
///     .await
///     .unwrap();
/// assert_eq!(answer.status(), 200);
/// // The live metrics, as the admin port's /metrics serves them.
/// assert!(sidecar.metrics_text().contains("llm_sidecar_requests_total{"));
/// sidecar.shutdown().await;
/// # }
/// ```
pub struct Sidecar {
    app_addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    reloader: Option<Arc<Reloader>>,
    stop_app: watch::Sender<Option<Duration>>,
    stop_admin: watch::Sender<Option<Duration>>,
    app_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    /// The span exporter; flushed after the drain.
    trace_task: JoinHandle<()>,
    stop_trace: watch::Sender<bool>,
}

impl Sidecar {
    pub async fn start(opts: Options) -> Result<Sidecar, StartError> {
        let (text, source, kube) = match opts.config {
            ConfigInput::File(path) => {
                let source = FileSource::new(path);
                (source.read()?, Some(source), None)
            }
            ConfigInput::Text(t) => (t, None, None),
            ConfigInput::Kube(k) => (k.read().await?, None, Some(*k)),
        };
        let config = Config::load(&text, &*opts.vars)?;
        let runtime = Runtime::build(config, None, 1, &opts.plugins)?;
        let app_addr = opts.listen.unwrap_or(runtime.config.listen);
        let admin_addr = opts.admin_listen.unwrap_or(runtime.config.admin_listen);
        let app_listener = TcpListener::bind(app_addr)
            .await
            .map_err(|source| StartError::Bind { addr: app_addr, source })?;
        let admin_listener = TcpListener::bind(admin_addr).await.map_err(|source| StartError::Bind {
            addr: admin_addr,
            source,
        })?;
        let app_addr = app_listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr: app_addr, source })?;
        let admin_addr = admin_listener.local_addr().map_err(|source| StartError::Bind {
            addr: admin_addr,
            source,
        })?;

        let mut metrics = Metrics::new();
        if runtime.config.redis.is_some() {
            metrics.fleet_mode();
        }
        let shared = Shared::new(runtime, Arc::new(metrics), opts.plugins);
        let _ = shared.admin_addr.set(admin_addr);
        let (stop_app, app_rx) = watch::channel(None);
        let (stop_admin, admin_rx) = watch::channel(None);
        let s = shared.clone();
        // The servers and the span exporter are awaited, in order, by `shutdown`.
        #[allow(clippy::disallowed_methods)]
        let app_task = tokio::spawn(server::serve(
            app_listener,
            move |req| server::handle(s.clone(), req),
            app_rx,
            shared.streams_cut.clone(),
        ));
        let s = shared.clone();
        #[allow(clippy::disallowed_methods)]
        let admin_task = tokio::spawn(server::serve(
            admin_listener,
            move |req| server::admin::handle(s.clone(), req),
            admin_rx,
            tokio_util::sync::CancellationToken::new(),
        ));

        let mut reloader = None;
        if let Some(source) = source {
            let r = Arc::new(Reloader::new(shared.clone(), Some(source), opts.vars.clone()));
            match r.source().map(FileSource::watch) {
                Some(Ok(mut changes)) => {
                    let r2 = r.clone();
                    shared.background.spawn(async move {
                        while changes.next().await.is_some() {
                            let r3 = r2.clone();
                            let _ = tokio::task::spawn_blocking(move || r3.reload(false)).await;
                        }
                        tracing::warn!("the config watch ended; reload with SIGHUP");
                    });
                }
                // Still serve: SIGHUP reloads work without the watch.
                Some(Err(e)) => tracing::error!(error = %e, "cannot watch the config for changes; reload with SIGHUP"),
                None => {}
            }
            reloader = Some(r);
        }
        if let Some(kube) = kube {
            let r = Arc::new(Reloader::new(shared.clone(), None, opts.vars.clone()));
            let r2 = r.clone();
            let what = format!("{}/{}", kube.namespace, kube.name);
            tracing::info!(configmap = %what, key = %kube.key, "watching the config through the Kubernetes API");
            let mut changes = kube.watch();
            shared.background.spawn(async move {
                while let Some(change) = changes.recv().await {
                    match change {
                        crate::config::kube::Change::Text(text) => {
                            let r3 = r2.clone();
                            let _ = tokio::task::spawn_blocking(move || r3.apply_text(text)).await;
                        }
                        crate::config::kube::Change::Gone(why) => {
                            r2.metrics().reload("source_gone");
                            tracing::warn!(configmap = %what, %why, "config source gone; the last good config keeps serving");
                        }
                    }
                }
            });
            reloader = Some(r);
        }
        let cache = shared.cache.clone();
        shared.background.spawn(async move {
            let mut tick = tokio::time::interval(crate::cache::SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                cache.sweep();
            }
        });
        shared.background.spawn(upkeep(shared.clone()));
        start_fleet(&shared);
        let (stop_trace, trace_rx) = watch::channel(false);
        #[allow(clippy::disallowed_methods)]
        let trace_task = tokio::spawn(crate::telemetry::trace::export::run(shared.tracer.clone(), trace_rx));
        shared.health.set_ready(true);
        let rt = shared.runtime.load();
        tracing::info!(
            %app_addr, %admin_addr,
            providers = rt.providers.len(), models = rt.config.models.len(), routes = rt.config.routes.len(),
            version = rt.config.version.as_deref().unwrap_or(""),
            "llm-sidecar serving"
        );
        Ok(Sidecar {
            app_addr,
            admin_addr,
            shared,
            reloader,
            stop_app,
            stop_admin,
            app_task,
            admin_task,
            trace_task,
            stop_trace,
        })
    }

    pub fn app_addr(&self) -> SocketAddr {
        self.app_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The live metrics in the Prometheus/OpenMetrics text format (what `/metrics` serves):
    /// for a host program that exports its own metrics endpoint.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Re-reads the config file now. `None` when the config is not from a file. With `force`
    /// (SIGHUP) an unchanged file is applied anyway, re-reading key files and CA bundles.
    pub async fn reload(&self, force: bool) -> Option<ReloadOutcome> {
        let r = self.reloader.clone()?;
        tokio::task::spawn_blocking(move || r.reload(force)).await.ok()
    }

    /// Graceful shutdown; returns when every connection has finished or the grace period ended.
    pub async fn shutdown(self) {
        let server = self.shared.runtime.load().config.server.clone();
        self.shared.health.set_ready(false);
        tracing::info!(grace = ?server.shutdown_grace, drain_delay = ?server.drain_delay, "shutting down: readiness is now false");
        // Config watches, sweeps, upkeep and probes, fleet sync, background verifications and
        // shadow judgments, dashboard streams: all stopped, and awaited.
        if !self.shared.background.stop(BACKGROUND_STOP).await {
            tracing::warn!(
                remaining = self.shared.background.len(),
                "background tasks still running after {BACKGROUND_STOP:?}"
            );
        }
        tokio::time::sleep(server.drain_delay).await;
        let _ = self.stop_app.send(Some(server.shutdown_grace));
        let _ = self.app_task.await;
        // Every request has finished: its spans are queued; send them before the pod goes.
        let _ = self.stop_trace.send(true);
        let flush = crate::telemetry::trace::export::SHUTDOWN_FLUSH + Duration::from_secs(1);
        if tokio::time::timeout(flush, self.trace_task).await.is_err() {
            tracing::warn!("tracing: the last spans could not be exported in time");
        }
        let _ = self.stop_admin.send(Some(Duration::from_secs(1)));
        let _ = self.admin_task.await;
        tracing::info!("shutdown complete");
    }
}

/// Starts fleet mode when the config has a `redis` section (read at start; a reload that
/// changes it applies at the next restart).
fn start_fleet(shared: &Arc<Shared>) {
    let rt = shared.runtime.load();
    let Some(redis) = rt.config.redis.clone() else {
        return;
    };
    tracing::info!(url = %redis.url, prefix = %redis.key_prefix, cache = redis.cache, "fleet mode: limits, budgets and cache shared through Redis");
    let s = shared.clone();
    let tenants: crate::limits::fleet::TenantsSource = Arc::new(move || s.runtime.load().config.clone());
    shared.background.spawn(crate::limits::fleet::run(
        shared.ledger.clone(),
        redis.clone(),
        tenants,
        shared.metrics.clone(),
    ));
    if redis.cache && rt.config.cache.enabled {
        let s = shared.clone();
        let settings = Arc::new(move || s.runtime.load().config.cache.clone());
        crate::cache::l2::spawn(
            &shared.background,
            shared.cache.clone(),
            redis,
            settings,
            shared.metrics.clone(),
        );
    }
}

/// How often the upkeep task looks for due health checks and new snapshots.
/// How long shutdown waits for the background tasks once they are told to stop (they stop at
/// their next await point; this only bounds a task stuck in blocking code).
const BACKGROUND_STOP: Duration = Duration::from_secs(1);
const UPKEEP_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Background upkeep that follows the live snapshot: active provider health checks (each at
/// its own interval, never two at once for one provider) and, after each new snapshot, the
/// embeddings of `semantic` route examples, so the first routed request does not pay for them.
async fn upkeep(shared: Arc<Shared>) {
    use std::collections::HashMap;
    let mut due: HashMap<Arc<str>, tokio::time::Instant> = HashMap::new();
    let running: Arc<std::sync::Mutex<std::collections::HashSet<Arc<str>>>> = Arc::default();
    let mut generation = 0;
    let mut tick = tokio::time::interval(UPKEEP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rt = shared.runtime.load_full();
        if rt.generation != generation {
            generation = rt.generation;
            let (s, r) = (shared.clone(), rt.clone());
            shared.background.spawn(async move {
                for route in r.router.routes().iter().filter(|r| !r.examples.is_empty()) {
                    if !s.cache.prepare_examples(route).await {
                        tracing::warn!(
                            route = &*route.name,
                            "semantic route examples could not be embedded (no embedder?): the route falls through"
                        );
                    }
                }
            });
        }
        let now = tokio::time::Instant::now();
        for (name, provider) in &rt.providers {
            // A provider without its key would only answer 401: nothing to learn.
            let Some(check) = provider
                .config
                .health_check
                .clone()
                .filter(|_| provider.config.unusable.is_none())
            else {
                continue;
            };
            let next = due.entry(name.clone()).or_insert(now);
            if *next > now || running.lock().map(|r| r.contains(name)).unwrap_or(true) {
                continue;
            }
            *next = now + check.interval;
            if let Ok(mut r) = running.lock() {
                r.insert(name.clone());
            }
            let (s, r, p, running) = (shared.clone(), rt.clone(), provider.clone(), running.clone());
            shared.background.spawn(async move {
                let result = crate::resilience::health::probe(&p, &check).await;
                let label = if result.is_ok() { "ok" } else { "failed" };
                s.metrics
                    .health_checks
                    .get_or_create(&crate::telemetry::UpstreamErrorLabels {
                        provider: p.name().clone(),
                        kind: label,
                    })
                    .inc();
                if let Err(error) = result {
                    for h in r.health.iter().filter(|h| h.provider == *p.name()) {
                        if let Some(t) = h.force_open(&r.config.resilience.breaker) {
                            s.metrics
                                .circuit_transition(&h.provider, &h.model, t.to.gauge(), t.to.label());
                            tracing::warn!(provider = &*h.provider, model = &*h.model, %error, "health check failed: circuit opened");
                        }
                    }
                }
                if let Ok(mut r) = running.lock() {
                    r.remove(p.name());
                }
            });
        }
    }
}

/// Serves until SIGTERM or SIGINT, reloading on SIGHUP, then shuts down gracefully.
pub(crate) async fn run_until_signal(sidecar: Sidecar) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                if sidecar.reload(true).await.is_none() {
                    tracing::info!("SIGHUP ignored: the config is built in, not read from a file");
                }
            }
        }
    }
    sidecar.shutdown().await;
    Ok(())
}
