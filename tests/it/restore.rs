//! `neptun-local restore BACKUP`: a checked backup put in place of the
//! database's contents, while the server runs, or into a new file.

use std::path::{MAIN_SEPARATOR, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use neptun_local::db::{self, Database};

use crate::support::*;

/// The bytes of the WAL and of the database file, where replaced rows
/// could linger. The WAL is read first: in that order, a page
/// that the server's upkeep checkpoints meanwhile is seen in one or the
/// other (see `markers_on_disk` in durability.rs). Read the other way
/// round, under load, a committed chat was missed in both.
fn file_bytes(db_path: &Path) -> Vec<u8> {
    [db::side_file(db_path, "-wal"), db_path.to_owned()]
        .iter()
        .flat_map(|path| std::fs::read(path).unwrap_or_default())
        .collect()
}

fn holds(bytes: &[u8], text: &str) -> bool {
    bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

/// The users and chats, as the listings print them.
fn listing(db_path: &Path) -> String {
    let mut text = String::new();
    for args in [&["user", "list"][..], &["chat", "list", "alice"]] {
        let out = run_cli(db_path, args, None);
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    text
}

#[test]
fn a_restore_under_a_running_server_brings_the_backup_back_and_erases_what_it_replaced() {
    let (server, db, token) = start_with_alice_and_bob(&[]);
    let kept = seed_chat(&db, "alice", "bob");
    let deleted_since = seed_chat(&db, "alice", "bob");
    let out = server.dir.path().join("backup.db");
    let ran = run_cli(&server.db_path, &["backup", out.to_str().unwrap()], None);
    assert!(ran.status.success(), "{}", stderr_of(&ran));

    // After the backup: one chat deleted, one added, a session revoked.
    let path = |chat: i64| format!("/api/users/alice/chats/{chat}");
    server
        .delete(&path(deleted_since.chat), &token)
        .assert_true();
    let added_since = db
        .add_chat("alice", "added-after-the-backup", "test-model", 3)
        .unwrap();
    let revoked = run_cli(
        &server.db_path,
        &["session", "revoke", "--user", "alice"],
        None,
    );
    assert!(revoked.status.success(), "{}", stderr_of(&revoked));
    server
        .delete(&path(kept.chat), &token)
        .assert_error(401, "Unauthorized");

    assert!(holds(
        &file_bytes(&server.db_path),
        "added-after-the-backup"
    ));

    // A database with users or chats is replaced only when asked to.
    let before = listing(&server.db_path);
    let refused = run_cli(&server.db_path, &["restore", out.to_str().unwrap()], None);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr_of(&refused));
    assert!(
        stderr_of(&refused).contains(
            "holds 2 user(s) and 2 chat(s); add --replace to put the backup's 2 user(s) and \
             2 chat(s) in their place (that cannot be undone)"
        ),
        "{}",
        stderr_of(&refused)
    );
    assert_eq!(listing(&server.db_path), before);

    let backup_bytes = std::fs::read(&out).unwrap();
    let restored = run_cli(
        &server.db_path,
        &["restore", out.to_str().unwrap(), "--replace"],
        None,
    );
    assert!(restored.status.success(), "{}", stderr_of(&restored));
    assert!(
        std::fs::read(&out).unwrap() == backup_bytes,
        "the restore changed the backup"
    );
    assert!(
        stderr_of(&restored).contains(&format!(
            "restored 2 user(s) and 2 chat(s) from {}, in place of 2 user(s) and 2 chat(s); \
             integrity and foreign keys checked",
            out.display()
        )),
        "{}",
        stderr_of(&restored)
    );

    // The running server serves the backup's contents at once: the session
    // revoked since is valid again, the deleted chat is back whole, and
    // the added one is gone, also from the bytes of the files.
    let conn = server.sql();
    assert_fully_present(&conn, &deleted_since);
    assert_fully_present(&conn, &kept);
    assert_consistent(&conn);
    drop(conn);
    server
        .delete(&path(deleted_since.chat), &token)
        .assert_true();
    server
        .delete(&path(added_since), &token)
        .assert_error(404, "Not Found");
    assert!(!holds(
        &file_bytes(&server.db_path),
        "added-after-the-backup"
    ));
    assert_consistent(&server.sql());
    let doctor = run_cli(&server.db_path, &["doctor"], None);
    assert!(doctor.status.success(), "{}", stderr_of(&doctor));
}

/// Onto a new machine: into a file that does not exist yet, which a server
/// then serves with the backup's sessions. Also from a backup whose pages
/// are not SQLite's usual 4 KiB (taken where SQLite chose larger pages, or
/// of a file made with the sqlite3 shell): SQLite copies a backup only into
/// a database of its page size, and a WAL database's cannot change, so the
/// new file is made with the backup's.
#[test]
fn a_restore_into_a_new_file_needs_no_replace_and_serves() {
    let (server, db, token) = start_with_alice_and_bob(&[]);
    let chat = seed_chat(&db, "alice", "bob");
    let page_size_of = |path: &Path| -> u32 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    for page_size in [4096, 8192] {
        let out = server.dir.path().join(format!("backup-{page_size}.db"));
        let ran = run_cli(&server.db_path, &["backup", out.to_str().unwrap()], None);
        assert!(ran.status.success(), "{}", stderr_of(&ran));
        if page_size != 4096 {
            rusqlite::Connection::open(&out)
                .unwrap()
                .execute_batch(&format!("PRAGMA page_size = {page_size}; VACUUM;"))
                .unwrap();
        }
        assert_eq!(page_size_of(&out), page_size);

        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("neptun.db");
        let restored = run_cli(&new, &["restore", out.to_str().unwrap()], None);
        assert!(restored.status.success(), "{}", stderr_of(&restored));
        let said = stderr_of(&restored);
        assert!(
            said.contains("restored 2 user(s) and 1 chat(s) from") && !said.contains("in place of"),
            "{said}"
        );
        assert_eq!(page_size_of(&new), page_size);
        let doctor = run_cli(&new, &["doctor"], None);
        let report = String::from_utf8_lossy(&doctor.stdout);
        assert!(doctor.status.success(), "{report}{}", stderr_of(&doctor));
        assert!(report.contains("journal_mode=wal"), "{report}");
        assert!(report.contains("auto_vacuum=incremental"), "{report}");
        #[cfg(unix)]
        assert!(report.contains("mode         0600"), "{report}");

        let restored_server = TestServer::start_in(dir, new, &[]);
        restored_server
            .delete(&format!("/api/users/alice/chats/{}", chat.chat), &token)
            .assert_true();
        assert_consistent(&restored_server.sql());
    }
}

/// Restored from as it is, a server's database (stopped, or copied from
/// another machine) is in WAL mode. Read through a read-only connection,
/// it kept the `-wal` and `-shm` files SQLite made beside it to read it.
#[test]
fn a_restore_from_a_servers_database_leaves_no_wal_or_shm_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    alice_with_a_chat(&old, "Kept");
    let side_files = || ["-wal", "-shm"].map(|suffix| db::side_file(&old, suffix).exists());
    assert_eq!(side_files(), [false, false]);
    let before = listing(&old);

    let new = dir.path().join("new.db");
    let ran = run_cli(&new, &["restore", old.to_str().unwrap()], None);
    assert!(ran.status.success(), "{}", stderr_of(&ran));
    assert_eq!(side_files(), [false, false]);
    assert_eq!(listing(&new), before);
    assert_eq!(listing(&old), before);
}

/// A backup of a file whose index was dropped by hand passes every check
/// but `doctor`'s. Restored as it was, every delete would read a whole
/// child table; the restore makes the index again, and says so.
#[test]
fn a_restore_from_a_backup_that_lacks_an_index_makes_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    alice_with_a_chat(&old, "Kept");
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute_batch("DROP INDEX messages_chat_id; DROP INDEX chat_files_chat_id;")
        .unwrap();
    let indexes = |path: &Path| -> Vec<String> {
        column(
            &rusqlite::Connection::open(path).unwrap(),
            "SELECT name FROM sqlite_schema WHERE type = 'index' \
             AND name IN ('messages_chat_id', 'chat_files_chat_id') ORDER BY name",
        )
    };
    assert!(indexes(&old).is_empty());

    let new = dir.path().join("new.db");
    let ran = run_cli(&new, &["restore", old.to_str().unwrap()], None);
    assert!(ran.status.success(), "{}", stderr_of(&ran));
    assert!(
        stderr_of(&ran).contains(
            "; made the index(es) messages_chat_id, chat_files_chat_id, which the backup \
             lacked; integrity and foreign keys checked"
        ),
        "{}",
        stderr_of(&ran)
    );
    assert_eq!(indexes(&new), ["chat_files_chat_id", "messages_chat_id"]);
    assert!(indexes(&old).is_empty(), "the restore changed the backup");
    let doctor = run_cli(&new, &["doctor"], None);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{report}{}", stderr_of(&doctor));
    assert!(!report.contains("PROBLEM"), "{report}");
    assert_consistent(&rusqlite::Connection::open(&new).unwrap());
}

