//! Declared images (issue 15): pictures described in the config (`[images.<name>]`)
//! that the supervisor renders through the UI it runs, once the UI is ready and
//! idle, and keeps on disk as `data.dir/outputs/declared/<name>.png` with a JSON
//! sidecar. A Nix build cannot make them (no GPU in the sandbox); the supervisor
//! can, because it owns the UI and knows when it is idle.
//!
//! [`fingerprint`] says when a picture is stale, [`files`] reads and writes the
//! files, [`render`] talks to the UI, [`task`] is one render as the core runs it, and [`book`] is the core's per-image state.

pub mod book;
pub mod files;
pub mod fingerprint;
pub mod render;
pub mod task;

pub use book::{Book, FailedImage, GenerateError, GenerateResult, ImagesStatus, Job};
pub use files::{Outputs, Sidecar};
pub use fingerprint::fingerprint;
pub use render::{RenderError, Rendered, Renderer};
