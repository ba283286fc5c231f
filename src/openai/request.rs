//! The head of an OpenAI request body: the fields the sidecar acts on, read without copying
//! the rest. The body is parsed once into an ordered list of (key, raw JSON value) pairs that
//! borrow from the request bytes; rewriting the model name or asking for stream usage re-emits
//! those pairs with one value replaced, so every other field reaches the provider byte for byte.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error(
        "the request body is not valid JSON ({0}); send a JSON object such as {{\"model\": \"...\", \"messages\": [...]}}"
    )]
    Malformed(String),
    #[error("the request body must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    #[error("you must provide a model parameter")]
    MissingModel,
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
}

impl RequestError {
    /// The request field the error is about, for the OpenAI error's `param`.
    pub(crate) fn param(&self) -> Option<&'static str> {
        match self {
            RequestError::MissingModel => Some("model"),
            RequestError::WrongType { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A parsed request head, borrowing from the body bytes.
#[derive(Debug)]
pub struct RequestHead<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub(crate) model: Cow<'a, str>,
    pub stream: bool,
    /// `stream_options.include_usage` as the app sent it.
    pub(crate) include_usage: bool,
}

struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A JSON string borrowed from the body when it has no escapes. serde's own `Cow<str>` always
/// allocates (it deserializes through `String`): one allocation per top-level key, per request.
pub(crate) struct Str<'a>(Cow<'a, str>);

impl<'a> Str<'a> {
    /// `raw` as a string when it is one (borrowed unless it has escapes); `None` for any
    /// other JSON value, found without building an error (a failed parse formats one).
    pub(crate) fn of(raw: &'a RawValue) -> Option<Cow<'a, str>> {
        if !raw.get().trim_start().starts_with('"') {
            return None;
        }
        serde_json::from_str::<Str<'a>>(raw.get()).ok().map(|s| s.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

impl<'a> RequestHead<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, RequestError> {
        let fields = match serde_json::from_slice::<Fields<'a>>(body) {
            Ok(f) => f.0,
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                let first = body.iter().find(|b| !b.is_ascii_whitespace());
                return Err(RequestError::NotAnObject(match first {
                    Some(b'[') => "an array",
                    Some(b'"') => "a string",
                    Some(b'n') => "null",
                    Some(b't' | b'f') => "a boolean",
                    _ => "a number",
                }));
            }
            Err(e) => return Err(RequestError::Malformed(e.to_string())),
        };
        let mut model = None;
        let mut stream = false;
        let mut include_usage = false;
        for (k, v) in &fields {
            match k.as_ref() {
                "model" => {
                    model = Some(Str::of(v).ok_or(RequestError::WrongType {
                        field: "model",
                        expected: "a string",
                    })?);
                }
                "stream" => {
                    stream = serde_json::from_str::<Option<bool>>(v.get())
                        .map_err(|_| RequestError::WrongType {
                            field: "stream",
                            expected: "a boolean",
                        })?
                        .unwrap_or(false);
                }
                "stream_options" => {
                    let o: Option<StreamOptions> =
                        serde_json::from_str(v.get()).map_err(|_| RequestError::WrongType {
                            field: "stream_options",
                            expected: "an object like {\"include_usage\": true}",
                        })?;
                    include_usage = o.and_then(|o| o.include_usage).unwrap_or(false);
                }
                _ => {}
            }
        }
        let model = model.filter(|m| !m.is_empty()).ok_or(RequestError::MissingModel)?;
        Ok(RequestHead {
            fields,
            model,
            stream,
            include_usage,
        })
    }

