//! The route table and the delete-chat handler.
//!
//! Order of checks, and why:
//! 0. the size of the head (414/431) and the body's framing (400/411/413), then
//!    the `Host` and, for state-changing methods, the `Origin` (see
//!    `guard`): a request a foreign page made the browser send is refused
//!    before anything else (400/403); CORS preflights are answered here too;
//! 1. the path is decoded strictly and matched exactly (a malformed target is
//!    400, an unknown path 404, a wrong method 405): this reveals nothing
//!    about users or chats. An absolute-form target
//!    (`http://localhost:7150/api/...`) has its host checked in step 0 and
//!    is then routed by its path;
//! 2. the session is checked before anything about ids, so an unauthenticated
//!    caller learns nothing about them (401);
//! 3. the chat id must be a canonical positive integer (400);
//! 4. the path's user must be the session's user (404 "User not found");
//! 5. the delete itself is scoped to the owner in SQL (404 "Chat not found"
//!    whether the chat does not exist or belongs to someone else), in a
//!    transaction that first looks the session up again (401 if it was
//!    revoked, or expired, since step 2).

use crate::auth::{self, AuthFailure, Session};
use crate::db::{self, Database, Deletion};
use crate::guard::Policy;
use crate::http::{ApiError, Caller, Request, Response};

/// What the handlers share.
pub struct App {
    pub db: Database,
    pub policy: Policy,
}

/// The methods the delete-chat route answers.
const CHAT_ROUTE_ALLOW: &str = "DELETE, OPTIONS";
/// The methods some route answers.
const SERVER_ALLOW: &str = "DELETE, GET, HEAD, OPTIONS";
/// The one method a cross-origin front end may be allowed to use.
const CORS_METHODS: &str = "DELETE";

/// The API's OpenAPI document, served at `/openapi.yaml` without a session.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

/// Answers one request. Never panics on any input.
pub fn handle(app: &App, request: &Request) -> Response {
    let response = route(app, request).unwrap_or_else(ApiError::into_response);
    app.policy.decorate(request, response)
}

fn route(app: &App, request: &Request) -> Result<Response, ApiError> {
    app.policy.check_version(request)?;
    app.policy.check_head_size(request)?;
    app.policy.check_framing(request)?;
    app.policy.check_host(request)?;
    app.policy.check_origin(request)?;
    let (_, target) = request.split_target()?;
    if target == "*" {
        // The asterisk-form asks about the server as a whole (RFC 9110
        // §9.3.7), and only OPTIONS may use it.
        return match request.method.as_str() {
            "OPTIONS" => Ok(Response::empty(204).with_header("Allow", SERVER_ALLOW)),
            _ => Err(ApiError::BadRequest("Only OPTIONS may have the target *")),
        };
    }
    let segments = path_segments(target)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("DELETE", ["api", "users", user_id, "chats", chat_id]) => {
            delete_chat(app, request, user_id, chat_id)
        }
        ("OPTIONS", ["api", "users", _, "chats", chat_id]) => {
            // A preflight does not check ids, so that the browser goes on to
            // the real request and the front end sees its JSON error rather
            // than an opaque CORS failure.
            if let Some(answer) = app.policy.preflight(request, CORS_METHODS) {
                return Ok(answer);
            }
            parse_chat_id(chat_id)?;
            Ok(Response::empty(204).with_header("Allow", CHAT_ROUTE_ALLOW))
        }
        (_, ["api", "users", _, "chats", _]) => Err(ApiError::MethodNotAllowed {
            allow: CHAT_ROUTE_ALLOW,
        }),
        ("GET" | "HEAD", ["openapi.yaml"]) => Ok(Response {
            status: 200,
            headers: vec![
                ("Content-Type", "application/yaml".to_owned()),
                ("X-Content-Type-Options", "nosniff".to_owned()),
            ],
            body: OPENAPI.as_bytes().to_vec(),
            ..Response::empty(200)
        }),
        (_, ["openapi.yaml"]) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        _ => Err(ApiError::NoSuchRoute),
    }
}

fn delete_chat(
    app: &App,
    request: &Request,
    path_user_id: &str,
    chat_id: &str,
) -> Result<Response, ApiError> {
    let session = authenticate(app, request)?;
    let chat_id = parse_chat_id(chat_id)?;
    if path_user_id != session.user_id {
        return Err(ApiError::NotSessionsUser);
    }
    match app
        .db
        .delete_chat(&session.user_id, chat_id, &session.token_hash)
        .map_err(database_failure)?
    {
        Deletion::Deleted => Ok(Response::json(200, &serde_json::Value::Bool(true))),
        Deletion::NoSuchChat => Err(ApiError::ChatNotFound {
            why: why_no_chat(app, chat_id),
        }),
        Deletion::SessionEnded => Err(ApiError::InvalidSession {
            why: "the session was revoked, expired or its user removed while the delete \
                  waited for its turn to write",
        }),
    }
}

