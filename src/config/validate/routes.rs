//! `routes` and `default_route`: matching, strategies, targets, canaries, per-route cache settings.

use super::*;

impl Validator<'_> {
    pub(super) fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        models: &BTreeMap<String, Arc<ModelConfig>>,
    ) -> Vec<RouteConfig> {
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
            match (&r.plugin, strategy) {
                (None, Strategy::Plugin) => self.issue(
                    format!("{path}.plugin"),
                    "is required by strategy plugin: the name a program embedding the sidecar registered (Options::strategy)",
                ),
                (Some(_), s) if s != Strategy::Plugin => {
                    self.issue(format!("{path}.plugin"), "is only used by strategy: plugin")
                }
                _ => {}
            }
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
                plugin: r.plugin,
            });
        }
        routes
    }

    pub(super) fn route_match(&mut self, path: &str, raw: RawMatch) -> MatchConfig {
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

    pub(super) fn canary(
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
}
