//! Configuration: the YAML schema (`raw`), `${VAR}` interpolation, and validation into the typed,
//! immutable [`Config`] that everything else reads. Loading is one pure function from text to
//! `Result<Config, ConfigErrors>`; every problem found is reported at once, each with the exact
//! key path and what to change. Watching the file for changes lives in `source`; reading and
//! watching a ConfigMap through the Kubernetes API lives in `kube`.

mod defaults;
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

pub use defaults::*;
pub use interpolate::{Env, VarLookup};
pub use otel::{OtlpProtocol, TracingConfig};

/// A validated configuration. Cheap to share (`Arc`), never mutated: a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) version: Option<String>,
    pub(crate) listen: SocketAddr,
    pub(crate) admin_listen: SocketAddr,
    pub(crate) server: ServerSettings,
    pub(crate) logging: LoggingSettings,
    pub(crate) providers: BTreeMap<String, Arc<ProviderConfig>>,
    pub models: BTreeMap<String, Arc<ModelConfig>>,
    pub(crate) routes: Vec<RouteConfig>,
    pub(crate) default_route: Option<String>,
    pub tenants: TenantsConfig,
    pub(crate) cache: CacheConfig,
    pub(crate) routing: RoutingSettings,
    pub(crate) resilience: ResilienceConfig,
    pub(crate) scheduling: SchedulingConfig,
    /// Fleet mode: limits, budgets and the L2 cache shared through Redis.
    pub(crate) redis: Option<RedisConfig>,
    /// OpenTelemetry trace export; `None` when tracing is off.
    pub tracing: Option<Arc<TracingConfig>>,
    /// `callouts`: the HTTP services asked before routing and told after answering.
    pub(crate) callouts: CalloutsConfig,
    /// SHA-256 of the source text, so a reload of identical bytes is recognised and skipped.
    pub(crate) digest: String,
    /// What makes part of the config unusable without making it wrong: a provider whose key
    /// is not there (its models answer with a clear error; the rest serves).
    pub(crate) warnings: Vec<ConfigIssue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub(crate) max_body_bytes: usize,
    /// The whole request body must arrive within this.
    pub(crate) body_timeout: Duration,
    /// Bytes per second a request body must average after [`BODY_RATE_GRACE`]; 0: no minimum.
    pub(crate) body_min_rate: u64,
    pub(crate) shutdown_grace: Duration,
    pub(crate) drain_delay: Duration,
    /// When set, `/dashboard` and `/admin/*` need `Authorization: Bearer TOKEN` (or
    /// `?token=TOKEN`, for the browser's event stream).
    pub(crate) admin_token: Option<SecretString>,
    /// Show the first words of prompts on the dashboard (off: metadata only).
    pub(crate) dashboard_prompts: bool,
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
    pub(crate) format: LogFormat,
    pub(crate) level: String,
}

/// A provider: where an OpenAI-compatible API lives and how to authenticate to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub(crate) name: Arc<str>,
    pub(crate) base_url: Uri,
    pub(crate) auth: Option<(HeaderName, Secret)>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// Already encoded `k=v&k2=v2`, appended to every upstream URL (Azure's `api-version`).
    pub(crate) query: String,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_connections: usize,
    pub(crate) inject_stream_usage: bool,
    pub(crate) kind: ProviderKind,
    pub(crate) health_check: Option<HealthCheck>,
    /// Why the provider cannot be used (its key is missing), when it cannot.
    pub(crate) unusable: Option<Arc<str>>,
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
    pub(crate) path: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) first_byte: Duration,
    pub(crate) idle: Duration,
    pub(crate) total: Duration,
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
    pub(crate) name: Arc<str>,
    pub(crate) provider: Arc<str>,
    pub(crate) upstream_model: Arc<str>,
    pub(crate) pricing: Pricing,
    /// Prompt + completion tokens the model accepts; `None` when not declared.
    pub(crate) context_window: Option<u64>,
    pub(crate) capabilities: Capabilities,
    /// Why the model cannot be used (its provider's key is missing), when it cannot.
    pub(crate) unusable: Option<Arc<str>>,
    /// `name` as the `x-llm-sidecar-model` response header, made once (`None` when the name
    /// is not a valid header value).
    pub(crate) header: Option<http::HeaderValue>,
}

