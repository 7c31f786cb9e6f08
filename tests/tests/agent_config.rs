//! `keel-agent check`: every error at once with file:line: field, non-zero exit; shipped configs pass.

use std::process::Command;

fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(keel_e2e::bin("keel-agent"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run keel-agent check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_prints_every_error_with_file_line_and_field_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(
        &path,
        "cluster:\n  server: https://198.18.0.10:6443\n  token: abcdef.0123456789abcdef\n  ca_pins: [\"sha256:1234\"]\nnode:\n  name: Not_A_Name\n  labels:\n    node-role.kubernetes.io/worker: \"\"\n  taints:\n    - {key: a, effect: Sometimes}\n",
    )
    .unwrap();
    let (ok, out) = check(&path);
    assert!(!ok, "{out}");
    let p = path.display().to_string();
    for needle in [
        format!("{p}:4: cluster.ca_pins[0]: CA pin"),
        format!("{p}:6: node.name:"),
        "NodeRestriction".to_string(),
        format!("{p}:10: node.taints[0].effect:"),
    ] {
        assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn shipped_agent_configs_pass_check() {
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    for name in ["agent-example.yaml", "agent-managed-windows.yaml"] {
        let (ok, out) = check(&configs.join(name));
        assert!(ok, "{name}: {out}");
    }
}
