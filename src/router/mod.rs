//! Which models may answer a request, in which order, and why. Routes are tried in the order
//! written; the first whose conditions hold (requested model or glob, tenant, a header,
//! keywords or a regex on the last user turn) decides with its strategy: `ordered`,
//! `weighted`, `canary`, `cheapest`, `fastest`, `semantic` or `complexity`. A requested name
//! that no route takes but that is in the catalogue is its own one-model route. Targets that
//! cannot serve the request (a missing capability, a context window too small) are dropped
//! before the strategy runs.
//!
//! Every decision carries a [`Reason`] for the request log and headers. Decisions are pure
//! functions of the request, the snapshot and two pieces of shared state: latency EWMAs
//! (`resilience`) and canary windows, which outlive config reloads.

pub mod affinity;
pub mod complexity;
pub mod signals;
mod strategy;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use crate::config::{CanaryConfig, Config, ModelConfig, RouteConfig, Sticky, Strategy, Tier};
use crate::resilience::{HealthRegistry, ModelHealth};
pub use signals::Signals;

/// The header an app may send to force a route (when `routing.allow_route_header` is on).
pub(crate) const ROUTE_HEADER: &str = "x-llm-sidecar-route";

#[derive(Debug, Clone)]
pub struct Target {
    pub(crate) model: Arc<ModelConfig>,
    pub(crate) health: Arc<ModelHealth>,
    pub(crate) weight: u32,
    pub(crate) tier: Option<Tier>,
    /// The metric series this target's answers update, kept once made.
    pub(crate) series: Arc<crate::telemetry::ModelSeries>,
}

/// One route, ready to decide.
pub struct Route {
    pub(crate) name: Arc<str>,
    /// `name` as the `x-llm-sidecar-route` response header, made once: a header value made
    /// per request was two allocations (its bytes, then their promotion when cloned).
    pub(crate) header: http::HeaderValue,
    pub(crate) strategy: Strategy,
    pub(crate) targets: Vec<Target>,
    /// `routes[].cache` (all `None` for a catalogue model's own route).
    pub(crate) cache: crate::config::RouteCacheConfig,
    index: usize,
    matcher: Matcher,
    sticky: Sticky,
    canary: Option<Canary>,
    latency_budget: Option<Duration>,
    complexity_threshold: f32,
    /// `semantic` strategy: cosine needed to pick a destination.
    pub(crate) semantic_threshold: f32,
    /// `semantic` strategy: (target index, example utterance).
    pub(crate) examples: Vec<(usize, String)>,
    /// The examples' embeddings, computed once on first use by whoever holds an embedder.
    pub(crate) example_vectors: OnceLock<Vec<(usize, Vec<f32>)>>,
    /// `strategy: plugin`: the strategy the embedding program registered.
    plugin: Option<Arc<dyn crate::plugin::RoutingStrategy>>,
}

