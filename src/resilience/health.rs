//! Optional active health checks: a `GET` on a provider's `health_check.path` every interval.
//! A failed probe opens the circuit of every model on that provider, so app requests fail over
//! at once instead of each discovering the outage; a passing probe leaves breakers alone
//! (the half-open probes of real traffic close them).

use std::time::Duration;

use http::{HeaderMap, Method};
use tokio::time::Instant;

use crate::config::HealthCheck;
use crate::scheduler::QueueError;
use crate::upstream::{ClientBody, Provider, UpstreamError};

/// Why a health probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("bad probe URL: {0}")]
    Url(#[from] http::Error),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("HTTP {0}")]
    Status(http::StatusCode),
}

/// Probes `provider` once. `Err` says why it failed.
pub(crate) async fn probe(provider: &Provider, check: &HealthCheck) -> Result<(), ProbeError> {
    let uri = provider.uri(&check.path, None)?;
    let deadline = Instant::now() + check.timeout;
    // Probes skip the priority queue's waiting line: a probe stuck behind a full queue would
    // report the sidecar's own load as the provider's failure.
    let permit: Result<_, QueueError> = provider.scheduler.acquire(0, Duration::ZERO, 0).await;
    let permit = match permit {
        Ok(p) => p,
        // Every slot busy with real traffic: the provider is answering, nothing to learn.
        Err(_) => return Ok(()),
    };
    let body = ClientBody::empty();
    let up = provider
        .send(Method::GET, uri, HeaderMap::new(), body, deadline, permit)
        .await?;
    let status = up.response.status();
    if status.is_server_error() {
        return Err(ProbeError::Status(status));
    }
    Ok(())
}
