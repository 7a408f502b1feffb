//! Keys from identity providers: each `jwks_url` (or OpenID discovery document) is fetched at
//! start and kept fresh by a task of its own, on the provider's cache headers within bounds, and
//! at once (rate-limited by admission) when a token names a `kid` the set does not have. While the
//! provider is down the last good set stays in use; only an issuer whose set was never loaded
//! gets `auth.unavailable`.

use bytes::Bytes;
use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use wsgate_admission::jwt::{JwtKey, RemoteKeys};
use wsgate_handshake::endpoint::{Endpoint, Family};

/// A set is refreshed no sooner than this, whatever the provider's `max-age` says.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
/// ... and no later than this.
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// When the provider says nothing about caching.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
/// One fetch (connection, TLS, request, body) gives up after this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A key set or discovery document larger than this is not one.
const MAX_BODY: usize = 1 << 20;

/// Fetches every set once, together, waiting at most `wait` (start-up: the first handshakes
/// should find keys), then keeps each fresh in a task of its own until shutdown.
pub(crate) async fn start(
    remotes: &[Arc<RemoteKeys>],
    wait: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let first = futures_util::future::join_all(remotes.iter().map(|r| async move {
        let outcome = fetch(r).await;
        let next = settle(r, outcome, &mut Failures::default());
        (r.clone(), next)
    }));
    let settled = tokio::time::timeout(wait, first).await;
    for (i, r) in remotes.iter().enumerate() {
        let next = match &settled {
            Ok(v) => v.get(i).map_or(Duration::ZERO, |(_, n)| *n),
            // Not answered in time: the task tries again at once.
            Err(_) => Duration::ZERO,
        };
        tokio::spawn(keep_fresh(r.clone(), next, shutdown.clone()));
    }
}

/// Consecutive failures of one set's fetches: the backoff, and the outage logged once.
#[derive(Default)]
struct Failures {
    count: u32,
}

/// Puts a fetched set in use (or logs why not) and says when to fetch next.
fn settle(
    r: &RemoteKeys,
    outcome: Result<(Vec<JwtKey>, Duration), String>,
    failures: &mut Failures,
) -> Duration {
    match outcome {
        Ok((keys, next)) => {
            let kids: Vec<String> = keys
                .iter()
                .map(|k| k.kid().unwrap_or("-").to_owned())
                .collect();
            let before: Option<Vec<String>> = r.keys().map(|k| {
                k.iter()
                    .map(|k| k.kid().unwrap_or("-").to_owned())
                    .collect()
            });
            if before.as_ref() != Some(&kids) || failures.count > 0 {
                tracing::info!(url = %r.url, kids = ?kids, refresh_in = ?next, "identity provider keys loaded");
            }
            r.replace(keys);
            failures.count = 0;
            next
        }
        Err(e) => {
            failures.count += 1;
            let held = r.keys().map(|k| k.len());
            if failures.count == 1 {
                match held {
                    Some(n) => {
                        tracing::warn!(url = %r.url, error = %e, keys = n, "cannot fetch the identity provider's keys; keeping the last good set")
                    }
                    None => {
                        tracing::error!(url = %r.url, error = %e, "cannot fetch the identity provider's keys and none were ever loaded: tokens of this issuer are refused with 503 auth.unavailable until it answers")
                    }
                }
            }
            // 5 s, doubling, at most 5 minutes.
            Duration::from_secs(5u64.saturating_mul(1 << failures.count.min(6)) / 2)
                .min(Duration::from_secs(300))
        }
    }
}

/// Refreshes one set when it is due, or when admission asked (a token with an unknown `kid`).
async fn keep_fresh(r: Arc<RemoteKeys>, first: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut failures = Failures::default();
    let mut due = tokio::time::Instant::now() + first;
    loop {
        // Woken every 250 ms to see whether admission asked for a refetch: a flag, no channel.
        let tick = tokio::time::sleep(Duration::from_millis(250));
        tokio::select! {
            _ = crate::out::stopped(&mut shutdown) => return,
            _ = tick => {}
        }
        if tokio::time::Instant::now() < due && !r.take_wanted() {
            continue;
        }
        let outcome = fetch(&r).await;
        due = tokio::time::Instant::now() + settle(&r, outcome, &mut failures);
    }
}

