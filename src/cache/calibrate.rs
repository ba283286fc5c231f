//! Calibration: from labelled pairs of texts (`{"a","b","label"}`, label 1 when one answer
//! serves both), the precision, recall and false-hit rate a semantic cache would have at each
//! threshold, with the guard on and off — so a platform team can pick a threshold from its
//! own traffic. A "false hit" is a served hit whose pair is labelled 0; the false-hit rate is
//! false hits / served hits (what share of cached answers served would be wrong).

use serde::Deserialize;

use super::guard::{Features, check};
use crate::embed::{EmbedError, MAX_TOKENS, Model, cosine};

#[derive(Debug, Clone, Deserialize)]
pub struct Pair {
    pub a: String,
    pub b: String,
    pub label: u8,
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
    pub negatives: usize,
    pub bare: Vec<Row>,
    pub guarded: Vec<Row>,
    /// (similarity, guard passed, label) per pair.
    pub scored: Vec<(f32, bool, u8)>,
}

pub fn parse_pairs(text: &str) -> Result<Vec<Pair>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str::<Pair>(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Thresholds reported: 0.70 to 0.98 in steps of 0.02.
pub fn thresholds() -> Vec<f32> {
    (0..15).map(|i| 0.70 + 0.02 * i as f32).collect()
}

pub fn run(pairs: &[Pair], model: &mut Model) -> Result<Report, EmbedError> {
    let mut scored = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(16) {
        let texts: Vec<&str> = chunk.iter().flat_map(|p| [p.a.as_str(), p.b.as_str()]).collect();
        // One text at a time: the quantized model's vectors depend slightly on batch
        // composition, and the cache embeds one query at a time.
        let mut vectors = Vec::with_capacity(texts.len());
        for t in texts {
            vectors.extend(model.embed(&[t])?);
        }
        for (p, v) in chunk.iter().zip(vectors.chunks(2)) {
            // As in the cache: a text longer than the model's window is exact-only, never a
            // semantic hit.
            let sim = if model.fits(&p.a) && model.fits(&p.b) {
                cosine(&v[0], &v[1])
            } else {
                TOO_LONG
            };
            let passed = check(&Features::of(&p.b), &Features::of(&p.a)).is_ok();
            scored.push((sim, passed, p.label));
        }
    }
    Ok(report(scored))
}

/// The similarity given to a pair with a text the model cannot embed whole: below every threshold.
const TOO_LONG: f32 = -2.0;

pub fn report(scored: Vec<(f32, bool, u8)>) -> Report {
    let positives = scored.iter().filter(|s| s.2 == 1).count();
    let negatives = scored.len() - positives;
    let row = |t: f32, guard: bool| {
        let served: Vec<_> = scored.iter().filter(|(s, ok, _)| *s >= t && (!guard || *ok)).collect();
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
    Report {
        positives,
        negatives,
        bare: thresholds().into_iter().map(|t| row(t, false)).collect(),
        guarded: thresholds().into_iter().map(|t| row(t, true)).collect(),
        scored,
    }
}

/// The pairs a threshold gets wrong: wrong answers served (with the guard on) and
/// same-answer pairs the guard turns down, each with its similarity (and the guard's reason).
pub fn explain(pairs: &[Pair], report: &Report, threshold: f32) -> String {
    let mut served_wrong = String::new();
    let mut turned_down = String::new();
    for (p, &(sim, passed, label)) in pairs.iter().zip(&report.scored) {
        if sim < threshold {
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

impl Report {
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
    fn pairs_parse_with_line_numbers() {
        assert_eq!(
            parse_pairs("{\"a\":\"x\",\"b\":\"y\",\"label\":1}\n\n").unwrap().len(),
            1
        );
        assert!(parse_pairs("{\"a\":1}").unwrap_err().starts_with("line 1"));
    }
}
