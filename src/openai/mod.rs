//! The parts of the OpenAI wire format the sidecar must read: the head of a request (model,
//! stream flags), usage in responses, Server-Sent Events framing, and the error body shape.
//! Everything else in a body is carried through untouched, so fields OpenAI adds tomorrow keep
//! working without a sidecar release.

pub mod answer;
pub mod request;
pub mod sse;
pub mod usage;

pub use request::{RequestError, RequestHead};
pub use sse::SseScanner;
pub use usage::Usage;

/// The OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub(crate) fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": param, "code": code }
    });
    // Serialising a `Value` built from strings cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The OpenAI endpoints the sidecar serves itself (the rest pass through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// The Responses API (`POST /v1/responses`): routed, limited and accounted like chat; its
    /// streams are typed events that end with `response.completed`, not `[DONE]`.
    Responses,
}

impl Endpoint {
    pub(crate) const ALL: [Endpoint; 4] = [
        Endpoint::Chat,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
    ];

    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
        }
    }

    pub(crate) fn streams(self) -> bool {
        !matches!(self, Endpoint::Embeddings)
    }

    /// Whether the endpoint's streams take `stream_options.include_usage` (the Responses API
    /// always reports usage in its `response.completed` event and has no such option).
    pub(crate) fn stream_usage_option(self) -> bool {
        matches!(self, Endpoint::Chat | Endpoint::Completions)
    }

    /// What a whole answer of this endpoint must hold.
    pub(crate) fn expect(self) -> answer::Expect {
        match self {
            Endpoint::Embeddings => answer::Expect::Data,
            Endpoint::Chat | Endpoint::Completions => answer::Expect::Choices,
            Endpoint::Responses => answer::Expect::Output,
        }
    }
}