    /// The raw JSON of a top-level field (e.g. `messages`), for the cache and the router.
    pub(crate) fn raw(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Every top-level field in body order (for cache keys).
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.fields.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// Whether [`Self::rewrite`] would change anything.
    pub(crate) fn needs_rewrite(&self, upstream_model: &str, add_usage: bool) -> bool {
        self.model != upstream_model || add_usage
    }

    /// Re-emits the body with `model` replaced and, when `add_usage`, with
    /// `stream_options.include_usage: true` set (other stream options are kept).
    pub fn rewrite(&self, upstream_model: &str, add_usage: bool) -> Vec<u8> {
        let extra = upstream_model.len() + if add_usage { 40 } else { 0 };
        let mut out = Vec::with_capacity(
            self.fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + extra
                + 2,
        );
        out.push(b'{');
        let mut saw_options = false;
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(&mut out, k);
            out.push(b':');
            match k.as_ref() {
                "model" => write_json_str(&mut out, upstream_model),
                "stream_options" if add_usage => {
                    saw_options = true;
                    let mut map: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(v.get()).ok().flatten().unwrap_or_default();
                    map.insert("include_usage".into(), serde_json::Value::Bool(true));
                    // Serialising a map of `Value`s into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut out, &map);
                }
                _ => out.extend_from_slice(v.get().as_bytes()),
            }
        }
        if add_usage && !saw_options {
            if !self.fields.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        out
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a `str` into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_head_and_keeps_the_rest() {
        let body = br#"{"model":"auto","messages":[{"role":"user","content":"hi \"there\""}],"stream":true,"new_field":{"x":[1,2]}}"#;
        let h = RequestHead::parse(body).unwrap();
        assert_eq!(h.model, "auto");
        assert!(h.stream);
        assert!(!h.include_usage);
        assert!(h.raw("messages").unwrap().get().contains("hi"));
        let out = h.rewrite("gpt-4o", true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["new_field"]["x"][1], 2);
        assert_eq!(v["messages"][0]["content"], "hi \"there\"");
    }

    #[test]
    fn merges_into_existing_stream_options() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}"#;
        let h = RequestHead::parse(body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&h.rewrite("m", true)).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_obfuscation": false, "include_usage": true})
        );
    }

    #[test]
    fn no_rewrite_needed_when_names_match() {
        let h = RequestHead::parse(br#"{"model":"m"}"#).unwrap();
        assert!(!h.needs_rewrite("m", false));
        assert!(h.needs_rewrite("n", false));
    }

    #[test]
    fn plain_keys_and_models_are_borrowed_from_the_body() {
        let h = RequestHead::parse(br#"{"model":"gpt-4o","messages":[],"temperature":0}"#).unwrap();
        assert!(matches!(h.model, Cow::Borrowed("gpt-4o")));
        assert!(h.fields.iter().all(|(k, _)| matches!(k, Cow::Borrowed(_))));
        let h = RequestHead::parse(br#"{"mo\u0064el":"a\/b"}"#).unwrap();
        assert!(matches!(h.model, Cow::Owned(_)) && matches!(h.fields[0].0, Cow::Owned(_)));
    }

    #[test]
    fn escaped_keys_and_models_round_trip() {
        let h = RequestHead::parse(br#"{"mo\u0064el":"a\/b","x":1}"#).unwrap();
        assert_eq!(h.model, "a/b");
        let v: serde_json::Value = serde_json::from_slice(&h.rewrite("c", false)).unwrap();
        assert_eq!(v, serde_json::json!({"model":"c","x":1}));
    }

    #[test]
    fn bad_bodies_are_typed_errors() {
        assert!(matches!(
            RequestHead::parse(b"{\"model\":"),
            Err(RequestError::Malformed(_))
        ));
        assert_eq!(
            RequestHead::parse(b"[1]").unwrap_err(),
            RequestError::NotAnObject("an array")
        );
        assert_eq!(RequestHead::parse(b"{}").unwrap_err(), RequestError::MissingModel);
        assert_eq!(
            RequestHead::parse(br#"{"model":""}"#).unwrap_err(),
            RequestError::MissingModel
        );
        assert_eq!(
            RequestHead::parse(br#"{"model":5}"#).unwrap_err().param(),
            Some("model")
        );
        assert_eq!(
            RequestHead::parse(br#"{"model":"m","stream":"yes"}"#)
                .unwrap_err()
                .param(),
            Some("stream")
        );
        assert!(matches!(
            RequestHead::parse(b"{\"model\":\"\xff\xfe\"}"),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(RequestHead::parse(b""), Err(RequestError::Malformed(_))));
    }

    #[test]
    fn null_stream_options_and_stream_are_accepted() {
        let h = RequestHead::parse(br#"{"model":"m","stream":null,"stream_options":null}"#).unwrap();
        assert!(!h.stream && !h.include_usage);
        let v: serde_json::Value = serde_json::from_slice(&h.rewrite("m", true)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }
}
