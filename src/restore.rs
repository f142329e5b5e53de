//! `neptun-local restore BACKUP`: puts the contents of a backup in place of
//! the database's, safely while a server runs.
//!
//! Copying a backup over the database file by hand is safe only with the
//! server stopped and the file's `-wal` and `-shm` removed: a running server
//! keeps writing into the file it has open, and a WAL left by a crash would
//! be applied to the copy. This command copies the backup's pages into the
//! database through SQLite instead (its online backup API, run towards the
//! database), in one write transaction. A running server's requests see
//! the old contents or the new, and the old WAL is never applied to the new.
//!
//! The backup is checked before anything changes: it must be a neptun-local
//! database of this schema version, whole (`integrity_check`) and without
//! orphans (`foreign_key_check`). A database that holds users or chats is
//! replaced only when asked to, since what it holds is then gone for good.
//! What was checked is what is copied: one read transaction on the backup
//! lasts from its check to the end of the copy.
//!
//! A stop (Ctrl+C) ends the command where it can say what it left: before
//! the copy commits, with the database as it was; after, with the backup
//! in place and `doctor` to check it. The copy goes a few megabytes at a
//! time, so that a stop asked during it is heard before the commit, which
//! SQLite makes inside the step that copies the last page.

use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::db::{self, Database};
use crate::doctor;
use crate::stop::{Stop, Stopped};

/// How many users and chats a database holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contents {
    pub users: i64,
    pub chats: i64,
}

impl Contents {
    /// No user and no chat: nothing a restore would lose.
    pub fn is_empty(self) -> bool {
        self == Contents { users: 0, chats: 0 }
    }

    fn of(conn: &Connection) -> db::Result<Contents> {
        Ok(conn.query_row(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM chats)",
            [],
            |r| {
                Ok(Contents {
                    users: r.get(0)?,
                    chats: r.get(1)?,
                })
            },
        )?)
    }
}

impl fmt::Display for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} user(s) and {} chat(s)", self.users, self.chats)
    }
}

/// What a restore put in place, and what was there before.
pub struct Restored {
    pub now: Contents,
    /// `None` when the database was too damaged to count what it held.
    pub before: Option<Contents>,
    /// The indexes of the schema that the backup lacked, made again.
    pub made_indexes: Vec<String>,
}

