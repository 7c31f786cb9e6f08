//! The resource checks: memory, disk space and inodes, PIDs, read-only filesystems, clock offset and
//! services. Blocking OS calls run on the blocking pool so that a stuck one (statvfs on a dead NFS
//! mount) only costs its own check a timeout.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::outcome::{Outcome, Status};
use crate::config::health::{ServiceSpec, Threshold};
use crate::platform::{self, ServiceState};

fn human(bytes: u64) -> String {
    const MI: f64 = (1u64 << 20) as f64;
    if bytes >= 1 << 30 {
        format!("{:.1}Gi", bytes as f64 / (MI * 1024.0))
    } else {
        format!("{:.1}Mi", bytes as f64 / MI)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("probe task failed: {e}")),
    }
}

pub async fn memory(min: Threshold) -> Outcome {
    match blocking(platform::imp::memory).await {
        Ok(m) => {
            let msg = format!(
                "{} of {} memory available",
                human(m.available),
                human(m.total)
            );
            if min.below(m.available, m.total) {
                Outcome::problem("MemoryAvailableLow", msg, Some(m.available as f64))
            } else {
                Outcome::ok(msg, Some(m.available as f64))
            }
        }
        Err(e) => Outcome::unknown("MemoryUnreadable", e),
    }
}

pub async fn disk(
    path: PathBuf,
    min_free: Option<Threshold>,
    min_free_inodes: Option<Threshold>,
) -> Outcome {
    let p = path.clone();
    match blocking(move || platform::imp::disk(&p)).await {
        Ok(d) => {
            let mut msg = format!(
                "{}: {} of {} free",
                path.display(),
                human(d.available),
                human(d.total)
            );
            if let (Some(t), Some(f)) = (d.inodes_total, d.inodes_free) {
                msg.push_str(&format!(", {f} of {t} inodes free"));
            }
            if min_free
                .as_ref()
                .is_some_and(|t| t.below(d.available, d.total))
            {
                return Outcome::problem("DiskSpaceLow", msg, Some(d.available as f64));
            }
            if let (Some(th), Some(t), Some(f)) = (&min_free_inodes, d.inodes_total, d.inodes_free)
            {
                if th.below(f, t) {
                    return Outcome::problem("InodesLow", msg, Some(d.available as f64));
                }
            }
            Outcome::ok(msg, Some(d.available as f64))
        }
        Err(e) => Outcome::unknown("DiskUnreadable", format!("{}: {e}", path.display())),
    }
}

pub async fn pids(max_used_percent: f64, cgroup: Option<PathBuf>) -> Outcome {
    let cg = cgroup.clone();
    match blocking(move || platform::imp::pids(cg.as_deref())).await {
        Ok(p) => {
            let pct = if p.limit == 0 {
                100.0
            } else {
                p.used as f64 * 100.0 / p.limit as f64
            };
            let scope = match &cgroup {
                Some(c) => format!("cgroup {}", c.display()),
                None => "node".into(),
            };
            let msg = format!("{scope}: {} of {} PIDs used ({pct:.1}%)", p.used, p.limit);
            if pct >= max_used_percent {
                Outcome::problem("PIDsExhausted", msg, Some(pct))
            } else {
                Outcome::ok(msg, Some(pct))
            }
        }
        Err(e) => Outcome::unknown("PIDsUnreadable", e),
    }
}

pub async fn readonly(paths: Vec<PathBuf>) -> Outcome {
    let ps = paths.clone();
    let res = blocking(move || {
        let mut ro = Vec::new();
        for p in &ps {
            if platform::imp::disk(p)?.readonly {
                ro.push(p.display().to_string());
            }
        }
        Ok(ro)
    })
    .await;
    match res {
        Ok(ro) if ro.is_empty() => Outcome::ok(
            format!(
                "{} writable",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(0.0),
        ),
        Ok(ro) => Outcome::problem(
            "FilesystemIsReadOnly",
            format!("read-only: {}", ro.join(", ")),
            Some(ro.len() as f64),
        ),
        Err(e) => Outcome::unknown("FilesystemUnreadable", e),
    }
}

// ---------------------------------------------------------------------------------------------
// Clock offset by SNTP (RFC 4330): one request, offset = ((t2 - t1) + (t3 - t4)) / 2.

const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

fn to_ntp(t: SystemTime) -> (u32, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = (d.as_secs() + NTP_UNIX_OFFSET) as u32;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs, frac as u32)
}

fn from_ntp(b: &[u8]) -> f64 {
    let secs = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64;
    let frac = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as f64 / 4_294_967_296.0;
    secs - NTP_UNIX_OFFSET as f64 + frac
}

fn unix_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Offset of the local clock against `server` (seconds; positive means the server is ahead).
// The clock check compares wall time with an NTP server.
#[allow(clippy::disallowed_methods)]
pub async fn sntp_offset(server: &str) -> Result<f64, String> {
    let target =
        if server.contains(':') && !server.starts_with('[') && server.matches(':').count() > 1 {
            format!("[{server}]:123")
        } else if server
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            server.to_string()
        } else {
            format!("{server}:123")
        };
    let addr = tokio::net::lookup_host(&target)
        .await
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(addr).await.map_err(|e| e.to_string())?;
    let mut req = [0u8; 48];
    req[0] = 0b00_100_011; // LI 0, version 4, mode 3 (client)
    let t1 = SystemTime::now();
    let (s, f) = to_ntp(t1);
    req[40..44].copy_from_slice(&s.to_be_bytes());
    req[44..48].copy_from_slice(&f.to_be_bytes());
    sock.send(&req).await.map_err(|e| e.to_string())?;
    let mut resp = [0u8; 128];
    let n = sock.recv(&mut resp).await.map_err(|e| e.to_string())?;
    let t4 = SystemTime::now();
    if n < 48 {
        return Err(format!("short NTP reply ({n} bytes)"));
    }
    let mode = resp[0] & 0x7;
    let stratum = resp[1];
    if mode != 4 || stratum == 0 {
        return Err(format!(
            "NTP reply is not a server answer (mode {mode}, stratum {stratum})"
        ));
    }
    if resp[24..32] != req[40..48] {
        return Err("NTP reply does not answer our request".into());
    }
    let t2 = from_ntp(&resp[32..40]);
    let t3 = from_ntp(&resp[40..48]);
    Ok(((t2 - unix_f64(t1)) + (t3 - unix_f64(t4))) / 2.0)
}

