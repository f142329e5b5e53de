//! The binary's command line, run for real: errors and exit codes, the demo,
//! the stdout contract, and graceful shutdown.

use std::path::{MAIN_SEPARATOR, Path};
use std::time::Duration;

use crate::support::*;
use neptun_local::db;

#[test]
fn bad_input_gives_a_clear_error_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    assert!(
        run_cli(&db, &["user", "add", "alice"], None)
            .status
            .success()
    );

    let cases: &[(&[&str], i32, &str)] = &[
        (&["user", "add", "alice"], 1, "already exists"),
        (&["user", "add", ""], 1, "invalid user id"),
        (&["user", "add", ".."], 1, "invalid user id"),
        (
            &["user", "add", &"x".repeat(257)],
            1,
            "invalid user id: it is longer than 256 characters",
        ),
        (
            &["user", "add", "bob\u{1b}[2J"],
            1,
            "invalid user id: it contains control characters",
        ),
        (
            &["user", "add", " alice"],
            1,
            "begins or ends with white space",
        ),
        (
            &["user", "add", "bob\u{a0}"],
            1,
            "begins or ends with white space",
        ),
        // A blank name or model would show as nothing in a listing and a
        // sidebar; a user with no name is one added without --name.
        (
            &["user", "add", "bob", "--name", ""],
            2,
            "it is empty; leave out --name for a user with no name",
        ),
        (
            &["user", "add", "bob", "--name", " \t"],
            2,
            "it is blank; leave out --name for a user with no name",
        ),
        (
            &["chat", "add", "alice", ""],
            2,
            "it is empty; give the chat a title",
        ),
        (
            &["chat", "add", "alice", "x", "--model", ""],
            2,
            "leave out --model for the default, qwen2.5-coder:7b",
        ),
        (&["session", "new", "ghost"], 1, "no user with id \"ghost\""),
        (&["chat", "list", "ghost"], 1, "no user with id \"ghost\""),
        (
            &["chat", "add", "ghost", "x"],
            1,
            "no user with id \"ghost\"",
        ),
        (
            &["chat", "add", "alice", "x", "--messages", "100001"],
            2,
            "not in 0..=100000",
        ),
        (&["session", "new", "alice", "--ttl", "7"], 2, "no unit"),
        (
            &["session", "new", "alice", "--ttl", "1.5h"],
            2,
            "must be whole",
        ),
        (
            &["session", "new", "alice", "--ttl", "0s"],
            2,
            "greater than zero",
        ),
        (
            &["session", "new", "alice", "--ttl", "500ms"],
            2,
            "sessions expire on a whole second",
        ),
        (
            &["session", "revoke", "--user", "ghost"],
            1,
            "no user with id \"ghost\"",
        ),
        (&["session", "revoke"], 2, "required"),
        (
            &["session", "revoke", "x", "--user", "alice"],
            2,
            "cannot be used with",
        ),
        (
            &["session", "revoke", "not-a-token"],
            1,
            "not a neptun-local session token",
        ),
        (&["--workers", "0"], 2, "workers"),
        // SQLite's busy timeout is a C int of milliseconds (rusqlite panicked).
        (&["--busy-timeout", "25d"], 2, "at most 1h"),
        (&["--busy-timeout", "61m"], 2, "at most 1h"),
        (
            &["--addr", "127.0.0.1"],
            1,
            "--addr takes HOST:PORT, for example 127.0.0.1:7150",
        ),
        (&["--addr", ":7150"], 1, "there is no host before the port"),
        // As the server prints it at start ("listening on http://...").
        (
            &["--addr", "http://127.0.0.1:7150"],
            1,
            "cannot listen on http://127.0.0.1:7150: that is a URL, not an address; --addr \
             takes HOST:PORT, for example 127.0.0.1:7150",
        ),
        (
            &["--addr", "127.0.0.1:0", "user", "add", "x"],
            2,
            "is a serve option",
        ),
        (
            &["--addr", "not an address", "--workers", "1"],
            1,
            "cannot listen on not an address",
        ),
    ];
    for (args, code, message) in cases {
        let out = run_cli(&db, args, None);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert!(
            stderr_of(&out).contains(message),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    }
}

/// On a full disk, opening the database fails: SQLite cannot give its
/// shared-memory index (the `-shm` file, which commands remove when they
/// end) the 32 KiB it needs. That was "disk I/O error", from `doctor` too,
/// which a user runs to find out what is wrong. Here no file may grow past
/// 16 KiB; a full disk (ENOSPC) and a quota are reported the same way.
#[cfg(unix)]
#[test]
fn a_database_that_cannot_be_opened_for_want_of_space_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("neptun.db");
    let out = run_cli(&db, &["user", "add", "alice"], None);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(!dir.path().join("neptun.db-shm").exists());
    let full = format!(
        "neptun-local: error: {}: storage full: disk I/O error: File too large; free some \
         disk space and run this again (a delete needs room too, for a moment: about the size \
         of what it deletes)\n",
        db.display()
    );
    for args in [
        &["doctor"][..],
        &["user", "list"],
        &["user", "add", "bob"],
        &["--addr", "127.0.0.1:0"],
    ] {
        let out = run_cli_with_file_size_limit(&db, args, 16 * 1024);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).ends_with(&full),
            "{args:?}: {}",
            stderr_of(&out)
        );
    }
    let out = run_cli(&db, &["doctor"], None);
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// A FIFO or a device named as the database, or as the backup to restore
/// from, is refused as what it is. A FIFO blocked the commands that only
/// read, and `restore`, until something wrote to it: they opened it to
/// read an SQLite header.
#[cfg(unix)]
#[test]
fn a_fifo_or_a_device_is_refused_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let db = dir.path().join("t.db");
    assert!(
        run_cli(&db, &["user", "add", "alice"], None)
            .status
            .success()
    );

    for args in [
        &["doctor"][..],
        &["user", "list"],
        &["chat", "list", "alice"],
        &["session", "list", "alice"],
        &["backup", "b.db"],
        &["user", "add", "bob"],
        &["--addr", "127.0.0.1:0"],
    ] {
        let out = run_cli_within_deadline(&fifo, args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{}: that is not a regular file (a device, a FIFO or a socket)",
                fifo.display()
            )),
            "{args:?}: {err}"
        );
    }
    for from in [fifo.as_path(), Path::new("/dev/null")] {
        let out = run_cli_within_deadline(&db, &["restore", from.to_str().unwrap()]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{from:?}: {err}");
        assert!(
            err.contains(&format!(
                "{}: that is not a regular file (a device, a FIFO or a socket); name the \
                 backup file",
                from.display()
            )),
            "{from:?}: {err}"
        );
    }
    assert!(!dir.path().join("b.db").exists());
}

#[test]
fn an_unusable_database_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_db = dir.path().join("garbage.db");
    std::fs::write(&not_a_db, vec![b'x'; 4096]).unwrap();
    let missing_dir = dir.path().join("no/such/dir/t.db");
    for path in [dir.path().to_path_buf(), not_a_db, missing_dir.clone()] {
        let out = run_cli(&path, &["user", "add", "alice"], None);
        assert_eq!(out.status.code(), Some(1), "{path:?}");
        let err = stderr_of(&out);
        assert!(err.contains(&path.display().to_string()), "{err}");
        // Serving refuses to start, too, rather than answer 500s.
        let out = run_cli(&path, &["--addr", "127.0.0.1:0"], None);
        assert_eq!(out.status.code(), Some(1), "{path:?}");
    }
    let out = run_cli(&missing_dir, &["--addr", "127.0.0.1:0"], None);
    let err = stderr_of(&out);
    let parent = missing_dir.parent().unwrap().display().to_string();
    assert!(
        err.contains(&format!("the directory {parent} does not exist")),
        "{err}"
    );
    // Another application's SQLite file is named as such, and left alone.
    let foreign = dir.path().join("other-app.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE users (id TEXT)")
        .unwrap();
    for args in [
        &["--addr", "127.0.0.1:0"][..],
        &["doctor"],
        &["user", "add", "a"],
    ] {
        let out = run_cli(&foreign, args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr_of(&out);
        assert!(err.contains("is not a neptun-local one"), "{args:?}: {err}");
        assert!(!err.contains("CREATE TABLE"), "schema.sql quoted: {err}");
    }
    // SQLite says only "unable to open database file" of a file it cannot
    // create, here for a name longer than a file system allows (255 bytes
    // on Linux's and macOS's; Windows words the OS error otherwise).
    #[cfg(unix)]
    {
        let too_long = dir.path().join(format!("{}.db", "a".repeat(300)));
        let out = run_cli(&too_long, &["user", "add", "a"], None);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "{}: cannot create the file: {}",
                too_long.display(),
                os_error_text(libc::ENAMETOOLONG)
            )),
            "{err}"
        );
    }
    // SQLite alone says only "unable to open database file" of a directory.
    for args in [&["--addr", "127.0.0.1:0"][..], &["doctor"]] {
        let out = run_cli(dir.path(), args, None);
        let err = stderr_of(&out);
        assert!(err.contains("that is a directory"), "{args:?}: {err}");
    }
    // A name that ends in a separator: SQLite would take it for the file
    // without it, created readable by every user, and a server's watch of
    // the name would then fail. Nothing is created.
    let with_separator = format!("{}{}", dir.path().join("new.db").display(), MAIN_SEPARATOR);
    for args in [
        &["--addr", "127.0.0.1:0"][..],
        &["user", "add", "a"],
        &["doctor"],
    ] {
        let out = run_cli(Path::new(&with_separator), args, None);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{with_separator}: a name that ends in {MAIN_SEPARATOR} is a directory's; \
                 --db takes the database file, for example {}",
                dir.path().join("new.db").display()
            )),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.path().join("new.db").exists());
    // Nor says more than "disk I/O error" of a device.
    #[cfg(unix)]
    for args in [&["--addr", "127.0.0.1:0"][..], &["doctor"]] {
        let out = run_cli(std::path::Path::new("/dev/null"), args, None);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("/dev/null: that is not a regular file"),
            "{args:?}: {err}"
        );
    }
    // A ~ that nothing expanded, as in a unit's environment file, is
    // pointed out.
    for args in [&["--addr", "127.0.0.1:0"][..], &["doctor"]] {
        let out = neptun_local()
            .current_dir(dir.path())
            .env("NEPTUN_DB", "~/neptun.db")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr_of(&out);
        assert!(
            err.contains("~/neptun.db: ") && err.contains("nothing expanded the ~"),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.path().join("~").exists());
}

