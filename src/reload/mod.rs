//! The pure and self-contained parts of the reload engine (docs/design.md#reload-and-restart).
//!
//! [`diff`] says what a new config changes and how each change must be applied
//! (live, by a UI restart, or inside the supervisor only); [`watch`] tells the
//! daemon when the config file's content changed, following the symlink chain that
//! NixOS activation swaps. The core state machine combines them with SIGHUP and the
//! control API into reloads.

mod chain;
pub mod diff;
pub mod watch;
