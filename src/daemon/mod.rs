//! The `run` command: wires the core to the outside world — signals, the config
//! watcher, the control plane — and runs until SIGTERM/SIGINT.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use crate::config::{Config, ConfigError};
use crate::front::FrontDoor;
use crate::handoff::signals::{Signals, resend};
use crate::handoff::state::{self, FrontFds, Received};
use crate::inhibit::Inhibitor;
use crate::kube::DeletionCost;
use crate::notify::Notifier;
use crate::supervisor::protocol::CoreHandle;
use crate::supervisor::{Ended, Supervisor};
use crate::ui::gpu::GpuEnv;
use crate::ui::process::become_subreaper;
use crate::watch::{Changes, ConfigWatcher, Debounce};

mod instances;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The control plane could not bind (socket in use, bus name taken, …).
    #[error("{0}")]
    Control(#[from] crate::control::ControlError),
    /// The front door could not start (`ui.port` taken, credentials unreadable).
    #[error("{0}")]
    Front(#[from] crate::front::FrontError),
    /// The state handed over by the previous binary cannot be read.
    #[error("cannot take over from the previous binary: {0}")]
    Handoff(String),
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

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM/SIGINT: the UI was stopped.
    Stopped,
    /// The unit changed: exit with
    /// [`EXIT_SERVICE_RESTART`](crate::handoff::EXIT_SERVICE_RESTART) for
    /// systemd to start the service again.
    ServiceRestart,
}

/// One generation of the binary ended: done, or an `execve` into a new binary
/// failed and this one takes the handed-over state back.
enum Step {
    Done(Exit),
    ExecFailed(Box<Received>),
}

/// Runs the supervisor for the config at `path` until SIGTERM or SIGINT. Must run on
/// a current-thread runtime whose thread lives as long as the process (the UI is
/// spawned with `PR_SET_PDEATHSIG`, which follows the forking thread).
/// `handoff_fd`: the state document of the binary this one replaced.
pub async fn run(path: &Path, handoff_fd: Option<RawFd>) -> Result<Exit, DaemonError> {
    let mut inherited = match handoff_fd {
        None => None,
        Some(fd) => Some(state::read(fd).map_err(|e| DaemonError::Handoff(e.to_string()))?),
    };
    loop {
        match run_generation(path, inherited.take()).await? {
            Step::Done(exit) => return Ok(exit),
            Step::ExecFailed(received) => inherited = Some(*received),
        }
    }
}

async fn run_generation(path: &Path, inherited: Option<Received>) -> Result<Step, DaemonError> {
    let text = std::fs::read(path).map_err(io(format!("cannot read {}", path.display())))?;
    let file_config = Config::from_bytes(path, &text)?;
    // Set up once per start (a reload's change waits for the next start), from
    // the file as it is now, also after a handoff.
    let keep_deletion_cost = file_config.kubernetes.pod_deletion_cost;
    raise_fd_limit();
    // Under `init` (PID 1 in a container), orphans go to the init half instead.
    if !crate::init::under_init()
        && let Err(e) = become_subreaper()
    {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned UI processes are left to init");
    }
    let signals = Signals::open().map_err(io("cannot read signals (signalfd)"))?;
    // After a handoff the core starts from the config the UI runs with, and its
    // first step reloads the file, as the old binary left that to it.
    let file_text = text.clone();
    let (config, config_text, adoption) = match inherited {
        None => (file_config, text, None),
        Some(received) => {
            let old = received.envelope.config_text.as_deref().and_then(|t| {
                Config::parse(path, t)
                    .ok()
                    .map(|c| (c, t.as_bytes().to_vec()))
            });
            match old {
                Some((c, t)) => (c, t, Some((received, false))),
                None => (file_config, text, Some((received, true))),
            }
        }
    };
    if adoption.is_none() && !config.instances.is_empty() {
        return instances::run(path, config, config_text, signals).await;
    }
    let mut config = config;
    let inherited_front = adoption.as_ref().map(|(r, _)| r.envelope.front.clone());
    let front_plan = plan_front(&mut config, inherited_front)?;
    let control_config = config.control.clone();
    let (mut core, handle, commands, events) = Supervisor::new(
        PathBuf::from(path),
        config,
        &config_text,
        GpuEnv::from_env(),
        Notifier::from_env(),
    );
    let listeners = adoption
        .as_ref()
        .and_then(|(r, _)| r.envelope.control.take_listeners());
    let sleep_lock = adoption
        .as_ref()
        .and_then(|(r, _)| r.envelope.sleep_lock.as_ref()?.take());
    if let Some((received, unknown)) = adoption {
        tracing::info!(config = %path.display(), state_known = received.state.is_some(), "supervisor taking over from the previous binary");
        core.adopt(received, unknown, file_text.clone());
    } else {
        tracing::info!(config = %path.display(), "supervisor starting");
    }
    // Bind the control plane before starting the UI: a second supervisor on the
    // same socket or bus name must fail here, before it launches a second UI.
    let control = match listeners {
        Some(l) => crate::control::start_inherited(handle.clone(), &control_config, l).await?,
        None => crate::control::start(handle.clone(), &control_config).await?,
    };
    let front = match front_plan {
        Some(plan) => {
            let listener = match plan.listener {
                Some(l) => l,
                None => crate::front::bind(plan.address)?,
            };
            let door = FrontDoor::start(listener, plan.settings, &handle)?;
            handle.attach_front(door.stats());
            core.watch_front(door.busy(), door.answers(0));
            Some((door, plan.ui_port))
        }
        None => None,
    };
    // Beside the core like the front door: it reads the snapshots, the core
    // never waits for it.
    let (inhibitor, deletion_cost) = start_beside(&handle, sleep_lock, keep_deletion_cost);

    let (stop, stopped) = oneshot::channel();
    let signal_task = tokio::spawn(dispatch_signals(signals, handle.clone(), stop));
    // The watcher compares with the file as read now (after a handoff, the core
    // starts from the old text and reloads the file itself).
    let watcher = watch_config(path, &file_text, &handle);

    let shutdown = async move {
        let _ = stopped.await;
    };
    let ended = core.run(commands, events, shutdown).await;
    // From here signals stay pending, for this binary's end or the next one.
    signal_task.abort();
    drop(watcher);
    // The annotation stays as it is; the next binary (if any) patches on.
    // Before the exec below: a patch helper in flight is killed by this stop.
    if let Some(cost) = deletion_cost {
        cost.stop().await;
    }
    match ended {
        Ended::Shutdown | Ended::ServiceRestart => {
            // The UI is stopped: the machine may sleep.
            inhibitor.stop().await;
            if let Some((door, _)) = front {
                door.shutdown(FRONT_STOP_GRACE).await;
            }
            control.shutdown().await;
            Ok(Step::Done(if matches!(ended, Ended::Shutdown) {
                Exit::Stopped
            } else {
                Exit::ServiceRestart
            }))
        }
        Ended::Handoff(handover) => {
            // The next binary holds the lock on.
            let sleep_lock = inhibitor.hand_over().await;
            let front = match front {
                Some((door, ui_port)) => {
                    let (fd, stats) = door.hand_over(FRONT_HANDOFF_GRACE).await;
                    Some((fd, ui_port, stats))
                }
                None => None,
            };
            let listeners = control.hand_over().await;
            Ok(Step::ExecFailed(Box::new(
                crate::handoff::send::exec_new_binary(
                    path, *handover, listeners, front, sleep_lock,
                ),
            )))
        }
    }
}

/// What runs beside the core, reading its snapshots (the core never waits
/// for them): the sleep inhibitor, and the Pod's deletion cost when
/// `deletion_cost` is on. Their state is attached to `handle`'s snapshots.
fn start_beside(
    handle: &CoreHandle,
    sleep_lock: Option<crate::inhibit::Carried>,
    deletion_cost: bool,
) -> (Inhibitor, Option<DeletionCost>) {
    let inhibitor = Inhibitor::start(handle, sleep_lock);
    handle.attach_inhibitor(inhibitor.held());
    let cost = DeletionCost::start(handle, deletion_cost);
    if let Some(cost) = &cost {
        handle.attach_deletion_cost(cost.status());
    }
    (inhibitor, cost)
}

/// Watches the config file (NixOS swaps /etc/static rather than the file:
/// the watcher follows the chain) and reloads through `handle` on a change
/// from `text`; `None`, with a warning, when it cannot watch.
fn watch_config(path: &Path, text: &[u8], handle: &CoreHandle) -> Option<ConfigWatcher> {
    match ConfigWatcher::start(path, text, Debounce::default()) {
        Ok((watcher, changes)) => {
            tokio::spawn(reload_on_change(handle.clone(), changes));
            Some(watcher)
        }
        Err(e) => {
            tracing::warn!(error = %e, "not watching the config file; reload with SIGHUP or `sd-webui-supervisor reload`");
            None
        }
    }
}

/// How long a stop lets the front door's answers in flight finish (the UI is
/// already stopped by then: held requests get their 503 at once).
const FRONT_STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a handoff lets requests finish that reached the front door after
/// the core saw none in flight (the core waited for the others).
const FRONT_HANDOFF_GRACE: Duration = Duration::from_secs(10);

/// The front door of this generation, planned before the core is built (the
/// UI's private port goes into the config in force), started after the
/// control plane.
struct FrontPlan {
    address: std::net::SocketAddr,
    listener: Option<std::net::TcpListener>,
    settings: crate::front::Settings,
    ui_port: u16,
}

/// Pins the UI's private port in `config` (the one the adopted UI runs on after
/// a handoff, else `front.ui_port`, else a free one) and reads the front door's
/// settings; `None` without a front door. `inherited`: `Some` after a handoff,
/// holding what the previous binary's door handed over.
fn plan_front(
    config: &mut Config,
    inherited: Option<Option<FrontFds>>,
) -> Result<Option<FrontPlan>, DaemonError> {
    let ran_without = matches!(inherited, Some(None));
    let handed = inherited.flatten();
    let listener = handed
        .as_ref()
        .and_then(|f| state::own_fd(f.listener))
        .map(std::net::TcpListener::from);
    if config.front.enable && ran_without {
        // The previous binary ran without a front door: the adopted UI itself
        // listens on ui.port. The door comes with the next start of the service.
        tracing::warn!(
            "the previous supervisor ran no front door; the UI keeps ui.port until the service restarts"
        );
        config.front.enable = false;
    }
    if !config.front.enable {
        return Ok(None);
    }
    let ui_port = match (&handed, config.front.ui_port) {
        (Some(f), _) => f.ui_port,
        (None, Some(p)) => p,
        (None, None) => crate::front::pick_ui_port(&[])?,
    };
    config.front.ui_port = Some(ui_port);
    let address = crate::front::address(config);
    let listener = listener.filter(|l| l.local_addr().ok() == Some(address));
    let mut settings = crate::front::Settings::of(config)?;
    settings.resumed = handed.and_then(|f| f.stats);
    Ok(Some(FrontPlan {
        address,
        listener,
        settings,
        ui_port,
    }))
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

/// SIGHUP (`systemctl reload`, notify-reload) → reload through the core;
/// SIGTERM/SIGINT → `stop`. A signal the core can no longer take (it ended for
/// a handoff) is sent again, to stay pending for the binary that runs next.
async fn dispatch_signals(mut signals: Signals, handle: CoreHandle, stop: oneshot::Sender<()>) {
    loop {
        let sig = match signals.next().await {
            Ok(sig) => sig,
            Err(e) => {
                tracing::error!(error = %e, "cannot read signals any more");
                return;
            }
        };
        if stop.is_closed() {
            resend(sig);
            return;
        }
        tracing::info!(signal = %sig, "signal");
        if sig == Signal::SIGHUP {
            let handle = handle.clone();
            tokio::spawn(async move {
                if handle.reload().await.is_err() {
                    resend(Signal::SIGHUP);
                }
            });
        } else {
            let _ = stop.send(());
            return;
        }
    }
}

/// A changed config file → reload through the core with the bytes the watcher
/// read and the config it parsed from them (read once, parsed once), unless the
/// core already runs this content (a SIGHUP for the same edit got
/// there first: one reload, not two).
async fn reload_on_change(handle: CoreHandle, mut changes: Changes) {
    while let Some(change) = changes.recv().await {
        if crate::supervisor::config_hash(&change.bytes) == handle.snapshot().config_generation {
            continue;
        }
        tracing::info!("config file changed: reloading");
        let parsed = change.config.clone();
        if handle
            .reload_bytes(change.bytes.clone(), parsed)
            .await
            .is_err()
        {
            return;
        }
    }
}
