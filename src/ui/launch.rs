//! What the UI is started with, in one place: its argv (command, the flavor's
//! managed flags, the API credentials, the user's extra args), its environment and
//! the credentials the supervisor's own API calls then need.

use crate::config::Config;

use super::api::ApiAuth;
use super::process::Launch;

/// A launch ready to exec, with the credentials for talking to the UI afterwards.
#[derive(Debug)]
pub struct Prepared {
    /// Program, arguments and extra environment.
    pub launch: Launch,
    /// `ui.api_auth_file`'s credentials, when set.
    pub auth: Option<ApiAuth>,
}

/// Builds the launch for `config`. Reads `ui.api_auth_file` (a small file, but
/// I/O: call it from a task, not from the core's loop). The credentials go on the
/// UI's command line as the UIs require; they never reach a log or the status.
pub fn prepare(config: &Config) -> Result<Prepared, String> {
    let auth = match &config.ui.api_auth_file {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| ApiAuth::parse(&t))
                .map_err(|e| format!("ui.api_auth_file {}: {e}", path.display()))?,
        ),
    };
    let mut argv = config.ui_argv();
    if let Some(a) = &auth {
        // Before extra_args, so the user's own flags still win.
        let at = argv.len().saturating_sub(config.ui.extra_args.len());
        argv.splice(
            at..at,
            [
                "--api-auth".to_string(),
                format!("{}:{}", a.user, a.password),
            ],
        );
    }
    let mut env = config.ui.environment.clone();
    env.entry("PYTHONUNBUFFERED".into())
        .or_insert_with(|| "1".into());
    if let Some(gpus) = &config.ui.gpus {
        let ids: Vec<String> = gpus.iter().map(u32::to_string).collect();
        env.insert("CUDA_VISIBLE_DEVICES".into(), ids.join(","));
    }
    Ok(Prepared {
        launch: Launch { argv, env },
        auth,
    })
}
