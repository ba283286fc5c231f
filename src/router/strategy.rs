//! Which of a route's targets can serve a request (capabilities, context window, a usable
//! provider) and how each routing strategy orders them: weighted (optionally sticky),
//! canary, cheapest, fastest (power of two choices) and by complexity tier.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Reason, Request, Route, RouteError, Signals, Target, Tier, complexity};
use crate::config::Capabilities;
use crate::config::Sticky;
use std::hash::{Hash, Hasher};

/// One target drawn by weight (or by the sticky key's hash), first; the others keep their order.
pub(super) fn weighted(route: &Route, req: &Request<'_>, candidates: &mut Vec<Target>) -> Reason {
    let total: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
    let (draw, sticky) = match sticky_key(route.sticky, req) {
        Some(h) => (h % total.max(1), true),
        None => (fastrand::u64(..total.max(1)), false),
    };
    let mut acc = 0u64;
    let pick = candidates
        .iter()
        .position(|c| {
            acc += u64::from(c.weight);
            draw < acc
        })
        .unwrap_or(0);
    let chosen = candidates.remove(pick);
    candidates.insert(0, chosen);
    Reason::Weighted { sticky }
}

/// The canary first for its share of requests (when it can serve this one and has not been
/// reverted), the stable targets otherwise.
pub(super) fn canary(route: &Route, req: &Request<'_>, candidates: &mut Vec<Target>) -> Result<Reason, RouteError> {
    let s = req.signals;
    let canary_on = route
        .canary
        .as_ref()
        .filter(|c| !c.state.reverted.load(Ordering::Relaxed));
    let reverted = route.canary.is_some() && canary_on.is_none();
    let to_canary = canary_on.is_some_and(|c| {
        let draw = match sticky_key(route.sticky, req) {
            Some(h) => (h % 10_000) as f64 / 100.0,
            None => fastrand::f64() * 100.0,
        };
        let model = &c.target.model;
        draw < c.config.percent
            && model
                .context_window
                .is_none_or(|w| w >= s.prompt_tokens + s.completion_estimate())
            && model.capabilities.contains(s.needs)
    });
    if let Some(c) = route.canary.as_ref() {
        candidates.retain(|t| !Arc::ptr_eq(&t.model, &c.target.model));
        if to_canary {
            candidates.insert(0, c.target.clone());
        }
    }
    if candidates.is_empty() {
        return Err(no_eligible(route, s));
    }
    Ok(Reason::Canary { to_canary, reverted })
}

/// Cheapest first, by this request's estimated tokens.
pub(super) fn cheapest(s: &Signals, candidates: &mut [Target]) -> Reason {
    let out = s.completion_estimate();
    let cost = |t: &Target| t.model.pricing.cost(s.prompt_tokens, 0, out);
    candidates.sort_by(|a, b| cost(a).total_cmp(&cost(b)));
    Reason::Cheapest {
        usd: cost(&candidates[0]),
    }
}

/// Power of two choices: two random candidates, the faster (within the latency budget) first.
/// Unlike a plain minimum, this spreads load so the fastest model is not stampeded.
pub(super) fn fastest(route: &Route, candidates: &mut Vec<Target>) -> Reason {
    let lat = |t: &Target| t.health.latency().unwrap_or(Duration::ZERO);
    let over = |t: &Target| route.latency_budget.is_some_and(|b| lat(t) > b);
    if candidates.len() >= 2 {
        let a = fastrand::usize(..candidates.len());
        let mut b = fastrand::usize(..candidates.len() - 1);
        if b >= a {
            b += 1;
        }
        let key = |i: usize| (over(&candidates[i]), lat(&candidates[i]));
        let pick = if key(a) <= key(b) { a } else { b };
        let chosen = candidates.remove(pick);
        candidates[..].sort_by_key(|t| (over(t), lat(t)));
        candidates.insert(0, chosen);
    }
    Reason::Fastest {
        latency: candidates[0].health.latency(),
    }
}

/// The tier the prompt's complexity score asks for first, in the order written; the other after.
pub(super) fn by_complexity(route: &Route, s: &Signals, candidates: &mut [Target]) -> Reason {
    let score = complexity::score(s.text.as_deref().unwrap_or("")).total;
    let tier = if score >= route.complexity_threshold {
        Tier::Strong
    } else {
        Tier::Light
    };
    candidates.sort_by_key(|t| t.tier != Some(tier));
    Reason::Complexity { score, tier }
}

