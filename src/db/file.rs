//! The database file on disk: the name SQLite must be given for it, where
//! a symbolic link to it leads (SQLite keeps its other files there), how a
//! new one is made, how a copy that `backup` wrote is told apart, and the
//! URI that reads a file as it is where SQLite cannot make a `-shm` beside
//! it.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Whether the file at `path` is an SQLite database in rollback-journal
/// mode, as `backup` writes its copies. Read from the file, because
/// opening it as the commands do would switch it to WAL.
pub fn is_rollback_journal_file(path: &Path) -> bool {
    journal_in_header(path) == Some(1)
}

/// Whether the file at `path` is an SQLite database in WAL mode, as the
/// server leaves it.
pub fn is_wal_file(path: &Path) -> bool {
    journal_in_header(path) == Some(2)
}

/// Bytes 18 and 19 of an SQLite database's header, which are equal: 1 for
/// a rollback journal, 2 for WAL. `None` for any other file.
fn journal_in_header(path: &Path) -> Option<u8> {
    let header: [u8; 20] = first_bytes(path)?;
    let versions = header[18..20] == [header[18]; 2];
    (header.starts_with(b"SQLite format 3\0") && versions).then_some(header[18])
}

/// The write version in the header of the SQLite database at `path` (byte
/// 18) when it is one that SQLite does not know (1 is a rollback journal,
/// 2 WAL): SQLite then opens the file for reading only, without a word.
/// `None` for a known version, or a file that is not an SQLite database.
pub fn unknown_write_version(path: &Path) -> Option<u8> {
    let header: [u8; 19] = first_bytes(path)?;
    let version = header[18];
    (header.starts_with(b"SQLite format 3\0") && version > 2).then_some(version)
}

/// Whether `path` is a regular file of no bytes. SQLite takes it for a new
/// database, and deletes a `-wal` beside it when it opens it.
pub fn is_empty_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
}

/// The first `N` bytes of the regular file at `path`. Nothing else is
/// opened: opening a FIFO to read blocks until something writes to it.
fn first_bytes<const N: usize>(path: &Path) -> Option<[u8; N]> {
    use std::io::Read;
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut bytes = [0u8; N];
    File::open(path).ok()?.read_exact(&mut bytes).ok()?;
    Some(bytes)
}

/// What to say when the database file at `path` has more than one name
/// (hard links); `None` when it has one. SQLite finds the `-wal` and a hot
/// `-journal` by the name a process opened, so one that opens the file by
/// another name misses the newest commits, and its writes or checkpoints
/// can damage the file (<https://sqlite.org/howtocorrupt.html>, "Multiple
/// links to the same file"). Nor is a second name a backup: both are the
/// same file.
pub fn more_than_one_name(path: &Path) -> Option<String> {
    let names = identity(path).ok()?.names;
    #[cfg(unix)]
    let lister = format!("find / -samefile {} 2>/dev/null", super::shell_word(path));
    #[cfg(windows)]
    let lister = format!("fsutil hardlink list {}", super::shell_word(path));
    (names > 1).then(|| {
        format!(
            "the database file has {names} names (hard links): a process that opens it by \
             another name misses the newest commits in its -wal and can damage it, and none of \
             them is a backup; keep one name (`{lister}` lists them) and use `neptun-local \
             backup`"
        )
    })
}

/// The permission bits of the file at `path` (where a link there leads);
/// `None` if it cannot be read.
#[cfg(unix)]
pub fn permission_bits(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    Some(std::fs::metadata(path).ok()?.permissions().mode() & 0o777)
}

/// What to say when other users of this machine can open the database file
/// at `path`, which holds every chat; `None` when only its owner can, and
/// outside Unix. New files are made for their owner only
/// ([`create_owner_only`]), but a file that exists keeps its mode: one
/// made with `touch`, copied with `cp`, or written by another tool.
pub fn open_to_other_users(path: &Path) -> Option<String> {
    open_to_other_users_as(path, "the database file")
}

/// The same for the `-wal` or `-shm` file at `path`, which hold recent
/// pages (a deleted chat's too, until the next checkpoint).
pub fn side_file_open_to_other_users(path: &Path) -> Option<String> {
    open_to_other_users_as(path, &format!("{}, beside the database", path.display()))
}

/// What to say when users other than the owner may read or write the file
/// at `path`, named `what` (an execute bit opens nothing).
fn open_to_other_users_as(path: &Path, what: &str) -> Option<String> {
    #[cfg(unix)]
    {
        let mode = permission_bits(path).filter(|&mode| mode & 0o066 != 0)?;
        Some(format!(
            "other users of this machine can open {what} (mode {mode:04o}); \
             `chmod 600 {}` keeps it to you",
            super::shell_word(path)
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, what);
        None
    }
}

/// A file as the file system knows it, whatever name it is reached by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The device and inode on Unix; the volume's serial number and the
    /// file's index on Windows. Two names with the same are one file.
    pub file: (u64, u64),
    /// How many names (hard links) the file has.
    pub names: u64,
}

