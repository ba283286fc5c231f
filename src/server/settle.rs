//! Settling one attempt on one (provider, model): what its breaker, latency EWMA, the route's
//! canary and the error metrics learn from it, and the log lines when a circuit changes state
//! or a canary is reverted.

use std::sync::Arc;

use tokio::time::Instant;

use crate::config::Config;
use crate::router::{Route, Target};
use crate::state::{Runtime, Shared};
use crate::telemetry::Metrics;

/// Reports how one attempt on one (provider, model) went — to its circuit breaker, its
/// latency EWMA, the route's canary and the error metrics. A whole answer is settled before
/// it is relayed; a stream when it ends, since a stream that breaks after its first event is
/// a failure of that provider too.
pub struct Settle {
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    route: Arc<Route>,
    target: Target,
    started: Instant,
}

impl Settle {
    pub(super) fn new(shared: &Shared, rt: &Runtime, route: &Arc<Route>, target: &Target, started: Instant) -> Self {
        Settle {
            metrics: shared.metrics.clone(),
            config: rt.config.clone(),
            route: route.clone(),
            target: target.clone(),
            started,
        }
    }

    /// The provider answered; `good` is false for a status that is the request's fault.
    pub(crate) fn answered(self, good: bool) {
        let breaker = &self.config.resilience.breaker;
        let t = self.target.health.record(breaker, true);
        transition(&self.metrics, &self.target, t);
        canary(&self.metrics, &self.route, &self.target, good, self.started);
    }

    pub(crate) fn failed(self, kind: &'static str) {
        self.metrics.upstream_error(&self.target.model.provider, kind);
        let t = self.target.health.record(&self.config.resilience.breaker, false);
        transition(&self.metrics, &self.target, t);
        canary(&self.metrics, &self.route, &self.target, false, self.started);
    }
}

pub(super) fn transition(metrics: &Metrics, target: &Target, t: Option<crate::resilience::Transition>) {
    let Some(t) = t else { return };
    let h = &target.health;
    metrics.circuit_transition(&h.provider, &h.model, t.to.gauge(), t.to.label());
    tracing::warn!(
        provider = &*h.provider,
        model = &*h.model,
        state = t.to.label(),
        "circuit breaker changed state"
    );
}

fn canary(metrics: &Metrics, route: &Route, target: &Target, success: bool, started: Instant) {
    if let Some(r) = route.canary_report(&target.model.name, success, || started.elapsed()) {
        metrics
            .canary_reverted
            .get_or_create(&crate::telemetry::CanaryLabels {
                route: route.name.clone(),
                model: r.model.clone(),
            })
            .set(1);
        tracing::warn!(
            route = &*route.name,
            model = &*r.model,
            requests = r.requests,
            error_rate = r.error_rate,
            mean_latency_ms = r.mean_latency.as_secs_f64() * 1e3,
            "canary reverted: all traffic back on the stable targets until the canary config changes"
        );
    }
}