/// Why a restore was not made, or not confirmed. In every case but the
/// two after a copy (see [`Error::copied`]), the database was left as it
/// was.
#[derive(Debug)]
pub enum Error {
    /// There is no file to restore from.
    NoBackup(PathBuf),
    /// The backup named is a symbolic link to nothing.
    LinkToNothing { link: PathBuf, target: PathBuf },
    /// The backup named is the database itself.
    SameFile(PathBuf),
    /// The backup named is no file: a directory, a name that ends in a
    /// separator, or a device, a FIFO or a socket.
    NotAFile(PathBuf, db::NotAFile),
    /// The file is not a neptun-local database this version can read.
    Unreadable(PathBuf, db::Error),
    /// The backup is damaged or has orphaned rows.
    Unsound(PathBuf, String),
    /// The database holds data (`None`: it is too damaged to count what
    /// it holds), and replacing it was not asked for.
    WouldReplace {
        database: PathBuf,
        before: Option<Contents>,
        backup: Contents,
    },
    /// SQLite cannot copy pages of one size into a WAL database of another.
    PageSize { backup: u32, database: u32 },
    /// Copying failed; SQLite rolled it back.
    Copy(db::Error),
    /// A stop was asked for before the copy committed.
    Stopped,
    /// The copy was made, but the database did not check out afterwards.
    Unconfirmed(String),
    /// The copy was made, but a stop was asked for before the database
    /// had been checked.
    StoppedUnchecked,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoBackup(path) => write!(f, "{} does not exist", path.display()),
            Error::LinkToNothing { link, target } => write!(
                f,
                "{} is a symbolic link to {}, which does not exist",
                link.display(),
                target.display()
            ),
            Error::NotAFile(path, kind) => match kind.explain(path, "name the backup file") {
                Some(why) => f.write_str(&why),
                None => write!(
                    f,
                    "{} is a directory; name the backup file in it to restore from",
                    path.display()
                ),
            },
            Error::SameFile(path) => write!(
                f,
                "{} is the database itself; name the backup to restore from",
                path.display()
            ),
            Error::Unreadable(path, e) => write!(
                f,
                "{} cannot be restored from: {e}; the database was left as it was",
                path.display()
            ),
            Error::Unsound(path, why) => write!(
                f,
                "{} did not check out ({why}); the database was left as it was",
                path.display()
            ),
            Error::WouldReplace {
                database,
                before: Some(before),
                backup,
            } => write!(
                f,
                "{} holds {before}; add --replace to put the backup's {backup} in their \
                 place (that cannot be undone)",
                database.display()
            ),
            Error::WouldReplace {
                database,
                before: None,
                backup,
            } => write!(
                f,
                "{} is damaged, too much to count what it holds; add --replace to put \
                 the backup's {backup} in its place (that cannot be undone)",
                database.display()
            ),
            Error::PageSize { backup, database } => write!(
                f,
                "the backup's pages are {backup} bytes and the database's {database}, \
                 which SQLite cannot copy into a WAL database; the database was left as it \
                 was. To restore this backup, stop the server, remove the database's -wal \
                 and -shm files, and copy the backup in its place"
            ),
            Error::Copy(e) => {
                write!(
                    f,
                    "the restore failed, and the database was left as it was: {e}"
                )?;
                if let Some(advice) = e.what_to_do() {
                    write!(f, "; {advice}")?;
                }
                Ok(())
            }
            Error::Stopped => f.write_str(
                "stopped before the backup was copied in; the database was left as it was",
            ),
            Error::Unconfirmed(why) => write!(
                f,
                "the backup was copied in, but the database did not check out afterwards \
                 ({why}); run doctor"
            ),
            Error::StoppedUnchecked => f.write_str(
                "stopped after the backup was copied in, before the database was checked; \
                 run doctor to check it",
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<Stopped> for Error {
    fn from(_: Stopped) -> Error {
        Error::Stopped
    }
}

impl Error {
    /// Whether the backup's contents are in the database all the same:
    /// what they replaced is to be erased from the files as after a restore.
    pub fn copied(&self) -> bool {
        matches!(self, Error::Unconfirmed(_) | Error::StoppedUnchecked)
    }
}

/// A backup that passed [`check`], open read-only in the read transaction
/// it was checked in.
pub struct Checked {
    conn: Connection,
    contents: Contents,
    page_size: u32,
}

impl Checked {
    /// The backup's page size: a database restored into must have the
    /// same, so one made for the restore is made with it.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }
}

/// Checks the backup at `from` for a restore into the database at
/// `database`, before that is opened: a restore refused for its backup
/// leaves no new database file behind. A stop ends the check at once.
pub fn check(from: &Path, database: &Path, stop: &Stop) -> Result<Checked, Error> {
    if let Some(kind) = db::not_a_file(from) {
        return Err(Error::NotAFile(from.to_owned(), kind));
    }
    if let Err(e) = std::fs::metadata(from) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Err(match std::fs::read_link(from) {
                Ok(target) => Error::LinkToNothing {
                    link: from.to_owned(),
                    target,
                },
                Err(_) => Error::NoBackup(from.to_owned()),
            });
        }
    }
    if same_file(from, database) {
        return Err(Error::SameFile(from.to_owned()));
    }
    let unreadable = |e| Error::Unreadable(from.to_owned(), e);
    // As `doctor` opens a backup: a copy read-only, a server's database so
    // that its -wal and -shm go when it closes; refusing another
    // application's file and a schema version this one does not know.
    let conn = db::open_to_read(from).map_err(unreadable)?;
    // A read transaction's snapshot: another process that writes to the
    // backup (a server, when it is one's database) changes nothing that
    // was checked, and cannot make the copy start over.
    conn.execute_batch("BEGIN")
        .map_err(|e| unreadable(e.into()))?;
    stop.go_on(Some(&conn))?;
    let problems = doctor::integrity_problems(&conn);
    // A stop asked for is what to report: the check it interrupted says
    // only "interrupted".
    stop.go_on(None)?;
    let problems = problems.map_err(unreadable)?;
    if !problems.is_empty() {
        return Err(Error::Unsound(from.to_owned(), problems.join("; ")));
    }
    let contents = Contents::of(&conn).map_err(unreadable)?;
    let page_size = page_size(&conn).map_err(unreadable)?;
    Ok(Checked {
        conn,
        contents,
        page_size,
    })
}

