//! Notices when the database file is deleted, or replaced by another file,
//! while the server runs.
//!
//! SQLite keeps using the file it opened, so after `rm neptun.db` (to start
//! over with fresh demo data, say) the server would go on answering from a
//! file that no one else can see, while `user add` and `session new` write
//! to a new one at the same path, whose sessions the server never finds.
//! PostgreSQL shuts down in the same case (when its data directory's lock
//! file goes); so does this server, and a service manager starts it again
//! on the file that is there now.
//!
//! Files are told apart by device and inode, so this works on Unix only.
//! Windows does not let an open database file be deleted or replaced.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often the server checks its database file: a stat, so cheap, and
/// soon enough that few requests are answered from a file no one sees.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A thread that checks, every `every`, that `path` is still the file it
/// was at the start.
pub struct FileWatch {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl FileWatch {
    /// Starts watching `path`; calls `on_change` once, with what happened
    /// ("was deleted", "was replaced by another file"), if it changes.
    pub fn start(
        path: &Path,
        every: Duration,
        on_change: impl FnOnce(&'static str) + Send + 'static,
    ) -> std::io::Result<FileWatch> {
        let path = path.to_owned();
        let first = identity(&path)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("file-watch".into())
                .spawn(move || {
                    if let Some(change) = wait_for_change(&path, first, every, &stop) {
                        on_change(change);
                    }
                })?
        };
        Ok(FileWatch { stop, thread })
    }

    /// Stops the thread.
    pub fn stop(self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        let _ = self.thread.join();
    }
}

/// Looks at `path` every `every` until it is no longer the file `first`
/// (returns what happened) or `stop` is set (returns `None`).
fn wait_for_change(
    path: &Path,
    first: Option<(u64, u64)>,
    every: Duration,
    stop: &(Mutex<bool>, Condvar),
) -> Option<&'static str> {
    let first = first?;
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
        match identity(path) {
            Ok(Some(now)) if now != first => return Some("was replaced by another file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some("was deleted"),
            // The same file; or an error that says nothing about it (a
            // directory briefly unreadable): look again next time.
            _ => {}
        }
    }
}

/// The file's device and inode; `None` where there are none to compare.
fn identity(path: &Path) -> std::io::Result<Option<(u64, u64)>> {
    let metadata = std::fs::metadata(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(Some((metadata.dev(), metadata.ino())))
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        Ok(None)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn watch(path: &Path) -> (FileWatch, mpsc::Receiver<&'static str>) {
        let (changed, change) = mpsc::channel();
        let watch = FileWatch::start(path, Duration::from_millis(5), move |what| {
            let _ = changed.send(what);
        })
        .unwrap();
        (watch, change)
    }

    #[test]
    fn a_deleted_or_replaced_file_is_reported_and_the_same_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        std::fs::write(&path, b"one").unwrap();

        let (same, change) = watch(&path);
        // Written in place, as SQLite does: the same file.
        std::fs::write(&path, b"two").unwrap();
        assert!(change.recv_timeout(Duration::from_millis(100)).is_err());
        same.stop();

        let (replaced, change) = watch(&path);
        let other = dir.path().join("other.db");
        std::fs::write(&other, b"three").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let what = change.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(what, "was replaced by another file");
        replaced.stop();

        let (deleted, change) = watch(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            change.recv_timeout(Duration::from_secs(5)).unwrap(),
            "was deleted"
        );
        deleted.stop();
    }
}
