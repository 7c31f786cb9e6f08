//! The node heartbeat, with kubelet's defaults so 1,000 agents cost what 1,000 kubelets do: the
//! Lease in `kube-node-lease` (40 s duration) renewed every 10 s (±10 % jitter, so a fleet booted
//! together does not renew in lockstep); failed renewals retried after 200 ms doubling to 7 s; the
//! Node status checked every 10 s and written only when it changed or 5 minutes passed.
//!
//! [`Core`] is the schedule with no I/O and no clock (time comes in); [`run`] is the driver.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::apiclient;
use crate::metrics::Metrics;
use crate::node::host::Facts;
use crate::node::register::{self, Observed, LEASE_DURATION_SECS, LEASE_NAMESPACE};
use crate::status::StatusHandle;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub lease_renew: Duration,
    pub status_check: Duration,
    pub status_report: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Bound of one heartbeat request (kubelet's heartbeat client has the same 10 s): a request
    /// stuck on a dead connection is abandoned, its connection dropped, and the retry dials anew.
    pub request_timeout: Duration,
}

impl Default for Timing {
    /// kubelet's defaults (kubelet nodeLeaseDurationSeconds 40 s, renewed every 10 s: pkg/kubelet/nodelease).
    fn default() -> Self {
        Timing {
            lease_renew: Duration::from_secs(10),
            status_check: Duration::from_secs(10),
            status_report: Duration::from_secs(300),
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(7),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    RenewLease,
    CheckStatus,
}

/// The heartbeat schedule.
#[derive(Debug)]
pub struct Core {
    timing: Timing,
    next_lease: Instant,
    next_status_check: Instant,
    last_report: Option<Instant>,
    last_digest: Option<String>,
    lease_backoff: keel_common::Backoff,
}

impl Core {
    pub fn new(now: Instant, timing: Timing) -> Self {
        Core {
            timing,
            next_lease: now,
            next_status_check: now + timing.status_check,
            last_report: None,
            last_digest: None,
            lease_backoff: keel_common::Backoff::new(timing.retry_base, timing.retry_cap),
        }
    }

    /// Registration just wrote the status: the periodic report counts from now.
    pub fn status_written(&mut self, now: Instant, digest: String) {
        self.last_report = Some(now);
        self.last_digest = Some(digest);
    }

    pub fn next_wakeup(&self) -> Instant {
        self.next_lease.min(self.next_status_check)
    }

    pub fn due(&self, now: Instant) -> Vec<Action> {
        let mut v = Vec::new();
        if now >= self.next_lease {
            v.push(Action::RenewLease);
        }
        if now >= self.next_status_check {
            v.push(Action::CheckStatus);
        }
        v
    }

    /// `jitter` in [0.9, 1.1] scales the next interval after a success.
    pub fn lease_done(&mut self, now: Instant, ok: bool, jitter: f64) -> Duration {
        let delay = if ok {
            self.lease_backoff.reset();
            self.timing.lease_renew.mul_f64(jitter.clamp(0.5, 1.5))
        } else {
            self.lease_backoff.next_delay()
        };
        self.next_lease = now + delay;
        delay
    }

    /// Whether a status write is due: our observation changed, or the periodic report is due.
    pub fn status_check(&mut self, now: Instant, digest: &str) -> bool {
        self.next_status_check = now + self.timing.status_check;
        let changed = self.last_digest.as_deref() != Some(digest);
        let stale = self
            .last_report
            .is_none_or(|t| now.duration_since(t) >= self.timing.status_report);
        changed || stale
    }
}

fn lease_object(name: &str, node: &Node, now: Timestamp) -> Lease {
    let owner = node.metadata.uid.as_ref().map(|uid| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: name.to_string(),
            uid: uid.clone(),
            ..Default::default()
        }]
    });
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(LEASE_NAMESPACE.to_string()),
            owner_references: owner,
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_string()),
            lease_duration_seconds: Some(LEASE_DURATION_SECS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// Renews (or creates) the Lease; `cache` holds the last Lease written, so a renewal is one PUT.
pub async fn renew_lease(
    client: &Client,
    name: &str,
    node: &Node,
    cache: &mut Option<Lease>,
    metrics: &Metrics,
) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = Timestamp::now();
    if cache.is_none() {
        *cache = apiclient::observe(metrics, "get", "leases", leases.get_opt(name)).await?;
    }
    let result = match cache.take() {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(MicroTime(now));
            spec.holder_identity = Some(name.to_string());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECS);
            apiclient::observe(
                metrics,
                "update",
                "leases",
                leases.replace(name, &PostParams::default(), &lease),
            )
            .await
        }
        None => {
            apiclient::observe(
                metrics,
                "create",
                "leases",
                leases.create(&PostParams::default(), &lease_object(name, node, now)),
            )
            .await
        }
    };
    // On any failure the cache stays empty: the next try re-reads (a 409 means it moved on).
    *cache = Some(result?);
    Ok(())
}

fn unix(t: Timestamp) -> i64 {
    t.as_second()
}

/// What the heartbeat loop needs besides the client.
pub struct Heartbeat {
    pub name: String,
    /// The Node as last written (its uid owns the Lease; its resourceVersion makes a status write
    /// one PUT).
    pub node: Node,
    pub facts: Facts,
    pub timing: Timing,
    pub metrics: std::sync::Arc<Metrics>,
    pub status: StatusHandle,
}

