//! What counts as one client for per-source caps: an IPv4 address, or an IPv6 /64. A single IPv6
//! host is normally given a whole /64 (SLAAC, privacy addresses rotating within it, RFC 8981), so a
//! cap per IPv6 address would let one host open as many "sources" as it cares to pick addresses.

use std::net::{IpAddr, Ipv6Addr};

/// The key `ip` is counted under: IPv4 (also when IPv4-mapped in IPv6) as is, IPv6 as its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_count_by_64_and_ipv4_by_address() {
        let k = |s: &str| source_key(s.parse().unwrap()).to_string();
        assert_eq!(k("198.18.0.7"), "198.18.0.7");
        assert_eq!(k("::ffff:198.18.0.7"), "198.18.0.7");
        assert_eq!(k("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
    }
}
