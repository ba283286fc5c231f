//! A Server-Sent Events scanner for the response tee. It never holds back a complete event:
//! bytes are forwarded as soon as an event boundary is seen, and when upstream frames align
//! with events (the usual case) the frame is forwarded as the same `Bytes`, without a copy.
//! While scanning it reports usage, the stream's end (`[DONE]`, or the Responses API's
//! `response.completed`) and in-band errors, and can drop the usage-only chunk the sidecar
//! itself asked for.

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem::{Finder, FinderRev};

use std::borrow::Cow;

use serde::Deserialize;

use super::Endpoint;
use super::usage::{Usage, parse_response_usage, parse_usage};

/// A partial event longer than this is not an OpenAI chunk we could parse anyway; it is
/// forwarded unparsed rather than buffered without bound.
pub(crate) const MAX_PENDING_EVENT: usize = 1 << 20;

// Searchers built once: building one per call costs more than the search itself.
static LF2: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));
static CRLF2: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n\r\n"));
static LF2_REV: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\n\n"));
static CRLF2_REV: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\r\n\r\n"));
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\":{"));
static FINISH: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"finish_reason\""));

#[derive(Debug, Default)]
pub struct SseScanner {
    pending: BytesMut,
    strip_usage_only: bool,
    /// Usage reported by the stream (the last report wins, as providers send it once at the end).
    pub(crate) usage: Option<Usage>,
    /// The stream's end was seen: `data: [DONE]`, or a Responses stream's terminal event.
    pub(crate) done: bool,
    /// An `{"error": ...}` event was seen.
    pub(crate) saw_error: bool,
    /// The provider's message from its first error event, for an error before the stream is
    /// committed to the app.
    pub(crate) error_message: Option<String>,
    /// Number of data events seen.
    pub(crate) events: u64,
    /// Data events that are a well-formed JSON object and not an error: the answer itself.
    pub(crate) content_events: u64,
    /// Why the stream stopped being the one asked for (an event that is not a JSON object).
    /// Nothing from that event on is forwarded.
    pub(crate) malformed: Option<&'static str>,
    /// Look for `finish_reason` (a traced request reports it).
    track_finish: bool,
    /// The last non-null `finish_reason` seen, when tracked.
    pub(crate) finish_reason: Option<String>,
    /// Events are not judged (a passthrough stream of a shape the sidecar does not know).
    lenient: bool,
    /// The Responses API's typed events (`{"type":"response.output_text.delta",…}`).
    typed: bool,
    /// The last `sequence_number` of a typed stream, so an error event the sidecar adds
    /// follows it.
    sequence: Option<u64>,
    /// A Responses stream's response id (from `response.created`).
    pub(crate) response_id: Option<String>,
}

/// The head of a Responses API stream event.
#[derive(Deserialize)]
struct TypedEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    sequence_number: Option<u64>,
    #[serde(borrow, default)]
    response: Option<ResponseRef<'a>>,
}

#[derive(Deserialize)]
struct ResponseRef<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

impl SseScanner {
    /// `strip_usage_only`: drop the usage-only chunk (the app did not ask for it; we did).
    #[cfg(any(test, feature = "internals"))]
    pub fn new(strip_usage_only: bool) -> Self {
        Self {
            strip_usage_only,
            ..Default::default()
        }
    }

    /// The scanner for a stream of `endpoint`'s answer.
    pub(crate) fn for_endpoint(endpoint: Endpoint, strip_usage_only: bool) -> Self {
        Self {
            strip_usage_only,
            typed: endpoint == Endpoint::Responses,
            ..Default::default()
        }
    }

    /// A scanner that reads usage and errors but never judges an event malformed: for streams
    /// of endpoints the sidecar passes through without knowing their shape.
    pub(crate) fn lenient(strip_usage_only: bool) -> Self {
        Self {
            strip_usage_only,
            lenient: true,
            ..Default::default()
        }
    }

    /// Also record the stream's `finish_reason`.
    pub(crate) fn track_finish_reason(&mut self) {
        self.track_finish = true;
    }

