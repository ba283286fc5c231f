//! The JSON log line, written field by field. `tracing-subscriber`'s JSON format gathers each
//! event's fields into a `serde_json` map first (an allocation per field, a UTF-8 check per
//! write); at one request line per request that was ~6 % of the sidecar's CPU under load. This
//! writes the same shape — `{"timestamp":…,"level":…,"message":…, fields…}`, one object per
//! line — straight into the line buffer. Numbers go through `itoa`/`ryu` and the timestamp's
//! date and time of day are formatted once a second: `core::fmt`'s float and integer paths and
//! a full RFC 3339 formatting per line were a third of the line's cost.
//!
//! The per-request line skips `tracing` altogether when the JSON format is installed
//! ([`write_direct`]): its ~20 fields went through the dispatcher, the fmt layer's own buffer
//! (a second copy of the line) and a dynamic call per field (#19). It comes out byte for byte
//! as the equivalent event would.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::logwriter::BatchWriter;

pub struct JsonLines;

/// Where [`write_direct`] writes: the writer of the installed JSON subscriber.
static DIRECT: OnceLock<BatchWriter> = OnceLock::new();

/// Lets [`write_direct`] write through `w`, the installed JSON subscriber's writer.
pub(crate) fn install_direct(w: BatchWriter) {
    let _ = DIRECT.set(w);
}

/// Writes a JSON line at `level` with `message` and the fields `fields` adds, as [`JsonLines`]
/// would write the equivalent event, without going through `tracing`. False, and nothing
/// written, when the installed subscriber is not the JSON one: then log through `tracing`.
/// The caller checks the level is enabled (`tracing::enabled!`).
pub(crate) fn write_direct(level: Level, message: &str, fields: impl FnOnce(&mut Fields<'_>)) -> bool {
    let Some(out) = DIRECT.get() else { return false };
    with_line(|line| {
        direct_line(line, level, message, fields);
        let _ = out.make_writer().write(line.as_bytes());
    });
    true
}

fn direct_line(line: &mut String, level: Level, message: &str, fields: impl FnOnce(&mut Fields<'_>)) {
    start_line(line, level);
    let mut f = Fields(line);
    f.str("message", message);
    fields(&mut f);
    line.push_str("}\n");
}

/// `f` on this thread's line buffer, cleared: a field's `Debug` that logs itself finds the
/// buffer taken and gets a fresh one.
fn with_line<R>(f: impl FnOnce(&mut String) -> R) -> R {
    thread_local! {
        static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    }
    LINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut line) => {
            line.clear();
            let r = f(&mut line);
            // One huge line does not keep its buffer for the thread's life.
            if line.capacity() > 64 << 10 {
                *line = String::new();
            }
            r
        }
        Err(_) => f(&mut String::new()),
    })
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // The line is made in a `String` of this thread and handed over in one write: the
        // writer is a `dyn fmt::Write`, and ~100 small writes through it were a third of the
        // line's cost (#19).
        with_line(|line| {
            start_line(line, *event.metadata().level());
            event.record(&mut Fields(line));
            line.push_str("}\n");
            w.write_str(line)
        })
    }
}

fn start_line(line: &mut String, level: Level) {
    line.push_str("{\"timestamp\":\"");
    timestamp(line);
    line.push_str("\",\"level\":\"");
    line.push_str(level.as_str());
    line.push('"');
}

/// A line's fields, written as they are given.
pub(crate) struct Fields<'a>(&'a mut String);

