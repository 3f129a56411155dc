//! The end of a UI: its exits (expected, or a crash counted in [`super::crash`]),
//! the graceful stop (SIGINT, resent, then the group killed after the grace)
//! and the supervisor's own shutdown.

use super::crash::{CRASH_WINDOW, MAX_CRASHES, Verdict};
use super::timers::after;
use super::work::{AfterStop, Event};
use super::{Supervisor, Ui};
use crate::supervisor::protocol::RestartReason;
use crate::ui::process::{StopPlan, describe_exit};
use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// Grace after SIGINT for a UI that is not ready yet (it cannot be running a job).
const NOT_READY_GRACE: Duration = Duration::from_secs(3);
/// How often SIGINT is sent again during a stop's grace.
const SIGINT_RESEND: Duration = Duration::from_secs(2);
/// How long a crash reason waits for the UI's last output to be relayed.
const LAST_WORDS_WAIT: Duration = Duration::from_secs(1);
/// Longest wait of a planned stop for the answers the UI is sending through
/// the front door (a picture to a slow client) before its SIGINT cuts them.
const ANSWERS_WAIT: Duration = Duration::from_secs(5);

/// Resolves when the running UI's main process exits; never while none runs.
pub async fn child_exit(ui: &mut Ui) -> io::Result<ExitStatus> {
    match ui {
        Ui::Starting { proc, .. } | Ui::Ready { proc, .. } => proc.wait().await,
        _ => std::future::pending().await,
    }
}

impl Supervisor {
    /// The UI's main process exited while we did not ask it to.
    pub(super) fn on_exit(&mut self, status: io::Result<ExitStatus>) {
        let (proc, was_ready) = match std::mem::replace(&mut self.slot.ui, Ui::Down) {
            Ui::Starting { proc, .. } => (proc, false),
            Ui::Ready { proc, since, .. } => {
                // A UI that ran well for a while starts its backoff afresh.
                self.slot.crashes.ran(since.elapsed());
                (proc, true)
            }
            other => {
                self.slot.ui = other;
                return;
            }
        };
        let exit = match &status {
            Ok(s) => describe_exit(s),
            Err(e) => format!("wait failed: {e}"),
        };
        tracing::warn!(ui_pid = proc.pid(), exit = %exit, was_ready, "UI exited unexpectedly");
        self.keep_ui_crashed();
        self.forget_ui();
        self.slot.ui = Ui::Stopping {
            pid: proc.pid(),
            why: format!("UI exited ({exit}); cleaning up its processes"),
        };
        let output = proc.output().clone();
        self.tasks.spawn(async move {
            proc.reap_group().await;
            // A UI that dies at start mostly says why (no git, a bad flag, no GPU):
            // its last words go into the reason.
            let why = if was_ready {
                format!("UI exited ({exit})")
            } else {
                let _ = tokio::time::timeout(LAST_WORDS_WAIT, output.drained()).await;
                match output.summary() {
                    Some(last) => format!("UI exited ({exit}; last output: {last:?})"),
                    None => format!("UI exited ({exit})"),
                }
            };
            Event::Gone {
                status,
                then: AfterStop::Crash {
                    why,
                    counter: RestartReason::Crash,
                },
            }
        });
    }

    /// How long a stop now lets the answers in flight finish: [`ANSWERS_WAIT`]
    /// when it is `planned` (it waited for idle, or `restart --now` and
    /// `systemctl stop`) and the queue was last seen idle; else not at all —
    /// a stop that kills a running job (a passed deadline, `immediately`, a
    /// stall) would wait for an answer that never comes.
    pub(super) fn answers_wait(&self, planned: bool) -> Duration {
        if planned && self.seen_idle() {
            ANSWERS_WAIT
        } else {
            Duration::ZERO
        }
    }

    /// The UI is stopping or gone: what each concern knew of it ends with it
    /// (a render in progress, its stall and faults, its unloaded models, its
    /// queue's waiting times).
    fn forget_ui(&mut self) {
        self.images_ui_gone();
        self.watch_ui_gone();
        self.unload_ui_gone();
        self.slot.queue_age.clear();
        self.keep_ui_gone();
    }