/// Puts the contents of `backup` in place of `db`'s, which must hold no
/// user and no chat unless `replace` is set; checks the result. A stop
/// ends it before the copy commits, or the check after it.
pub fn restore(
    db: &Database,
    backup: &Checked,
    replace: bool,
    stop: &Stop,
) -> Result<Restored, Error> {
    // Before the copy: SQLite refuses to lock the database for a copy of
    // another page size, and a WAL database's page size cannot change.
    let database_page_size = db
        .with_connection(|conn| page_size(conn))
        .map_err(Error::Copy)?;
    if backup.page_size != database_page_size {
        return Err(Error::PageSize {
            backup: backup.page_size,
            database: database_page_size,
        });
    }
    // Looked at under the copy's write lock, so that nothing another
    // process adds (a `user add`, say) is replaced without being counted.
    let before = db
        .replace_with(
            &backup.conn,
            |conn| {
                let before = match Contents::of(conn) {
                    Ok(before) => Some(before),
                    // Putting a backup in place of a damaged database is what a
                    // restore is most often for.
                    Err(db::Error::Damaged(_)) => None,
                    Err(e) => return Err(Error::Copy(e)),
                };
                if before.is_some_and(Contents::is_empty) || replace {
                    Ok(before)
                } else {
                    Err(Error::WouldReplace {
                        database: db.path().to_owned(),
                        before,
                        backup: backup.contents,
                    })
                }
            },
            || Ok(stop.go_on(None)?),
        )
        .map_err(Error::Copy)??;
    // The copy has committed: a stop from here on leaves the backup in place.
    stop.go_on(None)
        .map_err(|Stopped| Error::StoppedUnchecked)?;
    // A backup of a file whose index was dropped (in the sqlite3 shell,
    // say) passes every check but `doctor`'s, and every delete would then
    // read a whole child table. The backup API copies pages, not the
    // schema, so the index is made in a transaction of its own.
    let made_indexes = db
        .write(|tx| Ok(db::make_missing_indexes(tx)?))
        .map_err(|e| Error::Unconfirmed(format!("the indexes it lacks were not made: {e}")))?;
    let checked = db.with_connection(|conn| {
        if stop.go_on(Some(conn)).is_err() {
            return Ok(None);
        }
        Ok(Some((
            Contents::of(conn)?,
            doctor::integrity_problems(conn)?,
        )))
    });
    // No stop from here on may interrupt the connection, back in the pool.
    let stopped = stop.go_on(None).is_err();
    match checked {
        Ok(Some((now, problems))) if problems.is_empty() => Ok(Restored {
            now,
            before,
            made_indexes,
        }),
        Ok(Some((_, problems))) => Err(Error::Unconfirmed(problems.join("; "))),
        Ok(None) => Err(Error::StoppedUnchecked),
        Err(_) if stopped => Err(Error::StoppedUnchecked),
        Err(e) => Err(Error::Unconfirmed(e.to_string())),
    }
}

fn page_size(conn: &Connection) -> db::Result<u32> {
    Ok(conn.pragma_query_value(None, "page_size", |r| r.get(0))?)
}

/// Whether two paths name one file: through a symbolic link, `./` and the
/// like, or a hard link (see [`db::Identity`]). Restoring a hard
/// link to the database would read its file without its `-wal`, and so put
/// back chats deleted since the last checkpoint.
fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(a), Ok(b)) = (db::identity(a), db::identity(b)) {
        return a.file == b.file;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tests::open_temp;

    /// A server that serves the backup's file goes on writing to it: what
    /// it commits after the check is not copied, since the check's read
    /// transaction lasts to the end of the copy.
    #[test]
    fn what_was_checked_is_what_is_copied() {
        let (_dir, source) = open_temp();
        source.add_user("checked", None).unwrap();
        let (_target_dir, target) = open_temp();
        let checked = check(source.path(), target.path(), &Stop::default()).unwrap();
        source.add_user("added-after-the-check", None).unwrap();

        let restored = restore(&target, &checked, false, &Stop::default()).unwrap();
        assert_eq!(restored.now, Contents { users: 1, chats: 0 });
        assert!(target.user_exists("checked").unwrap());
        assert!(!target.user_exists("added-after-the-check").unwrap());
    }

    /// `check` keeps a damaged backup out, so the check of the result is
    /// tried with one that skipped it: a backup with an orphaned message.
    #[test]
    fn a_result_that_does_not_check_out_is_not_confirmed() {
        let (_dir, source) = open_temp();
        source
            .with_connection(|conn| {
                conn.execute_batch(
                    "PRAGMA foreign_keys = OFF;
                     INSERT INTO messages (chat_id, actor, message) VALUES (999, 'user', 'x');
                     PRAGMA foreign_keys = ON;",
                )?;
                Ok(())
            })
            .unwrap();
        let unchecked = Checked {
            conn: Connection::open(source.path()).unwrap(),
            contents: Contents { users: 0, chats: 0 },
            page_size: 4096,
        };
        let (_target_dir, target) = open_temp();
        match restore(&target, &unchecked, false, &Stop::default()) {
            Err(Error::Unconfirmed(why)) => {
                assert!(why.contains("orphaned rows: messages row"), "{why}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("an orphan was restored and confirmed"),
        }
    }
}
