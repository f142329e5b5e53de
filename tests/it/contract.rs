//! One test per row of the contract table, over real HTTP.

use crate::support::*;

/// alice owns two chats, bob owns one; alice is logged in.
struct World {
    server: TestServer,
    alice: String,
    chat: SeededChat,
    other_chat: SeededChat,
    bobs_chat: SeededChat,
}

fn world_with(args: &[&str]) -> World {
    let (server, db, alice) = start_with_alice_and_bob(args);
    World {
        alice,
        chat: seed_chat(&db, "alice", "bob"),
        other_chat: seed_chat(&db, "alice", "bob"),
        bobs_chat: seed_chat(&db, "bob", "alice"),
        server,
    }
}

fn world() -> World {
    world_with(&[])
}

fn chat_path(user: &str, chat: i64) -> String {
    format!("/api/users/{user}/chats/{chat}")
}

#[test]
fn deleting_an_own_chat_answers_true_and_removes_everything_hanging_off_it() {
    let w = world();
    w.server
        .delete(&chat_path("alice", w.chat.chat), &w.alice)
        .assert_true();

    let sql = w.server.sql();
    assert_fully_gone(&sql, &w.chat);
    assert_fully_present(&sql, &w.other_chat);
    assert_fully_present(&sql, &w.bobs_chat);
    assert_consistent(&sql);
}

#[test]
fn deleting_the_same_chat_again_is_404_chat_not_found() {
    let w = world();
    let path = chat_path("alice", w.chat.chat);
    w.server.delete(&path, &w.alice).assert_true();
    let again = w.server.delete(&path, &w.alice);
    assert_eq!(
        again.text(),
        r#"{"statusCode":404,"statusMessage":"Not Found","data":{"message":"Chat not found"}}"#
    );
    assert_eq!(again.assert_error(404, "Not Found"), "Chat not found");
}

#[test]
fn a_missing_chat_and_another_users_chat_get_byte_identical_404s() {
    let w = world();
    let missing = w.server.delete(&chat_path("alice", 999_999), &w.alice);
    let foreign = w
        .server
        .delete(&chat_path("alice", w.bobs_chat.chat), &w.alice);
    assert_eq!(missing.assert_error(404, "Not Found"), "Chat not found");
    assert_eq!(
        (missing.status, &missing.body),
        (foreign.status, &foreign.body)
    );
    assert_fully_present(&w.server.sql(), &w.bobs_chat);
    // Only the log tells them apart, for whoever wonders why.
    let log = w.server.log_with(&[&format!(
        "DELETE /api/users/alice/chats/{} 404",
        w.bobs_chat.chat
    )]);
    let foreign_line = format!("DELETE /api/users/alice/chats/{} 404 ", w.bobs_chat.chat);
    assert!(
        log_line(&log, "DELETE /api/users/alice/chats/999999 404 ")
            .ends_with("(Chat not found: no chat has this id: deleted already, or never made)"),
        "{log}"
    );
    assert!(
        log_line(&log, &foreign_line).ends_with("(Chat not found: the chat is another user's)"),
        "{log}"
    );
}

#[test]
fn a_path_user_other_than_the_session_user_is_404_user_not_found() {
    let w = world();
    // Bob's own chat, addressed through bob's path, with alice's session.
    let r = w
        .server
        .delete(&chat_path("bob", w.bobs_chat.chat), &w.alice);
    assert_eq!(r.assert_error(404, "Not Found"), "User not found");
    let r = w.server.delete(&chat_path("nobody", w.chat.chat), &w.alice);
    assert_eq!(r.assert_error(404, "Not Found"), "User not found");
    // The log says why, for whoever reads it wondering.
    let line = "(User not found: the session is another user's)";
    let log = w
        .server
        .log_with(&[&format!("DELETE /api/users/nobody/chats/{}", w.chat.chat)]);
    assert_eq!(log.matches(line).count(), 2, "{log}");
    let sql = w.server.sql();
    assert_fully_present(&sql, &w.bobs_chat);
    assert_fully_present(&sql, &w.chat);
}

