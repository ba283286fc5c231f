//! The integration harness: a mock upstream and a sidecar, both in-process on port 0.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

pub mod faults;
pub mod onnx;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use llm_sidecar::app::{ConfigInput, Options, Sidecar};
use llm_sidecar::mock::MockUpstream;

/// The provider key the sidecar sends upstream (never the app's).
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789";

pub fn vars(name: &str) -> Option<String> {
    match name {
        "UPSTREAM_KEY" => Some(UPSTREAM_KEY.to_owned()),
        _ => None,
    }
}

/// A config in front of `mock`: `chat-model` maps to upstream `mock-upstream-name`.
pub fn config(mock_url: &str, extra: &str) -> String {
    format!(
        r#"
version: test-1
providers:
  mock:
    base_url: {mock_url}
    auth: {{ key_env: UPSTREAM_KEY }}
    timeouts: {{ connect: 500ms, first_byte: 2s, idle: 2s, total: 20s }}
models:
  chat-model:
    provider: mock
    upstream_model: mock-upstream-name
    pricing: {{ input: 1.0, output: 2.0 }}
  embed-model:
    provider: mock
    pricing: {{ input: 0.1, output: 0 }}
routes:
  - name: auto
    models: [auto]
    targets: [{{ model: chat-model }}]
default_route: auto
server:
  max_body_bytes: 65536
  shutdown_grace: 5s
{extra}
"#
    )
}

/// [`config`] with its `version` set to `version` (what `/admin/config` reports once served).
pub fn versioned_config(mock: &MockUpstream, version: &str) -> String {
    config(&mock.base_url(), "").replace("version: test-1", &format!("version: {version}"))
}

/// The assets folder (fetched by scripts/fetch-assets): `$LLM_SIDECAR_ASSETS` or `<crate>/assets`.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("LLM_SIDECAR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

/// A `cache:` section with the real model. Online verification is off unless `extra` sets
/// it: it sends requests upstream at random, which would make request counts flaky.
pub fn cache_section(extra: &str) -> String {
    let verify = if extra.contains("verify_sample") {
        ""
    } else {
        "    verify_sample: 0\n"
    };
    format!(
        "cache:\n  semantic:\n    assets_dir: {}\n    timeout: 2s\n{verify}{extra}",
        assets_dir().display()
    )
}

pub struct Harness {
    pub mock: MockUpstream,
    pub sidecar: Option<Sidecar>,
    pub client: reqwest::Client,
    pub dir: Option<tempfile::TempDir>,
}

impl Harness {
    pub async fn start() -> Harness {
        let mock = MockUpstream::start().await.expect("mock starts");
        let text = config(&mock.base_url(), "");
        Self::with_text(mock, text).await
    }

    pub async fn with_text(mock: MockUpstream, text: String) -> Harness {
        Self::with_input(mock, ConfigInput::Text(text), None).await
    }

    /// A sidecar started on `input`; `dir` (where its config lives) is kept as long as it.
    async fn with_input(mock: MockUpstream, input: ConfigInput, dir: Option<tempfile::TempDir>) -> Harness {
        let sidecar = Sidecar::start(options(input)).await.expect("sidecar starts");
        Harness {
            mock,
            sidecar: Some(sidecar),
            client: client(),
            dir,
        }
    }

    /// A sidecar reading a plain config file (edited in place by the test).
    pub async fn with_file(mock: MockUpstream, text: String) -> (Harness, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sidecar.yaml");
        std::fs::write(&path, &text).expect("write");
        let h = Self::with_input(mock, ConfigInput::File(path.clone()), Some(dir)).await;
        (h, path)
    }

    /// A sidecar reading its config from a ConfigMap through the Kubernetes API.
    pub async fn with_kube(mock: MockUpstream, source: llm_sidecar::config::kube::KubeSource) -> Harness {
        Self::with_input(mock, ConfigInput::Kube(Box::new(source)), None).await
    }

