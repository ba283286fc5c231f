//! The configuration exactly as the platform team writes it: serde types that mirror the YAML,
//! with `deny_unknown_fields` everywhere so a typo is an error instead of a silently ignored key.
//! Nothing here is checked beyond its shape; `validate` turns these into the typed [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Free-form label of this config revision, shown on the admin port and in reload logs.
    pub version: Option<String>,
    /// Address the application talks to (the OpenAI API).
    pub listen: Option<String>,
    /// Address of `/metrics`, `/healthz`, `/readyz` and the `/admin/*` endpoints.
    pub admin_listen: Option<String>,
    pub server: Option<RawServer>,
    pub logging: Option<RawLogging>,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    pub default_route: Option<String>,
    pub tenants: Option<RawTenants>,
    pub cache: Option<RawCache>,
    pub routing: Option<RawRouting>,
    pub resilience: Option<RawResilience>,
    pub scheduling: Option<RawScheduling>,
    pub redis: Option<RawRedis>,
    pub tracing: Option<RawTracing>,
}

/// OpenTelemetry trace export. Every key falls back to the standard `OTEL_*` variable.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub enabled: Option<bool>,
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub compression: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub timeout: Option<String>,
    pub sampler: Option<String>,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    pub max_queue: Option<u64>,
    pub batch_size: Option<u64>,
    pub interval: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub key_prefix: Option<String>,
    pub timeout: Option<String>,
    pub sync_interval: Option<String>,
    pub cache: Option<RawRedisCache>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRedisCache {
    pub enabled: Option<bool>,
    pub warm_entries: Option<u64>,
    pub stream_max_len: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModelLimits>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawModelLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub soft_ratio: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTenantDefaults {
    pub limits: Option<RawLimits>,
    pub budget: Option<RawBudget>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Whether `x-llm-sidecar-route: NAME` may force a route.
    pub allow_route_header: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawResilience {
    pub retries: Option<RawRetries>,
    pub retry_budget: Option<RawRetryBudget>,
    pub breaker: Option<RawBreaker>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub max_attempts: Option<u32>,
    pub base_delay: Option<String>,
    pub max_delay: Option<String>,
    pub max_retry_after: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    pub ratio: Option<f64>,
    pub min_per_second: Option<f64>,
    pub window: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub enabled: Option<bool>,
    pub consecutive_failures: Option<u32>,
    pub failure_ratio: Option<f64>,
    pub min_requests: Option<u32>,
    pub window: Option<String>,
    pub open_for: Option<String>,
    pub half_open_probes: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawScheduling {
    #[serde(default)]
    pub classes: Vec<RawPriorityClass>,
    pub default_class: Option<String>,
    pub queue_timeout: Option<String>,
    pub max_queued: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPriorityClass {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub enabled: Option<bool>,
    /// Any scalar; changing it invalidates every entry.
    pub version: Option<serde_yaml_ng::Value>,
    pub ttl: Option<String>,
    pub max_entries: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_temperature: Option<f64>,
    pub privacy_patterns: Option<Vec<String>>,
    pub semantic: Option<RawSemantic>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSemantic {
    pub enabled: Option<bool>,
    pub threshold: Option<f32>,
    pub guard: Option<bool>,
    pub assets_dir: Option<String>,
    pub timeout: Option<String>,
    pub queue: Option<u64>,
    pub max_batch: Option<u64>,
    pub threads: Option<u64>,
    pub verify_sample: Option<f32>,
    pub verify_agreement: Option<f32>,
    pub mode: Option<String>,
    pub max_wrong_rate: Option<f32>,
    pub min_threshold: Option<f32>,
    pub max_threshold: Option<f32>,
    pub alignment_band: Option<f32>,
    pub min_alignment: Option<f32>,
    pub verifier: Option<RawVerifier>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawVerifier {
    pub model: String,
    pub tokenizer: Option<String>,
    pub min_score: Option<f32>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    pub enabled: Option<bool>,
    pub threshold: Option<f32>,
    pub mode: Option<String>,
    pub max_wrong_rate: Option<f32>,
    pub min_threshold: Option<f32>,
    pub max_threshold: Option<f32>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub max_body_bytes: Option<u64>,
    pub body_timeout: Option<String>,
    pub body_min_rate: Option<u64>,
    pub shutdown_grace: Option<String>,
    pub drain_delay: Option<String>,
    pub admin_token: Option<String>,
    pub dashboard_prompts: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub base_url: String,
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    pub ca_file: Option<String>,
    pub timeouts: Option<RawTimeouts>,
    pub max_connections: Option<u32>,
    pub inject_stream_usage: Option<bool>,
    /// `openai` (any OpenAI-compatible API: OpenAI, Azure, vLLM, Ollama) or `anthropic`.
    pub kind: Option<String>,
    pub health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub header: Option<String>,
    pub key_env: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub idle: Option<String>,
    pub total: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: String,
    pub upstream_model: Option<String>,
    pub pricing: Option<RawPricing>,
    pub context_window: Option<u64>,
    pub capabilities: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPricing {
    pub input: Option<f64>,
    pub output: Option<f64>,
    pub cached_input: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(rename = "match")]
    pub when: Option<RawMatch>,
    pub strategy: Option<String>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    pub cache: Option<RawRouteCache>,
    pub sticky: Option<String>,
    pub canary: Option<RawCanary>,
    pub latency_budget: Option<String>,
    pub semantic_threshold: Option<f32>,
    pub complexity_threshold: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub tenants: Option<Vec<String>>,
    pub header: Option<RawHeaderMatch>,
    pub keywords: Option<Vec<String>>,
    pub regex: Option<String>,
    /// `soft`: only tenants past their soft budget limit; `ok`: only those below it.
    pub budget: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    pub values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub model: String,
    pub percent: f64,
    pub window: Option<String>,
    pub min_requests: Option<u32>,
    pub max_error_rate: Option<f64>,
    pub max_latency: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub model: String,
    pub weight: Option<u32>,
    pub tier: Option<String>,
    pub examples: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTenants {
    pub header: Option<String>,
    pub api_key: Option<bool>,
    pub on_unknown: Option<String>,
    pub default_tenant: Option<String>,
    #[serde(default)]
    pub list: BTreeMap<String, RawTenant>,
    /// Limits and budget of tenants that set none (the default tenant included).
    pub defaults: Option<RawTenantDefaults>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// The priority class of this tenant's requests unless `x-llm-sidecar-priority` says otherwise.
    pub priority: Option<String>,
    pub limits: Option<RawLimits>,
    pub budget: Option<RawBudget>,
}
