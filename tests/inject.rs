// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The injection webhook: golden AdmissionReviews in, patches and patched pods out (the pods
//! are validated against the Kubernetes schemas by `scripts/k8s-check`), and the HTTPS server
//! with certificate rotation. `UPDATE_GOLDEN=1 cargo test --test inject` rewrites the goldens.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use llm_sidecar::inject::{Mode, Outcome, Settings, review};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn settings() -> Settings {
    Settings {
        image: "ghcr.io/llm-sidecar/llm-sidecar:0.1.0".into(),
        ..Settings::default()
    }
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Compares with a golden file, or writes it under UPDATE_GOLDEN=1.
fn golden(name: &str, got: &Value) {
    let path = dir().join(name);
    let text = serde_json::to_string_pretty(got).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want: Value = serde_json::from_slice(&read(name)).unwrap();
    assert_eq!(got, &want, "{name} differs; got:\n{text}");
}

/// Runs one review; returns the outcome and, when patched, checks the goldens.
fn case(name: &str, mode: Mode) -> Outcome {
    let body = read(&format!("{name}.review.json"));
    let (resp, outcome) = review(&body, &settings(), mode).unwrap();
    let input: Value = serde_json::from_slice(&body).unwrap();
    let r = &resp["response"];
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(r["uid"], input["request"]["uid"]);
    assert_eq!(r["allowed"], true, "the webhook never blocks a pod");
    if outcome == Outcome::Injected {
        assert_eq!(r["patchType"], "JSONPatch");
        // The wire format is base64 (kube-rs issue #1781 shows what goes wrong otherwise).
        let b64 = r["patch"].as_str().expect("patch is a base64 string");
        let ops: Value =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
        golden(&format!("{name}.patch.json"), &ops);
        let mut pod = input["request"]["object"].clone();
        let patch: json_patch::Patch = serde_json::from_value(ops).unwrap();
        json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod it was made for");
        golden(&format!("{name}.pod.json"), &pod);
        // Idempotence: the patched pod is left alone.
        let mut again = input.clone();
        again["request"]["object"] = pod;
        let (resp2, outcome2) = review(&serde_json::to_vec(&again).unwrap(), &settings(), mode).unwrap();
        assert_eq!(outcome2, Outcome::AlreadyInjected);
        assert!(resp2["response"].get("patch").is_none());
    } else {
        assert!(r.get("patch").is_none(), "{name}: no patch when not injecting");
    }
    outcome
}

fn pod_of(name: &str) -> Value {
    serde_json::from_slice(&read(&format!("{name}.pod.json"))).unwrap()
}

fn sidecar(pod: &Value) -> Value {
    let all = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .chain(pod["spec"]["containers"].as_array())
        .flatten();
    all.clone()
        .find(|c| c["name"] == "llm-sidecar")
        .cloned()
        .expect("sidecar present")
}

#[test]
fn a_plain_annotated_pod_gets_a_native_sidecar() {
    assert_eq!(case("plain", Mode::Annotation), Outcome::Injected);
    let pod = pod_of("plain");
    let s = sidecar(&pod);
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "llm-sidecar");
    assert_eq!(s["restartPolicy"], "Always");
    assert_eq!(s["image"], "ghcr.io/llm-sidecar/llm-sidecar:0.1.0");
    assert_eq!(
        s["args"],
        serde_json::json!([
            "serve",
            "--kube-configmap",
            "llm-sidecar/llm-sidecar-config",
            "--kube-key",
            "config.yaml",
            "--admin-listen",
            "0.0.0.0:9901"
        ])
    );
    assert_eq!(s["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(s["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(s["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        pod["spec"]["containers"][0]["env"][0]["value"],
        "http://127.0.0.1:8080/v1"
    );
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["llm-sidecar.io/status"], "injected");
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9901");
    assert_eq!(pod["metadata"]["labels"]["llm-sidecar.io/injected"], "true");
    assert_eq!(pod["metadata"]["labels"]["app"], "plain");
}

#[test]
fn existing_init_containers_volumes_env_and_scrape_settings_are_kept() {
    assert_eq!(case("existing-init", Mode::Annotation), Outcome::Injected);
    let pod = pod_of("existing-init");
    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        init,
        ["llm-sidecar", "migrate"],
        "first, so app init containers can call it"
    );
    assert_eq!(pod["spec"]["volumes"][0]["name"], "data");
    let app_env = &pod["spec"]["containers"][0]["env"];
    assert_eq!(app_env[0]["name"], "LOG");
    assert_eq!(app_env[1]["name"], "OPENAI_BASE_URL");
    // A container that set its own base URL keeps it.
    let worker_env = pod["spec"]["containers"][1]["env"].as_array().unwrap();
    assert_eq!(worker_env.len(), 1);
    assert_eq!(worker_env[0]["value"], "https://api.openai.com/v1");
    // The app's own scrape port is not overridden.
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "8000");
}

