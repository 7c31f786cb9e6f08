//! `/openapi/v2` and `/openapi/v3` as kube-apiserver serves them (k8s.io/kube-openapi
//! pkg/handler and pkg/handler3), for the kinds in `resources::RESOURCES`.
//!
//! Schemas are derived, never written here: k8s-openapi's `schemars` impls carry upstream's
//! definition names and descriptions; this module only adds what upstream's spec has and those impls
//! lack (`x-kubernetes-group-version-kind` on kinds, list kinds, and the strategic-merge/list
//! extensions from `patch_meta`, the table strategic merge patches with). Documents are built once.

use crate::handler::Body;
use crate::patch_meta;
use crate::resources::{self, ResourceDef};
use crate::status::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use k8s_openapi::api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::schemars::{generate::SchemaSettings, JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

/// Content type of the protobuf (gnostic `openapi_v2.Document`) form of `/openapi/v2`. Clients
/// also ask with the deprecated `…v2@v1.0+protobuf` (client-go does); kube-openapi answers both
/// with this one (`@` is not a token character, Go's mime parser refuses it).
pub const V2_PROTO: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
const V2_PROTO_DEPRECATED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
const V3_PROTO: &str = "application/com.github.proto-openapi.spec.v3.v1.0+protobuf";
const V3_PROTO_DEPRECATED: &str = "application/com.github.proto-openapi.spec.v3@v1.0+protobuf";

const DEFS_PREFIX: &str = "#/definitions/";
const V3_PREFIX: &str = "#/components/schemas/";

/// Adds `T`'s schema (and everything it references) and returns its definition name.
fn add<T: JsonSchema>(g: &mut SchemaGenerator) -> String {
    let r = g.subschema_for::<T>();
    r.get("$ref")
        .and_then(|v| v.as_str())
        .and_then(|s| s.strip_prefix(DEFS_PREFIX))
        .map(String::from)
        .unwrap_or_else(|| T::schema_name().into_owned())
}

/// The k8s-openapi type of a served kind. A kind added to `RESOURCES` must be added here too
/// (the `every_served_kind_has_a_schema` test says so).
fn kind_schema(g: &mut SchemaGenerator, group: &str, kind: &str) -> Option<String> {
    Some(match (group, kind) {
        ("", "Namespace") => add::<api::core::v1::Namespace>(g),
        ("", "Node") => add::<api::core::v1::Node>(g),
        ("", "Pod") => add::<api::core::v1::Pod>(g),
        ("", "Service") => add::<api::core::v1::Service>(g),
        ("", "ConfigMap") => add::<api::core::v1::ConfigMap>(g),
        ("", "Secret") => add::<api::core::v1::Secret>(g),
        ("", "Event") => add::<api::core::v1::Event>(g),
        ("", "ServiceAccount") => add::<api::core::v1::ServiceAccount>(g),
        ("authentication.k8s.io", "TokenRequest") => {
            add::<api::authentication::v1::TokenRequest>(g)
        }
        ("rbac.authorization.k8s.io", "ClusterRole") => add::<api::rbac::v1::ClusterRole>(g),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            add::<api::rbac::v1::ClusterRoleBinding>(g)
        }
        ("rbac.authorization.k8s.io", "Role") => add::<api::rbac::v1::Role>(g),
        ("rbac.authorization.k8s.io", "RoleBinding") => add::<api::rbac::v1::RoleBinding>(g),
        ("apps", "DaemonSet") => add::<api::apps::v1::DaemonSet>(g),
        ("coordination.k8s.io", "Lease") => add::<api::coordination::v1::Lease>(g),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            add::<api::certificates::v1::CertificateSigningRequest>(g)
        }
        ("policy", "PodDisruptionBudget") => add::<api::policy::v1::PodDisruptionBudget>(g),
        ("policy", "Eviction") => add::<api::policy::v1::Eviction>(g),
        ("discovery.k8s.io", "EndpointSlice") => add::<api::discovery::v1::EndpointSlice>(g),
        ("events.k8s.io", "Event") => add::<api::events::v1::Event>(g),
        _ => return None,
    })
}

/// Definition names of the meta types the operations use.
struct MetaNames {
    status: String,
    delete_options: String,
    patch: String,
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "kind": kind, "version": version})
}

/// All definitions, refs as `#/definitions/<name>` (v2 form).
pub struct Definitions {
    pub defs: Map<String, Value>,
    /// `(group, kind)` → definition name of the served kinds and their lists.
    pub kinds: HashMap<(String, String), String>,
    meta: MetaNames,
}

