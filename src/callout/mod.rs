//! Out-of-process extension points (`callouts`): an HTTP service the sidecar asks before
//! routing each request (it may rewrite the model, add headers sent upstream, or refuse with
//! an OpenAI-shaped error) and one it tells after each answer (usage, cost, status; never
//! waited for). Each has its own timeout, a failure policy (allow or refuse), a breaker
//! (consecutive failures open it for a cool-down, during which the policy applies at once,
//! without a call) and metrics. The JSON contract is in `docs/callouts.md`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::config::{CalloutConfig, CalloutsConfig, ConfigIssue};
use crate::plugin::RequestEvent;
use crate::telemetry::{CalloutLabels, Metrics, PointLabels};
use crate::upstream::{PostError, Provider};

/// The largest answer read from a before_route callout.
const MAX_ANSWER: usize = 64 << 10;

/// The callouts of one config snapshot; carried over by reloads that leave them unchanged
/// (their connections and breakers with them).
#[derive(Default)]
pub struct Callouts {
    pub(crate) before_route: Option<Arc<Callout>>,
    pub(crate) after_answer: Option<Arc<Callout>>,
}

impl Callouts {
    pub(crate) fn new(config: &CalloutsConfig, previous: Option<&Callouts>) -> Result<Self, ConfigIssue> {
        let build = |c: &Option<Arc<CalloutConfig>>, old: Option<&Arc<Callout>>| -> Result<_, ConfigIssue> {
            let Some(c) = c else { return Ok(None) };
            if let Some(old) = old.filter(|o| *o.config == **c) {
                return Ok(Some(old.clone()));
            }
            Ok(Some(Arc::new(Callout::new(c.clone())?)))
        };
        Ok(Callouts {
            before_route: build(&config.before_route, previous.and_then(|p| p.before_route.as_ref()))?,
            after_answer: build(&config.after_answer, previous.and_then(|p| p.after_answer.as_ref()))?,
        })
    }
}

pub struct Callout {
    config: Arc<CalloutConfig>,
    client: Provider,
    breaker: Mutex<Breaker>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// Why a call gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CalloutError {
    #[error("its breaker is open after repeated failures")]
    CircuitOpen,
    #[error("it did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Failed(String),
}

impl CalloutError {
    fn label(&self) -> &'static str {
        match self {
            CalloutError::CircuitOpen => "circuit_open",
            CalloutError::Timeout(_) => "timeout",
            CalloutError::Failed(_) => "error",
        }
    }
}

/// What the request being routed is, as the before_route callout sees it.
pub(crate) struct BeforeRoute<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) endpoint: &'static str,
    pub(crate) model: &'a str,
    pub(crate) stream: bool,
    pub(crate) body: &'a [u8],
}

/// What a before_route callout decided.
pub(crate) enum Verdict {
    /// Go on; with another model and extra upstream headers when set.
    Continue { model: Option<String>, headers: HeaderMap },
    /// Refuse the request with this status (4xx) and message.
    Refuse { status: StatusCode, message: String },
    /// The callout failed and the policy is to refuse.
    Unavailable(CalloutError),
}

#[derive(Serialize)]
struct BeforeRequest<'a> {
    point: &'static str,
    request_id: &'a str,
    tenant: &'a str,
    endpoint: &'static str,
    model: &'a str,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BeforeAnswer {
    #[serde(default)]
    action: Option<String>,
    model: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    status: Option<u16>,
    message: Option<String>,
}

impl Callout {
    fn new(config: Arc<CalloutConfig>) -> Result<Self, ConfigIssue> {
        let client = Provider::new(config.client.clone(), &[1])?;
        Ok(Callout {
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
            client,
            breaker: Mutex::new(Breaker::default()),
            config,
        })
    }

