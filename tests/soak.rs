// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The soak (run by `benches/soak.sh`, ignored by `cargo test`): the real binary, serving a
//! config file, in front of a provider that cycles through every fault mode of the fault suite
//! and a healthy fallback, under a steady load of JSON and SSE requests (repeats included, so
//! the cache is exercised), with config edits — valid, emptied, half-written — under load.
//! Reports the sidecar's resident memory over time and the outcome counts; broken, hung and
//! lost answers must be zero.
//!
//! `SOAK_SECONDS` (default 60) and `SOAK_RATE` (requests/s, default 300) set its size; every
//! loop is bounded by both, and all traffic stays on loopback.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::faults::{Seen, ask, cases, judge};
use common::{UPSTREAM_KEY, client};
use llm_sidecar::mock::MockUpstream;
use tokio::sync::Semaphore;

const BIN: &str = env!("CARGO_BIN_EXE_llm-sidecar");
/// In-flight requests at most; a sidecar slower than the offered rate shows up as a lower
/// achieved rate, not as unbounded client memory.
const MAX_IN_FLIGHT: usize = 512;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn config(bad: &str, good: &str, version: u64) -> String {
    format!(
        r#"
version: soak-{version}
logging: {{ format: json, level: warn }}
providers:
  bad:
    base_url: {bad}
    auth: {{ key_env: UPSTREAM_KEY }}
    timeouts: {{ connect: 500ms, first_byte: 1s, idle: 1s, total: 10s }}
  good:
    base_url: {good}
    auth: {{ key_env: UPSTREAM_KEY }}
    timeouts: {{ connect: 500ms, first_byte: 2s, idle: 2s, total: 10s }}
models:
  bad-model: {{ provider: bad }}
  good-model: {{ provider: good }}
routes:
  - name: auto
    models: [auto]
    targets: [{{ model: bad-model }}, {{ model: good-model }}]
default_route: auto
resilience: {{ retries: {{ max_attempts: 2, base_delay: 5ms }}, breaker: {{ consecutive_failures: 5, open_for: 2s }} }}
cache:
  max_entries: 5000
  semantic: {{ enabled: false }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak; run it with benches/soak.sh"]
async fn soak() {
    let seconds = env_u64("SOAK_SECONDS", 60);
    let rate = env_u64("SOAK_RATE", 300).max(1);
    let bad = Arc::new(MockUpstream::start().await.unwrap());
    let good = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config(&bad.base_url(), &good.base_url(), 0)).unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .env("UPSTREAM_KEY", UPSTREAM_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the sidecar starts");
    let pid = child.id();
    let http = client();
    let ready = Instant::now();
    while http
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "the sidecar never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");

    // The faulty provider changes its fault every 2 s, through every mode (and healthy spells).
    let fault_cycle = {
        let bad = bad.clone();
        tokio::spawn(async move {
            let cases = cases();
            let mut i = 0usize;
            loop {
                let fault = (i % (cases.len() + 3) < cases.len()).then(|| (cases[i % (cases.len() + 3)].fault)("soak"));
                // Anthropic-shaped bodies from an OpenAI-kind provider are broken answers too.
                bad.set_standing_fault(fault);
                i += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    // Config edits under load: every 5 s a valid edit, an emptied file, a half-written one.
    let edits = {
        let (path, bad_url, good_url) = (path.clone(), bad.base_url(), good.base_url());
        tokio::spawn(async move {
            for v in 1u64.. {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let text = config(&bad_url, &good_url, v);
                let written = match v % 3 {
                    0 => String::new(),
                    1 => text[..text.find("models:").unwrap_or(0)].to_owned(),
                    _ => text,
                };
                let _ = std::fs::write(&path, written);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = std::fs::write(&path, config(&bad_url, &good_url, v));
            }
        })
    };

    let counts: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    let sent = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let started = Instant::now();
    let mut rss = vec![(0u64, rss_mib(pid))];
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    let mut next_sample = 1;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        if started.elapsed().as_secs() >= next_sample {
            rss.push((next_sample, rss_mib(pid)));
            next_sample += 1;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        n += 1;
        let (http, url, counts, sent) = (http.clone(), url.clone(), counts.clone(), sent.clone());
        tokio::spawn(async move {
            // A tenth of the questions repeat: the cache is read as well as written.
            let q = if n.is_multiple_of(10) {
                format!("repeat {}", n % 50)
            } else {
                format!("soak {n}")
            };
            sent.fetch_add(1, Ordering::Relaxed);
            let stream = n.is_multiple_of(2);
            let (mut seen, _, text) = ask(&http, &url, &q, stream).await;
            // The faulty provider's modes that are harmless for a request's shape answer
            // well-formed, but to the question the fault was built with ("soak"): relayed as
            // they are, they are the provider's answers, not breakage.
            if seen == Seen::Broken && judge(200, stream, &text, "soak") == Seen::Answered {
                seen = Seen::Answered;
            }
            if matches!(seen, Seen::Broken | Seen::Lost) {
                eprintln!(
                    "soak: {seen:?} for {q:?}: {}",
                    text.chars().take(600).collect::<String>()
                );
            }
            let i = match seen {
                Seen::Answered => 0,
                Seen::CleanError => 1,
                Seen::Broken => 2,
                Seen::Hung => 3,
                Seen::Lost => 4,
            };
            counts[i].fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    // Let the last requests finish (each is bounded by the client's patience).
    let _ = tokio::time::timeout(Duration::from_secs(20), slots.acquire_many(MAX_IN_FLIGHT as u32)).await;
    fault_cycle.abort();
    edits.abort();
    rss.push((started.elapsed().as_secs(), rss_mib(pid)));
    let elapsed = started.elapsed().as_secs_f64();
    let c: Vec<u64> = counts.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    // The cache's own size, so memory growth can be told from the entries it holds.
    let m = match http.get(format!("http://127.0.0.1:{admin}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let gauge = |name: &str| {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("?")
            .to_owned()
    };
    println!(
        "soak: cache at the end: {} entries, {} bytes (max_entries 5000); circuit opened {} times",
        gauge("llm_sidecar_cache_entries"),
        gauge("llm_sidecar_cache_bytes"),
        m.lines()
            .filter(|l| l.starts_with("llm_sidecar_circuit_transitions_total") && l.contains("state=\"open\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    );
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let exit = child.wait().ok().and_then(|s| s.code());

    let mut table: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, v) in ["answered", "clean_error", "broken", "hung", "lost"].iter().zip(&c) {
        table.insert(name, *v);
    }
    let total = sent.load(Ordering::Relaxed);
    println!(
        "soak: {seconds} s offered at {rate} req/s: {total} requests, {:.0} req/s achieved",
        total as f64 / elapsed
    );
    println!("soak: outcomes {table:?}");
    let series: Vec<String> = rss
        .iter()
        .filter(|(s, _)| *s % 10 == 0 || *s == rss.last().map_or(0, |l| l.0))
        .map(|(s, m)| format!("{s}s {m:.1}"))
        .collect();
    println!("soak: sidecar RSS MiB over time: {}", series.join(", "));
    let steady: Vec<f64> = rss.iter().skip(rss.len() / 5).map(|(_, m)| *m).collect();
    let (lo, hi) = steady
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), m| (lo.min(*m), hi.max(*m)));
    println!("soak: RSS after warm-up between {lo:.1} and {hi:.1} MiB; exit status on SIGTERM {exit:?}");
    assert_eq!((c[2], c[3], c[4]), (0, 0, 0), "broken, hung and lost answers");
    assert_eq!(exit, Some(0));
}
