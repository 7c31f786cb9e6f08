//! Writers that carry the health loop's decisions to the API server: Node conditions (strategic
//! merge patch on `nodes/status`, merged by condition type so kubelet's conditions stay), Events
//! (core v1, like kubelet's node events) and taints. Each writer is its own task fed by a "latest
//! value" channel: a slow or down API server delays writes, never the checks, and a burst of
//! changes collapses into one write.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use keel_common::Backoff;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::health::conditions::{ConditionView, Transition};
use crate::health::metrics::HealthMetrics;
use crate::ops::status::SharedStatus;
use crate::ops::taints::{self, DesiredTaint};

pub fn k8s_time(t: SystemTime) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::try_from(t)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

pub fn from_k8s_time(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}

/// The strategic merge patch that sets our conditions (merge key `type`) and nothing else.
pub fn conditions_patch(conds: &[ConditionView], heartbeat: SystemTime) -> serde_json::Value {
    let list: Vec<serde_json::Value> = conds
        .iter()
        .map(|c| {
            serde_json::json!({
                "type": c.kind,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastHeartbeatTime": k8s_time(heartbeat),
                "lastTransitionTime": k8s_time(c.last_transition),
            })
        })
        .collect();
    serde_json::json!({ "status": { "conditions": list } })
}

// Condition timestamps are wall time for the API server.
#[allow(clippy::disallowed_methods)]
pub async fn patch_conditions(
    client: &kube::Client,
    node: &str,
    conds: &[ConditionView],
) -> Result<(), kube::Error> {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let patch = conditions_patch(conds, SystemTime::now());
    api.patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map(|_| ())
}

