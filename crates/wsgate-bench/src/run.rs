//! The runner: every benchmark mode, measuring wsgate and the baselines side by side in one run
//! (alternating order by round), handing each mode's numbers to the report (`report.rs`).

use crate::fanout::{self, FanoutPlan};
use crate::report::{self, median, paired, Report, Sample};
use crate::servers::*;
use crate::{load, soak};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every benchmark mode, in the order they run.
pub const MODES: [&str; 8] = [
    "echo",
    "admission",
    "fanout",
    "compression",
    "cluster",
    "idle",
    "proxy",
    "callgrind",
];

pub struct Plan {
    /// Modes to run; empty means all.
    pub only: Vec<String>,
    pub smoke: bool,
    pub rounds: usize,
    pub seconds: f64,
}

impl Plan {
    pub fn wants(&self, mode: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|m| m == mode)
    }
}

/// Runs the modes of the plan against the wsgate binary (default: next to this one).
pub async fn run(plan: Plan, wsgate: Option<PathBuf>, out: Option<PathBuf>) -> Result<(), String> {
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
    // Bun (uWebSockets inside) joins the echo and fan-out runs when it is installed; CI must have it.
    let bun = bun_binary().is_some();
    if !bun && std::env::var("CI").is_ok_and(|v| v == "true") {
        return Err(bun_missing());
    }
    let baselines_note = if bun {
        String::new()
    } else {
        format!("({}: Bun is left out of this run.)\n", bun_missing())
    };
    let servers: &[&'static str] = if bun {
        &["wsgate", "fastwebsockets", "tungstenite", "bun"]
    } else {
        &["wsgate", "fastwebsockets", "tungstenite"]
    };
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
    let mut echo_cases = Vec::new();
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
        let mut per: BTreeMap<&'static str, Vec<Sample>> = Default::default();
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
        echo_cases.push(report::EchoCase { label, conns, per });
    }

    // Admission cost: the full policy (JWT in a cookie, origin and CIDR allowlists) vs none.
    let mut report = Report::default();
    if !echo_cases.is_empty() {
        let (section, rows) = report::echo(&echo_cases);
        report.add("echo", section, rows);
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
        report.add("handshake", format!("### Admission cost\n\nHandshakes/s through the full policy (HS256 JWT in a cookie, origin allowlist, CIDR allowlist): {hw:.0}; with no policy: {hn:.0}; ratio {:.2}.\n", hw / hn.max(1e-9)), json!({"with_policy_per_sec": hw, "without_policy_per_sec": hn, "ratio": hw / hn.max(1e-9)}));
    }

    if plan.wants("fanout") {
        let (section, rows) = fanout_mode(&plan, &wsgate, &baselines_note).await?;
        report.add("fanout", section, rows);
    }

    if plan.wants("compression") {
        let (section, rows) = compression_mode(&plan, &wsgate).await?;
        report.add("compression", section, rows);
    }

    if plan.wants("cluster") {
        let (section, rows) = cluster_mode(&plan, &wsgate).await?;
        report.add("cluster", section, rows);
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
            // Every server on its echo path, and wsgate once more with every connection a member
            // of one of 1,000 rooms.
            // And with permessage-deflate negotiated, each connection idle after echoing one
            // compressed 1 KiB message: what compression keeps per connection.
            let deflated = load::deflate_message(&json_text(1024));
            let runs = servers.iter().map(|&n| (n, n, "/ws/echo", None)).chain([
                ("wsgate (room members)", "wsgate", "/ws/chat/{room}", None),
                (
                    "wsgate (deflate, stateless)",
                    "wsgate",
                    "/ws/echo",
                    Some(&deflated),
                ),
                (
                    "wsgate (deflate, contextual)",
                    "wsgate",
                    "/ws/echo-contextual",
                    Some(&deflated),
                ),
                ("yawc (deflate)", "yawc", "/ws/echo", Some(&deflated)),
            ]);
            for (label, name, path, message) in runs {
                // tokio-tungstenite keeps ~130 KiB per connection: 100,000 would need ~13 GiB;
                // compressing servers keep their windows (hundreds of KiB).
                let heavy = name == "tungstenite" || name == "yawc" || label.contains("contextual");
                if idle_n > 10_000 && heavy {
                    continue;
                }
                let s = start(name, &wsgate)?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let before = rss_bytes(pid(&s));
                let conns = load::idle_after(s.addr, path, idle_n, message)
                    .await
                    .map_err(|e| format!("{label} idle: {e}"))?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let after = rss_bytes(pid(&s));
                drop(conns);
                let per = after.saturating_sub(before) as f64 / idle_n as f64;
                idle_md.push_str(&format!("| {label} | {idle_n} | {per:.0} |\n"));
                idle_rows.push(
                    json!({"server": label, "connections": idle_n, "rss_bytes_per_connection": per}),
                );
            }
        }
        report.add(
            "idle",
            format!("### Idle connections\n\n{idle_md}"),
            json!(idle_rows),
        );
    }
    if plan.wants("proxy") {
        let (section, rows) = proxy_mode(&plan, &wsgate, dur).await?;
        report.add("proxy", section, rows);
    }
    if plan.wants("callgrind") {
        let (section, rows) = callgrind_mode(&plan, &wsgate, out.as_deref()).await?;
        report.add("callgrind", section, rows);
    }

    report.finish(&plan, out.as_deref())
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
                let (samples, upstream_cpu) = per.entry(s.name).or_default();
                samples.push(Sample::of(&r, s1 - s0, c1 - c0));
                upstream_cpu.push(u1 - u0);
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
    // Fan-out: instructions per delivery, one room of 100 subscribers, 20 B, 16 in flight (wsgate
    // only: Bun's JIT does not run usefully under valgrind).
    let members = if plan.smoke { 5 } else { 100 };
    let mut totals = Vec::new();
    for messages in [few as u64, many as u64] {
        let out = profiles.join(format!("wsgate-fanout-{messages}.callgrind"));
        let s = start_with(
            "wsgate",
            wsgate,
            Launch::Callgrind(out.clone()),
            bench_config(),
        )?;
        let f = fanout::open(
            s.addr,
            "/ws/fan/",
            FanoutPlan {
                rooms: 1,
                members,
                publishers: 1,
                size: 20,
                in_flight: 16,
                duration: Duration::ZERO,
                messages: Some(messages),
            },
        )
        .await
        .map_err(|e| format!("fan-out under callgrind: {e}"))?;
        let r = f
            .run()
            .await
            .map_err(|e| format!("fan-out under callgrind: {e}"))?;
        if r.messages != messages {
            return Err(format!(
                "fan-out under callgrind completed {} of {messages} messages",
                r.messages
            ));
        }
        stop_gracefully(s)?;
        totals.push(callgrind_total(&out)?);
    }
    let deliveries = (many - few) as f64 * members as f64;
    let per_delivery = (totals[1] as f64 - totals[0] as f64) / deliveries;
    let fan_md = format!(
        "| server | instructions per delivery (one room of {members}, 20 B, 16 in flight) | runs |\n|---|---|---|\n| wsgate | {per_delivery:.0} | {few} and {many} messages: {} and {} instructions |\n",
        totals[0], totals[1]
    );
    Ok((
        format!(
            "### CPU cost per message (valgrind --tool=callgrind, instructions)\n\n{md}\n{fan_md}"
        ),
        json!({"echo": rows, "fanout": {"server": "wsgate", "members": members, "instructions_per_delivery": per_delivery, "messages": [few, many], "instructions": totals}}),
    ))
}

