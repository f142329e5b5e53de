//! Hostile input and the browser, over raw TCP: DNS rebinding, CSRF, CORS,
//! framing, bodies, odd paths and cookies. Every case checks the exact
//! answer, that nothing was deleted, and that the server still serves.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;

/// What came back on one connection: every complete response, and whether
/// the server closed the connection (rather than keeping it open).
struct Exchange {
    responses: Vec<HttpResponse>,
    closed: bool,
}

/// Sends raw bytes and collects what comes back within `wait`.
fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Exchange {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false;
            }
            Err(_) => break true, // reset
        }
    };
    let mut responses = Vec::new();
    let mut rest = &raw[..];
    while let Some(r) = parse_response(rest, false) {
        let head = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        rest = &rest[head + r.body.len()..];
        responses.push(r);
    }
    Exchange { responses, closed }
}

/// alice (logged in) owns one chat; bob exists.
struct World {
    server: TestServer,
    token: String,
    chat: SeededChat,
}

impl World {
    fn new(args: &[&str]) -> World {
        let (server, db, token) = start_with_alice_and_bob(args);
        let chat = seed_chat(&db, "alice", "bob");
        World {
            server,
            token,
            chat,
        }
    }

    fn chat_path(&self) -> String {
        format!("/api/users/alice/chats/{}", self.chat.chat)
    }

    /// A DELETE of alice's chat with her cookie, plus `extra` header lines.
    fn raw_delete(&self, host: Option<&str>, extra: &str) -> Vec<u8> {
        let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
        format!(
            "DELETE {} HTTP/1.1\r\n{host}Cookie: neptun-session={}\r\nConnection: close\r\n{extra}\r\n",
            self.chat_path(),
            self.token
        )
        .into_bytes()
    }

    fn send(&self, bytes: &[u8]) -> Exchange {
        exchange(self.server.addr, bytes, Duration::from_secs(5))
    }

    /// The chat is untouched and an ordinary request is still answered.
    fn assert_unharmed(&self) {
        assert_fully_present(&self.server.sql(), &self.chat);
        let r = self
            .server
            .request("DELETE", "/api/users/alice/chats/999999", &[]);
        assert_eq!(r.status, 401, "the server must still serve: {r:?}");
    }
}

fn only_response(x: &Exchange) -> &HttpResponse {
    assert_eq!(x.responses.len(), 1, "expected exactly one response");
    &x.responses[0]
}

#[test]
fn hosts_outside_the_allowlist_are_refused_and_delete_nothing() {
    let w = World::new(&["--allowed-host", "myapp.test"]);
    let port = w.server.addr.port();
    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (Some("evil.example".into()), 403, "Host not allowed"),
        (
            Some("localhost.evil.example".into()),
            403,
            "Host not allowed",
        ),
        (
            Some(format!("evil.example:{port}")),
            403,
            "Host not allowed",
        ),
        (Some(String::new()), 403, "Host not allowed"),
        (Some(format!(":{port}")), 403, "Host not allowed"),
        (Some("sub.myapp.test".into()), 403, "Host not allowed"),
        (None, 400, "Missing Host header"),
    ];
    for (host, status, message) in &cases {
        let x = w.send(&w.raw_delete(host.as_deref(), ""));
        let r = only_response(&x);
        let reason = if *status == 403 {
            "Forbidden"
        } else {
            "Bad Request"
        };
        assert_eq!(r.assert_error(*status, reason), *message, "Host {host:?}");
    }
    // The log says what would be let in, for a developer who meant it.
    let hint = "(Host not allowed: this server answers to localhost, 127.0.0.1, ::1 and the \
                names given with --allowed-host)";
    let log = w.server.log_with_count(hint, 6);
    assert_eq!(log.matches(hint).count(), 6, "{log}");
    let duplicate = w.raw_delete(Some("localhost"), "Host: evil.example\r\n");
    assert_eq!(
        only_response(&w.send(&duplicate)).assert_error(400, "Bad Request"),
        "Duplicate Host header"
    );
    w.assert_unharmed();

    // Allowed names pass the check, with any port (and then fail auth,
    // without a cookie).
    for host in [
        "localhost".to_owned(),
        format!("LocalHost:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
        "127.0.0.1".into(),
        format!("[::1]:{port}"),
        format!("myapp.test:{port}"),
    ] {
        let raw = format!(
            "DELETE /api/users/alice/chats/1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            only_response(&w.send(raw.as_bytes())).status,
            401,
            "Host {host:?}"
        );
    }
    // HTTP/1.0 without Host is not a browser: it is served.
    let raw = format!(
        "DELETE {} HTTP/1.0\r\nCookie: neptun-session={}\r\n\r\n",
        w.chat_path(),
        w.token
    );
    only_response(&w.send(raw.as_bytes())).assert_true();
}

#[test]
fn foreign_origins_cannot_delete_and_method_overrides_are_ignored() {
    let w = World::new(&["--allow-origin", "http://localhost:3000"]);
    let port = w.server.addr.port();
    for (extra, message) in [
        ("Origin: http://evil.example\r\n", "Origin not allowed"),
        ("Origin: null\r\n", "Origin not allowed"),
        (
            &*format!("Origin: http://localhost:{}\r\n", port.wrapping_add(1)),
            "Origin not allowed",
        ),
        ("Origin: https://localhost:3000\r\n", "Origin not allowed"),
        (
            "Sec-Fetch-Site: cross-site\r\n",
            "Cross-site request not allowed",
        ),
        (
            "Origin: http://localhost:3000\r\nOrigin: http://evil.example\r\n",
            "Origin not allowed",
        ),
    ] {
        let x = w.send(&w.raw_delete(Some("localhost"), extra));
        assert_eq!(
            only_response(&x).assert_error(403, "Forbidden"),
            message,
            "{extra:?}"
        );
    }
    // Method overrides: a POST is a POST.
    let cookie = format!("neptun-session={}", w.token);
    for target in [w.chat_path(), format!("{}?_method=DELETE", w.chat_path())] {
        let r = w.server.request(
            "POST",
            &target,
            &[
                ("Cookie", &cookie),
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-Method-Override", "DELETE"),
            ],
        );
        r.assert_error(405, "Method Not Allowed");
    }
    w.assert_unharmed();

    // Our own origin may delete.
    let own = format!("Origin: http://localhost:{port}\r\nSec-Fetch-Site: same-origin\r\n");
    only_response(&w.send(&w.raw_delete(Some(&format!("localhost:{port}")), &own))).assert_true();
    assert_fully_gone(&w.server.sql(), &w.chat);
}

