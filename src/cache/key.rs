//! Cache keys. The exact key hashes everything that changes the answer; the semantic partition
//! key hashes the same minus the wording of the last user turn, which is what gets embedded.
//! A semantic hit is only ever looked for inside one partition, so a cached answer cannot be
//! served across tenants, routes, system prompts, earlier turns, tools, response formats or
//! sampling parameters — and never across `cache.version`s.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::openai::RequestHead;

pub type Key = [u8; 32];

/// Body fields that do not change the answer: transport, accounting and bookkeeping.
const IGNORED_FIELDS: &[&str] = &[
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Keys {
    pub(crate) exact: Key,
    /// `None` when the request cannot be served semantically (the last turn is not a plain
    /// user text, or it has images or audio).
    pub(crate) partition: Option<Key>,
    /// The text that is embedded and compared (the last user turn, or the prompt).
    pub(crate) query: Option<String>,
    /// `temperature` as sent (OpenAI's default, 1.0, when absent).
    pub(crate) temperature: f64,
}

/// Derives the keys of a chat or completions request. `scope` is everything outside the body
/// that separates caches: tenant, requested route, endpoint, cache version.
pub(crate) fn derive(scope: &[&str], head: &RequestHead<'_>) -> Option<Keys> {
    let mut fields: BTreeMap<&str, Value> = BTreeMap::new();
    for (k, raw) in head.fields() {
        if IGNORED_FIELDS.contains(&k) {
            continue;
        }
        // Values are re-serialised from `Value`, whose maps are sorted: key order and
        // whitespace in the app's JSON do not split the cache.
        fields.insert(k, serde_json::from_str(raw.get()).ok()?);
    }
    let temperature = fields.get("temperature").and_then(Value::as_f64).unwrap_or(1.0);
    // Each key serialises the fields once; the whole-body key is only wanted when there is
    // no query (hashing both was two serialisations per cacheable request, #19).
    let (exact, partition, query) = match take_query(&mut fields) {
        Some(q) => {
            let partition = hash(scope, &fields);
            // The exact key is the partition plus the normalised wording: repeats that differ
            // only in case, spacing, end punctuation or politeness hit without the embedder.
            let mut h = Sha256::new();
            h.update(partition);
            h.update(normalize(&q).as_bytes());
            (h.finalize().into(), Some(partition), Some(q))
        }
        None => (hash(scope, &fields), None, None),
    };
    Some(Keys {
        exact,
        partition,
        query,
        temperature,
    })
}

/// Removes the wording of the last user turn (or the prompt) from `fields`, returning it;
/// `fields` is left as it was when there is none.
fn take_query(fields: &mut BTreeMap<&str, Value>) -> Option<String> {
    if let Some(Value::Array(messages)) = fields.get_mut("messages") {
        let last = messages.last_mut()?;
        if last.get("role")? != "user" {
            return None;
        }
        let content = last.get_mut("content")?;
        let text = match content {
            Value::String(s) if s.trim().is_empty() => return None,
            Value::String(s) => std::mem::take(s),
            // Text parts only: an image or audio part makes the request exact-only.
            Value::Array(parts) => {
                let mut out = Vec::new();
                for p in parts.iter() {
                    if p.get("type")? != "text" {
                        return None;
                    }
                    out.push(p.get("text")?.as_str()?.to_owned());
                }
                out.join("\n")
            }
            _ => return None,
        };
        if text.trim().is_empty() {
            return None;
        }
        *content = Value::Null;
        return Some(text);
    }
    if let Some(Value::String(prompt)) = fields.get_mut("prompt")
        && !prompt.trim().is_empty()
    {
        return Some(std::mem::take(prompt));
    }
    None
}

/// Greetings and politeness at the start of a question that do not change what is asked
/// (longest first, so "hello there" goes whole).
const POLITE_PREFIXES: &[&str] = &[
    "hello there",
    "hi there",
    "hello",
    "kindly",
    "please",
    "hey",
    "pls",
    "plz",
    "hi",
];
/// The same at the end.
const POLITE_SUFFIXES: &[&str] = &[
    "thank you very much",
    "thanks a lot",
    "thank you",
    "cheers",
    "thanks",
    "please",
    "thx",
    "pls",
    "plz",
    "ty",
];

/// The wording of a question with what does not change it folded away: letter case outside
/// code spans and double quotes (`Foo` and "Foo" keep theirs), runs of whitespace, punctuation
/// at the end, and greetings or thanks at either end. Anything else — inner punctuation,
/// numbers, word order — is kept: those can change the question.
pub(crate) fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted: Option<char> = None;
    let mut space = false;
    for c in text.chars() {
        match quoted {
            Some(q) => {
                out.push(c);
                if c == q {
                    quoted = None;
                }
            }
            None if c == '`' || c == '"' => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                out.push(c);
                quoted = Some(c);
            }
            None if c.is_whitespace() => space = true,
            None => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                out.extend(c.to_lowercase());
            }
        }
    }
    let mut s = out.as_str();
    loop {
        let before = s.len();
        s = s.trim_end_matches(|c: char| matches!(c, '?' | '!' | '.' | ',' | ';' | ':' | '…') || c.is_whitespace());
        for suffix in POLITE_SUFFIXES {
            if let Some(rest) = s.strip_suffix(suffix)
                && (rest.is_empty() || rest.ends_with([' ', ',', '.', '!', '?']))
            {
                s = rest;
            }
        }
        s = s.trim_start_matches(|c: char| matches!(c, ',' | '!' | '.') || c.is_whitespace());
        for prefix in POLITE_PREFIXES {
            if let Some(rest) = s.strip_prefix(prefix)
                && (rest.starts_with([' ', ',', '!', '.']))
            {
                s = rest;
            }
        }
        if s.len() == before {
            break;
        }
    }
    // A question that is nothing but politeness keeps its own words.
    if s.is_empty() { out } else { s.to_owned() }
}

