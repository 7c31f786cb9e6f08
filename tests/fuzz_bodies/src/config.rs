//! The three config parsers: keel-lb's file, keel-agent's file and node-problem-detector
//! custom-plugin-monitor JSON. Config files are read as UTF-8 (`Source::read`), so other input stops
//! here. An invalid config must come back as errors that name the file and point at one of its lines.

use std::path::Path;

use keel_agent::config::health::{CheckKind, CheckSpec};
use keel_agent::config::npd;
use keel_common::config::{ConfigErrors, Source};

/// `keel-lb check`: parse and validate (`keel_lb::config::load_source`, what `load` does after
/// reading the file).
pub fn lb(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let src = Source::from_text("lb.yaml", text);
    match keel_lb::config::load_source(&src) {
        Ok(cfg) => {
            let _ = cfg.warnings();
            let _ = cfg.listen_set();
        }
        Err(errors) => check_errors(&errors, &src),
    }
}

/// `keel-agent check`: parse and validate (`keel_agent::config::from_source`, what `load` does after
/// reading the file).
///
/// Validation reads the NPD files that `health.npd_plugin_configs` names, from the real file
/// system; a fuzzer that writes `/dev/kmsg` there would block on it, so such inputs stop here (the
/// NPD format itself is the `npd_config` target).
pub fn agent(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_files(text) {
        return;
    }
    let src = Source::from_text("agent.yaml", text);
    if let Err(errors) = keel_agent::config::from_source(&src, Some("node-1")) {
        check_errors(&errors, &src);
    }
}

/// Whether any mapping in the YAML (whatever section it is in) has the key `npd_plugin_configs`
/// with anything but an empty list.
fn names_files(text: &str) -> bool {
    fn walk(v: &serde_yaml::Value) -> bool {
        match v {
            serde_yaml::Value::Mapping(m) => m.iter().any(|(k, v)| {
                let empty = v.as_sequence().is_some_and(|s| s.is_empty());
                (k.as_str() == Some("npd_plugin_configs") && !empty) || walk(k) || walk(v)
            }),
            serde_yaml::Value::Sequence(s) => s.iter().any(walk),
            serde_yaml::Value::Tagged(t) => walk(&t.value),
            _ => false,
        }
    }
    // Text that does not load as YAML never reaches validation.
    serde_yaml::from_str::<serde_yaml::Value>(text).is_ok_and(|v| walk(&v))
}

/// Every error names the file; a line, when given, is one of the file's lines.
fn check_errors(errors: &ConfigErrors, src: &Source) {
    assert!(!errors.0.is_empty(), "an error without errors");
    // libyaml's line breaks: LF, CR LF, CR, NEL, LS, PS; one more line for an error at the end.
    let breaks = src
        .text
        .replace("\r\n", "\n")
        .matches(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
        .count();
    for e in &errors.0 {
        assert_eq!(e.file, src.path, "{e}");
        if let Some(line) = e.line {
            assert!(
                (1..=breaks + 2).contains(&line),
                "line {line} of a {}-line file: {e}",
                breaks + 1
            );
        }
        assert!(!e.message.is_empty(), "{e}");
    }
}

/// An NPD custom-plugin-monitor file as `health.npd_plugin_configs` reads it (`npd::parse`, what
/// `npd::load` does after reading the file). Input that does not start with `{` is handed to
/// `parse_go_duration` alone (the durations inside those files), which is reached only through
/// whole files otherwise.
pub fn npd(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !text.trim_start().starts_with('{') {
        if let Ok(d) = npd::parse_go_duration(text) {
            assert!(d.as_secs_f64() <= 1e9, "{text:?} gave {d:?}");
        }
        return;
    }
    let base = Path::new("/etc/keel/npd");
    let Ok(specs) = npd::parse(text, base) else {
        return;
    };
    for spec in &specs {
        check_npd_spec(spec);
    }
}

fn check_npd_spec(spec: &CheckSpec) {
    assert!(!spec.interval.is_zero(), "{spec:?}");
    let CheckKind::Plugin { command, .. } = &spec.kind else {
        panic!("an NPD rule became something other than a plugin: {spec:?}");
    };
    // Relative plugin paths resolve against the file's directory.
    assert!(command.is_absolute(), "{spec:?}");
}
