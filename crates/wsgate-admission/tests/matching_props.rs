//! Property tests for the matchers strangers probe: origin allowlists, Host allowlists and CIDR
//! networks. However the names are generated, a wildcard admits subdomains only, never a
//! look-alike, and an exact entry admits exactly its own scheme, host and port.

use proptest::prelude::*;
use std::net::IpAddr;
use wsgate_admission::firewall::Cidr;
use wsgate_admission::host::HostPolicy;
use wsgate_admission::origin::OriginPolicy;
use wsgate_admission::Request;

fn origin_allowed(entries: &[String], origin: &str) -> bool {
    let policy = OriginPolicy::parse(entries, false).expect("valid entries");
    policy
        .check(&Request {
            tls: true,
            origin: Some(origin),
            ..Request::new("192.0.2.1".parse().unwrap(), "gateway.invalid")
        })
        .is_ok()
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
}

/// A registrable-looking domain of two or three labels.
fn domain() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 2..4).prop_map(|l| l.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        // Failures are printed with their minimal input; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn wildcards_admit_subdomains_only(d in domain(), sub in prop::collection::vec(label(), 1..3),
                                       glue in "[a-z0-9-]{1,6}", tail in label(), port in 1u16..) {
        let entry = vec![format!("https://*.{d}")];
        let sub = sub.join(".");
        assert!(origin_allowed(&entry, &format!("https://{sub}.{d}")));
        assert!(origin_allowed(&entry, &format!("https://{}.{}", sub.to_uppercase(), d.to_uppercase())));
        // The domain itself, look-alikes that glue text on, and the domain under another suffix.
        assert!(!origin_allowed(&entry, &format!("https://{d}")));
        assert!(!origin_allowed(&entry, &format!("https://{glue}{d}")));
        // (Unless the added label makes a real subdomain again: `0.8.8.8` is under `8.8`.)
        if !format!("{d}.{tail}").ends_with(&format!(".{d}")) {
            assert!(!origin_allowed(&entry, &format!("https://{sub}.{d}.{tail}")));
        }
        assert!(!origin_allowed(&entry, &format!("https://{sub}{d}")));
        assert!(!origin_allowed(&entry, &format!("https://{sub}-{d}")));
        // Another scheme or port is another origin.
        assert!(!origin_allowed(&entry, &format!("http://{sub}.{d}")));
        if port != 443 {
            assert!(!origin_allowed(&entry, &format!("https://{sub}.{d}:{port}")));
        }
    }

    #[test]
    fn exact_entries_admit_only_their_origin(d in domain(), other in domain(), port in 1u16..,
                                             prefix in label()) {
        let entry = vec![format!("https://{d}:{port}")];
        assert!(origin_allowed(&entry, &format!("https://{d}:{port}")));
        assert!(origin_allowed(&entry, &format!("HTTPS://{}:{port}", d.to_uppercase())));
        if other != d {
            assert!(!origin_allowed(&entry, &format!("https://{other}:{port}")));
        }
        assert!(!origin_allowed(&entry, &format!("https://{prefix}.{d}:{port}")));
        assert!(!origin_allowed(&entry, &format!("https://{prefix}{d}:{port}")));
        assert!(!origin_allowed(&entry, &format!("http://{d}:{port}")));
        assert!(!origin_allowed(&entry, &format!("https://{d}:{}", port.wrapping_add(1).max(1))) || port == u16::MAX);
        assert!(!origin_allowed(&entry, &format!("https://{d}:{port}.{other}")));
        assert!(!origin_allowed(&entry, &format!("https://{d}:{port}@{other}")));
    }

    #[test]
    fn host_entries_match_name_and_port_exactly(d in domain(), other in domain(), port in 1u16.., p2 in 1u16..) {
        let any_port = HostPolicy::parse(std::slice::from_ref(&d)).unwrap();
        assert!(any_port.check(&d).is_ok());
        assert!(any_port.check(&format!("{}:{port}", d.to_uppercase())).is_ok());
        assert!(any_port.check(&format!("{other}.{d}")).is_err() || other.is_empty());
        assert!(any_port.check(&format!("{d}.{other}")).is_err());
        assert!(any_port.check(&format!("x{d}")).is_err());
        let one_port = HostPolicy::parse(&[format!("{d}:{port}")]).unwrap();
        assert!(one_port.check(&format!("{d}:{port}")).is_ok());
        assert!(one_port.check(&d).is_err());
        if p2 != port {
            assert!(one_port.check(&format!("{d}:{p2}")).is_err());
        }
    }

    #[test]
    fn cidr_contains_exactly_the_addresses_sharing_its_prefix(net in any::<u32>(), prefix in 0u8..=32, ip in any::<u32>()) {
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        let text = format!("{}/{prefix}", std::net::Ipv4Addr::from(net & mask));
        let c = Cidr::parse(&text).unwrap();
        let addr = IpAddr::from(std::net::Ipv4Addr::from(ip));
        assert_eq!(c.contains(addr), ip & mask == net & mask);
        // The same address mapped into IPv6 is the same client.
        let mapped = IpAddr::from(std::net::Ipv4Addr::from(ip).to_ipv6_mapped());
        assert_eq!(c.contains(mapped), ip & mask == net & mask);
        // Host bits set: refused, so a typo cannot widen a range unseen.
        if prefix < 32 && net & !mask != 0 {
            assert!(Cidr::parse(&format!("{}/{prefix}", std::net::Ipv4Addr::from(net))).is_err());
        }
    }

    #[test]
    fn cidr_v6(net in any::<u128>(), prefix in 0u8..=128, ip in any::<u128>()) {
        let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
        let base = std::net::Ipv6Addr::from(net & mask);
        // Mapped IPv4 addresses are IPv4 clients; this property is about real IPv6 networks.
        prop_assume!(base.to_ipv4_mapped().is_none() && std::net::Ipv6Addr::from(ip).to_ipv4_mapped().is_none());
        let c = Cidr::parse(&format!("{base}/{prefix}")).unwrap();
        assert_eq!(c.contains(IpAddr::from(std::net::Ipv6Addr::from(ip))), ip & mask == net & mask);
        assert!(!c.contains("192.0.2.1".parse().unwrap()));
    }
}