    /// Feeds one upstream frame; returns what to forward now (possibly empty).
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.malformed.is_some() {
            return Bytes::new();
        }
        if self.pending.is_empty() {
            let Some(end) = last_boundary(&chunk) else {
                self.hold(&chunk);
                return self.overflow();
            };
            if end == chunk.len() {
                return self.scan_complete(chunk);
            }
            let mut chunk = chunk;
            let complete = chunk.split_to(end);
            self.pending.extend_from_slice(&chunk);
            return self.scan_complete(complete);
        }
        self.pending.extend_from_slice(&chunk);
        match last_boundary(&self.pending) {
            Some(end) => {
                let complete = self.pending.split_to(end).freeze();
                self.scan_complete(complete)
            }
            None => self.overflow(),
        }
    }

    /// Whatever is left when the upstream ends (an unterminated last event).
    pub(crate) fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.pending).freeze();
        if self.malformed.is_some() || rest.is_empty() {
            return Bytes::new();
        }
        // An event cut off without its blank line still counts for usage and [DONE] — unless
        // it was cut inside its JSON, which makes it malformed and not forwarded.
        match self.scan_event(&rest) {
            Verdict::Malformed => Bytes::new(),
            _ => rest,
        }
    }

    fn hold(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
    }

    fn overflow(&mut self) -> Bytes {
        if self.pending.len() > MAX_PENDING_EVENT {
            std::mem::take(&mut self.pending).freeze()
        } else {
            Bytes::new()
        }
    }

    /// `buf` holds whole events only.
    fn scan_complete(&mut self, mut buf: Bytes) -> Bytes {
        let mut start = 0;
        let mut drop_range: Option<(usize, usize)> = None;
        while start < buf.len() {
            let (event_end, next) = match next_boundary(&buf[start..]) {
                Some((e, n)) => (start + e, start + n),
                None => (buf.len(), buf.len()),
            };
            match self.scan_event(&buf[start..event_end]) {
                Verdict::Forward => {}
                // At most one usage-only chunk per stream, so one range is enough.
                Verdict::Strip => drop_range = Some((start, next)),
                Verdict::Malformed => {
                    // Forward what came before the bad event, nothing from it on.
                    self.pending.clear();
                    buf.truncate(start);
                    break;
                }
            }
            start = next;
        }
        match drop_range {
            None => buf,
            Some((a, b)) => {
                let mut out = BytesMut::with_capacity(buf.len() - (b - a));
                out.extend_from_slice(&buf[..a]);
                out.extend_from_slice(&buf[b..]);
                out.freeze()
            }
        }
    }

    /// What to do with one complete event (its bytes without the blank line).
    fn scan_event(&mut self, event: &[u8]) -> Verdict {
        let mut joined = None;
        let Some(data) = event_data(event, &mut joined) else {
            // Comments (`: keep-alive`), `event:`/`id:`/`retry:` lines alone carry no data.
            return Verdict::Forward;
        };
        self.events += 1;
        if data == b"[DONE]" {
            self.done = true;
            return Verdict::Forward;
        }
        if self.done {
            // Nothing after the terminator is read by SDKs; it cannot break the answer.
            return Verdict::Forward;
        }
        if self.typed {
            return self.scan_typed(data);
        }
        if !self.lenient
            && (data.trim_ascii_start().first() != Some(&b'{')
                || serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err())
        {
            self.malformed = Some("an event that is not a JSON object");
            return Verdict::Malformed;
        }
        let mut verdict = Verdict::Forward;
        // Cheap pre-filters: only chunks that mention usage or error are parsed.
        if usage_present(data)
            && let Some(report) = parse_usage(data)
        {
            self.usage = Some(report.usage);
            if self.strip_usage_only && report.usage_only {
                verdict = Verdict::Strip;
            }
        }
        if data.starts_with(b"{\"error\"") || ERROR.find(data).is_some() {
            self.error(data);
        } else {
            self.content_events += 1;
        }
        if self.track_finish
            && let Some(reason) = finish_reason(data)
        {
            self.finish_reason = Some(reason);
        }
        verdict
    }
}

