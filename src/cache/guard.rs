//! The verification guard: a semantic candidate above the similarity threshold is served only
//! if cheap pair features agree. Embeddings of "translate 'hello' to German" and "… to Spanish"
//! are close (0.79), as are "Why do Poles dislike Russians?" and its mirror; the answers are
//! not interchangeable. The guard rejects a candidate whose numbers, negation, quoted strings,
//! named entities (or their order), or content-word order differ from the query's, that swaps
//! a typed term (language, unit, currency, day, month) for another, that says the same content
//! words but one ("lower" / "upper back pain"), that narrows the other's question with a phrase
//! ("side effects of ibuprofen" / "… in children"), whose operators differ ("3 + 4" / "3 * 4"),
//! that asks for a manner or register the other does not ("… into Japanese, formally"), or
//! whose length is far off. Words are
//! compared after folding known synonyms, phrasal verbs, fillers and inflections, so "update" /
//! "change my e-mail" and "set up" / "configure a VPN" still meet.

mod words;

use std::collections::BTreeMap;

pub use words::is_function_word;
use words::*;

/// One word count may be this many times the other's before the pair is too different in
/// scope to share an answer ("what is Rust" vs a three-paragraph question about Rust).
const MAX_LENGTH_RATIO: f32 = 2.5;

/// Why a candidate was rejected (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Number,
    Negation,
    Quoted,
    Entity,
    EntityOrder,
    Term,
    WordOrder,
    Antonym,
    Substitution,
    Scope,
    Length,
    Symbol,
    Style,
    /// The questions ask for different things: how vs where, why vs when.
    Intent,
}

impl Reason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::Number => "number",
            Reason::Negation => "negation",
            Reason::Quoted => "quoted",
            Reason::Entity => "entity",
            Reason::EntityOrder => "entity_order",
            Reason::Term => "term",
            Reason::WordOrder => "word_order",
            Reason::Antonym => "antonym",
            Reason::Substitution => "substitution",
            Reason::Scope => "scope",
            Reason::Length => "length",
            Reason::Symbol => "symbol",
            Reason::Style => "style",
            Reason::Intent => "intent",
        }
    }
}

/// The features of one text that must agree.
#[derive(Debug, Default, PartialEq)]
pub struct Features {
    numbers: BTreeMap<String, u32>,
    /// The number 1 came from the word "one" (which an article can stand for).
    spelled_one: bool,
    symbols: Vec<char>,
    /// [`STYLE`] words, sorted.
    style: Vec<String>,
    negated: bool,
    quoted: Vec<String>,
    entities: Vec<String>,
    terms: BTreeMap<String, u32>,
    content: Vec<String>,
    /// Index in `all` of each content word.
    content_at: Vec<usize>,
    /// Content words as compared one for one: synonyms folded, fillers dropped, inflections
    /// cut to a stem; with the index in `all` of each.
    compared: Vec<(String, usize)>,
    all: Vec<String>,
    words: usize,
    intent: Intent,
    /// The thing moved or turned from, and to (`from X … to/into/onto Y`).
    roles: (Option<String>, Option<String>),
}

/// What a question asks for: its question word, refined by what follows it ("what year" asks
/// when, "how many" a quantity, "where can I…" a procedure like "how do I…"). The embedding
/// barely separates "How did X die?" from "Where did X die?"; the answers share nothing.
/// "What" and "which" are open slots ("what's the rule for castling" is "how does castling
/// work" in the labelled sets): they are never held against another question word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Intent {
    /// No question word (an instruction, a yes/no question), or an open "what".
    #[default]
    Open,
    Who,
    When,
    Where,
    Why,
    /// How something is done or works.
    How,
    Quantity,
}

