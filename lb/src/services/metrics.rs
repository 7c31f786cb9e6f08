//! The Services provider's own series (per-Service traffic is in the frontend and backend series,
//! whose names carry `namespace/name`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct SvcMetrics {
    pub services: IntGauge,
    pub nodes: IntGauge,
    pub leader: IntGauge,
    pub reconcile_seconds: Histogram,
    pub sync_failures: IntCounter,
    pub applied_rules: IntGauge,
    pub pool_addresses: IntGaugeVec,
}

impl SvcMetrics {
    pub fn new(registry: &Registry) -> SvcMetrics {
        let m = SvcMetrics {
            services: IntGauge::new(
                "keel_lb_services",
                "Services of type LoadBalancer that keel-lb serves",
            )
            .expect("static metric"),
            nodes: IntGauge::new(
                "keel_lb_service_nodes",
                "Nodes eligible as Service backends (not excluded, not being deleted)",
            )
            .expect("static metric"),
            leader: IntGauge::new(
                "keel_lb_services_writer",
                "1 while this keel-lb holds the writer Lease (writes status, finalizers, Events)",
            )
            .expect("static metric"),
            reconcile_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "keel_lb_service_reconcile_seconds",
                    "Time to reconcile one Service, API writes included",
                )
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )
            .expect("static metric"),
            sync_failures: IntCounter::new(
                "keel_lb_service_sync_failures_total",
                "Service syncs that failed (no address, a clash with the file, an API error)",
            )
            .expect("static metric"),
            applied_rules: IntGauge::new(
                "keel_lb_service_rules_applied",
                "Services whose rules the data plane is running",
            )
            .expect("static metric"),
            pool_addresses: IntGaugeVec::new(
                Opts::new(
                    "keel_lb_address_pool_addresses",
                    "Addresses of each Service address pool, by state (used, size)",
                ),
                &["pool", "state"],
            )
            .expect("static metric"),
        };
        for c in [
            Box::new(m.services.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.nodes.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.reconcile_seconds.clone()),
            Box::new(m.sync_failures.clone()),
            Box::new(m.applied_rules.clone()),
            Box::new(m.pool_addresses.clone()),
        ] {
            // Registered once per process; a second registration (tests) keeps the first.
            let _ = registry.register(c);
        }
        m
    }
}
