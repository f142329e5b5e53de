//! Notices when the database file, or one of the files SQLite keeps beside
//! it, is deleted or replaced by another file while the server runs.
//!
//! SQLite keeps using the file it opened, so after `rm neptun.db` (to start
//! over with fresh demo data, say) the server would go on answering from a
//! file that no one else can see, while `user add` and `session new` write
//! to a new one at the same path, whose sessions the server never finds.
//! PostgreSQL shuts down in the same case (when its data directory's lock
//! file goes); so does this server, and a service manager starts it again
//! on the file that is there now.
//!
//! The `-wal` and `-shm` files are watched for the same reason, and more is
//! at stake. While the server runs they never go (SQLite removes them when
//! the last connection closes), so a change is someone's `rm`, or a sync
//! tool's. Then the server and every other process see the database
//! through different files. After a deleted WAL, the server's commits went
//! to one that no other process sees until the next checkpoint (a crash in
//! between would bring deleted chats back), and commands failed with "disk
//! I/O error". After a deleted `-shm`, commands index the WAL in a new one,
//! and the server's next checkpoint can truncate their commits away, or
//! its next write start the WAL over on top of them; until the server has
//! stopped, `db::WalIndex` refuses both. Stopping ends the two views; what
//! the server does with the WAL as it stops depends on which file went
//! (see `cli::serve`).
//!
//! Files are told apart by device and inode, so this works on Unix only.
//! Windows does not let an open database file be deleted or replaced.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::db;

/// How often the server checks its files: a stat each, so cheap, and soon
/// enough that few requests are answered from a file no one sees.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A thread that checks, every `every`, that each watched path is still
/// the file it was at the start.
pub struct FileWatch {
    stop: Arc<(Mutex<bool>, Condvar)>,
    /// Returns the change it found (and called `on_change` for), if any.
    thread: JoinHandle<Option<Change>>,
    watched: Arc<[Watched]>,
}

/// What the watch found, once stopped.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub change: Change,
    /// Whether `on_change` was called for it: if not, the last look found
    /// it, as the watch stopped.
    pub reported: bool,
}

/// A file that was there at the start, and what told it apart then.
type Watched = (PathBuf, (u64, u64));

