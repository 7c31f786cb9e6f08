//! Taint policy: a condition in a bad status for at least `after` adds a taint; the taint goes once
//! the condition has been healthy for `clear_after` (hysteresis, so a flapping check does not flap
//! taints). The policy is a pure core (condition states + `now` in, desired taints out); `merge`
//! computes the Node's new taint list without ever touching taints the policy did not add (the
//! pool's own taints); `apply` (the API writer, apart from the pure core) writes it.
//!
//! NodeRestriction forbids a node from changing its own taints after registration, so writes use a
//! separate privileged identity; without one the write is tried with the node identity, the 403 is
//! reported in status and logs, and health goes on.

use std::collections::BTreeSet;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Taint};

use crate::config::health::TaintRule;

mod apply;
pub use apply::{apply, ApplyError};

/// Node annotation listing the taints this policy added (`key:effect`, comma separated), written in
/// the same update as the taints, so that after a restart the agent still knows which are its own.
pub const OWNED_ANNOTATION: &str = "health.keel.io/taints";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct DesiredTaint {
    pub key: String,
    pub value: String,
    pub effect: &'static str,
}

impl DesiredTaint {
    pub fn id(&self) -> String {
        format!("{}:{}", self.key, self.effect)
    }
}

#[derive(Debug, Clone, Default)]
struct RuleState {
    bad_since: Option<Instant>,
    good_since: Option<Instant>,
    active: bool,
}

#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<TaintRule>,
    state: Vec<RuleState>,
}

impl Policy {
    pub fn new(rules: Vec<TaintRule>) -> Policy {
        let state = vec![RuleState::default(); rules.len()];
        Policy { rules, state }
    }

    /// Marks rules whose taint is already applied (read back from the Node after a restart), so
    /// that it stays until the condition is healthy for `clear_after` rather than vanishing.
    pub fn adopt(&mut self, applied: &BTreeSet<String>) {
        for (r, s) in self.rules.iter().zip(self.state.iter_mut()) {
            if applied.contains(&format!("{}:{}", r.key, r.effect.as_str())) {
                s.active = true;
            }
        }
    }

    /// A new rule set (reload); rules that did not change keep their timers and state.
    pub fn replace_rules(&mut self, rules: Vec<TaintRule>) {
        let old: Vec<(TaintRule, RuleState)> =
            self.rules.drain(..).zip(self.state.drain(..)).collect();
        self.state = rules
            .iter()
            .map(|r| {
                old.iter()
                    .find(|(o, _)| o == r)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default()
            })
            .collect();
        self.rules = rules;
    }

    /// Feeds the current condition statuses (None: not known yet in this process) and returns
    /// the taints the policy wants now, and when it next needs to be asked again.
    pub fn update(
        &mut self,
        status_of: &dyn Fn(&str) -> Option<String>,
        now: Instant,
    ) -> (Vec<DesiredTaint>, Option<Instant>) {
        let mut desired = Vec::new();
        let mut wake: Option<Instant> = None;
        for (r, s) in self.rules.iter().zip(self.state.iter_mut()) {
            let status = status_of(&r.condition);
            let bad = status.as_deref() == Some(r.status.as_str());
            let good = status
                .as_deref()
                .is_some_and(|st| st != r.status && st != "Unknown");
            if bad {
                s.good_since = None;
                let since = *s.bad_since.get_or_insert(now);
                if !s.active {
                    if now.saturating_duration_since(since) >= r.after {
                        s.active = true;
                    } else {
                        let at = since + r.after;
                        wake = Some(wake.map_or(at, |w| w.min(at)));
                    }
                }
            } else if good {
                s.bad_since = None;
                let since = *s.good_since.get_or_insert(now);
                if s.active {
                    if now.saturating_duration_since(since) >= r.clear_after {
                        s.active = false;
                    } else {
                        let at = since + r.clear_after;
                        wake = Some(wake.map_or(at, |w| w.min(at)));
                    }
                }
            } else {
                // Unknown or not yet checked: neither start tainting nor start clearing.
                s.bad_since = None;
                s.good_since = None;
            }
            if s.active {
                desired.push(DesiredTaint {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    effect: r.effect.as_str(),
                });
            }
        }
        desired.sort();
        desired.dedup();
        (desired, wake)
    }

