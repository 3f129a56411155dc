//! The limits the operating system puts on what the config hands to it — argv and
//! environment strings, file names, paths, the control socket's address — and the
//! upper bounds of every duration.
//!
//! `check-config` and every reload run the same checks, so a config that passes
//! can never fail later at exec, symlink, bind or a deadline computation for a
//! reason that was visible in the file. Each check returns the message to report,
//! or `None`.

use std::time::Duration;

/// Longest file name (one path component), in bytes: Linux `NAME_MAX`.
pub const NAME_MAX: usize = 255;

/// Longest path, in bytes without the terminating NUL (`PATH_MAX` counts it).
pub const PATH_MAX: usize = libc::PATH_MAX as usize - 1;

/// Longest unix socket path, in bytes: `sun_path` holds 108 including the NUL.
pub const SOCKET_PATH_MAX: usize = 107;

/// Longest single argv or environment string (`NAME=value`), in bytes: the
/// kernel's `MAX_ARG_STRLEN` (32 pages) less the NUL.
pub const ARG_STRLEN_MAX: usize = 32 * 4096 - 1;

/// Most bytes the config may add to the UI's argv and environment together. The
/// kernel allows about 2 MiB for exec (a quarter of the 8 MiB stack), shared
/// with the environment the supervisor inherits; half of it is the config's.
pub const EXEC_BYTES_MAX: usize = 1 << 20;

/// Room kept for the layout's temporary names (`.sd-webui-supervisor.tmp.PID.N`)
/// in the deepest folder under the data dir.
pub const TEMP_NAME_ROOM: usize = 64;

/// Longest download URL, in bytes: common servers and proxies refuse request
/// lines much past 8 KiB, so a longer URL could never be fetched.
pub const URL_MAX: usize = 8 * 1024;

/// Most GPUs `ui.gpus` may list.
pub const GPUS_MAX: usize = 256;

/// The upper bound of one duration key, with its spelling for messages.
#[derive(Debug, Clone, Copy)]
pub struct DurationLimit {
    /// The longest accepted value.
    pub max: Duration,
    /// How `config.example.toml` writes it.
    pub text: &'static str,
}

const HOUR: u64 = 3600;

/// `ui.startup_timeout`: a first start that downloads models may take hours, not days.
pub const STARTUP_TIMEOUT: DurationLimit = DurationLimit {
    max: Duration::from_secs(24 * HOUR),
    text: "24h",
};
/// `ui.stop_timeout`: the grace between SIGINT and SIGKILL.
pub const STOP_TIMEOUT: DurationLimit = DurationLimit {
    max: Duration::from_secs(HOUR),
    text: "1h",
};
/// `restart.idle_grace`.
pub const IDLE_GRACE: DurationLimit = DurationLimit {
    max: Duration::from_secs(24 * HOUR),
    text: "24h",
};
/// `restart.deadline` (`"never"` is the way to say "no deadline").
pub const DEADLINE: DurationLimit = DurationLimit {
    max: Duration::from_secs(30 * 24 * HOUR),
    text: "30d",
};
/// `restart.poll_interval`.
pub const POLL_INTERVAL: DurationLimit = DurationLimit {
    max: Duration::from_secs(HOUR),
    text: "1h",
};

/// `front.hold_timeout`: how long the front door holds an API request for a UI
/// that is not ready.
pub const HOLD_TIMEOUT: DurationLimit = DurationLimit {
    max: Duration::from_secs(24 * HOUR),
    text: "24h",
};

/// `health.stall_timeout`.
pub const STALL_TIMEOUT: DurationLimit = DurationLimit {
    max: Duration::from_secs(24 * HOUR),
    text: "24h",
};
/// `health.stall_grace`: between the interrupt of a stalled job and the restart.
pub const STALL_GRACE: DurationLimit = DurationLimit {
    max: Duration::from_secs(HOUR),
    text: "1h",
};

/// `gpu.unload_after`.
pub const UNLOAD_AFTER: DurationLimit = DurationLimit {
    max: Duration::from_secs(30 * 24 * HOUR),
    text: "30d",
};

/// Every duration key with its bound: `(section, key, limit)`. The docs and tests
/// read this list; validation uses the same constants.
pub const DURATIONS: &[(&str, &str, DurationLimit)] = &[
    ("ui", "startup_timeout", STARTUP_TIMEOUT),
    ("ui", "stop_timeout", STOP_TIMEOUT),
    ("restart", "idle_grace", IDLE_GRACE),
    ("restart", "deadline", DEADLINE),
    ("restart", "poll_interval", POLL_INTERVAL),
    ("front", "hold_timeout", HOLD_TIMEOUT),
    ("gpu", "unload_after", UNLOAD_AFTER),
    ("health", "stall_timeout", STALL_TIMEOUT),
    ("health", "stall_grace", STALL_GRACE),
];

/// A string that becomes one argv element (or an environment value).
pub fn arg(s: &str) -> Option<String> {
    if s.contains('\0') {
        Some("contains a NUL byte".into())
    } else if s.len() > ARG_STRLEN_MAX {
        Some(format!(
            "is {} bytes long; one argument holds at most {ARG_STRLEN_MAX}",
            s.len()
        ))
    } else {
        None
    }
}

/// An environment variable name: what a shell, Python's `os.environ` and systemd
/// all accept — letters, digits and `_`, not starting with a digit.
pub fn env_name(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        None
    } else {
        Some(
            "not a valid environment variable name (letters, digits and '_', not starting with a digit)",
        )
    }
}

/// A file name that becomes one path component.
pub fn name(name: &str) -> Option<String> {
    (name.len() > NAME_MAX).then(|| {
        format!(
            "name is {} bytes long; a file name holds at most {NAME_MAX}",
            name.len()
        )
    })
}

/// An absolute path handed to the kernel (NUL was checked by the caller).
pub fn path(path: &str) -> Option<String> {
    if let Some(long) = path.split('/').find(|c| c.len() > NAME_MAX) {
        Some(format!(
            "a path component is {} bytes long; at most {NAME_MAX}",
            long.len()
        ))
    } else if path.len() > PATH_MAX {
        Some(format!(
            "is {} bytes long; a path holds at most {PATH_MAX}",
            path.len()
        ))
    } else {
        None
    }
}

/// The control socket's path, which must fit `sun_path`.
pub fn socket_path(path: &str) -> Option<String> {
    (path.len() > SOCKET_PATH_MAX).then(|| {
        format!(
            "is {} bytes long; a unix socket path holds at most {SOCKET_PATH_MAX}",
            path.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_exclusive_of_the_nul() {
        assert_eq!(PATH_MAX, 4095);
        assert!(path(&format!("/{}", "a".repeat(255))).is_none());
        assert!(path(&format!("/{}", "a".repeat(256))).is_some());
        assert!(socket_path(&format!("/{}", "s".repeat(106))).is_none());
        assert!(socket_path(&format!("/{}", "s".repeat(107))).is_some());
        assert!(arg(&"x".repeat(ARG_STRLEN_MAX)).is_none());
        assert!(arg(&"x".repeat(ARG_STRLEN_MAX + 1)).is_some());
    }

    #[test]
    fn environment_names() {
        for ok in ["A", "_X", "PYTORCH_CUDA_ALLOC_CONF", "a1"] {
            assert_eq!(env_name(ok), None, "{ok}");
        }
        for bad in ["", "1A", "A B", "A=B", "é", "A\0"] {
            assert!(env_name(bad).is_some(), "{bad:?}");
        }
    }
}
