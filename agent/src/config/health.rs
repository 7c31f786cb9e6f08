//! The `health:` section of the agent config: raw serde structs mirroring the YAML, and the one
//! `validate` that turns them into the typed model everything else trusts.
//!
//! One section holds everything node health needs (checks, NPD plugin configs, taint policy, drain,
//! the orchestrator API, the privileged credential) so that `config/mod.rs` only embeds it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_common::{Diagnostics, Dur};

use crate::config::{require_absolute, Os};
use serde::Deserialize;

use super::npd;

/// Raw `health:` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// How often unchanged conditions are re-sent (heartbeat); kubelet's status period is 5 min.
    pub refresh: Option<Dur>,
    #[serde(default)]
    pub checks: Vec<CheckFile>,
    /// node-problem-detector custom-plugin-monitor JSON files, read unchanged.
    #[serde(default)]
    pub npd_plugin_configs: Vec<String>,
    /// Taint rules: a condition true for `after` adds a taint, healthy for `clear_after` removes it.
    #[serde(default)]
    pub taints: Vec<TaintRuleFile>,
    /// Kubeconfig of an identity allowed to change this Node's taints (NodeRestriction forbids the
    /// node's own identity).
    pub privileged_kubeconfig: Option<String>,
    pub drain: Option<DrainFile>,
    pub api: Option<ApiFile>,
}

