//! OpenTelemetry traces of requests: W3C trace context in and out, the sampling decision, the
//! spans of one request, and the hand-off to the exporter.
//!
//! A request's spans are plain records in one `Vec` owned by the request (no span stack, no
//! thread-locals, no `tracing` subscriber in the way): a span is opened with a start time and
//! an id (the id goes upstream in `traceparent` before the span ends) and closed into the
//! vector. When the request ends the whole trace goes to the exporter's queue in one push.
//! Tracing off, or a request not sampled, costs one atomic load and a `None` on the request.

pub mod export;
pub mod otlp;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use http::header::HeaderMap;
use tokio::sync::mpsc;

use super::Metrics;
use crate::config::TracingConfig;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// More spans than this in one request (a long failover chain) are counted, not kept.
const MAX_SPANS_PER_TRACE: usize = 64;

/// The parent context an app sent in `traceparent` (and `tracestate`, passed on as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) sampled: bool,
}

/// Parses a W3C `traceparent` (version 00, or a later version read as 00 as the spec asks).
/// Invalid headers are ignored, which starts a new trace.
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    // The spec's hex is lowercase only; `hex` also takes uppercase.
    if v[..55].iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    let [mut version, mut flags] = [[0u8; 1]; 2];
    let (mut trace_id, mut span_id) = ([0u8; 16], [0u8; 8]);
    hex::decode_to_slice(&v[0..2], &mut version).ok()?;
    let version = version[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (version > 0 && v.len() > 55 && v[55] != b'-') {
        return None;
    }
    hex::decode_to_slice(&v[3..35], &mut trace_id).ok()?;
    hex::decode_to_slice(&v[36..52], &mut span_id).ok()?;
    hex::decode_to_slice(&v[53..55], &mut flags).ok()?;
    let flags = flags[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// `00-{trace}-{span}-01`.
pub(crate) fn traceparent(trace_id: &TraceId, span_id: &SpanId) -> HeaderValue {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    s.push_str(&hex::encode(trace_id));
    s.push('-');
    s.push_str(&hex::encode(span_id));
    s.push_str("-01");
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn new_span_id() -> SpanId {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn new_trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// OpenTelemetry's TraceIdRatioBased rule: keep when the trace id's low 8 bytes (its random
/// part) fall under the ratio, so every service using the rule agrees on the same traces.
fn ratio_keeps(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    (u64::from_be_bytes(low) >> 1) < bound
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Shared(Arc<str>),
    Int(i64),
    F64(f64),
    Bool(bool),
    List(Vec<String>),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}
impl From<Arc<str>> for Value {
    fn from(s: Arc<str>) -> Self {
        Value::Shared(s)
    }
}
impl From<&Arc<str>> for Value {
    fn from(s: &Arc<str>) -> Self {
        Value::Shared(s.clone())
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<u16> for Value {
    fn from(v: u16) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::F64(f64::from(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<Vec<String>> for Value {
    fn from(v: Vec<String>) -> Self {
        Value::List(v)
    }
}

pub type Attr = (&'static str, Value);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Unset = 0,
    /// OTLP's value; the sidecar sets Unset or Error only.
    #[allow(dead_code)]
    Ok = 1,
    Error = 2,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub at: Instant,
    pub attrs: Vec<Attr>,
}

/// One operation within a request. Opened by [`RequestTrace::open`], closed by
/// [`RequestTrace::close`].
#[derive(Debug, Clone)]
pub struct Span {
    pub id: SpanId,
    pub parent: SpanId,
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub start: Instant,
    pub end: Instant,
    pub attrs: Vec<Attr>,
    pub events: Vec<Event>,
    pub status: Status,
    pub message: Option<String>,
}

impl Span {
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attrs.push((key, value.into()));
    }

    pub(crate) fn error(&mut self, kind: impl Into<Value>, message: Option<String>) {
        self.attrs.push(("error.type", kind.into()));
        self.status = Status::Error;
        self.message = message;
    }
}

/// The spans of one sampled request.
pub struct RequestTrace {
    tracer: Arc<Tracer>,
    settings: Arc<TracingConfig>,
    pub trace_id: TraceId,
    /// The root (server) span: the request as the app sees it.
    pub root: Span,
    /// The app's span, when it sent `traceparent`.
    remote_parent: Option<SpanId>,
    pub tracestate: Option<HeaderValue>,
    /// Wall clock at `root.start`: span times are offsets from it, so clock steps during a
    /// request cannot reorder its spans.
    start_unix_ns: u64,
    spans: Vec<Span>,
    dropped: u32,
    /// When the relay began streaming the answer to the app.
    pub(crate) stream_start: Option<Instant>,
    /// `gen_ai.response.finish_reasons`, when the answer said.
    pub(crate) finish_reasons: Vec<String>,
}

impl RequestTrace {
    /// Opens a child span of the root.
    pub fn open(&self, name: impl Into<Cow<'static, str>>, kind: Kind) -> Span {
        self.open_under(self.root.id, name, kind)
    }

    pub(crate) fn open_under(&self, parent: SpanId, name: impl Into<Cow<'static, str>>, kind: Kind) -> Span {
        let now = Instant::now();
        Span {
            id: new_span_id(),
            parent,
            name: name.into(),
            kind,
            start: now,
            end: now,
            attrs: Vec::new(),
            events: Vec::new(),
            status: Status::Unset,
            message: None,
        }
    }

    /// Ends a span now and keeps it.
    pub fn close(&mut self, mut span: Span) {
        span.end = Instant::now();
        self.keep(span);
    }

    /// Keeps a span whose start and end were measured elsewhere (the embedder's threads).
    pub(crate) fn keep(&mut self, span: Span) {
        if self.spans.len() < MAX_SPANS_PER_TRACE {
            self.spans.push(span);
        } else {
            self.dropped += 1;
        }
    }

    /// The `traceparent` for a request made inside `span`.
    pub fn traceparent(&self, span: &Span) -> HeaderValue {
        traceparent(&self.trace_id, &span.id)
    }

    pub(crate) fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// Ends the request: the root span closes now and the trace goes to the export queue
    /// (or is counted as dropped when the queue is full).
    pub(crate) fn finish(mut self: Box<Self>) {
        self.root.end = Instant::now();
        if self.dropped > 0 {
            self.root
                .set("llm_sidecar.trace.dropped_spans", u64::from(self.dropped));
        }
        let tracer = self.tracer.clone();
        tracer.submit(self);
    }

    /// Every span, the root first, each with whether its parent is in another process (only
    /// the root's can be).
    pub fn each_span(&self) -> impl Iterator<Item = (&Span, bool)> {
        std::iter::once((&self.root, self.remote_parent.is_some())).chain(self.spans.iter().map(|s| (s, false)))
    }

    /// The wall-clock time of `t`, in nanoseconds since the epoch, as OTLP wants it.
    pub fn unix_ns(&self, t: Instant) -> u64 {
        let offset = t.saturating_duration_since(self.root.start);
        self.start_unix_ns
            .saturating_add(u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX))
    }

    fn span_count(&self) -> usize {
        1 + self.spans.len()
    }
}

/// The pod's tracer: the current settings (swapped on reload) and the queue to the exporter.
pub struct Tracer {
    settings: ArcSwapOption<TracingConfig>,
    queue: mpsc::UnboundedSender<Box<RequestTrace>>,
    receiver: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Box<RequestTrace>>>>,
    /// Spans in the queue; bounded by the settings' `max_queue`.
    queued: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Tracer {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        let (queue, receiver) = mpsc::unbounded_channel();
        Arc::new(Tracer {
            settings: ArcSwapOption::empty(),
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
            queued: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Applies a snapshot's settings (`None`: off). Traces already open finish under the
    /// settings they started with.
    pub fn configure(&self, settings: Option<Arc<TracingConfig>>) {
        let current = self.settings.load();
        let same = match (current.as_deref(), settings.as_deref()) {
            (None, None) => true,
            (Some(a), Some(b)) => a == b,
            _ => false,
        };
        if !same {
            if let Some(s) = &settings {
                tracing::info!(endpoint = %s.endpoint, protocol = s.protocol.label(), ratio = s.sampler.ratio, parent_based = s.sampler.parent_based, "tracing: exporting OpenTelemetry spans");
            } else if current.is_some() {
                tracing::info!("tracing: off");
            }
            self.settings.store(settings);
        }
    }

    /// Starts the trace of a request if tracing is on and the sampler keeps it.
    pub fn start(self: &Arc<Self>, headers: &HeaderMap, name: &'static str) -> Option<Box<RequestTrace>> {
        let guard = self.settings.load();
        let settings = guard.as_ref()?;
        self.start_with(settings.clone(), headers, name)
    }

    #[cold]
    fn start_with(
        self: &Arc<Self>,
        settings: Arc<TracingConfig>,
        headers: &HeaderMap,
        name: &'static str,
    ) -> Option<Box<RequestTrace>> {
        let parent = headers.get("traceparent").and_then(|v| parse_traceparent(v.as_bytes()));
        let trace_id = parent.as_ref().map_or_else(new_trace_id, |p| p.trace_id);
        let keep = match &parent {
            Some(p) if settings.sampler.parent_based => p.sampled,
            _ => ratio_keeps(&trace_id, settings.sampler.ratio),
        };
        if !keep {
            return None;
        }
        let now = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let remote_parent = parent.map(|p| p.span_id);
        Some(Box::new(RequestTrace {
            tracer: self.clone(),
            settings,
            trace_id,
            root: Span {
                id: new_span_id(),
                parent: remote_parent.unwrap_or([0; 8]),
                name: Cow::Borrowed(name),
                kind: Kind::Server,
                start: now,
                end: now,
                attrs: Vec::with_capacity(24),
                events: Vec::new(),
                status: Status::Unset,
                message: None,
            },
            remote_parent,
            tracestate: headers.get("tracestate").cloned(),
            start_unix_ns: unix,
            spans: Vec::with_capacity(8),
            dropped: 0,
            stream_start: None,
            finish_reasons: Vec::new(),
        }))
    }

    fn submit(&self, trace: Box<RequestTrace>) {
        let n = trace.span_count();
        let limit = trace.settings.max_queue;
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > limit {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.metrics.trace_spans("dropped_queue_full", n as u64);
            return;
        }
        if self.queue.send(trace).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.metrics.trace_spans("dropped_shutdown", n as u64);
        }
    }

    /// The exporter's end of the queue (taken once).
    fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<Box<RequestTrace>>> {
        self.receiver.lock().ok()?.take()
    }

    fn dequeued(&self, spans: usize) {
        self.queued.fetch_sub(spans, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_rejects() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse_traceparent(tp).unwrap();
        assert!(p.sampled);
        assert_eq!(hex::encode(p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(traceparent(&p.trace_id, &p.span_id).as_bytes(), tp);
        assert!(
            !parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // A future version may append fields.
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what").is_some());
    }

    #[test]
    fn ratio_sampling_keeps_about_the_ratio() {
        let kept = (0..20_000).filter(|_| ratio_keeps(&new_trace_id(), 0.25)).count();
        assert!((4_000..6_000).contains(&kept), "{kept}");
        assert!(ratio_keeps(&new_trace_id(), 1.0));
        assert!(!ratio_keeps(&new_trace_id(), 0.0));
    }
}