fn build_definitions() -> Definitions {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/definitions".into();
            s.meta_schema = None;
            s.transforms.clear();
        })
        .into_generator();
    let mut kinds = HashMap::new();
    let mut gvks: Vec<(String, Value)> = Vec::new();
    let mut lists: Vec<(String, String, Value)> = Vec::new();
    for r in resources::RESOURCES {
        let Some(name) = kind_schema(&mut g, r.group, r.kind) else {
            continue;
        };
        gvks.push((name.clone(), json!([gvk(r.group, r.version, r.kind)])));
        let list_kind = r.list_kind();
        lists.push((
            name.clone(),
            format!("{name}List"),
            json!([gvk(r.group, r.version, &list_kind)]),
        ));
        kinds.insert((r.group.to_string(), r.kind.to_string()), name.clone());
        kinds.insert((r.group.to_string(), list_kind), format!("{name}List"));
    }
    // The kinds of create-only subresources (`pods/eviction`, `serviceaccounts/token`).
    for (group, kind) in [
        ("policy", "Eviction"),
        ("authentication.k8s.io", "TokenRequest"),
    ] {
        if let Some(name) = kind_schema(&mut g, group, kind) {
            gvks.push((name.clone(), json!([gvk(group, "v1", kind)])));
            kinds.insert((group.into(), kind.into()), name);
        }
    }
    let status = add::<meta::Status>(&mut g);
    gvks.push((status.clone(), json!([gvk("", "v1", "Status")])));
    let delete_options = add::<meta::DeleteOptions>(&mut g);
    let watch_event = add::<meta::WatchEvent<api::core::v1::Node>>(&mut g);
    // Upstream registers these two in every group version (and meta.k8s.io).
    let mut per_gv = vec![json!({"group": "", "kind": "", "version": "v1"})];
    per_gv.extend(
        resources::GROUPS
            .iter()
            .map(|(g, v)| json!({"group": g, "kind": "", "version": v})),
    );
    for (name, kind) in [
        (&delete_options, "DeleteOptions"),
        (&watch_event, "WatchEvent"),
    ] {
        let l: Vec<Value> = per_gv
            .iter()
            .map(|x| {
                let mut x = x.clone();
                x["kind"] = json!(kind);
                x
            })
            .collect();
        gvks.push((name.clone(), Value::Array(l)));
    }
    let patch = add::<meta::Patch>(&mut g);
    let list_meta = add::<meta::ListMeta>(&mut g);
    let mut defs = g.take_definitions(false);

    // k8s-openapi has no schema for list kinds; upstream's are this shape with the item kind.
    for (item, list, gvk) in lists {
        let d = json!({
            "description": format!("{} is a list of {} objects.", list.rsplit('.').next().unwrap_or(&list), item.rsplit('.').next().unwrap_or(&item)),
            "type": "object",
            "properties": {
                "apiVersion": defs.get(&item).and_then(|d| d.pointer("/properties/apiVersion")).cloned().unwrap_or(json!({"type": "string"})),
                "items": {"description": "List of objects.", "type": "array", "items": {"$ref": format!("{DEFS_PREFIX}{item}")}},
                "kind": defs.get(&item).and_then(|d| d.pointer("/properties/kind")).cloned().unwrap_or(json!({"type": "string"})),
                "metadata": {"$ref": format!("{DEFS_PREFIX}{list_meta}"), "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"},
            },
            "required": ["items"],
            "x-kubernetes-group-version-kind": gvk,
        });
        defs.insert(list, d);
    }
    for (name, gvk) in gvks {
        if let Some(Value::Object(d)) = defs.get_mut(&name) {
            d.insert("x-kubernetes-group-version-kind".into(), gvk);
            // k8s-openapi marks `metadata` required (a Rust type choice); upstream's kinds do not.
            if let Some(Value::Array(req)) = d.get_mut("required") {
                req.retain(|f| f != "metadata");
                if req.is_empty() {
                    d.remove("required");
                }
            }
        }
    }
    for m in patch_meta::FIELDS {
        let Some(p) = defs
            .get_mut(m.definition)
            .and_then(|d| d.pointer_mut(&format!("/properties/{}", m.field)))
            .and_then(|p| p.as_object_mut())
        else {
            continue;
        };
        if !m.patch_strategy.is_empty() {
            p.insert(
                "x-kubernetes-patch-strategy".into(),
                json!(m.patch_strategy),
            );
        }
        if !m.merge_key.is_empty() {
            p.insert("x-kubernetes-patch-merge-key".into(), json!(m.merge_key));
        }
        if !m.list_type.is_empty() {
            p.insert("x-kubernetes-list-type".into(), json!(m.list_type));
        }
        if !m.map_keys.is_empty() {
            p.insert("x-kubernetes-list-map-keys".into(), json!(m.map_keys));
        }
    }
    Definitions {
        defs,
        kinds,
        meta: MetaNames {
            status,
            delete_options,
            patch,
        },
    }
}

