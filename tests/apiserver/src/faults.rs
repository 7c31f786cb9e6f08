//! Fault injection: latency, failed requests (429 with Retry-After, 500), dropped connections, pauses.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct FailRule {
    remaining: u32,
    status: u16,
    path_contains: Option<String>,
}

#[derive(Debug, Default)]
struct FaultState {
    latency: Duration,
    fail: Vec<FailRule>,
    drop_next: u32,
    paused_until: Option<Instant>,
}

/// Clone handle to the server's faults; changes apply to the next requests.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<FaultState>>);

#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    Serve,
    Fail(u16),
    Drop,
}

#[derive(Debug)]
pub(crate) struct Decision {
    pub latency: Duration,
    pub pause_until: Option<Instant>,
    pub action: Action,
}

impl Faults {
    fn with<R>(&self, f: impl FnOnce(&mut FaultState) -> R) -> R {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Delay every request by `d` before it is handled.
    pub fn set_latency(&self, d: Duration) {
        self.with(|s| s.latency = d);
    }

    /// Answer the next `n` requests (whose path contains `path_contains`, if given) with `status`
    /// (429 carries `Retry-After: 1`; any other code a Status with that code).
    pub fn fail_next(&self, n: u32, status: u16, path_contains: Option<&str>) {
        self.with(|s| {
            s.fail.push(FailRule {
                remaining: n,
                status,
                path_contains: path_contains.map(String::from),
            })
        });
    }

    /// Close the connection of the next `n` requests without answering.
    pub fn drop_next(&self, n: u32) {
        self.with(|s| s.drop_next += n);
    }

    /// Hold every request (they hang, then are served) for `d` from now.
    pub fn pause(&self, d: Duration) {
        self.with(|s| s.paused_until = Some(Instant::now() + d));
    }

    /// Remove every fault.
    pub fn clear(&self) {
        self.with(|s| *s = FaultState::default());
    }

    pub(crate) fn decide(&self, path: &str) -> Decision {
        self.with(|s| {
            let pause_until = s.paused_until.filter(|t| *t > Instant::now());
            let mut action = Action::Serve;
            if s.drop_next > 0 {
                s.drop_next -= 1;
                action = Action::Drop;
            } else if let Some(r) = s.fail.iter_mut().find(|r| {
                r.remaining > 0 && r.path_contains.as_deref().is_none_or(|p| path.contains(p))
            }) {
                r.remaining -= 1;
                action = Action::Fail(r.status);
            }
            s.fail.retain(|r| r.remaining > 0);
            Decision {
                latency: s.latency,
                pause_until,
                action,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rules_match_paths_and_count_down() {
        let f = Faults::default();
        f.fail_next(2, 429, Some("/leases"));
        f.drop_next(1);
        assert_eq!(f.decide("/api/v1/nodes").action, Action::Drop);
        assert_eq!(f.decide("/api/v1/nodes").action, Action::Serve);
        assert_eq!(
            f.decide("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1")
                .action,
            Action::Fail(429)
        );
        assert_eq!(f.decide("/x/leases").action, Action::Fail(429));
        assert_eq!(f.decide("/x/leases").action, Action::Serve);
    }
}