#[test]
fn every_kind_of_bad_session_is_401_and_deletes_nothing() {
    let w = world();
    let db = w.server.db();
    let expired = expired_session(&db, "alice");
    let revoked = login(&db, "alice");
    let hash = neptun_local::auth::Token::parse(&revoked).unwrap().hash();
    assert!(db.delete_session(&hash).unwrap());
    add_user(&db, "carol");
    let carols = login(&db, "carol");
    db.with_connection(|c| Ok(c.execute("DELETE FROM users WHERE id = 'carol'", [])?))
        .unwrap();
    let unknown = "0".repeat(64);
    let conflicting = format!("neptun-session={}; neptun-session={unknown}", w.alice);

    let path = chat_path("alice", w.chat.chat);
    let missing = "Missing session cookie";
    let invalid = "Invalid or expired session";
    let session = |token: &str| Some(format!("neptun-session={token}"));
    // The client is told only `missing` or `invalid`; the log says why.
    let unknown_why = "no session has this token";
    let not_a_token = "the cookie is not a token";
    // (case, Cookie header, expected message, what the log line adds)
    let cases = [
        ("no Cookie header", None, missing, ""),
        (
            "other cookies only",
            Some("theme=dark; lang=en".to_owned()),
            missing,
            "",
        ),
        ("unknown token", session(&unknown), invalid, unknown_why),
        (
            "malformed token",
            session("not-a-token"),
            invalid,
            not_a_token,
        ),
        ("empty token", session(""), invalid, not_a_token),
        (
            "expired session",
            session(&expired),
            invalid,
            "the session has expired",
        ),
        ("revoked session", session(&revoked), invalid, unknown_why),
        ("deleted user", session(&carols), invalid, unknown_why),
        (
            "two different values",
            Some(conflicting),
            invalid,
            "two different session cookies",
        ),
    ];
    for (case, cookie, expected, _) in &cases {
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
        let r = w.server.request("DELETE", &path, &headers);
        assert_eq!(r.assert_error(401, "Unauthorized"), *expected, "{case}");
        assert!(r.header("WWW-Authenticate").is_some(), "{case}");
        // The server never sets the cookie, so it never clears it either:
        // on localhost, another app in development may use the same name.
        assert_eq!(r.header("Set-Cookie"), None, "{case}");
    }
    // One log line per request, in order, each with its cause.
    let log = w.server.log_with(&["two different session cookies"]);
    let reasons: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("DELETE {path} 401 ")))
        .map(|l| l.split_once("ms (").map_or(l, |(_, reason)| reason))
        .collect();
    assert_eq!(reasons.len(), cases.len(), "{log}");
    for ((case, _, expected, why), reason) in cases.iter().zip(&reasons) {
        let wanted = match why {
            &"" => format!("{expected})"),
            why => format!("{expected}: {why}"),
        };
        assert!(reason.starts_with(&wanted), "{case}: {reason}");
    }
    let sql = w.server.sql();
    assert_fully_present(&sql, &w.chat);
    assert_consistent(&sql);
}

#[test]
fn a_missing_cookie_is_explained_in_the_log_by_where_the_call_came_from() {
    let w = world_with(&["--allow-origin", "http://localhost:3000"]);
    let path = chat_path("alice", w.chat.chat);
    let fetch_hint = "fetch sends cookies only with credentials: 'include'";
    let set_it_hint = "the browser holds none for the page's host name";
    // (Sec-Fetch-Site, with the Origin a browser sends, and the hint).
    let cases = [
        // A page on localhost:3000 whose fetch leaves out
        // `credentials: 'include'`.
        (Some("same-site"), fetch_hint),
        (Some("cross-site"), fetch_hint),
        // A page calling through its dev server's proxy, in a browser that
        // has no cookie set for it.
        (Some("same-origin"), set_it_hint),
        // curl: nothing to say.
        (None, ""),
    ];
    for (site, _) in cases {
        let mut headers = vec![("Origin", "http://localhost:3000")];
        headers.extend(site.map(|s| ("Sec-Fetch-Site", s)));
        let r = w.server.request("DELETE", &path, &headers);
        let expected = "Missing session cookie";
        assert_eq!(r.assert_error(401, "Unauthorized"), expected, "{site:?}");
    }
    let line = format!("DELETE {path} 401 ");
    let log = w.server.log_with_count(&line, cases.len());
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&line)).collect();
    assert_eq!(lines.len(), cases.len(), "{log}");
    for (line, (site, hint)) in lines.iter().zip(cases) {
        match hint {
            "" => assert!(
                line.ends_with("(Missing session cookie)"),
                "{site:?}: {line}"
            ),
            hint => assert!(
                line.contains("(Missing session cookie: ") && line.contains(hint),
                "{site:?}: {line}"
            ),
        }
    }
    assert_fully_present(&w.server.sql(), &w.chat);
}