#[test]
fn a_front_ends_dev_server_proxy_may_delete_with_no_flags() {
    // No --allow-origin. A page that calls its own origin, where a dev
    // server (Vite, webpack, Nuxt) proxies to us, is marked same-origin by
    // the browser; an older browser's request through a proxy that passes
    // on Host carries an Origin that matches it. A page that calls us, or
    // the proxy, from elsewhere has neither.
    let w = World::new(&[]);
    let port = w.server.addr.port();
    let ours = format!("localhost:{port}");
    for (host, origin, site) in [
        (&*ours, "http://localhost:5173", Some("same-site")),
        (&*ours, "http://localhost:5173", None),
        ("localhost:5173", "http://localhost:3000", Some("same-site")),
        ("localhost:5173", "http://localhost:3000", None),
        ("localhost:5173", "http://evil.example", Some("cross-site")),
    ] {
        let site = site.map_or(String::new(), |s| format!("Sec-Fetch-Site: {s}\r\n"));
        let x = w.send(&w.raw_delete(Some(host), &format!("Origin: {origin}\r\n{site}")));
        assert_eq!(
            only_response(&x).assert_error(403, "Forbidden"),
            "Origin not allowed",
            "Host {host}, Origin {origin}, {site:?}"
        );
    }
    w.assert_unharmed();

    // A modern browser, through a proxy that sets Host to its target
    // (Vite's `'/api': 'http://127.0.0.1:7150'`).
    let proxied = "Origin: http://localhost:5173\r\nSec-Fetch-Site: same-origin\r\n";
    let x = w.send(&w.raw_delete(Some(&format!("127.0.0.1:{port}")), proxied));
    only_response(&x).assert_true();
    assert_fully_gone(&w.server.sql(), &w.chat);
    // An older browser, through a proxy that passes Host on: it gets past
    // the check to the (now missing) chat.
    let x = w.send(&w.raw_delete(Some("localhost:5173"), "Origin: http://localhost:5173\r\n"));
    assert_eq!(
        only_response(&x).assert_error(404, "Not Found"),
        "Chat not found"
    );
}

#[test]
fn cors_lets_an_allowed_front_end_delete_with_credentials_and_nobody_else() {
    let w = World::new(&[
        "--allow-origin",
        "http://localhost:3000,http://127.0.0.1:5173",
    ]);
    let preflight = |origin: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![
            ("Origin", origin),
            ("Access-Control-Request-Method", "DELETE"),
        ];
        headers.extend_from_slice(extra);
        w.server.request("OPTIONS", &w.chat_path(), &headers)
    };

    let r = preflight(
        "http://localhost:3000",
        &[("Access-Control-Request-Headers", "Content-Type, accept")],
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(r.header("Access-Control-Allow-Credentials"), Some("true"));
    assert_eq!(r.header("Access-Control-Allow-Methods"), Some("DELETE"));
    assert_eq!(
        r.header("Access-Control-Allow-Headers"),
        Some("content-type, accept")
    );
    assert_eq!(r.header("Access-Control-Max-Age"), Some("600"));
    assert_eq!(r.header("Vary"), Some("Origin"));
    assert_eq!(r.header("Access-Control-Allow-Private-Network"), None);
    assert!(r.body.is_empty());
    assert_eq!(r.header("Content-Length"), None, "{r:?}");
    // What tracing (Sentry's default on localhost, OpenTelemetry), axios's
    // CSRF header and a signing API client add without being asked.
    let added = "sentry-trace, baggage, traceparent, tracestate, authorization, x-xsrf-token";
    let r = preflight(
        "http://localhost:3000",
        &[("Access-Control-Request-Headers", added)],
    );
    assert_eq!(
        (r.status, r.header("Access-Control-Allow-Headers")),
        (204, Some(added))
    );

    let r = preflight(
        "http://127.0.0.1:5173",
        &[("Access-Control-Request-Private-Network", "true")],
    );
    assert_eq!(
        (r.status, r.header("Access-Control-Allow-Private-Network")),
        (204, Some("true"))
    );

    // Anyone else gets no CORS headers at all.
    for (origin, extra) in [
        ("http://evil.example", &[][..]),
        ("http://localhost:3001", &[][..]),
        (
            "http://localhost:3000",
            &[("Access-Control-Request-Headers", "x-evil")][..],
        ),
    ] {
        let r = preflight(origin, extra);
        r.assert_error(403, "Forbidden");
        assert_eq!(
            r.header("Access-Control-Allow-Credentials"),
            None,
            "{origin} {extra:?}"
        );
        assert_eq!(
            r.header("Access-Control-Allow-Origin"),
            None,
            "{origin} {extra:?}"
        );
    }
    let r = w.server.request(
        "OPTIONS",
        &w.chat_path(),
        &[
            ("Origin", "http://localhost:3000"),
            ("Access-Control-Request-Method", "GET"),
        ],
    );
    r.assert_error(403, "Forbidden");
    // The allowed front end's refusals are logged with their reason, for
    // its developer. So is a page on another loopback port, with the flag
    // that would let it in; a foreign origin's refusal is not worth a line.
    let logs = w.server.log_with(&[
        "this server accepts no request headers x-evil",
        "this server accepts no method GET",
        "preflight from http://localhost:3001",
    ]);
    for reason in ["request headers x-evil", "method GET"] {
        let line = format!(
            "WARN  refused a CORS preflight from http://localhost:3000: \
             this server accepts no {reason}"
        );
        assert!(logs.contains(&line), "no {line:?} in:\n{logs}");
    }
    assert!(
        !logs.contains("preflight from http://evil.example"),
        "{logs}"
    );
    assert!(
        logs.contains(
            "refused a CORS preflight from http://localhost:3001, an origin not allowed; \
             if that is your front end, start the server with --allow-origin http://localhost:3001"
        ),
        "{logs}"
    );

    // The real request from the allowed front end.
    let cookie = format!("neptun-session={}", w.token);
    let r = w.server.request(
        "DELETE",
        &w.chat_path(),
        &[
            ("Cookie", &cookie),
            ("Origin", "http://localhost:3000"),
            ("Sec-Fetch-Site", "same-site"),
        ],
    );
    r.assert_true();
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(r.header("Access-Control-Allow-Credentials"), Some("true"));
    assert_eq!(r.header("Vary"), Some("Origin"));
    let r = w.server.request(
        "DELETE",
        &w.chat_path(),
        &[("Cookie", &cookie), ("Origin", "http://localhost:3000")],
    );
    assert_eq!(
        (r.status, r.header("Access-Control-Allow-Origin")),
        (404, Some("http://localhost:3000"))
    );
    assert_fully_gone(&w.server.sql(), &w.chat);
}

