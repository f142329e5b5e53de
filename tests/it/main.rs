//! Integration tests: the real binary, a temporary database, real HTTP.

mod cli;
mod contract;
mod durability;
mod footprint;
mod hostile;
mod openapi;
mod sessions;
mod support;
mod transport;
