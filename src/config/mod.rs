//! Configuration: the YAML schema (`raw`), `${VAR}` interpolation, and validation into the typed,
//! immutable [`Config`] that everything else reads. Loading is one pure function from text to
//! `Result<Config, ConfigErrors>`; every problem found is reported at once, each with the exact
//! key path and what to change. Watching the file for changes lives in `source`; reading and
//! watching a ConfigMap through the Kubernetes API lives in `kube`.

pub mod interpolate;
pub mod kube;
pub mod otel;
pub mod raw;
pub mod source;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

pub use interpolate::{Env, VarLookup};
pub use otel::{OtlpProtocol, SamplerConfig, TracingConfig};

/// Default address the app talks to: loopback only, so nothing outside the pod can spend the
/// pod's budget.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin address. Loopback by default; the Kubernetes chart sets `0.0.0.0:9901` so the
/// kubelet's probes and Prometheus can reach it.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Chat requests with long histories or base64 images are megabytes; 32 MiB admits the largest
/// image inputs OpenAI accepts while still bounding memory per request.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// The app shares the pod's loopback with the sidecar: even a 32 MiB body arrives in well
/// under a second. A body still arriving after this long is stalled or hostile.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Past [`BODY_RATE_GRACE`], a request body must keep up this average rate (bytes/s). Loopback
/// moves hundreds of MB/s; 16 KiB/s only stops trickles, which pin a connection, a task and
/// the bytes received for as long as the sender likes.
pub const DEFAULT_BODY_MIN_RATE: u64 = 16 * 1024;
/// Time any body gets before the minimum rate applies (an app that builds its body while
/// sending it, a paused debugger).
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(5);
/// Kubernetes' default `terminationGracePeriodSeconds` is 30 s; draining for slightly less
/// leaves time to exit before SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// Time between readiness turning false and the listener closing, so that endpoints
/// controllers stop routing to the pod first. Zero outside Kubernetes.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::ZERO;
/// Connecting to a provider should take milliseconds; seconds means it is down.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Large models with long prompts can take a minute before the first token (or the whole
/// JSON answer, which arrives with the headers).
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);
/// Reasoning models can pause between stream chunks; a minute of silence means a stall.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on one request, stream included.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(600);
/// Concurrent upstream requests per provider: enough for one pod's traffic; bounds sockets.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// One retry per candidate: most transient failures (a dropped connection, a 503 during a
/// deploy) clear within one backoff; more retries mostly add latency before failover.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_millis(100);
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(2);
/// Providers send `retry-after: 20` on rate limits; the app is better served by the next
/// candidate than by a 20 s wait.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Retries may add at most 20 % load (the figure gRPC and Finagle use), plus a floor.
pub const DEFAULT_RETRY_RATIO: f64 = 0.2;
pub const DEFAULT_RETRY_MIN_PER_SECOND: f64 = 1.0;
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_BREAKER_CONSECUTIVE: u32 = 5;
pub const DEFAULT_BREAKER_RATIO: f64 = 0.5;
pub const DEFAULT_BREAKER_MIN_REQUESTS: u32 = 20;
pub const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(30);
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);
/// A request waiting for a provider slot longer than this gets 503 with `retry-after`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_QUEUED: u64 = 1024;
/// Priority classes when the config names none: weights 8:4:1, so batch work still gets a
/// slot in every 13 under contention.
pub const DEFAULT_CLASSES: &[(&str, u32)] = &[("realtime", 8), ("interactive", 4), ("batch", 1)];
pub const DEFAULT_CLASS: &str = "interactive";
/// Cosine needed between the last user turn and a destination's examples (MiniLM puts
/// on-topic paraphrases above ~0.5 and unrelated text below ~0.3).
pub const DEFAULT_SEMANTIC_ROUTE_THRESHOLD: f32 = 0.5;
pub const DEFAULT_COMPLEXITY_THRESHOLD: f64 = 0.5;
pub const DEFAULT_CANARY_WINDOW: Duration = Duration::from_secs(60);
pub const DEFAULT_CANARY_MIN_REQUESTS: u32 = 20;
pub const DEFAULT_CANARY_MAX_ERROR_RATE: f64 = 0.1;
/// A soft budget limit at 80 %: time to react (a cheaper tier, an alert) before the hard stop.
pub const DEFAULT_SOFT_RATIO: f64 = 0.8;
/// A Redis call slower than this is treated as Redis being down for that call.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// Counters go to Redis every 100 ms: fleet-wide limits overshoot by at most what the fleet
/// serves in that time, and no request waits for Redis.
pub const DEFAULT_REDIS_SYNC: Duration = Duration::from_millis(100);
pub const DEFAULT_WARM_ENTRIES: u64 = 10_000;
pub const DEFAULT_STREAM_MAX_LEN: u64 = 100_000;

