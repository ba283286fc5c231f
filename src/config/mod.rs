//! Configuration: the YAML schema (`raw`), `${VAR}` interpolation, and validation into the typed,
//! immutable [`Config`] that everything else reads. Loading is one pure function from text to
//! `Result<Config, ConfigErrors>`; every problem found is reported at once, each with the exact
//! key path and what to change. Watching the file for changes lives in `source`.

pub mod interpolate;
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

/// Default address the app talks to: loopback only, so nothing outside the pod can spend the
/// pod's budget.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin address. Loopback by default; the Kubernetes chart sets `0.0.0.0:9901` so the
/// kubelet's probes and Prometheus can reach it.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Chat requests with long histories or base64 images are megabytes; 32 MiB admits the largest
/// image inputs OpenAI accepts while still bounding memory per request.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
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

/// Cached answers live this long unless `cache.ttl` says otherwise: long enough to matter for
/// repeated questions, short enough that stale facts age out within the working day.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Entries held per sidecar (the semantic index and responses for 100k entries fit the
/// 200 MB memory goal with the quantized model).
pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 100_000;
/// Bytes of cached responses per sidecar.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 128 << 20;
/// OpenAI's default temperature is 1.0; requests at or below it may be served from cache.
pub const DEFAULT_MAX_TEMPERATURE: f64 = 1.0;
/// Cosine similarity needed for a semantic hit, before the guard. Conservative on purpose:
/// on the held-out paraphrase set (data/paraphrases-heldout.jsonl, `llm-sidecar calibrate`)
/// lower thresholds served 15–20 % wrong answers even with the guard; see docs/cache.md.
pub const DEFAULT_SEMANTIC_THRESHOLD: f32 = 0.95;
/// A semantic lookup (embed + search) that takes longer than this is a miss: it must never
/// cost the app more than a few percent of an LLM call.
pub const DEFAULT_SEMANTIC_TIMEOUT: Duration = Duration::from_millis(50);
/// Share of semantic hits verified against the provider in the background: 5 % costs 5 % of
/// what the semantic cache saves, and finds a systematically wrong pairing within tens of hits.
pub const DEFAULT_VERIFY_SAMPLE: f32 = 0.05;
/// Two answers to the same question by the same model embed at ≥ 0.85 in practice; answers to
/// different questions that share a topic fall below.
pub const DEFAULT_VERIFY_AGREEMENT: f32 = 0.85;
/// Lookups waiting for the embedder; beyond this the queue is full and lookups miss at once.
pub const DEFAULT_EMBED_QUEUE: u64 = 256;
/// Texts that are never cached (and never embedded): e-mail addresses, payment card numbers,
/// US social security numbers, IBANs.
pub const DEFAULT_PRIVACY_PATTERNS: &[&str] = &[
    r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b",
    r"\b(?:\d[ -]?){13,19}\b",
    r"\b\d{3}-\d{2}-\d{4}\b",
    r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b",
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
    /// SHA-256 of the source text, so a reload of identical bytes is recognised and skipped.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub drain_delay: Duration,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: Arc<str>,
    pub models: Vec<String>,
    pub strategy: Strategy,
    pub targets: Vec<Arc<str>>,
    /// `routes[].cache.enabled`: `Some(false)` turns caching off for this route.
    pub cache_enabled: Option<bool>,
    /// `routes[].cache.threshold`: overrides `cache.semantic.threshold`.
    pub cache_threshold: Option<f32>,
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
