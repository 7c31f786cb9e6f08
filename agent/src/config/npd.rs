//! node-problem-detector monitor configs, read unchanged, so that existing NPD setups run under Keel
//! without edits:
//! - custom-plugin-monitor files (`plugin: custom`) become plugin checks
//!   (upstream `pkg/custompluginmonitor/types/config.go`);
//! - system-log-monitor files (`plugin: kmsg | filelog | journald`, upstream
//!   `pkg/systemlogmonitor/config.go` and `logwatchers/types`) become one log monitor: a reader that
//!   keeps the last `bufferSize` lines and matches each rule's `pattern` against their end (so a
//!   pattern may span lines), shared by one check per declared condition and one for events.
//!
//! In both, `permanent` rules set a Node condition and `temporary` rules only emit events. Fields
//! Keel does not use (`metricsReporting`, `skip_initial_status`, `delay`, ...) are accepted and
//! ignored, as NPD would read them. Conditions kubelet owns are refused: two writers of one
//! condition would overwrite each other every status period.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::health::{CheckKind, CheckSpec, Limiter, Report, KUBELET_CONDITIONS};

#[derive(Debug, Deserialize)]
struct NpdFile {
    plugin: String,
    #[serde(rename = "pluginConfig", default)]
    plugin_config: PluginConfig,
    source: String,
    #[serde(default)]
    conditions: Vec<NpdCondition>,
    #[serde(default)]
    rules: Vec<NpdRule>,
    // System log monitors only.
    #[serde(rename = "logPath")]
    log_path: Option<String>,
    lookback: Option<String>,
    #[serde(rename = "bufferSize")]
    buffer_size: Option<usize>,
    #[serde(rename = "skipList", default)]
    skip_list: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct PluginConfig {
    // Custom plugin monitors.
    invoke_interval: Option<String>,
    timeout: Option<String>,
    max_output_length: Option<usize>,
    concurrency: Option<usize>,
    // System log monitors: journald's SYSLOG_IDENTIFIER, filelog's message regex.
    source: Option<String>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NpdCondition {
    #[serde(rename = "type")]
    kind: String,
    reason: String,
    message: String,
}

#[derive(Debug, Deserialize)]
struct NpdRule {
    #[serde(rename = "type")]
    kind: String,
    condition: Option<String>,
    reason: String,
    /// Custom plugin monitors: the plugin to run.
    path: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    timeout: Option<String>,
    /// System log monitors: the regex matched against the end of the buffered lines.
    pattern: Option<String>,
    #[serde(rename = "patternGeneratedMessageSuffix")]
    suffix: Option<String>,
}

/// Where a log monitor reads.
#[derive(Debug, Clone, PartialEq)]
pub enum LogInput {
    /// `/dev/kmsg`, or a file of kmsg records (`6,1234,5678901,-;message`).
    Kmsg(PathBuf),
    /// A text log; `message` (NPD's `pluginConfig.message`) extracts the message from a line, and
    /// lines it does not match are skipped.
    File {
        path: PathBuf,
        message: Option<RegexText>,
    },
    /// The systemd journal (through `journalctl -o json --follow`), entries whose
    /// SYSLOG_IDENTIFIER is `identifier`; `dir` is NPD's `logPath` when it exists.
    Journald {
        dir: Option<PathBuf>,
        identifier: String,
    },
}

/// A compiled regex that compares by its text (configs are compared on reload).
#[derive(Debug, Clone)]
pub struct RegexText(pub regex::Regex);

impl PartialEq for RegexText {
    fn eq(&self, o: &Self) -> bool {
        self.0.as_str() == o.0.as_str()
    }
}

/// One rule of a log monitor.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRule {
    /// The condition a `permanent` rule sets; `None` for `temporary` (an event only).
    pub condition: Option<String>,
    pub reason: String,
    /// The rule's pattern with `\z` appended: it must match up to the end of the newest line.
    pub pattern: RegexText,
    /// NPD's `patternGeneratedMessageSuffix`, appended to the message as `; suffix`.
    pub suffix: Option<String>,
}

/// A condition a log monitor declares, with its healthy reason and message.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredCondition {
    pub kind: String,
    pub reason: String,
    pub message: String,
}

/// An NPD system-log-monitor file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMonitorSpec {
    /// NPD's `source`, e.g. `kernel-monitor`: the Events' source and the checks' name prefix.
    pub source: String,
    pub input: LogInput,
    /// How far back to read at start (kmsg and journald; a text file starts at its end).
    pub lookback: Duration,
    /// Lines kept for multi-line patterns (NPD's `bufferSize`, default 10).
    pub buffer_size: usize,
    /// Lines containing any of these are not matched (NPD's `skipList`).
    pub skip: Vec<String>,
    pub rules: Vec<LogRule>,
    pub conditions: Vec<DeclaredCondition>,
}

