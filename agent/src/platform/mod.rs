//! What differs between Linux and Windows nodes: reading memory, disks, process counts and service
//! states, and how the agent lives under the service manager (sd_notify on Linux, a Windows service).
//! Everything here is a thin, blocking OS call; callers run it on the blocking pool under a timeout.

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "linux")]
pub use linux as imp;

#[cfg(windows)]
pub mod windows;
#[cfg(windows)]
pub mod windows_service;
#[cfg(windows)]
pub use windows as imp;

/// The hostname, as kubelet would register it before lowercasing.
pub fn hostname() -> Option<String> {
    #[cfg(unix)]
    {
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let h = h.trim().to_string();
            if !h.is_empty() {
                return Some(h);
            }
        }
        let mut buf = [0u8; 256];
        // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            let h = String::from_utf8_lossy(&buf[..end]).trim().to_string();
            return (!h.is_empty()).then_some(h);
        }
        None
    }
    #[cfg(not(unix))]
    {
        std::env::var("COMPUTERNAME").ok().filter(|h| !h.is_empty())
    }
}

/// Physical memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
}

/// One filesystem's space (bytes available to unprivileged users) and inodes (None where the
/// filesystem has no inode count, e.g. NTFS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    pub total: u64,
    pub available: u64,
    pub inodes_total: Option<u64>,
    pub inodes_free: Option<u64>,
    pub readonly: bool,
}

/// Processes (Linux: tasks, i.e. threads, which is what pid_max limits) in use against the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pids {
    pub used: u64,
    pub limit: u64,
}

/// A service manager's view of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    Running,
    /// Not running; the manager's word for its state (`inactive`, `failed`, `Stopped`...).
    NotRunning(String),
    /// The manager does not know the service.
    Missing,
}
