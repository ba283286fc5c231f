//! Fleet mode: rate limits and budgets enforced across every sidecar that shares a Redis.
//!
//! No request waits for Redis. Each sidecar admits on its own counts plus the fleet's counts
//! as of the last sync, and a background task pushes its deltas and reads the fleet totals
//! every `redis.sync_interval` (100 ms) in one atomic Lua script (windows are Redis hashes per
//! tenant, model and wall-clock minute, with TTLs; spend is per UTC day and month). Between
//! syncs each of the N pods that served a key in the last 10 s may admit at most 1/N of what
//! the fleet had left at the last sync, so a burst on every pod cannot each spend the whole
//! limit. What remains is the other pods' admissions not yet pushed when a pod reads the
//! totals: measured with two pods hammering one tenant at ~5k requests/s (the whole minute's
//! limit gone in a fraction of a second), the fleet admitted 25 % over a 600/min limit and
//! 10–14 % over 3000/min (`cargo bench --bench fleet`); at rates where a sync interval holds
//! a small part of the limit the overshoot is a few requests. We chose zero added latency and
//! no dependency of the request path on Redis over exactness; exactness near the limit would
//! need a synchronous reservation per request once the remainder falls below a pod's share.
//! Budgets are checked against the last synced spend, so they can be passed by what the
//! fleet spends in one interval (a request's cost is only known when it ends).
//!
//! Redis down or slow (each call is bounded by `redis.timeout`): the sidecar keeps serving on
//! local counts, logs once, sets `llm_sidecar_redis_up 0`, keeps the unsent deltas, reconnects
//! with backoff by itself and resumes. All keys share one hash tag, so Redis Cluster works (one
//! shard does the fleet's accounting); Sentinel is not supported by this build.

use std::sync::Arc;

use redis::aio::MultiplexedConnection;

use super::ledger::{FleetTotals, Ledger, now_ms};
use crate::config::RedisConfig;
use crate::redis_link::{Link, RedisError, prefix};
use crate::telemetry::Metrics;

/// Per-minute windows live a little over two minutes (the previous minute is still read).
const RATE_TTL_MS: u64 = 150_000;
const DAY_TTL_S: u64 = 2 * 86_400;
const MONTH_TTL_S: u64 = 40 * 86_400;

