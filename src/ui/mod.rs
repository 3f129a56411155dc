//! The web UI the supervisor drives: which flavor it is ([`flavor`]), how it is
//! launched ([`process`], [`guard`]), its output ([`output`]), its port
//! ([`port`]), its HTTP API ([`api`], over [`loopback`]), ComfyUI's queue
//! broadcasts ([`comfy_ws`]), the GPUs it needs ([`gpu`]), what it is started with
//! ([`launch`]) and its managed settings ([`settings_sync`]).

pub mod api;
pub mod comfy_ws;
pub mod cuda_faults;
pub mod flavor;
pub mod gpu;
pub mod guard;
pub mod launch;
pub mod loopback;
pub mod output;
pub mod port;
pub mod process;
pub mod settings_sync;
