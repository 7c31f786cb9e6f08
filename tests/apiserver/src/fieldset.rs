//! Field sets as server-side apply tracks them (sigs.k8s.io/structured-merge-diff: fieldpath.Set,
//! typed.ToFieldSet, typed.Compare) over JSON objects, serialised in the `FieldsV1` format.
//!
//! A path element is kept in its FieldsV1 spelling: `f:<field>`, `k:<json of the key fields>`
//! (associative lists), `v:<json value>` (set lists), `i:<index>`.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How a list is merged and tracked, from the list-type markers of the k8s.io/api types.
#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    Atomic,
    Set,
    /// Associative list with its key fields (and defaults for absent ones).
    Map(&'static [(&'static str, Option<&'static str>)]),
}

/// List type by the field names from the object root (list items add no name), mirroring the
/// `listType`/`listMapKey`/`patchMergeKey` markers (and patch.rs's strategic-merge table).
pub fn list_kind(names: &[String]) -> ListKind {
    let p: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    const NAME: &[(&str, Option<&str>)] = &[("name", None)];
    const TYPE: &[(&str, Option<&str>)] = &[("type", None)];
    match p.as_slice() {
        ["metadata", "finalizers"] | ["spec", "finalizers"] => ListKind::Set,
        ["metadata", "ownerReferences"] => ListKind::Map(&[("uid", None)]),
        ["status", "conditions"] => ListKind::Map(TYPE),
        ["spec", "containers" | "initContainers" | "ephemeralContainers" | "volumes"] => {
            ListKind::Map(NAME)
        }
        ["spec", "template", "spec", "containers" | "initContainers" | "volumes"] => {
            ListKind::Map(NAME)
        }
        [.., "containers" | "initContainers", "env"] => ListKind::Map(NAME),
        [.., "containers" | "initContainers", "ports"] => {
            ListKind::Map(&[("containerPort", None), ("protocol", Some("TCP"))])
        }
        [.., "containers" | "initContainers", "volumeMounts"] => {
            ListKind::Map(&[("mountPath", None)])
        }
        ["spec", "ports"] => ListKind::Map(&[("port", None), ("protocol", Some("TCP"))]),
        // ServiceAccount.secrets (`+listType=map`, `+listMapKey=name`).
        ["secrets"] => ListKind::Map(NAME),
        _ => ListKind::Atomic,
    }
}

/// Whether the object at `names` is a Go map (its entries are items, tracked themselves) rather
/// than a struct (whose fields are only tracked when they hold a value).
pub fn is_go_map(kind: &str, names: &[String]) -> bool {
    let p: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    match p.as_slice() {
        ["spec", "selector"] => kind == "Service",
        [.., "labels" | "annotations" | "nodeSelector" | "matchLabels" | "capacity" | "allocatable"
        | "limits" | "requests" | "overhead"] => true,
        ["data" | "binaryData" | "stringData"] => true,
        ["spec", "extra"] | ["status", "disruptedPods"] => true,
        _ => false,
    }
}

/// A set of field paths: a trie whose nodes say whether the path ending there is a member.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Set {
    pub member: bool,
    pub children: BTreeMap<String, Set>,
}

