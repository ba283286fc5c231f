// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The real-API-server tier: the Kubernetes parts against kube-apiserver 1.20.2 and etcd, not
//! against this project's own fake (tests/kube_watch.rs, tests/inject.rs keep what 1.20 cannot
//! show: native sidecars, newer fields). One etcd + API server serves the whole binary (its own
//! harness: `harness = false`), each scenario in its own namespace, all stopped by PID at the end.
//!
//! Where no API server can be had (another OS, no `../shared` and no
//! `$LLM_SIDECAR_KUBE_APISERVER`), the tier says so and passes, unless
//! `LLM_SIDECAR_REQUIRE_APISERVER=1` (CI) makes that a failure.
//!
//!   cargo test --test kube_apiserver [-- NAME-SUBSTRING]

mod common;
#[path = "kube_apiserver/server.rs"]
mod server;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use llm_sidecar::config::kube::KubeSource;
use llm_sidecar::inject::{Mode, Settings};
use llm_sidecar::mock::MockUpstream;
use serde_json::{Value, json};
use server::{ADMIN_TOKEN, ApiServer};

const CM: &str = "llm-sidecar-config";

type Scenario = for<'a> fn(&'a mut ApiServer) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let scenarios: [(&str, Scenario); 4] = [
        ("real_1_20_chart_objects_pass_server_side_validation", |s| {
            Box::pin(chart_objects_pass_server_side_validation(s))
        }),
        (
            "real_1_20_configmap_watch_as_the_charts_role_survives_edits_restarts_410_and_deletion",
            |s| Box::pin(configmap_watch_as_the_charts_role(s)),
        ),
        (
            "real_1_20_the_binary_serves_kube_configmap_with_a_kubeconfig_token",
            |s| Box::pin(the_binary_serves_kube_configmap(s)),
        ),
        ("real_1_20_webhook_mutates_pods_created_through_the_api", |s| {
            Box::pin(webhook_mutates_pods_created_through_the_api(s))
        }),
    ];
    let chosen: Vec<_> = scenarios
        .iter()
        .filter(|(name, _)| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if chosen.is_empty() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A watch cache of 0 for ConfigMaps and compaction every 5 s: a watch from an old
    // resourceVersion gets a real `410 Gone` within seconds.
    let started = rt.block_on(ApiServer::start(&[
        "--watch-cache-sizes=configmaps#0",
        "--etcd-compaction-interval=5s",
    ]));
    let mut api = match started {
        Ok(api) => api,
        Err(why) => {
            if std::env::var_os("LLM_SIDECAR_REQUIRE_APISERVER").is_some() {
                panic!("the real kube-apiserver tier cannot run: {why}");
            }
            println!("real kube-apiserver tier SKIPPED: {why}");
            return;
        }
    };
    println!(
        "kube-apiserver 1.20.2 + etcd ready in {:.1} s",
        api.started_in.as_secs_f64()
    );
    let mut failed = Vec::new();
    for (name, run) in chosen {
        println!("test {name} ...");
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(&mut api))));
        match outcome {
            Ok(()) => println!("test {name} ... ok ({:.1} s)", t.elapsed().as_secs_f64()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    drop(api);
    if !failed.is_empty() {
        let log = "(the API server's log is in its temporary folder, removed on exit)";
        panic!("{} scenario(s) failed: {failed:?} {log}", failed.len());
    }
}

/// The chart's objects (manifests/, which scripts/k8s-check keeps identical to the chart),
/// one document each, as JSON.
fn manifest_objects(file: &str) -> Vec<Value> {
    use serde::Deserialize;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The collection an object is created in, or `None` for a kind this tier does not send.
fn collection(v: &Value, ns: &str) -> Option<String> {
    let api = v["apiVersion"].as_str()?;
    let (plural, namespaced) = match v["kind"].as_str()? {
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "ConfigMap" => ("configmaps", true),
        "Secret" => ("secrets", true),
        "Service" => ("services", true),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "Deployment" => ("deployments", true),
        "PodDisruptionBudget" => ("poddisruptionbudgets", true),
        "MutatingWebhookConfiguration" => ("mutatingwebhookconfigurations", false),
        _ => return None,
    };
    let base = if api == "v1" {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{api}")
    };
    Some(if namespaced {
        format!("{base}/namespaces/{ns}/{plural}")
    } else {
        format!("{base}/{plural}")
    })
}

/// A namespace with the `default` ServiceAccount (1.20 has no controller manager to make it)
/// and the `kubernetes.io/metadata.name` label 1.21+ sets by itself.
async fn namespace(api: &ApiServer, name: &str, labels: Value) {
    let mut labels = labels;
    labels["kubernetes.io/metadata.name"] = json!(name);
    api.admin(
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": name, "labels": labels}})),
    )
    .await;
    api.admin(
        "POST",
        &format!("/api/v1/namespaces/{name}/serviceaccounts"),
        Some(&json!({"metadata": {"name": "default"}})),
    )
    .await;
}

async fn chart_objects_pass_server_side_validation(api: &mut ApiServer) {
    let api = &*api;
    // The chart's own namespace exists for real: namespaced dry runs need it.
    namespace(api, "llm-sidecar", json!({})).await;
    let mut checked = Vec::new();
    let mut unknown_to_1_20 = Vec::new();
    let mut namespaces = vec!["llm-sidecar".to_owned()];
    for file in ["llm-sidecar.yaml", "example-app.yaml", "monitoring.yaml"] {
        for obj in manifest_objects(file) {
            let kind = obj["kind"].as_str().unwrap_or("?").to_owned();
            if kind == "Namespace" {
                continue;
            }
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
            if !namespaces.contains(&ns) {
                let (s, _) = api
                    .call(ADMIN_TOKEN, "GET", &format!("/api/v1/namespaces/{ns}"), None)
                    .await;
                if s == 404 {
                    namespace(api, &ns, json!({})).await;
                }
                namespaces.push(ns.clone());
            }
            let Some(path) = collection(&obj, &ns) else {
                unknown_to_1_20.push(format!("{kind} ({file}): no such kind without its CRD"));
                continue;
            };
            let (status, body) = api
                .call(ADMIN_TOKEN, "POST", &format!("{path}?dryRun=All"), Some(&obj))
                .await;
            let (status, body) = if status == 404 && obj["apiVersion"] == "policy/v1" {
                // policy/v1 is 1.21+; v1beta1 has the same fields the chart sets.
                let mut beta = obj.clone();
                beta["apiVersion"] = json!("policy/v1beta1");
                unknown_to_1_20.push(format!("{kind} ({file}): policy/v1 is 1.21+, checked as v1beta1"));
                let path = collection(&beta, &ns).unwrap();
                api.call(ADMIN_TOKEN, "POST", &format!("{path}?dryRun=All"), Some(&beta))
                    .await
            } else {
                (status, body)
            };
            assert!(
                status == 200 || status == 201,
                "{kind} {} from {file} refused by the API server: {status} {body}",
                obj["metadata"]["name"]
            );
            checked.push((kind, ns));
        }
    }
    assert!(checked.len() >= 8, "{checked:?}");
    // The check bites: a type mistake is refused.
    let mut broken = manifest_objects("llm-sidecar.yaml")
        .into_iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    broken["spec"]["replicas"] = json!("two");
    let path = collection(&broken, "llm-sidecar").unwrap();
    let (status, _) = api
        .call(ADMIN_TOKEN, "POST", &format!("{path}?dryRun=All"), Some(&broken))
        .await;
    assert_eq!(status, 400, "a string where an integer belongs is refused");
    println!(
        "server-side validation: {} objects accepted ({}); 1.20 limits: {unknown_to_1_20:?}",
        checked.len(),
        checked.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
    );
}

async fn set_config(api: &ApiServer, ns: &str, body: &str) {
    let path = format!("/api/v1/namespaces/{ns}/configmaps/{CM}");
    let (status, _) = api.call(ADMIN_TOKEN, "GET", &path, None).await;
    let data = json!({"data": {"config.yaml": body}});
    if status == 404 {
        let mut obj = data;
        obj["metadata"] = json!({"name": CM});
        api.admin("POST", &format!("/api/v1/namespaces/{ns}/configmaps"), Some(&obj))
            .await;
    } else {
        api.admin("PATCH", &path, Some(&data)).await;
    }
}

/// A token for `ns/sa` from the TokenRequest API: what kubelet projects into a pod.
async fn service_account_token(api: &ApiServer, ns: &str, sa: &str) -> String {
    let (s, _) = api
        .call(
            ADMIN_TOKEN,
            "GET",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}"),
            None,
        )
        .await;
    if s == 404 {
        api.admin(
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            Some(&json!({"metadata": {"name": sa}})),
        )
        .await;
    }
    let req = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": [server::ISSUER], "expirationSeconds": 3600}
    });
    let v = api
        .admin(
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
            Some(&req),
        )
        .await;
    v["status"]["token"].as_str().unwrap().to_owned()
}

