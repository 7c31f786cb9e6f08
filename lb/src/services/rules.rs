//! Service rules: what one Service of type LoadBalancer asks of the data plane, and how the rules of
//! all Services plus the cluster's nodes become frontends, pools and VRRP addresses next to the
//! config file's own. Pure: the controller builds [`SvcRule`]s, the server renders and applies.
//!
//! Node set as upstream's service controller has it (k8s.io/cloud-provider
//! controllers/service/controller.go): not being deleted, not labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers`, not tainted
//! `ToBeDeletedByClusterAutoscaler`; NotReady nodes stay and our own health checks decide.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::{ClusterHealth, SvcHealth};
use crate::config::{
    AdminState, Backend, Balance, CheckKind, Config, Frontend, HealthCheck, Pool, Protocol,
    Timeouts,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvcPort {
    pub name: String,
    pub protocol: Proto,
    pub port: u16,
    /// 0 when the Service has none (`allocateLoadBalancerNodePorts: false` without one set).
    pub node_port: u16,
}

/// Serializable mirror of [`Protocol`] for the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Proto {
    TCP,
    UDP,
}

impl From<Proto> for Protocol {
    fn from(p: Proto) -> Protocol {
        match p {
            Proto::TCP => Protocol::Tcp,
            Proto::UDP => Protocol::Udp,
        }
    }
}

/// `externalTrafficPolicy: Local`: only nodes with ready local endpoints, checked on the Service's
/// `healthCheckNodePort` as cloud load balancers do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Local {
    pub health_check_node_port: u16,
    pub nodes: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvcRule {
    /// `namespace/name`.
    pub key: String,
    /// Each address with the VRRP router that carries it (None: no VRRP, bound as is).
    pub ips: Vec<(IpAddr, Option<String>)>,
    pub ports: Vec<SvcPort>,
    pub local: Option<Local>,
    pub proxy_protocol: bool,
    pub balance: BalanceName,
    /// The kernel forwards (the address pool's `mode: nat`); absent in state files written before.
    #[serde(default)]
    pub nat: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BalanceName {
    RoundRobin,
    LeastConn,
    Maglev,
}

impl From<Balance> for BalanceName {
    fn from(b: Balance) -> Self {
        match b {
            Balance::RoundRobin => BalanceName::RoundRobin,
            Balance::LeastConn => BalanceName::LeastConn,
            Balance::Maglev => BalanceName::Maglev,
        }
    }
}

impl From<BalanceName> for Balance {
    fn from(b: BalanceName) -> Self {
        match b {
            BalanceName::RoundRobin => Balance::RoundRobin,
            BalanceName::LeastConn => Balance::LeastConn,
            BalanceName::Maglev => Balance::Maglev,
        }
    }
}

/// A node that may receive traffic, with its InternalIP per family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
}

/// Everything the data plane needs from the cluster: persisted as is to the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRules {
    /// Shared, so a snapshot costs pointers and an unchanged rule compares by address.
    pub services: BTreeMap<String, Arc<SvcRule>>,
    pub nodes: BTreeMap<String, NodeAddrs>,
}

/// A Service's rules that could not be applied, and why.
pub type Problems = BTreeMap<String, Vec<String>>;

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// The pool name of one Service port: the Service's name is in every metric and log line.
pub fn pool_name(key: &str, port: &SvcPort) -> String {
    format!("{key}:{}/{}", port.port, proto_name(port.protocol.into()))
}

pub fn frontend_name(key: &str, port: &SvcPort, ip: IpAddr) -> String {
    format!("{}@{ip}", pool_name(key, port))
}

/// Whether a frontend or pool of the rendered config came from a Service (file names never have '/').
pub fn is_service_name(name: &str) -> bool {
    name.contains('/')
}

/// Listen addresses the file uses, which Services may not take.
pub fn file_listeners(file: &Config) -> HashSet<(Protocol, SocketAddr)> {
    file.frontends
        .iter()
        .map(|f| (f.protocol, f.listen))
        .collect()
}

