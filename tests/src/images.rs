//! Debian packages and VM images for the tests (images/deb/build.sh, images/linux/build-image.sh),
//! built from the debug binaries `tests/run` already built (a release build would double CI's time),
//! and kept under target/images for the rest of the run. An image is reused only while its inputs (the
//! binary, the packaging and image scripts) are byte for byte the same: its file name carries their hash, so a
//! changed binary or script builds a new one and nothing stale ever boots.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (tests/ is one level down).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// target/ of this build (target/<profile>/deps/<test> → target).
pub fn target_dir() -> PathBuf {
    let bin = crate::bin("keel-lb");
    bin.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/keel-lb")
        .to_path_buf()
}

fn images_dir() -> PathBuf {
    let d = target_dir().join("images");
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
}

/// Runs a shell script under an exclusive lock on target/images/.lock (tests in several processes
/// may want the same artifact); panics with its output unless it succeeds; returns stdout.
fn locked_sh(script: &str) -> String {
    let lock = images_dir().join(".lock");
    let out = Command::new("flock")
        .arg(&lock)
        .args(["sh", "-c", script])
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("flock sh -c {script}: {e}"));
    assert!(
        out.status.success(),
        "{script}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The two packages, `(keel-lb, keel-agent)`, built from target/<profile>'s binaries once per test
/// process (a second build would replace the files under a test still reading them).
pub fn debs() -> (PathBuf, PathBuf) {
    static DEBS: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    DEBS.get_or_init(build_debs).clone()
}

fn build_debs() -> (PathBuf, PathBuf) {
    let bins = crate::bin("keel-lb")
        .parent()
        .expect("target/<profile>")
        .to_path_buf();
    crate::bin("keel-agent");
    let out = images_dir().join("deb");
    let printed = locked_sh(&format!(
        "KEEL_DEB_COMPRESSION=gzip KEEL_DEB_BINARIES='{}' images/deb/build.sh '{}'",
        bins.display(),
        out.display()
    ));
    let find = |pkg: &str| {
        printed
            .lines()
            .map(PathBuf::from)
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
            })
            .unwrap_or_else(|| panic!("build.sh printed no {pkg} package: {printed}"))
    };
    (find("keel-lb"), find("keel-agent"))
}

/// A bootable image of `role` (`lb` or `node`): `(disk.raw, vmlinuz, initrd)` (raw, sparse: a
/// compressed qcow2 would cost minutes of CPU per build and VMs boot from overlays anyway). Built once per set of
/// inputs (minutes: debootstrap downloads ~100 MB from the Debian mirror), then reused. The
/// debootstrap trees and packages are kept in target/images/base (`KEEL_IMAGE_CACHE`), where .ci/run
/// makes them while Rust compiles, under the same lock.
pub fn image(role: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (lb, agent) = debs();
    let deb = if role == "lb" { lb } else { agent };
    let dir = images_dir();
    // The binary and the scripts, not the .deb: its timestamps follow the last commit.
    let bin = crate::bin(if role == "lb" {
        "keel-lb"
    } else {
        "keel-agent"
    });
    let key = locked_sh(&format!(
        "cat '{}' images/deb/* images/linux/build-image.sh images/linux/firstboot/* | sha256sum | cut -c1-16",
        bin.display()
    ));
    let disk = dir.join(format!("{role}-{}.raw", key.trim()));
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", disk.display()));
    let log = dir.join(format!("{role}-build.log"));
    locked_sh(&format!(
        "[ -e '{d}.initrd' ] || {{ rm -f '{dir}/{role}-'*.raw* '{dir}/{role}-'*.qcow2*; \
         KEEL_IMAGE_CACHE='{dir}/base' images/linux/build-image.sh {role} '{d}' '{deb}' > '{log}' 2>&1 || {{ tail -n 40 '{log}' >&2; exit 1; }}; }}",
        d = disk.display(),
        dir = dir.display(),
        deb = deb.display(),
        log = log.display(),
    ));
    (disk.clone(), with("vmlinuz"), with("initrd"))
}