/// A new namespace holding the chart's Role and RoleBinding, as rendered, and a token of a
/// ServiceAccount there: it has exactly the rights the chart grants, so a wrong Role fails.
async fn charts_role_token(api: &ApiServer, ns: &str) -> String {
    namespace(api, ns, json!({})).await;
    for obj in manifest_objects("llm-sidecar.yaml") {
        if obj["kind"] == "Role" || obj["kind"] == "RoleBinding" {
            let mut obj = obj;
            obj["metadata"]["namespace"] = json!(ns);
            api.admin("POST", &collection(&obj, ns).unwrap(), Some(&obj)).await;
        }
    }
    service_account_token(api, ns, "app").await
}

async fn configmap_watch_as_the_charts_role(api: &mut ApiServer) {
    let ns = "cm-watch";
    let token = charts_role_token(api, ns).await;
    // What the Role must not allow: other ConfigMaps, an unfiltered list, Secrets.
    for path in [
        format!("/api/v1/namespaces/{ns}/configmaps/other"),
        format!("/api/v1/namespaces/{ns}/configmaps"),
        format!("/api/v1/namespaces/{ns}/secrets"),
    ] {
        let (status, _) = api.call(&token, "GET", &path, None).await;
        assert_eq!(status, 403, "the chart's Role allows GET {path}");
    }
    let mock = MockUpstream::start().await.unwrap();
    set_config(api, ns, &versioned_config(&mock, "kube-1")).await;
    let (status, _) = api
        .call(&token, "GET", &format!("/api/v1/namespaces/{ns}/configmaps/{CM}"), None)
        .await;
    assert_eq!(status, 200, "the chart's Role allows reading the config");

    let kube = api.kube_client(&token, ns).await;
    let source = KubeSource::new(&format!("{ns}/{CM}"), "config.yaml", Some(kube))
        .await
        .unwrap();
    let h = Harness::with_kube(mock, source).await;
    assert_eq!(h.config_version().await, "kube-1");
    assert_eq!(h.chat(chat_body("hi")).await.status(), 200);

    // Edits are served within the watch's latency.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for i in 2..=8 {
        let v = format!("kube-{i}");
        let t = Instant::now();
        set_config(api, ns, &versioned_config(&h.mock, &v)).await;
        h.served(&v, Duration::from_secs(10)).await;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!("  edit -> served through the real API server (PATCH sent to version seen), sorted: {latencies:?}");
    assert!(latencies[latencies.len() / 2] < Duration::from_secs(2), "{latencies:?}");

    // A bad edit is refused; the last good config keeps serving.
    set_config(api, ns, "routes: [ {").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.config_version().await, "kube-8");
    assert!(
        h.wait_for_metric(r#"llm_sidecar_config_reloads_total{outcome="rejected"}"#)
            .await
            >= 1.0
    );
    set_config(api, ns, &versioned_config(&h.mock, "kube-9")).await;
    h.served("kube-9", Duration::from_secs(10)).await;

    // The API server is killed: requests keep being served; once it is back, an edit arrives.
    api.kill_apiserver();
    assert_eq!(h.chat(chat_body("api server down")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    api.start_apiserver().await.unwrap();
    let restarted = t.elapsed();
    set_config(api, ns, &versioned_config(&h.mock, "after-restart")).await;
    let caught_up = h.served("after-restart", Duration::from_secs(60)).await;
    println!("  API server restarted in {restarted:?}; the edit made after it was served in {caught_up:?}");

    // 410 Gone for real: the sidecar's last resourceVersion is compacted away (other objects
    // churn, compaction runs every 5 s) while the API server is down; its watch then resumes
    // from a version etcd no longer has, and it must re-list to carry on.
    let seen_rv = api
        .admin("GET", &format!("/api/v1/namespaces/{ns}/configmaps/{CM}"), None)
        .await["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    api.admin(
        "POST",
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        Some(&json!({"metadata": {"name": "churn"}, "data": {"i": "0"}})),
    )
    .await;
    // Compaction runs every 5 s; on a slow machine it may take a round or two more.
    let mut expired = Value::Null;
    for round in 0..6 {
        for i in 1..=20 {
            api.admin(
                "PATCH",
                &format!("/api/v1/namespaces/{ns}/configmaps/churn"),
                Some(&json!({"data": {"i": format!("{round}-{i}")}})),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        expired = api
            .call(
                ADMIN_TOKEN,
                "GET",
                &format!(
                    "/api/v1/namespaces/{ns}/configmaps?watch=true&timeoutSeconds=1&fieldSelector=metadata.name%3D{CM}&resourceVersion={seen_rv}"
                ),
                None,
            )
            .await
            .1;
        if expired["object"]["code"] == 410 {
            break;
        }
    }
    assert_eq!(
        expired["object"]["code"], 410,
        "a watch from {seen_rv} is expired now: {expired}"
    );
    api.kill_apiserver();
    api.start_apiserver().await.unwrap();
    set_config(api, ns, &versioned_config(&h.mock, "after-410")).await;
    let after_410 = h.served("after-410", Duration::from_secs(60)).await;
    println!("  after a real 410 Gone, the next edit was served in {after_410:?}");

    // Deleted: keep serving the last good config; re-created: follow it again.
    api.admin("DELETE", &format!("/api/v1/namespaces/{ns}/configmaps/{CM}"), None)
        .await;
    assert!(
        h.wait_for_metric(r#"llm_sidecar_config_reloads_total{outcome="source_gone"}"#)
            .await
            >= 1.0
    );
    assert_eq!(h.config_version().await, "after-410");
    assert_eq!(h.chat(chat_body("after delete")).await.status(), 200);
    set_config(api, ns, &versioned_config(&h.mock, "recreated")).await;
    h.served("recreated", Duration::from_secs(30)).await;
}

/// `llm-sidecar serve --kube-configmap` as a pod runs it: the client from `KUBECONFIG` (here a
/// file holding a token bound by the chart's Role), the config from the API, an edit followed.
async fn the_binary_serves_kube_configmap(api: &mut ApiServer) {
    let api = &*api;
    let ns = "binary";
    let token = charts_role_token(api, ns).await;
    let mock = MockUpstream::start().await.unwrap();
    set_config(api, ns, &versioned_config(&mock, "bin-1")).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig(&token, ns)).unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, admin) = (free(), free());
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_llm-sidecar"))
        .args(["serve", "--kube-configmap", &format!("{ns}/{CM}")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("UPSTREAM_KEY", UPSTREAM_KEY)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("sidecar.log")).unwrap())
        .spawn()
        .unwrap();
    let http = client();
    let get_version = || {
        let http = http.clone();
        async move {
            let r = http.get(format!("http://127.0.0.1:{admin}/admin/config")).send().await;
            match r {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.unwrap_or_default();
                    v["version"].as_str().unwrap_or("").to_owned()
                }
                _ => String::new(),
            }
        }
    };
    let wait_for = |want: &'static str| {
        let get_version = &get_version;
        async move {
            let t = Instant::now();
            while get_version().await != want {
                assert!(t.elapsed() < Duration::from_secs(30), "the binary never served {want}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            t.elapsed()
        }
    };
    let outcome = std::panic::AssertUnwindSafe(async {
        wait_for("bin-1").await;
        println!(
            "  the binary served the ConfigMap's config {:?} after it started",
            started.elapsed()
        );
        let r = http
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .json(&chat_body("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        set_config(api, ns, &versioned_config(&mock, "bin-2")).await;
        let took = wait_for("bin-2").await;
        println!("  and followed an edit in {took:?}");
    });
    let result = futures_util::FutureExt::catch_unwind(outcome).await;
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        let log = std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap_or_default();
        println!("sidecar log:\n{log}");
        std::panic::resume_unwind(e);
    }
}

/// `expected` is contained in `actual`: the API server adds defaults (and its ServiceAccount
/// plugin, re-run after a webhook's mutation, adds the token mount to every container), but
/// never changes or drops what was set. Lists: the expected items, in order, among the served.
fn contained(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|g| contained(v, g))),
        (Value::Array(e), Value::Array(a)) => {
            let mut served = a.iter();
            e.iter().all(|x| served.any(|y| contained(x, y)))
        }
        _ => expected == actual,
    }
}

fn assert_subset(expected: &Value, actual: &Value, at: &str) {
    assert!(contained(expected, actual), "{at}: want {expected}\nserved {actual}");
}

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inject")
        .join(format!("{name}.review.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

async fn webhook_mutates_pods_created_through_the_api(api: &mut ApiServer) {
    let api = &*api;
    use llm_sidecar::inject::server as hook;
    // 1.20 refuses native sidecars (restartPolicy on an init container): plain-container mode.
    let settings = Settings {
        image: "ghcr.io/llm-sidecar/llm-sidecar:0.1.0".into(),
        native_sidecar: false,
        ..Settings::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = server::serving_cert(&api.ca);
    let (cert_path, key_path) = (tmp.path().join("tls.crt"), tmp.path().join("tls.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let reloading = Arc::new(hook::ReloadingCert::new(cert_path.clone(), key_path.clone()).unwrap());
    let tls = hook::tls_config(reloading.clone()).unwrap();
    let (listener, _admin) = hook::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let metrics = Arc::new(llm_sidecar::telemetry::Metrics::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let webhook = tokio::spawn(hook::serve(
        listener,
        tls,
        Arc::new(settings.clone()),
        metrics,
        stop.clone(),
    ));

    // The chart's MutatingWebhookConfiguration, pointed at this process (1.20 cannot dial a
    // Service from outside a cluster) with the CA that signed the webhook's certificate.
    use base64::Engine;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&api.ca_pem);
    let mut config = manifest_objects("llm-sidecar.yaml")
        .into_iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    for w in config["webhooks"].as_array_mut().unwrap() {
        let path = w["clientConfig"]["service"]["path"].as_str().unwrap().to_owned();
        w["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca_bundle});
    }
    api.admin(
        "POST",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        Some(&config),
    )
    .await;
    namespace(api, "apps", json!({})).await;
    namespace(api, "apps-labelled", json!({"llm-sidecar.io/inject": "enabled"})).await;

    let create = |ns: &'static str, pod: Value| async move {
        let t = Instant::now();
        let v = api
            .admin("POST", &format!("/api/v1/namespaces/{ns}/pods"), Some(&pod))
            .await;
        (v, t.elapsed())
    };
    // What the webhook's own patch makes of a fixture pod, offline.
    let expected = |name: &str, mode: Mode| {
        let review = fixture(name);
        let (resp, _) = llm_sidecar::inject::review(&serde_json::to_vec(&review).unwrap(), &settings, mode).unwrap();
        let mut pod = review["request"]["object"].clone();
        if let Some(b64) = resp["response"]["patch"].as_str() {
            let ops: Value =
                serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
            let patch: json_patch::Patch = serde_json::from_value(ops).unwrap();
            json_patch::patch(&mut pod, &patch).unwrap();
        }
        pod
    };
    let pod_of = |name: &str, ns: &str| {
        let mut pod = fixture(name)["request"]["object"].clone();
        pod["metadata"]["namespace"] = json!(ns);
        pod
    };
    let check = |served: &Value, want: &Value, name: &str| {
        for c in want["spec"]["containers"].as_array().unwrap() {
            let got = served["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["name"] == c["name"])
                .unwrap_or_else(|| panic!("{name}: container {} missing: {served}", c["name"]));
            assert_subset(c, got, &format!("{name}.containers[{}]", c["name"]));
        }
        for v in want["spec"]["volumes"].as_array().into_iter().flatten() {
            let got = served["spec"]["volumes"]
                .as_array()
                .and_then(|vs| vs.iter().find(|g| g["name"] == v["name"]))
                .unwrap_or_else(|| panic!("{name}: volume {} missing", v["name"]));
            assert_subset(v, got, &format!("{name}.volumes[{}]", v["name"]));
        }
        if let Some(a) = want["metadata"].get("annotations") {
            assert_subset(a, &served["metadata"]["annotations"], &format!("{name}.annotations"));
        }
    };

    // Annotated pod, plain namespace: injected exactly as the webhook's patch says.
    let (pod, _) = create("apps", pod_of("plain", "apps")).await;
    check(&pod, &expected("plain", Mode::Annotation), "plain");
    // Found only against a real server: the ServiceAccount plugin runs again after the webhook
    // and mounts the pod's token into the injected container too, which is what the sidecar's
    // `--kube-configmap` mode reads the API with.
    let sidecar = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "llm-sidecar")
        .unwrap();
    assert!(
        sidecar["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"),
        "{sidecar}"
    );
    // Every pod of a labelled namespace.
    let (pod, _) = create("apps-labelled", pod_of("namespace-labelled", "apps-labelled")).await;
    check(
        &pod,
        &expected("namespace-labelled", Mode::Namespace),
        "namespace-labelled",
    );
    assert!(
        pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "llm-sidecar")
    );
    // Opted out (in a labelled namespace), or not asked for: unchanged.
    for (ns, name) in [("apps-labelled", "opted-out"), ("apps", "not-requested")] {
        let (pod, _) = create(ns, pod_of(name, ns)).await;
        let names: Vec<_> = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("app")], "{name} left alone");
    }

    // Admission latency: the same pod created where the webhook mutates it and where no
    // webhook is called (the namespace selector excludes the chart's own namespace).
    let (s, _) = api
        .call(ADMIN_TOKEN, "GET", "/api/v1/namespaces/llm-sidecar", None)
        .await;
    if s == 404 {
        namespace(api, "llm-sidecar", json!({})).await;
    }
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..15 {
        with.push(create("apps", pod_of("plain", "apps")).await.1);
        without.push(create("llm-sidecar", pod_of("plain", "llm-sidecar")).await.1);
    }
    // Not called there: the pod comes back as it was sent.
    let (pod, _) = create("llm-sidecar", pod_of("plain", "llm-sidecar")).await;
    assert_eq!(pod["spec"]["containers"].as_array().map(Vec::len), Some(1), "{pod}");
    with.sort();
    without.sort();
    println!(
        "  pod create through the API: median {:?} with the webhook mutating, {:?} with none called (webhook share ~{:?})",
        with[7],
        without[7],
        with[7].saturating_sub(without[7])
    );

    // Certificate rotation under load: pods keep coming while the serving certificate is
    // replaced (as cert-manager renews it: same CA, new key); every one is injected.
    let creating = async {
        let mut injected = 0;
        for _ in 0..30 {
            let (pod, _) = create("apps", pod_of("plain", "apps")).await;
            let names = pod["spec"]["containers"].as_array().unwrap().clone();
            injected += usize::from(names.iter().any(|c| c["name"] == "llm-sidecar"));
        }
        injected
    };
    let rotating = async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (cert, key) = server::serving_cert(&api.ca);
        rotate_cert(&reloading, (&cert_path, &cert), (&key_path, &key));
        cert
    };
    let (injected, new_cert) = tokio::join!(creating, rotating);
    assert_eq!(injected, 30, "every pod created during the rotation was injected");
    // And a new connection is served the new certificate.
    let probe = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(api.ca_pem.as_bytes()).unwrap())
        .tls_info(true)
        .build()
        .unwrap();
    let review = serde_json::to_vec(&fixture("plain")).unwrap();
    let r = probe
        .post(format!("https://127.0.0.1:{port}/inject"))
        .body(review)
        .send()
        .await
        .unwrap();
    let served = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .unwrap();
    use rustls_pki_types::pem::PemObject;
    let want = rustls_pki_types::CertificateDer::from_pem_slice(new_cert.as_bytes()).unwrap();
    assert_eq!(served, want.as_ref(), "the rotated certificate is served");

    // The webhook down: pods are still admitted (failurePolicy: Ignore), without the sidecar.
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), webhook).await;
    let (pod, took) = create("apps", pod_of("plain", "apps")).await;
    let names: Vec<_> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("app")]);
    println!("  with the webhook down the pod was admitted unchanged in {took:?}");
}
