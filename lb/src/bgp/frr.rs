//! FRR's view, for status only: BGP sessions and BFD peers read through vtysh every
//! `bgp.status_interval`, each read bounded in time. keel-lb never configures FRR; a missing, silent
//! or garbled FRR shows as a status and in the metrics, never stops keel-lb.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::config::BgpConfig;
use super::frr_json::{self, BfdPeer, Neighbor};
use super::BgpMetrics;

/// The commands read; their names are the `command` label of `keel_lb_bgp_status_reads_total`.
pub const BGP_SUMMARY: (&str, &str) = ("bgp_summary", "show bgp summary json");
pub const BFD_PEERS: (&str, &str) = ("bfd_peers", "show bfd peers json");

/// Why a read gave nothing; the `result` label of `keel_lb_bgp_status_reads_total` (with "ok").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// vtysh could not be started (not installed, not executable).
    NoVtysh(String),
    /// vtysh did not answer within the timeout; it is killed.
    Timeout(Duration),
    /// vtysh answered with a failure (daemon not running, no access to its socket).
    Failed(String),
    /// The output is not the JSON expected.
    Parse(String),
}

impl ReadError {
    pub fn label(&self) -> &'static str {
        match self {
            ReadError::NoVtysh(_) => "no_vtysh",
            ReadError::Timeout(_) => "timeout",
            ReadError::Failed(_) => "failed",
            ReadError::Parse(_) => "parse_error",
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NoVtysh(e) => write!(f, "cannot run vtysh: {e}"),
            ReadError::Timeout(d) => write!(f, "vtysh gave no answer within {d:?}"),
            ReadError::Failed(e) => write!(f, "vtysh failed: {e}"),
            ReadError::Parse(e) => write!(f, "unexpected output: {e}"),
        }
    }
}

pub const RESULTS: [&str; 5] = ["ok", "no_vtysh", "timeout", "failed", "parse_error"];

/// The last read of one command.
#[derive(Debug, Clone)]
pub struct Read<T> {
    /// When the last read ended; None before the first.
    pub at: Option<SystemTime>,
    /// The last read's failure; the values are then those of the last good read (kept for
    /// context, marked stale by this).
    pub error: Option<String>,
    pub value: Vec<T>,
}

impl<T> Default for Read<T> {
    fn default() -> Self {
        Read {
            at: None,
            error: None,
            value: Vec::new(),
        }
    }
}

/// What the status API shows of FRR.
#[derive(Debug, Clone, Default)]
pub struct FrrView {
    pub bgp: Read<Neighbor>,
    pub bfd: Read<BfdPeer>,
}

pub type FrrHandle = Arc<Mutex<FrrView>>;

