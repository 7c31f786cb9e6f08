//! Cordon and drain through the Eviction API, as `kubectl drain` does (`k8s.io/kubectl/pkg/drain`):
//! mirror pods (annotation `kubernetes.io/config.mirror`) and DaemonSet pods are skipped, finished
//! pods go, a PodDisruptionBudget refusal (429, no Retry-After: kubernetes #36409) is retried every
//! `retry_interval` (kubectl: 5 s) until the deadline, a few pods at a time, each with the configured
//! grace period; an accepted eviction is followed until the pod is gone (listed with
//! `spec.nodeName=<node>,metadata.name=<pod>`, the read the Node authorizer allows a node).
//!
//! The node identity may cordon itself (`spec.unschedulable`) and evict pods bound to it under
//! NodeRestriction, so no privileged credential is needed here.

use std::time::Duration;

// The pausable clock: a drain's deadline and retries follow a test's paused time.
use tokio::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use serde::Serialize;

use crate::config::health::DrainConfig;

pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Why a pod is left on the node, or that it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Evict,
    SkipMirror,
    SkipDaemonSet,
}

/// kubectl drain's filters, for the pods Keel drains.
pub fn disposition(pod: &Pod) -> Disposition {
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return Disposition::SkipMirror;
    }
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let daemonset = pod.metadata.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.controller == Some(true) && r.kind == "DaemonSet")
    });
    if daemonset && !finished {
        return Disposition::SkipDaemonSet;
    }
    Disposition::Evict
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// running, done, failed
    pub state: String,
    pub total: usize,
    pub evicted: usize,
    pub skipped: usize,
    pub pending: usize,
    pub failed: Vec<String>,
    /// PDB refusals retried so far.
    pub refusals: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("cordon of node {node} failed: {source}")]
    Cordon {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing pods of node {node} failed: {source}")]
    List {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("drain of node {node} left {} pods after the deadline: {}", .pods.len(), .pods.join(", "))]
    Deadline { node: String, pods: Vec<String> },
}

pub async fn set_unschedulable(
    client: &kube::Client,
    node: &str,
    unschedulable: bool,
) -> Result<(), DrainError> {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let patch = serde_json::json!({ "spec": { "unschedulable": unschedulable } });
    api.patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|source| DrainError::Cordon {
            node: node.into(),
            source,
        })
}

enum PodResult {
    Evicted,
    Failed(String),
}

