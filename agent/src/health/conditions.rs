//! The condition book: the pure core that turns check outcomes into Node conditions and transition
//! events, and decides when the Node's status needs a write (a change, or the periodic refresh),
//! never once per check run. No I/O and no clock: callers pass `now`.
//!
//! Restart safety (node-problem-detector #304, #428): a condition is only ever sent after one of its
//! checks has run in this process. Conditions already on the Node are `seed`ed so that an unchanged
//! status keeps its lastTransitionTime and raises no event.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use super::outcome::{Outcome, Status};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub kind: String,
    /// "True" (problem), "False" (healthy) or "Unknown".
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(skip)]
    pub last_transition: SystemTime,
}

/// A change of a condition's status, or a problem seen by an event-only (NPD temporary) check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub condition: String,
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
    pub message: String,
    /// Warning for problems and unknowns, Normal for recovery.
    pub warning: bool,
}

#[derive(Debug)]
struct Entry {
    /// Latest outcome per check feeding this condition.
    sources: BTreeMap<String, Outcome>,
    current: Option<ConditionView>,
    /// A check ran in this process: only then is the condition ours to send.
    observed: bool,
}

#[derive(Debug)]
pub struct Book {
    entries: BTreeMap<String, Entry>,
    /// Event-only checks: last status, to emit once per problem rather than once per run.
    events: BTreeMap<String, Outcome>,
    refresh: Duration,
    last_sent: Option<Instant>,
    dirty: bool,
}

fn rank(s: Status) -> u8 {
    match s {
        Status::Ok => 0,
        Status::Unknown => 1,
        Status::Problem => 2,
    }
}

impl Book {
    pub fn new(refresh: Duration) -> Book {
        Book {
            entries: BTreeMap::new(),
            events: BTreeMap::new(),
            refresh,
            last_sent: None,
            dirty: false,
        }
    }

    pub fn set_refresh(&mut self, refresh: Duration) {
        self.refresh = refresh;
    }

    /// Takes a condition already on the Node (from before a restart) without sending it.
    pub fn seed(&mut self, view: ConditionView) {
        let e = self.entries.entry(view.kind.clone()).or_insert(Entry {
            sources: BTreeMap::new(),
            current: None,
            observed: false,
        });
        if !e.observed {
            e.current = Some(view);
        }
    }

    /// Records one check run that feeds `condition`; returns the transition if its status changed.
    pub fn observe(
        &mut self,
        check: &str,
        condition: &str,
        outcome: &Outcome,
        wall: SystemTime,
    ) -> Option<Transition> {
        let e = self.entries.entry(condition.to_string()).or_insert(Entry {
            sources: BTreeMap::new(),
            current: None,
            observed: false,
        });
        e.sources.insert(check.to_string(), outcome.clone());
        // Several checks may feed one condition (NPD permanent rules do): the worst one speaks.
        let worst = e
            .sources
            .values()
            .max_by_key(|o| rank(o.status))
            .cloned()
            .unwrap_or_else(|| outcome.clone());
        let status = worst.status.condition_status().to_string();
        let first_run = !e.observed;
        e.observed = true;
        let transition = match &e.current {
            Some(cur) if cur.status == status => {
                if cur.reason != worst.reason || cur.message != worst.message || first_run {
                    self.dirty = true;
                }
                None
            }
            prev => {
                self.dirty = true;
                Some(Transition {
                    condition: condition.to_string(),
                    from: prev.as_ref().map(|p| p.status.clone()),
                    to: status.clone(),
                    reason: worst.reason.clone(),
                    message: worst.message.clone(),
                    warning: worst.status != Status::Ok,
                })
            }
        };
        let last_transition = match (&e.current, &transition) {
            (Some(cur), None) => cur.last_transition,
            _ => wall,
        };
        e.current = Some(ConditionView {
            kind: condition.to_string(),
            status,
            reason: worst.reason,
            message: worst.message,
            last_transition,
        });
        transition
    }

    /// Records one run of an event-only check; returns an event when a problem appears or its
    /// message changes.
    pub fn observe_event(
        &mut self,
        check: &str,
        subject: &str,
        outcome: &Outcome,
    ) -> Option<Transition> {
        let prev = self.events.insert(check.to_string(), outcome.clone());
        let fire = outcome.status == Status::Problem
            && prev
                .as_ref()
                .is_none_or(|p| p.status != Status::Problem || p.message != outcome.message);
        fire.then(|| Transition {
            condition: subject.to_string(),
            from: None,
            to: "Event".into(),
            reason: outcome.reason.clone(),
            message: outcome.message.clone(),
            warning: true,
        })
    }

    /// Forgets checks that no longer exist (after a reload), so they stop voting.
    pub fn retain_checks(&mut self, keep: &dyn Fn(&str) -> bool) {
        for e in self.entries.values_mut() {
            e.sources.retain(|k, _| keep(k));
        }
        self.events.retain(|k, _| keep(k));
    }