pub fn definitions() -> &'static Definitions {
    static D: OnceLock<Definitions> = OnceLock::new();
    D.get_or_init(build_definitions)
}

/// Definition name of a served kind (or its list), by `apiVersion` and `kind`.
pub fn definition_for(api_version: &str, kind: &str) -> Option<&'static str> {
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    definitions()
        .kinds
        .get(&(group.to_string(), kind.to_string()))
        .map(|s| s.as_str())
}

/// Resolves `$ref` (also the v3 `allOf: [{$ref}]` form) to the referenced definition.
pub fn resolve(schema: &Value) -> Option<&'static Value> {
    let d = definitions();
    let r = schema
        .get("$ref")
        .or_else(|| schema.pointer("/allOf/0/$ref"))?;
    d.defs.get(r.as_str()?.strip_prefix(DEFS_PREFIX)?)
}

/// The definition name owning the last field of `path` (field names from the root kind; list
/// items are stepped into implicitly), e.g. (`io.k8s.api.core.v1.Node`, [status, conditions]) →
/// `io.k8s.api.core.v1.NodeStatus`.
pub fn owner_of(root: &str, path: &[String]) -> Option<String> {
    let d = definitions();
    let mut name = root.to_string();
    let mut cur: &Value = d.defs.get(root)?;
    let (last, parents) = path.split_last()?;
    let _ = last;
    for f in parents {
        let mut next = cur.pointer(&format!("/properties/{f}"))?;
        loop {
            if let Some(r) = next.get("$ref").and_then(|r| r.as_str()) {
                name = r.strip_prefix(DEFS_PREFIX)?.to_string();
                next = d.defs.get(&name)?;
            } else if let Some(items) = next.get("items") {
                next = items;
            } else {
                break;
            }
        }
        cur = next;
    }
    Some(name)
}

/// kube-openapi `OperationId`-style group part: `core` → `CoreV1`, `coordination.k8s.io` → `CoordinationV1`.
fn group_camel(def: &ResourceDef) -> String {
    let g = if def.group.is_empty() {
        "core"
    } else {
        def.group.split('.').next().unwrap_or(def.group)
    };
    let mut c = g.chars();
    let head: String = c
        .next()
        .map(|x| x.to_uppercase().collect())
        .unwrap_or_default();
    let v = def.version.replacen('v', "V", 1);
    format!("{head}{}{v}", c.as_str())
}

fn tag(def: &ResourceDef) -> String {
    let g = if def.group.is_empty() {
        "core"
    } else {
        def.group.split('.').next().unwrap_or(def.group)
    };
    format!("{g}_{}", def.version)
}

struct Param {
    name: &'static str,
    in_: &'static str,
    ty: &'static str,
    desc: &'static str,
}

const fn q(name: &'static str, ty: &'static str, desc: &'static str) -> Param {
    Param {
        name,
        in_: "query",
        ty,
        desc,
    }
}

