//! The agent's module layering, held true: each top-level module of `agent/src` may use only the
//! modules its row below allows, and every allowed module sits in an earlier row, so dependencies
//! run one way (no cycles) and a newcomer finds a concern by its folder. A new `crate::x` reference
//! against this table fails here with the file and line; change the table only with the design.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. A module may use itself and the modules listed on its row, nothing else.
const LAYERS: &[(&str, &[&str])] = &[
    // Shared leaves: OS calls, atomic file writes, the agent's status file, its metrics, its kube
    // clients, the `keel-agent reload` client.
    ("platform", &[]),
    ("files", &[]),
    ("status", &["files"]),
    ("metrics", &["status"]),
    ("apiclient", &["metrics"]),
    ("reload", &["status"]),
    // The file model and its validation: trusted by everything above.
    ("config", &["platform"]),
    // Checks and what they mean; no API server, no loop.
    ("health", &["config", "platform"]),
    // Commands, taint policy and writer, drain, the orchestrator API.
    ("ops", &["health", "config", "apiclient", "files"]),
    // Discovery, CSR, credentials (the state dir's ACL on Windows), the join driver.
    (
        "join",
        &[
            "config",
            "apiclient",
            "metrics",
            "status",
            "files",
            "platform",
        ],
    ),
    // The Node: host facts, register, heartbeat, kubelet, leave.
    (
        "node",
        &[
            "join",
            "ops",
            "config",
            "apiclient",
            "metrics",
            "status",
            "files",
            "platform",
        ],
    ),
    // The health loop and its API writers.
    (
        "health_loop",
        &["ops", "health", "config", "apiclient", "platform"],
    ),
    // The agent's main loop.
    (
        "run",
        &[
            "health_loop",
            "node",
            "join",
            "ops",
            "health",
            "config",
            "reload",
            "apiclient",
            "metrics",
            "status",
            "files",
            "platform",
        ],
    ),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `join/csr.rs` → [join, csr], `join/mod.rs` → [join], `run.rs` → [run].
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every top-level module a line names through `crate::` or a `super::` chain that climbs to the
/// crate root. `depth` is the line's module depth (file path plus inline modules opened above it).
fn targets(line: &str, depth: usize) -> Vec<String> {
    let code = match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        // `$crate::` in a macro is another crate's root; `keel_crate::` is not ours either.
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            if let Some(group) = after.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or("");
                out.extend(group.split(',').map(|g| ident_at(g.trim()).to_string()));
            } else {
                out.push(ident_at(after).to_string());
            }
        }
        rest = after;
    }
    let mut rest = code;
    while let Some(i) = rest.find("super::") {
        let before = rest[..i].chars().last();
        let mut after = &rest[i..];
        let mut k = 0;
        while let Some(a) = after.strip_prefix("super::") {
            k += 1;
            after = a;
        }
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') && k >= depth
        {
            out.push(ident_at(after).to_string());
        }
        rest = after;
    }
    out.retain(|t| !t.is_empty() && t != "self");
    out
}

/// (top-level module of the file, line number, line, target module) for every reference that
/// leaves its own top-level module.
fn references() -> Vec<(String, PathBuf, usize, String, String)> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut refs = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src").to_path_buf();
        let path = module_path(&rel);
        // lib.rs declares the modules; main.rs is the binary on top of the library.
        if path.is_empty() || path == ["lib"] || path == ["main"] {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        let mut depth = path.len();
        for (n, line) in text.lines().enumerate() {
            for t in targets(line, depth) {
                if t != path[0] {
                    refs.push((path[0].clone(), rel.clone(), n + 1, line.trim().into(), t));
                }
            }
            let l = line.trim_start();
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            let l = l.strip_prefix("pub ").unwrap_or(l);
            if l.starts_with("mod ") && l.trim_end().ends_with('{') {
                depth += 1;
            }
        }
    }
    refs
}

#[test]
fn layer_table_is_one_way() {
    let mut seen = BTreeSet::new();
    for (module, allowed) in LAYERS {
        for a in *allowed {
            assert!(
                seen.contains(a),
                "{module} may use {a}, which is not on an earlier row: the table must run one way"
            );
        }
        assert!(seen.insert(*module), "{module} is listed twice");
    }
}

#[test]
fn every_top_level_module_is_in_the_table() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("read lib.rs");
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    let table: BTreeSet<&str> = LAYERS.iter().map(|(m, _)| *m).collect();
    assert_eq!(declared, table, "lib.rs modules vs the layer table");
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut bad = Vec::new();
    let mut count = 0;
    for (from, file, line, text, to) in references() {
        count += 1;
        let ok = allowed
            .get(from.as_str())
            .is_some_and(|a| a.contains(&to.as_str()));
        if !ok {
            bad.push(format!(
                "agent/src/{}:{line}: {from} uses {to}: {text}",
                file.display()
            ));
        }
    }
    // The scan must see the real cross-module uses, or it proves nothing.
    assert!(count > 50, "only {count} cross-module references found");
    assert!(
        bad.is_empty(),
        "references against the layering (see LAYERS):\n{}",
        bad.join("\n")
    );
}

#[test]
fn a_back_edge_is_caught() {
    assert_eq!(
        targets("use crate::run::Agent;", 1),
        vec!["run".to_string()]
    );
    assert_eq!(
        targets("use crate::{health, ops::drain};", 1),
        vec!["health".to_string(), "ops".to_string()]
    );
    assert_eq!(targets("    use super::*;", 2), Vec::<String>::new());
    assert_eq!(targets("super::super::npd::X", 2), vec!["npd".to_string()]);
    assert_eq!(
        targets("// crate::run in a comment", 1),
        Vec::<String>::new()
    );
}
