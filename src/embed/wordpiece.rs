//! BERT's uncased WordPiece tokenizer, as all-MiniLM-L6-v2's `tokenizer.json` defines it:
//! special tokens matched in the raw text, then BertNormalizer (drop control characters, one
//! kind of space, spaces around CJK ideographs, NFD without non-spacing marks, lower case),
//! BertPreTokenizer (split at whitespace, punctuation on its own), greedy longest-match
//! WordPiece with `##` continuations, and `[CLS] … [SEP]`.
//!
//! Written for this one model family instead of using the `tokenizers` crate, whose general
//! pipeline held ~6 MB of vocabulary maps, made ~380 allocations per query and brought a
//! thread pool; this one keeps the vocabulary in one string with two index tables and reuses
//! its buffers. It uses the same Unicode tables as that crate (`unicode_categories`,
//! `unicode-normalization-alignments`) and is checked against it token for token
//! (`tests/wordpiece.rs`). A `tokenizer.json` of another shape is refused at load, by name.

use std::collections::HashMap;

use serde::Deserialize;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("not valid tokenizer JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported tokenizer: {0} (only BERT-style uncased WordPiece is supported)")]
    Unsupported(String),
    #[error("the vocabulary has no {0} token")]
    MissingToken(&'static str),
}

#[derive(Deserialize)]
struct RawFile {
    normalizer: Option<RawNormalizer>,
    pre_tokenizer: Option<RawTyped>,
    model: RawModel,
    #[serde(default)]
    added_tokens: Vec<RawAdded>,
}

#[derive(Deserialize)]
struct RawTyped {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct RawNormalizer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    clean_text: bool,
    #[serde(default)]
    handle_chinese_chars: bool,
    strip_accents: Option<bool>,
    #[serde(default)]
    lowercase: bool,
}

#[derive(Deserialize)]
struct RawModel {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    unk_token: String,
    continuing_subword_prefix: Option<String>,
    max_input_chars_per_word: Option<usize>,
}

#[derive(Deserialize)]
struct RawAdded {
    id: u32,
    content: String,
    special: bool,
    #[serde(default)]
    normalized: bool,
}

