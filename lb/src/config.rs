//! keel-lb's config file: raw serde structs that mirror the YAML (`deny_unknown_fields`), then one
//! [`validate`] that turns them into the typed [`Config`] or reports every error with file, line and
//! field. Nothing outside this module parses YAML or sees a raw string.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_common::{config as kc, ConfigErrors, Diagnostics, Dur, Source};
use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// Raw: exactly what the YAML says.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub admin: Option<RawAdmin>,
    pub metrics: Option<RawMetricsListener>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub shutdown: Option<RawShutdown>,
    #[serde(default)]
    pub frontends: Vec<RawFrontend>,
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    pub vrrp: Option<keel_vrrp::VrrpFile>,
    pub services: Option<crate::services::config::RawServices>,
    pub bgp: Option<crate::bgp::config::RawBgp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    pub token_file: Option<PathBuf>,
    /// A systemd credential (`LoadCredential=NAME:...`), read from `$CREDENTIALS_DIRECTORY/NAME`.
    pub token_credential: Option<String>,
    /// Where runtime backend changes are kept (default: `$STATE_DIRECTORY/backend-state.json`).
    pub state_file: Option<PathBuf>,
}

/// A read-only listener (`/metrics`, `/healthz`, `/services`) to expose to Prometheus, apart from
/// the admin listener's control endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetricsListener {
    pub listen: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<Dur>,
    pub idle: Option<Dur>,
    pub udp_session: Option<Dur>,
    pub keepalive: Option<Dur>,
    pub user_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub drain: Option<Dur>,
    pub handover_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrontend {
    pub name: String,
    pub listen: String,
    #[serde(default)]
    pub protocol: Protocol,
    pub pool: String,
    pub max_connections: Option<u64>,
    pub proxy_protocol: Option<String>,
    pub splice: Option<String>,
    pub mode: Option<String>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub udp: Option<RawUdp>,
}

/// UDP session settings of one frontend (`frontends[].udp`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUdp {
    pub max_sessions_per_source: Option<u64>,
    pub close_after_replies: Option<u64>,
    pub receive_buffer: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default)]
    pub balance: Balance,
    pub health: Option<RawHealth>,
    pub shutdown_sessions_on_down: Option<Dur>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `ip:port`, or `ip` with `port`.
    pub address: String,
    pub port: Option<u32>,
    pub weight: Option<u32>,
    #[serde(default)]
    pub state: AdminState,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    pub port: Option<u32>,
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Typed: what the rest of keel-lb trusts.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// Who carries a frontend's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// keel-lb accepts each connection and opens one to a backend (a full proxy).
    #[default]
    Proxy,
    /// The kernel forwards packets: DNAT to a backend, SNAT to this VM's address (`nat.rs`);
    /// keel-lb only writes the rules. No process on the data path.
    Nat,
}

/// How a TCP frontend moves bytes once a connection is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Splice {
    /// keel-lb's own relay (`relay.rs`).
    #[default]
    User,
    /// A BPF sockmap redirects data in the kernel (`sockmap.rs`); the relay where that fails.
    Kernel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    Maglev,
}

/// Operator's intent for a backend: `drain` takes no new connections but keeps its established ones;
/// `disabled` is out of rotation entirely (its health is not even checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    #[default]
    Active,
    Drain,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Tcp,
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub admin: Option<Admin>,
    /// Read-only endpoints on their own listener (`metrics:`).
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_drain: Duration,
    /// How long SIGTERM waits for a VRRP peer to take the VIPs over before releasing them anyway.
    pub handover_timeout: Duration,
    pub frontends: Vec<Frontend>,
    pub pools: BTreeMap<String, Pool>,
    pub vrrp: Option<keel_vrrp::VrrpConfig>,
    /// The file's default timeouts (Service frontends get them too).
    pub timeouts: Timeouts,
    /// Services of type LoadBalancer in the workload cluster become frontends (`services:`).
    pub services: Option<crate::services::config::ServicesConfig>,
    /// VIPs announced by BGP through FRR (`bgp:`).
    pub bgp: Option<crate::bgp::config::BgpConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token: Option<Token>,
    /// Runtime backend changes (`keel-lb backend ...`) survive restarts here; None: they last
    /// until the process ends.
    pub state_file: Option<PathBuf>,
}

/// The state file's name in systemd's `StateDirectory=` when `admin.state_file` is not given.
pub const DEFAULT_STATE_FILE: &str = "backend-state.json";

/// Where the admin bearer token is read from (per request, so it can be rotated).
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    File(PathBuf),
    /// A systemd credential's name: works with `DynamicUser=`, which cannot read root's files.
    Credential(String),
}

