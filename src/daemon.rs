//! The `run` command: wires the core to the outside world — signals, the config
//! watcher, the control plane — and runs until SIGTERM/SIGINT.

use std::path::{Path, PathBuf};

use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, ConfigError};
use crate::notify::Notifier;
use crate::supervisor::Supervisor;
use crate::supervisor::protocol::CoreHandle;
use crate::ui::gpu::GpuEnv;
use crate::ui::process::become_subreaper;
use crate::watch::{ConfigWatcher, Debounce};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The control plane could not bind (socket in use, bus name taken, …).
    #[error("{0}")]
    Control(#[from] crate::control::ControlError),
    /// Setting up signals or the runtime failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Io { context, source }
}

/// Runs the supervisor for the config at `path` until SIGTERM or SIGINT. Must run on
/// a current-thread runtime whose thread lives as long as the process (the UI is
/// spawned with `PR_SET_PDEATHSIG`, which follows the forking thread).
pub async fn run(path: &Path) -> Result<(), DaemonError> {
    let text = std::fs::read(path).map_err(io(format!("cannot read {}", path.display())))?;
    let config = Config::from_bytes(path, &text)?;
    raise_fd_limit();
    // Under `init` (PID 1 in a container), orphans go to the init half instead.
    if !crate::init::under_init()
        && let Err(e) = become_subreaper()
    {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned UI processes are left to init");
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(io("cannot handle SIGTERM"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io("cannot handle SIGINT"))?;
    let sighup = signal(SignalKind::hangup()).map_err(io("cannot handle SIGHUP"))?;
    let control_config = config.control.clone();
    let (core, handle, commands, events) = Supervisor::new(
        PathBuf::from(path),
        config,
        &text,
        GpuEnv::from_env(),
        Notifier::from_env(),
    );
    tracing::info!(config = %path.display(), "supervisor starting");
    // Bind the control plane before starting the UI: a second supervisor on the
    // same socket or bus name must fail here, before it launches a second UI.
    let control = crate::control::start(handle.clone(), &control_config).await?;

    tokio::spawn(reload_on_sighup(handle.clone(), sighup));
    // NixOS swaps /etc/static rather than the file: the watcher follows the chain.
    let watcher = match ConfigWatcher::start(path, &text, Debounce::default()) {
        Ok((watcher, changes)) => {
            tokio::spawn(reload_on_change(
                handle.clone(),
                PathBuf::from(path),
                changes,
            ));
            Some(watcher)
        }
        Err(e) => {
            tracing::warn!(error = %e, "not watching the config file; reload with SIGHUP or `sd-webui-supervisor reload`");
            None
        }
    };

    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM"),
            _ = sigint.recv() => tracing::info!("SIGINT"),
        }
    };
    core.run(commands, events, shutdown).await;
    drop(watcher);
    control.shutdown().await;
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: systemd's default soft limit
/// of 1024 is a compatibility value for `select(2)` users, which the daemon is not,
/// and the control listeners, the layout and the UI's pipes all need descriptors.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        (before, libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0)
    };
    match raised {
        (before, true) if before != limit.rlim_max => {
            tracing::debug!(
                from = before,
                to = limit.rlim_max,
                "raised the soft file descriptor limit"
            )
        }
        (_, true) => {}
        (before, false) => {
            tracing::warn!(soft = before, hard = limit.rlim_max, error = %std::io::Error::last_os_error(), "cannot raise the soft file descriptor limit")
        }
    }
}

/// SIGHUP (`systemctl reload`, notify-reload) → reload through the core.
async fn reload_on_sighup(handle: CoreHandle, mut sighup: tokio::signal::unix::Signal) {
    while sighup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading");
        if handle.reload().await.is_err() {
            return;
        }
    }
}

/// A changed config file → reload through the core with the bytes read here,
/// unless the core already runs this content (a SIGHUP for the same edit got
/// there first: one reload, not two).
async fn reload_on_change(
    handle: CoreHandle,
    path: PathBuf,
    mut changes: tokio::sync::mpsc::Receiver<()>,
) {
    while changes.recv().await.is_some() {
        let outcome = match tokio::fs::read(&path).await {
            Ok(text)
                if crate::supervisor::config_hash(&text) == handle.snapshot().config_generation =>
            {
                continue;
            }
            Ok(text) => {
                tracing::info!("config file changed: reloading");
                handle.reload_bytes(text).await
            }
            // Let the core read it and say why it cannot.
            Err(_) => handle.reload().await,
        };
        if outcome.is_err() {
            return;
        }
    }
}
