//! The `vrrp:` section of keel-lb's config: raw serde structs, then one `validate`.

use keel_common::Diagnostics;

/// Raw `vrrp:` section (fields to be filled by the VRRP work).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpFile {}

/// Validated VRRP config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VrrpConfig {}

impl VrrpConfig {
    /// Pool names referenced by `track` clauses; keel-lb checks that they exist.
    pub fn tracked_pools(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Validates the section; errors go to `diag` under `field` (e.g. `vrrp.routers[0].vrid`).
pub fn validate(_raw: &VrrpFile, _field: &str, _diag: &mut Diagnostics) -> Option<VrrpConfig> {
    Some(VrrpConfig {})
}