impl Token {
    pub fn path(&self) -> Result<PathBuf, String> {
        match self {
            Token::File(p) => Ok(p.clone()),
            Token::Credential(name) => std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|d| PathBuf::from(d).join(name))
                .ok_or_else(|| {
                    format!("admin token credential {name:?}: CREDENTIALS_DIRECTORY is not set (run under systemd with LoadCredential={name}:...)")
                }),
        }
    }

    /// The token, trimmed; an error names the file.
    pub fn read(&self) -> Result<String, String> {
        let p = self.path()?;
        std::fs::read_to_string(&p)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("reading the admin token {}: {e}", p.display()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub idle: Duration,
    pub udp_session: Duration,
    /// TCP keepalive on both sockets of a connection: the first probe after this much silence,
    /// then every third of it.
    pub keepalive: Duration,
    /// TCP_USER_TIMEOUT on both sockets: data (or keepalive probes) unacknowledged this long
    /// ends the connection, so a dead peer frees its permit long before `idle`.
    pub user_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Frontend {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    pub pool: String,
    pub max_connections: usize,
    pub proxy_protocol: bool,
    pub splice: Splice,
    pub mode: Mode,
    pub timeouts: Timeouts,
    pub udp: Udp,
}

/// UDP session settings (used by UDP frontends only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp {
    /// Sessions one client IP address may hold at once; beyond it its new sessions are refused.
    pub max_sessions_per_source: usize,
    /// Close a session once the backend sent this many replies and answered every request (DNS: 1).
    pub close_after_replies: Option<u32>,
    /// SO_RCVBUF of the listening socket, in bytes; None keeps the kernel's default.
    pub receive_buffer: Option<u32>,
}

pub const DEFAULT_UDP_SESSIONS_PER_SOURCE: usize = 1_000;

impl Default for Udp {
    fn default() -> Self {
        Udp {
            max_sessions_per_source: DEFAULT_UDP_SESSIONS_PER_SOURCE,
            close_after_replies: None,
            receive_buffer: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub balance: Balance,
    pub health: HealthCheck,
    pub backends: Vec<Backend>,
    /// Established sessions to a backend that health checks mark down are cut after this grace
    /// (HAProxy's `on-marked-down shutdown-sessions`); `None`: they stay.
    pub shutdown_sessions_on_down: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: AdminState,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// Port to check when it differs from the backend's.
    pub port: Option<u16>,
    pub path: String,
    pub expect_status: u16,
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_UDP_SESSION: Duration = Duration::from_secs(60);
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);
pub const DEFAULT_USER_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
pub const DEFAULT_HANDOVER: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const MAX_WEIGHT: u32 = 256;

impl Default for HealthCheck {
    /// No `health:` section: a TCP connect every 2 s, as HAProxy's `check` with its defaults would do.
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::Tcp,
            port: None,
            path: "/".into(),
            expect_status: 200,
            ca_file: None,
            server_name: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = Source::read(path)?;
    load_source(&src)
}

pub fn load_source(src: &Source) -> Result<Config, ConfigErrors> {
    let raw: RawFile = kc::parse(src)?;
    validate(&raw, src)
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("{text:?} is not an address with a port, e.g. 127.0.0.1:8080 or [::1]:8080")
    })
}

/// `mode: nat` takes only what the kernel's NAT can do; everything else is refused here, naming
/// the field, rather than silently not applied.
fn validate_mode(
    rf: &RawFrontend,
    field: &str,
    listen: Option<SocketAddr>,
    pool: Option<&Pool>,
    diag: &mut Diagnostics,
) -> Mode {
    match rf.mode.as_deref() {
        None | Some("proxy") => return Mode::Proxy,
        Some("nat") => {}
        Some(other) => {
            diag.error(
                format!("{field}.mode"),
                format!("{other:?} is not supported; the values are \"proxy\" and \"nat\""),
            );
            return Mode::Proxy;
        }
    }
    let why = "with mode: nat the kernel forwards packets and no process sees the connection";
    if rf.proxy_protocol.is_some() {
        diag.error(
            format!("{field}.proxy_protocol"),
            format!("needs mode: proxy ({why}, so nothing can write the header)"),
        );
    }
    if rf.splice.is_some() {
        diag.error(
            format!("{field}.splice"),
            format!("applies to mode: proxy only ({why})"),
        );
    }
    if rf.max_connections.is_some() {
        diag.error(
            format!("{field}.max_connections"),
            format!("is not enforced with mode: nat ({why}); remove it"),
        );
    }
    if rf.udp.is_some() {
        diag.error(
            format!("{field}.udp"),
            format!("applies to mode: proxy only ({why}); timeouts.udp_session still applies"),
        );
    }
    for (name, set) in [
        ("keepalive", rf.timeouts.keepalive.is_some()),
        ("user_timeout", rf.timeouts.user_timeout.is_some()),
    ] {
        if set {
            diag.error(
                format!("{field}.timeouts.{name}"),
                format!("is a socket option of mode: proxy ({why}); the backend's own applies"),
            );
        }
    }
    if let Some(pool) = pool {
        if pool.balance == Balance::LeastConn {
            diag.error(
                format!("{field}.mode"),
                format!(
                    "pool {:?} balances least_conn, which the kernel cannot (it keeps no counts per backend); use round_robin or maglev",
                    pool.name
                ),
            );
        }
        if let Some(l) = listen {
            for b in &pool.backends {
                if b.addr.is_ipv4() != l.is_ipv4() {
                    diag.error(
                        format!("{field}.mode"),
                        format!(
                            "pool {:?} has backend {}, of the other address family than {l}; NAT cannot translate between IPv4 and IPv6",
                            pool.name, b.addr
                        ),
                    );
                }
            }
        }
    }
    Mode::Nat
}

fn validate_timeouts(
    raw: &RawTimeouts,
    base: Timeouts,
    field: &str,
    diag: &mut Diagnostics,
) -> Timeouts {
    let mut t = base;
    for (name, value, slot, min, max) in [
        ("connect", raw.connect, &mut t.connect, ms(10), mins(5)),
        ("idle", raw.idle, &mut t.idle, secs(1), hours(168)),
        (
            "udp_session",
            raw.udp_session,
            &mut t.udp_session,
            secs(1),
            hours(1),
        ),
        (
            "keepalive",
            raw.keepalive,
            &mut t.keepalive,
            secs(1),
            hours(2),
        ),
        (
            "user_timeout",
            raw.user_timeout,
            &mut t.user_timeout,
            secs(1),
            hours(1),
        ),
    ] {
        if let Some(v) = value {
            if let Some(v) = diag.duration_in(format!("{field}.{name}"), v.0, min, max) {
                *slot = v;
            }
        }
    }
    t
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}
const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// Bounds on what one file may hold: far above any real LB VM's config (the Services' rules come
/// from the cluster, not the file), low enough that an alias-amplified file cannot exhaust memory.
pub const MAX_FRONTENDS: usize = 1_000;
pub const MAX_POOLS: usize = 1_000;
pub const MAX_BACKENDS_PER_POOL: usize = 1_000;
pub const MAX_BACKENDS: usize = 10_000;

/// Turns the raw file into the typed model, or reports every problem at once.
pub fn validate(raw: &RawFile, src: &Source) -> Result<Config, ConfigErrors> {
    let mut diag = Diagnostics::new(src);

    let admin = raw.admin.as_ref().and_then(|a| {
        let listen = parse_addr(&a.listen)
            .map_err(|e| diag.error("admin.listen", e))
            .ok()?;
        let token = match (&a.token_file, &a.token_credential) {
            (Some(_), Some(_)) => {
                diag.error(
                    "admin.token_credential",
                    "give token_file or token_credential, not both",
                );
                None
            }
            (Some(f), None) => Some(Token::File(f.clone())),
            (None, Some(c)) if c.is_empty() || c.contains('/') => {
                diag.error(
                    "admin.token_credential",
                    format!("{c:?} is not a credential name"),
                );
                None
            }
            (None, Some(c)) => Some(Token::Credential(c.clone())),
            (None, None) => None,
        };
        // Control (reload, handover) reachable from the network without a token is an open door.
        if token.is_none() && !listen.ip().is_loopback() {
            diag.error(
                "admin.listen",
                format!("{listen} is reachable beyond this host: set admin.token_file or admin.token_credential, or listen on loopback (expose metrics with a metrics: listener)"),
            );
        }
        let state_file = match &a.state_file {
            Some(p) if !p.is_absolute() => {
                diag.error("admin.state_file", "must be an absolute path");
                None
            }
            Some(p) => Some(p.clone()),
            // systemd's StateDirectory= (it may list several, colon-separated: the first is ours).
            None => std::env::var_os("STATE_DIRECTORY")
                .and_then(|d| {
                    d.to_str()
                        .and_then(|d| d.split(':').next())
                        .map(PathBuf::from)
                })
                .filter(|d| d.is_absolute())
                .map(|d| d.join(DEFAULT_STATE_FILE)),
        };
        Some(Admin {
            listen,
            token,
            state_file,
        })
    });
    let metrics_listen = raw.metrics.as_ref().and_then(|m| {
        let a = parse_addr(&m.listen)
            .map_err(|e| diag.error("metrics.listen", e))
            .ok()?;
        if admin.as_ref().is_some_and(|ad| ad.listen == a) {
            diag.error(
                "metrics.listen",
                format!("{a} is the admin listener; the metrics listener needs its own"),
            );
        }
        Some(a)
    });

    let defaults = validate_timeouts(
        &raw.timeouts,
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            udp_session: DEFAULT_UDP_SESSION,
            keepalive: DEFAULT_KEEPALIVE,
            user_timeout: DEFAULT_USER_TIMEOUT,
        },
        "timeouts",
        &mut diag,
    );

    let shutdown_drain = raw
        .shutdown
        .as_ref()
        .and_then(|s| s.drain)
        .and_then(|d| diag.duration_in("shutdown.drain", d.0, secs(1), hours(1)))
        .unwrap_or(DEFAULT_DRAIN);
    let handover_timeout = raw
        .shutdown
        .as_ref()
        .and_then(|s| s.handover_timeout)
        .and_then(|d| diag.duration_in("shutdown.handover_timeout", d.0, ms(100), mins(5)))
        .unwrap_or(DEFAULT_HANDOVER);

    // Counted before anything is built from them.
    let total_backends: usize = raw.pools.values().map(|p| p.backends.len()).sum();
    for (field, n, max) in [
        ("frontends", raw.frontends.len(), MAX_FRONTENDS),
        ("pools", raw.pools.len(), MAX_POOLS),
        ("pools", total_backends, MAX_BACKENDS),
    ] {
        if n > max {
            diag.error(
                field,
                format!("{n} is more than keel-lb takes from one file ({max}); refusing it"),
            );
        }
    }
    if !diag.is_empty() {
        return Err(diag.into_errors());
    }

    // Pools first, so frontends can be checked against them.
    let mut pools = BTreeMap::new();
    for (name, rp) in &raw.pools {
        let field = format!("pools.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            diag.error(&field, "pool names use letters, digits, '-', '_' and '.'");
        }
        if rp.backends.is_empty() {
            diag.error(
                format!("{field}.backends"),
                "a pool needs at least one backend",
            );
        }
        if rp.backends.len() > MAX_BACKENDS_PER_POOL {
            diag.error(
                format!("{field}.backends"),
                format!(
                    "{} backends; a pool takes at most {MAX_BACKENDS_PER_POOL}",
                    rp.backends.len()
                ),
            );
        }
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        let mut backends = Vec::new();
        for (i, rb) in rp.backends.iter().enumerate() {
            let bf = format!("{field}.backends[{i}]");
            if let Some(b) = validate_backend(rb, &bf, &mut diag) {
                if let Some(first) = seen.insert(b.addr, i) {
                    diag.error(
                        format!("{bf}.address"),
                        format!(
                            "backend {} is listed twice (also backends[{first}])",
                            b.addr
                        ),
                    );
                }
                backends.push(b);
            }
        }
        let health = match &rp.health {
            Some(h) => validate_health(h, &format!("{field}.health"), &mut diag),
            None => HealthCheck::default(),
        };
        let shutdown_sessions_on_down = rp.shutdown_sessions_on_down.and_then(|d| {
            diag.duration_in(
                format!("{field}.shutdown_sessions_on_down"),
                d.0,
                Duration::ZERO,
                hours(1),
            )
        });
        pools.insert(
            name.clone(),
            Pool {
                name: name.clone(),
                balance: rp.balance,
                health,
                backends,
                shutdown_sessions_on_down,
            },
        );
    }

    let mut frontends = Vec::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut listens: HashMap<(Protocol, SocketAddr), usize> = HashMap::new();
    for (i, rf) in raw.frontends.iter().enumerate() {
        let field = format!("frontends[{i}]");
        if rf.name.is_empty() {
            diag.error(format!("{field}.name"), "must not be empty");
        } else if let Some(first) = names.insert(&rf.name, i) {
            diag.error(
                format!("{field}.name"),
                format!(
                    "frontend name {:?} is used twice (also frontends[{first}])",
                    rf.name
                ),
            );
        }
        let listen = match parse_addr(&rf.listen) {
            Ok(a) => {
                if a.port() == 0 {
                    diag.error(format!("{field}.listen"), "port must not be 0");
                }
                if let Some(first) = listens.insert((rf.protocol, a), i) {
                    diag.error(
                        format!("{field}.listen"),
                        format!("{a} is already the listen address of frontends[{first}]"),
                    );
                }
                if rf.protocol == Protocol::Tcp && admin.as_ref().is_some_and(|ad| ad.listen == a) {
                    diag.error(
                        format!("{field}.listen"),
                        format!("{a} is the admin listener"),
                    );
                }
                if rf.protocol == Protocol::Tcp && metrics_listen == Some(a) {
                    diag.error(
                        format!("{field}.listen"),
                        format!("{a} is the metrics listener"),
                    );
                }
                Some(a)
            }
            Err(e) => {
                diag.error(format!("{field}.listen"), e);
                None
            }
        };
        if !pools.contains_key(&rf.pool) {
            diag.error(
                format!("{field}.pool"),
                format!(
                    "no pool named {:?} (pools: {})",
                    rf.pool,
                    list(pools.keys())
                ),
            );
        }
        let max_connections = match rf.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(0) => {
                diag.error(format!("{field}.max_connections"), "must be at least 1");
                1
            }
            // tokio's semaphore holds at most usize::MAX >> 3 permits; a million is plenty for one VM.
            Some(n) if n > 1_000_000 => {
                diag.error(
                    format!("{field}.max_connections"),
                    "must be at most 1000000",
                );
                1
            }
            Some(n) => n as usize,
        };
        let proxy_protocol = match rf.proxy_protocol.as_deref() {
            None => false,
            Some("v2") => {
                if rf.protocol == Protocol::Udp {
                    diag.error(
                        format!("{field}.proxy_protocol"),
                        "PROXY protocol is only supported on tcp frontends",
                    );
                }
                true
            }
            Some(other) => {
                diag.error(
                    format!("{field}.proxy_protocol"),
                    format!("{other:?} is not supported; the only value is \"v2\""),
                );
                false
            }
        };
        let splice = match rf.splice.as_deref() {
            None | Some("user") => Splice::User,
            Some("kernel") if rf.protocol == Protocol::Udp => {
                diag.error(
                    format!("{field}.splice"),
                    "kernel splicing is only supported on tcp frontends",
                );
                Splice::User
            }
            Some("kernel") => Splice::Kernel,
            Some(other) => {
                diag.error(
                    format!("{field}.splice"),
                    format!("{other:?} is not supported; the values are \"user\" and \"kernel\""),
                );
                Splice::User
            }
        };
        let timeouts = validate_timeouts(
            &rf.timeouts,
            defaults,
            &format!("{field}.timeouts"),
            &mut diag,
        );
        let udp = validate_udp(rf, &field, &mut diag);
        let mode = validate_mode(rf, &field, listen, pools.get(&rf.pool), &mut diag);
        if let Some(listen) = listen {
            frontends.push(Frontend {
                name: rf.name.clone(),
                listen,
                protocol: rf.protocol,
                pool: rf.pool.clone(),
                max_connections,
                proxy_protocol,
                splice,
                mode,
                timeouts,
                udp,
            });
        }
    }

    let vrrp = raw.vrrp.as_ref().and_then(|rv| {
        let v = keel_vrrp::config::validate(rv, "vrrp", &mut diag)?;
        for p in v.tracked_pools() {
            if !pools.contains_key(&p) {
                diag.error(
                    "vrrp",
                    format!(
                        "tracks pool {p:?}, which does not exist (pools: {})",
                        list(pools.keys())
                    ),
                );
            }
        }
        Some(v)
    });

    let services = raw.services.as_ref().and_then(|rs| {
        let routers: Vec<(String, bool)> = vrrp
            .as_ref()
            .map(|v| {
                v.routers
                    .iter()
                    .map(|r| (r.name.clone(), r.family == keel_vrrp::config::Family::V4))
                    .collect()
            })
            .unwrap_or_default();
        crate::services::config::validate(rs, &routers, raw.bgp.is_some(), &mut diag)
    });

    let bgp = raw.bgp.as_ref().and_then(|rb| {
        let vrrp_vips: Vec<IpAddr> = vrrp
            .as_ref()
            .map(|v| v.vips().iter().map(|v| v.addr).collect())
            .unwrap_or_default();
        let svc_bgp = services.as_ref().is_some_and(|s| {
            s.pools
                .iter()
                .any(|p| p.router_v4.as_deref() == Some(crate::services::config::BGP_ROUTER))
        });
        crate::bgp::config::validate(
            rb,
            &|p| pools.contains_key(p),
            &list(pools.keys()),
            &vrrp_vips,
            svc_bgp,
            &mut diag,
        )
    });

    // bgp.handoff forwards every packet to a VIP that has no local socket to a leaving peer: the
    // packets of this VM's own NAT flows have none, so they would be sent away too.
    if let Some(b) = bgp.as_ref().filter(|b| b.handoff.is_some()) {
        for f in frontends.iter().filter(|f| f.mode == Mode::Nat) {
            let ip = f.listen.ip();
            if ip.is_unspecified() || b.vips.iter().any(|v| v.addr == ip) {
                let i = raw
                    .frontends
                    .iter()
                    .position(|r| r.name == f.name)
                    .unwrap_or_default();
                diag.error(
                    format!("frontends[{i}].mode"),
                    format!(
                        "nat on {ip}, a bgp VIP, cannot go with bgp.handoff (handoff forwards packets without a local socket to a leaving peer, and NAT flows have none); use mode: proxy or drop bgp.handoff"
                    ),
                );
            }
        }
    }

    diag.finish(Config {
        bgp,
        path: src.path.clone(),
        admin,
        metrics_listen,
        shutdown_drain,
        handover_timeout,
        frontends,
        pools,
        vrrp,
        timeouts: defaults,
        services,
    })
}

