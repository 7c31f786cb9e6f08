//! Request handling: faults, authentication, authorization, then the REST semantics of the
//! generic registry (get/list/watch/create/update/patch/delete, subresources, preconditions).

use crate::auth::{self, Attrs, User};
use crate::faults::Action;
use crate::fieldvalidation::{self, Stage};
use crate::noderestriction::{self, Op};
use crate::patch;
use crate::resources::{self, ResourceDef};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{self, ApiError};
use crate::store::{meta_str, Store};
use crate::watch::{self, WatchParams};
use crate::{table, RequestRecord, State};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Upstream's request body limit (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

pub fn with_type(def: &ResourceDef, mut obj: Value) -> Value {
    if obj.get("kind").is_none() {
        obj["kind"] = json!(def.kind);
    }
    if obj.get("apiVersion").is_none() {
        obj["apiVersion"] = json!(def.api_version());
    }
    obj
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(s) = e.retry_after {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

fn text_response(code: u16, s: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(s.as_bytes())).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_found_path() -> ApiError {
    ApiError {
        details: Some(json!({})),
        ..ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect()
}

/// A resource request's target.
#[derive(Debug, Clone)]
pub struct Target {
    pub def: &'static ResourceDef,
    /// Namespace from the URL ("" for cluster-scoped or all-namespaces requests).
    pub ns: String,
    pub name: String,
    pub sub: String,
}

/// `None` for non-resource paths (discovery etc.), `Err` for unknown resources.
fn parse_target(path: &str) -> Result<Option<Target>, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(None),
    };
    let find = |r: &str| resources::find(group, version, r).ok_or_else(not_found_path);
    let t = match rest {
        ["namespaces"] => Target {
            def: find("namespaces")?,
            ns: String::new(),
            name: String::new(),
            sub: String::new(),
        },
        ["namespaces", n] => Target {
            def: find("namespaces")?,
            ns: String::new(),
            name: n.to_string(),
            sub: String::new(),
        },
        ["namespaces", n, r] if group.is_empty() && (*r == "status" || *r == "finalize") => {
            Target {
                def: find("namespaces")?,
                ns: String::new(),
                name: n.to_string(),
                sub: r.to_string(),
            }
        }
        ["namespaces", ns, r, tail @ ..] if tail.len() <= 2 => {
            let def = find(r)?;
            if !def.namespaced {
                return Err(not_found_path());
            }
            Target {
                def,
                ns: ns.to_string(),
                name: tail.first().map(|s| s.to_string()).unwrap_or_default(),
                sub: tail.get(1).map(|s| s.to_string()).unwrap_or_default(),
            }
        }
        [r, tail @ ..] if tail.len() <= 2 => {
            let def = find(r)?;
            if def.namespaced && !tail.is_empty() {
                return Err(not_found_path());
            }
            Target {
                def,
                ns: String::new(),
                name: tail.first().map(|s| s.to_string()).unwrap_or_default(),
                sub: tail.get(1).map(|s| s.to_string()).unwrap_or_default(),
            }
        }
        _ => return Err(not_found_path()),
    };
    if !t.sub.is_empty() && !t.def.subresources.contains(&t.sub.as_str()) {
        return Err(not_found_path());
    }
    Ok(Some(t))
}

/// `(def, namespace, name)` of an object path, for the library's direct store access.
pub fn parse_object_path(path: &str) -> Option<(&'static ResourceDef, String, String)> {
    let t = parse_target(path).ok()??;
    if t.name.is_empty() {
        return None;
    }
    // For namespaces themselves the "namespace" is empty; the name is the namespace.
    Some((t.def, t.ns, t.name))
}

fn verb_of(method: &hyper::Method, t: &Target, q: &HashMap<String, String>) -> &'static str {
    let watch = q.get("watch").is_some_and(|v| v == "true" || v == "1");
    match *method {
        hyper::Method::GET | hyper::Method::HEAD if t.name.is_empty() => {
            if watch {
                "watch"
            } else {
                "list"
            }
        }
        hyper::Method::GET | hyper::Method::HEAD => {
            if watch {
                "watch"
            } else {
                "get"
            }
        }
        hyper::Method::POST => "create",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE if t.name.is_empty() => "deletecollection",
        hyper::Method::DELETE => "delete",
        _ => "unknown",
    }
}

struct Ctx {
    state: Arc<State>,
    user: User,
    q: HashMap<String, String>,
    accept: String,
    content_type: String,
    user_agent: String,
    body: Bytes,
    /// `Warning` headers for the response (fieldValidation=Warn).
    warnings: Arc<Mutex<Vec<String>>>,
}

impl Ctx {
    fn warn(&self, w: Vec<String>) {
        if let Ok(mut g) = self.warnings.lock() {
            g.extend(w);
        }
    }
}

