//! The `bgp:` section: VIPs announced by BGP through FRR instead of moved by VRRP. keel-lb never
//! speaks BGP; it keeps each VIP as a host route on a dummy interface that FRR redistributes.
//!
//! ```yaml
//! bgp:
//!   interface: keel-vips
//!   withdraw_wait: 3s
//!   vips:
//!     - address: 198.18.0.10
//!       track_pools: [api]
//!   handoff:                 # optional: keep a leaving VM's connections (see handoff.rs)
//!     peers: [198.18.0.2, 198.18.0.3]
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use keel_common::{Diagnostics, Dur};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBgp {
    pub interface: Option<String>,
    #[serde(default)]
    pub vips: Vec<RawBgpVip>,
    pub withdraw_wait: Option<Dur>,
    pub vtysh: Option<PathBuf>,
    pub vty_socket: Option<PathBuf>,
    pub status_interval: Option<Dur>,
    pub handoff: Option<RawHandoff>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandoff {
    #[serde(default)]
    pub peers: Vec<String>,
    pub port: Option<u16>,
    pub mark: Option<u32>,
    pub nft: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBgpVip {
    pub address: String,
    #[serde(default)]
    pub track_pools: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BgpConfig {
    /// The dummy interface keel-lb creates; FRR redistributes its connected routes.
    pub interface: String,
    pub vips: Vec<BgpVip>,
    /// On a planned leave: how long the listeners keep accepting after the routes are withdrawn,
    /// while the routers converge, before the drain starts.
    pub withdraw_wait: Duration,
    /// FRR's shell, for status only (`show bgp summary json`).
    pub vtysh: PathBuf,
    /// `vtysh --vty_socket DIR`, for an FRR whose sockets are not in the default directory.
    pub vty_socket: Option<PathBuf>,
    pub status_interval: Duration,
    /// Forwarding of a leaving LB VM's connections by the others; None: not configured.
    pub handoff: Option<HandoffConfig>,
}

/// `bgp.handoff`: the LB VMs that announce the same VIPs tell each other when they leave, and the
/// ones that stay forward the packets of connections they do not have to the one leaving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffConfig {
    /// Every LB VM's address on the segment they share (this VM's own is skipped, so every VM can
    /// be given the same list).
    pub peers: Vec<IpAddr>,
    /// UDP port the leave notices go to and are received on.
    pub port: u16,
    /// Packet mark for the VIPs' TCP packets; connections accepted here inherit it
    /// (`net.ipv4.tcp_fwmark_accept`), which is how a connection of this VM is told from one that
    /// is not.
    pub mark: u32,
    /// nftables' command line tool.
    pub nft: PathBuf,
}

pub const DEFAULT_HANDOFF_PORT: u16 = 7947;
pub const DEFAULT_HANDOFF_MARK: u32 = 0x4b4c;
pub const MAX_HANDOFF_PEERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpVip {
    pub addr: IpAddr,
    /// Announced only while every one of these pools has a healthy backend.
    pub track_pools: Vec<String>,
}

pub const DEFAULT_INTERFACE: &str = "keel-vips";
pub const DEFAULT_WITHDRAW_WAIT: Duration = Duration::from_secs(3);
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(5);
pub const MAX_VIPS: usize = 1_000;

/// A host address: `198.18.0.10`, `198.18.0.10/32`, `2001:db8::10/128`.
fn parse_host(text: &str) -> Result<IpAddr, String> {
    let t = text.trim();
    let (a, p) = match t.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (t, None),
    };
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("{t:?} is not an IP address, e.g. 198.18.0.10 or 198.18.0.10/32"))?;
    let host = if addr.is_ipv4() { "32" } else { "128" };
    if let Some(p) = p {
        if p != host {
            return Err(format!(
                "{t:?}: a BGP VIP is a host route; the prefix is /{host} or left out"
            ));
        }
    }
    let link_local = matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() || link_local {
        return Err(format!("{addr} cannot be a virtual address"));
    }
    Ok(addr)
}

fn interface_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && !n.contains(['/', ' ', '\t', ':'])
        && n != "."
        && n != ".."
        && n != "lo"
}