#[test]
fn authentication_comes_before_anything_about_ids() {
    let w = world();
    // Without a session, an invalid id, a foreign user and a foreign chat all
    // look the same: 401.
    for path in [
        "/api/users/alice/chats/abc".to_owned(),
        chat_path("bob", w.bobs_chat.chat),
        chat_path("alice", w.bobs_chat.chat),
        chat_path("alice", 999_999),
    ] {
        let r = w.server.request("DELETE", &path, &[]);
        assert_eq!(
            r.assert_error(401, "Unauthorized"),
            "Missing session cookie",
            "{path}"
        );
    }
}

#[test]
fn a_chat_id_that_is_not_a_positive_i64_is_400() {
    let w = world();
    for id in [
        "abc",
        "0",
        "-1",
        "1.5",
        "1e3",
        "12345678901234567890",
        "9223372036854775808",
        "01",
        "+1",
        "%20",
    ] {
        let r = w
            .server
            .delete(&format!("/api/users/alice/chats/{id}"), &w.alice);
        assert_eq!(
            r.assert_error(400, "Bad Request"),
            "Chat id must be a positive integer",
            "{id}"
        );
    }
    // An empty id: the one trailing slash is dropped, the empty segment stays.
    let r = w.server.delete("/api/users/alice/chats//", &w.alice);
    assert_eq!(
        r.assert_error(400, "Bad Request"),
        "Chat id must be a positive integer"
    );
    assert_fully_present(&w.server.sql(), &w.chat);
}

#[test]
fn path_segments_are_percent_decoded_once_and_the_query_and_a_trailing_slash_are_ignored() {
    let server = TestServer::start();
    let db = server.db();
    let user = "a/b c%";
    add_user(&db, user);
    add_user(&db, "friend");
    let token = login(&db, user);
    let encoded = "a%2Fb%20c%25";
    let chats: Vec<SeededChat> = (0..4).map(|_| seed_chat(&db, user, "friend")).collect();

    // %2F decodes to a '/' inside the user id, not to a separator.
    server
        .delete(
            &format!("/api/users/{encoded}/chats/{}", chats[0].chat),
            &token,
        )
        .assert_true();
    server
        .delete(
            &format!("/api/users/{encoded}/chats/{}/", chats[1].chat),
            &token,
        )
        .assert_true();
    server
        .delete(
            &format!("/api/users/{encoded}/chats/{}?force=1&x=/y", chats[2].chat),
            &token,
        )
        .assert_true();
    // The chat id may be percent-encoded too ("%3N" is the digit N).
    let id = chats[3].chat.to_string();
    let encoded_id: String = id.bytes().map(|b| format!("%{b:02X}")).collect();
    server
        .delete(&format!("/api/users/{encoded}/chats/{encoded_id}"), &token)
        .assert_true();

    // Decoding happens once: "%252F" is the literal text "%2F", a different user.
    let r = server.delete(
        &format!("/api/users/a%252Fb%20c%25/chats/{}", chats[0].chat),
        &token,
    );
    assert_eq!(r.assert_error(404, "Not Found"), "User not found");
    // A real '/' splits the user id, so the path no longer matches the route.
    let r = server.delete(
        &format!("/api/users/a/b%20c%25/chats/{}", chats[0].chat),
        &token,
    );
    assert_eq!(r.assert_error(404, "Not Found"), "Route not found");

    let sql = server.sql();
    for chat in &chats {
        assert_fully_gone(&sql, chat);
    }
    assert_consistent(&sql);
}

