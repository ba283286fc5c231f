//! llm-sidecar: an OpenAI-compatible proxy that lives next to each application pod.
//!
//! # Layout
//!
//! Modules depend downward only: each may use the ones listed before it, never one after it.
//! `scripts/check-layers` (run by CI) reads every `crate::` path and fails on an upward one.
//! The public surface is [`app`] (start, reload, stop a sidecar; see `docs/library.md`),
//! [`plugin`] (the extension traits), [`mock`] (an upstream for a host's own tests) and
//! [`inject`] (the admission webhook, the binary's second entry point). Every other module is
//! crate-private; this crate's own benches and integration tests see them through the
//! `internals` feature, which is not an API.
//!
//! - `tasks` (crate-private) — the background tasks, stopped and awaited together at shutdown.
//! - `config` — the YAML schema, `${VAR}` interpolation, validation into an immutable
//!   `config::Config` with precise key paths, and the watched file source.
//! - [`plugin`] — the extension traits a program embedding the sidecar implements: a routing
//!   strategy, a shared cache store, a request sink.
//! - `openai` — the slices of the OpenAI wire format we read: endpoints, request head, usage,
//!   SSE, the check of a provider's answer.
//! - `embed` — the sentence embedder (ONNX Runtime, WordPiece) on its own thread, its two-lane
//!   queue, word states for token alignment, the optional pair verifier.
//! - `telemetry` — the Prometheus registry and metric families; the JSON log line; request
//!   traces and their OTLP export; the live dashboard's ring and cost advice.
//! - `scheduler` (crate-private) — per-provider concurrency slots and the priority queue in
//!   front of them.
//! - `upstream` (crate-private) — provider clients over rustls, timeouts; the Anthropic
//!   translation; the header allowlist and secret redaction.
//! - `resilience` — backoff with jitter, the retry budget, circuit breakers, latency EWMAs,
//!   active health checks.
//! - `router` — route matching and strategies → ordered candidate models, with a reason.
//! - `redis_link` (crate-private) — the Redis connection the fleet features share (URL,
//!   connect, backoff).
//! - `limits` — tenant identification, rate limits and budgets (the ledger), fleet sync.
//! - `callout` (crate-private) — the HTTP callouts before routing and after the answer.
//! - `cache` — the exact and semantic cache: keys, the guard, token alignment, the store and
//!   its indexes, replay in either shape, the Redis L2, per-route measured quality.
//! - `state` — the live `state::Runtime` snapshot behind one `ArcSwap`, and reload.
//! - [`mock`] — an in-process OpenAI-compatible upstream for the demo, benches and tests.
//! - `server` — HTTP: the OpenAI endpoints, passthrough, the relay/tee, errors, admin port.
//! - [`app`] — start-up, signals and graceful shutdown of one sidecar.
//! - [`inject`] — the mutating admission webhook (a separate process: `llm-sidecar inject`).
//!
//! The request path, in files: `server/mod.rs` (routing of URLs) → `server/proxy.rs` (the
//! stages: tenant, body, admission, route, cache plan and lookup) → `router/mod.rs` (decision)
//! → `server/attempt.rs` (candidates, retries and failover; breaker, queue, one attempt) →
//! `upstream/mod.rs` (send) → `server/response.rs` (the body read whole or kept as a stream;
//! `server/commit.rs` reads a stream to its first content event) → `server/settle.rs` (what
//! the breaker learns) → `server/reply.rs` (the answer to the app) → `server/relay.rs`
//! (stream back, account) → `server/record.rs` (log line, metrics, the trace's root span).
//! Uninterpreted `/v1` paths take `server/passthrough.rs`; sampled cache hits are checked
//! again through the same attempt path by `server/verify.rs`. What each stage adds to a
//! sampled request's trace is in `server/traced.rs`.

#![forbid(unsafe_code)]

pub mod app;
pub(crate) mod callout;
pub mod inject;
pub mod mock;
pub mod plugin;
pub(crate) mod redis_link;
pub(crate) mod scheduler;
pub(crate) mod tasks;
pub(crate) mod upstream;

/// Modules that are crate-private, except for this crate's own benches and integration tests:
/// they turn on the `internals` feature (through a dev-dependency on the crate itself), under
/// which these are public and hidden from the docs. Not an API.
macro_rules! internal {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        pub(crate) mod $name;
    )*};
}

internal!(
    cache, config, embed, limits, openai, resilience, router, server, state, telemetry
);

/// The demo's config, embedded in the binary.
pub(crate) const DEMO_CONFIG: &str = include_str!("demo.yaml");