/// Validates `bgp:`. `pools`: the pool names of the file; `vrrp_vips`: addresses VRRP routers hold
/// (a VIP is announced one way only).
pub fn validate(
    raw: &RawBgp,
    pools: &dyn Fn(&str) -> bool,
    pool_names: &str,
    vrrp_vips: &[IpAddr],
    services_announce: bool,
    diag: &mut Diagnostics,
) -> Option<BgpConfig> {
    let f = "bgp";
    let interface = raw
        .interface
        .clone()
        .unwrap_or_else(|| DEFAULT_INTERFACE.into());
    if !interface_name_ok(&interface) {
        diag.error(
            format!("{f}.interface"),
            format!("{interface:?} is not an interface name (1 to 15 characters, no '/', ':' or white space, not lo)"),
        );
    }
    if raw.vips.is_empty() && !services_announce {
        diag.error(
            format!("{f}.vips"),
            "at least one VIP is needed (or a services address pool with announce: bgp)",
        );
    }
    if raw.vips.len() > MAX_VIPS {
        diag.error(
            format!("{f}.vips"),
            format!("{} VIPs; at most {MAX_VIPS}", raw.vips.len()),
        );
        return None;
    }
    let mut seen: HashMap<IpAddr, usize> = HashMap::new();
    let mut vips = Vec::new();
    for (i, rv) in raw.vips.iter().enumerate() {
        let at = format!("{f}.vips[{i}]");
        let addr = match parse_host(&rv.address) {
            Ok(a) => a,
            Err(e) => {
                diag.error(format!("{at}.address"), e);
                continue;
            }
        };
        if let Some(first) = seen.insert(addr, i) {
            diag.error(
                format!("{at}.address"),
                format!("{addr} is listed twice (also vips[{first}])"),
            );
        }
        if vrrp_vips.contains(&addr) {
            diag.error(
                format!("{at}.address"),
                format!(
                    "{addr} is also a VRRP VIP; a VIP is announced by VRRP or by BGP, not both"
                ),
            );
        }
        let mut tracked: Vec<String> = Vec::new();
        for (j, p) in rv.track_pools.iter().enumerate() {
            if !pools(p) {
                diag.error(
                    format!("{at}.track_pools[{j}]"),
                    format!("no pool named {p:?} (pools: {pool_names})"),
                );
            } else if tracked.contains(p) {
                diag.error(
                    format!("{at}.track_pools[{j}]"),
                    format!("{p:?} is tracked twice"),
                );
            } else {
                tracked.push(p.clone());
            }
        }
        vips.push(BgpVip {
            addr,
            track_pools: tracked,
        });
    }
    let withdraw_wait = raw
        .withdraw_wait
        .and_then(|d| {
            diag.duration_in(
                format!("{f}.withdraw_wait"),
                d.0,
                Duration::ZERO,
                Duration::from_secs(600),
            )
        })
        .unwrap_or(DEFAULT_WITHDRAW_WAIT);
    let status_interval = raw
        .status_interval
        .and_then(|d| {
            diag.duration_in(
                format!("{f}.status_interval"),
                d.0,
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )
        })
        .unwrap_or(DEFAULT_STATUS_INTERVAL);
    let vtysh = raw.vtysh.clone().unwrap_or_else(|| PathBuf::from("vtysh"));
    if vtysh.as_os_str().is_empty() {
        diag.error(format!("{f}.vtysh"), "must not be empty");
    }
    let handoff = raw
        .handoff
        .as_ref()
        .map(|h| validate_handoff(h, &format!("{f}.handoff"), diag));
    Some(BgpConfig {
        interface,
        vips,
        withdraw_wait,
        vtysh,
        vty_socket: raw.vty_socket.clone(),
        status_interval,
        handoff,
    })
}

