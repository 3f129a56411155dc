//! What the UI is started with, in one place: its argv (command, the flavor's
//! managed flags, the API credentials, the user's extra args), its environment and
//! the credentials the supervisor's own API calls then need.

use crate::config::Config;

use super::api::ApiAuth;
use super::output::Redactor;
use super::process::Launch;

/// A launch ready to exec, with the credentials for talking to the UI afterwards.
#[derive(Debug)]
pub struct Prepared {
    /// Program, arguments and extra environment.
    pub launch: Launch,
    /// `ui.api_auth_file`'s credentials, when set.
    pub auth: Option<ApiAuth>,
    /// The secrets to mask in the UI's relayed output.
    pub redactor: Redactor,
}

/// Why the UI's launch cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// `ui.api_auth_file` is unreadable, or not one `user:password` line.
    #[error("ui.api_auth_file {}: {reason}", path.display())]
    AuthFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Builds the launch for `config`. Reads `ui.api_auth_file` (a small file, but
/// I/O: call it from a task, not from the core's loop). The credentials go into the
/// UI's `COMMANDLINE_ARGS` (Forge and A1111 append it to their argv, ui-apis.md
/// §7.1), never onto its command line: `/proc/PID/cmdline` is world-readable,
/// `/proc/PID/environ` is not. The password is masked in the UI's relayed output.
pub fn prepare(config: &Config) -> Result<Prepared, PrepareError> {
    let auth = match &config.ui.api_auth_file {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| ApiAuth::parse(&t))
                .map_err(|reason| PrepareError::AuthFile {
                    path: path.clone(),
                    reason,
                })?,
        ),
    };
    let argv = config.ui_argv();
    let mut env = config.ui.environment.clone();
    if let Some(a) = &auth
        && config.ui.flavor.reads_commandline_args_env()
    {
        // After the user's own COMMANDLINE_ARGS.
        let flag = format!("--api-auth {}:{}", a.user, a.password);
        let merged = match env.get("COMMANDLINE_ARGS").filter(|v| !v.trim().is_empty()) {
            Some(own) => format!("{own} {flag}"),
            None => flag,
        };
        env.insert("COMMANDLINE_ARGS".into(), merged);
    }
    // The password is the secret; the user name stays readable in the logs.
    let redactor = Redactor::new(auth.iter().map(|a| a.password.clone()));
    env.entry("PYTHONUNBUFFERED".into())
        .or_insert_with(|| "1".into());
    if let Some(gpus) = &config.ui.gpus {
        let ids: Vec<String> = gpus.iter().map(u32::to_string).collect();
        env.insert("CUDA_VISIBLE_DEVICES".into(), ids.join(","));
    }
    Ok(Prepared {
        launch: Launch { argv, env },
        auth,
        redactor,
    })
}