/// SQLite reports a file this user may not write, or a directory it may not
/// create the `-wal` file in, as "attempt to write a readonly database",
/// naming neither. The message says which permission is missing, and where.
#[cfg(unix)]
#[test]
fn a_missing_permission_is_named_with_the_file_or_directory() {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    let set_mode = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Root may do anything, so as root the commands run as nobody.
    let as_root = unsafe { libc::geteuid() } == 0;
    let command = |db: &Path, args: &[&str]| {
        let mut command = neptun_local();
        without_root(command.arg("--db").arg(db).args(args));
        command
    };
    let run = |db: &Path, args: &[&str]| {
        let out = command(db, args).output().unwrap();
        (out.status.code(), stderr_of(&out))
    };
    // doctor reads what it may, and reports what it may not write.
    let doctor_finds = |db: &Path, problem: &str| {
        let doctor = command(db, &["doctor"]).output().unwrap();
        let report = String::from_utf8_lossy(&doctor.stdout);
        assert_eq!(doctor.status.code(), Some(1), "{report}");
        assert!(
            report.contains(&format!("PROBLEM      {problem}")),
            "{report}"
        );
        let opened = "opened       read-only, as this user cannot write it";
        assert!(report.contains(opened), "{report}");
        assert!(report.contains("integrity    ok"), "{report}");
    };
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);

    // A write-protected file in a directory where SQLite cannot make its
    // -wal and -shm files either. (Run by a user other than root, the test
    // owns its directories, so this one is closed by its mode.)
    let cannot_write = "permission denied: this user cannot read and write the file";
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    let read_only = closed.join("read-only.db");
    assert!(
        run_cli(&read_only, &["user", "add", "alice"], None)
            .status
            .success()
    );
    set_mode(&read_only, 0o444);
    set_mode(&closed, 0o555);
    doctor_finds(&read_only, cannot_write);
    // Open again, so that the temporary directory can be removed.
    set_mode(&closed, 0o755);

    // A write-protected file where SQLite may make its -wal and -shm files
    // (a 0444 backup restored with cp): SQLite opens it for reading only,
    // without a word. The listings work; whatever would write is refused,
    // and the server does not start to answer 500 to every delete.
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    set_mode(&open_dir, 0o777);
    let restored = open_dir.join("restored.db");
    alice_with_a_chat(&restored, "Kept");
    set_mode(&restored, 0o444);
    let refused_to_serve = |db: &Path, why: &str| {
        let mut server = command(db, &["serve", "--addr", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_with_deadline(&mut server);
        let output = server.wait_with_output().unwrap();
        assert_eq!(status.code(), Some(1));
        assert!(output.stdout.is_empty(), "it listened");
        assert!(stderr_of(&output).contains(why), "{}", stderr_of(&output));
    };
    refused_to_serve(&restored, cannot_write);
    for args in [
        &["chat", "add", "alice", "New"][..],
        &["session", "new", "alice"],
    ] {
        let (code, err) = run(&restored, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(cannot_write), "{args:?}: {err}");
    }
    let (code, err) = run(&restored, &["chat", "list", "alice"]);
    assert_eq!(code, Some(0), "{err}");
    doctor_finds(&restored, cannot_write);
    let (code, err) = run(
        &open_dir.join("from-restored.db"),
        &["restore", restored.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{err}");
    // Read through a read-only connection, the file got a -wal and a -shm
    // of this user's, as write-protected as it is: in the way of the next
    // writer, once the file itself is made writable again.
    for suffix in ["-wal", "-shm"] {
        let side = db::side_file(&restored, suffix);
        assert!(!side.exists(), "{} was left", side.display());
    }

    // A -wal file left by another user (run once with sudo, say), in a
    // directory this user may write to: SQLite opens the WAL for reading
    // only, without a word, and only a write fails.
    let wal_left = open_dir.join("wal-left.db");
    assert!(
        run_cli(&wal_left, &["user", "add", "alice"], None)
            .status
            .success()
    );
    set_mode(&wal_left, 0o666);
    // Not empty: SQLite gives an empty one that this user owns (as a test
    // not run as root does) the database's mode, which would repair it.
    let wal = open_dir.join("wal-left.db-wal");
    std::fs::write(&wal, b"no frames").unwrap();
    set_mode(&wal, 0o444);
    let cannot_use_wal = format!(
        "permission denied: this user cannot read and write {}, beside the database",
        wal.display()
    );
    doctor_finds(&wal_left, &cannot_use_wal);
    refused_to_serve(&wal_left, &cannot_use_wal);
    let (code, err) = run(&wal_left, &["session", "new", "alice"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&cannot_use_wal), "{err}");
    // Run as nobody, the file is another user's: root's, made by this test.
    let advice = if as_root {
        format!(
            "; it belongs to root (a run with sudo?): `sudo chown \"$(id -un)\" {}` makes \
             it this user's",
            wal.display()
        )
    } else {
        "; run as its owner, or give this user access".to_owned()
    };
    assert!(err.contains(&format!("{cannot_use_wal}{advice}")), "{err}");

    // A backup this user may not read: SQLite said only "unable to open
    // database file".
    let secret = open_dir.join("secret.db");
    let out = run_cli(&restored, &["backup", secret.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr_of(&out));
    set_mode(&secret, 0o000);
    let (code, err) = run(
        &open_dir.join("new.db"),
        &["restore", secret.to_str().unwrap()],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{} cannot be restored from: permission denied: this user cannot read the file",
            secret.display()
        )),
        "{err}"
    );
    assert!(!open_dir.join("new.db").exists());

    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let inside = locked.join("t.db");
    assert!(
        run_cli(&inside, &["user", "add", "alice"], None)
            .status
            .success()
    );
    set_mode(&inside, 0o666);
    set_mode(&locked, 0o555);
    let cannot_create = format!(
        "permission denied: this user cannot create files in {}",
        locked.display()
    );
    doctor_finds(&inside, &cannot_create);
    for (db, args) in [
        (&inside, &["user", "add", "bob"][..]),
        (&locked.join("new.db"), &["user", "add", "bob"]),
    ] {
        let (code, err) = run(db, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(&cannot_create), "{args:?}: {err}");
    }
    // The default, a name in the working directory, which may not be where
    // the user thinks (systemd starts a service in /): the directory is
    // named in full, not as ".".
    // Port 0: a server the developer runs on the default port must not
    // fail this test.
    let out = command(Path::new("neptun.db"), &["--demo", "--addr", "127.0.0.1:0"])
        .current_dir(&locked)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains(&format!("{cannot_create}, where")),
        "{}",
        stderr_of(&out)
    );
    set_mode(&locked, 0o755);
    assert!(!locked.join("new.db").exists());
    assert!(!locked.join("neptun.db").exists());
}

/// SQLite resolves a `--db` that is a symbolic link, and keeps its `-wal`
/// and `-shm` files beside the file it points to. The log and `doctor` say
/// where that is, and `doctor` finds those files (it said "absent"), and
/// only those that are there.
#[cfg(unix)]
#[test]
fn a_database_reached_through_a_link_is_reported_where_its_files_are() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let real = dir.path().join("data").join("real.db");
    assert!(
        run_cli(&real, &["user", "add", "alice"], None)
            .status
            .success()
    );
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink("data/real.db", &link).unwrap();
    let real = std::fs::canonicalize(&real).unwrap();
    let server = TestServer::start_in(dir, link.clone(), &[]);
    let token = login(&server.db(), "alice");
    server
        .delete("/api/users/alice/chats/1", &token)
        .assert_error(404, "Not Found");
    let said = format!("a link to {}", real.display());
    server.log_with(&[&said]);

    let doctor = run_cli(&link, &["doctor"], None);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{report}{}", stderr_of(&doctor));
    assert!(report.contains(&said), "{report}");
    let files = report.lines().find(|l| l.starts_with("files")).unwrap();
    assert!(!files.contains("absent"), "{files}");
    assert!(real.with_file_name("real.db-wal").exists());

    // With the server stopped there are none, and `doctor`, which makes
    // them as it opens the file, reports the files as it found them (it
    // said "wal 0 bytes, shm 32768 bytes").
    let stopped = server.stop();
    assert!(stopped.status.success());
    let doctor = run_cli(&link, &["doctor"], None);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{report}{}", stderr_of(&doctor));
    let files = report.lines().find(|l| l.starts_with("files")).unwrap();
    assert!(files.ends_with(" bytes, wal absent, shm absent"), "{files}");
}

