//! The configuration exactly as the platform team writes it: serde types that mirror the YAML,
//! with `deny_unknown_fields` everywhere so a typo is an error instead of a silently ignored key.
//! Nothing here is checked beyond its shape; `validate` turns these into the typed [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Free-form label of this config revision, shown on the admin port and in reload logs.
    pub(crate) version: Option<String>,
    /// Address the application talks to (the OpenAI API).
    pub(crate) listen: Option<String>,
    /// Address of `/metrics`, `/healthz`, `/readyz` and the `/admin/*` endpoints.
    pub(crate) admin_listen: Option<String>,
    pub(crate) server: Option<RawServer>,
    pub(crate) logging: Option<RawLogging>,
    #[serde(default)]
    pub(crate) providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub(crate) models: BTreeMap<String, RawModel>,
    #[serde(default)]
    pub(crate) routes: Vec<RawRoute>,
    pub(crate) default_route: Option<String>,
    pub(crate) tenants: Option<RawTenants>,
    pub(crate) cache: Option<RawCache>,
    pub(crate) routing: Option<RawRouting>,
    pub(crate) resilience: Option<RawResilience>,
    pub(crate) scheduling: Option<RawScheduling>,
    pub(crate) redis: Option<RawRedis>,
    pub(crate) tracing: Option<RawTracing>,
    pub(crate) callouts: Option<RawCallouts>,
}

/// `callouts`: HTTP services the sidecar asks before routing and tells after answering.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCallouts {
    pub(crate) before_route: Option<RawCallout>,
    pub(crate) after_answer: Option<RawCallout>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCallout {
    pub(crate) url: String,
    pub(crate) timeout: Option<String>,
    /// `allow` (fail open) or `refuse` (fail closed); before_route only.
    pub(crate) on_failure: Option<String>,
    pub(crate) auth: Option<RawAuth>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) ca_file: Option<String>,
    /// before_route: send the app's request body (the prompt) too.
    pub(crate) send_body: Option<bool>,
    /// Calls in flight at most (after_answer: beyond it, events are dropped and counted).
    pub(crate) max_in_flight: Option<u32>,
    pub(crate) breaker: Option<RawCalloutBreaker>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCalloutBreaker {
    pub(crate) failures: Option<u32>,
    pub(crate) cooldown: Option<String>,
}

