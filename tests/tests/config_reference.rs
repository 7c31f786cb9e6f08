//! The config references, docs/lb-config.md and docs/agent-config.md, are held true against the real
//! validators (`keel-lb check`, `keel-agent check`), never against a copy of them:
//!
//! - field sets: every Raw struct is `deny_unknown_fields`, so an unknown key `zz_probe` written into
//!   one section of a valid config makes `check` fail with serde's list of the fields that section
//!   takes; that list must equal the fields the document lists for the section. A field added to the
//!   code without a row in the document fails here, and so does a row for a field that went away.
//! - kinds: each kind of agent health check takes exactly the fields its table lists.
//! - ranges: every duration or integer row whose range is `a..b` (also `a..`, `>a..b`) is tried at
//!   both ends (accepted) and one step (1us, or 1) outside them (refused, naming the field).
//! - enums: a value outside the listed ones is refused naming the field, and where serde lists the
//!   accepted words, they are the document's.
//! - tables: every row has all five columns, a known type, and a default inside its own range; the
//!   example of each document passes `check`.
//!
//! Document format (see "Reading the tables" in either document): a `###` heading whose first code
//! span is the section path (none for the top level; a second code span `kind: X` marks the fields of
//! one health check kind), followed by a table `field | type | default | range / values | meaning`
//! whose field column is the full path of the field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_yaml::{Mapping, Value};

// ---------------------------------------------------------------------------------------------
// The documents

#[derive(Debug, Clone)]
struct Row {
    /// Full path as written, e.g. `pools.<name>.health.interval`.
    path: String,
    /// Last segment: the key in the YAML.
    name: String,
    ty: String,
    default: String,
    range: String,
}

#[derive(Debug)]
struct Section {
    /// `""` for the top level, else e.g. `frontends[].timeouts`.
    path: String,
    /// `Some("disk")` for the table of one health check kind.
    kind: Option<String>,
    rows: Vec<Row>,
}

const HEADER: [&str; 5] = ["field", "type", "default", "range / values", "meaning"];

const TYPES: &[&str] = &[
    "string",
    "integer",
    "boolean",
    "duration",
    "address",
    "path",
    "enum",
    "threshold",
    "mapping",
    "list of strings",
    "list of mappings",
    "map of strings",
    "map of mappings",
];

/// The contents of the code spans (`...`) of a line, in order.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// The cells of a table row, split at `|` outside code spans.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut in_code = false;
    for c in inner.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.last_mut().unwrap().push(c);
            }
            '|' if !in_code => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