/// Conditions already on the Node, to seed the book after a restart.
pub fn node_conditions(node: &Node) -> Vec<ConditionView> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| ConditionView {
                    kind: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone().unwrap_or_default(),
                    message: c.message.clone().unwrap_or_default(),
                    last_transition: c
                        .last_transition_time
                        .as_ref()
                        .map(from_k8s_time)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn event_for(node: &str, uid: Option<&str>, tr: &Transition, now: SystemTime) -> Event {
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Event {
        metadata: ObjectMeta {
            // kubelet's naming: <object>.<hex timestamp>, unique enough per node.
            name: Some(format!("{node}.{nanos:x}")),
            namespace: Some("default".into()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            uid: uid.map(str::to_string),
            ..Default::default()
        },
        reason: Some(tr.reason.clone()),
        message: Some(if tr.to == "Event" {
            tr.message.clone()
        } else {
            format!(
                "Node condition {} is now: {}, reason: {}, message: {:?}",
                tr.condition, tr.to, tr.reason, tr.message
            )
        }),
        type_: Some(if tr.warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some("keel-agent".into()),
            host: Some(node.into()),
        }),
        first_timestamp: Some(k8s_time(now)),
        last_timestamp: Some(k8s_time(now)),
        count: Some(1),
        reporting_component: Some("keel-agent".into()),
        reporting_instance: Some(node.into()),
        ..Default::default()
    }
}

/// Sends the latest condition set until it is accepted, retrying with backoff; a newer set replaces
/// the one being retried.
pub async fn status_writer(
    client: super::NodeClient,
    node: String,
    mut rx: watch::Receiver<Vec<ConditionView>>,
    metrics: HealthMetrics,
    status: SharedStatus,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        loop {
            let conds = rx.borrow_and_update().clone();
            // The current client: a renewed certificate is used from the next write on.
            let c = client.borrow().clone();
            match patch_conditions(&c, &node, &conds).await {
                Ok(()) => {
                    backoff.reset();
                    metrics
                        .api_writes
                        .with_label_values(&["status", "ok"])
                        .inc();
                    status.update(|s| s.last_status_write_error = None);
                    tracing::debug!(node = %node, conditions = conds.len(), "node conditions written");
                    break;
                }
                Err(e) => {
                    metrics
                        .api_writes
                        .with_label_values(&["status", "error"])
                        .inc();
                    tracing::warn!(node = %node, error = %e, "writing node conditions failed; retrying");
                    let msg = e.to_string();
                    status.update(|s| s.last_status_write_error = Some(msg));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        // A newer set is retried at once.
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
            }
        }
    }
}

/// Creates one Event per transition; a full queue drops events (counted) rather than stall checks.
// Event timestamps are wall time for the API server.
#[allow(clippy::disallowed_methods)]
pub async fn event_writer(
    client: super::NodeClient,
    node: String,
    mut rx: mpsc::Receiver<Transition>,
    metrics: HealthMetrics,
    cancel: CancellationToken,
) {
    let mut uid: Option<String> = None;
    loop {
        let tr = tokio::select! {
            _ = cancel.cancelled() => return,
            t = rx.recv() => match t { Some(t) => t, None => return },
        };
        let c = client.borrow().clone();
        let api: kube::Api<Event> = kube::Api::namespaced(c.clone(), "default");
        if uid.is_none() {
            let nodes: kube::Api<Node> = kube::Api::all(c);
            uid = nodes.get(&node).await.ok().and_then(|n| n.metadata.uid);
        }
        let ev = event_for(&node, uid.as_deref(), &tr, SystemTime::now());
        let mut sent = false;
        for attempt in 0..3u32 {
            match api.create(&PostParams::default(), &ev).await {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(node = %node, reason = %tr.reason, attempt, error = %e, "creating event failed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        metrics
            .api_writes
            .with_label_values(&["event", if sent { "ok" } else { "error" }])
            .inc();
    }
}

/// Keeps the Node's policy taints equal to the latest desired set. Failures retry with backoff; a
/// refusal by NodeRestriction (no privileged credential) is reported and retried only when the
/// desired set changes or after `refresh`.
#[allow(clippy::too_many_arguments)] // a task entry: each argument is one thing it owns
pub async fn taint_writer(
    client: super::NodeClient,
    privileged: bool,
    node: String,
    mut rx: watch::Receiver<Vec<DesiredTaint>>,
    refresh: Duration,
    metrics: HealthMetrics,
    status: SharedStatus,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let mut applied_ok = false;
    let mut known = std::collections::BTreeSet::new();
    // The first pass always runs: it reconciles what a previous run left on the Node.
    rx.mark_changed();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        loop {
            let desired = rx.borrow_and_update().clone();
            let ids: Vec<String> = desired.iter().map(DesiredTaint::id).collect();
            let c = client.borrow().clone();
            match taints::apply(&c, &node, &desired).await {
                Ok(owned) => {
                    backoff.reset();
                    if !applied_ok || !ids.is_empty() {
                        tracing::info!(node = %node, taints = ?ids, "policy taints applied");
                    }
                    applied_ok = true;
                    for id in owned.iter().chain(&ids) {
                        known.insert(id.clone());
                    }
                    for id in &known {
                        metrics
                            .taint_applied
                            .with_label_values(&[id])
                            .set(owned.contains(id) as i64);
                    }
                    status.update(|s| {
                        s.taints.applied = owned.iter().cloned().collect();
                        s.taints.error = None;
                    });
                    break;
                }
                Err(e) => {
                    applied_ok = false;
                    let forbidden = matches!(e, taints::ApplyError::Forbidden { .. });
                    metrics
                        .taint_errors
                        .with_label_values(&[if forbidden { "forbidden" } else { "api" }])
                        .inc();
                    tracing::warn!(node = %node, taints = ?ids, privileged, error = %e,
                        "policy taints could not be applied; conditions are still reported");
                    let msg = e.to_string();
                    status.update(|s| s.taints.error = Some(msg));
                    let wait = if forbidden {
                        refresh
                    } else {
                        backoff.next_delay()
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_carries_only_our_conditions_with_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let p = conditions_patch(
            &[ConditionView {
                kind: "DiskSpaceLow".into(),
                status: "True".into(),
                reason: "DiskSpaceLow".into(),
                message: "/: 1Mi free".into(),
                last_transition: t,
            }],
            t,
        );
        let c = &p["status"]["conditions"][0];
        assert_eq!(c["type"], "DiskSpaceLow");
        assert_eq!(c["lastTransitionTime"], "2023-11-14T22:13:20Z");
        assert_eq!(p["status"].as_object().unwrap().len(), 1);
    }
}
