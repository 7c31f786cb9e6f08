//! The agent's config file: raw serde structs mirroring the YAML (`*File`), validated once by
//! [`load`] into the typed [`Config`] that everything downstream trusts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_common::{ConfigErrors, Diagnostics, Dur, Source};
use serde::Deserialize;

pub mod health;
pub mod names;
pub mod npd;
pub mod os;
pub mod token;

pub use os::{is_absolute_for, require_absolute, Os};
pub use token::{BootstrapToken, Pin};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub cluster: ClusterFile,
    #[serde(default)]
    pub node: NodeFile,
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub kubelet: KubeletFile,
    #[serde(default)]
    pub metrics: MetricsFile,
    #[serde(default)]
    pub health: health::HealthFile,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The API server endpoint: the load balancer's VIP, `https://host:port`.
    pub server: String,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_pins: Vec<String>,
    /// How long discovery waits for `cluster-info` to be signed for our token.
    pub discovery_timeout: Option<Dur>,
    /// How long the TLS bootstrap waits for the CSR to be approved and signed.
    pub csr_timeout: Option<Dur>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub name: Option<String>,
    pub pool: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Absent: the OS default (Windows: `windows_taint`); `[]`: no taints at all.
    pub taints: Option<Vec<TaintFile>>,
    #[serde(default)]
    pub os: OsFile,
    /// The taint a Windows pool gets when it sets no `taints` (AKS-HCI uses e.g. `sku=Windows`).
    pub windows_taint: Option<TaintFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaintFile {
    pub key: String,
    #[serde(default)]
    pub value: String,
    pub effect: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFile {
    #[default]
    Auto,
    Linux,
    Windows,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletFile {
    #[serde(default)]
    pub managed: bool,
    /// Tests (and images where something else starts kubelet) write the files but start nothing.
    pub start_service: Option<bool>,
    pub kubeconfig: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// Environment file with the kubelet flags the config file cannot carry (`--node-labels`).
    pub flags_file: Option<PathBuf>,
    /// A KubeletConfiguration whose fields are kept in the written config (cgroupDriver, clusterDNS…).
    pub base_config: Option<PathBuf>,
    pub service: Option<String>,
    /// How long to wait for kubelet to register the Node.
    pub register_timeout: Option<Dur>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    pub listen: Option<String>,
}

/// The validated agent configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub cluster: Cluster,
    pub node: Node,
    pub state_dir: PathBuf,
    pub kubelet: Kubelet,
    pub metrics_listen: Option<SocketAddr>,
    pub health: health::HealthConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub server: http::Uri,
    pub token: TokenSource,
    pub ca_pins: Vec<Pin>,
    pub discovery_timeout: Duration,
    pub csr_timeout: Duration,
}

/// Where the bootstrap token comes from; a file is read only when a join needs it, so a joined node
/// keeps running after the token file is removed.
#[derive(Clone, PartialEq)]
pub enum TokenSource {
    Inline(BootstrapToken),
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Inline(t) => write!(f, "Inline({})", t.id),
            TokenSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::NoSchedule => "NoSchedule",
            Effect::PreferNoSchedule => "PreferNoSchedule",
            Effect::NoExecute => "NoExecute",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: Effect,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub pool: Option<String>,
    /// The pool's labels plus `keel.io/pool`; never the agent's own `kubernetes.io/*` labels.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub os: Os,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Kubelet {
    pub managed: bool,
    pub start_service: bool,
    pub kubeconfig: PathBuf,
    pub config: PathBuf,
    pub flags_file: PathBuf,
    pub base_config: Option<PathBuf>,
    pub service: String,
    pub register_timeout: Duration,
}

pub const POOL_LABEL: &str = "keel.io/pool";

pub fn default_state_dir(os: Os) -> PathBuf {
    match os {
        Os::Linux => PathBuf::from("/var/lib/keel"),
        Os::Windows => PathBuf::from(r"C:\ProgramData\keel"),
    }
}

fn detected_os() -> Os {
    if cfg!(windows) {
        Os::Windows
    } else {
        Os::Linux
    }
}

/// Reads, parses and validates a config file; every problem is reported at once.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = Source::read(path)?;
    from_source(&src, crate::platform::hostname().as_deref())
}

