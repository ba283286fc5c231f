//! How often the semantic cache is right, per route, measured on the route's own traffic, and
//! the threshold that follows from an operator's error bound (after vCache: a bound on wrong
//! answers instead of a guessed cosine).
//!
//! Every judged pair — a served hit re-asked upstream (`verify_sample`), or a hit found but not
//! served (shadow mode, or the band between `min_threshold` and the threshold in force on a
//! route with `max_wrong_rate`) compared with the answer the request got anyway — lands in a
//! histogram by similarity. For any threshold `t`, the pairs at or above it say how often a hit
//! at `t` would have been wrong; a 95 % Wilson interval says how sure that is. With
//! `max_wrong_rate` set, a route serves at the lowest `t` in `[min_threshold, max_threshold]`
//! whose interval's upper end is within the bound, and at `max_threshold` until the evidence
//! allows lower (or when no `t` meets it). Figures are for this process's lifetime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Histogram resolution: thresholds are chosen on this grid.
const STEP: f32 = 0.005;
/// Similarities below this are not recorded (no candidate that low is ever judged).
const LOW: f32 = 0.5;
const BINS: usize = 101;
/// z for a two-sided 95 % interval.
const Z: f64 = 1.96;
/// The thresholds `/admin/cache` reports the measured wrong rate at.
const REPORTED: [f32; 9] = [0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98, 0.99];

/// How a judged pair was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// A served hit, re-asked upstream in the background.
    Served,
    /// A hit that was not served: the request went upstream and its answer was compared.
    Shadow,
}

impl Judged {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Judged::Served => "served",
            Judged::Shadow => "shadow",
        }
    }
}

/// A route's threshold settings, resolved from the route and `cache.semantic`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub(crate) configured: f32,
    pub(crate) max_wrong_rate: Option<f32>,
    pub(crate) min: f32,
    pub(crate) max: f32,
}

impl Policy {
    /// Where judging starts: would-be hits from here up are compared (when the route shadows
    /// or has a bound), so that the evidence covers every threshold the bound may choose.
    pub(crate) fn floor(&self) -> f32 {
        self.min.min(self.configured)
    }
}

#[derive(Default)]
struct RouteQuality {
    /// `[agree, disagree]` per similarity bin.
    bins: Vec<[u64; 2]>,
    served: [u64; 2],
    shadow: [u64; 2],
    /// The threshold last chosen, and for which policy: recomputed when either changes.
    chosen: Option<(Policy, f32)>,
}

impl RouteQuality {
    fn new() -> Self {
        RouteQuality {
            bins: vec![[0, 0]; BINS],
            ..Default::default()
        }
    }

    /// `(agree, disagree)` over pairs at or above `t`.
    fn above(&self, t: f32) -> (u64, u64) {
        self.bins[bin(t)..]
            .iter()
            .fold((0, 0), |(a, d), b| (a + b[0], d + b[1]))
    }

    fn choose(&self, p: &Policy) -> f32 {
        let Some(bound) = p.max_wrong_rate else {
            return p.configured;
        };
        // Suffix sums once, then the lowest grid threshold whose upper bound is within `bound`.
        let mut suffix = vec![(0u64, 0u64); BINS + 1];
        for i in (0..BINS).rev() {
            suffix[i] = (suffix[i + 1].0 + self.bins[i][0], suffix[i + 1].1 + self.bins[i][1]);
        }
        let steps = ((p.max - p.min) / STEP + 1e-3).floor().max(0.0) as usize;
        (0..=steps)
            .map(|k| p.min + k as f32 * STEP)
            .find(|&t| {
                let (a, d) = suffix[bin(t)];
                a + d > 0 && wilson(d, a + d).1 <= f64::from(bound)
            })
            .unwrap_or(p.max)
    }
}

fn bin(similarity: f32) -> usize {
    // The small epsilon puts a grid threshold (0.9 = 0.899999…) in its own bin.
    (((similarity - LOW) / STEP + 1e-3).floor().max(0.0) as usize).min(BINS - 1)
}

/// The 95 % Wilson score interval of `wrong` in `n`.
pub(crate) fn wilson(wrong: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = wrong as f64 / n;
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    (
        ((centre - spread) / denom).max(0.0),
        ((centre + spread) / denom).min(1.0),
    )
}

/// Per-route judgments; lives with the cache (outlives config reloads).
#[derive(Default)]
pub struct Quality {
    routes: Mutex<HashMap<Arc<str>, RouteQuality>>,
}

impl Quality {
    /// The threshold a route serves at.
    pub(crate) fn threshold(&self, route: &Arc<str>, p: &Policy) -> f32 {
        if p.max_wrong_rate.is_none() {
            return p.configured;
        }
        let Ok(mut routes) = self.routes.lock() else {
            return p.max;
        };
        let q = routes.entry(route.clone()).or_insert_with(RouteQuality::new);
        match q.chosen {
            Some((chosen_for, t)) if chosen_for == *p => t,
            _ => {
                let t = q.choose(p);
                q.chosen = Some((*p, t));
                t
            }
        }
    }

