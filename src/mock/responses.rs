//! What the mock provider answers at `/v1/responses` (the Responses API): the same answer its
//! chat endpoint would give for the request's `input`, as a response object or as the typed
//! event stream (`response.created` … `response.output_text.delta` … `response.completed`).
//! Each response gets a fresh id the mock remembers, so `previous_response_id` works only
//! against the mock that made it, as it does against real providers.

use bytes::Bytes;
use serde_json::{Value, json};

use super::answers::Completion;

/// A Responses answer: the chat answer for the request's `input`, under a fresh id.
pub(super) struct ResponsesAnswer {
    id: String,
    completion: Completion,
    previous: Value,
}

impl ResponsesAnswer {
    pub(super) fn new(req: &Value, id: String, canned: &[(String, String)], prose_words: usize) -> Self {
        let messages = match &req["input"] {
            Value::String(s) => vec![json!({"role": "user", "content": s})],
            Value::Array(items) => items.iter().filter(|i| i["role"].is_string()).cloned().collect(),
            _ => Vec::new(),
        };
        let mut chat = json!({"model": req["model"], "messages": messages, "stream": req["stream"]});
        if let Some(instructions) = req["instructions"].as_str()
            && let Some(list) = chat["messages"].as_array_mut()
        {
            list.insert(0, json!({"role": "system", "content": instructions}));
        }
        ResponsesAnswer {
            id,
            completion: Completion::chat(&chat, canned, prose_words),
            previous: req["previous_response_id"].clone(),
        }
    }

    pub(super) fn stream(&self) -> bool {
        self.completion.stream
    }

    fn text(&self) -> String {
        self.completion.words.join(" ")
    }

    fn message(&self, text: Option<&str>) -> Value {
        let (status, content) = match text {
            Some(t) => (
                "completed",
                json!([{"type": "output_text", "text": t, "annotations": []}]),
            ),
            None => ("in_progress", json!([])),
        };
        json!({"type": "message", "id": "msg_mock", "status": status, "role": "assistant", "content": content})
    }

    /// The response object; `done` for the finished one, else as `response.created` shows it.
    pub(super) fn json(&self, done: bool) -> Value {
        let c = self.completion.words.len() as u64;
        let p = self.completion.prompt_tokens;
        let (status, output, usage) = if done {
            let usage = json!({
                "input_tokens": p, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": p + c,
            });
            ("completed", json!([self.message(Some(&self.text()))]), usage)
        } else {
            ("in_progress", json!([]), Value::Null)
        };
        json!({
            "id": self.id, "object": "response", "created_at": 1_700_000_000u64, "status": status,
            "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null,
            "model": self.completion.model, "output": output, "parallel_tool_calls": true,
            "previous_response_id": self.previous, "store": true, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
            "truncation": "disabled", "usage": usage, "metadata": {},
        })
    }

    /// The event stream, one `Bytes` per event.
    pub(super) fn events(&self) -> Vec<Bytes> {
        let text = self.text();
        let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
        let at = json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0});
        let with = |extra: Value| {
            let mut v = at.clone();
            if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
                v.extend(extra);
            }
            v
        };
        let mut ev: Vec<(&str, Value)> = vec![
            ("response.created", json!({"response": self.json(false)})),
            ("response.in_progress", json!({"response": self.json(false)})),
            (
                "response.output_item.added",
                json!({"output_index": 0, "item": self.message(None)}),
            ),
            ("response.content_part.added", with(json!({"part": part("")}))),
        ];
        for (i, w) in self.completion.words.iter().enumerate() {
            let delta = if i == 0 { w.clone() } else { format!(" {w}") };
            ev.push((
                "response.output_text.delta",
                with(json!({"delta": delta, "logprobs": []})),
            ));
        }
        ev.push(("response.output_text.done", with(json!({"text": text, "logprobs": []}))));
        ev.push(("response.content_part.done", with(json!({"part": part(&text)}))));
        ev.push((
            "response.output_item.done",
            json!({"output_index": 0, "item": self.message(Some(&text))}),
        ));
        ev.push(("response.completed", json!({"response": self.json(true)})));
        ev.into_iter()
            .enumerate()
            .map(|(seq, (name, mut data))| {
                data["type"] = name.into();
                data["sequence_number"] = seq.into();
                Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
            })
            .collect()
    }
}

/// The error a provider gives for a `previous_response_id` it never issued.
pub(super) fn unknown_previous(id: &str) -> Value {
    json!({"error": {
        "message": format!("Previous response with id '{id}' not found."),
        "type": "invalid_request_error", "param": "previous_response_id", "code": "previous_response_not_found",
    }})
}
