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
//!
//! The copy is written as `OUT.partial` and given its name only once it has
//! been synced and checked, so a file named `OUT` is always a whole backup.
//! Killed halfway, `VACUUM INTO` left a file at `OUT` with a hot journal,
//! which SQLite rolls back on the next open to an empty database: a file
//! named like a backup that restores nothing. A backup stopped by a signal
//! (Ctrl+C) removes its copy, as after any other failure; once the copy
//! has its name, the backup is made, and a stop changes nothing.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::db;
use crate::stop::{Stop, Stopped};
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
    /// The name ends in a separator, but without it names a file.
    NotADirectory(PathBuf),
    /// `OUT.partial` is there: a backup to this name was interrupted, or
    /// is running now.
    Interrupted(PathBuf),
    /// SQLite takes the output path as text.
    NotUtf8(PathBuf),
    /// The file could not be created for another reason.
    Create(PathBuf, io::Error),
    /// Copying failed; whatever was written is not a backup.
    Copy(db::Error),
    /// The copy was written but could not be synced or read back.
    Unconfirmed { out: PathBuf, why: String },
    /// The copy is whole, checked and named, but its name may not survive
    /// a power loss: syncing the directory failed.
    NameNotSynced { out: PathBuf, e: io::Error },
    /// A stop was asked for (see [`Stop`]) before the copy had its name.
    Stopped,
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
            Error::NotADirectory(out) => write!(
                f,
                "{} is not a directory: {} is a file; give the path of a new file for the backup",
                out.display(),
                out.components().as_path().display()
            ),
            Error::Interrupted(partial) => write!(
                f,
                "{} is there: a backup to this name was interrupted, or is running now; \
                 if none is running, delete it (and its -journal, if any) and try again",
                partial.display()
            ),
            Error::NotUtf8(out) => write!(f, "{}: the backup path must be UTF-8", out.display()),
            Error::Create(out, e) => write!(f, "cannot create {}: {e}", out.display()),
            Error::Copy(db::Error::Damaged(cause)) => write!(
                f,
                "the backup failed: the database file is damaged (sqlite: {cause}); {}",
                doctor::SEE_DOCTOR
            ),
            Error::Copy(e) => write!(f, "the backup failed: {e}"),
            Error::Unconfirmed { out, why } => write!(
                f,
                "the copy for {} was written but did not check out ({why}), so it was not kept",
                out.display()
            ),
            Error::NameNotSynced { out, e } => write!(
                f,
                "{} is written and checked, but syncing its directory failed ({e}): \
                 after a power loss it may be gone",
                out.display()
            ),
            Error::Stopped => f.write_str("stopped before the backup was made; nothing was kept"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Stopped> for Error {
    fn from(_: Stopped) -> Error {
        Error::Stopped
    }
}

/// Writes a consistent copy of the database that `from` reads to `out`, a
/// path where no file is yet, syncs it to disk, and checks it (integrity and
/// foreign keys); only then does the copy take the name `out`. `from` may be
/// open read-only: the database is not changed. `stop` can end it early.
pub fn back_up(from: &Connection, out: &Path, stop: &Stop) -> Result<Backup, Error> {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty());
    if out.is_dir() {
        return Err(Error::IsDirectory(out.to_owned()));
    }
    // `new-dir/` names a directory, which is not there: without this the
    // copy would go to `new-dir/.partial`, and fail with the OS's words.
    if db::names_a_directory(out) {
        return Err(if out.components().as_path().symlink_metadata().is_ok() {
            Error::NotADirectory(out.to_owned())
        } else {
            Error::NoDirectory(out.to_owned())
        });
    }
    if out.symlink_metadata().is_ok() {
        return Err(Error::Exists(out.to_owned()));
    }
    let partial = partial_path(out);
    let for_sqlite = db::sqlite_path(&partial);
    let partial_text = for_sqlite
        .to_str()
        .ok_or_else(|| Error::NotUtf8(out.to_owned()))?;
    // Created here, exclusively, and readable by its owner only, like the
    // database.
    db::create_owner_only(&partial).map_err(|e| match (e.kind(), dir) {
        (io::ErrorKind::AlreadyExists, _) => Error::Interrupted(partial.clone()),
        (io::ErrorKind::NotFound, Some(dir)) if !dir.is_dir() => Error::NoDirectory(dir.to_owned()),
        _ => Error::Create(out.to_owned(), e),
    })?;

    let unconfirmed = |why: String| Error::Unconfirmed {
        out: out.to_owned(),
        why,
    };
    let copied = || -> Result<Backup, Error> {
        stop.go_on(Some(from))?;
        db::vacuum_into(from, partial_text).map_err(Error::Copy)?;
        // Write access: Windows flushes only a handle that may write.
        OpenOptions::new()
            .write(true)
            .open(&partial)
            .and_then(|file| sync_to_disk(&file))
            .map_err(|e| unconfirmed(format!("sync: {e}")))?;
        let chats = {
            let copy =
                open_copy(&partial).map_err(|e| unconfirmed(format!("reading it back: {e}")))?;
            stop.go_on(Some(&copy))?;
            check(&copy).map_err(unconfirmed)?
            // The copy is closed here, before it is named: Windows renames
            // no open file.
        };
        let bytes = std::fs::metadata(&partial)
            .map_err(|e| unconfirmed(e.to_string()))?
            .len();
        // The last moment to stop: from here on the backup is made.
        stop.go_on(None)?;
        give_name(&partial, out).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::Exists(out.to_owned()),
            _ => Error::Create(out.to_owned(), e),
        })?;
        if cfg!(unix) {
            // The new name, durable.
            File::open(dir.unwrap_or(Path::new(".")))
                .and_then(|dir| sync_to_disk(&dir))
                .map_err(|e| Error::NameNotSynced {
                    out: out.to_owned(),
                    e,
                })?;
        }
        Ok(Backup { chats, bytes })
    };
    let result = copied();
    if result.is_err() {
        // Whatever it holds is not a backup; nor is it anyone else's file.
        let _ = std::fs::remove_file(&partial);
        // A stop asked for is the failure to report: the SQLite call it
        // interrupted says only "interrupted".
        stop.go_on(None)?;
    }
    result
}

