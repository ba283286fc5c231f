//! The counting windows: a sliding window of requests and tokens over two fixed wall-clock
//! minutes (this pod's and the fleet's), a tenant's spend per UTC day and month, and the
//! calendar arithmetic they need.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{LimitKind, Limited, RateHeaders};

pub(super) const MINUTE_MS: u64 = 60_000;
pub(super) const DAY_MS: u64 = 86_400_000;

/// Milliseconds since the Unix epoch (wall clock: windows and budget periods are UTC).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The UTC date of `ms` since the epoch (the last representable one past year 9999).
pub(super) fn utc_date(ms: u64) -> jiff::civil::Date {
    let ts = i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    jiff::tz::TimeZone::UTC.to_datetime(ts).date()
}

/// (year, month 1–12) of a day number since 1970-01-01.
pub fn civil_month(days: u64) -> (i64, u32) {
    let d = utc_date(days.saturating_mul(DAY_MS));
    (i64::from(d.year()), d.month().unsigned_abs().into())
}

/// Milliseconds from `now` to the start of the next UTC month (a month if there is none).
pub(super) fn to_next_month(now: u64) -> u64 {
    let next = utc_date(now)
        .first_of_month()
        .checked_add(jiff::ToSpan::month(1))
        .ok()
        .and_then(|d| {
            jiff::tz::TimeZone::UTC
                .to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
                .ok()
        })
        .and_then(|t| u64::try_from(t.as_millisecond()).ok());
    next.map_or(31 * DAY_MS, |n| n.saturating_sub(now))
}

pub(super) fn month_id(now: u64) -> u64 {
    let (y, m) = civil_month(now / DAY_MS);
    (y as u64) * 12 + u64::from(m)
}

/// Counts for one key, split into what this pod did and what the rest of the fleet did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Window {
    pub(super) minute: u64,
    /// [previous minute, current minute], this pod.
    pub(super) req: [u64; 2],
    pub(super) tok: [i64; 2],
    /// The same from the other sidecars (fleet mode).
    pub(super) fleet_req: [u64; 2],
    pub(super) fleet_tok: [i64; 2],
    /// Not yet pushed to the fleet: (minute, requests, tokens).
    pub(super) pending_req: u64,
    pub(super) pending_tok: i64,
    /// Pods serving this key fleet-wide (0 or 1: no sharing needed) and the fleet's usage
    /// estimate at the last sync: between syncs this pod admits at most its share of the rest.
    pub(super) pods: u64,
    pub(super) synced_req: f64,
    pub(super) synced_tok: f64,
    /// Admitted here and not yet in `synced_*` (unlike `pending_*`, not reset when a push
    /// starts, only when its result arrives).
    pub(super) unsynced_req: u64,
    pub(super) unsynced_tok: i64,
}

impl Window {
    pub(super) fn roll(&mut self, minute: u64) {
        if minute == self.minute {
            return;
        }
        let adjacent = minute == self.minute + 1;
        self.req = [if adjacent { self.req[1] } else { 0 }, 0];
        self.tok = [if adjacent { self.tok[1] } else { 0 }, 0];
        self.fleet_req = [if adjacent { self.fleet_req[1] } else { 0 }, 0];
        self.fleet_tok = [if adjacent { self.fleet_tok[1] } else { 0 }, 0];
        self.minute = minute;
        // Deltas of a finished minute are pushed by the next sync under their own minute key;
        // keeping them here would credit them to the new minute.
        self.pending_req = 0;
        self.pending_tok = 0;
        self.unsynced_req = 0;
        self.unsynced_tok = 0;
        self.pods = 0;
    }

