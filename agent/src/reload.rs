//! `keel-agent reload`: systemd's `ExecReload`, so `systemctl reload keel-agent` reports the
//! reload's real outcome rather than a signal's delivery (as `keel-lb reload` does). The agent has
//! no local control socket; its status file already counts applied and refused reloads, so this
//! sends SIGHUP to the running agent and waits for one of the two counters to move.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::status::{self, Status};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "cannot read the running agent's status {path}: {reason} (is it running with this config?)"
    )]
    Status { path: String, reason: String },
    #[error("cannot signal the agent (pid {pid}): {reason}")]
    Signal { pid: i32, reason: String },
    #[error("the running agent refused the config (see its log: journalctl -u keel-agent); it keeps the running config")]
    Refused,
    #[error("the running agent did not apply the reload within {0:?}: it applies it once it has joined and registered (keel-agent status)")]
    NoAnswer(Duration),
}

fn counters(s: &Status) -> (u64, u64) {
    (s.config_reloads_ok, s.config_reloads_failed)
}

/// Signals the agent `pid`, whose status file is `status_file`, and waits up to `timeout` for its
/// verdict on the config.
// A blocking CLI outside any runtime: real time.
#[allow(clippy::disallowed_methods)]
pub fn request(pid: i32, status_file: &Path, timeout: Duration) -> Result<(), ReloadError> {
    let read = || {
        status::read_file(status_file).map_err(|e| ReloadError::Status {
            path: status_file.display().to_string(),
            reason: e.to_string(),
        })
    };
    let (ok0, failed0) = counters(&read()?);
    send_hup(pid)?;
    let end = Instant::now() + timeout;
    // Bounded in time; the status file is replaced atomically, so a read never sees half of it.
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(st) = read() else { continue };
        let (ok, failed) = counters(&st);
        if failed > failed0 {
            return Err(ReloadError::Refused);
        }
        if ok > ok0 {
            return Ok(());
        }
    }
    Err(ReloadError::NoAnswer(timeout))
}

#[cfg(unix)]
fn send_hup(pid: i32) -> Result<(), ReloadError> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if pid <= 0 {
        return Err(ReloadError::Signal {
            pid,
            reason: "not a process id".into(),
        });
    }
    kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(|e| ReloadError::Signal {
        pid,
        reason: e.to_string(),
    })
}

#[cfg(not(unix))]
fn send_hup(pid: i32) -> Result<(), ReloadError> {
    Err(ReloadError::Signal {
        pid,
        reason: "reload by signal exists on Linux only; restart the service".into(),
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::status::StatusHandle;

    /// The verdict comes from the counters the agent writes after the signal: a refused reload
    /// fails the command, an applied one passes, silence times out.
    #[test]
    fn the_command_follows_the_agents_counters() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("status.json");
        let handle = StatusHandle::new(Status::default(), Some(file.clone()));
        handle.update(|_| {});
        for (bump, want_ok) in [(Some(false), false), (Some(true), true), (None, false)] {
            // A stand-in process to receive the SIGHUP (a sleep ends on it).
            let mut target = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            let h = handle.clone();
            let agent = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                match bump {
                    Some(true) => h.update(|s| s.config_reloads_ok += 1),
                    Some(false) => h.update(|s| s.config_reloads_failed += 1),
                    None => {}
                }
            });
            let r = request(target.id() as i32, &file, Duration::from_secs(2));
            agent.join().unwrap();
            let _ = target.kill();
            let _ = target.wait();
            assert_eq!(r.is_ok(), want_ok, "{bump:?}: {r:?}");
            if bump == Some(false) {
                assert!(matches!(r, Err(ReloadError::Refused)), "{r:?}");
            }
            if bump.is_none() {
                assert!(matches!(r, Err(ReloadError::NoAnswer(_))), "{r:?}");
            }
        }
    }
}
