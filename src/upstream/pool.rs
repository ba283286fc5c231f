//! The open connections to one provider, and the sending of a request on one of them: hyper's
//! connection-level client under a pool of our own. hyper-util's pooled client costs ~1.8 µs
//! of CPU per request more than this in the same bare proxy (15.9 against 17.7 µs: a task
//! spawned per request to hand the connection back, the request's future boxed, the pool's
//! keys and bookkeeping, the connection's details put in each response's extensions) (#19).
//!
//! HTTP/1 connections sit in a ring, in the order they were last taken. A request takes the
//! first one that is ready for a new request (the one taken longest ago, usually) and moves it
//! to the back. A connection whose answer is still being read is simply not ready: it becomes
//! ready again when that body ends, so nothing has to be handed back and nothing rides along
//! with the body. When TLS negotiates HTTP/2, that one connection carries every request.
//!
//! A request that a connection gives back unsent (it had just closed) is sent on another: it
//! never reached the provider, so this cannot send it twice. A connection idle for
//! `idle_timeout` is closed: when a request passes it, or by a reaper while none comes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower_service::Service;

use super::ClientBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection: refused, unreachable, timed out, or TLS failed.
    #[error("connect error: {0}")]
    Connect(#[source] BoxError),
    /// The connection broke (or the provider spoke something that is not HTTP).
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Requests given back unsent before one goes on a new connection.
const GIVE_BACKS: usize = 3;

pub(crate) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    conns: Arc<Mutex<Conns>>,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Conns {
    ring: VecDeque<Http1>,
    http2: Option<Http2>,
    reaper: bool,
}

struct Http1 {
    tx: http1::SendRequest<ClientBody>,
    /// When it was last seen in use (taken, or busy): idle since then at most.
    seen: Instant,
}

impl Http1 {
    /// Whether the pool keeps it: open, and busy or idle for less than `idle_timeout`. A busy
    /// one counts as seen in use now.
    fn keep(&mut self, now: Instant, idle_timeout: Duration) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        if !self.tx.is_ready() {
            self.seen = now;
            return true;
        }
        now.saturating_duration_since(self.seen) < idle_timeout
    }
}

struct Http2 {
    tx: http2::SendRequest<ClientBody>,
    /// When a request last started on it. Letting go of it while a stream is still open is
    /// safe: the connection closes once its streams have ended.
    seen: Instant,
}

impl Http2 {
    /// Whether the pool keeps it: open, and a request started on it within `idle_timeout`.
    fn keep(&self, now: Instant, idle_timeout: Duration) -> bool {
        !self.tx.is_closed() && now.saturating_duration_since(self.seen) < idle_timeout
    }
}

/// What the pool had for a request.
enum Taken<F> {
    /// Sent on a pooled HTTP/1 connection: its response to come.
    Sent(F),
    /// The shared HTTP/2 connection.
    Http2(http2::SendRequest<ClientBody>, Request<ClientBody>),
    /// Nothing usable: connect.
    Nothing(Request<ClientBody>),
}

type Sent = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ClientBody>>>;

/// TCP (no delay, keepalive, `connect_timeout`) and TLS with `tls` for `https` URLs,
/// offering HTTP/2 and HTTP/1.1.
pub(crate) fn connector(tls: rustls::ClientConfig, connect_timeout: Duration) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(30)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

impl Pool {
    pub(crate) fn new(connector: HttpsConnector<HttpConnector>, idle_timeout: Duration) -> Self {
        Pool {
            connector,
            conns: Arc::default(),
            idle_timeout,
        }
    }

    /// Sends `req` (its URI absolute, its `host` set) and waits for the response head. `now`:
    /// the time, read by the caller.
    pub(crate) async fn send(
        &self,
        mut req: Request<ClientBody>,
        now: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        // A connection that gives a request back has closed and leaves the ring at the next
        // pass; after a few such, a new connection rather than another look.
        for _ in 0..GIVE_BACKS {
            match self.take(req, now) {
                Taken::Sent(sent) => match sent.await {
                    Ok(response) => return Ok(response),
                    Err(mut e) => match e.take_message() {
                        // Refused before a byte was written: another connection gets it.
                        Some(back) => req = back,
                        None => return Err(SendError::Http(e.into_error())),
                    },
                },
                Taken::Http2(mut tx, back) => {
                    if tx.ready().await.is_err() {
                        return self.connect_and_send(back, now).await;
                    }
                    return match tx.try_send_request(back).await {
                        Ok(response) => Ok(response),
                        Err(mut e) => match e.take_message() {
                            Some(again) => self.connect_and_send(again, now).await,
                            None => Err(SendError::Http(e.into_error())),
                        },
                    };
                }
                Taken::Nothing(back) => return self.connect_and_send(back, now).await,
            }
        }
        self.connect_and_send(req, now).await
    }

