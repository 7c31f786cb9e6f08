//! The `vrrp:` section of keel-lb's config: raw serde structs, then one `validate` into a typed
//! model that the rest of the crate trusts.
//!
//! ```yaml
//! vrrp:
//!   routers:
//!     - name: web
//!       vrid: 51
//!       interface: eth0
//!       priority: 150
//!       advert_interval: 1s
//!       vips: [198.18.0.100/24]
//!       track:
//!         pools: [{ name: web, weight: 60 }]
//!     - name: api               # keepalived's default: VRRPv2 with `auth_type PASS`
//!       version: 2
//!       auth_pass: "42secret"
//!       vrid: 52
//!       interface: eth0
//!       advert_interval: 1s     # whole seconds in v2
//!       vips: [198.18.0.101/24]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use keel_common::{Diagnostics, Dur};
use serde::Deserialize;

pub use crate::packet::{Auth, Version};

/// Raw `vrrp:` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpFile {
    #[serde(default)]
    pub routers: Vec<RouterFile>,
    /// Run the VRRP thread with SCHED_FIFO when permitted (default true), so a saturated host does
    /// not delay adverts into a false takeover (keepalived #2066, #2238).
    #[serde(default)]
    pub realtime: Option<bool>,
}

/// Raw virtual router.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFile {
    pub name: Option<String>,
    /// VRRP version, 2 (RFC 3768, keepalived's default) or 3 (RFC 9568, the default here).
    pub version: Option<i64>,
    /// VRRPv2 simple text password (keepalived's `auth_type PASS` + `auth_pass`), 1-8 characters.
    pub auth_pass: Option<String>,
    pub vrid: Option<i64>,
    pub interface: Option<String>,
    /// `ipv4` or `ipv6`; inferred from the VIPs when absent.
    pub family: Option<String>,
    pub priority: Option<i64>,
    pub advert_interval: Option<Dur>,
    /// The longest advertisement interval learned from a master (v3; default 3 x advert_interval).
    pub max_learned_interval: Option<Dur>,
    pub preempt: Option<bool>,
    pub preempt_delay: Option<Dur>,
    #[serde(default)]
    pub vips: Vec<String>,
    pub unicast_src: Option<String>,
    #[serde(default)]
    pub unicast_peers: Vec<String>,
    /// Drop adverts whose source is outside the interface's subnets (see `subnet`).
    pub strict_source: Option<bool>,
    pub garp_repeat: Option<i64>,
    pub garp_interval: Option<Dur>,
    /// Second burst of `garp_repeat` announcements this long after becoming master (keepalived's
    /// `garp_master_delay`, default 5s; `0s` = none): catches switches and hosts that missed the
    /// first burst while their port was still converging.
    pub garp_delay: Option<Dur>,
    /// Periodic GARP/NA while master (keepalived's `garp_master_refresh`; default 60s, `0s` = off):
    /// switches and hosts that keep an old entry for hours (keepalived #20, MetalLB #584).
    pub garp_refresh: Option<Dur>,
    /// Set the router flag in IPv6 neighbour advertisements (off by default: keepalived #200, #375).
    pub na_router_flag: Option<bool>,
    #[serde(default)]
    pub track: TrackFile,
    /// Command and arguments; the state (`MASTER`, `BACKUP`, `FAULT`, `STOP`), the router name and the
    /// VRID are appended.
    #[serde(default)]
    pub notify: Vec<String>,
    pub notify_timeout: Option<Dur>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackFile {
    #[serde(default)]
    pub pools: Vec<TrackItemFile>,
    #[serde(default)]
    pub interfaces: Vec<TrackItemFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackItemFile {
    pub name: Option<String>,
    pub weight: Option<i64>,
}

/// Address family of a virtual router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// A virtual address with the prefix it is added with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vip {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A tracked pool or interface and the priority it costs when it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    pub name: String,
    pub weight: u8,
}

