//! The Prometheus alerting rules (configs/prometheus) and Grafana dashboards (configs/grafana) that ship
//! with Keel: promtool checks the rules and runs their unit tests, every dashboard query parses as
//! PromQL, and every metric they name is one a running keel-lb or keel-agent exports.

mod agent_harness;
mod svc_lab;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_e2e::require_root;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn promtool(args: &[&str]) -> (bool, String) {
    assert!(
        keel_e2e::have("promtool"),
        "promtool is missing (Debian package prometheus)"
    );
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every `keel_*` metric name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("keel_"))
        .map(str::to_string)
        .collect()
}

/// Every sample's metric name in a Prometheus text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("keel_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(configs().join("prometheus/keel-alerts.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().unwrap().to_string();
            out.push((name, r["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// (dashboard file, panel title, expr) for every query of every dashboard.
fn dashboard_exprs() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for file in ["keel-lb.json", "keel-agent.json"] {
        let text = std::fs::read_to_string(configs().join("grafana").join(file)).unwrap();
        let d: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
        assert!(d["uid"].is_string() && d["title"].is_string(), "{file}");
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    file.to_string(),
                    p["title"].as_str().unwrap_or("").to_string(),
                    t["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = configs().join("prometheus");
    let rules = dir.join("keel-alerts.yaml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&[
        "test",
        "rules",
        dir.join("keel-alerts.test.yaml").to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    // Every alert has a unit test that expects it to fire.
    let tests = std::fs::read_to_string(dir.join("keel-alerts.test.yaml")).unwrap();
    for (name, _) in alert_exprs() {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "alert {name} has no unit test in keel-alerts.test.yaml"
        );
    }
}

#[test]
fn every_dashboard_query_parses_as_promql() {
    // promtool parses recording rules' expressions: one rule per query, Grafana's variables replaced
    // by what Grafana substitutes.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 30, "only {} queries", exprs.len());
    for (i, (_, _, e)) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        rules += &format!(
            "      - record: keel:dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("dashboards.rules.yaml");
    std::fs::write(&f, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", f.to_str().unwrap()]);
    assert!(ok, "a dashboard query does not parse:\n{out}");
}

/// Series that appear only after their first event (a failure, an eviction, a drain): they cannot be
/// scraped from a healthy process, so the test finds their definition in the source instead.
const AFTER_FIRST_EVENT: &[(&str, &str)] = &[
    ("keel_agent_taint_apply_errors_total", "agent/src"),
    ("keel_agent_evictions_total", "agent/src"),
    ("keel_agent_drain_pods", "agent/src"),
    ("keel_agent_kernel_log_lines_dropped_total", "agent/src"),
    ("keel_agent_orchestrator_requests_total", "agent/src"),
    ("keel_agent_health_api_writes_total", "agent/src"),
    ("keel_agent_config_reloads_total", "agent/src"),
    ("keel_agent_taint_applied", "agent/src"),
];

fn defined_in_source(name: &str, dir: &str) -> bool {
    fn walk(p: &Path, needle: &str) -> bool {
        let Ok(rd) = std::fs::read_dir(p) else {
            return false;
        };
        rd.flatten().any(|e| {
            let p = e.path();
            if p.is_dir() {
                walk(&p, needle)
            } else {
                p.extension().is_some_and(|x| x == "rs")
                    && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(needle))
            }
        })
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    walk(&root, &format!("\"{name}\""))
}

#[test]
fn every_metric_in_rules_and_dashboards_is_exported_by_a_running_keel_lb() {
    require_root!();
    let mut lab = svc_lab::Lab::new("mon-lb", &["lb1", "lb2"]);
    lab.nodes(&[30080], &[], &[]);
    // A pool from the file beside the Services (those have no per-backend series), and a peer so that
    // adverts are received.
    let file_pool = format!(
        "frontends:\n  - name: static\n    listen: 127.0.0.1:9180\n    pool: static\npools:\n  static:\n    health:\n      type: tcp\n      interval: 300ms\n      timeout: 200ms\n    backends:\n      - address: {}:30080\n",
        svc_lab::ip4("node1")
    );
    let _lb1 = lab.keel_with("lb1", 200, &file_pool);
    let _lb2 = lab.keel("lb2", 100);
    lab.create(&svc_lab::service(
        "default",
        "web",
        &[("http", "TCP", 80, 30080)],
        "",
        "",
    ));
    lab.wait("web answers", Duration::from_secs(30), || {
        lab.tcp(svc_lab::POOL_FIRST, 80)
    });
    let mut scraped = BTreeSet::new();
    for _ in 0..20 {
        // The backup receives the master's adverts; the master hears nothing (backups are silent).
        scraped = exported_names(&lab.admin("lb1", "/metrics"));
        scraped.extend(exported_names(&lab.admin("lb2", "/metrics")));
        if scraped.contains("keel_vrrp_adverts_received_total") {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut wanted = BTreeSet::new();
    for (_, e) in alert_exprs() {
        wanted.extend(metric_names(&e));
    }
    for (file, _, e) in dashboard_exprs() {
        if file == "keel-lb.json" {
            wanted.extend(metric_names(&e));
        }
    }
    let missing: Vec<_> = wanted
        .iter()
        .filter(|n| !n.starts_with("keel_agent_"))
        .filter(|n| !scraped.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "keel-lb does not export {missing:?}; it exports {scraped:?}\n{}",
        lab.log("lb1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_rules_and_dashboards_is_exported_by_a_running_keel_agent() {
    let c = agent_harness::Cluster::start().await;
    let token = c.server.create_bootstrap_token(Duration::from_secs(3600));
    let port = keel_e2e::free_port();
    let a = c.agent(
        "mon-agent",
        &token,
        &format!(
            "metrics:\n  listen: 127.0.0.1:{port}\nhealth:\n  checks:\n    - name: memory\n      kind: memory\n      min_available: 1Mi\n"
        ),
    );
    let p = a.spawn();
    agent_harness::wait_until(
        "the Lease",
        Duration::from_secs(30),
        || c.lease("mon-agent").is_some(),
        || p.log_text(),
    )
    .await;
    let mut wanted = BTreeSet::new();
    for (_, e) in alert_exprs() {
        wanted.extend(metric_names(&e));
    }
    for (file, _, e) in dashboard_exprs() {
        if file == "keel-agent.json" {
            wanted.extend(metric_names(&e));
        }
    }
    wanted.retain(|n| n.starts_with("keel_agent_"));
    // Lease renewals and the first check run land within seconds of the Lease.
    let mut missing = Vec::new();
    for _ in 0..30 {
        let scraped = exported_names(&scrape(port).await);
        missing = wanted
            .iter()
            .filter(|n| !scraped.contains(*n))
            .filter(|n| !AFTER_FIRST_EVENT.iter().any(|(m, _)| m == n))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "keel-agent does not export {missing:?}:\n{}",
        p.log_text()
    );
    for (name, dir) in AFTER_FIRST_EVENT {
        assert!(
            defined_in_source(name, dir),
            "{name} is no longer defined in {dir}: update the rules, dashboards and this list"
        );
    }
}

async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut buf = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf)).await;
    buf
}
