//! Sessions end to end: minted by the CLI, stored only as hashes, expiring,
//! revocable, and never logged.

use std::time::Duration;

use crate::support::*;
use neptun_local::auth::Token;

fn cli_ok(server: &TestServer, args: &[&str], stdin: Option<&str>) -> String {
    let out = run_cli(&server.db_path, args, stdin);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn new_session_via_cli(server: &TestServer, user: &str, ttl: &str) -> String {
    let stdout = cli_ok(server, &["session", "new", user, "--ttl", ttl], None);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout must be the token alone: {stdout:?}");
    let token = lines[0].to_owned();
    assert!(Token::parse(&token).is_some(), "{token:?} is not a token");
    token
}

#[test]
fn a_token_from_session_new_authenticates_a_delete() {
    let server = TestServer::start();
    cli_ok(&server, &["user", "add", "alice", "--name", "Alice"], None);
    cli_ok(&server, &["user", "add", "bob"], None);
    let token = new_session_via_cli(&server, "alice", "7d");
    let chat = seed_chat(&server.db(), "alice", "bob");
    server
        .delete(&format!("/api/users/alice/chats/{}", chat.chat), &token)
        .assert_true();
    assert_fully_gone(&server.sql(), &chat);
}

#[test]
fn only_the_sha256_of_a_token_is_stored() {
    let server = TestServer::start();
    cli_ok(&server, &["user", "add", "alice"], None);
    let token = new_session_via_cli(&server, "alice", "7d");
    let sql = server.sql();
    let stored: Vec<u8> = sql
        .query_row(
            "SELECT token_hash FROM sessions WHERE user_id = 'alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, Token::parse(&token).unwrap().hash());

    // Not in any table, nor in any byte of the files (WAL included).
    let mut found_in = vec![];
    for entry in std::fs::read_dir(server.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if bytes.windows(token.len()).any(|w| w == token.as_bytes()) {
            found_in.push(path);
        }
    }
    assert!(found_in.is_empty(), "token text found in {found_in:?}");
}

#[test]
fn session_new_honours_the_ttl() {
    let server = TestServer::start();
    cli_ok(&server, &["user", "add", "alice"], None);
    new_session_via_cli(&server, "alice", "90s");
    new_session_via_cli(&server, "alice", "2h");
    let lifetimes: Vec<i64> = column(
        &server.sql(),
        "SELECT expires_at - created_at FROM sessions ORDER BY 1",
    );
    assert_eq!(lifetimes, [90, 7200]);
}

#[test]
fn a_revoked_session_no_longer_authenticates() {
    let server = TestServer::start();
    cli_ok(&server, &["user", "add", "alice"], None);
    cli_ok(&server, &["user", "add", "bob"], None);
    let by_argument = new_session_via_cli(&server, "alice", "7d");
    let by_stdin = new_session_via_cli(&server, "alice", "7d");
    let chat = seed_chat(&server.db(), "alice", "bob");
    let path = format!("/api/users/alice/chats/{}", chat.chat);

    cli_ok(&server, &["session", "revoke", &by_argument], None);
    cli_ok(
        &server,
        &["session", "revoke", "-"],
        Some(&format!("{by_stdin}\n")),
    );
    for token in [&by_argument, &by_stdin] {
        server
            .delete(&path, token)
            .assert_error(401, "Unauthorized");
    }
    assert_fully_present(&server.sql(), &chat);

    // Revoking again fails: there is nothing left to revoke.
    let out = run_cli(&server.db_path, &["session", "revoke", &by_argument], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no session has that token"));
}

/// `session revoke -` at a terminal says what it waits for: silent, it
/// seemed to hang. Read from a pipe, the token needs no word.
#[cfg(unix)]
#[test]
fn session_revoke_from_a_terminal_asks_for_the_token() {
    use std::io::Write;
    use std::process::Stdio;

    let server = TestServer::start();
    cli_ok(&server, &["user", "add", "alice"], None);
    let at_terminal = new_session_via_cli(&server, "alice", "7d");
    let from_pipe = new_session_via_cli(&server, "alice", "7d");

    let (mut terminal, its_other_end) = open_terminal();
    let child = neptun_local()
        .arg("--db")
        .arg(&server.db_path)
        .args(["session", "revoke", "-"])
        .stdin(its_other_end)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    terminal
        .write_all(format!("{at_terminal}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        stderr_of(&out),
        "session token (paste it, then press Enter): session revoked\n"
    );

    let out = run_cli(
        &server.db_path,
        &["session", "revoke", "-"],
        Some(&format!("{from_pipe}\n")),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stderr_of(&out), "session revoked\n");
}

/// A pseudo-terminal: the end a terminal emulator holds, and the one a
/// program run in it reads.
#[cfg(unix)]
fn open_terminal() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;

    // SAFETY: plain calls on a descriptor this function owns; ptsname's
    // static buffer is copied at once, and no other test calls it.
    let (terminal, name) = unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let terminal = std::fs::File::from_raw_fd(fd);
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let name = libc::ptsname(fd);
        assert!(!name.is_null());
        let name = std::ffi::CStr::from_ptr(name).to_bytes().to_vec();
        (terminal, name)
    };
    let other_end = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(std::ffi::OsStr::from_bytes(&name))
        .unwrap();
    (terminal, other_end)
}

/// `revoke --user` signs a user out everywhere without their tokens (after
/// a restore, say, which brings back sessions revoked since).
#[test]
fn all_of_a_users_sessions_can_be_revoked_at_once() {
    let (server, db, first) = start_with_alice_and_bob(&[]);
    let second = login(&db, "alice");
    let bobs = login(&db, "bob");
    let alices_chat = seed_chat(&db, "alice", "bob");
    let bobs_chat = seed_chat(&db, "bob", "alice");

    let out = run_cli(
        &server.db_path,
        &["session", "revoke", "--user", "alice"],
        None,
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("revoked 2 session(s) of user \"alice\""));
    for token in [&first, &second] {
        server
            .delete(
                &format!("/api/users/alice/chats/{}", alices_chat.chat),
                token,
            )
            .assert_error(401, "Unauthorized");
    }
    assert_fully_present(&server.sql(), &alices_chat);
    server
        .delete(&format!("/api/users/bob/chats/{}", bobs_chat.chat), &bobs)
        .assert_true();
}

/// A delete is authenticated when it arrives, but may wait for its turn to
/// write (here behind another process's write lock, as behind a `restore`
/// or a `backup`'s commit). A session revoked in the meantime must delete
/// nothing: once `session revoke` (or `user remove`, or a `restore`) has
/// returned, its token deletes nothing more. It used to delete the chat
/// and answer `200`.
#[test]
fn a_session_revoked_while_its_delete_waits_deletes_nothing() {
    let (server, db, token) = start_with_alice_and_bob(&[]);
    let chat = seed_chat(&db, "alice", "bob");
    let path = format!("/api/users/alice/chats/{}", chat.chat);
    let mut locker = server.sql();
    let revoke = locker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    std::thread::scope(|s| {
        let waiting = s.spawn(|| server.delete(&path, &token));
        // Authenticated at once (a read), then waiting for the write lock,
        // which the busy timeout (5 s) lets it do.
        std::thread::sleep(Duration::from_millis(500));
        assert!(!waiting.is_finished(), "the delete waits for the lock");
        let hash = Token::parse(&token).unwrap().hash();
        let revoked = revoke
            .execute("DELETE FROM sessions WHERE token_hash = ?1", [&hash[..]])
            .unwrap();
        assert_eq!(revoked, 1);
        revoke.commit().unwrap();
        waiting.join().unwrap().assert_error(401, "Unauthorized");
    });
    assert_fully_present(&locker, &chat);
    assert_consistent(&locker);
    // The log line says why, for the person who ran the revoke.
    let line = format!("DELETE {path} 401 ");
    let log = server.log_with(&[&line]);
    assert!(
        log.lines().any(|l| l.contains(&line)
            && l.contains("revoked, expired or its user removed while the delete waited")),
        "{log}"
    );
}

#[test]
fn tokens_and_cookies_never_reach_the_logs() {
    let (server, db, token) = start_with_alice_and_bob(&["--log-level", "trace"]);
    let unknown = "f".repeat(64);
    let chat = seed_chat(&db, "alice", "bob");
    let path = format!("/api/users/alice/chats/{}", chat.chat);

    server.delete(&path, &token).assert_true(); // 200
    server.delete(&path, &token).assert_error(404, "Not Found");
    server
        .delete(&path, &unknown)
        .assert_error(401, "Unauthorized");
    server.delete("/api/users/alice/chats/x?neptun-session=zzz", &token);
    let out = run_cli(
        &server.db_path,
        &["--log-level", "trace", "session", "revoke", &token],
        None,
    );
    assert!(out.status.success());

    let logs = format!(
        "{}{}",
        server.log_with(&["DELETE /api/users/alice/chats/x "]),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.contains(&format!("DELETE {path} 200")),
        "requests are logged: {logs}"
    );
    // An error's line says why, in the API's own words, and then in the
    // log's own (a 401 is told apart there only).
    for (status, reason) in [
        (404, "Chat not found: no chat has this id"),
        (401, "Invalid or expired session: no session has this token"),
    ] {
        assert!(
            logs.lines()
                .any(|l| l.contains(&format!("DELETE {path} {status} "))
                    && l.contains(&format!("ms ({reason}"))),
            "the {status} is logged with its reason: {logs}"
        );
    }
    for secret in [token.as_str(), unknown.as_str(), "neptun-session", "zzz"] {
        assert!(
            !logs.contains(secret),
            "{secret:?} appears in the logs:\n{logs}"
        );
    }
}
