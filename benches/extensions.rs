// A benchmark is a measurement script: a failed assumption should stop it loudly; it spawns freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! What the extension points cost (`cargo bench --bench extensions`):
//!
//! 1. A `before_route` callout: p50/p99 of sequential requests (cache off) with and without
//!    one, the callout service being a second in-process mock over loopback.
//! 2. A remote embedder (`cache.semantic.embedder`): what it adds to a lookup. One sidecar
//!    embeds through the in-process mock's `/v1/embeddings` over loopback HTTP (so the figure
//!    is the sidecar's own cost plus one local round trip; a real service adds its network
//!    and inference time on top). Sequential requests, p50/p99 of an exact hit (no
//!    embedding: the baseline), a semantic hit (the rewording embedded remotely, then
//!    searched) and, when `assets/` is there, the same semantic hit with the local model.

use std::time::{Duration, Instant};

use llm_sidecar::app::{ConfigInput, Options, Sidecar};
use llm_sidecar::mock::MockUpstream;

const N: usize = 400;

fn config(mock: &str, semantic: &str) -> String {
    format!(
        r#"
logging: {{ level: warn }}
providers: {{ mock: {{ base_url: "{mock}" }} }}
models: {{ m: {{ provider: mock }} }}
cache:
  semantic:
    timeout: 2s
    verify_sample: 0
    threshold: 0.9
{semantic}
"#
    )
}

async fn start(text: String) -> Sidecar {
    let any = "127.0.0.1:0".parse().unwrap();
    Sidecar::start(Options::new(ConfigInput::Text(text)).listen(any).admin_listen(any))
        .await
        .unwrap()
}

fn body(q: &str) -> String {
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": q}]}).to_string()
}

fn question(i: usize) -> String {
    const TOPICS: [&str; 8] = [
        "invoice", "password", "shipping", "refund", "warranty", "account", "delivery", "discount",
    ];
    format!(
        "How do I change the {} settings for order {i}?",
        TOPICS[i % TOPICS.len()]
    )
}

/// The same words in another order: a rewording the mock's bag-of-words embedder places at
/// cosine 1, and the local model close by.
fn reworded(i: usize) -> String {
    format!(
        "For order {i}, how do I change the {} settings?",
        [
            "invoice", "password", "shipping", "refund", "warranty", "account", "delivery", "discount"
        ][i % 8]
    )
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Latencies (µs) of `ask(i)` for i in 0..N whose cache status is `want`.
async fn run(client: &reqwest::Client, url: &str, ask: impl Fn(usize) -> String, want: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let mut other = 0;
    for i in 0..N {
        let t = Instant::now();
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .body(body(&ask(i)))
            .send()
            .await
            .unwrap();
        let status = r.headers()["x-llm-sidecar-cache"].to_str().unwrap().to_owned();
        r.bytes().await.unwrap();
        if status == want {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        } else {
            other += 1;
        }
    }
    if other > 0 {
        println!("  ({other} of {N} were not {want})");
    }
    out
}

async fn measure(name: &str, sidecar: &Sidecar) {
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", sidecar.app_addr());
    run(&client, &url, question, "miss").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut exact = run(&client, &url, question, "hit-exact").await;
    let mut semantic = run(&client, &url, reworded, "hit-semantic").await;
    if exact.is_empty() || semantic.is_empty() {
        println!("{name}: no hits to measure");
        return;
    }
    let (e50, e99) = (pct(&mut exact, 0.5), pct(&mut exact, 0.99));
    let (s50, s99) = (pct(&mut semantic, 0.5), pct(&mut semantic, 0.99));
    println!(
        "{name}: exact hit p50 {e50:.0} µs p99 {e99:.0} µs | semantic hit p50 {s50:.0} µs p99 {s99:.0} µs | added by the lookup p50 {:.0} µs",
        s50 - e50
    );
}

/// p50 and p99 (µs) of N sequential chat requests through `sidecar`.
async fn plain(sidecar: &Sidecar) -> (f64, f64) {
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", sidecar.app_addr());
    let mut v = Vec::new();
    for i in 0..N * 2 {
        let t = Instant::now();
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body(&question(i)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        if i >= 50 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    (pct(&mut v, 0.5), pct(&mut v, 0.99))
}

async fn callouts(mock: &MockUpstream) {
    let service = MockUpstream::start().await.unwrap();
    let base = format!(
        "logging: {{ level: warn }}\nproviders: {{ mock: {{ base_url: \"{}\" }} }}\nmodels: {{ m: {{ provider: mock }} }}\n",
        mock.base_url()
    );
    let with = format!(
        "{base}callouts:\n  before_route: {{ url: \"http://{}/callout\", timeout: 1s }}\n",
        service.addr()
    );
    let (a, b) = (start(base).await, start(with).await);
    // Interleaved rounds, so machine noise hits both alike.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        without.push(plain(&a).await);
        with.push(plain(&b).await);
    }
    let med = |v: &mut Vec<(f64, f64)>| {
        let mut p50: Vec<f64> = v.iter().map(|x| x.0).collect();
        let mut p99: Vec<f64> = v.iter().map(|x| x.1).collect();
        (pct(&mut p50, 0.5), pct(&mut p99, 0.5))
    };
    let (w50, w99) = med(&mut without);
    let (c50, c99) = med(&mut with);
    println!(
        "before_route callout: without p50 {w50:.0} µs p99 {w99:.0} µs | with p50 {c50:.0} µs p99 {c99:.0} µs | added p50 {:.0} µs p99 {:.0} µs",
        c50 - w50,
        c99 - w99
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mock = MockUpstream::start().await.unwrap();
    callouts(&mock).await;
    let remote = start(config(
        &mock.base_url(),
        "    embedder: { provider: mock, model: embed, dimensions: 384 }",
    ))
    .await;
    measure("remote embedder (mock over loopback, 384 wide)", &remote).await;
    remote.shutdown().await;
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    if assets.join("tokenizer.json").is_file() {
        let local = start(config(
            &mock.base_url(),
            &format!("    assets_dir: {}", assets.display()),
        ))
        .await;
        measure("local model", &local).await;
        local.shutdown().await;
    } else {
        println!("local model: assets/ missing (scripts/fetch-assets), not measured");
    }
}
