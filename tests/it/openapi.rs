//! `openapi.yaml` and the server stay in step: the document is served as
//! is, every status the server produces is documented with its body and
//! headers, and every status documented for DELETE can really happen.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::*;

const DOCUMENT: &str = include_str!("../../openapi.yaml");
const CHAT_PATH: &str = "/api/users/{user_id}/chats/{chat_id}";

fn document() -> Value {
    serde_yaml_ng::from_str(DOCUMENT).expect("openapi.yaml parses")
}

/// Follows a `$ref` inside the document.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local $ref");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling {reference}")),
            )
        }
        None => value,
    }
}

/// The documented response for (path, method, status); 405 for an
/// undocumented method is the shared `MethodNotAllowed` response.
fn documented<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> Option<&'a Value> {
    let operation = &doc["paths"][path][method.to_ascii_lowercase()];
    if operation.is_null() && status == 405 {
        return Some(&doc["components"]["responses"]["MethodNotAllowed"]);
    }
    operation["responses"]
        .get(status.to_string())
        .map(|r| resolve(doc, r))
}

/// Asserts that a live response matches what the document says.
fn assert_conforms(doc: &Value, path: &str, method: &str, response: &HttpResponse) {
    let spec = documented(doc, path, method, response.status).unwrap_or_else(|| {
        panic!(
            "{method} {path} answered {} which is not documented",
            response.status
        )
    });
    for (name, header) in spec["headers"].as_object().into_iter().flatten() {
        let header = resolve(doc, header);
        if header["required"] == true {
            let value = response
                .header(name)
                .unwrap_or_else(|| panic!("{method} {} lacks {name}", response.status));
            if let Some(allowed) = header["schema"]["const"].as_str() {
                assert_eq!(value, allowed, "{name}");
            }
            if let Some(allowed) = header["schema"]["enum"].as_array() {
                assert!(allowed.iter().any(|a| a == value), "{name}: {value}");
            }
        }
    }
    match spec["content"].as_object().and_then(|c| c.iter().next()) {
        None => assert!(
            response.body.is_empty(),
            "{method} {}: undocumented body",
            response.status
        ),
        Some((media_type, media)) => {
            assert_eq!(response.header("Content-Type"), Some(media_type.as_str()));
            let schema = resolve(doc, &media["schema"]);
            if media_type == "application/json" {
                let body = response.json();
                if schema["const"] == true {
                    assert_eq!(body, Value::Bool(true));
                } else {
                    let required: Vec<&str> = schema["required"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect();
                    let keys: Vec<&str> = body
                        .as_object()
                        .unwrap()
                        .keys()
                        .map(String::as_str)
                        .collect();
                    assert_eq!(keys, required, "error body keys");
                    assert_eq!(body["statusCode"], response.status);
                }
            }
        }
    }
}

#[test]
fn the_document_is_served_as_is_without_a_session() {
    let server = TestServer::start();
    let r = server.request("GET", "/openapi.yaml", &[]);
    assert_eq!(
        (r.status, r.header("Content-Type")),
        (200, Some("application/yaml"))
    );
    assert_eq!(r.text(), DOCUMENT);
    assert_conforms(&document(), "/openapi.yaml", "GET", &r);
    let r = server.request("DELETE", "/openapi.yaml", &[]);
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
    assert_conforms(&document(), "/openapi.yaml", "DELETE", &r);
}

#[test]
fn every_status_the_chat_route_produces_is_documented_and_vice_versa() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let server = TestServer::start_with(&[
        "--busy-timeout",
        "200ms",
        "--allow-origin",
        "http://localhost:3000",
    ]);
    let db = server.db();
    add_user(&db, "alice");
    add_user(&db, "bob");
    let token = login(&db, "alice");
    let chats: Vec<SeededChat> = (0..3).map(|_| seed_chat(&db, "alice", "bob")).collect();
    let cookie = format!("neptun-session={token}");
    let path = |chat: i64| format!("/api/users/alice/chats/{chat}");
    let with_cookie = [("Cookie", cookie.as_str())];

    let mut seen: Vec<(&str, HttpResponse)> = vec![
        (
            "DELETE",
            server.request("DELETE", &path(chats[0].chat), &with_cookie),
        ), // 200
        (
            "DELETE",
            server.request("DELETE", &path(chats[0].chat), &with_cookie),
        ), // 404
        (
            "DELETE",
            server.request("DELETE", "/api/users/alice/chats/x", &with_cookie),
        ), // 400
        ("DELETE", server.request("DELETE", &path(1), &[])), // 401
        (
            "DELETE",
            server.request("DELETE", &path(1), &[("Origin", "http://evil.example")]),
        ), // 403
        (
            "DELETE",
            server.request("DELETE", &path(1), &[("Transfer-Encoding", "chunked")]),
        ), // 411
        (
            "DELETE",
            server.request("DELETE", &path(1), &[("Content-Length", "2000")]),
        ), // 413
        (
            "DELETE",
            server.request("DELETE", &format!("{}?{}", path(1), "a".repeat(9000)), &[]),
        ), // 414
        (
            "DELETE",
            server.request(
                "DELETE",
                &path(1),
                &[("Cookie", "c".repeat(70_000).as_str())],
            ),
        ), // 431
        ("GET", server.request("GET", &path(1), &[])),       // 405
        ("PATCH", server.request("PATCH", &path(1), &[])),   // 405
        ("OPTIONS", server.request("OPTIONS", &path(1), &[])), // 204 + Allow
        (
            "OPTIONS",
            server.request(
                "OPTIONS",
                &path(1),
                &[
                    ("Origin", "http://localhost:3000"),
                    ("Access-Control-Request-Method", "DELETE"),
                ],
            ),
        ), // 204 CORS
        (
            "OPTIONS",
            server.request(
                "OPTIONS",
                &path(1),
                &[
                    ("Origin", "http://evil.example"),
                    ("Access-Control-Request-Method", "DELETE"),
                ],
            ),
        ), // 403
        (
            "OPTIONS",
            server.request("OPTIONS", "/api/users/alice/chats/0", &[]),
        ), // 400
    ];
    // 505: a request line that names HTTP/0.9.
    let old_version = format!(
        "DELETE {} HTTP/0.9\r\nHost: localhost\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n",
        path(chats[1].chat)
    );
    seen.push((
        "DELETE",
        parse_response(&send_raw(server.addr, old_version.as_bytes()), false).unwrap(),
    ));
    {
        // 503: another writer holds the lock beyond the busy timeout.
        let mut locker = server.sql();
        let tx = locker
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        seen.push((
            "DELETE",
            server.request("DELETE", &path(chats[1].chat), &with_cookie),
        ));
        tx.rollback().unwrap();
    }
    // 500: a database failure.
    server
        .sql()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE DELETE ON chats BEGIN SELECT RAISE(ABORT, 'x'); END;",
        )
        .unwrap();
    seen.push((
        "DELETE",
        server.request("DELETE", &path(chats[2].chat), &with_cookie),
    ));

    for (method, response) in &seen {
        assert_conforms(&doc, CHAT_PATH, method, response);
    }
    let produced: BTreeSet<String> = seen
        .iter()
        .filter(|(m, _)| *m == "DELETE")
        .map(|(_, r)| r.status.to_string())
        .collect();
    let documented: BTreeSet<String> = doc["paths"][CHAT_PATH]["delete"]["responses"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        produced, documented,
        "DELETE: produced vs documented statuses"
    );
}
