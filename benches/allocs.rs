// A benchmark is a measurement script: a failed assumption should stop it loudly; it spawns freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
// A global allocator is an `unsafe` trait: the only unsafe code in the crate (see Cargo.toml).
#![allow(unsafe_code)]
//! Heap allocations per request on the sidecar's event-loop thread
//! (`cargo bench --bench allocs`): a counting global allocator counts only on the thread that
//! runs the sidecar (its one-thread runtime: hyper's server and client, the handler, the log
//! line and the metrics), not on the mock upstream's or the client's threads. Reported per
//! request, after a warm-up, for a proxied request (the miss path, cache off) and for an
//! exact cache hit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use llm_sidecar::app::{ConfigInput, Options, Sidecar};
use llm_sidecar::mock::MockUpstream;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the sidecar's thread only.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize) {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches only
// atomics and a const-initialised thread-local without a destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARM: usize = 2_000;
const N: usize = 20_000;

/// Starts the sidecar on a thread of its own (a one-thread runtime, as `serve` runs by
/// default) and returns its app address; the thread runs until the process ends.
fn sidecar_thread(config: String) -> std::net::SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let any = "127.0.0.1:0".parse().unwrap();
            let sidecar = Sidecar::start(Options::new(ConfigInput::Text(config)).listen(any).admin_listen(any))
                .await
                .unwrap();
            COUNTED.with(|c| c.set(true));
            tx.send(sidecar.app_addr()).unwrap();
            std::future::pending::<Sidecar>().await
        });
    });
    rx.recv().unwrap()
}

/// Allocations and bytes per request over `N` requests, `conc` at a time, after a warm-up.
async fn measure(client: &reqwest::Client, url: &str, conc: usize) -> (f64, f64) {
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the load test"}],"temperature":0}"#;
    let run = |n: usize| async move {
        let per = n / conc;
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let (client, url) = (client.clone(), url.to_owned());
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    r.bytes().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        per * conc
    };
    run(WARM).await;
    let (a0, b0) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    let n = run(N).await as f64;
    let (a1, b1) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    ((a1 - a0) as f64 / n, (b1 - b0) as f64 / n)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mock = MockUpstream::start().await.unwrap();
        let base = format!(
            "logging: {{ format: json, level: info }}\nproviders: {{ mock: {{ base_url: \"{}\" }} }}\nmodels: {{ gpt-4o-mini: {{ provider: mock, pricing: {{ input: 0.15, output: 0.6 }} }} }}\n",
            mock.base_url()
        );
        let proxied = sidecar_thread(base.clone());
        let cached = sidecar_thread(format!("{base}cache: {{ semantic: {{ enabled: false }} }}\n"));
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
        println!("allocations on the sidecar's thread per request ({N} requests after {WARM} warm-up):");
        for conc in [1, 16] {
            let (a, b) = measure(&client, &format!("http://{proxied}/v1/chat/completions"), conc).await;
            println!("  proxied (miss path), {conc:>2} at a time: {a:6.1} allocations, {b:8.0} bytes");
            let (a, b) = measure(&client, &format!("http://{cached}/v1/chat/completions"), conc).await;
            println!("  exact cache hit,     {conc:>2} at a time: {a:6.1} allocations, {b:8.0} bytes");
        }
    });
}