/// Pushes deltas and returns totals for every key in one round trip, atomically.
/// KEYS: per rate key (current-minute hash, previous-minute hash, active-pods zset), then per
/// tenant (day, month). ARGV: n_rates, n_spend, rate TTL ms, day TTL s, month TTL s, pod id,
/// now ms, then (requests, tokens) per rate key, then USD per tenant.
const SYNC_SCRIPT: &str = r#"
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local pod, now = ARGV[6], tonumber(ARGV[7])
local out = {}
for i = 1, n do
  local cur, prev, pods = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local dr, dt = tonumber(ARGV[6+2*i]), tonumber(ARGV[7+2*i])
  if dr ~= 0 then redis.call('HINCRBY', cur, 'r', dr) end
  if dt ~= 0 then redis.call('HINCRBY', cur, 't', dt) end
  if dr ~= 0 or dt ~= 0 then redis.call('PEXPIRE', cur, ARGV[3]) end
  -- Pods that served this key in the last 10 s share what is left between syncs.
  redis.call('ZADD', pods, now, pod)
  redis.call('ZREMRANGEBYSCORE', pods, '-inf', now - 10000)
  redis.call('PEXPIRE', pods, 60000)
  local c = redis.call('HMGET', cur, 'r', 't')
  local p = redis.call('HMGET', prev, 'r', 't')
  out[#out+1] = c[1] or '0'; out[#out+1] = c[2] or '0'
  out[#out+1] = p[1] or '0'; out[#out+1] = p[2] or '0'
  out[#out+1] = tostring(redis.call('ZCARD', pods))
end
for j = 1, m do
  local day, month = KEYS[3*n+2*j-1], KEYS[3*n+2*j]
  local d = ARGV[7+2*n+j]
  if tonumber(d) ~= 0 then
    redis.call('INCRBYFLOAT', day, d); redis.call('EXPIRE', day, ARGV[4])
    redis.call('INCRBYFLOAT', month, d); redis.call('EXPIRE', month, ARGV[5])
  end
  out[#out+1] = redis.call('GET', day) or '0'
  out[#out+1] = redis.call('GET', month) or '0'
end
return out
"#;

/// The current config's tenants, read at each sync.
pub type TenantsSource = Arc<dyn Fn() -> Arc<crate::config::Config> + Send + Sync>;

/// Runs the sync loop until the task is aborted.
pub(crate) async fn run(ledger: Arc<Ledger>, cfg: RedisConfig, tenants: TenantsSource, metrics: Arc<Metrics>) {
    let script = redis::Script::new(SYNC_SCRIPT);
    let prefix = prefix(&cfg);
    let pod = format!("{:016x}", fastrand::u64(..));
    let mut link = Link::new(metrics, "limits");
    loop {
        let mut conn = link.connect(&cfg).await;
        let mut tick = tokio::time::interval(cfg.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Every limited tenant is synced, not only those this pod has seen: a tenant's first
            // request here must already see what the fleet did.
            ledger.track(&tenants().tenants, now_ms());
            match sync(&ledger, &script, &prefix, &pod, &mut conn, &cfg).await {
                Ok(()) => link.ok(),
                Err(e) => {
                    link.failed("sync", &e);
                    break;
                }
            }
        }
    }
}

/// One sync: push this pod's deltas, read the fleet's totals. On failure the deltas go back.
pub(crate) async fn sync(
    ledger: &Ledger,
    script: &redis::Script,
    prefix: &str,
    pod: &str,
    conn: &mut MultiplexedConnection,
    cfg: &RedisConfig,
) -> Result<(), RedisError> {
    let now = now_ms();
    let pending = ledger.drain_pending(now);
    if pending.rates.is_empty() && pending.spend.is_empty() {
        return Ok(());
    }
    let mut inv = script.prepare_invoke();
    let rate_key = |t: &str, m: Option<&str>, minute: u64| format!("{prefix}:rate:{t}:{}:{minute}", m.unwrap_or("*"));
    for r in &pending.rates {
        inv.key(rate_key(&r.tenant, r.model.as_deref(), r.minute));
        inv.key(rate_key(&r.tenant, r.model.as_deref(), r.minute.saturating_sub(1)));
        inv.key(format!(
            "{prefix}:pods:{}:{}",
            r.tenant,
            r.model.as_deref().unwrap_or("*")
        ));
    }
    for (t, day, month, _) in &pending.spend {
        inv.key(format!("{prefix}:spend:{t}:d:{day}"));
        inv.key(format!("{prefix}:spend:{t}:m:{month}"));
    }
    inv.arg(pending.rates.len())
        .arg(pending.spend.len())
        .arg(RATE_TTL_MS)
        .arg(DAY_TTL_S)
        .arg(MONTH_TTL_S)
        .arg(pod)
        .arg(now);
    for r in &pending.rates {
        inv.arg(r.requests).arg(r.tokens);
    }
    for (_, _, _, usd) in &pending.spend {
        inv.arg(format!("{usd:.12}"));
    }
    let result: Result<Result<Vec<String>, redis::RedisError>, _> =
        tokio::time::timeout(cfg.timeout, inv.invoke_async(conn)).await;
    let out = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            ledger.restore_pending(pending);
            return Err(e.into());
        }
        Err(_) => {
            ledger.restore_pending(pending);
            return Err(RedisError::Timeout(cfg.timeout));
        }
    };
    let num = |i: usize| out.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let mut totals = FleetTotals::default();
    for (i, r) in pending.rates.iter().enumerate() {
        let b = 5 * i;
        totals.rates.insert(
            (r.tenant.clone(), r.model.clone()),
            (
                r.minute,
                (num(b + 2) as u64, num(b + 3) as i64),
                (num(b) as u64, num(b + 1) as i64),
            ),
        );
        totals
            .pods
            .insert((r.tenant.clone(), r.model.clone()), num(b + 4) as u64);
    }
    let base = 5 * pending.rates.len();
    for (j, (t, day, month, _)) in pending.spend.iter().enumerate() {
        totals
            .spend
            .insert(t.clone(), (*day, *month, num(base + 2 * j), num(base + 2 * j + 1)));
    }
    ledger.apply_fleet(&totals);
    Ok(())
}
