//! The thread that runs the virtual routers: a current-thread tokio runtime of its own (optionally
//! SCHED_FIFO), so a saturated data plane never delays an advertisement. It owns the sockets, the
//! netlink handle and the `fsm::Router`s; it feeds them packets, timer expiries, link and pool
//! health, and carries out their actions.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Family, RouterConfig, Vip, VrrpConfig};
use crate::fsm::{Action, HandoverState, Router, State};
use crate::metrics::Metrics;
use crate::net::{self, Announcer, LinkInfo, Received, RxError, VrrpSocket};
use crate::notify::{Job, Notifier};
use crate::packet::{Advert, AdvertV2, AnyAdvert, Version, MCAST_V4, MCAST_V6};
use crate::subnet::Subnet;
use crate::{HandoverOutcome, RouterStatus};

/// How often links (carrier, addresses) are re-read: bounds the time to notice a cut link.
const LINK_POLL: Duration = Duration::from_millis(200);

pub(crate) enum Command {
    PoolHealth {
        pool: String,
        healthy: bool,
    },
    Reload {
        cfg: VrrpConfig,
        sockets: Vec<VrrpSocket>,
        reply: std::sync::mpsc::Sender<()>,
    },
    Handover {
        timeout: Duration,
        reply: oneshot::Sender<HandoverOutcome>,
    },
    Shutdown,
}

type SockKey = (String, Family);

struct Slot {
    cfg: RouterConfig,
    /// Created once the interface has the address adverts are sent from.
    router: Option<Router>,
    labels: [String; 4],
    /// Stopped by a handover or shutdown: never started again.
    done: bool,
    /// Source of the last advert accepted (the master, while this router is backup).
    heard: Option<IpAddr>,
    last_transition: Option<crate::Transition>,
}

impl Slot {
    fn new(cfg: RouterConfig) -> Slot {
        let labels = [
            cfg.name.clone(),
            cfg.vrid.to_string(),
            cfg.interface.clone(),
            cfg.family.as_str().to_string(),
        ];
        Slot {
            cfg,
            router: None,
            labels,
            done: false,
            heard: None,
            last_transition: None,
        }
    }

    fn labels(&self) -> [&str; 4] {
        [
            &self.labels[0],
            &self.labels[1],
            &self.labels[2],
            &self.labels[3],
        ]
    }
}

pub(crate) struct Driver {
    slots: Vec<Slot>,
    sockets: BTreeMap<SockKey, Arc<AsyncFd<VrrpSocket>>>,
    announcer: Announcer,
    nl: rtnetlink::Handle,
    links: BTreeMap<String, LinkInfo>,
    metrics: Metrics,
    notifier: Notifier,
    failed_pools: BTreeMap<String, bool>,
    handover: Option<oneshot::Sender<HandoverOutcome>>,
    status: Arc<Mutex<Vec<RouterStatus>>>,
    pkt_tx: mpsc::Sender<(SockKey, Received)>,
}

/// Body of the VRRP thread.
pub(crate) fn run(
    cfg: VrrpConfig,
    sockets: Vec<VrrpSocket>,
    announcer: Announcer,
    metrics: Metrics,
    status: Arc<Mutex<Vec<RouterStatus>>>,
    cmds: mpsc::UnboundedReceiver<Command>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    if cfg.realtime {
        set_realtime();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let (conn, nl, _) = match rtnetlink::new_connection() {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(format!("netlink: {e}")));
                return;
            }
        };
        tokio::spawn(conn);
        let notifier = match Notifier::spawn() {
            Ok(n) => n,
            Err(e) => {
                let _ = ready.send(Err(format!("notify thread: {e}")));
                return;
            }
        };
        // Bounded: a flood faster than the routers can judge packets is dropped and counted at the
        // socket, never queued without limit.
        let (pkt_tx, pkt_rx) = mpsc::channel(RECEIVE_QUEUE);
        let mut d = Driver {
            slots: Vec::new(),
            sockets: BTreeMap::new(),
            announcer,
            nl,
            links: BTreeMap::new(),
            metrics,
            notifier,
            failed_pools: BTreeMap::new(),
            handover: None,
            status,
            pkt_tx,
        };
        if let Err(e) = d.add_sockets(sockets) {
            let _ = ready.send(Err(e));
            return;
        }
        d.links = net::links().unwrap_or_default();
        for rc in cfg.routers {
            d.add_slot(rc).await;
        }
        d.publish_status();
        let _ = ready.send(Ok(()));
        d.event_loop(cmds, pkt_rx).await;
    });
}

