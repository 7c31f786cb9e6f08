//! Node health: checks, conditions and events, taint policy, drain, the orchestrator API.
//!
//! CONTRACT with the rest of the agent (config.rs and main.rs call these):
//! - `HealthFile` is the raw `health:` section of the agent config (serde, deny_unknown_fields);
//! - `validate` turns it into `HealthConfig`, recording errors under the given field prefix;
//! - `run` is spawned by `keel-agent run` once the node is joined and registered, and returns when
//!   `cancel` fires (no drain) or after draining when `ctx.node_shutdown` fires.
//!
//! Data flow: one task per check → results channel → the health loop (`runner`), which owns the
//! pure cores (`conditions::Book`, `crate::taints::Policy`) and hands their output to writer tasks
//! (Node status, Events, taints) through "latest value" channels, so no API call ever sits in the
//! path of a check and a slow API server costs writes, not freshness.

pub mod check;
#[cfg(all(test, target_os = "linux"))]
mod cluster_tests;
pub mod conditions;
pub mod config;
#[cfg(all(test, target_os = "linux"))]
mod host_tests;
pub mod kernel_log;
pub mod metrics;
pub mod npd;
pub mod plugin;
pub mod probes;
pub mod report;
pub mod runner;
pub mod status;

use std::sync::Arc;

pub use config::{HealthConfig, HealthFile};
use keel_common::Diagnostics;
use tokio_util::sync::CancellationToken;

/// Validates the raw `health:` section; errors are recorded under `field` (e.g. `"health"`).
/// Paths are judged absolute for the node's `os`.
pub fn validate(
    raw: &HealthFile,
    field: &str,
    os: crate::config::Os,
    diag: &mut Diagnostics,
) -> HealthConfig {
    config::validate(raw, field, os, diag)
}

/// Re-reads the agent's config file and returns its validated `health:` section, or every error
/// as one printable text. Supplied by main (it owns the config file); used by SIGHUP and
/// `POST /v1/reload`.
pub type ReloadFn = Arc<dyn Fn() -> Result<HealthConfig, String> + Send + Sync>;

/// A JSON snapshot of the join state (the join code's status), shown under `join` in `/v1/status`.
pub type JoinStatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

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
    pub reload: Option<ReloadFn>,
    /// Cancelled when the node itself is shutting down (systemd stopping the system, Windows
    /// PRESHUTDOWN): `run` cordons and drains when `drain.on_shutdown` is set, then returns.
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
) -> anyhow::Result<Vec<(String, check::Outcome)>> {
    runner::run_once(config, registry).await
}
