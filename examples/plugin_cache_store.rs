// An example: a failed assumption should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A cache store of your own (`llm_sidecar::plugin::CacheStore`) behind the sidecar's cache:
//! here a map shared by two sidecars in one process, standing in for memcached or a database.
//! The first sidecar's answer is stored; the second finds it after its own exact miss and
//! serves it without asking the provider.
//!
//!   cargo run --example plugin_cache_store

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llm_sidecar::app::{Options, Sidecar};
use llm_sidecar::mock::MockUpstream;
use llm_sidecar::plugin::{CacheKey, CacheStore, StoreFuture, StoredAnswer};

#[derive(Clone, Default)]
struct SharedMap(Arc<Mutex<HashMap<CacheKey, (StoredAnswer, Instant)>>>);

impl CacheStore for SharedMap {
    fn get<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a> {
        let found = self
            .0
            .lock()
            .unwrap()
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(answer, _)| answer.clone());
        Box::pin(async move { found })
    }

    fn put(&self, key: &CacheKey, answer: StoredAnswer, ttl: Duration) {
        self.0.lock().unwrap().insert(*key, (answer, Instant::now() + ttl));
    }
}

/// Two sidecars sharing one store: returns the cache status each answered with and how many
/// requests reached the provider.
pub async fn run() -> (Vec<String>, usize) {
    let mock = MockUpstream::start().await.unwrap();
    let store = SharedMap::default();
    let config = format!(
        "providers: {{ mock: {{ base_url: \"{}\" }} }}\nmodels: {{ m: {{ provider: mock }} }}\ncache: {{ semantic: {{ enabled: false }} }}\n",
        mock.base_url()
    );
    let any = "127.0.0.1:0".parse().unwrap();
    let mut sidecars = Vec::new();
    for _ in 0..2 {
        let options = Options::from_yaml(config.clone())
            .listen(any)
            .admin_listen(any)
            .cache_store(store.clone());
        sidecars.push(Sidecar::start(options).await.unwrap());
    }
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for sidecar in &sidecars {
        let r = client
            .post(format!("http://{}/v1/chat/completions", sidecar.app_addr()))
            .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "What is a sidecar?"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        statuses.push(r.headers()["x-llm-sidecar-cache"].to_str().unwrap().to_owned());
    }
    let upstream = mock
        .requests()
        .iter()
        .filter(|r| r.path_and_query == "/v1/chat/completions")
        .count();
    for s in sidecars {
        s.shutdown().await;
    }
    (statuses, upstream)
}

#[tokio::main]
async fn main() {
    let (statuses, upstream) = run().await;
    println!("first sidecar: {}, second sidecar: {}", statuses[0], statuses[1]);
    println!("requests that reached the provider: {upstream}");
}
