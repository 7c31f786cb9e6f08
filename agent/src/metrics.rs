//! Prometheus metrics and the agent's small HTTP endpoint (`/metrics`, `/healthz`, `/status`).
//!
//! One [`Metrics`] per agent; other modules (health) register their own collectors into
//! [`Metrics::registry`] so everything is served from one place.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus::{Encoder, Gauge, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::status::{JoinState, StatusHandle};

pub struct Metrics {
    pub registry: Registry,
    join_state: IntGaugeVec,
    cert_expiry: Gauge,
    api_requests: IntCounterVec,
    config_reloads: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        // Metric names and label sets are constants (no input reaches them): a failure here is a
        // programming error that the unit tests catch.
        const DEF: &str = "constant metric definition";
        let registry = Registry::new();
        let join_state = IntGaugeVec::new(
            Opts::new(
                "keel_agent_join_state",
                "1 for the agent's current join state",
            ),
            &["state"],
        )
        .expect(DEF);
        let cert_expiry = Gauge::new(
            "keel_agent_certificate_expiry_timestamp_seconds",
            "Unix time when the node's client certificate expires",
        )
        .expect(DEF);
        let api_requests = IntCounterVec::new(
            Opts::new(
                "keel_agent_api_requests_total",
                "Kubernetes API requests by verb, resource and result",
            ),
            &["verb", "resource", "result"],
        )
        .expect(DEF);
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "keel_agent_config_reloads_total",
                "Config reloads by result",
            ),
            &["result"],
        )
        .expect(DEF);
        for c in [
            Box::new(join_state.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cert_expiry.clone()),
            Box::new(api_requests.clone()),
            Box::new(config_reloads.clone()),
        ] {
            registry.register(c).expect(DEF);
        }
        let m = Metrics {
            registry,
            join_state,
            cert_expiry,
            api_requests,
            config_reloads,
        };
        m.set_join_state(JoinState::Starting);
        Arc::new(m)
    }

    pub fn set_join_state(&self, state: JoinState) {
        for s in JoinState::ALL {
            self.join_state
                .with_label_values(&[s.as_str()])
                .set(i64::from(s == state));
        }
    }

    pub fn set_cert_expiry(&self, unix_secs: i64) {
        self.cert_expiry.set(unix_secs as f64);
    }

    pub fn api_request(&self, verb: &str, resource: &str, result: &str) {
        self.api_requests
            .with_label_values(&[verb, resource, result])
            .inc();
    }

    pub fn api_requests_total(&self) -> u64 {
        let mut total = 0;
        for mf in prometheus::core::Collector::collect(&self.api_requests) {
            for m in mf.get_metric() {
                total += m.get_counter().get_value() as u64;
            }
        }
        total
    }

    /// Every (verb, resource, result) counter with its value (benchmarks sum these across agents).
    pub fn api_requests_by(&self) -> Vec<(String, String, String, u64)> {
        let mut out = Vec::new();
        for mf in prometheus::core::Collector::collect(&self.api_requests) {
            for m in mf.get_metric() {
                let label = |n: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == n)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                out.push((
                    label("verb"),
                    label("resource"),
                    label("result"),
                    m.get_counter().get_value() as u64,
                ));
            }
        }
        out
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn handle(
    req: &Request<Incoming>,
    metrics: &Metrics,
    status: &StatusHandle,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        (&http::Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&http::Method::GET, "/status") => match serde_json::to_vec_pretty(&status.snapshot()) {
            Ok(body) => respond(StatusCode::OK, "application/json", body),
            Err(e) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `cancel` fires, with keel_common's limits: a connection cap taken before accept
/// (idle clients cannot take the agent's fds), a header timeout, backoff on accept errors.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    status: StatusHandle,
    cancel: CancellationToken,
) {
    serve_with(
        listener,
        keel_common::http::Limits::default(),
        metrics,
        status,
        cancel,
    )
    .await
}

/// [`serve`] with explicit limits (tests use short ones).
pub async fn serve_with(
    listener: TcpListener,
    limits: keel_common::http::Limits,
    metrics: Arc<Metrics>,
    status: StatusHandle,
    cancel: CancellationToken,
) {
    keel_common::http::serve_plain(listener, limits, cancel, move |req| {
        let r = handle(&req, &metrics, &status);
        async move { r }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_metrics(addr: SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Idle connections beyond the cap wait in the backlog instead of taking fds, are cut at the
    /// header timeout, and /metrics answers again once they are gone.
    #[tokio::test]
    async fn idle_connections_neither_exhaust_nor_block_metrics() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let limits = keel_common::http::Limits {
            max_connections: 8,
            header_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let st = StatusHandle::new(crate::status::Status::default(), None);
        tokio::spawn(serve_with(l, limits, Metrics::new(), st, cancel.clone()));
        let mut idle = Vec::new();
        for _ in 0..50 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // A silent client is cut by the header timeout rather than held open.
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf))
            .await
            .expect("a silent client was not closed within 5 s")
            .unwrap_or(0);
        assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"));
        let answer = tokio::time::timeout(Duration::from_secs(10), get_metrics(addr))
            .await
            .expect("/metrics did not answer behind 50 idle connections");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(idle);
        let answer = tokio::time::timeout(Duration::from_secs(5), get_metrics(addr))
            .await
            .expect("/metrics did not answer after the idle connections went");
        assert!(answer.contains("keel_agent_join_state"), "{answer}");
        cancel.cancel();
    }

    #[test]
    fn renders_join_state_and_requests() {
        let m = Metrics::new();
        m.set_join_state(JoinState::Joined);
        m.api_request("get", "configmaps", "ok");
        m.api_request("get", "configmaps", "403");
        m.set_cert_expiry(1_700_000_000);
        let text = m.render();
        assert!(
            text.contains("keel_agent_join_state{state=\"joined\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keel_agent_join_state{state=\"discovering\"} 0"),
            "{text}"
        );
        assert!(text.contains("keel_agent_api_requests_total{resource=\"configmaps\",result=\"403\",verb=\"get\"} 1"), "{text}");
        assert!(
            text.contains("keel_agent_certificate_expiry_timestamp_seconds 1700000000"),
            "{text}"
        );
        assert_eq!(m.api_requests_total(), 2);
        let by = m.api_requests_by();
        assert!(
            by.contains(&("get".into(), "configmaps".into(), "403".into(), 1)),
            "{by:?}"
        );
    }
}
