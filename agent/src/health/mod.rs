//! Node health: checks, conditions, taint policy (filled by the health work).
//!
//! CONTRACT with the rest of the agent (config.rs and main.rs call these):
//! - `HealthFile` is the raw `health:` section of the agent config (serde, deny_unknown_fields);
//! - `validate` turns it into `HealthConfig`, recording errors under the given field prefix;
//! - `run` is spawned by `keel-agent run` once the node is joined and registered, and returns when
//!   `cancel` fires.

use keel_common::Diagnostics;

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthConfig {}

pub fn validate(_raw: &HealthFile, _field: &str, _diag: &mut Diagnostics) -> HealthConfig {
    HealthConfig {}
}
