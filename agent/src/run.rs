//! `keel-agent run`: join (or reuse credentials), register (or hand over to kubelet), then keep
//! the node alive: heartbeat, certificate renewal, config reloads, health; until cancelled.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::apiclient::{ApiClients, ClientError};
use crate::config::Config;
use crate::join::credentials::{NodeCredentials, StateDir};
use crate::join::{self, JoinError};
use crate::metrics::Metrics;
use crate::node::heartbeat::{self, Heartbeat, Timing};
use crate::node::host::{self, Facts};
use crate::node::kubelet::{self, KubeletError};
use crate::node::register::{self, RegisterError};
use crate::status::{JoinState, Status, StatusHandle, Versions};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("join failed: {0}")]
    Join(#[from] JoinError),
    #[error("registration failed: {0}")]
    Register(#[from] RegisterError),
    #[error("kubelet: {0}")]
    Kubelet(#[from] KubeletError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The node once joined and registered.
pub struct Joined {
    pub creds: NodeCredentials,
    pub client: Client,
    /// The Node as registered by the agent (`None` when kubelet is managed and owns the Node).
    pub node: Option<Node>,
    pub facts: Facts,
}

pub struct Agent {
    pub cfg: Config,
    pub state: StateDir,
    pub metrics: Arc<Metrics>,
    pub status: StatusHandle,
}

impl Agent {
    pub fn new(cfg: Config) -> Self {
        let state = StateDir::new(cfg.state_dir.clone());
        let status = StatusHandle::new(
            Status {
                node_name: cfg.node.name.clone(),
                pool: cfg.node.pool.clone(),
                server: join::server_string(&cfg),
                kubelet_managed: cfg.kubelet.managed,
                versions: Versions {
                    agent: env!("CARGO_PKG_VERSION").to_string(),
                    kubernetes: None,
                },
                ..Default::default()
            },
            Some(state.status_file()),
        );
        Agent {
            cfg,
            state,
            metrics: Metrics::new(),
            status,
        }
    }

    fn set_state(&self, s: JoinState) {
        self.metrics.set_join_state(s);
        self.status.update(|st| st.join_state = s);
    }

    fn record_cert(&self, creds: &NodeCredentials) {
        self.metrics.set_cert_expiry(creds.cert.not_after);
        self.status
            .update(|s| s.cert_not_after = Some(creds.cert.not_after));
    }

    /// Join and register; every step resumes what an earlier run left.
    pub async fn join_and_register(&self) -> Result<Joined, RunError> {
        let result = self.join_and_register_inner().await;
        match &result {
            Ok(_) => self.set_state(JoinState::Joined),
            Err(e) => {
                self.set_state(JoinState::Failed);
                self.status.update(|s| s.last_error = Some(e.to_string()));
                tracing::error!(node = %self.cfg.node.name, error = %e, "join failed");
            }
        }
        result
    }

    async fn join_and_register_inner(&self) -> Result<Joined, RunError> {
        let cfg = &self.cfg;
        let creds = join::ensure_joined(cfg, &self.state, &self.metrics, &self.status).await?;
        self.record_cert(&creds);
        let clients = ApiClients::new(cfg.cluster.server.clone(), creds.ca_pem.clone());
        let client = clients.with_cert(&creds.cert_pem, &creds.key_pem)?;
        if let Ok(v) = client.apiserver_version().await {
            self.status
                .update(|s| s.versions.kubernetes = Some(v.git_version.clone()));
        }
        self.set_state(JoinState::Registering);
        let facts = host::gather(&cfg.node.name, cfg.node.os, &cfg.cluster.server);
        let node = if cfg.kubelet.managed {
            kubelet::write_files(cfg, &creds)?;
            if cfg.kubelet.start_service {
                kubelet::start_service(&cfg.kubelet.service)?;
                kubelet::wait_for_node(&client, cfg, &self.metrics).await?;
            } else {
                tracing::info!(node = %cfg.node.name, "kubelet.start_service is false: not starting kubelet");
            }
            // kubelet owns the Node and its heartbeat.
            None
        } else {
            let instance = self.state.instance_id().map_err(JoinError::Credentials)?;
            Some(
                register::register(
                    &client,
                    cfg,
                    &facts,
                    &instance,
                    &self.metrics,
                    cfg.kubelet.register_timeout,
                )
                .await?,
            )
        };
        if node.is_some() {
            self.status
                .update(|s| s.last_status_update = Some(join::now_unix()));
        }
        Ok(Joined {
            creds,
            client,
            node,
            facts,
        })
    }

    /// Runs until `cancel`; `reloads` delivers already validated configs (SIGHUP);
    /// `node_shutdown` fires when the machine itself is going down, or the agent is stopped with
    /// `health.drain.on_stop` (drain first, then stop).
    pub async fn run(
        mut self,
        cancel: CancellationToken,
        node_shutdown: CancellationToken,
        mut reloads: mpsc::Receiver<Config>,
    ) -> Result<(), RunError> {
        let tasks = tokio_util::task::TaskTracker::new();
        if let Some(addr) = self.cfg.metrics_listen {
            let listener = crate::metrics::bind(addr)
                .await
                .map_err(|source| RunError::Metrics { addr, source })?;
            tracing::info!(%addr, "serving /metrics, /healthz and /status");
            tasks.spawn(crate::metrics::serve(
                listener,
                self.metrics.clone(),
                self.status.clone(),
                cancel.clone(),
            ));
        }
        let joined = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            // Not joined: nothing to drain, and a join must not hold a shutdown up.
            _ = node_shutdown.cancelled() => return Ok(()),
            j = self.join_and_register() => j?,
        };
        let (client_tx, client_rx) = watch::channel(joined.client.clone());
        if let Some(node) = joined.node.clone() {
            tasks.spawn(heartbeat::run(
                client_rx.clone(),
                Heartbeat {
                    name: self.cfg.node.name.clone(),
                    node,
                    facts: joined.facts.clone(),
                    timing: Timing::default(),
                    metrics: self.metrics.clone(),
                    status: self.status.clone(),
                },
                cancel.clone(),
            ));
        }
        tasks.spawn(renewal_loop(
            self.cfg.clone(),
            self.state.clone(),
            joined.creds.clone(),
            self.metrics.clone(),
            self.status.clone(),
            client_tx,
            cancel.clone(),
        ));
        // Health gets its own token: on a node shutdown it must outlive the others to drain.
        // It follows certificate renewals through `client_rx` without restarting.
        let health_cancel = CancellationToken::new();
        let mut health = start_health(
            &self,
            client_rx.clone(),
            &tasks,
            &health_cancel,
            &node_shutdown,
        );
        tracing::info!(node = %self.cfg.node.name, "node joined and registered; heartbeat running");
        let mut reloads_open = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = node_shutdown.cancelled() => {
                    // Health cordons and drains (when `health.drain.on_shutdown`), then returns.
                    let bound = self.cfg.health.drain.timeout + Duration::from_secs(30);
                    tracing::info!(node = %self.cfg.node.name, bound = ?bound, "node shutting down: waiting for health to drain");
                    if tokio::time::timeout(bound, &mut health).await.is_err() {
                        tracing::warn!("drain on shutdown did not finish in time");
                    }
                    cancel.cancel();
                    break;
                }
                // The signal task drops its sender when it stops (after a SIGTERM that drains):
                // keep waiting for cancel or node_shutdown, never for cancel alone, or a drain
                // on stop would leave the agent running (a race between the two branches).
                new = reloads.recv(), if reloads_open => match new {
                    Some(new) => self.apply_reload(new, &client_rx).await,
                    None => reloads_open = false,
                },
            }
        }
        health_cancel.cancel();
        tasks.close();
        // Every task watches `cancel`; bound the wait anyway so shutdown never hangs on the API.
        if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 10s");
        }
        tracing::info!(node = %self.cfg.node.name, "agent stopped");
        Ok(())
    }

    /// Applies what can change at run time (pool labels); reports what needs a restart.
    async fn apply_reload(&mut self, new: Config, clients: &watch::Receiver<Client>) {
        let old = &self.cfg;
        let mut restart = Vec::new();
        if old.cluster != new.cluster {
            restart.push("cluster");
        }
        if old.node.name != new.node.name {
            restart.push("node.name");
        }
        if old.state_dir != new.state_dir {
            restart.push("state_dir");
        }
        if old.kubelet != new.kubelet {
            restart.push("kubelet");
        }
        if old.metrics_listen != new.metrics_listen {
            restart.push("metrics.listen");
        }
        if old.node.taints != new.node.taints {
            restart.push("node.taints (a node cannot change its own taints: NodeRestriction)");
        }
        if !restart.is_empty() {
            tracing::warn!(fields = ?restart, "config reload: these changes take effect only after a restart");
        }
        if old.node.labels != new.node.labels
            && !old.kubelet.managed
            && old.node.name == new.node.name
        {
            let client = clients.borrow().clone();
            let facts = host::gather(&new.node.name, new.node.os, &new.cluster.server);
            let labels = register::desired_labels(&new, &facts);
            let nodes: Api<Node> = Api::all(client);
            let patch = serde_json::json!({ "metadata": { "labels": labels } });
            match crate::apiclient::observe(
                &self.metrics,
                "patch",
                "nodes",
                nodes.patch(
                    &new.node.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ),
            )
            .await
            {
                Ok(_) => {
                    tracing::info!(node = %new.node.name, "config reload: node labels updated")
                }
                Err(e) => {
                    tracing::warn!(node = %new.node.name, error = %e, "config reload: updating node labels failed")
                }
            }
        }
        self.metrics.config_reload(true);
        self.status.update(|s| s.config_reloads_ok += 1);
        tracing::info!(path = %new.path.display(), "config reloaded");
        let keep_node = self.cfg.node.clone();
        self.cfg = new;
        if !restart.is_empty() {
            // Keep identity-defining fields until restart so the running loops stay consistent.
            self.cfg.node.name = keep_node.name;
        }
    }
}

