//! Facts about this machine that go into the Node object: hostname, OS/arch, CPU and memory,
//! the address the API server sees us from, and version strings.

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};

use crate::config::Os;

pub use crate::platform::hostname;

/// Kubernetes' name for this CPU architecture (`GOARCH`).
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub hostname: String,
    pub os: Os,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: Option<u64>,
    pub internal_ip: Option<IpAddr>,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

/// The local address the kernel would use to reach the API server: a connected UDP socket sends
/// nothing, it only asks the routing table.
pub fn source_ip_towards(server: &http::Uri) -> Option<IpAddr> {
    let host = server.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = server.port_u16().unwrap_or(443);
    let target = (host, port).to_socket_addrs().ok()?.next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(target).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

pub fn gather(hostname: &str, os: Os, server: &http::Uri) -> Facts {
    Facts {
        hostname: hostname.to_string(),
        os,
        arch: arch().to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: if cfg!(unix) { meminfo_total() } else { None },
        internal_ip: source_ip_towards(server),
        kernel_version: read_trim("/proc/sys/kernel/osrelease"),
        os_image: if cfg!(unix) {
            os_image()
        } else {
            "Windows".to_string()
        },
        machine_id: read_trim("/etc/machine-id"),
        boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_this_host() {
        let f = gather("h", Os::Linux, &"https://127.0.0.1:6443".parse().unwrap());
        assert!(f.cpus >= 1);
        assert_eq!(f.internal_ip, Some("127.0.0.1".parse().unwrap()));
        if cfg!(target_os = "linux") {
            assert!(f.memory_bytes.unwrap() > 0);
            assert!(hostname().is_some());
        }
    }
}
