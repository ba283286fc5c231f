//! The OpenAI-compatible protocol (OpenAI, Azure OpenAI, vLLM, Ollama): bodies go through
//! unchanged except for the model name and, for streams, the usage request.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::adapter::{Adapter, StreamTranslate, Unsupported};
use crate::openai::RequestHead;

pub struct OpenAiCompat;

impl Adapter for OpenAiCompat {
    fn path(&self, endpoint: &'static str) -> Result<&'static str, Unsupported> {
        Ok(endpoint)
    }

    fn request(
        &self,
        head: &RequestHead<'_>,
        body: &Bytes,
        upstream_model: &str,
        add_usage: bool,
    ) -> Result<Bytes, Unsupported> {
        Ok(if head.needs_rewrite(upstream_model, add_usage) {
            Bytes::from(head.rewrite(upstream_model, add_usage))
        } else {
            body.clone()
        })
    }

    fn adds_usage_chunk(&self, inject_stream_usage: bool) -> bool {
        inject_stream_usage
    }

    fn response(&self, _status: StatusCode, body: Bytes, _model: &str) -> Option<Bytes> {
        Some(body)
    }

    fn stream(&self, _model: &str, _include_usage: bool) -> Option<Box<dyn StreamTranslate>> {
        None
    }

    fn default_headers(&self, _headers: &mut HeaderMap) {}
}