impl Driver {
    fn add_sockets(&mut self, sockets: Vec<VrrpSocket>) -> Result<(), String> {
        for s in sockets {
            let key = (s.interface.clone(), s.family);
            if self.sockets.contains_key(&key) {
                continue;
            }
            // SAFETY: VrrpSocket owns its socket and always returns that same open fd; the
            // AsyncFd owns the VrrpSocket until it is dropped.
            let fd = unsafe { AsyncFd::register(s) }
                .map_err(|e| format!("socket: {}", e.into_parts().1))?;
            let fd = Arc::new(fd);
            self.sockets.insert(key.clone(), fd.clone());
            // Every kind starts at zero, so rate() and alerts work before the first drop.
            for kind in PACKET_ERROR_KINDS
                .iter()
                .copied()
                .chain(crate::fsm::Ignored::ALL.iter().map(|i| i.kind()))
            {
                self.metrics.packet_errors.with_label_values(&[
                    key.0.as_str(),
                    key.1.as_str(),
                    kind,
                ]);
            }
            let dropped = self.metrics.packet_errors.with_label_values(&[
                key.0.as_str(),
                key.1.as_str(),
                "queue_full",
            ]);
            tokio::spawn(read_loop(key, fd, self.pkt_tx.clone(), dropped));
        }
        Ok(())
    }

    /// A new virtual router: VIPs left by an earlier crash are removed first (kube-vip #996); the
    /// router starts once its interface has a source address.
    async fn add_slot(&mut self, cfg: RouterConfig) {
        let slot = Slot::new(cfg);
        let ifindex = self.links.get(&slot.cfg.interface).map(|l| l.index);
        if let Some(index) = ifindex {
            for v in &slot.cfg.owned_vips() {
                if del_address(&self.nl, index, v).await {
                    tracing::warn!(router = %slot.cfg.name, vrid = slot.cfg.vrid, vip = %v, "removed a VIP left over from an earlier run");
                }
            }
        }
        self.metrics
            .state
            .with_label_values(&slot.labels())
            .set(State::Initialize.code());
        self.metrics
            .priority
            .with_label_values(&slot.labels())
            .set(i64::from(slot.cfg.priority));
        self.slots.push(slot);
        let i = self.slots.len() - 1;
        self.try_start(i, Instant::now()).await;
    }

    async fn try_start(&mut self, i: usize, now: Instant) {
        let slot = &self.slots[i];
        if slot.router.is_some() || slot.done {
            return;
        }
        let Some(link) = self.links.get(&slot.cfg.interface) else {
            return;
        };
        let all_vips = self.all_vips();
        let primary = slot.cfg.unicast_src.or_else(|| match slot.cfg.family {
            Family::V4 => link
                .ipv4
                .iter()
                .map(|a| IpAddr::V4(*a))
                .find(|a| !all_vips.contains(a)),
            Family::V6 => link.ipv6_ll.first().map(|a| IpAddr::V6(*a)),
        });
        let Some(primary) = primary else {
            return;
        };
        let mut router = Router::new(slot.cfg.clone(), primary);
        router.set_subnets(link_subnets(link, slot.cfg.family, &all_vips));
        for (pool, healthy) in &self.failed_pools {
            router.set_pool_health(now, pool, *healthy);
        }
        for t in &slot.cfg.track_interfaces {
            let up = self.links.get(&t.name).is_some_and(|l| l.running);
            router.set_interface_up(now, &t.name, up);
        }
        router.set_link(now, link.running);
        tracing::info!(router = %slot.cfg.name, vrid = slot.cfg.vrid, interface = %slot.cfg.interface, source = %primary, priority = router.priority(), "vrrp router starting");
        let acts = router.start(now);
        self.slots[i].router = Some(router);
        self.apply(i, acts).await;
    }

