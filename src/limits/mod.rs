//! Tenants, their rate limits and budgets. A tenant is identified by a trusted header or by the
//! SHA-256 of the app's API key: the config stores only hashes, so a leaked ConfigMap leaks no
//! key. `ledger` holds the counts (rates, spend, usage); `fleet` shares them through Redis.

pub mod fleet;
pub mod ledger;

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::{OnUnknown, TenantsConfig};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TenantError {
    #[error("Incorrect API key provided. Ask the platform team for a key registered with this sidecar.")]
    UnknownKey,
    #[error("Unknown tenant `{0}` in the tenant header. Use one of the tenants configured under `tenants.list`.")]
    UnknownTenant(String),
}

#[derive(Debug)]
pub struct Tenants {
    config: TenantsConfig,
    by_hash: HashMap<[u8; 32], Arc<str>>,
    by_name: HashMap<Box<str>, Arc<str>>,
}

impl Tenants {
    pub fn new(config: &TenantsConfig) -> Self {
        let mut by_hash = HashMap::new();
        for (h, t) in &config.key_hashes {
            let mut k = [0u8; 32];
            if hex::decode_to_slice(h, &mut k).is_ok() {
                by_hash.insert(k, t.clone());
            }
        }
        let by_name = config.names.iter().map(|n| (Box::from(&**n), n.clone())).collect();
        Tenants {
            config: config.clone(),
            by_hash,
            by_name,
        }
    }

    pub fn identify(&self, headers: &HeaderMap) -> Result<Arc<str>, TenantError> {
        if let Some(h) = &self.config.header
            && let Some(v) = headers.get(h)
        {
            let name = String::from_utf8_lossy(v.as_bytes());
            return self
                .by_name
                .get(name.as_ref())
                .cloned()
                .ok_or_else(|| TenantError::UnknownTenant(name.chars().take(64).collect()));
        }
        if self.config.api_key
            && let Some(key) = api_key(headers)
        {
            let digest: [u8; 32] = Sha256::digest(key).into();
            if let Some(t) = self.by_hash.get(&digest) {
                return Ok(t.clone());
            }
        }
        match self.config.on_unknown {
            OnUnknown::Default => Ok(self.config.default_tenant.clone()),
            OnUnknown::Reject => Err(TenantError::UnknownKey),
        }
    }
}

/// The app's key: `Authorization: Bearer …` (OpenAI SDKs) or `api-key: …` (Azure SDKs).
fn api_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let b = v.as_bytes();
        if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(b[7..].trim_ascii());
        }
    }
    // A name made once: a `&str` is parsed into one at every lookup.
    const API_KEY: http::HeaderName = http::HeaderName::from_static("api-key");
    headers.get(&API_KEY).map(|v| v.as_bytes().trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn tenants(on_unknown: &str) -> Tenants {
        // sha256("password")
        let text = format!(
            "tenants:\n  header: x-tenant\n  on_unknown: {on_unknown}\n  list:\n    team-a: {{ api_key_sha256: [5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8] }}\n"
        );
        Tenants::new(&Config::load(&text, &|_: &str| None).unwrap().tenants)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn identifies_by_key_hash_and_header() {
        let t = tenants("reject");
        assert_eq!(
            &*t.identify(&headers(&[("authorization", "Bearer password")])).unwrap(),
            "team-a"
        );
        assert_eq!(&*t.identify(&headers(&[("api-key", "password")])).unwrap(), "team-a");
        assert_eq!(&*t.identify(&headers(&[("x-tenant", "team-a")])).unwrap(), "team-a");
        assert_eq!(
            t.identify(&headers(&[("x-tenant", "team-b")])),
            Err(TenantError::UnknownTenant("team-b".into()))
        );
        assert_eq!(
            t.identify(&headers(&[("authorization", "Bearer nope")])),
            Err(TenantError::UnknownKey)
        );
        assert_eq!(t.identify(&headers(&[])), Err(TenantError::UnknownKey));
    }

    #[test]
    fn unknown_keys_map_to_the_default_when_configured() {
        let t = tenants("default");
        assert_eq!(
            &*t.identify(&headers(&[("authorization", "Bearer nope")])).unwrap(),
            "default"
        );
    }
}
