//! node-problem-detector custom-plugin-monitor configs (`plugin: custom`), read unchanged and turned
//! into plugin checks, so that existing NPD plugins run under Keel without edits.
//!
//! Upstream: `pkg/custompluginmonitor/types/config.go`. `permanent` rules set a Node condition,
//! `temporary` rules only emit events. Fields Keel does not use (`metricsReporting`,
//! `skip_initial_status`, ...) are accepted and ignored, as NPD would read them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::health::{CheckKind, CheckSpec, Limiter, Report};

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
}

#[derive(Debug, Default, Deserialize)]
struct PluginConfig {
    invoke_interval: Option<String>,
    timeout: Option<String>,
    max_output_length: Option<usize>,
    concurrency: Option<usize>,
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
    path: String,
    #[serde(default)]
    args: Vec<String>,
    timeout: Option<String>,
}

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
    if f.plugin != "custom" {
        return Err(format!(
            "plugin {:?} is not supported (only \"custom\")",
            f.plugin
        ));
    }
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
        let mut command = PathBuf::from(&r.path);
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

    #[test]
    fn permanent_rule_without_declared_condition_is_refused() {
        let bad = NPD_NTP.replace("\"condition\": \"NTPProblem\"", "\"condition\": \"Other\"");
        assert!(parse(&bad, Path::new("/")).unwrap_err().contains("Other"));
    }
}