    fn point(&self) -> &'static str {
        self.config.point.label()
    }

    fn count(&self, metrics: &Metrics, result: &'static str) {
        metrics
            .callouts
            .get_or_create(&CalloutLabels {
                point: self.point(),
                result,
            })
            .inc();
    }

    fn breaker_open(&self) -> bool {
        let Ok(b) = self.breaker.lock() else { return false };
        b.open_until.is_some_and(|t| Instant::now() < t)
    }

    /// Learns from a call: a success closes the breaker, enough failures in a row open it.
    fn learn(&self, ok: bool) {
        let Ok(mut b) = self.breaker.lock() else { return };
        if ok {
            *b = Breaker::default();
            return;
        }
        b.failures += 1;
        if b.failures >= self.config.breaker_failures {
            b.open_until = Some(Instant::now() + self.config.breaker_cooldown);
            // Half-open after the cool-down: one more failure reopens it at once.
            b.failures = self.config.breaker_failures - 1;
        }
    }

    /// POSTs `body` and reads the 2xx answer, within the callout's timeout.
    async fn call(&self, body: Vec<u8>, metrics: &Metrics) -> Result<Bytes, CalloutError> {
        if self.breaker_open() {
            return Err(CalloutError::CircuitOpen);
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let result = self
            .client
            .post_json(self.config.url.clone(), body, deadline, MAX_ANSWER)
            .await
            .map_err(|e| match e {
                PostError::Timeout => CalloutError::Timeout(self.config.timeout),
                PostError::Failed(why) => CalloutError::Failed(why),
            });
        metrics
            .callout_duration
            .get_or_create(&PointLabels { point: self.point() })
            .observe(started.elapsed().as_secs_f64());
        self.learn(result.is_ok());
        result
    }

    /// Asks the before_route callout about a request. Never fails the request by itself: a
    /// failed call is `Continue` unchanged (on_failure: allow) or `Unavailable` (refuse).
    pub(crate) async fn before(&self, req: BeforeRoute<'_>, metrics: &Metrics) -> Verdict {
        let body = self
            .config
            .send_body
            .then(|| serde_json::from_slice::<&serde_json::value::RawValue>(req.body).ok())
            .flatten();
        let payload = BeforeRequest {
            point: self.point(),
            request_id: req.request_id,
            tenant: req.tenant,
            endpoint: req.endpoint,
            model: req.model,
            stream: req.stream,
            body,
        };
        let verdict = match serde_json::to_vec(&payload) {
            Ok(bytes) => match self.call(bytes, metrics).await {
                Ok(answer) => read_verdict(&answer),
                Err(e) => Err(e),
            },
            Err(e) => Err(CalloutError::Failed(e.to_string())),
        };
        match verdict {
            Ok(v) => {
                let result = match &v {
                    Verdict::Continue { model: None, headers } if headers.is_empty() => "continue",
                    Verdict::Continue { .. } => "rewrite",
                    Verdict::Refuse { .. } => "refuse",
                    Verdict::Unavailable(_) => "error",
                };
                self.count(metrics, result);
                v
            }
            Err(e) => {
                self.count(metrics, e.label());
                tracing::warn!(point = self.point(), error = %e, fail_closed = self.config.fail_closed, "callout failed");
                if self.config.fail_closed {
                    Verdict::Unavailable(e)
                } else {
                    Verdict::Continue {
                        model: None,
                        headers: HeaderMap::new(),
                    }
                }
            }
        }
    }

    /// Tells the after_answer callout about a finished request, in the background: never
    /// waited for; dropped (and counted) when `max_in_flight` calls are already out or the
    /// breaker is open.
    pub(crate) fn after(self: &Arc<Self>, event: &RequestEvent<'_>, metrics: &Arc<Metrics>) {
        if self.breaker_open() {
            self.count(metrics, "circuit_open");
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.count(metrics, "dropped");
            return;
        };
        let Ok(body) = serde_json::to_vec(event) else { return };
        let (this, metrics) = (self.clone(), metrics.clone());
        // Not a `tasks::Background` task: a notification bounded by `max_in_flight` and by its
        // timeout, which ends on its own; one in flight when the sidecar stops may be lost
        // (docs/callouts.md says so).
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let result = this.call(body, &metrics).await;
            drop(permit);
            match result {
                Ok(_) => this.count(&metrics, "continue"),
                Err(e) => this.count(&metrics, e.label()),
            }
        });
    }
}

/// The before_route callout's answer, read strictly: an answer it did not mean (a typo'd
/// action, a header the sidecar must own) is a failure, handled by the failure policy.
fn read_verdict(answer: &[u8]) -> Result<Verdict, CalloutError> {
    let bad = |why: String| CalloutError::Failed(format!("its answer {why}"));
    let a: BeforeAnswer = serde_json::from_slice(answer).map_err(|e| bad(format!("is not the callout JSON: {e}")))?;
    match a.action.as_deref().unwrap_or("continue") {
        "continue" => {
            let mut headers = HeaderMap::new();
            for (k, v) in a.headers {
                let name = HeaderName::try_from(k.as_str()).map_err(|_| bad(format!("names a bad header {k:?}")))?;
                if crate::upstream::is_hop_header(&name)
                    || matches!(
                        name.as_str(),
                        "host" | "content-length" | "content-type" | "authorization" | "x-api-key" | "api-key"
                    )
                {
                    return Err(bad(format!("sets {k:?}, which the sidecar owns")));
                }
                let value = HeaderValue::try_from(v.as_str()).map_err(|_| bad(format!("has a bad value for {k:?}")))?;
                headers.insert(name, value);
            }
            let model = match a.model {
                Some(m) if m.trim().is_empty() || m.len() > 256 => return Err(bad("sets an empty model".into())),
                m => m,
            };
            Ok(Verdict::Continue { model, headers })
        }
        "refuse" => {
            let status = a.status.unwrap_or(403);
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(StatusCode::is_client_error)
                .ok_or_else(|| bad(format!("refuses with status {status}, not a 4xx")))?;
            let message = a
                .message
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| "The request was refused by policy.".to_owned());
            Ok(Verdict::Refuse {
                status,
                message: message.chars().take(1000).collect(),
            })
        }
        other => Err(bad(format!("has action {other:?}: use continue or refuse"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_strictly() {
        assert!(
            matches!(read_verdict(b"{}"), Ok(Verdict::Continue { model: None, ref headers }) if headers.is_empty())
        );
        match read_verdict(br#"{"action":"continue","model":"cheap","headers":{"x-team":"search"}}"#) {
            Ok(Verdict::Continue { model, headers }) => {
                assert_eq!(model.as_deref(), Some("cheap"));
                assert_eq!(headers["x-team"], "search");
            }
            _ => panic!("a rewrite"),
        }
        match read_verdict(br#"{"action":"refuse","status":451,"message":"not here"}"#) {
            Ok(Verdict::Refuse { status, message }) => {
                assert_eq!((status.as_u16(), message.as_str()), (451, "not here"));
            }
            _ => panic!("a refusal"),
        }
        for bad in [
            &br#"{"action":"allow"}"#[..],
            br#"{"action":"refuse","status":500}"#,
            br#"{"headers":{"authorization":"Bearer x"}}"#,
            br#"{"headers":{"connection":"close"}}"#,
            br#"{"headers":{"bad name":"x"}}"#,
            br#"{"model":" "}"#,
            br#"{"modle":"typo"}"#,
            b"not json",
        ] {
            assert!(read_verdict(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
