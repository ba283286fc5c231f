//! Giving the app its answer: the provider's (whole: checked, costed, stored; or a stream
//! handed to the relay), the cache's (JSON or a replayed stream), or an error in OpenAI's
//! shape; each with the sidecar's own response headers.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::Body;
use super::commit::Committed;
use super::error::ApiError;
use super::headers;
use super::record::{Outcome, RequestRecord};
use super::relay::{Mode, OnComplete, RelayBody, RelayParams};
use super::response::{Received, internal};
use crate::cache::{Cache, CacheStatus, Hit, HitKind, Plan, replay};
use crate::config::{Config, ModelConfig};
use crate::openai::usage::{finish_reasons, parse_usage};
use crate::openai::{SseScanner, Usage};
use crate::scheduler::Permit;
use crate::state::Runtime;
use crate::upstream::adapter::StreamTranslate;
use crate::upstream::is_hop_header;
use crate::upstream::redact::Redactor;

/// What came back from the provider, ready to give to the app.
pub(super) struct Answer {
    pub(crate) parts: http::response::Parts,
    pub(crate) body: Received,
    pub(crate) permit: Permit,
    pub(crate) route: HeaderValue,
    pub(crate) model: Arc<ModelConfig>,
    pub(crate) strip_usage: bool,
    pub(crate) idle: Duration,
    pub(crate) deadline: Instant,
    /// Where a complete, successful answer is stored, when the cache applies. Boxed, like
    /// `committed`: the answer is moved several times on its way to the app, and the two
    /// were 700 of its 1,056 bytes (#19).
    pub(crate) cache: Option<Box<CacheStore>>,
    pub(crate) translate: Option<Box<dyn StreamTranslate>>,
    /// A whole answer already checked (its usage read then); passthrough bodies are not.
    pub(crate) checked: Option<Option<Usage>>,
    /// A stream committed at its first content event.
    pub(crate) committed: Option<Box<Committed>>,
    pub(crate) redact: Arc<Redactor>,
    pub(crate) stop: CancellationToken,
}

pub(super) struct CacheStore {
    pub(crate) cache: Arc<Cache>,
    pub(crate) plan: Plan,
    pub(crate) config: Arc<Config>,
}

impl CacheStore {
    fn store(mut self, response: Bytes, model: Arc<str>) {
        self.cache
            .judge_shadow(&mut self.plan, response.clone(), &self.config.cache);
        self.cache.store(self.plan, response, model, &self.config.cache);
    }
}

/// Gives the provider's answer to the app: whole (checked, costed, stored) or as a relayed
/// stream (judged to its end by [`RelayBody`]).
pub(super) fn relay(mut rec: RequestRecord, mut answer: Answer) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = answer.parts.status;
    *resp.headers_mut() = answer_headers(&rec, &mut answer);
    rec.response_headers(resp.headers_mut());
    rec.answered(answer.parts.status.as_u16());
    // An empty `Bytes` costs nothing; the body itself moves on.
    let body = match std::mem::replace(&mut answer.body, Received::Complete(Bytes::new())) {
        Received::Complete(bytes) => whole(&mut rec, answer, bytes, resp.headers_mut()),
        Received::Stream { incoming, prefix, sse } => stream(rec, answer, incoming, prefix, sse),
    };
    *resp.body_mut() = body;
    resp
}

fn outcome(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Ok
    } else {
        Outcome::UpstreamStatus
    }
}

/// The provider's headers (less hop-by-hop and length) and the sidecar's own. The provider's
/// map is reused rather than copied into a new one: that was 5-7 allocations per answer (#19).
fn answer_headers(rec: &RequestRecord, answer: &mut Answer) -> HeaderMap {
    let mut h = std::mem::take(&mut answer.parts.headers);
    // Room for the sidecar's headers and the length hyper adds: one growth at most, not two.
    h.reserve(8);
    // The length is recomputed for what the app actually receives.
    h.remove(header::CONTENT_LENGTH);
    // One name at a time rather than collected first: cloning a standard name (the usual
    // `transfer-encoding`) is free, where the list was an allocation per answer.
    while let Some(name) = h.keys().find(|n| is_hop_header(n)).cloned() {
        h.remove(&name);
    }
    h.insert(headers::REQUEST_ID, rec.request_id().clone());
    h.insert(headers::ROUTE, answer.route.clone());
    if let Some(v) = &answer.model.header {
        h.insert(headers::MODEL, v.clone());
    }
    h.insert(headers::ATTEMPTS, attempts_header(rec.attempts()));
    h.insert(headers::CACHE, HeaderValue::from_static(rec.cache().header()));
    h
}

