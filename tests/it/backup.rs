//! `neptun-local backup`: a consistent, checked copy of the database, taken
//! while the server deletes, that a server started on it serves.

use std::path::{MAIN_SEPARATOR, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::*;

#[test]
fn a_backup_taken_while_the_server_deletes_is_whole_and_serves_when_restored() {
    let (server, db, token) = start_with_alice_and_bob(&[]);
    let chats: Vec<SeededChat> = (0..300).map(|_| seed_chat(&db, "alice", "bob")).collect();
    // Bulk, so that the backup takes long enough for deletes to land while
    // it runs: without it, the backup took 12 ms, and on a loaded machine it
    // once ended before the deleting thread's second answer.
    db.add_chat("bob", "bulk", "test-model", 50_000).unwrap();
    let path = |chat: &SeededChat| format!("/api/users/alice/chats/{}", chat.chat);
    // Answered just before the backup starts: their commits may still be
    // only in the WAL, which a copy of the file alone would miss.
    let (gone_before, racing) = chats[..200].split_at(20);
    for chat in gone_before {
        server.delete(&path(chat), &token).assert_true();
    }
    let backup_done = Arc::new(AtomicBool::new(false));
    let (first_answered, deleting) = std::sync::mpsc::channel();
    let deleter = {
        let (addr, token, done) = (server.addr, token.clone(), Arc::clone(&backup_done));
        let paths: Vec<String> = racing.iter().map(path).collect();
        std::thread::spawn(move || {
            let mut deleted_during_backup = 0;
            for (i, path) in paths.iter().enumerate() {
                let answer = try_delete(addr, path, &token).expect("the server answers");
                answer.assert_true();
                if i == 0 {
                    first_answered.send(()).unwrap();
                } else if !done.load(Ordering::SeqCst) {
                    deleted_during_backup += 1;
                }
            }
            deleted_during_backup
        })
    };
    // The backup starts while deletes are being answered.
    deleting.recv().unwrap();

    let out = server.dir.path().join("backup.db");
    let ran = run_cli(&server.db_path, &["backup", out.to_str().unwrap()], None);
    backup_done.store(true, Ordering::SeqCst);
    assert!(ran.status.success(), "{}", stderr_of(&ran));
    assert!(
        stderr_of(&ran).contains("integrity and foreign keys checked"),
        "{}",
        stderr_of(&ran)
    );
    assert!(
        deleter.join().unwrap() > 0,
        "no delete ran during the backup"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the copy holds every chat");
    }

    let copy = rusqlite::Connection::open(&out).unwrap();
    assert_consistent(&copy);
    for chat in gone_before {
        assert_fully_gone(&copy, chat);
    }
    for chat in &chats[200..] {
        assert_fully_present(&copy, chat);
    }
    // Each chat deleted while the copy was taken is in it whole, or not at all.
    for chat in racing {
        let rows = remaining_rows(&copy, chat);
        if rows[0].1 == 1 {
            assert_fully_present(&copy, chat);
        } else {
            assert_fully_gone(&copy, chat);
        }
    }
    drop(copy);

    // doctor and the listings read the copy as it is, read-only: opened as
    // the other commands open a file, it became a WAL database (and a
    // read-only copy could not be read at all).
    let before = std::fs::read(&out).unwrap();
    let doctor = run_cli(&out, &["doctor"], None);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{report}{}", stderr_of(&doctor));
    assert!(report.contains("opened       read-only"), "{report}");
    let kept = chats[299].chat.to_string();
    for (args, shows) in [
        (&["user", "list"][..], "alice"),
        (&["chat", "list", "alice"], kept.as_str()),
        (&["session", "list", "alice"], "active"),
    ] {
        let listed = run_cli(&out, args, None);
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.status.success(), "{args:?}: {}", stderr_of(&listed));
        assert!(text.contains(shows), "{args:?}: {text}");
    }
    // So does a backup of it, which once switched it to WAL.
    let again = server.dir.path().join("again.db");
    let backed_up = run_cli(&out, &["backup", again.to_str().unwrap()], None);
    assert!(backed_up.status.success(), "{}", stderr_of(&backed_up));
    assert_fully_present(&rusqlite::Connection::open(&again).unwrap(), &chats[299]);
    assert!(
        std::fs::read(&out).unwrap() == before,
        "reading changed the copy"
    );
    for suffix in ["-wal", "-shm", "-journal"] {
        let beside = neptun_local::db::side_file(&out, suffix);
        assert!(!beside.exists(), "reading left {beside:?}");
    }

    // Restoring is copying the backup into place; the sessions come with it.
    let restored_dir = tempfile::tempdir().unwrap();
    let restored = restored_dir.path().join("neptun.db");
    std::fs::copy(&out, &restored).unwrap();
    let server = TestServer::start_in(restored_dir, restored.clone(), &[]);
    server.delete(&path(&chats[299]), &token).assert_true();
    server
        .delete(&path(&gone_before[0]), &token)
        .assert_error(404, "Not Found");
    let doctor = run_cli(&restored, &["doctor"], None);
    assert!(doctor.status.success(), "{}", stderr_of(&doctor));
}

