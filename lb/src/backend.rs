//! A backend as the data plane sees it: address, weight, operator state, health, and the number of
//! connections it carries. One `Backend` lives as long as the config keeps it (reloads reuse it, so
//! health and connection counts survive a reload); everything the hot path reads is an atomic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};

use crate::config::AdminState;
use crate::events::{Events, Kind};
use crate::metrics::BackendMetrics;

pub struct Backend {
    pub addr: SocketAddr,
    pub pool: String,
    weight: AtomicU32,
    state: AtomicU8,
    healthy: AtomicBool,
    active: AtomicUsize,
    /// Rise/fall counting and what the status page shows about checks; touched by health checks
    /// and failed connects only, never on success paths.
    check: Mutex<(HealthState, CheckLog)>,
    /// Per-backend series; None for Services' pools, whose Services x ports x nodes would swamp
    /// /metrics (their frontends, pools and checks still have series).
    pub metrics: Option<BackendMetrics>,
    /// Woken on every health transition so the control plane can recompute pool health (VRRP).
    changed: Option<Arc<Notify>>,
    /// Health as a channel, for sessions that are cut when their backend is marked down.
    up: watch::Sender<bool>,
    /// Up/down transitions go to the status page's recent events.
    events: Option<Arc<Events>>,
}

/// One result fed into rise/fall.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    CheckPassed,
    CheckFailed(&'a str),
    /// A proxied connection could not connect (passive check).
    ConnectFailed,
}

/// What the status page says about a backend's checks. Times are wall clock for display; the
/// downtime is measured on the monotonic clock.
#[derive(Debug, Clone, Default)]
pub struct CheckLog {
    pub checks: u64,
    pub failed_checks: u64,
    pub last: Option<LastCheck>,
    /// Transitions to down.
    pub downs: u64,
    pub last_change: Option<SystemTime>,
    /// Down time of finished down spans.
    downtime: Duration,
    down_since: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct LastCheck {
    pub at: SystemTime,
    pub ok: bool,
    /// Empty when it passed.
    pub reason: String,
}

impl CheckLog {
    /// Time spent down since this backend was configured, the current span included.
    pub fn downtime(&self, now: Instant) -> Duration {
        self.downtime + self.down_since.map_or(Duration::ZERO, |t| now - t)
    }
}

impl Backend {
    pub fn new(
        pool: &str,
        addr: SocketAddr,
        weight: u32,
        state: AdminState,
        metrics: Option<BackendMetrics>,
        changed: Arc<Notify>,
        events: Arc<Events>,
    ) -> Backend {
        let b = Backend {
            addr,
            pool: pool.to_string(),
            weight: AtomicU32::new(weight),
            state: AtomicU8::new(state as u8),
            // Optimistic start: serve at once; a dead backend costs one failed connect (retried
            // elsewhere) and is ejected after `fall` failures.
            healthy: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            check: Mutex::new((HealthState::new(true), CheckLog::default())),
            metrics,
            changed: Some(changed),
            up: watch::Sender::new(true),
            events: Some(events),
        };
        if let Some(m) = &b.metrics {
            m.up.set(1);
        }
        b
    }

