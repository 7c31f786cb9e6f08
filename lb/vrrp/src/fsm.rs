//! The VRRP state machine of one virtual router (RFC 9568 §6; RFC 3768 §6 for VRRPv2), without
//! I/O and without a clock:
//! every input comes with `now`, every output is an [`Action`] for the driver, and
//! [`Router::poll_timeout`] says when to call [`Router::handle_timeout`] next.
//!
//! Beyond the RFC, as keepalived does and users rely on:
//! - a master that hears a lower-priority master advertises and announces (GARP/NA) at once, so a
//!   healed partition converges immediately and clients follow the survivor (keepalived #166, #2649);
//! - `preempt_delay` after start, tracking that lowers the priority, periodic GARP/NA refresh;
//! - a make-before-break handover: priority 0 adverts while keeping the VIPs until the new master
//!   is heard.
//!
//! VRRPv2 differs only in timing: no interval learning (an advert with another interval is dropped,
//! RFC 3768 §7.1, as keepalived does) and Skew_Time = (256 - Priority) / 256 seconds whatever the
//! interval. Intervals stay in centiseconds here; v2 intervals are whole seconds.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::{RouterConfig, Vip};
use crate::packet::{Advert, Version};
use crate::subnet::{self, Subnet};

/// RFC 9568 states, plus Fault (our interface is down, as keepalived).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Initialize,
    Backup,
    Master,
    Fault,
}

impl State {
    /// Name used in logs, metrics help and notify arguments (keepalived's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }

    /// Gauge value of `keel_vrrp_state`.
    pub fn code(self) -> i64 {
        match self {
            State::Initialize => 0,
            State::Backup => 1,
            State::Master => 2,
            State::Fault => 3,
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority and our VIPs and interval.
    SendAdvert {
        priority: u8,
    },
    AddVips(Vec<Vip>),
    RemoveVips(Vec<Vip>),
    /// One round of gratuitous ARP / unsolicited NA for these VIPs.
    Announce(Vec<Vip>),
    StateChange {
        from: State,
        to: State,
        reason: &'static str,
    },
}

/// Why a valid-looking advertisement was not acted on. `kind()` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    WrongVrid,
    /// The advert lists other addresses than ours and does not come from an address owner.
    AddressMismatch,
    /// Our own advert looped back.
    OwnAdvert,
    /// The router is stopped (after shutdown or handover).
    Stopped,
    /// VRRPv2: the advert's interval is not ours (RFC 3768 §7.1 says discard; keepalived drops).
    IntervalMismatch,
    /// A lower-priority master's advert inside the same advert interval as the last one we
    /// answered: not answered again (rate limit).
    HealLimited,
    /// `strict_source`: the source is outside the interface's subnets.
    SourceOutsideSubnets,
}

impl Ignored {
    pub fn kind(self) -> &'static str {
        match self {
            Ignored::WrongVrid => "wrong_vrid",
            Ignored::AddressMismatch => "address_mismatch",
            Ignored::OwnAdvert => "own_advert",
            Ignored::Stopped => "stopped",
            Ignored::IntervalMismatch => "interval_mismatch",
            Ignored::HealLimited => "heal_rate_limited",
            Ignored::SourceOutsideSubnets => "source_outside_subnets",
        }
    }

    /// Every kind, so counters can start at zero.
    pub const ALL: [Ignored; 7] = [
        Ignored::WrongVrid,
        Ignored::AddressMismatch,
        Ignored::OwnAdvert,
        Ignored::Stopped,
        Ignored::IntervalMismatch,
        Ignored::HealLimited,
        Ignored::SourceOutsideSubnets,
    ];
}

/// How a handover ended, per router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverState {
    /// Priority 0 sent, VIPs kept, waiting for the new master.
    Waiting {
        deadline: Instant,
    },
    TakenOver,
    TimedOut,
    /// We were not master: nothing to hand over.
    NotMaster,
}

/// One virtual router.
#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    /// Our address on the interface for this family: the advert source and the tie-breaker.
    primary: IpAddr,
    state: State,
    /// Master_Adver_Interval in centiseconds (learned from the master while Backup).
    master_adver_int: u16,
    adver_timer: Option<Instant>,
    master_down_timer: Option<Instant>,
    /// Preemption is held back until then (`preempt_delay` after start).
    preempt_after: Option<Instant>,
    announce_next: Option<Instant>,
    announce_left: u32,
    /// The second burst (`garp_delay` after becoming master).
    second_burst: Option<Instant>,
    refresh_timer: Option<Instant>,
    failed_pools: BTreeSet<String>,
    failed_interfaces: BTreeSet<String>,
    link_up: bool,
    handover: Option<HandoverState>,
    stopped: bool,
    /// When a lower-priority master was last answered (the heal reply is rate-limited).
    last_heal: Option<Instant>,
    /// The interface's subnets (VIPs left out), from the driver; used with `strict_source`.
    subnets: Vec<Subnet>,
}

impl Router {
    pub fn new(cfg: RouterConfig, primary: IpAddr) -> Router {
        Router {
            master_adver_int: cfg.advert_interval_cs,
            cfg,
            primary,
            state: State::Initialize,
            adver_timer: None,
            master_down_timer: None,
            preempt_after: None,
            announce_next: None,
            announce_left: 0,
            second_burst: None,
            refresh_timer: None,
            failed_pools: BTreeSet::new(),
            failed_interfaces: BTreeSet::new(),
            link_up: true,
            handover: None,
            stopped: false,
            last_heal: None,
            subnets: Vec::new(),
        }
    }

    /// The interface's subnets as they are now (the driver re-reads them with the links).
    pub fn set_subnets(&mut self, subnets: Vec<Subnet>) {
        self.subnets = subnets;
    }

    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn primary(&self) -> IpAddr {
        self.primary
    }

    pub fn master_adver_interval(&self) -> Duration {
        cs(self.master_adver_int)
    }

    pub fn handover_state(&self) -> Option<HandoverState> {
        self.handover
    }

    /// Base priority minus the weights of failed tracked pools and interfaces, kept within 1-254;
    /// an address owner (255) with nothing failed stays 255.
    pub fn priority(&self) -> u8 {
        let lost: u32 = self
            .cfg
            .track_pools
            .iter()
            .filter(|t| self.failed_pools.contains(&t.name))
            .chain(
                self.cfg
                    .track_interfaces
                    .iter()
                    .filter(|t| self.failed_interfaces.contains(&t.name)),
            )
            .map(|t| u32::from(t.weight))
            .sum();
        if lost == 0 {
            return self.cfg.priority;
        }
        (u32::from(self.cfg.priority).saturating_sub(lost)).clamp(1, 254) as u8
    }

