//! Running checks: one task per check, each with its own interval and timeout, so a hung check
//! (a stuck statvfs on a dead NFS mount, a plugin that never exits) delays nobody else.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::HealthMetrics;
use super::outcome::{Outcome, Status};
use super::{kernel_log, plugin, probes};
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
}

/// Runs a check's probe once, bounded by its timeout.
pub struct Runner {
    spec: CheckSpec,
    kernel: Option<kernel_log::Watcher>,
}

impl Runner {
    pub fn new(spec: CheckSpec) -> Runner {
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
        Runner { spec, kernel }
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
    specs
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, spec)| {
            let tx = tx.clone();
            let cancel = cancel.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let interval = spec.interval;
                let name = spec.name.clone();
                let mut dropped_seen = 0u64;
                let runner = Runner::new(spec);
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let started = tokio::time::Instant::now().into_std();
                    let outcome = tokio::select! {
                        _ = cancel.cancelled() => return,
                        o = runner.run_once() => o,
                    };
                    let dropped = runner.dropped_lines();
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
                    };
                    if tx.send(result).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect()
}
