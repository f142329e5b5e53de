//! `neptun-local backup OUT`: a consistent copy of the database, taken while
//! the server goes on serving.
//!
//! Copying the file with `cp` while the server runs is not safe: the upkeep
//! thread may be writing a checkpoint into it, and the newest commits may
//! still be in the `-wal` file, so the copy can be torn or stale. SQLite's
//! `VACUUM INTO` instead writes the snapshot of one read transaction into a
//! new file. It copies only live rows, so deleted chats leave no trace in
//! it, and the file is in rollback-journal mode: one file, nothing beside
//! it. The copy is synced and then checked before the command reports
//! success, because a backup nobody has read back is a hope, not a backup.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::db::{self, Database};
use crate::{auth, doctor, utc};

/// What a finished backup holds.
pub struct Backup {
    pub chats: i64,
    pub bytes: u64,
}

/// Why a backup was not made (or not confirmed).
#[derive(Debug)]
pub enum Error {
    /// A backup never replaces a file.
    Exists(PathBuf),
    /// A directory was given where the new file's path belongs.
    IsDirectory(PathBuf),
    /// The directory to write into does not exist.
    NoDirectory(PathBuf),
    /// SQLite takes the output path as text.
    NotUtf8(PathBuf),
    /// The file could not be created for another reason.
    Create(PathBuf, io::Error),
    /// Copying failed; whatever was written is not a backup.
    Copy(db::Error),
    /// The copy was written but could not be synced or read back.
    Unconfirmed { out: PathBuf, why: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Exists(out) => write!(
                f,
                "{} already exists; a backup never replaces a file, so choose a new name",
                out.display()
            ),
            Error::IsDirectory(dir) => write!(
                f,
                "{} is a directory; give the path of a new file in it, for example {}",
                dir.display(),
                dir.join(format!(
                    "neptun-{}.db",
                    &utc::date_time(auth::now_unix())[..10]
                ))
                .display()
            ),
            Error::NoDirectory(dir) => {
                write!(
                    f,
                    "the directory {} does not exist; create it first",
                    dir.display()
                )
            }
            Error::NotUtf8(out) => write!(f, "{}: the backup path must be UTF-8", out.display()),
            Error::Create(out, e) => write!(f, "cannot create {}: {e}", out.display()),
            Error::Copy(e) => write!(f, "the backup failed: {e}"),
            Error::Unconfirmed { out, why } => write!(
                f,
                "{} was written but is not a confirmed backup ({why}); delete it and try again",
                out.display()
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Writes a consistent copy of `db` to `out`, a path where no file is yet,
/// syncs it to disk, and checks it (integrity and foreign keys).
pub fn back_up(db: &Database, out: &Path) -> Result<Backup, Error> {
    let for_sqlite = db::sqlite_path(out);
    let out_text = for_sqlite
        .to_str()
        .ok_or_else(|| Error::NotUtf8(out.to_owned()))?;
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty());
    // Created here, exclusively, so that no file is ever replaced, and
    // readable by its owner only, like the database.
    db::create_owner_only(out).map_err(|e| match (e.kind(), dir) {
        _ if out.is_dir() => Error::IsDirectory(out.to_owned()),
        (io::ErrorKind::AlreadyExists, _) => Error::Exists(out.to_owned()),
        (io::ErrorKind::NotFound, Some(dir)) if !dir.is_dir() => Error::NoDirectory(dir.to_owned()),
        _ => Error::Create(out.to_owned(), e),
    })?;
    if let Err(e) = db.vacuum_into(out_text) {
        // The file is ours, and what it holds is not a backup.
        let _ = std::fs::remove_file(out);
        return Err(Error::Copy(e));
    }

    let unconfirmed = |why: String| Error::Unconfirmed {
        out: out.to_owned(),
        why,
    };
    sync(out, dir).map_err(|e| unconfirmed(format!("sync: {e}")))?;
    let chats = check(out).map_err(unconfirmed)?;
    let bytes = std::fs::metadata(out)
        .map_err(|e| unconfirmed(e.to_string()))?
        .len();
    Ok(Backup { chats, bytes })
}

/// Makes the new file, and its name in the directory, durable.
fn sync(out: &Path, dir: Option<&Path>) -> io::Result<()> {
    // Write access: Windows flushes only a handle that may write.
    OpenOptions::new().write(true).open(out)?.sync_all()?;
    if cfg!(unix) {
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
    }
    Ok(())
}

/// Reads the copy back, without changing it, with `doctor`'s integrity and
/// foreign-key checks; returns its number of chats.
fn check(out: &Path) -> Result<i64, String> {
    let read = || -> db::Result<(doctor::Report, i64)> {
        let conn =
            Connection::open_with_flags(db::sqlite_path(out), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut report = doctor::Report::default();
        doctor::check_integrity(&conn, &mut report)?;
        let chats = conn.query_row("SELECT count(*) FROM chats", [], |r| r.get(0))?;
        Ok((report, chats))
    };
    let (report, chats) = read().map_err(|e| format!("reading it back: {e}"))?;
    if report.problems.is_empty() {
        Ok(chats)
    } else {
        Err(report.problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `VACUUM INTO` gives no way to write a bad copy on demand, so the
    /// read-back is tried on bad files made by hand.
    #[test]
    fn a_copy_that_does_not_read_back_clean_is_not_confirmed() {
        let dir = tempfile::tempdir().unwrap();

        let orphans = dir.path().join("orphans.db");
        Connection::open(&orphans)
            .unwrap()
            .execute_batch(
                "PRAGMA foreign_keys = OFF;
                 CREATE TABLE chats (id INTEGER PRIMARY KEY);
                 CREATE TABLE messages (chat_id INTEGER REFERENCES chats(id));
                 INSERT INTO chats VALUES (1);
                 INSERT INTO messages VALUES (1), (2);",
            )
            .unwrap();
        let why = check(&orphans).unwrap_err();
        assert!(why.contains("orphaned rows: messages row"), "{why}");

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
        let why = check(&garbage).unwrap_err();
        assert!(why.starts_with("reading it back: "), "{why}");

        let sound = dir.path().join("sound.db");
        Connection::open(&sound)
            .unwrap()
            .execute_batch(
                "CREATE TABLE chats (id INTEGER PRIMARY KEY); INSERT INTO chats VALUES (1), (2);",
            )
            .unwrap();
        assert_eq!(check(&sound), Ok(2));
    }
}
