//! Server-side apply and `metadata.managedFields` (KEP-555), following k8s.io/apimachinery
//! pkg/util/managedfields/internal (fieldmanager, skipnonapplied, managedfieldsupdater, stripmeta,
//! conflict.go) and sigs.k8s.io/structured-merge-diff merge/update.go (Apply, Update, prune),
//! on JSON objects with the list types of fieldset.rs.

use crate::fieldset::{self, compare, path_string, to_set, Set};
use crate::patch;
use crate::resources::ResourceDef;
use crate::status::ApiError;
use serde_json::{json, Value};

/// One `ManagedFieldsEntry`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub set: Set,
}

impl Entry {
    /// `BuildManagerIdentifier`: the entry's JSON without fields and time (and without apiVersion
    /// for appliers), field order as ManagedFieldsEntry declares it.
    pub fn ident(&self) -> String {
        ident(
            &self.manager,
            &self.operation,
            &self.api_version,
            &self.subresource,
        )
    }

    fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.set.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }
}

fn ident(manager: &str, operation: &str, api_version: &str, subresource: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut s = format!(
        "{{\"manager\":{},\"operation\":{}",
        q(manager),
        q(operation)
    );
    if operation == "Update" && !api_version.is_empty() {
        s.push_str(&format!(",\"apiVersion\":{}", q(api_version)));
    }
    if !subresource.is_empty() {
        s.push_str(&format!(",\"subresource\":{}", q(subresource)));
    }
    s.push('}');
    s
}

/// `printManager`: `"name"`, `"name" with subresource "status"`, `"name" using v1`.
fn print_manager(e: &Entry) -> String {
    let mut s = crate::validation::quote(&e.manager);
    if !e.subresource.is_empty() {
        s = format!(
            "{s} with subresource {}",
            crate::validation::quote(&e.subresource)
        );
    }
    if e.operation == "Update" {
        s = format!("{s} using {}", e.api_version);
    }
    s
}

/// Decodes `metadata.managedFields`; entries that do not decode are dropped.
pub fn decode(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(|m| m.as_array())
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let s = |f: &str| e.get(f).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let set = Set::from_fields_v1(e.get("fieldsV1").unwrap_or(&json!({}))).ok()?;
            Some(Entry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: e.get("time").and_then(|v| v.as_str()).map(String::from),
                subresource: s("subresource"),
                set,
            })
        })
        .collect()
}

/// Writes the entries sorted as `sortEncodedManagedFields` does (operation, time, manager, ...).
fn encode(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let Some(meta) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(|e| e.to_json()).collect()),
        );
    }
}

/// Puts back managedFields taken from an applied object (none: no entries).
pub fn set_managed_fields(obj: &mut Value, mf: Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        if mf.is_null() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), mf);
        }
    }
}

/// Fields no manager owns (stripmeta.go); removed non-recursively.
fn stripped() -> Set {
    let mut s = Set::new();
    for p in [
        &["f:apiVersion"][..],
        &["f:kind"],
        &["f:metadata"],
        &["f:metadata", "f:name"],
        &["f:metadata", "f:namespace"],
        &["f:metadata", "f:creationTimestamp"],
        &["f:metadata", "f:selfLink"],
        &["f:metadata", "f:uid"],
        &["f:metadata", "f:clusterName"],
        &["f:metadata", "f:generation"],
        &["f:metadata", "f:managedFields"],
        &["f:metadata", "f:resourceVersion"],
    ] {
        let v: Vec<String> = p.iter().map(|x| x.to_string()).collect();
        s.insert(&v);
    }
    s
}

/// The strategy's reset fields (`GetResetFields`): status on the main resource of kinds with a
/// status subresource, spec on the status subresource; removed recursively.
fn ignored(def: &ResourceDef, sub: &str) -> Set {
    let mut s = Set::new();
    match sub {
        "" if def.has_status() => s.insert(&["f:status".to_string()]),
        "status" => s.insert(&["f:spec".to_string()]),
        _ => {}
    }
    s
}

fn filter(def: &ResourceDef, sub: &str, set: &Set) -> Set {
    set.recursive_difference(&ignored(def, sub))
        .difference(&stripped())
}

fn without_managed(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("managedFields");
    }
    o
}

