//! `wsgate doctor`: walks DNS → TCP → TLS → HTTP Upgrade → frames against any WebSocket server,
//! and when the handshake is refused, runs a few controlled variations to find out why.
//!
//! The result is one [`Diagnosis`] value; [`print::human`] and [`print::json`] render it. Probing
//! ([`probe`]) is separate from reading the evidence ([`analyze`]), so the rules that name a
//! cause are plain functions over recorded responses.

#![forbid(unsafe_code)]

pub mod analyze;
pub mod h2;
pub mod print;
pub mod probe;
pub mod servers;
pub mod tls;

use serde::Serialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
pub use wsgate_reasons::Reason;

/// Where the credential from `--token` is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVia {
    /// `Authorization: Bearer TOKEN`.
    Header,
    /// `?NAME=TOKEN`.
    Query(String),
    /// `Cookie: NAME=TOKEN`.
    Cookie(String),
    /// An offered subprotocol `PREFIXTOKEN` (what browsers can do).
    Subprotocol(String),
}

impl TokenVia {
    /// Parses `header`, `query:NAME`, `cookie:NAME` or `subprotocol:PREFIX`.
    pub fn parse(s: &str) -> Result<TokenVia, String> {
        match s.split_once(':') {
            None if s == "header" => Ok(TokenVia::Header),
            Some(("query", n)) if !n.is_empty() => Ok(TokenVia::Query(n.to_owned())),
            Some(("cookie", n)) if !n.is_empty() => Ok(TokenVia::Cookie(n.to_owned())),
            Some(("subprotocol", p)) if !p.is_empty() => Ok(TokenVia::Subprotocol(p.to_owned())),
            _ => Err(format!(
                "{s:?}: use header, query:NAME, cookie:NAME or subprotocol:PREFIX"
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            TokenVia::Header => "the Authorization header".into(),
            TokenVia::Query(n) => format!("the query parameter {n}"),
            TokenVia::Cookie(n) => format!("the cookie {n}"),
            TokenVia::Subprotocol(p) => format!("a subprotocol entry {p}…"),
        }
    }
}

/// What the person asked the doctor to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// The Origin header to send (as a browser page would).
    pub origin: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// A credential to send.
    pub token: Option<String>,
    /// Where to send it.
    pub token_via: TokenVia,
    /// Subprotocols to offer.
    pub subprotocols: Vec<String>,
    /// Extra CA certificates to trust.
    pub cacert: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Skip certificate verification (the checks are still reported).
    pub insecure: bool,
    /// Connect to this address instead of resolving the host.
    pub resolve: Option<IpAddr>,
    /// Time allowed for each step.
    pub timeout: Duration,
    /// Whether variations may be sent to find a refusal's cause.
    pub experiments: bool,
    /// Keep the connection open this long and report who closes it.
    pub hold: Option<Duration>,
}

/// One step of the walk.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `dns`, `tcp`, `tls`, `http`, `websocket`.
    pub name: &'static str,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub ms: u64,
    /// What was seen.
    pub detail: String,
}

/// One controlled variation and what the server answered.
#[derive(Debug, Clone, Serialize)]
pub struct Experiment {
    /// What was changed compared with the first attempt.
    pub change: String,
    /// The HTTP status (101 when it was admitted), or 0 when there was no HTTP answer.
    pub status: u16,
    /// The server's own reason code, if it sent a `wsgate-reason` header.
    pub code: Option<String>,
}

/// Which side should change something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The person or program connecting.
    Client,
    /// The server's operator.
    Server,
}

/// A numbered fix.
#[derive(Debug, Clone, Serialize)]
pub struct Fix {
    /// Who applies it.
    pub side: Side,
    /// The software it applies to: `the client`, a recognised product (`Tornado`, `nginx` …), or
    /// `any server` when the server was not recognised.
    pub software: String,
    /// What to do, with configuration lines where the server is recognised.
    pub text: String,
}

/// What the doctor learned about the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerInfo {
    /// A recognised server or front door (`nginx`, `wsgate`, `Python websockets`, `Cloudflare` …).
    pub software: Option<String>,
    /// The `Server` header, verbatim.
    pub header: Option<String>,
    /// The server's own reason code (`wsgate-reason`), if it sent one.
    pub reason: Option<String>,
    /// Its request id, to quote to the operator.
    pub request_id: Option<String>,
    /// What identified the software (and the front door, if any).
    pub evidence: Vec<String>,
    /// How sure the recognition of `software` is.
    pub confidence: Option<servers::Confidence>,
    /// A proxy, load balancer, CDN or gateway recognised in front of `software`.
    pub via: Option<String>,
}

/// Everything the doctor found: printed for people or as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    /// The URL examined.
    pub url: String,
    /// Whether the WebSocket worked end to end.
    pub ok: bool,
    /// The catalog code of the cause, when it did not.
    pub cause: Option<String>,
    /// The cause in one sentence.
    pub summary: String,
    /// What the cause was read from.
    pub evidence: Vec<String>,
    /// What to change, client side first.
    pub fixes: Vec<Fix>,
    /// The walk, step by step.
    pub steps: Vec<Step>,
    /// Variations sent to find the cause (at most 8).
    pub experiments: Vec<Experiment>,
    /// The server, as far as it can be recognised.
    pub server: ServerInfo,
    /// What a browser would have reported for the same failure.
    pub browser: String,
}

impl Diagnosis {
    /// The process exit status: 0 when the WebSocket worked, 1 when it did not.
    pub fn exit_code(&self) -> i32 {
        if self.ok {
            0
        } else {
            1
        }
    }
}

/// Runs the whole diagnosis.
pub async fn diagnose(opts: &Options) -> Result<Diagnosis, String> {
    let target = probe::parse_target(&opts.url)?;
    let tls = tls::Tls::new(opts)?;
    Ok(analyze::run(opts, &target, &tls).await)
}
