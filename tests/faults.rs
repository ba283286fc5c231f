// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The fault suite: a provider misbehaving in every way the fault list in
//! `tests/common/faults.rs` names, with and without a healthy fallback, for JSON and SSE
//! requests, OpenAI and Anthropic kinds. Each answer the app gets is counted as answered,
//! clean error, broken, hung or lost; broken, hung and lost must be zero everywhere, a fault
//! that bites before anything reached the app must be failed over whenever a fallback exists,
//! and no broken answer may ever come back from a cache.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::faults::{Bite, Case, Seen, ask, cases};
use common::*;
use llm_sidecar::app::{ConfigInput, Sidecar};
use llm_sidecar::mock::{Fault, MockUpstream, RawEnd};

/// A faulty provider (`bad`, OpenAI or Anthropic kind) and, optionally, a healthy fallback.
fn two(bad: &MockUpstream, good: &MockUpstream, anthropic: bool, fallback: bool, extra: &str) -> String {
    let kind = if anthropic { "\n    kind: anthropic" } else { "" };
    let targets = if fallback {
        "[{ model: bad-model }, { model: good-model }]"
    } else {
        "[{ model: bad-model }]"
    };
    format!(
        r#"
providers:
  bad:
    base_url: {bad}{kind}
    auth: {{ key_env: UPSTREAM_KEY }}
    timeouts: {{ connect: 500ms, first_byte: 1s, idle: 1s, total: 10s }}
  good:
    base_url: {good}
    auth: {{ key_env: UPSTREAM_KEY }}
    timeouts: {{ connect: 500ms, first_byte: 2s, idle: 2s, total: 10s }}
models:
  bad-model: {{ provider: bad, pricing: {{ input: 1, output: 2 }} }}
  good-model: {{ provider: good, pricing: {{ input: 1, output: 2 }} }}
routes:
  - name: auto
    models: [auto]
    targets: {targets}
default_route: auto
cache:
  semantic: {{ enabled: false }}
{extra}
"#,
        bad = bad.base_url(),
        good = good.base_url()
    )
}

const MATRIX_RESILIENCE: &str =
    "resilience: { retries: { max_attempts: 2, base_delay: 5ms, max_delay: 10ms }, breaker: { enabled: false } }";

struct Pair {
    bad: MockUpstream,
    good: MockUpstream,
    sidecar: Sidecar,
    client: reqwest::Client,
}

