//! kube clients for the agent's identities (anonymous, bootstrap token, node certificate), all with
//! timeouts that notice a dead connection quickly, and the API request counter around every call.
//!
//! kube's client speaks HTTP/1.1 (hyper-rustls with only `http/1.1` enabled), so there is no HTTP/2
//! connection whose death hides behind a healthy-looking stream: every request is bounded by
//! `READ_TIMEOUT`, counted from when it was written (`reset_reader_on_write`), heartbeat requests
//! by 10 s (`heartbeat::Timing::request_timeout`, as kubelet's heartbeat client), and an abandoned
//! request takes its connection with it. After a VIP failover leaves the pooled connection
//! pointing at a dead flow, the next Lease renewal is abandoned after 10 s and the retry (200 ms
//! later) dials a fresh connection: ~20 s worst case from the failover (next renewal ≤ 11 s + 10 s),
//! measured 20.4 s by `dead_connection_after_vip_failover_is_replaced_well_inside_the_node_grace_period`,
//! well inside the 50 s `node-monitor-grace-period`, where HTTP/2's read-idle 30 s + ping 15 s
//! alone takes 45 s (golang.org/x/net/http2 ReadIdleTimeout + PingTimeout).

use std::time::Duration;

use kube::config::AuthInfo;
use kube::{Client, Config};

use crate::metrics::Metrics;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Server-side bound of every watch, below `READ_TIMEOUT` so a quiet watch ends cleanly.
pub const WATCH_TIMEOUT_SECS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build API client: {0}")]
    Build(#[from] kube::Error),
    #[error("bad credentials for the API client: {0}")]
    Credentials(String),
    #[error("cannot read kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
}

fn base_config(server: &http::Uri) -> Config {
    let mut c = Config::new(server.clone());
    apply_timeouts_and_no_retry(&mut c);
    c
}

/// Every agent client: the timeouts above, and kube's default retry layer OFF. That layer retries
/// 429/503/504 on its own (up to 15 times, backing off towards minutes), which would hide PDB
/// refusals from drain, stretch every deadline and leave attempts uncounted; the agent's loops
/// retry with `keel_common::Backoff` and count each attempt instead.
fn apply_timeouts_and_no_retry(c: &mut Config) {
    c.connect_timeout = Some(CONNECT_TIMEOUT);
    c.write_timeout = Some(WRITE_TIMEOUT);
    c.read_timeout = Some(READ_TIMEOUT);
    c.reset_reader_on_write = true;
    c.default_retry = false;
}

fn build(config: Config) -> Result<Client, ClientError> {
    Ok(Client::try_from(config)?)
}

/// Anonymous and WITHOUT TLS verification: only for discovery's first fetch of cluster-info, whose
/// content is then verified by its signature and the CA pin (as kubeadm does).
///
/// An empty root store, not none: without roots kube falls back to the system's trust store
/// (rustls-platform-verifier), which fails on a node without `ca-certificates` ("No CA
/// certificates were loaded from the system") although nothing here is verified against it.
pub fn anonymous_insecure(server: &http::Uri) -> Result<Client, ClientError> {
    let mut c = base_config(server);
    c.root_cert = Some(Vec::new());
    c.accept_invalid_certs = true;
    build(c)
}

/// Clients that trust exactly the cluster CA found by discovery.
#[derive(Clone)]
pub struct ApiClients {
    server: http::Uri,
    ca_pem: String,
}

impl ApiClients {
    pub fn new(server: http::Uri, ca_pem: String) -> Self {
        Self { server, ca_pem }
    }

    pub fn server(&self) -> &http::Uri {
        &self.server
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn config(&self, auth: serde_json::Value) -> Result<Config, ClientError> {
        let mut c = base_config(&self.server);
        let ders = rustls_pemfile::certs(&mut self.ca_pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Credentials(format!("CA PEM: {e}")))?;
        c.root_cert = Some(ders);
        c.auth_info = serde_json::from_value::<AuthInfo>(auth)
            .map_err(|e| ClientError::Credentials(e.to_string()))?;
        Ok(c)
    }

    pub fn anonymous(&self) -> Result<Client, ClientError> {
        build(self.config(serde_json::json!({}))?)
    }

    /// The bootstrap token identity (`system:bootstrap:<id>`).
    pub fn bootstrap(&self, bearer: &str) -> Result<Client, ClientError> {
        build(self.config(serde_json::json!({ "token": bearer }))?)
    }

    /// A client-certificate identity (the node, `system:node:<name>`).
    pub fn with_cert(&self, cert_pem: &str, key_pem: &str) -> Result<Client, ClientError> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        build(self.config(serde_json::json!({
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }))?)
    }
}

/// A client from a kubeconfig file (an administrator's or privileged identity), with the agent's
/// timeouts.
pub async fn from_kubeconfig_file(path: &std::path::Path) -> Result<Client, ClientError> {
    let err = |reason: String| ClientError::Kubeconfig {
        path: path.display().to_string(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let mut c = Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    apply_timeouts_and_no_retry(&mut c);
    build(c)
}

/// Outcome label for the request counter: `ok`, the HTTP status code, or `error` (transport).
pub fn result_label<T>(r: &Result<T, kube::Error>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(kube::Error::Api(s)) => s.code.to_string(),
        Err(_) => "error".to_string(),
    }
}

/// Runs one API call and counts it by verb, resource and result.
pub async fn observe<T>(
    metrics: &Metrics,
    verb: &str,
    resource: &str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    let r = fut.await;
    metrics.api_request(verb, resource, &result_label(&r));
    r
}

/// The HTTP status of an API error, if the server answered.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Errors that a retry may cure: the server down, overloaded (429) or failing (5xx), or the
/// connection lost. Anything else the API server said is its answer, and retrying will not change it.
pub fn is_transient(e: &kube::Error) -> bool {
    match status_code(e) {
        Some(code) => code == 429 || code >= 500,
        None => true,
    }
}
