//! sd-webui-supervisor: runs a Stable Diffusion web UI as a well-behaved systemd service.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod download;
pub mod flavor;
pub mod gpu;
pub mod layout;
pub mod notify;
pub mod probe;
pub mod process;
pub mod queue_signal;
pub mod reload;
pub mod state;
pub mod status_line;
pub mod supervisor;
