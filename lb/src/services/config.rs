//! The `services:` section: how keel-lb becomes the workload cluster's provider for Services of type
//! LoadBalancer. Raw serde structs, then one `validate` into [`ServicesConfig`], like the rest of the
//! file; the controller trusts what comes out.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use keel_common::{Diagnostics, Dur};
use serde::Deserialize;

use crate::config::Balance;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServices {
    /// kubeconfig of keel-lb's own identity in the workload cluster (configs/keel-lb-rbac.yaml).
    pub kubeconfig: PathBuf,
    /// `spec.loadBalancerClass` served; Services with another class are left alone.
    pub load_balancer_class: Option<String>,
    /// Also serve Services without a class (upstream: the cluster's default provider does). Default
    /// true without `load_balancer_class`, false with one.
    pub default_class: Option<bool>,
    /// Where the last applied Service rules are kept, so a restart during an API outage still serves.
    pub state_file: Option<PathBuf>,
    /// The Lease that elects the one keel-lb that writes status, annotations, finalizers and Events.
    #[serde(default)]
    pub writer_lease: RawLease,
    /// This instance's name in that Lease (default: the host name).
    pub instance: Option<String>,
    #[serde(default)]
    pub health: RawSvcHealth,
    #[serde(default)]
    pub address_pools: Vec<RawAddressPool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLease {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub duration: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSvcHealth {
    /// `kube_proxy` (HTTP on kube-proxy's healthz, port 10256) or `node_port` (TCP to the nodePort)
    /// for `externalTrafficPolicy: Cluster`.
    pub cluster: Option<ClusterHealth>,
    pub kube_proxy_port: Option<u32>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAddressPool {
    pub name: String,
    /// CIDRs (`198.18.100.0/28`, `2001:db8:100::/124`) or ranges (`198.18.100.10-198.18.100.20`).
    pub addresses: Vec<String>,
    /// Hand out addresses to Services that ask for none (default true). With false, a Service gets
    /// an address here only by asking for the pool or the address.
    pub auto_assign: Option<bool>,
    /// Only Services in these namespaces (default: all).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Only Services carrying all these labels (default: all).
    #[serde(default)]
    pub service_labels: BTreeMap<String, String>,
    /// The VRRP routers (names in `vrrp.routers`) that carry this pool's addresses: one per family.
    #[serde(default)]
    pub vrrp_routers: Vec<String>,
    /// How this pool's addresses reach the network: `vrrp` (default: on the master of
    /// `vrrp_routers`) or `bgp` (on every LB VM's `bgp.interface`, announced through FRR).
    pub announce: Option<String>,
    /// Send PROXY protocol v2 to the nodes (the Service's ingress then says `ipMode: Proxy`).
    pub proxy_protocol: Option<String>,
    #[serde(default)]
    pub balance: Balance,
    /// `proxy` (default) or `nat`: as `frontends[].mode`, for this pool's Services.
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterHealth {
    KubeProxy,
    NodePort,
}

/// An inclusive address range of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl Range {
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip_u128(ip).is_some_and(|v| {
            same_family(ip, self.first)
                && v >= ip_u128(self.first).unwrap_or(0)
                && v <= ip_u128(self.last).unwrap_or(0)
        })
    }

    pub fn len(&self) -> u128 {
        match (ip_u128(self.first), ip_u128(self.last)) {
            (Some(a), Some(b)) => b - a + 1,
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th address of the range (`i < len`).
    pub fn nth(&self, i: u128) -> Option<IpAddr> {
        let v = ip_u128(self.first)?.checked_add(i)?;
        if v > ip_u128(self.last)? {
            return None;
        }
        Some(match self.first {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(v).ok()?)),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(v)),
        })
    }
}

pub fn ip_u128(ip: IpAddr) -> Option<u128> {
    Some(match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    })
}

pub fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The router name under which a pool announced by BGP files its addresses; a VRRP router of that
/// name is refused next to such a pool.
pub const BGP_ROUTER: &str = "bgp";

#[derive(Debug, Clone, PartialEq)]
pub struct AddressPool {
    pub name: String,
    pub ranges: Vec<Range>,
    pub auto_assign: bool,
    pub namespaces: Vec<String>,
    pub service_labels: BTreeMap<String, String>,
    /// Router name for IPv4 and IPv6 addresses of this pool.
    pub router_v4: Option<String>,
    pub router_v6: Option<String>,
    pub proxy_protocol: bool,
    pub balance: Balance,
    /// The kernel forwards this pool's Services (`mode: nat`).
    pub nat: bool,
}

