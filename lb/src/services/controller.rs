//! The Kubernetes side: watches Services, Nodes and EndpointSlices of the workload cluster with kube's
//! runtime (a Controller for Services, reflectors for the rest) and turns them into [`ClusterRules`]
//! for the server to apply. Every keel-lb computes and serves every rule; only the holder of the
//! writer Lease chooses addresses and writes finalizers, annotations, status and Events.
//!
//! Upstream's service controller is the model (k8s.io/cloud-provider controllers/service): wanted =
//! `type: LoadBalancer` with our class (or none, when we are the default); finalizer
//! `service.kubernetes.io/load-balancer-cleanup` before anything is programmed; Events
//! EnsuringLoadBalancer / EnsuredLoadBalancer / SyncLoadBalancerFailed / DeletingLoadBalancer /
//! DeletedLoadBalancer.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as FEvent};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::config::ServicesConfig;
use super::ipam::{Ipam, IpamError, Request};
use super::leader::Elector;
use super::rules::{ClusterRules, Local, NodeAddrs, Proto, SvcPort, SvcRule};
use crate::config::Protocol;

pub const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
/// Ours: the addresses the writer chose, so every keel-lb, restart and pool edit agrees.
pub const ANN_ALLOCATED: &str = "lb.keel.io/allocated-ips";
/// The user's: one or two addresses (one per family) to use.
pub const ANN_REQUEST_IPS: &str = "lb.keel.io/load-balancer-ips";
/// The user's: take the address from this pool.
pub const ANN_POOL: &str = "lb.keel.io/address-pool";
/// The user's: Services with the same key may share an address (no common protocol/port).
pub const ANN_SHARING: &str = "lb.keel.io/allow-shared-ip";
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the file says that the controller must respect; replaced on every reload.
#[derive(Debug, Clone, PartialEq)]
pub struct FileView {
    pub services: ServicesConfig,
    pub listeners: HashSet<(Protocol, SocketAddr)>,
    /// Addresses of the file (VRRP VIPs, frontend addresses): never given to a Service.
    pub reserved: HashSet<IpAddr>,
}

/// The last sync of one Service, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncStatus {
    pub ok: bool,
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// State shared between the controller's tasks, the server and the admin API.
/// What the data plane runs now, for the admin API (updated by the server per Service applied).
#[derive(Clone, Default)]
pub struct Applied {
    pub rules: Arc<ClusterRules>,
    pub problems: super::rules::Problems,
    /// Service pool name -> the running pool version: backends' health is read live.
    pub pools: BTreeMap<String, Arc<crate::pool::Pool>>,
}

pub struct Shared {
    pub rules: watch::Sender<Option<Arc<ClusterRules>>>,
    pub applied: Mutex<Applied>,
    pub sync: Mutex<BTreeMap<String, SyncStatus>>,
    pub leader: watch::Sender<bool>,
    pub metrics: super::metrics::SvcMetrics,
}

impl Shared {
    pub fn new(registry: &prometheus::Registry) -> Arc<Shared> {
        Arc::new(Shared {
            rules: watch::channel(None).0,
            applied: Mutex::new(Applied::default()),
            sync: Mutex::new(BTreeMap::new()),
            leader: watch::channel(false).0,
            metrics: super::metrics::SvcMetrics::new(registry),
        })
    }

    pub fn sync(&self) -> BTreeMap<String, SyncStatus> {
        lock(&self.sync).clone()
    }

    pub fn applied(&self) -> Applied {
        lock(&self.applied).clone()
    }

