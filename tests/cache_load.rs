// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The semantic cache under load (ignored by `cargo test`; run with
//! `cargo test --release --test cache_load -- --ignored --nocapture`): 16 concurrent clients
//! each ask the rewording of a question already answered (it should hit) between fresh
//! questions (misses, whose answers are inserted, so inserts compete with lookups for the
//! embedder). Reports the share of rewordings served semantically and every skipped lookup by
//! reason. Before the embedder had a lane for waiting requests, lookups queued behind inserts
//! and the semantic layer switched itself off under exactly this load.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::*;
use llm_sidecar::mock::MockUpstream;

const CLIENTS: usize = 16;

fn pairs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/paraphrases.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["label"] == 1)
        .map(|v| (v["a"].as_str().unwrap().to_owned(), v["b"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; see the module comment"]
async fn semantic_hits_hold_up_with_16_concurrent_clients() {
    let mock = MockUpstream::start().await.unwrap();
    let text = config(&mock.base_url(), &cache_section("    timeout: 50ms\n")).replace("    timeout: 2s\n", "");
    let h = Arc::new(Harness::with_text(mock, text).await);
    let pairs = pairs();
    // The originals, answered once (sequentially, so each is stored with its vector).
    for (a, _) in &pairs {
        let r = h.chat(chat_body(a)).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (asked, hits) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (h, pairs, asked, hits) = (h.clone(), pairs.clone(), asked.clone(), hits.clone());
        tasks.push(tokio::spawn(async move {
            for (i, (_, b)) in pairs.iter().enumerate().filter(|(i, _)| i % CLIENTS == c) {
                // Three fresh questions (misses, then inserts) for each rewording.
                for k in 0..3 {
                    let r = h
                        .chat(chat_body(&format!(
                            "fresh question {c} {i} {k} about topic {}",
                            i * 7 + k
                        )))
                        .await;
                    r.bytes().await.unwrap();
                }
                let r = h.chat(chat_body(b)).await;
                let hit = r.headers()["x-llm-sidecar-cache"] == "hit-semantic";
                r.bytes().await.unwrap();
                asked.fetch_add(1, Ordering::Relaxed);
                if hit {
                    hits.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (asked, hits) = (asked.load(Ordering::Relaxed), hits.load(Ordering::Relaxed));
    let m = h.metrics().await;
    let skips: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("llm_sidecar_cache_skips_total"))
        .collect();
    println!(
        "cache under load: {CLIENTS} clients, {} requests in {:.1} s; rewordings served semantically: {hits} of {asked} ({:.0} %)",
        asked * 4,
        started.elapsed().as_secs_f64(),
        100.0 * hits as f64 / asked.max(1) as f64
    );
    println!("cache under load: skipped lookups: {skips:?}");
    // Sequentially these rewordings hit at the guard's recall on this set (~86 % at 0.90).
    // Under this load every request needs the embedder, which serves what it can in time:
    // the semantic layer must keep working, not switch itself off (it served 0 of 80 before
    // lookups had their own lane and were served newest first).
    assert!(hits * 100 >= asked * 15, "{hits} of {asked}");
}
