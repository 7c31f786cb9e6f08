//! The agent's status: one shared struct that the join, heartbeat and health work update and that
//! `keel-agent status`, `/status` and the orchestrator API read.
//!
//! Extending it: a module that owns more state (health checks, conditions, taints) writes its own
//! JSON section with `StatusHandle::set_section("health", value)`; nothing here has to change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// Where the node is in its life; also the `state` label of `keel_agent_join_state`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinState {
    #[default]
    Starting,
    Discovering,
    Bootstrapping,
    Registering,
    Joined,
    Failed,
    Leaving,
    Left,
}

impl JoinState {
    pub const ALL: [JoinState; 8] = [
        JoinState::Starting,
        JoinState::Discovering,
        JoinState::Bootstrapping,
        JoinState::Registering,
        JoinState::Joined,
        JoinState::Failed,
        JoinState::Leaving,
        JoinState::Left,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JoinState::Starting => "starting",
            JoinState::Discovering => "discovering",
            JoinState::Bootstrapping => "bootstrapping",
            JoinState::Registering => "registering",
            JoinState::Joined => "joined",
            JoinState::Failed => "failed",
            JoinState::Leaving => "leaving",
            JoinState::Left => "left",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    pub agent: String,
    /// The API server's `/version` gitVersion, once known.
    pub kubernetes: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub join_state: JoinState,
    pub node_name: String,
    pub pool: Option<String>,
    pub server: String,
    pub kubelet_managed: bool,
    /// Unix seconds.
    pub cert_not_after: Option<i64>,
    /// Unix seconds of the planned renewal.
    pub cert_renew_at: Option<i64>,
    /// Unix seconds of the last successful Lease renewal.
    pub last_lease_renewal: Option<i64>,
    /// Unix seconds of the last Node status write.
    pub last_status_update: Option<i64>,
    pub last_error: Option<String>,
    pub config_reloads_failed: u64,
    /// Reloads applied (SIGHUP with a valid file); `keel-agent reload` waits for one of the two
    /// counters to move.
    #[serde(default)]
    pub config_reloads_ok: u64,
    pub versions: Versions,
    /// Sections owned by other modules (e.g. `health`), by name.
    #[serde(default)]
    pub sections: BTreeMap<String, serde_json::Value>,
}

/// A cheap, cloneable handle on the shared status; every update is mirrored to the status file
/// (best effort) so `keel-agent status` works without the agent's HTTP endpoint.
#[derive(Clone, Default)]
pub struct StatusHandle {
    inner: Arc<RwLock<Status>>,
    file: Option<PathBuf>,
}

impl StatusHandle {
    pub fn new(initial: Status, file: Option<PathBuf>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(initial)),
            file,
        }
    }

    pub fn snapshot(&self) -> Status {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let snapshot = {
            let mut g = match self.inner.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            f(&mut g);
            g.clone()
        };
        if let Some(path) = &self.file {
            if let Err(e) = write_file(path, &snapshot) {
                tracing::debug!(path = %path.display(), error = %e, "cannot write status file");
            }
        }
    }

    pub fn set_section(&self, name: &str, value: serde_json::Value) {
        self.update(|s| {
            s.sections.insert(name.to_string(), value);
        });
    }
}

fn write_file(path: &Path, status: &Status) -> std::io::Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    if !dir.exists() {
        // The state dir appears only once the join wrote something worth keeping.
        return Ok(());
    }
    let text = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    crate::files::write_atomic(path, &text, false)
}

pub fn read_file(path: &Path) -> std::io::Result<Status> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(std::io::Error::other)
}

