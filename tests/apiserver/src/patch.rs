//! JSON merge patch (RFC 7386), strategic merge patch (the subset of Kubernetes' patch strategies that
//! Keel, kubelet and kubectl produce for the served types), and JSON patch (RFC 6902).

use crate::patch_meta;
use serde_json::{Map, Value};

#[derive(Debug, PartialEq)]
enum ListStrategy {
    Replace,
    MergeKey(&'static str),
    MergePrimitive,
}

/// Patch metadata of the field at `path` (field names from the object root) of an object of
/// definition `root`, from `patch_meta` (upstream's struct tags) through the OpenAPI schema.
fn field_meta(root: Option<&str>, path: &[String]) -> Option<&'static patch_meta::FieldMeta> {
    let owner = crate::openapi::owner_of(root?, path)?;
    patch_meta::lookup(&owner, path.last()?)
}

fn strategy(root: Option<&str>, path: &[String]) -> ListStrategy {
    match field_meta(root, path) {
        Some(m) if m.patch_strategy.split(',').any(|s| s == "merge") => {
            if m.merge_key.is_empty() {
                ListStrategy::MergePrimitive
            } else {
                ListStrategy::MergeKey(m.merge_key)
            }
        }
        _ => ListStrategy::Replace,
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("{0}")]
    Invalid(String),
    #[error("the server rejected our request due to an error in our request: {0}")]
    Test(String),
}

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Strategic merge patch of `patch` onto `target`.
/// The list strategies come from the target's kind (`apiVersion`/`kind`); lists of unknown kinds
/// are replaced.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let s = |k: &str| target.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let root = crate::openapi::definition_for(s("apiVersion"), s("kind"));
    let mut path = Vec::new();
    smp_object(target, patch, root, &mut path)
}