impl Set {
    pub fn new() -> Self {
        Set::default()
    }

    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(|c| c.is_empty())
    }

    pub fn insert(&mut self, path: &[String]) {
        let mut n = self;
        for pe in path {
            n = n.children.entry(pe.clone()).or_default();
        }
        n.member = true;
    }

    pub fn contains(&self, path: &[String]) -> bool {
        let mut n = self;
        for pe in path {
            match n.children.get(pe) {
                Some(c) => n = c,
                None => return false,
            }
        }
        n.member
    }

    /// Whether some member lies strictly below `path`.
    pub fn has_members_under(&self, path: &[String]) -> bool {
        let mut n = self;
        for pe in path {
            match n.children.get(pe) {
                Some(c) => n = c,
                None => return false,
            }
        }
        n.children.values().any(|c| !c.is_empty())
    }

    fn prune(mut self) -> Self {
        self.children = self
            .children
            .into_iter()
            .map(|(k, v)| (k, v.prune()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        self
    }

    pub fn union(&self, o: &Set) -> Set {
        let mut out = self.clone();
        out.member |= o.member;
        for (k, v) in &o.children {
            let merged = match out.children.get(k) {
                Some(mine) => mine.union(v),
                None => v.clone(),
            };
            out.children.insert(k.clone(), merged);
        }
        out
    }

    /// Members of `self` that are not members of `o` (paths below a member of `o` stay).
    pub fn difference(&self, o: &Set) -> Set {
        let mut out = Set {
            member: self.member && !o.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            let d = match o.children.get(k) {
                Some(ov) => v.difference(ov),
                None => v.clone(),
            };
            out.children.insert(k.clone(), d);
        }
        out.prune()
    }

    pub fn intersection(&self, o: &Set) -> Set {
        let mut out = Set {
            member: self.member && o.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            if let Some(ov) = o.children.get(k) {
                out.children.insert(k.clone(), v.intersection(ov));
            }
        }
        out.prune()
    }

    /// Drops the members of `o` and everything below them.
    pub fn recursive_difference(&self, o: &Set) -> Set {
        if o.member {
            return Set::new();
        }
        let mut out = Set {
            member: self.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            let d = match o.children.get(k) {
                Some(ov) => v.recursive_difference(ov),
                None => v.clone(),
            };
            out.children.insert(k.clone(), d);
        }
        out.prune()
    }

    /// Every member path, in set order.
    pub fn members(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut path = Vec::new();
        self.collect(&mut path, &mut out);
        out
    }

    fn collect(&self, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(path.clone());
        }
        for (k, v) in &self.children {
            path.push(k.clone());
            v.collect(path, out);
            path.pop();
        }
    }

    /// The `fieldsV1` JSON: `{}` for a member leaf, `".": {}` for a member with children.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, v) in &self.children {
            if !v.is_empty() {
                m.insert(k.clone(), v.to_fields_v1());
            }
        }
        Value::Object(m)
    }

    pub fn from_fields_v1(v: &Value) -> Result<Set, String> {
        let Value::Object(m) = v else {
            return Err(format!("expected an object, got {v}"));
        };
        let mut s = Set::new();
        for (k, child) in m {
            if k == "." {
                s.member = true;
                continue;
            }
            if !(k.starts_with("f:")
                || k.starts_with("k:")
                || k.starts_with("v:")
                || k.starts_with("i:"))
            {
                return Err(format!("unknown path element {k:?}"));
            }
            let mut c = Set::from_fields_v1(child)?;
            if child.as_object().is_some_and(|o| o.is_empty()) {
                c.member = true;
            }
            s.children.insert(k.clone(), c);
        }
        Ok(s)
    }
}

pub fn field(name: &str) -> String {
    format!("f:{name}")
}

/// `value.ToString` of a key or set value in a path string.
fn value_string(v: &Value) -> String {
    match v {
        Value::String(s) => crate::validation::quote(s),
        other => other.to_string(),
    }
}

