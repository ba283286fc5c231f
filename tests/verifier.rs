// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The optional pair verifier (`cache.semantic.verifier`), with a tiny ONNX model the test
//! builds itself (tests/common/onnx.rs): loading, pair encoding with segment ids, the score,
//! and its last word on semantic hits end to end. Quality is not tested here: no pair model can
//! be downloaded on these machines.

mod common;

use common::onnx::write_pair_model;
use common::*;
use llm_sidecar::embed::pair::PairModel;
use llm_sidecar::mock::MockUpstream;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn load(model: &std::path::Path) -> Result<PairModel, llm_sidecar::embed::EmbedError> {
    let assets = assets_dir();
    PairModel::load(&assets.join("libonnxruntime.so"), model, &assets.join("tokenizer.json"))
}

#[test]
fn the_pair_is_read_as_two_segments_and_scored() {
    let (_dir, path) = write_pair_model(3.5);
    let mut m = load(&path).expect("the tiny model loads");
    // Segment B is the second text and its [SEP]: "a b c" → 4 tokens, logit 4 - 3.5.
    let s = m.score("hello there", "a b c").unwrap().unwrap();
    assert!((s - sigmoid(0.5)).abs() < 1e-5, "{s}");
    // The first text's length does not count (segment A has ids 0).
    let s = m
        .score("a much longer first question with many words", "a b c")
        .unwrap()
        .unwrap();
    assert!((s - sigmoid(0.5)).abs() < 1e-5, "{s}");
    let s = m.score("x", "one").unwrap().unwrap();
    assert!((s - sigmoid(-1.5)).abs() < 1e-5, "{s}");
    // Past the pair window: not scored.
    let long = "word ".repeat(300);
    assert_eq!(m.score(&long, "a").unwrap(), None);
}

#[test]
fn a_file_that_is_not_a_pair_model_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    assert!(load(&junk).is_err());
    assert!(load(&dir.path().join("missing.onnx")).is_err());
}

async fn harness(min_score: f32, model: &std::path::Path) -> Harness {
    let mock = MockUpstream::start().await.unwrap();
    let extra = cache_section(&format!(
        "    verifier:\n      model: {}\n      tokenizer: {}\n      min_score: {min_score}\n",
        model.display(),
        assets_dir().join("tokenizer.json").display()
    ));
    let text = config(&mock.base_url(), &extra);
    Harness::with_text(mock, text).await
}

async fn ask_paraphrase(h: &Harness) -> String {
    ask_after(h, "How do I reset my password?", "how can I reset my password").await
}

#[tokio::test]
async fn the_verifier_has_the_last_word_on_semantic_hits() {
    // The pair is (query, cached query): the cached "How do I reset my password?" is 7 tokens
    // + [SEP] in segment B, logit 8 - 3.5 = 4.5, score 0.989.
    let (_dir, path) = write_pair_model(3.5);
    let h = harness(0.9, &path).await;
    assert_eq!(ask_paraphrase(&h).await, "hit-semantic");
    let m = h.metrics().await;
    assert_eq!(metric(&m, r#"llm_sidecar_cache_verifier_total{result="agree"}"#), 1.0);

    let h = harness(0.995, &path).await;
    assert_eq!(ask_paraphrase(&h).await, "miss");
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, r#"llm_sidecar_cache_verifier_total{result="disagree"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"llm_sidecar_cache_guard_rejections_total{reason="verifier"}"#),
        1.0
    );
    // Exact repeats never ask it.
    let r = h.chat(chat_body("How do I reset my password?")).await;
    assert_eq!(r.headers()["x-llm-sidecar-cache"], "hit-exact");
}

#[tokio::test]
async fn a_verifier_that_cannot_load_turns_the_semantic_cache_off_not_the_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(0.5, &dir.path().join("missing.onnx")).await;
    assert_eq!(ask_paraphrase(&h).await, "miss");
    let r = h.chat(chat_body("How do I reset my password?")).await;
    assert_eq!(r.headers()["x-llm-sidecar-cache"], "hit-exact");
    let m = h.metrics().await;
    assert_eq!(metric(&m, "llm_sidecar_embedder_available"), 0.0);
}