fn health_for(rule: &SvcRule, port: &SvcPort, h: &SvcHealth) -> HealthCheck {
    let base = HealthCheck {
        interval: h.interval,
        timeout: h.timeout,
        rise: h.rise,
        fall: h.fall,
        ..HealthCheck::default()
    };
    if let Some(l) = &rule.local {
        // kube-proxy answers 200 on healthCheckNodePort while the node has local endpoints, 503 otherwise.
        return HealthCheck {
            kind: CheckKind::Http,
            port: Some(l.health_check_node_port),
            path: "/".into(),
            expect_status: 200,
            ..base
        };
    }
    match (h.cluster, port.protocol) {
        (ClusterHealth::NodePort, Proto::TCP) => HealthCheck {
            kind: CheckKind::Tcp,
            port: None,
            ..base
        },
        // A UDP nodePort cannot be probed by a connect: kube-proxy's healthz speaks for the node.
        _ => HealthCheck {
            kind: CheckKind::Http,
            port: Some(h.kube_proxy_port),
            path: "/healthz".into(),
            expect_status: 200,
            ..base
        },
    }
}

/// One Service's share of the running config: what it adds next to the config file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SvcParts {
    pub frontends: Vec<Frontend>,
    pub pools: Vec<Pool>,
    /// Each VIP with the VRRP router that carries it.
    pub vips: Vec<(IpAddr, String)>,
    /// Why some of the Service is not served (the file wins a clash, no nodePort, no such router).
    pub problems: Vec<String>,
}

/// What Services may not take and which VRRP routers exist: read from the file once per apply.
pub struct FileLimits {
    pub listeners: HashSet<(Protocol, SocketAddr)>,
    pub routers: HashSet<String>,
    pub health: SvcHealth,
    pub timeouts: Timeouts,
}

impl FileLimits {
    pub fn of(file: &Config, default_health: SvcHealth) -> FileLimits {
        FileLimits {
            listeners: file_listeners(file),
            routers: file
                .vrrp
                .iter()
                .flat_map(|v| v.routers.iter().map(|r| r.name.clone()))
                .chain(
                    file.bgp
                        .is_some()
                        .then(|| super::config::BGP_ROUTER.to_string()),
                )
                .collect(),
            health: file
                .services
                .as_ref()
                .map(|s| s.health.clone())
                .unwrap_or(default_health),
            timeouts: file.timeouts,
        }
    }
}

/// What in a rule cannot be served whatever the nodes: a port without nodePort, a VIP:port the config
/// file already listens on (the file wins). The controller reports these as Events, the server logs
/// them and leaves those parts out.
pub fn rule_problems(rule: &SvcRule, file: &HashSet<(Protocol, SocketAddr)>) -> Vec<String> {
    let mut out = Vec::new();
    for port in &rule.ports {
        let proto: Protocol = port.protocol.into();
        if port.node_port == 0 {
            out.push(format!(
                "port {}/{} has no nodePort (allocateLoadBalancerNodePorts is false); it is not served",
                port.port,
                proto_name(proto)
            ));
            continue;
        }
        for (ip, _) in &rule.ips {
            let listen = SocketAddr::new(*ip, port.port);
            if file.contains(&(proto, listen)) {
                out.push(format!(
                    "{}/{listen} is a frontend of keel-lb's config file; the file wins",
                    proto_name(proto)
                ));
            }
        }
    }
    out
}

