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
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    pub enabled: Option<bool>,
    pub threshold: Option<f32>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub max_body_bytes: Option<u64>,
    pub shutdown_grace: Option<String>,
    pub drain_delay: Option<String>,
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
    pub strategy: Option<String>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    pub cache: Option<RawRouteCache>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub model: String,
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
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
}
