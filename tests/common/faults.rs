//! Fault injection shared by the fault suite and the soak: what a broken provider sends (as
//! mock faults), and how an app would judge each answer it got.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use llm_sidecar::mock::{Fault, RawEnd};
use serde_json::{Value, json};

/// What the app got, counted exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seen {
    /// The right answer, whole: JSON with the expected content, or a stream of well-formed
    /// events with that content, ended by `[DONE]`.
    Answered,
    /// An OpenAI-shaped error: a non-200 with `{"error":{"message"}}`, or a stream that ends
    /// with an error event and no `[DONE]`.
    CleanError,
    /// Status 200 (or another) with a body an app cannot trust: broken JSON, a wrong answer, a
    /// stream that just stops, a non-JSON event.
    Broken,
    /// No complete response within the client's patience.
    Hung,
    /// The connection failed (reset, refused) instead of an answer.
    Lost,
}

/// The mock's answer to `q`, as an app sees it.
pub fn expected(q: &str) -> String {
    format!("Mock answer to: {q}")
}

/// Sends one chat request and judges the answer. `stream` asks for SSE.
pub async fn ask(client: &reqwest::Client, url: &str, q: &str, stream: bool) -> (Seen, Option<String>, String) {
    let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": q}]});
    if stream {
        body["stream"] = json!(true);
    }
    ask_body(client, url, &body, q).await
}

pub async fn ask_body(client: &reqwest::Client, url: &str, body: &Value, q: &str) -> (Seen, Option<String>, String) {
    let stream = body["stream"].as_bool().unwrap_or(false);
    let patience = Duration::from_secs(15);
    let sent = tokio::time::timeout(patience, client.post(url).json(body).send()).await;
    let resp = match sent {
        Err(_) => return (Seen::Hung, None, String::new()),
        Ok(Err(e)) if e.is_timeout() => return (Seen::Hung, None, String::new()),
        Ok(Err(e)) => return (Seen::Lost, None, e.to_string()),
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let model = resp
        .headers()
        .get("x-llm-sidecar-model")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = match tokio::time::timeout(patience, resp.bytes()).await {
        Err(_) => return (Seen::Hung, model, String::new()),
        Ok(Err(e)) if e.is_timeout() => return (Seen::Hung, model, String::new()),
        // A body cut by the sidecar (a non-SSE body that broke) is an error the app sees.
        Ok(Err(e)) => return (Seen::Lost, model, e.to_string()),
        Ok(Ok(b)) => String::from_utf8_lossy(&b).into_owned(),
    };
    let seen = judge(status, stream, &text, q);
    (seen, model, text)
}

/// Judges one complete response.
pub fn judge(status: u16, stream: bool, text: &str, q: &str) -> Seen {
    if status != 200 {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        return if v["error"]["message"].is_string() {
            Seen::CleanError
        } else {
            Seen::Broken
        };
    }
    if !stream {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => return Seen::Broken,
        };
        return if v["choices"][0]["message"]["content"] == expected(q) {
            Seen::Answered
        } else {
            Seen::Broken
        };
    }
    let mut content = String::new();
    let mut done = false;
    let mut error = false;
    for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect();
        if data.is_empty() {
            continue;
        }
        let data = data.join("\n");
        if done || error {
            // Anything after the end or an error event is a broken stream.
            return Seen::Broken;
        }
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = match serde_json::from_str::<Value>(&data) {
            Ok(v) if v.is_object() => v,
            _ => return Seen::Broken,
        };
        if v["error"]["message"].is_string() {
            error = true;
            continue;
        }
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
    }
    match (done, error) {
        (true, false) if content == expected(q) => Seen::Answered,
        (false, true) => Seen::CleanError,
        _ => Seen::Broken,
    }
}

