// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! Memory held for slow request bodies is bounded by the bytes received. Before the fix, each
//! trickled byte pinned a whole read buffer (~4 KiB per byte: 8 connections sending 114 KB
//! took the sidecar from 18 to 473 MB). This binary holds one test, so the process's resident
//! memory is the sidecar's (plus the test's own small state).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECTIONS: usize = 24;
/// Bytes per connection, each written on its own.
const BYTES_EACH: usize = 3000;
const GAP: Duration = Duration::from_millis(2);

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A chat body of exactly `len` bytes.
fn body(len: usize, i: usize) -> Vec<u8> {
    let head = format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"trickle {i} "#);
    let tail = r#""}]}"#;
    let mut b = head.into_bytes();
    b.resize(len - tail.len(), b'a');
    b.extend_from_slice(tail.as_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_bodies_hold_no_more_than_they_sent() {
    let mock = llm_sidecar::mock::MockUpstream::start().await.unwrap();
    // No minimum rate here: this measures what a trickle costs while it is allowed.
    let text = config(&mock.base_url(), "").replace(
        "max_body_bytes: 65536",
        "max_body_bytes: 65536\n  body_min_rate: 0\n  body_timeout: 120s",
    );
    let h = Harness::with_text(mock, text).await;
    let addr = h.sidecar().app_addr();
    // Warm up the paths a request takes, so their one-time allocations are in the baseline.
    assert_eq!(h.chat(chat_body("warm")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();

    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let chunked = i % 2 == 1;
            let payload = body(BYTES_EACH, i);
            let framing = if chunked {
                "transfer-encoding: chunked".to_owned()
            } else {
                format!("content-length: {}", payload.len())
            };
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(
                format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{framing}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            for b in &payload {
                if chunked {
                    s.write_all(&[b'1', b'\r', b'\n', *b, b'\r', b'\n']).await.unwrap();
                } else {
                    s.write_all(&[*b]).await.unwrap();
                }
                tokio::time::sleep(GAP).await;
            }
            (s, chunked)
        }));
    }
    // Sample while the bodies are still arriving and once they all have.
    let mut peak = 0;
    let mut streams = Vec::new();
    let sampler = async {
        loop {
            peak = peak.max(rss_bytes());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = sampler => {}
        done = async {
            let mut out = Vec::new();
            for t in tasks { out.push(t.await.unwrap()); }
            out
        } => streams = done,
    }
    peak = peak.max(rss_bytes());
    let sent = (CONNECTIONS * BYTES_EACH) as u64;
    let grew = peak.saturating_sub(before);
    eprintln!(
        "trickle: {CONNECTIONS} connections, {sent} bytes sent one write each; RSS {} -> peak {} MiB (+{} KiB, {:.1} bytes held per byte sent)",
        before >> 20,
        peak >> 20,
        grew >> 10,
        grew as f64 / sent as f64
    );
    // Finish the bodies: every request is still answered.
    for (mut s, chunked) in streams {
        if chunked {
            s.write_all(b"0\r\n\r\n").await.unwrap();
        }
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut got))
            .await
            .expect("answered")
            .unwrap();
        let head = String::from_utf8_lossy(&got[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // Before the fix this was ~4 KiB per byte (~280 MiB here); now the bytes themselves plus
    // per-connection buffers.
    assert!(
        grew < 24 << 20,
        "resident memory grew by {} MiB for {sent} trickled bytes",
        grew >> 20
    );
}
