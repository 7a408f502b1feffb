//! Bytes a client sends after its 101, through the server's own echo engine (frame parsing,
//! unmasking, reassembly with limits, UTF-8 validation, control frames and the close handshake),
//! on an in-memory stream with tokio's clock paused so timers cost no real time. The first byte
//! picks permessage-deflate: none, stateless or contextual (so RSV1 frames are inflated, with the
//! message limit as their bound).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsgate_handshake::deflate::{negotiate, Mode};
use wsgate_server::metrics::Metrics;
use wsgate_server::ws::{run_local, Limits, Local, Params};

fn metrics() -> Arc<Metrics> {
    static M: OnceLock<Arc<Metrics>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Metrics::new())).clone()
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let deflate = match mode % 3 {
        0 => None,
        1 => negotiate(["permessage-deflate"], Mode::Stateless),
        _ => negotiate(["permessage-deflate"], Mode::Contextual),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(wsgate_server::out::Stop::default());
        let params = Box::new(Params {
            local: Local::Echo,
            deflate,
            conn_id: 1,
            // Small limits, so fuzzed lengths reach them.
            limits: Arc::new(Limits {
                max_message: 4096,
                max_frame: 2048,
                ping_interval: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(90),
                max_output: 64 * 1024,
                send_timeout: Duration::from_secs(30),
            }),
            metrics: metrics(),
            shutdown: stop_rx,
        });
        let conn = tokio::spawn(run_local(server, params));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
        conn.await.expect("the connection task never panics");
    });
});
