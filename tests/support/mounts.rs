//! A folder made read-only by a bind mount, so that a test can make one link of
//! a layout fail for a reason that is not transient (EROFS). Mounting needs root:
//! without it the test is skipped with the reason (a failure under `CI=true`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A read-only bind mount of a folder onto itself; unmounted when dropped (also
/// when the test fails).
pub struct ReadOnly(PathBuf);

impl ReadOnly {
    /// Makes `dir` read-only, or skips the test (returns `None`) when not root.
    pub fn mount(dir: &Path) -> Option<ReadOnly> {
        if !nix::unistd::geteuid().is_root() {
            super::skip("needs root to bind-mount a folder read-only");
            return None;
        }
        let run = |args: &[&str]| {
            let st = Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .status()
                .expect("run mount");
            assert!(st.success(), "mount {args:?} {}", dir.display());
        };
        run(&["--bind"]);
        let guard = ReadOnly(dir.to_path_buf());
        run(&["-o", "remount,ro,bind"]);
        Some(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