/// A route's name as a header value; a name that cannot be one (control characters) gets a
/// placeholder, so the header is always there.
pub(crate) fn route_header(name: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(name).unwrap_or_else(|_| http::HeaderValue::from_static("invalid-name"))
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .field(
                "targets",
                &self.targets.iter().map(|t| &*t.model.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Debug, Default)]
struct Matcher {
    exact: Vec<Box<str>>,
    globs: Vec<Box<str>>,
    tenants: Vec<Arc<str>>,
    header: Option<(http::HeaderName, Vec<String>)>,
    keywords: Vec<String>,
    regex: Option<regex::Regex>,
    budget_soft: Option<bool>,
}

impl Matcher {
    fn matches(&self, req: &Request<'_>, text: Option<&str>) -> bool {
        let (model, tenant, headers) = (req.model, req.tenant, req.headers);
        if self.budget_soft.is_some_and(|want| want != req.budget_soft) {
            return false;
        }
        let model_ok = (self.exact.is_empty() && self.globs.is_empty())
            || self.exact.iter().any(|e| **e == *model)
            || self.globs.iter().any(|g| glob(g, model));
        if !model_ok {
            return false;
        }
        if !self.tenants.is_empty() && !self.tenants.iter().any(|t| **t == *tenant) {
            return false;
        }
        if let Some((name, values)) = &self.header {
            match headers.get(name) {
                None => return false,
                Some(v) if !values.is_empty() && !values.iter().any(|x| x.as_bytes() == v.as_bytes()) => {
                    return false;
                }
                Some(_) => {}
            }
        }
        if !self.keywords.is_empty() || self.regex.is_some() {
            let Some(text) = text else { return false };
            if !self.keywords.is_empty() {
                let lower = text.to_lowercase();
                if !self.keywords.iter().any(|k| lower.contains(k.as_str())) {
                    return false;
                }
            }
            if let Some(re) = &self.regex
                && !re.is_match(text)
            {
                return false;
            }
        }
        true
    }
}

/// `*` (any run) and `?` (one character) globbing, for model names.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A canary's observed behaviour over the current window, and whether it was reverted.
#[derive(Debug)]
pub struct CanaryState {
    reverted: AtomicBool,
    window: Mutex<CanaryWindow>,
}

#[derive(Debug)]
struct CanaryWindow {
    started: Instant,
    requests: u32,
    errors: u32,
    latency_sum: Duration,
}

struct Canary {
    config: CanaryConfig,
    target: Target,
    state: Arc<CanaryState>,
}

/// Why the canary was reverted, for the log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Reverted {
    pub(crate) model: Arc<str>,
    pub(crate) requests: u32,
    pub(crate) error_rate: f64,
    pub(crate) mean_latency: Duration,
}

impl Route {
    /// Feeds the canary's window with one request's outcome; `Some` when this reverts it.
    /// `latency` is asked only when the request counts for a canary (a clock read per attempt
    /// otherwise, #19).
    pub(crate) fn canary_report(
        &self,
        model: &str,
        success: bool,
        latency: impl FnOnce() -> Duration,
    ) -> Option<Reverted> {
        let c = self.canary.as_ref()?;
        if *c.config.model != *model || c.state.reverted.load(Ordering::Relaxed) {
            return None;
        }
        let latency = latency();
        let now = Instant::now();
        let mut w = c.state.window.lock().ok()?;
        if now.saturating_duration_since(w.started) >= c.config.window {
            *w = CanaryWindow {
                started: now,
                requests: 0,
                errors: 0,
                latency_sum: Duration::ZERO,
            };
        }
        w.requests += 1;
        w.errors += u32::from(!success);
        w.latency_sum += latency;
        if w.requests < c.config.min_requests {
            return None;
        }
        let error_rate = f64::from(w.errors) / f64::from(w.requests);
        let mean_latency = w.latency_sum / w.requests;
        let too_slow = c.config.max_latency.is_some_and(|m| mean_latency > m);
        if error_rate > c.config.max_error_rate || too_slow {
            c.state.reverted.store(true, Ordering::Relaxed);
            return Some(Reverted {
                model: c.config.model.clone(),
                requests: w.requests,
                error_rate,
                mean_latency,
            });
        }
        None
    }

    /// Whether this route is one for tenants past their soft budget (`match: {budget: soft}`).
    pub(crate) fn for_soft_budget(&self) -> bool {
        self.matcher.budget_soft == Some(true)
    }

    /// `(canary model, reverted)` for routes with a canary.
    pub(crate) fn canary_status(&self) -> Option<(Arc<str>, bool)> {
        self.canary
            .as_ref()
            .map(|c| (c.config.model.clone(), c.state.reverted.load(Ordering::Relaxed)))
    }
}