    /// Whether the Node's status needs a write now.
    pub fn due(&self, now: Instant) -> bool {
        let any = self.entries.values().any(|e| e.observed);
        any && (self.dirty
            || self
                .last_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= self.refresh))
    }

    /// When the next refresh falls due (for the loop's timer).
    pub fn next_refresh(&self) -> Option<Instant> {
        self.last_sent.map(|t| t + self.refresh)
    }

    /// The conditions this agent owns (observed in this process).
    pub fn snapshot(&self) -> Vec<ConditionView> {
        self.entries
            .values()
            .filter(|e| e.observed)
            .filter_map(|e| e.current.clone())
            .collect()
    }

    /// Current status of a condition, if observed in this process.
    pub fn status_of(&self, condition: &str) -> Option<&str> {
        self.entries
            .get(condition)
            .filter(|e| e.observed)
            .and_then(|e| e.current.as_ref())
            .map(|c| c.status.as_str())
    }

    pub fn mark_sent(&mut self, now: Instant) {
        self.dirty = false;
        self.last_sent = Some(now);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests build their own `now`.
mod tests {
    use super::*;

    fn ok() -> Outcome {
        Outcome::ok("fine", None)
    }
    fn bad(msg: &str) -> Outcome {
        Outcome::problem("DiskSpaceLow", msg, None)
    }

    #[test]
    fn transitions_raise_events_and_writes_only_on_change_or_refresh() {
        let t0 = Instant::now();
        let w0 = SystemTime::now();
        let mut b = Book::new(Duration::from_secs(300));
        assert!(!b.due(t0), "nothing observed: nothing to send");
        let tr = b.observe("disk", "DiskSpaceLow", &ok(), w0).unwrap();
        assert_eq!((tr.from, tr.to.as_str()), (None, "False"));
        assert!(b.due(t0));
        b.mark_sent(t0);
        // Same result again: no event, no write.
        assert!(b.observe("disk", "DiskSpaceLow", &ok(), w0).is_none());
        assert!(!b.due(t0 + Duration::from_secs(10)));
        // Problem: event and write.
        let tr = b
            .observe(
                "disk",
                "DiskSpaceLow",
                &bad("5% free"),
                w0 + Duration::from_secs(20),
            )
            .unwrap();
        assert_eq!(tr.to, "True");
        assert!(tr.warning);
        assert!(b.due(t0 + Duration::from_secs(20)));
        b.mark_sent(t0 + Duration::from_secs(20));
        // Message change: a write but no event.
        assert!(b
            .observe("disk", "DiskSpaceLow", &bad("4% free"), w0)
            .is_none());
        assert!(b.due(t0 + Duration::from_secs(21)));
        b.mark_sent(t0 + Duration::from_secs(21));
        // Periodic refresh.
        assert!(!b.due(t0 + Duration::from_secs(200)));
        assert!(b.due(t0 + Duration::from_secs(321)));
        let snap = b.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].last_transition, w0 + Duration::from_secs(20));
    }

    #[test]
    fn seeded_conditions_are_not_reset_before_a_check_runs() {
        let t0 = Instant::now();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut b = Book::new(Duration::from_secs(300));
        b.seed(ConditionView {
            kind: "ReadonlyFilesystem".into(),
            status: "True".into(),
            reason: "FilesystemIsReadOnly".into(),
            message: "read-only: /".into(),
            last_transition: old,
        });
        assert!(b.snapshot().is_empty());
        assert!(!b.due(t0));
        assert_eq!(b.status_of("ReadonlyFilesystem"), None);
        // Still read-only after the restart: no event, transition time kept.
        let o = Outcome::problem("FilesystemIsReadOnly", "read-only: /", None);
        assert!(b
            .observe("ro", "ReadonlyFilesystem", &o, SystemTime::now())
            .is_none());
        assert_eq!(b.snapshot()[0].last_transition, old);
        assert!(b.due(t0));
    }

    #[test]
    fn worst_of_several_checks_sets_the_condition() {
        let w = SystemTime::now();
        let mut b = Book::new(Duration::from_secs(300));
        b.observe("a", "NTPProblem", &ok(), w);
        b.observe("b", "NTPProblem", &bad("down"), w);
        assert_eq!(b.status_of("NTPProblem"), Some("True"));
        b.observe("b", "NTPProblem", &ok(), w);
        assert_eq!(b.status_of("NTPProblem"), Some("False"));
        b.retain_checks(&|c| c == "a");
    }

    #[test]
    fn event_only_checks_fire_once_per_problem() {
        let mut b = Book::new(Duration::from_secs(300));
        assert!(b.observe_event("t", "src", &ok()).is_none());
        assert!(b.observe_event("t", "src", &bad("x")).is_some());
        assert!(b.observe_event("t", "src", &bad("x")).is_none());
        assert!(b.observe_event("t", "src", &bad("y")).is_some());
        assert!(b.observe_event("t", "src", &ok()).is_none());
        assert!(b.observe_event("t", "src", &bad("y")).is_some());
    }
}