    /// A pooled connection for `req`, the request already handed to it if HTTP/1: taking and
    /// sending happen under one lock, so two requests never take the same connection.
    fn take(&self, req: Request<ClientBody>, now: Instant) -> Taken<impl Future<Output = Sent> + use<>> {
        let Ok(mut conns) = self.conns.lock() else {
            return Taken::Nothing(req);
        };
        if let Some(h) = &mut conns.http2 {
            if h.keep(now, self.idle_timeout) {
                h.seen = now;
                return Taken::Http2(h.tx.clone(), req);
            }
            conns.http2 = None;
        }
        for _ in 0..conns.ring.len() {
            let Some(mut c) = conns.ring.pop_front() else { break };
            // Dropping the last handle closes an idle connection.
            if !c.keep(now, self.idle_timeout) {
                continue;
            }
            if !c.tx.is_ready() {
                conns.ring.push_back(c);
                continue;
            }
            c.seen = now;
            let sent = c.tx.try_send_request(origin_form(req));
            conns.ring.push_back(c);
            return Taken::Sent(sent);
        }
        Taken::Nothing(req)
    }

    /// A new connection, kept in the pool, with `req` sent on it.
    async fn connect_and_send(&self, req: Request<ClientBody>, now: Instant) -> Result<Response<Incoming>, SendError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector.call(req.uri().clone()).await.map_err(SendError::Connect)?;
        // hyper-rustls's stream speaks hyper's I/O traits already.
        if io.connected().is_negotiated_h2() {
            let (mut tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            spawn_connection(conn);
            if let Ok(mut conns) = self.conns.lock() {
                conns.http2 = Some(Http2 {
                    tx: tx.clone(),
                    seen: now,
                });
                self.reap_later(&mut conns);
            }
            tx.ready().await?;
            return Ok(tx.send_request(req).await?);
        }
        let (mut tx, conn) = http1::Builder::new().handshake(io).await?;
        spawn_connection(conn);
        // The first request on a connection is taken even before it says it is ready.
        let sent = tx.send_request(origin_form(req));
        self.keep(Http1 { tx, seen: now });
        Ok(sent.await?)
    }

    fn keep(&self, c: Http1) {
        let Ok(mut conns) = self.conns.lock() else { return };
        conns.ring.push_back(c);
        self.reap_later(&mut conns);
    }

    /// Starts the reaper with the first connection.
    fn reap_later(&self, conns: &mut Conns) {
        if !std::mem::replace(&mut conns.reaper, true) {
            // Not a `tasks::Background` task: it holds the pool only weakly and ends with it.
            #[allow(clippy::disallowed_methods)]
            tokio::spawn(reap(Arc::downgrade(&self.conns), self.idle_timeout));
        }
    }

    /// Open HTTP/1 connections (busy or idle), for tests.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.conns
            .lock()
            .map(|c| c.ring.iter().filter(|c| !c.tx.is_closed()).count())
            .unwrap_or(0)
    }
}

/// Runs a connection (reads and writes its bytes). Not a `tasks::Background` task: it ends when
/// the connection closes, which the pool's letting go of it does (what hyper-util's executor
/// did with the same task); at shutdown the drained sidecar's connections are idle.
fn spawn_connection<F>(conn: F)
where
    F: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(conn);
}

/// Closes the connections idle past `idle_timeout` while no request comes to do it; ends with
/// the pool.
async fn reap(conns: Weak<Mutex<Conns>>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(conns) = conns.upgrade() else { return };
        let now = Instant::now();
        if let Ok(mut c) = conns.lock() {
            if c.http2.as_ref().is_some_and(|h| !h.keep(now, idle_timeout)) {
                c.http2 = None;
            }
            c.ring.retain_mut(|c| c.keep(now, idle_timeout));
        }
    }
}

