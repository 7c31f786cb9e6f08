//! Just enough of Kubernetes' protobuf encoding (`k8s\0` + runtime.Unknown) to read the request
//! bodies kubectl sends as protobuf to this server: CSR approvals/status and Evictions.

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
            (1, _) => m["name"] = string(&f),
            (2, _) => m["generateName"] = string(&f),
            (3, _) => m["namespace"] = string(&f),
            (5, _) => m["uid"] = string(&f),
            (6, _) => m["resourceVersion"] = string(&f),
            (11, Field::Bytes(e)) => labels.push(*e),
            (12, Field::Bytes(e)) => annotations.push(*e),
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
            _ => {}
        }
    }
    if kind.is_empty() {
        return Err("protobuf body without kind".into());
    }
    Ok(obj)
}
