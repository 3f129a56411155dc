//! sd-webui-supervisor: runs a Stable Diffusion web UI as a well-behaved systemd service.

pub mod cli;
pub mod config;
pub mod flavor;
pub mod layout;
