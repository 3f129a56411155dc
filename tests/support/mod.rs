//! The one support module of every integration test and benchmark (`mod support;`,
//! or `#[path = "../tests/support/mod.rs"] mod support;` from `benches/`).
//!
//! Each helper exists once:
//! - [`env`]: paths (repository, binary, stand-in UI, python3), free ports, clocks,
//!   scripts, `CI`, and how a test says it was skipped.
//! - [`wait`]: bounded polling; every wait in the tests ends.
//! - [`procs`]: processes seen through `/proc` (groups, guards, marked UIs).
//! - [`config`]: the one config writer ([`Conf`], rendered as TOML).
//! - [`container`]: the TCP control listener, health endpoints and the binary as
//!   PID 1 of a new PID namespace (container tests).
//! - [`scene`]: a scratch directory with a config ([`Scene`]) and a reload scenario
//!   built on it ([`Scenario`]: scene + fake notify socket + daemon).
//! - [`daemon`]: `sd-webui-supervisor run` as a child, killed with its UI on drop.
//! - [`record`]: the stand-in UI's JSON-lines record.
//! - [`notify`]: a fake `$NOTIFY_SOCKET`.
//! - [`http`]: a tiny HTTP client for submitting jobs to the stand-in.
//! - [`stats`]: a seeded generator and percentiles (soak test, benchmarks).
//! - [`layout`]: the data-dir checks of the layout tests.
//! - [`mounts`]: a folder made read-only by a bind mount (root only).
//! - [`control`]: a fake core for the control-plane tests, `status --json` of a
//!   daemon by its socket, and [`schema`].
//! - [`download_server`]: a loopback file server for the download tests (Range,
//!   token check, redirects, dropped connections, slow mode).
//! - [`systemd`]: a real systemd as PID 1 in private namespaces, and its logind.
//! - [`browser`]: a real headless Chromium driven over the DevTools protocol.
//!
//! Each test binary uses a different subset.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod config;
pub mod container;
pub mod control;
pub mod daemon;
pub mod download_server;
pub mod env;
pub mod http;
pub mod layout;
pub mod mounts;
pub mod notify;
pub mod procs;
pub mod record;
pub mod scene;
pub mod schema;
pub mod stats;
pub mod systemd;
pub mod wait;

pub use config::{Conf, write_atomic, write_in_place};
pub use daemon::{Daemon, DaemonBuilder};
pub use env::*;
pub use http::{comfy_prompt, get_json, http, http_on, txt2img};
pub use notify::{Notification, NotifySocket};
pub use procs::*;
pub use record::{Rec, Record, RecordTail, events, pid, read_record, t, wait_record};
pub use scene::{Scenario, Scene};
pub use stats::{Rng, percentile};
pub use wait::{poll_until, wait_for, wait_for_with};
