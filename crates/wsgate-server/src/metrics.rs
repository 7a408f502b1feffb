//! Prometheus metrics, served on the admin listener only (never on the public port).
//!
//! Counters on the message path are plain atomics; labelled families are touched only per
//! handshake, never per message.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::SystemTime;
use wsgate_reasons::Reason;

type CodeLabel = [(&'static str, &'static str); 1];
type ListenerLabel = [(&'static str, String); 1];

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections_open: Gauge,
    /// Handshakes answered with 101, by route pattern.
    pub admitted: Family<[(&'static str, String); 1], Counter>,
    /// Handshakes refused, by reason code.
    pub refused: Family<CodeLabel, Counter>,
    /// Messages received from clients.
    pub messages_in: Counter,
    /// Messages sent to clients.
    pub messages_out: Counter,
    /// Payload bytes received from clients.
    pub bytes_in: Counter,
    /// Payload bytes sent to clients.
    pub bytes_out: Counter,
    /// Time from the request head to the handshake answer.
    pub handshake_seconds: Histogram,
    /// TLS handshakes that failed or timed out (untrusted client certificates among them).
    pub tls_failures: Counter,
    /// Connections closed because a peer stopped reading (send timeout) or fell too far behind
    /// its room: how often slow consumers are cut off.
    pub slow_closes: Counter,
    /// 1 while a clustered node is connected to Redis, 0 otherwise.
    pub cluster_up: Gauge,
    /// Messages this node published to the other nodes.
    pub cluster_published: Counter,
    /// Messages received from other nodes.
    pub cluster_received: Counter,
    /// Messages not sent to the other nodes because Redis was unreachable.
    pub cluster_dropped: Counter,
    /// Reconnections to Redis after an outage.
    pub cluster_reconnects: Counter,
    /// Configuration reloads by result (`ok`, `error`).
    pub config_reloads: Family<[(&'static str, String); 1], Counter>,
    /// Channel rooms with at least one member.
    pub channel_rooms: Gauge,
    /// Members of channel rooms.
    pub channel_members: Gauge,
    /// Tasks alive in the server's runtime, read when the metrics are scraped: it follows the
    /// connection count, so growth with a steady count is a leak (the soak watches it).
    runtime_tasks: Gauge,
    cert_expiry: Family<ListenerLabel, Gauge<f64, AtomicU64>>,
    cert_not_after: Mutex<Vec<(String, SystemTime)>>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wsgate");
        let m = Metrics {
            connections_open: Gauge::default(),
            admitted: Family::default(),
            refused: Family::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            handshake_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            tls_failures: Counter::default(),
            slow_closes: Counter::default(),
            runtime_tasks: Gauge::default(),
            channel_rooms: Gauge::default(),
            cluster_up: Gauge::default(),
            cluster_published: Counter::default(),
            cluster_received: Counter::default(),
            cluster_dropped: Counter::default(),
            cluster_reconnects: Counter::default(),
            config_reloads: Family::default(),
            channel_members: Gauge::default(),
            cert_expiry: Family::default(),
            cert_not_after: Mutex::new(Vec::new()),
            registry: Registry::default(),
        };
        registry.register(
            "connections_open",
            "Open WebSocket connections",
            m.connections_open.clone(),
        );
        registry.register(
            "handshakes_admitted",
            "Handshakes answered with 101, by route",
            m.admitted.clone(),
        );
        registry.register(
            "handshakes_refused",
            "Handshakes refused, by reason code",
            m.refused.clone(),
        );
        registry.register(
            "messages_in",
            "Messages received from clients",
            m.messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Messages sent to clients",
            m.messages_out.clone(),
        );
        registry.register(
            "bytes_in",
            "Payload bytes received from clients",
            m.bytes_in.clone(),
        );
        registry.register(
            "bytes_out",
            "Payload bytes sent to clients",
            m.bytes_out.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time from request head to handshake answer",
            m.handshake_seconds.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            m.tls_failures.clone(),
        );
        registry.register(
            "runtime_tasks",
            "Tasks alive in the server's runtime (about one per connection, plus listeners)",
            m.runtime_tasks.clone(),
        );
        registry.register(
            "slow_peer_closes",
            "Connections closed because a peer stopped reading or fell too far behind (1013)",
            m.slow_closes.clone(),
        );
        registry.register(
            "channel_rooms",
            "Channel rooms with at least one member",
            m.channel_rooms.clone(),
        );
        registry.register(
            "channel_members",
            "Members of channel rooms (a leaving member is gone at once)",
            m.channel_members.clone(),
        );
        registry.register(
            "cluster_up",
            "1 while this node is connected to the cluster's Redis, 0 otherwise",
            m.cluster_up.clone(),
        );
        registry.register(
            "cluster_published",
            "Messages published to the other nodes",
            m.cluster_published.clone(),
        );
        registry.register(
            "cluster_received",
            "Messages received from the other nodes",
            m.cluster_received.clone(),
        );
        registry.register(
            "cluster_dropped",
            "Messages not sent to the other nodes because Redis was unreachable",
            m.cluster_dropped.clone(),
        );
        registry.register(
            "cluster_reconnects",
            "Reconnections to Redis after an outage",
            m.cluster_reconnects.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result: ok, or error (the previous one stays)",
            m.config_reloads.clone(),
        );
        registry.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the listener's certificate expires (negative once expired)",
            m.cert_expiry.clone(),
        );
        // Pre-create a zero counter per code so dashboards see every code, not only seen ones.
        for r in Reason::ALL.iter().filter(|r| r.is_refusal()) {
            let _ = m.refused.get_or_create(&[("code", r.code())]);
        }
        Metrics { registry, ..m }
    }

    /// Counts one refusal.
    pub fn refused(&self, reason: Reason) {
        self.refused.get_or_create(&[("code", reason.code())]).inc();
    }

    /// Remembers a listener certificate's expiry for the expiry gauge.
    pub fn set_cert_not_after(&self, listener: String, not_after: SystemTime) {
        if let Ok(mut v) = self.cert_not_after.lock() {
            v.retain(|(l, _)| *l != listener);
            v.push((listener, not_after));
        }
    }

    /// Renders the Prometheus text exposition, updating time-derived gauges first.
    pub fn render(&self) -> String {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks
                .set(i64::try_from(h.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        if let Ok(v) = self.cert_not_after.lock() {
            let now = SystemTime::now();
            for (listener, not_after) in v.iter() {
                let secs = match not_after.duration_since(now) {
                    Ok(d) => d.as_secs_f64(),
                    Err(e) => -e.duration().as_secs_f64(),
                };
                self.cert_expiry
                    .get_or_create(&[("listener", listener.clone())])
                    .set(secs);
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out = "# metrics encoding failed\n".to_owned();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
