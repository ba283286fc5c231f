//! Rate limits, budgets and the usage ledger of this sidecar, in memory.
//!
//! - **Rates**: requests and tokens per minute per tenant (and per tenant × requested model),
//!   as a sliding window over two fixed one-minute windows aligned to wall-clock minutes (so
//!   every pod's windows line up for the fleet sum). Tokens are reserved at admission from an
//!   estimate and reconciled with the provider's usage when the request ends; a failed request
//!   returns its reservation.
//! - **Budgets**: USD spent per UTC day and month per tenant, from catalogue prices and real
//!   usage. Past `soft_ratio` the tenant is "soft" (logged once per period, metered, and a
//!   routing input); past the budget, requests are refused.
//! - **Ledger**: requests, tokens and cost per tenant and served model since start, for
//!   `GET /admin/usage`.
//!
//! In fleet mode `fleet` adds the other sidecars' counts (read from Redis) to the local ones
//! and drains the local deltas to push; without it everything here is exact for one pod. One
//! short `std` mutex; no await while held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod window;

use crate::config::{Budget, TenantsConfig};
use crate::openai::Usage;

use window::*;
#[cfg(test)]
use window::civil_month;
pub use window::now_ms;

/// One row of `/admin/usage`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct UsageRow {
    pub(crate) requests: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) cached_tokens: u64,
    pub(crate) cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RateKey {
    tenant: Arc<str>,
    model: Option<Arc<str>>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    ModelRequests,
    ModelTokens,
    BudgetDaily,
    BudgetMonthly,
}

impl LimitKind {
    /// The metric label and the reason in logs.
    pub(crate) fn label(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests_per_minute",
            LimitKind::Tokens => "tokens_per_minute",
            LimitKind::ModelRequests => "model_requests_per_minute",
            LimitKind::ModelTokens => "model_tokens_per_minute",
            LimitKind::BudgetDaily => "budget_daily",
            LimitKind::BudgetMonthly => "budget_monthly",
        }
    }

    /// What a rate limit counts: `requests` or `tokens`.
    pub(crate) fn unit(self) -> &'static str {
        match self {
            LimitKind::Tokens | LimitKind::ModelTokens => "tokens",
            _ => "requests",
        }
    }

    /// A per-model limit (not the tenant's overall one).
    pub(crate) fn per_model(self) -> bool {
        matches!(self, LimitKind::ModelRequests | LimitKind::ModelTokens)
    }

    /// A budget's period: `daily` or `monthly`.
    pub(crate) fn period(self) -> &'static str {
        match self {
            LimitKind::BudgetMonthly => "monthly",
            _ => "daily",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Limited {
    Rate {
        /// Requests or tokens per minute, the tenant's or per model.
        reason: LimitKind,
        limit: u64,
        reset: Duration,
        headers: RateHeaders,
    },
    Budget {
        /// Daily or monthly.
        reason: LimitKind,
        limit_usd: f64,
        spent_usd: f64,
        reset: Duration,
    },
}

impl Limited {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Limited::Rate { reason, .. } | Limited::Budget { reason, .. } => reason.label(),
        }
    }
}

/// OpenAI's `x-ratelimit-*` values for a response.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateHeaders {
    pub(crate) limit_requests: Option<u64>,
    pub(crate) remaining_requests: u64,
    pub(crate) limit_tokens: Option<u64>,
    pub(crate) remaining_tokens: u64,
    pub(crate) reset: Duration,
}

/// An admitted request: what to reconcile when it ends.
#[derive(Debug, Clone)]
pub struct Admission {
    pub(crate) tenant: Arc<str>,
    pub(crate) model: Arc<str>,
    pub estimate: u64,
    pub(crate) headers: Option<RateHeaders>,
    /// The tenant is past its soft budget limit.
    pub(crate) soft: bool,
    minute: u64,
    keys: u8,
}

impl Admission {
    /// Admitted without a rate window (none applies, or the ledger is unusable).
    fn unlimited(tenant: &Arc<str>, model: &str, estimate: u64, soft: bool, minute: u64) -> Self {
        Admission {
            tenant: tenant.clone(),
            model: model.into(),
            estimate,
            headers: None,
            soft,
            minute,
            keys: 0,
        }
    }
}

/// A state change worth a log line.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftCrossed {
    pub(crate) tenant: Arc<str>,
    pub(crate) period: &'static str,
    pub(crate) spent_usd: f64,
    pub(crate) budget_usd: f64,
}

#[derive(Default)]
struct Inner {
    rates: HashMap<RateKey, Window>,
    spend: HashMap<Arc<str>, Spend>,
    usage: HashMap<(Arc<str>, Arc<str>), UsageRow>,
}

