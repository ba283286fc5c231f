//! The plugin examples in `examples/`, built and run: each registers its extension on a
//! sidecar in front of the mock and returns what it saw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../examples/plugin_strategy.rs"]
mod plugin_strategy;

#[allow(dead_code)]
#[path = "../examples/plugin_cache_store.rs"]
mod plugin_cache_store;

#[allow(dead_code)]
#[path = "../examples/plugin_sink.rs"]
mod plugin_sink;

#[tokio::test]
async fn a_registered_strategy_orders_the_route() {
    let answered = plugin_strategy::run().await;
    let models: Vec<&str> = answered.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(models, ["large", "small", "large"], "{answered:?}");
}

#[tokio::test]
async fn a_registered_cache_store_serves_another_sidecars_answer() {
    let (statuses, upstream) = plugin_cache_store::run().await;
    assert_eq!(statuses, ["miss", "hit-exact"]);
    assert_eq!(upstream, 1, "the second sidecar did not ask the provider");
}

#[tokio::test]
async fn a_registered_sink_is_told_every_request() {
    let counted = plugin_sink::run().await;
    let (a, b) = (counted["a"], counted["b"]);
    assert_eq!((a.0, b.0), (2, 1));
    assert!(a.1 > 0 && b.1 > 0, "{counted:?}");
    assert!((a.2 - 2.0 * b.2).abs() < 1e-12 && b.2 > 0.0, "{counted:?}");
}

/// "hi" to model `m` through `sidecar`.
async fn ask_hi(sidecar: &llm_sidecar::app::Sidecar) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", sidecar.app_addr()))
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

/// A config with one model `m` on `mock`, and `extra` after it.
fn one_model(mock: &llm_sidecar::mock::MockUpstream, extra: &str) -> String {
    format!(
        "providers: {{ mock: {{ base_url: \"{}\" }} }}\nmodels: {{ m: {{ provider: mock }} }}\n{extra}",
        mock.base_url()
    )
}

#[tokio::test]
async fn a_plugin_nobody_registered_is_refused_at_start_and_at_reload() {
    use llm_sidecar::app::{Options, Sidecar};
    let mock = llm_sidecar::mock::MockUpstream::start().await.unwrap();
    let base = one_model(&mock, "");
    let with_plugin = format!(
        "{base}routes: [{{ name: r, models: [x], strategy: plugin, plugin: nobody, targets: [{{ model: m }}] }}]\n"
    );
    let any = "127.0.0.1:0".parse().unwrap();
    let err = match Sidecar::start(Options::from_yaml(with_plugin.clone()).listen(any).admin_listen(any)).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an unregistered plugin was accepted"),
    };
    assert!(
        err.contains("routes[0].plugin") && err.contains("\"nobody\" is not a registered strategy"),
        "{err}"
    );

    // A file config: the edit naming it is refused, the last good config keeps serving.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, format!("version: good\n{base}")).unwrap();
    let sidecar = Sidecar::start(Options::from_file(&path).listen(any).admin_listen(any))
        .await
        .unwrap();
    std::fs::write(&path, format!("version: bad\n{with_plugin}")).unwrap();
    sidecar.reload(true).await;
    let config: serde_json::Value = reqwest::get(format!("http://{}/admin/config", sidecar.admin_addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["version"], "good");
    sidecar.shutdown().await;
}

/// A store that answers every key with `answer` after `delay`.
struct Scripted {
    answer: &'static str,
    delay: std::time::Duration,
}

impl llm_sidecar::plugin::CacheStore for Scripted {
    fn get<'a>(&'a self, _: &'a llm_sidecar::plugin::CacheKey) -> llm_sidecar::plugin::StoreFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            Some(llm_sidecar::plugin::StoredAnswer {
                answer: bytes::Bytes::from_static(self.answer.as_bytes()),
                model: "m".into(),
            })
        })
    }

    fn put(&self, _: &llm_sidecar::plugin::CacheKey, _: llm_sidecar::plugin::StoredAnswer, _: std::time::Duration) {}
}

#[tokio::test]
async fn a_store_answer_that_is_broken_or_late_is_a_miss() {
    use llm_sidecar::app::{Options, Sidecar};
    use std::time::Duration;
    let mock = llm_sidecar::mock::MockUpstream::start().await.unwrap();
    let config = one_model(&mock, "cache: { semantic: { enabled: false, timeout: 100ms } }\n");
    let any = "127.0.0.1:0".parse().unwrap();
    for (answer, delay, want, counted) in [
        (
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"from the store"},"finish_reason":"stop"}]}"#,
            0,
            "hit-exact",
            "hit",
        ),
        (
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"trunc"#,
            0,
            "miss",
            "malformed",
        ),
        (
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"late"},"finish_reason":"stop"}]}"#,
            1000,
            "miss",
            "timeout",
        ),
    ] {
        let store = Scripted {
            answer,
            delay: Duration::from_millis(delay),
        };
        let sidecar = Sidecar::start(
            Options::from_yaml(config.clone())
                .listen(any)
                .admin_listen(any)
                .cache_store(store),
        )
        .await
        .unwrap();
        let r = ask_hi(&sidecar).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-llm-sidecar-cache"], want, "{counted}");
        let body: serde_json::Value = r.json().await.unwrap();
        let content = body["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
        assert_eq!(content == "from the store", want == "hit-exact", "{content}");
        let m = sidecar.metrics_text();
        assert!(
            m.contains(&format!(
                "llm_sidecar_cache_store_lookups_total{{result=\"{counted}\"}} 1"
            )),
            "{m}"
        );
        sidecar.shutdown().await;
    }
}

#[tokio::test]
async fn a_config_given_as_a_value_is_validated_like_yaml() {
    use llm_sidecar::app::{Options, Sidecar};
    let mock = llm_sidecar::mock::MockUpstream::start().await.unwrap();
    let mut config = serde_json::json!({
        "providers": { "mock": { "base_url": mock.base_url() } },
        "models": { "m": { "provider": "mock" } },
        "admin_listen": "127.0.0.1:0",
    });
    let any = "127.0.0.1:0".parse().unwrap();
    let sidecar = Sidecar::start(Options::from_value(&config).listen(any)).await.unwrap();
    let r = ask_hi(&sidecar).await;
    assert_eq!(r.status(), 200);
    sidecar.shutdown().await;
    config["models"]["m"]["colour"] = "red".into();
    let err = match Sidecar::start(Options::from_value(&config).listen(any)).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an unknown key was accepted"),
    };
    assert!(err.contains("models.m") && err.contains("colour"), "{err}");
}
