//! Running checks: one task per check, each with its own interval and timeout, so a hung check
//! (a stuck statvfs on a dead NFS mount, a plugin that never exits) delays nobody else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::HealthMetrics;
use super::outcome::{Outcome, Status};
use super::{kernel_log, log_monitor, plugin, probes};
use crate::config::health::{CheckKind, CheckSpec};

/// One check run, as sent from a check task to the health loop.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// Which spawn of the checks this came from: results of checks replaced by a reload are ignored.
    pub generation: u64,
    /// Index into that generation's checks.
    pub index: usize,
    pub outcome: Outcome,
    pub latency: Duration,
    pub at: Instant,
    /// Events of an NPD log monitor's temporary rules since the last run (reason, message).
    pub events: Vec<(String, String)>,
}

/// Runs a check's probe once, bounded by its timeout.
pub struct Runner {
    spec: CheckSpec,
    kernel: Option<kernel_log::Watcher>,
    log: Option<Arc<log_monitor::Watcher>>,
}

impl Runner {
    /// A runner with its own log monitor reader, if it needs one.
    pub fn new(spec: CheckSpec) -> Runner {
        let log = match &spec.kind {
            CheckKind::LogMonitor { monitor, .. } => {
                Some(log_monitor::Watcher::start(monitor.clone()))
            }
            _ => None,
        };
        Runner::with_log(spec, log)
    }

    /// A runner that shares `log` (one reader per NPD log monitor, whatever its number of checks).
    pub fn with_log(spec: CheckSpec, log: Option<Arc<log_monitor::Watcher>>) -> Runner {
        let kernel = match &spec.kind {
            CheckKind::KernelLog {
                source,
                window,
                patterns,
                max_lines_per_second,
            } => Some(kernel_log::Watcher::start(
                &spec.name,
                source.clone(),
                *window,
                patterns.clone(),
                *max_lines_per_second,
            )),
            _ => None,
        };
        Runner { spec, kernel, log }
    }

