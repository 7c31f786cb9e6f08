//! Registering the Node with the node identity when kubelet is not managed (tests, nodes without
//! kubelet), the way kubelet's `registerWithAPIServer` does it: create with labels and taints; on
//! 409 read the existing Node and reconcile labels instead of duplicating; taints only at creation
//! (NodeRestriction refuses a node's later taint changes).
//!
//! The pure part ([`desired_node`], [`ownership`], [`label_patch`], [`merge_status`]) computes
//! objects and patches from observed state; [`register`] does the calls.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint as KTaint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::apiclient;
use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::node::host::Facts;

/// Annotation naming the agent installation that owns the Node, to tell two machines apart.
pub const INSTANCE_ANNOTATION: &str = "keel.io/agent-instance";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECS: i32 = 40;
const MAX_PODS: &str = "110";

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("node name {node:?} is already registered by another machine (agent instance {owner}) whose Lease was renewed {renewed_secs_ago}s ago; pick another node.name or remove that machine (kubectl delete node {node})")]
    NameTaken {
        node: String,
        owner: String,
        renewed_secs_ago: i64,
    },
    #[error("the API server refused {what} for node {node}: {source}")]
    Refused {
        node: String,
        what: String,
        source: kube::Error,
    },
    #[error("registering node {node} did not succeed within {waited:?}; last error: {last}")]
    Timeout {
        node: String,
        waited: Duration,
        last: String,
    },
}

/// The labels the agent sets on its Node: kubelet's own, then the pool's.
pub fn desired_labels(cfg: &Config, facts: &Facts) -> BTreeMap<String, String> {
    let mut l = cfg.node.labels.clone();
    l.insert("kubernetes.io/hostname".into(), cfg.node.name.clone());
    l.insert("kubernetes.io/os".into(), cfg.node.os.as_str().into());
    l.insert("kubernetes.io/arch".into(), facts.arch.clone());
    l
}

pub fn taints(cfg: &Config) -> Vec<KTaint> {
    cfg.node
        .taints
        .iter()
        .map(|t| KTaint {
            key: t.key.clone(),
            value: (!t.value.is_empty()).then(|| t.value.clone()),
            effect: t.effect.as_str().to_string(),
            time_added: None,
        })
        .collect()
}

pub fn desired_node(cfg: &Config, facts: &Facts, instance: &str) -> Node {
    let taints = taints(cfg);
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.node.name.clone()),
            labels: Some(desired_labels(cfg, facts)),
            annotations: Some(BTreeMap::from([(
                INSTANCE_ANNOTATION.to_string(),
                instance.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then_some(taints),
            ..Default::default()
        }),
        status: None,
    }
}

/// Who holds a Node we found under our name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Ours (our instance id), or unmarked: reconcile it.
    Ours,
    /// Another machine's, but its Lease expired: a replaced machine; take it over.
    Stale { owner: String },
    /// Another machine's, alive.
    Taken {
        owner: String,
        renewed_secs_ago: i64,
    },
}

pub fn ownership(
    existing: &Node,
    lease: Option<&Lease>,
    instance: &str,
    now: Timestamp,
) -> Ownership {
    let owner = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INSTANCE_ANNOTATION))
        .cloned();
    let Some(owner) = owner.filter(|o| o != instance) else {
        return Ownership::Ours;
    };
    // No Lease yet: the other agent may have just created the Node and not renewed yet, so
    // the Node's creation counts as its first sign of life.
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| {
            let t = s.renew_time.as_ref()?.0;
            let d = s.lease_duration_seconds.unwrap_or(LEASE_DURATION_SECS);
            Some((t, d))
        })
        .or_else(|| {
            let created = existing.metadata.creation_timestamp.as_ref()?.0;
            Some((created, LEASE_DURATION_SECS))
        });
    match renewed {
        Some((t, d)) => {
            let ago = (now.as_second() - t.as_second()).max(0);
            if ago < i64::from(d) {
                Ownership::Taken {
                    owner,
                    renewed_secs_ago: ago,
                }
            } else {
                Ownership::Stale { owner }
            }
        }
        None => Ownership::Stale { owner },
    }
}