/// Cached answers live this long unless `cache.ttl` says otherwise: long enough to matter for
/// repeated questions, short enough that stale facts age out within the working day.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Entries held per sidecar (the semantic index and packed answers for 100k entries fit the
/// 200 MB memory goal with the quantized model: 196 MB measured, `benches/semantic.rs`).
pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 100_000;
/// Bytes of cached responses per sidecar.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 128 << 20;
/// OpenAI's default temperature is 1.0; requests at or below it may be served from cache.
pub const DEFAULT_MAX_TEMPERATURE: f64 = 1.0;
/// Cosine similarity needed for a semantic hit, before the guard: the four paraphrase sets the
/// guard was developed with serve no wrong answer there while finding 60–85 % of same-answer
/// pairs; on the two unseen sets it serves 1 wrong in 38 hits, against 4 in 50 at 0.88
/// (`llm-sidecar calibrate`, docs/cache.md).
pub const DEFAULT_SEMANTIC_THRESHOLD: f32 = 0.90;
/// A semantic lookup (embed + search) that takes longer than this is a miss: it must never
/// cost the app more than a few percent of an LLM call.
pub const DEFAULT_SEMANTIC_TIMEOUT: Duration = Duration::from_millis(50);
/// Share of semantic hits verified against the provider in the background: 5 % costs 5 % of
/// what the semantic cache saves, and finds a systematically wrong pairing within tens of hits.
pub const DEFAULT_VERIFY_SAMPLE: f32 = 0.05;
/// Two answers to the same question by the same model embed at ≥ 0.85 in practice; answers to
/// different questions that share a topic fall below.
pub const DEFAULT_VERIFY_AGREEMENT: f32 = 0.85;
/// How far below the threshold the token-alignment band reaches, and how close every content
/// word's partner must be there: over the nine labelled sets in data/ (guard on), serving
/// cosine 0.85–0.90 pairs whose worst-aligned word reaches 0.5 raised recall from 44 % to 53 %
/// with no wrong answer added (docs/cache.md, "Token alignment").
pub const DEFAULT_ALIGNMENT_BAND: f32 = 0.05;
pub const DEFAULT_MIN_ALIGNMENT: f32 = 0.5;
/// A pair verifier's score (a probability) a semantic hit needs: even odds.
pub const DEFAULT_VERIFIER_MIN_SCORE: f32 = 0.5;
/// The lowest threshold `max_wrong_rate` may choose, and where shadow judging starts: below
/// 0.80 the model's neighbours are mostly other questions on the same topic.
pub const DEFAULT_MIN_THRESHOLD: f32 = 0.80;
/// The highest threshold `max_wrong_rate` may choose: where a route with too little evidence,
/// or one that cannot meet its bound, serves (in practice only near-identical wordings).
pub const DEFAULT_MAX_THRESHOLD: f32 = 0.99;
/// Lookups waiting for the embedder; beyond this the queue is full and lookups miss at once.
pub const DEFAULT_EMBED_QUEUE: u64 = 256;
/// Texts that are never cached (and never embedded): e-mail addresses, payment card numbers,
/// US social security numbers, IBANs.
pub const DEFAULT_PRIVACY_PATTERNS: &[&str] = &[
    r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b",
    r"\b(?:\d[ -]?){13,19}\b",
    r"\b\d{3}-\d{2}-\d{4}\b",
    // An IBAN: country, check digits, then an 11–30 character BBAN, printed in groups of four
    // or not at all; the last group is often short (DE, GB: 18 characters; FR: 23; NL: 14).
    r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
];

