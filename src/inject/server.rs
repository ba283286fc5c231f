//! The webhook over HTTPS: `POST /inject` (pods that ask by annotation) and
//! `POST /inject-namespace` (every pod of a labelled namespace unless it opts out). The
//! certificate and key come from files (a mounted Secret) and are re-read when they change,
//! so cert-manager or the chart can rotate them without a restart. Every review is logged and
//! counted in `llm_sidecar_admissions_total{result}` on the admin port, which also serves
//! `/healthz` and `/readyz` for the webhook Deployment's probes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Mode, Settings, review};
use crate::telemetry::{Metrics, ResultLabels};

/// AdmissionReviews of even very large pods are a few hundred KiB; the API server caps
/// requests at 3 MiB.
const MAX_REVIEW_BYTES: usize = 3 << 20;
/// How often the certificate files are checked for a change.
const CERT_CHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("{0}")]
    Invalid(String),
}

/// A certificate and key read from files, re-read when their modification times change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    checked: Instant,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    current: Arc<CertifiedKey>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| CertError::Read {
            path: p.to_owned(),
            detail: e.to_string(),
        })
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Invalid(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(CertError::Invalid(format!("{} holds no certificate", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| CertError::Invalid(format!("{}: {e}", key.display())))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| CertError::Invalid(format!("{}: {e}", key.display())))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

impl ReloadingCert {
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, CertError> {
        let current = load(&cert, &key)?;
        let stamps = (modified(&cert), modified(&key));
        Ok(ReloadingCert {
            cert,
            key,
            state: Mutex::new(CertState {
                checked: Instant::now(),
                stamps,
                current,
            }),
        })
    }

    /// The current certificate, re-read first if the files changed (checked every few seconds).
    pub(crate) fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut s = self.state.lock().ok()?;
        if s.checked.elapsed() >= CERT_CHECK {
            s.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != s.stamps {
                match load(&self.cert, &self.key) {
                    Ok(c) => {
                        tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
                        s.current = c;
                        s.stamps = stamps;
                    }
                    // Mid-rotation (one file new, the other not yet): keep serving the old pair.
                    Err(error) => tracing::warn!(%error, "webhook certificate not reloaded; keeping the previous one"),
                }
            }
        }
        Some(s.current.clone())
    }

    /// Forces the next handshake to check the files (tests).
    pub fn expire_check(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.checked = Instant::now() - CERT_CHECK;
        }
    }
}

#[derive(Debug)]
struct Resolver(Arc<ReloadingCert>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

pub fn tls_config(cert: Arc<ReloadingCert>) -> Result<rustls::ServerConfig, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CertError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(cert)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

/// Handles one webhook request.
pub(crate) async fn handle(
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let mode = match (req.method(), req.uri().path()) {
        (&Method::POST, "/inject") => Mode::Annotation,
        (&Method::POST, "/inject-namespace") => Mode::Namespace,
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "POST /inject or /inject-namespace\n",
            );
        }
    };
    let count = |result: &'static str| metrics.admissions.get_or_create(&ResultLabels { result }).inc();
    let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            count("error_body");
            tracing::warn!(error = %e, "admission request body unreadable");
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("cannot read the body: {e}\n"),
            );
        }
    };
    match review(&body, &settings, mode) {
        Ok((response, outcome)) => {
            count(outcome.label());
            let r = &response["response"];
            tracing::info!(
                uid = r["uid"].as_str().unwrap_or(""),
                result = outcome.label(),
                "admission review"
            );
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&response).unwrap_or_default(),
            )
        }
        Err(e) => {
            count("error_malformed");
            tracing::warn!(error = %e, "malformed admission review");
            reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"))
        }
    }
}

/// Admin endpoints of the webhook process.
pub(crate) async fn admin(metrics: Arc<Metrics>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" | "/readyz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "try /metrics, /healthz, /readyz\n"),
    }
}

/// How long the admission reviews in flight may take to finish at shutdown: the API server's
/// own default webhook timeout.
pub(crate) const DRAIN: Duration = Duration::from_secs(10);

/// Serves the webhook on `listener` (TLS) until `stop` is cancelled; then it stops accepting
/// and lets the admission reviews in flight finish (a pod admitted half-way would be created
/// without its sidecar, or refused, by `failurePolicy`), for at most `DRAIN` (10 s).
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let graceful = GracefulShutdown::new();
    let conns = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let (acceptor, settings, metrics) = (acceptor.clone(), settings.clone(), metrics.clone());
        let watcher = graceful.watcher();
        conns.spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = service_fn(move |req| {
                let (s, m) = (settings.clone(), metrics.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(s, m, req).await) }
            });
            let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = watcher.watch(http.serve_connection(TokioIo::new(tls), svc)).await;
        });
    }
    drop(listener);
    conns.close();
    let drained = async {
        graceful.shutdown().await;
        conns.wait().await;
    };
    if tokio::time::timeout(DRAIN, drained).await.is_err() {
        tracing::warn!("webhook: admission reviews still open after the drain period; closing them");
    }
}

/// Serves the admin endpoints (plain HTTP) on `listener`.
pub async fn serve_admin(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        // Metrics and health probes, aborted with the process (nothing to drain).
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let m = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(admin(m, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds both listeners (so a test can learn the ports) and returns their addresses.
pub async fn bind(listen: SocketAddr, admin: SocketAddr) -> std::io::Result<(TcpListener, TcpListener)> {
    Ok((TcpListener::bind(listen).await?, TcpListener::bind(admin).await?))
}

/// The `inject` command: serve the webhook and its admin port until SIGTERM or Ctrl-C, then
/// drain the reviews in flight (bounded by `DRAIN`) and stop the admin port last.
pub async fn run(
    settings: Settings,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    listen: SocketAddr,
    admin_listen: SocketAddr,
) -> std::process::ExitCode {
    use crate::app::exit;
    use std::process::ExitCode;
    let tls = match ReloadingCert::new(tls_cert, tls_key).map(Arc::new).and_then(tls_config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("llm-sidecar inject: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let (listener, admin) = match bind(listen, admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("llm-sidecar inject: cannot listen: {e}");
            return ExitCode::from(exit::OS);
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("llm-sidecar inject: cannot handle SIGTERM: {e}");
            return ExitCode::from(exit::OS);
        }
    };
    let metrics = Arc::new(Metrics::new());
    tracing::info!(%listen, admin = %admin_listen, image = &*settings.image, "injection webhook serving");
    let stop = CancellationToken::new();
    // Both handles are awaited (the webhook drains) or aborted below.
    #[allow(clippy::disallowed_methods)]
    let webhook = tokio::spawn(serve(listener, tls, Arc::new(settings), metrics.clone(), stop.clone()));
    #[allow(clippy::disallowed_methods)]
    let admin = tokio::spawn(serve_admin(admin, metrics));
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    stop.cancel();
    let _ = webhook.await;
    admin.abort();
    ExitCode::SUCCESS
}