impl SseScanner {
    /// One Responses API event. `response.created`/`in_progress`/`queued` open the stream
    /// but are not the answer (a stream that fails after them has shown the app nothing
    /// worth keeping, so it can still fail over); `response.completed`/`incomplete` end it
    /// with the usage; `error` and `response.failed` are the provider's failure.
    fn scan_typed(&mut self, data: &[u8]) -> Verdict {
        let event = match data.trim_ascii_start().first() {
            Some(b'{') => serde_json::from_slice::<TypedEvent<'_>>(data).ok(),
            _ => None,
        };
        let Some(event) = event else {
            self.malformed = Some("an event that is not a JSON object");
            return Verdict::Malformed;
        };
        if event.sequence_number.is_some() {
            self.sequence = event.sequence_number;
        }
        match event.kind.as_deref() {
            Some("response.created" | "response.in_progress" | "response.queued") => {
                if self.response_id.is_none() {
                    self.response_id = event.response.and_then(|r| r.id).map(Cow::into_owned);
                }
            }
            Some("error") => self.error(data),
            Some(end @ ("response.completed" | "response.incomplete" | "response.failed")) => {
                self.done = true;
                if let Some(u) = parse_response_usage(data) {
                    self.usage = Some(u);
                }
                if self.track_finish {
                    self.finish_reason = Some(end["response.".len()..].to_owned());
                }
                if end == "response.failed" {
                    self.error(data);
                } else {
                    self.content_events += 1;
                }
            }
            None if ERROR.find(data).is_some() => self.error(data),
            _ => self.content_events += 1,
        }
        Verdict::Forward
    }

    fn error(&mut self, data: &[u8]) {
        self.saw_error = true;
        if self.error_message.is_none() {
            self.error_message = Some(error_message(data));
        }
    }

    /// The in-band error event an SDK raises on when the stream fails after its start: the
    /// Responses API's `error` event for a typed stream, `{"error":…}` otherwise.
    pub(crate) fn error_event(&self, message: &str, code: &str) -> Bytes {
        let mut event = Vec::with_capacity(message.len() + 128);
        if self.typed {
            let body = serde_json::json!({
                "type": "error",
                "code": code,
                "message": message,
                "param": null,
                "sequence_number": self.sequence.map_or(0, |s| s + 1),
            });
            event.extend_from_slice(b"event: error\ndata: ");
            // Serialising a `Value` built from strings into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut event, &body);
        } else {
            event.extend_from_slice(b"data: ");
            event.extend_from_slice(&super::error_body(message, "upstream_error", None, Some(code)));
        }
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    }
}

/// An event's data: its `data:` lines joined by newlines. Providers send one line, so the join
/// (and its allocation, into `joined`) happens only for the rare multi-line event.
fn event_data<'a>(event: &'a [u8], joined: &'a mut Option<Vec<u8>>) -> Option<&'a [u8]> {
    let mut first: Option<&[u8]> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        match (&mut *joined, first) {
            (Some(j), _) => {
                j.push(b'\n');
                j.extend_from_slice(data);
            }
            (None, Some(f)) => {
                let mut j = f.to_vec();
                j.push(b'\n');
                j.extend_from_slice(data);
                *joined = Some(j);
            }
            (None, None) => first = Some(data),
        }
    }
    match (joined.as_deref(), first) {
        (Some(j), _) => Some(j),
        (None, f) => f,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Forward,
    /// The usage-only chunk the sidecar asked for on the app's behalf.
    Strip,
    Malformed,
}

/// The `message` of an error event (`{"error":{"message"}}`, a Responses `error` event's
/// own `message`, or `response.failed`'s `response.error.message`), or a generic text.
fn error_message(data: &[u8]) -> String {
    #[derive(Deserialize, Default)]
    struct E {
        #[serde(default)]
        error: Option<Inner>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        response: Option<Failed>,
    }
    #[derive(Deserialize, Default)]
    struct Failed {
        #[serde(default)]
        error: Option<Inner>,
    }
    #[derive(Deserialize, Default)]
    struct Inner {
        #[serde(default)]
        message: Option<String>,
    }
    let e = serde_json::from_slice::<E>(data).unwrap_or_default();
    e.error
        .and_then(|i| i.message)
        .or(e.message)
        .or_else(|| e.response.and_then(|r| r.error).and_then(|i| i.message))
        .map(|m| m.chars().take(300).collect())
        .unwrap_or_else(|| "the provider sent an error event".to_owned())
}

/// Whether a chunk carries a non-null `usage` (OpenAI puts `"usage":null` on every chunk
/// once usage is requested; parsing those would cost a full JSON parse per chunk).
fn usage_present(data: &[u8]) -> bool {
    let Some(at) = USAGE.find(data) else { return false };
    let rest = data[at + 7..].trim_ascii_start();
    let rest = rest.strip_prefix(b":").unwrap_or(rest).trim_ascii_start();
    !rest.starts_with(b"null")
}