    /// What runs for one Service only (`namespace/name`): copies that Service's entries, not all.
    pub fn applied_for(&self, key: &str) -> Applied {
        let a = lock(&self.applied);
        let prefix = format!("{key}:");
        Applied {
            rules: a.rules.clone(),
            problems: a
                .problems
                .get_key_value(key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .into_iter()
                .collect(),
            pools: a
                .pools
                .range(prefix.clone()..)
                .take_while(|(n, _)| n.starts_with(&prefix))
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect(),
        }
    }

    /// The last sync result of one Service.
    pub fn sync_for(&self, key: &str) -> BTreeMap<String, SyncStatus> {
        lock(&self.sync)
            .get_key_value(key)
            .map(|(k, v)| (k.clone(), v.clone()))
            .into_iter()
            .collect()
    }

    /// Forgets every Service (a full apply publishes them all again).
    pub fn reset_applied(&self, rules: Arc<ClusterRules>) {
        *lock(&self.applied) = Applied {
            rules,
            ..Applied::default()
        };
    }

    /// Replaces what runs for these Services: (key, problems, its pools by name).
    pub fn update_applied(
        &self,
        rules: Arc<ClusterRules>,
        services: impl Iterator<Item = (String, Vec<String>, Vec<(String, Arc<crate::pool::Pool>)>)>,
    ) {
        let mut a = lock(&self.applied);
        a.rules = rules;
        for (key, problems, pools) in services {
            let prefix = format!("{key}:");
            // A Service's pools are named `<key>:<port>/<proto>`: drop the old ones first.
            let stale: Vec<String> = a
                .pools
                .range(prefix.clone()..)
                .take_while(|(n, _)| n.starts_with(&prefix))
                .map(|(n, _)| n.clone())
                .collect();
            for n in stale {
                a.pools.remove(&n);
            }
            a.pools.extend(pools);
            if problems.is_empty() {
                a.problems.remove(&key);
            } else {
                a.problems.insert(key, problems);
            }
        }
    }

    fn set_sync(&self, key: &str, ok: bool, message: impl Into<String>) {
        lock(&self.sync).insert(
            key.to_string(),
            SyncStatus {
                ok,
                message: message.into(),
                at: unix_now(),
            },
        );
    }
}

struct Ctx {
    client: Client,
    view: watch::Receiver<Arc<FileView>>,
    shared: Arc<Shared>,
    recorder: Recorder,
    ipam: Mutex<Ipam>,
    /// The rules being built; published (coalesced) by the publisher task.
    rules: Mutex<ClusterRules>,
    dirty: Notify,
    /// Nodes with ready endpoints per Service (`ns/name`), from EndpointSlices.
    local: Mutex<HashMap<String, BTreeMap<String, BTreeSet<String>>>>,
    services: kube::runtime::reflector::Store<Service>,
    /// Set once the Service cache has listed and the address index holds every recorded address.
    seeded: watch::Sender<bool>,
    ready: Ready,
    /// A reconcile ran: the Controller's cache has listed.
    reconciled: std::sync::atomic::AtomicBool,
    /// This instance holds the Lease AND has rebuilt the address index from a fresh list since it
    /// won it. Until then it does not choose addresses: a choice made while that list is in flight
    /// would be released again by the list (taken before the choice landed) and handed out twice.
    writing: std::sync::atomic::AtomicBool,
    /// Services holding an address no pool contains any more (reported once per occurrence).
    outside: Mutex<HashSet<String>>,
}

/// The first rules are published only when Services, Nodes and EndpointSlices have all been listed:
/// until then the persisted rules keep serving, never an empty set.
#[derive(Default)]
struct Ready {
    nodes: std::sync::atomic::AtomicBool,
    slices: std::sync::atomic::AtomicBool,
    services: std::sync::atomic::AtomicBool,
}

impl Ready {
    fn all(&self) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.nodes.load(Acquire) && self.slices.load(Acquire) && self.services.load(Acquire)
    }
}

fn key_of(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

fn ann<'a>(svc: &'a Service, k: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(k))
        .map(String::as_str)
}

fn parse_ips(text: &str) -> Result<Vec<IpAddr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("{s:?} is not an IP address")))
        .collect()
}

fn is_wanted(svc: &Service, cfg: &ServicesConfig) -> bool {
    let Some(spec) = &svc.spec else { return false };
    svc.metadata.deletion_timestamp.is_none()
        && spec.type_.as_deref() == Some("LoadBalancer")
        && cfg.serves_class(spec.load_balancer_class.as_deref())
}

fn has_finalizer(svc: &Service) -> bool {
    svc.finalizers().iter().any(|f| f == FINALIZER)
}

fn ports_of(svc: &Service) -> Vec<SvcPort> {
    let Some(spec) = &svc.spec else { return vec![] };
    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Proto::TCP,
                "UDP" => Proto::UDP,
                _ => return None, // SCTP: not an L4 proxy's job here
            };
            Some(SvcPort {
                name: p.name.clone().unwrap_or_default(),
                protocol,
                port: u16::try_from(p.port).ok()?,
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
            })
        })
        .collect()
}

fn families(svc: &Service) -> (Vec<bool>, bool) {
    let Some(spec) = &svc.spec else {
        return (vec![true], false);
    };
    let fams: Vec<bool> = spec
        .ip_families
        .iter()
        .flatten()
        .map(|f| f != "IPv6")
        .collect();
    let fams = if fams.is_empty() { vec![true] } else { fams };
    match spec.ip_family_policy.as_deref() {
        Some("RequireDualStack") => {
            let first = fams[0];
            (vec![first, !first], true)
        }
        Some("PreferDualStack") => {
            let first = fams[0];
            (vec![first, !first], false)
        }
        _ => (vec![fams[0]], false),
    }
}