/// One fan-out measurement.
#[derive(Clone, Copy)]
struct FanSample {
    deliveries_per_sec: f64,
    /// Server CPU µs per delivery.
    cpu_per_delivery: f64,
    p50: f64,
    p99: f64,
    client_cpu: f64,
}

/// Fan-out: rooms of subscribers and publishers keeping 16 messages in flight, a message
/// counting once every member of its room has it; wsgate and Bun (uWebSockets) alternate.
async fn fanout_mode(
    plan: &Plan,
    wsgate: &PathBuf,
    note: &str,
) -> Result<(String, serde_json::Value), String> {
    let servers: &[&'static str] = if bun_binary().is_some() {
        &["wsgate", "bun"]
    } else {
        &["wsgate"]
    };
    let dur = Duration::from_secs_f64(plan.seconds);
    let case = |rooms, members, publishers, size| FanoutPlan {
        rooms,
        members,
        publishers,
        size,
        in_flight: 16,
        duration: dur,
        messages: None,
    };
    let cases: Vec<FanoutPlan> = if plan.smoke {
        vec![case(1, 5, 1, 20), case(4, 3, 2, 20)]
    } else {
        let mut v = Vec::new();
        for size in [20, 1024] {
            for members in [100, 1_000, 10_000] {
                v.push(case(1, members, 1, size));
            }
        }
        v.push(case(1_000, 10, 100, 20));
        v
    };
    let mut md = String::from("| case | server | deliveries/s | server CPU µs per delivery | publish→delivery p50 µs | p99 µs | client CPU s |\n|---|---|---|---|---|---|---|\n");
    let mut ratio_md = String::from("| case | wsgate / Bun deliveries/s | server CPU per delivery: Bun / wsgate |\n|---|---|---|\n");
    let mut rows = Vec::new();
    for c in cases {
        let label = if c.rooms == 1 {
            format!("1 room × {}, {} B", c.members, c.size)
        } else {
            format!(
                "{} rooms × {}, {} publishers, {} B",
                c.rooms, c.members, c.publishers, c.size
            )
        };
        let conns = c.rooms * (c.members + 1);
        if open_files_limit().is_some_and(|l| l < conns as u64 + 1024) {
            md.push_str(&format!(
                "| {label} | (not run) | needs {} open files per process (`ulimit -n`) | | | | |\n",
                conns + 1024
            ));
            continue;
        }
        let mut per: BTreeMap<&'static str, Vec<FanSample>> = Default::default();
        for round in 0..plan.rounds {
            for k in 0..servers.len() {
                let name = servers[(k + round) % servers.len()];
                let s = start(name, wsgate)?;
                let f = fanout::open(s.addr, "/ws/fan/", c)
                    .await
                    .map_err(|e| format!("{name} fan-out: {e}"))?;
                let spid = pid(&s).to_string();
                let (c0, s0) = (cpu_secs("self"), cpu_secs(&spid));
                let r = f.run().await.map_err(|e| format!("{name} fan-out: {e}"))?;
                let (c1, s1) = (cpu_secs("self"), cpu_secs(&spid));
                per.entry(s.name).or_default().push(FanSample {
                    deliveries_per_sec: r.deliveries_per_sec,
                    cpu_per_delivery: (s1 - s0) * 1e6 / r.deliveries.max(1) as f64,
                    p50: r.p50_us as f64,
                    p99: r.p99_us as f64,
                    client_cpu: c1 - c0,
                });
            }
        }
        for (name, v) in &per {
            let m = |f: fn(&FanSample) -> f64| median(v.iter().map(f).collect());
            let (rate, cpu, p50, p99, client) = (
                m(|x| x.deliveries_per_sec),
                m(|x| x.cpu_per_delivery),
                m(|x| x.p50),
                m(|x| x.p99),
                m(|x| x.client_cpu),
            );
            md.push_str(&format!(
                "| {label} | {name} | {rate:.0} | {cpu:.2} | {p50:.0} | {p99:.0} | {client:.2} |\n"
            ));
            rows.push(json!({"case": label, "rooms": c.rooms, "members": c.members, "publishers": c.publishers, "size": c.size, "server": name, "deliveries_per_sec": rate, "server_cpu_us_per_delivery": cpu, "p50_us": p50, "p99_us": p99, "client_cpu_s": client}));
        }
        if let (Some(w), Some(b)) = (per.get("wsgate"), per.get("bun")) {
            let ratio = |f: fn(&FanSample, &FanSample) -> f64| {
                let r: Vec<f64> = w.iter().zip(b).map(|(w, b)| f(w, b)).collect();
                let (lo, hi) = r
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                if r.len() > 1 {
                    format!("{:.2} ({lo:.2}–{hi:.2})", median(r))
                } else {
                    format!("{:.2}", median(r))
                }
            };
            ratio_md.push_str(&format!(
                "| {label} | {} | {} |\n",
                ratio(|w, b| w.deliveries_per_sec / b.deliveries_per_sec.max(1e-9)),
                ratio(|w, b| b.cpu_per_delivery / w.cpu_per_delivery.max(1e-9)),
            ));
        }
    }
    Ok((
        format!("### Fan-out (rooms; 16 messages in flight per publisher; a message counts once every member has it)\n\n{note}{md}\n### Fan-out ratios (same run)\n\n{ratio_md}"),
        json!(rows),
    ))
}

