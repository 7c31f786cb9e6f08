//! Scale-out by BGP through FRR: keel-lb never speaks BGP. It keeps each `bgp:` VIP as a host
//! address on a dummy interface exactly while this VM should serve it ([`plan::announced`]); FRR's
//! static config redistributes that interface's connected routes, so a VIP added or removed here
//! is announced or withdrawn by FRR (zebra follows the addresses through netlink).
//!
//! Every VIP is also held by a `local` route (table local, through `lo`) while keel-lb runs: the
//! listeners keep receiving the packets that still arrive for a withdrawn VIP while the routers
//! converge (make-before-break). A route in the local table is not a connected route, so FRR never
//! sees it.

pub mod config;
pub mod frr;
pub mod frr_json;
pub mod handoff;
pub mod netlink;
pub mod plan;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use config::BgpConfig;

/// Metrics, registered once and kept across reloads. Every series that does not name a peer
/// exists from the start (at 0), so `rate()` and absence-free alerts work before FRR answers.
#[derive(Clone)]
pub struct BgpMetrics {
    pub vip_announced: IntGaugeVec,
    pub session_up: IntGaugeVec,
    pub prefixes_sent: IntGaugeVec,
    pub prefixes_received: IntGaugeVec,
    pub bfd_peer_up: IntGaugeVec,
    pub sessions_established: IntGauge,
    pub bfd_peers_up: IntGauge,
    pub frr_up: IntGauge,
    pub status_reads: IntCounterVec,
    pub handoff: handoff::HandoffMetrics,
    /// Peers with series, so a peer FRR no longer lists loses them and the others never blink.
    peers: Arc<Mutex<(BTreeSet<String>, BTreeSet<String>)>>,
}

impl BgpMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<BgpMetrics> {
        let gv =
            |name: &str, help: &str, label: &str| IntGaugeVec::new(Opts::new(name, help), &[label]);
        let m = BgpMetrics {
            vip_announced: gv(
                "keel_lb_bgp_vip_announced",
                "1 while the VIP is on the dummy interface, for FRR to announce",
                "vip",
            )?,
            session_up: gv(
                "keel_lb_bgp_session_up",
                "1 while FRR's BGP session with the peer is Established (0 too while FRR cannot be read)",
                "peer",
            )?,
            prefixes_sent: gv(
                "keel_lb_bgp_prefixes_sent",
                "Prefixes FRR sends the peer (all address families)",
                "peer",
            )?,
            prefixes_received: gv(
                "keel_lb_bgp_prefixes_received",
                "Prefixes FRR received from the peer (all address families)",
                "peer",
            )?,
            bfd_peer_up: gv(
                "keel_lb_bgp_bfd_peer_up",
                "1 while FRR's BFD session with the peer is up (0 too while FRR cannot be read)",
                "peer",
            )?,
            sessions_established: IntGauge::new(
                "keel_lb_bgp_sessions_established",
                "BGP sessions Established at the last good read (0 while FRR cannot be read)",
            )?,
            bfd_peers_up: IntGauge::new(
                "keel_lb_bgp_bfd_peers_up",
                "BFD sessions up at the last good read (0 while FRR cannot be read)",
            )?,
            frr_up: IntGauge::new(
                "keel_lb_bgp_frr_up",
                "1 when FRR's vtysh answered the last read of the BGP sessions",
            )?,
            status_reads: IntCounterVec::new(
                Opts::new(
                    "keel_lb_bgp_status_reads_total",
                    "Reads of FRR's state through vtysh, by command and result",
                ),
                &["command", "result"],
            )?,
            handoff: handoff::HandoffMetrics::register(r)?,
            peers: Arc::default(),
        };
        for (cmd, _) in [frr::BGP_SUMMARY, frr::BFD_PEERS] {
            for result in frr::RESULTS {
                m.status_reads.with_label_values(&[cmd, result]);
            }
        }
        r.register(Box::new(m.vip_announced.clone()))?;
        r.register(Box::new(m.session_up.clone()))?;
        r.register(Box::new(m.prefixes_sent.clone()))?;
        r.register(Box::new(m.prefixes_received.clone()))?;
        r.register(Box::new(m.bfd_peer_up.clone()))?;
        r.register(Box::new(m.sessions_established.clone()))?;
        r.register(Box::new(m.bfd_peers_up.clone()))?;
        r.register(Box::new(m.frr_up.clone()))?;
        r.register(Box::new(m.status_reads.clone()))?;
        Ok(m)
    }

    /// One read of the BGP sessions; None: FRR could not be read, every known session counts as
    /// down (an alert on `session_up == 0` fires, `frr_up` says why).
    pub fn show_bgp(&self, read: Option<&[frr_json::Neighbor]>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        self.frr_up.set(i64::from(read.is_some()));
        let Some(list) = read else {
            for p in &peers.0 {
                self.session_up.with_label_values(&[p]).set(0);
            }
            self.sessions_established.set(0);
            return;
        };
        let now: BTreeSet<String> = list.iter().map(|n| n.peer.clone()).collect();
        for gone in peers.0.difference(&now) {
            let _ = self.session_up.remove_label_values(&[gone]);
            let _ = self.prefixes_sent.remove_label_values(&[gone]);
            let _ = self.prefixes_received.remove_label_values(&[gone]);
        }
        for n in list {
            let l = [n.peer.as_str()];
            self.session_up
                .with_label_values(&l)
                .set(i64::from(n.established()));
            self.prefixes_sent
                .with_label_values(&l)
                .set(i64::try_from(n.prefixes_sent).unwrap_or(i64::MAX));
            self.prefixes_received
                .with_label_values(&l)
                .set(i64::try_from(n.prefixes_received).unwrap_or(i64::MAX));
        }
        self.sessions_established
            .set(list.iter().filter(|n| n.established()).count() as i64);
        peers.0 = now;
    }

    /// One read of the BFD peers, as [`BgpMetrics::show_bgp`].
    pub fn show_bfd(&self, read: Option<&[frr_json::BfdPeer]>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = read else {
            for p in &peers.1 {
                self.bfd_peer_up.with_label_values(&[p]).set(0);
            }
            self.bfd_peers_up.set(0);
            return;
        };
        let now: BTreeSet<String> = list.iter().map(|n| n.peer.clone()).collect();
        for gone in peers.1.difference(&now) {
            let _ = self.bfd_peer_up.remove_label_values(&[gone]);
        }
        for p in list {
            self.bfd_peer_up
                .with_label_values(&[&p.peer])
                .set(i64::from(p.up()));
        }
        self.bfd_peers_up
            .set(list.iter().filter(|p| p.up()).count() as i64);
        peers.1 = now;
    }
}