fn validate_udp(rf: &RawFrontend, field: &str, diag: &mut Diagnostics) -> Udp {
    let mut u = Udp::default();
    let Some(raw) = &rf.udp else { return u };
    if rf.protocol != Protocol::Udp {
        diag.error(format!("{field}.udp"), "only applies to udp frontends");
    }
    let mut int = |name: &str, v: Option<u64>, min: u64, max: u64| {
        let v = v?;
        if (min..=max).contains(&v) {
            Some(v)
        } else {
            diag.error(
                format!("{field}.udp.{name}"),
                format!("{v} is out of range {min}-{max}"),
            );
            None
        }
    };
    if let Some(n) = int(
        "max_sessions_per_source",
        raw.max_sessions_per_source,
        1,
        1_000_000,
    ) {
        u.max_sessions_per_source = n as usize;
    }
    u.close_after_replies =
        int("close_after_replies", raw.close_after_replies, 1, 1_000_000).map(|n| n as u32);
    // The kernel doubles the value and refuses less than about 2 KiB; 256 MiB is far above any
    // sane queue for one socket.
    u.receive_buffer = int("receive_buffer", raw.receive_buffer, 4096, 256 << 20).map(|n| n as u32);
    u
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn validate_backend(rb: &RawBackend, field: &str, diag: &mut Diagnostics) -> Option<Backend> {
    let text = rb.address.trim();
    let addr = match (text.parse::<SocketAddr>(), text.parse::<IpAddr>(), rb.port) {
        (Ok(a), _, None) => Some(a),
        (Ok(_), _, Some(_)) => {
            diag.error(
                format!("{field}.port"),
                "the address already has a port; give it once",
            );
            None
        }
        (Err(_), Ok(ip), Some(p)) => match u16::try_from(p) {
            Ok(p) if p != 0 => Some(SocketAddr::new(ip, p)),
            _ => {
                diag.error(
                    format!("{field}.port"),
                    format!("{p} is not a port (1-65535)"),
                );
                None
            }
        },
        (Err(_), Ok(_), None) => {
            diag.error(
                format!("{field}.port"),
                "missing: give `port` or write the address as ip:port",
            );
            None
        }
        (Err(_), Err(_), _) => {
            diag.error(
                format!("{field}.address"),
                format!("{text:?} is not an IP address (host names are not resolved)"),
            );
            None
        }
    };
    if let Some(a) = addr {
        if a.port() == 0 {
            diag.error(format!("{field}.address"), "port must not be 0");
        }
        if a.ip().is_unspecified() {
            diag.error(
                format!("{field}.address"),
                format!("{} cannot be a backend", a.ip()),
            );
        }
    }
    let weight = rb.weight.unwrap_or(1);
    if weight == 0 || weight > MAX_WEIGHT {
        diag.error(
            format!("{field}.weight"),
            format!("{weight} is out of range 1-{MAX_WEIGHT} (use state: disabled to take a backend out)"),
        );
    }
    addr.map(|addr| Backend {
        addr,
        weight: weight.clamp(1, MAX_WEIGHT),
        state: rb.state,
    })
}

fn validate_health(h: &RawHealth, field: &str, diag: &mut Diagnostics) -> HealthCheck {
    let mut c = HealthCheck {
        kind: h.kind,
        ..HealthCheck::default()
    };
    if let Some(p) = h.port {
        match u16::try_from(p) {
            Ok(p) if p != 0 => c.port = Some(p),
            _ => diag.error(
                format!("{field}.port"),
                format!("{p} is not a port (1-65535)"),
            ),
        }
    }
    let http = matches!(h.kind, CheckKind::Http | CheckKind::Https);
    let only_http = |diag: &mut Diagnostics, name: &str, set: bool| {
        if set && !http {
            diag.error(
                format!("{field}.{name}"),
                "only applies to http and https checks",
            );
        }
    };
    only_http(diag, "path", h.path.is_some());
    only_http(diag, "expect_status", h.expect_status.is_some());
    if h.kind != CheckKind::Https {
        if h.ca_file.is_some() {
            diag.error(format!("{field}.ca_file"), "only applies to https checks");
        }
        if h.server_name.is_some() {
            diag.error(
                format!("{field}.server_name"),
                "only applies to https checks",
            );
        }
    }
    if let Some(p) = &h.path {
        if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            diag.error(
                format!("{field}.path"),
                format!("{p:?} must start with '/' and hold no spaces"),
            );
        } else {
            c.path = p.clone();
        }
    }
    if let Some(s) = h.expect_status {
        if !(100..=599).contains(&s) {
            diag.error(
                format!("{field}.expect_status"),
                format!("{s} is not an HTTP status (100-599)"),
            );
        } else {
            c.expect_status = s;
        }
    }
    // Whether the file exists is a warning, not an error: provisioning may place it after keel-lb
    // starts, and checks (which read it when they start) fail loudly until it is there.
    c.ca_file = h.ca_file.clone();
    if h.kind == CheckKind::Https && h.ca_file.is_none() {
        diag.error(
            format!("{field}.ca_file"),
            "https checks need ca_file: the CA that signed the backends' certificates",
        );
    }
    if let Some(n) = &h.server_name {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            diag.error(
                format!("{field}.server_name"),
                format!("{n:?} is not a DNS name or IP address"),
            );
        }
        c.server_name = Some(n.clone());
    }
    if let Some(i) = h.interval {
        if let Some(i) = diag.duration_in(format!("{field}.interval"), i.0, ms(10), hours(1)) {
            c.interval = i;
        }
    }
    if let Some(t) = h.timeout {
        if let Some(t) = diag.duration_in(format!("{field}.timeout"), t.0, ms(1), mins(1)) {
            c.timeout = t;
        }
    }
    if c.timeout > c.interval {
        diag.error(
            format!("{field}.timeout"),
            format!(
                "{} is longer than the interval {}",
                keel_common::duration::format(c.timeout),
                keel_common::duration::format(c.interval)
            ),
        );
    }
    for (name, v, slot) in [("rise", h.rise, &mut c.rise), ("fall", h.fall, &mut c.fall)] {
        if let Some(v) = v {
            if v == 0 || v > 100 {
                diag.error(
                    format!("{field}.{name}"),
                    format!("{v} is out of range 1-100"),
                );
            } else {
                *slot = v;
            }
        }
    }
    c
}

