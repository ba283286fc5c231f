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
use tokio::time::Instant;

use super::error::ApiError;
use super::proxy::{Endpoint, Received, full, internal, receive};
use super::record::{RequestRecord, operation_name};
use super::traced;
use crate::openai::RequestHead;
use crate::resilience::{Transition, backoff, parse_retry_after};
use crate::router::{Decision, Route, Target};
use crate::scheduler::{Permit, QueueError};
use crate::state::{Runtime, Shared};
use crate::telemetry::trace::Kind;
use crate::telemetry::{PriorityLabels, QueueRejectLabels};
use crate::upstream::adapter::StreamTranslate;
use crate::upstream::{BodyFailure, BodyRead, Provider, UpstreamError, error_detail, read_body};

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
}

impl Attempt<'_> {
    pub async fn run(&self, rec: &mut RequestRecord, decision: &Decision) -> Result<Success, ApiError> {
        let res = &self.rt.config.resilience;
        let metrics = &self.shared.metrics;
        self.shared.retry_budget.request(&res.retry_budget);
        let mut failures: Vec<(Arc<str>, UpstreamError)> = Vec::new();
        for target in &decision.candidates {
            let Some(provider) = self.rt.providers.get(&target.model.provider) else {
                continue;
            };
            let mut retry_after = None;
            for attempt in 0..res.retries.max_attempts {
                if attempt > 0 {
                    if retry_after.is_some_and(|ra| ra > res.retries.max_retry_after) {
                        break;
                    }
                    if !self.shared.retry_budget.try_retry(&res.retry_budget) {
                        metrics.retry_budget_exhausted.inc();
                        break;
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

    /// One attempt on one candidate.
    async fn once(&self, rec: &mut RequestRecord, route: &Route, target: &Target, provider: &Arc<Provider>) -> Outcome {
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
            Ok((_, transition)) => self.transition(target, transition),
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
                Outcome::Retry(e) | Outcome::Next(e) => traced::attempt_failed(&mut span, e),
                Outcome::Fatal(e) => span.error(e.outcome, Some(e.message.clone())),
            }
            t.close(span);
        }
        outcome
    }

    /// Sends the request to one candidate with a slot in hand and reads its answer.
    async fn send(
        &self,
        rec: &mut RequestRecord,
        route: &Route,
        target: &Target,
        provider: &Arc<Provider>,
        permit: Permit,
        traceparent: Option<HeaderValue>,
    ) -> Outcome {
        let breaker = &self.rt.config.resilience.breaker;
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
            Err(detail) => return unsupported(detail),
        };
        let send_body = match adapter.request(self.head, self.body, &model.upstream_model, strip_usage) {
            Ok(b) => b,
            Err(detail) => return unsupported(detail),
        };
        let mut headers = HeaderMap::with_capacity(self.app_headers.len() + 4);
        provider.forward_headers(self.app_headers, &mut headers, false);
        // The tee reads the body; compression would hide usage from it.
        headers.remove(header::ACCEPT_ENCODING);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("x-request-id", rec.request_id.clone());
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
        let up = match provider
            .send(Method::POST, uri, headers, full(send_body), deadline, permit)
            .await
        {
            Ok(up) => up,
            Err(e) => {
                self.failed(route, target, provider, e.kind(), started);
                return match e {
                    UpstreamError::Connect { .. } | UpstreamError::Protocol { .. } => Outcome::Retry(e),
                    _ => Outcome::Next(e),
                };
            }
        };
        let status = up.response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
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
            let e = UpstreamError::Status {
                provider: provider.name().clone(),
                status,
                retry_after,
                detail,
            };
            self.failed(route, target, provider, e.kind(), started);
            return Outcome::Retry(e);
        }
        let ttft = started.elapsed();
        rec.first_byte();
        let (parts, body) = match receive(up.response, idle, deadline).await {
            Ok(r) => r,
            Err(failure) => {
                self.failed(route, target, provider, failure.kind(), started);
                let retry = matches!(failure, BodyFailure::Reset(_));
                let e = UpstreamError::Body {
                    provider: provider.name().clone(),
                    failure,
                };
                return if retry { Outcome::Retry(e) } else { Outcome::Next(e) };
            }
        };
        // The provider answered: a 4xx is the request's fault, not the provider's.
        target.health.observe_latency(ttft);
        let t = target.health.record(breaker, true);
        self.transition(target, t);
        self.canary(route, target, status.is_success(), ttft);
        let mut translate = None;
        let body = match body {
            Received::Complete(bytes) => match adapter.response(status, bytes, &model.name) {
                Some(b) => Received::Complete(b),
                None => {
                    return Outcome::Next(UpstreamError::Protocol {
                        provider: provider.name().clone(),
                        detail: "the provider's response could not be read".into(),
                    });
                }
            },
            Received::Stream { sse: true, .. } => {
                translate = adapter.stream(&model.name, self.head.include_usage);
                body
            }
            other => other,
        };
        Outcome::Done(Box::new(Success {
            parts,
            body,
            permit: up.permit,
            target: target.clone(),
            strip_usage,
            idle,
            deadline,
            translate,
        }))
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

    fn failed(&self, route: &Route, target: &Target, provider: &Provider, kind: &'static str, started: Instant) {
        self.shared.metrics.upstream_error(provider.name(), kind);
        let t = target.health.record(&self.rt.config.resilience.breaker, false);
        self.transition(target, t);
        self.canary(route, target, false, started.elapsed());
    }

    fn transition(&self, target: &Target, t: Option<Transition>) {
        let Some(t) = t else { return };
        let h = &target.health;
        self.shared
            .metrics
            .circuit_transition(&h.provider, &h.model, t.to.gauge(), t.to.label());
        tracing::warn!(
            provider = &*h.provider,
            model = &*h.model,
            state = t.to.label(),
            "circuit breaker changed state"
        );
    }

    fn canary(&self, route: &Route, target: &Target, success: bool, latency: Duration) {
        if let Some(r) = route.canary_report(&target.model.name, success, latency) {
            self.shared
                .metrics
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
}

fn queue_timeout(provider: &Arc<str>, after: Duration) -> ApiError {
    ApiError {
        retry_after: Some(after.as_secs().clamp(1, 60)),
        outcome: "queue_timeout",
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