/// Starts node health (issue 5's `crate::health_loop::run`) once the node is registered; returns the
/// task so a node shutdown can wait for its drain.
fn start_health(
    agent: &Agent,
    client: watch::Receiver<Client>,
    tasks: &tokio_util::task::TaskTracker,
    cancel: &CancellationToken,
    node_shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let status = agent.status.clone();
    let section = agent.status.clone();
    let path = agent.cfg.path.clone();
    let ctx = crate::health_loop::HealthContext {
        config: agent.cfg.health.clone(),
        node_name: agent.cfg.node.name.clone(),
        client: Some(client),
        privileged: None,
        registry: agent.metrics.registry.clone(),
        join_status: Arc::new(move || serde_json::to_value(status.snapshot()).unwrap_or_default()),
        publish: Some(Arc::new(move |v| section.set_section("health", v))),
        reload: Some(Arc::new(move || {
            crate::config::load(&path)
                .map(|c| c.health)
                .map_err(|e| e.to_string())
        })),
        node_shutdown: node_shutdown.clone(),
    };
    let node = agent.cfg.node.name.clone();
    let cancel = cancel.clone();
    tasks.spawn(async move {
        if let Err(e) = crate::health_loop::run(ctx, cancel).await {
            tracing::error!(node = %node, error = %e, "node health stopped with an error");
        }
    })
}

