use super::*;
use crate::config::Config;

fn cfg() -> TenantsConfig {
    let text = r#"
tenants:
  header: x-tenant
  defaults: { limits: { requests_per_minute: 1000 } }
  list:
    a:
      limits:
        requests_per_minute: 3
        tokens_per_minute: 1000
        models: { gpt-4o: { requests_per_minute: 2 } }
      budget: { daily_usd: 1.0, monthly_usd: 10.0, soft_ratio: 0.5 }
"#;
    Config::load(text, &|_: &str| None).unwrap().tenants
}

const T0: u64 = 1_763_800_000_000; // 2025-11-22, some minute

#[test]
fn civil_months_are_right() {
    assert_eq!(civil_month(0), (1970, 1));
    assert_eq!(civil_month(20_414), (2025, 11)); // 2025-11-22
    assert_eq!(civil_month(19_782), (2024, 2)); // 2024-02-29
    assert_eq!(civil_month(19_783), (2024, 3));
    let to_dec = to_next_month(T0);
    assert!(to_dec > 0 && to_dec <= 31 * DAY_MS);
}

#[test]
fn requests_and_model_limits_refuse_with_headers() {
    let (l, c, t) = (Ledger::default(), cfg(), Arc::<str>::from("a"));
    let base = T0 - T0 % MINUTE_MS + 1000;
    let a1 = l.admit(&c, &t, "gpt-4o", 10, base).unwrap();
    let h = a1.headers.unwrap();
    assert_eq!((h.limit_requests, h.remaining_requests), (Some(3), 2));
    assert_eq!((h.limit_tokens, h.remaining_tokens), (Some(1000), 990));
    l.admit(&c, &t, "gpt-4o", 10, base).unwrap();
    // The per-model limit (2) bites before the tenant's (3).
    let e = l.admit(&c, &t, "gpt-4o", 10, base).unwrap_err();
    assert_eq!(e.reason(), "model_requests_per_minute");
    l.admit(&c, &t, "other", 10, base).unwrap();
    let e = l.admit(&c, &t, "other", 10, base).unwrap_err();
    let Limited::Rate {
        reason,
        limit,
        reset,
        headers,
    } = e
    else {
        panic!()
    };
    assert_eq!((reason.label(), limit), ("requests_per_minute", 3));
    assert_eq!(reset, Duration::from_secs(59));
    assert_eq!(headers.pairs()[2], ("x-ratelimit-reset-requests", "59s".to_owned()));
    // The sliding window: half-way through the next minute half the old count still weighs.
    assert!(
        l.admit(&c, &t, "other", 10, base + MINUTE_MS).is_err(),
        "3 × (1 − 1/60) ≥ 3 − 1"
    );
    assert!(l.admit(&c, &t, "other", 10, base + MINUTE_MS + 30_000).is_ok());
    // Other tenants fall back to the defaults.
    assert!(
        l.admit(&c, &Arc::from("zed"), "x", 10, base)
            .unwrap()
            .headers
            .unwrap()
            .limit_requests
            == Some(1000)
    );
}

#[test]
fn token_estimates_are_reconciled_and_failures_refunded() {
    let (l, c, t) = (Ledger::default(), cfg(), Arc::<str>::from("a"));
    let base = T0 - T0 % MINUTE_MS;
    let a = l.admit(&c, &t, "m", 900, base).unwrap();
    assert_eq!(
        l.admit(&c, &t, "m", 200, base).unwrap_err().reason(),
        "tokens_per_minute"
    );
    // The real usage was small: the room comes back.
    let usage = Usage {
        prompt_tokens: 40,
        completion_tokens: 10,
        cached_tokens: 0,
    };
    l.settle(&c, &a, Some(&Arc::from("m")), Some(usage), 0.0, base);
    let b = l.admit(&c, &t, "m", 200, base).unwrap();
    // A failure returns its whole reservation.
    l.settle(&c, &b, None, None, 0.0, base);
    let rows = l.usage();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].2.requests, rows[0].2.prompt_tokens), (2, 40));
}

#[test]
fn budgets_go_soft_then_refuse_and_reset_with_the_day() {
    let (l, c, t) = (Ledger::default(), cfg(), Arc::<str>::from("a"));
    let day = T0 - T0 % DAY_MS + 3_600_000;
    let a = l.admit(&c, &t, "m", 1, day).unwrap();
    assert!(!a.soft);
    let crossed = l
        .settle(&c, &a, None, None, 0.6, day)
        .expect("0.6 of 1.0 crosses the 0.5 soft limit");
    assert_eq!((crossed.period, crossed.budget_usd), ("daily", 1.0));
    let a = l.admit(&c, &t, "m", 1, day).unwrap();
    assert!(a.soft);
    assert_eq!(l.settle(&c, &a, None, None, 0.5, day), None, "logged once per period");
    let e = l.admit(&c, &t, "m", 1, day).unwrap_err();
    let Limited::Budget {
        reason,
        spent_usd,
        reset,
        ..
    } = e
    else {
        panic!()
    };
    assert_eq!(reason.label(), "budget_daily");
    assert!((spent_usd - 1.1).abs() < 1e-9);
    assert_eq!(reset, Duration::from_millis(DAY_MS - 3_600_000));
    // Tomorrow the daily budget is fresh; the month keeps counting.
    let a = l.admit(&c, &t, "m", 1, day + DAY_MS).unwrap();
    assert!(!a.soft);
    assert_eq!(l.spent("a", day + DAY_MS).0, 0.0);
    assert!((l.spent("a", day + DAY_MS).1 - 1.1).abs() < 1e-9 || to_next_month(day) < DAY_MS);
}

#[test]
fn fleet_counts_add_to_local_ones() {
    let (l, c, t) = (Ledger::default(), cfg(), Arc::<str>::from("a"));
    let base = T0 - T0 % MINUTE_MS;
    let a = l.admit(&c, &t, "m", 1, base).unwrap();
    let p = l.drain_pending(base);
    assert_eq!(p.rates.iter().map(|r| r.requests).sum::<u64>(), 1);
    // Redis says the fleet made 3 this minute (ours included): the other pods' 2 count here.
    let mut totals = FleetTotals::default();
    totals
        .rates
        .insert((t.clone(), None), (base / MINUTE_MS, (0, 0), (3, 3)));
    l.apply_fleet(&totals);
    assert_eq!(
        l.admit(&c, &t, "m", 1, base).unwrap_err().reason(),
        "requests_per_minute"
    );
    let _ = a;
}