/// The zero object a create is compared against (a new Go object serialises its metadata and,
/// for most kinds, an empty spec).
fn baseline(def: &ResourceDef) -> Value {
    let mut o = json!({"metadata": {"creationTimestamp": null}});
    if !matches!(
        def.resource,
        "configmaps" | "secrets" | "events" | "endpointslices"
    ) {
        o["spec"] = json!({});
    }
    o
}

fn comparison(def: &ResourceDef, sub: &str, old: &Value, new: &Value) -> fieldset::Comparison {
    let mut c = compare(&without_managed(old), &without_managed(new));
    c.exclude(&ignored(def, sub));
    c.added = c.added.difference(&stripped());
    c.removed = c.removed.difference(&stripped());
    c.modified = c.modified.difference(&stripped());
    c
}

/// The manager of a non-apply write: `?fieldManager`, else the user agent's command name
/// (`prefixFromUserAgent`: `kubectl-edit/v1.33.0 (linux/amd64) ...` -> `kubectl-edit`).
pub fn manager_name(field_manager: Option<&str>, user_agent: &str) -> String {
    match field_manager {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => user_agent.split('/').next().unwrap_or("").to_string(),
    }
}

/// Records an Update operation by `manager` for a create (`old` None) or update producing `new`
/// (with server-set fields already in place). Upstream skips tracking on updates of objects that
/// have no managedFields (skipnonapplied.go).
pub fn track_update(
    def: &ResourceDef,
    sub: &str,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    now: &str,
) {
    let live = old.map(decode).unwrap_or_default();
    // decodeLiveOrNew: managedFields sent with the object replace the live ones (main resource).
    let sent = new.pointer("/metadata/managedFields").cloned();
    let live_raw = old.and_then(|o| o.pointer("/metadata/managedFields").cloned());
    let mut entries = match &sent {
        Some(Value::Array(a)) if !a.is_empty() && sent != live_raw && sub.is_empty() => decode(new),
        _ => live,
    };
    if entries.is_empty() && old.is_some() {
        if let Some(m) = new.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.remove("managedFields");
        }
        return;
    }
    let base = baseline(def);
    let old_obj = old.unwrap_or(&base);
    let c = comparison(def, sub, old_obj, new);
    run_update(def, sub, &mut entries, &c, manager, now);
    encode(new, entries);
}

/// `managedFieldsUpdater.Update` over `Updater.Update`: every manager loses what changed or was
/// removed; the writer gains what changed, and its time moves when it gained anything.
fn run_update(
    def: &ResourceDef,
    sub: &str,
    entries: &mut Vec<Entry>,
    c: &fieldset::Comparison,
    manager: &str,
    now: &str,
) {
    let changed = c.changed();
    for e in entries.iter_mut() {
        e.set = e.set.difference(&changed).difference(&c.removed);
    }
    let gained = filter(def, sub, &changed);
    entries.retain(|e| !e.set.is_empty());
    if gained.is_empty() {
        return;
    }
    let id = ident(manager, "Update", &def.api_version(), sub);
    match entries.iter_mut().find(|e| e.ident() == id) {
        Some(e) => {
            e.set = e.set.union(&gained);
            e.time = Some(now.to_string());
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: def.api_version(),
            time: Some(now.to_string()),
            subresource: sub.to_string(),
            set: gained,
        }),
    }
}

