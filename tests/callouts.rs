//! `callouts`: the before_route and after_answer HTTP callouts, against a second mock acting
//! as the callout service (`POST /callout`, scripted answers, faults on demand).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use llm_sidecar::mock::{Fault, MockUpstream};
use serde_json::{Value, json};

async fn start(before: Option<&str>, after: Option<&str>) -> (Harness, MockUpstream) {
    let mock = MockUpstream::start().await.unwrap();
    let service = MockUpstream::start().await.unwrap();
    let url = format!("http://{}/callout", service.addr());
    let mut extra = String::from("callouts:\n");
    if let Some(b) = before {
        extra.push_str(&format!(
            "  before_route: {{ url: \"{url}\", headers: {{ x-callout-key: k1 }}, {b} }}\n"
        ));
    }
    if let Some(a) = after {
        extra.push_str(&format!("  after_answer: {{ url: \"{url}\", {a} }}\n"));
    }
    let text = config(&mock.base_url(), &extra);
    (Harness::with_text(mock, text).await, service)
}

fn calls(service: &MockUpstream, point: &str) -> Vec<Value> {
    service
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query == "/callout")
        .map(|r| r.json())
        .filter(|v| v["point"] == point)
        .collect()
}

/// `llm_sidecar_callouts_total` of `point` and `result` in `metrics`.
fn counted(metrics: &str, point: &str, result: &str) -> f64 {
    metric(
        metrics,
        &format!(r#"llm_sidecar_callouts_total{{point="{point}",result="{result}"}}"#),
    )
}

fn chat_requests(mock: &MockUpstream) -> Vec<llm_sidecar::mock::Recorded> {
    mock.requests()
        .into_iter()
        .filter(|r| r.path_and_query == "/v1/chat/completions")
        .collect()
}

#[tokio::test]
async fn before_route_sees_the_request_and_may_rewrite_the_model_and_add_headers() {
    let (h, service) = start(Some("timeout: 1s"), None).await;
    // Continue unchanged: the callout saw the request, the provider got it as sent.
    let r = h.chat(chat_body("Summarise the meeting notes")).await;
    assert_eq!(r.status(), 200);
    let seen = calls(&service, "before_route");
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        (s["model"].as_str(), s["endpoint"].as_str(), s["stream"].as_bool()),
        (Some("auto"), Some("chat"), Some(false))
    );
    assert_eq!(s["body"]["messages"][0]["content"], "Summarise the meeting notes");
    assert!(s["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(s["tenant"], "default");
    let sent = service.last_request().unwrap();
    assert_eq!(
        sent.headers["x-callout-key"], "k1",
        "the callout's own configured header"
    );
    assert_eq!(
        chat_requests(&h.mock).last().unwrap().json()["model"],
        "mock-upstream-name"
    );

    // Rewrite: another model, and headers sent upstream.
    service.set_callout_answer(json!({"action": "continue", "model": "embed-model", "headers": {"x-team": "search"}}));
    let r = h.chat(chat_body("Summarise the meeting notes again")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llm-sidecar-model"], "embed-model");
    let up = chat_requests(&h.mock).pop().unwrap();
    assert_eq!(up.json()["model"], "embed-model");
    assert_eq!(up.headers["x-team"], "search");
    let m = h.metrics().await;
    assert_eq!(counted(&m, "before_route", "continue"), 1.0);
    assert_eq!(counted(&m, "before_route", "rewrite"), 1.0);
    assert!(
        metric(
            &m,
            r#"llm_sidecar_callout_duration_seconds_count{point="before_route"}"#
        ) >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn before_route_may_refuse_with_an_openai_error_and_nothing_goes_upstream() {
    let (h, service) = start(Some("send_body: false"), None).await;
    service.set_callout_answer(json!({"action": "refuse", "status": 451, "message": "Not in this region."}));
    let r = h.chat(chat_body("anything")).await;
    assert_eq!(r.status(), 451);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "refused_by_policy");
    assert_eq!(e["error"]["message"], "Not in this region.");
    assert!(chat_requests(&h.mock).is_empty());
    assert!(
        calls(&service, "before_route")[0].get("body").is_none(),
        "send_body: false"
    );
}

#[tokio::test]
async fn a_failing_callout_is_skipped_when_failing_open() {
    let (h, service) = start(Some("timeout: 200ms"), None).await;
    service.set_standing_fault(Some(Fault::Status {
        status: 500,
        retry_after: None,
    }));
    let r = h.chat(chat_body("hello")).await;
    assert_eq!(r.status(), 200, "on_failure: allow (the default)");
    service.set_standing_fault(Some(Fault::DelayFirstByte(Duration::from_secs(2))));
    let t = Instant::now();
    let r = h.chat(chat_body("hello again")).await;
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    // An answer the sidecar cannot take is a failure too, never half-applied.
    service.set_standing_fault(None);
    service.set_callout_answer(json!({"action": "continue", "headers": {"authorization": "Bearer stolen"}}));
    let r = h.chat(chat_body("hello a third time")).await;
    assert_eq!(r.status(), 200);
    let up = chat_requests(&h.mock).pop().unwrap();
    assert_eq!(up.headers["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    let m = h.metrics().await;
    assert_eq!(counted(&m, "before_route", "error"), 2.0);
    assert_eq!(counted(&m, "before_route", "timeout"), 1.0);
}

#[tokio::test]
async fn failing_closed_refuses_and_the_breaker_stops_asking() {
    let (h, service) = start(
        Some("timeout: 300ms, on_failure: refuse, breaker: { failures: 2, cooldown: 500ms }"),
        None,
    )
    .await;
    service.set_standing_fault(Some(Fault::DelayFirstByte(Duration::from_secs(5))));
    for _ in 0..2 {
        let r = h.chat(chat_body("hello")).await;
        assert_eq!(r.status(), 503);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "callout_unavailable");
    }
    let asked = service.requests().len();
    // Open: refused at once, without asking.
    let t = Instant::now();
    let r = h.chat(chat_body("hello")).await;
    assert_eq!(r.status(), 503);
    assert!(t.elapsed() < Duration::from_millis(250), "{:?}", t.elapsed());
    assert_eq!(service.requests().len(), asked);
    assert!(chat_requests(&h.mock).is_empty());
    // After the cool-down, a healthy service closes it again.
    service.set_standing_fault(None);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.chat(chat_body("hello")).await.status(), 200);
    assert_eq!(h.chat(chat_body("hello there")).await.status(), 200);
    let m = h.metrics().await;
    assert_eq!(counted(&m, "before_route", "circuit_open"), 1.0);
    assert_eq!(counted(&m, "before_route", "timeout"), 2.0);
}

#[tokio::test]
async fn after_answer_is_told_usage_cost_and_status_and_never_holds_a_stream() {
    let (h, service) = start(None, Some("timeout: 3s")).await;
    let r = h.chat(chat_body("How many legs does a spider have?")).await;
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let event = loop {
        if let Some(e) = calls(&service, "after_answer").pop() {
            break e;
        }
        assert!(Instant::now() < deadline, "no after_answer event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(event["status"], 200);
    assert_eq!(event["outcome"], "ok");
    assert_eq!(event["model"], "chat-model");
    assert_eq!(event["provider"], "mock");
    assert_eq!(event["route"], "auto");
    assert_eq!(event["cache"], "bypass");
    assert!(event["input_tokens"].as_u64().unwrap() > 0);
    assert!(event["output_tokens"].as_u64().unwrap() > 0);
    assert!(event["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(
        event.get("body").is_none() && !event.to_string().contains("spider"),
        "no prompt: {event}"
    );

    // A slow service: the stream ends without waiting for it, and refused requests are told too.
    service.set_standing_fault(Some(Fault::DelayFirstByte(Duration::from_secs(2))));
    let t = Instant::now();
    let r = h
        .client
        .post(h.url("/v1/chat/completions"))
        .json(&stream_body("Count to five"))
        .send()
        .await
        .unwrap();
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    let r = h
        .chat(json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(r.status(), 404);
    service.set_standing_fault(None);
    let deadline = Instant::now() + Duration::from_secs(6);
    while calls(&service, "after_answer").len() < 3 {
        assert!(Instant::now() < deadline, "{:?}", calls(&service, "after_answer"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = calls(&service, "after_answer");
    assert!(all.iter().any(|e| e["stream"] == true && e["status"] == 200));
    assert!(all.iter().any(|e| e["status"] == 404 && e["outcome"] == "rejected"));
}

#[tokio::test]
async fn after_answer_drops_what_it_cannot_send_in_time_and_counts_it() {
    let (h, service) = start(None, Some("timeout: 2s, max_in_flight: 1")).await;
    service.set_standing_fault(Some(Fault::DelayFirstByte(Duration::from_millis(800))));
    for i in 0..4 {
        assert_eq!(h.chat(chat_body(&format!("question {i}"))).await.status(), 200);
    }
    let dropped = h
        .wait_for_metric(r#"llm_sidecar_callouts_total{point="after_answer",result="dropped"}"#)
        .await;
    assert!(dropped >= 2.0, "{dropped}");
}

#[tokio::test]
async fn bad_callout_configs_name_the_key_to_fix() {
    let mock = MockUpstream::start().await.unwrap();
    for (callouts, key, says) in [
        (
            "before_route: { url: ftp://x }",
            "callouts.before_route.url",
            "not an http(s) URL",
        ),
        (
            "before_route: { url: http://x, on_failure: maybe }",
            "callouts.before_route.on_failure",
            "allow",
        ),
        (
            "after_answer: { url: http://x, on_failure: refuse }",
            "callouts.after_answer.on_failure",
            "only before_route",
        ),
        (
            "before_route: { url: http://x, timeout: 0s }",
            "callouts.before_route.timeout",
            "greater than zero",
        ),
        (
            "before_route: { url: http://x, auth: { key_env: NOT_SET } }",
            "callouts.before_route.auth",
            "NOT_SET",
        ),
        (
            "before_route: { url: http://x, breaker: { failures: 0 } }",
            "callouts.before_route.breaker.failures",
            "at least 1",
        ),
        ("during: { url: http://x }", "callouts", "during"),
    ] {
        let text = config(&mock.base_url(), &format!("callouts:\n  {callouts}\n"));
        let err = refused(text).await;
        assert!(err.contains(key) && err.contains(says), "{callouts}: {err}");
    }
}
