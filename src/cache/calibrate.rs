//! Calibration: from labelled pairs of texts (`{"a","b","label"}`, label 1 when one answer
//! serves both), the precision, recall and false-hit rate a semantic cache would have at each
//! threshold, with the guard on and off — so a platform team can pick a threshold from its
//! own traffic. A "false hit" is a served hit whose pair is labelled 0; the false-hit rate is
//! false hits / served hits (what share of cached answers served would be wrong).

use serde::Deserialize;

use super::guard::{Features, check};
use crate::embed::{EmbedError, Fit, MAX_TOKENS, Model, cosine};

#[derive(Debug, Clone, Deserialize)]
pub struct Pair {
    pub(crate) a: String,
    pub(crate) b: String,
    pub(crate) label: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub threshold: f32,
    pub served: usize,
    pub false_hits: usize,
    pub recall: f64,
    pub false_hit_rate: f64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub positives: usize,
    pub(crate) negatives: usize,
    pub bare: Vec<Row>,
    pub guarded: Vec<Row>,
    /// (similarity, guard passed, label) per pair.
    pub scored: Vec<(f32, bool, u8)>,
    /// Per pair, the worst-aligned word's score (empty: alignment not measured).
    pub aligned: Vec<f32>,
    pub(crate) band: Band,
}

impl Report {
    /// Whether the cache, guard on, serves pair `i` at threshold `t`.
    pub(crate) fn served(&self, i: usize, t: f32) -> bool {
        let (s, ok, _) = self.scored[i];
        ok && (s >= t
            || (s >= t - self.band.width && self.aligned.get(i).is_some_and(|&a| a >= self.band.min_alignment)))
    }
}