/// What a model can do, as declared in the catalogue. A model that declares nothing is
/// assumed to do everything, so adding the key is what narrows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities(u8);

impl Capabilities {
    pub(crate) const NONE: Capabilities = Capabilities(0);
    pub(crate) const TOOLS: Capabilities = Capabilities(1);
    pub(crate) const VISION: Capabilities = Capabilities(2);
    pub(crate) const JSON: Capabilities = Capabilities(4);
    pub(crate) const ALL: Capabilities = Capabilities(7);
    pub(crate) const NAMES: [(&'static str, Capabilities); 3] =
        [("tools", Self::TOOLS), ("vision", Self::VISION), ("json", Self::JSON)];

    pub(crate) fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    /// Names of the capabilities in `self`, for error messages.
    pub(crate) fn names(self) -> Vec<&'static str> {
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
    pub(crate) input: f64,
    pub(crate) output: f64,
    pub(crate) cached_input: f64,
}

impl Pricing {
    /// Cost in USD of one request's usage; cached prompt tokens are billed at the cached rate.
    pub(crate) fn cost(&self, prompt_tokens: u64, cached_tokens: u64, completion_tokens: u64) -> f64 {
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
    /// A strategy the program embedding the sidecar registered (`plugin: <name>`).
    Plugin,
}

impl Strategy {
    pub(crate) const NAMES: [(&'static str, Strategy); 8] = [
        ("ordered", Strategy::Ordered),
        ("weighted", Strategy::Weighted),
        ("canary", Strategy::Canary),
        ("cheapest", Strategy::Cheapest),
        ("fastest", Strategy::Fastest),
        ("semantic", Strategy::Semantic),
        ("complexity", Strategy::Complexity),
        ("plugin", Strategy::Plugin),
    ];

    pub(crate) fn label(self) -> &'static str {
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
    pub(crate) model: Arc<str>,
    pub(crate) weight: u32,
    pub(crate) tier: Option<Tier>,
    pub(crate) examples: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CanaryConfig {
    pub(crate) model: Arc<str>,
    /// 0–100.
    pub(crate) percent: f64,
    pub(crate) window: Duration,
    pub(crate) min_requests: u32,
    pub(crate) max_error_rate: f64,
    pub(crate) max_latency: Option<Duration>,
}

/// Conditions besides the requested model; all that are given must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatchConfig {
    pub(crate) tenants: Vec<Arc<str>>,
    pub(crate) header: Option<(HeaderName, Vec<String>)>,
    /// Lower-cased; any one found in the last user turn matches.
    pub(crate) keywords: Vec<String>,
    /// Checked to compile at validation; compiled again by the router.
    pub(crate) regex: Option<String>,
    /// `Some(true)`: only tenants past their soft budget limit; `Some(false)`: only below it.
    pub(crate) budget_soft: Option<bool>,
}

impl MatchConfig {
    pub(crate) fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.header.is_none()
            && self.keywords.is_empty()
            && self.regex.is_none()
            && self.budget_soft.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub(crate) name: Arc<str>,
    /// Requested model names that select this route: exact names or globs (`gpt-4*`); empty
    /// means any model (then `when` must say something).
    pub(crate) models: Vec<String>,
    pub(crate) when: MatchConfig,
    pub(crate) strategy: Strategy,
    pub(crate) targets: Vec<TargetConfig>,
    pub(crate) sticky: Sticky,
    pub(crate) canary: Option<CanaryConfig>,
    pub(crate) latency_budget: Option<Duration>,
    pub(crate) semantic_threshold: f32,
    pub(crate) complexity_threshold: f64,
    /// `routes[].cache`: overrides of `cache.semantic` for this route.
    pub(crate) cache: RouteCacheConfig,
    /// `strategy: plugin`: the registered strategy's name.
    pub(crate) plugin: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub(crate) enabled: bool,
    pub(crate) version: String,
    pub(crate) ttl: Duration,
    pub(crate) max_entries: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_temperature: f64,
    pub(crate) privacy: regex::RegexSet,
    pub(crate) semantic: SemanticConfig,
    /// `cache.encryption`: what the cache writes to Redis is sealed with the first key; entries
    /// sealed with any listed key are read.
    pub(crate) encryption: Option<CacheKeys>,
}

/// The keys of `cache.encryption`, in order: the first seals, all open (rotation without a
/// flush: add the new key first, drop the old one once its entries have expired).
#[derive(Clone, PartialEq)]
pub struct CacheKeys {
    pub(crate) keys: Vec<(Arc<str>, [u8; 32])>,
}

impl fmt::Debug for CacheKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| &**id).collect();
        write!(f, "CacheKeys {{ ids: {ids:?}, keys: <redacted> }}")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SemanticConfig {
    pub(crate) enabled: bool,
    pub(crate) threshold: f32,
    pub(crate) guard: bool,
    pub(crate) assets_dir: PathBuf,
    pub(crate) timeout: Duration,
    pub(crate) queue: usize,
    pub(crate) max_batch: Option<usize>,
    pub(crate) threads: usize,
    /// Share of semantic hits re-asked upstream in the background to check them.
    pub(crate) verify_sample: f32,
    /// Cosine between the cached and the fresh answer at or above which they agree.
    pub(crate) verify_agreement: f32,
    /// `cache.semantic.mode`: the routes' default (a route may override it).
    pub(crate) mode: SemanticMode,
    /// `cache.semantic.max_wrong_rate`: the routes' default error bound (none: off).
    pub(crate) max_wrong_rate: Option<f32>,
    /// The range `max_wrong_rate` moves a route's threshold in.
    pub(crate) min_threshold: f32,
    pub(crate) max_threshold: f32,
    /// Candidates this far below the threshold are served when every content word of each
    /// question finds a partner at `min_alignment` or closer (0: off).
    pub(crate) alignment_band: f32,
    pub(crate) min_alignment: f32,
    /// `cache.semantic.verifier`: a pair model that must agree before a semantic hit is served.
    pub(crate) verifier: Option<VerifierConfig>,
    /// `cache.semantic.embedder`: a remote embedder instead of the local model.
    pub(crate) embedder: Option<RemoteEmbedderConfig>,
}

/// `callouts`: out-of-process extension points.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CalloutsConfig {
    pub(crate) before_route: Option<Arc<CalloutConfig>>,
    pub(crate) after_answer: Option<Arc<CalloutConfig>>,
}

/// Where in a request a callout is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutPoint {
    /// Before routing: may rewrite the model, add headers, or refuse the request.
    BeforeRoute,
    /// After the answer: told what happened (usage, cost, status), never waited for.
    AfterAnswer,
}

impl CalloutPoint {
    pub(crate) fn label(self) -> &'static str {
        match self {
            CalloutPoint::BeforeRoute => "before_route",
            CalloutPoint::AfterAnswer => "after_answer",
        }
    }
}

