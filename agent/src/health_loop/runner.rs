//! The health loop: receives check results, keeps the condition book and the taint policy, feeds the
//! writer tasks, answers orchestrator commands and reloads. It never awaits the API server itself
//! (writers do), so commands and results are always handled promptly.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::report;
use super::HealthContext;
use crate::config::health::{CheckSpec, HealthConfig, Report};
use crate::health::check::{self, CheckResult};
use crate::health::conditions::{Book, Transition};
use crate::health::metrics::HealthMetrics;
use crate::health::outcome::{Outcome, Status};
use crate::ops::command::{Command, CommandError};
use crate::ops::drain;
use crate::ops::status::{CheckView, SharedStatus};
use crate::ops::taints::{self, DesiredTaint, Policy};

/// Builds a client from a kubeconfig file (the privileged identity for taints): the agent's one
/// kubeconfig client (`apiclient::from_kubeconfig_file`), with its timeouts and without kube's
/// hidden 429/503/504 retries.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    Ok(crate::apiclient::from_kubeconfig_file(path).await?)
}

fn check_views(specs: &[CheckSpec]) -> Vec<CheckView> {
    specs
        .iter()
        .map(|s| CheckView {
            name: s.name.clone(),
            condition: s.condition.clone(),
            status: "pending",
            ..Default::default()
        })
        .collect()
}

struct Loop {
    node: String,
    config: HealthConfig,
    book: Book,
    policy: Policy,
    metrics: HealthMetrics,
    status: SharedStatus,
    conditions_tx: watch::Sender<Vec<crate::health::conditions::ConditionView>>,
    taints_tx: watch::Sender<Vec<DesiredTaint>>,
    events_tx: Option<mpsc::Sender<Transition>>,
    policy_wake: Option<Instant>,
    /// NPD's `problem_gauge`: the reason currently at 1 per condition.
    npd_gauge: std::collections::BTreeMap<String, String>,
}

impl Loop {
    // Condition transition times are wall time for the API server.
    #[allow(clippy::disallowed_methods)]
    fn on_result(&mut self, spec: &CheckSpec, r: &CheckResult) {
        let o: &Outcome = &r.outcome;
        self.metrics
            .record_check(&spec.name, o.status, o.value, r.latency.as_secs_f64());
        tracing::debug!(check = %spec.name, status = o.status.as_str(), reason = %o.reason,
            message = %o.message, latency_ms = r.latency.as_millis() as u64, "check ran");
        let transition = match spec.report {
            Report::Condition => {
                self.book
                    .observe(&spec.name, &spec.condition, o, SystemTime::now())
            }
            Report::Event => self.book.observe_event(&spec.name, &spec.condition, o),
        };
        let npd = !spec.npd_rules().is_empty();
        if npd {
            self.record_npd(spec, o, transition.as_ref(), &r.events);
        }
        for (reason, message) in &r.events {
            // A temporary rule of an NPD log monitor matched: one Event per match, as NPD.
            tracing::info!(node = %self.node, check = %spec.name, reason = %reason, message = %message, "log monitor event");
            let ev = Transition {
                condition: spec.condition.clone(),
                from: None,
                to: "Event".into(),
                reason: reason.clone(),
                message: message.clone(),
                warning: true,
            };
            if let Some(tx) = &self.events_tx {
                if tx.try_send(ev).is_err() {
                    self.metrics
                        .api_writes
                        .with_label_values(&["event", "dropped"])
                        .inc();
                }
            }
        }
        if let Some(tr) = transition {
            tracing::info!(node = %self.node, check = %spec.name, condition = %tr.condition,
                from = ?tr.from, to = %tr.to, reason = %tr.reason, message = %tr.message,
                "condition changed");
            if let Some(tx) = &self.events_tx {
                if tx.try_send(tr).is_err() {
                    self.metrics
                        .api_writes
                        .with_label_values(&["event", "dropped"])
                        .inc();
                }
            }
        }
        if spec.report == Report::Condition {
            if let Some(st) = self.book.status_of(&spec.condition) {
                self.metrics.record_condition(&spec.condition, st);
            }
        }
        let view = CheckView {
            name: spec.name.clone(),
            condition: spec.condition.clone(),
            status: o.status.as_str(),
            reason: o.reason.clone(),
            message: o.message.clone(),
            latency_ms: r.latency.as_millis() as u64,
            runs: 0,
        };
        self.status.update(|s| {
            if let Some(c) = s.checks.get_mut(r.index) {
                let runs = c.runs + 1;
                *c = CheckView { runs, ..view };
            }
        });
    }

