//! Finalizers and deletion in two phases, for every kind: the generic registry's `Store.Delete`
//! (`updateForGracefulDeletionAndFinalizers`, `markAsDeleting`) and `Store.Update`
//! (`ShouldDeleteDuringUpdate`, `ValidateNoNewFinalizers`) in k8s.io/apiserver; the namespace
//! registry's delete (pkg/registry/core/namespace/storage) that starts termination; and the
//! NamespaceLifecycle admission plugin (k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle).
//! The namespace controller that empties a terminating namespace is `controllers::namespace_deleter`.

use crate::field;
use crate::resources::{self, ResourceDef};
use crate::status::ApiError;
use crate::store::{meta_str, Store};
use serde_json::{json, Value};

/// The spec finalizer the namespace controller owns (`api.FinalizerKubernetes`).
pub const KUBERNETES: &str = "kubernetes";

/// Namespaces NamespaceLifecycle never lets go.
const IMMORTAL: &[&str] = &["default", "kube-system", "kube-public"];

pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn spec_finalizers(ns: &Value) -> Vec<String> {
    ns.pointer("/spec/finalizers")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

fn is_namespaces(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.resource == "namespaces"
}

/// NamespaceLifecycle on create: nothing new goes into a namespace that is being terminated.
pub fn admit_create(
    store: &Store,
    def: &ResourceDef,
    ns: &str,
    obj: &Value,
) -> Result<(), ApiError> {
    if !def.namespaced || ns.is_empty() {
        return Ok(());
    }
    let Some(nsdef) = resources::find("", "v1", "namespaces") else {
        return Ok(());
    };
    let terminating = store
        .get(nsdef, "", ns)
        .and_then(|n| n.pointer("/status/phase"))
        .is_some_and(|p| p == "Terminating");
    if !terminating {
        return Ok(());
    }
    let mut e = ApiError::forbidden(
        def.group,
        def.resource,
        meta_str(obj, "name"),
        &format!("unable to create new content in namespace {ns} because it is being terminated"),
    );
    if let Some(d) = e.details.as_mut() {
        d["causes"] = json!([{"reason": "NamespaceTerminating",
                              "message": format!("namespace {ns} is being terminated"),
                              "field": "metadata.namespace"}]);
    }
    Err(e)
}

/// The namespace strategy's `PrepareForCreate` (the `kubernetes` spec finalizer) and
/// `SetDefaults_Namespace` (the `kubernetes.io/metadata.name` label).
pub fn prepare_namespace_create(obj: &mut Value) {
    let mut fins = spec_finalizers(obj);
    if !fins.iter().any(|f| f == KUBERNETES) {
        fins.push(KUBERNETES.into());
    }
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    obj["spec"]["finalizers"] = json!(fins);
    label_namespace(obj);
}

/// The namespace strategy's `PrepareForUpdate`: spec.finalizers only change through `finalize`.
pub fn prepare_namespace_update(old: &Value, new: &mut Value) {
    if !new["spec"].is_object() {
        new["spec"] = json!({});
    }
    match old.pointer("/spec/finalizers") {
        Some(f) => new["spec"]["finalizers"] = f.clone(),
        None => {
            if let Some(m) = new["spec"].as_object_mut() {
                m.remove("finalizers");
            }
        }
    }
    label_namespace(new);
}

fn label_namespace(obj: &mut Value) {
    let name = meta_str(obj, "name").to_string();
    if !obj["metadata"]["labels"].is_object() {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
}

/// `ValidateNoNewFinalizers` on updates of an object being deleted.
pub fn validate_update(def: &ResourceDef, old: &Value, new: &Value) -> Result<(), ApiError> {
    if !is_deleting(old) {
        return Ok(());
    }
    let before = finalizers(old);
    let mut extra: Vec<String> = finalizers(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if extra.is_empty() {
        return Ok(());
    }
    extra.sort();
    extra.dedup();
    Err(field::to_api_error(
        def.kind,
        def.group,
        meta_str(new, "name"),
        &[field::forbidden(
            "metadata.finalizers",
            &format!(
                "no new finalizers can be added if the object is being deleted, found new finalizers {}",
                field::strs(&extra)
            ),
        )],
    ))
}

/// `ShouldDeleteDuringUpdate` (and the namespace registry's variant, which also waits for
/// spec.finalizers): an update that removes the last finalizer of an object being deleted
/// deletes it.
pub fn deletes_on_update(def: &ResourceDef, old: &Value, new: &Value) -> bool {
    if !finalizers(new).is_empty() || !is_deleting(old) {
        return false;
    }
    if is_namespaces(def) && !spec_finalizers(new).is_empty() {
        return false;
    }
    old.pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(|v| v.as_i64())
        .is_none_or(|g| g == 0)
}

/// DELETE before the object is removed: `Ok(Some(kept))` when it stays (finalizers pending, or a
/// namespace entering or in termination), `Ok(None)` to delete it now.
pub fn on_delete(
    store: &mut Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let Some(obj) = store.get(def, ns, name).cloned() else {
        return Ok(None);
    };
    if is_namespaces(def) {
        if IMMORTAL.contains(&name) {
            return Err(ApiError::forbidden(
                def.group,
                def.resource,
                name,
                "this namespace may not be deleted",
            ));
        }
        if !is_deleting(&obj) {
            let mut o = obj.clone();
            if !o["status"].is_object() {
                o["status"] = json!({});
            }
            o["status"]["phase"] = json!("Terminating");
            return store.mark_deleting(def, "", o, None).map(Some);
        }
        if !spec_finalizers(&obj).is_empty() {
            return Ok(Some(obj));
        }
    }
    if finalizers(&obj).is_empty() {
        return Ok(None);
    }
    store.mark_deleting(def, ns, obj, Some(0)).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn finalizers_keep_objects_until_removed() {
        let cms = find("", "v1", "configmaps").unwrap();
        let mut s = Store::new();
        s.create(
            cms,
            "default",
            json!({"kind": "ConfigMap", "apiVersion": "v1",
                   "metadata": {"name": "c", "finalizers": ["example.com/keep"]}}),
        )
        .unwrap();
        let kept = on_delete(&mut s, cms, "default", "c").unwrap().unwrap();
        assert!(is_deleting(&kept));
        assert_eq!(kept["metadata"]["deletionGracePeriodSeconds"], 0);
        // A second delete changes nothing.
        let again = on_delete(&mut s, cms, "default", "c").unwrap().unwrap();
        assert_eq!(again, kept);
        let mut added = kept.clone();
        added["metadata"]["finalizers"] = json!(["example.com/keep", "example.com/new"]);
        let e = validate_update(cms, &kept, &added).unwrap_err();
        assert_eq!(
            e.message,
            "ConfigMap \"c\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"example.com/new\"}"
        );
        let mut emptied = kept.clone();
        emptied["metadata"]["finalizers"] = json!([]);
        assert!(validate_update(cms, &kept, &emptied).is_ok());
        assert!(deletes_on_update(cms, &kept, &emptied));
        // Without a pending delete, removing finalizers is an ordinary update.
        let mut plain = kept.clone();
        plain["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("deletionTimestamp");
        assert!(!deletes_on_update(cms, &plain, &emptied));
    }

    #[test]
    fn namespaces_terminate_and_immortal_ones_stay() {
        let nsdef = find("", "v1", "namespaces").unwrap();
        let cms = find("", "v1", "configmaps").unwrap();
        let mut s = Store::new();
        let mut n = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "t"}});
        prepare_namespace_create(&mut n);
        assert_eq!(n["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/metadata.name"], "t");
        s.create(nsdef, "", n).unwrap();
        let t = on_delete(&mut s, nsdef, "", "t").unwrap().unwrap();
        assert_eq!(t["status"]["phase"], "Terminating");
        assert!(is_deleting(&t));
        let e = admit_create(&s, cms, "t", &json!({"metadata": {"name": "x"}})).unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "configmaps \"x\" is forbidden: unable to create new content in namespace t because it is being terminated"
        );
        assert_eq!(
            e.details.unwrap()["causes"][0]["reason"],
            "NamespaceTerminating"
        );
        s.create(
            nsdef,
            "",
            json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "default"}}),
        )
        .unwrap();
        let e = on_delete(&mut s, nsdef, "", "default").unwrap_err();
        assert_eq!(
            e.message,
            "namespaces \"default\" is forbidden: this namespace may not be deleted"
        );
    }
}
