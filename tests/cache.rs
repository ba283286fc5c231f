// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The cache end to end, with the real embedding model: exact and semantic hits, the guard,
//! what is never cached, tenant isolation, JSON/SSE in either direction, purge and version.

mod common;

use std::time::Duration;

use common::*;
use llm_sidecar::mock::{Fault, MockUpstream};
use serde_json::{Value, json};

async fn cached_harness(extra: &str) -> Harness {
    cached_harness_with("", extra).await
}

/// `top`: extra top-level config; `extra`: extra keys under `cache:`.
async fn cached_harness_with(top: &str, extra: &str) -> Harness {
    let mock = MockUpstream::start().await.unwrap();
    let text = config(&mock.base_url(), &format!("{top}\n{}", cache_section(extra)));
    Harness::with_text(mock, text).await
}

/// A fresh question misses, and once stored its paraphrase is served from the semantic cache.
async fn paraphrase_hits(h: &Harness) {
    assert_eq!(
        ask_after(h, "How do I reset my password?", "how can I reset my password").await,
        "hit-semantic"
    );
}

#[tokio::test]
async fn an_identical_request_is_an_exact_hit() {
    let h = cached_harness("").await;
    let first = h.chat(chat_body("hello cache")).await;
    assert_eq!(cache_header(&first), "miss");
    let first: Value = first.json().await.unwrap();
    let second = h.chat(chat_body("hello cache")).await;
    assert_eq!(cache_header(&second), "hit-exact");
    assert_eq!(second.headers()["x-llm-sidecar-model"], "chat-model");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(h.mock.requests().len(), 1);
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, r#"llm_sidecar_cache_lookups_total{result="hit_exact"}"#),
        1.0
    );
    assert_eq!(metric(&m, r#"llm_sidecar_cache_lookups_total{result="miss"}"#), 1.0);
}

#[tokio::test]
async fn a_paraphrase_is_a_verified_semantic_hit() {
    let h = cached_harness("").await;
    let r = h.chat(chat_body("How do I reset my password?")).await;
    assert_eq!(cache_header(&r), "miss");
    settle().await;
    let r = h.chat(chat_body("how can I reset my password")).await;
    assert_eq!(cache_header(&r), "hit-semantic");
    let sim: f32 = r.headers()["x-llm-sidecar-cache-similarity"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sim > 0.95, "{sim}");
    let body: Value = r.json().await.unwrap();
    // The cached answer is the one given to the first wording.
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Mock answer to: How do I reset my password?"
    );
    assert_eq!(h.mock.requests().len(), 1);

    // A different question in the same partition is a miss.
    let r = h
        .chat(chat_body("What is the boiling point of water at sea level?"))
        .await;
    assert_eq!(cache_header(&r), "miss");
    assert_eq!(h.mock.requests().len(), 2);
}

