// Test helpers may unwrap (a failed assumption is a failed test) and spawn freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]
//! The config from a ConfigMap watched through the Kubernetes API, against an in-process fake
//! API server that does what a real one does for one ConfigMap: get, list (with a resource
//! version), chunked watch that replays events newer than the requested version, bookmarks,
//! `ERROR 410 Gone` for expired versions, dropped connections, restarts, and deletion.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use llm_sidecar::app::{ConfigInput, Sidecar};
use llm_sidecar::config::kube::KubeSource;
use llm_sidecar::mock::MockUpstream;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const NS: &str = "platform";
const NAME: &str = "llm-sidecar-config";

type Chunk = Result<Frame<Bytes>, Infallible>;
type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct State {
    rv: u64,
    object: Option<Value>,
    /// (resource version, event type, object) of every change.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches started before this version get 410 Gone (etcd compaction).
    compacted: u64,
    watchers: Vec<mpsc::Sender<Chunk>>,
    down: bool,
    /// Requests seen: "list", "watch", "get", "refused".
    seen: Vec<&'static str>,
}

struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _task: tokio::task::JoinHandle<()>,
}

fn line(v: &Value) -> Chunk {
    Ok(Frame::data(Bytes::from(format!("{v}\n"))))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn full(code: StatusCode, v: &Value) -> Response<BoxBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(Self::handle(&s, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeApi {
            addr,
            state,
            _task: task,
        }
    }

    fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<BoxBody> {
        let mut s = state.lock().unwrap();
        if s.down {
            s.seen.push("refused");
            return full(
                StatusCode::SERVICE_UNAVAILABLE,
                &status(503, "ServiceUnavailable", "restarting"),
            );
        }
        let path = req.uri().path().to_owned();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=")))
            .collect();
        let base = format!("/api/v1/namespaces/{NS}/configmaps");
        if path == format!("{base}/{NAME}") {
            s.seen.push("get");
            return match &s.object {
                Some(o) => full(StatusCode::OK, o),
                None => full(StatusCode::NOT_FOUND, &status(404, "NotFound", "configmaps not found")),
            };
        }
        if path != base {
            return full(StatusCode::NOT_FOUND, &status(404, "NotFound", "no such path"));
        }
        assert_eq!(
            query.get("fieldSelector").map(String::as_str),
            Some("metadata.name=llm-sidecar-config"),
            "the watch is restricted to one name (RBAC resourceNames)"
        );
        if query.get("watch").map(String::as_str) != Some("true") {
            s.seen.push("list");
            let list = json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": s.rv.to_string()}, "items": s.object.iter().collect::<Vec<_>>()});
            return full(StatusCode::OK, &list);
        }
        s.seen.push("watch");
        let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let (tx, rx) = mpsc::channel(64);
        if from < s.compacted {
            let _ = tx.try_send(line(
                &json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")}),
            ));
        } else {
            for (rv, kind, obj) in s.history.iter().filter(|(rv, _, _)| *rv > from) {
                let _ = tx.try_send(line(&json!({"type": kind, "object": obj})));
                let _ = rv;
            }
            let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": s.rv.to_string()}}});
            let _ = tx.try_send(line(&bookmark));
            s.watchers.push(tx);
        }
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    }

    fn change(&self, kind: &'static str, data: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let obj = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": NS, "uid": "cm-uid-1", "resourceVersion": s.rv.to_string()},
            "data": data.map(|d| json!({"config.yaml": d})).unwrap_or(json!({})),
        });
        s.object = (kind != "DELETED").then(|| obj.clone());
        let rv = s.rv;
        s.history.push((rv, kind, obj.clone()));
        let event = json!({"type": kind, "object": obj});
        s.watchers.retain(|w| w.try_send(line(&event)).is_ok());
    }

    fn set(&self, text: &str) {
        let kind = if self.state.lock().unwrap().object.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.change(kind, Some(text));
    }

    /// Expires every watch: open ones get `ERROR 410`, and re-watching from an old version too.
    fn expire(&self) {
        let mut s = self.state.lock().unwrap();
        s.compacted = s.rv + 1;
        let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
        for w in s.watchers.drain(..) {
            let _ = w.try_send(line(&gone));
        }
    }

    /// The API server goes away (connections dropped, requests refused) until `up`.
    fn down(&self) {
        let mut s = self.state.lock().unwrap();
        s.down = true;
        s.watchers.clear();
    }

    fn up(&self) {
        self.state.lock().unwrap().down = false;
    }

    fn seen(&self, what: &str) -> usize {
        self.state.lock().unwrap().seen.iter().filter(|s| **s == what).count()
    }

    fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        config.default_namespace = "default".into();
        kube::Client::try_from(config).unwrap()
    }
}

