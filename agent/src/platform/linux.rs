//! Linux: /proc and statvfs readings, systemd unit states, sd_notify (Type=notify + watchdog) and
//! the question "is the system shutting down?".

use std::io;
use std::path::Path;
use std::time::Duration;

use super::{Disk, Memory, Pids, ServiceState};

/// `MemTotal` and `MemAvailable` from /proc/meminfo (the kernel's own estimate of memory available
/// without swapping, which is what kubelet's eviction signal uses too).
pub fn memory() -> io::Result<Memory> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo")?)
}

pub fn parse_meminfo(text: &str) -> io::Result<Memory> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    match (field("MemTotal"), field("MemAvailable")) {
        (Some(total), Some(available)) => Ok(Memory { total, available }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/meminfo has no MemTotal/MemAvailable",
        )),
    }
}

pub fn disk(path: &Path) -> io::Result<Disk> {
    let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let frag = s.fragment_size() as u64;
    Ok(Disk {
        total: (s.blocks() as u64).saturating_mul(frag),
        available: (s.blocks_available() as u64).saturating_mul(frag),
        // Filesystems without inodes (btrfs reports 0) have no inode limit to check.
        inodes_total: (s.files() > 0).then_some(s.files() as u64),
        inodes_free: (s.files() > 0).then_some(s.files_free() as u64),
        readonly: s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
    })
}

/// Tasks in use against the limit: in a pids cgroup (v1 or v2: `pids.current`/`pids.max`) when
/// given, else system-wide (`/proc/loadavg`'s task count against min(pid_max, threads-max)).
pub fn pids(cgroup: Option<&Path>) -> io::Result<Pids> {
    let read_u64 = |p: &Path| -> io::Result<Option<u64>> {
        let t = std::fs::read_to_string(p)?;
        let t = t.trim();
        if t == "max" {
            return Ok(None);
        }
        t.parse::<u64>().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {t:?}", p.display()),
            )
        })
    };
    let system_limit = || -> io::Result<u64> {
        let pid_max = read_u64(Path::new("/proc/sys/kernel/pid_max"))?.unwrap_or(u64::MAX);
        let threads_max = read_u64(Path::new("/proc/sys/kernel/threads-max"))?.unwrap_or(u64::MAX);
        Ok(pid_max.min(threads_max))
    };
    if let Some(cg) = cgroup {
        let used = read_u64(&cg.join("pids.current"))?.unwrap_or(0);
        let limit = match read_u64(&cg.join("pids.max"))? {
            Some(l) => l,
            None => system_limit()?,
        };
        return Ok(Pids { used, limit });
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg")?;
    // "0.00 0.01 0.05 1/123 4567": the fourth field is running/total scheduling entities.
    let used = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split('/').nth(1))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/loadavg"))?;
    Ok(Pids {
        used,
        limit: system_limit()?,
    })
}

/// Whether `pid` is a live (not zombie) process.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A systemd unit's ActiveState, through `systemctl show` (no D-Bus library needed; the call is
/// bounded by the caller's timeout and killed on drop).
pub async fn unit_state(unit: &str) -> io::Result<ServiceState> {
    let out = tokio::process::Command::new("systemctl")
        .args(["show", "--property=ActiveState,LoadState", "--", unit])
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "systemctl show {unit}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let prop = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    };
    let (active, load) = (prop("ActiveState"), prop("LoadState"));
    Ok(match (active.as_str(), load.as_str()) {
        ("active" | "reloading", _) => ServiceState::Running,
        (_, "not-found") => ServiceState::Missing,
        (a, _) => ServiceState::NotRunning(a.to_string()),
    })
}

/// Whether systemd is taking the system down (`systemctl is-system-running` says `stopping`). The
/// agent's unit is ordered after kubelet and containerd, so during shutdown systemd stops the agent
/// first and it can drain while kubelet still runs; this tells that stop apart from a plain restart.
pub async fn system_is_stopping() -> bool {
    let out = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::process::Command::new("systemctl")
            .arg("is-system-running")
            .kill_on_drop(true)
            .output(),
    )
    .await;
    matches!(out, Ok(Ok(o)) if String::from_utf8_lossy(&o.stdout).trim() == "stopping")
}

// sd_notify and the watchdog live in keel-common, shared with keel-lb.
pub use keel_common::sd_notify::{sd_notify, watchdog, watchdog_interval};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses_available() {
        let m =
            parse_meminfo("MemTotal:       16000 kB\nMemFree: 1 kB\nMemAvailable:    8000 kB\n")
                .unwrap();
        assert_eq!(m.total, 16000 * 1024);
        assert_eq!(m.available, 8000 * 1024);
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn own_process_is_alive_and_a_bogus_pid_is_not() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }
}
