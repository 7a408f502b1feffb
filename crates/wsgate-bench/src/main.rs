//! `wsgate-bench`: runs wsgate and baseline servers under the same load, side by side in one run,
//! and reports medians and ratios (never absolute targets). `run --smoke` is the few-second
//! version CI runs so the harness never rots; `run` is the full one, by hand.

mod baseline;
mod load;

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
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// The wsgate binary (default: next to this one).
        #[arg(long)]
        wsgate: Option<PathBuf>,
        /// Write results.json and results.md here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
            match kind.as_str() {
                "tungstenite" => baseline::tungstenite(listener).await,
                "fastwebsockets" => baseline::fastwebsockets(listener).await,
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
        } => {
            let plan = Plan {
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
    }
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
}

#[derive(Clone, Copy)]
struct Plan {
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

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
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

fn pinned(core: usize, program: &PathBuf) -> Command {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cores >= 2 && which("taskset") {
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
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let (mut cmd, dir) = if name == "wsgate" {
        let dir = std::env::temp_dir().join(format!(
            "wsgate-bench-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let cfg = dir.join("bench.toml");
        std::fs::write(&cfg, bench_config()).map_err(|e| e.to_string())?;
        let mut c = pinned(0, wsgate);
        c.args(["serve", "--admin", "off", "--config"]).arg(&cfg);
        (c, Some(tempdir::Dir(dir)))
    } else {
        let mut c = pinned(0, &me);
        c.args(["baseline", name]);
        (c, None)
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(rest) = l.strip_prefix("listening ws://") {
                    let a = rest.split_whitespace().next().unwrap_or("");
                    break a
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("{name} printed {l:?}: {e}"))?;
                }
            }
            _ => {
                let _ = child.kill();
                return Err(format!("{name} did not start"));
            }
        }
    };
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Server {
        name,
        child,
        addr,
        _config: dir,
    })
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

/// The server's PID inside `taskset` (which execs the program, so it is the same PID).
fn pid(s: &Server) -> u32 {
    s.child.id()
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
    if std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        >= 2
        && which("taskset")
    {
        // -a: every thread of this process (the runtime's workers exist already).
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
    let mut md = String::from("| echo case | server | msgs/s | MiB/s | p50 µs | p99 µs | p99.9 µs | server CPU s | client CPU s |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut ratio_md = String::from("| echo case | wsgate / fastwebsockets msgs/s | wsgate / tungstenite msgs/s | wsgate p99 / fastwebsockets p99 | wsgate p99 / tungstenite p99 |\n|---|---|---|---|---|\n");
    for &(conns, size, inflight) in cases {
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
                per.entry(s.name).or_default().push(Sample {
                    msgs: r.msgs_per_sec,
                    mib: r.mib_per_sec,
                    p50: r.p50_us as f64,
                    p99: r.p99_us as f64,
                    p999: r.p999_us as f64,
                    server_cpu: s1 - s0,
                    client_cpu: c1 - c0,
                });
            }
        }
        let mut med = std::collections::BTreeMap::new();
        for (name, v) in &per {
            let m = |f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
            let row = Sample {
                msgs: m(|x| x.msgs),
                mib: m(|x| x.mib),
                p50: m(|x| x.p50),
                p99: m(|x| x.p99),
                p999: m(|x| x.p999),
                server_cpu: m(|x| x.server_cpu),
                client_cpu: m(|x| x.client_cpu),
            };
            md.push_str(&format!(
                "| {label} | {name} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |\n",
                row.msgs, row.mib, row.p50, row.p99, row.p999, row.server_cpu, row.client_cpu
            ));
            echo_rows.push(json!({"case": label, "connections": conns, "server": name, "msgs_per_sec": row.msgs, "mib_per_sec": row.mib, "p50_us": row.p50, "p99_us": row.p99, "p999_us": row.p999, "server_cpu_s": row.server_cpu, "client_cpu_s": row.client_cpu}));
            med.insert(*name, row);
        }
        if let (Some(w), Some(f), Some(t)) = (
            med.get("wsgate"),
            med.get("fastwebsockets"),
            med.get("tungstenite"),
        ) {
            ratio_md.push_str(&format!(
                "| {label} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                w.msgs / f.msgs.max(1e-9),
                w.msgs / t.msgs.max(1e-9),
                w.p99 / f.p99.max(1.0),
                w.p99 / t.p99.max(1.0)
            ));
        }
    }

    // Admission cost: the full policy (JWT in a cookie, origin and CIDR allowlists) vs none.
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
    drop(s);

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

    // Idle memory: RSS growth per open, idle connection.
    let idle_n = if plan.smoke { 50 } else { 10_000 };
    let mut idle_md = String::from(
        "| server | idle connections | RSS growth per connection (bytes) |\n|---|---|---|\n",
    );
    let mut idle_rows = Vec::new();
    for name in servers {
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
        idle_rows
            .push(json!({"server": name, "connections": idle_n, "rss_bytes_per_connection": per}));
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let header = format!(
        "Machine: {cpu}, {cores} cores; server pinned to core 0 and client to core 1 (taskset{}); {} round(s) of {:.1} s per case, medians.\n\n",
        if which("taskset") { "" } else { " not found: unpinned" },
        plan.rounds,
        plan.seconds
    );
    let report = format!(
        "{header}### Echo\n\n{md}\n### Ratios (same run)\n\n{ratio_md}\n### Admission cost\n\nHandshakes/s through the full policy (HS256 JWT in a cookie, origin allowlist, CIDR allowlist): {hw:.0}; with no policy: {hn:.0}; ratio {:.2}.\n\n### Fan-out (one publisher, one room)\n\n{fan_md}\n### Idle connections\n\n{idle_md}",
        hw / hn.max(1e-9)
    );
    print!("{report}");
    let doc = json!({
        "smoke": plan.smoke, "rounds": plan.rounds, "seconds": plan.seconds, "cpu": cpu, "cores": cores,
        "echo": echo_rows,
        "handshake": {"with_policy_per_sec": hw, "without_policy_per_sec": hn, "ratio": hw / hn.max(1e-9)},
        "fanout": fan_rows,
        "idle": idle_rows,
    });
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