/// Bounds on a log monitor: NPD's default buffer is 10 lines; a pattern over more than 1,000 lines
/// is a mistake, not a use.
const MAX_BUFFER_LINES: usize = 1000;

/// Go's `time.ParseDuration` for the forms NPD configs use: `30s`, `5m`, `1m30s`, `500ms`, `1.5h`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} is missing a unit"))?;
        let value: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("duration {s:?} has a bad number"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let per = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("duration {s:?} has an unknown unit {u:?}")),
        };
        total += value * per;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Reads an NPD custom-plugin-monitor file into checks. Relative plugin paths resolve against the
/// file's directory.
pub fn load(path: &Path) -> Result<Vec<CheckSpec>, String> {
    use std::io::Read;
    // Bounded like the agent's own config: a path to /dev/zero must not eat the node's memory.
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read NPD config {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read NPD config {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "NPD config {} is not a regular file",
            path.display()
        ));
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read NPD config {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "NPD config {} is larger than {} KiB",
            path.display(),
            MAX_FILE_BYTES / 1024
        ));
    }
    parse(&text, path.parent().unwrap_or(Path::new(".")))
        .map_err(|e| format!("NPD config {}: {e}", path.display()))
}

/// NPD's own sample files are a few KiB.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// More plugins at once than any node runs; also below tokio's semaphore limit.
const MAX_CONCURRENCY: usize = 1024;

pub fn parse(text: &str, base: &Path) -> Result<Vec<CheckSpec>, String> {
    let f: NpdFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    for (i, c) in f.conditions.iter().enumerate() {
        if KUBELET_CONDITIONS.contains(&c.kind.as_str()) {
            return Err(format!(
                "conditions[{i}].type {:?} is kubelet's condition; keel-agent never writes it",
                c.kind
            ));
        }
    }
    match f.plugin.as_str() {
        "custom" => parse_custom(&f, base),
        "kmsg" | "filelog" | "journald" => parse_log_monitor(&f),
        other => Err(format!(
            "plugin {other:?} is not supported (custom, kmsg, filelog or journald)"
        )),
    }
}