    /// node-problem-detector's series for a check read from an NPD config: `problem_counter{reason}`
    /// counts its events (temporary matches and condition changes to True), `problem_gauge{type,
    /// reason}` is 1 for the reason a condition is True with (upstream `log_monitor.go`).
    fn record_npd(
        &mut self,
        spec: &CheckSpec,
        o: &Outcome,
        transition: Option<&Transition>,
        events: &[(String, String)],
    ) {
        let m = &self.metrics;
        for (reason, _) in events {
            m.problem_counter.with_label_values(&[reason]).inc();
        }
        match spec.report {
            Report::Event => {
                if let Some(tr) = transition {
                    m.problem_counter.with_label_values(&[&tr.reason]).inc();
                }
            }
            Report::Condition => {
                if let Some(tr) = transition.filter(|t| t.to == "True") {
                    m.problem_counter.with_label_values(&[&tr.reason]).inc();
                }
                let now = (o.status == Status::Problem).then(|| o.reason.clone());
                let prev = self.npd_gauge.get(&spec.condition).cloned();
                if prev != now {
                    if let Some(p) = &prev {
                        m.problem_gauge
                            .with_label_values(&[&spec.condition, p])
                            .set(0);
                    }
                    match &now {
                        Some(r) => {
                            m.problem_gauge
                                .with_label_values(&[&spec.condition, r])
                                .set(1);
                            self.npd_gauge.insert(spec.condition.clone(), r.clone());
                        }
                        None => {
                            self.npd_gauge.remove(&spec.condition);
                        }
                    }
                }
            }
        }
    }

    /// Timers and outputs after any input: policy, condition writes, status.
    fn settle(&mut self, now: Instant) {
        let book = &self.book;
        let (desired, wake) = self
            .policy
            .update(&|c| book.status_of(c).map(str::to_string), now);
        self.policy_wake = wake;
        self.taints_tx.send_if_modified(|cur| {
            if *cur != desired {
                tracing::info!(node = %self.node, taints = ?desired.iter().map(DesiredTaint::id).collect::<Vec<_>>(),
                    "taint policy changed its desired taints");
                *cur = desired.clone();
                true
            } else {
                false
            }
        });
        if self.book.due(now) {
            let snap = self.book.snapshot();
            self.status.update(|s| {
                s.conditions = snap.clone();
                s.taints.desired = desired.clone();
            });
            self.conditions_tx.send_replace(snap);
            self.book.mark_sent(now);
        } else {
            self.status.update(|s| s.taints.desired = desired);
        }
    }

    fn next_wake(&self) -> Instant {
        let mut at = tokio::time::Instant::now().into_std() + Duration::from_secs(1);
        if let Some(w) = self.policy_wake {
            at = at.min(w);
        }
        if let Some(r) = self.book.next_refresh() {
            at = at.min(r);
        }
        at
    }
}