/// Renders one Service: a frontend per port and VIP, a pool per port over the eligible nodes'
/// InternalIP:nodePort. Costs what this Service has (ports x VIPs x nodes), never the others.
pub fn render_service(
    key: &str,
    rule: &SvcRule,
    nodes: &BTreeMap<String, NodeAddrs>,
    limits: &FileLimits,
) -> SvcParts {
    let mut out = SvcParts {
        problems: rule_problems(rule, &limits.listeners),
        ..SvcParts::default()
    };
    for port in &rule.ports {
        let proto: Protocol = port.protocol.into();
        if port.node_port == 0 {
            continue;
        }
        let v4_front = rule.ips.first().is_some_and(|(ip, _)| ip.is_ipv4());
        let fronts: Vec<Frontend> = rule
            .ips
            .iter()
            .map(|(ip, _)| SocketAddr::new(*ip, port.port))
            .filter(|listen| !limits.listeners.contains(&(proto, *listen)))
            .filter(|listen| {
                // NAT cannot translate between families: the pool is of the first address's.
                let ok = !rule.nat || listen.is_ipv4() == v4_front;
                if !ok {
                    out.problems.push(format!(
                        "{}: mode: nat serves one address family per Service (the first address's); not served",
                        listen.ip()
                    ));
                }
                ok
            })
            .map(|listen| Frontend {
                name: frontend_name(key, port, listen.ip()),
                listen,
                protocol: proto,
                pool: pool_name(key, port),
                max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
                proxy_protocol: rule.proxy_protocol && proto == Protocol::Tcp && !rule.nat,
                splice: crate::config::Splice::User,
                mode: if rule.nat {
                    crate::config::Mode::Nat
                } else {
                    crate::config::Mode::Proxy
                },
                timeouts: limits.timeouts,
                udp: crate::config::Udp::default(),
            })
            .collect();
        if fronts.is_empty() {
            continue;
        }
        let mut backends = Vec::new();
        for (node, addrs) in nodes {
            if let Some(l) = &rule.local {
                if !l.nodes.contains(node) {
                    continue;
                }
            }
            // Same family first; a full proxy may cross families when a node has only the other,
            // NAT may not.
            let ip = match (v4_front, rule.nat) {
                (true, false) => addrs.v4.or(addrs.v6),
                (false, false) => addrs.v6.or(addrs.v4),
                (true, true) => addrs.v4,
                (false, true) => addrs.v6,
            };
            if let Some(ip) = ip {
                backends.push(Backend {
                    addr: SocketAddr::new(ip, port.node_port),
                    weight: 1,
                    state: AdminState::Active,
                });
            }
        }
        let name = pool_name(key, port);
        out.pools.push(Pool {
            name,
            balance: rule.balance.into(),
            health: health_for(rule, port, &limits.health),
            backends,
            shutdown_sessions_on_down: None,
        });
        out.frontends.extend(fronts);
    }
    for (ip, router) in &rule.ips {
        let Some(r) = router else { continue };
        if limits.routers.contains(r) {
            out.vips.push((*ip, r.clone()));
        } else {
            out.problems
                .push(format!("{ip}: VRRP router {r:?} is not in the config file"));
        }
    }
    out
}

/// How many Services hold each VIP, per VRRP router (two Services may share one IP).
pub type RouterVips = BTreeMap<String, BTreeMap<IpAddr, u32>>;

pub fn count_vips(vips: &mut RouterVips, parts: &SvcParts, add: bool) {
    for (ip, r) in &parts.vips {
        let per = vips.entry(r.clone()).or_default();
        if add {
            *per.entry(*ip).or_default() += 1;
        } else if let Some(n) = per.get_mut(ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(ip);
            }
        }
    }
}

/// The file's VRRP config with the Services' VIPs as each router's `excluded_vips` (carried with
/// mastership, never in adverts, so peers need not agree on them).
pub fn vrrp_with(
    file: Option<&keel_vrrp::VrrpConfig>,
    vips: &RouterVips,
) -> Option<keel_vrrp::VrrpConfig> {
    let mut v = file?.clone();
    for r in &mut v.routers {
        r.excluded_vips = vips
            .get(&r.name)
            .into_iter()
            .flat_map(|m| m.keys())
            .filter(|ip| !r.vips.iter().any(|v| v.addr == **ip))
            .map(|ip| keel_vrrp::config::Vip {
                addr: *ip,
                prefix: if ip.is_ipv4() { 32 } else { 128 },
            })
            .collect();
    }
    Some(v)
}

