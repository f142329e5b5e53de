//! The SQLite store: connection pool, per-connection settings, and one
//! method per query. The schema and its migration are in `schema`, what
//! concerns the file on disk in `file`.
//!
//! Nothing here knows about HTTP. Callers get domain values (`bool`,
//! `Option<String>`, ids) and an [`Error`] that says whether retrying later
//! could help ([`Error::Busy`]) or not.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use parking_lot::{FairMutex, FairMutexGuard};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use scheduled_thread_pool::ScheduledThreadPool;

use crate::group_commit::GroupCommit;

mod access;
mod file;
pub mod listings;
mod rows;
mod schema;
mod upkeep;

pub use access::shell_word;
use file::WalIndex;
#[cfg(unix)]
pub use file::permission_bits;
pub use file::{
    Identity, NotAFile, create_owner_only, database_files, describe, identity, is_empty_file,
    is_rollback_journal_file, is_wal_file, more_than_one_name, names_a_directory, not_a_file,
    open_to_other_users, resolved_path, side_file, side_file_open_to_other_users, sqlite_path,
    watched_identity,
};
pub use listings::{ChatInfo, SessionInfo, UserInfo};
pub use rows::{
    Actor, NewFile, NewSession, RemovedUser, insert_chat, insert_file, insert_message,
    insert_session, insert_share, insert_share_whitelist_entry, insert_user,
};
use schema::{Found, migrate, ours};
pub use schema::{Missing, SCHEMA_VERSION, has_object, make_missing_indexes, missing_from_schema};
pub use upkeep::{Step, Upkeep};

type Pool = r2d2::Pool<SqliteConnectionManager>;
type PooledConnection = r2d2::PooledConnection<SqliteConnectionManager>;

/// How the store is opened, and how it behaves under contention.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a statement waits for another writer's lock, and how long a
    /// caller waits for a free pooled connection, before giving up with
    /// [`Error::Busy`]. At most `i32::MAX` milliseconds (about 24 days):
    /// rusqlite panics beyond that, so the command line allows 1 hour.
    pub busy_timeout: Duration,
    /// The number of pooled connections. A request holds one only for its
    /// session lookup, and a group commit's leader one for the commit, so a
    /// few serve many workers; each one more costs a page cache
    /// (see [`MAX_POOL_SIZE`]).
    pub pool_size: u32,
    /// Whether a commit waits for the disk (see [`Durability`]).
    pub durability: Durability,
    /// The page size of a database file that [`Database::open`] creates or
    /// finds empty (`None`: SQLite's, 4096 bytes). A database keeps its
    /// own: a WAL database's page size cannot change.
    pub new_file_page_size: Option<u32>,
}

/// The most pooled connections worth having, however many workers share
/// them: in the load bench (64 connections, 32 workers), 4 connections
/// deleted as fast as 32, and peak RSS fell from 21.7 to 16.8 MiB.
pub const MAX_POOL_SIZE: u32 = 4;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            busy_timeout: Duration::from_secs(5),
            pool_size: MAX_POOL_SIZE,
            durability: Durability::Full,
            new_file_page_size: None,
        }
    }
}

/// `PRAGMA synchronous` for every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is synced at every commit, so a delete that
    /// was answered `200` stays deleted after a power loss or OS crash.
    Full,
    /// `synchronous=NORMAL`: faster (no sync per commit), still consistent,
    /// but the last deletes before a power loss or OS crash can come back.
    /// Application crashes lose nothing in either mode.
    Normal,
}

impl Durability {
    fn pragma_value(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }

    /// `PRAGMA fullfsync`: whether a commit's sync flushes the drive's
    /// cache too where the OS tells the two apart (macOS, with
    /// `F_FULLFSYNC`).
    fn fullfsync(self) -> &'static str {
        match self {
            Durability::Full => "ON",
            Durability::Normal => "OFF",
        }
    }
}

/// Everything that can go wrong in the store.
///
/// `Clone`, because when a batch of deletes fails as a whole (see
/// [`Database::delete_chat`]) every caller in it gets the same error.
#[derive(Clone, Debug)]
pub enum Error {
    /// The database stayed locked by another writer, or every pooled
    /// connection stayed in use, for longer than the busy timeout. Nothing was
    /// changed; the same call may succeed later.
    Busy(String),
    /// The disk (or a file-size limit) is full. Nothing was changed; the same
    /// call may succeed once space is freed.
    StorageFull(String),
    /// The named user does not exist.
    UnknownUser(String),
    /// A user with this id already exists.
    UserExists(String),
    /// The user still has chats, and removing it was not asked to delete them.
    UserHasChats { id: String, chats: i64 },
    /// The file is an SQLite database of another application: it has
    /// tables, but not ours with a schema version. It is left as it was.
    Foreign,
    /// The file, opened only to be read, holds no tables at all.
    NoSchema,
    /// The file is not an SQLite database, or its header is damaged
    /// (SQLite's "file is not a database"). It is left as it was.
    NotADatabase,
    /// The file was written by a newer neptun-local whose schema we do not know.
    SchemaTooNew { found: i64 },
    /// This user may not read or write the file, or create SQLite's files
    /// beside it; the text says which (SQLite's own message does not).
    NoAccess(String),
    /// SQLite found the file damaged (a bad disk, a copy made while it was
    /// written, a file synced by a cloud folder). What it could read is
    /// still served; what it could not fails with this.
    Damaged(String),
    /// A pooled connection does not enforce foreign keys, so deleting a chat
    /// would leave its messages behind. Refuse to run rather than do that.
    ForeignKeysOff,
    /// The `-shm` file beside the database (SQLite's index of the WAL) was
    /// deleted or replaced while this process had it open: nothing is
    /// written or checkpointed from here, which could drop other processes'
    /// commits (see `WalIndex`).
    WalIndexReplaced(PathBuf),
    /// Any other SQLite failure. The text is for the log, never for a client.
    Sqlite(Arc<rusqlite::Error>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Busy(cause) => write!(f, "database busy: {cause}"),
            Error::StorageFull(cause) => write!(f, "storage full: {cause}"),
            Error::UnknownUser(id) => {
                write!(
                    f,
                    "no user with id {id:?} (`user list` shows the users there are)"
                )
            }
            Error::UserExists(id) => write!(f, "a user with id {id:?} already exists"),
            Error::UserHasChats { id, chats } => write!(
                f,
                "user {id:?} has {chats} chat(s); add --with-chats to delete them with it \
                 (that cannot be undone)"
            ),
            Error::Foreign => f.write_str(
                "this SQLite database is not a neptun-local one (it has tables, but not \
                 neptun-local's); it was left as it was: choose another --db",
            ),
            Error::NoSchema => {
                f.write_str("the file holds no tables: it is not a neptun-local database yet")
            }
            Error::NotADatabase => f.write_str(
                "not an SQLite database, or one whose header is damaged (sqlite: file is not \
                 a database)",
            ),
            Error::SchemaTooNew { found } => write!(
                f,
                "the database has schema version {found}, but this neptun-local only knows \
                 versions up to {SCHEMA_VERSION}; use a newer neptun-local"
            ),
            Error::NoAccess(why) => f.write_str(why),
            Error::Damaged(cause) => write!(f, "the file is damaged (sqlite: {cause})"),
            Error::ForeignKeysOff => write!(
                f,
                "SQLite did not enable foreign keys on a connection; refusing to run, \
                 because deleting a chat would not delete its messages"
            ),
            Error::WalIndexReplaced(path) => write!(
                f,
                "{} was deleted or replaced while the database was open, so other \
                 processes index the WAL in another file: nothing is written or \
                 checkpointed from here, which could drop their commits",
                path.display()
            ),
            Error::Sqlite(e) => write!(f, "sqlite: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// SQLite's primary result code, for a failure that is not one of ours.
    fn sqlite_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Sqlite(e) => e.sqlite_error_code(),
            _ => None,
        }
    }