/// A validated configuration. Cheap to share (`Arc`), never mutated: a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Config {
    pub version: Option<String>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub server: ServerSettings,
    pub logging: LoggingSettings,
    pub providers: BTreeMap<String, Arc<ProviderConfig>>,
    pub models: BTreeMap<String, Arc<ModelConfig>>,
    pub routes: Vec<RouteConfig>,
    pub default_route: Option<String>,
    pub tenants: TenantsConfig,
    pub cache: CacheConfig,
    pub routing: RoutingSettings,
    pub resilience: ResilienceConfig,
    pub scheduling: SchedulingConfig,
    /// Fleet mode: limits, budgets and the L2 cache shared through Redis.
    pub redis: Option<RedisConfig>,
    /// OpenTelemetry trace export; `None` when tracing is off.
    pub tracing: Option<Arc<TracingConfig>>,
    /// SHA-256 of the source text, so a reload of identical bytes is recognised and skipped.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub max_body_bytes: usize,
    /// The whole request body must arrive within this.
    pub body_timeout: Duration,
    /// Bytes per second a request body must average after [`BODY_RATE_GRACE`]; 0: no minimum.
    pub body_min_rate: u64,
    pub shutdown_grace: Duration,
    pub drain_delay: Duration,
    /// When set, `/dashboard` and `/admin/*` need `Authorization: Bearer TOKEN` (or
    /// `?token=TOKEN`, for the browser's event stream).
    pub admin_token: Option<SecretString>,
    /// Show the first words of prompts on the dashboard (off: metadata only).
    pub dashboard_prompts: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal (a container), text otherwise.
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoggingSettings {
    pub format: LogFormat,
    pub level: String,
}

/// A provider: where an OpenAI-compatible API lives and how to authenticate to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: Arc<str>,
    pub base_url: Uri,
    pub auth: Option<(HeaderName, Secret)>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Already encoded `k=v&k2=v2`, appended to every upstream URL (Azure's `api-version`).
    pub query: String,
    pub ca_file: Option<PathBuf>,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    pub inject_stream_usage: bool,
    pub kind: ProviderKind,
    pub health_check: Option<HealthCheck>,
}

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI's API and everything compatible with it (Azure OpenAI, vLLM, Ollama, …).
    OpenAi,
    /// Anthropic's Messages API, translated to and from OpenAI chat completions.
    Anthropic,
}

/// An optional active probe: a `GET` on `path` every `interval`; failures open the circuit of
/// every model on the provider before an app request finds out.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

/// A secret header value. Its `Debug` never shows the value, so a config dump or a log of a
/// struct holding it cannot leak the key.
#[derive(Clone, PartialEq)]
pub struct Secret(pub HeaderValue);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One entry of the model catalogue: the name the app uses and what it maps to.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: Arc<str>,
    pub provider: Arc<str>,
    pub upstream_model: Arc<str>,
    pub pricing: Pricing,
    /// Prompt + completion tokens the model accepts; `None` when not declared.
    pub context_window: Option<u64>,
    pub capabilities: Capabilities,
}

/// What a model can do, as declared in the catalogue. A model that declares nothing is
/// assumed to do everything, so adding the key is what narrows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities(u8);

