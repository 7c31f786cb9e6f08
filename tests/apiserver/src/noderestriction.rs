//! The NodeRestriction admission plugin (`plugin/pkg/admission/noderestriction/admission.go`):
//! what a node identity may do to Nodes, Leases, Pods, evictions and service-account tokens beyond
//! what RBAC allows.

use crate::auth::User;
use crate::status::ApiError;
use serde_json::Value;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// `kubeletapis.IsKubeletLabel`.
fn is_kubelet_label(label: &str) -> bool {
    const KUBELET_LABELS: &[&str] = &[
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    ];
    if KUBELET_LABELS.contains(&label) {
        return true;
    }
    let ns = label_namespace(label);
    ["kubelet.kubernetes.io", "node.kubernetes.io"]
        .iter()
        .any(|k| ns == *k || ns.ends_with(&format!(".{k}")))
}

fn label_namespace(label: &str) -> &str {
    label.split_once('/').map(|(ns, _)| ns).unwrap_or("")
}

fn is_kubernetes_label(label: &str) -> bool {
    let ns = label_namespace(label);
    ns == "kubernetes.io"
        || ns.ends_with(".kubernetes.io")
        || ns == "k8s.io"
        || ns.ends_with(".k8s.io")
}

/// `getModifiedLabels`: keys added, removed or changed between `a` and `b`.
fn modified_labels(a: Option<&Value>, b: Option<&Value>) -> BTreeSet<String> {
    let empty = serde_json::Map::new();
    let a = a.and_then(|v| v.as_object()).unwrap_or(&empty);
    let b = b.and_then(|v| v.as_object()).unwrap_or(&empty);
    let mut out = BTreeSet::new();
    for (k, v) in a {
        if b.get(k) != Some(v) {
            out.insert(k.clone());
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.insert(k.clone());
        }
    }
    out
}

/// `getForbiddenLabels`.
fn forbidden_labels(modified: &BTreeSet<String>) -> Vec<String> {
    modified
        .iter()
        .filter(|l| {
            let ns = label_namespace(l);
            let restricted = ns == "node-restriction.kubernetes.io"
                || ns.ends_with(".node-restriction.kubernetes.io");
            restricted || (is_kubernetes_label(l) && !is_kubelet_label(l))
        })
        .cloned()
        .collect()
}

fn forbid(resource: &str, group: &str, name: &str, msg: String) -> ApiError {
    ApiError::forbidden(group, resource, name, &msg)
}

/// `admitNode`: applies to `nodes` and `nodes/status`.
pub fn admit_node(
    user: &User,
    op: Op,
    name: &str,
    new: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    if node.is_empty() {
        return Err(forbid(
            "nodes",
            "",
            name,
            format!("could not determine node from user {:?}", user.name),
        ));
    }
    if name != node {
        return Err(forbid(
            "nodes",
            "",
            name,
            format!("node {node:?} is not allowed to modify node {name:?}"),
        ));
    }
    let labels = |v: Option<&Value>| v.and_then(|o| o.pointer("/metadata/labels")).cloned();
    match op {
        Op::Create => {
            if new
                .and_then(|n| n.pointer("/spec/configSource"))
                .is_some_and(|c| !c.is_null())
            {
                return Err(forbid(
                    "nodes",
                    "",
                    name,
                    format!(
                        "node {node:?} is not allowed to create pods with a non-nil configSource"
                    ),
                ));
            }
            let f = forbidden_labels(&modified_labels(labels(new).as_ref(), None));
            if !f.is_empty() {
                return Err(forbid(
                    "nodes",
                    "",
                    name,
                    format!(
                        "node {node:?} is not allowed to set the following labels: {}",
                        f.join(", ")
                    ),
                ));
            }
        }
        Op::Update => {
            let taints = |v: Option<&Value>| {
                v.and_then(|o| o.pointer("/spec/taints"))
                    .filter(|t| !t.as_array().is_some_and(|a| a.is_empty()))
                    .cloned()
            };
            if taints(new) != taints(old) {
                return Err(forbid(
                    "nodes",
                    "",
                    name,
                    format!("node {node:?} is not allowed to modify taints"),
                ));
            }
            let f = forbidden_labels(&modified_labels(labels(new).as_ref(), labels(old).as_ref()));
            if !f.is_empty() {
                return Err(forbid(
                    "nodes",
                    "",
                    name,
                    format!("is not allowed to modify labels: {}", f.join(", ")),
                ));
            }
        }
        Op::Delete => {}
    }
    Ok(())
}

/// `admitLease`: a node may only create its own Lease.
pub fn admit_lease(user: &User, op: Op, ns: &str, name: &str) -> Result<(), ApiError> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    if op == Op::Create && (ns != "kube-node-lease" || name != node) {
        return Err(forbid(
            "leases",
            "coordination.k8s.io",
            name,
            "can only access node lease with the same name as the requesting node".into(),
        ));
    }
    Ok(())
}

