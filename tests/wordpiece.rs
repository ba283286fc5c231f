// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The hand-written WordPiece tokenizer (`embed::wordpiece`) against the `tokenizers` crate
//! reading the same `tokenizer.json`, token for token: every text of the shipped paraphrase
//! sets, hand-picked hard cases (accents, CJK, scripts without case, emoji, control and
//! zero-width characters, special tokens inside words, very long words, truncation) and
//! random strings drawn from all of those.

mod common;

use llm_sidecar::embed::wordpiece::WordPiece;
use llm_sidecar::embed::{MAX_TOKENS, TOKENIZER_FILE};
use tokenizers::{Tokenizer, TruncationParams};

fn both() -> (WordPiece, Tokenizer) {
    let path = common::assets_dir().join(TOKENIZER_FILE);
    let json = std::fs::read_to_string(&path).expect("assets (run scripts/fetch-assets)");
    let ours = WordPiece::from_json(&json).unwrap();
    let mut reference = Tokenizer::from_file(&path).unwrap();
    reference.with_padding(None);
    reference
        .with_truncation(Some(TruncationParams {
            max_length: MAX_TOKENS,
            ..Default::default()
        }))
        .unwrap();
    (ours, reference)
}

fn check(ours: &mut WordPiece, reference: &Tokenizer, text: &str) {
    let mut got = Vec::new();
    ours.encode(text, MAX_TOKENS, &mut got);
    let want = reference.encode(text, true).unwrap().get_ids().to_vec();
    assert_eq!(got, want, "{text:?}");
}

const HARD: &[&str] = &[
    "",
    " ",
    "\t\n\r",
    "Hello, World!",
    "How do I reset my password?",
    "Crème brûlée à la carte, naïve façade, jalapeño",
    "e\u{301}le\u{300}ve", // combining accents
    "İstanbul ıI Straße STRASSE ẞ Σίσυφος ΣΊΣΥΦΟΣ",
    "ﬁnance ﬂow Ａｂｃ １２３ 𝔸𝕓𝕔",
    "我爱北京天安门 and 中文混合English",
    "ひらがな カタカナ 한국어 텍스트",
    "مرحبا بالعالم שלום עולם",
    "🙂👍🏽 👨‍👩‍👧 🇫🇷 ❤️",
    "zero\u{200b}width\u{feff}joiner\u{200d}",
    "nul\u{0}bell\u{7}del\u{7f}",
    "private\u{e000}use unassigned\u{378}",
    "replacement \u{fffd} char",
    "nbsp\u{a0}ideographic\u{3000}line\u{2028}sep",
    "[CLS] [SEP] [MASK] [UNK] [PAD]",
    "a[MASK]b[SEP]c",
    "[mask] lower-case is not special",
    "[[CLS]] [CLS[SEP]]",
    "## #hashtag ###",
    "https://example.com/a/b?c=d&e=f#frag",
    "fn main() { println!(\"{}\", x?.y[0] as u8); }",
    "3.14159 1,000,000 1e-9 0x1F -42",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "unaffable unbelievably tokenization",
];

#[test]
fn matches_the_tokenizers_crate() {
    let (mut ours, reference) = both();
    assert_eq!(ours.vocab_size(), reference.get_vocab_size(false));
    for text in HARD {
        check(&mut ours, &reference, text);
    }
    // A word over max_input_chars_per_word (100) is one [UNK]; a text over MAX_TOKENS is cut.
    check(&mut ours, &reference, &"a".repeat(101));
    check(&mut ours, &reference, &"ab".repeat(50));
    check(&mut ours, &reference, &"word, ".repeat(400));
    check(&mut ours, &reference, &"[MASK]".repeat(300));
    for file in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/data")).unwrap() {
        // The paraphrase sets (data/ also holds the guard's word tables, in a folder).
        let path = file.unwrap().path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let pair: serde_json::Value = serde_json::from_str(line).unwrap();
            for k in ["a", "b"] {
                check(&mut ours, &reference, pair[k].as_str().unwrap());
            }
        }
    }
}

#[test]
fn matches_the_tokenizers_crate_on_random_text() {
    let (mut ours, reference) = both();
    let pool: Vec<char> = concat!(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        "  \t\n.,;:!?'\"()[]{}<>#@$%^&*-_+=/\\|~`",
        "éèêëàâäîïôöùûüçñÉÀÇÑßẞİıΣσςΑΩ",
        "\u{301}\u{300}\u{308}\u{327}\u{200b}\u{200d}\u{feff}\u{a0}\u{3000}\u{2028}\u{0}\u{7}\u{7f}\u{fffd}\u{e000}\u{378}",
        "北京中文字ひらがなカタカナ한국어مرحباשלום🙂👍🏽❤️ﬁＡ１𝔸",
    )
    .chars()
    .collect();
    let words = ["[CLS]", "[SEP]", "[MASK]", "[UNK]", "##", "unaffable", "tokenization"];
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20_000 {
        let mut text = String::new();
        for _ in 0..rng.usize(0..40) {
            if rng.u8(..) < 8 {
                text.push_str(words[rng.usize(..words.len())]);
            } else {
                text.push(pool[rng.usize(..pool.len())]);
            }
        }
        check(&mut ours, &reference, &text);
    }
}

#[test]
fn another_kind_of_tokenizer_is_refused_at_load_by_name() {
    use llm_sidecar::embed::{EmbedError, LIBRARY_FILE, MODEL_FILE, MODEL_Q8_FILE, Model};
    let assets = common::assets_dir();
    let dir = tempfile::tempdir().unwrap();
    for f in [LIBRARY_FILE, MODEL_FILE, MODEL_Q8_FILE] {
        if assets.join(f).is_file() {
            std::os::unix::fs::symlink(assets.join(f), dir.path().join(f)).unwrap();
        }
    }
    let bpe = r#"{"normalizer": null, "pre_tokenizer": {"type": "ByteLevel"},
                  "model": {"type": "BPE", "vocab": {"a": 0}, "unk_token": "a", "merges": []}}"#;
    std::fs::write(dir.path().join(TOKENIZER_FILE), bpe).unwrap();
    match Model::load(dir.path(), 1) {
        Err(EmbedError::Tokenizer(msg)) => {
            assert!(msg.contains(TOKENIZER_FILE) && msg.contains("unsupported"), "{msg}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a BPE tokenizer was accepted"),
    }
    std::fs::write(dir.path().join(TOKENIZER_FILE), "{ not json").unwrap();
    assert!(matches!(Model::load(dir.path(), 1), Err(EmbedError::Tokenizer(_))));
}
