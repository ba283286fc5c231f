//! The config from one ConfigMap, read and watched through the Kubernetes API
//! (`kube::runtime::watcher` restricted to that one name, so RBAC can grant get/list/watch on
//! `resourceNames: [NAME]` only). An edit reaches the sidecar in about a second, instead of
//! kubelet's sync delay for mounted ConfigMaps, and one ConfigMap in the platform's namespace
//! can steer every sidecar in the cluster.
//!
//! After a `410 Gone` (expired resource version) the watcher re-lists at once; when the API
//! server goes away it reconnects with backoff. A deleted ConfigMap, or one without the key,
//! leaves the last good config serving (a log line says so).

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::mpsc;

/// The backoff's own cap, should it ever stop yielding delays.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where the service account's namespace is mounted in every pod.
const SA_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(String),
    #[error("ConfigMap {namespace}/{name}: {detail}")]
    Get {
        namespace: String,
        name: String,
        detail: String,
    },
    #[error("ConfigMap {namespace}/{name} has no key {key:?}: put the config under data.{key}")]
    NoKey {
        namespace: String,
        name: String,
        key: String,
    },
}

/// One ConfigMap key as a config source.
#[derive(Clone)]
pub struct KubeSource {
    api: Api<ConfigMap>,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) key: String,
}

/// What the watch saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The key's text (possibly unchanged; the reloader skips identical text).
    Text(String),
    /// The ConfigMap is gone or lost the key: keep serving the last good config.
    Gone(String),
}

impl KubeSource {
    /// `spec` is `NAMESPACE/NAME` or `NAME` (the pod's own namespace: `$POD_NAMESPACE`, the
    /// service account's namespace, or the client's default). `client`: `None` for the
    /// in-cluster or kubeconfig default.
    pub async fn new(spec: &str, key: &str, client: Option<Client>) -> Result<Self, KubeSourceError> {
        let client = match client {
            Some(c) => c,
            None => Client::try_default()
                .await
                .map_err(|e| KubeSourceError::Client(e.to_string()))?,
        };
        let (namespace, name) = match spec.split_once('/') {
            Some((ns, name)) => (ns.to_owned(), name.to_owned()),
            None => {
                let ns = std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
                    .or_else(|| std::fs::read_to_string(SA_NAMESPACE).ok().map(|s| s.trim().to_owned()))
                    .unwrap_or_else(|| client.default_namespace().to_owned());
                (ns, spec.to_owned())
            }
        };
        Ok(KubeSource {
            api: Api::namespaced(client, &namespace),
            namespace,
            name,
            key: key.to_owned(),
        })
    }

    fn text(&self, cm: &ConfigMap) -> Result<String, KubeSourceError> {
        cm.data
            .as_ref()
            .and_then(|d| d.get(&self.key))
            .cloned()
            .ok_or_else(|| KubeSourceError::NoKey {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                key: self.key.clone(),
            })
    }

    /// Reads the config once (at start: a missing ConfigMap is an error, there is nothing to serve).
    pub(crate) async fn read(&self) -> Result<String, KubeSourceError> {
        let cm = self.api.get(&self.name).await.map_err(|e| KubeSourceError::Get {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            detail: e.to_string(),
        })?;
        self.text(&cm)
    }

    /// Watches the ConfigMap until the receiver is dropped; sends every state it sees.
    pub(crate) fn watch(self) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(8);
        // Ends by itself when the receiver (the sidecar's watch, a background task) is dropped.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
            let mut events = watcher::watcher(self.api.clone(), config).boxed();
            let mut failing = false;
            // kube-rs's own watcher backoff (0.8 s doubling to 30 s, jittered), driven here
            // rather than wrapped around the stream, so a 410 can skip it.
            let mut backoff = watcher::DefaultBackoff::default();
            // A 410 was just answered with an immediate re-list.
            let mut relisted = false;
            while let Some(event) = events.next().await {
                let change = match event {
                    Ok(Event::Apply(cm) | Event::InitApply(cm)) => {
                        failing = false;
                        relisted = false;
                        backoff.reset();
                        match self.text(&cm) {
                            Ok(t) => Change::Text(t),
                            Err(e) => Change::Gone(e.to_string()),
                        }
                    }
                    Ok(Event::Delete(_)) => {
                        Change::Gone(format!("ConfigMap {}/{} was deleted", self.namespace, self.name))
                    }
                    Ok(Event::Init | Event::InitDone) => continue,
                    Err(error) => {
                        // `410 Gone` (the resource version was compacted away) is not an
                        // outage: the watcher re-lists on the next poll, so it goes at once — a
                        // backoff there held an edit for seconds against a real API server. A
                        // second one in a row waits like any other error.
                        let expired = matches!(&error, watcher::Error::WatchError(s) if s.code == 410);
                        if expired && !std::mem::replace(&mut relisted, true) {
                            tracing::debug!(%error, "config watch expired; re-listing");
                            continue;
                        }
                        // Say so once per outage.
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(%error, configmap = %format!("{}/{}", self.namespace, self.name), "config watch failed; retrying with backoff, the current config keeps serving");
                        }
                        tokio::time::sleep(backoff.next().unwrap_or(MAX_BACKOFF)).await;
                        continue;
                    }
                };
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}