/// The file's `bgp:` section with the Services' VIPs of pools announced by BGP added, each
/// tracking the pools of every Service that holds it: announced while this VM can serve them.
pub fn bgp_with<'a>(
    file: Option<&crate::bgp::config::BgpConfig>,
    parts: impl IntoIterator<Item = &'a SvcParts>,
) -> Option<crate::bgp::config::BgpConfig> {
    let mut b = file?.clone();
    let mut svc: BTreeMap<IpAddr, std::collections::BTreeSet<String>> = BTreeMap::new();
    for p in parts {
        for (ip, r) in &p.vips {
            if r != super::config::BGP_ROUTER || b.vips.iter().any(|v| v.addr == *ip) {
                continue;
            }
            let track = svc.entry(*ip).or_default();
            track.extend(p.pools.iter().map(|pool| pool.name.clone()));
        }
    }
    b.vips.extend(
        svc.into_iter()
            .map(|(addr, track_pools)| crate::bgp::config::BgpVip {
                addr,
                track_pools: track_pools.into_iter().collect(),
            }),
    );
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bgp_vips_of_services_track_their_pools_and_vrrp_ones_stay_out() {
        let file = crate::bgp::config::BgpConfig {
            interface: "keel-vips".into(),
            vips: vec![crate::bgp::config::BgpVip {
                addr: "198.18.100.10".parse().unwrap(),
                track_pools: vec!["api".into()],
            }],
            withdraw_wait: Duration::ZERO,
            vtysh: "vtysh".into(),
            vty_socket: None,
            status_interval: Duration::from_secs(5),
            handoff: None,
        };
        let pool = |n: &str| Pool {
            name: n.into(),
            balance: crate::config::Balance::RoundRobin,
            health: crate::config::HealthCheck::default(),
            backends: vec![],
            shutdown_sessions_on_down: None,
        };
        let mut parts = BTreeMap::new();
        parts.insert(
            "ns/web".to_string(),
            SvcParts {
                pools: vec![pool("svc-web-80"), pool("svc-web-443")],
                vips: vec![
                    ("198.18.10.1".parse().unwrap(), "bgp".into()),
                    ("198.18.20.1".parse().unwrap(), "r1".into()),
                ],
                ..SvcParts::default()
            },
        );
        parts.insert(
            "ns/dns".to_string(),
            SvcParts {
                pools: vec![pool("svc-dns-53")],
                vips: vec![("198.18.10.1".parse().unwrap(), "bgp".into())],
                ..SvcParts::default()
            },
        );
        let b = bgp_with(Some(&file), parts.values()).unwrap();
        assert_eq!(b.vips.len(), 2);
        assert_eq!(b.vips[1].addr, "198.18.10.1".parse::<IpAddr>().unwrap());
        // Two Services share the address: it needs both.
        assert_eq!(
            b.vips[1].track_pools,
            ["svc-dns-53", "svc-web-443", "svc-web-80"]
        );
        assert!(bgp_with(None, parts.values()).is_none());
    }

    fn limits(listeners: &[(Protocol, &str)], routers: &[&str]) -> FileLimits {
        FileLimits {
            listeners: listeners
                .iter()
                .map(|(p, a)| (*p, a.parse().unwrap()))
                .collect(),
            routers: routers.iter().map(|r| r.to_string()).collect(),
            health: SvcHealth {
                cluster: ClusterHealth::KubeProxy,
                kube_proxy_port: 10256,
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 2,
            },
            timeouts: Timeouts {
                connect: Duration::from_secs(5),
                idle: Duration::from_secs(60),
                udp_session: Duration::from_secs(60),
                keepalive: Duration::from_secs(60),
                user_timeout: Duration::from_secs(60),
            },
        }
    }

    fn nodes() -> BTreeMap<String, NodeAddrs> {
        [
            ("n1", Some("198.18.0.21"), Some("2001:db8::21")),
            ("n2", Some("198.18.0.22"), None),
            ("n3", None, Some("2001:db8::23")),
        ]
        .into_iter()
        .map(|(n, a, b)| {
            (
                n.to_string(),
                NodeAddrs {
                    v4: a.map(|x| x.parse().unwrap()),
                    v6: b.map(|x| x.parse().unwrap()),
                },
            )
        })
        .collect()
    }

    fn rule(ips: &[&str], ports: &[(Proto, u16, u16)]) -> SvcRule {
        SvcRule {
            key: "ns/web".into(),
            ips: ips
                .iter()
                .map(|i| (i.parse().unwrap(), Some("vi".to_string())))
                .collect(),
            ports: ports
                .iter()
                .map(|(p, port, np)| SvcPort {
                    name: format!("p{port}"),
                    protocol: *p,
                    port: *port,
                    node_port: *np,
                })
                .collect(),
            local: None,
            proxy_protocol: false,
            nat: false,
            balance: BalanceName::RoundRobin,
        }
    }

    #[test]
    fn a_port_per_vip_becomes_a_frontend_over_every_node_same_family_first() {
        let r = rule(
            &["198.18.5.1"],
            &[(Proto::TCP, 53, 30053), (Proto::UDP, 53, 30054)],
        );
        let p = render_service("ns/web", &r, &nodes(), &limits(&[], &["vi"]));
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.frontends.len(), 2);
        assert_eq!(p.pools.len(), 2);
        assert_eq!(p.frontends[0].name, "ns/web:53/TCP@198.18.5.1");
        let addrs: Vec<String> = p.pools[0]
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        // n3 has only IPv6: a full proxy crosses families rather than dropping the node.
        assert_eq!(
            addrs,
            [
                "198.18.0.21:30053",
                "198.18.0.22:30053",
                "[2001:db8::23]:30053"
            ]
        );
        // kube-proxy's healthz speaks for UDP nodePorts.
        assert_eq!(p.pools[1].health.port, Some(10256));
        assert_eq!(
            p.vips,
            vec![("198.18.5.1".parse().unwrap(), "vi".to_string())]
        );
    }

    /// An address pool's `mode: nat`: the kernel forwards, so no family crossing (a node with only
    /// the other family is left out, a second-family address is reported) and no PROXY header.
    #[test]
    fn nat_services_stay_in_one_family() {
        let mut r = rule(&["198.18.5.1", "2001:db8:5::1"], &[(Proto::TCP, 80, 30080)]);
        r.nat = true;
        r.proxy_protocol = true;
        let p = render_service("ns/web", &r, &nodes(), &limits(&[], &["vi"]));
        assert_eq!(p.frontends.len(), 1, "{:?}", p.frontends);
        assert_eq!(p.frontends[0].mode, crate::config::Mode::Nat);
        assert!(!p.frontends[0].proxy_protocol);
        assert!(
            p.problems
                .iter()
                .any(|x| x.contains("2001:db8:5::1") && x.contains("one address family")),
            "{:?}",
            p.problems
        );
        assert!(
            p.pools[0].backends.iter().all(|b| b.addr.is_ipv4()),
            "{:?}",
            p.pools[0].backends
        );
        assert_eq!(p.pools[0].backends.len(), 2, "n3 has only IPv6: left out");
    }

    #[test]
    fn the_file_wins_and_missing_node_ports_and_routers_are_reported() {
        let r = rule(
            &["198.18.5.1"],
            &[(Proto::TCP, 443, 30443), (Proto::TCP, 80, 0)],
        );
        let p = render_service(
            "ns/web",
            &r,
            &nodes(),
            &limits(&[(Protocol::Tcp, "198.18.5.1:443")], &[]),
        );
        assert!(p.frontends.is_empty() && p.pools.is_empty() && p.vips.is_empty());
        let all = p.problems.join("\n");
        assert!(all.contains("the file wins"), "{all}");
        assert!(all.contains("no nodePort"), "{all}");
        assert!(
            all.contains("VRRP router \"vi\" is not in the config file"),
            "{all}"
        );
    }

    #[test]
    fn local_traffic_policy_keeps_only_nodes_with_endpoints_checked_on_the_health_port() {
        let mut r = rule(&["198.18.5.1"], &[(Proto::TCP, 80, 30080)]);
        r.local = Some(Local {
            health_check_node_port: 32000,
            nodes: ["n2".to_string()].into(),
        });
        let p = render_service("ns/web", &r, &nodes(), &limits(&[], &["vi"]));
        assert_eq!(p.pools[0].backends.len(), 1);
        assert_eq!(p.pools[0].backends[0].addr.to_string(), "198.18.0.22:30080");
        assert_eq!(p.pools[0].health.port, Some(32000));
        assert_eq!(p.pools[0].health.kind, CheckKind::Http);
    }

    #[test]
    fn shared_vips_stay_until_their_last_service_goes() {
        let l = limits(&[], &["vi"]);
        let a = render_service(
            "ns/a",
            &rule(&["198.18.5.1"], &[(Proto::TCP, 53, 30053)]),
            &nodes(),
            &l,
        );
        let b = render_service(
            "ns/b",
            &rule(&["198.18.5.1"], &[(Proto::UDP, 53, 30054)]),
            &nodes(),
            &l,
        );
        let mut v = RouterVips::new();
        count_vips(&mut v, &a, true);
        count_vips(&mut v, &b, true);
        count_vips(&mut v, &a, false);
        assert_eq!(v["vi"].len(), 1);
        count_vips(&mut v, &b, false);
        assert!(v["vi"].is_empty());
    }
}