    /// Whether admitting (1 request, `estimate` tokens) keeps this pod within its share of
    /// what the fleet had left at the last sync.
    /// Would one more request of `estimate` tokens stay within `rpm`/`tpm` (and, in fleet
    /// mode, this pod's share)? The window's rate headers if so.
    pub(super) fn check(
        &self,
        rpm: Option<u64>,
        tpm: Option<u64>,
        estimate: u64,
        now: u64,
        per_model: bool,
    ) -> Result<RateHeaders, Limited> {
        let frac = (now % MINUTE_MS) as f64 / MINUTE_MS as f64;
        let reset = Duration::from_millis(MINUTE_MS - now % MINUTE_MS);
        let (used_req, used_tok) = self.used(frac);
        let h = RateHeaders {
            limit_requests: rpm,
            remaining_requests: rpm.map_or(0, |l| (l as f64 - used_req - 1.0).max(0.0) as u64),
            limit_tokens: tpm,
            remaining_tokens: tpm.map_or(0, |l| (l as f64 - used_tok - estimate as f64).max(0.0) as u64),
            reset,
        };
        let (share_req, share_tok) = self.within_share(rpm, tpm, estimate);
        if let Some(l) = rpm
            && (used_req + 1.0 > l as f64 || !share_req)
        {
            return Err(Limited::Rate {
                reason: if per_model {
                    LimitKind::ModelRequests
                } else {
                    LimitKind::Requests
                },
                limit: l,
                reset,
                headers: RateHeaders {
                    remaining_requests: 0,
                    ..h
                },
            });
        }
        if let Some(l) = tpm
            && (used_tok + estimate as f64 > l as f64 || !share_tok)
        {
            return Err(Limited::Rate {
                reason: if per_model {
                    LimitKind::ModelTokens
                } else {
                    LimitKind::Tokens
                },
                limit: l,
                reset,
                headers: RateHeaders {
                    remaining_tokens: 0,
                    ..h
                },
            });
        }
        Ok(h)
    }

    /// Replaces a request's token estimate by its real count (`delta` = real − estimate).
    pub(super) fn correct(&mut self, admitted_minute: u64, delta: i64) {
        if self.minute == admitted_minute {
            self.tok[1] += delta;
            self.pending_tok += delta;
            self.unsynced_tok += delta;
        } else if self.minute == admitted_minute + 1 {
            // The minute turned while the request ran: correct the previous window (locally;
            // the fleet copy of a finished minute keeps the estimate).
            self.tok[0] += delta;
        }
    }

    /// Counts an admitted request at its estimate (settled later against real usage).
    pub(super) fn count(&mut self, estimate: u64) {
        self.req[1] += 1;
        self.tok[1] += estimate as i64;
        self.pending_req += 1;
        self.pending_tok += estimate as i64;
        self.unsynced_req += 1;
        self.unsynced_tok += estimate as i64;
    }

    pub(super) fn within_share(&self, rpm: Option<u64>, tpm: Option<u64>, estimate: u64) -> (bool, bool) {
        if self.pods < 2 {
            return (true, true);
        }
        let n = self.pods as f64;
        let share = |limit: Option<u64>, synced: f64| limit.map(|l| ((l as f64 - synced).max(0.0) / n).ceil());
        let req_ok = share(rpm, self.synced_req).is_none_or(|s| (self.unsynced_req + 1) as f64 <= s);
        let tok_ok = share(tpm, self.synced_tok).is_none_or(|s| self.unsynced_tok.max(0) as f64 + estimate as f64 <= s);
        (req_ok, tok_ok)
    }

    /// Sliding-window estimate at `frac` (0–1) into the current minute.
    pub(super) fn used(&self, frac: f64) -> (f64, f64) {
        let req = (self.req[0] + self.fleet_req[0]) as f64 * (1.0 - frac) + (self.req[1] + self.fleet_req[1]) as f64;
        let tok = (self.tok[0] + self.fleet_tok[0]).max(0) as f64 * (1.0 - frac)
            + (self.tok[1] + self.fleet_tok[1]).max(0) as f64;
        (req, tok)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Spend {
    pub(super) day: u64,
    pub(super) month: u64,
    pub(super) day_usd: f64,
    pub(super) month_usd: f64,
    pub(super) fleet_day_usd: f64,
    pub(super) fleet_month_usd: f64,
    pub(super) pending_usd: f64,
    /// The [day, month] whose soft limit was already logged.
    pub(super) soft_logged: [u64; 2],
}

impl Spend {
    pub(super) fn spend(&mut self, usd: f64, now: u64) {
        self.roll(now);
        self.day_usd += usd;
        self.month_usd += usd;
        self.pending_usd += usd;
    }

    pub(super) fn roll(&mut self, now: u64) {
        let (day, month) = (now / DAY_MS, month_id(now));
        if day != self.day {
            self.day = day;
            self.day_usd = 0.0;
            self.fleet_day_usd = 0.0;
        }
        if month != self.month {
            self.month = month;
            self.month_usd = 0.0;
            self.fleet_month_usd = 0.0;
        }
    }

    pub(super) fn today(&self) -> f64 {
        self.day_usd + self.fleet_day_usd
    }

    pub(super) fn this_month(&self) -> f64 {
        self.month_usd + self.fleet_month_usd
    }
}
