// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! Tenant limits and budgets end to end (one sidecar; fleet mode is in tests/fleet.rs).

mod common;

use common::*;
use llm_sidecar::mock::MockUpstream;
use serde_json::{Value, json};

fn sha(key: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()))
}

/// Tenant `team-a` (key `key-a`) with `limits`/`budget` YAML, plus a `cheap` model and a route
/// that sends tenants past their soft budget to it.
async fn harness(tenant_extra: &str) -> Harness {
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        r#"
tenants:
  on_unknown: reject
  list:
    team-a:
      api_key_sha256: ["{}"]
{tenant_extra}
"#,
        sha("key-a")
    );
    let text = config(&mock.base_url(), &extra)
        .replace(
            "  embed-model:",
            "  cheap-model:\n    provider: mock\n    pricing: { input: 0.1, output: 0.2 }\n  embed-model:",
        )
        .replace(
            "routes:\n",
            "routes:\n  - { name: economy, models: [auto], match: { budget: soft }, targets: [{ model: cheap-model }] }\n",
        );
    Harness::with_text(mock, text).await
}

async fn call(h: &Harness, key: &str, body: Value) -> reqwest::Response {
    h.client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn requests_per_minute_refuse_with_openai_headers() {
    let h = harness("      limits: { requests_per_minute: 3, models: { auto: { requests_per_minute: 10 } } }").await;
    for i in 0..3 {
        let r = call(&h, "key-a", chat_body("hi")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"],
            (2 - i).to_string().as_str()
        );
        assert!(
            r.headers()["x-ratelimit-reset-requests"]
                .to_str()
                .unwrap()
                .ends_with('s')
        );
    }
    let r = call(&h, "key-a", chat_body("hi")).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert_eq!(e["error"]["type"], "requests");
    assert!(e["error"]["message"].as_str().unwrap().contains("tenant team-a"));
    assert_eq!(h.mock.requests().len(), 3, "refused requests never reach the provider");
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_limit_rejections_total{tenant="team-a",reason="requests_per_minute"}"#
        ),
        1.0
    );
    // Unknown keys are still refused before any limit.
    assert_eq!(call(&h, "nope", chat_body("hi")).await.status(), 401);
}

#[tokio::test]
async fn tokens_per_minute_use_an_estimate_then_the_real_usage() {
    // A long prompt is estimated at ~bytes/4 + 256 completion tokens.
    let h = harness("      limits: { tokens_per_minute: 1200 }").await;
    h.mock.set_answer("word", "ok");
    let long = "word ".repeat(600);
    let r = call(&h, "key-a", chat_body(&long)).await;
    assert_eq!(r.status(), 200, "3000 bytes ≈ 750 + 256 tokens fit");
    // The real usage (601 prompt + 1 completion tokens) replaced the estimate, so a second
    // identical request is judged on 602 + 1006 > 1200 and refused...
    let r = call(&h, "key-a", chat_body(&long)).await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("tokens per minute"),
        "{e}"
    );
    // ...while a small one fits in what is left.
    assert_eq!(call(&h, "key-a", chat_body("hi")).await.status(), 200);
}

#[tokio::test]
async fn budgets_go_soft_to_a_cheaper_route_then_refuse_with_insufficient_quota() {
    // chat-model costs 1e-5 USD per "hi" (2 prompt + 4 completion tokens at 1/2 USD per M).
    let h = harness("      budget: { daily_usd: 0.000025, monthly_usd: 100, soft_ratio: 0.4 }").await;
    let r = call(&h, "key-a", chat_body("hi")).await;
    assert_eq!(r.headers()["x-llm-sidecar-model"], "chat-model");
    let cost: f64 = r.headers()["x-llm-sidecar-cost-usd"].to_str().unwrap().parse().unwrap();
    assert!((cost - 1e-5).abs() < 1e-12, "{cost}");
    // Past 40 %: the `budget: soft` route sends it to the cheap model.
    let r = call(&h, "key-a", chat_body("hi")).await;
    assert_eq!(
        (
            r.headers()["x-llm-sidecar-route"].to_str().unwrap(),
            r.headers()["x-llm-sidecar-model"].to_str().unwrap()
        ),
        ("economy", "cheap-model")
    );
    for _ in 0..20 {
        let r = call(&h, "key-a", chat_body("hi")).await;
        if r.status() == 429 {
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "insufficient_quota");
            assert_eq!(e["error"]["type"], "insufficient_quota");
            assert!(e["error"]["message"].as_str().unwrap().contains("daily budget"), "{e}");
            let usage = h.admin_get("/admin/usage").await;
            let a = Harness::find(&usage["tenants"], "tenant", "team-a");
            assert_eq!(a["budget"]["state"], "exhausted");
            assert_eq!(a["budget"]["remaining_today_usd"], 0.0);
            assert!(a["spent_today_usd"].as_f64().unwrap() >= 0.000025);
            let models: Vec<&str> = a["models"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["model"].as_str().unwrap())
                .collect();
            assert_eq!(models, ["chat-model", "cheap-model"]);
            let m = h.metrics().await;
            assert_eq!(
                metric(
                    &m,
                    r#"llm_sidecar_limit_rejections_total{tenant="team-a",reason="budget_daily"}"#
                ),
                1.0
            );
            assert!(metric(&m, r#"llm_sidecar_budget_spent_usd{tenant="team-a",period="daily"}"#) >= 0.000025);
            return;
        }
        assert_eq!(r.status(), 200);
    }
    panic!("the daily budget never ran out");
}

#[tokio::test]
async fn usage_is_reported_per_tenant_and_model() {
    let h = harness("      limits: { requests_per_minute: 100 }").await;
    for q in ["one", "two"] {
        assert_eq!(call(&h, "key-a", chat_body(q)).await.status(), 200);
    }
    let usage = h.admin_get("/admin/usage").await;
    let a = Harness::find(&usage["tenants"], "tenant", "team-a");
    let m = Harness::find(&a["models"], "model", "chat-model");
    assert_eq!(m["requests"], 2);
    assert_eq!(m["prompt_tokens"], 4);
    assert_eq!(m["completion_tokens"], 8);
    assert!((m["cost_usd"].as_f64().unwrap() - 2e-5).abs() < 1e-12);
    assert_eq!(a["limits"]["requests_per_minute"], 100);
    assert_eq!(usage["fleet"], json!(false));
}
