//! `mode: nat` frontends: the kernel carries the traffic. keel-lb writes one nftables table,
//! `inet keel_lb_nat`, and rewrites it whenever a frontend, a pool or a backend's health changes:
//!
//! - a new connection (or UDP flow) to the frontend's address is DNATed to one of the pool's
//!   available backends (`numgen inc` over weighted slots for round_robin, `jhash` of the client
//!   address for maglev: the same client lands on the same backend while the set is unchanged);
//! - its conntrack entry gets a mark bit, and postrouting masquerades marked connections, so the
//!   backend answers this VM (full NAT, as the proxy: backends need no route back to clients);
//! - conntrack holds every established flow to the backend it was given: a backend drained or
//!   taken out of the table keeps its flows, only new ones go elsewhere;
//! - `timeouts.connect`, `timeouts.idle` and `timeouts.udp_session` become a conntrack timeout
//!   policy (`ct timeout`) set on the frontend's new conntrack entries.
//!
//! A frontend with no available backend has no rule: its packets reach the local stack, where no
//! socket listens, and the client gets a TCP reset or an ICMP port unreachable at once.
//! Prior art: Linux Virtual Server's NAT method, kube-proxy's nftables mode.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Protocol;

pub const TABLE: &str = "keel_lb_nat";
/// The conntrack mark bit of connections this table translated (postrouting masquerades those and
/// nothing else, whatever other tables on the host DNAT).
pub const CT_MARK: u32 = 0x4b00;
/// A pool's weights become at most this many slots (each backend keeps at least one).
pub const MAX_SLOTS: u32 = 1024;
/// jhash's seed: every keel-lb uses the same, so equal backend sets hash a client alike.
const HASH_SEED: u32 = 0x6b65_656c;

/// One `mode: nat` frontend as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatFrontend {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    /// Pick by a hash of the client's address (maglev) instead of in turn.
    pub hash_source: bool,
    pub connect: Duration,
    pub idle: Duration,
    pub udp_session: Duration,
    /// The backends that may take new connections, with their weights, in the pool's order.
    pub backends: Vec<(SocketAddr, u32)>,
}

/// The whole table, replaced in one nft transaction (created first so that deleting it cannot
/// fail on a host where it does not exist yet). Used for the first install, which also replaces a
/// table a killed keel-lb left.
pub fn ruleset(fronts: &[NatFrontend]) -> String {
    format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{}",
        body(fronts)
    )
}

/// A change to an installed table, in one transaction: every rule goes (`flush table`) and comes
/// back as `fronts` say; chains no longer used go. The conntrack timeout policies stay: deleting
/// one would reset every flow that uses it to the kernel's default timeouts (five days for an
/// established TCP flow). They are named by what they hold, so a changed policy is a new object,
/// and the flows that started under the old one keep it.
pub fn update(fronts: &[NatFrontend], before: &[NatFrontend]) -> String {
    let mut s = format!(
        "table inet {TABLE} {{}}\nflush table inet {TABLE}\n{}",
        body(fronts)
    );
    let now = chains(fronts);
    for c in chains(before).difference(&now) {
        let _ = writeln!(s, "delete chain inet {TABLE} {c}");
    }
    s
}

/// The chains a version of the table has besides the base chains: a frontend's, and one per
/// backend, for frontends that have backends.
fn chains(fronts: &[NatFrontend]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for (i, f) in fronts.iter().enumerate() {
        if f.backends.is_empty() {
            continue;
        }
        out.insert(format!("f{i}"));
        for j in 0..f.backends.len() {
            out.insert(format!("f{i}_b{j}"));
        }
    }
    out
}

/// A frontend's conntrack timeout policy and the name it goes by (its contents).
fn timeout_policy(f: &NatFrontend) -> (String, String) {
    let l3 = if f.listen.is_ipv4() { "ip" } else { "ip6" };
    match f.protocol {
        Protocol::Tcp => {
            let (c, i) = (secs(f.connect), secs(f.idle));
            (
                format!("tcp_{l3}_{c}_{i}"),
                format!(
                    "protocol tcp\n    l3proto {l3}\n    policy = {{ syn_sent: {c}, syn_recv: {c}, established: {i} }}"
                ),
            )
        }
        Protocol::Udp => {
            let u = secs(f.udp_session);
            (
                format!("udp_{l3}_{u}"),
                format!(
                    "protocol udp\n    l3proto {l3}\n    policy = {{ unreplied: {u}, replied: {u} }}"
                ),
            )
        }
    }
}