// Descriptions: the first sentence of upstream's (staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/types.go).
const PRETTY: Param = q("pretty", "string", "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).");
const DRY_RUN: Param = q("dryRun", "string", "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed");
const FIELD_MANAGER: Param = q(
    "fieldManager",
    "string",
    "fieldManager is a name associated with the actor or entity that is making these changes.",
);
const FIELD_VALIDATION: Param = q("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present.");
const FORCE: Param = q("force", "boolean", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.");
const LIST_PARAMS: &[Param] = &[
    q("allowWatchBookmarks", "boolean", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
    q("continue", "string", "The continue option should be set when retrieving more results from the server."),
    q("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields. Defaults to everything."),
    q("labelSelector", "string", "A selector to restrict the list of returned objects by their labels. Defaults to everything."),
    q("limit", "integer", "limit is a maximum number of responses to return for a list call."),
    q("resourceVersion", "string", "resourceVersion sets a constraint on what resource versions a request may be served from."),
    q("resourceVersionMatch", "string", "resourceVersionMatch determines how resourceVersion is applied to list calls."),
    q("sendInitialEvents", "boolean", "`sendInitialEvents=true` may be set together with `watch=true`."),
    q("timeoutSeconds", "integer", "Timeout for the list/watch call."),
    q("watch", "boolean", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications."),
];
const DELETE_PARAMS: &[Param] = &[
    q("gracePeriodSeconds", "integer", "The duration in seconds before the object should be deleted."),
    q("ignoreStoreReadErrorWithClusterBreakingPotential", "boolean", "if set to true, it will trigger an unsafe deletion of the resource in case the normal deletion flow fails with a corrupt object error."),
    q("orphanDependents", "boolean", "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7."),
    q("propagationPolicy", "string", "Whether and how garbage collection will be performed."),
];

/// One operation, rendered for v2 and v3 alike.
struct Op {
    method: &'static str,
    id: String,
    action: &'static str,
    desc: String,
    params: Vec<&'static Param>,
    body: Option<String>,
    /// `(code, definition)`.
    responses: Vec<(u16, String)>,
    consumes: &'static [&'static str],
    gvk: Value,
}

struct PathItem {
    path: String,
    /// `("name" | "namespace", description)` path parameters.
    path_params: Vec<(&'static str, String)>,
    ops: Vec<Op>,
}

const JSON_CONSUMES: &[&str] = &["*/*"];
const PATCH_CONSUMES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn paths_for(def: &'static ResourceDef, d: &Definitions) -> Vec<PathItem> {
    let Some(kind_def) = d.kinds.get(&(def.group.to_string(), def.kind.to_string())) else {
        return Vec::new();
    };
    let list_def = format!("{kind_def}List");
    let gv = if def.group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{}/{}", def.group, def.version)
    };
    let gc = group_camel(def);
    let nsd = if def.namespaced { "Namespaced" } else { "" };
    let k = def.kind;
    let gvk_v = gvk(def.group, def.version, k);
    let base = if def.namespaced {
        format!("{gv}/namespaces/{{namespace}}/{}", def.resource)
    } else {
        format!("{gv}/{}", def.resource)
    };
    let ns_param = || {
        def.namespaced.then(|| {
            (
                "namespace",
                "object name and auth scope, such as for teams and projects".to_string(),
            )
        })
    };
    let name_param = |what: &str| ("name", format!("name of the {what}"));
    let write = |method, verb: &str, action, suffix: &str, body: &str, codes: &[u16]| Op {
        method,
        id: format!("{verb}{gc}{nsd}{k}{suffix}"),
        action,
        desc: String::new(),
        params: vec![&DRY_RUN, &FIELD_MANAGER, &FIELD_VALIDATION],
        body: Some(body.to_string()),
        responses: codes.iter().map(|c| (*c, kind_def.clone())).collect(),
        consumes: JSON_CONSUMES,
        gvk: gvk_v.clone(),
    };
    let read = |suffix: &str| Op {
        method: "get",
        id: format!("read{gc}{nsd}{k}{suffix}"),
        action: "get",
        desc: String::new(),
        params: vec![],
        body: None,
        responses: vec![(200, kind_def.clone())],
        consumes: JSON_CONSUMES,
        gvk: gvk_v.clone(),
    };
    let patch = |suffix: &str| {
        let mut o = write(
            "patch",
            "patch",
            "patch",
            suffix,
            &d.meta.patch,
            &[200, 201],
        );
        o.params.push(&FORCE);
        o.consumes = PATCH_CONSUMES;
        o
    };
    let mut out = Vec::new();
    let mut list = Op {
        method: "get",
        id: format!("list{gc}{nsd}{k}"),
        action: "list",
        desc: format!("list or watch objects of kind {k}"),
        params: LIST_PARAMS.iter().collect(),
        body: None,
        responses: vec![(200, list_def.clone())],
        consumes: JSON_CONSUMES,
        gvk: gvk_v.clone(),
    };
    let mut create = write("post", "create", "post", "", kind_def, &[200, 201, 202]);
    create.desc = format!("create a {k}");
    let mut delete_coll = Op {
        method: "delete",
        id: format!("delete{gc}Collection{nsd}{k}"),
        action: "deletecollection",
        desc: format!("delete collection of {k}"),
        params: LIST_PARAMS
            .iter()
            .filter(|p| p.name != "allowWatchBookmarks" && p.name != "watch")
            .chain(DELETE_PARAMS)
            .chain([&DRY_RUN])
            .collect(),
        body: Some(d.meta.delete_options.clone()),
        responses: vec![(200, d.meta.status.clone())],
        consumes: JSON_CONSUMES,
        gvk: gvk_v.clone(),
    };
    delete_coll.params.sort_by_key(|p| p.name);
    list.params.sort_by_key(|p| p.name);
    out.push(PathItem {
        path: base.clone(),
        path_params: ns_param().into_iter().collect(),
        ops: vec![list, create, delete_coll],
    });
    let mut replace = write("put", "replace", "put", "", kind_def, &[200, 201]);
    replace.desc = format!("replace the specified {k}");
    let mut del_params: Vec<&'static Param> = DELETE_PARAMS.iter().chain([&DRY_RUN]).collect();
    del_params.sort_by_key(|p| p.name);
    let deleted = if def.return_deleted {
        kind_def.clone()
    } else {
        d.meta.status.clone()
    };
    let delete = Op {
        method: "delete",
        id: format!("delete{gc}{nsd}{k}"),
        action: "delete",
        desc: format!("delete a {k}"),
        params: del_params,
        body: Some(d.meta.delete_options.clone()),
        responses: vec![(200, deleted.clone()), (202, deleted)],
        consumes: JSON_CONSUMES,
        gvk: gvk_v.clone(),
    };
    let mut p = patch("");
    p.desc = format!("partially update the specified {k}");
    let mut r = read("");
    r.desc = format!("read the specified {k}");
    out.push(PathItem {
        path: format!("{base}/{{name}}"),
        path_params: ns_param().into_iter().chain([name_param(k)]).collect(),
        ops: vec![r, replace, delete, p],
    });
    for sub in def.subresources {
        let cap: String = sub[..1].to_uppercase() + &sub[1..];
        let create_only = match *sub {
            "eviction" => Some(("policy", "Eviction", "Eviction")),
            "token" => Some(("authentication.k8s.io", "TokenRequest", "Token")),
            _ => None,
        };
        let ops = if let Some((group, kind, suffix)) = create_only {
            let ev = d
                .kinds
                .get(&(group.to_string(), kind.to_string()))
                .cloned()
                .unwrap_or_default();
            let mut o = write("post", "create", "post", suffix, &ev, &[200, 201, 202]);
            o.responses = vec![(200, ev.clone()), (201, ev.clone()), (202, ev)];
            o.gvk = gvk(group, "v1", kind);
            o.desc = format!("create {sub} of a {k}");
            vec![o]
        } else {
            let mut r = read(&cap);
            r.desc = format!("read {sub} of the specified {k}");
            let mut w = write("put", "replace", "put", &cap, kind_def, &[200, 201]);
            w.desc = format!("replace {sub} of the specified {k}");
            let mut p = patch(&cap);
            p.desc = format!("partially update {sub} of the specified {k}");
            vec![r, w, p]
        };
        out.push(PathItem {
            path: format!("{base}/{{name}}/{sub}"),
            path_params: ns_param()
                .into_iter()
                .chain([name_param(match *sub {
                    "eviction" => "Eviction",
                    "token" => "TokenRequest",
                    _ => k,
                })])
                .collect(),
            ops,
        });
    }
    if def.namespaced {
        let mut all = Op {
            method: "get",
            id: format!("list{gc}{k}ForAllNamespaces"),
            action: "list",
            desc: format!("list or watch objects of kind {k}"),
            params: vec![],
            body: None,
            responses: vec![(200, list_def)],
            consumes: JSON_CONSUMES,
            gvk: gvk_v.clone(),
        };
        all.params = LIST_PARAMS.iter().collect();
        out.push(PathItem {
            path: format!("{gv}/{}", def.resource),
            path_params: vec![],
            ops: vec![all],
        });
    }
    for pi in &mut out {
        for o in &mut pi.ops {
            if o.desc.is_empty() {
                o.desc = o.id.clone();
            }
        }
    }
    out
}

const PRODUCES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

fn code_desc(c: u16) -> &'static str {
    match c {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        _ => "",
    }
}

fn v2_param(p: &Param) -> Value {
    json!({"name": p.name, "in": p.in_, "type": p.ty, "uniqueItems": true, "description": p.desc})
}

fn v3_param(p: &Param) -> Value {
    json!({"name": p.name, "in": p.in_, "description": p.desc, "schema": {"type": p.ty, "uniqueItems": true}})
}

fn path_params(pi: &PathItem, v3: bool) -> Vec<Value> {
    let mut ps: Vec<Value> = pi
        .path_params
        .iter()
        .map(|(n, desc)| {
            if v3 {
                json!({"name": n, "in": "path", "required": true, "description": desc, "schema": {"type": "string", "uniqueItems": true}})
            } else {
                json!({"name": n, "in": "path", "required": true, "type": "string", "uniqueItems": true, "description": desc})
            }
        })
        .collect();
    ps.push(if v3 {
        v3_param(&PRETTY)
    } else {
        v2_param(&PRETTY)
    });
    ps
}

fn v2_paths(d: &Definitions, defs: &[&'static ResourceDef]) -> Map<String, Value> {
    let mut paths = Map::new();
    for def in defs {
        for pi in paths_for(def, d) {
            let mut item = Map::new();
            for o in &pi.ops {
                let mut params: Vec<Value> = Vec::new();
                if let Some(b) = &o.body {
                    params.push(json!({"name": "body", "in": "body", "required": o.method != "delete", "schema": {"$ref": format!("{DEFS_PREFIX}{b}")}}));
                }
                params.extend(o.params.iter().map(|p| v2_param(p)));
                let mut responses = Map::new();
                for (c, r) in &o.responses {
                    responses.insert(
                        c.to_string(),
                        json!({"description": code_desc(*c), "schema": {"$ref": format!("{DEFS_PREFIX}{r}")}}),
                    );
                }
                responses.insert("401".into(), json!({"description": "Unauthorized"}));
                item.insert(
                    o.method.into(),
                    json!({
                        "description": o.desc, "consumes": o.consumes, "produces": PRODUCES,
                        "schemes": ["https"], "tags": [tag(def)], "operationId": o.id,
                        "parameters": params, "responses": responses,
                        "x-kubernetes-action": o.action, "x-kubernetes-group-version-kind": o.gvk,
                    }),
                );
            }
            item.insert("parameters".into(), Value::Array(path_params(&pi, false)));
            paths.insert(pi.path, Value::Object(item));
        }
    }
    paths
}

fn v3_paths(d: &Definitions, defs: &[&'static ResourceDef]) -> Map<String, Value> {
    let mut paths = Map::new();
    for def in defs {
        for pi in paths_for(def, d) {
            let mut item = Map::new();
            for o in &pi.ops {
                let mut op = json!({
                    "tags": [tag(def)], "description": o.desc, "operationId": o.id,
                    "parameters": o.params.iter().map(|p| v3_param(p)).collect::<Vec<_>>(),
                    "x-kubernetes-action": o.action, "x-kubernetes-group-version-kind": o.gvk,
                });
                if let Some(b) = &o.body {
                    let content: Map<String, Value> = o
                        .consumes
                        .iter()
                        .map(|c| {
                            (
                                c.to_string(),
                                json!({"schema": {"$ref": format!("{V3_PREFIX}{b}")}}),
                            )
                        })
                        .collect();
                    op["requestBody"] =
                        json!({"content": content, "required": o.method != "delete"});
                }
                let mut responses = Map::new();
                for (c, r) in &o.responses {
                    let content: Map<String, Value> = PRODUCES
                        .iter()
                        .map(|p| {
                            (
                                p.to_string(),
                                json!({"schema": {"$ref": format!("{V3_PREFIX}{r}")}}),
                            )
                        })
                        .collect();
                    responses.insert(
                        c.to_string(),
                        json!({"description": code_desc(*c), "content": content}),
                    );
                }
                responses.insert("401".into(), json!({"description": "Unauthorized"}));
                op["responses"] = Value::Object(responses);
                item.insert(o.method.into(), op);
            }
            item.insert("parameters".into(), Value::Array(path_params(&pi, true)));
            paths.insert(pi.path, Value::Object(item));
        }
    }
    paths
}

fn info() -> Value {
    let v = resources::version_doc();
    json!({"title": "Kubernetes", "version": v["gitVersion"]})
}

fn bearer() -> Value {
    json!({"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"})
}

/// Upstream's v2 forms of the two int-or-string types (v3 keeps k8s-openapi's form).
fn v2_fixups(defs: &mut Map<String, Value>) {
    if let Some(Value::Object(d)) = defs.get_mut("io.k8s.apimachinery.pkg.util.intstr.IntOrString")
    {
        d.remove("x-kubernetes-int-or-string");
        d.insert("type".into(), json!("string"));
        d.insert("format".into(), json!("int-or-string"));
    }
    if let Some(Value::Object(d)) = defs.get_mut("io.k8s.apimachinery.pkg.api.resource.Quantity") {
        d.remove("x-kubernetes-int-or-string");
        d.insert("type".into(), json!("string"));
    }
}

fn v2_document() -> Value {
    let d = definitions();
    let all: Vec<&'static ResourceDef> = resources::RESOURCES.iter().collect();
    let mut defs = d.defs.clone();
    v2_fixups(&mut defs);
    json!({
        "swagger": "2.0",
        "info": info(),
        "paths": v2_paths(d, &all),
        "definitions": defs,
        "securityDefinitions": {"BearerToken": bearer()},
        "security": [{"BearerToken": []}],
    })
}

/// Rewrites refs to v3 form: `#/components/schemas/…`, and a `$ref` with siblings as
/// `allOf: [{$ref}]` plus the siblings (kube-openapi's v3 builder does the same).
fn to_v3(v: &mut Value, refs: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref").cloned() {
                let name = r.strip_prefix(DEFS_PREFIX).unwrap_or(&r).to_string();
                let new_ref = json!({"$ref": format!("{V3_PREFIX}{name}")});
                refs.insert(name);
                m.remove("$ref");
                if m.is_empty() {
                    *m = new_ref.as_object().cloned().unwrap_or_default();
                } else {
                    m.insert("allOf".into(), json!([new_ref]));
                }
                return;
            }
            for (_, x) in m.iter_mut() {
                to_v3(x, refs);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| to_v3(x, refs)),
        _ => {}
    }
}

fn collect_v3_refs(v: &Value, refs: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                if let Some(n) = r.strip_prefix(V3_PREFIX) {
                    refs.insert(n.to_string());
                }
            }
            m.values().for_each(|x| collect_v3_refs(x, refs));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_v3_refs(x, refs)),
        _ => {}
    }
}

