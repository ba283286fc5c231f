// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! Hot reload from a kubelet-style mounted ConfigMap: the `..data` symlink swap, a rejected
//! bad edit, an in-place edit, SIGHUP's path, and in-flight requests finishing on their
//! snapshot.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use llm_sidecar::mock::MockUpstream;
use llm_sidecar::state::reload::ReloadOutcome;
use serde_json::json;

const NEW_ROUTE: &str = "  - name: fresh\n    models: [fresh]\n    targets: [{ model: chat-model }]\n";

fn with_route(base: &str) -> String {
    base.replace("default_route: auto", &format!("{NEW_ROUTE}default_route: auto"))
}

async fn status_of(h: &Harness, model: &str) -> u16 {
    h.chat(json!({"model": model, "messages": [{"role": "user", "content": "x"}]}))
        .await
        .status()
        .as_u16()
}

/// Polls until `model` is served; returns how long the edit took to apply.
async fn wait_until_served(h: &Harness, model: &str, start: Instant) -> Duration {
    loop {
        if status_of(h, model).await == 200 {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the edit was never applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn kubelet_symlink_swap_is_applied_and_a_bad_edit_is_rejected() {
    let mock = MockUpstream::start().await.unwrap();
    let base = config(&mock.base_url(), "");
    let h = Harness::with_mounted(mock, base.clone()).await;
    let dir = h.dir.as_ref().unwrap().path().to_path_buf();
    assert_eq!(status_of(&h, "fresh").await, 404);

    let start = Instant::now();
    kubelet_write(&dir, "config.yaml", &with_route(&base));
    let latency = wait_until_served(&h, "fresh", start).await;
    eprintln!("edit→served latency (kubelet ..data swap): {latency:?}");

    // A broken edit: rejected, counted, and the last good config keeps serving.
    kubelet_write(&dir, "config.yaml", "providers: [this is not a map\n");
    let mut rejected = 0.0;
    for _ in 0..200 {
        rejected = metric(
            &h.metrics().await,
            r#"llm_sidecar_config_reloads_total{outcome="rejected"}"#,
        );
        if rejected >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rejected, 1.0);
    assert_eq!(status_of(&h, "fresh").await, 200);
    assert_eq!(status_of(&h, "auto").await, 200);

    // A semantically invalid edit is rejected too, naming the key.
    let invalid = with_route(&base).replace(
        "targets: [{ model: chat-model }]\n  - name: fresh",
        "targets: [{ model: nope }]\n  - name: fresh",
    );
    kubelet_write(&dir, "config.yaml", &invalid);
    match h.sidecar().reload(false).await.unwrap() {
        ReloadOutcome::Rejected(e) => assert_eq!(e.0[0].path, "routes[0].targets[0].model"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(status_of(&h, "auto").await, 200);

    let m = h.metrics().await;
    assert!(metric(&m, r#"llm_sidecar_config_reloads_total{outcome="applied"}"#) >= 1.0);
    assert_eq!(metric(&m, "llm_sidecar_config_generation"), 2.0);
}

#[tokio::test]
async fn an_in_place_edit_is_applied_and_sighup_reload_is_idempotent() {
    let mock = MockUpstream::start().await.unwrap();
    let base = config(&mock.base_url(), "");
    let (h, path) = Harness::with_file(mock, base.clone()).await;

    let start = Instant::now();
    std::fs::write(&path, with_route(&base)).unwrap();
    let latency = wait_until_served(&h, "fresh", start).await;
    eprintln!("edit→served latency (in-place write): {latency:?}");
    assert!(matches!(
        h.sidecar().reload(false).await,
        Some(ReloadOutcome::Unchanged)
    ));
    // SIGHUP forces a rebuild (re-reading key files) even when the text is unchanged.
    assert!(matches!(
        h.sidecar().reload(true).await,
        Some(ReloadOutcome::Applied { .. })
    ));
}

#[tokio::test]
async fn in_flight_streams_finish_on_the_snapshot_they_started_with() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_chunk_delay(Duration::from_millis(100));
    let base = config(&mock.base_url(), "");
    let h = Harness::with_mounted(mock, base.clone()).await;
    let dir = h.dir.as_ref().unwrap().path().to_path_buf();

    let body = stream_body("one two three four five");
    let resp = h.chat(body).await;
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());

    // Remove the model the stream is using; the stream must still complete.
    let gone = base.replace("upstream_model: mock-upstream-name", "upstream_model: renamed");
    kubelet_write(&dir, "config.yaml", &gone);
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
    // New requests use the new snapshot.
    for _ in 0..200 {
        let _ = h.chat(chat_body("x")).await;
        if h.mock.last_request().unwrap().json()["model"] == "renamed" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the new config was never applied");
}

#[tokio::test]
async fn a_rotated_key_file_is_picked_up_on_a_forced_reload() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "sk-first\n").unwrap();
    let text = config(&mock.base_url(), "").replace("key_env: UPSTREAM_KEY", &format!("key_file: {}", key.display()));
    let h = Harness::with_mounted(mock, text).await;
    assert_eq!(h.chat(chat_body("x")).await.status(), 200);
    assert_eq!(
        h.mock.last_request().unwrap().headers["authorization"],
        "Bearer sk-first"
    );

    std::fs::write(&key, "sk-second\n").unwrap();
    assert!(matches!(
        h.sidecar().reload(true).await,
        Some(ReloadOutcome::Applied { .. })
    ));
    assert_eq!(h.chat(chat_body("x")).await.status(), 200);
    assert_eq!(
        h.mock.last_request().unwrap().headers["authorization"],
        "Bearer sk-second"
    );
}

/// Requests at ~100/s while `edit` runs; returns how many failed.
async fn failures_during(h: &Harness, edit: impl std::future::Future<Output = ()>) -> usize {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let (mut failed, mut sent) = (0, 0);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            sent += 1;
            if status_of(h, "auto").await != 200 {
                failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (failed, sent)
    };
    let edits = async {
        edit.await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let ((failed, sent), ()) = tokio::join!(load, edits);
    assert!(sent > 20, "the load ran ({sent} requests)");
    failed
}

#[tokio::test]
async fn an_emptied_or_half_written_configmap_never_drops_the_routes() {
    let mock = MockUpstream::start().await.unwrap();
    let base = config(&mock.base_url(), "");
    let h = Harness::with_mounted(mock, base.clone()).await;
    let dir = h.dir.as_ref().unwrap().path().to_path_buf();
    // Cut just before `models:`: it parses, and would leave nothing to serve.
    let half = &base[..base.find("models:").unwrap()];
    let failed = failures_during(&h, async {
        for text in ["", "# emptied by mistake\n", half, "\n\n"] {
            kubelet_write(&dir, "config.yaml", text);
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    })
    .await;
    assert_eq!(failed, 0, "requests failed while the ConfigMap was emptied");
    let m = h.metrics().await;
    assert!(
        metric(&m, r#"llm_sidecar_config_reloads_total{outcome="rejected"}"#) >= 3.0,
        "{m}"
    );
    assert_eq!(metric(&m, "llm_sidecar_config_generation"), 1.0);
    match h.sidecar().reload(false).await.unwrap() {
        ReloadOutcome::Rejected(e) => assert_eq!(e.0[0].path, "models"),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn an_editor_saving_in_place_is_applied_whole_or_not_at_all() {
    use std::io::{Seek, Write};
    let mock = MockUpstream::start().await.unwrap();
    let base = config(&mock.base_url(), "");
    let (h, path) = Harness::with_file(mock, base.clone()).await;
    let next = with_route(&base);
    let failed = failures_during(&h, async {
        for _ in 0..2 {
            // Truncate, stay empty past the watch's debounce, then write the new text in
            // pieces with short pauses, as a slow editor (or `: > f; cat new > f`) would.
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(0).unwrap();
            f.rewind().unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
            for piece in next.as_bytes().chunks(next.len() / 3 + 1) {
                tokio::time::sleep(Duration::from_millis(15)).await;
                f.write_all(piece).unwrap();
                f.flush().unwrap();
            }
            drop(f);
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    })
    .await;
    assert_eq!(failed, 0, "requests failed during an in-place save");
    assert_eq!(status_of(&h, "fresh").await, 200, "the finished edit is served");
}
