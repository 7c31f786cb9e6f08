//! The protobuf form of `/openapi/v2`: gnostic's `openapi_v2.Document` (github.com/google/gnostic-models
//! openapiv2/OpenAPIv2.proto), which client-go's discovery `OpenAPISchema()` asks for. A hand
//! encoder of the messages a Kubernetes swagger document uses, from its JSON form; extension and
//! default values are `Any{yaml}` as gnostic writes them (JSON is valid YAML).

use serde_json::{Map, Value};

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, 2);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn string(buf: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        bytes(buf, field, s.as_bytes());
    }
}

fn boolean(buf: &mut Vec<u8>, field: u32, b: bool) {
    if b {
        key(buf, field, 0);
        varint(buf, 1);
    }
}

fn int64(buf: &mut Vec<u8>, field: u32, v: i64) {
    if v != 0 {
        key(buf, field, 0);
        varint(buf, v as u64);
    }
}

fn double(buf: &mut Vec<u8>, field: u32, v: f64) {
    if v != 0.0 {
        key(buf, field, 1);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn message(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes(buf, field, &inner);
}

fn s<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(|v| v.as_str()).unwrap_or("")
}

fn strings(buf: &mut Vec<u8>, field: u32, v: Option<&Value>) {
    for x in v.and_then(|v| v.as_array()).into_iter().flatten() {
        if let Some(x) = x.as_str() {
            bytes(buf, field, x.as_bytes());
        }
    }
}

/// `Any { yaml = 2 }`.
fn any(buf: &mut Vec<u8>, field: u32, v: &Value) {
    let yaml = serde_json::to_string(v).unwrap_or_default();
    message(buf, field, |b| string(b, 2, &yaml));
}

/// `repeated NamedAny vendor_extension` from the `x-` keys.
fn extensions(buf: &mut Vec<u8>, field: u32, m: &Map<String, Value>) {
    for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
        message(buf, field, |b| {
            string(b, 1, k);
            any(b, 2, v);
        });
    }
}

fn schema(buf: &mut Vec<u8>, v: &Value) {
    let Some(m) = v.as_object() else {
        return;
    };
    string(buf, 1, s(m, "$ref"));
    string(buf, 2, s(m, "format"));
    string(buf, 3, s(m, "title"));
    string(buf, 4, s(m, "description"));
    if let Some(d) = m.get("default") {
        any(buf, 5, d);
    }
    let f = |k: &str| m.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let i = |k: &str| m.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
    let b = |k: &str| m.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    double(buf, 6, f("multipleOf"));
    double(buf, 7, f("maximum"));
    boolean(buf, 8, b("exclusiveMaximum"));
    double(buf, 9, f("minimum"));
    boolean(buf, 10, b("exclusiveMinimum"));
    int64(buf, 11, i("maxLength"));
    int64(buf, 12, i("minLength"));
    string(buf, 13, s(m, "pattern"));
    int64(buf, 14, i("maxItems"));
    int64(buf, 15, i("minItems"));
    boolean(buf, 16, b("uniqueItems"));
    int64(buf, 17, i("maxProperties"));
    int64(buf, 18, i("minProperties"));
    strings(buf, 19, m.get("required"));
    for e in m
        .get("enum")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        any(buf, 20, e);
    }
    match m.get("additionalProperties") {
        Some(Value::Bool(x)) => message(buf, 21, |b| {
            key(b, 2, 0);
            varint(b, u64::from(*x));
        }),
        Some(a @ Value::Object(_)) => message(buf, 21, |b| message(b, 1, |b| schema(b, a))),
        _ => {}
    }
    match m.get("type") {
        Some(Value::String(t)) => message(buf, 22, |b| string(b, 1, t)),
        Some(t @ Value::Array(_)) => message(buf, 22, |b| strings(b, 1, Some(t))),
        _ => {}
    }
    if let Some(items) = m.get("items") {
        message(buf, 23, |b| match items {
            Value::Array(a) => a.iter().for_each(|x| message(b, 1, |b| schema(b, x))),
            x => message(b, 1, |b| schema(b, x)),
        });
    }
    for x in m
        .get("allOf")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        message(buf, 24, |b| schema(b, x));
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        message(buf, 25, |b| {
            for (k, p) in props {
                message(b, 1, |b| {
                    string(b, 1, k);
                    message(b, 2, |b| schema(b, p));
                });
            }
        });
    }
    boolean(buf, 27, b("readOnly"));
    if let Some(e) = m.get("example") {
        any(buf, 30, e);
    }
    extensions(buf, 31, m);
}