/// One validated virtual router.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    pub name: String,
    pub version: Version,
    /// v2 only (always `Auth::None` in v3).
    pub auth: Auth,
    pub vrid: u8,
    pub interface: String,
    pub family: Family,
    /// 1-255; 255 means address owner (always master).
    pub priority: u8,
    /// Advertisement interval in centiseconds (1-4095), the unit on the v3 wire; in v2 a whole
    /// number of seconds (100-25500).
    pub advert_interval_cs: u16,
    /// The longest Master_Adver_Interval a backup learns from an advert (centiseconds): a spoofed
    /// advert with 40.95 s must not keep us from taking over for minutes.
    pub max_learned_interval_cs: u16,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub vips: Vec<Vip>,
    /// Addresses that follow mastership but are not advertised (keepalived's
    /// `virtual_ipaddress_excluded`): keel-lb's Service VIPs. Adverts carry `vips` only, so the two
    /// routers of a pair may disagree on these for a moment without an address mismatch, and a
    /// router can carry more than the 255 addresses an advert holds.
    pub excluded_vips: Vec<Vip>,
    pub unicast_src: Option<IpAddr>,
    pub unicast_peers: Vec<IpAddr>,
    /// Adverts from a source outside the interface's subnets are dropped (`subnet` says what
    /// that means for IPv6).
    pub strict_source: bool,
    pub garp_repeat: u32,
    pub garp_interval: Duration,
    /// Second announcement burst after becoming master; `None` = off.
    pub garp_delay: Option<Duration>,
    /// Periodic GARP/NA while master; `None` = off.
    pub garp_refresh: Option<Duration>,
    pub na_router_flag: bool,
    pub track_pools: Vec<Track>,
    pub track_interfaces: Vec<Track>,
    pub notify: Vec<String>,
    pub notify_timeout: Duration,
}

impl RouterConfig {
    pub fn advert_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.advert_interval_cs) * 10)
    }

    /// Identity on the wire: a change of any of these is a different virtual router.
    pub fn key(&self) -> (String, u8, Family) {
        (self.interface.clone(), self.vrid, self.family)
    }

    /// Every address the master holds: the advertised VIPs, then the excluded ones.
    pub fn owned_vips(&self) -> Vec<Vip> {
        let mut v = self.vips.clone();
        v.extend(self.excluded_vips.iter().copied());
        v
    }
}

/// Validated VRRP config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VrrpConfig {
    pub routers: Vec<RouterConfig>,
    pub realtime: bool,
}

impl VrrpConfig {
    /// Pool names referenced by `track` clauses; keel-lb checks that they exist.
    pub fn tracked_pools(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .routers
            .iter()
            .flat_map(|r| r.track_pools.iter().map(|t| t.name.clone()))
            .collect();
        set.into_iter().collect()
    }

    /// Every VIP of every router (keel-lb may bind listeners on them with IP_FREEBIND).
    pub fn vips(&self) -> Vec<Vip> {
        self.routers.iter().flat_map(|r| r.owned_vips()).collect()
    }
}

const DEFAULT_ADVERT_CS: u16 = 100;
const DEFAULT_GARP_REPEAT: u32 = 5;
/// VIPs one advert carries: IPv4 by its one-byte count, IPv6 by the 1280-byte minimum MTU.
pub const MAX_VIPS_V4: usize = 255;
pub const MAX_VIPS_V6: usize = (1280 - 40 - 8) / 16;

const DEFAULT_GARP_INTERVAL: Duration = Duration::from_millis(10);
const DEFAULT_GARP_DELAY: Duration = Duration::from_secs(5);
const DEFAULT_GARP_REFRESH: Duration = Duration::from_secs(60);
const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Validates the section; errors go to `diag` under `field` (e.g. `vrrp.routers[0].vrid`).
pub fn validate(raw: &VrrpFile, field: &str, diag: &mut Diagnostics) -> Option<VrrpConfig> {
    let mut ok = true;
    let mut routers = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut keys: BTreeMap<(String, u8, Family), usize> = BTreeMap::new();
    let mut vip_owner: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (i, r) in raw.routers.iter().enumerate() {
        let at = format!("{field}.routers[{i}]");
        let Some(router) = validate_router(r, &at, diag) else {
            ok = false;
            continue;
        };
        if let Some(first) = names.insert(router.name.clone(), i) {
            ok = false;
            diag.error(
                format!("{at}.name"),
                format!(
                    "router name {:?} is already used by {field}.routers[{first}]",
                    router.name
                ),
            );
        }
        if let Some(first) = keys.insert(router.key(), i) {
            ok = false;
            diag.error(
                format!("{at}.vrid"),
                format!(
                    "vrid {} on {} ({}) is already used by {field}.routers[{first}]",
                    router.vrid,
                    router.interface,
                    router.family.as_str()
                ),
            );
        }
        for (j, v) in router.vips.iter().enumerate() {
            if let Some(first) = vip_owner.insert(v.addr, i) {
                if first != i {
                    ok = false;
                    diag.error(
                        format!("{at}.vips[{j}]"),
                        format!("VIP {} is also a VIP of {field}.routers[{first}]", v.addr),
                    );
                }
            }
        }
        routers.push(router);
    }
    if !ok {
        return None;
    }
    Some(VrrpConfig {
        routers,
        realtime: raw.realtime.unwrap_or(true),
    })
}