/// `Apply`: merges `config` onto `live` (None: the object is being created), records `manager`'s
/// Apply entry, removes fields it applied before and no longer applies (when nobody else owns
/// them), and refuses changes to fields other managers own unless `force`.
pub fn apply(
    def: &ResourceDef,
    sub: &str,
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    let config = without_managed(config);
    let mut entries = live.map(decode).unwrap_or_default();
    if let Some(l) = live {
        if entries.is_empty() {
            // skipNonAppliedManager.Apply: the fields already there belong to "before-first-apply".
            let base = baseline(def);
            let c = comparison(def, sub, &base, l);
            run_update(def, sub, &mut entries, &c, "before-first-apply", now);
        }
    }
    let live_obj = match live {
        Some(l) => without_managed(l),
        None => json!({}),
    };
    let mut merged = live_obj.clone();
    patch::strategic_merge_patch(&mut merged, &config)
        .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;

    let applied = filter(def, sub, &to_set(def.kind, &config));
    let id = ident(manager, "Apply", "", sub);
    let pos = entries.iter().position(|e| e.ident() == id);
    let last = pos.map(|i| entries[i].set.clone()).unwrap_or_default();
    let previous_time = pos.and_then(|i| entries[i].time.clone());
    if let Some(i) = pos {
        entries.remove(i);
    }
    let mut mine = Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: def.api_version(),
        time: previous_time,
        subresource: sub.to_string(),
        set: applied.clone(),
    };

    // prune: what this manager applied last time and nobody owns now goes away.
    let mut owned = applied.clone();
    for e in &entries {
        owned = owned.union(&e.set);
    }
    let mut gone = last.difference(&owned).members();
    gone.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in gone {
        if owned.has_members_under(&p) {
            continue;
        }
        if fieldset::remove_path(&mut merged, &p) {
            drop_empty_map_parent(def, &mut merged, &p);
        }
    }

    let old_obj = match live {
        Some(_) => live_obj.clone(),
        None => baseline(def),
    };
    let c = comparison(def, sub, &old_obj, &merged);
    let changed = c.changed();
    let mut conflicts: Vec<(String, &Entry, Vec<String>)> = Vec::new();
    for e in &entries {
        for p in e.set.intersection(&changed).members() {
            conflicts.push((e.ident(), e, p));
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| a.0.cmp(&b.0));
        return Err(conflict_error(&conflicts));
    }
    for e in entries.iter_mut() {
        e.set = e.set.difference(&changed).difference(&c.removed);
    }
    entries.retain(|e| !e.set.is_empty());
    let object_changed = live.is_none() || merged != live_obj;
    if object_changed {
        mine.time = Some(now.to_string());
    }
    entries.push(mine);
    encode(&mut merged, entries);
    Ok(merged)
}

/// A Go map emptied by pruning is not serialised (`omitempty`), so drop it like upstream's output.
fn drop_empty_map_parent(def: &ResourceDef, obj: &mut Value, path: &[String]) {
    let Some((_, parent)) = path.split_last() else {
        return;
    };
    let names: Vec<String> = parent
        .iter()
        .filter_map(|p| p.strip_prefix("f:").map(String::from))
        .collect();
    if parent.is_empty() || !fieldset::is_go_map(def.kind, &names) {
        return;
    }
    let empty = fieldset::navigate(obj, parent).is_some_and(|v| {
        v.as_object().is_some_and(|m| m.is_empty()) || v.as_array().is_some_and(|a| a.is_empty())
    });
    if empty {
        fieldset::remove_path(obj, parent);
    }
}

