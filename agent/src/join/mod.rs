//! The join driver: discovery → CA on disk → key → CSR → signed certificate → node kubeconfig.
//!
//! Every step first looks at what a previous run left behind (kubeadm join is restartable the same way), so a crash at any line
//! resumes: a stored CA that matches a pin skips discovery; a pending key is reused and, since the
//! CSR's name derives from the key, the CSR filed before the crash is found instead of filing a
//! second; a node kubeconfig with a usable certificate means the node is joined and nothing runs.

pub mod credentials;
pub mod csr;
pub mod discovery;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};

use crate::apiclient::{self, ApiClients, ClientError};
use crate::config::{Config, TokenSource};
use crate::join::credentials::{CredentialsError, NodeCredentials, StateDir};
use crate::join::csr::{CsrError, Outcome};
use crate::join::discovery::{BootstrapToken, DiscoveryError, Pin};
use crate::metrics::Metrics;
use crate::status::{JoinState, StatusHandle};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("discovery: {0}")]
    Discovery(#[from] DiscoveryError),
    #[error("cannot read the bootstrap token from {path}: {reason}")]
    TokenFile { path: String, reason: String },
    #[error("the bootstrap token {token_id} was refused by the API server ({code} {reason}): it expired or was deleted; create a new one (kubeadm token create) and update cluster.token")]
    TokenRejected {
        token_id: String,
        code: u16,
        reason: String,
    },
    #[error("certificate signing request {name} was denied: {reason}")]
    Denied { name: String, reason: String },
    #[error("certificate signing request {name} failed: {reason}")]
    SigningFailed { name: String, reason: String },
    #[error("certificate signing request {name} was not signed within {timeout:?}: is the CSR approver running? (kubectl get csr {name})")]
    CsrTimeout { name: String, timeout: Duration },
    #[error("a certificate signing request named {name} exists but is not for this node's key")]
    CsrConflict { name: String },
    #[error("the API server refused {what}: {source}")]
    Refused { what: String, source: kube::Error },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

// Certificate validity is wall time.
#[allow(clippy::disallowed_methods)]
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn read_token(source: &TokenSource) -> Result<BootstrapToken, JoinError> {
    match source {
        TokenSource::Inline(t) => Ok(t.clone()),
        TokenSource::File(p) => {
            let err = |reason: String| JoinError::TokenFile {
                path: p.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(p).map_err(|e| err(e.to_string()))?;
            BootstrapToken::parse(&text).map_err(err)
        }
    }
}

/// Stored credentials that can be used as they are: the right node, the configured server, a CA
/// that still matches a pin, and a certificate that has not expired.
pub fn reusable(cfg: &Config, creds: &NodeCredentials, now: i64) -> Result<(), String> {
    if creds.cert.common_name != csr::common_name(&cfg.node.name) {
        return Err(format!(
            "stored certificate is for {:?}, config says node {:?}",
            creds.cert.common_name, cfg.node.name
        ));
    }
    if creds.server != cfg.cluster.server.to_string().trim_end_matches('/') {
        return Err(format!(
            "stored credentials are for server {}, config says {}",
            creds.server, cfg.cluster.server
        ));
    }
    if !ca_matches_pins(&creds.ca_pem, &cfg.cluster.ca_pins) {
        return Err("stored CA no longer matches cluster.ca_pins".into());
    }
    if !csr::usable(&creds.cert, now) {
        return Err("stored certificate has expired".into());
    }
    Ok(())
}

fn ca_matches_pins(ca_pem: &str, pins: &[Pin]) -> bool {
    rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .filter_map(Result::ok)
        .any(|der| Pin::of_cert(&der).is_ok_and(|p| pins.contains(&p)))
}

pub fn server_string(cfg: &Config) -> String {
    cfg.cluster
        .server
        .to_string()
        .trim_end_matches('/')
        .to_string()
}

/// Joins the node unless it is already joined; returns the node identity.
pub async fn ensure_joined(
    cfg: &Config,
    state: &StateDir,
    metrics: &Metrics,
    status: &StatusHandle,
) -> Result<NodeCredentials, JoinError> {
    let node = &cfg.node.name;
    state.prepare()?;
    match state.load_node() {
        Ok(Some(creds)) => match reusable(cfg, &creds, now_unix()) {
            Ok(()) => {
                tracing::info!(node = %node, not_after = creds.cert.not_after, "already joined: reusing stored node credentials");
                state.remove_pending_key_if_current(&creds)?;
                return Ok(creds);
            }
            Err(why) => {
                tracing::warn!(node = %node, reason = %why, "stored node credentials unusable: joining again")
            }
        },
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(node = %node, error = %e, "stored node credentials unreadable: joining again")
        }
    }

    let token = read_token(&cfg.cluster.token)?;
    let server = server_string(cfg);

    // Discovery, unless a CA verified by an earlier run is on disk and still pinned.
    let ca_pem = match state.load_ca()? {
        Some(pem) if ca_matches_pins(&pem, &cfg.cluster.ca_pins) => {
            tracing::info!(node = %node, "reusing the cluster CA verified by an earlier run");
            pem
        }
        _ => {
            set_state(metrics, status, JoinState::Discovering);
            tracing::info!(node = %node, server = %server, token_id = %token.id, "discovery: fetching cluster-info");
            let verified = discovery::discover(
                &cfg.cluster.server,
                &token,
                &cfg.cluster.ca_pins,
                cfg.cluster.discovery_timeout,
                metrics,
            )
            .await?;
            let pem = verified.ca_pem();
            state.save_ca(&pem)?;
            pem
        }
    };

    set_state(metrics, status, JoinState::Bootstrapping);
    let clients = ApiClients::new(cfg.cluster.server.clone(), ca_pem.clone());
    let client = clients.bootstrap(&token.bearer())?;
    let key = match state.load_pending_key()? {
        Some(pem) => csr::load_key(&pem)?,
        None => {
            let key = csr::new_key()?;
            state.save_pending_key(&key.serialize_pem())?;
            key
        }
    };
    let cert_pem = request_certificate(
        client,
        &key,
        node,
        cfg.cluster.csr_timeout,
        metrics,
        Some(&token.id),
    )
    .await?;
    let info = csr::cert_info(&cert_pem)?;
    csr::check_cert(&info, &key, node)?;
    let key_pem = key.serialize_pem();
    state.save_node(&server, node, &ca_pem, &cert_pem, &key_pem)?;
    state.remove_pending_key()?;
    tracing::info!(node = %node, not_after = info.not_after, "TLS bootstrap complete: node credentials written");
    Ok(NodeCredentials {
        server,
        ca_pem,
        cert_pem,
        key_pem,
        cert: info,
    })
}

fn set_state(metrics: &Metrics, status: &StatusHandle, s: JoinState) {
    metrics.set_join_state(s);
    status.update(|st| st.join_state = s);
}

fn refused(token_id: Option<&str>, e: kube::Error, what: &str) -> JoinError {
    match (token_id, &e) {
        (Some(id), kube::Error::Api(s)) if s.code == 401 || s.code == 403 => {
            JoinError::TokenRejected {
                token_id: id.to_string(),
                code: s.code,
                reason: s.message.clone(),
            }
        }
        _ => JoinError::Refused {
            what: what.to_string(),
            source: e,
        },
    }
}

/// Files (or finds) the CSR for `key` and waits for its certificate. `token_id` is set when the
/// client is the bootstrap token, so a 401/403 is reported as the token's fault.
pub async fn request_certificate(
    client: Client,
    key: &rcgen::KeyPair,
    node: &str,
    timeout: Duration,
    metrics: &Metrics,
    token_id: Option<&str>,
) -> Result<String, JoinError> {
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let name = csr::csr_name(key, node);
    let request = csr::request_pem(key, node)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff =
        keel_common::Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    let timed_out = || JoinError::CsrTimeout {
        name: name.clone(),
        timeout,
    };
    loop {
        // Create, or find the one filed before a restart.
        let current = match apiclient::observe(
            metrics,
            "create",
            "certificatesigningrequests",
            api.create(&PostParams::default(), &csr::csr_object(&name, &request)),
        )
        .await
        {
            Ok(c) => {
                tracing::info!(node = %node, csr = %name, "certificate signing request created");
                Some(c)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                match apiclient::observe(
                    metrics,
                    "get",
                    "certificatesigningrequests",
                    api.get_opt(&name),
                )
                .await
                {
                    Ok(Some(c)) if csr::is_ours(&c, key, node) => {
                        tracing::info!(node = %node, csr = %name, "found the certificate signing request filed earlier");
                        Some(c)
                    }
                    Ok(Some(_)) => return Err(JoinError::CsrConflict { name }),
                    Ok(None) => None, // deleted in between: create again
                    Err(e) if apiclient::is_transient(&e) => None,
                    Err(e) => return Err(refused(token_id, e, "reading the CSR")),
                }
            }
            Err(e) if apiclient::is_transient(&e) => {
                tracing::warn!(node = %node, csr = %name, error = %e, "creating the CSR failed; retrying");
                None
            }
            Err(e) => return Err(refused(token_id, e, "creating the CSR")),
        };
        if let Some(csr_obj) = current {
            match wait_for_certificate(&api, &name, csr_obj, deadline, metrics, token_id).await? {
                Some(cert) => return Ok(cert),
                None => {
                    // The CSR disappeared (deleted or garbage-collected): file it again.
                    tracing::warn!(node = %node, csr = %name, "certificate signing request vanished; filing it again");
                    continue;
                }
            }
        }
        let delay = backoff.next_delay();
        if tokio::time::Instant::now() + delay > deadline {
            return Err(timed_out());
        }
        tokio::time::sleep(delay).await;
    }
}

/// Watches one CSR until it is issued, denied or failed, or `deadline`. `Ok(None)`: it was deleted.
async fn wait_for_certificate(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    mut current: CertificateSigningRequest,
    deadline: tokio::time::Instant,
    metrics: &Metrics,
    token_id: Option<&str>,
) -> Result<Option<String>, JoinError> {
    let mut backoff =
        keel_common::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        match csr::outcome(&current) {
            Outcome::Issued(cert) => {
                tracing::info!(csr = %name, "certificate issued");
                return Ok(Some(cert));
            }
            Outcome::Denied(reason) => {
                return Err(JoinError::Denied {
                    name: name.to_string(),
                    reason,
                })
            }
            Outcome::Failed(reason) => {
                return Err(JoinError::SigningFailed {
                    name: name.to_string(),
                    reason,
                })
            }
            Outcome::Pending => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(JoinError::CsrTimeout {
                name: name.to_string(),
                timeout: Duration::ZERO,
            });
        }
        let rv = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_else(|| "0".into());
        let secs = (deadline - now)
            .as_secs()
            .clamp(1, u64::from(apiclient::WATCH_TIMEOUT_SECS)) as u32;
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(secs);
        tracing::debug!(csr = %name, "waiting for approval and signing");
        let mut failed = None;
        match apiclient::observe(
            metrics,
            "watch",
            "certificatesigningrequests",
            api.watch(&wp, &rv),
        )
        .await
        {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                let bound = tokio::time::sleep_until(
                    deadline.min(now + Duration::from_secs(u64::from(secs) + 5)),
                );
                tokio::pin!(bound);
                loop {
                    let ev = tokio::select! {
                        _ = &mut bound => break,
                        ev = stream.next() => ev,
                    };
                    match ev {
                        Some(Ok(WatchEvent::Added(c))) | Some(Ok(WatchEvent::Modified(c))) => {
                            current = c;
                            if !matches!(csr::outcome(&current), Outcome::Pending) {
                                break;
                            }
                        }
                        Some(Ok(WatchEvent::Deleted(_))) => return Ok(None),
                        Some(Ok(WatchEvent::Bookmark(b))) => {
                            current.metadata.resource_version = Some(b.metadata.resource_version);
                        }
                        Some(Ok(WatchEvent::Error(s))) => {
                            // 410 Gone: our resourceVersion is too old; re-read below.
                            failed = Some(format!("watch error {}: {}", s.code, s.message));
                            break;
                        }
                        Some(Err(e)) => {
                            failed = Some(e.to_string());
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) if !apiclient::is_transient(&e) => {
                return Err(refused(token_id, e, "watching the CSR"))
            }
            Err(e) => failed = Some(e.to_string()),
        }
        if !matches!(csr::outcome(&current), Outcome::Pending) {
            continue;
        }
        if let Some(why) = failed {
            let delay = backoff.next_delay();
            tracing::warn!(csr = %name, error = %why, retry_in = ?delay, "watching the CSR failed");
            tokio::time::sleep(
                delay.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
            )
            .await;
        }
        // Re-read: covers a missed event, a 410, and gives the watch a fresh resourceVersion.
        match apiclient::observe(
            metrics,
            "get",
            "certificatesigningrequests",
            api.get_opt(name),
        )
        .await
        {
            Ok(Some(c)) => current = c,
            Ok(None) => return Ok(None),
            Err(e) if apiclient::is_transient(&e) => {}
            Err(e) => return Err(refused(token_id, e, "reading the CSR")),
        }
    }
}

/// Renews the node certificate with the node's own identity (the `selfnodeclient` path): new key,
/// new CSR, wait, then replace the node kubeconfig atomically. The pending key makes it resumable.
pub async fn renew(
    cfg: &Config,
    state: &StateDir,
    creds: &NodeCredentials,
    metrics: &Metrics,
) -> Result<NodeCredentials, JoinError> {
    let node = &cfg.node.name;
    let clients = ApiClients::new(cfg.cluster.server.clone(), creds.ca_pem.clone());
    let client = clients.with_cert(&creds.cert_pem, &creds.key_pem)?;
    let key = match state.load_pending_key()? {
        Some(pem) => csr::load_key(&pem)?,
        None => {
            let key = csr::new_key()?;
            state.save_pending_key(&key.serialize_pem())?;
            key
        }
    };
    tracing::info!(node = %node, not_after = creds.cert.not_after, "renewing the node certificate");
    let cert_pem =
        request_certificate(client, &key, node, cfg.cluster.csr_timeout, metrics, None).await?;
    let info = csr::cert_info(&cert_pem)?;
    csr::check_cert(&info, &key, node)?;
    let key_pem = key.serialize_pem();
    state.save_node(&creds.server, node, &creds.ca_pem, &cert_pem, &key_pem)?;
    state.remove_pending_key()?;
    tracing::info!(node = %node, not_after = info.not_after, "node certificate renewed");
    Ok(NodeCredentials {
        server: creds.server.clone(),
        ca_pem: creds.ca_pem.clone(),
        cert_pem,
        key_pem,
        cert: info,
    })
}
