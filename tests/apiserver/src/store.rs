//! Object storage: JSON objects keyed by group/resource/namespace/name, one global resourceVersion
//! counter (like etcd's revision), and an event history that watches replay from.

use crate::clock;
use crate::resources::ResourceDef;
use crate::status::ApiError;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

pub type Key = (String, String, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub etype: EventType,
    /// The object before the change (for selector transitions in watches).
    pub old: Option<Value>,
    pub obj: Value,
}

/// How many events watches can resume from; older resourceVersions get 410 Expired.
const HISTORY: usize = 50_000;

pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Events with rv <= this are no longer in `history`.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

pub fn key(def: &ResourceDef, ns: &str, name: &str) -> Key {
    let ns = if def.namespaced { ns } else { "" };
    let (group, resource) = crate::eventconv::storage(def);
    (
        group.to_string(),
        resource.to_string(),
        ns.to_string(),
        name.to_string(),
    )
}

pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(|v| v.as_str())
        .unwrap_or("")
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(65_536);
        Store {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            compacted: 1,
            tx,
        }
    }

    /// A private copy of the objects for a dry run: same revision, no history, no watchers.
    pub fn dry_run_copy(&self) -> Store {
        let (tx, _) = broadcast::channel(16);
        Store {
            objects: self.objects.clone(),
            rv: self.rv,
            history: VecDeque::new(),
            compacted: self.rv,
            tx,
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn compacted_rv(&self) -> u64 {
        self.compacted
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Drops all history: every watch from an older resourceVersion now gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub fn events_since(&self, rv: u64) -> impl Iterator<Item = &Arc<Event>> {
        self.history.iter().filter(move |e| e.rv > rv)
    }

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(def, ns, name))
    }

    pub fn list(&self, def: &ResourceDef, ns: Option<&str>) -> Vec<&Value> {
        let (group, resource) = crate::eventconv::storage(def);
        let lo = (
            group.to_string(),
            resource.to_string(),
            String::new(),
            String::new(),
        );
        self.objects
            .range(lo..)
            .take_while(|(k, _)| k.0 == group && k.1 == resource)
            .filter(|(k, _)| ns.is_none_or(|n| k.2 == n))
            .map(|(_, v)| v)
            .collect()
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        etype: EventType,
        old: Option<Value>,
        obj: &Value,
    ) {
        let (group, resource) = crate::eventconv::storage(def);
        let ev = Arc::new(Event {
            rv: self.rv,
            group: group.into(),
            resource: resource.into(),
            namespace: if def.namespaced {
                ns.into()
            } else {
                String::new()
            },
            etype,
            old,
            obj: obj.clone(),
        });
        self.history.push_back(ev.clone());
        while self.history.len() > HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// Stores a new object, filling server-set metadata. `obj` has kind/apiVersion/metadata.name set.
    pub fn create(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let name = meta_str(&obj, "name").to_string();
        let k = key(def, ns, &name);
        if self.objects.contains_key(&k) {
            return Err(ApiError::already_exists(def.group, def.resource, &name));
        }
        let rv = self.bump();
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(new_uid());
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(clock::now_rfc3339());
        if def.namespaced {
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        if def.has_generation {
            meta["generation"] = json!(1);
        }
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        self.objects.insert(k, obj.clone());
        self.emit(def, ns, EventType::Added, None, &obj);
        Ok(obj)
    }

    /// Replaces an existing object (caller has checked preconditions); bumps resourceVersion and
    /// generation (when the spec changed). Returns the stored object.
    pub fn update(&mut self, def: &ResourceDef, ns: &str, obj: Value) -> Result<Value, ApiError> {
        self.replace(def, ns, obj, None)
    }

    /// Stores `obj` (which may carry other changes, e.g. a namespace's Terminating phase) as being
    /// deleted: `deletionTimestamp` now unless already set, `deletionGracePeriodSeconds` when
    /// given, and the generation bumped the first time (`markAsDeleting` in the generic registry).
    pub fn mark_deleting(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        obj: Value,
        grace: Option<i64>,
    ) -> Result<Value, ApiError> {
        self.replace(def, ns, obj, Some(grace))
    }

    fn replace(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        mut obj: Value,
        deleting: Option<Option<i64>>,
    ) -> Result<Value, ApiError> {
        let name = meta_str(&obj, "name").to_string();
        let k = key(def, ns, &name);
        let Some(old) = self.objects.get(&k).cloned() else {
            return Err(ApiError::not_found(def.group, def.resource, &name));
        };
        let first_mark = deleting.is_some() && old["metadata"].get("deletionTimestamp").is_none();
        // Immutable metadata is carried over from the stored object.
        for f in [
            "uid",
            "creationTimestamp",
            "namespace",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old["metadata"].get(f) {
                Some(v) => obj["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = obj["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        if let Some(grace) = deleting {
            if first_mark {
                obj["metadata"]["deletionTimestamp"] = json!(clock::now_rfc3339());
            }
            if let Some(g) = grace {
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(g);
            }
        }
        if def.has_generation {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let changed = old.get("spec") != obj.get("spec") || first_mark;
            obj["metadata"]["generation"] = json!(if changed { g + 1 } else { g });
        }
        obj["metadata"]["resourceVersion"] = json!(old["metadata"]["resourceVersion"]);
        // A no-op update does not create a new revision (as the real registry skips the etcd write).
        if obj == old {
            return Ok(old);
        }
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(k, obj.clone());
        self.emit(def, ns, EventType::Modified, Some(old), &obj);
        Ok(obj)
    }

    pub fn delete(&mut self, def: &ResourceDef, ns: &str, name: &str) -> Result<Value, ApiError> {
        let k = key(def, ns, name);
        let Some(mut obj) = self.objects.remove(&k) else {
            return Err(ApiError::not_found(def.group, def.resource, name));
        };
        let old = obj.clone();
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.emit(def, ns, EventType::Deleted, Some(old), &obj);
        Ok(obj)
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn writes_bump_resource_version_and_noop_updates_do_not() {
        let nodes = find("", "v1", "nodes").unwrap();
        let mut s = Store::new();
        let n = s
            .create(
                nodes,
                "",
                json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n1"}}),
            )
            .unwrap();
        let rv1: u64 = meta_str(&n, "resourceVersion").parse().unwrap();
        let same = s.update(nodes, "", n.clone()).unwrap();
        assert_eq!(meta_str(&same, "resourceVersion"), rv1.to_string());
        let mut changed = n.clone();
        changed["spec"] = json!({"unschedulable": true});
        let u = s.update(nodes, "", changed).unwrap();
        assert_eq!(meta_str(&u, "resourceVersion"), (rv1 + 1).to_string());
        assert!(s.create(nodes, "", n).is_err());
        assert_eq!(s.events_since(0).count(), 2);
    }
}