/// A file that changed, and what happened to it.
pub type Change = (PathBuf, &'static str);

impl FileWatch {
    /// Starts watching `files`; calls `on_change` once, with the first file
    /// that changed and what happened to it ("was deleted or moved away",
    /// "was deleted or replaced by another file"). A file that does not
    /// exist now is not watched.
    pub fn start(
        files: &[PathBuf],
        every: Duration,
        on_change: impl FnOnce(&Path, &'static str) + Send + 'static,
    ) -> std::io::Result<FileWatch> {
        let mut watched = Vec::new();
        for file in files {
            match db::watched_identity(file) {
                Ok(Some(first)) => watched.push((file.clone(), first)),
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let watched: Arc<[Watched]> = watched.into();
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let (watched, stop) = (Arc::clone(&watched), Arc::clone(&stop));
            thread::Builder::new()
                .name("file-watch".into())
                .spawn(move || {
                    let (file, change) = wait_for_change(&watched, every, &stop)?;
                    on_change(file, change);
                    Some((file.to_owned(), change))
                })?
        };
        Ok(FileWatch {
            stop,
            thread,
            watched,
        })
    }

    /// Stops the thread; returns the change it reported, or else one that
    /// a last look finds (made since its last look). Whoever stops the
    /// server meanwhile must still learn that a file changed: then the last
    /// connection must not checkpoint (see `cli::serve`).
    pub fn stop(self) -> Option<Found> {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        // A thread that panicked may not have reported: look again.
        if let Some(change) = self.thread.join().ok().flatten() {
            return Some(Found {
                change,
                reported: true,
            });
        }
        let (file, change) = first_change(&self.watched)?;
        Some(Found {
            change: (file.to_owned(), change),
            reported: false,
        })
    }
}

/// Looks at each file every `every` until one is no longer the file it was
/// (returns it and what happened) or `stop` is set (returns `None`).
fn wait_for_change<'a>(
    watched: &'a [Watched],
    every: Duration,
    stop: &(Mutex<bool>, Condvar),
) -> Option<(&'a Path, &'static str)> {
    if watched.is_empty() {
        return None;
    }
    let (stopped, wake) = stop;
    let mut stopped = stopped.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        stopped = wake
            .wait_timeout_while(stopped, every, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if *stopped {
            return None;
        }
        if let Some(change) = first_change(watched) {
            return Some(change);
        }
    }
}

/// The first of the `watched` files that is no longer the file it was, and
/// what happened to it.
fn first_change(watched: &[Watched]) -> Option<(&Path, &'static str)> {
    for (file, first) in watched {
        match db::watched_identity(file) {
            // A new file at the path is not always someone's: after an
            // `rm` of a side file, the next command's SQLite makes one.
            Ok(Some(now)) if now != *first => {
                return Some((file, "was deleted or replaced by another file"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Some((file, "was deleted or moved away"));
            }
            // The same file; or an error that says nothing about it (a
            // directory briefly unreadable): look again next time.
            _ => {}
        }
    }
    None
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    type Change = (PathBuf, &'static str);

    fn watch(files: &[PathBuf]) -> (FileWatch, mpsc::Receiver<Change>) {
        let (changed, change) = mpsc::channel();
        let watch = FileWatch::start(files, Duration::from_millis(5), move |file, what| {
            let _ = changed.send((file.to_owned(), what));
        })
        .unwrap();
        (watch, change)
    }

    #[test]
    fn a_deleted_or_replaced_file_is_reported_and_the_same_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        std::fs::write(&path, b"one").unwrap();
        let watched = [path.clone()];

        let (same, change) = watch(&watched);
        // Written in place, as SQLite does: the same file.
        std::fs::write(&path, b"two").unwrap();
        assert!(change.recv_timeout(Duration::from_millis(100)).is_err());
        same.stop();

        let (replaced, change) = watch(&watched);
        let other = dir.path().join("other.db");
        std::fs::write(&other, b"three").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let what = change.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            what,
            (path.clone(), "was deleted or replaced by another file")
        );
        replaced.stop();

        let (deleted, change) = watch(&watched);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            change.recv_timeout(Duration::from_secs(5)).unwrap(),
            (path, "was deleted or moved away")
        );
        deleted.stop();
    }

    /// `stop` finds a change made since the thread's last look (for which
    /// `on_change` is not called), and tells it from one it reported.
    #[test]
    fn stop_looks_once_more_and_tells_what_it_found_from_what_it_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        std::fs::write(&path, b"one").unwrap();
        let watched = [path.clone()];

        let (changed, change) = mpsc::channel();
        let unseen = FileWatch::start(&watched, Duration::from_secs(3600), move |f, w| {
            let _ = changed.send((f.to_owned(), w));
        })
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            unseen.stop(),
            Some(Found {
                change: (path.clone(), "was deleted or moved away"),
                reported: false,
            })
        );
        assert!(change.try_recv().is_err());

        std::fs::write(&path, b"two").unwrap();
        let (reported, change) = watch(&watched);
        std::fs::remove_file(&path).unwrap();
        change.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            reported.stop(),
            Some(Found {
                change: (path, "was deleted or moved away"),
                reported: true,
            })
        );
    }

    /// The file that changed is the one named; a file missing at the start
    /// (no `-shm` yet, say) is not watched, so its coming is no change.
    #[test]
    fn of_several_files_the_one_that_changed_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let [db, wal, shm] = ["t.db", "t.db-wal", "t.db-shm"].map(|name| dir.path().join(name));
        std::fs::write(&db, b"db").unwrap();
        std::fs::write(&wal, b"wal").unwrap();

        let (watching, change) = watch(&[db.clone(), wal.clone(), shm.clone()]);
        std::fs::write(&shm, b"shm").unwrap();
        assert!(change.recv_timeout(Duration::from_millis(100)).is_err());
        std::fs::remove_file(&wal).unwrap();
        assert_eq!(
            change.recv_timeout(Duration::from_secs(5)).unwrap(),
            (wal, "was deleted or moved away")
        );
        watching.stop();
    }
}
