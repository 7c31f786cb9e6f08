//! keel-agent's entry point: parses the command line, sets up logging and signals, and hands over to
//! the library (`run`, `join`, `leave`). Thin on purpose.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keel_agent::config::{self, Config};
use keel_agent::join::credentials::StateDir;
use keel_agent::metrics::Metrics;
use keel_agent::run::Agent;
use keel_agent::status::{self, JoinState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DEFAULT_CONFIG: &str = if cfg!(windows) {
    r"C:\ProgramData\keel\agent.yaml"
} else {
    "/etc/keel/agent.yaml"
};

#[derive(Parser)]
#[command(
    name = "keel-agent",
    version,
    about = "Kubernetes node agent: join, registration, health"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the cluster (or reuse stored credentials), register the node and keep it alive.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file; prints every error with file:line: field.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validates the config file, then has the running agent (`--pid`, systemd's `$MAINPID`) reload
    /// it and exits non-zero unless it applied it: systemd's ExecReload.
    Reload {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Process id of the running agent.
        #[arg(long)]
        pid: i32,
        /// How long to wait for the agent's verdict.
        #[arg(long, default_value = "30s", value_parser = keel_common::duration::parse)]
        timeout: std::time::Duration,
    },
    /// Cordon, drain and delete this node, then remove its credentials.
    Leave {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Credential allowed to delete the Node (nodes may not delete themselves); default
        /// `health.privileged_kubeconfig`, then the node identity.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Print the agent's status as tables: join and certificate state, checks with their last
    /// result, conditions, taints applied or refused and why, drain (from the status file in the
    /// state directory, so it works while the agent is down).
    Status {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Read the status from this state directory instead of the config's.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Print the status file's JSON instead of tables (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Run every configured health check once (no cluster) and print a table of the outcomes;
    /// with `--metrics`, print the Prometheus text instead (the table goes to stderr). With
    /// `--serve-for`, then serve the metrics on `metrics.listen` for that long.
    HealthOnce {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print the metrics text on stdout (for promtool or a file) and the table on stderr.
        #[arg(long)]
        metrics: bool,
        /// Serve /metrics and /healthz on `metrics.listen` for this long after the pass (e.g. `5s`),
        /// so a scraper (or promtool) can read what the pass recorded; bounded so it always exits.
        #[arg(long, value_parser = keel_common::duration::parse)]
        serve_for: Option<std::time::Duration>,
    },
    /// Windows: run under (or install into) the service control manager.
    #[cfg(windows)]
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Print the version.
    Version,
}

#[cfg(windows)]
#[derive(Subcommand)]
enum ServiceAction {
    /// Started by the SCM: STOP stops the agent, PRESHUTDOWN drains first.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Create the `keel-agent` service with recovery actions and a preshutdown timeout.
    Install {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, default_value = "5m", value_parser = keel_common::duration::parse)]
        preshutdown_timeout: std::time::Duration,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
        // kube's own request tracing logs every failed attempt at ERROR; our retry loops log
        // them once, with the node and the next delay.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
        })
        // kube logs "Server cert bypassed" on each handshake of discovery's first fetch, which
        // is verified otherwise (JWS and CA pin); discovery logs that itself, in those words.
        .add_directive(kube_tls_quiet());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: journald, log files and the Windows service log
        // get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn kube_tls_quiet() -> tracing_subscriber::filter::Directive {
    match "kube_client::client::tls=off".parse() {
        Ok(d) => d,
        // A constant that parses; never taken.
        Err(_) => tracing_subscriber::filter::LevelFilter::INFO.into(),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("keel-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Check { config } => match config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                Ok(())
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                return ExitCode::FAILURE;
            }
        },
        Command::Status {
            config,
            state_dir,
            json,
        } => print_status(&config, state_dir, json),
        Command::Reload {
            config,
            pid,
            timeout,
        } => match config::load(&config) {
            Ok(cfg) => {
                let file = StateDir::new(cfg.state_dir).status_file();
                match keel_agent::reload::request(pid, &file, timeout) {
                    Ok(()) => {
                        println!("{}: reloaded", config.display());
                        Ok(())
                    }
                    Err(e) => {
                        eprintln!("keel-agent reload: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                eprintln!("keel-agent reload: not sent; the running config stays");
                return ExitCode::FAILURE;
            }
        },
        Command::Run { config } => {
            init_logging();
            runtime().and_then(|rt| rt.block_on(run(config)))
        }
        Command::Leave { config, kubeconfig } => {
            init_logging();
            runtime().and_then(|rt| rt.block_on(leave(config, kubeconfig)))
        }
        #[cfg(windows)]
        Command::Service { action } => service(action),
        Command::HealthOnce {
            config,
            metrics,
            serve_for,
        } => {
            init_logging();
            runtime().and_then(|rt| rt.block_on(health_once(config, metrics, serve_for)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-agent: {}", keel_common::error::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // The agent's work is a handful of timers and API calls: two workers are plenty.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn print_status(config_path: &Path, state_dir: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let dir = match state_dir {
        Some(d) => d,
        None => load(config_path)?.state_dir,
    };
    let path = StateDir::new(dir).status_file();
    let st = status::read_file(&path)
        .with_context(|| format!("cannot read {} (has the agent run?)", path.display()))?;
    let text = if json {
        serde_json::to_string_pretty(&st)?
    } else {
        // Wall time: "5s ago" is relative to the Unix timestamps in the file.
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        status::render(&st, now).trim_end().to_string()
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = writeln!(std::io::stdout(), "{text}");
    Ok(())
}

async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let node_shutdown = CancellationToken::new();
    run_with(config_path, cancel, node_shutdown, true).await
}

/// The agent until `cancel`; `signals` installs the unix signal handlers (the Windows service
/// passes its own tokens instead).
async fn run_with(
    config_path: PathBuf,
    cancel: CancellationToken,
    node_shutdown: CancellationToken,
    signals: bool,
) -> anyhow::Result<()> {
    let cfg = load(&config_path)?;
    tracing::info!(node = %cfg.node.name, server = %cfg.cluster.server, config = %config_path.display(), "keel-agent starting");
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let agent = Agent::new(cfg);
    let metrics = agent.metrics.clone();
    let status = agent.status.clone();
    if signals {
        let drain_on_stop = agent.cfg.health.drain.on_stop;
        spawn_signals(
            config_path,
            drain_on_stop,
            cancel.clone(),
            node_shutdown.clone(),
            reload_tx,
            metrics,
            status,
        )?;
    } else {
        drop(reload_tx);
    }
    #[cfg(target_os = "linux")]
    {
        // Type=notify: ready once the config is valid and the agent is working (a join may wait
        // for approval far longer than any start timeout); the watchdog pings from the runtime.
        use keel_agent::platform::linux as sd;
        if let Err(e) = sd::sd_notify("READY=1") {
            tracing::warn!(error = %e, "sd_notify READY=1 failed");
        }
        tokio::spawn(sd::watchdog(cancel.clone()));
    }
    let result = agent.run(cancel, node_shutdown, reload_rx).await;
    #[cfg(target_os = "linux")]
    let _ = keel_agent::platform::linux::sd_notify("STOPPING=1");
    result?;
    Ok(())
}

#[cfg(windows)]
fn service(action: ServiceAction) -> anyhow::Result<()> {
    use keel_agent::platform::windows_service as svc;
    match action {
        ServiceAction::Install {
            config,
            preshutdown_timeout,
        } => {
            let exe = std::env::current_exe().context("path of keel-agent.exe")?;
            svc::install(exe, config, preshutdown_timeout)
        }
        ServiceAction::Run { config } => {
            init_logging();
            svc::run(Box::new(move |tokens: svc::Tokens| {
                runtime()?.block_on(run_with(
                    config.clone(),
                    tokens.cancel,
                    tokens.node_shutdown,
                    false,
                ))
            }))
        }
    }
}

/// SIGTERM/SIGINT (ctrl-c on Windows) cancel; SIGTERM drains first during a system shutdown, or
/// always with `health.drain.on_stop` (`drain_on_stop`, followed across reloads); SIGHUP validates
/// the file and hands the new config over, or logs and counts a bad file and keeps the running
/// config.
fn spawn_signals(
    config_path: PathBuf,
    drain_on_stop: bool,
    cancel: CancellationToken,
    node_shutdown: CancellationToken,
    reloads: mpsc::Sender<Config>,
    metrics: std::sync::Arc<Metrics>,
    status: status::StatusHandle,
) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let mut drain_on_stop = drain_on_stop;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {
                        if keel_agent::platform::linux::system_is_stopping().await {
                            tracing::info!("SIGTERM while the system shuts down: draining first");
                            node_shutdown.cancel();
                        } else if drain_on_stop {
                            tracing::info!("SIGTERM: draining first (health.drain.on_stop)");
                            node_shutdown.cancel();
                        } else {
                            tracing::info!("SIGTERM: shutting down");
                            cancel.cancel();
                        }
                        return;
                    }
                    _ = int.recv() => { tracing::info!("SIGINT: shutting down"); cancel.cancel(); return; }
                    _ = hup.recv() => match config::load(&config_path) {
                        Ok(cfg) => {
                            drain_on_stop = cfg.health.drain.on_stop;
                            if reloads.send(cfg).await.is_err() { return; }
                        }
                        Err(errors) => {
                            metrics.config_reload(false);
                            status.update(|s| s.config_reloads_failed += 1);
                            tracing::error!(config = %config_path.display(), errors = %errors, "SIGHUP: config invalid, keeping the running config");
                        }
                    },
                }
            }
        });
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (
            config_path,
            reloads,
            metrics,
            status,
            node_shutdown,
            drain_on_stop,
        );
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("ctrl-c: shutting down");
            }
            cancel.cancel();
        });
    }
    Ok(())
}

