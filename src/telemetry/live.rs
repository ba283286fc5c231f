//! What the sidecar is doing right now, for the live dashboard (`/dashboard`, fed by
//! `/admin/events`): a bounded ring of the most recent requests (metadata only; the prompt's
//! first words only when `server.dashboard_prompts` is on) and, from it, rates, latency and
//! TTFT percentiles, cache results, the route/model mix, cost burn and refusals over the last
//! minute. Recording is one push under a short lock; snapshots are computed on demand.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Requests remembered for the snapshot (at 1k requests/s, the last couple of seconds; at
/// typical LLM rates, minutes).
pub(crate) const RING: usize = 4096;
/// Requests shown in the dashboard's tail.
pub(crate) const TAIL: usize = 25;

/// Kept cheap to record (no formatting, no string copies on the request path): ids and
/// reasons are turned into text only when a snapshot is taken.
/// `R`: why the request went where it did (the router's reason; generic so that telemetry
/// does not depend on the router, which sits above it).
#[derive(Debug, Clone, Serialize)]
#[serde(bound(serialize = "R: std::fmt::Display"))]
pub struct Recent<R> {
    pub(crate) at_ms: u64,
    pub(crate) request_id: RowId,
    pub(crate) endpoint: &'static str,
    pub(crate) tenant: Arc<str>,
    pub(crate) route: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) status: u16,
    pub(crate) outcome: &'static str,
    pub(crate) cache: &'static str,
    /// Why the cache (or its semantic half) was skipped, if it was.
    pub(crate) cache_skip: Option<&'static str>,
    pub(crate) stream: bool,
    pub(crate) duration_ms: f64,
    pub(crate) ttft_ms: Option<f64>,
    pub(crate) cost_usd: f64,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    #[serde(serialize_with = "display")]
    pub(crate) reason: Option<R>,
    /// Only with `server.dashboard_prompts: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) prompt: Option<String>,
}

/// A request id as a row keeps it: in the row when it is short (the sidecar's own ids and
/// UUIDs), so that the row's overwrite, a ring's length of requests later, does not free a
/// heap block long gone cold — that free was ~0.15 µs per request under load (#19).
#[derive(Clone, Debug)]
pub(crate) enum RowId {
    Short { len: u8, bytes: [u8; ROW_ID_BYTES] },
    Long(http::HeaderValue),
}

const ROW_ID_BYTES: usize = 39;

impl RowId {
    pub(crate) fn new(id: &http::HeaderValue) -> Self {
        let b = id.as_bytes();
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= ROW_ID_BYTES && id.to_str().is_ok() => {
                let mut bytes = [0; ROW_ID_BYTES];
                bytes[..b.len()].copy_from_slice(b);
                RowId::Short { len, bytes }
            }
            _ => RowId::Long(id.clone()),
        }
    }

    /// The id, or "" if it is not visible ASCII (as a header's `to_str`).
    pub(crate) fn as_str(&self) -> &str {
        match self {
            RowId::Short { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or(""),
            RowId::Long(v) => v.to_str().unwrap_or(""),
        }
    }
}

impl serde::Serialize for RowId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn display<R: std::fmt::Display, S: serde::Serializer>(v: &Option<R>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(r) => s.collect_str(r),
        None => s.serialize_none(),
    }
}

pub struct Live<R> {
    ring: Mutex<Ring<R>>,
}

impl<R> Default for Live<R> {
    fn default() -> Self {
        Live {
            ring: Mutex::new(Ring {
                rows: Vec::new(),
                next: 0,
            }),
        }
    }
}

/// The last [`RING`] rows. A full ring overwrites its oldest row in place: a `VecDeque`'s
/// `pop_front` + `push_back` moved the ~230-byte row out and back, ~0.4 % of the CPU per
/// proxied request under load (#19).
struct Ring<R> {
    rows: Vec<Recent<R>>,
    /// Where the next row goes once the ring is full (the oldest row).
    next: usize,
}

impl<R> Ring<R> {
    fn push(&mut self, r: Recent<R>) {
        if self.rows.len() < RING {
            self.rows.push(r);
        } else if let Some(slot) = self.rows.get_mut(self.next) {
            *slot = r;
            self.next = (self.next + 1) % RING;
        }
    }

