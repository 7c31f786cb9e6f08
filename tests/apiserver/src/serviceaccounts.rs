//! ServiceAccount tokens: the `serviceaccounts/token` subresource (TokenRequest,
//! `pkg/registry/core/serviceaccount/storage/token.go`), the authenticator of the tokens it issues
//! (`pkg/serviceaccount` with `--api-audiences` defaulting to kubeadm's issuer), and the
//! service-account controller's `default` ServiceAccount in every namespace.
//!
//! Upstream signs a JWT; here a token is an opaque random string the server remembers with its
//! claims (service account and its uid, audiences, expiry, bound object). What it authenticates as
//! is upstream's: `system:serviceaccount:<ns>:<name>` with the service account's uid and the groups
//! `system:serviceaccounts`, `system:serviceaccounts:<ns>`, `system:authenticated`; it stops
//! authenticating when it expires, when the service account (or the bound object) is deleted or
//! replaced, and it never authenticates here if its audiences do not include the API audience.

use crate::auth::User;
use crate::clock;
use crate::finalizers;
use crate::resources::find;
use crate::status::ApiError;
use crate::store::{meta_str, Store};
use crate::validation::{invalid_error, ErrType, FieldErr};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// kube-apiserver's `--api-audiences`, which default to the `--service-account-issuer` kubeadm sets.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// `SetDefaults_TokenRequestSpec`: one hour.
const DEFAULT_EXPIRATION: i64 = 3600;

/// The claims of an issued token.
#[derive(Debug, Clone)]
struct Claims {
    namespace: String,
    name: String,
    uid: String,
    audiences: Vec<String>,
    expires: SystemTime,
    /// The object the token is bound to.
    bound: Option<Bound>,
}

/// A core/v1 object a token is bound to (`spec.boundObjectRef`).
#[derive(Debug, Clone)]
struct Bound {
    resource: &'static str,
    namespace: String,
    name: String,
    uid: String,
}

/// The tokens this server has issued.
#[derive(Default)]
pub struct Issued {
    tokens: Mutex<HashMap<String, Claims>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Issued {
    fn issue(&self, claims: Claims) -> String {
        let token = crate::random_token(64);
        let now = clock::now();
        let mut m = lock(&self.tokens);
        m.retain(|_, c| c.expires > now);
        m.insert(token.clone(), claims);
        token
    }

    /// `None` when `token` is not one of ours; `Some(Err)` (401) when it is but is no longer valid.
    pub fn authenticate(&self, token: &str, store: &Store) -> Option<Result<User, ApiError>> {
        let c = lock(&self.tokens).get(token).cloned()?;
        Some(validate(&c, store).ok_or_else(ApiError::unauthorized))
    }
}

/// The checks of upstream's token validator (`validator.Validate`): not expired, for this API
/// server's audience, service account (and bound object) still there with the same uid.
fn validate(c: &Claims, store: &Store) -> Option<User> {
    if c.expires <= clock::now() || !c.audiences.iter().any(|a| a == API_AUDIENCE) {
        return None;
    }
    let live = |resource: &str, ns: &str, name: &str, uid: &str| {
        find("", "v1", resource)
            .and_then(|def| store.get(def, ns, name))
            .is_some_and(|o| meta_str(o, "uid") == uid && !finalizers::is_deleting(o))
    };
    if !live("serviceaccounts", &c.namespace, &c.name, &c.uid) {
        return None;
    }
    if let Some(b) = &c.bound {
        if !live(b.resource, &b.namespace, &b.name, &b.uid) {
            return None;
        }
    }
    let mut u = User::authenticated(
        &format!("system:serviceaccount:{}:{}", c.namespace, c.name),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", c.namespace),
        ],
    );
    u.uid = c.uid.clone();
    Some(u)
}

