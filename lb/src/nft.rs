//! Running `nft` (nftables' own command), shared by `bgp.handoff` and `mode: nat`: keel-lb writes
//! rules as nft scripts and lets nft talk netlink, so what it installs is what `nft list` shows.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// nft answers in milliseconds; a hung one must not hold the control loop.
const NFT_TIMEOUT: Duration = Duration::from_secs(5);

/// `nft` as given: a path, or a name looked up in PATH and then /usr/sbin and /sbin (a unit's PATH
/// may lack the sbin directories).
pub fn find(nft: &Path) -> Option<PathBuf> {
    if nft.components().count() > 1 {
        return nft.is_file().then(|| nft.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(nft))
        .find(|p| p.is_file())
}

/// Runs `nft -f -` with `script` (one transaction: all of it applies or none).
pub async fn run(nft: &Path, script: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new(nft)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", nft.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("{}: writing the rules: {e}", nft.display()))?;
    }
    let out = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("{} did not finish within {NFT_TIMEOUT:?}", nft.display()))?
        .map_err(|e| format!("{}: {e}", nft.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{} refused the rules ({}): {}",
            nft.display(),
            out.status,
            err.trim().chars().take(500).collect::<String>()
        ))
    }
}

/// Runs `nft args...` and returns its standard output (for reading counters back).
pub async fn output(nft: &Path, args: &[&str]) -> Result<String, String> {
    let child = tokio::process::Command::new(nft)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", nft.display()))?;
    let out = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("{} did not finish within {NFT_TIMEOUT:?}", nft.display()))?
        .map_err(|e| format!("{}: {e}", nft.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {}: {}",
            nft.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout)
        .map_err(|e| format!("{}: output is not UTF-8: {e}", nft.display()))
}

/// For tests of rule builders: `nft -c` reads `script` as nft itself does, against the kernel,
/// changing nothing. Skipped (with the reason) where nft is missing or lacks CAP_NET_ADMIN, and
/// under KEEL_TESTS_STRICT a skip fails.
#[cfg(test)]
pub fn assert_accepted(script: &str) {
    let skip = |why: &str| {
        assert!(
            std::env::var_os("KEEL_TESTS_STRICT").is_none(),
            "cannot run here, and KEEL_TESTS_STRICT forbids skipping: {why}"
        );
        eprintln!("skipped: {why}");
    };
    let Some(nft) = find(Path::new("nft")) else {
        return skip("nft is not installed (apt-get install nftables)");
    };
    let out = std::process::Command::new(&nft)
        .args(["-c", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            if let Some(mut stdin) = c.stdin.take() {
                stdin.write_all(script.as_bytes())?;
            }
            c.wait_with_output()
        })
        .expect("running nft -c");
    let err = String::from_utf8_lossy(&out.stderr);
    // Without CAP_NET_ADMIN nft cannot even check against the kernel.
    if err.contains("Operation not permitted") {
        return skip("nft -c needs CAP_NET_ADMIN");
    }
    assert!(out.status.success(), "nft refused:\n{err}\n{script}");
}
