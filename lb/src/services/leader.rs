//! The one keel-lb that writes: a `coordination.k8s.io/v1` Lease in the workload cluster, with
//! client-go's leader-election rules (tools/leaderelection): a holder renews every `duration/5`; the
//! others take over only after they have seen the same record unchanged for a whole `duration` by
//! their own clock (no clock comparison between machines); a holder that cannot renew within
//! `2/3 duration` stops writing before anyone else may start. On a clean stop the holder gives the
//! Lease up so the other takes over at once.
//!
//! Every keel-lb serves every rule whoever holds the Lease; only status, annotations, finalizers,
//! Events and address choices wait for it.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    /// Runs until `stop`; `leader` says whether this instance may write.
    pub async fn run(self, leader: watch::Sender<bool>, stop: CancellationToken) {
        let retry = (self.duration / 5).max(Duration::from_millis(200));
        let renew_deadline = self.duration * 2 / 3;
        // (holder, renewTime, transitions) as last seen, and when we first saw it so.
        let mut observed: Option<(String, String, Instant)> = None;
        let mut last_renew: Option<Instant> = None;
        loop {
            let ok = self.try_acquire_or_renew(&mut observed).await;
            let now = Instant::now();
            match ok {
                Ok(true) => last_renew = Some(now),
                Ok(false) => last_renew = None,
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "services: writer lease not renewed")
                }
            }
            let is_leader = last_renew.is_some_and(|t| now.duration_since(t) < renew_deadline);
            if *leader.borrow() != is_leader {
                tracing::info!(lease = %self.name, identity = %self.identity, leader = is_leader,
                    "services: {}", if is_leader { "this keel-lb now writes Service status" } else { "another keel-lb writes Service status" });
                leader.send_replace(is_leader);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(retry) => {}
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            self.release().await;
        }
    }

    /// Ok(true): we hold the Lease now.
    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<(String, String, Instant)>,
    ) -> Result<bool, kube::Error> {
        let secs = self.duration.as_secs().max(1) as i32;
        let current = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = current else {
            let mut l = Lease::default();
            l.metadata.name = Some(self.name.clone());
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(self.identity.clone());
            spec.lease_duration_seconds = Some(secs);
            spec.acquire_time = Some(now_micro());
            spec.renew_time = Some(now_micro());
            spec.lease_transitions = Some(0);
            return match self.api.create(&PostParams::default(), &l).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renew = spec
            .renew_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let their_secs = spec.lease_duration_seconds.unwrap_or(secs).max(1) as u64;
        let now = Instant::now();
        let seen_since = match observed {
            Some((h, r, t)) if *h == holder && *r == renew => *t,
            _ => {
                *observed = Some((holder.clone(), renew.clone(), now));
                now
            }
        };
        let mine = holder == self.identity;
        let expired =
            holder.is_empty() || now.duration_since(seen_since) > Duration::from_secs(their_secs);
        if !mine && !expired {
            return Ok(false);
        }
        if !mine {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(now_micro());
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(now_micro());
        spec.lease_duration_seconds = Some(secs);
        // The resourceVersion in `lease` makes this a compare-and-swap: two takers, one winner.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                *observed = None;
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "services: writer lease released"),
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "services: writer lease not released")
            }
        }
    }
}
