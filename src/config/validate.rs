//! Raw config → typed [`Config`]. Collects every issue rather than stopping at the first, so
//! one `check-config` run shows the platform team everything to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use sha2::{Digest, Sha256};

use super::interpolate::{VarLookup, interpolate};
use super::raw::*;
use super::*;

pub(super) fn load(text: &str, vars: &dyn VarLookup) -> Result<Config, ConfigErrors> {
    let mut issues = Vec::new();
    let mut value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(text) {
        Ok(serde_yaml_ng::Value::Null) => serde_yaml_ng::Value::Mapping(Default::default()),
        Ok(v) => v,
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!("line {}, column {}", l.line(), l.column()));
            return Err(ConfigErrors(vec![ConfigIssue::new(
                at.unwrap_or_default(),
                format!("the YAML does not parse: {e}"),
            )]));
        }
    };
    interpolate(&mut value, vars, &mut issues);
    if !issues.is_empty() {
        return Err(ConfigErrors(issues));
    }
    let raw: RawConfig = match serde_path_to_error::deserialize(value) {
        Ok(raw) => raw,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            return Err(ConfigErrors(vec![ConfigIssue::new(path, e.into_inner().to_string())]));
        }
    };
    let mut v = Validator { issues, vars };
    let config = v.config(raw, text);
    if v.issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.issues))
    }
}

struct Validator<'a> {
    issues: Vec<ConfigIssue>,
    vars: &'a dyn VarLookup,
}