#[test]
fn other_methods_on_the_route_are_405_with_allow() {
    let w = world();
    let path = chat_path("alice", w.chat.chat);
    let cookie = format!("neptun-session={}", w.alice);
    for method in ["GET", "POST", "PUT", "PATCH", "delete", "TRACE"] {
        let r = w.server.request(
            method,
            &path,
            &[("Cookie", &cookie), ("X-HTTP-Method-Override", "DELETE")],
        );
        r.assert_error(405, "Method Not Allowed");
        assert_eq!(r.header("Allow"), Some("DELETE, OPTIONS"), "{method}");
    }
    let head = w.server.request("HEAD", &path, &[("Cookie", &cookie)]);
    assert_eq!(
        (head.status, head.header("Allow")),
        (405, Some("DELETE, OPTIONS"))
    );
    // OPTIONS that is not a CORS preflight says what the route supports.
    let options = w.server.request("OPTIONS", &path, &[("Cookie", &cookie)]);
    assert_eq!(
        (options.status, options.header("Allow")),
        (204, Some("DELETE, OPTIONS"))
    );
    assert!(options.body.is_empty());
    // tiny_http adds one to every answer; RFC 9110 §8.6 forbids it here.
    assert_eq!(options.header("Content-Length"), None, "{options:?}");
    assert_fully_present(&w.server.sql(), &w.chat);
}

/// A `204`, written out without tiny_http's `respond`, leaves a keep-alive
/// connection as `respond` does: the next request on it is answered.
#[test]
fn a_connection_serves_on_after_a_204() {
    use std::io::{BufReader, Write};
    let w = world();
    let path = chat_path("alice", w.chat.chat);
    let mut stream = std::net::TcpStream::connect(w.server.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let host = w.server.addr;
    let requests = format!(
        "OPTIONS {path} HTTP/1.1\r\nHost: {host}\r\n\r\n\
         DELETE {path} HTTP/1.1\r\nHost: {host}\r\nCookie: neptun-session={}\r\n\r\n",
        w.alice
    );
    stream.write_all(requests.as_bytes()).unwrap();
    let mut stream = BufReader::new(stream);
    let options = read_response(&mut stream).unwrap();
    assert_eq!(
        (options.status, options.header("Content-Length")),
        (204, None),
        "{options:?}"
    );
    read_response(&mut stream).unwrap().assert_true();
    assert_fully_gone(&w.server.sql(), &w.chat);
}

#[test]
fn any_other_path_is_404_route_not_found() {
    let w = world();
    for path in [
        "/",
        "/api",
        "/api/users/alice/chats",
        "/api/users/alice/chats/1/messages",
        "/API/users/alice/chats/1",
        "/api//users/alice/chats/1",
        "/api/users/alice/chat/1",
    ] {
        let r = w.server.delete(path, &w.alice);
        assert_eq!(
            r.assert_error(404, "Not Found"),
            "Route not found",
            "{path}"
        );
    }
    // The log names the route there is, for a front end whose other API
    // calls come here too.
    let line = "DELETE /api/users/alice/chat/1 404";
    let log = w.server.log_with(&[line]);
    assert!(
        log.lines().any(|l| l.contains(line)
            && l.ends_with("(Route not found: this server has only DELETE /api/users/{user_id}/chats/{chat_id})")),
        "{log}"
    );
}

#[test]
fn a_database_locked_beyond_the_busy_timeout_is_503_and_a_retry_succeeds() {
    let w = world_with(&["--busy-timeout", "200ms"]);
    let path = chat_path("alice", w.chat.chat);
    let mut locker = w.server.sql();
    let tx = locker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();

    let r = w.server.delete(&path, &w.alice);
    assert_eq!(
        r.assert_error(503, "Service Unavailable"),
        "The database is busy; retry shortly"
    );
    assert_eq!(r.header("Retry-After"), Some("1"));
    // The log says what most often holds the lock that long.
    w.server.log_with(&[
        "WARN  database busy, answering 503: database is locked; if every \
         delete gets this, another program keeps a write transaction open (a `sqlite3` shell, \
         or a database browser with unsaved changes): end it",
    ]);

    tx.rollback().unwrap();
    assert_fully_present(&locker, &w.chat);
    w.server.delete(&path, &w.alice).assert_true();
    assert_fully_gone(&locker, &w.chat);
    assert_consistent(&locker);
}

/// The busy timeout is how long a request waits for the database; it also
/// bounded how long start-up waited for the pool to open its connections,
/// so `--busy-timeout 1ms` failed to start with "database busy: timed out
/// waiting for connection", with nothing locked.
#[test]
fn the_shortest_busy_timeout_starts_serves_and_answers_503_to_a_lock() {
    let w = world_with(&["--busy-timeout", "1ms"]);
    let mut locker = w.server.sql();
    let tx = locker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let path = chat_path("alice", w.chat.chat);
    w.server
        .delete(&path, &w.alice)
        .assert_error(503, "Service Unavailable");
    tx.rollback().unwrap();
    w.server.delete(&path, &w.alice).assert_true();
    assert_fully_gone(&locker, &w.chat);
    assert_consistent(&locker);
}

/// A write transaction left open by another process (an sqlite3 shell)
/// holds up only writes. Every start and every command used to take the
/// write lock to check the schema, so the server would not start, and
/// `doctor` or `user list` failed with "database is locked".
#[test]
fn a_write_lock_held_elsewhere_holds_up_only_the_writes() {
    let w = world();
    let path = chat_path("alice", w.chat.chat);
    let mut locker = w.server.sql();
    let tx = locker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();

    for args in [
        &["doctor"][..],
        &["user", "list"],
        &["session", "list", "alice"],
    ] {
        let out = run_cli(&w.server.db_path, args, None);
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    }
    let second = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        w.server.db_path.clone(),
        &["--busy-timeout", "200ms"],
    );
    second
        .delete(&path, &w.alice)
        .assert_error(503, "Service Unavailable");

    tx.rollback().unwrap();
    assert_fully_present(&locker, &w.chat);
    second.delete(&path, &w.alice).assert_true();
    assert_fully_gone(&locker, &w.chat);
    assert_consistent(&locker);
}

