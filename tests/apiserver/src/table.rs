//! Server-side printing (`meta.k8s.io/v1` Table), which `kubectl get` asks for, with the columns of
//! `pkg/printers/internalversion/printers.go` for the types kubectl users look at here.

use crate::clock;
use crate::resources::ResourceDef;
use serde_json::{json, Value};

pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

fn col(name: &str, ty: &str, format: &str, priority: u32) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
}

fn s<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(|v| v.as_str()).unwrap_or("")
}

fn age(o: &Value) -> String {
    clock::age_of(
        o.pointer("/metadata/creationTimestamp")
            .and_then(|v| v.as_str()),
    )
}

fn node_row(n: &Value) -> Vec<Value> {
    let ready = n
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .and_then(|c| c.iter().find(|x| x["type"] == "Ready"))
        .map(|c| {
            if c["status"] == "True" {
                "Ready"
            } else if c["status"] == "False" {
                "NotReady"
            } else {
                "Unknown"
            }
        })
        .unwrap_or("Unknown");
    let mut status = ready.to_string();
    if n.pointer("/spec/unschedulable").and_then(|v| v.as_bool()) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = Vec::new();
    if let Some(l) = n.pointer("/metadata/labels").and_then(|l| l.as_object()) {
        for (k, v) in l {
            if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                if !r.is_empty() {
                    roles.push(r.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str() {
                    roles.push(v.to_string());
                }
            }
        }
    }
    roles.sort();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let addr = |t: &str| {
        n.pointer("/status/addresses")
            .and_then(|a| a.as_array())
            .and_then(|a| a.iter().find(|x| x["type"] == t))
            .and_then(|x| x["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    let or_unknown = |v: &str| {
        if v.is_empty() {
            "<unknown>".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        json!(s(n, "/metadata/name")),
        json!(status),
        json!(roles),
        json!(age(n)),
        json!(s(n, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(or_unknown(s(n, "/status/nodeInfo/osImage"))),
        json!(or_unknown(s(n, "/status/nodeInfo/kernelVersion"))),
        json!(or_unknown(s(n, "/status/nodeInfo/containerRuntimeVersion"))),
    ]
}

fn pod_row(p: &Value) -> Vec<Value> {
    let statuses = p
        .pointer("/status/containerStatuses")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    let total = p
        .pointer("/spec/containers")
        .and_then(|c| c.as_array())
        .map(|c| c.len())
        .unwrap_or(0);
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: i64 = statuses
        .iter()
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let mut reason = s(p, "/status/phase").to_string();
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    let node = s(p, "/spec/nodeName");
    vec![
        json!(s(p, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        json!(age(p)),
        json!(if s(p, "/status/podIP").is_empty() {
            "<none>"
        } else {
            s(p, "/status/podIP")
        }),
        json!(if node.is_empty() { "<none>" } else { node }),
    ]
}

fn csr_row(c: &Value) -> Vec<Value> {
    let conds = c
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    let mut parts: Vec<String> = conds
        .iter()
        .filter_map(|x| x["type"].as_str().map(String::from))
        .collect();
    if c.pointer("/status/certificate")
        .and_then(|v| v.as_str())
        .is_some_and(|v| !v.is_empty())
    {
        parts.push("Issued".into());
    }
    let condition = if parts.is_empty() {
        "Pending".to_string()
    } else {
        parts.join(",")
    };
    let duration = c
        .pointer("/spec/expirationSeconds")
        .and_then(|v| v.as_u64())
        .map(|s| clock::human_duration(std::time::Duration::from_secs(s)))
        .unwrap_or_else(|| "<none>".into());
    vec![
        json!(s(c, "/metadata/name")),
        json!(age(c)),
        json!(s(c, "/spec/signerName")),
        json!(s(c, "/spec/username")),
        json!(duration),
        json!(condition),
    ]
}

/// `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
fn format_labels(m: Option<&Value>) -> String {
    let mut pairs: Vec<String> = m
        .and_then(|v| v.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        return "<none>".into();
    }
    pairs.sort();
    pairs.join(",")
}

fn array<'a>(o: &'a Value, ptr: &str) -> &'a [Value] {
    o.pointer(ptr)
        .and_then(|v| v.as_array())
        .map(|a| a.as_slice())
        .unwrap_or(&[])
}

/// `printService`: EXTERNAL-IP as `getServiceExternalIP` (wide, as the server always prints),
/// PORT(S) as `makePortString`.
fn service_row(o: &Value) -> Vec<Value> {
    let ips = array(o, "/spec/clusterIPs");
    let internal = ips
        .first()
        .and_then(|v| v.as_str())
        .unwrap_or("<none>")
        .to_string();
    let external_ips: Vec<String> = array(o, "/spec/externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let ty = s(o, "/spec/type");
    let external = match ty {
        "ClusterIP" | "NodePort" if !external_ips.is_empty() => external_ips.join(","),
        "ClusterIP" | "NodePort" => "<none>".to_string(),
        "LoadBalancer" => {
            let mut lb: Vec<String> = array(o, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| {
                    let ip = s(i, "/ip");
                    let host = s(i, "/hostname");
                    (!ip.is_empty())
                        .then(|| ip.to_string())
                        .or_else(|| (!host.is_empty()).then(|| host.to_string()))
                })
                .collect();
            lb.sort();
            lb.dedup();
            lb.extend(external_ips);
            if lb.is_empty() {
                "<pending>".to_string()
            } else {
                lb.join(",")
            }
        }
        "ExternalName" => s(o, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = array(o, "/spec/ports")
        .iter()
        .map(|p| {
            let port = p["port"].as_i64().unwrap_or(0);
            let proto = p["protocol"].as_str().unwrap_or("");
            match p["nodePort"].as_i64().filter(|n| *n > 0) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        json!(s(o, "/metadata/name")),
        json!(ty),
        json!(internal),
        json!(external),
        json!(ports),
        json!(age(o)),
        json!(format_labels(o.pointer("/spec/selector"))),
    ]
}

/// `listWithMoreString`: at most 3 entries, then `+ N more...`; `<unset>` when empty.
fn list_with_more(all: Vec<String>) -> String {
    const MAX: usize = 3;
    if all.len() > MAX {
        return format!("{} + {} more...", all[..MAX].join(","), all.len() - MAX);
    }
    if all.is_empty() {
        return "<unset>".into();
    }
    all.join(",")
}

/// `printEndpointSlice`.
fn endpointslice_row(o: &Value) -> Vec<Value> {
    let ports: Vec<String> = array(o, "/ports")
        .iter()
        .map(|p| match (p["port"].as_i64(), p["name"].as_str()) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) => name.to_string(),
            _ => "*".to_string(),
        })
        .collect();
    let addrs: Vec<String> = array(o, "/endpoints")
        .iter()
        .flat_map(|e| array(e, "/addresses").iter())
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    vec![
        json!(s(o, "/metadata/name")),
        json!(s(o, "/addressType")),
        json!(list_with_more(ports)),
        json!(list_with_more(addrs)),
        json!(age(o)),
    ]
}

/// `printEvent` (wide, as the server prints); events.k8s.io/v1 fields are read as their core/v1
/// conversions (regarding, note, deprecated*).
fn event_row(def: &ResourceDef, o: &Value) -> Vec<Value> {
    let core = def.group.is_empty();
    let pick = |c: &str, e: &str| if core { s(o, c) } else { s(o, e) };
    let first_ts = pick("/firstTimestamp", "/deprecatedFirstTimestamp");
    let event_time = s(o, "/eventTime");
    let first = if first_ts.is_empty() {
        clock::age_of((!event_time.is_empty()).then_some(event_time))
    } else {
        clock::age_of(Some(first_ts))
    };
    let last_ts = pick("/lastTimestamp", "/deprecatedLastTimestamp");
    let mut last = if last_ts.is_empty() {
        first.clone()
    } else {
        clock::age_of(Some(last_ts))
    };
    let count_field = if core { "/count" } else { "/deprecatedCount" };
    let mut count = o.pointer(count_field).and_then(|v| v.as_i64()).unwrap_or(0);
    if let Some(series) = o.get("series").filter(|v| v.is_object()) {
        let seen = s(series, "/lastObservedTime");
        last = clock::age_of((!seen.is_empty()).then_some(seen));
        count = series["count"].as_i64().unwrap_or(0);
    } else if count == 0 {
        count = 1;
    }
    let obj = if core {
        "/involvedObject"
    } else {
        "/regarding"
    };
    let kind = s(o, &format!("{obj}/kind")).to_lowercase();
    let name = s(o, &format!("{obj}/name"));
    let target = if name.is_empty() {
        kind
    } else {
        format!("{kind}/{name}")
    };
    let src = if core { "/source" } else { "/deprecatedSource" };
    let first_non_empty = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            a.to_string()
        }
    };
    let component = first_non_empty(
        s(o, &format!("{src}/component")),
        s(o, "/reportingController"),
    );
    let instance = first_non_empty(s(o, &format!("{src}/host")), s(o, "/reportingInstance"));
    let source = if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last),
        json!(s(o, "/type")),
        json!(s(o, "/reason")),
        json!(target),
        json!(s(o, &format!("{obj}/fieldPath"))),
        json!(source),
        json!(pick("/message", "/note").trim()),
        json!(first),
        json!(count),
        json!(s(o, "/metadata/name")),
    ]
}

/// `printPodDisruptionBudget`: IntOrString values as given, `N/A` when unset.
fn pdb_row(o: &Value) -> Vec<Value> {
    let ios = |ptr: &str| match o.pointer(ptr) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(v)) => v.clone(),
        _ => "N/A".to_string(),
    };
    vec![
        json!(s(o, "/metadata/name")),
        json!(ios("/spec/minAvailable")),
        json!(ios("/spec/maxUnavailable")),
        json!(o
            .pointer("/status/disruptionsAllowed")
            .and_then(|v| v.as_i64())
            .unwrap_or(0)),
        json!(age(o)),
    ]
}

/// `printRoleBinding`/`printClusterRoleBinding`: `Kind/name` of the role, then the subjects by kind
/// (`rbac.SubjectsStrings`; service accounts as `namespace/name`).
fn binding_row(o: &Value) -> Vec<Value> {
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for sub in array(o, "/subjects") {
        let name = s(sub, "/name").to_string();
        match s(sub, "/kind") {
            "ServiceAccount" => sas.push(format!("{}/{name}", s(sub, "/namespace"))),
            "User" => users.push(name),
            "Group" => groups.push(name),
            _ => {}
        }
    }
    vec![
        json!(s(o, "/metadata/name")),
        json!(format!(
            "{}/{}",
            s(o, "/roleRef/kind"),
            s(o, "/roleRef/name")
        )),
        json!(age(o)),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(sas.join(", ")),
    ]
}

fn columns(def: &ResourceDef) -> Vec<Value> {
    match def.resource {
        "roles" | "clusterroles" => vec![
            col("Name", "string", "name", 0),
            col("Created At", "date", "", 0),
        ],
        "rolebindings" | "clusterrolebindings" => vec![
            col("Name", "string", "name", 0),
            col("Role", "string", "", 0),
            col("Age", "string", "", 0),
            col("Users", "string", "", 1),
            col("Groups", "string", "", 1),
            col("ServiceAccounts", "string", "", 1),
        ],
        "serviceaccounts" => vec![
            col("Name", "string", "name", 0),
            col("Secrets", "string", "", 0),
            col("Age", "string", "", 0),
        ],
        "services" => vec![
            col("Name", "string", "name", 0),
            col("Type", "string", "", 0),
            col("Cluster-IP", "string", "", 0),
            col("External-IP", "string", "", 0),
            col("Port(s)", "string", "", 0),
            col("Age", "string", "", 0),
            col("Selector", "string", "", 1),
        ],
        "endpointslices" => vec![
            col("Name", "string", "name", 0),
            col("AddressType", "string", "", 0),
            col("Ports", "string", "", 0),
            col("Endpoints", "string", "", 0),
            col("Age", "string", "", 0),
        ],
        "events" => vec![
            col("Last Seen", "string", "", 0),
            col("Type", "string", "", 0),
            col("Reason", "string", "", 0),
            col("Object", "string", "", 0),
            col("Subobject", "string", "", 1),
            col("Source", "string", "", 1),
            col("Message", "string", "", 0),
            col("First Seen", "string", "", 1),
            col("Count", "string", "", 1),
            col("Name", "string", "name", 1),
        ],
        "leases" => vec![
            col("Name", "string", "name", 0),
            col("Holder", "string", "", 0),
            col("Age", "string", "", 0),
        ],
        "poddisruptionbudgets" => vec![
            col("Name", "string", "name", 0),
            col("Min Available", "string", "", 0),
            col("Max Unavailable", "string", "", 0),
            col("Allowed Disruptions", "integer", "", 0),
            col("Age", "string", "", 0),
        ],
        "namespaces" => vec![
            col("Name", "string", "name", 0),
            col("Status", "string", "", 0),
            col("Age", "string", "", 0),
        ],
        "nodes" => vec![
            col("Name", "string", "name", 0),
            col("Status", "string", "", 0),
            col("Roles", "string", "", 0),
            col("Age", "string", "", 0),
            col("Version", "string", "", 0),
            col("Internal-IP", "string", "", 1),
            col("External-IP", "string", "", 1),
            col("OS-Image", "string", "", 1),
            col("Kernel-Version", "string", "", 1),
            col("Container-Runtime", "string", "", 1),
        ],
        "pods" => vec![
            col("Name", "string", "name", 0),
            col("Ready", "string", "", 0),
            col("Status", "string", "", 0),
            col("Restarts", "string", "", 0),
            col("Age", "string", "", 0),
            col("IP", "string", "", 1),
            col("Node", "string", "", 1),
        ],
        "certificatesigningrequests" => vec![
            col("Name", "string", "name", 0),
            col("Age", "string", "", 0),
            col("SignerName", "string", "", 0),
            col("Requestor", "string", "", 0),
            col("RequestedDuration", "string", "", 0),
            col("Condition", "string", "", 0),
        ],
        _ => vec![col("Name", "string", "name", 0), col("Age", "date", "", 0)],
    }
}

fn cells(def: &ResourceDef, o: &Value) -> Vec<Value> {
    match def.resource {
        // `CreationTimestamp.Time.UTC().Format(time.RFC3339)`, which is how it is stored.
        "roles" | "clusterroles" => vec![
            json!(s(o, "/metadata/name")),
            json!(s(o, "/metadata/creationTimestamp")),
        ],
        "rolebindings" | "clusterrolebindings" => binding_row(o),
        "serviceaccounts" => vec![
            json!(s(o, "/metadata/name")),
            json!(array(o, "/secrets").len()),
            json!(age(o)),
        ],
        "services" => service_row(o),
        "endpointslices" => endpointslice_row(o),
        "events" => event_row(def, o),
        "leases" => vec![
            json!(s(o, "/metadata/name")),
            json!(s(o, "/spec/holderIdentity")),
            json!(age(o)),
        ],
        "poddisruptionbudgets" => pdb_row(o),
        "namespaces" => vec![
            json!(s(o, "/metadata/name")),
            json!(s(o, "/status/phase")),
            json!(age(o)),
        ],
        "nodes" => node_row(o),
        "pods" => pod_row(o),
        "certificatesigningrequests" => csr_row(o),
        _ => vec![json!(s(o, "/metadata/name")), json!(age(o))],
    }
}

/// Table of `objs`; each row carries the object's metadata (`includeObject=Metadata`, the default).
pub fn to_table(def: &ResourceDef, objs: &[&Value], rv: &str, include_object: &str) -> Value {
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let object = match include_object {
                "None" => Value::Null,
                "Object" => (*o).clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()}),
            };
            json!({"cells": cells(def, o), "object": object})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns(def),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn service_and_endpointslice_cells_match_printers() {
        let svcs = find("", "v1", "services").unwrap();
        let lb = json!({"metadata": {"name": "web", "creationTimestamp": clock::now_rfc3339()},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.10"], "selector": {"b": "2", "a": "1"},
                     "ports": [{"port": 80, "nodePort": 31234, "protocol": "TCP"},
                               {"port": 53, "nodePort": 30053, "protocol": "UDP"}]},
            "status": {"loadBalancer": {}}});
        let row = cells(svcs, &lb);
        assert_eq!(row[1], "LoadBalancer");
        assert_eq!(row[2], "10.96.0.10");
        assert_eq!(row[3], "<pending>");
        assert_eq!(row[4], "80:31234/TCP,53:30053/UDP");
        assert_eq!(row[6], "a=1,b=2");
        let mut ready = lb.clone();
        ready["status"]["loadBalancer"]["ingress"] =
            json!([{"ip": "192.0.2.7"}, {"hostname": "lb.example"}]);
        assert_eq!(cells(svcs, &ready)[3], "192.0.2.7,lb.example");
        let headless = json!({"metadata": {"name": "h"}, "spec": {"type": "ClusterIP", "clusterIPs": ["None"]}});
        let row = cells(svcs, &headless);
        assert_eq!(
            (
                row[2].as_str(),
                row[3].as_str(),
                row[4].as_str(),
                row[6].as_str()
            ),
            (Some("None"), Some("<none>"), Some("<none>"), Some("<none>"))
        );
        let eps = find("discovery.k8s.io", "v1", "endpointslices").unwrap();
        let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4",
            "ports": [{"port": 8080}, {"name": "dns"}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]});
        let row = cells(eps, &slice);
        assert_eq!(row[2], "8080,dns");
        assert_eq!(row[3], "10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...");
        assert_eq!(
            cells(eps, &json!({"metadata": {"name": "e"}}))[3],
            "<unset>"
        );
    }
}