/// `fieldpath.Path.String()`: `.metadata.labels.a`, `.spec.ports[port=80,protocol="TCP"]`,
/// `.metadata.finalizers[="x"]`, `[3]`.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let kv: Vec<String> = match serde_json::from_str::<Value>(k) {
                Ok(Value::Object(m)) => m
                    .iter()
                    .map(|(n, v)| format!("{n}={}", value_string(v)))
                    .collect(),
                _ => vec![k.to_string()],
            };
            s.push_str(&format!("[{}]", kv.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            let shown = serde_json::from_str::<Value>(v)
                .map(|v| value_string(&v))
                .unwrap_or_else(|_| v.to_string());
            s.push_str(&format!("[={shown}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// The `k:` element of an associative-list item (None when a key without default is absent).
pub fn key_element(item: &Value, keys: &[(&str, Option<&str>)]) -> Option<String> {
    let mut m = Map::new();
    for (k, default) in keys {
        match item.get(*k) {
            Some(v) if !v.is_null() => {
                m.insert((*k).to_string(), v.clone());
            }
            _ => match default {
                Some(d) => {
                    m.insert((*k).to_string(), Value::String((*d).to_string()));
                }
                None => {
                    if keys.len() == 1 {
                        return None;
                    }
                }
            },
        }
    }
    Some(format!("k:{}", Value::Object(m)))
}

fn value_element(v: &Value) -> String {
    format!("v:{v}")
}

/// `ToFieldSet` of an (applied) object: every leaf, list item and Go-map entry, plus struct fields
/// that hold null or an empty object.
pub fn to_set(kind: &str, obj: &Value) -> Set {
    let mut s = Set::new();
    let mut path = Vec::new();
    let mut names = Vec::new();
    walk_set(kind, obj, &mut path, &mut names, &mut s);
    s
}

fn walk_set(kind: &str, v: &Value, path: &mut Vec<String>, names: &mut Vec<String>, s: &mut Set) {
    match v {
        Value::Object(m) => {
            let map = is_go_map(kind, names);
            for (k, child) in m {
                path.push(field(k));
                names.push(k.clone());
                walk_set(kind, child, path, names, s);
                let empty = child.is_null() || child.as_object().is_some_and(|o| o.is_empty());
                if empty || map {
                    s.insert(path);
                }
                names.pop();
                path.pop();
            }
        }
        Value::Array(items) => match list_kind(names) {
            ListKind::Atomic => s.insert(path),
            ListKind::Set => {
                for i in items {
                    path.push(value_element(i));
                    s.insert(path);
                    path.pop();
                }
            }
            ListKind::Map(keys) => {
                for (idx, i) in items.iter().enumerate() {
                    let pe = key_element(i, keys).unwrap_or_else(|| format!("i:{idx}"));
                    path.push(pe);
                    walk_set(kind, i, path, names, s);
                    s.insert(path);
                    path.pop();
                }
            }
        },
        _ => s.insert(path),
    }
}

/// `typed.Comparison`: what changed between two versions of an object.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Comparison {
    pub added: Set,
    pub removed: Set,
    pub modified: Set,
}

impl Comparison {
    pub fn exclude(&mut self, ignored: &Set) {
        self.added = self.added.recursive_difference(ignored);
        self.removed = self.removed.recursive_difference(ignored);
        self.modified = self.modified.recursive_difference(ignored);
    }

    pub fn changed(&self) -> Set {
        self.modified.union(&self.added)
    }
}

/// `typed.Compare(lhs, rhs)`: leaves added/removed/modified, and every non-leaf node present on one
/// side only.
pub fn compare(lhs: &Value, rhs: &Value) -> Comparison {
    let mut c = Comparison::default();
    let mut path = Vec::new();
    let mut names = Vec::new();
    cmp(Some(lhs), Some(rhs), &mut path, &mut names, &mut c);
    c
}

fn leaf(l: Option<&Value>, r: Option<&Value>, path: &[String], c: &mut Comparison) {
    match (l, r) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        (Some(a), Some(b)) if a != b => c.modified.insert(path),
        _ => {}
    }
}

fn cmp(
    l: Option<&Value>,
    r: Option<&Value>,
    path: &mut Vec<String>,
    names: &mut Vec<String>,
    c: &mut Comparison,
) {
    let is_obj = |v: Option<&Value>| v.is_none_or(|v| v.is_object() || v.is_null());
    let is_arr = |v: Option<&Value>| v.is_none_or(|v| v.is_array() || v.is_null());
    let empty = |v: Option<&Value>| {
        v.is_none_or(|v| {
            v.is_null()
                || v.as_object().is_some_and(|o| o.is_empty())
                || v.as_array().is_some_and(|a| a.is_empty())
        })
    };
    let any_obj = l.is_some_and(|v| v.is_object()) || r.is_some_and(|v| v.is_object());
    let any_arr = l.is_some_and(|v| v.is_array()) || r.is_some_and(|v| v.is_array());
    if any_obj && is_obj(l) && is_obj(r) && !(empty(l) && empty(r)) {
        let lm = l.and_then(|v| v.as_object());
        let rm = r.and_then(|v| v.as_object());
        let mut keys: Vec<&String> = lm.map(|m| m.keys().collect()).unwrap_or_default();
        for k in rm.map(|m| m.keys().collect::<Vec<_>>()).unwrap_or_default() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for k in keys {
            path.push(field(k));
            names.push(k.clone());
            cmp(
                lm.and_then(|m| m.get(k)),
                rm.and_then(|m| m.get(k)),
                path,
                names,
                c,
            );
            names.pop();
            path.pop();
        }
    } else if any_arr && is_arr(l) && is_arr(r) && !(empty(l) && empty(r)) {
        let la: &[Value] = l
            .and_then(|v| v.as_array())
            .map(|a| a.as_slice())
            .unwrap_or(&[]);
        let ra: &[Value] = r
            .and_then(|v| v.as_array())
            .map(|a| a.as_slice())
            .unwrap_or(&[]);
        match list_kind(names) {
            ListKind::Atomic => leaf(l, r, path, c),
            ListKind::Set => {
                for v in la.iter().filter(|v| !ra.contains(v)) {
                    path.push(value_element(v));
                    c.removed.insert(path);
                    path.pop();
                }
                for v in ra.iter().filter(|v| !la.contains(v)) {
                    path.push(value_element(v));
                    c.added.insert(path);
                    path.pop();
                }
            }
            ListKind::Map(keys) => {
                let pe =
                    |i: usize, v: &Value| key_element(v, keys).unwrap_or_else(|| format!("i:{i}"));
                let lk: Vec<(String, &Value)> =
                    la.iter().enumerate().map(|(i, v)| (pe(i, v), v)).collect();
                let rk: Vec<(String, &Value)> =
                    ra.iter().enumerate().map(|(i, v)| (pe(i, v), v)).collect();
                let mut all: Vec<&String> = lk.iter().map(|(k, _)| k).collect();
                for (k, _) in &rk {
                    if !all.contains(&k) {
                        all.push(k);
                    }
                }
                for k in all {
                    let lv = lk.iter().find(|(x, _)| x == k).map(|(_, v)| *v);
                    let rv = rk.iter().find(|(x, _)| x == k).map(|(_, v)| *v);
                    path.push(k.clone());
                    cmp(lv, rv, path, names, c);
                    path.pop();
                }
            }
        }
        if !matches!(list_kind(names), ListKind::Atomic) {
            if l.is_none() {
                c.added.insert(path);
            } else if r.is_none() {
                c.removed.insert(path);
            }
        }
        return;
    } else {
        leaf(l, r, path, c);
        return;
    }
    if l.is_none() {
        c.added.insert(path);
    } else if r.is_none() {
        c.removed.insert(path);
    }
}

/// Removes the value at `path` from `obj`; returns whether something was removed.
pub fn remove_path(obj: &mut Value, path: &[String]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    let Some(p) = navigate(obj, parent) else {
        return false;
    };
    if let Some(f) = last.strip_prefix("f:") {
        return p.as_object_mut().is_some_and(|m| m.remove(f).is_some());
    }
    let Some(items) = p.as_array_mut() else {
        return false;
    };
    let before = items.len();
    let keep: Vec<Value> = items
        .iter()
        .enumerate()
        .filter(|(i, v)| !element_matches(last, *i, v))
        .map(|(_, v)| v.clone())
        .collect();
    *items = keep;
    items.len() != before
}

/// The value at `path`, if it exists.
pub fn navigate<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = obj;
    for pe in path {
        cur = if let Some(f) = pe.strip_prefix("f:") {
            cur.as_object_mut()?.get_mut(f)?
        } else {
            let items = cur.as_array_mut()?;
            let idx = items
                .iter()
                .enumerate()
                .position(|(i, v)| element_matches(pe, i, v))?;
            items.get_mut(idx)?
        };
    }
    Some(cur)
}

fn element_matches(pe: &str, idx: usize, v: &Value) -> bool {
    if let Some(k) = pe.strip_prefix("k:") {
        let Ok(Value::Object(want)) = serde_json::from_str::<Value>(k) else {
            return false;
        };
        return want.iter().all(|(n, wv)| match v.get(n) {
            Some(x) => x == wv,
            // An absent key field matches its default (protocol: TCP).
            None => n == "protocol" && wv == "TCP",
        });
    }
    if let Some(s) = pe.strip_prefix("v:") {
        return serde_json::from_str::<Value>(s).is_ok_and(|want| &want == v);
    }
    if let Some(i) = pe.strip_prefix("i:") {
        return i.parse::<usize>().is_ok_and(|i| i == idx);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn applied_sets_have_upstream_shape() {
        let s = to_set(
            "Node",
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"a": "1"}, "finalizers": ["x/y"]},
                    "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            s.to_fields_v1(),
            json!({"f:apiVersion": {}, "f:kind": {}, "f:metadata": {"f:finalizers": {"v:\"x/y\"": {}}, "f:labels": {"f:a": {}}, "f:name": {}},
                   "f:spec": {"f:taints": {}}})
        );
        let pod = to_set(
            "Pod",
            &json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}),
        );
        assert_eq!(
            pod.to_fields_v1(),
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {},
                "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}}}})
        );
        let back = Set::from_fields_v1(&pod.to_fields_v1()).unwrap();
        assert_eq!(back, pod);
    }

    #[test]
    fn compare_marks_new_maps_and_leaves() {
        let old = json!({"metadata": {"name": "n", "creationTimestamp": null}, "spec": {}});
        let new = json!({"metadata": {"name": "n", "labels": {"a": "1"}}, "spec": {"unschedulable": true}});
        let c = compare(&old, &new);
        assert_eq!(
            c.added.to_fields_v1(),
            json!({"f:metadata": {"f:labels": {".": {}, "f:a": {}}}, "f:spec": {"f:unschedulable": {}}})
        );
        assert!(c
            .removed
            .contains(&p(&["f:metadata", "f:creationTimestamp"])));
        let c2 = compare(
            &new,
            &json!({"metadata": {"name": "n", "labels": {"a": "2"}}, "spec": {"unschedulable": true}}),
        );
        assert_eq!(
            c2.modified.members(),
            vec![p(&["f:metadata", "f:labels", "f:a"])]
        );
        assert!(c2.added.is_empty() && c2.removed.is_empty());
    }

    #[test]
    fn set_algebra_and_paths() {
        let mut a = Set::new();
        a.insert(&p(&["f:metadata", "f:labels", "f:a"]));
        a.insert(&p(&["f:metadata", "f:labels", "f:b"]));
        let mut b = Set::new();
        b.insert(&p(&["f:metadata", "f:labels", "f:b"]));
        assert_eq!(
            a.difference(&b).members(),
            vec![p(&["f:metadata", "f:labels", "f:a"])]
        );
        assert_eq!(
            a.intersection(&b).members(),
            vec![p(&["f:metadata", "f:labels", "f:b"])]
        );
        let mut st = Set::new();
        st.insert(&p(&["f:metadata"]));
        assert_eq!(a.recursive_difference(&st), Set::new());
        assert_eq!(a.difference(&st), a);
        assert_eq!(
            path_string(&p(&["f:metadata", "f:labels", "f:a"])),
            ".metadata.labels.a"
        );
        assert_eq!(
            path_string(&p(&[
                "f:spec",
                "f:ports",
                "k:{\"port\":80,\"protocol\":\"TCP\"}",
                "f:name"
            ])),
            ".spec.ports[port=80,protocol=\"TCP\"].name"
        );
        assert_eq!(
            path_string(&p(&["f:metadata", "f:finalizers", "v:\"x\""])),
            ".metadata.finalizers[=\"x\"]"
        );
    }

    #[test]
    fn removing_paths() {
        let mut o = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
                           "spec": {"containers": [{"name": "c", "image": "i"}, {"name": "d"}]}});
        assert!(remove_path(&mut o, &p(&["f:metadata", "f:labels", "f:a"])));
        assert!(remove_path(
            &mut o,
            &p(&["f:metadata", "f:finalizers", "v:\"x\""])
        ));
        assert!(remove_path(
            &mut o,
            &p(&["f:spec", "f:containers", "k:{\"name\":\"c\"}"])
        ));
        assert!(!remove_path(&mut o, &p(&["f:spec", "f:nothing"])));
        assert_eq!(
            o,
            json!({"metadata": {"labels": {"b": "2"}, "finalizers": ["y"]}, "spec": {"containers": [{"name": "d"}]}})
        );
    }
}