    /// Skew_Time = ((256 - priority) * Master_Adver_Interval) / 256, in microseconds so that
    /// routers whose priorities differ by one do not tie at short intervals. VRRPv2 (RFC 3768
    /// §6.1, keepalived's VRRP_TIMER_SKEW): (256 - priority) / 256 seconds, whatever the interval.
    pub fn skew_time(&self) -> Duration {
        let mai_us = match self.cfg.version {
            Version::V2 => 1_000_000,
            Version::V3 => u64::from(self.master_adver_int) * 10_000,
        };
        Duration::from_micros((256 - u64::from(self.priority())) * mai_us / 256)
    }

    /// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        3 * cs(self.master_adver_int) + self.skew_time()
    }

    /// The next instant `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let handover = match self.handover {
            Some(HandoverState::Waiting { deadline }) => Some(deadline),
            _ => None,
        };
        [
            self.adver_timer,
            self.master_down_timer,
            self.announce_next,
            self.second_burst,
            self.refresh_timer,
            handover,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The Startup event.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.preempt_after = Some(now + self.cfg.preempt_delay);
        if !self.link_up {
            self.transition(State::Fault, "interface down", &mut out);
            return out;
        }
        if self.priority() == 255 {
            self.become_master(now, "address owner", &mut out);
        } else {
            self.become_backup(now, self.cfg.advert_interval_cs, "startup", &mut out);
        }
        out
    }

    /// An advertisement that passed decoding (TTL, checksum, version, length) arrived from `src`.
    pub fn handle_advert(
        &mut self,
        now: Instant,
        src: IpAddr,
        adv: &Advert,
    ) -> Result<Vec<Action>, Ignored> {
        if self.stopped {
            return Err(Ignored::Stopped);
        }
        if adv.vrid != self.cfg.vrid {
            return Err(Ignored::WrongVrid);
        }
        if src == self.primary {
            return Err(Ignored::OwnAdvert);
        }
        if self.cfg.strict_source && !subnet::inside(src, &self.subnets) {
            return Err(Ignored::SourceOutsideSubnets);
        }
        if self.cfg.version == Version::V2 && adv.max_adver_int != self.cfg.advert_interval_cs {
            return Err(Ignored::IntervalMismatch);
        }
        if adv.priority != 255 && !self.same_addresses(&adv.addrs) {
            return Err(Ignored::AddressMismatch);
        }
        let mut out = Vec::new();
        match self.state {
            State::Initialize | State::Fault => {}
            State::Backup => {
                if adv.priority == 0 {
                    // The master is leaving: take over after Skew_Time only.
                    self.master_down_timer = Some(now + self.skew_time());
                } else if !self.may_preempt(now) || adv.priority >= self.priority() {
                    self.learn_interval(adv.max_adver_int);
                    self.master_down_timer = Some(now + self.master_down_interval());
                }
                // else: a lower-priority master and we preempt: let the timer run out.
            }
            State::Master => {
                if let Some(HandoverState::Waiting { .. }) = self.handover {
                    if adv.priority > 0 {
                        self.handover = Some(HandoverState::TakenOver);
                        self.release(now, "handed over", &mut out);
                    }
                    return Ok(out);
                }
                let mine = self.priority();
                if adv.priority == 0 {
                    self.send_advert(now, &mut out);
                } else if adv.priority > mine || (adv.priority == mine && src > self.primary) {
                    self.learn_interval(adv.max_adver_int);
                    out.push(Action::RemoveVips(self.cfg.owned_vips()));
                    self.stop_master_timers();
                    self.master_down_timer = Some(now + self.master_down_interval());
                    self.transition(State::Backup, "higher priority master", &mut out);
                    // One last advert at our priority: the winner may never have heard us (it
                    // spoke first after a partition healed); hearing a lower master makes it
                    // announce, so clients that followed us go back to it (keepalived #166).
                    out.push(Action::SendAdvert { priority: mine });
                } else {
                    // Another master with lower priority (a healed partition): assert ourselves
                    // now, and announce so clients that followed it come back. At most once per
                    // advert interval: a flood of low adverts must not turn us into an amplifier.
                    if self
                        .last_heal
                        .is_some_and(|t| now < t + cs(self.cfg.advert_interval_cs))
                    {
                        return Err(Ignored::HealLimited);
                    }
                    self.last_heal = Some(now);
                    self.send_advert(now, &mut out);
                    self.start_announcing(now, &mut out);
                }
            }
        }
        Ok(out)
    }

    /// Timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        if let Some(HandoverState::Waiting { deadline }) = self.handover {
            if now >= deadline {
                self.handover = Some(HandoverState::TimedOut);
                self.release(now, "handover timed out", &mut out);
                return out;
            }
        }
        if self.master_down_timer.is_some_and(|t| now >= t) {
            self.master_down_timer = None;
            if self.state == State::Backup {
                self.become_master(now, "master down", &mut out);
            }
        }
        if self.adver_timer.is_some_and(|t| now >= t) && self.state == State::Master {
            self.send_advert(now, &mut out);
        }
        if self.announce_next.is_some_and(|t| now >= t) {
            self.announce_next = None;
            if self.state == State::Master && self.announce_left > 0 {
                self.announce_left -= 1;
                out.push(Action::Announce(self.cfg.owned_vips()));
                if self.announce_left > 0 {
                    self.announce_next = Some(now + self.cfg.garp_interval);
                }
            }
        }
        if self.second_burst.is_some_and(|t| now >= t) {
            self.second_burst = None;
            if self.state == State::Master {
                self.start_announcing(now, &mut out);
            }
        }
        if self.refresh_timer.is_some_and(|t| now >= t) {
            self.refresh_timer = None;
            if self.state == State::Master {
                out.push(Action::Announce(self.cfg.owned_vips()));
                self.refresh_timer = self.cfg.garp_refresh.map(|d| now + d);
            }
        }
        out
    }

    /// A tracked pool became healthy or lost its last healthy backend.
    pub fn set_pool_health(&mut self, now: Instant, pool: &str, healthy: bool) -> Vec<Action> {
        if !self.cfg.track_pools.iter().any(|t| t.name == pool) {
            return Vec::new();
        }
        let before = self.priority();
        mark(&mut self.failed_pools, pool, healthy);
        self.priority_changed(now, before)
    }

    /// A tracked interface went up or down.
    pub fn set_interface_up(&mut self, now: Instant, interface: &str, up: bool) -> Vec<Action> {
        if !self
            .cfg
            .track_interfaces
            .iter()
            .any(|t| t.name == interface)
        {
            return Vec::new();
        }
        let before = self.priority();
        mark(&mut self.failed_interfaces, interface, up);
        self.priority_changed(now, before)
    }

    /// Our own interface lost or regained its link: Fault while down (VIPs released), then the
    /// Startup event again.
    pub fn set_link(&mut self, now: Instant, up: bool) -> Vec<Action> {
        let mut out = Vec::new();
        if self.link_up == up {
            return out;
        }
        self.link_up = up;
        if self.stopped || self.state == State::Initialize {
            return out;
        }
        if !up {
            if self.state == State::Master {
                out.push(Action::RemoveVips(self.cfg.owned_vips()));
            }
            self.stop_master_timers();
            self.master_down_timer = None;
            self.transition(State::Fault, "interface down", &mut out);
        } else if self.state == State::Fault {
            if self.priority() == 255 {
                self.become_master(now, "interface up, address owner", &mut out);
            } else {
                self.become_backup(now, self.cfg.advert_interval_cs, "interface up", &mut out);
            }
        }
        out
    }

    /// Planned handover: a master advertises priority 0 but keeps its VIPs until another router
    /// advertises (the new master) or `deadline` passes; anything else just stops.
    pub fn begin_handover(&mut self, now: Instant, deadline: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped || self.handover.is_some() {
            return out;
        }
        if self.state == State::Master {
            self.handover = Some(HandoverState::Waiting { deadline });
            self.send_advert(now, &mut out);
        } else {
            self.handover = Some(HandoverState::NotMaster);
            self.stop(&mut out);
        }
        out
    }

    /// The Shutdown event: a master sends priority 0 so a backup takes over after Skew_Time, and
    /// releases its VIPs; then the router ignores everything.
    pub fn shutdown(&mut self, _now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        if self.state == State::Master {
            out.push(Action::SendAdvert { priority: 0 });
            out.push(Action::RemoveVips(self.cfg.owned_vips()));
        }
        self.stop(&mut out);
        out
    }

    /// Applies a new config for the same (interface, VRID, family): VIP differences are applied at
    /// once when master, priority and timers from the next event on.
    pub fn reconfigure(&mut self, now: Instant, cfg: RouterConfig) -> Vec<Action> {
        let mut out = Vec::new();
        let before = self.priority();
        let old = std::mem::replace(&mut self.cfg, cfg);
        if self.cfg.version == Version::V2 {
            // Nothing is learned in v2: the configured interval is the master's.
            self.master_adver_int = self.cfg.advert_interval_cs;
        }
        self.failed_pools
            .retain(|p| self.cfg.track_pools.iter().any(|t| &t.name == p));
        self.failed_interfaces
            .retain(|p| self.cfg.track_interfaces.iter().any(|t| &t.name == p));
        if self.state == State::Master && !self.stopped {
            let (now_owned, was_owned) = (self.cfg.owned_vips(), old.owned_vips());
            // Sets: a router may carry a thousand Services' VIPs.
            let now_set: std::collections::HashSet<Vip> = now_owned.iter().copied().collect();
            let was_set: std::collections::HashSet<Vip> = was_owned.iter().copied().collect();
            let added: Vec<Vip> = now_owned
                .iter()
                .filter(|v| !was_set.contains(v))
                .copied()
                .collect();
            let removed: Vec<Vip> = was_owned
                .iter()
                .filter(|v| !now_set.contains(v))
                .copied()
                .collect();
            if !removed.is_empty() {
                out.push(Action::RemoveVips(removed));
            }
            if !added.is_empty() {
                out.push(Action::AddVips(added.clone()));
                out.push(Action::Announce(added));
            }
            if old.advert_interval_cs != self.cfg.advert_interval_cs || !out.is_empty() {
                self.send_advert(now, &mut out);
            }
            if old.garp_refresh != self.cfg.garp_refresh {
                self.refresh_timer = self.cfg.garp_refresh.map(|d| now + d);
            }
        }
        out.extend(self.priority_changed(now, before));
        out
    }

    fn priority_changed(&mut self, now: Instant, before: u8) -> Vec<Action> {
        let mut out = Vec::new();
        let after = self.priority();
        if after == before || self.stopped {
            return out;
        }
        match self.state {
            // Tell backups now rather than at the next tick, so a preempting backup starts its
            // Master_Down timer early.
            State::Master if self.handover.is_none() => self.send_advert(now, &mut out),
            State::Backup if after == 255 => self.become_master(now, "address owner", &mut out),
            _ => {}
        }
        out
    }

    /// Master_Adver_Interval follows the master in v3 (RFC 9568 §6.4.2); v2 has no such thing
    /// (and a different interval never gets here).
    fn learn_interval(&mut self, cs: u16) {
        if self.cfg.version == Version::V3 {
            // Bounded: one spoofed advert must not buy minutes of mastership.
            self.master_adver_int = cs.min(self.cfg.max_learned_interval_cs.max(1));
        }
    }

    fn may_preempt(&self, now: Instant) -> bool {
        self.cfg.preempt && self.preempt_after.is_none_or(|t| now >= t)
    }

    fn same_addresses(&self, addrs: &[IpAddr]) -> bool {
        let theirs: BTreeSet<&IpAddr> = addrs.iter().collect();
        let ours: BTreeSet<&IpAddr> = self.cfg.vips.iter().map(|v| &v.addr).collect();
        theirs == ours
    }

    fn become_master(&mut self, now: Instant, reason: &'static str, out: &mut Vec<Action>) {
        self.master_down_timer = None;
        // VIPs first, then the announcement, then the advert: by the time the old master hears
        // us and lets go, clients already point at us.
        out.push(Action::AddVips(self.cfg.owned_vips()));
        self.transition(State::Master, reason, out);
        self.start_announcing(now, out);
        self.send_advert(now, out);
        self.second_burst = self.cfg.garp_delay.map(|d| now + d);
        self.refresh_timer = self.cfg.garp_refresh.map(|d| now + d);
    }

    fn become_backup(
        &mut self,
        now: Instant,
        interval: u16,
        reason: &'static str,
        out: &mut Vec<Action>,
    ) {
        self.master_adver_int = interval;
        self.master_down_timer = Some(now + self.master_down_interval());
        self.transition(State::Backup, reason, out);
    }

    fn start_announcing(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Announce(self.cfg.owned_vips()));
        self.announce_left = self.cfg.garp_repeat.saturating_sub(1);
        self.announce_next = (self.announce_left > 0).then(|| now + self.cfg.garp_interval);
    }

    fn send_advert(&mut self, now: Instant, out: &mut Vec<Action>) {
        let priority = match self.handover {
            Some(HandoverState::Waiting { .. }) => 0,
            _ => self.priority(),
        };
        out.push(Action::SendAdvert { priority });
        self.adver_timer = Some(now + cs(self.cfg.advert_interval_cs));
    }

    fn release(&mut self, _now: Instant, reason: &'static str, out: &mut Vec<Action>) {
        out.push(Action::RemoveVips(self.cfg.owned_vips()));
        self.stop_master_timers();
        self.stopped = true;
        self.transition(State::Initialize, reason, out);
    }

    fn stop(&mut self, out: &mut Vec<Action>) {
        self.stop_master_timers();
        self.master_down_timer = None;
        self.stopped = true;
        self.transition(State::Initialize, "shutdown", out);
    }

    fn stop_master_timers(&mut self) {
        self.adver_timer = None;
        self.announce_next = None;
        self.announce_left = 0;
        self.second_burst = None;
        self.refresh_timer = None;
    }

    fn transition(&mut self, to: State, reason: &'static str, out: &mut Vec<Action>) {
        if self.state != to {
            out.push(Action::StateChange {
                from: self.state,
                to,
                reason,
            });
            self.state = to;
        }
    }
}