fn request_of(svc: &Service) -> Result<Request, IpamError> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut requested = match ann(svc, ANN_REQUEST_IPS) {
        Some(t) => {
            parse_ips(t).map_err(|e| IpamError::BadRequest(format!("{ANN_REQUEST_IPS}: {e}")))?
        }
        None => vec![],
    };
    if requested.is_empty() {
        if let Some(ip) = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty()) {
            requested = vec![ip.parse().map_err(|_| {
                IpamError::BadRequest(format!("spec.loadBalancerIP {ip:?} is not an IP address"))
            })?];
        }
    }
    let (mut fams, require_all) = families(svc);
    if !requested.is_empty() {
        fams = requested.iter().map(|ip| ip.is_ipv4()).collect();
    }
    let current = ann(svc, ANN_ALLOCATED)
        .map(|t| parse_ips(t).unwrap_or_default())
        .unwrap_or_default();
    Ok(Request {
        key: key_of(svc),
        namespace: svc.namespace().unwrap_or_default(),
        labels: svc.labels().clone(),
        families: fams,
        require_all_families: require_all,
        requested,
        pool: ann(svc, ANN_POOL).map(str::to_string),
        sharing_key: ann(svc, ANN_SHARING).map(str::to_string),
        ports: ports_of(svc)
            .iter()
            .map(|p| (p.protocol.into(), p.port))
            .collect(),
        current,
    })
}

fn node_addrs(n: &Node) -> Option<(String, NodeAddrs)> {
    if n.metadata.deletion_timestamp.is_some() || n.labels().contains_key(EXCLUDE_LABEL) {
        return None;
    }
    let tainted = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    if tainted {
        return None;
    }
    let mut a = NodeAddrs { v4: None, v6: None };
    for addr in n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
    {
        match addr.address.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) if a.v4.is_none() => a.v4 = Some(ip),
            Ok(ip @ IpAddr::V6(_)) if a.v6.is_none() => a.v6 = Some(ip),
            _ => {}
        }
    }
    (a.v4.is_some() || a.v6.is_some()).then(|| (n.name_any(), a))
}

/// Ready endpoints' nodes of one slice (a missing `ready` counts as ready, as upstream says).
fn slice_nodes(s: &EndpointSlice) -> BTreeSet<String> {
    s.endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.node_name.clone())
        .collect()
}

fn slice_service(s: &EndpointSlice) -> Option<String> {
    let svc = s.labels().get(SERVICE_NAME_LABEL)?;
    Some(format!("{}/{}", s.namespace().unwrap_or_default(), svc))
}

impl Ctx {
    fn view(&self) -> Arc<FileView> {
        self.view.borrow().clone()
    }

    fn is_leader(&self) -> bool {
        *self.shared.leader.borrow() && self.writing.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn event(&self, svc: &Service, warning: bool, reason: &str, note: String) {
        let ev = KEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &svc.object_ref(&())).await {
            tracing::warn!(service = %key_of(svc), reason, error = %e, "services: event not recorded");
        }
    }

    /// Builds the rule for `svc` holding `ips`; Err names what makes it unservable.
    fn rule_for(&self, svc: &Service, ips: &[IpAddr], view: &FileView) -> (SvcRule, Vec<String>) {
        let key = key_of(svc);
        let mut problems = Vec::new();
        let spec = svc.spec.clone().unwrap_or_default();
        let ports = ports_of(svc);
        let pool = ips
            .iter()
            .find_map(|ip| view.services.pools.iter().find(|p| p.contains(*ip)));
        let with_router: Vec<(IpAddr, Option<String>)> = ips
            .iter()
            .map(|ip| (*ip, view.services.router_for(*ip).map(str::to_string)))
            .collect();
        let local = (spec.external_traffic_policy.as_deref() == Some("Local")).then(|| Local {
            health_check_node_port: spec
                .health_check_node_port
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(0),
            nodes: lock(&self.local)
                .get(&key)
                .map(|m| m.values().flatten().cloned().collect())
                .unwrap_or_default(),
        });
        if local
            .as_ref()
            .is_some_and(|l| l.health_check_node_port == 0)
        {
            problems.push(
                "externalTrafficPolicy is Local but the Service has no healthCheckNodePort".into(),
            );
        }
        let rule = SvcRule {
            key,
            ips: with_router,
            ports,
            local,
            proxy_protocol: pool.is_some_and(|p| p.proxy_protocol),
            nat: pool.is_some_and(|p| p.nat),
            balance: pool
                .map(|p| p.balance.into())
                .unwrap_or(super::rules::BalanceName::RoundRobin),
        };
        // The same words the server logs and /services shows when it renders the rule.
        problems.extend(super::rules::rule_problems(&rule, &view.listeners));
        (rule, problems)
    }

