//! The guard's vocabulary: word lists read from `data/guard/` (negations, typed terms,
//! antonyms, number words, relations, stopwords, fillers, synonyms, narrowing and style
//! markers, determiners) and how a content word is compared (phrasal verbs and synonyms
//! folded, fillers dropped, a light stem).

use std::sync::LazyLock;

use super::Word;

/// A word list from `data/guard/`: one entry per line, `#` comments. The lists are data, not
/// code: a reviewer reads and edits them without reading Rust.
pub(super) fn word_list(text: &'static str) -> Vec<&'static str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

pub(super) static NEGATIONS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| word_list(include_str!("../../../data/guard/negations.txt")));

/// Words whose identity changes the answer even in lower case: natural and programming
/// languages, units, currencies, days, months, and direction/comparison words.
pub(super) static TERMS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| word_list(include_str!("../../../data/guard/terms.txt")));

/// Opposites: a query with one side and a candidate with the other ask different things.
/// Antonym pairs: Princeton WordNet's direct antonyms (`scripts/wordnet-antonyms` generates the
/// table from Debian's `wordnet-base`) and a short list of software and everyday pairs WordNet
/// lacks. Data, not code: the guard knows "good" / "bad" because a lexicon says so.
pub(super) const ANTONYM_TABLES: [&str; 2] = [
    include_str!("../../../data/guard/antonyms-wordnet.tsv"),
    include_str!("../../../data/guard/antonyms-domain.tsv"),
];

/// Each word's stem → the stems of its antonyms. WordNet's pairs of function words are left
/// out: "out" / "safe" (baseball) and "in" / "out" would reject paraphrases over words that
/// carry no meaning there.
pub(super) static ANTONYMS: std::sync::LazyLock<std::collections::HashMap<String, Vec<String>>> =
    std::sync::LazyLock::new(|| {
        let mut map: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
        for (t, table) in ANTONYM_TABLES.iter().enumerate() {
            for line in table.lines().filter(|l| !l.starts_with('#')) {
                let Some((a, b)) = line.split_once('\t') else { continue };
                // The curated list may pair function words ("on" / "off"); WordNet's may not.
                let lexicon = t == 0;
                if lexicon && [a, b].iter().any(|w| STOPWORDS.contains(w) || w.len() < 2) {
                    continue;
                }
                let (a, b) = (stem(a), stem(b));
                if a == b {
                    continue;
                }
                map.entry(a.clone()).or_default().push(b.clone());
                map.entry(b).or_default().push(a);
            }
        }
        for v in map.values_mut() {
            v.sort();
            v.dedup();
        }
        map
    });

/// A number word's value as digits ("two" and "2" are one number), or the word itself for
/// the ones without one ("half", "twice"). `None` when the word is not a number here: "one"
/// as a pronoun ("How does one improve…", "which one", "no one").
pub(super) fn number_word(plain: &str, ws: &[Word<'_>], i: usize) -> Option<String> {
    if !NUMBER_WORDS.contains(&plain) {
        return None;
    }
    if plain == "one" {
        let prev = i.checked_sub(1).map(|p| ws[p].text.to_lowercase()).unwrap_or_default();
        let next = ws.get(i + 1).map(|n| n.text.to_lowercase()).unwrap_or_default();
        const BEFORE_PRONOUN: &[&str] = &[
            "does", "do", "can", "should", "would", "could", "will", "may", "might", "must", "how", "if", "when",
            "where", "why", "which", "the", "no", "any", "every", "each", "this", "that",
        ];
        const AFTER_PRONOUN: &[&str] = &[
            "of", "can", "should", "would", "could", "will", "may", "might", "must", "does", "is", "has", "needs",
            "another", "gets",
        ];
        if BEFORE_PRONOUN.contains(&prev.as_str()) || AFTER_PRONOUN.contains(&next.as_str()) {
            return None;
        }
    }
    let digits = match plain {
        "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "ten" => "10",
        "eleven" => "11",
        "twelve" => "12",
        "twenty" => "20",
        "thirty" => "30",
        "forty" => "40",
        "fifty" => "50",
        "hundred" => "100",
        "thousand" => "1000",
        "million" => "1000000",
        "billion" => "1000000000",
        other => other,
    };
    Some(digits.to_owned())
}

pub(super) static NUMBER_WORDS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| word_list(include_str!("../../../data/guard/number-words.txt")));

/// Words that make the order of the two words around them matter ("X to Y", "X vs Y").
pub(super) static RELATIONS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| word_list(include_str!("../../../data/guard/relations.txt")));

/// Function words: ignored for content-word order and never taken as entities.
pub(super) static STOPWORDS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| word_list(include_str!("../../../data/guard/stopwords.txt")));

/// A word that carries no content of its own: a stop word, or punctuation.
pub fn is_function_word(w: &str) -> bool {
    !w.chars().any(char::is_alphanumeric) || STOPWORDS.contains(&w)
}

/// Words that reword a question without changing what it asks ("what's the best way to",
/// "what are the steps to", "which documents are required"): left out when two texts' content
/// words are compared one for one.
pub(super) static FILLERS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| word_list(include_str!("../../../data/guard/fillers.txt")));

