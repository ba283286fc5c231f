//! `tenants` and `redis`: identification, rate limits and budgets, the fleet's Redis.

use super::*;

impl Validator<'_> {
    pub(super) fn limits(&mut self, path: &str, raw: &RawLimits) -> Limits {
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

    pub(super) fn budget(&mut self, path: &str, raw: &RawBudget) -> Budget {
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

    pub(super) fn redis(&mut self, raw: RawRedis) -> Option<RedisConfig> {
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

    pub(super) fn tenants(&mut self, raw: RawTenants, scheduling: &SchedulingConfig) -> TenantsConfig {
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
