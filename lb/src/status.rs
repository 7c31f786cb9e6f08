//! The status snapshot: what `GET /v1/status` (JSON), `/v1/status.csv`, the status page and
//! `keel-lb status` show. Pure data collected from the running state: the control loop publishes
//! what runs (frontend versions, pool versions, the VRRP status reader) into a [`Source`] after
//! every change; a request reads the atomics behind them. Reading never waits on the control loop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{AdminState, Protocol};
use crate::events::{unix, Event, Events};
use crate::frontend::Frontend;
use crate::pool::Pool;

/// What the control loop publishes: the running versions, not copies of their counters.
#[derive(Default, Clone)]
pub struct View {
    pub config_path: PathBuf,
    /// Config files applied successfully (1 after the start).
    pub generation: u64,
    pub last_reload: Option<ReloadResult>,
    pub frontends: Vec<Arc<Frontend>>,
    pub pools: Vec<Arc<Pool>>,
    /// Backends whose state or weight an operator changed at run time: (pool, address).
    pub overridden: std::collections::HashSet<(String, SocketAddr)>,
    pub vrrp: Option<keel_vrrp::StatusHandle>,
    pub vrrp_cfg: Option<keel_vrrp::VrrpConfig>,
    pub vrrp_configured: usize,
    pub state_file: Option<PathBuf>,
    pub bgp: Option<crate::bgp::StatusHandle>,
    pub nat: Option<crate::nat::NatStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadResult {
    pub at: f64,
    pub ok: bool,
    pub error: Option<String>,
}

/// Shared between the control loop (writes) and the admin listeners (read).
pub struct Source {
    view: Mutex<View>,
    pub events: Arc<Events>,
    started: SystemTime,
    /// Recent (time, accepted total) per frontend, sampled by the control loop once a second.
    samples: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

/// Samples kept per frontend: the rate is over the last ten seconds.
const RATE_SAMPLES: usize = 11;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Source {
    pub fn new(events: Arc<Events>) -> Source {
        Source {
            view: Mutex::new(View::default()),
            events,
            started: SystemTime::now(),
            samples: Mutex::new(HashMap::new()),
        }
    }

    pub fn publish(&self, f: impl FnOnce(&mut View)) {
        f(&mut locked(&self.view));
    }

    pub fn view(&self) -> View {
        locked(&self.view).clone()
    }

    /// Once a second from the control loop: one sample of every frontend's accepted total.
    pub fn sample_rates(&self) {
        let fronts = locked(&self.view).frontends.clone();
        let now = Instant::now();
        let mut s = locked(&self.samples);
        s.retain(|name, _| fronts.iter().any(|f| &f.cfg.name == name));
        for f in &fronts {
            let q = s.entry(f.cfg.name.clone()).or_default();
            if q.len() >= RATE_SAMPLES {
                q.pop_front();
            }
            q.push_back((now, f.metrics.total.get()));
        }
    }

    /// Connections (UDP: sessions) per second over the last samples.
    fn rate(&self, name: &str) -> f64 {
        let s = locked(&self.samples);
        let Some(q) = s.get(name) else { return 0.0 };
        match (q.front(), q.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                b.1.saturating_sub(a.1) as f64 / (b.0 - a.0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The snapshot. Field names are the JSON contract (docs/lb-status.md): add, never rename.

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub version: String,
    /// Unix seconds when the snapshot was taken; every other time is relative to the same clock.
    pub now: f64,
    pub started_at: f64,
    pub config: ConfigStatus,
    pub frontends: Vec<FrontendStatus>,
    pub pools: Vec<PoolStatus>,
    pub vrrp: Option<VrrpStatus>,
    /// `GET /services` as is; absent without a `services:` section.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub services: Option<serde_json::Value>,
    /// Absent without a `bgp:` section (or before its announcer started).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bgp: Option<BgpStatus>,
    /// Absent without `mode: nat` frontends.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nat: Option<crate::nat::NatStatus>,
    /// Newest first, at most 100.
    pub events: Vec<EventStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    pub path: String,
    pub generation: u64,
    pub last_reload: Option<ReloadResult>,
    pub state_file: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendStatus {
    pub name: String,
    pub listen: String,
    pub protocol: String,
    pub pool: String,
    pub current: i64,
    pub limit: usize,
    pub total: u64,
    /// Per second over the last ten seconds.
    pub rate: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub name: String,
    pub balance: String,
    /// At least one backend can take a new connection.
    pub up: bool,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    pub address: String,
    /// UP, DOWN, DRAIN or MAINT (maintenance wins, then down, then drain).
    pub state: String,
    /// Health checks' verdict.
    pub healthy: bool,
    /// The operator state in force: ready, drain or maint.
    pub admin: String,
    /// Changed at run time (`keel-lb backend`), not by the file.
    pub overridden: bool,
    pub weight: u32,
    pub last_check: Option<CheckStatus>,
    pub checks: u64,
    pub failed_checks: u64,
    pub downs: u64,
    pub downtime_seconds: f64,
    pub last_change: Option<f64>,
    pub current: u64,
    /// None for Services' backends (no per-backend series).
    pub total: Option<u64>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub connect_errors: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    pub at: f64,
    pub ok: bool,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VrrpStatus {
    pub configured: usize,
    /// Routers running (backup or master).
    pub running: usize,
    pub routers: Vec<RouterStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterStatus {
    pub name: String,
    pub vrid: u8,
    pub interface: String,
    pub family: String,
    pub version: u8,
    /// INIT, BACKUP, MASTER or FAULT.
    pub state: String,
    pub priority: u8,
    pub master: Option<String>,
    pub vips: Vec<String>,
    pub last_transition: Option<TransitionStatus>,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Dropped packets on this router's interface and family, by kind (kinds seen only).
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransitionStatus {
    pub at: f64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpStatus {
    pub interface: String,
    /// A planned leave is under way: nothing is announced.
    pub draining: bool,
    pub vips: Vec<BgpVipStatus>,
    /// FRR's BGP sessions as last read through vtysh.
    pub frr: FrrReadStatus,
    pub neighbors: Vec<BgpNeighborStatus>,
    /// FRR's BFD sessions as last read through vtysh.
    pub bfd: FrrReadStatus,
    pub bfd_peers: Vec<BfdPeerStatus>,
    /// `bgp.handoff`; absent when not configured.
    pub handoff: Option<HandoffStatus>,
    /// keel-lb could not start announcing (e.g. nft missing, no CAP_NET_ADMIN); retried every
    /// second, nothing is announced meanwhile.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffStatus {
    /// UDP port of the leave notices.
    pub port: u16,
    pub peers: Vec<String>,
    /// Peers heard leaving, whose notices still hold.
    pub leaving: Vec<String>,
    /// Where packets of connections this VM does not have go now (empty: nowhere, the kernel
    /// resets them).
    pub forwarding_to: Vec<String>,
    /// The last nftables change failed; the rules in place are the ones before it.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpVipStatus {
    pub address: String,
    /// On the dummy interface, for FRR to announce.
    pub announced: bool,
    pub track_pools: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrrReadStatus {
    /// ok, error (the values are then the last good read's) or pending (not read yet).
    pub state: String,
    pub error: Option<String>,
    pub read_at: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpNeighborStatus {
    pub peer: String,
    /// FRR's state: Established, Active, Connect, Idle, ...
    pub state: String,
    pub remote_as: Option<u64>,
    pub uptime_seconds: f64,
    pub prefixes_sent: u64,
    pub prefixes_received: u64,
    /// The BFD session with the same peer: up, down, init, shutdown; None without one.
    pub bfd: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BfdPeerStatus {
    pub peer: String,
    pub local: Option<String>,
    pub interface: Option<String>,
    pub status: String,
    pub diagnostic: String,
    pub detect_multiplier: u64,
    pub receive_interval_ms: u64,
    pub transmit_interval_ms: u64,
}

fn frr_read<T>(r: &crate::bgp::frr::Read<T>) -> FrrReadStatus {
    FrrReadStatus {
        state: match (&r.at, &r.error) {
            (None, _) => "pending",
            (Some(_), None) => "ok",
            (Some(_), Some(_)) => "error",
        }
        .into(),
        error: r.error.clone(),
        read_at: r.at.map(unix),
    }
}

/// The announcer's VIPs and FRR's last reads, merged by peer address.
pub fn bgp_status(h: &crate::bgp::StatusHandle) -> BgpStatus {
    let (live, frr) = h.read();
    let strings = |v: Vec<std::net::IpAddr>| v.iter().map(|a| a.to_string()).collect();
    BgpStatus {
        error: live.error.clone(),
        handoff: h.handoff().map(|v| HandoffStatus {
            port: v.port,
            peers: strings(v.peers),
            leaving: strings(v.leaving),
            forwarding_to: strings(v.forwarding_to),
            error: v.error,
        }),
        interface: live.interface,
        draining: live.draining,
        vips: live
            .vips
            .into_iter()
            .map(|(a, announced, track_pools)| BgpVipStatus {
                address: a.to_string(),
                announced,
                track_pools,
            })
            .collect(),
        frr: frr_read(&frr.bgp),
        neighbors: frr
            .bgp
            .value
            .iter()
            .map(|n| BgpNeighborStatus {
                peer: n.peer.clone(),
                state: n.state.clone(),
                remote_as: n.remote_as,
                uptime_seconds: n.uptime_ms as f64 / 1000.0,
                prefixes_sent: n.prefixes_sent,
                prefixes_received: n.prefixes_received,
                bfd: frr
                    .bfd
                    .value
                    .iter()
                    .find(|p| p.peer == n.peer)
                    .map(|p| p.status.clone()),
            })
            .collect(),
        bfd: frr_read(&frr.bfd),
        bfd_peers: frr
            .bfd
            .value
            .iter()
            .map(|p| BfdPeerStatus {
                peer: p.peer.clone(),
                local: p.local.clone(),
                interface: p.interface.clone(),
                status: p.status.clone(),
                diagnostic: p.diagnostic.clone(),
                detect_multiplier: p.detect_multiplier,
                receive_interval_ms: p.receive_interval_ms,
                transmit_interval_ms: p.transmit_interval_ms,
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventStatus {
    pub at: f64,
    pub kind: String,
    pub subject: String,
    pub message: String,
}

pub fn admin_word(s: AdminState) -> &'static str {
    match s {
        AdminState::Active => "ready",
        AdminState::Drain => "drain",
        AdminState::Disabled => "maint",
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Reads the running state into a snapshot. Cost: a few atomics and one mutex per backend.
pub fn collect(src: &Source, services: Option<serde_json::Value>) -> Snapshot {
    let view = src.view();
    let now_mono = Instant::now();
    let mut frontends: Vec<FrontendStatus> = view
        .frontends
        .iter()
        .map(|f| FrontendStatus {
            name: f.cfg.name.clone(),
            listen: f.cfg.listen.to_string(),
            protocol: proto(f.cfg.protocol).into(),
            pool: f.cfg.pool.clone(),
            current: f.metrics.current.get(),
            limit: f.cfg.max_connections,
            total: f.metrics.total.get(),
            rate: src.rate(&f.cfg.name),
            bytes_in: f.metrics.bytes_in.get(),
            bytes_out: f.metrics.bytes_out.get(),
        })
        .collect();
    frontends.sort_by(|a, b| a.name.cmp(&b.name));
    let mut pools: Vec<PoolStatus> = view
        .pools
        .iter()
        .map(|p| PoolStatus {
            name: p.name().to_string(),
            balance: match p.cfg.balance {
                crate::config::Balance::RoundRobin => "round_robin",
                crate::config::Balance::LeastConn => "least_conn",
                crate::config::Balance::Maglev => "maglev",
            }
            .into(),
            up: p.has_available(),
            backends: p
                .backends
                .iter()
                .map(|b| {
                    let log = b.check_log();
                    let admin = b.state();
                    let healthy = b.healthy();
                    let state = match (admin, healthy) {
                        (AdminState::Disabled, _) => "MAINT",
                        (_, false) => "DOWN",
                        (AdminState::Drain, true) => "DRAIN",
                        (AdminState::Active, true) => "UP",
                    };
                    let m = b.metrics.as_ref();
                    BackendStatus {
                        address: b.addr.to_string(),
                        state: state.into(),
                        healthy,
                        admin: admin_word(admin).into(),
                        overridden: view.overridden.contains(&(p.name().to_string(), b.addr)),
                        weight: b.weight(),
                        last_check: log.last.as_ref().map(|l| CheckStatus {
                            at: unix(l.at),
                            ok: l.ok,
                            reason: l.reason.clone(),
                        }),
                        checks: log.checks,
                        failed_checks: log.failed_checks,
                        downs: log.downs,
                        downtime_seconds: log.downtime(now_mono).as_secs_f64(),
                        last_change: log.last_change.map(unix),
                        current: b.active() as u64,
                        total: m.map(|m| m.total.get()),
                        bytes_in: m.map(|m| m.bytes_in.get()),
                        bytes_out: m.map(|m| m.bytes_out.get()),
                        connect_errors: m.map(|m| m.connect_errors.get()),
                    }
                })
                .collect(),
        })
        .collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let vrrp = (view.vrrp_configured > 0 || view.vrrp.is_some()).then(|| {
        let live = view.vrrp.as_ref().map(|h| h.read()).unwrap_or_default();
        let routers: Vec<RouterStatus> = view
            .vrrp_cfg
            .iter()
            .flat_map(|c| c.routers.iter())
            .map(|rc| {
                let r = live.iter().find(|r| {
                    r.name == rc.name
                        && r.vrid == rc.vrid
                        && r.interface == rc.interface
                        && r.family == rc.family
                });
                RouterStatus {
                    name: rc.name.clone(),
                    vrid: rc.vrid,
                    interface: rc.interface.clone(),
                    family: rc.family.as_str().into(),
                    version: rc.version.number(),
                    state: r
                        .map_or(keel_vrrp::State::Initialize, |r| r.state)
                        .as_str()
                        .into(),
                    priority: r.map_or(rc.priority, |r| r.priority),
                    master: r.and_then(|r| r.master).map(|a| a.to_string()),
                    vips: rc.vips.iter().map(|v| v.to_string()).collect(),
                    last_transition: r.and_then(|r| r.last_transition.as_ref()).map(|t| {
                        TransitionStatus {
                            at: unix(t.at),
                            from: t.from.as_str().into(),
                            to: t.to.as_str().into(),
                            reason: t.reason.clone(),
                        }
                    }),
                    adverts_sent: r.map_or(0, |r| r.adverts_sent),
                    adverts_received: r.map_or(0, |r| r.adverts_received),
                    drops: r
                        .map(|r| r.drops.iter().cloned().collect())
                        .unwrap_or_default(),
                }
            })
            .collect();
        VrrpStatus {
            configured: view.vrrp_configured,
            running: live
                .iter()
                .filter(|r| r.state != keel_vrrp::State::Initialize)
                .count(),
            routers,
        }
    });
    Snapshot {
        version: env!("CARGO_PKG_VERSION").into(),
        now: unix(SystemTime::now()),
        started_at: unix(src.started),
        config: ConfigStatus {
            path: view.config_path.display().to_string(),
            generation: view.generation,
            last_reload: view.last_reload.clone(),
            state_file: view.state_file.as_ref().map(|p| p.display().to_string()),
        },
        frontends,
        pools,
        vrrp,
        services,
        bgp: view.bgp.as_ref().map(bgp_status),
        nat: view.nat.clone(),
        events: src.events.recent().into_iter().map(event).collect(),
    }
}

fn event(e: Event) -> EventStatus {
    EventStatus {
        at: e.at,
        kind: serde_json::to_value(&e.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        subject: e.subject,
        message: e.message,
    }
}

// ---------------------------------------------------------------------------------------------
// CSV: one row per backend, HAProxy-like columns.

pub const CSV_HEADER: &str = "pool,backend,status,admin,weight,healthy,last_check,last_check_reason,check_age_s,checks,failed_checks,downs,downtime_s,last_change_age_s,current,total,bytes_in,bytes_out,connect_errors";

/// A field quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv(s: &Snapshot) -> String {
    let mut out = String::with_capacity(64 + s.pools.len() * 160);
    out.push_str(CSV_HEADER);
    out.push('\n');
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    for p in &s.pools {
        for b in &p.backends {
            let row = [
                csv_field(&p.name),
                csv_field(&b.address),
                b.state.clone(),
                b.admin.clone(),
                b.weight.to_string(),
                u8::from(b.healthy).to_string(),
                b.last_check
                    .as_ref()
                    .map(|c| if c.ok { "ok" } else { "fail" }.to_string())
                    .unwrap_or_default(),
                csv_field(b.last_check.as_ref().map_or("", |c| c.reason.as_str())),
                b.last_check
                    .as_ref()
                    .map(|c| format!("{:.0}", (s.now - c.at).max(0.0)))
                    .unwrap_or_default(),
                b.checks.to_string(),
                b.failed_checks.to_string(),
                b.downs.to_string(),
                format!("{:.0}", b.downtime_seconds),
                b.last_change
                    .map(|t| format!("{:.0}", (s.now - t).max(0.0)))
                    .unwrap_or_default(),
                b.current.to_string(),
                opt(b.total),
                opt(b.bytes_in),
                opt(b.bytes_out),
                opt(b.connect_errors),
            ];
            out.push_str(&row.join(","));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_would_break_a_row() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
