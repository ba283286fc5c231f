//! One real etcd + kube-apiserver 1.20.2 for this test binary: the API server binary from
//! `scripts/kube-apiserver` (a checksum-verified cache outside the checkout, filled from
//! `../shared/kube-apiserver` or built from Debian's source) or `$LLM_SIDECAR_KUBE_APISERVER`,
//! etcd from Debian's `etcd-server`. Everything
//! listens on free 127.0.0.1 ports, lives in one temporary folder and is stopped by PID.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
/// The service-account issuer and audience (what kubelet's projected tokens carry in a cluster).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub struct ApiServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub ca_pem: String,
    /// The CA's issuer, to sign more serving certificates (the webhook's).
    pub ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    binary: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    extra: Vec<String>,
    etcd_port: u16,
    pub started_in: Duration,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The kube-apiserver binary, or why there is none: `$LLM_SIDECAR_KUBE_APISERVER`, else what
/// `scripts/kube-apiserver` finds (its cache, checksum-verified, or `../shared`'s build
/// unpacked into it; `scripts/test` runs it with `--build` first, which compiles one from
/// Debian's source when neither is there).
pub fn find_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LLM_SIDECAR_KUBE_APISERVER") {
        return Ok(PathBuf::from(p));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-apiserver");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

/// A CA and a serving certificate for 127.0.0.1 / localhost signed by it: (cert, key) PEM.
pub fn serving_cert(ca: &rcgen::Issuer<'_, rcgen::KeyPair>) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl ApiServer {
    /// Starts etcd and the API server; `Err` when no API server binary or etcd can be had here.
    pub async fn start(extra: &[&str]) -> Result<ApiServer, String> {
        let binary = find_binary()?;
        let etcd_ok = Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !etcd_ok {
            return Err("no etcd on PATH (apt-get install etcd-server)".into());
        }
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "llm-sidecar test CA");
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let (cert, key) = serving_cert(&ca);
        write(dir.path(), "ca.crt", &ca_pem);
        write(dir.path(), "apiserver.crt", &cert);
        write(dir.path(), "apiserver.key", &key);
        let sa = rcgen::KeyPair::generate().unwrap();
        write(dir.path(), "sa.key", &sa.serialize_pem());
        write(dir.path(), "sa.pub", &sa.public_key_pem());
        write(
            dir.path(),
            "tokens.csv",
            &format!("{ADMIN_TOKEN},admin,uid-admin,\"system:masters\"\n"),
        );
        let mut s = ApiServer {
            dir,
            port: free_port(),
            ca_pem,
            ca,
            binary,
            etcd: None,
            apiserver: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            etcd_port: free_port(),
            started_in: Duration::ZERO,
        };
        let t = Instant::now();
        s.start_etcd();
        s.start_apiserver().await?;
        s.started_in = t.elapsed();
        Ok(s)
    }

    fn log(&self, name: &str) -> Stdio {
        std::fs::File::create(self.dir.path().join(name))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    }

    fn start_etcd(&mut self) {
        let peer = free_port();
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("etcd"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args([
                "--initial-cluster",
                &format!("t={peer_url}"),
                "--initial-cluster-state",
                "new",
            ])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(self.log("etcd.log"))
            .spawn()
            .expect("etcd starts");
        self.etcd = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.etcd_port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "etcd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (Re)starts the API server against the same etcd; waits for `/readyz`.
    pub async fn start_apiserver(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let p = |n: &str| d.join(n).display().to_string();
        let child = Command::new(&self.binary)
            .arg(format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.port))
            .arg("--advertise-address=127.0.0.1")
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg(format!("--cert-dir={}", p("run")))
            .arg(format!("--client-ca-file={}", p("ca.crt")))
            .arg(format!("--token-auth-file={}", p("tokens.csv")))
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!("--service-account-signing-key-file={}", p("sa.key")))
            .arg(format!("--service-account-issuer={ISSUER}"))
            .arg(format!("--api-audiences={ISSUER}"))
            .arg("--authorization-mode=RBAC")
            .arg(
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,\
                 MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            )
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--feature-gates=BoundServiceAccountTokenVolume=true")
            .arg("--profiling=false")
            .arg("--v=1")
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(self.log("apiserver.log"))
            .spawn()
            .map_err(|e| format!("{}: {e}", self.binary.display()))?;
        self.apiserver = Some(child);
        let t = Instant::now();
        let client = self.http();
        loop {
            let ready = client
                .get(self.url("/readyz"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(120) {
                let log = std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                return Err(format!("kube-apiserver not ready after 120 s; log tail:\n{tail}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the API server (SIGKILL: a SIGTERM waits up to 60 s on open watches).
    pub fn kill_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// An HTTPS client that trusts the test CA.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    /// A kubeconfig for `token`, the test CA inline, `namespace` as the default.
    pub fn kubeconfig(&self, token: &str, namespace: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n\
             - name: t\n  context: {{cluster: t, user: u, namespace: {namespace}}}\ncurrent-context: t\n",
            self.url("")
        )
    }

    /// A kube-rs client authenticated by `token` (what the sidecar's pod would hold).
    pub async fn kube_client(&self, token: &str, namespace: &str) -> kube::Client {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig(token, namespace)).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// One API call as `token`: (status, body as JSON, or `null`).
    pub async fn call(&self, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let content_type = if method == reqwest::Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let mut req = self.http().request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b.to_string());
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = r.status().as_u16();
        let v = r.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    /// As the cluster admin; panics unless the status is 2xx.
    pub async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.call(ADMIN_TOKEN, method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {v}");
        v
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill_apiserver();
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
