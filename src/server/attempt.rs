//! Sending a routed request: candidates in the decision's order; for each, the circuit breaker
//! is asked, a slot is taken from the provider's priority queue, and the request is sent,
//! retried with backoff on the same candidate (connect errors, resets, 5xx, 429 within the
//! retry budget, honouring `retry-after`) and otherwise failed over to the next. All of this
//! happens before anything has gone to the app: the first response byte commits.
//!
//! Timeouts go to the next candidate without a retry: a provider that made us wait once will
//! likely make us wait again, and the app is waiting too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::commit::{Committed, first_event};
use super::error::ApiError;
use super::headers;
use super::record::{Outcome as RecordOutcome, RequestRecord, operation_name};
use super::response::{Received, error_message, full, internal, receive};
use super::settle::{Settle, transition};
use super::traced;
use crate::openai::Endpoint;
use crate::openai::answer;
use crate::openai::{RequestHead, SseScanner, Usage};
use crate::resilience::{backoff, parse_retry_after};
use crate::router::{Decision, Route, Target};
use crate::scheduler::{Permit, QueueError};
use crate::state::{Runtime, Shared};
use crate::telemetry::trace::Kind;
use crate::telemetry::{PriorityLabels, QueueRejectLabels};
use crate::upstream::adapter::StreamTranslate;
use crate::upstream::{BodyFailure, Provider, Upstream, UpstreamError, error_chain};

/// A provider's answer, ready to relay.
pub(super) struct Success {
    pub(crate) parts: http::response::Parts,
    pub(crate) body: Received,
    pub(crate) permit: Permit,
    pub(crate) target: Target,
    pub(crate) strip_usage: bool,
    pub(crate) idle: Duration,
    pub(crate) deadline: Instant,
    pub(crate) translate: Option<Box<dyn StreamTranslate>>,
    /// The usage of a whole answer, read when it was checked.
    pub(crate) usage: Option<Usage>,
    /// A stream committed at its first content event: what was read to get there.
    pub(crate) committed: Option<Committed>,
}

/// The timing and shape of one exchange with a provider.
struct Exchange {
    started: Instant,
    deadline: Instant,
    idle: Duration,
    strip_usage: bool,
}

impl Exchange {
    fn new(provider: &Provider, strip_usage: bool) -> Self {
        let started = Instant::now();
        Exchange {
            started,
            deadline: started + provider.config.timeouts.total,
            idle: provider.config.timeouts.idle,
            strip_usage,
        }
    }
}

/// What a checked 2xx carries besides its body.
struct Checked {
    translate: Option<Box<dyn StreamTranslate>>,
    /// A whole answer's usage, read when it was checked.
    usage: Option<Usage>,
    committed: Option<Committed>,
}

/// A 2xx (or an error body) the app must not get: a failure of the provider, retried.
fn malformed(settle: Settle, provider: &Provider, status: StatusCode, detail: String) -> Outcome {
    let e = UpstreamError::Malformed {
        provider: provider.name().clone(),
        status,
        detail,
    };
    settle.failed(e.kind());
    Outcome::Retry(e)
}

enum Outcome {
    Done(Box<Success>),
    /// Worth another try on the same candidate.
    Retry(UpstreamError),
    /// Go to the next candidate.
    Next(UpstreamError),
    /// Stop: the app gets this error.
    Fatal(ApiError),
}

pub(super) struct Attempt<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) rt: &'a Runtime,
    pub(crate) endpoint: Endpoint,
    pub(crate) head: &'a RequestHead<'a>,
    pub(crate) body: &'a Bytes,
    pub(crate) app_headers: &'a HeaderMap,
    /// Headers the before_route callout adds upstream.
    pub(crate) added_headers: Option<&'a HeaderMap>,
    pub(crate) class: usize,
    /// Sent as `x-llm-sidecar-purpose` on requests the sidecar makes on its own, so a
    /// provider's logs can tell them from the app's.
    pub(crate) purpose: Option<&'static str>,
}

