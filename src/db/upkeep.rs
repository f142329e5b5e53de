//! The upkeep thread's own connection and its steps: WAL checkpoints and
//! giving free pages back (see `maintenance` for when each runs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;

use super::{
    Durability, Error, Result, WalIndex, WriteTurn, configure_connection, delete_expired_sessions,
    explain_full, take_turn,
};

/// How long an upkeep step waits for a lock before giving way. Short,
/// because the step that waits for readers (the WAL truncation) holds the
/// write lock meanwhile, and with it every request that wants to write.
const UPKEEP_BUSY_TIMEOUT: Duration = Duration::from_millis(2);

/// How often an upkeep step polls a lock within [`UPKEEP_BUSY_TIMEOUT`].
const UPKEEP_BUSY_POLL: Duration = Duration::from_micros(50);

/// The upkeep connection's busy handler: poll every [`UPKEEP_BUSY_POLL`]
/// for up to about [`UPKEEP_BUSY_TIMEOUT`]. SQLite's own handler sleeps
/// 1 ms, then 2 ms, ...; but what upkeep waits for is a request's read,
/// which is over in microseconds, while requests wait for upkeep.
fn upkeep_busy_handler(retries: i32) -> bool {
    const POLLS: u128 = UPKEEP_BUSY_TIMEOUT.as_micros() / UPKEEP_BUSY_POLL.as_micros();
    let go_on = u128::from(retries.unsigned_abs()) < POLLS;
    if go_on {
        std::thread::sleep(UPKEEP_BUSY_POLL);
    }
    go_on
}

/// Whether a step of upkeep could run.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Done,
    /// It could not finish now (another connection held a lock it needed,
    /// or it gave way to requests); try again soon.
    Blocked,
}

/// A dedicated connection for background upkeep (see `Database::upkeep_connection`).
pub struct Upkeep {
    conn: Connection,
    /// The WAL file, where SQLite keeps it: beside the database file, a
    /// symbolic link resolved.
    wal: PathBuf,
    /// The steps that take SQLite's write lock take this process's write
    /// turn first, so that requests wait for them on a mutex, not by polling.
    write_turn: WriteTurn,
    /// Checked before every step: see [`WalIndex`].
    index: Arc<WalIndex>,
}

impl Upkeep {
    /// Opens the connection (why it is its own: `Database::upkeep_connection`).
    pub(super) fn open(
        path: &Path,
        durability: Durability,
        write_turn: WriteTurn,
        index: Arc<WalIndex>,
    ) -> Result<Upkeep> {
        let mut conn = Connection::open(super::sqlite_path(path))?;
        configure_connection(&mut conn, UPKEEP_BUSY_TIMEOUT, durability)?;
        // Replaces the busy timeout just set with a finer-grained handler
        // that keeps to the same limit.
        conn.busy_handler(Some(upkeep_busy_handler))?;
        Ok(Upkeep {
            conn,
            wal: super::side_file(path, "-wal"),
            write_turn,
            index,
        })
    }

    /// Copies what it can of the WAL into the database file, without
    /// blocking writers (a PASSIVE checkpoint).
    pub fn copy_wal(&self) -> Result<Step> {
        self.index.check()?;
        let passive = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        match passive.map_err(|e| explain_full(&self.conn, e.into())) {
            Ok(()) => Ok(Step::Done),
            Err(Error::Busy(_)) => Ok(Step::Blocked),
            Err(e) => Err(e),
        }
    }

    /// Copies the rest of the WAL into the database file and truncates the
    /// WAL to zero bytes, so that no old page version (deleted content
    /// included) stays in it. Blocked while a reader still uses old frames.
    ///
    /// Writers wait meanwhile, and truncating a file costs time in
    /// proportion to its size (measured on this project's ext4 disk: about
    /// 9 ms for a 4 MiB WAL, 24 ms for 14 MiB): run [`Upkeep::copy_wal`]
    /// first, so that little is left to copy, and keep the WAL short with
    /// [`Upkeep::restart_wal`].
    pub fn truncate_wal(&self) -> Result<Step> {
        self.finish_checkpoint("TRUNCATE")
    }

    /// Copies the rest of the WAL into the database file and makes the next
    /// commit write the WAL from its start again, without truncating it
    /// (about 2 ms of waiting for writers, as measured here).
    ///
    /// Under steady writes the WAL is otherwise never fully copied when a
    /// writer starts, so no writer restarts it and it grows until the next
    /// truncation, which then costs more (see [`Upkeep::truncate_wal`]).
    pub fn restart_wal(&self) -> Result<Step> {
        self.finish_checkpoint("RESTART")
    }

    fn finish_checkpoint(&self, mode: &str) -> Result<Step> {
        let _turn = take_turn(&self.write_turn);
        self.index.check()?;
        let result = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                r.get::<_, i64>(0)
            });
        match result.map_err(|e| explain_full(&self.conn, e.into())) {
            Ok(0) => Ok(Step::Done),
            Ok(_) | Err(Error::Busy(_)) => Ok(Step::Blocked),
            Err(e) => Err(e),
        }
    }

    /// What the WAL file holds, as its length and the time it was last
    /// written; `None` if nothing (a commit not yet checkpointed, or old
    /// frames not yet cut, are something). A pass that finished leaves it
    /// empty, so an idle server finds this way what another process
    /// committed, and whether that process still writes.
    ///
    /// Not `PRAGMA data_version`: another connection's checkpoint changes
    /// it too, and two servers on one file would wake each other's upkeep
    /// for good.
    pub fn wal_content(&self) -> Option<(u64, SystemTime)> {
        let meta = std::fs::metadata(&self.wal).ok()?;
        (meta.len() > 0).then(|| {
            (
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            )
        })
    }

    /// Returns the number of pages on the freelist (space the file could give back).
    pub fn free_pages(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))?)
    }

    /// The size of the free pages, in bytes.
    pub fn free_bytes(&self) -> Result<i64> {
        let page_size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))?;
        Ok(self.free_pages()? * page_size)
    }

    /// Gives back up to `max_pages` free pages to the file system, in one
    /// short write transaction.
    pub fn vacuum_step(&self, max_pages: u32) -> Result<Step> {
        // Each row of the pragma's result is one step of its work: all of
        // them must be read, or only the first page is freed.
        let run = || -> rusqlite::Result<()> {
            let mut stmt = self
                .conn
                .prepare(&format!("PRAGMA incremental_vacuum({max_pages})"))?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        };
        let _turn = take_turn(&self.write_turn);
        self.index.check()?;
        match run().map_err(|e| explain_full(&self.conn, e.into())) {
            Ok(()) => Ok(Step::Done),
            Err(Error::Busy(_)) => Ok(Step::Blocked),
            Err(e) => Err(e),
        }
    }

    /// Deletes sessions that expired at or before `now`; returns how many.
    pub fn prune_sessions(&self, now: i64) -> Result<usize> {
        let _turn = take_turn(&self.write_turn);
        self.index.check()?;
        delete_expired_sessions(&self.conn, now)
    }
}
