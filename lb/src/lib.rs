//! keel-lb: an L4 TCP/UDP load balancer (balancing, health checks, hot reload, metrics) with VRRP
//! virtual-IP failover from `keel-vrrp`. `main.rs` is a thin CLI over [`run`].

pub mod admin;
pub mod backend;
pub mod balance;
pub mod bgp;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod demo;
pub mod events;
pub mod frontend;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod nat;
pub mod nft;
pub mod overrides;
pub mod pool;
pub mod proxy_protocol;
pub mod relay;
pub mod server;
pub mod services;
pub mod sockmap;
pub mod splice;
pub mod status;
pub mod status_page;
pub mod status_text;
pub mod udp;

use std::sync::Arc;

/// Runs keel-lb with a validated config until SIGTERM/SIGINT and the drain that follows.
pub async fn run(cfg: config::Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let metrics = Arc::new(metrics::Metrics::new());
    let admin_cfg = cfg.admin.clone();
    let metrics_listen = cfg.metrics_listen;
    let server = server::Server::start(cfg, metrics.clone()).await?;
    let services = server.services_shared();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let base = admin::Admin {
        metrics,
        services,
        commands: tx,
        status: server.status(),
        token: admin_cfg.as_ref().and_then(|a| a.token.clone()),
        control: true,
    };
    if let Some(a) = admin_cfg {
        let l = admin::bind(a.listen)
            .await
            .with_context(|| format!("admin listener {}", a.listen))?;
        tracing::info!(listen = %a.listen, "admin listening (status page /, /v1/status, /metrics, /healthz, /services, POST /reload, POST /handover, POST /resume, POST /v1/backends/POOL/ADDR)");
        tokio::spawn(admin::serve(l, base.clone()));
    }
    if let Some(listen) = metrics_listen {
        let l = admin::bind(listen)
            .await
            .with_context(|| format!("metrics listener {listen}"))?;
        tracing::info!(%listen, "metrics listening (status page /, /v1/status, /metrics, /healthz, /services; no control)");
        tokio::spawn(admin::serve(
            l,
            admin::Admin {
                control: false,
                ..base
            },
        ));
    }
    // Type=notify: systemd reports the unit active only now, with every listener bound (a frontend
    // that cannot bind failed start above) and VRRP started (or retrying with its backoff, logged).
    if let Err(e) = keel_common::sd_notify::sd_notify("READY=1") {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }
    server.run(rx).await?;
    Ok(())
}
