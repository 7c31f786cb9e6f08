//! Prometheus metrics of the virtual routers, registered once into keel-lb's registry.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub state: IntGaugeVec,
    pub transitions: IntCounterVec,
    pub adverts_sent: IntCounterVec,
    pub adverts_received: IntCounterVec,
    pub packet_errors: IntCounterVec,
    pub last_transition: GaugeVec,
    pub priority: IntGaugeVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let router = &["router", "vrid", "interface", "family"];
        let m = Metrics {
            state: IntGaugeVec::new(
                Opts::new(
                    "keel_vrrp_state",
                    "State of the virtual router: 0 init/stopped, 1 backup, 2 master, 3 fault.",
                ),
                router,
            )?,
            transitions: IntCounterVec::new(
                Opts::new(
                    "keel_vrrp_transitions_total",
                    "State transitions of the virtual router.",
                ),
                router,
            )?,
            adverts_sent: IntCounterVec::new(
                Opts::new(
                    "keel_vrrp_adverts_sent_total",
                    "VRRP advertisements sent (one per destination).",
                ),
                router,
            )?,
            adverts_received: IntCounterVec::new(
                Opts::new(
                    "keel_vrrp_adverts_received_total",
                    "Valid VRRP advertisements received for the virtual router.",
                ),
                router,
            )?,
            packet_errors: IntCounterVec::new(
                Opts::new(
                    "keel_vrrp_packet_errors_total",
                    "Received VRRP packets dropped, by reason (bad_ttl, bad_checksum, truncated, bad_version, wrong_vrid, address_mismatch, auth, interval_mismatch, ...).",
                ),
                &["interface", "family", "kind"],
            )?,
            last_transition: GaugeVec::new(
                Opts::new(
                    "keel_vrrp_last_transition_timestamp_seconds",
                    "Unix time of the virtual router's last state transition.",
                ),
                router,
            )?,
            priority: IntGaugeVec::new(
                Opts::new(
                    "keel_vrrp_priority",
                    "Effective priority (configured minus failed tracked weights).",
                ),
                router,
            )?,
        };
        registry.register(Box::new(m.state.clone()))?;
        registry.register(Box::new(m.transitions.clone()))?;
        registry.register(Box::new(m.adverts_sent.clone()))?;
        registry.register(Box::new(m.adverts_received.clone()))?;
        registry.register(Box::new(m.packet_errors.clone()))?;
        registry.register(Box::new(m.last_transition.clone()))?;
        registry.register(Box::new(m.priority.clone()))?;
        Ok(m)
    }

    /// Drops every series: the `vrrp:` section was removed, so no router of this process exists
    /// (stale `state` series would read as routers stopped, and page as "no master").
    pub fn clear(&self) {
        self.state.reset();
        self.transitions.reset();
        self.adverts_sent.reset();
        self.adverts_received.reset();
        self.packet_errors.reset();
        self.last_transition.reset();
        self.priority.reset();
    }

    /// Drops one router's series (removed by a reload).
    pub fn remove_router(&self, labels: &[&str]) {
        let _ = self.state.remove_label_values(labels);
        let _ = self.transitions.remove_label_values(labels);
        let _ = self.adverts_sent.remove_label_values(labels);
        let _ = self.adverts_received.remove_label_values(labels);
        let _ = self.last_transition.remove_label_values(labels);
        let _ = self.priority.remove_label_values(labels);
    }
}
