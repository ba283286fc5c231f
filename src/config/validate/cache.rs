//! `cache`: TTL, bounds, privacy patterns, the semantic layer and its per-route overrides, and
//! the keys that seal what the cache writes to Redis.

use super::*;

impl Validator<'_> {
    pub(super) fn route_cache(&mut self, path: &str, rc: RawRouteCache) -> RouteCacheConfig {
        for (key, t) in [
            ("threshold", rc.threshold),
            ("min_threshold", rc.min_threshold),
            ("max_threshold", rc.max_threshold),
        ] {
            if let Some(t) = t {
                self.threshold(&format!("{path}.{key}"), t);
            }
        }
        if let Some(m) = rc.max_wrong_rate {
            self.wrong_rate(&format!("{path}.max_wrong_rate"), m);
        }
        if let (Some(lo), Some(hi)) = (rc.min_threshold, rc.max_threshold) {
            self.threshold_range(path, lo, hi);
        }
        RouteCacheConfig {
            enabled: rc.enabled,
            threshold: rc.threshold,
            mode: rc
                .mode
                .as_deref()
                .and_then(|m| self.semantic_mode(&format!("{path}.mode"), m)),
            max_wrong_rate: rc.max_wrong_rate,
            min_threshold: rc.min_threshold,
            max_threshold: rc.max_threshold,
        }
    }

    pub(super) fn semantic_mode(&mut self, path: &str, m: &str) -> Option<SemanticMode> {
        match m {
            "serve" => Some(SemanticMode::Serve),
            "shadow" => Some(SemanticMode::Shadow),
            other => {
                self.issue(
                    path,
                    format!("unknown mode {other:?}: use serve (semantic hits are served) or shadow (judged against the upstream answer, never served)"),
                );
                None
            }
        }
    }

    pub(super) fn wrong_rate(&mut self, path: &str, m: f32) {
        if !(m > 0.0 && m < 1.0) {
            self.issue(
                path,
                format!("{m} is not an error bound: use a share between 0 and 1 (0.01 = at most 1 wrong answer in 100 semantic hits)"),
            );
        }
    }

    pub(super) fn threshold_range(&mut self, path: &str, lo: f32, hi: f32) {
        if lo > hi {
            self.issue(
                format!("{path}.min_threshold"),
                format!("{lo} is above max_threshold {hi}: the range max_wrong_rate moves the threshold in must not be empty"),
            );
        }
    }

    pub(super) fn threshold(&mut self, path: &str, t: f32) {
        if !(0.0..=1.0).contains(&t) {
            self.issue(
                path,
                format!("{t} is not a cosine similarity threshold: use a number between 0 and 1 (e.g. 0.92)"),
            );
        }
    }

    /// `cache.semantic.embedder`: an OpenAI-compatible provider and one of its embedding models.
    fn remote_embedder(
        &mut self,
        raw: RawEmbedder,
        providers: &BTreeMap<String, Arc<ProviderConfig>>,
    ) -> Option<RemoteEmbedderConfig> {
        let path = "cache.semantic.embedder";
        let start = self.issues.len();
        let provider = match providers.get(&raw.provider) {
            Some(p) if p.kind == ProviderKind::OpenAi => Some(p.clone()),
            Some(_) => {
                self.issue(
                    format!("{path}.provider"),
                    format!("{:?} speaks Anthropic's API, which has no embeddings endpoint: name an OpenAI-compatible provider", raw.provider),
                );
                None
            }
            None => {
                self.issue(
                    format!("{path}.provider"),
                    format!(
                        "unknown provider {:?}: name one of the providers ({})",
                        raw.provider,
                        names(providers.keys().map(String::as_str))
                    ),
                );
                None
            }
        };
        if raw.model.trim().is_empty() {
            self.issue(
                format!("{path}.model"),
                "name the embedding model (e.g. text-embedding-3-small)",
            );
        }
        let mut bounded = |key: &str, value: Option<u64>, default: u64, max: u64, what: &str| -> usize {
            let v = value.unwrap_or(default);
            if !(1..=max).contains(&v) {
                self.issue(
                    format!("{path}.{key}"),
                    format!("{v} is out of range: use 1 to {max} ({what})"),
                );
            }
            v.clamp(1, max) as usize
        };
        let dimensions = raw
            .dimensions
            .map(|d| bounded("dimensions", Some(d), d, 16384, "the width of the model's vectors"));
        let max_batch = bounded(
            "max_batch",
            raw.max_batch,
            DEFAULT_REMOTE_EMBED_BATCH,
            2048,
            "texts per request",
        );
        let concurrency = bounded(
            "concurrency",
            raw.concurrency,
            DEFAULT_REMOTE_EMBED_CONCURRENCY,
            64,
            "requests in flight",
        );
        let max_chars = bounded(
            "max_chars",
            raw.max_chars,
            DEFAULT_REMOTE_EMBED_MAX_CHARS,
            1 << 20,
            "the longest text sent whole, in characters",
        );
        let provider = provider.filter(|_| self.issues.len() == start)?;
        Some(RemoteEmbedderConfig {
            provider,
            model: raw.model,
            dimensions,
            max_batch,
            concurrency,
            max_chars,
        })
    }

    pub(super) fn cache(
        &mut self,
        raw: Option<RawCache>,
        providers: &BTreeMap<String, Arc<ProviderConfig>>,
    ) -> CacheConfig {
        // No `cache:` section: caching is off. A section, even empty, turns it on with defaults.
        let present = raw.is_some();
        let raw = raw.unwrap_or_default();
        let version = match &raw.version {
            None => String::new(),
            Some(serde_yaml_ng::Value::String(s)) => s.clone(),
            Some(serde_yaml_ng::Value::Number(n)) => n.to_string(),
            Some(serde_yaml_ng::Value::Bool(b)) => b.to_string(),
            Some(_) => {
                self.issue("cache.version", "must be a string or a number");
                String::new()
            }
        };
        let ttl = self.duration("cache.ttl", raw.ttl.as_deref(), DEFAULT_CACHE_TTL);
        let max_entries = raw.max_entries.unwrap_or(DEFAULT_CACHE_MAX_ENTRIES);
        let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_CACHE_MAX_BYTES);
        if max_entries == 0 {
            self.issue("cache.max_entries", "must be at least 1 (or set cache.enabled: false)");
        }
        if max_bytes == 0 {
            self.issue("cache.max_bytes", "must be at least 1 (or set cache.enabled: false)");
        }
        let max_temperature = raw.max_temperature.unwrap_or(DEFAULT_MAX_TEMPERATURE);
        if !(max_temperature.is_finite() && max_temperature >= 0.0) {
            self.issue(
                "cache.max_temperature",
                "must be a number ≥ 0 (0 serves only temperature-0 requests)",
            );
        }
        let privacy_patterns: Vec<String> = raw
            .privacy_patterns
            .unwrap_or_else(|| DEFAULT_PRIVACY_PATTERNS.iter().map(|p| (*p).to_owned()).collect());
        for (i, p) in privacy_patterns.iter().enumerate() {
            if let Err(e) = regex::Regex::new(p) {
                self.issue(
                    format!("cache.privacy_patterns[{i}]"),
                    format!("is not a valid regex: {e}"),
                );
            }
        }
        let privacy = regex::RegexSet::new(&privacy_patterns).unwrap_or_else(|_| regex::RegexSet::empty());
        let mut s = raw.semantic.unwrap_or_default();
        let embedder = s.embedder.take().and_then(|e| self.remote_embedder(e, providers));
        let threshold = s.threshold.unwrap_or(DEFAULT_SEMANTIC_THRESHOLD);
        self.threshold("cache.semantic.threshold", threshold);
        let semantic = SemanticConfig {
            enabled: s.enabled.unwrap_or(true),
            threshold,
            guard: s.guard.unwrap_or(true),
            assets_dir: s.assets_dir.map(PathBuf::from).unwrap_or_else(default_assets_dir),
            timeout: self.duration("cache.semantic.timeout", s.timeout.as_deref(), DEFAULT_SEMANTIC_TIMEOUT),
            queue: s.queue.unwrap_or(DEFAULT_EMBED_QUEUE).max(1) as usize,
            max_batch: s.max_batch.map(|b| b.max(1) as usize),
            threads: s.threads.unwrap_or(1).clamp(1, 16) as usize,
            verify_sample: s.verify_sample.unwrap_or(DEFAULT_VERIFY_SAMPLE),
            verify_agreement: s.verify_agreement.unwrap_or(DEFAULT_VERIFY_AGREEMENT),
            mode: s
                .mode
                .as_deref()
                .and_then(|m| self.semantic_mode("cache.semantic.mode", m))
                .unwrap_or(SemanticMode::Serve),
            max_wrong_rate: s.max_wrong_rate,
            min_threshold: s.min_threshold.unwrap_or(DEFAULT_MIN_THRESHOLD),
            max_threshold: s.max_threshold.unwrap_or(DEFAULT_MAX_THRESHOLD),
            alignment_band: s.alignment_band.unwrap_or(DEFAULT_ALIGNMENT_BAND),
            min_alignment: s.min_alignment.unwrap_or(DEFAULT_MIN_ALIGNMENT),
            verifier: s.verifier.map(|v| {
                let model = PathBuf::from(v.model);
                let tokenizer = v.tokenizer.map(PathBuf::from).unwrap_or_else(|| {
                    model
                        .parent()
                        .unwrap_or(std::path::Path::new("."))
                        .join("tokenizer.json")
                });
                VerifierConfig {
                    model,
                    tokenizer,
                    min_score: v.min_score.unwrap_or(DEFAULT_VERIFIER_MIN_SCORE),
                }
            }),
            embedder,
        };
        if semantic.verifier.is_some() && semantic.embedder.is_some() {
            self.issue(
                "cache.semantic.verifier",
                "the pair verifier runs on the local model's ONNX Runtime: remove it, or remove cache.semantic.embedder to use the local model",
            );
        }
        if let Some(v) = &semantic.verifier {
            self.threshold("cache.semantic.verifier.min_score", v.min_score);
        }
        if !(0.0..=0.2).contains(&semantic.alignment_band) {
            self.issue(
                "cache.semantic.alignment_band",
                format!(
                    "{} is not a band: use a cosine distance from 0 (off) to 0.2 below the threshold (default 0.05)",
                    semantic.alignment_band
                ),
            );
        }
        self.threshold("cache.semantic.min_alignment", semantic.min_alignment);
        if let Some(m) = semantic.max_wrong_rate {
            self.wrong_rate("cache.semantic.max_wrong_rate", m);
        }
        self.threshold("cache.semantic.min_threshold", semantic.min_threshold);
        self.threshold("cache.semantic.max_threshold", semantic.max_threshold);
        self.threshold_range("cache.semantic", semantic.min_threshold, semantic.max_threshold);
        if !(0.0..=1.0).contains(&semantic.verify_sample) {
            self.issue(
                "cache.semantic.verify_sample",
                "must be a share between 0 (off) and 1 (every semantic hit)",
            );
        }
        self.threshold("cache.semantic.verify_agreement", semantic.verify_agreement);
        CacheConfig {
            enabled: present && raw.enabled.unwrap_or(true),
            version,
            ttl,
            max_entries: max_entries as usize,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            max_temperature,
            privacy,
            semantic,
            encryption: raw.encryption.and_then(|e| self.cache_keys(e)),
        }
    }

    /// `cache.encryption.keys`: each an id (kept in every entry it seals) and 32 bytes, base64
    /// or hex, from an environment variable or a file (a mounted Secret).
    fn cache_keys(&mut self, raw: RawEncryption) -> Option<CacheKeys> {
        let start = self.issues.len();
        if raw.keys.is_empty() {
            self.issue(
                "cache.encryption.keys",
                "list at least one key ({ id, key_env | key_file }), or remove cache.encryption",
            );
        }
        let mut keys: Vec<(Arc<str>, [u8; 32])> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            let path = format!("cache.encryption.keys[{i}]");
            let id_ok = !k.id.is_empty()
                && k.id.len() <= 64
                && k.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !id_ok {
                self.issue(
                    format!("{path}.id"),
                    format!("{:?}: use 1-64 letters, digits, '.', '_' or '-'", k.id),
                );
            } else if ids.contains(&k.id) {
                self.issue(format!("{path}.id"), format!("{:?} is listed twice", k.id));
            }
            ids.push(k.id.clone());
            let text = match (&k.key_env, &k.key_file) {
                (Some(var), None) => match self.vars.var(var).filter(|v| !v.trim().is_empty()) {
                    Some(v) => Some(v),
                    None => {
                        self.issue(
                            format!("{path}.key_env"),
                            format!("the environment variable {var} is not set or empty"),
                        );
                        None
                    }
                },
                (None, Some(file)) => match std::fs::read_to_string(file) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.issue(format!("{path}.key_file"), format!("cannot read {file}: {e}"));
                        None
                    }
                },
                _ => {
                    self.issue(&path, "set exactly one of key_env and key_file");
                    None
                }
            };
            let Some(text) = text else { continue };
            match key_bytes(text.trim()) {
                Some(bytes) => keys.push((k.id.as_str().into(), bytes)),
                None => self.issue(
                    &path,
                    "the key must be 32 bytes, base64 (44 characters) or hex (64): e.g. `openssl rand -base64 32`",
                ),
            }
        }
        (self.issues.len() == start && !keys.is_empty()).then_some(CacheKeys { keys })
    }
}

/// 32 bytes from base64 or hex text.
fn key_bytes(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let mut out = [0u8; 32];
    if text.len() == 64 && hex::decode_to_slice(text, &mut out).is_ok() {
        return Some(out);
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    out.copy_from_slice(bytes.get(..32).filter(|_| bytes.len() == 32)?);
    Some(out)
}
