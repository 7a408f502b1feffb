//! `wsgate serve`: load the configuration, bind, print the banner, serve until a stop signal.

use crate::{explain_name, fail, kind_name, load, ConfigArg};
use clap::Args;
use std::net::SocketAddr;
use std::process::ExitCode;
use wsgate_admission::auth::Source;
use wsgate_server::config::{Config, LogFormat, RouteKind};
use wsgate_server::Server;

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Override the first listener's address, e.g. 127.0.0.1:0 for a free port.
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Override the admin (metrics) address; `off` disables it.
    #[arg(long)]
    pub(crate) admin: Option<String>,
    /// Write the process id here (for `wsgate reload --pid-file`), removed at exit.
    #[arg(long)]
    pub(crate) pid_file: Option<std::path::PathBuf>,
}

pub(crate) fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match load(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if let Err(e) = apply_overrides(&mut config, &args) {
        return fail(&e);
    }
    let set_level = init_logging(&config);
    open_files_limit(&config);
    if let Some(p) = &args.pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            return fail(&format!("cannot write --pid-file {}: {e}", p.display()));
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let pid_file = args.pid_file.clone();
    // SIGHUP re-reads the file given with --config (with this command line's overrides put back)
    // and applies its logging level; the embedded configuration has no file to re-read.
    let reload = args
        .config
        .config
        .clone()
        .map(|path| wsgate_server::server::Reloader {
            load: Box::new(move || {
                let mut c = Config::load(&path).map_err(|e| e.to_string())?;
                apply_overrides(&mut c, &args)?;
                Ok(c)
            }),
            applied: Box::new(move |c: &Config| set_level(&c.logging.level)),
        });
    let code = runtime.block_on(async move {
        let stop = stop_signal();
        let server = match Server::bind(config.clone()).await {
            Ok(s) => s,
            Err(e) => return fail(&e.to_string()),
        };
        banner(&config, &server);
        server.run_reloading(stop, reload).await;
        ExitCode::SUCCESS
    });
    if let Some(p) = pid_file {
        let _ = std::fs::remove_file(p);
    }
    code
}

/// The command line's `--listen` and `--admin`, over the file's values (at start and at every
/// reload, so a reload does not move the listener the command line chose).
fn apply_overrides(config: &mut Config, args: &ServeArgs) -> Result<(), String> {
    if let Some(addr) = args.listen {
        config.override_first_listener(addr);
    }
    match args.admin.as_deref() {
        None => {}
        Some("off") => config.admin = None,
        Some(a) => match a.parse() {
            Ok(addr) => config.admin = Some(addr),
            Err(_) => {
                return Err(format!(
                    "--admin {a:?} is not an address like 127.0.0.1:9090, nor `off`"
                ))
            }
        },
    }
    config.admin_exposure().map_err(|e| e.to_string())
}