fn parse_doc(file: &str) -> Vec<Section> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut sections: Vec<Section> = Vec::new();
    let mut heading: Option<(String, Option<String>)> = None;
    let mut in_table = false;
    let mut in_fence = false;
    for (n, line) in text.lines().enumerate() {
        let at = format!("{file}:{}", n + 1);
        if line.starts_with("```") {
            in_fence = !in_fence;
        }
        if in_fence {
            continue;
        }
        if let Some(h) = line.strip_prefix("### ") {
            let spans = code_spans(h);
            let kind = spans
                .iter()
                .find_map(|s| s.strip_prefix("kind: ").map(str::to_string));
            let path = spans
                .first()
                .filter(|s| !s.starts_with("kind: "))
                .cloned()
                .unwrap_or_default();
            heading = Some((path, kind));
            in_table = false;
            continue;
        }
        if line.starts_with('#') {
            heading = None;
            in_table = false;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let c = cells(line);
        if !in_table {
            assert_eq!(c, HEADER, "{at}: a table's header must be {HEADER:?}");
            let (path, kind) = heading
                .take()
                .unwrap_or_else(|| panic!("{at}: a field table needs its own ### heading"));
            sections.push(Section {
                path,
                kind,
                rows: Vec::new(),
            });
            in_table = true;
            continue;
        }
        if c.iter().all(|x| x.chars().all(|ch| ch == '-' || ch == ':')) {
            continue;
        }
        assert_eq!(c.len(), 5, "{at}: a row has five columns: {line}");
        for (i, cell) in c.iter().enumerate() {
            assert!(!cell.is_empty(), "{at}: column {:?} is empty", HEADER[i]);
        }
        let section = sections.last_mut().unwrap();
        let spans = code_spans(&c[0]);
        assert!(
            spans.len() == 1 && c[0] == format!("`{}`", spans[0]),
            "{at}: the field column is one code span: {}",
            c[0]
        );
        let full = spans[0].clone();
        let name = if section.path.is_empty() {
            full.clone()
        } else {
            full.strip_prefix(&format!("{}.", section.path))
                .unwrap_or_else(|| {
                    panic!("{at}: {full} is not a field of section {}", section.path)
                })
                .to_string()
        };
        assert!(
            !name.is_empty() && name.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
            "{at}: {full}: the last segment must be a plain key"
        );
        assert!(
            TYPES.contains(&c[1].as_str()),
            "{at}: {full}: type {:?} is not one of {TYPES:?}",
            c[1]
        );
        assert!(
            !section.rows.iter().any(|r| r.name == name),
            "{at}: {full} is listed twice"
        );
        section.rows.push(Row {
            path: full,
            name,
            ty: c[1].clone(),
            default: c[2].clone(),
            range: c[3].clone(),
        });
    }
    assert!(
        sections.len() > 5,
        "{file}: expected field tables, found {}",
        sections.len()
    );
    assert!(
        sections.iter().filter(|s| s.path.is_empty()).count() == 1,
        "{file}: exactly one table is the top level (a ### heading without a code span)"
    );
    // Every nested section a row points at is documented.
    for s in &sections {
        for r in &s.rows {
            let want = match r.ty.as_str() {
                "mapping" => r.path.clone(),
                "list of mappings" => format!("{}[]", r.path),
                "map of mappings" => format!("{}.<name>", r.path),
                _ => continue,
            };
            assert!(
                sections.iter().any(|x| x.path == want),
                "{file}: {} is a {}, but no table documents `{want}`",
                r.path,
                r.ty
            );
        }
    }
    sections
}

