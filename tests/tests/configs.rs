//! Every example config in `configs/` is checked by the binary it is for: `lb-*.yaml` by `keel-lb check`
//! (see `lb_config.rs`), `agent-*.yaml` by `keel-agent check` (here), and no file goes unchecked.

use std::path::{Path, PathBuf};
use std::process::Command;

fn example_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    // Subdirectories hold Kubernetes manifests (checked below), not keel configs.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.is_dir())
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_belongs_to_a_binary_that_checks_it() {
    for path in example_configs() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".yaml") && (name.starts_with("lb-") || name.starts_with("agent-")),
            "{name}: example configs are named lb-*.yaml or agent-*.yaml so that a test checks them"
        );
    }
}

#[test]
fn every_agent_example_config_passes_keel_agent_check() {
    let mut seen = 0;
    for path in example_configs() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("agent-") {
            continue;
        }
        let out = Command::new(keel_e2e::bin("keel-agent"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keel-agent check {name} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        seen += 1;
    }
    assert!(seen >= 1, "no agent-*.yaml in configs/");
}

/// The requests keel-lb's Services provider makes (lb/src/services): (namespace of a Role, or "" for
/// the ClusterRole; API group; resource; verb).
const LB_REQUESTS: &[(&str, &str, &str, &str)] = &[
    ("", "", "services", "get"),
    ("", "", "services", "list"),
    ("", "", "services", "watch"),
    ("", "", "services", "patch"),
    ("", "", "services/status", "patch"),
    ("", "", "nodes", "list"),
    ("", "", "nodes", "watch"),
    ("", "discovery.k8s.io", "endpointslices", "list"),
    ("", "discovery.k8s.io", "endpointslices", "watch"),
    ("", "events.k8s.io", "events", "create"),
    ("", "events.k8s.io", "events", "patch"),
    ("kube-system", "coordination.k8s.io", "leases", "get"),
    ("kube-system", "coordination.k8s.io", "leases", "create"),
    ("kube-system", "coordination.k8s.io", "leases", "update"),
];

#[test]
fn keel_lb_rbac_grants_exactly_what_the_services_provider_requests() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/kubernetes/keel-lb-rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut granted = std::collections::BTreeSet::new();
    let mut bound = std::collections::BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        let kind = v["kind"].as_str().unwrap_or_default();
        let ns = v["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match kind {
            "ClusterRole" | "Role" => {
                for r in v["rules"].as_sequence().unwrap() {
                    for g in r["apiGroups"].as_sequence().unwrap() {
                        for res in r["resources"].as_sequence().unwrap() {
                            for verb in r["verbs"].as_sequence().unwrap() {
                                granted.insert((
                                    if kind == "Role" {
                                        ns.clone()
                                    } else {
                                        String::new()
                                    },
                                    g.as_str().unwrap().to_string(),
                                    res.as_str().unwrap().to_string(),
                                    verb.as_str().unwrap().to_string(),
                                ));
                            }
                        }
                    }
                }
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                assert_eq!(v["subjects"][0]["name"].as_str(), Some("keel-lb"));
                bound.insert(kind.to_string());
            }
            _ => {}
        }
    }
    let wanted: std::collections::BTreeSet<(String, String, String, String)> = LB_REQUESTS
        .iter()
        .map(|(n, g, r, v)| (n.to_string(), g.to_string(), r.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        granted, wanted,
        "keel-lb's RBAC must grant exactly what it uses"
    );
    assert_eq!(bound.len(), 2, "both roles are bound to keel-lb");
}
