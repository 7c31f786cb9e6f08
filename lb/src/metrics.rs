//! Prometheus metrics. Collectors are registered once; each frontend and backend resolves its label
//! children when it is built, so the data plane only bumps atomics (no label lookup per connection).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Metrics {
    pub registry: Registry,
    fe_current: IntGaugeVec,
    fe_total: IntCounterVec,
    fe_bytes_in: IntCounterVec,
    fe_bytes_out: IntCounterVec,
    fe_accept_errors: IntCounterVec,
    fe_dropped: IntCounterVec,
    fe_no_backend: IntCounterVec,
    udp: [IntCounterVec; 5],
    udp_rcvbuf: IntGaugeVec,
    fe_sessions_shut_down: IntCounterVec,
    fe_spliced: IntCounterVec,
    fe_splice_fallbacks: IntCounterVec,
    be_current: IntGaugeVec,
    be_total: IntCounterVec,
    be_bytes_in: IntCounterVec,
    be_bytes_out: IntCounterVec,
    be_connect_errors: IntCounterVec,
    be_up: IntGaugeVec,
    be_check_seconds: HistogramVec,
    be_check_failures: IntCounterVec,
    pub pool_up: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub last_reload_ok: IntGauge,
    pub vrrp_configured: IntGauge,
    pub vrrp_running: IntGauge,
    /// `mode: nat`: 1 when the nftables table is as the config and health say.
    pub nat_installed: IntGauge,
    /// `mode: nat`: connections (UDP flows) given to each backend, from the rules' counters.
    pub nat_connections: IntCounterVec,
    pub nat_flows_cut: IntCounterVec,
    pub nat_open_flows: IntGaugeVec,
}

#[derive(Clone)]
pub struct FrontendMetrics {
    pub current: IntGauge,
    pub total: IntCounter,
    /// Bytes from clients.
    pub bytes_in: IntCounter,
    /// Bytes to clients.
    pub bytes_out: IntCounter,
    pub accept_errors: IntCounter,
    /// UDP datagrams dropped (session limit reached or no backend).
    pub dropped: IntCounter,
    /// Connections closed because no backend could be reached.
    pub no_backend: IntCounter,
    pub udp: UdpMetrics,
    /// Connections cut because their backend was marked down (`shutdown_sessions_on_down`).
    pub sessions_shut_down: IntCounter,
    /// Connections spliced in the kernel (`splice: kernel`).
    pub spliced: IntCounter,
    /// Connections of a `splice: kernel` frontend relayed in user space instead.
    pub splice_fallbacks: IntCounter,
}

/// A UDP frontend's session table and socket (unregistered, so without series, on TCP frontends).
#[derive(Clone)]
pub struct UdpMetrics {
    pub evictions: IntCounter,
    pub source_limited: IntCounter,
    pub repicks: IntCounter,
    pub closed_after_replies: IntCounter,
    pub kernel_drops: IntCounter,
    pub receive_buffer: IntGauge,
}

const UDP_COUNTERS: [(&str, &str); 5] = [
    ("keel_lb_frontend_udp_evictions_total", "UDP sessions evicted, least recently used first, to make room in a full session table."),
    ("keel_lb_frontend_udp_source_limited_total", "UDP datagrams dropped because their client address holds max_sessions_per_source sessions."),
    ("keel_lb_frontend_udp_repicks_total", "UDP sessions moved to another backend because theirs went down or was drained."),
    ("keel_lb_frontend_udp_closed_after_replies_total", "UDP sessions closed after close_after_replies replies."),
    ("keel_lb_frontend_udp_kernel_drops_total", "Datagrams the kernel dropped because the listening socket's receive buffer was full."),
];
const UDP_RCVBUF: (&str, &str) = (
    "keel_lb_frontend_udp_receive_buffer_bytes",
    "Receive buffer of the UDP listening socket as the kernel reports it (twice the configured size).",
);

