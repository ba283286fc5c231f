//! Surviving failing providers: how long to wait before a retry (exponential backoff with full
//! jitter, `retry-after` honoured), how many retries the pod may spend (a retry budget, so an
//! outage cannot turn into a retry storm), and whether a (provider, model) pair is worth trying
//! at all (a circuit breaker that opens on consecutive failures or a failure ratio, half-opens
//! with limited probes and closes on success). It also keeps the latency EWMA that the
//! `fastest` routing strategy reads. Nothing here sends a request: `server::proxy` asks and
//! reports; `health` runs the optional active probes.
//!
//! State lives across config reloads ([`HealthRegistry::carry`]): a reload must not forget that
//! a provider is down. The locks are `std` mutexes held for a few instructions, never across an
//! await; time is tokio's, so tests drive the breaker with paused time.

pub mod health;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{BreakerConfig, ModelConfig, RetryBudgetConfig, RetryPolicy};

/// The delay before retry number `retry` (1 for the first retry): full jitter over an
/// exponentially growing cap (AWS's "full jitter"), so retries from many pods spread out
/// instead of arriving together. A provider's `retry-after` is a floor.
pub(crate) fn backoff(policy: &RetryPolicy, retry: u32, retry_after: Option<Duration>) -> Duration {
    let exp = policy
        .base_delay
        .saturating_mul(1u32.checked_shl(retry.saturating_sub(1).min(20)).unwrap_or(u32::MAX));
    let cap = exp.min(policy.max_delay);
    let jittered = cap.mul_f64(fastrand::f64());
    match retry_after {
        Some(ra) => ra.max(jittered),
        None => jittered,
    }
}

/// Parses `retry-after` as seconds (the form LLM providers send); an HTTP date is treated as
/// absent, since a provider sending one is rare and the jittered backoff is a safe stand-in.
pub(crate) fn parse_retry_after(v: &http::HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    let secs: f64 = s.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// Retries allowed as a share of first attempts over a sliding window (two half-windows, so
/// the count decays smoothly), plus a floor per second. Shared by the whole pod.
#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<BudgetWindow>,
}

#[derive(Debug)]
struct BudgetWindow {
    started: Instant,
    /// (requests, retries) in the current and the previous half-window.
    current: (u64, u64),
    previous: (u64, u64),
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            inner: Mutex::new(BudgetWindow {
                started: Instant::now(),
                current: (0, 0),
                previous: (0, 0),
            }),
        }
    }
}

impl RetryBudget {
    fn roll(w: &mut BudgetWindow, cfg: &RetryBudgetConfig, now: Instant) {
        let half = cfg.window / 2;
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed >= half * 2 {
            w.previous = (0, 0);
            w.current = (0, 0);
            w.started = now;
        } else if elapsed >= half {
            w.previous = w.current;
            w.current = (0, 0);
            w.started += half;
        }
    }

    /// Counts a first attempt.
    pub(crate) fn request(&self, cfg: &RetryBudgetConfig) {
        let now = Instant::now();
        if let Ok(mut w) = self.inner.lock() {
            Self::roll(&mut w, cfg, now);
            w.current.0 += 1;
        }
    }

    /// Takes one retry from the budget if there is one left.
    pub(crate) fn try_retry(&self, cfg: &RetryBudgetConfig) -> bool {
        let now = Instant::now();
        let Ok(mut w) = self.inner.lock() else { return false };
        Self::roll(&mut w, cfg, now);
        let requests = (w.current.0 + w.previous.0) as f64;
        let retries = (w.current.1 + w.previous.1) as f64;
        let allowed = requests * cfg.ratio + cfg.min_per_second * cfg.window.as_secs_f64();
        if retries + 1.0 <= allowed {
            w.current.1 += 1;
            true
        } else {
            false
        }
    }
}

/// Circuit state, as shown in metrics (`0` closed, `1` open, `2` half-open) and on the admin port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub(crate) fn label(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    pub(crate) fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

/// Permission to send one request through a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Normal,
    /// One of the limited half-open probes.
    Probe,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        in_flight: u32,
        successes: u32,
        since: Instant,
    },
}

#[derive(Debug)]
struct Breaker {
    phase: Phase,
    consecutive: u32,
    window_start: Instant,
    total: u32,
    failures: u32,
}

impl Breaker {
    fn new(now: Instant) -> Self {
        Breaker {
            phase: Phase::Closed,
            consecutive: 0,
            window_start: now,
            total: 0,
            failures: 0,
        }
    }

    fn state(&self, now: Instant) -> CircuitState {
        match self.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { until } if now >= until => CircuitState::HalfOpen,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn open(&mut self, cfg: &BreakerConfig, now: Instant) {
        self.phase = Phase::Open {
            until: now + cfg.open_for,
        };
        self.consecutive = 0;
        self.total = 0;
        self.failures = 0;
        self.window_start = now;
    }
}

/// A state change worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub(crate) to: CircuitState,
}