impl Inner {
    /// Refuses a tenant whose daily or monthly budget is spent; `true` past its soft limit.
    fn check_budget(&mut self, cfg: &TenantsConfig, tenant: &Arc<str>, now: u64) -> Result<bool, Limited> {
        let Some(b) = cfg.budget_of(tenant) else {
            return Ok(false);
        };
        let s = self.spend.entry(tenant.clone()).or_default();
        s.roll(now);
        let (today, month) = (s.today(), s.this_month());
        if let Some(limit) = b.daily_usd.filter(|l| today >= *l) {
            return Err(Limited::Budget {
                reason: LimitKind::BudgetDaily,
                limit_usd: limit,
                spent_usd: today,
                reset: Duration::from_millis(DAY_MS - now % DAY_MS),
            });
        }
        if let Some(limit) = b.monthly_usd.filter(|l| month >= *l) {
            return Err(Limited::Budget {
                reason: LimitKind::BudgetMonthly,
                limit_usd: limit,
                spent_usd: month,
                reset: Duration::from_millis(to_next_month(now)),
            });
        }
        Ok(budget_state(b, today, month) >= 1)
    }
}

#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

/// The first time in a period that `tenant`'s spend passes its soft limit: the crossing to log.
fn soft_crossing(s: &mut Spend, cfg: &TenantsConfig, tenant: &Arc<str>) -> Option<SoftCrossed> {
    let b = cfg.budget_of(tenant)?;
    let periods = [
        ("daily", b.daily_usd, s.today(), s.day),
        ("monthly", b.monthly_usd, s.this_month(), s.month),
    ];
    for (i, (period, limit, spent, current)) in periods.into_iter().enumerate() {
        if let Some(l) = limit.filter(|l| spent >= l * b.soft_ratio)
            && s.soft_logged[i] != current
        {
            s.soft_logged[i] = current;
            return Some(SoftCrossed {
                tenant: tenant.clone(),
                period,
                spent_usd: spent,
                budget_usd: l,
            });
        }
    }
    None
}

/// Budget state of a tenant: 0 below the soft limit, 1 soft, 2 exhausted.
pub(crate) fn budget_state(budget: &Budget, today: f64, month: f64) -> u8 {
    let over = |b: Option<f64>, spent: f64, ratio: f64| b.is_some_and(|b| spent >= b * ratio);
    if over(budget.daily_usd, today, 1.0) || over(budget.monthly_usd, month, 1.0) {
        2
    } else if over(budget.daily_usd, today, budget.soft_ratio) || over(budget.monthly_usd, month, budget.soft_ratio) {
        1
    } else {
        0
    }
}

fn format_reset(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{}s", d.as_secs_f64().ceil() as u64)
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

impl RateHeaders {
    /// The header pairs, in OpenAI's names.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::with_capacity(6);
        let reset = format_reset(self.reset);
        if let Some(l) = self.limit_requests {
            v.push(("x-ratelimit-limit-requests", l.to_string()));
            v.push(("x-ratelimit-remaining-requests", self.remaining_requests.to_string()));
            v.push(("x-ratelimit-reset-requests", reset.clone()));
        }
        if let Some(l) = self.limit_tokens {
            v.push(("x-ratelimit-limit-tokens", l.to_string()));
            v.push(("x-ratelimit-remaining-tokens", self.remaining_tokens.to_string()));
            v.push(("x-ratelimit-reset-tokens", reset));
        }
        v
    }
}