/// `keel-agent status` for a terminal: the join and certificate state, then the health section
/// (checks with their last result, conditions, taints applied or refused and why, drain) as
/// tables. `now` is Unix seconds, for "5s ago".
pub fn render(st: &Status, now: i64) -> String {
    use keel_common::table::{when, Table};
    use serde_json::Value;
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let mut facts = Table::new(["", ""]).max_cell(120);
    let pool = st
        .pool
        .as_deref()
        .map(|p| format!(" (pool {p})"))
        .unwrap_or_default();
    facts.row(["Node:".into(), format!("{}{pool}", st.node_name)]);
    facts.row(["State:", st.join_state.as_str()]);
    facts.row(["Server:", st.server.as_str()]);
    facts.row([
        "Versions:".into(),
        format!(
            "agent {}, Kubernetes {}",
            st.versions.agent,
            st.versions.kubernetes.as_deref().unwrap_or("unknown")
        ),
    ]);
    facts.row(["Certificate expires:".into(), when(st.cert_not_after, now)]);
    facts.row(["Certificate renewal:".into(), when(st.cert_renew_at, now)]);
    facts.row(["Lease renewed:".into(), when(st.last_lease_renewal, now)]);
    facts.row([
        "Node status written:".into(),
        when(st.last_status_update, now),
    ]);
    facts.row([
        "Config reloads:".into(),
        format!(
            "{} applied, {} refused",
            st.config_reloads_ok, st.config_reloads_failed
        ),
    ]);
    facts.row([
        "Kubelet:",
        if st.kubelet_managed {
            "managed by the agent"
        } else {
            "not managed"
        },
    ]);
    if let Some(e) = &st.last_error {
        facts.row(["Last error:", e.as_str()]);
    }
    // The two-column fact list has no header line.
    out.extend(facts.render().lines().skip(1).map(|l| format!("{l}\n")));

    let Some(h) = st.sections.get("health") else {
        out.push_str("\nHealth: not running (the node has not registered yet)\n");
        return out;
    };
    let list = |k: &str| h[k].as_array().cloned().unwrap_or_default();
    let mut checks = Table::new([
        "CHECK",
        "CONDITION",
        "STATUS",
        "REASON",
        "LATENCY",
        "RUNS",
        "MESSAGE",
    ]);
    for c in list("checks") {
        checks.row([
            s(&c["name"]),
            s(&c["condition"]),
            s(&c["status"]),
            s(&c["reason"]),
            format!("{}ms", c["latency_ms"].as_u64().unwrap_or(0)),
            s(&c["runs"]),
            s(&c["message"]),
        ]);
    }
    out.push('\n');
    out.push_str(&if checks.is_empty() {
        "Checks: none configured\n".into()
    } else {
        checks.render()
    });

    let mut conds = Table::new(["CONDITION", "STATUS", "REASON", "MESSAGE"]);
    for c in list("conditions") {
        conds.row([
            s(&c["type"]),
            s(&c["status"]),
            s(&c["reason"]),
            s(&c["message"]),
        ]);
    }
    if !conds.is_empty() {
        out.push('\n');
        out.push_str(&conds.render());
    }

    let applied: Vec<String> = h["taints"]["applied"]
        .as_array()
        .map(|a| a.iter().map(&s).collect())
        .unwrap_or_default();
    let mut taints = Table::new(["TAINT", "EFFECT", "ON NODE"]);
    for t in h["taints"]["desired"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let id = format!("{}:{}", s(&t["key"]), s(&t["effect"]));
        let kv = match s(&t["value"]) {
            v if v.is_empty() => s(&t["key"]),
            v => format!("{}={v}", s(&t["key"])),
        };
        let on = if applied.contains(&id) { "yes" } else { "no" };
        taints.row([kv, s(&t["effect"]), on.into()]);
    }
    out.push('\n');
    out.push_str(&if taints.is_empty() {
        "Taints: none wanted by the policy\n".into()
    } else {
        taints.render()
    });
    if let Some(e) = h["taints"]["error"].as_str() {
        out.push_str(&format!("Taints refused: {e}\n"));
    }

    out.push('\n');
    out.push_str(&format!(
        "Cordoned: {}\n",
        match h["cordoned"].as_bool() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        }
    ));
    let d = &h["drain"];
    if d.is_object() {
        let failed = d["failed"]
            .as_array()
            .map(|a| a.iter().map(&s).collect::<Vec<_>>().join(", "));
        out.push_str(&format!(
            "Drain: {}: {} of {} pods evicted, {} skipped, {} pending, {} PDB refusals{}\n",
            s(&d["state"]),
            s(&d["evicted"]),
            s(&d["total"]),
            s(&d["skipped"]),
            s(&d["pending"]),
            s(&d["refusals"]),
            failed
                .filter(|f| !f.is_empty())
                .map(|f| format!("; failed: {f}"))
                .unwrap_or_default()
        ));
    } else {
        out.push_str("Drain: none\n");
    }
    for (k, label) in [
        ("last_status_write_error", "Node status write failed"),
        ("last_reload_error", "Health reload refused"),
    ] {
        if let Some(e) = h[k].as_str() {
            out.push_str(&format!("{label}: {e}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_join_checks_conditions_taints_and_drain() {
        let mut st = Status {
            join_state: JoinState::Joined,
            node_name: "w1".into(),
            pool: Some("gpu".into()),
            server: "https://198.18.0.10:6443".into(),
            cert_not_after: Some(1000 + 86400 * 300),
            last_lease_renewal: Some(997),
            ..Status::default()
        };
        let before = render(&st, 1000);
        assert!(
            before.contains("Node:                 w1 (pool gpu)"),
            "{before}"
        );
        assert!(before.contains("(in 300d0h)"), "{before}");
        assert!(before.contains("(3s ago)"), "{before}");
        assert!(before.contains("Health: not running"), "{before}");
        st.sections.insert(
            "health".into(),
            serde_json::json!({
                "checks": [{"name": "disk", "condition": "DiskPressure", "status": "problem",
                            "reason": "LowSpace", "message": "1Gi of 50Gi free\nsecond line",
                            "latency_ms": 3, "runs": 7}],
                "conditions": [{"type": "DiskPressure", "status": "True", "reason": "LowSpace", "message": "m"}],
                "taints": {"desired": [{"key": "keel.dev/disk", "value": "", "effect": "NoSchedule"}],
                           "applied": [], "error": "nodes \"w1\" is forbidden"},
                "cordoned": true,
                "drain": {"state": "running", "total": 4, "evicted": 1, "skipped": 1, "pending": 2,
                          "failed": [], "refusals": 3}
            }),
        );
        let out = render(&st, 1000);
        let line = |p: &str| {
            out.lines()
                .find(|l| l.starts_with(p))
                .unwrap_or_else(|| panic!("no {p}: {out}"))
                .to_string()
        };
        assert!(line("CHECK").contains("MESSAGE"), "{out}");
        let disk = line("disk ");
        assert!(
            disk.contains("DiskPressure") && disk.contains("problem") && disk.contains("3ms"),
            "{out}"
        );
        assert!(disk.ends_with("1Gi of 50Gi free second line"), "{out}");
        assert!(line("DiskPressure").contains("True"), "{out}");
        assert!(line("keel.dev/disk").ends_with("no"), "{out}");
        assert!(
            out.contains("Taints refused: nodes \"w1\" is forbidden"),
            "{out}"
        );
        assert!(out.contains("Cordoned: yes"), "{out}");
        assert!(
            out.contains(
                "Drain: running: 1 of 4 pods evicted, 1 skipped, 2 pending, 3 PDB refusals\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn updates_are_mirrored_to_the_file_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let h = StatusHandle::new(Status::default(), Some(path.clone()));
        h.update(|s| {
            s.join_state = JoinState::Joined;
            s.node_name = "n1".into();
        });
        h.set_section("health", serde_json::json!({"checks": 3}));
        let back = read_file(&path).unwrap();
        assert_eq!(back, h.snapshot());
        assert_eq!(back.sections["health"]["checks"], 3);
    }
}