pub async fn run(ctx: HealthContext, cancel: CancellationToken) -> anyhow::Result<()> {
    let HealthContext {
        config,
        node_name: node,
        client,
        privileged,
        registry,
        join_status,
        publish,
        reload,
        node_shutdown,
    } = ctx;
    let metrics = HealthMetrics::register(&registry).context("registering health metrics")?;
    let status = SharedStatus::default();
    status.update(|s| {
        s.node = node.clone();
        s.checks = check_views(&config.checks);
    });
    let tasks = CancellationToken::new();
    let _stop_tasks = tasks.clone().drop_guard();

    let mut book = Book::new(config.refresh);
    let mut policy = Policy::new(config.taints.clone());
    let (conditions_tx, conditions_rx) = watch::channel(Vec::new());
    let (taints_tx, taints_rx) = watch::channel(Vec::new());
    let mut events_tx = None;

    if let Some(node_client) = &client {
        let client = node_client.borrow().clone();
        // Seed from the Node: keep transition times across restarts and remember our taints.
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
        match nodes.get(&node).await {
            Ok(n) => {
                let ours: BTreeSet<&str> =
                    config.checks.iter().map(|c| c.condition.as_str()).collect();
                for c in report::node_conditions(&n) {
                    if ours.contains(c.kind.as_str()) {
                        book.seed(c);
                    }
                }
                policy.adopt(&taints::owned_from(&n));
                status.update(|s| {
                    s.cordoned = Some(
                        n.spec
                            .as_ref()
                            .and_then(|s| s.unschedulable)
                            .unwrap_or(false),
                    )
                });
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "cannot read own Node; starting without its conditions")
            }
        }
        tokio::spawn(report::status_writer(
            node_client.clone(),
            node.clone(),
            conditions_rx,
            metrics.clone(),
            status.clone(),
            tasks.clone(),
        ));
        let (etx, erx) = mpsc::channel(64);
        events_tx = Some(etx);
        tokio::spawn(report::event_writer(
            node_client.clone(),
            node.clone(),
            erx,
            metrics.clone(),
            tasks.clone(),
        ));
        if !config.taints.is_empty() {
            let (taint_client, is_privileged) = match (&privileged, &config.privileged_kubeconfig) {
                (Some(p), _) => (super::fixed_client(p.clone()), true),
                (None, Some(path)) => match client_from_kubeconfig(path).await {
                    Ok(p) => (super::fixed_client(p), true),
                    Err(e) => {
                        tracing::error!(node = %node, error = %format!("{e:#}"),
                            "privileged credential unusable; taints will be tried with the node identity");
                        (node_client.clone(), false)
                    }
                },
                (None, None) => {
                    tracing::warn!(node = %node,
                        "no health.privileged_kubeconfig: NodeRestriction will refuse taint changes by the node identity; conditions are still reported");
                    (node_client.clone(), false)
                }
            };
            tokio::spawn(report::taint_writer(
                taint_client,
                is_privileged,
                node.clone(),
                taints_rx,
                config.refresh,
                metrics.clone(),
                status.clone(),
                tasks.clone(),
            ));
        }
    }

    if let Some(publish) = publish {
        tokio::spawn(publisher(status.clone(), publish, tasks.clone()));
    }

    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(8);
    if let Some(api) = &config.api {
        let server = crate::ops::orchestrator::Server::bind(
            api,
            cmd_tx.clone(),
            status.clone(),
            join_status.clone(),
            metrics.clone(),
        )
        .await
        .context("starting the orchestrator API")?;
        tokio::spawn(server.serve(tasks.clone()));
    }

    let (results_tx, mut results_rx) = mpsc::channel::<CheckResult>(256);
    let mut generation = 0u64;
    let mut checks_cancel = tasks.child_token();
    let mut specs = config.checks.clone();
    init_npd_metrics(&metrics, &specs);
    check::spawn_all(
        &specs,
        generation,
        results_tx.clone(),
        Some(metrics.clone()),
        checks_cancel.clone(),
    );
    tracing::info!(node = %node, checks = specs.len(), taint_rules = config.taints.len(), "node health started");

    let mut lp = Loop {
        node: node.clone(),
        config,
        book,
        policy,
        metrics: metrics.clone(),
        status: status.clone(),
        conditions_tx,
        taints_tx,
        events_tx,
        policy_wake: None,
        npd_gauge: Default::default(),
    };
    let mut drain_task: Option<tokio::task::JoinHandle<()>> = None;
    // Watches renewals only to count and log them: the writers read the channel themselves.
    let mut swaps = client.clone();
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("SIGHUP handler")?;

    loop {
        #[cfg(unix)]
        let sighup = hangup.recv();
        #[cfg(not(unix))]
        let sighup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = cancel.cancelled() => {
                tracing::info!(node = %node, "node health stopping");
                return Ok(());
            }
            changed = renewed(&mut swaps) => {
                if changed {
                    metrics.client_swaps.inc();
                    tracing::info!(node = %node, "node health uses the renewed certificate (no restart)");
                } else {
                    // The renewal side has stopped: nothing more will be swapped in.
                    swaps = None;
                }
            }
            _ = node_shutdown.cancelled() => {
                checks_cancel.cancel();
                // on_stop: the signal handler fired this for a plain stop; it drains at shutdown too.
                if lp.config.drain.on_shutdown || lp.config.drain.on_stop {
                    if let Some(client) = &current(&client) {
                        tracing::info!(node = %node, "node is shutting down: draining");
                        let st = status.clone();
                        let m = metrics.clone();
                        let r = drain::drain(client, &node, &lp.config.drain, &|p| record_drain(&st, &m, p)).await;
                        match r {
                            Ok(p) => tracing::info!(node = %node, evicted = p.evicted, skipped = p.skipped, "shutdown drain done"),
                            Err(e) => tracing::error!(node = %node, error = %e, "shutdown drain incomplete"),
                        }
                    }
                }
                return Ok(());
            }
            Some(r) = results_rx.recv() => {
                if r.generation == generation {
                    if let Some(spec) = specs.get(r.index) {
                        let spec = spec.clone();
                        lp.on_result(&spec, &r);
                    }
                }
                lp.settle(tokio::time::Instant::now().into_std());
            }
            Some(cmd) = cmd_rx.recv() => {
                match cmd {
                    Command::Cordon(reply) | Command::Uncordon(reply) if client.is_none() => {
                        let _ = reply.send(Err(CommandError::Unavailable("no cluster connection".into())));
                    }
                    Command::Cordon(reply) => spawn_cordon(current(&client), node.clone(), true, status.clone(), reply),
                    Command::Uncordon(reply) => spawn_cordon(current(&client), node.clone(), false, status.clone(), reply),
                    Command::Drain(reply) => {
                        let Some(c) = current(&client) else {
                            let _ = reply.send(Err(CommandError::Unavailable("no cluster connection".into())));
                            continue;
                        };
                        if drain_task.as_ref().is_some_and(|t| !t.is_finished()) {
                            let _ = reply.send(Err(CommandError::Conflict("a drain is already running".into())));
                            continue;
                        }
                        let (n, cfg, st, m) = (node.clone(), lp.config.drain.clone(), status.clone(), metrics.clone());
                        drain_task = Some(tokio::spawn(async move {
                            match drain::drain(&c, &n, &cfg, &|p| record_drain(&st, &m, p)).await {
                                Ok(p) => tracing::info!(node = %n, evicted = p.evicted, skipped = p.skipped, "drain done"),
                                Err(e) => tracing::error!(node = %n, error = %e, "drain incomplete"),
                            }
                        }));
                        status.update(|s| s.cordoned = Some(true));
                        let _ = reply.send(Ok("drain started".into()));
                    }
                    Command::Reload(reply) => {
                        let r = do_reload(&reload, &mut lp, &mut specs, &mut generation, &mut checks_cancel, &tasks, &results_tx);
                        let _ = reply.send(r);
                    }
                }
            }
            s = sighup => {
                if s.is_some() {
                    if let Err(e) = do_reload(&reload, &mut lp, &mut specs, &mut generation, &mut checks_cancel, &tasks, &results_tx) {
                        tracing::error!(node = %node, error = %e, "reload on SIGHUP refused; running config kept");
                    }
                }
            }
            _ = tokio::time::sleep_until(lp.next_wake().into()) => lp.settle(tokio::time::Instant::now().into_std()),
        }
    }
}