#[test]
fn annotations_override_image_resources_log_level_config_and_sidecar_kind() {
    assert_eq!(case("overrides", Mode::Annotation), Outcome::Injected);
    let pod = pod_of("overrides");
    assert!(
        pod["spec"].get("initContainers").is_none(),
        "no native sidecar when opted out of it"
    );
    let s = sidecar(&pod);
    assert!(s.get("restartPolicy").is_none());
    assert_eq!(s["image"], "registry.local/llm-sidecar:dev");
    assert_eq!(s["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(s["resources"]["limits"]["cpu"], "500m");
    assert!(
        s["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "RUST_LOG" && e["value"] == "debug")
    );
    assert_eq!(s["args"][1], "--config");
    assert_eq!(s["args"][2], "/etc/llm-sidecar/config.yaml");
    let vol = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "llm-sidecar-config")
        .unwrap();
    assert_eq!(vol["configMap"]["name"], "team-routing");
}

#[test]
fn labelled_namespaces_inject_unless_the_pod_opts_out() {
    assert_eq!(case("namespace-labelled", Mode::Namespace), Outcome::Injected);
    // No service-account token: the API watch cannot work, so the ConfigMap is mounted.
    let s = sidecar(&pod_of("namespace-labelled"));
    assert_eq!(s["args"][1], "--config");
    assert_eq!(case("opted-out", Mode::Namespace), Outcome::OptedOut);
    assert_eq!(case("opted-out", Mode::Annotation), Outcome::OptedOut);
    assert_eq!(case("not-requested", Mode::Annotation), Outcome::NotRequested);
}

#[test]
fn injected_pods_other_kinds_and_unreadable_pods_are_admitted_unchanged() {
    assert_eq!(case("already-injected", Mode::Annotation), Outcome::AlreadyInjected);
    assert_eq!(case("not-a-pod", Mode::Namespace), Outcome::NotAPod);
    assert_eq!(case("unreadable-pod", Mode::Annotation), Outcome::Unreadable);
    let (resp, _) = review(&read("unreadable-pod.review.json"), &settings(), Mode::Annotation).unwrap();
    assert!(
        resp["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("admitted without the sidecar")
    );
}

#[test]
fn malformed_reviews_are_errors_not_panics() {
    for body in [
        &read("malformed.review.json")[..],
        b"",
        b"not json",
        b"[]",
        b"{\"request\": null}",
        b"{\"request\": {\"uid\": 5}}",
    ] {
        assert!(
            review(body, &settings(), Mode::Annotation).is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

/// A self-signed CA and a server certificate for `name`, as PEM (cert, key, ca).
fn certs(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (cert.pem(), key.serialize_pem(), ca_cert.pem())
}

#[tokio::test]
async fn the_https_server_answers_reviews_and_picks_up_a_rotated_certificate() {
    use llm_sidecar::inject::server;
    let tmp = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (tmp.path().join("tls.crt"), tmp.path().join("tls.key"));
    let (cert1, key1, ca1) = certs("localhost");
    std::fs::write(&cert_path, &cert1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let reloading = Arc::new(server::ReloadingCert::new(cert_path.clone(), key_path.clone()).unwrap());
    let tls = server::tls_config(reloading.clone()).unwrap();
    let (listener, admin) = server::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let metrics = Arc::new(llm_sidecar::telemetry::Metrics::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let webhook = tokio::spawn(server::serve(
        listener,
        tls,
        Arc::new(settings()),
        metrics.clone(),
        stop.clone(),
    ));
    let _admin = tokio::spawn(server::serve_admin(admin, metrics));

    let client = |ca: &str| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{}/inject", addr.port());
    let r = client(&ca1)
        .post(&url)
        .body(read("plain.review.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    let r = client(&ca1).post(&url).body("garbage").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let m = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(r#"llm_sidecar_admissions_total{result="injected"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"llm_sidecar_admissions_total{result="error_malformed"} 1"#),
        "{m}"
    );

    // Rotate: a new CA and certificate; after the next check the new one is served.
    let (cert2, key2, ca2) = certs("localhost");
    common::rotate_cert(&reloading, (&cert_path, &cert2), (&key_path, &key2));
    let r = client(&ca2).post(&url).body(read("plain.review.json")).send().await;
    assert_eq!(r.unwrap().status(), 200, "the rotated certificate is served");
    assert!(
        client(&ca1)
            .post(&url)
            .body(read("plain.review.json"))
            .send()
            .await
            .is_err(),
        "the old CA no longer verifies"
    );

    // Shutdown: a kept-alive connection is closed gracefully, the server returns (well within
    // its drain period) and refuses new connections.
    let kept = client(&ca2);
    assert_eq!(
        kept.post(&url)
            .body(read("plain.review.json"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    stop.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), webhook)
        .await
        .expect("the webhook drains and returns")
        .unwrap();
    assert!(kept.post(&url).body(read("plain.review.json")).send().await.is_err());
}
