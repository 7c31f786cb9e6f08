//! The most recent operator-relevant events (backend up/down, VRRP transitions, reloads, runtime
//! changes) in a bounded ring, for the status page. The log has them all; this keeps the last few.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// Events kept; older ones fall off.
pub const KEPT: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Backend,
    Vrrp,
    Reload,
    Control,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Unix time in seconds.
    pub at: f64,
    pub kind: Kind,
    /// What it concerns: `pool/address`, a router's name, the config file.
    pub subject: String,
    pub message: String,
}

#[derive(Default)]
pub struct Events {
    ring: Mutex<VecDeque<Event>>,
}

pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

impl Events {
    pub fn push(&self, kind: Kind, subject: impl Into<String>, message: impl Into<String>) {
        let e = Event {
            at: unix(SystemTime::now()),
            kind,
            subject: subject.into(),
            message: message.into(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= KEPT {
            ring.pop_front();
        }
        ring.push_back(e);
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_hundred_newest_first() {
        let e = Events::default();
        for i in 0..250 {
            e.push(Kind::Backend, format!("p/{i}"), "down");
        }
        let r = e.recent();
        assert_eq!(r.len(), KEPT);
        assert_eq!(r[0].subject, "p/249");
        assert_eq!(r[KEPT - 1].subject, "p/150");
    }
}