/// The identity of the file at `path`, or where a link there leads.
#[cfg(unix)]
pub fn identity(path: &Path) -> io::Result<Identity> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    Ok(Identity {
        file: (metadata.dev(), metadata.ino()),
        names: metadata.nlink(),
    })
}

/// The identity of the file at `path`, or where a link there leads. Asked
/// of an open handle, which std's `File::open` shares for reading, writing
/// and deleting, so that SQLite, which shares its own handles only for
/// reading and writing, is never kept from a file it opens meanwhile.
#[cfg(windows)]
pub fn identity(path: &Path) -> io::Result<Identity> {
    let info = winapi_util::file::information(File::open(path)?)?;
    Ok(Identity {
        file: (info.volume_serial_number(), info.file_index()),
        names: info.number_of_links(),
    })
}

/// What tells the file at `path` apart from another put in its place, for
/// watching it while SQLite has it open; `None` on Windows, where no one can
/// delete or replace such a file (SQLite does not share its handles for
/// deleting), so there is nothing to watch for. Still an error there for a
/// file that is not there.
pub fn watched_identity(path: &Path) -> io::Result<Option<(u64, u64)>> {
    #[cfg(unix)]
    {
        Ok(Some(identity(path)?.file))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| None)
    }
}

/// Whether `path` ends in a separator (`new-dir/`), and so can only name a
/// directory. SQLite takes such a name for the file without it.
pub fn names_a_directory(path: &Path) -> bool {
    path.to_string_lossy().ends_with(std::path::is_separator)
}

/// What a path given for a file (the database, or a backup to read) names
/// instead of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotAFile {
    /// A name that ends in a separator, where no directory is: SQLite
    /// would take it for the file without the separator.
    EndsInSeparator,
    Directory,
    /// A device, a FIFO or a socket. Opened to read, a FIFO blocks until
    /// something writes to it.
    Special,
}

/// What `path` names instead of a file; `None` for a regular file, or
/// for nothing at all (a link is followed).
pub fn not_a_file(path: &Path) -> Option<NotAFile> {
    if names_a_directory(path) && !path.is_dir() {
        return Some(NotAFile::EndsInSeparator);
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Some(NotAFile::Directory),
        Ok(m) if !m.is_file() => Some(NotAFile::Special),
        _ => None,
    }
}