    /// Stops the running UI in a task; `then` decides what follows; a ready
    /// UI's answers in flight at the front door get up to `answers_wait`.
    pub(super) fn begin_stop(&mut self, why: String, then: AfterStop, answers_wait: Duration) {
        let stop_timeout = self.config.ui.stop_timeout;
        let (proc, plan, answers) = match std::mem::replace(&mut self.slot.ui, Ui::Down) {
            // Not ready: it cannot be running a job, and a Forge importing torch
            // would lose the SIGINT anyway.
            Ui::Starting { proc, .. } => (
                proc,
                StopPlan {
                    grace: stop_timeout.min(NOT_READY_GRACE),
                    resend: Some(SIGINT_RESEND.min(NOT_READY_GRACE / 2)),
                },
                None,
            ),
            Ui::Ready { proc, .. } => (
                proc,
                StopPlan {
                    grace: stop_timeout,
                    resend: self
                        .config
                        .ui
                        .flavor
                        .may_lose_sigint()
                        .then_some(SIGINT_RESEND),
                },
                self.front.answers.clone(),
            ),
            other => {
                self.slot.ui = other;
                return;
            }
        };
        tracing::info!(ui_pid = proc.pid(), reason = %why, grace = ?plan.grace, "stopping the UI");
        self.forget_ui();
        self.slot.ui = Ui::Stopping {
            pid: proc.pid(),
            why,
        };
        self.slot.probing.queue = None;
        let bound = answers_wait.min(stop_timeout);
        self.tasks.spawn(async move {
            let mut proc = proc;
            if let Some(answers) = answers {
                // The gate closes with the snapshot this stop publishes: new
                // requests are held for the next UI meanwhile.
                tokio::select! {
                    all = answers.clone().finished(bound) => if !all {
                        tracing::warn!(cut = answers.now(), waited = ?bound, "answers still being sent when the UI is stopped");
                    },
                    _ = proc.wait() => {}
                }
            }
            let status = proc.stop(plan).await;
            Event::Gone { status, then }
        });
    }

    /// Counts a crash: back off, or `failed` after [`MAX_CRASHES`] within
    /// [`CRASH_WINDOW`]. The next start counts under `counter`.
    pub(super) fn record_crash(&mut self, why: String, counter: RestartReason) {
        let now = Instant::now();
        self.counters.crashes += 1;
        match self.slot.crashes.record(now) {
            Verdict::GiveUp { recent } => {
                let why = format!(
                    "UI crashed {recent} times in {}s ({})",
                    CRASH_WINDOW.as_secs(),
                    why.trim_start_matches("UI exited ")
                        .trim_matches(['(', ')'])
                );
                tracing::error!(reason = %why, "giving up until `sd-webui-supervisor restart` or a reload");
                self.slot.ui = Ui::Failed { why };
                self.ready_once();
            }
            Verdict::Backoff { delay, recent } => {
                tracing::warn!(reason = %why, delay = ?delay, "restarting the UI after a delay");
                self.slot.start_reason = Some(counter);
                self.slot.ui = Ui::Backoff {
                    until: after(now, delay),
                    why: format!(
                        "{why}, restarting in {}s (crash {recent} of {MAX_CRASHES} in {}s)",
                        delay.as_secs(),
                        CRASH_WINDOW.as_secs()
                    ),
                };
            }
        }
    }

    /// Graceful shutdown: `STOPPING=1`, stop the UI (waiting for a stop already in
    /// progress), cancel the rest, done.
    pub(super) async fn shutdown(&mut self) {
        self.notifier.stopping();
        tracing::info!("shutting down");
        if matches!(self.slot.ui, Ui::Starting { .. } | Ui::Ready { .. }) {
            let wait = self.answers_wait(true);
            self.begin_stop("supervisor is shutting down".into(), AfterStop::Exit, wait);
        }
        if matches!(self.slot.ui, Ui::Stopping { .. }) {
            self.publish();
            loop {
                if let Event::Gone { status, .. } = self.tasks.next().await {
                    if let Ok(s) = status {
                        tracing::info!(exit = %describe_exit(&s), "UI stopped");
                    }
                    break;
                }
            }
        }
        self.tasks.abort_all();
        self.slot.ui = Ui::Down;
        self.publish();
    }
}