    /// What a person who ran a command can do about this error, where
    /// SQLite's words do not say: end another program's write transaction,
    /// or free disk space.
    pub fn what_to_do(&self) -> Option<&'static str> {
        match self {
            Error::Busy(_) => Some(END_THE_WRITE_TRANSACTION),
            Error::StorageFull(_) => Some(FREE_SOME_SPACE),
            _ => None,
        }
    }
}

/// What to do with a database file whose header is damaged: SQLite cannot
/// open it, or not to write, so not even `restore` can copy a backup in.
pub const MOVE_ASIDE_AND_RESTORE: &str = "move the file aside, with its -wal and -shm files if \
     there are any, and `neptun-local restore BACKUP` writes a new one from a backup";

/// What to do when a command waited out the busy timeout for the write
/// lock. The server and the other commands hold it for far less than that.
pub const END_THE_WRITE_TRANSACTION: &str = "another program kept a write transaction open \
     all the while (a `sqlite3` shell, or a database browser with unsaved changes): end it \
     (COMMIT or ROLLBACK, or close the program), and run this again";

/// What to do when a command found the disk full. A delete needs room
/// too, which surprises someone who deletes to make room: `secure_delete`
/// overwrites each page it frees, and the WAL holds the overwritten copies
/// until they are checkpointed.
pub const FREE_SOME_SPACE: &str = "free some disk space and run this again (a delete needs \
     room too, for a moment: about the size of what it deletes)";

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        // A schema format number (header bytes 44-47) beyond any SQLite's:
        // SQLite's generic error code, with these words.
        if let rusqlite::Error::SqliteFailure(_, Some(message)) = &e {
            if message == "unsupported file format" {
                return Error::Damaged(e.to_string());
            }
        }
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Busy(e.to_string()),
            Some(ErrorCode::DiskFull) => Error::StorageFull(e.to_string()),
            Some(ErrorCode::DatabaseCorrupt) => Error::Damaged(e.to_string()),
            Some(ErrorCode::NotADatabase) => Error::NotADatabase,
            _ => Error::Sqlite(Arc::new(e)),
        }
    }
}

impl From<r2d2::Error> for Error {
    /// r2d2 reports every failure to hand out a connection as a timeout
    /// (including a connection that failed to open); the cause was already
    /// logged by r2d2's error handler.
    fn from(e: r2d2::Error) -> Error {
        Error::Busy(e.to_string())
    }
}

/// Settings every connection needs, applied to each one the pool opens.
///
/// These are per connection in SQLite, so setting them once at start-up would
/// leave later pooled connections without them.
fn configure_connection(
    conn: &mut Connection,
    busy_timeout: Duration,
    durability: Durability,
) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    conn.execute_batch(&format!(
        // foreign_keys: without it the ON DELETE CASCADE silently does nothing.
        // synchronous: FULL unless relaxed; an acknowledged delete must
        //   survive power loss.
        // secure_delete: deleted content is overwritten, not left in free pages.
        // wal_autocheckpoint=0: a commit never runs a checkpoint on the
        //   request path (it stalls that request for 100+ ms); the
        //   maintenance thread checkpoints instead, right after writes.
        // journal_size_limit: a WAL that grew past this is cut back to it
        //   whenever it is reset, even if a TRUNCATE checkpoint failed.
        // fullfsync, checkpoint_fullfsync: on macOS, fsync leaves the data
        //   in the drive's cache, which a power loss empties (fsync(2) there
        //   says so); F_FULLFSYNC flushes it, as Rust's File::sync_all does
        //   there. Commits use it when a delete must survive power loss;
        //   checkpoints always, because the WAL is reused or cut once one
        //   has synced the main file, and a lost write then would damage
        //   the file rather than undo the last deletes. SQLite ignores both
        //   on systems without F_FULLFSYNC, whose fsync flushes that cache.
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = {};
         PRAGMA fullfsync = {};
         PRAGMA checkpoint_fullfsync = ON;
         PRAGMA secure_delete = ON;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};
         PRAGMA cache_size = -{CACHE_KIB};",
        durability.pragma_value(),
        durability.fullfsync()
    ))
}

/// Opens the database at `path` read-only, to examine it without changing
/// a byte (a backup, which may itself be read-only): with the pragmas the
/// server's connections have, but no migration and no switch to WAL.
/// Fails as [`Database::open`] does on a file that is not ours or too new.
///
/// A database in WAL mode that no process has open is read as it is, with
/// no lock and no `-shm` (SQLite's `immutable`): such a database has no
/// `-wal` beside it (a process that has it open keeps one, even empty),
/// so every commit is in the file. Read through a `-shm` instead, SQLite
/// would make a `-wal` and a `-shm` beside it where it can, and a
/// read-only connection leaves them there, this user's and as
/// write-protected as the file, in the way of the next writer; where it
/// cannot (a file-system snapshot or a read-only mount of a stopped
/// server's database, a directory of another user's), the file could not
/// be read at all. With a `-wal` beside it, it is read through a `-shm`,
/// as SQLite reads it, or not at all.
pub fn open_read_only(path: &Path) -> Result<Connection> {
    let wal = side_file(path, "-wal");
    let no_wal = matches!(std::fs::exists(&wal), Ok(false));
    let opened = match file::immutable_uri(path) {
        Ok(immutable) if no_wal && is_wal_file(path) => {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
            open_ours_with(&immutable, flags)
        }
        _ => open_ours_with(&sqlite_path(path), OpenFlags::SQLITE_OPEN_READ_ONLY),
    };
    match opened {
        // "unable to open database file" on a read-only file system, and
        // "attempt to write a readonly database" in a directory closed to
        // this user: SQLite's words for a -shm it could not make.
        Err(e)
            if matches!(
                e.sqlite_code(),
                Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly)
            ) && !no_wal
                && is_wal_file(path) =>
        {
            Err(Error::NoAccess(wal_beyond_reach(path, &wal)))
        }
        // SQLite's "unable to open database file" names no cause.
        Err(e) if e.sqlite_code() == Some(ErrorCode::CannotOpen) => {
            Err(access::unreadable(path).map_or(e, Error::NoAccess))
        }
        result => result,
    }
}

/// Opens the database that SQLite finds at `name` with `flags`, configured
/// as the server's connections are; fails on a file that is not ours or
/// too new.
fn open_ours_with(name: &Path, flags: OpenFlags) -> Result<Connection> {
    let mut conn = Connection::open_with_flags(name, flags)?;
    configure_connection(
        &mut conn,
        Settings::default().busy_timeout,
        Durability::Full,
    )?;
    match ours(&conn)? {
        Found::Version(SCHEMA_VERSION) => Ok(conn),
        Found::Version(found) => Err(Error::SchemaTooNew { found }),
        Found::Empty => Err(Error::NoSchema),
    }
}

/// Opens the database at `path` to be read, as [`open_read_only`] does,
/// but a WAL database through a connection that may write, if this user
/// may; no row is changed through it. SQLite makes a `-wal` and a `-shm`
/// file to read a WAL database, and only a connection that may write
/// removes them when it closes (the last one open, after it has copied any
/// commits in the `-wal` into the file); a read-only one leaves them there.
pub fn open_to_read(path: &Path) -> Result<Connection> {
    // Not tried on a file this user may not write, which SQLite would open
    // read-only and leave a -wal and a -shm beside.
    if is_wal_file(path) && access::file_problem(path).is_none() {
        let writable = open_ours_with(&sqlite_path(path), OpenFlags::SQLITE_OPEN_READ_WRITE);
        // SQLite opens a file that this user may not write read-only.
        if let Ok(conn) = writable {
            if !conn.is_readonly(rusqlite::MAIN_DB)? {
                return Ok(conn);
            }
        }
    }
    open_read_only(path)
}

