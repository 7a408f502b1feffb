//! The `wsgate` command: `serve`, `check`, `cert dev` and `reasons`.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use wsgate_admission::auth::Source;
use wsgate_reasons::Reason;
use wsgate_server::config::{Config, Explain, LogFormat, RouteKind};
use wsgate_server::{preflight, Server};

#[derive(Parser)]
#[command(
    name = "wsgate",
    version,
    about = "A WebSocket gateway that explains every refusal"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket routes (with no configuration: a development setup on 127.0.0.1:8080).
    Serve(ServeArgs),
    /// Validate a configuration and print what it would do, without serving.
    Check(ConfigArg),
    /// Find out why a WebSocket handshake fails (against any server), and how to fix it.
    Doctor(DoctorArgs),
    /// Certificate helpers.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Hash a password (read from standard input) for `basic_users`, with argon2id.
    Passwd,
    /// List every refusal reason code (`--markdown` writes docs/refusals.md).
    Reasons {
        /// Print the Markdown documentation instead of a table.
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// TOML configuration file (default: the embedded development configuration).
    #[arg(long, short, env = "WSGATE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Override the first listener's address, e.g. 127.0.0.1:0 for a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override the admin (metrics) address; `off` disables it.
    #[arg(long)]
    admin: Option<String>,
}

#[derive(Args)]
struct DoctorArgs {
    /// The WebSocket URL, ws://host[:port]/path or wss://…
    url: String,
    /// Send this Origin (what a browser page on that origin sends).
    #[arg(long)]
    origin: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// A credential to send.
    #[arg(long)]
    token: Option<String>,
    /// Where the credential goes: header, query:NAME, cookie:NAME or subprotocol:PREFIX.
    #[arg(long, default_value = "header")]
    token_via: String,
    /// Offer this subprotocol (repeatable).
    #[arg(long = "subprotocol")]
    subprotocols: Vec<String>,
    /// Trust this CA (PEM) besides the public roots.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM), with --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client key (PEM), with --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Do not verify the server's certificate (its problems are still reported).
    #[arg(long)]
    insecure: bool,
    /// Connect to this address instead of resolving: host:port:address (like curl).
    #[arg(long)]
    resolve: Option<String>,
    /// Seconds allowed for each step.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Do not send variations to find a refusal's cause.
    #[arg(long)]
    no_experiments: bool,
    /// Keep the connection open this many seconds and report who closes it.
    #[arg(long)]
    hold: Option<f64>,
    /// Print the diagnosis as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed certificate and key for development.
    Dev {
        /// Host names or IP addresses to include (localhost, 127.0.0.1 and ::1 are always added).
        #[arg(long = "host", default_value = "localhost")]
        hosts: Vec<String>,
        /// Directory to write cert.pem and key.pem into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args),
        Command::Doctor(args) => doctor(args),
        Command::Cert(CertCommand::Dev { hosts, out, days }) => cert_dev(&hosts, &out, days),
        Command::Passwd => passwd(),
        Command::Reasons { markdown } => {
            if markdown {
                print!("{}", wsgate_reasons::markdown());
            } else {
                for r in Reason::ALL {
                    let status = if r.is_refusal() {
                        r.status().to_string()
                    } else {
                        "doctor".into()
                    };
                    println!("{:<28} {:<6} {}", r.code(), status, r.message());
                }
            }
            ExitCode::SUCCESS
        }
    }
}

fn load(arg: &ConfigArg) -> Result<Config, String> {
    match &arg.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => Ok(Config::embedded()),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match load(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if let Some(addr) = args.listen {
        config.override_first_listener(addr);
    }
    match args.admin.as_deref() {
        None => {}
        Some("off") => config.admin = None,
        Some(a) => match a.parse() {
            Ok(addr) => config.admin = Some(addr),
            Err(_) => {
                return fail(&format!(
                    "--admin {a:?} is not an address like 127.0.0.1:9090, nor `off`"
                ))
            }
        },
    }
    init_logging(&config);
    open_files_limit(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        let stop = stop_signal();
        let server = match Server::bind(config.clone()).await {
            Ok(s) => s,
            Err(e) => return fail(&e.to_string()),
        };
        banner(&config, &server);
        server.run(stop).await;
        ExitCode::SUCCESS
    })
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
        Some(a) => println!("admin http://{a}/metrics"),
        None => println!("admin off"),
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
                .gates
                .auth
                .as_ref()
                .is_some_and(|a| a.api_keys.iter().any(|k| k.name == "dev"))
        }) {
            let path = r.path.replace("{room}", "lobby");
            let sources = r.policy(0).gates.auth.iter().flat_map(|a| a.sources.iter());
            for source in sources {
                if let (Source::Query(name), Some(base)) = (source, &base) {
                    println!("try: python3 -m websockets '{base}{path}?{name}={token}'");
                }
            }
        }
        println!("     (the token changes at every start; routes with `auth.dev_token = true` accept it)");
    }
}