/// A link made before its database: the database is created where it
/// leads, for its owner only (SQLite made it readable by every user), and
/// a missing directory there is named.
#[cfg(unix)]
#[test]
fn a_link_to_a_database_not_made_yet_gets_one_for_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink("real.db", &link).unwrap();
    let added = run_cli(&link, &["user", "add", "alice"], None);
    assert!(added.status.success(), "{}", stderr_of(&added));
    let real = dir.path().join("real.db");
    let mode = std::fs::metadata(&real).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let nowhere = dir.path().join("nowhere.db");
    std::os::unix::fs::symlink("missing/real.db", &nowhere).unwrap();
    let refused = run_cli(&nowhere, &["user", "add", "alice"], None);
    assert_eq!(refused.status.code(), Some(1));
    let said = format!(
        "the directory {} does not exist",
        dir.path().join("missing").display()
    );
    assert!(
        stderr_of(&refused).contains(&said),
        "{}",
        stderr_of(&refused)
    );
}

/// A database holds every chat, so a new one (and the `-wal` and `-shm`
/// files SQLite makes beside it) is for its owner only; SQLite alone would
/// make it readable by every user of the machine. `doctor` flags one that
/// is not.
#[cfg(unix)]
#[test]
fn a_new_database_and_its_wal_are_for_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        format!("{:04o}", mode & 0o777)
    };
    let (server, db, token) = start_with_alice_and_bob(&[]);
    let chat = seed_chat(&db, "alice", "bob");
    server
        .delete(&format!("/api/users/alice/chats/{}", chat.chat), &token)
        .assert_true();
    for file in database_files(&server.db_path) {
        assert_eq!(mode(&file), "0600", "{}", file.display());
    }
    // A space in the name, as in a path under "My Documents", so that the
    // advice below has to quote it.
    let added = server.dir.path().join("added chats.db");
    assert!(
        run_cli(&added, &["user", "add", "carol"], None)
            .status
            .success()
    );
    assert_eq!(mode(&added), "0600");

    let doctor = |path| {
        let out = run_cli(path, &["doctor"], None);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = doctor(&added);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("mode         0600"), "{text}");
    // An execute bit opens nothing.
    std::fs::set_permissions(&added, std::fs::Permissions::from_mode(0o611)).unwrap();
    assert_eq!(doctor(&added).0, Some(0));
    std::fs::set_permissions(&added, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, text) = doctor(&added);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(
            "PROBLEM      other users of this machine can open the database file (mode 0644)"
        ),
        "{text}"
    );
    // The advice works as it is printed, pasted into a shell.
    let follow_advice = |text: &str| follow_chmod_advice(text, server.dir.path());
    assert_eq!(follow_advice(&text), 1);
    assert_eq!(mode(&added), "0600");
    assert_eq!(doctor(&added).0, Some(0));

    // A server started on a database open to others has its -wal and -shm
    // open to them too, and they keep their mode when the database's is
    // set right. Advice comes for the database first, then for them. (An
    // empty -wal, SQLite gives the database's mode when it opens it.)
    let files = database_files(&server.db_path);
    for file in &files {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (code, text) = doctor(&server.db_path);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(follow_advice(&text), 1, "{text}");
    let (code, text) = doctor(&server.db_path);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "PROBLEM      other users of this machine can open {}, beside the database \
             (mode 0644)",
            files[2].display()
        )),
        "{text}"
    );
    assert!(follow_advice(&text) >= 1, "{text}");
    for file in &files {
        assert_eq!(mode(file), "0600", "{}", file.display());
    }
    assert_eq!(doctor(&server.db_path).0, Some(0));
}

/// Runs every `chmod` that `text` advises (written between backquotes),
/// pasted as it is into `sh` in `dir`; returns how many there were, at
/// least one.
#[cfg(unix)]
fn follow_chmod_advice(text: &str, dir: &Path) -> usize {
    let advice: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_once("`chmod ")?.1.split_once('`'))
        .map(|(args, _)| args)
        .collect();
    assert!(!advice.is_empty(), "no chmod advice: {text}");
    for args in &advice {
        let pasted = std::process::Command::new("sh")
            .args(["-c", &format!("chmod {args}")])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(pasted.success(), "chmod {args}");
    }
    advice.len()
}

/// A database file that others can open keeps its mode: one made with
/// `touch` (which the server fills with the schema), copied with `cp`, or
/// written by another tool. A server started on it serves it, and warns at
/// every start with the `chmod` that keeps it to its owner, the file named
/// in full for a log read elsewhere (systemd's journal). Pasted from
/// anywhere, the advice works, and the next start says nothing of it.
/// Before, only `doctor` said so.
#[cfg(unix)]
#[test]
fn a_server_on_a_database_others_can_open_warns_with_the_chmod_that_fixes_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A space, so that the advice has to quote the name.
    let db_path = dir.path().join("my chats.db");
    std::fs::File::create(&db_path).unwrap();
    std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = TestServer::start_in(dir, db_path.clone(), &[]);
    let warning = "WARN  other users of this machine can open the database file (mode 0644)";
    let log = server.log_with(&[warning]);
    assert_eq!(
        follow_chmod_advice(log_line(&log, warning), Path::new("/")),
        1
    );
    let mode = std::fs::metadata(&db_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let server = server.restart(&[]);
    let log = server.stderr();
    assert!(log.contains("INFO  database "), "{log}");
    assert!(!log.contains("other users"), "{log}");
    assert_consistent(&server.sql());
}

/// A second name (a hard link) for the database file. SQLite finds the
/// `-wal` by the name a process opened, so one that opens the file by the
/// other name misses the newest commits and can damage it; and the second
/// name looks like a backup and is not one. `doctor` reports it, with a
/// command that lists the names; a server warns at start-up. On Windows
/// too, where std cannot count a file's names.
#[test]
fn a_second_name_for_the_database_file_is_a_problem_and_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("neptun.db");
    let added = run_cli(&db_path, &["user", "add", "alice"], None);
    assert!(added.status.success(), "{}", stderr_of(&added));
    let doctor = || run_cli(&db_path, &["doctor"], None);
    assert_eq!(doctor().status.code(), Some(0));

    let second = dir.path().join("copy.db");
    std::fs::hard_link(&db_path, &second).unwrap();
    let out = doctor();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("PROBLEM      the database file has 2 names (hard links)"),
        "{text}"
    );
    // The advice's command, run over the test's directory rather than /,
    // lists both names.
    #[cfg(unix)]
    {
        let (_, advice) = text.split_once("`find / ").expect(&text);
        let (args, _) = advice.split_once('`').unwrap();
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("find . {args}")])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let mut names: Vec<&str> = std::str::from_utf8(&found.stdout)
            .unwrap()
            .lines()
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["./copy.db", "./neptun.db"], "find . {args}");
    }
    // Wine has no fsutil to run.
    #[cfg(windows)]
    assert!(
        text.contains(&format!("`fsutil hardlink list \"{}\"`", db_path.display())),
        "{text}"
    );

    let server = TestServer::start_in(dir, db_path.clone(), &[]);
    server.log_with(&["WARN  the database file has 2 names (hard links)"]);
    #[cfg(unix)]
    let _dir = {
        let stopped = server.stop();
        assert!(stopped.status.success());
        stopped.dir
    };
    // Windows deletes no name of a file that a process has open, and the
    // server is not signalled there: it is ended.
    #[cfg(windows)]
    let _dir = server.kill();
    std::fs::remove_file(&second).unwrap();
    assert_eq!(doctor().status.code(), Some(0));
}