/// What the sidecar knows about one (provider, model): its breaker and its latency.
#[derive(Debug)]
pub struct ModelHealth {
    pub(crate) provider: Arc<str>,
    pub(crate) model: Arc<str>,
    breaker: Mutex<Breaker>,
    /// EWMA of time to first byte in µs, as f64 bits; 0 = no sample yet.
    latency_us: AtomicU64,
}

/// Weight of a new latency sample: about the last 10 requests dominate, so a model that
/// slows down is noticed within seconds at typical rates.
const EWMA_ALPHA: f64 = 0.2;

impl ModelHealth {
    pub(crate) fn new(provider: Arc<str>, model: Arc<str>) -> Self {
        ModelHealth {
            provider,
            model,
            breaker: Mutex::new(Breaker::new(Instant::now())),
            latency_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        self.breaker
            .lock()
            .map(|b| b.state(Instant::now()))
            .unwrap_or(CircuitState::Closed)
    }

    /// Asks to send one request. `Err` carries how long the circuit stays open.
    pub(crate) fn admit(&self, cfg: &BreakerConfig) -> Result<(Admit, Option<Transition>), Duration> {
        if !cfg.enabled {
            return Ok((Admit::Normal, None));
        }
        let now = Instant::now();
        let Ok(mut b) = self.breaker.lock() else {
            return Ok((Admit::Normal, None));
        };
        match b.phase {
            Phase::Closed => Ok((Admit::Normal, None)),
            Phase::Open { until } if now < until => Err(until - now),
            Phase::Open { .. } => {
                b.phase = Phase::HalfOpen {
                    in_flight: 1,
                    successes: 0,
                    since: now,
                };
                Ok((
                    Admit::Probe,
                    Some(Transition {
                        to: CircuitState::HalfOpen,
                    }),
                ))
            }
            Phase::HalfOpen {
                ref mut in_flight,
                ref mut since,
                ..
            } => {
                // A probe whose request vanished (client gone) must not wedge the breaker.
                if *in_flight < cfg.half_open_probes || now.saturating_duration_since(*since) >= cfg.open_for {
                    *in_flight = (*in_flight + 1).min(cfg.half_open_probes);
                    *since = now;
                    Ok((Admit::Probe, None))
                } else {
                    Err(cfg.open_for.saturating_sub(now.saturating_duration_since(*since)))
                }
            }
        }
    }

    /// Reports how an admitted request went.
    pub(crate) fn record(&self, cfg: &BreakerConfig, success: bool) -> Option<Transition> {
        if !cfg.enabled {
            return None;
        }
        let now = Instant::now();
        let mut b = self.breaker.lock().ok()?;
        if now.saturating_duration_since(b.window_start) >= cfg.window {
            b.window_start = now;
            b.total = 0;
            b.failures = 0;
        }
        b.total += 1;
        if success {
            b.consecutive = 0;
        } else {
            b.consecutive += 1;
            b.failures += 1;
        }
        match b.phase {
            Phase::HalfOpen {
                ref mut in_flight,
                ref mut successes,
                ..
            } => {
                *in_flight = in_flight.saturating_sub(1);
                if !success {
                    b.open(cfg, now);
                    return Some(Transition { to: CircuitState::Open });
                }
                *successes += 1;
                if *successes >= cfg.half_open_probes {
                    let total = b.total;
                    *b = Breaker::new(now);
                    b.total = total.min(1);
                    return Some(Transition {
                        to: CircuitState::Closed,
                    });
                }
                None
            }
            Phase::Closed if !success => {
                let ratio_tripped =
                    b.total >= cfg.min_requests && f64::from(b.failures) >= cfg.failure_ratio * f64::from(b.total);
                if b.consecutive >= cfg.consecutive_failures || ratio_tripped {
                    b.open(cfg, now);
                    Some(Transition { to: CircuitState::Open })
                } else {
                    None
                }
            }
            // Results of requests admitted before the circuit opened change nothing.
            _ => None,
        }
    }

    /// Opens the circuit at once (an active health check failed).
    pub(crate) fn force_open(&self, cfg: &BreakerConfig) -> Option<Transition> {
        if !cfg.enabled {
            return None;
        }
        let now = Instant::now();
        let mut b = self.breaker.lock().ok()?;
        match b.phase {
            Phase::Open { until } if until > now => None,
            _ => {
                b.open(cfg, now);
                Some(Transition { to: CircuitState::Open })
            }
        }
    }

    /// Adds a time-to-first-byte sample.
    pub fn observe_latency(&self, d: Duration) {
        let sample = d.as_secs_f64() * 1e6;
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let old = f64::from_bits(old);
                let new = if old == 0.0 {
                    sample.max(1.0)
                } else {
                    old + EWMA_ALPHA * (sample - old)
                };
                Some(new.to_bits())
            });
    }

    /// The latency EWMA, `None` before the first sample.
    pub(crate) fn latency(&self) -> Option<Duration> {
        let us = f64::from_bits(self.latency_us.load(Ordering::Relaxed));
        (us > 0.0).then(|| Duration::from_secs_f64(us / 1e6))
    }
}