fn unix_now() -> i64 {
    join::now_unix()
}

/// Renews the certificate at a jittered 70-90 % of its life, hands the new client to the
/// heartbeat and node health (both read it from the channel on their next request), and rewrites kubelet's kubeconfig when kubelet is managed.
#[allow(clippy::too_many_arguments)]
async fn renewal_loop(
    cfg: Config,
    state: StateDir,
    mut creds: NodeCredentials,
    metrics: Arc<Metrics>,
    status: StatusHandle,
    clients: watch::Sender<Client>,
    cancel: CancellationToken,
) {
    let mut backoff = keel_common::Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
    let mut renew_at =
        crate::join::csr::renew_at(&creds.cert, crate::join::csr::jittered_fraction());
    loop {
        status.update(|s| s.cert_renew_at = Some(renew_at));
        let wait = Duration::from_secs((renew_at - unix_now()).max(0) as u64);
        tracing::info!(node = %cfg.node.name, renew_at, in_secs = wait.as_secs(), "next certificate renewal");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = join::renew(&cfg, &state, &creds, &metrics) => r,
        };
        match result {
            Ok(new) => {
                backoff.reset();
                let clients_for = ApiClients::new(cfg.cluster.server.clone(), new.ca_pem.clone());
                match clients_for.with_cert(&new.cert_pem, &new.key_pem) {
                    Ok(c) => {
                        let _ = clients.send(c);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build a client from the renewed certificate")
                    }
                }
                if cfg.kubelet.managed {
                    match kubelet::write_kubeconfig(&cfg, &new) {
                        // kubelet reads the embedded certificate once: restart it onto the new
                        // one (pods keep running across a kubelet restart).
                        Ok(()) if cfg.kubelet.start_service => {
                            let service = cfg.kubelet.service.clone();
                            match tokio::task::spawn_blocking(move || {
                                kubelet::start_service(&service)
                            })
                            .await
                            {
                                Ok(Ok(())) => {
                                    tracing::info!(node = %cfg.node.name, "kubelet restarted on the renewed certificate")
                                }
                                Ok(Err(e)) => {
                                    tracing::error!(node = %cfg.node.name, error = %e, "cannot restart kubelet after renewal")
                                }
                                Err(e) => {
                                    tracing::error!(node = %cfg.node.name, error = %e, "kubelet restart task failed")
                                }
                            }
                        }
                        Ok(()) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "cannot rewrite kubelet's kubeconfig after renewal")
                        }
                    }
                }
                metrics.set_cert_expiry(new.cert.not_after);
                status.update(|s| s.cert_not_after = Some(new.cert.not_after));
                creds = new;
                renew_at =
                    crate::join::csr::renew_at(&creds.cert, crate::join::csr::jittered_fraction());
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(node = %cfg.node.name, error = %e, retry_in = ?delay, "certificate renewal failed");
                status.update(|s| s.last_error = Some(format!("certificate renewal: {e}")));
                renew_at = unix_now() + delay.as_secs() as i64;
            }
        }
    }
}