#[test]
fn a_restore_refuses_what_is_not_a_sound_backup_and_changes_nothing() {
    let (server, db, _token) = start_with_alice_and_bob(&[]);
    seed_chat(&db, "alice", "bob");
    let dir = server.dir.path();
    let backup = |name: &str| {
        let out = dir.join(name);
        let ran = run_cli(&server.db_path, &["backup", out.to_str().unwrap()], None);
        assert!(ran.status.success(), "{}", stderr_of(&ran));
        out
    };

    let orphans = backup("orphans.db");
    rusqlite::Connection::open(&orphans)
        .unwrap()
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO messages (chat_id, actor, message) VALUES (999, 'user', 'x');",
        )
        .unwrap();
    let big_pages = backup("big-pages.db");
    rusqlite::Connection::open(&big_pages)
        .unwrap()
        .execute_batch("PRAGMA page_size = 8192; VACUUM;")
        .unwrap();
    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
    let foreign = dir.join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    let missing = dir.join("missing.db");

    let folder = dir.join("backups");
    std::fs::create_dir(&folder).unwrap();
    // A sound backup, named as a directory would be: `cp` and SQLite take
    // that for no file, or for the file without the separator.
    let sound = backup("sound.db");
    let with_separator = PathBuf::from(format!("{}{MAIN_SEPARATOR}", sound.display()));
    let ends_in_separator = format!(
        "sound.db{MAIN_SEPARATOR}: a name that ends in {MAIN_SEPARATOR} is a directory's; \
         name the backup file, for example {}",
        sound.display()
    );
    let mut cases = vec![
        (missing.clone(), "missing.db does not exist"),
        (with_separator, ends_in_separator.as_str()),
        (server.db_path.clone(), "is the database itself"),
        (
            folder.clone(),
            "backups is a directory; name the backup file in it to restore from",
        ),
        (
            garbage,
            "garbage.db cannot be restored from: not an SQLite database, or one whose header is \
             damaged (sqlite: file is not a database); the database was left as it was",
        ),
        (
            foreign,
            "foreign.db cannot be restored from: this SQLite database is not a neptun-local one",
        ),
        (
            orphans,
            "orphans.db did not check out (orphaned rows: messages row",
        ),
        (
            big_pages,
            "the backup's pages are 8192 bytes and the database's 4096",
        ),
    ];
    // Read through its own name, the database's file comes without its
    // -wal: the chats deleted since the last checkpoint would come back.
    let hard_link = dir.join("hard-link.db");
    std::fs::hard_link(&server.db_path, &hard_link).unwrap();
    cases.push((hard_link, "hard-link.db is the database itself"));
    // SQLite said only "unable to open database file".
    #[cfg(unix)]
    let link_to_nothing = {
        let link = dir.join("link-to-nothing.db");
        std::os::unix::fs::symlink(dir.join("moved.db"), &link).unwrap();
        let message = format!(
            "link-to-nothing.db is a symbolic link to {}, which does not exist",
            dir.join("moved.db").display()
        );
        (link, message)
    };
    #[cfg(unix)]
    cases.push((link_to_nothing.0, link_to_nothing.1.as_str()));
    let before = listing(&server.db_path);
    for (from, message) in cases {
        let ran = run_cli(
            &server.db_path,
            &["restore", from.to_str().unwrap(), "--replace"],
            None,
        );
        assert_eq!(ran.status.code(), Some(1), "{from:?}: {}", stderr_of(&ran));
        assert!(stderr_of(&ran).contains(message), "{}", stderr_of(&ran));
        assert_eq!(listing(&server.db_path), before, "{from:?}");
    }
    assert!(!missing.exists());
    assert_consistent(&server.sql());

    // Refused for its backup, a restore into a new file makes none.
    let new = dir.join("new.db");
    let ran = run_cli(&new, &["restore", missing.to_str().unwrap()], None);
    assert!(stderr_of(&ran).contains("missing.db does not exist"));
    assert!(!new.exists());
}

