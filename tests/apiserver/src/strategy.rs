//! Per-kind registry strategies beyond the generic path in `handler`: Services (`services`),
//! namespaces and finalizers for every kind (`finalizers`). The handler calls one function per
//! write path, under the store lock.

use crate::finalizers;
use crate::resources::ResourceDef;
use crate::services;
use crate::status::ApiError;
use crate::store::{meta_str, Store};
use crate::State;
use serde_json::Value;

/// Defaulting as decoding applies it (`SetDefaults_*` of the served kinds that need any here):
/// RBAC bindings' `roleRef.apiGroup` and their User/Group subjects' `apiGroup`.
pub(crate) fn defaults(def: &ResourceDef, obj: &mut Value) {
    const RBAC: &str = "rbac.authorization.k8s.io";
    if def.group != RBAC || !matches!(def.resource, "rolebindings" | "clusterrolebindings") {
        return;
    }
    if !obj.get("roleRef").is_some_and(|r| r.is_object()) {
        obj["roleRef"] = serde_json::json!({});
    }
    if obj["roleRef"]["apiGroup"].as_str().unwrap_or("").is_empty() {
        obj["roleRef"]["apiGroup"] = serde_json::json!(RBAC);
    }
    if let Some(subjects) = obj.get_mut("subjects").and_then(|s| s.as_array_mut()) {
        for s in subjects.iter_mut().filter(|s| s.is_object()) {
            let user_or_group = matches!(s["kind"].as_str(), Some("User" | "Group"));
            if user_or_group && s["apiGroup"].as_str().unwrap_or("").is_empty() {
                s["apiGroup"] = serde_json::json!(RBAC);
            }
        }
    }
}

/// Admission and strategy on create, after the generic checks and before the object is stored.
pub(crate) fn before_create(
    state: &State,
    store: &Store,
    def: &ResourceDef,
    ns: &str,
    obj: &mut Value,
) -> Result<(), ApiError> {
    finalizers::admit_create(store, def, ns, obj)?;
    match (def.group, def.resource) {
        ("", "services") => services::create(&state.services, store, obj)?,
        ("", "namespaces") => finalizers::prepare_namespace_create(obj),
        _ => {}
    }
    Ok(())
}

/// Strategy on update (main resource or `sub`resource), after the generic merge and checks.
/// `Ok(Some(deleted))` when the update removed the last finalizer of an object being deleted, which
/// deletes it (the caller answers with the object).
pub(crate) fn before_update(
    state: &State,
    store: &mut Store,
    def: &ResourceDef,
    ns: &str,
    sub: &str,
    old: &Value,
    new: &mut Value,
) -> Result<Option<Value>, ApiError> {
    match (def.group, def.resource) {
        ("", "services") => services::update(&state.services, store, sub, old, new)?,
        ("", "namespaces") if sub.is_empty() => finalizers::prepare_namespace_update(old, new),
        _ => {}
    }
    finalizers::validate_update(def, old, new)?;
    if finalizers::deletes_on_update(def, old, new) {
        let name = meta_str(old, "name").to_string();
        let out = store.delete(def, ns, &name)?;
        state.after_write(store, def.group, def.resource, ns, &name);
        return Ok(Some(out));
    }
    Ok(None)
}

/// Before a delete: `Ok(Some(kept))` when the object stays for now (finalizers, namespace
/// termination); the controllers have run then.
pub(crate) fn before_delete(
    state: &State,
    store: &mut Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let kept = finalizers::on_delete(store, def, ns, name)?;
    if kept.is_some() {
        state.after_write(store, def.group, def.resource, ns, name);
    }
    Ok(kept)
}

/// `TestServer::put`: the registry's strategy without admission (a Service's defaulting and
/// allocation, a new namespace's `kubernetes` finalizer); the status is kept as given.
pub(crate) fn prepare_put(
    state: &State,
    store: &Store,
    def: &ResourceDef,
    existing: Option<&Value>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    defaults(def, obj);
    if def.group.is_empty() && def.resource == "namespaces" && existing.is_none() {
        finalizers::prepare_namespace_create(obj);
    }
    if !(def.group.is_empty() && def.resource == "services") {
        return Ok(());
    }
    let status = obj.get("status").cloned();
    match existing {
        Some(old) => services::update(&state.services, store, "", old, obj)?,
        None => services::create(&state.services, store, obj)?,
    }
    if let Some(s) = status {
        obj["status"] = s;
    }
    Ok(())
}