fn validate_handoff(raw: &RawHandoff, f: &str, diag: &mut Diagnostics) -> HandoffConfig {
    if raw.peers.is_empty() {
        diag.error(
            format!("{f}.peers"),
            "list the LB VMs' addresses on their shared segment (at least one other VM)",
        );
    }
    if raw.peers.len() > MAX_HANDOFF_PEERS {
        diag.error(
            format!("{f}.peers"),
            format!("{} peers; at most {MAX_HANDOFF_PEERS}", raw.peers.len()),
        );
    }
    let mut peers: Vec<IpAddr> = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let at = format!("{f}.peers[{i}]");
        match p.trim().parse::<IpAddr>() {
            Ok(a) if a.is_unspecified() || a.is_multicast() || a.is_loopback() => {
                diag.error(at, format!("{a} cannot be an LB VM's address"));
            }
            Ok(a) if peers.contains(&a) => diag.error(at, format!("{a} is listed twice")),
            Ok(a) => peers.push(a),
            Err(_) => diag.error(
                at,
                format!("{p:?} is not an IP address (an LB VM's address, e.g. 198.18.0.2)"),
            ),
        }
    }
    let port = raw.port.unwrap_or(DEFAULT_HANDOFF_PORT);
    if port == 0 {
        diag.error(format!("{f}.port"), "must be 1 to 65535");
    }
    let mark = raw.mark.unwrap_or(DEFAULT_HANDOFF_MARK);
    if mark == 0 {
        diag.error(
            format!("{f}.mark"),
            "must not be 0 (0 is an unmarked packet)",
        );
    }
    let nft = raw.nft.clone().unwrap_or_else(|| PathBuf::from("nft"));
    if nft.as_os_str().is_empty() {
        diag.error(format!("{f}.nft"), "must not be empty");
    }
    HandoffConfig {
        peers,
        port,
        mark,
        nft,
    }
}

impl BgpConfig {
    /// Where vtysh is: the configured path, or the first match in PATH. None: FRR is not installed.
    pub fn find_vtysh(&self) -> Option<PathBuf> {
        if self.vtysh.components().count() > 1 {
            return self.vtysh.is_file().then(|| self.vtysh.clone());
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(&self.vtysh))
            .find(|p| p.is_file())
    }
}

impl HandoffConfig {
    /// Where nft is: the configured path, or the first match in PATH, /usr/sbin or /sbin (a
    /// service's PATH may lack the sbin directories). None: nftables is not installed.
    pub fn find_nft(&self) -> Option<PathBuf> {
        crate::nft::find(&self.nft)
    }
}

/// Where distributions install bgpd (Debian/Ubuntu, then Fedora/RHEL/Alpine).
pub const BGPD_PATHS: [&str; 2] = ["/usr/lib/frr/bgpd", "/usr/libexec/frr/bgpd"];
/// FRR's list of daemons to start; bgpd stays off unless it says `bgpd=yes`.
pub const FRR_DAEMONS: &str = "/etc/frr/daemons";

/// `keel-lb check`'s word on FRR: bgpd not installed, or bgpd or bfdd (the template's BFD) not
/// enabled in FRR's daemons file (Debian ships both `=no`). Empty when it looks right or cannot be
/// told.
pub fn frr_warnings(paths: &[&str], daemons: &std::path::Path) -> Vec<String> {
    let Some(found) = paths.iter().find(|p| std::path::Path::new(p).is_file()) else {
        return vec![format!(
            "bgp: FRR's bgpd not found ({}): nothing will announce the VIPs (install frr)",
            paths.join(", ")
        )];
    };
    let Ok(text) = std::fs::read_to_string(daemons) else {
        return Vec::new();
    };
    let enabled = |daemon: &str| {
        text.lines()
            .rev()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == daemon)
            .is_some_and(|(_, v)| v.trim().trim_matches('"') == "yes")
    };
    let mut w = Vec::new();
    if !enabled("bgpd") {
        w.push(format!(
            "bgp: {found} is installed but {} does not say bgpd=yes: FRR will not start it",
            daemons.display()
        ));
    }
    if !enabled("bfdd") {
        w.push(format!(
            "bgp: {} does not say bfdd=yes: without BFD a dead LB VM is routed around only after the BGP hold time",
            daemons.display()
        ));
    }
    w
}

#[cfg(test)]
mod tests {
    use keel_common::Source;