pub async fn clock(server: &str, max_offset: Duration, _timeout: Duration) -> Outcome {
    match sntp_offset(server).await {
        Ok(off) => {
            let msg = format!("clock offset {:.3}s against {server}", off);
            if off.abs() > max_offset.as_secs_f64() {
                Outcome::problem("ClockOffsetTooLarge", msg, Some(off))
            } else {
                Outcome::ok(msg, Some(off))
            }
        }
        Err(e) => Outcome::unknown("NTPUnreachable", format!("{server}: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Services

async fn service_state(s: &ServiceSpec) -> Result<ServiceState, String> {
    if let Some(pidfile) = &s.pidfile {
        let pidfile = pidfile.clone();
        return blocking(move || {
            let text = match std::fs::read_to_string(&pidfile) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(ServiceState::NotRunning("no pid file".into()))
                }
                Err(e) => return Err(e),
            };
            Ok(match text.trim().parse::<u32>() {
                Ok(pid) if platform::imp::process_alive(pid) => ServiceState::Running,
                Ok(pid) => ServiceState::NotRunning(format!("pid {pid} not running")),
                Err(_) => ServiceState::NotRunning("pid file holds no pid".into()),
            })
        })
        .await;
    }
    #[cfg(target_os = "linux")]
    {
        platform::imp::unit_state(&s.name)
            .await
            .map_err(|e| e.to_string())
    }
    #[cfg(windows)]
    {
        let name = s.name.clone();
        blocking(move || platform::imp::service_state(&name)).await
    }
}

pub async fn services(list: &[ServiceSpec], _timeout: Duration) -> Outcome {
    let states = futures::future::join_all(list.iter().map(service_state)).await;
    let mut down = Vec::new();
    let mut unknown = Vec::new();
    for (s, st) in list.iter().zip(states) {
        match st {
            Ok(ServiceState::Running) => {}
            Ok(ServiceState::NotRunning(why)) => down.push(format!("{} ({why})", s.name)),
            Ok(ServiceState::Missing) => down.push(format!("{} (not installed)", s.name)),
            Err(e) => unknown.push(format!("{}: {e}", s.name)),
        }
    }
    let names = || {
        list.iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !down.is_empty() {
        Outcome::problem(
            "ServiceNotRunning",
            format!("not running: {}", down.join(", ")),
            Some(down.len() as f64),
        )
    } else if !unknown.is_empty() {
        Outcome::unknown("ServiceStateUnknown", unknown.join("; "))
    } else {
        Outcome {
            status: Status::Ok,
            reason: String::new(),
            message: format!("running: {}", names()),
            value: Some(0.0),
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests build their own `now`.
mod tests {
    use super::*;

    /// A one-shot SNTP server on loopback whose clock runs `skew` seconds ahead.
    async fn fake_ntp(skew: f64) -> std::net::SocketAddr {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 48];
            let (_, peer) = sock.recv_from(&mut buf).await.unwrap();
            let now = SystemTime::now() + Duration::from_secs_f64(skew);
            let (s, f) = to_ntp(now);
            let mut resp = [0u8; 48];
            resp[0] = 0b00_100_100;
            resp[1] = 2;
            resp[24..32].copy_from_slice(&buf[40..48]);
            for at in [32, 40] {
                resp[at..at + 4].copy_from_slice(&s.to_be_bytes());
                resp[at + 4..at + 8].copy_from_slice(&f.to_be_bytes());
            }
            sock.send_to(&resp, peer).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn clock_offset_beyond_limit_is_a_problem() {
        let addr = fake_ntp(3.0).await;
        let o = clock(
            &addr.to_string(),
            Duration::from_millis(500),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(o.status, Status::Problem, "{o:?}");
        let off = o.value.unwrap();
        assert!((off - 3.0).abs() < 0.2, "{off}");
        let addr = fake_ntp(0.0).await;
        let o = clock(
            &addr.to_string(),
            Duration::from_millis(500),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(o.status, Status::Ok, "{o:?}");
    }

    #[tokio::test]
    async fn pidfile_stand_in_service_follows_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("svc.pid");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&pidfile, child.id().to_string()).unwrap();
        let spec = vec![ServiceSpec {
            name: "stand-in".into(),
            pidfile: Some(pidfile.clone()),
        }];
        assert_eq!(
            services(&spec, Duration::from_secs(1)).await.status,
            Status::Ok
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let o = services(&spec, Duration::from_secs(1)).await;
        assert_eq!(o.status, Status::Problem);
        assert!(o.message.contains("stand-in"), "{o:?}");
    }

    #[tokio::test]
    async fn memory_reads_this_machine() {
        let o = memory(Threshold::Bytes(1)).await;
        assert_eq!(o.status, Status::Ok, "{o:?}");
        let o = memory(Threshold::Percent(100.0)).await;
        assert_eq!(o.status, Status::Problem, "{o:?}");
    }
}