/// Cordons, then evicts every pod that should go; `report` sees progress after each pod.
pub async fn drain(
    client: &kube::Client,
    node: &str,
    cfg: &DrainConfig,
    report: &(dyn Fn(&Progress) + Sync),
) -> Result<Progress, DrainError> {
    set_unschedulable(client, node, true).await?;
    let deadline = Instant::now() + cfg.timeout;
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(|source| DrainError::List {
            node: node.into(),
            source,
        })?;
    let mut progress = Progress {
        state: "running".into(),
        total: list.items.len(),
        ..Default::default()
    };
    let mut todo = Vec::new();
    for p in list.items {
        match disposition(&p) {
            Disposition::Evict => todo.push(p),
            d => {
                tracing::info!(node, pod = %p.metadata.name.clone().unwrap_or_default(), why = ?d, "drain skips pod");
                progress.skipped += 1;
            }
        }
    }
    progress.pending = todo.len();
    report(&progress);
    tracing::info!(
        node,
        pods = todo.len(),
        skipped = progress.skipped,
        "draining"
    );
    let refusals = std::sync::atomic::AtomicU64::new(0);
    let mut results = futures::stream::iter(todo.into_iter().map(|p| {
        let refusals = &refusals;
        async move {
            let ns = p
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = p.metadata.name.clone().unwrap_or_default();
            let uid = p.metadata.uid.clone();
            let r = evict_one(client, node, &ns, &name, uid, cfg, deadline, refusals).await;
            (format!("{ns}/{name}"), r)
        }
    }))
    .buffer_unordered(cfg.parallel.max(1));
    while let Some((pod, r)) = results.next().await {
        progress.pending = progress.pending.saturating_sub(1);
        match r {
            PodResult::Evicted => {
                progress.evicted += 1;
                tracing::info!(node, pod = %pod, "pod evicted");
            }
            PodResult::Failed(why) => {
                tracing::warn!(node, pod = %pod, why = %why, "pod not evicted");
                progress.failed.push(pod);
            }
        }
        progress.refusals = refusals.load(std::sync::atomic::Ordering::Relaxed);
        report(&progress);
    }
    progress.refusals = refusals.load(std::sync::atomic::Ordering::Relaxed);
    if progress.failed.is_empty() {
        progress.state = "done".into();
        report(&progress);
        Ok(progress)
    } else {
        progress.state = "failed".into();
        report(&progress);
        Err(DrainError::Deadline {
            node: node.into(),
            pods: progress.failed,
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn evict_one(
    client: &kube::Client,
    node: &str,
    ns: &str,
    name: &str,
    uid: Option<String>,
    cfg: &DrainConfig,
    deadline: Instant,
    refusals: &std::sync::atomic::AtomicU64,
) -> PodResult {
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
    let params = EvictParams {
        delete_options: Some(DeleteParams {
            grace_period_seconds: cfg.grace_period.map(|g| g.as_secs() as u32),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut backoff = keel_common::Backoff::new(cfg.retry_interval, cfg.retry_interval * 6);
    loop {
        if Instant::now() >= deadline {
            return PodResult::Failed("deadline passed".into());
        }
        // Bounded by the deadline even if the client retries on its own (kube's default layer
        // retries 429s internally unless `default_retry` is off).
        let left = deadline.saturating_duration_since(Instant::now());
        let r = match tokio::time::timeout(left, api.evict(name, &params)).await {
            Ok(r) => r,
            Err(_) => return PodResult::Failed("deadline passed during eviction".into()),
        };
        match r {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 404 => return PodResult::Evicted,
            Err(kube::Error::Api(s)) if s.code == 429 => {
                // A PDB says not now: retry at kubectl's pace.
                refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(pod = %format!("{ns}/{name}"), message = %s.message, "eviction refused; retrying");
                sleep_until_or(deadline, cfg.retry_interval).await;
            }
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "eviction failed; retrying");
                sleep_until_or(deadline, backoff.next_delay()).await;
            }
        }
    }
    // Accepted: wait until the pod (this incarnation of it) is gone. A GET is not allowed for the
    // node identity once the pod is no longer bound to it (the Node authorizer with
    // AuthorizeNodeWithSelectors, on by default since 1.32, answers 403 for a deleted pod), so ask
    // with the list a node may make: its own pods, pinned to this name. An empty list means gone.
    let gone = ListParams::default().fields(&format!("spec.nodeName={node},metadata.name={name}"));
    loop {
        match api.list(&gone).await {
            Ok(l) if !l.items.iter().any(|p| p.metadata.uid == uid) => return PodResult::Evicted,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "polling an evicted pod failed")
            }
        }
        if Instant::now() >= deadline {
            return PodResult::Failed("evicted but still present at the deadline".into());
        }
        sleep_until_or(deadline, Duration::from_secs(1)).await;
    }
}

async fn sleep_until_or(deadline: Instant, d: Duration) {
    let until = (Instant::now() + d).min(deadline);
    tokio::time::sleep_until(until).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn filters_match_kubectl_drain() {
        let mirror = pod(serde_json::json!({"metadata": {"name": "kube-proxy",
            "annotations": {"kubernetes.io/config.mirror": "abc"}}}));
        assert_eq!(disposition(&mirror), Disposition::SkipMirror);
        let mut ds = pod(
            serde_json::json!({"metadata": {"name": "fluentd"}, "status": {"phase": "Running"}}),
        );
        ds.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "DaemonSet".into(),
            name: "fluentd".into(),
            uid: "u".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        assert_eq!(disposition(&ds), Disposition::SkipDaemonSet);
        // A finished DaemonSet pod goes, like any finished pod.
        ds.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(disposition(&ds), Disposition::Evict);
        let plain =
            pod(serde_json::json!({"metadata": {"name": "web"}, "status": {"phase": "Running"}}));
        assert_eq!(disposition(&plain), Disposition::Evict);
    }
}