impl Config {
    pub fn frontend(&self, name: &str) -> Option<&Frontend> {
        self.frontends.iter().find(|f| f.name == name)
    }

    /// Problems that do not stop keel-lb from running but deserve a look (files not there yet).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let mut file = |what: String, p: &Path| {
            if !p.is_file() {
                w.push(format!("{what}: {} does not exist (yet)", p.display()));
            }
        };
        let mut unset = None;
        match self.admin.as_ref().and_then(|a| a.token.as_ref()) {
            Some(Token::File(t)) => file("admin.token_file".into(), t),
            Some(t @ Token::Credential(_)) => match t.path() {
                Ok(p) => file("admin.token_credential".into(), &p),
                Err(e) => unset = Some(e),
            },
            None => {}
        }
        for (name, p) in &self.pools {
            if let Some(ca) = &p.health.ca_file {
                file(format!("pools.{name}.health.ca_file"), ca);
            }
        }
        w.extend(unset);
        if let Some(b) = &self.bgp {
            if b.find_vtysh().is_none() {
                w.push(format!(
                    "bgp: {} not found: without FRR the VIPs are held on {} but nothing announces them (install frr)",
                    b.vtysh.display(),
                    b.interface
                ));
            } else {
                w.extend(crate::bgp::config::frr_warnings(
                    &crate::bgp::config::BGPD_PATHS,
                    std::path::Path::new(crate::bgp::config::FRR_DAEMONS),
                ));
            }
            if let Some(h) = &b.handoff {
                if h.find_nft().is_none() {
                    w.push(format!(
                        "bgp.handoff: {} not found: keel-lb will not announce the VIPs until it can install its rules (install nftables)",
                        h.nft.display()
                    ));
                }
            }
        }
        let nat: Vec<&str> = self
            .frontends
            .iter()
            .filter(|f| f.mode == Mode::Nat)
            .map(|f| f.name.as_str())
            .collect();
        if !nat.is_empty() && crate::nft::find(std::path::Path::new("nft")).is_none() {
            w.push(format!(
                "frontends {}: mode: nat needs nft, which is not installed: they will not be forwarded (install nftables)",
                nat.join(", ")
            ));
        }
        w
    }

    /// Every listen address, to compare configs on reload.
    pub fn listen_set(&self) -> HashSet<(Protocol, SocketAddr)> {
        self.frontends
            .iter()
            .map(|f| (f.protocol, f.listen))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigErrors> {
        load_source(&Source::from_text("lb.yaml", text))
    }

    const GOOD: &str = "\
admin:
  listen: 127.0.0.1:9100
timeouts:
  connect: 2s
frontends:
  - name: api
    listen: 127.0.0.1:6443
    pool: apiservers
    max_connections: 100
    proxy_protocol: v2
  - name: dns
    listen: 127.0.0.1:5353
    protocol: udp
    pool: dns
    timeouts:
      udp_session: 10s
pools:
  apiservers:
    balance: least_conn
    health:
      type: http
      path: /readyz
      interval: 1s
      timeout: 500ms
      rise: 1
      fall: 2
    backends:
      - address: 127.0.0.1:7001
      - address: 127.0.0.1
        port: 7002
        weight: 3
      - address: \"::1\"
        port: 7003
        state: drain
  dns:
    balance: maglev
    backends:
      - address: 127.0.0.1:5354
";

    #[test]
    fn a_good_file_becomes_a_typed_model() {
        let c = check(GOOD).unwrap();
        assert_eq!(c.frontends.len(), 2);
        let api = c.frontend("api").unwrap();
        assert!(api.proxy_protocol);
        assert_eq!(api.max_connections, 100);
        assert_eq!(api.timeouts.connect, Duration::from_secs(2));
        let dns = c.frontend("dns").unwrap();
        assert_eq!(dns.protocol, Protocol::Udp);
        assert_eq!(dns.timeouts.udp_session, Duration::from_secs(10));
        let p = &c.pools["apiservers"];
        assert_eq!(p.balance, Balance::LeastConn);
        assert_eq!(p.health.kind, CheckKind::Http);
        assert_eq!(p.health.path, "/readyz");
        assert_eq!(p.backends[1].weight, 3);
        assert_eq!(p.backends[2].addr, "[::1]:7003".parse().unwrap());
        assert_eq!(p.backends[2].state, AdminState::Drain);
        assert_eq!(c.pools["dns"].health, HealthCheck::default());
    }

    #[test]
    fn every_error_is_reported_with_line_and_field() {
        let bad = "\
frontends:
  - name: api
    listen: 127.0.0.1:6443
    pool: nope
  - name: api
    listen: 127.0.0.1:6443
    pool: p
    max_connections: 0
pools:
  p:
    health:
      type: tcp
      path: /x
      rise: 0
    backends:
      - address: 10.0.0.1:80
        weight: 0
      - address: 10.0.0.1:80
      - address: example.com
";
        let e = check(bad).unwrap_err();
        let text = e.to_string();
        for want in [
            "lb.yaml:4: frontends[0].pool: no pool named \"nope\"",
            "lb.yaml:5: frontends[1].name: frontend name \"api\" is used twice",
            "lb.yaml:6: frontends[1].listen: 127.0.0.1:6443 is already",
            "lb.yaml:8: frontends[1].max_connections",
            "lb.yaml:13: pools.p.health.path: only applies to http",
            "lb.yaml:14: pools.p.health.rise",
            "lb.yaml:17: pools.p.backends[0].weight",
            "lb.yaml:18: pools.p.backends[1].address: backend 10.0.0.1:80 is listed twice",
            "lb.yaml:19: pools.p.backends[2].address",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert_eq!(e.0.len(), 9, "{text}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = check("frontends: []\npools: {}\nfrontend: []\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lb.yaml:3") && e.contains("unknown field `frontend`"),
            "{e}"
        );
        let e =
            check("pools:\n  p:\n    backends:\n      - address: 1.2.3.4:5\n        wieght: 2\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("lb.yaml:5") && e.contains("wieght"), "{e}");
    }

    #[test]
    fn impossible_values_are_errors() {
        let e = check(
            "pools:\n  p:\n    health:\n      type: https\n      interval: 1s\n      timeout: 2s\n      expect_status: 42\n    backends:\n      - address: 1.2.3.4\n        port: 70000\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("pools.p.health.timeout: 2s is longer than the interval 1s"),
            "{e}"
        );
        assert!(e.contains("pools.p.health.expect_status"), "{e}");
        assert!(
            e.contains("lb.yaml:10: pools.p.backends[0].port: 70000"),
            "{e}"
        );
    }

    #[test]
    fn proxy_protocol_on_udp_is_refused() {
        let e = check(
            "frontends:\n  - name: d\n    listen: 127.0.0.1:53\n    protocol: udp\n    pool: p\n    proxy_protocol: v2\npools:\n  p:\n    backends: [{address: \"1.2.3.4:53\"}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lb.yaml:6: frontends[0].proxy_protocol"), "{e}");
    }

    #[test]
    fn splice_is_user_or_kernel_and_kernel_only_on_tcp() {
        let cfg = |fe: &str| {
            format!("frontends:\n  - name: d\n    listen: 127.0.0.1:53\n{fe}    pool: p\npools:\n  p:\n    backends: [{{address: \"1.2.3.4:53\"}}]\n")
        };
        let ok = check(&cfg("    splice: kernel\n")).unwrap();
        assert_eq!(ok.frontends[0].splice, Splice::Kernel);
        assert_eq!(check(&cfg("")).unwrap().frontends[0].splice, Splice::User);
        let e = check(&cfg("    protocol: udp\n    splice: kernel\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lb.yaml:5: frontends[0].splice"), "{e}");
        assert!(e.contains("only supported on tcp"), "{e}");
        let e = check(&cfg("    splice: sockmap\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lb.yaml:4: frontends[0].splice"), "{e}");
        assert!(e.contains("\"user\" and \"kernel\""), "{e}");
    }

    #[test]
    fn mode_nat_takes_only_what_the_kernels_nat_can_do() {
        let cfg = |fe: &str, pool: &str| {
            format!("frontends:\n  - name: d\n    listen: 198.18.0.10:80\n    mode: nat\n{fe}    pool: p\npools:\n  p:\n{pool}    backends: [{{address: \"198.18.1.2:80\"}}]\n")
        };
        let ok = check(&cfg("", "")).unwrap();
        assert_eq!(ok.frontends[0].mode, Mode::Nat);
        assert_eq!(
            check(&cfg("", "    balance: maglev\n")).unwrap().frontends[0].mode,
            Mode::Nat
        );
        for (fe, pool, field, says) in [
            (
                "    proxy_protocol: v2\n",
                "",
                "lb.yaml:5: frontends[0].proxy_protocol",
                "needs mode: proxy",
            ),
            (
                "    splice: kernel\n",
                "",
                "lb.yaml:5: frontends[0].splice",
                "mode: proxy only",
            ),
            (
                "    max_connections: 10\n",
                "",
                "lb.yaml:5: frontends[0].max_connections",
                "not enforced",
            ),
            (
                "    timeouts: {keepalive: 10s}\n",
                "",
                "frontends[0].timeouts.keepalive",
                "socket option",
            ),
            (
                "",
                "    balance: least_conn\n",
                "frontends[0].mode",
                "least_conn",
            ),
        ] {
            let e = check(&cfg(fe, pool)).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(says), "{fe}{pool}: {e}");
        }
        let v6 = cfg("", "").replace("198.18.1.2:80", "[2001:db8::2]:80");
        let e = check(&v6).unwrap_err().to_string();
        assert!(e.contains("other address family"), "{e}");
        let handoff = format!(
            "{}bgp:\n  vips: [{{address: 198.18.0.10}}]\n  handoff:\n    peers: [198.18.1.11, 198.18.1.12]\n",
            cfg("", "")
        );
        let e = check(&handoff).unwrap_err().to_string();
        assert!(
            e.contains("frontends[0].mode") && e.contains("bgp.handoff"),
            "{e}"
        );
        let e = check(&cfg("", "").replace("mode: nat", "mode: dsr"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lb.yaml:4: frontends[0].mode") && e.contains("\"proxy\" and \"nat\""),
            "{e}"
        );
    }

    #[test]
    fn udp_settings_are_checked_and_only_taken_by_udp_frontends() {
        let pools = "pools:\n  p:\n    backends: [{address: \"1.2.3.4:53\"}]\n";
        let c = check(&format!("frontends:\n  - name: d\n    listen: 127.0.0.1:53\n    protocol: udp\n    pool: p\n    udp:\n      close_after_replies: 1\n      receive_buffer: 65536\n{pools}")).unwrap();
        let u = c.frontends[0].udp;
        assert_eq!(u.close_after_replies, Some(1));
        assert_eq!(u.receive_buffer, Some(65536));
        assert_eq!(u.max_sessions_per_source, DEFAULT_UDP_SESSIONS_PER_SOURCE);
        let e = check(&format!("frontends:\n  - name: t\n    listen: 127.0.0.1:80\n    pool: p\n    udp:\n      max_sessions_per_source: 0\n      receive_buffer: 100\n{pools}"))
            .unwrap_err()
            .to_string();
        for want in [
            "lb.yaml:5: frontends[0].udp: only applies to udp frontends",
            "lb.yaml:6: frontends[0].udp.max_sessions_per_source: 0 is out of range 1-1000000",
            "lb.yaml:7: frontends[0].udp.receive_buffer: 100 is out of range 4096-268435456",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn an_empty_file_and_a_pool_named_twice_are_refused() {
        let e = check("# nothing yet\n").unwrap_err().to_string();
        assert!(e.contains("lb.yaml: the file is empty"), "{e}");
        let e = check(
            "pools:\n  p:\n    backends: [{address: \"1.2.3.4:80\"}]\n  p:\n    backends: [{address: \"1.2.3.5:80\"}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("lb.yaml:4") && e.contains("duplicate entry with key \"p\""),
            "{e}"
        );
    }

    #[test]
    fn durations_that_break_everything_are_refused_in_words() {
        let e = check(
            "timeouts:\n  idle: 1us\nshutdown:\n  drain: 0s\n  handover_timeout: 87000h\npools:\n  p:\n    backends: [{address: \"1.2.3.4:80\"}]\n",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "lb.yaml:2: timeouts.idle: must be between 1s and 168h, not 1us",
            "lb.yaml:4: shutdown.drain: must be between 1s and 1h, not 0s",
            "lb.yaml:5: shutdown.handover_timeout: must be between 100ms and 5m, not 87000h",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
        }
    }

    /// An alias-amplified file: a few lines that expand to more backends than one file may hold.
    #[test]
    fn object_counts_are_capped_before_anything_is_built() {
        let mut text = String::from("pools:\n  p0: &p\n    backends:\n");
        for i in 0..100 {
            text.push_str(&format!(
                "      - address: \"198.18.0.{}:{}\"\n",
                i % 250 + 1,
                1000 + i
            ));
        }
        for i in 1..120 {
            text.push_str(&format!("  p{i}: *p\n"));
        }
        let e = check(&text).unwrap_err().to_string();
        assert!(
            e.contains(
                "pools: 12000 is more than keel-lb takes from one file (10000); refusing it"
            ),
            "{e}"
        );
    }

    #[test]
    fn control_beyond_loopback_needs_a_token() {
        let pools = "pools:\n  p:\n    backends: [{address: \"1.2.3.4:80\"}]\n";
        let e = check(&format!("admin:\n  listen: 0.0.0.0:9100\n{pools}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lb.yaml:2: admin.listen: 0.0.0.0:9100 is reachable beyond this host"),
            "{e}"
        );
        let c = check(&format!(
            "admin:\n  listen: 0.0.0.0:9100\n  token_credential: admin-token\nmetrics:\n  listen: 0.0.0.0:9090\n{pools}"
        ))
        .unwrap();
        assert_eq!(
            c.admin.unwrap().token,
            Some(Token::Credential("admin-token".into()))
        );
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9090".parse().unwrap()));
        let e = check(&format!(
            "admin:\n  listen: 127.0.0.1:9100\n  token_file: /x\n  token_credential: y\nmetrics:\n  listen: 127.0.0.1:9100\n{pools}"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not both") && e.contains("is the admin listener"),
            "{e}"
        );
    }
}