impl Attempt<'_> {
    pub(crate) async fn run(&self, rec: &mut RequestRecord, decision: &Decision) -> Result<Success, ApiError> {
        let res = &self.rt.config.resilience;
        self.shared.retry_budget.request(&res.retry_budget);
        let mut failures: Vec<(Arc<str>, UpstreamError)> = Vec::new();
        for target in &decision.candidates {
            let Some(provider) = self.rt.providers.get(&target.model.provider) else {
                continue;
            };
            let mut retry_after = None;
            for attempt in 0..res.retries.max_attempts {
                if attempt > 0
                    && !Box::pin(self.wait_to_retry(rec, target, provider, attempt, retry_after, &failures)).await
                {
                    break;
                }
                match self.once(rec, &decision.route, target, provider).await {
                    Outcome::Done(s) => return Ok(*s),
                    Outcome::Retry(e) => {
                        retry_after = match &e {
                            UpstreamError::Status { retry_after, .. } => *retry_after,
                            _ => None,
                        };
                        failures.push((target.model.name.clone(), e));
                    }
                    Outcome::Next(e) => {
                        failures.push((target.model.name.clone(), e));
                        break;
                    }
                    Outcome::Fatal(e) => return Err(e),
                }
            }
        }
        Err(all_failed(failures))
    }

    /// One try on one candidate, no retry nor failover: what a background request the app is
    /// not waiting for gets (it goes through the same breaker, queue, adapter and answer check
    /// as the app's requests, and counts towards the candidate's health the same way).
    pub(crate) async fn single(&self, rec: &mut RequestRecord, route: &Arc<Route>, target: &Target) -> Option<Success> {
        let provider = self.rt.providers.get(&target.model.provider)?;
        match self.once(rec, route, target, provider).await {
            Outcome::Done(s) => Some(*s),
            Outcome::Retry(e) | Outcome::Next(e) => {
                tracing::debug!(model = &*target.model.name, error = %error_chain(&e), "background request failed");
                None
            }
            Outcome::Fatal(e) => {
                tracing::debug!(model = &*target.model.name, error = %e.message, "background request failed");
                None
            }
        }
    }

    /// Before another try on the same candidate: `false` (go to the next candidate) when the
    /// provider asked to wait longer than allowed or the retry budget is spent; otherwise
    /// counts the retry and sleeps its backoff.
    async fn wait_to_retry(
        &self,
        rec: &mut RequestRecord,
        target: &Target,
        provider: &Provider,
        attempt: u32,
        retry_after: Option<Duration>,
        failures: &[(Arc<str>, UpstreamError)],
    ) -> bool {
        let res = &self.rt.config.resilience;
        let metrics = &self.shared.metrics;
        if retry_after.is_some_and(|ra| ra > res.retries.max_retry_after) {
            return false;
        }
        if !self.shared.retry_budget.try_retry(&res.retry_budget) {
            metrics.retry_budget_exhausted.inc();
            return false;
        }
        let reason = failures.last().map_or("unknown", |(_, e)| e.kind());
        metrics.retry(provider.name(), &target.model.name, reason);
        rec.retrying();
        let delay = backoff(&res.retries, attempt, retry_after);
        if let Some(t) = rec.trace_mut() {
            traced::event(
                t,
                "retry",
                vec![
                    ("llm_sidecar.model", (&target.model.name).into()),
                    ("llm_sidecar.retry.reason", reason.into()),
                    ("llm_sidecar.retry.delay_s", delay.as_secs_f64().into()),
                ],
            );
        }
        tokio::time::sleep(delay).await;
        true
    }

    /// One attempt on one candidate.
    async fn once(
        &self,
        rec: &mut RequestRecord,
        route: &Arc<Route>,
        target: &Target,
        provider: &Arc<Provider>,
    ) -> Outcome {
        let shared = self.shared;
        let breaker = &self.rt.config.resilience.breaker;
        match target.health.admit(breaker) {
            Err(retry_in) => {
                if let Some(t) = rec.trace_mut() {
                    traced::event(
                        t,
                        "circuit open",
                        vec![("llm_sidecar.model", (&target.model.name).into())],
                    );
                }
                return Outcome::Next(UpstreamError::CircuitOpen {
                    provider: provider.name().clone(),
                    model: target.model.name.clone(),
                    retry_in,
                });
            }
            Ok((_, t)) => transition(&shared.metrics, target, t),
        }
        let permit = match self.acquire(rec, provider).await {
            Ok(p) => p,
            Err(outcome) => return outcome,
        };
        rec.attempting(&target.model, Some(&target.series));
        let operation = operation_name(self.endpoint.label());
        let span = rec
            .trace()
            .map(|t| traced::attempt(t, operation, provider, &target.model, rec.attempts()));
        let traceparent = rec.trace().zip(span.as_ref()).map(|(t, s)| t.traceparent(s));
        let outcome = self.send(rec, route, target, provider, permit, traceparent).await;
        if let (Some(t), Some(mut span)) = (rec.trace_mut(), span) {
            match &outcome {
                Outcome::Done(d) => span.set("http.response.status_code", d.parts.status.as_u16()),
                Outcome::Retry(e) | Outcome::Next(e) => traced::attempt_failed(&mut span, e, &self.rt.redact),
                Outcome::Fatal(e) => span.error(e.outcome.label(), Some(e.message.clone())),
            }
            t.close(span);
        }
        outcome
    }

    /// A slot in the provider's priority queue, timed into the queue-wait metric and span.
    async fn acquire(&self, rec: &mut RequestRecord, provider: &Provider) -> Result<Permit, Outcome> {
        let metrics = &self.shared.metrics;
        let sched = &self.rt.config.scheduling;
        let queue_span = rec.trace().map(|t| t.open("queue wait", Kind::Internal));
        // Usually a slot is free: nothing waited, and the clock is not read twice to say so.
        let free = provider.scheduler.try_acquire();
        let waited = free.is_none().then(Instant::now);
        let acquired = match free {
            Some(permit) => Ok(permit),
            None => {
                provider
                    .scheduler
                    .acquire(self.class, sched.queue_timeout, sched.max_queued)
                    .await
            }
        };
        if let (Some(t), Some(mut span)) = (rec.trace_mut(), queue_span) {
            span.set("llm_sidecar.provider", provider.name());
            span.set("llm_sidecar.priority", self.class_name());
            if let Err(e) = &acquired {
                let kind = match e {
                    QueueError::Full { .. } => "queue_full",
                    QueueError::Timeout(_) => "queue_timeout",
                };
                span.error(kind, Some(e.to_string()));
            }
            t.close(span);
        }
        let permit = match acquired {
            Ok(p) => p,
            Err(e) => {
                let (reason, outcome) = match &e {
                    QueueError::Full { .. } => ("full", None),
                    QueueError::Timeout(after) => ("timeout", Some(queue_timeout(provider.name(), *after))),
                };
                metrics
                    .queue_rejections
                    .get_or_create(&QueueRejectLabels {
                        provider: provider.name().clone(),
                        priority: self.class_name(),
                        reason,
                    })
                    .inc();
                return Err(match outcome {
                    Some(api) => Outcome::Fatal(api),
                    None => Outcome::Next(UpstreamError::Busy {
                        provider: provider.name().clone(),
                        limit: provider.scheduler.limit(),
                        reason: e,
                    }),
                });
            }
        };
        metrics
            .queue_wait
            .get_or_create(&PriorityLabels {
                priority: self.class_name(),
            })
            .observe(waited.map_or(0.0, |w| w.elapsed().as_secs_f64()));
        Ok(permit)
    }

    /// Sends the request to one candidate with a slot in hand and reads its answer.
    async fn send(
        &self,
        rec: &mut RequestRecord,
        route: &Arc<Route>,
        target: &Target,
        provider: &Arc<Provider>,
        permit: Permit,
        traceparent: Option<HeaderValue>,
    ) -> Outcome {
        let strip_usage = rec.stream()
            && self.endpoint.stream_usage_option()
            && !self.head.include_usage
            && provider.adapter().adds_usage_chunk(provider.config.inject_stream_usage);
        let (uri, headers, send_body) = match self.upstream_request(rec, provider, target, strip_usage, traceparent) {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let exchange = Exchange::new(provider, strip_usage);
        let settle = Settle::new(self.shared, self.rt, route, target, exchange.started);
        let up = match provider
            .send(Method::POST, uri, headers, full(send_body), exchange.deadline, permit)
            .await
        {
            Ok(up) => up,
            Err(e) => {
                settle.failed(e.kind());
                // A refused connection or a reset may be one bad connection: worth a retry.
                let again = matches!(e, UpstreamError::Connect { .. } | UpstreamError::Protocol { .. });
                return if again { Outcome::Retry(e) } else { Outcome::Next(e) };
            }
        };
        let status = up.response.status();
        if is_refusal(status) {
            // Boxed: the error path's future would otherwise size every attempt's state.
            return Box::pin(self.refused(up, provider, settle, &exchange)).await;
        }
        let headers_at = exchange.started.elapsed();
        let (parts, body) = match receive(up.response, exchange.idle, exchange.deadline).await {
            Ok(r) => r,
            Err(failure) => return self.body_failed(settle, provider, failure),
        };
        let checked = if status.is_success() {
            self.check(rec, target, provider, &parts, body, settle, &exchange).await
        } else {
            self.request_refused(target, provider, status, body, settle)
                .map(|body| (body, None))
        };
        match checked {
            Ok((body, answer)) => {
                rec.first_byte();
                if answer.as_ref().is_none_or(|a| a.committed.is_none()) {
                    target.health.observe_latency(headers_at);
                }
                self.done(parts, body, up.permit, target, &exchange, answer)
            }
            Err(outcome) => outcome,
        }
    }

    /// The provider's path, body and headers for this request: through its protocol adapter,
    /// with the app's headers that may go upstream, this attempt's `traceparent` and id.
    fn upstream_request(
        &self,
        rec: &RequestRecord,
        provider: &Provider,
        target: &Target,
        strip_usage: bool,
        traceparent: Option<HeaderValue>,
    ) -> Result<(http::Uri, HeaderMap, Bytes), Outcome> {
        let adapter = provider.adapter();
        let unsupported = |detail: String| {
            Outcome::Next(UpstreamError::Unsupported {
                provider: provider.name().clone(),
                detail,
            })
        };
        let path = adapter
            .path(self.endpoint.path())
            .map_err(|e| unsupported(e.to_string()))?;
        let send_body = adapter
            .request(self.head, self.body, &target.model.upstream_model, strip_usage)
            .map_err(|e| unsupported(e.to_string()))?;
        let mut headers = HeaderMap::with_capacity(self.app_headers.len() + 4);
        provider.forward_headers(self.app_headers, &mut headers, false);
        if let Some(added) = self.added_headers {
            for (k, v) in added {
                headers.insert(k.clone(), v.clone());
            }
        }
        // The tee reads the body; compression would hide usage from it.
        headers.remove(header::ACCEPT_ENCODING);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(headers::REQUEST_ID, rec.request_id().clone());
        if let Some(purpose) = self.purpose {
            headers.insert(headers::PURPOSE, HeaderValue::from_static(purpose));
        }
        if let Some(tp) = traceparent {
            // The app's own `traceparent` was copied above; upstream, the parent is this attempt.
            headers.insert(headers::TRACEPARENT, tp);
        }
        let uri = provider.routed_uri(path).map_err(|e| Outcome::Fatal(internal(e)))?;
        Ok((uri, headers, send_body))
    }

    /// A 429, a 5xx or a refused credential: the error body is read for its message, and the
    /// attempt is retried (429, 5xx) or the next candidate asked (401/403: another provider
    /// may answer, and retrying the same key is pointless).
    async fn refused(&self, up: Upstream, provider: &Provider, settle: Settle, x: &Exchange) -> Outcome {
        let status = up.response.status();
        let retry_after = up
            .response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(parse_retry_after);
        let detail = error_message(up.response, x.idle, x.deadline).await;
        drop(up.permit);
        let provider_name = provider.name().clone();
        let e = if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            self.shared
                .metrics
                .upstream_auth_failure(&provider_name, status.as_u16());
            tracing::error!(
                provider = &*provider_name,
                status = status.as_u16(),
                "the provider refused the sidecar's credential; check its key in the config"
            );
            UpstreamError::Auth {
                provider: provider_name,
                status,
                detail,
            }
        } else {
            UpstreamError::Status {
                provider: provider_name,
                status,
                retry_after,
                detail,
            }
        };
        settle.failed(e.kind());
        match e {
            UpstreamError::Auth { .. } => Outcome::Next(e),
            _ => Outcome::Retry(e),
        }
    }

    /// Another 4xx is the request's fault, not the provider's: relayed (in OpenAI's shape).
    fn request_refused(
        &self,
        target: &Target,
        provider: &Provider,
        status: StatusCode,
        body: Received,
        settle: Settle,
    ) -> Result<Received, Outcome> {
        let body = match body {
            Received::Complete(bytes) => match provider.adapter().response(status, bytes, &target.model.name) {
                Some(b) => Received::Complete(b),
                None => {
                    let detail = "an error body in no shape the provider's protocol allows";
                    return Err(malformed(settle, provider, status, detail.into()));
                }
            },
            other => other,
        };
        settle.answered(false);
        Ok(body)
    }

    /// A 2xx answer, checked before anything goes to the app: a whole answer must be one the
    /// endpoint allows, a stream must show its first content event (it is then committed).
    #[allow(clippy::too_many_arguments)]
    async fn check(
        &self,
        rec: &RequestRecord,
        target: &Target,
        provider: &Provider,
        parts: &http::response::Parts,
        body: Received,
        settle: Settle,
        x: &Exchange,
    ) -> Result<(Received, Option<Checked>), Outcome> {
        let status = parts.status;
        let bad = |settle, detail: &str| Err(malformed(settle, provider, status, detail.into()));
        match body {
            Received::Complete(_) if rec.stream() => bad(settle, "a whole JSON body for a stream request"),
            Received::Complete(bytes) => {
                let Some(bytes) = provider.adapter().response(status, bytes, &target.model.name) else {
                    return bad(settle, "a body in no shape the provider's protocol allows");
                };
                let usage = match answer::check(&bytes, self.endpoint.expect()) {
                    Ok(u) => u,
                    Err(m) => return bad(settle, &m.to_string()),
                };
                if self.endpoint == Endpoint::Responses {
                    self.remember_owner(answer::response_id(&bytes).as_deref(), provider);
                }
                settle.answered(true);
                let checked = Checked {
                    translate: None,
                    usage,
                    committed: None,
                };
                Ok((Received::Complete(bytes), Some(checked)))
            }
            Received::Stream { sse: true, .. } if !rec.stream() => bad(settle, "an event stream for a JSON request"),
            Received::Stream { .. } if rec.stream() && !is_sse(parts) => {
                bad(settle, "a body too large to be a stream's answer")
            }
            Received::Stream {
                mut incoming,
                prefix,
                sse: true,
            } => {
                debug_assert!(prefix.is_none());
                // Boxed: a stream's first-event wait would otherwise size every JSON answer's
                // state too (the whole request path's futures are moved as they nest).
                let checked = Box::pin(self.commit_stream(rec, target, provider, &mut incoming, settle, x)).await?;
                let body = Received::Stream {
                    incoming,
                    prefix: None,
                    sse: true,
                };
                Ok((body, Some(checked)))
            }
            other => {
                // A JSON answer too large to hold (a huge embeddings batch): relayed as it comes.
                settle.answered(true);
                Ok((other, None))
            }
        }
    }

    /// Reads a stream up to its first content event and commits it there.
    async fn commit_stream(
        &self,
        rec: &RequestRecord,
        target: &Target,
        provider: &Provider,
        incoming: &mut Incoming,
        settle: Settle,
        x: &Exchange,
    ) -> Result<Checked, Outcome> {
        let mut translate = provider.adapter().stream(&target.model.name, self.head.include_usage);
        let first_byte = provider.config.timeouts.first_byte;
        let mut scanner = SseScanner::for_endpoint(self.endpoint, x.strip_usage);
        if rec.trace().is_some() {
            scanner.track_finish_reason();
        }
        let limits = (x.idle, x.started + first_byte, first_byte, x.deadline);
        let (prefix, seen) = match first_event(incoming, &mut translate, &mut scanner, limits).await {
            Ok(r) => r,
            Err(failure) => return Err(self.body_failed(settle, provider, failure)),
        };
        // A stream's first byte worth counting is its first content event.
        target.health.observe_latency(x.started.elapsed());
        self.remember_owner(scanner.response_id.as_deref(), provider);
        Ok(Checked {
            translate,
            usage: None,
            committed: Some(Committed {
                scanner,
                prefix,
                seen,
                settle,
            }),
        })
    }

    /// A Responses API answer's id was made by `provider`: follow-ups go there.
    fn remember_owner(&self, id: Option<&str>, provider: &Provider) {
        if let Some(id) = id {
            self.shared.response_owners.remember(id, provider.name());
        }
    }

    /// The attempt's answer, ready to relay; `checked` holds what a 2xx carries besides its body.
    fn done(
        &self,
        parts: http::response::Parts,
        body: Received,
        permit: Permit,
        target: &Target,
        x: &Exchange,
        checked: Option<Checked>,
    ) -> Outcome {
        let (translate, usage, committed) = checked.map_or((None, None, None), |c| (c.translate, c.usage, c.committed));
        Outcome::Done(Box::new(Success {
            parts,
            body,
            permit,
            target: target.clone(),
            strip_usage: x.strip_usage,
            idle: x.idle,
            deadline: x.deadline,
            translate,
            usage,
            committed,
        }))
    }

    /// A body that broke before anything went to the app: retried on the same candidate when
    /// the provider answered and then broke, the next candidate after a timeout.
    fn body_failed(&self, settle: Settle, provider: &Provider, failure: BodyFailure) -> Outcome {
        settle.failed(failure.kind());
        let retry = failure.retryable();
        let e = UpstreamError::Body {
            provider: provider.name().clone(),
            failure,
        };
        if retry { Outcome::Retry(e) } else { Outcome::Next(e) }
    }

    fn class_name(&self) -> Arc<str> {
        self.rt
            .config
            .scheduling
            .classes
            .get(self.class)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| Arc::from("default"))
    }
}

