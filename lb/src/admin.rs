//! The admin listener (HTTP/1.1): the status page (`GET /`, `/status`), `GET /v1/status` (JSON),
//! `/v1/status.csv`, `GET /metrics`, `GET /healthz`, `GET /services`, and control: `POST /reload`,
//! `POST /handover`, `POST /resume`, `POST /v1/backends/<pool>/<address>`. Control requires
//! `Authorization: Bearer <token>` when a token is configured (read per request, so it can be
//! rotated without a restart), and a config without one may only listen on loopback. The
//! `metrics:` listener serves the reads only.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::server::Command;

#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// The Services provider's state (None without a `services:` section).
    pub services: Option<Arc<crate::services::controller::Shared>>,
    pub commands: mpsc::Sender<Command>,
    /// What the status endpoints read.
    pub status: Arc<crate::status::Source>,
    pub token: Option<crate::config::Token>,
    /// Control endpoints (reload, handover, resume) served here; false on the metrics listener.
    pub control: bool,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin API with the shared limits: at most 64 connections (idle ones cannot take the
/// fds health checks and the data plane need), bounded header reads, backoff on accept errors.
pub async fn serve(listener: TcpListener, admin: Admin) {
    keel_common::http::serve_plain(
        listener,
        keel_common::http::Limits::default(),
        tokio_util::sync::CancellationToken::new(),
        move |req| {
            let admin = admin.clone();
            async move { route(&admin, req).await }
        },
    )
    .await
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// The refusal to send, if the request lacks the admin token.
fn refuse(admin: &Admin, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let token = match admin.token.as_ref()?.read() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the admin token");
            return Some(reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "admin token unavailable\n",
            ));
        }
    };
    let want = format!("Bearer {}", token.trim());
    let got = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // Constant-time compare: the token must not leak through timing.
    let same = got.len() == want.len()
        && got
            .iter()
            .zip(want.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    (!same).then(|| reply(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n"))
}

async fn route(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !admin.control
        && (matches!(path, "/reload" | "/handover" | "/resume")
            || path.starts_with("/v1/backends/"))
    {
        return reply(
            StatusCode::NOT_FOUND,
            "control endpoints are on the admin listener, not the metrics listener\n",
        );
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut r = reply(StatusCode::OK, admin.metrics.encode());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/" | "/status") => {
            let page = crate::status_page::render(&snapshot(admin));
            typed(reply(StatusCode::OK, page), "text/html; charset=utf-8")
        }
        (&Method::GET, "/v1/status") => {
            let body = serde_json::to_vec(&snapshot(admin)).unwrap_or_default();
            typed(reply(StatusCode::OK, body), "application/json")
        }
        (&Method::GET, "/v1/status.csv") => typed(
            reply(StatusCode::OK, crate::status::csv(&snapshot(admin))),
            "text/csv; charset=utf-8",
        ),
        (&Method::POST, path) if path.starts_with("/v1/backends/") => {
            if let Some(r) = refuse(admin, &req) {
                return r;
            }
            backend_change(admin, req).await
        }
        (&Method::GET, "/healthz") => match admin.metrics.vrrp_healthy() {
            Ok(()) => reply(StatusCode::OK, "ok\n"),
            // Serving, but without failover: whoever watches this node must know.
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        },
        (&Method::GET, path) if path == "/services" || path.starts_with("/services/") => match &admin.services {
            Some(s) => {
                // `/services/<namespace>/<name>`: one Service, at the cost of one.
                let only = path.strip_prefix("/services/");
                let v = services_json(s, only);
                if only.is_some() && v["services"].as_array().is_some_and(|a| a.is_empty()) {
                    return reply(StatusCode::NOT_FOUND, "no such Service here\n");
                }
                let mut r = reply(StatusCode::OK, v.to_string());
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            None => reply(
                StatusCode::NOT_FOUND,
                "no services section: keel-lb serves no Services of type LoadBalancer\n",
            ),
        },
        (&Method::POST, "/reload") => {
            if let Some(r) = refuse(admin, &req) {
                return r;
            }
            let (tx, rx) = oneshot::channel();
            if admin.commands.send(Command::Reload(tx)).await.is_err() {
                return reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            match rx.await {
                Ok(Ok(())) => reply(StatusCode::OK, "reloaded\n"),
                Ok(Err(e)) => reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("reload failed; the previous config keeps running:\n{e}\n"),
                ),
                Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            }
        }
        (&Method::POST, "/handover") => {
            if let Some(r) = refuse(admin, &req) {
                return r;
            }
            let (tx, rx) = oneshot::channel();
            if admin.commands.send(Command::Handover(tx)).await.is_err() {
                return reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            match rx.await {
                Ok(outcome) => reply(StatusCode::OK, format!("{outcome}\n")),
                Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            }
        }
        (&Method::POST, "/resume") => {
            if let Some(r) = refuse(admin, &req) {
                return r;
            }
            let (tx, rx) = oneshot::channel();
            if admin.commands.send(Command::Resume(tx)).await.is_err() {
                return reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            match rx.await {
                Ok(Ok(())) => reply(StatusCode::OK, "vrrp running again\n"),
                Ok(Err(e)) => reply(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
                Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            }
        }
        (
            _,
            "/" | "/status" | "/v1/status" | "/v1/status.csv" | "/metrics" | "/healthz" | "/reload"
            | "/handover" | "/resume" | "/services",
        ) => reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        (_, path) if path.starts_with("/v1/backends/") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: POST state=ready|drain|maint or weight=N\n")
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found: try / (status page), /v1/status, /v1/status.csv, /metrics, /healthz, /services, POST /reload, POST /handover, POST /resume, POST /v1/backends/POOL/ADDRESS\n",
        ),
    }
}

fn typed(mut r: Response<Full<Bytes>>, content_type: &'static str) -> Response<Full<Bytes>> {
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    // The page and its data are live: never serve them from a cache.
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn snapshot(admin: &Admin) -> crate::status::Snapshot {
    let services = admin.services.as_ref().map(|s| services_json(s, None));
    crate::status::collect(&admin.status, services)
}

/// `%XX` decoded (pool names and IPv6 addresses arrive encoded); None on a bad escape or UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `POST /v1/backends/<pool>/<address>` with `state=ready|drain|maint` or `weight=N` (the body, or
/// the query string when the body is empty).
async fn backend_change(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use crate::overrides::ChangeError;
    use http_body_util::BodyExt;
    let rest = req
        .uri()
        .path()
        .strip_prefix("/v1/backends/")
        .unwrap_or_default()
        .to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    // The pool is everything before the last slash: the address never holds one.
    let Some((pool, addr)) = rest
        .rsplit_once('/')
        .and_then(|(p, a)| Some((percent_decode(p)?, percent_decode(a)?)))
    else {
        return reply(
            StatusCode::NOT_FOUND,
            "expected /v1/backends/POOL/ADDRESS (e.g. /v1/backends/api/198.18.0.10:6443)\n",
        );
    };
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
        return reply(
            StatusCode::NOT_FOUND,
            format!("{addr:?} is not a backend address (ip:port, [v6]:port)\n"),
        );
    };
    let body = match http_body_util::Limited::new(req.into_body(), 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, "body too large or unreadable\n"),
    };
    let text = String::from_utf8_lossy(&body);
    let text = if text.trim().is_empty() {
        query.as_str().into()
    } else {
        text
    };
    let change = match crate::overrides::parse_change(&text) {
        Ok(c) => c,
        Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let (tx, rx) = oneshot::channel();
    let cmd = Command::Backend {
        pool,
        addr,
        change,
        reply: tx,
    };
    if admin.commands.send(cmd).await.is_err() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match rx.await {
        Ok(Ok(said)) => reply(StatusCode::OK, format!("{said}\n")),
        Ok(Err(ChangeError::NotFound(e))) => reply(StatusCode::NOT_FOUND, format!("{e}\n")),
        Ok(Err(ChangeError::Bad(e))) => reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
        Ok(Err(ChangeError::Failed(e))) => {
            reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

/// `GET /services`: every Service keel-lb serves or tried to, with addresses, ports, backends (live
/// health) and the last sync result.
fn services_json(s: &crate::services::controller::Shared, only: Option<&str>) -> serde_json::Value {
    use crate::services::rules::{pool_name, Proto};
    use serde_json::json;
    let (applied, sync) = match only {
        Some(k) => (s.applied_for(k), s.sync_for(k)),
        None => (s.applied(), s.sync()),
    };
    let by_addr: std::collections::HashMap<std::net::IpAddr, &str> = applied
        .rules
        .nodes
        .iter()
        .flat_map(|(n, a)| {
            a.v4.iter()
                .chain(a.v6.iter())
                .map(move |ip| (*ip, n.as_str()))
        })
        .collect();
    let mut keys: std::collections::BTreeSet<String> = sync.keys().cloned().collect();
    keys.extend(applied.rules.services.keys().cloned());
    if let Some(k) = only {
        keys.retain(|x| x == k);
    }
    let list: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            let rule = applied.rules.services.get(k);
            let ports: Vec<serde_json::Value> = rule
                .map(|r| {
                    r.ports
                        .iter()
                        .map(|p| {
                            let backends: Vec<serde_json::Value> = applied
                                .pools
                                .get(&pool_name(k, p))
                                .into_iter()
                                .flat_map(|pool| pool.backends.iter())
                                .map(|b| {
                                    let node = by_addr.get(&b.addr.ip()).copied().unwrap_or("");
                                    json!({"address": b.addr.to_string(), "node": node,
                                           "up": b.healthy(), "active": b.active()})
                                })
                                .collect();
                            json!({"name": p.name, "port": p.port,
                                   "protocol": if p.protocol == Proto::TCP { "TCP" } else { "UDP" },
                                   "nodePort": p.node_port, "backends": backends})
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "service": k,
                "ips": rule.map(|r| r.ips.iter().map(|(ip, router)| json!({"ip": ip.to_string(), "vrrpRouter": router})).collect::<Vec<_>>()).unwrap_or_default(),
                "externalTrafficPolicy": if rule.is_some_and(|r| r.local.is_some()) { "Local" } else { "Cluster" },
                "ports": ports,
                "served": rule.is_some(),
                "problems": applied.problems.get(k).cloned().unwrap_or_default(),
                "lastSync": sync.get(k),
            })
        })
        .collect();
    json!({"writer": *s.leader.borrow(), "services": list})
}