/// The first non-null `"finish_reason": "…"` in a chunk, without parsing it.
fn finish_reason(data: &[u8]) -> Option<String> {
    let at = FINISH.find(data)?;
    let rest = data[at + 15..]
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let rest = rest.strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
}

/// End of the last complete event (just after its blank line).
fn last_boundary(buf: &[u8]) -> Option<usize> {
    let lf = LF2_REV.rfind(buf).map(|i| i + 2);
    let crlf = CRLF2_REV.rfind(buf).map(|i| i + 4);
    lf.max(crlf)
}

/// (end of event content, start of next event) for the first boundary in `buf`.
fn next_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = LF2.find(buf).map(|i| (i, i + 2));
    let crlf = CRLF2.find(buf).map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[test]
    fn aligned_frames_pass_through_without_copy() {
        let mut s = SseScanner::new(false);
        let frame = Bytes::from_static(C1.as_bytes());
        let out = s.push(frame.clone());
        assert_eq!(out.as_ptr(), frame.as_ptr());
        assert_eq!(s.events, 1);
    }

    #[test]
    fn split_events_are_forwarded_once_complete() {
        let mut s = SseScanner::new(false);
        let all = format!("{C1}{USAGE}{DONE}");
        let mut forwarded = Vec::new();
        for piece in all.as_bytes().chunks(7) {
            forwarded.extend_from_slice(&s.push(Bytes::copy_from_slice(piece)));
        }
        forwarded.extend_from_slice(&s.finish());
        assert_eq!(forwarded, all.as_bytes());
        assert!(s.done);
        assert_eq!(s.usage.unwrap().prompt_tokens, 3);
    }

    #[test]
    fn strips_only_the_usage_only_chunk_when_asked() {
        let mut s = SseScanner::new(true);
        let out = s.push(Bytes::from(format!("{C1}{USAGE}{DONE}")));
        assert_eq!(out, format!("{C1}{DONE}").as_bytes());
        assert_eq!(s.usage.unwrap().completion_tokens, 1);
    }

    #[test]
    fn crlf_framing_and_errors() {
        let mut s = SseScanner::new(false);
        let frame = Bytes::from_static(b"data: {\"error\":{\"message\":\"x\"}}\r\n\r\n");
        assert_eq!(s.push(frame.clone()), frame);
        assert!(s.saw_error);
    }

    #[test]
    fn finish_reason_only_when_tracked() {
        let chunk = "data: {\"choices\":[{\"delta\":{},\"finish_reason\": \"length\"}]}\n\n";
        let mut s = SseScanner::new(false);
        s.push(Bytes::from(format!("{C1}{chunk}")));
        assert_eq!(s.finish_reason, None);
        let mut s = SseScanner::new(false);
        s.track_finish_reason();
        s.push(Bytes::from(format!("{C1}{chunk}{DONE}")));
        assert_eq!(s.finish_reason.as_deref(), Some("length"));
        s.push(Bytes::from_static(
            b"data: {\"choices\":[{\"finish_reason\":null}]}\n\n",
        ));
        assert_eq!(s.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn unbounded_partial_events_are_flushed() {
        let mut s = SseScanner::new(false);
        let big = Bytes::from(vec![b'a'; MAX_PENDING_EVENT + 1]);
        assert_eq!(s.push(big).len(), MAX_PENDING_EVENT + 1);
    }

    #[test]
    fn events_are_judged_one_by_one() {
        let mut s = SseScanner::new(false);
        assert!(!s.push(Bytes::from_static(b": keep-alive\n\n")).is_empty());
        assert_eq!(s.content_events, 0);
        s.push(Bytes::from(C1));
        assert_eq!(s.content_events, 1);
        // A non-JSON event: what came before it in the same frame goes out, nothing after.
        let out = s.push(Bytes::from(format!("{C1}data: <html>oops</html>\n\n{C1}")));
        assert_eq!(out, C1.as_bytes());
        assert_eq!(s.malformed, Some("an event that is not a JSON object"));
        assert!(s.push(Bytes::from(C1)).is_empty());
        assert!(s.finish().is_empty());
    }

    #[test]
    fn error_events_are_not_content() {
        let mut s = SseScanner::new(false);
        s.push(Bytes::from_static(
            b"data: {\"error\":{\"message\":\"Overloaded\"}}\n\n",
        ));
        assert!(s.saw_error);
        assert_eq!(s.content_events, 0);
        assert_eq!(s.error_message.as_deref(), Some("Overloaded"));
    }

    #[test]
    fn multi_line_data_is_one_event() {
        let mut s = SseScanner::new(false);
        let out = s.push(Bytes::from_static(b"data: {\"choices\":\ndata: []}\n\n"));
        assert!(!out.is_empty());
        assert_eq!((s.content_events, s.malformed), (1, None));
    }

    #[test]
    fn a_last_event_cut_inside_its_json_is_malformed() {
        let mut s = SseScanner::new(false);
        assert!(s.push(Bytes::from_static(b"data: {\"choices\":[{\"de")).is_empty());
        assert!(s.finish().is_empty());
        assert!(s.malformed.is_some());
    }

    #[test]
    fn unterminated_last_event_still_counts() {
        let mut s = SseScanner::new(false);
        assert!(s.push(Bytes::from_static(b"data: [DONE]")).is_empty());
        assert_eq!(&s.finish()[..], b"data: [DONE]");
        assert!(s.done);
    }

    const CREATED: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"output\":[],\"usage\":null,\"error\":null}}\n\n";
    const DELTA: &str = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"\\\"response.completed\\\" said\"}\n\n";
    const COMPLETED: &str = "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":5,\"output_tokens\":2,\"total_tokens\":7},\"error\":null}}\n\n";

    #[test]
    fn responses_streams_end_with_their_terminal_event_and_report_usage() {
        let mut s = SseScanner::for_endpoint(Endpoint::Responses, false);
        s.track_finish_reason();
        let out = s.push(Bytes::from(CREATED));
        assert_eq!(out, CREATED.as_bytes());
        assert_eq!(s.content_events, 0, "response.created is not the answer yet");
        assert_eq!(s.response_id.as_deref(), Some("resp_1"));
        s.push(Bytes::from(DELTA));
        assert_eq!(
            (s.content_events, s.done),
            (1, false),
            "a delta quoting the event name is content"
        );
        s.push(Bytes::from(COMPLETED));
        assert!(s.done && !s.saw_error);
        assert_eq!(s.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((5, 2)));
        assert_eq!(s.finish_reason.as_deref(), Some("completed"));
        // A chat scanner would have called this stream unterminated (no [DONE]).
        let mut chat = SseScanner::new(false);
        chat.push(Bytes::from(format!("{CREATED}{DELTA}{COMPLETED}")));
        assert!(!chat.done);
    }

    #[test]
    fn responses_errors_and_failures_are_the_providers() {
        let mut s = SseScanner::for_endpoint(Endpoint::Responses, false);
        s.push(Bytes::from(CREATED));
        s.push(Bytes::from_static(
            b"event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"overloaded\",\"sequence_number\":1}\n\n",
        ));
        assert!(s.saw_error && s.content_events == 0);
        assert_eq!(s.error_message.as_deref(), Some("overloaded"));

        let mut s = SseScanner::for_endpoint(Endpoint::Responses, false);
        s.push(Bytes::from_static(
            b"data: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"model crashed\"}}}\n\n",
        ));
        assert!(s.saw_error && s.done);
        assert_eq!(s.error_message.as_deref(), Some("model crashed"));

        let mut s = SseScanner::for_endpoint(Endpoint::Responses, false);
        assert!(s.push(Bytes::from_static(b"data: [1,2]\n\n")).is_empty());
        assert!(s.malformed.is_some());
    }

    #[test]
    fn the_sidecars_error_event_speaks_the_streams_dialect() {
        let mut s = SseScanner::for_endpoint(Endpoint::Responses, false);
        s.push(Bytes::from(CREATED));
        s.push(Bytes::from(DELTA));
        let e = s.error_event("cut", "upstream_reset");
        let text = std::str::from_utf8(&e).unwrap();
        assert!(text.starts_with("event: error\ndata: {"), "{text}");
        let v: serde_json::Value = serde_json::from_str(text["event: error\ndata: ".len()..].trim()).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("upstream_reset"))
        );
        assert_eq!(v["sequence_number"], 2);
        let chat = SseScanner::new(false).error_event("cut", "upstream_reset");
        assert!(chat.starts_with(b"data: {\"error\":{"));
    }
}
