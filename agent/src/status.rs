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

#[cfg(test)]
mod tests {
    use super::*;

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