/// `x-llm-sidecar-attempts` without an allocation for the usual counts.
fn attempts_header(n: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

/// `x-llm-sidecar-cost-usd` (8 decimals), formatted on the stack: one allocation, the value's.
fn cost_header(cost: f64) -> Option<HeaderValue> {
    use std::io::Write;
    // f64::MAX has 309 digits before the point.
    let mut buf = [0u8; 328];
    let total = buf.len();
    let mut w = &mut buf[..];
    write!(w, "{cost:.8}").ok()?;
    let len = total - w.len();
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// A whole answer: its usage and cost, stored when it passed the check, the record finished.
fn whole(rec: &mut RequestRecord, answer: Answer, bytes: Bytes, h: &mut HeaderMap) -> Body {
    drop(answer.permit);
    let status = answer.parts.status;
    let bytes = answer.redact.bytes(bytes);
    if status.is_success() {
        rec.used(match answer.checked {
            Some(usage) => usage,
            None => parse_usage(&bytes).map(|r| r.usage),
        });
        if let Some(t) = rec.trace_mut() {
            t.finish_reasons = finish_reasons(&bytes);
        }
        if let Some(v) = rec.usage().and_then(|u| cost_header(u.cost(&answer.model.pricing))) {
            h.insert(headers::COST_USD, v);
        }
        // Only an answer that passed the check is ever stored.
        if let Some(c) = answer
            .cache
            .filter(|_| status == StatusCode::OK && answer.checked.is_some())
        {
            c.store(bytes.clone(), answer.model.name.clone());
        }
    }
    rec.finish(outcome(status));
    Body::full(bytes)
}

/// A stream, handed to the relay with what it needs to judge, store and account it.
fn stream(mut rec: RequestRecord, answer: Answer, incoming: Incoming, prefix: Option<Bytes>, sse: bool) -> Body {
    let status = answer.parts.status;
    let (mode, prefix, seen, settle) = match answer.committed.map(|c| *c) {
        Some(c) => (Mode::Sse(c.scanner), Some(c.prefix), Some(c.seen), Some(c.settle)),
        None if sse && status.is_success() => {
            // Passthrough streams (the Responses API and others) are relayed as they are.
            let mut scanner = SseScanner::lenient(answer.strip_usage);
            if rec.trace().is_some() {
                scanner.track_finish_reason();
            }
            (Mode::Sse(scanner), prefix, None, None)
        }
        None => (Mode::Raw, prefix, None, None),
    };
    if let Some(t) = rec.trace_mut() {
        t.stream_start = Some(std::time::Instant::now());
    }
    // A stream is stored only if it was committed (its first event checked) and ends complete
    // and error-free (the relay decides).
    let model = answer.model.name.clone();
    let on_complete: Option<OnComplete> = answer
        .cache
        .filter(|_| settle.is_some() && status == StatusCode::OK)
        .map(|c| {
            Box::new(move |sse: &[u8]| {
                if let Some(json) = replay::assemble(sse) {
                    c.store(json, model);
                }
            }) as OnComplete
        });
    let params = RelayParams {
        mode,
        idle: answer.idle,
        deadline: answer.deadline,
        prefix,
        seen,
        outcome: outcome(status),
        on_complete,
        translate: answer.translate,
        settle,
        redact: answer.redact,
        stop: answer.stop,
    };
    Body::Relay(Box::pin(RelayBody::new(incoming, params, rec, answer.permit)))
}

/// Answers from the cache, as JSON or as a replayed SSE stream.
pub(super) fn serve_cached(
    mut rec: RequestRecord,
    rt: &Runtime,
    hit: Hit,
    stream: bool,
    include_usage: bool,
    route: HeaderValue,
) -> Response<Body> {
    let body = if stream {
        replay::to_sse(&hit.response, include_usage)
    } else {
        Some(hit.response.clone())
    };
    let Some(body) = body else {
        return fail(rec, internal("a cached answer could not be replayed"), &rt.redact);
    };
    let mut resp = Response::new(Body::full(body));
    let h = resp.headers_mut();
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(headers::REQUEST_ID, rec.request_id().clone());
    h.insert(headers::ROUTE, route);
    let model = rt.config.models.get(&*hit.model).cloned();
    // The catalogue's header value when the model is still configured (made once at load).
    let model_header = match &model {
        Some(m) => m.header.clone(),
        None => HeaderValue::from_str(&hit.model).ok(),
    };
    if let Some(v) = model_header {
        h.insert(headers::MODEL, v);
    }
    h.insert(headers::ATTEMPTS, HeaderValue::from(0));
    rec.served_from_cache(CacheStatus::from(hit.kind), model);
    if let HitKind::Semantic { similarity } = hit.kind
        && let Ok(v) = HeaderValue::from_str(&format!("{similarity:.4}"))
    {
        h.insert(headers::CACHE_SIMILARITY, v);
    }
    h.insert(headers::CACHE, HeaderValue::from_static(rec.cache().header()));
    if let Some(t) = rec.trace_mut() {
        t.finish_reasons = finish_reasons(&hit.response);
    }
    // Served locally: the provider charged nothing for this answer.
    h.insert(headers::COST_USD, HeaderValue::from_static("0"));
    rec.response_headers(h);
    rec.finish(Outcome::CacheHit);
    resp
}

pub(super) fn fail(mut rec: RequestRecord, mut e: ApiError, redact: &Redactor) -> Response<Body> {
    // Messages quote providers, and providers echo credentials.
    if let Cow::Owned(m) = redact.text(&e.message) {
        e.message = m;
    }
    rec.answered(e.status.as_u16());
    let mut resp = {
        rec.finish(e.outcome);
        let id = rec.request_id().clone();
        e.into_response(&id)
    };
    if let Some(route) = rec.route() {
        resp.headers_mut()
            .insert(headers::ROUTE, crate::router::route_header(route));
    }
    if rec.attempts() > 0 {
        resp.headers_mut()
            .insert(headers::ATTEMPTS, HeaderValue::from(rec.attempts()));
    }
    rec.response_headers(resp.headers_mut());
    resp
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_costs_become_the_same_header_values_as_before() {
        for n in [0u32, 1, 9, 10, 123] {
            assert_eq!(attempts_header(n), HeaderValue::from(n));
        }
        for cost in [0.0, 0.0000123, 1.5, 1234.56789, f64::MAX] {
            let want = HeaderValue::from_str(&format!("{cost:.8}")).unwrap();
            assert_eq!(cost_header(cost), Some(want));
        }
    }
}
