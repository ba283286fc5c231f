//! The optional pair verifier: a BERT WordPiece sequence-classification model exported to ONNX
//! (a cross-encoder such as stsb-TinyBERT-L-4) that reads two questions together —
//! `[CLS] a [SEP] b [SEP]`, segment ids 0 then 1 — and scores whether they ask the same thing.
//! A cross-encoder sees both texts at once, which a bi-encoder's two vectors cannot; it costs
//! one model run per candidate, so the cache asks it only about candidates that already passed
//! the threshold and the guard. Runs on the embedder's thread, like the embedding model.

use std::path::Path;

use ort::session::Session;
use ort::value::Tensor;

use super::wordpiece::WordPiece;
use super::{EmbedError, session};

/// The longest pair the verifier reads, special tokens included; longer pairs are not scored
/// (the cache keeps such queries exact-only anyway: each side is at most 128 tokens).
pub(crate) const MAX_PAIR_TOKENS: usize = 256;

pub struct PairModel {
    session: Session,
    tokenizer: WordPiece,
    /// The model takes `token_type_ids` (BERT exports do; some distilled ones do not).
    segments: bool,
    ids: Vec<u32>,
}

impl PairModel {
    /// Loads `model` (ONNX) and `tokenizer` (a WordPiece `tokenizer.json`) with the ONNX
    /// Runtime library at `library`.
    pub fn load(library: &Path, model: &Path, tokenizer: &Path) -> Result<PairModel, EmbedError> {
        for f in [library, model, tokenizer] {
            if !f.is_file() {
                return Err(EmbedError::Missing(f.to_owned()));
            }
        }
        let json = std::fs::read_to_string(tokenizer)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", tokenizer.display())))?;
        let tokenizer =
            WordPiece::from_json(&json).map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", tokenizer.display())))?;
        let session = session(library, model, 1)?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for needed in ["input_ids", "attention_mask"] {
            if !names.contains(&needed) {
                return Err(EmbedError::Model(format!(
                    "{}: the verifier must take `input_ids` and `attention_mask` (a BERT sequence-classification export); it takes {names:?}",
                    model.display()
                )));
            }
        }
        let segments = names.contains(&"token_type_ids");
        Ok(PairModel {
            session,
            tokenizer,
            segments,
            ids: Vec::new(),
        })
    }

    /// The probability that `a` and `b` ask the same thing: the sigmoid of a single logit, or
    /// the second class's softmax share of two. `None` when the pair is longer than
    /// [`MAX_PAIR_TOKENS`].
    pub fn score(&mut self, a: &str, b: &str) -> Result<Option<f32>, EmbedError> {
        self.ids.clear();
        // Each side to one token past the room left, which tells a text that fits from one cut.
        self.tokenizer.encode(a, MAX_PAIR_TOKENS + 1, &mut self.ids);
        let first = self.ids.len();
        self.tokenizer.encode(b, MAX_PAIR_TOKENS + 1, &mut self.ids);
        // `b`'s own `[CLS]`: the pair has one, at the start.
        self.ids.remove(first);
        let n = self.ids.len();
        if n > MAX_PAIR_TOKENS {
            return Ok(None);
        }
        let shape = [1i64, n as i64];
        let ids: Vec<i64> = self.ids.iter().map(|&i| i64::from(i)).collect();
        let types: Vec<i64> = (0..n).map(|t| i64::from(t >= first)).collect();
        let inf = |e: ort::Error| EmbedError::Inference(e.to_string());
        let mut inputs = ort::inputs![
            "input_ids" => Tensor::from_array((shape, ids)).map_err(inf)?,
            "attention_mask" => Tensor::from_array((shape, vec![1i64; n])).map_err(inf)?,
        ];
        if self.segments {
            inputs.push((
                "token_type_ids".into(),
                Tensor::from_array((shape, types)).map_err(inf)?.into(),
            ));
        }
        let outputs = self.session.run(inputs).map_err(inf)?;
        let (_, logits) = outputs[0].try_extract_tensor::<f32>().map_err(inf)?;
        match *logits {
            [x] => Ok(Some(1.0 / (1.0 + (-x).exp()))),
            [x0, x1] => {
                let m = x0.max(x1);
                let (e0, e1) = ((x0 - m).exp(), (x1 - m).exp());
                Ok(Some(e1 / (e0 + e1)))
            }
            _ => Err(EmbedError::Inference(format!(
                "the verifier gave {} logits for one pair: expected 1 (a score) or 2 (different, same)",
                logits.len()
            ))),
        }
    }
}