/// `/openapi/v3/<gv path>` document: the group version's paths and every schema they reach.
fn v3_document(group: &str, version: &str) -> Value {
    let d = definitions();
    let defs: Vec<&'static ResourceDef> = resources::RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let paths = v3_paths(d, &defs);
    let mut want = BTreeSet::new();
    collect_v3_refs(&Value::Object(paths.clone()), &mut want);
    let mut schemas = BTreeMap::new();
    let mut queue: Vec<String> = want.into_iter().collect();
    while let Some(n) = queue.pop() {
        if schemas.contains_key(&n) {
            continue;
        }
        let Some(mut s) = d.defs.get(&n).cloned() else {
            continue;
        };
        let mut refs = BTreeSet::new();
        to_v3(&mut s, &mut refs);
        queue.extend(refs.into_iter().filter(|r| !schemas.contains_key(r)));
        schemas.insert(n, s);
    }
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"BearerToken": bearer()}},
    })
}

struct Served {
    body: Bytes,
    etag: String,
}

struct Docs {
    v2_json: Served,
    v2_proto: Served,
    /// gv path (`api/v1`, `apis/apps/v1`) → document.
    v3: BTreeMap<String, Served>,
    v3_index: Bytes,
}

fn hash(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode_upper(sha2::Sha512::digest(b))
}

