//! `keel-lb check`: every shipped example config passes; bad configs fail with file, line and field.

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (bool, String, String) {
    let out = Command::new(keel_e2e::bin("keel-lb"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_lb_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("lb-") && name.ends_with(".yaml") {
            let (ok, out, err) = check(&path);
            assert!(ok, "{name} fails keel-lb check:\n{out}{err}");
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected example configs in {}", dir.display());
}

#[test]
fn check_names_file_line_and_field_of_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "frontends:\n  - name: api\n    listen: 127.0.0.1:6443\n    pool: apiservers\n  - name: api\n    listen: 127.0.0.1:6443\n    pool: nope\npools:\n  apiservers:\n    balance: fastest\n    backends:\n      - address: 198.18.0.10:6443\n",
    )
    .unwrap();
    let (ok, _, err) = check(&path);
    assert!(!ok);
    let p = path.display().to_string();
    // serde stops at the first unknown value.
    assert!(
        err.contains(&format!("{p}:10")) && err.contains("fastest"),
        "{err}"
    );

    std::fs::write(
        &path,
        "frontends:\n  - name: api\n    listen: 127.0.0.1:6443\n    pool: apiservers\n  - name: api\n    listen: 127.0.0.1:6443\n    pool: nope\npools:\n  apiservers:\n    backends:\n      - address: 198.18.0.10:6443\n        weight: 0\n",
    )
    .unwrap();
    let (ok, _, err) = check(&path);
    assert!(!ok);
    for want in [
        format!("{p}:5: frontends[1].name: frontend name \"api\" is used twice"),
        format!("{p}:6: frontends[1].listen: 127.0.0.1:6443 is already the listen address of frontends[0]"),
        format!("{p}:7: frontends[1].pool: no pool named \"nope\""),
        format!("{p}:12: pools.apiservers.backends[0].weight"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }

    std::fs::write(&path, "frontends: []\npools: {}\nlisten: 1\n").unwrap();
    let (ok, _, err) = check(&path);
    assert!(
        !ok && err.contains(&format!("{p}:3")) && err.contains("unknown field `listen`"),
        "{err}"
    );
}