/// Validates config text; `hostname` is the default node name (passed in so tests are exact).
pub fn from_source(src: &Source, hostname: Option<&str>) -> Result<Config, ConfigErrors> {
    let raw: AgentFile = keel_common::config::parse(src)?;
    let mut d = Diagnostics::new(src);
    let cluster = validate_cluster(&raw.cluster, &mut d);
    let node = validate_node(&raw.node, hostname, &mut d);
    let os = node.as_ref().map(|n| n.os).unwrap_or(detected_os());
    let state_dir = raw
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(os));
    if raw.state_dir.is_some() {
        require_absolute(&mut d, "state_dir", os, &state_dir);
    }
    if let Some(p) = &raw.cluster.token_file {
        require_absolute(&mut d, "cluster.token_file", os, p);
    }
    let kubelet = validate_kubelet(&raw.kubelet, os, &mut d);
    let metrics_listen = raw.metrics.listen.as_deref().and_then(|l| {
        l.parse::<SocketAddr>()
            .map_err(|e| d.error("metrics.listen", format!("{l:?} is not ip:port: {e}")))
            .ok()
    });
    let health = health::validate(&raw.health, "health", os, &mut d);
    match (cluster, node) {
        (Some(cluster), Some(node)) => d.finish(Config {
            path: src.path.clone(),
            cluster,
            node,
            state_dir,
            kubelet,
            metrics_listen,
            health,
        }),
        _ => {
            // Some section failed: `d` holds at least one error.
            let errors = d.finish(()).err();
            Err(errors.unwrap_or_else(|| ConfigErrors::single(&src.path, "", "invalid config")))
        }
    }
}

fn validate_cluster(raw: &ClusterFile, d: &mut Diagnostics) -> Option<Cluster> {
    let mut ok = true;
    let server = match raw.server.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => Some(u),
        Ok(_) => {
            d.error(
                "cluster.server",
                format!("{:?} must be https://host[:port]", raw.server),
            );
            None
        }
        Err(e) => {
            d.error(
                "cluster.server",
                format!("{:?} is not a URL: {e}", raw.server),
            );
            None
        }
    };
    let token = match (&raw.token, &raw.token_file) {
        (Some(_), Some(_)) => {
            d.error("cluster.token", "set either token or token_file, not both");
            None
        }
        (None, None) => {
            d.error(
                "cluster.token",
                "a bootstrap token is required (token or token_file)",
            );
            None
        }
        (Some(t), None) => match BootstrapToken::parse(t) {
            Ok(t) => Some(TokenSource::Inline(t)),
            Err(e) => {
                d.error("cluster.token", e);
                None
            }
        },
        (None, Some(p)) => Some(TokenSource::File(p.clone())),
    };
    if raw.ca_pins.is_empty() {
        d.error(
            "cluster.ca_pins",
            "at least one sha256:<hex> CA pin is required (kubeadm's --discovery-token-ca-cert-hash)",
        );
        ok = false;
    }
    let mut ca_pins = Vec::new();
    for (i, p) in raw.ca_pins.iter().enumerate() {
        match Pin::parse(p) {
            Ok(pin) => ca_pins.push(pin),
            Err(e) => {
                d.error(format!("cluster.ca_pins[{i}]"), e);
                ok = false;
            }
        }
    }
    let mut timeout = |field: &str, v: Option<Dur>, default: u64| match v {
        Some(v) => d
            .duration_in(field, v.0, Duration::from_secs(1), DAY)
            .unwrap_or_else(|| {
                ok = false;
                Duration::ZERO
            }),
        None => Duration::from_secs(default),
    };
    let discovery_timeout = timeout("cluster.discovery_timeout", raw.discovery_timeout, 300);
    let csr_timeout = timeout("cluster.csr_timeout", raw.csr_timeout, 600);
    match (server, token, ok) {
        (Some(server), Some(token), true) => Some(Cluster {
            server,
            token,
            ca_pins,
            discovery_timeout,
            csr_timeout,
        }),
        _ => None,
    }
}