#[test]
fn a_backup_never_replaces_a_file_and_names_what_is_wrong() {
    let server = TestServer::start();
    let dir = server.dir.path();
    let existing = dir.join("precious.txt");
    std::fs::write(&existing, "keep me").unwrap();
    let missing_dir = dir.join("no/such/dir/b.db");
    // As `cp db new-dir/` would take it: a directory, and it is not there.
    let missing_dir_only = format!("{}{}", dir.join("new-dir").display(), MAIN_SEPARATOR);
    let cases = [
        (existing.clone(), "already exists".to_owned()),
        (server.db_path.clone(), "already exists".to_owned()),
        // As cp would take it, into the directory: no, a name is needed.
        (
            dir.to_owned(),
            format!(
                "{} is a directory; give the path of a new file in it",
                dir.display()
            ),
        ),
        (
            missing_dir.clone(),
            format!(
                "the directory {} does not exist",
                missing_dir.parent().unwrap().display()
            ),
        ),
        (
            PathBuf::from(&missing_dir_only),
            format!("the directory {missing_dir_only} does not exist"),
        ),
        // A file named as a directory to write into.
        (
            PathBuf::from(format!("{}{MAIN_SEPARATOR}", existing.display())),
            format!(
                "{}{MAIN_SEPARATOR} is not a directory: {} is a file; give the path of a \
                 new file",
                existing.display(),
                existing.display()
            ),
        ),
    ];
    for (out, message) in cases {
        let ran = run_cli(&server.db_path, &["backup", out.to_str().unwrap()], None);
        assert_eq!(ran.status.code(), Some(1), "{out:?}");
        assert!(stderr_of(&ran).contains(&message), "{}", stderr_of(&ran));
    }
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");
    assert!(!missing_dir.exists());
    assert!(!dir.join("new-dir").exists());
    // The server's own file is untouched and still served.
    assert_consistent(&server.sql());
    server
        .request("DELETE", "/api/users/u/chats/1", &[])
        .assert_error(401, "Unauthorized");

    let typo = dir.join("typo.db");
    let ran = run_cli(&typo, &["backup", "x.db"], None);
    assert!(stderr_of(&ran).contains("no database file there"));
    assert!(!typo.exists());
}