impl NotAFile {
    /// What `path` is, then `advice` (what to name instead), in the words
    /// every command uses; `None` for a directory, whose advice each
    /// command words with an example of its own.
    pub fn explain(self, path: &Path, advice: &str) -> Option<String> {
        match self {
            NotAFile::EndsInSeparator => Some(format!(
                "{}: a name that ends in {} is a directory's; {advice}, for example {}",
                path.display(),
                std::path::MAIN_SEPARATOR,
                path.components().as_path().display()
            )),
            NotAFile::Special => Some(format!(
                "{}: that is not a regular file (a device, a FIFO or a socket); {advice}",
                path.display()
            )),
            NotAFile::Directory => None,
        }
    }
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

/// The database file at `path`, and the `-wal` and `-shm` files that
/// SQLite keeps beside it in WAL mode (see [`side_file`]).
pub fn database_files(path: &Path) -> [PathBuf; 3] {
    [
        path.to_owned(),
        side_file(path, "-wal"),
        side_file(path, "-shm"),
    ]
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
/// `a.db`, and `?` starts its parameters), and `:memory:` as a database in
/// memory, one per connection; so such a relative path is written `./…`,
/// which SQLite takes as it is.
pub fn sqlite_path(path: &Path) -> Cow<'_, Path> {
    let special = path
        .to_str()
        .is_some_and(|p| p.starts_with("file:") || p == ":memory:");
    if special && path.is_relative() {
        Cow::Owned(Path::new(".").join(path))
    } else {
        Cow::Borrowed(path)
    }
}

/// A URI that opens the database at `path` as immutable: SQLite then reads
/// the file as it is, with no lock, no `-shm` file and no look at the
/// `-wal` (see <https://sqlite.org/uri.html#uriimmutable>). Every byte of
/// the path but the plainest is percent-encoded, so that no `?`, `#` or
/// `%` in a name is read as URI syntax.
pub fn immutable_uri(path: &Path) -> io::Result<PathBuf> {
    let path = std::path::absolute(path)?;
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    // Windows: `C:\dir\a.db` is written `/C:/dir/a.db`, as SQLite's
    // URIs name a drive. (A share's `\\host\…` becomes `//host/…`, an
    // authority that SQLite refuses: such a path is not opened this way.)
    #[cfg(not(unix))]
    let bytes = {
        let path = path.to_string_lossy().replace('\\', "/");
        let rooted = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        rooted.into_bytes()
    };
    let mut uri = String::from("file:");
    for byte in bytes {
        if byte.is_ascii_alphanumeric() || b"/-._~:".contains(&byte) {
            uri.push(char::from(byte));
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    Ok(PathBuf::from(uri))
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

/// The `-shm` file in which this process indexes the WAL, as it was once
/// the database was open.
///
/// If someone deletes or replaces it while the database is open (an `rm`,
/// a sync tool; `file_watch` stops the server for it within a second),
/// other processes index the WAL in a new one and commit unseen from
/// here: their commits are in the WAL, not in this process's index. A
/// checkpoint from here would copy only what this process knows of and
/// truncate theirs away, and a write from here would start the WAL over on
/// top of them. So every write and every upkeep step first checks that the
/// file is still the one (a `stat`, against a commit's sync). A file
/// deleted between the check and the write is not caught: the window is
/// microseconds, not the file watch's second.
pub(super) struct WalIndex {
    path: PathBuf,
    /// `None` where there is nothing to check: on Windows, which lets no
    /// one delete or replace a file SQLite has open; or if the file was not
    /// there to look at.
    identity: Option<(u64, u64)>,
}

impl WalIndex {
    /// Call it once the database is open, while a connection holds the
    /// file: the one that every connection of this process then shares.
    pub(super) fn of(db_path: &Path) -> WalIndex {
        let path = side_file(db_path, "-shm");
        let identity = watched_identity(&path).ok().flatten();
        WalIndex { path, identity }
    }

    /// Fails with [`super::Error::WalIndexReplaced`] once the file at the
    /// path is not the one this process uses (or is gone).
    pub(super) fn check(&self) -> super::Result<()> {
        match self.identity {
            Some(first) if watched_identity(&self.path).ok().flatten() != Some(first) => {
                Err(super::Error::WalIndexReplaced(self.path.clone()))
            }
            _ => Ok(()),
        }
    }
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
        assert_eq!(plain(":memory:"), Path::new(".").join(":memory:"));
        assert_eq!(plain(":memory:.db"), Path::new(":memory:.db"));
        assert_eq!(plain("neptun.db"), Path::new("neptun.db"));
        assert_eq!(plain("files/a.db"), Path::new("files/a.db"));
        let absolute = std::env::temp_dir().join("file:a.db");
        assert_eq!(sqlite_path(&absolute), absolute.as_path());
    }

    /// Each name is written to a database of its own, which is then read
    /// through its URI: a character taken for URI syntax would open
    /// another file, or none.
    #[test]
    fn an_immutable_uri_opens_the_file_it_was_made_for() {
        use rusqlite::{Connection, OpenFlags};
        let dir = tempfile::tempdir().unwrap();
        let mut names: Vec<std::ffi::OsString> = [
            "plain.db",
            "a space.db",
            "hash#frag.db",
            "per%41cent.db",
            "é ü 日本.db",
        ]
        .map(Into::into)
        .to_vec();
        // Names that Windows does not allow.
        if cfg!(unix) {
            names.extend(["what?immutable=0.db", "file:x.db"].map(Into::into));
        }
        #[cfg(unix)]
        names.push(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"not utf-8 \xff.db")
                .into(),
        );
        for (i, name) in names.iter().enumerate() {
            let path = dir.path().join(name);
            let conn = Connection::open(sqlite_path(&path)).unwrap();
            conn.execute_batch(&format!("CREATE TABLE t (v); INSERT INTO t VALUES ({i});"))
                .unwrap();
            drop(conn);
            let uri = immutable_uri(&path).unwrap();
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
            let read: i64 = Connection::open_with_flags(&uri, flags)
                .and_then(|conn| conn.query_row("SELECT v FROM t", [], |r| r.get(0)))
                .unwrap_or_else(|e| panic!("{name:?} as {uri:?}: {e}"));
            assert_eq!(read, i as i64, "{name:?} as {uri:?}");
        }
        // A relative name is made absolute, so the URI does not depend on
        // where SQLite would resolve it.
        let absolute = std::path::absolute("neptun.db").unwrap();
        assert_eq!(
            immutable_uri(Path::new("neptun.db")).unwrap(),
            immutable_uri(&absolute).unwrap()
        );
    }
}