/// Puts `file` (or a directory's entries) on disk.
///
/// On macOS, `sync_all` asks the drive to empty its cache too
/// (`F_FULLFSYNC`), which some file systems refuse: SMB shares and NTFS
/// with `ENOTSUP`, WebDAV with `EINVAL`, ZFS with `ENOTTY` (Apple's sources,
/// as read for libuv's pull request 2135). A backup to a NAS would then
/// fail although the file system can sync. There, as SQLite, libuv and
/// Go's `File.Sync` do, a plain `fsync` is the most that can be had.
fn sync_to_disk(file: &File) -> io::Result<()> {
    let synced = file.sync_all();
    #[cfg(target_vendor = "apple")]
    let synced = fall_back_if_unsupported(synced, || {
        use std::os::fd::AsRawFd;
        // SAFETY: fsync only reads the descriptor, which `file` keeps open.
        match unsafe { libc::fsync(file.as_raw_fd()) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    });
    synced
}

/// `synced`, or `plain`'s result where `synced` failed because the file
/// system does not do that kind of sync. Any other failure stands: after an
/// `EIO` a second sync may report success for data that never reached the
/// disk (the kernel has already dropped the pages it could not write).
#[cfg(any(test, target_vendor = "apple"))]
fn fall_back_if_unsupported(
    synced: io::Result<()>,
    plain: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    match synced {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTSUP | libc::EINVAL | libc::ENOTTY)
            ) =>
        {
            plain()
        }
        other => other,
    }
}

/// Where the copy is written until it has been checked: `OUT.partial`.
fn partial_path(out: &Path) -> PathBuf {
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    PathBuf::from(partial)
}

/// Gives the checked copy its name, never replacing a file that took that
/// name meanwhile: a hard link fails if the name exists. Where there are
/// no hard links (FAT on a USB stick, some network file systems), a rename,
/// after one more look.
fn give_name(partial: &Path, out: &Path) -> io::Result<()> {
    match std::fs::hard_link(partial, out) {
        Ok(()) => std::fs::remove_file(partial),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if out.symlink_metadata().is_err() => std::fs::rename(partial, out),
        Err(_) => Err(io::ErrorKind::AlreadyExists.into()),
    }
}

/// Opens the copy to read it back, without changing it.
fn open_copy(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(db::sqlite_path(path), OpenFlags::SQLITE_OPEN_READ_ONLY)
}

/// Reads the copy back with `doctor`'s integrity and foreign-key checks;
/// returns its number of chats.
fn check(copy: &Connection) -> Result<i64, String> {
    let read = || -> db::Result<(Vec<String>, i64)> {
        let problems = doctor::integrity_problems(copy)?;
        let chats = copy.query_row("SELECT count(*) FROM chats", [], |r| r.get(0))?;
        Ok((problems, chats))
    };
    let (problems, chats) = read().map_err(|e| format!("reading it back: {e}"))?;
    if problems.is_empty() {
        Ok(chats)
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_the_file_system_does_not_do_falls_back_and_a_failed_one_stands() {
        let os = io::Error::from_raw_os_error;
        for refused in [libc::ENOTSUP, libc::EINVAL, libc::ENOTTY] {
            let mut tried = false;
            let result = fall_back_if_unsupported(Err(os(refused)), || {
                tried = true;
                Ok(())
            });
            assert!(result.is_ok() && tried, "errno {refused}: no fallback");
            let result = fall_back_if_unsupported(Err(os(refused)), || Err(os(libc::EIO)));
            assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EIO));
        }
        for failed in [Err(os(libc::EIO)), Err(os(libc::ENOSPC)), Ok(())] {
            let expected = failed.as_ref().map_err(|e| e.raw_os_error()).copied();
            let mut tried = false;
            let result = fall_back_if_unsupported(failed, || {
                tried = true;
                Ok(())
            });
            assert!(!tried, "{expected:?}: fell back");
            assert_eq!(result.map_err(|e| e.raw_os_error()), expected);
        }
    }

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
        let why = check(&open_copy(&orphans).unwrap()).unwrap_err();
        assert!(why.contains("orphaned rows: messages row"), "{why}");

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
        let why = check(&open_copy(&garbage).unwrap()).unwrap_err();
        assert!(why.starts_with("reading it back: "), "{why}");

        let sound = dir.path().join("sound.db");
        Connection::open(&sound)
            .unwrap()
            .execute_batch(
                "CREATE TABLE chats (id INTEGER PRIMARY KEY); INSERT INTO chats VALUES (1), (2);",
            )
            .unwrap();
        assert_eq!(check(&open_copy(&sound).unwrap()), Ok(2));
    }
}