/// SQLite reads a name that begins with `file:` as a URI (`file:y.db`
/// would open `y.db`); `--db` and `backup` take file names, as written.
/// Before, `backup file:y.db` wrote the copy to `y.db` (mode 0644) and
/// reported success for the empty `file:y.db`; and `:memory:`, the name
/// SQLite keeps for a database in memory, made every command fail on a
/// database of its own per connection, and a backup "checked" an empty
/// one. (Unix: such names are not valid on Windows.)
#[cfg(unix)]
#[test]
fn names_that_look_like_uris_are_plain_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = neptun_local()
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    };
    run(&["--db", "file:x.db", "user", "add", "alice"]);
    run(&["--db", "file:x.db", "backup", "file:y.db"]);
    run(&["--db", "file:y.db", "doctor"]);
    run(&["--db", "file:x.db", "backup", ":memory:"]);
    run(&["--db", ":memory:", "user", "add", "bob"]);
    run(&["--db", ":memory:", "user", "list"]);
    run(&["--db", ":memory:", "backup", "file:z.db"]);
    run(&["--db", "new.db", "restore", ":memory:"]);
    run(&["--db", "new.db", "doctor"]);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [":memory:", "file:x.db", "file:y.db", "file:z.db", "new.db"]
    );
    let users = |name: &str| {
        let copy = rusqlite::Connection::open(dir.path().join(name)).unwrap();
        column::<String>(&copy, "SELECT id FROM users")
    };
    assert_eq!(users("file:y.db"), ["alice"]);
    for name in [":memory:", "file:z.db", "new.db"] {
        assert_eq!(users(name), ["alice", "bob"], "{name}");
    }
}

/// A backup killed halfway leaves `OUT.partial`, never `OUT`: before, it
/// left `OUT` with a hot journal, which SQLite rolled back on the next open
/// to an empty database, a file named like a backup that restores nothing.
/// Every kill below leaves either no `OUT` or a whole, checked one.
#[cfg(unix)]
#[test]
fn a_backup_killed_halfway_leaves_no_file_under_the_backups_name() {
    use std::process::Stdio;

    let server = server_with_a_30_mb_chat();
    let out = server.dir.path().join("backup.db");
    let partial = server.dir.path().join("backup.db.partial");
    let mut cut_short = 0;
    for delay_ms in [5, 15, 30, 60, 120, 240] {
        for leftover in [&out, &partial] {
            let _ = std::fs::remove_file(leftover);
        }
        let mut child = start_backup(&server, &out, Stdio::null());
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let finished = child.wait().unwrap().success();
        if out.exists() {
            // Named only once whole and checked.
            let conn = rusqlite::Connection::open(&out).unwrap();
            let chats: i64 = conn
                .query_row("SELECT count(*) FROM chats", [], |r| r.get(0))
                .unwrap();
            assert_eq!(chats, 1, "killed after {delay_ms} ms");
            assert_consistent(&conn);
        } else {
            assert!(!finished, "it reported success without the file");
            cut_short += 1;
        }
    }
    assert!(
        cut_short > 0,
        "no kill landed during a backup: the test proves nothing"
    );

    // What the last kill may have left is named, and not overwritten.
    std::fs::write(&partial, "left by a killed backup").unwrap();
    let _ = std::fs::remove_file(&out);
    let ran = run_cli(&server.db_path, &["backup", out.to_str().unwrap()], None);
    assert_eq!(ran.status.code(), Some(1));
    assert!(
        stderr_of(&ran).contains("a backup to this name was interrupted"),
        "{}",
        stderr_of(&ran)
    );
    assert!(!out.exists());
    std::fs::remove_file(&partial).unwrap();
    let ran = run_cli(&server.db_path, &["backup", out.to_str().unwrap()], None);
    assert!(ran.status.success(), "{}", stderr_of(&ran));
    assert!(!partial.exists(), "the partial file was left");
}

/// The names in `dir` of `backup.db` and what a backup to it makes beside
/// it (`backup.db.partial` and its journal), sorted.
#[cfg(unix)]
fn backup_files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("backup.db"))
        .collect();
    names.sort();
    names
}

/// A server whose one chat is about 30 MB, so that a backup takes long
/// enough (about half a second) to be cut short.
#[cfg(unix)]
fn server_with_a_30_mb_chat() -> TestServer {
    let (server, db, _) = start_with_alice_and_bob(&[]);
    seed_chat(&db, "alice", "bob");
    add_30_mb_to_the_last_chat(&server.sql());
    server
}

