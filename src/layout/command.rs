//! `sd-webui-supervisor layout --config FILE [--dry-run]`.
//!
//! Exit codes (docs/design.md#commands): 0 laid out; 1 invalid config or failed layout;
//! 3 laid out, but with conflicts (one line each on stderr).

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// Exit code when the layout finished with conflicts.
const CONFLICTS: u8 = 3;

/// Runs the `layout` subcommand.
pub fn command(config: &Path, dry_run: bool) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if dry_run {
        return match super::plan(&config) {
            Ok(plan) => {
                print!("{plan}");
                exit(plan.conflicts().count())
            }
            Err(e) => fail(&e),
        };
    }
    match super::apply(&config) {
        Ok(report) => {
            // Links to cached downloads no longer declared are gone now.
            crate::download::cache::sweep_after_layout(&config);
            for c in &report.conflicts {
                eprintln!("conflict: {c}");
            }
            for d in &report.dangling {
                eprintln!("missing target: {d}");
            }
            println!(
                "layout of {}: {} changes, {} conflicts, {} missing targets",
                config.data.dir.display(),
                report.actions_applied,
                report.conflicts.len(),
                report.dangling.len()
            );
            exit(report.conflicts.len())
        }
        Err(e) => fail(&e),
    }
}

fn exit(conflicts: usize) -> ExitCode {
    if conflicts == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(CONFLICTS)
    }
}

fn fail(e: &super::LayoutError) -> ExitCode {
    eprintln!("layout: {e}");
    ExitCode::from(1)
}