/// Why the candidates are in this order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// The requested name is a catalogue model with no route of its own.
    Catalogue,
    Ordered,
    Weighted {
        sticky: bool,
    },
    Canary {
        to_canary: bool,
        reverted: bool,
    },
    Cheapest {
        usd: f64,
    },
    Fastest {
        latency: Option<Duration>,
    },
    Semantic {
        similarity: f32,
    },
    Complexity {
        score: f32,
        tier: Tier,
    },
    /// A registered strategy ordered the candidates (`applied: false`: it left none, or named
    /// one twice, and the route's order was kept).
    Plugin {
        applied: bool,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::Catalogue => f.write_str("catalogue model"),
            Reason::Ordered => f.write_str("ordered"),
            Reason::Weighted { sticky } => write!(f, "weighted{}", if sticky { " (sticky)" } else { "" }),
            Reason::Canary { reverted: true, .. } => f.write_str("canary reverted: stable targets only"),
            Reason::Canary { to_canary, .. } => {
                write!(f, "canary: {}", if to_canary { "to the canary" } else { "to stable" })
            }
            Reason::Cheapest { usd } => write!(f, "cheapest (estimated ${usd:.6})"),
            Reason::Fastest { latency: Some(l) } => write!(f, "fastest (ewma {:.1} ms)", l.as_secs_f64() * 1e3),
            Reason::Fastest { latency: None } => f.write_str("fastest (no latency sample yet: exploring)"),
            Reason::Semantic { similarity } => write!(f, "semantic (similarity {similarity:.3})"),
            Reason::Complexity { score, tier } => write!(
                f,
                "complexity (score {score:.2} → {})",
                if tier == Tier::Strong { "strong" } else { "light" }
            ),
            Reason::Plugin { applied: true } => f.write_str("plugin"),
            Reason::Plugin { applied: false } => f.write_str("plugin (its order was unusable: route order kept)"),
        }
    }
}

/// A routing decision: the route, candidates in order, and why.
#[derive(Debug)]
pub struct Decision {
    pub(crate) route: Arc<Route>,
    pub candidates: Vec<Target>,
    pub(crate) reason: Reason,
    /// Targets dropped because they cannot serve this request.
    pub(crate) filtered: usize,
    /// `true` when the app forced the route with [`ROUTE_HEADER`].
    pub(crate) forced: bool,
    /// The provider the candidates were narrowed to: it holds the conversation's state
    /// (see [`affinity`]).
    pub(crate) pinned: Option<Arc<str>>,
}

impl Decision {
    /// Keeps only the candidates served by `provider`, the one holding the state the request
    /// builds on; changes nothing (and says `false`) when the route has no candidate there.
    pub(crate) fn pin_to(&mut self, provider: &Arc<str>) -> bool {
        if !self.candidates.iter().any(|c| c.model.provider == *provider) {
            return false;
        }
        self.candidates.retain(|c| c.model.provider == *provider);
        self.pinned = Some(provider.clone());
        true
    }
}

/// A decision, or a `semantic` route that needs the last user turn's embedding to decide.
#[derive(Debug)]
pub enum Step {
    Decided(Decision),
    NeedsEmbedding(Arc<Route>),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("The model `{requested}` does not exist or you do not have access to it. Models served here: {available}.")]
    UnknownModel { requested: String, available: Arc<str> },
    #[error("The route `{requested}` named in x-llm-sidecar-route does not exist. Routes: {available}.")]
    UnknownRoute { requested: String, available: Arc<str> },
    #[error(
        "No model of route `{route}` can serve this request: it needs {needs} and about {tokens} tokens of context, and the catalogue declares {detail}."
    )]
    NoEligibleTarget {
        route: Arc<str>,
        needs: String,
        tokens: u64,
        detail: String,
    },
    #[error(
        "Route `{route}` cannot be served here: its model `{model}` is on provider `{provider}`, which this sidecar cannot use ({reason}). Ask the platform team to provide the key, or use another model."
    )]
    Unusable {
        route: Arc<str>,
        model: Arc<str>,
        provider: Arc<str>,
        reason: Arc<str>,
    },
}

/// What the router needs to know about one request.
pub struct Request<'a> {
    pub model: &'a str,
    pub tenant: &'a str,
    pub headers: &'a HeaderMap,
    pub signals: &'a Signals<'a>,
    /// The tenant is past its soft budget limit (routes can send it to a cheaper tier).
    pub budget_soft: bool,
}