/// Starts `backup OUT` of the server's database, with `stderr`.
#[cfg(unix)]
fn start_backup(
    server: &TestServer,
    out: &std::path::Path,
    stderr: std::process::Stdio,
) -> std::process::Child {
    use std::process::Stdio;
    neptun_local()
        .arg("--db")
        .arg(&server.db_path)
        .arg("backup")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Ctrl+C (SIGINT), SIGTERM or SIGHUP while a backup is made stops it, and
/// it removes what it wrote. Before, the signal killed it and left
/// `OUT.partial` and its journal, which the next backup to that name
/// refused. A signal that comes once the copy has its name changes
/// nothing: the backup was made.
#[cfg(unix)]
#[test]
fn a_backup_stopped_by_a_signal_keeps_nothing_and_the_next_one_runs() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let server = server_with_a_30_mb_chat();
    let out = server.dir.path().join("backup.db");
    let left_over = || backup_files_in(server.dir.path());
    let mut stopped = 0;
    for (signal, delay_ms) in [
        (libc::SIGINT, 40),
        (libc::SIGTERM, 80),
        (libc::SIGHUP, 160),
        (libc::SIGINT, 320),
        (libc::SIGINT, 640),
    ] {
        let _ = std::fs::remove_file(&out);
        let child = start_backup(&server, &out, Stdio::piped());
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        // SAFETY: kill(2) on the child's pid, which it keeps until waited for.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let ran = child.wait_with_output().unwrap();
        let said = stderr_of(&ran);
        let case = format!(
            "signal {signal} after {delay_ms} ms: {:?}: {said}",
            ran.status
        );
        match ran.status.code() {
            Some(130) => {
                assert!(
                    said.ends_with(
                        "neptun-local: error: stopped before the backup was made; \
                         nothing was kept\n"
                    ),
                    "{case}"
                );
                assert_eq!(left_over(), [] as [&str; 0], "{case}");
                stopped += 1;
            }
            Some(0) => {
                assert!(said.contains("backed up 1 chat(s)"), "{case}");
                assert_eq!(left_over(), ["backup.db"], "{case}");
                assert_consistent(&rusqlite::Connection::open(&out).unwrap());
            }
            // Killed before it listened for signals, which it does before
            // it writes anything.
            None if ran.status.signal() == Some(signal) => {
                assert_eq!(left_over(), [] as [&str; 0], "{case}");
            }
            _ => panic!("{case}"),
        }
    }
    assert!(
        stopped > 0,
        "no signal landed during a backup: the test proves nothing"
    );
    let _ = std::fs::remove_file(&out);
    let ran = run_cli(&server.db_path, &["backup", out.to_str().unwrap()], None);
    assert!(ran.status.success(), "{}", stderr_of(&ran));
    assert_eq!(left_over(), ["backup.db"]);
}

/// Under a file-size limit (`ulimit -f`), a write past it sends SIGXFSZ,
/// which kills a process that does not ignore it: the backup died and left
/// `OUT.partial` and its journal, which the next backup to that name then
/// refused. Now it fails with its error, removes what it wrote, and the
/// next one, without the limit, succeeds.
#[cfg(unix)]
#[test]
fn a_backup_past_a_file_size_limit_fails_cleanly_and_leaves_nothing() {
    let (server, db, _) = start_with_alice_and_bob(&[]);
    db.add_chat("bob", "bulk", "test-model", 5_000).unwrap();
    let out = server.dir.path().join("backup.db");
    let limit: u64 = 64 * 1024;
    let bytes: i64 = server
        .sql()
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(
        bytes > 2 * limit as i64,
        "{bytes} bytes: the copy would fit"
    );
    let ran =
        run_cli_with_file_size_limit(&server.db_path, &["backup", out.to_str().unwrap()], limit);
    assert_eq!(ran.status.code(), Some(1), "{}", stderr_of(&ran));
    assert!(
        stderr_of(&ran).starts_with(
            "neptun-local: error: the backup failed: storage full: disk I/O error: File too large"
        ),
        "{}",
        stderr_of(&ran)
    );
    let left = backup_files_in(server.dir.path());
    assert!(left.is_empty(), "left behind: {left:?}");

    let ran = run_cli(&server.db_path, &["backup", out.to_str().unwrap()], None);
    assert!(ran.status.success(), "{}", stderr_of(&ran));
}
