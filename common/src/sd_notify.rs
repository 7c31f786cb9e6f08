//! sd_notify for services started by systemd with `Type=notify`: implemented directly (a datagram to
//! $NOTIFY_SOCKET, sd_notify(3)) rather than through a crate. keel-lb says READY=1 once its listeners
//! are bound and VRRP started; keel-agent says READY=1 and pings the watchdog.

use std::io;
use std::path::Path;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`, `WATCHDOG=1`, `STOPPING=1`) to systemd. Returns false when not
/// started by systemd with `Type=notify` (no NOTIFY_SOCKET), which is not an error.
pub fn sd_notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))?;
    }
    Ok(true)
}

/// Half of `WatchdogSec` (systemd's advice), when the watchdog is on for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings the systemd watchdog until `cancel` fires. The pings come from a task on the agent's
/// runtime, so a wedged runtime (or a process stuck in a blocking call on every worker) stops them
/// and systemd restarts the agent.
pub async fn watchdog(cancel: tokio_util::sync::CancellationToken) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = sd_notify("WATCHDOG=1") {
                    tracing::warn!(error = %e, "sd_notify WATCHDOG=1 failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_notify_reaches_a_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY of set_var: this test is the only one in this binary touching NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(sd_notify("READY=1").unwrap());
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(!sd_notify("READY=1").unwrap());
    }
}
