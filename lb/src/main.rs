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
    /// Validates a config file and prints every error (file:line: field: message).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => match keel_lb::config::load(&config) {
            Ok(c) => {
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
    }
}
