//! Cost advice from the traffic this sidecar actually served (`GET /admin/advice`): what would
//! have been saved
//!
//! - by cheaper models that meet the same constraints (capabilities the requests needed and
//!   the largest context they used; among models some route offers or that served traffic),
//!   for all of a route's traffic or only for the requests the complexity score rates light
//!   (scored on a sample of 1 in [`SCORE_EVERY`]);
//! - by the semantic cache at lower thresholds (each miss remembers the similarity of its best
//!   candidate, and what answering it cost), with the wrong-answer risk stated next to it;
//! - by sending tenants past their soft budget limit to a cheaper tier.
//!
//! Each item comes with the config change that would realise it. Figures are since start, in
//! USD at the catalogue's prices. Recording is a few additions under one short lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::{Capabilities, Config, ModelConfig};

/// One request in [`SCORE_EVERY`] gets a complexity score for the light-share estimate.
pub(crate) const SCORE_EVERY: u64 = 8;
/// Similarity buckets (lower bounds) remembered for semantic misses.
pub(crate) const MISS_BUCKETS: [f32; 6] = [0.80, 0.85, 0.88, 0.90, 0.92, 0.94];

#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    requests: u64,
    prompt: u64,
    completion: u64,
    cached: u64,
    cost: f64,
    max_tokens: u64,
    /// Scored requests, and how many of them were light, with their cost.
    scored: u64,
    light: u64,
    light_cost: f64,
    light_prompt: u64,
    light_completion: u64,
}

/// One finished request, as the advisor sees it.
pub struct Observation<'a> {
    pub(crate) route: &'a Arc<str>,
    /// `chat`, `completions` or `embeddings`: advice never crosses endpoints.
    pub(crate) endpoint: &'static str,
    pub(crate) model: &'a Arc<ModelConfig>,
    pub(crate) needs: Capabilities,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) cached_tokens: u64,
    pub(crate) cost: f64,
    /// `Some(true)` when scored light, `Some(false)` strong, `None` not scored.
    pub(crate) light: Option<bool>,
    /// The best semantic candidate's similarity when the cache missed.
    pub(crate) best_miss: Option<f32>,
    /// The tenant was past its soft budget limit and no `budget: soft` route took it.
    pub(crate) soft_unrouted: Option<Arc<str>>,
}

