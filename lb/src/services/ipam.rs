//! Address allocation for Services: which IP a Service gets, pure and without I/O. The decision is
//! recorded on the Service itself (status and our annotation), so this index is rebuilt from what the
//! API server holds and only the one elected writer ever calls [`Ipam::assign`].
//!
//! Rules (MetalLB's and upstream's where they exist): an address, once recorded, stays with its
//! Service until the Service lets it go (never moved because another Service left or a pool shrank;
//! an address outside every pool is kept and reported); a requested address must lie in a pool the
//! Service may use; two Services share an address only with the same sharing key and no common
//! (protocol, port), so TCP/53 and UDP/53 may share.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::config::AddressPool;
use crate::config::Protocol;

/// What a Service asks for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub key: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Families wanted, in order of preference: `[v4]`, `[v6]`, `[v4, v6]`, `[v6, v4]`.
    pub families: Vec<bool>,
    /// Both families are required (`RequireDualStack`), not just preferred.
    pub require_all_families: bool,
    /// Addresses asked for (our annotation or `spec.loadBalancerIP`).
    pub requested: Vec<IpAddr>,
    /// An address pool asked for by name.
    pub pool: Option<String>,
    pub sharing_key: Option<String>,
    pub ports: Vec<(Protocol, u16)>,
    /// What is recorded on the Service now.
    pub current: Vec<IpAddr>,
}

/// Why no address could be given; the variant name is the Event reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no address pool serves this Service ({0})")]
    NoMatchingPool(String),
    #[error("address pool {pool:?} has no free {family} address")]
    PoolExhausted { pool: String, family: &'static str },
    #[error("{ip} is outside every address pool")]
    AddressOutsidePools { ip: IpAddr },
    #[error("{ip} is in address pool {pool:?}, which does not serve this Service ({why})")]
    AddressNotAllowed {
        ip: IpAddr,
        pool: String,
        why: String,
    },
    #[error("{ip} is already used by {by}{hint}")]
    AddressTaken {
        ip: IpAddr,
        by: String,
        hint: String,
    },
    #[error("{ip}: {proto}/{port} is already served for {by} on the shared address")]
    PortConflict {
        ip: IpAddr,
        proto: &'static str,
        port: u16,
        by: String,
    },
    #[error("{0}")]
    BadRequest(String),
}

impl IpamError {
    pub fn reason(&self) -> &'static str {
        match self {
            IpamError::NoMatchingPool(_) => "NoMatchingPool",
            IpamError::PoolExhausted { .. } => "PoolExhausted",
            IpamError::AddressOutsidePools { .. } => "AddressOutsidePools",
            IpamError::AddressNotAllowed { .. } => "AddressNotAllowed",
            IpamError::AddressTaken { .. } => "AddressTaken",
            IpamError::PortConflict { .. } => "PortConflict",
            IpamError::BadRequest(_) => "InvalidAddressRequest",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    sharing_key: Option<String>,
    ports: Vec<(Protocol, u16)>,
}

fn proto_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

fn family_str(v4: bool) -> &'static str {
    if v4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The allocation index: which Service holds which address.
#[derive(Debug, Default)]
pub struct Ipam {
    pools: Vec<AddressPool>,
    /// Addresses of the config file (VRRP VIPs, frontend listen addresses): never handed out.
    reserved: HashSet<IpAddr>,
    held: HashMap<IpAddr, BTreeMap<String, Holder>>,
    by_svc: HashMap<String, Vec<IpAddr>>,
}

impl Ipam {
    pub fn new(pools: Vec<AddressPool>, reserved: HashSet<IpAddr>) -> Ipam {
        Ipam {
            pools,
            reserved,
            ..Default::default()
        }
    }

    /// New pools (a reload): recorded addresses stay recorded, whatever the pools now say.
    pub fn set_pools(&mut self, pools: Vec<AddressPool>, reserved: HashSet<IpAddr>) {
        self.pools = pools;
        self.reserved = reserved;
    }

