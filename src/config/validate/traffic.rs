//! `resilience` and `scheduling`: retries, breakers, health checks, priority classes and slots.

use super::*;

impl Validator<'_> {
    pub(super) fn resilience(&mut self, raw: RawResilience) -> ResilienceConfig {
        let r = raw.retries.unwrap_or_default();
        let max_attempts = r.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 {
            self.issue(
                "resilience.retries.max_attempts",
                "must be at least 1 (1 means no retries)",
            );
        }
        let retries = RetryPolicy {
            max_attempts: max_attempts.max(1),
            base_delay: self.duration(
                "resilience.retries.base_delay",
                r.base_delay.as_deref(),
                DEFAULT_RETRY_BASE_DELAY,
            ),
            max_delay: self.duration(
                "resilience.retries.max_delay",
                r.max_delay.as_deref(),
                DEFAULT_RETRY_MAX_DELAY,
            ),
            max_retry_after: self.duration(
                "resilience.retries.max_retry_after",
                r.max_retry_after.as_deref(),
                DEFAULT_MAX_RETRY_AFTER,
            ),
        };
        let b = raw.retry_budget.unwrap_or_default();
        let ratio = b.ratio.unwrap_or(DEFAULT_RETRY_RATIO);
        if !(ratio.is_finite() && ratio >= 0.0) {
            self.issue(
                "resilience.retry_budget.ratio",
                "must be a non-negative share (0.2 = 20 % extra load)",
            );
        }
        let min_per_second = b.min_per_second.unwrap_or(DEFAULT_RETRY_MIN_PER_SECOND);
        if !(min_per_second.is_finite() && min_per_second >= 0.0) {
            self.issue(
                "resilience.retry_budget.min_per_second",
                "must be a non-negative number",
            );
        }
        let window = self.duration(
            "resilience.retry_budget.window",
            b.window.as_deref(),
            DEFAULT_RETRY_WINDOW,
        );
        if window < Duration::from_secs(1) {
            self.issue("resilience.retry_budget.window", "must be at least 1s");
        }
        let k = raw.breaker.unwrap_or_default();
        let failure_ratio = k.failure_ratio.unwrap_or(DEFAULT_BREAKER_RATIO);
        if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
            self.issue(
                "resilience.breaker.failure_ratio",
                "must be a share above 0 and at most 1 (e.g. 0.5)",
            );
        }
        let consecutive_failures = k.consecutive_failures.unwrap_or(DEFAULT_BREAKER_CONSECUTIVE);
        if consecutive_failures == 0 {
            self.issue("resilience.breaker.consecutive_failures", "must be at least 1");
        }
        let breaker = BreakerConfig {
            enabled: k.enabled.unwrap_or(true),
            consecutive_failures: consecutive_failures.max(1),
            failure_ratio,
            min_requests: k.min_requests.unwrap_or(DEFAULT_BREAKER_MIN_REQUESTS).max(1),
            window: self.duration("resilience.breaker.window", k.window.as_deref(), DEFAULT_BREAKER_WINDOW),
            open_for: self.duration(
                "resilience.breaker.open_for",
                k.open_for.as_deref(),
                DEFAULT_BREAKER_OPEN_FOR,
            ),
            half_open_probes: k.half_open_probes.unwrap_or(1).max(1),
        };
        ResilienceConfig {
            retries,
            retry_budget: RetryBudgetConfig {
                ratio,
                min_per_second,
                window,
            },
            breaker,
        }
    }

    pub(super) fn scheduling(&mut self, raw: RawScheduling) -> SchedulingConfig {
        let mut classes: Vec<(Arc<str>, u32)> = Vec::new();
        for (i, c) in raw.classes.iter().enumerate() {
            let path = format!("scheduling.classes[{i}]");
            if c.weight == 0 {
                self.issue(
                    format!("{path}.weight"),
                    "must be at least 1 (a class with weight 0 would starve)",
                );
            }
            if classes.iter().any(|(n, _)| **n == *c.name) {
                self.issue(format!("{path}.name"), format!("class {:?} is defined twice", c.name));
            }
            classes.push((c.name.as_str().into(), c.weight.max(1)));
        }
        if classes.is_empty() {
            classes = DEFAULT_CLASSES.iter().map(|(n, w)| (Arc::from(*n), *w)).collect();
        }
        let default_name = raw.default_class.as_deref().unwrap_or(DEFAULT_CLASS);
        let default_class = match classes.iter().position(|(n, _)| &**n == default_name) {
            Some(i) => i,
            None if raw.default_class.is_none() => 0,
            None => {
                self.issue(
                    "scheduling.default_class",
                    format!(
                        "unknown class {default_name:?}: use one of {}",
                        names(classes.iter().map(|(n, _)| &**n))
                    ),
                );
                0
            }
        };
        let max_queued = raw.max_queued.unwrap_or(DEFAULT_MAX_QUEUED) as usize;
        SchedulingConfig {
            classes,
            default_class,
            queue_timeout: self.duration(
                "scheduling.queue_timeout",
                raw.queue_timeout.as_deref(),
                DEFAULT_QUEUE_TIMEOUT,
            ),
            max_queued,
        }
    }
}