    #[test]
    fn check_warns_when_bgpd_is_missing_or_frr_daemons_not_enabled() {
        let dir = tempfile::tempdir().unwrap();
        let bgpd = dir.path().join("bgpd");
        let daemons = dir.path().join("daemons");
        let bgpd_s = bgpd.display().to_string();
        let w = super::frr_warnings(&[&bgpd_s], &daemons);
        assert!(w.len() == 1 && w[0].contains("bgpd not found"), "{w:?}");
        std::fs::write(&bgpd, "").unwrap();
        // No daemons file (FRR packaged differently): nothing to say.
        assert!(super::frr_warnings(&[&bgpd_s], &daemons).is_empty());
        std::fs::write(&daemons, "zebra=yes\nbgpd=no\n#bgpd=yes\nbfdd=yes\n").unwrap();
        let w = super::frr_warnings(&[&bgpd_s], &daemons);
        assert!(
            w.len() == 1 && w[0].contains("does not say bgpd=yes"),
            "{w:?}"
        );
        std::fs::write(&daemons, "bgpd=no\nbgpd=yes\nbfdd=no\n").unwrap();
        let w = super::frr_warnings(&[&bgpd_s], &daemons);
        assert!(w.len() == 1 && w[0].contains("bfdd=yes"), "{w:?}");
        std::fs::write(&daemons, "bgpd=yes\nbfdd=\"yes\"\n").unwrap();
        assert!(super::frr_warnings(&[&bgpd_s], &daemons).is_empty());
    }

    fn check(bgp: &str) -> Result<crate::config::Config, keel_common::ConfigErrors> {
        let text = format!(
            "frontends: []\npools:\n  api: {{backends: [{{address: 198.18.0.1:80}}]}}\nvrrp:\n  routers:\n    - {{name: r, vrid: 1, interface: eth0, vips: [198.18.0.9/24]}}\nbgp:\n{bgp}"
        );
        crate::config::load_source(&Source::from_text("lb.yaml", text))
    }

    #[test]
    fn a_good_section_becomes_vips_with_their_tracked_pools() {
        let c = check("  vips:\n    - {address: 198.18.100.10/32, track_pools: [api]}\n    - {address: \"2001:db8::10\"}\n").unwrap();
        let b = c.bgp.unwrap();
        assert_eq!(b.interface, "keel-vips");
        assert_eq!(b.vips.len(), 2);
        assert_eq!(
            b.vips[0].addr,
            "198.18.100.10".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(b.vips[0].track_pools, vec!["api".to_string()]);
        assert_eq!(b.withdraw_wait, super::DEFAULT_WITHDRAW_WAIT);
        assert_eq!(b.handoff, None);
        let c = check("  vips: [{address: 198.18.100.10}]\n  handoff: {peers: [198.18.1.11, \"2001:db8::11\"], mark: 0x10}\n").unwrap();
        let h = c.bgp.unwrap().handoff.unwrap();
        assert_eq!(h.peers.len(), 2);
        assert_eq!((h.port, h.mark), (super::DEFAULT_HANDOFF_PORT, 0x10));
    }

    #[test]
    fn every_error_names_line_and_field() {
        let e = check(
            "  interface: lo\n  withdraw_wait: 11m\n  vips:\n    - {address: 198.18.0.9, track_pools: [nope]}\n    - {address: 198.18.0.8/24}\n    - {address: 198.18.0.7, track_pools: [api, api]}\n    - {address: 198.18.0.7}\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "lb.yaml:8: bgp.interface:",
            "lb.yaml:9: bgp.withdraw_wait:",
            "lb.yaml:11: bgp.vips[0].address: 198.18.0.9 is also a VRRP VIP",
            "lb.yaml:11: bgp.vips[0].track_pools[0]: no pool named \"nope\"",
            "lb.yaml:12: bgp.vips[1].address: \"198.18.0.8/24\": a BGP VIP is a host route",
            "lb.yaml:13: bgp.vips[2].track_pools[1]: \"api\" is tracked twice",
            "lb.yaml:14: bgp.vips[3].address: 198.18.0.7 is listed twice",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        let e = check(
            "  vips: [{address: 198.18.100.10}]\n  handoff:\n    peers: [198.18.1.11, nope, 198.18.1.11, 224.0.0.1]\n    port: 0\n    mark: 0\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "bgp.handoff.peers[1]: \"nope\" is not an IP address",
            "bgp.handoff.peers[2]: 198.18.1.11 is listed twice",
            "bgp.handoff.peers[3]: 224.0.0.1 cannot be an LB VM's address",
            "bgp.handoff.port: must be 1 to 65535",
            "bgp.handoff.mark: must not be 0",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        assert!(check("  vips: [{address: 198.18.100.10}]\n  handoff: {}\n")
            .unwrap_err()
            .to_string()
            .contains("bgp.handoff.peers: list the LB VMs' addresses"));
        assert!(check("  vips: []\n")
            .unwrap_err()
            .to_string()
            .contains("bgp.vips: at least one"));
    }
}
