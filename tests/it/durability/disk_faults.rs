//! Disk faults injected under the running server: a full disk and a disk
//! turned read-only. Linux only: the faults are made with `prlimit` and
//! the ioctl behind `chattr`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

fn set_file_size_limit(pid: u32, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads `limit` and writes nothing (null old-limit pointer).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn a_full_disk_answers_a_json_error_deletes_nothing_and_recovers() {
    let setup = FaultSetup::start();
    let (server, token) = (&setup.server, &setup.token);

    // No file of the server's may grow past 4 KiB from now on. SQLite
    // reports that as a plain I/O error; it is a full disk all the same
    // (a disk quota is reported alike), and the log says which.
    set_file_size_limit(server.pid(), 4096);
    let path = format!("/api/users/alice/chats/{}", setup.chat.chat);
    for _ in 0..3 {
        let r = server.delete(&path, token);
        assert_eq!(
            r.assert_error(503, "Service Unavailable"),
            "The server's disk is full; retry once space is freed"
        );
        assert_eq!(r.header("Retry-After"), Some("1"));
    }
    // A delete needs room, which is not what someone who deletes chats to
    // make room expects: the log says so.
    server.log_with(&[
        "ERROR storage full, answering 503: disk I/O error: File too large; a delete \
         needs free space about the size of the chat for a moment (its content is \
         overwritten before its space is given back): free some, or delete smaller chats first",
    ]);
    assert_fully_present(&server.sql(), &setup.chat);

    set_file_size_limit(server.pid(), libc::RLIM_INFINITY);
    setup.assert_recovered();
}

/// Upkeep that cannot copy the WAL into a database file held to its size
/// (by a file-size limit here; a disk quota does the same) says so, with
/// the cause, and works again once the limit is lifted.
#[test]
fn upkeep_held_back_by_a_file_size_limit_says_why_and_recovers() {
    let setup = FaultSetup::start();
    let server = &setup.server;
    let size = std::fs::metadata(&server.db_path).unwrap().len();
    set_file_size_limit(server.pid(), size);
    // Another process's commit, which only grows the WAL; the server's
    // upkeep finds it there and would grow the file to copy it in.
    let sql = server.sql();
    sql.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    sql.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO messages (chat_id, actor, message)
         SELECT {}, 'user', printf('%.200c', 'x') FROM n",
        setup.other.chat
    ))
    .unwrap();
    server.log_with(&[
        "database upkeep failed (will retry): storage full: disk I/O error: File too large",
    ]);
    set_file_size_limit(server.pid(), libc::RLIM_INFINITY);
    server.log_with(&["database upkeep works again"]);
    assert_consistent(&sql);
    setup.assert_recovered();
}

/// A server with two of alice's chats, ready for a fault to be injected.
struct FaultSetup {
    server: TestServer,
    token: String,
    /// The chat the test tries to delete.
    chat: SeededChat,
    /// One that must stay.
    other: SeededChat,
}

impl FaultSetup {
    fn start() -> FaultSetup {
        let (server, db, token) = start_with_alice_and_bob(&[]);
        let chat = seed_chat(&db, "alice", "bob");
        let other = seed_chat(&db, "alice", "bob");
        drop(db);
        // Let the server checkpoint what the test wrote, so the WAL starts empty.
        std::thread::sleep(Duration::from_millis(300));
        FaultSetup {
            server,
            token,
            chat,
            other,
        }
    }

    /// Once the fault is gone: the delete is answered `true`, the chat is
    /// gone whole, the other one is all there, and the file is consistent.
    fn assert_recovered(&self) {
        let path = format!("/api/users/alice/chats/{}", self.chat.chat);
        self.server.delete(&path, &self.token).assert_true();
        let sql = self.server.sql();
        assert_fully_gone(&sql, &self.chat);
        assert_fully_present(&sql, &self.other);
        assert_consistent(&sql);
    }
}

/// A disk that turns read-only under the running server, as ext4 does
/// after an error (`errors=remount-ro`). Simulated by making the database
/// file and its WAL immutable (`chattr +i`): writes through the server's
/// open descriptors then fail, as on a read-only mount. The shared-memory
/// index stays writable: an immutable mapped file would kill the process
/// on its next write, which a remount does not do.
///
/// Needs root and a file system with the flag (ext4, xfs, btrfs; as on
/// CI); elsewhere it says so and passes.
#[test]
fn a_disk_turned_read_only_answers_a_json_500_deletes_nothing_and_recovers() {
    let setup = FaultSetup::start();
    let (server, token) = (&setup.server, &setup.token);

    let files = &database_files(&server.db_path)[..2];
    let Some(read_only) = Immutable::make(files) else {
        eprintln!("skipped: cannot make files immutable here (needs root and ext4 or the like)");
        return;
    };
    let path = format!("/api/users/alice/chats/{}", setup.chat.chat);
    for _ in 0..3 {
        server
            .delete(&path, token)
            .assert_error(500, "Internal Server Error");
    }
    // Still serving: reads work, and so does a request that writes nothing.
    server
        .delete(&path, &"0".repeat(64))
        .assert_error(401, "Unauthorized");
    assert_fully_present(&server.sql(), &setup.chat);

    drop(read_only);
    setup.assert_recovered();
}

/// Files made immutable (`chattr +i`) until dropped.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// `None`, with nothing changed, if a flag could not be set.
    fn make(files: &[PathBuf]) -> Option<Immutable> {
        let mut made = Immutable(vec![]);
        for file in files {
            set_immutable(file, true).then_some(())?;
            made.0.push(file.clone());
        }
        Some(made)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for file in &self.0 {
            // Or the temporary directory could not be removed. Not a panic
            // while a failed assertion unwinds: that would abort the tests.
            let cleared = set_immutable(file, false);
            if !cleared && std::thread::panicking() {
                eprintln!("{} stays immutable", file.display());
            } else {
                assert!(cleared, "{} stays immutable", file.display());
            }
        }
    }
}

/// Sets or clears a file's immutable flag; whether that worked.
fn set_immutable(file: &Path, on: bool) -> bool {
    use std::os::fd::AsRawFd;
    // From linux/fs.h; the libc crate has the ioctls but not the flag.
    const FS_IMMUTABLE_FL: libc::c_int = 0x10;
    let Ok(file) = std::fs::File::open(file) else {
        return false;
    };
    let mut flags: libc::c_int = 0;
    // SAFETY: both ioctls take a pointer to an int, which outlives the calls.
    unsafe {
        if libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0 {
            return false;
        }
        flags = if on {
            flags | FS_IMMUTABLE_FL
        } else {
            flags & !FS_IMMUTABLE_FL
        };
        libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) == 0
    }
}