#[tokio::test]
async fn the_guard_rejects_close_but_different_questions() {
    // Below the default threshold, so that every pair reaches the guard.
    let h = cached_harness("    threshold: 0.90\n").await;
    for q in [
        "Why do Poles dislike Russians?",
        "convert 30 celsius to fahrenheit",
        "is coffee good for you",
    ] {
        assert_eq!(cache_header(&h.chat(chat_body(q)).await), "miss");
    }
    settle().await;
    // Each is above the threshold by cosine (0.97, 0.97, 0.94) and must still miss.
    for q in [
        "Why do Russians dislike Poles?",
        "convert 30 fahrenheit to celsius",
        "is coffee not good for you",
    ] {
        let r = h.chat(chat_body(q)).await;
        assert_eq!(cache_header(&r), "miss", "{q}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], format!("Mock answer to: {q}"));
    }
    let m = h.metrics().await;
    for reason in ["entity_order", "word_order", "negation"] {
        let n = metric(
            &m,
            &format!(r#"llm_sidecar_cache_guard_rejections_total{{reason="{reason}"}}"#),
        );
        assert!(n >= 1.0, "{reason}: {n}\n{m}");
    }
}

#[tokio::test]
async fn a_question_about_a_long_document_is_exact_only() {
    // The same ~200-word document with two different requests after it. Cut to the
    // embedder's window, both would be the same vector (cosine 1.000) and the second would
    // be served the first's answer.
    let doc = "The quarterly report shows that revenue grew in every region, driven by strong demand \
               for the new product line. Operating costs rose more slowly than sales, which improved the \
               margin. The company opened two new offices, hired engineers for its platform team, and \
               reduced its debt. Management expects growth to continue next year, although currency \
               movements and supply chain delays remain risks. Customer satisfaction scores improved. "
        .repeat(3);
    let h = cached_harness("").await;
    let risks = format!("{doc}What are the main risks mentioned?");
    assert_eq!(cache_header(&h.chat(chat_body(&risks)).await), "miss");
    settle().await;
    let tweet = format!("{doc}Write a tweet announcing these results.");
    let r = h.chat(chat_body(&tweet)).await;
    assert_eq!(cache_header(&r), "miss");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        format!("Mock answer to: {tweet}")
    );
    // Exact repeats are still served.
    assert_eq!(cache_header(&h.chat(chat_body(&risks)).await), "hit-exact");
    let m = h.metrics().await;
    let too_long = metric(&m, r#"llm_sidecar_cache_skips_total{reason="too_long"}"#);
    assert!(too_long >= 1.0, "{m}");
    // Past 4 KiB the tokenizer is not even asked; the answer is still stored exactly.
    let huge = format!("{}What are the main risks mentioned?", doc.repeat(5));
    assert_eq!(cache_header(&h.chat(chat_body(&huge)).await), "miss");
    assert_eq!(cache_header(&h.chat(chat_body(&huge)).await), "hit-exact");
    let m = h.metrics().await;
    assert!(
        metric(&m, r#"llm_sidecar_cache_skips_total{reason="too_long"}"#) >= too_long + 2.0,
        "{m}"
    );
    // A short question is embedded as before.
    paraphrase_hits(&h).await;
}

#[tokio::test]
async fn answers_never_cross_tenants() {
    let h = cached_harness_with(
        "tenants:\n  header: x-tenant\n  list:\n    a: {}\n    b: {}\n    c: {}",
        "",
    )
    .await;
    let q = chat_body("How do I reset my password?");
    assert_eq!(
        cache_header(&h.chat_with(q.clone(), &[("x-tenant", "a")]).await),
        "miss"
    );
    settle().await;
    assert_eq!(
        cache_header(&h.chat_with(q.clone(), &[("x-tenant", "a")]).await),
        "hit-exact"
    );
    // Other tenant: a paraphrase that would be a semantic hit for `a` misses...
    assert_eq!(
        cache_header(
            &h.chat_with(chat_body("how can I reset my password"), &[("x-tenant", "b")])
                .await
        ),
        "miss"
    );
    // ...and so do the very same words, from a third tenant.
    assert_eq!(cache_header(&h.chat_with(q, &[("x-tenant", "c")]).await), "miss");
    assert_eq!(h.mock.requests().len(), 3);
}

#[tokio::test]
async fn streams_are_stored_and_served_in_either_shape() {
    let h = cached_harness("").await;
    let events = sse_events(h.chat(stream_body("tell me a story")).await).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    // Stored from the stream, served as JSON...
    let r = h.chat(chat_body("tell me a story")).await;
    assert_eq!(cache_header(&r), "hit-exact");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Mock answer to: tell me a story"
    );
    // ...and replayed as a well-formed stream (with usage when asked for).
    let mut req = stream_body("tell me a story");
    req["stream_options"] = json!({"include_usage": true});
    let r = h.chat(req).await;
    assert_eq!(cache_header(&r), "hit-exact");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let (chunks, text) = stream_chunks(&sse_events(r).await);
    assert_eq!(text, "Mock answer to: tell me a story");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 7);
    assert_eq!(h.mock.requests().len(), 1);

    // A JSON answer replays as a stream too.
    let _ = h.chat(chat_body("json first")).await;
    let events = sse_events(h.chat(stream_body("json first")).await).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(h.mock.requests().len(), 2);
}

#[tokio::test]
async fn what_is_never_cached() {
    let h = cached_harness("").await;
    let again = |q: &'static str| chat_body(q);

    // Non-200 answers.
    for _ in 0..2 {
        h.mock.push_fault(Fault::Status {
            status: 500,
            retry_after: None,
        });
    }
    assert_eq!(h.chat(again("error first")).await.status(), 502);
    assert_eq!(cache_header(&h.chat(again("error first")).await), "miss");

    // Incomplete streams.
    h.mock.push_fault(Fault::CutAfterChunks(2));
    let _ = sse_events(h.chat(stream_body("cut stream")).await).await;
    assert_eq!(cache_header(&h.chat(again("cut stream")).await), "miss");

    // no-store (sidecar header and Cache-Control): not stored.
    let _ = h
        .chat_with(again("secret plan"), &[("x-llm-sidecar-cache", "no-store")])
        .await;
    assert_eq!(cache_header(&h.chat(again("secret plan")).await), "miss");
    let _ = h.chat_with(again("other plan"), &[("cache-control", "no-store")]).await;
    assert_eq!(cache_header(&h.chat(again("other plan")).await), "miss");

    // no-cache: not looked up, but stored.
    let r = h
        .chat_with(again("fresh please"), &[("x-llm-sidecar-cache", "no-cache")])
        .await;
    assert_eq!(cache_header(&r), "bypass");
    let r = h
        .chat_with(again("fresh please"), &[("x-llm-sidecar-cache", "no-cache")])
        .await;
    assert_eq!(cache_header(&r), "bypass");
    assert_eq!(cache_header(&h.chat(again("fresh please")).await), "hit-exact");

    // Private data: bypassed, never stored.
    for _ in 0..2 {
        let r = h
            .chat(again("my email is jane.doe@example.com, summarise my account"))
            .await;
        assert_eq!(cache_header(&r), "bypass");
    }
    let mut hot = chat_body("be creative");
    hot["temperature"] = json!(1.5);
    for _ in 0..2 {
        assert_eq!(cache_header(&h.chat(hot.clone()).await), "bypass");
    }
    let m = h.metrics().await;
    for reason in ["privacy", "temperature", "no_store", "no_cache"] {
        assert!(
            metric(&m, &format!(r#"llm_sidecar_cache_skips_total{{reason="{reason}"}}"#)) >= 1.0,
            "{reason}"
        );
    }
}

#[tokio::test]
async fn purge_empties_by_tenant() {
    let h = cached_harness("").await;
    let _ = h.chat(chat_body("purge me")).await;
    assert_eq!(cache_header(&h.chat(chat_body("purge me")).await), "hit-exact");
    assert_eq!(
        h.admin_post("/admin/cache/purge?tenant=someone-else").await["removed"],
        0
    );
    assert_eq!(h.admin_post("/admin/cache/purge?tenant=default").await["removed"], 1);
    assert_eq!(cache_header(&h.chat(chat_body("purge me")).await), "miss");
}

#[tokio::test]
async fn a_new_cache_version_invalidates_everything_on_reload() {
    let mock = MockUpstream::start().await.unwrap();
    let base = config(&mock.base_url(), &cache_section("  version: 1\n"));
    let h = Harness::with_mounted(mock, base.clone()).await;
    let _ = h.chat(chat_body("versioned")).await;
    assert_eq!(cache_header(&h.chat(chat_body("versioned")).await), "hit-exact");
    kubelet_write(
        h.dir.as_ref().unwrap().path(),
        "config.yaml",
        &base.replace("version: 1", "version: 2"),
    );
    for _ in 0..200 {
        if metric(
            &h.metrics().await,
            r#"llm_sidecar_config_reloads_total{outcome="applied"}"#,
        ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache_header(&h.chat(chat_body("versioned")).await), "miss");
    assert_eq!(
        metric(
            &h.metrics().await,
            r#"llm_sidecar_cache_evictions_total{reason="purge"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn without_assets_the_exact_cache_still_works() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &mock.base_url(),
        &format!("cache:\n  semantic:\n    assets_dir: {}\n", dir.path().display()),
    );
    let h = Harness::with_text(mock, text).await;
    assert_eq!(h.client.get(h.admin("/readyz")).send().await.unwrap().status(), 200);
    let _ = h.chat(chat_body("How do I reset my password?")).await;
    assert_eq!(
        cache_header(&h.chat(chat_body("How do I reset my password?")).await),
        "hit-exact"
    );
    assert_eq!(
        cache_header(&h.chat(chat_body("how can I reset my password")).await),
        "miss"
    );
    let m = h.metrics().await;
    assert!(m.contains("llm_sidecar_embedder_available 0"), "{m}");
}

#[tokio::test]
async fn without_a_cache_section_nothing_is_cached() {
    let h = Harness::start().await;
    let _ = h.chat(chat_body("x")).await;
    let r = h.chat(chat_body("x")).await;
    assert_eq!(cache_header(&r), "bypass");
    assert_eq!(h.mock.requests().len(), 2);
}

#[tokio::test]
async fn online_verification_learns_from_a_wrong_semantic_hit() {
    // Guard off and a low threshold, so that a wrong pairing is served once; every semantic
    // hit is verified.
    let h = cached_harness("    threshold: 0.90\n    guard: false\n    verify_sample: 1.0\n").await;
    h.mock.set_answer("sun rise", "In Paris today the sun rises at 07:42.");
    h.mock.set_answer("sun set", "In Paris today the sun sets at 17:10.");
    h.mock.set_answer(
        "reset my password",
        "Open Settings, then Security, then choose Reset password.",
    );
    let rise = chat_body("What time does the sun rise in Paris?");
    let set = chat_body("What time does the sun set in Paris?");
    assert_eq!(cache_header(&h.chat(rise).await), "miss");
    settle().await;
    // Cosine 0.955: served (wrongly) from the cache, then checked in the background.
    let r = h.chat(set.clone()).await;
    assert_eq!(cache_header(&r), "hit-semantic");
    let verdict = h
        .wait_for_metric(r#"llm_sidecar_cache_verifications_total{result="disagree"}"#)
        .await;
    assert_eq!(verdict, 1.0);
    // The pairing learned its lesson: the same question now goes upstream.
    let r = h.chat(set).await;
    assert_eq!(cache_header(&r), "miss");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "In Paris today the sun sets at 17:10."
    );
    assert!(
        metric(
            &h.metrics().await,
            r#"llm_sidecar_cache_guard_rejections_total{reason="learned_threshold"}"#
        ) >= 1.0
    );

    // A true paraphrase verifies as agreeing.
    paraphrase_hits(&h).await;
    let agree = h
        .wait_for_metric(r#"llm_sidecar_cache_verifications_total{result="agree"}"#)
        .await;
    assert_eq!(agree, 1.0);
}

#[tokio::test]
async fn online_verification_takes_the_attempt_path_to_any_provider() {
    // An Anthropic provider: the verification goes through its adapter (the answer comes back
    // in OpenAI's shape, comparable with the one served), marked as the sidecar's own request.
    let mock = MockUpstream::start().await.unwrap();
    let text = config(&mock.base_url(), &cache_section("    verify_sample: 1.0\n")).replacen(
        "    base_url:",
        "    kind: anthropic\n    base_url:",
        1,
    );
    let h = Harness::with_text(mock, text).await;
    h.mock.set_answer(
        "reset my password",
        "Open Settings, then Security, then choose Reset password.",
    );
    paraphrase_hits(&h).await;
    let agree = h
        .wait_for_metric(r#"llm_sidecar_cache_verifications_total{result="agree"}"#)
        .await;
    assert_eq!(agree, 1.0);
    let asked = h.mock.requests();
    assert_eq!(asked.len(), 2, "the miss, then the verification");
    let check = &asked[1];
    assert_eq!(check.path_and_query, "/v1/messages");
    assert_eq!(check.headers["x-llm-sidecar-purpose"], "cache-verification");
    assert_eq!(check.json()["model"], "mock-upstream-name");
    assert_ne!(check.json()["stream"], true);
    // Not one of the app's requests: two of those were counted, no more.
    let m = h.metrics().await;
    let requests: f64 = m
        .lines()
        .filter(|l| l.starts_with("llm_sidecar_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(requests, 2.0);
}

#[tokio::test]
async fn shadow_mode_judges_would_be_hits_and_never_serves_them() {
    // Guard off, so that a wrong pairing ("sun rise"/"sun set", 0.955) is a would-be hit too.
    let h = cached_harness("    guard: false\n    mode: shadow\n").await;
    h.mock.set_answer("sun rise", "In Paris today the sun rises at 07:42.");
    h.mock.set_answer("sun set", "In Paris today the sun sets at 17:10.");
    h.mock.set_answer(
        "reset my password",
        "Open Settings, then Security, then choose Reset password.",
    );
    assert_eq!(
        cache_header(&h.chat(chat_body("What time does the sun rise in Paris?")).await),
        "miss"
    );
    settle().await;
    let r = h.chat(chat_body("What time does the sun set in Paris?")).await;
    assert_eq!(cache_header(&r), "miss", "shadow mode never serves a semantic hit");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "In Paris today the sun sets at 17:10."
    );
    let wrong = h
        .wait_for_metric(r#"llm_sidecar_cache_judgments_total{route="auto",mode="shadow",result="disagree"}"#)
        .await;
    assert_eq!(wrong, 1.0);

    assert_eq!(
        ask_after(&h, "How do I reset my password?", "how can I reset my password").await,
        "miss"
    );
    let right = h
        .wait_for_metric(r#"llm_sidecar_cache_judgments_total{route="auto",mode="shadow",result="agree"}"#)
        .await;
    assert_eq!(right, 1.0);
    // Every request went upstream; exact repeats are still served.
    assert_eq!(h.mock.requests().len(), 4);
    assert_eq!(
        cache_header(&h.chat(chat_body("How do I reset my password?")).await),
        "hit-exact"
    );

    let report = h.admin_get("/admin/cache").await;
    let route = &report["routes"][0];
    assert_eq!(route["route"], "auto");
    assert_eq!(route["mode"], "shadow");
    assert_eq!(route["judged"]["shadow"]["agree"], 1);
    assert_eq!(route["judged"]["shadow"]["disagree"], 1);
    // Both pairs score above 0.90: one wrong in two there, with its interval.
    let at_090 = route["judged"]["by_threshold"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| (r["threshold"].as_f64().unwrap() - 0.90).abs() < 1e-6)
        .unwrap();
    assert_eq!(at_090["judged"], 2);
    assert_eq!(at_090["wrong"], 1);
    assert_eq!(at_090["wrong_rate"], 0.5);
    let interval = at_090["interval_95"].as_array().unwrap();
    assert!(interval[0].as_f64().unwrap() < 0.5 && interval[1].as_f64().unwrap() > 0.5);
}

#[tokio::test]
async fn an_error_bound_serves_nothing_semantic_until_the_traffic_shows_it_is_met() {
    let h = cached_harness("    max_wrong_rate: 0.05\n").await;
    h.mock.set_answer(
        "reset my password",
        "Open Settings, then Security, then choose Reset password.",
    );
    let report = h.admin_get("/admin/cache").await;
    let in_force = report["routes"][0]["threshold_in_force"].as_f64().unwrap();
    assert!(
        (in_force - 0.99).abs() < 1e-6,
        "no evidence yet: the cautious end, not {in_force}"
    );
    assert_eq!(
        cache_header(&h.chat(chat_body("How do I reset my password?")).await),
        "miss"
    );
    settle().await;
    // A true paraphrase (0.95): below the cautious threshold in force, so not served; it is
    // judged against the upstream answer instead, which is how the route gathers evidence.
    assert_eq!(
        cache_header(&h.chat(chat_body("how can I reset my password")).await),
        "miss"
    );
    let right = h
        .wait_for_metric(r#"llm_sidecar_cache_judgments_total{route="auto",mode="shadow",result="agree"}"#)
        .await;
    assert_eq!(right, 1.0);
    let m = h.metrics().await;
    assert!((metric(&m, r#"llm_sidecar_cache_route_threshold{route="auto"}"#) - 0.99).abs() < 1e-6);
    let report = h.admin_get("/admin/cache").await;
    assert_eq!(report["routes"][0]["judged"]["in_force"]["bound_met"], false);
}

#[tokio::test]
async fn just_under_the_threshold_a_rewording_is_served_only_when_every_word_aligns() {
    let h = cached_harness("").await;
    // Cosine 0.895, just under the default 0.90; every content word of each finds a close
    // partner in the other, in context (worst 0.65): served.
    assert_eq!(
        ask_after(
            &h,
            "How do I change my email address?",
            "How can I update my email address?"
        )
        .await,
        "hit-semantic"
    );
    // Cosine 0.877 and the guard sees nothing, but "vertically" has no partner (0.40): a miss.
    assert_eq!(
        ask_after(
            &h,
            "How do I center a div in CSS?",
            "How do I center a div vertically in CSS?"
        )
        .await,
        "miss"
    );
    let m = h.metrics().await;
    assert_eq!(metric(&m, r#"llm_sidecar_cache_alignment_total{result="served"}"#), 1.0);
    assert_eq!(
        metric(&m, r#"llm_sidecar_cache_alignment_total{result="rejected"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"llm_sidecar_cache_guard_rejections_total{reason="alignment"}"#),
        1.0
    );

    // Without the band, the same rewording misses.
    let h = cached_harness("    alignment_band: 0\n").await;
    assert_eq!(
        ask_after(
            &h,
            "How do I change my email address?",
            "How can I update my email address?"
        )
        .await,
        "miss"
    );
}