    /// A backend outside any server (tests).
    pub fn new_detached(addr: SocketAddr, weight: u32, state: AdminState) -> Backend {
        Backend {
            addr,
            pool: "test".into(),
            weight: AtomicU32::new(weight),
            state: AtomicU8::new(state as u8),
            healthy: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            check: Mutex::new((HealthState::new(true), CheckLog::default())),
            metrics: None,
            changed: None,
            up: watch::Sender::new(true),
            events: None,
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> AdminState {
        match self.state.load(Ordering::Relaxed) {
            0 => AdminState::Active,
            1 => AdminState::Drain,
            _ => AdminState::Disabled,
        }
    }

    /// Applied on reload, before the new pool version (and its tables) is published.
    pub fn update(&self, weight: u32, state: AdminState) {
        self.weight.store(weight, Ordering::Relaxed);
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Operator wants it to take new connections (health aside).
    pub fn in_rotation(&self) -> bool {
        self.state() == AdminState::Active
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// May take a new connection now.
    pub fn available(&self) -> bool {
        self.in_rotation() && self.healthy()
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Relaxed);
        self.up.send_replace(up);
        if let Some(m) = &self.metrics {
            m.up.set(i64::from(up));
        }
        if let Some(n) = &self.changed {
            n.notify_one();
        }
    }

    /// Feeds one check (or connect) result in; returns the new state on a transition.
    pub fn record(&self, seen: Seen<'_>, rise: u32, fall: u32) -> Option<bool> {
        let success = matches!(seen, Seen::CheckPassed);
        let transition = {
            let mut g = self.check.lock().unwrap_or_else(|p| p.into_inner());
            let (health, log) = &mut *g;
            let now = SystemTime::now();
            let reason = match seen {
                Seen::CheckPassed => "",
                Seen::CheckFailed(why) => why,
                Seen::ConnectFailed => "a proxied connection could not connect",
            };
            if !matches!(seen, Seen::ConnectFailed) {
                log.checks += 1;
                log.failed_checks += u64::from(!success);
            }
            // Only a change of outcome allocates: a steady backend costs no string per check.
            let same = log
                .last
                .as_ref()
                .is_some_and(|l| l.ok == success && l.reason == reason);
            match &mut log.last {
                Some(l) if same => l.at = now,
                last => {
                    *last = Some(LastCheck {
                        at: now,
                        ok: success,
                        reason: reason.to_string(),
                    })
                }
            }
            let t = health.record(success, rise, fall);
            if let Some(up) = t {
                log.last_change = Some(now);
                let mono = Instant::now();
                if up {
                    if let Some(since) = log.down_since.take() {
                        log.downtime += mono - since;
                    }
                } else {
                    log.downs += 1;
                    log.down_since = Some(mono);
                }
                if let Some(e) = &self.events {
                    let subject = format!("{}/{}", self.pool, self.addr);
                    if up {
                        e.push(Kind::Backend, subject, "UP: health checks pass");
                    } else {
                        e.push(Kind::Backend, subject, format!("DOWN: {reason}"));
                    }
                }
            }
            t
        };
        if let Some(up) = transition {
            self.set_healthy(up);
        }
        transition
    }

    /// A health check has passed at least once since this backend was configured (it is taken as
    /// up before its first check; BGP waits for one before announcing).
    pub fn passed_a_check(&self) -> bool {
        let log = &self.check.lock().unwrap_or_else(|p| p.into_inner()).1;
        log.checks > log.failed_checks
    }

    /// What the checks found so far (the status page).
    pub fn check_log(&self) -> CheckLog {
        self.check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Resolves once this backend has been marked down and stayed down for `grace` (a backend
    /// that comes back within the grace starts the wait over); never while it stays up.
    pub async fn down_for(&self, grace: std::time::Duration) {
        let mut rx = self.up.subscribe();
        loop {
            if rx.wait_for(|up| !*up).await.is_err() {
                return std::future::pending().await;
            }
            // The guard `wait_for` returns is not Send: keep only whether the wait ended well.
            let back =
                tokio::time::timeout(grace, async { rx.wait_for(|up| *up).await.is_ok() }).await;
            match back {
                Err(_) => return,
                Ok(true) => continue,
                Ok(false) => return std::future::pending().await,
            }
        }
    }

    /// Counts a connection for least-connections and metrics until the guard drops.
    pub fn connection_started(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.current.inc();
            m.total.inc();
        }
        ConnGuard(self.clone())
    }
}

pub struct ConnGuard(Arc<Backend>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(m) = &self.0.metrics {
            m.current.dec();
        }
    }
}

/// Rise/fall counting without I/O: `fall` consecutive failures take an up backend down, `rise`
/// consecutive successes bring a down backend back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    pub up: bool,
    streak: u32,
}

impl HealthState {
    pub fn new(up: bool) -> HealthState {
        HealthState { up, streak: 0 }
    }

    pub fn record(&mut self, success: bool, rise: u32, fall: u32) -> Option<bool> {
        if success == self.up {
            // Result agrees with the current state: any streak towards a change is broken.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak >= needed.max(1) {
            self.up = success;
            self.streak = 0;
            Some(success)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_down_after_fall_failures_and_up_after_rise_successes() {
        let mut s = HealthState::new(true);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), Some(false));
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), Some(true));
    }

