// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! Graceful shutdown: readiness goes false first, new connections are refused, in-flight
//! streams drain; what outlives the grace period is cut.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use llm_sidecar::mock::{Fault, MockUpstream};

#[tokio::test]
async fn in_flight_streams_drain_and_new_connections_are_refused() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_chunk_delay(Duration::from_millis(100));
    let text = config(&mock.base_url(), "").replace("shutdown_grace: 5s", "shutdown_grace: 10s\n  drain_delay: 300ms");
    let mut h = Harness::with_text(mock, text).await;
    let app = h.url("/v1/chat/completions");
    let readyz = h.admin("/readyz");

    let body = stream_body("one two three four five six seven eight");
    let resp = h.chat(body).await;
    let mut stream = resp.bytes_stream();
    let _first = stream.next().await.unwrap().unwrap();

    let sidecar = h.sidecar.take().unwrap();
    let shutdown = tokio::spawn(sidecar.shutdown());
    // Readiness flips at once, while the admin port still answers.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.client.get(&readyz).send().await.unwrap().status(), 503);

    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.expect("the stream is not cut"));
    }
    assert!(
        String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"),
        "the stream drained to its end"
    );
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap();
    // The listener is closed.
    let fresh = client();
    assert!(fresh.post(&app).json(&chat_body("late")).send().await.is_err());
}

#[tokio::test]
async fn streams_outliving_the_grace_period_are_cut() {
    let mock = MockUpstream::start().await.unwrap();
    let text = config(&mock.base_url(), "")
        .replace("shutdown_grace: 5s", "shutdown_grace: 300ms")
        .replace("idle: 2s", "idle: 60s");
    let mut h = Harness::with_text(mock, text).await;
    h.mock.push_fault(Fault::StallAfterChunks(2));
    let body = stream_body("never ends");
    let resp = h.chat(body).await;
    let mut stream = resp.bytes_stream();
    let _ = stream.next().await.unwrap().unwrap();

    let start = Instant::now();
    h.sidecar.take().unwrap().shutdown().await;
    assert!(start.elapsed() < Duration::from_secs(5));
    // The app is not left hanging: its stream ends.
    let end = tokio::time::timeout(Duration::from_secs(5), async { while stream.next().await.is_some() {} }).await;
    assert!(end.is_ok());
}
