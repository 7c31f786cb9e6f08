//! A bare VRRP daemon for development: `vrrpd CONFIG.yaml` with a top-level `vrrp:` section. Runs
//! until SIGTERM/SIGINT, then hands over (make-before-break, 5 s) and exits. keel-lb is the real
//! binary; this one exists to exercise the crate alone.

use std::time::Duration;

use keel_common::{Diagnostics, Source};

#[derive(serde::Deserialize)]
struct Top {
    vrrp: keel_vrrp::VrrpFile,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: vrrpd CONFIG.yaml"))?;
    let src = Source::read(path.as_ref())?;
    let top: Top = keel_common::config::parse(&src)?;
    let mut diag = Diagnostics::new(&src);
    let cfg = keel_vrrp::config::validate(&top.vrrp, "vrrp", &mut diag);
    let cfg = diag.finish(cfg.unwrap_or_default())?;
    let registry = prometheus::Registry::new();
    let metrics = keel_vrrp::VrrpMetrics::register(&registry)?;
    let vrrp = keel_vrrp::Vrrp::start(cfg, metrics)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let outcome = vrrp.handover(Duration::from_secs(5)).await;
    tracing::info!(?outcome, "handover done");
    vrrp.shutdown();
    Ok(())
}
