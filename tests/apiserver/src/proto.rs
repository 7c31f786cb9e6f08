//! Just enough of Kubernetes' protobuf encoding (`k8s\0` + runtime.Unknown) to read the request
//! bodies kubectl sends as protobuf to this server: CSR approvals/status, Evictions, TokenRequests,
//! and the objects of `kubectl create service|namespace|configmap|secret|serviceaccount` and
//! `kubectl create role|clusterrole|rolebinding|clusterrolebinding` (k8s.io/api generated.proto).

use serde_json::{json, Map, Value};

pub(crate) enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

pub(crate) fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (num, wt) = (key >> 3, key & 7);
        match wt {
            0 => out.push((num, Field::Varint(varint(b, &mut i)?))),
            2 => {
                let len = varint(b, &mut i)? as usize;
                let s = b.get(i..i.checked_add(len)?)?;
                i += len;
                out.push((num, Field::Bytes(s)));
            }
            1 => i += 8,
            5 => i += 4,
            _ => return None,
        }
    }
    Some(out)
}

pub(crate) fn string(f: &Field) -> Value {
    match f {
        Field::Bytes(b) => json!(String::from_utf8_lossy(b)),
        Field::Varint(v) => json!(v),
    }
}

fn time(b: &[u8]) -> Value {
    let secs = fields(b).and_then(|f| {
        f.iter().find_map(|(n, v)| {
            if let (1, Field::Varint(s)) = (n, v) {
                Some(*s)
            } else {
                None
            }
        })
    });
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.unwrap_or(0));
    json!(crate::clock::rfc3339(t))
}

fn string_map(entries: &[&[u8]]) -> Value {
    let mut m = Map::new();
    for e in entries {
        let f = fields(e).unwrap_or_default();
        let k = f
            .iter()
            .find(|(n, _)| *n == 1)
            .map(|(_, v)| string(v))
            .unwrap_or(json!(""));
        let v = f
            .iter()
            .find(|(n, _)| *n == 2)
            .map(|(_, v)| string(v))
            .unwrap_or(json!(""));
        m.insert(k.as_str().unwrap_or("").to_string(), v);
    }
    Value::Object(m)
}

