//! Tells the daemon when the config file's content changed, following the symlink
//! chain that NixOS activation swaps ([`chain`]), with a debounce ([`file`]).

mod chain;
mod file;

pub use file::{Change, Changes, Check, ConfigWatcher, Debounce, WatchError};