/// One fetch: the discovery document first when configured, then the key set. Returns the keys
/// and when to fetch again.
async fn fetch(r: &RemoteKeys) -> Result<(Vec<JwtKey>, Duration), String> {
    let tls = crate::tls::client_config(r.ca_file.as_deref())
        .map(TlsConnector::from)
        .map_err(|e| format!("TLS setup: {e}"))?;
    let jwks_url = if r.discovery {
        let (_, body) = get(&r.url, &tls).await?;
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{}: not an OpenID discovery document: {e}", r.url))?;
        let uri = doc
            .get("jwks_uri")
            .and_then(|u| u.as_str())
            .ok_or_else(|| format!("{}: the discovery document has no jwks_uri", r.url))?;
        if !uri.starts_with("https://") {
            return Err(format!(
                "{}: jwks_uri {uri:?} is not https://, and keys that decide who is admitted are fetched over TLS only",
                r.url
            ));
        }
        uri.to_owned()
    } else {
        r.url.clone()
    };
    let (headers, body) = get(&jwks_url, &tls).await?;
    let text = String::from_utf8(body.to_vec()).map_err(|_| format!("{jwks_url}: not UTF-8"))?;
    let keys = JwtKey::jwks(&text).map_err(|e| format!("{jwks_url}: {e}"))?;
    Ok((keys, refresh_after(&headers)))
}

/// When to fetch again, from `Cache-Control: max-age` within [`MIN_REFRESH`]..[`MAX_REFRESH`].
pub fn refresh_after(headers: &HeaderMap) -> Duration {
    let max_age = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let (k, v) = d.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| v.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .next();
    match max_age {
        Some(s) => Duration::from_secs(s).clamp(MIN_REFRESH, MAX_REFRESH),
        None => DEFAULT_REFRESH,
    }
}

/// A GET over TLS; the body (at most [`MAX_BODY`]) of a 200 answer.
async fn get(url: &str, tls: &TlsConnector) -> Result<(HeaderMap, Bytes), String> {
    match tokio::time::timeout(FETCH_TIMEOUT, get_now(url, tls)).await {
        Ok(r) => r,
        Err(_) => Err(format!("{url}: no answer within {FETCH_TIMEOUT:?}")),
    }
}

async fn get_now(url: &str, tls: &TlsConnector) -> Result<(HeaderMap, Bytes), String> {
    let target = Endpoint::parse(url, Family::Http).map_err(|e| format!("{url}: {e}"))?;
    if !target.tls {
        return Err(format!("{url}: not https://"));
    }
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from(target.host.clone())
        .map_err(|_| format!("{url}: the host is not a valid TLS server name"))?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{url}: TLS handshake failed: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{url}: HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(target.path_and_query.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("wsgate/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("{url}: answered {}", resp.status()));
    }
    let headers = resp.headers().clone();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{url}: the body could not be read (at most {MAX_BODY} bytes): {e}"))?
        .to_bytes();
    Ok((headers, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_max_age_within_bounds() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CACHE_CONTROL, v.parse().unwrap());
            m
        };
        assert_eq!(refresh_after(&HeaderMap::new()), DEFAULT_REFRESH);
        assert_eq!(
            refresh_after(&h("public, max-age=3600")),
            Duration::from_secs(3600)
        );
        assert_eq!(refresh_after(&h("max-age=5")), MIN_REFRESH);
        assert_eq!(refresh_after(&h("max-age=999999999")), MAX_REFRESH);
        assert_eq!(refresh_after(&h("no-cache")), DEFAULT_REFRESH);
    }
}
