//! The admin listener: Prometheus metrics at `/metrics` and a health check at `/healthz` (503
//! while draining, so a load balancer stops sending new clients).

use crate::server::Live;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Serves the admin listener until the server stops.
pub(crate) async fn serve(listener: TcpListener, live: Arc<Live>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(serve_one(stream, live.clone()));
    }
}

async fn serve_one(stream: TcpStream, live: Arc<Live>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = live.load();
        async move {
            let (status, ctype, body) = match req.uri().path() {
                "/metrics" => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    shared.metrics.render(),
                ),
                "/healthz" if shared.gate.draining() => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".to_owned(),
                ),
                "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
                _ => (
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "try /metrics or /healthz\n".to_owned(),
                ),
            };
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
