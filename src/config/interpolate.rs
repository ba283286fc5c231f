//! `${VAR}` interpolation over the parsed YAML tree. It runs on string scalars after parsing,
//! not on the raw text, so a value containing `:` or `#` cannot change the document's
//! structure, and an error can name the key path it happened at.
//!
//! Syntax: `${NAME}` (must be set), `${NAME:-fallback}` (fallback when unset or empty),
//! `$${` for a literal `${`.

use serde_yaml_ng::Value;

use super::ConfigIssue;

/// Where variable values come from: the process environment in production, a map in the
/// demo and in tests (mutating the real environment is unsafe in a threaded program).
pub trait VarLookup {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct Env;

impl VarLookup for Env {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> VarLookup for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

pub(crate) fn interpolate(value: &mut Value, vars: &dyn VarLookup, issues: &mut Vec<ConfigIssue>) {
    walk(value, &mut String::new(), vars, issues);
}

fn walk(value: &mut Value, path: &mut String, vars: &dyn VarLookup, issues: &mut Vec<ConfigIssue>) {
    match value {
        Value::String(s) if s.contains('$') => match expand(s, vars) {
            Ok(expanded) => *s = expanded,
            Err(e) => issues.push(ConfigIssue::new(path.as_str(), e.to_string())),
        },
        Value::Mapping(map) => {
            for (key, child) in map.iter_mut() {
                let len = path.len();
                let key = match key {
                    Value::String(k) => k.clone(),
                    other => format!("{other:?}"),
                };
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                walk(child, path, vars, issues);
                path.truncate(len);
            }
        }
        Value::Sequence(seq) => {
            for (i, child) in seq.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(child, path, vars, issues);
                path.truncate(len);
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, vars, issues),
        _ => {}
    }
}

/// Why a `${…}` reference could not be expanded; each says how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExpandError {
    #[error("unterminated `${{` in {0:?}: close it with `}}` or write `$${{` for a literal")]
    Unterminated(String),
    #[error("`${{{0}}}` is not a valid variable reference: names use letters, digits and `_`")]
    BadName(String),
    #[error("environment variable {0} is not set: set it, or give a fallback as `${{{0}:-value}}`")]
    Unset(String),
}

/// Expands one string. Errors say which variable and how to fix it.
pub(crate) fn expand(input: &str, vars: &dyn VarLookup) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| ExpandError::Unterminated(input.to_owned()))?;
            let expr = &body[..end];
            let (name, fallback) = match expr.split_once(":-") {
                Some((n, f)) => (n, Some(f)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ExpandError::BadName(expr.to_owned()));
            }
            match (vars.var(name).filter(|v| !v.is_empty()), fallback) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(f)) => out.push_str(f),
                (None, None) => {
                    return Err(ExpandError::Unset(name.to_owned()));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("api.example.com".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_fallback_and_escape() {
        assert_eq!(
            expand("https://${HOST}/v1", &vars).unwrap(),
            "https://api.example.com/v1"
        );
        assert_eq!(expand("${NOPE:-x}", &vars).unwrap(), "x");
        assert_eq!(expand("${EMPTY:-y}", &vars).unwrap(), "y");
        assert_eq!(expand("$${HOST} costs $5", &vars).unwrap(), "${HOST} costs $5");
    }

    #[test]
    fn missing_and_malformed_are_errors() {
        assert!(
            expand("${NOPE}", &vars)
                .unwrap_err()
                .to_string()
                .contains("NOPE is not set")
        );
        assert!(
            expand("${HOST", &vars)
                .unwrap_err()
                .to_string()
                .contains("unterminated")
        );
        assert!(expand("${a-b}", &vars).unwrap_err().to_string().contains("not a valid"));
    }

    #[test]
    fn errors_carry_the_key_path() {
        let mut v: Value = serde_yaml_ng::from_str("providers:\n  a:\n    base_url: ${NOPE}\n").unwrap();
        let mut issues = Vec::new();
        interpolate(&mut v, &vars, &mut issues);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "providers.a.base_url");
    }
}
