//! Applying a changed config: read, parse, validate, prepare a whole new [`Runtime`] — all
//! fallible, all before anything changes — then swap it in with one infallible store. A
//! rejected config is logged with every problem, counted, and the last good one keeps serving.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Runtime, Shared};
use crate::config::source::{FileSource, SourceError};
use crate::config::{Config, ConfigErrors, VarLookup};

#[derive(Debug)]
pub enum ReloadOutcome {
    Applied { generation: u64 },
    Unchanged,
    Rejected(ConfigErrors),
    ReadFailed(SourceError),
}

pub struct Reloader {
    shared: Arc<Shared>,
    /// The watched file, or `None` when the text arrives from elsewhere (the Kubernetes API).
    source: Option<FileSource>,
    /// The last text given to [`Self::apply_text`], re-applied by a forced reload (SIGHUP).
    last_text: std::sync::Mutex<Option<String>>,
    vars: Arc<dyn VarLookup + Send + Sync>,
    /// Serialises reloads (watcher and SIGHUP may fire together) so generations stay ordered.
    lock: std::sync::Mutex<()>,
}

impl Reloader {
    pub(crate) fn new(shared: Arc<Shared>, source: Option<FileSource>, vars: Arc<dyn VarLookup + Send + Sync>) -> Self {
        Self {
            shared,
            source,
            last_text: std::sync::Mutex::new(None),
            vars,
            lock: std::sync::Mutex::new(()),
        }
    }

    /// Where the config comes from, for log lines.
    fn describe(&self) -> String {
        match &self.source {
            Some(s) => s.path().display().to_string(),
            None => "kubernetes-api".to_owned(),
        }
    }

    pub(crate) fn metrics(&self) -> &crate::telemetry::Metrics {
        &self.shared.metrics
    }

    pub(crate) fn source(&self) -> Option<&FileSource> {
        self.source.as_ref()
    }

    /// Applies config text that arrived from outside (a ConfigMap through the API).
    /// Blocking like [`Self::reload`].
    pub(crate) fn apply_text(&self, text: String) -> ReloadOutcome {
        if let Ok(mut last) = self.last_text.lock() {
            *last = Some(text.clone());
        }
        let _guard = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.apply(text, false)
    }

    /// Blocking: reads files. Call from a blocking thread. An identical config text is
    /// skipped unless `force` (SIGHUP), which also re-reads key files and CA bundles.
    pub(crate) fn reload(&self, force: bool) -> ReloadOutcome {
        let _guard = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let metrics = &self.shared.metrics;
        let read = match &self.source {
            Some(source) => source.read_settled(),
            None => match self.last_text.lock().ok().and_then(|t| t.clone()) {
                Some(t) => Ok(t),
                None => return ReloadOutcome::Unchanged,
            },
        };
        let text = match read {
            Ok(t) => t,
            Err(e) => {
                // Kubelet's swap can leave the path briefly dangling; the next event retries.
                tracing::warn!(error = %e, "config reload: cannot read the config file; keeping the current config");
                metrics.reload("read_failed");
                return ReloadOutcome::ReadFailed(e);
            }
        };
        self.apply(text, force)
    }

    fn apply(&self, text: String, force: bool) -> ReloadOutcome {
        let metrics = &self.shared.metrics;
        let current = self.shared.runtime.load_full();
        if !force && hex::encode(Sha256::digest(text.as_bytes())) == current.config.digest {
            metrics.reload("unchanged");
            return ReloadOutcome::Unchanged;
        }
        let generation = current.generation + 1;
        let prepared = Config::load(&text, &*self.vars)
            .and_then(|c| Runtime::build(c, Some(&current), generation, &self.shared.plugins));
        match prepared {
            Ok(next) => {
                if next.config.listen != current.config.listen
                    || next.config.admin_listen != current.config.admin_listen
                {
                    tracing::warn!(
                        "config reload: listen/admin_listen changed; addresses apply at the next restart, the rest applies now"
                    );
                }
                if next.config.redis != current.config.redis {
                    tracing::warn!("config reload: the redis section changed; it applies at the next restart");
                }
                let version = next.config.version.clone().unwrap_or_default();
                let (old_cache, new_cache) = (&current.config.cache, &next.config.cache);
                // Entries of another cache version can never be hit again: free them now.
                let purge = old_cache.version != new_cache.version || !new_cache.enabled;
                // Before the swap: requests of the new config find its embedder (a model loads
                // here, on the reload's blocking thread; one that cannot start keeps the old).
                self.shared
                    .cache
                    .reconfigure(new_cache, super::semantic_routes(&next.config));
                next.attach(&self.shared.metrics);
                self.shared.tracer.configure(next.config.tracing.clone());
                self.shared.runtime.store(Arc::new(next));
                if purge {
                    let n = self.shared.cache.purge(None, None);
                    if n > 0 {
                        tracing::info!(
                            entries = n,
                            "cache emptied: cache.version changed or the cache was disabled"
                        );
                    }
                }
                metrics.reload("applied");
                metrics.config_generation.set(generation as i64);
                tracing::info!(generation, version = %version, source = %self.describe(), "config reloaded");
                ReloadOutcome::Applied { generation }
            }
            Err(errors) => {
                metrics.reload("rejected");
                tracing::error!(
                    source = %self.describe(),
                    problems = %errors,
                    "config reload rejected; the last good config (generation {}) keeps serving",
                    current.generation
                );
                ReloadOutcome::Rejected(errors)
            }
        }
    }
}
