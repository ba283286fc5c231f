// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The live dashboard for real: a headless Chromium (Debian's package, driven by
//! playwright-core) loads `/dashboard` from a sidecar under traffic, checks that the numbers
//! move and every panel has content, and saves a screenshot that this test then inspects.
//! `scripts/test` installs Chromium and playwright-core and sets LLM_SIDECAR_REQUIRE_BROWSER.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use llm_sidecar::mock::MockUpstream;

const TOKEN: &str = "dashboard-token-0123456789";

async fn harness() -> Harness {
    let mock = MockUpstream::start().await.unwrap();
    let text = config(&mock.base_url(), "").replace(
        "server:\n",
        &format!("server:\n  admin_token: {TOKEN}\n  dashboard_prompts: true\n"),
    );
    Harness::with_text(mock, text).await
}

#[tokio::test]
async fn the_admin_token_guards_the_dashboard_and_admin_endpoints_but_not_probes() {
    let h = harness().await;
    let get = |path: &str, auth: Option<&str>| {
        let mut r = h.client.get(h.admin(path));
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        r.send()
    };
    assert_eq!(get("/dashboard", None).await.unwrap().status(), 401);
    assert_eq!(
        get("/admin/usage", Some("wrong-token-0000000000"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(get("/admin/usage", Some(TOKEN)).await.unwrap().status(), 200);
    let page = get(&format!("/dashboard?token={TOKEN}"), None).await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("EventSource") && !html.contains("https://"),
        "self-contained"
    );
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(open, None).await.unwrap().status(), 200, "{open}");
    }
    // The event stream sends snapshots with the live figures.
    let mut events = h
        .client
        .get(h.admin(&format!("/admin/events?token={TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(h.chat(chat_body("hello dashboard")).await.status(), 200);
    let mut buf = String::new();
    while !buf.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    let v: serde_json::Value = serde_json::from_str(buf.trim().strip_prefix("data: ").unwrap()).unwrap();
    for key in [
        "rps",
        "latency_ms",
        "ttft_ms",
        "cache",
        "mix",
        "cost_usd_per_hour",
        "refused",
        "tail",
        "circuits",
        "providers",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from {v}");
    }
}

#[tokio::test]
async fn a_headless_browser_sees_the_dashboard_move_under_traffic() {
    let playwright = std::env::var("LLM_SIDECAR_PLAYWRIGHT_DIR").ok();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let Some(playwright) = playwright.filter(|_| std::path::Path::new(&chromium).exists()) else {
        assert!(
            std::env::var_os("LLM_SIDECAR_REQUIRE_BROWSER").is_none(),
            "Chromium or playwright-core missing (scripts/test installs them)"
        );
        eprintln!("SKIPPED: no Chromium/playwright-core here; scripts/test runs this for real");
        return;
    };
    let h = harness().await;
    // Traffic for the page to show: a mix of fresh questions, repeats (cache hits) and streams.
    let (client, url) = (h.client.clone(), h.url("/v1/chat/completions"));
    let traffic = tokio::spawn(async move {
        for i in 0u64.. {
            let body = if i % 3 == 0 {
                stream_body(&format!("stream {i}"))
            } else if i % 5 == 1 {
                // An app naming a model that does not exist: the sidecar's own 404.
                serde_json::json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
            } else {
                chat_body(&format!("question {}", i % 7))
            };
            let _ = client.post(&url).json(&body).send().await.map(|r| r.bytes());
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    let shot: PathBuf = std::env::temp_dir().join(format!("llm-sidecar-dashboard-{}.png", std::process::id()));
    let page = format!("{}?token={TOKEN}", h.admin("/dashboard"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/check.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&page)
        .arg(&shot)
        .env("PLAYWRIGHT_DIR", &playwright)
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .expect("node runs");
    traffic.abort();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Inspect the screenshot: the page's size, the panels' background, and the accent colour
    // of the drawn sparkline and mix bars.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert!(
        info.width >= 1200 && info.height >= 800,
        "{}x{}",
        info.width,
        info.height
    );
    let channels = info.color_type.samples();
    let (mut panel, mut accent, mut total) = (0usize, 0usize, 0usize);
    for px in buf[..info.buffer_size()].chunks(channels) {
        total += 1;
        let (r, g, b) = (px[0], px[1], px[2]);
        if (r, g, b) == (0x18, 0x20, 0x29) {
            panel += 1;
        }
        if r.abs_diff(0x58) < 12 && g.abs_diff(0xa6) < 12 && b.abs_diff(0xff) < 12 {
            accent += 1;
        }
    }
    assert!(panel * 5 > total, "the panels cover the page: {panel}/{total}");
    assert!(
        accent > 200,
        "the sparkline and mix bars are drawn: {accent} accent pixels"
    );
    let _ = std::fs::remove_file(&shot);
}