/// JSON-like text of `size` bytes: records of a chat, as an application would send.
pub fn json_text(size: usize) -> Vec<u8> {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < size {
        out.push_str(&format!(
            r#"{{"id":{i},"user":"user-{}","room":"lobby","text":"message number {i} about the weather today","ts":{}}},"#,
            i % 17,
            1_790_000_000 + i * 7
        ));
        i += 1;
    }
    out.truncate(size.saturating_sub(1));
    out.push(']');
    out.into_bytes()
}

/// Echo with permessage-deflate: JSON-like text, wsgate compressing (stateless and contextual)
/// beside wsgate not compressing and yawc compressing, in alternating order.
async fn compression_mode(
    plan: &Plan,
    wsgate: &PathBuf,
) -> Result<(String, serde_json::Value), String> {
    let dur = Duration::from_secs_f64(plan.seconds);
    let conns = if plan.smoke { 4 } else { 100 };
    // (label, server, path, compressed)
    let setups: [(&str, &'static str, &str, bool); 4] = [
        ("wsgate, deflate (stateless)", "wsgate", "/ws/echo", true),
        (
            "wsgate, deflate (contextual)",
            "wsgate",
            "/ws/echo-contextual",
            true,
        ),
        ("wsgate, not compressed", "wsgate", "/ws/echo", false),
        ("yawc, deflate", "yawc", "/ws/echo", true),
    ];
    let mut md = String::from("| case | server | msgs/s | server CPU µs per msg | bytes on the wire per msg | p99 µs |\n|---|---|---|---|---|---|\n");
    let mut ratio_md = String::from("| case | wsgate / yawc msgs/s | server CPU per msg: yawc / wsgate | wire bytes: deflate / not compressed |\n|---|---|---|---|\n");
    let mut rows = Vec::new();
    for size in [1024, 16 * 1024] {
        let text = json_text(size);
        let label = format!("{conns} × {} KiB JSON text", size / 1024);
        let mut per: BTreeMap<&str, Vec<(f64, f64, f64, f64)>> = Default::default();
        for round in 0..plan.rounds {
            for k in 0..setups.len() {
                let (name, server, path, compressed) = setups[(k + round) % setups.len()];
                let message = if compressed {
                    load::deflate_message(&text)
                } else {
                    load::text_message(&text)
                };
                let s = start(server, wsgate)?;
                let back = load::echo_once(s.addr, path, &message)
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                if back != text {
                    return Err(format!("{name} did not echo the message"));
                }
                let spid = pid(&s).to_string();
                let s0 = cpu_secs(&spid);
                let r = load::echo_message(s.addr, path, conns, &message, 1, dur)
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                let s1 = cpu_secs(&spid);
                per.entry(name).or_default().push((
                    r.msgs_per_sec,
                    (s1 - s0) * 1e6 / r.messages.max(1) as f64,
                    r.wire_bytes_per_msg,
                    r.p99_us as f64,
                ));
            }
        }
        let m = |v: &[(f64, f64, f64, f64)], f: fn(&(f64, f64, f64, f64)) -> f64| {
            median(v.iter().map(f).collect())
        };
        for (name, ..) in setups {
            let Some(v) = per.get(name) else { continue };
            let (rate, cpu, wire, p99) =
                (m(v, |x| x.0), m(v, |x| x.1), m(v, |x| x.2), m(v, |x| x.3));
            md.push_str(&format!(
                "| {label} | {name} | {rate:.0} | {cpu:.2} | {wire:.0} | {p99:.0} |\n"
            ));
            rows.push(json!({"case": label, "size": size, "server": name, "msgs_per_sec": rate, "server_cpu_us_per_msg": cpu, "wire_bytes_per_msg": wire, "p99_us": p99}));
        }
        if let (Some(w), Some(y), Some(off)) = (
            per.get("wsgate, deflate (stateless)"),
            per.get("yawc, deflate"),
            per.get("wsgate, not compressed"),
        ) {
            ratio_md.push_str(&format!(
                "| {label} | {:.2} | {:.2} | {:.2} |\n",
                m(w, |x| x.0) / m(y, |x| x.0).max(1e-9),
                m(y, |x| x.1) / m(w, |x| x.1).max(1e-9),
                m(w, |x| x.2) / m(off, |x| x.2).max(1e-9),
            ));
        }
    }
    Ok((
        format!("### Compression (permessage-deflate echo, one message in flight per connection)\n\n{md}\n### Compression ratios (same run)\n\n{ratio_md}"),
        json!(rows),
    ))
}

/// One fan-out run of the cluster mode.
struct ClusterSample {
    deliveries_per_sec: f64,
    /// Server CPU (every wsgate node, and Redis) per delivery, µs.
    cpu_per_delivery: f64,
    /// Redis's share of it, µs.
    redis_cpu_per_delivery: f64,
    /// p50 of the members on the publishers' node, and on the other node (same as local on one node).
    p50_local: f64,
    p50_remote: f64,
    p99: f64,
}

/// Cross-node fan-out: the same rooms on one node, then on two nodes sharing them through a
/// real redis-server (publishers on node A, each room's members split between A and B), in
/// alternating order. Every server process (the nodes and Redis) is pinned to the servers' core,
/// so the cluster gets the single node's CPU: the ratio shows what the Redis hop costs.
async fn cluster_mode(
    plan: &Plan,
    wsgate: &PathBuf,
) -> Result<(String, serde_json::Value), String> {
    let Some(redis) = redis_binary() else {
        let why = "redis-server is missing (Debian: apt-get install redis-server)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            return Err(why.into());
        }
        return Ok((
            format!(
                "### Fan-out across nodes

(not run: {why})
"
            ),
            json!({"skipped": why}),
        ));
    };
    let dur = Duration::from_secs_f64(plan.seconds);
    let case = |rooms, members, size| FanoutPlan {
        rooms,
        members,
        publishers: 1,
        size,
        in_flight: 16,
        duration: dur,
        messages: None,
    };
    let cases: Vec<FanoutPlan> = if plan.smoke {
        vec![case(1, 6, 20), case(4, 4, 20)]
    } else {
        vec![
            case(1, 100, 20),
            case(1, 1_000, 20),
            case(1, 1_000, 1024),
            case(100, 10, 20),
        ]
    };
    let mut md = String::from("| case | setup | deliveries/s | server CPU µs per delivery (Redis's part) | p50 µs on node A | p50 µs on node B | p99 µs |\n|---|---|---|---|---|---|---|\n");
    let mut ratio_md = String::from(
        "| case | two nodes / one node deliveries/s | p50 added on node B (µs) |\n|---|---|---|\n",
    );
    let mut rows = Vec::new();
    for c in cases {
        let label = if c.rooms == 1 {
            format!("1 room × {}, {} B", c.members, c.size)
        } else {
            format!("{} rooms × {}, {} B", c.rooms, c.members, c.size)
        };
        let (mut single, mut cross) = (Vec::new(), Vec::new());
        for round in 0..plan.rounds {
            for k in 0..2 {
                if (k + round) % 2 == 0 {
                    single.push(one_node(wsgate, c).await?);
                } else {
                    cross.push(two_nodes(wsgate, &redis, c).await?);
                }
            }
        }
        let m =
            |v: &[ClusterSample], f: fn(&ClusterSample) -> f64| median(v.iter().map(f).collect());
        for (setup, v) in [("one node", &single), ("two nodes + Redis", &cross)] {
            let (rate, cpu, rcpu, p50a, p50b, p99) = (
                m(v, |x| x.deliveries_per_sec),
                m(v, |x| x.cpu_per_delivery),
                m(v, |x| x.redis_cpu_per_delivery),
                m(v, |x| x.p50_local),
                m(v, |x| x.p50_remote),
                m(v, |x| x.p99),
            );
            let p50b_shown = if setup == "one node" {
                "".to_owned()
            } else {
                format!("{p50b:.0}")
            };
            md.push_str(&format!(
                "| {label} | {setup} | {rate:.0} | {cpu:.2} ({rcpu:.2}) | {p50a:.0} | {p50b_shown} | {p99:.0} |\n"
            ));
            rows.push(json!({"case": label, "rooms": c.rooms, "members": c.members, "size": c.size, "setup": setup, "deliveries_per_sec": rate, "server_cpu_us_per_delivery": cpu, "redis_cpu_us_per_delivery": rcpu, "p50_us_node_a": p50a, "p50_us_node_b": p50b, "p99_us": p99}));
        }
        let ratio =
            m(&cross, |x| x.deliveries_per_sec) / m(&single, |x| x.deliveries_per_sec).max(1e-9);
        let added = m(&cross, |x| x.p50_remote) - m(&single, |x| x.p50_local);
        ratio_md.push_str(&format!("| {label} | {ratio:.2} | {added:.0} |\n"));
    }
    Ok((
        format!("### Fan-out across nodes (publishers on node A, each room's members split between A and B; every server process on one core)\n\n{md}\n### Fan-out across nodes, ratios (same run)\n\n{ratio_md}"),
        json!(rows),
    ))
}