/// A JSON merge patch setting the labels and the instance annotation that differ; `None` when the
/// Node already agrees. Labels set by others are left alone (kubelet does the same).
pub fn label_patch(
    existing: &Node,
    labels: &BTreeMap<String, String>,
    instance: &str,
) -> Option<serde_json::Value> {
    let have = existing.metadata.labels.clone().unwrap_or_default();
    let mut set = serde_json::Map::new();
    for (k, v) in labels {
        if have.get(k) != Some(v) {
            set.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
    }
    let ann_ok = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INSTANCE_ANNOTATION))
        .is_some_and(|v| v == instance);
    if set.is_empty() && ann_ok {
        return None;
    }
    let mut meta = serde_json::Map::new();
    if !set.is_empty() {
        meta.insert("labels".into(), serde_json::Value::Object(set));
    }
    if !ann_ok {
        meta.insert(
            "annotations".into(),
            serde_json::json!({ INSTANCE_ANNOTATION: instance }),
        );
    }
    Some(serde_json::json!({ "metadata": meta }))
}

/// What the agent reports about the node (everything but the time stamps).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub ready: bool,
    pub ready_reason: String,
    pub ready_message: String,
}

impl Observed {
    pub fn ready() -> Self {
        Observed {
            ready: true,
            ready_reason: "KeelAgentReady".into(),
            ready_message: "keel-agent is posting ready status".into(),
        }
    }
}

fn quantity(v: impl ToString) -> Quantity {
    Quantity(v.to_string())
}

