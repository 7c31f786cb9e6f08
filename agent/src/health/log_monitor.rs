//! node-problem-detector's system log monitor (`plugin: kmsg | filelog | journald`), with NPD's
//! semantics (upstream `pkg/systemlogmonitor/log_monitor.go`, `log_buffer.go`):
//! - the last `bufferSize` messages are kept; after each new one every rule's pattern (with `\z`
//!   appended) is searched in them joined by `\n`, so a rule matches when it ends on the newest line
//!   and may span earlier ones; the matched lines, joined, are the message;
//! - a `temporary` rule's match is an Event (reason, message);
//! - a `permanent` rule's match sets its condition True with the rule's reason. The condition stays
//!   True until the agent restarts, as in NPD; with `lookback` the reader looks at recent lines again
//!   after a restart. (The native `kernel_log` check is the one whose condition clears by itself.)
//!
//! `Monitor` is the pure core (no I/O, no clock). `Watcher` runs one reader thread per monitor and
//! is shared by the monitor's checks: one per declared condition, one for events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::kernel_log::{self, strip_kmsg_prefix, Budget, Counts};
use super::outcome::Outcome;
use crate::config::npd::{LogInput, LogMonitorSpec};

/// What one new line caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A temporary rule matched.
    Event { reason: String, message: String },
    /// A permanent rule matched: `condition` is now True with `reason`.
    Condition {
        condition: String,
        reason: String,
        message: String,
    },
}

/// The pure core: the line buffer and the rules.
#[derive(Debug)]
pub struct Monitor {
    spec: Arc<LogMonitorSpec>,
    lines: VecDeque<String>,
}

impl Monitor {
    pub fn new(spec: Arc<LogMonitorSpec>) -> Monitor {
        Monitor {
            lines: VecDeque::with_capacity(spec.buffer_size),
            spec,
        }
    }

    /// Takes one message (already stripped of its log's prefix) and returns what it caused, in
    /// rule order.
    pub fn push(&mut self, message: &str) -> Vec<Finding> {
        if self.spec.skip.iter().any(|s| message.contains(s.as_str())) {
            return Vec::new();
        }
        if self.lines.len() == self.spec.buffer_size {
            self.lines.pop_front();
        }
        self.lines.push_back(message.to_string());
        let joined = self
            .lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n");
        let mut out = Vec::new();
        for rule in &self.spec.rules {
            let Some(m) = rule.pattern.0.find(&joined) else {
                continue;
            };
            // The matched lines: from the one the match starts in to the newest.
            let first = joined[..m.start()].matches('\n').count();
            let mut message = self
                .lines
                .iter()
                .skip(first)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("\n");
            if let Some(sfx) = &rule.suffix {
                message = format!("{message}; {sfx}");
            }
            out.push(match &rule.condition {
                None => Finding::Event {
                    reason: rule.reason.clone(),
                    message,
                },
                Some(c) => Finding::Condition {
                    condition: c.clone(),
                    reason: rule.reason.clone(),
                    message,
                },
            });
        }
        out
    }
}

/// Events waiting for the events check; beyond this the oldest are dropped (and counted), so a
/// storm of matches cannot grow memory while the API server is away.
const MAX_PENDING_EVENTS: usize = 256;

/// Lines per second a log monitor matches; beyond that they are shed and counted, as in the
/// kernel-log check (node-problem-detector #282, #498).
const MAX_LINES_PER_SECOND: u32 = 1000;

#[derive(Debug, Default)]
struct State {
    /// Permanent conditions that fired: condition → (reason, message).
    fired: BTreeMap<String, (String, String)>,
    events: VecDeque<(String, String)>,
    events_dropped: u64,
    /// Why the reader cannot read, while it cannot.
    error: Option<String>,
}