    /// The `version` of the config being served.
    pub async fn config_version(&self) -> String {
        self.admin_get("/admin/config").await["version"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Waits until the sidecar serves config `want`; returns how long it took.
    pub async fn served(&self, want: &str, within: Duration) -> Duration {
        let start = std::time::Instant::now();
        while self.config_version().await != want {
            assert!(
                start.elapsed() < within,
                "config {want} not served within {within:?} (at {})",
                self.config_version().await
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }

    /// A sidecar reading a kubelet-style mounted ConfigMap folder.
    pub async fn with_mounted(mock: MockUpstream, text: String) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        kubelet_write(dir.path(), "config.yaml", &text);
        let path = dir.path().join("config.yaml");
        Self::with_input(mock, ConfigInput::File(path), Some(dir)).await
    }

    pub fn sidecar(&self) -> &Sidecar {
        self.sidecar.as_ref().expect("sidecar running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar().app_addr())
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar().admin_addr())
    }

    pub async fn chat(&self, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

/// Starts a sidecar on `text`, which must be refused at start; returns the error as shown.
pub async fn refused(text: String) -> String {
    match Sidecar::start(options(ConfigInput::Text(text.clone()))).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("the config was accepted:\n{text}"),
    }
}

pub fn options(config: ConfigInput) -> Options {
    Options {
        vars: Arc::new(vars),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..Options::new(config)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Reproduces kubelet's AtomicWriter: the new content goes into a fresh timestamped folder,
/// `..data_tmp` is pointed at it and renamed over `..data` (the atomic swap), the user-visible
/// `key -> ..data/key` link is created if missing, and the old folder is removed.
pub fn kubelet_write(dir: &Path, key: &str, content: &str) {
    use std::os::unix::fs::symlink;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let ts = format!("..2026_11_21_10_00_00.{:09}", n);
    let ts_dir = dir.join(&ts);
    std::fs::create_dir(&ts_dir).expect("ts dir");
    std::fs::write(ts_dir.join(key), content).expect("write");
    let data = dir.join("..data");
    let old: Option<PathBuf> = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&ts, &tmp).expect("symlink tmp");
    std::fs::rename(&tmp, &data).expect("atomic swap");
    let link = dir.join(key);
    if std::fs::symlink_metadata(&link).is_err() {
        symlink(format!("..data/{key}"), &link).expect("key link");
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
}

/// Replaces the webhook's certificate and key as a renewed Secret would, with their mtime moved
/// forward (so the change shows even on coarse filesystems), and makes the server check now.
pub fn rotate_cert(
    reloading: &llm_sidecar::inject::server::ReloadingCert,
    (cert_path, cert): (&Path, &str),
    (key_path, key): (&Path, &str),
) {
    std::fs::write(cert_path, cert).expect("write cert");
    std::fs::write(key_path, key).expect("write key");
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    for p in [cert_path, key_path] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(later))
            .expect("set mtime");
    }
    reloading.expire_check();
}

pub fn chat_body(content: &str) -> serde_json::Value {
    serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": content}]})
}

/// A streaming chat request body.
pub fn stream_body(content: &str) -> serde_json::Value {
    let mut body = chat_body(content);
    body["stream"] = serde_json::json!(true);
    body
}

/// Reads an SSE response to the end and returns the data payloads.
pub async fn sse_events(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.expect("stream body");
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Value of a metric sample line (exact label match), or 0.
/// The JSON chunks of an SSE stream (without `[DONE]`, which must end it) and the text of
/// their content deltas.
pub fn stream_chunks(events: &[String]) -> (Vec<serde_json::Value>, String) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("a JSON chunk"))
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (chunks, text)
}

pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or(0.0)
}

impl Harness {
    /// POSTs to the admin port and returns the JSON answer.
    pub async fn admin_post(&self, path: &str) -> serde_json::Value {
        self.client
            .post(self.admin(path))
            .send()
            .await
            .expect("admin")
            .json()
            .await
            .expect("json")
    }

    /// A chat request with extra headers.
    pub async fn chat_with(&self, body: serde_json::Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client.post(self.url("/v1/chat/completions")).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request sent")
    }

    /// `GET` on the admin port, as JSON.
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.admin(path))
            .send()
            .await
            .expect("admin request sent")
            .json()
            .await
            .expect("admin JSON")
    }

    /// The entry of a JSON array whose `key` equals `value`.
    pub fn find<'a>(list: &'a serde_json::Value, key: &str, value: &str) -> &'a serde_json::Value {
        list.as_array()
            .and_then(|a| a.iter().find(|x| x[key] == value))
            .unwrap_or_else(|| panic!("no {key}={value} in {list}"))
    }

    /// Polls `/metrics` until `series` is non-zero (or 4 s pass); returns its value.
    pub async fn wait_for_metric(&self, series: &str) -> f64 {
        for _ in 0..200 {
            let v = metric(&self.metrics().await, series);
            if v > 0.0 {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        0.0
    }
}

/// The `x-llm-sidecar-cache` header of a response ("" when absent).
pub fn cache_header(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-llm-sidecar-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Inserts go into the index off the request path; give them a moment.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// Asks `first` (a fresh question: it must miss), lets its answer be stored, then asks `then`;
/// returns `then`'s cache header.
pub async fn ask_after(h: &Harness, first: &str, then: &str) -> String {
    assert_eq!(cache_header(&h.chat(chat_body(first)).await), "miss", "{first}");
    settle().await;
    cache_header(&h.chat(chat_body(then)).await)
}

/// A real `redis-server` (Debian's package) on a free port, for fleet-mode tests. Killed on
/// drop. `kill` and `restart` simulate an outage (no persistence: a restart is empty).
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// With extra `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut r = RedisServer {
            port,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(&bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (apt-get install redis-server): {e}"));
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
