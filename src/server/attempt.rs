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

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::ApiError;
use super::record::{Outcome as RecordOutcome, RequestRecord, operation_name};
use super::relay::MAX_CAPTURE;
use super::response::{Received, full, internal, receive};
use super::traced;
use crate::config::Config;
use crate::openai::Endpoint;
use crate::openai::answer::{self, Expect};
use crate::openai::{RequestHead, SseScanner, Usage};
use crate::resilience::{backoff, parse_retry_after};
use crate::router::{Decision, Route, Target};
use crate::scheduler::{Permit, QueueError};
use crate::state::{Runtime, Shared};
use crate::telemetry::Metrics;
use crate::telemetry::trace::Kind;
use crate::telemetry::{PriorityLabels, QueueRejectLabels};
use crate::upstream::adapter::StreamTranslate;
use crate::upstream::{BodyFailure, BodyRead, Provider, UpstreamError, error_chain, error_detail, read_body};

/// Error bodies of failed attempts are read for their message, up to this size and time.
const ERROR_BODY_MAX: usize = 64 << 10;
const ERROR_BODY_TIME: Duration = Duration::from_secs(2);

/// A provider's answer, ready to relay.
pub(super) struct Success {
    pub parts: http::response::Parts,
    pub body: Received,
    pub permit: Permit,
    pub target: Target,
    pub strip_usage: bool,
    pub idle: Duration,
    pub deadline: Instant,
    pub translate: Option<Box<dyn StreamTranslate>>,
    /// The usage of a whole answer, read when it was checked.
    pub usage: Option<Usage>,
    /// A stream committed at its first content event: what was read to get there.
    pub committed: Option<Committed>,
}

/// A stream that has shown its first content event. Until then nothing went to the app, so a
/// stream that failed earlier was failed over like any other failure.
pub(super) struct Committed {
    /// The scanner that read the events so far; the relay goes on with it.
    pub scanner: SseScanner,
    /// What goes to the app first (the scanner's output so far).
    pub prefix: Bytes,
    /// The OpenAI-shaped bytes read so far, for the cached copy.
    pub seen: Bytes,
    /// The breaker's verdict on this attempt, given when the stream ends.
    pub settle: Settle,
}

/// Reports how one attempt on one (provider, model) went — to its circuit breaker, its
/// latency EWMA, the route's canary and the error metrics. A whole answer is settled before
/// it is relayed; a stream when it ends, since a stream that breaks after its first event is
/// a failure of that provider too.
pub struct Settle {
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    route: Arc<Route>,
    target: Target,
    started: Instant,
}

impl Settle {
    /// The provider answered; `good` is false for a status that is the request's fault.
    pub fn answered(self, good: bool) {
        let breaker = &self.config.resilience.breaker;
        let t = self.target.health.record(breaker, true);
        transition(&self.metrics, &self.target, t);
        canary(&self.metrics, &self.route, &self.target, good, self.started.elapsed());
    }

    pub fn failed(self, kind: &'static str) {
        self.metrics.upstream_error(&self.target.model.provider, kind);
        let t = self.target.health.record(&self.config.resilience.breaker, false);
        transition(&self.metrics, &self.target, t);
        canary(&self.metrics, &self.route, &self.target, false, self.started.elapsed());
    }
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
    pub shared: &'a Shared,
    pub rt: &'a Runtime,
    pub endpoint: Endpoint,
    pub head: &'a RequestHead<'a>,
    pub body: &'a Bytes,
    pub app_headers: &'a HeaderMap,
    pub class: usize,
    /// Sent as `x-llm-sidecar-purpose` on requests the sidecar makes on its own, so a
    /// provider's logs can tell them from the app's.
    pub purpose: Option<&'static str>,
}