fn cs(centis: u16) -> Duration {
    Duration::from_millis(u64::from(centis) * 10)
}

/// Records a tracked object as failed (`ok` false) or recovered in a router's failure set.
fn mark(failed: &mut BTreeSet<String>, name: &str, ok: bool) {
    if ok {
        failed.remove(name);
    } else {
        failed.insert(name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Family, Track};
    use std::collections::VecDeque;

    fn cfg(priority: u8) -> RouterConfig {
        RouterConfig {
            name: "web".into(),
            version: Version::V3,
            auth: crate::packet::Auth::None,
            vrid: 51,
            interface: "eth0".into(),
            family: Family::V4,
            priority,
            advert_interval_cs: 100,
            max_learned_interval_cs: 300,
            preempt: true,
            preempt_delay: Duration::ZERO,
            vips: vec![Vip {
                addr: "198.18.0.100".parse().unwrap(),
                prefix: 24,
            }],
            excluded_vips: vec![],
            unicast_src: None,
            unicast_peers: vec![],
            strict_source: false,
            garp_repeat: 1,
            garp_interval: Duration::from_millis(10),
            garp_delay: None,
            garp_refresh: None,
            na_router_flag: false,
            track_pools: vec![],
            track_interfaces: vec![],
            notify: vec![],
            notify_timeout: Duration::from_secs(1),
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 1, last))
    }

    fn advert(r: &Router, priority: u8) -> Advert {
        Advert {
            vrid: r.cfg.vrid,
            priority,
            max_adver_int: r.cfg.advert_interval_cs,
            addrs: r.cfg.vips.iter().map(|v| v.addr).collect(),
        }
    }

    fn states(a: &[Action]) -> Vec<State> {
        a.iter()
            .filter_map(|x| match x {
                Action::StateChange { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }

    /// Routers on one segment: adverts are delivered instantly between connected routers.
    struct Lan {
        routers: Vec<Router>,
        up: Vec<bool>,
        now: Instant,
        /// (router, time, action) for everything any router did.
        log: Vec<(usize, Instant, Action)>,
    }

    impl Lan {
        fn new(routers: Vec<Router>) -> Lan {
            let n = routers.len();
            Lan {
                routers,
                up: vec![true; n],
                now: Instant::now(),
                log: Vec::new(),
            }
        }

        fn start_at(&mut self, i: usize, at: Instant) {
            self.run_until(at);
            let acts = self.routers[i].start(self.now);
            self.deliver(i, acts);
        }

        fn deliver(&mut self, from: usize, acts: Vec<Action>) {
            let mut queue: VecDeque<(usize, Action)> =
                acts.into_iter().map(|a| (from, a)).collect();
            let mut budget = 10_000;
            while let Some((i, a)) = queue.pop_front() {
                budget -= 1;
                assert!(budget > 0, "action storm");
                if let Action::SendAdvert { priority } = a {
                    if self.up[i] {
                        let adv = advert(&self.routers[i], priority);
                        let src = self.routers[i].primary;
                        for j in 0..self.routers.len() {
                            if j != i && self.up[j] {
                                if let Ok(more) = self.routers[j].handle_advert(self.now, src, &adv)
                                {
                                    queue.extend(more.into_iter().map(|m| (j, m)));
                                }
                            }
                        }
                    }
                }
                self.log.push((i, self.now, a));
            }
        }

        fn run_until(&mut self, end: Instant) {
            for _ in 0..100_000 {
                let next = self.routers.iter().filter_map(Router::poll_timeout).min();
                match next {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        for i in 0..self.routers.len() {
                            if self.routers[i]
                                .poll_timeout()
                                .is_some_and(|t| t <= self.now)
                            {
                                let acts = self.routers[i].handle_timeout(self.now);
                                self.deliver(i, acts);
                            }
                        }
                    }
                    _ => {
                        self.now = self.now.max(end);
                        return;
                    }
                }
            }
            panic!("timers never settled");
        }

        fn run_for(&mut self, d: Duration) {
            let end = self.now + d;
            self.run_until(end);
        }

        fn states(&self) -> Vec<State> {
            self.routers.iter().map(Router::state).collect()
        }

        fn transitions_of(&self, i: usize) -> Vec<(Instant, State)> {
            self.log
                .iter()
                .filter(|(r, _, _)| *r == i)
                .filter_map(|(_, t, a)| match a {
                    Action::StateChange { to, .. } => Some((*t, *to)),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn timers_follow_the_rfc_formulas() {
        let r = Router::new(cfg(100), ip(1));
        // Skew = (256-100)*1s/256 = 609.375ms; MDI = 3s + skew.
        assert_eq!(r.skew_time(), Duration::from_micros(609_375));
        assert_eq!(r.master_down_interval(), Duration::from_micros(3_609_375));
        let r = Router::new(cfg(254), ip(1));
        assert_eq!(r.skew_time(), Duration::from_micros(7_812));
    }

    #[test]
    fn a_lone_backup_takes_over_exactly_at_master_down_interval() {
        let mut r = Router::new(cfg(100), ip(1));
        let t0 = Instant::now();
        let acts = r.start(t0);
        assert_eq!(states(&acts), vec![State::Backup]);
        let mdi = r.master_down_interval();
        assert_eq!(r.poll_timeout(), Some(t0 + mdi));
        assert!(r
            .handle_timeout(t0 + mdi - Duration::from_millis(1))
            .is_empty());
        let acts = r.handle_timeout(t0 + mdi);
        assert_eq!(
            acts,
            vec![
                Action::AddVips(cfg(100).vips),
                Action::StateChange {
                    from: State::Backup,
                    to: State::Master,
                    reason: "master down"
                },
                Action::Announce(cfg(100).vips),
                Action::SendAdvert { priority: 100 },
            ]
        );
        assert_eq!(r.poll_timeout(), Some(t0 + mdi + Duration::from_secs(1)));
        assert_eq!(
            r.handle_timeout(t0 + mdi + Duration::from_secs(1)),
            vec![Action::SendAdvert { priority: 100 }]
        );
    }

    #[test]
    fn the_address_owner_is_master_at_once() {
        let mut r = Router::new(cfg(255), ip(1));
        let acts = r.start(Instant::now());
        assert_eq!(states(&acts), vec![State::Master]);
        assert!(acts.contains(&Action::SendAdvert { priority: 255 }));
    }

    #[test]
    fn election_picks_the_highest_priority_started_together() {
        let mut lan = Lan::new(vec![
            Router::new(cfg(100), ip(1)),
            Router::new(cfg(200), ip(2)),
        ]);
        let t0 = lan.now;
        lan.start_at(0, t0);
        lan.start_at(1, t0);
        lan.run_for(Duration::from_secs(30));
        assert_eq!(lan.states(), vec![State::Backup, State::Master]);
        assert_eq!(lan.transitions_of(0), vec![(t0, State::Backup)]);
    }

    #[test]
    fn equal_priorities_tie_break_on_the_higher_primary_address() {
        let t = Instant::now();
        let mut low = Router::new(cfg(255), ip(9));
        let mut high = Router::new(cfg(255), ip(10));
        low.start(t);
        high.start(t);
        let from_high = advert(&high, 255);
        let from_low = advert(&low, 255);
        let acts = high.handle_advert(t, ip(9), &from_low).unwrap();
        assert_eq!(high.state(), State::Master);
        assert!(acts.contains(&Action::SendAdvert { priority: 255 }));
        let acts = low.handle_advert(t, ip(10), &from_high).unwrap();
        assert_eq!(low.state(), State::Backup);
        assert_eq!(acts[0], Action::RemoveVips(cfg(1).vips));
    }

    #[test]
    fn a_higher_priority_router_that_starts_later_preempts() {
        let mut lan = Lan::new(vec![
            Router::new(cfg(100), ip(1)),
            Router::new(cfg(200), ip(2)),
        ]);
        let t0 = lan.now;
        lan.start_at(0, t0);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.states()[0], State::Master);
        let t1 = lan.now;
        lan.start_at(1, t1);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.states(), vec![State::Backup, State::Master]);
        let (at, st) = lan.transitions_of(1)[1];
        assert_eq!(st, State::Master);
        // It ignored the lower-priority adverts and took over at its own Master_Down_Interval.
        assert_eq!(at - t1, lan.routers[1].master_down_interval());
    }

    #[test]
    fn with_preemption_off_a_higher_priority_router_stays_backup() {
        let mut high = cfg(200);
        high.preempt = false;
        let mut lan = Lan::new(vec![Router::new(cfg(100), ip(1)), Router::new(high, ip(2))]);
        lan.start_at(0, lan.now);
        lan.run_for(Duration::from_secs(10));
        lan.start_at(1, lan.now);
        lan.run_for(Duration::from_secs(60));
        assert_eq!(lan.states(), vec![State::Master, State::Backup]);
    }

    #[test]
    fn preempt_delay_holds_preemption_back_after_start() {
        let mut high = cfg(200);
        high.preempt_delay = Duration::from_secs(20);
        let mut lan = Lan::new(vec![Router::new(cfg(100), ip(1)), Router::new(high, ip(2))]);
        lan.start_at(0, lan.now);
        lan.run_for(Duration::from_secs(10));
        let t1 = lan.now;
        lan.start_at(1, t1);
        lan.run_for(Duration::from_secs(19));
        assert_eq!(lan.states(), vec![State::Master, State::Backup]);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.states(), vec![State::Backup, State::Master]);
        let (at, _) = lan.transitions_of(1)[1];
        assert!(
            at - t1 >= Duration::from_secs(20)
                && at - t1 <= Duration::from_secs(20) + lan.routers[1].master_down_interval()
        );
    }

    #[test]
    fn priority_zero_makes_the_backup_take_over_after_skew_time() {
        let mut lan = Lan::new(vec![
            Router::new(cfg(200), ip(1)),
            Router::new(cfg(100), ip(2)),
        ]);
        lan.start_at(0, lan.now);
        lan.start_at(1, lan.now);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.states(), vec![State::Master, State::Backup]);
        let t = lan.now;
        let acts = lan.routers[0].shutdown(t);
        assert_eq!(acts[0], Action::SendAdvert { priority: 0 });
        assert!(acts.contains(&Action::RemoveVips(cfg(1).vips)));
        lan.deliver(0, acts);
        lan.run_for(Duration::from_secs(5));
        let (at, st) = *lan.transitions_of(1).last().unwrap();
        assert_eq!(st, State::Master);
        assert_eq!(at - t, lan.routers[1].skew_time());
        assert_eq!(lan.routers[0].state(), State::Initialize);
    }

    #[test]
    fn a_master_answers_priority_zero_with_an_advert() {
        let mut r = Router::new(cfg(255), ip(1));
        let t = Instant::now();
        r.start(t);
        let other = Router::new(cfg(100), ip(2));
        assert_eq!(
            r.handle_advert(t, ip(2), &advert(&other, 0)).unwrap(),
            vec![Action::SendAdvert { priority: 255 }]
        );
    }

    #[test]
    fn a_partition_gives_two_masters_and_healing_leaves_the_higher_priority_one() {
        let mut lan = Lan::new(vec![
            Router::new(cfg(200), ip(1)),
            Router::new(cfg(100), ip(2)),
        ]);
        lan.start_at(0, lan.now);
        lan.start_at(1, lan.now);
        lan.run_for(Duration::from_secs(10));
        lan.up = vec![true, false];
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.states(), vec![State::Master, State::Master]);
        lan.up = vec![true, true];
        let healed = lan.now;
        lan.run_for(Duration::from_secs(3));
        assert_eq!(lan.states(), vec![State::Master, State::Backup]);
        // The survivor re-announced once it heard the other master, so clients come back (#166).
        assert!(lan
            .log
            .iter()
            .any(|(i, t, a)| *i == 0 && *t >= healed && matches!(a, Action::Announce(_))));
        assert!(lan
            .log
            .iter()
            .any(|(i, t, a)| *i == 1 && *t >= healed && matches!(a, Action::RemoveVips(_))));
    }

    #[test]
    fn equal_priority_split_brain_heals_by_address() {
        let mut lan = Lan::new(vec![
            Router::new(cfg(100), ip(1)),
            Router::new(cfg(100), ip(2)),
        ]);
        lan.up = vec![true, false];
        lan.start_at(0, lan.now);
        lan.start_at(1, lan.now);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.states(), vec![State::Master, State::Master]);
        lan.up = vec![true, true];
        lan.run_for(Duration::from_secs(3));
        assert_eq!(lan.states(), vec![State::Backup, State::Master]);
    }

    #[test]
    fn a_backup_learns_the_masters_interval() {
        let mut r = Router::new(cfg(100), ip(1));
        let t = Instant::now();
        r.start(t);
        let mut fast = Router::new(cfg(200), ip(2));
        fast.cfg.advert_interval_cs = 10;
        r.handle_advert(t, ip(2), &advert(&fast, 200)).unwrap();
        assert_eq!(r.master_adver_interval(), Duration::from_millis(100));
        // 3 * 100ms + (156 * 100ms / 256)
        assert_eq!(
            r.poll_timeout(),
            Some(t + Duration::from_micros(300_000 + 60_937))
        );
    }

    #[test]
    fn malformed_or_foreign_adverts_change_nothing() {
        let mut r = Router::new(cfg(100), ip(1));
        let t = Instant::now();
        r.start(t);
        let before = (r.state(), r.poll_timeout(), r.master_adver_interval());
        let other = Router::new(cfg(200), ip(2));
        let mut wrong_vrid = advert(&other, 200);
        wrong_vrid.vrid = 52;
        assert_eq!(
            r.handle_advert(t, ip(2), &wrong_vrid),
            Err(Ignored::WrongVrid)
        );
        let mut wrong_addrs = advert(&other, 200);
        wrong_addrs.addrs = vec!["198.18.0.99".parse().unwrap()];
        wrong_addrs.max_adver_int = 5;
        assert_eq!(
            r.handle_advert(t, ip(2), &wrong_addrs),
            Err(Ignored::AddressMismatch)
        );
        assert_eq!(
            r.handle_advert(t, ip(1), &advert(&other, 200)),
            Err(Ignored::OwnAdvert)
        );
        assert_eq!(
            (r.state(), r.poll_timeout(), r.master_adver_interval()),
            before
        );
        // An address owner may list other addresses (RFC 9568 §7.1).
        assert!(r
            .handle_advert(
                t,
                ip(2),
                &Advert {
                    priority: 255,
                    ..wrong_addrs
                }
            )
            .is_ok());
    }

    #[test]
    fn strict_source_drops_adverts_from_outside_the_interface_subnets() {
        let t = Instant::now();
        let subnets = vec![
            Subnet {
                addr: ip(1),
                prefix: 24,
            },
            Subnet {
                addr: "fe80::1".parse().unwrap(),
                prefix: 64,
            },
        ];
        let other = Router::new(cfg(200), ip(2));
        let outsider: IpAddr = "198.19.7.2".parse().unwrap();
        // Off (the default): the outsider is believed.
        let mut lax = Router::new(cfg(100), ip(1));
        lax.set_subnets(subnets.clone());
        lax.start(t);
        assert!(lax.handle_advert(t, outsider, &advert(&other, 200)).is_ok());
        // On: the outsider is dropped and changes nothing; a neighbour in the subnet is heard.
        let mut r = Router::new(
            RouterConfig {
                strict_source: true,
                ..cfg(100)
            },
            ip(1),
        );
        r.start(t);
        let before = (r.state(), r.poll_timeout());
        assert_eq!(
            r.handle_advert(t, ip(2), &advert(&other, 200)),
            Err(Ignored::SourceOutsideSubnets),
            "no subnets known yet: nothing is inside"
        );
        r.set_subnets(subnets);
        assert_eq!(
            r.handle_advert(t, outsider, &advert(&other, 255)),
            Err(Ignored::SourceOutsideSubnets)
        );
        assert_eq!((r.state(), r.poll_timeout()), before);
        assert!(r.handle_advert(t, ip(2), &advert(&other, 200)).is_ok());
    }

    #[test]
    fn a_failed_tracked_pool_lowers_priority_and_hands_the_vip_away() {
        let mut c = cfg(200);
        c.track_pools = vec![Track {
            name: "web".into(),
            weight: 150,
        }];
        let mut lan = Lan::new(vec![Router::new(c, ip(1)), Router::new(cfg(100), ip(2))]);
        lan.start_at(0, lan.now);
        lan.start_at(1, lan.now);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.states(), vec![State::Master, State::Backup]);
        let now = lan.now;
        let acts = lan.routers[0].set_pool_health(now, "web", false);
        assert_eq!(acts, vec![Action::SendAdvert { priority: 50 }]);
        lan.deliver(0, acts);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.states(), vec![State::Backup, State::Master]);
        assert!(lan.routers[0]
            .set_pool_health(lan.now, "other", false)
            .is_empty());
        // Weights never push the priority under 1 or make an owner out of nobody.
        let mut c = cfg(10);
        c.track_pools = vec![Track {
            name: "a".into(),
            weight: 200,
        }];
        let mut r = Router::new(c, ip(3));
        r.set_pool_health(lan.now, "a", false);
        assert_eq!(r.priority(), 1);
    }

    /// A spoofed priority-255 advert claiming 40.95 s intervals keeps a backup out for at most
    /// 3 x Max_Learned_Interval (+ skew), not two minutes.
    #[test]
    fn a_learned_interval_is_bounded() {
        let mut r = Router::new(cfg(200), ip(2));
        let t = Instant::now();
        r.start(t);
        let mut spoof = advert(&r, 255);
        spoof.max_adver_int = 4095;
        r.handle_advert(t, ip(9), &spoof).unwrap();
        assert_eq!(r.master_adver_interval(), Duration::from_secs(3));
        let down = r.poll_timeout().unwrap() - t;
        assert!(down <= Duration::from_secs(10), "{down:?}");
    }

    /// A master answers a lower-priority master at most once per advert interval.
    #[test]
    fn the_heal_reply_to_lower_masters_is_rate_limited() {
        let mut r = Router::new(cfg(255), ip(1));
        let t = Instant::now();
        r.start(t);
        assert_eq!(r.state(), State::Master);
        let low = advert(&r, 100);
        let first = r.handle_advert(t, ip(2), &low).unwrap();
        assert!(first.contains(&Action::SendAdvert { priority: 255 }));
        let mut limited = 0;
        for i in 1..100u64 {
            let at = t + Duration::from_micros(i * 100);
            if r.handle_advert(at, ip(2), &low) == Err(Ignored::HealLimited) {
                limited += 1;
            }
        }
        assert_eq!(limited, 99);
        let later = r
            .handle_advert(t + Duration::from_secs(1), ip(2), &low)
            .unwrap();
        assert!(later.contains(&Action::SendAdvert { priority: 255 }));
    }

    #[test]
    fn planned_handover_keeps_the_vips_until_the_new_master_is_heard() {
        let mut lan = Lan::new(vec![
            Router::new(cfg(200), ip(1)),
            Router::new(cfg(100), ip(2)),
        ]);
        lan.start_at(0, lan.now);
        lan.start_at(1, lan.now);
        lan.run_for(Duration::from_secs(10));
        let t = lan.now;
        let acts = lan.routers[0].begin_handover(t, t + Duration::from_secs(5));
        assert_eq!(acts, vec![Action::SendAdvert { priority: 0 }]);
        lan.log.clear();
        lan.deliver(0, acts);
        lan.run_for(Duration::from_secs(5));
        assert_eq!(
            lan.routers[0].handover_state(),
            Some(HandoverState::TakenOver)
        );
        assert_eq!(lan.states(), vec![State::Initialize, State::Master]);
        // Order on the wire: the new master adds its VIPs before the old one removes them.
        let added = lan
            .log
            .iter()
            .position(|(i, _, a)| *i == 1 && matches!(a, Action::AddVips(_)))
            .unwrap();
        let removed = lan
            .log
            .iter()
            .position(|(i, _, a)| *i == 0 && matches!(a, Action::RemoveVips(_)))
            .unwrap();
        assert!(added < removed);
        // Nothing more from the old master.
        assert_eq!(lan.routers[0].poll_timeout(), None);
    }

    #[test]
    fn planned_handover_releases_at_the_deadline_when_nobody_takes_over() {
        let mut r = Router::new(cfg(255), ip(1));
        let t = Instant::now();
        r.start(t);
        let deadline = t + Duration::from_millis(2500);
        r.begin_handover(t, deadline);
        // Priority 0 adverts continue while waiting.
        assert_eq!(
            r.handle_timeout(t + Duration::from_secs(1)),
            vec![Action::SendAdvert { priority: 0 }]
        );
        let acts = r.handle_timeout(deadline);
        assert_eq!(acts[0], Action::RemoveVips(cfg(1).vips));
        assert_eq!(r.handover_state(), Some(HandoverState::TimedOut));
        let mut b = Router::new(cfg(100), ip(2));
        b.start(t);
        b.begin_handover(t, deadline);
        assert_eq!(b.handover_state(), Some(HandoverState::NotMaster));
    }

    #[test]
    fn announcements_repeat_then_refresh_periodically() {
        let mut c = cfg(255);
        c.garp_repeat = 3;
        c.garp_refresh = Some(Duration::from_secs(60));
        c.advert_interval_cs = 4095;
        let mut r = Router::new(c, ip(1));
        let t = Instant::now();
        let acts = r.start(t);
        assert_eq!(
            acts.iter()
                .filter(|a| matches!(a, Action::Announce(_)))
                .count(),
            1
        );
        let mut times = Vec::new();
        for _ in 0..20 {
            let next = r.poll_timeout().unwrap();
            if next > t + Duration::from_secs(121) {
                break;
            }
            if r.handle_timeout(next)
                .iter()
                .any(|a| matches!(a, Action::Announce(_)))
            {
                times.push(next - t);
            }
        }
        assert_eq!(
            times,
            vec![
                Duration::from_millis(10),
                Duration::from_millis(20),
                Duration::from_secs(60),
                Duration::from_secs(120)
            ]
        );
    }

    /// Announcement instants (since `t`) up to `until`, driving the router by its own timers.
    fn announce_times(r: &mut Router, t: Instant, until: Duration) -> Vec<Duration> {
        let mut times = Vec::new();
        for _ in 0..100 {
            let Some(next) = r.poll_timeout() else { break };
            if next > t + until {
                break;
            }
            if r.handle_timeout(next)
                .iter()
                .any(|a| matches!(a, Action::Announce(_)))
            {
                times.push(next - t);
            }
        }
        times
    }

    #[test]
    fn a_second_burst_follows_garp_delay_after_becoming_master_then_the_refresh() {
        let mut c = cfg(255);
        c.garp_repeat = 2;
        c.garp_delay = Some(Duration::from_secs(5));
        c.garp_refresh = Some(Duration::from_secs(60));
        c.advert_interval_cs = 4095;
        let mut r = Router::new(c, ip(1));
        let t = Instant::now();
        r.start(t); // first burst, first announcement at t
        let ms = Duration::from_millis;
        assert_eq!(
            announce_times(&mut r, t, Duration::from_secs(61)),
            vec![ms(10), ms(5000), ms(5010), ms(60_000)]
        );
    }

    #[test]
    fn the_second_burst_is_cancelled_when_mastership_is_lost_first() {
        let mut c = cfg(100);
        c.garp_delay = Some(Duration::from_secs(5));
        let mut r = Router::new(c, ip(1));
        let t = Instant::now();
        r.start(t);
        let t1 = t + r.master_down_interval();
        r.handle_timeout(t1);
        assert_eq!(r.state(), State::Master);
        let acts = r
            .handle_advert(t1 + Duration::from_secs(1), ip(2), &advert(&r, 200))
            .unwrap();
        assert!(acts.contains(&Action::RemoveVips(r.cfg.vips.clone())));
        // The higher-priority master keeps advertising; at t1 + 5s nothing is announced.
        for k in 2..=7 {
            let now = t1 + Duration::from_secs(k);
            let mut acts = r.handle_advert(now, ip(2), &advert(&r, 200)).unwrap();
            acts.extend(r.handle_timeout(now));
            assert!(
                !acts.iter().any(|a| matches!(a, Action::Announce(_))),
                "{acts:?}"
            );
        }
        assert_eq!(r.state(), State::Backup);
    }

    #[test]
    fn link_down_is_fault_without_vips_and_link_up_starts_over_as_backup() {
        let mut r = Router::new(cfg(100), ip(1));
        let t = Instant::now();
        r.start(t);
        let mdi = r.master_down_interval();
        r.handle_timeout(t + mdi);
        assert_eq!(r.state(), State::Master);
        let acts = r.set_link(t + mdi, false);
        assert_eq!(acts[0], Action::RemoveVips(cfg(1).vips));
        assert_eq!(r.state(), State::Fault);
        assert_eq!(r.poll_timeout(), None);
        let acts = r.set_link(t + mdi, true);
        assert_eq!(states(&acts), vec![State::Backup]);
    }

    #[test]
    fn reconfigure_applies_vip_changes_while_master() {
        let mut r = Router::new(cfg(255), ip(1));
        let t = Instant::now();
        r.start(t);
        let mut c = cfg(255);
        let new = Vip {
            addr: "198.18.0.101".parse().unwrap(),
            prefix: 24,
        };
        c.vips = vec![new];
        let acts = r.reconfigure(t, c);
        assert_eq!(
            acts,
            vec![
                Action::RemoveVips(cfg(1).vips),
                Action::AddVips(vec![new]),
                Action::Announce(vec![new]),
                Action::SendAdvert { priority: 255 },
            ]
        );
    }

    #[test]
    fn excluded_vips_follow_mastership_but_never_reach_the_advert() {
        let svc = Vip {
            addr: "198.18.0.200".parse().unwrap(),
            prefix: 32,
        };
        let mut c = cfg(255);
        c.excluded_vips = vec![svc];
        let mut r = Router::new(c.clone(), ip(1));
        let t = Instant::now();
        let acts = r.start(t);
        assert!(acts.contains(&Action::AddVips(c.owned_vips())));
        // A peer advertising only the advertised VIPs is not an address mismatch.
        let mut peer = Router::new(cfg(100), ip(2));
        peer.start(t);
        assert!(peer.handle_advert(t, ip(1), &advert(&r, 255)).is_ok());
        assert!(r.handle_advert(t, ip(2), &advert(&peer, 100)).is_ok());
        // Adding and removing an excluded VIP while master is applied at once.
        let extra = Vip {
            addr: "198.18.0.201".parse().unwrap(),
            prefix: 32,
        };
        let mut c2 = c.clone();
        c2.excluded_vips = vec![extra];
        let acts = r.reconfigure(t, c2);
        assert!(acts.contains(&Action::RemoveVips(vec![svc])));
        assert!(acts.contains(&Action::AddVips(vec![extra])));
        assert!(acts.contains(&Action::Announce(vec![extra])));
        // Releasing drops both kinds.
        let acts = r.shutdown(t);
        assert!(acts.contains(&Action::RemoveVips(vec![cfg(1).vips[0], extra])));
    }

    fn cfg_v2(priority: u8, secs: u16) -> RouterConfig {
        RouterConfig {
            version: Version::V2,
            auth: crate::packet::Auth::pass(b"42"),
            advert_interval_cs: secs * 100,
            ..cfg(priority)
        }
    }

    #[test]
    fn v2_skew_time_is_a_fraction_of_one_second_whatever_the_interval() {
        // RFC 3768 §6.1: Skew_Time = (256 - Priority) / 256 seconds.
        let r = Router::new(cfg_v2(100, 3), ip(1));
        assert_eq!(r.skew_time(), Duration::from_micros(609_375));
        assert_eq!(r.master_down_interval(), Duration::from_micros(9_609_375));
        let r = Router::new(cfg_v2(254, 1), ip(1));
        assert_eq!(r.skew_time(), Duration::from_micros(7_812));
        // v3 at 3s scales the skew with the interval; v2 does not.
        let mut c = cfg(100);
        c.advert_interval_cs = 300;
        assert_eq!(
            Router::new(c, ip(1)).skew_time(),
            Duration::from_micros(1_828_125)
        );
    }

    #[test]
    fn a_v2_backup_takes_over_at_three_intervals_plus_skew() {
        let mut r = Router::new(cfg_v2(150, 1), ip(1));
        let t0 = Instant::now();
        r.start(t0);
        // 3 * 1s + (256 - 150) / 256 s
        let mdi = Duration::from_micros(3_000_000 + 414_062);
        assert_eq!(r.poll_timeout(), Some(t0 + mdi));
        let acts = r.handle_timeout(t0 + mdi);
        assert_eq!(states(&acts), vec![State::Master]);
        assert_eq!(r.poll_timeout(), Some(t0 + mdi + Duration::from_secs(1)));
    }

    #[test]
    fn a_v2_router_does_not_learn_and_drops_another_interval() {
        let mut r = Router::new(cfg_v2(100, 1), ip(1));
        let t = Instant::now();
        r.start(t);
        let before = (r.state(), r.poll_timeout(), r.master_adver_interval());
        let mut other = Router::new(cfg_v2(200, 2), ip(2));
        other.cfg.vips = r.cfg.vips.clone();
        assert_eq!(
            r.handle_advert(t, ip(2), &advert(&other, 200)),
            Err(Ignored::IntervalMismatch)
        );
        // Even priority 0 with the wrong interval is not acted on (keepalived drops it first).
        assert_eq!(
            r.handle_advert(t, ip(2), &advert(&other, 0)),
            Err(Ignored::IntervalMismatch)
        );
        assert_eq!(
            (r.state(), r.poll_timeout(), r.master_adver_interval()),
            before
        );
        // Same interval: accepted; the master down timer restarts from the configured interval.
        let same = Router::new(cfg_v2(200, 1), ip(2));
        let t1 = t + Duration::from_secs(2);
        assert!(r.handle_advert(t1, ip(2), &advert(&same, 200)).is_ok());
        assert_eq!(r.master_adver_interval(), Duration::from_secs(1));
        assert_eq!(r.poll_timeout(), Some(t1 + r.master_down_interval()));
    }

    #[test]
    fn v2_routers_elect_preempt_and_hand_over_like_v3() {
        let mut lan = Lan::new(vec![
            Router::new(cfg_v2(100, 1), ip(1)),
            Router::new(cfg_v2(200, 1), ip(2)),
        ]);
        let t0 = lan.now;
        lan.start_at(0, t0);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.states()[0], State::Master);
        let t1 = lan.now;
        lan.start_at(1, t1);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.states(), vec![State::Backup, State::Master]);
        let (at, _) = lan.transitions_of(1)[1];
        assert_eq!(at - t1, Duration::from_micros(3_000_000 + 218_750));
        // Priority 0 from the leaving master: the backup takes over after Skew_Time.
        let t = lan.now;
        let acts = lan.routers[1].shutdown(t);
        lan.deliver(1, acts);
        lan.run_for(Duration::from_secs(5));
        let (at, st) = *lan.transitions_of(0).last().unwrap();
        assert_eq!(st, State::Master);
        assert_eq!(at - t, Duration::from_micros(609_375));
    }
}
