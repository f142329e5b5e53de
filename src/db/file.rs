//! The database file on disk: the name SQLite must be given for it, where
//! a symbolic link to it leads (SQLite keeps its other files there), how a
//! new one is made, and how a copy that `backup` wrote is told apart.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Whether the file at `path` is an SQLite database in rollback-journal
/// mode, as `backup` writes its copies: bytes 18 and 19 of the header are 1
/// for a rollback journal and 2 for WAL. Read from the file, because
/// opening it as the commands do would switch it to WAL.
pub fn is_rollback_journal_file(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 20];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .is_ok_and(|()| header.starts_with(b"SQLite format 3\0") && header[18..20] == [1, 1])
}

/// The path that SQLite names the `-wal`, `-shm` and `-journal` files
/// after: `path` with a symbolic link resolved, as SQLite resolves it. A
/// `--db` that is a link has those files beside the file it points to.
/// The link is followed whether or not its file exists yet: a new
/// database is created there.
pub fn resolved_path(path: &Path) -> Cow<'_, Path> {
    // Links in turn, up to the limit Linux puts on a path's links.
    let mut current = Cow::Borrowed(path);
    for _ in 0..40 {
        let Ok(next) = std::fs::read_link(&current) else {
            break;
        };
        // A relative link is relative to the directory the link is in.
        current = Cow::Owned(current.parent().map_or(next.clone(), |dir| dir.join(&next)));
    }
    current
}

/// The file that SQLite keeps beside the database at `path` in WAL mode,
/// for `suffix` `-wal` or `-shm`: named after the file a symbolic link
/// leads to (see [`resolved_path`]).
pub fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = resolved_path(path).into_owned().into_os_string();
    name.push(suffix);
    name.into()
}

/// `shown`, the name of `path` for a person, and if `path` is a symbolic
/// link, the file it points to, where SQLite's other files are.
pub fn describe(shown: &Path, path: &Path) -> String {
    match resolved_path(path) {
        Cow::Owned(target) => {
            let target = std::path::absolute(&target).unwrap_or(target);
            format!("{}, a link to {}", shown.display(), target.display())
        }
        Cow::Borrowed(_) => shown.display().to_string(),
    }
}

/// `path` as SQLite must be given it to open that file. This build of SQLite
/// reads any name that begins with `file:` as a URI (`file:a.db` opens
/// `a.db`, and `?` starts its parameters), so such a relative path is
/// written `./file:…`, which SQLite takes as it is.
pub fn sqlite_path(path: &Path) -> Cow<'_, Path> {
    let uri_like = path.to_str().is_some_and(|p| p.starts_with("file:"));
    if uri_like && path.is_relative() {
        Cow::Owned(Path::new(".").join(path))
    } else {
        Cow::Borrowed(path)
    }
}

/// Creates an empty file that must not exist yet, readable and writable by
/// its owner only on Unix (mode 0600): it will hold every chat. SQLite
/// treats an empty file as a new database, and gives its `-wal` and `-shm`
/// files the database file's mode.
pub fn create_owner_only(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_name_that_sqlite_would_read_as_a_uri_is_made_plain() {
        let plain = |p: &str| sqlite_path(Path::new(p)).into_owned();
        assert_eq!(plain("file:a.db"), Path::new(".").join("file:a.db"));
        assert_eq!(
            plain("file:a.db?mode=ro"),
            Path::new(".").join("file:a.db?mode=ro")
        );
        assert_eq!(plain("neptun.db"), Path::new("neptun.db"));
        assert_eq!(plain("files/a.db"), Path::new("files/a.db"));
        let absolute = std::env::temp_dir().join("file:a.db");
        assert_eq!(sqlite_path(&absolute), absolute.as_path());
    }
}
