//! The Windows service glue under Wine (tests/windows-service.sh): `keel-agent.exe service install`
//! creates an auto-start service with the config path and preshutdown timeout, `sc start` brings it
//! to RUNNING with /metrics served, `sc stop` to STOPPED with exit code 0 and the stop path in the
//! agent's log. Skips when wine64 or MinGW is missing. PRESHUTDOWN needs a real Windows host.

use std::process::Command;

#[test]
fn windows_agent_installs_starts_and_stops_as_a_service_under_wine() {
    let wine = std::path::Path::new("/usr/lib/wine/wine64").exists() || keel_e2e::have("wine64");
    if !wine || !keel_e2e::have("x86_64-w64-mingw32-gcc") {
        keel_e2e::skip!("wine64 or MinGW not installed");
    }
    keel_e2e::build_windows_agent();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/windows-service.sh");
    let out = Command::new("timeout")
        .args(["300", "bash", script])
        .output()
        .expect("run windows-service.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "windows service test failed:\n{text}");
    assert!(text.contains("windows service: ok (RUNNING"), "{text}");
}
