//! `providers`: base URLs, auth (key files, env vars, headers), timeouts, query strings.

use super::*;

impl Validator<'_> {
    /// `<path>.headers`: static headers sent with every request.
    pub(super) fn header_list(&mut self, path: &str, raw: BTreeMap<String, String>) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        for (k, v) in raw {
            let hp = format!("{path}.headers.{k}");
            match (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
                (Ok(k), Ok(v)) => headers.push((k, v)),
                (Err(_), _) => self.issue(hp, "is not a valid HTTP header name"),
                (_, Err(_)) => self.issue(hp, "is not a valid HTTP header value (no control characters)"),
            }
        }
        headers
    }

    /// `<path>.ca_file`: an extra CA bundle, which must be readable.
    pub(super) fn ca_file(&mut self, path: &str, raw: Option<String>) -> Option<PathBuf> {
        let ca_file = raw.map(PathBuf::from);
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
        ca_file
    }

    pub(super) fn provider(&mut self, name: &str, raw: RawProvider) -> Option<ProviderConfig> {
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
        let soft = self.soft.len();
        let auth = raw.auth.and_then(|a| self.auth(&format!("{path}.auth"), a));
        let unusable = self.soft[soft..].first().map(|i| Arc::from(i.message.as_str()));
        let headers = self.header_list(&path, raw.headers);
        let query = raw
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", encode_query(k), encode_query(v)))
            .collect::<Vec<_>>()
            .join("&");
        let ca_file = self.ca_file(&path, raw.ca_file);
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
            unusable,
        })
    }

    pub(super) fn auth(&mut self, path: &str, raw: RawAuth) -> Option<(HeaderName, Secret)> {
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
                    // The provider is unusable, not the config: one namespace's missing key
                    // must not keep the pod's other providers (and the app) from starting.
                    self.soft.push(ConfigIssue::new(
                        format!("{path}.key_env"),
                        format!("environment variable {var} is not set: set it to the provider's API key"),
                    ));
                    return None;
                }
            },
            (None, Some(file)) => match std::fs::read_to_string(file) {
                Ok(k) => k.trim().to_owned(),
                Err(e) => {
                    self.soft.push(ConfigIssue::new(
                        format!("{path}.key_file"),
                        format!("{file} cannot be read ({}): mount the key there", e.kind()),
                    ));
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
}
