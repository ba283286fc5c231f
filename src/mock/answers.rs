//! What the mock provider answers: chat and text completions (echoed questions, canned
//! answers, prose of a given length, tool calls), as JSON or a stream, in OpenAI's shape or
//! Anthropic's, and embeddings.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Response, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::MockBody;

pub(super) struct Completion {
    pub(super) chat: bool,
    pub(super) model: String,
    pub(super) words: Vec<String>,
    pub(super) prompt_tokens: u64,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
}

impl Completion {
    pub(super) fn chat(req: &Value, canned: &[(String, String)], prose_words: usize) -> Self {
        let messages = req["messages"].as_array().cloned().unwrap_or_default();
        let mut prompt_tokens = 0;
        let mut last_user = String::new();
        for m in &messages {
            let text = content_text(&m["content"]);
            prompt_tokens += 1 + text.split_whitespace().count() as u64;
            if m["role"] == "user" {
                last_user = text;
            }
        }
        let lower = last_user.to_lowercase();
        let answer = canned
            .iter()
            .find(|(key, _)| lower.contains(key.as_str()))
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| match prose_words {
                0 => format!("Mock answer to: {last_user}"),
                n => prose(&last_user, n),
            });
        Self::new(true, req, answer, prompt_tokens)
    }

    pub(super) fn text(req: &Value) -> Self {
        let prompt = match &req["prompt"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let tokens = prompt.split_whitespace().count() as u64;
        Self::new(false, req, format!("Mock completion of: {prompt}"), tokens)
    }

    pub(super) fn new(chat: bool, req: &Value, answer: String, prompt_tokens: u64) -> Self {
        Completion {
            chat,
            model: req["model"].as_str().unwrap_or("mock-model").to_owned(),
            words: answer.split_whitespace().map(str::to_owned).collect(),
            prompt_tokens,
            stream: req["stream"].as_bool().unwrap_or(false),
            include_usage: req["stream_options"]["include_usage"].as_bool().unwrap_or(false),
        }
    }

    pub(super) fn usage(&self) -> Value {
        let c = self.words.len() as u64;
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": c, "total_tokens": self.prompt_tokens + c})
    }

    pub(super) fn json(&self) -> Value {
        let text = self.words.join(" ");
        if self.chat {
            json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000u64, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": null}],
                "usage": self.usage(),
            })
        } else {
            json!({
                "id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000u64, "model": self.model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": null}],
                "usage": self.usage(),
            })
        }
    }

    pub(super) fn chunk(&self, delta: Option<&str>, role: bool, finish: bool) -> Value {
        let choice = if self.chat {
            let mut d = serde_json::Map::new();
            if role {
                d.insert("role".into(), "assistant".into());
            }
            if let Some(t) = delta {
                d.insert("content".into(), t.into());
            }
            json!({"index": 0, "delta": d, "finish_reason": if finish { Some("stop") } else { None }, "logprobs": null})
        } else {
            json!({"index": 0, "text": delta.unwrap_or(""), "finish_reason": if finish { Some("stop") } else { None }, "logprobs": null})
        };
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut v = json!({"id": "chatcmpl-mock", "object": object, "created": 1_700_000_000u64, "model": self.model, "choices": [choice]});
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    pub(super) fn events(&self) -> Vec<Bytes> {
        let mut chunks = Vec::with_capacity(self.words.len() + 4);
        if self.chat {
            chunks.push(self.chunk(Some(""), true, false));
        }
        for (i, w) in self.words.iter().enumerate() {
            let piece = if i == 0 { w.clone() } else { format!(" {w}") };
            chunks.push(self.chunk(Some(&piece), false, false));
        }
        chunks.push(self.chunk(None, false, true));
        if self.include_usage {
            let object = if self.chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            };
            chunks.push(json!({"id": "chatcmpl-mock", "object": object, "created": 1_700_000_000u64, "model": self.model, "choices": [], "usage": self.usage()}));
        }
        let mut out: Vec<Bytes> = chunks.iter().map(|c| Bytes::from(format!("data: {c}\n\n"))).collect();
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }
}

/// Sends `chunks` with `delay` between them. With `cut = Some((n, stall))`, after `n` chunks
/// the connection breaks (or, with `stall`, goes silent while staying open).
pub(super) fn streamed(
    chunks: Vec<Bytes>,
    delay: Duration,
    cut: Option<(usize, bool)>,
    content_type: &'static str,
) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let n = cut.map_or(usize::MAX, |(n, _)| n);
        for (i, chunk) in chunks.into_iter().take(n).enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        match cut {
            None => {}
            Some((_, true)) => tx.closed().await,
            Some((_, false)) => {
                // Let hyper flush what was sent, so the break really is mid-body.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock cut",
                    )))
                    .await;
            }
        }
    });
    let mut resp = Response::new(MockBody::Stream(rx));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// What the mock's Anthropic Messages endpoint answers: the echo text, plus a call of the
