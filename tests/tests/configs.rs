//! Every example config in `configs/` is checked by the binary it is for: `lb-*.yaml` by `keel-lb check`
//! (see `lb_config.rs`), `agent-*.yaml` by `keel-agent check` (here), and no file goes unchecked.

use std::path::{Path, PathBuf};
use std::process::Command;

fn example_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
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
