//! Two printers for one [`Diagnosis`]: one for people (colour on a terminal only), one JSON
//! document for programs, whose shape is documented in the README and kept stable.

use crate::{Diagnosis, Side};
use std::fmt::Write as _;

/// The report for a person; `colour` adds ANSI colours (only on a terminal).
pub fn human(d: &Diagnosis, colour: bool) -> String {
    let paint = |code: &str, s: &str| {
        if colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "wsgate doctor {}\n", d.url);
    for s in &d.steps {
        let mark = if s.ok {
            paint("32", "✓")
        } else {
            paint("31", "✗")
        };
        let _ = writeln!(out, "  {mark} {:<10} {:>5} ms  {}", s.name, s.ms, s.detail);
    }
    out.push('\n');
    if d.ok {
        let _ = writeln!(out, "{} {}", paint("32;1", "OK"), d.summary);
    } else {
        let cause = d.cause.as_deref().unwrap_or("unknown");
        let _ = writeln!(
            out,
            "{} {}  ({})",
            paint("31;1", "Cause:"),
            d.summary,
            cause
        );
    }
    if let Some(sw) = &d.server.software {
        let _ = writeln!(
            out,
            "Server: {sw}{}{}{}",
            d.server
                .confidence
                .map(|c| format!(" ({} confidence)", c.as_str()))
                .unwrap_or_default(),
            d.server
                .via
                .as_ref()
                .map(|v| format!(", behind {v}"))
                .unwrap_or_default(),
            d.server
                .header
                .as_ref()
                .map(|h| format!("; Server: {h}"))
                .unwrap_or_default()
        );
        for e in &d.server.evidence {
            let _ = writeln!(out, "  recognised by {e}");
        }
    } else if let Some(h) = &d.server.header {
        let _ = writeln!(out, "Server: not recognised (Server: {h})");
    }
    if !d.experiments.is_empty() {
        let _ = writeln!(out, "\nExperiments (one change each):");
        for e in &d.experiments {
            let answer = match e.status {
                0 => "no HTTP answer".to_owned(),
                101 => "101 admitted".to_owned(),
                s => format!(
                    "{s}{}",
                    e.code.as_ref().map(|c| format!(" {c}")).unwrap_or_default()
                ),
            };
            let _ = writeln!(out, "  - {:<48} → {answer}", e.change);
        }
    }
    if !d.evidence.is_empty() {
        let _ = writeln!(out, "\nEvidence:");
        for e in &d.evidence {
            for (i, line) in e.lines().enumerate() {
                let _ = writeln!(out, "  {} {line}", if i == 0 { "-" } else { " " });
            }
        }
    }
    for (side, title) in [
        (Side::Client, "Fix on the client side:"),
        (Side::Server, "Fix on the server side:"),
    ] {
        let fixes: Vec<&crate::Fix> = d.fixes.iter().filter(|f| f.side == side).collect();
        if !fixes.is_empty() {
            let _ = writeln!(out, "\n{title}");
            for (i, f) in fixes.iter().enumerate() {
                if side == Side::Client {
                    let _ = writeln!(out, "  {}. {}", i + 1, f.text);
                } else {
                    let _ = writeln!(out, "  {}. [{}] {}", i + 1, f.software, f.text);
                }
            }
        }
    }
    let _ = writeln!(out, "\nWhat a browser shows: {}", d.browser);
    out
}

/// The JSON document.
pub fn json(d: &Diagnosis) -> String {
    serde_json::to_string_pretty(d).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
