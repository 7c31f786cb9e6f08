//! The Node authorizer (`plugin/pkg/auth/authorizer/node/node_authorizer.go`, v1.33) with
//! `AuthorizeNodeWithSelectors` (KEP-4601, on by default): nodes read only their own Node, list/watch
//! pods only with `spec.nodeName=<self>`, and get only objects related to them. The relationship
//! graph upstream keeps from informers is computed here from the store on each check: a pod is
//! related when bound to the node; a secret, configmap, PVC or service account when such a pod
//! references it.

use crate::auth::Attrs;
use crate::rbac::{rules_allow, NODE_RULES};
use crate::resources::find;
use crate::store::Store;
use serde_json::Value;

/// Node authorizer decision: `Ok(())` allows; `Err(reason)` is "no opinion" with its reason.
pub fn authorize(node: &str, a: &Attrs, store: &Store, with_selectors: bool) -> Result<(), String> {
    if a.is_resource {
        match (a.group.as_str(), a.resource.as_str()) {
            ("", "secrets") => return read_namespaced(node, Kind::Secret, a, store),
            ("", "configmaps") => return read_namespaced(node, Kind::ConfigMap, a, store),
            ("", "persistentvolumeclaims") => {
                if a.subresource == "status" {
                    if !matches!(a.verb.as_str(), "update" | "patch") {
                        return Err("can only get/update/patch this type".into());
                    }
                    return related(node, Kind::Pvc, a, store);
                }
                return get_only(node, Kind::Pvc, a, store);
            }
            ("", "persistentvolumes") => return get_only(node, Kind::Unrelated, a, store),
            ("resource.k8s.io", "resourceclaims") | ("storage.k8s.io", "volumeattachments") => {
                return get_only(node, Kind::Unrelated, a, store)
            }
            ("", "serviceaccounts") => {
                if a.verb != "create" || a.name.is_empty() {
                    return Err("can only create tokens for individual service accounts".into());
                }
                if a.subresource != "token" {
                    return Err("can only create token subresource of serviceaccount".into());
                }
                return related(node, Kind::ServiceAccount, a, store);
            }
            ("coordination.k8s.io", "leases") => return lease(node, a),
            ("storage.k8s.io", "csinodes") => return csinode(node, a),
            ("", "nodes") if with_selectors => return node_object(node, a),
            ("", "pods") if with_selectors => return pod(node, a, store),
            _ => {}
        }
    }
    if rules_allow(a, NODE_RULES) {
        Ok(())
    } else {
        Err(String::new())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Pod,
    Secret,
    ConfigMap,
    Pvc,
    ServiceAccount,
    /// Types whose graph edges come from objects this server does not serve (PVs, claims, attachments).
    Unrelated,
}

fn read_namespaced(node: &str, k: Kind, a: &Attrs, store: &Store) -> Result<(), String> {
    if !matches!(a.verb.as_str(), "get" | "list" | "watch") {
        return Err("can only read resources of this type".into());
    }
    if !a.subresource.is_empty() {
        return Err("cannot read subresource".into());
    }
    if a.namespace.is_empty() {
        return Err("can only read namespaced object of this type".into());
    }
    related(node, k, a, store)
}

fn get_only(node: &str, k: Kind, a: &Attrs, store: &Store) -> Result<(), String> {
    if a.verb != "get" {
        return Err("can only get individual resources of this type".into());
    }
    if !a.subresource.is_empty() {
        return Err("cannot get subresource".into());
    }
    related(node, k, a, store)
}

fn related(node: &str, k: Kind, a: &Attrs, store: &Store) -> Result<(), String> {
    if a.name.is_empty() {
        return Err("No Object name found".into());
    }
    if has_path(node, k, &a.namespace, &a.name, store) {
        Ok(())
    } else {
        Err(format!(
            "no relationship found between node '{node}' and this object"
        ))
    }
}

fn lease(node: &str, a: &Attrs) -> Result<(), String> {
    if !matches!(
        a.verb.as_str(),
        "get" | "create" | "update" | "patch" | "delete"
    ) {
        return Err("can only get, create, update, patch, or delete a node lease".into());
    }
    if a.namespace != "kube-node-lease" {
        return Err("can only access leases in the \"kube-node-lease\" system namespace".into());
    }
    if a.verb != "create" && a.name != node {
        return Err("can only access node lease with the same name as the requesting node".into());
    }
    Ok(())
}

fn csinode(node: &str, a: &Attrs) -> Result<(), String> {
    if !matches!(
        a.verb.as_str(),
        "get" | "create" | "update" | "patch" | "delete"
    ) {
        return Err("can only get, create, update, patch, or delete a CSINode".into());
    }
    if !a.subresource.is_empty() {
        return Err("cannot authorize CSINode subresources".into());
    }
    if a.verb != "create" && a.name != node {
        return Err("can only access CSINode with the same name as the requesting node".into());
    }
    Ok(())
}

/// `authorizeNode`: create/update/patch (NodeRestriction narrows them), read only itself.
fn node_object(node: &str, a: &Attrs) -> Result<(), String> {
    match (a.subresource.as_str(), a.verb.as_str()) {
        ("", "create" | "update" | "patch") | ("status", "update" | "patch") => Ok(()),
        ("", "get" | "list" | "watch") => {
            if a.name == node {
                Ok(())
            } else if a.name.is_empty() {
                Err(format!(
                    "node '{node}' cannot read all nodes, only its own Node object"
                ))
            } else {
                Err(format!(
                    "node '{node}' cannot read '{}', only its own Node object",
                    a.name
                ))
            }
        }
        _ => Err(String::new()),
    }
}

/// `authorizePod`.
fn pod(node: &str, a: &Attrs, store: &Store) -> Result<(), String> {
    match (a.subresource.as_str(), a.verb.as_str()) {
        ("", "get") => get_only(node, Kind::Pod, a, store),
        ("", "list" | "watch") => {
            let scoped = a
                .field_selector
                .iter()
                .any(|(f, eq, v)| f == "spec.nodeName" && *eq && v == node);
            if scoped {
                return Ok(());
            }
            if !a.name.is_empty() {
                return related(node, Kind::Pod, a, store);
            }
            Err("can only list/watch pods with spec.nodeName field selector".into())
        }
        ("", "create" | "delete") | ("status", "update" | "patch") | ("eviction", "create") => {
            Ok(())
        }
        _ => Err(String::new()),
    }
}

/// Is there a path object -> (pod ->) node in the graph upstream builds from pods?
fn has_path(node: &str, k: Kind, ns: &str, name: &str, store: &Store) -> bool {
    let Some(pods) = find("", "v1", "pods") else {
        return false;
    };
    let bound = |p: &Value| p.pointer("/spec/nodeName").and_then(|v| v.as_str()) == Some(node);
    if k == Kind::Pod {
        return store.get(pods, ns, name).is_some_and(bound);
    }
    if k == Kind::Unrelated {
        return false;
    }
    store
        .list(pods, Some(ns))
        .into_iter()
        .filter(|p| bound(p))
        .any(|p| pod_references(p, k, name))
}

/// The references `graph_populator.go` turns into edges (via `podutil.Visit*Names`).
fn pod_references(pod: &Value, k: Kind, name: &str) -> bool {
    let is = |v: Option<&Value>| v.and_then(|v| v.as_str()) == Some(name);
    let spec = &pod["spec"];
    if k == Kind::ServiceAccount {
        return is(spec.get("serviceAccountName"));
    }
    let arr = |v: &Value, key: &str| -> Vec<Value> {
        v.get(key)
            .and_then(|x| x.as_array())
            .cloned()
            .unwrap_or_default()
    };
    let volumes = arr(spec, "volumes");
    if k == Kind::Pvc {
        return volumes
            .iter()
            .any(|v| is(v.pointer("/persistentVolumeClaim/claimName")));
    }
    let (vol_key, vol_field, env_ref, projected) = match k {
        Kind::Secret => ("secret", "secretName", "secretKeyRef", "secret"),
        _ => ("configMap", "name", "configMapKeyRef", "configMap"),
    };
    if k == Kind::Secret
        && arr(spec, "imagePullSecrets")
            .iter()
            .any(|s| is(s.get("name")))
    {
        return true;
    }
    for v in &volumes {
        if is(v.get(vol_key).and_then(|x| x.get(vol_field))) {
            return true;
        }
        if arr(v.get("projected").unwrap_or(&Value::Null), "sources")
            .iter()
            .any(|s| is(s.get(projected).and_then(|x| x.get("name"))))
        {
            return true;
        }
        // Secrets named by CSI, Ceph, iSCSI ... volumes' secretRef.
        if k == Kind::Secret
            && v.as_object().is_some_and(|o| {
                o.values().any(|src| {
                    is(src.pointer("/secretRef/name"))
                        || is(src.pointer("/nodePublishSecretRef/name"))
                })
            })
        {
            return true;
        }
    }
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|c| arr(spec, c))
        .collect::<Vec<_>>();
    containers.iter().any(|c| {
        arr(c, "env")
            .iter()
            .any(|e| is(e.pointer(&format!("/valueFrom/{env_ref}/name"))))
            || arr(c, "envFrom")
                .iter()
                .any(|e| is(e.pointer(&format!("/{}Ref/name", vol_key))))
    })
}

