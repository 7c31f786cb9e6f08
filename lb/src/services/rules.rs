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
    pub services: BTreeMap<String, SvcRule>,
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

/// The file's config with every Service's frontends, pools and VIPs added. Rules that collide with
/// the file (same protocol and VIP:port) are left out and reported: the file wins.
pub fn render(
    file: &Config,
    rules: &ClusterRules,
    health: &SvcHealth,
    timeouts: Timeouts,
) -> (Config, Problems) {
    let mut cfg = file.clone();
    let mut problems: Problems = BTreeMap::new();
    let taken = file_listeners(file);
    let mut extra: BTreeMap<String, BTreeSet<(IpAddr, u8)>> = BTreeMap::new();
    for (key, rule) in &rules.services {
        let mut report = |m: String| problems.entry(key.clone()).or_default().push(m);
        for port in &rule.ports {
            let proto: Protocol = port.protocol.into();
            if port.node_port == 0 {
                report(format!(
                    "port {}/{} has no nodePort (allocateLoadBalancerNodePorts is false); it is not served",
                    port.port,
                    proto_name(proto)
                ));
                continue;
            }
            let mut fronts = Vec::new();
            for (ip, _) in &rule.ips {
                let listen = SocketAddr::new(*ip, port.port);
                if taken.contains(&(proto, listen)) {
                    report(format!(
                        "{}/{listen} is a frontend of keel-lb's config file; the file wins",
                        proto_name(proto)
                    ));
                    continue;
                }
                fronts.push(Frontend {
                    name: frontend_name(key, port, *ip),
                    listen,
                    protocol: proto,
                    pool: pool_name(key, port),
                    max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
                    proxy_protocol: rule.proxy_protocol && proto == Protocol::Tcp,
                    timeouts,
                });
            }
            if fronts.is_empty() {
                continue;
            }
            let v4_front = rule.ips.first().is_some_and(|(ip, _)| ip.is_ipv4());
            let mut backends = Vec::new();
            for (node, addrs) in &rules.nodes {
                if let Some(l) = &rule.local {
                    if !l.nodes.contains(node) {
                        continue;
                    }
                }
                // Same family first; a full proxy may cross families when a node has only the other.
                let ip = if v4_front {
                    addrs.v4.or(addrs.v6)
                } else {
                    addrs.v6.or(addrs.v4)
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
            cfg.pools.insert(
                name.clone(),
                Pool {
                    name,
                    balance: rule.balance.into(),
                    health: health_for(rule, port, health),
                    backends,
                },
            );
            cfg.frontends.extend(fronts);
        }
        for (ip, router) in &rule.ips {
            if let Some(r) = router {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                extra.entry(r.clone()).or_default().insert((*ip, prefix));
            }
        }
    }
    if let Some(v) = cfg.vrrp.as_mut() {
        for r in &mut v.routers {
            if let Some(set) = extra.remove(&r.name) {
                r.excluded_vips = set
                    .into_iter()
                    .filter(|(ip, _)| !r.vips.iter().any(|v| v.addr == *ip))
                    .map(|(addr, prefix)| keel_vrrp::config::Vip { addr, prefix })
                    .collect();
            }
        }
    }
    for (router, ips) in extra {
        for (ip, _) in ips {
            problems
                .entry(format!("vrrp:{router}"))
                .or_default()
                .push(format!(
                    "{ip}: VRRP router {router:?} is not in the config file"
                ));
        }
    }
    (cfg, problems)
}
