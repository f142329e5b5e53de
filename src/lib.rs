//! neptun-local: the Neptun chat API's delete-chat endpoint, served from one
//! local SQLite file.
//!
//! Dependencies point one way: `cli` → {`server`, `routes`, `db`, `auth`,
//! `file_watch`}; `routes` → {`auth`, `db`, `http`}; `server` → `http`;
//! `file_watch` → `db` (a file's identity).
//! Only `server` knows tiny_http; SQL lives in `db`, plus the operator
//! checks in `doctor`, the read-back of a copy in `backup`, the checks
//! around copying one back in `restore`, and the demo seed in `demo`.
//! `stop` carries a stop signal to `backup` and `restore`, which act on it
//! between steps. `maintenance` keeps the file checkpointed and small;
//! `group_commit` lets concurrent deletes share one commit; `memory` keeps
//! the allocator from holding on to memory per thread, and `maintenance`
//! asks it to give freed memory back once idle; `file_watch` stops
//! the server if its database file, or SQLite's `-wal` or `-shm` beside it,
//! is deleted or replaced under it.

pub mod auth;
pub mod backup;
pub mod cli;
pub mod db;
pub mod demo;
pub mod doctor;
mod file_watch;
mod group_commit;
pub mod guard;
pub mod http;
pub mod logging;
pub mod maintenance;
pub mod memory;
pub mod restore;
pub mod routes;
pub mod server;
pub mod stop;
pub mod utc;