impl Pair {
    async fn start(anthropic: bool, fallback: bool, extra: &str) -> Pair {
        let bad = MockUpstream::start().await.unwrap();
        let good = MockUpstream::start().await.unwrap();
        let text = two(&bad, &good, anthropic, fallback, extra);
        let sidecar = Sidecar::start(options(ConfigInput::Text(text)))
            .await
            .expect("sidecar starts");
        Pair {
            bad,
            good,
            sidecar,
            client: client(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.sidecar.app_addr())
    }
}

/// One case, one fallback setting, both modes: returns (mode, what was seen, what was expected).
async fn run_case(case: &Case, fallback: bool) -> Vec<(String, Seen, Seen)> {
    let p = Pair::start(case.anthropic, fallback, MATRIX_RESILIENCE).await;
    let mut out = Vec::new();
    for (mode, stream, bite) in [("json", false, case.json), ("sse", true, case.stream)] {
        let q = format!("{} {mode} {fallback}", case.name);
        p.bad.set_standing_fault(Some((case.fault)(&q)));
        let (seen, model, text) = ask(&p.client, &p.url(), &q, stream).await;
        let want = match bite {
            Bite::Harmless => Seen::Answered,
            Bite::Before if fallback => Seen::Answered,
            Bite::Before | Bite::After => Seen::CleanError,
        };
        let label = format!("{} / {mode} / fallback={fallback}", case.name);
        assert!(
            !text.contains(UPSTREAM_KEY),
            "{label}: the provider's key reached the app: {text}"
        );
        if bite == Bite::Before && fallback {
            assert_eq!(model.as_deref(), Some("good-model"), "{label}: not failed over: {text}");
        }
        out.push((label.clone(), seen, want));
        // Healed, the same question and the other mode must be answered right: nothing
        // broken was cached under either.
        p.bad.set_standing_fault(None);
        for again in [stream, !stream] {
            let (seen, _, text) = ask(&p.client, &p.url(), &q, again).await;
            out.push((format!("{label} / healed, stream={again}"), seen, Seen::Answered));
            assert!(seen == Seen::Answered, "{label}: after healing: {seen:?}: {text}");
        }
    }
    drop(p.good);
    p.sidecar.shutdown().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_mode_gives_an_answer_or_a_clean_error_and_fails_over_before_the_first_byte() {
    let cases = Arc::new(cases());
    let mut tasks = Vec::new();
    for i in 0..cases.len() {
        for fallback in [true, false] {
            let cases = cases.clone();
            tasks.push(tokio::spawn(async move { run_case(&cases[i], fallback).await }));
        }
    }
    let mut counts: BTreeMap<Seen, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut table = String::new();
    for t in tasks {
        for (label, seen, want) in t.await.expect("case task") {
            *counts.entry(seen).or_default() += 1;
            if seen != want {
                wrong.push(format!("{label}: got {seen:?}, want {want:?}"));
            }
            if !label.contains("healed") {
                table.push_str(&format!("| {label} | {seen:?} |\n"));
            }
        }
    }
    eprintln!("{table}");
    eprintln!("fault suite counts: {counts:?}");
    assert!(wrong.is_empty(), "unexpected outcomes:\n{}", wrong.join("\n"));
    for bad in [Seen::Broken, Seen::Hung, Seen::Lost] {
        assert_eq!(counts.get(&bad), None, "{bad:?} must never happen");
    }
}

fn metric(text: &str, key: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(p: &Pair) -> String {
    p.client
        .get(format!("http://{}/metrics", p.sidecar.admin_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn streams_that_break_after_their_first_event_open_the_circuit() {
    let p = Pair::start(
        false,
        true,
        "resilience: { retries: { max_attempts: 1 }, breaker: { consecutive_failures: 3, open_for: 30s } }",
    )
    .await;
    for (i, fault) in [
        Fault::CutAfterChunks(2),
        Fault::Raw {
            status: 200,
            content_type: "text/event-stream",
            chunks: common::faults::openai_events("x", false),
            end: RawEnd::Complete,
        },
        Fault::StallAfterChunks(2),
    ]
    .into_iter()
    .enumerate()
    {
        p.bad.set_standing_fault(Some(fault));
        let (seen, model, _) = ask(&p.client, &p.url(), &format!("q{i}"), true).await;
        assert_eq!((seen, model.as_deref()), (Seen::CleanError, Some("bad-model")));
    }
    let m = metrics(&p).await;
    assert_eq!(
        metric(&m, r#"llm_sidecar_circuit_state{provider="bad",model="bad-model"}"#),
        1.0,
        "{m}"
    );
    // The healthy fallback now takes the traffic, first try.
    let (seen, model, _) = ask(&p.client, &p.url(), "after", true).await;
    assert_eq!((seen, model.as_deref()), (Seen::Answered, Some("good-model")));
    assert!(
        metric(
            &m,
            r#"llm_sidecar_upstream_errors_total{provider="bad",kind="incomplete"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_revoked_key_fails_over_and_is_counted() {
    let p = Pair::start(false, true, "resilience: { retries: { max_attempts: 2 } }").await;
    p.bad.set_standing_fault(Some(Fault::EchoCredential { status: 401 }));
    let (seen, model, text) = ask(&p.client, &p.url(), "hello", false).await;
    assert_eq!((seen, model.as_deref()), (Seen::Answered, Some("good-model")), "{text}");
    // A bad key is not retried on the same provider.
    assert_eq!(p.bad.requests().len(), 1);
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"llm_sidecar_upstream_auth_failures_total{provider="bad",status="401"}"#
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn no_configured_secret_reaches_the_app() {
    let p = Pair::start(false, false, MATRIX_RESILIENCE).await;
    // Alone, a provider's 401 becomes the sidecar's 502, which must not quote the key.
    p.bad.set_standing_fault(Some(Fault::EchoCredential { status: 401 }));
    let r = p.client.post(p.url()).json(&chat_body("a")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(!text.contains(UPSTREAM_KEY) && text.contains("upstream_auth"), "{text}");
    // A passthrough path: no failover there, but the same 502 and no key.
    let r = p
        .client
        .post(format!("http://{}/v1/batches", p.sidecar.app_addr()))
        .json(&serde_json::json!({"model": "x", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(!text.contains(UPSTREAM_KEY) && text.contains("upstream_auth"), "{text}");
    // Another 4xx is relayed as it is — minus the key.
    p.bad.set_standing_fault(Some(Fault::EchoCredential { status: 400 }));
    let r = p.client.post(p.url()).json(&chat_body("b")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(!text.contains(UPSTREAM_KEY) && text.contains("[redacted]"), "{text}");
    // An error event in a committed stream, quoting the key.
    let mut events = common::faults::openai_events("c", false);
    events.truncate(2);
    events.push(bytes::Bytes::from(format!(
        "data: {{\"error\":{{\"message\":\"key Bearer {UPSTREAM_KEY} revoked\"}}}}\n\n"
    )));
    p.bad.set_standing_fault(Some(Fault::Raw {
        status: 200,
        content_type: "text/event-stream",
        chunks: events,
        end: RawEnd::Complete,
    }));
    let (seen, _, text) = ask(&p.client, &p.url(), "c", true).await;
    assert_eq!(seen, Seen::CleanError, "{text}");
    assert!(!text.contains(UPSTREAM_KEY) && text.contains("[redacted]"), "{text}");
}

#[tokio::test]
async fn only_what_a_provider_needs_is_forwarded() {
    let p = Pair::start(false, false, "").await;
    let r = p
        .client
        .post(p.url())
        .header("authorization", "Bearer app-key-1")
        .header("x-api-key", "app-key-2")
        .header("api-key", "app-key-3")
        .header("cookie", "session=app-secret")
        .header("openai-organization", "org-app")
        .header("x-stainless-lang", "python")
        .header("x-custom-thing", "1")
        .json(&chat_body("headers"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = p.bad.last_request().unwrap().headers;
    for name in [
        "x-api-key",
        "api-key",
        "cookie",
        "openai-organization",
        "x-custom-thing",
    ] {
        assert!(got.get(name).is_none(), "{name} was forwarded");
    }
    assert_eq!(got["authorization"], format!("Bearer {UPSTREAM_KEY}").as_str());
    assert_eq!(got["x-stainless-lang"], "python");
}

#[tokio::test]
async fn equivalent_paths_reach_the_endpoint_and_dot_segments_are_refused() {
    let p = Pair::start(false, false, "").await;
    let base = format!("http://{}", p.sidecar.app_addr());
    for path in [
        "/v1/chat/completions/",
        "/v1//chat/completions",
        "//v1/chat//completions",
    ] {
        let r = p
            .client
            .post(format!("{base}{path}"))
            .json(&chat_body("path"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        // The chat endpoint (routed, cached), not a passthrough.
        assert_eq!(r.headers()["x-llm-sidecar-route"], "auto", "{path}");
        assert!(r.headers().get("x-llm-sidecar-cache").is_some(), "{path}");
    }
    let before = p.bad.requests().len();
    for path in [
        "/v1/../admin/x",
        "/v1/./models",
        "/v1/%2e%2e/x",
        "/v1/%2E%2E/x",
        "/v1/files%2f..%2fx",
        "/v1/a/..",
    ] {
        // reqwest would resolve dot segments itself: send the request target as written.
        let (status, body) =
            raw_request(p.sidecar.app_addr(), &format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("invalid_path"), "{path}: {body}");
    }
    assert_eq!(p.bad.requests().len(), before, "a refused path reached the provider");
}

/// Sends raw bytes, returns the status and the rest of the response.
async fn raw_request(addr: std::net::SocketAddr, req: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() < 40 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            // One more read for the body, if it is not there yet.
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                got.extend_from_slice(&buf[..n]);
            }
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A client still uploading when the sidecar answers early reads the status, not a reset,
/// and the connection stays usable.
#[tokio::test]
async fn early_errors_are_readable_while_the_client_is_still_uploading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Pair::start(
        false,
        false,
        "server: { max_body_bytes: 65536 }\ntenants: { on_unknown: reject, list: { a: { api_key_sha256: [5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8] } } }",
    )
    .await;
    let addr = p.sidecar.app_addr();
    // (request head, body size, expected status)
    let cases = [
        (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer password\r\ncontent-type: application/json\r\ncontent-length: 16000000\r\n\r\n",
            16_000_000usize,
            413u16,
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer password\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            16_000_000,
            413,
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong\r\ncontent-type: application/json\r\ncontent-length: 16000000\r\n\r\n",
            16_000_000,
            401,
        ),
        (
            "PUT /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 16000000\r\n\r\n",
            16_000_000,
            405,
        ),
        (
            "POST /nowhere HTTP/1.1\r\nhost: x\r\ncontent-length: 16000000\r\n\r\n",
            16_000_000,
            404,
        ),
    ];
    for (head, size, want) in cases {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let chunked = head.contains("chunked");
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let piece = vec![b'a'; 16 << 10];
            let mut sent = 0;
            while sent < size {
                let n = piece.len().min(size - sent);
                let r = if chunked {
                    let mut c = format!("{n:x}\r\n").into_bytes();
                    c.extend_from_slice(&piece[..n]);
                    c.extend_from_slice(b"\r\n");
                    wr.write_all(&c).await
                } else {
                    wr.write_all(&piece[..n]).await
                };
                if r.is_err() {
                    return Err(sent);
                }
                sent += n;
            }
            if chunked {
                wr.write_all(b"0\r\n\r\n").await.map_err(|_| sent)?;
            }
            Ok(wr)
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8192];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        // A complete chunked or sized error body ends with `}` (+ the last chunk).
                        let t = String::from_utf8_lossy(&got);
                        if t.contains("\r\n\r\n") && (t.ends_with("0\r\n\r\n") || t.trim_end().ends_with('}')) {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .expect("the answer arrives");
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(read.is_ok(), "{head}: read failed ({read:?}) after {text:?}");
        assert_eq!(text.get(9..12), Some(want.to_string().as_str()), "{head}: {text}");
        assert!(text.contains("\"error\""), "{head}: {text}");
        let wr = writer.await.unwrap();
        assert!(wr.is_ok(), "{head}: the upload was cut at {:?} bytes", wr.err());
    }
}

#[tokio::test]
async fn responses_advertise_the_keep_alive_timeout() {
    let p = Pair::start(false, false, "").await;
    let r = p.client.post(p.url()).json(&chat_body("ka")).send().await.unwrap();
    assert_eq!(r.headers()["keep-alive"], "timeout=25");
}

#[tokio::test]
async fn a_stream_still_open_when_the_grace_ends_gets_an_error_event() {
    let p = Pair::start(false, false, "server: { shutdown_grace: 300ms }").await;
    p.bad.set_chunk_delay(Duration::from_millis(400));
    let mut resp = p
        .client
        .post(p.url())
        .json(&stream_body("a long answer"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let shutdown = tokio::spawn(p.sidecar.shutdown());
    let mut text = Vec::new();
    while let Ok(Some(c)) = resp.chunk().await {
        text.extend_from_slice(&c);
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    shutdown.await.unwrap();
    assert!(text.contains("\"error\"") && text.contains("shutting down"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
}

#[tokio::test]
async fn a_body_slower_than_the_minimum_rate_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The default minimum rate (16 KiB/s after a 5 s grace).
    let p = Pair::start(false, false, "").await;
    let mut s = tokio::net::TcpStream::connect(p.sidecar.app_addr()).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            if wr.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(15), rd.read(&mut buf))
        .await
        .expect("answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    trickle.abort();
    let m = metrics(&p).await;
    assert_eq!(metric(&m, "llm_sidecar_request_body_timeouts_total"), 1.0, "{m}");
}
