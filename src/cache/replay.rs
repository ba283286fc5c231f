//! Converting between the two shapes of an answer. The cache stores one shape — the complete
//! JSON response — so an answer first streamed can be served as JSON and vice versa. A
//! streamed answer is assembled from its chunks (content, refusal, tool calls by index,
//! finish reason, usage); a cached answer is replayed to a streaming request as a well-formed
//! SSE stream ending in `data: [DONE]`.

use bytes::Bytes;
use serde_json::{Map, Value, json};

/// Assembles SSE bytes (as the provider sent them) into a JSON response. `None` if the stream
/// is not a complete, error-free OpenAI stream.
pub(crate) fn assemble(sse: &[u8]) -> Option<Bytes> {
    let text = std::str::from_utf8(sse).ok()?;
    let mut done = false;
    let mut head: Option<Map<String, Value>> = None;
    let mut chat = true;
    let mut choices: Vec<Map<String, Value>> = Vec::new();
    let mut usage = Value::Null;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim_start();
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Map<String, Value> = serde_json::from_str(data).ok()?;
        if chunk.contains_key("error") {
            return None;
        }
        if head.is_none() {
            chat = chunk.get("object").and_then(Value::as_str) != Some("text_completion");
            head = Some(head_of(&chunk));
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = u.clone();
        }
        for c in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            if index > 128 {
                return None;
            }
            while choices.len() <= index {
                let n = choices.len();
                choices.push(Map::from_iter([("index".to_owned(), json!(n))]));
            }
            let acc = &mut choices[index];
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                acc.insert("finish_reason".into(), f.clone());
            }
            if chat {
                merge_delta(acc, c.get("delta")?)?;
            } else if let Some(s) = c.get("text").and_then(Value::as_str) {
                append(acc, "text", s);
            }
        }
    }
    if !done || choices.is_empty() || choices.iter().any(|c| !c.contains_key("finish_reason")) {
        return None;
    }
    whole(head?, chat, choices, usage)
}

/// The whole answer the chunks add up to.
fn whole(mut out: Map<String, Value>, chat: bool, choices: Vec<Map<String, Value>>, usage: Value) -> Option<Bytes> {
    out.insert(
        "object".into(),
        json!(if chat { "chat.completion" } else { "text_completion" }),
    );
    out.insert(
        "choices".into(),
        Value::Array(choices.into_iter().map(Value::Object).collect()),
    );
    if !usage.is_null() {
        out.insert("usage".into(), usage);
    }
    serde_json::to_vec(&out).ok().map(Bytes::from)
}

/// What a whole answer keeps from its first chunk.
fn head_of(chunk: &Map<String, Value>) -> Map<String, Value> {
    let mut h = Map::new();
    for k in ["id", "created", "model", "system_fingerprint"] {
        if let Some(v) = chunk.get(k) {
            h.insert(k.into(), v.clone());
        }
    }
    h
}

/// Adds one chat chunk's `delta` to its choice's message: text, refusal and tool calls.
fn merge_delta(acc: &mut Map<String, Value>, delta: &Value) -> Option<()> {
    let msg = acc
        .entry("message")
        .or_insert_with(|| json!({"role": "assistant", "content": null}));
    let msg = msg.as_object_mut()?;
    for field in ["content", "refusal"] {
        if let Some(s) = delta.get(field).and_then(Value::as_str) {
            append(msg, field, s);
        }
    }
    for tc in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let ti = tc.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        let calls = msg.entry("tool_calls").or_insert_with(|| json!([])).as_array_mut()?;
        while calls.len() <= ti {
            calls.push(json!({"id": null, "type": "function", "function": {"name": "", "arguments": ""}}));
        }
        let call = calls[ti].as_object_mut()?;
        if let Some(id) = tc.get("id").filter(|v| !v.is_null()) {
            call.insert("id".into(), id.clone());
        }
        if let Some(f) = tc.get("function") {
            let func = call.get_mut("function")?.as_object_mut()?;
            for field in ["name", "arguments"] {
                if let Some(s) = f.get(field).and_then(Value::as_str) {
                    append(func, field, s);
                }
            }
        }
    }
    Some(())
}