    /// Records a judged pair; returns the route's threshold after it.
    pub(crate) fn record(&self, route: &Arc<str>, similarity: f32, agree: bool, how: Judged, p: &Policy) -> f32 {
        let Ok(mut routes) = self.routes.lock() else {
            return p.configured;
        };
        let q = routes.entry(route.clone()).or_insert_with(RouteQuality::new);
        let i = usize::from(!agree);
        if similarity >= LOW {
            q.bins[bin(similarity)][i] += 1;
        }
        match how {
            Judged::Served => q.served[i] += 1,
            Judged::Shadow => q.shadow[i] += 1,
        }
        let t = q.choose(p);
        q.chosen = Some((*p, t));
        t
    }

    /// What `/admin/cache` shows for a route; `None` before its first judgment.
    pub(crate) fn report(&self, route: &str, p: &Policy) -> Option<serde_json::Value> {
        let routes = self.routes.lock().ok()?;
        let q = routes.get(route)?;
        let counts = |c: [u64; 2]| serde_json::json!({"agree": c[0], "disagree": c[1]});
        let rate = |(a, d): (u64, u64)| {
            let (lo, hi) = wilson(d, a + d);
            serde_json::json!({
                "judged": a + d,
                "wrong": d,
                "wrong_rate": if a + d > 0 { Some(d as f64 / (a + d) as f64) } else { None },
                "interval_95": [lo, hi],
            })
        };
        let in_force = q.choose(p);
        let (a, d) = q.above(in_force);
        let mut at = rate((a, d));
        if let Some(o) = at.as_object_mut() {
            o.insert("threshold".into(), serde_json::json!(in_force));
            let met = p
                .max_wrong_rate
                .map(|m| a + d > 0 && wilson(d, a + d).1 <= f64::from(m));
            o.insert("bound_met".into(), serde_json::json!(met));
        }
        Some(serde_json::json!({
            "served": counts(q.served),
            "shadow": counts(q.shadow),
            "in_force": at,
            "by_threshold": REPORTED.iter().map(|&t| {
                let mut r = rate(q.above(t));
                if let Some(o) = r.as_object_mut() {
                    o.insert("threshold".into(), serde_json::json!(t));
                }
                r
            }).collect::<Vec<_>>(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(bound: Option<f32>) -> Policy {
        Policy {
            configured: 0.90,
            max_wrong_rate: bound,
            min: 0.80,
            max: 0.99,
        }
    }

    #[test]
    fn wilson_interval_matches_the_textbook_values() {
        // 0 of 100: upper end 3.7 %; 10 of 100: 5.5 %–17.4 %.
        let (lo, hi) = wilson(0, 100);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.0370).abs() < 1e-3, "{hi}");
        let (lo, hi) = wilson(10, 100);
        assert!((lo - 0.0552).abs() < 1e-3, "{lo}");
        assert!((hi - 0.1744).abs() < 1e-3, "{hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn without_a_bound_the_configured_threshold_holds() {
        let q = Quality::default();
        let route: Arc<str> = "r".into();
        for _ in 0..50 {
            q.record(&route, 0.91, false, Judged::Served, &policy(None));
        }
        assert_eq!(q.threshold(&route, &policy(None)), 0.90);
    }

    #[test]
    fn a_bound_serves_high_until_the_evidence_allows_lower() {
        let q = Quality::default();
        let route: Arc<str> = "r".into();
        let p = policy(Some(0.05));
        assert_eq!(q.threshold(&route, &p), 0.99, "no evidence: the cautious end");
        // Pairs at 0.85-0.87 are often wrong; pairs from 0.93 up always agree.
        for i in 0..200 {
            q.record(&route, 0.85 + (i % 3) as f32 * 0.01, i % 4 != 0, Judged::Shadow, &p);
        }
        assert_eq!(q.threshold(&route, &p), 0.99, "only wrong-prone evidence so far");
        let mut t = 0.0;
        for i in 0..200 {
            t = q.record(&route, 0.93 + (i % 6) as f32 * 0.01, true, Judged::Shadow, &p);
        }
        // Above the 0.87 bin (from 0.875 on the grid): 200 agreeing pairs, upper end 1.9 %.
        assert!((t - 0.875).abs() < 1e-4, "{t}");
        assert!((q.threshold(&route, &p) - 0.875).abs() < 1e-4);
        // A stricter bound needs more evidence than there is: back to the cautious end.
        let strict = policy(Some(0.01));
        assert_eq!(q.threshold(&route, &strict), 0.99);
    }

    #[test]
    fn wrong_answers_at_the_threshold_in_force_push_it_up() {
        let q = Quality::default();
        let route: Arc<str> = "r".into();
        let p = policy(Some(0.05));
        for _ in 0..300 {
            q.record(&route, 0.90, true, Judged::Served, &p);
        }
        assert!(
            (q.threshold(&route, &p) - 0.80).abs() < 1e-4,
            "all agree from the floor up"
        );
        for _ in 0..40 {
            q.record(&route, 0.90, false, Judged::Served, &p);
        }
        // The 0.90 bin is now 12 % wrong; nothing above it was judged: no threshold meets it.
        assert_eq!(q.threshold(&route, &p), 0.99);
        let report = q.report("r", &p).unwrap();
        assert_eq!(report["served"]["disagree"], 40);
        assert_eq!(report["in_force"]["bound_met"], false);
        assert_eq!(report["by_threshold"][3]["judged"], 340);
    }

    #[test]
    fn grid_thresholds_fall_in_their_own_bin() {
        assert_eq!(bin(0.90), bin(0.9001));
        assert!(bin(0.8999) < bin(0.90));
        assert_eq!(bin(1.0), BINS - 1);
        assert_eq!(bin(0.1), 0);
    }
}