/// The provider would not answer (429, 5xx) or would not take the sidecar's key (401, 403).
fn is_refusal(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
}

fn is_sse(parts: &http::response::Parts) -> bool {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

fn queue_timeout(provider: &Arc<str>, after: Duration) -> ApiError {
    ApiError {
        retry_after: Some(after.as_secs().clamp(1, 60)),
        outcome: RecordOutcome::QueueTimeout,
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("queue_timeout"),
            format!(
                "Provider {provider} is at its concurrency limit and no slot freed up within {after:?}; retry later."
            ),
        )
    }
}

/// One error for the app when every candidate failed, naming each attempt and why.
fn all_failed(mut failures: Vec<(Arc<str>, UpstreamError)>) -> ApiError {
    match failures.len() {
        0 => internal("the route has no target with a configured provider"),
        1 => failures
            .pop()
            .map(|(_, e)| ApiError::from(e))
            .unwrap_or_else(|| internal("unreachable")),
        n => {
            let detail = failures
                .iter()
                .map(|(m, e)| format!("{m} ({e})"))
                .collect::<Vec<_>>()
                .join("; ");
            let last = failures
                .pop()
                .map(|(_, e)| ApiError::from(e))
                .unwrap_or_else(|| internal("unreachable"));
            last.with_message(format!("All {n} attempts failed: {detail}"))
        }
    }
}