/// A system-log-monitor file: one check per declared condition (its sticky state), one for the
/// events of `temporary` rules, all sharing one reader.
fn parse_log_monitor(f: &NpdFile) -> Result<Vec<CheckSpec>, String> {
    let pc = &f.plugin_config;
    let path = |default: &str| PathBuf::from(f.log_path.as_deref().unwrap_or(default));
    let input = match f.plugin.as_str() {
        "kmsg" => LogInput::Kmsg(path("/dev/kmsg")),
        "filelog" => {
            let Some(p) = &f.log_path else {
                return Err("plugin filelog needs logPath".into());
            };
            let message = match &pc.message {
                Some(m) => Some(RegexText(regex::Regex::new(m).map_err(|e| {
                    format!("pluginConfig.message is not a valid regex: {e}")
                })?)),
                None => None,
            };
            LogInput::File {
                path: PathBuf::from(p),
                message,
            }
        }
        _ => {
            let Some(identifier) = pc.source.clone().filter(|s| !s.is_empty()) else {
                return Err(
                    "plugin journald needs pluginConfig.source (the SYSLOG_IDENTIFIER to follow)"
                        .into(),
                );
            };
            LogInput::Journald {
                dir: f.log_path.as_ref().map(PathBuf::from),
                identifier,
            }
        }
    };
    let lookback = match &f.lookback {
        Some(s) => parse_go_duration(s).map_err(|e| format!("lookback: {e}"))?,
        None => Duration::ZERO,
    };
    let buffer_size = match f.buffer_size {
        None | Some(0) => 10,
        Some(n) if n <= MAX_BUFFER_LINES => n,
        Some(n) => {
            return Err(format!(
                "bufferSize {n} must be from 1 to {MAX_BUFFER_LINES} lines"
            ))
        }
    };
    let conditions: Vec<DeclaredCondition> = f
        .conditions
        .iter()
        .map(|c| DeclaredCondition {
            kind: c.kind.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect();
    let mut rules = Vec::new();
    for (i, r) in f.rules.iter().enumerate() {
        let Some(pattern) = &r.pattern else {
            return Err(format!("rules[{i}] has no pattern"));
        };
        // NPD appends `\z` so a rule matches at the end of the buffer, i.e. on the newest line.
        let re = regex::Regex::new(&format!("{pattern}\\z"))
            .map_err(|e| format!("rules[{i}].pattern is not a valid regex: {e}"))?;
        let condition = match r.kind.as_str() {
            "temporary" => None,
            "permanent" => {
                let Some(c) = &r.condition else {
                    return Err(format!("rules[{i}] is permanent but names no condition"));
                };
                if !conditions.iter().any(|d| &d.kind == c) {
                    return Err(format!(
                        "rules[{i}] sets condition {c:?} that `conditions` does not declare"
                    ));
                }
                Some(c.clone())
            }
            other => {
                return Err(format!(
                    "rules[{i}].type {other:?} must be temporary or permanent"
                ))
            }
        };
        rules.push(LogRule {
            condition,
            reason: r.reason.clone(),
            pattern: RegexText(re),
            suffix: r.suffix.clone(),
        });
    }
    let spec = Arc::new(LogMonitorSpec {
        source: f.source.clone(),
        input,
        lookback,
        buffer_size,
        skip: f.skip_list.clone(),
        rules,
        conditions,
    });
    // The checks run when the reader finds something (not at their interval), and every 10 s to
    // report that all is still well.
    let interval = Duration::from_secs(10);
    let mut out: Vec<CheckSpec> = spec
        .conditions
        .iter()
        .map(|c| CheckSpec {
            name: format!("{}/{}", f.source, c.kind),
            interval,
            timeout: Duration::from_secs(1),
            condition: c.kind.clone(),
            report: Report::Condition,
            ok_reason: c.reason.clone(),
            ok_message: c.message.clone(),
            kind: CheckKind::LogMonitor {
                monitor: spec.clone(),
                condition: Some(c.kind.clone()),
            },
        })
        .collect();
    if spec.rules.iter().any(|r| r.condition.is_none()) {
        out.push(CheckSpec {
            name: format!("{}/events", f.source),
            interval,
            timeout: Duration::from_secs(1),
            condition: f.source.clone(),
            report: Report::Event,
            ok_reason: String::new(),
            ok_message: String::new(),
            kind: CheckKind::LogMonitor {
                monitor: spec.clone(),
                condition: None,
            },
        });
    }
    Ok(out)
}

fn parse_custom(f: &NpdFile, base: &Path) -> Result<Vec<CheckSpec>, String> {
    let pc = &f.plugin_config;
    let interval = match &pc.invoke_interval {
        Some(s) => parse_go_duration(s)?,
        None => Duration::from_secs(30),
    };
    let timeout = match &pc.timeout {
        Some(s) => parse_go_duration(s)?,
        None => Duration::from_secs(5),
    };
    if interval.is_zero() || timeout.is_zero() {
        return Err("invoke_interval and timeout must be more than 0".into());
    }
    let max_output_length = pc.max_output_length.unwrap_or(80);
    let concurrency = pc.concurrency.unwrap_or(3);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(format!(
            "pluginConfig.concurrency {concurrency} must be from 1 to {MAX_CONCURRENCY}"
        ));
    }
    let limiter = Limiter(Arc::new(tokio::sync::Semaphore::new(concurrency)));
    let mut out = Vec::new();
    for (i, r) in f.rules.iter().enumerate() {
        let report = match r.kind.as_str() {
            "permanent" => Report::Condition,
            "temporary" => Report::Event,
            other => {
                return Err(format!(
                    "rules[{i}].type {other:?} must be temporary or permanent"
                ))
            }
        };
        let condition = match (report, &r.condition) {
            (Report::Condition, Some(c)) => c.clone(),
            (Report::Condition, None) => {
                return Err(format!("rules[{i}] is permanent but names no condition"))
            }
            (Report::Event, _) => f.source.clone(),
        };
        let (ok_reason, ok_message) = f
            .conditions
            .iter()
            .find(|c| c.kind == condition)
            .map(|c| (c.reason.clone(), c.message.clone()))
            .unwrap_or_else(|| (format!("No{condition}"), String::new()));
        if report == Report::Condition && !f.conditions.iter().any(|c| c.kind == condition) {
            return Err(format!(
                "rules[{i}] sets condition {condition:?} that `conditions` does not declare"
            ));
        }
        let rule_timeout = match &r.timeout {
            Some(s) => parse_go_duration(s)?,
            None => timeout,
        };
        let Some(path) = &r.path else {
            return Err(format!("rules[{i}] has no path (the plugin to run)"));
        };
        let mut command = PathBuf::from(path);
        if command.is_relative() {
            command = base.join(command);
        }
        out.push(CheckSpec {
            name: format!("{}/{}-{}", f.source, i, r.reason),
            interval,
            timeout: rule_timeout,
            condition,
            report,
            ok_reason,
            ok_message,
            kind: CheckKind::Plugin {
                command,
                args: r.args.clone(),
                max_output_length,
                problem_reason: r.reason.clone(),
                concurrency: Some(limiter.clone()),
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// node-problem-detector's own `config/custom-plugin-monitor.json`-style file, verbatim shape.
    pub(crate) const NPD_NTP: &str = r#"{
  "plugin": "custom",
  "pluginConfig": {
    "invoke_interval": "30s",
    "timeout": "5s",
    "max_output_length": 80,
    "concurrency": 3,
    "enable_message_change_based_condition_update": false
  },
  "source": "ntp-custom-plugin-monitor",
  "metricsReporting": true,
  "conditions": [
    {
      "type": "NTPProblem",
      "reason": "NTPIsUp",
      "message": "ntp service is up"
    }
  ],
  "rules": [
    {
      "type": "temporary",
      "reason": "NTPIsDown",
      "path": "./config/plugin/check_ntp.sh",
      "timeout": "3s"
    },
    {
      "type": "permanent",
      "condition": "NTPProblem",
      "reason": "NTPIsDown",
      "path": "./config/plugin/check_ntp.sh",
      "timeout": "3s"
    }
  ]
}"#;

    /// Found by the npd_config fuzz target: tokio's semaphore panics above 2^61 - 1 permits.
    #[test]
    fn concurrency_out_of_range_is_refused_not_a_panic() {
        for c in ["0", "1025", "4611686018427387904"] {
            let text = NPD_NTP.replace("\"concurrency\": 3", &format!("\"concurrency\": {c}"));
            let e = parse(&text, Path::new("/etc/npd")).unwrap_err();
            assert!(
                e.contains("concurrency") && e.contains("1 to 1024"),
                "{c}: {e}"
            );
        }
    }

    #[test]
    fn a_device_or_an_oversized_file_is_refused() {
        let e = load(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; 2 * 1024 * 1024]).unwrap();
        let e = load(&big).unwrap_err();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
    }

    #[test]
    fn reads_an_upstream_npd_config_unchanged() {
        let checks = parse(NPD_NTP, Path::new("/etc/npd")).unwrap();
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].report, Report::Event);
        assert_eq!(checks[1].report, Report::Condition);
        assert_eq!(checks[1].condition, "NTPProblem");
        assert_eq!(checks[1].ok_reason, "NTPIsUp");
        assert_eq!(checks[1].interval, Duration::from_secs(30));
        assert_eq!(checks[1].timeout, Duration::from_secs(3));
        match &checks[1].kind {
            CheckKind::Plugin {
                command,
                problem_reason,
                max_output_length,
                ..
            } => {
                assert_eq!(command, Path::new("/etc/npd/./config/plugin/check_ntp.sh"));
                assert_eq!(problem_reason, "NTPIsDown");
                assert_eq!(*max_output_length, 80);
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("5d").is_err());
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/fixtures/npd");

    fn fixture(name: &str) -> Vec<CheckSpec> {
        load(&Path::new(FIXTURES).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn monitor(c: &CheckSpec) -> (&LogMonitorSpec, Option<&str>) {
        match &c.kind {
            CheckKind::LogMonitor { monitor, condition } => (monitor, condition.as_deref()),
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn npd_sample_log_monitors_are_read_unchanged() {
        // kernel-monitor.json: kmsg, 3 conditions, 14 rules (4 permanent), lookback 5m, buffer 10.
        let checks = fixture("kernel-monitor.json");
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kernel-monitor/KernelDeadlock",
                "kernel-monitor/XfsShutdown",
                "kernel-monitor/CperHardwareErrorFatal",
                "kernel-monitor/events"
            ]
        );
        let (m, cond) = monitor(&checks[0]);
        assert_eq!(cond, Some("KernelDeadlock"));
        assert_eq!(m.input, LogInput::Kmsg("/dev/kmsg".into()));
        assert_eq!(m.lookback, Duration::from_secs(300));
        assert_eq!(m.buffer_size, 10);
        assert_eq!(m.rules.len(), 14);
        assert_eq!(m.rules.iter().filter(|r| r.condition.is_some()).count(), 3);
        assert_eq!(checks[0].ok_reason, "KernelHasNoDeadlock");
        assert_eq!(checks[0].report, Report::Condition);
        assert_eq!(checks[3].report, Report::Event);
        assert_eq!(checks[3].condition, "kernel-monitor");
        // The checks of one file share one monitor (one reader).
        for c in &checks[1..] {
            assert!(
                matches!(&c.kind, CheckKind::LogMonitor { monitor, .. } if Arc::ptr_eq(monitor, match &checks[0].kind { CheckKind::LogMonitor { monitor, .. } => monitor, _ => unreachable!() }))
            );
        }
        // NPD's metrics: each rule once over the checks.
        let rules: usize = checks.iter().map(|c| c.npd_rules().len()).sum();
        assert_eq!(rules, 14);

        let checks = fixture("kernel-monitor-filelog.json");
        let (m, _) = monitor(&checks[0]);
        match &m.input {
            LogInput::File { path, message } => {
                assert_eq!(path, Path::new("/var/log/kern.log"));
                let re = &message.as_ref().unwrap().0;
                let line = "Dec  1 23:16:06 node kernel: [ 12.345] Out of memory: Killed process 1";
                assert_eq!(
                    &re.captures(line).unwrap()[1],
                    "Out of memory: Killed process 1"
                );
            }
            i => panic!("{i:?}"),
        }

        for (file, identifier, conditions) in [
            ("systemd-monitor.json", "systemd", 0),
            ("docker-monitor.json", "dockerd", 1),
        ] {
            let checks = fixture(file);
            let (m, _) = monitor(checks.last().unwrap());
            assert_eq!(
                m.input,
                LogInput::Journald {
                    dir: Some("/var/log/journal".into()),
                    identifier: identifier.into()
                },
                "{file}"
            );
            assert_eq!(m.conditions.len(), conditions, "{file}");
        }
        assert_eq!(fixture("readonly-monitor.json").len(), 1);
        assert_eq!(fixture("custom-plugin-monitor.json").len(), 2);
    }

    #[test]
    fn log_monitor_mistakes_are_named() {
        let base = r#"{"plugin": "kmsg", "source": "k", "conditions": [{"type": "KernelDeadlock", "reason": "R", "message": "m"}], "rules": [RULE]}"#;
        for (rule, want) in [
            (
                r#"{"type": "temporary", "reason": "X", "pattern": "(unclosed"}"#,
                "rules[0].pattern is not a valid regex",
            ),
            (
                r#"{"type": "temporary", "reason": "X"}"#,
                "rules[0] has no pattern",
            ),
            (
                r#"{"type": "permanent", "reason": "X", "pattern": "x"}"#,
                "permanent but names no condition",
            ),
            (
                r#"{"type": "permanent", "condition": "Other", "reason": "X", "pattern": "x"}"#,
                "\"Other\" that `conditions` does not declare",
            ),
            (
                r#"{"type": "sometimes", "reason": "X", "pattern": "x"}"#,
                "must be temporary or permanent",
            ),
        ] {
            let e = parse(&base.replace("RULE", rule), Path::new("/")).unwrap_err();
            assert!(e.contains(want), "{rule}: {e}");
        }
        let e = parse(
            r#"{"plugin": "journald", "source": "s", "rules": []}"#,
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.contains("pluginConfig.source"), "{e}");
        let e = parse(
            r#"{"plugin": "filelog", "source": "s", "rules": []}"#,
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.contains("needs logPath"), "{e}");
        let e = parse(
            r#"{"plugin": "kmsg", "source": "s", "bufferSize": 5000, "rules": []}"#,
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.contains("bufferSize 5000 must be from 1 to 1000"), "{e}");
        let e = parse(
            r#"{"plugin": "syslog", "source": "s", "rules": []}"#,
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.contains("\"syslog\" is not supported"), "{e}");
    }

    #[test]
    fn kubelet_conditions_are_refused() {
        let text = r#"{"plugin": "kmsg", "source": "k", "conditions": [{"type": "MemoryPressure", "reason": "R", "message": "m"}], "rules": []}"#;
        let e = parse(text, Path::new("/")).unwrap_err();
        assert!(
            e.contains("\"MemoryPressure\" is kubelet's condition"),
            "{e}"
        );
        let e = parse(&NPD_NTP.replace("NTPProblem", "Ready"), Path::new("/")).unwrap_err();
        assert!(e.contains("\"Ready\" is kubelet's condition"), "{e}");
    }

    #[test]
    fn permanent_rule_without_declared_condition_is_refused() {
        let bad = NPD_NTP.replace("\"condition\": \"NTPProblem\"", "\"condition\": \"Other\"");
        assert!(parse(&bad, Path::new("/")).unwrap_err().contains("Other"));
    }
}
