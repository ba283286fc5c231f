//! In-process extension points for a Rust program that embeds the sidecar: a routing strategy,
//! a shared cache store and a request sink, each a trait the host implements and registers on
//! [`crate::app::Options`] (`.strategy(..)`, `.cache_store(..)`, `.sink(..)`). The binary
//! registers none; everyone else extends the sidecar over HTTP (`callouts`). Examples of each
//! are in `examples/` (built and run by `tests/examples.rs`); `docs/library.md` has the
//! contract.
//!
//! ```no_run
//! use llm_sidecar::app::{Options, Sidecar, StartError};
//! use llm_sidecar::plugin::{RequestEvent, RequestSink};
//!
//! /// Every finished request, one line on stderr.
//! struct Stderr;
//!
//! impl RequestSink for Stderr {
//!     fn record(&self, e: &RequestEvent<'_>) {
//!         eprintln!("{} {} {:?} ${:.6}", e.request_id, e.status, e.model, e.cost_usd);
//!     }
//! }
//!
//! async fn start() -> Result<Sidecar, StartError> {
//!     Sidecar::start(Options::from_file("/etc/llm-sidecar/config.yaml").sink(Stderr)).await
//! }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

/// A routing strategy a route names with `strategy: plugin` and `plugin: <name>`.
pub trait RoutingStrategy: Send + Sync + 'static {
    /// Puts the route's eligible `candidates` (those with the capabilities and context window
    /// the request needs, on a usable provider; in the route's order) in the order they are
    /// tried: the first is sent first, the others are its fallbacks. It may remove some; if it
    /// removes all, the route's own order is used. Runs on the request path: keep it cheap.
    fn order(&self, request: &RouteRequest<'_>, candidates: &mut Vec<Candidate>);
}

/// What a [`RoutingStrategy`] knows of the request.
#[non_exhaustive]
pub struct RouteRequest<'a> {
    /// The route being applied.
    pub route: &'a str,
    pub tenant: &'a str,
    /// The model (or alias) the app asked for.
    pub model: &'a str,
    /// The prompt's estimated tokens.
    pub prompt_tokens: u64,
    /// The last user turn.
    pub text: Option<&'a str>,
    /// The request's `user` field.
    pub user: Option<&'a str>,
}

/// One model a route can send the request to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Candidate {
    pub model: Arc<str>,
    pub provider: Arc<str>,
    /// USD per million input and output tokens.
    pub input_price: f64,
    pub output_price: f64,
    /// The model's observed latency (EWMA of time to headers), once measured.
    pub latency: Option<Duration>,
    /// The target's `weight` in the route.
    pub weight: u32,
    /// Where it came from in the route's list, to map the order back.
    pub(crate) index: usize,
}

/// What [`CacheStore::get`] returns.
pub type StoreFuture<'a> = Pin<Box<dyn Future<Output = Option<StoredAnswer>> + Send + 'a>>;

/// An answer as a [`CacheStore`] keeps it.
#[derive(Debug, Clone)]
pub struct StoredAnswer {
    /// A complete JSON response (chat, completions, responses), as the provider sent it.
    pub answer: Bytes,
    /// The config's name of the model that answered (`x-llm-sidecar-model` on a hit).
    pub model: String,
}

/// A shared cache behind the sidecar's own (an in-process map, memcached, a database): asked
/// after an exact miss in memory, told every answer stored. Keys already carry everything
/// that scopes an answer (tenant scope, route, model, parameters, `cache.version`).
pub trait CacheStore: Send + Sync + 'static {
    /// The answer stored under `key`, if any. Waited for at most `cache.semantic.timeout`;
    /// what it returns is checked like any provider answer before it is served.
    fn get<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a>;
    /// Stores a complete, checked answer. Called on the request path: must not block (hand
    /// slow work to a task or a channel).
    fn put(&self, key: &CacheKey, answer: StoredAnswer, ttl: Duration);
}

/// The exact-match key of a request: a SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Told about every request the app made, once it has ended (its stream included): to feed
/// the host's own metrics, logs or billing.
pub trait RequestSink: Send + Sync + 'static {
    /// Called on the runtime's thread as the request ends: must not block.
    fn record(&self, event: &RequestEvent<'_>);
}

/// One finished request, as sinks and the `after_answer` callout see it: what happened, never
/// the prompt or the answer.
#[derive(Debug, Serialize)]
#[non_exhaustive]
pub struct RequestEvent<'a> {
    pub point: &'static str,
    pub request_id: &'a str,
    pub tenant: Option<&'a str>,
    /// `chat`, `completions`, `embeddings` or `responses`.
    pub endpoint: &'static str,
    pub route: Option<&'a str>,
    pub model: Option<&'a str>,
    pub provider: Option<&'a str>,
    /// The HTTP status the app got.
    pub status: u16,
    /// The log line's outcome: `ok`, `cache_hit`, `rejected`, `rate_limited`, ….
    pub outcome: &'static str,
    /// `hit-exact`, `hit-semantic`, `miss` or `bypass`.
    pub cache: &'static str,
    pub stream: bool,
    pub attempts: u32,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cost_usd: f64,
    pub duration_ms: f64,
}

/// The request sinks a host registered, shared by every request's record.
pub(crate) type Sinks = Arc<[Arc<dyn RequestSink>]>;

/// The extensions a host registered.
#[derive(Clone, Default)]
pub struct Plugins {
    pub(crate) strategies: HashMap<String, Arc<dyn RoutingStrategy>>,
    pub(crate) cache_store: Option<Arc<dyn CacheStore>>,
    pub(crate) sinks: Vec<Arc<dyn RequestSink>>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("strategies", &self.strategies.keys().collect::<Vec<_>>())
            .field("cache_store", &self.cache_store.is_some())
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl Plugins {
    pub(crate) fn strategy(&self, name: &str) -> Option<&Arc<dyn RoutingStrategy>> {
        self.strategies.get(name)
    }
}
