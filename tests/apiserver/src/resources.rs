//! The resources this server serves and the discovery documents describing them.

use serde_json::{json, Value};

#[derive(Debug)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    /// Plural, as in URLs.
    pub resource: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Subresources served (`status`, `approval`, `eviction`).
    pub subresources: &'static [&'static str],
    /// Whether an update (PUT) of a missing object creates it (`AllowCreateOnUpdate`).
    pub create_on_update: bool,
    /// Whether deletes answer with the object (`ReturnDeletedObject`) instead of a Status.
    pub return_deleted: bool,
    /// Whether `metadata.generation` tracks spec changes.
    pub has_generation: bool,
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

macro_rules! res {
    ($g:expr, $v:expr, $r:expr, $s:expr, $k:expr, $ns:expr, $short:expr, $sub:expr, $cou:expr, $rd:expr, $gen:expr) => {
        ResourceDef {
            group: $g,
            version: $v,
            resource: $r,
            singular: $s,
            kind: $k,
            namespaced: $ns,
            short_names: $short,
            subresources: $sub,
            create_on_update: $cou,
            return_deleted: $rd,
            has_generation: $gen,
        }
    };
}

pub static RESOURCES: &[ResourceDef] = &[
    res!(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        &["status"],
        false,
        true,
        false
    ),
    res!(
        "",
        "v1",
        "nodes",
        "node",
        "Node",
        false,
        &["no"],
        &["status"],
        false,
        false,
        false
    ),
    res!(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        true,
        &["po"],
        &["status", "eviction"],
        false,
        true,
        true
    ),
    res!(
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        &["status"],
        false,
        true,
        false
    ),
    res!(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        &[],
        false,
        false,
        false
    ),
    res!(
        "",
        "v1",
        "secrets",
        "secret",
        "Secret",
        true,
        &[],
        &[],
        false,
        false,
        false
    ),
    res!(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        &["token"],
        false,
        true,
        false
    ),
    res!(
        "",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        &[],
        true,
        false,
        false
    ),
    res!(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
        &["status"],
        false,
        false,
        true
    ),
    res!(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        &[],
        false,
        false,
        false
    ),
    res!(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
        "certificatesigningrequest",
        "CertificateSigningRequest",
        false,
        &["csr"],
        &["approval", "status"],
        false,
        false,
        false
    ),
    res!(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        &["status"],
        false,
        false,
        true
    ),
    res!(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        &[],
        &[],
        false,
        false,
        false
    ),
    res!(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        &[],
        true,
        false,
        false
    ),
    // The RBAC registries allow create on update (pkg/registry/rbac/*/strategy.go).
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        &[],
        &[],
        true,
        false,
        false
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        &[],
        &[],
        true,
        false,
        false
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "role",
        "Role",
        true,
        &[],
        &[],
        true,
        false,
        false
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        &[],
        &[],
        true,
        false,
        false
    ),
];

pub const GROUPS: &[(&str, &str)] = &[
    ("apps", "v1"),
    ("events.k8s.io", "v1"),
    ("coordination.k8s.io", "v1"),
    ("certificates.k8s.io", "v1"),
    ("policy", "v1"),
    ("discovery.k8s.io", "v1"),
    ("authentication.k8s.io", "v1"),
    ("authorization.k8s.io", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
];

pub fn find(group: &str, version: &str, resource: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
}

pub fn by_group_resource(group: &str, resource: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.resource == resource)
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }
}

fn subresource_entry(r: &ResourceDef, sub: &str) -> Value {
    match sub {
        // kubectl drain's CheckEvictionSupport needs group, version and kind Eviction here.
        "eviction" => json!({
            "name": format!("{}/eviction", r.resource), "singularName": r.singular, "namespaced": r.namespaced,
            "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]
        }),
        // `serviceaccounts/token` answers with an authentication.k8s.io/v1 TokenRequest.
        "token" => json!({
            "name": format!("{}/token", r.resource), "singularName": "", "namespaced": r.namespaced,
            "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]
        }),
        "approval" => json!({
            "name": format!("{}/approval", r.resource), "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ["get", "patch", "update"]
        }),
        _ => json!({
            "name": format!("{}/{sub}", r.resource), "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ["get", "patch", "update"]
        }),
    }
}

/// `/api/v1` or `/apis/<group>/<version>`: an `APIResourceList`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut out = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut e = json!({
            "name": r.resource, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if matches!(r.resource, "pods" | "daemonsets" | "services") {
            e["categories"] = json!(["all"]);
        }
        out.push(e);
        for sub in r.subresources {
            out.push(subresource_entry(r, sub));
        }
    }
    out.extend(crate::reviews::discovery(group, version));
    if out.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

fn api_group(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = GROUPS.iter().map(|(g, v)| api_group(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group_doc(group: &str) -> Option<Value> {
    GROUPS.iter().find(|(g, _)| *g == group).map(|(g, v)| {
        let mut d = api_group(g, v);
        d["kind"] = json!("APIGroup");
        d["apiVersion"] = json!("v1");
        d
    })
}

pub fn version_doc() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-keel-test",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
        "platform": "linux/amd64"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_discovery_lists_eviction_with_policy_group() {
        let l = resource_list("", "v1").unwrap();
        let ev = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/eviction")
            .unwrap();
        assert_eq!(ev["group"], "policy");
        assert_eq!(ev["kind"], "Eviction");
        assert!(l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "nodes/status"));
    }
}
