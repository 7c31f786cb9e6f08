//! keel-vrrp: VRRPv3 (RFC 9568) and VRRPv2 (RFC 3768, with keepalived's PASS auth) for keel-lb.
//!
//! CONTRACT with keel-lb (do not change signatures without updating `lb/`):
//! - `config::VrrpFile` is the raw `vrrp:` section of keel-lb's YAML (serde, deny_unknown_fields);
//! - `config::validate` turns it into a `config::VrrpConfig`, recording errors in keel-lb's
//!   `Diagnostics` under the field prefix it is given (e.g. `vrrp`);
//! - `Vrrp::start` runs the virtual routers on their own thread; keel-lb feeds pool health in with
//!   `set_pool_health`, hands over on SIGTERM with `handover`, then calls `shutdown`.
//!
//! Modules: `packet` (wire format), `fsm` (the protocol, no I/O, no clock), `subnet` (is a source on
//! the link), `config`, and the Linux
//! side: `net` (sockets), `driver` (the thread), `metrics`, `notify`.

pub mod config;
mod driver;
pub mod fsm;
mod metrics;
pub mod net;
mod notify;
pub mod packet;
pub mod subnet;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use config::{Family, VrrpConfig, VrrpFile};
pub use fsm::State;
pub use metrics::Metrics as VrrpMetrics;

use driver::Command;

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

/// A virtual router as seen from outside (admin endpoints, the status page, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterStatus {
    pub name: String,
    pub vrid: u8,
    pub interface: String,
    pub family: Family,
    pub state: State,
    pub priority: u8,
    /// The master as far as this router knows: itself when master, else the source of the last
    /// advert it accepted (None before any).
    pub master: Option<std::net::IpAddr>,
    pub last_transition: Option<Transition>,
    /// Filled by [`Vrrp::status`] from the metrics (the driver publishes on changes only).
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Packets dropped on this router's (interface, family), by kind; only kinds seen.
    pub drops: Vec<(String, u64)>,
}

/// A router's last state change: when, from what, to what and why (the FSM's reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub at: std::time::SystemTime,
    pub from: State,
    pub to: State,
    pub reason: String,
}

/// A running set of virtual routers.
pub struct Vrrp {
    tx: tokio::sync::mpsc::UnboundedSender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
    status: Arc<Mutex<Vec<RouterStatus>>>,
    metrics: VrrpMetrics,
}