async fn leave(config_path: PathBuf, kubeconfig: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = load(&config_path)?;
    let metrics = Metrics::new();
    let state = StateDir::new(cfg.state_dir.clone());
    let status = status::StatusHandle::new(
        status::read_file(&state.status_file()).unwrap_or_default(),
        Some(state.status_file()),
    );
    status.update(|s| s.join_state = JoinState::Leaving);
    let report = tokio::time::timeout(
        keel_agent::node::leave::LEAVE_TIMEOUT
            .max(cfg.health.drain.timeout + std::time::Duration::from_secs(60)),
        keel_agent::node::leave::leave(&cfg, &metrics, kubeconfig.as_deref()),
    )
    .await
    .context("leave timed out")??;
    status.update(|s| s.join_state = JoinState::Left);
    println!(
        "node {} left the cluster (cordoned: {}, node deleted: {}, drained: {})",
        cfg.node.name, report.cordoned, report.node_deleted, report.drained
    );
    Ok(())
}

async fn health_once(
    config_path: PathBuf,
    print_metrics: bool,
    serve_for: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let cfg = load(&config_path)?;
    // Bind before the pass, so a port in use fails at once rather than after the checks ran.
    let listener = match (serve_for, cfg.metrics_listen) {
        (None, _) => None,
        (Some(_), None) => anyhow::bail!(
            "--serve-for needs metrics.listen in {}",
            config_path.display()
        ),
        (Some(d), Some(addr)) => Some((
            d,
            addr,
            keel_agent::metrics::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?,
        )),
    };
    let metrics = Metrics::new();
    let outcomes = keel_agent::health_loop::run_once(&cfg.health, &metrics.registry).await?;
    let mut table = keel_common::table::Table::new(["CHECK", "STATUS", "REASON", "MESSAGE"]);
    for (name, o) in &outcomes {
        table.row([
            name.clone(),
            format!("{:?}", o.status),
            o.reason.clone(),
            o.message.clone(),
        ]);
    }
    // Either stream stays one format: a table for people, or metrics text a parser can read whole.
    if print_metrics {
        eprint!("{}", table.render());
        print!("{}", metrics.render());
    } else {
        print!("{}", table.render());
    }
    std::io::stdout().flush().ok();
    if let Some((d, addr, listener)) = listener {
        let st = status::StatusHandle::new(status::Status::default(), None);
        let cancel = CancellationToken::new();
        tracing::info!(%addr, seconds = d.as_secs_f64(), "serving /metrics after the health pass");
        let server = tokio::spawn(keel_agent::metrics::serve(
            listener,
            metrics.clone(),
            st,
            cancel.clone(),
        ));
        tokio::time::sleep(d).await;
        cancel.cancel();
        server.await.ok();
    }
    Ok(())
}
