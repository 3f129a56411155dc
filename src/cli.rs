//! Command-line interface: the subcommands of DESIGN §3.1 and their exit codes.
//!
//! Exit codes: 0 success; 1 invalid config or failed operation; 2 usage error
//! (clap); 3 layout finished with conflicts; 4 no daemon answered; 5 timed out.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Runs a Stable Diffusion web UI (Forge, A1111, ComfyUI) as a supervised service.
#[derive(Debug, Parser)]
#[command(name = "sd-webui-supervisor", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: lay out the data dir, start the UI, report to systemd.
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Parse and validate a config file; print every problem.
    CheckConfig {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Lay out the data dir once (links, folders, settings) and exit; 3 on conflicts.
    Layout {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// Print the plan, one action a line, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Layout { config, dry_run } => crate::layout::command(&config, dry_run),
        Command::Run { .. } => ExitCode::from(1),
    }
}
