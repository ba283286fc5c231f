// A benchmark is a measurement script: a failed assumption should stop it loudly; it spawns freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! Fleet-mode figures (needs `redis-server`): `cargo bench --bench fleet`.
//!
//! 1. Accuracy: two sidecars share a tenant limit of L requests per minute through Redis;
//!    64 concurrent clients per sidecar hammer it; admitted requests over L is the overshoot.
//! 2. Added latency: p50/p99 of sequential requests through one sidecar with and without
//!    fleet mode (the request path never waits for Redis; this shows what the sync costs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use llm_sidecar::app::{ConfigInput, Options, Sidecar};
use llm_sidecar::mock::MockUpstream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(mock: &str, redis: Option<u16>, tenant: &str, rpm: u64) -> String {
    let redis = redis
        .map(|p| format!("redis: {{ url: \"redis://127.0.0.1:{p}\" }}\n"))
        .unwrap_or_default();
    format!(
        r#"
logging: {{ level: warn }}
providers: {{ mock: {{ base_url: "{mock}" }} }}
models: {{ m: {{ provider: mock }} }}
tenants:
  header: x-tenant
  list:
    {tenant}: {{ limits: {{ requests_per_minute: {rpm} }} }}
{redis}"#
    )
}

async fn start(text: String) -> Sidecar {
    Sidecar::start(Options {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Options::new(ConfigInput::Text(text))
    })
    .await
    .unwrap()
}

const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

async fn overshoot(redis: u16, mock: &str, limit: u64, trial: usize) -> Option<f64> {
    let tenant = format!("tenant{trial}");
    let a = start(config(mock, Some(redis), &tenant, limit)).await;
    let b = start(config(mock, Some(redis), &tenant, limit)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let minute = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 60;
    let began = std::time::SystemTime::now();
    let admitted = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for addr in [a.app_addr(), b.app_addr()] {
        for _ in 0..64 {
            let (client, admitted, tenant) = (client.clone(), admitted.clone(), tenant.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let r = client
                        .post(format!("http://{addr}/v1/chat/completions"))
                        .header("x-tenant", &tenant)
                        .header("content-type", "application/json")
                        .body(BODY)
                        .send()
                        .await;
                    if let Ok(r) = r
                        && r.status() == 200
                    {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    a.shutdown().await;
    b.shutdown().await;
    // A minute boundary inside the trial opens a new window: not comparable, skip it.
    if minute(began) != minute(std::time::SystemTime::now()) {
        return None;
    }
    let n = admitted.load(Ordering::Relaxed);
    Some((n as f64 - limit as f64) / limit as f64 * 100.0)
}

async fn latency(mock: &str, redis: Option<u16>) -> (Duration, Duration) {
    let s = start(config(mock, redis, "lat", 1_000_000_000)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", s.app_addr());
    let mut times = Vec::with_capacity(3000);
    for i in 0..3500 {
        let t = Instant::now();
        let r = client
            .post(&url)
            .header("x-tenant", "lat")
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await
            .unwrap();
        let _ = r.bytes().await;
        if i >= 500 {
            times.push(t.elapsed());
        }
    }
    s.shutdown().await;
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = free_port();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    std::thread::sleep(Duration::from_millis(300));
    rt.block_on(async {
        let mock = MockUpstream::start().await.unwrap();
        let url = mock.base_url();
        println!("# fleet mode: 2 sidecars, 64 clients each, sync every 100 ms");
        for limit in [600u64, 3000] {
            let mut results = Vec::new();
            let mut trial = 0;
            while results.len() < 3 && trial < 8 {
                trial += 1;
                if let Some(o) = overshoot(port, &url, limit, trial + limit as usize).await {
                    results.push(o);
                }
            }
            println!("limit {limit}/min: overshoot {results:.2?} %");
        }
        let (p50, p99) = latency(&url, None).await;
        println!("local limits only: p50 {p50:?} p99 {p99:?}");
        let (p50, p99) = latency(&url, Some(port)).await;
        println!("fleet mode:        p50 {p50:?} p99 {p99:?}");
    });
    let _ = redis.kill();
    let _ = redis.wait();
}
