//! A provider's `/v1/embeddings` as the semantic cache's embedder (`cache.semantic.embedder`):
//! one request per batch, through the provider's own client (TLS, credentials, headers,
//! timeouts) and concurrency slots, and a strict read of the answer: exactly one finite,
//! non-zero vector per text, all of one width (the configured one when set), returned at unit
//! length whatever the service sends.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use http::Uri;
use serde::Deserialize;

use super::{PostError, Provider};
use crate::config::{ConfigIssue, RemoteEmbedderConfig};
use crate::embed::EmbedError;
use crate::embed::remote::{EmbedFuture, Remote};

/// The largest answer read: 2,048 texts × 3,072 floats as JSON text is ~120 MiB; 64 × 3,072
/// (the default batch of the widest OpenAI model) ~4 MiB.
const MAX_ANSWER: usize = 64 << 20;

/// The remote embedder's client; cheap to clone.
#[derive(Clone)]
pub(crate) struct Embeddings(Arc<Inner>);

struct Inner {
    provider: Provider,
    uri: Uri,
    model: String,
    dimensions: Option<usize>,
}

impl Embeddings {
    pub(crate) fn new(config: &RemoteEmbedderConfig) -> Result<Self, ConfigIssue> {
        let provider = Provider::new(config.provider.clone(), &[1])?;
        let uri = provider.uri("/embeddings", None).map_err(|e| {
            ConfigIssue::new(
                format!("providers.{}.base_url", config.provider.name),
                format!("no embeddings URL can be made from it: {e}"),
            )
        })?;
        Ok(Embeddings(Arc::new(Inner {
            provider,
            uri,
            model: config.model.clone(),
            dimensions: config.dimensions,
        })))
    }
}

impl Remote for Embeddings {
    fn embed(&self, texts: Vec<String>, deadline: Instant) -> EmbedFuture {
        let inner = self.0.clone();
        Box::pin(async move { inner.embed(texts, tokio::time::Instant::from_std(deadline)).await })
    }
}

impl Inner {
    async fn embed(&self, texts: Vec<String>, deadline: tokio::time::Instant) -> Result<Vec<Vec<f32>>, EmbedError> {
        let n = texts.len();
        let mut request = serde_json::json!({
            "model": self.model,
            "input": texts,
            "encoding_format": "float",
        });
        if let Some(d) = self.dimensions {
            request["dimensions"] = d.into();
        }
        let body = serde_json::to_vec(&request).map_err(|e| EmbedError::Remote(e.to_string()))?;
        let answer = self
            .provider
            .post_json(self.uri.clone(), body, deadline, MAX_ANSWER)
            .await
            .map_err(|e| match e {
                PostError::Timeout => EmbedError::Timeout,
                PostError::Failed(why) => EmbedError::Remote(why),
            })?;
        parse(&answer, n, self.dimensions).map_err(EmbedError::Remote)
    }
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: Option<usize>,
    embedding: Vector,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    /// Little-endian f32s (`encoding_format: base64`), should a service ignore the request's
    /// `float`.
    Base64(String),
}

/// One unit-length vector per text, in the texts' order.
fn parse(body: &[u8], n: usize, dimensions: Option<usize>) -> Result<Vec<Vec<f32>>, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("not an embeddings answer: {e}"))?;
    if answer.data.len() != n {
        return Err(format!("{} vectors for {n} texts", answer.data.len()));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
    let mut width = dimensions;
    for (i, item) in answer.data.into_iter().enumerate() {
        let at = item.index.unwrap_or(i);
        let mut v = match item.embedding {
            Vector::Floats(v) => v,
            Vector::Base64(b) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| format!("vector {at} is neither numbers nor base64"))?;
                if bytes.len() % 4 != 0 {
                    return Err(format!(
                        "vector {at}: {} bytes is not a whole number of floats",
                        bytes.len()
                    ));
                }
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
        };
        match width {
            Some(w) if w != v.len() => {
                return Err(format!("vector {at} has {} dimensions, not {w}", v.len()));
            }
            _ => width = Some(v.len()),
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if v.is_empty() || !norm.is_finite() || norm == 0.0 {
            return Err(format!("vector {at} is empty, zero or not finite"));
        }
        v.iter_mut().for_each(|x| *x /= norm);
        match out.get_mut(at) {
            Some(slot @ None) => *slot = Some(v),
            Some(Some(_)) => return Err(format!("index {at} answered twice")),
            None => return Err(format!("index {at} is past the {n} texts sent")),
        }
    }
    // Every index in 0..n once, n items: none can be missing.
    Ok(out.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly_and_in_the_texts_order() {
        let ok =
            br#"{"object":"list","data":[{"index":1,"embedding":[0,3]},{"index":0,"embedding":[4,0]}],"model":"m"}"#;
        assert_eq!(parse(ok, 2, None).unwrap(), vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(parse(ok, 2, Some(2)).unwrap().len(), 2);
        let b64 = base64::engine::general_purpose::STANDARD
            .encode([2f32, 0.0].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        let answer = format!(r#"{{"data":[{{"embedding":"{b64}"}}]}}"#);
        assert_eq!(parse(answer.as_bytes(), 1, None).unwrap(), vec![vec![1.0, 0.0]]);
        for (bad, n, dims, why) in [
            (
                &br#"{"data":[{"embedding":[1,0]}]}"#[..],
                2,
                None,
                "1 vectors for 2 texts",
            ),
            (br#"{"data":[{"embedding":[1,0]}]}"#, 1, Some(3), "2 dimensions, not 3"),
            (
                br#"{"data":[{"embedding":[1,0]},{"embedding":[1]}]}"#,
                2,
                None,
                "1 dimensions, not 2",
            ),
            (br#"{"data":[{"embedding":[0,0]}]}"#, 1, None, "empty, zero"),
            (br#"{"data":[{"embedding":[]}]}"#, 1, None, "empty, zero"),
            (
                br#"{"data":[{"index":0,"embedding":[1]},{"index":0,"embedding":[1]}]}"#,
                2,
                None,
                "twice",
            ),
            (
                br#"{"data":[{"index":5,"embedding":[1]}]}"#,
                1,
                None,
                "past the 1 texts",
            ),
            (
                br#"{"data":[{"embedding":"%%"}]}"#,
                1,
                None,
                "neither numbers nor base64",
            ),
            (br#"{"error":{"message":"no"}}"#, 1, None, "not an embeddings answer"),
        ] {
            let e = parse(bad, n, dims).unwrap_err();
            assert!(e.contains(why), "{e} (wanted {why})");
        }
        // Past f32's range: refused, however serde reads it.
        assert!(parse(br#"{"data":[{"embedding":[1e39]}]}"#, 1, None).is_err());
    }
}
