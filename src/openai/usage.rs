//! Token usage as providers report it, read from a JSON response or a stream chunk.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache (billed at the cached rate).
    pub cached_tokens: u64,
}

impl Usage {
    /// What this usage costs in USD at `pricing`: the one place a request's cost is computed
    /// (the response header, the metrics and budgets, background verifications).
    pub(crate) fn cost(&self, pricing: &crate::config::Pricing) -> f64 {
        pricing.cost(self.prompt_tokens, self.cached_tokens, self.completion_tokens)
    }
}

#[derive(Deserialize)]
pub(super) struct RawUsage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: Option<u64>,
    #[serde(default, alias = "input_tokens_details")]
    prompt_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<RawUsage> for Usage {
    fn from(r: RawUsage) -> Self {
        Usage {
            prompt_tokens: r.prompt_tokens.unwrap_or(0),
            completion_tokens: r.completion_tokens.unwrap_or(0),
            cached_tokens: r.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// What one JSON document (a full response or one stream chunk) says about usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageReport {
    pub(crate) usage: Usage,
    /// The chunk carries no choices: it exists only to report usage.
    pub(crate) usage_only: bool,
}

/// Reads `usage` from a JSON document. `None` when there is none (or the JSON is not an object).
pub(crate) fn parse_usage(json: &[u8]) -> Option<UsageReport> {
    let w: WithUsage = serde_json::from_slice(json).ok()?;
    let usage = w.usage?.into();
    Some(UsageReport {
        usage,
        usage_only: w.choices.is_none_or(|c| c.is_empty()),
    })
}

#[derive(Deserialize)]
struct InResponse {
    #[serde(default)]
    response: Option<WithUsage>,
}

/// Reads `response.usage` from a Responses API stream event (`response.completed`,
/// `response.incomplete`, `response.failed` carry the whole response object).
pub(crate) fn parse_response_usage(json: &[u8]) -> Option<Usage> {
    let w: InResponse = serde_json::from_slice(json).ok()?;
    Some(w.response?.usage?.into())
}

#[derive(Deserialize)]
struct WithChoices {
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    finish_reason: Option<String>,
}

/// `choices[].finish_reason` of a JSON answer, in order (for traces).
pub(crate) fn finish_reasons(json: &[u8]) -> Vec<String> {
    serde_json::from_slice::<WithChoices>(json)
        .map(|w| w.choices.into_iter().filter_map(|c| c.finish_reason).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_usage_with_cached_tokens() {
        let r = parse_usage(br#"{"choices":[{"index":0}],"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4}}}"#).unwrap();
        assert_eq!(
            r.usage,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                cached_tokens: 4
            }
        );
        assert!(!r.usage_only);
    }

    #[test]
    fn reads_usage_nested_in_a_responses_event() {
        let event = br#"{"type":"response.completed","response":{"id":"resp_1","output":[],"usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":0},"output_tokens":4,"total_tokens":13}},"sequence_number":7}"#;
        let u = parse_response_usage(event).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (9, 4));
        assert_eq!(
            parse_response_usage(br#"{"type":"response.created","response":{"usage":null}}"#),
            None
        );
    }

    #[test]
    fn finish_reasons_in_order() {
        let json = br#"{"choices":[{"finish_reason":"stop"},{"finish_reason":null},{"finish_reason":"tool_calls"}]}"#;
        assert_eq!(finish_reasons(json), ["stop", "tool_calls"]);
        assert!(finish_reasons(b"[]").is_empty());
    }

    #[test]
    fn usage_only_chunk_and_null_usage() {
        assert!(
            parse_usage(br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#)
                .unwrap()
                .usage_only
        );
        assert_eq!(parse_usage(br#"{"choices":[{}],"usage":null}"#), None);
        assert_eq!(parse_usage(b"not json"), None);
    }
}
