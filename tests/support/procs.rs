//! Processes seen through `/proc`: groups, the guards the daemon forks, and the
//! processes of a test's UI (marked by the stand-in's `STANDIN_RECORD=…`).

use std::fs;
use std::path::Path;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`), in bytes; 0 when the
/// process or the field is gone (the benchmarks' memory figures).
pub fn status_bytes(pid: i32, field: &str) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

/// `/proc/<pid>/stat`: (state, ppid, pgrp), or `None` when the process is gone.
pub fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: split after ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Whether `pid` is a live process: it exists and is not a zombie (the machine's
/// init may not reap orphans, so a dead orphan can linger as a zombie).
pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _, _)| state != 'Z' && state != 'X')
}

/// The guards `parent` forked for its UI's group (named `sd-webui-guard`; see
/// src/process/guard.rs).
pub fn guards_of(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|(_, ppid, _)| ppid == parent)
                && fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim_end() == "sd-webui-guard")
        })
        .collect()
}

/// Live children of `parent` whose command name (`/proc/PID/comm`, at most 15
/// bytes of the program's file name) is `comm`.
pub fn children_named(parent: i32, comm: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|(state, ppid, _)| ppid == parent && state != 'Z')
                && fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim_end() == comm)
        })
        .collect()
}

/// Processes that have `path` open (any of their descriptors points at it).
pub fn holding(path: &Path) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == path))
            })
        })
        .collect()
}

/// Every pid under /proc.
fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live (non-zombie) processes of process group `pgid`, with their state.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            proc_stat(p)
                .is_some_and(|(state, _, pgrp)| pgrp == pgid && state != 'Z' && state != 'X')
        })
        .collect()
}

/// Live processes whose environment holds exactly `entry` (`KEY=VALUE`). The
/// stand-in's unique `STANDIN_RECORD=…` marks every process of a test's UI, its
/// children included, whatever group they ended up in.
pub fn live_processes_with_env(entry: &str) -> Vec<i32> {
    let needle = entry.as_bytes();
    all_pids()
        .into_iter()
        .filter(|&p| {
            alive(p)
                && fs::read(format!("/proc/{p}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == needle))
        })
        .collect()
}

/// SIGKILLs every live process marked with `entry` (see [`live_processes_with_env`])
/// and their process groups.
pub fn kill_marked(entry: &str) {
    for pid in live_processes_with_env(entry) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        if let Some((_, _, pgrp)) = proc_stat(pid)
            && pgrp == pid
        {
            let _ = killpg(Pid::from_raw(pgrp), Signal::SIGKILL);
        }
    }
}