/// `admitServiceAccount`: a node's TokenRequest must be bound (with its uid) to a pod on that node.
/// `pod` is the bound pod as stored, if any.
pub fn admit_token(
    user: &User,
    sa_name: &str,
    req: &Value,
    pod: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    let deny = |msg: &str| Err(forbid("serviceaccounts", "", sa_name, msg.into()));
    let r = req
        .pointer("/spec/boundObjectRef")
        .filter(|r| r.is_object());
    let s = |k: &str| {
        r.and_then(|r| r.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("")
    };
    if r.is_none() || s("apiVersion") != "v1" || s("kind") != "Pod" || s("name").is_empty() {
        return deny("node requested token not bound to a pod");
    }
    if s("uid").is_empty() {
        return deny("node requested token with a pod binding without a uid");
    }
    let Some(pod) = pod else {
        return Err(ApiError::not_found("", "pods", s("name")));
    };
    if crate::store::meta_str(pod, "uid") != s("uid") {
        return deny(&format!("the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated", s("uid")));
    }
    if pod.pointer("/spec/nodeName").and_then(|v| v.as_str()) != Some(node) {
        return deny("node requested token bound to a pod scheduled on a different node");
    }
    Ok(())
}

/// `admitPodEviction`.
pub fn admit_eviction(user: &User, pod_name: &str, pod: Option<&Value>) -> Result<(), ApiError> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    let bound = pod
        .and_then(|p| p.pointer("/spec/nodeName"))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if pod.is_some() && bound != node {
        return Err(forbid(
            "pods",
            "",
            pod_name,
            format!("node {node} can only evict pods with spec.nodeName set to itself"),
        ));
    }
    Ok(())
}

/// `admitPod` / `admitPodStatus`: mirror pods bound to the node, status of pods bound to it.
pub fn admit_pod(
    user: &User,
    op: Op,
    subresource: &str,
    name: &str,
    new: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    let bound = |v: Option<&Value>| {
        v.and_then(|p| p.pointer("/spec/nodeName"))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    match (op, subresource) {
        (Op::Create, "") => {
            let mirror = new
                .and_then(|p| p.pointer("/metadata/annotations/kubernetes.io~1config.mirror"))
                .is_some();
            if !mirror {
                return Err(forbid("pods", "", name, format!("pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods")));
            }
            if bound(new) != node {
                return Err(forbid(
                    "pods",
                    "",
                    name,
                    format!("node {node:?} can only create pods with spec.nodeName set to itself"),
                ));
            }
        }
        (Op::Delete, "") | (Op::Update, "status") if bound(old) != node => {
            let verb = if op == Op::Delete { "delete" } else { "update" };
            return Err(forbid(
                "pods",
                "",
                name,
                format!("node {node:?} can only {verb} pods with spec.nodeName set to itself"),
            ));
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node_user(n: &str) -> User {
        User {
            name: format!("system:node:{n}"),
            uid: String::new(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        }
    }

    #[test]
    fn node_may_set_taints_only_at_create() {
        let u = node_user("n1");
        let created = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/os": "linux", "pool": "a"}}, "spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}});
        assert!(admit_node(&u, Op::Create, "n1", Some(&created), None).is_ok());
        let mut cordoned = created.clone();
        cordoned["spec"]["unschedulable"] = json!(true);
        assert!(admit_node(&u, Op::Update, "n1", Some(&cordoned), Some(&created)).is_ok());
        let mut untainted = created.clone();
        untainted["spec"]["taints"] = json!([]);
        let e = admit_node(&u, Op::Update, "n1", Some(&untainted), Some(&created)).unwrap_err();
        assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints"
        );
    }

    #[test]
    fn node_labels_follow_the_kubelet_allow_list() {
        let u = node_user("n1");
        let base = json!({"metadata": {"name": "n1", "labels": {}}});
        let with = |k: &str| json!({"metadata": {"name": "n1", "labels": {k: "v"}}});
        for ok in [
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/pool",
            "kubelet.kubernetes.io/x",
            "example.com/a",
            "kubernetes.io/hostname",
        ] {
            assert!(
                admit_node(&u, Op::Update, "n1", Some(&with(ok)), Some(&base)).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "node-role.kubernetes.io/worker",
            "node-restriction.kubernetes.io/x",
            "foo.k8s.io/y",
            "kubernetes.io/other",
        ] {
            let e = admit_node(&u, Op::Update, "n1", Some(&with(bad)), Some(&base)).unwrap_err();
            assert_eq!(
                e.message,
                format!("nodes \"n1\" is forbidden: is not allowed to modify labels: {bad}")
            );
        }
        let e = admit_node(
            &u,
            Op::Create,
            "n1",
            Some(&with("node-role.kubernetes.io/control-plane")),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains(
            "is not allowed to set the following labels: node-role.kubernetes.io/control-plane"
        ));
        let e = admit_node(&u, Op::Update, "n2", Some(&base), Some(&base)).unwrap_err();
        assert!(e
            .message
            .ends_with("node \"n1\" is not allowed to modify node \"n2\""));
    }
}
