//! Whether a provider's successful answer is the document that was asked for. A 200 is a
//! promise about the body, and providers break it: truncated JSON, an empty body, an HTML
//! error page from a proxy in front of the provider, `{"error":…}` with status 200. Such a body
//! must be a provider failure (retried, failed over, counted by the breaker) and never reach
//! the app or a cache as if it were an answer. The check is one parse, which also yields the
//! usage the request is accounted with, so a valid answer costs no second pass.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::usage::{RawUsage, Usage};

/// The top-level array an endpoint's answer must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Chat and text completions: `choices`.
    Choices,
    /// Embeddings: `data`.
    Data,
    /// The Responses API: `output`.
    Output,
}

/// How an answer body failed the check. The text is safe to show: it never quotes more than
/// a short, sanitised start of the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("an empty body")]
    Empty,
    #[error("a body that is not JSON (it starts {0:?})")]
    NotJson(String),
    #[error("invalid or truncated JSON ({0})")]
    Invalid(String),
    #[error("JSON that is not an object")]
    NotObject,
    #[error("an error object despite its success status{0}")]
    ErrorObject(String),
    #[error("JSON without its `{0}` array")]
    Missing(&'static str),
}

#[derive(Deserialize)]
struct Shape {
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    data: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    output: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    error: Option<ErrorField>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct ErrorField {
    #[serde(default)]
    message: Option<String>,
}

/// Checks a whole answer body; on success returns its usage, when it reports one.
pub(crate) fn check(body: &[u8], expect: Expect) -> Result<Option<Usage>, Malformed> {
    let trimmed = body.trim_ascii_start();
    match trimmed.first() {
        None => return Err(Malformed::Empty),
        Some(b'{') => {}
        Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
            return Err(match serde_json::from_slice::<IgnoredAny>(trimmed) {
                Ok(_) => Malformed::NotObject,
                Err(_) => Malformed::NotJson(sample(trimmed)),
            });
        }
        Some(_) => return Err(Malformed::NotJson(sample(trimmed))),
    }
    // Syntax errors and fields of the wrong type (`"choices": "x"`) alike.
    let shape: Shape = serde_json::from_slice(trimmed).map_err(|e| Malformed::Invalid(e.to_string()))?;
    if let Some(err) = shape.error {
        let message = err
            .message
            .map(|m| format!(": {}", m.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        return Err(Malformed::ErrorObject(message));
    }
    let (present, name) = match expect {
        Expect::Choices => (shape.choices.is_some(), "choices"),
        Expect::Data => (shape.data.is_some(), "data"),
        Expect::Output => (shape.output.is_some(), "output"),
    };
    if !present {
        return Err(Malformed::Missing(name));
    }
    Ok(shape.usage.map(Usage::from))
}

/// The `id` of a Responses API answer (checked already), for the provider affinity.
pub(crate) fn response_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        #[serde(default)]
        id: Option<String>,
    }
    serde_json::from_slice::<Id>(body).ok()?.id
}

/// The first few printable characters of a body, for an error message.
fn sample(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(24)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_answer_passes_with_its_usage() {
        let body =
            br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let u = check(body, Expect::Choices).unwrap().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 1));
        assert_eq!(check(br#"{"data":[]}"#, Expect::Data), Ok(None));
        let response = br#"{"id":"resp_1","object":"response","status":"completed","error":null,"output":[{"type":"message","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":2},"output_tokens":1,"total_tokens":8}}"#;
        let u = check(response, Expect::Output).unwrap().unwrap();
        assert_eq!((u.prompt_tokens, u.cached_tokens, u.completion_tokens), (7, 2, 1));
    }

    #[test]
    fn broken_bodies_are_named() {
        assert_eq!(check(b"", Expect::Choices), Err(Malformed::Empty));
        assert_eq!(check(b"  \n", Expect::Choices), Err(Malformed::Empty));
        assert!(
            matches!(check(b"<html><body>502</body>", Expect::Choices), Err(Malformed::NotJson(s)) if s.starts_with("<html>"))
        );
        assert!(matches!(
            check(br#"{"choices":[{"mess"#, Expect::Choices),
            Err(Malformed::Invalid(_))
        ));
        assert_eq!(check(b"[1,2]", Expect::Choices), Err(Malformed::NotObject));
        assert_eq!(
            check(br#"{"object":"list"}"#, Expect::Data),
            Err(Malformed::Missing("data"))
        );
        assert_eq!(
            check(br#"{"data":[]}"#, Expect::Choices),
            Err(Malformed::Missing("choices"))
        );
        assert_eq!(
            check(br#"{"object":"response","status":"completed"}"#, Expect::Output),
            Err(Malformed::Missing("output"))
        );
        assert_eq!(
            check(
                br#"{"object":"response","status":"failed","output":[],"error":{"code":"server_error","message":"boom"}}"#,
                Expect::Output
            ),
            Err(Malformed::ErrorObject(": boom".into()))
        );
        assert!(matches!(
            check(br#"{"choices":"no"}"#, Expect::Choices),
            Err(Malformed::Invalid(_))
        ));
        assert_eq!(
            check(br#"{"error":{"message":"overloaded"}}"#, Expect::Choices),
            Err(Malformed::ErrorObject(": overloaded".into()))
        );
        assert!(matches!(
            check(b"data: {\"choices\":[]}\n\n", Expect::Choices),
            Err(Malformed::NotJson(_))
        ));
    }
}
