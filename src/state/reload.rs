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
    source: FileSource,
    vars: Arc<dyn VarLookup + Send + Sync>,
    /// Serialises reloads (watcher and SIGHUP may fire together) so generations stay ordered.
    lock: std::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(shared: Arc<Shared>, source: FileSource, vars: Arc<dyn VarLookup + Send + Sync>) -> Self {
        Self {
            shared,
            source,
            vars,
            lock: std::sync::Mutex::new(()),
        }
    }

    pub fn source(&self) -> &FileSource {
        &self.source
    }

    /// Blocking: reads files. Call from a blocking thread. An identical config text is
    /// skipped unless `force` (SIGHUP), which also re-reads key files and CA bundles.
    pub fn reload(&self, force: bool) -> ReloadOutcome {
        let _guard = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let metrics = &self.shared.metrics;
        let text = match self.source.read() {
            Ok(t) => t,
            Err(e) => {
                // Kubelet's swap can leave the path briefly dangling; the next event retries.
                tracing::warn!(error = %e, "config reload: cannot read the config file; keeping the current config");
                metrics.reload("read_failed");
                return ReloadOutcome::ReadFailed(e);
            }
        };
        let current = self.shared.runtime.load_full();
        if !force && hex::encode(Sha256::digest(text.as_bytes())) == current.config.digest {
            metrics.reload("unchanged");
            return ReloadOutcome::Unchanged;
        }
        let generation = current.generation + 1;
        let prepared = Config::load(&text, &*self.vars).and_then(|c| Runtime::build(c, Some(&current), generation));
        match prepared {
            Ok(next) => {
                if next.config.listen != current.config.listen
                    || next.config.admin_listen != current.config.admin_listen
                {
                    tracing::warn!(
                        "config reload: listen/admin_listen changed; addresses apply at the next restart, the rest applies now"
                    );
                }
                let version = next.config.version.clone().unwrap_or_default();
                let (old_cache, new_cache) = (&current.config.cache, &next.config.cache);
                // Entries of another cache version can never be hit again: free them now.
                let purge = old_cache.version != new_cache.version || !new_cache.enabled;
                if new_cache.enabled && new_cache.semantic.enabled && !self.shared.cache.semantic_available() {
                    tracing::warn!(
                        "the semantic cache is enabled but the embedder was not loaded at start; restart to load it"
                    );
                }
                next.attach(&self.shared.metrics);
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
                tracing::info!(generation, version = %version, path = %self.source.path().display(), "config reloaded");
                ReloadOutcome::Applied { generation }
            }
            Err(errors) => {
                metrics.reload("rejected");
                tracing::error!(
                    path = %self.source.path().display(),
                    problems = %errors,
                    "config reload rejected; the last good config (generation {}) keeps serving",
                    current.generation
                );
                ReloadOutcome::Rejected(errors)
            }
        }
    }
}
