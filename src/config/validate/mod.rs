//! Raw config → typed [`Config`]. Collects every issue rather than stopping at the first, so
//! one `check-config` run shows the platform team everything to fix. One file per section:
//! `providers`, `routes`, `tenants` (with `redis`), `traffic` (`resilience`, `scheduling`) and
//! `cache`; the top level, `server` and `logging` are here.

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

mod cache;
mod callouts;
mod providers;
mod routes;
mod tenants;
mod traffic;

pub(super) fn load(text: &str, vars: &dyn VarLookup) -> Result<Config, ConfigErrors> {
    let mut issues = Vec::new();
    let mut value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(text) {
        Ok(serde_yaml_ng::Value::Null) => serde_yaml_ng::Value::Mapping(Default::default()),
        Ok(v) => v,
        Err(e) => {
            let loc = e.location().map(|l| (l.line(), l.column()));
            let message = e.to_string();
            if let Some(d) = duplicate_key(text, &message, loc) {
                return Err(ConfigErrors(vec![ConfigIssue::new(
                    format!("line {}, column {}", d.line, d.column),
                    format!(
                        "the YAML does not parse: the key {:?} appears twice in one mapping (first at line {}); keep one",
                        d.key, d.first_line
                    ),
                )]));
            }
            let at = loc.map(|(line, column)| format!("line {line}, column {column}"));
            return Err(ConfigErrors(vec![ConfigIssue::new(
                at.unwrap_or_default(),
                format!("the YAML does not parse: {message}"),
            )]));
        }
    };
    interpolate(&mut value, vars, &mut issues);
    if !issues.is_empty() {
        return Err(ConfigErrors(issues));
    }
    let raw = shape(value)?;
    let mut v = Validator {
        issues,
        vars,
        soft: Vec::new(),
    };
    let mut config = v.config(raw, text);
    if v.issues.is_empty() && !v.soft.is_empty() && config.models.values().all(|m| m.unusable.is_some()) {
        // Nothing could be served: what is missing is an error after all.
        v.issue(
            "providers",
            "no provider can be used (their keys are missing, see above): the sidecar would serve nothing",
        );
    }
    if v.issues.is_empty() {
        config.warnings = v.soft;
        Ok(config)
    } else {
        // A config that fails anyway lists every problem, the missing keys too.
        v.issues.extend(v.soft);
        Err(ConfigErrors(v.issues))
    }
}

struct DuplicateKey {
    key: String,
    line: usize,
    column: usize,
    first_line: usize,
}

/// Where a duplicate key is. The YAML parser names the key but places the error at the start
/// of the mapping that holds it (line 1, column 1 for a top-level key), so the lines of that
/// mapping are searched for the key at the mapping's column: its second occurrence is the one
/// to point at. `None` when the text does not show it plainly (flow style, odd quoting): the
/// parser's own message is shown then.
fn duplicate_key(text: &str, message: &str, loc: Option<(usize, usize)>) -> Option<DuplicateKey> {
    const MARK: &str = "duplicate entry with key \"";
    let rest = &message[message.find(MARK)? + MARK.len()..];
    let key = &rest[..rest.find('"')?];
    let (start, column) = loc.unwrap_or((1, 1));
    let indent = column.checked_sub(1)?;
    let spellings = [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")];
    let mut found = text
        .lines()
        .enumerate()
        .skip(start.saturating_sub(1))
        .filter(|(_, line)| {
            let Some(body) = line.get(indent..) else { return false };
            if !line[..indent].bytes().all(|b| b == b' ') {
                return false;
            }
            spellings.iter().any(|k| {
                body.strip_prefix(k.as_str())
                    .is_some_and(|after| after.is_empty() || after.starts_with([' ', '\t']))
            })
        });
    let (first, _) = found.next()?;
    let (second, _) = found.next()?;
    Some(DuplicateKey {
        key: key.to_owned(),
        line: second + 1,
        column,
        first_line: first + 1,
    })
}

/// The YAML as the raw config types. serde stops at the first unknown key or wrong type, so
/// each one found is reported, taken out of the document, and the rest read again: one run
/// names every such mistake (up to [`MAX_SHAPE_ISSUES`]), not one per edit.
fn shape(mut value: serde_yaml_ng::Value) -> Result<RawConfig, ConfigErrors> {
    let mut issues = Vec::new();
    loop {
        match serde_path_to_error::deserialize::<_, RawConfig>(&value) {
            Ok(raw) if issues.is_empty() => return Ok(raw),
            Ok(_) => return Err(ConfigErrors(issues)),
            Err(e) => {
                let segments: Vec<serde_path_to_error::Segment> = e.path().iter().cloned().collect();
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                issues.push(ConfigIssue::new(path, shape_message(&e.into_inner().to_string())));
                if issues.len() >= MAX_SHAPE_ISSUES || !remove_at(&mut value, &segments) {
                    return Err(ConfigErrors(issues));
                }
            }
        }
    }
}

const MAX_SHAPE_ISSUES: usize = 50;

/// serde's wording, with what to do about the common case: a bare number where a duration
/// (or another string) is expected.
fn shape_message(m: &str) -> String {
    let number = m.starts_with("invalid type: integer") || m.starts_with("invalid type: floating point");
    if number && m.ends_with("expected a string") {
        return format!("{m}: a duration needs a unit (e.g. 3600s, 500ms, 5m); other text needs quotes");
    }
    m.to_owned()
}

/// Takes the node at `path` out of the document; `false` when there is nothing to take (the
/// error was about the document as a whole).
fn remove_at(value: &mut serde_yaml_ng::Value, path: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Map { key }, serde_yaml_ng::Value::Mapping(m)) => match m.get_mut(key.as_str()) {
                Some(n) => n,
                None => return false,
            },
            (Segment::Seq { index }, serde_yaml_ng::Value::Sequence(s)) => match s.get_mut(*index) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, serde_yaml_ng::Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        // Taking a list item out would shift the paths of the ones after it: stop there.
        _ => false,
    }
}

