//! A server's life: binding the listeners (and checking TLS files first), the state every
//! connection shares, serving until told to stop, certificate reloads, and the drain. What
//! happens on one connection is in [`crate::accept`] (up to the request head), then
//! [`crate::handshake`] (the decision, the answer and the connection's task).

use crate::accept::{accept_loop, Bound};
use crate::config::Config;
use crate::decision::Gatekeeper;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::response::LogLimiter;
use crate::{tls, ws};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A start-up failure: the message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration (including TLS files) is wrong.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// An address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it? Pick another port in the configuration")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub config: Config,
    /// The handshake decision and the counters it takes from.
    pub gate: Gatekeeper,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub next_conn: AtomicU64,
    /// Connections per address still before their first request head.
    pub in_progress: Arc<wsgate_admission::limits::InProgress>,
    pub log_limiter: LogLimiter,
    pub external_cache: wsgate_admission::external::DecisionCache,
    pub external_tls: Option<TlsConnector>,
    pub shutdown: watch::Receiver<bool>,
    pub upstream_tls: Vec<Option<TlsConnector>>,
    /// The limits every admitted connection runs with (one copy, shared).
    pub conn_limits: Arc<ws::Limits>,
    /// The other nodes, on a clustered node.
    pub cluster: Option<crate::cluster::Cluster>,
}

/// A bound, ready-to-run server.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Bound>,
    admin: Option<TcpListener>,
    shutdown_tx: watch::Sender<bool>,
    reloaders: Vec<(usize, Arc<tls::CertReloader>)>,
    /// SIGHUP, registered as soon as the server exists: its default action ends the process, and
    /// an operator's `systemctl reload` must never drop connections.
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

/// What a listener turned out to be bound to, for the start-up banner.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// The real address (port 0 resolved).
    pub address: SocketAddr,
    /// Whether it terminates TLS (`wss://`).
    pub tls: bool,
}

/// Checks everything `serve` would check before binding (configuration, TLS files, upstream CAs).
pub fn preflight(
    config: &Config,
) -> Result<Vec<Option<tls::CertInfo>>, crate::config::ConfigError> {
    let mut infos = Vec::new();
    for l in &config.listeners {
        infos.push(match &l.tls {
            Some(t) => Some(tls::server_config(t, &config.source)?.2),
            None => None,
        });
    }
    upstream_connectors(config)?;
    Ok(infos)
}

fn upstream_connectors(
    config: &Config,
) -> Result<Vec<Option<TlsConnector>>, crate::config::ConfigError> {
    config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| match &r.upstream {
            Some(u) if u.endpoint.tls => tls::client_config(u.ca_file.as_deref())
                .map(|c| Some(TlsConnector::from(c)))
                .map_err(|message| crate::config::ConfigError {
                    file: config.source.clone(),
                    key: format!("route[{i}].upstream_ca"),
                    message,
                }),
            _ => Ok(None),
        })
        .collect()
}