fn check(args: ConfigArg) -> ExitCode {
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let certs = match preflight(&config) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    println!("{}: OK", config.source);
    for (i, (l, cert)) in config.listeners.iter().zip(certs).enumerate() {
        let scheme = if l.tls.is_some() { "wss" } else { "ws" };
        print!(
            "listener[{i}] {scheme}://{} explain={}",
            l.address,
            explain_name(l.explain)
        );
        if l.proxy_protocol {
            print!(" proxy_protocol");
        }
        if let Some(t) = &l.tls {
            if let Some(ca) = &t.client_ca {
                print!(
                    " client certificates {:?} from {}",
                    t.client_auth,
                    ca.display()
                );
            }
        }
        if let Some(c) = cert {
            print!(
                " certificate {} valid until {}{}",
                c.subject,
                wsgate_server::tls::httpdate(c.not_after),
                if c.expires_soon {
                    " (EXPIRES WITHIN 14 DAYS)"
                } else {
                    ""
                }
            );
        }
        println!();
    }
    match config.admin {
        Some(a) => println!("admin http://{a}/metrics"),
        None => println!("admin off"),
    }
    let fw = &config.firewall;
    if !fw.rules.is_empty() || !fw.trusted_proxies.is_empty() || fw.ban.is_some() {
        let show = |v: &[wsgate_admission::firewall::Cidr]| {
            v.iter().map(|c| c.to_string()).collect::<Vec<_>>()
        };
        print!(
            "firewall allow={:?} deny={:?} trusted_proxies={:?} client_address_header={}",
            show(&fw.rules.allow),
            show(&fw.rules.deny),
            show(&fw.trusted_proxies),
            fw.client_address_header.as_str()
        );
        if let Some(b) = fw.ban {
            print!(
                " ban after {} refusals in {:?} for {:?}",
                b.after, b.window, b.duration
            );
        }
        println!();
    }
    let l = &config.limits;
    println!(
        "limits max_connections={} max_message_bytes={} max_frame_bytes={} handshake_timeout={:?} ping_interval={:?} idle_timeout={:?} drain_timeout={:?}",
        l.max_connections, l.max_message_bytes, l.max_frame_bytes, l.handshake_timeout, l.ping_interval, l.idle_timeout, l.drain_timeout
    );
    for (i, r) in config.routes.iter().enumerate() {
        print!("route[{i}] {} -> {}", r.path, kind_name(r.kind));
        if let Some(u) = &r.upstream {
            print!(" {} (connect_timeout {:?})", u.url, u.connect_timeout);
            if !r.forward_headers.is_empty() {
                let names: Vec<&str> = r.forward_headers.iter().map(|h| h.as_str()).collect();
                print!(" forward_headers={names:?}");
            }
        }
        if r.subprotocols.is_empty() {
            print!(" subprotocols=none");
        } else {
            print!(
                " subprotocols={:?}{}",
                r.subprotocols,
                if r.subprotocol_required {
                    " (required)"
                } else {
                    ""
                }
            );
        }
        if r.kind == RouteKind::Channel {
            print!(" deliver_to_sender={}", r.deliver_to_sender);
        }
        println!();
        // The effective policy, per listener, in the order the gates run.
        for (l, rp) in r.policies.iter().enumerate() {
            if config.listeners.len() > 1 {
                println!("  on listener[{l}]:");
            }
            print_policy(
                &rp.gates,
                if config.listeners.len() > 1 {
                    "    "
                } else {
                    "  "
                },
            );
        }
    }
    ExitCode::SUCCESS
}

/// Prints one route's gates in the order they run.
fn print_policy(p: &wsgate_admission::Policy, indent: &str) {
    let show = |v: &[wsgate_admission::firewall::Cidr]| {
        v.iter().map(|c| c.to_string()).collect::<Vec<_>>()
    };
    for (name, rules) in [
        ("listener firewall", &p.listener_firewall),
        ("firewall", &p.firewall),
    ] {
        if !rules.is_empty() {
            println!(
                "{indent}{name}: allow {:?} deny {:?}",
                show(&rules.allow),
                show(&rules.deny)
            );
        }
    }
    if p.client_cert_required {
        println!(
            "{indent}tls identity: a client certificate is required (tls.client_cert_required)"
        );
    }
    if !p.host.allow.is_empty() {
        println!("{indent}host: {:?}", p.host.allow);
    }
    let origins: Vec<String> = p.origin.allow.iter().map(|e| e.to_string()).collect();
    let missing = if p.origin.allow_missing {
        "admitted"
    } else {
        "refused (origin.missing)"
    };
    println!("{indent}origin: allow {origins:?}; without Origin: {missing}");
    match (&p.auth, &p.external) {
        (_, Some(x)) => println!(
            "{indent}auth: external check {} (timeout {:?}, cache {:?})",
            x.url, x.timeout, x.cache_ttl
        ),
        (None, None) => println!("{indent}auth: none (anonymous clients admitted)"),
        (Some(a), None) => {
            let sources: Vec<String> = a.sources.iter().map(|s| s.to_string()).collect();
            let keys: Vec<&str> = a.api_keys.iter().map(|k| k.name.as_str()).collect();
            let users: Vec<&str> = a.basic_users.iter().map(|u| u.name.as_str()).collect();
            println!(
                "{indent}auth: sources {sources:?} in that order; api keys {keys:?}; basic users {users:?}; jwt issuers {}",
                a.jwt.len()
            );
        }
    }
    let z = &p.authz;
    if !z.is_empty() {
        let claims: Vec<String> = z.claims.iter().map(|(k, v)| format!("{k}={v}")).collect();
        print!("{indent}authz: claims {claims:?} scopes {:?}", z.scopes);
        if let Some(c) = &z.channel {
            print!(
                " channel {:?} must match a pattern in claim {:?}",
                c.template, c.claim
            );
        }
        if !z.cert_subjects.is_empty() || !z.cert_sans.is_empty() {
            print!(
                " certificate subject {:?} SAN {:?}",
                z.cert_subjects, z.cert_sans
            );
        }
        println!();
    }
}

