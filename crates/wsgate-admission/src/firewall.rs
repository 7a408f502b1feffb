//! The firewall gate: which client addresses may connect, who is believed about the client's
//! address (trusted proxies), and temporary bans of addresses that keep getting refused.
//!
//! Deny wins over allow. One forwarding header, the one the operator names, is believed, and only
//! from a TCP peer in `trusted_proxies`; the client is then the right-most address that is not
//! itself a trusted proxy, so a client cannot prepend a fake address to slip past the rules.

use crate::{Reason, Refusal};
use http::HeaderMap;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An IPv4 or IPv6 network such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses a network; host bits must be zero so that a typo cannot widen the range unseen.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network like 10.0.0.0/8 or 2001:db8::/32"))?;
        let net = canonical(net);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let c = Cidr { net, prefix };
        if c.masked(net) != net {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}/{prefix}?",
                c.masked(net)
            ));
        }
        Ok(c)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let m = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
            }
        }
    }

    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.net.is_ipv4() && self.masked(ip) == self.net
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// `::ffff:192.0.2.1` is the IPv4 client 192.0.2.1, whatever socket it arrived on.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Allow and deny lists; an empty allow list allows every address that is not denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    /// If not empty, only these networks are admitted.
    pub allow: Vec<Cidr>,
    /// Never admitted, even when also allowed.
    pub deny: Vec<Cidr>,
}

impl IpRules {
    /// Parses configuration lists; the error names the list and index.
    pub fn parse(allow: &[String], deny: &[String]) -> Result<IpRules, (String, String)> {
        let list = |name: &str, v: &[String]| {
            v.iter()
                .enumerate()
                .map(|(i, s)| Cidr::parse(s).map_err(|m| (format!("{name}[{i}]"), m)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(IpRules {
            allow: list("allow", allow)?,
            deny: list("deny", deny)?,
        })
    }

    /// The rule check; `scope` says whose rules these are (`global`, `route /ws`), for the detail.
    pub fn check(&self, ip: IpAddr, scope: &str) -> Result<(), Refusal> {
        if let Some(d) = self.deny.iter().find(|c| c.contains(ip)) {
            return Err(Refusal::new(
                Reason::FirewallIpDenied,
                format!("client {ip} is in the {scope} deny list ({d})"),
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)) {
            return Err(Refusal::new(
                Reason::FirewallIpDenied,
                format!("client {ip} is not in the {scope} allow list"),
            ));
        }
        Ok(())
    }

    /// Whether no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// How the client address was established, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The TCP peer itself.
    Peer,
    /// From `Forwarded` (RFC 7239), sent by a trusted proxy.
    Forwarded,
    /// From `X-Forwarded-For`, sent by a trusted proxy.
    XForwardedFor,
}

/// The client address the gates judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress {
    /// The address.
    pub ip: IpAddr,
    /// Where it came from.
    pub via: Via,
    /// Forwarding headers were present but not believed (the peer is not a trusted proxy).
    pub ignored_headers: bool,
}

/// The one forwarding header the trusted proxies set (nginx's `real_ip_header`). Only that one is
/// read: a proxy that appends `X-Forwarded-For` passes the client's own `Forwarded` through
/// untouched, so believing whichever header is present would let a client name any address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientHeader {
    /// `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`, most load balancers).
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
    /// No header is believed (proxies that speak the PROXY protocol, or none at all).
    #[default]
    None,
}

impl ClientHeader {
    /// Parses the configuration spelling: `x-forwarded-for`, `forwarded` or `none`.
    pub fn parse(s: &str) -> Result<ClientHeader, String> {
        match s.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ClientHeader::XForwardedFor),
            "forwarded" => Ok(ClientHeader::Forwarded),
            "none" => Ok(ClientHeader::None),
            _ => Err(format!(
                "{s:?} is not a forwarding header: use \"x-forwarded-for\", \"forwarded\" or \"none\" (PROXY protocol only)"
            )),
        }
    }

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientHeader::XForwardedFor => "x-forwarded-for",
            ClientHeader::Forwarded => "forwarded",
            ClientHeader::None => "none",
        }
    }
}

