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
use wsgate_admission::jwt::RemoteKeys;

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
    /// Connection ids, unique across reloads (a room tells its members apart by them).
    pub next_conn: Arc<AtomicU64>,
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
    /// What the admin page shows and acts on: open connections, refusals, history.
    pub console: Arc<crate::console::Console>,
}

impl Shared {
    /// The state of a reloaded configuration: new routes, policies, limits and TLS connectors;
    /// the same metrics, rooms, cluster link, counters and shutdown signal.
    fn reloaded(&self, config: Config) -> Result<Shared, crate::config::ConfigError> {
        let upstream_tls = upstream_connectors(&config)?;
        let external_tls = external_connector(&config)?;
        self.in_progress
            .set_max(config.limits.max_handshakes_per_client);
        Ok(Shared {
            gate: self.gate.reloaded(&config),
            metrics: self.metrics.clone(),
            hub: self.hub.clone(),
            next_conn: self.next_conn.clone(),
            in_progress: self.in_progress.clone(),
            log_limiter: LogLimiter::new(
                config.logging.refusal_burst,
                config.logging.refusal_window,
            ),
            external_cache: Default::default(),
            external_tls,
            shutdown: self.shutdown.clone(),
            upstream_tls,
            conn_limits: Arc::new(conn_limits(&config)),
            cluster: self.cluster.clone(),
            console: self.console.clone(),
            config,
        })
    }

    /// The position in this configuration of a listener known by its key.
    pub(crate) fn listener_index(&self, key: &ListenerKey) -> Option<usize> {
        listener_keys(&self.config).iter().position(|k| k == key)
    }
}

/// A listener as a reload recognises it: its configured address, and which of the listeners
/// with that address it is (port 0 may appear more than once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenerKey {
    address: SocketAddr,
    ordinal: usize,
}

fn listener_keys(config: &Config) -> Vec<ListenerKey> {
    let mut keys: Vec<ListenerKey> = Vec::new();
    for l in &config.listeners {
        let ordinal = keys.iter().filter(|k| k.address == l.address).count();
        keys.push(ListenerKey {
            address: l.address,
            ordinal,
        });
    }
    keys
}

/// The configuration in force: what each new connection and handshake reads; a reload replaces
/// it, and connections already open keep the one they started with.
pub(crate) struct Live {
    current: std::sync::RwLock<Arc<Shared>>,
}

impl Live {
    pub(crate) fn load(&self) -> Arc<Shared> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn store(&self, shared: Arc<Shared>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = shared;
    }
}

/// An admin page's reload: answered with the change summary or the error.
pub(crate) type ReloadRequest = tokio::sync::oneshot::Sender<Result<String, String>>;

/// How the command line takes part in a reload.
pub struct Reloader {
    /// Re-reads the configuration (the file, with the command line's overrides put back); the
    /// error says what is wrong.
    pub load: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
    /// Called once a reloaded configuration is in force (e.g. to change the log level).
    pub applied: Box<dyn Fn(&Config) + Send + Sync>,
}

fn conn_limits(config: &Config) -> ws::Limits {
    ws::Limits {
        max_message: config.limits.max_message_bytes,
        max_frame: config.limits.max_frame_bytes,
        ping_interval: config.limits.ping_interval,
        idle_timeout: config.limits.idle_timeout,
        max_output: config.limits.max_output_bytes,
        send_timeout: config.limits.send_timeout,
    }
}

fn external_connector(config: &Config) -> Result<Option<TlsConnector>, crate::config::ConfigError> {
    if !config.routes.iter().any(|r| {
        r.policies
            .iter()
            .any(|p| p.external.as_ref().is_some_and(|x| x.endpoint.tls))
    }) {
        return Ok(None);
    }
    let c = tls::client_config(None).map_err(|message| crate::config::ConfigError {
        file: config.source.clone(),
        key: "route".into(),
        message,
    })?;
    Ok(Some(TlsConnector::from(c)))
}

