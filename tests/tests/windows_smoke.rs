//! The Windows agent under Wine: cross-built for x86_64-pc-windows-gnu, `version`, `check` and one
//! health pass with its metrics served (`health-once --serve-for`), fetched with curl and checked
//! by promtool (tests/windows-smoke.sh). Skips when wine64 or MinGW is
//! missing.

use std::process::Command;

#[test]
fn windows_agent_runs_version_check_and_a_health_pass_with_metrics_served_under_wine() {
    let wine = std::path::Path::new("/usr/lib/wine/wine64").exists() || keel_e2e::have("wine64");
    if !wine || !keel_e2e::have("x86_64-w64-mingw32-gcc") {
        keel_e2e::skip!("wine64 or MinGW not installed");
    }
    keel_e2e::build_windows_agent();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/windows-smoke.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run windows-smoke.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "windows smoke failed:\n{text}");
    assert!(text.contains("windows smoke: ok (metrics served"), "{text}");
}
