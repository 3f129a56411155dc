//! The web UI the supervisor drives: which flavor it is ([`flavor`]), how it is
//! launched ([`process`], [`guard`]), its HTTP API ([`api`]), ComfyUI's queue
//! broadcasts ([`comfy_ws`]) and the GPUs it needs ([`gpu`]).

pub mod api;
pub mod comfy_ws;
pub mod flavor;
pub mod gpu;
pub mod guard;
pub mod process;