pub fn parse_pairs(text: &str) -> Result<Vec<Pair>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str::<Pair>(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Thresholds reported: 0.70 to 0.98 in steps of 0.02.
pub(crate) fn thresholds() -> Vec<f32> {
    (0..15).map(|i| 0.70 + 0.02 * i as f32).collect()
}

/// The cache's decision with the guard on, as shipped: at or above the threshold, or in the
/// token-alignment band below it with every content word aligned.
#[derive(Debug, Clone, Copy)]
pub struct Band {
    pub width: f32,
    pub min_alignment: f32,
}

impl Default for Band {
    fn default() -> Self {
        Band {
            width: crate::config::DEFAULT_ALIGNMENT_BAND,
            min_alignment: crate::config::DEFAULT_MIN_ALIGNMENT,
        }
    }
}

pub fn run(pairs: &[Pair], model: &mut Model, band: Band) -> Result<Report, EmbedError> {
    let mut scored = Vec::with_capacity(pairs.len());
    let mut aligned = Vec::with_capacity(pairs.len());
    for p in pairs {
        // One text at a time: the quantized model's vectors depend slightly on batch
        // composition, and the cache embeds one query at a time. As in the cache, a text longer
        // than the model's window is exact-only, never a semantic hit (and is not embedded).
        let (sim, worst) = match (embed_whole(model, &p.a)?, embed_whole(model, &p.b)?) {
            // As in the cache: keys one text at a time, alignment from one pair job.
            (Some(a), Some(b)) => {
                let worst = match model.pair_words(&p.b, &p.a)? {
                    Some([wb, wa]) => super::align::score(&wb, &wa).0,
                    None => 0.0,
                };
                (cosine(&a, &b), worst)
            }
            _ => (TOO_LONG, 0.0),
        };
        let passed = check(&Features::of(&p.b), &Features::of(&p.a)).is_ok();
        scored.push((sim, passed, p.label));
        aligned.push(worst);
    }
    Ok(report_with(scored, &aligned, band))
}

/// One labelled pair's signals, for fitting how to combine them (`scripts/fit-combiner`).
pub struct PairFeatures {
    pub(crate) label: u8,
    pub(crate) cosine: f32,
    /// `None` when the guard passes the pair.
    pub(crate) guard: Option<&'static str>,
    pub(crate) align_worst: f32,
    pub(crate) align_mean: f32,
}

pub(crate) fn features(pairs: &[Pair], model: &mut Model) -> Result<Vec<PairFeatures>, EmbedError> {
    let mut out = Vec::with_capacity(pairs.len());
    for p in pairs {
        let (Some(va), Some(vb)) = (embed_whole(model, &p.a)?, embed_whole(model, &p.b)?) else {
            continue;
        };
        let Some([wb, wa]) = model.pair_words(&p.b, &p.a)? else {
            continue;
        };
        let (align_worst, align_mean) = super::align::score(&wa, &wb);
        out.push(PairFeatures {
            label: p.label,
            cosine: cosine(&va, &vb),
            guard: check(&Features::of(&p.b), &Features::of(&p.a)).err().map(|r| r.label()),
            align_worst,
            align_mean,
        });
    }
    Ok(out)
}

/// Tab-separated, one pair per line, with a header.
pub(crate) fn render_features(rows: &[PairFeatures]) -> String {
    let mut out = String::from("label\tcosine\tguard\talign_worst\talign_mean\n");
    for r in rows {
        out.push_str(&format!(
            "{}\t{:.5}\t{}\t{:.5}\t{:.5}\n",
            r.label,
            r.cosine,
            r.guard.unwrap_or("ok"),
            r.align_worst,
            r.align_mean
        ));
    }
    out
}

/// The vector of `text` as a cache key would have it, or `None` past the window.
fn embed_whole(model: &mut Model, text: &str) -> Result<Option<Vec<f32>>, EmbedError> {
    if !model.push(text, Fit::Whole) {
        return Ok(None);
    }
    Ok(model.embed_pushed()?.pop())
}

/// The similarity given to a pair with a text the model cannot embed whole: below every threshold.
const TOO_LONG: f32 = -2.0;

/// `aligned[i]`: pair i's worst-aligned word score (missing: not aligned).
pub fn report_with(scored: Vec<(f32, bool, u8)>, aligned: &[f32], band: Band) -> Report {
    let positives = scored.iter().filter(|s| s.2 == 1).count();
    let negatives = scored.len() - positives;
    let mut report = Report {
        positives,
        negatives,
        bare: Vec::new(),
        guarded: Vec::new(),
        scored,
        aligned: aligned.to_vec(),
        band,
    };
    let row = |t: f32, guard: bool| {
        let served: Vec<_> = (0..report.scored.len())
            .filter(|&i| {
                if guard {
                    report.served(i, t)
                } else {
                    report.scored[i].0 >= t
                }
            })
            .map(|i| &report.scored[i])
            .collect();
        let false_hits = served.iter().filter(|s| s.2 == 0).count();
        let true_hits = served.len() - false_hits;
        Row {
            threshold: t,
            served: served.len(),
            false_hits,
            recall: if positives == 0 {
                0.0
            } else {
                true_hits as f64 / positives as f64
            },
            false_hit_rate: if served.is_empty() {
                0.0
            } else {
                false_hits as f64 / served.len() as f64
            },
        }
    };
    let bare = thresholds().into_iter().map(|t| row(t, false)).collect();
    let guarded = thresholds().into_iter().map(|t| row(t, true)).collect();
    report.bare = bare;
    report.guarded = guarded;
    report
}

/// The pairs a threshold gets wrong: wrong answers served (with the guard on) and
/// same-answer pairs the guard turns down, each with its similarity (and the guard's reason).
/// The report without token alignment (no band).
#[cfg(test)]
fn report(scored: Vec<(f32, bool, u8)>) -> Report {
    let band = Band {
        width: 0.0,
        min_alignment: 1.0,
    };
    report_with(scored, &[], band)
}

pub(crate) fn explain(pairs: &[Pair], report: &Report, threshold: f32) -> String {
    let mut served_wrong = String::new();
    let mut turned_down = String::new();
    for (i, (p, &(sim, _, label))) in pairs.iter().zip(&report.scored).enumerate() {
        if sim < threshold - report.band.width {
            continue;
        }
        let passed = report.served(i, threshold);
        if sim < threshold && !(passed && label == 0) {
            // In the band: only a wrong answer it serves is worth listing.
            continue;
        }
        match (label, passed) {
            (0, true) => served_wrong.push_str(&format!("  {sim:.3}  {:?} / {:?}\n", p.a, p.b)),
            (1, false) => {
                let reason = check(&Features::of(&p.b), &Features::of(&p.a))
                    .err()
                    .map_or("?", |r| r.label());
                turned_down.push_str(&format!("  {sim:.3}  {reason:<12} {:?} / {:?}\n", p.a, p.b));
            }
            _ => {}
        }
    }
    format!(
        "\nat {threshold:.2}, wrong answers served with the guard on:\n{served_wrong}\nat {threshold:.2}, same-answer pairs the guard turns down:\n{turned_down}"
    )
}

/// One-sided 95 % upper confidence bound (Clopper–Pearson) on a rate seen as `k` events in `n`
/// trials: the highest rate under which `k` or fewer would still turn up 5 % of the time. No
/// wrong answer in 14 hits is not a 0 % false-hit rate: it is consistent with up to 19 %.
pub(crate) fn upper_bound(k: usize, n: usize) -> f64 {
    if n == 0 || k >= n {
        return 1.0;
    }
    let (mut lo, mut hi) = (k as f64 / n as f64, 1.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if binomial_cdf(k, n, mid) > 0.05 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// P(X ≤ k) for X ~ Binomial(n, p), term by term in log space (n may be thousands).
fn binomial_cdf(k: usize, n: usize, p: f64) -> f64 {
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return if k >= n { 1.0 } else { 0.0 };
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut log_term = n as f64 * lq;
    let mut sum = log_term.exp();
    for i in 0..k.min(n) {
        log_term += ((n - i) as f64).ln() - ((i + 1) as f64).ln() + lp - lq;
        sum += log_term.exp();
    }
    sum.min(1.0)
}

impl Report {
    /// Among the thresholds at and above which every reported threshold keeps the guarded
    /// false-hit rate at or under `max_rate`, the one with the best recall (the highest of
    /// equals: a lower one only admits more of the traffic these pairs did not show).
    pub fn suggest(&self, max_rate: f64) -> Option<&Row> {
        let mut best: Option<&Row> = None;
        for row in self.guarded.iter().rev() {
            if row.false_hit_rate > max_rate {
                break;
            }
            if row.served > 0 && best.is_none_or(|b| row.recall > b.recall) {
                best = Some(row);
            }
        }
        best
    }

    /// The suggestion for a platform team, with how far these pairs can vouch for it.
    pub(crate) fn render_suggestion(&self, max_rate: f64) -> String {
        let pct = max_rate * 100.0;
        let Some(row) = self.suggest(max_rate) else {
            return format!(
                "\nno threshold keeps the false-hit rate at or under {pct:.1} % with a hit served: keep the guard \
                 on, serve these routes exact-only (`routes[].cache.threshold: 1.0`) or review the pairs with \
                 --explain\n"
            );
        };
        let bound = upper_bound(row.false_hits, row.served);
        // Served hits, all right, that would bring the bound down to the target.
        let needed = if max_rate > 0.0 {
            format!(
                "~{:.0} served hits with none wrong would show ≤ {pct:.1} %",
                (0.05f64.ln() / (1.0 - max_rate).ln()).ceil()
            )
        } else {
            "no number of hits can show 0 %".to_owned()
        };
        let mut out = format!(
            "\nsuggested threshold (guard on; at it and above, false-hit rate ≤ {pct:.1} %): {:.2} — {} served, \
             {} false hit(s), recall {:.1} %\n",
            row.threshold,
            row.served,
            row.false_hits,
            row.recall * 100.0
        );
        if bound > max_rate {
            out.push_str(&format!(
                "with {} hits served the false-hit rate could still be as high as {:.1} % (95 % upper bound); \
                 {needed}: label more pairs near {:.2}\n",
                row.served,
                bound * 100.0,
                row.threshold
            ));
        } else {
            out.push_str(&format!(
                "95 % upper bound on its false-hit rate: {:.2} %\n",
                bound * 100.0
            ));
        }
        out
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "{} pairs ({} same-answer, {} different-answer)\n\n\
             threshold | guard off: served  false hits  recall  false-hit rate | guard on: served  false hits  recall  false-hit rate\n",
            self.positives + self.negatives,
            self.positives,
            self.negatives
        );
        let too_long = self.scored.iter().filter(|s| s.0 == TOO_LONG).count();
        if too_long > 0 {
            out.insert_str(
                0,
                &format!(
                    "{too_long} pair(s) have a text longer than the embedder's {MAX_TOKENS}-token window: \
                     the cache keeps such queries exact-only, so they are never served here\n"
                ),
            );
        }
        for (b, g) in self.bare.iter().zip(&self.guarded) {
            out.push_str(&format!(
                "     {:.2}  |            {:>4}  {:>10}  {:>5.1}%  {:>13.1}% |           {:>4}  {:>10}  {:>5.1}%  {:>13.1}%\n",
                b.threshold,
                b.served,
                b.false_hits,
                b.recall * 100.0,
                b.false_hit_rate * 100.0,
                g.served,
                g.false_hits,
                g.recall * 100.0,
                g.false_hit_rate * 100.0
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_computed_over_served_hits() {
        let r = report(vec![
            (0.95, true, 1),
            (0.93, false, 0),
            (0.91, true, 0),
            (0.80, true, 1),
        ]);
        let at = |rows: &[Row], t: f32| rows.iter().find(|r| (r.threshold - t).abs() < 1e-4).cloned().unwrap();
        let bare = at(&r.bare, 0.90);
        assert_eq!((bare.served, bare.false_hits), (3, 2));
        assert!((bare.recall - 0.5).abs() < 1e-9);
        let guarded = at(&r.guarded, 0.90);
        assert_eq!((guarded.served, guarded.false_hits), (2, 1));
        assert!((guarded.false_hit_rate - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_clean_record_is_bounded_by_how_much_it_saw() {
        // Known one-sided 95 % Clopper–Pearson bounds: 1 - 0.05^(1/n) when nothing went wrong.
        assert!((upper_bound(0, 14) - 0.1926).abs() < 1e-3);
        assert!((upper_bound(0, 299) - 0.00997).abs() < 1e-4);
        assert!((upper_bound(1, 53) - 0.0868).abs() < 1e-3);
        assert!((upper_bound(5, 100) - 0.1024).abs() < 1e-3);
        assert_eq!(upper_bound(0, 0), 1.0);
        assert_eq!(upper_bound(3, 3), 1.0);
    }

    #[test]
    fn the_suggestion_is_safe_all_the_way_up_and_keeps_the_best_recall() {
        let mut scored = vec![
            (0.97, true, 1),
            (0.93, true, 1),
            (0.89, true, 1),
            (0.85, true, 1),
            (0.81, true, 0),
            (0.785, true, 1),
        ];
        let r = report(scored.clone());
        // 0.82 serves what 0.84 does: the higher of the two.
        let s = r.suggest(0.01).unwrap();
        assert!((s.threshold - 0.84).abs() < 1e-4, "{s:?}");
        assert_eq!((s.served, s.false_hits), (4, 0));
        let text = r.render_suggestion(0.01);
        assert!(text.contains("0.84"), "{text}");
        assert!(text.contains("as high as 52.7 %"), "{text}");
        assert!(text.contains("~299 served hits"), "{text}");
        // Tolerating 1 wrong in 6, 0.78 gains the last same-answer pair.
        let s = r.suggest(0.2).unwrap();
        assert!((s.threshold - 0.78).abs() < 1e-4, "{s:?}");
        assert_eq!((s.served, s.false_hits), (6, 1));
        // A target of zero: the suggestion stands, and no sample size can vouch for it.
        let text = r.render_suggestion(0.0);
        assert!(text.contains("no number of hits can show 0 %"), "{text}");
        // Nothing is suggested when the top threshold already serves a wrong answer.
        scored.push((0.99, true, 0));
        let r = report(scored);
        assert!(r.suggest(0.01).is_none());
        assert!(r.render_suggestion(0.01).starts_with("\nno threshold"));
    }

    #[test]
    fn pairs_parse_with_line_numbers() {
        assert_eq!(
            parse_pairs("{\"a\":\"x\",\"b\":\"y\",\"label\":1}\n\n").unwrap().len(),
            1
        );
        assert!(parse_pairs("{\"a\":1}").unwrap_err().starts_with("line 1"));
    }
}
