//! Anthropic's Messages API behind the OpenAI chat-completions shape, both ways, so the app
//! keeps speaking OpenAI: requests (system prompt, text and image parts, tool definitions,
//! tool calls and tool results, stop sequences, `max_tokens`), JSON responses (text, tool
//! calls, finish reason, usage with cache reads), streaming events (text and tool-argument
//! deltas, usage, errors) and error bodies.
//!
//! What has no equivalent is dropped with intent: OpenAI's `n`, `logprobs`, `presence_penalty`,
//! `frequency_penalty`, `seed` and `response_format` (Anthropic has no JSON mode; use tools).

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value, json};

use super::adapter::{Adapter, StreamTranslate, Unsupported};
use crate::openai::{RequestHead, error_body};

/// The Messages API behind [`Adapter`].
pub struct Anthropic;

impl Adapter for Anthropic {
    fn path(&self, endpoint: &'static str) -> Result<&'static str, Unsupported> {
        match endpoint {
            "/chat/completions" => Ok("/messages"),
            other => Err(Unsupported::Endpoint {
                provider: "Anthropic",
                endpoint: other.trim_start_matches('/'),
            }),
        }
    }

    fn request(
        &self,
        _head: &RequestHead<'_>,
        body: &Bytes,
        upstream_model: &str,
        _: bool,
    ) -> Result<Bytes, Unsupported> {
        Ok(Bytes::from(request(body, upstream_model)?))
    }

    fn adds_usage_chunk(&self, _inject_stream_usage: bool) -> bool {
        // The translator always reports usage, so the sidecar can account tokens.
        true
    }

    fn response(&self, status: StatusCode, body: Bytes, model: &str) -> Option<Bytes> {
        if status.is_success() {
            response(&body, model)
        } else {
            Some(error(&body))
        }
    }

    fn stream(&self, model: &str, include_usage: bool) -> Option<Box<dyn StreamTranslate>> {
        Some(Box::new(StreamTranslator::new(model, include_usage)))
    }

    fn default_headers(&self, headers: &mut HeaderMap) {
        if !headers.contains_key("anthropic-version") {
            headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        }
    }
}

/// Anthropic requires `max_tokens`; OpenAI defaults to "as many as fit". 4096 is what every
/// current Claude model accepts.
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The API version this translation was written against (sent unless the provider's
/// `headers` set another).
pub(crate) const API_VERSION: &str = "2023-06-01";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TranslateError {
    #[error("{0}")]
    Request(String),
}

fn bad(msg: impl Into<String>) -> TranslateError {
    TranslateError::Request(msg.into())
}

/// Content of an OpenAI message as Anthropic content blocks.
fn blocks(content: &Value) -> Result<Vec<Value>, TranslateError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p["type"].as_str() {
                Some("text") => Ok(json!({"type": "text", "text": p["text"].as_str().unwrap_or("")})),
                Some("image_url") => {
                    let url = p["image_url"]["url"]
                        .as_str()
                        .or_else(|| p["image_url"].as_str())
                        .ok_or_else(|| bad("an image_url part has no url"))?;
                    Ok(image(url))
                }
                other => Err(bad(format!(
                    "message content parts of type {other:?} cannot be sent to an Anthropic model"
                ))),
            })
            .collect(),
        _ => Err(bad("message content must be a string or an array of parts")),
    }
}

fn image(url: &str) -> Value {
    // data:image/png;base64,AAAA
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(media) = meta.strip_suffix(";base64")
    {
        return json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}});
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

/// Appends blocks to the conversation, merging consecutive turns of one role (Anthropic
/// requires user and assistant to alternate).
fn push(messages: &mut Vec<Value>, role: &str, mut content: Vec<Value>) {
    if content.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut()
        && last["role"] == role
        && let Some(arr) = last["content"].as_array_mut()
    {
        arr.append(&mut content);
        return;
    }
    messages.push(json!({"role": role, "content": content}));
}

/// An OpenAI chat-completions request body → an Anthropic Messages request body.
pub(crate) fn request(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, TranslateError> {
    let req: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| bad(format!("the request is not a JSON object: {e}")))?;
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());
    let list = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be an array"))?;
    let (system, messages) = conversation(list)?;
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), max_tokens.into());
    for key in ["temperature", "top_p", "stream"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    match req.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    tools(&req, &mut out);
    serde_json::to_vec(&Value::Object(out)).map_err(|e| bad(e.to_string()))
}

/// OpenAI's messages as Anthropic's (system blocks, alternating turns); tool calls become
/// `tool_use` blocks and tool messages `tool_result` blocks of a user turn.
fn conversation(list: &[Value]) -> Result<(Vec<Value>, Vec<Value>), TranslateError> {
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        match m["role"].as_str() {
            Some("system" | "developer") => system.extend(blocks(&m["content"])?),
            Some("user") => push(&mut messages, "user", blocks(&m["content"])?),
            Some("assistant") => {
                let mut content = blocks(&m["content"])?;
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    let args = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                    content.push(json!({
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["function"]["name"],
                        "input": input,
                    }));
                }
                push(&mut messages, "assistant", content);
            }
            Some("tool") => {
                let text = match &m["content"] {
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(""),
                    _ => String::new(),
                };
                push(
                    &mut messages,
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": text})],
                );
            }
            other => return Err(bad(format!("messages[{i}].role {other:?} is not supported"))),
        }
    }
    Ok((system, messages))
}