fn served(body: Vec<u8>) -> Served {
    let etag = hash(&body);
    Served {
        body: Bytes::from(body),
        etag,
    }
}

fn docs() -> &'static Docs {
    static D: OnceLock<Docs> = OnceLock::new();
    D.get_or_init(|| {
        let v2 = v2_document();
        let v2_json = served(serde_json::to_vec(&v2).unwrap_or_default());
        let v2_proto = served(crate::openapi_proto::encode_v2(&v2));
        let mut v3 = BTreeMap::new();
        let mut gvs = vec![("", "v1")];
        gvs.extend(resources::GROUPS.iter().copied());
        for (g, v) in gvs {
            let key = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            v3.insert(
                key,
                served(serde_json::to_vec(&v3_document(g, v)).unwrap_or_default()),
            );
        }
        let paths: Map<String, Value> = v3
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{k}?hash={}", s.etag)}),
                )
            })
            .collect();
        let v3_index =
            Bytes::from(serde_json::to_vec(&json!({"paths": paths})).unwrap_or_default());
        Docs {
            v2_json,
            v2_proto,
            v3,
            v3_index,
        }
    })
}

/// `Accept` media ranges by preference (goautoneg order: q, then as listed).
fn accept_ranges(accept: &str) -> Vec<String> {
    let mut r: Vec<(f32, usize, String)> = accept
        .split(',')
        .enumerate()
        .filter_map(|(i, part)| {
            let mut it = part.split(';');
            let mt = it.next()?.trim().to_ascii_lowercase();
            if mt.is_empty() {
                return None;
            }
            let qv = it
                .filter_map(|p| p.trim().strip_prefix("q=").and_then(|x| x.parse().ok()))
                .next()
                .unwrap_or(1.0);
            Some((qv, i, mt))
        })
        .filter(|(qv, _, _)| *qv > 0.0)
        .collect();
    r.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    if r.is_empty() {
        return vec!["*/*".into()];
    }
    r.into_iter().map(|x| x.2).collect()
}