impl AddressPool {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    pub fn has_family(&self, v4: bool) -> bool {
        self.ranges.iter().any(|r| r.first.is_ipv4() == v4)
    }

    pub fn router_for(&self, ip: IpAddr) -> Option<&str> {
        if ip.is_ipv4() {
            self.router_v4.as_deref()
        } else {
            self.router_v6.as_deref()
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SvcHealth {
    pub cluster: ClusterHealth,
    pub kube_proxy_port: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicesConfig {
    pub kubeconfig: PathBuf,
    pub load_balancer_class: Option<String>,
    pub default_class: bool,
    pub state_file: Option<PathBuf>,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub instance: Option<String>,
    pub health: SvcHealth,
    pub pools: Vec<AddressPool>,
}

impl ServicesConfig {
    /// Whether keel-lb serves a Service with this `spec.loadBalancerClass` (upstream's rule: a class
    /// means the controller that owns that class, none means the default provider).
    pub fn serves_class(&self, class: Option<&str>) -> bool {
        match class {
            None => self.default_class,
            Some(c) => self.load_balancer_class.as_deref() == Some(c),
        }
    }

    /// The VRRP router that carries `ip`: its pool's for that family, or, for an address outside
    /// every pool (a pool shrank under it), the first pool's router of its family, so it stays up.
    pub fn router_for(&self, ip: IpAddr) -> Option<&str> {
        self.pools
            .iter()
            .find(|p| p.contains(ip))
            .and_then(|p| p.router_for(ip))
            .or_else(|| self.pools.iter().find_map(|p| p.router_for(ip)))
    }
}

/// A host name as a Lease holder and Event reporter (falls back to "keel-lb").
pub fn default_instance() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keel-lb".into())
}

fn parse_range(text: &str) -> Result<Range, String> {
    let t = text.trim();
    if let Some((a, b)) = t.split_once('-') {
        let first: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let last: IpAddr = b
            .trim()
            .parse()
            .map_err(|_| format!("{b:?} is not an IP address"))?;
        if !same_family(first, last) {
            return Err(format!("{t:?} mixes IPv4 and IPv6"));
        }
        if ip_u128(first) > ip_u128(last) {
            return Err(format!("{t:?}: the first address is after the last"));
        }
        return Ok(Range { first, last });
    }
    let Some((ip, len)) = t.split_once('/') else {
        return Err(format!(
            "{t:?} is neither a CIDR (198.18.100.0/28) nor a range (198.18.100.10-198.18.100.20)"
        ));
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    let bits: u32 = if ip.is_ipv4() { 32 } else { 128 };
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= bits)
        .ok_or_else(|| format!("{t:?}: prefix length must be 0-{bits}"))?;
    let v = ip_u128(ip).unwrap_or(0);
    let host_bits = bits - len;
    let mask: u128 = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    if v & mask != 0 {
        return Err(format!("{t:?} has host bits set"));
    }
    let (first, last) = (v, v | mask);
    let mk = |x: u128| match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(x as u32)),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(x)),
    };
    Ok(Range {
        first: mk(first),
        last: mk(last),
    })
}

const DNS_LABEL_MAX: usize = 63;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS_LABEL_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters (object names).
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A qualified name as upstream's `ValidateQualifiedName`: `[prefix/]name`, the prefix a DNS
/// subdomain, the name 1-63 alphanumerics, `-`, `_`, `.`, alphanumeric at both ends.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns_subdomain)
}