/// Function tools and the tool choice, in Anthropic's shape.
fn tools(req: &Map<String, Value>, out: &mut Map<String, Value>) {
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter(|t| t["type"] == "function")
            .map(|t| {
                let f = &t["function"];
                let mut tool = json!({
                    "name": f["name"],
                    "input_schema": if f["parameters"].is_object() { f["parameters"].clone() } else { json!({"type": "object"}) },
                });
                if let Some(d) = f["description"].as_str() {
                    tool["description"] = d.into();
                }
                tool
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    let choice = match req.get("tool_choice") {
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|n| json!({"type": "tool", "name": n})),
        _ => None,
    };
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
}

fn finish_reason(stop: Option<&str>) -> Value {
    match stop {
        Some("end_turn" | "stop_sequence" | "pause_turn") => "stop".into(),
        Some("max_tokens") => "length".into(),
        Some("tool_use") => "tool_calls".into(),
        Some("refusal") => "content_filter".into(),
        Some(_) => "stop".into(),
        None => Value::Null,
    }
}

fn usage(u: &Value) -> Value {
    let input = u["input_tokens"].as_u64().unwrap_or(0);
    let cache_read = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
    let cache_write = u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
    let output = u["output_tokens"].as_u64().unwrap_or(0);
    let prompt = input + cache_read + cache_write;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    })
}

fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An Anthropic Messages response → an OpenAI `chat.completion`, named with the model the app
/// asked for.
pub(crate) fn response(body: &[u8], model: &str) -> Option<Bytes> {
    let r: Value = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in r["content"].as_array()? {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("tool_use") => tool_calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { text.into() }});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let out = json!({
        "id": format!("chatcmpl-{}", r["id"].as_str().unwrap_or("anthropic")),
        "object": "chat.completion",
        "created": created(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(r["stop_reason"].as_str()), "logprobs": null}],
        "usage": usage(&r["usage"]),
    });
    serde_json::to_vec(&out).ok().map(Bytes::from)
}

/// An Anthropic error body (`{"type":"error","error":{"type","message"}}`) → OpenAI's shape.
pub(crate) fn error(body: &[u8]) -> Bytes {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = v["error"]["type"].as_str().unwrap_or("api_error");
    let message = v["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    let openai_type = match kind {
        "invalid_request_error" => "invalid_request_error",
        "authentication_error" | "permission_error" => "authentication_error",
        "not_found_error" => "not_found_error",
        "rate_limit_error" => "rate_limit_error",
        _ => "server_error",
    };
    Bytes::from(error_body(
        &format!("Anthropic: {message}"),
        openai_type,
        None,
        Some(kind),
    ))
}

/// Turns an Anthropic event stream into OpenAI `chat.completion.chunk` events as bytes
/// arrive (events may be split across reads).
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    include_usage: bool,
    buf: BytesMut,
    id: String,
    created: u64,
    /// Anthropic content-block index → OpenAI tool-call index.
    tools: Vec<(u64, usize)>,
    usage: Value,
    finish: Value,
    done: bool,
}

impl StreamTranslator {
    pub(crate) fn new(model: &str, include_usage: bool) -> Self {
        StreamTranslator {
            model: model.to_owned(),
            include_usage,
            buf: BytesMut::new(),
            id: "chatcmpl-anthropic".into(),
            created: created(),
            tools: Vec::new(),
            usage: json!({}),
            finish: Value::Null,
            done: false,
        }
    }

    fn chunk(&self, out: &mut BytesMut, delta: Value, finish: Value) {
        let mut c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        emit(out, &c);
    }

    /// Feeds bytes from the provider; returns the OpenAI SSE bytes they complete.
    pub(crate) fn feed_bytes(&mut self, data: &[u8]) -> Bytes {
        self.buf.extend_from_slice(data);
        let mut out = BytesMut::new();
        while let Some(end) = find_event_end(&self.buf) {
            let event = self.buf.split_to(end.0);
            let _ = self.buf.split_to(end.1);
            self.event(&event, &mut out);
        }
        out.freeze()
    }

