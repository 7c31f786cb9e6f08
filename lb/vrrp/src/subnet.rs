//! The subnets of an interface, for `strict_source`: an advert is believed only from a source
//! inside one of them. Pure: the driver reads the interface's addresses and hands them in.
//!
//! IPv4: every address on the interface with its prefix, the VIPs left out (they follow
//! mastership, so counting them would make the accepted set change with the state).
//!
//! IPv6: VRRPv3 adverts come from the sender's link-local address (RFC 9568 §5.1.2.1), and
//! `fe80::/64` is a subnet of every IPv6 interface: a link-local source is always inside. What
//! strict mode drops on IPv6 is a global or unique-local source outside the interface's prefixes
//! (a sender that is on the segment but not in our network, or a unicast advert from afar). It does
//! not tell two link-local senders apart: `unicast_peers` does that.

use std::net::IpAddr;

/// One address of an interface with its prefix length (198.18.1.11/24, fe80::1/64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Subnet {
    /// True when `ip` is in this subnet (same family, same first `prefix` bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// True when `ip` lies in one of `subnets`.
pub fn inside(ip: IpAddr, subnets: &[Subnet]) -> bool {
    subnets.iter().any(|s| s.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Subnet {
        let (a, p) = t.split_once('/').unwrap();
        Subnet {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    #[test]
    fn containment_follows_the_prefix_and_the_family() {
        let nets = [s("198.18.1.11/24"), s("fe80::1/64"), s("2001:db8:1::11/64")];
        for (ip, want) in [
            ("198.18.1.200", true),
            ("198.18.2.1", false),
            ("198.19.1.11", false),
            ("fe80::abcd", true),
            ("fe80:0:0:1::1", false),
            ("2001:db8:1::99", true),
            ("2001:db8:2::11", false),
        ] {
            assert_eq!(inside(ip.parse().unwrap(), &nets), want, "{ip}");
        }
        assert!(s("0.0.0.0/0").contains("203.0.113.1".parse().unwrap()));
        assert!(s("198.18.1.11/32").contains("198.18.1.11".parse().unwrap()));
        assert!(!s("198.18.1.11/32").contains("198.18.1.12".parse().unwrap()));
        assert!(!s("198.18.1.11/0").contains("::1".parse().unwrap()));
        assert!(!inside("198.18.1.1".parse().unwrap(), &[]));
    }
}
