// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The Responses API (`POST /v1/responses`) as a first-class endpoint: routed by model name,
//! failed over, its typed event streams relayed and accounted, limited per tenant, and
//! counted in the metrics like chat.

mod common;

use common::*;
use llm_sidecar::mock::{Fault, MockUpstream, RawEnd};
use serde_json::{Value, json};

/// Two providers (`primary` → model `a`, `backup` → model `b`) behind route `auto`, plus `extra`.
fn two(primary: &MockUpstream, backup: &MockUpstream, extra: &str) -> String {
    format!(
        r#"
providers:
  primary: {{ base_url: "{}", auth: {{ key_env: UPSTREAM_KEY }}, timeouts: {{ connect: 300ms, first_byte: 1s, idle: 1s, total: 10s }} }}
  backup: {{ base_url: "{}" }}
models:
  a: {{ provider: primary, upstream_model: gpt-upstream-a, pricing: {{ input: 1.0, output: 2.0 }} }}
  b: {{ provider: backup, pricing: {{ input: 1.0, output: 2.0 }} }}
routes:
  - {{ name: auto, models: [auto], targets: [{{ model: a }}, {{ model: b }}] }}
resilience: {{ retries: {{ max_attempts: 1 }} }}
{extra}
"#,
        primary.base_url(),
        backup.base_url()
    )
}

async fn pair(extra: &str) -> (Harness, MockUpstream) {
    let primary = MockUpstream::start().await.unwrap();
    let backup = MockUpstream::start().await.unwrap();
    let text = two(&primary, &backup, extra);
    (Harness::with_text(primary, text).await, backup)
}

async fn post(h: &Harness, body: Value) -> reqwest::Response {
    h.client
        .post(h.url("/v1/responses"))
        .bearer_auth("sk-app-key")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The events of a Responses stream: (event name, data).
async fn typed_events(r: reqwest::Response) -> Vec<(String, Value)> {
    let text = r.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).expect("data line");
            (name, serde_json::from_str(data).expect("JSON data"))
        })
        .collect()
}

fn output_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect()
}

