//! Services as upstream's registry keeps them: defaulting (pkg/apis/core/v1/defaults.go
//! `SetDefaults_Service`), IP-family initialisation and ClusterIP/NodePort/healthCheckNodePort
//! allocation (pkg/registry/core/service/storage/alloc.go, `patchAllocatedValues` and
//! `NormalizeClusterIPs` of storage.go), the strategy's `dropTypeDependentFields` (strategy.go), and
//! `ValidateService`/`ValidateServiceUpdate`/`ValidateServiceStatusUpdate`
//! (pkg/apis/core/validation/validation.go).
//!
//! Allocation state is not kept apart: the addresses and ports in use are read from the stored
//! Services at each write (under the store lock), so deletes and type changes free them, and a
//! restart finds them as they were.

use crate::field::{self, q, strs, FieldError};
use crate::ipalloc::{self, Cidr, Family};
use crate::portalloc::PortRange;
use crate::resources;
use crate::status::ApiError;
use crate::store::{meta_str, Store};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

pub const DEFAULT_CIDRS: [&str; 2] = ["10.96.0.0/12", "fd00:10:96::/112"];
pub const DEFAULT_NODE_PORTS: &str = "30000-32767";

/// `--service-cluster-ip-range` (one CIDR, or two of different families for dual-stack) and
/// `--service-node-port-range`.
#[derive(Debug, Clone)]
pub struct Config {
    cidrs: Vec<Cidr>,
    node_ports: PortRange,
}

impl Config {
    pub fn new(cidrs: &[String], node_ports: &str) -> Result<Config, String> {
        let parsed: Vec<Cidr> = cidrs
            .iter()
            .map(|c| Cidr::parse(c))
            .collect::<Result<_, _>>()?;
        match parsed.as_slice() {
            [_] => {}
            [a, b] if a.family() != b.family() => {}
            _ => {
                return Err(format!(
                    "service cluster IP ranges must be one CIDR or two of different IP families, got {cidrs:?}"
                ))
            }
        }
        Ok(Config {
            cidrs: parsed,
            node_ports: PortRange::parse(node_ports)?,
        })
    }

    fn cidr(&self, f: Family) -> Option<&Cidr> {
        self.cidrs.iter().find(|c| c.family() == f)
    }

    fn primary(&self) -> Family {
        self.cidrs.first().map(|c| c.family()).unwrap_or(Family::V4)
    }

    fn dual(&self) -> bool {
        self.cidrs.len() == 2
    }
}

impl Default for Config {
    fn default() -> Self {
        let cidrs: Vec<String> = DEFAULT_CIDRS.iter().map(|s| s.to_string()).collect();
        match Config::new(&cidrs, DEFAULT_NODE_PORTS) {
            Ok(c) => c,
            // The defaults are constants that parse; this arm is unreachable.
            Err(_) => Config {
                cidrs: Vec::new(),
                node_ports: PortRange {
                    base: 30000,
                    size: 2768,
                },
            },
        }
    }
}

// ---- JSON accessors ------------------------------------------------------------------------

fn sstr<'a>(svc: &'a Value, f: &str) -> &'a str {
    svc.get("spec")
        .and_then(|s| s.get(f))
        .and_then(|v| v.as_str())
        .unwrap_or("")
}

fn set_or_remove(svc: &mut Value, f: &str, v: Option<Value>) {
    if !svc["spec"].is_object() {
        svc["spec"] = json!({});
    }
    if let Some(m) = svc["spec"].as_object_mut() {
        match v {
            Some(v) => {
                m.insert(f.to_string(), v);
            }
            None => {
                m.remove(f);
            }
        }
    }
}

fn svc_type(svc: &Value) -> &str {
    sstr(svc, "type")
}

