//! neptun-local: the Neptun chat API's delete-chat endpoint, served from one
//! local SQLite file.
//!
//! Dependencies point one way: `cli` → {`server`, `routes`, `db`, `auth`};
//! `routes` → {`auth`, `db`, `http`}; `server` → `http`. Only `server` knows
//! tiny_http; only `db` (and `demo`, which seeds through it) knows SQL.

pub mod auth;
pub mod cli;
pub mod db;
pub mod demo;
pub mod http;
pub mod logging;
pub mod routes;
pub mod server;
