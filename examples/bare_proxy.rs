// A measurement tool: a failed assumption should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]
//! The floor under the sidecar's proxy hop: hyper's server and hyper's connection-level client
//! over a plain pool of kept-open connections, and nothing else — no parsing, routing, limits,
//! accounting, metrics or logs — forwarding each request to one upstream, the answer read whole
//! like the sidecar reads a JSON answer, on one event-loop thread like the sidecar's default.
//! `benches/load.sh` runs it beside nginx and the sidecar, so what the sidecar costs above hyper
//! itself is measured in the same run. The sidecar's own pool (`upstream::pool`) works the
//! same way; hyper-util's pooled client, which both used before, cost ~1.8 µs more per request.
//!
//!   cargo run --release --example bare_proxy -- 127.0.0.1:18080 http://127.0.0.1:18000
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

type Pool = Arc<Mutex<Vec<http1::SendRequest<Full<Bytes>>>>>;

/// A kept-open connection ready for a request (it is taken out while in use and put back once
/// its answer is read), or a new one.
async fn checkout(pool: &Pool, addr: SocketAddr) -> Option<http1::SendRequest<Full<Bytes>>> {
    loop {
        let s = pool.lock().unwrap().pop();
        match s {
            Some(mut s) => {
                if s.is_closed() {
                    continue;
                }
                if s.ready().await.is_ok() {
                    return Some(s);
                }
            }
            None => break,
        }
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (s, conn) = http1::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(conn);
    Some(s)
}

async fn forward(
    pool: Pool,
    addr: SocketAddr,
    host: http::HeaderValue,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let bad_gateway = || {
        let mut r = Response::new(Full::new(Bytes::from_static(b"bad gateway")));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    };
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(bad_gateway());
    };
    let mut up = Request::new(Full::new(body));
    *up.method_mut() = parts.method;
    *up.uri_mut() = Uri::from_parts({
        let mut p = http::uri::Parts::default();
        p.path_and_query = parts.uri.path_and_query().cloned();
        p
    })
    .unwrap();
    *up.headers_mut() = parts.headers;
    up.headers_mut().insert(http::header::HOST, host);
    let Some(mut s) = checkout(&pool, addr).await else {
        return Ok(bad_gateway());
    };
    let Ok(resp) = s.send_request(up).await else {
        return Ok(bad_gateway());
    };
    let (parts, body) = resp.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(bad_gateway());
    };
    pool.lock().unwrap().push(s);
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().unwrap().parse().unwrap();
    let base: Uri = args.next().unwrap().parse().unwrap();
    let addr: SocketAddr = base.authority().unwrap().as_str().parse().unwrap();
    let host = http::HeaderValue::from_str(base.authority().unwrap().as_str()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pool: Pool = Arc::default();
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (pool, host) = (pool.clone(), host.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| forward(pool.clone(), addr, host.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
