//! Reads a PROXY protocol header (v1 or v2) off a new connection, exactly and no further, so the
//! bytes after it reach TLS or HTTP untouched. Parsing is `wsgate_admission::proxy_protocol`.

use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt};
use wsgate_admission::proxy_protocol::{parse_v1, parse_v2, v2_length, V1_MAX, V2_SIGNATURE};

/// The client address the header states (`None` for LOCAL/UNKNOWN), or why there is no valid header.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, String> {
    let io = |e: std::io::Error| format!("connection ended before a PROXY header: {e}");
    let mut start = [0u8; 6];
    stream.read_exact(&mut start).await.map_err(io)?;
    if &start == b"PROXY " {
        let mut line = start.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(format!("PROXY v1 header longer than {V1_MAX} bytes"));
            }
            line.push(stream.read_u8().await.map_err(io)?);
        }
        return parse_v1(&line);
    }
    if start[..] == V2_SIGNATURE[..6] {
        let mut head = [0u8; 16];
        head[..6].copy_from_slice(&start);
        stream.read_exact(&mut head[6..]).await.map_err(io)?;
        let mut body = vec![0u8; v2_length(&head)?];
        stream.read_exact(&mut body).await.map_err(io)?;
        return parse_v2(&head, &body);
    }
    Err("the connection did not start with a PROXY protocol header (the listener has proxy_protocol = true)".into())
}
