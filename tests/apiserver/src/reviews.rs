//! Who am I and what may I do: `authorization.k8s.io/v1` SelfSubjectAccessReview and
//! SelfSubjectRulesReview (`pkg/registry/authorization/selfsubject*review/rest.go`) and
//! `authentication.k8s.io/v1` SelfSubjectReview (`pkg/registry/authentication/selfsubjectreview`).
//! Access reviews ask the very authorizer chain requests go through ([`State::authorize`]); rules
//! reviews list the rules the RBAC authorizer resolves for the user (fixed data and stored objects,
//! `rbac::rules_for`), and say `incomplete` for nodes because the Node authorizer cannot enumerate
//! its rules (`NodeAuthorizer.RulesFor`).

use crate::auth::{self, Attrs, User};
use crate::proto::{fields, string, Field};
use crate::rbac;
use crate::status::ApiError;
use crate::State;
use bytes::Bytes;
use serde_json::{json, Map, Value};

const AUTHZ: &str = "authorization.k8s.io";
const AUTHN: &str = "authentication.k8s.io";

/// `(group, resource, kind)` served here, all cluster-scoped and create-only.
const REVIEWS: &[(&str, &str, &str)] = &[
    (AUTHZ, "selfsubjectaccessreviews", "SelfSubjectAccessReview"),
    (AUTHZ, "selfsubjectrulesreviews", "SelfSubjectRulesReview"),
    (AUTHN, "selfsubjectreviews", "SelfSubjectReview"),
];

impl State {
    /// The authorizer chain with the Node authorizer's graph read from the current store.
    pub fn authorize(&self, user: &User, a: &Attrs) -> Result<(), String> {
        let sel = self
            .node_selectors
            .load(std::sync::atomic::Ordering::Relaxed);
        let store = self.store();
        auth::authorize_in(user, a, &store, sel)
    }

    fn decide(&self, user: &User, a: &Attrs) -> (bool, String) {
        let sel = self
            .node_selectors
            .load(std::sync::atomic::Ordering::Relaxed);
        let store = self.store();
        auth::decide(user, a, &store, sel)
    }
}

/// Discovery entries for `/apis/<group>/<version>` (the groups are listed in `resources::GROUPS`).
pub fn discovery(group: &str, version: &str) -> Vec<Value> {
    if version != "v1" {
        return Vec::new();
    }
    REVIEWS
        .iter()
        .filter(|(g, _, _)| *g == group)
        .map(|(_, r, k)| {
            json!({"name": r, "singularName": r.trim_end_matches('s'), "namespaced": false,
                   "kind": k, "verbs": ["create"]})
        })
        .collect()
}

/// Serves a review path; `None` for every other path.
pub fn route(
    state: &State,
    user: &User,
    method: &hyper::Method,
    path: &str,
    content_type: &str,
    body: &Bytes,
) -> Option<Result<Value, ApiError>> {
    let p = path.trim_end_matches('/');
    let &(group, resource, kind) = REVIEWS
        .iter()
        .find(|(g, r, _)| p == format!("/apis/{g}/v1/{r}"))?;
    let verb = match *method {
        hyper::Method::POST => "create",
        hyper::Method::GET | hyper::Method::HEAD => "list",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE => "deletecollection",
        _ => "unknown",
    };
    let a = Attrs {
        verb: verb.into(),
        is_resource: true,
        group: group.into(),
        version: "v1".into(),
        resource: resource.into(),
        path: path.into(),
        ..Default::default()
    };
    if let Err(reason) = state.authorize(user, &a) {
        return Some(Err(a.forbidden(user, &reason)));
    }
    if verb != "create" {
        return Some(Err(ApiError::method_not_allowed()));
    }
    let obj = match decode(content_type, body, kind) {
        Ok(o) => o,
        Err(e) => return Some(Err(e)),
    };
    Some(match kind {
        "SelfSubjectAccessReview" => access_review(state, user, obj),
        "SelfSubjectRulesReview" => rules_review(state, user, &obj),
        _ => Ok(self_subject_review(user)),
    })
}