/// The request with its URI in origin form (`/v1/chat/completions?…`), as HTTP/1 sends it to
/// a server (the absolute form is for proxies).
fn origin_form(mut req: Request<ClientBody>) -> Request<ClientBody> {
    let origin = match req.uri().path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    *req.uri_mut() = origin;
    req
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;

    /// A pool trusting only `roots` (none: plain HTTP only).
    fn pool_trusting(roots: rustls::RootCertStore, idle: Duration) -> Pool {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Pool::new(connector(tls, Duration::from_secs(5)), idle)
    }

    fn pool(idle: Duration) -> Pool {
        pool_trusting(rustls::RootCertStore::empty(), idle)
    }

    /// Accepts connections on `listener` for ever, each served by `serve` on a task of its
    /// own; counts them.
    fn accept_counting<F, Fut>(listener: tokio::net::TcpListener, serve: F) -> Arc<std::sync::atomic::AtomicUsize>
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve(s));
            }
        });
        accepted
    }

    /// A server answering with the request's path and body length, counting the connections
    /// it accepted.
    async fn server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = accept_counting(listener, |s| async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let path = req.uri().to_string();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut text = format!("{path} {}", body.len());
                // Too big to sit buffered in the connection: it stays busy until read.
                if path.contains("big") {
                    text.push_str(&" ".repeat(4 << 20));
                }
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(Bytes::from(text))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
        (addr, accepted)
    }

    fn request(addr: std::net::SocketAddr) -> Request<ClientBody> {
        request_to(addr, "/v1/x?q=1")
    }

    fn request_to(addr: std::net::SocketAddr, path: &str) -> Request<ClientBody> {
        let mut req = Request::new(ClientBody::whole(Bytes::from_static(b"abc")));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
        req.headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().unwrap());
        req
    }

    async fn text(r: Response<Incoming>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn one_connection_serves_requests_one_after_another_in_origin_form() {
        let (addr, accepted) = server().await;
        let p = pool(Duration::from_secs(60));
        for _ in 0..5 {
            let r = p.send(request(addr), Instant::now()).await.unwrap();
            assert_eq!(text(r).await, "/v1/x?q=1 3");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(p.open(), 1);
    }

    #[tokio::test]
    async fn a_busy_connection_is_not_shared_and_comes_back_when_its_body_ends() {
        let (addr, accepted) = server().await;
        let p = pool(Duration::from_secs(60));
        // Two big answers held unread at once: two connections.
        let a = p.send(request_to(addr, "/big"), Instant::now()).await.unwrap();
        let b = p.send(request_to(addr, "/big"), Instant::now()).await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(text(a).await.starts_with("/big 3 "));
        assert!(text(b).await.starts_with("/big 3 "));
        // Both ready again: no third.
        for _ in 0..4 {
            text(p.send(request(addr), Instant::now()).await.unwrap()).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_costs_its_connection_not_the_next_request() {
        let (addr, _) = server().await;
        let p = pool(Duration::from_secs(60));
        drop(p.send(request_to(addr, "/big"), Instant::now()).await.unwrap());
        for _ in 0..3 {
            let r = p.send(request(addr), Instant::now()).await.unwrap();
            assert_eq!(text(r).await, "/v1/x?q=1 3");
        }
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_without_failing_the_request() {
        // Answers once per connection, then closes it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        accept_counting(listener, |s| async move {
            let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                let mut r = Response::new(http_body_util::Full::new(Bytes::from_static(b"once")));
                r.headers_mut()
                    .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                Ok::<_, std::convert::Infallible>(r)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
        let p = pool(Duration::from_secs(60));
        for _ in 0..4 {
            let r = p.send(request(addr), Instant::now()).await.unwrap();
            assert_eq!(text(r).await, "once");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, accepted) = server().await;
        let p = pool(Duration::from_millis(50));
        text(p.send(request(addr), Instant::now()).await.unwrap()).await;
        assert_eq!(p.open(), 1);
        // The reaper closes it with no request passing by...
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(p.open(), 0);
        // ...and the next request connects anew.
        text(p.send(request(addr), Instant::now()).await.unwrap()).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// Over TLS with HTTP/2 offered, every request shares the one connection.
    #[tokio::test]
    async fn http2_over_tls_carries_every_request_on_one_connection() {
        use rustls_pki_types::pem::PemObject;
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.signing_key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        server_cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = accept_counting(listener, move |s| {
            let acceptor = acceptor.clone();
            async move {
                let s = acceptor.accept(s).await.unwrap();
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let text = format!("{:?} {}", req.version(), req.uri());
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let p = Arc::new(pool_trusting(roots, Duration::from_secs(60)));
        let url = format!("https://localhost:{port}/v1/x");
        let send = |p: Arc<Pool>| {
            let url = url.clone();
            async move {
                let mut req = Request::new(ClientBody::empty());
                *req.uri_mut() = url.parse().unwrap();
                let r = p.send(req, Instant::now()).await.unwrap();
                assert_eq!(r.version(), http::Version::HTTP_2);
                text(r).await
            }
        };
        assert_eq!(send(p.clone()).await, format!("HTTP/2.0 https://localhost:{port}/v1/x"));
        let together = futures_util::future::join_all((0..5).map(|_| send(p.clone()))).await;
        assert!(together.iter().all(|t| t.starts_with("HTTP/2.0")), "{together:?}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let p = pool(Duration::from_secs(60));
        let e = p.send(request(addr), Instant::now()).await.unwrap_err();
        assert!(matches!(e, SendError::Connect(_)), "{e:?}");
    }
}