/// Merges our view into `current` (the Node's status as last read): addresses, capacity,
/// nodeInfo and the `Ready` condition; conditions owned by others (health checks) are kept.
/// `lastHeartbeatTime` moves to `now`; `lastTransitionTime` only when the status flips.
pub fn merge_status(
    current: Option<&NodeStatus>,
    facts: &Facts,
    observed: &Observed,
    now: Timestamp,
) -> NodeStatus {
    let mut st = current.cloned().unwrap_or_default();
    let mut addresses = Vec::new();
    if let Some(ip) = facts.internal_ip {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: facts.hostname.clone(),
    });
    st.addresses = Some(addresses);
    let mut capacity = BTreeMap::from([
        ("cpu".to_string(), quantity(facts.cpus)),
        ("pods".to_string(), quantity(MAX_PODS)),
    ]);
    if let Some(m) = facts.memory_bytes {
        capacity.insert("memory".into(), quantity(format!("{}Ki", m / 1024)));
    }
    st.allocatable = Some(capacity.clone());
    st.capacity = Some(capacity);
    st.node_info = Some(NodeSystemInfo {
        architecture: facts.arch.clone(),
        boot_id: facts.boot_id.clone(),
        container_runtime_version: String::new(),
        kernel_version: facts.kernel_version.clone(),
        kube_proxy_version: String::new(),
        kubelet_version: format!("keel-agent/{}", env!("CARGO_PKG_VERSION")),
        machine_id: facts.machine_id.clone(),
        operating_system: facts.os.as_str().into(),
        os_image: facts.os_image.clone(),
        system_uuid: String::new(),
        swap: None,
    });
    let status = if observed.ready { "True" } else { "False" };
    let mut conditions = st.conditions.take().unwrap_or_default();
    let previous = conditions.iter().position(|c| c.type_ == "Ready");
    let transition = match previous.map(|i| &conditions[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(Time(now)),
    };
    let ready = NodeCondition {
        type_: "Ready".into(),
        status: status.into(),
        reason: Some(observed.ready_reason.clone()),
        message: Some(observed.ready_message.clone()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: transition,
    };
    match previous {
        Some(i) => conditions[i] = ready,
        None => conditions.push(ready),
    }
    st.conditions = Some(conditions);
    st
}

/// The status without time stamps: equal digests mean nothing worth writing changed.
pub fn digest(st: &NodeStatus) -> String {
    let mut st = st.clone();
    for c in st.conditions.iter_mut().flatten() {
        c.last_heartbeat_time = None;
    }
    serde_json::to_string(&st).unwrap_or_default()
}

fn refused(node: &str, what: &str, e: kube::Error) -> RegisterError {
    RegisterError::Refused {
        node: node.to_string(),
        what: what.to_string(),
        source: e,
    }
}

/// Creates or reconciles the Node and writes its first status. Retries transient failures with
/// backoff until `timeout`.
pub async fn register(
    client: &Client,
    cfg: &Config,
    facts: &Facts,
    instance: &str,
    metrics: &Metrics,
    timeout: Duration,
) -> Result<Node, RegisterError> {
    let node = cfg.node.name.as_str();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff =
        keel_common::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let last = match register_once(client, cfg, facts, instance, metrics).await {
            Ok(n) => return Ok(n),
            Err(RegisterError::Refused { source, .. }) if apiclient::is_transient(&source) => {
                source.to_string()
            }
            Err(e) => return Err(e),
        };
        let delay = backoff.next_delay();
        if tokio::time::Instant::now() + delay > deadline {
            return Err(RegisterError::Timeout {
                node: node.to_string(),
                waited: timeout,
                last,
            });
        }
        tracing::warn!(node = %node, error = %last, retry_in = ?delay, "registering the node failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

async fn register_once(
    client: &Client,
    cfg: &Config,
    facts: &Facts,
    instance: &str,
    metrics: &Metrics,
) -> Result<Node, RegisterError> {
    let name = cfg.node.name.as_str();
    let nodes: Api<Node> = Api::all(client.clone());
    let desired = desired_node(cfg, facts, instance);
    let existing = match apiclient::observe(metrics, "get", "nodes", nodes.get_opt(name)).await {
        Ok(n) => n,
        Err(e) => return Err(refused(name, "reading the Node", e)),
    };
    let node = match existing {
        None => match apiclient::observe(
            metrics,
            "create",
            "nodes",
            nodes.create(&PostParams::default(), &desired),
        )
        .await
        {
            Ok(n) => {
                tracing::info!(node = %name, pool = ?cfg.node.pool, taints = cfg.node.taints.len(), "node registered");
                n
            }
            // Someone (another agent, kubelet) created it in between: reconcile on the next try.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(node = %name, "node appeared while registering; reconciling");
                return Box::pin(register_once(client, cfg, facts, instance, metrics)).await;
            }
            Err(e) => return Err(refused(name, "creating the Node", e)),
        },
        Some(existing) => {
            let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
            let lease =
                match apiclient::observe(metrics, "get", "leases", leases.get_opt(name)).await {
                    Ok(l) => l,
                    Err(e) => return Err(refused(name, "reading the Lease", e)),
                };
            match ownership(&existing, lease.as_ref(), instance, Timestamp::now()) {
                Ownership::Taken {
                    owner,
                    renewed_secs_ago,
                } => {
                    return Err(RegisterError::NameTaken {
                        node: name.to_string(),
                        owner,
                        renewed_secs_ago,
                    })
                }
                Ownership::Stale { owner } => {
                    tracing::warn!(node = %name, previous_owner = %owner, "taking over a Node whose previous agent's Lease expired");
                }
                Ownership::Ours => {}
            }
            let labels = desired_labels(cfg, facts);
            match label_patch(&existing, &labels, instance) {
                None => existing,
                Some(patch) => match apiclient::observe(
                    metrics,
                    "patch",
                    "nodes",
                    nodes.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
                {
                    Ok(n) => {
                        tracing::info!(node = %name, "existing node reconciled (labels)");
                        n
                    }
                    Err(e) => return Err(refused(name, "patching the Node's labels", e)),
                },
            }
        }
    };
    if node_taints_differ(&node, cfg) {
        // NodeRestriction forbids a node to change its own taints after creation.
        tracing::warn!(node = %name, "the Node's taints differ from the pool's; a node cannot change its own taints (NodeRestriction): fix them with an administrator credential");
    }
    write_status(client, name, Some(node), facts, &Observed::ready(), metrics).await
}

fn node_taints_differ(node: &Node, cfg: &Config) -> bool {
    let have: Vec<(String, String, String)> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    (
                        t.key.clone(),
                        t.value.clone().unwrap_or_default(),
                        t.effect.clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let want: Vec<(String, String, String)> = cfg
        .node
        .taints
        .iter()
        .map(|t| {
            (
                t.key.clone(),
                t.value.clone(),
                t.effect.as_str().to_string(),
            )
        })
        .collect();
    want.iter().any(|w| !have.contains(w))
}

/// Writes the Node's status (PUT on `status` with the resourceVersion read), re-reading on 409.
pub async fn write_status(
    client: &Client,
    name: &str,
    mut current: Option<Node>,
    facts: &Facts,
    observed: &Observed,
    metrics: &Metrics,
) -> Result<Node, RegisterError> {
    let nodes: Api<Node> = Api::all(client.clone());
    for _ in 0..5 {
        let mut node = match current.take() {
            Some(n) => n,
            None => apiclient::observe(metrics, "get", "nodes", nodes.get(name))
                .await
                .map_err(|e| refused(name, "reading the Node", e))?,
        };
        node.status = Some(merge_status(
            node.status.as_ref(),
            facts,
            observed,
            Timestamp::now(),
        ));
        match apiclient::observe(
            metrics,
            "update",
            "nodes/status",
            nodes.replace_status(name, &PostParams::default(), &node),
        )
        .await
        {
            Ok(n) => return Ok(n),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(refused(name, "updating the Node status", e)),
        }
    }
    Err(RegisterError::Timeout {
        node: name.to_string(),
        waited: Duration::ZERO,
        last: "status update kept conflicting (409)".into(),
    })
}

pub fn pool_label(cfg: &Config) -> Option<&str> {
    cfg.node.labels.get(config::POOL_LABEL).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use keel_common::Source;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "cluster:\n  server: https://127.0.0.1:6443\n  token: abcdef.0123456789abcdef\n  ca_pins: [\"sha256:{}\"]\nnode:\n  name: w1\n  pool: gpu\n  labels: {{example.com/team: infra}}\n{extra}",
            "ab".repeat(32)
        );
        config::from_source(&Source::from_text("a.yaml", text), None).unwrap()
    }

    fn facts() -> Facts {
        crate::node::host::gather(
            "w1",
            config::Os::Linux,
            &"https://127.0.0.1:6443".parse().unwrap(),
        )
    }

    #[test]
    fn new_node_has_kubelet_labels_pool_labels_and_pool_taints() {
        let c = cfg("  taints: [{key: dedicated, value: gpu, effect: NoSchedule}]\n");
        let n = desired_node(&c, &facts(), "i1");
        let labels = n.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "w1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert!(labels.contains_key("kubernetes.io/arch"));
        assert_eq!(labels["keel.io/pool"], "gpu");
        assert_eq!(labels["example.com/team"], "infra");
        let t = &n.spec.unwrap().taints.unwrap()[0];
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("dedicated", Some("gpu"), "NoSchedule")
        );
        assert_eq!(n.metadata.annotations.unwrap()[INSTANCE_ANNOTATION], "i1");
    }

    #[test]
    fn label_patch_sets_only_what_differs() {
        let c = cfg("");
        let labels = desired_labels(&c, &facts());
        let mut n = desired_node(&c, &facts(), "i1");
        assert_eq!(label_patch(&n, &labels, "i1"), None);
        n.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("keel.io/pool".into(), "old".into());
        n.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("admin.example/x".into(), "kept".into());
        let p = label_patch(&n, &labels, "i1").unwrap();
        assert_eq!(
            p,
            serde_json::json!({"metadata": {"labels": {"keel.io/pool": "gpu"}}})
        );
    }

    fn lease(renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(40),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn ownership_refuses_a_live_other_machine_and_takes_over_a_dead_one() {
        let c = cfg("");
        let n = desired_node(&c, &facts(), "other");
        let now = Timestamp::from_second(1_000_000).unwrap();
        assert_eq!(ownership(&n, None, "other", now), Ownership::Ours);
        let fresh = lease(Timestamp::from_second(1_000_000 - 5).unwrap());
        assert_eq!(
            ownership(&n, Some(&fresh), "me", now),
            Ownership::Taken {
                owner: "other".into(),
                renewed_secs_ago: 5
            }
        );
        let old = lease(Timestamp::from_second(1_000_000 - 100).unwrap());
        assert_eq!(
            ownership(&n, Some(&old), "me", now),
            Ownership::Stale {
                owner: "other".into()
            }
        );
        let mut young = n.clone();
        young.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(1_000_000 - 2).unwrap()));
        assert!(matches!(
            ownership(&young, None, "me", now),
            Ownership::Taken { .. }
        ));
        let mut unmarked = n.clone();
        unmarked.metadata.annotations = None;
        assert_eq!(
            ownership(&unmarked, Some(&fresh), "me", now),
            Ownership::Ours
        );
    }

    #[test]
    fn status_keeps_other_conditions_and_transition_times() {
        let f = facts();
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let mut st = merge_status(None, &f, &Observed::ready(), t0);
        st.conditions.as_mut().unwrap().push(NodeCondition {
            type_: "KernelDeadlock".into(),
            status: "False".into(),
            ..Default::default()
        });
        let st2 = merge_status(Some(&st), &f, &Observed::ready(), t1);
        let conds = st2.conditions.as_ref().unwrap();
        assert_eq!(conds.len(), 2);
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_heartbeat_time, Some(Time(t1)));
        assert_eq!(ready.last_transition_time, Some(Time(t0)));
        assert_eq!(digest(&st), digest(&st2));
        let not_ready = Observed {
            ready: false,
            ..Observed::ready()
        };
        let st3 = merge_status(Some(&st2), &f, &not_ready, t1);
        assert_ne!(digest(&st2), digest(&st3));
        assert!(st2.capacity.unwrap().contains_key("cpu"));
        assert_eq!(st2.addresses.unwrap().last().unwrap().type_, "Hostname");
    }
}