    /// Puts (or removes) a Service's rule; true when it changed.
    fn set_rule(&self, key: &str, rule: Option<SvcRule>) -> bool {
        let mut r = lock(&self.rules);
        let changed = match rule {
            Some(rule) => match r.services.get(key) {
                Some(old) if **old == rule => false,
                _ => {
                    r.services.insert(key.to_string(), Arc::new(rule));
                    true
                }
            },
            None => r.services.remove(key).is_some(),
        };
        if changed {
            self.dirty.notify_one();
        }
        changed
    }

    /// Waits until the address index holds every address recorded when the cache first listed.
    /// (One task waits on the store itself: kube's readiness wakes only its latest waiter.)
    async fn seed(&self) {
        let mut rx = self.seeded.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// A new writer must know every address the previous one handed out, including writes its watch
    /// has not delivered yet: one consistent LIST when the Lease is won.
    async fn reseed_from_list(&self) -> Result<(), kube::Error> {
        let api: Api<Service> = Api::all(self.client.clone());
        let list = api.list(&ListParams::default()).await?;
        let mut ipam = lock(&self.ipam);
        for svc in &list.items {
            record_from_annotation(&mut ipam, svc);
        }
        tracing::info!(
            services = list.items.len(),
            "services: address index rebuilt from a fresh list"
        );
        Ok(())
    }
}

fn record_from_annotation(ipam: &mut Ipam, svc: &Service) {
    let key = key_of(svc);
    match ann(svc, ANN_ALLOCATED).map(parse_ips) {
        Some(Ok(ips)) if !ips.is_empty() => {
            let ports: Vec<(Protocol, u16)> = ports_of(svc)
                .iter()
                .map(|p| (p.protocol.into(), p.port))
                .collect();
            ipam.record(&key, &ips, ann(svc, ANN_SHARING), &ports);
        }
        _ => ipam.release(&key),
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.reconciled
        .store(true, std::sync::atomic::Ordering::Release);
    ctx.seed().await;
    let view = ctx.view();
    let key = key_of(&svc);
    let wanted = is_wanted(&svc, &view.services);
    let result = if ctx.is_leader() && (wanted || has_finalizer(&svc)) {
        let api: Api<Service> =
            Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
        let c2 = ctx.clone();
        let v2 = view.clone();
        finalizer(&api, FINALIZER, svc.clone(), |ev| async move {
            match ev {
                FEvent::Apply(s) if is_wanted(&s, &v2.services) => ensure(&s, &c2, &v2).await,
                FEvent::Apply(s) => cleanup(&s, &c2, false).await,
                FEvent::Cleanup(s) => cleanup(&s, &c2, true).await,
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Other(other.to_string()),
        })
    } else {
        follow(&svc, &ctx, &view, wanted);
        Ok(Action::await_change())
    };
    ctx.shared
        .metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.shared.set_sync(&key, false, e.to_string());
    }
    result
}

/// Not the writer: serve what the writer recorded.
fn follow(svc: &Service, ctx: &Ctx, view: &FileView, wanted: bool) {
    let key = key_of(svc);
    record_from_annotation(&mut lock(&ctx.ipam), svc);
    let ips = ann(svc, ANN_ALLOCATED)
        .map(|t| parse_ips(t).unwrap_or_default())
        .unwrap_or_default();
    if wanted && !ips.is_empty() {
        let (rule, problems) = ctx.rule_for(svc, &ips, view);
        ctx.set_rule(&key, Some(rule));
        ctx.shared.set_sync(
            &key,
            problems.is_empty(),
            if problems.is_empty() {
                "serving (addresses chosen by the writer)".to_string()
            } else {
                problems.join("; ")
            },
        );
    } else {
        ctx.set_rule(&key, None);
        lock(&ctx.shared.sync).remove(&key);
    }
}

async fn ensure(svc: &Service, ctx: &Ctx, view: &FileView) -> Result<Action, Error> {
    let key = key_of(svc);
    let ns = svc.namespace().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    // Chosen and recorded under one lock: reconciles of different Services run concurrently, and
    // the index must hold an address before the next choice is made.
    let assigned = request_of(svc).and_then(|req| {
        let mut ipam = lock(&ctx.ipam);
        let ips = ipam.assign(&req)?;
        ipam.record(&key, &ips, req.sharing_key.as_deref(), &req.ports);
        Ok(ips)
    });
    let ips = match assigned {
        Ok(ips) => ips,
        Err(e) => {
            tracing::warn!(service = %key, reason = e.reason(), error = %e, "services: no address");
            ctx.shared
                .set_sync(&key, false, format!("{}: {e}", e.reason()));
            ctx.event(svc, true, e.reason(), e.to_string()).await;
            ctx.shared.metrics.sync_failures.inc();
            // Rechecked on any change of the Service and at least once a minute (pools may grow).
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    let ip_text = ips
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // A pool that shrank under a live address never moves or drops it: it is reported, once.
    let outside: Vec<String> = {
        let ipam = lock(&ctx.ipam);
        ips.iter()
            .filter(|ip| ipam.pool_of(**ip).is_none())
            .map(IpAddr::to_string)
            .collect()
    };
    if outside.is_empty() {
        lock(&ctx.outside).remove(&key);
    } else if lock(&ctx.outside).insert(key.clone()) {
        ctx.event(
            svc,
            true,
            "AddressOutsidePools",
            format!(
                "{} is in no address pool any more (a pool shrank or was removed); it stays with this Service until the Service lets it go",
                outside.join(",")
            ),
        )
        .await;
    }
    let (rule, problems) = ctx.rule_for(svc, &ips, view);
    let before = lock(&ctx.rules).services.get(&key).cloned();
    let changing =
        before.as_deref() != Some(&rule) || ann(svc, ANN_ALLOCATED) != Some(ip_text.as_str());
    if changing {
        ctx.event(
            svc,
            false,
            "EnsuringLoadBalancer",
            "Ensuring load balancer".into(),
        )
        .await;
    }
    if ann(svc, ANN_ALLOCATED) != Some(ip_text.as_str()) {
        // resourceVersion makes this a compare-and-swap: a writer with a stale view loses (409).
        let patch = json!({"metadata": {
            "resourceVersion": svc.resource_version(),
            "annotations": {ANN_ALLOCATED: ip_text},
        }});
        if let Err(e) = api
            .patch(
                &svc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            // Not recorded by this patch: the index goes back to what the Service says now. A
            // fresh read, not `svc`: the cached object can predate an allocation that did land (a
            // 409 here is often our own earlier write), and releasing that address would hand it
            // to another Service. If the Service cannot be read, the address stays held.
            if let Ok(fresh) = api.get(&svc.name_any()).await {
                record_from_annotation(&mut lock(&ctx.ipam), &fresh);
            }
            return Err(e.into());
        }
    }
    ctx.set_rule(&key, Some(rule.clone()));
    let mode = if rule.proxy_protocol { "Proxy" } else { "VIP" };
    let ingress: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string(), "ipMode": mode}))
        .collect();
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| {
            i.iter()
                .map(|x| json!({"ip": x.ip.clone().unwrap_or_default(), "ipMode": x.ip_mode.clone().unwrap_or_default()}))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if current != ingress {
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
        api.patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    if problems.is_empty() {
        if changing || current != ingress {
            ctx.event(
                svc,
                false,
                "EnsuredLoadBalancer",
                format!("Ensured load balancer at {ip_text}"),
            )
            .await;
            tracing::info!(service = %key, ips = %ip_text, ports = rule.ports.len(), "services: load balancer ensured");
        }
        ctx.shared
            .set_sync(&key, true, format!("serving {ip_text}"));
    } else {
        let msg = problems.join("; ");
        if changing || current != ingress {
            ctx.event(svc, true, "SyncLoadBalancerFailed", msg.clone())
                .await;
            tracing::warn!(service = %key, problems = %msg, "services: load balancer partly served");
        }
        ctx.shared.metrics.sync_failures.inc();
        ctx.shared.set_sync(&key, false, msg);
    }
    Ok(Action::await_change())
}

/// Deleted, or no longer ours: the rule goes, the address is free, the status and our annotation go
/// (unless the object is going anyway); the finalizer helper removes the finalizer on deletion.
async fn cleanup(svc: &Service, ctx: &Ctx, deleting: bool) -> Result<Action, Error> {
    let key = key_of(svc);
    let had = lock(&ctx.rules).services.contains_key(&key) || ann(svc, ANN_ALLOCATED).is_some();
    if had {
        ctx.event(
            svc,
            false,
            "DeletingLoadBalancer",
            "Deleting load balancer".into(),
        )
        .await;
    }
    ctx.set_rule(&key, None);
    lock(&ctx.ipam).release(&key);
    lock(&ctx.outside).remove(&key);
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    if !deleting {
        if svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .is_some_and(|i| !i.is_empty())
        {
            let patch = json!({"status": {"loadBalancer": {"ingress": null}}});
            api.patch_status(
                &svc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
        // Our annotation, then our finalizer, with a JSON patch whose `test` guards the index so
        // no other controller's finalizer is ever dropped.
        let mut ops = Vec::new();
        if ann(svc, ANN_ALLOCATED).is_some() {
            ops.push(json!({"op": "remove", "path": format!("/metadata/annotations/{}", ANN_ALLOCATED.replace('~', "~0").replace('/', "~1"))}));
        }
        if let Some(i) = svc.finalizers().iter().position(|f| f == FINALIZER) {
            ops.push(json!({"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER}));
            ops.push(json!({"op": "remove", "path": format!("/metadata/finalizers/{i}")}));
        }
        if !ops.is_empty() {
            let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
                .map_err(|e| Error::Other(e.to_string()))?;
            api.patch(
                &svc.name_any(),
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await?;
        }
    }
    lock(&ctx.shared.sync).remove(&key);
    if had {
        ctx.event(
            svc,
            false,
            "DeletedLoadBalancer",
            "Deleted load balancer".into(),
        )
        .await;
        tracing::info!(service = %key, "services: load balancer deleted");
    }
    Ok(Action::await_change())
}

fn error_policy(svc: Arc<Service>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(service = %key_of(&svc), error = %err, "services: sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// The handle the server keeps: stop it on shutdown.
pub struct Running {
    pub stop: CancellationToken,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the controller on a thread of its own (its own runtime: API latency never touches the data
/// plane's threads).
pub fn spawn(view: watch::Receiver<Arc<FileView>>, shared: Arc<Shared>) -> Running {
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("keel-services".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "services: cannot start the controller's runtime");
                    return;
                }
            };
            rt.block_on(run(view, shared, s2));
        })
        .ok();
    if thread.is_none() {
        tracing::error!("services: cannot start the controller thread");
    }
    Running { stop, thread }
}

async fn client_for(cfg: &ServicesConfig) -> Result<Client, String> {
    let kc = kube::config::Kubeconfig::read_from(&cfg.kubeconfig)
        .map_err(|e| format!("{}: {e}", cfg.kubeconfig.display()))?;
    let mut c =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| format!("{}: {e}", cfg.kubeconfig.display()))?;
    c.connect_timeout = Some(Duration::from_secs(5));
    c.write_timeout = Some(Duration::from_secs(10));
    // Watches end every WATCH_TIMEOUT on the server side, so a read idle longer means a dead peer.
    c.read_timeout = Some(Duration::from_secs(u64::from(WATCH_TIMEOUT) + 30));
    c.default_retry = false;
    Client::try_from(c).map_err(|e| e.to_string())
}

const WATCH_TIMEOUT: u32 = 60;

async fn run(view: watch::Receiver<Arc<FileView>>, shared: Arc<Shared>, stop: CancellationToken) {
    let cfg = view.borrow().services.clone();
    // The client is retried: the API server may be down when keel-lb starts (persisted rules serve).
    let client = loop {
        match client_for(&cfg).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "services: cannot build the workload cluster client; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    let instance = cfg
        .instance
        .clone()
        .unwrap_or_else(super::config::default_instance);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "keel-lb".into(),
            instance: Some(instance.clone()),
        },
    );
    let wc = watcher::Config::default().timeout(WATCH_TIMEOUT);
    let controller = Controller::new(Api::<Service>::all(client.clone()), wc.clone());
    let ipam = Ipam::new(cfg.pools.clone(), view.borrow().reserved.clone());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        view: view.clone(),
        shared: shared.clone(),
        recorder,
        ipam: Mutex::new(ipam),
        rules: Mutex::new(ClusterRules::default()),
        dirty: Notify::new(),
        local: Mutex::new(HashMap::new()),
        services: controller.store(),
        seeded: watch::channel(false).0,
        ready: Ready::default(),
        reconciled: std::sync::atomic::AtomicBool::new(false),
        writing: std::sync::atomic::AtomicBool::new(false),
        outside: Mutex::new(HashSet::new()),
    });

    // Writer election.
    let elector = Elector {
        api: Api::namespaced(client.clone(), &cfg.lease_namespace),
        name: cfg.lease_name.clone(),
        identity: instance,
        duration: cfg.lease_duration,
    };
    let mut leader_rx = shared.leader.subscribe();
    tokio::spawn(elector.run(shared.leader.clone(), stop.clone()));

    // Reconcile everything when this instance becomes the writer (after a fresh list), and when the
    // file changes (pools, class).
    let (all_tx, all_rx) = futures::channel::mpsc::channel::<()>(4);
    {
        let ctx = ctx.clone();
        let mut all_tx = all_tx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = leader_rx.changed() => if r.is_err() { return },
                }
                let is_leader = *leader_rx.borrow_and_update();
                ctx.shared.metrics.leader.set(i64::from(is_leader));
                ctx.writing
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                if is_leader {
                    ctx.seed().await;
                    while let Err(e) = ctx.reseed_from_list().await {
                        tracing::warn!(error = %e, "services: cannot list Services after winning the lease; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                    // Still the holder (the Lease may have gone while listing): start writing.
                    if *leader_rx.borrow() {
                        ctx.writing.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let _ = all_tx.try_send(());
            }
        });
    }
    {
        let ctx = ctx.clone();
        let mut view = view.clone();
        let mut all_tx = all_tx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = view.changed() => if r.is_err() { return },
                }
                let v = view.borrow_and_update().clone();
                lock(&ctx.ipam).set_pools(v.services.pools.clone(), v.reserved.clone());
                for (ip, who) in lock(&ctx.ipam).orphans() {
                    tracing::warn!(%ip, services = ?who, "services: address outside every pool; kept until its Service lets it go");
                }
                let _ = all_tx.try_send(());
            }
        });
    }

    // Nodes: the backend set of every Service.
    {
        let ctx = ctx.clone();
        let api: Api<Node> = Api::all(client.clone());
        let stop = stop.clone();
        let wc = wc.clone();
        tokio::spawn(async move {
            let mut nodes: BTreeMap<String, NodeAddrs> = BTreeMap::new();
            let mut init: Option<BTreeMap<String, NodeAddrs>> = None;
            let mut stream = watcher(api, wc).default_backoff().boxed();
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = stream.try_next() => ev,
                };
                let ev = match ev {
                    Ok(Some(ev)) => ev,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "services: node watch failed; retrying");
                        continue;
                    }
                };
                let mut changed = false;
                match ev {
                    watcher::Event::Init => init = Some(BTreeMap::new()),
                    watcher::Event::InitApply(n) => {
                        if let (Some(m), Some((k, a))) = (init.as_mut(), node_addrs(&n)) {
                            m.insert(k, a);
                        }
                    }
                    watcher::Event::InitDone => {
                        if let Some(m) = init.take() {
                            nodes = m;
                        }
                        ctx.ready
                            .nodes
                            .store(true, std::sync::atomic::Ordering::Release);
                        changed = true;
                    }
                    watcher::Event::Apply(n) => {
                        let name = n.name_any();
                        let before = nodes.get(&name).cloned();
                        match node_addrs(&n) {
                            Some((k, a)) => {
                                nodes.insert(k, a);
                            }
                            None => {
                                nodes.remove(&name);
                            }
                        }
                        changed = before != nodes.get(&name).cloned();
                    }
                    watcher::Event::Delete(n) => changed = nodes.remove(&n.name_any()).is_some(),
                }
                if changed {
                    ctx.shared.metrics.nodes.set(nodes.len() as i64);
                    lock(&ctx.rules).nodes = nodes.clone();
                    ctx.dirty.notify_one();
                }
            }
        });
    }

    // EndpointSlices: which nodes have ready endpoints, for externalTrafficPolicy: Local.
    let slices = {
        let ctx = ctx.clone();
        let api: Api<EndpointSlice> = Api::all(client.clone());
        let wc = wc.clone().labels(SERVICE_NAME_LABEL);
        let mut init: Option<HashMap<String, BTreeMap<String, BTreeSet<String>>>> = None;
        watcher(api, wc)
            .default_backoff()
            .map_ok(move |ev| {
                let mut local = lock(&ctx.local);
                match &ev {
                    watcher::Event::Init => init = Some(HashMap::new()),
                    watcher::Event::InitApply(s) => {
                        if let (Some(m), Some(k)) = (init.as_mut(), slice_service(s)) {
                            m.entry(k).or_default().insert(s.name_any(), slice_nodes(s));
                        }
                    }
                    watcher::Event::InitDone => {
                        if let Some(m) = init.take() {
                            *local = m;
                        }
                        ctx.ready
                            .slices
                            .store(true, std::sync::atomic::Ordering::Release);
                        ctx.dirty.notify_one();
                    }
                    watcher::Event::Apply(s) => {
                        if let Some(k) = slice_service(s) {
                            local
                                .entry(k)
                                .or_default()
                                .insert(s.name_any(), slice_nodes(s));
                        }
                    }
                    watcher::Event::Delete(s) => {
                        if let Some(k) = slice_service(s) {
                            if let Some(m) = local.get_mut(&k) {
                                m.remove(&s.name_any());
                                if m.is_empty() {
                                    local.remove(&k);
                                }
                            }
                        }
                    }
                }
                ev
            })
            .touched_objects()
    };

    // The publisher: coalesces bursts into one snapshot for the server; the first snapshot waits for
    // every watch to have listed once.
    {
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ctx.dirty.notified() => {}
                    _ = tick.tick() => {}
                }
                if !ctx.ready.all() {
                    tracing::debug!(
                        nodes = ctx.ready.nodes.load(std::sync::atomic::Ordering::Acquire),
                        slices = ctx.ready.slices.load(std::sync::atomic::Ordering::Acquire),
                        services = ctx
                            .ready
                            .services
                            .load(std::sync::atomic::Ordering::Acquire),
                        "services: waiting for the first complete view before publishing rules"
                    );
                    continue;
                }
                // Rules of Services that vanished without our finalizer (it was forced off) go too;
                // only once the cache is known complete (a reconcile has run).
                if ctx.reconciled.load(std::sync::atomic::Ordering::Acquire) {
                    let mut r = lock(&ctx.rules);
                    let store = &ctx.services;
                    r.services.retain(|k, _| {
                        let (ns, name) = k.split_once('/').unwrap_or(("", k));
                        store.get(&ObjectRef::new(name).within(ns)).is_some()
                    });
                }
                let snap = Arc::new(lock(&ctx.rules).clone());
                ctx.shared.metrics.services.set(snap.services.len() as i64);
                for (pool, used, size) in lock(&ctx.ipam).usage() {
                    let m = &ctx.shared.metrics.pool_addresses;
                    m.with_label_values(&[pool.as_str(), "used"])
                        .set(used as i64);
                    m.with_label_values(&[pool.as_str(), "size"])
                        .set(i64::try_from(size).unwrap_or(i64::MAX));
                }
                let same = ctx.shared.rules.borrow().as_deref() == Some(&*snap);
                if !same {
                    ctx.shared.rules.send_replace(Some(snap));
                }
            }
        });
    }

    // Services are ready once listed. One consistent LIST, not the cache's readiness: kube's
    // `Store::wait_until_ready` wakes only its latest waiter, and the Controller waits on it too.
    {
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let api: Api<Service> = Api::all(ctx.client.clone());
            let list = loop {
                match api.list(&ListParams::default()).await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::warn!(error = %e, "services: cannot list Services; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            };
            {
                let mut ipam = lock(&ctx.ipam);
                for svc in &list.items {
                    record_from_annotation(&mut ipam, svc);
                }
            }
            ctx.seeded.send_replace(true);
            let view = ctx.view();
            for svc in &list.items {
                if !ctx.is_leader() {
                    follow(svc, &ctx, &view, is_wanted(svc, &view.services));
                }
            }
            tracing::debug!(
                services = list.items.len(),
                "services: listed; address index seeded"
            );
            ctx.ready
                .services
                .store(true, std::sync::atomic::Ordering::Release);
            ctx.dirty.notify_one();
        });
    }

    let shutdown = stop.clone();
    controller
        .watches_stream(slices, |s: EndpointSlice| {
            let name = s.labels().get(SERVICE_NAME_LABEL)?.clone();
            Some(ObjectRef::new(&name).within(&s.namespace()?))
        })
        .reconcile_all_on(all_rx)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            // Reconcile errors are logged by error_policy; watch errors (a stream restarting) here.
            if let Err(kube::runtime::controller::Error::QueueError(e)) = &r {
                tracing::warn!(error = %e, "services: watch failed; retrying");
            }
            futures::future::ready(())
        })
        .await;
    tracing::info!("services: controller stopped");
}
