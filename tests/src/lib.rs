//! The end-to-end harness: finds Keel's built binaries, skips root-only tests when not root, and (in
//! `netns`) builds network-namespace topologies that tear themselves down on drop.

pub mod netns;

use std::path::PathBuf;

/// Path of a workspace binary (`keel-lb`, `keel-agent`, `keel-test-apiserver`) built next to this test
/// executable. The test runner (`tests/run`) builds every binary before any test starts.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (tests/run does)",
        path.display()
    );
    path
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns early (the test passes with a note) when not root: network namespaces need root. CI runs as
/// root, so there these tests always run.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: this test builds network namespaces and needs root");
            return;
        }
    };
}

/// Whether an external program (haproxy, keepalived, tshark, ...) is on PATH.
pub fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