/// first tool when the request offers tools.
pub(super) struct AnthropicAnswer {
    pub(super) model: String,
    pub(super) text: String,
    pub(super) tool: Option<String>,
    pub(super) input_tokens: u64,
}

/// `words` words of sentence-shaped text drawn from common English, seeded by `question`.
pub(super) fn prose(question: &str, words: usize) -> String {
    // Common English words, one per line (a data file, not code).
    static VOCABULARY: std::sync::LazyLock<Vec<&'static str>> =
        std::sync::LazyLock::new(|| include_str!("vocabulary.txt").split_whitespace().collect());
    let mut seed = question.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut text = String::with_capacity(words * 7);
    let mut sentence = 0;
    for i in 0..words {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let word = VOCABULARY[(seed % VOCABULARY.len() as u64) as usize];
        if sentence == 0 {
            if i > 0 {
                text.push(' ');
            }
            let mut c = word.chars();
            if let Some(f) = c.next() {
                text.extend(f.to_uppercase());
                text.push_str(c.as_str());
            }
        } else {
            text.push(' ');
            text.push_str(word);
        }
        sentence += 1;
        if sentence >= 8 + (seed >> 40) as usize % 10 || i + 1 == words {
            text.push('.');
            sentence = 0;
        }
    }
    text
}

pub(super) fn anthropic_answer(req: &Value, canned: &[(String, String)]) -> AnthropicAnswer {
    let mut last_user = String::new();
    let mut input_tokens = 0;
    for m in req["messages"].as_array().into_iter().flatten() {
        let text = content_text(&m["content"]);
        input_tokens += 1 + text.split_whitespace().count() as u64;
        if m["role"] == "user" && !text.is_empty() {
            last_user = text;
        }
    }
    let lower = last_user.to_lowercase();
    let text = canned
        .iter()
        .find(|(key, _)| lower.contains(key.as_str()))
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| format!("Mock answer to: {last_user}"));
    AnthropicAnswer {
        model: req["model"].as_str().unwrap_or("claude-mock").to_owned(),
        text,
        tool: req["tools"][0]["name"].as_str().map(str::to_owned),
        input_tokens,
    }
}

impl AnthropicAnswer {
    pub(super) fn output_tokens(&self) -> u64 {
        self.text.split_whitespace().count() as u64 + u64::from(self.tool.is_some())
    }

    pub(super) fn json(&self) -> Value {
        let mut content = vec![json!({"type": "text", "text": self.text})];
        if let Some(t) = &self.tool {
            content.push(json!({"type": "tool_use", "id": "toolu_mock", "name": t, "input": {"q": "mock"}}));
        }
        json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": self.model, "content": content,
            "stop_reason": if self.tool.is_some() { "tool_use" } else { "end_turn" }, "stop_sequence": null,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens()},
        })
    }

    pub(super) fn events(&self) -> Vec<Bytes> {
        let mut ev = vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "content": [], "model": self.model, "stop_reason": null, "usage": {"input_tokens": self.input_tokens, "output_tokens": 1}}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
        ];
        for (i, w) in self.text.split_whitespace().enumerate() {
            let piece = if i == 0 { w.to_owned() } else { format!(" {w}") };
            ev.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
        ev.push(("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
        if let Some(t) = &self.tool {
            ev.push(("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_mock", "name": t, "input": {}}})));
            for part in ["{\"q\": ", "\"mock\"}"] {
                ev.push(("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": part}})));
            }
            ev.push(("content_block_stop", json!({"type": "content_block_stop", "index": 1})));
        }
        let stop = if self.tool.is_some() { "tool_use" } else { "end_turn" };
        ev.push(("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": self.output_tokens()}})));
        ev.push(("message_stop", json!({"type": "message_stop"})));
        ev.into_iter()
            .map(|(name, data)| Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
            .collect()
    }
}

pub(super) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Deterministic unit vectors: a hashed bag of the input's lower-case words (each word a
/// pseudo-random direction, FNV-1a seeded), so equal inputs get equal embeddings and
/// rewordings that share most words land close together, like a real model's: enough for a
/// remote embedder's semantic hits to be tested against the mock.
pub(super) fn embeddings(req: &Value) -> Value {
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
            .collect(),
        other => vec![other.to_string()],
    };
    let dims = req["dimensions"].as_u64().unwrap_or(8).clamp(1, 4096) as usize;
    // The SDKs (Node's by default) may ask for base64: little-endian f32s, as OpenAI sends.
    let base64 = req["encoding_format"] == "base64";
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += text.split_whitespace().count() as u64;
            let mut v = vec![0f64; dims];
            let lower = text.to_lowercase();
            let words = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty());
            for word in words {
                let mut h: u64 = 0xcbf29ce484222325;
                for b in word.bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x100000001b3);
                }
                for x in v.iter_mut() {
                    h ^= h << 13;
                    h ^= h >> 7;
                    h ^= h << 17;
                    *x += (h % 2000) as f64 / 1000.0 - 1.0;
                }
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            } else {
                v[0] = 1.0;
            }
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": req["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}
