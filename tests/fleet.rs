// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! Fleet mode against a real `redis-server`: two (and three) sidecars share rate limits,
//! budgets and the cache; Redis is killed mid-test and restarted, and no request fails.

mod common;

use std::time::{Duration, Instant};

use common::*;
use llm_sidecar::mock::MockUpstream;
use serde_json::Value;

fn sha(key: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()))
}

fn fleet_config(mock: &MockUpstream, redis: &RedisServer, tenant: &str) -> String {
    let extra = format!(
        r#"
redis: {{ url: "{}", sync_interval: 50ms, timeout: 300ms }}
tenants:
  on_unknown: reject
  list:
    team-a:
      api_key_sha256: ["{}"]
{tenant}
{}
"#,
        redis.url(),
        sha("key-a"),
        cache_section("")
    );
    config(&mock.base_url(), &extra)
}

async fn call(h: &Harness, body: Value) -> reqwest::Response {
    h.client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth("key-a")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `h` has counted at least one L2 entry with this `result`.
async fn wait_l2(h: &Harness, result: &str, what: &str) {
    let series = format!(r#"llm_sidecar_cache_l2_entries_total{{result="{result}"}}"#);
    wait_until(what, async || metric(&h.metrics().await, &series) >= 1.0).await;
}

#[tokio::test]
async fn two_sidecars_share_rate_limits_and_budgets() {
    let redis = RedisServer::start();
    let (m1, m2) = (
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
    );
    let tenant = "      budget: { daily_usd: 0.00005 }";
    // No cache here: every request must reach a provider to be counted and priced.
    let text = |m: &MockUpstream| fleet_config(m, &redis, tenant).replace("\ncache:\n", "\ncache:\n  enabled: false\n");
    let (ta, tb) = (text(&m1), text(&m2));
    let (a, b) = (Harness::with_text(m1, ta).await, Harness::with_text(m2, tb).await);
    // The budget (5e-5 USD) is 5 "hi" requests at 1e-5 each, fleet-wide.
    for _ in 0..3 {
        assert_eq!(call(&a, chat_body("hi")).await.status(), 200);
    }
    wait_until("A's spend to reach the fleet", async || {
        metric(&b.metrics().await, "llm_sidecar_redis_up") == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ok_b = 0;
    for _ in 0..5 {
        match call(&b, chat_body("hi")).await.status().as_u16() {
            200 => ok_b += 1,
            429 => break,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok_b, 2, "B sees A's 3e-5 USD and stops at the fleet budget of 5e-5");
    let usage = b.admin_get("/admin/usage").await;
    let t = Harness::find(&usage["tenants"], "tenant", "team-a");
    assert!(t["spent_today_usd"].as_f64().unwrap() >= 5e-5 - 1e-12, "{t}");
    assert_eq!(usage["fleet"], true);
}

#[tokio::test]
async fn fleet_rate_limits_count_both_sidecars() {
    let redis = RedisServer::start();
    let tenant = "      limits: { requests_per_minute: 10 }";
    let text = |m: &MockUpstream| fleet_config(m, &redis, tenant).replace("\ncache:\n", "\ncache:\n  enabled: false\n");
    let (m1, m2) = (
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
    );
    let (ta, tb) = (text(&m1), text(&m2));
    let (a, b) = (Harness::with_text(m1, ta).await, Harness::with_text(m2, tb).await);
    for _ in 0..6 {
        assert_eq!(call(&a, chat_body("hi")).await.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Between syncs each active pod may use its share of what is left, so B's part arrives
    // over a few sync intervals; it never goes past the fleet's 10.
    let mut ok = 0;
    let mut refused = None;
    for _ in 0..40 {
        let r = call(&b, chat_body("hi")).await;
        if r.status() == 429 {
            refused = Some(r);
            tokio::time::sleep(Duration::from_millis(60)).await;
        } else {
            ok += 1;
        }
    }
    assert_eq!(ok, 4, "6 on A + 4 on B = the fleet's 10 per minute, never more");
    let r = refused.unwrap();
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "10");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
}

#[tokio::test]
async fn a_paraphrase_answered_in_one_pod_is_a_hit_in_another_and_new_pods_start_warm() {
    let mut redis = RedisServer::start();
    let (m1, m2) = (
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
    );
    let (ta, tb) = (fleet_config(&m1, &redis, ""), fleet_config(&m2, &redis, ""));
    let (a, b) = (Harness::with_text(m1, ta).await, Harness::with_text(m2, tb).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let q = "How do I reset my online banking password?";
    let r = call(&a, chat_body(q)).await;
    assert_eq!(r.headers()["x-llm-sidecar-cache"], "miss");
    wait_l2(&b, "received", "B to receive A's entry").await;
    let r = call(&b, chat_body(q)).await;
    assert_eq!(r.headers()["x-llm-sidecar-cache"], "hit-exact");
    let r = call(&b, chat_body("how can I reset my online banking password")).await;
    assert_eq!(
        r.headers()["x-llm-sidecar-cache"],
        "hit-semantic",
        "the vector came along"
    );
    assert!(b.mock.requests().is_empty(), "B never asked its provider");

    // A third pod starts warm from the stream.
    let m3 = MockUpstream::start().await.unwrap();
    let tc = fleet_config(&m3, &redis, "");
    let c = Harness::with_text(m3, tc).await;
    wait_l2(&c, "warmed", "C to warm up").await;
    assert_eq!(
        call(&c, chat_body(q)).await.headers()["x-llm-sidecar-cache"],
        "hit-exact"
    );

    // Redis dies: every request is still served (from local state), nothing fails.
    redis.kill();
    for i in 0..20 {
        let r = call(&a, chat_body(&format!("question number {i} while redis is down"))).await;
        assert_eq!(r.status(), 200);
        assert_eq!(call(&b, chat_body(q)).await.status(), 200);
    }
    wait_until("redis_up to drop", async || {
        metric(&a.metrics().await, "llm_sidecar_redis_up") == 0.0
    })
    .await;
    // It comes back (empty): the sidecars reconnect by themselves and sharing resumes.
    redis.restart();
    wait_until("A to reconnect", async || {
        metric(&a.metrics().await, "llm_sidecar_redis_up") == 1.0
    })
    .await;
    wait_until("B to reconnect", async || {
        metric(&b.metrics().await, "llm_sidecar_redis_up") == 1.0
    })
    .await;
    let q2 = "What is the daily limit for card payments abroad?";
    assert_eq!(call(&a, chat_body(q2)).await.status(), 200);
    // Poll B with `no-store` (it looks up but never stores its own answer) until A's entry
    // has arrived through the restarted Redis.
    wait_until("A's new entry to reach B", async || {
        let r = b
            .client
            .post(b.url("/v1/chat/completions"))
            .bearer_auth("key-a")
            .header("x-llm-sidecar-cache", "no-store")
            .json(&chat_body(q2))
            .send()
            .await
            .unwrap();
        r.headers()["x-llm-sidecar-cache"] == "hit-exact"
    })
    .await;
}

#[tokio::test]
async fn a_password_protected_redis_is_used_with_the_password_from_a_file() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cr%t pass"]);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("redis-password");
    std::fs::write(&pw, "s3cr%t pass\n").unwrap();
    let mock = MockUpstream::start().await.unwrap();
    let text = fleet_config(&mock, &redis, "      limits: { requests_per_minute: 100 }").replace(
        "sync_interval: 50ms",
        &format!("sync_interval: 50ms, password_file: {}", pw.display()),
    );
    let h = Harness::with_text(mock, text).await;
    assert_eq!(call(&h, chat_body("hi")).await.status(), 200);
    wait_until("the authenticated sync", async || {
        metric(&h.metrics().await, "llm_sidecar_redis_up") == 1.0
    })
    .await;
    // The password never shows on the admin port.
    let cfg = h
        .client
        .get(h.admin("/admin/config"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!cfg.contains("s3cr"), "{cfg}");
}

/// A fleet config whose cache seals what it writes to Redis with `keys` (id, key file).
fn sealed_config(mock: &MockUpstream, redis: &RedisServer, keys: &[(&str, &std::path::Path)]) -> String {
    let list: String = keys
        .iter()
        .map(|(id, f)| format!("      - {{ id: \"{id}\", key_file: {} }}\n", f.display()))
        .collect();
    fleet_config(mock, redis, "").replace(
        &cache_section(""),
        &cache_section(&format!("  encryption:\n    keys:\n{list}")),
    )
}

#[tokio::test]
async fn the_shared_cache_is_sealed_in_redis_and_opens_only_with_the_key() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key_file = |name: &str, byte: u8| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{}\n", hex::encode([byte; 32]))).unwrap();
        p
    };
    let (k1, k2, wrong) = (key_file("k1", 1), key_file("k2", 2), key_file("wrong", 9));
    let (m1, m2, m3) = (
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
    );
    // A seals with k1; B has rotated (k2 seals, k1 still opens); C has another key.
    let ta = sealed_config(&m1, &redis, &[("k1", &k1)]);
    let tb = sealed_config(&m2, &redis, &[("k2", &k2), ("k1", &k1)]);
    let tc = sealed_config(&m3, &redis, &[("other", &wrong)]);
    let (a, b, c) = (
        Harness::with_text(m1, ta).await,
        Harness::with_text(m2, tb).await,
        Harness::with_text(m3, tc).await,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let q = "What is my secret banking question number 7?";
    let r = call(&a, chat_body(q)).await;
    assert_eq!(r.headers()["x-llm-sidecar-cache"], "miss");
    let answer: Value = r.json().await.unwrap();
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    wait_l2(&b, "received", "B to receive A's sealed entry").await;
    assert_eq!(
        call(&b, chat_body(q)).await.headers()["x-llm-sidecar-cache"],
        "hit-exact"
    );
    // C cannot open it: a miss for C, counted.
    wait_l2(&c, "refused", "C to refuse A's entry").await;
    assert_eq!(call(&c, chat_body(q)).await.headers()["x-llm-sidecar-cache"], "miss");
    wait_l2(&c, "published", "C to publish its own entry").await;

    // What Redis holds: sealed payloads under keyed names (not the exact key, a plain hash of
    // the request); no prompt, no answer.
    {
        let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
        let names: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        let entries: Vec<&String> = names.iter().filter(|n| n.contains(":cache:entry:")).collect();
        assert_eq!(
            entries.len(),
            2,
            "A's and C's entries, under different names: {names:?}"
        );
        for name in &entries {
            let v: String = redis::cmd("GET").arg(*name).query(&mut conn).unwrap();
            assert!(v.starts_with("enc1:"), "{name}: {v}");
            for secret in [q, content.as_str(), "secret banking"] {
                assert!(!v.contains(secret), "{name} holds plaintext {secret:?}");
            }
        }
        let stream: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg("{llm-sidecar}:cache:stream")
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        assert!(!stream.is_empty());
        for (_, fields) in &stream {
            let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(names, ["k", "o"], "the stream carries names, not content");
        }
    }
}

/// A pod whose semantic cache embeds through `embeds` (shared by the fleet) with `model`.
fn remote_embedder_config(mock: &MockUpstream, embeds: &MockUpstream, redis: &RedisServer, model: &str) -> String {
    let extra = format!(
        "redis: {{ url: \"{}\", sync_interval: 50ms, timeout: 300ms }}\ncache:\n  semantic:\n    timeout: 2s\n    verify_sample: 0\n    threshold: 0.9\n    embedder: {{ provider: embeds, model: {model}, dimensions: 64 }}\n",
        redis.url()
    );
    config(&mock.base_url(), &extra).replace(
        "providers:\n",
        &format!("providers:\n  embeds: {{ base_url: \"{}\" }}\n", embeds.base_url()),
    )
}

/// The texts `embeds` was asked to embed with `model`.
fn embedded(embeds: &MockUpstream, model: &str) -> Vec<String> {
    embeds
        .requests()
        .into_iter()
        .map(|r| r.json())
        .filter(|b| b["model"] == model)
        .flat_map(|b| {
            b["input"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn a_shared_entrys_vector_is_used_only_by_pods_on_the_same_embedder() {
    let redis = RedisServer::start();
    let embeds = MockUpstream::start().await.unwrap();
    let (ma, mb, mc) = (
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
    );
    let ta = remote_embedder_config(&ma, &embeds, &redis, "embed-1");
    let tb = remote_embedder_config(&mb, &embeds, &redis, "embed-1");
    let tc = remote_embedder_config(&mc, &embeds, &redis, "embed-2");
    let (a, b, c) = (
        Harness::with_text(ma, ta).await,
        Harness::with_text(mb, tb).await,
        Harness::with_text(mc, tc).await,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let q = "Which documents do I need to open a savings account?";
    assert_eq!(cache_header(&a.chat(chat_body(q)).await), "miss");
    wait_l2(&b, "received", "B to receive A's entry").await;
    wait_l2(&c, "received", "C to receive A's entry").await;
    // C, on another model, embeds the entry's question itself; B uses the vector that came.
    wait_until("C to embed the entry", async || {
        embedded(&embeds, "embed-2").iter().any(|t| t == q)
    })
    .await;
    let reworded = "To open a savings account, which documents do I need?";
    for pod in [&b, &c] {
        assert_eq!(cache_header(&pod.chat(chat_body(reworded)).await), "hit-semantic");
        assert!(pod.mock.requests().is_empty(), "answered from A's entry");
    }
    assert_eq!(
        embedded(&embeds, "embed-1").iter().filter(|t| *t == q).count(),
        1,
        "only A's own lookup embedded it with embed-1: B used the vector that came"
    );
}