#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    by_name: HashMap<Box<str>, Arc<Route>>,
    catalogue: HashMap<Box<str>, Arc<Route>>,
    default: Option<Arc<Route>>,
    available: Arc<str>,
    route_names: Arc<str>,
    needs_text: bool,
    allow_route_header: bool,
    /// Names listed by `GET /v1/models`: catalogue models then exact route aliases, sorted.
    pub(crate) model_ids: Vec<Arc<str>>,
}

fn target(route: &Arc<str>, model: &Arc<ModelConfig>, health: &HealthRegistry) -> Target {
    let h = health
        .get(&model.name)
        .cloned()
        .unwrap_or_else(|| Arc::new(ModelHealth::new(model.provider.clone(), model.name.clone())));
    Target {
        model: model.clone(),
        health: h,
        weight: 1,
        tier: None,
        series: Arc::new(crate::telemetry::ModelSeries::new(
            route.clone(),
            model.name.clone(),
            model.provider.clone(),
        )),
    }
}

impl Router {
    /// Builds the router for a config. Canary windows (and reverts) carry over from `previous`
    /// for routes whose canary settings did not change.
    /// `plugins`: the strategies a `strategy: plugin` route may name (checked by
    /// [`Router::missing_plugin`] first).
    pub fn new(
        config: &Config,
        health: &HealthRegistry,
        previous: Option<&Router>,
        plugins: &crate::plugin::Plugins,
    ) -> Self {
        let mut catalogue: HashMap<Box<str>, Arc<Route>> = HashMap::new();
        for (name, model) in &config.models {
            let route = Route {
                name: model.name.clone(),
                header: route_header(&model.name),
                strategy: Strategy::Ordered,
                targets: vec![target(&model.name, model, health)],
                cache: Default::default(),
                index: usize::MAX,
                matcher: Matcher::default(),
                sticky: Sticky::None,
                canary: None,
                latency_budget: None,
                complexity_threshold: 1.0,
                semantic_threshold: 1.0,
                examples: Vec::new(),
                example_vectors: OnceLock::new(),
                plugin: None,
            };
            catalogue.insert(name.as_str().into(), Arc::new(route));
        }
        let mut routes = Vec::new();
        let mut by_name: HashMap<Box<str>, Arc<Route>> = HashMap::new();
        let mut default = None;
        let mut needs_text = false;
        for (index, r) in config.routes.iter().enumerate() {
            let route = Arc::new(Self::route(index, r, config, health, previous, plugins));
            needs_text |= route.matcher.regex.is_some()
                || !route.matcher.keywords.is_empty()
                || matches!(r.strategy, Strategy::Semantic | Strategy::Complexity | Strategy::Plugin);
            if config.default_route.as_deref() == Some(&*r.name) {
                default = Some(route.clone());
            }
            by_name.insert(r.name.as_ref().into(), route.clone());
            routes.push(route);
        }
        let mut model_ids: Vec<Arc<str>> = catalogue.keys().map(|k| Arc::from(&**k)).collect();
        for r in &routes {
            for e in &r.matcher.exact {
                if !model_ids.iter().any(|m| **m == **e) {
                    model_ids.push(Arc::from(&**e));
                }
            }
        }
        model_ids.sort();
        let available = if model_ids.is_empty() {
            "none (the config has no models)".to_owned()
        } else {
            model_ids.iter().take(20).map(|s| &**s).collect::<Vec<_>>().join(", ")
                + if model_ids.len() > 20 { ", …" } else { "" }
        };
        let route_names = routes.iter().map(|r| &*r.name).collect::<Vec<_>>().join(", ");
        Router {
            routes,
            by_name,
            catalogue,
            default,
            available: available.into(),
            route_names: route_names.into(),
            needs_text,
            allow_route_header: config.routing.allow_route_header,
            model_ids,
        }
    }