/// One monitor's reader thread and its state, shared by the monitor's checks.
pub struct Watcher {
    spec: Arc<LogMonitorSpec>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    pub counts: Counts,
    /// Bumped on every finding, so the monitor's checks run at once instead of at their interval.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Watcher {
    pub fn start(spec: Arc<LogMonitorSpec>) -> Arc<Watcher> {
        let w = Arc::new(Watcher {
            spec: spec.clone(),
            state: Arc::new(Mutex::new(State::default())),
            stop: Arc::new(AtomicBool::new(false)),
            counts: Counts::default(),
            changed: Arc::new(tokio::sync::watch::Sender::new(0)),
        });
        let (state, stop, counts) = (w.state.clone(), w.stop.clone(), w.counts.clone());
        let changed = w.changed.clone();
        let name = spec.source.clone();
        let spawned = std::thread::Builder::new()
            .name("log-monitor".into())
            .spawn(move || {
                let shared = Shared {
                    state: &state,
                    changed: &changed,
                };
                read(&name, spec, &shared, &stop, &counts)
            });
        if let Err(e) = spawned {
            tracing::error!(monitor = %w.spec.source, error = %e, "cannot start the log monitor's reader");
            if let Ok(mut s) = w.state.lock() {
                s.error = Some(format!("cannot start the reader: {e}"));
            }
        }
        w
    }

    /// The state of one declared condition, as a check outcome.
    pub fn condition(&self, condition: &str) -> Outcome {
        let Ok(s) = self.state.lock() else {
            return Outcome::unknown("LogMonitorUnavailable", "log monitor state poisoned");
        };
        match s.fired.get(condition) {
            Some((reason, message)) => Outcome::problem(reason.clone(), message.clone(), Some(1.0)),
            None => {
                let d = self.spec.conditions.iter().find(|d| d.kind == condition);
                Outcome {
                    reason: d.map(|d| d.reason.clone()).unwrap_or_default(),
                    ..Outcome::ok(d.map(|d| d.message.clone()).unwrap_or_default(), Some(0.0))
                }
            }
        }
    }

    /// The events of temporary rules since the last call, and how many were dropped.
    pub fn take_events(&self) -> (Vec<(String, String)>, u64) {
        match self.state.lock() {
            Ok(mut s) => (
                s.events.drain(..).collect(),
                std::mem::take(&mut s.events_dropped),
            ),
            Err(_) => (Vec::new(), 0),
        }
    }

    /// A receiver that changes whenever the reader found something.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Why the reader cannot read, while it cannot.
    pub fn error(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.error.clone())
    }
}

/// What the reader thread writes to.
struct Shared<'a> {
    state: &'a Mutex<State>,
    changed: &'a tokio::sync::watch::Sender<u64>,
}

impl Shared<'_> {
    fn set_error(&self, e: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            s.error = e;
        }
    }
}

fn apply(shared: &Shared, findings: Vec<Finding>) {
    if findings.is_empty() {
        return;
    }
    apply_locked(shared.state, findings);
    shared.changed.send_modify(|n| *n = n.wrapping_add(1));
}

fn apply_locked(state: &Mutex<State>, findings: Vec<Finding>) {
    let Ok(mut s) = state.lock() else {
        return;
    };
    for f in findings {
        match f {
            Finding::Event { reason, message } => {
                if s.events.len() == MAX_PENDING_EVENTS {
                    s.events.pop_front();
                    s.events_dropped += 1;
                }
                s.events.push_back((reason, message));
            }
            Finding::Condition {
                condition,
                reason,
                message,
            } => {
                s.fired.insert(condition, (reason, message));
            }
        }
    }
}

