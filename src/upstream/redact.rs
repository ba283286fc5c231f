//! Keeps the sidecar's own secrets out of everything the app receives. Providers echo
//! credentials back ("Incorrect API key provided: sk-…"), and whatever a provider says may be
//! relayed (error bodies passed through, SSE error events) or quoted in the sidecar's own error
//! messages. Every configured secret is replaced by `[redacted]` on the way out, wherever it
//! appears. Bodies without a secret in them (all of them, normally) are returned as they came,
//! without a copy.

use std::borrow::Cow;

use bytes::Bytes;
use memchr::memmem::Finder;

use crate::config::Config;

/// What a secret is replaced with.
pub(crate) const MASK: &str = "[redacted]";

/// Shorter values are not treated as secrets: masking every `"abc"` in every answer would
/// corrupt answers and hide nothing a real key is made of.
const MIN_SECRET_LEN: usize = 8;

/// Header names whose configured values are credentials (`providers.*.headers`).
const SENSITIVE_NAME_PARTS: [&str; 6] = ["key", "token", "auth", "secret", "password", "signature"];

#[derive(Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is masked whole.
    finders: Vec<Finder<'static>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.finders.len())
    }
}

impl Redactor {
    pub(crate) fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut list: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|s| s.as_ref().trim_ascii().to_vec())
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        list.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        list.dedup();
        Redactor {
            finders: list.iter().map(|s| Finder::new(s).into_owned()).collect(),
        }
    }

    /// Every secret a config holds: provider keys (the header value and the bare key after
    /// `Bearer `), credential-like provider headers, the Redis password, the admin token.
    pub(crate) fn from_config(config: &Config) -> Self {
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        for p in config.providers.values() {
            if let Some((_, secret)) = &p.auth {
                let v = secret.0.as_bytes();
                secrets.push(v.to_vec());
                for scheme in [&b"Bearer "[..], b"bearer ", b"Basic "] {
                    if let Some(bare) = v.strip_prefix(scheme) {
                        secrets.push(bare.to_vec());
                    }
                }
            }
            for (name, value) in &p.headers {
                if SENSITIVE_NAME_PARTS.iter().any(|part| name.as_str().contains(part)) {
                    secrets.push(value.as_bytes().to_vec());
                }
            }
        }
        if let Some(p) = config.redis.as_ref().and_then(|r| r.password.as_ref()) {
            secrets.push(p.0.as_bytes().to_vec());
        }
        if let Some(t) = &config.server.admin_token {
            secrets.push(t.0.as_bytes().to_vec());
        }
        Redactor::new(secrets)
    }

    /// `data` with every secret masked; the same `Bytes` when it holds none.
    pub(crate) fn bytes(&self, data: Bytes) -> Bytes {
        match self.mask(&data) {
            Cow::Borrowed(_) => data,
            Cow::Owned(v) => Bytes::from(v),
        }
    }

    /// `text` with every secret masked.
    pub(crate) fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.mask(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Masking replaces whole byte runs of valid UTF-8 secrets with ASCII.
            Cow::Owned(v) => Cow::Owned(String::from_utf8_lossy(&v).into_owned()),
        }
    }

    fn mask<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out: Cow<'a, [u8]> = Cow::Borrowed(data);
        for f in &self.finders {
            if f.find(&out).is_none() {
                continue;
            }
            let needle = f.needle().len();
            let mut next = Vec::with_capacity(out.len());
            let mut at = 0;
            for hit in f.find_iter(&out) {
                if hit < at {
                    continue;
                }
                next.extend_from_slice(&out[at..hit]);
                next.extend_from_slice(MASK.as_bytes());
                at = hit + needle;
            }
            next.extend_from_slice(&out[at..]);
            out = Cow::Owned(next);
        }
        out
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.finders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_and_keeps_clean_bodies_uncopied() {
        let r = Redactor::new(["sk-secret-123456", "Bearer sk-secret-123456", "short"]);
        let clean = Bytes::from_static(b"{\"choices\":[]}");
        assert_eq!(r.bytes(clean.clone()).as_ptr(), clean.as_ptr());
        let out = r.bytes(Bytes::from_static(
            b"Incorrect key: Bearer sk-secret-123456 (sk-secret-123456)",
        ));
        assert_eq!(&out[..], b"Incorrect key: [redacted] ([redacted])");
        // Too short to be a secret.
        assert_eq!(r.text("short answer"), "short answer");
    }

    #[test]
    fn empty_redactor_changes_nothing() {
        let r = Redactor::default();
        assert!(r.is_empty());
        assert_eq!(r.text("anything"), "anything");
    }
}
