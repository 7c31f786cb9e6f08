//! Custom checks with node-problem-detector's plugin convention
//! (`pkg/custompluginmonitor/plugin/plugin.go`): exit 0 = OK, 1 = problem, anything else, a failure
//! to start or a timeout = unknown; the first line of stdout, trimmed and cut to
//! `max_output_length`, is the message; only 4 KiB of output are read; on timeout the whole process
//! group is killed (Windows: `taskkill /T /F`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::outcome::{Outcome, Status};

const MAX_READ: usize = 4096;

fn command_for(path: &Path, args: &[String]) -> tokio::process::Command {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    let mut cmd = match ext.as_deref() {
        Some("ps1") if cfg!(windows) => {
            let mut c = tokio::process::Command::new("powershell");
            c.args(["-NoProfile", "-NonInteractive", "-File"]).arg(path);
            c
        }
        Some("cmd" | "bat") if cfg!(windows) => {
            let mut c = tokio::process::Command::new("cmd");
            c.arg("/C").arg(path);
            c
        }
        _ => tokio::process::Command::new(path),
    };
    cmd.args(args);
    cmd
}

async fn read_limited(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_READ];
    let mut n = 0;
    while n < MAX_READ {
        match r.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    buf.truncate(n);
    // Keep draining (and discarding) so the plugin never blocks on a full pipe.
    let mut sink = [0u8; 1024];
    while let Ok(k) = r.read(&mut sink).await {
        if k == 0 {
            break;
        }
    }
    buf
}

/// The message NPD would report: first line, trimmed, at most `max` characters.
pub fn first_line(out: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(out);
    let line = text.trim().lines().next().unwrap_or("").trim();
    line.chars().take(max).collect()
}

fn kill_tree(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    #[cfg(unix)]
    {
        // The plugin leads its own process group (spawned with process_group(0)).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    #[cfg(windows)]
    {
        let _ = std::process::Command::new("taskkill")
            .args(["/T", "/F", "/PID", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub async fn run(command: &Path, args: &[String], timeout: Duration, max_len: usize) -> Outcome {
    let mut cmd = command_for(command, args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::unknown(
                "PluginStartFailed",
                first_line(format!("{}: {e}", command.display()).as_bytes(), max_len),
            )
        }
    };
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let out = async {
            match stdout {
                Some(s) => read_limited(s).await,
                None => Vec::new(),
            }
        };
        let err = async {
            match stderr {
                Some(s) => read_limited(s).await,
                None => Vec::new(),
            }
        };
        let (out, err, status) = tokio::join!(out, err, child.wait());
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => {
            kill_tree(pid);
            let _ = child.wait().await;
            return Outcome::unknown(
                "PluginTimeout",
                first_line(
                    format!("{} timed out after {timeout:?}", command.display()).as_bytes(),
                    max_len,
                ),
            );
        }
    };
    if !err.is_empty() {
        tracing::debug!(plugin = %command.display(), stderr = %first_line(&err, 200), "plugin stderr");
    }
    let message = first_line(&out, max_len);
    let code = match status {
        Ok(s) => s.code(),
        Err(e) => {
            return Outcome::unknown(
                "PluginFailed",
                first_line(e.to_string().as_bytes(), max_len),
            )
        }
    };
    let status = match code {
        Some(0) => Status::Ok,
        Some(1) => Status::Problem,
        _ => Status::Unknown,
    };
    Outcome {
        status,
        reason: if status == Status::Unknown {
            "PluginUnknown".into()
        } else {
            String::new()
        },
        message,
        value: code.map(f64::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn exit_codes_map_like_npd() {
        let d = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(5);
        let ok = script(
            d.path(),
            "ok",
            "echo '  all good  '; echo second line; exit 0",
        );
        let o = run(&ok, &[], t, 80).await;
        assert_eq!((o.status, o.message.as_str()), (Status::Ok, "all good"));
        let bad = script(d.path(), "bad", "echo broken; exit 1");
        let o = run(&bad, &[], t, 80).await;
        assert_eq!((o.status, o.message.as_str()), (Status::Problem, "broken"));
        let unk = script(d.path(), "unk", "echo what; exit 2");
        assert_eq!(run(&unk, &[], t, 80).await.status, Status::Unknown);
        let missing = d.path().join("nope");
        let o = run(&missing, &[], t, 80).await;
        assert_eq!(
            (o.status, o.reason.as_str()),
            (Status::Unknown, "PluginStartFailed")
        );
    }

    #[tokio::test]
    async fn long_output_is_cut_and_only_4k_read() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "long",
            "head -c 100000 /dev/zero | tr '\\0' x; exit 1",
        );
        let o = run(&p, &[], Duration::from_secs(5), 80).await;
        assert_eq!(o.status, Status::Problem);
        assert_eq!(o.message.len(), 80);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("child.pid");
        // The plugin starts a grandchild that would outlive a plain kill of the plugin.
        let p = script(
            d.path(),
            "hang",
            &format!("sleep 60 & echo $! > {}; wait", marker.display()),
        );
        let started = tokio::time::Instant::now().into_std();
        let o = run(&p, &[], Duration::from_millis(500), 80).await;
        assert_eq!(
            (o.status, o.reason.as_str()),
            (Status::Unknown, "PluginTimeout")
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: u32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild is gone (or a zombie reaped by init) within a moment.
        let mut alive = true;
        for _ in 0..50 {
            alive = crate::platform::imp::process_alive(pid);
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive, "grandchild {pid} survived the timeout");
    }
}
