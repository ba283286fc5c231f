//! The JSON log line, written field by field. `tracing-subscriber`'s JSON format gathers each
//! event's fields into a `serde_json` map first (an allocation per field, a UTF-8 check per
//! write); at one request line per request that was ~6 % of the sidecar's CPU under load. This
//! writes the same shape — `{"timestamp":…,"level":…,"message":…, fields…}`, one object per
//! line — straight into the line buffer. Numbers go through `itoa`/`ryu` and the timestamp's
//! date and time of day are formatted once a second: `core::fmt`'s float and integer paths and
//! a full RFC 3339 formatting per line were a third of the line's cost.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // The line is made in a `String` of this thread and handed over in one write: the
        // writer is a `dyn fmt::Write`, and ~100 small writes through it were a third of the
        // line's cost (#19). A field's `Debug` that logs itself finds the buffer taken and
        // gets a fresh one.
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                format_line(&mut line, event);
                let written = w.write_str(&line);
                // One huge line does not keep its buffer for the thread's life.
                if line.capacity() > 64 << 10 {
                    *line = String::new();
                }
                written
            }
            Err(_) => {
                let mut line = String::new();
                format_line(&mut line, event);
                w.write_str(&line)
            }
        })
    }
}

fn format_line(line: &mut String, event: &Event<'_>) {
    line.push_str("{\"timestamp\":\"");
    timestamp(line);
    line.push_str("\",\"level\":\"");
    line.push_str(event.metadata().level().as_str());
    line.push('"');
    event.record(&mut Fields(line));
    line.push_str("}\n");
}

struct Fields<'a>(&'a mut String);

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push_str(",\"");
        escape(self.0, field.name());
        self.0.push_str("\":");
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.0.push('"');
        escape(self.0, value);
        self.0.push('"');
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // JSON has no NaN or infinity.
        if value.is_finite() {
            self.0.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            self.0.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.0.push('"');
        // Writing into a `String` cannot fail.
        let _ = write!(Escaped(self.0), "{value:?}");
        self.0.push('"');
    }
}

/// Writes through JSON string escaping.
struct Escaped<'a>(&'a mut String);

impl Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s);
        Ok(())
    }
}

/// `2026-12-07T15:08:04.123456Z` (UTC, microseconds: what `tracing-subscriber` writes). The
/// part up to the seconds is kept per thread and remade when the second changes.
fn timestamp(line: &mut String) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let ts = i64::try_from(secs)
                .ok()
                .and_then(|s| jiff::Timestamp::from_second(s).ok())
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            cached.1.clear();
            let _ = write!(cached.1, "{}", ts.strftime("%Y-%m-%dT%H:%M:%S"));
            cached.0 = secs;
        }
        line.push_str(&cached.1);
    });
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    line.push('.');
    line.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
    line.push('Z');
}

fn escape(out: &mut String, s: &str) {
    // Almost every value (ids, names, labels) needs no escaping: one scan, one copy.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::logwriter::tests::Sink;

    /// What `emit` logs through [`JsonLines`].
    fn logged(emit: impl FnOnce()) -> String {
        let buf = Sink::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn one_valid_json_object_per_line_with_typed_fields() {
        let text = logged(|| {
            tracing::info!(
                request_id = "r-1",
                status = 200u16,
                delta = -3i64,
                cost_usd = 0.25,
                nan = f64::NAN,
                stream = true,
                reason = %"tier \"light\"\n\u{1}",
                ttft_ms = Option::<f64>::None,
                "request"
            );
        });
        assert!(text.ends_with("}\n") && text.lines().count() == 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["delta"], -3);
        assert_eq!(v["cost_usd"], 0.25);
        assert_eq!(v["nan"], serde_json::Value::Null);
        assert_eq!(v["stream"], true);
        assert_eq!(v["reason"], "tier \"light\"\n\u{1}");
        assert!(v.get("ttft_ms").is_none(), "an empty Option is left out");
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-12-07T15:08:04.123456Z".len(),
            "{ts}"
        );
        let at: jiff::Timestamp = ts.parse().unwrap();
        let off = jiff::Timestamp::now().duration_since(at).as_secs_f64().abs();
        assert!(off < 60.0, "timestamp {ts} is {off} s from now");
    }

    #[test]
    fn numbers_keep_their_values() {
        let text = logged(|| {
            tracing::info!(a = 12.0, b = 1e-7, c = 123456.789, d = u64::MAX, e = i64::MIN, "n");
        });
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["a"], 12.0);
        assert_eq!(v["b"], 1e-7);
        assert_eq!(v["c"], 123456.789);
        assert_eq!(v["d"], u64::MAX);
        assert_eq!(v["e"], i64::MIN);
    }
}
