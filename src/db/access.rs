//! Says what stops SQLite from opening a database file for writing.
//!
//! SQLite reports a file this user cannot read as "unable to open database
//! file", and a file or directory it cannot write as "attempt to write a
//! readonly database", which names neither the file nor the directory. Both
//! happen to a file made by another user (`sudo`, a service account), or in
//! a directory such as `/var/lib` that only root may write to.

use std::path::Path;

/// What keeps this process from using the database at `path`, in words;
/// `None` if nothing does (or, outside Unix, if we cannot tell).
#[cfg(unix)]
pub fn problem(path: &Path) -> Option<String> {
    let path = &*super::resolved_path(path);
    if path.exists() {
        if let Some(why) = file_problem(path) {
            return Some(why);
        }
    }
    // In WAL mode SQLite keeps two more files beside the database, and
    // creates and removes them as it opens and closes it.
    let [_, wal, shm] = super::database_files(path);
    for file in [wal, shm] {
        if !file.exists() {
            continue;
        }
        if let Err(e) = access(&file, libc::R_OK | libc::W_OK) {
            let what = format!("read and write {}, beside the database", file.display());
            return Some(explain(&what, &whose(&file), &e));
        }
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Err(e) = access(dir, libc::W_OK | libc::X_OK) {
        // In full: the working directory may not be where the user thinks
        // (systemd starts a service in /), and "." would not say.
        let what = format!(
            "create files in {}, where the database and SQLite's -wal and -shm files \
             beside it go",
            std::path::absolute(dir).as_deref().unwrap_or(dir).display()
        );
        return Some(explain(
            &what,
            "choose a directory this user may write to",
            &e,
        ));
    }
    None
}

/// What keeps this process from reading and writing the database file at
/// `path` itself, in words; `None` if nothing does. Asked before SQLite
/// opens the file: SQLite opens a file it may not write read-only, without
/// a word, and makes a `-wal` and a `-shm` beside it that a read-only
/// connection leaves there, in the way of the next writer.
#[cfg(unix)]
pub fn file_problem(path: &Path) -> Option<String> {
    let path = &*super::resolved_path(path);
    let e = access(path, libc::R_OK | libc::W_OK).err()?;
    Some(explain("read and write the file", &whose(path), &e))
}

/// Outside Unix, the file's Read-only attribute is all [`problem`] looks at.
#[cfg(not(unix))]
pub fn file_problem(path: &Path) -> Option<String> {
    problem(path)
}

/// What keeps this process from reading the file at `path` (a backup, say,
/// which is only read), in words; `None` if nothing does.
#[cfg(unix)]
pub fn unreadable(path: &Path) -> Option<String> {
    let e = access(path, libc::R_OK).err()?;
    Some(explain("read the file", &whose(path), &e))
}

/// Outside Unix, SQLite's own words must do.
#[cfg(not(unix))]
pub fn unreadable(_path: &Path) -> Option<String> {
    None
}

/// Outside Unix, only the usual cause is looked for: a file marked
/// read-only (on Windows, its Read-only attribute, which a copy keeps).
#[cfg(not(unix))]
pub fn problem(path: &Path) -> Option<String> {
    let read_only = std::fs::metadata(path).is_ok_and(|m| m.permissions().readonly());
    read_only.then(|| {
        format!(
            "the file is marked read-only; clear its Read-only attribute (in its \
             Properties, or `attrib -r \"{}\"`)",
            path.display()
        )
    })
}

/// What to do about a file this user may not read and write. Most often
/// another user made it: a run with `sudo` leaves root's files behind.
#[cfg(unix)]
fn whose(file: &Path) -> String {
    use std::os::unix::fs::MetadataExt;

    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    match std::fs::metadata(file).map(|m| m.uid()) {
        Ok(owner) if owner != me => {
            let owner = match owner {
                0 => "root (a run with sudo?)".to_owned(),
                uid => format!("the user with uid {uid}"),
            };
            format!(
                "it belongs to {owner}: `sudo chown \"$(id -un)\" {}` makes it this user's",
                shell_word(file)
            )
        }
        _ => "run as its owner, or give this user access".to_owned(),
    }
}

/// `path` as one word of a POSIX shell command, so that advice such as
/// `chmod 600 PATH` can be pasted as it is: single-quoted when it holds
/// anything but the characters no shell treats specially (a space, say, as
/// in `~/My Chats/neptun.db`), and never taken for an option.
///
/// A path that is not UTF-8 cannot be written in a message as it is, and
/// shown with U+FFFD in place of its odd bytes it would name another file.
/// So each run of such bytes is made by `printf` from octal escapes, which
/// sh, bash, zsh and fish all run, and the word still names the file.
#[cfg(unix)]
pub fn shell_word(path: &Path) -> String {
    use std::fmt::Write;
    use std::os::unix::ffi::OsStrExt;

    let bytes = path.as_os_str().as_bytes();
    let guard = if bytes.starts_with(b"-") { "./" } else { "" };
    if let Ok(text) = std::str::from_utf8(bytes) {
        return quoted(&format!("{guard}{text}"));
    }
    let mut word = guard.to_owned();
    let mut odd_bytes = Vec::new();
    let flush = |odd_bytes: &mut Vec<u8>, word: &mut String| {
        if !odd_bytes.is_empty() {
            // Never a newline, which `$(...)` would drop: these bytes are
            // all over 0x7f.
            word.push_str("\"$(printf '");
            for byte in odd_bytes.drain(..) {
                let _ = write!(word, "\\{byte:03o}");
            }
            word.push_str("')\"");
        }
    };
    for chunk in bytes.utf8_chunks() {
        if !chunk.valid().is_empty() {
            flush(&mut odd_bytes, &mut word);
            word.push_str(&quoted(chunk.valid()));
        }
        odd_bytes.extend_from_slice(chunk.invalid());
    }
    flush(&mut odd_bytes, &mut word);
    word
}

/// `text` as a shell word: as it is if no shell treats any of it specially,
/// single-quoted if not.
#[cfg(unix)]
fn quoted(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.to_owned();
    }
    // Inside single quotes nothing is special but the quote itself, which
    // is closed, escaped and reopened.
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// `path` as one word of a command in cmd or PowerShell: double-quoted,
/// which neither allows in a file name.
#[cfg(not(unix))]
pub fn shell_word(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

/// Whether this process may access `path` in `mode` (`access(2)`, which
/// also knows about root, ACLs, read-only mounts and immutable files).
#[cfg(unix)]
fn access(path: &Path, mode: libc::c_int) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;

    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    if unsafe { libc::access(path.as_ptr(), mode) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `cannot {what}`, worded for the cause, with `hint` for a plain lack of
/// permission.
#[cfg(unix)]
fn explain(what: &str, hint: &str, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES) => format!("permission denied: this user cannot {what}; {hint}"),
        Some(libc::EROFS) => format!("cannot {what}: the file system is read-only"),
        _ => format!("cannot {what}: {e}"),
    }
}

#[cfg(all(test, not(unix)))]
mod tests {
    use super::*;

    #[test]
    fn a_file_marked_read_only_is_named_with_how_to_clear_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("restored.db");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(problem(&file), None);
        let set_read_only = |on| {
            let mut permissions = std::fs::metadata(&file).unwrap().permissions();
            permissions.set_readonly(on);
            std::fs::set_permissions(&file, permissions).unwrap();
        };
        set_read_only(true);
        let why = problem(&file);
        set_read_only(false);
        let why = why.expect("a read-only file is named");
        assert!(why.starts_with("the file is marked read-only; clear its Read-only attribute"));
        assert!(
            why.contains(&format!("attrib -r \"{}\"", file.display())),
            "{why}"
        );
    }
}