fn decode(content_type: &str, body: &Bytes, kind: &str) -> Result<Value, ApiError> {
    let v: Value = if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        decode_proto(body, kind).ok_or_else(|| {
            ApiError::bad_request(format!("unable to decode {kind} from protobuf"))
        })?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the object provided is unrecognized (must be of type {kind}): {e}"
            ))
        })?
    };
    if let Some(k) = v.get("kind").and_then(|k| k.as_str()) {
        if k != kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({kind})"
            )));
        }
    }
    Ok(v)
}

fn meta() -> Value {
    json!({"creationTimestamp": null})
}

/// `ResourceAttributes.fieldSelector` as `authorizationutil` turns it into requirements
/// (`rawSelector` parsed; `requirements` In/NotIn with one value); unparsable gives none.
fn field_selector(fs: Option<&Value>) -> Vec<(String, bool, String)> {
    let Some(fs) = fs else {
        return Vec::new();
    };
    if let Some(raw) = fs.get("rawSelector").and_then(|r| r.as_str()) {
        return crate::nodeauthz::parse_field_selector(raw).unwrap_or_default();
    }
    let mut out = Vec::new();
    for r in fs
        .get("requirements")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
    {
        let vals = r.get("values").and_then(|v| v.as_array());
        let one = match vals {
            Some(a) if a.len() == 1 => a[0].as_str().unwrap_or("").to_string(),
            _ => return Vec::new(),
        };
        let key = r["key"].as_str().unwrap_or("").to_string();
        match r["operator"].as_str() {
            Some("In") => out.push((key, true, one)),
            Some("NotIn") => out.push((key, false, one)),
            _ => return Vec::new(),
        }
    }
    out
}

fn access_review(state: &State, user: &User, obj: Value) -> Result<Value, ApiError> {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let ra = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let nra = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    let s = |v: &Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let a = match (ra, nra) {
        (Some(ra), None) => Attrs {
            verb: s(ra, "verb"),
            is_resource: true,
            group: s(ra, "group"),
            version: s(ra, "version"),
            resource: s(ra, "resource"),
            subresource: s(ra, "subresource"),
            namespace: s(ra, "namespace"),
            name: s(ra, "name"),
            path: String::new(),
            field_selector: field_selector(ra.get("fieldSelector")),
        },
        (None, Some(n)) => Attrs {
            verb: s(n, "verb"),
            path: s(n, "path"),
            ..Default::default()
        },
        (None, None) => {
            return Err(invalid_review(
                "spec.resourceAttributes",
                "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ))
        }
        (Some(_), Some(n)) => {
            return Err(invalid_review(
                "spec.nonResourceAttributes",
                &format!(
                    "Invalid value: authorization.NonResourceAttributes{{Path:{:?}, Verb:{:?}}}: cannot be specified in combination with resourceAttributes",
                    s(n, "path"),
                    s(n, "verb")
                ),
            ))
        }
    };
    let (allowed, reason) = state.decide(user, &a);
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    let mut m = obj
        .get("metadata")
        .and_then(|m| m.as_object())
        .cloned()
        .unwrap_or_default();
    m.entry("creationTimestamp").or_insert(Value::Null);
    Ok(
        json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
              "metadata": m, "spec": spec, "status": status}),
    )
}

fn invalid_review(field: &str, msg: &str) -> ApiError {
    let body = msg.to_string();
    ApiError {
        details: Some(json!({"group": AUTHZ, "kind": "SelfSubjectAccessReview",
            "causes": [{"reason": "FieldValueInvalid", "message": body, "field": field}]})),
        ..ApiError::new(
            422,
            "Invalid",
            format!("SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: {field}: {msg}"),
        )
    }
}

fn rules_review(state: &State, user: &User, obj: &Value) -> Result<Value, ApiError> {
    let ns = obj
        .pointer("/spec/namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("");
    if ns.is_empty() {
        return Err(ApiError::bad_request("no namespace on request"));
    }
    // The union of the chain's `RulesFor` (union.go): the Node authorizer cannot enumerate its
    // rules; the privileged-group authorizer resolves none (system:masters' come from cluster-admin).
    let mut errors = Vec::new();
    let incomplete = user.node_name().is_some();
    if incomplete {
        errors.push("node authorizer does not support user rule resolution".to_string());
    }
    let (rules, rbac_errors) = rbac::rules_for(user, ns, &state.store());
    errors.extend(rbac_errors);
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if !r.resources.is_empty() {
            let mut o = Map::new();
            o.insert("verbs".into(), json!(r.verbs));
            if !r.api_groups.is_empty() {
                o.insert("apiGroups".into(), json!(r.api_groups));
            }
            o.insert("resources".into(), json!(r.resources));
            if !r.resource_names.is_empty() {
                o.insert("resourceNames".into(), json!(r.resource_names));
            }
            resource_rules.push(Value::Object(o));
        }
        if !r.non_resource_urls.is_empty() {
            non_resource_rules
                .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    let mut status = json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules,
                            "incomplete": incomplete});
    if !errors.is_empty() {
        status["evaluationError"] = json!(rbac::aggregate(&errors));
    }
    Ok(
        json!({"kind": "SelfSubjectRulesReview", "apiVersion": "authorization.k8s.io/v1",
              "metadata": meta(), "spec": {}, "status": status}),
    )
}

