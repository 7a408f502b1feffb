//! `wsgate serve`: a strict RFC 6455 gateway whose every refusal carries a catalog reason.
//!
//! The crate is the server half of wsgate. One handshake passes four files, each with one job:
//! `accept.rs` (the connection up to its request head: PROXY header, TLS, HTTP/1.1), `handshake.rs`
//! (one request start to finish), [`decision`] (every admission step in order, without sockets)
//! and [`response`] (the 101 or the refusal, with its log line and metric). Around them:
//! configuration ([`config`]), the server's life ([`server`]), echo and channel connections
//! ([`ws`], [`hub`]), upstream relaying ([`proxy`], [`relay`]), TLS ([`tls`]) and [`metrics`];
//! for operators, the admin page (`admin.rs`) over what it shows and acts on ([`console`]), and
//! a route's policy in words ([`describe`], which `wsgate check` prints too).

#![forbid(unsafe_code)]

mod accept;
mod admin;
pub mod cluster;
pub mod config;
pub mod console;
pub mod decision;
pub mod describe;
pub mod extcheck;
pub mod fdlimit;
mod handshake;
pub mod hub;
pub mod ids;
pub mod jwks;
pub mod metrics;
pub mod out;
pub mod pattern;
pub mod proxy;
pub mod proxyproto;
pub mod relay;
pub mod response;
pub mod routes;
pub mod server;
pub mod stream;
pub mod tls;
pub mod ws;

pub use config::{Config, ConfigError};
pub use server::{preflight, BoundListener, Server, StartError};
