// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The shipped paraphrase sets through the real model and the guard. `data/paraphrases.jsonl`
//! is the set the guard was developed against (in-sample); `data/paraphrases-heldout.jsonl`
//! was written afterwards, and its failures motivated the one-word-substitution rule;
//! `data/paraphrases-heldout-2.jsonl` was written before that rule but its failures were read
//! while designing it; `data/paraphrases-heldout-3.jsonl` was measured once unseen (1 wrong
//! answer in 28) and its failures then motivated the scope rule, synonym folding and stems.
//! `data/paraphrases-heldout-4.jsonl` was written and committed before those changes, on
//! topics none of the others touch, and measured once after them; `data/paraphrases-heldout-5.jsonl`
//! was written after that and measured once with the guard unchanged, as was
//! `data/paraphrases-heldout-6.jsonl` (a guard change tried before it was dropped) and
//! `data/paraphrases-heldout-7.jsonl` (after the operator and style rules). They are the
//! unseen sets: the goal is not met there and not asserted (docs/cache.md reports what they show).

mod common;

use llm_sidecar::cache::calibrate::{Band, Report, parse_pairs, report_with, run};
use llm_sidecar::embed::Model;

const SETS: [&str; 4] = [
    "paraphrases.jsonl",
    "paraphrases-heldout.jsonl",
    "paraphrases-heldout-2.jsonl",
    "paraphrases-heldout-3.jsonl",
];