/// A restore that fails after it made the new file (here, past a file
/// size limit) removes it, and its -wal and -shm: "the database was left
/// as it was" holds for a new file too. Through a link to a file not there
/// yet, the file made where the link leads goes; the link stays.
#[cfg(unix)]
#[test]
fn a_restore_that_fails_into_a_new_file_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.db");
    alice_with_a_chat(&backup, "Bulky");
    let db = Database::open(&backup, &db::Settings::default()).unwrap();
    db.add_chat("alice", "bulk", "test-model", 20_000).unwrap();
    drop(db);
    // Room for a new database's schema, not for the backup.
    let limit = 256 * 1024;
    let bytes = std::fs::metadata(&backup).unwrap().len();
    assert!(bytes > 2 * limit, "{bytes} bytes: the copy would fit");

    let new = dir.path().join("new.db");
    let link = dir.path().join("link-to-new.db");
    std::os::unix::fs::symlink(&new, &link).unwrap();
    for db_path in [&new, &link] {
        let ran =
            run_cli_with_file_size_limit(db_path, &["restore", backup.to_str().unwrap()], limit);
        assert_eq!(ran.status.code(), Some(1), "{}", stderr_of(&ran));
        assert!(
            stderr_of(&ran).contains("the restore failed, and the database was left as it was"),
            "{}",
            stderr_of(&ran)
        );
        // And what to do about it, as every command says.
        assert!(
            stderr_of(&ran).contains(db::FREE_SOME_SPACE),
            "{}",
            stderr_of(&ran)
        );
        for file in db::database_files(&new) {
            assert!(!file.exists(), "{file:?} was left");
        }
    }
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());

    // Without the limit, it is restored.
    let ran = run_cli(&link, &["restore", backup.to_str().unwrap()], None);
    assert!(ran.status.success(), "{}", stderr_of(&ran));
    assert_eq!(listing(&new), listing(&backup));
}