fn object_meta(b: &[u8]) -> Value {
    let mut m = json!({});
    let mut labels = Vec::new();
    let mut annotations = Vec::new();
    for (n, f) in fields(b).unwrap_or_default() {
        match (n, &f) {
            // proto2 encodes empty strings; JSON leaves them out (`omitempty`).
            (1, _) => set_nonempty(&mut m, "name", string(&f)),
            (2, _) => set_nonempty(&mut m, "generateName", string(&f)),
            (3, _) => set_nonempty(&mut m, "namespace", string(&f)),
            (5, _) => set_nonempty(&mut m, "uid", string(&f)),
            (6, _) => set_nonempty(&mut m, "resourceVersion", string(&f)),
            (11, Field::Bytes(e)) => labels.push(*e),
            (12, Field::Bytes(e)) => annotations.push(*e),
            (14, _) => push(&mut m, "finalizers", string(&f)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m["labels"] = string_map(&labels);
    }
    if !annotations.is_empty() {
        m["annotations"] = string_map(&annotations);
    }
    m
}

fn csr_condition(b: &[u8]) -> Value {
    let mut c = json!({});
    for (n, f) in fields(b).unwrap_or_default() {
        match (n, &f) {
            (1, _) => c["type"] = string(&f),
            (2, _) => c["reason"] = string(&f),
            (3, _) => c["message"] = string(&f),
            (4, Field::Bytes(t)) => c["lastUpdateTime"] = time(t),
            (5, Field::Bytes(t)) => c["lastTransitionTime"] = time(t),
            (6, _) => c["status"] = string(&f),
            _ => {}
        }
    }
    c
}

fn push(obj: &mut Value, key: &str, v: Value) {
    match obj[key].as_array_mut() {
        Some(a) => a.push(v),
        None => obj[key] = json!([v]),
    }
}

/// A non-pointer proto2 field is always encoded; as in JSON, empty values are left out.
fn set_nonempty(obj: &mut Value, key: &str, v: Value) {
    let empty = match &v {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        _ => false,
    };
    if !empty {
        obj[key] = v;
    }
}

fn int(f: &Field) -> Value {
    match f {
        // int32/int64 are varints; negative values arrive as 64-bit two's complement.
        Field::Varint(v) => json!(*v as i64),
        Field::Bytes(_) => json!(0),
    }
}

fn boolean(f: &Field) -> Value {
    json!(matches!(f, Field::Varint(v) if *v != 0))
}

fn bytes_map(entries: &[&[u8]]) -> Value {
    use base64::Engine;
    let mut m = Map::new();
    for e in entries {
        let f = fields(e).unwrap_or_default();
        let k = f.iter().find(|(n, _)| *n == 1).map(|(_, v)| string(v));
        let v = f.iter().find_map(|(n, v)| match (n, v) {
            (2, Field::Bytes(b)) => Some(base64::engine::general_purpose::STANDARD.encode(b)),
            _ => None,
        });
        m.insert(
            k.and_then(|k| k.as_str().map(String::from))
                .unwrap_or_default(),
            json!(v.unwrap_or_default()),
        );
    }
    Value::Object(m)
}

/// `IntOrString`: type 0 is intVal, 1 is strVal.
fn int_or_string(b: &[u8]) -> Value {
    let f = fields(b).unwrap_or_default();
    let ty = f.iter().find_map(|(n, v)| match (n, v) {
        (1, Field::Varint(t)) => Some(*t),
        _ => None,
    });
    let pick = |num: u64| f.iter().find(|(n, _)| *n == num).map(|(_, v)| v);
    match ty {
        Some(1) => pick(3).map(string).unwrap_or(json!("")),
        _ => pick(2).map(int).unwrap_or(json!(0)),
    }
}

fn service_port(b: &[u8]) -> Value {
    let mut p = json!({});
    for (n, f) in fields(b).unwrap_or_default() {
        match (n, &f) {
            (1, _) => set_nonempty(&mut p, "name", string(&f)),
            (2, _) => set_nonempty(&mut p, "protocol", string(&f)),
            (3, _) => p["port"] = int(&f),
            (4, Field::Bytes(t)) => p["targetPort"] = int_or_string(t),
            (5, _) => set_nonempty(&mut p, "nodePort", int(&f)),
            (6, _) => p["appProtocol"] = string(&f),
            _ => {}
        }
    }
    p
}

fn service_spec(b: &[u8]) -> Value {
    let mut s = json!({});
    let mut selector = Vec::new();
    for (n, f) in fields(b).unwrap_or_default() {
        match (n, &f) {
            (1, Field::Bytes(p)) => push(&mut s, "ports", service_port(p)),
            (2, Field::Bytes(e)) => selector.push(*e),
            (3, _) => set_nonempty(&mut s, "clusterIP", string(&f)),
            (4, _) => set_nonempty(&mut s, "type", string(&f)),
            (5, _) => push(&mut s, "externalIPs", string(&f)),
            (7, _) => set_nonempty(&mut s, "sessionAffinity", string(&f)),
            (8, _) => set_nonempty(&mut s, "loadBalancerIP", string(&f)),
            (9, _) => push(&mut s, "loadBalancerSourceRanges", string(&f)),
            (10, _) => set_nonempty(&mut s, "externalName", string(&f)),
            (11, _) => set_nonempty(&mut s, "externalTrafficPolicy", string(&f)),
            (12, _) => set_nonempty(&mut s, "healthCheckNodePort", int(&f)),
            (13, _) => set_nonempty(&mut s, "publishNotReadyAddresses", boolean(&f)),
            (14, Field::Bytes(c)) => {
                let timeout = fields(c)
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|(n, v)| match (n, v) {
                        (1, Field::Bytes(ip)) => fields(ip)
                            .unwrap_or_default()
                            .iter()
                            .find(|(n, _)| *n == 1)
                            .map(|(_, v)| int(v)),
                        _ => None,
                    });
                s["sessionAffinityConfig"] = match timeout {
                    Some(t) => json!({"clientIP": {"timeoutSeconds": t}}),
                    None => json!({}),
                };
            }
            (17, _) => s["ipFamilyPolicy"] = string(&f),
            (18, _) => push(&mut s, "clusterIPs", string(&f)),
            (19, _) => push(&mut s, "ipFamilies", string(&f)),
            (20, _) => s["allocateLoadBalancerNodePorts"] = boolean(&f),
            (21, _) => s["loadBalancerClass"] = string(&f),
            (22, _) => s["internalTrafficPolicy"] = string(&f),
            (23, _) => s["trafficDistribution"] = string(&f),
            _ => {}
        }
    }
    if !selector.is_empty() {
        s["selector"] = string_map(&selector);
    }
    s
}

fn service_status(b: &[u8]) -> Value {
    let mut ingress = Vec::new();
    for (n, f) in fields(b).unwrap_or_default() {
        let (1, Field::Bytes(lb)) = (n, f) else {
            continue;
        };
        for (ln, lf) in fields(lb).unwrap_or_default() {
            let (1, Field::Bytes(ing)) = (ln, lf) else {
                continue;
            };
            let mut i = json!({});
            for (inum, ifield) in fields(ing).unwrap_or_default() {
                match inum {
                    1 => set_nonempty(&mut i, "ip", string(&ifield)),
                    2 => set_nonempty(&mut i, "hostname", string(&ifield)),
                    3 => i["ipMode"] = string(&ifield),
                    _ => {}
                }
            }
            ingress.push(i);
        }
    }
    if ingress.is_empty() {
        json!({"loadBalancer": {}})
    } else {
        json!({"loadBalancer": {"ingress": ingress}})
    }
}

/// The strings of the repeated field `num` of `f`.
fn strings(f: &[(u64, Field)], num: u64) -> Vec<Value> {
    f.iter()
        .filter(|(n, _)| *n == num)
        .map(|(_, v)| string(v))
        .collect()
}

/// An object of string fields, `names[i]` being field `i + 1`; empty ones left out.
fn string_fields(b: &[u8], names: &[&str]) -> Value {
    let mut o = json!({});
    for (n, f) in fields(b).unwrap_or_default() {
        if let Some(k) = (n as usize).checked_sub(1).and_then(|i| names.get(i)) {
            set_nonempty(&mut o, k, string(&f));
        }
    }
    o
}

/// rbac/v1 `PolicyRule`.
fn policy_rule(b: &[u8]) -> Value {
    let f = fields(b).unwrap_or_default();
    let mut r = json!({});
    for (i, k) in [
        "verbs",
        "apiGroups",
        "resources",
        "resourceNames",
        "nonResourceURLs",
    ]
    .iter()
    .enumerate()
    {
        let v = strings(&f, i as u64 + 1);
        if !v.is_empty() || i == 0 {
            r[*k] = json!(v);
        }
    }
    r
}

/// authentication/v1 `TokenRequestSpec`.
fn token_request_spec(b: &[u8]) -> Value {
    let f = fields(b).unwrap_or_default();
    let mut s = json!({"audiences": strings(&f, 1)});
    for (n, v) in &f {
        match (n, v) {
            (3, Field::Bytes(r)) => {
                s["boundObjectRef"] = string_fields(r, &["kind", "apiVersion", "name", "uid"])
            }
            (4, _) => s["expirationSeconds"] = int(v),
            _ => {}
        }
    }
    s
}

/// Decodes a protobuf request body into the JSON the handlers expect (only the fields they use).
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let inner = body
        .strip_prefix(b"k8s\0")
        .ok_or("protobuf body without the k8s envelope")?;
    let env = fields(inner).ok_or("malformed protobuf envelope")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in &env {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm).unwrap_or_default() {
                    match tn {
                        1 => api_version = string(&tf).as_str().unwrap_or("").to_string(),
                        2 => kind = string(&tf).as_str().unwrap_or("").to_string(),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let top = fields(raw).ok_or("malformed protobuf object")?;
    let mut obj = json!({"apiVersion": api_version, "kind": kind});
    for (n, f) in top {
        match (kind.as_str(), n, f) {
            (_, 1, Field::Bytes(m)) => obj["metadata"] = object_meta(m),
            ("CertificateSigningRequest", 3, Field::Bytes(st)) => {
                let mut conds = Vec::new();
                for (sn, sf) in fields(st).unwrap_or_default() {
                    if let (1, Field::Bytes(c)) = (sn, sf) {
                        conds.push(csr_condition(c));
                    }
                }
                obj["status"] = json!({"conditions": conds});
            }
            ("Eviction", 2, Field::Bytes(d)) => {
                // DeleteOptions field 5 is `dryRun` (repeated string).
                let dry: Vec<Value> = fields(d)
                    .unwrap_or_default()
                    .iter()
                    .filter(|(n, _)| *n == 5)
                    .map(|(_, f)| string(f))
                    .collect();
                obj["deleteOptions"] = if dry.is_empty() {
                    json!({})
                } else {
                    json!({"dryRun": dry})
                };
            }
            ("Service", 2, Field::Bytes(sp)) => obj["spec"] = service_spec(sp),
            ("Service", 3, Field::Bytes(st)) => obj["status"] = service_status(st),
            ("Namespace", 2, Field::Bytes(sp)) => {
                let mut spec = json!({});
                for (_, f) in fields(sp).unwrap_or_default() {
                    push(&mut spec, "finalizers", string(&f));
                }
                obj["spec"] = spec;
            }
            ("Secret", 3, f) => set_nonempty(&mut obj, "type", string(&f)),
            ("ConfigMap" | "Secret", 2 | 3, Field::Bytes(e)) => {
                // ConfigMap: data (strings), binaryData (bytes); Secret: data (bytes).
                let (key, add) = match (kind.as_str(), n) {
                    ("ConfigMap", 2) => ("data", string_map(&[e])),
                    ("ConfigMap", _) => ("binaryData", bytes_map(&[e])),
                    _ => ("data", bytes_map(&[e])),
                };
                let mut m = obj[key].as_object().cloned().unwrap_or_default();
                if let Some(a) = add.as_object() {
                    m.extend(a.clone());
                }
                obj[key] = Value::Object(m);
            }
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                obj["immutable"] = json!(v != 0)
            }
            ("TokenRequest", 2, Field::Bytes(sp)) => obj["spec"] = token_request_spec(sp),
            ("ServiceAccount", 2, Field::Bytes(r)) => push(
                &mut obj,
                "secrets",
                string_fields(
                    r,
                    &[
                        "kind",
                        "namespace",
                        "name",
                        "uid",
                        "apiVersion",
                        "resourceVersion",
                        "fieldPath",
                    ],
                ),
            ),
            ("ServiceAccount", 3, Field::Bytes(r)) => {
                push(&mut obj, "imagePullSecrets", string_fields(r, &["name"]))
            }
            ("ServiceAccount", 4, f) => obj["automountServiceAccountToken"] = boolean(&f),
            ("Role" | "ClusterRole", 2, Field::Bytes(r)) => push(&mut obj, "rules", policy_rule(r)),
            ("RoleBinding" | "ClusterRoleBinding", 2, Field::Bytes(sub)) => push(
                &mut obj,
                "subjects",
                string_fields(sub, &["kind", "apiGroup", "name", "namespace"]),
            ),
            ("RoleBinding" | "ClusterRoleBinding", 3, Field::Bytes(r)) => {
                obj["roleRef"] = string_fields(r, &["apiGroup", "kind", "name"])
            }
            _ => {}
        }
    }
    if kind.is_empty() {
        return Err("protobuf body without kind".into());
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body kubectl 1.33 sends for `kubectl create service loadbalancer web --tcp=80:8080`.
    const KUBECTL_SERVICE: &str = "6b 38 73 00 0a 0d 0a 02 76 31 12 07 53 65 72 76 69 63 65 12 6c 0a 1f 0a 03 77 65 62 12 00 1a 00 22 00 2a 00 32 00 38 00 42 00 5a 0a 0a 03 61 70 70 12 03 77 65 62 12 45 0a 1b 0a 07 38 30 2d 38 30 38 30 12 03 54 43 50 18 50 22 07 08 00 10 90 3f 1a 00 28 00 12 0a 0a 03 61 70 70 12 03 77 65 62 1a 00 22 0c 4c 6f 61 64 42 61 6c 61 6e 63 65 72 3a 00 42 00 52 00 5a 00 60 00 68 00 1a 02 0a 00 1a 00 22 00";

    #[test]
    fn decodes_kubectl_create_service() {
        let body: Vec<u8> = KUBECTL_SERVICE
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        let o = decode(&body).unwrap();
        assert_eq!(o["kind"], "Service");
        assert_eq!(o["metadata"]["name"], "web");
        assert_eq!(o["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(
            o["spec"],
            json!({"type": "LoadBalancer", "selector": {"app": "web"},
                   "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}]})
        );
        assert_eq!(o["status"], json!({"loadBalancer": {}}));
    }
}