    /// Every VIP of every router: never a source address, never a subnet of the link.
    fn all_vips(&self) -> Vec<IpAddr> {
        self.slots
            .iter()
            .flat_map(|s| s.cfg.owned_vips().into_iter().map(|v| v.addr))
            .collect()
    }

    async fn event_loop(
        &mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut pkts: mpsc::Receiver<(SockKey, Received)>,
    ) {
        let mut next_link_poll = Instant::now() + LINK_POLL;
        loop {
            let next_timer = self
                .slots
                .iter()
                .filter_map(|s| s.router.as_ref().and_then(Router::poll_timeout))
                .min();
            let wake = next_timer.map_or(next_link_poll, |t| t.min(next_link_poll));
            tokio::select! {
                biased;
                cmd = cmds.recv() => match cmd {
                    Some(Command::Shutdown) | None => {
                        self.shutdown().await;
                        return;
                    }
                    Some(c) => self.command(c).await,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let now = Instant::now();
                    for i in 0..self.slots.len() {
                        let due = self.slots[i].router.as_ref().and_then(Router::poll_timeout).is_some_and(|t| t <= now);
                        if due {
                            let acts = self.slots[i].router.as_mut().map(|r| r.handle_timeout(now)).unwrap_or_default();
                            self.apply(i, acts).await;
                        }
                    }
                    if now >= next_link_poll {
                        self.poll_links(now).await;
                        next_link_poll = now + LINK_POLL;
                    }
                },
                Some((key, rx)) = pkts.recv() => self.packet(key, rx).await,
            }
            self.check_handover();
        }
    }