/// The table's contents: policies, base chains, a chain per frontend and per backend.
fn body(fronts: &[NatFrontend]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {TABLE} {{");
    let mut declared = std::collections::BTreeSet::new();
    for f in fronts {
        let (name, policy) = timeout_policy(f);
        if declared.insert(name.clone()) {
            let _ = writeln!(s, "  ct timeout {name} {{\n    {policy}\n  }}");
        }
    }
    // After conntrack (-200), which has made the entry this sets the policy of, and before
    // dstnat (-100). At `raw` there is no entry yet and the setting is lost.
    let base = [
        ("timeout_pre", "type filter hook prerouting priority -150"),
        ("timeout_out", "type filter hook output priority -150"),
    ];
    for (chain, hook) in base {
        let _ = writeln!(s, "  chain {chain} {{\n    {hook}; policy accept;");
        for f in fronts {
            let _ = writeln!(
                s,
                "    {} ct timeout set \"{}\"",
                matcher(f),
                timeout_policy(f).0
            );
        }
        let _ = writeln!(s, "  }}");
    }
    for (chain, hook) in [
        ("pre", "type nat hook prerouting priority dstnat"),
        ("out", "type nat hook output priority -100"),
    ] {
        let _ = writeln!(s, "  chain {chain} {{\n    {hook}; policy accept;");
        for (i, f) in fronts.iter().enumerate() {
            if f.backends.is_empty() {
                continue;
            }
            // Only flows that start here: a packet of a connection already under way that
            // conntrack picks up mid-stream (one a proxy listener holds while the mode changes, or
            // another LB's after a failover) is not sent to a backend that never saw its start.
            let syn = match f.protocol {
                Protocol::Tcp => " tcp flags & (syn | ack) == syn",
                Protocol::Udp => "",
            };
            let _ = writeln!(
                s,
                "    {}{syn} jump f{i} comment \"{}\"",
                matcher(f),
                comment(&f.name)
            );
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(
        s,
        "  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ct mark and {CT_MARK:#x} == {CT_MARK:#x} masquerade\n  }}"
    );
    for (i, f) in fronts.iter().enumerate() {
        if f.backends.is_empty() {
            continue;
        }
        let weights: Vec<u32> = f.backends.iter().map(|b| b.1).collect();
        let order = slots(&weights);
        let pick = if f.hash_source {
            let saddr = if f.listen.is_ipv4() { "ip" } else { "ip6" };
            format!(
                "jhash {saddr} saddr mod {} seed {HASH_SEED:#x}",
                order.len()
            )
        } else {
            format!("numgen inc mod {}", order.len())
        };
        let map: Vec<String> = order
            .iter()
            .enumerate()
            .map(|(slot, b)| format!("{slot} : jump f{i}_b{b}"))
            .collect();
        let _ = writeln!(
            s,
            "  chain f{i} {{\n    ct mark set ct mark or {CT_MARK:#x}\n    {pick} vmap {{ {} }}\n  }}",
            map.join(", ")
        );
        let proto = match f.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        for (j, (addr, _)) in f.backends.iter().enumerate() {
            let to = match addr {
                SocketAddr::V4(a) => format!("ip to {}:{}", a.ip(), a.port()),
                SocketAddr::V6(a) => format!("ip6 to [{}]:{}", a.ip(), a.port()),
            };
            // The counter sees a connection's first packet only (nat chains see nothing else):
            // it counts connections given to this backend.
            let _ = writeln!(
                s,
                "  chain f{i}_b{j} {{\n    meta l4proto {proto} counter dnat {to} comment \"{addr}\"\n  }}"
            );
        }
    }
    let _ = writeln!(s, "}}");
    s
}

/// Removes the table (and nothing else); succeeds whether or not it exists.
pub fn removal() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

/// What selects a frontend's packets: its address (any local address when unspecified), protocol
/// and port.
fn matcher(f: &NatFrontend) -> String {
    let proto = match f.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let port = f.listen.port();
    match f.listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            format!("meta nfproto ipv4 fib daddr type local {proto} dport {port}")
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            format!("meta nfproto ipv6 fib daddr type local {proto} dport {port}")
        }
        SocketAddr::V4(a) => format!("ip daddr {} {proto} dport {port}", a.ip()),
        SocketAddr::V6(a) => format!("ip6 daddr {} {proto} dport {port}", a.ip()),
    }
}

/// nft comments are quoted strings of at most 128 bytes: anything else becomes `_`.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ._:/-[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

/// Conntrack timeouts are whole seconds; a sub-second setting rounds up, never to 0.
fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The weighted order of backends over the slots: weights reduced by their greatest common divisor
/// (and scaled to at most [`MAX_SLOTS`]), spread by smooth weighted round robin (nginx's), so
/// consecutive slots alternate rather than run in blocks.
pub fn slots(weights: &[u32]) -> Vec<usize> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0, |g, &w| gcd(g, w.max(1)));
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1) / g)).collect();
    let total: u64 = w.iter().sum();
    if total > u64::from(MAX_SLOTS) {
        for x in &mut w {
            *x = (*x * u64::from(MAX_SLOTS) / total).max(1);
        }
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, c) in current.iter_mut().enumerate() {
            *c += w[i] as i64;
        }
        for i in 1..current.len() {
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The installed table and why it is not what was asked, if it is not.
#[derive(Default)]
pub struct Nat {
    /// The table's contents nft last accepted (None: no table of ours is installed).
    applied: Option<String>,
    /// The last attempt failed: the rules in place are the previous ones (or none).
    error: Option<String>,
    /// Packets from other hosts are not forwarded (ip_forward is off and cannot be set).
    forwarding: Option<String>,
    /// What the last sync asked for.
    fronts: Vec<NatFrontend>,
    /// What the installed table holds (chain `f{i}_b{j}` is `installed[i].backends[j]`).
    installed: Vec<NatFrontend>,
    /// Connections already counted per chain of the installed table (its counters start at 0).
    counted: std::collections::HashMap<(usize, usize), u64>,
    /// A table left by a keel-lb that could not remove it (killed) was looked for.
    swept: bool,
    /// `nft`, once found (looked for again while missing: it may be installed later).
    nft: Option<PathBuf>,
}

/// `/v1/status` `nat`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatStatus {
    /// The rules are installed as the config and health say.
    pub installed: bool,
    /// No rules could be installed yet: keel-lb's proxy serves these frontends meanwhile.
    pub proxied: bool,
    /// Why not, or what else keeps them from working.
    pub error: Option<String>,
    pub frontends: Vec<NatFrontendStatus>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatFrontendStatus {
    pub name: String,
    pub listen: String,
    pub protocol: String,
    /// Where new connections go now: the available backends.
    pub backends: Vec<String>,
}

impl Nat {
    pub fn status(&self) -> Option<NatStatus> {
        (!self.fronts.is_empty() || self.error.is_some()).then(|| NatStatus {
            installed: self.error.is_none() && self.applied.is_some(),
            proxied: self.fallback(),
            error: self.error.clone().or_else(|| self.forwarding.clone()),
            frontends: self
                .fronts
                .iter()
                .map(|f| NatFrontendStatus {
                    name: f.name.clone(),
                    listen: f.listen.to_string(),
                    protocol: match f.protocol {
                        Protocol::Tcp => "tcp",
                        Protocol::Udp => "udp",
                    }
                    .into(),
                    backends: f.backends.iter().map(|(a, _)| a.to_string()).collect(),
                })
                .collect(),
        })
    }

    /// Everything is as the config asks: no nat frontends, or their rules installed with nothing
    /// in the way (`keel_lb_nat_rules_installed`).
    pub fn as_configured(&self) -> bool {
        self.fronts.is_empty()
            || (self.applied.is_some() && self.error.is_none() && self.forwarding.is_none())
    }

    /// `nft`'s path, found once.
    fn nft(&mut self) -> Option<PathBuf> {
        if self.nft.is_none() {
            self.nft = find_nft();
        }
        self.nft.clone()
    }

    /// No rules are in place and none could be installed (nft missing or refusing, forwarding off):
    /// the proxy serves the nat frontends until they can be.
    pub fn fallback(&self) -> bool {
        !self.fronts.is_empty() && self.applied.is_none() && self.error.is_some()
    }

    /// Brings the table to `fronts` (nothing to do when it already is). Returns whether the status
    /// changed.
    pub async fn sync(&mut self, fronts: &[NatFrontend]) -> bool {
        let before = self.status();
        self.fronts = fronts.to_vec();
        if fronts.is_empty() {
            if self.applied.is_some() || self.error.is_some() {
                self.remove().await;
            } else if !self.swept {
                self.swept = true;
                sweep().await;
            }
            self.forwarding = None;
            return before != self.status();
        }
        if self.applied.is_none() {
            // Nothing installed yet: rules that other hosts' packets cannot pass would take the
            // frontends from the proxy for nothing, so without forwarding the proxy keeps them.
            if let Some(f) = ensure_forwarding(fronts) {
                if self.error.as_deref() != Some(f.as_str()) {
                    tracing::error!(error = %f, "nat: rules not installed; the proxy serves the mode: nat frontends meanwhile (checked every second)");
                }
                self.error = Some(f);
                return before != self.status();
            }
        } else {
            // Turned off after the rules went in: said, the rules stay.
            self.forwarding = ensure_forwarding(fronts);
        }
        let want = body(fronts);
        if self.applied.as_deref() == Some(want.as_str()) && self.error.is_none() {
            return before != self.status();
        }
        let script = match self.applied {
            None => ruleset(fronts),
            Some(_) => update(fronts, &self.installed),
        };
        let r = match self.nft() {
            Some(nft) => crate::nft::run(&nft, &script).await,
            None => Err("nft not found (install nftables)".to_string()),
        };
        match r {
            Ok(()) => {
                if self.error.take().is_some() {
                    tracing::info!("nat: rules installed");
                }
                self.applied = Some(want);
                self.installed = fronts.to_vec();
                self.counted.clear();
            }
            Err(e) => {
                if self.error.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "nat: cannot install the rules (retried every second); the previous ones stay, or, if there are none, the proxy serves the mode: nat frontends");
                }
                self.error = Some(e);
            }
        }
        if let Some(f) = &self.forwarding {
            if before.as_ref().and_then(|s| s.error.as_ref()) != Some(f) && self.error.is_none() {
                tracing::error!(error = %f, "nat");
            }
        }
        before != self.status()
    }

    /// New connections per (frontend, backend) since the last call, from the installed table's
    /// counters.
    pub async fn new_connections(&mut self) -> Vec<(String, SocketAddr, u64)> {
        if self.applied.is_none() {
            return Vec::new();
        }
        let Some(nft) = self.nft() else {
            return Vec::new();
        };
        let json = match crate::nft::output(&nft, &["-j", "list", "table", "inet", TABLE]).await {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(error = %e, "nat: reading the counters");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for ((i, j), packets) in counters(&json) {
            let Some((addr, _)) = self.installed.get(i).and_then(|f| f.backends.get(j)) else {
                continue;
            };
            let before = self.counted.insert((i, j), packets).unwrap_or(0);
            if packets > before {
                out.push((self.installed[i].name.clone(), *addr, packets - before));
            }
        }
        out
    }

    /// Removes the table (at exit, or when no frontend is `mode: nat` any more).
    pub async fn remove(&mut self) {
        self.fronts.clear();
        self.installed.clear();
        self.error = None;
        if self.applied.take().is_none() {
            return;
        }
        let Some(nft) = self.nft() else {
            return;
        };
        match crate::nft::run(&nft, &removal()).await {
            Ok(()) => tracing::info!("nat: rules removed"),
            Err(e) => tracing::error!(error = %e, "nat: removing the rules"),
        }
    }
}