impl Attempt<'_> {
    pub async fn run(&self, rec: &mut RequestRecord, decision: &Decision) -> Result<Success, ApiError> {
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
                    && !self
                        .wait_to_retry(rec, target, provider, attempt, retry_after, &failures)
                        .await
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
    pub async fn single(&self, rec: &mut RequestRecord, route: &Arc<Route>, target: &Target) -> Option<Success> {
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
        rec.retries += 1;
        let delay = backoff(&res.retries, attempt, retry_after);
        if let Some(t) = rec.trace.as_deref_mut() {
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
        let metrics = &shared.metrics;
        let breaker = &self.rt.config.resilience.breaker;
        match target.health.admit(breaker) {
            Err(retry_in) => {
                if let Some(t) = rec.trace.as_deref_mut() {
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
        let sched = &self.rt.config.scheduling;
        let waited = Instant::now();
        let queue_span = rec.trace.as_deref().map(|t| t.open("queue wait", Kind::Internal));
        let acquired = provider
            .scheduler
            .acquire(self.class, sched.queue_timeout, sched.max_queued)
            .await;
        if let (Some(t), Some(mut span)) = (rec.trace.as_deref_mut(), queue_span) {
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
                return match outcome {
                    Some(api) => Outcome::Fatal(api),
                    None => Outcome::Next(UpstreamError::Busy {
                        provider: provider.name().clone(),
                        limit: provider.scheduler.limit(),
                        reason: e,
                    }),
                };
            }
        };
        metrics
            .queue_wait
            .get_or_create(&PriorityLabels {
                priority: self.class_name(),
            })
            .observe(waited.elapsed().as_secs_f64());

        rec.attempts += 1;
        rec.model = Some(target.model.clone());
        let operation = operation_name(self.endpoint.label());
        let span = rec
            .trace
            .as_deref()
            .map(|t| traced::attempt(t, operation, provider, &target.model, rec.attempts));
        let traceparent = rec.trace.as_deref().zip(span.as_ref()).map(|(t, s)| t.traceparent(s));
        let outcome = self.send(rec, route, target, provider, permit, traceparent).await;
        if let (Some(t), Some(mut span)) = (rec.trace.as_deref_mut(), span) {
            match &outcome {
                Outcome::Done(d) => span.set("http.response.status_code", d.parts.status.as_u16()),
                Outcome::Retry(e) | Outcome::Next(e) => traced::attempt_failed(&mut span, e, &self.rt.redact),
                Outcome::Fatal(e) => span.error(e.outcome.label(), Some(e.message.clone())),
            }
            t.close(span);
        }
        outcome
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
        let model = &target.model;
        let adapter = provider.adapter();
        let strip_usage =
            rec.stream && !self.head.include_usage && adapter.adds_usage_chunk(provider.config.inject_stream_usage);
        let unsupported = |detail: String| {
            Outcome::Next(UpstreamError::Unsupported {
                provider: provider.name().clone(),
                detail,
            })
        };
        let path = match adapter.path(self.endpoint.path()) {
            Ok(p) => p,
            Err(e) => return unsupported(e.to_string()),
        };
        let send_body = match adapter.request(self.head, self.body, &model.upstream_model, strip_usage) {
            Ok(b) => b,
            Err(e) => return unsupported(e.to_string()),
        };
        let mut headers = HeaderMap::with_capacity(self.app_headers.len() + 4);
        provider.forward_headers(self.app_headers, &mut headers, false);
        // The tee reads the body; compression would hide usage from it.
        headers.remove(header::ACCEPT_ENCODING);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("x-request-id", rec.request_id.clone());
        if let Some(purpose) = self.purpose {
            headers.insert("x-llm-sidecar-purpose", HeaderValue::from_static(purpose));
        }
        if let Some(tp) = traceparent {
            // The app's own `traceparent` was copied above; upstream, the parent is this attempt.
            headers.insert("traceparent", tp);
        }
        let uri = match provider.uri(path, None) {
            Ok(u) => u,
            Err(e) => return Outcome::Fatal(internal(e)),
        };
        let started = Instant::now();
        let deadline = started + provider.config.timeouts.total;
        let idle = provider.config.timeouts.idle;
        let settle = Settle {
            metrics: self.shared.metrics.clone(),
            config: self.rt.config.clone(),
            route: route.clone(),
            target: target.clone(),
            started,
        };
        let up = match provider
            .send(Method::POST, uri, headers, full(send_body), deadline, permit)
            .await
        {
            Ok(up) => up,
            Err(e) => {
                settle.failed(e.kind());
                return match e {
                    UpstreamError::Connect { .. } | UpstreamError::Protocol { .. } => Outcome::Retry(e),
                    _ => Outcome::Next(e),
                };
            }
        };
        let status = up.response.status();
        let auth = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() || auth {
            let retry_after = up
                .response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(parse_retry_after);
            let (_, mut incoming) = up.response.into_parts();
            let read_until = deadline.min(Instant::now() + ERROR_BODY_TIME);
            let detail = match read_body(&mut incoming, idle, read_until, ERROR_BODY_MAX).await {
                Ok(BodyRead::Complete(b)) => error_detail(&b),
                _ => String::new(),
            };
            drop(up.permit);
            let provider_name = provider.name().clone();
            if auth {
                // The sidecar's key for this provider is refused: another provider may answer,
                // and retrying the same key is pointless.
                self.shared
                    .metrics
                    .upstream_auth_failure(&provider_name, status.as_u16());
                tracing::error!(
                    provider = &*provider_name,
                    status = status.as_u16(),
                    "the provider refused the sidecar's credential; check its key in the config"
                );
                let e = UpstreamError::Auth {
                    provider: provider_name,
                    status,
                    detail,
                };
                settle.failed(e.kind());
                return Outcome::Next(e);
            }
            let e = UpstreamError::Status {
                provider: provider_name,
                status,
                retry_after,
                detail,
            };
            settle.failed(e.kind());
            return Outcome::Retry(e);
        }
        let headers_at = started.elapsed();
        let (parts, body) = match receive(up.response, idle, deadline).await {
            Ok(r) => r,
            Err(failure) => return self.body_failed(settle, provider, failure),
        };
        let malformed = |settle: Settle, detail: String| {
            let e = UpstreamError::Malformed {
                provider: provider.name().clone(),
                status,
                detail,
            };
            settle.failed(e.kind());
            Outcome::Retry(e)
        };
        if !status.is_success() {
            // Another 4xx is the request's fault, not the provider's: relayed (in OpenAI's shape).
            let body = match body {
                Received::Complete(bytes) => match adapter.response(status, bytes, &model.name) {
                    Some(b) => Received::Complete(b),
                    None => {
                        return malformed(
                            settle,
                            "an error body in no shape the provider's protocol allows".into(),
                        );
                    }
                },
                other => other,
            };
            rec.first_byte();
            target.health.observe_latency(headers_at);
            settle.answered(false);
            return self.done(parts, body, up.permit, target, strip_usage, (idle, deadline), None);
        }
        let expect = match self.endpoint {
            Endpoint::Embeddings => Expect::Data,
            Endpoint::Chat | Endpoint::Completions => Expect::Choices,
        };
        let mut translate = None;
        let mut usage = None;
        let mut committed = None;
        let body = match body {
            Received::Complete(_) if rec.stream => {
                return malformed(settle, "a whole JSON body for a stream request".into());
            }
            Received::Complete(bytes) => {
                let Some(bytes) = adapter.response(status, bytes, &model.name) else {
                    return malformed(settle, "a body in no shape the provider's protocol allows".into());
                };
                match answer::check(&bytes, expect) {
                    Ok(u) => usage = u,
                    Err(m) => return malformed(settle, m.to_string()),
                }
                rec.first_byte();
                target.health.observe_latency(headers_at);
                settle.answered(true);
                Received::Complete(bytes)
            }
            Received::Stream { sse: true, .. } if !rec.stream => {
                return malformed(settle, "an event stream for a JSON request".into());
            }
            Received::Stream { .. } if rec.stream && !is_sse(&parts) => {
                return malformed(settle, "a body too large to be a stream's answer".into());
            }
            Received::Stream {
                mut incoming,
                prefix,
                sse: true,
            } => {
                translate = adapter.stream(&model.name, self.head.include_usage);
                let first_byte = provider.config.timeouts.first_byte;
                let mut scanner = SseScanner::new(strip_usage);
                if rec.trace.is_some() {
                    scanner.track_finish_reason();
                }
                let limits = (idle, started + first_byte, first_byte, deadline);
                let read = first_event(&mut incoming, &mut translate, &mut scanner, limits).await;
                let (prefix_out, seen) = match read {
                    Ok(r) => r,
                    Err(failure) => return self.body_failed(settle, provider, failure),
                };
                rec.first_byte();
                target.health.observe_latency(started.elapsed());
                debug_assert!(prefix.is_none());
                committed = Some(Committed {
                    scanner,
                    prefix: prefix_out,
                    seen,
                    settle,
                });
                Received::Stream {
                    incoming,
                    prefix: None,
                    sse: true,
                }
            }
            other => {
                // A JSON answer too large to hold (a huge embeddings batch): relayed as it comes.
                rec.first_byte();
                target.health.observe_latency(headers_at);
                settle.answered(true);
                other
            }
        };
        let answer = (translate, usage, committed);
        self.done(
            parts,
            body,
            up.permit,
            target,
            strip_usage,
            (idle, deadline),
            Some(answer),
        )
    }

    /// The attempt's answer, ready to relay; `answer` holds what a 2xx carries besides its body.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn done(
        &self,
        parts: http::response::Parts,
        body: Received,
        permit: Permit,
        target: &Target,
        strip_usage: bool,
        (idle, deadline): (Duration, Instant),
        answer: Option<(Option<Box<dyn StreamTranslate>>, Option<Usage>, Option<Committed>)>,
    ) -> Outcome {
        let (translate, usage, committed) = answer.unwrap_or((None, None, None));
        Outcome::Done(Box::new(Success {
            parts,
            body,
            permit,
            target: target.clone(),
            strip_usage,
            idle,
            deadline,
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

fn is_sse(parts: &http::response::Parts) -> bool {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Reads a stream up to its first content event: an event that is a well-formed answer chunk.
/// Returns what to send the app first and the OpenAI-shaped bytes read. A stream that ends,
/// breaks, stalls, reports an error or sends something else before that has sent the app
/// nothing, so it fails like a 5xx would.
async fn first_event(
    incoming: &mut Incoming,
    translate: &mut Option<Box<dyn StreamTranslate>>,
    scanner: &mut SseScanner,
    (idle, first_event_by, first_byte, deadline): (Duration, Instant, Duration, Instant),
) -> Result<(Bytes, Bytes), BodyFailure> {
    let mut out = BytesMut::new();
    let mut seen = BytesMut::new();
    loop {
        let wake = (Instant::now() + idle).min(first_event_by).min(deadline);
        let frame = match tokio::time::timeout_at(wake, incoming.frame()).await {
            Err(_) => {
                let now = Instant::now();
                return Err(if now >= deadline {
                    BodyFailure::TotalTimeout
                } else if now >= first_event_by {
                    BodyFailure::FirstEventTimeout(first_byte)
                } else {
                    BodyFailure::IdleTimeout(idle)
                });
            }
            Ok(None) => {
                let tail = scanner.finish();
                return Err(if scanner.malformed.is_some() {
                    BodyFailure::Malformed("an event that is not a JSON object")
                } else if scanner.content_events > 0 && !tail.is_empty() {
                    // One last unterminated content event and no `[DONE]`.
                    BodyFailure::Unterminated
                } else {
                    BodyFailure::Empty
                });
            }
            Ok(Some(Err(e))) => return Err(BodyFailure::Reset(error_chain(&e))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        let data = match translate.as_mut() {
            Some(t) => t.feed(&data),
            None => data,
        };
        if data.is_empty() {
            continue;
        }
        seen.extend_from_slice(&data);
        out.extend_from_slice(&scanner.push(data));
        if let Some(what) = scanner.malformed {
            return Err(BodyFailure::Malformed(what));
        }
        if scanner.content_events > 0 {
            return Ok((out.freeze(), seen.freeze()));
        }
        if scanner.saw_error {
            return Err(BodyFailure::ErrorEvent(
                scanner.error_message.clone().unwrap_or_default(),
            ));
        }
        if seen.len() > MAX_CAPTURE {
            return Err(BodyFailure::Malformed("over 1 MiB before its first content event"));
        }
    }
}

fn transition(metrics: &Metrics, target: &Target, t: Option<crate::resilience::Transition>) {
    let Some(t) = t else { return };
    let h = &target.health;
    metrics.circuit_transition(&h.provider, &h.model, t.to.gauge(), t.to.label());
    tracing::warn!(
        provider = &*h.provider,
        model = &*h.model,
        state = t.to.label(),
        "circuit breaker changed state"
    );
}

fn canary(metrics: &Metrics, route: &Route, target: &Target, success: bool, latency: Duration) {
    if let Some(r) = route.canary_report(&target.model.name, success, latency) {
        metrics
            .canary_reverted
            .get_or_create(&crate::telemetry::CanaryLabels {
                route: route.name.clone(),
                model: r.model.clone(),
            })
            .set(1);
        tracing::warn!(
            route = &*route.name,
            model = &*r.model,
            requests = r.requests,
            error_rate = r.error_rate,
            mean_latency_ms = r.mean_latency.as_secs_f64() * 1e3,
            "canary reverted: all traffic back on the stable targets until the canary config changes"
        );
    }
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