/// One OpenAI chunk event.
fn chunk(delta: Value, finish: Value) -> Bytes {
    let c = json!({"id": "chatcmpl-f", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    Bytes::from(format!("data: {c}\n\n"))
}

/// A valid OpenAI stream answering `q` (role chunk, words, finish), with `[DONE]` if `done`.
pub fn openai_events(q: &str, done: bool) -> Vec<Bytes> {
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    for (i, w) in expected(q).split(' ').enumerate() {
        let piece = if i == 0 { w.to_owned() } else { format!(" {w}") };
        out.push(chunk(json!({"content": piece}), Value::Null));
    }
    out.push(chunk(json!({}), json!("stop")));
    if done {
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    out
}

/// A valid JSON chat answer to `q`.
pub fn openai_json(q: &str) -> Bytes {
    Bytes::from(
        json!({"id": "chatcmpl-f", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": expected(q)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
        .to_string(),
    )
}

fn raw(content_type: &'static str, chunks: Vec<Bytes>, end: RawEnd) -> Fault {
    Fault::Raw {
        status: 200,
        content_type,
        chunks,
        end,
    }
}

const SSE: &str = "text/event-stream";
const JSON: &str = "application/json";

/// Where a fault bites, per request mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bite {
    /// Nothing reached the app yet: a healthy fallback must answer; alone, a clean error.
    Before,
    /// After the stream was committed: a clean error event, with or without a fallback.
    After,
    /// Not a fault for this mode: the faulty provider's answer is right.
    Harmless,
}

pub struct Case {
    pub name: &'static str,
    /// The faulty provider speaks Anthropic's protocol.
    pub anthropic: bool,
    pub fault: fn(&str) -> Fault,
    pub json: Bite,
    pub stream: Bite,
}

fn anthropic_event(kind: &str, data: Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

fn anthropic_start() -> Vec<Bytes> {
    vec![
        anthropic_event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_f", "usage": {"input_tokens": 3, "output_tokens": 0}}}),
        ),
        anthropic_event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Mock"}}),
        ),
    ]
}

/// Every fault mode the suite runs: status faults, broken bodies, broken streams before and
/// after their first event, credential faults; OpenAI and Anthropic kinds.
pub fn cases() -> Vec<Case> {
    use Bite::*;
    vec![
        Case {
            name: "status 500",
            anthropic: false,
            fault: |_| Fault::Status {
                status: 500,
                retry_after: None,
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "status 503",
            anthropic: false,
            fault: |_| Fault::Status {
                status: 503,
                retry_after: None,
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "status 429",
            anthropic: false,
            fault: |_| Fault::Status {
                status: 429,
                retry_after: None,
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "reset before headers",
            anthropic: false,
            fault: |_| Fault::Reset,
            json: Before,
            stream: Before,
        },
        Case {
            name: "slow first byte",
            anthropic: false,
            fault: |_| Fault::DelayFirstByte(Duration::from_secs(3)),
            json: Before,
            stream: Before,
        },
        Case {
            name: "truncated JSON",
            anthropic: false,
            fault: |q| {
                let b = openai_json(q);
                raw(JSON, vec![b.slice(..b.len() / 2)], RawEnd::Complete)
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "empty body",
            anthropic: false,
            fault: |_| raw(JSON, vec![], RawEnd::Complete),
            json: Before,
            stream: Before,
        },
        Case {
            name: "HTML error page",
            anthropic: false,
            fault: |_| {
                raw(
                    "text/html",
                    vec![Bytes::from_static(
                        b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                    )],
                    RawEnd::Complete,
                )
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "error object with 200",
            anthropic: false,
            fault: |_| {
                raw(
                    JSON,
                    vec![Bytes::from_static(
                        br#"{"error":{"message":"overloaded","type":"server_error"}}"#,
                    )],
                    RawEnd::Complete,
                )
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "JSON without choices",
            anthropic: false,
            fault: |_| {
                raw(
                    JSON,
                    vec![Bytes::from_static(br#"{"id":"x","object":"chat.completion"}"#)],
                    RawEnd::Complete,
                )
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "JSON body for any request",
            anthropic: false,
            fault: |q| raw(JSON, vec![openai_json(q)], RawEnd::Complete),
            json: Harmless,
            stream: Before,
        },
        Case {
            name: "SSE body for any request",
            anthropic: false,
            fault: |q| raw(SSE, openai_events(q, true), RawEnd::Complete),
            json: Before,
            stream: Harmless,
        },
        Case {
            name: "non-JSON first event",
            anthropic: false,
            fault: |_| {
                raw(
                    SSE,
                    vec![Bytes::from_static(b"data: <html>oops</html>\n\n")],
                    RawEnd::Complete,
                )
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "non-JSON event mid-stream",
            anthropic: false,
            fault: |q| {
                let mut e = openai_events(q, true);
                e.insert(3, Bytes::from_static(b"data: {\"choices\":[{\"delta\n\n"));
                raw(SSE, e, RawEnd::Complete)
            },
            json: Before,
            stream: After,
        },
        Case {
            name: "stream without [DONE]",
            anthropic: false,
            fault: |q| raw(SSE, openai_events(q, false), RawEnd::Complete),
            json: Before,
            stream: After,
        },
        Case {
            name: "only [DONE]",
            anthropic: false,
            fault: |_| raw(SSE, vec![Bytes::from_static(b"data: [DONE]\n\n")], RawEnd::Complete),
            json: Before,
            stream: Before,
        },
        Case {
            name: "error event first",
            anthropic: false,
            fault: |_| {
                raw(
                    SSE,
                    vec![Bytes::from_static(
                        b"data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\"}}\n\n",
                    )],
                    RawEnd::Complete,
                )
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "200 then stall",
            anthropic: false,
            fault: |_| raw(SSE, vec![], RawEnd::Stall),
            json: Before,
            stream: Before,
        },
        Case {
            name: "200 then reset",
            anthropic: false,
            fault: |_| raw(SSE, vec![], RawEnd::Reset),
            json: Before,
            stream: Before,
        },
        Case {
            name: "keep-alive comments then stall",
            anthropic: false,
            fault: |_| raw(SSE, vec![Bytes::from_static(b": ping\n\n")], RawEnd::Stall),
            json: Before,
            stream: Before,
        },
        Case {
            name: "cut mid-body",
            anthropic: false,
            fault: |_| Fault::CutAfterChunks(2),
            json: Before,
            stream: After,
        },
        Case {
            name: "stall mid-body",
            anthropic: false,
            fault: |_| Fault::StallAfterChunks(2),
            json: Before,
            stream: After,
        },
        Case {
            name: "401 echoing the key",
            anthropic: false,
            fault: |_| Fault::EchoCredential { status: 401 },
            json: Before,
            stream: Before,
        },
        Case {
            name: "403 echoing the key",
            anthropic: false,
            fault: |_| Fault::EchoCredential { status: 403 },
            json: Before,
            stream: Before,
        },
        Case {
            name: "anthropic: 529 overloaded",
            anthropic: true,
            fault: |_| Fault::Status {
                status: 529,
                retry_after: None,
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "anthropic: overloaded_error event first",
            anthropic: true,
            fault: |_| {
                raw(
                    SSE,
                    vec![anthropic_event(
                        "error",
                        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                    )],
                    RawEnd::Complete,
                )
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "anthropic: unexpected stream shape",
            anthropic: true,
            fault: |_| {
                raw(
                    SSE,
                    vec![
                        Bytes::from_static(b"data: {\"foo\":1}\n\n"),
                        Bytes::from_static(b"data: {\"bar\":2}\n\n"),
                    ],
                    RawEnd::Complete,
                )
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "anthropic: cut after message_start",
            anthropic: true,
            fault: |_| raw(SSE, anthropic_start(), RawEnd::Reset),
            json: Before,
            stream: After,
        },
        Case {
            name: "anthropic: no message_stop",
            anthropic: true,
            fault: |_| raw(SSE, anthropic_start(), RawEnd::Complete),
            json: Before,
            stream: After,
        },
        Case {
            name: "anthropic: broken JSON answer",
            anthropic: true,
            fault: |_| {
                raw(
                    JSON,
                    vec![Bytes::from_static(b"{\"id\":\"msg_1\",\"content\":[{\"ty")],
                    RawEnd::Complete,
                )
            },
            json: Before,
            stream: Before,
        },
        Case {
            name: "anthropic: 401 echoing the key",
            anthropic: true,
            fault: |_| Fault::EchoCredential { status: 401 },
            json: Before,
            stream: Before,
        },
    ]
}