/// Works out the client address from the TCP peer and, for trusted proxies, the one forwarding
/// header they set.
pub fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[Cidr],
    header: ClientHeader,
) -> ClientAddress {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let present = headers.contains_key("forwarded") || headers.contains_key("x-forwarded-for");
    let (hops, via) = match header {
        ClientHeader::Forwarded if headers.contains_key("forwarded") => {
            (forwarded_hops(headers), Via::Forwarded)
        }
        ClientHeader::XForwardedFor if headers.contains_key("x-forwarded-for") => {
            (xff_hops(headers), Via::XForwardedFor)
        }
        _ => {
            return ClientAddress {
                ip: peer,
                via: Via::Peer,
                ignored_headers: present && !is_trusted(peer),
            }
        }
    };
    if !is_trusted(peer) {
        return ClientAddress {
            ip: peer,
            via: Via::Peer,
            ignored_headers: true,
        };
    }
    // Right to left: each trusted hop vouches for the one before it.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(*ip) {
                    break;
                }
            }
            None => break, // `unknown` or garbage: believe nothing further left
        }
    }
    ClientAddress {
        ip: client,
        via: if client == peer { Via::Peer } else { via },
        ignored_headers: false,
    }
}

fn header_items<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
}

fn xff_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    header_items(headers, "x-forwarded-for")
        .map(parse_node)
        .collect()
}

fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    header_items(headers, "forwarded")
        .map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v.trim().trim_matches('"')))
            })?
        })
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest
            .split_once(']')
            .and_then(|(a, _)| a.parse().ok())
            .map(canonical);
    }
    s.rsplit_once(':')
        .and_then(|(a, _)| a.parse::<Ipv4Addr>().ok())
        .map(IpAddr::V4)
}

/// When to ban an address: `after` refusals within `window` ban it for `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanPolicy {
    /// Refusals that trigger a ban.
    pub after: u32,
    /// The counting window.
    pub window: Duration,
    /// How long a ban lasts.
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    window_start: Instant,
    count: u32,
    banned_until: Option<Instant>,
    /// Who banned the address, for the refusal's detail and the admin page.
    by: BanSource,
}

/// Who put a ban in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanSource {
    /// `[firewall.ban]`: too many refusals within its window.
    Refusals,
    /// An operator, from the admin page.
    Operator,
    /// Another node of the cluster (its reason is not announced).
    Cluster,
}

impl BanSource {
    /// A short name for the admin page and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BanSource::Refusals => "refusals",
            BanSource::Operator => "operator",
            BanSource::Cluster => "cluster",
        }
    }
}

/// A ban in force, as the admin page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanInForce {
    /// The banned address.
    pub ip: IpAddr,
    /// Time left.
    pub left: Duration,
    /// Who banned it.
    pub by: BanSource,
}

/// Addresses tracked at most; past it, expired entries are dropped and new ones not tracked.
const MAX_TRACKED: usize = 100_000;

/// Temporary bans: automatic ones (`[firewall.ban]`, when configured), an operator's and other
/// nodes'. The list exists even without a policy, so an operator can always ban. Time is passed
/// in, so the logic is tested without waiting.
#[derive(Debug, Default)]
pub struct Bans {
    /// Replaced by a configuration reload; bans in force stay in force. `None`: refusals never
    /// ban by themselves.
    policy: std::sync::RwLock<Option<BanPolicy>>,
    state: Mutex<HashMap<IpAddr, Strikes>>,
}