/// The node client as of now (a command runs with the certificate current when it starts).
fn current(client: &Option<super::NodeClient>) -> Option<kube::Client> {
    client.as_ref().map(|rx| rx.borrow().clone())
}

/// Resolves `true` when a renewed client was sent, `false` when the sender is gone; never when
/// there is no channel.
async fn renewed(rx: &mut Option<super::NodeClient>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Hands the health status to `publish` when it changed, at most once a second (a check result
/// must not cost a file write), and a last time when the loop stops.
async fn publisher(status: SharedStatus, publish: super::PublishFn, cancel: CancellationToken) {
    let mut last = serde_json::Value::Null;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = cancel.cancelled() => true,
        };
        let now = serde_json::to_value(status.snapshot()).unwrap_or_default();
        if now != last {
            publish(now.clone());
            last = now;
        }
        if stop {
            return;
        }
    }
}

/// NPD's series exist from the start, at 0, for every rule of the NPD configs (as NPD's do), so a
/// dashboard or an alert sees 0 rather than no data.
fn init_npd_metrics(m: &HealthMetrics, specs: &[CheckSpec]) {
    for spec in specs {
        for (condition, reason) in spec.npd_rules() {
            m.problem_counter.with_label_values(&[&reason]);
            if let Some(c) = condition {
                m.problem_gauge.with_label_values(&[&c, &reason]);
            }
        }
    }
}

fn record_drain(status: &SharedStatus, m: &HealthMetrics, p: &drain::Progress) {
    for (state, n) in [
        ("pending", p.pending),
        ("evicted", p.evicted),
        ("skipped", p.skipped),
        ("failed", p.failed.len()),
    ] {
        m.drain_pods.with_label_values(&[state]).set(n as i64);
    }
    let p = p.clone();
    status.update(|s| s.drain = Some(p));
}