/// Every (provider, model) pair's health, keyed by catalogue model name.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    by_model: HashMap<Arc<str>, Arc<ModelHealth>>,
}

impl HealthRegistry {
    /// Health for the models of a new config: carried over from `previous` when the model still
    /// points at the same provider and upstream model, fresh otherwise.
    pub fn carry<'a>(
        models: impl Iterator<Item = &'a Arc<ModelConfig>>,
        previous: Option<&HealthRegistry>,
        same_target: impl Fn(&ModelConfig) -> bool,
    ) -> Self {
        let mut by_model = HashMap::new();
        for m in models {
            let kept = previous
                .and_then(|p| p.by_model.get(&m.name))
                .filter(|h| h.provider == m.provider && same_target(m))
                .cloned();
            let h = kept.unwrap_or_else(|| Arc::new(ModelHealth::new(m.provider.clone(), m.name.clone())));
            by_model.insert(m.name.clone(), h);
        }
        HealthRegistry { by_model }
    }

    pub(crate) fn get(&self, model: &str) -> Option<&Arc<ModelHealth>> {
        self.by_model.get(model)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ModelHealth>> {
        self.by_model.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_half_opens_and_closes() {
        let h = ModelHealth::new("p".into(), "m".into());
        let c = cfg();
        for _ in 0..2 {
            assert!(h.admit(&c).is_ok());
            assert_eq!(h.record(&c, false), None);
        }
        h.admit(&c).unwrap();
        assert_eq!(h.record(&c, false).map(|t| t.to), Some(CircuitState::Open));
        assert_eq!(h.state(), CircuitState::Open);
        let wait = h.admit(&c).unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(h.state(), CircuitState::HalfOpen);
        let (admit, t) = h.admit(&c).unwrap();
        assert_eq!((admit, t.map(|t| t.to)), (Admit::Probe, Some(CircuitState::HalfOpen)));
        // Only one probe at a time.
        assert!(h.admit(&c).is_err());
        // The probe fails: open again for a full period.
        assert_eq!(h.record(&c, false).map(|t| t.to), Some(CircuitState::Open));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(h.admit(&c).is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(h.admit(&c).unwrap().0, Admit::Probe);
        assert_eq!(h.record(&c, true).map(|t| t.to), Some(CircuitState::Closed));
        assert_eq!(h.state(), CircuitState::Closed);
        assert_eq!(h.admit(&c).unwrap().0, Admit::Normal);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_on_failure_ratio_without_a_streak() {
        let h = ModelHealth::new("p".into(), "m".into());
        let c = cfg();
        let mut opened = false;
        for i in 0..10 {
            h.admit(&c).unwrap();
            // Alternate: never 3 in a row, but half fail.
            if h.record(&c, i % 2 == 0).is_some() {
                opened = true;
            }
        }
        assert!(opened, "5 failures of 10 reach the 0.5 ratio");
        assert_eq!(h.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_does_not_wedge_the_breaker() {
        let h = ModelHealth::new("p".into(), "m".into());
        let c = cfg();
        h.force_open(&c);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(h.admit(&c).unwrap().0, Admit::Probe);
        // Its request is dropped without a result; after another open period a new probe goes.
        assert!(h.admit(&c).is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(h.admit(&c).unwrap().0, Admit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_budget_caps_retries_at_the_ratio() {
        let b = RetryBudget::default();
        let c = RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 0.0,
            window: Duration::from_secs(10),
        };
        for _ in 0..100 {
            b.request(&c);
        }
        let granted = (0..100).filter(|_| b.try_retry(&c)).count();
        assert_eq!(granted, 20);
        // The window slides: after it passes, old requests no longer pay for retries.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!b.try_retry(&c));
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            max_retry_after: Duration::from_secs(5),
        };
        for _ in 0..200 {
            assert!(backoff(&p, 1, None) <= Duration::from_millis(100));
            assert!(backoff(&p, 2, None) <= Duration::from_millis(200));
            assert!(backoff(&p, 9, None) <= Duration::from_millis(400));
            assert!(backoff(&p, 1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        }
        let spread: std::collections::BTreeSet<_> = (0..50).map(|_| backoff(&p, 3, None)).collect();
        assert!(spread.len() > 10, "full jitter spreads the delays");
        assert_eq!(
            parse_retry_after(&http::HeaderValue::from_static("3")),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after(&http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
    }

    #[test]
    fn latency_ewma_follows_samples() {
        let h = ModelHealth::new("p".into(), "m".into());
        assert_eq!(h.latency(), None);
        h.observe_latency(Duration::from_millis(100));
        assert_eq!(h.latency(), Some(Duration::from_millis(100)));
        for _ in 0..30 {
            h.observe_latency(Duration::from_millis(10));
        }
        let l = h.latency().unwrap();
        assert!(l < Duration::from_millis(12), "{l:?}");
    }
}