/// Why a database with a `-wal` beside it cannot be read here, and what to
/// do: SQLite reads a WAL only through a `-shm` file, and cannot make one.
fn wal_beyond_reach(path: &Path, wal: &Path) -> String {
    let cause = access::problem(path).map_or_else(String::new, |why| format!(" ({why})"));
    format!(
        "{} is beside it, so a server may have the database open, or commits may be in \
         that file only; SQLite reads it only through a -shm file beside it, which it \
         cannot make here{cause}. If no server runs on it (in a snapshot, say), copy the \
         database and its -wal file to a directory this user may write to, and name the copy",
        wal.display()
    )
}

/// Pages `replace_with` copies a step: 4 MiB of 4 KiB pages, some
/// milliseconds of work.
const PAGES_PER_COPY_STEP: std::ffi::c_int = 1024;

/// How long a restore waits for the write lock before it asks again
/// whether to go on: how late a stop can be heard during that wait.
const LOCK_WAIT_SLICE: Duration = Duration::from_millis(100);

/// Bytes the WAL file is cut back to when it is reset (see
/// `configure_connection`). Above what it reaches under load between two
/// of upkeep's truncations, because the cut is made by the first commit
/// after a reset, which is a request's under load: with 4 MiB, every upkeep
/// pass (about every 55 ms) made one request truncate the WAL for 1.3 ms on
/// average (2.3 ms at most) while the other writers waited, and at 8
/// connections the bench's p99 was 5.3-5.7 ms in seven runs; with 64 MiB,
/// 3.8-5.4 ms in four runs alternating with them. Upkeep still truncates
/// the WAL to zero (see `maintenance`), so this only bounds the file while
/// that truncation is blocked.
const JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// Page cache per connection, in KiB (SQLite's default is about 2 MiB). A
/// delete touches a handful of pages, and the OS caches the file anyway;
/// this keeps the server's footprint small with several pooled connections.
const CACHE_KIB: u32 = 1024;

/// A handle to the store. Cheap to clone; clones share one pool.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    path: PathBuf,
    settings: Settings,
    writes: Arc<WriteSignal>,
    write_turn: WriteTurn,
    deletes: Arc<GroupCommit<ChatToDelete, Result<Deletion>>>,
    /// Checked before every write: see [`WalIndex`].
    index: Arc<WalIndex>,
    /// After `pool`: fields are dropped in order, and this waits for the
    /// pool's connections to close once the last handle is gone.
    _pool_tasks: Arc<PoolTasks>,
}

/// The thread on which r2d2 opens the pool's connections.
///
/// The task that opened a connection holds the pool for a moment after
/// handing it over. If the last handle is dropped meanwhile, that task is
/// what closes the connections, and a process that exits first leaves the
/// `-wal` and `-shm` files behind (14 `doctor` runs in 100). With one
/// thread of ours, the last handle can wait for the tasks before it to
/// finish.
struct PoolTasks(Arc<ScheduledThreadPool>);

impl PoolTasks {
    fn new() -> PoolTasks {
        PoolTasks(Arc::new(
            ScheduledThreadPool::builder()
                .num_threads(1)
                .thread_name_pattern("sqlite-pool")
                .build(),
        ))
    }
}

impl Drop for PoolTasks {
    fn drop(&mut self) {
        let (done, finished) = mpsc::channel();
        self.0.execute(move || {
            let _ = done.send(());
        });
        // Bounded: a connection stuck opening must not hold up the exit.
        let _ = finished.recv_timeout(Duration::from_secs(5));
    }
}

/// Serializes this process's write transactions (requests and upkeep).
///
/// SQLite allows one writer at a time anyway; a second one gets `SQLITE_BUSY`
/// and its busy handler polls with sleeps of 1, 2, 5, 10 ... up to 100 ms,
/// so it can wait far longer than the lock was held. Waiting on a mutex
/// instead wakes the next writer the moment the lock is free. Other
/// processes (the CLI) still meet the busy timeout.
///
/// The turn is handed over first come, first served. With an unfair lock
/// (std's), a writer that commits back to back takes it again before the
/// woken upkeep thread runs: measured in the in-process bench, upkeep waited
/// up to 260 ms for its turn while the WAL grew to 190 MB, and the truncation
/// that finally came stalled a delete for 128 ms.
type WriteTurn = Arc<FairMutex<()>>;

fn take_turn(turn: &WriteTurn) -> FairMutexGuard<'_, ()> {
    turn.lock()
}

/// One job for the group commit of deletes.
struct ChatToDelete {
    user_id: String,
    chat_id: i64,
    /// The SHA-256 of the token of the session that asked.
    session: [u8; 32],
}

/// What a delete did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// The chat and every row that hung off it are gone, for good.
    Deleted,
    /// The user has no chat with this id. Nothing was changed.
    NoSuchChat,
    /// The session that asked had ended when the delete's turn to write
    /// came: revoked, expired, or its user removed, after the request was
    /// authenticated. Nothing was changed.
    SessionEnded,
}

/// How long opening waits for the pool's connections to be opened and set
/// up, on a slow disk too.
const POOL_OPENING_TIME: Duration = Duration::from_secs(10);

/// The most deletes committed together. More only lengthens the batch that
/// a newcomer waits behind; the gain per fsync saved is already small.
const MAX_DELETES_PER_COMMIT: usize = 64;

/// Tells the maintenance thread that something was committed (and so may
/// sit in the WAL or in free pages until it is checkpointed and vacuumed).
#[derive(Default)]
struct WriteSignal {
    pending: Mutex<bool>,
    condvar: Condvar,
}