pub async fn handle(
    state: Arc<State>,
    peer_cert: Option<&[u8]>,
    drop_conn: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let mut record = RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        user: String::new(),
        status: 0,
        verb: String::new(),
    };

    if !path.starts_with("/_test/") {
        let d = state.faults.decide(&path);
        if let Some(until) = d.pause_until {
            tokio::time::sleep_until(until.into()).await;
        }
        if !d.latency.is_zero() {
            tokio::time::sleep(d.latency).await;
        }
        match d.action {
            Action::Serve => {}
            Action::Drop => {
                record.status = 0;
                state.record(record);
                drop_conn.cancel();
                return Err(std::io::Error::other("fault injection: dropped connection"));
            }
            Action::Fail(code) => {
                let e = match code {
                    429 => {
                        ApiError::too_many_requests("Too many requests, please try again later.", 1)
                    }
                    500 => ApiError::internal("fault injected by keel-test-apiserver"),
                    503 => ApiError {
                        retry_after: Some(1),
                        ..ApiError::new(
                            503,
                            "ServiceUnavailable",
                            "the server is currently unable to handle the request",
                        )
                    },
                    c => ApiError::new(
                        c,
                        "InternalError",
                        format!("fault injected by keel-test-apiserver ({c})"),
                    ),
                };
                record.status = code;
                state.record(record);
                return Ok(error_response(&e));
            }
        }
    }

    let headers = req.headers().clone();
    let hv = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let bearer = hv("authorization")
        .strip_prefix("Bearer ")
        .map(|s| s.trim().to_string())
        // An empty bearer token authenticates no one: the request is anonymous (bearertoken.go).
        .filter(|s| !s.is_empty());
    let accept = hv("accept");
    let content_type = hv("content-type");
    let user_agent = hv("user-agent");

    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let e = ApiError::new(
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            );
            record.status = 413;
            state.record(record);
            return Ok(error_response(&e));
        }
    };

    let user = {
        let store = state.store();
        auth::authenticate(bearer.as_deref(), peer_cert, &state.tokens, &store)
    };
    let user = match user {
        Ok(u) => u,
        Err(e) => {
            record.status = 401;
            state.record(record);
            return Ok(error_response(&e));
        }
    };
    record.user = user.name.clone();
    let q = parse_query(&query);
    let ctx = Ctx {
        state: state.clone(),
        user,
        q,
        accept,
        content_type,
        user_agent,
        body,
        warnings: Arc::default(),
    };
    let (mut resp, verb) = match route(&ctx, &method, &path).await {
        Ok(x) => x,
        Err((e, verb)) => (error_response(&e), verb),
    };
    for w in ctx.warnings.lock().map(|g| g.clone()).unwrap_or_default() {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&fieldvalidation::warning_header(&w)) {
            resp.headers_mut().append("warning", v);
        }
    }
    record.status = resp.status().as_u16();
    record.verb = verb;
    tracing::debug!(method = %record.method, path = %record.path, user = %record.user, status = record.status, "request");
    state.record(record);
    Ok(resp)
}

type Routed = Result<(Response<Body>, String), (ApiError, String)>;

async fn route(ctx: &Ctx, method: &hyper::Method, path: &str) -> Routed {
    if let Some(r) = crate::reviews::route(
        &ctx.state,
        &ctx.user,
        method,
        path,
        &ctx.content_type,
        &ctx.body,
    ) {
        return r
            .map(|v| (json_response(201, &v), "create".into()))
            .map_err(|e| (e, "create".into()));
    }
    let target = parse_target(path).map_err(|e| (e, String::new()))?;
    let Some(t) = target else {
        let a = Attrs {
            verb: method.as_str().to_lowercase(),
            is_resource: false,
            path: path.to_string(),
            ..Default::default()
        };
        let a = Attrs {
            verb: if a.verb == "head" {
                "get".into()
            } else {
                a.verb.clone()
            },
            ..a
        };
        if let Err(reason) = ctx.state.authorize(&ctx.user, &a) {
            return Err((a.forbidden(&ctx.user, &reason), String::new()));
        }
        return non_resource(ctx, method, path)
            .map(|r| (r, String::new()))
            .map_err(|e| (e, String::new()));
    };
    let verb = verb_of(method, &t, &ctx.q).to_string();
    if verb == "unknown" {
        return Err((ApiError::method_not_allowed(), verb));
    }
    let attrs = Attrs {
        verb: verb.clone(),
        is_resource: true,
        group: t.def.group.into(),
        version: t.def.version.into(),
        resource: t.def.resource.into(),
        subresource: t.sub.clone(),
        namespace: if t.def.resource == "namespaces" {
            t.name.clone()
        } else {
            t.ns.clone()
        },
        name: t.name.clone(),
        path: path.into(),
        field_selector: crate::nodeauthz::request_field_selector(
            &verb,
            ctx.q.get("fieldSelector").map(|s| s.as_str()),
        ),
    };
    let attrs = Attrs {
        name: crate::nodeauthz::name_from_field_selector(
            &verb,
            ctx.q.get("fieldSelector").map(|s| s.as_str()),
        )
        .filter(|_| attrs.name.is_empty())
        .unwrap_or(attrs.name.clone()),
        ..attrs.clone()
    };
    if let Err(reason) = ctx.state.authorize(&ctx.user, &attrs) {
        return Err((attrs.forbidden(&ctx.user, &reason), verb));
    }
    // dryRun=All runs the same code against a private copy of the state (crate::dryrun).
    let dry = crate::dryrun::requested(&verb, &t.sub, &ctx.q, &ctx.content_type, &ctx.body)
        .map_err(|e| (e, verb.clone()))?;
    let real_state = ctx.state.clone();
    let scratch;
    let ctx = if dry {
        scratch = Ctx {
            state: Arc::new(ctx.state.dry_run_copy()),
            user: ctx.user.clone(),
            q: ctx.q.clone(),
            accept: ctx.accept.clone(),
            content_type: ctx.content_type.clone(),
            user_agent: ctx.user_agent.clone(),
            body: ctx.body.clone(),
            warnings: ctx.warnings.clone(),
        };
        &scratch
    } else {
        ctx
    };
    let r = match verb.as_str() {
        // Create-only subresources (their REST storage implements nothing else).
        v if matches!(t.sub.as_str(), "eviction" | "token") && v != "create" => {
            Err(ApiError::method_not_allowed())
        }
        "get" => get(ctx, &t),
        "list" => list(ctx, &t),
        "watch" => start_watch(ctx, &t),
        "create" if t.sub == "eviction" => evict(ctx, &t),
        "create" if t.sub == "token" => create_token(ctx, &t),
        "create" if t.name.is_empty() => create(ctx, &t),
        "update" => update(ctx, &t),
        "patch" => patch_object(ctx, &t),
        "delete" => delete(ctx, &t),
        "deletecollection" => delete_collection(ctx, &t),
        _ => Err(ApiError::method_not_allowed()),
    };
    let r = match r {
        Ok(resp) if dry => crate::dryrun::finish(resp, t.def, &real_state).await,
        r => r,
    };
    let r = match r {
        Ok(resp) if crate::eventconv::is_event(t.def) && verb != "watch" => {
            event_view(resp, t.def).await
        }
        r => r,
    };
    r.map(|x| (x, verb.clone())).map_err(|e| (e, verb))
}

