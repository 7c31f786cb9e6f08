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

fn columns(def: &ResourceDef) -> Vec<Value> {
    match def.resource {
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
