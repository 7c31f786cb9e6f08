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

#[test]
fn health_once_serves_the_pass_metrics_for_the_bounded_time_then_exits() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = keel_e2e::free_port();
    let path = dir.path().join("agent.yaml");
    std::fs::write(
        &path,
        format!(
            "cluster:\n  server: https://198.18.0.10:6443\n  token: abcdef.0123456789abcdef\n  ca_pins: [\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"]\nnode:\n  name: once\nmetrics:\n  listen: 127.0.0.1:{port}\nhealth:\n  checks:\n    - {{name: memory, kind: memory, min_available: 1%}}\n"
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut child = Command::new(keel_e2e::bin("keel-agent"))
        .args(["health-once", "--serve-for", "3s", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            s.read_to_string(&mut body).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        body.contains("keel_agent_check_status{check=\"memory\",status=\"ok\"} 1"),
        "{body}"
    );
    // Bounded: exits by itself after --serve-for (generous margin for a loaded machine).
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let Some(status) = status else {
        child.kill().ok();
        panic!("health-once still serving 30 s after --serve-for 3s");
    };
    assert!(status.success());
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn health_once_prints_a_table_or_only_metrics_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(
        &path,
        "cluster:\n  server: https://198.18.0.10:6443\n  token: abcdef.0123456789abcdef\n  ca_pins: [\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"]\nnode:\n  name: once\nhealth:\n  checks:\n    - {name: memory, kind: memory, min_available: 1%}\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(keel_e2e::bin("keel-agent"))
            .arg("health-once")
            .args(extra)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (table, _) = run(&[]);
    let mut lines = table.lines();
    assert!(
        lines.next().is_some_and(|h| h.starts_with("CHECK")),
        "{table}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("memory ") && l.contains(" Ok ")),
        "{table}"
    );
    assert!(
        !table.contains("# HELP"),
        "metrics mixed into the table:\n{table}"
    );
    // `--metrics`: stdout is metrics text only (a parser reads it whole), the table on stderr.
    let (metrics, stderr) = run(&["--metrics"]);
    assert!(metrics.starts_with("# HELP"), "{metrics}");
    assert!(!metrics.contains("CHECK"), "{metrics}");
    assert!(
        metrics.contains("keel_agent_check_status{check=\"memory\",status=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        stderr.contains("CHECK") && stderr.contains("memory"),
        "{stderr}"
    );
    if let Ok(mut p) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        p.stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "promtool: {out:?}");
    } else {
        panic!("promtool is missing (apt-get install prometheus)");
    }
}
