//! A pool version: its backends and the selection tables built for them. A pool version is immutable
//! once published; reload builds a new version that reuses the `Backend`s it keeps (health and
//! connection counts survive) and the data plane picks it up at its next accept.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::backend::Backend;
use crate::balance::{Candidates, Selector};
use crate::config;
use crate::metrics::Metrics;

pub struct Pool {
    pub cfg: config::Pool,
    pub backends: Vec<Arc<Backend>>,
    selector: Selector,
}

impl Pool {
    /// Builds a pool version, reusing `old`'s backends with the same address. `per_backend`: whether
    /// its backends get their own series in /metrics.
    pub fn build(
        cfg: &config::Pool,
        old: Option<&Pool>,
        metrics: &Metrics,
        per_backend: bool,
        changed: &Arc<Notify>,
        events: &Arc<crate::events::Events>,
    ) -> Pool {
        let mut reuse: HashMap<_, &Arc<Backend>> = old
            .map(|p| p.backends.iter().map(|b| (b.addr, b)).collect())
            .unwrap_or_default();
        let backends: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .map(|b| match reuse.remove(&b.addr) {
                Some(existing) => {
                    existing.update(b.weight, b.state);
                    existing.clone()
                }
                None => Arc::new(Backend::new(
                    &cfg.name,
                    b.addr,
                    b.weight,
                    b.state,
                    per_backend.then(|| metrics.backend(&cfg.name, &b.addr.to_string())),
                    changed.clone(),
                    events.clone(),
                )),
            })
            .collect();
        for gone in reuse.values() {
            // A removed backend is drained: what it serves may finish (TCP), but anything that
            // checks before its next use (a UDP session's next datagram) moves elsewhere.
            gone.update(gone.weight(), config::AdminState::Drain);
            if gone.metrics.is_some() {
                metrics.forget_backend(&cfg.name, &gone.addr.to_string());
            }
        }
        let selector = Selector::new(cfg.balance, &backends);
        Pool {
            cfg: cfg.clone(),
            backends,
            selector,
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn candidates(&self, key: u64) -> Candidates<'_> {
        self.selector.candidates(&self.backends, key)
    }

    /// At least one backend could take a new connection (VRRP tracks this).
    pub fn has_available(&self) -> bool {
        self.backends.iter().any(|b| b.available())
    }

    /// At least one backend could take a new connection and has passed a health check: a VIP
    /// announced by BGP waits for this, so a VM that just started (every backend taken as up until
    /// checked) attracts no traffic it cannot serve.
    pub fn has_checked_available(&self) -> bool {
        self.backends
            .iter()
            .any(|b| b.available() && b.passed_a_check())
    }

    /// A proxied connect failed: it counts against the backend like a failed check.
    pub fn connect_failed(&self, b: &Backend) {
        if let Some(m) = &b.metrics {
            m.connect_errors.inc();
        }
        if b.record(
            crate::backend::Seen::ConnectFailed,
            self.cfg.health.rise,
            self.cfg.health.fall,
        ) == Some(false)
        {
            tracing::warn!(pool = %self.cfg.name, backend = %b.addr, "backend down after failed connects");
        }
    }
}