/// One check; `kind` says which of the optional fields apply (validation refuses the others).
//
// Deliberately not `#[serde(tag = "kind")]`: serde's internally tagged enums buffer the mapping
// before choosing a variant, and serde_yaml 0.9 then loses every position inside it. Tried with
// `checks: [memory, disk with bogus: 1]`: the error reads "checks: unknown field `bogus` ... at
// line 2 column 1" (the start of the list, no index, no field line); a bad value inside a check
// lands at the same spot. With the flat struct, serde_yaml reports an unknown field at its own
// line and `allowed_fields` below reports a field foreign to the kind under its own path and line.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckFile {
    pub name: String,
    pub kind: String,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    /// Node condition type this check sets (defaults per kind).
    pub condition: Option<String>,
    // memory
    pub min_available: Option<String>,
    // disk
    pub path: Option<String>,
    pub min_free: Option<String>,
    pub min_free_inodes: Option<String>,
    // pids
    pub max_used: Option<String>,
    pub cgroup: Option<String>,
    // readonly
    pub paths: Option<Vec<String>>,
    // clock
    pub server: Option<String>,
    pub max_offset: Option<Dur>,
    // service
    pub services: Option<Vec<ServiceFile>>,
    // kernel_log
    pub source: Option<String>,
    pub window: Option<Dur>,
    pub patterns: Option<Vec<PatternFile>>,
    pub max_lines_per_second: Option<u32>,
    // plugin
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    pub max_output_length: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// systemd unit or Windows service name.
    pub name: String,
    /// Stand-in for a service without a manager: the service runs while this pid file names a live
    /// process.
    pub pidfile: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternFile {
    pub reason: String,
    pub regex: String,
    /// Matches within the window needed to raise the condition (default 1).
    pub count: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaintRuleFile {
    pub condition: String,
    /// Condition status that counts as a problem (default "True").
    pub status: Option<String>,
    pub after: Option<Dur>,
    pub clear_after: Option<Dur>,
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainFile {
    pub on_shutdown: Option<bool>,
    pub on_stop: Option<bool>,
    pub timeout: Option<Dur>,
    pub grace_period: Option<Dur>,
    pub parallel: Option<usize>,
    pub retry_interval: Option<Dur>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFile {
    pub listen: String,
    pub cert: String,
    pub key: String,
    pub client_ca: String,
    pub allowed_cn: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Typed model

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub refresh: Duration,
    pub checks: Vec<CheckSpec>,
    pub taints: Vec<TaintRule>,
    pub privileged_kubeconfig: Option<PathBuf>,
    pub drain: DrainConfig,
    pub api: Option<ApiConfig>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            refresh: Duration::from_secs(300),
            checks: Vec::new(),
            taints: Vec::new(),
            privileged_kubeconfig: None,
            drain: DrainConfig::default(),
            api: None,
        }
    }
}

/// What a check reports into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A Node condition (NPD "permanent").
    Condition,
    /// Only an Event when a problem is seen (NPD "temporary").
    Event,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    pub name: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Condition type (or the event's subject for `Report::Event`).
    pub condition: String,
    pub report: Report,
    /// Reason and message while healthy (NPD's `conditions` default).
    pub ok_reason: String,
    pub ok_message: String,
    pub kind: CheckKind,
}

impl CheckSpec {
    /// For a check read from an NPD config: its rules as NPD's metrics name them, (the condition of
    /// a permanent rule or None, reason), so `problem_counter` and `problem_gauge` start at 0 for
    /// each as NPD's do. Empty for the agent's own checks, which NPD's metrics never described.
    pub fn npd_rules(&self) -> Vec<(Option<String>, String)> {
        match &self.kind {
            CheckKind::LogMonitor { monitor, condition } => monitor
                .rules
                .iter()
                // Each rule once: the condition checks take the permanent rules of their
                // condition, the events check the temporary ones.
                .filter(|r| r.condition == *condition)
                .map(|r| (r.condition.clone(), r.reason.clone()))
                .collect(),
            // Only NPD custom-plugin configs share a concurrency limiter.
            CheckKind::Plugin {
                problem_reason,
                concurrency: Some(_),
                ..
            } => vec![(
                (self.report == Report::Condition).then(|| self.condition.clone()),
                problem_reason.clone(),
            )],
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Threshold {
    Bytes(u64),
    Percent(f64),
}

impl Threshold {
    /// Whether `free` out of `total` is below the threshold.
    pub fn below(&self, free: u64, total: u64) -> bool {
        match self {
            Threshold::Bytes(b) => free < *b,
            Threshold::Percent(p) => total > 0 && (free as f64) * 100.0 / (total as f64) < *p,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Memory {
        min_available: Threshold,
    },
    Disk {
        path: PathBuf,
        min_free: Option<Threshold>,
        min_free_inodes: Option<Threshold>,
    },
    Pids {
        max_used_percent: f64,
        cgroup: Option<PathBuf>,
    },
    Readonly {
        paths: Vec<PathBuf>,
    },
    Clock {
        server: String,
        max_offset: Duration,
    },
    Service {
        services: Vec<ServiceSpec>,
    },
    KernelLog {
        source: PathBuf,
        window: Duration,
        patterns: Vec<PatternSpec>,
        max_lines_per_second: u32,
    },
    Plugin {
        command: PathBuf,
        args: Vec<String>,
        max_output_length: usize,
        /// Reason reported while the plugin says there is a problem.
        problem_reason: String,
        /// Shared limit on concurrently running plugins of one NPD config.
        concurrency: Option<Limiter>,
    },
    /// One NPD system log monitor's view: the sticky state of `condition`, or (`None`) the events
    /// of its temporary rules. Checks with the same `monitor` share one reader.
    LogMonitor {
        monitor: Arc<super::npd::LogMonitorSpec>,
        condition: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub pidfile: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct PatternSpec {
    pub reason: String,
    pub regex: regex::Regex,
    pub count: u32,
}

impl PartialEq for PatternSpec {
    fn eq(&self, o: &Self) -> bool {
        self.reason == o.reason && self.regex.as_str() == o.regex.as_str() && self.count == o.count
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
    pub fn parse(s: &str) -> Option<TaintEffect> {
        match s {
            "NoSchedule" => Some(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
            "NoExecute" => Some(TaintEffect::NoExecute),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaintRule {
    pub condition: String,
    pub status: String,
    pub after: Duration,
    pub clear_after: Duration,
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DrainConfig {
    pub on_shutdown: bool,
    /// Drain whenever the agent is stopped by SIGTERM (`systemctl stop`), not only at shutdown.
    pub on_stop: bool,
    pub timeout: Duration,
    pub grace_period: Option<Duration>,
    pub parallel: usize,
    pub retry_interval: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            on_shutdown: false,
            on_stop: false,
            timeout: Duration::from_secs(300),
            grace_period: None,
            parallel: 3,
            // kubectl drain retries a PDB refusal every 5 s.
            retry_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub allowed_cn: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validation

const KINDS: &[&str] = &[
    "memory",
    "disk",
    "pids",
    "readonly",
    "clock",
    "service",
    "kernel_log",
    "plugin",
];

/// Parses `256Mi`, `1G`, `4096` (bytes) or `10%`.
pub fn parse_threshold(s: &str) -> Result<Threshold, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("{t:?}: {p:?} is not a number"))?;
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("{t:?}: a percentage must be within 0-100"));
        }
        return Ok(Threshold::Percent(v));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{t:?}: expected bytes like \"512Mi\" or a percentage like \"10%\"")
    })?;
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => {
            return Err(format!(
                "{t:?}: unknown unit {other:?} (use Ki, Mi, Gi, Ti, K, M, G or %)"
            ))
        }
    };
    n.checked_mul(mult)
        .map(Threshold::Bytes)
        .ok_or_else(|| format!("{t:?} is too large"))
}

fn is_condition_type(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 316
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn default_condition(kind: &str) -> &'static str {
    match kind {
        "memory" => "MemoryAvailableLow",
        "disk" => "DiskSpaceLow",
        "pids" => "PIDsExhausted",
        // The names node-problem-detector uses, so dashboards and policies carry over.
        "readonly" => "ReadonlyFilesystem",
        "clock" => "NTPProblem",
        "service" => "ServiceNotRunning",
        "kernel_log" => "KernelProblem",
        _ => "CustomProblem",
    }
}

/// Conditions kubelet sets on a Node. The taint policy never sees them (it watches only what this
/// agent's checks report), and kubelet taints for them itself (`node.kubernetes.io/*`).
pub(crate) const KUBELET_CONDITIONS: &[&str] = &[
    "Ready",
    "MemoryPressure",
    "DiskPressure",
    "PIDPressure",
    "NetworkUnavailable",
];

/// Why a taint rule on `condition` would never fire, and what the checks do set.
fn unproduced_condition(condition: &str, produced: &BTreeSet<String>) -> String {
    let set = if produced.is_empty() {
        "no check sets any condition".to_string()
    } else {
        let list: Vec<&str> = produced.iter().map(String::as_str).collect();
        format!("the checks set {}", list.join(", "))
    };
    if KUBELET_CONDITIONS.contains(&condition) {
        format!(
            "{condition:?} is kubelet's condition, which the taint policy does not watch (kubelet taints for it itself); a rule must name a condition one of `health.checks` or `health.npd_plugin_configs` sets ({set})"
        )
    } else {
        format!("no check sets condition {condition:?}, so this rule would never taint; {set}")
    }
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn mins(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// `value` (or `default` when absent) if within `min..=max`; otherwise an error naming the range,
/// and the default.
fn duration(
    diag: &mut Diagnostics,
    field: String,
    value: Option<Dur>,
    default: Duration,
    (min, max): (Duration, Duration),
) -> Duration {
    match value {
        Some(v) => diag.duration_in(field, v.0, min, max).unwrap_or(default),
        None => default,
    }
}

/// `value` (or `default` when absent) if within `min..=max`; otherwise an error naming the range,
/// and the default.
fn count(
    diag: &mut Diagnostics,
    field: String,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> u64 {
    match value {
        Some(v) => diag.count_in(field, v, min, max).unwrap_or(default),
        None => default,
    }
}

/// Validates the `health:` section; problems are recorded under `field` (e.g. `health`).
pub fn validate(raw: &HealthFile, field: &str, os: Os, diag: &mut Diagnostics) -> HealthConfig {
    let mut cfg = HealthConfig::default();
    cfg.refresh = duration(
        diag,
        format!("{field}.refresh"),
        raw.refresh,
        cfg.refresh,
        (secs(10), HOUR),
    );
    let mut names = BTreeSet::new();
    let mut conditions = BTreeSet::new();
    // Conditions some check sets, counted from the raw checks so that a check refused for another
    // reason does not also make its taint rule an error.
    let mut produced: BTreeSet<String> = raw
        .checks
        .iter()
        .map(|c| {
            c.condition
                .clone()
                .unwrap_or_else(|| default_condition(&c.kind).to_string())
        })
        .collect();
    let mut produced_known = true;
    for (i, c) in raw.checks.iter().enumerate() {
        let f = format!("{field}.checks[{i}]");
        if c.name.is_empty() || !is_condition_type(&c.name) {
            diag.error(
                format!("{f}.name"),
                "must be a non-empty name of letters, digits, -_./",
            );
        } else if !names.insert(c.name.clone()) {
            diag.error(
                format!("{f}.name"),
                format!("check {:?} is defined twice", c.name),
            );
        }
        if let Some(spec) = validate_check(c, &f, os, diag) {
            if spec.report == Report::Condition && !conditions.insert(spec.condition.clone()) {
                diag.error(
                    format!("{f}.condition"),
                    format!(
                        "condition {:?} is set by two checks; give each its own `condition:`",
                        spec.condition
                    ),
                );
            }
            cfg.checks.push(spec);
        }
    }
    let base = diag.source().path.parent().map(|p| p.to_path_buf());
    for (i, p) in raw.npd_plugin_configs.iter().enumerate() {
        let f = format!("{field}.npd_plugin_configs[{i}]");
        let mut path = PathBuf::from(p);
        if path.is_relative() {
            if let Some(b) = &base {
                path = b.join(path);
            }
        }
        match npd::load(&path) {
            Ok(specs) => {
                for spec in specs {
                    if spec.report == Report::Condition {
                        conditions.insert(spec.condition.clone());
                        produced.insert(spec.condition.clone());
                    }
                    if !names.insert(spec.name.clone()) {
                        diag.error(&f, format!("check {:?} is defined twice", spec.name));
                    }
                    cfg.checks.push(spec);
                }
            }
            Err(e) => {
                // What it would have set is unknown; its own error says why.
                produced_known = false;
                diag.error(f, e)
            }
        }
    }
    let mut taint_keys = BTreeSet::new();
    for (i, t) in raw.taints.iter().enumerate() {
        let f = format!("{field}.taints[{i}]");
        if !is_condition_type(&t.condition) {
            diag.error(format!("{f}.condition"), "must be a condition type");
        } else if produced_known && !produced.contains(&t.condition) {
            diag.error(
                format!("{f}.condition"),
                unproduced_condition(&t.condition, &produced),
            );
        }
        let status = t.status.clone().unwrap_or_else(|| "True".into());
        if !matches!(status.as_str(), "True" | "False" | "Unknown") {
            diag.error(format!("{f}.status"), "must be True, False or Unknown");
        }
        let Some(effect) = TaintEffect::parse(&t.effect) else {
            diag.error(
                format!("{f}.effect"),
                "must be NoSchedule, PreferNoSchedule or NoExecute",
            );
            continue;
        };
        if t.key.is_empty() || t.key.len() > 253 {
            diag.error(format!("{f}.key"), "must be a taint key");
            continue;
        }
        if !taint_keys.insert((t.key.clone(), effect)) {
            diag.error(
                format!("{f}.key"),
                format!("taint {}:{} is set by two rules", t.key, effect.as_str()),
            );
        }
        let after = duration(
            diag,
            format!("{f}.after"),
            t.after,
            secs(30),
            (secs(0), DAY),
        );
        let clear_after = duration(
            diag,
            format!("{f}.clear_after"),
            t.clear_after,
            secs(120),
            (secs(1), DAY),
        );
        cfg.taints.push(TaintRule {
            condition: t.condition.clone(),
            status,
            after,
            clear_after,
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
            effect,
        });
    }
    cfg.privileged_kubeconfig = raw.privileged_kubeconfig.as_ref().map(PathBuf::from);
    if let Some(p) = &cfg.privileged_kubeconfig {
        require_absolute(diag, &format!("{field}.privileged_kubeconfig"), os, p);
    }
    if let Some(d) = &raw.drain {
        let f = format!("{field}.drain");
        let dc = &mut cfg.drain;
        dc.on_shutdown = d.on_shutdown.unwrap_or(false);
        dc.on_stop = d.on_stop.unwrap_or(false);
        dc.timeout = duration(
            diag,
            format!("{f}.timeout"),
            d.timeout,
            dc.timeout,
            (secs(1), DAY),
        );
        dc.grace_period = d.grace_period.and_then(|g| {
            let g = diag.duration_in(format!("{f}.grace_period"), g.0, secs(1), DAY)?;
            // The Eviction API counts a grace period in whole seconds; rounding would turn 500ms
            // into 0 (delete at once) or stretch it, so say so instead.
            if g.subsec_nanos() != 0 {
                diag.error(
                    format!("{f}.grace_period"),
                    format!(
                        "must be a whole number of seconds (Kubernetes counts grace periods in seconds), not {}",
                        keel_common::duration::format(g)
                    ),
                );
                return None;
            }
            Some(g)
        });
        dc.parallel = count(
            diag,
            format!("{f}.parallel"),
            d.parallel.map(|p| p as u64),
            dc.parallel as u64,
            1,
            64,
        ) as usize;
        dc.retry_interval = duration(
            diag,
            format!("{f}.retry_interval"),
            d.retry_interval,
            dc.retry_interval,
            (ms(100), mins(10)),
        );
    }
    if let Some(a) = &raw.api {
        let f = format!("{field}.api");
        match a.listen.parse::<SocketAddr>() {
            Ok(listen) => {
                for (name, p) in [
                    ("cert", &a.cert),
                    ("key", &a.key),
                    ("client_ca", &a.client_ca),
                ] {
                    require_absolute(diag, &format!("{f}.{name}"), os, Path::new(p));
                }
                cfg.api = Some(ApiConfig {
                    listen,
                    cert: PathBuf::from(&a.cert),
                    key: PathBuf::from(&a.key),
                    client_ca: PathBuf::from(&a.client_ca),
                    allowed_cn: a.allowed_cn.clone(),
                })
            }
            Err(_) => diag.error(
                format!("{f}.listen"),
                format!("{:?} is not an address:port", a.listen),
            ),
        }
    }
    cfg
}

/// Fields each kind accepts (besides name, kind, interval, timeout, condition).
fn allowed_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "memory" => &["min_available"],
        "disk" => &["path", "min_free", "min_free_inodes"],
        "pids" => &["max_used", "cgroup"],
        "readonly" => &["paths"],
        "clock" => &["server", "max_offset"],
        "service" => &["services"],
        "kernel_log" => &["source", "window", "patterns", "max_lines_per_second"],
        "plugin" => &["command", "args", "max_output_length"],
        _ => &[],
    }
}

fn present_fields(c: &CheckFile) -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! p {
        ($($f:ident),*) => { $( if c.$f.is_some() { v.push(stringify!($f)); } )* };
    }
    p!(
        min_available,
        path,
        min_free,
        min_free_inodes,
        max_used,
        cgroup,
        paths,
        server,
        max_offset,
        services,
        source,
        window,
        patterns,
        max_lines_per_second,
        command,
        args,
        max_output_length
    );
    v
}

fn validate_check(c: &CheckFile, f: &str, os: Os, diag: &mut Diagnostics) -> Option<CheckSpec> {
    if !KINDS.contains(&c.kind.as_str()) {
        diag.error(
            format!("{f}.kind"),
            format!("unknown kind {:?} (one of {})", c.kind, KINDS.join(", ")),
        );
        return None;
    }
    let allowed = allowed_fields(&c.kind);
    for field in present_fields(c) {
        if !allowed.contains(&field) {
            diag.error(
                format!("{f}.{field}"),
                format!("does not apply to a {} check", c.kind),
            );
        }
    }
    let interval = duration(
        diag,
        format!("{f}.interval"),
        c.interval,
        secs(10),
        (ms(100), DAY),
    );
    let timeout = c.timeout.map(|d| d.0).unwrap_or(secs(5));
    if timeout < ms(1) || timeout > interval {
        diag.error(
            format!("{f}.timeout"),
            format!(
                "must be between 1ms and the interval ({}), not {}",
                keel_common::duration::format(interval),
                keel_common::duration::format(timeout)
            ),
        );
    }
    let condition = c
        .condition
        .clone()
        .unwrap_or_else(|| default_condition(&c.kind).to_string());
    if !is_condition_type(&condition) {
        diag.error(
            format!("{f}.condition"),
            "must be a condition type such as DiskSpaceLow",
        );
    } else if KUBELET_CONDITIONS.contains(&condition.as_str()) {
        // Two writers of one condition overwrite each other every status period.
        diag.error(
            format!("{f}.condition"),
            format!("{condition:?} is kubelet's condition; keel-agent never writes it (the default for a {} check is {})", c.kind, default_condition(&c.kind)),
        );
    }
    let threshold = |diag: &mut Diagnostics, name: &str, v: &Option<String>| -> Option<Threshold> {
        let s = v.as_ref()?;
        match parse_threshold(s) {
            Ok(t) => Some(t),
            Err(e) => {
                diag.error(format!("{f}.{name}"), e);
                None
            }
        }
    };
    let missing = |diag: &mut Diagnostics, name: &str| {
        diag.error(
            format!("{f}.{name}"),
            format!("is required for a {} check", c.kind),
        );
    };
    let kind = match c.kind.as_str() {
        "memory" => {
            let Some(t) = threshold(diag, "min_available", &c.min_available) else {
                if c.min_available.is_none() {
                    missing(diag, "min_available");
                }
                return None;
            };
            CheckKind::Memory { min_available: t }
        }
        "disk" => {
            let Some(path) = &c.path else {
                missing(diag, "path");
                return None;
            };
            let min_free = threshold(diag, "min_free", &c.min_free);
            let min_free_inodes = threshold(diag, "min_free_inodes", &c.min_free_inodes);
            if c.min_free.is_none() && c.min_free_inodes.is_none() {
                missing(diag, "min_free");
            }
            require_absolute(diag, &format!("{f}.path"), os, Path::new(path));
            CheckKind::Disk {
                path: PathBuf::from(path),
                min_free,
                min_free_inodes,
            }
        }
        "pids" => {
            let pct = match threshold(diag, "max_used", &c.max_used) {
                Some(Threshold::Percent(p)) => p,
                Some(Threshold::Bytes(_)) => {
                    diag.error(
                        format!("{f}.max_used"),
                        "must be a percentage such as \"90%\"",
                    );
                    return None;
                }
                None if c.max_used.is_none() => 90.0,
                None => return None,
            };
            if let Some(cg) = &c.cgroup {
                require_absolute(diag, &format!("{f}.cgroup"), os, Path::new(cg));
            }
            CheckKind::Pids {
                max_used_percent: pct,
                cgroup: c.cgroup.as_ref().map(PathBuf::from),
            }
        }
        "readonly" => {
            let paths: Vec<PathBuf> = c
                .paths
                .clone()
                .unwrap_or_else(|| vec!["/".into()])
                .into_iter()
                .map(PathBuf::from)
                .collect();
            if paths.is_empty() {
                diag.error(format!("{f}.paths"), "must name at least one mount point");
            }
            for (j, p) in paths.iter().enumerate() {
                require_absolute(diag, &format!("{f}.paths[{j}]"), os, p);
            }
            CheckKind::Readonly { paths }
        }
        "clock" => {
            let Some(server) = &c.server else {
                missing(diag, "server");
                return None;
            };
            CheckKind::Clock {
                server: server.clone(),
                max_offset: duration(
                    diag,
                    format!("{f}.max_offset"),
                    c.max_offset,
                    ms(500),
                    (ms(1), HOUR),
                ),
            }
        }
        "service" => {
            let services: Vec<ServiceSpec> = c
                .services
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|s| ServiceSpec {
                    name: s.name,
                    pidfile: s.pidfile.map(PathBuf::from),
                })
                .collect();
            if services.is_empty() {
                missing(diag, "services");
                return None;
            }
            for (j, s) in services.iter().enumerate() {
                if let Some(p) = &s.pidfile {
                    require_absolute(diag, &format!("{f}.services[{j}].pidfile"), os, p);
                }
            }
            CheckKind::Service { services }
        }
        "kernel_log" => {
            let mut patterns = Vec::new();
            for (j, p) in c.patterns.clone().unwrap_or_default().iter().enumerate() {
                match regex::Regex::new(&p.regex) {
                    Ok(regex) => patterns.push(PatternSpec {
                        reason: p.reason.clone(),
                        regex,
                        count: count(
                            diag,
                            format!("{f}.patterns[{j}].count"),
                            p.count.map(u64::from),
                            1,
                            1,
                            10_000,
                        ) as u32,
                    }),
                    Err(e) => diag.error(format!("{f}.patterns[{j}].regex"), e),
                }
            }
            if c.patterns.as_ref().is_none_or(|p| p.is_empty()) {
                missing(diag, "patterns");
            }
            if let Some(src) = &c.source {
                require_absolute(diag, &format!("{f}.source"), os, Path::new(src));
            }
            CheckKind::KernelLog {
                source: PathBuf::from(c.source.clone().unwrap_or_else(|| "/dev/kmsg".into())),
                window: duration(
                    diag,
                    format!("{f}.window"),
                    c.window,
                    mins(10),
                    (secs(1), DAY),
                ),
                patterns,
                max_lines_per_second: count(
                    diag,
                    format!("{f}.max_lines_per_second"),
                    c.max_lines_per_second.map(u64::from),
                    2000,
                    1,
                    1_000_000,
                ) as u32,
            }
        }
        "plugin" => {
            let Some(cmd) = &c.command else {
                missing(diag, "command");
                return None;
            };
            // Absolute, so what runs does not depend on the agent's working directory or PATH.
            require_absolute(diag, &format!("{f}.command"), os, Path::new(cmd));
            CheckKind::Plugin {
                command: PathBuf::from(cmd),
                args: c.args.clone().unwrap_or_default(),
                max_output_length: count(
                    diag,
                    format!("{f}.max_output_length"),
                    c.max_output_length.map(|n| n as u64),
                    80,
                    1,
                    65_536,
                ) as usize,
                problem_reason: format!("{condition}Detected"),
                concurrency: None,
            }
        }
        _ => return None,
    };
    Some(CheckSpec {
        name: c.name.clone(),
        interval,
        timeout,
        ok_reason: format!("No{condition}"),
        ok_message: format!("check {} passes", c.name),
        condition,
        report: Report::Condition,
        kind,
    })
}

/// A limit on concurrently running plugins shared by the rules of one NPD config (its
/// `concurrency`).
#[derive(Debug, Clone)]
pub struct Limiter(pub std::sync::Arc<tokio::sync::Semaphore>);

impl PartialEq for Limiter {
    fn eq(&self, o: &Self) -> bool {
        self.0.available_permits() == o.0.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_common::Source;

    fn check(yaml: &str) -> Result<HealthConfig, keel_common::ConfigErrors> {
        let src = Source::from_text("agent.yaml", yaml);
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Top {
            health: HealthFile,
        }
        let top: Top = keel_common::config::parse(&src)?;
        let mut d = Diagnostics::new(&src);
        let cfg = validate(&top.health, "health", Os::Linux, &mut d);
        d.finish(cfg)
    }

    #[test]
    fn full_section_validates_into_typed_checks() {
        let cfg = check(
            r#"
health:
  refresh: 5m
  checks:
    - name: memory
      kind: memory
      min_available: 256Mi
    - name: root
      kind: disk
      path: /
      min_free: 10%
      min_free_inodes: 5%
    - name: kernel
      kind: kernel_log
      source: /tmp/kmsg
      window: 1m
      patterns:
        - reason: OOMKilling
          regex: "Killed process \\d+"
  taints:
    - condition: DiskSpaceLow
      after: 10s
      clear_after: 1m
      key: keel.io/disk-low
      effect: NoSchedule
  drain:
    on_shutdown: true
    parallel: 2
"#,
        )
        .unwrap();
        assert_eq!(cfg.checks.len(), 3);
        assert_eq!(
            cfg.checks[0].kind,
            CheckKind::Memory {
                min_available: Threshold::Bytes(256 << 20)
            }
        );
        assert_eq!(cfg.checks[1].condition, "DiskSpaceLow");
        assert_eq!(cfg.taints[0].effect, TaintEffect::NoSchedule);
        assert_eq!(cfg.taints[0].after, Duration::from_secs(10));
        assert!(cfg.drain.on_shutdown);
        assert_eq!(cfg.drain.parallel, 2);
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = check(
            "health:\n  checks:\n    - name: m\n      kind: memory\n      min_available: lots\n      path: /\n    - name: m\n      kind: nope\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("agent.yaml:5: health.checks[0].min_available"),
            "{text}"
        );
        assert!(
            text.contains("agent.yaml:6: health.checks[0].path: does not apply"),
            "{text}"
        );
        assert!(
            text.contains("health.checks[1].name: check \"m\" is defined twice"),
            "{text}"
        );
        assert!(
            text.contains("health.checks[1].kind: unknown kind"),
            "{text}"
        );
    }

    #[test]
    fn a_taint_rule_on_a_condition_no_check_sets_is_refused() {
        let base = "health:\n  checks:\n    - {name: root, kind: disk, path: /, min_free: 10%}\n    - {name: k, kind: kernel_log, condition: KernelDeadlock, patterns: [{reason: X, regex: x}]}\n  taints:\n";
        // A typo of a check's condition.
        let e = check(&format!(
            "{base}    - {{condition: KernelDeadlock, key: a, effect: NoSchedule}}\n    - {{condition: DiskSpaceLo, key: b, effect: NoSchedule}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "agent.yaml:7: health.taints[1].condition: no check sets condition \"DiskSpaceLo\""
            ) && e.contains("the checks set DiskSpaceLow, KernelDeadlock"),
            "{e}"
        );
        assert!(!e.contains("taints[0]"), "{e}");
        // kubelet's conditions never reach the policy.
        let e = check(&format!(
            "{base}    - {{condition: MemoryPressure, key: a, effect: NoSchedule}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("health.taints[0].condition: \"MemoryPressure\" is kubelet's condition"),
            "{e}"
        );
        // A check never writes one of kubelet's conditions: two writers would overwrite each other.
        let e = check("health:\n  checks:\n    - {name: mem, kind: memory, min_available: 5%, condition: MemoryPressure}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("health.checks[0].condition: \"MemoryPressure\" is kubelet's condition; keel-agent never writes it (the default for a memory check is MemoryAvailableLow)"),
            "{e}"
        );
        // A default condition and an NPD plugin's condition both count.
        let dir = tempfile::tempdir().unwrap();
        let npd = dir.path().join("ntp.json");
        std::fs::write(&npd, super::super::npd::tests::NPD_NTP).unwrap();
        check(&format!(
            "{base}    - {{condition: DiskSpaceLow, key: a, effect: NoSchedule}}\n    - {{condition: NTPProblem, key: b, effect: NoSchedule}}\n  npd_plugin_configs: [{:?}]\n",
            npd.display()
        ))
        .unwrap();
    }

    #[test]
    fn durations_and_counts_out_of_range_are_refused_in_words() {
        let e = check(
            "health:\n  refresh: 1us\n  checks:\n    - {name: k, kind: kernel_log, window: 87000h, max_lines_per_second: 0, patterns: [{reason: X, regex: x, count: 0}]}\n  drain:\n    timeout: 0s\n    parallel: 0\n    retry_interval: 1us\n",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "agent.yaml:2: health.refresh: must be between 10s and 1h, not 1us",
            "health.checks[0].window: must be between 1s and 24h, not 87000h",
            "health.checks[0].max_lines_per_second: must be between 1 and 1000000, not 0",
            "health.checks[0].patterns[0].count: must be between 1 and 10000, not 0",
            "agent.yaml:6: health.drain.timeout: must be between 1s and 24h, not 0s",
            "agent.yaml:7: health.drain.parallel: must be between 1 and 64, not 0",
            "agent.yaml:8: health.drain.retry_interval: must be between 100ms and 10m, not 1us",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
        }
    }

    /// 500ms used to become 0 (delete at once) through `as_secs`.
    #[test]
    fn a_sub_second_grace_period_is_refused_not_truncated() {
        for (text, want) in [
            ("500ms", "must be between 1s and 24h, not 500ms"),
            ("1500ms", "must be a whole number of seconds"),
        ] {
            let e = check(&format!("health:\n  drain:\n    grace_period: {text}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("agent.yaml:3: health.drain.grace_period: ") && e.contains(want),
                "{text}: {e}"
            );
        }
        let cfg = check("health:\n  drain:\n    grace_period: 90s\n").unwrap();
        assert_eq!(cfg.drain.grace_period, Some(Duration::from_secs(90)));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = check("health:\n  chekcs: []\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `chekcs`"), "{e}");
    }

    #[test]
    fn thresholds_parse_units_and_percentages() {
        assert_eq!(parse_threshold("1Gi").unwrap(), Threshold::Bytes(1 << 30));
        assert_eq!(parse_threshold("10%").unwrap(), Threshold::Percent(10.0));
        assert_eq!(parse_threshold("4096").unwrap(), Threshold::Bytes(4096));
        assert!(parse_threshold("120%").is_err());
        assert!(parse_threshold("5X").is_err());
        assert!(Threshold::Percent(10.0).below(5, 100));
        assert!(!Threshold::Percent(10.0).below(10, 100));
    }
}