impl Validator<'_> {
    fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue::new(path, message));
    }

    fn config(&mut self, raw: RawConfig, text: &str) -> Config {
        let listen = self.addr("listen", raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN));
        let admin_listen = self.addr(
            "admin_listen",
            raw.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
        );
        if listen == admin_listen && listen.port() != 0 {
            self.issue(
                "admin_listen",
                format!("must differ from listen ({listen}): give the admin endpoints their own port"),
            );
        }
        let server = self.server(raw.server.unwrap_or_default());
        let logging = self.logging(raw.logging.unwrap_or_default());

        // Providers that are defined but invalid were already reported; models naming them
        // should not add a second, misleading "unknown provider" error.
        let defined: BTreeSet<String> = raw.providers.keys().cloned().collect();
        let mut providers = BTreeMap::new();
        for (name, p) in raw.providers {
            if let Some(p) = self.provider(&name, p) {
                providers.insert(name, Arc::new(p));
            }
        }
        let mut models = BTreeMap::new();
        for (name, m) in raw.models {
            let path = format!("models.{name}");
            if !defined.contains(&m.provider) {
                self.issue(
                    format!("{path}.provider"),
                    format!(
                        "unknown provider {:?}: define it under `providers` or use one of {}",
                        m.provider,
                        names(defined.iter())
                    ),
                );
            }
            let pricing = m.pricing.unwrap_or_default();
            let mut check_price = |field: &str, v: Option<f64>| -> f64 {
                match v {
                    Some(p) if !(p.is_finite() && p >= 0.0) => {
                        self.issue(
                            format!("{path}.pricing.{field}"),
                            "must be a non-negative number of USD per million tokens",
                        );
                        0.0
                    }
                    Some(p) => p,
                    None => 0.0,
                }
            };
            let input = check_price("input", pricing.input);
            let output = check_price("output", pricing.output);
            let cached_input = match pricing.cached_input {
                None => input,
                some => check_price("cached_input", some),
            };
            let upstream_model = m.upstream_model.unwrap_or_else(|| name.clone());
            if upstream_model.is_empty() {
                self.issue(
                    format!("{path}.upstream_model"),
                    "must not be empty: omit it to use the model's own name",
                );
            }
            models.insert(
                name.clone(),
                Arc::new(ModelConfig {
                    name: name.as_str().into(),
                    provider: m.provider.as_str().into(),
                    upstream_model: upstream_model.into(),
                    pricing: Pricing {
                        input,
                        output,
                        cached_input,
                    },
                }),
            );
        }

        let routes = self.routes(raw.routes, &models);
        if let Some(d) = &raw.default_route
            && !routes.iter().any(|r| &*r.name == d.as_str())
        {
            self.issue(
                "default_route",
                format!(
                    "unknown route {d:?}: name one of the routes ({})",
                    names(routes.iter().map(|r| &*r.name))
                ),
            );
        }
        let tenants = self.tenants(raw.tenants.unwrap_or_default());
        let cache = self.cache(raw.cache);

        Config {
            version: raw.version,
            listen,
            admin_listen,
            server,
            logging,
            providers,
            models,
            routes,
            default_route: raw.default_route,
            tenants,
            cache,
            digest: hex::encode(Sha256::digest(text.as_bytes())),
        }
    }

    fn addr(&mut self, path: &str, s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| {
            self.issue(
                path,
                format!("{s:?} is not an address: write IP:PORT, e.g. 127.0.0.1:8080"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn duration(&mut self, path: &str, s: Option<&str>, default: Duration) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(s) {
            Ok(d) => d,
            Err(e) => {
                self.issue(
                    path,
                    format!("{s:?} is not a duration ({e}): write e.g. 500ms, 30s, 5m"),
                );
                default
            }
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerSettings {
        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 || max_body_bytes > (1 << 32) {
            self.issue("server.max_body_bytes", "must be between 1 and 4294967296 bytes");
        }
        ServerSettings {
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                raw.shutdown_grace.as_deref(),
                DEFAULT_SHUTDOWN_GRACE,
            ),
            drain_delay: self.duration("server.drain_delay", raw.drain_delay.as_deref(), DEFAULT_DRAIN_DELAY),
        }
    }

    fn logging(&mut self, raw: RawLogging) -> LoggingSettings {
        let format = match raw.format.as_deref() {
            None | Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                self.issue(
                    "logging.format",
                    format!("{other:?} is not a log format: use auto, json or text"),
                );
                LogFormat::Auto
            }
        };
        let level = raw.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            self.issue("logging.level", format!("{level:?} is not a log filter: use error, warn, info, debug or a directive like `info,llm_sidecar=debug`"));
        }
        LoggingSettings { format, level }
    }

    fn provider(&mut self, name: &str, raw: RawProvider) -> Option<ProviderConfig> {
        let path = format!("providers.{name}");
        let start = self.issues.len();
        let base_url = match raw.base_url.parse::<Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => {
                if u.query().is_some() {
                    self.issue(
                        format!("{path}.base_url"),
                        "must not carry a query: put query parameters under `query`",
                    );
                }
                Some(u)
            }
            _ => {
                self.issue(
                    format!("{path}.base_url"),
                    format!(
                        "{:?} is not an http(s) URL: write e.g. https://api.openai.com/v1",
                        raw.base_url
                    ),
                );
                None
            }
        };
        let auth = raw.auth.and_then(|a| self.auth(&format!("{path}.auth"), a));
        let mut headers = Vec::new();
        for (k, v) in raw.headers {
            let hp = format!("{path}.headers.{k}");
            match (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
                (Ok(k), Ok(v)) => headers.push((k, v)),
                (Err(_), _) => self.issue(hp, "is not a valid HTTP header name"),
                (_, Err(_)) => self.issue(hp, "is not a valid HTTP header value (no control characters)"),
            }
        }
        let query = raw
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", encode_query(k), encode_query(v)))
            .collect::<Vec<_>>()
            .join("&");
        let ca_file = raw.ca_file.map(PathBuf::from);
        if let Some(ca) = &ca_file
            && std::fs::metadata(ca).is_err()
        {
            self.issue(
                format!("{path}.ca_file"),
                format!(
                    "{} cannot be read: mount the CA bundle there or remove the key",
                    ca.display()
                ),
            );
        }
        let t = raw.timeouts.unwrap_or_default();
        let tp = format!("{path}.timeouts");
        let timeouts = Timeouts {
            connect: self.duration(&format!("{tp}.connect"), t.connect.as_deref(), DEFAULT_CONNECT_TIMEOUT),
            first_byte: self.duration(
                &format!("{tp}.first_byte"),
                t.first_byte.as_deref(),
                DEFAULT_FIRST_BYTE_TIMEOUT,
            ),
            idle: self.duration(&format!("{tp}.idle"), t.idle.as_deref(), DEFAULT_IDLE_TIMEOUT),
            total: self.duration(&format!("{tp}.total"), t.total.as_deref(), DEFAULT_TOTAL_TIMEOUT),
        };
        for (field, d) in [
            ("connect", timeouts.connect),
            ("first_byte", timeouts.first_byte),
            ("idle", timeouts.idle),
            ("total", timeouts.total),
        ] {
            if d.is_zero() {
                self.issue(format!("{tp}.{field}"), "must be greater than zero");
            }
        }
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            self.issue(format!("{path}.max_connections"), "must be at least 1");
        }
        if self.issues.len() > start {
            return None;
        }
        Some(ProviderConfig {
            name: name.into(),
            base_url: base_url?,
            auth,
            headers,
            query,
            ca_file,
            timeouts,
            max_connections: max_connections as usize,
            inject_stream_usage: raw.inject_stream_usage.unwrap_or(true),
        })
    }

    fn auth(&mut self, path: &str, raw: RawAuth) -> Option<(HeaderName, Secret)> {
        let (header, prefix) = match raw.kind.as_deref() {
            None | Some("bearer") => {
                if raw.header.is_some() {
                    self.issue(format!("{path}.header"), "only applies to `type: header`");
                }
                (http::header::AUTHORIZATION, "Bearer ")
            }
            Some("header") => match raw.header.as_deref().map(HeaderName::try_from) {
                Some(Ok(h)) => (h, ""),
                Some(Err(_)) => {
                    self.issue(format!("{path}.header"), "is not a valid HTTP header name");
                    return None;
                }
                None => {
                    self.issue(
                        format!("{path}.header"),
                        "is required with `type: header` (e.g. `api-key` for Azure OpenAI)",
                    );
                    return None;
                }
            },
            Some("none") => return None,
            Some(other) => {
                self.issue(
                    format!("{path}.type"),
                    format!("{other:?} is not an auth type: use bearer, header or none"),
                );
                return None;
            }
        };
        let key = match (&raw.key_env, &raw.key_file) {
            (Some(var), None) => match self.vars.var(var).filter(|v| !v.is_empty()) {
                Some(k) => k,
                None => {
                    self.issue(
                        format!("{path}.key_env"),
                        format!("environment variable {var} is not set: set it to the provider's API key"),
                    );
                    return None;
                }
            },
            (None, Some(file)) => match std::fs::read_to_string(file) {
                Ok(k) => k.trim().to_owned(),
                Err(e) => {
                    self.issue(
                        format!("{path}.key_file"),
                        format!("{file} cannot be read ({}): mount the key there", e.kind()),
                    );
                    return None;
                }
            },
            (Some(_), Some(_)) => {
                self.issue(path, "set only one of key_env and key_file");
                return None;
            }
            (None, None) => {
                self.issue(
                    path,
                    "needs key_env or key_file (or `type: none` for providers without auth)",
                );
                return None;
            }
        };
        match HeaderValue::try_from(format!("{prefix}{key}")) {
            Ok(mut v) => {
                v.set_sensitive(true);
                Some((header, Secret(v)))
            }
            Err(_) => {
                // The key itself is never echoed.
                self.issue(path, "the API key contains characters that cannot go in an HTTP header (check for a stray newline or quote)");
                None
            }
        }
    }

    fn routes(&mut self, raw: Vec<RawRoute>, models: &BTreeMap<String, Arc<ModelConfig>>) -> Vec<RouteConfig> {
        let mut seen_names = BTreeSet::new();
        let mut seen_aliases: BTreeMap<String, String> = BTreeMap::new();
        let mut routes = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let path = format!("routes[{i}]");
            if r.name.is_empty() {
                self.issue(format!("{path}.name"), "must not be empty");
            } else if !seen_names.insert(r.name.clone()) {
                self.issue(
                    format!("{path}.name"),
                    format!("route {:?} is defined twice: give each route its own name", r.name),
                );
            }
            let strategy = match r.strategy.as_deref() {
                None | Some("ordered") => Strategy::Ordered,
                Some(other) => {
                    self.issue(
                        format!("{path}.strategy"),
                        format!("{other:?} is not a strategy: use ordered"),
                    );
                    Strategy::Ordered
                }
            };
            for (j, alias) in r.models.iter().enumerate() {
                if let Some(prev) = seen_aliases.insert(alias.clone(), r.name.clone()) {
                    self.issue(
                        format!("{path}.models[{j}]"),
                        format!(
                            "{alias:?} already selects route {prev:?}: a requested model may select one route only"
                        ),
                    );
                }
            }
            if r.targets.is_empty() {
                self.issue(format!("{path}.targets"), "needs at least one target model");
            }
            let mut targets = Vec::new();
            for (j, t) in r.targets.iter().enumerate() {
                match models.get(&t.model) {
                    Some(m) => targets.push(m.name.clone()),
                    None => self.issue(
                        format!("{path}.targets[{j}].model"),
                        format!(
                            "unknown model {:?}: add it under `models` or use one of {}",
                            t.model,
                            names(models.keys())
                        ),
                    ),
                }
            }
            let rc = r.cache.unwrap_or_default();
            if let Some(t) = rc.threshold {
                self.threshold(&format!("{path}.cache.threshold"), t);
            }
            routes.push(RouteConfig {
                name: r.name.as_str().into(),
                models: r.models,
                strategy,
                targets,
                cache_enabled: rc.enabled,
                cache_threshold: rc.threshold,
            });
        }
        routes
    }

    fn threshold(&mut self, path: &str, t: f32) {
        if !(0.0..=1.0).contains(&t) {
            self.issue(
                path,
                format!("{t} is not a cosine similarity threshold: use a number between 0 and 1 (e.g. 0.92)"),
            );
        }
    }

    fn cache(&mut self, raw: Option<RawCache>) -> CacheConfig {
        // No `cache:` section: caching is off. A section, even empty, turns it on with defaults.
        let present = raw.is_some();
        let raw = raw.unwrap_or_default();
        let version = match &raw.version {
            None => String::new(),
            Some(serde_yaml_ng::Value::String(s)) => s.clone(),
            Some(serde_yaml_ng::Value::Number(n)) => n.to_string(),
            Some(serde_yaml_ng::Value::Bool(b)) => b.to_string(),
            Some(_) => {
                self.issue("cache.version", "must be a string or a number");
                String::new()
            }
        };
        let ttl = self.duration("cache.ttl", raw.ttl.as_deref(), DEFAULT_CACHE_TTL);
        let max_entries = raw.max_entries.unwrap_or(DEFAULT_CACHE_MAX_ENTRIES);
        let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_CACHE_MAX_BYTES);
        if max_entries == 0 {
            self.issue("cache.max_entries", "must be at least 1 (or set cache.enabled: false)");
        }
        if max_bytes == 0 {
            self.issue("cache.max_bytes", "must be at least 1 (or set cache.enabled: false)");
        }
        let max_temperature = raw.max_temperature.unwrap_or(DEFAULT_MAX_TEMPERATURE);
        if !(max_temperature.is_finite() && max_temperature >= 0.0) {
            self.issue(
                "cache.max_temperature",
                "must be a number ≥ 0 (0 serves only temperature-0 requests)",
            );
        }
        let privacy_patterns: Vec<String> = raw
            .privacy_patterns
            .unwrap_or_else(|| DEFAULT_PRIVACY_PATTERNS.iter().map(|p| (*p).to_owned()).collect());
        for (i, p) in privacy_patterns.iter().enumerate() {
            if let Err(e) = regex::Regex::new(p) {
                self.issue(
                    format!("cache.privacy_patterns[{i}]"),
                    format!("is not a valid regex: {e}"),
                );
            }
        }
        let privacy = regex::RegexSet::new(&privacy_patterns).unwrap_or_else(|_| regex::RegexSet::empty());
        let s = raw.semantic.unwrap_or_default();
        let threshold = s.threshold.unwrap_or(DEFAULT_SEMANTIC_THRESHOLD);
        self.threshold("cache.semantic.threshold", threshold);
        let semantic = SemanticConfig {
            enabled: s.enabled.unwrap_or(true),
            threshold,
            guard: s.guard.unwrap_or(true),
            assets_dir: s
                .assets_dir
                .map(PathBuf::from)
                .unwrap_or_else(crate::embed::default_assets_dir),
            timeout: self.duration("cache.semantic.timeout", s.timeout.as_deref(), DEFAULT_SEMANTIC_TIMEOUT),
            queue: s.queue.unwrap_or(DEFAULT_EMBED_QUEUE).max(1) as usize,
            max_batch: s.max_batch.map(|b| b.max(1) as usize),
            threads: s.threads.unwrap_or(1).clamp(1, 16) as usize,
            verify_sample: s.verify_sample.unwrap_or(DEFAULT_VERIFY_SAMPLE),
            verify_agreement: s.verify_agreement.unwrap_or(DEFAULT_VERIFY_AGREEMENT),
        };
        if !(0.0..=1.0).contains(&semantic.verify_sample) {
            self.issue(
                "cache.semantic.verify_sample",
                "must be a share between 0 (off) and 1 (every semantic hit)",
            );
        }
        self.threshold("cache.semantic.verify_agreement", semantic.verify_agreement);
        CacheConfig {
            enabled: present && raw.enabled.unwrap_or(true),
            version,
            ttl,
            max_entries: max_entries as usize,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            max_temperature,
            privacy_patterns,
            privacy,
            semantic,
        }
    }

    fn tenants(&mut self, raw: RawTenants) -> TenantsConfig {
        let header = raw.header.as_deref().and_then(|h| match HeaderName::try_from(h) {
            Ok(h) => Some(h),
            Err(_) => {
                self.issue("tenants.header", format!("{h:?} is not a valid HTTP header name"));
                None
            }
        });
        let on_unknown = match raw.on_unknown.as_deref() {
            None | Some("default") => OnUnknown::Default,
            Some("reject") => OnUnknown::Reject,
            Some(other) => {
                self.issue(
                    "tenants.on_unknown",
                    format!("{other:?} is not allowed: use default or reject"),
                );
                OnUnknown::Default
            }
        };
        let default_tenant: Arc<str> = raw.default_tenant.as_deref().unwrap_or("default").into();
        let mut key_hashes = BTreeMap::new();
        let mut names_ = vec![default_tenant.clone()];
        for (name, t) in &raw.list {
            let tenant: Arc<str> = name.as_str().into();
            if *tenant != *default_tenant {
                names_.push(tenant.clone());
            }
            for (i, h) in t.api_key_sha256.iter().enumerate() {
                let path = format!("tenants.list.{name}.api_key_sha256[{i}]");
                let h = h.to_ascii_lowercase();
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    self.issue(
                        path,
                        "must be 64 hex digits: the SHA-256 of the key, e.g. `printf %s \"$KEY\" | sha256sum`",
                    );
                } else if let Some(prev) = key_hashes.insert(h, tenant.clone()) {
                    self.issue(path, format!("this key hash already belongs to tenant {prev:?}"));
                }
            }
        }
        let api_key = raw.api_key.unwrap_or(!key_hashes.is_empty());
        TenantsConfig {
            header,
            api_key,
            on_unknown,
            default_tenant,
            key_hashes,
            names: names_,
        }
    }
}