fn validate_router(r: &RouterFile, at: &str, diag: &mut Diagnostics) -> Option<RouterConfig> {
    let mut ok = true;
    let mut fail = |diag: &mut Diagnostics, f: &str, msg: String| {
        diag.error(format!("{at}.{f}"), msg);
        ok = false;
    };

    let name = match r.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() && n.len() <= 64 => n.to_string(),
        Some(_) => {
            fail(diag, "name", "must be 1-64 characters".into());
            String::new()
        }
        None => {
            fail(diag, "name", "is required".into());
            String::new()
        }
    };
    let version = match r.version {
        None | Some(3) => Version::V3,
        Some(2) => Version::V2,
        Some(v) => {
            fail(
                diag,
                "version",
                format!("{v} is not a VRRP version (2 or 3)"),
            );
            Version::V3
        }
    };
    let auth = match (&r.auth_pass, version) {
        (None, _) => Auth::None,
        (Some(_), Version::V3) => {
            fail(
                diag,
                "auth_pass",
                "VRRPv3 has no authentication (RFC 9568 removed it); remove auth_pass or set version: 2".into(),
            );
            Auth::None
        }
        (Some(p), Version::V2) if (1..=8).contains(&p.len()) => Auth::pass(p.as_bytes()),
        (Some(p), Version::V2) => {
            fail(
                diag,
                "auth_pass",
                format!(
                    "is {} bytes; a VRRPv2 password is 1-8 (keepalived would silently cut it to 8)",
                    p.len()
                ),
            );
            Auth::None
        }
    };
    let vrid = match r.vrid {
        Some(v) if (1..=255).contains(&v) => v as u8,
        Some(v) => {
            fail(diag, "vrid", format!("{v} is not in 1-255"));
            0
        }
        None => {
            fail(diag, "vrid", "is required (1-255)".into());
            0
        }
    };
    let interface = match r.interface.as_deref() {
        Some(n) if valid_ifname(n) => n.to_string(),
        Some(n) => {
            fail(
                diag,
                "interface",
                format!("{n:?} is not an interface name (1-15 characters, no '/' or spaces)"),
            );
            String::new()
        }
        None => {
            fail(diag, "interface", "is required".into());
            String::new()
        }
    };
    let priority = match r.priority {
        None => 100,
        Some(p) if (1..=255).contains(&p) => p as u8,
        Some(p) => {
            fail(
                diag,
                "priority",
                format!("{p} is not in 1-255 (255 = address owner)"),
            );
            100
        }
    };
    let advert_interval_cs = match r.advert_interval {
        None => DEFAULT_ADVERT_CS,
        Some(d) if version == Version::V2 => {
            let us = d.0.as_micros();
            if !(1_000_000..=255_000_000).contains(&us) || us % 1_000_000 != 0 {
                fail(
                    diag,
                    "advert_interval",
                    format!("{d} must be whole seconds between 1s and 255s in VRRPv2 (the wire carries seconds)"),
                );
                DEFAULT_ADVERT_CS
            } else {
                (us / 10_000) as u16
            }
        }
        Some(d) => {
            let ms = d.0.as_micros();
            if !(10_000..=40_950_000).contains(&ms) || ms % 10_000 != 0 {
                fail(
                    diag,
                    "advert_interval",
                    format!("{d} must be a multiple of 10ms between 10ms and 40.95s"),
                );
                DEFAULT_ADVERT_CS
            } else {
                (ms / 10_000) as u16
            }
        }
    };
    let max_learned_interval_cs = match r.max_learned_interval {
        None => advert_interval_cs.saturating_mul(3).min(4095),
        Some(d) => {
            let us = d.0.as_micros();
            let own = u128::from(advert_interval_cs) * 10_000;
            if us < own || us > 40_950_000 || us % 10_000 != 0 {
                fail(
                    diag,
                    "max_learned_interval",
                    format!(
                        "{d} must be a multiple of 10ms between the advert_interval ({}) and 40.95s",
                        keel_common::duration::format(Duration::from_micros(own as u64))
                    ),
                );
                advert_interval_cs.saturating_mul(3).min(4095)
            } else {
                (us / 10_000) as u16
            }
        }
    };
    let preempt_delay = match r.preempt_delay {
        None => Duration::ZERO,
        Some(d) if d.0 <= Duration::from_secs(3600) => d.0,
        Some(d) => {
            fail(diag, "preempt_delay", format!("{d} is longer than 1h"));
            Duration::ZERO
        }
    };

    let mut vips = Vec::new();
    if r.vips.is_empty() {
        fail(diag, "vips", "at least one VIP is required".into());
    }
    for (j, text) in r.vips.iter().enumerate() {
        match parse_cidr(text) {
            Ok(v) => {
                if vips.iter().any(|x: &Vip| x.addr == v.addr) {
                    fail(
                        diag,
                        &format!("vips[{j}]"),
                        format!("{} is listed twice", v.addr),
                    );
                } else {
                    vips.push(v);
                }
            }
            Err(e) => fail(diag, &format!("vips[{j}]"), e),
        }
    }
    let declared = match r.family.as_deref() {
        None => None,
        Some("ipv4") | Some("inet") | Some("4") => Some(Family::V4),
        Some("ipv6") | Some("inet6") | Some("6") => Some(Family::V6),
        Some(other) => {
            fail(
                diag,
                "family",
                format!("{other:?} is not a family (ipv4 or ipv6)"),
            );
            None
        }
    };
    let family = declared
        .or_else(|| vips.first().map(|v| Family::of(&v.addr)))
        .unwrap_or(Family::V4);
    if version == Version::V2 && declared == Some(Family::V6) {
        fail(
            diag,
            "family",
            "VRRPv2 (RFC 3768) is IPv4 only; use version: 3 for IPv6".into(),
        );
    }
    for (j, v) in vips.iter().enumerate() {
        if version == Version::V2 && v.addr.is_ipv6() {
            fail(
                diag,
                &format!("vips[{j}]"),
                format!(
                    "{} is IPv6: VRRPv2 (RFC 3768) carries IPv4 addresses only; use version: 3",
                    v.addr
                ),
            );
            continue;
        }
        if Family::of(&v.addr) != family {
            fail(
                diag,
                &format!("vips[{j}]"),
                format!(
                    "{} is not {}: a virtual router's VIPs are all of one family (use another router for the other family)",
                    v.addr,
                    family.as_str()
                ),
            );
        }
    }

    // One advert lists every VIP: its count is one byte, and an IPv6 advert must fit the minimum
    // link MTU (1280 bytes: 40 IPv6 + 8 VRRP + 16 per address). The encoder would cut the rest.
    let max_vips = match family {
        Family::V4 => MAX_VIPS_V4,
        Family::V6 => MAX_VIPS_V6,
    };
    if vips.len() > max_vips {
        fail(
            diag,
            "vips",
            format!(
                "{} VIPs; one {} advert carries at most {max_vips}: split them over routers",
                vips.len(),
                family.as_str()
            ),
        );
    }

    let unicast_src = match r.unicast_src.as_deref() {
        None => None,
        Some(s) => match s.parse::<IpAddr>() {
            Ok(ip) if Family::of(&ip) == family => Some(ip),
            Ok(ip) => {
                fail(
                    diag,
                    "unicast_src",
                    format!("{ip} is not {}", family.as_str()),
                );
                None
            }
            Err(_) => {
                fail(diag, "unicast_src", format!("{s:?} is not an IP address"));
                None
            }
        },
    };
    let mut unicast_peers = Vec::new();
    for (j, s) in r.unicast_peers.iter().enumerate() {
        match s.parse::<IpAddr>() {
            Ok(ip) if Family::of(&ip) != family => fail(
                diag,
                &format!("unicast_peers[{j}]"),
                format!("{ip} is not {}", family.as_str()),
            ),
            Ok(ip) if ip.is_multicast() || ip.is_unspecified() => fail(
                diag,
                &format!("unicast_peers[{j}]"),
                format!("{ip} is not a unicast address"),
            ),
            Ok(ip) if unicast_peers.contains(&ip) => fail(
                diag,
                &format!("unicast_peers[{j}]"),
                format!("{ip} is listed twice"),
            ),
            Ok(ip) => unicast_peers.push(ip),
            Err(_) => fail(
                diag,
                &format!("unicast_peers[{j}]"),
                format!("{s:?} is not an IP address"),
            ),
        }
    }
    if unicast_src.is_some() && unicast_peers.is_empty() {
        fail(
            diag,
            "unicast_peers",
            "unicast_src needs at least one unicast peer".into(),
        );
    }

    let garp_repeat = match r.garp_repeat {
        None => DEFAULT_GARP_REPEAT,
        Some(n) if (1..=100).contains(&n) => n as u32,
        Some(n) => {
            fail(diag, "garp_repeat", format!("{n} is not in 1-100"));
            DEFAULT_GARP_REPEAT
        }
    };
    let garp_interval = match r.garp_interval {
        None => DEFAULT_GARP_INTERVAL,
        Some(d) if d.0 <= Duration::from_secs(1) => d.0,
        Some(d) => {
            fail(diag, "garp_interval", format!("{d} is longer than 1s"));
            DEFAULT_GARP_INTERVAL
        }
    };
    let garp_delay = match r.garp_delay {
        None => Some(DEFAULT_GARP_DELAY),
        Some(d) if d.0.is_zero() => None,
        Some(d) if d.0 <= Duration::from_secs(3600) => Some(d.0),
        Some(d) => {
            fail(
                diag,
                "garp_delay",
                format!("{d} is longer than 1h (0s turns the second burst off)"),
            );
            None
        }
    };
    let garp_refresh = match r.garp_refresh {
        None => Some(DEFAULT_GARP_REFRESH),
        Some(d) if d.0.is_zero() => None,
        Some(d) if d.0 >= Duration::from_secs(1) => Some(d.0),
        Some(d) => {
            fail(
                diag,
                "garp_refresh",
                format!("{d} is shorter than 1s (0s turns the refresh off)"),
            );
            None
        }
    };

    let track_pools = validate_tracks(&r.track.pools, &format!("{at}.track.pools"), diag, &mut ok);
    let track_interfaces = validate_tracks(
        &r.track.interfaces,
        &format!("{at}.track.interfaces"),
        diag,
        &mut ok,
    );
    for (j, t) in track_interfaces.iter().enumerate() {
        if !valid_ifname(&t.name) {
            diag.error(
                format!("{at}.track.interfaces[{j}].name"),
                format!("{:?} is not an interface name", t.name),
            );
            ok = false;
        }
    }
    let notify = r.notify.clone();
    if notify.first().is_some_and(|c| c.trim().is_empty()) {
        diag.error(format!("{at}.notify[0]"), "the command is empty");
        ok = false;
    }
    let notify_timeout = match r.notify_timeout {
        None => DEFAULT_NOTIFY_TIMEOUT,
        Some(d) if !d.0.is_zero() && d.0 <= Duration::from_secs(600) => d.0,
        Some(d) => {
            diag.error(
                format!("{at}.notify_timeout"),
                format!("{d} is not in (0s, 10m]"),
            );
            ok = false;
            DEFAULT_NOTIFY_TIMEOUT
        }
    };

    ok.then(|| RouterConfig {
        name,
        version,
        auth,
        vrid,
        interface,
        family,
        priority,
        advert_interval_cs,
        max_learned_interval_cs,
        preempt: r.preempt.unwrap_or(true),
        preempt_delay,
        vips,
        excluded_vips: Vec::new(),
        unicast_src,
        unicast_peers,
        strict_source: r.strict_source.unwrap_or(false),
        garp_repeat,
        garp_interval,
        garp_delay,
        garp_refresh,
        na_router_flag: r.na_router_flag.unwrap_or(false),
        track_pools,
        track_interfaces,
        notify,
        notify_timeout,
    })
}

