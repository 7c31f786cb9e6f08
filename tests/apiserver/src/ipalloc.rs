//! The ClusterIP allocator (pkg/registry/core/service/ipallocator): one service CIDR per IP family
//! (`--service-cluster-ip-range`), usable addresses without the network address (and, for IPv4,
//! the broadcast address), dynamic allocation preferring the upper band (KEP-3070). The addresses
//! in use are computed by the caller from the stored Services.

use crate::portalloc::{range_offset, scan_with_offset};
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// `api.IPFamily` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    Full,
    Allocated,
    NotInRange(String),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Full => write!(f, "range is full"),
            AllocError::Allocated => write!(f, "provided IP is already allocated"),
            AllocError::NotInRange(r) => write!(
                f,
                "provided IP is not in the valid range. The range of valid IPs is {r}"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    prefix: u8,
    family: Family,
}

fn to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR address: {s}"))?;
        let ip: IpAddr = a
            .parse()
            .map_err(|_| format!("invalid CIDR address: {s}"))?;
        let family = Family::of(&ip);
        let bits = match family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= bits)
            .ok_or_else(|| format!("invalid CIDR address: {s}"))?;
        if bits - prefix < 2 {
            return Err(format!("service CIDR {s} is too small"));
        }
        let host_bits = u32::from(bits - prefix);
        let mask = if host_bits >= 128 {
            0
        } else {
            !((1u128 << host_bits) - 1)
        };
        Ok(Cidr {
            network: to_u128(&ip) & mask,
            prefix,
            family,
        })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    fn host_bits(&self) -> u32 {
        let bits = match self.family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        u32::from(bits - self.prefix)
    }

    /// Number of allocatable addresses (first is network + 1).
    fn size(&self) -> u128 {
        let total = if self.host_bits() >= 128 {
            u128::MAX
        } else {
            1u128 << self.host_bits()
        };
        match self.family {
            Family::V4 => total - 2,
            Family::V6 => total - 1,
        }
    }

    fn nth(&self, i: u128) -> IpAddr {
        let v = self.network + 1 + i;
        match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }

    fn index_of(&self, ip: &IpAddr) -> Option<u128> {
        if Family::of(ip) != self.family {
            return None;
        }
        let v = to_u128(ip);
        let i = v.checked_sub(self.network + 1)?;
        (i < self.size()).then_some(i)
    }

    /// The first allocatable address (what the `kubernetes` Service gets).
    pub fn first(&self) -> IpAddr {
        self.nth(0)
    }

    /// Checks a requested address against the range and the addresses in use.
    pub fn allocate(&self, ip: &IpAddr, used: &HashSet<IpAddr>) -> Result<(), AllocError> {
        if self.index_of(ip).is_none() {
            return Err(AllocError::NotInRange(self.to_string()));
        }
        if used.contains(ip) {
            return Err(AllocError::Allocated);
        }
        Ok(())
    }

    /// A free address, at random from the dynamic band first.
    pub fn allocate_next(&self, used: &HashSet<IpAddr>) -> Result<IpAddr, AllocError> {
        let size = self.size();
        let offset = range_offset(size, 16, 256, 16);
        scan_with_offset(size, offset, |i| used.contains(&self.nth(i)))
            .map(|i| self.nth(i))
            .ok_or(AllocError::Full)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(self.network as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.network)),
        };
        write!(f, "{ip}/{}", self.prefix)
    }
}

/// `netutils.ParseIPSloppy` for the forms services carry (no zone, no leading-zero IPv4 quirks).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_range_excludes_network_and_broadcast() {
        let c = Cidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/12");
        assert_eq!(c.first(), "10.96.0.1".parse::<IpAddr>().unwrap());
        let used = HashSet::new();
        for bad in ["10.96.0.0", "10.111.255.255", "10.112.0.1", "fd00::1"] {
            assert_eq!(
                c.allocate(&bad.parse().unwrap(), &used),
                Err(AllocError::NotInRange("10.96.0.0/12".into())),
                "{bad}"
            );
        }
        assert!(c
            .allocate(&"10.111.255.254".parse().unwrap(), &used)
            .is_ok());
        for _ in 0..100 {
            let ip = c.allocate_next(&used).unwrap();
            assert!(c.index_of(&ip).is_some_and(|i| i >= 256), "{ip}");
        }
        assert_eq!(
            AllocError::NotInRange("10.96.0.0/12".into()).to_string(),
            "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"
        );
    }

    #[test]
    fn v6_range_and_full() {
        let c = Cidr::parse("fd00:10:96::/112").unwrap();
        assert_eq!(c.family(), Family::V6);
        assert_eq!(c.to_string(), "fd00:10:96::/112");
        let ip = c.allocate_next(&HashSet::new()).unwrap();
        assert!(ip.to_string().starts_with("fd00:10:96::"), "{ip}");
        let small = Cidr::parse("192.0.2.0/29").unwrap();
        let used: HashSet<IpAddr> = (1..7)
            .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)))
            .collect();
        assert_eq!(small.allocate_next(&used), Err(AllocError::Full));
        assert_eq!(
            small.allocate(&"192.0.2.3".parse().unwrap(), &used),
            Err(AllocError::Allocated)
        );
    }
}