/// Debian's redis-server, or `WSGATE_REDIS_SERVER`.
fn redis_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WSGATE_REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

async fn one_node(wsgate: &PathBuf, c: FanoutPlan) -> Result<ClusterSample, String> {
    let s = start("wsgate", wsgate)?;
    let f = fanout::open(s.addr, "/ws/fan/", c)
        .await
        .map_err(|e| format!("one node fan-out: {e}"))?;
    let spid = pid(&s).to_string();
    let s0 = cpu_secs(&spid);
    let r = f
        .run()
        .await
        .map_err(|e| format!("one node fan-out: {e}"))?;
    let s1 = cpu_secs(&spid);
    Ok(ClusterSample {
        deliveries_per_sec: r.deliveries_per_sec,
        cpu_per_delivery: (s1 - s0) * 1e6 / r.deliveries.max(1) as f64,
        redis_cpu_per_delivery: 0.0,
        p50_local: r.p50_us as f64,
        p50_remote: r.p50_us as f64,
        p99: r.p99_us as f64,
    })
}

async fn two_nodes(
    wsgate: &PathBuf,
    redis: &PathBuf,
    c: FanoutPlan,
) -> Result<ClusterSample, String> {
    let port = free_port()?;
    let dir = tempdir::Dir::new("redis")?;
    let mut server = pinned(0, redis);
    server
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let redis_proc = Kill(
        server
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?,
    );
    let node = |name: &str| {
        format!(
            "{}\n[cluster]\nredis = \"redis://127.0.0.1:{port}/0\"\nnode_id = \"{name}\"\n",
            bench_config()
        )
    };
    let a = start_with("wsgate", wsgate, Launch::Pinned(0), node("a"))?;
    let b = start_with("wsgate", wsgate, Launch::Pinned(0), node("b"))?;
    // The nodes connect to Redis on their own; rooms are subscribed when their members join.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let f = fanout::open_on(a.addr, &[a.addr, b.addr], "/ws/fan/", c)
        .await
        .map_err(|e| format!("two nodes fan-out: {e}"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pids = [
        pid(&a).to_string(),
        pid(&b).to_string(),
        redis_proc.0.id().to_string(),
    ];
    let before: Vec<f64> = pids.iter().map(|p| cpu_secs(p)).collect();
    let r = f
        .run()
        .await
        .map_err(|e| format!("two nodes fan-out: {e}"))?;
    let after: Vec<f64> = pids.iter().map(|p| cpu_secs(p)).collect();
    let spent: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let per = |secs: f64| secs * 1e6 / r.deliveries.max(1) as f64;
    let node = |i: usize| r.p50_us_by_node.get(i).copied().unwrap_or_default() as f64;
    drop(redis_proc);
    Ok(ClusterSample {
        deliveries_per_sec: r.deliveries_per_sec,
        cpu_per_delivery: per(spent.iter().sum()),
        redis_cpu_per_delivery: per(spent[2]),
        p50_local: node(0),
        p50_remote: node(1),
        p99: r.p99_us as f64,
    })
}

/// A child process killed when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// The soak's server: echo, channel and proxy routes (the proxy in front of this binary's
/// fastwebsockets echo), with the admin listener on for the task count.
pub async fn soak_mode(
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
        .filter(|v| v.what != "round-trip p99")
        .all(|v| v.flat);
    let ok = report.nothing_left_behind() && flat && report.failed == 0;
    if !ok {
        eprintln!("soak: NOT flat, or something was left behind or failed: see the table");
    }
    drop(upstream);
    Ok(ok)
}