#[derive(Clone)]
pub struct BackendMetrics {
    pub current: IntGauge,
    pub total: IntCounter,
    /// Bytes received from the backend.
    pub bytes_in: IntCounter,
    /// Bytes sent to the backend.
    pub bytes_out: IntCounter,
    pub connect_errors: IntCounter,
    pub up: IntGauge,
    pub check_seconds: Histogram,
    pub check_failures: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are fixed and distinct, so registration cannot collide; if it ever did, the metric would
    // merely be missing from /metrics, which is better than refusing to balance traffic.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let fe = ["frontend"];
        let be = ["pool", "backend"];
        let gv = |name: &str, help: &str, l: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), l).expect("static metric definition"),
            )
        };
        let cv = |name: &str, help: &str, l: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), l).expect("static metric definition"),
            )
        };
        let m = Metrics {
            fe_current: gv(
                "keel_lb_frontend_connections",
                "Open client connections (UDP: sessions).",
                &fe,
            ),
            fe_total: cv(
                "keel_lb_frontend_connections_total",
                "Accepted client connections (UDP: sessions).",
                &fe,
            ),
            fe_bytes_in: cv(
                "keel_lb_frontend_received_bytes_total",
                "Bytes received from clients.",
                &fe,
            ),
            fe_bytes_out: cv(
                "keel_lb_frontend_sent_bytes_total",
                "Bytes sent to clients.",
                &fe,
            ),
            fe_accept_errors: cv(
                "keel_lb_frontend_accept_errors_total",
                "Failed accept calls (e.g. out of file descriptors).",
                &fe,
            ),
            fe_dropped: cv(
                "keel_lb_frontend_dropped_datagrams_total",
                "UDP datagrams dropped (session limit or no backend).",
                &fe,
            ),
            fe_no_backend: cv(
                "keel_lb_frontend_no_backend_total",
                "Client connections closed because no backend could be reached.",
                &fe,
            ),
            udp: UDP_COUNTERS.map(|(name, help)| cv(name, help, &fe)),
            udp_rcvbuf: gv(UDP_RCVBUF.0, UDP_RCVBUF.1, &fe),
            fe_sessions_shut_down: cv(
                "keel_lb_frontend_sessions_shut_down_total",
                "Client connections cut because health checks marked their backend down (the pool's shutdown_sessions_on_down).",
                &fe,
            ),
            fe_spliced: cv(
                "keel_lb_frontend_spliced_total",
                "Client connections whose data the kernel moved (splice: kernel).",
                &fe,
            ),
            fe_splice_fallbacks: cv(
                "keel_lb_frontend_splice_fallbacks_total",
                "Client connections of a splice: kernel frontend relayed in user space instead (BPF unavailable, or splicing the sockets failed).",
                &fe,
            ),
            be_current: gv(
                "keel_lb_backend_connections",
                "Open connections to the backend.",
                &be,
            ),
            be_total: cv(
                "keel_lb_backend_connections_total",
                "Connections established to the backend.",
                &be,
            ),
            be_bytes_in: cv(
                "keel_lb_backend_received_bytes_total",
                "Bytes received from the backend.",
                &be,
            ),
            be_bytes_out: cv(
                "keel_lb_backend_sent_bytes_total",
                "Bytes sent to the backend.",
                &be,
            ),
            be_connect_errors: cv(
                "keel_lb_backend_connect_errors_total",
                "Failed connects to the backend (each retried on another backend).",
                &be,
            ),
            be_up: gv(
                "keel_lb_backend_up",
                "1 when the backend passes its health checks, else 0.",
                &be,
            ),
            be_check_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "keel_lb_backend_check_duration_seconds",
                        "Health check latency.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ]),
                    &be,
                )
                .expect("static metric definition"),
            ),
            be_check_failures: cv(
                "keel_lb_backend_check_failures_total",
                "Failed health checks.",
                &be,
            ),
            pool_up: gv(
                "keel_lb_pool_up",
                "1 when the pool has at least one healthy backend in rotation.",
                &["pool"],
            ),
            reloads: cv(
                "keel_lb_reloads_total",
                "Config reloads by result (success, failure).",
                &["result"],
            ),
            last_reload_ok: reg(
                &r,
                IntGauge::new(
                    "keel_lb_config_last_reload_successful",
                    "1 when the last reload succeeded.",
                )
                .expect("static metric definition"),
            ),
            vrrp_configured: reg(
                &r,
                IntGauge::new(
                    "keel_lb_vrrp_routers_configured",
                    "VRRP routers the config asks for.",
                )
                .expect("static metric definition"),
            ),
            nat_installed: reg(
                &r,
                IntGauge::new(
                    "keel_lb_nat_rules_installed",
                    "1 when the mode: nat frontends' nftables rules are installed as the config and backend health say (also 1 without such frontends); 0 when nft failed or is missing (the previous rules stay) or forwarding is off.",
                )
                .expect("static metric definition"),
            ),
            nat_connections: cv(
                "keel_lb_nat_connections_total",
                "Connections (UDP flows) the kernel gave to a backend of a mode: nat frontend, read from the rules' counters every second (those in the second before a rule change can be missed).",
                &["frontend", "backend"],
            ),
            nat_flows_cut: cv(
                "keel_lb_nat_flows_cut_total",
                "Times the established flows a mode: nat frontend gave a backend were ended (conntrack entries deleted): UDP when the backend went down, was drained or removed; TCP after shutdown_sessions_on_down.",
                &["frontend", "backend"],
            ),
            nat_open_flows: gv(
                "keel_lb_nat_open_flows",
                "Open flows of a mode: nat frontend on a backend: its conntrack entries (TCP ones in TIME_WAIT or CLOSE left out), counted every 5 seconds.",
                &["frontend", "backend"],
            ),
            vrrp_running: reg(
                &r,
                IntGauge::new(
                    "keel_lb_vrrp_routers_running",
                    "VRRP routers running (backup or master); below configured while VRRP failed to start, an interface is missing or after a handover.",
                )
                .expect("static metric definition"),
            ),
            registry: r,
        };
        // Both results exist from the start so that rate() and alerts work before the first reload.
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    /// Whether every configured VRRP router runs (`/healthz` answers 503 otherwise).
    pub fn vrrp_healthy(&self) -> Result<(), String> {
        let (want, got) = (self.vrrp_configured.get(), self.vrrp_running.get());
        if got < want {
            Err(format!("vrrp: {got} of {want} routers running"))
        } else {
            Ok(())
        }
    }

    /// A frontend's series; UDP ones only for a UDP frontend.
    pub fn frontend(&self, name: &str, protocol: crate::config::Protocol) -> FrontendMetrics {
        let l = [name];
        let udp = if protocol == crate::config::Protocol::Udp {
            let [evictions, source_limited, repicks, closed_after_replies, kernel_drops] =
                self.udp.each_ref().map(|c| c.with_label_values(&l));
            UdpMetrics {
                evictions,
                source_limited,
                repicks,
                closed_after_replies,
                kernel_drops,
                receive_buffer: self.udp_rcvbuf.with_label_values(&l),
            }
        } else {
            UdpMetrics::detached()
        };
        FrontendMetrics {
            current: self.fe_current.with_label_values(&l),
            total: self.fe_total.with_label_values(&l),
            bytes_in: self.fe_bytes_in.with_label_values(&l),
            bytes_out: self.fe_bytes_out.with_label_values(&l),
            accept_errors: self.fe_accept_errors.with_label_values(&l),
            dropped: self.fe_dropped.with_label_values(&l),
            no_backend: self.fe_no_backend.with_label_values(&l),
            udp,
            sessions_shut_down: self.fe_sessions_shut_down.with_label_values(&l),
            spliced: self.fe_spliced.with_label_values(&l),
            splice_fallbacks: self.fe_splice_fallbacks.with_label_values(&l),
        }
    }

    pub fn backend(&self, pool: &str, backend: &str) -> BackendMetrics {
        let l = [pool, backend];
        BackendMetrics {
            current: self.be_current.with_label_values(&l),
            total: self.be_total.with_label_values(&l),
            bytes_in: self.be_bytes_in.with_label_values(&l),
            bytes_out: self.be_bytes_out.with_label_values(&l),
            connect_errors: self.be_connect_errors.with_label_values(&l),
            up: self.be_up.with_label_values(&l),
            check_seconds: self.be_check_seconds.with_label_values(&l),
            check_failures: self.be_check_failures.with_label_values(&l),
        }
    }

    /// Drops a removed backend's series from /metrics (its draining connections still count into
    /// the detached children, which is harmless).
    pub fn forget_backend(&self, pool: &str, backend: &str) {
        let l = [pool, backend];
        let _ = self.be_current.remove_label_values(&l);
        let _ = self.be_total.remove_label_values(&l);
        let _ = self.be_bytes_in.remove_label_values(&l);
        let _ = self.be_bytes_out.remove_label_values(&l);
        let _ = self.be_connect_errors.remove_label_values(&l);
        let _ = self.be_up.remove_label_values(&l);
        let _ = self.be_check_seconds.remove_label_values(&l);
        let _ = self.be_check_failures.remove_label_values(&l);
    }

    pub fn forget_frontend(&self, name: &str) {
        let l = [name];
        let _ = self.fe_current.remove_label_values(&l);
        let _ = self.fe_total.remove_label_values(&l);
        let _ = self.fe_bytes_in.remove_label_values(&l);
        let _ = self.fe_bytes_out.remove_label_values(&l);
        let _ = self.fe_accept_errors.remove_label_values(&l);
        let _ = self.fe_dropped.remove_label_values(&l);
        let _ = self.fe_no_backend.remove_label_values(&l);
        for c in &self.udp {
            let _ = c.remove_label_values(&l);
        }
        let _ = self.udp_rcvbuf.remove_label_values(&l);
        let _ = self.fe_sessions_shut_down.remove_label_values(&l);
        let _ = self.fe_spliced.remove_label_values(&l);
        let _ = self.fe_splice_fallbacks.remove_label_values(&l);
    }

    pub fn encode(&self) -> String {
        let mut buf = String::new();
        let families = self.registry.gather();
        if prometheus::TextEncoder::new()
            .encode_utf8(&families, &mut buf)
            .is_err()
        {
            buf.clear();
        }
        buf
    }
}

impl UdpMetrics {
    fn detached() -> UdpMetrics {
        let c = |(name, help): (&str, &str)| {
            IntCounter::new(name, help).expect("static metric definition")
        };
        let [evictions, source_limited, repicks, closed_after_replies, kernel_drops] =
            UDP_COUNTERS.map(c);
        UdpMetrics {
            evictions,
            source_limited,
            repicks,
            closed_after_replies,
            kernel_drops,
            receive_buffer: IntGauge::new(UDP_RCVBUF.0, UDP_RCVBUF.1)
                .expect("static metric definition"),
        }
    }
}

impl BackendMetrics {
    /// Metrics that belong to no registry (unit tests, and backends built outside a server).
    pub fn detached() -> BackendMetrics {
        Metrics::new().backend("test", "test")
    }
}
