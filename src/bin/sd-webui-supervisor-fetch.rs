//! `sd-webui-supervisor-fetch`: one download attempt, or with `kube-patch` one
//! patch of the Pod's deletion cost, started by the supervisor (never by hand)
//! with a JSON job on stdin. A program of its own so that the TLS stack is
//! loaded only while it is needed (`src/download/worker.rs`, `src/kube/api.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some(sd_webui_supervisor::kube::patch::KUBE_PATCH_ARG) => {
            sd_webui_supervisor::kube::patch::main()
        }
        _ => sd_webui_supervisor::download::helper::main(),
    }
}