impl Vrrp {
    /// Starts every configured virtual router on a dedicated thread. `metrics` are registered once
    /// by the caller and outlive this instance, so counters run on across a handover and resume.
    /// Fails when an interface is missing or the raw sockets cannot be opened (needs CAP_NET_RAW
    /// and CAP_NET_ADMIN).
    pub fn start(cfg: VrrpConfig, metrics: VrrpMetrics) -> Result<Vrrp, Error> {
        let sockets = open_sockets(&cfg)?;
        let announcer = net::Announcer::open()?;
        let status = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let st = status.clone();
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("keel-vrrp".into())
            .spawn(move || driver::run(cfg, sockets, announcer, m, st, rx, ready_tx));
        let thread = thread?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Vrrp {
                tx,
                thread: Some(thread),
                status,
                metrics,
            }),
            Ok(Err(e)) => Err(Error::Other(e)),
            Err(_) => Err(Error::Other("the VRRP thread did not start".into())),
        }
    }

    /// What `start` or `reload` would fail on, without changing anything: every interface exists and
    /// a raw VRRP socket opens on it. A reload runs this before it touches the running state.
    pub fn preflight(cfg: &VrrpConfig) -> Result<(), Error> {
        open_sockets(cfg).map(drop)
    }

    /// Tracks a pool's health: a pool named in a router's `track` with no healthy backend lowers
    /// that router's priority by the configured weight.
    pub fn set_pool_health(&self, pool: &str, healthy: bool) {
        let _ = self.tx.send(Command::PoolHealth {
            pool: pool.to_string(),
            healthy,
        });
    }

    /// Applies a new validated config (routers added, removed or changed). Routers whose
    /// (interface, VRID, family) stay are reconfigured in place, keeping their state.
    pub fn reload(&self, cfg: VrrpConfig) -> Result<(), Error> {
        let sockets = open_sockets(&cfg)?;
        let (reply, done) = std::sync::mpsc::channel();
        self.tx
            .send(Command::Reload {
                cfg,
                sockets,
                reply,
            })
            .map_err(|_| Error::Other("the VRRP thread has stopped".into()))?;
        done.recv_timeout(Duration::from_secs(10))
            .map_err(|_| Error::Other("the VRRP thread did not apply the reload".into()))
    }

    /// Make-before-break handover: advertise priority 0, keep the VIPs until a new master announces
    /// itself (or `timeout`), then release them. Afterwards the routers stay stopped.
    pub async fn handover(&self, timeout: Duration) -> HandoverOutcome {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        if self.tx.send(Command::Handover { timeout, reply }).is_err() {
            return HandoverOutcome::NothingToHandOver;
        }
        // The thread answers by the deadline at the latest; the margin covers a stuck netlink call.
        match tokio::time::timeout(timeout + Duration::from_secs(5), outcome).await {
            Ok(Ok(o)) => o,
            _ => HandoverOutcome::TimedOut,
        }
    }

    /// Current state of every virtual router, with its advert and drop counters.
    pub fn status(&self) -> Vec<RouterStatus> {
        self.status_handle().read()
    }

    /// A reader of [`Vrrp::status`] that does not keep the routers alive (the status page holds
    /// one; shutdown must still own the `Vrrp`).
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle {
            status: self.status.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Stops the routers (releasing any VIP still held) and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// See [`Vrrp::status_handle`].
#[derive(Clone)]
pub struct StatusHandle {
    status: Arc<Mutex<Vec<RouterStatus>>>,
    metrics: VrrpMetrics,
}

impl StatusHandle {
    pub fn read(&self) -> Vec<RouterStatus> {
        let mut all = self.status.lock().map(|g| g.clone()).unwrap_or_default();
        for r in &mut all {
            let vrid = r.vrid.to_string();
            let labels = [
                r.name.as_str(),
                vrid.as_str(),
                r.interface.as_str(),
                r.family.as_str(),
            ];
            // Every series read here exists already: routers and their links export from zero.
            let read = |v: &prometheus::IntCounterVec, l: &[&str]| {
                v.get_metric_with_label_values(l)
                    .map(|c| c.get())
                    .unwrap_or(0)
            };
            r.adverts_sent = read(&self.metrics.adverts_sent, &labels);
            r.adverts_received = read(&self.metrics.adverts_received, &labels);
            r.drops = driver::drop_kinds()
                .filter_map(|k| {
                    let n = read(
                        &self.metrics.packet_errors,
                        &[r.interface.as_str(), r.family.as_str(), k],
                    );
                    (n > 0).then(|| (k.to_string(), n))
                })
                .collect();
        }
        all
    }
}

impl Drop for Vrrp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One raw socket per (interface, family) in use.
fn open_sockets(cfg: &VrrpConfig) -> Result<Vec<net::VrrpSocket>, Error> {
    let pairs: BTreeSet<(String, Family)> = cfg
        .routers
        .iter()
        .map(|r| (r.interface.clone(), r.family))
        .collect();
    let mut out = Vec::new();
    for (iface, family) in pairs {
        let index = nix::net::if_::if_nametoindex(iface.as_str())
            .map_err(|e| Error::Other(format!("interface {iface}: {e}")))?;
        let s = net::VrrpSocket::open(&iface, index, family).map_err(|e| {
            Error::Other(format!(
                "raw VRRP socket on {iface} ({}): {e}",
                family.as_str()
            ))
        })?;
        out.push(s);
    }
    Ok(out)
}