    #[test]
    fn a_backend_is_up_before_its_first_check_but_has_passed_none() {
        let b = Backend::new_detached("198.18.0.1:80".parse().unwrap(), 1, AdminState::Active);
        assert!(b.available() && !b.passed_a_check());
        b.record(Seen::CheckFailed("refused"), 2, 3);
        assert!(b.available() && !b.passed_a_check());
        b.record(Seen::CheckPassed, 2, 3);
        assert!(b.passed_a_check());
        // Failures short of `fall` keep it available and checked.
        b.record(Seen::CheckFailed("refused"), 2, 3);
        b.record(Seen::CheckFailed("refused"), 2, 3);
        assert!(b.available() && b.passed_a_check());
    }

    #[tokio::test]
    async fn sessions_wait_for_down_plus_grace_and_a_recovery_restarts_the_wait() {
        use std::time::{Duration, Instant};
        let ms = Duration::from_millis;
        let b = Arc::new(Backend::new_detached(
            "10.0.0.1:80".parse().unwrap(),
            1,
            AdminState::Active,
        ));
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.down_for(ms(300)).await }
        });
        tokio::time::sleep(ms(400)).await;
        assert!(!waiter.is_finished(), "cut while the backend is up");
        b.set_healthy(false);
        tokio::time::sleep(ms(100)).await;
        b.set_healthy(true);
        tokio::time::sleep(ms(400)).await;
        assert!(
            !waiter.is_finished(),
            "cut though it came back within the grace"
        );
        let down = Instant::now();
        b.set_healthy(false);
        tokio::time::timeout(ms(2000), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(down.elapsed() >= ms(300), "{:?}", down.elapsed());
    }

    #[test]
    fn the_check_log_keeps_the_reason_downs_and_downtime() {
        let b = Backend::new_detached("10.0.0.1:80".parse().unwrap(), 1, AdminState::Active);
        assert!(b.check_log().last.is_none());
        b.record(Seen::CheckPassed, 1, 2);
        b.record(Seen::CheckFailed("connect: refused"), 1, 2);
        assert!(b.healthy(), "one failure of fall 2");
        b.record(Seen::CheckFailed("connect: refused"), 1, 2);
        assert!(!b.healthy());
        let log = b.check_log();
        assert_eq!((log.checks, log.failed_checks, log.downs), (3, 2, 1));
        let last = log.last.unwrap();
        assert!(!last.ok);
        assert_eq!(last.reason, "connect: refused");
        assert!(log.last_change.is_some());
        std::thread::sleep(std::time::Duration::from_millis(30));
        // A failed proxied connect is not a check, but is the latest thing seen.
        b.record(Seen::ConnectFailed, 1, 2);
        assert_eq!(b.check_log().checks, 3);
        assert!(b.check_log().last.unwrap().reason.contains("proxied"));
        b.record(Seen::CheckPassed, 1, 2);
        let log = b.check_log();
        assert!(b.healthy());
        let down = log.downtime(Instant::now());
        assert!(down >= std::time::Duration::from_millis(30), "{down:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            log.downtime(Instant::now()),
            down,
            "no longer growing once up"
        );
        assert!(log.last.unwrap().ok);
    }

    #[test]
    fn a_single_contrary_result_resets_the_streak() {
        let mut s = HealthState::new(true);
        s.record(false, 2, 2);
        s.record(true, 2, 2);
        assert_eq!(s.record(false, 2, 2), None);
        assert_eq!(s.record(false, 2, 2), Some(false));
        s.record(true, 2, 2);
        s.record(false, 2, 2);
        assert_eq!(s.record(true, 2, 2), None);
        assert_eq!(s.record(true, 2, 2), Some(true));
    }
}