/// A command leaves no `-wal` or `-shm` file behind: SQLite deletes them
/// when the last connection closes, and the process waits for that. Before,
/// 14 `doctor` runs in 100 exited while r2d2's thread was still closing the
/// connections, and left both files. Four files at once, so that the runs
/// compete for the CPU, which widens that window.
#[test]
fn commands_leave_no_wal_or_shm_file_behind() {
    const RUNS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let leftovers: usize = std::thread::scope(|scope| {
        let runners: Vec<_> = (0..4)
            .map(|i| {
                let db = dir.path().join(format!("t{i}.db"));
                scope.spawn(move || {
                    assert!(
                        run_cli(&db, &["user", "add", "alice"], None)
                            .status
                            .success()
                    );
                    let [_, wal, shm] = database_files(&db);
                    let mut left = 0;
                    for _ in 0..RUNS {
                        assert!(run_cli(&db, &["doctor"], None).status.success());
                        if wal.exists() || shm.exists() {
                            left += 1;
                            let _ = std::fs::remove_file(&wal);
                            let _ = std::fs::remove_file(&shm);
                        }
                    }
                    left
                })
            })
            .collect();
        runners.into_iter().map(|r| r.join().unwrap()).sum()
    });
    assert_eq!(
        leftovers,
        0,
        "runs of doctor that left files, of {}",
        4 * RUNS
    );
}