/// Validates the section. `routers` are the VRRP routers of the file: (name, is IPv4).
pub fn validate(
    raw: &RawServices,
    routers: &[(String, bool)],
    have_bgp: bool,
    diag: &mut Diagnostics,
) -> Option<ServicesConfig> {
    let f = "services";
    let before = diag_len(diag);
    if raw.kubeconfig.as_os_str().is_empty() || !raw.kubeconfig.is_absolute() {
        diag.error(format!("{f}.kubeconfig"), "must be an absolute path");
    }
    if let Some(c) = &raw.load_balancer_class {
        // Upstream validates spec.loadBalancerClass as a qualified name (prefix/name); a class the
        // API server would never accept on a Service would match none.
        if !is_qualified_name(c) {
            diag.error(
                format!("{f}.load_balancer_class"),
                format!("{c:?} is not a qualified name: [DNS subdomain/]name, the name 1-63 letters, digits, '-', '_', '.', starting and ending with a letter or digit (e.g. keel.io/lb)"),
            );
        }
    }
    if let Some(i) = &raw.instance {
        // The Lease's holderIdentity: empty would read as "no holder".
        if i.trim().is_empty()
            || i.len() > 253
            || i.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            diag.error(
                format!("{f}.instance"),
                format!("{i:?} must be 1-253 characters without spaces (it names this keel-lb in the writer Lease)"),
            );
        }
    }
    let default_class = raw
        .default_class
        .unwrap_or(raw.load_balancer_class.is_none());
    if raw.load_balancer_class.is_none() && !default_class {
        diag.error(
            format!("{f}.default_class"),
            "with no load_balancer_class and default_class false, no Service would be served",
        );
    }
    if let Some(p) = &raw.state_file {
        if !p.is_absolute() {
            diag.error(format!("{f}.state_file"), "must be an absolute path");
        }
    }
    let lease_namespace = raw
        .writer_lease
        .namespace
        .clone()
        .unwrap_or_else(|| "kube-system".into());
    let lease_name = raw
        .writer_lease
        .name
        .clone()
        .unwrap_or_else(|| "keel-lb".into());
    if !is_dns_label(&lease_namespace) {
        diag.error(
            format!("{f}.writer_lease.namespace"),
            format!("{lease_namespace:?} is not a namespace name"),
        );
    }
    if !is_dns_subdomain(&lease_name) {
        diag.error(
            format!("{f}.writer_lease.name"),
            format!("{lease_name:?} is not a Lease name: a DNS subdomain, at most 253 characters of a-z, 0-9, '-', '.'"),
        );
    }
    let lease_duration = raw
        .writer_lease
        .duration
        .and_then(|d| {
            diag.duration_in(
                format!("{f}.writer_lease.duration"),
                d.0,
                Duration::from_secs(2),
                Duration::from_secs(300),
            )
        })
        .unwrap_or(Duration::from_secs(15));

    let h = &raw.health;
    let mut dur = |name: &str, d: Option<Dur>, def: u64, min: Duration, max: Duration| {
        d.and_then(|d| diag.duration_in(format!("{f}.health.{name}"), d.0, min, max))
            .unwrap_or(Duration::from_millis(def))
    };
    let interval = dur(
        "interval",
        h.interval,
        2000,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    let timeout = dur(
        "timeout",
        h.timeout,
        1000,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    let mut count = |name: &str, v: Option<u32>| {
        v.and_then(|v| diag.count_in(format!("{f}.health.{name}"), u64::from(v), 1, 100))
            .map(|v| v as u32)
            .unwrap_or(2)
    };
    let rise = count("rise", h.rise);
    let fall = count("fall", h.fall);
    let health = SvcHealth {
        cluster: h.cluster.unwrap_or(ClusterHealth::KubeProxy),
        kube_proxy_port: match h.kube_proxy_port {
            None => 10256,
            Some(p) => match u16::try_from(p) {
                Ok(p) if p != 0 => p,
                _ => {
                    diag.error(
                        format!("{f}.health.kube_proxy_port"),
                        format!("{p} is not a port"),
                    );
                    10256
                }
            },
        },
        interval,
        timeout,
        rise,
        fall,
    };
    if health.timeout > health.interval {
        diag.error(
            format!("{f}.health.timeout"),
            "must not be longer than the interval",
        );
    }

    let mut pools: Vec<AddressPool> = Vec::new();
    if raw.address_pools.is_empty() {
        diag.error(
            format!("{f}.address_pools"),
            "at least one address pool is needed to give Services addresses",
        );
    }
    for (i, rp) in raw.address_pools.iter().enumerate() {
        let pf = format!("{f}.address_pools[{i}]");
        if !is_dns_label(&rp.name) {
            diag.error(
                format!("{pf}.name"),
                format!("{:?} must be a DNS label (a-z, 0-9, '-')", rp.name),
            );
        }
        if let Some(j) = pools.iter().position(|p| p.name == rp.name) {
            diag.error(
                format!("{pf}.name"),
                format!("{:?} is also the name of address_pools[{j}]", rp.name),
            );
        }
        let mut ranges: Vec<Range> = Vec::new();
        if rp.addresses.is_empty() {
            diag.error(
                format!("{pf}.addresses"),
                "must list at least one CIDR or range",
            );
        }
        for (j, a) in rp.addresses.iter().enumerate() {
            match parse_range(a) {
                Ok(r) => {
                    let overlap = pools
                        .iter()
                        .flat_map(|p| p.ranges.iter().map(move |x| (p, x)))
                        .find(|(_, x)| overlaps(x, &r))
                        .map(|(p, _)| p.name.clone());
                    if let Some(other) = overlap {
                        diag.error(
                            format!("{pf}.addresses[{j}]"),
                            format!("{a:?} overlaps address pool {other:?}"),
                        );
                    } else if ranges.iter().any(|x| overlaps(x, &r)) {
                        diag.error(
                            format!("{pf}.addresses[{j}]"),
                            format!("{a:?} overlaps another entry of this pool"),
                        );
                    }
                    ranges.push(r);
                }
                Err(e) => diag.error(format!("{pf}.addresses[{j}]"), e),
            }
        }
        for ns in &rp.namespaces {
            if !is_dns_label(ns) {
                diag.error(
                    format!("{pf}.namespaces"),
                    format!("{ns:?} is not a namespace name"),
                );
            }
        }
        let (mut router_v4, mut router_v6) = (None, None);
        let by_bgp = match rp.announce.as_deref() {
            None | Some("vrrp") => false,
            Some("bgp") => {
                if !have_bgp {
                    diag.error(
                        format!("{pf}.announce"),
                        "bgp needs a bgp: section (its interface and FRR's status)",
                    );
                }
                if routers.iter().any(|(n, _)| n == BGP_ROUTER) {
                    diag.error(
                        format!("{pf}.announce"),
                        format!("a VRRP router is named {BGP_ROUTER:?}, which stands for BGP here; rename the router"),
                    );
                }
                if !rp.vrrp_routers.is_empty() {
                    diag.error(
                        format!("{pf}.vrrp_routers"),
                        "a pool announced by bgp names no VRRP routers",
                    );
                }
                router_v4 = Some(BGP_ROUTER.to_string());
                router_v6 = Some(BGP_ROUTER.to_string());
                true
            }
            Some(o) => {
                diag.error(
                    format!("{pf}.announce"),
                    format!("{o:?} is not an announcement mode; vrrp or bgp"),
                );
                false
            }
        };
        for (j, name) in rp.vrrp_routers.iter().enumerate().filter(|_| !by_bgp) {
            match routers.iter().find(|(n, _)| n == name) {
                None => diag.error(
                    format!("{pf}.vrrp_routers[{j}]"),
                    format!(
                        "no VRRP router named {name:?} (routers: {})",
                        if routers.is_empty() {
                            "none; add a vrrp: section".to_string()
                        } else {
                            routers
                                .iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ),
                Some((_, v4)) => {
                    let slot = if *v4 { &mut router_v4 } else { &mut router_v6 };
                    if slot.is_some() {
                        diag.error(
                            format!("{pf}.vrrp_routers[{j}]"),
                            format!(
                                "a second {} router; a pool has one router per family",
                                if *v4 { "IPv4" } else { "IPv6" }
                            ),
                        );
                    }
                    *slot = Some(name.clone());
                }
            }
        }
        if ranges.iter().any(|r| r.first.is_ipv4())
            && router_v4.is_none()
            && !routers.is_empty()
            && !by_bgp
        {
            diag.error(
                format!("{pf}.vrrp_routers"),
                "the pool has IPv4 addresses but names no IPv4 router to carry them",
            );
        }
        if ranges.iter().any(|r| r.first.is_ipv6())
            && router_v6.is_none()
            && !routers.is_empty()
            && !by_bgp
        {
            diag.error(
                format!("{pf}.vrrp_routers"),
                "the pool has IPv6 addresses but names no IPv6 router to carry them",
            );
        }
        let proxy_protocol = match rp.proxy_protocol.as_deref() {
            None => false,
            Some("v2") => true,
            Some(o) => {
                diag.error(
                    format!("{pf}.proxy_protocol"),
                    format!("{o:?} is not supported; the only value is \"v2\""),
                );
                false
            }
        };
        let nat = match rp.mode.as_deref() {
            None | Some("proxy") => false,
            Some("nat") => {
                if proxy_protocol {
                    diag.error(
                        format!("{pf}.proxy_protocol"),
                        "needs mode: proxy (with mode: nat the kernel forwards packets and nothing writes the header)",
                    );
                }
                if rp.balance == Balance::LeastConn {
                    diag.error(
                        format!("{pf}.balance"),
                        "least_conn cannot go with mode: nat (the kernel keeps no counts per backend); use round_robin or maglev",
                    );
                }
                true
            }
            Some(o) => {
                diag.error(
                    format!("{pf}.mode"),
                    format!("{o:?} is not supported; the values are \"proxy\" and \"nat\""),
                );
                false
            }
        };
        pools.push(AddressPool {
            name: rp.name.clone(),
            ranges,
            auto_assign: rp.auto_assign.unwrap_or(true),
            namespaces: rp.namespaces.clone(),
            service_labels: rp.service_labels.clone(),
            router_v4,
            router_v6,
            proxy_protocol,
            balance: rp.balance,
            nat,
        });
    }
    (diag_len(diag) == before).then(|| ServicesConfig {
        kubeconfig: raw.kubeconfig.clone(),
        load_balancer_class: raw.load_balancer_class.clone(),
        default_class,
        state_file: raw.state_file.clone(),
        lease_namespace,
        lease_name,
        lease_duration,
        instance: raw.instance.clone(),
        health,
        pools,
    })
}

fn diag_len(d: &Diagnostics) -> usize {
    d.len()
}

fn overlaps(a: &Range, b: &Range) -> bool {
    same_family(a.first, b.first)
        && ip_u128(a.first) <= ip_u128(b.last)
        && ip_u128(b.first) <= ip_u128(a.last)
}

#[cfg(test)]
mod tests {
    use keel_common::Source;

    fn check(services: &str) -> Result<crate::config::Config, keel_common::ConfigErrors> {
        let text = format!(
            "frontends: []\npools: {{}}\nservices:\n  kubeconfig: /etc/keel/lb.kubeconfig\n{services}"
        );
        crate::config::load_source(&Source::from_text("lb.yaml", text))
    }

    #[test]
    fn a_pool_announced_by_bgp_needs_a_bgp_section_and_no_vrrp_routers() {
        let pool =
            "  address_pools:\n    - {name: p, addresses: [198.18.10.0/28], announce: bgp}\n";
        let c = check(&format!("{pool}bgp: {{}}\n")).unwrap();
        let p = &c.services.unwrap().pools[0];
        assert_eq!(p.router_v4.as_deref(), Some(super::BGP_ROUTER));
        // Its VIPs come from the Services: the bgp section may list none.
        assert!(c.bgp.unwrap().vips.is_empty());
        let e = check(pool).unwrap_err().to_string();
        assert!(
            e.contains("lb.yaml:6: services.address_pools[0].announce: bgp needs a bgp: section"),
            "{e}"
        );
        let e = check("  address_pools:\n    - {name: p, addresses: [198.18.10.0/28], announce: bgp, vrrp_routers: [r]}\n    - {name: q, addresses: [198.18.11.0/28], announce: ospf}\nbgp: {}\n")
            .unwrap_err()
            .to_string();
        for want in [
            "lb.yaml:6: services.address_pools[0].vrrp_routers: a pool announced by bgp names no VRRP routers",
            "lb.yaml:7: services.address_pools[1].announce: \"ospf\" is not an announcement mode",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn a_pool_in_mode_nat_takes_no_proxy_header_and_no_least_conn() {
        let bgp = "bgp: {}\n";
        let ok = check(&format!(
            "  address_pools:\n    - {{name: p, addresses: [198.18.10.0/28], announce: bgp, mode: nat}}\n{bgp}"
        ))
        .unwrap();
        assert!(ok.services.unwrap().pools[0].nat);
        let e = check(&format!("  address_pools:\n    - {{name: p, addresses: [198.18.10.0/28], announce: bgp, mode: nat, proxy_protocol: v2, balance: least_conn}}\n    - {{name: q, addresses: [198.18.11.0/28], announce: bgp, mode: dsr}}\n{bgp}"))
            .unwrap_err()
            .to_string();
        for want in [
            "services.address_pools[0].proxy_protocol: needs mode: proxy",
            "services.address_pools[0].balance: least_conn cannot go with mode: nat",
            "services.address_pools[1].mode: \"dsr\" is not supported",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn empty_or_invalid_names_are_refused_with_their_line() {
        let e = check("  instance: \"\"\n  load_balancer_class: \"not a class\"\n  writer_lease:\n    name: Keel_LB\n")
            .unwrap_err()
            .to_string();
        for needle in [
            "lb.yaml:5: services.instance:",
            "lb.yaml:6: services.load_balancer_class:",
            "lb.yaml:8: services.writer_lease.name:",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
        }
        for bad in ["/lb", "keel.io/", "-x", "a/b/c"] {
            let e = check(&format!("  load_balancer_class: \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("services.load_balancer_class:"), "{bad}: {e}");
        }
    }

    #[test]
    fn valid_names_pass() {
        let r = check("  instance: lb-1\n  load_balancer_class: keel.io/lb\n  writer_lease:\n    name: keel-lb.writer\n");
        // Only the names matter here; the section may miss other parts.
        let text = r.err().map(|e| e.to_string()).unwrap_or_default();
        for field in ["instance", "load_balancer_class", "writer_lease"] {
            assert!(!text.contains(&format!("services.{field}")), "{text}");
        }
    }
}