/// The reader thread: follows the monitor's input until `stop`.
fn read(name: &str, spec: Arc<LogMonitorSpec>, state: &Shared, stop: &AtomicBool, counts: &Counts) {
    let mut monitor = Monitor::new(spec.clone());
    match &spec.input {
        LogInput::Kmsg(path) => {
            // kmsg records carry microseconds since boot: a lookback keeps the recent ones.
            let since_boot = (!spec.lookback.is_zero())
                .then(uptime)
                .flatten()
                .map(|up| up.saturating_sub(spec.lookback));
            kernel_log::follow(
                name,
                path,
                since_boot.is_some(),
                stop,
                counts,
                MAX_LINES_PER_SECOND,
                &mut |text, _| {
                    if let (Some(min), Some(at)) = (since_boot, kmsg_time(text)) {
                        if at < min {
                            return;
                        }
                    }
                    if let Some(msg) = strip_kmsg_prefix(text) {
                        apply(state, monitor.push(msg));
                    }
                },
            )
        }
        LogInput::File { path, message } => kernel_log::follow(
            name,
            path,
            false,
            stop,
            counts,
            MAX_LINES_PER_SECOND,
            &mut |text, _| {
                let msg = match message {
                    // NPD's filelog translator: the first group of `message`, else skip the line.
                    Some(re) => match re.0.captures(text).and_then(|c| c.get(1)) {
                        Some(m) => m.as_str(),
                        None => return,
                    },
                    None => text,
                };
                apply(state, monitor.push(msg.trim()));
            },
        ),
        LogInput::Journald { dir, identifier } => journald(
            name,
            dir.as_deref(),
            identifier,
            spec.lookback,
            state,
            stop,
            counts,
            &mut monitor,
        ),
    }
}

/// Seconds since boot from /proc/uptime.
fn uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_secs_f64(secs))
}

/// A kmsg record's timestamp (`6,1234,5678901,-;…`: the third field, microseconds since boot).
fn kmsg_time(record: &str) -> Option<Duration> {
    let head = record.split(';').next()?;
    let usec: u64 = head.split(',').nth(2)?.parse().ok()?;
    Some(Duration::from_micros(usec))
}