/// Groups of words that ask the same thing, folded to the group's first word before a one-word
/// difference is judged: "change" / "update" my e-mail, "make" / "create" a branch, "reach" /
/// "contact" support. Only words that stay synonyms in every common question belong here.
pub(super) static SYNONYMS: LazyLock<Vec<Vec<&'static str>>> = LazyLock::new(|| {
    word_list(include_str!("../../../data/guard/synonyms.txt"))
        .into_iter()
        .map(|group| group.split_whitespace().collect())
        .collect()
});

/// Prepositions that, before a content word one text has and the other lacks, narrow the
/// question: "side effects of ibuprofen" / "… in children", "store basil" / "… in the freezer".
pub(super) static NARROWING: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| word_list(include_str!("../../../data/guard/narrowing.txt")));

/// Words that ask for an answer's manner or register: on one side only, the answers differ
/// ("translate 'good morning' into Japanese" / "…, formally"). Fillers like "simply" or
/// "quickly" ("how do I quickly reset…") are not here: they rarely change the answer.
pub(super) static STYLE: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| word_list(include_str!("../../../data/guard/style.txt")));

/// Operators whose identity changes the answer in code and arithmetic ("3 + 4" / "3 * 4",
/// "17 > 12" / "17 < 12"). `-`, `/` and `&` between two letters join words ("e-mail",
/// "and/or", "R&D") and do not count; `!` only as `!=`.
pub(super) fn symbols(text: &str) -> Vec<char> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|p| chars.get(p)).copied();
        let next = chars.get(i + 1).copied();
        let joins = matches!(c, '-' | '/' | '&')
            && prev.is_some_and(char::is_alphabetic)
            && next.is_some_and(char::is_alphabetic);
        let operator = matches!(c, '+' | '-' | '*' | '/' | '^' | '%' | '=' | '<' | '>' | '&' | '|')
            || (c == '!' && next == Some('='));
        if operator && !joins {
            out.push(c);
        }
    }
    out
}

/// Determiners and possessives skipped between a narrowing preposition and its word.
pub(super) static DETERMINERS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| word_list(include_str!("../../../data/guard/determiners.txt")));

/// How a content word is compared: phrasal verbs and synonyms folded to one word, fillers
/// dropped (`None`), then a light stem so "getting" meets "get". The flag says the next word
/// was the particle of a phrasal verb.
pub(super) fn compared_form(word: &str, next: Option<&str>) -> Option<(String, bool)> {
    let phrasal = match (word, next) {
        ("turn" | "switch", Some("on")) => Some("enable"),
        ("turn" | "switch", Some("off")) => Some("disable"),
        ("set", Some("up")) => Some("setup"),
        ("log" | "sign", Some("in" | "into")) => Some("login"),
        ("sign", Some("up")) => Some("register"),
        ("get", Some("rid")) => Some("remove"),
        ("figure" | "find", Some("out")) => Some("check"),
        ("stand" | "short", Some("for")) => Some("abbreviation"),
        _ => None,
    };
    let word = phrasal.unwrap_or(word);
    if FILLERS.contains(&word) {
        return None;
    }
    let stemmed = stem(word);
    let folded = match SYNONYM_STEMS.get(&stemmed) {
        Some(first) => first.clone(),
        None => stemmed,
    };
    Some((folded, phrasal.is_some()))
}

/// The stem of every word in [`SYNONYMS`] → the stem of its group's first word, so
/// inflections fold too ("photos" → "picture").
pub(super) static SYNONYM_STEMS: std::sync::LazyLock<std::collections::HashMap<String, String>> =
    std::sync::LazyLock::new(|| {
        SYNONYMS
            .iter()
            .flat_map(|g| g.iter().map(move |w| (stem(w), stem(g[0]))))
            .collect()
    });

/// A light English stem: plural, past and progressive endings off, a doubled final consonant
/// undone ("getting" → "get", "stores" → "store", "fogging" → "fog").
pub(super) fn stem(word: &str) -> String {
    // (ending, shortest word it is cut from, replacement); the endings are ASCII, so cutting
    // them leaves a char boundary whatever the word.
    const ENDINGS: &[(&str, usize, &str)] = &[
        ("ing", 6, ""),
        ("ied", 5, "y"),
        ("ies", 5, "y"),
        ("ed", 5, ""),
        ("ly", 6, ""),
        ("ches", 5, "ch"),
        ("shes", 5, "sh"),
        ("xes", 5, "x"),
    ];
    let (mut stem, tail) = match ENDINGS
        .iter()
        .find(|(e, min, _)| word.len() >= *min && word.ends_with(e))
    {
        Some((e, _, tail)) => (&word[..word.len() - e.len()], *tail),
        None if word.len() > 3 && word.ends_with('s') && !word.ends_with("ss") && !word.ends_with("us") => {
            (&word[..word.len() - 1], "")
        }
        None => (word, ""),
    };
    // "getting" → "get": a doubled final consonant (ASCII only) before a cut ending.
    let b = stem.as_bytes();
    if stem.len() < word.len().saturating_sub(1)
        && b.len() >= 3
        && b[b.len() - 1].is_ascii_alphabetic()
        && b[b.len() - 1] == b[b.len() - 2]
        && !matches!(b[b.len() - 1], b'l' | b's' | b'z')
    {
        stem = &stem[..stem.len() - 1];
    }
    // "store" / "storing": a dropped silent e.
    let mut out = stem.trim_end_matches('e').to_owned();
    out.push_str(tail);
    out
}
