//! FRR's JSON as vtysh prints it, read into what keel-lb reports: BGP neighbors from `show bgp
//! summary json` and BFD peers from `show bfd peers json`. Pure: text in, values out; the fixtures in
//! `testdata/` are captured from FRR 8.4 (Debian 12). Unknown fields are ignored and missing ones
//! read as zero, so a newer FRR that adds fields still parses.

use std::collections::BTreeMap;

use serde_json::Value;

/// One BGP neighbor, its address families merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    /// The neighbor's address (or interface name for an unnumbered session), as FRR keys it.
    pub peer: String,
    /// FRR's FSM state: Idle, Connect, Active, OpenSent, OpenConfirm, Established, or
    /// "Idle (Admin)" and the like; "Established" in any family wins.
    pub state: String,
    pub remote_as: Option<u64>,
    /// Milliseconds in the current state while Established (FRR's `peerUptimeMsec`).
    pub uptime_ms: u64,
    /// Summed over the families.
    pub prefixes_sent: u64,
    pub prefixes_received: u64,
}

impl Neighbor {
    pub fn established(&self) -> bool {
        self.state == "Established"
    }
}

/// One BFD session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdPeer {
    pub peer: String,
    pub local: Option<String>,
    pub interface: Option<String>,
    /// up, down, init or shutdown (administratively down).
    pub status: String,
    /// Why it went down last ("ok" while nothing happened).
    pub diagnostic: String,
    pub detect_multiplier: u64,
    /// Milliseconds, as agreed with the peer's own intervals.
    pub receive_interval_ms: u64,
    pub transmit_interval_ms: u64,
}

impl BfdPeer {
    pub fn up(&self) -> bool {
        self.status == "up"
    }
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

/// `show bgp summary json` (or `show bgp ipv4 unicast summary json`). FRR 8 prints one object per
/// address family (`ipv4Unicast`, ...) each holding `peers`; the per-family command prints the
/// family's object itself. No BGP instance prints `{}`: no neighbors.
pub fn parse_summary(json: &str) -> Result<Vec<Neighbor>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("show bgp summary json: {e}"))?;
    let Some(top) = v.as_object() else {
        return Err("show bgp summary json: not a JSON object".into());
    };
    let families: Vec<&Value> = if top.contains_key("peers") {
        vec![&v]
    } else {
        top.values().collect()
    };
    let mut out: BTreeMap<String, Neighbor> = BTreeMap::new();
    for fam in families {
        let Some(peers) = fam.get("peers").and_then(Value::as_object) else {
            continue;
        };
        for (addr, p) in peers {
            let state = s(p, "state").unwrap_or_else(|| "unknown".into());
            let n = out.entry(addr.clone()).or_insert_with(|| Neighbor {
                peer: addr.clone(),
                state: state.clone(),
                remote_as: None,
                uptime_ms: 0,
                prefixes_sent: 0,
                prefixes_received: 0,
            });
            if state == "Established" {
                n.state = state;
                n.uptime_ms = n.uptime_ms.max(u(p, "peerUptimeMsec"));
            }
            n.remote_as = n.remote_as.or(p.get("remoteAs").and_then(Value::as_u64));
            n.prefixes_sent += u(p, "pfxSnt");
            n.prefixes_received += u(p, "pfxRcd");
        }
    }
    Ok(out.into_values().collect())
}