/// The backend chains' counters in `nft -j list table` output: (frontend index, backend index) →
/// packets (a nat chain sees the first packet of each connection only).
fn counters(json: &str) -> Vec<((usize, usize), u64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let Some(items) = v["nftables"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|it| {
            let rule = it.get("rule")?;
            let (f, b) = rule["chain"]
                .as_str()?
                .strip_prefix('f')?
                .split_once("_b")?;
            let key = (f.parse().ok()?, b.parse().ok()?);
            let packets = rule["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())?;
            Some((key, packets))
        })
        .collect()
}

/// Removes a table a killed keel-lb left behind (it would forward to backends nobody checks any
/// more), where nft is installed and this keel-lb may run it; quiet otherwise.
async fn sweep() {
    let Some(nft) = find_nft() else {
        return;
    };
    let Ok(tables) = crate::nft::output(&nft, &["list", "tables", "inet"]).await else {
        return;
    };
    if !tables
        .lines()
        .any(|l| l.trim() == format!("table inet {TABLE}"))
    {
        return;
    }
    match crate::nft::run(&nft, &removal()).await {
        Ok(()) => tracing::warn!(
            "nat: removed a {TABLE} table left by an earlier keel-lb; no frontend is mode: nat"
        ),
        Err(e) => {
            tracing::error!(error = %e, "nat: a {TABLE} table left by an earlier keel-lb could not be removed")
        }
    }
}

fn find_nft() -> Option<PathBuf> {
    crate::nft::find(Path::new("nft"))
}

/// Packets from other hosts reach a backend only if this host forwards: turned on here when it
/// is off (a NAT load balancer is a router; IPVS asks the same), and the reason when it cannot be.
fn ensure_forwarding(fronts: &[NatFrontend]) -> Option<String> {
    let mut problems = Vec::new();
    for (v4, file, name) in [
        (true, "/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
        (
            false,
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        ),
    ] {
        // Frontends on loopback only serve this host: nothing to forward.
        if !fronts
            .iter()
            .any(|f| f.listen.is_ipv4() == v4 && !f.listen.ip().is_loopback())
        {
            continue;
        }
        match std::fs::read_to_string(file) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => match std::fs::write(file, "1\n") {
                Ok(()) => tracing::info!("nat: turned {name} on (mode: nat frontends forward)"),
                Err(e) => problems.push(format!(
                    "{name} is 0 and cannot be set ({e}): packets from other hosts to mode: nat frontends are dropped; set {name} = 1 in /etc/sysctl.d"
                )),
            },
            Err(e) => problems.push(format!("{file}: {e}")),
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(listen: &str, protocol: Protocol, backends: &[(&str, u32)]) -> NatFrontend {
        NatFrontend {
            name: "web \"x\"".into(),
            listen: listen.parse().unwrap(),
            protocol,
            hash_source: false,
            connect: Duration::from_millis(2500),
            idle: Duration::from_secs(3600),
            udp_session: Duration::from_secs(60),
            backends: backends
                .iter()
                .map(|(a, w)| (a.parse().unwrap(), *w))
                .collect(),
        }
    }

    #[test]
    fn weights_become_interleaved_slots() {
        assert_eq!(slots(&[]), Vec::<usize>::new());
        assert_eq!(slots(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(slots(&[2, 1]), vec![0, 1, 0]);
        // Reduced by the gcd: 200:100 is 2:1.
        assert_eq!(slots(&[200, 100]), vec![0, 1, 0]);
        let s = slots(&[5, 1]);
        assert_eq!(s.len(), 6);
        assert_eq!(s.iter().filter(|&&b| b == 1).count(), 1);
        // Never more than MAX_SLOTS, and every backend keeps a slot.
        let many: Vec<u32> = (0..1000).map(|i| if i == 0 { 256 } else { 255 }).collect();
        let s = slots(&many);
        assert!(s.len() <= MAX_SLOTS as usize + many.len(), "{}", s.len());
        for b in 0..many.len() {
            assert!(s.contains(&b), "backend {b} has no slot");
        }
    }

    #[test]
    fn the_ruleset_dnats_new_flows_and_masquerades_only_its_own() {
        let f = [
            fe(
                "198.18.0.10:80",
                Protocol::Tcp,
                &[("198.18.1.2:8080", 2), ("198.18.1.3:8080", 1)],
            ),
            fe(
                "[2001:db8::10]:53",
                Protocol::Udp,
                &[("[2001:db8::2]:53", 1)],
            ),
            fe("0.0.0.0:443", Protocol::Tcp, &[]),
        ];
        let s = ruleset(&f);
        assert!(s.starts_with("table inet keel_lb_nat {}\ndelete table inet keel_lb_nat\n"));
        assert!(
            s.contains("policy = { syn_sent: 3, syn_recv: 3, established: 3600 }"),
            "{s}"
        );
        assert!(s.contains("ct timeout tcp_ip_3_3600 {"), "{s}");
        assert!(s.contains("ct timeout udp_ip6_60 {"), "{s}");
        assert!(s.contains("policy = { unreplied: 60, replied: 60 }"), "{s}");
        // Two frontends with the same policy share it.
        assert_eq!(s.matches("ct timeout tcp_ip_3_3600 {").count(), 1, "{s}");
        assert!(s.contains("ip daddr 198.18.0.10 tcp dport 80 ct timeout set \"tcp_ip_3_3600\""));
        assert!(s.contains(
            "ip daddr 198.18.0.10 tcp dport 80 tcp flags & (syn | ack) == syn jump f0 comment \"web _x_\""
        ));
        assert!(
            s.contains("numgen inc mod 3 vmap { 0 : jump f0_b0, 1 : jump f0_b1, 2 : jump f0_b0 }")
        );
        assert!(s.contains("meta l4proto tcp counter dnat ip to 198.18.1.2:8080"));
        assert!(
            s.contains("ip6 daddr 2001:db8::10 udp dport 53 jump f1"),
            "{s}"
        );
        assert!(s.contains("meta l4proto udp counter dnat ip6 to [2001:db8::2]:53"));
        // No backend: no jump (the local stack answers with a reset), but the timeout stays.
        assert!(!s.contains("jump f2 "), "{s}");
        assert!(s.contains(
            "meta nfproto ipv4 fib daddr type local tcp dport 443 ct timeout set \"tcp_ip_3_3600\""
        ));
        assert!(s.contains("ct mark and 0x4b00 == 0x4b00 masquerade"));
        let mut h = f[0].clone();
        h.hash_source = true;
        assert!(ruleset(&[h]).contains("jhash ip saddr mod 3 seed 0x6b65656c vmap"));
    }

    /// A change keeps the timeout policies (deleting one resets the flows using it to the
    /// kernel's defaults) and removes the chains no longer used.
    #[test]
    fn an_update_flushes_rules_keeps_policies_and_drops_unused_chains() {
        let two = fe(
            "198.18.0.10:80",
            Protocol::Tcp,
            &[("198.18.1.2:8080", 1), ("198.18.1.3:8080", 1)],
        );
        let mut one = two.clone();
        one.backends.truncate(1);
        let u = update(&[one.clone()], std::slice::from_ref(&two));
        assert!(
            u.starts_with("table inet keel_lb_nat {}\nflush table inet keel_lb_nat\n"),
            "{u}"
        );
        assert!(!u.contains("delete table"), "{u}");
        assert!(u.contains("ct timeout tcp_ip_3_3600 {"), "{u}");
        assert!(u.ends_with("delete chain inet keel_lb_nat f0_b1\n"), "{u}");
        let mut none = one.clone();
        none.backends.clear();
        let u = update(&[none], &[one]);
        assert!(u.contains("delete chain inet keel_lb_nat f0\n"), "{u}");
        assert!(u.contains("delete chain inet keel_lb_nat f0_b0\n"), "{u}");
        assert!(
            !update(std::slice::from_ref(&two), std::slice::from_ref(&two))
                .contains("delete chain")
        );
    }

    #[test]
    fn counters_are_read_from_nfts_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "inet", "name": "keel_lb_nat", "handle": 1}},
          {"rule": {"family": "inet", "table": "keel_lb_nat", "chain": "pre", "handle": 9,
            "expr": [{"jump": {"target": "f0"}}]}},
          {"rule": {"family": "inet", "table": "keel_lb_nat", "chain": "f0_b1", "handle": 12,
            "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                     {"counter": {"packets": 7, "bytes": 420}}, {"dnat": {"family": "ip", "addr": "198.18.1.3", "port": 8080}}]}},
          {"rule": {"family": "inet", "table": "keel_lb_nat", "chain": "f2_b0", "handle": 14,
            "expr": [{"counter": {"packets": 0, "bytes": 0}}]}}]}"#;
        assert_eq!(counters(json), vec![((0, 1), 7), ((2, 0), 0)]);
        assert!(counters("not json").is_empty());
        assert!(counters("{}").is_empty());
    }

    /// The script as nft itself reads it (`nft -c`: checked against the kernel, nothing changed).
    #[test]
    fn nft_accepts_the_ruleset() {
        let f = [
            fe(
                "198.18.0.10:80",
                Protocol::Tcp,
                &[("198.18.1.2:8080", 2), ("198.18.1.3:8080", 1)],
            ),
            fe("[::]:53", Protocol::Udp, &[("[2001:db8::2]:53", 1)]),
        ];
        let mut h = f[0].clone();
        h.hash_source = true;
        h.listen = "198.18.0.11:80".parse().unwrap();
        let all = [f[0].clone(), f[1].clone(), h];
        crate::nft::assert_accepted(&ruleset(&all));
        // An update is checked after the install it changes (one transaction: nft -c changes
        // nothing, so the chains it deletes must exist in the same script).
        crate::nft::assert_accepted(&(ruleset(&all) + &update(&f[..1], &all)));
    }
}