impl Capabilities {
    pub const NONE: Capabilities = Capabilities(0);
    pub const TOOLS: Capabilities = Capabilities(1);
    pub const VISION: Capabilities = Capabilities(2);
    pub const JSON: Capabilities = Capabilities(4);
    pub const ALL: Capabilities = Capabilities(7);
    pub const NAMES: [(&'static str, Capabilities); 3] =
        [("tools", Self::TOOLS), ("vision", Self::VISION), ("json", Self::JSON)];

    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    /// Names of the capabilities in `self`, for error messages.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(_, c)| self.contains(*c))
            .map(|(n, _)| *n)
            .collect()
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pricing {
    pub input: f64,
    pub output: f64,
    pub cached_input: f64,
}

impl Pricing {
    /// Cost in USD of one request's usage; cached prompt tokens are billed at the cached rate.
    pub fn cost(&self, prompt_tokens: u64, cached_tokens: u64, completion_tokens: u64) -> f64 {
        let cached = cached_tokens.min(prompt_tokens);
        let fresh = prompt_tokens - cached;
        (fresh as f64 * self.input + cached as f64 * self.cached_input + completion_tokens as f64 * self.output)
            / 1_000_000.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Targets in the order written: the first is primary, the rest are fallbacks.
    Ordered,
    /// A/B split by `weight`, optionally sticky per tenant or `user`.
    Weighted,
    /// `canary.percent` of requests to `canary.model` first, reverted automatically when it
    /// misbehaves.
    Canary,
    /// Lowest estimated price first among targets that fit the request.
    Cheapest,
    /// Lowest observed latency first (power of two choices over an EWMA).
    Fastest,
    /// The target whose example utterances are nearest to the last user turn.
    Semantic,
    /// The `light` or `strong` tier, by a score of the prompt's complexity.
    Complexity,
}

impl Strategy {
    pub const NAMES: [(&'static str, Strategy); 7] = [
        ("ordered", Strategy::Ordered),
        ("weighted", Strategy::Weighted),
        ("canary", Strategy::Canary),
        ("cheapest", Strategy::Cheapest),
        ("fastest", Strategy::Fastest),
        ("semantic", Strategy::Semantic),
        ("complexity", Strategy::Complexity),
    ];

    pub fn label(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("ordered", |(n, _)| n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Light,
    Strong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sticky {
    /// A fresh draw per request.
    None,
    Tenant,
    /// The request's `user` field (falls back to the tenant when absent).
    User,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    pub model: Arc<str>,
    pub weight: u32,
    pub tier: Option<Tier>,
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CanaryConfig {
    pub model: Arc<str>,
    /// 0–100.
    pub percent: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub max_error_rate: f64,
    pub max_latency: Option<Duration>,
}

/// Conditions besides the requested model; all that are given must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatchConfig {
    pub tenants: Vec<Arc<str>>,
    pub header: Option<(HeaderName, Vec<String>)>,
    /// Lower-cased; any one found in the last user turn matches.
    pub keywords: Vec<String>,
    /// Checked to compile at validation; compiled again by the router.
    pub regex: Option<String>,
    /// `Some(true)`: only tenants past their soft budget limit; `Some(false)`: only below it.
    pub budget_soft: Option<bool>,
}

impl MatchConfig {
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.header.is_none()
            && self.keywords.is_empty()
            && self.regex.is_none()
            && self.budget_soft.is_none()
    }

    pub fn needs_text(&self) -> bool {
        !self.keywords.is_empty() || self.regex.is_some()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: Arc<str>,
    /// Requested model names that select this route: exact names or globs (`gpt-4*`); empty
    /// means any model (then `when` must say something).
    pub models: Vec<String>,
    pub when: MatchConfig,
    pub strategy: Strategy,
    pub targets: Vec<TargetConfig>,
    pub sticky: Sticky,
    pub canary: Option<CanaryConfig>,
    pub latency_budget: Option<Duration>,
    pub semantic_threshold: f32,
    pub complexity_threshold: f64,
    /// `routes[].cache`: overrides of `cache.semantic` for this route.
    pub cache: RouteCacheConfig,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub version: String,
    pub ttl: Duration,
    pub max_entries: usize,
    pub max_bytes: usize,
    pub max_temperature: f64,
    pub privacy_patterns: Vec<String>,
    pub privacy: regex::RegexSet,
    pub semantic: SemanticConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SemanticConfig {
    pub enabled: bool,
    pub threshold: f32,
    pub guard: bool,
    pub assets_dir: PathBuf,
    pub timeout: Duration,
    pub queue: usize,
    pub max_batch: Option<usize>,
    pub threads: usize,
    /// Share of semantic hits re-asked upstream in the background to check them.
    pub verify_sample: f32,
    /// Cosine between the cached and the fresh answer at or above which they agree.
    pub verify_agreement: f32,
    /// `cache.semantic.mode`: the routes' default (a route may override it).
    pub mode: SemanticMode,
    /// `cache.semantic.max_wrong_rate`: the routes' default error bound (none: off).
    pub max_wrong_rate: Option<f32>,
    /// The range `max_wrong_rate` moves a route's threshold in.
    pub min_threshold: f32,
    pub max_threshold: f32,
    /// Candidates this far below the threshold are served when every content word of each
    /// question finds a partner at `min_alignment` or closer (0: off).
    pub alignment_band: f32,
    pub min_alignment: f32,
    /// `cache.semantic.verifier`: a pair model that must agree before a semantic hit is served.
    pub verifier: Option<VerifierConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifierConfig {
    /// A BERT WordPiece sequence-classification model, ONNX.
    pub model: PathBuf,
    /// Its `tokenizer.json` (default: beside the model).
    pub tokenizer: PathBuf,
    /// The score (0–1) a pair needs to be served.
    pub min_score: f32,
}

/// The semantic cache's assets folder when `cache.semantic.assets_dir` is not set:
/// `$LLM_SIDECAR_ASSETS`, else `./assets` (where `scripts/fetch-assets` puts them).
pub fn default_assets_dir() -> PathBuf {
    std::env::var_os("LLM_SIDECAR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("assets"))
}

/// What the semantic layer does with a hit it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SemanticMode {
    /// Serves it (the default).
    Serve,
    /// Serves the upstream answer instead and compares the two, to measure how often the
    /// semantic cache would be right on this route's traffic before turning it on.
    Shadow,
}

impl SemanticMode {
    pub fn label(self) -> &'static str {
        match self {
            SemanticMode::Serve => "serve",
            SemanticMode::Shadow => "shadow",
        }
    }
}

/// `routes[].cache`: per-route overrides of `cache.semantic` (`None`: the global value).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RouteCacheConfig {
    /// `Some(false)` turns caching off for this route.
    pub enabled: Option<bool>,
    pub threshold: Option<f32>,
    pub mode: Option<SemanticMode>,
    pub max_wrong_rate: Option<f32>,
    pub min_threshold: Option<f32>,
    pub max_threshold: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnknown {
    /// Requests without a known key are served as the default tenant.
    Default,
    /// Requests without a known key get 401.
    Reject,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantsConfig {
    /// A trusted request header naming the tenant (set by the app's own code, inside the pod).
    pub header: Option<HeaderName>,
    /// Identify tenants by the SHA-256 of the app's bearer key.
    pub api_key: bool,
    pub on_unknown: OnUnknown,
    pub default_tenant: Arc<str>,
    /// Lower-case hex SHA-256 of an API key → tenant name.
    pub key_hashes: BTreeMap<String, Arc<str>>,
    pub names: Vec<Arc<str>>,
    /// Tenant → index into `scheduling.classes`.
    pub priorities: BTreeMap<Arc<str>, usize>,
    /// Tenant → its limits (tenants not listed use `default_limits`).
    pub limits: BTreeMap<Arc<str>, Arc<Limits>>,
    pub default_limits: Option<Arc<Limits>>,
    pub budgets: BTreeMap<Arc<str>, Budget>,
    pub default_budget: Option<Budget>,
}

impl TenantsConfig {
    pub fn limits_of(&self, tenant: &str) -> Option<&Arc<Limits>> {
        self.limits.get(tenant).or(self.default_limits.as_ref())
    }

    pub fn budget_of(&self, tenant: &str) -> Option<&Budget> {
        self.budgets.get(tenant).or(self.default_budget.as_ref())
    }
}

/// Requests and tokens per minute, for a tenant and optionally per requested model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub models: BTreeMap<Arc<str>, ModelLimits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ModelLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

/// USD a tenant may spend per UTC day and month.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    /// Share of a budget at which the soft limit applies (log, metric, routing input).
    pub soft_ratio: f64,
}

/// A string whose `Debug` never shows it (passwords).
#[derive(Clone, PartialEq)]
pub struct SecretString(pub String);

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://` (TLS); never carries the password.
    pub url: String,
    pub password: Option<SecretString>,
    pub key_prefix: String,
    /// Bound on every Redis call: past it, the sidecar goes on with local state.
    pub timeout: Duration,
    /// How often local counters are pushed to Redis and fleet totals read back.
    pub sync_interval: Duration,
    pub cache: bool,
    /// Entries loaded from the stream at start (warm start).
    pub warm_entries: usize,
    pub stream_max_len: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutingSettings {
    pub allow_route_header: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResilienceConfig {
    pub retries: RetryPolicy,
    pub retry_budget: RetryBudgetConfig,
    pub breaker: BreakerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per candidate, the first included (1 = no retries).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `retry-after` longer than this is not waited for: the next candidate is tried.
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed as a share of first attempts over `window`.
    pub ratio: f64,
    /// Retries always allowed per second, so a quiet pod can still retry.
    pub min_per_second: f64,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub enabled: bool,
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub half_open_probes: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulingConfig {
    /// (name, weight), in the order written; a higher weight is served more often.
    pub classes: Vec<(Arc<str>, u32)>,
    pub default_class: usize,
    pub queue_timeout: Duration,
    pub max_queued: usize,
}

impl SchedulingConfig {
    pub fn class(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|(n, _)| &**n == name)
    }
}

/// One problem in a config: where it is and what to change.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config, in document order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the config", self.0.len())?;
        for issue in &self.0 {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Parses, interpolates and validates a config text.
    pub fn load(text: &str, vars: &dyn VarLookup) -> Result<Config, ConfigErrors> {
        validate::load(text, vars)
    }

    /// The route used for paths the sidecar does not interpret (`/v1/responses`, audio, files).
    pub fn default_route(&self) -> Option<&RouteConfig> {
        let name = self.default_route.as_deref()?;
        self.routes.iter().find(|r| &*r.name == name)
    }
}