/// `show bfd peers json`: an array of sessions.
pub fn parse_bfd_peers(json: &str) -> Result<Vec<BfdPeer>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("show bfd peers json: {e}"))?;
    let Some(list) = v.as_array() else {
        return Err("show bfd peers json: not a JSON array".into());
    };
    let mut out: Vec<BfdPeer> = list
        .iter()
        .filter_map(|p| {
            Some(BfdPeer {
                peer: s(p, "peer")?,
                local: s(p, "local"),
                interface: s(p, "interface"),
                status: s(p, "status").unwrap_or_else(|| "unknown".into()),
                diagnostic: s(p, "diagnostic").unwrap_or_default(),
                detect_multiplier: u(p, "detect-multiplier"),
                receive_interval_ms: u(p, "receive-interval"),
                transmit_interval_ms: u(p, "transmit-interval"),
            })
        })
        .collect();
    out.sort_by(|a, b| a.peer.cmp(&b.peer));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB_UP: &str = include_str!("testdata/lb-summary-up.json");
    const LB_V4_UP: &str = include_str!("testdata/lb-ipv4-summary-up.json");
    const LB_PEER_DOWN: &str = include_str!("testdata/lb-summary-peer-down.json");
    const ROUTER_ONE_MISSING: &str = include_str!("testdata/router-summary-one-peer-missing.json");
    const BFD_LB_UP: &str = include_str!("testdata/lb-bfd-peers-up.json");
    const BFD_LB_DOWN: &str = include_str!("testdata/lb-bfd-peers-down.json");
    const BFD_ROUTER: &str = include_str!("testdata/router-bfd-peers.json");

    #[test]
    fn an_established_session_from_frr_8_4_with_its_prefixes_summed_over_families() {
        let n = parse_summary(LB_UP).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].peer, "198.18.1.1");
        assert!(n[0].established());
        assert_eq!(n[0].remote_as, Some(65000));
        // One VIP announced in ipv4 unicast, none in ipv6.
        assert_eq!(n[0].prefixes_sent, 1);
        assert_eq!(n[0].prefixes_received, 0);
        assert!(n[0].uptime_ms > 0);
        // The per-family command prints the family object itself.
        assert_eq!(parse_summary(LB_V4_UP).unwrap(), n);
    }

    #[test]
    fn a_session_down_and_a_router_with_one_of_two_neighbors_missing() {
        let n = parse_summary(LB_PEER_DOWN).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].state, "Active");
        assert!(!n[0].established());
        assert_eq!(n[0].uptime_ms, 0);
        let r = parse_summary(ROUTER_ONE_MISSING).unwrap();
        let states: Vec<(&str, bool)> = r
            .iter()
            .map(|n| (n.peer.as_str(), n.established()))
            .collect();
        assert_eq!(states, [("198.18.1.11", true), ("198.18.1.12", false)]);
        assert_eq!(r[0].prefixes_received, 1);
    }

    #[test]
    fn bfd_peers_up_down_and_never_seen() {
        let p = parse_bfd_peers(BFD_LB_UP).unwrap();
        assert_eq!(p.len(), 1);
        assert!(p[0].up());
        assert_eq!(p[0].peer, "198.18.1.1");
        assert_eq!(p[0].local.as_deref(), Some("198.18.1.11"));
        assert_eq!(
            (
                p[0].detect_multiplier,
                p[0].receive_interval_ms,
                p[0].transmit_interval_ms
            ),
            (3, 100, 100)
        );
        let d = parse_bfd_peers(BFD_LB_DOWN).unwrap();
        assert_eq!(d[0].status, "down");
        assert_eq!(d[0].diagnostic, "neighbor signaled session down");
        let r = parse_bfd_peers(BFD_ROUTER).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[0].up());
        // A configured peer that never answered: down, no local address or interface yet.
        assert_eq!(r[1].status, "down");
        assert_eq!(r[1].local, None);
    }

    #[test]
    fn what_is_not_frr_json_is_an_error_not_a_panic() {
        assert_eq!(parse_summary("{}").unwrap(), vec![]);
        assert_eq!(parse_bfd_peers("[]").unwrap(), vec![]);
        for bad in [
            "",
            "% bgpd is not running",
            "[1,2]",
            "{\"ipv4Unicast\":",
            "null",
        ] {
            assert!(parse_summary(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "{}", "bfdd is not running", "[{\"peer\":"] {
            assert!(parse_bfd_peers(bad).is_err(), "{bad:?}");
        }
        // Odd types inside are skipped or read as zero.
        let n =
            parse_summary(r#"{"ipv4Unicast":{"peers":{"x":{"state":7,"pfxSnt":"many"}}},"x":3}"#)
                .unwrap();
        assert_eq!(n[0].state, "unknown");
        assert_eq!(n[0].prefixes_sent, 0);
        assert_eq!(parse_bfd_peers(r#"[{"status":"up"},3]"#).unwrap(), vec![]);
    }
}
