//! The doctor's RFC 8441 check against a local server made with h2 and rustls (its certificate
//! made by rcgen), on 127.0.0.1: the server answers HTTP/1.1 WebSocket handshakes properly and,
//! over HTTP/2, advertises (or not) SETTINGS_ENABLE_CONNECT_PROTOCOL and answers the extended
//! CONNECT as the known broken proxies do (405, a reset) or as it should (200).

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wsgate_doctor::{diagnose, Diagnosis, Options, TokenVia};

#[derive(Clone, Copy)]
enum Mode {
    /// ALPN http/1.1 only.
    NoH2,
    /// h2 without SETTINGS_ENABLE_CONNECT_PROTOCOL.
    NoSetting,
    /// h2 with the setting; the CONNECT gets this status.
    Answer(u16),
    /// h2 with the setting; the CONNECT's stream is reset.
    Reset,
}

/// Starts the server; returns its port and the directory holding the CA file `cert.pem` (the
/// self-signed certificate).
async fn server(mode: Mode) -> (u16, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = cert.cert.pem();
    let dir = std::env::temp_dir().join(format!(
        "wsgate-h2-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("cert.pem");
    std::fs::write(&ca, &pem).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = match mode {
        Mode::NoH2 => vec![b"http/1.1".to_vec()],
        _ => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    serve_h2(tls, mode).await;
                } else {
                    serve_http1(tls).await;
                }
            });
        }
    });
    (port, dir)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn serve_h2<IO>(io: IO, mode: Mode)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut builder = h2::server::Builder::new();
    if !matches!(mode, Mode::NoSetting) {
        builder.enable_connect_protocol();
    }
    let Ok(mut conn) = builder.handshake::<_, bytes::Bytes>(io).await else {
        return;
    };
    while let Some(Ok((_req, mut respond))) = conn.accept().await {
        match mode {
            Mode::Answer(status) => {
                let resp = http::Response::builder().status(status).body(()).unwrap();
                let _ = respond.send_response(resp, status != 200);
            }
            Mode::Reset => respond.send_reset(h2::Reason::INTERNAL_ERROR),
            _ => {
                let resp = http::Response::builder().status(404).body(()).unwrap();
                let _ = respond.send_response(resp, true);
            }
        }
    }
}

/// A correct HTTP/1.1 WebSocket endpoint: the 101, then pongs for pings and a close for a close.
async fn serve_http1<IO>(mut io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let key = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("sec-websocket-key:")
                .then(|| l[18..].trim().to_owned())
        })
        .unwrap_or_default();
    let accept = wsgate_handshake::accept_key(key.as_bytes());
    let answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    if io.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut frames = buf[end..].to_vec();
    loop {
        // Small masked client frames only (the doctor's ping and close).
        while frames.len() >= 6 && frames.len() >= 6 + (frames[1] & 0x7f) as usize {
            let op = frames[0] & 0x0f;
            let len = (frames[1] & 0x7f) as usize;
            let mask = [frames[2], frames[3], frames[4], frames[5]];
            let payload: Vec<u8> = frames[6..6 + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            frames.drain(..6 + len);
            let reply_op = match op {
                0x9 => 0xA,
                0x8 => 0x8,
                _ => continue,
            };
            let mut out = vec![0x80 | reply_op, payload.len() as u8];
            out.extend_from_slice(&payload);
            if io.write_all(&out).await.is_err() || op == 0x8 {
                return;
            }
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => frames.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn doctor(mode: Mode) -> Diagnosis {
    let (port, dir) = server(mode).await;
    let opts = Options {
        url: format!("wss://localhost:{port}/ws"),
        origin: Some("https://app.example".into()),
        headers: Vec::new(),
        token: None,
        token_via: TokenVia::Header,
        subprotocols: Vec::new(),
        cacert: Some(dir.join("cert.pem")),
        client_cert: None,
        insecure: false,
        resolve: Some("127.0.0.1".parse().unwrap()),
        timeout: Duration::from_secs(3),
        experiments: true,
        hold: None,
    };
    let d = diagnose(&opts).await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
    d
}

fn h2_step(d: &Diagnosis) -> &wsgate_doctor::Step {
    d.steps.iter().find(|s| s.name == "h2").unwrap()
}

#[tokio::test]
async fn an_advertised_extended_connect_answered_405_breaks_browsers() {
    let d = doctor(Mode::Answer(405)).await;
    assert_eq!(
        d.cause.as_deref(),
        Some("h2.extended_connect"),
        "{:?}",
        d.steps
    );
    assert!(!d.ok && !h2_step(&d).ok);
    assert!(
        h2_step(&d).detail.contains("got 405"),
        "{}",
        h2_step(&d).detail
    );
    assert!(d
        .fixes
        .iter()
        .any(|f| f.text.contains("SETTINGS_ENABLE_CONNECT_PROTOCOL")));
    // The HTTP/1.1 walk itself worked.
    assert!(d.steps.iter().any(|s| s.name == "websocket" && s.ok));
}

#[tokio::test]
async fn a_reset_extended_connect_breaks_browsers() {
    let d = doctor(Mode::Reset).await;
    assert_eq!(
        d.cause.as_deref(),
        Some("h2.extended_connect"),
        "{:?}",
        d.steps
    );
    assert!(
        h2_step(&d).detail.contains("reset"),
        "{}",
        h2_step(&d).detail
    );
}

#[tokio::test]
async fn a_working_extended_connect_is_reported_as_working() {
    let d = doctor(Mode::Answer(200)).await;
    assert!(d.ok, "{:?} {:?}", d.cause, d.steps);
    assert!(h2_step(&d).ok && h2_step(&d).detail.contains("got 200"));
}

#[tokio::test]
async fn without_h2_or_without_the_setting_browsers_use_http1() {
    let d = doctor(Mode::NoH2).await;
    assert!(
        d.ok && h2_step(&d).detail.contains("not offered"),
        "{:?}",
        d.steps
    );
    let d = doctor(Mode::NoSetting).await;
    assert!(
        d.ok && h2_step(&d)
            .detail
            .contains("without SETTINGS_ENABLE_CONNECT_PROTOCOL"),
        "{:?}",
        d.steps
    );
}
