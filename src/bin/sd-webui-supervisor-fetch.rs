//! `sd-webui-supervisor-fetch`: one download attempt, started by the supervisor
//! (never by hand) with a JSON job on stdin. A program of its own so that the TLS
//! stack is loaded only while something downloads (`src/download/worker.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    sd_webui_supervisor::download::helper::main()
}