/// The heartbeat loop; returns when `cancel` fires. `clients` carries the current node client
/// (replaced after a certificate renewal).
pub async fn run(mut clients: watch::Receiver<Client>, hb: Heartbeat, cancel: CancellationToken) {
    let Heartbeat {
        name,
        mut node,
        facts,
        timing,
        metrics,
        status,
    } = hb;
    let start = tokio::time::Instant::now().into_std();
    let mut core = Core::new(start, timing);
    let observed = Observed::ready();
    let digest_of = |facts: &Facts, o: &Observed| {
        register::digest(&register::merge_status(
            None,
            facts,
            o,
            Timestamp::UNIX_EPOCH,
        ))
    };
    core.status_written(start, digest_of(&facts, &observed));
    let mut lease_cache: Option<Lease> = None;
    loop {
        let wake = tokio::time::Instant::from_std(core.next_wakeup());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
            changed = clients.changed() => {
                if changed.is_err() { return; }
                lease_cache = None;
                continue;
            }
        }
        let client = clients.borrow().clone();
        let now = tokio::time::Instant::now().into_std();
        for action in core.due(now) {
            match action {
                Action::RenewLease => {
                    let r = match tokio::time::timeout(
                        timing.request_timeout,
                        renew_lease(&client, &name, &node, &mut lease_cache, &metrics),
                    )
                    .await
                    {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => {
                            lease_cache = None;
                            metrics.api_request("update", "leases", "timeout");
                            Err(format!("no answer within {:?}", timing.request_timeout))
                        }
                    };
                    let jitter = rand::rng().random_range(0.9..=1.1);
                    let after = tokio::time::Instant::now().into_std();
                    match r {
                        Ok(()) => {
                            core.lease_done(after, true, jitter);
                            status.update(|s| s.last_lease_renewal = Some(unix(Timestamp::now())));
                        }
                        Err(e) => {
                            let retry = core.lease_done(after, false, jitter);
                            tracing::warn!(node = %name, error = %e, retry_in = ?retry, "lease renewal failed");
                            status.update(|s| s.last_error = Some(format!("lease renewal: {e}")));
                        }
                    }
                }
                Action::CheckStatus => {
                    let digest = digest_of(&facts, &observed);
                    if core.status_check(now, &digest) {
                        let write = register::write_status(
                            &client,
                            &name,
                            Some(node.clone()),
                            &facts,
                            &observed,
                            &metrics,
                        );
                        // A status write may re-read on conflict: allow it a few request bounds.
                        let bound = timing.request_timeout * 3;
                        let result = match tokio::time::timeout(bound, write).await {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(_) => Err(format!("no answer within {bound:?}")),
                        };
                        match result {
                            Ok(n) => {
                                node = n;
                                core.status_written(tokio::time::Instant::now().into_std(), digest);
                                status.update(|s| {
                                    s.last_status_update = Some(unix(Timestamp::now()))
                                });
                            }
                            Err(e) => {
                                tracing::warn!(node = %name, error = %e, "node status update failed; retrying at the next check")
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests build their own `now`.
mod tests {
    use super::*;

    #[test]
    fn steady_state_is_six_lease_renewals_a_minute_and_one_status_per_five() {
        let t0 = Instant::now();
        let mut core = Core::new(t0, Timing::default());
        core.status_written(t0, "d".into());
        let (mut leases, mut statuses) = (0, 0);
        let mut now = t0;
        // Simulate one hour, waking exactly when the core asks.
        while now < t0 + Duration::from_secs(3600) {
            for a in core.due(now) {
                match a {
                    Action::RenewLease => {
                        leases += 1;
                        core.lease_done(now, true, 1.0);
                    }
                    Action::CheckStatus => {
                        if core.status_check(now, "d") {
                            statuses += 1;
                            core.status_written(now, "d".into());
                        }
                    }
                }
            }
            now = core.next_wakeup();
        }
        // 6 renewals a minute; status at 5, 10, ... 55 minutes (registration wrote it at 0).
        assert_eq!(leases, 360);
        assert_eq!(statuses, 11);
    }

    #[test]
    fn failed_renewals_back_off_from_200ms_to_7s_then_recover() {
        let t0 = Instant::now();
        let mut core = Core::new(t0, Timing::default());
        let mut delays = Vec::new();
        for _ in 0..12 {
            delays.push(core.lease_done(t0, false, 1.0));
        }
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(7)));
        assert!(*delays.last().unwrap() >= Duration::from_millis(3500));
        assert_eq!(core.lease_done(t0, true, 1.0), Duration::from_secs(10));
        // And the first failure after a success starts from 200 ms again.
        assert!(core.lease_done(t0, false, 1.0) <= Duration::from_millis(200));
    }

    #[test]
    fn status_is_written_on_change_and_otherwise_every_five_minutes() {
        let t0 = Instant::now();
        let mut core = Core::new(t0, Timing::default());
        core.status_written(t0, "a".into());
        assert!(!core.status_check(t0 + Duration::from_secs(10), "a"));
        assert!(core.status_check(t0 + Duration::from_secs(20), "b"));
        assert!(!core.status_check(t0 + Duration::from_secs(299), "a"));
        assert!(core.status_check(t0 + Duration::from_secs(300), "a"));
    }

    #[test]
    fn lease_has_kubelet_shape() {
        let mut node = Node::default();
        node.metadata.uid = Some("u1".into());
        let l = lease_object("w1", &node, Timestamp::UNIX_EPOCH);
        let spec = l.spec.unwrap();
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.holder_identity.as_deref(), Some("w1"));
        assert_eq!(l.metadata.namespace.as_deref(), Some("kube-node-lease"));
        assert_eq!(l.metadata.owner_references.unwrap()[0].kind, "Node");
    }
}