impl Ledger {
    /// Admits a request of `tenant` for requested `model` with `estimate` tokens, or says why not.
    pub fn admit(
        &self,
        cfg: &TenantsConfig,
        tenant: &Arc<str>,
        model: &str,
        estimate: u64,
        now: u64,
    ) -> Result<Admission, Limited> {
        let minute = now / MINUTE_MS;
        let unlimited = |soft| Admission::unlimited(tenant, model, estimate, soft, minute);
        let Ok(mut inner) = self.inner.lock() else {
            // A poisoned lock must not take the sidecar down: admit, unaccounted.
            return Ok(unlimited(false));
        };
        let soft = inner.check_budget(cfg, tenant, now)?;
        let Some(limits) = cfg.limits_of(tenant) else {
            return Ok(unlimited(soft));
        };
        let model_limits = limits.models.get(model).copied();
        // The tenant-wide window, then the tenant's window for this model when it has one.
        let checks = [
            (None, limits.requests_per_minute, limits.tokens_per_minute),
            (
                model_limits.map(|_| Arc::<str>::from(model)),
                model_limits.and_then(|m| m.requests_per_minute),
                model_limits.and_then(|m| m.tokens_per_minute),
            ),
        ];
        let mut headers: Option<RateHeaders> = None;
        let (mut keys, mut applied): (u8, [Option<RateKey>; 2]) = (0, [None, None]);
        for (i, (m, rpm, tpm)) in checks.into_iter().enumerate() {
            if (rpm.is_none() && tpm.is_none()) || (i == 1 && m.is_none()) {
                continue;
            }
            let key = RateKey {
                tenant: tenant.clone(),
                model: m,
            };
            let w = inner.rates.entry(key.clone()).or_default();
            w.roll(minute);
            let h = w.check(rpm, tpm, estimate, now, i == 1)?;
            // The tenant-wide numbers are the ones an app should pace itself by.
            headers.get_or_insert(h);
            keys |= 1 << i;
            applied[i] = Some(key);
        }
        // Admitted: count it in every window that applied.
        for key in applied.iter().flatten() {
            if let Some(w) = inner.rates.get_mut(key) {
                w.count(estimate);
            }
        }
        Ok(Admission {
            headers,
            keys,
            ..unlimited(soft)
        })
    }

    /// Reconciles an admitted request: real tokens replace the estimate, the cost is spent and
    /// the ledger updated. `usage` is `None` when the provider reported none (a failure, or a
    /// cache hit). Returns a soft-limit crossing to log.
    pub fn settle(
        &self,
        cfg: &TenantsConfig,
        a: &Admission,
        served: Option<&Arc<str>>,
        usage: Option<Usage>,
        cost: f64,
        now: u64,
    ) -> Option<SoftCrossed> {
        let mut inner = self.inner.lock().ok()?;
        let actual = usage.map_or(0, |u| u.prompt_tokens + u.completion_tokens) as i64;
        let delta = actual - a.estimate as i64;
        for i in 0..2u8 {
            if a.keys & (1 << i) == 0 {
                continue;
            }
            let key = RateKey {
                tenant: a.tenant.clone(),
                model: (i == 1).then(|| a.model.clone()),
            };
            if let Some(w) = inner.rates.get_mut(&key) {
                w.correct(a.minute, delta);
            }
        }
        let row = inner
            .usage
            .entry((a.tenant.clone(), served.cloned().unwrap_or_else(|| a.model.clone())))
            .or_default();
        row.requests += 1;
        if let Some(u) = usage {
            row.prompt_tokens += u.prompt_tokens;
            row.completion_tokens += u.completion_tokens;
            row.cached_tokens += u.cached_tokens;
        }
        row.cost_usd += cost;
        if cost <= 0.0 {
            return None;
        }
        let s = inner.spend.entry(a.tenant.clone()).or_default();
        s.spend(cost, now);
        soft_crossing(s, cfg, &a.tenant)
    }

    /// (spent today, spent this month) of a tenant, fleet included.
    pub(crate) fn spent(&self, tenant: &str, now: u64) -> (f64, f64) {
        let Ok(mut inner) = self.inner.lock() else {
            return (0.0, 0.0);
        };
        match inner.spend.get_mut(tenant) {
            Some(s) => {
                s.roll(now);
                (s.today(), s.this_month())
            }
            None => (0.0, 0.0),
        }
    }