/// FNV-1a: the tables are fixed at load, so lookups cannot be steered into long chains by
/// input, and the keys are a few bytes long.
fn hash(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub struct WordPiece {
    /// Every token's text, in id order; `starts[id]..starts[id + 1]` is token `id`.
    text: String,
    starts: Vec<u32>,
    /// Ids of tokens that may begin a word, by the hash of their whole text.
    words: hashbrown::HashTable<u32>,
    /// Ids of continuation tokens (`##ing`), by the hash of their text after the prefix.
    pieces: hashbrown::HashTable<u32>,
    prefix_len: usize,
    unk: u32,
    cls: u32,
    sep: u32,
    max_chars: usize,
    /// Special tokens matched in the raw text before normalisation (`[MASK]`, `[SEP]`…).
    specials: Vec<(String, u32)>,
    /// Work buffers, kept between calls.
    cleaned: String,
    normalized: String,
}

impl WordPiece {
    pub fn from_json(json: &str) -> Result<WordPiece, TokenizerError> {
        let raw: RawFile = serde_json::from_str(json)?;
        let unsupported = |what: String| Err(TokenizerError::Unsupported(what));
        match &raw.normalizer {
            Some(n)
                if n.kind == "BertNormalizer"
                    && n.clean_text
                    && n.handle_chinese_chars
                    && n.lowercase
                    && n.strip_accents.unwrap_or(true) => {}
            Some(n) => return unsupported(format!("normalizer {} with other settings than BERT uncased", n.kind)),
            None => return unsupported("no normalizer".into()),
        }
        match &raw.pre_tokenizer {
            Some(p) if p.kind == "BertPreTokenizer" => {}
            Some(p) => return unsupported(format!("pre_tokenizer {}", p.kind)),
            None => return unsupported("no pre_tokenizer".into()),
        }
        if raw.model.kind != "WordPiece" {
            return unsupported(format!("model {}", raw.model.kind));
        }
        if let Some(a) = raw.added_tokens.iter().find(|a| !a.special || a.normalized) {
            return unsupported(format!("added token {:?} that is not a raw special token", a.content));
        }
        let prefix = raw.model.continuing_subword_prefix.unwrap_or_else(|| "##".into());
        let vocab = raw.model.vocab;
        let n = vocab.len();
        // Ids must be 0..n, each once: the model's embedding table is indexed by them.
        let mut by_id: Vec<Option<&str>> = vec![None; n];
        for (token, &id) in &vocab {
            match by_id.get_mut(id as usize) {
                Some(slot @ None) => *slot = Some(token),
                _ => return unsupported(format!("vocabulary ids are not 0..{n} (token {token:?} has id {id})")),
            }
        }
        let mut text = String::with_capacity(vocab.keys().map(String::len).sum());
        let mut starts = Vec::with_capacity(n + 1);
        for token in by_id.iter().flatten() {
            starts.push(text.len() as u32);
            text.push_str(token);
        }
        starts.push(text.len() as u32);
        let plen = prefix.len();
        let token = |i: u32| &text[starts[i as usize] as usize..starts[i as usize + 1] as usize];
        let (mut words, mut pieces) = (hashbrown::HashTable::new(), hashbrown::HashTable::new());
        for id in 0..n as u32 {
            let t = token(id);
            words.insert_unique(hash(t.as_bytes()), id, |&i| hash(token(i).as_bytes()));
            if let Some(rest) = t.strip_prefix(prefix.as_str())
                && !rest.is_empty()
            {
                pieces.insert_unique(hash(rest.as_bytes()), id, |&i| hash(&token(i).as_bytes()[plen..]));
            }
        }
        let mut wp = WordPiece {
            text,
            starts,
            words,
            pieces,
            prefix_len: plen,
            unk: 0,
            cls: 0,
            sep: 0,
            max_chars: raw.model.max_input_chars_per_word.unwrap_or(100),
            specials: raw.added_tokens.into_iter().map(|a| (a.content, a.id)).collect(),
            cleaned: String::new(),
            normalized: String::new(),
        };
        wp.unk = wp
            .word_id(&raw.model.unk_token)
            .ok_or(TokenizerError::MissingToken("unk"))?;
        wp.cls = wp.word_id("[CLS]").ok_or(TokenizerError::MissingToken("[CLS]"))?;
        wp.sep = wp.word_id("[SEP]").ok_or(TokenizerError::MissingToken("[SEP]"))?;
        wp.specials.retain(|(s, _)| !s.is_empty());
        Ok(wp)
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn vocab_size(&self) -> usize {
        self.starts.len() - 1
    }

    /// A token's text (`##ing` for a continuation piece); empty for an unknown id.
    pub(crate) fn token_text(&self, id: u32) -> &str {
        if (id as usize) + 1 < self.starts.len() {
            self.token(id)
        } else {
            ""
        }
    }

    fn token(&self, id: u32) -> &str {
        &self.text[self.starts[id as usize] as usize..self.starts[id as usize + 1] as usize]
    }

    fn word_id(&self, s: &str) -> Option<u32> {
        self.words.find(hash(s.as_bytes()), |&i| self.token(i) == s).copied()
    }

    fn piece_id(&self, s: &str) -> Option<u32> {
        let p = self.prefix_len;
        self.pieces
            .find(hash(s.as_bytes()), |&i| self.token(i).get(p..) == Some(s))
            .copied()
    }

    /// Appends `[CLS]`, the text's token ids (at most `max_tokens - 2`) and `[SEP]` to `out`.
    pub fn encode(&mut self, text: &str, max_tokens: usize, out: &mut Vec<u32>) {
        let limit = out.len() + max_tokens.saturating_sub(2);
        out.push(self.cls);
        let mut rest = text;
        while !rest.is_empty() && out.len() <= limit {
            // The earliest special token, longest at a tie (as an Aho-Corasick leftmost-longest
            // match would find it).
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            let (plain, special) = match next {
                Some((at, len, id)) => (&rest[..at], Some((id, at + len))),
                None => (rest, None),
            };
            self.encode_plain(plain, limit, out);
            match special {
                Some((id, end)) => {
                    if out.len() <= limit {
                        out.push(id);
                    }
                    rest = &rest[end..];
                }
                None => rest = "",
            }
        }
        out.truncate(limit + 1);
        out.push(self.sep);
    }

    fn encode_plain(&mut self, text: &str, limit: usize, out: &mut Vec<u32>) {
        let mut cleaned = std::mem::take(&mut self.cleaned);
        let mut normalized = std::mem::take(&mut self.normalized);
        cleaned.clear();
        normalized.clear();
        for c in text.chars() {
            if c == '\0' || c == '\u{fffd}' || is_control(c) {
                continue;
            }
            if is_chinese_char(c) {
                cleaned.push(' ');
                cleaned.push(c);
                cleaned.push(' ');
            } else if is_whitespace(c) {
                cleaned.push(' ');
            } else {
                cleaned.push(c);
            }
        }
        for (c, _) in cleaned.as_str().nfd() {
            if !c.is_mark_nonspacing() {
                normalized.extend(c.to_lowercase());
            }
        }
        let mut start = None;
        for (i, c) in normalized.char_indices() {
            if out.len() > limit {
                break;
            }
            let space = c.is_whitespace();
            if space || is_punctuation(c) {
                if let Some(s) = start.take() {
                    self.word(&normalized[s..i], out);
                }
                if !space {
                    self.word(&normalized[i..i + c.len_utf8()], out);
                }
            } else if start.is_none() {
                start = Some(i);
            }
        }
        if let Some(s) = start
            && out.len() <= limit
        {
            self.word(&normalized[s..], out);
        }
        self.cleaned = cleaned;
        self.normalized = normalized;
    }

    /// One word's pieces, longest match first; a word with a part no piece covers (or longer
    /// than `max_input_chars_per_word`) is one `[UNK]`.
    fn word(&self, word: &str, out: &mut Vec<u32>) {
        let mark = out.len();
        if word.chars().count() <= self.max_chars {
            let mut start = 0;
            while start < word.len() {
                let mut end = word.len();
                let found = loop {
                    if end <= start {
                        break None;
                    }
                    let sub = &word[start..end];
                    let id = if start == 0 {
                        self.word_id(sub)
                    } else {
                        self.piece_id(sub)
                    };
                    if let Some(id) = id {
                        break Some(id);
                    }
                    end -= sub.chars().next_back().map_or(1, char::len_utf8);
                };
                match found {
                    Some(id) => {
                        out.push(id);
                        start = end;
                    }
                    None => {
                        out.truncate(mark);
                        break;
                    }
                }
            }
            if start == word.len() {
                return;
            }
        }
        out.truncate(mark);
        out.push(self.unk);
    }
}

/// Tab, newline and carriage return are control characters that BERT treats as spaces.
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// Unicode "other" (Cc, Cf, Cn, Co, Cs) except tab, newline and carriage return.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The CJK Unified Ideographs blocks (not Hangul, Hiragana or Katakana, which separate words
/// with spaces).
fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let vocab: Vec<&str> = vec![
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "hello", ",", "world", "!", "cafe",
            "##s", "北", "京", "a",
        ];
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i.into()))
            .collect();
        let json = serde_json::json!({
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "vocab": vocab, "unk_token": "[UNK]",
                      "continuing_subword_prefix": "##", "max_input_chars_per_word": 10},
            "added_tokens": [{"id": 4, "content": "[MASK]", "special": true, "normalized": false}],
        });
        WordPiece::from_json(&json.to_string()).unwrap()
    }

    fn ids(wp: &mut WordPiece, text: &str, max: usize) -> Vec<u32> {
        let mut out = Vec::new();
        wp.encode(text, max, &mut out);
        out
    }

    #[test]
    fn normalises_splits_and_matches_pieces() {
        let mut wp = tiny();
        assert_eq!(wp.vocab_size(), 17);
        // Lower case, accents stripped, punctuation alone, CJK split, longest pieces first.
        assert_eq!(
            ids(&mut wp, "Hello,\tWORLD! Unaffable CAFÉS 北京", 64),
            [2, 8, 9, 10, 11, 5, 6, 7, 12, 13, 14, 15, 3]
        );
        // A word with an uncovered part, or too long, is one [UNK].
        assert_eq!(ids(&mut wp, "helloz aaaaaaaaaaa", 64), [2, 1, 1, 3]);
        // Control characters vanish; special tokens are matched in the raw text.
        assert_eq!(ids(&mut wp, "a\u{0}\u{200b}a[MASK]hello", 64), [2, 1, 4, 8, 3]);
        assert_eq!(ids(&mut wp, "", 64), [2, 3]);
        assert_eq!(ids(&mut wp, " \u{3000}\n", 64), [2, 3]);
    }

    #[test]
    fn truncates_to_the_limit_with_both_special_tokens() {
        let mut wp = tiny();
        assert_eq!(ids(&mut wp, "hello world hello world", 4), [2, 8, 10, 3]);
        assert_eq!(ids(&mut wp, "[MASK] [MASK] [MASK]", 4), [2, 4, 4, 3]);
        assert_eq!(ids(&mut wp, "unaffable", 3), [2, 5, 3]);
    }

    #[test]
    fn refuses_other_tokenizers_by_name() {
        let e = WordPiece::from_json(
            r#"{"normalizer":null,"pre_tokenizer":null,"model":{"type":"BPE","vocab":{},"unk_token":"x"}}"#,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("no normalizer"), "{e}");
        assert!(WordPiece::from_json("{").is_err());
    }
}