/// A response about Events as the requested API version shows them (eventconv.rs): objects are
/// stored once for both versions.
async fn event_view(resp: Response<Body>, def: &ResourceDef) -> Result<Response<Body>, ApiError> {
    let (mut parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|_| ApiError::internal("response body"))?
        .to_bytes();
    let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(Response::from_parts(parts, Full::new(bytes).boxed()));
    };
    let out = serde_json::to_vec(&crate::eventconv::output_document(def, doc))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Ok(Response::from_parts(
        parts,
        Full::new(Bytes::from(out)).boxed(),
    ))
}

fn non_resource(ctx: &Ctx, method: &hyper::Method, path: &str) -> Result<Response<Body>, ApiError> {
    if path == "/_test/faults" && method == hyper::Method::POST {
        return admin_faults(ctx);
    }
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return Err(not_found_path());
    }
    let p = path.trim_end_matches('/');
    if let Some(r) = crate::openapi::serve(p, &ctx.accept, &ctx.q) {
        return r;
    }
    let doc = match p {
        "/healthz" | "/livez" | "/readyz" => return Ok(text_response(200, "ok")),
        "/version" => resources::version_doc(),
        "/api" => resources::api_versions(&ctx.state.addr.to_string()),
        "/apis" => resources::api_group_list(),
        _ => {
            let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            match segs.as_slice() {
                ["api", v] => resources::resource_list("", v).ok_or_else(not_found_path)?,
                ["apis", g] => resources::api_group_doc(g).ok_or_else(not_found_path)?,
                ["apis", g, v] => resources::resource_list(g, v).ok_or_else(not_found_path)?,
                _ => return Err(not_found_path()),
            }
        }
    };
    Ok(json_response(200, &doc))
}

/// `POST /_test/faults` (admin): `{"latencyMs", "failNext": {"n", "status", "pathContains"}, "dropNext", "pauseMs", "clear"}`.
fn admin_faults(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let v: Value =
        serde_json::from_slice(&ctx.body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let f = &ctx.state.faults;
    if v["clear"] == true {
        f.clear();
    }
    if let Some(ms) = v["latencyMs"].as_u64() {
        f.set_latency(Duration::from_millis(ms));
    }
    if let Some(fail) = v.get("failNext") {
        let n = fail["n"].as_u64().unwrap_or(1) as u32;
        let status = fail["status"].as_u64().unwrap_or(500) as u16;
        f.fail_next(n, status, fail["pathContains"].as_str());
    }
    if let Some(n) = v["dropNext"].as_u64() {
        f.drop_next(n as u32);
    }
    if let Some(ms) = v["pauseMs"].as_u64() {
        f.pause(Duration::from_millis(ms));
    }
    Ok(json_response(200, &json!({"ok": true})))
}

fn parse_body(ctx: &Ctx) -> Result<Value, ApiError> {
    if ctx
        .content_type
        .starts_with("application/vnd.kubernetes.protobuf")
    {
        return crate::proto::decode(&ctx.body).map_err(ApiError::bad_request);
    }
    if ctx.content_type.contains("yaml") {
        let v: serde_yaml::Value =
            serde_yaml::from_slice(&ctx.body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        return serde_json::to_value(v).map_err(|e| ApiError::bad_request(e.to_string()));
    }
    serde_json::from_slice(&ctx.body).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): {e}",
            "JSON"
        ))
    })
}

fn get(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let store = ctx.state.store();
    let obj = store
        .get(t.def, &t.ns, &t.name)
        .ok_or_else(|| ApiError::not_found(t.def.group, t.def.resource, &t.name))?;
    let obj = with_type(t.def, obj.clone());
    if table::wants_table(&ctx.accept) {
        let rv = meta_str(&obj, "resourceVersion").to_string();
        return Ok(json_response(
            200,
            &table::to_table(t.def, &[&obj], &rv, include_object(ctx)),
        ));
    }
    Ok(json_response(200, &obj))
}

