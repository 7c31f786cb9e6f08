//! `dryRun=All` (`k8s.io/apiserver/pkg/registry/generic/registry/dryrun.go`): the request runs the
//! whole write path (decoding, defaulting, validation, admission, preconditions) against a private
//! copy of the store whose writes no one sees, so nothing is persisted, no resourceVersion is
//! consumed, no watch event is sent and no controller reacts. The answer is then given the
//! resourceVersion the dry-run storage reports: none for a create, the stored one otherwise.

use crate::handler::Body;
use crate::resources::ResourceDef;
use crate::status::ApiError;
use crate::State;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

impl State {
    /// The state a dry-run request runs against: the objects as of now, nothing shared that a
    /// write could reach (store, history, watchers, request log).
    pub fn dry_run_copy(&self) -> State {
        State {
            store: Mutex::new(self.store().dry_run_copy()),
            ca: Arc::clone(&self.ca),
            tokens: crate::auth::Tokens {
                admin: self.tokens.admin.clone(),
                privileged: self.tokens.privileged.clone(),
                // Tokens a dry run issues authenticate nowhere.
                issued: Default::default(),
            },
            faults: crate::Faults::default(),
            log: Mutex::new(Vec::new()),
            settings: Mutex::new(self.settings()),
            addr: self.addr,
            dry_run: true,
            services: self.services.clone(),
            node_selectors: std::sync::atomic::AtomicBool::new(
                self.node_selectors
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        }
    }
}

/// `ValidateDryRun`'s error inside `errors.NewInvalid(meta.k8s.io/<Kind>Options)`: 422.
fn unsupported(options_kind: &str, values: &[String]) -> ApiError {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    crate::fieldvalidation::unsupported(
        options_kind,
        "dryRun",
        &format!("[]string{{{}}}", quoted.join(", ")),
        "\"All\"",
    )
}

fn check(options_kind: &str, values: &[String]) -> Result<bool, ApiError> {
    if values.iter().any(|v| v != "All") {
        return Err(unsupported(options_kind, values));
    }
    Ok(!values.is_empty())
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the write asks for a dry run; `Err` for values other than `All`. The options come
/// from the query (`?dryRun=All`) and, for deletes and evictions, from the DeleteOptions body.
pub fn requested(
    verb: &str,
    sub: &str,
    q: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
) -> Result<bool, ApiError> {
    let query: Vec<String> = q.get("dryRun").map(|v| vec![v.clone()]).unwrap_or_default();
    match verb {
        "create" if sub == "eviction" => {
            let q = check("CreateOptions", &query)?;
            let ev = if content_type.starts_with("application/vnd.kubernetes.protobuf") {
                crate::proto::decode(body).unwrap_or(Value::Null)
            } else {
                serde_json::from_slice(body).unwrap_or(Value::Null)
            };
            let d = check(
                "DeleteOptions",
                &strings(ev.pointer("/deleteOptions/dryRun")),
            )?;
            Ok(q || d)
        }
        "create" => check("CreateOptions", &query),
        "update" => check("UpdateOptions", &query),
        "patch" => check("PatchOptions", &query),
        "delete" | "deletecollection" => {
            let q = check("DeleteOptions", &query)?;
            let opts: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let b = check("DeleteOptions", &strings(opts.get("dryRun")))?;
            Ok(q || b)
        }
        _ => Ok(false),
    }
}

/// What the dry-run storage answers in place of what the private store did: objects carry the
/// resourceVersion they have in the real store (none when they do not exist there, as for a
/// create); a list (deletecollection) carries the real store's revision.
pub async fn finish(
    resp: Response<Body>,
    def: &ResourceDef,
    real: &State,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(Response::from_parts(parts, Full::new(bytes).boxed()));
    };
    {
        let store = real.store();
        let fix = |o: &mut Value| {
            let ns = crate::store::meta_str(o, "namespace").to_string();
            let name = crate::store::meta_str(o, "name").to_string();
            let rv = store
                .get(def, &ns, &name)
                .map(|r| crate::store::meta_str(r, "resourceVersion").to_string());
            if let Some(m) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                match rv {
                    Some(rv) => {
                        m.insert("resourceVersion".into(), json!(rv));
                    }
                    None => {
                        m.remove("resourceVersion");
                    }
                }
            }
        };
        if let Some(items) = v.get_mut("items").and_then(|i| i.as_array_mut()) {
            items.iter_mut().for_each(fix);
            v["metadata"]["resourceVersion"] = json!(store.current_rv().to_string());
        } else if v.get("kind").and_then(|k| k.as_str()) != Some("Status")
            && v.pointer("/metadata/name").is_some()
        {
            fix(&mut v);
        }
    }
    let out = serde_json::to_vec(&v).unwrap_or_default();
    let mut parts = parts;
    parts.headers.remove("content-length");
    Ok(Response::from_parts(
        parts,
        Full::new(Bytes::from(out)).boxed(),
    ))
}
