//! The `run` command with `[instances]` (docs/instances.md): one core per
//! instance, each with its own derived config and private port, behind one
//! front door that routes among them. The first instance's core leads: the
//! control plane, signals, the config watcher, the sleep inhibitor and the
//! Pod's deletion cost talk to it, and it forwards reloads and restarts to
//! the others. A self-upgrade restarts the service once every instance is
//! idle (the handoff carries one UI), so this path never hands over.

use std::path::{Path, PathBuf};

use tokio::sync::{oneshot, watch};

use super::{DaemonError, Exit, FRONT_STOP_GRACE, Step, dispatch_signals};
use crate::config::Config;
use crate::front::FrontDoor;
use crate::handoff::signals::Signals;
use crate::notify::Notifier;
use crate::supervisor::instances::Roll;
use crate::supervisor::{Ended, Supervisor};
use crate::ui::gpu::GpuEnv;

/// Runs every instance of `config` (read from `path` as `text`) until
/// SIGTERM/SIGINT or a service restart.
pub(super) async fn run(
    path: &Path,
    config: Config,
    text: Vec<u8>,
    signals: Signals,
) -> Result<Step, DaemonError> {
    let configs = instance_configs(&config)?;
    let mut settings = crate::front::Settings::of(&configs[0])?;
    settings.instances = configs
        .iter()
        .map(|c| {
            let name = c.instance.clone().unwrap_or_default();
            (name, c.ui_own_port())
        })
        .collect();
    let roll = Roll::new(configs.len());
    let mut cores = Vec::new();
    for (i, c) in configs.into_iter().enumerate() {
        let notifier = if i == 0 {
            Notifier::from_env()
        } else {
            Notifier::silent()
        };
        cores.push(Supervisor::new(
            PathBuf::from(path),
            c,
            &text,
            GpuEnv::from_env(),
            notifier,
        ));
    }
    let followers: Vec<_> = cores.iter().skip(1).map(|c| c.1.clone()).collect();
    for (i, core) in cores.iter_mut().enumerate() {
        let to = if i == 0 {
            followers.clone()
        } else {
            Vec::new()
        };
        core.0.join_instances(i, roll.clone(), to);
    }
    let handle = cores[0].1.clone();
    tracing::info!(config = %path.display(), instances = cores.len(), "supervisor starting");
    let control = crate::control::start(handle.clone(), &config.control).await?;
    let listener = crate::front::bind(crate::front::address(&config))?;
    let door = FrontDoor::start(listener, settings, &handle)?;
    handle.attach_front(door.stats());
    for (i, core) in cores.iter_mut().enumerate() {
        core.0.watch_front(door.busy(), door.answers(i));
    }
    let (inhibitor, deletion_cost) =
        super::start_beside(&handle, None, config.kubernetes.pod_deletion_cost);
    let (stop, stopped) = oneshot::channel();
    let signal_task = tokio::spawn(dispatch_signals(signals, handle.clone(), stop));
    let watcher = super::watch_config(path, &text, &handle);
    // One stop for all: a signal, or the leader's end (a service restart).
    let (down, _) = watch::channel(false);
    let down_on_signal = down.clone();
    let signalled = tokio::spawn(async move {
        if stopped.await.is_ok() {
            let _ = down_on_signal.send(true);
        }
    });
    let mut runs = Vec::new();
    for (core, _handle, commands, events) in cores {
        let mut rx = down.subscribe();
        let shutdown = async move {
            let _ = rx.wait_for(|d| *d).await;
        };
        runs.push(core.run(commands, events, shutdown));
    }
    let mut runs = runs.into_iter();
    let leader = runs.next();
    let leader = async {
        let ended = match leader {
            Some(run) => Some(run.await),
            None => None,
        };
        let _ = down.send(true);
        ended
    };
    let (ended, _) = tokio::join!(leader, futures_util::future::join_all(runs));
    signal_task.abort();
    signalled.abort();
    drop(watcher);
    if let Some(cost) = deletion_cost {
        cost.stop().await;
    }
    inhibitor.stop().await;
    door.shutdown(FRONT_STOP_GRACE).await;
    control.shutdown().await;
    Ok(Step::Done(match ended {
        Some(Ended::ServiceRestart) => Exit::ServiceRestart,
        Some(Ended::Handoff(_)) => {
            // Not planned with instances (see the module's doc).
            tracing::error!("a handoff was planned with instances; stopping instead");
            Exit::Stopped
        }
        _ => Exit::Stopped,
    }))
}

/// Each instance's config, with its private port pinned (picked when the
/// config leaves it open, none twice).
fn instance_configs(config: &Config) -> Result<Vec<Config>, DaemonError> {
    let mut out: Vec<Config> = Vec::new();
    for i in 0..config.instances.len() {
        let Some(mut c) = config.for_instance(i) else {
            continue;
        };
        if c.front.ui_port.is_none() {
            let taken: Vec<u16> = config
                .instances
                .iter()
                .filter_map(|x| x.port)
                .chain(out.iter().filter_map(|o| o.front.ui_port))
                .collect();
            c.front.ui_port = Some(crate::front::pick_ui_port(&taken)?);
        }
        out.push(c);
    }
    Ok(out)
}
