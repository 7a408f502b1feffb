//! Minimal echo servers built the way their crates' documentation shows, so wsgate is measured
//! against what a user would otherwise write, in the same run.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves echo with tokio-tungstenite until the process is killed.
pub async fn tungstenite(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_binary() || msg.is_text() {
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                } else if msg.is_close() {
                    return;
                }
            }
        });
    }
}

/// Serves echo with fastwebsockets (hyper upgrade + FragmentCollector) until killed.
pub async fn fastwebsockets(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|mut req| async move {
                let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req)?;
                tokio::spawn(async move {
                    let Ok(ws) = fut.await else { return };
                    let mut ws = fastwebsockets::FragmentCollector::new(ws);
                    loop {
                        let Ok(frame) = ws.read_frame().await else {
                            return;
                        };
                        match frame.opcode {
                            fastwebsockets::OpCode::Close => return,
                            fastwebsockets::OpCode::Text | fastwebsockets::OpCode::Binary => {}
                            _ => continue,
                        }
                        if ws.write_frame(frame).await.is_err() {
                            return;
                        }
                    }
                });
                Ok::<_, fastwebsockets::WebSocketError>(resp.map(|_| Empty::<Bytes>::new()))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}