fn append(obj: &mut Map<String, Value>, field: &str, s: &str) {
    match obj.get_mut(field) {
        Some(Value::String(existing)) => existing.push_str(s),
        _ => {
            obj.insert(field.into(), Value::String(s.to_owned()));
        }
    }
}

/// Replays a stored JSON answer as SSE: a first chunk carrying the whole message, a chunk with
/// the finish reason, the usage chunk when asked for, and `[DONE]`.
pub(crate) fn to_sse(json: &[u8], include_usage: bool) -> Option<Bytes> {
    let v: Map<String, Value> = serde_json::from_slice(json).ok()?;
    let chat = v.get("object").and_then(Value::as_str) != Some("text_completion");
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let mut base = Map::new();
    for k in ["id", "created", "model", "system_fingerprint"] {
        if let Some(x) = v.get(k) {
            base.insert(k.into(), x.clone());
        }
    }
    base.insert("object".into(), json!(object));
    let choices = v.get("choices")?.as_array()?;
    let mut out = String::new();
    let mut push = |choices: Value, usage: Option<&Value>| {
        let mut chunk = base.clone();
        chunk.insert("choices".into(), choices);
        if let Some(u) = usage {
            chunk.insert("usage".into(), u.clone());
        }
        out.push_str("data: ");
        out.push_str(&Value::Object(chunk).to_string());
        out.push_str("\n\n");
    };
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    for c in choices {
        let index = c.get("index").cloned().unwrap_or(json!(0));
        if chat {
            let mut delta = c.get("message").and_then(Value::as_object).cloned().unwrap_or_default();
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for (i, call) in calls.iter_mut().enumerate() {
                    if let Some(o) = call.as_object_mut() {
                        o.insert("index".into(), json!(i));
                    }
                }
            }
            firsts.push(json!({"index": index, "delta": delta, "finish_reason": null, "logprobs": null}));
            lasts.push(json!({"index": index, "delta": {}, "finish_reason": c.get("finish_reason"), "logprobs": null}));
        } else {
            firsts.push(json!({"index": index, "text": c.get("text"), "finish_reason": null, "logprobs": null}));
            lasts.push(json!({"index": index, "text": "", "finish_reason": c.get("finish_reason"), "logprobs": null}));
        }
    }
    push(Value::Array(firsts), None);
    push(Value::Array(lasts), None);
    if include_usage && let Some(u) = v.get("usage") {
        push(json!([]), Some(u));
    }
    out.push_str("data: [DONE]\n\n");
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_assembles_into_json_and_replays_back() {
        let sse = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        );
        let json: Value = serde_json::from_slice(&assemble(sse.as_bytes()).unwrap()).unwrap();
        assert_eq!(json["object"], "chat.completion");
        assert_eq!(json["choices"][0]["message"]["content"], "Hello");
        assert_eq!(
            json["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(json["choices"][0]["finish_reason"], "stop");
        assert_eq!(json["usage"]["completion_tokens"], 2);

        let replay = to_sse(&serde_json::to_vec(&json).unwrap(), true).unwrap();
        let text = std::str::from_utf8(&replay).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        let again: Value = serde_json::from_slice(&assemble(&replay).unwrap()).unwrap();
        assert_eq!(again["choices"], json["choices"]);
        assert_eq!(again["usage"], json["usage"]);
    }

    #[test]
    fn incomplete_or_failed_streams_are_not_assembled() {
        let partial = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\n";
        assert!(assemble(partial.as_bytes()).is_none());
        let errored = format!("{partial}data: {{\"error\":{{\"message\":\"boom\"}}}}\n\ndata: [DONE]\n\n");
        assert!(assemble(errored.as_bytes()).is_none());
    }
}
