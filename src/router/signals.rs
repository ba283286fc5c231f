//! What the router reads from a request besides its model name: the last user turn (only when
//! some route looks at text), the capabilities the request needs (tools, vision, JSON mode),
//! a token estimate and the `user` field. Read from the already-parsed [`RequestHead`]
//! without building a JSON tree.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Capabilities;
use crate::openai::RequestHead;
use crate::openai::request::Str;

/// Bytes of request JSON per token, for estimates before the provider counts: English text
/// runs ~4 characters per token with BPE tokenizers, and JSON framing adds a little, so this
/// slightly over-estimates (the safe side for context windows and budgets).
pub(crate) const BYTES_PER_TOKEN: usize = 4;
/// Completion tokens assumed when the request sets no `max_tokens` (for price estimates).
pub(crate) const DEFAULT_COMPLETION_ESTIMATE: u64 = 256;

#[derive(Debug, Default)]
pub struct Signals<'a> {
    /// The last user turn's text (chat, or a Responses `input`) or the prompt (completions);
    /// `None` unless asked for.
    pub(crate) text: Option<Cow<'a, str>>,
    pub(crate) needs: Capabilities,
    pub prompt_tokens: u64,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) user: Option<Cow<'a, str>>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::NONE
    }
}

/// A chat message, or a Responses `input` item (items without a role, such as a tool's
/// output, are read and skipped).
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

impl<'a> Signals<'a> {
    pub fn read(head: &RequestHead<'a>, body_len: usize, want_text: bool) -> Self {
        // Built once: `memmem::find` builds a searcher per call (0.3 % of a proxied request's
        // CPU in the #19 profile).
        static IMAGE_URL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"image_url\""));
        static INPUT_IMAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"input_image\""));
        let mut needs = Capabilities::NONE;
        let non_empty = |v: Option<&RawValue>| v.is_some_and(|v| !matches!(v.get().trim(), "null" | "[]"));
        if non_empty(head.raw("tools")) || non_empty(head.raw("functions")) {
            needs = needs.union(Capabilities::TOOLS);
        }
        // Chat's `response_format`, or the Responses API's `text.format`.
        let json_mode = |v: &RawValue| v.get().contains("\"json_object\"") || v.get().contains("\"json_schema\"");
        if head.raw("response_format").is_some_and(json_mode) || head.raw("text").is_some_and(json_mode) {
            needs = needs.union(Capabilities::JSON);
        }
        let messages = head.raw("messages").or_else(|| head.raw("input"));
        if messages.is_some_and(|m| {
            IMAGE_URL.find(m.get().as_bytes()).is_some() || INPUT_IMAGE.find(m.get().as_bytes()).is_some()
        }) {
            needs = needs.union(Capabilities::VISION);
        }
        let max_tokens = head
            .raw("max_completion_tokens")
            .or_else(|| head.raw("max_tokens"))
            .or_else(|| head.raw("max_output_tokens"))
            .and_then(|v| serde_json::from_str::<u64>(v.get()).ok());
        let user = head.raw("user").and_then(Str::of);
        let text = if want_text {
            match messages {
                Some(m) => last_user_text(m),
                None => head.raw("prompt").and_then(Str::of),
            }
        } else {
            None
        };
        Signals {
            text,
            needs,
            prompt_tokens: (body_len / BYTES_PER_TOKEN) as u64,
            max_tokens,
            user,
        }
    }

    pub(crate) fn completion_estimate(&self) -> u64 {
        self.max_tokens.unwrap_or(DEFAULT_COMPLETION_ESTIMATE)
    }
}

/// The last user turn of a chat's `messages` or a Responses `input` (which may also be the
/// user's text itself).
fn last_user_text<'a>(messages: &'a RawValue) -> Option<Cow<'a, str>> {
    if let Some(s) = Str::of(messages) {
        return Some(s);
    }
    let list: Vec<Message<'a>> = serde_json::from_str(messages.get()).ok()?;
    let m = list.into_iter().rev().find(|m| m.role.as_deref() == Some("user"))?;
    let content = m.content?;
    if let Some(s) = Str::of(content) {
        return Some(s);
    }
    let parts: Vec<Part<'a>> = serde_json::from_str(content.get()).ok()?;
    let mut texts = parts.into_iter().filter_map(|p| p.text);
    let first = texts.next()?;
    match texts.next() {
        None => Some(first),
        Some(second) => {
            let mut all = first.into_owned();
            for t in std::iter::once(second).chain(texts) {
                all.push('\n');
                all.push_str(&t);
            }
            Some(Cow::Owned(all))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_needs_text_and_estimates() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"first"},{"role":"assistant","content":"ok"},{"role":"user","content":[{"type":"text","text":"what is"},{"type":"image_url","image_url":{"url":"data:x"}},{"type":"text","text":"this?"}]}],"tools":[{"type":"function"}],"response_format":{"type":"json_object"},"max_tokens":99,"user":"u-1"}"#;
        let head = RequestHead::parse(body).unwrap();
        let s = Signals::read(&head, body.len(), true);
        assert_eq!(s.text.as_deref(), Some("what is\nthis?"));
        assert!(
            s.needs.contains(
                Capabilities::TOOLS
                    .union(Capabilities::VISION)
                    .union(Capabilities::JSON)
            )
        );
        assert_eq!(s.max_tokens, Some(99));
        assert_eq!(s.user.as_deref(), Some("u-1"));
        assert_eq!(s.prompt_tokens, (body.len() / 4) as u64);

        let plain = br#"{"model":"m","messages":[{"role":"user","content":"hi \"there\""}],"tools":[]}"#;
        let head = RequestHead::parse(plain).unwrap();
        let s = Signals::read(&head, plain.len(), true);
        assert_eq!(s.text.as_deref(), Some("hi \"there\""));
        assert_eq!(s.needs, Capabilities::NONE);
        assert!(Signals::read(&head, plain.len(), false).text.is_none());
    }

    #[test]
    fn reads_a_responses_request() {
        let body = br#"{"model":"m","instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"describe"},{"type":"input_image","image_url":"data:x"}]},{"type":"function_call_output","call_id":"c1","output":"42"},{"type":"message","role":"user","content":"and now?"}],"tools":[{"type":"web_search"}],"text":{"format":{"type":"json_schema","name":"x","schema":{}}},"max_output_tokens":64}"#;
        let head = RequestHead::parse(body).unwrap();
        let s = Signals::read(&head, body.len(), true);
        assert_eq!(s.text.as_deref(), Some("and now?"));
        assert!(
            s.needs.contains(
                Capabilities::TOOLS
                    .union(Capabilities::VISION)
                    .union(Capabilities::JSON)
            )
        );
        assert_eq!(s.max_tokens, Some(64));
        let plain = br#"{"model":"m","input":"just a string","text":{"format":{"type":"text"}}}"#;
        let head = RequestHead::parse(plain).unwrap();
        let s = Signals::read(&head, plain.len(), true);
        assert_eq!(s.text.as_deref(), Some("just a string"));
        assert_eq!(s.needs, Capabilities::NONE);
    }
}
