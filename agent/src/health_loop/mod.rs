//! The health loop and its writers: drives the checks (`crate::health`), keeps the condition book
//! and the taint policy (`crate::ops::taints`), answers orchestrator commands and reloads, and
//! writes Node conditions, Events and taints to the API server.
//!
//! CONTRACT with the rest of the agent (run.rs and main.rs call these):
//! - `run` is spawned by `keel-agent run` once the node is joined and registered, and returns when
//!   `cancel` fires (no drain) or after draining when `ctx.node_shutdown` fires;
//! - `run_once` runs every check once without a cluster (`keel-agent health-once`).
//!
//! Data flow: one task per check → results channel → the health loop (`runner`), which owns the
//! pure cores (`crate::health::conditions::Book`, `crate::ops::taints::Policy`) and hands their
//! output to writer tasks (`report`: Node status, Events, taints) through "latest value" channels,
//! so no API call ever sits in the path of a check and a slow API server costs writes, not
//! freshness.

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::disallowed_methods)] // Tests against a real clock and API server.
mod cluster_tests;
#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::disallowed_methods)] // Tests against the real host.
mod host_tests;
pub mod report;
pub mod runner;

use std::sync::Arc;

use crate::config::health::HealthConfig;
use crate::health::outcome::Outcome;
pub use crate::ops::status::JoinStatusFn;

/// Where the health status goes for the status file (see [`HealthContext::publish`]).
pub type PublishFn = std::sync::Arc<dyn Fn(serde_json::Value) + Send + Sync>;
use tokio_util::sync::CancellationToken;

/// Re-reads the agent's config file and returns its validated `health:` section, or every error
/// as one printable text. Supplied by main (it owns the config file); used by SIGHUP and
/// `POST /v1/reload`.
pub type ReloadFn = Arc<dyn Fn() -> Result<HealthConfig, String> + Send + Sync>;

/// The node identity's client, as the latest value of a channel: certificate renewal sends the
/// client built on the new certificate and every writer uses it from its next request on, so
/// health never restarts (no re-seeding, no conditions re-sent as transitions).
pub type NodeClient = tokio::sync::watch::Receiver<kube::Client>;

/// A [`NodeClient`] that never changes (tests, `health-once`, a privileged kubeconfig).
pub fn fixed_client(client: kube::Client) -> NodeClient {
    tokio::sync::watch::channel(client).1
}

/// Everything `run` needs from the rest of the agent.
pub struct HealthContext {
    pub config: HealthConfig,
    pub node_name: String,
    /// Client with the node's own identity (conditions, events, cordon, eviction), swapped in place
    /// on certificate renewal. `None` runs the checks, metrics and the orchestrator API without a
    /// cluster.
    pub client: Option<NodeClient>,
    /// Client allowed to change the Node's taints. When `None`, `run` builds one from
    /// `config.privileged_kubeconfig` if set; otherwise taint changes are tried with the node
    /// identity, refused by NodeRestriction, and reported.
    pub privileged: Option<kube::Client>,
    pub registry: prometheus::Registry,
    pub join_status: JoinStatusFn,
    /// Receives the health status (checks, conditions, taints, drain) as JSON when it changed, at
    /// most once a second, and once more when `run` returns: the agent keeps it in its status file
    /// so `keel-agent status` shows it without the orchestrator API.
    pub publish: Option<PublishFn>,
    pub reload: Option<ReloadFn>,
    /// Cancelled when the node itself is shutting down (systemd stopping the system, Windows
    /// PRESHUTDOWN), or the agent is stopped with `drain.on_stop`: `run` cordons and drains when
    /// `drain.on_shutdown` or `drain.on_stop` is set, then returns.
    pub node_shutdown: CancellationToken,
}

/// Runs node health until `cancel` fires (returns without draining) or `ctx.node_shutdown` fires
/// (drains if configured, then returns).
pub async fn run(ctx: HealthContext, cancel: CancellationToken) -> anyhow::Result<()> {
    runner::run(ctx, cancel).await
}

/// Runs every configured check once (no cluster), records them in `registry`, and returns the
/// outcomes: `keel-agent health-once` and the Windows smoke test.
pub async fn run_once(
    config: &HealthConfig,
    registry: &prometheus::Registry,
) -> anyhow::Result<Vec<(String, Outcome)>> {
    runner::run_once(config, registry).await
}