/// `ParametersItem { Parameter parameter = 1 }`.
fn parameter(buf: &mut Vec<u8>, p: &Value) {
    let Some(m) = p.as_object() else {
        return;
    };
    message(buf, 1, |b| {
        if s(m, "in") == "body" {
            message(b, 1, |b| {
                string(b, 1, s(m, "description"));
                string(b, 2, s(m, "name"));
                string(b, 3, "body");
                boolean(
                    b,
                    4,
                    m.get("required").and_then(|v| v.as_bool()) == Some(true),
                );
                if let Some(sc) = m.get("schema") {
                    message(b, 5, |b| schema(b, sc));
                }
                extensions(b, 6, m);
            });
            return;
        }
        // NonBodyParameter: header = 1, formData = 2, query = 3, path = 4. Query and formData
        // sub-schemas carry allow_empty_value (5), shifting the rest by one.
        let (which, shifted) = match s(m, "in") {
            "header" => (1, false),
            "formData" => (2, true),
            "path" => (4, false),
            _ => (3, true),
        };
        message(b, 2, |b| {
            message(b, which, |b| {
                boolean(
                    b,
                    1,
                    m.get("required").and_then(|v| v.as_bool()) == Some(true),
                );
                string(b, 2, s(m, "in"));
                string(b, 3, s(m, "description"));
                string(b, 4, s(m, "name"));
                let o = u32::from(shifted);
                string(b, 5 + o, s(m, "type"));
                string(b, 6 + o, s(m, "format"));
                boolean(
                    b,
                    19 + o,
                    m.get("uniqueItems").and_then(|v| v.as_bool()) == Some(true),
                );
                extensions(b, 22 + o, m);
            });
        });
    });
}

fn operation(buf: &mut Vec<u8>, op: &Value) {
    let Some(m) = op.as_object() else {
        return;
    };
    strings(buf, 1, m.get("tags"));
    string(buf, 2, s(m, "summary"));
    string(buf, 3, s(m, "description"));
    string(buf, 5, s(m, "operationId"));
    strings(buf, 6, m.get("produces"));
    strings(buf, 7, m.get("consumes"));
    for p in m
        .get("parameters")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        message(buf, 8, |b| parameter(b, p));
    }
    if let Some(Value::Object(rs)) = m.get("responses") {
        message(buf, 9, |b| {
            for (code, r) in rs {
                let Some(r) = r.as_object() else { continue };
                // NamedResponseValue { name, ResponseValue { Response response = 1 } }
                message(b, 1, |b| {
                    string(b, 1, code);
                    message(b, 2, |b| {
                        message(b, 1, |b| {
                            string(b, 1, s(r, "description"));
                            if let Some(sc) = r.get("schema") {
                                message(b, 2, |b| message(b, 1, |b| schema(b, sc)));
                            }
                        });
                    });
                });
            }
        });
    }
    strings(buf, 10, m.get("schemes"));
    boolean(
        buf,
        11,
        m.get("deprecated").and_then(|v| v.as_bool()) == Some(true),
    );
    extensions(buf, 13, m);
}

fn path_item(buf: &mut Vec<u8>, item: &Map<String, Value>) {
    for (method, field) in [
        ("get", 2),
        ("put", 3),
        ("post", 4),
        ("delete", 5),
        ("options", 6),
        ("head", 7),
        ("patch", 8),
    ] {
        if let Some(op) = item.get(method) {
            message(buf, field, |b| operation(b, op));
        }
    }
    for p in item
        .get("parameters")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        message(buf, 9, |b| parameter(b, p));
    }
    extensions(buf, 10, item);
}

/// Encodes a swagger 2.0 document (as `openapi::v2_document` builds it).
pub fn encode_v2(doc: &Value) -> Vec<u8> {
    let mut buf = Vec::new();
    let Some(m) = doc.as_object() else {
        return buf;
    };
    string(&mut buf, 1, s(m, "swagger"));
    if let Some(Value::Object(info)) = m.get("info") {
        message(&mut buf, 2, |b| {
            string(b, 1, s(info, "title"));
            string(b, 2, s(info, "version"));
            string(b, 3, s(info, "description"));
        });
    }
    if let Some(Value::Object(paths)) = m.get("paths") {
        message(&mut buf, 8, |b| {
            for (p, item) in paths {
                let Some(item) = item.as_object() else {
                    continue;
                };
                message(b, 2, |b| {
                    string(b, 1, p);
                    message(b, 2, |b| path_item(b, item));
                });
            }
        });
    }
    if let Some(Value::Object(defs)) = m.get("definitions") {
        message(&mut buf, 9, |b| {
            for (name, sc) in defs {
                message(b, 1, |b| {
                    string(b, 1, name);
                    message(b, 2, |b| schema(b, sc));
                });
            }
        });
    }
    for req in m
        .get("security")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let Some(req) = req.as_object() else { continue };
        message(&mut buf, 12, |b| {
            for (name, scopes) in req {
                message(b, 1, |b| {
                    string(b, 1, name);
                    message(b, 2, |b| strings(b, 1, Some(scopes)));
                });
            }
        });
    }
    if let Some(Value::Object(defs)) = m.get("securityDefinitions") {
        message(&mut buf, 13, |b| {
            for (name, d) in defs {
                let Some(d) = d.as_object() else { continue };
                message(b, 1, |b| {
                    string(b, 1, name);
                    // SecurityDefinitionsItem { ApiKeySecurity api_key_security = 2 }
                    message(b, 2, |b| {
                        message(b, 2, |b| {
                            string(b, 1, s(d, "type"));
                            string(b, 2, s(d, "name"));
                            string(b, 3, s(d, "in"));
                            string(b, 4, s(d, "description"));
                        });
                    });
                });
            }
        });
    }
    buf
}
