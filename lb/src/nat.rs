//! `mode: nat` frontends: the kernel carries the traffic. keel-lb writes one nftables table,
//! `inet keel_lb_nat`, and rewrites it whenever a frontend, a pool or a backend's health changes:
//!
//! - a new connection (or UDP flow) to the frontend's address is DNATed to one of the pool's
//!   available backends (`numgen inc` over weighted slots for round_robin, `jhash` of the client
//!   address for maglev: the same client lands on the same backend while the set is unchanged);
//! - its conntrack entry gets the mark of its (frontend, backend) pair, and postrouting masquerades
//!   marked connections, so the backend answers this VM (full NAT, as the proxy: backends need no
//!   route back to clients);
//! - conntrack holds every established flow to the backend it was given: a TCP backend drained or
//!   taken out of the table keeps its flows, only new ones go elsewhere. Where the proxy would move
//!   or cut them, the pair's conntrack entries are deleted by mark (`crate::conntrack`): a UDP
//!   backend's flows as soon as it is down, drained or removed (their next datagram is a new flow,
//!   sent to an available backend; kube-proxy deletes UDP entries for the same reason), a TCP
//!   backend's once it has been down for the pool's `shutdown_sessions_on_down`;
//! - `timeouts.connect`, `timeouts.idle` and `timeouts.udp_session` become a conntrack timeout
//!   policy (`ct timeout`) set on the frontend's new conntrack entries.
//!
//! A frontend with no available backend has no rule: its packets reach the local stack, where no
//! socket listens, and the client gets a TCP reset or an ICMP port unreachable at once.
//! Prior art: Linux Virtual Server's NAT method, kube-proxy's nftables mode.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Protocol;

pub const TABLE: &str = "keel_lb_nat";
/// The conntrack mark bits this table owns. A flow it translated carries its (frontend, backend)
/// pair's id there (never 0): postrouting masquerades those flows and nothing else (whatever other
/// tables on the host DNAT), and one pair's flows can be deleted at once. The low 16 bits are left
/// to others.
pub const MARK_MASK: u32 = 0xffff_0000;
const MARK_SHIFT: u32 = 16;
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
    /// The pool's other backends, and whether health checks mark them down (else drained or
    /// disabled).
    pub unavailable: Vec<(SocketAddr, bool)>,
    /// TCP: cut the flows of a backend down this long (the pool's `shutdown_sessions_on_down`).
    pub cut_down_after: Option<Duration>,
}

/// A (frontend, backend) pair: what a conntrack mark stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pair {
    pub frontend: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    pub backend: SocketAddr,
}

impl NatFrontend {
    fn pair(&self, backend: SocketAddr) -> Pair {
        Pair {
            frontend: self.name.clone(),
            listen: self.listen,
            protocol: self.protocol,
            backend,
        }
    }
}

/// The marks of the configured pairs. An id stays with its pair while the pair is configured, and
/// ids are handed out in turn, so a freed one comes back only after all others were used: the
/// flows a removed pair left (TCP keeps them) are not cut with a new pair's for a long while.
#[derive(Debug, Default)]
pub struct Marks {
    ids: HashMap<Pair, u16>,
    last: u16,
    full_said: bool,
}

/// Shared by every pair once all 65,535 ids are taken: cutting one then cuts them all.
const OVERFLOW_ID: u16 = u16::MAX;

impl Marks {
    /// The pair each mark stands for (the shared overflow id stands for none).
    fn pairs(&self) -> HashMap<u32, &Pair> {
        self.ids
            .iter()
            .filter(|(_, &id)| id != OVERFLOW_ID)
            .map(|(p, &id)| (u32::from(id) << MARK_SHIFT, p))
            .collect()
    }

    /// The conntrack mark of a pair (0 for one not assigned: not translated).
    pub fn mark(&self, p: &Pair) -> u32 {
        self.ids.get(p).map_or(0, |&id| u32::from(id) << MARK_SHIFT)
    }

