//! The Redis link every fleet feature shares (fleet rate limits and budgets in
//! `limits::fleet`, the shared L2 cache in `cache::l2`): the connection URL with its password,
//! a connect bounded by `redis.timeout`, the key prefix with its Cluster hash tag, and [`Link`],
//! which reconnects with backoff and reports Redis health (`llm_sidecar_redis_up`, one log line
//! per outage) for one background task.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::config::RedisConfig;
use crate::telemetry::{Metrics, ReasonLabels};

/// Reconnect backoff of every Redis task: doubling from MIN, capped at MAX.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The connection URL with the password put in (never logged).
pub(crate) fn url(cfg: &RedisConfig) -> String {
    match &cfg.password {
        None => cfg.url.clone(),
        Some(p) => {
            let enc: String =
                p.0.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
            // Redis 6+ ACL user `default` is what a plain `requirepass` authenticates.
            cfg.url.replacen("://", &format!("://default:{enc}@"), 1)
        }
    }
}

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?} (redis.timeout)")]
    Timeout(Duration),
}

/// Opens a connection within the configured timeout.
pub(crate) async fn connect(cfg: &RedisConfig) -> Result<MultiplexedConnection, RedisError> {
    let client = redis::Client::open(url(cfg))?;
    let within = cfg.timeout.max(Duration::from_secs(1));
    match tokio::time::timeout(within, client.get_multiplexed_async_connection()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(RedisError::Timeout(within)),
    }
}

/// Key prefix with a hash tag, so every key of a fleet lands in one Redis Cluster slot.
pub(crate) fn prefix(cfg: &RedisConfig) -> String {
    format!("{{{}}}", cfg.key_prefix)
}

/// Tracks Redis health for one background task: logs the first failure and the recovery.
pub struct Link {
    pub(crate) metrics: Arc<Metrics>,
    what: &'static str,
    down_since: Option<std::time::Instant>,
}

impl Link {
    pub(crate) fn new(metrics: Arc<Metrics>, what: &'static str) -> Self {
        Link {
            metrics,
            what,
            down_since: None,
        }
    }

    pub(crate) fn failed(&mut self, reason: &'static str, error: &dyn std::fmt::Display) {
        self.metrics.redis_errors.get_or_create(&ReasonLabels { reason }).inc();
        self.metrics.redis_up.set(0);
        if self.down_since.is_none() {
            self.down_since = Some(std::time::Instant::now());
            tracing::warn!(task = self.what, %error, "Redis unreachable: serving on local state, reconnecting in the background");
        }
    }

    /// Connects, retrying with exponential backoff (logged once per outage) until it works.
    pub(crate) async fn connect(&mut self, cfg: &RedisConfig) -> MultiplexedConnection {
        let mut backoff = BACKOFF_MIN;
        loop {
            match connect(cfg).await {
                Ok(c) => {
                    self.ok();
                    return c;
                }
                Err(e) => {
                    self.failed("connect", &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    pub(crate) fn ok(&mut self) {
        self.metrics.redis_up.set(1);
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                task = self.what,
                down_for_ms = since.elapsed().as_millis() as u64,
                "Redis reachable again: fleet state resumed"
            );
        }
    }
}