fn spawn_cordon(
    client: Option<kube::Client>,
    node: String,
    on: bool,
    status: SharedStatus,
    reply: oneshot::Sender<Result<String, CommandError>>,
) {
    let Some(client) = client else { return };
    tokio::spawn(async move {
        let r = drain::set_unschedulable(&client, &node, on).await;
        let r = match r {
            Ok(()) => {
                tracing::info!(node = %node, unschedulable = on, "cordon state set");
                status.update(|s| s.cordoned = Some(on));
                Ok(if on { "cordoned" } else { "uncordoned" }.to_string())
            }
            Err(e) => Err(CommandError::Failed(e.to_string())),
        };
        let _ = reply.send(r);
    });
}

#[allow(clippy::too_many_arguments)]
fn do_reload(
    reload: &Option<super::ReloadFn>,
    lp: &mut Loop,
    specs: &mut Vec<CheckSpec>,
    generation: &mut u64,
    checks_cancel: &mut CancellationToken,
    tasks: &CancellationToken,
    results_tx: &mpsc::Sender<CheckResult>,
) -> Result<String, CommandError> {
    let Some(reload) = reload else {
        return Err(CommandError::Unavailable(
            "this agent was started without a config file to reload".into(),
        ));
    };
    let new = match reload() {
        Ok(c) => c,
        Err(e) => {
            lp.status.update(|s| s.last_reload_error = Some(e.clone()));
            return Err(CommandError::Invalid(e));
        }
    };
    if new.api != lp.config.api {
        tracing::warn!(node = %lp.node, "health.api changed: takes effect after a restart");
    }
    if new.checks != *specs {
        checks_cancel.cancel();
        *checks_cancel = tasks.child_token();
        *generation += 1;
        *specs = new.checks.clone();
        let names: BTreeSet<String> = specs.iter().map(|s| s.name.clone()).collect();
        lp.book.retain_checks(&|c| names.contains(c));
        init_npd_metrics(&lp.metrics, specs);
        check::spawn_all(
            specs,
            *generation,
            results_tx.clone(),
            Some(lp.metrics.clone()),
            checks_cancel.clone(),
        );
        lp.status.update(|s| s.checks = check_views(specs));
    }
    lp.book.set_refresh(new.refresh);
    lp.policy.replace_rules(new.taints.clone());
    lp.config = new;
    lp.status.update(|s| {
        s.reloads += 1;
        s.last_reload_error = None;
    });
    tracing::info!(node = %lp.node, checks = specs.len(), "health config reloaded");
    lp.settle(tokio::time::Instant::now().into_std());
    Ok("reloaded".into())
}

// Condition transition times are wall time for the API server.
#[allow(clippy::disallowed_methods)]
pub async fn run_once(
    config: &HealthConfig,
    registry: &prometheus::Registry,
) -> anyhow::Result<Vec<(String, Outcome)>> {
    let metrics = HealthMetrics::register(registry).context("registering health metrics")?;
    let runs = config.checks.iter().map(|spec| async move {
        let runner = check::Runner::new(spec.clone());
        let started = tokio::time::Instant::now().into_std();
        let o = runner.run_once().await;
        (spec, o, started.elapsed())
    });
    let mut out = Vec::new();
    let mut book = Book::new(config.refresh);
    for (spec, o, latency) in futures::future::join_all(runs).await {
        metrics.record_check(&spec.name, o.status, o.value, latency.as_secs_f64());
        if spec.report == Report::Condition {
            book.observe(&spec.name, &spec.condition, &o, SystemTime::now());
            if let Some(st) = book.status_of(&spec.condition) {
                metrics.record_condition(&spec.condition, st);
            }
        }
        out.push((spec.name.clone(), o));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The status file gets the health section when it changed, at most once a second, and a
    /// last time when the loop stops: paused time, so the test takes no wall time and cannot flake.
    #[tokio::test(start_paused = true)]
    async fn publisher_sends_changes_at_most_once_a_second_and_once_more_at_the_end() {
        let status = SharedStatus::default();
        let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let sink = got.clone();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(publisher(
            status.clone(),
            Arc::new(move |v| sink.lock().unwrap().push(v)),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(got.lock().unwrap().len(), 1, "the first state at once");
        // Ten changes within one second: one publish, with the last of them.
        for i in 0..10 {
            status.update(|s| s.reloads = i);
            tokio::time::sleep(Duration::from_millis(90)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(got.lock().unwrap().len(), 2);
        assert_eq!(got.lock().unwrap()[1]["reloads"], 9);
        // No change: nothing more, however long.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(got.lock().unwrap().len(), 2);
        // A change just before the stop is not lost.
        status.update(|s| s.reloads = 42);
        cancel.cancel();
        task.await.unwrap();
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2]["reloads"], 42);
    }
}