/// One callout: where it is sent and how its failures are handled.
#[derive(Debug, Clone, PartialEq)]
pub struct CalloutConfig {
    pub(crate) point: CalloutPoint,
    pub(crate) url: Uri,
    /// The HTTP client's settings (TLS roots, auth, headers, connect timeout), as a provider's.
    pub(crate) client: Arc<ProviderConfig>,
    /// The whole call, connect to the last byte of the answer.
    pub(crate) timeout: Duration,
    /// Fail closed: a request whose before_route callout fails is refused (503).
    pub(crate) fail_closed: bool,
    pub(crate) send_body: bool,
    pub(crate) max_in_flight: usize,
    /// Consecutive failures that open the breaker, and how long it stays open.
    pub(crate) breaker_failures: u32,
    pub(crate) breaker_cooldown: Duration,
}

/// A provider's `/v1/embeddings` as the semantic cache's (and semantic routing's) embedder.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEmbedderConfig {
    pub(crate) provider: Arc<ProviderConfig>,
    pub(crate) model: String,
    /// Sent as `dimensions` (models that can shorten their vectors) and required of answers.
    pub(crate) dimensions: Option<usize>,
    pub(crate) max_batch: usize,
    pub(crate) concurrency: usize,
    pub(crate) max_chars: usize,
}

