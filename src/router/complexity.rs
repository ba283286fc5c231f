//! A prompt-complexity score in [0, 1] from cheap features, for the `complexity` strategy:
//! length, code, mathematics, reasoning cues and multi-step structure. It runs in
//! microseconds on the request thread; it is a heuristic that a platform team tunes with
//! `complexity_threshold` (the request log's `reason` shows each request's score).

/// Words from which length alone counts fully.
const LONG_WORDS: f32 = 300.0;

const CODE_SYNTAX: &[&str] = &[
    "```", "fn ", "def ", "class ", "#include", "=>", "();", "});", "import ", "select ", "SELECT ", "</", "let ",
    "const ", "return ",
];
const CODE_ASKS: &[&str] = &[
    "code",
    "function",
    "implement",
    "script",
    "regex",
    "sql",
    "compile",
    "debug",
    "refactor",
    "algorithm",
    "bug",
    "stack trace",
    "unit test",
];
const MATH: &[&str] = &[
    "integral",
    "derivative",
    "prove",
    "proof",
    "theorem",
    "equation",
    "probability",
    "matrix",
    "eigen",
    "\\frac",
    "lemma",
    "solve for",
    "optimi",
    "complexity of",
];
const REASONING: &[&str] = &[
    "step by step",
    "explain why",
    "analy",
    "compare",
    "trade-off",
    "tradeoff",
    "design",
    "justify",
    "evaluate",
    "what would happen",
    "pros and cons",
    "in depth",
    "critique",
    "architecture",
    "strategy",
    "reason",
];
const STEPS: &[&str] = &["first", "then", "after that", "finally", "next,", "1.", "2.", "3."];

/// The score and the features behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub(crate) total: f32,
    pub(crate) length: f32,
    pub(crate) code: f32,
    pub(crate) math: f32,
    pub(crate) reasoning: f32,
    pub(crate) steps: f32,
}

fn count(hay: &str, needles: &[&str]) -> usize {
    needles.iter().filter(|n| hay.contains(*n)).count()
}

pub(crate) fn score(text: &str) -> Score {
    let words = text.split_whitespace().count() as f32;
    let length = ((words - 20.0) / LONG_WORDS).clamp(0.0, 1.0);
    let lower = text.to_lowercase();
    let code = if count(text, CODE_SYNTAX) >= 2 || text.contains("```") {
        1.0
    } else if count(&lower, CODE_ASKS) > 0 {
        0.6
    } else {
        0.0
    };
    let operators = text
        .bytes()
        .filter(|b| matches!(b, b'+' | b'*' | b'/' | b'^' | b'='))
        .count();
    let math = (count(&lower, MATH) as f32 * 0.5 + if operators >= 3 { 0.5 } else { 0.0 }).min(1.0);
    let reasoning = (count(&lower, REASONING) as f32 / 2.0).min(1.0);
    let questions = text.matches('?').count().saturating_sub(1);
    let steps = ((count(&lower, STEPS) + questions) as f32 / 3.0).min(1.0);
    let total = (0.25 * length + 0.25 * code + 0.2 * math + 0.2 * reasoning + 0.1 * steps).clamp(0.0, 1.0);
    // A single strong signal (a proof, a code review) should be able to reach the strong tier
    // on its own with the default threshold of 0.5.
    let peak = code.max(math).max(reasoning) * 0.55;
    Score {
        total: total.max(peak).min(1.0),
        length,
        code,
        math,
        reasoning,
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_questions_score_low_and_hard_ones_high() {
        for easy in [
            "What is the capital of France?",
            "hi!",
            "Translate 'good morning' to German.",
        ] {
            assert!(score(easy).total < 0.3, "{easy}: {:?}", score(easy));
        }
        for hard in [
            "Prove that the integral of x^2 from 0 to 1 equals 1/3, step by step.",
            "Review this code and find the bug:\n```rust\nfn main() { let x = 1; }\n```",
            "Compare the trade-offs of event sourcing and CRUD for our architecture, then design a migration plan.",
        ] {
            assert!(score(hard).total >= 0.5, "{hard}: {:?}", score(hard));
        }
    }
}