fn invalid(errs: &[FieldErr]) -> ApiError {
    invalid_error("TokenRequest", "authentication.k8s.io", "", errs)
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: the TokenRequest with its
/// `status.token`.
pub(crate) fn token_request(
    issued: &Issued,
    store: &Store,
    ns: &str,
    name: &str,
    req: Value,
) -> Result<Value, ApiError> {
    if !req.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized (must be of type TokenRequest)",
        ));
    }
    if let Some(k) = req.get("kind").and_then(|k| k.as_str()) {
        if k != "TokenRequest" {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind (TokenRequest)"
            )));
        }
    }
    let spec = req.get("spec").cloned().unwrap_or(json!({}));
    let mut errs = Vec::new();
    let body_name = meta_str(&req, "name");
    if !body_name.is_empty() && body_name != name {
        errs.push(FieldErr::invalid(
            "metadata.name",
            body_name,
            "must match the service account name if specified",
        ));
    }
    let body_ns = meta_str(&req, "namespace");
    if !body_ns.is_empty() && body_ns != ns {
        errs.push(FieldErr::invalid(
            "metadata.namespace",
            body_ns,
            "must match the service account namespace if specified",
        ));
    }
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds: expected an integer"))?,
    };
    if seconds < 600 {
        errs.push(FieldErr::new(
            ErrType::Invalid,
            "spec.expirationSeconds",
            seconds.to_string(),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if seconds > 1 << 32 {
        errs.push(FieldErr::new(
            ErrType::Invalid,
            "spec.expirationSeconds",
            seconds.to_string(),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    if !errs.is_empty() {
        return Err(invalid(&errs));
    }
    let sa = find("", "v1", "serviceaccounts")
        .and_then(|def| store.get(def, ns, name))
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
    let bound = match spec.get("boundObjectRef").filter(|b| b.is_object()) {
        Some(r) => Some(bound_object(store, ns, name, r)?),
        None => None,
    };
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences = vec![API_AUDIENCE.to_string()];
    }
    let now = clock::now();
    let expires = now + Duration::from_secs(seconds.unsigned_abs());
    let bound_ref = match &bound {
        Some(_) => spec["boundObjectRef"].clone(),
        None => Value::Null,
    };
    let token = issued.issue(Claims {
        namespace: ns.into(),
        name: name.into(),
        uid: meta_str(sa, "uid").into(),
        audiences: audiences.clone(),
        expires,
        bound,
    });
    let mut meta = req.get("metadata").cloned().unwrap_or(json!({}));
    if !meta.is_object() {
        meta = json!({});
    }
    meta["name"] = json!(name);
    meta["namespace"] = json!(ns);
    meta["creationTimestamp"] = json!(clock::rfc3339(now));
    Ok(json!({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": meta,
        "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": bound_ref},
        "status": {"token": token, "expirationTimestamp": clock::rfc3339(expires)},
    }))
}

/// `spec.boundObjectRef`: a Pod running as this service account, a Secret or a Node.
fn bound_object(store: &Store, ns: &str, sa: &str, r: &Value) -> Result<Bound, ApiError> {
    let s = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let (kind, api_version, name, uid) = (s("kind"), s("apiVersion"), s("name"), s("uid"));
    let (resource, obj_ns) = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Pod") => ("pods", ns),
        ("v1", "Secret") => ("secrets", ns),
        ("v1", "Node") => ("nodes", ""),
        _ => {
            let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
            let version = api_version.rsplit('/').next().unwrap_or("");
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
    };
    let obj = find("", "v1", resource)
        .and_then(|def| store.get(def, obj_ns, &name))
        .ok_or_else(|| ApiError::not_found("", resource, &name))?;
    if resource == "pods" {
        let pod_sa = obj
            .pointer("/spec/serviceAccountName")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if pod_sa != sa {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {sa:?} to pod running with serviceaccount {pod_sa:?}"
            )));
        }
    }
    let actual = meta_str(obj, "uid").to_string();
    if !uid.is_empty() && uid != actual {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {kind} {name:?}: the UID in the bound object reference ({uid}) does not match the UID in record ({actual}). The object might have been deleted and then recreated"),
        ));
    }
    Ok(Bound {
        resource,
        namespace: obj_ns.to_string(),
        name,
        uid: actual,
    })
}

/// The service-account controller (`pkg/controller/serviceaccount`): an active namespace has a
/// `default` ServiceAccount; it is made again when deleted.
pub fn ensure_default(store: &mut Store, ns: &str) {
    let (Some(nsdef), Some(sadef)) = (
        find("", "v1", "namespaces"),
        find("", "v1", "serviceaccounts"),
    ) else {
        return;
    };
    let active = store
        .get(nsdef, "", ns)
        .is_some_and(|n| !finalizers::is_deleting(n));
    if !active || store.get(sadef, ns, "default").is_some() {
        return;
    }
    let _ = store.create(
        sadef,
        ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "default", "namespace": ns}}),
    );
}
