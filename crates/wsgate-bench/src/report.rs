//! The report: medians and ratios turned into Markdown tables and one JSON document, printed
//! and written with `--out`. The runner (`run.rs`) measures; nothing here starts a server.

use crate::load;
use crate::run::Plan;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// One echo measurement (or the medians of several).
#[derive(Clone, Copy)]
pub struct Sample {
    pub msgs: f64,
    pub mib: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub server_cpu: f64,
    pub client_cpu: f64,
    /// Server CPU time per echoed message, µs: the server's cost even when the client is the
    /// limit of the rate.
    pub cpu_per_msg: f64,
}

impl Sample {
    /// One measurement: the load's result and the CPU seconds server and client spent on it.
    pub fn of(r: &load::EchoResult, server_cpu: f64, client_cpu: f64) -> Sample {
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
    pub fn median(v: &[Sample]) -> Sample {
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

/// A ratio taken round by round (the two servers ran next to each other in time, so a noisy
/// neighbour or a clock change hits both), as its median and, over several rounds, its range.
pub fn paired(a: &[Sample], b: &[Sample], ratio: fn(&Sample, &Sample) -> f64) -> String {
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

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One echo case's samples, per server, over every round.
pub struct EchoCase {
    /// The case as the tables name it, e.g. `100 × 20 B`.
    pub label: String,
    /// Connections actually opened (smoke runs open fewer).
    pub conns: usize,
    /// Samples per server, one per round.
    pub per: BTreeMap<&'static str, Vec<Sample>>,
}

/// The echo section: one row per case and server (medians), then the paired ratios.
pub fn echo(cases: &[EchoCase]) -> (String, serde_json::Value) {
    let mut echo_rows = Vec::new();
    let mut md = String::from("| echo case | server | msgs/s | MiB/s | p50 µs | p99 µs | p99.9 µs | server CPU s | client CPU s | server CPU µs/msg |\n|---|---|---|---|---|---|---|---|---|---|\n");
    // One column per baseline and figure: throughput, p99, and CPU per message (baseline over
    // wsgate, so above 1 means wsgate is cheaper).
    let baselines: Vec<&str> = cases
        .iter()
        .flat_map(|c| c.per.keys().copied())
        .filter(|n| *n != "wsgate")
        .fold(Vec::new(), |mut v, n| {
            if !v.contains(&n) {
                v.push(n);
            }
            v
        });
    let mut ratio_md = String::from("| echo case |");
    for fmt in [
        "wsgate / {b} msgs/s",
        "wsgate p99 / {b} p99",
        "server CPU per message: {b} / wsgate",
    ] {
        for b in &baselines {
            ratio_md.push_str(&format!(" {} |", fmt.replace("{b}", b)));
        }
    }
    ratio_md.push_str(&format!("\n|---|{}\n", "---|".repeat(baselines.len() * 3)));
    for EchoCase { label, conns, per } in cases {
        for (name, v) in per {
            let row = Sample::median(v);
            md.push_str(&format!(
                "| {label} | {name} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
                row.msgs, row.mib, row.p50, row.p99, row.p999, row.server_cpu, row.client_cpu, row.cpu_per_msg
            ));
            echo_rows.push(json!({"case": label, "connections": conns, "server": name, "msgs_per_sec": row.msgs, "mib_per_sec": row.mib, "p50_us": row.p50, "p99_us": row.p99, "p999_us": row.p999, "server_cpu_s": row.server_cpu, "client_cpu_s": row.client_cpu, "server_cpu_us_per_msg": row.cpu_per_msg}));
        }
        let Some(w) = per.get("wsgate") else {
            continue;
        };
        let figures: [fn(&Sample, &Sample) -> f64; 3] = [
            |a, b| a.msgs / b.msgs.max(1e-9),
            |a, b| a.p99 / b.p99.max(1.0),
            |a, b| b.cpu_per_msg / a.cpu_per_msg.max(1e-9),
        ];
        ratio_md.push_str(&format!("| {label} |"));
        for f in figures {
            for b in &baselines {
                let cell = per.get(b).map_or("-".into(), |v| paired(w, v, f));
                ratio_md.push_str(&format!(" {cell} |"));
            }
        }
        ratio_md.push('\n');
    }
    (
        format!("### Echo\n\n{md}\n### Ratios (same run)\n\n{ratio_md}"),
        json!(echo_rows),
    )
}

/// The sections of a run, in the order the modes ran, and the JSON document beside them.
#[derive(Default)]
pub struct Report {
    sections: Vec<String>,
    doc: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Adds a mode's Markdown section and its JSON under `key`.
    pub fn add(&mut self, key: &str, section: String, rows: serde_json::Value) {
        self.sections.push(section);
        self.doc.insert(key.into(), rows);
    }

    /// Prints the report under a header naming the machine and the plan; with `out`, writes
    /// results.md and results.json there.
    pub fn finish(mut self, plan: &Plan, out: Option<&Path>) -> Result<(), String> {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default();
        let cores = crate::servers::machine_cores();
        let header = format!(
            "Machine: {cpu}, {cores} cores; server pinned to core 0 and client to core 1 (taskset{}); {} round(s) of {:.1} s per case, medians.\n\n",
            if crate::servers::which("taskset") { "" } else { " not found: unpinned" },
            plan.rounds,
            plan.seconds
        );
        let report = format!("{header}{}", self.sections.join("\n"));
        print!("{report}");
        for (k, v) in [
            ("smoke", json!(plan.smoke)),
            ("rounds", json!(plan.rounds)),
            ("seconds", json!(plan.seconds)),
            ("cpu", json!(cpu)),
            ("cores", json!(cores)),
        ] {
            self.doc.insert(k.into(), v);
        }
        let doc = serde_json::Value::Object(self.doc);
        if let Some(dir) = out {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            std::fs::write(
                dir.join("results.json"),
                serde_json::to_string_pretty(&doc).unwrap_or_default(),
            )
            .map_err(|e| e.to_string())?;
            std::fs::write(dir.join("results.md"), &report).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
