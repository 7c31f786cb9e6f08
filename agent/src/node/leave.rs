//! `keel-agent leave`: cordon, drain, delete the Node (and its Lease), remove the credentials.
//! Each step tolerates having been done already, so an interrupted leave can simply be rerun.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::apiclient::{self, ApiClients, ClientError};
use crate::config::Config;
use crate::join::credentials::{CredentialsError, StateDir};
use crate::metrics::Metrics;
use crate::node::register::LEASE_NAMESPACE;

#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("drain failed (the node stays cordoned; rerun leave): {0}")]
    Drain(#[from] crate::ops::drain::DrainError),
    #[error("the node identity may not delete Node {node} ({message}): run `keel-agent leave --kubeconfig <administrator kubeconfig>` (or delete it with kubectl delete node {node} and rerun leave); credentials are kept until then")]
    CannotDelete { node: String, message: String },
    #[error("{what} of node {node} failed: {source}")]
    Api {
        node: String,
        what: &'static str,
        source: kube::Error,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct LeaveReport {
    pub was_joined: bool,
    pub cordoned: bool,
    pub drained: bool,
    pub node_deleted: bool,
}

fn ignore_not_found<T>(r: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn cordon(client: &Client, node: &str, metrics: &Metrics) -> Result<bool, LeaveError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "spec": { "unschedulable": true } });
    ignore_not_found(
        apiclient::observe(
            metrics,
            "patch",
            "nodes",
            nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await,
    )
    .map_err(|source| LeaveError::Api {
        node: node.to_string(),
        what: "cordon",
        source,
    })
}

/// `delete_kubeconfig`: the credential that deletes the Node (an administrator's, from
/// `leave --kubeconfig`); without it `health.privileged_kubeconfig`, then the node identity.
pub async fn leave(
    cfg: &Config,
    metrics: &Metrics,
    delete_kubeconfig: Option<&std::path::Path>,
) -> Result<LeaveReport, LeaveError> {
    let state = StateDir::new(cfg.state_dir.clone());
    let node = cfg.node.name.as_str();
    let mut report = LeaveReport::default();
    if let Some(creds) = state.load_node()? {
        report.was_joined = true;
        let client = ApiClients::new(cfg.cluster.server.clone(), creds.ca_pem.clone())
            .with_cert(&creds.cert_pem, &creds.key_pem)?;
        report.cordoned = cordon(&client, node, metrics).await?;
        tracing::info!(node, "cordoned");
        // Eviction API, PDB-aware, DaemonSet/mirror pods skipped (crate::ops::drain, `health.drain`).
        let progress = crate::ops::drain::drain(&client, node, &cfg.health.drain, &|p| {
            tracing::info!(
                node,
                evicted = p.evicted,
                pending = p.pending,
                skipped = p.skipped,
                "draining"
            );
        })
        .await?;
        report.drained = true;
        tracing::info!(
            node,
            evicted = progress.evicted,
            skipped = progress.skipped,
            "drained"
        );
        let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
        if let Err(e) = apiclient::observe(
            metrics,
            "delete",
            "leases",
            leases.delete(node, &DeleteParams::default()),
        )
        .await
        {
            if apiclient::status_code(&e) != Some(404) {
                tracing::warn!(node, error = %e, "deleting the Lease failed (garbage collection removes it with the Node)");
            }
        }
        // RBAC gives nodes no `delete` on Node objects: deleting needs the privileged identity.
        let (delete_client, privileged) =
            match delete_kubeconfig.or(cfg.health.privileged_kubeconfig.as_deref()) {
                Some(p) => (apiclient::from_kubeconfig_file(p).await?, true),
                None => (client, false),
            };
        let nodes: Api<Node> = Api::all(delete_client);
        report.node_deleted = match ignore_not_found(
            apiclient::observe(
                metrics,
                "delete",
                "nodes",
                nodes.delete(node, &DeleteParams::default().grace_period(0)),
            )
            .await,
        ) {
            Ok(deleted) => deleted,
            Err(kube::Error::Api(s)) if s.code == 403 && !privileged => {
                return Err(LeaveError::CannotDelete {
                    node: node.to_string(),
                    message: s.message.clone(),
                })
            }
            Err(source) => {
                return Err(LeaveError::Api {
                    node: node.to_string(),
                    what: "delete",
                    source,
                })
            }
        };
        tracing::info!(node, deleted = report.node_deleted, "node deleted");
    } else {
        tracing::info!(
            node,
            "not joined (no node credentials): removing any leftovers"
        );
    }
    if cfg.kubelet.managed {
        if cfg.kubelet.start_service {
            stop_kubelet(&cfg.kubelet.service);
        }
        match std::fs::remove_file(&cfg.kubelet.kubeconfig) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %cfg.kubelet.kubeconfig.display(), error = %e, "cannot remove kubelet's kubeconfig")
            }
            _ => {}
        }
    }
    state.remove_credentials()?;
    tracing::info!(node, state_dir = %state.root().display(), "credentials removed: node left the cluster");
    Ok(report)
}

fn stop_kubelet(service: &str) {
    #[cfg(unix)]
    let argv = ["systemctl", "stop", service];
    #[cfg(windows)]
    let argv = ["sc.exe", "stop", service];
    match std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
    {
        Ok(o) if o.status.success() => tracing::info!(service, "kubelet stopped"),
        Ok(o) => {
            tracing::warn!(service, stderr = %String::from_utf8_lossy(&o.stderr).trim(), "stopping kubelet failed")
        }
        Err(e) => tracing::warn!(service, error = %e, "stopping kubelet failed"),
    }
}

/// How long `leave` may take in total before main gives up (drain included).
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(600);