fn cert_dev(hosts: &[String], out: &std::path::Path, days: u32) -> ExitCode {
    let (cert, key) = match wsgate_server::tls::dev_cert(hosts, days) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    if let Err(e) = std::fs::create_dir_all(out) {
        return fail(&format!("cannot create {}: {e}", out.display()));
    }
    let (cp, kp) = (out.join("cert.pem"), out.join("key.pem"));
    if let Err(e) = std::fs::write(&cp, cert) {
        return fail(&format!("cannot write {}: {e}", cp.display()));
    }
    if let Err(e) = write_private(&kp, key.as_bytes()) {
        return fail(&format!("cannot write {}: {e}", kp.display()));
    }
    println!(
        "wrote {} and {} (self-signed, {days} days, for {})",
        cp.display(),
        kp.display(),
        hosts.join(", ")
    );
    println!(
        "use them in a listener:\n  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"",
        cp.display(),
        kp.display()
    );
    println!(
        "clients must trust cert.pem, e.g. `python3 -m websockets` with SSL_CERT_FILE={}",
        cp.display()
    );
    ExitCode::SUCCESS
}

/// Private keys are written readable by the owner only.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}

fn doctor(a: DoctorArgs) -> ExitCode {
    let usage = |m: String| {
        eprintln!("wsgate doctor: {m}");
        ExitCode::from(2)
    };
    let token_via = match wsgate_doctor::TokenVia::parse(&a.token_via) {
        Ok(v) => v,
        Err(m) => return usage(format!("--token-via {m}")),
    };
    let mut headers = Vec::new();
    for h in &a.headers {
        match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                headers.push((k.trim().to_owned(), v.trim().to_owned()))
            }
            _ => return usage(format!("--header {h:?} must look like `Name: value`")),
        }
    }
    let resolve = match &a.resolve {
        None => None,
        Some(r) => {
            let mut parts = r.splitn(3, ':');
            match (
                parts.next(),
                parts.next(),
                parts.next().map(|ip| ip.trim_matches(['[', ']']).parse()),
            ) {
                (Some(_), Some(_), Some(Ok(ip))) => Some(ip),
                _ => {
                    return usage(format!(
                        "--resolve {r:?} must be host:port:address, e.g. example.com:443:127.0.0.1"
                    ))
                }
            }
        }
    };
    if !(a.timeout > 0.0 && a.timeout <= 600.0) || a.hold.is_some_and(|h| !(h > 0.0 && h <= 3600.0))
    {
        return usage("--timeout must be 0 to 600 seconds and --hold 0 to 3600".into());
    }
    let opts = wsgate_doctor::Options {
        url: a.url,
        origin: a.origin,
        headers,
        token: a.token,
        token_via,
        subprotocols: a.subprotocols,
        cacert: a.cacert,
        client_cert: a.cert.zip(a.key),
        insecure: a.insecure,
        resolve,
        timeout: std::time::Duration::from_secs_f64(a.timeout),
        experiments: !a.no_experiments,
        hold: a.hold.map(std::time::Duration::from_secs_f64),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let d = match runtime.block_on(wsgate_doctor::diagnose(&opts)) {
        Ok(d) => d,
        Err(m) => return usage(m),
    };
    if a.json {
        println!("{}", wsgate_doctor::print::json(&d));
    } else {
        use std::io::IsTerminal;
        print!(
            "{}",
            wsgate_doctor::print::human(&d, std::io::stdout().is_terminal())
        );
    }
    ExitCode::from(d.exit_code() as u8)
}

fn passwd() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        return fail(&format!(
            "cannot read the password from standard input: {e}"
        ));
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return fail(
            "empty password: type it on standard input, e.g. `printf %s 'secret' | wsgate passwd`",
        );
    }
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&wsgate_server::ids::random_bytes::<16>());
    match wsgate_admission::auth::hash_password(password, &salt) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("hashing failed: {e}")),
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

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("WSGATE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&config.logging.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.logging.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn explain_name(e: Explain) -> &'static str {
    match e {
        Explain::None => "none",
        Explain::Code => "code",
        Explain::Full => "full",
    }
}

fn kind_name(k: RouteKind) -> &'static str {
    match k {
        RouteKind::Echo => "echo",
        RouteKind::Channel => "channel",
        RouteKind::Proxy => "proxy",
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("wsgate: error: {msg}");
    ExitCode::FAILURE
}