/// What the status API shows of the announcer: its VIPs and FRR's last reads.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub interface: String,
    /// A planned leave is under way: nothing is announced.
    pub draining: bool,
    /// Every configured VIP, whether it is announced now, and the pools it tracks.
    pub vips: Vec<(IpAddr, bool, Vec<String>)>,
    /// The announcer could not start (retried every second): nothing is announced.
    pub error: Option<String>,
}

/// Read by the status endpoints; written by the announcer and its FRR reader.
#[derive(Clone, Default)]
pub struct StatusHandle {
    pub live: Arc<Mutex<Live>>,
    pub frr: frr::FrrHandle,
    /// None without `bgp.handoff` (or before it started).
    pub handoff: Arc<Mutex<Option<handoff::HandoffView>>>,
}

impl StatusHandle {
    pub fn read(&self) -> (Live, frr::FrrView) {
        (
            self.live.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            self.frr.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        )
    }

    /// What the status shows while the announcer cannot start: the section's VIPs, none
    /// announced, and why.
    pub fn failed(cfg: &BgpConfig, error: String) -> StatusHandle {
        let h = StatusHandle::default();
        *h.live.lock().unwrap_or_else(|p| p.into_inner()) = Live {
            interface: cfg.interface.clone(),
            draining: false,
            vips: cfg
                .vips
                .iter()
                .map(|v| (v.addr, false, v.track_pools.clone()))
                .collect(),
            error: Some(error),
        };
        h
    }