/// The order a registered strategy chose. It sees the candidates as plain values and may only
/// reorder or drop them; dropping all, or naming one twice, leaves the route's own order.
pub(super) fn plugin(
    strategy: &dyn crate::plugin::RoutingStrategy,
    route: &Route,
    req: &Request<'_>,
    candidates: &mut Vec<Target>,
) -> Reason {
    let mut view: Vec<crate::plugin::Candidate> = candidates
        .iter()
        .enumerate()
        .map(|(index, t)| crate::plugin::Candidate {
            model: t.model.name.clone(),
            provider: t.model.provider.clone(),
            input_price: t.model.pricing.input,
            output_price: t.model.pricing.output,
            latency: t.health.latency(),
            weight: t.weight,
            index,
        })
        .collect();
    let s = req.signals;
    let request = crate::plugin::RouteRequest {
        route: &route.name,
        tenant: req.tenant,
        model: req.model,
        prompt_tokens: s.prompt_tokens,
        text: s.text.as_deref(),
        user: s.user.as_deref(),
    };
    strategy.order(&request, &mut view);
    let mut seen = vec![false; candidates.len()];
    let valid = !view.is_empty()
        && view
            .iter()
            .all(|c| c.index < seen.len() && !std::mem::replace(&mut seen[c.index], true));
    if !valid {
        return Reason::Plugin { applied: false };
    }
    let mut old: Vec<Option<Target>> = candidates.drain(..).map(Some).collect();
    candidates.extend(view.iter().filter_map(|c| old[c.index].take()));
    Reason::Plugin { applied: true }
}

/// The hash a sticky route draws by: the same tenant (or user) always lands on the same arm.
fn sticky_key(sticky: Sticky, req: &Request<'_>) -> Option<u64> {
    let key: &str = match sticky {
        Sticky::None => return None,
        Sticky::Tenant => req.tenant,
        Sticky::User => req.signals.user.as_deref().unwrap_or(req.tenant),
    };
    // Fixed keys (not RandomState) so every pod puts a tenant in the same arm.
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    Some(h.finish())
}

/// The route's targets that can serve the request: they have the capabilities it needs and a
/// context window that holds its estimated prompt and completion.
pub(super) fn eligible(route: &Route, s: &Signals<'_>) -> (Vec<Target>, usize) {
    let tokens = s.prompt_tokens + s.completion_estimate();
    let mut out = Vec::with_capacity(route.targets.len() + 1);
    let mut filtered = 0;
    for t in &route.targets {
        if t.model.unusable.is_none()
            && t.model.capabilities.contains(s.needs)
            && t.model.context_window.is_none_or(|w| w >= tokens)
        {
            out.push(t.clone());
        } else {
            filtered += 1;
        }
    }
    (out, filtered)
}

pub(super) fn no_eligible(route: &Route, s: &Signals<'_>) -> RouteError {
    // Every target that could have served is on a provider without its key: say that, not
    // that the request asked for too much.
    let fits = |t: &&Target| t.model.capabilities.contains(s.needs);
    if let Some(t) = route.targets.iter().filter(fits).find(|t| t.model.unusable.is_some())
        && route.targets.iter().filter(fits).all(|t| t.model.unusable.is_some())
    {
        return RouteError::Unusable {
            route: route.name.clone(),
            model: t.model.name.clone(),
            provider: t.model.provider.clone(),
            reason: t.model.unusable.clone().unwrap_or_default(),
        };
    }
    let needs = s.needs.names();
    RouteError::NoEligibleTarget {
        route: route.name.clone(),
        needs: if needs.is_empty() {
            "no special capability".into()
        } else {
            needs.join(" + ")
        },
        tokens: s.prompt_tokens + s.completion_estimate(),
        detail: route
            .targets
            .iter()
            .map(|t| {
                format!(
                    "{}: {}{}",
                    t.model.name,
                    if t.model.capabilities == Capabilities::ALL {
                        "all capabilities".to_owned()
                    } else {
                        t.model.capabilities.names().join("+")
                    },
                    t.model
                        .context_window
                        .map(|w| format!(", {w} tokens"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}