fn validate_taint(raw: &TaintFile, field: &str, d: &mut Diagnostics) -> Option<Taint> {
    let mut ok = true;
    if let Err(e) = names::qualified_name(&raw.key) {
        d.error(format!("{field}.key"), e);
        ok = false;
    }
    if let Err(e) = names::label_value(&raw.value) {
        d.error(format!("{field}.value"), e);
        ok = false;
    }
    let effect = match raw.effect.as_str() {
        "NoSchedule" => Some(Effect::NoSchedule),
        "PreferNoSchedule" => Some(Effect::PreferNoSchedule),
        "NoExecute" => Some(Effect::NoExecute),
        other => {
            d.error(
                format!("{field}.effect"),
                format!("{other:?} must be NoSchedule, PreferNoSchedule or NoExecute"),
            );
            None
        }
    };
    match (effect, ok) {
        (Some(effect), true) => Some(Taint {
            key: raw.key.clone(),
            value: raw.value.clone(),
            effect,
        }),
        _ => None,
    }
}

fn validate_node(raw: &NodeFile, hostname: Option<&str>, d: &mut Diagnostics) -> Option<Node> {
    let mut ok = true;
    let name = match (&raw.name, hostname) {
        (Some(n), _) => n.clone(),
        // kubelet lowercases the hostname it registers under.
        (None, Some(h)) => h.to_ascii_lowercase(),
        (None, None) => {
            d.error("node.name", "not set and the hostname cannot be read");
            String::new()
        }
    };
    if !name.is_empty() {
        if let Err(e) = names::dns1123_subdomain(&name) {
            let origin = if raw.name.is_some() {
                ""
            } else {
                " (from the hostname; set node.name)"
            };
            d.error("node.name", format!("{e}{origin}"));
            ok = false;
        }
    } else {
        ok = false;
    }
    if let Some(pool) = &raw.pool {
        if let Err(e) = names::label_value(pool).and_then(|_| {
            if pool.is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(())
            }
        }) {
            d.error(
                "node.pool",
                format!("pool name is used as a label value: {e}"),
            );
            ok = false;
        }
    }
    let mut node_labels = BTreeMap::new();
    for (k, v) in &raw.labels {
        let field = format!("node.labels.{k}");
        let checks = names::qualified_name(k)
            .and_then(|_| names::label_value(v))
            .and_then(|_| {
                if names::AGENT_LABELS.contains(&k.as_str()) || k == POOL_LABEL {
                    Err(format!("label {k:?} is set by the agent itself"))
                } else {
                    Ok(())
                }
            })
            .and_then(|_| names::node_may_set_label(k));
        match checks {
            Ok(()) => {
                node_labels.insert(k.clone(), v.clone());
            }
            Err(e) => {
                d.error(field, e);
                ok = false;
            }
        }
    }
    if let Some(pool) = &raw.pool {
        node_labels.insert(POOL_LABEL.to_string(), pool.clone());
    }
    let os = match raw.os {
        OsFile::Auto => detected_os(),
        OsFile::Linux => Os::Linux,
        OsFile::Windows => Os::Windows,
    };
    let windows_taint = match &raw.windows_taint {
        Some(t) => validate_taint(t, "node.windows_taint", d),
        None => Some(Taint {
            key: "os".into(),
            value: "windows".into(),
            effect: Effect::NoSchedule,
        }),
    };
    let mut taints = Vec::new();
    match &raw.taints {
        Some(list) => {
            for (i, t) in list.iter().enumerate() {
                match validate_taint(t, &format!("node.taints[{i}]"), d) {
                    Some(t) => {
                        if taints
                            .iter()
                            .any(|o: &Taint| o.key == t.key && o.effect == t.effect)
                        {
                            d.error(
                                format!("node.taints[{i}]"),
                                format!("taint {}:{} is listed twice", t.key, t.effect.as_str()),
                            );
                            ok = false;
                        }
                        taints.push(t)
                    }
                    None => ok = false,
                }
            }
        }
        None if os == Os::Windows => match windows_taint {
            Some(t) => taints.push(t),
            None => ok = false,
        },
        None => {}
    }
    ok.then_some(Node {
        name,
        pool: raw.pool.clone(),
        labels: node_labels,
        taints,
        os,
    })
}