/// For the log: why a delete found no chat. The client's answer is the same
/// either way. A second delete (a double click, a retried request) is the
/// usual cause, and a chat id from another database the next; a failed
/// lookup only leaves the line without its detail. With request lines not
/// logged, there is nothing to look up for.
fn why_no_chat(app: &App, chat_id: i64) -> Option<&'static str> {
    if !log::log_enabled!(log::Level::Info) {
        return None;
    }
    match app.db.chat_exists(chat_id) {
        Ok(true) => Some("the chat is another user's"),
        Ok(false) => Some("no chat has this id: deleted already, or never made"),
        Err(_) => None,
    }
}

/// Cookie → session, or 401.
fn authenticate(app: &App, request: &Request) -> Result<Session, ApiError> {
    match auth::authenticate(&app.db, request.header_values("Cookie")).map_err(database_failure)? {
        Ok(session) => Ok(session),
        Err(AuthFailure::NoCookie) => Err(ApiError::NoSessionCookie {
            from: Caller::of(request),
        }),
        Err(AuthFailure::Refused(refusal)) => Err(ApiError::InvalidSession {
            why: refusal.explain(),
        }),
    }
}

/// Maps a store failure to the client's answer, logging the cause (which is
/// never sent: it may name tables, paths or SQL).
fn database_failure(error: db::Error) -> ApiError {
    match error {
        db::Error::Busy(cause) => {
            // The server's own holds of the write lock are far shorter than
            // the default wait, so one that outlasts it is most often
            // another program's.
            log::warn!(
                "database busy, answering 503: {cause}; if every delete gets this, another \
                 program keeps a write transaction open (a `sqlite3` shell, or a database \
                 browser with unsaved changes): end it"
            );
            ApiError::ServiceUnavailable("The database is busy; retry shortly")
        }
        // Not "busy": retrying shortly will not help, freeing space will. A
        // delete needs room too, which surprises someone deleting chats to
        // make room: secure_delete overwrites each of the chat's pages, and
        // the WAL holds the overwritten copies until upkeep gives the space
        // back (a 930 MB chat grew the WAL to 940 MB).
        db::Error::StorageFull(cause) => {
            log::error!(
                "storage full, answering 503: {cause}; a delete needs free space about \
                 the size of the chat for a moment (its content is overwritten before its \
                 space is given back): free some, or delete smaller chats first"
            );
            ApiError::ServiceUnavailable("The server's disk is full; retry once space is freed")
        }
        // Retrying will not help, and the one who runs the server can act.
        db::Error::Damaged(cause) => {
            log::error!(
                "the database file is damaged, answering 500 (sqlite: {cause}); {} while \
                 the server runs",
                crate::doctor::SEE_DOCTOR
            );
            ApiError::Internal
        }
        // The file watch stops the server within a second (see
        // `file_watch`); until then nothing is written.
        error @ db::Error::WalIndexReplaced(_) => {
            log::error!("{error}; answering 503");
            ApiError::ServiceUnavailable("The server is stopping; retry once it runs again")
        }
        other => {
            log::error!("database failure, answering 500: {other}");
            ApiError::Internal
        }
    }
}

/// Returns the id if `text` is a positive integer that fits in an i64,
/// written canonically (digits only, no sign, no leading zero).
fn parse_chat_id(text: &str) -> Result<i64, ApiError> {
    const INVALID: ApiError = ApiError::BadRequest("Chat id must be a positive integer");
    let canonical =
        !text.is_empty() && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit());
    if !canonical {
        return Err(INVALID);
    }
    text.parse::<i64>().map_err(|_| INVALID)
}

/// Splits an origin-form request-target (an absolute-form one has had its
/// scheme and host taken off) into decoded path segments.
///
/// The query is ignored and one trailing slash is accepted. Each segment is
/// percent-decoded exactly once, so `%2F` yields a `/` *inside* a segment, not
/// a separator. Anything that could make two different targets mean the same
/// route, or smuggle bytes past a check, is refused with 400: a target that is
/// not an absolute path, `.` or `..` segments, malformed
/// percent-escapes, escapes that are not UTF-8, and control characters.
/// Empty segments (`//`) are kept and so never match a route.
fn path_segments(target: &str) -> Result<Vec<String>, ApiError> {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let Some(path) = path.strip_prefix('/') else {
        return Err(ApiError::BadRequest(
            "Request target must be an absolute path",
        ));
    };
    let path = path.strip_suffix('/').unwrap_or(path);
    path.split('/').map(decode_segment).collect()
}