/// OpenTelemetry trace export. Every key falls back to the standard `OTEL_*` variable.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub(crate) enabled: Option<bool>,
    pub(crate) endpoint: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) compression: Option<String>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) timeout: Option<String>,
    pub(crate) sampler: Option<String>,
    pub(crate) sample_ratio: Option<f64>,
    pub(crate) service_name: Option<String>,
    #[serde(default)]
    pub(crate) resource_attributes: BTreeMap<String, String>,
    pub(crate) max_queue: Option<u64>,
    pub(crate) batch_size: Option<u64>,
    pub(crate) interval: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub(crate) url: String,
    pub(crate) password_env: Option<String>,
    pub(crate) password_file: Option<String>,
    pub(crate) key_prefix: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) sync_interval: Option<String>,
    pub(crate) cache: Option<RawRedisCache>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRedisCache {
    pub(crate) enabled: Option<bool>,
    pub(crate) warm_entries: Option<u64>,
    pub(crate) stream_max_len: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub(crate) requests_per_minute: Option<u64>,
    pub(crate) tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub(crate) models: BTreeMap<String, RawModelLimits>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawModelLimits {
    pub(crate) requests_per_minute: Option<u64>,
    pub(crate) tokens_per_minute: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub(crate) daily_usd: Option<f64>,
    pub(crate) monthly_usd: Option<f64>,
    pub(crate) soft_ratio: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTenantDefaults {
    pub(crate) limits: Option<RawLimits>,
    pub(crate) budget: Option<RawBudget>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Whether `x-llm-sidecar-route: NAME` may force a route.
    pub(crate) allow_route_header: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawResilience {
    pub(crate) retries: Option<RawRetries>,
    pub(crate) retry_budget: Option<RawRetryBudget>,
    pub(crate) breaker: Option<RawBreaker>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub(crate) max_attempts: Option<u32>,
    pub(crate) base_delay: Option<String>,
    pub(crate) max_delay: Option<String>,
    pub(crate) max_retry_after: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    pub(crate) ratio: Option<f64>,
    pub(crate) min_per_second: Option<f64>,
    pub(crate) window: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub(crate) enabled: Option<bool>,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) failure_ratio: Option<f64>,
    pub(crate) min_requests: Option<u32>,
    pub(crate) window: Option<String>,
    pub(crate) open_for: Option<String>,
    pub(crate) half_open_probes: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawScheduling {
    #[serde(default)]
    pub(crate) classes: Vec<RawPriorityClass>,
    pub(crate) default_class: Option<String>,
    pub(crate) queue_timeout: Option<String>,
    pub(crate) max_queued: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPriorityClass {
    pub(crate) name: String,
    pub(crate) weight: u32,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub(crate) path: Option<String>,
    pub(crate) interval: Option<String>,
    pub(crate) timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub(crate) enabled: Option<bool>,
    /// Any scalar; changing it invalidates every entry.
    pub(crate) version: Option<serde_yaml_ng::Value>,
    pub(crate) ttl: Option<String>,
    pub(crate) max_entries: Option<u64>,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_temperature: Option<f64>,
    pub(crate) privacy_patterns: Option<Vec<String>>,
    pub(crate) semantic: Option<RawSemantic>,
    pub(crate) encryption: Option<RawEncryption>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEncryption {
    pub(crate) keys: Vec<RawEncryptionKey>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEncryptionKey {
    pub(crate) id: String,
    pub(crate) key_env: Option<String>,
    pub(crate) key_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSemantic {
    pub(crate) enabled: Option<bool>,
    pub(crate) threshold: Option<f32>,
    pub(crate) guard: Option<bool>,
    pub(crate) assets_dir: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) queue: Option<u64>,
    pub(crate) max_batch: Option<u64>,
    pub(crate) threads: Option<u64>,
    pub(crate) verify_sample: Option<f32>,
    pub(crate) verify_agreement: Option<f32>,
    pub(crate) mode: Option<String>,
    pub(crate) max_wrong_rate: Option<f32>,
    pub(crate) min_threshold: Option<f32>,
    pub(crate) max_threshold: Option<f32>,
    pub(crate) alignment_band: Option<f32>,
    pub(crate) min_alignment: Option<f32>,
    pub(crate) verifier: Option<RawVerifier>,
    pub(crate) embedder: Option<RawEmbedder>,
}

/// `cache.semantic.embedder`: a provider's `/v1/embeddings` instead of the local model.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEmbedder {
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) dimensions: Option<u64>,
    pub(crate) max_batch: Option<u64>,
    pub(crate) concurrency: Option<u64>,
    pub(crate) max_chars: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawVerifier {
    pub(crate) model: String,
    pub(crate) tokenizer: Option<String>,
    pub(crate) min_score: Option<f32>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    pub(crate) enabled: Option<bool>,
    pub(crate) threshold: Option<f32>,
    pub(crate) mode: Option<String>,
    pub(crate) max_wrong_rate: Option<f32>,
    pub(crate) min_threshold: Option<f32>,
    pub(crate) max_threshold: Option<f32>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) body_timeout: Option<String>,
    pub(crate) body_min_rate: Option<u64>,
    pub(crate) shutdown_grace: Option<String>,
    pub(crate) drain_delay: Option<String>,
    pub(crate) admin_token: Option<String>,
    pub(crate) dashboard_prompts: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub(crate) format: Option<String>,
    pub(crate) level: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub(crate) base_url: String,
    pub(crate) auth: Option<RawAuth>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) query: BTreeMap<String, String>,
    pub(crate) ca_file: Option<String>,
    pub(crate) timeouts: Option<RawTimeouts>,
    pub(crate) max_connections: Option<u32>,
    pub(crate) inject_stream_usage: Option<bool>,
    /// `openai` (any OpenAI-compatible API: OpenAI, Azure, vLLM, Ollama) or `anthropic`.
    pub(crate) kind: Option<String>,
    pub(crate) health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) header: Option<String>,
    pub(crate) key_env: Option<String>,
    pub(crate) key_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub(crate) connect: Option<String>,
    pub(crate) first_byte: Option<String>,
    pub(crate) idle: Option<String>,
    pub(crate) total: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub(crate) provider: String,
    pub(crate) upstream_model: Option<String>,
    pub(crate) pricing: Option<RawPricing>,
    pub(crate) context_window: Option<u64>,
    pub(crate) capabilities: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPricing {
    pub(crate) input: Option<f64>,
    pub(crate) output: Option<f64>,
    pub(crate) cached_input: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) models: Vec<String>,
    #[serde(rename = "match")]
    pub(crate) when: Option<RawMatch>,
    pub(crate) strategy: Option<String>,
    #[serde(default)]
    pub(crate) targets: Vec<RawTarget>,
    pub(crate) cache: Option<RawRouteCache>,
    pub(crate) sticky: Option<String>,
    pub(crate) canary: Option<RawCanary>,
    pub(crate) latency_budget: Option<String>,
    pub(crate) semantic_threshold: Option<f32>,
    pub(crate) complexity_threshold: Option<f64>,
    /// `strategy: plugin`: the name the embedding program registered its strategy under.
    pub(crate) plugin: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub(crate) tenants: Option<Vec<String>>,
    pub(crate) header: Option<RawHeaderMatch>,
    pub(crate) keywords: Option<Vec<String>>,
    pub(crate) regex: Option<String>,
    /// `soft`: only tenants past their soft budget limit; `ok`: only those below it.
    pub(crate) budget: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub(crate) name: String,
    pub(crate) values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub(crate) model: String,
    pub(crate) percent: f64,
    pub(crate) window: Option<String>,
    pub(crate) min_requests: Option<u32>,
    pub(crate) max_error_rate: Option<f64>,
    pub(crate) max_latency: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub(crate) model: String,
    pub(crate) weight: Option<u32>,
    pub(crate) tier: Option<String>,
    pub(crate) examples: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTenants {
    pub(crate) header: Option<String>,
    pub(crate) api_key: Option<bool>,
    pub(crate) on_unknown: Option<String>,
    pub(crate) default_tenant: Option<String>,
    #[serde(default)]
    pub(crate) list: BTreeMap<String, RawTenant>,
    /// Limits and budget of tenants that set none (the default tenant included).
    pub(crate) defaults: Option<RawTenantDefaults>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    #[serde(default)]
    pub(crate) api_key_sha256: Vec<String>,
    /// The priority class of this tenant's requests unless `x-llm-sidecar-priority` says otherwise.
    pub(crate) priority: Option<String>,
    pub(crate) limits: Option<RawLimits>,
    pub(crate) budget: Option<RawBudget>,
}
