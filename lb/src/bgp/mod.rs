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
pub mod netlink;
pub mod plan;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

use config::BgpConfig;

/// Gauges, registered once and kept across reloads.
#[derive(Clone)]
pub struct BgpMetrics {
    pub vip_announced: IntGaugeVec,
    pub session_up: IntGaugeVec,
    pub prefixes_sent: IntGaugeVec,
    pub frr_up: IntGauge,
}

impl BgpMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<BgpMetrics> {
        let m = BgpMetrics {
            vip_announced: IntGaugeVec::new(
                Opts::new(
                    "keel_lb_bgp_vip_announced",
                    "1 while the VIP is on the dummy interface, for FRR to announce",
                ),
                &["vip"],
            )?,
            session_up: IntGaugeVec::new(
                Opts::new(
                    "keel_lb_bgp_session_up",
                    "1 while FRR's BGP session with the peer is Established",
                ),
                &["peer"],
            )?,
            prefixes_sent: IntGaugeVec::new(
                Opts::new(
                    "keel_lb_bgp_prefixes_sent",
                    "Prefixes FRR sends the peer (all address families)",
                ),
                &["peer"],
            )?,
            frr_up: IntGauge::new(
                "keel_lb_bgp_frr_up",
                "1 when FRR's vtysh answered the last status read",
            )?,
        };
        r.register(Box::new(m.vip_announced.clone()))?;
        r.register(Box::new(m.session_up.clone()))?;
        r.register(Box::new(m.prefixes_sent.clone()))?;
        r.register(Box::new(m.frr_up.clone()))?;
        Ok(m)
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
        let status = tokio::spawn(status_loop(cfg.clone(), metrics.clone()));
        let mut a = Announcer {
            cfg,
            nl,
            dummy,
            lo,
            draining: false,
            metrics,
            status,
        };
        a.apply(&BTreeSet::new()).await?;
        a.hold(&BTreeSet::new()).await?;
        tracing::info!(interface = %a.cfg.interface, vips = a.cfg.vips.len(), "bgp: dummy interface ready; VIPs held by local routes");
        Ok(a)
    }

    /// A reloaded `bgp:` section: VIPs gone from it lose their local routes too.
    pub async fn reconfigure(&mut self, cfg: BgpConfig) -> Result<(), String> {
        if cfg.interface != self.cfg.interface {
            return Err("bgp.interface changes take effect at the next restart".into());
        }
        let before: BTreeSet<IpAddr> = self.cfg.vips.iter().map(|v| v.addr).collect();
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
        first_err.map_or(Ok(()), Err)
    }

    /// Starts (true) or ends (false) a planned leave: while it lasts nothing is announced.
    pub async fn set_draining(
        &mut self,
        draining: bool,
        pool_up: &HashMap<String, bool>,
    ) -> Result<(), String> {
        self.draining = draining;
        self.sync(pool_up).await
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
        self.status.abort();
    }
}

/// Reads FRR's session state every `status_interval` into the metrics.
async fn status_loop(cfg: BgpConfig, m: BgpMetrics) {
    let mut tick = tokio::time::interval(cfg.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        let read = match frr::vtysh(&cfg, "show bgp summary json").await {
            Ok(out) => frr::parse_summary(&out),
            Err(e) => Err(e),
        };
        match read {
            Ok(peers) => {
                warned = false;
                m.frr_up.set(1);
                m.session_up.reset();
                m.prefixes_sent.reset();
                for (addr, p) in peers {
                    m.session_up
                        .with_label_values(&[&addr])
                        .set(i64::from(p.established));
                    m.prefixes_sent
                        .with_label_values(&[&addr])
                        .set(p.prefixes_sent as i64);
                }
            }
            Err(e) => {
                m.frr_up.set(0);
                m.session_up.reset();
                m.prefixes_sent.reset();
                if !warned {
                    tracing::warn!(error = %e, "bgp: cannot read FRR's state");
                    warned = true;
                }
            }
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.status.abort();
    }
}