    /// The start error of a handle made by [`StatusHandle::failed`].
    pub fn start_error(&self) -> Option<String> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error
            .clone()
    }

    pub fn handoff(&self) -> Option<handoff::HandoffView> {
        self.handoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The VIPs on the dummy interface (kept to the plan) and their local routes.
pub struct Announcer {
    cfg: BgpConfig,
    nl: netlink::Netlink,
    dummy: u32,
    lo: u32,
    /// A planned leave (SIGTERM, `POST /handover`) is under way: nothing is announced.
    draining: bool,
    metrics: BgpMetrics,
    status: tokio::task::JoinHandle<()>,
    handle: StatusHandle,
    /// `bgp.handoff`: forwarding of a leaving VM's connections.
    handoff: Option<handoff::Handoff>,
}

fn vip_set(cfg: &BgpConfig) -> BTreeSet<IpAddr> {
    cfg.vips.iter().map(|v| v.addr).collect()
}

impl Announcer {
    /// Creates the dummy interface, holds every VIP by a local route and removes what an earlier run left
    /// on the dummy interface; nothing is announced until the first [`Announcer::sync`].
    pub async fn start(cfg: BgpConfig, metrics: BgpMetrics) -> Result<Announcer, String> {
        let nl = netlink::Netlink::open()?;
        let dummy = nl.ensure_dummy(&cfg.interface).await?;
        let lo = nl
            .link_index("lo")
            .await?
            .ok_or_else(|| "no loopback interface".to_string())?;
        let handle = StatusHandle::default();
        // Before anything is announced: a connection accepted before its VIP's packets were
        // marked would look like another VM's (see handoff.rs).
        let handoff = match &cfg.handoff {
            Some(h) => Some(
                handoff::Handoff::start(
                    h.clone(),
                    vip_set(&cfg),
                    metrics.handoff.clone(),
                    handle.handoff.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let status = tokio::spawn(frr::status_loop(
            cfg.clone(),
            metrics.clone(),
            handle.frr.clone(),
        ));
        let mut a = Announcer {
            cfg,
            nl,
            dummy,
            lo,
            draining: false,
            metrics,
            status,
            handle,
            handoff,
        };
        a.apply(&BTreeSet::new()).await?;
        a.hold(&BTreeSet::new()).await?;
        tracing::info!(interface = %a.cfg.interface, vips = a.cfg.vips.len(), "bgp: dummy interface ready; VIPs held by local routes");
        Ok(a)
    }

    /// A reloaded `bgp:` section: VIPs gone from it lose their local routes too.
    pub async fn reconfigure(&mut self, mut cfg: BgpConfig) -> Result<(), String> {
        if cfg.interface != self.cfg.interface {
            return Err("bgp.interface changes take effect at the next restart".into());
        }
        if cfg.handoff != self.cfg.handoff {
            // The rest of the section is applied; the running handoff stays as it is.
            tracing::warn!("bgp.handoff changes take effect at the next restart");
            cfg.handoff = self.cfg.handoff.clone();
        }
        // The new VIPs' packets are marked before they are held and announced.
        if let Some(h) = &self.handoff {
            h.set_vips(vip_set(&cfg))
                .await
                .map_err(|e| format!("bgp.handoff: {e}"))?;
        }
        let before: BTreeSet<IpAddr> = self.cfg.vips.iter().map(|v| v.addr).collect();
        if (&cfg.vtysh, &cfg.vty_socket, cfg.status_interval)
            != (
                &self.cfg.vtysh,
                &self.cfg.vty_socket,
                self.cfg.status_interval,
            )
        {
            self.status.abort();
            self.status = tokio::spawn(frr::status_loop(
                cfg.clone(),
                self.metrics.clone(),
                self.handle.frr.clone(),
            ));
        }
        self.cfg = cfg;
        self.hold(&before).await
    }

    /// Holds every configured VIP (idempotent); releases `gone` ones no longer configured.
    async fn hold(&self, gone: &BTreeSet<IpAddr>) -> Result<(), String> {
        let want: BTreeSet<IpAddr> = self.cfg.vips.iter().map(|v| v.addr).collect();
        for a in &want {
            self.nl.hold(self.lo, *a).await?;
        }
        for a in gone.difference(&want) {
            let _ = self.nl.unhold(self.lo, *a).await;
        }
        Ok(())
    }

    /// Brings the dummy interface to the plan for this pool health.
    pub async fn sync(&mut self, pool_up: &HashMap<String, bool>) -> Result<(), String> {
        let want = plan::announced(&self.cfg.vips, true, self.draining, |p| {
            pool_up.get(p).copied().unwrap_or(false)
        });
        self.apply(&want).await
    }

    async fn apply(&mut self, want: &BTreeSet<IpAddr>) -> Result<(), String> {
        let have = self.nl.addresses(self.dummy).await?;
        let c = plan::changes(&have, want);
        let mut first_err = None;
        for a in &c.add {
            match self.nl.add(self.dummy, *a).await {
                Ok(()) => tracing::info!(vip = %a, "bgp: announcing"),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for a in &c.del {
            match self.nl.del(self.dummy, *a).await {
                Ok(()) => tracing::info!(vip = %a, "bgp: withdrawn"),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.metrics.vip_announced.reset();
        for v in &self.cfg.vips {
            self.metrics
                .vip_announced
                .with_label_values(&[&v.addr.to_string()])
                .set(i64::from(want.contains(&v.addr)));
        }
        // What is on the interface now, even after a failed change.
        let on = self
            .nl
            .addresses(self.dummy)
            .await
            .unwrap_or_else(|_| want.clone());
        *self.handle.live.lock().unwrap_or_else(|p| p.into_inner()) = Live {
            interface: self.cfg.interface.clone(),
            draining: self.draining,
            vips: self
                .cfg
                .vips
                .iter()
                .map(|v| (v.addr, on.contains(&v.addr), v.track_pools.clone()))
                .collect(),
            error: None,
        };
        first_err.map_or(Ok(()), Err)
    }

    /// Starts (true) or ends (false) a planned leave: while it lasts nothing is announced.
    pub async fn set_draining(
        &mut self,
        draining: bool,
        pool_up: &HashMap<String, bool>,
    ) -> Result<(), String> {
        // Leaving: the peers are told before the routes go, so they forward this VM's flows as
        // soon as the router moves them. Back: announced first, then the peers stop.
        if draining {
            self.tell_peers(true).await;
        }
        self.draining = draining;
        let r = self.sync(pool_up).await;
        if !draining {
            self.tell_peers(false).await;
        }
        r
    }

    async fn tell_peers(&mut self, leaving: bool) {
        if let Some(h) = self.handoff.as_mut() {
            if let Err(e) = h.set_leaving(leaving).await {
                tracing::error!(error = %e, "bgp handoff");
            }
        }
    }

    pub fn status_handle(&self) -> StatusHandle {
        self.handle.clone()
    }

    pub fn withdraw_wait(&self) -> std::time::Duration {
        self.cfg.withdraw_wait
    }

    /// At exit: nothing announced, nothing held. The dummy interface stays (FRR's config names it).
    pub async fn release(mut self) {
        if let Err(e) = self.apply(&BTreeSet::new()).await {
            tracing::error!(error = %e, "bgp: withdrawing at exit");
        }
        for v in &self.cfg.vips {
            let _ = self.nl.unhold(self.lo, v.addr).await;
        }
        if let Some(h) = self.handoff.take() {
            h.stop().await;
        }
        self.status.abort();
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.status.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::frr_json::{BfdPeer, Neighbor};
    use super::*;
    use prometheus::Encoder;

    fn scrape(r: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&r.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn n(peer: &str, state: &str, sent: u64) -> Neighbor {
        Neighbor {
            peer: peer.into(),
            state: state.into(),
            remote_as: None,
            uptime_ms: 0,
            prefixes_sent: sent,
            prefixes_received: 0,
        }
    }

    #[test]
    fn metrics_exist_from_the_start_and_a_failed_read_counts_sessions_down() {
        let r = Registry::new();
        let m = BgpMetrics::register(&r).unwrap();
        let t = scrape(&r);
        for want in [
            "keel_lb_bgp_frr_up 0",
            "keel_lb_bgp_sessions_established 0",
            "keel_lb_bgp_bfd_peers_up 0",
            "keel_lb_bgp_status_reads_total{command=\"bgp_summary\",result=\"ok\"} 0",
            "keel_lb_bgp_status_reads_total{command=\"bfd_peers\",result=\"timeout\"} 0",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        m.show_bgp(Some(&[n("a", "Established", 1), n("b", "Active", 0)]));
        m.show_bfd(Some(&[BfdPeer {
            peer: "a".into(),
            local: None,
            interface: None,
            status: "up".into(),
            diagnostic: "ok".into(),
            detect_multiplier: 3,
            receive_interval_ms: 100,
            transmit_interval_ms: 100,
        }]));
        let t = scrape(&r);
        for want in [
            "keel_lb_bgp_frr_up 1",
            "keel_lb_bgp_sessions_established 1",
            "keel_lb_bgp_session_up{peer=\"a\"} 1",
            "keel_lb_bgp_session_up{peer=\"b\"} 0",
            "keel_lb_bgp_prefixes_sent{peer=\"a\"} 1",
            "keel_lb_bgp_bfd_peer_up{peer=\"a\"} 1",
            "keel_lb_bgp_bfd_peers_up 1",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        // FRR unreadable: the peers keep their series, at 0.
        m.show_bgp(None);
        m.show_bfd(None);
        let t = scrape(&r);
        for want in [
            "keel_lb_bgp_frr_up 0",
            "keel_lb_bgp_sessions_established 0",
            "keel_lb_bgp_session_up{peer=\"a\"} 0",
            "keel_lb_bgp_bfd_peer_up{peer=\"a\"} 0",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        // A neighbor FRR no longer lists loses its series.
        m.show_bgp(Some(&[n("a", "Established", 1)]));
        let t = scrape(&r);
        assert!(!t.contains("peer=\"b\""), "{t}");
        assert!(t.contains("keel_lb_bgp_session_up{peer=\"a\"} 1"), "{t}");
    }
}