impl Fields<'_> {
    /// A key from an event: a field's name is usually an identifier, but may be any string.
    fn key(&mut self, name: &str) {
        self.0.push_str(",\"");
        escape(self.0, name);
        self.0.push_str("\":");
    }

    /// A key written by [`write_direct`]'s caller: a literal, one of ours, with nothing to escape.
    fn own_key(&mut self, name: &'static str) {
        debug_assert!(!needs_escape(name.as_bytes()), "{name}");
        self.0.push_str(",\"");
        self.0.push_str(name);
        self.0.push_str("\":");
    }

    fn string(&mut self, value: &str) {
        self.0.push('"');
        escape(self.0, value);
        self.0.push('"');
    }

    fn number(&mut self, value: u64) {
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn float(&mut self, value: f64) {
        // JSON has no NaN or infinity.
        if value.is_finite() {
            self.0.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            self.0.push_str("null");
        }
    }

    fn boolean(&mut self, value: bool) {
        self.0.push_str(if value { "true" } else { "false" });
    }

    pub(crate) fn str(&mut self, name: &'static str, value: &str) {
        self.own_key(name);
        self.string(value);
    }

    pub(crate) fn u64(&mut self, name: &'static str, value: u64) {
        self.own_key(name);
        self.number(value);
    }

    pub(crate) fn f64(&mut self, name: &'static str, value: f64) {
        self.own_key(name);
        self.float(value);
    }

    pub(crate) fn bool(&mut self, name: &'static str, value: bool) {
        self.own_key(name);
        self.boolean(value);
    }

    /// A value's `Display`, as a string (what `tracing::field::display` logs).
    pub(crate) fn display(&mut self, name: &'static str, value: &dyn fmt::Display) {
        self.own_key(name);
        self.0.push('"');
        // Writing into a `String` cannot fail.
        let _ = write!(Escaped(self.0), "{value}");
        self.0.push('"');
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field.name());
        self.string(value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field.name());
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field.name());
        self.number(value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field.name());
        self.float(value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field.name());
        self.boolean(value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field.name());
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
    if !needs_escape(s.as_bytes()) {
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

/// Whether `s` has a byte a JSON string must escape: `"`, `\\` or a control character. A line
/// has ~40 keys and values to check, so this looks at eight bytes at a time: in
/// `(x - n·0x01…) & !x & 0x80…` a byte's high bit is set only if some byte at or below it is
/// under `n`, so the word is flagged exactly when one of its bytes is (a borrow starts only at
/// such a byte; bytes from 0x80 up, UTF-8 beyond ASCII, are masked out by `!x`).
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let under = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let flagged = |b: [u8; 8]| {
        let x = u64::from_le_bytes(b);
        under(x, 0x20) | under(x ^ (ONES * u64::from(b'"')), 1) | under(x ^ (ONES * u64::from(b'\\')), 1) != 0
    };
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        if flagged(b) {
            return true;
        }
    }
    // The last few bytes as one more word, padded with a letter.
    let tail = words.remainder();
    let mut b = [b'a'; 8];
    b[..tail.len()].copy_from_slice(tail);
    !tail.is_empty() && flagged(b)
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
    fn the_word_at_a_time_scan_flags_exactly_the_bytes_json_escapes() {
        let naive = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        // Every byte value at every position of strings up to three words long, over a
        // background of plain text and of UTF-8 beyond ASCII (high bits set, where a wrong
        // mask or a borrow would show).
        for fill in [b'a', 0x7f, 0x80, 0xff, b' ', b'!', b'#', b'[', b']'] {
            for len in 0..24 {
                let plain = vec![fill; len];
                assert_eq!(needs_escape(&plain), naive(&plain), "fill {fill:#x} len {len}");
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut s = plain.clone();
                        s[at] = b;
                        assert_eq!(needs_escape(&s), naive(&s), "fill {fill:#x} len {len} byte {b:#x} at {at}");
                    }
                }
            }
        }
        let mut line = String::new();
        escape(&mut line, "a\"b\\c\u{1}\té");
        assert_eq!(line, "a\\\"b\\\\c\\u0001\\té");
    }

    /// The line without its timestamp's value, which differs between two lines.
    fn untimed(line: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        let (head, rest) = line.split_once("\",\"level\"").unwrap();
        assert!(head.starts_with("{\"timestamp\":\""));
        rest.to_string()
    }

    #[test]
    fn a_line_written_directly_is_the_line_the_event_would_make() {
        let reason = std::net::Ipv4Addr::new(10, 0, 0, 1);
        let (absent, present): (Option<&str>, Option<&str>) = (None, Some("tab\there"));
        let via_tracing = logged(|| {
            tracing::warn!(
                request_id = "r-\"1\"",
                status = 502u16,
                stream = false,
                cache_skip = absent,
                priority = present,
                reason = tracing::field::display(reason),
                duration_ms = 1.25f64,
                cost_usd = 0.0f64,
                tokens = 0u64,
                "request"
            )
        });
        let mut direct = String::new();
        direct_line(&mut direct, Level::WARN, "request", |f| {
            f.str("request_id", "r-\"1\"");
            f.u64("status", 502);
            f.bool("stream", false);
            if let Some(p) = present {
                f.str("priority", p);
            }
            f.display("reason", &reason);
            f.f64("duration_ms", 1.25);
            f.f64("cost_usd", 0.0);
            f.u64("tokens", 0);
        });
        assert_eq!(untimed(&direct), untimed(via_tracing.trim_end()) + "\n");
        assert!(direct.contains(r#""level":"WARN","message":"request","request_id":"r-\"1\"""#), "{direct}");
        assert!(direct.contains(r#""priority":"tab\there","reason":"10.0.0.1""#), "{direct}");
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