/// Requirements of a list/watch/deletecollection request's `fieldSelector` as the authorizer sees
/// them (`(field, is_equality, value)`); an unparsable selector gives none.
pub fn request_field_selector(verb: &str, raw: Option<&str>) -> Vec<(String, bool, String)> {
    if !matches!(verb, "list" | "watch" | "deletecollection") {
        return Vec::new();
    }
    parse_field_selector(raw.unwrap_or("")).unwrap_or_default()
}

/// `fields.ParseSelector` into requirements.
pub fn parse_field_selector(s: &str) -> Option<Vec<(String, bool, String)>> {
    let mut out = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, eq, v) = if let Some((k, v)) = term.split_once("!=") {
            (k, false, v)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, true, v)
        } else {
            return None;
        };
        out.push((k.trim().to_string(), eq, v.trim().to_string()));
    }
    Some(out)
}

/// RequestInfo's name for a collection read pinned by `metadata.name=<n>` (kubelet-style watches).
pub fn name_from_field_selector(verb: &str, raw: Option<&str>) -> Option<String> {
    if !matches!(verb, "list" | "watch") {
        return None;
    }
    let reqs = parse_field_selector(raw?)?;
    let mut names = reqs
        .iter()
        .filter(|(f, eq, _)| f == "metadata.name" && *eq)
        .map(|(_, _, v)| v.clone());
    let n = names.next()?;
    // `RequiresExactMatch` plus `path.IsValidPathSegmentName`.
    let valid = !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('%');
    (names.next().is_none() && valid).then_some(n)
}