#[test]
fn no_response_ever_allows_every_origin() {
    let w = World::new(&["--allow-origin", "http://localhost:3000"]);
    for origin in [
        "*",
        "null",
        "http://localhost:3000",
        "http://evil.example",
        "",
    ] {
        for method in ["DELETE", "OPTIONS", "GET"] {
            let r = w.server.request(
                method,
                &w.chat_path(),
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "DELETE"),
                ],
            );
            assert_ne!(
                r.header("Access-Control-Allow-Origin"),
                Some("*"),
                "{method} {origin}"
            );
            assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
        }
    }
}

#[test]
fn serving_beyond_loopback_needs_an_explicit_flag_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&dir.path().join("t.db"), &["--addr", "0.0.0.0:0"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--allow-remote"),
        "{err}"
    );
    // A wildcard origin is refused before the server says it is listening.
    let out = run_cli(
        &dir.path().join("t.db"),
        &["--addr", "127.0.0.1:0", "--allow-origin", "*"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-origin \"*\""));

    let server = TestServer::start_with(&["--addr", "0.0.0.0:0", "--allow-remote"]);
    server.log_with(&["put a TLS reverse proxy in front"]);
}

#[test]
fn ambiguous_framing_is_refused_before_anything_is_deleted() {
    let w = World::new(&[]);
    for extra in [
        "Content-Length: 3\r\nContent-Length: 10\r\n\r\nabc",
        "Content-Length: 5, 5\r\n\r\nabcde",
        "Content-Length: abc\r\n",
        "Content-Length: +5\r\n\r\nabcde",
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ] {
        let raw = w.raw_delete(Some("localhost"), extra);
        // `raw_delete` ends the head; put the framing headers inside it.
        let raw = String::from_utf8(raw).unwrap();
        let (head, _) = raw.rsplit_once("\r\n\r\n").unwrap();
        let (headers, body) = extra
            .split_once("\r\n\r\n")
            .unwrap_or((extra.trim_end(), ""));
        let raw = format!("{head}\r\n{headers}\r\n\r\n{body}");
        let x = w.send(raw.as_bytes());
        let first = x
            .responses
            .first()
            .unwrap_or_else(|| panic!("no answer to {extra:?}"));
        assert_eq!(
            first.assert_error(400, "Bad Request"),
            "Ambiguous message framing",
            "{extra:?}"
        );
    }
    w.assert_unharmed();
}

/// tiny_http keeps a connection open after any answer and reads what
/// follows a mis-framed or refused body as the next request (README,
/// Limits). The answer at least asks the client, or a proxy in front, to
/// close (RFC 9112 §6.3). Each case runs on a fresh server, so that no
/// keep-alive rule closes the connection for its own reasons; the control
/// shows that an ordinary keep-alive answer does not say `close`.
#[test]
fn answers_to_mis_framed_or_refused_bodies_say_connection_close() {
    let cases = [
        ("control", "Content-Length: 0\r\n\r\n", 404, None),
        (
            "CL + TE",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            Some("close"),
        ),
        (
            "chunked body",
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
            Some("close"),
        ),
    ];
    for (case, framing, status, connection) in cases {
        let w = World::new(&[]);
        let raw = format!(
            "DELETE /api/users/alice/chats/999999 HTTP/1.1\r\nHost: localhost\r\nCookie: neptun-session={}\r\n{framing}",
            w.token
        );
        let x = exchange(w.server.addr, raw.as_bytes(), Duration::from_millis(500));
        let first = x
            .responses
            .first()
            .unwrap_or_else(|| panic!("{case}: no answer"));
        assert_eq!(first.status, status, "{case}");
        assert_eq!(first.header("Connection"), connection, "{case}");
        w.assert_unharmed();
    }
}