    /// Gives every pair of `fronts` an id (those that have one keep it) and forgets the others;
    /// returns the forgotten pairs with their marks.
    fn assign(&mut self, fronts: &[NatFrontend]) -> Vec<(Pair, u32)> {
        let mut want: Vec<Pair> = Vec::new();
        for f in fronts {
            want.extend(f.backends.iter().map(|b| f.pair(b.0)));
            want.extend(f.unavailable.iter().map(|b| f.pair(b.0)));
        }
        let keep: std::collections::HashSet<&Pair> = want.iter().collect();
        let gone: Vec<(Pair, u32)> = self
            .ids
            .keys()
            .filter(|p| !keep.contains(p))
            .map(|p| (p.clone(), self.mark(p)))
            .collect();
        for (p, _) in &gone {
            self.ids.remove(p);
        }
        let mut taken: std::collections::HashSet<u16> = self.ids.values().copied().collect();
        for p in want {
            if self.ids.contains_key(&p) {
                continue;
            }
            let id = self.free_id(&taken);
            taken.insert(id);
            self.ids.insert(p, id);
        }
        gone
    }

    fn free_id(&mut self, taken: &std::collections::HashSet<u16>) -> u16 {
        for step in 0..u32::from(OVERFLOW_ID - 1) {
            // 1..=65534 in turn, starting after the last one given.
            let id = ((u32::from(self.last) + step) % u32::from(OVERFLOW_ID - 1) + 1) as u16;
            if !taken.contains(&id) {
                self.last = id;
                return id;
            }
        }
        if !self.full_said {
            self.full_said = true;
            tracing::warn!("nat: more than 65,534 (frontend, backend) pairs: the rest share one conntrack mark, and cutting one's flows cuts all of theirs");
        }
        OVERFLOW_ID
    }
}

/// What a pair's flows went through since the last pass.
#[derive(Debug, Default, Clone)]
struct PairState {
    /// It could take new flows at the last pass.
    available: bool,
    /// Health checks mark it down since then (TCP with a grace only).
    down_since: Option<Instant>,
    /// Its flows were cut in this down span.
    cut: bool,
}

/// Which pairs' flows to delete now (conntrack marks), and the state for the next pass. Pure:
/// `now` is given.
fn cuts(
    fronts: &[NatFrontend],
    gone: &[(Pair, u32)],
    marks: &Marks,
    states: &mut HashMap<Pair, PairState>,
    now: Instant,
) -> Vec<(Pair, u32)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in fronts {
        for (addr, _) in &f.backends {
            let p = f.pair(*addr);
            states.insert(
                p.clone(),
                PairState {
                    available: true,
                    ..PairState::default()
                },
            );
            seen.insert(p);
        }
        for &(addr, down) in &f.unavailable {
            let p = f.pair(addr);
            let st = states.entry(p.clone()).or_default();
            match f.protocol {
                // As the proxy: a session's next datagram goes to another backend.
                Protocol::Udp => {
                    if st.available {
                        out.push((p.clone(), marks.mark(&p)));
                    }
                }
                Protocol::Tcp => match (down, f.cut_down_after) {
                    (true, Some(grace)) => {
                        let since = *st.down_since.get_or_insert(now);
                        if !st.cut && now.saturating_duration_since(since) >= grace {
                            st.cut = true;
                            out.push((p.clone(), marks.mark(&p)));
                        }
                    }
                    _ => {
                        st.down_since = None;
                        st.cut = false;
                    }
                },
            }
            st.available = false;
            seen.insert(p);
        }
    }
    // Taken out of the config: a UDP session moves (as a drained backend's); TCP flows stay.
    for (p, mark) in gone {
        if let Some(st) = states.get(p) {
            if p.protocol == Protocol::Udp && st.available {
                out.push((p.clone(), *mark));
            }
        }
    }
    states.retain(|p, _| seen.contains(p));
    out
}

