//! core/v1 and events.k8s.io/v1 Events are one resource seen through two APIs, as upstream: both
//! groups read and write the same stored objects (`/registry/events`), converted on the way in and
//! out (kubernetes pkg/apis/events/v1/conversion.go). So an Event a controller records through
//! events.k8s.io/v1 (kube-runtime's Recorder) shows in `kubectl describe` and `kubectl get events`,
//! which read core/v1.
//!
//! Stored objects carry core/v1 field names; the `apiVersion` they were written with is replaced on
//! every read by the version the client asked for.

use crate::resources::ResourceDef;
use serde_json::{json, Value};

/// events.k8s.io/v1 field -> core/v1 field. `regarding`'s and `deprecatedSource`'s inner fields are
/// the same ObjectReference/EventSource in both; `reportingController` is the internal field that
/// core/v1 serialises as `reportingComponent`.
const RENAMES: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Whether `def` is one of the two views of the shared Event storage.
pub fn is_event(def: &ResourceDef) -> bool {
    def.resource == "events" && matches!(def.group, "" | "events.k8s.io")
}

fn is_events_v1(def: &ResourceDef) -> bool {
    def.resource == "events" && def.group == "events.k8s.io"
}

/// The (group, resource) objects of `def` are stored under.
pub fn storage(def: &ResourceDef) -> (&'static str, &'static str) {
    if is_event(def) {
        ("", "events")
    } else {
        (def.group, def.resource)
    }
}

fn rename(obj: &mut Value, v1_to_core: bool) {
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    for (v1, core) in RENAMES {
        let (from, to) = if v1_to_core { (v1, core) } else { (core, v1) };
        if let Some(v) = m.remove(from) {
            m.insert(to.to_string(), v);
        }
    }
}

/// An object written through `def` (after field validation, which checks `def`'s own schema), in
/// stored field names.
pub fn input(def: &ResourceDef, mut body: Value) -> Value {
    if is_events_v1(def) {
        rename(&mut body, true);
    }
    body
}

/// A field selector written against `def`'s field names, in stored field names.
pub fn field_selector(def: &ResourceDef, sel: &str) -> String {
    if !is_events_v1(def) || sel.is_empty() {
        return sel.to_string();
    }
    sel.split(',')
        .map(|term| {
            let split = term.find(['=', '!']).unwrap_or(term.len());
            let (field, op) = term.split_at(split);
            let (head, tail) = match field.split_once('.') {
                Some((h, t)) => (h, Some(t)),
                None => (field, None),
            };
            let head = RENAMES
                .iter()
                .find(|(v1, _)| *v1 == head)
                .map(|(_, core)| *core)
                .unwrap_or(head);
            match tail {
                Some(t) => format!("{head}.{t}{op}"),
                None => format!("{head}{op}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A stored object as a client of `def` reads it.
pub fn output(def: &ResourceDef, mut obj: Value) -> Value {
    if !is_event(def) {
        return obj;
    }
    if is_events_v1(def) {
        rename(&mut obj, false);
    }
    if obj.get("metadata").is_some() {
        obj["apiVersion"] = json!(def.api_version());
        obj["kind"] = json!("Event");
    }
    obj
}

/// A response document (object, list, table, status) as a client of `def` reads it.
pub fn output_document(def: &ResourceDef, mut doc: Value) -> Value {
    if !is_event(def) {
        return doc;
    }
    match doc.get("kind").and_then(|k| k.as_str()) {
        Some("EventList") => {
            doc["apiVersion"] = json!(def.api_version());
            if let Some(items) = doc.get_mut("items").and_then(|i| i.as_array_mut()) {
                for it in items.iter_mut() {
                    let mut o = output(def, it.take());
                    if let Some(m) = o.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    *it = o;
                }
            }
            doc
        }
        Some("Table") => {
            if let Some(rows) = doc.get_mut("rows").and_then(|r| r.as_array_mut()) {
                for r in rows.iter_mut() {
                    if let Some(o) = r.get_mut("object") {
                        if o.get("kind").and_then(|k| k.as_str()) == Some("Event") {
                            *o = output(def, o.take());
                        }
                    }
                }
            }
            doc
        }
        Some("Event") => output(def, doc),
        _ => doc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    fn defs() -> (&'static ResourceDef, &'static ResourceDef) {
        (
            find("", "v1", "events").expect("core events"),
            find("events.k8s.io", "v1", "events").expect("events.k8s.io events"),
        )
    }

    #[test]
    fn round_trip_between_the_two_views() {
        let (core, v1) = defs();
        let written = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e1", "namespace": "default"},
            "regarding": {"kind": "Service", "name": "web", "namespace": "default"},
            "note": "VIP 198.18.0.10 announced", "reason": "Announced", "type": "Normal",
            "action": "Announce", "reportingController": "keel.io/lb", "reportingInstance": "lb1",
            "eventTime": "2026-12-02T00:00:00.000000Z", "deprecatedCount": 2,
            "series": {"count": 3, "lastObservedTime": "2026-12-02T00:00:01.000000Z"}
        });
        let stored = input(v1, written.clone());
        let as_core = output(core, stored.clone());
        assert_eq!(as_core["apiVersion"], "v1");
        assert_eq!(as_core["message"], "VIP 198.18.0.10 announced");
        assert_eq!(as_core["involvedObject"]["name"], "web");
        assert_eq!(as_core["reportingComponent"], "keel.io/lb");
        assert_eq!(as_core["count"], 2);
        assert_eq!(as_core["series"]["count"], 3);
        assert!(as_core.get("note").is_none() && as_core.get("regarding").is_none());
        assert_eq!(output(v1, stored), written);
    }

    #[test]
    fn field_selectors_name_stored_fields() {
        let (core, v1) = defs();
        assert_eq!(
            field_selector(v1, "regarding.name=web,reportingController!=x,type==Normal"),
            "involvedObject.name=web,reportingComponent!=x,type==Normal"
        );
        assert_eq!(
            field_selector(core, "involvedObject.name=web"),
            "involvedObject.name=web"
        );
    }
}
