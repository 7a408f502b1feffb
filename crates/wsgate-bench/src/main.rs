//! `wsgate-bench`: runs wsgate and baseline servers under the same load, side by side in one run,
//! and reports medians and ratios (never absolute targets). `run --smoke` is the few-second
//! version CI runs so the harness never rots; `run` is the full one, by hand.

#![forbid(unsafe_code)]

mod baseline;
mod load;
mod soak;

use clap::{Parser, Subcommand};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "wsgate-bench",
    about = "wsgate against baseline WebSocket servers, same machine, same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a baseline echo server (used by `run`).
    Baseline {
        /// tungstenite | fastwebsockets
        kind: String,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Run every benchmark mode and print a Markdown table (and write JSON with --out).
    Run {
        /// Tiny counts and short durations (CI).
        #[arg(long)]
        smoke: bool,
        /// Alternating rounds per case (medians are reported).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// The wsgate binary (default: next to this one).
        #[arg(long)]
        wsgate: Option<PathBuf>,
        /// Write results.json and results.md here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run only these modes (comma-separated): echo, admission, fanout, idle, proxy, callgrind.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Hold many connections across echo, channel and proxy routes with churn, and report
    /// whether memory, descriptors, tasks and p99 stay flat (exits 1 if a connection failed, a
    /// descriptor is left behind, or memory, descriptors or tasks are not flat).
    Soak {
        /// Connections held at once.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds under load (after the warm-up).
        #[arg(long, default_value_t = 300.0)]
        seconds: f64,
        /// Share of the connections replaced every second.
        #[arg(long, default_value_t = 0.01)]
        churn: f64,
        /// Share of echo and proxy connections that send a message every second.
        #[arg(long, default_value_t = 0.1)]
        senders: f64,
        /// CI's version: 2,000 connections for 20 s.
        #[arg(long)]
        smoke: bool,
        /// The wsgate binary (default: next to this one).
        #[arg(long)]
        wsgate: Option<PathBuf>,
        /// Write soak.json and soak.md here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Baselines run the way their users would (`#[tokio::main]`: multi-threaded, one worker per
    // core they may use); the load generator runs on one thread, pinned to its own core, so no
    // second worker competes with it there and no wake-up crosses threads.
    let rt = match cli.command {
        Cmd::Baseline { .. } => tokio::runtime::Builder::new_multi_thread(),
        Cmd::Run { .. } | Cmd::Soak { .. } => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build();
    let rt = match rt {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wsgate-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Cmd::Baseline { kind, listen } => rt.block_on(async move {
            let listener = match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("wsgate-bench: cannot bind {listen}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match listener.local_addr() {
                Ok(a) => println!("listening ws://{a}"),
                Err(e) => {
                    eprintln!("wsgate-bench: {e}");
                    return ExitCode::FAILURE;
                }
            }
            // SIGTERM ends the process normally, so profilers (callgrind) write their data.
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                eprintln!("wsgate-bench: cannot install the SIGTERM handler");
                return ExitCode::FAILURE;
            };
            match kind.as_str() {
                "tungstenite" => tokio::select! {
                    _ = baseline::tungstenite(listener) => {}
                    _ = term.recv() => {}
                },
                "fastwebsockets" => tokio::select! {
                    _ = baseline::fastwebsockets(listener) => {}
                    _ = term.recv() => {}
                },
                other => {
                    eprintln!(
                        "wsgate-bench: unknown baseline {other:?}: tungstenite or fastwebsockets"
                    );
                    return ExitCode::from(2);
                }
            }
            ExitCode::SUCCESS
        }),
        Cmd::Run {
            smoke,
            rounds,
            seconds,
            wsgate,
            out,
            only,
        } => {
            if let Some(bad) = only.iter().find(|m| !MODES.contains(&m.as_str())) {
                eprintln!(
                    "wsgate-bench: unknown mode {bad:?} in --only: expected some of {}",
                    MODES.join(", ")
                );
                return ExitCode::from(2);
            }
            let plan = Plan {
                only,
                smoke,
                rounds: if smoke { 1 } else { rounds.max(1) },
                seconds: if smoke { 0.4 } else { seconds },
            };
            match rt.block_on(run(plan, wsgate, out)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("wsgate-bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Soak {
            connections,
            seconds,
            churn,
            senders,
            smoke,
            wsgate,
            out,
        } => {
            let plan = soak::SoakPlan {
                connections: if smoke { 2_000 } else { connections.max(10) },
                seconds: if smoke { 20.0 } else { seconds.max(5.0) },
                churn: churn.clamp(0.0, 0.5),
                senders: senders.clamp(0.0, 1.0),
                warmup: if smoke { 2.0 } else { 10.0 },
            };
            match rt.block_on(soak_mode(plan, wsgate, out)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("wsgate-bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The soak's server: echo, channel and proxy routes (the proxy in front of this binary's
/// fastwebsockets echo), with the admin listener on for the task count.
async fn soak_mode(
    plan: soak::SoakPlan,
    wsgate: Option<PathBuf>,
    out: Option<PathBuf>,
) -> Result<bool, String> {
    let wsgate = match wsgate {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("wsgate"),
    };
    if let Some(limit) = open_files_limit() {
        // One descriptor per client here; the server holds as many plus a fifth for upstreams.
        let need = plan.connections as u64 * 6 / 5 + 256;
        if limit < need {
            return Err(format!(
                "the open-files limit is {limit}; {} connections need about {need} (raise `ulimit -n`)",
                plan.connections
            ));
        }
    }
    let upstream = start_with("fastwebsockets", &wsgate, Launch::Unpinned, String::new())?;
    let dir = tempdir::Dir::new("soak")?;
    let cfg = dir.0.join("soak.toml");
    let config = format!(
        r#"[[listener]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[limits]
max_connections = {}
ping_interval = "20s"
idle_timeout = "60s"
[logging]
level = "warn"
[[route]]
path = "/ws/echo"
kind = "echo"
[[route]]
path = "/ws/chat/{{room}}"
kind = "channel"
[[route]]
path = "/ws/proxy"
kind = "proxy"
upstream = "ws://{}/"
connect_timeout = "10s"
"#,
        plan.connections * 3 / 2,
        upstream.addr
    );
    std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
    let mut child = Command::new(&wsgate)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", wsgate.display()))?;
    let (addr, admin) = match read_banner(&mut child, "wsgate", true) {
        Ok((a, Some(admin))) => (a, admin),
        Ok((_, None)) => return Err("wsgate printed no admin address".into()),
        Err(e) => return Err(e),
    };
    let server = Server {
        name: "wsgate",
        child,
        addr,
        _config: Some(dir),
    };
    eprintln!(
        "soak: {} connections for {:.0} s against wsgate at {addr} (churn {:.1} %/s)",
        plan.connections,
        plan.seconds,
        plan.churn * 100.0
    );
    let report = soak::soak(plan, addr, pid(&server), admin, |m| eprintln!("soak: {m}")).await?;
    let md = report.markdown(&soak::TOLERANCE);
    println!("{md}");
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("soak.md"), &md).map_err(|e| e.to_string())?;
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("soak.json"), json).map_err(|e| e.to_string())?;
    }
    // Latency is reported, not judged: a shared machine's noise must not fail a run.
    let flat = report
        .verdicts(&soak::TOLERANCE)
        .iter()
        .filter(|v| v.0 != "round-trip p99")
        .all(|v| v.3);
    let ok = report.nothing_left_behind() && flat && report.failed == 0;
    if !ok {
        eprintln!("soak: NOT flat, or something was left behind or failed: see the table");
    }
    drop(upstream);
    Ok(ok)
}

/// One echo measurement (or the medians of several).
#[derive(Clone, Copy)]
struct Sample {
    msgs: f64,
    mib: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    server_cpu: f64,
    client_cpu: f64,
    /// Server CPU time per echoed message, µs: the server's cost even when the client is the
    /// limit of the rate.
    cpu_per_msg: f64,
}

impl Sample {
    /// One measurement: the load's result and the CPU seconds server and client spent on it.
    fn of(r: &load::EchoResult, server_cpu: f64, client_cpu: f64) -> Sample {
        Sample {
            msgs: r.msgs_per_sec,
            mib: r.mib_per_sec,
            p50: r.p50_us as f64,
            p99: r.p99_us as f64,
            p999: r.p999_us as f64,
            server_cpu,
            client_cpu,
            cpu_per_msg: server_cpu * 1e6 / r.messages.max(1) as f64,
        }
    }

    /// Field by field, the median over rounds.
    fn median(v: &[Sample]) -> Sample {
        let m = |f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
        Sample {
            msgs: m(|x| x.msgs),
            mib: m(|x| x.mib),
            p50: m(|x| x.p50),
            p99: m(|x| x.p99),
            p999: m(|x| x.p999),
            server_cpu: m(|x| x.server_cpu),
            client_cpu: m(|x| x.client_cpu),
            cpu_per_msg: m(|x| x.cpu_per_msg),
        }
    }
}

/// Every benchmark mode, in the order they run.
const MODES: [&str; 6] = ["echo", "admission", "fanout", "idle", "proxy", "callgrind"];

struct Plan {
    /// Modes to run; empty means all.
    only: Vec<String>,
    smoke: bool,
    rounds: usize,
    seconds: f64,
}

/// A running server under test.
struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    _config: Option<tempdir::Dir>,
}

impl Plan {
    fn wants(&self, mode: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|m| m == mode)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        /// A new, uniquely named directory under the system's temporary directory.
        pub fn new(kind: &str) -> Result<Dir, String> {
            let dir = std::env::temp_dir().join(format!(
                "wsgate-bench-{kind}-{}-{}",
                std::process::id(),
                super::rand_suffix()
            ));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            Ok(Dir(dir))
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// HS256 secret of the admission-cost route; the token below is signed with it (exp far ahead).
const SECRET: &str = "wsgate-bench-secret-of-at-least-32-bytes";

fn bench_config() -> String {
    format!(
        r#"[[listener]]
address = "127.0.0.1:0"
[limits]
max_connections = 1000000
max_message_bytes = 16777216
ping_interval = "5m"
idle_timeout = "10m"
[logging]
level = "warn"
[[route]]
path = "/ws/echo"
kind = "echo"
[[route]]
path = "/ws/chat/{{room}}"
kind = "channel"
[[route]]
path = "/ws/policy"
kind = "echo"
origins = ["https://bench.test"]
firewall = {{ allow = ["127.0.0.0/8"] }}
[route.auth]
sources = ["cookie:token"]
[[route.auth.jwt]]
secret = "{SECRET}"
"#
    )
}

/// A JWT HS256 for the policy route, made here so the harness needs no extra tool.
fn token() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B;
    use base64::Engine as _;
    let header = B.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B.encode(br#"{"sub":"bench","exp":4102444800}"#);
    let msg = format!("{header}.{payload}");
    let sig = hmac_sha256(SECRET.as_bytes(), msg.as_bytes());
    format!("{msg}.{}", B.encode(sig))
}

/// HMAC-SHA256 with ring (already the workspace's crypto provider).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The machine's cores, read once before this process pins itself to one of them (after
/// which `available_parallelism` would say 1, and children inherit the pin).
fn machine_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

fn pinned(core: usize, program: &PathBuf) -> Command {
    if machine_cores() >= 2 && which("taskset") {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(core.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn start(name: &'static str, wsgate: &PathBuf) -> Result<Server, String> {
    start_with(name, wsgate, Launch::Pinned(0), bench_config())
}

/// How a server process is started.
enum Launch {
    /// Pinned to this core.
    Pinned(usize),
    /// On any core.
    Unpinned,
    /// Under `valgrind --tool=callgrind`, writing to this file.
    Callgrind(PathBuf),
}

fn start_with(
    name: &'static str,
    wsgate: &PathBuf,
    launch: Launch,
    config: String,
) -> Result<Server, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let program = if name == "wsgate" { wsgate } else { &me };
    let pinned = |program: &PathBuf| match &launch {
        Launch::Pinned(core) => pinned(*core, program),
        Launch::Unpinned => Command::new(program),
        Launch::Callgrind(out) => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(program);
            c
        }
    };
    let (mut cmd, dir) = if name == "wsgate" {
        let dir = tempdir::Dir::new("wsgate")?;
        let cfg = dir.0.join("bench.toml");
        std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
        let mut c = pinned(program);
        c.args(["serve", "--admin", "off", "--config"]).arg(&cfg);
        (c, Some(dir))
    } else {
        let mut c = pinned(program);
        c.args(["baseline", name]);
        (c, None)
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let (addr, _) = read_banner(&mut child, name, false)?;
    Ok(Server {
        name,
        child,
        addr,
        _config: dir,
    })
}

/// Reads a server's start-up banner up to its `listening ws://` line (and, with `admin`, its
/// `admin http://` line), then keeps draining stdout so the server never blocks on a full pipe.
fn read_banner(
    child: &mut Child,
    name: &str,
    admin: bool,
) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut admin_addr) = (None, None);
    while addr.is_none() || (admin && admin_addr.is_none()) {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(rest) = l.strip_prefix("listening ws://") {
                    let a = rest.split_whitespace().next().unwrap_or("");
                    addr = Some(
                        a.parse::<SocketAddr>()
                            .map_err(|e| format!("{name} printed {l:?}: {e}"))?,
                    );
                }
                if let Some(rest) = l.strip_prefix("admin http://") {
                    admin_addr = rest.split('/').next().and_then(|a| a.parse().ok());
                }
            }
            _ => {
                let _ = child.kill();
                return Err(format!("{name} did not start"));
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    match addr {
        Some(a) => Ok((a, admin_addr)),
        None => Err(format!("{name} printed no address")),
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

/// CPU seconds (user + system) of a process.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// This process's soft limit on open files, raised to the hard limit first (the servers it
/// starts inherit it).
fn open_files_limit() -> Option<u64> {
    let _ = wsgate_server::fdlimit::raise_open_files();
    wsgate_server::fdlimit::open_files().map(|(soft, _)| soft)
}

/// The server's PID inside `taskset` (which execs the program, so it is the same PID).
fn pid(s: &Server) -> u32 {
    s.child.id()
}

/// A ratio taken round by round (the two servers ran next to each other in time, so a noisy
/// neighbour or a clock change hits both), as its median and, over several rounds, its range.
fn paired(a: &[Sample], b: &[Sample], ratio: fn(&Sample, &Sample) -> f64) -> String {
    let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| ratio(a, b)).collect();
    let (lo, hi) = r
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    match r.len() {
        0 => "-".into(),
        1 => format!("{:.2}", r[0]),
        _ => format!("{:.2} ({lo:.2}–{hi:.2})", median(r)),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn run(plan: Plan, wsgate: Option<PathBuf>, out: Option<PathBuf>) -> Result<(), String> {
    let wsgate = match wsgate {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("wsgate"),
    };
    if !wsgate.is_file() {
        return Err(format!(
            "{} is not built: `cargo build --release -p wsgate`",
            wsgate.display()
        ));
    }
    // The client runs on core 1, the servers on core 0.
    if machine_cores() >= 2 && which("taskset") {
        // -a: every thread of this process.
        let _ = Command::new("taskset")
            .args(["-a", "-cp", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
    }
    let servers = ["wsgate", "fastwebsockets", "tungstenite"];
    let dur = Duration::from_secs_f64(plan.seconds);
    let scale = |n: usize| if plan.smoke { n.min(4) } else { n };
    let cases: &[(usize, usize, usize)] = &[
        (100, 20, 1),
        (10, 1024, 1),
        (10, 16384, 1),
        (200, 16384, 1),
        (500, 16384, 1),
        (1000, 64, 16),
    ];
    let mut echo_rows = Vec::new();
    let mut md = String::from("| echo case | server | msgs/s | MiB/s | p50 µs | p99 µs | p99.9 µs | server CPU s | client CPU s | server CPU µs/msg |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let mut ratio_md = String::from("| echo case | wsgate / fastwebsockets msgs/s | wsgate / tungstenite msgs/s | wsgate p99 / fastwebsockets p99 | wsgate p99 / tungstenite p99 | server CPU per message: fastwebsockets / wsgate | tungstenite / wsgate |\n|---|---|---|---|---|---|---|\n");
    for &(conns, size, inflight) in cases.iter().filter(|_| plan.wants("echo")) {
        let label = format!(
            "{conns} × {size} B{}",
            if inflight > 1 {
                format!(", {inflight} in flight")
            } else {
                String::new()
            }
        );
        // Smoke runs keep the case names but open at most 4 connections.
        let conns = scale(conns);
        let mut per: std::collections::BTreeMap<&str, Vec<Sample>> = Default::default();
        for round in 0..plan.rounds {
            for k in 0..servers.len() {
                let name = servers[(k + round) % servers.len()];
                let s = start(name, &wsgate)?;
                let spid = pid(&s).to_string();
                let (c0, s0) = (cpu_secs("self"), cpu_secs(&spid));
                let r = load::echo(s.addr, "/ws/echo", conns, size, inflight, dur)
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                let (c1, s1) = (cpu_secs("self"), cpu_secs(&spid));
                per.entry(s.name)
                    .or_default()
                    .push(Sample::of(&r, s1 - s0, c1 - c0));
            }
        }
        for (name, v) in &per {
            let row = Sample::median(v);
            md.push_str(&format!(
                "| {label} | {name} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
                row.msgs, row.mib, row.p50, row.p99, row.p999, row.server_cpu, row.client_cpu, row.cpu_per_msg
            ));
            echo_rows.push(json!({"case": label, "connections": conns, "server": name, "msgs_per_sec": row.msgs, "mib_per_sec": row.mib, "p50_us": row.p50, "p99_us": row.p99, "p999_us": row.p999, "server_cpu_s": row.server_cpu, "client_cpu_s": row.client_cpu, "server_cpu_us_per_msg": row.cpu_per_msg}));
        }
        if let (Some(w), Some(f), Some(t)) = (
            per.get("wsgate"),
            per.get("fastwebsockets"),
            per.get("tungstenite"),
        ) {
            let rate = |a: &Sample, b: &Sample| a.msgs / b.msgs.max(1e-9);
            let p99 = |a: &Sample, b: &Sample| a.p99 / b.p99.max(1.0);
            let cpu = |a: &Sample, b: &Sample| b.cpu_per_msg / a.cpu_per_msg.max(1e-9);
            ratio_md.push_str(&format!(
                "| {label} | {} | {} | {} | {} | {} | {} |\n",
                paired(w, f, rate),
                paired(w, t, rate),
                paired(w, f, p99),
                paired(w, t, p99),
                paired(w, f, cpu),
                paired(w, t, cpu)
            ));
        }
    }

    // Admission cost: the full policy (JWT in a cookie, origin and CIDR allowlists) vs none.
    let mut sections = Vec::new();
    let mut doc = serde_json::Map::new();
    if !echo_rows.is_empty() {
        sections.push(format!(
            "### Echo\n\n{md}\n### Ratios (same run)\n\n{ratio_md}"
        ));
        doc.insert("echo".into(), json!(echo_rows));
    }
    if plan.wants("admission") {
        let s = start("wsgate", &wsgate)?;
        let parallel = if plan.smoke { 2 } else { 32 };
        let policy_headers = vec![
            ("Origin".to_owned(), "https://bench.test".to_owned()),
            ("Cookie".to_owned(), format!("token={}", token())),
        ];
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..plan.rounds {
            without.push(
                load::handshakes(s.addr, "/ws/echo", Vec::new(), parallel, dur)
                    .await
                    .map_err(|e| format!("handshakes: {e}"))?,
            );
            with.push(
                load::handshakes(s.addr, "/ws/policy", policy_headers.clone(), parallel, dur)
                    .await
                    .map_err(|e| format!("handshakes with policy: {e}"))?,
            );
        }
        let (hw, hn) = (median(with), median(without));
        sections.push(format!("### Admission cost\n\nHandshakes/s through the full policy (HS256 JWT in a cookie, origin allowlist, CIDR allowlist): {hw:.0}; with no policy: {hn:.0}; ratio {:.2}.\n", hw / hn.max(1e-9)));
        doc.insert("handshake".into(), json!({"with_policy_per_sec": hw, "without_policy_per_sec": hn, "ratio": hw / hn.max(1e-9)}));
    }

    if plan.wants("fanout") {
        // Fan-out: one publisher, K subscribers in one room (wsgate only: the baselines have no rooms).
        let mut fan_md = String::from(
        "| subscribers | deliveries/s | publish→delivery p99 µs | worst µs |\n|---|---|---|---|\n",
    );
        let mut fan_rows = Vec::new();
        for k in if plan.smoke {
            vec![5]
        } else {
            vec![100, 10_000]
        } {
            let s = start("wsgate", &wsgate)?;
            let msgs = if plan.smoke {
                5
            } else if k > 1000 {
                20
            } else {
                500
            };
            let r = load::fanout(s.addr, "/ws/chat/bench", k, msgs)
                .await
                .map_err(|e| format!("fan-out: {e}"))?;
            fan_md.push_str(&format!(
                "| {k} | {:.0} | {} | {} |\n",
                r.deliveries_per_sec, r.p99_us, r.max_us
            ));
            fan_rows.push(json!({"subscribers": k, "messages": msgs, "result": r}));
        }
        sections.push(format!("### Fan-out (one publisher, one room)\n\n{fan_md}"));
        doc.insert("fanout".into(), json!(fan_rows));
    }

    if plan.wants("idle") {
        // Idle memory: RSS growth per open, idle connection, at 10,000 and 100,000 (sources
        // spread over 200 loopback addresses, so one address's ports are not the limit).
        let counts: &[usize] = if plan.smoke {
            &[50]
        } else {
            &[10_000, 100_000]
        };
        let mut idle_md = String::from(
            "| server | idle connections | RSS growth per connection (bytes) |\n|---|---|---|\n",
        );
        let mut idle_rows = Vec::new();
        for &idle_n in counts {
            // Client and server each hold one descriptor per connection, plus a margin.
            let need = idle_n as u64 + 2048;
            let limit = open_files_limit();
            if limit.is_some_and(|l| l < need) {
                let limit = limit.unwrap_or_default();
                idle_md.push_str(&format!(
                    "| (not run) | {idle_n} | needs {need} open files per process; the limit here is {limit} (`ulimit -n`; above the hard limit, raising it needs CAP_SYS_RESOURCE) |\n"
                ));
                idle_rows.push(json!({"connections": idle_n, "skipped": format!("open files limit {limit} < {need}")}));
                continue;
            }
            for name in servers {
                // tokio-tungstenite keeps ~130 KiB per connection: 100,000 would need ~13 GiB.
                if idle_n > 10_000 && name == "tungstenite" {
                    continue;
                }
                let s = start(name, &wsgate)?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let before = rss_bytes(pid(&s));
                let conns = load::idle(s.addr, "/ws/echo", idle_n)
                    .await
                    .map_err(|e| format!("{name} idle: {e}"))?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let after = rss_bytes(pid(&s));
                drop(conns);
                let per = after.saturating_sub(before) as f64 / idle_n as f64;
                idle_md.push_str(&format!("| {name} | {idle_n} | {per:.0} |\n"));
                idle_rows.push(
                    json!({"server": name, "connections": idle_n, "rss_bytes_per_connection": per}),
                );
            }
        }
        sections.push(format!("### Idle connections\n\n{idle_md}"));
        doc.insert("idle".into(), json!(idle_rows));
    }
    if plan.wants("proxy") {
        let (section, rows) = proxy_mode(&plan, &wsgate, dur).await?;
        sections.push(section);
        doc.insert("proxy".into(), rows);
    }
    if plan.wants("callgrind") {
        let (section, rows) = callgrind_mode(&plan, &wsgate, out.as_deref()).await?;
        sections.push(section);
        doc.insert("callgrind".into(), rows);
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = machine_cores();
    let header = format!(
        "Machine: {cpu}, {cores} cores; server pinned to core 0 and client to core 1 (taskset{}); {} round(s) of {:.1} s per case, medians.\n\n",
        if which("taskset") { "" } else { " not found: unpinned" },
        plan.rounds,
        plan.seconds
    );
    let report = format!("{header}{}", sections.join("\n"));
    print!("{report}");
    for (k, v) in [
        ("smoke", json!(plan.smoke)),
        ("rounds", json!(plan.rounds)),
        ("seconds", json!(plan.seconds)),
        ("cpu", json!(cpu)),
        ("cores", json!(cores)),
    ] {
        doc.insert(k.into(), v);
    }
    let doc = serde_json::Value::Object(doc);
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("results.md"), &report).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn nginx_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nginx"))
            .find(|f| f.is_file())
    }) {
        return Some(p);
    }
    let sbin = PathBuf::from("/usr/sbin/nginx");
    sbin.is_file().then_some(sbin)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// nginx (Debian's) as a WebSocket reverse proxy to `upstream`, one process pinned to core 0:
/// the configuration its documentation gives for WebSocket proxying.
fn start_nginx(upstream: SocketAddr) -> Result<Server, String> {
    let exe = nginx_binary()
        .ok_or("nginx is missing (Debian package nginx): the proxy mode measures against it")?;
    let dir = tempdir::Dir::new("nginx")?;
    let d = dir.0.display();
    let port = free_port()?;
    let conf = format!(
        r#"worker_processes 1;
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log stderr error;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }}
    }}
}}
"#
    );
    let cfg = dir.0.join("nginx.conf");
    std::fs::write(&cfg, conf).map_err(|e| e.to_string())?;
    let child = pinned(0, &exe)
        .arg("-p")
        .arg(&dir.0)
        .arg("-c")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = Server {
        name: "nginx",
        child,
        addr,
        _config: Some(dir),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nginx did not listen on {addr}"))
}

/// Proxy relay: wsgate's `proxy` route and nginx, each in front of the same upstream echo server
/// (the fastwebsockets baseline, on the client's core), under the same echo load.
async fn proxy_mode(
    plan: &Plan,
    wsgate: &PathBuf,
    dur: Duration,
) -> Result<(String, serde_json::Value), String> {
    let upstream = start_with("fastwebsockets", wsgate, Launch::Pinned(1), String::new())?;
    let config = format!(
        "{}[[route]]\npath = \"/ws/proxy\"\nkind = \"proxy\"\nupstream = \"ws://{}/\"\n",
        bench_config(),
        upstream.addr
    );
    let cases: &[(usize, usize)] = &[(100, 20), (10, 16384), (200, 16384)];
    let mut md = String::from("| proxied echo case | proxy | msgs/s | MiB/s | p50 µs | p99 µs | p99.9 µs | proxy CPU s | client CPU s | upstream CPU s |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let mut ratio_md = String::from(
        "| proxied echo case | wsgate / nginx msgs/s | wsgate p99 / nginx p99 |\n|---|---|---|\n",
    );
    let mut rows = Vec::new();
    let upid = pid(&upstream).to_string();
    for &(conns, size) in cases {
        let label = format!("{conns} × {size} B");
        let conns = if plan.smoke { conns.min(4) } else { conns };
        // Per proxy: its samples, and the upstream's CPU seconds in each.
        type Runs = (Vec<Sample>, Vec<f64>);
        let mut per: std::collections::BTreeMap<&str, Runs> = Default::default();
        for round in 0..plan.rounds {
            for k in 0..2 {
                let s = if (k + round) % 2 == 0 {
                    start_with("wsgate", wsgate, Launch::Pinned(0), config.clone())?
                } else {
                    start_nginx(upstream.addr)?
                };
                let path = if s.name == "wsgate" { "/ws/proxy" } else { "/" };
                let spid = pid(&s).to_string();
                let (c0, s0, u0) = (cpu_secs("self"), cpu_secs(&spid), cpu_secs(&upid));
                let r = load::echo(s.addr, path, conns, size, 1, dur)
                    .await
                    .map_err(|e| format!("{} proxy: {e}", s.name))?;
                let (c1, s1, u1) = (cpu_secs("self"), cpu_secs(&spid), cpu_secs(&upid));
                let e = per.entry(s.name).or_default();
                e.0.push(Sample::of(&r, s1 - s0, c1 - c0));
                e.1.push(u1 - u0);
            }
        }
        for (name, (samples, up)) in &per {
            let row = Sample::median(samples);
            let up_cpu = median(up.clone());
            md.push_str(&format!(
                "| {label} | {name} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
                row.msgs, row.mib, row.p50, row.p99, row.p999, row.server_cpu, row.client_cpu, up_cpu
            ));
            rows.push(json!({"case": label, "connections": conns, "proxy": name, "msgs_per_sec": row.msgs, "mib_per_sec": row.mib, "p50_us": row.p50, "p99_us": row.p99, "p999_us": row.p999, "proxy_cpu_s": row.server_cpu, "client_cpu_s": row.client_cpu, "upstream_cpu_s": up_cpu}));
        }
        if let (Some((w, _)), Some((n, _))) = (per.get("wsgate"), per.get("nginx")) {
            ratio_md.push_str(&format!(
                "| {label} | {} | {} |\n",
                paired(w, n, |a, b| a.msgs / b.msgs.max(1e-9)),
                paired(w, n, |a, b| a.p99 / b.p99.max(1.0))
            ));
        }
    }
    Ok((
        format!("### Proxy relay (upstream: the fastwebsockets echo server)\n\n{md}\n{ratio_md}"),
        json!(rows),
    ))
}

/// Instructions per echoed message under `valgrind --tool=callgrind`: two runs with different
/// message counts, so start-up and handshakes cancel out of the difference.
/// `keep`: a directory where the profiles stay (`--out`), for `callgrind_annotate`.
async fn callgrind_mode(
    plan: &Plan,
    wsgate: &PathBuf,
    keep: Option<&std::path::Path>,
) -> Result<(String, serde_json::Value), String> {
    if !which("valgrind") {
        return Err(
            "valgrind is missing (Debian package valgrind): the callgrind mode needs it".into(),
        );
    }
    let dir = tempdir::Dir::new("callgrind")?;
    let profiles = match keep {
        Some(k) => {
            std::fs::create_dir_all(k).map_err(|e| format!("{}: {e}", k.display()))?;
            k.to_path_buf()
        }
        None => dir.0.clone(),
    };
    let conns = 10;
    let (few, many) = if plan.smoke { (20, 60) } else { (200, 1200) };
    let mut md =
        String::from("| server | instructions per echoed 20 B message | runs |\n|---|---|---|\n");
    let mut rows = Vec::new();
    for name in ["wsgate", "fastwebsockets", "tungstenite"] {
        let mut totals = Vec::new();
        for per_conn in [few, many] {
            let out = profiles.join(format!("{name}-{per_conn}.callgrind"));
            let s = start_with(name, wsgate, Launch::Callgrind(out.clone()), bench_config())?;
            let done = load::echo_fixed(s.addr, "/ws/echo", conns, 20, per_conn)
                .await
                .map_err(|e| format!("{name} under callgrind: {e}"))?;
            if done != (conns * per_conn) as u64 {
                return Err(format!(
                    "{name} under callgrind echoed {done} of {} messages",
                    conns * per_conn
                ));
            }
            stop_gracefully(s)?;
            totals.push(callgrind_total(&out)?);
        }
        let per_msg = (totals[1] as f64 - totals[0] as f64) / ((many - few) * conns) as f64;
        md.push_str(&format!(
            "| {name} | {per_msg:.0} | {} and {} messages: {} and {} instructions |\n",
            few * conns,
            many * conns,
            totals[0],
            totals[1]
        ));
        rows.push(json!({"server": name, "instructions_per_message": per_msg, "messages": [few * conns, many * conns], "instructions": totals}));
    }
    Ok((
        format!("### CPU cost per message (valgrind --tool=callgrind, instructions)\n\n{md}"),
        json!(rows),
    ))
}

/// SIGTERM, then wait: every server under test exits normally on it, so callgrind writes its data.
fn stop_gracefully(mut s: Server) -> Result<(), String> {
    let pid = pid(&s).to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..600 {
        if let Ok(Some(_)) = s.child.try_wait() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{} did not exit within 60 s of SIGTERM", s.name))
}

/// The total instruction count of a callgrind output file.
fn callgrind_total(path: &std::path::Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("no callgrind output at {}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .ok_or_else(|| format!("no totals in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(token().split('.').count(), 3);
    }
}