impl Intent {
    fn of(all: &[String]) -> Intent {
        let plain = |w: &str| -> String { w.chars().filter(char::is_ascii_alphabetic).collect() };
        let Some((i, w)) = all.iter().enumerate().find_map(|(i, w)| {
            let p = plain(w);
            let base = match p.as_str() {
                "whats" => "what",
                "hows" => "how",
                "whos" => "who",
                "wheres" => "where",
                "whens" => "when",
                "whys" => "why",
                other => other,
            };
            matches!(
                base,
                "what" | "which" | "who" | "whom" | "whose" | "why" | "how" | "when" | "where"
            )
            .then(|| (i, base.to_owned()))
        }) else {
            return Intent::Open;
        };
        let at = |k: usize| all.get(k).map_or(String::new(), |n| plain(n));
        let next = at(i + 1);
        // "how do I", "where can I", "what should we": asking for a procedure.
        let procedural = matches!(
            next.as_str(),
            "can" | "do" | "does" | "should" | "could" | "would" | "to"
        ) && (next == "to" || matches!(at(i + 2).as_str(), "i" | "you" | "we" | "one"));
        match w.as_str() {
            "how" => match next.as_str() {
                "many" | "much" | "long" | "old" | "far" | "often" | "big" | "tall" | "heavy" => Intent::Quantity,
                "come" => Intent::Why,
                _ => Intent::How,
            },
            "where" if procedural => Intent::How,
            "why" => Intent::Why,
            "when" => Intent::When,
            "where" => Intent::Where,
            "who" | "whom" | "whose" => Intent::Who,
            // "what" and "which": only what follows can make them specific.
            _ => match next.as_str() {
                "time" | "year" | "date" | "day" | "month" | "hour" | "century" | "age" => Intent::When,
                "place" | "city" | "country" | "location" | "continent" => Intent::Where,
                _ => Intent::Open,
            },
        }
    }

    /// Whether two questions ask for different things.
    fn conflicts(self, other: Intent) -> bool {
        use Intent::*;
        !matches!((self, other), (Open, _) | (_, Open) | (How, Quantity) | (Quantity, How)) && self != other
    }
}

struct Word<'a> {
    text: &'a str,
    sentence_start: bool,
}

fn words(text: &str) -> Vec<Word<'_>> {
    let mut out = Vec::new();
    let mut sentence_start = true;
    let mut start = None;
    for (i, c) in text.char_indices() {
        // Letters, digits and in-word joiners (don't, 3.5, c++, c#) make words.
        let joiner = matches!(c, '\'' | '’' | '.' | ',' | '+' | '#' | '-')
            && start.is_some()
            && text[i + c.len_utf8()..]
                .chars()
                .next()
                .is_some_and(|n| n.is_alphanumeric() || (c == '+' && n == '+'));
        let plusplus = (c == '+' || c == '#') && start.is_some();
        if c.is_alphanumeric() || joiner || plusplus {
            if start.is_none() {
                start = Some(i);
            }
            continue;
        }
        if let Some(s) = start.take() {
            out.push(Word {
                text: &text[s..i],
                sentence_start,
            });
            sentence_start = false;
        }
        if matches!(c, '.' | '?' | '!' | '\n' | ':' | ';') {
            sentence_start = true;
        }
    }
    if let Some(s) = start {
        out.push(Word {
            text: &text[s..],
            sentence_start,
        });
    }
    out
}

fn quoted(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (open, close) in [('"', '"'), ('“', '”'), ('\'', '\''), ('‘', '’'), ('`', '`')] {
        let mut rest = text;
        while let Some(a) = rest.find(open) {
            // An apostrophe inside a word (don't, Poles') is not a quote.
            if open == '\'' && rest[..a].chars().last().is_some_and(char::is_alphanumeric) {
                rest = &rest[a + open.len_utf8()..];
                continue;
            }
            let after = &rest[a + open.len_utf8()..];
            let Some(b) = after.find(close) else { break };
            let inner = after[..b].trim().to_lowercase();
            if !inner.is_empty() && inner.len() <= 200 {
                out.push(inner);
            }
            rest = &after[b + close.len_utf8()..];
        }
    }
    out.sort();
    out
}