fn names<'a>(it: impl IntoIterator<Item = &'a (impl AsRef<str> + ?Sized + 'a)>) -> String {
    let list: Vec<&str> = it.into_iter().map(|s| s.as_ref()).collect();
    if list.is_empty() {
        "(none defined)".into()
    } else {
        list.join(", ")
    }
}

fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_vars(_: &str) -> Option<String> {
        None
    }

    fn key_vars(name: &str) -> Option<String> {
        (name == "KEY").then(|| "sk-test".into())
    }

    const GOOD: &str = r#"
providers:
  openai:
    base_url: https://api.openai.com/v1
    auth: { key_env: KEY }
    query: { api-version: "2024-10-21" }
models:
  gpt-4o-mini:
    provider: openai
    pricing: { input: 0.15, output: 0.6 }
routes:
  - name: chat
    models: [auto]
    targets: [{ model: gpt-4o-mini }]
default_route: chat
tenants:
  list:
    team-a: { api_key_sha256: ["5E884898DA28047151D0E56F8DC6292773603D0D6AABBDD62A11EF721D1542D8"] }
"#;

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = Config::load(GOOD, &key_vars).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        let p = &c.providers["openai"];
        assert_eq!(p.query, "api-version=2024-10-21");
        assert_eq!(p.timeouts.connect, DEFAULT_CONNECT_TIMEOUT);
        let m = &c.models["gpt-4o-mini"];
        assert_eq!(&*m.upstream_model, "gpt-4o-mini");
        assert_eq!(m.pricing.cached_input, 0.15);
        assert!(c.tenants.api_key);
        assert!(
            c.tenants
                .key_hashes
                .contains_key("5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8")
        );
        assert_eq!(c.default_route().unwrap().targets.len(), 1);
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = Config::load(GOOD, &key_vars).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("sk-test"), "{dump}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let bad = r#"
listen: "localhost"
providers:
  p:
    base_url: "ftp://x"
    auth: { key_env: MISSING }
    timeouts: { connect: "soon" }