fn smp_object(
    target: &mut Value,
    patch: &Value,
    root: Option<&str>,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if p.get("$patch").and_then(|v| v.as_str()) == Some("replace") {
        let mut m = p.clone();
        m.remove("$patch");
        *target = Value::Object(m);
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    for (k, v) in p {
        if k == "$patch" || k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (t.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        match v {
            // `patchStrategy:"replace"` (e.g. PodDisruptionBudgetSpec.selector): no merging inside.
            Value::Object(_)
                if field_meta(root, path).is_some_and(|m| m.patch_strategy == "replace") =>
            {
                t.insert(k.clone(), v.clone());
            }
            Value::Object(_) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                smp_object(entry, v, root, path)?;
            }
            Value::Array(items) => {
                let entry = t.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                smp_list(entry, items, root, path)?;
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
        path.pop();
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(|v| v.as_str()).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn smp_list(
    target: &mut Value,
    items: &[Value],
    root: Option<&str>,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(|v| v.as_str()) == Some("replace"))
    {
        *target = Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect(),
        );
        return Ok(());
    }
    match strategy(root, path) {
        ListStrategy::Replace => *target = Value::Array(items.to_vec()),
        ListStrategy::MergePrimitive => {
            if !target.is_array() {
                *target = Value::Array(Vec::new());
            }
            if let Value::Array(t) = target {
                for i in items {
                    if !t.contains(i) {
                        t.push(i.clone());
                    }
                }
            }
        }
        ListStrategy::MergeKey(key) => {
            if !target.is_array() {
                *target = Value::Array(Vec::new());
            }
            let Value::Array(t) = target else {
                return Ok(());
            };
            for item in items {
                let Some(kv) = item.get(key) else {
                    return Err(PatchError::Invalid(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                let pos = t.iter().position(|x| x.get(key) == Some(kv));
                if item.get("$patch").and_then(|v| v.as_str()) == Some("delete") {
                    t.retain(|x| x.get(key) != Some(kv));
                    continue;
                }
                match pos {
                    Some(i) => smp_object(&mut t[i], item, root, path)?,
                    None => {
                        let mut fresh = Value::Object(Map::new());
                        smp_object(&mut fresh, item, root, path)?;
                        t.push(fresh);
                    }
                }
            }
        }
    }
    Ok(())
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(ptr: &str) -> Result<(String, String), PatchError> {
    if ptr.is_empty() {
        return Err(PatchError::Invalid("empty JSON pointer".into()));
    }
    let idx = ptr
        .rfind('/')
        .ok_or_else(|| PatchError::Invalid(format!("invalid JSON pointer {ptr:?}")))?;
    Ok((ptr[..idx].to_string(), unescape(&ptr[idx + 1..])))
}

fn json_add(doc: &mut Value, ptr: &str, val: Value) -> Result<(), PatchError> {
    let (parent, last) = split_pointer(ptr)?;
    let p = doc.pointer_mut(&parent).ok_or_else(|| {
        PatchError::Invalid(format!(
            "add operation does not apply: doc is missing path: {ptr:?}"
        ))
    })?;
    match p {
        Value::Object(m) => {
            m.insert(last, val);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(val);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| PatchError::Invalid(format!("invalid index {last:?}")))?;
                if i > a.len() {
                    return Err(PatchError::Invalid(format!(
                        "add operation does not apply: index out of range: {ptr:?}"
                    )));
                }
                a.insert(i, val);
            }
        }
        _ => {
            return Err(PatchError::Invalid(format!(
                "add operation does not apply: doc is missing path: {ptr:?}"
            )))
        }
    }
    Ok(())
}

fn json_remove(doc: &mut Value, ptr: &str) -> Result<Value, PatchError> {
    let (parent, last) = split_pointer(ptr)?;
    let missing = || {
        PatchError::Invalid(format!(
            "remove operation does not apply: doc is missing path: {ptr:?}"
        ))
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

/// RFC 6902.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| PatchError::Invalid("json patch must be an array of operations".into()))?;
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| PatchError::Invalid("operation missing path".into()))?;
        match op["op"].as_str().unwrap_or("") {
            "add" => json_add(doc, path, op["value"].clone())?,
            "remove" => {
                json_remove(doc, path)?;
            }
            "replace" => {
                json_remove(doc, path)?;
                json_add(doc, path, op["value"].clone())?;
            }
            "move" => {
                let from = op["from"]
                    .as_str()
                    .ok_or_else(|| PatchError::Invalid("move without from".into()))?;
                let v = json_remove(doc, from)?;
                json_add(doc, path, v)?;
            }
            "copy" => {
                let from = op["from"]
                    .as_str()
                    .ok_or_else(|| PatchError::Invalid("copy without from".into()))?;
                let v = doc.pointer(from).cloned().ok_or_else(|| {
                    PatchError::Invalid(format!("copy from missing path {from:?}"))
                })?;
                json_add(doc, path, v)?;
            }
            "test" => {
                // evanphx/json-patch (what kube-apiserver runs): a missing member tests equal to
                // null when its parent exists; kube-rs's finalizer helper relies on it.
                let parent_exists = split_pointer(path)
                    .map(|(parent, _)| doc.pointer(&parent).is_some())
                    .unwrap_or(false);
                let got = match doc.pointer(path) {
                    Some(v) => Some(v),
                    None if parent_exists => Some(&Value::Null),
                    None => None,
                };
                if got != Some(&op["value"]) {
                    return Err(PatchError::Test(format!("testing value {path} failed")));
                }
            }
            other => return Err(PatchError::Invalid(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn smp_merges_conditions_by_type_and_replaces_taints() {
        let mut node = json!({
            "apiVersion": "v1", "kind": "Node",
            "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}]}
        });
        let patch = json!({
            "spec": {"taints": [{"key": "b", "effect": "NoExecute"}]},
            "status": {"$setElementOrder/conditions": [{"type": "Ready"}, {"type": "DiskPressure"}],
                       "conditions": [{"type": "DiskPressure", "status": "True"}, {"type": "Custom", "status": "True"}]}
        });
        strategic_merge_patch(&mut node, &patch).unwrap();
        assert_eq!(
            node["spec"]["taints"],
            json!([{"key": "b", "effect": "NoExecute"}])
        );
        let conds = node["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 3);
        assert_eq!(conds[1], json!({"type": "DiskPressure", "status": "True"}));
    }

    #[test]
    fn smp_delete_directive_and_null_removal() {
        let mut o = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"labels": {"a": "1", "b": "2"}}, "status": {"conditions": [{"type": "X"}, {"type": "Y"}]}});
        strategic_merge_patch(
            &mut o,
            &json!({"metadata": {"labels": {"a": null}}, "status": {"conditions": [{"type": "X", "$patch": "delete"}]}}),
        )
        .unwrap();
        assert_eq!(
            o,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"labels": {"b": "2"}}, "status": {"conditions": [{"type": "Y"}]}})
        );
    }

    #[test]
    fn merge_patch_replaces_lists() {
        let mut o = json!({"a": [1, 2], "b": {"c": 1}});
        merge_patch(&mut o, &json!({"a": [3], "b": {"c": null, "d": 2}}));
        assert_eq!(o, json!({"a": [3], "b": {"d": 2}}));
    }

    #[test]
    fn json_patch_ops() {
        let mut o = json!({"spec": {"taints": [{"key": "a"}]}});
        json_patch(
            &mut o,
            &json!([{"op": "add", "path": "/spec/taints/-", "value": {"key": "b"}},
                    {"op": "test", "path": "/spec/taints/0/key", "value": "a"},
                    {"op": "remove", "path": "/spec/taints/0"},
                    {"op": "replace", "path": "/spec/unschedulable", "value": true}]),
        )
        .unwrap_err();
        let mut o2 = json!({"spec": {"taints": [{"key": "a"}]}});
        json_patch(&mut o2, &json!([{"op": "add", "path": "/spec/taints/-", "value": {"key": "b"}}, {"op": "remove", "path": "/spec/taints/0"}])).unwrap();
        assert_eq!(o2, json!({"spec": {"taints": [{"key": "b"}]}}));
        assert!(json_patch(
            &mut o,
            &json!([{"op": "test", "path": "/spec/taints/0/key", "value": "zz"}])
        )
        .is_err());
    }
}
