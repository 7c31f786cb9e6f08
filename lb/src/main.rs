//! keel-lb's command line: `run`, `check`, `reload`, `status`, `backend`, `demo`. Thin: everything
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "keel-lb",
    version,
    about = "L4 TCP/UDP load balancer with VRRP failover"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the load balancer until SIGTERM (graceful: hand VIPs over, stop accepting, drain).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Worker threads; 1 runs everything on one thread (pin it with taskset for benchmarks).
        /// Default: one per CPU.
        #[arg(long)]
        workers: Option<usize>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Validates a config file and prints every error (file:line: field: message).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validates the config file, then asks the running keel-lb (its admin API) to reload it and
    /// exits non-zero unless the reload succeeded: systemd's ExecReload.
    Reload {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Prints the running keel-lb's status (frontends, backends, VRRP, Services, recent events)
    /// as tables, from its admin API.
    Status {
        #[arg(long, short, default_value = "/etc/keel/lb.yaml")]
        config: PathBuf,
        /// The snapshot as JSON (`GET /v1/status`) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Changes a backend of the config file at run time: kept across reloads and restarts (the
    /// state file) until the file changes that backend's state or weight.
    Backend {
        #[arg(long, short, global = true, default_value = "/etc/keel/lb.yaml")]
        config: PathBuf,
        #[command(subcommand)]
        action: BackendAction,
    },
    /// Runs keel-lb on loopback in front of three built-in demo backends (no root needed).
    Demo {
        /// Port of the demo frontend; the admin API listens on port+1, the backends on port+2..+4.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

#[derive(Subcommand)]
enum BackendAction {
    /// No new connections; established ones stay.
    Drain { pool: String, address: String },
    /// Out of rotation and not health checked (maintenance).
    Maint { pool: String, address: String },
    /// Back in rotation.
    Ready { pool: String, address: String },
    /// Sets the weight (1-256).
    Weight {
        pool: String,
        address: String,
        weight: u32,
    },
}

fn logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // netlink-packet-route warns on every link dump that a newer kernel's IFLA_INET6_CONF is
        // longer than it knows: noise, not news.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => match keel_lb::config::load(&config) {
            Ok(c) => {
                for w in c.warnings() {
                    eprintln!("{}: warning: {w}", config.display());
                }
                println!(
                    "{}: ok ({} frontends, {} pools)",
                    config.display(),
                    c.frontends.len(),
                    c.pools.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Cmd::Reload { config } => match keel_lb::config::load(&config) {
            Ok(c) => match keel_lb::control::reload(&c, std::time::Duration::from_secs(30)) {
                Ok(answer) => {
                    println!("{}: {answer}", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("keel-lb reload: {e}");
                    ExitCode::from(1)
                }
            },
            Err(e) => {
                eprintln!("{e}");
                eprintln!("keel-lb reload: not sent; the running config stays");
                ExitCode::from(1)
            }
        },
        Cmd::Status { config, json } => {
            let cfg = match keel_lb::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            match keel_lb::control::status(&cfg, std::time::Duration::from_secs(10)) {
                Ok(s) if json => {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(s) => {
                    print!("{}", keel_lb::status_text::render(&s));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("keel-lb status: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Backend { config, action } => {
            let cfg = match keel_lb::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            let (pool, address, body) = match action {
                BackendAction::Drain { pool, address } => (pool, address, "state=drain".into()),
                BackendAction::Maint { pool, address } => (pool, address, "state=maint".into()),
                BackendAction::Ready { pool, address } => (pool, address, "state=ready".into()),
                BackendAction::Weight {
                    pool,
                    address,
                    weight,
                } => (pool, address, format!("weight={weight}")),
            };
            match keel_lb::control::backend(
                &cfg,
                &pool,
                &address,
                &body,
                std::time::Duration::from_secs(30),
            ) {
                Ok(answer) => {
                    println!("{answer}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("keel-lb backend: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Run {
            config,
            workers,
            log_json,
        } => {
            logging(log_json);
            let cfg = match keel_lb::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            let result = runtime(workers)
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(keel_lb::run(cfg)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keel-lb: {}", keel_common::error::one_line(e.as_ref()));
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Demo { port } => {
            logging(false);
            let result = runtime(None)
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(keel_lb::demo::run(port)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keel-lb demo: {}", keel_common::error::one_line(e.as_ref()));
                    ExitCode::from(1)
                }
            }
        }
    }
}
