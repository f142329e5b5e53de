//! How the commands that only read (the listings, `backup`, and `doctor`
//! without a repair) open the database, so that reading one never changes
//! it, and a file this user may read can be read.
//!
//! Opened as the other commands open files, a copy that `backup` wrote would
//! become a WAL database, its bytes changed and `-wal` and `-shm` files put
//! beside it, and a read-only copy could not be read at all. A database
//! that this user cannot open to write (in a file-system snapshot, on a
//! read-only mount, or another user's) would be refused, though it can be
//! read: a WAL database is read through a `-shm` file, which SQLite cannot
//! make there, so [`db::open_read_only`] reads it as it is.

use std::path::Path;

use rusqlite::Connection;

use super::{Error, failed_to_open};
use crate::db::{self, Database};

/// A database opened to be read, and how.
pub(super) enum Reading {
    /// Opened as every command opens it.
    AsServed(Database),
    /// A copy in rollback-journal mode, as `backup` writes them, opened
    /// read-only and left as it is.
    Copy(Connection),
    /// A database that this user cannot open to write, opened read-only;
    /// with why it cannot be written.
    Unwritable { conn: Connection, why: String },
}

/// Opens the database at `path` to be read: a copy read-only, any other
/// file with `open_existing`, or read-only if that finds it cannot be
/// written. If it cannot be read either, the first error says why, naming
/// what is missing, unless the second one does (a `-wal` that cannot be
/// read without a `-shm`).
pub(super) fn open(
    path: &Path,
    open_existing: impl FnOnce() -> Result<Database, Error>,
) -> Result<Reading, Error> {
    let db_error = |source| failed_to_open(path, source);
    if db::is_rollback_journal_file(path) {
        return Ok(Reading::Copy(db::open_read_only(path).map_err(db_error)?));
    }
    match open_existing() {
        Ok(db) => Ok(Reading::AsServed(db)),
        Err(Error::Database {
            source: db::Error::NoAccess(why),
            ..
        }) => match db::open_read_only(path) {
            Ok(conn) => Ok(Reading::Unwritable { conn, why }),
            Err(e @ db::Error::NoAccess(_)) => Err(db_error(e)),
            Err(_) => Err(db_error(db::Error::NoAccess(why))),
        },
        Err(e) => Err(e),
    }
}

impl Reading {
    /// Runs `f` on a connection to the database.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Connection) -> T) -> db::Result<T> {
        match self {
            Reading::AsServed(db) => db.with_connection(|conn| Ok(f(conn))),
            Reading::Copy(conn) | Reading::Unwritable { conn, .. } => Ok(f(conn)),
        }
    }
}