    async fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::PoolHealth { pool, healthy } => {
                self.failed_pools.insert(pool.clone(), healthy);
                for i in 0..self.slots.len() {
                    let acts = match self.slots[i].router.as_mut() {
                        Some(r) => r.set_pool_health(now, &pool, healthy),
                        None => continue,
                    };
                    self.apply(i, acts).await;
                }
            }
            Command::Reload {
                cfg,
                sockets,
                reply,
            } => {
                if let Err(e) = self.add_sockets(sockets) {
                    tracing::warn!(error = %e, "vrrp reload: socket");
                }
                self.reload(now, cfg).await;
                let _ = reply.send(());
            }
            Command::Handover { timeout, reply } => {
                let deadline = now + timeout;
                for i in 0..self.slots.len() {
                    let acts = match self.slots[i].router.as_mut() {
                        Some(r) => r.begin_handover(now, deadline),
                        None => Vec::new(),
                    };
                    self.slots[i].done = true;
                    self.apply(i, acts).await;
                }
                self.handover = Some(reply);
            }
            Command::Shutdown => {}
        }
    }

    async fn reload(&mut self, now: Instant, cfg: VrrpConfig) {
        let mut keep = vec![false; self.slots.len()];
        let mut fresh = Vec::new();
        for rc in cfg.routers {
            match self.slots.iter().position(|s| s.cfg.key() == rc.key()) {
                Some(i) => {
                    keep[i] = true;
                    let acts = match self.slots[i].router.as_mut() {
                        Some(r) => r.reconfigure(now, rc.clone()),
                        None => Vec::new(),
                    };
                    if self.slots[i].cfg.name != rc.name {
                        // Metrics are labelled by name: keep the old series honest.
                        self.metrics
                            .state
                            .with_label_values(&self.slots[i].labels())
                            .set(State::Initialize.code());
                    }
                    self.slots[i].labels = Slot::new(rc.clone()).labels;
                    self.slots[i].cfg = rc;
                    self.apply(i, acts).await;
                    self.publish_metrics(i);
                }
                None => fresh.push(rc),
            }
        }
        for i in (0..self.slots.len()).rev() {
            if !keep[i] {
                let acts = match self.slots[i].router.as_mut() {
                    Some(r) => r.shutdown(now),
                    None => Vec::new(),
                };
                self.apply(i, acts).await;
                tracing::info!(router = %self.slots[i].cfg.name, vrid = self.slots[i].cfg.vrid, "vrrp router removed by reload");
                self.metrics.remove_router(&self.slots[i].labels());
                self.slots.remove(i);
            }
        }
        for rc in fresh {
            self.add_slot(rc).await;
        }
        self.publish_status();
    }

    async fn poll_links(&mut self, now: Instant) {
        match net::links() {
            Ok(l) => self.links = l,
            Err(e) => {
                tracing::warn!(error = %e, "vrrp: cannot read interfaces");
                return;
            }
        }
        let all_vips = self.all_vips();
        for i in 0..self.slots.len() {
            if self.slots[i].router.is_none() {
                self.try_start(i, now).await;
                continue;
            }
            let cfg = self.slots[i].cfg.clone();
            let link = self.links.get(&cfg.interface);
            let up = link.is_some_and(|l| l.running);
            let subnets = link.map(|l| link_subnets(l, cfg.family, &all_vips));
            let mut acts = Vec::new();
            if let Some(r) = self.slots[i].router.as_mut() {
                r.set_subnets(subnets.unwrap_or_default());
                acts.extend(r.set_link(now, up));
                for t in &cfg.track_interfaces {
                    let up = self.links.get(&t.name).is_some_and(|l| l.running);
                    acts.extend(r.set_interface_up(now, &t.name, up));
                }
            }
            self.apply(i, acts).await;
        }
    }

    async fn packet(&mut self, key: SockKey, rx: Received) {
        let (iface, family) = (&key.0, key.1);
        let err = |d: &Driver, kind: &str| {
            d.metrics
                .packet_errors
                .with_label_values(&[iface, family.as_str(), kind])
                .inc();
        };
        // The version is judged before the layout: a v2 advert is laid out otherwise than a v3
        // one, so a packet of a version no router here speaks would otherwise be `truncated` or
        // `address_count` by the rules of a version it never claimed.
        let spoken = |v: u8| {
            self.slots.iter().any(|s| {
                s.cfg.interface == *iface && s.cfg.family == family && s.cfg.version.number() == v
            })
        };
        if let (Some(v), false) = (rx.version, matches!(rx.advert, Err(RxError::BadTtl(_)))) {
            if !spoken(v) {
                tracing::debug!(interface = %iface, src = %rx.src, version = v, "vrrp packet of a version not spoken here dropped");
                err(self, "bad_version");
                return;
            }
        }
        let any = match rx.advert {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(interface = %iface, src = %rx.src, kind = e.kind(), "vrrp packet dropped");
                err(self, e.kind());
                return;
            }
        };
        let vrid = any.vrid();
        let Some(i) = self.slots.iter().position(|s| {
            s.cfg.interface == *iface && s.cfg.family == family && s.cfg.vrid == vrid
        }) else {
            err(self, "wrong_vrid");
            return;
        };
        // A v2 and a v3 router never share a VRID (keepalived drops the other version too).
        if any.version() != self.slots[i].cfg.version {
            tracing::debug!(router = %self.slots[i].cfg.name, vrid, src = %rx.src, version = any.version().number(), "vrrp advert of the other version dropped");
            err(self, "bad_version");
            return;
        }
        let adv = match any {
            AnyAdvert::V3(a) => a,
            AnyAdvert::V2(a) => {
                if let Err(e) = a.check_auth(&self.slots[i].cfg.auth) {
                    tracing::debug!(router = %self.slots[i].cfg.name, vrid, src = %rx.src, error = %e, "vrrp advert failed authentication");
                    err(self, "auth");
                    return;
                }
                a.to_advert()
            }
        };
        if !self.slots[i].cfg.unicast_peers.is_empty()
            && !self.slots[i].cfg.unicast_peers.contains(&rx.src)
        {
            err(self, "unknown_peer");
            return;
        }
        let now = Instant::now();
        let Some(router) = self.slots[i].router.as_mut() else {
            return;
        };
        match router.handle_advert(now, rx.src, &adv) {
            Ok(acts) => {
                self.metrics
                    .adverts_received
                    .with_label_values(&self.slots[i].labels())
                    .inc();
                // Published only when the master changes, not per advert.
                if self.slots[i].heard != Some(rx.src) {
                    self.slots[i].heard = Some(rx.src);
                    if acts.is_empty() {
                        self.publish_status();
                    }
                }
                self.apply(i, acts).await;
            }
            Err(ignored) => {
                tracing::debug!(router = %self.slots[i].cfg.name, vrid = adv.vrid, src = %rx.src, kind = ignored.kind(), "vrrp advert ignored");
                err(self, ignored.kind());
            }
        }
    }

    async fn apply(&mut self, i: usize, acts: Vec<Action>) {
        if acts.is_empty() {
            return;
        }
        let cfg = self.slots[i].cfg.clone();
        let link = self.links.get(&cfg.interface).cloned();
        for a in acts {
            match a {
                Action::SendAdvert { priority } => self.send_advert(i, priority),
                Action::AddVips(vips) => {
                    let Some(link) = &link else { continue };
                    for v in vips {
                        match add_address(&self.nl, link.index, &v).await {
                            Ok(()) => {
                                tracing::info!(router = %cfg.name, vrid = cfg.vrid, vip = %v, interface = %cfg.interface, "vip added")
                            }
                            Err(e) => {
                                tracing::error!(router = %cfg.name, vrid = cfg.vrid, vip = %v, error = %e, "vip add failed")
                            }
                        }
                    }
                }
                Action::RemoveVips(vips) => {
                    let Some(link) = &link else { continue };
                    for v in vips {
                        if del_address(&self.nl, link.index, &v).await {
                            tracing::info!(router = %cfg.name, vrid = cfg.vrid, vip = %v, interface = %cfg.interface, "vip removed");
                        }
                    }
                }
                Action::Announce(vips) => {
                    let Some(link) = &link else { continue };
                    for v in vips {
                        let r = match v.addr {
                            IpAddr::V4(a) => self.announcer.garp(link.index, link.mac, a),
                            IpAddr::V6(a) => {
                                self.announcer
                                    .na(link.index, link.mac, a, cfg.na_router_flag)
                            }
                        };
                        if let Err(e) = r {
                            tracing::warn!(router = %cfg.name, vip = %v, error = %e, "gratuitous ARP / NA not sent");
                        }
                    }
                }
                Action::StateChange { from, to, reason } => self.state_changed(i, from, to, reason),
            }
        }
        self.publish_metrics(i);
    }

    fn send_advert(&self, i: usize, priority: u8) {
        let slot = &self.slots[i];
        let Some(router) = &slot.router else { return };
        let Some(sock) = self
            .sockets
            .get(&(slot.cfg.interface.clone(), slot.cfg.family))
        else {
            return;
        };
        let adv = match slot.cfg.version {
            Version::V3 => AnyAdvert::V3(Advert {
                vrid: slot.cfg.vrid,
                priority,
                max_adver_int: slot.cfg.advert_interval_cs,
                addrs: slot.cfg.vips.iter().map(|v| v.addr).collect(),
            }),
            // Config guarantees IPv4 VIPs and whole seconds in 1-255 for v2.
            Version::V2 => AnyAdvert::V2(AdvertV2::new(
                slot.cfg.vrid,
                priority,
                (slot.cfg.advert_interval_cs / 100).clamp(1, 255) as u8,
                slot.cfg.auth,
                slot.cfg
                    .vips
                    .iter()
                    .filter_map(|v| match v.addr {
                        IpAddr::V4(a) => Some(a),
                        IpAddr::V6(_) => None,
                    })
                    .collect(),
            )),
        };
        let src = router.primary();
        let dsts: Vec<IpAddr> = if slot.cfg.unicast_peers.is_empty() {
            vec![match slot.cfg.family {
                Family::V4 => IpAddr::V4(MCAST_V4),
                Family::V6 => IpAddr::V6(MCAST_V6),
            }]
        } else {
            slot.cfg.unicast_peers.clone()
        };
        let mut buf = Vec::with_capacity(64);
        for dst in dsts {
            buf.clear();
            match &adv {
                AnyAdvert::V3(a) => a.encode(src, dst, &mut buf),
                AnyAdvert::V2(a) => a.encode(&mut buf),
            }
            match sock.get_ref().send(src, dst, &buf) {
                Ok(()) => self
                    .metrics
                    .adverts_sent
                    .with_label_values(&slot.labels())
                    .inc(),
                Err(e) => {
                    tracing::warn!(router = %slot.cfg.name, vrid = slot.cfg.vrid, %dst, error = %e, "vrrp advert not sent")
                }
            }
        }
    }

    fn state_changed(&mut self, i: usize, from: State, to: State, reason: &str) {
        self.slots[i].last_transition = Some(crate::Transition {
            at: SystemTime::now(),
            from,
            to,
            reason: reason.to_string(),
        });
        let slot = &self.slots[i];
        let vips: Vec<String> = slot.cfg.vips.iter().map(Vip::to_string).collect();
        tracing::info!(
            router = %slot.cfg.name,
            vrid = slot.cfg.vrid,
            interface = %slot.cfg.interface,
            vip = %vips.join(","),
            from = from.as_str(),
            state = to.as_str(),
            reason,
            "vrrp state change"
        );
        let labels = slot.labels();
        self.metrics.transitions.with_label_values(&labels).inc();
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics
            .last_transition
            .with_label_values(&labels)
            .set(unix);
        if !slot.cfg.notify.is_empty() {
            let state = if to == State::Initialize {
                "STOP"
            } else {
                to.as_str()
            };
            let mut argv = slot.cfg.notify.clone();
            argv.extend([
                state.to_string(),
                slot.cfg.name.clone(),
                slot.cfg.vrid.to_string(),
            ]);
            self.notifier.notify(Job {
                argv,
                timeout: slot.cfg.notify_timeout,
            });
        }
        self.publish_status();
    }

    fn publish_metrics(&self, i: usize) {
        let slot = &self.slots[i];
        if let Some(r) = &slot.router {
            self.metrics
                .state
                .with_label_values(&slot.labels())
                .set(r.state().code());
            self.metrics
                .priority
                .with_label_values(&slot.labels())
                .set(i64::from(r.priority()));
        }
        self.publish_status();
    }

    fn publish_status(&self) {
        let status: Vec<RouterStatus> = self
            .slots
            .iter()
            .map(|s| RouterStatus {
                name: s.cfg.name.clone(),
                vrid: s.cfg.vrid,
                interface: s.cfg.interface.clone(),
                family: s.cfg.family,
                state: s.router.as_ref().map_or(State::Initialize, Router::state),
                priority: s.router.as_ref().map_or(s.cfg.priority, Router::priority),
                master: match s.router.as_ref() {
                    Some(r) if r.state() == State::Master => Some(r.primary()),
                    Some(r) if r.state() == State::Backup => s.heard,
                    _ => None,
                },
                last_transition: s.last_transition.clone(),
                adverts_sent: 0,
                adverts_received: 0,
                drops: Vec::new(),
            })
            .collect();
        if let Ok(mut g) = self.status.lock() {
            *g = status;
        }
    }

    fn check_handover(&mut self) {
        if self.handover.is_none() {
            return;
        }
        let states: Vec<Option<HandoverState>> = self
            .slots
            .iter()
            .map(|s| s.router.as_ref().and_then(Router::handover_state))
            .collect();
        if states
            .iter()
            .any(|s| matches!(s, Some(HandoverState::Waiting { .. })))
        {
            return;
        }
        let outcome = if states
            .iter()
            .any(|s| matches!(s, Some(HandoverState::TimedOut)))
        {
            HandoverOutcome::TimedOut
        } else if states
            .iter()
            .any(|s| matches!(s, Some(HandoverState::TakenOver)))
        {
            HandoverOutcome::TakenOver
        } else {
            HandoverOutcome::NothingToHandOver
        };
        tracing::info!(?outcome, "vrrp handover finished");
        if let Some(reply) = self.handover.take() {
            let _ = reply.send(outcome);
        }
    }

    async fn shutdown(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let acts = match self.slots[i].router.as_mut() {
                Some(r) => r.shutdown(now),
                None => Vec::new(),
            };
            self.apply(i, acts).await;
        }
        if let Some(reply) = self.handover.take() {
            let _ = reply.send(HandoverOutcome::TimedOut);
        }
    }
}

