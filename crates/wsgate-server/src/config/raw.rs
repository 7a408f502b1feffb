//! The configuration file as written: serde types that refuse unknown keys, so that a typo is an
//! error naming its key path, never a setting silently ignored. Nothing here checks values.

use super::model::{ClientAuth, Explain, LogFormat, OnRedisDown, RouteKind};
use super::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// Parses TOML text into the raw layer; errors carry the key path (`route[0].colour`).
pub(super) fn parse(text: &str, source: &str) -> Result<RawConfig, ConfigError> {
    let err = |key: String, message: String| ConfigError {
        file: source.to_owned(),
        key,
        message,
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| err(String::new(), one_line(&e.to_string())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        err(
            key.replace("listener.", "listener")
                .replace("route.", "route"),
            one_line(&e.into_inner().to_string()),
        )
    })
}

/// The whole file as written; see [`Config`] for the validated form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default, rename = "listener")]
    pub(super) listeners: Vec<RawListener>,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) logging: RawLogging,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(super) firewall: RawFirewall,
    pub(super) cluster: Option<RawCluster>,
}

/// `[cluster]`: several nodes sharing rooms through Redis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) redis: String,
    pub(super) node_id: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) lease_ttl: Option<String>,
    pub(super) on_redis_down: Option<OnRedisDown>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) password_env: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) sharded: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFirewall {
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) deny: Vec<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) client_address_header: Option<String>,
    pub(super) ban: Option<RawBan>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBan {
    pub(super) after: u32,
    pub(super) window: String,
    pub(super) duration: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouteFirewall {
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) policy: Option<RawPolicy>,
    pub(super) address: String,
    pub(super) explain: Option<Explain>,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
}

/// Admission settings; a listener's apply to every route on it unless the route sets its own
/// (firewall rules of both apply).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) origins: Option<Vec<String>>,
    pub(super) allow_missing_origin: Option<bool>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) firewall: Option<RawRouteFirewall>,
    pub(super) auth: Option<RawAuth>,
    pub(super) authz: Option<RawAuthz>,
    pub(super) client_cert: Option<ClientCertRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) client_ca: Option<PathBuf>,
    pub(super) client_auth: Option<ClientAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default = "default_admin_address")]
    pub(super) address: String,
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            address: default_admin_address(),
            enabled: true,
            token: None,
            token_file: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_connections: Option<usize>,
    pub(super) max_message_bytes: Option<usize>,
    pub(super) max_frame_bytes: Option<usize>,
    pub(super) handshake_timeout: Option<String>,
    pub(super) ping_interval: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) drain_timeout: Option<String>,
    pub(super) handshake_rate: Option<f64>,
    pub(super) handshake_burst: Option<f64>,
    pub(super) max_connections_per_client: Option<usize>,
    pub(super) max_connections_per_identity: Option<usize>,
    pub(super) max_head_bytes: Option<usize>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_output_bytes: Option<usize>,
    pub(super) send_timeout: Option<String>,
    pub(super) max_handshakes_per_client: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    #[serde(default)]
    pub(super) format: LogFormat,
    pub(super) level: Option<String>,
    pub(super) refusal_burst: Option<u32>,
    pub(super) refusal_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) path: String,
    pub(super) kind: RouteKind,
    #[serde(default)]
    pub(super) subprotocols: Vec<String>,
    #[serde(default)]
    pub(super) subprotocol_required: bool,
    pub(super) deliver_to_sender: Option<bool>,
    pub(super) compression: Option<String>,
    pub(super) upstream: Option<String>,
    pub(super) upstream_ca: Option<PathBuf>,
    #[serde(default)]
    pub(super) forward_headers: Vec<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) origins: Option<Vec<String>>,
    pub(super) allow_missing_origin: Option<bool>,
    pub(super) auth: Option<RawAuth>,
    pub(super) firewall: Option<RawRouteFirewall>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) authz: Option<RawAuthz>,
    pub(super) client_cert: Option<ClientCertRule>,
}

/// Whether a route needs a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ClientCertRule {
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthz {
    #[serde(default)]
    pub(super) require_claims: toml::Table,
    #[serde(default)]
    pub(super) require_scopes: Vec<String>,
    pub(super) channel: Option<String>,
    pub(super) channel_claim: Option<String>,
    #[serde(default)]
    pub(super) cert_subjects: Vec<String>,
    #[serde(default)]
    pub(super) cert_sans: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) sources: Option<Vec<String>>,
    #[serde(default)]
    pub(super) api_keys: Vec<RawApiKey>,
    #[serde(default)]
    pub(super) dev_token: bool,
    #[serde(default)]
    pub(super) jwt: Vec<RawJwt>,
    pub(super) external: Option<RawExternal>,
    #[serde(default)]
    pub(super) basic_users: Vec<RawBasicUser>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBasicUser {
    pub(super) name: String,
    pub(super) hash: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExternal {
    pub(super) url: String,
    pub(super) timeout: Option<String>,
    pub(super) cache_ttl: Option<String>,
    pub(super) identity_header: Option<String>,
    #[serde(default)]
    pub(super) identity_headers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    pub(super) issuer: Option<String>,
    #[serde(default)]
    pub(super) audience: Vec<String>,
    pub(super) leeway: Option<String>,
    pub(super) require_exp: Option<bool>,
    pub(super) kid: Option<String>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) secret: Option<String>,
    pub(super) secret_file: Option<PathBuf>,
    pub(super) public_key: Option<String>,
    pub(super) public_key_file: Option<PathBuf>,
    pub(super) jwks_file: Option<PathBuf>,
    pub(super) jwks_url: Option<String>,
    pub(super) jwks_ca_file: Option<PathBuf>,
    pub(super) discovery: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiKey {
    pub(super) name: String,
    pub(super) sha256: String,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
}

fn default_admin_address() -> String {
    "127.0.0.1:9090".to_owned()
}
fn yes() -> bool {
    true
}

/// toml errors span several lines with a source excerpt; one line reads better in a terminal.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