fn self_subject_review(user: &User) -> Value {
    let mut ui = Map::new();
    if !user.name.is_empty() {
        ui.insert("username".into(), json!(user.name));
    }
    if !user.uid.is_empty() {
        ui.insert("uid".into(), json!(user.uid));
    }
    if !user.groups.is_empty() {
        ui.insert("groups".into(), json!(user.groups));
    }
    json!({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
           "metadata": {"creationTimestamp": crate::clock::now_rfc3339()},
           "status": {"userInfo": ui}})
}

fn sub<'a>(f: &'a [(u64, Field<'a>)], n: u64) -> Option<&'a [u8]> {
    f.iter().find_map(|(k, v)| match (k, v) {
        (k, Field::Bytes(b)) if *k == n => Some(*b),
        _ => None,
    })
}

fn put_str(o: &mut Value, key: &str, f: &[(u64, Field)], n: u64) {
    if let Some((_, v)) = f.iter().find(|(k, _)| *k == n) {
        let s = string(v);
        if s.as_str().is_some_and(|x| !x.is_empty()) {
            o[key] = s;
        }
    }
}

/// The review kinds' protobuf (`k8s\0` + runtime.Unknown), fields per `generated.proto`.
fn decode_proto(body: &[u8], kind: &str) -> Option<Value> {
    let env = fields(body.strip_prefix(b"k8s\0")?)?;
    let raw = fields(sub(&env, 2).unwrap_or(&[]))?;
    let mut obj = json!({"kind": kind});
    let spec = sub(&raw, 2).and_then(fields).unwrap_or_default();
    match kind {
        "SelfSubjectAccessReview" => {
            let mut s = json!({});
            if let Some(ra) = sub(&spec, 1).and_then(fields) {
                let mut r = json!({});
                for (i, k) in [
                    "namespace",
                    "verb",
                    "group",
                    "version",
                    "resource",
                    "subresource",
                    "name",
                ]
                .iter()
                .enumerate()
                {
                    put_str(&mut r, k, &ra, i as u64 + 1);
                }
                if let Some(fs) = sub(&ra, 8).and_then(fields) {
                    let mut f = json!({});
                    put_str(&mut f, "rawSelector", &fs, 1);
                    let reqs: Vec<Value> = fs
                        .iter()
                        .filter_map(|(n, v)| match (n, v) {
                            (2, Field::Bytes(b)) => fields(b),
                            _ => None,
                        })
                        .map(|rf| {
                            let mut q = json!({});
                            put_str(&mut q, "key", &rf, 1);
                            put_str(&mut q, "operator", &rf, 2);
                            q["values"] = json!(rf
                                .iter()
                                .filter(|(n, _)| *n == 3)
                                .map(|(_, v)| string(v))
                                .collect::<Vec<_>>());
                            q
                        })
                        .collect();
                    if !reqs.is_empty() {
                        f["requirements"] = json!(reqs);
                    }
                    r["fieldSelector"] = f;
                }
                s["resourceAttributes"] = r;
            }
            if let Some(nra) = sub(&spec, 2).and_then(fields) {
                let mut n = json!({});
                put_str(&mut n, "path", &nra, 1);
                put_str(&mut n, "verb", &nra, 2);
                s["nonResourceAttributes"] = n;
            }
            obj["spec"] = s;
        }
        "SelfSubjectRulesReview" => {
            let mut s = json!({});
            put_str(&mut s, "namespace", &spec, 1);
            obj["spec"] = s;
        }
        _ => {}
    }
    Some(obj)
}