/// The longest any agent wait may be configured to last.
const DAY: Duration = Duration::from_secs(86_400);

fn validate_kubelet(raw: &KubeletFile, os: Os, d: &mut Diagnostics) -> Kubelet {
    for (field, p) in [
        ("kubelet.kubeconfig", &raw.kubeconfig),
        ("kubelet.config", &raw.config),
        ("kubelet.flags_file", &raw.flags_file),
        ("kubelet.base_config", &raw.base_config),
    ] {
        if let Some(p) = p {
            require_absolute(d, field, os, p);
        }
    }
    let (kubeconfig, config, flags_file) = match os {
        Os::Linux => (
            PathBuf::from("/etc/kubernetes/kubelet.conf"),
            PathBuf::from("/var/lib/kubelet/config.yaml"),
            PathBuf::from("/var/lib/kubelet/keel-flags.env"),
        ),
        Os::Windows => (
            PathBuf::from(r"C:\k\kubelet.conf"),
            PathBuf::from(r"C:\var\lib\kubelet\config.yaml"),
            PathBuf::from(r"C:\var\lib\kubelet\keel-flags.env"),
        ),
    };
    Kubelet {
        managed: raw.managed,
        start_service: raw.start_service.unwrap_or(true),
        kubeconfig: raw.kubeconfig.clone().unwrap_or(kubeconfig),
        config: raw.config.clone().unwrap_or(config),
        flags_file: raw.flags_file.clone().unwrap_or(flags_file),
        base_config: raw.base_config.clone(),
        service: raw.service.clone().unwrap_or_else(|| "kubelet".into()),
        register_timeout: raw
            .register_timeout
            .and_then(|t| {
                d.duration_in("kubelet.register_timeout", t.0, Duration::from_secs(1), DAY)
            })
            .unwrap_or(Duration::from_secs(300)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn load_text(text: &str) -> Result<Config, ConfigErrors> {
        from_source(&Source::from_text("agent.yaml", text), Some("Worker-1"))
    }

    fn minimal() -> String {
        format!(
            "cluster:\n  server: https://198.18.0.100:6443\n  token: abcdef.0123456789abcdef\n  ca_pins: [\"{PIN}\"]\n"
        )
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = load_text(&minimal()).unwrap();
        assert_eq!(c.node.name, "worker-1");
        assert_eq!(c.cluster.ca_pins.len(), 1);
        assert!(!c.kubelet.managed);
        assert!(c.metrics_listen.is_none());
        if cfg!(unix) {
            assert_eq!(c.state_dir, PathBuf::from("/var/lib/keel"));
            assert!(c.node.taints.is_empty());
        }
    }

    #[test]
    fn windows_pool_gets_default_taint_unless_it_sets_taints() {
        let c = load_text(&format!("{}node:\n  os: windows\n  pool: win\n", minimal())).unwrap();
        assert_eq!(
            c.node.taints,
            vec![Taint {
                key: "os".into(),
                value: "windows".into(),
                effect: Effect::NoSchedule
            }]
        );
        assert_eq!(
            c.node.labels.get(POOL_LABEL).map(String::as_str),
            Some("win")
        );
        let c = load_text(&format!(
            "{}node:\n  os: windows\n  windows_taint: {{key: sku, value: Windows, effect: NoSchedule}}\n",
            minimal()
        ))
        .unwrap();
        assert_eq!(c.node.taints[0].key, "sku");
        let c = load_text(&format!(
            "{}node:\n  os: windows\n  taints: []\n",
            minimal()
        ))
        .unwrap();
        assert!(c.node.taints.is_empty());
    }

    #[test]
    fn every_error_is_reported_with_line_and_field() {
        let text = "\
cluster:
  server: http://vip:6443
  token: not-a-token
  ca_pins: [\"sha256:abc\"]
node:
  name: Bad_Name
  labels:
    node-role.kubernetes.io/worker: \"\"
    kubernetes.io/os: linux
    ok.example/x: \"bad value!\"
  taints:
    - {key: dedicated, value: gpu, effect: NoEvict}
metrics:
  listen: nowhere
";
        let e = load_text(text).unwrap_err();
        let s = e.to_string();
        for needle in [
            "agent.yaml:2: cluster.server",
            "agent.yaml:3: cluster.token",
            "agent.yaml:4: cluster.ca_pins[0]",
            "agent.yaml:6: node.name",
            "agent.yaml:8: node.labels.node-role.kubernetes.io/worker",
            "NodeRestriction",
            "set by the agent itself",
            "node.taints[0].effect",
            "agent.yaml:14: metrics.listen",
        ] {
            assert!(s.contains(needle), "missing {needle:?} in:\n{s}");
        }
    }

    #[test]
    fn pins_are_required_and_unknown_fields_refused() {
        let e =
            load_text("cluster:\n  server: https://vip:6443\n  token: abcdef.0123456789abcdef\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("cluster.ca_pins") && e.contains("at least one"),
            "{e}"
        );
        let e = load_text(&format!("{}nodes: {{}}\n", minimal()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `nodes`"), "{e}");
    }

    #[test]
    fn windows_node_paths_are_judged_absolute_for_windows_on_any_build_host() {
        let win = format!(
            "{}node:\n  os: windows\nstate_dir: 'C:\\ProgramData\\keel'\nkubelet:\n  kubeconfig: '\\\\fs1\\k\\kubelet.conf'\n  config: 'D:/k/config.yaml'\nhealth:\n  privileged_kubeconfig: 'C:\\k\\taints.kubeconfig'\n  checks:\n    - {{name: disk, kind: disk, path: 'C:\\', min_free: 10%}}\n",
            minimal()
        );
        let c = load_text(&win).unwrap();
        assert_eq!(c.state_dir, PathBuf::from(r"C:\ProgramData\keel"));
        // Relative, drive-relative and rooted-without-drive paths are refused on a Windows node.
        for bad in [r"keel", r"C:keel", r"\keel", "/var/lib/keel"] {
            let text = format!("{}node:\n  os: windows\nstate_dir: '{bad}'\n", minimal());
            let e = load_text(&text).unwrap_err().to_string();
            assert!(
                e.contains("agent.yaml:7: state_dir:")
                    && e.contains("must be an absolute path on a windows node"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn linux_node_refuses_relative_and_windows_paths_in_every_path_field() {
        let text = format!(
            "{}node:\n  os: linux\nstate_dir: keel\nkubelet:\n  base_config: 'C:\\k\\base.yaml'\nhealth:\n  privileged_kubeconfig: taints.kubeconfig\n  checks:\n    - {{name: d, kind: disk, path: data, min_free: 10%}}\n    - {{name: r, kind: readonly, paths: [/, var]}}\n    - {{name: p, kind: plugin, command: ./check.sh}}\n    - {{name: k, kind: kernel_log, source: kmsg, patterns: [{{reason: X, regex: x}}]}}\n    - {{name: s, kind: service, services: [{{name: a, pidfile: a.pid}}]}}\n    - {{name: c, kind: pids, cgroup: kubepods}}\n",
            minimal()
        );
        let e = load_text(&text).unwrap_err().to_string();
        for field in [
            "state_dir",
            "kubelet.base_config",
            "health.privileged_kubeconfig",
            "health.checks[0].path",
            "health.checks[1].paths[1]",
            "health.checks[2].command",
            "health.checks[3].source",
            "health.checks[4].services[0].pidfile",
            "health.checks[5].cgroup",
        ] {
            assert!(
                e.contains(&format!("{field}: `")) && e.contains("on a linux node"),
                "missing {field} in:\n{e}"
            );
        }
        assert!(!e.contains("paths[0]"), "{e}");
        let e = load_text(&format!(
            "{}  token_file: token\n",
            minimal().replace("  token: abcdef.0123456789abcdef\n", "")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cluster.token_file: `token` must be an absolute path"),
            "{e}"
        );
    }

    #[test]
    fn token_and_token_file_are_exclusive() {
        let e = load_text(&format!("{}  token_file: /etc/keel/token\n", minimal()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
    }
}
