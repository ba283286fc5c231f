// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The request path end to end: OpenAI endpoints, streaming passthrough, errors, failover,
//! passthrough of other /v1 paths, tenants, TLS to the provider.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use llm_sidecar::mock::{Fault, MockUpstream};
use serde_json::{Value, json};

#[tokio::test]
async fn chat_json_is_proxied_with_model_rewritten_and_credentials_replaced() {
    let h = Harness::start().await;
    let resp = h
        .client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth("sk-app-key-must-not-leak")
        .header("x-request-id", "req-123")
        .json(&json!({"model": "auto", "messages": [{"role": "user", "content": "hello world"}], "temperature": 0.2, "future_field": {"a": [1]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    assert_eq!(resp.headers()["x-llm-sidecar-route"], "auto");
    assert_eq!(resp.headers()["x-llm-sidecar-model"], "chat-model");
    assert_eq!(resp.headers()["x-llm-sidecar-attempts"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Mock answer to: hello world");
    assert_eq!(body["usage"]["prompt_tokens"], 3);

    let seen = h.mock.last_request().unwrap();
    assert_eq!(seen.path_and_query, "/v1/chat/completions");
    assert_eq!(seen.headers["authorization"], format!("Bearer {UPSTREAM_KEY}").as_str());
    assert_eq!(seen.headers["x-request-id"], "req-123");
    let sent = seen.json();
    assert_eq!(sent["model"], "mock-upstream-name");
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(
        sent["future_field"],
        json!({"a": [1]}),
        "unknown fields are forwarded untouched"
    );

    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_requests_total{endpoint="chat",route="auto",model="chat-model",status="200"}"#
        ),
        1.0
    );
    // 3 prompt tokens at $1/M + 5 completion tokens at $2/M.
    let cost = metric(&m, r#"llm_sidecar_cost_usd_total{tenant="default",model="chat-model"}"#);
    assert!((cost - 13e-6).abs() < 1e-12, "cost {cost}");
    assert!(m.contains(r#"gen_ai_client_token_usage_sum{gen_ai_token_type="output",gen_ai_request_model="chat-model",gen_ai_provider_name="mock"} 5"#), "{m}");
}

#[tokio::test]
async fn completions_embeddings_and_models_work() {
    let h = Harness::start().await;
    let r: Value = h
        .client
        .post(h.url("/v1/completions"))
        .json(&json!({"model": "chat-model", "prompt": "say hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["choices"][0]["text"], "Mock completion of: say hi");
    let r: Value = h
        .client
        .post(h.url("/v1/embeddings"))
        .json(&json!({"model": "embed-model", "input": ["a b", "c"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
    assert_eq!(r["usage"]["prompt_tokens"], 3);
    let r: Value = h
        .client
        .get(h.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["auto", "chat-model", "embed-model"]);
    let r = h.client.get(h.url("/v1/models/auto")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = h.client.get(h.url("/v1/models/gpt-9")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn stream_chunks_reach_the_app_while_the_upstream_is_still_sending() {
    let h = Harness::start().await;
    // The upstream sends two chunks and then goes silent with the connection open: if the
    // sidecar buffered anything, the app would see nothing at all.
    h.mock.push_fault(Fault::StallAfterChunks(2));
    let body = stream_body("one two three");
    let resp = h.chat(body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"Mock\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .expect("a chunk arrives while the upstream is still streaming")
            .expect("stream open")
            .expect("chunk ok");
        got.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("data: {"));
}

#[tokio::test]
async fn stream_usage_is_accounted_and_the_extra_chunk_hidden_from_the_app() {
    let h = Harness::start().await;
    let mut body = stream_body("count my tokens");
    let events = sse_events(h.chat(body.clone()).await).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let parsed: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        parsed.iter().all(|c| !c["choices"].as_array().unwrap().is_empty()),
        "no usage-only chunk: {events:?}"
    );
    let text: String = parsed
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Mock answer to: count my tokens");
    // The sidecar asked the upstream for usage...
    assert_eq!(
        h.mock.last_request().unwrap().json()["stream_options"]["include_usage"],
        true
    );
    // ...and accounted it.
    let m = h.metrics().await;
    assert!(m.contains(r#"llm_sidecar_tokens_total{gen_ai_token_type="output",gen_ai_request_model="chat-model",gen_ai_provider_name="mock"} 6"#), "{m}");

    // When the app asks for usage itself, it gets the chunk.
    body["stream_options"] = json!({"include_usage": true});
    let events = sse_events(h.chat(body).await).await;
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 6);
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_errors() {
    let h = Harness::start().await;
    let post = |body: Vec<u8>| h.client.post(h.url("/v1/chat/completions")).body(body).send();

    let r = post(b"{\"model\": \"auto\", \"messages\": [".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "invalid_json");
    assert!(e["error"]["message"].as_str().unwrap().contains("line 1 column"), "{e}");

    let r = post(vec![b'x'; 70_000]).await.unwrap();
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "request_too_large");

    let r = post(b"{\"model\": \"auto\", \"messages\": \"\xff\xfe\"}".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = post(br#"{"model": 42}"#.to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "model");

    let r = post(br#"{"model": "auto", "stream": "yes"}"#.to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "stream");

    let r = post(br#"[1, 2]"#.to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);

    let r = post(br#"{"messages": []}"#.to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "model");

    let r = post(br#"{"model": "gpt-9"}"#.to_vec()).await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "model_not_found");
    assert!(e["error"]["message"].as_str().unwrap().contains("auto, chat-model"));

    let r = h.client.get(h.url("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = h.client.get(h.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "unknown_url");

    // None of that reached the provider.
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn upstream_errors_keep_their_status_and_message() {
    let h = Harness::start().await;
    // A 429 whose retry-after is longer than resilience.retries.max_retry_after (5 s) is not
    // waited for: with no other candidate, the app gets the 429, the wait and the message.
    h.mock.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(7),
    });
    let r = h.chat(chat_body("hi")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mock upstream failure 429"),
        "{e}"
    );
    assert_eq!(e["error"]["code"], "upstream_rate_limited");
    // A client error is the request's problem: relayed as the provider sent it, never retried.
    h.mock.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });
    let before = h.mock.requests().len();
    let r = h.chat(chat_body("hi")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-llm-sidecar-attempts"], "1");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["message"], "mock upstream failure 400");
    assert_eq!(h.mock.requests().len(), before + 1);
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_upstream_errors_total{provider="mock",kind="status_429"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn transient_failures_are_retried_on_the_same_candidate() {
    let h = Harness::start().await;
    for fault in [
        Fault::Reset,
        Fault::CutAfterChunks(1),
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        Fault::Status {
            status: 429,
            retry_after: Some(1),
        },
    ] {
        h.mock.push_fault(fault.clone());
        let started = std::time::Instant::now();
        let r = h.chat(chat_body("hi")).await;
        assert_eq!(r.status(), 200, "{fault:?}");
        assert_eq!(r.headers()["x-llm-sidecar-attempts"], "2", "{fault:?}");
        if let Fault::Status {
            retry_after: Some(s), ..
        } = fault
        {
            assert!(started.elapsed() >= Duration::from_secs(s), "retry-after honoured");
        }
    }
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_retries_total{provider="mock",model="chat-model",reason="status_429"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn unreachable_and_slow_upstreams_become_502_and_504() {
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mock = MockUpstream::start().await.unwrap();
    let text = config(&mock.base_url(), "").replace(&mock.base_url(), &format!("http://{closed}/v1"));
    let h = Harness::with_text(mock, text).await;
    let r = h.chat(chat_body("hi")).await;
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_unreachable");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("could not connect to provider mock"), "{msg}");
    assert!(!msg.contains(UPSTREAM_KEY));

    let h = Harness::start().await;
    h.mock.push_fault(Fault::DelayFirstByte(Duration::from_secs(3)));
    let r = h.chat(chat_body("hi")).await;
    assert_eq!(r.status(), 504);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event_not_a_hang() {
    let h = Harness::start().await;
    let body = stream_body("one two three four");

    h.mock.push_fault(Fault::CutAfterChunks(3));
    let events = tokio::time::timeout(Duration::from_secs(10), sse_events(h.chat(body.clone()).await))
        .await
        .unwrap();
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "reset", "{events:?}");
    assert_eq!(events.len(), 4, "{events:?}");

    // An upstream that goes silent mid-stream is cut at the idle timeout (2 s here).
    h.mock.push_fault(Fault::StallAfterChunks(2));
    let events = tokio::time::timeout(Duration::from_secs(10), sse_events(h.chat(body).await))
        .await
        .unwrap();
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "timeout_idle");
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_upstream_errors_total{provider="mock",kind="timeout_idle"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_json_body_broken_mid_way_is_never_delivered_as_complete() {
    // No retries, so each fault reaches the app.
    let mock = MockUpstream::start().await.unwrap();
    let text = config(&mock.base_url(), "resilience: { retries: { max_attempts: 1 } }");
    let h = Harness::with_text(mock, text).await;
    // Reset before any response.
    h.mock.push_fault(Fault::Reset);
    let r = h.chat(chat_body("hi")).await;
    assert_eq!(r.status(), 502);
    // Half a JSON body, then a reset: the app gets a clean 502, not half a document.
    h.mock.push_fault(Fault::CutAfterChunks(1));
    let r = h.chat(chat_body("hi")).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "upstream_reset");
    // Half a JSON body, then silence: 504 at the idle timeout.
    h.mock.push_fault(Fault::StallAfterChunks(1));
    let r = h.chat(chat_body("hi")).await;
    assert_eq!(r.status(), 504);
    // And the next request is fine.
    assert_eq!(h.chat(chat_body("hi")).await.status(), 200);
}

#[tokio::test]
async fn ordered_routes_fail_over_before_the_first_byte() {
    let primary = MockUpstream::start().await.unwrap();
    let backup = MockUpstream::start().await.unwrap();
    let text = format!(
        r#"
providers:
  primary: {{ base_url: "{}" }}
  backup: {{ base_url: "{}" }}
models:
  a: {{ provider: primary }}
  b: {{ provider: backup }}
routes:
  - {{ name: chat, models: [auto], targets: [{{ model: a }}, {{ model: b }}] }}
"#,
        primary.base_url(),
        backup.base_url()
    );
    // The primary fails its attempt and its one retry; the backup answers.
    for _ in 0..2 {
        primary.push_fault(Fault::Status {
            status: 503,
            retry_after: None,
        });
    }
    let h = Harness::with_text(primary, text).await;
    let r = h.chat(chat_body("hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llm-sidecar-model"], "b");
    assert_eq!(r.headers()["x-llm-sidecar-attempts"], "3");
    assert_eq!(backup.requests().len(), 1);
    assert_eq!(h.mock.requests().len(), 2);
}

#[tokio::test]
async fn other_v1_paths_pass_through_to_the_default_route() {
    let h = Harness::start().await;
    let r: Value = h
        .client
        .post(h.url("/v1/batches?trace=1"))
        .bearer_auth("sk-app")
        .body(r#"{"model":"whatever","input":"x"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "mock.echo");
    assert_eq!(r["path"], "/v1/batches");
    assert_eq!(r["query"], "trace=1");
    let seen = h.mock.last_request().unwrap();
    assert_eq!(
        seen.body.as_ref(),
        br#"{"model":"whatever","input":"x"}"#,
        "body unchanged"
    );
    assert_eq!(seen.headers["authorization"], format!("Bearer {UPSTREAM_KEY}").as_str());
}

#[tokio::test]
async fn tenants_are_identified_by_key_hash_and_unknown_keys_rejected() {
    let mock = MockUpstream::start().await.unwrap();
    let real_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"team-a-key"));
    let extra =
        format!("tenants:\n  on_unknown: reject\n  list:\n    team-a: {{ api_key_sha256: [\"{real_hash}\"] }}\n");
    let text = config(&mock.base_url(), &extra);
    let h = Harness::with_text(mock, text).await;
    let r = h.chat_with(chat_body("x"), &[("authorization", "Bearer wrong")]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_api_key");
    let r = h
        .chat_with(chat_body("x"), &[("authorization", "Bearer team-a-key")])
        .await;
    assert_eq!(r.status(), 200);
    let m = h.metrics().await;
    assert!(
        m.contains(r#"llm_sidecar_cost_usd_total{tenant="team-a",model="chat-model"}"#),
        "{m}"
    );
    assert_eq!(h.mock.requests().len(), 1);
}

#[tokio::test]
async fn https_providers_are_verified_against_the_extra_ca_bundle() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let mock = MockUpstream::start_tls(&cert.cert.pem(), &cert.signing_key.serialize_pem())
        .await
        .unwrap();
    let url = format!("https://localhost:{}/v1", mock.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();

    // Without the CA the certificate is not trusted: 502, saying why.
    let text = config(&url, "");
    let h = Harness::with_text(mock, text.clone()).await;
    let r = h.chat(chat_body("secure")).await;
    assert_eq!(r.status(), 502);
    let msg = r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");

    let with_ca = text.replace("    auth:", &format!("    ca_file: {}\n    auth:", ca.display()));
    let h = Harness::with_text(h.mock, with_ca).await;
    let r = h.chat(chat_body("secure")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["choices"][0]["message"]["content"],
        "Mock answer to: secure"
    );
}

#[tokio::test]
async fn admin_endpoints_answer_and_never_show_secrets() {
    let h = Harness::start().await;
    assert_eq!(h.client.get(h.admin("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(h.client.get(h.admin("/readyz")).send().await.unwrap().status(), 200);
    let cfg = h
        .client
        .get(h.admin("/admin/config"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(cfg.contains("mock-upstream-name"));
    assert!(!cfg.contains(UPSTREAM_KEY));
    let m = h.metrics().await;
    assert!(m.contains("llm_sidecar_inflight_requests 0"));
    assert!(m.contains("llm_sidecar_config_generation 1"));
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_is_recorded_and_frees_the_upstream() {
    let h = Harness::start().await;
    h.mock.set_chunk_delay(Duration::from_millis(200));
    let body = stream_body("a b c d e f g h");
    let resp = h.chat(body).await;
    let mut stream = resp.bytes_stream();
    let _ = stream.next().await;
    drop(stream);
    let mut gone = 0.0;
    for _ in 0..100 {
        let m = h.metrics().await;
        gone = metric(
            &m,
            r#"llm_sidecar_requests_total{endpoint="chat",route="auto",model="chat-model",status="200"}"#,
        );
        if gone == 1.0 && m.contains("llm_sidecar_inflight_requests 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gone, 1.0);
}

/// Every metric the Grafana dashboard and the alert rules query is one this sidecar registers
/// (a renamed metric would silently empty a panel or disarm an alert), and the main ones are
/// really exported once there is traffic.
#[tokio::test]
async fn the_dashboard_and_alerts_only_use_exported_metrics() {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let telemetry = std::fs::read_to_string(crate_dir.join("src/telemetry/metrics.rs")).unwrap();
    let literal = regex::Regex::new(r#""((?:llm_sidecar|gen_ai)_[a-z0-9_]+)""#).unwrap();
    let registered: std::collections::BTreeSet<&str> = literal
        .captures_iter(&telemetry)
        .filter_map(|c| c.get(1))
        .map(|m| m.as_str())
        .collect();
    let root = crate_dir.join("charts/llm-sidecar/files");
    let mut used = std::collections::BTreeSet::new();
    let name = regex::Regex::new(r"\b(?:llm_sidecar|gen_ai)_[a-z0-9_]+").unwrap();
    for f in ["grafana-dashboard.json", "alerts.yaml"] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        for m in name.find_iter(&text) {
            let n = m.as_str();
            // GenAI semantic-convention label names share the prefix.
            if [
                "gen_ai_token_type",
                "gen_ai_operation_name",
                "gen_ai_request_model",
                "gen_ai_provider_name",
            ]
            .contains(&n)
            {
                continue;
            }
            let base = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            used.insert(base.to_owned());
        }
    }
    assert!(used.len() > 10, "{used:?}");
    for n in &used {
        // Units are appended to the registered name (`_seconds`, `_bytes`).
        let bare = n
            .strip_suffix("_seconds")
            .or_else(|| n.strip_suffix("_bytes"))
            .unwrap_or(n);
        assert!(
            registered.contains(n.as_str()) || registered.contains(bare),
            "{n} is queried by the dashboard or alerts but not registered"
        );
    }
    let h = Harness::start().await;
    assert_eq!(h.chat(chat_body("hi")).await.status(), 200);
    let _ = sse_events(h.chat(stream_body("hi")).await).await;
    let exported = h.metrics().await;
    for n in [
        "llm_sidecar_requests",
        "gen_ai_client_operation_duration_seconds",
        "gen_ai_server_time_to_first_token_seconds",
        "llm_sidecar_cost_usd",
        "llm_sidecar_tokens",
    ] {
        assert!(exported.contains(&format!("# TYPE {n} ")), "{n} not exported");
    }
}

/// A provider whose key is missing (one namespace holds only some of the shared config's
/// keys) does not keep the sidecar, or the app behind its readiness, from starting: the other
/// providers serve, the unusable one is named in /readyz, /admin/config, a metric and a clear
/// 503 for the requests that need it.
#[tokio::test]
async fn a_provider_without_its_key_is_reported_and_the_rest_serves() {
    let mock = MockUpstream::start().await.unwrap();
    let extra = r#"
  keyless:
    base_url: http://127.0.0.1:9/v1
    auth: { key_env: KEY_OF_ANOTHER_NAMESPACE }
"#;
    let text = config(&mock.base_url(), "")
        .replacen("providers:\n", &format!("providers:{extra}"), 1)
        .replacen(
            "routes:\n",
            "  other-model:\n    provider: keyless\nroutes:\n  - name: other\n    models: [other]\n    targets: [{ model: other-model }]\n",
            1,
        );
    let h = Harness::with_text(mock, text).await;
    let ready = h.client.get(h.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body = ready.text().await.unwrap();
    assert!(body.contains("provider keyless unusable"), "{body}");
    assert!(body.contains("KEY_OF_ANOTHER_NAMESPACE"), "{body}");

    assert_eq!(h.chat(chat_body("hi")).await.status(), 200);
    let mut other = chat_body("hi");
    other["model"] = json!("other");
    let r = h.chat(other).await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "provider_unavailable");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("keyless") && msg.contains("KEY_OF_ANOTHER_NAMESPACE"),
        "{msg}"
    );
    // Nothing was sent without a key.
    assert_eq!(h.mock.requests().len(), 1);

    let m = h.metrics().await;
    assert_eq!(metric(&m, r#"llm_sidecar_provider_usable{provider="keyless"}"#), 0.0);
    assert_eq!(metric(&m, r#"llm_sidecar_provider_usable{provider="mock"}"#), 1.0);
    let cfg = h.admin_get("/admin/config").await;
    let keyless = cfg["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "keyless")
        .unwrap();
    assert_eq!(keyless["usable"], false);
}

/// `llm_sidecar_redis_up` exists only in fleet mode: a sidecar without Redis (the default)
/// exporting a 0 would fire the shipped "Redis down" alert on every pod.
#[tokio::test]
async fn redis_health_is_exported_only_in_fleet_mode() {
    let h = Harness::start().await;
    assert_eq!(h.chat(chat_body("hi")).await.status(), 200);
    let m = h.metrics().await;
    assert!(m.contains("llm_sidecar_requests_total"), "{m}");
    assert!(!m.contains("llm_sidecar_redis_up"), "{m}");
}

/// The process's own CPU and memory are on /metrics under the names dashboards expect.
#[tokio::test]
async fn process_cpu_and_memory_are_exported() {
    let h = Harness::start().await;
    let m = h.metrics().await;
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(metric(&m, name) > 0.0, "{name} missing or zero in:\n{m}");
    }
}

/// With the admin port reachable from outside the pod and no token, metrics, probes and
/// read-only figures stay open, but a cache purge and prompt content are refused (403, naming
/// server.admin_token); with a token they need it.
#[tokio::test]
async fn off_loopback_the_admin_port_needs_a_token_for_purge_and_prompts() {
    use llm_sidecar::app::{ConfigInput, Sidecar};
    let start = |extra: &'static str| async move {
        let mock = MockUpstream::start().await.unwrap();
        let text = config(&mock.base_url(), extra);
        let mut opts = options(ConfigInput::Text(text));
        opts.admin_listen = Some("0.0.0.0:0".parse().unwrap());
        let sidecar = Sidecar::start(opts).await.unwrap();
        let admin = format!("http://127.0.0.1:{}", sidecar.admin_addr().port());
        (mock, sidecar, admin)
    };
    let c = client();
    let (_mock, _sidecar, admin) = start("  dashboard_prompts: true\n").await;
    for path in ["/metrics", "/healthz", "/readyz", "/admin/config", "/admin/usage"] {
        let r = c.get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = c.post(format!("{admin}/admin/cache/purge")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("server.admin_token"));
    let r = c.get(format!("{admin}/admin/events")).send().await.unwrap();
    assert_eq!(r.status(), 403, "prompt content without a token");

    let (_mock, _sidecar, admin) = start("  admin_token: \"t0ken-of-the-admin\"\n").await;
    let r = c.post(format!("{admin}/admin/cache/purge")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{admin}/admin/cache/purge"))
        .bearer_auth("t0ken-of-the-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