    fn route(
        index: usize,
        r: &RouteConfig,
        config: &Config,
        health: &HealthRegistry,
        previous: Option<&Router>,
        plugins: &crate::plugin::Plugins,
    ) -> Route {
        let mut targets = Vec::new();
        let mut examples = Vec::new();
        for t in &r.targets {
            let Some(m) = config.models.get(&*t.model) else {
                continue;
            };
            for e in t.examples.iter().filter(|e| !e.trim().is_empty()) {
                examples.push((targets.len(), e.clone()));
            }
            targets.push(Target {
                weight: t.weight,
                tier: t.tier,
                ..target(&r.name, m, health)
            });
        }
        let canary = r.canary.as_ref().and_then(|c| {
            let model = config.models.get(&*c.model)?;
            let state = previous
                .and_then(|p| p.by_name.get(&*r.name))
                .and_then(|old| old.canary.as_ref())
                .filter(|old| old.config == *c)
                .map(|old| old.state.clone())
                .unwrap_or_else(|| {
                    Arc::new(CanaryState {
                        reverted: AtomicBool::new(false),
                        window: Mutex::new(CanaryWindow {
                            started: Instant::now(),
                            requests: 0,
                            errors: 0,
                            latency_sum: Duration::ZERO,
                        }),
                    })
                });
            Some(Canary {
                config: c.clone(),
                target: target(&r.name, model, health),
                state,
            })
        });
        let (globs, exact): (Vec<_>, Vec<_>) = r.models.iter().partition(|m| m.contains(['*', '?']));
        let matcher = Matcher {
            exact: exact.into_iter().map(|s| s.as_str().into()).collect(),
            globs: globs.into_iter().map(|s| s.as_str().into()).collect(),
            tenants: r.when.tenants.clone(),
            header: r.when.header.clone(),
            keywords: r.when.keywords.clone(),
            budget_soft: r.when.budget_soft,
            // Validated already; a failure here would mean the validator and router disagree.
            regex: r
                .when
                .regex
                .as_deref()
                .and_then(|re| regex::RegexBuilder::new(re).size_limit(1 << 20).build().ok()),
        };
        Route {
            name: r.name.clone(),
            header: route_header(&r.name),
            strategy: r.strategy,
            targets,
            cache: r.cache,
            index,
            matcher,
            sticky: r.sticky,
            canary,
            latency_budget: r.latency_budget,
            complexity_threshold: r.complexity_threshold as f32,
            semantic_threshold: r.semantic_threshold,
            examples,
            example_vectors: OnceLock::new(),
            plugin: r.plugin.as_deref().and_then(|p| plugins.strategy(p)).cloned(),
        }
    }