fn include_object(ctx: &Ctx) -> &str {
    ctx.q
        .get("includeObject")
        .map(|s| s.as_str())
        .unwrap_or("Metadata")
}

fn selectors(ctx: &Ctx, def: &ResourceDef) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let l = LabelSelector::parse(ctx.q.get("labelSelector").map(|s| s.as_str()).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let f = crate::eventconv::field_selector(
        def,
        ctx.q.get("fieldSelector").map(|s| s.as_str()).unwrap_or(""),
    );
    let f = FieldSelector::parse(&f).map_err(ApiError::bad_request)?;
    Ok((l, f))
}

fn list(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(ctx, t.def)?;
    let store = ctx.state.store();
    let ns = if t.def.namespaced && !t.ns.is_empty() {
        Some(t.ns.as_str())
    } else {
        None
    };
    let all: Vec<&Value> = store
        .list(t.def, ns)
        .into_iter()
        .filter(|o| labels.matches_object(o) && fields.matches(o))
        .collect();
    // Chunking: `continue` is the last key returned; the list is served from the current state.
    let start = match ctx.q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            use base64::Engine;
            let key = base64::engine::general_purpose::STANDARD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            all.iter()
                .position(|o| format!("{}/{}", meta_str(o, "namespace"), meta_str(o, "name")) > key)
                .unwrap_or(all.len())
        }
        None => 0,
    };
    let limit = ctx
        .q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let page: Vec<&Value> = all[start..].iter().take(limit).copied().collect();
    let rv = store.current_rv().to_string();
    let mut meta = json!({"resourceVersion": rv});
    if start + page.len() < all.len() {
        if let Some(last) = page.last() {
            use base64::Engine;
            let key = format!("{}/{}", meta_str(last, "namespace"), meta_str(last, "name"));
            meta["continue"] = json!(base64::engine::general_purpose::STANDARD.encode(key));
            meta["remainingItemCount"] = json!(all.len() - start - page.len());
        }
    }
    if table::wants_table(&ctx.accept) {
        let mut tbl = table::to_table(t.def, &page, &rv, include_object(ctx));
        tbl["metadata"] = meta;
        return Ok(json_response(200, &tbl));
    }
    let items: Vec<Value> = page
        .iter()
        .map(|o| {
            let mut o = (*o).clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    Ok(json_response(
        200,
        &json!({"kind": t.def.list_kind(), "apiVersion": t.def.api_version(), "metadata": meta, "items": items}),
    ))
}

fn start_watch(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let (labels, mut fields) = selectors(ctx, t.def)?;
    if !t.name.is_empty() {
        let mut f = FieldSelector::parse(&format!("metadata.name={}", t.name))
            .map_err(ApiError::bad_request)?;
        std::mem::swap(&mut f, &mut fields);
        let extra: Vec<String> = f.fields().map(String::from).collect();
        if !extra.is_empty() {
            return Err(ApiError::bad_request(
                "fieldSelector with a named watch is not supported",
            ));
        }
    }
    let timeout = ctx
        .q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(1800);
    let p = WatchParams {
        def: t.def,
        namespace: (t.def.namespaced && !t.ns.is_empty()).then(|| t.ns.clone()),
        labels,
        fields,
        resource_version: ctx.q.get("resourceVersion").cloned(),
        bookmarks: ctx
            .q
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true" || v == "1"),
        timeout: Duration::from_secs(timeout),
        table: table::wants_table(&ctx.accept),
    };
    watch::start(ctx.state.clone(), p)
}

fn generate_suffix() -> String {
    // `names.SimpleNameGenerator`: 5 characters from a vowel-free alphabet.
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHA[rand::random_range(0..ALPHA.len())] as char)
        .collect()
}

fn check_type(t: &Target, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind",
            t.def.kind
        )));
    }
    if let Some(av) = obj.get("apiVersion").and_then(|v| v.as_str()) {
        if av != t.def.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                t.def.api_version()
            )));
        }
    }
    if let Some(k) = obj.get("kind").and_then(|v| v.as_str()) {
        if k != t.def.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                t.def.kind
            )));
        }
    }
    if !obj.get("metadata").is_some_and(|m| m.is_object()) && obj.get("metadata").is_some() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

fn namespace_exists(store: &Store, ns: &str) -> Result<(), ApiError> {
    let Some(nsdef) = resources::find("", "v1", "namespaces") else {
        return Ok(());
    };
    if store.get(nsdef, "", ns).is_none() {
        return Err(ApiError::not_found("", "namespaces", ns));
    }
    Ok(())
}

