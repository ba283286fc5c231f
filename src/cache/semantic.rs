//! The semantic half of a lookup: embed the question (on the embedder's threads, within the
//! request's budget), search its partition, and choose the best candidate the learned
//! threshold and the guard let through; just under the threshold, the alignment band and the
//! pair verifier have the last word.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::guard::Features;
use super::plan::{Hit, HitKind, Plan, SemanticTiming, ShadowHit, Skip};
use super::store::{self, SEARCH_CANDIDATES};
use super::{Cache, align, guard, key, text_of};
use crate::config::SemanticMode;
use crate::embed::{Embedder, Fit, Lane, SubmitError, Unembedded};
use crate::telemetry::{Metrics, ResultLabels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// What the candidate search found worth serving.
enum Choice {
    /// At or above the threshold, guard passed.
    Serve(store::Cached, f32),
    /// Just under the threshold (the alignment band), guard passed.
    Band(store::Cached, f32),
    None,
}

impl Cache {
    pub(super) async fn semantic(&self, plan: &mut Plan, budget: Duration) -> Option<Hit> {
        let (Some(partition), Some(query)) = (plan.keys.partition, plan.keys.query.clone()) else {
            return None;
        };
        let Some(embedder) = self.embedder.load_full() else {
            self.skip(plan, Skip::EmbedderUnavailable);
            return None;
        };
        let embedder = &*embedder;
        // Token alignment needs word states, which only the local model gives.
        if !embedder.aligns {
            plan.band = 0.0;
        }
        // An empty partition has nothing to find: skip the embedding (the insert embeds).
        let index = self.store.partition(&partition)?;
        let deadline = Instant::now() + budget;
        let found = self.embed_and_search(plan, embedder, index, &query, deadline).await?;
        let (c, similarity) = match self.choose(plan, found, &partition, &query) {
            Choice::Serve(c, similarity) => (c, similarity),
            Choice::Band(c, similarity) => self.in_band(plan, embedder, c, similarity, &query, deadline).await?,
            Choice::None => return None,
        };
        if embedder.verifier && !self.verified(plan, embedder, &c, query, deadline).await {
            return None;
        }
        self.metrics.cache_similarity.observe(f64::from(similarity));
        Some(Hit {
            kind: HitKind::Semantic { similarity },
            response: c.response,
            model: c.model,
            entry: c.id,
        })
    }

    /// Embeds the query on the request lane and searches the partition; the vector stays in
    /// the plan for the insert. `None` (and why, in the plan) when the embedder cannot answer
    /// in time.
    async fn embed_and_search(
        &self,
        plan: &mut Plan,
        embedder: &Embedder,
        index: Arc<store::PartitionIndex>,
        query: &str,
        deadline: Instant,
    ) -> Option<Vec<(u64, f32)>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let metrics = self.metrics.clone();
        let submitted = std::time::Instant::now();
        let late = Arc::new(std::sync::OnceLock::new());
        plan.late = Some(late.clone());
        plan.epoch = embedder.epoch;
        let epoch = embedder.epoch;
        let then = Box::new(move |v: Result<&[f32], Unembedded>| {
            if let Ok(v) = v {
                let _ = late.set(v.to_vec());
            }
            let _ = tx.send(v.map(|v| search(&index, epoch, v, &metrics)));
        });
        match embedder.submit(query.to_owned(), Fit::Whole, deadline.into_std(), Lane::Request, then) {
            Ok(()) => {}
            Err(SubmitError::QueueFull) => {
                self.skip(plan, Skip::EmbedQueueFull);
                return None;
            }
            Err(SubmitError::Stopped) => {
                self.skip(plan, Skip::EmbedderUnavailable);
                return None;
            }
        }
        let (vector, found, embedded, searched) = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(Unembedded::TooLong))) => {
                // Exact-only, and the store need not try to embed it again.
                self.skip(plan, Skip::TooLong);
                plan.semantic = false;
                return None;
            }
            Ok(Ok(Err(Unembedded::Failed))) => {
                self.skip(plan, Skip::EmbedFailed);
                return None;
            }
            // Expired in the queue or on its way: counted by the embedder's observer.
            Ok(_) => {
                plan.skipped = Some(Skip::EmbedTimeout);
                return None;
            }
            Err(_) => {
                self.skip(plan, Skip::EmbedTimeout);
                return None;
            }
        };
        plan.vector = Some(vector);
        plan.best_similarity = found.first().map(|(_, s)| *s);
        plan.timing = Some(SemanticTiming {
            submitted,
            embedded,
            searched,
            candidates: found.len(),
        });
        Some(found)
    }

    /// The best candidate that passes the learned threshold and the guard: served at or above
    /// the threshold, checked by alignment just under it, judged in shadow below that.
    fn choose(&self, plan: &mut Plan, found: Vec<(u64, f32)>, partition: &key::Key, query: &str) -> Choice {
        let query_features = Features::of(query);
        let now = std::time::Instant::now();
        for (id, similarity) in found {
            if similarity < plan.floor {
                break;
            }
            let Some(c) = self.store.candidate(id, partition, now) else {
                continue;
            };
            if similarity < c.min_similarity {
                self.rejected("learned_threshold");
                plan.rejected.push("learned_threshold");
                continue;
            }
            if plan.guard
                && let Some(f) = &c.features
                && let Err(reason) = guard::check(&query_features, f)
            {
                self.rejected(reason.label());
                plan.rejected.push(reason.label());
                continue;
            }
            if similarity < plan.threshold && plan.band > 0.0 {
                return Choice::Band(c, similarity);
            }
            if plan.mode == SemanticMode::Shadow || similarity < plan.threshold {
                plan.shadow = Some(ShadowHit {
                    entry: c.id,
                    similarity,
                    cached: c.response,
                });
                return Choice::None;
            }
            return Choice::Serve(c, similarity);
        }
        Choice::None
    }

    /// A candidate just under the threshold, guard passed: served only if each question's
    /// content words find close partners in the other, in context.
    async fn in_band(
        &self,
        plan: &mut Plan,
        embedder: &Embedder,
        c: store::Cached,
        similarity: f32,
        query: &str,
        deadline: Instant,
    ) -> Option<(store::Cached, f32)> {
        let cached_query = text_of(c.query.as_ref()?)?;
        let worst = self.alignment(embedder, query.to_owned(), cached_query, deadline).await;
        let min = plan.min_alignment;
        let metric = &self.metrics.cache_alignment;
        self.pair_verdict(plan, worst, min, metric, ["served", "rejected"], "alignment")
            .then_some((c, similarity))
    }

    /// The operator's pair model has the last word on every hit.
    async fn verified(
        &self,
        plan: &mut Plan,
        embedder: &Embedder,
        c: &store::Cached,
        query: String,
        deadline: Instant,
    ) -> bool {
        let Some(cached_query) = c.query.as_ref().and_then(text_of) else {
            return false;
        };
        let score = self.verify_pair(embedder, query, cached_query, deadline).await;
        let min = plan.min_score;
        let metric = &self.metrics.cache_verifier;
        self.pair_verdict(plan, score, min, metric, ["agree", "disagree"], "verifier")
    }

    /// A pair check's verdict: `score` at or above `min` passes. Counted in `metric` as the
    /// pass or fail label (or `unavailable` without a score); a fail is also a guard
    /// rejection named `reason`.
    fn pair_verdict(
        &self,
        plan: &mut Plan,
        score: Option<f32>,
        min: f32,
        metric: &Family<ResultLabels, Counter>,
        [pass, fail]: [&'static str; 2],
        reason: &'static str,
    ) -> bool {
        let result = match score {
            Some(s) if s >= min => pass,
            Some(_) => fail,
            None => "unavailable",
        };
        metric.get_or_create(&ResultLabels { result }).inc();
        if result == fail {
            self.rejected(reason);
            plan.rejected.push(reason);
        }
        result == pass
    }

    /// The pair verifier's score for (query, cached query), within the lookup's deadline.
    async fn verify_pair(&self, embedder: &Embedder, a: String, b: String, deadline: Instant) -> Option<f32> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let then = Box::new(move |score: Result<f32, Unembedded>| {
            let _ = tx.send(score.ok());
        });
        embedder
            .submit_verify(a, b, deadline.into_std(), Lane::Request, then)
            .ok()?;
        tokio::time::timeout_at(deadline, rx).await.ok()?.ok()?
    }

    /// The worst-aligned content word's closest partner across the two questions (see
    /// `align`), embedded on the request lane within the lookup's deadline.
    async fn alignment(&self, embedder: &Embedder, a: String, b: String, deadline: Instant) -> Option<f32> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let then = Box::new(move |w: Result<[crate::embed::WordStates; 2], Unembedded>| {
            let _ = tx.send(w.ok().map(|[wa, wb]| align::score(&wa, &wb).0));
        });
        embedder
            .submit_pair(a, b, deadline.into_std(), Lane::Request, then)
            .ok()?;
        tokio::time::timeout_at(deadline, rx).await.ok()?.ok()?
    }
}

/// Searches a partition on the embedder's thread, right after the query is embedded:
/// (vector, candidates, search start, search end).
fn search(
    index: &store::PartitionIndex,
    epoch: u64,
    v: &[f32],
    metrics: &Metrics,
) -> (Vec<f32>, Vec<(u64, f32)>, std::time::Instant, std::time::Instant) {
    let start = std::time::Instant::now();
    let found = index.search_from(epoch, v, SEARCH_CANDIDATES);
    let end = std::time::Instant::now();
    metrics.search_duration.observe((end - start).as_secs_f64());
    (v.to_vec(), found, start, end)
}