fn hash(scope: &[&str], fields: &BTreeMap<&str, Value>) -> Key {
    let mut h = Sha256::new();
    for s in scope {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    // Serialised straight into the digest (the same bytes `to_vec` made, without the
    // buffer); serialising a map of `Value`s cannot fail.
    let _ = serde_json::to_writer(Digesting(&mut h), fields);
    h.finalize().into()
}

/// A `Write` that feeds a SHA-256 digest.
struct Digesting<'a>(&'a mut Sha256);

impl std::io::Write for Digesting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(body: &str) -> Keys {
        derive(
            &["tenant-a", "auto", "chat", "v1"],
            &RequestHead::parse(body.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    /// Keys are stored (in Redis, shared by pods of several versions): the same request
    /// must keep its keys across releases. Values computed by the implementation before
    /// the single-serialisation change (#19).
    #[test]
    fn keys_stay_what_earlier_versions_computed() {
        let cases = [
            (
                r#"{"model":"auto","messages":[{"role":"system","content":"s"},{"role":"user","content":"Reset my password, please!"}],"temperature":0}"#,
                "50fe9f6fa80106a9a86dcc63c85d82884d4b3daa14e15561310b1918f1cee5b8",
                Some("6b121a5ea8be78803f6666e9a23e8129cf1e606631018c6d17ac3fb73b4b83ab"),
            ),
            (
                r#"{"model":"auto","messages":[{"role":"user","content":"   "}]}"#,
                "3c81d22b3514d2e17b9c669b5c184663f3d3515322ee6ff5b0bae5d54a406326",
                None,
            ),
            (
                r#"{"model":"m","prompt":"  "}"#,
                "39068cb22b147b76216dda43d26856ce1d790b81846db85c367c71d345578781",
                None,
            ),
            (
                r#"{"model":"m","prompt":"complete this"}"#,
                "65cb3c90dfb5c404fc2a517b0846a0248ab891148f9421160241f907cf1daade",
                Some("428487de5853421b82fef729fabc4784d7dac2fdbfcb10f1a0f8de660ce3f3df"),
            ),
            (
                r#"{"model":"auto","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"tools":[{"type":"function"}]}"#,
                "53d74e8f79851f830e9484addc382984d89b54fe0ef2cfdadc82c40b008bec65",
                Some("dcf469ef56f22be2f3b210f606eea11a4cef3cecee5b37d457f0baa55d4c1b6e"),
            ),
            (
                r#"{"model":"auto","messages":[{"role":"assistant","content":"x"}]}"#,
                "5480f883ba4a5000a7eb5a09685935e65539d5c20279296147669ae3342fef05",
                None,
            ),
        ];
        for (body, exact, partition) in cases {
            let k = derive(&["t", "auto", "chat", "v1"], &RequestHead::parse(body.as_bytes()).unwrap()).unwrap();
            assert_eq!(hex::encode(k.exact), exact, "{body}");
            assert_eq!(k.partition.map(hex::encode).as_deref(), partition, "{body}");
        }
    }

    #[test]
    fn formatting_and_transport_fields_do_not_change_keys() {
        let a = keys(r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let b = keys(
            r#"{ "temperature": 0, "stream": true, "user": "u1", "messages": [ {"content":"hi","role":"user"} ], "model": "auto" }"#,
        );
        assert_eq!(a.exact, b.exact);
        assert_eq!(a.partition, b.partition);
        assert_eq!(a.query.as_deref(), Some("hi"));
        assert_eq!(a.temperature, 0.0);
    }

    #[test]
    fn the_last_user_wording_changes_only_the_exact_key() {
        let a = keys(
            r#"{"model":"auto","messages":[{"role":"system","content":"s"},{"role":"user","content":"reset my password"}]}"#,
        );
        let b = keys(
            r#"{"model":"auto","messages":[{"role":"system","content":"s"},{"role":"user","content":"how to change my password"}]}"#,
        );
        assert_ne!(a.exact, b.exact);
        assert_eq!(a.partition, b.partition);
    }

    #[test]
    fn repeats_differing_in_case_spacing_punctuation_or_politeness_share_the_exact_key() {
        let body = |q: &str| {
            format!(
                r#"{{"model":"auto","messages":[{{"role":"user","content":{}}}]}}"#,
                Value::from(q)
            )
        };
        let base = keys(&body("What is the capital city of France?"));
        for same in [
            "what is the capital city of france?",
            "WHAT IS THE CAPITAL CITY OF FRANCE",
            "What  is the capital\ncity of France ?!",
            "Hi, what is the capital city of France? Thanks!",
            "please what is the capital city of France, thank you.",
        ] {
            assert_eq!(keys(&body(same)).exact, base.exact, "{same:?}");
        }
        for different in [
            "What is the capital city of Germany?",
            "What was the capital city of France?",
            "What is the capital city of France in 1200?",
        ] {
            assert_ne!(keys(&body(different)).exact, base.exact, "{different:?}");
        }
        // Case inside code spans and quotes is the question.
        assert_ne!(
            keys(&body("What does `Foo` do?")).exact,
            keys(&body("What does `foo` do?")).exact
        );
        assert_ne!(
            keys(&body(r#"Translate "Hello""#)).exact,
            keys(&body(r#"Translate "hello""#)).exact
        );
        assert_eq!(normalize("Thanks"), "thanks");
        assert_eq!(normalize("  Hello there, HOW are you?  "), "how are you");
    }

    #[test]
    fn context_changes_the_partition() {
        let base =
            keys(r#"{"model":"auto","messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}]}"#);
        for other in [
            r#"{"model":"auto","messages":[{"role":"system","content":"t"},{"role":"user","content":"q"}]}"#,
            r#"{"model":"auto","messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}],"temperature":0.5}"#,
            r#"{"model":"auto","messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}],"tools":[{"type":"function"}]}"#,
            r#"{"model":"auto","messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}],"response_format":{"type":"json_object"}}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}]}"#,
        ] {
            assert_ne!(keys(other).partition, base.partition, "{other}");
        }
        let other_tenant = derive(
            &["tenant-b", "auto", "chat", "v1"],
            &RequestHead::parse(
                br#"{"model":"auto","messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}]}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_ne!(other_tenant.exact, base.exact);
        assert_ne!(other_tenant.partition, base.partition);
    }

    #[test]
    fn non_text_turns_are_exact_only() {
        let k = keys(
            r#"{"model":"auto","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        );
        assert!(k.partition.is_none());
        let k =
            keys(r#"{"model":"auto","messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#);
        assert!(k.partition.is_none());
        let k = keys(
            r#"{"model":"auto","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        );
        assert_eq!(k.query.as_deref(), Some("a\nb"));
    }
}
