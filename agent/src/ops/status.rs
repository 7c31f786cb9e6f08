//! The health part of the agent's status, as `GET /v1/status` shows it. The health loop writes it
//! (short critical sections, plain data); readers clone a snapshot, so a slow API client never holds
//! up the loop.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::health::conditions::ConditionView;
use crate::ops::drain::Progress;
use crate::ops::taints::DesiredTaint;

/// A JSON snapshot of the join state (the join code's status), shown under `join` in `/v1/status`.
pub type JoinStatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckView {
    pub name: String,
    pub condition: String,
    pub status: &'static str,
    pub reason: String,
    pub message: String,
    pub latency_ms: u64,
    pub runs: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TaintView {
    /// What the policy wants on the Node now.
    pub desired: Vec<DesiredTaint>,
    /// `key:effect` of the taints the agent added and the Node has.
    pub applied: Vec<String>,
    /// Why the desired taints are not on the Node, when they are not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthStatus {
    pub node: String,
    pub checks: Vec<CheckView>,
    pub conditions: Vec<ConditionView>,
    pub taints: TaintView,
    pub cordoned: Option<bool>,
    pub drain: Option<Progress>,
    pub last_status_write_error: Option<String>,
    pub last_reload_error: Option<String>,
    pub reloads: u64,
}

/// Shared between the health loop (writer) and the orchestrator API (reader).
#[derive(Debug, Clone, Default)]
pub struct SharedStatus(Arc<Mutex<HealthStatus>>);

impl SharedStatus {
    pub fn update(&self, f: impl FnOnce(&mut HealthStatus)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
    pub fn snapshot(&self) -> HealthStatus {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
