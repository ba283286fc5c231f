// A measurement tool: a failed assumption should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]
//! The floor under the sidecar's proxy hop: hyper's server and hyper-util's pooled client and
//! nothing else — no parsing, routing, limits, accounting, metrics or logs — forwarding each
//! request to one upstream, the answer read whole like the sidecar reads a JSON answer, on one
//! event-loop thread like the sidecar's default. `benches/load.sh` runs it beside nginx and the
//! sidecar, so what the sidecar costs above hyper itself is measured in the same run.
//!
//!   cargo run --release --example bare_proxy -- 127.0.0.1:18080 http://127.0.0.1:18000

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Upstream = Client<HttpConnector, Full<Bytes>>;

async fn forward(client: Upstream, base: Uri, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let bad_gateway = || {
        let mut r = Response::new(Full::new(Bytes::from_static(b"bad gateway")));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    };
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(bad_gateway());
    };
    let mut uri = base.into_parts();
    uri.path_and_query = parts.uri.path_and_query().cloned();
    let mut up = Request::new(Full::new(body));
    *up.method_mut() = parts.method;
    *up.uri_mut() = Uri::from_parts(uri).unwrap();
    *up.headers_mut() = parts.headers;
    up.headers_mut().remove(http::header::HOST);
    let Ok(resp) = client.request(up).await else {
        return Ok(bad_gateway());
    };
    let (parts, body) = resp.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(bad_gateway());
    };
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .expect("usage: bare_proxy LISTEN UPSTREAM_URL")
        .parse()
        .unwrap();
    let base: Uri = args
        .next()
        .expect("usage: bare_proxy LISTEN UPSTREAM_URL")
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client: Upstream = Client::builder(TokioExecutor::new()).build(http);
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| forward(client.clone(), base.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