impl Server {
    /// Validates TLS material and binds every listener; nothing is served yet.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        let mut listeners = Vec::new();
        let mut reloaders = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let tls = match &l.tls {
                Some(t) => {
                    let (server_config, reloader, info) = tls::server_config(t, &config.source)?;
                    reloaders.push((i, reloader));
                    if info.expires_soon {
                        tracing::warn!(
                            listener = %l.address,
                            subject = %info.subject,
                            expires = %tls::iso_date(info.not_after),
                            "TLS certificate expires within 14 days: renew it"
                        );
                    }
                    metrics.set_cert_not_after(format!("listener[{i}]"), info.not_after);
                    Some(TlsAcceptor::from(server_config))
                }
                None => None,
            };
            let listener =
                TcpListener::bind(l.address)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: l.address,
                        what: format!("listener[{i}]"),
                        source,
                    })?;
            listeners.push(Bound {
                index: i,
                listener,
                tls,
                explain: l.explain,
                proxy_protocol: l.proxy_protocol,
            });
        }
        let admin = match config.admin {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            addr,
                            what: "admin".into(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let upstream_tls = upstream_connectors(&config)?;
        let conn_limits = Arc::new(ws::Limits {
            max_message: config.limits.max_message_bytes,
            max_frame: config.limits.max_frame_bytes,
            ping_interval: config.limits.ping_interval,
            idle_timeout: config.limits.idle_timeout,
            max_output: config.limits.max_output_bytes,
            send_timeout: config.limits.send_timeout,
        });
        let (shutdown_tx, shutdown) = watch::channel(false);
        // Identity providers' keys: fetched now (up to 5 s, so the first tokens find them), then
        // kept fresh in the background.
        crate::jwks::start(
            &config.jwks,
            std::time::Duration::from_secs(5),
            shutdown.clone(),
        )
        .await;
        let gate = Gatekeeper::new(&config);
        let cluster = config.cluster.as_ref().map(|c| {
            crate::ids::set_node(&c.node_id);
            crate::cluster::Cluster::start(
                c,
                metrics.clone(),
                gate.global().bans.clone(),
                shutdown.clone(),
            )
        });
        let in_progress =
            wsgate_admission::limits::InProgress::new(config.limits.max_handshakes_per_client);
        let external_tls = if config.routes.iter().any(|r| {
            r.policies
                .iter()
                .any(|p| p.external.as_ref().is_some_and(|x| x.endpoint.tls))
        }) {
            let c = tls::client_config(None).map_err(|message| crate::config::ConfigError {
                file: config.source.clone(),
                key: "route".into(),
                message,
            })?;
            Some(TlsConnector::from(c))
        } else {
            None
        };
        let log_limiter =
            LogLimiter::new(config.logging.refusal_burst, config.logging.refusal_window);
        #[cfg(unix)]
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        Ok(Server {
            #[cfg(unix)]
            hup,
            shared: Arc::new(Shared {
                config,
                gate,
                hub: Arc::new(Hub::counted(&metrics, cluster.clone())),
                cluster,
                metrics,
                next_conn: AtomicU64::new(1),
                in_progress,
                log_limiter,
                external_cache: Default::default(),
                external_tls,
                shutdown,
                upstream_tls,
                conn_limits,
            }),
            listeners,
            admin,
            shutdown_tx,
            reloaders,
        })
    }

    /// The public listeners' real addresses.
    pub fn listeners(&self) -> Vec<BoundListener> {
        self.listeners
            .iter()
            .filter_map(|b| {
                b.listener.local_addr().ok().map(|address| BoundListener {
                    address,
                    tls: b.tls.is_some(),
                })
            })
            .collect()
    }

    /// The admin listener's real address.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Serves until `stop` completes, then drains: refuse new handshakes, send close 1001 to every
    /// connection, and wait up to `limits.drain_timeout` for them to finish.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let (track_tx, mut track_rx) = mpsc::channel::<()>(1);
        let mut accept_tasks = Vec::new();
        for b in self.listeners {
            let shared = self.shared.clone();
            let track = track_tx.clone();
            accept_tasks.push(tokio::spawn(accept_loop(b, shared, track)));
        }
        if let Some(admin) = self.admin {
            accept_tasks.push(tokio::spawn(crate::admin::serve(
                admin,
                self.shared.clone(),
            )));
        }
        accept_tasks.push(tokio::spawn(reload_loop(
            self.reloaders,
            self.shared.clone(),
            #[cfg(unix)]
            self.hup,
        )));
        stop.await;
        let drain = self.shared.config.limits.drain_timeout;
        tracing::info!(
            open = self.shared.gate.open_connections(),
            drain_timeout = ?drain,
            "shutting down: refusing new handshakes and closing connections with 1001"
        );
        self.shared.gate.start_draining();
        for t in &accept_tasks {
            t.abort();
        }
        let _ = self.shutdown_tx.send(true);
        drop(track_tx);
        match tokio::time::timeout(drain, track_rx.recv()).await {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                open = self.shared.gate.open_connections(),
                "drain timeout reached; dropping the remaining connections"
            ),
        }
    }
}

/// Reloads listener certificates when their files change (checked every 2 s) or on SIGHUP; a bad
/// new file is logged and the certificate in use is kept. SIGHUP never ends the process.
async fn reload_loop(
    reloaders: Vec<(usize, Arc<tls::CertReloader>)>,
    shared: Arc<Shared>,
    #[cfg(unix)] mut hup: Option<tokio::signal::unix::Signal>,
) {
    loop {
        #[cfg(unix)]
        let forced = match hup.as_mut() {
            Some(h) => tokio::select! {
                _ = h.recv() => true,
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => false,
            },
            None => {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                false
            }
        };
        #[cfg(not(unix))]
        let forced = {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            false
        };
        if forced {
            tracing::info!(
                certificates = reloaders.len(),
                "SIGHUP: TLS certificates re-read; the configuration file is read at start only; open connections are untouched"
            );
        }
        for (i, r) in &reloaders {
            let result = if forced {
                Some(r.reload())
            } else {
                r.reload_if_changed()
            };
            match result {
                None => {}
                Some(Ok(info)) => {
                    shared
                        .metrics
                        .set_cert_not_after(format!("listener[{i}]"), info.not_after);
                    tracing::info!(
                        listener = i,
                        subject = %info.subject,
                        expires = %tls::iso_date(info.not_after),
                        "TLS certificate reloaded; open connections keep theirs"
                    );
                }
                Some(Err(e)) => tracing::error!(
                    listener = i,
                    files = %r.describe(),
                    error = %e,
                    "TLS certificate reload failed; still serving the previous certificate"
                ),
            }
        }
    }
}