/// Follows the journal through `journalctl -o json --follow` (the journal's own reader; no
/// libsystemd binding), entries with SYSLOG_IDENTIFIER = `identifier`. Restarted with a backoff if
/// it exits; lines beyond the rate are shed like the other readers'.
#[allow(clippy::too_many_arguments)]
// A blocking reader thread outside the runtime: real time.
#[allow(clippy::disallowed_methods)]
fn journald(
    name: &str,
    dir: Option<&std::path::Path>,
    identifier: &str,
    lookback: Duration,
    state: &Shared,
    stop: &AtomicBool,
    counts: &Counts,
    monitor: &mut Monitor,
) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let since = std::time::SystemTime::now()
        .checked_sub(lookback)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let mut cmd = Command::new("journalctl");
        cmd.args(["-o", "json", "--follow", "--no-pager"]);
        // The first start looks back (every entry since then: --no-tail undoes follow's last 10);
        // a restart goes on from now.
        if first && !lookback.is_zero() {
            cmd.arg(format!("--since=@{since}")).arg("--no-tail");
        } else {
            cmd.arg("--lines=0");
        }
        if let Some(d) = dir.filter(|d| d.is_dir()) {
            cmd.arg("--directory").arg(d);
        }
        cmd.arg(format!("SYSLOG_IDENTIFIER={identifier}"));
        first = false;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(monitor = name, error = %e, "cannot run journalctl");
                state.set_error(Some(format!("cannot run journalctl: {e}")));
                std::thread::sleep(Duration::from_secs(5));
                continue;
            }
        };
        state.set_error(None);
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            continue;
        };
        let child = Mutex::new(child);
        let reading = AtomicBool::new(true);
        std::thread::scope(|sc| {
            // journalctl blocks in its follow while the journal is quiet: this ends it when the
            // monitor stops, which ends the read below.
            sc.spawn(|| {
                while reading.load(Ordering::Relaxed) {
                    if stop.load(Ordering::Relaxed) {
                        if let Ok(mut c) = child.lock() {
                            let _ = c.kill();
                        }
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
            let mut budget = Budget::new(MAX_LINES_PER_SECOND, std::time::Instant::now());
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if !budget.admit(std::time::Instant::now(), counts) {
                    continue;
                }
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                // MESSAGE is a string, or an array of bytes when it is not valid UTF-8.
                let msg = match &entry["MESSAGE"] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(b) => {
                        let bytes: Vec<u8> = b
                            .iter()
                            .filter_map(|x| x.as_u64())
                            .map(|x| x as u8)
                            .collect();
                        String::from_utf8_lossy(&bytes).into_owned()
                    }
                    _ => continue,
                };
                apply(state, monitor.push(msg.trim()));
            }
            reading.store(false, Ordering::Relaxed);
        });
        if let Ok(mut c) = child.into_inner() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !stop.load(Ordering::Relaxed) {
            tracing::warn!(monitor = name, "journalctl exited; restarting it in 5 s");
            std::thread::sleep(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::npd::{DeclaredCondition, LogRule, RegexText};

    fn spec(buffer: usize, rules: &[(&str, Option<&str>, &str)]) -> Arc<LogMonitorSpec> {
        Arc::new(LogMonitorSpec {
            source: "kernel-monitor".into(),
            input: LogInput::Kmsg("/dev/null".into()),
            lookback: Duration::ZERO,
            buffer_size: buffer,
            skip: vec!["SKIPME".into()],
            rules: rules
                .iter()
                .map(|(reason, cond, pat)| LogRule {
                    condition: cond.map(str::to_string),
                    reason: reason.to_string(),
                    pattern: RegexText(regex::Regex::new(&format!("{pat}\\z")).unwrap()),
                    suffix: None,
                })
                .collect(),
            conditions: vec![DeclaredCondition {
                kind: "KernelDeadlock".into(),
                reason: "KernelHasNoDeadlock".into(),
                message: "kernel has no deadlock".into(),
            }],
        })
    }

    #[test]
    fn a_rule_matches_only_when_it_ends_on_the_newest_line() {
        let mut m = Monitor::new(spec(10, &[("OOMKilling", None, r"Killed process \d+")]));
        let f = m.push("Out of memory: Killed process 42 (stress)");
        assert!(
            f.is_empty(),
            "the pattern must reach the end of the line: {f:?}"
        );
        let f = m.push("Killed process 42");
        assert_eq!(
            f,
            vec![Finding::Event {
                reason: "OOMKilling".into(),
                message: "Killed process 42".into()
            }]
        );
        // Older lines never match again.
        assert!(m.push("something else").is_empty());
    }

    #[test]
    fn a_multi_line_pattern_spans_the_buffer_and_its_lines_are_the_message() {
        let mut m = Monitor::new(spec(
            3,
            &[(
                "DockerHung",
                Some("KernelDeadlock"),
                r"INFO: task docker:\d+ blocked\nCall Trace:",
            )],
        ));
        assert!(m.push("INFO: task docker:123 blocked").is_empty());
        let f = m.push("Call Trace:");
        assert_eq!(
            f,
            vec![Finding::Condition {
                condition: "KernelDeadlock".into(),
                reason: "DockerHung".into(),
                message: "INFO: task docker:123 blocked\nCall Trace:".into()
            }]
        );
        // Beyond the buffer (3 lines) a pattern cannot reach back.
        let mut m = Monitor::new(spec(2, &[("X", None, r"a\nb\nc")]));
        for l in ["a", "b", "c"] {
            assert!(m.push(l).is_empty(), "{l}");
        }
    }

    #[test]
    fn skip_list_lines_are_not_matched() {
        let mut m = Monitor::new(spec(10, &[("X", None, "boom.*")]));
        assert!(m.push("boom SKIPME").is_empty());
        assert_eq!(m.push("boom").len(), 1);
    }

    #[test]
    fn kmsg_timestamps_are_read() {
        assert_eq!(
            kmsg_time("6,1234,5678901,-;hello"),
            Some(Duration::from_micros(5_678_901))
        );
        assert_eq!(kmsg_time("garbage"), None);
    }
}