#[test]
fn bodies_beyond_the_limit_or_chunked_are_refused_unread_and_the_server_lives_on() {
    let w = World::new(&[]);
    let host = "Host: localhost\r\n";
    let cookie = format!("Cookie: neptun-session={}\r\n", w.token);
    let path = w.chat_path();
    let cases = [
        format!(
            "DELETE {path} HTTP/1.1\r\n{host}{cookie}Content-Length: 2000\r\nConnection: close\r\n\r\n{}",
            "x".repeat(2000)
        ),
        // Declares 100 GB: tiny_http would drain it into one allocation and abort.
        format!("DELETE {path} HTTP/1.1\r\n{host}{cookie}Content-Length: 100000000000\r\n\r\nab"),
    ];
    for raw in &cases {
        let x = exchange(w.server.addr, raw.as_bytes(), Duration::from_secs(2));
        let r = x
            .responses
            .first()
            .unwrap_or_else(|| panic!("no answer to {}", &raw[..80]));
        r.assert_error(413, "Payload Too Large");
    }
    // A chunked body's size is unknown until read, however small it is.
    let raw = format!(
        "DELETE {path} HTTP/1.1\r\n{host}{cookie}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let x = exchange(w.server.addr, raw.as_bytes(), Duration::from_secs(2));
    let r = x.responses.first().expect("no answer to a chunked body");
    r.assert_error(411, "Length Required");
    assert_eq!(
        r.json()["data"]["message"],
        "Chunked request bodies are not accepted; this API takes no body"
    );
    // A small body (tiny_http reads up to 1 KiB itself) is ignored.
    let raw = format!(
        "DELETE {path} HTTP/1.1\r\n{host}{cookie}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    only_response(&w.send(raw.as_bytes())).assert_true();
    assert_fully_gone(&w.server.sql(), &w.chat);
    let r = w
        .server
        .request("DELETE", "/api/users/alice/chats/999999", &[]);
    assert_eq!(r.status, 401, "the server must still serve");
}

/// After an answer, tiny_http reads the rest of a request's body, and
/// waits for as long as the client neither sends it nor closes. On the
/// workers, as many such requests as there are workers stalled the server.
#[test]
fn declared_bodies_that_never_arrive_do_not_hold_the_workers() {
    let w = World::new(&["--workers", "2"]);
    let path = w.chat_path();
    // Without a cookie: the small one is answered 401, whoever gets it.
    let never_sent = [
        (
            format!("DELETE {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n"),
            413,
        ),
        (
            format!(
                "DELETE {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
            ),
            401,
        ),
    ];
    // Three of each, on six connections that stay open: three times the workers.
    let mut held = Vec::new();
    for (raw, status) in never_sent.iter().cycle().take(6) {
        let mut stream = TcpStream::connect(w.server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut stream = BufReader::new(stream);
        let answer = read_response(&mut stream)
            .unwrap_or_else(|e| panic!("no answer within 5 s to {raw:?}: {e}"));
        assert_eq!(answer.status, *status, "{raw:?}");
        held.push(stream);
    }
    // And an ordinary request, while they are all still open.
    let raw = format!(
        "DELETE /api/users/alice/chats/999999 HTTP/1.1\r\nHost: localhost\r\nCookie: neptun-session={}\r\nConnection: close\r\n\r\n",
        w.token
    );
    let x = exchange(w.server.addr, raw.as_bytes(), Duration::from_secs(5));
    only_response(&x).assert_error(404, "Not Found");
    drop(held);
    w.assert_unharmed();
}

#[test]
fn odd_paths_get_a_clear_4xx_and_never_match_by_accident() {
    let w = World::new(&[]);
    let id = w.chat.chat;
    let cases: Vec<(String, u16)> = vec![
        (format!("/api/users/alice/chats/../chats/{id}"), 400),
        (format!("/api/users/alice/./chats/{id}"), 400),
        (format!("/api/users/%2e%2e/chats/{id}"), 400),
        (format!("/api//users/alice/chats/{id}"), 404),
        (format!("//api/users/alice/chats/{id}"), 404),
        (format!("/api/users/alice%2Fchats/{id}"), 404),
        (format!("/api/users/alice/chats%2F{id}"), 404),
        (format!("/api/users/%C0%AEalice/chats/{id}"), 400),
        (format!("/api/users/%FFalice/chats/{id}"), 400),
        (format!("/api/users/alice%00/chats/{id}"), 400),
        (format!("/api/users/alice/chats/{id}%00"), 400),
        (format!("/api/users/alice/chats/{id}%"), 400),
        (format!("/api/users/alice/chats/{id}#frag"), 400),
        ("*".to_owned(), 400),
        (format!("api/users/alice/chats/{id}"), 400),
        (format!("ftp://localhost/api/users/alice/chats/{id}"), 400),
    ];
    let cookie = format!("Cookie: neptun-session={}\r\n", w.token);
    for (target, status) in &cases {
        let raw = format!(
            "DELETE {target} HTTP/1.1\r\nHost: localhost\r\n{cookie}Connection: close\r\n\r\n"
        );
        let r = only_response(&w.send(raw.as_bytes())).clone();
        assert_eq!(r.status, *status, "{target}: {}", r.text());
        r.json();
    }
    // A raw NUL byte in the request line never reaches a route either.
    let raw = format!(
        "DELETE /api/users/alice/chats/{id}\0 HTTP/1.1\r\nHost: localhost\r\n{cookie}Connection: close\r\n\r\n"
    );
    assert_eq!(only_response(&w.send(raw.as_bytes())).status, 400);
    // The log shows such bytes escaped: a raw ESC would reach the terminal
    // of whoever reads the log as a command (here, to clear the screen).
    let raw = format!(
        "DELETE /api/users/alice\x1b[2J/chats/{id} HTTP/1.1\r\nHost: localhost\r\n{cookie}Connection: close\r\n\r\n"
    );
    assert_eq!(only_response(&w.send(raw.as_bytes())).status, 400);
    let log = w
        .server
        .log_with(&[r"DELETE /api/users/alice\x1b[2J/chats/", r"\x00"]);
    assert!(
        !log.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters in the log: {log:?}"
    );
    assert!(
        log.contains(r"DELETE /api/users/alice\x1b[2J/chats/") && log.contains(r"\x00"),
        "{log}"
    );
    w.assert_unharmed();
}

#[test]
fn absolute_form_targets_are_served_for_the_host_they_name() {
    let w = World::new(&[]);
    let port = w.server.addr.port();
    let path = w.chat_path();
    let send = |target: &str, host: Option<&str>| {
        let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
        let raw = format!(
            "DELETE {target} HTTP/1.1\r\n{host}Cookie: neptun-session={}\r\nConnection: close\r\n\r\n",
            w.token
        );
        only_response(&w.send(raw.as_bytes())).clone()
    };
    // The URL's host is checked in place of Host (RFC 9112 §3.2.2), both ways.
    let refused = [
        (
            format!("http://evil.example{path}"),
            "localhost",
            403,
            "Host not allowed",
        ),
        (
            format!("http://evil.example:{port}{path}"),
            "localhost",
            403,
            "Host not allowed",
        ),
        (
            format!("http://alice@localhost{path}"),
            "localhost",
            400,
            "Request target URL must not hold user information",
        ),
        (
            format!("http://{path}"),
            "localhost",
            400,
            "Request target URL has no host",
        ),
        (
            format!("gopher://localhost{path}"),
            "localhost",
            400,
            "Request target must be a path or an http URL",
        ),
    ];
    for (target, host, status, message) in &refused {
        let r = send(target, Some(host));
        let reason = if *status == 403 {
            "Forbidden"
        } else {
            "Bad Request"
        };
        assert_eq!(r.assert_error(*status, reason), *message, "{target}");
    }
    // Host must still be sent, once (RFC 9112 §3.2).
    let r = send(&format!("http://localhost{path}"), None);
    assert_eq!(r.assert_error(400, "Bad Request"), "Missing Host header");
    w.assert_unharmed();

    // Another chat of alice's is not found through an allowed URL, whatever
    // the Host says; then hers is deleted, once.
    let missing = format!("http://LOCALHOST:{port}/api/users/alice/chats/999999?x=1");
    let r = send(&missing, Some("evil.example"));
    assert_eq!(r.assert_error(404, "Not Found"), "Chat not found");
    send(&format!("http://127.0.0.1:{port}{path}"), Some("127.0.0.1")).assert_true();
    assert_fully_gone(&w.server.sql(), &w.chat);
    let r = send(&format!("https://localhost{path}"), Some("localhost"));
    assert_eq!(r.assert_error(404, "Not Found"), "Chat not found");
    assert_eq!(send("http://localhost", Some("localhost")).status, 404);
    assert_consistent(&w.server.sql());
}

#[test]
fn options_with_the_asterisk_answers_for_the_server() {
    let w = World::new(&[]);
    let x = w.send(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let r = only_response(&x);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("Allow"), Some("DELETE, GET, HEAD, OPTIONS"));
    let x = w.send(b"GET * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(
        only_response(&x).assert_error(400, "Bad Request"),
        "Only OPTIONS may have the target *"
    );
    w.assert_unharmed();
}

#[test]
fn cookies_of_every_shape_get_the_right_answer_and_never_a_500() {
    let w = World::new(&[]);
    let t = &w.token;
    let junk = "j".repeat(10 * 1024);
    let many: String = (0..200).map(|i| format!("c{i}=v{i}; ")).collect();
    let cases: Vec<(String, u16)> = vec![
        ("neptun-session=".into(), 401),
        ("neptun-session=\"\"".into(), 401),
        (format!("neptun-session={junk}"), 401),
        (
            format!("neptun-session={t}; neptun-session={}", "0".repeat(64)),
            401,
        ),
        (format!("neptun-session={t}x"), 401),
        ("neptun-session=\u{1}\u{7f}".into(), 401),
        (format!("big={junk}; neptun-session={t}"), 404),
        (format!("{many}neptun-session={t}"), 404),
        (format!("neptun-session=\"{t}\""), 404),
        (format!("neptun-session={t}; neptun-session={t}"), 404),
        (format!("a=\"q;uoted\"; neptun-session={t}; b=x=y"), 404),
    ];
    // 404 = authenticated (chat 999999 does not exist); nothing is deleted.
    for (cookie, status) in &cases {
        let r = w.server.request(
            "DELETE",
            "/api/users/alice/chats/999999",
            &[("Cookie", cookie)],
        );
        assert_eq!(r.status, *status, "{}", &cookie[..cookie.len().min(60)]);
        r.json();
    }
    w.assert_unharmed();
}

/// tiny_http refuses header bytes that are not ASCII (browsers send every
/// `localhost` cookie, including other applications' UTF-8 ones): it closes
/// the connection without any answer, before we see the request. Nothing
/// in its API changes that; this pins the behaviour and shows the server
/// survives it. See README, "Limits".
#[test]
fn a_non_ascii_header_byte_closes_the_connection_unanswered_and_harms_nothing() {
    let w = World::new(&[]);
    let raw = [
        format!(
            "DELETE {} HTTP/1.1\r\nHost: localhost\r\nCookie: other=caf",
            w.chat_path()
        )
        .into_bytes(),
        "\u{e9}".as_bytes().to_vec(),
        format!("; neptun-session={}\r\n\r\n", w.token).into_bytes(),
    ]
    .concat();
    let x = w.send(&raw);
    assert!(
        x.responses.is_empty() && x.closed,
        "tiny_http changed: {} responses",
        x.responses.len()
    );
    w.assert_unharmed();
}

/// A client that sends a request and resets the connection (`SO_LINGER`
/// 0) before tiny_http accepts it makes tiny_http's thread for that
/// connection panic: it unwraps the peer address it could not take. That
/// ended the server (exit 70) within a few hundred such connections; now
/// the connection is dropped, and the server serves on.
#[cfg(target_os = "linux")]
#[test]
fn connections_reset_before_they_are_accepted_are_dropped_and_harm_nothing() {
    let w = World::new(&["--log-level", "debug"]);
    let dropped = "dropped a connection reset before it was accepted";
    for attempt in 1..=5000 {
        send_and_reset(w.server.addr);
        if attempt % 100 == 0 && w.server.stderr().contains(dropped) {
            break;
        }
    }
    // Else the race was never won, and the test would prove nothing.
    w.server.log_with(&[dropped]);
    w.assert_unharmed();
    assert!(
        !w.server.stderr().contains("exiting"),
        "{}",
        w.server.stderr()
    );
}

/// The connection right behind a burst of connections reset before they
/// were accepted is answered. tiny_http queues a connection for a pool
/// thread that it counts as idle until the thread wakes, so one can queue
/// behind the threads woken for the burst: each took a reset connection
/// and died of it, and the queued connection waited, unanswered, until
/// another came and its thread ended. Each round is a fresh server with
/// its spares ready and no request yet: a request makes the spares refresh
/// a few seconds later, which also takes up such a queue. Before the lost
/// threads were replaced, 4 runs of 4 failed here, and CI failed twice.
///
/// It is answered at once, too, not at the server's next check of the
/// queue (see the next test), a second later or more: with the lost
/// threads replaced, the slowest of 40 rounds took 66 ms; with only the
/// checks, 29 rounds of 40 took 2–4 s.
#[cfg(target_os = "linux")]
#[test]
fn the_connection_right_behind_a_burst_of_reset_connections_is_answered() {
    let mut slow = 0;
    for round in 1..=40 {
        let server = TestServer::start_with(&["--log-level", "debug"]);
        server.log_with(&["spare connection threads ready"]);
        // A few more than the idle threads: the spares, and the 4 that
        // tiny_http keeps.
        for _ in 0..70 {
            send_and_reset(server.addr);
        }
        let asked = Instant::now();
        let r = server.request("DELETE", "/api/users/alice/chats/1", &[]);
        assert_eq!(r.status, 401, "round {round}: {r:?}");
        if asked.elapsed() >= Duration::from_secs(1) {
            slow += 1;
        }
    }
    // A few, for a machine busy with other tests.
    assert!(slow <= 4, "{slow} of 40 answers waited a second or more");
}

/// A request right behind a burst of connections that send nothing is
/// answered. Each of those holds a tiny_http thread until it closes, and
/// tiny_http queues some of a burst (see the test above) behind threads
/// that will never be free. The server's own connections, every second
/// while no client request comes, bring threads for that queue. Before
/// them, the request waited until one of the idle connections closed, and
/// here it failed 3 runs of 3 (tiny_http has no read timeout). Each round
/// is a fresh server, as above.
///
/// On Linux, where the server counts its open connections, one check
/// brings a thread for each, and so frees the whole queue: the request is
/// answered at the next check, within 1.05 s in 40 rounds. With 4 threads a
/// check (still the case elsewhere), it waited 10 s in 5 rounds of 20
/// behind these 100.
#[test]
fn a_request_behind_a_burst_of_connections_that_send_nothing_is_answered() {
    for round in 1..=8 {
        let server = TestServer::start_with(&["--log-level", "debug"]);
        server.log_with(&["spare connection threads ready"]);
        let idle: Vec<_> = (0..100)
            .map(|_| TcpStream::connect(server.addr).unwrap())
            .collect();
        let asked = Instant::now();
        let r = server.request("DELETE", "/api/users/alice/chats/1", &[]);
        assert_eq!(r.status, 401, "round {round}: {r:?}");
        // Three checks' time, for a machine busy with other tests.
        if cfg!(target_os = "linux") {
            let waited = asked.elapsed();
            assert!(waited < Duration::from_secs(3), "round {round}: {waited:?}");
        }
        drop(idle);
    }
}

/// The checks of the test above run only while a connection is open, and
/// send threads only when one has opened since the last: nothing new can
/// wait in tiny_http's queue otherwise. So a quiet server sleeps, also
/// while a browser keeps its idle connections open. With 4 connections
/// open its threads woke about 40 times a second (each check wakes about a
/// dozen), and with none about 3 (upkeep and the file watch, once a
/// second each).
#[cfg(target_os = "linux")]
#[test]
fn a_quiet_server_sleeps_while_no_connection_opens() {
    let server = TestServer::start_with(&["--log-level", "debug"]);
    server.log_with(&["spare connection threads ready"]);
    let watch = Duration::from_secs(3);
    let woken_while = |opening: &dyn Fn()| {
        let before = thread_wake_ups(server.pid());
        opening();
        wake_ups_since(&before, server.pid())
    };
    let nothing_opens = || std::thread::sleep(watch);
    // The spares' own connections may still be winding down when they are
    // reported ready (36 wake-ups in the first 3 s once, in CI): the
    // quieter of two windows. Checks that ran with none open would fill both.
    let quiet = woken_while(&nothing_opens).min(woken_while(&nothing_opens));
    assert!(
        quiet.0 < 30,
        "{} wake-ups in {watch:?} with no connection: {}",
        quiet.0,
        quiet.1
    );

    let open: Vec<_> = (0..4)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    // The check that sends threads for them, and its connections' end.
    std::thread::sleep(Duration::from_secs(2));
    let kept_open = woken_while(&nothing_opens);
    assert!(
        kept_open.0 < 30,
        "{} wake-ups in {watch:?} with the same connections open: {}",
        kept_open.0,
        kept_open.1
    );

    let more = std::sync::Mutex::new(open);
    let opening = woken_while(&|| {
        let started = Instant::now();
        while started.elapsed() < watch {
            let stream = TcpStream::connect(server.addr).unwrap();
            more.lock().unwrap().push(stream);
            std::thread::sleep(watch / 12);
        }
    });
    assert!(
        opening.0 > 60,
        "{} wake-ups in {watch:?} with connections opening, no checks? {}",
        opening.0,
        opening.1
    );
}

/// How often each thread has been switched out: by thread id, with the
/// thread's name.
#[cfg(target_os = "linux")]
type WakeUps = std::collections::HashMap<String, (String, u64)>;

/// [`WakeUps`] of `pid`'s threads.
#[cfg(target_os = "linux")]
fn thread_wake_ups(pid: u32) -> WakeUps {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let name = status.lines().next()?.trim_start_matches("Name:").trim();
            let switches = status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            let tid = task.file_name().to_string_lossy().into_owned();
            Some((tid, (name.to_owned(), switches)))
        })
        .collect()
}

/// The wake-ups of `pid`'s threads since `before`, counting threads that
/// started since in full (threads that ended since are left out), in all
/// and by thread name, the busiest first: a failure says whose they were.
#[cfg(target_os = "linux")]
fn wake_ups_since(before: &WakeUps, pid: u32) -> (u64, String) {
    let mut by_name = std::collections::HashMap::<String, u64>::new();
    for (tid, (name, now)) in thread_wake_ups(pid) {
        let then = before.get(&tid).map_or(0, |(_, then)| *then);
        *by_name.entry(name).or_default() += now.saturating_sub(then);
    }
    let mut by_name: Vec<_> = by_name.into_iter().filter(|&(_, n)| n > 0).collect();
    by_name.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let total = by_name.iter().map(|(_, n)| n).sum();
    let named: Vec<String> = by_name
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    (total, named.join(", "))
}

/// Connects, sends a request, and resets the connection (`SO_LINGER` 0)
/// at once, most often before the server has accepted it.
#[cfg(target_os = "linux")]
fn send_and_reset(addr: SocketAddr) {
    let stream = TcpStream::connect(addr).unwrap();
    (&stream)
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// Heads that tiny_http answers itself, before the request reaches us, so
/// not with the API's JSON error: pinned, so that a change of transport
/// shows here. Each carries alice's cookie, and nothing is deleted.
#[test]
fn malformed_heads_get_tiny_https_own_bare_answers_and_harm_nothing() {
    let w = World::new(&[]);
    let (path, token) = (w.chat_path(), w.token.clone());
    let cookie = format!("Cookie: neptun-session={token}\r\n");
    let bare: [(String, u16); 4] = [
        (format!("DELETE\r\nHost: localhost\r\n{cookie}\r\n"), 400),
        (
            format!("DELETE {path} HTTP/9.9\r\nHost: localhost\r\n{cookie}\r\n"),
            400,
        ),
        (
            format!("DELETE {path} HTTP/1.1\r\nHost localhost\r\n{cookie}\r\n"),
            400,
        ),
        (
            format!("DELETE {path} HTTP/1.1\r\nHost: localhost\r\n{cookie}Expect: x\r\n\r\n"),
            417,
        ),
    ];
    for (raw, status) in &bare {
        let x = w.send(raw.as_bytes());
        let r = only_response(&x);
        assert_eq!(
            (r.status, r.body.is_empty(), x.closed),
            (*status, true, true),
            "tiny_http changed for {raw:?}: {}",
            r.text()
        );
    }
    // An HTTP/2.0 request line (as `curl --http2-prior-knowledge` sends
    // after its preface) gets no answer at all: tiny_http's 505 waits
    // for the writer of the request it refuses, which never finishes, and
    // the connection's thread waits with it for the life of the process.
    let raw = format!("DELETE {path} HTTP/2.0\r\nHost: localhost\r\n{cookie}\r\n");
    let x = exchange(w.server.addr, raw.as_bytes(), Duration::from_secs(1));
    assert!(
        x.responses.is_empty() && !x.closed,
        "tiny_http changed for HTTP/2.0: {} responses, closed: {}",
        x.responses.len(),
        x.closed
    );
    w.assert_unharmed();
}

/// tiny_http takes `HTTP/0.9` in a request line for a version like any
/// other. It was served, answered with the status line `HTTP/0.9 200`
/// (0.9 has no status line), and the connection kept open.
#[test]
fn a_request_line_that_names_http_0_9_gets_505_and_deletes_nothing() {
    let w = World::new(&[]);
    let raw = format!(
        "DELETE {} HTTP/0.9\r\nHost: localhost\r\nCookie: neptun-session={}\r\n\r\n",
        w.chat_path(),
        w.token
    );
    let mut stream = TcpStream::connect(w.server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let r = read_response(&mut BufReader::new(stream.try_clone().unwrap())).unwrap();
    assert_eq!(
        r.assert_error(505, "HTTP Version Not Supported"),
        "Only HTTP/1.0 and HTTP/1.1 are served"
    );
    assert_eq!(r.header("Connection"), Some("close"));
    w.assert_unharmed();
    // The status line, which `read_response` does not keep.
    let again = format!(
        "DELETE {} HTTP/0.9\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        w.chat_path()
    );
    let answer = send_raw(w.server.addr, again.as_bytes());
    assert!(
        answer.starts_with(b"HTTP/1.0 505 HTTP Version Not Supported\r\n"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// A client that pipelines requests and never reads the answers holds the
/// worker whose answer cannot be written, while tiny_http reads the rest
/// of its requests into memory (README, Limits): with one worker, no one
/// else is answered. Pinned, so that a change of transport shows here.
/// Once the client goes, the server serves again.
#[test]
fn a_pipelining_client_that_never_reads_holds_a_worker_until_it_goes() {
    const REQUESTS: usize = 40_000;
    let w = World::new(&["--workers", "1"]);
    let raw = "DELETE /api/users/u/chats/1 HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(REQUESTS);
    let flood = TcpStream::connect(w.server.addr).unwrap();
    flood
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (&flood)
        .write_all(raw.as_bytes())
        .expect("tiny_http reads every request");

    // The answers stop coming once the socket buffers are full: what waits
    // unread stays the same, short of all the answers (about 250 bytes
    // each), and the one worker waits to write the next.
    let mut unread = vec![0; 16 << 20];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut before = 0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = flood.peek(&mut unread).unwrap();
        if now == before {
            break;
        }
        assert!(Instant::now() < deadline, "the answers keep coming");
        before = now;
    }
    assert!(
        before < REQUESTS * 200,
        "every answer was written ({before} bytes wait)"
    );
    let probe =
        "DELETE /api/users/u/chats/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let x = exchange(w.server.addr, probe.as_bytes(), Duration::from_secs(2));
    assert!(
        x.responses.is_empty(),
        "tiny_http changed: a client that never reads no longer holds the worker"
    );

    drop(flood);
    // Under Wine the worker's blocked write to the connection that went
    // fails only some 20 s later (20–22 s measured; on Linux, at once), so
    // the first answer may take longer than the support's timeout.
    if cfg!(windows) {
        let x = exchange(w.server.addr, probe.as_bytes(), Duration::from_secs(60));
        assert_eq!(only_response(&x).status, 401);
    }
    w.assert_unharmed();
}

/// tiny_http has no limits of its own: it reads and stores a head of any
/// size. What it hands over beyond any real client's gets the status that
/// says so, and nothing is acted on: the DELETEs carry alice's cookie.
#[test]
fn oversized_heads_get_414_or_431_and_delete_nothing() {
    let w = World::new(&[]);
    let delete = |path: &str, extra: &str| {
        format!(
            "DELETE {path} HTTP/1.1\r\nHost: localhost\r\nCookie: neptun-session={}\r\n{extra}Connection: close\r\n\r\n",
            w.token
        )
    };
    let path = w.chat_path();
    let big_line = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
    let many: String = (0..10_000).map(|i| format!("X-{i}: a\r\n")).collect();
    let just_over: String = (0..99).map(|i| format!("X-{i}: a\r\n")).collect();
    let long_path = format!("{path}?{}", "a".repeat(100_000));
    let cases = [
        (delete(&path, &big_line), 431),
        (delete(&path, &many), 431),
        // With Host, Cookie and Connection: 102 fields.
        (delete(&path, &just_over), 431),
        (delete(&long_path, ""), 414),
    ];
    for (raw, status) in &cases {
        // tiny_http reads a head byte by byte: a megabyte of it took over
        // the usual 5 s with the debug build on a loaded machine.
        let r = only_response(&exchange(
            w.server.addr,
            raw.as_bytes(),
            Duration::from_secs(30),
        ))
        .clone();
        assert_eq!(r.status, *status, "{}", &raw[..raw.len().min(80)]);
        r.json();
    }
    w.assert_unharmed();
}

/// End to end, whatever bytes arrive: mutations of alice's valid DELETE
/// (bytes inserted, removed or replaced, lines repeated) never get a 5xx
/// or a malformed answer, and never harm the server or half-delete the
/// chat. An answer is the API's JSON error, its `true`, or has no body
/// (tiny_http's own bare `400`/`417`, see the test above; a `204` to
/// OPTIONS; HEAD). Some go unanswered: tiny_http closes on a non-ASCII byte
/// or an unfinished head.
#[test]
fn mutated_requests_never_get_a_5xx_or_a_malformed_answer() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    /// Bytes that parsers trip on, with whole lines that change framing.
    const SPECIALS: &[&[u8]] = &[
        b"\0",
        b"\r",
        b"\n",
        b"\r\n",
        b" ",
        b"\t",
        b":",
        b";",
        b",",
        b"%",
        b"%00",
        b"%2F",
        b"..",
        b"/",
        b"?",
        b"#",
        b"\"",
        b"\xff",
        b"\xc3\xa9",
        b"0",
        b"99999999999999999999",
        b"HTTP/1.0",
        b"HEAD",
        b"OPTIONS",
        b"\r\n\r\n",
        b"Host: evil.example\r\n",
        b"Content-Length: 5\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Origin: http://evil.example\r\n",
        b"Expect: 100-continue\r\n",
    ];
    #[derive(Debug, Clone)]
    enum Edit {
        Insert(prop::sample::Index, &'static [u8]),
        Remove(prop::sample::Index, usize),
        Replace(prop::sample::Index, u8),
        RepeatLine(prop::sample::Index),
    }
    fn apply(mut raw: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for edit in edits {
            let at = |i: &prop::sample::Index| i.index(raw.len() + 1);
            match edit {
                Edit::Insert(i, bytes) => {
                    let at = at(i);
                    raw.splice(at..at, bytes.iter().copied());
                }
                Edit::Remove(i, n) => {
                    let at = at(i).min(raw.len());
                    raw.drain(at..(at + n).min(raw.len()));
                }
                Edit::Replace(i, byte) => {
                    let at = at(i).min(raw.len().saturating_sub(1));
                    if let Some(b) = raw.get_mut(at) {
                        *b = *byte;
                    }
                }
                Edit::RepeatLine(i) => {
                    let mut lines: Vec<&[u8]> = raw.split(|&b| b == b'\n').collect();
                    let line = lines[i.index(lines.len())];
                    lines.insert(i.index(lines.len()), line);
                    raw = lines.join(&b'\n');
                }
            }
        }
        raw
    }

    let w = World::new(&[]);
    let valid = w.raw_delete(Some("localhost"), "");
    let edit = prop_oneof![
        (any::<prop::sample::Index>(), prop::sample::select(SPECIALS))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<prop::sample::Index>(), 1..8usize).prop_map(|(i, n)| Edit::Remove(i, n)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::RepeatLine),
    ];
    /// Bytes whose `Debug` a person can read, for a failing case.
    #[derive(Clone)]
    struct Raw(Vec<u8>);
    impl std::fmt::Debug for Raw {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "\"{}\"", self.0.escape_ascii())
        }
    }
    let requests =
        prop::collection::vec(edit, 1..4).prop_map(move |e| Raw(apply(valid.clone(), &e)));
    let config = Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    };
    // Deterministic: the same 1,000 requests on every run.
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let deleted = std::cell::Cell::new(0);
    TestRunner::new_with_rng(config, rng)
        .run(&requests, |Raw(raw)| {
            let mut stream = TcpStream::connect(w.server.addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            stream.write_all(&raw).unwrap();
            // The server sees the end, so an unfinished head costs no wait.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
                prop_assert!(answer.is_empty(), "a partial answer: {answer:?}");
                return Ok(());
            };
            let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
            let status: u16 = head
                .strip_prefix("http/1.")
                .and_then(|h| h.get(2..5))
                .and_then(|s| s.parse().ok())
                .unwrap_or_default();
            prop_assert!((200..500).contains(&status), "{head}");
            // The first answer's body, by its Content-Length (none to HEAD).
            let rest = &answer[head_end + 4..];
            let declared = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let length = if raw.starts_with(b"HEAD ") {
                Some(0)
            } else {
                declared
            };
            prop_assert!(length.is_some_and(|n| n <= rest.len()), "{head}");
            let body = &rest[..length.unwrap_or_default()];
            if status == 200 {
                deleted.set(deleted.get() + 1);
                prop_assert_eq!(body, b"true");
            } else if body.is_empty() {
                // tiny_http's own bare 400 or 417, the 204 to OPTIONS, or
                // an answer to HEAD.
                prop_assert!(status == 204 || (400..500).contains(&status), "{head}");
            } else {
                prop_assert!(head.contains("content-type: application/json"), "{head}");
                let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                prop_assert_eq!(
                    &json["statusCode"],
                    &serde_json::json!(status),
                    "{:?}",
                    body
                );
                prop_assert!(json["data"]["message"].is_string(), "{body:?}");
            }
            Ok(())
        })
        .unwrap();

    // The chat went at most once, whole, and only with a 200.
    let sql = w.server.sql();
    assert!(deleted.get() <= 1, "{} deletes answered 200", deleted.get());
    if deleted.get() == 1 {
        assert_fully_gone(&sql, &w.chat);
    } else {
        assert_fully_present(&sql, &w.chat);
    }
    assert_consistent(&sql);
    let r = w
        .server
        .request("DELETE", "/api/users/alice/chats/999999", &[]);
    assert_eq!(r.status, 401, "the server must still serve: {r:?}");
}
