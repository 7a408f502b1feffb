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
    serve_upgrades(listener, |mut req| async move {
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
    })
    .await
}

/// Accepts connections and serves HTTP/1.1 with upgrades through `handle` until killed.
async fn serve_upgrades<F, Fut, E>(listener: TcpListener, handle: F)
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<Empty<Bytes>>, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .with_upgrades()
                .await;
        });
    }
}

/// Serves echo with yawc and its permessage-deflate (RFC 7692) until killed: the compression
/// baseline, since tungstenite and fastwebsockets do not compress.
pub async fn yawc(listener: TcpListener) {
    serve_upgrades(listener, |mut req| async move {
        let options = yawc::Options::default()
            .with_compression_level(yawc::CompressionLevel::fast())
            .with_limits(16 << 20, 16 << 20);
        let (resp, fut) = yawc::WebSocket::upgrade_with_options(&mut req, options)?;
        tokio::spawn(async move {
            let Ok(mut ws) = fut.await else { return };
            while let Some(frame) = ws.next().await {
                match frame.opcode() {
                    yawc::frame::OpCode::Close => return,
                    yawc::frame::OpCode::Text | yawc::frame::OpCode::Binary => {}
                    _ => continue,
                }
                if ws.send(frame).await.is_err() {
                    return;
                }
            }
        });
        Ok::<_, yawc::WebSocketError>(resp)
    })
    .await
}