/// Completes on Ctrl-C or SIGTERM. The handlers are registered when this is called, not when the
/// future is first polled, so a signal that arrives right after start-up still drains gracefully.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn banner(config: &Config, server: &Server) {
    println!(
        "wsgate {} serving (config: {})",
        env!("CARGO_PKG_VERSION"),
        config.source
    );
    let mut first_echo = None;
    for (l, bound) in config.listeners.iter().zip(server.listeners()) {
        let scheme = if bound.tls { "wss" } else { "ws" };
        let base = format!("{scheme}://{}", bound.address);
        println!(
            "listening {base} (refusals explained: {})",
            explain_name(l.explain)
        );
        for r in &config.routes {
            let example = r.path.replace("{room}", "lobby");
            println!("  {:<8} {base}{}", kind_name(r.kind), example);
            if r.kind == RouteKind::Echo && first_echo.is_none() {
                first_echo = Some(format!("{base}{example}"));
            }
        }
    }
    match server.admin_address() {
        Some(a) => {
            let token = if config.admin_token.is_some() {
                " (log in with admin.token)"
            } else {
                ""
            };
            println!(
                "admin http://{a}/ (live page{token}; metrics at /metrics, health at /healthz)"
            );
        }
        None => println!("admin off"),
    }
    if let Some(c) = &config.cluster {
        println!(
            "cluster node {} via {} (channels prefixed {:?})",
            c.node_id,
            c.redacted_url(),
            c.prefix
        );
    }
    if let Some(url) = first_echo {
        println!("try: python3 -m websockets {url}");
        let http = url.replacen("ws", "http", 1);
        println!("     curl -i {http}   (a plain HTTP request: see how a refusal explains itself)");
    }
    if let Some(token) = &config.dev_token {
        println!("development token: {token}");
        let base = server
            .listeners()
            .first()
            .map(|b| format!("{}://{}", if b.tls { "wss" } else { "ws" }, b.address));
        for r in config.routes.iter().filter(|r| {
            r.policy(0)
                .auth
                .as_ref()
                .is_some_and(|a| a.api_keys.iter().any(|k| k.name == "dev"))
        }) {
            let path = r.path.replace("{room}", "lobby");
            let sources = r.policy(0).auth.iter().flat_map(|a| a.sources.iter());
            for source in sources {
                if let (Source::Query(name), Some(base)) = (source, &base) {
                    println!("try: python3 -m websockets '{base}{path}?{name}={token}'");
                }
            }
        }
        println!("     (the token changes at every start; routes with `auth.dev_token = true` accept it)");
    }
}

/// Raises the open-files limit as far as allowed, and warns when it still cannot hold the
/// configured number of connections (beyond it, new connections fail at accept).
fn open_files_limit(config: &Config) {
    if let Some((from, to)) = wsgate_server::fdlimit::raise_open_files() {
        tracing::info!(from, to, "raised the open-files limit to the hard limit");
    }
    if let Some((soft, hard)) = wsgate_server::fdlimit::open_files() {
        // A margin for listeners, upstream connections, certificates and logs.
        let want = (config.limits.max_connections as u64).saturating_add(64);
        if soft < want {
            tracing::warn!(
                limit = soft,
                hard,
                max_connections = config.limits.max_connections,
                "the open-files limit is below limits.max_connections: connections beyond it are refused when accepted; raise it (`ulimit -n`, or LimitNOFILE= for a systemd service) or lower limits.max_connections"
            );
        }
    }
}

/// Starts logging; returns how a reload changes the level (unless `WSGATE_LOG` decides it).
fn init_logging(config: &Config) -> Box<dyn Fn(&str) + Send + Sync> {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("WSGATE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok());
    let fixed = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&config.logging.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let node = config.cluster.as_ref().map(|c| c.node_id.clone());
    // The filter's reload handle is taken last: its type is the finished subscriber's.
    let set: Box<dyn Fn(EnvFilter) + Send + Sync> = match config.logging.format {
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format().json().flatten_event(true);
            let builder = builder
                .json()
                .flatten_event(true)
                .event_format(WithNode { node, inner })
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |f| {
                let _ = handle.reload(f);
            })
        }
        LogFormat::Text => {
            let inner = tracing_subscriber::fmt::format().with_ansi(false);
            let builder = builder
                .with_ansi(false)
                .event_format(WithNode { node, inner })
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |f| {
                let _ = handle.reload(f);
            })
        }
    };
    Box::new(move |level: &str| {
        if fixed {
            return;
        }
        if let Ok(f) = EnvFilter::try_new(level) {
            set(f);
        }
    })
}

/// Puts a clustered node's id in every log line, so the lines of several nodes gathered in one
/// place say where each came from: `"node":"gw-1"` first in JSON, `[gw-1]` first in text. Spans
/// would not do: tasks spawned by the runtime do not inherit them.
struct WithNode<F> {
    node: Option<String>,
    inner: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithNode<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(node) = &self.node else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        // A node id is letters, digits, `-`, `_` and `.` (checked with the configuration), so it
        // needs no escaping in either format.
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"node\":\"{node}\",{rest}"),
            None => write!(writer, "[{node}] {line}"),
        }
    }
}
