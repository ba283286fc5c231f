//! Judging what the cache served (or would have): background verification of a sampled
//! share of semantic hits, shadow judgments of would-be hits, and the per-route account of
//! both that `max_wrong_rate` and `/admin/cache` read.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

use super::plan::Plan;
use super::quality::{Judged, Policy};
use super::{Cache, answer_text, guard, policy};
use crate::config::CacheConfig;
use crate::embed::{Fit, Lane, Unembedded};
use crate::router::Route;
use crate::telemetry::{JudgmentLabels, ResultLabels, RouteLabels};

impl Cache {
    /// Whether this semantic hit should be re-asked upstream in the background; the permit
    /// bounds verifications in flight and must live as long as the verification.
    pub(crate) fn should_verify(&self, config: &CacheConfig) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let p = config.semantic.verify_sample;
        if p <= 0.0 || !self.semantic_available() || fastrand::f32() >= p {
            return None;
        }
        self.verify_permits.clone().try_acquire_owned().ok()
    }

    /// Judges a served semantic hit against a fresh upstream answer to the same request.
    /// A disagreement raises the entry's learned threshold so that pair never hits again.
    pub(crate) async fn judge(
        &self,
        route: &Route,
        entry: u64,
        similarity: f32,
        cached: &[u8],
        fresh: &[u8],
        config: &CacheConfig,
    ) {
        let Some(agree) = self.agree(entry, similarity, cached, fresh, config).await else {
            self.verification("failed");
            return;
        };
        self.verification(if agree { "agree" } else { "disagree" });
        self.judged(&route.name, similarity, agree, Judged::Served, &policy(route, config));
    }

    /// Judges a hit that was not served (`plan.shadow`) against the answer the request got
    /// upstream, in the background; costs two embeddings and no upstream call.
    pub(crate) fn judge_shadow(self: &Arc<Self>, plan: &mut Plan, fresh: Bytes, config: &CacheConfig) {
        let Some(hit) = plan.shadow.take() else {
            return;
        };
        let (route, policy) = (plan.route.clone(), plan.policy);
        let Ok(permit) = self.shadow_permits.clone().try_acquire_owned() else {
            self.judgment(&route, Judged::Shadow, "skipped");
            return;
        };
        let cache = self.clone();
        let config = config.clone();
        self.background.spawn(async move {
            let _permit = permit;
            match cache
                .agree(hit.entry, hit.similarity, &hit.cached, &fresh, &config)
                .await
            {
                Some(agree) => cache.judged(&route, hit.similarity, agree, Judged::Shadow, &policy),
                None => cache.judgment(&route, Judged::Shadow, "failed"),
            }
        });
    }

    /// Whether two answers to what the cache took for the same question agree: they must
    /// embed close together (`verify_agreement`) and state the same numbers. `None` when they
    /// cannot be compared. A disagreement tightens the entry's learned threshold.
    async fn agree(
        &self,
        entry: u64,
        similarity: f32,
        cached: &[u8],
        fresh: &[u8],
        config: &CacheConfig,
    ) -> Option<bool> {
        let (a, b) = (answer_text(cached)?, answer_text(fresh)?);
        let (va, vb) = (self.embed_now(&a, config).await?, self.embed_now(&b, config).await?);
        let agreement = crate::embed::cosine(&va, &vb);
        let same_numbers = guard::numbers_of(&a) == guard::numbers_of(&b);
        let agree = agreement >= config.semantic.verify_agreement && same_numbers;
        if !agree {
            let learned = self.store.tighten(entry, similarity);
            tracing::warn!(
                entry,
                similarity,
                agreement,
                same_numbers,
                learned = learned.unwrap_or(f32::NAN),
                "cache verification: a semantic hit would have served a different answer; its entry's threshold was raised"
            );
        }
        Some(agree)
    }

    fn judged(&self, route: &Arc<str>, similarity: f32, agree: bool, how: Judged, policy: &Policy) {
        self.judgment(route, how, if agree { "agree" } else { "disagree" });
        let before = self.quality.threshold(route, policy);
        let after = self.quality.record(route, similarity, agree, how, policy);
        self.metrics
            .cache_route_threshold
            .get_or_create(&RouteLabels { route: route.clone() })
            .set(f64::from(after));
        if (after - before).abs() > 1e-6 {
            tracing::info!(
                route = &**route,
                before,
                after,
                "cache: the route's semantic threshold moved to meet its max_wrong_rate"
            );
        }
    }

    fn judgment(&self, route: &Arc<str>, how: Judged, result: &'static str) {
        self.metrics
            .cache_judgments
            .get_or_create(&JudgmentLabels {
                route: route.clone(),
                mode: how.label(),
                result,
            })
            .inc();
    }

    /// Per-route semantic settings and measured quality, for `/admin/cache`.
    pub(crate) fn report(&self, routes: &[Arc<Route>], config: &CacheConfig) -> serde_json::Value {
        serde_json::json!({
            "enabled": config.enabled,
            "semantic": config.enabled && config.semantic.enabled && self.semantic_available(),
            "entries": self.store.len(),
            "bytes": self.store.bytes(),
            "routes": routes.iter().map(|r| {
                let p = policy(r, config);
                serde_json::json!({
                    "route": &*r.name,
                    "enabled": r.cache.enabled != Some(false),
                    "mode": r.cache.mode.unwrap_or(config.semantic.mode).label(),
                    "threshold": p.configured,
                    "threshold_in_force": self.quality.threshold(&r.name, &p),
                    "max_wrong_rate": p.max_wrong_rate,
                    "min_threshold": p.min,
                    "max_threshold": p.max,
                    "judged": self.quality.report(&r.name, &p),
                })
            }).collect::<Vec<_>>(),
        })
    }

    pub(crate) fn verification(&self, result: &'static str) {
        self.metrics
            .cache_verifications
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    async fn embed_now(&self, text: &str, config: &CacheConfig) -> Option<Vec<f32>> {
        let embedder = self.embedder.load_full()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + config.semantic.timeout.max(Duration::from_secs(1));
        let then = Box::new(move |v: Result<&[f32], Unembedded>| {
            let _ = tx.send(v.ok().map(<[f32]>::to_vec));
        });
        // Two answers are compared by their openings: a cut vector is what is wanted here.
        embedder
            .submit(
                text.chars().take(2000).collect(),
                Fit::Start,
                deadline.into_std(),
                Lane::Background,
                then,
            )
            .ok()?;
        tokio::time::timeout_at(deadline, rx).await.ok()?.ok()?
    }
}