/// The whole table, replaced in one nft transaction (created first so that deleting it cannot
/// fail on a host where it does not exist yet). Used for the first install, which also replaces a
/// table a killed keel-lb left.
pub fn ruleset(fronts: &[NatFrontend], marks: &Marks) -> String {
    format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{}",
        body(fronts, marks)
    )
}

/// A change to an installed table, in one transaction: every rule goes (`flush table`) and comes
/// back as `fronts` say; chains no longer used go. The conntrack timeout policies stay: deleting
/// one would reset every flow that uses it to the kernel's default timeouts (five days for an
/// established TCP flow). They are named by what they hold, so a changed policy is a new object,
/// and the flows that started under the old one keep it.
pub fn update(fronts: &[NatFrontend], before: &[NatFrontend], marks: &Marks) -> String {
    let mut s = format!(
        "table inet {TABLE} {{}}\nflush table inet {TABLE}\n{}",
        body(fronts, marks)
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
fn body(fronts: &[NatFrontend], marks: &Marks) -> String {
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
        "  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ct mark and {MARK_MASK:#x} != 0 masquerade\n  }}"
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
            "  chain f{i} {{\n    {pick} vmap {{ {} }}\n  }}",
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
            let mark = marks.mark(&f.pair(*addr));
            let _ = writeln!(
                s,
                "  chain f{i}_b{j} {{\n    meta l4proto {proto} ct mark set ct mark and {:#x} or {mark:#x} counter dnat {to} comment \"{addr}\"\n  }}",
                !MARK_MASK
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
    /// The conntrack mark of each configured (frontend, backend) pair.
    marks: Marks,
    /// What each configured pair went through, for [`cuts`].
    states: HashMap<Pair, PairState>,
    /// Cuts that failed, tried again at the next sync (with the attempts so far).
    retry: Vec<(Pair, u32, u32)>,
    /// Why the last cut failed, until one succeeds.
    cut_error: Option<String>,
    /// Pairs whose flows were cut since [`Nat::take_cuts`] last ran.
    cut_done: Vec<Pair>,
    /// Open flows per configured pair, at the last count (`Nat::count_flows`).
    flows: HashMap<Pair, u64>,
    /// When flows were last counted.
    counted_at: Option<Instant>,
}

/// Open flows are counted (one dump of the conntrack table) at most this often.
const FLOW_COUNT_EVERY: Duration = Duration::from_secs(5);

/// A failed cut is tried again at each sync (every second) this many times, then given up (said).
const CUT_ATTEMPTS: u32 = 60;

/// A frontend's open flows as the status page and `keel-lb status` show them: `backend: n, ...`,
/// `-` before the first count.
pub fn flows_text(flows: &std::collections::BTreeMap<String, u64>) -> String {
    if flows.is_empty() {
        return "-".into();
    }
    flows
        .iter()
        .map(|(b, n)| format!("{b}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
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
    /// Open flows per configured backend (drained and down ones too), counted every 5 seconds;
    /// empty until the first count.
    #[serde(default)]
    pub flows: std::collections::BTreeMap<String, u64>,
}

impl Nat {
    pub fn status(&self) -> Option<NatStatus> {
        (!self.fronts.is_empty() || self.error.is_some()).then(|| NatStatus {
            installed: self.error.is_none() && self.applied.is_some(),
            proxied: self.fallback(),
            error: self
                .error
                .clone()
                .or_else(|| self.forwarding.clone())
                .or_else(|| self.cut_error.clone()),
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
                    flows: f
                        .backends
                        .iter()
                        .map(|b| b.0)
                        .chain(f.unavailable.iter().map(|b| b.0))
                        .filter_map(|a| Some((a.to_string(), *self.flows.get(&f.pair(a))?)))
                        .collect(),
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

    /// Brings the table to `fronts` (nothing to do when it already is), then cuts the flows that
    /// the proxy would have moved or cut (see the module's doc). Returns whether the status changed.
    pub async fn sync(&mut self, fronts: &[NatFrontend]) -> bool {
        let before = self.status();
        let gone = self.marks.assign(fronts);
        self.sync_rules(fronts, before.as_ref()).await;
        self.cut_flows(fronts, &gone).await;
        before != self.status()
    }

    /// Counts the open flows of every configured pair (one conntrack dump, at most every
    /// [`FLOW_COUNT_EVERY`]); returns the counts when it did (`keel_lb_nat_open_flows`), None when
    /// it was not time or there is nothing to count. A failed count is logged at debug level and
    /// leaves the last one: flows are a view, not something the rules depend on.
    pub async fn count_flows(&mut self) -> Option<Vec<(Pair, u64)>> {
        if self.fronts.is_empty() || self.applied.is_none() {
            // Said once, so that the series of the last count go too.
            let had = !self.flows.is_empty();
            self.flows.clear();
            return had.then(Vec::new);
        }
        let now = Instant::now();
        if self
            .counted_at
            .is_some_and(|t| now.saturating_duration_since(t) < FLOW_COUNT_EVERY)
        {
            return None;
        }
        self.counted_at = Some(now);
        let by_mark =
            tokio::task::spawn_blocking(|| crate::conntrack::open_flows_by_mark(MARK_MASK))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
        let by_mark = match by_mark {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "nat: counting open flows");
                return None;
            }
        };
        let mut flows: HashMap<Pair, u64> = HashMap::new();
        for f in &self.fronts {
            for a in f
                .backends
                .iter()
                .map(|b| b.0)
                .chain(f.unavailable.iter().map(|b| b.0))
            {
                flows.insert(f.pair(a), 0);
            }
        }
        let pairs = self.marks.pairs();
        for (mark, n) in by_mark {
            if let Some(p) = pairs.get(&mark).copied() {
                if let Some(v) = flows.get_mut(p) {
                    *v += n;
                }
            }
        }
        self.flows = flows;
        Some(self.flows.iter().map(|(p, n)| (p.clone(), *n)).collect())
    }

    /// The pairs whose flows were cut since the last call (`keel_lb_nat_flows_cut_total`).
    pub fn take_cuts(&mut self) -> Vec<Pair> {
        std::mem::take(&mut self.cut_done)
    }

    /// Deletes the conntrack entries of the pairs [`cuts`] names, and of earlier failed cuts.
    async fn cut_flows(&mut self, fronts: &[NatFrontend], gone: &[(Pair, u32)]) {
        let mut todo: Vec<(Pair, u32, u32)> =
            cuts(fronts, gone, &self.marks, &mut self.states, Instant::now())
                .into_iter()
                .map(|(p, m)| (p, m, 0))
                .collect();
        for (p, m, n) in std::mem::take(&mut self.retry) {
            // Not when it takes new flows again: they would be cut too.
            let available = self.states.get(&p).is_some_and(|s| s.available);
            if !available && !todo.iter().any(|t| t.0 == p) {
                todo.push((p, m, n));
            }
        }
        // Mark 0 is every flow this table did not translate: never cut.
        todo.retain(|t| t.1 != 0);
        if todo.is_empty() {
            self.cut_error = None;
            return;
        }
        let marks: Vec<u32> = todo.iter().map(|t| t.1).collect();
        let done = tokio::task::spawn_blocking(move || {
            marks
                .into_iter()
                .map(|m| crate::conntrack::delete_marked(m, MARK_MASK).map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| vec![Err(e.to_string()); todo.len()]);
        let mut error = None;
        for ((p, m, n), r) in todo.into_iter().zip(done) {
            match r {
                Ok(()) => {
                    tracing::info!(frontend = %p.frontend, backend = %p.backend, protocol = ?p.protocol, "nat: flows to the backend ended (conntrack entries deleted)");
                    self.cut_done.push(p);
                }
                Err(e) if n + 1 < CUT_ATTEMPTS => {
                    error = Some(format!("cannot end the flows of backends taken out: {e}"));
                    self.retry.push((p, m, n + 1));
                }
                Err(e) => {
                    tracing::error!(frontend = %p.frontend, backend = %p.backend, error = %e, "nat: gave up ending the backend's flows; they end when idle");
                    error = Some(format!("cannot end the flows of backends taken out: {e}"));
                }
            }
        }
        if error != self.cut_error {
            match &error {
                Some(e) => {
                    tracing::error!(error = %e, "nat: flows stay on backends the proxy would have taken them from (tried again every second)")
                }
                None => tracing::info!("nat: ending flows works again"),
            }
        }
        self.cut_error = error;
    }

    /// Brings the table to `fronts` (nothing to do when it already is).
    async fn sync_rules(&mut self, fronts: &[NatFrontend], before: Option<&NatStatus>) {
        self.fronts = fronts.to_vec();
        if fronts.is_empty() {
            if self.applied.is_some() || self.error.is_some() {
                self.remove().await;
            } else if !self.swept {
                self.swept = true;
                sweep().await;
            }
            self.forwarding = None;
            return;
        }
        if self.applied.is_none() {
            // Nothing installed yet: rules that other hosts' packets cannot pass would take the
            // frontends from the proxy for nothing, so without forwarding the proxy keeps them.
            if let Some(f) = ensure_forwarding(fronts) {
                if self.error.as_deref() != Some(f.as_str()) {
                    tracing::error!(error = %f, "nat: rules not installed; the proxy serves the mode: nat frontends meanwhile (checked every second)");
                }
                self.error = Some(f);
                return;
            }
        } else {
            // Turned off after the rules went in: said, the rules stay.
            self.forwarding = ensure_forwarding(fronts);
        }
        let want = body(fronts, &self.marks);
        if self.applied.as_deref() == Some(want.as_str()) && self.error.is_none() {
            return;
        }
        let script = match self.applied {
            None => ruleset(fronts, &self.marks),
            Some(_) => update(fronts, &self.installed, &self.marks),
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
            if before.and_then(|s| s.error.as_ref()) != Some(f) && self.error.is_none() {
                tracing::error!(error = %f, "nat");
            }
        }
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
            unavailable: Vec::new(),
            cut_down_after: None,
        }
    }

    fn marked(fronts: &[NatFrontend]) -> Marks {
        let mut m = Marks::default();
        m.assign(fronts);
        m
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
        let s = ruleset(&f, &marked(&f));
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
        // Each pair has a mark of its own in the upper 16 bits; the lower ones are left alone.
        assert!(
            s.contains("meta l4proto tcp ct mark set ct mark and 0xffff or 0x10000 counter dnat ip to 198.18.1.2:8080"),
            "{s}"
        );
        assert!(s.contains(
            "ct mark set ct mark and 0xffff or 0x20000 counter dnat ip to 198.18.1.3:8080"
        ));
        assert!(
            s.contains("ip6 daddr 2001:db8::10 udp dport 53 jump f1"),
            "{s}"
        );
        assert!(s.contains("ct mark and 0xffff or 0x30000 counter dnat ip6 to [2001:db8::2]:53"));
        // No backend: no jump (the local stack answers with a reset), but the timeout stays.
        assert!(!s.contains("jump f2 "), "{s}");
        assert!(s.contains(
            "meta nfproto ipv4 fib daddr type local tcp dport 443 ct timeout set \"tcp_ip_3_3600\""
        ));
        assert!(s.contains("ct mark and 0xffff0000 != 0 masquerade"));
        let mut h = f[0].clone();
        h.hash_source = true;
        assert!(ruleset(&[h.clone()], &marked(&[h]))
            .contains("jhash ip saddr mod 3 seed 0x6b65656c vmap"));
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
        let m = marked(std::slice::from_ref(&two));
        let u = update(&[one.clone()], std::slice::from_ref(&two), &m);
        assert!(
            u.starts_with("table inet keel_lb_nat {}\nflush table inet keel_lb_nat\n"),
            "{u}"
        );
        assert!(!u.contains("delete table"), "{u}");
        assert!(u.contains("ct timeout tcp_ip_3_3600 {"), "{u}");
        assert!(u.ends_with("delete chain inet keel_lb_nat f0_b1\n"), "{u}");
        let mut none = one.clone();
        none.backends.clear();
        let u = update(&[none], &[one], &m);
        assert!(u.contains("delete chain inet keel_lb_nat f0\n"), "{u}");
        assert!(u.contains("delete chain inet keel_lb_nat f0_b0\n"), "{u}");
        assert!(
            !update(std::slice::from_ref(&two), std::slice::from_ref(&two), &m)
                .contains("delete chain")
        );
    }

    #[test]
    fn marks_stay_with_their_pairs_and_come_back_last() {
        let a = fe(
            "198.18.0.10:80",
            Protocol::Tcp,
            &[("198.18.1.2:8080", 1), ("198.18.1.3:8080", 1)],
        );
        let mut m = Marks::default();
        assert!(m.assign(std::slice::from_ref(&a)).is_empty());
        let (p2, p3) = (a.pair(a.backends[0].0), a.pair(a.backends[1].0));
        assert_eq!((m.mark(&p2), m.mark(&p3)), (0x1_0000, 0x2_0000));
        // The first backend is drained: still configured, same mark.
        let mut drained = a.clone();
        let first = drained.backends.remove(0);
        drained.unavailable.push((first.0, false));
        assert!(m.assign(std::slice::from_ref(&drained)).is_empty());
        assert_eq!(m.mark(&p2), 0x1_0000);
        // Removed: its mark is returned, and a new pair does not get it back at once.
        let mut one = a.clone();
        one.backends.remove(0);
        one.backends.push(("198.18.1.4:8080".parse().unwrap(), 1));
        assert_eq!(
            m.assign(std::slice::from_ref(&one)),
            vec![(p2.clone(), 0x1_0000)]
        );
        assert_eq!(m.mark(&p2), 0);
        assert_eq!(m.mark(&one.pair(one.backends[1].0)), 0x3_0000);
        assert_eq!(m.mark(&p3), 0x2_0000);
        // Another frontend on the same backend is another pair.
        let mut other = a.clone();
        other.name = "other".into();
        assert_ne!(other.pair(a.backends[1].0), p3);
    }

    #[test]
    fn ids_wrap_around_and_skip_the_taken() {
        let mut m = Marks {
            last: OVERFLOW_ID - 2,
            ..Marks::default()
        };
        let taken = [1u16, 2].into_iter().collect();
        assert_eq!(m.free_id(&taken), OVERFLOW_ID - 1);
        assert_eq!(m.free_id(&taken), 3);
        let all = (1..OVERFLOW_ID).collect();
        assert_eq!(m.free_id(&all), OVERFLOW_ID);
    }

    /// UDP flows leave a backend that is down, drained or removed at once; TCP flows only once
    /// their backend has been down for the grace, once per down span, and only when asked.
    #[test]
    fn cuts_follow_the_proxys_rules() {
        let t0 = Instant::now();
        let b: SocketAddr = "198.18.1.2:53".parse().unwrap();
        let c: SocketAddr = "198.18.1.3:53".parse().unwrap();
        let udp = fe(
            "198.18.0.10:53",
            Protocol::Udp,
            &[("198.18.1.2:53", 1), ("198.18.1.3:53", 1)],
        );
        let mut tcp = fe("198.18.0.10:80", Protocol::Tcp, &[("198.18.1.2:53", 1)]);
        tcp.cut_down_after = Some(Duration::from_secs(5));
        let (mut m, mut st) = (Marks::default(), HashMap::new());
        let mut pass = |fronts: &[NatFrontend], t: Instant| {
            let gone = m.assign(fronts);
            let mut out: Vec<(String, SocketAddr)> = cuts(fronts, &gone, &m, &mut st, t)
                .into_iter()
                .map(|(p, mark)| {
                    assert_ne!(mark, 0);
                    (
                        p.frontend.clone()
                            + if p.protocol == Protocol::Udp {
                                "/udp"
                            } else {
                                "/tcp"
                            },
                        p.backend,
                    )
                })
                .collect();
            out.sort();
            out
        };
        assert!(pass(&[udp.clone(), tcp.clone()], t0).is_empty());
        // b goes down everywhere.
        let mut udp_down = udp.clone();
        udp_down.backends.remove(0);
        udp_down.unavailable.push((b, true));
        let mut tcp_down = tcp.clone();
        tcp_down.backends.clear();
        tcp_down.unavailable.push((b, true));
        let name = udp.name.clone();
        assert_eq!(
            pass(&[udp_down.clone(), tcp_down.clone()], t0),
            vec![(name.clone() + "/udp", b)]
        );
        // Still down: UDP is not cut again; TCP waits for the grace, then is cut once.
        let s = Duration::from_secs(1);
        assert!(pass(&[udp_down.clone(), tcp_down.clone()], t0 + 4 * s).is_empty());
        assert_eq!(
            pass(&[udp_down.clone(), tcp_down.clone()], t0 + 5 * s),
            vec![(name.clone() + "/tcp", b)]
        );
        assert!(pass(&[udp_down.clone(), tcp_down.clone()], t0 + 9 * s).is_empty());
        // Back up, then down for less than the grace, then drained: no TCP cut.
        assert!(pass(&[udp.clone(), tcp.clone()], t0 + 10 * s).is_empty());
        assert!(pass(&[udp.clone(), tcp_down.clone()], t0 + 11 * s).is_empty());
        let mut tcp_drained = tcp_down.clone();
        tcp_drained.unavailable = vec![(b, false)];
        assert!(pass(&[udp.clone(), tcp_drained.clone()], t0 + 20 * s).is_empty());
        // UDP: c drained is cut; then c removed is not cut again (no flows were given it since).
        let mut udp_drained = udp.clone();
        udp_drained.backends.remove(1);
        udp_drained.unavailable.push((c, false));
        assert_eq!(
            pass(&[udp_drained.clone(), tcp.clone()], t0 + 21 * s),
            vec![(name.clone() + "/udp", c)]
        );
        let mut udp_one = udp.clone();
        udp_one.backends.remove(1);
        assert!(pass(&[udp_one.clone(), tcp.clone()], t0 + 22 * s).is_empty());
        // b removed while available: UDP cut, TCP kept.
        let mut udp_none = udp_one.clone();
        udp_none.backends.clear();
        let mut tcp_none = tcp.clone();
        tcp_none.backends.clear();
        assert_eq!(
            pass(&[udp_none, tcp_none], t0 + 23 * s),
            vec![(name.clone() + "/udp", b)]
        );
        // Without a grace a TCP backend's flows stay however long it is down.
        let mut plain = tcp_down.clone();
        plain.cut_down_after = None;
        assert!(pass(&[plain.clone()], t0 + 30 * s).is_empty());
        assert!(pass(&[plain], t0 + 3000 * s).is_empty());
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
        let m = marked(&all);
        crate::nft::assert_accepted(&ruleset(&all, &m));
        // An update is checked after the install it changes (one transaction: nft -c changes
        // nothing, so the chains it deletes must exist in the same script).
        crate::nft::assert_accepted(&(ruleset(&all, &m) + &update(&f[..1], &all, &m)));
    }
}
