//! FRR's view, for status only: BGP sessions from `vtysh -c 'show bgp summary json'`. keel-lb never
//! configures FRR; a missing or silent FRR only shows in the metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use super::config::BgpConfig;

/// One BGP neighbor as FRR reports it (both address families merged; up if any is Established).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub established: bool,
    /// Prefixes sent to it, summed over the families.
    pub prefixes_sent: u64,
}

/// Parses `show bgp summary json` (FRR 8: one object per address family, each with `peers`).
pub fn parse_summary(json: &str) -> Result<BTreeMap<String, Peer>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("show bgp summary json: {e}"))?;
    let mut out: BTreeMap<String, Peer> = BTreeMap::new();
    let Some(families) = v.as_object() else {
        return Err("show bgp summary json: not an object".into());
    };
    for fam in families.values() {
        let Some(peers) = fam.get("peers").and_then(|p| p.as_object()) else {
            continue;
        };
        for (addr, p) in peers {
            let up = p.get("state").and_then(|s| s.as_str()) == Some("Established");
            let sent = p.get("pfxSnt").and_then(|n| n.as_u64()).unwrap_or(0);
            let e = out.entry(addr.clone()).or_insert(Peer {
                established: false,
                prefixes_sent: 0,
            });
            e.established |= up;
            e.prefixes_sent += sent;
        }
    }
    Ok(out)
}

/// Runs one vtysh command and returns its output; bounded in time (a hung vtysh is killed).
pub async fn vtysh(cfg: &BgpConfig, command: &str) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(&cfg.vtysh);
    if let Some(dir) = &cfg.vty_socket {
        cmd.arg("--vty_socket").arg(dir);
    }
    cmd.args(["-c", command])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(5), cmd.output())
        .await
        .map_err(|_| format!("vtysh -c {command:?}: no answer within 5s"))?
        .map_err(|e| format!("vtysh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "vtysh -c {command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_of_frr_8_gives_each_peer_its_state_and_prefixes_sent() {
        // Trimmed from FRR 8.4's output.
        let json = r#"{
          "ipv4Unicast": {"routerId": "198.18.2.2", "as": 65001, "peers": {
            "198.18.2.1": {"remoteAs": 65000, "state": "Established", "pfxRcd": 0, "pfxSnt": 1},
            "198.18.3.1": {"remoteAs": 65000, "state": "Active", "pfxRcd": 0}
          }},
          "ipv6Unicast": {"peers": {
            "198.18.2.1": {"state": "Established", "pfxSnt": 2}
          }}
        }"#;
        let p = parse_summary(json).unwrap();
        assert_eq!(
            p["198.18.2.1"],
            Peer {
                established: true,
                prefixes_sent: 3
            }
        );
        assert!(!p["198.18.3.1"].established);
        assert_eq!(parse_summary("{}").unwrap().len(), 0);
        assert!(parse_summary("% bgpd is not running").is_err());
    }
}