impl RemoteEmbedderConfig {
    /// The vector space this embedder's vectors live in: the same model behind the same URL
    /// at the same width. Vectors of two identities are never compared (entries of another
    /// identity are dropped from the index, and re-embedded when they come from Redis).
    pub(crate) fn identity(&self) -> String {
        let dims = self.dimensions.map_or_else(|| "native".to_owned(), |d| d.to_string());
        format!("remote:{}#{}#{dims}", self.provider.base_url, self.model)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifierConfig {
    /// A BERT WordPiece sequence-classification model, ONNX.
    pub(crate) model: PathBuf,
    /// Its `tokenizer.json` (default: beside the model).
    pub(crate) tokenizer: PathBuf,
    /// The score (0–1) a pair needs to be served.
    pub(crate) min_score: f32,
}

/// The semantic cache's assets folder when `cache.semantic.assets_dir` is not set:
/// `$LLM_SIDECAR_ASSETS`, else the first of these that holds a `tokenizer.json`: `./assets`
/// (where `scripts/fetch-assets` puts them), `assets` beside the binary or two levels up (a
/// checkout's `target/release/llm-sidecar`), `../share/llm-sidecar/assets` beside it, the
/// image's `/opt/llm-sidecar/assets`, `/usr/share/llm-sidecar/assets`. So the sidecar finds
/// them wherever it is started from, instead of turning the semantic cache off.
pub(crate) fn default_assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLM_SIDECAR_ASSETS") {
        return PathBuf::from(dir);
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(std::path::Path::to_path_buf));
    let mut candidates = vec![PathBuf::from("assets")];
    if let Some(d) = &exe_dir {
        candidates.push(d.join("assets"));
        candidates.push(d.join("../../assets"));
        candidates.push(d.join("../share/llm-sidecar/assets"));
    }
    candidates.push(PathBuf::from("/opt/llm-sidecar/assets"));
    candidates.push(PathBuf::from("/usr/share/llm-sidecar/assets"));
    first_assets_dir(candidates).unwrap_or_else(|| PathBuf::from("assets"))
}

/// The first folder that holds a tokenizer (the model beside it is checked when it loads).
fn first_assets_dir(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|d| d.join("tokenizer.json").is_file())
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
    pub(crate) fn label(self) -> &'static str {
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
    pub(crate) enabled: Option<bool>,
    pub(crate) threshold: Option<f32>,
    pub(crate) mode: Option<SemanticMode>,
    pub(crate) max_wrong_rate: Option<f32>,
    pub(crate) min_threshold: Option<f32>,
    pub(crate) max_threshold: Option<f32>,
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
    pub(crate) header: Option<HeaderName>,
    /// Identify tenants by the SHA-256 of the app's bearer key.
    pub(crate) api_key: bool,
    pub(crate) on_unknown: OnUnknown,
    pub(crate) default_tenant: Arc<str>,
    /// Lower-case hex SHA-256 of an API key → tenant name.
    pub(crate) key_hashes: BTreeMap<String, Arc<str>>,
    pub(crate) names: Vec<Arc<str>>,
    /// Tenant → index into `scheduling.classes`.
    pub(crate) priorities: BTreeMap<Arc<str>, usize>,
    /// Tenant → its limits (tenants not listed use `default_limits`).
    pub(crate) limits: BTreeMap<Arc<str>, Arc<Limits>>,
    pub(crate) default_limits: Option<Arc<Limits>>,
    pub(crate) budgets: BTreeMap<Arc<str>, Budget>,
    pub(crate) default_budget: Option<Budget>,
}