/// `NewConflictError`: 409 Conflict, one cause per conflicting field.
fn conflict_error(conflicts: &[(String, &Entry, Vec<String>)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(_, e, p)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", print_manager(e)), "field": path_string(p)})
        })
        .collect();
    let message = if conflicts.len() == 1 {
        let (_, e, p) = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            print_manager(e),
            path_string(p)
        )
    } else {
        let mut lines = Vec::new();
        let mut last = "";
        for (id, e, p) in conflicts {
            if id != last {
                lines.push(format!("conflicts with {}:", print_manager(e)));
                last = id;
            }
            lines.push(format!("- {}", path_string(p)));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError {
        details: Some(json!({"causes": causes})),
        ..ApiError::new(409, "Conflict", message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    const T: &str = "2026-01-01T00:00:00Z";

    fn nodes() -> &'static ResourceDef {
        find("", "v1", "nodes").unwrap()
    }

    fn node(labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": labels}})
    }

    #[test]
    fn apply_records_owner_and_prunes_dropped_fields() {
        let created = apply(
            nodes(),
            "",
            None,
            &node(json!({"a": "1", "b": "2"})),
            "a",
            false,
            T,
        )
        .unwrap();
        let mf = &created["metadata"]["managedFields"];
        assert_eq!(mf[0]["manager"], "a");
        assert_eq!(mf[0]["operation"], "Apply");
        assert_eq!(
            mf[0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}})
        );
        let again = apply(
            nodes(),
            "",
            Some(&created),
            &node(json!({"a": "1"})),
            "a",
            false,
            T,
        )
        .unwrap();
        assert_eq!(again["metadata"]["labels"], json!({"a": "1"}));
        let none = apply(
            nodes(),
            "",
            Some(&again),
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
            "a",
            false,
            T,
        )
        .unwrap();
        assert!(none["metadata"].get("labels").is_none(), "{none}");
    }

    #[test]
    fn conflicts_between_appliers_and_force() {
        let by_a = apply(nodes(), "", None, &node(json!({"x": "1"})), "a", false, T).unwrap();
        // Same value: shared ownership, no conflict.
        let shared = apply(
            nodes(),
            "",
            Some(&by_a),
            &node(json!({"x": "1"})),
            "b",
            false,
            T,
        )
        .unwrap();
        assert_eq!(decode(&shared).len(), 2);
        let e = apply(
            nodes(),
            "",
            Some(&by_a),
            &node(json!({"x": "2"})),
            "b",
            false,
            T,
        )
        .unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(e.reason, "Conflict");
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"a\": .metadata.labels.x"
        );
        assert_eq!(
            e.details.unwrap()["causes"],
            json!([{"reason": "FieldManagerConflict", "message": "conflict with \"a\"", "field": ".metadata.labels.x"}])
        );
        let forced = apply(
            nodes(),
            "",
            Some(&by_a),
            &node(json!({"x": "2"})),
            "b",
            true,
            T,
        )
        .unwrap();
        let es = decode(&forced);
        assert_eq!(es.len(), 1, "{forced}");
        assert_eq!(es[0].manager, "b");
        assert_eq!(forced["metadata"]["labels"]["x"], "2");
    }

    #[test]
    fn updates_take_ownership_and_conflict_with_later_appliers() {
        let nd = nodes();
        let by_a = apply(nd, "", None, &node(json!({"x": "1"})), "a", false, T).unwrap();
        let mut labelled = by_a.clone();
        labelled["metadata"]["labels"]["x"] = json!("3");
        labelled["metadata"]["labels"]["y"] = json!("1");
        track_update(nd, "", Some(&by_a), &mut labelled, "kubectl-label", T);
        let es = decode(&labelled);
        assert_eq!(es.len(), 1, "{labelled}");
        assert_eq!(es[0].operation, "Update");
        assert_eq!(
            es[0].set.to_fields_v1(),
            json!({"f:metadata": {"f:labels": {"f:x": {}, "f:y": {}}}})
        );
        let e = apply(
            nd,
            "",
            Some(&labelled),
            &node(json!({"x": "4", "y": "2"})),
            "a",
            false,
            T,
        )
        .unwrap_err();
        assert_eq!(e.message, "Apply failed with 2 conflicts: conflicts with \"kubectl-label\" using v1:\n- .metadata.labels.x\n- .metadata.labels.y");
    }

    #[test]
    fn creates_track_new_maps_and_untracked_objects_stay_untracked() {
        let nd = nodes();
        let mut n = node(json!({"a": "1"}));
        track_update(nd, "", None, &mut n, "kubectl-create", T);
        assert_eq!(
            n["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {".": {}, "f:a": {}}}})
        );
        let old = node(json!({}));
        let mut new = node(json!({"b": "1"}));
        track_update(nd, "", Some(&old), &mut new, "kubectl-label", T);
        assert!(new["metadata"].get("managedFields").is_none());
        // Applying over such an object: its fields belong to before-first-apply.
        let e = apply(nd, "", Some(&new), &node(json!({"b": "2"})), "a", false, T).unwrap_err();
        assert!(
            e.message
                .contains("conflict with \"before-first-apply\" using v1: .metadata.labels.b"),
            "{}",
            e.message
        );
        assert_eq!(
            manager_name(None, "kubectl-edit/v1.33.0 (linux/amd64) kubernetes/abc"),
            "kubectl-edit"
        );
        assert_eq!(manager_name(Some("m"), "x"), "m");
    }

    #[test]
    fn status_is_not_owned_through_the_main_resource() {
        let nd = nodes();
        let cfg = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {"unschedulable": true}, "status": {"phase": "x"}});
        let out = apply(nd, "", None, &cfg, "a", false, T).unwrap();
        assert_eq!(
            out["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:spec": {"f:unschedulable": {}}})
        );
    }
}