    /// `key:effect` of every taint this policy may manage.
    pub fn managed(&self) -> BTreeSet<String> {
        self.rules
            .iter()
            .map(|r| format!("{}:{}", r.key, r.effect.as_str()))
            .collect()
    }
}

/// Parses the owned-taints annotation.
pub fn owned_from(node: &Node) -> BTreeSet<String> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OWNED_ANNOTATION))
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The result of merging desired taints into a Node's current ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    pub taints: Vec<Taint>,
    pub owned: BTreeSet<String>,
    pub changed: bool,
}

/// New taint list: removes owned taints that are no longer desired, adds desired ones not present,
/// updates the value of owned ones; a taint with the same key and effect that the policy did not
/// add (the pool's own) is left as it is and not claimed.
pub fn merge(current: &[Taint], owned: &BTreeSet<String>, desired: &[DesiredTaint]) -> Merge {
    let id = |t: &Taint| format!("{}:{}", t.key, t.effect);
    let want: BTreeSet<String> = desired.iter().map(DesiredTaint::id).collect();
    let mut taints = Vec::new();
    let mut new_owned = BTreeSet::new();
    let mut changed = false;
    for t in current {
        let i = id(t);
        if owned.contains(&i) {
            if let Some(d) = desired.iter().find(|d| d.id() == i) {
                let value = (!d.value.is_empty()).then(|| d.value.clone());
                if t.value != value {
                    changed = true;
                }
                taints.push(Taint { value, ..t.clone() });
                new_owned.insert(i);
            } else {
                changed = true; // ours and no longer wanted: drop it
            }
        } else {
            taints.push(t.clone());
        }
    }
    for d in desired {
        if !current.iter().any(|t| id(t) == d.id()) {
            taints.push(Taint {
                key: d.key.clone(),
                value: (!d.value.is_empty()).then(|| d.value.clone()),
                effect: d.effect.to_string(),
                time_added: None,
            });
            new_owned.insert(d.id());
            changed = true;
        }
    }
    // Owned entries that vanished from the Node (removed by someone else) are forgotten.
    new_owned.retain(|i| want.contains(i));
    if new_owned != *owned {
        changed = true;
    }
    Merge {
        taints,
        owned: new_owned,
        changed,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests build their own `now`.
mod tests {
    use super::*;
    use crate::config::health::TaintEffect;
    use std::time::Duration;

    fn rule(after: u64, clear: u64) -> TaintRule {
        TaintRule {
            condition: "DiskSpaceLow".into(),
            status: "True".into(),
            after: Duration::from_secs(after),
            clear_after: Duration::from_secs(clear),
            key: "keel.io/disk-low".into(),
            value: "true".into(),
            effect: TaintEffect::NoSchedule,
        }
    }

    fn at(status: &'static str) -> impl Fn(&str) -> Option<String> {
        move |_| Some(status.to_string())
    }

    #[test]
    fn taint_after_delay_and_clear_after_hysteresis() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut p = Policy::new(vec![rule(10, 30)]);
        let (d, wake) = p.update(&at("True"), s(0));
        assert!(d.is_empty());
        assert_eq!(wake, Some(s(10)));
        assert!(p.update(&at("True"), s(9)).0.is_empty());
        let (d, _) = p.update(&at("True"), s(10));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].id(), "keel.io/disk-low:NoSchedule");
        // Healthy, but not for long enough: the taint stays.
        let (d, wake) = p.update(&at("False"), s(11));
        assert_eq!(d.len(), 1);
        assert_eq!(wake, Some(s(41)));
        // A flap back to bad resets the healthy clock.
        assert_eq!(p.update(&at("True"), s(20)).0.len(), 1);
        assert_eq!(p.update(&at("False"), s(21)).0.len(), 1);
        assert_eq!(p.update(&at("False"), s(50)).0.len(), 1);
        assert!(p.update(&at("False"), s(51)).0.is_empty());
    }

    #[test]
    fn flapping_below_the_delay_never_taints() {
        let t0 = Instant::now();
        let mut p = Policy::new(vec![rule(10, 30)]);
        for i in 0..100u64 {
            let st = if i % 2 == 0 { "True" } else { "False" };
            let (d, _) = p.update(&at(st), t0 + Duration::from_secs(i * 3));
            assert!(d.is_empty(), "tainted at step {i}");
        }
    }

    #[test]
    fn unknown_neither_taints_nor_clears() {
        let t0 = Instant::now();
        let mut p = Policy::new(vec![rule(0, 5)]);
        assert_eq!(p.update(&at("True"), t0).0.len(), 1);
        assert_eq!(
            p.update(&at("Unknown"), t0 + Duration::from_secs(100))
                .0
                .len(),
            1
        );
        assert_eq!(
            p.update(&|_| None, t0 + Duration::from_secs(200)).0.len(),
            1
        );
        let mut q = Policy::new(vec![rule(5, 5)]);
        assert!(q
            .update(&at("Unknown"), t0 + Duration::from_secs(100))
            .0
            .is_empty());
    }

    #[test]
    fn adopted_taint_survives_restart_until_healthy_long_enough() {
        let t0 = Instant::now();
        let mut p = Policy::new(vec![rule(10, 30)]);
        p.adopt(&["keel.io/disk-low:NoSchedule".to_string()].into());
        assert_eq!(p.update(&|_| None, t0).0.len(), 1);
        assert_eq!(p.update(&at("False"), t0).0.len(), 1);
        assert!(p
            .update(&at("False"), t0 + Duration::from_secs(30))
            .0
            .is_empty());
    }

    fn taint(key: &str, effect: &str, value: Option<&str>) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: value.map(str::to_string),
            time_added: None,
        }
    }

    #[test]
    fn merge_never_touches_taints_it_did_not_add() {
        let pool = taint("sku", "NoSchedule", Some("Windows"));
        let same_key_not_ours = taint("keel.io/disk-low", "NoSchedule", Some("manual"));
        let desired = vec![DesiredTaint {
            key: "keel.io/disk-low".into(),
            value: "true".into(),
            effect: "NoSchedule",
        }];
        // Someone else's taint with our key: left alone, not claimed.
        let m = merge(
            &[pool.clone(), same_key_not_ours.clone()],
            &BTreeSet::new(),
            &desired,
        );
        assert_eq!(m.taints, vec![pool.clone(), same_key_not_ours]);
        assert!(m.owned.is_empty());
        // Add ours next to the pool's; then remove only ours.
        let m = merge(std::slice::from_ref(&pool), &BTreeSet::new(), &desired);
        assert!(m.changed);
        assert_eq!(m.taints.len(), 2);
        assert_eq!(m.owned.len(), 1);
        let m2 = merge(&m.taints, &m.owned, &[]);
        assert!(m2.changed);
        assert_eq!(m2.taints, vec![pool.clone()]);
        assert!(m2.owned.is_empty());
        // Nothing to do: unchanged.
        let m3 = merge(&[pool], &BTreeSet::new(), &[]);
        assert!(!m3.changed);
    }

    #[test]
    fn reload_keeps_state_of_unchanged_rules() {
        let t0 = Instant::now();
        let mut p = Policy::new(vec![rule(0, 30)]);
        assert_eq!(p.update(&at("True"), t0).0.len(), 1);
        let mut other = rule(0, 30);
        other.key = "keel.io/other".into();
        other.condition = "Other".into();
        p.replace_rules(vec![rule(0, 30), other]);
        let (d, _) = p.update(&|c| (c == "DiskSpaceLow").then(|| "False".to_string()), t0);
        assert_eq!(
            d.len(),
            1,
            "the unchanged rule's taint stays until clear_after"
        );
    }
}