models:
  m: { provider: q, pricing: { input: -1 } }
routes:
  - name: r
    targets: [{ model: nope }]
default_route: other
"#;
        let errs = Config::load(bad, &no_vars).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|i| i.path.as_str()).collect();
        for want in [
            "listen",
            "providers.p.base_url",
            "providers.p.auth.key_env",
            "providers.p.timeouts.connect",
            "models.m.provider",
            "models.m.pricing.input",
            "routes[0].targets[0].model",
            "default_route",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
        assert!(!errs.to_string().contains("MISSING="));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_path() {
        let errs = Config::load("providers:\n  p:\n    base_url: http://x\n    timout: 1\n", &no_vars).unwrap_err();
        assert_eq!(errs.0[0].path, "providers.p.timout");
        assert!(
            errs.0[0].message.contains("unknown field `timout`"),
            "{}",
            errs.0[0].message
        );
        let errs = Config::load("server:\n  max_body_bytes: lots\n", &no_vars).unwrap_err();
        assert_eq!(errs.0[0].path, "server.max_body_bytes");
    }

    #[test]
    fn yaml_syntax_errors_give_a_location() {
        let errs = Config::load("routes: [\n", &no_vars).unwrap_err();
        assert!(errs.0[0].path.starts_with("line "), "{:?}", errs.0);
    }

    #[test]
    fn empty_config_is_valid() {
        let c = Config::load("", &no_vars).unwrap();
        assert!(c.models.is_empty());
    }

    #[test]
    fn pricing_cost() {
        let p = Pricing {
            input: 1.0,
            output: 2.0,
            cached_input: 0.5,
        };
        let c = p.cost(1_000_000, 200_000, 500_000);
        assert!((c - (0.8 + 0.1 + 1.0)).abs() < 1e-9);
    }
}
