//! Integration tests: the real binary, a temporary database, real HTTP.
//!
//! The tests that signal the server or set its resource limits are Unix
//! only; elsewhere (Windows) the helpers that serve only them are unused.
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

mod backup;
mod cli;
mod contract;
mod durability;
mod footprint;
mod hostile;
mod openapi;
mod readme;
mod restore;
mod sessions;
mod support;
mod transport;