/// Deletes keep coming while a restore copies a larger backup in: each
/// gets a clean answer, and every chat ends up whole or gone, never half.
#[test]
fn deletes_racing_a_restore_get_clean_answers_and_leave_no_half_chat() {
    let (server, db, token) = start_with_alice_and_bob(&[]);
    let chats: Vec<SeededChat> = (0..400).map(|_| seed_chat(&db, "alice", "bob")).collect();
    // Bulk, so that copying it in takes a while.
    db.add_chat("bob", "bulk", "test-model", 50_000).unwrap();
    let out = server.dir.path().join("backup.db");
    let ran = run_cli(&server.db_path, &["backup", out.to_str().unwrap()], None);
    assert!(ran.status.success(), "{}", stderr_of(&ran));

    // Deletes from before the restore starts until after it ended.
    let restore_done = Arc::new(AtomicBool::new(false));
    let deleter = {
        let (addr, token, done) = (server.addr, token.clone(), Arc::clone(&restore_done));
        let paths: Vec<String> = chats
            .iter()
            .map(|c| format!("/api/users/alice/chats/{}", c.chat))
            .collect();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            let mut after = 0;
            for path in &paths {
                let answer = try_delete(addr, path, &token).expect("the server answers");
                statuses.push(answer.status);
                if done.load(Ordering::SeqCst) {
                    after += 1;
                    if after == 10 {
                        break;
                    }
                }
            }
            statuses
        })
    };
    let restored = run_cli(
        &server.db_path,
        &["restore", out.to_str().unwrap(), "--replace"],
        None,
    );
    restore_done.store(true, Ordering::SeqCst);
    let statuses = deleter.join().unwrap();
    assert!(restored.status.success(), "{}", stderr_of(&restored));
    assert!(statuses.len() < chats.len(), "the deletes ended first");
    // 503 if the copy held the lock longer than the busy timeout.
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );

    // Deleted before the restore: back, whole. After it: gone, whole.
    let conn = server.sql();
    assert_consistent(&conn);
    let mut back = 0;
    for chat in &chats[..statuses.len()] {
        let rows = remaining_rows(&conn, chat);
        if rows[0].1 == 1 {
            assert_fully_present(&conn, chat);
            back += 1;
        } else {
            assert_fully_gone(&conn, chat);
        }
    }
    eprintln!(
        "{} deletes, {back} of them before the restore",
        statuses.len()
    );
    assert!(back > 0, "no delete came before the restore");
    assert!(
        back < statuses.len() - 9,
        "no delete came after the restore"
    );
    for chat in &chats[statuses.len()..] {
        assert_fully_present(&conn, chat);
    }
}

/// A database with a chat of alice's (shared with bob) and her session,
/// backed up, with no connection left open, so that its file can be damaged.
struct BackedUp {
    dir: tempfile::TempDir,
    db_path: PathBuf,
    backup: PathBuf,
    chat: SeededChat,
    token: String,
}

fn backed_up_and_closed() -> BackedUp {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("neptun.db");
    let backup = dir.path().join("backup.db");
    let db = Database::open(&db_path, &db::Settings::default()).unwrap();
    add_user(&db, "alice");
    add_user(&db, "bob");
    let chat = seed_chat(&db, "alice", "bob");
    let token = login(&db, "alice");
    let ran = run_cli(&db_path, &["backup", backup.to_str().unwrap()], None);
    assert!(ran.status.success(), "{}", stderr_of(&ran));
    BackedUp {
        dir,
        db_path,
        backup,
        chat,
        token,
    }
}

