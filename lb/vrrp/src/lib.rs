//! keel-vrrp: VRRPv3 (RFC 9568) for keel-lb.
//!
//! CONTRACT with keel-lb (do not change signatures without updating `lb/`):
//! - `config::VrrpFile` is the raw `vrrp:` section of keel-lb's YAML (serde, deny_unknown_fields);
//! - `config::validate` turns it into a `config::VrrpConfig`, recording errors in keel-lb's
//!   `Diagnostics` under the field prefix it is given (e.g. `vrrp`);
//! - `Vrrp::start` runs the virtual routers on their own thread; keel-lb feeds pool health in with
//!   `set_pool_health`, hands over on SIGTERM with `handover`, then calls `shutdown`.

pub mod config;
pub mod fsm;
pub mod packet;

use std::time::Duration;

pub use config::{VrrpConfig, VrrpFile};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vrrp: {0}")]
    Io(#[from] std::io::Error),
    #[error("vrrp: {0}")]
    Other(String),
}

/// How a planned handover ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverOutcome {
    /// Another router announced itself master for every VRID we were master of.
    TakenOver,
    /// We were master of nothing.
    NothingToHandOver,
    /// Nobody took over within the timeout; the VIPs were released anyway.
    TimedOut,
}

/// A running set of virtual routers.
pub struct Vrrp {
    _private: (),
}

impl Vrrp {
    /// Starts every configured virtual router on a dedicated thread and registers metrics.
    pub fn start(_cfg: VrrpConfig, _registry: &prometheus::Registry) -> Result<Vrrp, Error> {
        Err(Error::Other("VRRP is not implemented yet".into()))
    }

    /// Tracks a pool's health: a pool named in a router's `track` with no healthy backend lowers
    /// that router's priority by the configured weight.
    pub fn set_pool_health(&self, _pool: &str, _healthy: bool) {}

    /// Applies a new validated config (routers added, removed or changed).
    pub fn reload(&self, _cfg: VrrpConfig) -> Result<(), Error> {
        Ok(())
    }

    /// Make-before-break handover: advertise priority 0, keep the VIPs until a new master announces
    /// itself (or `timeout`), then release them.
    pub async fn handover(&self, _timeout: Duration) -> HandoverOutcome {
        HandoverOutcome::NothingToHandOver
    }

    /// Stops the routers (releasing any VIP still held) and joins the thread.
    pub fn shutdown(self) {}
}
