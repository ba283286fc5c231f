//! Optional active health checks: a `GET` on a provider's `health_check.path` every interval.
//! A failed probe opens the circuit of every model on that provider, so app requests fail over
//! at once instead of each discovering the outage; a passing probe leaves breakers alone
//! (the half-open probes of real traffic close them).

use std::time::Duration;

use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Empty};
use tokio::time::Instant;

use crate::config::HealthCheck;
use crate::scheduler::QueueError;
use crate::upstream::{ClientBody, Provider};

/// Probes `provider` once. `Err` says why it failed.
pub async fn probe(provider: &Provider, check: &HealthCheck) -> Result<(), String> {
    let uri = provider.uri(&check.path, None).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + check.timeout;
    // Probes skip the priority queue's waiting line: a probe stuck behind a full queue would
    // report the sidecar's own load as the provider's failure.
    let permit = provider
        .scheduler
        .acquire(0, Duration::ZERO, 0)
        .await
        .map_err(|e: QueueError| e.to_string());
    let permit = match permit {
        Ok(p) => p,
        // Every slot busy with real traffic: the provider is answering, nothing to learn.
        Err(_) => return Ok(()),
    };
    let body: ClientBody = Empty::new().map_err(|never| match never {}).boxed();
    let up = provider
        .send(Method::GET, uri, HeaderMap::new(), body, deadline, permit)
        .await
        .map_err(|e| e.to_string())?;
    let status = up.response.status();
    if status.is_server_error() {
        return Err(format!("HTTP {status}"));
    }
    Ok(())
}
