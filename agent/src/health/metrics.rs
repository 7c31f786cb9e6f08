//! Health metrics, registered into the agent's one prometheus Registry.

use prometheus::{
    CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry,
};

use super::outcome::Status;

#[derive(Clone)]
pub struct HealthMetrics {
    pub check_status: IntGaugeVec,
    pub check_value: GaugeVec,
    pub check_duration: HistogramVec,
    pub check_runs: IntCounterVec,
    pub condition: IntGaugeVec,
    pub taint_applied: IntGaugeVec,
    pub taint_errors: IntCounterVec,
    pub api_writes: IntCounterVec,
    pub drain_pods: IntGaugeVec,
    pub evictions: IntCounterVec,
    pub kernel_lines_dropped: CounterVec,
    pub orchestrator_requests: IntCounterVec,
    pub client_swaps: IntCounter,
    /// node-problem-detector's own series, under its names, for the checks read from NPD configs:
    /// dashboards and alerts built on NPD keep working. (promtool's lint dislikes the names; they
    /// are NPD's, kept as they are.)
    pub problem_counter: IntCounterVec,
    pub problem_gauge: IntGaugeVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: T,
) -> prometheus::Result<T> {
    match r.register(Box::new(c.clone())) {
        Ok(()) => Ok(c),
        Err(e) => Err(e),
    }
}

impl HealthMetrics {
    /// Registers every health metric. Fails only if the names are already registered (a second
    /// `run` on the same registry).
    pub fn register(r: &Registry) -> prometheus::Result<HealthMetrics> {
        Ok(HealthMetrics {
            check_status: reg(r, IntGaugeVec::new(
                Opts::new("keel_agent_check_status", "1 for the check's current status (ok, problem, unknown), 0 for the others"),
                &["check", "status"],
            )?)?,
            check_value: reg(r, GaugeVec::new(
                Opts::new("keel_agent_check_value", "The value a check measured last (bytes free, percent used, offset seconds, exit code)"),
                &["check"],
            )?)?,
            check_duration: reg(r, HistogramVec::new(
                HistogramOpts::new("keel_agent_check_duration_seconds", "How long one check run took")
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
                &["check"],
            )?)?,
            check_runs: reg(r, IntCounterVec::new(
                Opts::new("keel_agent_check_runs_total", "Check runs by outcome"),
                &["check", "status"],
            )?)?,
            condition: reg(r, IntGaugeVec::new(
                Opts::new("keel_agent_node_condition", "1 for a Node condition's current status (True, False, Unknown), 0 for the others"),
                &["condition", "status"],
            )?)?,
            taint_applied: reg(r, IntGaugeVec::new(
                Opts::new("keel_agent_taint_applied", "1 while the taint policy's taint is on the Node"),
                &["taint"],
            )?)?,
            taint_errors: reg(r, IntCounterVec::new(
                Opts::new("keel_agent_taint_apply_errors_total", "Failed taint updates by cause"),
                &["cause"],
            )?)?,
            api_writes: reg(r, IntCounterVec::new(
                Opts::new("keel_agent_health_api_writes_total", "Node status and Event writes by kind and result"),
                &["kind", "result"],
            )?)?,
            drain_pods: reg(r, IntGaugeVec::new(
                Opts::new("keel_agent_drain_pods", "Pods of the current or last drain by state"),
                &["state"],
            )?)?,
            evictions: reg(r, IntCounterVec::new(
                Opts::new("keel_agent_evictions_total", "Eviction requests by result"),
                &["result"],
            )?)?,
            kernel_lines_dropped: reg(r, CounterVec::new(
                Opts::new("keel_agent_kernel_log_lines_dropped_total", "Kernel log lines not matched because of the rate limit"),
                &["check"],
            )?)?,
            orchestrator_requests: reg(r, IntCounterVec::new(
                Opts::new("keel_agent_orchestrator_requests_total", "Orchestrator API requests by path and status code"),
                &["path", "code"],
            )?)?,
            client_swaps: reg(r, IntCounter::new(
                "keel_agent_health_client_renewals_total",
                "Renewed node certificates node health switched to in place (without restarting)",
            )?)?,
            problem_counter: reg(r, IntCounterVec::new(
                Opts::new("problem_counter", "Number of times a specific type of problem have occurred."),
                &["reason"],
            )?)?,
            problem_gauge: reg(r, IntGaugeVec::new(
                Opts::new("problem_gauge", "Whether a specific type of problem is affecting the node or not."),
                &["type", "reason"],
            )?)?,
        })
    }

    pub fn record_check(&self, check: &str, status: Status, value: Option<f64>, secs: f64) {
        for s in [Status::Ok, Status::Problem, Status::Unknown] {
            self.check_status
                .with_label_values(&[check, s.as_str()])
                .set((s == status) as i64);
        }
        if let Some(v) = value {
            self.check_value.with_label_values(&[check]).set(v);
        }
        self.check_duration
            .with_label_values(&[check])
            .observe(secs);
        self.check_runs
            .with_label_values(&[check, status.as_str()])
            .inc();
    }

    pub fn record_condition(&self, condition: &str, status: &str) {
        for s in ["True", "False", "Unknown"] {
            self.condition
                .with_label_values(&[condition, s])
                .set((s == status) as i64);
        }
    }
}