    /// The ledger rows, sorted by tenant then model.
    pub(crate) fn usage(&self) -> Vec<(Arc<str>, Arc<str>, UsageRow)> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        let mut rows: Vec<_> = inner
            .usage
            .iter()
            .map(|((t, m), r)| (t.clone(), m.clone(), *r))
            .collect();
        rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        rows
    }

    /// Creates the windows and spend of every tenant the config limits, so the fleet sync
    /// reads their totals before this pod serves them.
    pub(crate) fn track(&self, cfg: &TenantsConfig, now: u64) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let minute = now / MINUTE_MS;
        for (tenant, limits) in &cfg.limits {
            let mut keys = vec![None];
            keys.extend(limits.models.keys().cloned().map(Some));
            for model in keys {
                inner
                    .rates
                    .entry(RateKey {
                        tenant: tenant.clone(),
                        model,
                    })
                    .or_insert_with(|| Window {
                        minute,
                        ..Window::default()
                    });
            }
        }
        for tenant in cfg.budgets.keys() {
            inner.spend.entry(tenant.clone()).or_insert_with(|| {
                let mut s = Spend::default();
                s.roll(now);
                s
            });
        }
    }

    /// Takes the counts not yet pushed to the fleet.
    pub(crate) fn drain_pending(&self, now: u64) -> Pending {
        let mut out = Pending::default();
        let Ok(mut inner) = self.inner.lock() else { return out };
        let minute = now / MINUTE_MS;
        for (k, w) in inner.rates.iter_mut() {
            w.roll(minute);
            out.rates.push(PendingRate {
                tenant: k.tenant.clone(),
                model: k.model.clone(),
                minute,
                requests: std::mem::take(&mut w.pending_req),
                tokens: std::mem::take(&mut w.pending_tok),
            });
        }
        for (t, s) in inner.spend.iter_mut() {
            s.roll(now);
            out.spend
                .push((t.clone(), s.day, s.month, std::mem::take(&mut s.pending_usd)));
        }
        out
    }

    /// Gives back counts that could not be pushed (Redis down), so they go with the next push.
    pub(crate) fn restore_pending(&self, p: Pending) {
        let Ok(mut inner) = self.inner.lock() else { return };
        for r in p.rates {
            if let Some(w) = inner.rates.get_mut(&RateKey {
                tenant: r.tenant,
                model: r.model,
            }) && w.minute == r.minute
            {
                w.pending_req += r.requests;
                w.pending_tok += r.tokens;
            }
        }
        for (t, day, _, usd) in p.spend {
            if let Some(s) = inner.spend.get_mut(&t)
                && s.day == day
            {
                s.pending_usd += usd;
            }
        }
    }

    /// Sets what the rest of the fleet counted: fleet totals minus this pod's own share.
    pub(crate) fn apply_fleet(&self, totals: &FleetTotals) {
        let Ok(mut inner) = self.inner.lock() else { return };
        for ((tenant, model), (minute, prev, cur)) in &totals.rates {
            if let Some(w) = inner.rates.get_mut(&RateKey {
                tenant: tenant.clone(),
                model: model.clone(),
            }) && w.minute == *minute
            {
                // Totals include our own pushed counts; subtract what this pod counted.
                w.fleet_req = [
                    prev.0.saturating_sub(w.req[0]),
                    cur.0.saturating_sub(w.req[1] - w.pending_req.min(w.req[1])),
                ];
                w.fleet_tok = [(prev.1 - w.tok[0]).max(0), (cur.1 - (w.tok[1] - w.pending_tok)).max(0)];
                let frac = (now_ms() % MINUTE_MS) as f64 / MINUTE_MS as f64;
                w.synced_req = prev.0 as f64 * (1.0 - frac) + cur.0 as f64;
                w.synced_tok = prev.1.max(0) as f64 * (1.0 - frac) + cur.1.max(0) as f64;
                w.pods = totals.pods.get(&(tenant.clone(), model.clone())).copied().unwrap_or(0);
                // What was admitted while this sync was under way is not in the totals yet.
                w.unsynced_req = w.pending_req;
                w.unsynced_tok = w.pending_tok;
            }
        }
        for (tenant, (day, month, day_usd, month_usd)) in &totals.spend {
            if let Some(s) = inner.spend.get_mut(tenant)
                && s.day == *day
                && s.month == *month
            {
                let own_pushed_day = s.day_usd - s.pending_usd;
                let own_pushed_month = s.month_usd - s.pending_usd;
                s.fleet_day_usd = (day_usd - own_pushed_day).max(0.0);
                s.fleet_month_usd = (month_usd - own_pushed_month).max(0.0);
            }
        }
    }
}

/// Local deltas to push to the fleet.
#[derive(Debug, Default)]
pub struct Pending {
    pub(crate) rates: Vec<PendingRate>,
    /// (tenant, day number, month id, USD).
    pub(crate) spend: Vec<(Arc<str>, u64, u64, f64)>,
}

#[derive(Debug)]
pub struct PendingRate {
    pub(crate) tenant: Arc<str>,
    pub(crate) model: Option<Arc<str>>,
    pub(crate) minute: u64,
    pub(crate) requests: u64,
    pub(crate) tokens: i64,
}

/// A rate key as the fleet sees it: (tenant, requested model when per-model).
pub type FleetKey = (Arc<str>, Option<Arc<str>>);
/// (minute, previous minute's (requests, tokens), current minute's (requests, tokens)).
pub type FleetWindow = (u64, (u64, i64), (u64, i64));

/// Fleet-wide counts read back from Redis.
#[derive(Debug, Default)]
pub struct FleetTotals {
    pub(crate) rates: HashMap<FleetKey, FleetWindow>,
    /// Pods that served each key in the last seconds.
    pub(crate) pods: HashMap<FleetKey, u64>,
    /// tenant → (day, month, USD today, USD this month).
    pub(crate) spend: HashMap<Arc<str>, (u64, u64, f64, f64)>,
}

#[cfg(test)]
mod tests;
