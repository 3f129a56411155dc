//! sd-webui-supervisor: runs a Stable Diffusion web UI as a well-behaved systemd service.
//!
//! `docs/architecture.md` maps the parts: [`supervisor`] is the core, [`ui`] is
//! everything about the web UI it drives, [`control`] the adapters that talk to
//! the core, [`config`], [`layout`] and [`watch`] the config and what it lays out.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod download;
pub mod front;
pub mod handoff;
pub mod images;
pub mod inhibit;
pub mod init;
pub mod journal;
pub mod kube;
pub mod layout;
pub mod logging;
pub mod notify;
pub mod supervisor;
pub mod ui;
pub mod warn_once;
pub mod watch;
