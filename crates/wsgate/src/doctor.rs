//! `wsgate doctor URL`: the command line of the doctor (the work is in `wsgate-doctor`).

use crate::fail;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub(crate) struct DoctorArgs {
    /// The WebSocket URL, ws://host[:port]/path or wss://…
    pub(crate) url: String,
    /// Send this Origin (what a browser page on that origin sends).
    #[arg(long)]
    pub(crate) origin: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub(crate) headers: Vec<String>,
    /// A credential to send.
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// Where the credential goes: header, query:NAME, cookie:NAME or subprotocol:PREFIX.
    #[arg(long, default_value = "header")]
    pub(crate) token_via: String,
    /// Offer this subprotocol (repeatable).
    #[arg(long = "subprotocol")]
    pub(crate) subprotocols: Vec<String>,
    /// Trust this CA (PEM) besides the public roots.
    #[arg(long)]
    pub(crate) cacert: Option<PathBuf>,
    /// Client certificate (PEM), with --key.
    #[arg(long, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Client key (PEM), with --cert.
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Do not verify the server's certificate (its problems are still reported).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Connect to this address instead of resolving: host:port:address (like curl).
    #[arg(long)]
    pub(crate) resolve: Option<String>,
    /// Seconds allowed for each step.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) timeout: f64,
    /// Do not send variations to find a refusal's cause.
    #[arg(long)]
    pub(crate) no_experiments: bool,
    /// Keep the connection open this many seconds and report who closes it.
    #[arg(long)]
    pub(crate) hold: Option<f64>,
    /// Print the diagnosis as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn doctor(a: DoctorArgs) -> ExitCode {
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