#[tokio::test]
async fn a_response_is_routed_by_model_and_accounted() {
    let (h, backup) = pair("").await;
    let r = post(
        &h,
        json!({"model": "auto", "input": "hello responses", "store": false, "future": {"x": 1}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llm-sidecar-route"], "auto");
    assert_eq!(r.headers()["x-llm-sidecar-model"], "a");
    // 3 input tokens at $1/M + 5 output tokens at $2/M.
    let cost: f64 = r.headers()["x-llm-sidecar-cost-usd"].to_str().unwrap().parse().unwrap();
    assert!((cost - 13e-6).abs() < 1e-12, "cost {cost}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "Mock answer to: hello responses"
    );
    let sent = h.mock.last_request().unwrap();
    assert_eq!(sent.path_and_query, "/v1/responses");
    assert_eq!(sent.headers["authorization"], format!("Bearer {UPSTREAM_KEY}").as_str());
    let sent = sent.json();
    assert_eq!(
        sent["model"], "gpt-upstream-a",
        "the route's model, under its upstream name"
    );
    assert_eq!(sent["future"], json!({"x": 1}), "other fields untouched");
    assert!(sent.get("stream_options").is_none());
    assert!(backup.requests().is_empty());

    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_requests_total{endpoint="responses",route="auto",model="a",status="200"}"#
        ),
        1.0,
        "{m}"
    );
    let spent = metric(&m, r#"llm_sidecar_cost_usd_total{tenant="default",model="a"}"#);
    assert!((spent - 13e-6).abs() < 1e-12, "{spent}");
    assert!(
        m.contains(r#"llm_sidecar_tokens_total{gen_ai_token_type="input",gen_ai_request_model="a",gen_ai_provider_name="primary"} 3"#),
        "{m}"
    );

    // An unknown model is the same 404 as on chat.
    let r = post(&h, json!({"model": "no-such-model", "input": "x"})).await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn a_failing_provider_is_failed_over_and_a_broken_answer_is_not_success() {
    let (h, backup) = pair("").await;
    h.mock.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    let r = post(&h, json!({"model": "auto", "input": "failover"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llm-sidecar-model"], "b");
    assert_eq!(r.headers()["x-llm-sidecar-attempts"], "2");
    assert_eq!(backup.last_request().unwrap().json()["model"], "b");

    // A 200 without `output` (here, a chat answer) is the provider's failure, not an answer.
    h.mock.push_fault(Fault::Raw {
        status: 200,
        content_type: "application/json",
        chunks: vec![bytes::Bytes::from_static(br#"{"id":"x","choices":[]}"#)],
        end: RawEnd::Complete,
    });
    let r = post(&h, json!({"model": "auto", "input": "broken"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llm-sidecar-model"], "b");
}

#[tokio::test]
async fn a_stream_is_relayed_as_typed_events_and_its_usage_accounted() {
    let (h, _backup) = pair("").await;
    let r = post(
        &h,
        json!({"model": "auto", "input": "stream me please", "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-llm-sidecar-model"], "a");
    let events = typed_events(r).await;
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.completed");
    assert!(events.iter().all(|(n, d)| d["type"] == n.as_str()), "{events:?}");
    assert_eq!(output_text(&events), "Mock answer to: stream me please");
    assert!(
        h.mock.last_request().unwrap().json().get("stream_options").is_none(),
        "the Responses API has no include_usage option: none is added"
    );
    let m = h.metrics().await;
    assert!(
        m.contains(r#"llm_sidecar_tokens_total{gen_ai_token_type="output",gen_ai_request_model="a",gen_ai_provider_name="primary"} 6"#),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_requests_total{endpoint="responses",route="auto",model="a",status="200"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_stream_that_fails_before_its_answer_fails_over_and_one_cut_after_it_ends_in_an_error_event() {
    let (h, backup) = pair("").await;
    // `response.created`, then the provider's error event: nothing of the answer yet.
    h.mock.push_fault(Fault::Raw {
        status: 200,
        content_type: "text/event-stream",
        chunks: vec![
            bytes::Bytes::from_static(b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_x\",\"status\":\"in_progress\",\"output\":[]}}\n\n"),
            bytes::Bytes::from_static(b"event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"overloaded\",\"sequence_number\":1}\n\n"),
        ],
        end: RawEnd::Complete,
    });
    let r = post(&h, json!({"model": "auto", "input": "fail then over", "stream": true})).await;
    assert_eq!(r.headers()["x-llm-sidecar-model"], "b");
    let events = typed_events(r).await;
    assert_eq!(
        events.iter().filter(|(n, _)| n == "response.created").count(),
        1,
        "the app sees one stream: {events:?}"
    );
    assert!(events.iter().all(|(n, _)| n != "error"));
    assert_eq!(output_text(&events), "Mock answer to: fail then over");
    assert_eq!(backup.requests().len(), 1);

    // Cut after three deltas: the app has part of the answer, so it gets the Responses
    // API's own error event, never a silent end that looks whole.
    h.mock.push_fault(Fault::CutAfterChunks(7));
    let r = post(&h, json!({"model": "auto", "input": "cut me off soon", "stream": true})).await;
    assert_eq!(r.headers()["x-llm-sidecar-model"], "a");
    let events = typed_events(r).await;
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(last["type"], "error");
    assert!(last["message"].as_str().unwrap().contains("mid-response"), "{last}");
    assert!(events.iter().all(|(n, _)| n != "response.completed"));
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_upstream_errors_total{provider="primary",kind="reset"}"#
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn tenant_limits_apply_to_responses() {
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"sk-app-key"));
    let tenants = format!(
        "tenants:\n  on_unknown: reject\n  list:\n    team-r:\n      api_key_sha256: [\"{sha}\"]\n      limits: {{ requests_per_minute: 1 }}\n"
    );
    let (h, _backup) = pair(&tenants).await;
    let r = post(&h, json!({"model": "auto", "input": "one"})).await;
    assert_eq!(r.status(), 200);
    let r = post(&h, json!({"model": "auto", "input": "two"})).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_limit_rejections_total{tenant="team-r",reason="requests_per_minute"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_follow_up_goes_to_the_provider_that_holds_the_conversation() {
    let (h, backup) = pair("default_route: auto").await;
    // The first turn fails over to the backup, which now holds the response's state.
    h.mock.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    let r = post(&h, json!({"model": "auto", "input": "first turn"})).await;
    assert_eq!(r.headers()["x-llm-sidecar-model"], "b");
    let first: Value = r.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();

    // The route would send the next turn to the primary, which has never seen `id`.
    let r = post(
        &h,
        json!({"model": "auto", "input": "second turn", "previous_response_id": id}),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(r.headers()["x-llm-sidecar-model"], "b");
    let second: Value = r.json().await.unwrap();
    assert_eq!(second["previous_response_id"], id.as_str());
    assert_eq!(
        h.mock.requests().len(),
        1,
        "the primary was asked once, for the first turn"
    );

    // A streamed turn's id (from response.created) is remembered the same way.
    let r = post(
        &h,
        json!({"model": "auto", "input": "third turn", "previous_response_id": second["id"], "stream": true}),
    )
    .await;
    let events = typed_events(r).await;
    let third = events[0].1["response"]["id"].as_str().unwrap().to_owned();
    let r = post(
        &h,
        json!({"model": "auto", "input": "fourth", "previous_response_id": third}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llm-sidecar-model"], "b");

    // Reading a stored response goes to its provider too (a passthrough).
    let r = h
        .client
        .get(h.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = backup.last_request().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path_and_query.as_str()),
        ("GET", &*format!("/v1/responses/{id}"))
    );
    assert_eq!(h.mock.requests().len(), 1);

    // With its provider down, a follow-up fails rather than going where it cannot work.
    backup.set_standing_fault(Some(Fault::Status {
        status: 503,
        retry_after: None,
    }));
    let r = post(
        &h,
        json!({"model": "auto", "input": "fifth", "previous_response_id": id}),
    )
    .await;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(h.mock.requests().len(), 1);

    // A new conversation is routed as usual.
    let r = post(&h, json!({"model": "auto", "input": "new conversation"})).await;
    assert_eq!(r.headers()["x-llm-sidecar-model"], "a");
}