/// The interface's subnets of one family, VIPs left out (they come and go with mastership).
fn link_subnets(link: &LinkInfo, family: Family, vips: &[IpAddr]) -> Vec<Subnet> {
    link.subnets
        .iter()
        .filter(|s| s.addr.is_ipv4() == (family == Family::V4) && !vips.contains(&s.addr))
        .copied()
        .collect()
}

/// Every drop kind `keel_vrrp_packet_errors_total` counts.
pub(crate) fn drop_kinds() -> impl Iterator<Item = &'static str> {
    PACKET_ERROR_KINDS
        .iter()
        .copied()
        .chain(crate::fsm::Ignored::ALL.iter().map(|i| i.kind()))
}

/// Drop reasons counted before a router is found (decode, IP header, peers, auth, queue).
const PACKET_ERROR_KINDS: &[&str] = &[
    "truncated",
    "bad_version",
    "bad_type",
    "address_count",
    "bad_checksum",
    "zero_interval",
    "family_mismatch",
    "bad_ip_header",
    "bad_ttl",
    "auth",
    "unknown_peer",
    "queue_full",
];

/// Packets waiting for the router thread; beyond this a flood is dropped (counted as `queue_full`).
const RECEIVE_QUEUE: usize = 1024;

async fn read_loop(
    key: SockKey,
    fd: Arc<AsyncFd<VrrpSocket>>,
    tx: mpsc::Sender<(SockKey, Received)>,
    dropped: prometheus::IntCounter,
) {
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(interface = %key.0, error = %e, "vrrp socket failed");
                return;
            }
        };
        // Bounded batch per wake-up so one flood cannot starve timers.
        for _ in 0..64 {
            match guard.get_inner().recv() {
                Ok(Some(rx)) => match tx.try_send((key.clone(), rx)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => dropped.inc(),
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
                Ok(None) => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => {
                    tracing::warn!(interface = %key.0, error = %e, "vrrp receive error");
                    guard.clear_ready();
                    break;
                }
            }
        }
    }
}

async fn add_address(nl: &rtnetlink::Handle, index: u32, v: &Vip) -> Result<(), rtnetlink::Error> {
    let mut req = nl.address().add(index, v.addr, v.prefix).replace();
    if v.addr.is_ipv6() {
        // No duplicate address detection: a tentative VIP cannot serve, and the VRRP election
        // already decided who owns it.
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await
}

/// Removes a VIP; true when it was there.
async fn del_address(nl: &rtnetlink::Handle, index: u32, v: &Vip) -> bool {
    let msg = match v.addr {
        IpAddr::V4(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(a, v.prefix)
            .build(),
        IpAddr::V6(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(a, v.prefix)
            .build(),
    };
    nl.address().del(msg).execute().await.is_ok()
}

/// SCHED_FIFO for this thread when permitted, so adverts leave on time on a starved host
/// (keepalived #2066, #2238 and its own answer, realtime scheduling).
fn set_realtime() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: pid 0 = the calling thread; `param` is a valid sched_param for the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        tracing::info!(error = %std::io::Error::last_os_error(), "vrrp thread runs without realtime scheduling");
    }
}
