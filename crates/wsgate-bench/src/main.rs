//! `wsgate-bench`: runs wsgate and baseline servers under the same load, side by side in one run,
//! and reports medians and ratios (never absolute targets). `run --smoke` is the few-second
//! version CI runs so the harness never rots; `run` is the full one, by hand.

#![forbid(unsafe_code)]

mod baseline;
mod fanout;
mod load;
mod report;
mod run;
mod servers;
mod soak;

use clap::{Parser, Subcommand};
use run::{run, soak_mode, Plan, MODES};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
        /// tungstenite | fastwebsockets | yawc
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
        /// Run only these modes (comma-separated): echo, admission, fanout, compression, cluster, idle, proxy, callgrind.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// One fan-out load against a running server (for profiling it with `perf`); prints JSON.
    Fanout {
        /// The server, e.g. 127.0.0.1:8080.
        addr: SocketAddr,
        /// Room paths are this prefix and a room number.
        #[arg(long, default_value = "/ws/fan/")]
        prefix: String,
        /// Rooms.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Subscribers per room.
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Publishers (the rooms are dealt out among them).
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 20)]
        size: usize,
        /// Messages in flight per publisher.
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
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
        Cmd::Run { .. } | Cmd::Soak { .. } | Cmd::Fanout { .. } => {
            tokio::runtime::Builder::new_current_thread()
        }
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
                "yawc" => tokio::select! {
                    _ = baseline::yawc(listener) => {}
                    _ = term.recv() => {}
                },
                other => {
                    eprintln!(
                        "wsgate-bench: unknown baseline {other:?}: tungstenite, fastwebsockets or yawc"
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
        Cmd::Fanout {
            addr,
            prefix,
            rooms,
            members,
            publishers,
            size,
            in_flight,
            seconds,
        } => {
            let plan = fanout::FanoutPlan {
                rooms: rooms.max(1),
                members: members.max(1),
                publishers,
                size,
                in_flight,
                duration: std::time::Duration::from_secs_f64(seconds.clamp(0.1, 600.0)),
                messages: None,
            };
            let r =
                rt.block_on(async move { fanout::open(addr, &prefix, plan).await?.run().await });
            match r {
                Ok(r) => {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wsgate-bench: fan-out: {e}");
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
