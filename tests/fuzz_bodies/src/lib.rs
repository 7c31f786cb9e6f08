//! The bodies of Keel's fuzz targets, one function per target, so that the fuzzer (`fuzz/`, cargo-fuzz
//! on nightly) and the replay of the committed corpora on stable (`tests/corpora.rs`, in CI) run the
//! same code. Each body hands its input to a parser the way the program's own input path does and
//! asserts what must hold beyond "no panic": round trips for the packet codecs, a length field that
//! matches the bytes for PROXY v2, file:line errors that point into the file for configs.
//!
//! Where a body cannot reach the parser the program uses (a private function), it says so and
//! fuzzes the nearest public one.

pub mod config;
pub mod health;
pub mod join;
pub mod proxy;
pub mod vrrp;

/// A target's body: takes the fuzzer's input, panics on a finding.
pub type Body = fn(&[u8]);

/// Every target: its name (the file in `fuzz/fuzz_targets/` and the folder in `fuzz/corpus/`) and
/// its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("vrrp_ipv4", vrrp::ipv4),
    ("vrrp_ipv6", vrrp::ipv6),
    ("proxy_v2", proxy::v2),
    ("lb_config", config::lb),
    ("agent_config", config::agent),
    ("npd_config", config::npd),
    ("kubeconfig", join::kubeconfig),
    ("discovery", join::discovery),
    ("kernel_log", health::kernel_log),
    ("plugin_output", health::plugin_output),
];

/// Runs the body named `target` (what each file in `fuzz/fuzz_targets/` does).
pub fn run(target: &str, data: &[u8]) {
    match TARGETS.iter().find(|(name, _)| *name == target) {
        Some((_, body)) => body(data),
        None => panic!("no fuzz body named {target:?}"),
    }
}