impl Features {
    pub(crate) fn of(text: &str) -> Features {
        let mut f = Features {
            quoted: quoted(text),
            symbols: symbols(text),
            ..Default::default()
        };
        let ws = words(text);
        f.words = ws.len();
        for (i, w) in ws.iter().enumerate() {
            let lower = w.text.to_lowercase();
            f.all.push(lower.clone());
            let plain: String = lower.chars().filter(|c| *c != '\'' && *c != '’').collect();
            if w.text.chars().any(|c| c.is_ascii_digit()) {
                let n: String = w.text.chars().filter(|c| c.is_ascii_digit() || *c == '.').collect();
                *f.numbers.entry(n.trim_end_matches('.').to_owned()).or_default() += 1;
                continue;
            }
            if let Some(value) = number_word(&plain, &ws, i) {
                f.spelled_one |= plain == "one";
                *f.numbers.entry(value).or_default() += 1;
                continue;
            }
            if NEGATIONS.contains(&plain.as_str()) || plain.ends_with("nt") && lower.contains("n't") {
                f.negated = !f.negated;
                continue;
            }
            if TERMS.contains(&plain.as_str()) {
                *f.terms.entry(plain.clone()).or_default() += 1;
            }
            if STYLE.contains(&plain.as_str()) {
                f.style.push(plain.clone());
            }
            let capitalised = w.text.chars().next().is_some_and(char::is_uppercase);
            let acronym = w.text.len() >= 2 && w.text.chars().all(|c| c.is_uppercase() || c.is_ascii_digit());
            if (capitalised && !w.sentence_start || acronym) && !STOPWORDS.contains(&plain.as_str()) {
                f.entities.push(plain.trim_end_matches("s").to_owned());
            }
            if !STOPWORDS.contains(&plain.as_str()) {
                f.content.push(plain);
                f.content_at.push(i);
            }
        }
        f.style.sort();
        f.style.dedup();
        f.intent = Intent::of(&f.all);
        f.roles = roles(&f.all);
        // Once every word is in `all`, so a phrasal verb can see the word after it.
        let mut particle = None;
        for (word, &at) in f.content.iter().zip(&f.content_at) {
            // "set up": the "up" is part of the verb, not a word of its own.
            if particle == Some(at) {
                continue;
            }
            if let Some((c, phrasal)) = compared_form(word, f.all.get(at + 1).map(String::as_str)) {
                f.compared.push((c, at));
                particle = phrasal.then_some(at + 1);
            }
        }
        f
    }
}

/// The numbers a text states (digits and number words), for comparing two answers.
pub(crate) fn numbers_of(text: &str) -> BTreeMap<String, u32> {
    Features::of(text).numbers
}

/// "calories in one banana" and "in a banana" ask the same: the numbers differ only by one
/// "one", spelled out, on one side, where the other has no 1 at all (an article in its place).
fn differ_by_an_article(a: &Features, b: &Features) -> bool {
    let (more, less) = if a.numbers.len() > b.numbers.len() {
        (a, b)
    } else {
        (b, a)
    };
    more.spelled_one
        && more.numbers.get("1") == Some(&1)
        && !less.numbers.contains_key("1")
        && more.numbers.len() == less.numbers.len() + 1
        && more
            .numbers
            .iter()
            .all(|(k, v)| k == "1" || less.numbers.get(k) == Some(v))
}

/// Whether `candidate` (a cached query) may answer `query`.
pub(crate) fn check(query: &Features, candidate: &Features) -> Result<(), Reason> {
    marks(query, candidate)?;
    entities(query, candidate)?;
    if swapped_term(&query.terms, &candidate.terms) {
        return Err(Reason::Term);
    }
    if opposite(&query.all, &candidate.all) {
        return Err(Reason::Antonym);
    }
    // Two content words swapped across a relation ("celsius to fahrenheit" / "fahrenheit to
    // celsius") is a different question; other reorderings are usually paraphrases.
    if query.content != candidate.content
        && sorted(&query.content) == sorted(&candidate.content)
        && swapped_across_relation(query, candidate)
    {
        return Err(Reason::WordOrder);
    }
    let (qc, cc) = (compared(query), compared(candidate));
    if one_word_substituted(&qc, &cc) {
        return Err(Reason::Substitution);
    }
    let (a, b) = (query.words.max(1) as f32, candidate.words.max(1) as f32);
    if a.max(b) / a.min(b) > MAX_LENGTH_RATIO && (a - b).abs() > 3.0 {
        return Err(Reason::Length);
    }
    if narrowed(query, &qc, &cc) || narrowed(candidate, &cc, &qc) {
        return Err(Reason::Scope);
    }
    if query.style != candidate.style {
        return Err(Reason::Style);
    }
    Ok(())
}

