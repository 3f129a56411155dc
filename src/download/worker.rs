//! Downloads run in a helper process, `sd-webui-supervisor-fetch`, one process
//! per attempt; the supervisor keeps the queue, the retries and the progress.
//!
//! Why a second program: HTTPS needs a TLS stack (rustls, its certificate
//! checks, reqwest's pool and redirects), about half a megabyte of code. In the
//! daemon that code would be mapped for its whole life (the kernel maps code in
//! 64 KiB windows around what runs, so an idle daemon keeps nearly all of its
//! code resident) although most services never download anything, and those that
//! do, do it once. Built as a separate binary, it is loaded only while a download
//! runs and leaves with it.
//!
//! The protocol is one JSON [`Job`] on the helper's stdin (a token file's path,
//! never a token) and JSON-lines [`Report`]s on its stdout: progress every
//! [`REPORT_EVERY`], the start of verification, and one result. The helper dies
//! with the supervisor (`PR_SET_PDEATHSIG`), when its task is dropped, and when
//! the [`Helpers`] of a manager are dropped (before a self-upgrade's `execve`, so
//! no old helper writes into a `.part` the new binary resumes).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::Failure;
use super::fetch::{Place, Progress, UNKNOWN};
use crate::config::download::{Download, Sha256};

/// The helper's file name, looked for beside the running binary.
pub const HELPER: &str = "sd-webui-supervisor-fetch";
/// How often the helper reports progress.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);

/// What the helper is asked to do: one attempt at one download.
#[derive(Debug, Serialize, Deserialize)]
pub struct Job {
    /// The URL (with its query: it may carry a signature).
    pub url: String,
    /// The expected digest, hex; also the cache file's name.
    pub sha256: String,
    /// The token's file, read by the helper.
    pub token_file: Option<PathBuf>,
    /// The header carrying the token.
    pub token_header: String,
    /// The data dir holding the cache.
    pub data_dir: PathBuf,
    /// Mode of the folders created.
    pub mode: u32,
}

impl Job {
    /// The job for `download` into `place`.
    pub fn new(place: &Place, download: &Download) -> Job {
        Job {
            url: download.url.clone(),
            sha256: download.sha256.hex(),
            token_file: download.token_file.clone(),
            token_header: download.token_header.clone(),
            data_dir: place.data_dir.clone(),
            mode: place.mode,
        }
    }

    /// The place and download back, as the helper runs them.
    pub fn into_parts(self) -> Result<(Place, Download), String> {
        let sha256 = Sha256::parse(&self.sha256)?;
        Ok((
            Place {
                data_dir: self.data_dir,
                mode: self.mode,
            },
            Download {
                url: self.url,
                sha256,
                token_file: self.token_file,
                token_header: self.token_header,
            },
        ))
    }
}

/// One line of the helper's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// Bytes in the `.part`, and the file's size when known.
    Progress {
        /// Bytes so far.
        done: u64,
        /// Size, once a response said.
        total: Option<u64>,
    },
    /// All bytes are in; the digest is being checked.
    Verifying,
    /// In the cache.
    Done,
    /// The attempt failed.
    Failed(Failure),
}

/// The helpers running now, by pid: killed when the owning manager is dropped.
#[derive(Debug, Clone, Default)]
pub struct Helpers(Arc<Mutex<BTreeSet<i32>>>);

impl Helpers {
    fn add(&self, pid: i32) -> Registered {
        self.lock().insert(pid);
        Registered {
            helpers: self.clone(),
            pid,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// SIGKILLs every helper still running.
    pub fn kill_all(&self) {
        for &pid in self.lock().iter() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A helper's entry, removed once it has been waited for.
struct Registered {
    helpers: Helpers,
    pid: i32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.helpers.lock().remove(&self.pid);
    }
}

/// The helper beside the running binary (both live in the same `bin/`).
pub(crate) fn helper_path() -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Io(format!("cannot tell where this binary is: {e}")))?;
    let path = exe.parent().unwrap_or(Path::new("/")).join(HELPER);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Failure::Io(format!(
            "the download helper {} is missing (it is installed beside {})",
            path.display(),
            exe.display()
        )))
    }
}

/// The helper program `exe` set up to run as the supervisor's child: a job on
/// its piped stdin, its answer on its piped stdout, its stderr in the
/// supervisor's log. It dies with the supervisor (`PR_SET_PDEATHSIG`) and when
/// the returned child is dropped, so no helper outlives the work it was
/// started for. Every run of the helper (a download attempt, a `kube-patch`)
/// starts from this one setup.
pub(crate) fn helper_command(exe: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(exe);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    command
}

/// Runs one attempt in a helper process, mirroring its progress into
/// `progress`; `verifying` is called once all bytes are in.
pub async fn attempt(
    helpers: &Helpers,
    place: &Place,
    download: &Download,
    progress: &Progress,
    verifying: impl FnOnce(),
) -> Result<(), Failure> {
    let exe = helper_path()?;
    let job = serde_json::to_vec(&Job::new(place, download))
        .map_err(|e| Failure::Io(format!("cannot encode the download job: {e}")))?;
    let failed = |what: &str, e: std::io::Error| {
        Failure::Io(format!("download helper {}: {what}: {e}", exe.display()))
    };
    let mut child = helper_command(&exe)
        .spawn()
        .map_err(|e| failed("cannot start", e))?;
    let _registered = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(|pid| helpers.add(pid));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&job)
            .await
            .map_err(|e| failed("cannot send the job", e))?;
    }
    let mut outcome = None;
    let mut verifying = Some(verifying);
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| failed("cannot read its reports", e))?
        {
            match serde_json::from_str::<Report>(&line) {
                Ok(Report::Progress { done, total }) => {
                    progress.done.store(done, Ordering::Relaxed);
                    progress
                        .total
                        .store(total.unwrap_or(UNKNOWN), Ordering::Relaxed);
                }
                Ok(Report::Verifying) => {
                    if let Some(v) = verifying.take() {
                        v();
                    }
                }
                Ok(Report::Done) => outcome = Some(Ok(())),
                Ok(Report::Failed(f)) => outcome = Some(Err(f)),
                Err(e) => {
                    return Err(Failure::Io(format!(
                        "download helper {}: unreadable report: {e}",
                        exe.display()
                    )));
                }
            }
        }
    }
    let status = child.wait().await.map_err(|e| failed("cannot wait", e))?;
    outcome.unwrap_or_else(|| {
        Err(Failure::Network(format!(
            "the download helper ended without a result ({status})"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_round_trips_without_the_token() {
        let download = Download {
            url: "https://example.org/m.safetensors?sig=abc".into(),
            sha256: Sha256([7; 32]),
            token_file: Some("/run/credentials/x/token".into()),
            token_header: "Authorization".into(),
        };
        let place = Place {
            data_dir: "/var/lib/x".into(),
            mode: 0o750,
        };
        let text = serde_json::to_string(&Job::new(&place, &download)).unwrap();
        let job: Job = serde_json::from_str(&text).unwrap();
        let (p, d) = job.into_parts().unwrap();
        assert_eq!(d, download);
        assert_eq!((p.data_dir, p.mode), (place.data_dir, place.mode));
    }

    #[test]
    fn reports_are_one_line_each() {
        for r in [
            Report::Progress {
                done: 1,
                total: None,
            },
            Report::Verifying,
            Report::Done,
            Report::Failed(Failure::Http {
                status: 404,
                url: "https://h/x".into(),
            }),
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert!(!line.contains('\n'));
            let back: Report = serde_json::from_str(&line).unwrap();
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
    }
}