    /// Wakes when the log this check reads (an NPD log monitor, the kernel log) had a match, so
    /// detection does not wait for the interval.
    pub fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match (&self.log, &self.kernel) {
            (Some(w), _) => Some(w.changes()),
            (None, Some(k)) => Some(k.changes()),
            _ => None,
        }
    }

    /// The events of the log monitor's temporary rules since the last call (events checks only).
    pub fn take_events(&self) -> Vec<(String, String)> {
        match (&self.spec.kind, &self.log) {
            (
                CheckKind::LogMonitor {
                    condition: None, ..
                },
                Some(w),
            ) => {
                let (events, dropped) = w.take_events();
                if dropped > 0 {
                    tracing::warn!(check = %self.spec.name, dropped, "log monitor events dropped while waiting (more than 256 pending)");
                }
                events
            }
            _ => Vec::new(),
        }
    }

    /// Lines the log monitor's reader took and shed: (read, dropped).
    pub fn log_lines(&self) -> (u64, u64) {
        self.log.as_ref().map_or((0, 0), |w| {
            (
                w.counts.read.load(std::sync::atomic::Ordering::Relaxed),
                w.counts.dropped.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// Kernel log lines matched against the patterns so far, within the rate limit (0 for other
    /// kinds).
    pub fn read_lines(&self) -> u64 {
        self.kernel
            .as_ref()
            .map_or(0, |w| w.read.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Kernel log lines dropped by the rate limit so far (0 for other kinds).
    pub fn dropped_lines(&self) -> u64 {
        self.kernel
            .as_ref()
            .map_or(0, |w| w.dropped.load(std::sync::atomic::Ordering::Relaxed))
    }

    // The kernel-log reader thread stamps lines with the real clock; its window is judged on the same clock.
    #[allow(clippy::disallowed_methods)]
    pub async fn run_once(&self) -> Outcome {
        let spec = &self.spec;
        let probe = async {
            match &spec.kind {
                CheckKind::Memory { min_available } => probes::memory(min_available.clone()).await,
                CheckKind::Disk {
                    path,
                    min_free,
                    min_free_inodes,
                } => probes::disk(path.clone(), min_free.clone(), min_free_inodes.clone()).await,
                CheckKind::Pids {
                    max_used_percent,
                    cgroup,
                } => probes::pids(*max_used_percent, cgroup.clone()).await,
                CheckKind::Readonly { paths } => probes::readonly(paths.clone()).await,
                CheckKind::Clock { server, max_offset } => {
                    probes::clock(server, *max_offset, spec.timeout).await
                }
                CheckKind::Service { services } => probes::services(services, spec.timeout).await,
                CheckKind::LogMonitor { condition, .. } => match (&self.log, condition) {
                    (None, _) => Outcome::unknown("LogMonitorUnavailable", "no log monitor reader"),
                    (Some(w), _) if w.error().is_some() => {
                        Outcome::unknown("LogMonitorUnavailable", w.error().unwrap_or_default())
                    }
                    (Some(w), Some(c)) => w.condition(c),
                    (Some(_), None) => Outcome::ok("", None),
                },
                CheckKind::KernelLog { .. } => match &self.kernel {
                    Some(w) => w.evaluate(Instant::now()),
                    None => Outcome::unknown("KernelLogUnavailable", "no kernel log watcher"),
                },
                CheckKind::Plugin {
                    command,
                    args,
                    max_output_length,
                    problem_reason,
                    concurrency,
                } => {
                    let _permit = match concurrency {
                        Some(l) => l.0.clone().acquire_owned().await.ok(),
                        None => None,
                    };
                    let mut o = plugin::run(command, args, spec.timeout, *max_output_length).await;
                    if o.status == Status::Problem && o.reason.is_empty() {
                        o.reason = problem_reason.clone();
                    }
                    o
                }
            }
        };
        // Plugins enforce their own timeout (they must kill the process group); a little slack here
        // only guards against a probe that ignores it.
        let limit = spec.timeout + Duration::from_millis(500);
        let mut outcome = match tokio::time::timeout(limit, probe).await {
            Ok(o) => o,
            Err(_) => Outcome::unknown(
                "CheckTimeout",
                format!(
                    "check {} did not finish within {:?}",
                    spec.name, spec.timeout
                ),
            ),
        };
        if outcome.reason.is_empty() {
            outcome.reason = match outcome.status {
                Status::Ok => spec.ok_reason.clone(),
                Status::Problem => format!("{}Detected", spec.condition),
                Status::Unknown => "CheckUnknown".into(),
            };
        }
        if outcome.status == Status::Ok && outcome.message.is_empty() {
            outcome.message = spec.ok_message.clone();
        }
        outcome
    }
}

/// Spawns one task per check; results go to `tx` until `cancel` fires. Each task owns its runner, so
/// a kernel-log watcher lives exactly as long as its check.
pub fn spawn_all(
    specs: &[CheckSpec],
    generation: u64,
    tx: mpsc::Sender<CheckResult>,
    metrics: Option<HealthMetrics>,
    cancel: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    // One reader per NPD log monitor, shared by its checks (they hold the same spec).
    let mut readers: Vec<(
        Arc<crate::config::npd::LogMonitorSpec>,
        Arc<log_monitor::Watcher>,
    )> = Vec::new();
    specs
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, spec)| {
            let tx = tx.clone();
            let cancel = cancel.clone();
            let metrics = metrics.clone();
            // The first check of a monitor counts its reader's shed lines (once, not per check).
            let (log, counts_drops) = match &spec.kind {
                CheckKind::LogMonitor { monitor, .. } => {
                    match readers.iter().find(|(m, _)| Arc::ptr_eq(m, monitor)) {
                        Some((_, w)) => (Some(w.clone()), false),
                        None => {
                            let w = log_monitor::Watcher::start(monitor.clone());
                            readers.push((monitor.clone(), w.clone()));
                            (Some(w), true)
                        }
                    }
                }
                _ => (None, false),
            };
            tokio::spawn(async move {
                let interval = spec.interval;
                let name = spec.name.clone();
                let mut dropped_seen = 0u64;
                let runner = Runner::with_log(spec, log);
                let mut changes = runner.changes();
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let changed = async {
                        match changes.as_mut() {
                            Some(c) => {
                                if c.changed().await.is_err() {
                                    std::future::pending::<()>().await;
                                }
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                        _ = changed => {}
                    }
                    let started = tokio::time::Instant::now().into_std();
                    let outcome = tokio::select! {
                        _ = cancel.cancelled() => return,
                        o = runner.run_once() => o,
                    };
                    let events = runner.take_events();
                    let mut dropped = runner.dropped_lines();
                    if counts_drops {
                        dropped += runner.log_lines().1;
                    }
                    if let (Some(m), true) = (&metrics, dropped > dropped_seen) {
                        m.kernel_lines_dropped
                            .with_label_values(&[&name])
                            .inc_by((dropped - dropped_seen) as f64);
                        dropped_seen = dropped;
                    }
                    let result = CheckResult {
                        generation,
                        index,
                        outcome,
                        latency: started.elapsed(),
                        at: tokio::time::Instant::now().into_std(),
                        events,
                    };
                    if tx.send(result).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect()
}
