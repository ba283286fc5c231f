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

pub(super) struct Validator<'a> {
    pub(super) issues: Vec<ConfigIssue>,
    pub(super) vars: &'a dyn VarLookup,
}

impl Validator<'_> {
    pub(super) fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
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
            if m.context_window == Some(0) {
                self.issue(format!("{path}.context_window"), "must be a positive number of tokens");
            }
            let capabilities = match &m.capabilities {
                None => Capabilities::ALL,
                Some(list) => {
                    let mut caps = Capabilities::NONE;
                    for (j, c) in list.iter().enumerate() {
                        match Capabilities::NAMES.iter().find(|(n, _)| n == c) {
                            Some((_, cap)) => caps = caps.union(*cap),
                            None => self.issue(
                                format!("{path}.capabilities[{j}]"),
                                format!("{c:?} is not a capability: use tools, vision or json"),
                            ),
                        }
                    }
                    caps
                }
            };
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
                    context_window: m.context_window,
                    capabilities,
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
        let scheduling = self.scheduling(raw.scheduling.unwrap_or_default());
        let tenants = self.tenants(raw.tenants.unwrap_or_default(), &scheduling);
        let cache = self.cache(raw.cache);
        let routing = RoutingSettings {
            allow_route_header: raw.routing.unwrap_or_default().allow_route_header.unwrap_or(false),
        };
        let resilience = self.resilience(raw.resilience.unwrap_or_default());
        let redis = raw.redis.and_then(|r| self.redis(r));
        let tracing = self.tracing(raw.tracing.unwrap_or_default());

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
            routing,
            resilience,
            scheduling,
            redis,
            tracing,
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

    pub(super) fn duration(&mut self, path: &str, s: Option<&str>, default: Duration) -> Duration {
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
        let body_timeout = self.duration("server.body_timeout", raw.body_timeout.as_deref(), DEFAULT_BODY_TIMEOUT);
        if body_timeout.is_zero() {
            self.issue("server.body_timeout", "must be longer than 0s, e.g. 30s");
        }
        ServerSettings {
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            body_timeout,
            body_min_rate: raw.body_min_rate.unwrap_or(DEFAULT_BODY_MIN_RATE),
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                raw.shutdown_grace.as_deref(),
                DEFAULT_SHUTDOWN_GRACE,
            ),
            drain_delay: self.duration("server.drain_delay", raw.drain_delay.as_deref(), DEFAULT_DRAIN_DELAY),
            admin_token: match raw.admin_token {
                Some(t) if t.len() < 16 => {
                    self.issue(
                        "server.admin_token",
                        "must be at least 16 characters (use ${ADMIN_TOKEN} from a Secret)",
                    );
                    None
                }
                t => t.map(SecretString),
            },
            dashboard_prompts: raw.dashboard_prompts.unwrap_or(false),
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
        let kind = match raw.kind.as_deref() {
            None | Some("openai") => ProviderKind::OpenAi,
            Some("anthropic") => ProviderKind::Anthropic,
            Some(other) => {
                self.issue(
                    format!("{path}.kind"),
                    format!("{other:?} is not a provider kind: use openai (also for Azure, vLLM, Ollama) or anthropic"),
                );
                ProviderKind::OpenAi
            }
        };
        let health_check = raw.health_check.map(|h| {
            let hp = format!("{path}.health_check");
            let path_ = h.path.unwrap_or_else(|| "/models".to_owned());
            if !path_.starts_with('/') {
                self.issue(format!("{hp}.path"), "must start with / (it is appended to base_url)");
            }
            let interval = self.duration(
                &format!("{hp}.interval"),
                h.interval.as_deref(),
                Duration::from_secs(15),
            );
            let timeout = self.duration(&format!("{hp}.timeout"), h.timeout.as_deref(), Duration::from_secs(5));
            if interval < Duration::from_millis(100) {
                self.issue(format!("{hp}.interval"), "must be at least 100ms");
            }
            HealthCheck {
                path: path_,
                interval,
                timeout: timeout.max(Duration::from_millis(10)),
            }
        });
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
            kind,
            health_check,
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
        // Exact aliases taken by a route without conditions: a later route naming one again
        // could never be selected.
        let mut taken: BTreeMap<String, String> = BTreeMap::new();
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
                None => Strategy::Ordered,
                Some(name) => match Strategy::NAMES.iter().find(|(n, _)| *n == name) {
                    Some((_, s)) => *s,
                    None => {
                        self.issue(
                            format!("{path}.strategy"),
                            format!(
                                "{name:?} is not a strategy: use one of {}",
                                names(Strategy::NAMES.iter().map(|(n, _)| *n))
                            ),
                        );
                        Strategy::Ordered
                    }
                },
            };
            let when = self.route_match(&path, r.when.unwrap_or_default());
            for (j, alias) in r.models.iter().enumerate() {
                if alias.is_empty() {
                    self.issue(format!("{path}.models[{j}]"), "must not be empty");
                    continue;
                }
                if let Some(prev) = taken.get(alias) {
                    self.issue(
                        format!("{path}.models[{j}]"),
                        format!(
                            "route {prev:?} (earlier, without a `match`) already takes every request for {alias:?}: this route would never be selected for it"
                        ),
                    );
                }
            }
            // A semantic route falls through when nothing is close, so it takes nothing for good.
            if when.is_empty() && strategy != Strategy::Semantic {
                for alias in r.models.iter().filter(|a| !a.contains(['*', '?'])) {
                    taken.entry(alias.clone()).or_insert_with(|| r.name.clone());
                }
            }
            if r.targets.is_empty() {
                self.issue(format!("{path}.targets"), "needs at least one target model");
            }
            let mut targets = Vec::new();
            for (j, t) in r.targets.iter().enumerate() {
                let tp = format!("{path}.targets[{j}]");
                let Some(m) = models.get(&t.model) else {
                    self.issue(
                        format!("{tp}.model"),
                        format!(
                            "unknown model {:?}: add it under `models` or use one of {}",
                            t.model,
                            names(models.keys())
                        ),
                    );
                    continue;
                };
                if t.weight.is_some() && !matches!(strategy, Strategy::Weighted) {
                    self.issue(format!("{tp}.weight"), "is only used by strategy: weighted");
                }
                let tier = match (t.tier.as_deref(), strategy) {
                    (None, Strategy::Complexity) => {
                        self.issue(
                            format!("{tp}.tier"),
                            "is required by strategy complexity: light or strong",
                        );
                        None
                    }
                    (None, _) => None,
                    (Some(_), s) if s != Strategy::Complexity => {
                        self.issue(format!("{tp}.tier"), "is only used by strategy: complexity");
                        None
                    }
                    (Some("light"), _) => Some(Tier::Light),
                    (Some("strong"), _) => Some(Tier::Strong),
                    (Some(other), _) => {
                        self.issue(
                            format!("{tp}.tier"),
                            format!("{other:?} is not a tier: use light or strong"),
                        );
                        None
                    }
                };
                let examples = t.examples.clone().unwrap_or_default();
                match strategy {
                    Strategy::Semantic if examples.iter().all(|e| e.trim().is_empty()) => self.issue(
                        format!("{tp}.examples"),
                        "strategy semantic needs example utterances for each target (a few typical requests)",
                    ),
                    Strategy::Semantic => {}
                    _ if t.examples.is_some() => {
                        self.issue(format!("{tp}.examples"), "is only used by strategy: semantic");
                    }
                    _ => {}
                }
                targets.push(TargetConfig {
                    model: m.name.clone(),
                    weight: t.weight.unwrap_or(1),
                    tier,
                    examples,
                });
            }
            if strategy == Strategy::Weighted && !targets.is_empty() && targets.iter().all(|t| t.weight == 0) {
                self.issue(
                    format!("{path}.targets"),
                    "every weight is 0: give at least one target a weight",
                );
            }
            if strategy == Strategy::Complexity
                && !(targets.iter().any(|t| t.tier == Some(Tier::Light))
                    && targets.iter().any(|t| t.tier == Some(Tier::Strong)))
                && targets.len() == r.targets.len()
            {
                self.issue(
                    format!("{path}.targets"),
                    "strategy complexity needs at least one `tier: light` and one `tier: strong` target",
                );
            }
            let sticky = match (r.sticky.as_deref(), strategy) {
                (None, _) => Sticky::None,
                (Some(_), s) if !matches!(s, Strategy::Weighted | Strategy::Canary) => {
                    self.issue(
                        format!("{path}.sticky"),
                        "is only used by strategies weighted and canary",
                    );
                    Sticky::None
                }
                (Some("tenant"), _) => Sticky::Tenant,
                (Some("user"), _) => Sticky::User,
                (Some("none"), _) => Sticky::None,
                (Some(other), _) => {
                    self.issue(
                        format!("{path}.sticky"),
                        format!("{other:?} is not allowed: use tenant, user or none"),
                    );
                    Sticky::None
                }
            };
            let canary = match (r.canary, strategy) {
                (None, Strategy::Canary) => {
                    self.issue(
                        format!("{path}.canary"),
                        "strategy canary needs `canary: {model: NEW_MODEL, percent: 5}`",
                    );
                    None
                }
                (None, _) => None,
                (Some(_), s) if s != Strategy::Canary => {
                    self.issue(format!("{path}.canary"), "is only used by strategy: canary");
                    None
                }
                (Some(c), _) => self.canary(&format!("{path}.canary"), c, models),
            };
            let latency_budget = r
                .latency_budget
                .as_deref()
                .map(|d| self.duration(&format!("{path}.latency_budget"), Some(d), Duration::ZERO));
            if latency_budget.is_some() && strategy != Strategy::Fastest {
                self.issue(format!("{path}.latency_budget"), "is only used by strategy: fastest");
            }
            let semantic_threshold = r.semantic_threshold.unwrap_or(DEFAULT_SEMANTIC_ROUTE_THRESHOLD);
            if r.semantic_threshold.is_some() {
                self.threshold(&format!("{path}.semantic_threshold"), semantic_threshold);
            }
            let complexity_threshold = r.complexity_threshold.unwrap_or(DEFAULT_COMPLEXITY_THRESHOLD);
            if !(0.0..=1.0).contains(&complexity_threshold) {
                self.issue(
                    format!("{path}.complexity_threshold"),
                    "must be between 0 and 1 (scores at or above it go to the strong tier)",
                );
            }
            let rc = r.cache.unwrap_or_default();
            let cache = self.route_cache(&format!("{path}.cache"), rc);
            routes.push(RouteConfig {
                name: r.name.as_str().into(),
                models: r.models,
                when,
                strategy,
                targets,
                sticky,
                canary,
                latency_budget,
                semantic_threshold,
                complexity_threshold,
                cache,
            });
        }
        routes
    }

    fn route_match(&mut self, path: &str, raw: RawMatch) -> MatchConfig {
        let mp = format!("{path}.match");
        let header = raw.header.and_then(|h| match HeaderName::try_from(h.name.as_str()) {
            Ok(name) => Some((name, h.values.unwrap_or_default())),
            Err(_) => {
                self.issue(
                    format!("{mp}.header.name"),
                    format!("{:?} is not a valid HTTP header name", h.name),
                );
                None
            }
        });
        let keywords: Vec<String> = raw
            .keywords
            .unwrap_or_default()
            .iter()
            .map(|k| k.to_lowercase())
            .collect();
        if keywords.iter().any(|k| k.trim().is_empty()) {
            self.issue(
                format!("{mp}.keywords"),
                "must not contain empty keywords (they would match everything)",
            );
        }
        if let Some(re) = &raw.regex
            && let Err(e) = regex::RegexBuilder::new(re).size_limit(1 << 20).build()
        {
            self.issue(format!("{mp}.regex"), format!("does not compile: {e}"));
        }
        let budget_soft = match raw.budget.as_deref() {
            None => None,
            Some("soft") => Some(true),
            Some("ok") => Some(false),
            Some(other) => {
                self.issue(
                    format!("{mp}.budget"),
                    format!("{other:?} is not a budget state: use soft (past the soft limit) or ok"),
                );
                None
            }
        };
        MatchConfig {
            budget_soft,
            tenants: raw
                .tenants
                .unwrap_or_default()
                .iter()
                .map(|t| Arc::from(t.as_str()))
                .collect(),
            header,
            keywords,
            regex: raw.regex,
        }
    }

    fn canary(
        &mut self,
        path: &str,
        c: RawCanary,
        models: &BTreeMap<String, Arc<ModelConfig>>,
    ) -> Option<CanaryConfig> {
        let start = self.issues.len();
        let model = match models.get(&c.model) {
            Some(m) => m.name.clone(),
            None => {
                self.issue(
                    format!("{path}.model"),
                    format!("unknown model {:?}: add it under `models`", c.model),
                );
                return None;
            }
        };
        if !(c.percent.is_finite() && (0.0..=100.0).contains(&c.percent)) {
            self.issue(format!("{path}.percent"), "must be between 0 and 100");
        }
        let max_error_rate = c.max_error_rate.unwrap_or(DEFAULT_CANARY_MAX_ERROR_RATE);
        if !(0.0..=1.0).contains(&max_error_rate) {
            self.issue(
                format!("{path}.max_error_rate"),
                "must be a share between 0 and 1 (e.g. 0.05)",
            );
        }
        let window = self.duration(&format!("{path}.window"), c.window.as_deref(), DEFAULT_CANARY_WINDOW);
        let max_latency = c
            .max_latency
            .as_deref()
            .map(|d| self.duration(&format!("{path}.max_latency"), Some(d), Duration::ZERO));
        (self.issues.len() == start).then(|| CanaryConfig {
            model,
            percent: c.percent,
            window,
            min_requests: c.min_requests.unwrap_or(DEFAULT_CANARY_MIN_REQUESTS).max(1),
            max_error_rate,
            max_latency,
        })
    }

    fn limits(&mut self, path: &str, raw: &RawLimits) -> Limits {
        let mut check = |p: String, v: Option<u64>| {
            if v == Some(0) {
                self.issue(p, "must be at least 1 (remove the key for no limit)");
            }
            v
        };
        let requests_per_minute = check(format!("{path}.requests_per_minute"), raw.requests_per_minute);
        let tokens_per_minute = check(format!("{path}.tokens_per_minute"), raw.tokens_per_minute);
        let mut models = BTreeMap::new();
        for (m, ml) in &raw.models {
            let mp = format!("{path}.models.{m}");
            models.insert(
                Arc::from(m.as_str()),
                ModelLimits {
                    requests_per_minute: check(format!("{mp}.requests_per_minute"), ml.requests_per_minute),
                    tokens_per_minute: check(format!("{mp}.tokens_per_minute"), ml.tokens_per_minute),
                },
            );
        }
        Limits {
            requests_per_minute,
            tokens_per_minute,
            models,
        }
    }

    fn budget(&mut self, path: &str, raw: &RawBudget) -> Budget {
        for (field, v) in [("daily_usd", raw.daily_usd), ("monthly_usd", raw.monthly_usd)] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                self.issue(format!("{path}.{field}"), "must be a non-negative amount of USD");
            }
        }
        let soft_ratio = raw.soft_ratio.unwrap_or(DEFAULT_SOFT_RATIO);
        if !(soft_ratio > 0.0 && soft_ratio <= 1.0) {
            self.issue(
                format!("{path}.soft_ratio"),
                "must be a share above 0 and at most 1 (0.8 = soft limit at 80 %)",
            );
        }
        if raw.daily_usd.is_none() && raw.monthly_usd.is_none() {
            self.issue(path, "set daily_usd, monthly_usd or both");
        }
        Budget {
            daily_usd: raw.daily_usd,
            monthly_usd: raw.monthly_usd,
            soft_ratio,
        }
    }

    fn redis(&mut self, raw: RawRedis) -> Option<RedisConfig> {
        let start = self.issues.len();
        let url = raw.url.trim().to_owned();
        let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
        if !scheme_ok {
            self.issue(
                "redis.url",
                "must be redis://HOST:PORT[/DB] or rediss://… for TLS (the password goes in password_env or password_file)",
            );
        } else if url.contains('@') {
            self.issue(
                "redis.url",
                "must not carry credentials: put the password in password_env or password_file",
            );
        }
        let password = match (&raw.password_env, &raw.password_file) {
            (Some(_), Some(_)) => {
                self.issue("redis", "set only one of password_env and password_file");
                None
            }
            (Some(var), None) => match self.vars.var(var).filter(|v| !v.is_empty()) {
                Some(v) => Some(SecretString(v)),
                None => {
                    self.issue(
                        "redis.password_env",
                        format!("the environment variable {var} is not set or empty"),
                    );
                    None
                }
            },
            (None, Some(file)) => match std::fs::read_to_string(file) {
                Ok(v) => Some(SecretString(v.trim_end_matches(['\n', '\r']).to_owned())),
                Err(e) => {
                    self.issue("redis.password_file", format!("cannot read {file}: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        let c = raw.cache.unwrap_or_default();
        let timeout = self.duration("redis.timeout", raw.timeout.as_deref(), DEFAULT_REDIS_TIMEOUT);
        let sync_interval = self.duration("redis.sync_interval", raw.sync_interval.as_deref(), DEFAULT_REDIS_SYNC);
        if sync_interval < Duration::from_millis(10) {
            self.issue("redis.sync_interval", "must be at least 10ms");
        }
        if timeout.is_zero() {
            self.issue("redis.timeout", "must be greater than zero");
        }
        (self.issues.len() == start).then(|| RedisConfig {
            url,
            password,
            key_prefix: raw.key_prefix.unwrap_or_else(|| "llm-sidecar".into()),
            timeout,
            sync_interval,
            cache: c.enabled.unwrap_or(true),
            warm_entries: c.warm_entries.unwrap_or(DEFAULT_WARM_ENTRIES) as usize,
            stream_max_len: c.stream_max_len.unwrap_or(DEFAULT_STREAM_MAX_LEN).max(1) as usize,
        })
    }

    fn resilience(&mut self, raw: RawResilience) -> ResilienceConfig {
        let r = raw.retries.unwrap_or_default();
        let max_attempts = r.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 {
            self.issue(
                "resilience.retries.max_attempts",
                "must be at least 1 (1 means no retries)",
            );
        }
        let retries = RetryPolicy {
            max_attempts: max_attempts.max(1),
            base_delay: self.duration(
                "resilience.retries.base_delay",
                r.base_delay.as_deref(),
                DEFAULT_RETRY_BASE_DELAY,
            ),
            max_delay: self.duration(
                "resilience.retries.max_delay",
                r.max_delay.as_deref(),
                DEFAULT_RETRY_MAX_DELAY,
            ),
            max_retry_after: self.duration(
                "resilience.retries.max_retry_after",
                r.max_retry_after.as_deref(),
                DEFAULT_MAX_RETRY_AFTER,
            ),
        };
        let b = raw.retry_budget.unwrap_or_default();
        let ratio = b.ratio.unwrap_or(DEFAULT_RETRY_RATIO);
        if !(ratio.is_finite() && ratio >= 0.0) {
            self.issue(
                "resilience.retry_budget.ratio",
                "must be a non-negative share (0.2 = 20 % extra load)",
            );
        }
        let min_per_second = b.min_per_second.unwrap_or(DEFAULT_RETRY_MIN_PER_SECOND);
        if !(min_per_second.is_finite() && min_per_second >= 0.0) {
            self.issue(
                "resilience.retry_budget.min_per_second",
                "must be a non-negative number",
            );
        }
        let window = self.duration(
            "resilience.retry_budget.window",
            b.window.as_deref(),
            DEFAULT_RETRY_WINDOW,
        );
        if window < Duration::from_secs(1) {
            self.issue("resilience.retry_budget.window", "must be at least 1s");
        }
        let k = raw.breaker.unwrap_or_default();
        let failure_ratio = k.failure_ratio.unwrap_or(DEFAULT_BREAKER_RATIO);
        if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
            self.issue(
                "resilience.breaker.failure_ratio",
                "must be a share above 0 and at most 1 (e.g. 0.5)",
            );
        }
        let consecutive_failures = k.consecutive_failures.unwrap_or(DEFAULT_BREAKER_CONSECUTIVE);
        if consecutive_failures == 0 {
            self.issue("resilience.breaker.consecutive_failures", "must be at least 1");
        }
        let breaker = BreakerConfig {
            enabled: k.enabled.unwrap_or(true),
            consecutive_failures: consecutive_failures.max(1),
            failure_ratio,
            min_requests: k.min_requests.unwrap_or(DEFAULT_BREAKER_MIN_REQUESTS).max(1),
            window: self.duration("resilience.breaker.window", k.window.as_deref(), DEFAULT_BREAKER_WINDOW),
            open_for: self.duration(
                "resilience.breaker.open_for",
                k.open_for.as_deref(),
                DEFAULT_BREAKER_OPEN_FOR,
            ),
            half_open_probes: k.half_open_probes.unwrap_or(1).max(1),
        };
        ResilienceConfig {
            retries,
            retry_budget: RetryBudgetConfig {
                ratio,
                min_per_second,
                window,
            },
            breaker,
        }
    }

    fn scheduling(&mut self, raw: RawScheduling) -> SchedulingConfig {
        let mut classes: Vec<(Arc<str>, u32)> = Vec::new();
        for (i, c) in raw.classes.iter().enumerate() {
            let path = format!("scheduling.classes[{i}]");
            if c.weight == 0 {
                self.issue(
                    format!("{path}.weight"),
                    "must be at least 1 (a class with weight 0 would starve)",
                );
            }
            if classes.iter().any(|(n, _)| **n == *c.name) {
                self.issue(format!("{path}.name"), format!("class {:?} is defined twice", c.name));
            }
            classes.push((c.name.as_str().into(), c.weight.max(1)));
        }
        if classes.is_empty() {
            classes = DEFAULT_CLASSES.iter().map(|(n, w)| (Arc::from(*n), *w)).collect();
        }
        let default_name = raw.default_class.as_deref().unwrap_or(DEFAULT_CLASS);
        let default_class = match classes.iter().position(|(n, _)| &**n == default_name) {
            Some(i) => i,
            None if raw.default_class.is_none() => 0,
            None => {
                self.issue(
                    "scheduling.default_class",
                    format!(
                        "unknown class {default_name:?}: use one of {}",
                        names(classes.iter().map(|(n, _)| &**n))
                    ),
                );
                0
            }
        };
        let max_queued = raw.max_queued.unwrap_or(DEFAULT_MAX_QUEUED) as usize;
        SchedulingConfig {
            classes,
            default_class,
            queue_timeout: self.duration(
                "scheduling.queue_timeout",
                raw.queue_timeout.as_deref(),
                DEFAULT_QUEUE_TIMEOUT,
            ),
            max_queued,
        }
    }

    fn route_cache(&mut self, path: &str, rc: RawRouteCache) -> RouteCacheConfig {
        for (key, t) in [
            ("threshold", rc.threshold),
            ("min_threshold", rc.min_threshold),
            ("max_threshold", rc.max_threshold),
        ] {
            if let Some(t) = t {
                self.threshold(&format!("{path}.{key}"), t);
            }
        }
        if let Some(m) = rc.max_wrong_rate {
            self.wrong_rate(&format!("{path}.max_wrong_rate"), m);
        }
        if let (Some(lo), Some(hi)) = (rc.min_threshold, rc.max_threshold) {
            self.threshold_range(path, lo, hi);
        }
        RouteCacheConfig {
            enabled: rc.enabled,
            threshold: rc.threshold,
            mode: rc
                .mode
                .as_deref()
                .and_then(|m| self.semantic_mode(&format!("{path}.mode"), m)),
            max_wrong_rate: rc.max_wrong_rate,
            min_threshold: rc.min_threshold,
            max_threshold: rc.max_threshold,
        }
    }

    fn semantic_mode(&mut self, path: &str, m: &str) -> Option<SemanticMode> {
        match m {
            "serve" => Some(SemanticMode::Serve),
            "shadow" => Some(SemanticMode::Shadow),
            other => {
                self.issue(
                    path,
                    format!("unknown mode {other:?}: use serve (semantic hits are served) or shadow (judged against the upstream answer, never served)"),
                );
                None
            }
        }
    }

    fn wrong_rate(&mut self, path: &str, m: f32) {
        if !(m > 0.0 && m < 1.0) {
            self.issue(
                path,
                format!("{m} is not an error bound: use a share between 0 and 1 (0.01 = at most 1 wrong answer in 100 semantic hits)"),
            );
        }
    }

    fn threshold_range(&mut self, path: &str, lo: f32, hi: f32) {
        if lo > hi {
            self.issue(
                format!("{path}.min_threshold"),
                format!("{lo} is above max_threshold {hi}: the range max_wrong_rate moves the threshold in must not be empty"),
            );
        }
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
            assets_dir: s.assets_dir.map(PathBuf::from).unwrap_or_else(default_assets_dir),
            timeout: self.duration("cache.semantic.timeout", s.timeout.as_deref(), DEFAULT_SEMANTIC_TIMEOUT),
            queue: s.queue.unwrap_or(DEFAULT_EMBED_QUEUE).max(1) as usize,
            max_batch: s.max_batch.map(|b| b.max(1) as usize),
            threads: s.threads.unwrap_or(1).clamp(1, 16) as usize,
            verify_sample: s.verify_sample.unwrap_or(DEFAULT_VERIFY_SAMPLE),
            verify_agreement: s.verify_agreement.unwrap_or(DEFAULT_VERIFY_AGREEMENT),
            mode: s
                .mode
                .as_deref()
                .and_then(|m| self.semantic_mode("cache.semantic.mode", m))
                .unwrap_or(SemanticMode::Serve),
            max_wrong_rate: s.max_wrong_rate,
            min_threshold: s.min_threshold.unwrap_or(DEFAULT_MIN_THRESHOLD),
            max_threshold: s.max_threshold.unwrap_or(DEFAULT_MAX_THRESHOLD),
            alignment_band: s.alignment_band.unwrap_or(DEFAULT_ALIGNMENT_BAND),
            min_alignment: s.min_alignment.unwrap_or(DEFAULT_MIN_ALIGNMENT),
            verifier: s.verifier.map(|v| {
                let model = PathBuf::from(v.model);
                let tokenizer = v.tokenizer.map(PathBuf::from).unwrap_or_else(|| {
                    model
                        .parent()
                        .unwrap_or(std::path::Path::new("."))
                        .join("tokenizer.json")
                });
                VerifierConfig {
                    model,
                    tokenizer,
                    min_score: v.min_score.unwrap_or(DEFAULT_VERIFIER_MIN_SCORE),
                }
            }),
        };
        if let Some(v) = &semantic.verifier {
            self.threshold("cache.semantic.verifier.min_score", v.min_score);
        }
        if !(0.0..=0.2).contains(&semantic.alignment_band) {
            self.issue(
                "cache.semantic.alignment_band",
                format!(
                    "{} is not a band: use a cosine distance from 0 (off) to 0.2 below the threshold (default 0.05)",
                    semantic.alignment_band
                ),
            );
        }
        self.threshold("cache.semantic.min_alignment", semantic.min_alignment);
        if let Some(m) = semantic.max_wrong_rate {
            self.wrong_rate("cache.semantic.max_wrong_rate", m);
        }
        self.threshold("cache.semantic.min_threshold", semantic.min_threshold);
        self.threshold("cache.semantic.max_threshold", semantic.max_threshold);
        self.threshold_range("cache.semantic", semantic.min_threshold, semantic.max_threshold);
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

    fn tenants(&mut self, raw: RawTenants, scheduling: &SchedulingConfig) -> TenantsConfig {
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
        let mut priorities = BTreeMap::new();
        let mut limits = BTreeMap::new();
        let mut budgets = BTreeMap::new();
        let defaults = raw.defaults.clone().unwrap_or_default();
        let default_limits = defaults
            .limits
            .as_ref()
            .map(|l| Arc::new(self.limits("tenants.defaults.limits", l)));
        let default_budget = defaults
            .budget
            .as_ref()
            .map(|b| self.budget("tenants.defaults.budget", b));
        for (name, t) in &raw.list {
            let tenant: Arc<str> = name.as_str().into();
            if *tenant != *default_tenant {
                names_.push(tenant.clone());
            }
            let tp = format!("tenants.list.{name}");
            if let Some(l) = &t.limits {
                let l = self.limits(&format!("{tp}.limits"), l);
                limits.insert(tenant.clone(), Arc::new(l));
            }
            if let Some(b) = &t.budget {
                let b = self.budget(&format!("{tp}.budget"), b);
                budgets.insert(tenant.clone(), b);
            }
            if let Some(p) = &t.priority {
                match scheduling.class(p) {
                    Some(c) => {
                        priorities.insert(tenant.clone(), c);
                    }
                    None => self.issue(
                        format!("tenants.list.{name}.priority"),
                        format!(
                            "unknown priority class {p:?}: use one of {}",
                            names(scheduling.classes.iter().map(|(n, _)| &**n))
                        ),
                    ),
                }
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
            priorities,
            limits,
            default_limits,
            budgets,
            default_budget,
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
    fn semantic_modes_and_error_bounds_are_checked_with_their_paths() {
        let good = format!(
            "{GOOD}cache:\n  semantic:\n    mode: shadow\n    max_wrong_rate: 0.02\n"
        )
        .replace(
            "    targets: [{ model: gpt-4o-mini }]\n",
            "    targets: [{ model: gpt-4o-mini }]\n    cache: { mode: serve, max_wrong_rate: 0.05, min_threshold: 0.85 }\n",
        );
        let c = Config::load(&good, &key_vars).unwrap();
        assert_eq!(c.cache.semantic.mode, SemanticMode::Shadow);
        assert_eq!(c.cache.semantic.max_wrong_rate, Some(0.02));
        assert_eq!(c.cache.semantic.min_threshold, DEFAULT_MIN_THRESHOLD);
        let r = &c.routes[0].cache;
        assert_eq!(
            (r.mode, r.max_wrong_rate, r.min_threshold),
            (Some(SemanticMode::Serve), Some(0.05), Some(0.85))
        );

        let bad = format!(
            "{GOOD}cache:\n  semantic:\n    mode: watch\n    max_wrong_rate: 1.5\n    min_threshold: 0.95\n    max_threshold: 0.9\n"
        )
        .replace(
            "    targets: [{ model: gpt-4o-mini }]\n",
            "    targets: [{ model: gpt-4o-mini }]\n    cache: { mode: paused, max_wrong_rate: 0 }\n",
        );
        let errs = Config::load(&bad, &key_vars).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|i| i.path.as_str()).collect();
        for want in [
            "cache.semantic.mode",
            "cache.semantic.max_wrong_rate",
            "cache.semantic.min_threshold",
            "routes[0].cache.mode",
            "routes[0].cache.max_wrong_rate",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
        assert!(errs.to_string().contains("use serve"), "{errs}");
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
    fn default_privacy_patterns_catch_real_formats_with_and_without_spaces() {
        let set = regex::RegexSet::new(DEFAULT_PRIVACY_PATTERNS).unwrap();
        for private in [
            "mail jane.doe+news@example.co.uk about it",
            "card 4111 1111 1111 1111 exp 12/27",
            "card 4111-1111-1111-1111",
            "card 4111111111111111",
            "amex 378282246310005",
            "amex 3782 822463 10005",
            "ssn 123-45-6789",
            // IBANs of several lengths, printed and electronic forms.
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB29NWBK60161331926819",
            "GB29 NWBK 6016 1331 9268 19",
            "FR1420041010050500013M02606",
            "FR14 2004 1010 0505 0001 3M02 606",
            "NL91ABNA0417164300",
            "NL91 ABNA 0417 1643 00",
            "BE68539007547034",
            "NO9386011117947",
            "pay to CH9300762011623852957 today",
        ] {
            assert!(set.is_match(private), "{private:?} was not caught");
        }
        for public in [
            "How do I reset my password?",
            "order 12345 shipped on 2024-05-01",
            "version 2.10.3 of the SDK",
            "call 555-1234",
            "What is the capital of France?",
            "ISO 3166 code DE and GB",
            "use @Override in Java",
        ] {
            assert!(!set.is_match(public), "{public:?} was taken for private data");
        }
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
