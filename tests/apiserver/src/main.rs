//! `keel-test-apiserver --listen 127.0.0.1:6443 --dir DIR`: serves until SIGTERM/SIGINT and writes
//! `ca.crt`, `admin.kubeconfig`, `bootstrap-token` and `ca-pin` into DIR.

use anyhow::Context;
use clap::Parser;
use keel_test_apiserver::{Options, TestServer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "A Kubernetes API server for tests")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory for ca.crt, admin.kubeconfig, bootstrap-token and ca-pin.
    #[arg(long)]
    dir: PathBuf,
    /// Extra serving certificate SANs (IPs or DNS names), repeatable.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Lifetime of certificates signed for CSRs, in seconds.
    #[arg(long, default_value_t = 3600)]
    cert_duration_secs: u64,
    /// Deny kubelet client CSRs instead of approving them.
    #[arg(long)]
    deny_csrs: bool,
    /// Bootstrap token lifetime in seconds.
    #[arg(long, default_value_t = 86400)]
    token_ttl_secs: u64,
    /// Service CIDRs, comma-separated (two of different families for dual-stack).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10.96.0.0/12,fd00:10:96::/112"
    )]
    service_cluster_ip_range: Vec<String>,
    /// NodePort range.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let srv = TestServer::start(Options {
        bind: args.listen,
        extra_sans: args.sans,
        cert_duration: Duration::from_secs(args.cert_duration_secs),
        approve_csrs: !args.deny_csrs,
        service_cluster_ip_ranges: args.service_cluster_ip_range,
        service_node_port_range: args.service_node_port_range,
    })
    .await?;
    let token = srv.create_bootstrap_token(Duration::from_secs(args.token_ttl_secs));
    std::fs::write(args.dir.join("ca.crt"), srv.ca_pem())?;
    std::fs::write(args.dir.join("ca-pin"), format!("{}\n", srv.ca_pin()))?;
    std::fs::write(args.dir.join("bootstrap-token"), format!("{token}\n"))?;
    std::fs::write(
        args.dir.join("privileged-token"),
        format!("{}\n", srv.privileged_token()),
    )?;
    srv.write_admin_kubeconfig(&args.dir.join("admin.kubeconfig"))?;
    println!("{}", srv.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    srv.shutdown().await;
    Ok(())
}
