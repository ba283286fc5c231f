//! Token alignment: whether every content word of one question finds a close word in the
//! other, judged on the model's own contextual token states (BERTScore-like, worst word
//! instead of the mean). A pooled vector averages a changed word away — "how did X die" and
//! "where did X die" pool at 0.91 — while the changed word's own state finds no partner.

use super::guard::is_function_word;
use crate::embed::{WordStates, cosine};

/// `(worst, mean)` over both directions: the closest partner of the least matched content
/// word, and the mean closest-partner similarity over content words.
pub fn score(a: &WordStates, b: &WordStates) -> (f32, f32) {
    let (wa, ma) = directional(a, b);
    let (wb, mb) = directional(b, a);
    (wa.min(wb), (ma + mb) / 2.0)
}

fn directional(from: &WordStates, to: &WordStates) -> (f32, f32) {
    let (mut worst, mut sum, mut n) = (1.0f32, 0.0f32, 0usize);
    for (i, w) in from.words.iter().enumerate() {
        if is_function_word(w) {
            continue;
        }
        let v = from.vector(i);
        let best = (0..to.words.len())
            .map(|j| cosine(v, to.vector(j)))
            .fold(-1.0f32, f32::max);
        worst = worst.min(best);
        sum += best;
        n += 1;
    }
    (worst, if n == 0 { 1.0 } else { sum / n as f32 })
}