#[test]
fn any_other_database_failure_is_a_generic_500_with_the_cause_only_in_the_log() {
    let w = world();
    let secret = "internal-detail-7f3a";
    w.server
        .sql()
        .execute_batch(&format!(
            "CREATE TRIGGER refuse BEFORE DELETE ON chats BEGIN SELECT RAISE(ABORT, '{secret}'); END;"
        ))
        .unwrap();

    let r = w.server.delete(&chat_path("alice", w.chat.chat), &w.alice);
    assert_eq!(
        r.assert_error(500, "Internal Server Error"),
        "Internal server error"
    );
    assert!(!r.text().contains(secret));
    // The cause must be logged.
    w.server.log_with(&[secret]);
    let sql = w.server.sql();
    assert_fully_present(&sql, &w.chat);
    assert_consistent(&sql);
}

#[test]
fn sixteen_concurrent_deletes_of_one_chat_yield_exactly_one_true() {
    let w = world_with(&["--workers", "8"]);
    let path = chat_path("alice", w.chat.chat);
    let barrier = std::sync::Barrier::new(16);
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let r = w.server.delete(&path, &w.alice);
                    (r.status, r.text().to_owned())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wins = statuses
        .iter()
        .filter(|(s, b)| *s == 200 && b == "true")
        .count();
    let not_found = statuses
        .iter()
        .filter(|(s, b)| *s == 404 && b.contains("Chat not found"))
        .count();
    assert_eq!((wins, not_found), (1, 15), "{statuses:?}");
    let sql = w.server.sql();
    assert_fully_gone(&sql, &w.chat);
    assert_fully_present(&sql, &w.other_chat);
    assert_consistent(&sql);
}

#[test]
fn every_response_is_json_and_never_cached() {
    let w = world();
    let responses = [
        w.server.delete(&chat_path("alice", w.chat.chat), &w.alice),
        w.server.delete(&chat_path("alice", w.chat.chat), &w.alice),
        w.server.request("DELETE", "/nowhere", &[]),
        w.server.request("GET", &chat_path("alice", 1), &[]),
        w.server.request("DELETE", &chat_path("alice", 1), &[]),
        w.server.delete("/api/users/alice/chats/x", &w.alice),
    ];
    for r in &responses {
        assert_eq!(r.header("Content-Type"), Some("application/json"), "{r:?}");
        assert_eq!(r.header("Cache-Control"), Some("no-store"), "{r:?}");
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"), "{r:?}");
        r.json();
    }
}