pub(super) struct Validator<'a> {
    pub(super) issues: Vec<ConfigIssue>,
    pub(super) vars: &'a dyn VarLookup,
    /// Problems that leave a provider unusable but the rest of the config serving.
    pub(super) soft: Vec<ConfigIssue>,
}

impl Validator<'_> {
    pub(super) fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue::new(path, message));
    }

    pub(super) fn config(&mut self, raw: RawConfig, text: &str) -> Config {
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
            let unusable = providers
                .get(&m.provider)
                .and_then(|p: &Arc<ProviderConfig>| p.unusable.clone());
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
                    unusable,
                    header: HeaderValue::from_str(name.as_str()).ok(),
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
        let cache = self.cache(raw.cache, &providers);
        let routing = RoutingSettings {
            allow_route_header: raw.routing.unwrap_or_default().allow_route_header.unwrap_or(false),
        };
        let resilience = self.resilience(raw.resilience.unwrap_or_default());
        let redis = raw.redis.and_then(|r| self.redis(r));
        let tracing = self.tracing(raw.tracing.unwrap_or_default());
        let callouts = self.callouts(raw.callouts.unwrap_or_default());

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
            callouts,
            digest: hex::encode(Sha256::digest(text.as_bytes())),
            warnings: Vec::new(),
        }
    }

    pub(super) fn addr(&mut self, path: &str, s: &str) -> SocketAddr {
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

    pub(super) fn server(&mut self, raw: RawServer) -> ServerSettings {
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

    pub(super) fn logging(&mut self, raw: RawLogging) -> LoggingSettings {
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
}

pub(super) fn names<'a>(it: impl IntoIterator<Item = &'a (impl AsRef<str> + ?Sized + 'a)>) -> String {
    let list: Vec<&str> = it.into_iter().map(|s| s.as_ref()).collect();
    if list.is_empty() {
        "(none defined)".into()
    } else {
        list.join(", ")
    }
}

pub(super) fn encode_query(s: &str) -> String {
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
    fn a_duplicate_key_is_shown_where_it_repeats() {
        let issue = |text: &str| {
            let e = Config::load(text, &no_vars).unwrap_err();
            assert_eq!(e.0.len(), 1, "{e:?}");
            (e.0[0].path.clone(), e.0[0].message.clone())
        };
        // Top level: the parser itself says line 1, column 1.
        let (at, msg) = issue("providers:\n  a: { base_url: \"http://x/v1\" }\nmodels: {}\nproviders:\n  b: {}\n");
        assert_eq!(at, "line 4, column 1");
        assert!(
            msg.contains("\"providers\" appears twice") && msg.contains("first at line 1"),
            "{msg}"
        );
        // Nested, with the same key in a sibling mapping before it.
        let (at, msg) = issue(
            "providers:\n  a:\n    base_url: http://x/v1\n  b:\n    base_url: http://y/v1\n    base_url: http://z/v1\n",
        );
        assert_eq!(at, "line 6, column 5");
        assert!(msg.contains("first at line 5"), "{msg}");
        // Flow style: the parser's own words.
        let (_, msg) = issue("models: {m: {provider: a}, m: {provider: a}}\n");
        assert!(msg.contains("duplicate entry"), "{msg}");
    }

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
    fn every_unknown_key_and_wrong_type_is_reported_in_one_run() {
        let bad = r#"
listn: 127.0.0.1:8080
providers:
  p: { base_url: "http://127.0.0.1:1/v1", timeout: 5s }
models:
  m: { provider: p }
cache:
  ttl: 3600
"#;
        let errs = Config::load(bad, &no_vars).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths.len(), 3, "{paths:?}");
        for want in ["listn", "providers.p.timeout", "cache.ttl"] {
            assert!(paths.iter().any(|p| p.starts_with(want)), "missing {want} in {paths:?}");
        }
        let ttl = errs.0.iter().find(|i| i.path.starts_with("cache.ttl")).unwrap();
        assert!(ttl.message.contains("3600s"), "{}", ttl.message);
    }

    #[test]
    fn cache_encryption_keys_load_from_env_or_file_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("old");
        std::fs::write(&file, format!("{}\n", "ab".repeat(32))).unwrap();
        let text = format!(
            r#"
providers: {{ p: {{ base_url: "http://127.0.0.1:1/v1" }} }}
models: {{ m: {{ provider: p }} }}
cache:
  encryption:
    keys:
      - {{ id: "2026-12", key_env: CACHE_KEY }}
      - {{ id: "2026-11", key_file: {} }}
"#,
            file.display()
        );
        let b64 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let vars = |k: &str| (k == "CACHE_KEY").then(|| b64.to_owned());
        let c = Config::load(&text, &vars).unwrap();
        let keys = c.cache.encryption.as_ref().unwrap();
        assert_eq!(keys.keys[0], (Arc::from("2026-12"), [1u8; 32]));
        assert_eq!(keys.keys[1], (Arc::from("2026-11"), [0xab; 32]));
        assert!(!format!("{c:?}").contains("171, 171"), "key bytes stay out of Debug");
        let bad = r#"
providers: { p: { base_url: "http://127.0.0.1:1/v1" } }
models: { m: { provider: p } }
cache:
  encryption:
    keys:
      - { id: "a:b", key_env: SHORT }
      - { id: ok, key_env: UNSET }
      - { id: ok, key_env: SHORT, key_file: /x }
"#;
        let vars = |k: &str| (k == "SHORT").then(|| "c2hvcnQ=".to_owned());
        let errs = Config::load(bad, &vars).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|i| i.path.as_str()).collect();
        for want in [
            "cache.encryption.keys[0].id",
            "cache.encryption.keys[0]",
            "cache.encryption.keys[1].key_env",
            "cache.encryption.keys[2].id",
            "cache.encryption.keys[2]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn a_provider_without_its_key_is_unusable_not_fatal() {
        let two = r#"
providers:
  good: { base_url: "http://127.0.0.1:1/v1", auth: { key_env: KEY } }
  keyless: { base_url: "http://127.0.0.1:2/v1", auth: { key_env: NOT_SET_ANYWHERE } }
  unmounted: { base_url: "http://127.0.0.1:3/v1", auth: { key_file: /nonexistent/key } }
models:
  a: { provider: good }
  b: { provider: keyless }
  c: { provider: unmounted }
"#;
        let vars = |k: &str| (k == "KEY").then(|| "sk-1".to_owned());
        let c = Config::load(two, &vars).unwrap();
        assert!(c.providers["good"].unusable.is_none());
        assert!(c.models["a"].unusable.is_none());
        let why = c.models["b"].unusable.as_deref().unwrap();
        assert!(why.contains("NOT_SET_ANYWHERE is not set"), "{why}");
        assert!(c.models["c"].unusable.as_deref().unwrap().contains("/nonexistent/key"));
        let paths: Vec<&str> = c.warnings.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            ["providers.keyless.auth.key_env", "providers.unmounted.auth.key_file"]
        );

        // With no usable provider at all the config serves nothing: an error, naming each key.
        let errs = Config::load(two, &no_vars).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|i| i.path.as_str()).collect();
        for want in [
            "providers",
            "providers.good.auth.key_env",
            "providers.keyless.auth.key_env",
            "providers.unmounted.auth.key_file",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
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
