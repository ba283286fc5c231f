// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! `GET /admin/advice`: savings computed from the traffic actually served.

mod common;

use common::*;
use llm_sidecar::mock::MockUpstream;
use serde_json::Value;

fn kind<'a>(advice: &'a Value, kind: &str) -> Vec<&'a Value> {
    advice["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == kind)
        .collect()
}

#[tokio::test]
async fn advice_names_cheaper_models_lower_thresholds_and_soft_budget_tiers_with_the_change() {
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        "tenants:\n  defaults: {{ budget: {{ daily_usd: 0.001, soft_ratio: 0.001 }} }}\n{}",
        cache_section("  semantic_threshold_unused: 0\n").replace(
            "  semantic_threshold_unused: 0\n",
            // No alignment band: it would serve the paraphrase just under 0.99.
            "    threshold: 0.99\n    alignment_band: 0\n",
        )
    );
    // The route lists the cheap model only as a fallback.
    let text = config(&mock.base_url(), &extra)
        .replace(
            "  embed-model:",
            "  cheap-model:\n    provider: mock\n    pricing: { input: 0.1, output: 0.2 }\n  embed-model:",
        )
        .replace(
            "targets: [{ model: chat-model }]",
            "targets: [{ model: chat-model }, { model: cheap-model }]",
        );
    let h = Harness::with_text(mock, text).await;
    // A question, then a paraphrase below the 0.99 threshold: a miss with a close candidate.
    assert_eq!(
        h.chat(chat_body("How do I reset my online banking password?"))
            .await
            .status(),
        200
    );
    let r = h.chat(chat_body("how can I reset my online banking password")).await;
    assert_eq!(r.headers()["x-llm-sidecar-cache"], "miss");
    let advice = h.admin_get("/admin/advice").await;
    assert_eq!(advice["currency"], "USD");

    let cheaper = kind(&advice, "cheaper_model");
    let c = cheaper
        .iter()
        .find(|i| i["served_model"] == "chat-model")
        .expect("a cheaper model item");
    assert_eq!(c["cheaper_model"], "cheap-model");
    assert_eq!(c["requests"], 2);
    let spent = c["spent_usd"].as_f64().unwrap();
    let saving = c["saving_if_all_usd"].as_f64().unwrap();
    assert!(
        saving > 0.85 * spent && saving < spent,
        "cheap-model costs a tenth: {c}"
    );
    assert!(
        c["config_change"].as_str().unwrap().contains("strategy: complexity"),
        "{c}"
    );

    let cache = kind(&advice, "cache_threshold");
    assert!(!cache.is_empty(), "{advice}");
    let lowest = cache.iter().max_by_key(|i| i["extra_hits"].as_u64().unwrap()).unwrap();
    assert_eq!(lowest["extra_hits"], 1);
    assert!(lowest["saving_usd"].as_f64().unwrap() > 0.0);
    assert!(
        lowest["config_change"]
            .as_str()
            .unwrap()
            .starts_with("cache.semantic.threshold: 0.")
    );

    // The default tenant passed its soft limit (0.1 % of 0.001 USD) on the first request and
    // no `budget: soft` route exists: the second request is what a cheaper tier would save.
    let soft = kind(&advice, "budget_soft_tier");
    assert_eq!(soft.len(), 1, "{advice}");
    assert_eq!(soft[0]["tenant"], "default");
    assert!(soft[0]["config_change"].as_str().unwrap().contains("budget: soft"));
}

/// Advice never crosses endpoints (an embeddings model is not a cheaper chat model, whatever
/// capabilities it leaves undeclared) and only names routes that exist: traffic that named a
/// catalogue model directly is told to add a route.
#[tokio::test]
async fn advice_keeps_to_the_endpoint_and_to_routes_that_exist() {
    let mock = MockUpstream::start().await.unwrap();
    let text = config(&mock.base_url(), "")
        .replace(
            "  embed-model:",
            "  cheap-model:\n    provider: mock\n    pricing: { input: 0.1, output: 0.2 }\n  embed-model:",
        )
        .replace(
            "targets: [{ model: chat-model }]",
            "targets: [{ model: chat-model }, { model: cheap-model }]\n  - name: vectors\n    models: [text-embedding]\n    targets: [{ model: embed-model }]",
        )
        // The embeddings model is by far the cheapest per token.
        .replace(
            "pricing: { input: 0.1, output: 0 }",
            "pricing: { input: 0.001, output: 0 }",
        );
    let h = Harness::with_text(mock, text).await;
    let tool_call = serde_json::json!({
        "model": "auto",
        "messages": [{"role": "user", "content": "what is the weather in Paris"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
    });
    assert_eq!(h.chat(tool_call).await.status(), 200);
    let mut direct = chat_body("hello there");
    direct["model"] = serde_json::json!("chat-model");
    assert_eq!(h.chat(direct).await.status(), 200);
    let r = h
        .client
        .post(h.url("/v1/embeddings"))
        .json(&serde_json::json!({"model": "text-embedding", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let advice = h.admin_get("/admin/advice").await;
    let cheaper = kind(&advice, "cheaper_model");
    assert!(
        cheaper.iter().all(|i| i["cheaper_model"] != "embed-model"),
        "an embeddings model advised for chat: {advice}"
    );
    let via_auto = cheaper
        .iter()
        .find(|i| i["route"] == "auto")
        .expect("advice for route auto");
    assert_eq!(via_auto["cheaper_model"], "cheap-model");
    assert!(
        via_auto["config_change"]
            .as_str()
            .unwrap()
            .starts_with("routes[name=auto]")
    );
    let direct = cheaper
        .iter()
        .find(|i| i["route"] == "chat-model")
        .expect("advice for the direct requests");
    let change = direct["config_change"].as_str().unwrap();
    assert!(
        change.contains("directly") && !change.starts_with("routes[name=chat-model]"),
        "names a route that does not exist: {change}"
    );
}