/// Field names per section path (the tables of one path, e.g. every check kind, together).
fn fields_by_section(sections: &[Section]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sections {
        let set = out.entry(s.path.clone()).or_default();
        for r in &s.rows {
            assert!(
                set.insert(r.name.clone()) || s.kind.is_some(),
                "{} is documented twice",
                r.path
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Configs and the binaries

/// A valid keel-lb config with every section present. The health checks' interval and timeout sit
/// far apart so that either may be moved to an end of its range without meeting the other.
const LB_BASE: &str = r#"
admin:
  listen: 127.0.0.1:9100
metrics:
  listen: 127.0.0.1:9101
frontends:
  - name: f
    listen: 127.0.0.1:6443
    pool: p
  - name: u
    listen: 127.0.0.1:5353
    protocol: udp
    pool: p
    udp: {}
pools:
  p:
    health:
      type: http
      interval: 1h
      timeout: 1ms
    backends:
      - address: 198.18.0.11
        port: 6443
vrrp:
  routers:
    - name: r4
      vrid: 51
      interface: eth0
      vips: [198.18.0.100/24]
      track:
        pools: [{ name: p, weight: 10 }]
        interfaces: [{ name: eth1, weight: 10 }]
services:
  kubeconfig: /etc/keel/lb-workload.kubeconfig
  health:
    interval: 1h
    timeout: 10ms
  address_pools:
    - name: default
      addresses: [198.18.10.0/26]
      vrrp_routers: [r4]
bgp:
  vips:
    - address: 198.18.100.10
      track_pools: [p]
  handoff:
    peers: [198.18.0.2, 198.18.0.3]
"#;

/// A valid keel-agent config with every section present (the first check's timeout is at most the
/// smallest interval).
const AGENT_BASE: &str = r#"
cluster:
  server: https://198.18.0.10:6443
  token: abcdef.0123456789abcdef
  ca_pins: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
node:
  name: worker-1
  os: linux
  taints: [{ key: dedicated, value: x, effect: NoSchedule }]
  windows_taint: { key: os, value: windows, effect: NoSchedule }
metrics:
  listen: 127.0.0.1:10258
health:
  checks:
    - { name: mem, kind: memory, min_available: 1%, timeout: 100ms }
    - { name: svc, kind: service, services: [{ name: kubelet }] }
    - { name: kern, kind: kernel_log, patterns: [{ reason: Oops, regex: oops }] }
  taints:
    - { condition: MemoryAvailableLow, key: keel.io/memory-low, effect: NoSchedule }
  drain: {}
  api: { listen: 127.0.0.1:10260, cert: /a.crt, key: /a.key, client_ca: /ca.crt }
"#;

/// The smallest valid check of each kind (the per-kind test adds one field to it).
fn minimal_check(kind: &str) -> Value {
    let yaml = match kind {
        "memory" => "{ min_available: 1% }",
        "disk" => "{ path: /, min_free: 1% }",
        "pids" => "{}",
        "readonly" => "{}",
        "clock" => "{ server: 127.0.0.1 }",
        "service" => "{ services: [{ name: kubelet }] }",
        "kernel_log" => "{ patterns: [{ reason: Oops, regex: oops }] }",
        "plugin" => "{ command: /bin/true }",
        other => {
            panic!("docs/agent-config.md documents kind {other:?}: add its minimal check here")
        }
    };
    let mut v: Value = serde_yaml::from_str(yaml).unwrap();
    let m = v.as_mapping_mut().unwrap();
    m.insert("name".into(), "c".into());
    m.insert("kind".into(), kind.into());
    v
}

#[derive(Clone, Copy)]
struct Program {
    bin: &'static str,
    doc: &'static str,
    base: &'static str,
}

const LB: Program = Program {
    bin: "keel-lb",
    doc: "docs/lb-config.md",
    base: LB_BASE,
};
const AGENT: Program = Program {
    bin: "keel-agent",
    doc: "docs/agent-config.md",
    base: AGENT_BASE,
};

struct Outcome {
    ok: bool,
    text: String,
    yaml: String,
}

/// Runs `<bin> check --config` on `config`.
fn check(p: Program, config: &Value) -> Outcome {
    let yaml = serde_yaml::to_string(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = Command::new(keel_e2e::bin(p.bin))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    Outcome {
        ok: out.status.success(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        yaml,
    }
}

fn base(p: Program) -> Value {
    serde_yaml::from_str(p.base).unwrap()
}

/// The mapping of `section` (a documented path such as `pools.<name>.health`) in `config`, and its
/// path as error messages spell it (`pools.p.health`). Missing mappings are created; lists must
/// hold an item (`[]` is the first one, or the first that has the next segment's list) and maps a
/// key (`<name>` is the first one).
fn locate<'a>(config: &'a mut Value, section: &str) -> (&'a mut Mapping, String) {
    let mut cur = config;
    let mut spelled = String::new();
    let segs: Vec<&str> = section.split('.').filter(|s| !s.is_empty()).collect();
    for (i, seg) in segs.iter().copied().enumerate() {
        // `health.checks[].patterns[]`: the check to enter is one that has `patterns`.
        let next_list = segs.get(i + 1).and_then(|n| n.strip_suffix("[]"));
        // `frontends[].udp`: the first frontend that has a `udp` section, if one has.
        let next_key = segs
            .get(i + 1)
            .filter(|n| !n.ends_with("[]") && **n != "<name>");
        let Value::Mapping(m) = cur else {
            panic!("{section}: {spelled} is not a mapping in the base config");
        };
        if !spelled.is_empty() {
            spelled.push('.');
        }
        if seg == "<name>" {
            let key = m
                .keys()
                .next()
                .unwrap_or_else(|| panic!("{section}: the base config's {spelled} is empty"))
                .clone();
            spelled.push_str(key.as_str().unwrap());
            cur = m.get_mut(&key).unwrap();
        } else if let Some(key) = seg.strip_suffix("[]") {
            let items = m
                .get_mut(key)
                .and_then(Value::as_sequence_mut)
                .unwrap_or_else(|| panic!("{section}: the base config needs a list {key}"));
            let at = items
                .iter()
                .position(|item| next_key.is_some_and(|n| item.get(*n).is_some()))
                .or_else(|| {
                    items
                        .iter()
                        .position(|item| next_list.is_none_or(|n| item.get(n).is_some()))
                })
                .unwrap_or_else(|| panic!("{section}: the base config needs an item in {key}"));
            spelled.push_str(&format!("{key}[{at}]"));
            cur = &mut items[at];
        } else {
            spelled.push_str(seg);
            let v = m
                .entry(seg.into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if v.is_null() {
                *v = Value::Mapping(Mapping::new());
            }
            cur = v;
        }
    }
    match cur {
        Value::Mapping(m) => (m, spelled),
        _ => panic!("{section} is not a mapping in the base config"),
    }
}

/// `config` with `value` at `row`'s place; returns it and the field's path as errors spell it.
fn with(p: Program, section: &str, key: &str, value: Value) -> (Value, String) {
    with_in(base(p), section, key, value)
}

/// `config` with `value` at `section.key`; returns it and the field's path as errors spell it.
fn with_in(mut config: Value, section: &str, key: &str, value: Value) -> (Value, String) {
    let (m, spelled) = locate(&mut config, section);
    m.insert(key.into(), value);
    let field = if spelled.is_empty() {
        key.to_string()
    } else {
        format!("{spelled}.{key}")
    };
    (config, field)
}

/// The backticked names after `expected` in serde's "unknown field/variant ..., expected ..." line.
fn expected_list(text: &str, marker: &str) -> Option<BTreeSet<String>> {
    let line = text.lines().find(|l| l.contains(marker))?;
    let rest = &line[line.find(marker)? + marker.len()..];
    let rest = &rest[rest.find("expected")?..];
    Some(code_spans(rest).into_iter().collect())
}

// ---------------------------------------------------------------------------------------------
// (a) field sets

fn field_sets_match(p: Program) {
    let sections = parse_doc(p.doc);
    let base_outcome = check(p, &base(p));
    assert!(
        base_outcome.ok,
        "the base config of this test must pass {} check:\n{}",
        p.bin, base_outcome.text
    );
    let mut failures = Vec::new();
    for (path, documented) in fields_by_section(&sections) {
        let (config, _) = with(p, &path, "zz_probe", Value::from(1));
        let out = check(p, &config);
        let accepted = expected_list(&out.text, "unknown field `zz_probe`").unwrap_or_else(|| {
            panic!(
                "{}: writing zz_probe into `{path}` did not draw serde's list of fields:\n{}\n--- config:\n{}",
                p.bin, out.text, out.yaml
            )
        });
        if accepted != documented {
            let missing: Vec<_> = accepted.difference(&documented).collect();
            let extra: Vec<_> = documented.difference(&accepted).collect();
            failures.push(format!(
                "`{path}`: {} takes fields the document does not list: {missing:?}; the document lists fields it does not take: {extra:?}",
                p.bin
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} is out of date:\n{}",
        p.doc,
        failures.join("\n")
    );
}

#[test]
fn lb_reference_lists_exactly_the_fields_keel_lb_takes() {
    field_sets_match(LB);
}

#[test]
fn agent_reference_lists_exactly_the_fields_keel_agent_takes() {
    field_sets_match(AGENT);
}

/// Each kind of health check takes its own fields and refuses the others by name.
#[test]
fn agent_reference_lists_exactly_the_fields_of_each_check_kind() {
    let sections = parse_doc(AGENT.doc);
    let common: BTreeSet<String> = sections
        .iter()
        .find(|s| s.path == "health.checks[]" && s.kind.is_none())
        .expect("a table of the fields every check takes")
        .rows
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let kinds: Vec<&Section> = sections
        .iter()
        .filter(|s| s.path == "health.checks[]" && s.kind.is_some())
        .collect();
    let all: Vec<&Row> = kinds.iter().flat_map(|s| s.rows.iter()).collect();

    // The kinds documented are the kinds the validator knows.
    let (config, _) = with(AGENT, "health.checks[]", "kind", "zz_bogus".into());
    let out = check(AGENT, &config);
    let known: BTreeSet<String> = out
        .text
        .lines()
        .find_map(|l| l.split_once("(one of ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no list of kinds in:\n{}", out.text))
        .trim_end_matches(')')
        .split(", ")
        .map(str::to_string)
        .collect();
    let documented: BTreeSet<String> = kinds.iter().map(|s| s.kind.clone().unwrap()).collect();
    assert_eq!(documented, known, "check kinds: document vs keel-agent");

    let mut failures = Vec::new();
    for section in &kinds {
        let kind = section.kind.as_deref().unwrap();
        let own: BTreeSet<&str> = section.rows.iter().map(|r| r.name.as_str()).collect();
        let mut config = base(AGENT);
        let (health, _) = locate(&mut config, "health");
        health.insert("checks".into(), Value::Sequence(vec![minimal_check(kind)]));
        // The base's taint rule names the memory check's condition.
        health.remove("taints");
        let out = check(AGENT, &config);
        assert!(out.ok, "minimal {kind} check is refused:\n{}", out.text);
        for row in &all {
            if common.contains(&row.name) {
                continue;
            }
            let mut c = config.clone();
            let (check_map, spelled) = locate(&mut c, "health.checks[]");
            check_map.insert(row.name.as_str().into(), sample(&row.ty));
            let out = check(AGENT, &c);
            let refused = out.text.contains(&format!(
                "{spelled}.{}: does not apply to a {kind} check",
                row.name
            ));
            if refused == own.contains(row.name.as_str()) {
                failures.push(format!(
                    "kind {kind}, field {}: the document says it {}, keel-agent check says:\n{}",
                    row.name,
                    if refused { "applies" } else { "does not apply" },
                    out.text
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A value of the documented type, for a test that only looks at whether a field is taken.
fn sample(ty: &str) -> Value {
    match ty {
        "duration" => "1s".into(),
        "integer" => 1.into(),
        "boolean" => true.into(),
        t if t.starts_with("list") => Value::Sequence(Vec::new()),
        t if t.starts_with("map") => Value::Mapping(Mapping::new()),
        _ => "x".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// (b) ranges

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Duration,
    Integer,
}

/// `a..b`, `a..`, `>a..b`, `>a..` in the range column: (exclusive low, low, high). Durations are
/// in microseconds.
#[derive(Debug)]
struct Range {
    exclusive_low: bool,
    low: (u128, String),
    high: Option<(u128, String)>,
}

fn parse_range(kind: Kind, cell: &str) -> Option<Range> {
    let span = code_spans(cell).into_iter().find(|s| s.contains(".."))?;
    let (lo, hi) = span.split_once("..").unwrap();
    let (exclusive_low, lo) = match lo.strip_prefix('>') {
        Some(l) => (true, l),
        None => (false, lo),
    };
    let value = |t: &str| -> (u128, String) {
        let v = match kind {
            Kind::Duration => micros(t),
            Kind::Integer => t
                .parse()
                .unwrap_or_else(|_| panic!("range {span:?}: {t:?} is not an integer")),
        };
        (v, t.to_string())
    };
    Some(Range {
        exclusive_low,
        low: value(lo),
        high: (!hi.is_empty()).then(|| value(hi)),
    })
}

/// `250ms` → 250000.
fn micros(text: &str) -> u128 {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or_else(|| panic!("duration {text:?} has no unit"));
    let (num, unit) = text.split_at(split);
    let per: f64 = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => panic!("duration {text:?}: unknown unit"),
    };
    let n: f64 = num
        .parse()
        .unwrap_or_else(|_| panic!("duration {text:?}: not a number"));
    (n * per).round() as u128
}

fn kind_of(row: &Row) -> Option<Kind> {
    match row.ty.as_str() {
        "duration" => Some(Kind::Duration),
        "integer" => Some(Kind::Integer),
        _ => None,
    }
}

fn yaml_value(kind: Kind, v: u128, text: Option<&str>) -> Value {
    match kind {
        Kind::Duration => text
            .map(str::to_string)
            .unwrap_or_else(|| {
                keel_common::duration::format(std::time::Duration::from_micros(v as u64))
            })
            .into(),
        Kind::Integer => Value::from(v as u64),
    }
}

fn ranges_hold(p: Program) -> usize {
    let sections = parse_doc(p.doc);
    let mut failures = Vec::new();
    let mut tried = 0;
    for s in &sections {
        // A kind's own field is tried on a config whose only check is of that kind.
        let start = match &s.kind {
            None => base(p),
            Some(kind) => {
                let mut config = base(p);
                let (health, _) = locate(&mut config, "health");
                health.insert("checks".into(), Value::Sequence(vec![minimal_check(kind)]));
                // The base's taint rule names the memory check's condition.
                health.remove("taints");
                config
            }
        };
        for row in &s.rows {
            let Some(kind) = kind_of(row) else { continue };
            let Some(range) = parse_range(kind, &row.range) else {
                continue;
            };
            tried += 1;
            // (value, its text in the document if any, accepted?). Just outside is one step
            // (1us, or 1) beyond an end, so a range documented narrower or wider than the
            // validator's fails as surely as a wrong one.
            let step: u128 = 1; // 1us for durations, 1 for integers
            let mut probes: Vec<(u128, Option<String>, bool)> = Vec::new();
            let (low, low_text) = (range.low.0, range.low.1.clone());
            if range.exclusive_low {
                probes.push((low, Some(low_text), false));
                probes.push((low + step, None, true));
            } else {
                probes.push((low, Some(low_text), true));
                if low > 0 {
                    probes.push((low - step, None, false));
                }
                // Half the minimum too: a duration that must also be a multiple of something
                // (`advert_interval`) refuses every value one step off, whatever its minimum.
                if kind == Kind::Duration && low / 2 > 0 && low / 2 != low - step {
                    probes.push((low / 2, None, false));
                }
            }
            if let Some((high, text)) = &range.high {
                probes.push((*high, Some(text.clone()), true));
                probes.push((high + step, None, false));
            }
            for (v, text, want_ok) in probes {
                let value = yaml_value(kind, v, text.as_deref());
                let (config, field) = with_in(start.clone(), &s.path, &row.name, value.clone());
                let out = check(p, &config);
                let named = out.text.contains(&format!(" {field}: "));
                let good = if want_ok { out.ok } else { !out.ok && named };
                if !good {
                    failures.push(format!(
                        "{}: {}: {:?} should be {}, but {} check says:\n{}",
                        p.doc,
                        row.path,
                        value,
                        if want_ok {
                            "accepted"
                        } else {
                            "refused naming the field"
                        },
                        p.bin,
                        out.text.trim_end()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    tried
}

#[test]
fn lb_reference_ranges_are_the_validators() {
    let tried = ranges_hold(LB);
    // timeouts x3, shutdown x2, frontend timeouts x3, pool health durations x2, services health
    // durations x2, lease, and the VRRP router durations at least.
    assert!(tried >= 15, "only {tried} ranges found in the lb reference");
}

#[test]
fn agent_reference_ranges_are_the_validators() {
    let tried = ranges_hold(AGENT);
    assert!(
        tried >= 15,
        "only {tried} ranges found in the agent reference"
    );
}

// ---------------------------------------------------------------------------------------------
// Enums, and (c) the tables themselves

fn enums_hold(p: Program) {
    let sections = parse_doc(p.doc);
    let mut failures = Vec::new();
    for s in &sections {
        for row in s.rows.iter().filter(|r| r.ty == "enum") {
            let (config, field) = with(p, &s.path, &row.name, "zz_bogus".into());
            let out = check(p, &config);
            if out.ok || !out.text.contains(&format!(" {field}: ")) {
                failures.push(format!(
                    "{}: zz_bogus should be refused naming {field}:\n{}",
                    row.path, out.text
                ));
                continue;
            }
            // Where serde lists the words, the document lists the same (its range column starts
            // with them).
            if let Some(words) = expected_list(&out.text, "unknown variant `zz_bogus`") {
                let documented: BTreeSet<String> = code_spans(&row.range)
                    .into_iter()
                    .take(words.len())
                    .collect();
                if documented != words {
                    failures.push(format!(
                        "{}: {} takes {words:?}, the document lists {documented:?}",
                        row.path, p.bin
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lb_reference_enum_values_are_the_validators() {
    enums_hold(LB);
}

#[test]
fn agent_reference_enum_values_are_the_validators() {
    enums_hold(AGENT);
}

/// Every row is complete (checked while parsing); a default written as a single value lies within
/// the row's own range and, for an enum, among its values.
fn defaults_are_consistent(p: Program) {
    for s in parse_doc(p.doc) {
        for row in &s.rows {
            let spans = code_spans(&row.default);
            let single = spans.len() == 1 && row.default == format!("`{}`", spans[0]);
            if !single {
                continue;
            }
            let d = &spans[0];
            if row.ty == "enum" {
                assert!(
                    code_spans(&row.range).contains(d),
                    "{}: default {d} is not among its values {}",
                    row.path,
                    row.range
                );
            }
            let Some(kind) = kind_of(row) else { continue };
            if !d.starts_with(|c: char| c.is_ascii_digit()) {
                continue; // a default that names another field, e.g. `timeouts.connect`
            }
            let v = match kind {
                Kind::Duration => micros(d),
                Kind::Integer => d
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: default {d} is not an integer", row.path)),
            };
            if let Some(r) = parse_range(kind, &row.range) {
                let above_low = if r.exclusive_low {
                    v > r.low.0
                } else {
                    v >= r.low.0
                };
                let below_high = r.high.as_ref().is_none_or(|h| v <= h.0);
                assert!(
                    above_low && below_high,
                    "{}: default {d} lies outside its range {}",
                    row.path,
                    row.range
                );
            }
        }
    }
}

#[test]
fn reference_tables_are_complete_and_their_defaults_in_range() {
    defaults_are_consistent(LB);
    defaults_are_consistent(AGENT);
}

/// The example in each document passes `check`.
#[test]
fn reference_examples_pass_check() {
    for p in [LB, AGENT] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p.doc);
        let text = std::fs::read_to_string(path).unwrap();
        let example = text
            .split_once("## Example")
            .and_then(|(_, rest)| rest.split_once("```yaml\n"))
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(yaml, _)| yaml)
            .unwrap_or_else(|| panic!("{}: no ```yaml block under ## Example", p.doc));
        let config: Value = serde_yaml::from_str(example).unwrap();
        let out = check(p, &config);
        assert!(
            out.ok,
            "{}: the example fails {} check:\n{}",
            p.doc, p.bin, out.text
        );
    }
}