/// What the two texts mark outright: numbers, negation, quotes, symbols, the kind of answer
/// asked for, and who acts on whom.
fn marks(query: &Features, candidate: &Features) -> Result<(), Reason> {
    if query.numbers != candidate.numbers && !differ_by_an_article(query, candidate) {
        return Err(Reason::Number);
    }
    if query.negated != candidate.negated {
        return Err(Reason::Negation);
    }
    if query.quoted != candidate.quoted {
        return Err(Reason::Quoted);
    }
    if query.symbols != candidate.symbols {
        return Err(Reason::Symbol);
    }
    if query.intent.conflicts(candidate.intent) {
        return Err(Reason::Intent);
    }
    // Source and target swapped: "copy a file from the container to the host" is not "from
    // the host into the container", however close the two embed (0.99).
    if let ((Some(qs), Some(qt)), (Some(cs), Some(ct))) = (&query.roles, &candidate.roles)
        && qs != qt
        && qs == ct
        && qt == cs
    {
        return Err(Reason::WordOrder);
    }
    Ok(())
}

/// The same named things, named in the same order.
fn entities(query: &Features, candidate: &Features) -> Result<(), Reason> {
    // Entities are found by their capitals, but compared by their words: "france" in one
    // text is the other's "France", and an all-caps question names no more than it says.
    if !named_in(query, candidate) || !named_in(candidate, query) {
        return Err(Reason::Entity);
    }
    let common = |a: &Features, b: &Features| -> Vec<String> {
        dedup_in_order(&a.entities)
            .into_iter()
            .filter(|e| b.entities.contains(e))
            .cloned()
            .collect()
    };
    if common(query, candidate) != common(candidate, query) {
        return Err(Reason::EntityOrder);
    }
    Ok(())
}

/// The first content word after "from", and after the first "to"/"into"/"onto" (stems).
fn roles(all: &[String]) -> (Option<String>, Option<String>) {
    let after = |i: usize| {
        all[i + 1..]
            .iter()
            .find(|w| !STOPWORDS.contains(&w.as_str()) && !DETERMINERS.contains(&w.as_str()))
            .map(|w| stem(w))
    };
    let from = all.iter().position(|w| w == "from").and_then(after);
    let to = all
        .iter()
        .position(|w| matches!(w.as_str(), "to" | "into" | "onto"))
        .and_then(after);
    (from, to)
}

/// Every entity of `a` is named in `b`: as an entity, or as a plain word in any case.
fn named_in(a: &Features, b: &Features) -> bool {
    a.entities.iter().all(|e| {
        b.entities.contains(e)
            || b.all.iter().any(|w| {
                let w: String = w.chars().filter(|c| *c != '\'' && *c != '’').collect();
                w == *e || w.strip_suffix('s') == Some(e.as_str())
            })
    })
}

/// One side of an antonym pair in one text and the other side (alone) in the other.
fn opposite(a: &[String], b: &[String]) -> bool {
    let stems = |words: &[String]| -> std::collections::HashSet<String> { words.iter().map(|w| stem(w)).collect() };
    let (sa, sb) = (stems(a), stems(b));
    // A word of one text, missing from the other, whose antonym the other has (and it lacks).
    let one_way = |x: &std::collections::HashSet<String>, y: &std::collections::HashSet<String>| {
        x.iter().filter(|w| !y.contains(*w)).any(|w| {
            ANTONYMS
                .get(w)
                .is_some_and(|ants| ants.iter().any(|t| y.contains(t) && !x.contains(t)))
        })
    };
    one_way(&sa, &sb) || one_way(&sb, &sa)
}