/// `PrepareForCreate` of the served types' strategies.
fn prepare_create(def: &ResourceDef, user: &User, obj: &mut Value) {
    match (def.group, def.resource) {
        ("", "pods") => obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"}),
        ("", "services") | ("apps", "daemonsets") | ("policy", "poddisruptionbudgets") => {
            obj["status"] = json!({})
        }
        ("", "namespaces") => obj["status"] = json!({"phase": "Active"}),
        ("certificates.k8s.io", "certificatesigningrequests") => {
            obj["status"] = json!({});
            obj["spec"]["username"] = json!(user.name);
            obj["spec"]["groups"] = json!(user.groups);
            if let Some(m) = obj["spec"].as_object_mut() {
                m.remove("uid");
                m.remove("extra");
            }
            if !user.uid.is_empty() {
                obj["spec"]["uid"] = json!(user.uid);
            }
        }
        _ => {}
    }
    crate::strategy::defaults(def, obj);
    if let Some(s) = obj.get("status") {
        if s.as_object().is_some_and(|m| m.is_empty())
            && def.resource != "certificatesigningrequests"
        {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
    }
}

/// How a write records `metadata.managedFields` (apply.rs).
enum Fields {
    /// An Update operation by the request's field manager.
    Track,
    /// Apply already computed them (the value to keep).
    Applied(Value),
}

/// The request's manager for Update operations (`?fieldManager`, else from the user agent).
fn update_manager(ctx: &Ctx) -> String {
    crate::apply::manager_name(
        ctx.q.get("fieldManager").map(|s| s.as_str()),
        &ctx.user_agent,
    )
}

fn create(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    crate::validation::validate_options("CreateOptions", &ctx.q, false)?;
    let fv = fieldvalidation::directive(&ctx.q, "CreateOptions")?;
    let mut obj = parse_body(ctx)?;
    check_type(t, &obj)?;
    ctx.warn(fieldvalidation::check(
        fv,
        t.def,
        &mut obj,
        Some(&ctx.body),
        Stage::Decode,
    )?);
    let obj = crate::eventconv::input(t.def, obj);
    create_object(ctx, t, obj, Fields::Track)
}

fn create_object(
    ctx: &Ctx,
    t: &Target,
    mut obj: Value,
    fields: Fields,
) -> Result<Response<Body>, ApiError> {
    let def = t.def;
    if !obj.get("metadata").is_some_and(|m| m.is_object()) {
        obj["metadata"] = json!({});
    }
    if def.namespaced {
        let body_ns = meta_str(&obj, "namespace").to_string();
        if !body_ns.is_empty() && body_ns != t.ns {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
        if t.ns.is_empty() {
            return Err(ApiError::bad_request(
                "the server could not find the requested resource",
            ));
        }
    }
    if meta_str(&obj, "name").is_empty() {
        let gen = meta_str(&obj, "generateName").to_string();
        if !gen.is_empty() {
            obj["metadata"]["name"] = json!(format!("{gen}{}", generate_suffix()));
        }
    }
    obj = with_type(def, obj);
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("uid");
        m.remove("creationTimestamp");
    }
    prepare_create(def, &ctx.user, &mut obj);
    match fields {
        Fields::Track => crate::apply::track_update(
            def,
            "",
            None,
            &mut obj,
            &update_manager(ctx),
            &crate::clock::now_rfc3339(),
        ),
        Fields::Applied(mf) => crate::apply::set_managed_fields(&mut obj, mf),
    }
    crate::validation::validate(def, &obj, None)?;
    let name = meta_str(&obj, "name").to_string();
    match (def.group, def.resource) {
        ("", "nodes") => {
            noderestriction::admit_node(&ctx.user, Op::Create, &name, Some(&obj), None)?
        }
        ("coordination.k8s.io", "leases") => {
            noderestriction::admit_lease(&ctx.user, Op::Create, &t.ns, &name)?
        }
        ("", "pods") => {
            noderestriction::admit_pod(&ctx.user, Op::Create, "", &name, Some(&obj), None)?
        }
        _ => {}
    }
    let mut store = ctx.state.store();
    if def.namespaced {
        namespace_exists(&store, &t.ns)?;
    }
    crate::strategy::before_create(&ctx.state, &store, def, &t.ns, &mut obj)?;
    let created = store.create(def, &t.ns, obj)?;
    ctx.state
        .after_write(&mut store, def.group, def.resource, &t.ns, &name);
    Ok(json_response(201, &created))
}

/// Merges a write to `sub` onto the stored object as the status/approval strategies do.
fn apply_subresource(
    def: &ResourceDef,
    sub: &str,
    old: &Value,
    new: Value,
) -> Result<Value, ApiError> {
    match sub {
        "" => {
            let mut n = new;
            if def.has_status() {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if def.resource == "certificatesigningrequests" {
                // spec is immutable after create.
                n["spec"] = old["spec"].clone();
                n["status"] = old.get("status").cloned().unwrap_or(json!({}));
            }
            Ok(n)
        }
        "status" => {
            let mut n = old.clone();
            n["status"] = new.get("status").cloned().unwrap_or(json!({}));
            n["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
            if def.resource == "certificatesigningrequests" {
                // The status endpoint may not change approval conditions.
                let conds = old.pointer("/status/conditions").cloned();
                match conds {
                    Some(c) => n["status"]["conditions"] = c,
                    None => {
                        if let Some(m) = n["status"].as_object_mut() {
                            m.remove("conditions");
                        }
                    }
                }
            }
            Ok(n)
        }
        "approval" => {
            let mut n = old.clone();
            let conds = new
                .pointer("/status/conditions")
                .cloned()
                .unwrap_or(json!([]));
            let has = |t: &str| {
                conds
                    .as_array()
                    .is_some_and(|a| a.iter().any(|c| c["type"] == t && c["status"] == "True"))
            };
            if has("Approved") && has("Denied") {
                return Err(ApiError::invalid(
                    def.kind,
                    def.group,
                    meta_str(old, "name"),
                    &[("status.conditions", "Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive".into())],
                ));
            }
            if !n["status"].is_object() {
                n["status"] = json!({});
            }
            n["status"]["conditions"] = conds;
            n["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
            Ok(n)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// The common tail of update and patch: preconditions, admission, store, controllers.
fn commit_update(
    ctx: &Ctx,
    t: &Target,
    store: &mut Store,
    old: &Value,
    new: Value,
    fields: Fields,
) -> Result<Value, ApiError> {
    let def = t.def;
    let rv = meta_str(&new, "resourceVersion");
    if !rv.is_empty() && rv != meta_str(old, "resourceVersion") {
        return Err(ApiError::conflict(def.group, def.resource, &t.name));
    }
    let mut merged = apply_subresource(def, &t.sub, old, new)?;
    merged = with_type(def, merged);
    crate::strategy::defaults(def, &mut merged);
    merged["metadata"]["name"] = json!(t.name);
    match fields {
        Fields::Track => crate::apply::track_update(
            def,
            &t.sub,
            Some(old),
            &mut merged,
            &update_manager(ctx),
            &crate::clock::now_rfc3339(),
        ),
        Fields::Applied(mf) => crate::apply::set_managed_fields(&mut merged, mf),
    }
    crate::validation::validate(def, &merged, Some(old))?;
    match (def.group, def.resource) {
        ("", "nodes") => {
            noderestriction::admit_node(&ctx.user, Op::Update, &t.name, Some(&merged), Some(old))?
        }
        ("", "pods") => noderestriction::admit_pod(
            &ctx.user,
            Op::Update,
            &t.sub,
            &t.name,
            Some(&merged),
            Some(old),
        )?,
        _ => {}
    }
    if let Some(deleted) =
        crate::strategy::before_update(&ctx.state, store, def, &t.ns, &t.sub, old, &mut merged)?
    {
        return Ok(deleted);
    }
    let out = store.update(def, &t.ns, merged)?;
    ctx.state
        .after_write(store, def.group, def.resource, &t.ns, &t.name);
    Ok(out)
}

fn update(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    if t.name.is_empty() {
        return Err(ApiError::method_not_allowed());
    }
    crate::validation::validate_options("UpdateOptions", &ctx.q, false)?;
    let fv = fieldvalidation::directive(&ctx.q, "UpdateOptions")?;
    let mut obj = parse_body(ctx)?;
    check_type(t, &obj)?;
    ctx.warn(fieldvalidation::check(
        fv,
        t.def,
        &mut obj,
        Some(&ctx.body),
        Stage::Decode,
    )?);
    let obj = crate::eventconv::input(t.def, obj);
    let body_name = meta_str(&obj, "name");
    if body_name != t.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            t.name
        )));
    }
    let mut store = ctx.state.store();
    let Some(old) = store.get(t.def, &t.ns, &t.name).cloned() else {
        if t.def.create_on_update && t.sub.is_empty() {
            drop(store);
            return create(
                ctx,
                &Target {
                    name: String::new(),
                    ..t.clone()
                },
            );
        }
        return Err(ApiError::not_found(t.def.group, t.def.resource, &t.name));
    };
    let out = commit_update(ctx, t, &mut store, &old, obj, Fields::Track)?;
    Ok(json_response(200, &out))
}

fn patch_object(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    if t.name.is_empty() {
        return Err(ApiError::method_not_allowed());
    }
    let ct = ctx
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let apply = ct == "application/apply-patch+yaml";
    crate::validation::validate_options("PatchOptions", &ctx.q, apply)?;
    let fv = fieldvalidation::directive(&ctx.q, "PatchOptions")?;
    let mut patch_doc: Value = if apply {
        let v: serde_yaml::Value =
            serde_yaml::from_slice(&ctx.body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        serde_json::to_value(v).map_err(|e| ApiError::bad_request(e.to_string()))?
    } else {
        serde_json::from_slice(&ctx.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
    };
    if apply {
        fieldvalidation::check_apply(t.def, &t.ns, &t.name, &mut patch_doc)?;
    }
    let mut store = ctx.state.store();
    let existing = store.get(t.def, &t.ns, &t.name).cloned();
    if apply {
        check_type(t, &patch_doc)?;
        let force = ctx.q.get("force").is_some_and(|f| f == "true");
        let manager = ctx.q.get("fieldManager").cloned().unwrap_or_default();
        let now = crate::clock::now_rfc3339();
        if existing.is_none() && !t.sub.is_empty() {
            return Err(ApiError::not_found(t.def.group, t.def.resource, &t.name));
        }
        let view = existing.clone().map(|o| crate::eventconv::output(t.def, o));
        let doc = crate::apply::apply(
            t.def,
            &t.sub,
            view.as_ref(),
            &patch_doc,
            &manager,
            force,
            &now,
        )?;
        let mut doc = crate::eventconv::input(t.def, doc);
        let mf = doc
            .get_mut("metadata")
            .and_then(|m| m.as_object_mut())
            .and_then(|m| m.remove("managedFields"))
            .unwrap_or(Value::Null);
        let Some(old) = existing else {
            drop(store);
            doc["metadata"]["name"] = json!(t.name);
            return create_object(
                ctx,
                &Target {
                    name: String::new(),
                    ..t.clone()
                },
                doc,
                Fields::Applied(mf),
            );
        };
        if meta_str(&doc, "name") != t.name {
            return Err(ApiError::bad_request(
                "metadata.name: Invalid value: the name of the object may not be changed by a patch",
            ));
        }
        let out = commit_update(ctx, t, &mut store, &old, doc, Fields::Applied(mf))?;
        return Ok(json_response(200, &out));
    }
    let Some(old) = existing else {
        return Err(ApiError::not_found(t.def.group, t.def.resource, &t.name));
    };
    // Patches apply to the object as this API version shows it.
    let mut doc = crate::eventconv::output(t.def, old.clone());
    match ct.as_str() {
        "application/merge-patch+json" => patch::merge_patch(&mut doc, &patch_doc),
        "application/strategic-merge-patch+json" => {
            patch::strategic_merge_patch(&mut doc, &patch_doc)
                .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?
        }
        "application/json-patch+json" => {
            patch::json_patch(&mut doc, &patch_doc).map_err(|e| match e {
                patch::PatchError::Test(m) => ApiError::new(422, "Invalid", m),
                patch::PatchError::Invalid(m) => ApiError::new(422, "Invalid", m),
            })?
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    if meta_str(&doc, "name") != t.name {
        return Err(ApiError::bad_request(
            "metadata.name: Invalid value: the name of the object may not be changed by a patch",
        ));
    }
    if !apply {
        let body = (ct != "application/json-patch+json").then_some(&ctx.body[..]);
        ctx.warn(fieldvalidation::check(
            fv,
            t.def,
            &mut doc,
            body,
            Stage::Patch,
        )?);
    }
    let doc = crate::eventconv::input(t.def, doc);
    let out = commit_update(ctx, t, &mut store, &old, doc, Fields::Track)?;
    Ok(json_response(200, &out))
}

fn delete(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let opts: Value = if ctx.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&ctx.body).unwrap_or(json!({}))
    };
    let mut store = ctx.state.store();
    let old = store
        .get(t.def, &t.ns, &t.name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(t.def.group, t.def.resource, &t.name))?;
    if let Some(uid) = opts.pointer("/preconditions/uid").and_then(|v| v.as_str()) {
        if uid != meta_str(&old, "uid") {
            return Err(ApiError {
                details: Some(json!({"name": t.name, "kind": t.def.resource})),
                ..ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} {:?}: Precondition failed: UID in precondition: {uid}, UID in object meta: {}", status::qualified(t.def.group, t.def.resource), t.name, meta_str(&old, "uid")))
            });
        }
    }
    if let Some(rv) = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(|v| v.as_str())
    {
        if rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError {
                details: Some(json!({"name": t.name, "kind": t.def.resource})),
                ..ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} {:?}: Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", status::qualified(t.def.group, t.def.resource), t.name, meta_str(&old, "resourceVersion")))
            });
        }
    }
    match (t.def.group, t.def.resource) {
        ("", "nodes") => {
            noderestriction::admit_node(&ctx.user, Op::Delete, &t.name, None, Some(&old))?
        }
        ("", "pods") => {
            noderestriction::admit_pod(&ctx.user, Op::Delete, "", &t.name, None, Some(&old))?
        }
        _ => {}
    }
    let deleted = delete_locked(ctx, &mut store, t.def, &t.ns, &t.name)?;
    if store.get(t.def, &t.ns, &t.name).is_some() {
        // Kept by finalizers or namespace termination: 200 with the object as it now is.
        return Ok(json_response(200, &with_type(t.def, deleted)));
    }
    if t.def.return_deleted {
        return Ok(json_response(200, &with_type(t.def, deleted)));
    }
    Ok(json_response(
        200,
        &status::success(
            t.def.group,
            t.def.resource,
            &t.name,
            meta_str(&deleted, "uid"),
        ),
    ))
}

fn delete_locked(
    ctx: &Ctx,
    store: &mut Store,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
) -> Result<Value, ApiError> {
    if let Some(kept) = crate::strategy::before_delete(&ctx.state, store, def, ns, name)? {
        return Ok(kept);
    }
    let deleted = store.delete(def, ns, name)?;
    ctx.state
        .after_write(store, def.group, def.resource, ns, name);
    Ok(deleted)
}

fn delete_collection(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(ctx, t.def)?;
    let mut store = ctx.state.store();
    let ns = if t.def.namespaced && !t.ns.is_empty() {
        Some(t.ns.as_str())
    } else {
        None
    };
    let victims: Vec<(String, String)> = store
        .list(t.def, ns)
        .into_iter()
        .filter(|o| labels.matches_object(o) && fields.matches(o))
        .map(|o| {
            (
                meta_str(o, "namespace").to_string(),
                meta_str(o, "name").to_string(),
            )
        })
        .collect();
    let mut items = Vec::new();
    for (ns, name) in victims {
        if let Ok(o) = delete_locked(ctx, &mut store, t.def, &ns, &name) {
            items.push(o);
        }
    }
    let rv = store.current_rv().to_string();
    Ok(json_response(
        200,
        &json!({"kind": t.def.list_kind(), "apiVersion": t.def.api_version(), "metadata": {"resourceVersion": rv}, "items": items}),
    ))
}

/// `serviceaccounts/token` (serviceaccounts.rs): 201 with the TokenRequest and its token.
fn create_token(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    crate::validation::validate_options("CreateOptions", &ctx.q, false)?;
    let req = parse_body(ctx)?;
    let store = ctx.state.store();
    let pod = req
        .pointer("/spec/boundObjectRef/name")
        .and_then(|n| n.as_str())
        .zip(resources::find("", "v1", "pods"))
        .and_then(|(n, pods)| store.get(pods, &t.ns, n));
    noderestriction::admit_token(&ctx.user, &t.name, &req, pod)?;
    let out = crate::serviceaccounts::token_request(
        &ctx.state.tokens.issued,
        &store,
        &t.ns,
        &t.name,
        req,
    )?;
    Ok(json_response(201, &out))
}

/// `pods/eviction` (pkg/registry/core/pod/storage/eviction.go).
fn evict(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    let ev = parse_body(ctx)?;
    let kind = ev
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("Eviction");
    let av = ev
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("policy/v1");
    if kind != "Eviction" || !(av == "policy/v1" || av == "policy/v1beta1") {
        return Err(ApiError::bad_request(format!(
            "unsupported eviction kind {kind} in {av}"
        )));
    }
    let ev_name = meta_str(&ev, "name");
    if !ev_name.is_empty() && ev_name != t.name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let mut store = ctx.state.store();
    let pods = t.def;
    let pod = store.get(pods, &t.ns, &t.name).cloned();
    noderestriction::admit_eviction(&ctx.user, &t.name, pod.as_ref())?;
    let pod = pod.ok_or_else(|| ApiError::not_found("", "pods", &t.name))?;
    let ok = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    let phase = pod
        .pointer("/status/phase")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let terminating = pod["metadata"].get("deletionTimestamp").is_some();
    if terminating || matches!(phase, "Succeeded" | "Failed" | "Pending") {
        delete_locked(ctx, &mut store, pods, &t.ns, &t.name)?;
        return Ok(json_response(201, &ok));
    }
    let Some(pdb_def) = resources::find("policy", "v1", "poddisruptionbudgets") else {
        return Err(ApiError::internal("no PDB type"));
    };
    let pdbs: Vec<Value> = store
        .list(pdb_def, Some(&t.ns))
        .into_iter()
        .filter(|pdb| !crate::controllers::pdb_pods(pdb, &[&pod]).is_empty())
        .cloned()
        .collect();
    if pdbs.len() > 1 {
        return Err(ApiError::internal("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."));
    }
    if let Some(pdb) = pdbs.into_iter().next() {
        let ready = pod
            .pointer("/status/conditions")
            .and_then(|c| c.as_array())
            .is_some_and(|c| {
                c.iter()
                    .any(|x| x["type"] == "Ready" && x["status"] == "True")
            });
        let st = |f: &str| {
            pdb.pointer(&format!("/status/{f}"))
                .and_then(|v| v.as_i64())
                .unwrap_or(0)
        };
        let policy = pdb
            .pointer("/spec/unhealthyPodEvictionPolicy")
            .and_then(|v| v.as_str())
            .unwrap_or("IfHealthyBudget");
        let skip_budget = !ready
            && (policy == "AlwaysAllow"
                || st("currentHealthy") >= st("desiredHealthy") && st("desiredHealthy") > 0);
        if !skip_budget {
            let pdb_name = meta_str(&pdb, "name").to_string();
            if st("observedGeneration") < pdb["metadata"]["generation"].as_i64().unwrap_or(0) {
                return Err(ApiError::too_many_requests(
                    format!("Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {pdb_name} is still being processed by the server."),
                    0,
                ));
            }
            if st("disruptionsAllowed") <= 0 {
                let mut e = ApiError::too_many_requests(
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    0,
                );
                e.details = Some(
                    json!({"causes": [{"reason": "DisruptionBudget", "message": format!(
                    "The disruption budget {pdb_name} needs {} healthy pods and has {} currently", st("desiredHealthy"), st("currentHealthy"))}]}),
                );
                return Err(e);
            }
            let mut p2 = pdb.clone();
            p2["status"]["disruptionsAllowed"] = json!(st("disruptionsAllowed") - 1);
            p2["status"]["disruptedPods"][&t.name] = json!(crate::clock::now_rfc3339());
            store.update(pdb_def, &t.ns, p2)?;
        }
    }
    delete_locked(ctx, &mut store, pods, &t.ns, &t.name)?;
    Ok(json_response(201, &ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_request_info() {
        let t = parse_target("/api/v1/nodes/n1/status").unwrap().unwrap();
        assert_eq!(
            (t.def.resource, t.name.as_str(), t.sub.as_str()),
            ("nodes", "n1", "status")
        );
        let t = parse_target("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1")
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.def.resource, t.ns.as_str(), t.name.as_str()),
            ("leases", "kube-node-lease", "n1")
        );
        let t = parse_target("/api/v1/namespaces/default").unwrap().unwrap();
        assert_eq!((t.def.resource, t.name.as_str()), ("namespaces", "default"));
        let t = parse_target("/api/v1/pods").unwrap().unwrap();
        assert_eq!((t.def.resource, t.ns.as_str()), ("pods", ""));
        assert!(parse_target("/api/v1").unwrap().is_none());
        assert!(parse_target("/api/v1/widgets").is_err());
        assert!(parse_target("/api/v1/nodes/n1/bogus").is_err());
    }

    #[test]
    fn query_decoding() {
        let q = parse_query("fieldSelector=spec.nodeName%3Dn1&labelSelector=a+in+(x)");
        assert_eq!(q["fieldSelector"], "spec.nodeName=n1");
        assert_eq!(q["labelSelector"], "a in (x)");
    }
}