    fn event(&mut self, raw: &[u8], out: &mut BytesMut) {
        let text = String::from_utf8_lossy(raw);
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            return;
        };
        match v["type"].as_str() {
            Some("message_start") => {
                if let Some(id) = v["message"]["id"].as_str() {
                    self.id = format!("chatcmpl-{id}");
                }
                self.usage = v["message"]["usage"].clone();
                self.chunk(out, json!({"role": "assistant", "content": ""}), Value::Null);
            }
            Some("content_block_start") if v["content_block"]["type"] == "tool_use" => {
                let index = self.tools.len();
                self.tools.push((v["index"].as_u64().unwrap_or(0), index));
                let b = &v["content_block"];
                self.chunk(
                    out,
                    json!({"tool_calls": [{"index": index, "id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": ""}}]}),
                    Value::Null,
                );
            }
            Some("content_block_delta") => self.delta(&v, out),
            Some("message_delta") => {
                if let Some(u) = v["usage"].as_object() {
                    for (k, val) in u {
                        self.usage[k] = val.clone();
                    }
                }
                self.finish = finish_reason(v["delta"]["stop_reason"].as_str());
            }
            Some("message_stop") => self.stop(out),
            Some("error") => {
                let kind = v["error"]["type"].as_str().unwrap_or("api_error");
                let message = v["error"]["message"].as_str().unwrap_or("stream error");
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&error_body(
                    &format!("Anthropic: {message}"),
                    "server_error",
                    None,
                    Some(kind),
                ));
                out.extend_from_slice(b"\n\n");
            }
            _ => {}
        }
    }

    /// A piece of text, or of a tool call's arguments.
    fn delta(&mut self, v: &Value, out: &mut BytesMut) {
        let d = &v["delta"];
        match d["type"].as_str() {
            Some("text_delta") => self.chunk(out, json!({"content": d["text"]}), Value::Null),
            Some("input_json_delta") => {
                let block = v["index"].as_u64().unwrap_or(0);
                let index = self.tools.iter().find(|(b, _)| *b == block).map_or(0, |(_, i)| *i);
                self.chunk(
                    out,
                    json!({"tool_calls": [{"index": index, "function": {"arguments": d["partial_json"]}}]}),
                    Value::Null,
                );
            }
            _ => {}
        }
    }

    /// The end: the finish reason, the usage chunk when asked for, and `[DONE]`.
    fn stop(&mut self, out: &mut BytesMut) {
        self.chunk(out, json!({}), self.finish.clone());
        if self.include_usage {
            let c = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage(&self.usage),
            });
            emit(out, &c);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    /// Whether the stream reached `message_stop`.
    #[cfg(test)]
    fn done(&self) -> bool {
        self.done
    }
}

impl StreamTranslate for StreamTranslator {
    fn feed(&mut self, data: &[u8]) -> Bytes {
        self.feed_bytes(data)
    }
}

fn emit(out: &mut BytesMut, v: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// (end of the event, length of its separator) for the first complete event in `buf`.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| (i, 2));
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/anthropic/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn requests_translate_system_tools_images_and_tool_results() {
        let openai = fixture("request.openai.json");
        let got: Value = serde_json::from_slice(&request(openai.as_bytes(), "claude-sonnet-4-5").unwrap()).unwrap();
        let want: Value = serde_json::from_str(&fixture("request.anthropic.json")).unwrap();
        assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
    }

    #[test]
    fn responses_translate_text_tool_calls_and_usage() {
        let got: Value =
            serde_json::from_slice(&response(fixture("response.anthropic.json").as_bytes(), "smart").unwrap()).unwrap();
        assert_eq!(got["object"], "chat.completion");
        assert_eq!(got["model"], "smart");
        let choice = &got["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Let me check the weather.");
        assert_eq!(
            choice["message"]["tool_calls"][0]["id"],
            "toolu_01A09q90qw90lq917835lq9"
        );
        assert_eq!(choice["message"]["tool_calls"][0]["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(
            choice["message"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(args, json!({"location": "Paris"}));
        assert_eq!(
            got["usage"],
            json!({"prompt_tokens": 2095 + 1000, "completion_tokens": 503, "total_tokens": 3598, "prompt_tokens_details": {"cached_tokens": 1000}})
        );
    }

    #[test]
    fn streams_translate_event_by_event_even_when_split() {
        let raw = fixture("stream.anthropic.sse");
        // Feed in awkward 7-byte pieces: events split across reads must still come out whole.
        let mut t = StreamTranslator::new("smart", true);
        let mut out = Vec::new();
        for piece in raw.as_bytes().chunks(7) {
            out.extend_from_slice(&t.feed_bytes(piece));
        }
        assert!(t.done());
        let text = String::from_utf8(out).unwrap();
        let events: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(text.ends_with("data: [DONE]\n\n"));
        let content: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "Hello! Let me check.");
        let args: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
            .collect();
        assert_eq!(args, r#"{"location": "Paris"}"#);
        let names: Vec<&str> = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["name"].as_str())
            .collect();
        assert_eq!(names, ["get_weather"]);
        let finish: Vec<&str> = events
            .iter()
            .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
            .collect();
        assert_eq!(finish, ["tool_calls"]);
        let last = events.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 25);
        assert_eq!(last["usage"]["completion_tokens"], 42);
    }

    #[test]
    fn errors_take_openai_shape() {
        let e: Value = serde_json::from_slice(&error(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ))
        .unwrap();
        assert_eq!(e["error"]["message"], "Anthropic: Overloaded");
        assert_eq!(e["error"]["code"], "overloaded_error");
        let mut t = StreamTranslator::new("m", false);
        let out = t.feed_bytes(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert!(String::from_utf8_lossy(&out).contains("\"error\""));
        assert!(!t.done());
    }
}