    /// Oldest first.
    fn iter(&self) -> impl DoubleEndedIterator<Item = &Recent<R>> {
        let (newer, older) = self.rows.split_at(self.next.min(self.rows.len()));
        older.iter().chain(newer)
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

impl<R: std::fmt::Display> Live<R> {
    pub(crate) fn record(&self, r: Recent<R>) {
        if let Ok(mut ring) = self.ring.lock() {
            ring.push(r);
        }
    }

    /// Figures over the last `window_ms` before `now_ms`.
    pub(crate) fn snapshot(&self, now_ms: u64, window_ms: u64) -> serde_json::Value {
        let Ok(ring) = self.ring.lock() else {
            return serde_json::json!({});
        };
        let since = now_ms.saturating_sub(window_ms);
        let recent: Vec<&Recent<R>> = ring.iter().filter(|r| r.at_ms >= since).collect();
        let n = recent.len();
        let secs = window_ms as f64 / 1000.0;
        let mut durations: Vec<f64> = recent.iter().map(|r| r.duration_ms).collect();
        durations.sort_by(f64::total_cmp);
        let mut ttfts: Vec<f64> = recent.iter().filter_map(|r| r.ttft_ms).collect();
        ttfts.sort_by(f64::total_cmp);
        let mut cache: BTreeMap<&str, u64> = BTreeMap::new();
        let mut mix: BTreeMap<String, u64> = BTreeMap::new();
        let mut refused: BTreeMap<&str, u64> = BTreeMap::new();
        let mut skipped: BTreeMap<&str, u64> = BTreeMap::new();
        // 4xx the sidecar answered itself (unknown model, bad request, missing tenant…), by
        // status: a broken app shows here, not in the provider's figures.
        let mut rejected: BTreeMap<u16, u64> = BTreeMap::new();
        let (mut errors, mut cost, mut tokens) = (0u64, 0.0f64, 0u64);
        for r in &recent {
            *cache.entry(r.cache).or_default() += 1;
            if let Some(reason) = r.cache_skip {
                *skipped.entry(reason).or_default() += 1;
            }
            *mix.entry(format!("{} → {}", r.route, r.model)).or_default() += 1;
            if matches!(r.outcome, "rate_limited" | "over_budget" | "queue_timeout") {
                *refused.entry(r.outcome).or_default() += 1;
            }
            errors += u64::from(r.status >= 500);
            if (400..500).contains(&r.status) && matches!(r.outcome, "rejected" | "body_timeout") {
                *rejected.entry(r.status).or_default() += 1;
            }
            cost += r.cost_usd;
            tokens += r.prompt_tokens + r.completion_tokens;
        }
        let hits = cache.get("hit-exact").copied().unwrap_or(0) + cache.get("hit-semantic").copied().unwrap_or(0);
        let lookups = hits + cache.get("miss").copied().unwrap_or(0);
        serde_json::json!({
            "at_ms": now_ms,
            "window_s": secs,
            "requests": n,
            "rps": n as f64 / secs,
            "error_ratio": if n > 0 { errors as f64 / n as f64 } else { 0.0 },
            "rejected_ratio": if n > 0 { rejected.values().sum::<u64>() as f64 / n as f64 } else { 0.0 },
            "rejected": rejected,
            "latency_ms": {"p50": percentile(&durations, 0.5), "p90": percentile(&durations, 0.9), "p99": percentile(&durations, 0.99)},
            "ttft_ms": {"p50": percentile(&ttfts, 0.5), "p99": percentile(&ttfts, 0.99)},
            "cache": {"by_result": cache, "skipped": skipped, "hit_rate": if lookups > 0 { hits as f64 / lookups as f64 } else { 0.0 }},
            "mix": mix,
            "cost_usd_per_hour": cost / secs * 3600.0,
            "tokens_per_s": tokens as f64 / secs,
            "refused": refused,
            "tail": ring.iter().rev().take(TAIL).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_keeps_short_ids_in_place_and_any_id_as_it_was_given() {
        let id = |b: &[u8]| http::HeaderValue::from_bytes(b).unwrap();
        for text in ["r", "0123456789abcdef0123456789abcdef", "123e4567-e89b-12d3-a456-426614174000", &"x".repeat(39)] {
            let row = RowId::new(&id(text.as_bytes()));
            assert!(matches!(row, RowId::Short { .. }), "{text}");
            assert_eq!(row.as_str(), text);
        }
        let long = "y".repeat(40);
        let row = RowId::new(&id(long.as_bytes()));
        assert!(matches!(row, RowId::Long(_)));
        assert_eq!(row.as_str(), long);
        // Not visible ASCII: shown as "", as before.
        assert_eq!(RowId::new(&id(b"a\xffb")).as_str(), "");
        assert_eq!(serde_json::to_string(&RowId::new(&id(b"r-1"))).unwrap(), "\"r-1\"");
    }

    fn req(at_ms: u64, ms: f64, cache: &'static str, status: u16) -> Recent<&'static str> {
        Recent {
            at_ms,
            request_id: RowId::new(&http::HeaderValue::from_static("r")),
            endpoint: "chat",
            tenant: "t".into(),
            route: "auto".into(),
            model: "m".into(),
            status,
            outcome: match status {
                429 => "rate_limited",
                404 => "rejected",
                _ => "ok",
            },
            cache,
            cache_skip: (cache == "bypass").then_some("privacy"),
            stream: false,
            duration_ms: ms,
            ttft_ms: Some(ms / 2.0),
            cost_usd: 0.001,
            prompt_tokens: 10,
            completion_tokens: 5,
            reason: None,
            prompt: None,
        }
    }

    #[test]
    fn a_full_ring_keeps_the_newest_rows_oldest_first() {
        let live: Live<&'static str> = Live::default();
        let total = RING as u64 + 5;
        for at in 0..total {
            live.record(req(at, 1.0, "miss", 200));
        }
        let ring = live.ring.lock().unwrap();
        let at: Vec<u64> = ring.iter().map(|r| r.at_ms).collect();
        assert_eq!(at.len(), RING);
        assert_eq!(at, (5..total).collect::<Vec<_>>());
        let newest: Vec<u64> = ring.iter().rev().take(3).map(|r| r.at_ms).collect();
        assert_eq!(newest, vec![total - 1, total - 2, total - 3]);
    }

    #[test]
    fn snapshots_summarise_the_window_only() {
        let live = Live::default();
        live.record(req(1_000, 999.0, "miss", 200)); // outside the window
        for i in 0..10 {
            live.record(req(
                100_000 + i,
                10.0 * (i + 1) as f64,
                if i < 4 { "hit-exact" } else { "miss" },
                200,
            ));
        }
        live.record(req(100_050, 1.0, "bypass", 429));
        let s = live.snapshot(100_100, 60_000);
        assert_eq!(s["requests"], 11);
        assert_eq!(s["cache"]["hit_rate"], 0.4);
        assert_eq!(s["latency_ms"]["p50"], 50.0);
        assert_eq!(s["refused"]["rate_limited"], 1);
        assert_eq!(s["cache"]["skipped"]["privacy"], 1);
        assert_eq!(s["tail"].as_array().unwrap().len(), 12);
        assert_eq!(s["tail"][0]["status"], 429);
        assert_eq!(s["rejected_ratio"], 0.0);
    }

    #[test]
    fn the_sidecars_own_4xx_are_counted_apart_from_5xx_and_refusals() {
        let live = Live::default();
        for i in 0..17 {
            live.record(req(100_000 + i, 5.0, "miss", 200));
        }
        for i in 0..3 {
            live.record(req(100_100 + i, 1.0, "bypass", 404)); // model_not_found
        }
        let s = live.snapshot(100_200, 60_000);
        assert_eq!(s["error_ratio"], 0.0);
        assert_eq!(s["rejected_ratio"], 0.15);
        assert_eq!(s["rejected"]["404"], 3);
        assert!(s["refused"].as_object().unwrap().is_empty());
    }
}
