//! Server-side field validation (KEP-2885, the `fieldValidation` query parameter).
//!
//! Upstream decodes request bodies into Go structs, so fields the type does not declare are dropped
//! in every mode; the directive only decides whether that is silent (`Ignore`), a `Warning` header
//! per field (`Warn`, the default), or a 400 (`Strict`). Here the object is walked against the
//! OpenAPI schema of its kind (`openapi`), which is what those structs are generated from.

use crate::openapi;
use crate::resources::ResourceDef;
use crate::status::ApiError;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Directive {
    Ignore,
    Warn,
    Strict,
}

/// `Unsupported value` cause of `{Create,Update,Patch}Options` validation.
pub(crate) fn unsupported(options: &str, field: &str, value: &str, supported: &str) -> ApiError {
    let msg = format!("Unsupported value: {value}: supported values: {supported}");
    ApiError {
        details: Some(json!({"group": "meta.k8s.io", "kind": options,
            "causes": [{"reason": "FieldValueNotSupported", "message": msg, "field": field}]})),
        ..ApiError::new(
            422,
            "Invalid",
            format!("{options}.meta.k8s.io \"\" is invalid: {field}: {msg}"),
        )
    }
}

/// The request's directive (`fieldValidation`; upstream's default is `Warn`). `options` names the
/// options kind for the error (`CreateOptions`, `UpdateOptions`, `PatchOptions`).
pub fn directive(q: &HashMap<String, String>, options: &str) -> Result<Directive, ApiError> {
    match q.get("fieldValidation").map(|s| s.as_str()).unwrap_or("") {
        "" | "Warn" => Ok(Directive::Warn),
        "Ignore" => Ok(Directive::Ignore),
        "Strict" => Ok(Directive::Strict),
        other => Err(unsupported(
            options,
            "fieldValidation",
            &format!("{other:?}"),
            "\"\", \"Ignore\", \"Strict\", \"Warn\"",
        )),
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn walk(v: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    let schema = openapi::resolve(schema).unwrap_or(schema);
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(|x| x.as_bool())
        == Some(true)
    {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(|p| p.as_object());
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && extra.is_none() {
                // No declared shape (RawExtension, FieldsV1): Go keeps whatever is there.
                return;
            }
            let mut drop = Vec::new();
            for (k, child) in m.iter_mut() {
                let p = join(path, k);
                match props.and_then(|ps| ps.get(k)).or(extra) {
                    Some(s) => walk(child, s, &p, unknown),
                    None => {
                        unknown.push(p);
                        drop.push(k.clone());
                    }
                }
            }
            for k in drop {
                m.remove(&k);
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, x) in a.iter_mut().enumerate() {
                    walk(x, items, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Removes the fields the kind's schema does not declare and returns their paths (`spec.foo`,
/// `spec.taints[0].foo`), in the order sigs.k8s.io/json reports them.
pub fn prune_unknown(def: &ResourceDef, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    let Some(name) = openapi::definition_for(&def.api_version(), def.kind) else {
        return unknown;
    };
    let Some(schema) = openapi::definitions().defs.get(name) else {
        return unknown;
    };
    walk(obj, schema, "", &mut unknown);
    unknown
}

/// Paths of keys repeated within one JSON object of `body` (Go's decoder keeps the last one).
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    struct Seed<'a> {
        path: String,
        out: &'a RefCell<Vec<String>>,
    }
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(k) = m.next_key::<String>()? {
                let p = join(&self.path, &k);
                if !seen.insert(k) {
                    self.out.borrow_mut().push(p.clone());
                }
                m.next_value_seed(Seed {
                    path: p,
                    out: self.out,
                })?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            let mut i = 0;
            while s
                .next_element_seed(Seed {
                    path: format!("{}[{i}]", self.path),
                    out: self.out,
                })?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let out = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = Seed {
        path: String::new(),
        out: &out,
    }
    .deserialize(&mut de);
    out.into_inner()
}

/// Which request shape failed, for upstream's error wording.
pub enum Stage {
    /// create/update: handlers' `transformDecodeError`.
    Decode,
    /// JSON/merge/strategic patches: the unstructured converter's strict error as is.
    Patch,
}

/// Applies the directive to `obj` (unknown fields always dropped). `body` is the raw request body
/// when it is the object itself (duplicate keys are only visible there). Returns the warnings.
pub fn check(
    d: Directive,
    def: &ResourceDef,
    obj: &mut Value,
    body: Option<&[u8]>,
    stage: Stage,
) -> Result<Vec<String>, ApiError> {
    let mut errs: Vec<String> = prune_unknown(def, obj)
        .into_iter()
        .map(|p| format!("unknown field {p:?}"))
        .collect();
    if d != Directive::Ignore {
        if let Some(b) = body.filter(|b| b.first() == Some(&b'{')) {
            errs.extend(
                duplicate_fields(b)
                    .into_iter()
                    .map(|p| format!("duplicate field {p:?}")),
            );
        }
    }
    match d {
        Directive::Ignore => Ok(Vec::new()),
        Directive::Warn => Ok(errs),
        Directive::Strict if errs.is_empty() => Ok(Vec::new()),
        Directive::Strict => {
            let strict = format!("strict decoding error: {}", errs.join(", "));
            Err(ApiError::bad_request(match stage {
                Stage::Decode => format!(
                    "{} in version {:?} cannot be handled as a {}: {strict}",
                    def.kind, def.version, def.kind
                ),
                Stage::Patch => strict,
            }))
        }
    }
}

/// Server-side apply converts the applied configuration to the typed schema, which refuses
/// undeclared fields whatever the directive (structured-merge-diff; upstream answers 500 without a
/// reason, kubernetes/kubernetes#122480).
pub fn check_apply(
    def: &ResourceDef,
    ns: &str,
    name: &str,
    cfg: &mut Value,
) -> Result<(), ApiError> {
    let unknown = prune_unknown(def, cfg);
    if unknown.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = unknown
        .iter()
        .map(|p| format!(".{p}: field not declared in schema"))
        .collect();
    let detail = if lines.len() == 1 {
        lines[0].clone()
    } else {
        format!("errors:\n  {}", lines.join("\n  "))
    };
    let gv = if def.group.is_empty() {
        format!("/{}", def.version)
    } else {
        format!("{}/{}", def.group, def.version)
    };
    Err(ApiError::new(
        500,
        "",
        format!(
            "failed to create typed patch object ({ns}/{name}; {gv}, Kind={}): {detail}",
            def.kind
        ),
    ))
}

/// `Warning` header value (RFC 7234 as k8s.io/apiserver/pkg/endpoints/warning writes it).
pub fn warning_header(text: &str) -> String {
    format!(
        "299 - \"{}\"",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    #[test]
    fn unknown_fields_are_found_and_dropped_maps_and_raw_kept() {
        let node = resources::find("", "v1", "nodes").unwrap();
        let mut o = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "labels": {"any": "thing"}, "bogus": 1},
            "spec": {"foo": true, "taints": [{"key": "k", "effect": "NoSchedule", "bar": 1}]},
            "status": {"capacity": {"cpu": "1"}}});
        let u = prune_unknown(node, &mut o);
        assert_eq!(u, vec!["metadata.bogus", "spec.foo", "spec.taints[0].bar"]);
        assert_eq!(
            o["spec"],
            json!({"taints": [{"key": "k", "effect": "NoSchedule"}]})
        );
        assert_eq!(o["metadata"]["labels"]["any"], "thing");
        assert_eq!(o["status"]["capacity"]["cpu"], "1");
    }

    #[test]
    fn duplicates_and_strict_wording() {
        assert_eq!(
            duplicate_fields(
                br#"{"metadata": {"name": "a", "name": "b"}, "x": [{"y": 1, "y": 2}]}"#
            ),
            vec!["metadata.name", "x[0].y"]
        );
        let node = resources::find("", "v1", "nodes").unwrap();
        let mut o = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "spec": {"foo": 1}});
        let e = check(Directive::Strict, node, &mut o, None, Stage::Decode).unwrap_err();
        assert_eq!(
            e.message,
            "Node in version \"v1\" cannot be handled as a Node: strict decoding error: unknown field \"spec.foo\""
        );
        assert_eq!(
            warning_header("unknown field \"spec.foo\""),
            r#"299 - "unknown field \"spec.foo\"""#
        );
    }
}