/// A read's time limit: under the interval, so reads never pile up.
pub fn timeout_for(interval: Duration) -> Duration {
    (interval / 2).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// Runs one vtysh command and returns its output; bounded in time (a hung vtysh is killed).
pub async fn vtysh(cfg: &BgpConfig, command: &str, limit: Duration) -> Result<String, ReadError> {
    let mut cmd = tokio::process::Command::new(&cfg.vtysh);
    if let Some(dir) = &cfg.vty_socket {
        cmd.arg("--vty_socket").arg(dir);
    }
    cmd.args(["-c", command])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| ReadError::Timeout(limit))?
        .map_err(|e| ReadError::NoVtysh(format!("{}: {e}", cfg.vtysh.display())))?;
    if !out.status.success() {
        // vtysh says "bgpd is not running" on stdout, socket errors on stderr.
        let mut why = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.trim().is_empty() {
            if !why.is_empty() {
                why.push_str("; ");
            }
            why.push_str(err.trim());
        }
        why.truncate(300);
        return Err(ReadError::Failed(format!(
            "{command:?}: {why} ({})",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn read<T>(
    cfg: &BgpConfig,
    (label, command): (&str, &str),
    parse: fn(&str) -> Result<Vec<T>, String>,
    m: &BgpMetrics,
) -> Result<Vec<T>, ReadError> {
    let r = match vtysh(cfg, command, timeout_for(cfg.status_interval)).await {
        Ok(out) => parse(&out).map_err(ReadError::Parse),
        Err(e) => Err(e),
    };
    let result = r.as_ref().map_or_else(ReadError::label, |_| "ok");
    m.status_reads.with_label_values(&[label, result]).inc();
    r
}

fn store<T>(slot: &mut Read<T>, r: Result<Vec<T>, ReadError>) {
    slot.at = Some(SystemTime::now());
    match r {
        Ok(v) => {
            slot.value = v;
            slot.error = None;
        }
        Err(e) => slot.error = Some(e.to_string()),
    }
}

/// Reads FRR's state every `status_interval` into `view` and the metrics, until aborted.
pub async fn status_loop(cfg: BgpConfig, m: BgpMetrics, view: FrrHandle) {
    let mut tick = tokio::time::interval(cfg.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = (false, false);
    loop {
        tick.tick().await;
        let bgp = read(&cfg, BGP_SUMMARY, frr_json::parse_summary, &m).await;
        let bfd = read(&cfg, BFD_PEERS, frr_json::parse_bfd_peers, &m).await;
        // Said once per outage, not every interval.
        match (&bgp, warned.0) {
            (Err(e), false) => tracing::warn!(error = %e, "bgp: cannot read FRR's BGP sessions"),
            (Ok(_), true) => tracing::info!("bgp: FRR's BGP sessions readable again"),
            _ => {}
        }
        warned.0 = bgp.is_err();
        match (&bfd, warned.1) {
            (Err(e), false) => tracing::warn!(error = %e, "bgp: cannot read FRR's BFD peers"),
            (Ok(_), true) => tracing::info!("bgp: FRR's BFD peers readable again"),
            _ => {}
        }
        warned.1 = bfd.is_err();
        m.show_bgp(bgp.as_deref().ok());
        m.show_bfd(bfd.as_deref().ok());
        let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
        store(&mut v.bgp, bgp);
        store(&mut v.bfd, bfd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vtysh: &str) -> BgpConfig {
        BgpConfig {
            interface: "keel-vips".into(),
            vips: vec![],
            withdraw_wait: Duration::ZERO,
            vtysh: vtysh.into(),
            vty_socket: None,
            status_interval: Duration::from_secs(1),
            handoff: None,
        }
    }

    #[tokio::test]
    async fn a_missing_failing_or_hung_vtysh_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p.display().to_string()
        };
        let limit = Duration::from_millis(300);
        let e = vtysh(&cfg("/nonexistent/vtysh"), "x", limit)
            .await
            .unwrap_err();
        assert_eq!(e.label(), "no_vtysh", "{e}");
        let failing = script("failing", "echo 'bgpd is not running'; exit 1");
        let e = vtysh(&cfg(&failing), "x", limit).await.unwrap_err();
        assert_eq!(e.label(), "failed");
        assert!(e.to_string().contains("bgpd is not running"), "{e}");
        let hung = script("hung", "exec sleep 30");
        let t0 = std::time::Instant::now();
        let e = vtysh(&cfg(&hung), "x", limit).await.unwrap_err();
        assert_eq!(e, ReadError::Timeout(limit));
        assert!(t0.elapsed() < Duration::from_secs(5));
        let ok = script("ok", "echo '{}'");
        assert_eq!(vtysh(&cfg(&ok), "x", limit).await.unwrap().trim(), "{}");
    }

    #[test]
    fn a_failed_read_keeps_the_last_values_and_says_why() {
        let mut slot: Read<u8> = Read::default();
        store(&mut slot, Ok(vec![1]));
        assert_eq!((slot.value.clone(), slot.error.clone()), (vec![1], None));
        store(&mut slot, Err(ReadError::Parse("x".into())));
        assert_eq!(slot.value, vec![1]);
        assert_eq!(slot.error.as_deref(), Some("unexpected output: x"));
        assert_eq!(
            timeout_for(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(timeout_for(Duration::from_secs(60)), Duration::from_secs(5));
    }
}
