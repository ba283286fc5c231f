//! `cache.semantic.embedder`: the semantic cache embedding through a provider's
//! `/v1/embeddings` (the mock's: a hashed bag of words, so rewordings land close) instead of
//! the local model. Needs no model assets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use llm_sidecar::mock::{Fault, MockUpstream};
use serde_json::Value;

/// A config whose semantic cache embeds through provider `embeds` (at `embeds_url`) with
/// `embedder` settings.
fn remote_config(chat: &MockUpstream, embeds_url: &str, version: &str, embedder: &str) -> String {
    let extra = format!(
        "cache:\n  semantic:\n    timeout: 2s\n    verify_sample: 0\n    threshold: 0.9\n    embedder: {{ provider: embeds, {embedder} }}\n"
    );
    config(&chat.base_url(), &extra)
        .replace("version: test-1", &format!("version: {version}"))
        .replace(
            "providers:\n",
            &format!(
                "providers:\n  embeds:\n    base_url: {embeds_url}\n    auth: {{ key_env: UPSTREAM_KEY }}\n    timeouts: {{ connect: 500ms, first_byte: 2s, idle: 2s, total: 20s }}\n"
            ),
        )
}

fn embedding_requests(mock: &MockUpstream) -> Vec<Value> {
    mock.requests()
        .into_iter()
        .filter(|r| r.path_and_query == "/v1/embeddings")
        .map(|r| {
            assert_eq!(
                r.headers["authorization"],
                format!("Bearer {UPSTREAM_KEY}"),
                "the provider's own key"
            );
            r.json()
        })
        .collect()
}