    pub fn pools(&self) -> &[AddressPool] {
        &self.pools
    }

    pub fn pool_of(&self, ip: IpAddr) -> Option<&AddressPool> {
        self.pools.iter().find(|p| p.contains(ip))
    }

    /// Records what a Service holds (replacing what it held before).
    pub fn record(
        &mut self,
        key: &str,
        ips: &[IpAddr],
        sharing_key: Option<&str>,
        ports: &[(Protocol, u16)],
    ) {
        self.release(key);
        if ips.is_empty() {
            return;
        }
        for ip in ips {
            self.held.entry(*ip).or_default().insert(
                key.to_string(),
                Holder {
                    sharing_key: sharing_key.map(str::to_string),
                    ports: ports.to_vec(),
                },
            );
        }
        self.by_svc.insert(key.to_string(), ips.to_vec());
    }

    pub fn release(&mut self, key: &str) {
        if let Some(ips) = self.by_svc.remove(key) {
            for ip in ips {
                if let Some(h) = self.held.get_mut(&ip) {
                    h.remove(key);
                    if h.is_empty() {
                        self.held.remove(&ip);
                    }
                }
            }
        }
    }

    pub fn held_by(&self, key: &str) -> &[IpAddr] {
        self.by_svc.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// (used, size) of each pool, for metrics.
    pub fn usage(&self) -> Vec<(String, u64, u128)> {
        self.pools
            .iter()
            .map(|p| {
                let used = self.held.keys().filter(|ip| p.contains(**ip)).count() as u64;
                let size = p.ranges.iter().map(|r| r.len()).sum();
                (p.name.clone(), used, size)
            })
            .collect()
    }

    /// Recorded addresses that no pool contains any more (a pool shrank or went away).
    pub fn orphans(&self) -> Vec<(IpAddr, Vec<String>)> {
        let mut v: Vec<(IpAddr, Vec<String>)> = self
            .held
            .iter()
            .filter(|(ip, _)| self.pool_of(**ip).is_none())
            .map(|(ip, h)| (*ip, h.keys().cloned().collect()))
            .collect();
        v.sort();
        v
    }

    /// Why `pool` may not serve `req` (None: it may).
    fn not_allowed(pool: &AddressPool, req: &Request) -> Option<String> {
        if !pool.namespaces.is_empty() && !pool.namespaces.contains(&req.namespace) {
            return Some(format!(
                "namespace {:?} is not one of {:?}",
                req.namespace, pool.namespaces
            ));
        }
        for (k, v) in &pool.service_labels {
            if req.labels.get(k) != Some(v) {
                return Some(format!("the Service lacks label {k}={v}"));
            }
        }
        None
    }

    /// Whether `req` may take `ip` given who holds it (None: yes).
    fn conflict(&self, ip: IpAddr, req: &Request) -> Option<IpamError> {
        let holders = self.held.get(&ip)?;
        for (other, h) in holders {
            if *other == req.key {
                continue;
            }
            let shared = req.sharing_key.is_some() && h.sharing_key == req.sharing_key;
            if !shared {
                return Some(IpamError::AddressTaken {
                    ip,
                    by: other.clone(),
                    hint: match (&req.sharing_key, &h.sharing_key) {
                        (Some(_), Some(_)) => " (with another sharing key)".into(),
                        (None, Some(_)) | (Some(_), None) => {
                            " (both Services need the same sharing key to share it)".into()
                        }
                        (None, None) => String::new(),
                    },
                });
            }
            if let Some((proto, port)) = req.ports.iter().find(|p| h.ports.contains(p)) {
                return Some(IpamError::PortConflict {
                    ip,
                    proto: proto_str(*proto),
                    port: *port,
                    by: other.clone(),
                });
            }
        }
        None
    }

    /// The addresses `req` should hold. Pure: call [`Ipam::record`] once they are written.
    pub fn assign(&self, req: &Request) -> Result<Vec<IpAddr>, IpamError> {
        if let Some(p) = &req.pool {
            if !self.pools.iter().any(|x| &x.name == p) {
                return Err(IpamError::NoMatchingPool(format!(
                    "it asks for address pool {p:?}, which does not exist"
                )));
            }
        }
        if !req.requested.is_empty() {
            return self.assign_requested(req);
        }
        // Keep what is recorded while it still fits the request: stable across restarts, pool edits
        // and other Services coming and going.
        if !req.current.is_empty() {
            let pool_ok = |ip: &IpAddr| match (&req.pool, self.pool_of(*ip)) {
                (Some(want), Some(p)) => &p.name == want,
                (Some(_), None) => false,
                (None, _) => true,
            };
            let fams_ok = req
                .current
                .iter()
                .all(|ip| req.families.contains(&ip.is_ipv4()));
            if fams_ok && req.current.iter().all(pool_ok) {
                let mut keep = req.current.clone();
                // A family added later (e.g. PreferDualStack) gets an address; a failure to find one
                // keeps what there is unless it is required.
                for &fam in &req.families {
                    if keep.iter().any(|ip| ip.is_ipv4() == fam) {
                        continue;
                    }
                    match self.pick(req, fam) {
                        Ok(ip) => keep.push(ip),
                        Err(e) if req.require_all_families => return Err(e),
                        Err(_) => {}
                    }
                }
                if let Some(e) = keep.iter().find_map(|ip| self.conflict(*ip, req)) {
                    return Err(e);
                }
                return Ok(keep);
            }
        }
        let mut out = Vec::new();
        let mut first_err = None;
        for (i, &fam) in req.families.iter().enumerate() {
            match self.pick(req, fam) {
                Ok(ip) => out.push(ip),
                Err(e) => {
                    if i == 0 || req.require_all_families {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) if out.is_empty() || req.require_all_families => Err(e),
            _ if out.is_empty() => Err(IpamError::NoMatchingPool("no family to assign".into())),
            _ => Ok(out),
        }
    }

    fn assign_requested(&self, req: &Request) -> Result<Vec<IpAddr>, IpamError> {
        if req.requested.len() > 2
            || (req.requested.len() == 2
                && req.requested[0].is_ipv4() == req.requested[1].is_ipv4())
        {
            return Err(IpamError::BadRequest(
                "at most two addresses, one IPv4 and one IPv6, may be requested".into(),
            ));
        }
        for ip in &req.requested {
            let Some(pool) = self.pool_of(*ip) else {
                return Err(IpamError::AddressOutsidePools { ip: *ip });
            };
            if let Some(why) = Self::not_allowed(pool, req) {
                return Err(IpamError::AddressNotAllowed {
                    ip: *ip,
                    pool: pool.name.clone(),
                    why,
                });
            }
            if let Some(want) = &req.pool {
                if &pool.name != want {
                    return Err(IpamError::AddressNotAllowed {
                        ip: *ip,
                        pool: pool.name.clone(),
                        why: format!("the Service asks for address pool {want:?}"),
                    });
                }
            }
            if self.reserved.contains(ip) {
                return Err(IpamError::AddressTaken {
                    ip: *ip,
                    by: "keel-lb's config file".into(),
                    hint: String::new(),
                });
            }
            if let Some(e) = self.conflict(*ip, req) {
                return Err(e);
            }
        }
        Ok(req.requested.clone())
    }

    /// One address of family `v4` for `req`: a sharing partner's address first, then the first free one.
    fn pick(&self, req: &Request, v4: bool) -> Result<IpAddr, IpamError> {
        let why_not = |p: &AddressPool| -> Option<String> {
            match &req.pool {
                Some(want) if &p.name != want => Some("not the pool asked for".into()),
                None if !p.auto_assign => Some("auto_assign is off".into()),
                _ => Self::not_allowed(p, req),
            }
        };
        let with_family: Vec<&AddressPool> = self
            .pools
            .iter()
            .filter(|p| why_not(p).is_none() && p.has_family(v4))
            .collect();
        if with_family.is_empty() {
            let why = self
                .pools
                .iter()
                .filter(|p| p.has_family(v4))
                .filter_map(|p| why_not(p).map(|w| format!("{}: {w}", p.name)))
                .collect::<Vec<_>>();
            return Err(IpamError::NoMatchingPool(if why.is_empty() {
                format!("no pool has {} addresses", family_str(v4))
            } else {
                format!("{} pools: {}", family_str(v4), why.join("; "))
            }));
        }
        if let Some(key) = &req.sharing_key {
            let mut partners: Vec<&IpAddr> = self
                .held
                .iter()
                .filter(|(ip, h)| {
                    ip.is_ipv4() == v4
                        && with_family.iter().any(|p| p.contains(**ip))
                        && h.values().all(|x| x.sharing_key.as_ref() == Some(key))
                })
                .map(|(ip, _)| ip)
                .collect();
            partners.sort();
            if let Some(ip) = partners
                .into_iter()
                .find(|ip| self.conflict(**ip, req).is_none())
            {
                return Ok(*ip);
            }
        }
        for p in &with_family {
            for r in p.ranges.iter().filter(|r| r.first.is_ipv4() == v4) {
                // Bounded by what is held: at most held+reserved+1 probes find a free address.
                let limit = (self.held.len() + self.reserved.len() + 1) as u128;
                for i in 0..r.len().min(limit) {
                    let Some(ip) = r.nth(i) else { break };
                    if !self.held.contains_key(&ip) && !self.reserved.contains(&ip) {
                        return Ok(ip);
                    }
                }
            }
        }
        Err(IpamError::PoolExhausted {
            pool: with_family
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            family: family_str(v4),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Balance;
    use crate::services::config::Range;

    fn pool(name: &str, first: &str, last: &str) -> AddressPool {
        AddressPool {
            name: name.into(),
            ranges: vec![Range {
                first: first.parse().unwrap(),
                last: last.parse().unwrap(),
            }],
            auto_assign: true,
            namespaces: vec![],
            service_labels: BTreeMap::new(),
            router_v4: None,
            router_v6: None,
            proxy_protocol: false,
            nat: false,
            balance: Balance::RoundRobin,
        }
    }

    fn req(key: &str) -> Request {
        Request {
            key: key.into(),
            namespace: "default".into(),
            families: vec![true],
            ports: vec![(Protocol::Tcp, 80)],
            ..Default::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ipam() -> Ipam {
        Ipam::new(
            vec![
                pool("a", "198.18.100.1", "198.18.100.3"),
                pool("v6", "2001:db8::1", "2001:db8::2"),
            ],
            HashSet::new(),
        )
    }

    #[test]
    fn first_free_address_and_no_reuse_after_another_leaves() {
        let mut m = ipam();
        let a = m.assign(&req("ns/a")).unwrap();
        m.record("ns/a", &a, None, &[(Protocol::Tcp, 80)]);
        let b = m.assign(&req("ns/b")).unwrap();
        m.record("ns/b", &b, None, &[(Protocol::Tcp, 80)]);
        assert_eq!((a[0], b[0]), (ip("198.18.100.1"), ip("198.18.100.2")));
        m.release("ns/a");
        // b keeps its address although a lower one is free now.
        let mut rb = req("ns/b");
        rb.current = b.clone();
        assert_eq!(m.assign(&rb).unwrap(), b);
        // A new Service gets the freed one.
        assert_eq!(m.assign(&req("ns/c")).unwrap(), vec![ip("198.18.100.1")]);
    }

    #[test]
    fn exhausted_pool_is_reported() {
        let mut m = ipam();
        for n in 0..3 {
            let k = format!("ns/s{n}");
            let a = m.assign(&req(&k)).unwrap();
            m.record(&k, &a, None, &[]);
        }
        let e = m.assign(&req("ns/x")).unwrap_err();
        assert_eq!(e.reason(), "PoolExhausted");
    }

    #[test]
    fn requested_addresses_are_checked() {
        let mut m = ipam();
        let mut r = req("ns/a");
        r.requested = vec![ip("198.18.200.1")];
        assert_eq!(m.assign(&r).unwrap_err().reason(), "AddressOutsidePools");
        r.requested = vec![ip("198.18.100.2")];
        assert_eq!(m.assign(&r).unwrap(), vec![ip("198.18.100.2")]);
        m.record("ns/a", &r.requested, None, &r.ports);
        let mut r2 = req("ns/b");
        r2.requested = vec![ip("198.18.100.2")];
        assert_eq!(m.assign(&r2).unwrap_err().reason(), "AddressTaken");
    }

    #[test]
    fn sharing_needs_the_same_key_and_distinct_ports_and_protocol_counts() {
        let mut m = ipam();
        let mut dns_tcp = req("ns/dns-tcp");
        dns_tcp.sharing_key = Some("dns".into());
        dns_tcp.ports = vec![(Protocol::Tcp, 53)];
        let a = m.assign(&dns_tcp).unwrap();
        m.record("ns/dns-tcp", &a, Some("dns"), &dns_tcp.ports);
        let mut dns_udp = req("ns/dns-udp");
        dns_udp.sharing_key = Some("dns".into());
        dns_udp.ports = vec![(Protocol::Udp, 53)];
        // TCP/53 and UDP/53 share one address.
        assert_eq!(m.assign(&dns_udp).unwrap(), a);
        m.record("ns/dns-udp", &a, Some("dns"), &dns_udp.ports);
        // A real collision asks for the same address and is refused.
        let mut clash = req("ns/clash");
        clash.sharing_key = Some("dns".into());
        clash.ports = vec![(Protocol::Udp, 53)];
        clash.requested = a.clone();
        assert_eq!(m.assign(&clash).unwrap_err().reason(), "PortConflict");
        // Without the key the address is taken.
        let mut other = req("ns/o");
        other.requested = a.clone();
        assert_eq!(m.assign(&other).unwrap_err().reason(), "AddressTaken");
    }

    #[test]
    fn dual_stack_and_namespace_restrictions() {
        let mut m = ipam();
        let mut r = req("ns/d");
        r.families = vec![true, false];
        r.require_all_families = true;
        assert_eq!(
            m.assign(&r).unwrap(),
            vec![ip("198.18.100.1"), ip("2001:db8::1")]
        );
        let mut pools = m.pools().to_vec();
        pools[0].namespaces = vec!["prod".into()];
        m.set_pools(pools, HashSet::new());
        let e = m.assign(&req("dev/x")).unwrap_err();
        assert!(e.to_string().contains("namespace"), "{e}");
    }

    #[test]
    fn a_shrunk_pool_keeps_the_address_and_reports_it() {
        let mut m = ipam();
        m.record("ns/a", &[ip("198.18.100.3")], None, &[]);
        m.set_pools(
            vec![pool("a", "198.18.100.1", "198.18.100.2")],
            HashSet::new(),
        );
        let mut r = req("ns/a");
        r.current = vec![ip("198.18.100.3")];
        assert_eq!(m.assign(&r).unwrap(), vec![ip("198.18.100.3")]);
        assert_eq!(
            m.orphans(),
            vec![(ip("198.18.100.3"), vec!["ns/a".to_string()])]
        );
    }

    #[test]
    fn reserved_file_addresses_are_never_handed_out() {
        let m = Ipam::new(
            vec![pool("a", "198.18.100.1", "198.18.100.2")],
            [ip("198.18.100.1")].into_iter().collect(),
        );
        assert_eq!(m.assign(&req("ns/a")).unwrap(), vec![ip("198.18.100.2")]);
    }
}