/// Environment values as unit, compose and `.env` files write them: an
/// empty variable is unset (each was refused as the value "", naming only
/// the flag), a trailing comma in a list is nothing, and a switch takes
/// 0/1, no/yes, off/on (`NEPTUN_ALLOW_REMOTE=0` was refused as not true or
/// false).
#[cfg(unix)]
#[test]
fn environment_values_are_taken_as_unit_and_env_files_write_them() {
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let serve = |env: &[(&str, &str)], addr: &str| {
        let mut command = neptun_local();
        command
            .args(["--addr", addr, "--db"])
            .arg(dir.path().join("neptun.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        command
    };

    let lists = [
        ("NEPTUN_ALLOW_ORIGINS", "http://localhost:3000,"),
        ("NEPTUN_ALLOWED_HOSTS", ""),
        ("NEPTUN_ALLOW_REMOTE", ""),
        ("NEPTUN_WORKERS", ""),
        ("NEPTUN_BUSY_TIMEOUT", ""),
        ("NEPTUN_SYNCHRONOUS", ""),
    ];
    let (mut child, addr) = spawn_listening(serve(&lists, "127.0.0.1:0"));
    let preflight = request(
        addr,
        "OPTIONS",
        "/api/users/alice/chats/1",
        &[
            ("Origin", "http://localhost:3000"),
            ("Access-Control-Request-Method", "DELETE"),
        ],
    );
    assert_eq!(preflight.status, 204, "{preflight:?}");
    signal(child.id(), libc::SIGTERM);
    assert!(wait_with_deadline(&mut child).success());

    for off in ["0", "no", "off", ""] {
        let out = serve(&[("NEPTUN_ALLOW_REMOTE", off)], "0.0.0.0:0")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{off:?}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("is not a loopback address"),
            "{off:?}"
        );
    }
    let out = serve(&[("NEPTUN_ALLOW_REMOTE", "flase")], "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("is neither on"),
        "{}",
        stderr_of(&out)
    );
}

/// `user list` shows every user with its chats and unexpired sessions, so
/// that the ids for paths and `session new` need no SQL to find.
#[test]
fn user_list_shows_each_user_with_chats_and_active_sessions() {
    let (server, db, token) = start_with_alice_and_bob(&[]);
    let first = seed_chat(&db, "alice", "bob");
    seed_chat(&db, "alice", "bob");
    seed_chat(&db, "bob", "alice");
    expired_session(&db, "bob");
    let list = || {
        let out = run_cli(&server.db_path, &["user", "list"], None);
        assert!(out.status.success(), "{}", stderr_of(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .collect::<Vec<Vec<String>>>()
    };
    let row = |id: &str, chats: &str, sessions: &str| -> Vec<String> {
        [id, chats, sessions, "Test", "User"]
            .map(str::to_owned)
            .to_vec()
    };
    let rows = list();
    assert_eq!(rows[0], ["id", "chats", "active", "sessions", "name"]);
    assert_eq!(rows[1..], [row("alice", "2", "1"), row("bob", "1", "0")]);

    server
        .delete(&format!("/api/users/alice/chats/{}", first.chat), &token)
        .assert_true();
    assert_eq!(list()[1], row("alice", "1", "1"));
}

/// `user remove` takes a user with its sessions and its place on others'
/// share whitelists, and its chats only when asked to. The command
/// checkpoints and truncates the WAL itself, since no server may be
/// running: the removed rows are not left in it.
#[test]
fn user_remove_takes_the_user_and_its_chats_only_with_with_chats() {
    let (server, db, alice) = start_with_alice_and_bob(&[]);
    let alices = seed_chat(&db, "alice", "bob");
    let bobs = seed_chat(&db, "bob", "alice");
    let bob = login(&db, "bob");
    drop(db);
    let remove =
        |args: &[&str]| run_cli(&server.db_path, &[&["user", "remove"], args].concat(), None);

    let out = remove(&["bob"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("user \"bob\" has 1 chat(s); add --with-chats"),
        "{}",
        stderr_of(&out)
    );
    assert_fully_present(&server.sql(), &bobs);
    server
        .delete("/api/users/alice/chats/999999", &bob)
        .assert_error(404, "Not Found");

    let out = remove(&["bob", "--with-chats"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("removed user \"bob\", its 1 chat(s) and 1 session(s)"),
        "{}",
        stderr_of(&out)
    );
    let sql = server.sql();
    assert_fully_gone(&sql, &bobs);
    // Bob was on the whitelist of alice's share; alice's on bob's went with it.
    let whitelisted: Vec<String> = column(&sql, "SELECT user_id FROM chat_share_whitelist_entries");
    assert!(whitelisted.is_empty(), "{whitelisted:?}");
    let shares: Vec<i64> = column(&sql, "SELECT id FROM chat_shares");
    assert_eq!(shares, [alices.share]);
    server
        .delete(&format!("/api/users/bob/chats/{}", bobs.chat), &bob)
        .assert_error(401, "Unauthorized");
    let [_, wal, _] = database_files(&server.db_path);
    assert_eq!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
        0,
        "the WAL was left"
    );
    assert_consistent(&sql);

    let out = remove(&["bob"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("no user with id \"bob\""));
    server
        .delete(&format!("/api/users/alice/chats/{}", alices.chat), &alice)
        .assert_true();
}

/// `user remove` gives the space of what it removed back to the file
/// system, with no server running. Whenever the removed chats freed 4 MiB
/// or more, it left the file at its size and said "a reader held the WAL",
/// with no reader anywhere: its own delete made the vacuum give way. Past
/// 64 MiB, which takes a while, it says so first (it was silent for the 9 s
/// that 930 MB took).
#[test]
fn user_remove_gives_the_space_of_large_chats_back_with_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("neptun.db");
    alice_with_a_chat(&db_path, "large");
    add_messages_to_the_last_chat(&rusqlite::Connection::open(&db_path).unwrap(), 300_000, 200);
    let before = std::fs::metadata(&db_path).unwrap().len();

    let out = run_cli(&db_path, &["user", "remove", "alice", "--with-chats"], None);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    let lines: Vec<&str> = stderr.lines().collect();
    let [removed, giving] = lines[..] else {
        panic!("{stderr}")
    };
    assert_eq!(
        removed,
        "removed user \"alice\", its 1 chat(s) and 0 session(s)"
    );
    let mib: i64 = giving
        .strip_prefix("giving the ")
        .and_then(|rest| rest.strip_suffix(" MiB now free back to the file system"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!((64..128).contains(&mib), "{stderr}");
    let after = std::fs::metadata(&db_path).unwrap().len();
    assert!(
        after < 256 * 1024,
        "the file was {before} bytes before, {after} after"
    );
    assert_consistent(&rusqlite::Connection::open(&db_path).unwrap());
}

/// A delete needs free space for a moment, about the size of what it
/// deletes (`secure_delete` overwrites it, and the WAL holds the copies), so
/// on a full disk `user remove` fails, to the surprise of someone who
/// removes a user to make room: the error says so, and nothing is removed.
/// It gave SQLite's words alone. Here no file may grow past 64 KiB, room
/// for SQLite's `-shm` but not for the WAL of this delete.
#[cfg(unix)]
#[test]
fn a_user_remove_on_a_full_disk_says_a_delete_needs_room_and_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("neptun.db");
    alice_with_a_chat(&db_path, "large");
    add_messages_to_the_last_chat(&rusqlite::Connection::open(&db_path).unwrap(), 5_000, 200);

    let args = ["user", "remove", "alice", "--with-chats"];
    let out = run_cli_with_file_size_limit(&db_path, &args, 64 * 1024);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(
        stderr_of(&out),
        format!(
            "neptun-local: error: {}: storage full: disk I/O error: File too large; free some \
             disk space and run this again (a delete needs room too, for a moment: about the \
             size of what it deletes)\n",
            db_path.display()
        )
    );
    let conn = rusqlite::Connection::open(&db_path).unwrap();
    let messages: Vec<i64> = column(&conn, "SELECT count(*) FROM messages");
    assert_eq!(messages, [5_000]);
    assert_consistent(&conn);
}

/// `chat add` makes something to delete (its id alone on stdout, for
/// scripts), `chat list` shows the ids that paths take, and the API deletes
/// the chat with everything `chat add` put in it.
#[test]
fn chat_add_makes_a_chat_that_chat_list_shows_and_the_api_deletes() {
    let (server, db, token) = start_with_alice_and_bob(&[]);
    let bobs = seed_chat(&db, "bob", "alice");
    let cli = |args: &[&str]| {
        let out = run_cli(&server.db_path, args, None);
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let id = |stdout: String| -> i64 { stdout.strip_suffix('\n').unwrap().parse().unwrap() };
    let trip = id(cli(&[
        "chat",
        "add",
        "alice",
        "Trip to Lisbon",
        "--messages",
        "3",
    ]));
    let second = id(cli(&[
        "chat",
        "add",
        "alice",
        "Second",
        "--model",
        "llama3.1:8b",
    ]));
    assert!(second > trip && trip > bobs.chat);
    let actors: Vec<String> = column(
        &server.sql(),
        &format!("SELECT actor FROM messages WHERE chat_id = {trip} ORDER BY id"),
    );
    assert_eq!(actors, ["user", "assistant", "user"]);

    // Columns are two spaces apart at least; names have single spaces.
    let list = |user: &str| -> Vec<Vec<String>> {
        cli(&["chat", "list", user])
            .lines()
            .map(|line| {
                line.split("  ")
                    .map(str::trim)
                    .filter(|cell| !cell.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    };
    let rows = list("alice");
    let header = [
        "id",
        "model",
        "messages",
        "files",
        "shared",
        "updated (UTC)",
        "name",
    ];
    assert_eq!(rows[0], header);
    assert_eq!(rows.len(), 3, "{rows:?}");
    // Every column but the time, which is the clock's.
    let without_time = |row: &[String]| [&row[..5], &row[6..]].concat();
    assert_eq!(
        without_time(&rows[1]),
        [
            &trip.to_string(),
            "qwen2.5-coder:7b",
            "3",
            "0",
            "no",
            "Trip to Lisbon"
        ]
    );
    assert_eq!(
        without_time(&rows[2]),
        [&second.to_string(), "llama3.1:8b", "0", "0", "no", "Second"]
    );
    // A chat with files and a share, as seeded, shows them.
    let bob_rows = list("bob");
    assert_eq!(bob_rows.len(), 2, "{bob_rows:?}");
    let (messages, files) = (
        bobs.messages.len().to_string(),
        bobs.files.len().to_string(),
    );
    assert_eq!(
        [
            &bob_rows[1][0],
            &bob_rows[1][2],
            &bob_rows[1][3],
            &bob_rows[1][4]
        ],
        [&bobs.chat.to_string(), &messages, &files, "yes"]
    );

    server
        .delete(&format!("/api/users/alice/chats/{trip}"), &token)
        .assert_true();
    let rows = list("alice");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][0], second.to_string());
    assert_consistent(&server.sql());
}

/// A command that only reads or changes what is in the file, pointed at a
/// path with no file or an empty one, says so and creates nothing: before,
/// `doctor` created an empty database there and reported it healthy (in an
/// empty file, until 2026-11-29).
#[test]
fn commands_on_existing_data_refuse_a_missing_or_empty_file_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo.db");
    let token = "0".repeat(64);
    let commands: &[&[&str]] = &[
        &["doctor"],
        &["session", "list", "alice"],
        &["session", "prune"],
        &["session", "new", "alice"],
        &["session", "revoke", &token],
        &["session", "revoke", "--user", "alice"],
        &["user", "list"],
        &["chat", "list", "alice"],
        &["chat", "add", "alice", "A chat"],
        &["user", "remove", "alice"],
    ];
    for args in commands {
        let out = run_cli(&missing, args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr_of(&out);
        assert!(err.contains("no database file there"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        let created: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(created.is_empty(), "{args:?} created {created:?}");
    }

    // An empty file, which SQLite would take for a new database: one that
    // lost its data, say. No command that reads or changes data writes a
    // database into it, `doctor` and `backup` included.
    let empty = dir.path().join("empty.db");
    std::fs::File::create(&empty).unwrap();
    let backup = dir.path().join("copy.db");
    let backup_args = ["backup", backup.to_str().unwrap()];
    for args in commands.iter().copied().chain([&backup_args[..]]) {
        let out = run_cli(&empty, args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr_of(&out);
        assert!(
            err.contains("empty.db: the file is empty, so it holds no database")
                && err.contains("`neptun-local restore BACKUP` puts a backup in it"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        assert_eq!(
            std::fs::metadata(&empty).unwrap().len(),
            0,
            "{args:?} wrote"
        );
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["empty.db"], "{args:?}");
    }
    // A restore puts a database in it, as it does in a new file.
    let source = dir.path().join("source.db");
    assert!(
        run_cli(&source, &["user", "add", "alice"], None)
            .status
            .success()
    );
    assert!(run_cli(&source, &backup_args, None).status.success());
    let out = run_cli(&empty, &["restore", backup.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = run_cli(&empty, &["user", "list"], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice"));
    // So does `user add`, the other command that makes a database.
    let emptied = dir.path().join("emptied.db");
    std::fs::File::create(&emptied).unwrap();
    let out = run_cli(&emptied, &["user", "add", "bob"], None);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = run_cli(&emptied, &["user", "list"], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("bob"));

    // The default name, run from a directory without it (not the one the
    // server ran in): the message says which directory was looked in.
    let out = neptun_local()
        .args(["user", "list"])
        .env_remove("NEPTUN_DB")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let looked_in = format!(
        "neptun.db: no database file there (in {}, the working directory)",
        dir.path().display()
    );
    assert!(stderr_of(&out).contains(&looked_in), "{}", stderr_of(&out));
}

/// The demo's curl line from the server's log: the line, its token and its
/// path. On Windows it calls `curl.exe`, which PowerShell 5.1 does not
/// take for its own Invoke-WebRequest.
fn demo_curl(server: &TestServer) -> (String, String, String) {
    let command = if cfg!(windows) { "curl.exe " } else { "curl " };
    let logs = server.log_with(&[command]);
    let curl = logs
        .lines()
        .find(|l| l.trim_start().starts_with(command))
        .unwrap_or_else(|| panic!("no curl line in:\n{logs}"));
    let token = curl
        .split("neptun-session=")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let url = curl.split_whitespace().last().unwrap().trim_matches('"');
    let path = &url[url.find("/api/").unwrap()..];
    (curl.to_owned(), token.to_owned(), path.to_owned())
}

/// A server whose database has no session that can sign in answers every
/// request 401; its start-up says how to mint one.
#[cfg(unix)]
#[test]
fn a_start_on_a_database_where_no_session_can_sign_in_says_how_to_mint_one() {
    let hint = "no session in this database can sign in, so every request will get 401: \
                `neptun-local session new USER` mints one (after `neptun-local user add \
                USER`, each with the same --db), or start with --demo";
    // The log up to a first request's line, which comes after whatever the
    // start-up logged: so that the hint's absence means something.
    let start_up = |server: &TestServer| {
        server.request("GET", "/nowhere", &[]);
        server.log_with(&[" INFO  database ", "GET /nowhere 404 "])
    };
    let server = TestServer::start();
    assert!(start_up(&server).contains(hint), "a new database");
    let db = server.db();
    add_user(&db, "alice");
    expired_session(&db, "alice");
    let server = server.restart(&[]);
    assert!(start_up(&server).contains(hint), "only an expired session");
    login(&server.db(), "alice");
    let server = server.restart(&[]);
    assert!(!start_up(&server).contains(hint), "a live session");
    // The demo mints one.
    let demo = TestServer::start_with(&["--demo"]);
    assert!(!start_up(&demo).contains("no session"), "--demo");
}

#[test]
fn a_server_started_on_an_empty_file_makes_a_database_in_it_and_warns() {
    let warning = "the database file was empty, so a new database was made in it. If it \
                   held data, something cut it to nothing: `neptun-local restore BACKUP` \
                   puts a backup in it, even while a server runs on it";
    let start_up = |server: &TestServer| {
        server.request("GET", "/nowhere", &[]);
        server.log_with(&[" INFO  database ", "GET /nowhere 404 "])
    };
    let fresh = TestServer::start();
    assert!(!start_up(&fresh).contains("was empty"), "a new file");

    let dir = tempfile::tempdir().unwrap();
    let emptied = dir.path().join("emptied.db");
    std::fs::File::create(&emptied).unwrap();
    let server = TestServer::start_in(dir, emptied.clone(), &[]);
    let log = start_up(&server);
    assert!(log.contains(&format!("WARN  {warning}")), "{log}");
    // It serves the database it made there.
    let db = server.db();
    add_user(&db, "alice");
    let token = login(&db, "alice");
    server
        .delete("/api/users/alice/chats/1", &token)
        .assert_error(404, "Not Found");
    // Killed, which every platform can do: the database is in the file.
    let server = TestServer::start_in(server.kill(), emptied, &[]);
    assert!(!start_up(&server).contains("was empty"), "a restart");
}

#[cfg(unix)]
#[test]
fn the_demo_prints_a_working_curl_command_and_reseeds_idempotently() {
    let server = TestServer::start_with(&["--demo"]);
    let (curl, token, path) = demo_curl(&server);
    assert!(curl.contains("-X DELETE"), "{curl}");
    assert!(
        curl.ends_with(&format!("\"http://{}{path}\"", server.addr)),
        "{curl}"
    );
    // The line for a front end's browser console carries the same token, in
    // the form the client checks set it in Chromium.
    let console_line = format!("document.cookie = \"neptun-session={token}; path=/\"");
    let logs = server.log_with(&[&console_line]);
    assert!(
        logs.lines().any(|l| l.trim() == console_line),
        "no {console_line:?} in:\n{logs}"
    );

    server.delete(&path, &token).assert_true();
    let demo_chats = |sql: &rusqlite::Connection| -> i64 {
        sql.query_row(
            "SELECT count(*) FROM chats WHERE user_id = 'demo'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(demo_chats(&server.sql()), 2);

    // A second --demo start restores the deleted chat and duplicates nothing.
    let again = server.restart(&["--demo"]);
    let sql = again.sql();
    assert_eq!(demo_chats(&sql), 3);
    // It lists them by id, the restored one (a new id) last, and its curl
    // line deletes the first.
    let ids: Vec<String> = sql
        .prepare("SELECT id FROM chats WHERE user_id = 'demo' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|id| id.unwrap().to_string())
        .collect();
    let owns = format!("demo user \"demo\" owns chats {}", ids.join(", "));
    again.log_with(&[&owns]);
    let (_, _, path) = demo_curl(&again);
    assert!(path.ends_with(&format!("/chats/{}", ids[0])), "{path}");
    let tables: Vec<(String, i64)> = [
        "users",
        "messages",
        "chat_files",
        "chat_shares",
        "chat_share_whitelist_entries",
    ]
    .iter()
    .map(|t| {
        (
            t.to_string(),
            sql.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap(),
        )
    })
    .collect();
    let expected = [
        ("users", 2),
        ("messages", 6),
        ("chat_files", 2),
        ("chat_shares", 1),
        ("chat_share_whitelist_entries", 1),
    ];
    assert_eq!(tables, expected.map(|(t, n)| (t.to_string(), n)));
    assert_consistent(&sql);
}

/// Running `--demo` a second time while the first still serves fails on
/// the taken address, and must do so before it changes anything: the
/// running demo keeps the chats its user left (no deleted chat comes back
/// under a new id), and no session is minted that nobody is shown.
#[test]
fn a_demo_start_that_cannot_listen_leaves_the_database_as_it_was() {
    let server = TestServer::start_with(&["--demo"]);
    let (_, token, path) = demo_curl(&server);
    server.delete(&path, &token).assert_true();
    let state = |sql: &rusqlite::Connection| -> (Vec<i64>, i64) {
        let chats = column(sql, "SELECT id FROM chats ORDER BY id");
        let sessions = sql
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        (chats, sessions)
    };
    let before = state(&server.sql());

    let addr = server.addr.to_string();
    let out = run_cli(&server.db_path, &["--demo", "--addr", &addr], None);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("--addr"),
        "{err}"
    );
    assert!(!err.contains("curl"), "{err}");

    let sql = server.sql();
    assert_eq!(state(&sql), before);
    assert_consistent(&sql);
}

/// A start that fails on its address (taken, or not loopback without
/// `--allow-remote`) or on a flag must not leave a new, empty database
/// behind, as it would where a mistyped `--db` met a port already in use.
#[test]
fn a_start_refused_for_its_address_or_flags_creates_no_database_file() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let taken = server.addr.to_string();
    let starts: &[&[&str]] = &[
        &["--addr", &taken],
        &["--addr", "0.0.0.0:0"],
        &["--addr", "127.0.0.1:0", "--allow-origin", "*"],
        &["--addr", "127.0.0.1:0", "--allowed-host", "a/b"],
    ];
    for args in starts {
        let out = run_cli(&dir.path().join("new.db"), args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr_of(&out));
        let created: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(created.is_empty(), "{args:?}: created {created:?}");
    }
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_zero() {
    let (server, db, token) = start_with_alice_and_bob(&["--busy-timeout", "10s"]);
    let chat = seed_chat(&db, "alice", "bob");
    let path = format!("/api/users/alice/chats/{}", chat.chat);

    // Hold the write lock so that the delete is in flight (waiting out the
    // busy timeout inside a worker) when the signal arrives. The 500 ms gives
    // the request time to reach a worker; if it did not, the request would be
    // queued behind the shutdown and the assertion below would fail, not pass.
    let mut locker = server.sql();
    let tx = locker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let addr = server.addr;
    let cookie = format!("neptun-session={token}");
    let in_flight = {
        let path = path.clone();
        std::thread::spawn(move || request(addr, "DELETE", &path, &[("Cookie", &cookie)]))
    };
    std::thread::sleep(Duration::from_millis(500));
    signal(server.pid(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    tx.rollback().unwrap();

    in_flight.join().unwrap().assert_true();
    let Stopped {
        status,
        later_stdout,
        ..
    } = server.wait_for_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        later_stdout.is_empty(),
        "stdout after the listening line: {later_stdout:?}"
    );
    assert_fully_gone(&locker, &chat);
    assert_consistent(&locker);
}

/// `rm neptun.db` (to start over, say), or `mv` of another file onto it,
/// while the server runs: the server stops with exit 1, and says why,
/// rather than answer from a file that no one else sees while the CLI
/// writes users and sessions to the new one.
#[cfg(unix)]
#[test]
fn a_database_file_deleted_or_replaced_under_the_server_stops_it() {
    for replace in [false, true] {
        let (server, db, token) = start_with_alice_and_bob(&[]);
        let chat = seed_chat(&db, "alice", "bob");
        drop(db);
        server
            .delete(&format!("/api/users/alice/chats/{}", chat.chat), &token)
            .assert_true();
        let what = if replace {
            let copy = server.dir.path().join("copy.db");
            let out = run_cli(&server.db_path, &["backup", copy.to_str().unwrap()], None);
            assert!(out.status.success(), "{}", stderr_of(&out));
            std::fs::rename(&copy, &server.db_path).unwrap();
            "was deleted or replaced by another file"
        } else {
            for file in database_files(&server.db_path) {
                let _ = std::fs::remove_file(file);
            }
            "was deleted or moved away"
        };
        let stopped = server.wait_for_exit();
        let stderr = std::fs::read_to_string(stopped.dir.path().join("stderr.log")).unwrap();
        assert_eq!(stopped.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("the database file {what} while the server ran")),
            "{stderr}"
        );
    }
}

/// `rm neptun.db-wal` or `rm neptun.db-shm` while the server runs (taking
/// them for leftovers). Before, the server went on: its commits went to a
/// WAL that no other process could see, every command failed with "disk
/// I/O error", and a command's commit made through a new `-shm` was
/// truncated away by the server's next checkpoint. Now the server stops
/// within a second and says why, and no answered delete or command's
/// commit is lost.
#[cfg(unix)]
#[test]
fn a_wal_or_shm_deleted_under_the_server_stops_it_and_loses_no_commit() {
    for removed in [1, 2] {
        let (server, db, token) = start_with_alice_and_bob(&[]);
        let [before, after] = [(); 2].map(|()| seed_chat(&db, "alice", "bob"));
        // This process's connections would keep the files in use.
        drop(db);
        let delete = |chat: &SeededChat| format!("/api/users/alice/chats/{}", chat.chat);
        server.delete(&delete(&before), &token).assert_true();
        let files = database_files(&server.db_path);
        // Past the server's upkeep after that commit, which checkpoints
        // and truncates the WAL.
        let wal = &files[1];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(wal).unwrap().len() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL was never truncated"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let side_file = &files[removed];
        std::fs::remove_file(side_file).unwrap();

        let (answered, added_chat) = if side_file == wal {
            // Committed to the WAL the server still has open. The server
            // may have stopped already: then this got no answer.
            let answered = try_delete(server.addr, &delete(&after), &token);
            if let Some(answer) = &answered {
                answer.assert_true();
            }
            (answered, None)
        } else {
            // The command makes a new -shm, and commits through it.
            let id = add_a_chat_through_a_command(&server.db_path);
            // A delete must not write through the server's old index,
            // which would start the WAL over on top of that commit: it is
            // refused until the server stops.
            if let Some(answer) = try_delete(server.addr, &delete(&after), &token) {
                assert_eq!(answer.status, 503, "{}", answer.text());
                assert!(answer.text().contains("The server is stopping"));
            }
            (None, Some(id))
        };

        let db_path = server.db_path.clone();
        let stopped = server.wait_for_exit();
        let stderr = std::fs::read_to_string(stopped.dir.path().join("stderr.log")).unwrap();
        assert_eq!(stopped.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{}, which SQLite keeps beside the database while it is open, was ",
                side_file.display()
            )),
            "{stderr}"
        );
        let conn = rusqlite::Connection::open(&db_path).unwrap();
        assert_fully_gone(&conn, &before);
        if answered.is_some() {
            assert_fully_gone(&conn, &after);
        } else {
            assert_fully_present(&conn, &after);
        }
        let chats: Vec<i64> = column(&conn, "SELECT id FROM chats");
        if let Some(id) = added_chat {
            assert!(chats.contains(&id), "chat {id} lost: {chats:?}");
        }
        assert_consistent(&conn);
    }
}

/// Adds a chat of alice's with `chat add`; returns its id.
#[cfg(unix)]
fn add_a_chat_through_a_command(db_path: &Path) -> i64 {
    let added = run_cli(db_path, &["chat", "add", "alice", "added"], None);
    assert!(added.status.success(), "{}", stderr_of(&added));
    String::from_utf8_lossy(&added.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// A stop signal that comes right after the `-shm` was deleted and a
/// command committed through its new one, before the server's once-a-second
/// look at its files: the server still sees it as it stops, and leaves the
/// WAL to the next start rather than close with a checkpoint that would
/// drop that commit.
#[cfg(unix)]
#[test]
fn a_shm_deleted_just_before_a_stop_signal_loses_no_commit() {
    let (server, db, _token) = start_with_alice_and_bob(&[]);
    drop(db);
    let shm = &database_files(&server.db_path)[2];
    std::fs::remove_file(shm).unwrap();
    let id = add_a_chat_through_a_command(&server.db_path);
    signal(server.pid(), libc::SIGINT);

    let db_path = server.db_path.clone();
    let stopped = server.wait_for_exit();
    let stderr = std::fs::read_to_string(stopped.dir.path().join("stderr.log")).unwrap();
    assert_eq!(stopped.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} was deleted or ", shm.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("left the WAL as it is, for the next start to recover"),
        "{stderr}"
    );
    let conn = rusqlite::Connection::open(&db_path).unwrap();
    let chats: Vec<i64> = column(&conn, "SELECT id FROM chats");
    assert!(chats.contains(&id), "chat {id} lost: {chats:?}");
    assert_consistent(&conn);
}

/// `nohup` starts a command with SIGHUP ignored, so that it outlives the
/// terminal that started it. A server started so serves on after a hangup,
/// and still stops cleanly on Ctrl+C.
#[cfg(unix)]
#[test]
fn a_server_started_with_nohup_serves_on_after_a_hangup() {
    let server = TestServer::start_under(&["nohup"], &[]);
    signal(server.pid(), libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !server.stderr().contains("shutting down"),
        "{}",
        server.stderr()
    );
    assert_eq!(server.request("GET", "/nowhere", &[]).status, 404);

    signal(server.pid(), libc::SIGINT);
    let Stopped { status, dir, .. } = server.wait_for_exit();
    assert!(status.success(), "exit status {status:?}");
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(log.contains("INFO  stopped"), "{log}");
}

/// A shutdown stuck behind a request (here one waiting for the write lock)
/// is cut short by a second signal: exit 130 at once, and the request's
/// transaction never committed, so its chat is whole.
#[cfg(unix)]
#[test]
fn a_second_signal_exits_at_once_with_130() {
    let (server, db, token) = start_with_alice_and_bob(&["--busy-timeout", "30s"]);
    let chat = seed_chat(&db, "alice", "bob");
    let path = format!("/api/users/alice/chats/{}", chat.chat);
    let locker = server.sql();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || try_delete(addr, &path, &token));
    std::thread::sleep(Duration::from_millis(500));
    // SIGHUP (a closed terminal) counts as the first, not as a kill.
    signal(server.pid(), libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    signal(server.pid(), libc::SIGINT);
    let started = std::time::Instant::now();
    let Stopped { status, dir, .. } = server.wait_for_exit();
    assert_eq!(status.code(), Some(130), "exit status {status:?}");
    // It says why it did not wait. (The log's thread usually writes the
    // line before the exit even without the flush that precedes it.)
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        log.contains("WARN  second signal: exiting without waiting"),
        "{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}, not at once",
        started.elapsed()
    );
    assert!(
        in_flight.join().unwrap().is_none(),
        "the delete was answered"
    );
    locker.execute_batch("ROLLBACK").unwrap();
    assert_fully_present(&locker, &chat);
    assert_consistent(&locker);
}

/// Log lines start with the time, so that a log kept in a file says when
/// each request came. Under systemd, whose journal stamps every line itself,
/// they start instead with their priority as the journal reads it (`<4>`
/// for a warning); systemd names the journal's stream in `JOURNAL_STREAM`,
/// and a stream that is not that one keeps the time.
#[cfg(unix)]
#[test]
fn log_lines_start_with_the_time_or_for_the_journal_with_the_priority() {
    use std::os::unix::fs::MetadataExt;
    use std::process::Stdio;
    use std::time::SystemTime;

    use neptun_local::utc::rfc3339_millis;

    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let serve_one_request = |journal_stream: Option<&dyn Fn(&str) -> String>| {
        let log = std::fs::File::create(&log_path).unwrap();
        let identity = log.metadata().map(|m| format!("{}:{}", m.dev(), m.ino()));
        let mut command = neptun_local();
        command
            .args(["--addr", "127.0.0.1:0", "--synchronous", "normal", "--db"])
            .arg(dir.path().join("neptun.db"))
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(value_for) = journal_stream {
            command.env("JOURNAL_STREAM", value_for(&identity.unwrap()));
        }
        let (mut child, addr) = spawn_listening(command);
        request(addr, "GET", "/nowhere", &[]).assert_error(404, "Not Found");
        signal(child.id(), libc::SIGTERM);
        assert!(wait_with_deadline(&mut child).success());
        std::fs::read_to_string(&log_path).unwrap()
    };

    let same_stream = |identity: &str| identity.to_owned();
    let another_stream = |identity: &str| format!("{identity}0");
    for journal_stream in [None, Some(&another_stream as &dyn Fn(&str) -> String)] {
        let before = rfc3339_millis(SystemTime::now());
        let log = serve_one_request(journal_stream);
        let after = rfc3339_millis(SystemTime::now());
        let mut levels = Vec::new();
        for line in log.lines() {
            let (time, rest) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("{line:?} in:\n{log}"));
            assert!(
                time.len() == before.len() && (before.as_str()..=after.as_str()).contains(&time),
                "{time:?} is not a time between {before} and {after}:\n{log}"
            );
            levels.push(rest.split_whitespace().next().unwrap().to_owned());
        }
        assert!(
            log.contains(" INFO  GET /nowhere 404 "),
            "the request is logged:\n{log}"
        );
        assert_eq!(levels.first().map(String::as_str), Some("WARN"), "{log}");
    }

    let log = serve_one_request(Some(&same_stream));
    assert!(
        log.lines()
            .next()
            .unwrap()
            .starts_with("<4>WARN  --synchronous normal"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>INFO  GET /nowhere 404 ")),
        "{log}"
    );
    let priority_then_level = ["<3>ERROR ", "<4>WARN  ", "<6>INFO  ", "<7>DEBUG "];
    assert!(
        log.lines()
            .all(|l| priority_then_level.iter().any(|p| l.starts_with(p))),
        "every line starts with its priority, and none with a time:\n{log}"
    );

    // So is the error that ends the process, every line of it (clap's
    // usage and hint follow its error): a port already taken, or a bad value
    // in the unit's environment.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (env, code, error) in [
        (
            ("NEPTUN_ADDR", taken.as_str()),
            1,
            "<3>neptun-local: error: cannot listen",
        ),
        (("NEPTUN_WORKERS", "0"), 2, "<3>error: invalid value '0'"),
    ] {
        let log = std::fs::File::create(&log_path).unwrap();
        let identity = log.metadata().map(|m| format!("{}:{}", m.dev(), m.ino()));
        let status = neptun_local()
            .arg("--db")
            .arg(dir.path().join("neptun.db"))
            .env(env.0, env.1)
            .env("JOURNAL_STREAM", identity.unwrap())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .unwrap();
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert_eq!(status.code(), Some(code), "{log}");
        assert!(log.starts_with(error), "{log}");
        assert!(log.lines().all(|l| l.starts_with("<3>")), "{log}");
    }
}

/// A stderr that no one reads (a parent that piped it and reads only
/// stdout) held every worker once the pipe was full: after about 700
/// requests, the server answered nothing more. Now every request is
/// answered, and each one's log line is either written or counted as
/// dropped; the count is written once the reader is back, and a stop still
/// writes its last lines.
#[test]
fn a_stderr_that_no_one_reads_holds_up_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, unread) = fill_an_unread_stderr(dir.path());

    // Windows has no stop signal to send: killed, the server leaves its
    // queued lines unwritten, so only the answers are checked there.
    #[cfg(not(unix))]
    {
        drop(unread);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    #[cfg(unix)]
    {
        use std::io::{BufReader, Read};

        let reader = std::thread::spawn(move || {
            let mut log = String::new();
            BufReader::new(unread).read_to_string(&mut log).unwrap();
            log
        });
        signal(child.id(), libc::SIGTERM);
        let status = wait_with_deadline(&mut child);
        let log = reader.join().unwrap();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        assert!(status.success(), "{status:?}: {tail:?}");
        assert!(tail[0].ends_with(" INFO  stopped"), "{tail:?}");

        let logged = log.matches(" 401 ").count();
        let dropped: usize = log
            .lines()
            .filter_map(|l| {
                l.split_once(" WARN  ")?
                    .1
                    .strip_suffix(" log line(s) dropped: stderr was not read fast enough")
            })
            .map(|n| n.parse::<usize>().unwrap())
            .sum();
        assert!(dropped > 0, "the pipe and the queue held it all: {tail:?}");
        // The line that the stop signal logs may find the queue still full.
        let others_dropped = usize::from(!log.contains(" INFO  shutting down"));
        assert_eq!(
            logged + dropped,
            REQUESTS_TO_FILL_STDERR + others_dropped,
            "{logged} logged, {dropped} dropped: {tail:?}"
        );
    }
}

/// Far more lines than a pipe (64 KiB) and the server's queue (4,096
/// lines) hold together.
const REQUESTS_TO_FILL_STDERR: usize = 8_000;

/// Starts a server whose stderr is piped and not read, and sends it
/// [`REQUESTS_TO_FILL_STDERR`] requests, checking that each is answered.
fn fill_an_unread_stderr(
    dir: &std::path::Path,
) -> (std::process::Child, std::process::ChildStderr) {
    use std::io::{BufReader, Write};
    use std::net::TcpStream;
    use std::process::Stdio;

    let mut command = neptun_local();
    command
        .args(["--addr", "127.0.0.1:0", "--db"])
        .arg(dir.join("neptun.db"))
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, addr) = spawn_listening(command);
    let unread = child.stderr.take().unwrap();

    // Without a cookie: a 401, and a log line, for each.
    let raw = format!("DELETE /api/users/u/chats/1 HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let connect = || {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        BufReader::new(stream)
    };
    let mut connection = connect();
    for sent in 0..REQUESTS_TO_FILL_STDERR {
        connection.get_mut().write_all(raw.as_bytes()).unwrap();
        let answer = read_response(&mut connection)
            .unwrap_or_else(|e| panic!("request {sent} got no answer: {e}"));
        assert_eq!(answer.status, 401);
        if answer.header("Connection") == Some("close") {
            connection = connect();
        }
    }
    (child, unread)
}

/// Once the pipe and the queue were full, the message that ends the
/// process (here: its database file was deleted under it) waited for room
/// for ever, and the process never exited. It waits a second at most.
#[cfg(unix)]
#[test]
fn a_stderr_that_no_one_reads_does_not_keep_the_server_from_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, unread) = fill_an_unread_stderr(dir.path());
    std::fs::remove_file(dir.path().join("neptun.db")).unwrap();
    let status = wait_with_deadline(&mut child);
    drop(unread);
    assert_eq!(status.code(), Some(1));
}

/// A reader that has gone (`neptun-local user list | head -1`) made the
/// commands panic on their next line: exit 101 and a backtrace, and
/// `session new` left a session whose token no one had. Now the output
/// ends quietly, `session new` fails and revokes that session, and the
/// server serves on without its listening line.
#[cfg(unix)]
#[test]
fn a_reader_that_has_gone_ends_the_output_without_a_panic() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::process::Stdio;

    // A pipe whose reading end is closed: every write to it fails with EPIPE.
    let closed_pipe = || {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two descriptors, which we then own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(read);
        Stdio::from(write)
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("neptun.db");
    assert!(
        run_cli(&db, &["user", "add", "alice"], None)
            .status
            .success()
    );
    let run = |args: &[&str], stdout: Stdio, stderr: Stdio| {
        neptun_local()
            .arg("--db")
            .arg(&db)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .output()
            .unwrap()
    };

    for args in [
        &["user", "list"][..],
        &["doctor"],
        &["session", "list", "alice"],
        &["session", "prune"],
    ] {
        let out = run(args, closed_pipe(), Stdio::piped());
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    }
    let out = run(&["user", "add", "bob"], Stdio::piped(), closed_pipe());
    assert!(
        out.status.success(),
        "user add with stderr gone: {:?}",
        out.status
    );

    let out = run(&["session", "new", "alice"], closed_pipe(), Stdio::piped());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("cannot write the token to stdout")
            && stderr_of(&out).contains("the session was revoked"),
        "{}",
        stderr_of(&out)
    );
    let listed = run_cli(&db, &["session", "list", "alice"], None);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        1,
        "only the header, no session:\n{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    let listed = run_cli(&db, &["user", "list"], None);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("bob"));

    // The server: its port chosen here, since its listening line is lost.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log_path = dir.path().join("stderr.log");
    let mut server = neptun_local()
        .args(["--addr", &addr, "--db"])
        .arg(&db)
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Some(answer) = try_delete(addr.parse().unwrap(), "/api/users/alice/chats/1", "x") {
            break answer;
        }
        assert!(
            server.try_wait().unwrap().is_none(),
            "the server exited: {}",
            std::fs::read_to_string(&log_path).unwrap()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the server never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    answer.assert_error(401, "Unauthorized");
    signal(server.id(), libc::SIGTERM);
    assert!(wait_with_deadline(&mut server).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("could not write the listening line to stdout"),
        "{log}"
    );
}

#[cfg(unix)]
#[test]
fn stdout_carries_exactly_the_listening_line() {
    let server = TestServer::start();
    server.request("DELETE", "/", &[]);
    let Stopped {
        status,
        later_stdout,
        ..
    } = server.stop();
    assert!(status.success());
    assert!(later_stdout.is_empty(), "{later_stdout:?}");
}

#[test]
fn help_lists_the_commands() {
    let out = neptun_local().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "serve",
        "user",
        "session",
        "chat",
        "--db",
        "--addr",
        "--workers",
        "--demo",
        "NEPTUN_DB",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

/// A command kept from the write lock for the whole wait (5 s) says what
/// holds it and what to do, not only SQLite's "database is locked": the
/// server and the other commands never hold it that long. It changes
/// nothing.
#[test]
fn a_command_kept_from_the_write_lock_says_what_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("neptun.db");
    let added = run_cli(&db_path, &["user", "add", "alice"], None);
    assert!(added.status.success(), "{}", stderr_of(&added));
    let holder = rusqlite::Connection::open(&db_path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let out = run_cli_within_deadline(&db_path, &["user", "add", "bob"]);

    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("database busy"), "{stderr}");
    assert!(
        stderr.contains(
            "another program kept a write transaction open all the while (a `sqlite3` shell, \
             or a database browser with unsaved changes): end it (COMMIT or ROLLBACK, or close \
             the program), and run this again"
        ),
        "{stderr}"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    let users: Vec<String> = column(&holder, "SELECT id FROM users ORDER BY id");
    assert_eq!(users, ["alice"]);
    assert_consistent(&holder);
}
