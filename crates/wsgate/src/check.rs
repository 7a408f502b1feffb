//! `wsgate check`: validate a configuration (TLS files included) and print what it would do.

use crate::{explain_name, fail, kind_name, load, ConfigArg};
use std::process::ExitCode;
use wsgate_server::config::RouteKind;
use wsgate_server::preflight;

pub(crate) fn check(args: ConfigArg) -> ExitCode {
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
                wsgate_server::tls::iso_date(c.not_after),
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
        Some(a) => println!(
            "admin http://{a}/ (page{}; metrics at /metrics)",
            if config.admin_token.is_some() {
                ", token required"
            } else {
                ", no token: loopback only"
            }
        ),
        None => println!("admin off"),
    }
    if let Some(c) = &config.cluster {
        print!(
            "cluster node_id={} redis={} prefix={} sharded={}",
            c.node_id,
            c.redacted_url(),
            c.prefix,
            c.sharded
        );
        if let Some(ca) = &c.tls.ca_file {
            print!(" ca_file={}", ca.display());
        }
        if let Some((cert, _)) = &c.tls.client {
            print!(" cert_file={}", cert.display());
        }
        // Not an error of the file: serve starts without Redis and connects when it can.
        match wsgate_server::cluster::probe(c) {
            Ok(()) => println!(" (Redis answered PING)"),
            Err(e) => println!(
                "\nWARNING cluster: {e}; `serve` would run on its own until Redis answers. Check cluster.redis (host, port, password in redis://:PASSWORD@HOST), for rediss:// cluster.ca_file and cert_file/key_file, and that Redis runs"
            ),
        }
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
                rp,
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
    for (gate, text) in wsgate_server::describe::policy(p) {
        println!("{indent}{gate}: {text}");
    }
}