    /// The first `strategy: plugin` route naming a strategy that is not registered: (route
    /// index, name).
    pub(crate) fn missing_plugin<'c>(config: &'c Config, plugins: &crate::plugin::Plugins) -> Option<(usize, &'c str)> {
        config.routes.iter().enumerate().find_map(|(i, r)| {
            r.plugin
                .as_deref()
                .filter(|p| plugins.strategy(p).is_none())
                .map(|p| (i, p))
        })
    }

    /// Whether any route reads the last user turn (so the caller extracts it).
    pub fn needs_text(&self) -> bool {
        self.needs_text
    }

    pub(crate) fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Decides for a request, trying routes from `from` on (0 at first; after a `semantic`
    /// route found nothing close, the index after it).
    pub fn decide(&self, req: &Request<'_>, from: usize) -> Result<Step, RouteError> {
        if from == 0
            && self.allow_route_header
            && let Some(forced) = req.headers.get(ROUTE_HEADER)
        {
            let name = String::from_utf8_lossy(forced.as_bytes());
            let route = self.by_name.get(&*name).ok_or_else(|| RouteError::UnknownRoute {
                requested: name.chars().take(128).collect(),
                available: self.route_names.clone(),
            })?;
            return self.apply(route, req, true);
        }
        let text = req.signals.text.as_deref();
        for route in self.routes.iter().skip(from) {
            if route.matcher.matches(req, text) {
                if route.strategy == Strategy::Semantic {
                    if text.is_some() && !route.examples.is_empty() {
                        return Ok(Step::NeedsEmbedding(route.clone()));
                    }
                    continue;
                }
                return self.apply(route, req, false);
            }
        }
        match self.catalogue.get(req.model) {
            Some(route) => self.apply(route, req, false),
            None => Err(RouteError::UnknownModel {
                requested: req.model.chars().take(256).collect(),
                available: self.available.clone(),
            }),
        }
    }

    /// Finishes a `semantic` route's decision with the embedding of the last user turn
    /// (`None` when it could not be computed: the route is skipped).
    pub(crate) fn decide_semantic(
        &self,
        route: &Arc<Route>,
        req: &Request<'_>,
        query: Option<&[f32]>,
    ) -> Result<Step, RouteError> {
        let best = query.and_then(|q| {
            route
                .example_vectors
                .get()?
                .iter()
                .fold(None, |best: Option<(usize, f32)>, (t, v)| {
                    let s = crate::embed::cosine(q, v);
                    match best {
                        Some((_, b)) if b >= s => best,
                        _ => Some((*t, s)),
                    }
                })
        });
        match best {
            Some((t, similarity)) if similarity >= route.semantic_threshold => {
                let (eligible, filtered) = strategy::eligible(route, req.signals);
                let Some(first) = eligible
                    .iter()
                    .position(|c| Arc::ptr_eq(&c.model, &route.targets[t].model))
                else {
                    return self.decide(req, route.index + 1);
                };
                let mut candidates = eligible;
                let chosen = candidates.remove(first);
                candidates.insert(0, chosen);
                Ok(Step::Decided(Decision {
                    route: route.clone(),
                    candidates,
                    reason: Reason::Semantic { similarity },
                    filtered,
                    forced: false,
                    pinned: None,
                }))
            }
            _ => self.decide(req, route.index + 1),
        }
    }

    fn apply(&self, route: &Arc<Route>, req: &Request<'_>, forced: bool) -> Result<Step, RouteError> {
        let (mut candidates, filtered) = strategy::eligible(route, req.signals);
        if candidates.is_empty() {
            return Err(strategy::no_eligible(route, req.signals));
        }
        let c = &mut candidates;
        let reason = match route.strategy {
            Strategy::Ordered if route.index == usize::MAX => Reason::Catalogue,
            Strategy::Ordered | Strategy::Semantic => Reason::Ordered,
            Strategy::Weighted => strategy::weighted(route, req, c),
            Strategy::Canary => strategy::canary(route, req, c)?,
            Strategy::Cheapest => strategy::cheapest(req.signals, c),
            Strategy::Fastest => strategy::fastest(route, c),
            Strategy::Complexity => strategy::by_complexity(route, req.signals, c),
            Strategy::Plugin => match &route.plugin {
                Some(p) => strategy::plugin(&**p, route, req, c),
                None => Reason::Ordered,
            },
        };
        Ok(Step::Decided(Decision {
            route: route.clone(),
            candidates,
            reason,
            filtered,
            forced,
            pinned: None,
        }))
    }

    /// `Ok` when `GET /v1/models/{name}` should list `name`: a catalogue model or a name some
    /// route takes (by exact alias or glob).
    pub(crate) fn knows(&self, name: &str) -> Result<(), RouteError> {
        let taken = self.catalogue.contains_key(name)
            || self
                .routes
                .iter()
                .any(|r| r.matcher.exact.iter().any(|e| **e == *name) || r.matcher.globs.iter().any(|g| glob(g, name)));
        if taken {
            Ok(())
        } else {
            Err(RouteError::UnknownModel {
                requested: name.chars().take(256).collect(),
                available: self.available.clone(),
            })
        }
    }

    pub(crate) fn default_route(&self) -> Option<&Arc<Route>> {
        self.default.as_ref()
    }
}

#[cfg(test)]
mod tests;