fn string_list(svc: &Value, f: &str) -> Vec<String> {
    svc.pointer(&format!("/spec/{f}"))
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn set_string_list(svc: &mut Value, f: &str, v: &[String]) {
    set_or_remove(svc, f, (!v.is_empty()).then(|| json!(v)));
}

fn cluster_ips(svc: &Value) -> Vec<String> {
    string_list(svc, "clusterIPs")
}

fn families(svc: &Value) -> Vec<String> {
    string_list(svc, "ipFamilies")
}

fn policy(svc: &Value) -> Option<&str> {
    svc.pointer("/spec/ipFamilyPolicy").and_then(|v| v.as_str())
}

fn ports(svc: &Value) -> Vec<Value> {
    svc.pointer("/spec/ports")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default()
}

fn int(v: &Value, f: &str) -> i64 {
    v.get(f).and_then(|x| x.as_i64()).unwrap_or(0)
}

fn node_port(p: &Value) -> i64 {
    int(p, "nodePort")
}

fn set_node_port(p: &mut Value, np: i64) {
    if let Some(m) = p.as_object_mut() {
        if np == 0 {
            m.remove("nodePort");
        } else {
            m.insert("nodePort".into(), json!(np));
        }
    }
}

fn hc_node_port(svc: &Value) -> i64 {
    svc.pointer("/spec/healthCheckNodePort")
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

fn has_selector(svc: &Value) -> bool {
    svc.pointer("/spec/selector")
        .and_then(|v| v.as_object())
        .is_some_and(|m| !m.is_empty())
}

fn is_headless(svc: &Value) -> bool {
    let ips = cluster_ips(svc);
    ips.len() == 1 && ips[0] == "None"
}

fn needs_cluster_ip(svc: &Value) -> bool {
    svc_type(svc) != "ExternalName"
}

fn needs_node_port(svc: &Value) -> bool {
    matches!(svc_type(svc), "NodePort" | "LoadBalancer")
}

/// `ExternallyAccessible`: NodePort, LoadBalancer, or ClusterIP with externalIPs.
fn externally_accessible(svc: &Value) -> bool {
    needs_node_port(svc)
        || (svc_type(svc) == "ClusterIP" && !string_list(svc, "externalIPs").is_empty())
}

/// `apiservice.NeedsHealthCheck`.
fn needs_hc_node_port(svc: &Value) -> bool {
    svc_type(svc) == "LoadBalancer" && sstr(svc, "externalTrafficPolicy") == "Local"
}

fn should_allocate_node_ports(svc: &Value) -> bool {
    match svc_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => svc
            .pointer("/spec/allocateLoadBalancerNodePorts")
            .and_then(|v| v.as_bool())
            .unwrap_or(true),
        _ => false,
    }
}

fn family_of(ip: &str) -> Option<Family> {
    ipalloc::parse_ip(ip).map(|a| Family::of(&a))
}

// ---- defaulting ----------------------------------------------------------------------------

/// `SetDefaults_Service` (run on every decoded Service, so on the result of patches too).
pub fn set_defaults(svc: &mut Value) {
    if !svc["spec"].is_object() {
        svc["spec"] = json!({});
    }
    if sstr(svc, "sessionAffinity").is_empty() {
        svc["spec"]["sessionAffinity"] = json!("None");
    }
    match sstr(svc, "sessionAffinity") {
        "None" => set_or_remove(svc, "sessionAffinityConfig", None),
        "ClientIP"
            if svc
                .pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds")
                .and_then(|v| v.as_i64())
                .is_none() =>
        {
            svc["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
        }
        _ => {}
    }
    if svc_type(svc).is_empty() {
        svc["spec"]["type"] = json!("ClusterIP");
    }
    if let Some(ps) = svc
        .pointer_mut("/spec/ports")
        .and_then(|v| v.as_array_mut())
    {
        for p in ps.iter_mut().filter(|p| p.is_object()) {
            if p.get("protocol")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .is_empty()
            {
                p["protocol"] = json!("TCP");
            }
            let unset = match p.get("targetPort") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_i64() == Some(0),
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            };
            if unset {
                p["targetPort"] = p.get("port").cloned().unwrap_or(json!(0));
            }
        }
    }
    if externally_accessible(svc) && sstr(svc, "externalTrafficPolicy").is_empty() {
        svc["spec"]["externalTrafficPolicy"] = json!("Cluster");
    }
    let itp_unset = svc
        .pointer("/spec/internalTrafficPolicy")
        .is_none_or(|v| v.is_null());
    if itp_unset && matches!(svc_type(svc), "ClusterIP" | "NodePort" | "LoadBalancer") {
        svc["spec"]["internalTrafficPolicy"] = json!("Cluster");
    }
    if svc_type(svc) == "LoadBalancer" {
        if svc
            .pointer("/spec/allocateLoadBalancerNodePorts")
            .is_none_or(|v| v.is_null())
        {
            svc["spec"]["allocateLoadBalancerNodePorts"] = json!(true);
        }
        // LoadBalancerIPMode (GA in 1.32): an ingress IP without ipMode is a VIP.
        if let Some(ing) = svc
            .pointer_mut("/status/loadBalancer/ingress")
            .and_then(|v| v.as_array_mut())
        {
            for i in ing.iter_mut().filter(|i| i.is_object()) {
                let has_ip = i
                    .get("ip")
                    .and_then(|v| v.as_str())
                    .is_some_and(|s| !s.is_empty());
                if has_ip && i.get("ipMode").is_none_or(|v| v.is_null()) {
                    i["ipMode"] = json!("VIP");
                }
            }
        }
    }
}

// ---- storage.go / strategy.go helpers ------------------------------------------------------

/// `svcutil.NormalizeClusterIPs`: keeps `clusterIP` and `clusterIPs` in step for clients that only
/// know one of them.
fn normalize_cluster_ips(old: Option<&Value>, svc: &mut Value) {
    let ip = sstr(svc, "clusterIP").to_string();
    let ips = cluster_ips(svc);
    let Some(old) = old else {
        if !ip.is_empty() && ips.is_empty() {
            set_string_list(svc, "clusterIPs", &[ip]);
        }
        return;
    };
    let old_ip = sstr(old, "clusterIP").to_string();
    let old_ips = cluster_ips(old);
    if !old_ips.is_empty() && ips.is_empty() && old_ip == ip {
        set_string_list(svc, "clusterIPs", &old_ips);
    }
    if old_ip != ip {
        let ips = cluster_ips(svc);
        if !old_ip.is_empty() && ip.is_empty() && ips == old_ips {
            set_string_list(svc, "clusterIPs", &[]);
        }
        if !ip.is_empty() && ips == old_ips {
            set_string_list(svc, "clusterIPs", &[ip]);
        }
    }
}

/// `patchAllocatedValues`: a client that left allocated values out (e.g. `kubectl replace` of a
/// hand-written object) keeps them.
fn patch_allocated_values(old: &Value, svc: &mut Value) {
    if needs_cluster_ip(old) && needs_cluster_ip(svc) {
        if sstr(svc, "clusterIP").is_empty() && !sstr(old, "clusterIP").is_empty() {
            svc["spec"]["clusterIP"] = json!(sstr(old, "clusterIP"));
        }
        if cluster_ips(svc).is_empty() && !cluster_ips(old).is_empty() {
            set_string_list(svc, "clusterIPs", &cluster_ips(old));
        }
    }
    if needs_node_port(old) && needs_node_port(svc) {
        let used_by = |s: &Value| -> HashSet<i64> {
            ports(s).iter().map(node_port).filter(|n| *n != 0).collect()
        };
        let used: HashSet<i64> = used_by(old).intersection(&used_by(svc)).copied().collect();
        let by_name: HashMap<String, i64> = ports(old)
            .iter()
            .map(|p| {
                (
                    p.get("name")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string(),
                    node_port(p),
                )
            })
            .collect();
        if let Some(ps) = svc
            .pointer_mut("/spec/ports")
            .and_then(|v| v.as_array_mut())
        {
            for p in ps.iter_mut() {
                if node_port(p) == 0 {
                    let name = p.get("name").and_then(|v| v.as_str()).unwrap_or("");
                    let old_val = by_name.get(name).copied().unwrap_or(0);
                    if !used.contains(&old_val) {
                        set_node_port(p, old_val);
                    }
                }
            }
        }
    }
    if needs_hc_node_port(old) && needs_hc_node_port(svc) && hc_node_port(svc) == 0 {
        svc["spec"]["healthCheckNodePort"] = json!(hc_node_port(old));
    }
}

/// `dropTypeDependentFields`: on a type change, values the server set and the client did not
/// touch are wiped (and released, since allocation follows the stored objects).
fn drop_type_dependent_fields(old: &Value, svc: &mut Value) {
    if needs_cluster_ip(old) && !needs_cluster_ip(svc) {
        if cluster_ips(old) == cluster_ips(svc) {
            set_or_remove(svc, "clusterIP", None);
            set_or_remove(svc, "clusterIPs", None);
        }
        if families(old) == families(svc) {
            set_or_remove(svc, "ipFamilies", None);
        }
        if policy(old) == policy(svc) {
            set_or_remove(svc, "ipFamilyPolicy", None);
        }
    }
    if needs_node_port(old) && !needs_node_port(svc) {
        let old_set: HashSet<i64> = ports(old).iter().map(node_port).collect();
        let superset = ports(svc)
            .iter()
            .map(node_port)
            .filter(|n| *n != 0)
            .all(|n| old_set.contains(&n));
        if superset {
            if let Some(ps) = svc
                .pointer_mut("/spec/ports")
                .and_then(|v| v.as_array_mut())
            {
                for p in ps.iter_mut() {
                    set_node_port(p, 0);
                }
            }
        }
    }
    if needs_hc_node_port(old) && !needs_hc_node_port(svc) && hc_node_port(old) == hc_node_port(svc)
    {
        set_or_remove(svc, "healthCheckNodePort", None);
    }
    if svc_type(old) == "LoadBalancer" && svc_type(svc) != "LoadBalancer" {
        let a = old.pointer("/spec/allocateLoadBalancerNodePorts");
        let b = svc.pointer("/spec/allocateLoadBalancerNodePorts");
        if a.is_some() && a == b {
            set_or_remove(svc, "allocateLoadBalancerNodePorts", None);
        }
        if old.pointer("/spec/loadBalancerClass") == svc.pointer("/spec/loadBalancerClass") {
            set_or_remove(svc, "loadBalancerClass", None);
        }
    }
    if externally_accessible(old)
        && !externally_accessible(svc)
        && sstr(old, "externalTrafficPolicy") == sstr(svc, "externalTrafficPolicy")
    {
        set_or_remove(svc, "externalTrafficPolicy", None);
    }
    if svc_type(svc) != "LoadBalancer" {
        svc["status"]["loadBalancer"] = json!({});
    }
}

// ---- allocation (alloc.go) -----------------------------------------------------------------

/// Addresses and ports held by the stored Services (the allocators' bitmaps).
fn in_use(store: &Store) -> (HashSet<IpAddr>, HashSet<i64>) {
    let mut ips = HashSet::new();
    let mut nps = HashSet::new();
    let Some(def) = resources::find("", "v1", "services") else {
        return (ips, nps);
    };
    for s in store.list(def, None) {
        let mut list = cluster_ips(s);
        if list.is_empty() && !sstr(s, "clusterIP").is_empty() {
            list.push(sstr(s, "clusterIP").to_string());
        }
        ips.extend(list.iter().filter_map(|i| ipalloc::parse_ip(i)));
        nps.extend(ports(s).iter().map(node_port).filter(|n| *n != 0));
        if hc_node_port(s) != 0 {
            nps.insert(hc_node_port(s));
        }
    }
    (ips, nps)
}

fn invalid(name: &str, errs: Vec<FieldError>) -> ApiError {
    field::to_api_error("Service", "", name, &errs)
}

fn other_family(f: &str) -> &'static str {
    if f == "IPv4" {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// `isMatchingPreferDualStackClusterIPFields`: a PreferDualStack service is not upgraded or
/// downgraded behind the user's back.
fn matching_prefer_dual_stack(old: Option<&Value>, svc: &Value) -> bool {
    let Some(old) = old else { return false };
    if policy(svc).is_none() || svc_type(old) != svc_type(svc) || !needs_cluster_ip(svc) {
        return false;
    }
    if policy(svc) != Some("PreferDualStack") {
        return false;
    }
    if policy(old).is_some_and(|p| p != "PreferDualStack") {
        return false;
    }
    cluster_ips(old) == cluster_ips(svc) && families(old) == families(svc)
}

/// `initIPFamilyFields`.
fn init_ip_family_fields(
    cfg: &Config,
    old: Option<&Value>,
    svc: &mut Value,
) -> Result<(), ApiError> {
    let name = meta_str(svc, "name").to_string();
    if svc_type(svc) == "ExternalName" || matching_prefer_dual_stack(old, svc) {
        return Ok(());
    }
    if policy(svc).is_none() {
        let p = match old.and_then(policy) {
            Some(p) => p.to_string(),
            None if sstr(svc, "clusterIP") == "None" && !has_selector(svc) => {
                "RequireDualStack".to_string()
            }
            None => "SingleStack".to_string(),
        };
        svc["spec"]["ipFamilyPolicy"] = json!(p);
    }
    let errs = validate_cluster_ips_related(svc);
    if !errs.is_empty() {
        return Err(invalid(&name, errs));
    }
    let pol = policy(svc).unwrap_or("").to_string();
    let mut el = Vec::new();
    if let Some(old) = old {
        if pol == "SingleStack" {
            let (ips, fams) = (cluster_ips(svc), families(svc));
            if cluster_ips(old) == ips && ips.len() > 1 {
                set_string_list(svc, "clusterIPs", &ips[..1]);
            }
            if families(old) == fams && fams.len() > 1 {
                set_string_list(svc, "ipFamilies", &fams[..1]);
            }
        } else {
            let reduced =
                |new: Vec<String>, old: Vec<String>| !new.is_empty() && new.len() < old.len();
            if reduced(cluster_ips(svc), cluster_ips(old)) {
                el.push(field::invalid(
                    "spec.ipFamilyPolicy",
                    q(&pol),
                    "must be 'SingleStack' to release the secondary cluster IP",
                ));
            }
            if reduced(families(svc), families(old)) {
                el.push(field::invalid(
                    "spec.ipFamilyPolicy",
                    q(&pol),
                    "must be 'SingleStack' to release the secondary IP family",
                ));
            }
        }
    }
    if pol == "SingleStack" {
        if cluster_ips(svc).len() == 2 {
            el.push(field::invalid(
                "spec.ipFamilyPolicy",
                q(&pol),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if families(svc).len() == 2 {
            el.push(field::invalid(
                "spec.ipFamilyPolicy",
                q(&pol),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    let ips = cluster_ips(svc);
    let mut fams = families(svc);
    for (i, ip) in ips.iter().enumerate() {
        if ip == "None" {
            break;
        }
        let Some(fam) = family_of(ip) else { continue };
        if i >= fams.len() {
            if cfg.cidr(fam).is_none() {
                el.push(field::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    strs(&ips),
                    &format!("{} is not configured on this cluster", fam.as_str()),
                ));
            } else {
                fams.push(fam.as_str().to_string());
            }
        }
    }
    set_string_list(svc, "ipFamilies", &fams);
    if !el.is_empty() {
        return Err(invalid(&name, el));
    }
    if sstr(svc, "clusterIP") == "None" && !has_selector(svc) {
        if fams.is_empty() {
            fams.push(cfg.primary().as_str().to_string());
        }
        if fams.len() < 2 && pol != "SingleStack" {
            let o = other_family(&fams[0]).to_string();
            fams.push(o);
        }
        set_string_list(svc, "ipFamilies", &fams);
        return Ok(());
    }
    if pol == "RequireDualStack" && !cfg.dual() {
        el.push(field::invalid(
            "spec.ipFamilyPolicy",
            q(&pol),
            "this cluster is not configured for dual-stack services",
        ));
    }
    for (i, f) in fams.iter().enumerate() {
        if Family::parse(f).and_then(|f| cfg.cidr(f)).is_none() {
            el.push(field::invalid(
                format!("spec.ipFamilies[{i}]"),
                q(f),
                "not configured on this cluster",
            ));
        }
    }
    if !el.is_empty() {
        return Err(invalid(&name, el));
    }
    if fams.is_empty() {
        fams.push(cfg.primary().as_str().to_string());
    }
    if pol != "SingleStack" && fams.len() == 1 && cfg.dual() {
        let o = other_family(&fams[0]).to_string();
        fams.push(o);
    }
    set_string_list(svc, "ipFamilies", &fams);
    Ok(())
}

/// `allocIPs` for the families from `from` on: requested addresses are checked, empty ones
/// allocated.
fn alloc_ips(
    cfg: &Config,
    used: &mut HashSet<IpAddr>,
    svc: &mut Value,
    from: usize,
) -> Result<(), ApiError> {
    let name = meta_str(svc, "name").to_string();
    let fams = families(svc);
    let mut ips = cluster_ips(svc);
    while ips.len() < fams.len() {
        ips.push(String::new());
    }
    for i in from..fams.len() {
        let cidr = Family::parse(&fams[i])
            .and_then(|f| cfg.cidr(f))
            .ok_or_else(|| ApiError::internal(format!("no service CIDR for {}", fams[i])))?;
        if ips[i].is_empty() {
            let ip = cidr
                .allocate_next(used)
                .map_err(|e| ApiError::internal(format!("failed to allocate a serviceIP: {e}")))?;
            used.insert(ip);
            ips[i] = ip.to_string();
        } else {
            let requested = ips[i].clone();
            let r = match ipalloc::parse_ip(&requested) {
                Some(ip) => cidr.allocate(&ip, used).map(|_| ip),
                None => Err(ipalloc::AllocError::NotInRange(cidr.to_string())),
            };
            match r {
                Ok(ip) => {
                    used.insert(ip);
                }
                Err(e) => {
                    return Err(invalid(
                        &name,
                        vec![field::invalid(
                            "spec.clusterIPs",
                            strs(&ips),
                            &format!("failed to allocate IP {requested}: {e}"),
                        )],
                    ))
                }
            }
        }
    }
    set_string_list(svc, "clusterIPs", &ips);
    if let Some(first) = ips.first() {
        svc["spec"]["clusterIP"] = json!(first);
    }
    Ok(())
}

/// `allocClusterIPs` (create, or ExternalName to another type).
fn alloc_cluster_ips(
    cfg: &Config,
    used: &mut HashSet<IpAddr>,
    svc: &mut Value,
) -> Result<(), ApiError> {
    if svc_type(svc) == "ExternalName" || cluster_ips(svc).first().is_some_and(|i| i == "None") {
        return Ok(());
    }
    alloc_ips(cfg, used, svc, 0)
}

/// `updateClusterIPs`: type changes from ExternalName allocate, upgrades to dual-stack allocate the
/// secondary; releases follow from the stored object.
fn update_cluster_ips(
    cfg: &Config,
    used: &mut HashSet<IpAddr>,
    old: &Value,
    svc: &mut Value,
) -> Result<(), ApiError> {
    if matching_prefer_dual_stack(Some(old), svc) {
        return Ok(());
    }
    if svc_type(old) == "ExternalName" && svc_type(svc) != "ExternalName" {
        return alloc_cluster_ips(cfg, used, svc);
    }
    if is_headless(old) || svc_type(svc) == "ExternalName" {
        return Ok(());
    }
    if families(old).len() == 1 && families(svc).len() == 2 {
        return alloc_ips(cfg, used, svc, 1);
    }
    Ok(())
}

fn port_err(name: &str, i: usize, np: i64, e: impl std::fmt::Display) -> ApiError {
    invalid(
        name,
        vec![field::invalid(
            format!("spec.ports[{i}].nodePort"),
            np.to_string(),
            &e.to_string(),
        )],
    )
}

/// `initNodePorts` (create): ports of one Service with the same port number share a NodePort
/// (so 53/TCP and 53/UDP get one), requested ones are reserved, others allocated.
fn init_node_ports(cfg: &Config, used: &mut HashSet<i64>, svc: &mut Value) -> Result<(), ApiError> {
    if !needs_node_port(svc) {
        return Ok(());
    }
    let name = meta_str(svc, "name").to_string();
    let alloc = should_allocate_node_ports(svc);
    let mut ps = ports(svc);
    let mut by_port: HashMap<i64, i64> = HashMap::new();
    for i in 0..ps.len() {
        let np = node_port(&ps[i]);
        let port = int(&ps[i], "port");
        if np == 0 && !alloc {
            continue;
        }
        let allocated = by_port.get(&port).copied().unwrap_or(0);
        if allocated == 0 {
            let requested = ps
                .iter()
                .find(|p| int(p, "port") == port && node_port(p) != 0)
                .map(node_port)
                .unwrap_or(0);
            let chosen = if requested != 0 {
                cfg.node_ports
                    .allocate(requested, used)
                    .map_err(|e| port_err(&name, i, requested, e))?;
                requested
            } else {
                cfg.node_ports.allocate_next(used).map_err(|e| {
                    ApiError::internal(format!("failed to allocate a nodePort: {e}"))
                })?
            };
            used.insert(chosen);
            set_node_port(&mut ps[i], chosen);
            by_port.insert(port, chosen);
        } else if np != allocated {
            if np == 0 {
                set_node_port(&mut ps[i], allocated);
            } else {
                cfg.node_ports
                    .allocate(np, used)
                    .map_err(|e| port_err(&name, i, np, e))?;
                used.insert(np);
            }
        }
    }
    if !ps.is_empty() {
        svc["spec"]["ports"] = json!(ps);
    }
    Ok(())
}

/// `updateNodePorts`: new NodePorts are reserved or allocated; ports the old object held stay.
fn update_node_ports(
    cfg: &Config,
    used: &mut HashSet<i64>,
    old: &Value,
    svc: &mut Value,
) -> Result<(), ApiError> {
    let name = meta_str(svc, "name").to_string();
    let old_nps: HashSet<i64> = ports(old)
        .iter()
        .map(node_port)
        .filter(|n| *n != 0)
        .collect();
    let alloc = should_allocate_node_ports(svc);
    let mut ps = ports(svc);
    let mut reserved: HashSet<i64> = HashSet::new();
    let mut seen: Vec<(String, i64)> = Vec::new();
    for (i, p) in ps.iter_mut().enumerate() {
        let mut np = node_port(p);
        if np == 0 && !alloc {
            continue;
        }
        if np != 0 {
            if !old_nps.contains(&np) && !reserved.contains(&np) {
                cfg.node_ports
                    .allocate(np, used)
                    .map_err(|e| port_err(&name, i, np, e))?;
                used.insert(np);
                reserved.insert(np);
            }
        } else {
            np = cfg
                .node_ports
                .allocate_next(used)
                .map_err(|e| ApiError::internal(format!("failed to allocate a nodePort: {e}")))?;
            used.insert(np);
            set_node_port(p, np);
        }
        let proto = p
            .get("protocol")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        if seen.contains(&(proto.clone(), np)) {
            // A plain error in alloc.go, which the endpoint answers as an unknown 500.
            return Err(ApiError::new(
                500,
                "",
                format!("duplicate nodePort: {{{proto} {np}}}"),
            ));
        }
        seen.push((proto, np));
    }
    if !ps.is_empty() {
        svc["spec"]["ports"] = json!(ps);
    }
    Ok(())
}

/// `allocHealthCheckNodePort`.
fn alloc_hc_node_port(
    cfg: &Config,
    used: &mut HashSet<i64>,
    svc: &mut Value,
) -> Result<(), ApiError> {
    let hc = hc_node_port(svc);
    if hc != 0 {
        cfg.node_ports.allocate(hc, used).map_err(|e| {
            ApiError::internal(format!(
                "failed to allocate requested HealthCheck NodePort {hc}: {e}"
            ))
        })?;
        used.insert(hc);
    } else {
        let np = cfg.node_ports.allocate_next(used).map_err(|e| {
            ApiError::internal(format!("failed to allocate a HealthCheck NodePort 0: {e}"))
        })?;
        used.insert(np);
        svc["spec"]["healthCheckNodePort"] = json!(np);
    }
    Ok(())
}

// ---- validation (pkg/apis/core/validation) -------------------------------------------------

const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";
const LB_ONLY: &str = "may only be used when `type` is 'LoadBalancer'";

fn is_label_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

fn dns1123_label_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| is_label_char(*c))
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn dns1123_subdomain_ok(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns1123_label_ok)
}

fn dns1035_errs(s: &str, path: &str) -> Vec<FieldError> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(field::invalid(
            path,
            q(s),
            "must be no more than 63 characters",
        ));
    }
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| is_label_char(*c))
        && b[b.len() - 1] != b'-';
    if !ok {
        out.push(field::invalid(path, q(s), DNS1035_MSG));
    }
    out
}

/// `IsValidPortName`.
fn port_name_errs(s: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if s.len() > 15 {
        out.push("must be no more than 15 characters");
    }
    if !s.bytes().all(is_label_char) {
        out.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        out.push("must contain at least one letter (a-z)");
    }
    if s.contains("--") {
        out.push("must not contain consecutive hyphens");
    }
    if s.starts_with('-') || s.ends_with('-') {
        out.push("must not begin or end with a hyphen");
    }
    out
}

/// `ValidateQualifiedName` (loadBalancerClass, appProtocol).
fn qualified_name_errs(s: &str, path: &str) -> Vec<FieldError> {
    const NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    let parts: Vec<&str> = s.split('/').collect();
    let (prefix, name) = match parts.as_slice() {
        [n] => (None, *n),
        [p, n] => (Some(*p), *n),
        _ => {
            return vec![field::invalid(
                path,
                q(s),
                &format!("a qualified name {NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"),
            )]
        }
    };
    let mut out = Vec::new();
    if let Some(p) = prefix {
        if p.is_empty() {
            out.push(field::invalid(path, q(s), "prefix part must be non-empty"));
        } else if !dns1123_subdomain_ok(p) {
            out.push(field::invalid(
                path,
                q(s),
                &format!("prefix part {DNS1123_SUBDOMAIN_MSG}"),
            ));
        }
    }
    let nb = name.as_bytes();
    if nb.is_empty() {
        out.push(field::invalid(path, q(s), "name part must be non-empty"));
    } else {
        if nb.len() > 63 {
            out.push(field::invalid(
                path,
                q(s),
                "name part must be no more than 63 characters",
            ));
        }
        let ok = nb[0].is_ascii_alphanumeric()
            && nb[nb.len() - 1].is_ascii_alphanumeric()
            && nb
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !ok {
            out.push(field::invalid(path, q(s), &format!("name part {NAME_MSG}")));
        }
    }
    out
}

/// `ValidateNonSpecialIP`.
fn non_special_ip_errs(ip: &IpAddr, raw: &str, path: &str) -> Vec<FieldError> {
    let msg = if ip.is_unspecified() {
        Some(match ip {
            IpAddr::V4(_) => "may not be unspecified (0.0.0.0)",
            IpAddr::V6(_) => "may not be unspecified (::)",
        })
    } else if ip.is_loopback() {
        Some("may not be in the loopback range (127.0.0.0/8, ::1/128)")
    } else if match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    } {
        Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
    } else if match ip {
        IpAddr::V4(a) => a.octets()[..3] == [224, 0, 0],
        IpAddr::V6(a) => (a.segments()[0] & 0xff0f) == 0xff02,
    } {
        Some("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")
    } else {
        None
    };
    msg.map(|m| vec![field::invalid(path, q(raw), m)])
        .unwrap_or_default()
}

/// `ValidateServiceClusterIPsRelatedFields`.
fn validate_cluster_ips_related(svc: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if svc_type(svc) == "ExternalName" {
        return errs;
    }
    let ip = sstr(svc, "clusterIP");
    let ips = cluster_ips(svc);
    if !ip.is_empty() {
        if ips.is_empty() {
            errs.push(field::required("spec.clusterIPs", ""));
        } else if ips[0] != ip {
            errs.push(field::invalid(
                "spec.clusterIPs",
                strs(&ips),
                "first value must match `clusterIP`",
            ));
        }
    } else if !ips.is_empty() {
        errs.push(field::invalid(
            "spec.clusterIPs",
            strs(&ips),
            "must be empty when `clusterIP` is not specified",
        ));
    }
    let fams = families(svc);
    let mut seen = HashSet::new();
    for (i, f) in fams.iter().enumerate() {
        if Family::parse(f).is_none() {
            errs.push(field::not_supported(
                format!("spec.ipFamilies[{i}]"),
                f,
                &["IPv4", "IPv6"],
            ));
        }
        if !seen.insert(f.clone()) {
            errs.push(field::duplicate(format!("spec.ipFamilies[{i}]"), q(f)));
        }
    }
    if let Some(p) = policy(svc) {
        if !matches!(p, "SingleStack" | "PreferDualStack" | "RequireDualStack") {
            errs.push(field::not_supported(
                "spec.ipFamilyPolicy",
                p,
                &["PreferDualStack", "RequireDualStack", "SingleStack"],
            ));
        }
    }
    let mut bad_ips = false;
    for (i, ip) in ips.iter().enumerate() {
        if i == 0 && ip == "None" {
            if ips.len() > 1 {
                bad_ips = true;
                errs.push(field::invalid(
                    "spec.clusterIPs",
                    strs(&ips),
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        if ipalloc::parse_ip(ip).is_none() {
            bad_ips = true;
            errs.push(field::invalid(
                format!("spec.clusterIPs[{i}]"),
                q(ip),
                IP_MSG,
            ));
        }
    }
    if ips.len() > 2 {
        errs.push(field::invalid(
            "spec.clusterIPs",
            strs(&ips),
            "may only hold up to 2 values",
        ));
    }
    if bad_ips {
        return errs;
    }
    if ips.len() > 1 && family_of(&ips[0]) == family_of(&ips[1]) {
        errs.push(field::invalid(
            "spec.clusterIPs",
            strs(&ips),
            "may specify no more than one IP for each IP family",
        ));
    }
    if !is_headless(svc) && !ips.is_empty() && !fams.is_empty() {
        for (i, ip) in ips.iter().enumerate().take(fams.len()) {
            let fam = family_of(ip);
            if fams[i] == "IPv4" && fam == Some(Family::V6) {
                errs.push(field::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    q(ip),
                    &format!("expected an IPv4 value as indicated by `ipFamilies[{i}]`"),
                ));
            }
            if fams[i] == "IPv6" && fam != Some(Family::V6) {
                errs.push(field::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    q(ip),
                    &format!("expected an IPv6 value as indicated by `ipFamilies[{i}]`"),
                ));
            }
        }
    }
    errs
}

/// Go's `%#v` of the `core.ServicePort` key ValidateService reports duplicate ports with.
fn port_key_repr(proto: &str, port: i64) -> String {
    format!(
        "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
        q(proto)
    )
}

/// `validateServicePort`.
fn validate_port(
    p: &Value,
    i: usize,
    require_name: bool,
    names: &mut HashSet<String>,
) -> Vec<FieldError> {
    let path = format!("spec.ports[{i}]");
    let mut errs = Vec::new();
    let name = p.get("name").and_then(|v| v.as_str()).unwrap_or("");
    if require_name && name.is_empty() {
        errs.push(field::required(format!("{path}.name"), ""));
    } else if !name.is_empty() {
        if name.len() > 63 {
            errs.push(field::invalid(
                format!("{path}.name"),
                q(name),
                "must be no more than 63 characters",
            ));
        }
        if !dns1123_label_ok(name) {
            errs.push(field::invalid(
                format!("{path}.name"),
                q(name),
                DNS1123_LABEL_MSG,
            ));
        }
        if !names.insert(name.to_string()) {
            errs.push(field::duplicate(format!("{path}.name"), q(name)));
        }
    }
    let port = int(p, "port");
    if !(1..=65535).contains(&port) {
        errs.push(field::invalid(
            format!("{path}.port"),
            port.to_string(),
            PORT_RANGE_MSG,
        ));
    }
    let proto = p.get("protocol").and_then(|v| v.as_str()).unwrap_or("");
    if proto.is_empty() {
        errs.push(field::required(format!("{path}.protocol"), ""));
    } else if !matches!(proto, "TCP" | "UDP" | "SCTP") {
        errs.push(field::not_supported(
            format!("{path}.protocol"),
            proto,
            &["SCTP", "TCP", "UDP"],
        ));
    }
    match p.get("targetPort") {
        Some(Value::Number(n)) => {
            let t = n.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&t) {
                errs.push(field::invalid(
                    format!("{path}.targetPort"),
                    t.to_string(),
                    PORT_RANGE_MSG,
                ));
            }
        }
        Some(Value::String(s)) => {
            for m in port_name_errs(s) {
                errs.push(field::invalid(format!("{path}.targetPort"), q(s), m));
            }
        }
        _ => {}
    }
    if let Some(ap) = p.get("appProtocol").and_then(|v| v.as_str()) {
        errs.extend(qualified_name_errs(ap, &format!("{path}.appProtocol")));
    }
    errs
}

/// `ValidateService`.
pub fn validate(svc: &Value) -> Vec<FieldError> {
    let mut errs = dns1035_errs(meta_str(svc, "name"), "metadata.name");
    if meta_str(svc, "name").is_empty() {
        errs.clear();
    }
    let ty = svc_type(svc);
    let ps = ports(svc);
    let headless = is_headless(svc);
    if ps.is_empty() && !headless && ty != "ExternalName" {
        errs.push(field::required("spec.ports", ""));
    }
    let ips = cluster_ips(svc);
    match ty {
        "LoadBalancer" => {
            if headless {
                errs.push(field::invalid(
                    "spec.clusterIPs[0]",
                    q(&ips[0]),
                    "may not be set to 'None' for LoadBalancer services",
                ));
            }
            for (i, p) in ps.iter().enumerate() {
                if int(p, "port") == 10250 {
                    errs.push(field::invalid(
                        format!("spec.ports[{i}]"),
                        "10250",
                        "may not expose port 10250 externally since it is used by kubelet",
                    ));
                }
            }
        }
        "NodePort" if headless => errs.push(field::invalid(
            "spec.clusterIPs[0]",
            q(&ips[0]),
            "may not be set to 'None' for NodePort services",
        )),
        "ExternalName" => {
            if !ips.is_empty() {
                errs.push(field::forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                ));
            }
            if !families(svc).is_empty() {
                errs.push(field::forbidden(
                    "spec.ipFamilies",
                    "may not be set for ExternalName services",
                ));
            }
            if policy(svc).is_some() {
                errs.push(field::forbidden(
                    "spec.ipFamilyPolicy",
                    "may not be set for ExternalName services",
                ));
            }
            let cname = sstr(svc, "externalName").trim_end_matches('.');
            if cname.is_empty() {
                errs.push(field::required("spec.externalName", ""));
            } else {
                if cname.len() > 253 {
                    errs.push(field::invalid(
                        "spec.externalName",
                        q(cname),
                        "must be no more than 253 characters",
                    ));
                }
                if !dns1123_subdomain_ok(cname) {
                    errs.push(field::invalid(
                        "spec.externalName",
                        q(cname),
                        DNS1123_SUBDOMAIN_MSG,
                    ));
                }
            }
        }
        _ => {}
    }
    let mut names = HashSet::new();
    for (i, p) in ps.iter().enumerate() {
        errs.extend(validate_port(p, i, ps.len() > 1, &mut names));
    }
    match sstr(svc, "sessionAffinity") {
        "" => errs.push(field::required("spec.sessionAffinity", "")),
        "None" => {
            if svc
                .pointer("/spec/sessionAffinityConfig")
                .is_some_and(|v| !v.is_null())
            {
                errs.push(field::forbidden(
                    "spec.sessionAffinityConfig",
                    "must not be set when session affinity is None",
                ));
            }
        }
        "ClientIP" => {
            let t = svc
                .pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            if !(1..=86400).contains(&t) {
                errs.push(field::invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t.to_string(),
                    "must be greater than 0 and less than 86400",
                ));
            }
        }
        other => errs.push(field::not_supported(
            "spec.sessionAffinity",
            other,
            &["ClientIP", "None"],
        )),
    }
    errs.extend(validate_cluster_ips_related(svc));
    for (i, raw) in string_list(svc, "externalIPs").iter().enumerate() {
        let path = format!("spec.externalIPs[{i}]");
        match ipalloc::parse_ip(raw) {
            None => errs.push(field::invalid(&path, q(raw), IP_MSG)),
            Some(ip) => errs.extend(non_special_ip_errs(&ip, raw, &path)),
        }
    }
    if ty.is_empty() {
        errs.push(field::required("spec.type", ""));
    } else if !matches!(
        ty,
        "ClusterIP" | "ExternalName" | "LoadBalancer" | "NodePort"
    ) {
        errs.push(field::not_supported(
            "spec.type",
            ty,
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    if ty == "ClusterIP" {
        for (i, p) in ps.iter().enumerate() {
            if node_port(p) != 0 {
                errs.push(field::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    let mut seen_np = HashSet::new();
    for (i, p) in ps.iter().enumerate() {
        let np = node_port(p);
        if np == 0 {
            continue;
        }
        let proto = p.get("protocol").and_then(|v| v.as_str()).unwrap_or("");
        if !seen_np.insert((proto.to_string(), np)) {
            errs.push(field::duplicate(
                format!("spec.ports[{i}].nodePort"),
                np.to_string(),
            ));
        }
    }
    let mut seen_port = HashSet::new();
    for (i, p) in ps.iter().enumerate() {
        let proto = p.get("protocol").and_then(|v| v.as_str()).unwrap_or("");
        let port = int(p, "port");
        if !seen_port.insert((proto.to_string(), port)) {
            errs.push(field::duplicate(
                format!("spec.ports[{i}]"),
                port_key_repr(proto, port),
            ));
        }
    }
    let ranges = string_list(svc, "loadBalancerSourceRanges");
    if !ranges.is_empty() {
        // The field path's capital L is upstream's.
        if ty != "LoadBalancer" {
            errs.push(field::forbidden("spec.LoadBalancerSourceRanges", LB_ONLY));
        }
        for (i, r) in ranges.iter().enumerate() {
            let r = r.trim();
            let ok = r.split_once('/').is_some_and(|(a, p)| {
                ipalloc::parse_ip(a).is_some_and(|ip| {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    p.parse::<u8>().is_ok_and(|p| p <= max)
                })
            });
            if !ok {
                errs.push(field::invalid(
                    format!("spec.LoadBalancerSourceRanges[{i}]"),
                    q(r),
                    CIDR_MSG,
                ));
            }
        }
    }
    let alloc_lb = svc
        .pointer("/spec/allocateLoadBalancerNodePorts")
        .filter(|v| !v.is_null());
    if alloc_lb.is_some() && ty != "LoadBalancer" {
        errs.push(field::forbidden(
            "spec.allocateLoadBalancerNodePorts",
            LB_ONLY,
        ));
    }
    if ty == "LoadBalancer" && alloc_lb.is_none() {
        errs.push(field::required("allocateLoadBalancerNodePorts", ""));
    }
    errs.extend(validate_lb_class(None, svc));
    // validateServiceExternalTrafficPolicy
    let etp = sstr(svc, "externalTrafficPolicy");
    if !externally_accessible(svc) {
        if !etp.is_empty() {
            errs.push(field::invalid(
                "spec.externalTrafficPolicy",
                q(etp),
                "may only be set for externally-accessible services",
            ));
        }
    } else if etp.is_empty() {
        errs.push(field::required("spec.externalTrafficPolicy", ""));
    } else if !matches!(etp, "Cluster" | "Local") {
        errs.push(field::not_supported(
            "spec.externalTrafficPolicy",
            etp,
            &["Cluster", "Local"],
        ));
    }
    let hc = hc_node_port(svc);
    if !needs_hc_node_port(svc) {
        if hc != 0 {
            errs.push(field::invalid(
                "spec.healthCheckNodePort",
                hc.to_string(),
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
    } else if hc == 0 {
        errs.push(field::required("spec.healthCheckNodePort", ""));
    } else if !(1..=65535).contains(&hc) {
        errs.push(field::invalid(
            "spec.healthCheckNodePort",
            hc.to_string(),
            PORT_RANGE_MSG,
        ));
    }
    // validateServiceInternalTrafficFieldsValue
    match svc
        .pointer("/spec/internalTrafficPolicy")
        .and_then(|v| v.as_str())
    {
        None if matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer") => {
            errs.push(field::required("spec.internalTrafficPolicy", ""))
        }
        Some(p) if !matches!(p, "Cluster" | "Local") => errs.push(field::not_supported(
            "spec.internalTrafficPolicy",
            p,
            &["Cluster", "Local"],
        )),
        _ => {}
    }
    errs
}

/// `validateLoadBalancerClassField`.
fn validate_lb_class(old: Option<&Value>, svc: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let class = svc
        .pointer("/spec/loadBalancerClass")
        .filter(|v| !v.is_null());
    let repr = |c: Option<&Value>| match c.and_then(|v| v.as_str()) {
        Some(s) => q(s),
        None => "null".to_string(),
    };
    if let Some(old) = old {
        let old_class = old
            .pointer("/spec/loadBalancerClass")
            .filter(|v| !v.is_null());
        if svc_type(old) == "LoadBalancer" && svc_type(svc) == "LoadBalancer" && old_class != class
        {
            errs.push(field::invalid(
                "spec.loadBalancerClass",
                repr(class),
                "may not change once set",
            ));
        }
        return errs;
    }
    match (svc_type(svc) == "LoadBalancer", class) {
        (true, Some(c)) => errs.extend(qualified_name_errs(
            c.as_str().unwrap_or(""),
            "spec.loadBalancerClass",
        )),
        (false, Some(_)) => errs.push(field::forbidden("spec.loadBalancerClass", LB_ONLY)),
        _ => {}
    }
    errs
}

/// `validateUpgradeDowngradeClusterIPs` and `validateUpgradeDowngradeIPFamilies`.
fn validate_upgrade_downgrade(old: &Value, svc: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if svc_type(svc) == "ExternalName" || svc_type(old) == "ExternalName" {
        return errs;
    }
    let single = policy(svc) == Some("SingleStack");
    if !(is_headless(old) && is_headless(svc)) {
        let (o, n) = (cluster_ips(old), cluster_ips(svc));
        if o.len() == n.len() {
            for (i, ip) in o.iter().enumerate() {
                if *ip != n[i] {
                    errs.push(field::invalid(
                        format!("spec.clusterIPs[{i}]"),
                        strs(&n),
                        "may not change once set",
                    ));
                }
            }
        } else if o.len() > n.len() {
            if n.is_empty() {
                errs.push(field::invalid(
                    "spec.clusterIPs[0]",
                    strs(&n),
                    "primary clusterIP can not be unset",
                ));
            }
            if !o.is_empty() && !n.is_empty() && n[0] != o[0] {
                errs.push(field::invalid(
                    "spec.clusterIPs[0]",
                    strs(&n),
                    "may not change once set",
                ));
            }
            if n.len() == 1 && !single {
                errs.push(field::invalid(
                    "spec.clusterIPs[0]",
                    strs(&n),
                    "`ipFamilyPolicy` must be set to 'SingleStack' when releasing the secondary clusterIP",
                ));
            }
        } else if !o.is_empty() && n[0] != o[0] {
            errs.push(field::invalid(
                "spec.clusterIPs[0]",
                strs(&n),
                "may not change once set",
            ));
        }
    }
    // Headless services may change families.
    if is_headless(old) || is_headless(svc) {
        return errs;
    }
    let (o, n) = (families(old), families(svc));
    let fam_repr = |v: &[String]| {
        let inner: Vec<String> = v.iter().map(|s| q(s)).collect();
        format!("[]core.IPFamily{{{}}}", inner.join(", "))
    };
    let ips = strs(&cluster_ips(svc));
    if o.len() == n.len() {
        if o != n {
            errs.push(field::invalid(
                "spec.ipFamilies[0]",
                fam_repr(&n),
                "may not change once set",
            ));
        }
    } else if o.len() > n.len() {
        if cluster_ips(svc).is_empty() {
            errs.push(field::invalid(
                "spec.ipFamilies[0]",
                fam_repr(&n),
                "primary ipFamily can not be unset",
            ));
        }
        if !n.is_empty() && n[0] != o[0] {
            errs.push(field::invalid(
                "spec.ipFamilies[0]",
                ips.clone(),
                "may not change once set",
            ));
        }
        if n.len() == 1 && !single {
            errs.push(field::invalid(
                "spec.clusterIPs[0]",
                ips,
                "`ipFamilyPolicy` must be set to 'SingleStack' when releasing the secondary ipFamily",
            ));
        }
    } else if !o.is_empty() && n[0] != o[0] {
        errs.push(field::invalid(
            "spec.ipFamilies[0]",
            ips,
            "may not change once set",
        ));
    }
    errs
}

/// `ValidateLoadBalancerStatus`.
fn validate_status(svc: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ingress = svc
        .pointer("/status/loadBalancer/ingress")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    if svc_type(svc) != "LoadBalancer" && !ingress.is_empty() {
        errs.push(field::forbidden(
            "status.loadBalancer.ingress",
            "may only be used when `spec.type` is 'LoadBalancer'",
        ));
        return errs;
    }
    for (i, ing) in ingress.iter().enumerate() {
        let path = format!("status.loadBalancer.ingress[{i}]");
        let ip = ing.get("ip").and_then(|v| v.as_str()).unwrap_or("");
        if !ip.is_empty() && ipalloc::parse_ip(ip).is_none() {
            errs.push(field::invalid(format!("{path}.ip"), q(ip), IP_MSG));
        }
        match ing.get("ipMode").and_then(|v| v.as_str()) {
            None if !ip.is_empty() => errs.push(field::required(
                format!("{path}.ipMode"),
                "must be specified when `ip` is set",
            )),
            Some(_) if ip.is_empty() => errs.push(field::forbidden(
                format!("{path}.ipMode"),
                "may not be specified when `ip` is not set",
            )),
            Some(m) if !matches!(m, "Proxy" | "VIP") => errs.push(field::not_supported(
                format!("{path}.ipMode"),
                m,
                &["Proxy", "VIP"],
            )),
            _ => {}
        }
        let host = ing.get("hostname").and_then(|v| v.as_str()).unwrap_or("");
        if !host.is_empty() {
            if !dns1123_subdomain_ok(host) {
                errs.push(field::invalid(
                    format!("{path}.hostname"),
                    q(host),
                    DNS1123_SUBDOMAIN_MSG,
                ));
            }
            if ipalloc::parse_ip(host).is_some() {
                errs.push(field::invalid(
                    format!("{path}.hostname"),
                    q(host),
                    "must be a DNS name, not an IP address",
                ));
            }
        }
    }
    errs
}

fn ensure_status(svc: &mut Value) {
    if !svc["status"].is_object() {
        svc["status"] = json!({});
    }
    if !svc["status"]["loadBalancer"].is_object() {
        svc["status"]["loadBalancer"] = json!({});
    }
}

// ---- the registry's create and update ------------------------------------------------------

/// Create (`beginCreate` + `PrepareForCreate` + `ValidateService`): defaults, allocates, validates.
pub fn create(cfg: &Config, store: &Store, svc: &mut Value) -> Result<(), ApiError> {
    set_defaults(svc);
    normalize_cluster_ips(None, svc);
    init_ip_family_fields(cfg, None, svc)?;
    let (mut ips, mut nps) = in_use(store);
    alloc_cluster_ips(cfg, &mut ips, svc)?;
    init_node_ports(cfg, &mut nps, svc)?;
    if needs_hc_node_port(svc) {
        alloc_hc_node_port(cfg, &mut nps, svc)?;
    }
    svc["status"] = json!({"loadBalancer": {}});
    let errs = validate(svc);
    if !errs.is_empty() {
        return Err(invalid(meta_str(svc, "name"), errs));
    }
    Ok(())
}

/// Update of the main resource (`beginUpdate` + `PrepareForUpdate` + `ValidateServiceUpdate`) or of
/// `status` (`ValidateServiceStatusUpdate`). `svc` already carries the old status (main resource) or
/// the old spec (status), as the strategies arrange.
pub fn update(
    cfg: &Config,
    store: &Store,
    sub: &str,
    old: &Value,
    svc: &mut Value,
) -> Result<(), ApiError> {
    let name = meta_str(svc, "name").to_string();
    set_defaults(svc);
    if sub == "status" {
        ensure_status(svc);
        let errs = validate_status(svc);
        if !errs.is_empty() {
            return Err(invalid(&name, errs));
        }
        return Ok(());
    }
    patch_allocated_values(old, svc);
    normalize_cluster_ips(Some(old), svc);
    init_ip_family_fields(cfg, Some(old), svc)?;
    let (mut ips, mut nps) = in_use(store);
    update_cluster_ips(cfg, &mut ips, old, svc)?;
    if needs_node_port(svc) {
        update_node_ports(cfg, &mut nps, old, svc)?;
    }
    if !needs_hc_node_port(old) && needs_hc_node_port(svc) {
        alloc_hc_node_port(cfg, &mut nps, svc)?;
    }
    ensure_status(svc);
    drop_type_dependent_fields(old, svc);
    let mut errs = validate_upgrade_downgrade(old, svc);
    errs.extend(validate_lb_class(Some(old), svc));
    errs.extend(validate(svc));
    if !errs.is_empty() {
        return Err(invalid(&name, errs));
    }
    Ok(())
}

/// `default/kubernetes`, which kube-apiserver keeps (the first address of the primary range,
/// 443 to the server's own port).
pub fn kubernetes_service(cfg: &Config, target_port: u16) -> Value {
    let primary = cfg
        .cidrs
        .first()
        .map(|c| c.first().to_string())
        .unwrap_or_default();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": primary, "clusterIPs": [primary],
                 "ipFamilies": [cfg.primary().as_str()], "ipFamilyPolicy": "SingleStack",
                 "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": target_port}]},
        "status": {"loadBalancer": {}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn store_with(objs: &[Value]) -> Store {
        let def = resources::find("", "v1", "services").unwrap();
        let mut s = Store::new();
        for o in objs {
            let mut o = o.clone();
            if meta_str(&o, "name").is_empty() {
                o["metadata"]["name"] = json!("x");
            }
            s.create(def, "default", o).unwrap();
        }
        s
    }

    #[test]
    fn load_balancer_defaults_and_allocations() {
        let cfg = Config::default();
        let store = store_with(&[]);
        let mut s = svc(json!({"type": "LoadBalancer", "selector": {"app": "web"},
                               "ports": [{"name": "80-8080", "port": 80, "targetPort": 8080}]}));
        create(&cfg, &store, &mut s).unwrap();
        let sp = &s["spec"];
        assert_eq!(sp["sessionAffinity"], "None");
        assert_eq!(sp["externalTrafficPolicy"], "Cluster");
        assert_eq!(sp["internalTrafficPolicy"], "Cluster");
        assert_eq!(sp["allocateLoadBalancerNodePorts"], true);
        assert_eq!(sp["ipFamilyPolicy"], "SingleStack");
        assert_eq!(sp["ipFamilies"], json!(["IPv4"]));
        assert_eq!(sp["ports"][0]["protocol"], "TCP");
        let ip: IpAddr = sp["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(Cidr::parse("10.96.0.0/12")
            .unwrap()
            .allocate(&ip, &HashSet::new())
            .is_ok());
        assert_eq!(sp["clusterIPs"], json!([sp["clusterIP"]]));
        let np = sp["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np));
        assert!(sp.get("healthCheckNodePort").is_none());
        assert_eq!(s["status"], json!({"loadBalancer": {}}));
    }

    #[test]
    fn requested_node_port_conflicts_and_protocols_share() {
        let cfg = Config::default();
        let store = store_with(&[svc(
            json!({"type": "NodePort", "clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
            "externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster",
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": 31000}]}),
        )]);
        let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]}));
        let e = create(&cfg, &store, &mut s).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(e.message, "Service \"web\" is invalid: spec.ports[0].nodePort: Invalid value: 31000: provided port is already allocated");
        let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 8080}]}));
        let e = create(&cfg, &store, &mut s).unwrap_err();
        assert!(
            e.message.ends_with(
                "provided port is not in the valid range. The range of valid ports is 30000-32767"
            ),
            "{}",
            e.message
        );
        let mut s = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.50",
                               "ports": [{"port": 80, "nodePort": 31001}]}));
        let e = create(&cfg, &store, &mut s).unwrap_err();
        assert_eq!(e.message, "Service \"web\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.50\"}: failed to allocate IP 10.96.0.50: provided IP is already allocated");
        let mut s =
            svc(json!({"type": "NodePort", "clusterIP": "192.0.2.1", "ports": [{"port": 80}]}));
        let e = create(&cfg, &store, &mut s).unwrap_err();
        assert!(e.message.ends_with("failed to allocate IP 192.0.2.1: provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"), "{}", e.message);
        // 53/TCP and 53/UDP share one NodePort.
        let mut s = svc(
            json!({"type": "NodePort", "ports": [{"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                                                               {"name": "dns", "port": 53, "protocol": "UDP"}]}),
        );
        create(&cfg, &store, &mut s).unwrap();
        assert_eq!(
            s["spec"]["ports"][0]["nodePort"],
            s["spec"]["ports"][1]["nodePort"]
        );
    }

    #[test]
    fn type_change_to_cluster_ip_drops_node_ports_and_lb_fields() {
        let cfg = Config::default();
        let store = store_with(&[]);
        let mut old = svc(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "loadBalancerClass": "example.com/lb",
                                 "ports": [{"port": 80}]}),
        );
        create(&cfg, &store, &mut old).unwrap();
        assert!(old["spec"]["healthCheckNodePort"].as_i64().is_some());
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        update(&cfg, &store, "", &old, &mut new).unwrap();
        let sp = &new["spec"];
        assert!(sp["ports"][0].get("nodePort").is_none(), "{new}");
        for f in [
            "healthCheckNodePort",
            "externalTrafficPolicy",
            "allocateLoadBalancerNodePorts",
            "loadBalancerClass",
        ] {
            assert!(sp.get(f).is_none(), "{f}: {new}");
        }
        assert_eq!(sp["clusterIP"], old["spec"]["clusterIP"]);
    }

    #[test]
    fn update_rules() {
        let cfg = Config::default();
        let store = store_with(&[]);
        let mut old = svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/a", "ports": [{"port": 80}]}),
        );
        create(&cfg, &store, &mut old).unwrap();
        let mut new = old.clone();
        new["spec"]["loadBalancerClass"] = json!("example.com/b");
        let e = update(&cfg, &store, "", &old, &mut new).unwrap_err();
        assert_eq!(e.message, "Service \"web\" is invalid: spec.loadBalancerClass: Invalid value: \"example.com/b\": may not change once set");
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.96.0.99");
        let e = update(&cfg, &store, "", &old, &mut new).unwrap_err();
        assert_eq!(e.message, "Service \"web\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.99\"}: may not change once set");
        // ETP Local allocates a health check port; back to Cluster drops it.
        let mut local = old.clone();
        local["spec"]["externalTrafficPolicy"] = json!("Local");
        update(&cfg, &store, "", &old, &mut local).unwrap();
        assert!(local["spec"]["healthCheckNodePort"].as_i64().is_some());
        let mut cluster = local.clone();
        cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
        update(&cfg, &store, "", &local, &mut cluster).unwrap();
        assert!(cluster["spec"].get("healthCheckNodePort").is_none());
        // A client leaving nodePort out keeps the allocated one.
        let mut replace = old.clone();
        replace["spec"]["ports"] = json!([{"port": 80, "protocol": "TCP", "targetPort": 80}]);
        update(&cfg, &store, "", &old, &mut replace).unwrap();
        assert_eq!(
            replace["spec"]["ports"][0]["nodePort"],
            old["spec"]["ports"][0]["nodePort"]
        );
    }

    #[test]
    fn dual_stack_headless_and_validation() {
        let cfg = Config::default();
        let store = store_with(&[]);
        let mut s = svc(json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}));
        create(&cfg, &store, &mut s).unwrap();
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        let ips = s["spec"]["clusterIPs"].as_array().unwrap();
        assert_eq!(ips.len(), 2);
        assert!(ips[1].as_str().unwrap().starts_with("fd00:10:96::"));
        let mut s = svc(json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}));
        create(&cfg, &store, &mut s).unwrap();
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv6"]));
        let v4_only = Config::new(&["10.96.0.0/12".to_string()], DEFAULT_NODE_PORTS).unwrap();
        let mut s = svc(json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}));
        let e = create(&v4_only, &store, &mut s).unwrap_err();
        assert_eq!(e.message, "Service \"web\" is invalid: spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services");
        let mut s =
            svc(json!({"clusterIP": "None", "selector": {"a": "b"}, "ports": [{"port": 80}]}));
        create(&cfg, &store, &mut s).unwrap();
        assert_eq!(s["spec"]["clusterIPs"], json!(["None"]));
        assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
        let mut s = svc(json!({"type": "ExternalName", "externalName": "db.example.com"}));
        create(&cfg, &store, &mut s).unwrap();
        assert_eq!(
            s["spec"],
            json!({"type": "ExternalName", "externalName": "db.example.com", "sessionAffinity": "None"})
        );
        let mut s = svc(json!({"clusterIP": "None"}));
        create(&cfg, &store, &mut s).unwrap();
        assert_eq!(s["spec"]["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        let mut s = svc(
            json!({"type": "Bogus", "ports": [{"port": 80, "name": "a"}, {"port": 0, "protocol": "ICMP"}]}),
        );
        let e = create(&cfg, &store, &mut s).unwrap_err();
        let causes: Vec<(String, String)> = e.details.unwrap()["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["field"].as_str().unwrap().to_string(),
                    c["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for want in [
            ("spec.ports[1].name", "FieldValueRequired"),
            ("spec.ports[1].port", "FieldValueInvalid"),
            ("spec.ports[1].protocol", "FieldValueNotSupported"),
            ("spec.type", "FieldValueNotSupported"),
        ] {
            assert!(
                causes.contains(&(want.0.to_string(), want.1.to_string())),
                "{want:?} in {causes:?}"
            );
        }
        let mut s = svc(json!({"ports": [{"port": 80, "nodePort": 30080}]}));
        let e = create(&cfg, &store, &mut s).unwrap_err();
        assert_eq!(e.message, "Service \"web\" is invalid: spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'");
        let mut s = svc(json!({"loadBalancerClass": "example.com/x", "ports": [{"port": 80}]}));
        let e = create(&cfg, &store, &mut s).unwrap_err();
        assert_eq!(e.message, "Service \"web\" is invalid: spec.loadBalancerClass: Forbidden: may only be used when `type` is 'LoadBalancer'");
    }

    #[test]
    fn status_rules() {
        let cfg = Config::default();
        let store = store_with(&[]);
        let mut old = svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}]}));
        create(&cfg, &store, &mut old).unwrap();
        let mut st = old.clone();
        st["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
        update(&cfg, &store, "status", &old, &mut st).unwrap();
        assert_eq!(st["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
        let mut bad = old.clone();
        bad["status"] = json!({"loadBalancer": {"ingress": [{"ip": "nope"}]}});
        let e = update(&cfg, &store, "status", &old, &mut bad).unwrap_err();
        assert!(
            e.message
                .contains("status.loadBalancer.ingress[0].ip: Invalid value: \"nope\""),
            "{}",
            e.message
        );
    }
}