fn swapped_across_relation(a: &Features, b: &Features) -> bool {
    let diff: Vec<usize> = (0..a.content.len()).filter(|&k| a.content[k] != b.content[k]).collect();
    let [i, j] = diff[..] else { return false };
    if a.content[i] != b.content[j] || a.content[j] != b.content[i] {
        return false;
    }
    let (from, to) = (a.content_at[i], a.content_at[j]);
    a.all[from + 1..to].iter().any(|w| RELATIONS.contains(&w.as_str()))
}

/// A typed term on each side that the other lacks: "cats" for "dogs", "celsius" for
/// "fahrenheit", "python" for "java". A term on one side only is usually rewording ("how
/// long" / "how many minutes", "when" / "what year", "the best way to"), not a new question.
fn swapped_term(a: &BTreeMap<String, u32>, b: &BTreeMap<String, u32>) -> bool {
    a.keys().any(|t| !b.contains_key(t)) && b.keys().any(|t| !a.contains_key(t))
}

fn compared(f: &Features) -> Vec<&str> {
    f.compared.iter().map(|(w, _)| w.as_str()).collect()
}

/// The words of `x` left once each word of `y` has cancelled one equal word (multisets).
fn only<'a>(x: &[&'a str], y: &[&str]) -> Vec<&'a str> {
    let mut rest: Vec<&str> = y.to_vec();
    let mut out = Vec::new();
    for w in x {
        match rest.iter().position(|r| same_word(r, w)) {
            Some(i) => {
                rest.swap_remove(i);
            }
            None => out.push(*w),
        }
    }
    out
}

/// Equal stems, or one stem is the other with a short ending ("discover" / "discoverer",
/// "paint" / "painter"): a shared start of at least four letters covering all but three
/// letters of the longer.
fn same_word(x: &str, y: &str) -> bool {
    if x == y {
        return true;
    }
    let common = x.chars().zip(y.chars()).take_while(|(a, b)| a == b).count();
    let longer = x.chars().count().max(y.chars().count());
    common >= 4 && longer - common <= 3 && common == x.chars().count().min(y.chars().count())
}

/// The two texts say the same content words but one: "lower back pain" / "upper back pain",
/// "in summer" / "in winter", "ascending" / "descending", "checked" / "carry-on luggage". A
/// minimal pair like that almost always asks about the swapped word, so its answer differs.
/// Words are compared in their folded form, so a synonym from [`SYNONYMS`], an inflection or
/// a filler ("the best way to") is not a substitution; a synonym missing from the list
/// ("package" / "parcel") is: the guard errs toward a miss.
fn one_word_substituted(a: &[&str], b: &[&str]) -> bool {
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    matches!((&only(a, b)[..], &only(b, a)[..]), ([_], [_]))
}

/// `narrow` (compared words `n`) asks the question of compared words `b` within a scope it
/// does not have: every word of `b` is in `n`, and a word only `narrow` has follows a narrowing preposition
/// ("side effects of ibuprofen" / "… in children", "cook rice" / "… in a rice cooker"). The
/// general answer is not the specific one. An extra word without such a preposition ("store
/// fresh basil") is usually rewording and passes.
fn narrowed(narrow: &Features, n: &[&str], b: &[&str]) -> bool {
    if n.len() <= b.len() || !only(b, n).is_empty() {
        return false;
    }
    let extra = only(n, b);
    narrow.compared.iter().any(|(w, at)| {
        if !extra.contains(&w.as_str()) {
            return false;
        }
        // Back over determiners and other words of the same phrase ("in young children").
        for x in narrow.all[..*at].iter().rev() {
            let x = x.as_str();
            if NARROWING.contains(&x) {
                return true;
            }
            let same_phrase =
                DETERMINERS.contains(&x) || compared_form(x, None).is_some_and(|(c, _)| extra.contains(&c.as_str()));
            if !same_phrase {
                break;
            }
        }
        false
    })
}

fn sorted(v: &[String]) -> Vec<&String> {
    let mut s: Vec<&String> = v.iter().collect();
    s.sort();
    s
}

fn dedup_in_order(v: &[String]) -> Vec<&String> {
    let mut out: Vec<&String> = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests;
