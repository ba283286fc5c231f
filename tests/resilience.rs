// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! Routing, resilience and scheduling end to end: a sidecar in front of mock providers that
//! misbehave on demand.

mod common;

use std::time::{Duration, Instant};

use common::*;
use llm_sidecar::mock::{Fault, MockUpstream};
use serde_json::{Value, json};

/// Two providers (`primary` → model `a`, `backup` → model `b`) behind route `auto`, plus `extra`.
fn two(primary: &MockUpstream, backup: &MockUpstream, extra: &str) -> String {
    format!(
        r#"
providers:
  primary: {{ base_url: "{}", timeouts: {{ connect: 300ms, first_byte: 400ms, idle: 1s, total: 10s }} }}
  backup: {{ base_url: "{}" }}
models:
  a: {{ provider: primary }}
  b: {{ provider: backup }}
routes:
  - {{ name: auto, models: [auto], targets: [{{ model: a }}, {{ model: b }}] }}
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

fn model(r: &reqwest::Response) -> String {
    r.headers()["x-llm-sidecar-model"].to_str().unwrap().to_owned()
}

fn attempts(r: &reqwest::Response) -> String {
    r.headers()["x-llm-sidecar-attempts"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_breaker_opens_skips_the_provider_then_half_opens_and_closes() {
    let (h, backup) =
        pair("resilience: { retries: { max_attempts: 1 }, breaker: { consecutive_failures: 2, open_for: 500ms } }")
            .await;
    for _ in 0..2 {
        h.mock.push_fault(Fault::Status {
            status: 500,
            retry_after: None,
        });
        let r = h.chat(chat_body("hi")).await;
        assert_eq!(
            (r.status().as_u16(), model(&r), attempts(&r)),
            (200, "b".into(), "2".into())
        );
    }
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, r#"llm_sidecar_circuit_state{provider="primary",model="a"}"#),
        1.0
    );
    // Open: the primary is not even tried.
    let r = h.chat(chat_body("hi")).await;
    assert_eq!((model(&r), attempts(&r)), ("b".into(), "1".into()));
    assert_eq!(h.mock.requests().len(), 2);
    let routing = h.admin_get("/admin/routing").await;
    let a = Harness::find(&routing["circuits"], "model", "a");
    assert_eq!(a["state"], "open");
    // After open_for, one probe goes to the primary; it succeeds and the circuit closes.
    tokio::time::sleep(Duration::from_millis(550)).await;
    let r = h.chat(chat_body("hi")).await;
    assert_eq!(model(&r), "a");
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, r#"llm_sidecar_circuit_state{provider="primary",model="a"}"#),
        0.0
    );
    for state in ["open", "half_open", "closed"] {
        let series =
            format!(r#"llm_sidecar_circuit_transitions_total{{provider="primary",model="a",state="{state}"}}"#);
        assert_eq!(metric(&m, &series), 1.0, "{state}");
    }
    assert_eq!(backup.requests().len(), 3);
}

#[tokio::test]
async fn when_every_candidate_fails_one_error_names_each_attempt() {
    let (h, backup) = pair("resilience: { retries: { max_attempts: 1 } }").await;
    h.mock.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    backup.push_fault(Fault::Reset);
    let r = h.chat(chat_body("hi")).await;
    assert_eq!(r.status(), 502);
    assert_eq!(attempts(&r), "2");
    let e: Value = r.json().await.unwrap();
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with(
            "All 2 attempts failed: a (provider primary answered HTTP 503: mock upstream failure 503); b ("
        ),
        "{msg}"
    );
    assert_eq!(e["error"]["type"], "upstream_error");
}

#[tokio::test]
async fn a_hanging_provider_fails_over_at_the_first_byte_timeout() {
    let (h, _backup) = pair("").await;
    h.mock.push_fault(Fault::DelayFirstByte(Duration::from_secs(30)));
    let started = Instant::now();
    let r = h.chat(stream_body("hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(model(&r), "b");
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    // 400 ms first-byte timeout, no retry of a timeout, then the backup.
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_spent_retry_budget_fails_over_instead_of_retrying() {
    let (h, _backup) =
        pair("resilience: { retries: { max_attempts: 3 }, retry_budget: { ratio: 0, min_per_second: 0 } }").await;
    h.mock.push_fault(Fault::Status {
        status: 500,
        retry_after: None,
    });
    let r = h.chat(chat_body("hi")).await;
    assert_eq!((model(&r), attempts(&r)), ("b".into(), "2".into()));
    let m = h.metrics().await;
    assert_eq!(metric(&m, "llm_sidecar_retry_budget_exhausted_total"), 1.0);
}

/// One provider with one connection slot, and a request that holds it for `hold`.
async fn one_slot(extra: &str, hold: Duration) -> (Harness, tokio::task::JoinHandle<reqwest::Response>) {
    let mock = MockUpstream::start().await.unwrap();
    let text = config(&mock.base_url(), extra).replace(
        "timeouts: { connect: 500ms",
        "max_connections: 1\n    timeouts: { connect: 500ms",
    );
    let h = Harness::with_text(mock, text).await;
    h.mock.push_fault(Fault::DelayFirstByte(hold));
    let (client, url) = (h.client.clone(), h.url("/v1/chat/completions"));
    let holder = tokio::spawn(async move { client.post(url).json(&chat_body("holder")).send().await.unwrap() });
    // Let the holder take the slot.
    for _ in 0..100 {
        if !h.mock.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (h, holder)
}

#[tokio::test]
async fn higher_priorities_are_served_first_and_batch_still_gets_through() {
    let (h, holder) = one_slot("", Duration::from_millis(400)).await;
    let mut tasks = Vec::new();
    // Batch requests queue first, then realtime ones.
    for (i, priority) in ["batch", "batch", "batch", "realtime", "realtime", "realtime"]
        .iter()
        .enumerate()
    {
        let (client, url) = (h.client.clone(), h.url("/v1/chat/completions"));
        let body = chat_body(&format!("{priority} {i}"));
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header("x-llm-sidecar-priority", *priority)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, r#"llm_sidecar_queue_depth{provider="mock",priority="batch"}"#),
        3.0
    );
    assert_eq!(holder.await.unwrap().status(), 200);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let order: Vec<String> = h.mock.requests()[1..]
        .iter()
        .map(|r| r.json()["messages"][0]["content"].as_str().unwrap().to_owned())
        .collect();
    assert!(order[..3].iter().all(|s| s.starts_with("realtime")), "{order:?}");
    assert!(order[3..].iter().all(|s| s.starts_with("batch")), "{order:?}");
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, r#"llm_sidecar_queue_depth{provider="mock",priority="batch"}"#),
        0.0
    );
    assert!(metric(&m, r#"llm_sidecar_queue_wait_seconds_count{priority="batch"}"#) >= 3.0);
    // An unknown class is the app's mistake, said plainly.
    let r = h
        .chat_with(chat_body("x"), &[("x-llm-sidecar-priority", "urgent")])
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("realtime, interactive, batch")
    );
}

#[tokio::test]
async fn a_queue_timeout_is_a_503_with_retry_after() {
    let (h, holder) = one_slot("scheduling: { queue_timeout: 200ms }", Duration::from_millis(800)).await;
    let r = h.chat(chat_body("waits")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "queue_timeout");
    assert_eq!(holder.await.unwrap().status(), 200);
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_queue_rejections_total{provider="mock",priority="interactive",reason="timeout"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_client_that_disconnects_leaves_the_queue_and_is_never_sent() {
    let (h, holder) = one_slot("", Duration::from_millis(800)).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let gone = impatient
        .post(h.url("/v1/chat/completions"))
        .json(&chat_body("impatient"))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    let depth = r#"llm_sidecar_queue_depth{provider="mock",priority="interactive"}"#;
    let mut left = false;
    for _ in 0..50 {
        if metric(&h.metrics().await, depth) == 0.0 {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(left, "the waiter left the queue");
    assert_eq!(holder.await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        h.mock.requests().len(),
        1,
        "the abandoned request never reached the provider"
    );
}

#[tokio::test]
async fn a_failing_canary_is_reverted_and_traffic_returns_to_stable() {
    let mock = MockUpstream::start().await.unwrap();
    // The canary's provider refuses connections.
    let text = format!(
        r#"
providers:
  stable: {{ base_url: "{}" }}
  broken: {{ base_url: "http://127.0.0.1:1/v1", timeouts: {{ connect: 200ms }} }}
models:
  good: {{ provider: stable }}
  new: {{ provider: broken }}
routes:
  - name: auto
    models: [auto]
    strategy: canary
    canary: {{ model: new, percent: 50, min_requests: 4, max_error_rate: 0.25 }}
    targets: [{{ model: good }}]
resilience: {{ retries: {{ max_attempts: 1 }}, breaker: {{ enabled: false }} }}
"#,
        mock.base_url()
    );
    let h = Harness::with_text(mock, text).await;
    for _ in 0..40 {
        let r = h.chat(chat_body("hi")).await;
        assert_eq!(
            (r.status().as_u16(), model(&r)),
            (200, "good".into()),
            "no request lost to the canary"
        );
    }
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, r#"llm_sidecar_canary_reverted{route="auto",model="new"}"#),
        1.0
    );
    let canary_attempts = metric(
        &m,
        r#"llm_sidecar_upstream_errors_total{provider="broken",kind="connect"}"#,
    );
    assert_eq!(
        canary_attempts, 4.0,
        "reverted after min_requests failures, never tried again"
    );
    let routing = h.admin_get("/admin/routing").await;
    assert_eq!(
        routing["routes"][0]["canary"],
        json!({"model": "new", "reverted": true})
    );
}

#[tokio::test]
async fn routes_match_on_content_and_can_be_forced_by_header() {
    let mock = MockUpstream::start().await.unwrap();
    let text = format!(
        r#"
providers: {{ p: {{ base_url: "{}" }} }}
models:
  cheap: {{ provider: p, pricing: {{ input: 0.1, output: 0.4 }} }}
  pricey: {{ provider: p, pricing: {{ input: 5, output: 15 }}, capabilities: [tools, json] }}
  light: {{ provider: p }}
  strong: {{ provider: p }}
  basic: {{ provider: p, capabilities: [json] }}
routes:
  - {{ name: sql, models: [auto], match: {{ regex: "(?i)\\bselect\\b" }}, targets: [{{ model: pricey }}] }}
  - {{ name: tiered, models: [auto], match: {{ keywords: [prove, explain] }}, strategy: complexity, targets: [{{ model: light, tier: light }}, {{ model: strong, tier: strong }}] }}
  - {{ name: cost, models: [auto], strategy: cheapest, targets: [{{ model: pricey }}, {{ model: cheap }}] }}
routing: {{ allow_route_header: true }}
"#,
        mock.base_url()
    );
    let h = Harness::with_text(mock, text).await;
    let route = |r: &reqwest::Response| r.headers()["x-llm-sidecar-route"].to_str().unwrap().to_owned();
    let r = h.chat(chat_body("SELECT * FROM t")).await;
    assert_eq!((route(&r), model(&r)), ("sql".into(), "pricey".into()));
    let r = h.chat(chat_body("explain what a cat is")).await;
    assert_eq!((route(&r), model(&r)), ("tiered".into(), "light".into()));
    let r = h
        .chat(chat_body(
            "Prove step by step that the integral of x^2 from 0 to 1 is 1/3",
        ))
        .await;
    assert_eq!((route(&r), model(&r)), ("tiered".into(), "strong".into()));
    let r = h.chat(chat_body("hello")).await;
    assert_eq!((route(&r), model(&r)), ("cost".into(), "cheap".into()));
    let r = h.chat_with(chat_body("hello"), &[("x-llm-sidecar-route", "sql")]).await;
    assert_eq!((route(&r), model(&r)), ("sql".into(), "pricey".into()));
    // The upstream got the catalogue's name, not `auto`.
    assert_eq!(h.mock.last_request().unwrap().json()["model"], "pricey");
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_route_decisions_total{route="cost",strategy="cheapest",model="cheap"}"#
        ),
        1.0
    );
    // A request needing a capability no target declares is refused with the reason.
    let r = h
        .chat_with(
            json!({"model": "basic", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]}),
            &[],
        )
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "no_eligible_model");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("it needs tools"),
        "{e}"
    );
    assert_eq!(
        h.chat(json!({"model": "basic", "messages": [{"role": "user", "content": "hi"}]}))
            .await
            .status(),
        200
    );
}

/// An Anthropic provider (the mock's `/v1/messages`) behind route `claude`.
async fn anthropic() -> Harness {
    let mock = MockUpstream::start().await.unwrap();
    let text = format!(
        r#"
providers:
  anthropic:
    kind: anthropic
    base_url: "{}"
    auth: {{ type: header, header: x-api-key, key_env: UPSTREAM_KEY }}
models:
  claude: {{ provider: anthropic, upstream_model: claude-sonnet-4-5, pricing: {{ input: 3, output: 15 }} }}
"#,
        mock.base_url()
    );
    Harness::with_text(mock, text).await
}

#[tokio::test]
async fn anthropic_providers_speak_openai_to_the_app() {
    let h = anthropic().await;
    let body = json!({
        "model": "claude",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    });
    let r = h.chat(body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Mock answer to: weather in Paris?"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let sent = h.mock.last_request().unwrap();
    assert_eq!(sent.path_and_query, "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], UPSTREAM_KEY);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    let sent = sent.json();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["system"], json!([{"type": "text", "text": "be brief"}]));
    assert_eq!(sent["max_tokens"], 4096);
    assert_eq!(sent["tools"][0]["name"], "get_weather");

    // Streaming, with usage asked for: OpenAI chunks, a usage chunk, [DONE].
    let mut body = stream_body("tell me");
    body["model"] = json!("claude");
    body["stream_options"] = json!({"include_usage": true});
    let r = h.chat(body).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let (chunks, text) = stream_chunks(&sse_events(r).await);
    assert_eq!(text, "Mock answer to: tell me");
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert!(chunks.last().unwrap()["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Without include_usage the app gets no usage chunk, and the sidecar still counts tokens.
    let mut body = stream_body("again");
    body["model"] = json!("claude");
    let events = sse_events(h.chat(body).await).await;
    assert!(events.iter().all(|e| !e.contains("\"usage\"")), "{events:?}");
    let m = h.wait_for_metric(r#"llm_sidecar_tokens_total{gen_ai_token_type="output",gen_ai_request_model="claude",gen_ai_provider_name="anthropic"}"#).await;
    assert!(m > 0.0);

    // Endpoints Anthropic does not have fail clearly.
    let r = h
        .client
        .post(h.url("/v1/embeddings"))
        .json(&json!({"model": "claude", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chat completions only"),
        "{e}"
    );
}

#[tokio::test]
async fn semantic_routes_pick_the_nearest_examples_with_the_real_embedder() {
    let mock = MockUpstream::start().await.unwrap();
    let text = format!(
        r#"
providers: {{ p: {{ base_url: "{}" }} }}
models:
  coder: {{ provider: p }}
  chef: {{ provider: p }}
  general: {{ provider: p }}
routes:
  - name: topics
    models: [auto]
    strategy: semantic
    semantic_threshold: 0.4
    targets:
      - {{ model: coder, examples: ["write a function to sort a list", "fix the bug in my javascript code", "how do I reverse a string in python"] }}
      - {{ model: chef, examples: ["give me a recipe for pancakes", "how long should I boil an egg"] }}
  - {{ name: rest, models: [auto], targets: [{{ model: general }}] }}
cache:
  enabled: false
  semantic: {{ assets_dir: "{}" }}
"#,
        mock.base_url(),
        assets_dir().display()
    );
    let h = Harness::with_text(mock, text).await;
    let route = |r: &reqwest::Response| r.headers()["x-llm-sidecar-route"].to_str().unwrap().to_owned();
    let r = h
        .chat(chat_body("write a javascript function that sorts an array"))
        .await;
    assert_eq!((route(&r), model(&r)), ("topics".into(), "coder".into()));
    let r = h.chat(chat_body("what is a good recipe for banana bread?")).await;
    assert_eq!((route(&r), model(&r)), ("topics".into(), "chef".into()));
    // Nothing close: the next route decides.
    let r = h.chat(chat_body("who won the football world cup in 1998?")).await;
    assert_eq!((route(&r), model(&r)), ("rest".into(), "general".into()));
}

#[tokio::test]
async fn a_failing_health_check_opens_the_circuit_before_any_app_request() {
    let primary = MockUpstream::start().await.unwrap();
    let backup = MockUpstream::start().await.unwrap();
    let text = two(&primary, &backup, "").replace(
        "idle: 1s, total: 10s }",
        "idle: 1s, total: 10s }, health_check: { path: /health, interval: 100ms, timeout: 200ms }",
    );
    // The probe's GET /v1/health gets a 503.
    primary.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
    });
    let h = Harness::with_text(primary, text).await;
    let open = h
        .wait_for_metric(r#"llm_sidecar_circuit_state{provider="primary",model="a"}"#)
        .await;
    assert_eq!(open, 1.0);
    let probes = h.mock.requests();
    assert!(
        probes.iter().all(|r| r.path_and_query == "/v1/health"),
        "only probes reached it"
    );
    let r = h.chat(chat_body("hi")).await;
    assert_eq!((model(&r), attempts(&r)), ("b".into(), "1".into()));
    let m = h.metrics().await;
    assert!(
        metric(
            &m,
            r#"llm_sidecar_health_checks_total{provider="primary",kind="failed"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_client_that_disconnects_mid_request_cancels_the_upstream_request() {
    let (h, _backup) = pair("").await;
    h.mock.push_fault(Fault::DelayFirstByte(Duration::from_secs(3)));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    assert!(
        impatient
            .post(h.url("/v1/chat/completions"))
            .json(&chat_body("slow"))
            .send()
            .await
            .is_err()
    );
    // The provider slot is released at once (the upstream request was dropped), long before
    // the provider would have answered.
    let mut released = false;
    for _ in 0..50 {
        let routing = h.admin_get("/admin/routing").await;
        let p = Harness::find(&routing["providers"], "name", "primary");
        if p["in_use"] == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(released, "the slot was released");
    let m = h.metrics().await;
    assert_eq!(metric(&m, "llm_sidecar_inflight_requests"), 0.0);
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_requests_total{endpoint="chat",route="auto",model="a",status="499"}"#
        ),
        1.0
    );
}