fn report(file: &str) -> Report {
    let text = std::fs::read_to_string(format!("{}/data/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let pairs = parse_pairs(&text).unwrap();
    let mut model = Model::load(&common::assets_dir(), 1).expect("assets (run scripts/fetch-assets)");
    run(&pairs, &mut model, Band::default()).unwrap()
}

/// The same pairs without the token-alignment band: the guard alone.
fn without_band(r: &Report) -> Report {
    let off = Band {
        width: 0.0,
        min_alignment: 1.0,
    };
    report_with(r.scored.clone(), &r.aligned, off)
}

const UNSEEN: [&str; 6] = [
    "paraphrases-heldout-4.jsonl",
    "paraphrases-heldout-5.jsonl",
    "paraphrases-heldout-6.jsonl",
    "paraphrases-heldout-7.jsonl",
    "paraphrases-heldout-8.jsonl",
    "paraphrases-heldout-9.jsonl",
];

#[test]
fn the_guard_never_serves_more_wrong_answers_than_bare_cosine() {
    for file in SETS.iter().chain(&UNSEEN) {
        let r = without_band(&report(file));
        eprintln!("{file}\n{}", r.render());
        for (bare, guarded) in r.bare.iter().zip(&r.guarded) {
            assert!(guarded.false_hits <= bare.false_hits, "{file} at {}", bare.threshold);
        }
        // And, on the sets it was developed with, it removes most of them across the useful
        // range. On the unseen sets it removes fewer (heldout-4: 1 of 4 at 0.86).
        if !SETS.contains(file) {
            continue;
        }
        let at = |t: f32| {
            r.bare
                .iter()
                .zip(&r.guarded)
                .find(|(b, _)| (b.threshold - t).abs() < 1e-4)
                .unwrap()
        };
        let (b, g) = at(0.86);
        assert!(
            g.false_hits * 3 <= b.false_hits * 2,
            "{file}: guard {} vs bare {}",
            g.false_hits,
            b.false_hits
        );
    }
}

#[test]
fn in_sample_the_guard_meets_the_goal_at_090() {
    let r = report("paraphrases.jsonl");
    let g = r.guarded.iter().find(|g| (g.threshold - 0.90).abs() < 1e-4).unwrap();
    assert!(g.false_hit_rate <= 0.01, "{g:?}");
    assert!(g.recall >= 0.60, "{g:?}");
    // What `calibrate` would suggest for 1 %: nothing wrong served, at least the default's recall.
    let s = r.suggest(0.01).unwrap();
    assert_eq!(s.false_hits, 0, "{s:?}");
    assert!(s.recall >= g.recall, "{s:?}");
}

/// The token-alignment band under the default threshold: over every labelled set it serves more
/// same-answer pairs and adds no wrong answer (measured: 203 → 242 of 460 same-answer pairs on
/// the first nine sets, and 3 → 8 served of 30 on heldout-9, which was written before the band
/// and measured once; its refusals then motivated the "one"-as-article rule: 4 → 9 since).
#[test]
fn the_alignment_band_adds_hits_and_no_wrong_answer_at_the_default_threshold() {
    let t = llm_sidecar::config::DEFAULT_SEMANTIC_THRESHOLD;
    let at = |r: &Report| {
        r.guarded
            .iter()
            .find(|g| (g.threshold - t).abs() < 1e-4)
            .unwrap()
            .clone()
    };
    let (mut before, mut after) = (0, 0);
    for file in SETS.iter().chain(&UNSEEN) {
        let r = report(file);
        let (with, without) = (at(&r), at(&without_band(&r)));
        eprintln!(
            "{file}: served {} → {}, wrong {} → {}",
            without.served, with.served, without.false_hits, with.false_hits
        );
        assert_eq!(with.false_hits, without.false_hits, "{file}");
        assert!(with.served >= without.served, "{file}");
        before += without.served;
        after += with.served;
    }
    assert!(after > before + before / 10, "{before} → {after}");
}

/// The goal of issue #3 at the default threshold, on every set the guard was developed with and
/// on all of them together: at most 1 % of served hits wrong, at least 60 % of same-answer
/// pairs served.
#[test]
fn every_set_meets_the_goal_at_the_default_threshold() {
    let t = llm_sidecar::config::DEFAULT_SEMANTIC_THRESHOLD;
    let (mut served, mut wrong, mut found, mut positives) = (0, 0, 0.0, 0);
    for file in SETS {
        let r = report(file);
        let g = r.guarded.iter().find(|g| (g.threshold - t).abs() < 1e-4).unwrap();
        assert!(g.false_hit_rate <= 0.01, "{file}: {g:?}");
        assert!(g.recall >= 0.60, "{file}: {g:?}");
        served += g.served;
        wrong += g.false_hits;
        found += g.recall * r.positives as f64;
        positives += r.positives;
    }
    eprintln!(
        "all sets at {t}: {served} served, {wrong} wrong, recall {:.1} %",
        100.0 * found / positives as f64
    );
    assert!(wrong * 100 <= served);
}

/// As in the cache, a pair with a text past the embedder's window is never served: cut to the
/// window, a long document followed by two different requests would score 1.000.
#[test]
fn a_text_past_the_window_is_never_served() {
    let doc = "The quarterly report shows that revenue grew in every region, driven by strong demand \
               for the new product line, while costs rose more slowly than sales. "
        .repeat(6);
    let pairs = parse_pairs(
        &[
            serde_json::json!({"a": format!("{doc}What are the main risks?"), "b": format!("{doc}Write a tweet about it."), "label": 0}),
            serde_json::json!({"a": "How do I reset my password?", "b": "how can I reset my password", "label": 1}),
        ]
        .map(|v| v.to_string())
        .join("\n"),
    )
    .unwrap();
    let mut model = Model::load(&common::assets_dir(), 1).expect("assets (run scripts/fetch-assets)");
    let r = run(&pairs, &mut model, Band::default()).unwrap();
    for row in r.bare.iter().chain(&r.guarded) {
        assert_eq!(row.false_hits, 0, "{row:?}");
    }
    assert_eq!(
        r.guarded
            .iter()
            .find(|g| (g.threshold - 0.90).abs() < 1e-4)
            .unwrap()
            .served,
        1
    );
    assert!(
        r.render().starts_with("1 pair(s) have a text longer than"),
        "{}",
        r.render()
    );
}