type SoftSpend = (u64, u64, f64);
/// (route, served model, needs as bits, endpoint).
type TrafficKey = (Arc<str>, Arc<str>, u8, &'static str);

#[derive(Default)]
struct Inner {
    traffic: HashMap<TrafficKey, Traffic>,
    /// Per bucket of MISS_BUCKETS: (misses, cost of answering them).
    misses: [(u64, f64); MISS_BUCKETS.len()],
    /// (tenant, served model) → (prompt tokens, completion tokens, cost) while soft and unrouted.
    soft: HashMap<(Arc<str>, Arc<str>), SoftSpend>,
}

#[derive(Default)]
pub struct Advisor {
    inner: Mutex<Inner>,
    counter: std::sync::atomic::AtomicU64,
}

impl Advisor {
    /// Whether this request should be complexity-scored (a 1 in [`SCORE_EVERY`] sample).
    pub(crate) fn sample(&self) -> bool {
        self.counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(SCORE_EVERY)
    }

    pub(crate) fn record(&self, o: Observation<'_>) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let caps = [Capabilities::TOOLS, Capabilities::VISION, Capabilities::JSON]
            .iter()
            .enumerate()
            .fold(0u8, |acc, (i, c)| acc | (u8::from(o.needs.contains(*c)) << i));
        let t = inner
            .traffic
            .entry((o.route.clone(), o.model.name.clone(), caps, o.endpoint))
            .or_default();
        t.requests += 1;
        t.prompt += o.prompt_tokens;
        t.completion += o.completion_tokens;
        t.cached += o.cached_tokens;
        t.cost += o.cost;
        t.max_tokens = t.max_tokens.max(o.prompt_tokens + o.completion_tokens);
        if let Some(light) = o.light {
            t.scored += 1;
            if light {
                t.light += 1;
                t.light_cost += o.cost;
                t.light_prompt += o.prompt_tokens;
                t.light_completion += o.completion_tokens;
            }
        }
        if let Some(s) = o.best_miss
            && let Some(i) = MISS_BUCKETS.iter().rposition(|b| s >= *b)
        {
            inner.misses[i].0 += 1;
            inner.misses[i].1 += o.cost;
        }
        if let Some(tenant) = o.soft_unrouted {
            let e = inner.soft.entry((tenant, o.model.name.clone())).or_default();
            e.0 += o.prompt_tokens;
            e.1 += o.completion_tokens;
            e.2 += o.cost;
        }
    }

    /// The advice, as JSON, against the current config.
    pub(crate) fn report(&self, config: &Config) -> serde_json::Value {
        let Ok(inner) = self.inner.lock() else {
            return serde_json::json!({"items": []});
        };
        let mut items = Vec::new();
        // 1. Cheaper models per (route, served model, needs).
        for ((route, model, caps, endpoint), t) in &inner.traffic {
            let Some(served) = config.models.get(&**model) else {
                continue;
            };
            if t.cost <= 0.0 {
                continue;
            }
            let mut needs = Capabilities::NONE;
            for (i, c) in [Capabilities::TOOLS, Capabilities::VISION, Capabilities::JSON]
                .iter()
                .enumerate()
            {
                if caps & (1 << i) != 0 {
                    needs = needs.union(*c);
                }
            }
            // Candidates do the same job: models that served this endpoint here, or that a route
            // which carried this endpoint's traffic offers (an embeddings model is never advised
            // for chat, whatever capabilities it leaves undeclared), meeting the observed
            // constraints.
            let same_job = |m: &ModelConfig| {
                inner.traffic.keys().any(|(r, served, _, e)| {
                    e == endpoint
                        && (*served == m.name
                            || config
                                .routes
                                .iter()
                                .any(|c| c.name == *r && c.targets.iter().any(|t| t.model == m.name)))
                })
            };
            let best = config
                .models
                .values()
                .filter(|m| m.name != served.name && m.unusable.is_none())
                .filter(|m| same_job(m))
                .filter(|m| m.capabilities.contains(needs) && m.context_window.is_none_or(|w| w >= t.max_tokens))
                .map(|m| (m, m.pricing.cost(t.prompt, t.cached, t.completion)))
                .filter(|(_, c)| *c < t.cost)
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let Some((cheaper, at_cheaper)) = best else { continue };
            let all = t.cost - at_cheaper;
            let light_share = if t.scored > 0 {
                t.light as f64 / t.scored as f64
            } else {
                0.0
            };
            // Light requests' saving, scaled from the sample to the whole traffic.
            let light_saving = if t.scored > 0 {
                let sampled = t.light_cost - cheaper.pricing.cost(t.light_prompt, 0, t.light_completion);
                (sampled * t.requests as f64 / t.scored as f64).max(0.0)
            } else {
                0.0
            };
            items.push(serde_json::json!({
                "kind": "cheaper_model",
                "route": &**route,
                "served_model": &*served.name,
                "cheaper_model": &*cheaper.name,
                "requests": t.requests,
                "spent_usd": t.cost,
                "saving_if_all_usd": all,
                "light_share": light_share,
                "saving_if_light_only_usd": light_saving,
                "constraints": {"needs": needs.names(), "max_tokens_seen": t.max_tokens},
                "config_change": cheaper_change(config, route, served, cheaper, light_saving, all),
            }));
        }
        // 2. The cache at lower thresholds.
        let current = config.cache.semantic.threshold;
        for (i, b) in MISS_BUCKETS.iter().enumerate() {
            if *b >= current {
                continue;
            }
            let (n, cost) = inner.misses[i..]
                .iter()
                .zip(&MISS_BUCKETS[i..])
                .filter(|(_, lb)| **lb < current)
                .fold((0, 0.0), |acc, ((n, c), _)| (acc.0 + n, acc.1 + c));
            if n == 0 {
                continue;
            }
            items.push(serde_json::json!({
                "kind": "cache_threshold",
                "threshold": b,
                "current_threshold": current,
                "extra_hits": n,
                "saving_usd": cost,
                "risk": "lower thresholds serve more wrong answers: see docs/cache.md (held-out paraphrases: ~15 % wrong at 0.90 with the guard); keep cache.semantic.verify_sample on",
                "config_change": format!("cache.semantic.threshold: {b} (or routes[].cache.threshold for one route)"),
            }));
        }
        // 3. Soft-budget tenants not sent to a cheaper tier.
        for ((tenant, model), (prompt, completion, cost)) in &inner.soft {
            let cheapest = config
                .models
                .values()
                .map(|m| (m, m.pricing.cost(*prompt, 0, *completion)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((m, c)) = cheapest.filter(|(_, c)| *c < *cost) {
                items.push(serde_json::json!({
                    "kind": "budget_soft_tier",
                    "tenant": &**tenant,
                    "served_model": &**model,
                    "spent_while_soft_usd": cost,
                    "saving_usd": cost - c,
                    "config_change": format!(
                        "add before the tenant's routes: {{name: economy, models: [...], match: {{budget: soft, tenants: [{tenant}]}}, targets: [{{model: {}}}]}}",
                        m.name
                    ),
                }));
            }
        }
        items.sort_by(|a, b| {
            let s = |v: &serde_json::Value| {
                v["saving_usd"]
                    .as_f64()
                    .or(v["saving_if_light_only_usd"].as_f64())
                    .unwrap_or(0.0)
            };
            s(b).total_cmp(&s(a))
        });
        serde_json::json!({
            "currency": "USD",
            "basis": "requests served by this sidecar since it started, at the catalogue's prices",
            "items": items,
        })
    }
}

/// The config change that would send a route's traffic to `cheaper`. Traffic that named a
/// catalogue model directly went through no configured route: the change adds one.
fn cheaper_change(
    config: &Config,
    route: &str,
    served: &ModelConfig,
    cheaper: &ModelConfig,
    light_saving: f64,
    all: f64,
) -> String {
    let tiers = format!(
        "strategy: complexity, targets: [{{model: {}, tier: light}}, {{model: {}, tier: strong}}]",
        cheaper.name, served.name
    );
    if config.routes.iter().any(|r| &*r.name == route) {
        format!(
            "routes[name={route}]: {tiers} (saves ~${light_saving:.4} on the light share) — or strategy: cheapest with {} listed (saves ~${all:.4} if quality allows)",
            cheaper.name
        )
    } else {
        format!(
            "requests name the model {route} directly, through no route: add routes: [{{name: {route}-tiered, models: [{route}], {tiers}}}] (saves ~${light_saving:.4} on the light share; ~${all:.4} with {} for all of it)",
            cheaper.name
        )
    }
}