#[cfg(all(test, unix))]
mod unix_tests {
    use super::*;

    /// Each path, put in a command as `shell_word` writes it, reaches the
    /// command as that one path.
    #[test]
    fn a_path_in_advice_reaches_the_command_as_one_word() {
        for path in [
            "neptun.db",
            "/home/ana/My Chats/neptun.db",
            "it's.db",
            "$HOME/`id`/*.db",
            "~/neptun.db",
            "a\\b\"c;d&e|f.db",
            "-rf.db",
        ] {
            let word = shell_word(Path::new(path));
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {word}")])
                .output()
                .unwrap();
            assert!(out.status.success(), "{word}");
            let expected = if path.starts_with('-') {
                format!("./{path}")
            } else {
                path.to_owned()
            };
            assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{word}");
        }
        assert_eq!(
            shell_word(Path::new("/var/lib/neptun.db")),
            "/var/lib/neptun.db"
        );
    }

    /// A path that is not UTF-8 (a Latin-1 name from an old system, say)
    /// reaches the command byte for byte, in sh (dash here, which has no
    /// `$'...'`) and in bash alike. Shown with U+FFFD, it named another file.
    #[test]
    fn a_path_that_is_not_utf_8_reaches_the_command_byte_for_byte() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;

        for path in [
            &b"/home/ana/caf\xe9.db"[..],
            b"/tmp/\xff\xfe\xfd/it's here/\x80.db",
            b"\xc3(\xe2\x28\xa1 \xf0\x90\x28\xbc.db",
            b"-\xff.db",
            b"\xe9",
        ] {
            let word = shell_word(Path::new(OsStr::from_bytes(path)));
            assert!(word.is_ascii(), "{word}");
            for shell in ["sh", "bash"] {
                let out = std::process::Command::new(shell)
                    .args(["-c", &format!("printf %s {word}")])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{shell}: {word}");
                let expected = if path.starts_with(b"-") {
                    [b"./", path].concat()
                } else {
                    path.to_vec()
                };
                assert_eq!(out.stdout, expected, "{shell}: {word}");
            }
        }
        assert_eq!(
            shell_word(Path::new(OsStr::from_bytes(b"/srv/caf\xe9 \xe0.db"))),
            r#"/srv/caf"$(printf '\351')"' '"$(printf '\340')".db"#
        );
    }
}
