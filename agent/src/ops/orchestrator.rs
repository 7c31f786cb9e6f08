//! The orchestrator API: HTTPS with mutual TLS for the host orchestrator (only client certificates
//! signed by the configured CA, optionally only one subject CN).
//!
//! `GET /v1/status`, `POST /v1/cordon`, `/v1/uncordon`, `/v1/drain`, `/v1/reload`. Requests reach
//! the health loop through a small bounded channel with `try_send`: when it is full the answer is
//! 503 busy, so the API can never hold up the agent's own work. Errors are JSON
//! `{"error": "...", "code": N}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::health::ApiConfig;
use crate::health::metrics::HealthMetrics;
use crate::ops::command::{Command, CommandError};
use crate::ops::status::JoinStatusFn;
use crate::ops::status::SharedStatus;

const MAX_BODY: usize = 64 * 1024;
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|source| ApiError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// rustls server config: our certificate, and a verifier that requires a client certificate
/// chaining to `client_ca`.
pub fn tls_config(cfg: &ApiConfig) -> Result<rustls::ServerConfig, ApiError> {
    let pem_err = |p: &std::path::Path, what: &str| ApiError::Pem {
        path: p.display().to_string(),
        what: what.into(),
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read(&cfg.cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(|_| pem_err(&cfg.cert, "not a PEM certificate chain"))?;
    if certs.is_empty() {
        return Err(pem_err(&cfg.cert, "no certificate"));
    }
    let key = rustls_pemfile::private_key(&mut &read(&cfg.key)?[..])
        .map_err(|_| pem_err(&cfg.key, "not a PEM private key"))?
        .ok_or_else(|| pem_err(&cfg.key, "no private key"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read(&cfg.client_ca)?[..]) {
        let c = c.map_err(|_| pem_err(&cfg.client_ca, "not a PEM certificate"))?;
        roots
            .add(c)
            .map_err(|e| ApiError::Tls(format!("client CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(pem_err(&cfg.client_ca, "no CA certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ApiError::Tls(e.to_string()))?;
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| ApiError::Tls(e.to_string()))?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(sc)
}

/// Subject CN of a DER certificate.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

#[derive(Clone)]
struct Shared {
    commands: mpsc::Sender<Command>,
    status: SharedStatus,
    join_status: JoinStatusFn,
    metrics: HealthMetrics,
    allowed_cn: Option<String>,
}

pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Shared,
}

impl Server {
    pub async fn bind(
        cfg: &ApiConfig,
        commands: mpsc::Sender<Command>,
        status: SharedStatus,
        join_status: JoinStatusFn,
        metrics: HealthMetrics,
    ) -> Result<Server, ApiError> {
        let tls = tls_config(cfg)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ApiError::Listen {
                addr: cfg.listen,
                source,
            })?;
        Ok(Server {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            shared: Shared {
                commands,
                status,
                join_status,
                metrics,
                allowed_cn: cfg.allowed_cn.clone(),
            },
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `cancel` with keel_common's limits: a connection cap taken before accept (so
    /// overload is backpressure), the TLS handshake and the headers bounded in time, accept errors
    /// backed off and never the end of the loop.
    pub async fn serve(self, cancel: CancellationToken) {
        let addr = self.listener.local_addr().ok();
        tracing::info!(addr = ?addr, "orchestrator API listening");
        let limits = keel_common::http::Limits {
            max_connections: MAX_CONNECTIONS,
            ..Default::default()
        };
        let acceptor = self.acceptor;
        let shared = self.shared;
        let allowed_cn = shared.allowed_cn.clone();
        keel_common::http::serve(
            self.listener,
            limits,
            cancel,
            move |tcp, peer| {
                let acceptor = acceptor.clone();
                let allowed_cn = allowed_cn.clone();
                async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::info!(peer = %peer, error = %e, "orchestrator API refused a TLS client");
                            return None;
                        }
                    };
                    let cn = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| subject_cn(c.as_ref()));
                    let allowed = match &allowed_cn {
                        Some(want) => cn.as_deref() == Some(want.as_str()),
                        None => true,
                    };
                    Some((tls, (cn, allowed)))
                }
            },
            move |req, (cn, allowed): (Option<String>, bool)| {
                let shared = shared.clone();
                async move { handle(req, &shared, cn, allowed).await }
            },
        )
        .await
    }
}

fn json(code: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    json(
        code,
        serde_json::json!({ "error": msg.into(), "code": code.as_u16() }),
    )
}

/// Optional body of the POST endpoints: only a free-text reason, for the logs.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PostBody {
    reason: Option<String>,
}

async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    cn: Option<String>,
    allowed: bool,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let resp = route(req, shared, cn.clone(), allowed).await;
    let known = [
        "/v1/status",
        "/v1/cordon",
        "/v1/uncordon",
        "/v1/drain",
        "/v1/reload",
    ];
    let label = if known.contains(&path.as_str()) {
        path.as_str()
    } else {
        "other"
    };
    shared
        .metrics
        .orchestrator_requests
        .with_label_values(&[label, resp.status().as_str()])
        .inc();
    tracing::info!(method = %method, path = %path, client = ?cn, code = resp.status().as_u16(), "orchestrator API request");
    resp
}

async fn route(
    req: Request<Incoming>,
    shared: &Shared,
    cn: Option<String>,
    allowed: bool,
) -> Response<Full<Bytes>> {
    if !allowed {
        return error(
            StatusCode::FORBIDDEN,
            format!("client certificate subject {cn:?} is not allowed"),
        );
    }
    let path = req.uri().path().to_string();
    let make: fn(oneshot::Sender<Result<String, CommandError>>) -> Command = match path.as_str() {
        "/v1/status" => {
            if req.method() != Method::GET {
                return error(StatusCode::METHOD_NOT_ALLOWED, "use GET /v1/status");
            }
            let body = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "os": std::env::consts::OS,
                "arch": std::env::consts::ARCH,
                "join": (shared.join_status)(),
                "health": shared.status.snapshot(),
            });
            return json(StatusCode::OK, body);
        }
        "/v1/cordon" => Command::Cordon,
        "/v1/uncordon" => Command::Uncordon,
        "/v1/drain" => Command::Drain,
        "/v1/reload" => Command::Reload,
        other => return error(StatusCode::NOT_FOUND, format!("no endpoint {other}")),
    };
    if req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, format!("use POST {path}"));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 64 KiB"),
    };
    if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<PostBody>(&body) {
            Ok(b) => {
                if let Some(r) = b.reason {
                    tracing::info!(path = %path, client = ?cn, reason = %r, "orchestrator request reason");
                }
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body must be empty or {{\"reason\": \"...\"}}: {e}"),
                )
            }
        }
    }
    let (tx, rx) = oneshot::channel();
    if shared.commands.try_send(make(tx)).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "agent busy; retry shortly");
    }
    let accepted = if path == "/v1/drain" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(msg))) => json(accepted, serde_json::json!({ "result": msg })),
        Ok(Ok(Err(e))) => {
            let code = match e {
                CommandError::Conflict(_) => StatusCode::CONFLICT,
                CommandError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                CommandError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                CommandError::Failed(_) => StatusCode::BAD_GATEWAY,
            };
            error(code, e.to_string())
        }
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "agent is stopping"),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "the agent did not answer within 30s",
        ),
    }
}