/// Damage that keeps SQLite from reading the chats (a bad disk, a file
/// copied while it was written, a cloud folder's sync): `doctor` and the
/// server's log say what to do, and a restore under the running server
/// repairs it.
#[test]
fn a_damaged_database_says_what_to_do_and_a_restore_under_the_server_repairs_it() {
    let BackedUp {
        dir,
        db_path,
        backup,
        chat,
        token,
    } = backed_up_and_closed();
    damage(&db_path, &["chats", "chats_user_id"]);

    let out = run_cli(&db_path, &["doctor"], None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    for line in [
        "\nrows         could not be counted (sqlite: database disk image is malformed)\n",
        "\nPROBLEM      integrity_check failed: ",
        "\nTO REPAIR    `neptun-local restore BACKUP --replace` puts a backup's contents in \
         its place, even while a server runs (chats deleted since that backup come back)\n",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }

    // A backup cannot be taken of it, and says why.
    let second = dir.path().join("second.db");
    let out = run_cli(&db_path, &["backup", second.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains(
            "the backup failed: the database file is damaged (sqlite: database disk image is \
             malformed); `neptun-local doctor` says where"
        ),
        "{}",
        stderr_of(&out)
    );
    assert!(!second.exists());
    // Nor are orphans deleted from it: a damaged index can hide a parent.
    let out = run_cli(&db_path, &["doctor", "--delete-orphans"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("the file is damaged, so no orphan was deleted"),
        "{}",
        stderr_of(&out)
    );

    let server = TestServer::start_in(dir, db_path, &[]);
    let path = format!("/api/users/alice/chats/{}", chat.chat);
    server
        .delete(&path, &token)
        .assert_error(500, "Internal Server Error");
    server.log_with(&[
        "ERROR the database file is damaged, answering 500 (sqlite: database disk image is \
         malformed); `neptun-local doctor` says where, and how to repair it while the server \
         runs",
    ]);

    // What it held cannot be counted, so it is replaced only when asked to.
    let refused = run_cli(
        &server.db_path,
        &["restore", backup.to_str().unwrap()],
        None,
    );
    assert_eq!(refused.status.code(), Some(1), "{}", stderr_of(&refused));
    assert!(
        stderr_of(&refused).contains(
            "is damaged, too much to count what it holds; add --replace to put the backup's \
             2 user(s) and 1 chat(s) in its place"
        ),
        "{}",
        stderr_of(&refused)
    );
    let restored = run_cli(
        &server.db_path,
        &["restore", backup.to_str().unwrap(), "--replace"],
        None,
    );
    assert!(
        stderr_of(&restored).contains("in place of a damaged database; integrity and foreign"),
        "{}",
        stderr_of(&restored)
    );

    server.delete(&path, &token).assert_true();
    let sql = server.sql();
    assert_fully_gone(&sql, &chat);
    assert_consistent(&sql);
}

/// Damage to the schema on the file's first page keeps SQLite from opening
/// the file at all, so not even `restore` can replace its contents: every
/// command says to move it aside, and `restore` then writes a new file.
#[test]
fn a_database_too_damaged_to_open_says_to_move_it_aside_and_restore_into_a_new_one() {
    // Page 1: the file header's 100 bytes, then the schema's b-tree page.
    let damage = |file: &mut Vec<u8>, page_size| file[100..page_size].fill(0xFF);
    let advice = "the file is too damaged to be opened (sqlite: database disk image \
                  is malformed); move the file aside, with its -wal and -shm files if there \
                  are any, and `neptun-local restore BACKUP` writes a new one from a backup";
    moved_aside_and_restored(damage, advice);
}

/// A schema format number (header bytes 44-47) that no SQLite has: SQLite
/// said only "unsupported file format".
#[test]
fn a_database_whose_schema_format_is_unknown_says_to_move_it_aside_too() {
    let damage = |file: &mut Vec<u8>, _| file[47] = 9;
    let advice = "the file is too damaged to be opened (sqlite: unsupported file format); \
                  move the file aside, with its -wal and -shm files if there are any, and \
                  `neptun-local restore BACKUP` writes a new one from a backup";
    moved_aside_and_restored(damage, advice);
}

/// A write version (header byte 18) that SQLite does not know: SQLite
/// opens the file for reading only, without a word, and the server refused
/// it with only "SQLite could open the file for reading only". The rest of
/// the file is whole, so the advice copies it out, with every chat since
/// the last backup, rather than go back to that backup.
#[test]
fn a_database_whose_write_version_is_unknown_is_copied_out_whole() {
    let BackedUp {
        dir,
        db_path,
        token,
        ..
    } = backed_up_and_closed();
    let db = Database::open(&db_path, &db::Settings::default()).unwrap();
    let since_the_backup = seed_chat(&db, "alice", "bob");
    drop(db);
    let mut file = std::fs::read(&db_path).unwrap();
    file[18] = 9;
    std::fs::write(&db_path, &file).unwrap();

    let advice = "SQLite could open the file for reading only: its header gives a \
                  write version of 9 (byte 18), where SQLite knows 1 and 2, so the header is \
                  damaged (or a newer SQLite wrote the file). What it holds can still be read: \
                  `neptun-local --db ";
    for args in [&["serve", "--addr", "127.0.0.1:0"][..], &["doctor"]] {
        let out = run_cli(&db_path, args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        // doctor lists its problems on stdout.
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr_of(&out)
        );
        assert!(said.contains(advice), "{args:?}: {said}");
    }
    assert!(std::fs::read(&db_path).unwrap() == file, "the file changed");

    // The advice, followed: back up, move aside, restore.
    let copy = dir.path().join("copy.db");
    let out = run_cli(&db_path, &["backup", copy.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr_of(&out));
    moved_aside_and_restored_from(dir, db_path, &copy, &since_the_backup, &token);
}

/// Damage to the file header's first bytes, SQLite's "SQLite format 3",
/// makes the file one SQLite does not know: it said only "file is not a
/// database", and nothing of what to do.
#[test]
fn a_database_whose_header_is_damaged_says_to_move_it_aside_too() {
    let damage = |file: &mut Vec<u8>, _| file[..16].fill(b'x');
    let advice = "not an SQLite database, or one whose header is damaged (sqlite: \
                  file is not a database), and it was left as it was. Is --db right? If it \
                  names neptun-local's database, move the file aside, with its -wal and -shm \
                  files if there are any, and `neptun-local restore BACKUP` writes a new one \
                  from a backup";
    moved_aside_and_restored(damage, advice);
}

/// Damages a database's first page with `damage` (given the file and its
/// page size), checks that every command fails with `advice` after the
/// file's name and leaves the file as it was, then follows the advice. A
/// backup copied into place with `cp` (in rollback-journal mode, which the
/// commands that only read leave as it is) gets the same advice.
fn moved_aside_and_restored(damage: impl Fn(&mut Vec<u8>, usize), advice: &str) {
    let BackedUp {
        dir,
        db_path,
        backup,
        chat,
        token,
    } = backed_up_and_closed();
    let copied = dir.path().join("copied.db");
    std::fs::copy(&backup, &copied).unwrap();
    let page_size = first_page_of(&db_path, "users").len();
    let damaged: Vec<(&Path, Vec<u8>)> = [&db_path, &copied]
        .into_iter()
        .map(|path| {
            let mut file = std::fs::read(path).unwrap();
            damage(&mut file, page_size);
            std::fs::write(path, &file).unwrap();
            (path.as_path(), file)
        })
        .collect();

    let restore = ["restore", backup.to_str().unwrap(), "--replace"];
    let copy = dir.path().join("copy.db");
    for (path, file) in &damaged {
        let name = path.file_name().unwrap().to_str().unwrap();
        for args in [
            &["serve", "--addr", "127.0.0.1:0"][..],
            &["doctor"],
            &["chat", "list", "alice"],
            &["backup", copy.to_str().unwrap()],
            &restore,
        ] {
            let out = run_cli(path, args, None);
            assert_eq!(out.status.code(), Some(1), "{name} {args:?}");
            assert!(
                stderr_of(&out).contains(&format!("{name}: {advice}")),
                "{name} {args:?}: {}",
                stderr_of(&out)
            );
        }
        assert!(std::fs::read(path).unwrap() == *file, "{name} changed");
    }
    assert!(!copy.exists());

    moved_aside_and_restored_from(dir, db_path, &backup, &chat, &token);
}

/// Moves the database at `db_path` aside, as the advice says, restores
/// `from` into a new file in its place, and checks that a server started
/// on it deletes `chat`, whole.
fn moved_aside_and_restored_from(
    dir: tempfile::TempDir,
    db_path: PathBuf,
    from: &Path,
    chat: &SeededChat,
    token: &str,
) {
    std::fs::rename(&db_path, dir.path().join("neptun.db.damaged")).unwrap();
    let out = run_cli(&db_path, &["restore", from.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let server = TestServer::start_in(dir, db_path, &[]);
    server
        .delete(&format!("/api/users/alice/chats/{}", chat.chat), token)
        .assert_true();
    let sql = server.sql();
    assert_fully_gone(&sql, chat);
    assert_consistent(&sql);
}

/// A file-system snapshot (btrfs, ZFS, Time Machine) or a read-only mount
/// holds the database as a stopped server left it: in WAL mode, with no
/// `-shm` beside it, and none can be made there, which SQLite needs to read
/// a WAL database. Before, `restore` from it failed with "unable to open
/// database file", and the listings said the file could not be written;
/// so did `doctor` and `backup` until 2026-11-28. It is read as it is,
/// unless a `-wal` is beside it, which may hold commits that are not in
/// the file: those are read through a `-shm` that the snapshot caught too,
/// and cannot be read without one (leaving them out would restore less
/// than the snapshot holds).
#[cfg(unix)]
#[test]
fn a_stopped_servers_database_in_a_read_only_directory_is_read_by_every_command_that_reads() {
    use std::os::unix::fs::PermissionsExt;
    let set_mode = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    let snapshot = dir.path().join("snapshot");
    let restored = dir.path().join("restored");
    for made in [&snapshot, &restored] {
        std::fs::create_dir(made).unwrap();
    }
    set_mode(&restored, 0o777);

    // As a stopped server leaves it (named so that it must be escaped in
    // a URI), and with a -wal that holds a commit but no -shm, as a backup
    // tool that skips -shm files leaves a running server's database.
    let stopped = snapshot.join("stopped ?#%.db");
    let with_wal = snapshot.join("with-wal.db");
    alice_with_a_chat(&stopped, "In the snapshot");
    assert!(db::is_wal_file(&stopped));
    let live = dir.path().join("live.db");
    std::fs::copy(&stopped, &live).unwrap();
    let conn = rusqlite::Connection::open(&live).unwrap();
    conn.execute_batch(
        "PRAGMA wal_autocheckpoint = 0;
         INSERT INTO chats (user_id, name, model) VALUES ('alice', 'Only in the WAL', 'm');",
    )
    .unwrap();
    let wal = db::side_file(&with_wal, "-wal");
    std::fs::copy(&live, &with_wal).unwrap();
    std::fs::copy(db::side_file(&live, "-wal"), &wal).unwrap();
    // And one whose snapshot caught all three files.
    let caught = snapshot.join("caught.db");
    let caught_files = database_files(&caught);
    for (from, to) in database_files(&live).iter().zip(&caught_files) {
        std::fs::copy(from, to).unwrap();
    }
    drop(conn);
    for file in [&stopped, &with_wal, &wal].into_iter().chain(&caught_files) {
        set_mode(file, 0o644);
    }
    set_mode(&snapshot, 0o555);
    let listed_before = std::fs::read_dir(&snapshot).unwrap().count();

    let run = |db: &Path, args: &[&str]| {
        let out = without_root(neptun_local().arg("--db").arg(db).args(args))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr_of(&out),
        )
    };
    for (snapshotted, chats) in [
        (&stopped, &["In the snapshot"][..]),
        (&caught, &["In the snapshot", "Only in the WAL"]),
    ] {
        let (code, listed, err) = run(snapshotted, &["chat", "list", "alice"]);
        assert_eq!(code, Some(0), "{err}");
        for chat in chats {
            assert!(listed.contains(chat), "{listed}");
        }
        let name = snapshotted.file_name().unwrap().to_str().unwrap();
        let backup = restored.join(format!("backup of {name}"));
        let (code, _, err) = run(snapshotted, &["backup", backup.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{err}");
        let conn = db::open_read_only(&backup).unwrap();
        assert_eq!(column::<String>(&conn, "SELECT name FROM chats"), chats);

        let into = restored.join(snapshotted.file_name().unwrap());
        let (code, _, err) = run(&into, &["restore", snapshotted.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{err}");
        let conn = db::open_read_only(&into).unwrap();
        assert_eq!(column::<String>(&conn, "SELECT name FROM chats"), chats);
    }

    // Checked whole, with the missing write access as its one problem (bar
    // the mode that lets nobody read it here); a WAL database read as it is
    // is still reported as one. (Where a -shm is there, the outcome depends
    // on who runs it: SQLite writes through the -wal and -shm of a file's
    // owner, though it may make no file in the directory.)
    let (code, report, err) = run(&stopped, &["doctor"]);
    assert_eq!(code, Some(1), "{report}{err}");
    for fact in [
        "opened       read-only, as this user cannot write it",
        "journal_mode=wal",
        "integrity    ok",
        "foreign keys ok",
    ] {
        assert!(report.contains(fact), "{fact}: {report}");
    }
    let problems: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("PROBLEM"))
        .filter(|line| !line.contains("other users of this machine can open"))
        .collect();
    assert_eq!(problems.len(), 1, "{report}");
    // The file (run as nobody), or else the directory.
    let denied = "PROBLEM      permission denied: this user cannot ";
    assert!(problems[0].starts_with(denied), "{report}");
    assert!(
        problems[0].ends_with("(a server would refuse to start on it)"),
        "{report}"
    );

    let refused_into = restored.join("refused.db");
    let (code, _, err) = run(&refused_into, &["restore", with_wal.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    let wal_unread = format!(
        "{} is beside it, so a server may have the database open, or commits may be in that \
         file only; SQLite reads it only through a -shm file beside it, which it cannot make \
         here",
        wal.display()
    );
    assert!(
        err.contains(&format!(
            "{} cannot be restored from: {wal_unread}",
            with_wal.display()
        )),
        "{err}"
    );
    let advice = "If no server runs on it (in a snapshot, say), copy the database and its -wal \
                  file to a directory this user may write to, and name the copy";
    assert!(
        err.contains(&format!("{advice}; the database was left as it was")),
        "{err}"
    );
    assert!(!refused_into.exists());
    let (code, _, err) = run(&with_wal, &["chat", "list", "alice"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&wal_unread) && err.contains(advice), "{err}");

    // Nothing was made in the snapshot; opened so that it can be removed.
    assert_eq!(std::fs::read_dir(&snapshot).unwrap().count(), listed_before);
    set_mode(&snapshot, 0o755);
}

/// A backup whose one chat, carol's, is about 30 MB, so that each step of
/// a restore from it (checking the backup, copying it in, checking the
/// result) takes long enough to be stopped in.
#[cfg(unix)]
fn backup_of_a_30_mb_chat(dir: &Path) -> PathBuf {
    let source = dir.join("source.db");
    let db = Database::open(&source, &db::Settings::default()).unwrap();
    add_user(&db, "carol");
    add_user(&db, "dave");
    seed_chat(&db, "carol", "dave");
    drop(db);
    add_30_mb_to_the_last_chat(&rusqlite::Connection::open(&source).unwrap());
    let backup = dir.join("backup.db");
    let ran = run_cli(&source, &["backup", backup.to_str().unwrap()], None);
    assert!(ran.status.success(), "{}", stderr_of(&ran));
    backup
}

/// `neptun.db` in `dir`, made anew: alice's chat, and a user whose name is
/// to be erased from the files once a restore has replaced it.
#[cfg(unix)]
fn database_to_restore_into(dir: &Path) -> PathBuf {
    let db_path = dir.join("neptun.db");
    for file in db::database_files(&db_path) {
        let _ = std::fs::remove_file(file);
    }
    let db = Database::open(&db_path, &db::Settings::default()).unwrap();
    add_user(&db, "alice");
    add_user(&db, "bob");
    add_user(&db, "replaced-by-the-restore");
    seed_chat(&db, "alice", "bob");
    db_path
}

/// Polls every millisecond, for up to 10 s, until `ready`.
#[cfg(unix)]
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Ctrl+C (SIGINT), SIGTERM or SIGHUP during a restore ends it with 130
/// and says where it stopped. Before the copy commits (while the backup is
/// checked, or halfway through the copy), the database is as it was (a
/// new file is removed again); after, the backup is in place, what it
/// replaced is erased from the files, and `doctor` finds it sound. Before,
/// the signal killed the command, which said nothing of which of the two
/// it had left.
#[cfg(unix)]
#[test]
fn a_restore_stopped_by_a_signal_says_whether_the_backup_was_copied_in() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let backup = backup_of_a_30_mb_chat(dir.path());
    let restore = |db_path: &Path| {
        neptun_local()
            .arg("--db")
            .arg(db_path)
            .args(["restore", "--replace"])
            .arg(&backup)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let carol_is_in = |db_path: &Path| {
        let conn = rusqlite::Connection::open_with_flags(
            db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.query_row("SELECT count(*) FROM users WHERE id = 'carol'", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
            == 1
    };
    let left_as_it_was = "neptun-local: error: stopped before the backup was copied in; \
                          the database was left as it was\n";

    // While the backup is checked: stopped, or killed before it listened
    // for signals, which it does before it reads anything.
    let db_path = database_to_restore_into(dir.path());
    let before = listing(&db_path);
    let child = restore(&db_path);
    std::thread::sleep(std::time::Duration::from_millis(30));
    signal(child.id(), libc::SIGTERM);
    let ran = child.wait_with_output().unwrap();
    match ran.status.code() {
        Some(130) => assert!(stderr_of(&ran).ends_with(left_as_it_was), "{ran:?}"),
        None => assert_eq!(ran.status.signal(), Some(libc::SIGTERM), "{ran:?}"),
        _ => panic!("{ran:?}: {}", stderr_of(&ran)),
    }
    assert_eq!(listing(&db_path), before);
    assert_consistent(&rusqlite::Connection::open(&db_path).unwrap());

    // Halfway through the copy: the pages it wrote are in the WAL (some
    // megabytes of them), uncommitted, and rolled back.
    let wal = db::side_file(&db_path, "-wal");
    let child = restore(&db_path);
    wait_until("the copy under way", || {
        std::fs::metadata(&wal).is_ok_and(|m| m.len() > 4 << 20)
    });
    assert!(
        !carol_is_in(&db_path),
        "the copy committed too soon to test"
    );
    signal(child.id(), libc::SIGINT);
    let ran = child.wait_with_output().unwrap();
    assert_eq!(ran.status.code(), Some(130), "{}", stderr_of(&ran));
    assert!(stderr_of(&ran).ends_with(left_as_it_was), "{ran:?}");
    assert_eq!(listing(&db_path), before);
    assert_consistent(&rusqlite::Connection::open(&db_path).unwrap());

    // The same into a file that was not there: the file goes again.
    let new = dir.path().join("new.db");
    let child = restore(&new);
    let new_wal = db::side_file(&new, "-wal");
    wait_until("the copy under way", || {
        std::fs::metadata(&new_wal).is_ok_and(|m| m.len() > 4 << 20)
    });
    signal(child.id(), libc::SIGINT);
    let ran = child.wait_with_output().unwrap();
    assert_eq!(ran.status.code(), Some(130), "{}", stderr_of(&ran));
    assert!(stderr_of(&ran).ends_with(left_as_it_was), "{ran:?}");
    for file in db::database_files(&new) {
        assert!(!file.exists(), "{file:?} was left");
    }

    // Once the copy has committed, while the result is checked.
    let child = restore(&db_path);
    wait_until("the copy committed", || carol_is_in(&db_path));
    signal(child.id(), libc::SIGHUP);
    let ran = child.wait_with_output().unwrap();
    assert_eq!(ran.status.code(), Some(130), "{}", stderr_of(&ran));
    assert!(
        stderr_of(&ran).ends_with(
            "neptun-local: error: stopped after the backup was copied in, before the \
             database was checked; run doctor to check it\n"
        ),
        "{ran:?}"
    );
    assert!(carol_is_in(&db_path));
    let users: Vec<String> = column(
        &rusqlite::Connection::open(&db_path).unwrap(),
        "SELECT id FROM users ORDER BY id",
    );
    assert_eq!(users, ["carol", "dave"]);
    assert!(!holds(&file_bytes(&db_path), "replaced-by-the-restore"));
    let doctor = run_cli(&db_path, &["doctor"], None);
    assert!(doctor.status.success(), "{}", stderr_of(&doctor));

    // And a restore left alone runs to its end.
    let db_path = database_to_restore_into(dir.path());
    let ran = restore(&db_path).wait_with_output().unwrap();
    assert!(ran.status.success(), "{}", stderr_of(&ran));
    assert!(carol_is_in(&db_path));
    assert!(!holds(&file_bytes(&db_path), "replaced-by-the-restore"));
}

/// A restore waits for the write lock while another connection holds it
/// (a `sqlite3` shell left in a transaction, another restore), for up to
/// the busy timeout. Ctrl+C during that wait ends it within a fraction of
/// a second, with the database as it was; before, the stop was heard only
/// once the wait was over, up to 5 s later. A lock given up during the
/// wait lets the restore go on, and one held for the whole wait ends it
/// with a clear error once the busy timeout (5 s) has passed.
#[cfg(unix)]
#[test]
fn a_restore_waiting_for_the_write_lock_hears_a_stop_at_once_and_goes_on_once_it_is_free() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let b = backed_up_and_closed();
    // So that a restore that ran shows: the backup does not hold this user.
    add_user(
        &Database::open(&b.db_path, &db::Settings::default()).unwrap(),
        "added-after-the-backup",
    );
    let before = listing(&b.db_path);
    assert!(before.contains("added-after-the-backup"), "{before}");
    let restore = || {
        neptun_local()
            .arg("--db")
            .arg(&b.db_path)
            .args(["restore", "--replace"])
            .arg(&b.backup)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let holder = rusqlite::Connection::open(&b.db_path).unwrap();
    // Long enough for the restore to have checked the small backup and to
    // be waiting for the lock, well within the busy timeout.
    let into_the_wait = Duration::from_millis(1500);

    // A stop during the wait.
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let child = restore();
    std::thread::sleep(into_the_wait);
    signal(child.id(), libc::SIGINT);
    let asked = Instant::now();
    let ran = child.wait_with_output().unwrap();
    let took = asked.elapsed();
    assert_eq!(ran.status.code(), Some(130), "{}", stderr_of(&ran));
    assert!(
        stderr_of(&ran).ends_with(
            "neptun-local: error: stopped before the backup was copied in; \
             the database was left as it was\n"
        ),
        "{ran:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the stop took {took:?} to be heard"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(listing(&b.db_path), before);

    // The lock held for the whole wait.
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let ran = restore().wait_with_output().unwrap();
    let took = started.elapsed();
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(ran.status.code(), Some(1), "{}", stderr_of(&ran));
    assert!(
        stderr_of(&ran).contains("another connection kept the database locked"),
        "{}",
        stderr_of(&ran)
    );
    // And what to do about it, as every command says.
    assert!(
        stderr_of(&ran).contains(db::END_THE_WRITE_TRANSACTION),
        "{}",
        stderr_of(&ran)
    );
    assert!(
        (Duration::from_millis(4500)..Duration::from_secs(20)).contains(&took),
        "gave up after {took:?}, not after the busy timeout of 5 s"
    );
    assert_eq!(listing(&b.db_path), before);

    // The lock given up during the wait.
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let child = restore();
    std::thread::sleep(into_the_wait);
    holder.execute_batch("ROLLBACK").unwrap();
    let ran = child.wait_with_output().unwrap();
    assert!(ran.status.success(), "{}", stderr_of(&ran));
    let after = listing(&b.db_path);
    assert!(!after.contains("added-after-the-backup"), "{after}");
    assert_consistent(&holder);
}
