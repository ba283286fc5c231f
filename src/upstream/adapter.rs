//! One trait for every provider's wire protocol. The request path speaks OpenAI's API; an
//! adapter says where each endpoint lives on its provider, turns the app's request body into
//! the provider's, and turns the provider's answers (whole bodies and event streams) back into
//! OpenAI's shape. `openai_compat` is the identity (plus the model-name rewrite); `anthropic`
//! translates the Messages API.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::openai::RequestHead;

/// Rewrites a provider's event stream into OpenAI's, as bytes arrive.
pub trait StreamTranslate: Send {
    /// Feeds bytes from the provider; returns the OpenAI SSE bytes they complete.
    fn feed(&mut self, data: &[u8]) -> Bytes;
}

/// Why a provider cannot take a request (the attempt moves on to the next candidate).
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    /// The provider has no such endpoint.
    #[error("{provider} serves chat completions only, not {endpoint}")]
    Endpoint {
        provider: &'static str,
        endpoint: &'static str,
    },
    /// The request cannot be said in the provider's protocol.
    #[error(transparent)]
    Translate(#[from] super::anthropic::TranslateError),
}

pub trait Adapter: Send + Sync + 'static {
    /// The provider's path for an OpenAI endpoint path (`/chat/completions`, `/completions`,
    /// `/embeddings`), or why it has none.
    fn path(&self, endpoint: &'static str) -> Result<&'static str, Unsupported>;

    /// The body to send: the app's request for `upstream_model`. `add_usage` asks an
    /// OpenAI-style stream to report usage.
    fn request(
        &self,
        head: &RequestHead<'_>,
        body: &Bytes,
        upstream_model: &str,
        add_usage: bool,
    ) -> Result<Bytes, Unsupported>;

    /// Whether this provider's streams report usage in a chunk the app did not ask for, which
    /// the relay must hide (`inject_stream_usage` for OpenAI-compatible providers).
    fn adds_usage_chunk(&self, inject_stream_usage: bool) -> bool;

    /// A whole response body in OpenAI's shape, named `model`. `None` when it cannot be read.
    fn response(&self, status: StatusCode, body: Bytes, model: &str) -> Option<Bytes>;

    /// A translator for event streams, `None` when they already are OpenAI's.
    fn stream(&self, model: &str, include_usage: bool) -> Option<Box<dyn StreamTranslate>>;

    /// Headers this protocol needs on every request, unless the provider's config sets them.
    fn default_headers(&self, headers: &mut HeaderMap);
}