fn matches(range: &str, t: &str) -> bool {
    let (rt, rs) = range.split_once('/').unwrap_or((range, ""));
    let (tt, ts) = t.split_once('/').unwrap_or((t, ""));
    (rt == "*" || rt == tt) && (rs == "*" || rs == ts)
}

/// The first of `offered` the client accepts, in the client's preference order.
fn negotiate(accept: &str, offered: &[&'static str]) -> Option<&'static str> {
    for range in accept_ranges(accept) {
        if let Some(t) = offered.iter().find(|t| matches(&range, t)) {
            return Some(t);
        }
    }
    None
}

fn respond(code: u16, ct: &str, body: Bytes, headers: &[(&str, String)]) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
    let h = r.headers_mut();
    if let Ok(v) = hyper::header::HeaderValue::from_str(ct) {
        h.insert("content-type", v);
    }
    for (k, v) in headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            h.insert(n, v);
        }
    }
    r
}

fn not_acceptable() -> Response<Body> {
    respond(406, "text/plain; charset=utf-8", Bytes::new(), &[])
}

/// `GET /openapi/v2`, `/openapi/v3`, `/openapi/v3/<gv>`; `None` for other paths.
pub(crate) fn serve(
    path: &str,
    accept: &str,
    query: &HashMap<String, String>,
) -> Option<Result<Response<Body>, ApiError>> {
    let path = path.trim_end_matches('/');
    let d = docs();
    if path == "/openapi/v2" {
        let ct = negotiate(accept, &["application/json", V2_PROTO, V2_PROTO_DEPRECATED]);
        let Some(ct) = ct else {
            return Some(Ok(not_acceptable()));
        };
        let (ct, s) = if ct == "application/json" {
            (ct, &d.v2_json)
        } else {
            (V2_PROTO, &d.v2_proto)
        };
        return Some(Ok(respond(
            200,
            ct,
            s.body.clone(),
            &[
                ("etag", format!("\"{}\"", s.etag)),
                ("vary", "Accept".into()),
            ],
        )));
    }
    if path == "/openapi/v3" {
        return Some(Ok(respond(
            200,
            "application/json",
            d.v3_index.clone(),
            &[],
        )));
    }
    let gv = path.strip_prefix("/openapi/v3/")?;
    let Some(s) = d.v3.get(gv) else {
        return Some(Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )));
    };
    // kube-openapi handler3 also serves v3 as protobuf; only JSON is built here, so a client that
    // accepts nothing else gets 406 (kubectl and client-go ask for JSON).
    if negotiate(accept, &["application/json", V3_PROTO, V3_PROTO_DEPRECATED])
        != Some("application/json")
    {
        return Some(Ok(not_acceptable()));
    }
    match query.get("hash") {
        // handler3: a stale hash redirects to the current one; a current one is immutable.
        Some(h) if *h != s.etag => Some(Ok(respond(
            301,
            "text/plain; charset=utf-8",
            Bytes::new(),
            &[("location", format!("/openapi/v3/{gv}?hash={}", s.etag))],
        ))),
        Some(_) => Some(Ok(respond(
            200,
            "application/json",
            s.body.clone(),
            &[
                ("etag", format!("\"{}\"", s.etag)),
                ("cache-control", "public, immutable".into()),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT".into()),
            ],
        ))),
        None => Some(Ok(respond(
            200,
            "application/json",
            s.body.clone(),
            &[
                ("etag", format!("\"{}\"", s.etag)),
                ("cache-control", "no-cache, private".into()),
            ],
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_kind_has_a_schema_with_its_gvk() {
        let d = definitions();
        for r in resources::RESOURCES {
            for kind in [r.kind.to_string(), r.list_kind()] {
                let name = d
                    .kinds
                    .get(&(r.group.to_string(), kind.clone()))
                    .unwrap_or_else(|| panic!("no schema for {}/{kind}", r.group));
                let s = &d.defs[name];
                assert_eq!(
                    s["x-kubernetes-group-version-kind"],
                    json!([gvk(r.group, r.version, &kind)]),
                    "{name}"
                );
            }
        }
        assert_eq!(
            d.defs["io.k8s.api.core.v1.NodeStatus"]["properties"]["conditions"]
                ["x-kubernetes-patch-merge-key"],
            "type"
        );
        assert!(
            d.defs["io.k8s.api.core.v1.NodeSpec"]["properties"]["taints"]["description"]
                .as_str()
                .unwrap()
                .contains("taints")
        );
    }

    #[test]
    fn documents_are_closed_under_refs() {
        let v2 = v2_document();
        let mut refs = BTreeSet::new();
        fn walk(v: &Value, out: &mut BTreeSet<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        out.insert(r.to_string());
                    }
                    m.values().for_each(|x| walk(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        walk(&v2, &mut refs);
        for r in &refs {
            let n = r.strip_prefix(DEFS_PREFIX).unwrap();
            assert!(v2["definitions"].get(n).is_some(), "dangling {r}");
        }
        let v3 = v3_document("", "v1");
        let mut refs = BTreeSet::new();
        collect_v3_refs(&v3, &mut refs);
        for n in &refs {
            assert!(v3["components"]["schemas"].get(n).is_some(), "dangling {n}");
        }
        let patch = &v3["paths"]["/api/v1/nodes/{name}"]["patch"];
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "", "kind": "Node", "version": "v1"})
        );
    }

    #[test]
    fn patch_meta_names_fields_of_the_served_schemas() {
        let d = definitions();
        for m in patch_meta::FIELDS {
            assert!(
                d.defs
                    .get(m.definition)
                    .and_then(|x| x.pointer(&format!("/properties/{}", m.field)))
                    .is_some(),
                "{}.{}",
                m.definition,
                m.field
            );
        }
    }

    #[test]
    fn owner_walks_through_refs_and_lists() {
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            owner_of("io.k8s.api.core.v1.Node", &p(&["status", "conditions"])).as_deref(),
            Some("io.k8s.api.core.v1.NodeStatus")
        );
        assert_eq!(
            owner_of(
                "io.k8s.api.apps.v1.DaemonSet",
                &p(&["spec", "template", "spec", "containers", "env"])
            )
            .as_deref(),
            Some("io.k8s.api.core.v1.Container")
        );
    }
}
