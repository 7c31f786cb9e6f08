//! `dryRun=All` (KEP-576): the request runs through decoding, admission and validation, and the
//! answer is the object as it would be stored, but nothing is written (kubectl diff relies on it).

use crate::resources::ResourceDef;
use crate::status::ApiError;
use crate::store::new_uid;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Whether the request is a dry run (`dryRun=All`; anything else is refused as upstream does).
pub fn dry_run(q: &HashMap<String, String>, options: &str) -> Result<bool, ApiError> {
    match q.get("dryRun").map(|s| s.as_str()) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(crate::fieldvalidation::unsupported(
            options,
            "dryRun",
            &format!("[]string{{{other:?}}}"),
            "\"All\"",
        )),
    }
}

/// What `Store::create` would answer, without a resourceVersion (none is allocated).
pub fn created(def: &ResourceDef, ns: &str, mut obj: Value) -> Value {
    let meta = &mut obj["metadata"];
    meta["uid"] = json!(new_uid());
    meta["creationTimestamp"] = json!(crate::clock::now_rfc3339());
    if def.namespaced {
        meta["namespace"] = json!(ns);
    }
    if def.has_generation {
        meta["generation"] = json!(1);
    }
    obj
}

/// What `Store::update` would answer: immutable metadata and the resourceVersion of `old`.
pub fn updated(def: &ResourceDef, old: &Value, mut obj: Value) -> Value {
    for f in [
        "uid",
        "creationTimestamp",
        "namespace",
        "deletionTimestamp",
        "resourceVersion",
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
    if def.has_generation {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let changed = old.get("spec") != obj.get("spec");
        obj["metadata"]["generation"] = json!(if changed { g + 1 } else { g });
    }
    obj
}