fn decode_segment(raw: &str) -> Result<String, ApiError> {
    const BAD_ESCAPE: ApiError = ApiError::BadRequest("Malformed percent-encoding in path");
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            // Two hex digits exactly (`from_str_radix` would also take a
            // sign, as in `%+4`).
            let digit = |b: &u8| char::from(*b).to_digit(16);
            let byte = match tail {
                [high, low, ..] => digit(high).zip(digit(low)).map(|(h, l)| (h * 16 + l) as u8),
                _ => None,
            };
            bytes.push(byte.ok_or(BAD_ESCAPE)?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    let segment =
        String::from_utf8(bytes).map_err(|_| ApiError::BadRequest("Path is not valid UTF-8"))?;
    if segment.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("Path contains control characters"));
    }
    if segment == "." || segment == ".." {
        return Err(ApiError::BadRequest("Path contains dot segments"));
    }
    Ok(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(target: &str) -> Result<Vec<String>, u16> {
        path_segments(target).map_err(|e| e.status())
    }

    #[test]
    fn paths_are_split_and_decoded_once() {
        assert_eq!(
            segments("/api/users/u/chats/1").unwrap(),
            ["api", "users", "u", "chats", "1"]
        );
        assert_eq!(
            segments("/api/users/u/chats/1/").unwrap(),
            ["api", "users", "u", "chats", "1"]
        );
        assert_eq!(
            segments("/api/users/u/chats/1?x=/y").unwrap(),
            ["api", "users", "u", "chats", "1"]
        );
        assert_eq!(segments("/api/users/a%2Fb/chats/1").unwrap()[2], "a/b");
        assert_eq!(segments("/api/users/%2541/chats/1").unwrap()[2], "%41");
        assert_eq!(segments("/api/users/caf%C3%A9/chats/1").unwrap()[2], "café");
        assert_eq!(
            segments("/api/users/u/chats/1//").unwrap().last().unwrap(),
            ""
        );
        assert_eq!(segments("/").unwrap(), [""]);
    }

    #[test]
    fn suspicious_paths_are_rejected() {
        for target in [
            "http://evil/api/users/u/chats/1",
            "*",
            "",
            "/api/users/../chats/1",
            "/api/users/%2e%2E/chats/1",
            "/api/./users/u/chats/1",
            "/api/users/%/chats/1",
            "/api/users/%4/chats/1",
            "/api/users/%zz/chats/1",
            "/api/users/%C3/chats/1",
            "/api/users/%C0%AF/chats/1",
            "/api/users/a%00b/chats/1",
            "/api/users/a%0Ab/chats/1",
        ] {
            assert_eq!(segments(target), Err(400), "{target:?}");
        }
    }

    #[test]
    fn a_percent_escape_is_exactly_two_hex_digits() {
        for target in ["/api/users/%+4/chats/1", "/api/users/%-0/chats/1"] {
            assert_eq!(
                path_segments(target),
                Err(ApiError::BadRequest("Malformed percent-encoding in path")),
                "{target:?}"
            );
        }
    }

    #[test]
    fn chat_ids_must_be_canonical_positive_i64() {
        assert_eq!(parse_chat_id("1"), Ok(1));
        assert_eq!(parse_chat_id("9223372036854775807"), Ok(i64::MAX));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "01",
            "1.5",
            "1e3",
            "abc",
            " 1",
            "9223372036854775808",
            "12345678901234567890",
        ] {
            assert_eq!(
                parse_chat_id(bad).map_err(|e| e.status()),
                Err(400),
                "{bad:?}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Targets near the route: its literal segments, mutated, percent-encoded,
    /// with dots, slashes and queries, plus arbitrary text.
    fn target_like() -> impl Strategy<Value = String> {
        let part = prop::sample::select(vec![
            "api", "users", "chats", "API", "alice", "1", "42", "", ".", "..", "%2F", "%2e", "%",
            "%41", "a%2Fb", "?q=/x",
        ]);
        prop::collection::vec(part, 0..8)
            .prop_map(|parts| format!("/{}", parts.join("/")))
            .boxed()
            .prop_union("\\PC{0,40}".boxed())
    }

    proptest! {
        #[test]
        fn only_exact_chat_paths_reach_the_delete_handler(target in target_like()) {
            // Never panics, whatever the input.
            let Ok(segments) = path_segments(&target) else { return Ok(()) };
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            if let ["api", "users", _, "chats", _] = segments.as_slice() {
                // The raw path (without query and one trailing slash) must
                // have exactly these five segments, the literals unencoded.
                let path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
                let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
                let raw: Vec<&str> = path.split('/').collect();
                prop_assert_eq!(raw.len(), 6, "{}", target);
                prop_assert_eq!((raw[0], raw[1], raw[2], raw[4]), ("", "api", "users", "chats"), "{}", target);
            }
        }

        #[test]
        fn chat_ids_parse_only_as_canonical_positive_integers(text in "[-+0-9a-z.]{0,22}") {
            if let Ok(id) = parse_chat_id(&text) {
                prop_assert!(id > 0);
                prop_assert_eq!(id.to_string(), text);
            }
        }
    }
}