async fn ask(h: &Harness, q: &str) -> (String, Value) {
    let r = h.chat(chat_body(q)).await;
    assert_eq!(r.status(), 200, "{q}");
    let status = cache_header(&r);
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn rewordings_hit_through_a_remote_embedder_of_another_width() {
    let mock = MockUpstream::start().await.unwrap();
    let text = remote_config(&mock, &mock.base_url(), "r1", "model: embed-upstream, dimensions: 1536");
    let h = Harness::with_text(mock, text).await;
    let first = "What is the capital city of Australia?";
    let (status, answer) = ask(&h, first).await;
    assert_eq!(status, "miss");
    settle().await;
    let (status, again) = ask(&h, "The capital city of Australia is what?").await;
    assert_eq!(status, "hit-semantic");
    assert_eq!(again["choices"], answer["choices"], "the cached answer is served");
    let (status, _) = ask(&h, "How long should sourdough bread proof?").await;
    assert_eq!(status, "miss", "another question finds nothing");

    let sent = embedding_requests(&h.mock);
    assert!(!sent.is_empty());
    for body in &sent {
        assert_eq!(body["model"], "embed-upstream");
        assert_eq!(body["dimensions"], 1536);
        assert_eq!(body["encoding_format"], "float");
        assert!(body["input"].is_array());
    }
    // The lookup's vector is reused by the insert: one text embedded per question.
    let texts: usize = sent.iter().map(|b| b["input"].as_array().unwrap().len()).sum();
    assert_eq!(texts, 3, "{sent:?}");
    let m = h.metrics().await;
    assert_eq!(metric(&m, "llm_sidecar_embedder_available"), 1.0);
    assert!(metric(&m, "llm_sidecar_embed_batch_size_count") >= 3.0, "{m}");
}

#[tokio::test]
async fn the_service_answers_in_its_native_width_when_none_is_asked() {
    let mock = MockUpstream::start().await.unwrap();
    let text = remote_config(&mock, &mock.base_url(), "r1", "model: embed-upstream");
    let h = Harness::with_text(mock, text).await;
    let (status, _) = ask(&h, "Which river flows through Vienna?").await;
    assert_eq!(status, "miss");
    settle().await;
    let (status, _) = ask(&h, "Through Vienna flows which river?").await;
    assert_eq!(status, "hit-semantic");
    let sent = embedding_requests(&h.mock);
    assert!(sent.iter().all(|b| b.get("dimensions").is_none()), "{sent:?}");
}

#[tokio::test]
async fn a_failing_or_slow_embedding_service_makes_misses_never_errors() {
    let chat = MockUpstream::start().await.unwrap();
    let embeds = MockUpstream::start().await.unwrap();
    let text = remote_config(&chat, &embeds.base_url(), "r1", "model: e").replace("timeout: 2s", "timeout: 300ms");
    let h = Harness::with_text(chat, text).await;
    // Warm: a stored question to be found.
    assert_eq!(ask(&h, "Which planet has the most moons?").await.0, "miss");
    settle().await;

    embeds.set_standing_fault(Some(Fault::Status {
        status: 500,
        retry_after: None,
    }));
    let (status, answer) = ask(&h, "The most moons are around which planet?").await;
    assert_eq!(status, "miss", "no vector, no semantic hit");
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "the app is answered"
    );
    let m = h
        .wait_for_metric(r#"llm_sidecar_cache_skips_total{reason="embed_failed"}"#)
        .await;
    assert!(m >= 1.0);

    embeds.set_standing_fault(Some(Fault::DelayFirstByte(Duration::from_secs(3))));
    let start = Instant::now();
    let (status, _) = ask(&h, "Around which planet are the most moons?").await;
    assert_eq!(status, "miss");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "the lookup waits for cache.semantic.timeout only: {:?}",
        start.elapsed()
    );
    h.wait_for_metric(r#"llm_sidecar_cache_skips_total{reason="embed_timeout"}"#)
        .await;

    // The service recovers: hits again, with no restart.
    embeds.set_standing_fault(None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = ask(&h, "Has which planet the most moons?").await;
    assert_eq!(status, "hit-semantic");
}

#[tokio::test]
async fn a_reload_to_another_embedding_model_empties_the_index_and_keeps_exact_entries() {
    let mock = MockUpstream::start().await.unwrap();
    let url = mock.base_url();
    let v1 = remote_config(&mock, &url, "e1", "model: embed-a, dimensions: 64");
    let (h, path) = Harness::with_file(mock, v1.clone()).await;
    h.served("e1", Duration::from_secs(5)).await;
    let q = "Who painted the ceiling of the Sistine Chapel?";
    let reworded = "The ceiling of the Sistine Chapel was painted by who?";
    assert_eq!(ask(&h, q).await.0, "miss");
    settle().await;
    assert_eq!(ask(&h, reworded).await.0, "hit-semantic");
    let dropped = r#"llm_sidecar_cache_vectors_dropped_total"#;

    // Same service, another model and width: vectors of another space.
    let v2 = v1
        .replace("version: e1", "version: e2")
        .replace("model: embed-a, dimensions: 64", "model: embed-b, dimensions: 96");
    std::fs::write(&path, &v2).unwrap();
    h.served("e2", Duration::from_secs(5)).await;
    assert_eq!(metric(&h.metrics().await, dropped), 1.0);
    // The entry stays for exact hits; the rewording no longer finds it (and is stored).
    assert_eq!(ask(&h, q).await.0, "hit-exact");
    assert_eq!(ask(&h, reworded).await.0, "miss");
    let q2 = "What is the boiling point of water at sea level?";
    assert_eq!(ask(&h, q2).await.0, "miss");
    settle().await;
    assert_eq!(
        ask(&h, "At sea level, the boiling point of water is what?").await.0,
        "hit-semantic"
    );
    let last = embedding_requests(&h.mock).pop().unwrap();
    assert_eq!(
        (last["model"].as_str(), last["dimensions"].as_u64()),
        (Some("embed-b"), Some(96))
    );

    // Back to the first: the second's two vectors go too.
    std::fs::write(&path, v1.replace("version: e1", "version: e3")).unwrap();
    h.served("e3", Duration::from_secs(5)).await;
    assert_eq!(metric(&h.metrics().await, dropped), 3.0);
    // A reload that leaves the embedder as it is keeps the index.
    assert_eq!(
        ask(&h, "Name the painter of the Sistine Chapel ceiling").await.0,
        "miss"
    );
    settle().await;
    std::fs::write(&path, v1.replace("version: e1", "version: e4")).unwrap();
    h.served("e4", Duration::from_secs(5)).await;
    assert_eq!(metric(&h.metrics().await, dropped), 3.0);
    assert_eq!(
        ask(&h, "The painter of the Sistine Chapel ceiling: name them").await.0,
        "hit-semantic"
    );
}

#[tokio::test]
async fn a_bad_embedder_config_names_the_key_to_fix() {
    let mock = MockUpstream::start().await.unwrap();
    for (embedder, key, says) in [
        (
            "provider: nowhere, model: m",
            "cache.semantic.embedder.provider",
            "unknown provider",
        ),
        (
            "provider: mock, model: ''",
            "cache.semantic.embedder.model",
            "name the embedding model",
        ),
        (
            "provider: mock, model: m, dimensions: 0",
            "cache.semantic.embedder.dimensions",
            "out of range",
        ),
        (
            "provider: mock, model: m, concurrency: 1000",
            "cache.semantic.embedder.concurrency",
            "1 to 64",
        ),
        (
            "provider: mock, model: m, colour: red",
            "cache.semantic.embedder",
            "colour",
        ),
    ] {
        let text = config(
            &mock.base_url(),
            &format!("cache:\n  semantic:\n    embedder: {{ {embedder} }}\n"),
        );
        let err = refused(text).await;
        assert!(err.contains(key) && err.contains(says), "{embedder}: {err}");
    }
}