impl TenantsConfig {
    pub(crate) fn limits_of(&self, tenant: &str) -> Option<&Arc<Limits>> {
        self.limits.get(tenant).or(self.default_limits.as_ref())
    }

    pub(crate) fn budget_of(&self, tenant: &str) -> Option<&Budget> {
        self.budgets.get(tenant).or(self.default_budget.as_ref())
    }
}

/// Requests and tokens per minute, for a tenant and optionally per requested model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    pub(crate) requests_per_minute: Option<u64>,
    pub(crate) tokens_per_minute: Option<u64>,
    pub(crate) models: BTreeMap<Arc<str>, ModelLimits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ModelLimits {
    pub(crate) requests_per_minute: Option<u64>,
    pub(crate) tokens_per_minute: Option<u64>,
}

/// USD a tenant may spend per UTC day and month.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub(crate) daily_usd: Option<f64>,
    pub(crate) monthly_usd: Option<f64>,
    /// Share of a budget at which the soft limit applies (log, metric, routing input).
    pub(crate) soft_ratio: f64,
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
    pub(crate) url: String,
    pub(crate) password: Option<SecretString>,
    pub(crate) key_prefix: String,
    /// Bound on every Redis call: past it, the sidecar goes on with local state.
    pub(crate) timeout: Duration,
    /// How often local counters are pushed to Redis and fleet totals read back.
    pub(crate) sync_interval: Duration,
    pub(crate) cache: bool,
    /// Entries loaded from the stream at start (warm start).
    pub(crate) warm_entries: usize,
    pub(crate) stream_max_len: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutingSettings {
    pub(crate) allow_route_header: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResilienceConfig {
    pub(crate) retries: RetryPolicy,
    pub(crate) retry_budget: RetryBudgetConfig,
    pub(crate) breaker: BreakerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per candidate, the first included (1 = no retries).
    pub(crate) max_attempts: u32,
    pub(crate) base_delay: Duration,
    pub(crate) max_delay: Duration,
    /// A `retry-after` longer than this is not waited for: the next candidate is tried.
    pub(crate) max_retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed as a share of first attempts over `window`.
    pub(crate) ratio: f64,
    /// Retries always allowed per second, so a quiet pod can still retry.
    pub(crate) min_per_second: f64,
    pub(crate) window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub(crate) enabled: bool,
    pub(crate) consecutive_failures: u32,
    pub(crate) failure_ratio: f64,
    pub(crate) min_requests: u32,
    pub(crate) window: Duration,
    pub(crate) open_for: Duration,
    pub(crate) half_open_probes: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulingConfig {
    /// (name, weight), in the order written; a higher weight is served more often.
    pub(crate) classes: Vec<(Arc<str>, u32)>,
    pub(crate) default_class: usize,
    pub(crate) queue_timeout: Duration,
    pub(crate) max_queued: usize,
}

impl SchedulingConfig {
    pub(crate) fn class(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|(n, _)| &**n == name)
    }
}

/// One problem in a config: where it is and what to change.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    pub path: String,
    pub(crate) message: String,
}

impl ConfigIssue {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
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

    /// The route used for paths the sidecar does not interpret (audio, files, batches).
    #[cfg(test)]
    pub(crate) fn default_route(&self) -> Option<&RouteConfig> {
        let name = self.default_route.as_deref()?;
        self.routes.iter().find(|r| &*r.name == name)
    }
}

#[cfg(test)]
mod assets_tests {
    #[test]
    fn the_first_folder_with_a_tokenizer_is_the_assets_folder() {
        let (empty, full) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(full.path().join("tokenizer.json"), "{}").unwrap();
        let found = super::first_assets_dir([empty.path().to_path_buf(), full.path().to_path_buf()]);
        assert_eq!(found.as_deref(), Some(full.path()));
        assert_eq!(super::first_assets_dir([empty.path().to_path_buf()]), None);
    }
}