/// A bound, ready-to-run server.
pub struct Server {
    live: Arc<Live>,
    listeners: Vec<Bound>,
    admin: Option<TcpListener>,
    shutdown_tx: watch::Sender<bool>,
    reloaders: Vec<(ListenerKey, Arc<tls::CertReloader>)>,
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

/// Binds the listeners of `config` that `wanted` picks (all at start; the new ones at a reload),
/// with their TLS acceptors and certificate reloaders.
async fn bind_listeners(
    config: &Config,
    metrics: &Metrics,
    wanted: impl Fn(&ListenerKey) -> bool,
) -> Result<(Vec<Bound>, Vec<(ListenerKey, Arc<tls::CertReloader>)>), StartError> {
    let mut listeners = Vec::new();
    let mut reloaders = Vec::new();
    for (i, (l, key)) in config
        .listeners
        .iter()
        .zip(listener_keys(config))
        .enumerate()
    {
        if !wanted(&key) {
            continue;
        }
        let tls = match &l.tls {
            Some(t) => {
                let (server_config, reloader, info) = tls::server_config(t, &config.source)?;
                reloaders.push((key, reloader));
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
        let listener = TcpListener::bind(l.address)
            .await
            .map_err(|source| StartError::Bind {
                addr: l.address,
                what: format!("listener[{i}]"),
                source,
            })?;
        listeners.push(Bound { key, listener, tls });
    }
    Ok((listeners, reloaders))
}

impl Server {
    /// Validates TLS material and binds every listener; nothing is served yet.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        let (listeners, reloaders) = bind_listeners(&config, &metrics, |_| true).await?;
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
        let conn_limits = Arc::new(conn_limits(&config));
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
        let external_tls = external_connector(&config)?;
        let log_limiter =
            LogLimiter::new(config.logging.refusal_burst, config.logging.refusal_window);
        #[cfg(unix)]
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        Ok(Server {
            #[cfg(unix)]
            hup,
            live: Arc::new(Live {
                current: std::sync::RwLock::new(Arc::new(Shared {
                    config,
                    gate,
                    hub: Arc::new(Hub::counted(&metrics, cluster.clone())),
                    cluster,
                    metrics,
                    next_conn: Arc::new(AtomicU64::new(1)),
                    in_progress,
                    log_limiter,
                    external_cache: Default::default(),
                    external_tls,
                    shutdown,
                    upstream_tls,
                    conn_limits,
                    console: Arc::new(crate::console::Console::new()),
                })),
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
        self.run_reloading(stop, None).await
    }

    /// [`Server::run`], re-reading the configuration with `reload` on SIGHUP: new handshakes
    /// follow the new configuration at once, open connections keep running untouched, listeners
    /// added or removed open or close, and a configuration that fails is logged and not used.
    pub async fn run_reloading(
        self,
        stop: impl std::future::Future<Output = ()>,
        reload: Option<Reloader>,
    ) {
        let (track_tx, mut track_rx) = mpsc::channel::<()>(1);
        let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
        let mut admin_task = None;
        if let Some(admin) = self.admin {
            admin_task = Some(tokio::spawn(crate::admin::serve(
                admin,
                self.live.clone(),
                reload_tx,
            )));
        }
        let mut supervisor = Supervisor {
            live: self.live.clone(),
            accepts: Vec::new(),
            reloaders: self.reloaders,
            track: track_tx.clone(),
            reload,
            asked: reload_rx,
        };
        for b in self.listeners {
            supervisor.spawn(b);
        }
        let live = self.live.clone();
        let supervising = tokio::spawn(supervisor.run(
            #[cfg(unix)]
            self.hup,
        ));
        stop.await;
        // The supervisor stops first, so no reload starts a listener during the drain; dropping it
        // ends the accept loops it owns.
        supervising.abort();
        let _ = supervising.await;
        if let Some(t) = admin_task {
            t.abort();
        }
        let shared = live.load();
        let drain = shared.config.limits.drain_timeout;
        tracing::info!(
            open = shared.gate.open_connections(),
            drain_timeout = ?drain,
            "shutting down: refusing new handshakes and closing connections with 1001"
        );
        shared.gate.start_draining();
        let _ = self.shutdown_tx.send(true);
        shared.console.shut_down();
        drop(track_tx);
        match tokio::time::timeout(drain, track_rx.recv()).await {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                open = shared.gate.open_connections(),
                "drain timeout reached; dropping the remaining connections"
            ),
        }
    }
}

/// Owns the accept loops and the certificate reloaders; reloads certificates when their files
/// change (checked every 2 s) and, on SIGHUP, the certificates and the configuration.
struct Supervisor {
    live: Arc<Live>,
    accepts: Vec<(ListenerKey, AbortOnDrop)>,
    reloaders: Vec<(ListenerKey, Arc<tls::CertReloader>)>,
    track: mpsc::Sender<()>,
    reload: Option<Reloader>,
    /// Reloads asked for by the admin page.
    asked: mpsc::Receiver<ReloadRequest>,
}

/// What started a reload: the signal (nobody waits for the outcome) or the admin page.
enum Trigger {
    Timer,
    Signal,
    Admin(ReloadRequest),
}

/// An accept loop, stopped when its listener is removed or the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Supervisor {
    fn spawn(&mut self, b: Bound) {
        let key = b.key;
        let task = tokio::spawn(accept_loop(b, self.live.clone(), self.track.clone()));
        self.accepts.push((key, AbortOnDrop(task)));
    }

    async fn run(mut self, #[cfg(unix)] mut hup: Option<tokio::signal::unix::Signal>) {
        loop {
            let tick = tokio::time::sleep(std::time::Duration::from_secs(2));
            #[cfg(unix)]
            let trigger = match hup.as_mut() {
                Some(h) => tokio::select! {
                    _ = h.recv() => Trigger::Signal,
                    Some(r) = self.asked.recv() => Trigger::Admin(r),
                    _ = tick => Trigger::Timer,
                },
                None => tokio::select! {
                    Some(r) = self.asked.recv() => Trigger::Admin(r),
                    _ = tick => Trigger::Timer,
                },
            };
            #[cfg(not(unix))]
            let trigger = tokio::select! {
                Some(r) = self.asked.recv() => Trigger::Admin(r),
                _ = tick => Trigger::Timer,
            };
            let shared = self.live.load();
            let forced = !matches!(trigger, Trigger::Timer);
            reload_certificates(&self.reloaders, &shared, forced);
            match trigger {
                Trigger::Timer => {}
                Trigger::Signal => {
                    let _ = self.reload_config(&shared, "SIGHUP").await;
                }
                Trigger::Admin(answer) => {
                    let outcome = self.reload_config(&shared, "admin page").await;
                    let _ = answer.send(outcome);
                }
            }
        }
    }

    /// SIGHUP or the admin page: the configuration re-read, checked as `wsgate check` would, and
    /// put in force.
    async fn reload_config(&mut self, old: &Arc<Shared>, by: &str) -> Result<String, String> {
        let Some(reload) = &self.reload else {
            tracing::info!(
                "{by}: TLS certificates re-read; the configuration is the embedded one, so there is no file to re-read; open connections are untouched"
            );
            return Err("the server runs the embedded configuration: there is no file to re-read (start it with --config FILE)".into());
        };
        let outcome = match (reload.load)() {
            Ok(config) => self.apply(old, config).await,
            Err(e) => Err(e),
        };
        if outcome.is_ok() {
            if let Some(r) = &self.reload {
                (r.applied)(&self.live.load().config);
            }
        }
        match &outcome {
            Ok(summary) => {
                old.metrics
                    .config_reloads
                    .get_or_create(&[("result", "ok".to_owned())])
                    .inc();
                tracing::info!(changes = %summary, "{by}: configuration reloaded: new handshakes follow it, open connections are untouched");
            }
            Err(e) => {
                old.metrics
                    .config_reloads
                    .get_or_create(&[("result", "error".to_owned())])
                    .inc();
                tracing::error!(error = %e, "{by}: configuration reload failed: still serving the previous configuration");
            }
        }
        outcome
    }

    /// Puts `config` in force; returns what changed.
    async fn apply(&mut self, old: &Arc<Shared>, mut config: Config) -> Result<String, String> {
        preflight(&config).map_err(|e| e.to_string())?;
        adopt_remote_keys(&mut config, &old.config);
        let old_keys = listener_keys(&old.config);
        let new_keys = listener_keys(&config);
        // A kept listener keeps its socket and TLS acceptor: changing its TLS files' paths or
        // client-certificate mode needs a restart (the certificates themselves reload in place).
        for (k, l) in new_keys.iter().zip(&config.listeners) {
            if let Some(i) = old_keys.iter().position(|o| o == k) {
                if format!("{:?}", old.config.listeners[i].tls) != format!("{:?}", l.tls) {
                    return Err(format!(
                        "listener {} changes its TLS settings; that needs a restart (or a listener on another address)",
                        l.address
                    ));
                }
            }
        }
        let (added, reloaders) = bind_listeners(&config, &old.metrics, |k| !old_keys.contains(k))
            .await
            .map_err(|e| e.to_string())?;
        let new_remote: Vec<_> = config
            .jwks
            .iter()
            .filter(|r| !old.config.jwks.iter().any(|o| Arc::ptr_eq(o, r)))
            .cloned()
            .collect();
        let mut notes = Vec::new();
        if old.config.admin != config.admin {
            notes.push("the admin address changes at the next restart".to_owned());
        }
        if format!("{:?}", old.config.cluster) != format!("{:?}", config.cluster) {
            notes.push("[cluster] changes at the next restart".to_owned());
        }
        let mut summary = describe_changes(&old.config, &config, &old_keys, &new_keys);
        for b in &added {
            if let Ok(a) = b.listener.local_addr() {
                let scheme = if b.tls.is_some() { "wss" } else { "ws" };
                summary.push_str(&format!("; now listening on {scheme}://{a}"));
            }
        }
        let next = Arc::new(old.reloaded(config).map_err(|e| e.to_string())?);
        crate::jwks::start(
            &new_remote,
            std::time::Duration::from_secs(5),
            next.shutdown.clone(),
        )
        .await;
        self.live.store(next);
        for b in added {
            self.spawn(b);
        }
        self.reloaders.extend(reloaders);
        self.accepts.retain(|(k, _)| new_keys.contains(k));
        self.reloaders.retain(|(k, _)| new_keys.contains(k));
        if notes.is_empty() {
            Ok(summary)
        } else {
            Ok(format!("{summary}; {}", notes.join("; ")))
        }
    }
}

/// Keys from identity providers that the new configuration names by the same URL keep their
/// fetched set (and fetcher) instead of starting empty.
fn adopt_remote_keys(config: &mut Config, old: &Config) {
    let same = |a: &RemoteKeys, b: &RemoteKeys| {
        a.url == b.url && a.discovery == b.discovery && a.ca_file == b.ca_file
    };
    for slot in config.jwks.iter_mut() {
        if let Some(o) = old.jwks.iter().find(|o| same(o, slot)) {
            *slot = o.clone();
        }
    }
    let kept = config.jwks.clone();
    for issuer in config.jwt_issuers_mut() {
        if let Some(r) = issuer.remote.as_mut() {
            if let Some(k) = kept.iter().find(|k| same(k, r)) {
                *r = k.clone();
            }
        }
    }
}

/// Routes and listeners added, removed or changed, for the reload's log line.
fn describe_changes(
    old: &Config,
    new: &Config,
    old_keys: &[ListenerKey],
    new_keys: &[ListenerKey],
) -> String {
    let mut parts = Vec::new();
    let added: Vec<&str> = new
        .routes
        .iter()
        .filter(|r| !old.routes.iter().any(|o| o.path == r.path))
        .map(|r| r.path.as_str())
        .collect();
    let removed: Vec<&str> = old
        .routes
        .iter()
        .filter(|r| !new.routes.iter().any(|n| n.path == r.path))
        .map(|r| r.path.as_str())
        .collect();
    let changed: Vec<&str> = new
        .routes
        .iter()
        .filter(|r| {
            old.routes
                .iter()
                .find(|o| o.path == r.path)
                .is_some_and(|o| format!("{o:?}") != format!("{r:?}"))
        })
        .map(|r| r.path.as_str())
        .collect();
    for (what, v) in [
        ("routes added", added),
        ("routes removed", removed),
        ("routes changed", changed),
    ] {
        if !v.is_empty() {
            parts.push(format!("{what} {v:?}"));
        }
    }
    let l_added: Vec<String> = new_keys
        .iter()
        .filter(|k| !old_keys.contains(k))
        .map(|k| k.address.to_string())
        .collect();
    let l_removed: Vec<String> = old_keys
        .iter()
        .filter(|k| !new_keys.contains(k))
        .map(|k| k.address.to_string())
        .collect();
    if !l_added.is_empty() {
        parts.push(format!("listeners added {l_added:?}"));
    }
    if !l_removed.is_empty() {
        parts.push(format!(
            "listeners removed {l_removed:?} (their open connections keep running)"
        ));
    }
    for (what, a, b) in [
        (
            "limits",
            format!("{:?}", old.limits),
            format!("{:?}", new.limits),
        ),
        (
            "firewall",
            format!("{:?}", old.firewall),
            format!("{:?}", new.firewall),
        ),
        (
            "logging",
            format!("{:?}", old.logging),
            format!("{:?}", new.logging),
        ),
    ] {
        if a != b {
            parts.push(format!("{what} changed"));
        }
    }
    if parts.is_empty() {
        "nothing changed".into()
    } else {
        parts.join("; ")
    }
}

/// Reloads listener certificates when their files change, or all of them when `forced` (SIGHUP);
/// a bad new file is logged and the certificate in use is kept.
fn reload_certificates(
    reloaders: &[(ListenerKey, Arc<tls::CertReloader>)],
    shared: &Shared,
    forced: bool,
) {
    for (key, r) in reloaders {
        let result = if forced {
            Some(r.reload())
        } else {
            r.reload_if_changed()
        };
        let i = shared.listener_index(key).unwrap_or(usize::MAX);
        match result {
            None => {}
            Some(Ok(info)) => {
                shared
                    .metrics
                    .set_cert_not_after(format!("listener[{i}]"), info.not_after);
                tracing::info!(
                    listener = %key.address,
                    subject = %info.subject,
                    expires = %tls::iso_date(info.not_after),
                    "TLS certificate reloaded; open connections keep theirs"
                );
            }
            Some(Err(e)) => tracing::error!(
                listener = %key.address,
                files = %r.describe(),
                error = %e,
                "TLS certificate reload failed; still serving the previous certificate"
            ),
        }
    }
}

/// Asks the server whose process id is in `pid_file` to reload its configuration (SIGHUP), for
/// `wsgate reload`; the error says what to check.
pub fn signal_reload(pid_file: &std::path::Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        format!(
            "cannot read {}: {e}; start the server with `wsgate serve --pid-file {}`",
            pid_file.display(),
            pid_file.display()
        )
    })?;
    let raw: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{} does not hold a process id", pid_file.display()))?;
    let pid = rustix::process::Pid::from_raw(raw)
        .ok_or_else(|| format!("{} holds {raw}, not a process id", pid_file.display()))?;
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).map_err(|e| {
        format!("cannot signal process {raw} (from {}): {e}; is the server still running, and are you its user?", pid_file.display())
    })?;
    Ok(raw as u32)
}
