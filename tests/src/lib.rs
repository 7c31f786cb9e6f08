//! The end-to-end harness: finds Keel's built binaries, skips root-only tests when not root, and (in
//! `netns`) builds network-namespace topologies that tear themselves down on drop.

pub mod images;
pub mod netns;
pub mod vm;

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

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

/// A directory to keep a test's artifacts (screenshots, dumps) in after it ends:
/// `$KEEL_TEST_ARTIFACTS/<name>`, default `target/test-artifacts/<name>`. Created empty.
pub fn artifact_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("KEEL_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test>-<hash> → target/test-artifacts
            exe.ancestors()
                .nth(3)
                .map(|t| t.join("test-artifacts"))
                .unwrap_or_else(|| PathBuf::from("test-artifacts"))
        });
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
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
            $crate::skip!("this test builds network namespaces and needs root");
        }
    };
}

/// Leaves a test that cannot run on this machine, saying why. With `KEEL_TESTS_STRICT=1` (CI sets
/// it) it fails instead: libtest shows an early return as `ok`, and a missing tool or privilege
/// must never pass for a test that ran.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {{
        let why = format!($($arg)*);
        if $crate::strict() {
            panic!("cannot run here, and KEEL_TESTS_STRICT=1 forbids skipping: {why}");
        }
        eprintln!("skipped: {why}");
        return;
    }};
}

/// Whether skipping is forbidden (`KEEL_TESTS_STRICT=1`).
pub fn strict() -> bool {
    std::env::var_os("KEEL_TESTS_STRICT").is_some_and(|v| v == "1")
}

/// The packets an nftables `counter` counted, from `nft list ...` output (0 without one).
pub fn nft_counted_packets(listing: &str) -> u64 {
    listing
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether an external program (haproxy, keepalived, tshark, ...) is on PATH.
pub fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A loopback port free for both TCP and UDP that this process has not handed out before.
///
/// Binding port 0 and dropping the socket is not enough: the kernel may give the same ephemeral port
/// to the next `bind(0)`, so two "free" ports picked in a row can collide (a frontend on the admin
/// port). Ports come from 20000-31999, below Linux's ephemeral range, so sockets bound to port 0
/// elsewhere in a test never take them; the start depends on the pid so concurrent test processes
/// walk different stretches.
pub fn free_port() -> u16 {
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (BASE + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in {BASE}-{}", BASE + SPAN - 1);
}

/// Cross-builds keel-agent.exe for the Wine tests in `<target>/windows` (where
/// tests/windows/setup.sh looks, and where tests/run builds it in the background), before their
/// scripts start: the scripts' time bounds are for Wine, not for a cold cross build. Panics with
/// cargo's output if the build fails.
pub fn build_windows_agent() {
    let target = images::target_dir().join("windows");
    let out = std::process::Command::new("cargo")
        .args([
            "build",
            "-q",
            "--locked",
            "-p",
            "keel-agent",
            "--target",
            "x86_64-pc-windows-gnu",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(images::repo())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build --target x86_64-pc-windows-gnu failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
