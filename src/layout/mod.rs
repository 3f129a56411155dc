//! Laying out the data directory (docs/design.md#the-data-directory): model and extension links from the
//! config, the folders the UI needs, and the managed settings keys.
//!
//! The layout is [`scan`] (read the disk into a [`snapshot`]), `plan` (a pure
//! function from the desired state and the snapshot to [`Action`]s) and `exec`
//! (carry the actions out). Safety comes from three rules:
//!
//! - **Ownership.** The supervisor only ever replaces or removes a link recorded in
//!   its [`manifest`] with the exact target recorded. Anything else at a managed
//!   name is a [`Conflict`]: reported, kept, and the rest of the layout proceeds.
//! - **Crash safety.** Links are recorded as *pending* before they are made; a
//!   link is recognised after a crash only if it points exactly where the record
//!   says. Replacements are renamed over the old link; temporaries carry a name
//!   only the supervisor uses and are swept by the next run.
//! - **Idempotence.** A relayout with nothing to change performs no write at all.

mod action;
mod command;
mod desired;
mod dirscan;
mod exec;
pub(crate) mod fsio;
pub(crate) mod manifest;
mod plan;
mod report;
mod rows;
mod scan;
mod settings;
mod snapshot;

use std::io;
use std::path::{Path, PathBuf};

pub use action::{Action, Removal};
pub use command::command;
pub use plan::Plan;
pub use report::{Conflict, Dangling, Found, LayoutReport, Wanted};

use crate::config::Config;
use desired::Desired;

/// Why a layout could not be carried out at all (conflicts are not errors: they
/// are reported in the [`LayoutReport`]).
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A filesystem operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The data dir (or the supervisor's folder in it) is not a directory.
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The manifest cannot be understood, so ownership is unknown.
    #[error(
        "manifest {} is unreadable ({reason}); move it away to start over (links it recorded are then reported as conflicts)",
        path.display()
    )]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Some links could not be made, replaced or removed; everything else was
    /// done and the manifest records exactly what stands, so a later layout
    /// completes the rest.
    #[error(transparent)]
    Links(LinkFailures),
}

/// One link action that failed, with the config entry it served.
#[derive(Debug)]
pub struct LinkFailure {
    /// The config entry (`models.<kind>."<name>"`, `extensions."<name>"`).
    pub wanted: Wanted,
    /// What failed.
    pub error: LayoutError,
}

/// Every link action of one layout that failed (never empty).
#[derive(Debug)]
pub struct LinkFailures(pub Vec<LinkFailure>);

impl std::fmt::Display for LinkFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        write!(f, "{n} link{} failed", if n == 1 { "" } else { "s" })?;
        for (i, l) in self.0.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{}: {}", l.wanted, l.error)?;
        }
        Ok(())
    }
}

impl std::error::Error for LinkFailures {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .first()
            .map(|l| &l.error as &(dyn std::error::Error + 'static))
    }
}

impl LayoutError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> LayoutError {
        LayoutError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Decides what a layout would do, changing nothing (`layout --dry-run`).
pub fn plan(config: &Config) -> Result<Plan, LayoutError> {
    decide(config)
}

/// Lays the data dir out: blocking filesystem work, meant for `spawn_blocking`.
/// Holds a lock on the data dir for the duration, so concurrent layouts queue.
pub fn apply(config: &Config) -> Result<LayoutReport, LayoutError> {
    let prepared = exec::prepare(&config.data.dir, config.data.permissions)?;
    let state_dir = manifest::state_dir(&config.data.dir);
    let _lock =
        fsio::Lock::acquire(&state_dir).map_err(|e| LayoutError::io("lock", &state_dir, e))?;
    let mut report = exec::execute(decide(config)?)?;
    report.actions_applied += prepared;
    Ok(report)
}

/// Builds the desired state, reads the disk and plans. The manifest is read and
/// parsed on a thread of its own meanwhile (milliseconds at 10,000 links, and
/// needing nothing else), and waited for only when the scan needs it.
fn decide(config: &Config) -> Result<Plan, LayoutError> {
    let data_dir = &config.data.dir;
    std::thread::scope(|s| {
        let reading = s.spawn(|| match data_dir.is_dir() {
            true => manifest::read(data_dir),
            // The scan says what stands there instead.
            false => Ok(None),
        });
        let desired = Desired::from_config(config);
        let snapshot = scan::scan(&desired, Box::new(|| fsio::joined(reading)))?;
        Ok(plan::plan(&desired, snapshot))
    })
}
