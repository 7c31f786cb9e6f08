//! keel-lb: an L4 TCP/UDP load balancer (balancing, health checks, hot reload, metrics) with VRRP
//! virtual-IP failover from `keel-vrrp`. `main.rs` is a thin CLI over [`run`].

pub mod admin;
pub mod backend;
pub mod balance;
pub mod bgp;
pub mod config;
pub mod control;
pub mod demo;
pub mod frontend;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy_protocol;
pub mod relay;
pub mod server;
pub mod services;
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
        token: admin_cfg.as_ref().and_then(|a| a.token.clone()),
        control: true,
    };
    if let Some(a) = admin_cfg {
        let l = admin::bind(a.listen)
            .await
            .with_context(|| format!("admin listener {}", a.listen))?;
        tracing::info!(listen = %a.listen, "admin listening (/metrics, /healthz, /services, POST /reload, POST /handover, POST /resume)");
        tokio::spawn(admin::serve(l, base.clone()));
    }
    if let Some(listen) = metrics_listen {
        let l = admin::bind(listen)
            .await
            .with_context(|| format!("metrics listener {listen}"))?;
        tracing::info!(%listen, "metrics listening (/metrics, /healthz, /services; no control)");
        tokio::spawn(admin::serve(
            l,
            admin::Admin {
                control: false,
                ..base
            },
        ));
    }
    server.run(rx).await?;
    Ok(())
}