#[tokio::test]
async fn a_configmap_watched_through_the_api_survives_expiry_restarts_and_deletion() {
    let api = FakeApi::start().await;
    let mock = MockUpstream::start().await.unwrap();
    api.set(&versioned_config(&mock, "kube-1"));
    let source = KubeSource::new(&format!("{NS}/{NAME}"), "config.yaml", Some(api.client()))
        .await
        .unwrap();
    let h = Harness::with_kube(mock, source).await;
    assert_eq!(h.config_version().await, "kube-1");
    assert_eq!(h.chat(chat_body("hi")).await.status(), 200);

    // An edit is served within the watch's latency.
    h.served("kube-1", Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // let the watch connect
    let mut latencies = Vec::new();
    for i in 2..=6 {
        let v = format!("kube-{i}");
        api.set(&versioned_config(&h.mock, &v));
        latencies.push(h.served(&v, Duration::from_secs(15)).await);
    }
    latencies.sort();
    println!("edit→served through the API watch: {latencies:?}");
    assert!(latencies[2] < Duration::from_secs(1), "{latencies:?}");

    // 410 Gone: the watcher re-lists at once and carries on. (Against the real API server,
    // tests/kube_apiserver.rs, a backoff there held the next edit for 6 s.)
    let lists = api.seen("list");
    api.expire();
    api.set(&versioned_config(&h.mock, "after-410"));
    let after_410 = h.served("after-410", Duration::from_secs(15)).await;
    assert!(api.seen("list") > lists, "re-listed after 410");
    assert!(
        after_410 < Duration::from_millis(300),
        "re-listed without a backoff: {after_410:?}"
    );

    // The API server restarts; an edit made meanwhile arrives once it is back.
    api.down();
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.set(&versioned_config(&h.mock, "during-restart"));
    assert_eq!(h.chat(chat_body("still serving")).await.status(), 200);
    api.up();
    let waited = h.served("during-restart", Duration::from_secs(15)).await;
    println!("caught up after an API server restart in {waited:?}");

    // A bad edit is rejected; the last good config keeps serving.
    api.set("routes: [ {");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.config_version().await, "during-restart");
    let m = h.metrics().await;
    assert!(metric(&m, r#"llm_sidecar_config_reloads_total{outcome="rejected"}"#) >= 1.0);

    // Deleted: keep serving; re-created: follow it again.
    api.change("DELETED", None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.config_version().await, "during-restart");
    assert_eq!(h.chat(chat_body("after delete")).await.status(), 200);
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, r#"llm_sidecar_config_reloads_total{outcome="source_gone"}"#),
        1.0
    );
    api.set(&versioned_config(&h.mock, "recreated"));
    h.served("recreated", Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_missing_configmap_or_key_fails_start_clearly() {
    let api = FakeApi::start().await;
    let source = KubeSource::new(&format!("{NS}/{NAME}"), "config.yaml", Some(api.client()))
        .await
        .unwrap();
    let err = Sidecar::start(options(ConfigInput::Kube(Box::new(source.clone()))))
        .await
        .err()
        .expect("no ConfigMap, no start");
    assert!(
        err.to_string().contains("ConfigMap platform/llm-sidecar-config"),
        "{err}"
    );
    api.change("ADDED", Some("x"));
    // Present but under another key.
    let source = KubeSource::new(&format!("{NS}/{NAME}"), "other.yaml", Some(api.client()))
        .await
        .unwrap();
    let err = Sidecar::start(options(ConfigInput::Kube(Box::new(source))))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("has no key \"other.yaml\""), "{err}");
    assert_eq!(err.exit_code(), 64);
}
