//! `wsgate serve`: a strict RFC 6455 gateway whose every refusal carries a catalog reason.
//!
//! The crate is the server half of wsgate: configuration ([`config`]), the handshake decision and
//! listeners ([`server`]), refusal responses ([`refusal`]), connection handling for echo and
//! channel routes ([`ws`], [`hub`]), upstream relaying ([`proxy`]), TLS ([`tls`]) and
//! metrics ([`metrics`]).

#![forbid(unsafe_code)]

pub mod config;
pub mod extcheck;
pub mod fdlimit;
pub mod hub;
pub mod ids;
pub mod metrics;
pub mod out;
pub mod pattern;
pub mod proxy;
pub mod proxyproto;
pub mod refusal;
pub mod relay;
pub mod routes;
pub mod server;
pub mod stream;
pub mod tls;
pub mod ws;

pub use config::{Config, ConfigError};
pub use server::{preflight, BoundListener, Server, StartError};