impl Database {
    /// Opens (creating if needed) the database at `path`, migrates it, and
    /// checks that pooled connections enforce foreign keys.
    pub fn open(path: &Path, settings: &Settings) -> Result<Database> {
        // SQLite would create it readable by every user of the machine.
        // Where a link leads, as SQLite will follow it. If this fails,
        // SQLite's own attempt below fails too, and says why, unless all it
        // says is "unable to open database file" (for a name too long, say).
        let new_file = !path.exists();
        let not_created = if new_file {
            create_owner_only(&resolved_path(path)).err()
        } else {
            // Before SQLite opens it: see `file_problem`.
            if let Some(why) = access::file_problem(path) {
                return Err(Error::NoAccess(why));
            }
            None
        };
        // Only for a file made just now, or by `touch`: SQLite has not
        // written its first page. (Looked at only when asked: a server's
        // start asks for no page size.)
        let page_size = settings
            .new_file_page_size
            .filter(|_| new_file || std::fs::metadata(path).is_ok_and(|m| m.len() == 0));
        let set_up = || -> Result<()> {
            let mut conn = Connection::open(sqlite_path(path))?;
            if let Some(size) = page_size {
                // Kept once the switch to WAL writes the first page.
                conn.pragma_update(None, "page_size", size)?;
            }
            configure_connection(&mut conn, settings.busy_timeout, settings.durability)
                .map_err(Error::from)
                .and_then(|()| migrate(&mut conn))
                .map_err(|e| explain_full(&conn, e))
        };
        set_up().map_err(|e| match (explain_access(path, e), not_created) {
            (e, Some(os)) if e.sqlite_code() == Some(ErrorCode::CannotOpen) => {
                Error::NoAccess(format!("cannot create the file: {os}"))
            }
            (e, _) => e,
        })?;

        let (busy_timeout, durability) = (settings.busy_timeout, settings.durability);
        let pool_tasks = Arc::new(PoolTasks::new());
        let manager = SqliteConnectionManager::file(sqlite_path(path))
            .with_init(move |conn| configure_connection(conn, busy_timeout, durability));
        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_size.max(1))
            // How long `build` waits for the pool's connections to open. A
            // request waits `busy_timeout` for one (see `conn`), which may
            // be shorter than opening them takes: 1 ms is.
            .connection_timeout(POOL_OPENING_TIME.max(settings.busy_timeout))
            // A local file does not go stale like a network connection, so the
            // per-checkout `SELECT 1` and periodic reconnects are pure cost.
            .test_on_check_out(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .thread_pool(Arc::clone(&pool_tasks.0))
            .build(manager)?;
        let db = Database {
            pool,
            path: path.to_owned(),
            settings: settings.clone(),
            writes: Arc::default(),
            write_turn: WriteTurn::default(),
            deletes: Arc::new(GroupCommit::new(MAX_DELETES_PER_COMMIT)),
            // The pool's connections hold the file open by now.
            index: Arc::new(WalIndex::of(path)),
            _pool_tasks: pool_tasks,
        };
        db.check_foreign_keys_enforced()?;
        Ok(db)
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until something has been committed through this handle (or
    /// `timeout` passes); returns whether it was, and resets the signal.
    pub fn wait_for_writes(&self, timeout: Duration) -> bool {
        let pending = self
            .writes
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (mut pending, _) = self
            .writes
            .condvar
            .wait_timeout_while(pending, timeout, |pending| !*pending)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *pending)
    }

    /// Whether something was committed since the last
    /// [`Database::wait_for_writes`] returned (without resetting that).
    pub fn writes_pending(&self) -> bool {
        *self
            .writes
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes whoever waits in [`Database::wait_for_writes`]; every commit
    /// through this handle does so.
    pub fn wake_upkeep(&self) {
        *self
            .writes
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.writes.condvar.notify_all();
    }

    /// Opens a connection of its own for background upkeep. Its busy timeout
    /// is short, so that upkeep gives way to requests instead of making them
    /// wait: a blocked step reports so and is retried later.
    pub fn upkeep_connection(&self) -> Result<Upkeep> {
        Upkeep::open(
            &self.path,
            self.settings.durability,
            Arc::clone(&self.write_turn),
            Arc::clone(&self.index),
        )
    }

    fn conn(&self) -> Result<PooledConnection> {
        Ok(self.pool.get_timeout(self.settings.busy_timeout)?)
    }

    /// Fails with [`Error::ForeignKeysOff`] unless a pooled connection
    /// reports `foreign_keys = 1`.
    fn check_foreign_keys_enforced(&self) -> Result<()> {
        let on: bool = self
            .conn()?
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
        if on {
            Ok(())
        } else {
            Err(Error::ForeignKeysOff)
        }
    }

    /// Runs `f` on a pooled connection. For checks and tools that need SQL of
    /// their own (doctor, tests, seeding); request handling uses the methods.
    pub fn with_connection<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn()?;
        f(&mut conn)
    }

    /// Runs `f` inside one IMMEDIATE transaction and commits if it returns
    /// `Ok`; on `Err` nothing it did is kept.
    pub fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let _turn = take_turn(&self.write_turn);
        self.index.check()?;
        let mut conn = self.conn()?;
        let value = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })()
        .map_err(|e| explain_access(&self.path, explain_full(&conn, e)))?;
        self.wake_upkeep();
        Ok(value)
    }

    /// Fails with [`Error::NoAccess`] if SQLite opened the file for reading
    /// only, as it does without a word when the file or its file system is
    /// write-protected (a backup restored with `cp`, which keeps its mode
    /// 0444): a server would start, and then fail every delete.
    ///
    /// SQLite opens the `-wal` or `-shm` file for reading only, too, when it
    /// may not write it (one left by a run as root), and then only a write
    /// says so: the check begins one. SQLite refuses it before it waits for
    /// the write lock, so another process's writing delays nothing here.
    pub fn check_writable(&self) -> Result<()> {
        let no_access = || {
            Error::NoAccess(
                access::problem(&self.path).unwrap_or_else(|| read_only_by_header(&self.path)),
            )
        };
        let conn = self.conn()?;
        if conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(no_access());
        }
        conn.busy_timeout(Duration::ZERO)?;
        let began = conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK");
        conn.busy_timeout(self.settings.busy_timeout)?;
        let Err(e) = began else { return Ok(()) };
        match e.sqlite_error_code() {
            Some(ErrorCode::ReadOnly) => Err(no_access()),
            // Another process is writing: so may we, once it is done.
            Some(ErrorCode::DatabaseBusy) => Ok(()),
            _ => Err(e.into()),
        }
    }

    /// Makes the pool's connections close without the checkpoint that the
    /// last one to close runs, which also truncates the WAL and removes it
    /// with the `-shm`. Call it once nothing else uses the pool.
    ///
    /// For a `-shm` that someone deleted under the server: other processes
    /// then index the WAL in a new one, and their commits are in the WAL
    /// but not in this process's index. A checkpoint from here would copy
    /// only what this process knows of, and truncate theirs away. Left in
    /// the WAL, all of it is recovered by the next open.
    pub fn close_without_checkpoint(&self) -> Result<()> {
        let idle = self.pool.state().connections;
        let held = (0..idle).map(|_| self.conn()).collect::<Result<Vec<_>>>()?;
        for conn in &held {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        }
        Ok(())
    }

    /// Whether any session expires after `now` (Unix seconds): whether a
    /// request could be signed in at all.
    pub fn has_live_session(&self, now: i64) -> Result<bool> {
        let conn = self.conn()?;
        Ok(conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sessions WHERE expires_at > ?1)",
            [now],
            |r| r.get(0),
        )?)
    }

    /// Returns the user id and expiry (Unix seconds) of the session with this
    /// token hash, expired or not, if there is one.
    pub fn find_session(&self, token_hash: &[u8; 32]) -> Result<Option<(String, i64)>> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare_cached("SELECT user_id, expires_at FROM sessions WHERE token_hash = ?1")?;
        Ok(stmt
            .query_row(params![&token_hash[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Deletes the chat if and only if it exists and belongs to `user_id`,
    /// and `user_id`'s session whose token has the hash `session` is still
    /// live, with every row that hangs off the chat. Returns what it did,
    /// once that is committed (and, with [`Durability::Full`], synced).
    ///
    /// The session is looked up again in the transaction that deletes,
    /// though the caller authenticated the request with it: a delete can
    /// wait for its turn to write (behind a batch, or behind another
    /// process's lock for up to the busy timeout), and once a command that
    /// revokes the session (`session revoke`, `user remove`, a `restore` of
    /// a copy without it) has returned, or the session has expired, the
    /// session must delete nothing.
    ///
    /// Concurrent calls are committed together (see `GroupCommit`): one
    /// transaction and one sync for the batch. One that fails is undone,
    /// and the others still commit.
    pub fn delete_chat(&self, user_id: &str, chat_id: i64, session: &[u8; 32]) -> Result<Deletion> {
        let job = ChatToDelete {
            user_id: user_id.to_owned(),
            chat_id,
            session: *session,
        };
        self.deletes
            .submit(job, |batch| self.delete_chats_together(&batch))
    }

    /// Runs a batch of deletes in one transaction; one result per job.
    ///
    /// A delete that fails is not trusted to have been undone alone. SQLite
    /// reverts a failed statement only where it foresaw that the statement
    /// might fail, and a damaged file breaks what it foresaw: an index that
    /// misses one of a chat's messages fails the cascade's foreign-key check
    /// after the chat's row is gone, and that is not reverted. Committing
    /// the rest would keep half a chat. So a failure rolls back the whole
    /// transaction, and the batch runs again without the failed delete.
    fn delete_chats_together(&self, batch: &[ChatToDelete]) -> Vec<Result<Deletion>> {
        let mut results: Vec<Option<Result<Deletion>>> = vec![None; batch.len()];
        loop {
            let pending: Vec<usize> = (0..batch.len()).filter(|&i| results[i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            let mut deleted = Vec::with_capacity(pending.len());
            // The job that failed, if one did and SQLite kept the
            // transaction open (so that the others can be tried again).
            let mut failed_alone = None;
            let committed = self.write(|tx| {
                for &i in &pending {
                    match delete_one_chat(tx, &batch[i]) {
                        Ok(deletion) => deleted.push((i, deletion)),
                        Err(e) => {
                            // On some errors (a full disk, I/O) SQLite has
                            // rolled back the whole transaction itself:
                            // then the batch fails as a whole.
                            if !tx.is_autocommit() {
                                failed_alone = Some(i);
                            }
                            return Err(e);
                        }
                    }
                }
                Ok(())
            });
            match (committed, failed_alone) {
                (Ok(()), _) => {
                    for (i, deletion) in deleted {
                        results[i] = Some(Ok(deletion));
                    }
                }
                (Err(e), Some(i)) => results[i] = Some(Err(e)),
                // Nothing pending was committed.
                (Err(e), None) => {
                    for i in pending {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results.into_iter().flatten().collect()
    }

    /// Returns whether a chat with this id exists, whoever owns it.
    pub fn chat_exists(&self, chat_id: i64) -> Result<bool> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached("SELECT 1 FROM chats WHERE id = ?1")?;
        Ok(stmt.exists([chat_id])?)
    }

    /// Adds a user; fails with [`Error::UserExists`] if the id is taken.
    pub fn add_user(&self, id: &str, name: Option<&str>) -> Result<()> {
        self.write(|tx| insert_user(tx, id, name))
    }

    /// Returns whether a user with this id exists.
    pub fn user_exists(&self, id: &str) -> Result<bool> {
        user_exists(&*self.conn()?, id)
    }

    /// Stores a session (by token hash) for an existing user.
    pub fn add_session(&self, session: &NewSession) -> Result<()> {
        self.write(|tx| insert_session(tx, session))
    }

    /// Deletes sessions that expired at or before `now`; returns how many.
    pub fn prune_sessions(&self, now: i64) -> Result<usize> {
        self.write(|tx| delete_expired_sessions(tx, now))
    }

    /// Removes a user, and with it (`ON DELETE CASCADE`) its sessions, its
    /// place on others' share whitelists and, if `with_chats`, its chats
    /// and all that hangs off them; returns what went with it. Fails with
    /// [`Error::UnknownUser`], or [`Error::UserHasChats`] if it has chats
    /// and `with_chats` is false.
    pub fn remove_user(&self, id: &str, with_chats: bool) -> Result<RemovedUser> {
        self.write(|tx| {
            if !user_exists(tx, id)? {
                return Err(Error::UnknownUser(id.to_owned()));
            }
            let count = |sql: &str| tx.query_row(sql, [id], |r| r.get::<_, i64>(0));
            let chats = count("SELECT count(*) FROM chats WHERE user_id = ?1")?;
            if chats > 0 && !with_chats {
                return Err(Error::UserHasChats {
                    id: id.to_owned(),
                    chats,
                });
            }
            let sessions = count("SELECT count(*) FROM sessions WHERE user_id = ?1")?;
            tx.execute("DELETE FROM users WHERE id = ?1", [id])?;
            Ok(RemovedUser { chats, sessions })
        })
    }

    /// Adds a chat for an existing user, with `messages` messages that take
    /// turns between the user and the assistant, in one transaction;
    /// returns its id. Fails with [`Error::UnknownUser`].
    pub fn add_chat(&self, user_id: &str, name: &str, model: &str, messages: u32) -> Result<i64> {
        self.write(|tx| {
            if !user_exists(tx, user_id)? {
                return Err(Error::UnknownUser(user_id.to_owned()));
            }
            let chat_id = insert_chat(tx, user_id, name, model)?;
            for n in 1..=messages {
                let actor = if n % 2 == 1 {
                    Actor::User
                } else {
                    Actor::Assistant
                };
                insert_message(tx, chat_id, actor, &format!("Message {n}"))?;
            }
            Ok(chat_id)
        })
    }

    /// Replaces every page of the database with those of the database
    /// `from` is open on, in one write transaction (SQLite's online backup,
    /// run towards this file): other connections, a running server's too,
    /// see the old contents or the new, never a mix, and a failure leaves
    /// the old. The page sizes must match, as the WAL cannot change its own.
    ///
    /// `vet` first sees the database as the copy will replace it, on another
    /// connection, once the copy holds the write lock: nothing can commit
    /// between what it saw and the copy. If it refuses, nothing is copied,
    /// and its error comes back inside `Ok`. `go_on` is asked while the copy
    /// waits for the write lock (every `LOCK_WAIT_SLICE`) and before each
    /// step of the copy; its error ends it the same way, rolled back.
    pub fn replace_with<T, E>(
        &self,
        from: &Connection,
        vet: impl FnOnce(&Connection) -> std::result::Result<T, E>,
        mut go_on: impl FnMut() -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<T, E>> {
        use rusqlite::backup::{Backup, StepResult};

        let _turn = take_turn(&self.write_turn);
        let mut conn = self.conn()?;
        let look = self.conn()?;
        let busy = || Error::Busy("another connection kept the database locked".to_owned());
        let copied = (|| {
            // The write lock, waited for up to the busy timeout, a slice at
            // a time with `go_on` asked between slices: another connection
            // may hold it for long (a `sqlite3` shell in a transaction), and
            // a stop asked meanwhile must not wait for the timeout to pass.
            let deadline = Instant::now() + self.settings.busy_timeout;
            let backup = loop {
                if let Err(e) = go_on() {
                    return Ok(Err(e));
                }
                let slice = deadline.saturating_duration_since(Instant::now());
                conn.busy_timeout(slice.min(LOCK_WAIT_SLICE))?;
                let backup = Backup::new(from, &mut conn)?;
                // No page yet: this step only takes the write lock, which
                // the backup keeps until it is done (dropped before that, it
                // rolls back).
                match backup.step(0)? {
                    StepResult::Busy | StepResult::Locked if slice.is_zero() => {
                        return Err(busy());
                    }
                    StepResult::Busy | StepResult::Locked => {}
                    _ => break backup,
                }
            };
            let verdict = match vet(&look) {
                Ok(verdict) => verdict,
                Err(e) => return Ok(Err(e)),
            };
            // A few megabytes a step, so that `go_on` is asked often
            // enough to end a large copy at once. The step that copies the
            // last page commits.
            loop {
                if let Err(e) = go_on() {
                    return Ok(Err(e));
                }
                match backup.step(PAGES_PER_COPY_STEP)? {
                    StepResult::Done => return Ok(Ok(verdict)),
                    StepResult::More => {}
                    _ => return Err(busy()),
                }
            }
        })();
        // Back in the pool, the connection waits as every other one does.
        let waits_again = conn.busy_timeout(self.settings.busy_timeout);
        let verdict = copied.map_err(|e| explain_access(&self.path, explain_full(&conn, e)))?;
        waits_again?;
        if verdict.is_ok() {
            self.wake_upkeep();
        }
        Ok(verdict)
    }

    /// Deletes the session with this token hash; returns whether one existed.
    pub fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                [&token_hash[..]],
            )? == 1)
        })
    }

    /// Deletes every session of the user; returns how many there were.
    /// Fails with [`Error::UnknownUser`] if there is no such user.
    pub fn delete_sessions_of(&self, user_id: &str) -> Result<usize> {
        self.write(|tx| {
            if !user_exists(tx, user_id)? {
                return Err(Error::UnknownUser(user_id.to_owned()));
            }
            Ok(tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?)
        })
    }
}

/// Why SQLite opened the database at `path` for reading only when this
/// user may write it: a write version in the header that SQLite does not
/// know, if that is it. The rest of such a file can be read, and a
/// backup's header is new, so the advice copies it out.
fn read_only_by_header(path: &Path) -> String {
    match file::unknown_write_version(&resolved_path(path)) {
        Some(version) => format!(
            "SQLite could open the file for reading only: its header gives a write version of \
             {version} (byte 18), where SQLite knows 1 and 2, so the header is damaged (or a \
             newer SQLite wrote the file). What it holds can still be read: `neptun-local --db \
             {} backup COPY` writes it to a file with a sound header; then {}",
            shell_word(path),
            MOVE_ASIDE_AND_RESTORE.replace("BACKUP", "COPY")
        ),
        None => "SQLite could open the file for reading only".to_owned(),
    }
}

fn user_exists(conn: &Connection, id: &str) -> Result<bool> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
    Ok(stmt.exists([id])?)
}

/// Names the missing permission behind SQLite's "unable to open database
/// file" and "attempt to write a readonly database", which name neither
/// the file nor the directory (see `access`).
fn explain_access(path: &Path, e: Error) -> Error {
    match e.sqlite_code() {
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly) => {
            access::problem(path).map_or(e, Error::NoAccess)
        }
        _ => e,
    }
}

/// SQLite reports a write refused for a file-size limit (`ulimit -f`) or a
/// disk quota as a plain I/O error ("disk I/O error"): only ENOSPC on a
/// database or WAL write is a full disk to it, not even ENOSPC when it
/// sizes the `-shm` file, as every open does. Yet all of them are a full
/// disk to anyone who can act on it: nothing was changed, and the same call
/// succeeds once there is room. The OS error that SQLite met, kept on the
/// connection, tells them apart.
fn explain_full(conn: &Connection, e: Error) -> Error {
    #[cfg(unix)]
    if let Error::Sqlite(ref sqlite) = e {
        if sqlite.sqlite_error_code() == Some(ErrorCode::SystemIoFailure) {
            // SAFETY: the handle is only read, on the thread using `conn`.
            let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
            if [libc::ENOSPC, libc::EFBIG, libc::EDQUOT].contains(&errno) {
                // "File too large", without Rust's " (os error 27)".
                let os = std::io::Error::from_raw_os_error(errno).to_string();
                let os = os.split(" (os error ").next().unwrap_or_default();
                return Error::StorageFull(format!("{sqlite}: {os}"));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = conn;
    e
}

/// Writes the snapshot of one read transaction on `conn`, live rows only,
/// into a new database file at `out` (SQLite refuses a file that exists and
/// is not empty), changing nothing in the database `conn` reads, which may
/// be open read-only. On a server's database, writers go on meanwhile;
/// upkeep cannot finish a checkpoint, nor cut the WAL, until it ends.
pub fn vacuum_into(conn: &Connection, out: &str) -> Result<()> {
    conn.execute("VACUUM INTO ?1", [out])
        .map_err(|e| explain_full(conn, e.into()))?;
    Ok(())
}

/// Deletes one chat if it belongs to the user and the session that asked
/// is still live (why: [`Database::delete_chat`]); the cascade takes the
/// rest.
fn delete_one_chat(conn: &Connection, job: &ChatToDelete) -> Result<Deletion> {
    // unixepoch(): the clock `auth::now_unix` reads, at this moment.
    let mut session = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM sessions
                        WHERE token_hash = ?1 AND user_id = ?2 AND expires_at > unixepoch())",
    )?;
    if !session.query_row(params![&job.session[..], job.user_id], |r| r.get(0))? {
        return Ok(Deletion::SessionEnded);
    }
    let mut stmt = conn.prepare_cached("DELETE FROM chats WHERE id = ?1 AND user_id = ?2")?;
    match stmt.execute(params![job.chat_id, job.user_id]) {
        Ok(1) => Ok(Deletion::Deleted),
        Ok(_) => Ok(Deletion::NoSuchChat),
        // The cascade deletes every row that points at the chat, so a row
        // left pointing at it means that an index hid that row from the
        // cascade: damage, which `doctor` finds and says how to repair.
        Err(e)
            if e.sqlite_extended_error_code()
                == Some(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY) =>
        {
            Err(Error::Damaged(format!(
                "{e}: the cascade left a row behind, which an index that disagrees with \
                 its table does"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

fn delete_expired_sessions(conn: &Connection, now: i64) -> Result<usize> {
    Ok(conn.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A new database in a temporary directory, which goes with the first.
    pub(crate) fn open_temp() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("t.db"), &Settings::default()).unwrap();
        (dir, db)
    }

    /// Adds a session of `user`, an existing user, and returns its token's
    /// hash, which a delete names. One per user: the hash is made of its id.
    pub(crate) fn signed_in(db: &Database, user: &str) -> [u8; 32] {
        let mut token_hash = [0; 32];
        token_hash[..user.len()].copy_from_slice(user.as_bytes());
        db.add_session(&NewSession {
            token_hash,
            user_id: user,
            created_at: 0,
            expires_at: i64::MAX,
        })
        .unwrap();
        token_hash
    }

    #[test]
    fn every_pooled_connection_enforces_foreign_keys_and_durability() {
        // (durability, synchronous, fullfsync): checkpoints flush the
        // drive's cache in both modes.
        for (durability, synchronous, fullfsync) in
            [(Durability::Full, 2, 1), (Durability::Normal, 1, 0)]
        {
            let dir = tempfile::tempdir().unwrap();
            let settings = Settings {
                durability,
                ..Settings::default()
            };
            let db = Database::open(&dir.path().join("t.db"), &settings).unwrap();
            // Hold every connection at once so that each one is a distinct
            // connection opened by the pool, not the same one handed out again.
            let conns: Vec<_> = (0..settings.pool_size)
                .map(|_| db.conn().unwrap())
                .collect();
            for conn in &conns {
                let int = |name: &str| -> i64 {
                    conn.pragma_query_value(None, name, |r| r.get(0)).unwrap()
                };
                let journal: String = conn
                    .pragma_query_value(None, "journal_mode", |r| r.get(0))
                    .unwrap();
                assert_eq!(
                    (
                        int("foreign_keys"),
                        int("synchronous"),
                        int("fullfsync"),
                        int("checkpoint_fullfsync"),
                        int("secure_delete"),
                        int("wal_autocheckpoint"),
                        journal.as_str(),
                    ),
                    (1, synchronous, fullfsync, 1, 1, 0, "wal"),
                    "{durability:?}"
                );
            }
        }
    }

    /// The first commit after a WAL reset cuts a WAL longer than
    /// `journal_size_limit`; under load that commit is a request's, and
    /// every writer waits meanwhile. Upkeep's truncation does the cutting.
    #[test]
    fn a_request_commit_after_a_wal_restart_leaves_the_wal_file_alone() {
        let (_dir, db) = open_temp();
        db.add_user("u", None).unwrap();
        let text = "x".repeat(3000);
        db.write(|tx| {
            let chat = insert_chat(tx, "u", "chat", "model")?;
            for _ in 0..3000 {
                insert_message(tx, chat, Actor::User, &text)?;
            }
            Ok(())
        })
        .unwrap();
        let wal_len = || {
            std::fs::metadata(format!("{}-wal", db.path().display()))
                .unwrap()
                .len()
        };
        let grown = wal_len();
        assert!(grown > 8 << 20, "the WAL holds {grown} bytes");
        let upkeep = db.upkeep_connection().unwrap();
        assert_eq!(upkeep.copy_wal().unwrap(), Step::Done);
        assert_eq!(upkeep.restart_wal().unwrap(), Step::Done);

        db.write(|tx| insert_chat(tx, "u", "after the restart", "model"))
            .unwrap();
        assert_eq!(wal_len(), grown);
    }

    /// Once the `-shm` is replaced (a sync tool's copy moved over it),
    /// other processes index the WAL in it, not in this process's: no
    /// write and no upkeep step may touch the WAL from here.
    #[cfg(unix)]
    #[test]
    fn nothing_is_written_or_checkpointed_once_the_wal_index_is_replaced() {
        let (dir, db) = open_temp();
        let upkeep = db.upkeep_connection().unwrap();
        db.add_user("u", None).unwrap();
        assert_eq!(upkeep.copy_wal().unwrap(), Step::Done);
        let shm = side_file(db.path(), "-shm");
        let copy = dir.path().join("copy");
        std::fs::copy(&shm, &copy).unwrap();
        std::fs::rename(&copy, &shm).unwrap();

        let replaced = |result: Result<()>| match result {
            Err(Error::WalIndexReplaced(path)) => assert_eq!(path, shm),
            other => panic!("{other:?}"),
        };
        replaced(db.add_user("v", None));
        replaced(upkeep.copy_wal().map(drop));
        replaced(upkeep.restart_wal().map(drop));
        replaced(upkeep.truncate_wal().map(drop));
        replaced(upkeep.vacuum_step(8).map(drop));
        replaced(upkeep.prune_sessions(i64::MAX).map(drop));
        let users: i64 = db
            .conn()
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(users, 1);
    }

    #[test]
    fn a_page_size_asked_for_applies_to_a_file_with_no_page_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let page_size = |db: &Database| -> u32 {
            db.conn()
                .unwrap()
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .unwrap()
        };
        let with_page_size = |size| Settings {
            new_file_page_size: Some(size),
            ..Settings::default()
        };
        let db = Database::open(&path, &with_page_size(8192)).unwrap();
        assert_eq!(page_size(&db), 8192);
        drop(db);
        let db = Database::open(&path, &with_page_size(16384)).unwrap();
        assert_eq!(page_size(&db), 8192);
        drop(db);

        // An empty file, made by `touch`, has no page yet.
        let touched = dir.path().join("touched.db");
        std::fs::File::create(&touched).unwrap();
        let db = Database::open(&touched, &with_page_size(16384)).unwrap();
        assert_eq!(page_size(&db), 16384);
    }

    #[test]
    fn relaxed_durability_sets_synchronous_normal() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            durability: Durability::Normal,
            ..Settings::default()
        };
        let db = Database::open(&dir.path().join("t.db"), &settings).unwrap();
        let sync: i64 = db
            .conn()
            .unwrap()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1);
    }

    #[test]
    fn a_commit_wakes_the_upkeep_waiter_and_the_signal_is_consumed() {
        let (_dir, db) = open_temp();
        assert!(
            !db.wait_for_writes(Duration::from_millis(50)),
            "no commit yet"
        );
        let waiter = db.clone();
        let woken = std::thread::spawn(move || waiter.wait_for_writes(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        db.add_user("a", None).unwrap();
        assert!(woken.join().unwrap(), "the commit must wake the waiter");
        assert!(
            !db.wait_for_writes(Duration::ZERO),
            "the signal is consumed"
        );
    }

    /// Linux only: it watches the waiting thread's state in `/proc`.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_writer_that_gives_up_the_turn_cannot_take_it_back_before_a_waiter() {
        // A request writer commits back to back; the upkeep thread waiting
        // for the turn must get it next. With std's unfair mutex it waited
        // for hundreds of commits while the WAL grew.
        use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
        let turn = WriteTurn::default();
        let waiter_tid = Arc::new(AtomicI32::new(0));
        let waiter_had_turn = Arc::new(AtomicBool::new(false));
        let held = take_turn(&turn);
        let waiter = {
            let turn = Arc::clone(&turn);
            let (tid, had_turn) = (Arc::clone(&waiter_tid), Arc::clone(&waiter_had_turn));
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
                let _turn = take_turn(&turn);
                had_turn.store(true, Ordering::SeqCst);
            })
        };
        wait_until_asleep(&waiter_tid);
        drop(held);
        let again = take_turn(&turn);
        assert!(
            waiter_had_turn.load(Ordering::SeqCst),
            "the writer took the turn back ahead of the waiting thread"
        );
        drop(again);
        waiter.join().unwrap();
    }

    /// Waits until the thread whose id `tid` will hold is asleep (state `S`
    /// in /proc): the only place it can sleep is parked on the lock.
    #[cfg(target_os = "linux")]
    fn wait_until_asleep(tid: &std::sync::atomic::AtomicI32) {
        use std::sync::atomic::Ordering;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(std::time::Instant::now() < deadline, "never parked");
            let tid = tid.load(Ordering::SeqCst);
            if tid != 0 {
                let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
                    .unwrap_or_default();
                // The state follows the name, which is in parentheses.
                let state = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next());
                if state == Some('S') {
                    return;
                }
            }
            std::thread::yield_now();
        }
    }

    /// What `vet` sees is what the copy replaces: another process cannot
    /// commit in between. Without the lock, a `user add` that commits just
    /// after a restore counted an empty database is replaced unasked.
    #[test]
    fn replace_with_vets_the_database_while_no_other_writer_can_commit() {
        let (_dir, db) = open_temp();
        let (_source_dir, source) = open_temp();
        source.add_user("from-backup", None).unwrap();
        let from = Connection::open(source.path()).unwrap();
        let other_process = Connection::open(db.path()).unwrap();
        other_process.busy_timeout(Duration::ZERO).unwrap();
        let add_user = || other_process.execute("INSERT INTO users (id) VALUES ('added')", []);

        let refused = db.replace_with(&from, |_| add_user(), || Ok(())).unwrap();
        let refused = refused.expect_err("another connection committed under the copy's lock");
        assert_eq!(refused.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
        assert!(
            !db.user_exists("from-backup").unwrap(),
            "a refused copy was made"
        );

        let vetted = db.replace_with(
            &from,
            |look| look.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0)),
            || Ok(()),
        );
        assert_eq!(vetted.unwrap().unwrap(), 0);
        assert!(db.user_exists("from-backup").unwrap());
        add_user().expect("the lock outlived the copy");
    }

    #[test]
    fn a_session_for_an_unknown_user_is_refused() {
        let (_dir, db) = open_temp();
        let s = NewSession {
            token_hash: [7; 32],
            user_id: "ghost",
            created_at: 0,
            expires_at: 10,
        };
        assert!(matches!(db.add_session(&s), Err(Error::UnknownUser(_))));
    }

    #[test]
    fn adding_a_user_twice_is_refused() {
        let (_dir, db) = open_temp();
        db.add_user("u", Some("U")).unwrap();
        assert!(matches!(db.add_user("u", None), Err(Error::UserExists(_))));
    }

    /// Seeds three chats, "first", "failing" and "last", with a message
    /// each ("failing" has a second, "poison"), creates `trigger`, which
    /// fails some part of deleting the middle one, then deletes all three
    /// in one batch.
    fn delete_batch_whose_middle_fails(
        trigger: &str,
    ) -> (tempfile::TempDir, Database, Vec<i64>, Vec<Result<Deletion>>) {
        let (dir, db) = open_temp();
        db.add_user("a", None).unwrap();
        let session = signed_in(&db, "a");
        let chats: Vec<i64> = db
            .write(|tx| {
                ["first", "failing", "last"]
                    .iter()
                    .map(|name| {
                        let chat = insert_chat(tx, "a", name, "m")?;
                        insert_message(tx, chat, Actor::User, "hi")?;
                        if *name == "failing" {
                            insert_message(tx, chat, Actor::User, "poison")?;
                        }
                        Ok(chat)
                    })
                    .collect()
            })
            .unwrap();
        db.with_connection(|c| Ok(c.execute_batch(trigger)?))
            .unwrap();
        let results = db.delete_chats_together(&jobs(&chats, session));
        (dir, db, chats, results)
    }

    /// A trigger that fails the delete of the chat named "failing" with
    /// `RAISE(raise)`, before anything of it is deleted.
    fn refuse_the_failing_chat(raise: &str) -> String {
        format!(
            "CREATE TRIGGER fail BEFORE DELETE ON chats WHEN old.name = 'failing'
             BEGIN SELECT RAISE({raise}); END;"
        )
    }

    fn messages_of(db: &Database, chat: i64) -> i64 {
        db.with_connection(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM messages WHERE chat_id = ?1",
                [chat],
                |r| r.get(0),
            )?)
        })
        .unwrap()
    }

    fn jobs(chats: &[i64], session: [u8; 32]) -> Vec<ChatToDelete> {
        chats
            .iter()
            .map(|&chat_id| ChatToDelete {
                user_id: "a".into(),
                chat_id,
                session,
            })
            .collect()
    }

    /// A delete that fails inside a batch is undone alone; the others in the
    /// batch still commit.
    #[test]
    fn a_failing_delete_in_a_batch_is_undone_alone() {
        let (_dir, db, chats, results) =
            delete_batch_whose_middle_fails(&refuse_the_failing_chat("ABORT, 'refused'"));
        assert!(
            matches!(
                results[..],
                [Ok(Deletion::Deleted), Err(_), Ok(Deletion::Deleted)]
            ),
            "{results:?}"
        );
        assert_eq!(messages_of(&db, chats[1]), 2, "the refused chat is intact");
        assert_eq!(messages_of(&db, chats[0]) + messages_of(&db, chats[2]), 0);
    }

    /// A delete whose statement fails after it changed rows, and is not
    /// reverted by SQLite (here a trigger's `RAISE(FAIL)` in the cascade,
    /// which leaves a message behind and so fails the foreign-key check; in
    /// life, a damaged index), must not be committed with the batch:
    /// its chat stays whole, and the others are deleted.
    #[test]
    fn a_delete_that_fails_half_done_is_rolled_back_and_the_rest_commit() {
        let (_dir, db, chats, results) = delete_batch_whose_middle_fails(
            "CREATE TRIGGER fail BEFORE DELETE ON messages WHEN old.message = 'poison'
             BEGIN SELECT RAISE(FAIL, 'half done'); END;",
        );
        assert!(
            matches!(
                results[..],
                [Ok(Deletion::Deleted), Err(_), Ok(Deletion::Deleted)]
            ),
            "{results:?}"
        );
        assert_eq!(messages_of(&db, chats[1]), 2, "the failed chat is whole");
        let chat_rows: i64 = db
            .with_connection(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM chats WHERE id = ?1",
                    [chats[1]],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(chat_rows, 1, "and its row is there");
        assert_eq!(messages_of(&db, chats[0]) + messages_of(&db, chats[2]), 0);
    }

    /// When SQLite rolls back the whole transaction by itself (as it does on
    /// a full disk), nothing in the batch is committed and every caller is
    /// told so; the deletes after the failure must not run outside the
    /// transaction either.
    #[test]
    fn a_batch_rolled_back_by_sqlite_fails_as_a_whole() {
        let (_dir, db, chats, results) =
            delete_batch_whose_middle_fails(&refuse_the_failing_chat("ROLLBACK, 'rolled back'"));
        for result in &results {
            // The caller hears the real cause (a full disk is a 503), not
            // some later complaint about a transaction that is gone.
            assert!(
                matches!(result, Err(e) if e.to_string().contains("rolled back")),
                "{results:?}"
            );
        }
        for (chat, messages) in chats.into_iter().zip([1, 2, 1]) {
            assert_eq!(
                messages_of(&db, chat),
                messages,
                "chat {chat} must be intact"
            );
        }
    }

    #[test]
    fn concurrent_deletes_each_get_their_own_answer() {
        let (_dir, db) = open_temp();
        db.add_user("a", None).unwrap();
        db.add_user("b", None).unwrap();
        let session = signed_in(&db, "a");
        let chats: Vec<i64> = db
            .write(|tx| {
                (0..64)
                    .map(|i| {
                        let chat = insert_chat(tx, if i % 2 == 0 { "a" } else { "b" }, "c", "m")?;
                        insert_message(tx, chat, Actor::User, "hi")?;
                        Ok(chat)
                    })
                    .collect()
            })
            .unwrap();
        // Every chat is deleted as user "a": the even ones are a's and go,
        // the odd ones are b's and must stay, whichever batch they land in.
        let answers: Vec<(i64, Deletion)> = std::thread::scope(|s| {
            let threads: Vec<_> = chats
                .chunks(8)
                .map(|chunk| {
                    s.spawn(|| {
                        chunk
                            .iter()
                            .map(|&c| (c, db.delete_chat("a", c, &session).unwrap()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        for (i, (chat, deletion)) in answers.into_iter().enumerate() {
            let expected = match i % 2 {
                0 => Deletion::Deleted,
                _ => Deletion::NoSuchChat,
            };
            assert_eq!(deletion, expected, "chat {chat}");
            assert_eq!(messages_of(&db, chat), i64::from(i % 2 == 1), "chat {chat}");
        }
    }

    /// Users "a" and "b", a chat of a's with one message, and a session of
    /// each (their token hashes, a's first).
    fn a_chat_of_a_and_sessions_of_a_and_b()
    -> (tempfile::TempDir, Database, i64, [u8; 32], [u8; 32]) {
        let (dir, db) = open_temp();
        db.add_user("a", None).unwrap();
        db.add_user("b", None).unwrap();
        let chat = db
            .write(|tx| {
                let chat = insert_chat(tx, "a", "c", "m")?;
                insert_message(tx, chat, Actor::User, "hi")?;
                Ok(chat)
            })
            .unwrap();
        let (a, b) = (signed_in(&db, "a"), signed_in(&db, "b"));
        (dir, db, chat, a, b)
    }

    #[test]
    fn delete_chat_is_scoped_to_the_owner() {
        let (_dir, db, chat, a, b) = a_chat_of_a_and_sessions_of_a_and_b();
        assert_eq!(db.delete_chat("b", chat, &b).unwrap(), Deletion::NoSuchChat);
        assert_eq!(db.delete_chat("a", chat, &a).unwrap(), Deletion::Deleted);
        assert_eq!(db.delete_chat("a", chat, &a).unwrap(), Deletion::NoSuchChat);
        let orphans: i64 = db
            .with_connection(
                |c| Ok(c.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))?),
            )
            .unwrap();
        assert_eq!(orphans, 0);
    }

    /// The session is looked up again as the chat is deleted: one revoked,
    /// expired or another user's deletes nothing, whatever was checked
    /// before.
    #[test]
    fn a_delete_needs_its_session_to_be_live_when_it_commits() {
        let (_dir, db, chat, a, b) = a_chat_of_a_and_sessions_of_a_and_b();
        assert_eq!(
            db.delete_chat("a", chat, &b).unwrap(),
            Deletion::SessionEnded,
            "b's session is not a's"
        );
        let expired = [b'x'; 32];
        db.add_session(&NewSession {
            token_hash: expired,
            user_id: "a",
            created_at: 0,
            expires_at: crate::auth::now_unix(),
        })
        .unwrap();
        assert_eq!(
            db.delete_chat("a", chat, &expired).unwrap(),
            Deletion::SessionEnded,
            "an expired session"
        );
        assert!(db.delete_session(&a).unwrap());
        assert_eq!(
            db.delete_chat("a", chat, &a).unwrap(),
            Deletion::SessionEnded,
            "a revoked session"
        );
        assert_eq!(messages_of(&db, chat), 1, "the chat is whole");
    }
}