fn validate_tracks(
    items: &[TrackItemFile],
    at: &str,
    diag: &mut Diagnostics,
    ok: &mut bool,
) -> Vec<Track> {
    let mut out: Vec<Track> = Vec::new();
    for (j, t) in items.iter().enumerate() {
        let name = match t.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => {
                diag.error(format!("{at}[{j}].name"), "is required");
                *ok = false;
                continue;
            }
        };
        let weight = match t.weight {
            Some(w) if (1..=254).contains(&w) => w as u8,
            Some(w) => {
                diag.error(format!("{at}[{j}].weight"), format!("{w} is not in 1-254"));
                *ok = false;
                continue;
            }
            None => {
                diag.error(format!("{at}[{j}].weight"), "is required (1-254)");
                *ok = false;
                continue;
            }
        };
        if out.iter().any(|x| x.name == name) {
            diag.error(
                format!("{at}[{j}].name"),
                format!("{name:?} is tracked twice"),
            );
            *ok = false;
            continue;
        }
        out.push(Track { name, weight });
    }
    out
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty() && n.len() <= 15 && !n.contains(['/', ' ', '\t', ':']) && n != "." && n != ".."
}

/// `198.18.0.100/24`, `2001:db8::100/64`; a bare address gets a host prefix.
fn parse_cidr(text: &str) -> Result<Vip, String> {
    let t = text.trim();
    let (addr, prefix) = match t.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (t, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{t:?} is not an address with a prefix, e.g. 198.18.0.100/24"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{t:?}: prefix {p:?} is not in 0-{max}"))?,
    };
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Err(format!("{addr} cannot be a virtual address"));
    }
    if let IpAddr::V6(v6) = addr {
        if v6.segments()[0] & 0xffc0 == 0xfe80 {
            return Err(format!("{addr} is link-local; VIPs are global addresses"));
        }
    }
    Ok(Vip { addr, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_common::Source;

    fn check(yaml: &str) -> Result<VrrpConfig, keel_common::ConfigErrors> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Top {
            vrrp: VrrpFile,
        }
        let src = Source::from_text("lb.yaml", yaml);
        let top: Top = keel_common::config::parse(&src)?;
        let mut d = Diagnostics::new(&src);
        let cfg = validate(&top.vrrp, "vrrp", &mut d);
        d.finish(cfg.unwrap_or_default())
    }

    #[test]
    fn a_full_router_validates_into_the_typed_model() {
        let cfg = check(
            "vrrp:
  routers:
    - name: web
      vrid: 51
      interface: eth0
      priority: 150
      advert_interval: 100ms
      preempt: false
      preempt_delay: 5s
      vips: [198.18.0.100/24, 198.18.0.101]
      unicast_src: 198.18.1.11
      unicast_peers: [198.18.1.12]
      garp_repeat: 3
      garp_delay: 0s
      garp_refresh: 0s
      track:
        pools: [{ name: web, weight: 60 }]
        interfaces: [{ name: eth1, weight: 20 }]
      notify: [/usr/local/bin/notify, --quiet]
    - name: web6
      vrid: 51
      interface: eth0
      vips: [2001:db8::100/64]
",
        )
        .unwrap();
        let r = &cfg.routers[0];
        assert_eq!(r.vrid, 51);
        assert_eq!(r.family, Family::V4);
        assert_eq!(r.advert_interval_cs, 10);
        assert!(!r.preempt);
        assert_eq!(r.preempt_delay, Duration::from_secs(5));
        assert_eq!(r.vips[1].prefix, 32);
        assert_eq!(r.garp_refresh, None);
        assert_eq!(r.garp_delay, None);
        assert_eq!(r.track_pools[0].weight, 60);
        assert_eq!(cfg.tracked_pools(), vec!["web".to_string()]);
        let r6 = &cfg.routers[1];
        assert_eq!(r6.family, Family::V6);
        assert_eq!(r6.priority, 100);
        assert_eq!(r6.advert_interval_cs, 100);
        assert!(r6.preempt);
        assert_eq!(r6.garp_refresh, Some(Duration::from_secs(60)));
        assert_eq!(r6.garp_delay, Some(Duration::from_secs(5)));
        assert!(cfg.realtime);
    }

    #[test]
    fn every_error_names_its_field_and_line() {
        let errs = check(
            "vrrp:
  routers:
    - name: a
      vrid: 300
      interface: eth0
      advert_interval: 15ms
      vips: [198.18.0.100/24, 2001:db8::1/64]
    - name: a
      vrid: 7
      interface: this-name-is-far-too-long
      priority: 0
      vips: [nope]
      track:
        pools: [{ name: web, weight: 255 }]
",
        )
        .unwrap_err();
        let text = errs.to_string();
        for needle in [
            "lb.yaml:4: vrrp.routers[0].vrid: 300 is not in 1-255",
            "lb.yaml:6: vrrp.routers[0].advert_interval",
            "vrrp.routers[0].vips[1]: 2001:db8::1 is not ipv4",
            "lb.yaml:10: vrrp.routers[1].interface",
            "lb.yaml:11: vrrp.routers[1].priority: 0 is not in 1-255",
            "lb.yaml:12: vrrp.routers[1].vips[0]",
            "vrrp.routers[1].track.pools[0].weight: 255 is not in 1-254",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn duplicate_vrid_on_one_interface_and_family_is_refused() {
        let errs = check(
            "vrrp:
  routers:
    - { name: a, vrid: 9, interface: eth0, vips: [198.18.0.1/24] }
    - { name: b, vrid: 9, interface: eth0, vips: [198.18.0.2/24] }
    - { name: c, vrid: 9, interface: eth1, vips: [198.18.0.1/24] }
",
        )
        .unwrap_err();
        let text = errs.to_string();
        assert!(
            text.contains(
                "vrrp.routers[1].vrid: vrid 9 on eth0 (ipv4) is already used by vrrp.routers[0]"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "vrrp.routers[2].vips[0]: VIP 198.18.0.1 is also a VIP of vrrp.routers[0]"
            ),
            "{text}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errs = check(
            "vrrp:
  routers:
    - { name: a, vrid: 9, interface: eth0, vips: [198.18.0.1/24], auth_type: PASS }
",
        )
        .unwrap_err();
        assert!(errs.to_string().contains("auth_type"), "{errs}");
    }

    #[test]
    fn advert_interval_bounds_are_the_wire_format() {
        let ok = check("vrrp:\n  routers:\n    - { name: a, vrid: 1, interface: e, vips: [198.18.0.1], advert_interval: 40.95s }\n").unwrap();
        assert_eq!(ok.routers[0].advert_interval_cs, 4095);
        assert!(check("vrrp:\n  routers:\n    - { name: a, vrid: 1, interface: e, vips: [198.18.0.1], advert_interval: 41s }\n").is_err());
        assert!(check("vrrp:\n  routers:\n    - { name: a, vrid: 1, interface: e, vips: [198.18.0.1], advert_interval: 0s }\n").is_err());
    }

    #[test]
    fn the_learned_interval_is_bounded_by_default_and_by_config() {
        let c = check("vrrp:\n  routers:\n    - { name: a, vrid: 1, interface: e, vips: [198.18.0.1], advert_interval: 100ms }\n").unwrap();
        assert_eq!(c.routers[0].max_learned_interval_cs, 30);
        let c = check("vrrp:\n  routers:\n    - { name: a, vrid: 1, interface: e, vips: [198.18.0.1], advert_interval: 100ms, max_learned_interval: 2s }\n").unwrap();
        assert_eq!(c.routers[0].max_learned_interval_cs, 200);
        let e = check("vrrp:\n  routers:\n    - { name: a, vrid: 1, interface: e, vips: [198.18.0.1], advert_interval: 1s, max_learned_interval: 500ms }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_learned_interval"), "{e}");
    }

    #[test]
    fn more_vips_than_one_advert_carries_are_refused() {
        let list = |n: usize, v6: bool| -> String {
            (0..n)
                .map(|i| {
                    if v6 {
                        format!("\"2001:db8::{:x}\"", i + 1)
                    } else {
                        format!("198.18.{}.{}", i / 250, i % 250 + 1)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let yaml = |n, v6| {
            format!(
                "vrrp:\n  routers:\n    - {{ name: a, vrid: 1, interface: e, vips: [{}] }}\n",
                list(n, v6)
            )
        };
        assert!(check(&yaml(255, false)).is_ok());
        let e = check(&yaml(256, false)).unwrap_err().to_string();
        assert!(
            e.contains("256 VIPs; one ipv4 advert carries at most 255"),
            "{e}"
        );
        assert!(check(&yaml(77, true)).is_ok());
        let e = check(&yaml(78, true)).unwrap_err().to_string();
        assert!(
            e.contains("78 VIPs; one ipv6 advert carries at most 77"),
            "{e}"
        );
    }

    #[test]
    fn a_v2_router_with_a_password_validates_like_kubeadms_keepalived_conf() {
        let cfg = check(
            "vrrp:
  routers:
    - name: api
      version: 2
      auth_pass: \"42\"
      vrid: 51
      interface: eth0
      priority: 101
      advert_interval: 3s
      vips: [198.18.0.100/24]
    - { name: plain, version: 2, vrid: 52, interface: eth0, vips: [198.18.0.101/24] }
    - { name: v3, vrid: 53, interface: eth0, vips: [198.18.0.102/24] }
",
        )
        .unwrap();
        let r = &cfg.routers[0];
        assert_eq!(r.version, Version::V2);
        assert_eq!(r.auth, Auth::Pass(*b"42\0\0\0\0\0\0"));
        assert_eq!(r.advert_interval_cs, 300);
        assert_eq!(r.family, Family::V4);
        assert_eq!(cfg.routers[1].auth, Auth::None);
        assert_eq!(cfg.routers[1].advert_interval_cs, 100, "default 1s");
        assert_eq!(cfg.routers[2].version, Version::V3);
    }

    #[test]
    fn v2_and_auth_errors_name_file_line_and_field() {
        let errs = check(
            "vrrp:
  routers:
    - name: a
      vrid: 1
      interface: eth0
      auth_pass: secret
      vips: [198.18.0.1/24]
    - name: b
      version: 2
      vrid: 2
      interface: eth0
      auth_pass: far-too-long
      advert_interval: 1500ms
      vips: [2001:db8::1/64]
    - name: c
      version: 2
      vrid: 3
      interface: eth0
      advert_interval: 256s
      vips: [198.18.0.3/24]
    - { name: d, version: 4, vrid: 4, interface: eth0, vips: [198.18.0.4/24] }
    - { name: e, version: 2, vrid: 5, interface: eth0, auth_pass: \"\", vips: [198.18.0.5/24] }
    - { name: f, version: 2, vrid: 6, interface: eth0, family: ipv6, vips: [198.18.0.6/24] }
",
        )
        .unwrap_err();
        let text = errs.to_string();
        for needle in [
            "lb.yaml:6: vrrp.routers[0].auth_pass: VRRPv3 has no authentication",
            "lb.yaml:12: vrrp.routers[1].auth_pass: is 12 bytes; a VRRPv2 password is 1-8",
            "lb.yaml:13: vrrp.routers[1].advert_interval: 1500ms must be whole seconds",
            "vrrp.routers[1].vips[0]: 2001:db8::1 is IPv6: VRRPv2 (RFC 3768) carries IPv4 addresses only",
            "lb.yaml:19: vrrp.routers[2].advert_interval: 256s must be whole seconds between 1s and 255s",
            "lb.yaml:21: vrrp.routers[3].version: 4 is not a VRRP version (2 or 3)",
            "lb.yaml:22: vrrp.routers[4].auth_pass: is 0 bytes",
            "lb.yaml:23: vrrp.routers[5].family: VRRPv2 (RFC 3768) is IPv4 only",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