impl Bans {
    /// An empty ban list.
    pub fn new(policy: Option<BanPolicy>) -> Bans {
        Bans {
            policy: std::sync::RwLock::new(policy),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// The policy of a reloaded configuration, for refusals from now on.
    pub fn set_policy(&self, policy: Option<BanPolicy>) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    fn policy(&self) -> Option<BanPolicy> {
        *self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a banned address with `firewall.banned`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = state.get(&ip) else {
            return Ok(());
        };
        match s.banned_until {
            Some(until) if until > now => {
                let left = (until - now).as_secs() + 1;
                let why = match (s.by, self.policy()) {
                    (BanSource::Refusals, Some(p)) => {
                        format!("after {} refused handshakes within {:?}", p.after, p.window)
                    }
                    (BanSource::Refusals, None) => "after repeated refused handshakes".into(),
                    (BanSource::Operator, _) => "by an operator (admin page)".into(),
                    (BanSource::Cluster, _) => "by another node of the cluster".into(),
                };
                Err(Refusal::new(
                    Reason::FirewallBanned,
                    format!("client {ip} is banned for another {left}s, {why}"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Bans `ip` until `until` (an operator's ban, or one another node of a cluster made). A
    /// longer ban in place stays (to shorten one, lift it first).
    pub fn ban_until(&self, ip: IpAddr, until: Instant, by: BanSource) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() >= MAX_TRACKED && !state.contains_key(&ip) {
            return;
        }
        let s = state.entry(ip).or_insert(Strikes {
            window_start: until,
            count: 0,
            banned_until: None,
            by,
        });
        let in_force = s.banned_until.is_some_and(|u| u > Instant::now());
        if s.banned_until.is_none_or(|u| u < until) {
            s.banned_until = Some(until);
            // A ban extended (e.g. this node's own ban echoed back by the cluster) keeps its
            // origin.
            if !in_force {
                s.by = by;
            }
        }
    }

    /// Ends the ban of `ip` now; false when it was not banned.
    pub fn lift(&self, ip: IpAddr, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.get(&ip) {
            Some(s) if s.banned_until.is_some_and(|u| u > now) => {
                state.remove(&ip);
                true
            }
            _ => false,
        }
    }

    /// The bans in force, longest first (at most `max`).
    pub fn in_force(&self, now: Instant, max: usize) -> Vec<BanInForce> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<BanInForce> = state
            .iter()
            .filter_map(|(ip, s)| match s.banned_until {
                Some(u) if u > now => Some(BanInForce {
                    ip: *ip,
                    left: u - now,
                    by: s.by,
                }),
                _ => None,
            })
            .collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.left));
        v.truncate(max);
        v
    }

    /// The policy's ban duration (`None` without `[firewall.ban]`).
    pub fn duration(&self) -> Option<Duration> {
        self.policy().map(|p| p.duration)
    }

    /// Counts a refusal of `ip`; returns true when this refusal starts a ban.
    pub fn record_refusal(&self, ip: IpAddr, now: Instant) -> bool {
        let Some(policy) = self.policy() else {
            return false;
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() >= MAX_TRACKED && !state.contains_key(&ip) {
            let p = policy;
            state.retain(|_, s| {
                s.banned_until.is_some_and(|u| u > now) || now - s.window_start < p.window
            });
            if state.len() >= MAX_TRACKED {
                return false;
            }
        }
        let s = state.entry(ip).or_insert(Strikes {
            window_start: now,
            count: 0,
            banned_until: None,
            by: BanSource::Refusals,
        });
        if s.banned_until.is_some_and(|u| u > now) {
            return false;
        }
        if now.duration_since(s.window_start) >= policy.window || s.banned_until.is_some() {
            *s = Strikes {
                window_start: now,
                count: 0,
                banned_until: None,
                by: BanSource::Refusals,
            };
        }
        s.count += 1;
        if s.count >= policy.after {
            s.banned_until = Some(now + policy.duration);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(v: &[&str]) -> Vec<Cidr> {
        v.iter().map(|s| Cidr::parse(s).unwrap()).collect()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.0.1")) && !c.contains(ip("11.0.0.1")));
        assert!(
            c.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped IPv6 is IPv4"
        );
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert_eq!(
            Cidr::parse("127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert!(Cidr::parse("10.0.0.1/8")
            .unwrap_err()
            .contains("did you mean 10.0.0.0/8"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
    }

    #[test]
    fn deny_wins_and_allow_lists_restrict() {
        let r = IpRules {
            allow: cidrs(&["10.0.0.0/8"]),
            deny: cidrs(&["10.0.0.66"]),
        };
        assert!(r.check(ip("10.0.0.1"), "global").is_ok());
        assert_eq!(
            r.check(ip("10.0.0.66"), "global").unwrap_err().reason,
            Reason::FirewallIpDenied
        );
        let e = r.check(ip("192.0.2.1"), "route /ws").unwrap_err();
        assert!(e.detail.contains("route /ws allow list"));
        assert!(IpRules::default().check(ip("192.0.2.1"), "global").is_ok());
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const XFF: ClientHeader = ClientHeader::XForwardedFor;
    const FWD: ClientHeader = ClientHeader::Forwarded;

    #[test]
    fn only_the_configured_forwarding_header_is_believed() {
        let trusted = cidrs(&["127.0.0.1"]);
        // nginx appends X-Forwarded-For and passes the client's own Forwarded through.
        let h = headers(&[
            ("forwarded", "for=10.0.0.1"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        let c = client_address(ip("127.0.0.1"), &h, &trusted, XFF);
        assert_eq!((c.ip, c.via), (ip("198.51.100.7"), Via::XForwardedFor));
        let c = client_address(ip("127.0.0.1"), &h, &trusted, FWD);
        assert_eq!((c.ip, c.via), (ip("10.0.0.1"), Via::Forwarded));
        // Only the other header present: nothing is believed.
        let h = headers(&[("forwarded", "for=10.0.0.1")]);
        let c = client_address(ip("127.0.0.1"), &h, &trusted, XFF);
        assert_eq!((c.ip, c.via), (ip("127.0.0.1"), Via::Peer));
        let c = client_address(ip("127.0.0.1"), &h, &trusted, ClientHeader::None);
        assert_eq!((c.ip, c.via), (ip("127.0.0.1"), Via::Peer));
        assert_eq!(ClientHeader::parse("Forwarded"), Ok(FWD));
        assert!(ClientHeader::parse("x-real-ip").is_err());
    }

    #[test]
    fn forwarding_headers_are_ignored_from_untrusted_peers() {
        let h = headers(&[("x-forwarded-for", "10.0.0.1")]);
        let c = client_address(ip("192.0.2.9"), &h, &cidrs(&["127.0.0.1"]), XFF);
        assert_eq!(
            (c.ip, c.via, c.ignored_headers),
            (ip("192.0.2.9"), Via::Peer, true)
        );
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let trusted = cidrs(&["127.0.0.1", "10.1.0.0/16"]);
        // the client prepended a fake 10.0.0.1; the edge proxy appended the real 198.51.100.7
        let h = headers(&[("x-forwarded-for", "10.0.0.1, 198.51.100.7, 10.1.2.3")]);
        let c = client_address(ip("127.0.0.1"), &h, &trusted, XFF);
        assert_eq!((c.ip, c.via), (ip("198.51.100.7"), Via::XForwardedFor));
        let h = headers(&[(
            "forwarded",
            "for=10.0.0.1, for=\"[2001:db8::7]:4711\";proto=https",
        )]);
        assert_eq!(
            client_address(ip("127.0.0.1"), &h, &trusted, FWD).ip,
            ip("2001:db8::7")
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            client_address(ip("127.0.0.1"), &h, &trusted, FWD).ip,
            ip("127.0.0.1")
        );
        let h = headers(&[("x-forwarded-for", "10.1.0.5")]);
        assert_eq!(
            client_address(ip("127.0.0.1"), &h, &trusted, XFF).ip,
            ip("10.1.0.5"),
            "all trusted: left-most"
        );
        let h = headers(&[("x-forwarded-for", "198.51.100.7:5555")]);
        assert_eq!(
            client_address(ip("::ffff:127.0.0.1"), &h, &trusted, XFF).ip,
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_ban_from_another_node_refuses_until_it_ends_and_never_shortens_one() {
        let b = Bans::new(Some(BanPolicy {
            after: 3,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(60),
        }));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let t = Instant::now();
        b.ban_until(ip, t + Duration::from_secs(10), BanSource::Cluster);
        assert_eq!(b.check(ip, t).unwrap_err().reason, Reason::FirewallBanned);
        b.ban_until(ip, t + Duration::from_secs(5), BanSource::Cluster);
        assert!(
            b.check(ip, t + Duration::from_secs(7)).is_err(),
            "the longer ban stays"
        );
        assert!(b.check(ip, t + Duration::from_secs(11)).is_ok());
    }

    #[test]
    fn an_operator_bans_without_a_policy_and_lifts_the_ban() {
        let b = Bans::new(None);
        let a = ip("192.0.2.3");
        let t = Instant::now();
        assert!(!b.record_refusal(a, t), "no policy: refusals never ban");
        b.ban_until(a, t + Duration::from_secs(30), BanSource::Operator);
        let e = b.check(a, t).unwrap_err();
        assert!(e.detail.contains("by an operator"), "{}", e.detail);
        let listed = b.in_force(t, 10);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].by, BanSource::Operator);
        assert!(b.lift(a, t));
        assert!(b.check(a, t).is_ok());
        assert!(!b.lift(a, t), "nothing left to lift");
        assert!(b.in_force(t, 10).is_empty());
    }

    #[test]
    fn bans_start_after_n_refusals_in_the_window_and_expire() {
        let b = Bans::new(Some(BanPolicy {
            after: 3,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(600),
        }));
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert!(!b.record_refusal(a, t0));
        assert!(
            !b.record_refusal(a, t0 + Duration::from_secs(61)),
            "the window restarted"
        );
        assert!(!b.record_refusal(a, t0 + Duration::from_secs(62)));
        assert!(b.check(a, t0 + Duration::from_secs(62)).is_ok());
        assert!(b.record_refusal(a, t0 + Duration::from_secs(63)));
        let e = b.check(a, t0 + Duration::from_secs(64)).unwrap_err();
        assert_eq!(e.reason, Reason::FirewallBanned);
        assert!(b
            .check(ip("192.0.2.2"), t0 + Duration::from_secs(64))
            .is_ok());
        assert!(
            b.check(a, t0 + Duration::from_secs(664)).is_ok(),
            "bans expire"
        );
    }
}
